"""Reactor lag probe: how late the event loop runs a timer that should fire every few ms.

A :class:`ReactorLagProbe` runs a :class:`~twisted.internet.task.LoopingCall` every ``interval``
seconds and records how much later than ``interval`` each tick came (``lag = gap - interval``).
A long synchronous callback (a slow SQLite call, Argon2 on the reactor thread, a huge JSON
dump) shows up as one large gap.  The daemon reports the figures in its status, tests use it to
assert that work stays off the reactor thread, and the benchmarks report it next to throughput.

This module must not import :mod:`twisted.internet.reactor`: the caller passes any
``IReactorTime`` (a :class:`~twisted.internet.task.Clock` in tests) and a ``now()`` callable
that reads the same time base as that clock.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: How many seconds of per-second maxima the probe keeps for :meth:`worst_recent`.
HISTORY_SECONDS = 60.0


class ReactorLagProbe:
    """Measure the worst delay of a periodic timer on *clock*.

    :param clock: the reactor (or a ``task.Clock``) that runs the ticks.
    :param interval: seconds between ticks; the lag of a tick is its gap minus this.
    :param now: returns the current time in seconds, on the same time base as *clock*
        (``time.monotonic`` for the real reactor, ``clock.seconds`` for a ``task.Clock``).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = 0.01,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        self._clock = clock
        self._interval = interval
        self._now = now
        self._loop: LoopingCall | None = None
        self._last_tick: float | None = None
        self._worst = 0.0
        self._ticks = 0
        # (whole second of the tick, worst lag seen in that second), oldest first.
        self._per_second: collections.deque[tuple[int, float]] = collections.deque()

    @property
    def interval(self) -> float:
        """Seconds between ticks."""
        return self._interval

    @property
    def running(self) -> bool:
        """Whether the probe is ticking."""
        return self._loop is not None and self._loop.running

    def start(self) -> None:
        """Start ticking (the first tick runs at once).

        :raises RuntimeError: if the probe is already running.
        """
        if self.running:
            raise RuntimeError("ReactorLagProbe is already running")
        self._last_tick = None
        loop = LoopingCall(self._tick)
        loop.clock = self._clock
        self._loop = loop
        done = loop.start(self._interval, now=True)
        done.addErrback(lambda failure: self.log.failure("lag probe stopped", failure))

    def stop(self) -> None:
        """Stop ticking; the figures recorded so far stay readable.  Idempotent."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        # The pause between stop() and a later start() is not reactor lag.
        self._last_tick = None

    def worst(self) -> float:
        """Return the worst lag since the probe was created, in seconds (0.0 if none)."""
        return self._worst

    def worst_recent(self, window: float = HISTORY_SECONDS) -> float:
        """Return the worst lag of the ticks in the last *window* seconds.

        Lags are kept as per-second maxima, so the window is rounded out to whole seconds;
        windows longer than :data:`HISTORY_SECONDS` see only that much history.

        :param window: how many seconds to look back from now.
        :returns: the worst lag in seconds, 0.0 when no tick was late in the window.
        """
        if window < 0:
            raise ValueError(f"window must not be negative, not {window!r}")
        now = self._now()
        self._forget_before(now)
        oldest = math.floor(now - window)
        return max((lag for second, lag in self._per_second if second >= oldest), default=0.0)

    def ticks(self) -> int:
        """Return how many ticks ran since the probe was created."""
        return self._ticks

    def snapshot(self) -> dict[str, Any]:
        """Return the figures as a JSON-able dict.

        :returns: ``worst_ms``, ``worst_last_minute_ms`` (floats, milliseconds), ``ticks``
            (int) and ``interval_ms`` (float).
        """
        return {
            "worst_ms": round(self._worst * 1000.0, 3),
            "worst_last_minute_ms": round(self.worst_recent(HISTORY_SECONDS) * 1000.0, 3),
            "ticks": self._ticks,
            "interval_ms": round(self._interval * 1000.0, 3),
        }

    def _tick(self) -> None:
        now = self._now()
        self._ticks += 1
        last, self._last_tick = self._last_tick, now
        if last is None:
            return
        lag = max(0.0, (now - last) - self._interval)
        if lag > self._worst:
            self._worst = lag
        second = math.floor(now)
        if self._per_second and self._per_second[-1][0] == second:
            if lag > self._per_second[-1][1]:
                self._per_second[-1] = (second, lag)
        else:
            self._per_second.append((second, lag))
        self._forget_before(now)

    def _forget_before(self, now: float) -> None:
        oldest = math.floor(now - HISTORY_SECONDS)
        while self._per_second and self._per_second[0][0] < oldest:
            self._per_second.popleft()
