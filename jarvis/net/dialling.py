"""Dialling one contact: a Twisted ``ClientService`` per run, one round of addresses per attempt.

:class:`Dialler` is what :class:`~jarvis.net.network.PeerNetwork` keeps per wanted contact.
Reconnecting and backoff are Twisted's :class:`~twisted.application.internet.ClientService`
with :func:`~twisted.application.internet.backoffPolicy`; this module adds only what the
network needs on top, each in one place:

* **Rounds.**  The service's endpoint is a :class:`_Rounds`: one ``connect`` tries every
  address of the contact once, one after the other, and fails only when all failed, so the
  service's backoff counts failed *rounds*.  It fires once an attempt reached an established
  session (not at TCP connect).
* **A run ends at success.**  Each :meth:`Dialler.start` builds a fresh ``ClientService`` (so
  the backoff starts over, as ``ClientService`` only resets it on success) and stops it once an
  attempt succeeded: the session belongs to the network, and the service's "connection" is a
  stand-in (:class:`_Handle`) released at once, so stopping the service never touches a
  session and a session's end never makes the service reconnect by itself.  The network
  restarts the dialler only for its active, still-wanted session.
* **An attempt in flight outlives a stop.**  Stopping the service cancels its ``connect``;
  :class:`_Rounds` then detaches: the round dials no further address, but the attempt in flight
  may still succeed (the network's duplicate tie-break decides which session survives).  The
  next run waits for that attempt first and starts its round only if it failed.

This module must not know about TLS, knocks or sessions: one attempt is the *dial* callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.errors import InvalidInput
from jarvis.net.peer import Clock, DelayedCall

log = Logger(namespace="jarvis.net.dialling")


class ConnectFailed(Exception):
    """One outbound connection attempt ended before a session was established."""


class _Handle:
    """The transport of the service's stand-in connection: losing it releases the service.

    The loss is reported at once; Automat queues an input that arrives during a transition,
    so the service goes from ``Disconnecting`` to ``Stopped`` before ``stopService`` returns.
    """

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._lost = False

    def loseConnection(self) -> None:
        if not self._lost:
            self._lost = True
            self._protocol.connectionLost(Failure(ConnectionDone()))


class _Round:
    """One ``connect`` of :class:`_Rounds`: every address once, in turn."""

    def __init__(self, dialler: Dialler, factory: Any) -> None:
        self.dialler = dialler
        self.factory = factory  # the service's proxy factory
        self.result: Deferred[Any] = Deferred(self._detach)
        self.addresses: tuple[str, ...] = ()
        self.index = 0
        self.detached = False
        self.last_error = "no address"

    def _detach(self, _: Deferred[Any]) -> None:
        # The service was stopped: dial no further address; an attempt in flight goes on
        # (``Deferred.cancel`` fails the result with CancelledError for the service).
        self.detached = True
        if self.dialler._round is self:
            self.dialler._round = None


class _Rounds:
    """The ``IStreamClientEndpoint`` of a :class:`Dialler`'s service: one connect, one round."""

    def __init__(self, dialler: Dialler, label: str) -> None:
        self._dialler = dialler
        self._label = label

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return self._dialler._begin_round(protocolFactory)

    def __repr__(self) -> str:  # ClientService logs its endpoint: a pseudonym only
        return f"<dial rounds {self._label}>"


class Dialler:
    """Keeps dialling one contact: its addresses in turn, rounds spaced by backoff with jitter.

    A round tries every address once, one after the other.  When a round fails completely,
    the next starts after ``policy(failed_rounds)`` seconds.  A successful attempt ends the
    dialling (the caller restarts it with :meth:`start` when the session ends).

    :param clock: schedules the retries (the services' ``clock``).
    :param addresses: returns the current addresses (read again at each round).
    :param dial: makes one attempt; its Deferred fires on success, fails otherwise, and
        cancelling it abandons the attempt.
    :param policy: seconds to wait after *n* failed rounds (*n* from 0).
    :param label: how logs name the contact (a pseudonym).
    """

    def __init__(
        self,
        clock: Clock,
        addresses: Callable[[], Sequence[str]],
        dial: Callable[[str], Deferred[None]],
        policy: Callable[[int], float],
        label: str = "",
    ) -> None:
        self._clock = clock
        self._addresses = addresses
        self._dial = dial
        self._policy = policy
        self._label = label
        self._service: ClientService | None = None
        self._pending: DelayedCall | None = None  # a delayed start
        self._round: _Round | None = None
        self._in_flight: Deferred[None] | None = None
        self._in_connect = False
        #: Consecutive failed rounds of the current run.
        self.failed_rounds = 0
        #: Delays scheduled so far, newest last (bounded; for status and tests).
        self.delays: list[float] = []

    @property
    def running(self) -> bool:
        """Whether the dialler wants a connection (dialling or waiting to retry)."""
        return self._pending is not None or self._service is not None

    @property
    def dialling(self) -> bool:
        """Whether an attempt is in flight."""
        return self._in_flight is not None

    def start(self, delay: float = 0.0) -> None:
        """Start dialling after *delay* seconds, with a fresh backoff; no-op if running.

        If an attempt is still in flight (from before a :meth:`stop`), the run waits for it
        and starts its round at once if it failed.
        """
        if self.running:
            return
        if delay > 0 and self._in_flight is None:
            self._note_delay(delay)
            self._pending = self._clock.callLater(delay, self._start_service)
        else:
            self._start_service()

    def redial(self) -> None:
        """Dial now from the first address, forgetting the backoff (addresses may have changed).

        An attempt already in flight is left to finish; if it fails, the new round starts at
        once.
        """
        self.stop()
        self._start_service()

    def stop(self) -> None:
        """Stop the service; an attempt in flight may still succeed."""
        if self._pending is not None:
            if self._pending.active():
                self._pending.cancel()
            self._pending = None
        service, self._service = self._service, None
        if service is not None:
            service.stopService()

    def cancel(self) -> None:
        """Stop, and abandon any attempt in flight."""
        self.stop()
        if self._in_flight is not None:
            self._in_flight.cancel()

    # -- the service ----------------------------------------------------------------------------

    def _start_service(self) -> None:
        self._pending = None
        self.failed_rounds = 0
        service = self._service = ClientService(
            cast(IStreamClientEndpoint, _Rounds(self, self._label)),
            cast(IProtocolFactory, Factory.forProtocol(Protocol)),
            retryPolicy=self._retry_delay,
            clock=cast(IReactorTime, self._clock),
        )
        service.startService()

    def _retry_delay(self, failed: int) -> float:
        # ClientService counts failed connects from 1; each of ours is a round
        self.failed_rounds = failed
        delay = self._policy(failed - 1)
        self._note_delay(delay)
        return delay

    def _note_delay(self, delay: float) -> None:
        self.delays = [*self.delays[-15:], delay]

    # -- rounds -----------------------------------------------------------------------------------

    def _begin_round(self, factory: IProtocolFactory) -> Deferred[Any]:
        round_ = self._round = _Round(self, factory)
        if self._in_flight is None:
            self._in_connect = True  # the service is inside a transition: see _round_ended
            try:
                self._next(round_)
            finally:
                self._in_connect = False
        # else: the attempt in flight (from an earlier run) decides; see _attempt_failed
        return round_.result

    def _next(self, round_: _Round) -> None:
        if round_.index == 0:
            round_.addresses = tuple(self._addresses())
        if round_.index >= len(round_.addresses):
            self._round_ended(round_, Failure(ConnectFailed(round_.last_error)))
            return
        address = round_.addresses[round_.index]
        round_.index += 1
        attempt = self._dial(address)
        self._in_flight = attempt
        attempt.addCallbacks(
            self._attempt_succeeded,
            self._attempt_failed,
            callbackArgs=(attempt,),
            errbackArgs=(attempt,),
        )
        attempt.addErrback(lambda f: log.failure("dialler bookkeeping failed", f))

    def _round_ended(self, round_: _Round, outcome: Failure | None) -> None:
        if round_.detached:
            return
        if outcome is None and self._in_connect:
            # A dial that succeeded before returning (test doubles; never TLS): Automat refuses
            # a stop from inside the service's transition, so the run ends on the next turn.
            self._clock.callLater(0, self._round_ended, round_, outcome)
            return
        if self._round is round_:
            self._round = None
        if outcome is not None:
            round_.result.errback(outcome)
            return
        # Success: hand the service a stand-in connection, released when the service stops.
        protocol = round_.factory.buildProtocol(cast(IAddress, None))
        if protocol is not None:
            protocol.makeConnection(cast(ITransport, _Handle(protocol)))
        round_.result.callback(protocol)  # the service is Connected when this returns
        self.failed_rounds = 0
        self.stop()

    def _attempt_succeeded(self, _: object, attempt: Deferred[None]) -> None:
        if self._in_flight is attempt:
            self._in_flight = None
        round_ = self._round
        if round_ is not None and not round_.detached:
            self._round_ended(round_, None)

    def _attempt_failed(self, failure: Failure, attempt: Deferred[None]) -> None:
        failure.trap(ConnectFailed, CancelledError, InvalidInput)
        if self._in_flight is attempt:
            self._in_flight = None
        round_ = self._round
        if round_ is None or round_.detached:
            return
        round_.last_error = str(failure.value) or repr(failure.value)
        if round_.index == 0:
            self._next(round_)  # it waited for an earlier run's attempt: its round starts now
        elif round_.index < len(round_.addresses):
            self._next(round_)  # the next address of this round, at once
        else:
            self._round_ended(round_, failure)
