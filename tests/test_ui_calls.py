"""Tests for jarvis.ui.calls: calls in flight, the spinner, Ctrl+C's cancel, error lines."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from jarvis.ui.calls import SPINNER_INTERVAL, CallsInFlight, Unreachable, error_text


class Operation:
    def __init__(self, id: int, label: str) -> None:
        self.id = id
        self.label = label


def make_calls() -> tuple[CallsInFlight, Clock, dict[str, list[Any]]]:
    """CallsInFlight on a Clock, recording begin/end/spin/finished."""
    clock = Clock()
    seen: dict[str, list[Any]] = {"begin": [], "end": [], "spin": [], "finished": []}

    def begin(label: str) -> Operation:
        seen["begin"].append(label)
        return Operation(len(seen["begin"]), label)

    calls = CallsInFlight(
        clock,
        begin=begin,
        end=lambda op: seen["end"].append(op.label),
        spin=lambda: seen["spin"].append(clock.seconds()),
        finished=lambda: seen["finished"].append(True),
    )
    return calls, clock, seen


class CallsInFlightTests(SynchronousTestCase):
    def test_spinner_runs_while_in_flight(self) -> None:
        """When a call is in flight, then the spinner turns; when it finishes, then the
        operation ends, the spinner stops and no timer is left."""
        calls, clock, seen = make_calls()
        d: defer.Deferred[Any] = defer.Deferred()
        calls.track(d, "sending")
        clock.advance(SPINNER_INTERVAL)
        self.assertEqual(len(seen["spin"]), 1)
        d.callback("ok")
        self.assertEqual(seen["end"], ["sending"])
        self.assertEqual(calls.inflight, {})
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_all(self) -> None:
        """When Ctrl+C cancels two calls in flight, then both fail with CancelledError and the
        count is two; with none in flight, the count is zero."""
        calls, clock, _seen = make_calls()
        first: defer.Deferred[Any] = defer.Deferred()
        second: defer.Deferred[Any] = defer.Deferred()
        calls.track(first, "a")
        calls.track(second, "b")
        self.assertEqual(calls.cancel_all(), 2)
        self.failureResultOf(first, defer.CancelledError)
        self.failureResultOf(second, defer.CancelledError)
        self.assertEqual(calls.cancel_all(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class ErrorTextTests(SynchronousTestCase):
    def test_lines(self) -> None:
        """When calls fail in different ways, then each gets one fixed line, never a traceback."""
        self.assertEqual(error_text(Failure(defer.CancelledError())), "cancelled")
        self.assertEqual(error_text(Failure(Unreachable())), "the daemon is unreachable; retrying")
        self.assertIn("unexpected error (KeyError)", error_text(Failure(KeyError("x"))))
