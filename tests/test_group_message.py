"""Tests for :mod:`jarvis.protocol.group_message`: layout, round trips, signatures, summaries."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.errors import BadSignature
from jarvis.crypto.identity import IdentityKey
from jarvis.protocol.group_message import (
    MAX_BODY_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_PARENTS,
    NO_HASH,
    GroupMessage,
    MalformedGroupMessage,
    Parent,
    Summary,
    encode_message,
    encode_summary,
    is_fork_proof,
    message_hash,
    message_id,
    parse_message,
    parse_summary,
    verify_message,
    write_message,
)

ALICE = IdentityKey.from_private_bytes(bytes(range(0x00, 0x20)))
BOB = IdentityKey.from_private_bytes(bytes(range(0x20, 0x40)))
GROUP_ID = bytes(range(0x80, 0x90))
DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

#: Alice's first message "hi" in "Family" under state version 1, at 1700000000000 ms, naming
#: Bob's message 1 (hash 32 bytes of 0xbb) as its parent (docs/protocol.md, "Groups").
MESSAGE_HEX = (
    "01808182838485868788898a8b8c8d8e8f"
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    "0000000000000001"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000001"
    "0000018bcfe56800"
    "01"
    "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7"
    "0000000000000001"
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    "00000002"
    "6869"
)
#: Alice's signature of it.
MESSAGE_SIGNATURE_HEX = (
    "4e5882e5ff9db65d9055752e396849373027f7b76fbb510bc9cc4c943d8411c9"
    "69db4cd1269322e2dc85d0f7e8e517837e2ce847a60230506fe9140bc2b50a0d"
)


def make_first() -> GroupMessage:
    """Return the vector message."""
    return write_message(
        ALICE,
        GROUP_ID,
        seq=1,
        prev_hash=NO_HASH,
        state_version=1,
        created=1_700_000_000_000,
        parents=[Parent(BOB.public_bytes, 1, b"\xbb" * 32)],
        body=b"hi",
    )


class LayoutTests(SynchronousTestCase):
    """The byte layout and its vector."""

    def test_documented(self) -> None:
        """When docs/protocol.md is read, then its "Groups" section shows the vector verbatim."""
        blocks = re.findall(r"```hex\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
        shown = "".join("".join(block.split()) for block in blocks)
        self.assertIn(MESSAGE_HEX + MESSAGE_SIGNATURE_HEX, shown)

    def test_vector(self) -> None:
        """When Alice writes the vector's message, then its bytes are the vector's."""
        message = make_first()
        data = encode_message(message)
        self.assertEqual(data.hex(), MESSAGE_HEX + MESSAGE_SIGNATURE_HEX)
        self.assertEqual(parse_message(data), message)
        self.assertEqual(message_id(message), message_hash(message)[:16])
        verify_message(message)

    def test_malformed(self) -> None:
        """When the bytes are truncated, extended or of another format, then parsing raises."""
        data = encode_message(make_first())
        for cut in range(len(data)):
            self.assertRaises(MalformedGroupMessage, parse_message, data[:cut])
        self.assertRaises(MalformedGroupMessage, parse_message, data + b"\x00")
        self.assertRaises(MalformedGroupMessage, parse_message, b"\x02" + data[1:])
        self.assertRaises(MalformedGroupMessage, parse_message, bytes(MAX_MESSAGE_BYTES + 1))

    def test_invalid_values(self) -> None:
        """When a message names itself as parent, has seq 1 with a previous hash, too many
        parents or too large a body, then writing it raises."""
        self.assertRaises(
            ValueError,
            write_message,
            ALICE,
            GROUP_ID,
            seq=1,
            prev_hash=NO_HASH,
            state_version=1,
            created=0,
            parents=[Parent(ALICE.public_bytes, 1, bytes(32))],
            body=b"",
        )
        kwargs = {"state_version": 1, "created": 0, "body": b""}
        self.assertRaises(
            ValueError, write_message, ALICE, GROUP_ID, seq=1, prev_hash=b"\x01" * 32, **kwargs
        )
        self.assertRaises(
            ValueError, write_message, ALICE, GROUP_ID, seq=2, prev_hash=NO_HASH, **kwargs
        )
        many = [Parent(bytes([i]) * 32, 1, bytes(32)) for i in range(MAX_PARENTS + 1)]
        self.assertRaises(
            ValueError,
            write_message,
            BOB,
            GROUP_ID,
            seq=1,
            prev_hash=NO_HASH,
            state_version=1,
            created=0,
            parents=many,
            body=b"",
        )
        self.assertRaises(
            ValueError,
            write_message,
            BOB,
            GROUP_ID,
            seq=1,
            prev_hash=NO_HASH,
            state_version=1,
            created=0,
            body=bytes(MAX_BODY_BYTES + 1),
        )


parents = st.lists(
    st.builds(
        Parent,
        st.binary(min_size=32, max_size=32).filter(lambda k: k != ALICE.public_bytes),
        st.integers(1, 2**64 - 1),
        st.binary(min_size=32, max_size=32),
    ),
    max_size=MAX_PARENTS,
    unique_by=lambda p: p.author,
)


class RoundTripTests(SynchronousTestCase):
    """Hypothesis round trips."""

    @settings(max_examples=60, deadline=None)
    @given(
        seq=st.integers(1, 2**64 - 1),
        prev=st.binary(min_size=32, max_size=32).filter(lambda b: b != NO_HASH),
        state_version=st.integers(1, 2**64 - 1),
        created=st.integers(0, 2**64 - 1),
        parents=parents,
        body=st.binary(max_size=MAX_BODY_BYTES),
    )
    def test_round_trip(
        self,
        seq: int,
        prev: bytes,
        state_version: int,
        created: int,
        parents: list[Parent],
        body: bytes,
    ) -> None:
        """When any in-range message is written, then it parses back, verifies and encodes to
        the same bytes."""
        message = write_message(
            ALICE,
            GROUP_ID,
            seq=seq,
            prev_hash=NO_HASH if seq == 1 else prev,
            state_version=state_version,
            created=created,
            parents=parents,
            body=body,
        )
        data = encode_message(message)
        self.assertEqual(parse_message(data), message)
        self.assertEqual(encode_message(parse_message(data)), data)
        verify_message(parse_message(data))

    @settings(max_examples=30, deadline=None)
    @given(heads=parents, version=st.integers(0, 2**64 - 1))
    def test_summary_round_trip(self, heads: list[Parent], version: int) -> None:
        """When any summary is encoded, then it parses back to itself."""
        summary = Summary(GROUP_ID, version, tuple(sorted(heads)))
        self.assertEqual(parse_summary(encode_summary(summary)), summary)


class SignatureTests(SynchronousTestCase):
    """Only the author's signature verifies."""

    def test_forged_body(self) -> None:
        """When the body is changed after signing, then verification fails."""
        message = replace(make_first(), body=b"ho")
        self.assertRaises(BadSignature, verify_message, message)

    def test_claimed_author(self) -> None:
        """When Bob signs a message that names Alice as author, then it does not verify."""
        from jarvis.protocol import group_message

        message = make_first()
        body = group_message._body(message)
        forged = replace(message, signature=BOB.sign(group_message._SIGN_LABEL + body))
        self.assertRaises(BadSignature, verify_message, forged)

    def test_fork_proof(self) -> None:
        """When Alice signs two first messages, then they prove a fork; one message and an
        honest successor do not; a forged second message does not."""
        first = make_first()
        other = write_message(
            ALICE,
            GROUP_ID,
            seq=1,
            prev_hash=NO_HASH,
            state_version=1,
            created=0,
            body=b"other",
        )
        self.assertTrue(is_fork_proof(first, other))
        honest = write_message(
            ALICE,
            GROUP_ID,
            seq=2,
            prev_hash=message_hash(first),
            state_version=1,
            created=0,
            body=b"next",
        )
        self.assertFalse(is_fork_proof(first, honest))
        self.assertTrue(is_fork_proof(other, honest))
        self.assertFalse(is_fork_proof(first, first))
        self.assertFalse(is_fork_proof(first, replace(other, signature=bytes(64))))

    def test_summary_malformed(self) -> None:
        """When a summary is truncated or lists an author twice, then parsing raises."""
        head = Parent(ALICE.public_bytes, 3, bytes(32))
        data = encode_summary(Summary(GROUP_ID, 4, (head,)))
        for cut in range(len(data)):
            self.assertRaises(MalformedGroupMessage, parse_summary, data[:cut])
        doubled = data[: -72 - 2] + b"\x00\x02" + data[-72:] * 2
        self.assertRaises(MalformedGroupMessage, parse_summary, doubled)

    def test_summary_with_state_hash(self) -> None:
        """When a summary carries a state hash, then it is format 2, 32 bytes longer, parses
        back to itself (a format 1 summary parses with no hash), and a cut one or a hash of
        another length is refused."""
        head = Parent(ALICE.public_bytes, 3, bytes(32))
        plain = encode_summary(Summary(GROUP_ID, 4, (head,)))
        summary = Summary(GROUP_ID, 4, (head,), b"\x07" * 32)
        data = encode_summary(summary)
        self.assertEqual((data[0], plain[0], len(data) - len(plain)), (2, 1, 32))
        self.assertEqual(parse_summary(data), summary)
        self.assertEqual(parse_summary(plain).state_hash, b"")
        for cut in range(len(data)):
            self.assertRaises(MalformedGroupMessage, parse_summary, data[:cut])
        self.assertRaises(ValueError, encode_summary, Summary(GROUP_ID, 4, (head,), b"\x07" * 31))
