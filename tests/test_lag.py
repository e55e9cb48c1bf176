"""Tests for :mod:`jarvis.runtime.lag`: the reactor lag probe, on a fake clock and on the real
reactor."""

from __future__ import annotations

import json
import time
from typing import cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.runtime.lag import ReactorLagProbe


def make_probe(interval: float = 0.01) -> tuple[ReactorLagProbe, task.Clock]:
    """Return a probe ticking on a fresh ``task.Clock``, and that clock."""
    clock = task.Clock()
    probe = ReactorLagProbe(cast(IReactorTime, clock), interval=interval, now=clock.seconds)
    return probe, clock


def advance_in_steps(clock: task.Clock, seconds: float, step: float) -> None:
    """Advance *clock* by *seconds* in steps of *step*, as a punctual reactor would."""
    steps = round(seconds / step)
    for _ in range(steps):
        clock.advance(step)


class PunctualTicksTests(SynchronousTestCase):
    """A probe whose ticks all come on time."""

    def test_no_lag(self) -> None:
        """When every tick comes exactly on time, then the worst lag is zero."""
        probe, clock = make_probe()
        probe.start()
        self.addCleanup(probe.stop)
        advance_in_steps(clock, 1.0, 0.01)
        self.assertAlmostEqual(probe.worst(), 0.0, places=9)
        self.assertAlmostEqual(probe.worst_recent(), 0.0, places=9)

    def test_ticks_counted(self) -> None:
        """When the clock runs 100 intervals, then the probe counts the first tick plus 100."""
        probe, clock = make_probe()
        probe.start()
        self.addCleanup(probe.stop)
        advance_in_steps(clock, 1.0, 0.01)
        self.assertEqual(probe.ticks(), 101)


class LateTickTests(SynchronousTestCase):
    """A probe that sees one tick come late."""

    def test_gap_minus_interval(self) -> None:
        """When one tick comes 0.5 s after the previous one, then the lag is 0.49 s."""
        probe, clock = make_probe()
        probe.start()
        self.addCleanup(probe.stop)
        advance_in_steps(clock, 0.1, 0.01)
        clock.advance(0.5)
        advance_in_steps(clock, 0.1, 0.01)
        self.assertAlmostEqual(probe.worst(), 0.49, places=6)
        self.assertAlmostEqual(probe.worst_recent(), 0.49, places=6)

    def test_worst_kept(self) -> None:
        """When a smaller gap follows a larger one, then the worst stays the larger lag."""
        probe, clock = make_probe()
        probe.start()
        self.addCleanup(probe.stop)
        clock.advance(0.3)
        clock.advance(0.1)
        self.assertAlmostEqual(probe.worst(), 0.29, places=6)


class RecentWindowTests(SynchronousTestCase):
    """The sliding window of :meth:`ReactorLagProbe.worst_recent`."""

    def test_old_lag_leaves_window(self) -> None:
        """When a late tick is over 60 s old, then worst_recent forgets it and worst keeps it."""
        probe, clock = make_probe(interval=1.0)
        probe.start()
        self.addCleanup(probe.stop)
        clock.advance(3.0)
        advance_in_steps(clock, 62.0, 1.0)
        self.assertAlmostEqual(probe.worst(), 2.0, places=6)
        self.assertEqual(probe.worst_recent(), 0.0)

    def test_lag_inside_window(self) -> None:
        """When a late tick is 30 s old, then worst_recent(60) sees it and worst_recent(10) not."""
        probe, clock = make_probe(interval=1.0)
        probe.start()
        self.addCleanup(probe.stop)
        clock.advance(1.5)
        advance_in_steps(clock, 30.0, 1.0)
        self.assertAlmostEqual(probe.worst_recent(60.0), 0.5, places=6)
        self.assertEqual(probe.worst_recent(10.0), 0.0)

    def test_window_moves_without_ticks(self) -> None:
        """When the probe is stopped and time passes, then old lag still leaves the window."""
        probe, clock = make_probe(interval=1.0)
        probe.start()
        clock.advance(4.0)
        probe.stop()
        clock.advance(120.0)
        self.assertEqual(probe.worst_recent(), 0.0)
        self.assertAlmostEqual(probe.worst(), 3.0, places=6)

    def test_negative_window_refused(self) -> None:
        """When the window is negative, then worst_recent raises ValueError."""
        probe, _ = make_probe()
        self.assertRaises(ValueError, probe.worst_recent, -1.0)


class StartStopTests(SynchronousTestCase):
    """Starting and stopping the probe."""

    def test_pause_not_counted(self) -> None:
        """When the probe is stopped for 5 s and started again, then that pause is not lag."""
        probe, clock = make_probe()
        probe.start()
        clock.advance(0.01)
        probe.stop()
        clock.advance(5.0)
        probe.start()
        self.addCleanup(probe.stop)
        advance_in_steps(clock, 0.1, 0.01)
        self.assertAlmostEqual(probe.worst(), 0.0, places=9)
        self.assertNotEqual(clock.getDelayedCalls(), [])

    def test_stop_cancels_timer(self) -> None:
        """When the probe stops, then it leaves no delayed call on the clock."""
        probe, clock = make_probe()
        probe.start()
        self.assertTrue(probe.running)
        probe.stop()
        probe.stop()
        self.assertFalse(probe.running)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_double_start_refused(self) -> None:
        """When a running probe is started again, then it raises RuntimeError."""
        probe, _ = make_probe()
        probe.start()
        self.addCleanup(probe.stop)
        self.assertRaises(RuntimeError, probe.start)

    def test_bad_interval_refused(self) -> None:
        """When the interval is zero, then the constructor raises ValueError."""
        self.assertRaises(ValueError, ReactorLagProbe, cast(IReactorTime, task.Clock()), 0.0)


class SnapshotTests(SynchronousTestCase):
    """The JSON-able snapshot."""

    def test_snapshot_figures(self) -> None:
        """When one tick is 250 ms late, then the snapshot shows it in ms and survives JSON."""
        probe, clock = make_probe()
        probe.start()
        self.addCleanup(probe.stop)
        clock.advance(0.26)
        snapshot = json.loads(json.dumps(probe.snapshot()))
        self.assertEqual(
            snapshot,
            {"worst_ms": 250.0, "worst_last_minute_ms": 250.0, "ticks": 2, "interval_ms": 10.0},
        )


class RealReactorTests(TestCase):
    """The probe on the real (asyncio) reactor."""

    def test_blocking_call_seen(self) -> defer.Deferred[None]:
        """When a callback blocks the reactor for 100 ms, then the probe reports >= 80 ms."""
        from twisted.internet import reactor

        probe = ReactorLagProbe(reactor, interval=0.01)
        probe.start()
        self.addCleanup(probe.stop)
        blocked: defer.Deferred[None] = task.deferLater(reactor, 0.05, time.sleep, 0.1)
        settled = blocked.addCallback(lambda _: task.deferLater(reactor, 0.05, lambda: None))

        def check(_: object) -> None:
            self.assertGreaterEqual(probe.worst(), 0.08)
            self.assertGreaterEqual(probe.snapshot()["worst_last_minute_ms"], 80.0)
            self.assertGreater(probe.ticks(), 5)

        return settled.addCallback(check)
