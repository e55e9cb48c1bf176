"""Tests for :mod:`jarvis.protocol.framing`: frames, the prologue and the maximum frame size."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.protocol.framing import (
    HANDSHAKE_MAX_FRAME,
    MAX_FRAME,
    PROLOGUE,
    BadPrologue,
    ChunkFrameReader,
    FrameDecoder,
    FrameTooLarge,
    encode_frame,
)

#: The prologue as shown in docs/protocol.md.
PROLOGUE_HEX = "4a41525649530001"
#: A framed Ping with nonce 00..07 as shown in docs/protocol.md.
PING_FRAME_HEX = "00000009050001020304050607"

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split *data* at the given offsets (clamped and sorted)."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def feed(decoder: FrameDecoder, data: bytes) -> list[bytes]:
    """Give *decoder* the bytes and return every payload they complete (as the session does)."""
    decoder.receive(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


class EncodeFrameTests(SynchronousTestCase):
    """encode_frame puts a 4-byte big-endian length in front of the payload."""

    def test_vector(self) -> None:
        """When a Ping payload is framed, then the bytes match the documented vector."""
        self.assertEqual(
            encode_frame(bytes.fromhex("050001020304050607")), bytes.fromhex(PING_FRAME_HEX)
        )

    def test_empty(self) -> None:
        """When an empty payload is framed, then only a zero header is written."""
        self.assertEqual(encode_frame(b""), b"\x00\x00\x00\x00")

    def test_prologue_constant(self) -> None:
        """When the prologue is read, then it is the documented 8 bytes JARVIS NUL 1."""
        self.assertEqual(PROLOGUE, bytes.fromhex(PROLOGUE_HEX))
        self.assertEqual(len(PROLOGUE), 8)

    def test_documented(self) -> None:
        """When docs/protocol.md is read, then it shows the prologue and Ping frame vectors."""
        blocks = re.findall(r"```hex\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
        shown = ["".join(block.split()) for block in blocks]
        self.assertIn(PROLOGUE_HEX, shown)
        self.assertIn(PING_FRAME_HEX, shown)


class RoundTripTests(SynchronousTestCase):
    """Frames survive any chunking of the stream."""

    @settings(max_examples=60, deadline=None)
    @given(
        payloads=st.lists(st.binary(max_size=300), max_size=8),
        cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
        with_prologue=st.booleans(),
    )
    def test_any_chunking(
        self, payloads: list[bytes], cuts: list[int], with_prologue: bool
    ) -> None:
        """When frames are fed in arbitrary chunks, then exactly the payloads come out in order."""
        stream = (PROLOGUE if with_prologue else b"") + b"".join(map(encode_frame, payloads))
        decoder = FrameDecoder(1024, expect_prologue=with_prologue)
        received: list[bytes] = []
        for piece in chunked(stream, cuts):
            received.extend(feed(decoder, piece))
        self.assertEqual(received, payloads)
        self.assertEqual(decoder.buffered, 0)

    def test_byte_by_byte(self) -> None:
        """When a frame arrives one byte at a time, then it is returned once, on its last byte."""
        decoder = FrameDecoder(16)
        frame = encode_frame(b"abc")
        outputs = [feed(decoder, frame[i : i + 1]) for i in range(len(frame))]
        self.assertEqual(outputs, [[]] * (len(frame) - 1) + [[b"abc"]])


class MaximumTests(SynchronousTestCase):
    """Oversized frames are refused as soon as their header arrives."""

    def test_header_alone_rejected(self) -> None:
        """When a header announces one byte over the maximum, then feed raises before the body."""
        decoder = FrameDecoder(100)
        with self.assertRaises(FrameTooLarge) as caught:
            feed(decoder, (101).to_bytes(4, "big"))
        self.assertEqual((caught.exception.announced, caught.exception.maximum), (101, 100))

    def test_huge_announcement(self) -> None:
        """When a header announces 4 GiB, then it is refused with no body buffered."""
        decoder = FrameDecoder(MAX_FRAME)
        with self.assertRaises(FrameTooLarge):
            feed(decoder, b"\xff\xff\xff\xff")
        self.assertEqual(decoder.buffered, 4)

    def test_exact_maximum_accepted(self) -> None:
        """When a frame is exactly the maximum, then it is accepted."""
        decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        payload = b"x" * HANDSHAKE_MAX_FRAME
        self.assertEqual(feed(decoder, encode_frame(payload)), [payload])

    def test_raise_between_frames(self) -> None:
        """When the maximum is raised after a frame, then a larger one in the same chunk passes."""
        decoder = FrameDecoder(8)
        decoder.receive(encode_frame(b"hello") + encode_frame(b"y" * 50))
        self.assertEqual(decoder.next_frame(), b"hello")
        decoder.set_max_frame(64)
        self.assertEqual(decoder.next_frame(), b"y" * 50)
        self.assertIsNone(decoder.next_frame())

    def test_second_frame_checked(self) -> None:
        """When a small frame is followed by an oversized header, then feed still refuses it."""
        decoder = FrameDecoder(8)
        with self.assertRaises(FrameTooLarge):
            feed(decoder, encode_frame(b"ok") + (9).to_bytes(4, "big"))

    def test_negative_maximum(self) -> None:
        """When a negative maximum is given, then ValueError is raised."""
        self.assertRaises(ValueError, FrameDecoder, -1)
        self.assertRaises(ValueError, FrameDecoder(1).set_max_frame, -1)


class PrologueTests(SynchronousTestCase):
    """The stream must start with the prologue when one is expected."""

    def test_garbage_refused_at_first_byte(self) -> None:
        """When the first byte is wrong, then BadPrologue is raised at once."""
        decoder = FrameDecoder(100, expect_prologue=True)
        with self.assertRaises(BadPrologue):
            feed(decoder, b"G")

    def test_wrong_version(self) -> None:
        """When the prologue version byte differs, then BadPrologue is raised."""
        decoder = FrameDecoder(100, expect_prologue=True)
        feed(decoder, PROLOGUE[:7])
        with self.assertRaises(BadPrologue):
            feed(decoder, b"\x02")

    def test_http_request(self) -> None:
        """When a plain HTTP request arrives, then BadPrologue is raised."""
        decoder = FrameDecoder(100, expect_prologue=True)
        self.assertRaises(BadPrologue, feed, decoder, b"GET / HTTP/1.1\r\n\r\n")

    def test_partial_prologue_waits(self) -> None:
        """When only part of the prologue has arrived, then nothing is returned or raised."""
        decoder = FrameDecoder(100, expect_prologue=True)
        self.assertEqual(feed(decoder, PROLOGUE[:3]), [])
        self.assertEqual(feed(decoder, PROLOGUE[3:] + encode_frame(b"a")), [b"a"])


class ChunkFrameReaderTests(SynchronousTestCase):
    def test_frames_cut_anywhere_and_buffers_reused(self) -> None:
        """When frames arrive cut at any byte (1, 7 or 32 KiB pieces), then each payload comes
        out whole and in order, and a given-back chunk buffer is reused for the next chunk."""
        big = os.urandom(3000)
        payloads = [b"control", big, b"", b"x" * 5, big[::-1]]
        stream = b"".join(encode_frame(p) for p in payloads)
        for piece in (1, 7, 32 * 1024):
            reader = ChunkFrameReader(4000, pooled=3000)
            for at in range(0, len(stream), piece):
                reader.receive(stream[at : at + piece])
            got = list(reader.frames)
            self.assertEqual([bytes(f) for f in got], payloads)
            reader.frames.clear()
            reader.give_back(got[1])
            reader.give_back(got[0])  # not a chunk's size: not kept
            reader.receive(encode_frame(big))
            self.assertIs(reader.frames[0], got[1])
            self.assertEqual(bytes(reader.frames[0]), big)

    def test_oversized_frame_refused_at_its_header(self) -> None:
        """When a header announces more than the maximum, then FrameTooLarge as soon as the
        four header bytes are in, before any of the body is buffered."""
        reader = ChunkFrameReader(100, pooled=100)
        reader.receive(encode_frame(b"ok") + (101).to_bytes(4, "big")[:3])
        self.assertEqual([bytes(f) for f in reader.frames], [b"ok"])
        with self.assertRaises(FrameTooLarge):
            reader.receive((101).to_bytes(4, "big")[3:])
