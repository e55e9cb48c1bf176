"""Tests for :mod:`jarvis.net.refusals`: the one rule for logging refused connections."""

from __future__ import annotations

from typing import cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from jarvis.net import admission, knock
from jarvis.net.refusals import RefusalTally


def make_tally(period: float = 60.0) -> tuple[RefusalTally, Clock, list[str]]:
    """Return a tally logging to a list of formatted lines, and its clock."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    clock = Clock()
    log = Logger(observer=cast(ILogObserver, observe))
    tally = RefusalTally(
        clock, period, log=log, first="first {kind} from {host}", summary="{count} more: {details}"
    )
    return tally, clock, lines


class RefusalTallyTests(SynchronousTestCase):
    """Counts by kind; the first line at once, then one line per period."""

    def test_first_at_once_then_one_line_per_period(self) -> None:
        """When refusals keep coming, then the first is logged at once, the others once per
        period, and every one is totalled."""
        tally, clock, lines = make_tally()
        tally.note("bad knock", host="h")
        for _ in range(3):
            tally.note("no knock", host="h")
        tally.note("bad knock", host="h")
        self.assertEqual(lines, ["first bad knock from h"])
        clock.advance(60)
        self.assertEqual(lines[-1], "4 more: 1 bad knock, 3 no knock")
        clock.advance(60)  # a quiet period: nothing logged, the next refusal logs at once
        tally.note("late knock", host="g")
        self.assertEqual(lines[-1], "first late knock from g")
        self.assertEqual(dict(tally.totals), {"bad knock": 2, "no knock": 3, "late knock": 1})

    def test_stop_flushes_and_schedules_nothing(self) -> None:
        """When the tally stops, then counted refusals are logged, later ones only totalled,
        and no timer is left."""
        tally, clock, lines = make_tally()
        tally.note("a", host="h")
        tally.note("b", host="h")
        tally.stop()
        tally.note("c", host="h")
        self.assertEqual(lines, ["first a from h", "1 more: 1 b"])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(tally.totals["c"], 1)

    def test_knock_and_admission_share_it(self) -> None:
        """When the knock gate and the admission control make their refusal logs, then both
        are the one RefusalTally class."""
        clock = Clock()
        self.assertIsInstance(knock.refusal_log(clock), RefusalTally)
        self.assertIsInstance(admission.refusal_summary(clock), RefusalTally)
