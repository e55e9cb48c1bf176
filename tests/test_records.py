"""Tests for :mod:`jarvis.protocol.records`: layouts, round trips, malformed and unknown records."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.protocol.records import (
    MAX_IDS_PER_RECORD,
    Ack,
    Goodbye,
    Hello,
    MailboxAddress,
    MalformedRecord,
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

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

UID_ALICE = "ubiig7mfa4cyfthxhffqtceeptbrfs4iewnyssez63zdttyxsgsq"
EPHEMERAL_ALICE_HEX = "79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a"
#: Alice's Hello to Bob (docs/protocol.md, "Hello"); the signature is checked in test_session.
HELLO_HEX = (
    "0100010001"
    "0034"
    "7562696967376d6661346379667468786866667174636565707462726673346965776e79737365"
    "7a36337a6474747978736773"
    "71"
    "79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a"
    "0e967de38f8f53abe9433bdbb4e1c4902073be3c9e80bdf4b161935ecdad061e"
    "80a10044d17f3c5bd8e62e968055ffdcaff38c31663b0be6e0c30e44960d6a00"
)
#: An Ack of ids 00..0f and 10..1f, unframed (docs/protocol.md, "Ack").
ACK_HEX = "030002000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#: A Resume naming message 00..0f (docs/protocol.md, "Resume").
RESUME_HEX = "08000102030405060708090a0b0c0d0e0f"
#: A Goodbye with reason "bye".
GOODBYE_HEX = "070003627965"
#: A Message: id 00..0f, counter 1, created 1700000000000 ms, body "hello" sealed (see
#: test_cascade's vector).
MESSAGE_HEX = (
    "02000102030405060708090a0b0c0d0e0f"
    "0000000000000001"
    "0000018bcfe56800"
    "00000055"
    "c5c3521dfa347899a9af275e2924fe9dd17e8b93419ed31cad992c4d3743846e9cc02eeb4d9e8559"
    "4a7364478adbcc53302f7fc4dacca06eb341ba546da9101e65544a1a7766b4613e56c0f201b1fd08"
    "e5c3f618d6"
)

uids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=1, max_size=64)
ids = st.binary(min_size=16, max_size=16)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
versions = st.tuples(
    st.integers(min_value=0, max_value=0xFFFF), st.integers(min_value=0, max_value=0xFFFF)
).map(sorted)
records: st.SearchStrategy[Record] = st.one_of(
    st.builds(
        lambda v, uid, key, sig: Hello(v[0], v[1], uid, key, sig),
        versions,
        uids,
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=64, max_size=64),
    ),
    st.builds(Message, ids, u64, u64, st.binary(max_size=2000)),
    st.builds(Ack, st.lists(ids, max_size=20).map(tuple)),
    st.builds(Read, st.lists(ids, max_size=20).map(tuple)),
    st.builds(Ping, st.binary(min_size=8, max_size=8)),
    st.builds(Pong, st.binary(min_size=8, max_size=8)),
    st.builds(Goodbye, st.text(max_size=100)),
    st.builds(Resume, ids),
)


def doc_hex() -> str:
    """Return every hex digit of docs/protocol.md's code blocks, whitespace removed."""
    blocks = re.findall(r"```hex\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return "".join("".join(block.split()) for block in blocks)


class RoundTripTests(SynchronousTestCase):
    """Every record parses back to itself."""

    @settings(max_examples=150, deadline=None)
    @given(record=records)
    def test_round_trip(self, record: Record) -> None:
        """When any valid record is encoded and parsed, then the same value comes back."""
        self.assertEqual(parse_record(encode_record(record)), record)

    @settings(max_examples=60, deadline=None)
    @given(record=records)
    def test_deterministic(self, record: Record) -> None:
        """When a parsed record is encoded again, then the bytes are identical."""
        payload = encode_record(record)
        self.assertEqual(encode_record(parse_record(payload)), payload)  # type: ignore[arg-type]

    def test_list_becomes_tuple(self) -> None:
        """When an Ack is built from a list, then it holds a tuple and compares equal."""
        self.assertEqual(Ack([b"a" * 16]), Ack((b"a" * 16,)))  # type: ignore[arg-type]


class VectorTests(SynchronousTestCase):
    """The byte layouts documented in docs/protocol.md."""

    def test_hello(self) -> None:
        """When the documented Hello is parsed, then its fields are Alice's and it re-encodes."""
        hello = parse_record(bytes.fromhex(HELLO_HEX))
        assert isinstance(hello, Hello)
        self.assertEqual((hello.min_version, hello.max_version), (1, 1))
        self.assertEqual(hello.uid, UID_ALICE)
        self.assertEqual(hello.ephemeral_key.hex(), EPHEMERAL_ALICE_HEX)
        self.assertEqual(encode_record(hello).hex(), HELLO_HEX)

    def test_ack(self) -> None:
        """When an Ack of two ids is encoded, then it matches the documented bytes."""
        ack = Ack((bytes(range(16)), bytes(range(16, 32))))
        self.assertEqual(encode_record(ack).hex(), ACK_HEX)

    def test_goodbye(self) -> None:
        """When Goodbye("bye") is encoded, then it is type 7, length 3, then UTF-8."""
        self.assertEqual(encode_record(Goodbye("bye")).hex(), GOODBYE_HEX)

    def test_message(self) -> None:
        """When the documented Message is parsed, then id, counter, time and body are right."""
        message = parse_record(bytes.fromhex(MESSAGE_HEX))
        assert isinstance(message, Message)
        self.assertEqual(message.message_id, bytes(range(16)))
        self.assertEqual((message.counter, message.created), (1, 1700000000000))
        self.assertEqual(len(message.body), 5 + 80)

    def test_resume(self) -> None:
        """When a Resume is encoded, then it is type 8 and the 16-byte id, and parses back."""
        resume = Resume(bytes(range(16)))
        self.assertEqual(encode_record(resume).hex(), RESUME_HEX)
        self.assertEqual(parse_record(bytes.fromhex(RESUME_HEX)), resume)

    def test_documented(self) -> None:
        """When docs/protocol.md is read, then it shows each of these vectors verbatim."""
        shown = doc_hex()
        for vector in (HELLO_HEX, ACK_HEX, GOODBYE_HEX, MESSAGE_HEX, RESUME_HEX):
            self.assertIn(vector, shown)


class MalformedTests(SynchronousTestCase):
    """Known record types that do not parse exactly raise MalformedRecord with a reason."""

    def assertMalformed(self, payload: bytes, reason: str) -> None:
        with self.assertRaises(MalformedRecord) as caught:
            parse_record(payload)
        self.assertIn(reason, caught.exception.reason)

    def test_empty(self) -> None:
        """When the payload is empty, then it is malformed."""
        self.assertMalformed(b"", "empty")

    def test_every_truncation(self) -> None:
        """When any known record is cut short anywhere, then it is malformed, never misparsed."""
        for hex_payload in (
            HELLO_HEX,
            ACK_HEX,
            GOODBYE_HEX,
            MESSAGE_HEX,
            RESUME_HEX,
            "050001020304050607",
        ):
            payload = bytes.fromhex(hex_payload)
            for end in range(1, len(payload)):
                self.assertRaises(MalformedRecord, parse_record, payload[:end])

    def test_trailing_bytes(self) -> None:
        """When a record is followed by extra bytes, then it is malformed."""
        self.assertMalformed(bytes.fromhex(ACK_HEX) + b"\x00", "trailing")
        # a Message's body length is checked against the payload both ways
        self.assertMalformed(bytes.fromhex(MESSAGE_HEX) + b"\x00", "trailing")
        self.assertMalformed(bytes.fromhex(MESSAGE_HEX)[:-1], "truncated body")

    def test_bad_uid(self) -> None:
        """When a Hello's uid has upper-case letters, then it is malformed."""
        payload = bytearray(bytes.fromhex(HELLO_HEX))
        payload[7] = ord("U")
        self.assertMalformed(bytes(payload), "uid")

    def test_uid_too_long(self) -> None:
        """When a Hello announces a 65-character uid, then it is malformed."""
        self.assertMalformed(bytes.fromhex("01000100010041") + b"a" * 65, "uid too long")

    def test_versions_inverted(self) -> None:
        """When a Hello's min_version exceeds its max_version, then it is malformed."""
        payload = bytearray(bytes.fromhex(HELLO_HEX))
        payload[1:5] = bytes.fromhex("00020001")
        self.assertMalformed(bytes(payload), "min_version")

    def test_reason_not_utf8(self) -> None:
        """When a Goodbye reason is not UTF-8, then it is malformed."""
        self.assertMalformed(bytes.fromhex("070002ffff"), "UTF-8")

    def test_too_many_ids(self) -> None:
        """When an Ack announces more ids than allowed, then it is malformed."""
        count = (MAX_IDS_PER_RECORD + 1).to_bytes(2, "big")
        self.assertMalformed(b"\x03" + count + b"\x00" * 16 * (MAX_IDS_PER_RECORD + 1), "ids")


class UnknownTests(SynchronousTestCase):
    """Record types this version does not know parse to UnknownRecord."""

    def test_unknown_types(self) -> None:
        """When the type byte is 0, 10 or 255, then UnknownRecord carries it, whatever follows."""
        for record_type in (0x00, 0x0A, 0xFF):
            self.assertEqual(
                parse_record(bytes([record_type]) + b"anything"), UnknownRecord(record_type)
            )


class EncodeValidationTests(SynchronousTestCase):
    """encode_record refuses values that have no valid encoding."""

    def test_invalid_values(self) -> None:
        """When a field has the wrong size or range, then ValueError is raised."""
        bad: list[Record] = [
            Ping(b"short"),
            Pong(b"x" * 9),
            Ack((b"x" * 15,)),
            Read(tuple([b"x" * 16] * (MAX_IDS_PER_RECORD + 1))),
            Message(b"x" * 16, -1, 0, b""),
            Message(b"x" * 16, 0, 2**64, b""),
            Hello(1, 1, "Alice", b"k" * 32, b"s" * 64),
            Hello(2, 1, "alice", b"k" * 32, b"s" * 64),
            Hello(1, 1, "alice", b"k" * 31, b"s" * 64),
            Goodbye("x" * 513),
        ]
        for record in bad:
            self.assertRaises(ValueError, encode_record, record)

    def test_not_a_record(self) -> None:
        """When something that is not a record is encoded, then TypeError is raised."""
        self.assertRaises(TypeError, encode_record, "ping")  # type: ignore[arg-type]


class MailboxAddressTests(SynchronousTestCase):
    """The MailboxAddress record (type 9): where to deposit for its sender."""

    def test_round_trip_and_layout(self) -> None:
        """When a MailboxAddress is encoded, then it is type 9, a u16-prefixed link and the
        fixed fields, and parses back; an empty link (dropped) is type 9 and a zero length."""
        address = MailboxAddress("jarvis-mailbox:x@h:1", bytes(24), bytes([1]) * 32, bytes(112))
        data = encode_record(address)
        self.assertEqual(data[:3], bytes([9, 0, 20]))
        self.assertEqual(len(data), 1 + 2 + 20 + 24 + 32 + 112)
        self.assertEqual(parse_record(data), address)
        self.assertEqual(encode_record(MailboxAddress("")), bytes([9, 0, 0]))
        self.assertEqual(parse_record(bytes([9, 0, 0])), MailboxAddress(""))

    def test_truncated_refused(self) -> None:
        """When a MailboxAddress lacks its prekey's last byte, then it is malformed."""
        data = encode_record(MailboxAddress("l", bytes(24), bytes(32), bytes(112)))
        with self.assertRaises(MalformedRecord):
            parse_record(data[:-1])
