"""A program in a pseudo-terminal, seen through a ``pyte`` screen: the terminal UI's test driver.

:class:`PtyTerminal` spawns a command with ``reactor.spawnProcess(..., usePTY=...)`` on a pty
whose window size is set before the child starts, feeds everything the child writes to a
``pyte.Screen`` through a ``pyte.ByteStream``, and lets a test type keys (:data:`KEYS` has the
xterm escape sequences urwid understands), read the screen, wait until a predicate on the screen
holds (checked after every chunk of output, with a deadline: never a fixed sleep), resize the
window (``TIOCSWINSZ`` on the pty, then ``SIGWINCH``) and stop the program.

It is test code: it must not be imported by Jarvis itself.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

import pyte
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.python.failure import Failure

#: Keys by urwid name -> the bytes an xterm sends for them.
KEYS: dict[str, bytes] = {
    "enter": b"\r",
    "tab": b"\t",
    "shift tab": b"\x1b[Z",
    "esc": b"\x1b",
    "backspace": b"\x7f",
    "up": b"\x1b[A",
    "down": b"\x1b[B",
    "right": b"\x1b[C",
    "left": b"\x1b[D",
    "home": b"\x1b[H",
    "end": b"\x1b[F",
    "page up": b"\x1b[5~",
    "page down": b"\x1b[6~",
    "f1": b"\x1bOP",
    "f2": b"\x1bOQ",
    "f3": b"\x1bOR",
    "f4": b"\x1bOS",
    "f5": b"\x1b[15~",
    "meta left": b"\x1b[1;3D",
    "meta right": b"\x1b[1;3C",
}

#: After a lone Esc, later bytes wait this long: a terminal program tells Esc from the start of
#: an escape sequence only by the pause after it (urwid waits about 0.1 s, curses' ESCDELAY).
ESC_DELAY = 0.3


def key_bytes(key: str) -> bytes:
    """Return what a terminal sends for *key*, named as urwid names it.

    ``"ctrl l"`` -> ``b"\\x0c"``, ``"meta 1"`` (Alt+1) -> ``b"\\x1b1"``, ``"f1"`` ->
    ``b"\\x1bOP"``; a single character is sent as itself.

    :raises KeyError: for a name this table does not know.
    """
    if key in KEYS:
        return KEYS[key]
    if key.startswith("ctrl ") and len(key) == 6 and key[5].isalpha():
        return bytes([ord(key[5].lower()) - ord("a") + 1])
    if key.startswith("meta ") and len(key) == 6:
        return b"\x1b" + key[5].encode()
    if len(key) == 1:
        return key.encode()
    raise KeyError(key)


class ScreenTimeout(AssertionError):
    """The screen did not reach the expected state in time; the message shows the screen."""


class _PtyProtocol(protocol.ProcessProtocol):
    def __init__(self, owner: PtyTerminal) -> None:
        self.owner = owner

    def outReceived(self, data: bytes) -> None:
        self.owner.output_received(data)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.owner.process_ended(reason)


class PtyTerminal:
    """One command running in a pseudo-terminal of *columns* x *lines*.

    :param argv: the command (``argv[0]`` is the executable).
    :param env: its environment (``TERM`` defaults to ``xterm-256color``).
    :param path: its working directory.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        path: str | None = None,
        columns: int = 80,
        lines: int = 24,
    ) -> None:
        self.argv = argv
        self.env = dict(env if env is not None else os.environ)
        self.env.setdefault("TERM", "xterm-256color")
        self.path = path
        self.columns, self.lines = columns, lines
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        #: ``time.perf_counter()`` when the last output arrived (before the screen parsed it).
        self.last_output_at = 0.0
        self.transport: Any = None
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.ended = False
        self._ended_waiters: list[defer.Deferred[int | None]] = []
        self._waiters: list[tuple[Callable[[str], bool], defer.Deferred[str]]] = []
        self._master_fd: int | None = None
        self._queue: list[bytes] = []
        self._hold_until = 0.0
        self._flush_call: Any = None
        self._buffered = False
        self._quiet_waiters: list[tuple[float, Any, defer.Deferred[str]]] = []

    # life cycle --------------------------------------------------------------------------------

    def start(self) -> PtyTerminal:
        """Spawn the command on a fresh pty already sized *columns* x *lines*."""
        master, slave = os.openpty()
        self._set_size(master, self.columns, self.lines)
        self._master_fd = master
        self.transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            _PtyProtocol(self),
            self.argv[0],
            self.argv,
            env=self.env,
            path=self.path,
            usePTY=(master, slave, os.ttyname(slave)),
        )
        return self

    @property
    def pid(self) -> int | None:
        """The child's process id (``None`` once it ended)."""
        return None if self.transport is None else self.transport.pid

    def output_received(self, data: bytes) -> None:
        """Feed the child's output to the screen and re-check the waiters."""
        self.last_output_at = time.perf_counter()
        self.raw = (self.raw + data)[-200_000:]
        self.stream.feed(data)
        for quiet, call, _d in self._quiet_waiters:
            if call.active():
                call.reset(quiet)
        self._check()

    def process_ended(self, reason: Failure) -> None:
        """Record the child's end and fail the waiters that can no longer be satisfied."""
        self.ended = True
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._queue.clear()
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.exit_signal = getattr(reason.value, "signal", None)
        self._check()
        waiters, self._waiters = self._waiters, []
        for _predicate, d in waiters:
            d.errback(
                ScreenTimeout(
                    f"the program ended (status {self.exit_code}, signal {self.exit_signal}) "
                    f"before the screen matched:\n{self.text()}"
                )
            )
        ended, self._ended_waiters = self._ended_waiters, []
        for e in ended:
            e.callback(self.exit_code)

    def wait_ended(self, timeout: float = 10.0) -> defer.Deferred[int | None]:
        """Fire with the exit status once the child ended (and its pty is closed)."""
        if self.ended:
            return defer.succeed(self.exit_code)
        d: defer.Deferred[int | None] = defer.Deferred()
        self._ended_waiters.append(d)
        d.addTimeout(timeout, reactor)  # type: ignore[arg-type]
        return d

    def signal(self, signum: int) -> None:
        """Send *signum* to the child (nothing if it already ended)."""
        if self.transport is None or self.ended:
            return
        try:
            self.transport.signalProcess(signum)
        except (ProcessExitedAlready, OSError):
            pass

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the child (SIGKILL if it lingers) and wait until it ended.

        :returns: its exit status (``None`` if killed by a signal).
        """
        if self.transport is None or self.ended:
            return self.exit_code
        ended = self.wait_ended(timeout)
        self.signal(signal.SIGTERM)
        try:
            return await ended
        except defer.TimeoutError:
            ended = self.wait_ended(timeout)
            self.signal(signal.SIGKILL)
            return await ended

    # keys and screen ---------------------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        """Write raw bytes (or text, UTF-8) to the terminal, as if typed, in order.

        Bytes after a lone Esc are held back for :data:`ESC_DELAY` so the program reads Esc.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        self._queue.append(data)
        self._flush()

    def _write(self, data: bytes) -> None:
        # Straight to the pty like a terminal emulator (the transport's buffered write waits
        # for the next reactor turn, which adds milliseconds to latency figures); whatever the
        # pty does not take goes through the transport, and so does everything after it.
        if not self._buffered:
            try:
                written = os.write(self.transport.fd, data)
            except BlockingIOError:
                written = 0
            data = data[written:]
            if not data:
                return
            self._buffered = True
        self.transport.write(data)

    def _flush(self) -> None:
        self._flush_call = None
        while self._queue and not self.ended:
            now = reactor.seconds()  # type: ignore[attr-defined]
            if now < self._hold_until:
                self._flush_call = reactor.callLater(  # type: ignore[attr-defined]
                    self._hold_until - now, self._flush
                )
                return
            data = self._queue.pop(0)
            self._write(data)
            if data == b"\x1b":
                self._hold_until = reactor.seconds() + ESC_DELAY  # type: ignore[attr-defined]

    def type(self, text: str) -> None:
        """Type *text* (printable characters)."""
        self.send(text)

    def press(self, *keys: str) -> None:
        """Press keys named as urwid names them: ``"enter"``, ``"ctrl l"``, ``"meta 1"``, ``"f1"``.

        Keys after ``"esc"`` follow it after :data:`ESC_DELAY`, so the program reads it as Esc
        and not as the start of an escape sequence (or as Alt with the next key).
        """
        for key in keys:
            self.send(key_bytes(key))

    def text(self) -> str:
        """The screen as text: one line per row, trailing spaces removed."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def rows(self) -> list[str]:
        """The screen's rows (exactly *lines* of them), trailing spaces removed."""
        return [line.rstrip() for line in self.screen.display]

    def contains(self, needle: str) -> bool:
        """Whether *needle* is on the screen (within one row)."""
        return any(needle in line for line in self.screen.display)

    def row_with(self, needle: str) -> str | None:
        """The first screen row containing *needle*, or ``None``."""
        for line in self.screen.display:
            if needle in line:
                return line.rstrip()
        return None

    def wait_for(
        self, predicate: Callable[[str], bool] | str, timeout: float = 30.0
    ) -> defer.Deferred[str]:
        """Fire with the screen text once *predicate(text)* holds (or *predicate* is on screen).

        Checked now and after every chunk of output.  Fails with :class:`ScreenTimeout` (showing
        the screen) after *timeout* seconds or when the program ends first.
        """
        if isinstance(predicate, str):
            needle = predicate
            check: Callable[[str], bool] = lambda text: needle in text  # noqa: E731
        else:
            check = predicate
        d: defer.Deferred[str] = defer.Deferred()
        text = self.text()
        if check(text):
            d.callback(text)
            return d
        if self.ended:
            d.errback(ScreenTimeout(f"the program already ended; the screen:\n{text}"))
            return d
        self._waiters.append((check, d))

        def timed_out(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError, defer.CancelledError):
                self._waiters = [(p, w) for p, w in self._waiters if w is not d]
                raise ScreenTimeout(
                    f"the screen did not match within {timeout:g} s:\n{self.text()}"
                )
            return failure

        d.addTimeout(timeout, reactor, onTimeoutCancel=lambda r, t: r)  # type: ignore[arg-type]
        d.addErrback(timed_out)
        return d

    def wait_quiet(self, quiet: float = 0.5, longest: float = 3.0) -> defer.Deferred[str]:
        """Fire with the screen text once the program wrote nothing for *quiet* seconds (or
        after *longest* seconds, for screens that animate).

        For rewriting golden screens only: a test waits for what the screen shows instead.
        """
        d: defer.Deferred[str] = defer.Deferred()

        def fire() -> None:
            if d.called:
                return
            for _quiet, call, waiter in self._quiet_waiters:
                if waiter is d and call.active():
                    call.cancel()
            self._quiet_waiters = [w for w in self._quiet_waiters if w[2] is not d]
            if limit.active():
                limit.cancel()
            d.callback(self.text())

        call = reactor.callLater(quiet, fire)  # type: ignore[attr-defined]
        limit = reactor.callLater(longest, fire)  # type: ignore[attr-defined]
        self._quiet_waiters.append((quiet, call, d))
        return d

    def wait_gone(self, needle: str, timeout: float = 15.0) -> defer.Deferred[str]:
        """Fire once *needle* is no longer on the screen."""
        return self.wait_for(lambda text: needle not in text, timeout)

    def _check(self) -> None:
        if not self._waiters:
            return
        text = self.text()
        keep = []
        for predicate, d in self._waiters:
            if d.called:
                continue
            try:
                ok = predicate(text)
            except Exception:
                d.errback(Failure())
                continue
            if ok:
                d.callback(text)
            else:
                keep.append((predicate, d))
        self._waiters = keep

    # window size -------------------------------------------------------------------------------

    @staticmethod
    def _set_size(fd: int, columns: int, lines: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))

    def resize(self, columns: int, lines: int) -> None:
        """Set the pty's window size and tell the program (SIGWINCH); the screen follows."""
        self.columns, self.lines = columns, lines
        self.screen.resize(lines, columns)
        fd = self.transport.fd if self.transport is not None else self._master_fd
        if fd is not None and not self.ended:
            self._set_size(fd, columns, lines)
            self.signal(signal.SIGWINCH)
