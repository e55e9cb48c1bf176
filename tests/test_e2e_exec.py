"""End to end: ``exec.*`` and ``hooks.*`` on real twistd daemons through the real local API."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from jarvis.ipc.jsonrpc import RemoteError
from tests.daemons import REPO, child_env, short_tempdir
from tests.peers import Peer, befriend
from tests.test_exec_runner import STUBBORN, group_members, poll

EXAMPLE_HOOK = os.path.join(REPO, "examples", "uptime_hook.py")


class Progress:
    """Collects the ``$/progress`` values of one exec.run call."""

    def __init__(self) -> None:
        self.values: list[dict[str, Any]] = []

    def __call__(self, value: Any) -> None:
        self.values.append(value)

    def text(self, stream: str = "stdout") -> str:
        return "".join(
            v["text"] for v in self.values if v["stage"] == "output" and v["stream"] == stream
        )

    def pid(self) -> int | None:
        for v in self.values:
            if v["stage"] == "running":
                return int(v["pid"])
        return None


async def one_daemon(testcase: TestCase, extra: list[str] | None = None) -> Peer:
    peer = Peer(testcase, short_tempdir(testcase), "alice", extra)
    await peer.start(create=True)
    return peer


class ExecApiTests(TestCase):
    timeout = 60

    async def test_run_streams_output_and_answers_status(self) -> None:
        """When exec.run runs a program, then its stdout and stderr arrive as progress and the
        answer carries the exit status and byte counts; with pty the program sees a terminal,
        without it does not."""
        peer = await one_daemon(self)
        assert peer.client is not None
        seen = Progress()
        result = await peer.client.call(
            "exec.run",
            {"argv": ["sh", "-c", "echo out; echo err >&2; test -t 1 || echo notty; exit 4"]},
            progress=seen,
        )
        self.assertEqual((seen.text(), seen.text("stderr")), ("out\nnotty\n", "err\n"))
        self.assertEqual(result["exit_code"], 4)
        self.assertEqual(result["bytes"]["stdout"], len("out\nnotty\n"))
        tty = Progress()
        await peer.client.call(
            "exec.run", {"command": "test -t 1 && echo tty", "pty": True}, progress=tty
        )
        self.assertEqual(tty.text().strip(), "tty")

    async def test_cancel_kills_the_whole_tree(self) -> None:
        """When a client cancels exec.run of a tree that ignores SIGTERM, then the call fails as
        cancelled and every process of the group is gone after the grace period."""
        peer = await one_daemon(self)
        assert peer.client is not None
        seen = Progress()
        call = peer.client.call(
            "exec.run", {"command": STUBBORN, "grace": 0.5, "timeout": 600}, progress=seen
        )
        await poll(lambda: seen.pid() is not None and len(group_members(seen.pid() or 0)) >= 3, 10)
        pid = seen.pid()
        assert pid is not None
        listing = await peer.call("exec.list")
        self.assertEqual([r["pid"] for r in listing["runs"]], [pid])
        call.cancel()
        self.failureResultOf(call, defer.CancelledError)
        await poll(lambda: group_members(pid) == [], 10)
        listing = await peer.call("exec.list")
        self.assertEqual(listing["runs"], [])
        self.assertTrue(listing["finished"][-1]["result"]["cancelled"])

    async def test_client_gone_kills_its_runs(self) -> None:
        """When the client that started a run disconnects, then the run's tree is killed."""
        from twisted.internet import reactor

        from jarvis.ipc.client import IpcClient

        peer = await one_daemon(self)
        other = await IpcClient.connect(reactor, peer.process.endpoint)
        seen = Progress()
        call = other.call(
            "exec.run", {"command": STUBBORN, "grace": 0.5, "timeout": 600}, progress=seen
        )
        call.addErrback(lambda _: None)
        await poll(lambda: seen.pid() is not None and len(group_members(seen.pid() or 0)) >= 3, 10)
        pid = seen.pid()
        assert pid is not None
        await other.close()
        await poll(lambda: group_members(pid) == [], 10)

    async def test_daemon_stop_kills_its_programs(self) -> None:
        """When the daemon is stopped (SIGTERM) while a tree that ignores SIGTERM runs, then
        the daemon exits and no process of the tree is left."""
        peer = await one_daemon(self)
        assert peer.client is not None
        seen = Progress()
        call = peer.client.call(
            "exec.run", {"command": STUBBORN, "grace": 0.5, "timeout": 600}, progress=seen
        )
        call.addErrback(lambda _: None)  # the connection goes away with the daemon
        await poll(lambda: seen.pid() is not None and len(group_members(seen.pid() or 0)) >= 3, 10)
        pid = seen.pid()
        assert pid is not None
        await peer.process.stop()
        await poll(lambda: group_members(pid) == [], 5)

    async def test_timeout_and_kill(self) -> None:
        """When a run passes its timeout, then the answer says timed_out with the signal;
        when exec.kill names a run, then its call answers killed."""
        peer = await one_daemon(self)
        assert peer.client is not None
        result = await peer.call("exec.run", argv=["sleep", "100"], timeout=0.2)
        self.assertTrue(result["timed_out"])
        self.assertEqual(result["signal"], "SIGTERM")
        seen = Progress()
        call = peer.client.call("exec.run", {"argv": ["sleep", "100"]}, progress=seen)
        await poll(lambda: seen.pid() is not None, 10)
        run_id = seen.values[0]["id"]
        self.assertEqual((await peer.call("exec.kill", id=run_id))["state"], "stopping")
        killed = await call
        self.assertTrue(killed["killed"])
        with self.assertRaises(RemoteError):
            await peer.call("exec.kill", id=run_id)

    async def test_cli_exec_streams_safely(self) -> None:
        """When 'jarvis exec' runs a program printing an escape sequence, then the terminal
        gets it as visible text and the exit status is the program's."""
        peer = await one_daemon(self)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "jarvis",
                "--data-dir",
                peer.data_dir,
                "exec",
                "--",
                "sh",
                "-c",
                r"printf 'a\033]52;c;eA==\007b\n'; exit 3",
            ],
            env=child_env(),
            path=REPO,
        )
        self.assertEqual(code, 3, err)
        self.assertNotIn(b"\x1b", out)
        self.assertEqual(out, b"a\\x1b]52;c;eA==\\x07b\n")


class CliInterruptTests(TestCase):
    timeout = 60

    async def test_ctrl_c_cancels_the_run(self) -> None:
        """When 'jarvis exec' gets SIGINT (Ctrl+C) while a tree that ignores SIGTERM runs, then
        it exits 130 and the daemon kills the whole tree."""
        import signal

        from twisted.internet import protocol, reactor

        peer = await one_daemon(self)

        class Cli(protocol.ProcessProtocol):
            def __init__(self) -> None:
                self.ended: defer.Deferred[Any] = defer.Deferred()

            def processEnded(self, reason: Any) -> None:
                self.ended.callback(reason.value.exitCode)

        cli = Cli()
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            cli,
            sys.executable,
            [
                sys.executable,
                "-m",
                "jarvis",
                "--data-dir",
                peer.data_dir,
                "exec",
                "--shell",
                "--",
                STUBBORN,
            ],
            env=child_env(),
            path=REPO,
        )
        pids: list[int] = []

        async def running() -> bool:
            runs = (await peer.call("exec.list"))["runs"]
            pids[:] = [r["pid"] for r in runs if r["pid"]]
            return bool(pids) and len(group_members(pids[0])) >= 3

        while not await running():
            pass
        transport.signalProcess(signal.SIGINT)
        self.assertEqual(await cli.ended, 130)
        await poll(lambda: group_members(pids[0]) == [], 10)


class HookE2ETests(TestCase):
    timeout = 300

    async def _pair(self, extra: list[str] | None = None) -> tuple[Peer, Peer]:
        root = short_tempdir(self)
        alice, bob = Peer(self, root, "alice"), Peer(self, root, "bob", extra)
        await defer.gatherResults(
            [
                defer.ensureDeferred(alice.start(create=True)),
                defer.ensureDeferred(bob.start(create=True)),
            ]
        )
        await befriend(alice, bob)
        return alice, bob

    async def test_reply_hook_answers_contact(self) -> None:
        """When bob's daemon has the example reply hook and alice sends '/echo hi', then alice
        receives bob's automatic answer naming her; other messages get no answer."""
        alice, bob = await self._pair()
        await bob.call(
            "hooks.add",
            name="bot",
            argv=[sys.executable, EXAMPLE_HOOK],
            reply=True,
            pattern=r"^/",
            contact=alice.uid,
        )
        await alice.call("messages.send", contact=bob.uid, text="no command here")
        await alice.call("messages.send", contact=bob.uid, text="/echo hi there")
        await alice.recorder.wait(lambda: bool(alice.received_bodies()), 30)
        self.assertEqual(alice.received_bodies(), ["alice said: hi there"])
        hooks = await bob.call("hooks.list")
        self.assertEqual((hooks["ran"], hooks["replied"], hooks["failed"]), (1, 1, 0))

    async def test_flood_to_hooked_conversation(self) -> None:
        """When alice sends 2,000 messages to a conversation bob has a hook on, then bob never
        runs more hook processes than his cap, drops and counts what the queue and rate limit
        refuse, and stores every message once, in order."""
        alice, bob = await self._pair(["--hook-limit", "2"])
        await bob.call("hooks.add", name="sink", argv=["sh", "-c", "cat >/dev/null"], rate=600)
        bodies = [f"flood {i}" for i in range(2000)]
        await defer.gatherResults(
            [alice.call("messages.send", contact=bob.uid, text=b) for b in bodies]
        )
        await bob.recorder.wait(lambda: len(bob.received_bodies()) >= 2000, 180)

        async def idle() -> bool:
            hooks = await bob.call("hooks.list")
            return bool(hooks["running"] == 0 and hooks["queued"] == 0)

        while not await idle():  # each look is a round trip to bob's daemon
            pass
        hooks = await bob.call("hooks.list")
        runner = await bob.call("exec.list")
        self.assertLessEqual(hooks["peak_running"], 2)
        self.assertLessEqual(runner["peak_running"], 2)
        self.assertEqual(hooks["ran"] + hooks["dropped_rate"] + hooks["dropped_queue"], 2000)
        # one minute's worth of the rate at most: the rest was dropped, not queued
        self.assertLessEqual(hooks["ran"], 600)
        self.assertEqual(runner["started_total"], hooks["ran"])
        history = await bob.all_history(alice.uid)
        self.assertEqual([m["body"] for m in history], bodies)
        self.assertEqual(len({m["id"] for m in history}), 2000)
