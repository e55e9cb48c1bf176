"""Real daemon processes for end-to-end tests: ``twistd -n jarvis`` in a temporary directory.

A :class:`DaemonProcess` starts the daemon with the checkout on ``PYTHONPATH``, waits for the
log line that says the local API listens (an event, never a fixed sleep), and stops it with
SIGTERM or SIGKILL.  Sockets live under a short ``/tmp`` directory (AF_UNIX path limit).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure

from jarvis.app.launcher import twistd_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(**extra: str) -> dict[str, str]:
    """Return an environment for child processes that imports this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("JARVIS_HOME", None)
    env.update(extra)
    return env


def ui_env(data_dir: str, root: str) -> dict[str, str]:
    """The UI's environment: its data directory, a short runtime directory, UTC, UTF-8."""
    return child_env(
        JARVIS_HOME=data_dir,
        XDG_RUNTIME_DIR=root,
        TZ="UTC",
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        TERM="xterm-256color",
    )


def short_tempdir(testcase: Any) -> str:
    """Make a private directory under /tmp removed at the end of *testcase*."""
    path = tempfile.mkdtemp(prefix="jv", dir="/tmp")
    os.chmod(path, 0o700)
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


class _Output(protocol.ProcessProtocol):
    """Feeds one spawned process's output and end to its owner.

    Each spawn gets its own instance and generation, so the late end of a killed process can
    never be mistaken for the end of the process started after it.
    """

    def __init__(self, owner: DaemonProcess, generation: int) -> None:
        self.owner = owner
        self.generation = generation
        self.ended: list[defer.Deferred[Any]] = []
        self.done = False

    def _current(self) -> bool:
        return self.generation == self.owner.generation

    def outReceived(self, data: bytes) -> None:
        if self._current():
            self.owner.output += data
            self.owner.check_waiters()

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.done = True
        code = reason.value.exitCode
        if self._current():
            self.owner.exit_code = code
            self.owner.exit_signal = getattr(reason.value, "signal", None)
        ended, self.ended = self.ended, []
        for d in ended:
            d.callback(code)
        if not self._current():
            return
        waiters, self.owner.waiters = self.owner.waiters, []
        for needle, d in waiters:
            d.errback(
                RuntimeError(
                    f"daemon exited (status {code}, signal {self.owner.exit_signal}) "
                    f"before printing {needle!r}:\n"
                    + self.owner.output.decode("utf-8", "replace")[-3000:]
                )
            )


class DaemonProcess:
    """One ``twistd -n jarvis`` child process.

    :param data_dir: the daemon's data directory.
    :param sock_dir: a short directory for its UNIX socket.
    :param extra: more daemon options (e.g. ``["--password-file", path]``).
    """

    def __init__(
        self,
        data_dir: str,
        sock_dir: str,
        extra: list[str] | None = None,
        *,
        listen: str = "tcp:0:interface=127.0.0.1",
        twistd_args: list[str] | None = None,
        pidfile: str = "twistd.pid",
        launcher: list[str] | None = None,
    ) -> None:
        self.pidfile = os.path.join(sock_dir, pidfile)
        self.data_dir = data_dir
        self.socket = os.path.join(sock_dir, "api.sock")
        self.ipc = f"unix:{self.socket}:mode=600:lockfile=1"
        self.listen = listen
        self.extra = extra or []
        self.twistd_args = twistd_args or []
        self.output = b""
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.generation = 0
        self.current: _Output | None = None
        self.waiters: list[tuple[bytes, defer.Deferred[None]]] = []
        self.counters: list[tuple[bytes, int, defer.Deferred[None]]] = []
        self.transport: Any = None
        #: More environment for the child (e.g. a test hook on ``PYTHONPATH``).
        self.env: dict[str, str] = {}
        #: The argv prefix that runs twistd (default :func:`twistd_argv`); e.g.
        #: ``tests.hostile_twistd.LAUNCHER``, which adds a hostile member's test methods.
        self.launcher = launcher

    @property
    def endpoint(self) -> str:
        """The client endpoint description of the daemon's local API."""
        return f"unix:{self.socket}"

    def argv(self) -> list[str]:
        return [
            *(self.launcher or twistd_argv()),
            "-n",
            "--pidfile",
            self.pidfile,
            *self.twistd_args,
            "jarvis",
            "--data-dir",
            self.data_dir,
            "--listen",
            self.listen,
            "--ipc",
            self.ipc,
            *self.extra,
        ]

    def command(self) -> tuple[str, list[str]]:
        """The executable and argv to spawn (a subclass may wrap them, e.g. in a namespace)."""
        return sys.executable, self.argv()

    def _spawn(self) -> None:
        self.generation += 1
        self.output = b""
        self.exit_code = None
        self.exit_signal = None
        self.current = _Output(self, self.generation)
        executable, argv = self.command()
        self.transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            self.current,
            executable,
            argv,
            env=child_env(**self.env),
            path=os.path.dirname(self.socket),
        )

    def start(self, timeout: float = 30.0) -> defer.Deferred[None]:
        """Spawn the daemon; fire when its local API listens."""
        self._spawn()
        return self.wait_for(b"local API listening on", timeout)

    def run_to_exit(self) -> defer.Deferred[int | None]:
        """Spawn the daemon and fire with its exit code (for refusals)."""
        self._spawn()
        return self.wait_exit()

    def wait_for(self, needle: bytes, timeout: float = 30.0) -> defer.Deferred[None]:
        """Fire when *needle* appears in the daemon's output."""
        d: defer.Deferred[None] = defer.Deferred()
        self.waiters.append((needle, d))
        self.check_waiters()
        d.addTimeout(timeout, reactor)  # type: ignore[arg-type]
        return d

    def wait_for_count(
        self, needle: bytes, count: int, timeout: float = 30.0
    ) -> defer.Deferred[None]:
        """Fire when *needle* appears at least *count* times in the output of this run."""
        d: defer.Deferred[None] = defer.Deferred()
        self.counters.append((needle, count, d))
        self.check_waiters()
        d.addTimeout(timeout, reactor)  # type: ignore[arg-type]
        return d

    def check_waiters(self) -> None:
        ready = [(n, d) for n, d in self.waiters if n in self.output]
        self.waiters = [(n, d) for n, d in self.waiters if n not in self.output]
        for _needle, d in ready:
            d.callback(None)
        counted = [(n, c, d) for n, c, d in self.counters if self.output.count(n) >= c]
        self.counters = [w for w in self.counters if w not in counted]
        for _needle, _count, d in counted:
            if not d.called:
                d.callback(None)

    def wait_exit(self, timeout: float = 30.0) -> defer.Deferred[int | None]:
        """Fire with the exit code when the process ends."""
        if self.current is None or self.current.done:
            return defer.succeed(self.exit_code)
        d: defer.Deferred[int | None] = defer.Deferred()
        self.current.ended.append(d)
        d.addTimeout(timeout, reactor)  # type: ignore[arg-type]
        return d

    def signal(self, sig: int) -> None:
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess({signal.SIGTERM: "TERM", signal.SIGKILL: "KILL"}[sig])

    def stop(self) -> defer.Deferred[int | None]:
        """SIGTERM the daemon and fire with its exit code."""
        d = self.wait_exit()
        self.signal(signal.SIGTERM)
        return d

    def kill(self) -> defer.Deferred[int | None]:
        """SIGKILL the daemon and fire when it is gone."""
        d = self.wait_exit()
        self.signal(signal.SIGKILL)
        return d

    def cleanup(self) -> defer.Deferred[Any]:
        """Kill the process if it still runs (for addCleanup)."""
        if self.current is not None and not self.current.done:
            return self.kill()
        return defer.succeed(None)
