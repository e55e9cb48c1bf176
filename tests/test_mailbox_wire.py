"""Tests for jarvis.mailbox.wire: byte-exact vectors, round trips and hostile input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from jarvis.mailbox import wire

QID = bytes(range(24))
SIG = b"\x5a" * 64
MID = b"\x11" * 16


def records() -> st.SearchStrategy[wire.Record]:
    corr = st.integers(0, wire.MAX_CORR)
    qid = st.binary(min_size=24, max_size=24)
    sig = st.binary(min_size=64, max_size=64)
    mid = st.binary(min_size=16, max_size=16)
    key = st.binary(min_size=32, max_size=32)
    block = st.binary(max_size=wire.BLOCK_SIZE)
    return st.one_of(
        st.builds(wire.Hello, st.binary(min_size=32, max_size=32)),
        st.builds(wire.NewQueue, corr, key, key),
        st.builds(wire.Deposit, corr, qid, sig, block),
        st.builds(wire.Subscribe, corr, qid, sig),
        st.builds(wire.Ack, corr, qid, sig, mid),
        st.builds(wire.DeleteQueue, corr, qid, sig),
        st.builds(wire.StatusRequest, corr),
        st.builds(wire.QueueIds, corr, qid, qid),
        st.builds(wire.Ok, corr, st.sampled_from([b"", MID])),
        st.builds(wire.Error, corr, st.integers(0, 0xFFFF)),
        st.builds(wire.Message, qid, mid, st.integers(0, 2**64 - 1), block),
        st.builds(wire.Empty, qid),
        st.builds(wire.StatusReply, corr, st.binary(max_size=200)),
    )


class VectorTests(unittest.TestCase):
    """Byte-exact encodings, so a second implementation can be checked against these."""

    def test_hello(self) -> None:
        """When a Hello is encoded, then it is version, type 0x01 and the 32-byte nonce."""
        self.assertEqual(wire.encode(wire.Hello(b"\x07" * 32)), b"\x01\x01" + b"\x07" * 32)

    def test_ack(self) -> None:
        """When an Ack is encoded, then it is head, corr, queue id, signature, message id."""
        data = wire.encode(wire.Ack(258, QID, SIG, MID))
        self.assertEqual(data, b"\x01\x13" + b"\x00\x00\x01\x02" + QID + SIG + MID)

    def test_error_frame(self) -> None:
        """When an Error is framed, then the 4-byte length precedes head, corr and code."""
        self.assertEqual(
            wire.frame(wire.Error(5, wire.ERR_QUOTA)),
            b"\x00\x00\x00\x08" + b"\x01\x22" + b"\x00\x00\x00\x05" + b"\x00\x03",
        )

    def test_signed_data(self) -> None:
        """When a deposit is signed, then the signature covers domain, nonce, head, corr,
        queue id and the block's SHA-256, and not the signature itself."""
        cmd = wire.Deposit(1, QID, SIG, b"blk")
        self.assertEqual(
            wire.signed_data(b"N" * 32, cmd),
            b"jarvis-mailbox-v1\x00"
            + b"N" * 32
            + b"\x01\x11\x00\x00\x00\x01"
            + QID
            + bytes.fromhex("5af2392a948f950e3f93e9f171da623fe6629440bc8d7e27fa7b39573e40ee73"),
        )
        other = wire.Deposit(1, QID, b"\x00" * 64, b"blk")
        self.assertEqual(wire.signed_data(b"N" * 32, cmd), wire.signed_data(b"N" * 32, other))

    def test_block_padding(self) -> None:
        """When a payload is padded, then the block is exactly 16 KiB: length, payload, zeros."""
        block = wire.pad_block(b"abc")
        self.assertEqual(len(block), 16384)
        self.assertEqual(block[:7], b"\x00\x00\x00\x03abc")
        self.assertEqual(block[7:], bytes(16384 - 7))
        self.assertEqual(wire.unpad_block(block), b"abc")

    def test_payload_too_large(self) -> None:
        """When a payload exceeds MAX_PAYLOAD, then padding refuses it."""
        self.assertEqual(len(wire.pad_block(b"x" * wire.MAX_PAYLOAD)), wire.BLOCK_SIZE)
        self.assertRaises(ValueError, wire.pad_block, b"x" * (wire.MAX_PAYLOAD + 1))


class RoundTripTests(unittest.TestCase):
    """encode/parse and framing are inverse."""

    @given(records())
    def test_round_trip(self, record: wire.Record) -> None:
        """When any record is encoded and parsed, then the same record comes back."""
        self.assertEqual(wire.parse(wire.encode(record)), record)

    @given(st.lists(records(), max_size=5), st.integers(1, 5000))
    def test_frames_in_any_chunks(self, items: list[wire.Record], chunk: int) -> None:
        """When frames arrive split at any points, then the decoder yields each body once."""
        stream = b"".join(wire.frame(r) for r in items)
        decoder = wire.FrameDecoder()
        bodies: list[bytes] = []
        for i in range(0, len(stream), chunk):
            bodies += decoder.feed(stream[i : i + chunk])
        self.assertEqual([wire.parse(b) for b in bodies], items)
        self.assertEqual(decoder.buffered, 0)

    @given(st.binary(max_size=wire.MAX_PAYLOAD))
    def test_padding_round_trip(self, payload: bytes) -> None:
        """When any payload is padded and unpadded, then it comes back unchanged."""
        self.assertEqual(wire.unpad_block(wire.pad_block(payload)), payload)


class HostileInputTests(unittest.TestCase):
    """Garbage is refused with a typed error, never an unexpected exception."""

    @given(st.binary(max_size=300))
    def test_garbage_parses_or_is_refused(self, data: bytes) -> None:
        """When random bytes are parsed, then a record or MalformedRecord comes out."""
        try:
            record = wire.parse(data)
        except wire.MalformedRecord:
            return
        self.assertEqual(wire.encode(record), data)

    def test_oversized_frame_refused_before_buffering(self) -> None:
        """When a frame announces more than MAX_FRAME, then the decoder refuses at once,
        holding nothing."""
        decoder = wire.FrameDecoder()
        with self.assertRaises(wire.FrameTooLong):
            decoder.feed((wire.MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 100)
        self.assertEqual(decoder.buffered, 0)
        self.assertRaises(wire.FrameTooLong, decoder.feed, b"\x00")

    def test_wrong_version(self) -> None:
        """When a record has another version, then UnsupportedVersion is raised."""
        self.assertRaises(wire.UnsupportedVersion, wire.parse, b"\x02\x01" + b"\x00" * 32)

    def test_trailing_bytes(self) -> None:
        """When a fixed-size record has one byte too many, then it is malformed."""
        self.assertRaises(
            wire.MalformedRecord, wire.parse, wire.encode(wire.Hello(b"a" * 32)) + b"!"
        )

    def test_oversized_block_in_deposit(self) -> None:
        """When a deposit carries more than a block, then parsing refuses it."""
        body = wire.encode(wire.Deposit(1, QID, SIG, b""))
        self.assertRaises(wire.MalformedRecord, wire.parse, body + b"x" * (wire.BLOCK_SIZE + 1))


class LayeringTests(unittest.TestCase):
    def test_pure_modules_import_no_reactor(self) -> None:
        """When the mailbox's sans-IO wire module is scanned, then it imports neither the
        reactor, twisted.internet.protocol nor urwid (its link format lives in jarvis.protocol,
        which tests.test_layering scans)."""
        import os

        from tests.test_layering import forbidden_imports

        here = os.path.dirname(os.path.abspath(wire.__file__))
        for name in ("wire.py",):
            with open(os.path.join(here, name), encoding="utf-8") as f:
                self.assertEqual(forbidden_imports(f.read()), [], name)
