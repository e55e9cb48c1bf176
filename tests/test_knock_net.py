"""Tests for jarvis.net.knock and the knock in the peer network: fakes, loopback, real daemons."""

from __future__ import annotations

import itertools
import os
import shutil
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import defer, protocol, task, utils
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.net import knock as net_knock
from jarvis.protocol import knock
from tests.daemons import short_tempdir
from tests.peers import Peer, befriend
from tests.test_network import WAIT, FakeDirectory, Node, make_pair, message_id

reactor: Any = _reactor
ADDRESS = IPv4Address("TCP", "192.0.2.9", 40000)
TOKEN_OK = b"\x01" + b"k" * 31


class RecordingProtocol(protocol.Protocol):
    """The protocol behind the gate (TLS in real life): records what it is given."""

    def __init__(self) -> None:
        self.made = False
        self.data = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason


def make_gate(
    rng_value: float = 0.5,
) -> tuple[net_knock.KnockGate, StringTransport, task.Clock, list[RecordingProtocol]]:
    """Return a gate on a StringTransport whose verifier accepts only TOKEN_OK."""
    clock = task.Clock()
    inner: list[RecordingProtocol] = []

    def build(_: Any) -> RecordingProtocol:
        inner.append(RecordingProtocol())
        return inner[-1]

    wrapped = protocol.Factory.forProtocol(RecordingProtocol)
    wrapped.buildProtocol = build  # type: ignore[method-assign]

    def verify(token: bytes) -> knock.Verdict:
        if token == TOKEN_OK:
            return knock.Accepted("c" * 52)
        return knock.Refused("no knock" if knock.looks_like_tls(token) else "bad knock")

    factory = net_knock.KnockGateFactory(
        wrapped, verify, clock, lambda: rng_value, net_knock.refusal_log(clock)
    )
    gate, transport = connect_gate(factory)
    return gate, transport, clock, inner


def connect_gate(
    factory: net_knock.KnockGateFactory,
) -> tuple[net_knock.KnockGate, StringTransport]:
    """Return one more connection through *factory*'s gate, on a StringTransport."""
    gate = factory.buildProtocol(ADDRESS)
    transport = StringTransport(peerAddress=ADDRESS)
    gate.makeConnection(transport)
    return gate, transport


class GateTests(SynchronousTestCase):
    """The listener's side on a StringTransport and a Clock."""

    def test_invalid_knock_gets_nothing_and_closes_after_the_delay(self) -> None:
        """When 32 wrong bytes arrive, then nothing is written, reading stops, and the
        connection closes only after the random delay (0.5 + 0.5 * 1.5 = 1.25 s here)."""
        gate, transport, clock, inner = make_gate(rng_value=0.5)
        gate.dataReceived(os.urandom(40))
        self.assertEqual(transport.producerState, "paused")
        clock.advance(1.2)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.06)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(inner, [])

    def test_tls_client_hello_gets_nothing(self) -> None:
        """When a bare TLS ClientHello arrives (an older Jarvis, openssl s_client), then no
        byte is written, and it is counted as "no knock"."""
        gate, transport, clock, inner = make_gate(rng_value=0.0)
        gate.dataReceived(client_hello())
        clock.advance(0.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(inner, [])
        self.assertEqual(gate._factory.refusals.totals, {"no knock": 1})

    def test_silent_client_refused_at_the_deadline(self) -> None:
        """When a client sends 31 bytes and then nothing, then it is refused at the 5 s
        deadline and closed after the delay, with nothing written."""
        gate, transport, clock, _inner = make_gate(rng_value=1.0)
        gate.dataReceived(TOKEN_OK[:31])
        clock.advance(net_knock.DEFAULT_KNOCK_DEADLINE - 0.01)
        self.assertEqual(transport.producerState, "producing")
        clock.advance(0.01)
        self.assertEqual(transport.producerState, "paused")
        clock.advance(2.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(gate._factory.refusals.totals, {"late knock": 1})

    def test_valid_knock_hands_over_the_rest(self) -> None:
        """When a valid knock arrives in pieces with TLS bytes behind it, then the inner
        protocol is connected and gets exactly the bytes after the knock; no timer is left."""
        gate, _transport, clock, inner = make_gate()
        gate.dataReceived(TOKEN_OK[:10])
        self.assertEqual(inner, [])
        gate.dataReceived(TOKEN_OK[10:] + b"\x16\x03\x01hello")
        gate.dataReceived(b" more")
        self.assertEqual(len(inner), 1)
        self.assertTrue(inner[0].made)
        self.assertEqual(inner[0].data, b"\x16\x03\x01hello more")
        self.assertEqual(clock.getDelayedCalls(), [])
        gate.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(inner[0].lost)

    @settings(max_examples=60, deadline=None)
    @given(tail=st.binary(max_size=100), cuts=st.lists(st.integers(0, 140), max_size=6))
    def test_any_chunking_hands_over_exactly_the_tail(self, tail: bytes, cuts: list[int]) -> None:
        """When a valid knock and TLS bytes arrive cut anywhere, then the inner protocol gets
        exactly the bytes after the knock, and nothing is written back."""
        gate, transport, _, inner = make_gate()
        stream = TOKEN_OK + tail
        edges = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
        for start, end in itertools.pairwise(edges):
            gate.dataReceived(stream[start:end])
        self.assertEqual(len(inner), 1)
        self.assertEqual(inner[0].data, tail)
        self.assertEqual(transport.value(), b"")

    def test_stop_drops_waiting_connections(self) -> None:
        """When the network stops, then connections still before their knock are aborted and
        new ones are aborted at once."""
        gate, transport, _clock, _ = make_gate()
        gate._factory.stop()
        self.assertTrue(transport.disconnected)
        late = gate._factory.buildProtocol(ADDRESS)
        late_transport = StringTransport()
        late.makeConnection(late_transport)
        self.assertTrue(late_transport.disconnected)

    def test_refusals_are_logged_sparingly(self) -> None:
        """When 50 bad knocks arrive within a minute, then one line is logged at once and one
        summary a minute later, and no token appears in them."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        tokens = [b"\x01" + os.urandom(knock.KNOCK_LENGTH - 1) for _ in range(50)]
        first, _, clock, _ = make_gate()
        factory = first._factory
        first.dataReceived(tokens[0])
        for token in tokens[1:]:
            gate, _ = connect_gate(factory)
            gate.dataReceived(token)
        clock.advance(60)
        clock.advance(60)
        lines = [e for e in events if e.get("log_namespace") == "jarvis.net.knock"]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[1]["count"], 49)
        self.assertIn("49 bad knock", formatEvent(lines[1]))
        self.assertEqual(factory.refusals.totals["bad knock"], 50)
        text = repr(events)
        for token in tokens:
            self.assertNotIn(token.hex(), text)
            self.assertNotIn(repr(token)[2:-1], text)
        factory.refusals.stop()


class SenderTests(SynchronousTestCase):
    """The dialler's side."""

    def make_sender(
        self, token: bytes
    ) -> tuple[Any, StringTransport, RecordingProtocol, list[int]]:
        inner = RecordingProtocol()
        closed: list[int] = []
        wrapped = protocol.Factory.forProtocol(lambda: inner)
        factory = net_knock.KnockSenderFactory(wrapped, lambda: token, lambda: closed.append(1))
        sender = factory.buildProtocol(ADDRESS)
        transport = StringTransport()
        sender.makeConnection(transport)
        return sender, transport, inner, closed

    def test_knock_goes_first(self) -> None:
        """When the connection is made, then the knock is written before anything else and
        the inner protocol then runs on the same transport."""
        _sender, transport, inner, _ = self.make_sender(TOKEN_OK)
        self.assertTrue(inner.made)
        inner.transport.write(b"ClientHello")  # type: ignore[union-attr]
        self.assertEqual(transport.value(), TOKEN_OK + b"ClientHello")

    def test_closed_before_any_byte_is_reported(self) -> None:
        """When the peer closes before sending a byte, then closed_before_tls is called; not
        when it sent something, nor when we aborted."""
        sender, _, inner, closed = self.make_sender(TOKEN_OK)
        sender.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(closed, [1])
        self.assertIsNotNone(inner.lost)
        sender, _, _, closed = self.make_sender(TOKEN_OK)
        sender.dataReceived(b"\x16\x03\x03")
        sender.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(closed, [])
        sender, _, _, closed = self.make_sender(b"")
        sender.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(closed, [])


def client_hello() -> bytes:
    """Return the first flight of a real TLS client (what ``openssl s_client`` sends)."""
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)


class RawTLSClient(protocol.Protocol):
    """Sends a ClientHello, records every byte that comes back, reports when dropped."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(client_hello())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class CaptureLog:
    """Collects log events of one namespace while a test runs."""

    def __init__(self, test: TestCase, namespace: str) -> None:
        self.events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == namespace:
                self.events.append(event)

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        test.addCleanup(globalLogPublisher.removeObserver, observer)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


class LoopbackTests(TestCase):
    """PeerNetworks over real loopback TCP, with the knock on."""

    async def test_stranger_tls_gets_no_byte(self) -> None:
        """When a TLS client without a knock connects to the peer port, then it receives not
        one byte (no certificate, so no uid) and is closed; the listener counts "no knock"."""
        b = Node(self)
        client = RawTLSClient()
        creator = protocol.ClientCreator(reactor, lambda: client)
        await creator.connectTCP("127.0.0.1", b.port.getHost().port)
        await client.lost.addTimeout(WAIT, reactor)
        self.assertEqual(client.received, b"")
        self.assertEqual(b.network.knock_refusals.totals, {"no knock": 1})
        self.assertEqual(b.network.refused_count, 0)  # TLS never started

    async def test_pair_with_knock_exchanges_messages(self) -> None:
        """When two contacts dial with the knock on, then the session is established and a
        message arrives, and the listener refused nothing."""
        a, b = make_pair(self)
        a.network.connect(b.uid)
        await a.wait_online(b)
        await b.wait_online(a)
        mid = message_id()
        a.network.session(b.uid).send_message(mid, b"knock knock", 1)  # type: ignore[union-attr]
        await b.observer.wait(lambda: bool(b.observer.named("message")))
        self.assertEqual(b.observer.named("message")[0][2], mid)
        self.assertEqual(sum(b.network.knock_refusals.totals.values()), 0)

    async def test_old_dialler_logs_the_clear_line(self) -> None:
        """When a dialler without the knock (an older Jarvis) dials a listener that requires
        it, then the listener refuses it as "no knock" and the dialler records and logs that the
        peer closed before TLS, and may require a knock."""
        log = CaptureLog(self, "jarvis.net.network")
        listener_log = CaptureLog(self, "jarvis.net.knock")
        old, new = Node(self, knock=False), Node(self)
        old.knows(new)
        new.knows(old)
        old.network.connect(new.uid)
        await old.observer.wait(lambda: old.network.status(new.uid).connect_failures > 0)
        self.assertEqual(old.network.status(new.uid).last_error, net_knock.CLOSED_BEFORE_TLS)
        self.assertTrue(any(net_knock.CLOSED_BEFORE_TLS in t for t in log.texts()))
        self.assertEqual(new.network.knock_refusals.totals, {"no knock": 1})
        self.assertEqual(new.observer.events, [])
        self.assertEqual(
            listener_log.texts(),
            [
                "refused a TLS connection without a knock (an older Jarvis, or a scanner) "
                "from 127.0.0.1; closing it silently"
            ],
        )

    async def test_stranger_with_a_knock_is_refused(self) -> None:
        """When a stranger who knows B's card knocks with its own pair key, then B refuses it
        before TLS ("bad knock") and the stranger hears nothing back."""
        b = Node(self)
        stranger = Node(self)
        stranger.knows(b)
        stranger.network.connect(b.uid)
        await stranger.observer.wait(lambda: stranger.network.status(b.uid).connect_failures > 0)
        self.assertEqual(stranger.network.status(b.uid).last_error, net_knock.CLOSED_BEFORE_TLS)
        self.assertEqual(b.network.knock_refusals.totals, {"bad knock": 1})
        self.assertEqual(b.network.refused_count, 0)
        self.assertEqual(b.observer.events, [])

    async def test_blocked_contact_is_refused_before_tls(self) -> None:
        """When B removes (or blocks) contact A after a session, and A redials with the right
        pair key, then B refuses it at the knock, though A's key is in B's hint table."""
        a = Node(self, backoff_initial=0.05, backoff_max=0.05)
        b = Node(self)
        a.knows(b)
        b.knows(a)
        a.network.connect(b.uid)
        await a.wait_online(b)
        del b.directory.contacts[a.uid]
        b.network.forget(a.uid)  # as the node does when a contact is removed or blocked
        await a.observer.wait(lambda: a.network.status(b.uid).connect_failures > 0)
        self.assertEqual(a.network.status(b.uid).last_error, net_knock.CLOSED_BEFORE_TLS)
        self.assertEqual(b.network.knock_refusals.totals["bad knock"], 1)

    async def test_removed_contact_in_the_table_is_refused(self) -> None:
        """When B's directory drops A without telling the network (no forget, so the hint table
        still holds A's key) and A redials, then B still refuses it at the knock."""
        a = Node(self, backoff_initial=0.05, backoff_max=0.05)
        b = Node(self)
        a.knows(b)
        b.knows(a)
        a.network.connect(b.uid)
        await a.wait_online(b)
        del b.directory.contacts[a.uid]
        b.network.session(a.uid).close("test")  # type: ignore[union-attr]
        await a.observer.wait(lambda: a.network.status(b.uid).connect_failures > 0)
        self.assertEqual(a.network.status(b.uid).last_error, net_knock.CLOSED_BEFORE_TLS)
        self.assertEqual(b.network.knock_refusals.totals["bad knock"], 1)

    async def test_manual_contact_gets_in_with_the_uid_key(self) -> None:
        """When B added A by uid alone (no key) and A knows B's key, then A's first knock (pair
        key) is refused, its next (uid key) gets in, and B learns A's key."""
        a = Node(self, backoff_initial=0.05, backoff_max=0.05)
        b = Node(self, directory=KeylessDirectory())
        a.knows(b)
        b.directory.contacts[a.uid] = (b"", (a.address,))
        a.network.connect(b.uid)
        await a.wait_online(b)
        self.assertEqual(b.network.knock_refusals.totals, {"bad knock": 1})
        self.assertEqual(b.directory.public_key(a.uid), a.identity.public_bytes)

    async def test_after_a_session_a_closed_peer_keeps_the_pair_key(self) -> None:
        """When A had a session with B and B's port then closes connections before TLS (B
        locked, restarting), then A keeps knocking with the pair key: the next dial after B is
        back gets in at once (before, it switched to the uid key and lost a round)."""
        a = Node(self, backoff_initial=0.05, backoff_max=0.05)
        b = Node(self)
        a.knows(b)
        b.knows(a)
        a.network.connect(b.uid)
        await a.wait_online(b)
        port_number = b.port.getHost().port
        await b.network.stop()
        await b.port.stopListening()
        closer = protocol.ServerFactory.forProtocol(CloseAtOnce)
        closing = reactor.listenTCP(port_number, closer, interface="127.0.0.1")
        self.addCleanup(closing.stopListening)
        await a.observer.wait(lambda: a.network.status(b.uid).connect_failures >= 3)
        self.assertEqual(a.network.status(b.uid).last_error, net_knock.CLOSED_BEFORE_TLS)
        self.assertFalse(a.network._peers[b.uid].uid_knock)


class CloseAtOnce(protocol.Protocol):
    """A listener that closes every connection at once (a locked daemon)."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class KeylessDirectory(FakeDirectory):
    """A directory with manual contacts: an empty key means "not known yet"."""

    def public_key(self, uid: str) -> bytes | None:
        return super().public_key(uid) or None

    def learn_public_key(self, uid: str, key: bytes) -> None:
        self.contacts[uid] = (key, self.contacts[uid][1])


class DaemonTests(TestCase):
    """A real daemon's peer port, probed as a scanner would."""

    timeout = 120

    async def test_openssl_s_client_sees_no_certificate(self) -> None:
        """When ``openssl s_client`` (or a raw ClientHello) connects to a real daemon's peer
        port, then it gets no certificate and no byte at all; contacts still exchange
        messages."""
        root = short_tempdir(self)
        alice, bob = Peer(self, root, "alice"), Peer(self, root, "bob")
        await defer.gatherResults(
            [
                defer.ensureDeferred(alice.start(create=True)),
                defer.ensureDeferred(bob.start(create=True)),
            ]
        )
        port = bob.peer_port()
        client = RawTLSClient()
        await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port)
        await client.lost.addTimeout(WAIT, reactor)
        self.assertEqual(client.received, b"")
        openssl = shutil.which("openssl")
        if openssl is not None:
            out, err, _code = await utils.getProcessOutputAndValue(
                openssl,
                ["s_client", "-connect", f"127.0.0.1:{port}", "-servername", "x"],
                env=os.environ,
            )
            text = (out + err).decode("utf-8", "replace")
            self.assertIn("no peer certificate available", text)
            self.assertNotIn("BEGIN CERTIFICATE", text)
            self.assertNotIn(bob.uid, text)
        await befriend(alice, bob)
        sent = await alice.call("messages.send", contact=bob.uid, text="through the knock")
        await bob.recorder.wait(lambda: "through the knock" in bob.received_bodies(), 30)
        self.assertTrue(sent["id"])
