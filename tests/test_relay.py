"""Tests for the relay: the join (pure), the mailbox's relay and the relay endpoint.

The relay runs in this process on 127.0.0.1 (real TCP, so back-pressure is the kernel's and
Twisted's); the unit of flow control is also checked with ``StringTransport`` and a ``Clock``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.mailbox.relay import PortSharing, RelayFactory, RelayLimits, source_of
from jarvis.net.relay import RelayEndpoint, RelayFailed
from jarvis.protocol import relay as wire
from tests.waiting import Waiters

KEY = bytes(range(32))


class WireTests(SynchronousTestCase):
    def test_token_vector(self) -> None:
        """When the token of a fixed key, window and generation is computed, then it is the
        documented HMAC (a byte-exact vector, docs/protocol.md)."""
        key = wire.relay_key(bytes(32))
        self.assertEqual(
            key.hex(), "022be8280a50411dce1c0522a797ce68fc7ae0bc95d91af29313b33e066aa595"
        )
        self.assertEqual(
            wire.token(key, 2949120, 0).hex(),
            "38fc3df1306e5f2a9af803ec5e6eac51467b228e2ef2a70914aa05b6e150ff7d",
        )
        expected = hmac.new(
            key, b"jarvis-relay-v1" + (2949120).to_bytes(8, "big") + b"\x00", hashlib.sha256
        ).digest()
        self.assertEqual(wire.token(key, 2949120, 0), expected)
        self.assertEqual(wire.window_of(1_769_472_000.0), 2949120)

    def test_documented_vectors(self) -> None:
        """When the relay key, tokens and a join are computed from docs/protocol.md's pair key,
        then they are the values that section shows."""
        pair = bytes.fromhex("3d11176e481a05a32bf8b8d59c722fc1e60e75ee640dff14f9e1ce8bce565568")
        key = wire.relay_key(pair)
        window = wire.window_of(1_800_000_000)
        values = [
            key.hex(),
            wire.token(key, window, 0).hex(),
            wire.token(key, window, 1).hex(),
            wire.token(key, window + 1, 0).hex(),
        ]
        bob = "qjgitkuo7ok67e3ctncrswmrfhfm4sw2zgtbqdnlumoo5va6z3ta"
        alice = "ubiig7mfa4cyfthxhffqtceeptbrfs4iewnyssez63zdttyxsgsq"
        join = wire.Join(wire.token(key, window, 0), wire.side_of(bob, alice)).to_bytes()
        self.assertEqual(join[:16].hex(), "6a61727669732d72656c61792d76310a")
        self.assertEqual(join[-1], 0)
        docs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "protocol.md")
        with open(docs, encoding="utf-8") as f:
            section = f.read().split("## Relay join", 1)[1]
        for value in values:
            self.assertIn(f"`{value}`", section)

    def test_tokens_unlinkable_across_windows_and_generations(self) -> None:
        """When the window or the generation changes, then the token changes entirely."""
        tokens = {wire.token(KEY, w, g) for w in range(5) for g in range(3)}
        self.assertEqual(len(tokens), 15)
        self.assertNotEqual(wire.token(KEY, 1), wire.token(bytes(32), 1))

    def test_join_round_trip_and_refusals(self) -> None:
        """When a join is encoded and parsed, then it comes back; a wrong magic, side or
        length is refused."""
        join = wire.Join(wire.token(KEY, 7), wire.SIDE_SERVER)
        data = join.to_bytes()
        self.assertEqual(len(data), wire.JOIN_LENGTH)
        self.assertNotEqual(data[0], 0x16)
        self.assertEqual(wire.parse_join(data), join)
        for bad in (b"x" + data[1:], data[:-1] + b"\x02", data[:-1]):
            self.assertRaises(wire.MalformedJoin, wire.parse_join, bad)

    def test_sides_are_opposite(self) -> None:
        """When two uids compute their sides, then the lower uid is the TLS client."""
        self.assertEqual(wire.side_of("aaa", "bbb"), wire.SIDE_CLIENT)
        self.assertEqual(wire.side_of("bbb", "aaa"), wire.SIDE_SERVER)

    def test_source_of(self) -> None:
        """When limits count sources, then an IPv6 address counts as its /64."""

        class Addr:
            def __init__(self, host: str) -> None:
                self.host = host

        self.assertEqual(source_of(Addr("10.0.0.1")), "10.0.0.1")  # type: ignore[arg-type]
        self.assertEqual(source_of(Addr("2001:db8::5")), "2001:db8::/64")  # type: ignore[arg-type]


class OptionsTests(SynchronousTestCase):
    def test_relay_options_reach_the_limits(self) -> None:
        """When the relay options are given to twistd jarvis-mailbox, then they reach
        RelayLimits (MiB/s in bytes/s); a negative bandwidth or pair count is refused."""
        from twisted.python import usage

        from jarvis.mailbox.service import MailboxOptions

        options = MailboxOptions()
        argv = ["--data-dir", "x", "--relay-bandwidth", "2", "--relay-pairs", "7"]
        options.parseOptions([*argv, "--relay-timeout", "4"])
        limits = options.relay_limits()
        self.assertEqual(
            (limits.bandwidth, limits.max_pairs, limits.pairing_timeout), (2 * 1024 * 1024, 7, 4)
        )
        for bad in (["--relay-bandwidth", "-1"], ["--relay-pairs", "-1"]):
            self.assertRaises(
                usage.UsageError, MailboxOptions().parseOptions, ["--data-dir", "x", *bad]
            )


class FlowTests(SynchronousTestCase):
    """The pair's flow control, with in-memory transports and a clock."""

    def make_pair(self, bandwidth: float = 0.0) -> tuple[RelayFactory, Any, Any, Clock]:
        clock = Clock()
        relay = RelayFactory(clock, RelayLimits(bandwidth=bandwidth))
        ends = []
        for side in (wire.SIDE_CLIENT, wire.SIDE_SERVER):
            conn = relay.buildProtocol(None)
            transport = StringTransport()
            conn.makeConnection(transport)
            conn.dataReceived(wire.Join(wire.token(KEY, 1), side).to_bytes())
            ends.append((conn, transport))
        return relay, ends[0], ends[1], clock

    def test_paired_then_bytes_copied(self) -> None:
        """When two joins with one token and opposite sides arrive, then both hear "paired"
        and each one's bytes reach the other unchanged."""
        relay, (a, ta), (b, tb), _ = self.make_pair()
        self.assertEqual((ta.value(), tb.value()), (b"\x00", b"\x00"))
        a.dataReceived(b"hello")
        b.dataReceived(b"world")
        self.assertEqual((ta.value(), tb.value()), (b"\x00world", b"\x00hello"))
        self.assertEqual(relay.figures()["relay_pairs"], 1)

    def test_full_sink_stops_reading_from_source(self) -> None:
        """When the receiving transport's buffer is full (it pauses its producer), then the
        relay stops reading from the sender until it drains: nothing piles up in the relay."""
        _, (_a, ta), (_b, tb), _ = self.make_pair()
        self.assertIsNotNone(tb.producer)
        tb.producer.pauseProducing()  # b's transport is full
        self.assertEqual(ta.producerState, "paused")
        tb.producer.resumeProducing()
        self.assertEqual(ta.producerState, "producing")

    def test_bandwidth_limit_pauses_until_refilled(self) -> None:
        """When a pair sends more than its bandwidth, then reading from the sender pauses
        for as long as the excess takes at that rate, and a full sink keeps it paused."""
        _, (a, ta), (_b, tb), clock = self.make_pair(bandwidth=1000.0)
        a.dataReceived(b"x" * 3000)  # 1000 in the bucket: 2000 too many
        self.assertEqual(ta.producerState, "paused")
        tb.producer.pauseProducing()
        clock.advance(2.0)
        self.assertEqual(ta.producerState, "paused")  # still full
        tb.producer.resumeProducing()
        self.assertEqual(ta.producerState, "producing")
        self.assertEqual(tb.value(), b"\x00" + b"x" * 3000)

    def test_close_of_one_closes_the_other(self) -> None:
        """When one half of a pair goes away, then the other is closed and the pair is
        forgotten."""
        relay, (a, _ta), (b, tb), _ = self.make_pair()
        a.connectionLost()
        self.assertTrue(tb.disconnecting)
        b.connectionLost()
        self.assertEqual((relay.figures()["relay_pairs"], len(relay.connections)), (0, 0))

    def test_replayed_join_refused_and_same_side_refused(self) -> None:
        """When a paired join is replayed, or a second join of the same token and side comes
        while the first waits, then it is answered "token already used" and closed."""
        relay, _, _, clock = self.make_pair()
        replay = relay.buildProtocol(None)
        t = StringTransport()
        replay.makeConnection(t)
        replay.dataReceived(wire.Join(wire.token(KEY, 1), wire.SIDE_CLIENT).to_bytes())
        self.assertEqual((t.value(), t.disconnecting), (bytes([wire.STATUS_USED]), True))
        first, second = relay.buildProtocol(None), relay.buildProtocol(None)
        t1, t2 = StringTransport(), StringTransport()
        first.makeConnection(t1)
        second.makeConnection(t2)
        join = wire.Join(wire.token(KEY, 2), wire.SIDE_CLIENT).to_bytes()
        first.dataReceived(join)
        second.dataReceived(join)
        self.assertEqual((t1.value(), t2.value()), (b"", bytes([wire.STATUS_USED])))
        # the burnt token is forgotten after burn_seconds
        clock.advance(relay.limits.burn_seconds + 1)
        again = relay.buildProtocol(None)
        t3 = StringTransport()
        again.makeConnection(t3)
        again.dataReceived(wire.Join(wire.token(KEY, 1), wire.SIDE_CLIENT).to_bytes())
        self.assertEqual(t3.value(), b"")  # waiting, not refused

    def test_stranger_times_out_and_garbage_refused(self) -> None:
        """When a join finds no partner, then it is answered "no partner" after the pairing
        timeout; bytes that are not a join are refused at once; bytes sent before pairing
        are refused."""
        clock = Clock()
        relay = RelayFactory(clock, RelayLimits(pairing_timeout=5.0))
        lone, garbage, eager = (relay.buildProtocol(None) for _ in range(3))
        tl, tg, te = StringTransport(), StringTransport(), StringTransport()
        lone.makeConnection(tl)
        garbage.makeConnection(tg)
        eager.makeConnection(te)
        lone.dataReceived(wire.Join(wire.token(KEY, 3), 0).to_bytes())
        garbage.dataReceived(b"GET / HTTP/1.1\r\n")
        eager.dataReceived(wire.Join(wire.token(KEY, 4), 0).to_bytes() + b"early")
        self.assertEqual(tg.value(), bytes([wire.STATUS_BAD]))
        self.assertEqual(te.value(), bytes([wire.STATUS_BAD]))
        clock.advance(5.0)
        self.assertEqual((tl.value(), tl.disconnecting), (bytes([wire.STATUS_TIMEOUT]), True))
        lone.connectionLost()
        self.assertEqual(relay.figures()["relay_waiting"], 0)

    def test_relaying_off(self) -> None:
        """When the operator allows no pairs (--relay-pairs 0), then every join is answered
        "busy" at once, and nothing waits."""
        relay = RelayFactory(Clock(), RelayLimits(max_pairs=0))
        conn, t = relay.buildProtocol(None), StringTransport()
        conn.makeConnection(t)
        conn.dataReceived(wire.Join(wire.token(KEY, 1), 0).to_bytes())
        self.assertEqual((t.value(), t.disconnecting), (bytes([wire.STATUS_BUSY]), True))
        self.assertEqual(relay.figures()["relay_waiting"], 0)

    def test_waiting_limits(self) -> None:
        """When one source has as many joins waiting as allowed, then its next join is
        answered "busy" while another source's is accepted."""
        clock = Clock()
        relay = RelayFactory(clock, RelayLimits(max_waiting_per_source=2))

        class Addr:
            def __init__(self, host: str) -> None:
                self.host = host

        answers = []
        for n, host in enumerate(["10.0.0.1"] * 3 + ["10.0.0.2"]):
            conn = relay.buildProtocol(Addr(host))  # type: ignore[arg-type]
            t = StringTransport()
            conn.makeConnection(t)
            conn.dataReceived(wire.Join(wire.token(KEY, 10 + n), 0).to_bytes())
            answers.append(t.value())
        self.assertEqual(answers, [b"", b"", bytes([wire.STATUS_BUSY]), b""])


class _Echo(Protocol):
    """Records what it receives, and its transport."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = defer.Deferred[None]()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.factory.waiters.check()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class EndpointTests(TestCase):
    """The relay endpoint against a real relay on 127.0.0.1."""

    def setUp(self) -> None:
        self.relay = RelayFactory(reactor, RelayLimits(pairing_timeout=5.0))
        tls_side: Any = Factory.forProtocol(Protocol)
        self.port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, PortSharing(tls_side, self.relay), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)
        self.waiters = Waiters(reactor)

    def endpoint(self, side: int, key: bytes = KEY, timeout: float = 10.0) -> RelayEndpoint:
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        return RelayEndpoint(tcp, key, side, reactor, timeout=timeout)

    def factory(self) -> Any:
        f = Factory.forProtocol(_Echo)
        f.waiters = self.waiters  # type: ignore[attr-defined]
        return f

    async def test_two_sides_are_joined_and_bytes_flow(self) -> None:
        """When both sides of a pair connect through the relay, then each gets its protocol
        connected to the other: bytes flow both ways, and a close reaches the other side."""
        a, b = await defer.gatherResults(
            [
                self.endpoint(wire.SIDE_CLIENT).connect(self.factory()),
                self.endpoint(wire.SIDE_SERVER).connect(self.factory()),
            ]
        )
        a.transport.write(b"ping" * 50_000)
        b.transport.write(b"pong")
        await self.waiters.wait(lambda: len(b.received) == 200_000 and a.received == b"pong", 10)
        self.assertEqual(b.received, b"ping" * 50_000)
        a.transport.loseConnection()
        await b.lost
        await a.lost
        self.assertEqual(self.relay.figures()["relay_pairs"], 0)

    async def test_used_token_moves_to_next_generation(self) -> None:
        """When a pair's token of this window was already paired (a replay, or an earlier
        relayed session), then both sides move to the next generation and meet anyway."""
        first = await defer.gatherResults(
            [self.endpoint(s).connect(self.factory()) for s in (0, 1)]
        )
        for p in first:
            p.transport.loseConnection()
        await defer.gatherResults([p.lost for p in first])
        again = await defer.gatherResults(
            [self.endpoint(s).connect(self.factory()) for s in (0, 1)]
        )
        self.assertEqual(self.relay.counters["pairs"], 2)
        self.assertEqual(self.relay.counters["token already used"], 2)
        for p in again:
            p.transport.loseConnection()
        await defer.gatherResults([p.lost for p in again])

    async def test_wrong_key_never_meets(self) -> None:
        """When the two sides hold different keys (a stranger), then neither is joined: each
        fails with "no partner" and no byte reached the other."""
        relay = RelayFactory(reactor, RelayLimits(pairing_timeout=0.5))
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, PortSharing(Factory.forProtocol(Protocol), relay), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        attempts = [
            RelayEndpoint(tcp, key, side, reactor, timeout=10).connect(self.factory())
            for key, side in ((KEY, 0), (bytes(32), 1))
        ]
        for attempt in attempts:
            failure = await self.assertFailure(attempt, RelayFailed)
            self.assertIn("no partner", str(failure))
        self.assertEqual(relay.counters["pairs"], 0)

    async def test_tls_clients_still_reach_the_mailbox(self) -> None:
        """When a connection starts with a TLS record byte, then it goes to the mailbox's
        factory, not the relay."""
        got: list[bytes] = []

        class Inner(Protocol):
            def dataReceived(self, data: bytes) -> None:
                got.append(data)
                self.transport.loseConnection()  # type: ignore[union-attr]

        relay = RelayFactory(reactor)
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, PortSharing(Factory.forProtocol(Inner), relay), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        client = _Echo()
        client.factory = self.factory()  # type: ignore[attr-defined]
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        client.transport.write(b"\x16\x03\x01hello")  # type: ignore[union-attr]
        await client.lost
        self.assertEqual(got, [b"\x16\x03\x01hello"])
        self.assertEqual(len(relay.connections), 0)


class TransferTokenTests(SynchronousTestCase):
    """A file transfer's relay token (issue 18): its own key, label and transfer id."""

    def test_documented_vectors(self) -> None:
        """When a transfer's relay key and tokens are computed from docs/protocol.md's pair key
        and transfer id 00..0f, then they are the values that section shows, and the token is
        the HMAC it describes."""
        pair = bytes.fromhex("3d11176e481a05a32bf8b8d59c722fc1e60e75ee640dff14f9e1ce8bce565568")
        key = wire.transfer_relay_key(pair)
        window = wire.window_of(1_800_000_000)
        tid = bytes(range(16))
        values = [
            key.hex(),
            wire.transfer_token(key, tid, window, 0).hex(),
            wire.transfer_token(key, tid, window, 1).hex(),
        ]
        expected = hmac.new(
            key,
            b"jarvis-relay-transfer-v1" + tid + window.to_bytes(8, "big") + b"\x00",
            hashlib.sha256,
        ).digest()
        self.assertEqual(wire.transfer_token(key, tid, window, 0), expected)
        docs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "protocol.md")
        with open(docs, encoding="utf-8") as f:
            section = f.read().split("## Relayed data connections", 1)[1]
        for value in values:
            self.assertIn(f"`{value}`", section)

    def test_distinct_from_the_session_and_from_other_transfers(self) -> None:
        """When the pair's session token and its transfers' tokens of one window and
        generation are computed, then they are all different (another key and label: the
        relay cannot pair a transfer's end with the session's), two transfers' tokens differ,
        every window and generation gives a new token, and a bad transfer id or generation is
        refused."""
        pair = os.urandom(32)
        session_key, transfer_key = wire.relay_key(pair), wire.transfer_relay_key(pair)
        self.assertNotEqual(session_key, transfer_key)
        first, second = os.urandom(16), os.urandom(16)
        tokens = {wire.token(session_key, 7, 0)}
        for tid in (first, second):
            for window in (7, 8):
                for generation in (0, 1):
                    tokens.add(wire.transfer_token(transfer_key, tid, window, generation))
        self.assertEqual(len(tokens), 1 + 2 * 2 * 2)
        # the session's key with the transfer's label is not the transfer's token either
        self.assertNotEqual(
            wire.transfer_token(session_key, first, 7), wire.transfer_token(transfer_key, first, 7)
        )
        with self.assertRaises(ValueError):
            wire.transfer_token(transfer_key, b"short", 7)
        with self.assertRaises(ValueError):
            wire.transfer_token(transfer_key, first, 7, 256)

    def test_both_contacts_compute_the_same_token(self) -> None:
        """When each contact derives the token from its own side of the pair key (its seed,
        the other's public key), then both get the same bytes: they meet at the relay."""
        from jarvis.crypto.identity import IdentityKey
        from jarvis.protocol.knock import pair_key

        alice, bob = IdentityKey.generate(), IdentityKey.generate()
        tid = os.urandom(16)
        tokens = [
            wire.transfer_token(
                wire.transfer_relay_key(pair_key(me.private_bytes(), me.uid, other_public, other)),
                tid,
                9,
            )
            for me, other_public, other in (
                (alice, bob.public_bytes, bob.uid),
                (bob, alice.public_bytes, alice.uid),
            )
        ]
        self.assertEqual(tokens[0], tokens[1])


class TransferJoinTests(TestCase):
    """Against a real relay on 127.0.0.1: a transfer's joins meet each other, never the
    session's."""

    def setUp(self) -> None:
        self.relay = RelayFactory(reactor, RelayLimits(pairing_timeout=0.5))
        self.port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, PortSharing(Factory.forProtocol(Protocol), self.relay), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)
        self.waiters = Waiters(reactor)

    def endpoint(self, side: int, tid: bytes | None) -> RelayEndpoint:
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        pair = bytes(32)
        if tid is None:
            return RelayEndpoint(tcp, wire.relay_key(pair), side, reactor, timeout=10)
        key = wire.transfer_relay_key(pair)
        return RelayEndpoint(
            tcp,
            key,
            side,
            reactor,
            timeout=10,
            token_for=lambda window, gen: wire.transfer_token(key, tid, window, gen),
        )

    async def test_transfer_end_never_meets_the_session_end(self) -> None:
        """When one contact joins with the session's token and the other with a transfer's
        (same pair key, window and generation), then neither is joined: both fail with "no
        partner"; two ends of the same transfer are joined."""
        f = Factory.forProtocol(_Echo)
        f.waiters = self.waiters  # type: ignore[attr-defined]
        attempts = [
            self.endpoint(wire.SIDE_CLIENT, None).connect(f),
            self.endpoint(wire.SIDE_SERVER, bytes(range(16))).connect(f),
        ]
        for attempt in attempts:
            failure = await self.assertFailure(attempt, RelayFailed)
            self.assertIn("no partner", str(failure))
        self.assertEqual(self.relay.counters["pairs"], 0)
        tid = os.urandom(16)
        a, b = await defer.gatherResults(
            [self.endpoint(side, tid).connect(f) for side in (wire.SIDE_CLIENT, wire.SIDE_SERVER)]
        )
        self.assertEqual(self.relay.counters["pairs"], 1)
        a.transport.write(b"chunk")
        await self.waiters.wait(lambda: b.received == b"chunk", 10)
        a.transport.loseConnection()
        await defer.gatherResults([a.lost, b.lost])
