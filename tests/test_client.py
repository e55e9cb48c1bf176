"""Tests for jarvis.client (asyncio) and examples/echo_bot.py, each in a child process under
its own ``asyncio.run`` against a server on a real UNIX socket in this process."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import defer, task, utils
from twisted.internet.protocol import ProcessProtocol

from jarvis.ipc import jsonrpc
from tests.test_ipc_server import SocketTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLIENT_SCRIPT = """
import asyncio, json, sys
from jarvis.client import Client, DaemonNotRunning, RemoteError

async def main(path):
    out = {}
    try:
        await Client.connect(path + ".missing")
    except DaemonNotRunning as e:
        out["missing"] = str(e)
    async with await Client.connect(path) as c:
        out["running"] = (await c.call("daemon.status"))["running"]
        try:
            await c.call("contacts.show", contact="nobody")
        except RemoteError as e:
            out["error"] = [e.code, e.kind, str(e)]
        slow = asyncio.ensure_future(c.call("messages.send", contact="alice", text="slow"))
        await asyncio.sleep(0.2)
        slow.cancel()
        try:
            await slow
        except asyncio.CancelledError:
            out["cancelled"] = True
        only_status = c.events("daemon.nothing")
        out["unknown_event"] = None
        try:
            await only_status.__anext__()
        except RemoteError as e:
            out["unknown_event"] = e.code
        contacts = c.events("contact.changed")
        peers = c.events("peer.statusChanged")
        events = c.events()
        first = asyncio.ensure_future(events.__anext__())
        first_contact = asyncio.ensure_future(contacts.__anext__())
        first_peer = asyncio.ensure_future(peers.__anext__())
        await c.call("contacts.update", contact="alice", muted=True)
        event = await asyncio.wait_for(first, 5)
        out["event"] = [event.name, event.params["contact"]["muted"]]
        out["named"] = (await asyncio.wait_for(first_contact, 5)).name
        # the event reached every queue in one step; the peers iterator was given none
        for _ in range(5):
            await asyncio.sleep(0)
        out["peers_quiet"] = not first_peer.done()
        first_peer.cancel()
    out["twisted"] = sorted(m for m in sys.modules if m.startswith("twisted"))
    print(json.dumps(out))

asyncio.run(main(sys.argv[1]))
"""


def child_env() -> dict[str, str]:
    """Return the environment for child processes: the repository on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env


class AsyncioClientTests(SocketTestCase):
    """The asyncio client under a plain asyncio.run, in a child process."""

    async def test_client(self) -> None:
        """When a script calls, fails, cancels and listens, then it sees results, RemoteError
        with its kind, cancellation reaching the daemon, and events, all without Twisted."""
        paused = self.node.pause("send_message")
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-c", CLIENT_SCRIPT, self.path], env=child_env(), path=REPO
        )
        self.assertEqual(code, 0, err.decode())
        result = json.loads(out)
        self.assertIn("no Jarvis daemon answers", result["missing"])
        self.assertTrue(result["running"])
        self.assertEqual(result["error"][:2], [jsonrpc.NOT_FOUND, "not_found"])
        self.assertTrue(result["cancelled"])
        self.assertEqual(result["event"], ["contact.changed", True])
        # a misspelt event name is refused; an iterator of named events sees only those
        self.assertEqual(result["unknown_event"], jsonrpc.INVALID_PARAMS)
        self.assertEqual(result["named"], "contact.changed")
        self.assertTrue(result["peers_quiet"])
        self.assertEqual(result["twisted"], [])
        self.assertEqual(paused.cancelled, 1)
        self.assertEqual(self.node.messages_of("alice"), [])


class BotProcess(ProcessProtocol):
    """Collects a child's output and tells when it printed a line and when it ended."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"listening" in self.out and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.err.decode()))
        self.ended.callback(reason.value.exitCode)


class EchoBotTests(SocketTestCase):
    """examples/echo_bot.py."""

    async def test_echo(self) -> None:
        """When the bot runs and a message arrives, then it answers "echo: <text>" and ignores
        echoes."""
        bot = BotProcess()
        script = os.path.join(REPO, "examples", "echo_bot.py")
        spawn: Any = self.reactor.spawnProcess
        spawn(
            bot,
            sys.executable,
            [sys.executable, script, "--endpoint", self.path, "--count", "1"],
            env=child_env(),
            path=REPO,
        )
        await bot.ready
        while self.node.observer_count == 0:
            await task.deferLater(self.reactor, 0.01, lambda: None)
        self.node.receive("alice", "echo: not me")
        self.node.receive("alice", "hello")
        code = await bot.ended
        self.assertEqual(code, 0, bot.err.decode())
        outgoing = [m["body"] for m in self.node.messages_of("alice") if m["direction"] == "out"]
        self.assertEqual(outgoing, ["echo: hello"])
