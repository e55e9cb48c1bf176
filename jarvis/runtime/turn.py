"""Work deferred to the end of the current reactor turn: the one "once per turn" mechanism.

A burst (hundreds of events in one reactor turn) asks for a redraw, a flush or a batch write
hundreds of times; these helpers turn that into one call at the end of the turn
(``callLater(0)`` on an injected ``IReactorTime``).  Every layer uses them instead of a
hand-written guard; this module imports nothing of Twisted's reactor, so ``core`` may use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class OncePerTurn:
    """Calls *function* once at the end of this reactor turn, however often it is asked to.

    :param clock: an ``IReactorTime`` (the reactor, or ``task.Clock`` in tests).
    :param function: what to call.
    """

    def __init__(self, clock: Any, function: Callable[[], object]) -> None:
        self._clock = clock
        self._function = function
        self._call: Any = None

    @property
    def pending(self) -> bool:
        """Whether a call is scheduled for the end of this turn."""
        return self._call is not None

    def request(self) -> None:
        """Have *function* called at the end of this turn (once, if asked again)."""
        if self._call is None:
            self._call = self._clock.callLater(0, self._run)

    def cancel(self) -> None:
        """Forget a pending call."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _run(self) -> None:
        self._call = None
        self._function()


class OncePerFrame(OncePerTurn):
    """Like :class:`OncePerTurn`, and on average at most once every *interval* seconds.

    A burst spread over many reactor turns (a folder's 500 files arriving, each file's events
    a turn of their own) called *function* at the end of every turn; now at most
    ``1 / interval`` times a second once the burst lasts.  A token bucket: up to *burst* calls
    come at the end of their turns however close together (a screen drawn and redrawn as the
    UI starts), and a request after a quiet moment is served at the end of its turn as before.

    :param clock: an ``IReactorTime``.
    :param function: what to call.
    :param interval: the least average time between two calls.
    :param burst: calls that may come at once before the interval counts.
    """

    def __init__(
        self, clock: Any, function: Callable[[], object], interval: float, burst: int = 3
    ) -> None:
        super().__init__(clock, function)
        self._interval = interval
        self._burst = float(burst)
        self._tokens = float(burst)
        self._counted_at: float | None = None

    def _refill(self) -> float:
        now = self._clock.seconds()
        if self._counted_at is not None:
            gained = (now - self._counted_at) / self._interval
            self._tokens = min(self._burst, self._tokens + gained)
        self._counted_at = now
        return self._tokens

    def request(self) -> None:
        """Have *function* called at the end of this turn, or as soon as the bucket allows
        (once, if asked again meanwhile)."""
        if self._call is None:
            tokens = self._refill()
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) * self._interval
            self._call = self._clock.callLater(wait, self._run)

    def _run(self) -> None:
        self._refill()
        self._tokens -= 1.0
        super()._run()


class TurnBatch:
    """Items added during one reactor turn, handed together to *flush* at the end of it.

    :param clock: an ``IReactorTime``.
    :param flush: called with ``{key: [items in the order added]}``.
    """

    def __init__(self, clock: Any, flush: Callable[[dict[Any, list[Any]]], None]) -> None:
        self._flush = flush
        self._pending: dict[Any, list[Any]] = {}
        self._once = OncePerTurn(clock, self._run)

    def add(self, key: Any, item: Any) -> None:
        """Queue *item* under *key* for this turn's flush."""
        self._pending.setdefault(key, []).append(item)
        self._once.request()

    def _run(self) -> None:
        pending, self._pending = self._pending, {}
        self._flush(pending)
