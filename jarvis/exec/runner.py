"""The daemon's process runner: every child program the daemon starts goes through it.

A :class:`ProcessRunner` starts programs with Twisted's ``spawnProcess`` (no threads), at most
``limit`` at a time (later runs wait in order in a ``DeferredSemaphore`` and show as
``queued``), and guarantees for each :class:`Run`:

- **its own process group**: with pipes the program is exec'd through util-linux ``setsid``
  (``setsid -- PROGRAM ARGS``: the child of the daemon's fork is never a group leader, so
  ``setsid`` calls ``setsid()`` and execs in place, keeping the pid); with a pseudo-terminal
  Twisted's ``usePTY`` child already calls ``setsid()``.  Either way the group id is the pid we
  know, and every signal goes to the whole group (``killpg``), grandchildren included;
- **a deadline**: after ``timeout`` seconds, on :meth:`Run.kill` or on cancellation the group
  gets ``SIGTERM``, then ``SIGKILL`` after ``grace`` seconds if anything of it is left; when
  the program itself exits, whatever it left behind in its group gets the same treatment, so
  no orphan outlives the run (Twisted reaps the child itself: no zombie);
- **bounded output**: at most ``output_cap`` bytes are decoded and handed to the observer
  (UTF-8, invalid bytes replaced, sequences split across reads kept whole); the rest is read
  and counted, never kept.  When the observer says it is congested (a slow API client), the
  runner stops reading the program's output (``pauseProducing``: the program blocks on a full
  pipe) and looks again every :data:`CONGESTION_POLL` seconds;
- **shutdown**: :meth:`ProcessRunner.stopService` cancels the queue and kills every group.

The runner never runs a shell unless the caller gives ``/bin/sh -c`` itself (see
:meth:`RunSpec.shell`).  It never logs arguments, environment or output (they may hold
secrets or message text): only ids, pids, exit status and byte counts.
"""

from __future__ import annotations

import codecs
import fcntl
import itertools
import os
import shutil
import signal
import struct
import termios
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.common import errors

#: How many programs run at once by default; later runs wait in order.
DEFAULT_LIMIT = 16

#: How many runs may wait for a slot before new ones are refused.
DEFAULT_MAX_QUEUED = 256

#: Seconds between ``SIGTERM`` and ``SIGKILL`` by default.
DEFAULT_GRACE = 2.0

#: Default and largest run time, seconds.
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 24 * 3600.0

#: Default and largest output kept (decoded and delivered) per run, bytes.
DEFAULT_OUTPUT_CAP = 1024 * 1024
MAX_OUTPUT_CAP = 64 * 1024 * 1024

#: How many finished runs ``exec.list`` still shows.
HISTORY = 32

#: Seconds between two looks at a congested observer while the output is paused.
CONGESTION_POLL = 0.01

#: Seconds the runner waits before each read once a run's output cap is reached: output beyond
#: the cap is still read and counted (so the program is not blocked forever on a full pipe) but
#: at most one read (8 KiB) per pause, so a program printing gigabytes cannot keep the
#: reactor busy reading what nobody will see.  ``dropped`` counts what was read.
DISCARD_PAUSE = 0.01

#: The util-linux program that puts a piped child in its own session and process group.
SETSID = shutil.which("setsid")

_SIGNAL_NAMES = {int(s): s.name for s in signal.Signals}

#: The size of a run's pseudo-terminal (Twisted leaves it 0x0, which confuses programs that
#: lay out their output: ``ls``, ``top``, progress bars).
PTY_ROWS = 24
PTY_COLUMNS = 80


def _set_window_size(fd: int, rows: int, columns: int) -> None:
    """Set the pseudo-terminal's size (the child may see the change as a ``SIGWINCH`` if it
    started first)."""
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    except OSError:
        pass


class RunObserver(Protocol):
    """What a run reports to whoever started it (all optional behaviour may be no-ops)."""

    def state_changed(self, run: Run) -> None:
        """The run left the queue (``running``) or is being stopped (``stopping``)."""

    def output(self, run: Run, stream: str, text: str) -> None:
        """*text* (decoded, invalid UTF-8 replaced) arrived on *stream* (``stdout``/``stderr``;
        a pseudo-terminal has only ``stdout``)."""

    def congested(self) -> bool:
        """Whether output should wait (the consumer is behind); polled while paused."""


class _NoObserver:
    def state_changed(self, run: Run) -> None:
        pass

    def output(self, run: Run, stream: str, text: str) -> None:
        pass

    def congested(self) -> bool:
        return False


@dataclass(frozen=True)
class RunSpec:
    """What to run and under which limits.

    :param argv: the program and its arguments (the program is looked up in ``PATH``).
    :param cwd: the working directory (absolute), or ``None`` for the daemon's.
    :param env: variables added to (or replacing) the daemon's environment.
    :param timeout: seconds the program may run before its group is terminated.
    :param pty: give the program a pseudo-terminal (stdout and stderr merged).
    :param stdin: bytes written to the program's standard input, which is then closed (with
        a pseudo-terminal it stays open).
    :param output_cap: bytes of output kept and delivered; the rest is counted.
    :param grace: seconds between ``SIGTERM`` and ``SIGKILL``.
    :param owner: who started it, for ``exec.list`` (``api`` or ``hook:NAME``).
    """

    argv: tuple[str, ...]
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    pty: bool = False
    stdin: bytes | None = None
    output_cap: int = DEFAULT_OUTPUT_CAP
    grace: float = DEFAULT_GRACE
    owner: str = "api"

    @staticmethod
    def shell(command: str, **kwargs: Any) -> RunSpec:
        """A spec running *command* with ``/bin/sh -c`` (only when a caller asks for a shell)."""
        return RunSpec(argv=("/bin/sh", "-c", command), **kwargs)

    def check(self) -> None:
        """:raises errors.InvalidInput: for an empty argv, a NUL byte, a bad variable name, a
        relative working directory or a limit out of range."""
        if not self.argv or not self.argv[0]:
            raise errors.InvalidInput("nothing to run: argv is empty")
        if any("\x00" in a for a in self.argv):
            raise errors.InvalidInput("an argument holds a NUL character")
        for key, value in self.env.items():
            if not key or "=" in key or "\x00" in key or "\x00" in value:
                raise errors.InvalidInput(f"bad environment variable name or value: {key!r}")
        if self.cwd is not None and not os.path.isabs(self.cwd):
            raise errors.InvalidInput("the working directory must be an absolute path")
        if not 0 < self.timeout <= MAX_TIMEOUT:
            raise errors.InvalidInput(f"timeout must be between 0 and {MAX_TIMEOUT:g} seconds")
        if not 0 <= self.output_cap <= MAX_OUTPUT_CAP:
            raise errors.InvalidInput(f"output_cap must be between 0 and {MAX_OUTPUT_CAP}")
        if not 0 <= self.grace <= 60:
            raise errors.InvalidInput("grace must be between 0 and 60 seconds")


@dataclass(frozen=True)
class RunResult:
    """How a run ended (the answer of ``exec.run``).

    ``exit_code`` is set when the program exited, ``signal`` (a name such as ``SIGTERM``) when
    a signal ended it.  ``timed_out``/``killed``/``cancelled`` say who stopped it.
    """

    id: int
    pid: int | None
    exit_code: int | None
    signal: str | None
    timed_out: bool
    killed: bool
    cancelled: bool
    duration: float
    queued_for: float
    stdout_bytes: int
    stderr_bytes: int
    kept_bytes: int
    dropped_bytes: int

    def view(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "id": self.id,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "killed": self.killed,
            "cancelled": self.cancelled,
            "duration": round(self.duration, 6),
            "queued_for": round(self.queued_for, 6),
            "bytes": {
                "stdout": self.stdout_bytes,
                "stderr": self.stderr_bytes,
                "kept": self.kept_bytes,
                "dropped": self.dropped_bytes,
            },
        }


class _RunProtocol(ProcessProtocol):
    def __init__(self, run: Run) -> None:
        self.run = run

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.run._received(childFD, data)

    def processExited(self, reason: Failure) -> None:
        self.run._leader_exited(reason)

    def processEnded(self, reason: Failure) -> None:
        self.run._ended(reason)


class Run:
    """One program run from queue to end; see :class:`ProcessRunner`.

    ``state`` is ``queued``, ``running``, ``stopping`` (signalled, not gone yet) or ``ended``.
    :attr:`done` fires with the :class:`RunResult` once the program and its pipes are gone
    (it never fails; a run cancelled in the queue ends with ``cancelled`` and no pid).
    """

    log = Logger()

    def __init__(self, runner: ProcessRunner, run_id: int, spec: RunSpec, observer: Any) -> None:
        self.runner = runner
        self.id = run_id
        self.spec = spec
        self.observer: RunObserver = observer if observer is not None else _NoObserver()
        self.state = "queued"
        self.pid: int | None = None
        self.queued_at = runner.clock.seconds()
        self.started: float | None = None
        self.ended: float | None = None
        self.timed_out = False
        self.killed = False
        self.cancelled = False
        self.stdout_bytes = 0
        self.stderr_bytes = 0
        self.kept_bytes = 0
        self.dropped_bytes = 0
        self.paused = False
        self.result: RunResult | None = None
        self.done: defer.Deferred[RunResult] = defer.Deferred()
        self._transport: Any = None
        self._decoders: dict[int, Any] = {}
        self._timeout_call: Any = None
        self._kill_call: Any = None
        self._poll_call: Any = None
        self._acquire: defer.Deferred[Any] | None = None
        self._exit: Failure | None = None
        self._leader_gone = False
        self._slot = False
        self.env = dict(runner.base_env)
        self.env.update(spec.env)
        #: the program's path (looked up when the run is queued)
        self.program = runner.which(spec.argv[0], self.env.get("PATH"))

    # -- views ----------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The JSON form for ``exec.list``."""
        now = self.runner.clock.seconds()
        started = self.started
        return {
            "id": self.id,
            "argv": list(self.spec.argv),
            "owner": self.spec.owner,
            "state": self.state,
            "pid": self.pid,
            "pty": self.spec.pty,
            "timeout": self.spec.timeout,
            "age": round(now - (started if started is not None else self.queued_at), 3),
            "paused": self.paused,
            "result": self.result.view() if self.result is not None else None,
            "bytes": {
                "stdout": self.stdout_bytes,
                "stderr": self.stderr_bytes,
                "kept": self.kept_bytes,
                "dropped": self.dropped_bytes,
            },
        }

    # -- control ----------------------------------------------------------------------------

    def kill(self, *, cancelled: bool = False) -> None:
        """Stop the run: leave the queue, or terminate the group (``SIGTERM``, then
        ``SIGKILL`` after the grace period).  Idempotent."""
        if self.state == "ended":
            return
        if cancelled:
            self.cancelled = True
        else:
            self.killed = True
        if self.state == "queued":
            if self._acquire is not None:
                self._acquire.cancel()
            else:
                # holds a slot, waiting for its turn to be spawned
                self.runner._unspawned(self)
                self._finish()
            return
        self._terminate()

    # -- life cycle (called by the runner and the protocol) --------------------------------

    def _start(self) -> None:
        spec = self.spec
        runner = self.runner
        self.state = "running"
        self.started = runner.clock.seconds()
        env = self.env
        program = self.program
        try:
            if spec.pty:
                executable, args = program, [program, *spec.argv[1:]]
            else:
                executable, args = runner.setsid, [runner.setsid, "--", program, *spec.argv[1:]]
            self._transport = runner.reactor.spawnProcess(
                _RunProtocol(self),
                executable,
                args,
                env=env,
                path=spec.cwd,
                usePTY=spec.pty,
            )
        except Exception as e:
            self.log.info("run {id} could not start: {error}", id=self.id, error=str(e))
            self._finish(failed=e)
            return
        self.pid = self._transport.pid
        if spec.pty:
            _set_window_size(self._transport.fileno(), PTY_ROWS, PTY_COLUMNS)
        self.log.debug("run {id} started: pid {pid}", id=self.id, pid=self.pid)
        if spec.stdin:
            self._transport.write(spec.stdin)
        if not spec.pty:
            self._transport.closeStdin()
        self._timeout_call = runner.clock.callLater(spec.timeout, self._timed_out)
        self.observer.state_changed(self)

    def _timed_out(self) -> None:
        self._timeout_call = None
        self.timed_out = True
        self._terminate()

    def _terminate(self) -> None:
        """SIGTERM to the group now, SIGKILL after the grace period (once)."""
        if self.state == "running":
            self.state = "stopping"
            self.observer.state_changed(self)
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None
        if self.paused:
            # a paused reader would keep a dying program blocked on its pipe
            self._resume()
        if self._kill_call is None and self.pid is not None:
            self._signal_group(signal.SIGTERM)
            self._kill_call = self.runner.clock.callLater(self.spec.grace, self._kill_group)

    def _kill_group(self) -> None:
        self._kill_call = None
        self.runner.lingering.discard(self)
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> bool:
        """Signal the process group; return whether anything was left in it."""
        if self.pid is None:
            return False
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            if self._leader_gone:
                return False
            # Just spawned: setsid may not have made the group yet.  The pid is ours until
            # Twisted reaps it, so it is safe to signal directly.
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return False
        except PermissionError:
            # a member changed its uid (setuid program): nothing more we may do
            return False
        return True

    def group_alive(self) -> bool:
        """Whether any process of the run's group is still alive (``killpg`` with signal 0)."""
        return self._signal_group(0)

    def _received(self, fd: int, data: bytes) -> None:
        stream = "stderr" if fd == 2 else "stdout"
        if fd == 2:
            self.stderr_bytes += len(data)
        else:
            self.stdout_bytes += len(data)
        room = self.spec.output_cap - self.kept_bytes
        if room <= 0:
            self.dropped_bytes += len(data)
            self._pause(DISCARD_PAUSE)
            return
        if len(data) > room:
            self.dropped_bytes += len(data) - room
            data = data[:room]
        self.kept_bytes += len(data)
        decoder = self._decoders.get(fd)
        if decoder is None:
            decoder = self._decoders[fd] = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(data, final=self.kept_bytes >= self.spec.output_cap)
        if text:
            self.observer.output(self, stream, text)
        if self.observer.congested():
            self._pause(CONGESTION_POLL)

    def _pause(self, delay: float) -> None:
        """Stop reading the program's output; look again in *delay* seconds."""
        if self.paused or self.state != "running" or self._transport is None:
            return
        self.paused = True
        self._transport.pauseProducing()
        self._poll_call = self.runner.clock.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._poll_call = None
        if not self.paused:
            return
        if self.observer.congested() and self.state == "running":
            self._poll_call = self.runner.clock.callLater(CONGESTION_POLL, self._poll)
        else:
            self._resume()

    def _resume(self) -> None:
        self.paused = False
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None
        if self._transport is not None:
            self._transport.resumeProducing()

    def _leader_exited(self, reason: Failure) -> None:
        self._exit = reason
        self._leader_gone = True
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None
        # Whatever the program left in its group (background jobs) must not outlive the run.
        if self._kill_call is None and self.group_alive():
            self._signal_group(signal.SIGTERM)
            self._kill_call = self.runner.clock.callLater(self.spec.grace, self._kill_group)

    def _ended(self, reason: Failure) -> None:
        if self._exit is None:
            self._exit = reason
        if self._kill_call is not None and not self.group_alive():
            self._kill_call.cancel()
            self._kill_call = None
        elif self._kill_call is not None:
            # the SIGKILL stays scheduled for what is left of the group (background jobs
            # that closed their output); a stopping daemon sends it at once
            self.runner.lingering.add(self)
        for fd, decoder in self._decoders.items():
            rest = decoder.decode(b"", final=True)
            if rest:
                self.observer.output(self, "stderr" if fd == 2 else "stdout", rest)
        self._finish()

    def _finish(self, failed: Exception | None = None) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        clock = self.runner.clock
        self.ended = clock.seconds()
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        exit_code: int | None = None
        sig: str | None = None
        value = self._exit.value if self._exit is not None else None
        if isinstance(value, error.ProcessDone | error.ProcessTerminated):
            exit_code = value.exitCode
            if value.signal is not None:
                sig = _SIGNAL_NAMES.get(value.signal, str(value.signal))
        if failed is not None:
            exit_code = 127
        started = self.started if self.started is not None else self.ended
        self.result = RunResult(
            id=self.id,
            pid=self.pid,
            exit_code=exit_code,
            signal=sig,
            timed_out=self.timed_out,
            killed=self.killed,
            cancelled=self.cancelled,
            duration=self.ended - started,
            queued_for=started - self.queued_at,
            stdout_bytes=self.stdout_bytes,
            stderr_bytes=self.stderr_bytes,
            kept_bytes=self.kept_bytes,
            dropped_bytes=self.dropped_bytes,
        )
        self.log.debug(
            "run {id} ended: exit {code} signal {signal}, {bytes} bytes",
            id=self.id,
            code=exit_code,
            signal=sig,
            bytes=self.stdout_bytes + self.stderr_bytes,
        )
        self.runner._ended(self)
        if failed is not None and not isinstance(failed, errors.JarvisError):
            failed = errors.InvalidInput(f"cannot start {self.spec.argv[0]!r}: {failed}")
        if failed is not None:
            self.done.errback(failed)
        else:
            self.done.callback(self.result)


class ProcessRunner(Service):
    """Runs programs for the daemon (see the module docstring).

    :param reactor: an ``IReactorProcess`` and ``IReactorTime``.
    :param limit: programs running at once.
    :param max_queued: runs waiting for a slot before new ones are refused.
    :param base_env: the environment every program starts from (default: the daemon's).
    :param clock: the time source (default: *reactor*).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        limit: int = DEFAULT_LIMIT,
        max_queued: int = DEFAULT_MAX_QUEUED,
        base_env: Mapping[str, str] | None = None,
        clock: Any = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.limit = limit
        self.max_queued = max_queued
        self.base_env = dict(os.environ if base_env is None else base_env)
        if SETSID is None:
            raise RuntimeError("util-linux 'setsid' is required to run programs in their own group")
        self.setsid: str = SETSID
        self._semaphore = defer.DeferredSemaphore(limit)
        self._ids = itertools.count(1)
        self.runs: dict[int, Run] = {}
        self.finished: deque[Run] = deque(maxlen=HISTORY)
        #: ended runs whose group still has members waiting for their SIGKILL
        self.lingering: set[Run] = set()
        self.peak_running = 0
        self.started_total = 0
        self.refused_total = 0
        self._stopping = False
        self._to_spawn: deque[Run] = deque()
        self._spawn_call: Any = None

    # -- the API ---------------------------------------------------------------------------

    def which(self, program: str, path: str | None) -> str:
        """Return the program's path (``PATH`` lookup unless it holds a slash).

        :raises errors.NotFound: if there is no such executable.
        """
        if "/" in program:
            if os.access(program, os.X_OK) and not os.path.isdir(program):
                return program
        else:
            found = shutil.which(program, path=path if path is not None else os.defpath)
            if found is not None:
                return found
        raise errors.NotFound(f"command not found: {program}")

    def start(self, spec: RunSpec, observer: RunObserver | None = None) -> Run:
        """Queue *spec*; it starts as soon as a slot is free.

        :returns: the :class:`Run` (its ``done`` fires with the :class:`RunResult`).
        :raises errors.InvalidInput: for a bad spec.
        :raises errors.DaemonBusy: when ``max_queued`` runs already wait, or during shutdown.
        """
        spec.check()
        if spec.cwd is not None and not os.path.isdir(spec.cwd):
            raise errors.InvalidInput(f"no such directory: {spec.cwd}")
        if self._stopping:
            raise errors.DaemonBusy("the daemon is stopping: no new programs are started")
        if len(self._semaphore.waiting) >= self.max_queued:
            self.refused_total += 1
            raise errors.DaemonBusy(
                f"{self.max_queued} programs already wait to run: try again later"
            )
        run = Run(self, next(self._ids), spec, observer)
        self.runs[run.id] = run
        acquire = self._semaphore.acquire()
        run._acquire = acquire

        def got_slot(_: Any) -> None:
            run._acquire = None
            run._slot = True
            self.started_total += 1
            self.peak_running = max(self.peak_running, self.running_count())
            self._to_spawn.append(run)
            if self._spawn_call is None:
                self._spawn_call = self.clock.callLater(0, self._spawn_next)

        def not_started(failure: Failure) -> None:
            run._acquire = None
            failure.trap(defer.CancelledError)
            run._finish()

        acquire.addCallbacks(got_slot, not_started)
        return run

    def _spawn_next(self) -> None:
        """Spawn one run, and the next one on a later reactor turn.

        ``spawnProcess`` blocks the reactor until the child has exec'd (``posix_spawn``) or
        the daemon is forked: about 1 ms alone, several ms on a busy machine.  Fifty runs
        starting at once would stall everything else for their sum; one per turn keeps the
        worst stall to one spawn.
        """
        self._spawn_call = None
        if self._to_spawn:
            self._to_spawn.popleft()._start()
        if self._to_spawn and self._spawn_call is None:
            self._spawn_call = self.clock.callLater(0, self._spawn_next)

    def _unspawned(self, run: Run) -> None:
        if run in self._to_spawn:
            self._to_spawn.remove(run)

    def running_count(self) -> int:
        """Runs holding a slot (running or stopping)."""
        return self.limit - self._semaphore.tokens

    def queued_count(self) -> int:
        """Runs waiting for a slot."""
        return len(self._semaphore.waiting)

    def get(self, run_id: int) -> Run:
        """:raises errors.NotFound: for an unknown or finished run."""
        run = self.runs.get(run_id)
        if run is None:
            raise errors.NotFound(f"no running program with id {run_id} (see 'jarvis exec --list')")
        return run

    def listing(self) -> dict[str, Any]:
        """``exec.list``: active runs, recently finished ones and the runner's figures."""
        return {
            "runs": [r.view() for r in self.runs.values()],
            "finished": [r.view() for r in self.finished],
            "limit": self.limit,
            "running": self.running_count(),
            "queued": self.queued_count(),
            "peak_running": self.peak_running,
            "started_total": self.started_total,
            "refused_total": self.refused_total,
        }

    def _ended(self, run: Run) -> None:
        self.runs.pop(run.id, None)
        self.finished.append(run)
        if run._slot:
            run._slot = False
            self._semaphore.release()

    # -- service ---------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        """Refuse new runs, drop the queue, terminate every group; fires when all are gone."""
        super().stopService()
        self._stopping = True
        waiting = [r.done for r in self.runs.values()]
        for run in list(self.runs.values()):
            run.kill(cancelled=True)
        for run in list(self.lingering):
            run._kill_group()
        if self._spawn_call is not None and self._spawn_call.active():
            self._spawn_call.cancel()
        self._spawn_call = None
        if waiting:
            self.log.info("stopping {count} programs", count=len(waiting))
        d = defer.DeferredList(waiting, consumeErrors=True)
        return d.addCallback(lambda _: None)
