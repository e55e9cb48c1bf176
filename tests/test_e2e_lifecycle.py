"""End to end: the daemon's life cycle as a user and a supervisor see it, with real daemons.

The pid the daemon reports is the one that serves the API; a daemon killed with SIGKILL is
replaced at once by ``jarvis daemon start``; a replacement (started by the CLI or by the UI)
keeps the options of the daemon it replaces; the local API accepts a crowd of clients connecting
at once.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from jarvis.app import launcher
from jarvis.common import paths
from tests.daemons import DaemonProcess, short_tempdir
from tests.test_e2e_cli import Cli


def gone(pid: int) -> bool:
    """Whether no process *pid* exists any more (a zombie still counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    """Check *predicate* every 20 ms until it holds; fail after *timeout* seconds."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"condition not reached within {timeout} s")


def listening_socket_inode(path: str) -> int | None:
    """The inode of the listening UNIX socket bound to *path* (from /proc/net/unix)."""
    with open("/proc/net/unix", encoding="utf-8") as f:
        next(f)
        for line in f:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode [Path]; St 01 = listening
            if len(fields) >= 8 and fields[7] == path and fields[5] == "01":
                return int(fields[6])
    return None


def process_fds(pid: int) -> set[str]:
    """The targets of the open file descriptors of process *pid*."""
    fd_dir = f"/proc/{pid}/fd"
    targets = set()
    for name in os.listdir(fd_dir):
        try:
            targets.add(os.readlink(os.path.join(fd_dir, name)))
        except OSError:
            pass
    return targets


def read_pidfile(data_dir: str) -> int:
    with open(paths.pidfile_path(data_dir), encoding="ascii") as f:
        return int(f.read().strip())


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode() for part in f.read().split(b"\0") if part]


LOOPBACK = "tcp:0:interface=127.0.0.1"


class ReportedPidTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc to see which process holds the socket")

    async def test_reported_pid_serves_the_api(self) -> None:
        """When 'jarvis daemon start' detaches a daemon, then the pid it prints and the pid of
        'daemon status' are the pid file's, the lock's and the one holding the listening API
        socket; SIGKILL of that pid ends the daemon: the process is gone and the API does not
        answer."""
        root = short_tempdir(self)
        cli = Cli(root, "data")
        self.addCleanup(cli.run, "daemon", "stop")
        out = await cli.ok("daemon", "start", "--listen", LOOPBACK)
        status = await cli.json("daemon", "status")
        pid = status["pid"]
        self.assertIn(f"(pid {pid},", out)
        self.assertEqual(pid, read_pidfile(cli.data_dir))
        self.assertEqual(os.readlink(paths.lock_path(cli.data_dir)), str(pid))
        sock = status["ipc"].split(":", 1)[1]
        self.assertEqual(os.readlink(sock + ".lock"), str(pid))
        inode = listening_socket_inode(sock)
        self.assertIsNotNone(inode)
        self.assertIn(f"socket:[{inode}]", process_fds(pid))

        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: gone(pid))
        code, _out, err = await cli.run("--json", "daemon", "status")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(_out)["running"], False)
        code, _out, err = await cli.run("contacts")
        self.assertEqual(code, 1)
        self.assertIn("no Jarvis daemon is running", err)


class RestartAfterKillTests(TestCase):
    timeout = 120

    async def test_start_right_after_sigkill(self) -> None:
        """When the daemon is killed with SIGKILL and 'jarvis daemon start' runs at once, then
        it succeeds without any cleanup by hand (the stale pid file, lock and socket are taken
        over once the killed process is gone) and the new daemon serves under the pid it
        reports."""
        root = short_tempdir(self)
        cli = Cli(root, "data")
        self.addCleanup(cli.run, "daemon", "stop")
        await cli.ok("daemon", "start", "--listen", LOOPBACK)
        old = (await cli.json("daemon", "status"))["pid"]
        os.kill(old, signal.SIGKILL)
        # no waiting here: the killed daemon may still be a zombie holding its pid
        code, out, err = await cli.run("daemon", "start")
        self.assertEqual(code, 0, err)
        status = await cli.json("daemon", "status")
        new = status["pid"]
        self.assertNotEqual(new, old)
        self.assertTrue(gone(old))
        self.assertIn(f"(pid {new},", out)
        self.assertEqual(new, read_pidfile(cli.data_dir))
        self.assertEqual(os.readlink(paths.lock_path(cli.data_dir)), str(new))
        self.assertEqual(os.readlink(status["ipc"].split(":", 1)[1] + ".lock"), str(new))
        stopped = await cli.json("daemon", "stop")
        self.assertEqual(stopped, {"stopped": True, "pid": new})
        await wait_until(lambda: gone(new))


class ReplacementOptionsTests(TestCase):
    timeout = 120

    async def test_replacement_keeps_the_start_options(self) -> None:
        """When a daemon started with --listen and --advertise dies and 'jarvis daemon start'
        runs without options, then the replacement listens and advertises as the first did (read
        from daemon.json, 0600), not on the default port of every interface; an option given
        again replaces the recorded one."""
        root = short_tempdir(self)
        cli = Cli(root, "data")
        self.addCleanup(cli.run, "daemon", "stop")
        pw = os.path.join(root, "pw")
        with open(pw, "w") as f:
            f.write("secret\n")
        await cli.ok(
            "daemon", "start", "--listen", LOOPBACK, "--advertise", "127.0.0.1:9",
            "--password-file", pw,
        )  # fmt: skip
        recorded = launcher.daemon_options_path(cli.data_dir)
        self.assertEqual(stat.S_IMODE(os.stat(recorded).st_mode), 0o600)
        self.assertEqual(
            launcher.read_daemon_options(cli.data_dir),
            {
                "listen": LOOPBACK,
                "advertise": ["127.0.0.1:9"],
                "log-level": "info",
                "exec-limit": 16,
                "hook-limit": 4,
            },
        )
        with open(recorded, encoding="utf-8") as f:
            self.assertNotIn("password", f.read())
        old = (await cli.json("daemon", "status"))["pid"]
        os.kill(old, signal.SIGKILL)
        await wait_until(lambda: gone(old))

        await cli.ok("daemon", "start")
        new = (await cli.json("daemon", "status"))["pid"]
        argv = cmdline(new)
        self.assertIn("--listen", argv, "the replacement got the default options")
        self.assertEqual(argv[argv.index("--listen") + 1], LOOPBACK)
        self.assertEqual(argv[argv.index("--advertise") + 1], "127.0.0.1:9")
        self.assertNotIn("--password-file", argv)
        await cli.ok("daemon", "stop")

        await cli.ok("daemon", "start", "--listen", "tcp:0:interface=127.0.0.2")
        argv = cmdline((await cli.json("daemon", "status"))["pid"])
        self.assertEqual(argv[argv.index("--listen") + 1], "tcp:0:interface=127.0.0.2")
        self.assertEqual(argv[argv.index("--advertise") + 1], "127.0.0.1:9")
        self.assertEqual(
            launcher.read_daemon_options(cli.data_dir)["listen"], "tcp:0:interface=127.0.0.2"
        )


class ApiBacklogTests(TestCase):
    timeout = 90

    async def test_200_clients_connect_at_once(self) -> None:
        """When 200 clients connect to a real daemon's API socket at once (faster than it
        accepts), then the kernel queues every one of them (the old backlog of 50 refused tens
        with EAGAIN), and the daemon still answers afterwards."""
        with open("/proc/sys/net/core/somaxconn", encoding="ascii") as f:
            if int(f.read()) < 200:
                self.skipTest("net.core.somaxconn is below 200: the kernel caps the backlog")
        root = short_tempdir(self)
        daemon = DaemonProcess(os.path.join(root, "data"), root)
        self.addCleanup(daemon.cleanup)
        await daemon.start()
        clients: list[socket.socket] = []
        refused = 0
        try:
            for _ in range(200):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                clients.append(s)
                s.setblocking(False)
                code = s.connect_ex(daemon.socket)
                if code in (errno.EAGAIN, errno.ECONNREFUSED):
                    refused += 1
                else:
                    self.assertEqual(code, 0, os.strerror(code))
        finally:
            for s in clients:
                s.close()
        self.assertEqual(refused, 0)

        from jarvis.ipc.client import IpcClient

        client = await IpcClient.connect(reactor, daemon.endpoint)
        status = await client.call("daemon.status")
        await client.close()
        self.assertEqual(status["pid"], daemon.transport.pid)
        await daemon.stop()


class UiReplacementTests(TestCase):
    timeout = 120

    async def test_ui_replaces_a_killed_daemon_with_its_options(self) -> None:
        """When the daemon a running UI is attached to (started with --listen on loopback) is
        killed with SIGKILL, then the UI starts a replacement once the killed process is gone,
        and the replacement listens where the first did, not on the defaults."""
        from tests.test_e2e_ui import start_ui

        root = short_tempdir(self)
        cli = Cli(root, "data")
        self.addCleanup(cli.run, "daemon", "stop")
        await cli.ok("daemon", "start", "--listen", LOOPBACK)
        old = (await cli.json("daemon", "status"))["pid"]

        start_ui(self, cli.data_dir, root)

        async def clients() -> int:
            status = await cli.json("rpc", "daemon.status")
            return int(status.get("clients", 0))

        for _ in range(300):  # the UI attaches: the daemon counts it among its clients
            if await clients() >= 2:  # the UI and this 'rpc' call
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail("the UI did not attach to the daemon")

        os.kill(old, signal.SIGKILL)

        def replaced() -> bool:
            pids = launcher.recorded_pids(cli.data_dir)
            return bool(pids) and old not in pids and all(not gone(pid) for pid in pids)

        await wait_until(replaced, 60.0)
        new = (await cli.json("daemon", "status"))["pid"]
        self.assertNotEqual(new, old)
        argv = cmdline(new)
        self.assertIn("--listen", argv, "the replacement got the default options")
        self.assertEqual(argv[argv.index("--listen") + 1], LOOPBACK)
