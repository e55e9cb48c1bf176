"""The pre-TLS knock on the wire: a gate in front of the listener, a sender in front of dials.

:class:`KnockGateFactory` wraps the listening TLS factory.  Each connection first meets a
:class:`KnockGate`, which writes nothing and reads exactly :data:`KNOCK_LENGTH` bytes within
*deadline* seconds.  A valid knock hands the connection to the wrapped (TLS) protocol, with any
bytes that came after the knock; anything else (a bare TLS ClientHello, garbage, a short or late
knock, a replay) stops reading and closes the connection after a random 0.5 to 2 s, so a stranger
sees exactly what a wrong port would show, and the refusal goes to :func:`refusal_log` (at most
one line a minute, plus one summary).

:class:`KnockSenderFactory` wraps a dialling TLS factory: its protocol writes the knock first,
then lets TLS run, and reports a connection the peer closed before sending any byte (a newer
listener that does not know us or our knock).

The token itself is :mod:`jarvis.protocol.knock`'s business; who may knock is the network's.
This module must not compute keys, choose candidates or parse TLS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.net.peer import Clock, DelayedCall
from jarvis.net.refusals import RefusalTally
from jarvis.protocol.knock import KNOCK_LENGTH, Accepted, Refused, Verdict

#: Seconds a connection may take to send its knock.
DEFAULT_KNOCK_DEADLINE = 5.0
#: A refused connection is closed after a random delay in this range, in seconds.
REFUSAL_DELAY = (0.5, 2.0)
#: Seconds between two refusal log lines, at least.
REFUSAL_LOG_PERIOD = 60.0
#: The reason a dial fails with when the peer closed before any TLS byte.
CLOSED_BEFORE_TLS = "peer closed before TLS: it may require a knock (newer Jarvis) or not know us"

log = Logger(namespace="jarvis.net.knock")


def _host_of(address: IAddress | None) -> str:
    return str(getattr(address, "host", "?"))


def describe_refusal(verdict: Refused) -> str:
    """Return a log-safe sentence for a refused knock (uids of contacts, never keys or tokens)."""
    if verdict.reason == "no knock":
        return "a TLS connection without a knock (an older Jarvis, or a scanner)"
    if verdict.reason == "stale knock":
        return (
            f"a knock from contact {verdict.uid} made {verdict.skew:+d} min from our time: "
            "one of the two clocks is wrong"
        )
    if verdict.uid is not None:
        return f"a {verdict.reason} from contact {verdict.uid}"
    return f"a {verdict.reason} (not from a contact)"


def refusal_log(clock: Clock, period: float = REFUSAL_LOG_PERIOD) -> RefusalTally:
    """Return the tally of knock refusals: the first logged with its source, then a count per
    *period* (:class:`~jarvis.net.refusals.RefusalTally`, one rule for every refusal log)."""
    return RefusalTally(
        clock,
        period,
        log=log,
        first="refused {what} from {host}; closing it silently",
        summary="refused {count} more connections before TLS in {period:.0f} s: {details}",
    )


class KnockGate(Protocol):
    """One inbound connection until its knock is judged; then a pipe to the TLS protocol."""

    def __init__(self, factory: KnockGateFactory, address: IAddress | None) -> None:
        self._factory = factory
        self._address = address
        self._buffer = b""
        self._timer: DelayedCall | None = None
        self._inner: Any = None
        self._refused = False

    def connectionMade(self) -> None:
        factory = self._factory
        if factory.stopping:
            self._abort()
            return
        factory.gates.add(self)
        self._timer = factory.clock.callLater(factory.deadline, self._refuse, Refused("late knock"))

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if self._refused:
            return
        self._buffer += data
        if len(self._buffer) < KNOCK_LENGTH:
            return
        token, rest = self._buffer[:KNOCK_LENGTH], self._buffer[KNOCK_LENGTH:]
        self._buffer = b""
        verdict: Verdict = self._factory.verify(token)
        if isinstance(verdict, Accepted):
            self._open(rest)
        else:
            self._refuse(verdict)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _open(self, rest: bytes) -> None:
        self._cancel_timer()
        self._factory.gates.discard(self)
        inner = self._factory.wrappedFactory.buildProtocol(self._address)
        if inner is None:
            self._abort()
            return
        self._inner = inner
        inner.makeConnection(self.transport)
        if rest:
            inner.dataReceived(rest)

    def _refuse(self, verdict: Refused) -> None:
        self._cancel_timer()
        self._refused = True
        self._buffer = b""
        transport: Any = self.transport
        transport.pauseProducing()  # read nothing more: a refused peer costs nothing
        self._factory.refusals.note(
            verdict.reason, what=describe_refusal(verdict), host=_host_of(self._address)
        )
        low, high = REFUSAL_DELAY
        delay = low + self._factory.rng() * (high - low)
        self._timer = self._factory.clock.callLater(delay, self._close)

    def _close(self) -> None:
        self._timer = None
        transport: Any = self.transport
        transport.loseConnection()

    def _abort(self) -> None:
        self._cancel_timer()
        transport: Any = self.transport
        transport.abortConnection()

    def stop(self) -> None:
        """Drop the connection at once (the network is stopping)."""
        self._abort()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._cancel_timer()
        self._factory.gates.discard(self)
        if self._inner is not None:
            self._inner.connectionLost(reason)


class KnockGateFactory(Factory):
    """Wraps the listening factory: every connection must knock before it reaches it.

    :param wrapped: the factory whose protocol gets the connection after a valid knock
        (the TLS factory).
    :param verify: judges a :data:`KNOCK_LENGTH`-byte token.
    :param clock: for the deadline and the refusal delay.
    :param rng: returns floats in [0, 1) for the refusal delay.
    :param refusals: where refusals are counted and logged.
    :param deadline: seconds a connection may take to send its knock.
    """

    def __init__(
        self,
        wrapped: IProtocolFactory,
        verify: Callable[[bytes], Verdict],
        clock: Clock,
        rng: Callable[[], float],
        refusals: RefusalTally,
        deadline: float = DEFAULT_KNOCK_DEADLINE,
    ) -> None:
        self.wrappedFactory: Any = wrapped
        self.verify = verify
        self.clock = clock
        self.rng = rng
        self.refusals = refusals
        self.deadline = deadline
        self.stopping = False
        #: Connections still waiting for (or refused at) their knock.
        self.gates: set[KnockGate] = set()

    def doStart(self) -> None:
        self.wrappedFactory.doStart()
        super().doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()
        super().doStop()

    def buildProtocol(self, addr: IAddress | None) -> KnockGate:
        return KnockGate(self, addr)

    def stop(self) -> None:
        """Drop every connection not past its knock, and every new one from now on."""
        self.stopping = True
        for gate in list(self.gates):
            gate.stop()
        self.refusals.stop()


class KnockSender(Protocol):
    """One outbound connection: the knock first, then the wrapped (TLS) protocol."""

    def __init__(self, factory: KnockSenderFactory, inner: Any) -> None:
        self._factory = factory
        self._inner = inner
        self._received = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        token = self._factory.make_knock()
        if token:
            transport.write(token)
        self._inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self._received = True
        self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        # ConnectionAborted (a ConnectionLost) is our own abort: a timeout, not the peer.
        closed_by_peer = reason.check(error.ConnectionAborted) is None and reason.check(
            error.ConnectionDone, error.ConnectionLost
        )
        if not self._received and closed_by_peer:
            self._factory.closed_before_tls()
        self._inner.connectionLost(reason)


class KnockSenderFactory(Factory):
    """Wraps a dialling factory: its protocol knocks before the wrapped one starts.

    :param wrapped: the factory of the protocol to run after the knock (the TLS factory).
    :param make_knock: returns the token to send, or ``b""`` to send none (an older peer).
    :param closed_before_tls: called when the peer closed the connection without sending a
        byte (before the wrapped protocol is told the connection is lost).
    """

    #: One is made per dial (every data connection of a file): no "Starting factory" lines.
    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        make_knock: Callable[[], bytes],
        closed_before_tls: Callable[[], None],
    ) -> None:
        self.wrappedFactory: Any = wrapped
        self.make_knock = make_knock
        self.closed_before_tls = closed_before_tls

    def doStart(self) -> None:
        self.wrappedFactory.doStart()
        super().doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()
        super().doStop()

    def buildProtocol(self, addr: IAddress | None) -> KnockSender | None:
        inner = self.wrappedFactory.buildProtocol(addr)
        return KnockSender(self, inner) if inner is not None else None
