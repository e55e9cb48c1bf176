"""Waiting for a condition in end-to-end tests and benchmarks: no fixed sleeps.

:class:`Waiters` holds Deferreds that fire once their predicate holds.  Whoever sees events (an
API client's event handler, a network observer) calls :meth:`Waiters.check` after each one.
This module must not import the global reactor: the benchmarks install theirs after importing
it, so the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer


class Waiters:
    """Deferreds fired when their predicate holds, checked now and at each :meth:`check`.

    :param clock: runs the deadlines (and the later firing, with *fire_later*).
    :param fire_later: fire on a later reactor turn instead of inside :meth:`check` (so a test
        does not resume inside the caller of ``check``, e.g. a session's own callback).
    """

    def __init__(self, clock: Any, *, fire_later: bool = False) -> None:
        self.clock = clock
        self.fire_later = fire_later
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def check(self) -> None:
        """Fire the waiters whose predicate now holds."""
        if not self._waiters:
            return
        keep = []
        for predicate, d in self._waiters:
            if d.called:
                continue
            if predicate():
                if self.fire_later:
                    self.clock.callLater(0, d.callback, None)
                else:
                    d.callback(None)
            else:
                keep.append((predicate, d))
        self._waiters = keep

    def wait(self, predicate: Callable[[], bool], timeout: float) -> defer.Deferred[None]:
        """Return a Deferred firing once *predicate()* holds; it fails after *timeout* s."""
        d: defer.Deferred[None] = defer.Deferred()
        if predicate():
            d.callback(None)
            return d
        self._waiters.append((predicate, d))
        d.addTimeout(timeout, self.clock)
        return d
