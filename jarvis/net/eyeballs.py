"""Dial several addresses of one contact, "happy eyeballs" style: the first to connect wins.

:class:`AddressRace` is the one place where a round of dialling over a contact's addresses is
decided (the :class:`~jarvis.net.dialling.Dialler` runs one race per round).  Like Twisted's
``HostnameEndpoint`` (RFC 8305): the first address is dialled at once; the next one starts
after :data:`STAGGER` seconds if no attempt has succeeded yet, or at once when the previous one
fails; the first attempt to succeed wins and every other attempt in flight is cancelled.
Addresses offered while the race runs (a contact just found on the LAN) start at once.

It must not know what an attempt is (the dial callable does) nor order the addresses (the
contact directory gives them best first: last success, then found on the LAN, then the card).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

#: Seconds before the next address is dialled while earlier attempts are still in flight
#: (``HostnameEndpoint`` waits 0.3 s).
STAGGER = 0.3


class RaceFailed(Exception):
    """Every address of a race failed (or the race was held and its last attempt failed)."""


class AddressRace:
    """One round of dialling over addresses; :attr:`result` fires with the winning address.

    :param clock: ``IReactorTime`` (schedules the staggered starts).
    :param dial: makes one attempt at an address; its Deferred fires on success, fails
        otherwise, and cancelling it abandons the attempt.
    :param stagger: seconds between starts while attempts are still in flight.
    """

    def __init__(
        self, clock: Any, dial: Callable[[str], Deferred[None]], stagger: float = STAGGER
    ) -> None:
        self._clock = clock
        self._dial = dial
        self._stagger = stagger
        self._queue: list[str] = []
        self._tried: set[str] = set()
        self._in_flight: dict[Deferred[None], str] = {}
        self._timer: Any = None
        self._held = False
        self._done = False
        self._last_failure: Failure | None = None
        #: Fires with the address that won; fails with the last attempt's failure (or
        #: :class:`RaceFailed` when there was nothing to dial).  Cancelling it cancels every
        #: attempt in flight.
        self.result: Deferred[str] = Deferred(self._cancelled)

    @property
    def in_flight(self) -> tuple[str, ...]:
        """The addresses being dialled now."""
        return tuple(self._in_flight.values())

    @property
    def done(self) -> bool:
        """Whether :attr:`result` has fired."""
        return self._done

    def offer(self, addresses: Iterable[str], *, at_once: bool = False) -> bool:
        """Add addresses not tried yet in this race; returns whether any was new.

        :param at_once: start the first new address now, even while others are in flight.
        """
        if self._done or self._held:
            return False
        fresh = [a for a in dict.fromkeys(addresses) if a not in self._tried]
        for address in fresh:
            self._tried.add(address)
            self._queue.append(address)
        if fresh and (at_once or not self._in_flight):
            self._start_next()
        elif not self._in_flight and not self._queue:
            self._finish_failed()
        return bool(fresh)

    def hold(self) -> None:
        """Start no further address; attempts in flight may still win or fail."""
        self._held = True
        self._queue.clear()
        self._cancel_timer()
        if not self._in_flight:
            self._finish_failed()

    def _start_next(self) -> None:
        self._cancel_timer()
        if self._done or self._held or not self._queue:
            return
        address = self._queue.pop(0)
        attempt = self._dial(address)
        if self._done:  # the dial succeeded synchronously elsewhere, or the race was cancelled
            return
        self._in_flight[attempt] = address
        if self._queue:
            self._timer = self._clock.callLater(self._stagger, self._start_next)
        attempt.addCallbacks(
            self._attempt_succeeded,
            self._attempt_failed,
            callbackArgs=(attempt,),
            errbackArgs=(attempt,),
        )

    def _attempt_succeeded(self, _: object, attempt: Deferred[None]) -> None:
        address = self._in_flight.pop(attempt, None)
        if self._done or address is None:
            return
        self._done = True
        self._cancel_timer()
        self._queue.clear()
        losers = list(self._in_flight)
        self._in_flight.clear()
        for other in losers:
            other.cancel()
        self.result.callback(address)

    def _attempt_failed(self, failure: Failure, attempt: Deferred[None]) -> None:
        self._in_flight.pop(attempt, None)
        if self._done:
            if not failure.check(CancelledError):
                self._last_failure = failure
            return
        self._last_failure = failure
        if self._queue and not self._held:
            self._start_next()  # do not wait out the stagger behind a failed address
        elif not self._in_flight:
            self._finish_failed()

    def _finish_failed(self) -> None:
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        failure = self._last_failure or Failure(RaceFailed("no address to dial"))
        self.result.errback(failure)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _cancelled(self, _: Deferred[str]) -> None:
        self._done = True
        self._cancel_timer()
        self._queue.clear()
        attempts = list(self._in_flight)
        self._in_flight.clear()
        for attempt in attempts:
            attempt.cancel()
