"""Dialling one contact: a Twisted ``ClientService`` per run, one address race per attempt.

:class:`Dialler` is what :class:`~jarvis.net.network.PeerNetwork` keeps per wanted contact.
Reconnecting and backoff are Twisted's :class:`~twisted.application.internet.ClientService`
with :func:`~twisted.application.internet.backoffPolicy` (the one backoff); this module adds
only what the network needs on top, each in one place:

* **Rounds are races.**  The service's endpoint is a :class:`_Rounds`: one ``connect`` runs one
  :class:`~jarvis.net.eyeballs.AddressRace` over the contact's current addresses (best first,
  the next after a stagger or as soon as one fails, the first to succeed wins) and fails only
  when every address failed, so the service's backoff counts failed *rounds*.  It fires once an
  attempt reached an established session (not at TCP connect).
* **A run ends at success.**  Each :meth:`Dialler.start` builds a fresh ``ClientService`` (so
  the backoff starts over, as ``ClientService`` only resets it on success) and stops it once an
  attempt succeeded: the session belongs to the network, and the service's "connection" is a
  stand-in (:class:`_Handle`) released at once, so stopping the service never touches a
  session and a session's end never makes the service reconnect by itself.  The network
  restarts the dialler for its active, still-wanted session (or, while that session is
  relayed, keeps it running to find a direct path).
* **An attempt in flight outlives a stop.**  Stopping the service cancels its ``connect``; the
  round then *holds* its race (:meth:`AddressRace.hold`): no further address is dialled, but
  the attempts in flight may still succeed (the network's duplicate tie-break decides which
  session survives).  The next run waits for that race first and starts its own only if it
  failed.
* **Redial joins the race in flight.**  :meth:`Dialler.redial` offers the current addresses
  to the race in flight (new ones are dialled at once), then starts a fresh run (fresh backoff)
  that waits for that race, and starts a new one at once if it fails.
* **No address, no service.**  A contact without any address (added by uid, or by a card
  without addresses, and no relay) gets no ``ClientService`` and costs nothing while it waits:
  whatever gives it an address calls :meth:`Dialler.redial`.  Each empty round used to cost a
  pass through the service's machine (two Automat transitions, a Deferred chain, a
  ``Failure``, the per-retry log event) and a thousand such contacts doubled a daemon's idle
  CPU (``docs/benchmarks.md``).

This module must not know about TLS, knocks, relays or sessions: one attempt is the *dial*
callable.
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

from jarvis.common.errors import InvalidInput
from jarvis.net.eyeballs import STAGGER, AddressRace, RaceFailed
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
    """One ``connect`` of :class:`_Rounds`: one race (or first the race of an earlier run)."""

    def __init__(self, dialler: Dialler, factory: Any) -> None:
        self.dialler = dialler
        self.factory = factory  # the service's proxy factory
        self.result: Deferred[Any] = Deferred(self._detach)
        #: This round's own race; None while it waits for an earlier run's race.
        self.race: AddressRace | None = None
        self.detached = False

    def _detach(self, _: Deferred[Any]) -> None:
        # The service was stopped: the race dials no further address (unless a redial keeps
        # it for the next run); attempts in flight go on.  ``Deferred.cancel`` then fails the
        # result with CancelledError for the service.
        self.detached = True
        dialler = self.dialler
        if dialler._round is self:
            dialler._round = None
        if dialler._race is not None and not dialler._keeping_race:
            dialler._race.hold()


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
    """Keeps dialling one contact: address races, spaced by backoff with jitter.

    A round is one :class:`~jarvis.net.eyeballs.AddressRace` over the current addresses (best
    first).  When a round fails completely, the next starts after ``policy(failed_rounds)``
    seconds.  A successful attempt ends the dialling (the caller restarts it with
    :meth:`start`).  A start that finds no address runs nothing until the next :meth:`start`
    or :meth:`redial`.

    :param clock: schedules the retries and the stagger (the services' ``clock``).
    :param addresses: returns the current addresses, best first (read again at each round).
    :param dial: makes one attempt; its Deferred fires on success, fails otherwise, and
        cancelling it abandons the attempt.
    :param policy: seconds to wait after *n* failed rounds (*n* from 0).
    :param stagger: seconds between the starts of two addresses of one round.
    :param label: how logs name the contact (a pseudonym).
    """

    def __init__(
        self,
        clock: Clock,
        addresses: Callable[[], Sequence[str]],
        dial: Callable[[str], Deferred[None]],
        policy: Callable[[int], float],
        stagger: float = STAGGER,
        label: str = "",
    ) -> None:
        self._clock = clock
        self._addresses = addresses
        self._dial = dial
        self._policy = policy
        self._stagger = stagger
        self._label = label
        self._service: ClientService | None = None
        self._pending: DelayedCall | None = None  # a delayed start
        self._round: _Round | None = None
        self._race: AddressRace | None = None  # the race in flight (maybe held)
        self._keeping_race = False
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
        """Whether a round (one or more attempts) is in flight."""
        return self._race is not None

    def start(self, delay: float = 0.0) -> None:
        """Start dialling after *delay* seconds, with a fresh backoff; no-op if running.

        If a race is still in flight (from before a :meth:`stop`), the run starts at once and
        waits for it, starting its own round at once if it failed.
        """
        if self.running:
            return
        if delay > 0 and self._race is None:
            self._note_delay(delay)
            self._pending = self._clock.callLater(delay, self._start_service)
        else:
            self._start_service()

    def redial(self) -> None:
        """Dial now with a fresh backoff (addresses may have changed).

        While a round is in flight, addresses it has not tried yet are dialled at once in it;
        if it fails, a new round starts at once.
        """
        race = self._race
        if race is not None and not race.done:
            race.offer(tuple(self._addresses()), at_once=True)
            self._keeping_race = True
        try:
            self.stop()
        finally:
            self._keeping_race = False
        self._start_service()

    def stop(self) -> None:
        """Stop the service; attempts in flight may still succeed."""
        if self._pending is not None:
            if self._pending.active():
                self._pending.cancel()
            self._pending = None
        service, self._service = self._service, None
        if service is not None:
            service.stopService()
        elif self._race is not None and not self._keeping_race:
            self._race.hold()

    def cancel(self) -> None:
        """Stop, and abandon any attempt in flight."""
        self.stop()
        if self._race is not None:
            self._race.result.cancel()

    # -- the service ----------------------------------------------------------------------------

    def _start_service(self) -> None:
        self._pending = None
        self.failed_rounds = 0
        if not self._addresses():
            # Nothing to dial: no service, no rounds.  Every source of addresses (a card, an
            # edit, LAN discovery) calls PeerNetwork.redial, which comes back here.
            return
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
        if self._race is None:
            self._race_for(round_)
        # else: the race in flight (from an earlier run) decides first; see _race_failed
        return round_.result

    def _race_for(self, round_: _Round) -> None:
        race = round_.race = self._race = AddressRace(self._clock, self._dial, self._stagger)
        race.result.addCallbacks(
            self._race_won, self._race_failed, callbackArgs=(race,), errbackArgs=(race,)
        )
        race.result.addErrback(lambda f: log.failure("dialler bookkeeping failed", f))
        self._in_connect = True  # the service is inside a transition: see _round_ended
        try:
            race.offer(tuple(self._addresses()))
        finally:
            self._in_connect = False

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

    def _race_won(self, _: object, race: AddressRace) -> None:
        if self._race is race:
            self._race = None
        round_ = self._round
        if round_ is not None and not round_.detached:
            self._round_ended(round_, None)

    def _race_failed(self, failure: Failure, race: AddressRace) -> None:
        failure.trap(ConnectFailed, CancelledError, InvalidInput, RaceFailed)
        if self._race is race:
            self._race = None
        round_ = self._round
        if round_ is None or round_.detached:
            return
        if round_.race is None:
            self._race_for(round_)  # it waited for an earlier run's race: its own starts now
        else:
            self._round_ended(round_, failure)
