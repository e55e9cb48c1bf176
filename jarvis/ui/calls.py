"""The UI's daemon calls in flight: which calls the user waits for, the spinner, Ctrl+C's cancel,
and the one-line text of a failed call.

It owns only the calls' bookkeeping: the controller makes the calls and shows the results.  It
must not show a traceback: :func:`error_text` is one line for the status bar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from jarvis.ipc.jsonrpc import too_many_attempts_text

SPINNER_INTERVAL = 0.1


class Unreachable(Exception):
    """The daemon does not answer right now; the UI retries by itself."""

    kind = "unreachable"


def error_text(failure: Failure) -> str:
    """One line for the status bar describing *failure* (never a traceback).

    :returns: the daemon's message for API errors, a fixed text for anything else.
    """
    if failure.check(defer.CancelledError):
        return "cancelled"
    error = failure.value
    kind = getattr(error, "kind", None)
    if kind == "cancelled":
        return "cancelled"
    if kind == "timed_out":
        return "the daemon took too long (timed out)"
    if kind == "too_many_attempts":
        return too_many_attempts_text(getattr(error, "data", None))
    message = getattr(error, "message", None)
    if kind is not None and isinstance(message, str) and message:
        return message.splitlines()[0]
    if isinstance(error, Unreachable):
        return "the daemon is unreachable; retrying"
    name = type(error).__name__
    if "Connection" in name:
        return "lost the connection to the daemon"
    return f"unexpected error ({name}); details are in the log"


def is_cancel(failure: Failure) -> bool:
    return bool(failure.check(defer.CancelledError)) or getattr(failure.value, "kind", None) == (
        "cancelled"
    )


class CallsInFlight:
    """The daemon calls the user waits for (operations in flight), each one cancellable.

    :param clock: the reactor, or a ``task.Clock`` in tests (the spinner).
    :param begin: ``begin(label)`` starts an operation in the model and returns it.
    :param end: ``end(operation)`` ends it in the model.
    :param spin: called every ``SPINNER_INTERVAL`` seconds while a call is in flight.
    :param finished: called after each call finishes (to redraw).
    """

    def __init__(
        self,
        clock: Any,
        *,
        begin: Callable[[str], Any],
        end: Callable[[Any], None],
        spin: Callable[[], None],
        finished: Callable[[], None],
    ) -> None:
        self.inflight: dict[int, defer.Deferred[Any]] = {}
        self._begin = begin
        self._end = end
        self._finished = finished
        self._spinner = LoopingCall(spin)
        self._spinner.clock = clock

    def track(self, d: defer.Deferred[Any], label: str) -> defer.Deferred[Any]:
        """Make *d* an operation in flight named *label* until it fires.

        :returns: *d*.
        """
        operation = self._begin(label)
        self.inflight[operation.id] = d
        if not self._spinner.running:
            self._spinner.start(SPINNER_INTERVAL, now=False)

        def finished(result: Any) -> Any:
            self.inflight.pop(operation.id, None)
            self._end(operation)
            if not self.inflight:
                self._stop_spinner()
            self._finished()
            return result

        d.addBoth(finished)
        return d

    def cancel_all(self) -> int:
        """Cancel every call in flight.

        :returns: how many there were.
        """
        pending = list(self.inflight.values())
        for d in pending:
            d.cancel()
        return len(pending)

    def stop(self) -> None:
        """Cancel every call in flight and stop the spinner."""
        self._stop_spinner()
        self.cancel_all()

    def _stop_spinner(self) -> None:
        if self._spinner.running:
            self._spinner.stop()
