"""Tests for jarvis.app.commands' view of the daemon's process: busy versus not running, zombies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from jarvis.app import cli, commands, launcher
from jarvis.common import errors, paths
from tests.daemons import short_tempdir

#: A pid above the kernel's largest possible pid (2**22): no process has it.
NO_SUCH_PID = 2**22 + 1


def make_session(data_dir: str) -> commands.Session:
    options = cli.Options()
    options.parseOptions(["--data-dir", data_dir, "contacts"])
    return commands.Session(reactor, options)


def make_data_dir(testcase: TestCase) -> tuple[str, str]:
    """A data directory whose endpoint file names a socket path in a short directory."""
    root = short_tempdir(testcase)
    data_dir = os.path.join(root, "data")
    os.mkdir(data_dir, 0o700)
    sock = os.path.join(root, "api.sock")
    with open(paths.endpoint_file_path(data_dir), "w", encoding="ascii") as f:
        f.write(f"unix:{sock}\n")
    return data_dir, sock


def hold_lock(data_dir: str, pid: int) -> None:
    """Make the data directory's lock name *pid*, as a daemon's FilesystemLock does."""
    os.symlink(str(pid), paths.lock_path(data_dir))


def live_child(testcase: TestCase) -> subprocess.Popen[bytes]:
    """A child process that runs until the end of *testcase* (it waits for its stdin)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    testcase.addCleanup(child.wait)
    testcase.addCleanup(child.stdin.close)  # type: ignore[union-attr]
    return child


class UnreachableTests(TestCase):
    """Which error a refused connection to the local API becomes."""

    def test_no_socket_no_process(self) -> None:
        """When neither the socket nor a daemon process exists, then: not running."""
        data_dir, sock = make_data_dir(self)
        error = commands.unreachable_error(data_dir, f"unix:{sock}")
        self.assertIsInstance(error, errors.DaemonNotRunning)
        self.assertIn("no Jarvis daemon is running", str(error))

    def test_stale_socket_dead_process(self) -> None:
        """When a killed daemon left its socket and a lock naming a dead pid, then: not
        running (the next start takes them over)."""
        data_dir, sock = make_data_dir(self)
        with open(sock, "w"):
            pass
        hold_lock(data_dir, NO_SUCH_PID)
        error = commands.unreachable_error(data_dir, f"unix:{sock}")
        self.assertIsInstance(error, errors.DaemonNotRunning)

    def test_socket_and_live_process(self) -> None:
        """When the socket exists and the lock names a live process, then: busy, with the pid
        and a hint to try again, not 'no daemon is running'."""
        data_dir, sock = make_data_dir(self)
        with open(sock, "w"):
            pass
        child = live_child(self)
        hold_lock(data_dir, child.pid)
        error = commands.unreachable_error(data_dir, f"unix:{sock}")
        self.assertIsInstance(error, errors.DaemonBusy)
        self.assertIn(f"(pid {child.pid}) is running but refused the connection", str(error))
        self.assertIn("busy", str(error))
        self.assertNotIn("no Jarvis daemon", str(error))

    async def test_refused_connection_with_live_daemon_is_busy(self) -> None:
        """When the API socket refuses a real connection while the pid file names a live
        process, then connecting says the daemon is busy; with a dead process, not running.

        (A full accept queue refuses with EAGAIN; Twisted's client then waits for the queue to
        drain until its 30 s timeout, which ends the same way.  A socket that is bound but not
        listening refuses at once.)"""
        data_dir, sock = make_data_dir(self)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(server.close)
        server.bind(sock)
        child = live_child(self)
        with open(paths.pidfile_path(data_dir), "w", encoding="ascii") as f:
            f.write(str(child.pid))
        session = make_session(data_dir)
        failure = await self.assertFailure(
            defer.ensureDeferred(session.connect()), errors.DaemonBusy
        )
        self.assertIn(f"(pid {child.pid}) is running but refused the connection", str(failure))

        # the same refusal with the pid file naming a dead process: not running
        with open(paths.pidfile_path(data_dir), "w", encoding="ascii") as f:
            f.write(str(NO_SUCH_PID))
        await self.assertFailure(defer.ensureDeferred(session.connect()), errors.DaemonNotRunning)


class ProcessStateTests(TestCase):
    """A process that has exited but is not reaped (a zombie) is not a running daemon."""

    def test_zombie(self) -> None:
        """When a child has exited and is not reaped yet, then it is a zombie, not alive, and
        gone once reaped."""
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        self.addCleanup(child.wait)
        self.assertIn(launcher.process_state(child.pid), ("running", "zombie"))
        if not os.path.exists(f"/proc/{child.pid}/stat"):
            self.skipTest("needs /proc to tell a zombie")
        # wait for the child's exit without reaping it: it stays a zombie until child.wait()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        self.assertEqual(launcher.process_state(child.pid), "zombie")
        self.assertFalse(commands.pid_alive(child.pid))
        child.wait()
        self.assertEqual(launcher.process_state(child.pid), "gone")

    def test_running_and_gone(self) -> None:
        """When the pid is this process, then it runs; when no process has it, it is gone."""
        self.assertEqual(launcher.process_state(os.getpid()), "running")
        self.assertTrue(commands.pid_alive(os.getpid()))
        self.assertEqual(launcher.process_state(NO_SUCH_PID), "gone")


class BusyStatusTests(TestCase):
    timeout = 60

    async def test_status_of_a_busy_daemon(self) -> None:
        """When 'jarvis daemon status' is refused by the socket of a daemon whose process runs,
        then it says the daemon runs but is busy (exit 0, running: true), not 'stopped'."""
        from twisted.internet.utils import getProcessOutputAndValue

        from tests.daemons import REPO, child_env

        data_dir, sock = make_data_dir(self)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(server.close)
        server.bind(sock)
        child = live_child(self)
        hold_lock(data_dir, child.pid)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "jarvis", "--data-dir", data_dir, "--json", "daemon", "status"],
            env=child_env(),
            path=REPO,
            reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        document = json.loads(out)
        self.assertEqual((document["running"], document["busy"]), (True, True))
        self.assertEqual(document["pid"], child.pid)
