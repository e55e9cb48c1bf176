"""The terminal UI's ``/exec``: run a local program through the daemon and show its output.

``/exec [-o] [-t SECONDS] COMMAND...`` splits COMMAND with :mod:`shlex` (no shell) and calls the
daemon's ``exec.run`` on the UI's own connection with a progress callback: each output chunk
becomes local lines of the conversation area (:meth:`MessengerModel.add_local`: shown here,
never sent), made terminal-safe (:func:`jarvis.common.textsafe.terminal_safe`: controls and bidi
characters turn into visible escapes), at most :data:`MAX_LINES` lines of one run.  With
``-o`` the output (as shown, at most :data:`MESSAGE_LIMIT` bytes, with a note when cut) is
sent to the conversation open when the command started, as one message, once it ended.

Ctrl+C cancels the newest command running in the view in focus (the open conversation, or the
view with none open) by cancelling its call: the IPC client sends ``$/cancelRequest`` and the
daemon terminates the program's process group, as the controller's Ctrl+C cancels its calls in
flight (:mod:`jarvis.ui.calls`).  ``/exec -list`` lists the daemon's running programs
(``exec.list``) and ``/exec -kill ID`` stops one (``exec.kill``).

It owns the running commands and their lines; it must not import urwid or the reactor (the
clock is injected) and never logs arguments or output.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.common.textsafe import human_duration, terminal_safe
from jarvis.ui.calls import error_text, is_cancel
from jarvis.ui.model import MessengerModel

#: The largest message the daemon takes, in bytes of UTF-8 (``messages.send`` in docs/ipc.md;
#: the same number as ``jarvis.core.limits.MAX_TEXT_BYTES``, which the UI may not import).
MESSAGE_LIMIT = 64 * 1024

#: Lines of one command's output shown; later ones are counted, not kept.
MAX_LINES = 1000

#: Characters of one line shown (a longer line continues on the next local line).
MAX_LINE = 1000

#: The largest ``-t`` (the daemon's own limit: 24 hours).
MAX_TIMEOUT = 24 * 3600.0

USAGE = "usage: /exec [-o] [-t SECONDS] COMMAND...  |  /exec -list  |  /exec -kill ID"


@dataclass(frozen=True)
class ExecStart:
    """``/exec [-o] [-t SECONDS] COMMAND...``: run *argv* (``send``: ``-o``)."""

    argv: tuple[str, ...]
    send: bool = False
    timeout: float | None = None


@dataclass(frozen=True)
class ExecList:
    """``/exec -list``."""


@dataclass(frozen=True)
class ExecKill:
    """``/exec -kill ID``."""

    id: int


@dataclass(frozen=True)
class ExecUsage:
    """A malformed ``/exec`` line; ``text`` says what is expected."""

    text: str


ExecRequest = ExecStart | ExecList | ExecKill | ExecUsage


def is_exec(line: str) -> bool:
    """Whether the input line is an ``/exec`` command."""
    head = line.split(None, 1)[0] if line.strip() else ""
    return head.lower() == "/exec"


def parse_exec(line: str) -> ExecRequest:
    """Parse an ``/exec`` input line (see :data:`USAGE`); options come before COMMAND, ``--``
    ends them."""
    rest = line.strip()[len("/exec") :]
    try:
        words = shlex.split(rest)
    except ValueError as e:
        return ExecUsage(f"/exec: {e} ({USAGE})")
    if not words:
        return ExecUsage(USAGE)
    if words[0] == "-list":
        return ExecList() if len(words) == 1 else ExecUsage(USAGE)
    if words[0] == "-kill":
        if len(words) != 2 or not words[1].isdigit():
            return ExecUsage("usage: /exec -kill ID (the number /exec -list shows)")
        return ExecKill(int(words[1]))
    send = False
    timeout: float | None = None
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option == "--":
            break
        if option == "-o":
            send = True
        elif option == "-t":
            value = words.pop(0) if words else ""
            try:
                timeout = float(value)
            except ValueError:
                timeout = -1.0
            if not 0 < timeout <= MAX_TIMEOUT:
                return ExecUsage(f"/exec -t: a number of seconds up to {MAX_TIMEOUT:g}")
        else:
            return ExecUsage(f"/exec: unknown option {option} ({USAGE})")
    if not words:
        return ExecUsage(USAGE)
    return ExecStart(tuple(words), send, timeout)


def cut_to_message(text: str, missing: int = 0, limit: int = MESSAGE_LIMIT) -> str:
    """*text* as one message of at most *limit* UTF-8 bytes, ending with
    ``(cut: N bytes not sent)`` when it does not fit or *missing* bytes never arrived.

    :param missing: bytes of output not in *text* (beyond the daemon's output cap, or beyond
        what the UI kept).
    """
    data = text.encode("utf-8")
    if not missing and len(data) <= limit:
        return text
    kept = len(data)
    while True:
        note = f"\n(cut: {len(data) - kept + missing} bytes not sent)"
        room = limit - len(note.encode("utf-8"))
        if kept <= room:
            break
        kept = room
    head = data[:kept].decode("utf-8", "ignore")
    # bytes of a character split by the cut are not sent either (the note counts them)
    note = f"\n(cut: {len(data) - len(head.encode('utf-8')) + missing} bytes not sent)"
    return head + note


def _command_line(argv: tuple[str, ...] | list[str]) -> str:
    return terminal_safe(shlex.join(argv), keep_newlines=False)


def _ending(result: Mapping[str, Any]) -> str:
    """How a run ended, from ``exec.run``'s answer: ``exit 0``, ``SIGTERM (timed out)``."""
    if result.get("signal"):
        how = str(result["signal"])
    else:
        how = f"exit {result.get('exit_code')}"
    if result.get("timed_out"):
        how += " (timed out)"
    elif result.get("killed"):
        how += " (killed)"
    return how


@dataclass
class ExecRun:
    """One ``/exec`` command of this UI, from submit to its last line.

    :param view: the conversation it belongs to (``None``: the view with none open).
    """

    number: int
    argv: tuple[str, ...]
    view: str | None
    send: bool
    started: float
    id: int | None = None  # the daemon's run id (from the first progress value)
    state: str = "starting"
    call: defer.Deferred[Any] | None = None
    partial: dict[str, str] = field(default_factory=dict)
    shown: int = 0
    hidden: int = 0
    kept: list[str] = field(default_factory=list)
    kept_bytes: int = 0
    unkept_bytes: int = 0

    def label(self) -> str:
        return f"exec #{self.id}" if self.id is not None else "exec"


class ExecRuns:
    """The ``/exec`` commands of this UI.

    :param model: where the lines go (:meth:`MessengerModel.add_local`) and the status line.
    :param clock: the reactor, or a ``task.Clock`` in tests.
    :param client: returns the connected IPC client, or ``None``.
    :param send: ``send(uid, text)`` sends a message (the controller's send), returning a
        Deferred.
    :param redraw: asks for a redraw after network events.
    :param cwd: the working directory programs run in (the UI's own).
    """

    log = Logger()

    def __init__(
        self,
        model: MessengerModel,
        clock: Any,
        *,
        client: Callable[[], Any],
        send: Callable[[str, str], defer.Deferred[Any]],
        redraw: Callable[[], None],
        cwd: Callable[[], str] = os.getcwd,
    ) -> None:
        self.model = model
        self.clock = clock
        self._client = client
        self._send = send
        self._redraw = redraw
        self._cwd = cwd
        #: the commands not ended yet, by their UI number
        self.runs: dict[int, ExecRun] = {}
        self._numbers = 0

    # the input line ------------------------------------------------------------------------

    def submit(self, line: str) -> bool:
        """Run the input *line* if it is an ``/exec`` command.

        :returns: whether it was one (the controller does nothing more with it).
        """
        if not is_exec(line):
            return False
        self.model.clear_status()
        request = parse_exec(line)
        if isinstance(request, ExecUsage):
            self.model.notify(request.text, "error")
        elif isinstance(request, ExecList):
            self.list()
        elif isinstance(request, ExecKill):
            self.kill(request.id)
        else:
            self.start(request)
        return True

    def _line(self, view: str | None, text: str) -> None:
        if not self.model.locked:
            self.model.add_local(view, text, self.clock.seconds())

    def _call(
        self, method: str, params: dict[str, Any], progress: Callable[[Any], None] | None = None
    ) -> defer.Deferred[Any]:
        client = self._client()
        if client is None:
            return defer.fail(ConnectionError("not connected"))
        try:
            if progress is None:
                return defer.maybeDeferred(client.call, method, params)
            return defer.maybeDeferred(client.call, method, params, progress=progress)
        except Exception:
            return defer.fail(Failure())

    # running -------------------------------------------------------------------------------

    def start(self, request: ExecStart) -> ExecRun | None:
        """Run *request* in the view open now; its output follows there as local lines."""
        view = self.model.current_uid
        if request.send and view is None:
            self.model.notify(
                "/exec -o: open a conversation first (the output goes there)",
                "error",
            )
            return None
        self._numbers += 1
        run = ExecRun(self._numbers, request.argv, view, request.send, self.clock.seconds())
        params: dict[str, Any] = {"argv": list(request.argv), "cwd": self._cwd()}
        if request.timeout is not None:
            params["timeout"] = request.timeout
        self._line(view, f"$ {_command_line(request.argv)}")
        self.runs[run.number] = run
        run.call = self._call("exec.run", params, lambda value: self._progress(run, value))
        run.call.addCallbacks(self._ended, self._failed, callbackArgs=(run,), errbackArgs=(run,))
        run.call.addErrback(self._internal_error)
        self._redraw()
        return run

    def _progress(self, run: ExecRun, value: Any) -> None:
        if run.number not in self.runs or not isinstance(value, Mapping):
            return
        try:
            if run.id is None and isinstance(value.get("id"), int):
                run.id = value["id"]
            stage = value.get("stage")
            if stage == "output":
                text = value.get("text")
                stream = value.get("stream")
                if isinstance(text, str):
                    self._output(run, stream if isinstance(stream, str) else "stdout", text)
            elif isinstance(stage, str):
                run.state = stage
                if stage == "queued":
                    ahead = value.get("ahead")
                    self.model.notify(f"{run.label()} waits for a free slot ({ahead} ahead)")
        except Exception:
            self.log.failure("showing exec output failed")
        self._redraw()

    def _output(self, run: ExecRun, stream: str, text: str) -> None:
        if run.send:
            size = len(text.encode("utf-8"))
            if run.kept_bytes < MESSAGE_LIMIT:
                run.kept.append(text)
                run.kept_bytes += size
            else:
                run.unkept_bytes += size
        lines = (run.partial.pop(stream, "") + text).split("\n")
        rest = lines.pop()
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if rest:
            run.partial[stream] = rest
        for line in lines:
            self._show(run, line)

    def _show(self, run: ExecRun, line: str) -> None:
        if run.shown >= MAX_LINES:
            run.hidden += 1
            return
        run.shown += 1
        line = terminal_safe(line.removesuffix("\r").expandtabs(8), keep_newlines=False)
        self._line(run.view, "  " + line)

    def _flush(self, run: ExecRun) -> None:
        for stream in sorted(run.partial):
            self._show(run, run.partial.pop(stream))

    def _finish(self, run: ExecRun) -> None:
        self.runs.pop(run.number, None)
        self._flush(run)
        if run.hidden:
            self._line(run.view, f"({run.hidden} more lines not shown)")

    def _ended(self, result: Any, run: ExecRun) -> None:
        result = result if isinstance(result, Mapping) else {}
        if run.id is None and isinstance(result.get("id"), int):
            run.id = result["id"]
        self._finish(run)
        took = result.get("duration")
        took_text = human_duration(took) if isinstance(took, int | float) else "?"
        counts = result.get("bytes") if isinstance(result.get("bytes"), Mapping) else {}
        dropped = counts.get("dropped", 0)
        dropped = dropped if isinstance(dropped, int) else 0
        note = f"; {dropped} bytes beyond the output cap not shown" if dropped else ""
        self._line(run.view, f"{run.label()}: {_ending(result)} after {took_text}{note}")
        if run.send:
            self._send_output(run, dropped)
        self._redraw()

    def _failed(self, failure: Failure, run: ExecRun) -> None:
        self._finish(run)
        if is_cancel(failure):
            self._line(run.view, f"{run.label()}: cancelled")
            self.model.notify(f"{run.label()} cancelled")
        else:
            text = error_text(failure)
            self.log.info(
                "exec failed: {kind}",
                kind=getattr(failure.value, "kind", None) or type(failure.value).__name__,
            )
            self._line(run.view, f"{run.label()} failed: {text}")
            self.model.notify(f"{run.label()} failed: {text}", "error")
        if run.send:
            self.model.notify(f"{run.label()}: nothing sent (the command did not finish)")
        self._redraw()

    def _internal_error(self, failure: Failure) -> None:
        self.log.failure("internal error in /exec", failure)
        self.model.notify("internal error (/exec); details are in the log", "error")
        self._redraw()

    def _send_output(self, run: ExecRun, dropped: int) -> None:
        text = terminal_safe("".join(run.kept)).rstrip("\n")
        if not text:
            self._line(run.view, f"{run.label()}: no output to send")
            return
        assert run.view is not None
        message = cut_to_message(text, run.unkept_bytes + dropped)
        self._send(run.view, message)

    # Ctrl+C, -list, -kill ------------------------------------------------------------------

    def cancel_focused(self) -> bool:
        """Ctrl+C: cancel the newest command running in the view in focus.

        :returns: whether there was one.
        """
        view = self.model.current_uid
        for number in sorted(self.runs, reverse=True):
            run = self.runs[number]
            if run.view == view and run.call is not None and not run.call.called:
                run.call.cancel()
                return True
        return False

    def list(self) -> None:
        """``/exec -list``: the daemon's running programs as local lines of the view open."""
        view = self.model.current_uid
        d = self._call("exec.list", {})

        def listed(listing: Any) -> None:
            runs = listing.get("runs") if isinstance(listing, Mapping) else None
            runs = [r for r in runs or () if isinstance(r, Mapping)]
            if not runs:
                self._line(view, "exec: nothing running")
            for entry in runs:
                argv = entry.get("argv") if isinstance(entry.get("argv"), list) else []
                age = entry.get("age")
                elapsed = human_duration(age) if isinstance(age, int | float) else "?"
                owner = entry.get("owner")
                by = f" ({terminal_safe(str(owner))})" if owner not in (None, "api") else ""
                line = f"#{entry.get('id')} {entry.get('state')} {elapsed}  "
                self._line(view, line + _command_line([str(a) for a in argv]) + by)
            self._redraw()

        d.addCallbacks(listed, self._report, errbackArgs=("/exec -list",))
        d.addErrback(self._internal_error)

    def kill(self, ident: int) -> None:
        """``/exec -kill ID``: terminate the daemon's run *ident* (its call answers "killed")."""
        d = self._call("exec.kill", {"id": ident})

        def killed(_: Any) -> None:
            self.model.notify(f"exec #{ident}: stopping")
            self._redraw()

        d.addCallbacks(killed, self._report, errbackArgs=(f"/exec -kill {ident}",))
        d.addErrback(self._internal_error)

    def _report(self, failure: Failure, what: str) -> None:
        self.model.notify(f"{what} failed: {error_text(failure)}", "error")
        self._redraw()
