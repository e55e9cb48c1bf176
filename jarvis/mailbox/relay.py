"""The mailbox's relay: joins two contacts' connections, copying bytes it cannot read.

A connection to the mailbox's port whose first byte is not a TLS handshake record (0x16) is
handed to the relay (:class:`PortSharing`); it must send a join
(:mod:`jarvis.protocol.relay`) within :attr:`RelayLimits.join_deadline`.  Two joins with the
same token and opposite sides are paired: each gets :data:`~jarvis.protocol.relay.STATUS_PAIRED`
and from then on the relay copies bytes between them.  What they carry is the pair's pinned
mutual TLS session: the relay sees only its length and timing.

Limits (:class:`RelayLimits`): joins waiting for a partner (in all, per source address),
pairs (in all, per source address), the pairing timeout, and each pair's bandwidth per
direction (a token bucket).  A join beyond a limit is answered
:data:`~jarvis.protocol.relay.STATUS_BUSY`; a paired token is burnt for
:attr:`RelayLimits.burn_seconds` (a replayed join gets
:data:`~jarvis.protocol.relay.STATUS_USED`); a second join of the same token and side while
the first waits is refused the same way.

Bounded buffering: each direction is a push producer registered on the receiving transport;
when that transport's buffer passes its high-water mark (:data:`PAIR_BUFFER`, 256 KiB) or the
bandwidth is spent, reading from the sending connection stops until it drains, so a pair never
holds more than about one read and one transport buffer per direction (about 1 MiB).

This module never logs tokens or addresses.
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IProtocolFactory, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jarvis.protocol import relay as wire

#: Bytes a paired connection reads at once and buffers before pausing its partner.
PAIR_BUFFER = 256 * 1024
#: The first byte of a TLS handshake record: a mailbox client, not a relay join.
TLS_FIRST_BYTE = 0x16


@dataclass(frozen=True)
class RelayLimits:
    """The relay's limits (the defaults are what ``twistd jarvis-mailbox`` uses).

    :ivar join_deadline: seconds a connection may take to send its join.
    :ivar pairing_timeout: seconds a join waits for its partner.
    :ivar max_waiting: joins waiting for a partner, in all.
    :ivar max_waiting_per_source: joins waiting from one source (IPv4 address, IPv6 /64).
    :ivar max_pairs: pairs relaying at once, in all (0: every join is answered "busy").
    :ivar max_pairs_per_source: pairs one source may take part in.
    :ivar bandwidth: bytes per second each pair may send in each direction (0: no limit).
    :ivar burn_seconds: how long a paired token is refused (two token windows).
    :ivar max_burnt: burnt tokens remembered at most (oldest forgotten first).
    """

    join_deadline: float = 10.0
    pairing_timeout: float = 30.0
    max_waiting: int = 4096
    max_waiting_per_source: int = 64
    max_pairs: int = 1024
    max_pairs_per_source: int = 256
    bandwidth: float = 256 * 1024 * 1024
    burn_seconds: float = 2 * wire.WINDOW_SECONDS
    max_burnt: int = 65_536


def source_of(address: IAddress | None) -> str:
    """The source a limit counts: an IPv4 address, an IPv6 /64, or ``""`` (unknown)."""
    host = getattr(address, "host", None)
    if not host:
        return ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@implementer(IPushProducer)
class _Direction:
    """Bytes from one connection of a pair to the other: the receiving transport's producer.

    Reading from the sender stops while any reason holds: ``"buffer"`` (the receiver's
    transport asked us to pause) or ``"rate"`` (the bandwidth is spent until a timer).
    """

    def __init__(self, relay: RelayFactory, source: RelayConnection, sink: RelayConnection):
        self.relay = relay
        self.source = source
        self.sink = sink
        self.paused: set[str] = set()
        self._tokens = relay.limits.bandwidth
        self._last = relay.clock.seconds()
        self._timer: Any = None
        self.bytes = 0

    def _pause(self, reason: str) -> None:
        if not self.paused:
            self.source.transport.pauseProducing()
        self.paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if not self.paused and self.source.open:
                self.source.transport.resumeProducing()

    # IPushProducer, called by the sink's transport
    def pauseProducing(self) -> None:
        self._pause("buffer")

    def resumeProducing(self) -> None:
        self._resume("buffer")

    def stopProducing(self) -> None:
        self.cancel()

    def carry(self, data: bytes) -> None:
        """Write *data* from the source to the sink, spending bandwidth."""
        self.bytes += len(data)
        self.sink.transport.write(data)
        rate = self.relay.limits.bandwidth
        if rate <= 0:
            return
        now = self.relay.clock.seconds()
        self._tokens = min(rate, self._tokens + (now - self._last) * rate) - len(data)
        self._last = now
        if self._tokens < 0 and self._timer is None:
            self._pause("rate")
            self._timer = self.relay.clock.callLater(-self._tokens / rate, self._refilled)

    def _refilled(self) -> None:
        self._timer = None
        self._resume("rate")

    def cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class RelayConnection(Protocol):
    """One connection to the relay: its join, its wait, then its half of a pair."""

    transport: Any

    def __init__(self, relay: RelayFactory, address: IAddress | None) -> None:
        self.relay = relay
        self.source = source_of(address)
        self.open = False
        self.join: wire.Join | None = None
        self.partner: RelayConnection | None = None
        self.outbound: _Direction | None = None  # our bytes to the partner
        self._buffer = b""
        self._timer: Any = None

    def connectionMade(self) -> None:
        self.open = True
        self.relay.connections.add(self)
        self._timer = self.relay.clock.callLater(
            self.relay.limits.join_deadline, self._answer_and_close, wire.STATUS_TIMEOUT
        )

    def dataReceived(self, data: bytes) -> None:
        if self.outbound is not None:
            self.outbound.carry(data)
            return
        if self.join is not None or not self.open:
            return  # nothing may come before the pairing: dropped, and not buffered
        self._buffer += data
        if len(self._buffer) < wire.JOIN_LENGTH:
            if not wire.MAGIC.startswith(self._buffer[: len(wire.MAGIC)]):
                self._answer_and_close(wire.STATUS_BAD)
            return
        head, rest = self._buffer[: wire.JOIN_LENGTH], self._buffer[wire.JOIN_LENGTH :]
        self._buffer = b""
        try:
            join = wire.parse_join(head)
        except wire.MalformedJoin:
            self._answer_and_close(wire.STATUS_BAD)
            return
        if rest:
            # a client may not send before it hears "paired": it would be relaying blind
            self._answer_and_close(wire.STATUS_BAD)
            return
        self._cancel_timer()
        self.join = join
        self.relay.joined(self)

    def wait(self) -> None:
        """Wait for a partner until the pairing timeout."""
        self._timer = self.relay.clock.callLater(
            self.relay.limits.pairing_timeout, self._answer_and_close, wire.STATUS_TIMEOUT
        )

    def pair_with(self, partner: RelayConnection) -> None:
        """Become one half of a pair with *partner* (the relay calls this on both)."""
        self._cancel_timer()
        self.partner = partner
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)  # small session records: Nagle would add 40 ms to each
        if hasattr(self.transport, "bufferSize"):
            # read and buffer in bigger steps than Twisted's 64 KiB: fewer pauses and turns
            # per MiB relayed, still a fixed bound per direction
            self.transport.bufferSize = PAIR_BUFFER
        self.transport.write(bytes([wire.STATUS_PAIRED]))

    def start_copying(self) -> None:
        """Copy our bytes to the partner, paced by its transport's buffer."""
        assert self.partner is not None
        self.outbound = _Direction(self.relay, self, self.partner)
        self.partner.transport.registerProducer(self.outbound, True)

    def _answer_and_close(self, status: int) -> None:
        self._timer = None
        if not self.open:
            return
        self.relay.counters[wire.STATUS_NAMES.get(status, "refused")] += 1
        self.transport.write(bytes([status]))
        self.transport.pauseProducing()  # read nothing more
        self.transport.loseConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.open = False
        self._cancel_timer()
        if self.outbound is not None:
            self.outbound.cancel()
        self.relay.left(self)
        partner, self.partner = self.partner, None
        if partner is not None and partner.open:
            partner.partner = None
            # what we sent is already in the partner's transport: let it flush, then close
            if partner.outbound is not None:
                partner.outbound.cancel()
            partner.transport.unregisterProducer()
            partner.transport.loseConnection()


class RelayFactory(Factory):
    """The relay's shared state: waiting joins, pairs, burnt tokens, limits.

    :param clock: the reactor's time (``task.Clock`` in tests).
    :param limits: the relay's limits.
    """

    log = Logger()

    def __init__(self, clock: Any, limits: RelayLimits | None = None) -> None:
        self.clock = clock
        self.limits = limits or RelayLimits()
        self.connections: set[RelayConnection] = set()
        #: (token, side) -> the join waiting for its partner
        self.waiting: dict[tuple[bytes, int], RelayConnection] = {}
        self.pairs: set[tuple[RelayConnection, RelayConnection]] = set()
        self._burnt: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._waiting_by_source: collections.Counter[str] = collections.Counter()
        self._pairs_by_source: collections.Counter[str] = collections.Counter()
        self.counters: collections.Counter[str] = collections.Counter()

    def buildProtocol(self, addr: IAddress | None) -> RelayConnection:
        return RelayConnection(self, addr)

    def figures(self) -> dict[str, int]:
        """Figures for the mailbox status: connections, waiting joins, pairs, refusals."""
        return {
            "relay_connections": len(self.connections),
            "relay_waiting": len(self.waiting),
            "relay_pairs": len(self.pairs),
            "relay_paired_total": self.counters["pairs"],
            "relay_refused": sum(v for k, v in self.counters.items() if k != "pairs"),
        }

    def _is_burnt(self, token: bytes) -> bool:
        now = self.clock.seconds()
        while self._burnt:
            oldest, when = next(iter(self._burnt.items()))
            if now - when < self.limits.burn_seconds:
                break
            del self._burnt[oldest]
        return token in self._burnt

    def _burn(self, token: bytes) -> None:
        self._burnt[token] = self.clock.seconds()
        while len(self._burnt) > self.limits.max_burnt:
            self._burnt.popitem(last=False)

    def joined(self, connection: RelayConnection) -> None:
        """*connection* sent a valid join: pair it, let it wait, or refuse it."""
        join = connection.join
        assert join is not None
        limits = self.limits
        if limits.max_pairs <= 0:
            connection._answer_and_close(wire.STATUS_BUSY)  # the operator turned relaying off
            return
        if self._is_burnt(join.token) or (join.token, join.side) in self.waiting:
            connection._answer_and_close(wire.STATUS_USED)
            return
        partner = self.waiting.get((join.token, 1 - join.side))
        if partner is None:
            if (
                len(self.waiting) >= limits.max_waiting
                or self._waiting_by_source[connection.source] >= limits.max_waiting_per_source
            ):
                connection._answer_and_close(wire.STATUS_BUSY)
                return
            self.waiting[(join.token, join.side)] = connection
            self._waiting_by_source[connection.source] += 1
            connection.wait()
            return
        sources = {connection.source, partner.source}
        if len(self.pairs) >= limits.max_pairs or any(
            self._pairs_by_source[s] >= limits.max_pairs_per_source for s in sources
        ):
            connection._answer_and_close(wire.STATUS_BUSY)
            return
        self._unwait(partner)
        self._burn(join.token)
        pair = (partner, connection)
        self.pairs.add(pair)
        for s in sources:
            self._pairs_by_source[s] += 1
        self.counters["pairs"] += 1
        partner.pair_with(connection)
        connection.pair_with(partner)
        partner.start_copying()
        connection.start_copying()

    def _unwait(self, connection: RelayConnection) -> None:
        join = connection.join
        if join is not None and self.waiting.get((join.token, join.side)) is connection:
            del self.waiting[(join.token, join.side)]
            self._waiting_by_source[connection.source] -= 1
            if self._waiting_by_source[connection.source] <= 0:
                del self._waiting_by_source[connection.source]

    def left(self, connection: RelayConnection) -> None:
        """*connection* ended: forget its wait or its pair."""
        self.connections.discard(connection)
        self._unwait(connection)
        partner = connection.partner
        if partner is None:
            return
        for pair in ((connection, partner), (partner, connection)):
            if pair in self.pairs:
                self.pairs.discard(pair)
                for s in {connection.source, partner.source}:
                    self._pairs_by_source[s] -= 1
                    if self._pairs_by_source[s] <= 0:
                        del self._pairs_by_source[s]


class _Sniffer(Protocol):
    """Decides from a connection's first byte whether it is TLS (the mailbox) or a join."""

    transport: Any

    def __init__(self, sharing: PortSharing, address: IAddress | None) -> None:
        self._sharing = sharing
        self._address = address
        self._inner: Any = None
        self._timer: Any = None

    def connectionMade(self) -> None:
        # a TLS client speaks first, and so does a join: a silent connection is dropped
        self._timer = self._sharing.relay.clock.callLater(
            self._sharing.relay.limits.join_deadline, self._silent
        )

    def _silent(self) -> None:
        self._timer = None
        self._sharing.relay.counters["silent"] += 1
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            factory = (
                self._sharing.tls_factory if data[0] == TLS_FIRST_BYTE else self._sharing.relay
            )
            inner = self._inner = factory.buildProtocol(self._address)
            if inner is None:
                self.transport.abortConnection()
                return
            inner.makeConnection(self.transport)
        inner.dataReceived(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._inner is not None:
            self._inner.connectionLost(reason)


class PortSharing(Factory):
    """The mailbox's listening factory: TLS clients to the mailbox, joins to the relay.

    A connection that sends nothing within the relay's join deadline is dropped (a TLS client
    and a join both speak first).

    :param tls_factory: the mailbox's TLS factory.
    :param relay: the relay.
    """

    def __init__(self, tls_factory: IProtocolFactory, relay: RelayFactory) -> None:
        self.tls_factory: Any = tls_factory
        self.relay = relay

    def doStart(self) -> None:
        self.tls_factory.doStart()
        super().doStart()

    def doStop(self) -> None:
        self.tls_factory.doStop()
        super().doStop()

    def buildProtocol(self, addr: IAddress | None) -> _Sniffer:
        return _Sniffer(self, addr)
