"""The peer listener's admission control: pre-authentication caps, deadline, log summary."""

from __future__ import annotations

import resource
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jarvis.net.admission import (
    AdmissionControl,
    AdmittedConnection,
    descriptor_budget,
    refusal_summary,
    source_of,
)
from tests.waiting import Waiters


class Inner(Protocol):
    """The wrapped protocol (TLS in the daemon); its own transport is the admission wrapper."""


def make_gate(**options: Any) -> tuple[AdmissionControl, Clock]:
    """Return an admission control over a factory of :class:`Inner`, and its clock."""
    clock = Clock()
    options.setdefault("max_connections", 10_000)
    options.setdefault("min_age", 0.0)
    return AdmissionControl(clock, Factory.forProtocol(Inner), **options), clock


class FakePort:
    """The listening port's producer side, as ``tcp.Port`` offers it."""

    def __init__(self) -> None:
        self.reading = True

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True


def connect(
    gate: AdmissionControl, host: str, port: int = 40000, listener: FakePort | None = None
) -> AdmittedConnection | None:
    """Accept one connection from *host* the way ``tcp.Port`` does; ``None`` if refused."""
    kind = IPv6Address if ":" in host else IPv4Address
    address = kind("TCP", host, port)
    connection = gate.buildProtocol(address)
    if connection is not None:
        transport: Any = StringTransport(peerAddress=address)
        transport.server = listener  # tcp.Server's attribute: the port that accepted it
        connection.makeConnection(transport)
    return connection


def lose(connection: AdmittedConnection) -> None:
    """Finish a connection the way the reactor does after an abort."""
    connection.connectionLost(None)


def aborted(connection: AdmittedConnection) -> bool:
    transport: Any = connection.transport
    return bool(transport.disconnected)


class CapTests(SynchronousTestCase):
    """When a cap is reached, the oldest pre-authentication connection makes room."""

    def test_total_cap_drops_the_oldest(self) -> None:
        """When the total pre-authentication cap is reached and one more stranger connects,
        then the oldest pre-authentication connection is aborted and the new one is let in."""
        gate, _clock = make_gate(max_preauth=4, max_preauth_per_source=100)
        first = [connect(gate, f"10.0.0.{i}") for i in range(4)]
        newest = connect(gate, "10.0.0.99")
        assert newest is not None and all(c is not None for c in first)
        self.assertEqual([aborted(c) for c in first if c], [True, False, False, False])
        self.assertFalse(aborted(newest))
        self.assertEqual(gate.preauth_count, 4)
        self.assertEqual(gate.summary.totals["dropped at the total cap"], 1)

    def test_per_source_cap_drops_that_sources_oldest(self) -> None:
        """When one source holds its share of pre-authentication connections and opens
        another, then its own oldest is dropped and other sources keep theirs."""
        gate, _clock = make_gate(max_preauth=100, max_preauth_per_source=3)
        other = connect(gate, "192.0.2.7")
        flood = [connect(gate, "198.51.100.1", 1000 + i) for i in range(10)]
        assert other is not None
        self.assertFalse(aborted(other))
        self.assertEqual([aborted(c) for c in flood if c], [True] * 7 + [False] * 3)
        self.assertEqual(gate.preauth_count, 4)

    def test_young_connections_are_not_dropped_for_newer(self) -> None:
        """When the cap is reached by connections younger than the minimum age (a burst of
        contacts redialling), then the newcomer is refused and the handshakes in progress go
        on; once they are older, the oldest is dropped for a newcomer."""
        gate, clock = make_gate(max_preauth=3, max_preauth_per_source=100, min_age=1.0)
        first = [connect(gate, f"10.0.0.{i}") for i in range(3)]
        self.assertIsNone(connect(gate, "10.0.0.50"))
        self.assertFalse(any(aborted(c) for c in first if c))
        self.assertEqual(gate.summary.totals["refused at the total cap"], 1)
        clock.advance(1.0)
        self.assertIsNotNone(connect(gate, "10.0.0.51"))
        self.assertEqual([aborted(c) for c in first if c], [True, False, False])

    def test_full_of_young_connections_pauses_accepting(self) -> None:
        """When the total cap is full of connections still handshaking, then accepting pauses
        (newcomers wait in the kernel's queue, not refused one by one) and resumes as soon as
        one of them authenticates, or when the oldest is old enough to be dropped."""
        listener = FakePort()
        gate, clock = make_gate(max_preauth=3, max_preauth_per_source=100, min_age=5.0)
        first = [connect(gate, f"10.0.0.{i}", listener=listener) for i in range(3)]
        self.assertIsNone(connect(gate, "10.0.0.50", listener=listener))  # already accepted
        self.assertFalse(listener.reading)
        assert first[1] is not None
        gate.authenticated(first[1].wrappedProtocol)
        self.assertTrue(listener.reading)
        self.assertIsNotNone(connect(gate, "10.0.0.51", listener=listener))
        self.assertIsNone(connect(gate, "10.0.0.52", listener=listener))
        self.assertFalse(listener.reading)
        clock.advance(5.0)  # the oldest may now be dropped for a newcomer
        self.assertTrue(listener.reading)
        self.assertIsNotNone(connect(gate, "10.0.0.53", listener=listener))
        self.assertEqual(gate.pause_count, 2)
        gate.stop()
        self.assertTrue(listener.reading)

    def test_loopback_is_exempt_from_the_per_source_cap(self) -> None:
        """When many connections come from loopback (a local relay, a benchmark), then the
        per-source cap does not apply to them; the total cap still does."""
        gate, _clock = make_gate(max_preauth=20, max_preauth_per_source=2)
        local = [connect(gate, "127.0.0.1", 1000 + i) for i in range(10)]
        self.assertFalse(any(aborted(c) for c in local if c))
        more = [connect(gate, "::1", 2000 + i) for i in range(15)]
        self.assertEqual(sum(1 for c in local + more if c and aborted(c)), 5)

    def test_ipv6_sources_grouped_by_64(self) -> None:
        """When one host uses many addresses of its IPv6 /64, then they share one source cap."""
        self.assertEqual(source_of(IPv6Address("TCP", "2001:db8:1:2::5", 1)), "2001:db8:1:2::/64")
        gate, _clock = make_gate(max_preauth=100, max_preauth_per_source=2)
        flood = [connect(gate, f"2001:db8:1:2::{i:x}") for i in range(1, 6)]
        self.assertEqual(sum(1 for c in flood if c and not aborted(c)), 2)

    def test_authenticated_connections_are_never_dropped(self) -> None:
        """When a contact's connection has authenticated, then a later flood does not drop it
        and does not count it against the pre-authentication cap."""
        gate, _clock = make_gate(max_preauth=2, max_preauth_per_source=2)
        contact = connect(gate, "203.0.113.5")
        assert contact is not None
        inner = contact.wrappedProtocol
        self.assertTrue(gate.authenticated(inner))
        for i in range(20):
            connect(gate, "203.0.113.5", 2000 + i)
        self.assertFalse(aborted(contact))
        self.assertEqual(gate.preauth_count, 2)
        self.assertEqual(gate.open_count, 3)  # the contact and the two newest strangers
        self.assertFalse(gate.authenticated(Inner()))  # not one of ours

    def test_connection_limit_refuses_when_all_authenticated(self) -> None:
        """When the inbound connection limit is reached by authenticated contacts, then a new
        connection is refused at once (the port closes it) and nobody is dropped."""
        gate, _clock = make_gate(max_connections=3)
        contacts = [connect(gate, f"10.1.0.{i}") for i in range(3)]
        for c in contacts:
            assert c is not None
            gate.authenticated(c.wrappedProtocol)
        self.assertIsNone(connect(gate, "10.9.9.9"))
        self.assertFalse(any(aborted(c) for c in contacts if c))
        self.assertEqual(gate.summary.totals["refused at the connection limit"], 1)

    def test_connection_limit_drops_oldest_unauthenticated(self) -> None:
        """When the inbound connection limit is reached with some pre-authentication
        connections, then the oldest of those makes room for the new one."""
        gate, _clock = make_gate(max_connections=3)
        contact = connect(gate, "10.1.0.1")
        assert contact is not None
        gate.authenticated(contact.wrappedProtocol)
        strangers = [connect(gate, f"10.2.0.{i}") for i in range(2)]
        newest = connect(gate, "10.3.0.1")
        self.assertIsNotNone(newest)
        self.assertEqual([aborted(c) for c in strangers if c], [True, False])
        self.assertFalse(aborted(contact))

    def test_ended_connections_free_their_place(self) -> None:
        """When pre-authentication connections end, then they no longer count."""
        gate, _clock = make_gate(max_preauth=2, max_preauth_per_source=2)
        a, b = connect(gate, "10.0.0.1"), connect(gate, "10.0.0.1")
        assert a is not None and b is not None
        lose(a)
        lose(b)
        self.assertEqual((gate.preauth_count, gate.open_count), (0, 0))
        c, d = connect(gate, "10.0.0.1"), connect(gate, "10.0.0.1")
        self.assertFalse(aborted(c) or aborted(d))  # type: ignore[arg-type]
        self.assertEqual(gate.summary.totals["closed before authentication"], 2)


class DeadlineTests(SynchronousTestCase):
    """A connection has a fixed time from accept to its authenticated hello."""

    def test_unauthenticated_connection_aborted_at_deadline(self) -> None:
        """When a connection stays unauthenticated past the deadline, whatever stage it is in,
        then it is aborted; an authenticated one is not."""
        gate, clock = make_gate(preauth_deadline=30.0)
        staller, contact = connect(gate, "10.0.0.1"), connect(gate, "10.0.0.2")
        assert staller is not None and contact is not None
        gate.authenticated(contact.wrappedProtocol)
        clock.advance(29.9)
        self.assertFalse(aborted(staller))
        clock.advance(0.2)
        self.assertTrue(aborted(staller))
        self.assertFalse(aborted(contact))
        lose(staller)
        lose(contact)
        clock.advance(60)  # the summary's interval
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_cancels_deadlines(self) -> None:
        """When the network stops, then no deadline or summary stays scheduled."""
        gate, clock = make_gate()
        for i in range(5):
            connect(gate, f"10.0.0.{i}")
        gate.summary.note("refused in TLS")
        gate.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class SummaryTests(SynchronousTestCase):
    """Refusals are logged as one aggregated line per interval, without addresses."""

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        observer: Any = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_namespace"] == "jarvis.net.admission"]

    def test_flood_logs_one_line_per_minute(self) -> None:
        """When 10,000 strangers are refused within two minutes, then the log gets the first at
        once and then one line per minute with the counts, never an address."""
        gate, clock = make_gate(max_preauth=50, max_preauth_per_source=5)
        live: list[AdmittedConnection] = []
        for i in range(10_000):
            c = connect(gate, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1024 + i % 60000)
            if c is not None:
                if i % 3 == 0:
                    lose(c)  # some give up by themselves
                else:
                    live.append(c)
            if i == 5_000:
                clock.advance(60)
        clock.advance(60)
        lines = self.lines()
        self.assertEqual(len(lines), 3)
        self.assertIn(": 1 ", lines[0])
        self.assertNotIn("10.0.", "\n".join(lines))
        self.assertGreater(sum(gate.summary.totals.values()), 9_000)
        for c in live:
            lose(c)  # every one was dropped already (cap or deadline): nothing more to count
        clock.advance(60)  # a quiet minute: nothing more to say, nothing left scheduled
        self.assertEqual(len(self.lines()), 3)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_summary_counts_by_kind(self) -> None:
        """When refusals of several kinds happen in one interval, then the line gives each."""
        clock = Clock()
        summary = refusal_summary(clock, interval=60)
        summary.note("refused in TLS")
        for _ in range(4):
            summary.note("refused in TLS")
        summary.note("dropped at the total cap")
        clock.advance(60)
        self.assertEqual(
            self.lines()[-1],
            "inbound connections refused or dropped in the last 60 s: "
            "1 dropped at the total cap, 4 refused in TLS",
        )


class BudgetTests(SynchronousTestCase):
    """The default inbound limit leaves descriptors for everything else."""

    def test_budget_is_limit_minus_reserve(self) -> None:
        """When the process may open N descriptors, then peers get N minus the reserve."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            raise SkipTest("no descriptor limit")
        self.assertEqual(descriptor_budget(64), soft - 64)
        self.assertEqual(descriptor_budget(soft + 10), 1)


class PortTests(TestCase):
    """What admission control relies on in Twisted's TCP port (a real listening socket)."""

    async def test_real_port_is_paused_and_resumed(self) -> None:
        """When a real ``tcp.Port`` accepts through a full gate, then the gate finds that port
        through the connection's transport (``tcp.Server.server``) and pauses it, and the
        client waiting in the accept queue is accepted once a place frees."""
        from twisted.internet import reactor

        built: list[Any] = []
        accepted = Waiters(reactor)

        class Recorder(Protocol):
            def connectionMade(self) -> None:
                built.append(self)
                accepted.check()

        gate = AdmissionControl(reactor, Factory.forProtocol(Recorder), max_preauth=1, min_age=60.0)
        port = reactor.listenTCP(0, gate, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.addCleanup(gate.stop)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        clients = []
        for _ in range(3):
            client = await connectProtocol(endpoint, Protocol())
            clients.append(client)
            self.addCleanup(client.transport.abortConnection)
        await accepted.wait(lambda: len(built) >= 1, 10)
        await accepted.wait(lambda: gate.paused, 10)
        self.assertIs(getattr(built[0].transport.transport, "server", None), port)
        count = len(built)
        gate.authenticated(built[0])  # a place frees: accepting resumes
        await accepted.wait(lambda: len(built) > count, 10)
