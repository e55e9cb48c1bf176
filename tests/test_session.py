"""Tests for :mod:`jarvis.protocol.session`: two PeerSessions wired in memory with a Clock."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from jarvis.common.logs import log_id
from jarvis.crypto.cascade import CascadeOpener, CascadeSealer, derive_session_keys
from jarvis.protocol import session as session_module
from jarvis.protocol.framing import HANDSHAKE_MAX_FRAME, MAX_FRAME, PROLOGUE, encode_frame
from jarvis.protocol.keys import SessionKeys, hello_transcript, negotiate_version
from jarvis.protocol.records import (
    Ack,
    Goodbye,
    Hello,
    MailboxAddress,
    Message,
    Ping,
    Pong,
    Read,
    Record,
    Resume,
    UnknownRecord,
    encode_record,
    parse_record,
)
from jarvis.protocol.session import (
    EARLY_DATA_LIMIT,
    MAX_BODY,
    NotEstablished,
    PeerSession,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

#: Alice's Hello transcript for the documented Hello (docs/protocol.md, "Handshake").
TRANSCRIPT_HEX = (
    "6a61727669732f68656c6c6f2f763100"
    "49"
    "0034"
    "7562696967376d66613463796674687868666671746365657074"
    "62726673346965776e797373657a36337a647474797873677371"
    "0034"
    "716a6769746b756f376f6b3637653363746e637273776d726668"
    "666d347377327a67746271646e6c756d6f6f357661367a337461"
    "79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a"
    "0001"
    "0001"
    "0020"
    "cbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcbcb"
)
#: The documented Hello (same constant as tests/test_records.py).
HELLO_HEX = (
    "0100010001"
    "0034"
    "7562696967376d66613463796674687868666671746365657074"
    "62726673346965776e797373657a36337a647474797873677371"
    "79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a"
    "0e967de38f8f53abe9433bdbb4e1c4902073be3c9e80bdf4b161935ecdad061e"
    "80a10044d17f3c5bd8e62e968055ffdcaff38c31663b0be6e0c30e44960d6a00"
)
CHANNEL_BINDING = b"\xcb" * 32
ID1, ID2, ID3 = (bytes([n]) * 16 for n in (1, 2, 3))


def make_identity(seed: bytes | None = None) -> tuple[Ed25519PrivateKey, bytes, str]:
    """Return an Ed25519 key, its raw public bytes and its uid."""
    key = Ed25519PrivateKey.from_private_bytes(seed) if seed else Ed25519PrivateKey.generate()
    public = key.public_key()
    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    uid = base64.b32encode(hashlib.sha256(der).digest()).decode("ascii").rstrip("=").lower()
    return key, public.public_bytes(Encoding.Raw, PublicFormat.Raw), uid


class RecordingObserver:
    """A SessionObserver that records every event, optionally running a hook on each."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.on_established: Callable[[PeerSession], None] | None = None
        self.on_message: Callable[[PeerSession, bytes], None] | None = None

    def session_established(self, session: PeerSession) -> None:
        self.events.append(("established",))
        if self.on_established:
            self.on_established(session)

    def message_received(
        self, session: PeerSession, message_id: bytes, body: bytes, created_ms: int
    ) -> None:
        self.events.append(("message", message_id, body, created_ms))
        if self.on_message:
            self.on_message(session, message_id)

    def acks_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        self.events.append(("acks", message_ids))

    def reads_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        self.events.append(("reads", message_ids))

    def session_closed(self, session: PeerSession, reason: str) -> None:
        self.events.append(("closed", reason))

    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]

    def closed(self) -> list[str]:
        return [event[1] for event in self.events if event[0] == "closed"]


class End:
    """One side of the in-memory connection: its session, observer and outgoing queue."""

    def __init__(self) -> None:
        self.session: PeerSession
        self.observer = RecordingObserver()
        self.outgoing: list[bytes] = []
        self.sent: list[bytes] = []
        self.lost = False
        self.muted = False

    def send_bytes(self, data: bytes) -> None:
        if self.muted:
            return
        self.outgoing.append(data)
        self.sent.append(data)

    def lose_connection(self) -> None:
        self.lost = True

    def sent_records(self) -> list[Record | UnknownRecord]:
        """Parse everything this side sent (after the prologue) into records."""
        stream = b"".join(self.sent)
        assert stream.startswith(PROLOGUE)
        stream = stream[len(PROLOGUE) :]
        records: list[Record | UnknownRecord] = []
        while stream:
            length = int.from_bytes(stream[:4], "big")
            records.append(parse_record(stream[4 : 4 + length]))
            stream = stream[4 + length :]
        return records


class Pair:
    """Alice (initiator) and Bob (responder) connected through queues, sharing one Clock."""

    def __init__(self, **overrides: Any) -> None:
        self.clock = Clock()
        alice_key, alice_public, alice_uid = make_identity()
        bob_key, bob_public, bob_uid = make_identity()
        self.alice, self.bob = End(), End()
        self.alice_uid, self.bob_uid = alice_uid, bob_uid
        alice_args: dict[str, Any] = dict(
            local_uid=alice_uid,
            sign=alice_key.sign,
            peer_uid=bob_uid,
            peer_public_key=bob_public,
            initiator=True,
        )
        bob_args: dict[str, Any] = dict(
            local_uid=bob_uid,
            sign=bob_key.sign,
            peer_uid=alice_uid,
            peer_public_key=alice_public,
            initiator=False,
        )
        alice_args.update(overrides.pop("alice", {}))
        bob_args.update(overrides.pop("bob", {}))
        for end, args in ((self.alice, alice_args), (self.bob, bob_args)):
            end.session = PeerSession(
                clock=self.clock,
                send_bytes=end.send_bytes,
                lose_connection=end.lose_connection,
                observer=end.observer,
                **args,
                **overrides,
            )

    def connect(
        self, alice_binding: bytes = CHANNEL_BINDING, bob_binding: bytes | None = None
    ) -> None:
        """Make the connection on both sides and deliver everything."""
        self.alice.session.connection_made(alice_binding)
        self.bob.session.connection_made(alice_binding if bob_binding is None else bob_binding)
        self.pump()

    def pump(self) -> None:
        """Deliver queued bytes both ways, then losses, until nothing moves."""
        moved = True
        while moved:
            moved = False
            for source, target in ((self.alice, self.bob), (self.bob, self.alice)):
                while source.outgoing:
                    target.session.data_received(source.outgoing.pop(0))
                    moved = True
        if self.alice.lost or self.bob.lost:
            for end in (self.alice, self.bob):
                end.session.connection_lost("connection closed")

    def established(self) -> None:
        """Connect and check both sides are established."""
        self.connect()
        assert self.alice.session.state == "established", self.alice.observer.events
        assert self.bob.session.state == "established", self.bob.observer.events


def frame(record: object) -> bytes:
    return encode_frame(encode_record(record))  # type: ignore[arg-type]


class HandshakeTests(SynchronousTestCase):
    """A valid Hello exchange establishes both sides."""

    def test_states_and_events(self) -> None:
        """When both sides connect, then each goes connecting, handshaking, established once."""
        pair = Pair()
        self.assertEqual(pair.alice.session.state, "connecting")
        pair.alice.session.connection_made(CHANNEL_BINDING)
        self.assertEqual(pair.alice.session.state, "handshaking")
        pair.bob.session.connection_made(CHANNEL_BINDING)
        pair.pump()
        for end in (pair.alice, pair.bob):
            self.assertEqual(end.session.state, "established")
            self.assertEqual(end.session.version, 1)
            self.assertEqual(end.observer.kinds(), ["established"])

    def test_prologue_and_hello_first(self) -> None:
        """When the connection is made, then the first write is the prologue and a Hello."""
        pair = Pair()
        pair.alice.session.connection_made(CHANNEL_BINDING)
        first = pair.alice.sent[0]
        self.assertTrue(first.startswith(PROLOGUE))
        hello = parse_record(first[len(PROLOGUE) + 4 :])
        assert isinstance(hello, Hello)
        self.assertEqual(hello.uid, pair.alice_uid)

    def test_data_before_connection_made(self) -> None:
        """When the peer's Hello arrives before connection_made, then it is processed after."""
        pair = Pair()
        pair.alice.session.connection_made(CHANNEL_BINDING)
        pair.pump()
        self.assertEqual(pair.bob.session.state, "connecting")
        pair.bob.session.connection_made(CHANNEL_BINDING)
        pair.pump()
        self.assertEqual(pair.alice.session.state, "established")
        self.assertEqual(pair.bob.session.state, "established")

    def test_handshake_timer_cancelled(self) -> None:
        """When established, then only the keepalive and idle timers remain scheduled."""
        pair = Pair()
        pair.established()
        delays = sorted(cast(DelayedCall, call).getTime() for call in pair.clock.getDelayedCalls())
        self.assertEqual(delays, [30.0, 30.0, 90.0, 90.0])

    def test_transcript_vector(self) -> None:
        """When the documented transcript is rebuilt, then the Hello's signature verifies."""
        alice_key, _, alice_uid = make_identity(bytes(range(32)))
        _, _, bob_uid = make_identity(bytes(range(32, 64)))
        hello = parse_record(bytes.fromhex(HELLO_HEX))
        assert isinstance(hello, Hello)
        transcript = hello_transcript(
            initiator=True,
            signer_uid=alice_uid,
            recipient_uid=bob_uid,
            ephemeral_key=hello.ephemeral_key,
            min_version=1,
            max_version=1,
            channel_binding=CHANNEL_BINDING,
        )
        self.assertEqual(transcript.hex(), TRANSCRIPT_HEX)
        alice_key.public_key().verify(hello.signature, transcript)
        self.assertEqual(alice_key.sign(transcript), hello.signature)
        blocks = re.findall(r"```hex\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
        self.assertIn(TRANSCRIPT_HEX, ["".join(block.split()) for block in blocks])


class VersionTests(SynchronousTestCase):
    """The highest common version is chosen; disjoint ranges are refused."""

    def test_negotiate(self) -> None:
        """When ranges overlap, then the highest common version wins; else None."""
        self.assertEqual(negotiate_version((1, 1), (1, 1)), 1)
        self.assertEqual(negotiate_version((1, 3), (2, 5)), 3)
        self.assertEqual(negotiate_version((2, 5), (1, 3)), 3)
        self.assertIsNone(negotiate_version((1, 1), (2, 2)))

    def test_sessions_agree(self) -> None:
        """When Alice speaks 1-3 and Bob 2-5, then both sessions use version 3."""
        pair = Pair(alice={"versions": (1, 3)}, bob={"versions": (2, 5)})
        pair.established()
        self.assertEqual((pair.alice.session.version, pair.bob.session.version), (3, 3))

    def test_no_common_version(self) -> None:
        """When the ranges do not overlap, then both close naming the ranges."""
        pair = Pair(alice={"versions": (1, 1)}, bob={"versions": (2, 2)})
        pair.connect()
        self.assertEqual(
            pair.alice.observer.closed(), ["no common protocol version (ours 1-1, theirs 2-2)"]
        )
        self.assertEqual(pair.bob.session.state, "closed")

    def test_invalid_range(self) -> None:
        """When a session is given an inverted or zero version range, then ValueError."""
        self.assertRaises(ValueError, Pair, alice={"versions": (2, 1)})
        self.assertRaises(ValueError, Pair, alice={"versions": (0, 1)})


class MessageTests(SynchronousTestCase):
    """Sealed messages, acks and reads flow both ways once established."""

    def test_messages_both_ways(self) -> None:
        """When each side sends messages, then the other receives bodies, ids and times."""
        pair = Pair()
        pair.established()
        pair.alice.session.send_message(ID1, "héllo".encode(), 1700000000000)
        pair.alice.session.send_message(ID2, b"", 1)
        pair.bob.session.send_message(ID3, b"hi alice", 42)
        pair.pump()
        self.assertEqual(
            pair.bob.observer.events[1:],
            [("message", ID1, "héllo".encode(), 1700000000000), ("message", ID2, b"", 1)],
        )
        self.assertEqual(pair.alice.observer.events[1:], [("message", ID3, b"hi alice", 42)])

    def test_body_is_sealed(self) -> None:
        """When a message is sent, then its plaintext never appears on the wire."""
        pair = Pair()
        pair.established()
        pair.alice.session.send_message(ID1, b"top secret words", 5)
        self.assertNotIn(b"top secret words", b"".join(pair.alice.sent))
        message = pair.alice.sent_records()[-1]
        assert isinstance(message, Message)
        self.assertEqual((message.message_id, message.counter), (ID1, 1))

    def test_largest_body(self) -> None:
        """When a body of MAX_BODY bytes is sent, then it fits the frame maximum and arrives."""
        pair = Pair()
        pair.established()
        pair.alice.session.send_message(ID1, b"x" * MAX_BODY, 5)
        self.assertLessEqual(len(pair.alice.sent[-1]) - 4, MAX_FRAME)
        pair.pump()
        self.assertEqual(pair.bob.observer.events[-1][2], b"x" * MAX_BODY)

    def test_invalid_arguments(self) -> None:
        """When the body is too large, the id has the wrong size or the time is negative,
        then ValueError is raised and nothing is sent."""
        pair = Pair()
        pair.established()
        before = len(pair.alice.sent)
        session = pair.alice.session
        self.assertRaises(ValueError, session.send_message, ID1, b"x" * (MAX_BODY + 1), 5)
        self.assertRaises(ValueError, session.send_message, b"short", b"x", 5)
        self.assertRaises(ValueError, session.send_message, ID1, b"x", -1)
        self.assertRaises(ValueError, session.send_ack, [b"short"])
        self.assertEqual(len(pair.alice.sent), before)

    def test_acks_and_reads(self) -> None:
        """When acks and reads are sent, then the peer reports the same ids."""
        pair = Pair()
        pair.established()
        pair.bob.session.send_ack([ID1, ID2])
        pair.bob.session.send_read((ID1,))
        pair.bob.session.send_ack([])
        pair.pump()
        self.assertEqual(pair.alice.observer.events[1:], [("acks", (ID1, ID2)), ("reads", (ID1,))])

    def test_long_ack_split(self) -> None:
        """When 2500 ids are acked, then they go in three records and all arrive in order."""
        pair = Pair()
        pair.established()
        ids = [n.to_bytes(16, "big") for n in range(2500)]
        pair.bob.session.send_ack(ids)
        pair.pump()
        acks = [event[1] for event in pair.alice.observer.events if event[0] == "acks"]
        self.assertEqual([len(a) for a in acks], [1024, 1024, 452])
        self.assertEqual([i for a in acks for i in a], ids)

    def test_not_established(self) -> None:
        """When sending before the handshake completes, then NotEstablished and nothing sent."""
        pair = Pair()
        pair.alice.session.connection_made(CHANNEL_BINDING)
        sent = list(pair.alice.sent)
        self.assertRaises(NotEstablished, pair.alice.session.send_message, ID1, b"x", 1)
        self.assertRaises(NotEstablished, pair.alice.session.send_ack, [ID1])
        self.assertRaises(NotEstablished, pair.alice.session.send_read, [ID1])
        self.assertEqual(pair.alice.sent, sent)

    def test_send_from_callbacks(self) -> None:
        """When an observer sends from session_established and message_received, then it works."""
        pair = Pair()
        pair.alice.observer.on_established = lambda s: s.send_message(ID1, b"queued", 7)
        pair.bob.observer.on_message = lambda s, message_id: s.send_ack([message_id])
        pair.established()
        pair.pump()
        self.assertIn(("message", ID1, b"queued", 7), pair.bob.observer.events)
        self.assertIn(("acks", (ID1,)), pair.alice.observer.events)

    def test_stats(self) -> None:
        """When traffic flows, then each side's bytes and records out equal the other's in."""
        pair = Pair()
        pair.established()
        pair.alice.session.send_message(ID1, b"abc", 1)
        pair.bob.session.send_ack([ID1])
        pair.pump()
        alice, bob = pair.alice.session.stats, pair.bob.session.stats
        self.assertEqual((alice.bytes_out, alice.records_out), (bob.bytes_in, bob.records_in))
        self.assertEqual((bob.bytes_out, bob.records_out), (alice.bytes_in, alice.records_in))
        self.assertEqual((alice.records_out, bob.records_out), (2, 2))
        self.assertEqual(alice.bytes_out, sum(map(len, pair.alice.sent)))


class KeepaliveTests(SynchronousTestCase):
    """Established sessions ping each other and answer pings."""

    def test_ping_pong(self) -> None:
        """When the keepalive interval passes, then each side pings and the other pongs."""
        pair = Pair()
        pair.established()
        pair.clock.advance(30)
        pair.pump()
        alice_records = pair.alice.sent_records()
        pings = [r for r in alice_records if isinstance(r, Ping)]
        pongs = [r for r in pair.bob.sent_records() if isinstance(r, Pong)]
        self.assertEqual(len(pings), 1)
        self.assertIn(Pong(pings[0].nonce), pongs)

    def test_pings_keep_it_alive(self) -> None:
        """When ten minutes pass with only keepalives, then the session stays established."""
        pair = Pair()
        pair.established()
        for _ in range(20):
            pair.clock.advance(30)
            pair.pump()
        self.assertEqual(pair.alice.session.state, "established")
        self.assertEqual(pair.bob.session.state, "established")
        pings = [r for r in pair.alice.sent_records() if isinstance(r, Ping)]
        self.assertEqual(len(pings), 20)
        self.assertEqual(len({p.nonce for p in pings}), 20)


class IdleTimeoutTests(SynchronousTestCase):
    """An established session closes when nothing arrives for the idle timeout."""

    def test_silent_peer(self) -> None:
        """When Bob goes silent after the handshake, then Alice closes at 90 s, not before."""
        pair = Pair()
        pair.established()
        pair.bob.muted = True
        pair.clock.advance(89)
        pair.pump()
        self.assertEqual(pair.alice.session.state, "established")
        pair.clock.advance(1)
        self.assertEqual(pair.alice.observer.closed(), ["idle timeout"])
        self.assertTrue(pair.alice.lost)
        self.assertIn(Goodbye("idle timeout"), pair.alice.sent_records())

    def test_data_resets(self) -> None:
        """When data arrives at 80 s, then the idle timeout counts again from there."""
        pair = Pair(keepalive_interval=1000.0)
        pair.established()
        pair.clock.advance(80)
        pair.bob.session.send_ack([ID1])
        pair.pump()
        pair.clock.advance(89)
        self.assertEqual(pair.alice.session.state, "established")
        pair.clock.advance(1)
        self.assertEqual(pair.alice.observer.closed(), ["idle timeout"])


class HandshakeTimeoutTests(SynchronousTestCase):
    """A peer that does not complete the handshake in time is dropped (slowloris defence)."""

    def test_silent_peer(self) -> None:
        """When the peer never sends anything, then the session closes at 10 s."""
        pair = Pair()
        pair.alice.session.connection_made(CHANNEL_BINDING)
        pair.clock.advance(9.9)
        self.assertEqual(pair.alice.session.state, "handshaking")
        pair.clock.advance(0.1)
        self.assertEqual(pair.alice.observer.closed(), ["handshake timeout"])
        self.assertTrue(pair.alice.lost)
        self.assertEqual(pair.bob.observer.closed(), ["handshake timeout"])
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_trickling_peer(self) -> None:
        """When the peer trickles its Hello one byte per second, then it is dropped at 10 s."""
        pair = Pair()
        pair.bob.session.connection_made(CHANNEL_BINDING)
        pair.alice.session.connection_made(CHANNEL_BINDING)
        stream = b"".join(pair.bob.outgoing)
        for index in range(10):
            pair.alice.session.data_received(stream[index : index + 1])
            pair.clock.advance(1)
        self.assertEqual(pair.alice.observer.closed(), ["handshake timeout"])

    def test_tls_never_up(self) -> None:
        """When connection_made never comes, then the session closes at 10 s sending nothing."""
        pair = Pair()
        pair.clock.advance(10)
        self.assertEqual(pair.alice.observer.closed(), ["handshake timeout"])
        self.assertEqual(pair.alice.sent, [])
        self.assertTrue(pair.alice.lost)


class RefusalTests(SynchronousTestCase):
    """Bad input closes the session with a reason, reported once."""

    def assertRefused(self, pair: Pair, reason: str) -> None:
        self.assertEqual(pair.alice.observer.closed(), [reason])
        self.assertEqual(pair.alice.session.close_reason, reason)
        self.assertTrue(pair.alice.lost)
        self.assertNotIn("established", pair.alice.observer.kinds())

    def test_wrong_key(self) -> None:
        """When Bob signs with a key other than the pinned one, then Alice refuses his Hello."""
        _, other_public, _ = make_identity()
        pair = Pair(alice={"peer_public_key": other_public})
        pair.connect()
        self.assertRefused(pair, "bad hello signature")

    def test_wrong_uid(self) -> None:
        """When Bob's Hello names a uid other than the pinned one, then Alice refuses it."""
        _, _, other_uid = make_identity()
        pair = Pair(alice={"peer_uid": other_uid})
        pair.connect()
        self.assertRefused(pair, "hello from an unexpected uid")

    def test_other_connection(self) -> None:
        """When the channel bindings differ (a Hello replayed from another connection),
        then the signatures do not verify."""
        pair = Pair()
        pair.connect(bob_binding=b"\x00" * 32)
        self.assertRefused(pair, "bad hello signature")
        self.assertEqual(pair.bob.observer.closed(), ["bad hello signature"])

    def test_reflected_hello(self) -> None:
        """When Alice's own Hello is reflected back to her, then she refuses it."""
        pair = Pair()
        alice = pair.alice.session
        alice.connection_made(CHANNEL_BINDING)
        alice.data_received(pair.alice.sent[0])
        self.assertIn(alice.close_reason, ("hello from an unexpected uid", "bad hello signature"))

    def test_garbage(self) -> None:
        """When the peer sends garbage instead of the prologue, then "bad prologue"."""
        pair = Pair()
        pair.alice.session.connection_made(CHANNEL_BINDING)
        pair.alice.session.data_received(b"GET / HTTP/1.1\r\n")
        self.assertRefused(pair, "bad prologue")
        self.assertIn(Goodbye("bad prologue"), pair.alice.sent_records())

    def test_oversized_before_hello(self) -> None:
        """When a frame header above 4 KiB arrives before the Hello, then it is refused."""
        pair = Pair()
        pair.alice.session.connection_made(CHANNEL_BINDING)
        pair.alice.session.data_received(PROLOGUE + (HANDSHAKE_MAX_FRAME + 1).to_bytes(4, "big"))
        self.assertRefused(pair, "frame too large (4097 bytes, maximum 4096)")

    def test_oversized_when_established(self) -> None:
        """When an established peer announces a frame above 96 KiB, then it is refused."""
        pair = Pair()
        pair.established()
        pair.alice.session.data_received((MAX_FRAME + 1).to_bytes(4, "big"))
        self.assertEqual(
            pair.alice.observer.closed(), ["frame too large (98305 bytes, maximum 98304)"]
        )

    def test_malformed(self) -> None:
        """When a known record does not parse, then "malformed record: ..." is reported."""
        pair = Pair()
        pair.alice.session.connection_made(CHANNEL_BINDING)
        pair.alice.session.data_received(PROLOGUE + encode_frame(b"\x05\x00"))
        self.assertRefused(pair, "malformed record: ping: truncated nonce")

    def test_record_before_hello(self) -> None:
        """When a Ping or Message arrives before the Hello, then "record before hello"."""
        for record in (Ping(b"\x00" * 8), Message(ID1, 1, 1, b"x" * 80)):
            pair = Pair()
            pair.alice.session.connection_made(CHANNEL_BINDING)
            pair.alice.session.data_received(PROLOGUE + frame(record))
            self.assertRefused(pair, "record before hello")

    def test_too_much_early_data(self) -> None:
        """When more than the early limit arrives before connection_made, then it is refused."""
        pair = Pair()
        chunk = PROLOGUE + frame(Ping(b"\x00" * 8)) * (EARLY_DATA_LIMIT // 13 + 1)
        pair.alice.session.data_received(chunk)
        self.assertRefused(pair, "too much data before the connection was made")
        self.assertEqual(pair.alice.sent, [])

    def test_second_hello(self) -> None:
        """When a Hello arrives on an established session, then it is refused."""
        pair = Pair()
        pair.established()
        bob_hello = pair.bob.sent[0][len(PROLOGUE) :]
        pair.alice.session.data_received(bob_hello)
        self.assertEqual(pair.alice.observer.closed(), ["unexpected second hello"])

    def test_tampered_message(self) -> None:
        """When a sealed body is altered on the way, then the receiver closes."""
        pair = Pair()
        pair.established()
        pair.alice.session.send_message(ID1, b"hello", 1)
        altered = bytearray(pair.alice.outgoing.pop())
        altered[-1] ^= 0x80
        pair.bob.session.data_received(bytes(altered))
        self.assertEqual(
            pair.bob.observer.closed(), ["message failed to open (a layer failed to authenticate)"]
        )
        self.assertNotIn("message", pair.bob.observer.kinds())

    def test_replayed_message(self) -> None:
        """When a Message frame is delivered twice, then the replay closes the session."""
        pair = Pair()
        pair.established()
        pair.alice.session.send_message(ID1, b"hello", 1)
        data = pair.alice.outgoing[-1]
        pair.pump()
        pair.bob.session.data_received(data)
        self.assertEqual(
            pair.bob.observer.closed(), ["message failed to open (replayed or reordered message)"]
        )
        self.assertEqual(pair.bob.observer.kinds().count("message"), 1)

    def test_unknown_record_ignored(self) -> None:
        """When an unknown record type arrives, then it is counted and ignored."""
        pair = Pair()
        pair.established()
        before = pair.alice.session.stats.records_in
        pair.alice.session.data_received(encode_frame(b"\x42whatever"))
        self.assertEqual(pair.alice.session.state, "established")
        self.assertEqual(pair.alice.session.stats.records_in, before + 1)

    def test_peer_goodbye(self) -> None:
        """When the peer says goodbye, then its reason is reported, control characters masked."""
        pair = Pair()
        pair.established()
        pair.alice.session.data_received(frame(Goodbye("going\naway")))
        self.assertEqual(pair.alice.observer.closed(), ["peer said goodbye: going?away"])
        self.assertNotIn(Goodbye, [type(r) for r in pair.alice.sent_records()])


class CloseTests(SynchronousTestCase):
    """Closing sends Goodbye, drops the connection, reports once and stops every timer."""

    def test_close_established(self) -> None:
        """When Alice closes, then Bob hears her reason and both end closed with no timers."""
        pair = Pair()
        pair.established()
        pair.alice.session.close("user quit")
        self.assertEqual(pair.alice.session.state, "closing")
        pair.pump()
        self.assertEqual(pair.alice.observer.closed(), ["user quit"])
        self.assertEqual(pair.bob.observer.closed(), ["peer said goodbye: user quit"])
        self.assertEqual((pair.alice.session.state, pair.bob.session.state), ("closed", "closed"))
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_close_connecting(self) -> None:
        """When closed before the connection is made, then nothing is sent and timers stop."""
        pair = Pair()
        pair.alice.session.close("shutting down")
        self.assertEqual(pair.alice.sent, [])
        self.assertTrue(pair.alice.lost)
        self.assertEqual(pair.alice.observer.closed(), ["shutting down"])
        pair.bob.session.close("shutting down")
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_connection_lost(self) -> None:
        """When the transport goes away mid-handshake, then its reason is reported."""
        pair = Pair()
        pair.alice.session.connection_made(CHANNEL_BINDING)
        pair.alice.session.connection_lost("connection refused")
        self.assertEqual(pair.alice.session.state, "closed")
        self.assertEqual(pair.alice.observer.closed(), ["connection refused"])
        self.assertFalse(pair.alice.lost)

    def test_close_from_callback(self) -> None:
        """When an observer closes from message_received, then later frames are ignored."""
        pair = Pair()
        pair.bob.observer.on_message = lambda s, message_id: s.close("enough")
        pair.established()
        pair.alice.session.send_message(ID1, b"one", 1)
        pair.alice.session.send_message(ID2, b"two", 2)
        pair.pump()
        self.assertEqual(pair.bob.observer.kinds(), ["established", "message", "closed"])
        self.assertEqual(pair.bob.observer.closed(), ["enough"])


class LateInputTests(SynchronousTestCase):
    """Every input after the close is ignored, and session_closed fires once."""

    def test_everything_after_close(self) -> None:
        """When any input arrives after closing and after closed, then nothing happens."""
        pair = Pair()
        pair.established()
        pair.alice.session.close("bye")
        session, observer = pair.alice.session, pair.alice.observer
        for _ in ("closing", "closed"):
            stats = session.stats
            session.data_received(frame(Ping(b"\x00" * 8)))
            session.data_received(b"garbage")
            session.connection_made(CHANNEL_BINDING)
            session.close("again")
            pair.clock.advance(1000)
            self.assertRaises(NotEstablished, session.send_message, ID1, b"x", 1)
            self.assertRaises(NotEstablished, session.send_ack, [ID1])
            self.assertRaises(NotEstablished, session.send_read, [ID1])
            self.assertEqual(session.stats, stats)
            session.connection_lost("late")
        self.assertEqual(session.state, "closed")
        self.assertEqual(observer.closed(), ["bye"])

    def test_every_input_in_every_state(self) -> None:
        """When each machine input is given in each state, then no state lacks a transition."""
        hello = Hello(1, 1, "a", b"\x00" * 32, b"\x00" * 64)
        to_responder, to_initiator = derive_session_keys(
            b"\x01" * 32,
            initiator_uid="a",
            responder_uid="b",
            initiator_ephemeral=b"\x02" * 32,
            responder_ephemeral=b"\x03" * 32,
            channel_binding=CHANNEL_BINDING,
        )
        late_keys = SessionKeys(
            CascadeSealer(to_responder, "a", "b"), CascadeOpener(to_initiator, "b", "a"), 1
        )
        inputs: list[tuple[str, tuple[object, ...]]] = [
            ("connection_made", (CHANNEL_BINDING,)),
            ("hello_received", (hello,)),
            ("hello_accepted", (late_keys,)),
            ("message_received", (Message(ID1, 1, 1, b"x" * 80),)),
            ("ack_received", (parse_record(b"\x03\x00\x00"),)),
            ("read_received", (parse_record(b"\x04\x00\x00"),)),
            ("ping_received", (Ping(b"\x00" * 8),)),
            ("pong_received", (Pong(b"\x00" * 8),)),
            ("goodbye_received", (Goodbye("x"),)),
            ("protocol_failed", ("x",)),
            ("close", ("x",)),
            ("connection_lost", ("x",)),
            ("handshake_timed_out", ()),
            ("idle_timed_out", ()),
            ("keepalive_due", ()),
        ]

        def in_state(state: str) -> Pair:
            pair = Pair()
            if state in ("handshaking", "established", "closing", "closed"):
                pair.alice.session.connection_made(CHANNEL_BINDING)
            if state in ("established", "closing", "closed"):
                pair.bob.session.connection_made(CHANNEL_BINDING)
                pair.alice.session.data_received(b"".join(pair.bob.outgoing))
            if state in ("closing", "closed"):
                pair.alice.session.close("done")
            if state == "closed":
                pair.alice.session.connection_lost("gone")
            self.assertEqual(pair.alice.session.state, state)
            return pair

        for state in ("connecting", "handshaking", "established", "closing", "closed"):
            for name, args in inputs:
                pair = in_state(state)
                getattr(pair.alice.session._machine, name)(*args)
                self.assertLessEqual(len(pair.alice.observer.closed()), 1, (state, name))


class LoggingTests(SynchronousTestCase):
    """Logs carry uids and reasons, never bodies or keys."""

    def test_no_secrets_logged(self) -> None:
        """When a session exchanges a message and closes, then no body or key bytes are logged."""
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        pair = Pair()
        pair.established()
        pair.alice.session.send_message(ID1, b"very private words", 1)
        pair.pump()
        pair.alice.session.close("done")
        pair.pump()
        text = "\n".join(formatEvent(e) + repr(sorted(e.items(), key=str)) for e in events)
        self.assertNotIn("very private words", text)
        self.assertNotIn(repr(b"very private words"), text)
        closes = [e for e in events if e.get("reason") == "done"]
        # uids are logged as pseudonyms (docs/security.md, "Logs")
        self.assertEqual([e["peer_uid"] for e in closes], [log_id(pair.bob_uid)])


class ResumeTests(SynchronousTestCase):
    """The Resume record: a side's stored mark, sent before its Hello, kept by the peer."""

    def test_mark_sent_before_hello_and_kept_by_the_peer(self) -> None:
        """When Alice has a mark for Bob, then her Resume goes right before her Hello and Bob's
        session holds it once established; Bob, with no mark, sends none."""
        asked: list[str] = []

        def mark(uid: str) -> bytes | None:
            asked.append(uid)
            return ID2

        pair = Pair(alice={"resume_mark": mark}, bob={"resume_mark": lambda uid: None})
        pair.established()
        self.assertEqual(asked, [pair.bob_uid])
        alice_records = pair.alice.sent_records()
        self.assertEqual(alice_records[0], Resume(ID2))
        self.assertIsInstance(alice_records[1], Hello)
        self.assertNotIn(Resume, [type(r) for r in pair.bob.sent_records()])
        self.assertEqual(pair.bob.session.peer_resume_mark, ID2)
        self.assertIsNone(pair.alice.session.peer_resume_mark)

    def test_resume_after_hello_changes_nothing(self) -> None:
        """When a Resume arrives on an established session, then it is ignored: the session
        stays up and the mark stays unset."""
        pair = Pair()
        pair.established()
        pair.bob.session.data_received(frame(Resume(ID3)))
        self.assertEqual(pair.bob.session.state, "established")
        self.assertIsNone(pair.bob.session.peer_resume_mark)

    def test_unknown_to_a_version_1_peer(self) -> None:
        """When the record before the Hello is one the peer does not know (as type 8 is to a
        version 1 peer, which parses it as UnknownRecord), then it is ignored and the Hello
        after it is accepted: sending Resume keeps old peers working."""
        pair = Pair(alice={"resume_mark": lambda uid: ID1})
        pair.alice.session.connection_made(CHANNEL_BINDING)
        pair.bob.session.connection_made(CHANNEL_BINDING)
        known = PROLOGUE + frame(Resume(ID1))
        stream = pair.alice.outgoing.pop(0)
        self.assertTrue(stream.startswith(known))
        unknown = PROLOGUE + encode_frame(b"\x0a" + ID1)  # what an old parser makes of it
        pair.alice.outgoing.insert(0, unknown + stream[len(known) :])
        pair.pump()
        self.assertEqual(pair.bob.session.state, "established")
        self.assertEqual(pair.alice.session.state, "established")
        self.assertIsNone(pair.bob.session.peer_resume_mark)


class MailboxAddressTests(SynchronousTestCase):
    """The MailboxAddress record: handed to ``on_mailbox_address`` on an established session."""

    def test_address_reaches_the_handler(self) -> None:
        """When Alice sends her mailbox address on an established session, then Bob's handler
        gets it, and the session stays up."""
        pair = Pair()
        pair.established()
        got: list[object] = []
        pair.bob.session.on_mailbox_address = lambda session, record: got.append(record)
        address = MailboxAddress("jarvis-mailbox:x@h:1", bytes(24), bytes(32), bytes(112))
        pair.alice.session.send_mailbox_address(address)
        pair.pump()
        self.assertEqual(got, [address])
        self.assertEqual(pair.bob.session.state, "established")

    def test_unknown_to_an_old_peer(self) -> None:
        """When a peer without a handler (an old peer ignores type 9) gets the record, then
        nothing happens and the session stays up."""
        pair = Pair()
        pair.established()
        pair.alice.session.send_mailbox_address(MailboxAddress(""))
        pair.pump()
        self.assertEqual(pair.bob.session.state, "established")


class WritingPauseTests(SynchronousTestCase):
    """pause_writing / resume_writing, driven by the net layer's producer."""

    def test_resume_tells_the_observer_once(self) -> None:
        """When the transport pauses then resumes, then writing_paused follows and the observer
        hears session_writable once (not for a resume without a pause)."""
        pair = Pair()
        pair.established()
        writable: list[PeerSession] = []
        pair.alice.observer.session_writable = writable.append  # type: ignore[attr-defined]
        session = pair.alice.session
        session.resume_writing()
        self.assertEqual(writable, [])
        session.pause_writing()
        self.assertTrue(session.writing_paused)
        session.resume_writing()
        self.assertFalse(session.writing_paused)
        self.assertEqual(writable, [session])


class StateDataTests(SynchronousTestCase):
    """Each state carries its own data; the fast path runs the table's own transitions."""

    def test_fast_path_runs_the_tables_transitions(self) -> None:
        """When a data record arrives established, then the fast path calls the very function
        the machine table registers for its input, and that input only loops there."""
        automaton = session_module._SessionMachine.__automat_automaton__
        inputs = {
            Message: "message_received",
            Ack: "ack_received",
            Read: "read_received",
            Ping: "ping_received",
            Pong: "pong_received",
        }
        self.assertEqual(set(session_module._ESTABLISHED_DATA), set(inputs))
        for record_type, input_name in inputs.items():
            new_state, outputs = automaton.outputForInput(session_module.established, input_name)
            self.assertIs(new_state, session_module.established)
            methods = [getattr(output, "method", None) for output in outputs]
            self.assertEqual(methods, [session_module._ESTABLISHED_DATA[record_type]])

    def test_keys_live_only_in_established(self) -> None:
        """When a session is established and then closes, then the keys and timers were held
        by the established state's data only, and the closing state holds none of them."""
        pair = Pair()
        pair.alice.session.connection_made(CHANNEL_BINDING)
        self.assertFalse(hasattr(pair.alice.session._data, "sealer"))
        pair.established()
        established = pair.alice.session._data
        self.assertIsInstance(established, session_module.Established)
        assert isinstance(established, session_module.Established)
        self.assertTrue(established.keepalive.running)
        pair.alice.session.close("done")
        self.assertEqual(pair.alice.session.state, "closing")
        self.assertFalse(hasattr(pair.alice.session._data, "sealer"))
        self.assertFalse(established.keepalive.running)
        self.assertFalse(established.idle_call.active())
        pair.bob.session.close("done")
        self.assertEqual(pair.clock.getDelayedCalls(), [])
