"""Tests for :mod:`jarvis.protocol.transfer`: records, vectors, manifest, progress, the machine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jarvis.protocol.framing import encode_frame
from jarvis.protocol.transfer import (
    FINAL_STATES,
    MAX_RANGES,
    STATES,
    Accept,
    Ack,
    Cancel,
    Complete,
    Decline,
    DialBack,
    End,
    Have,
    MalformedTransferRecord,
    ManifestAssembler,
    ManifestMismatch,
    ManifestPage,
    Offer,
    OutdatedPeer,
    Piece,
    ProgressMeter,
    Request,
    SharedFile,
    Transfer,
    TransferStatus,
    chunk_count,
    chunk_hash,
    encode_shared_file,
    encode_transfer_record,
    is_shared_file_body,
    manifest_pages,
    manifest_root,
    missing_indexes,
    parse_shared_file,
    parse_transfer_record,
    piece_frame_head,
    piece_position,
    ranges_from_indexes,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
TID = bytes(range(16))
SECRET = bytes(range(32, 64))

#: Byte-exact vectors, also printed in docs/protocol.md ("File transfer").
VECTORS = {
    "offer": (
        Offer(TID, "photo.jpg", 1048577, b"\xaa" * 32, "image/jpeg", 1048576, SECRET),
        "0101000102030405060708090a0b0c0d0e0f000970686f746f2e6a70670000000000100001"
        + "aa" * 32
        + "000a696d6167652f6a70656700100000202122232425262728292a2b2c2d2e2f303132333435363738"
        "393a3b3c3d3e3f",
    ),
    "group offer": (
        Offer(TID, "a", 1, b"\xaa" * 32, "text/plain", 65536, SECRET, group_id=b"\x77" * 16),
        "010d000102030405060708090a0b0c0d0e0f0001610000000000000001"
        + "aa" * 32
        + "000a746578742f706c61696e00010000202122232425262728292a2b2c2d2e2f303132333435363738"
        "393a3b3c3d3e3f" + "77" * 16,
    ),
    "folder offer": (
        Offer(
            TID,
            "a",
            1,
            b"\xaa" * 32,
            "text/plain",
            65536,
            SECRET,
            folder="photos/2024",
            folder_id=b"\x66" * 16,
        ),
        "010f000102030405060708090a0b0c0d0e0f0001610000000000000001"
        + "aa" * 32
        + "000a746578742f706c61696e00010000202122232425262728292a2b2c2d2e2f303132333435363738"
        "393a3b3c3d3e3f" + "66" * 16 + "000b70686f746f732f32303234",
    ),
    "accept": (Accept(TID), "0102000102030405060708090a0b0c0d0e0f"),
    "decline": (Decline(TID, "no"), "0103000102030405060708090a0b0c0d0e0f00026e6f"),
    "cancel": (Cancel(TID, "stop"), "0104000102030405060708090a0b0c0d0e0f000473746f70"),
    "have": (
        Have(TID, b"\xee" * 16, ((0, 3), (5, 6)), ((4, 2),)),
        "0105000102030405060708090a0b0c0d0e0f" + "ee" * 16 + "00000002"
        "00000000000000000000000000000003"
        "00000000000000050000000000000006"
        "00000001"
        "000000000000000400000002",
    ),
    "manifest page": (
        ManifestPage(0, (b"\x11" * 32,)),
        "0106000000000000000000000001" + "11" * 32,
    ),
    "end": (End(), "0108"),
    "ack": (Ack(7, 3), "010b000000000000000700000003"),
    "complete": (Complete(TID), "0109000102030405060708090a0b0c0d0e0f"),
    "dial back": (DialBack(TID), "010a000102030405060708090a0b0c0d0e0f"),
    "piece": (Piece(7, 2, b"\x5a" * 80), "010c000000000000000700000002" + "5a" * 80),
    "request": (
        Request(TID, b"\x77" * 16, b"\xaa" * 32),
        "010e000102030405060708090a0b0c0d0e0f" + "77" * 16 + "aa" * 32,
    ),
}

#: A shared-file group message body (docs/protocol.md, "A file shared into a group").
SHARED_VECTOR = (
    SharedFile("a", 1, b"\xaa" * 32, "text/plain", 65536),
    "006a61727669732f7368617265642d66696c652f763100"
    + "00016100000000000000"
    + "01"
    + "aa" * 32
    + "000a746578742f706c61696e00010000",
)

ROOT_VECTOR = "cd4d247c1d7ee5cdf46140a41e546901bcf383014c23a638e4932c4a69f93b37"


class RecordVectorTests(SynchronousTestCase):
    def test_vectors_encode_and_parse(self) -> None:
        """When each record type is encoded, then it gives the documented bytes and parses back."""
        for name, (record, hex_) in VECTORS.items():
            with self.subTest(name):
                self.assertEqual(encode_transfer_record(record).hex(), hex_)
                self.assertEqual(parse_transfer_record(bytes.fromhex(hex_)), record)

    def test_vectors_are_documented(self) -> None:
        """When docs/protocol.md is read, then it shows every vector and the manifest root."""
        doc = "".join(DOC.read_text(encoding="utf-8").split())
        for name, (_record, hex_) in VECTORS.items():
            if name != "chunk":
                self.assertIn(hex_, doc, name)
        self.assertIn(ROOT_VECTOR, doc)

    def test_manifest_root_vector(self) -> None:
        """When a 65,537-byte file of 64 KiB chunks is hashed, then the root is the vector."""
        hashes = [chunk_hash(b"a" * 65536), chunk_hash(b"b")]
        self.assertEqual(manifest_root(65537, 65536, hashes).hex(), ROOT_VECTOR)
        with self.assertRaises(ValueError):
            manifest_root(65537, 65536, hashes[:1])

    def test_offer_secret_not_in_repr(self) -> None:
        """When an offer is shown, then its secret is not."""
        offer = VECTORS["offer"][0]
        self.assertNotIn(SECRET.hex(), repr(offer))
        self.assertNotIn(repr(SECRET), repr(offer))


class PieceHeadTests(SynchronousTestCase):
    @given(
        st.integers(0, 2**40),
        st.integers(0, 15),
        st.binary(min_size=80, max_size=300),
    )
    def test_head_and_position_agree_with_the_record(
        self, index: int, piece: int, sealed: bytes
    ) -> None:
        """When the sender builds a Piece frame from its head and the sealed bytes, then it is
        the frame of the encoded record, and the receiver reads the index and piece back from
        the record in place."""
        record = Piece(index, piece, sealed)
        encoded = encode_transfer_record(record)
        self.assertEqual(
            piece_frame_head(index, piece, len(sealed)) + sealed, encode_frame(encoded)
        )
        self.assertEqual(piece_position(bytearray(encoded)), (index, piece))


class SharedFileTests(SynchronousTestCase):
    def test_vector_encodes_parses_and_is_documented(self) -> None:
        """When the documented shared file is encoded, then it gives the documented body,
        which parses back, is told apart from text, and is printed in docs/protocol.md."""
        shared, hex_ = SHARED_VECTOR
        self.assertEqual(encode_shared_file(shared).hex(), hex_)
        self.assertEqual(parse_shared_file(bytes.fromhex(hex_)), shared)
        self.assertTrue(is_shared_file_body(bytes.fromhex(hex_)))
        self.assertFalse(is_shared_file_body(b"shared a file: a"))
        self.assertIn(hex_, "".join(DOC.read_text(encoding="utf-8").split()))

    def test_matches_only_the_same_content(self) -> None:
        """When an offer is checked against a shared file, then one with the same size, chunk
        size and content hash matches whatever its name and id, and one differing in any of
        those three does not."""
        shared = SharedFile.of(VECTORS["offer"][0])  # type: ignore[arg-type]
        offer = VECTORS["offer"][0]
        assert isinstance(offer, Offer)
        self.assertTrue(shared.matches(replace(offer, name="other", transfer_id=b"\x01" * 16)))
        self.assertFalse(shared.matches(replace(offer, size=offer.size + 1)))
        self.assertFalse(shared.matches(replace(offer, chunk_size=offer.chunk_size * 2)))
        self.assertFalse(shared.matches(replace(offer, content_hash=b"\xbb" * 32)))

    def test_malformed_bodies_are_refused(self) -> None:
        """When a shared-file body is cut, has bytes added, an invalid media type or chunk
        size, or is text, then parsing refuses it with MalformedTransferRecord."""
        good = bytes.fromhex(SHARED_VECTOR[1])
        for bad in (
            good[:-1],
            good + b"\x00",
            good[:-4] + (3 * 65536).to_bytes(4, "big"),
            good.replace(b"text/plain", b"Text/Plain"),
            b"hello",
        ):
            with self.subTest(bad=bad[-12:]), self.assertRaises(MalformedTransferRecord):
                parse_shared_file(bad)


class ParseRefusalTests(SynchronousTestCase):
    def assertRefused(self, payload: bytes) -> None:
        with self.assertRaises(MalformedTransferRecord):
            parse_transfer_record(payload)

    def test_wrong_version_unknown_type_truncated_trailing(self) -> None:
        """When a record has another version, an unknown type, is cut or has extra bytes,
        then it is refused."""
        good = bytes.fromhex(VECTORS["complete"][1])
        self.assertRefused(b"\x02" + good[1:])
        self.assertRefused(b"\x01\x7f")
        self.assertRefused(b"\x01")
        self.assertRefused(good[:-1])
        self.assertRefused(good + b"\x00")

    def test_bad_fields(self) -> None:
        """When fields are invalid (bad chunk size, unsorted ranges, too many ranges, bad UTF-8,
        an upper-case media type, a short sealed chunk), then the record is refused."""
        offer = bytearray(bytes.fromhex(VECTORS["offer"][1]))
        bad_chunk = bytes(offer[:-36]) + (3 * 65536).to_bytes(4, "big") + SECRET
        self.assertRefused(bad_chunk)
        head = encode_transfer_record(Have(TID, b"\x00" * 16, ()))[:-8]
        ranges = [(5, 6), (0, 1)]
        unsorted = (
            head
            + b"\x00\x00\x00\x02"
            + b"".join(s.to_bytes(8, "big") + e.to_bytes(8, "big") for s, e in ranges)
            + b"\x00\x00\x00\x00"
        )
        self.assertRefused(unsorted)
        self.assertRefused(head + (MAX_RANGES + 1).to_bytes(4, "big"))
        self.assertRefused(bytes.fromhex("0103000102030405060708090a0b0c0d0e0f0002ff80"))
        with self.assertRaises(ValueError):
            Offer(TID, "x", 1, b"\x00" * 32, "Image/JPEG", 65536, SECRET)
        with self.assertRaises(ValueError):
            Offer(TID, "x", 1, b"\x00" * 32, "text/plain", 65536, SECRET, group_id=b"\x01" * 15)
        group_offer = bytes.fromhex(VECTORS["group offer"][1])
        self.assertRefused(group_offer[:-1])  # a group id cut short
        self.assertRefused(bytes.fromhex(VECTORS["offer"][1]) + b"\x77" * 16)  # not type 0x0d
        self.assertRefused(b"\x01\x0c" + b"\x00" * 12 + b"\x00" * 79)
        too_many_pieces = b"\x01\x0c" + b"\x00" * 8 + (16).to_bytes(4, "big") + b"\x00" * 80
        self.assertRefused(too_many_pieces)
        no_partial_count = encode_transfer_record(Have(TID, b"\x00" * 16, ()))[:-4]
        self.assertRefused(no_partial_count)
        whole_piece_partial = (
            encode_transfer_record(Have(TID, b"\x00" * 16, ()))[:-4]
            + b"\x00\x00\x00\x01"
            + (3).to_bytes(8, "big")
            + (16).to_bytes(4, "big")
        )
        self.assertRefused(whole_piece_partial)

    def test_bad_folder_offers(self) -> None:
        """When a folder offer has a folder without its id (or the reverse), is also a group
        offer, has an empty part (``a//b``, ``/a``), more than 32 parts, an id of 15 bytes,
        or is cut short, then it is refused."""
        base = Offer(TID, "a", 1, b"\xaa" * 32, "text/plain", 65536, SECRET)
        for folder, folder_id, group_id in [
            ("photos", b"", b""),
            ("", b"\x66" * 16, b""),
            ("photos", b"\x66" * 16, b"\x77" * 16),
            ("a//b", b"\x66" * 16, b""),
            ("/a", b"\x66" * 16, b""),
            ("/".join(["d"] * 33), b"\x66" * 16, b""),
            ("photos", b"\x66" * 15, b""),
        ]:
            with self.subTest(folder=folder[:10], id=len(folder_id), group=bool(group_id)):
                with self.assertRaises(ValueError):
                    replace(base, folder=folder, folder_id=folder_id, group_id=group_id)
        deep = replace(base, folder="/".join(["d"] * 32), folder_id=b"\x66" * 16)
        self.assertEqual(parse_transfer_record(encode_transfer_record(deep)), deep)
        good = bytes.fromhex(VECTORS["folder offer"][1])
        self.assertRefused(good[:-1])
        self.assertRefused(good + b"\x00")
        empty_part = good[:-13] + b"\x00\x02a/"
        self.assertRefused(empty_part)

    @given(
        name=st.sampled_from(sorted(VECTORS)),
        cut=st.integers(0, 200),
        flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=4),
        extra=st.binary(max_size=40),
    )
    def test_mutated_records_parse_canonically_or_are_refused(
        self, name: str, cut: int, flips: list[tuple[int, int]], extra: bytes
    ) -> None:
        """When a valid record is cut short, has bytes changed or bytes added (what a broken or
        hostile peer could send), then parsing either refuses it with MalformedTransferRecord
        or returns a record whose encoding is exactly those bytes; no other error escapes and
        no two encodings parse to the same record."""
        payload = bytearray(bytes.fromhex(VECTORS[name][1]))
        del payload[min(cut, len(payload)) :]
        for at, xor in flips:
            if payload:
                payload[at % len(payload)] ^= xor
        payload += extra
        try:
            record = parse_transfer_record(bytes(payload))
        except MalformedTransferRecord:
            return
        self.assertEqual(encode_transfer_record(record), bytes(payload))

    def test_whole_chunk_records_name_an_outdated_peer(self) -> None:
        """When a whole-chunk record of a Jarvis from before pieces arrives, then it is refused
        as OutdatedPeer (the transfer fails with that reason instead of retrying)."""
        with self.assertRaises(OutdatedPeer):
            parse_transfer_record(b"\x01\x07" + b"\x00" * 8 + b"\x5a" * 80)

    @given(
        held=st.sets(st.integers(0, 5000), max_size=200),
        epoch=st.binary(min_size=16, max_size=16),
    )
    def test_have_round_trip(self, held: set[int], epoch: bytes) -> None:
        """When any set of held chunks is sent as ranges, then it parses back to the same set."""
        ranges = ranges_from_indexes(held)
        record = Have(TID, epoch, ranges)
        parsed = parse_transfer_record(encode_transfer_record(record))
        self.assertEqual(parsed, record)
        self.assertEqual(set(missing_indexes(5001, ranges)), set(range(5001)) - held)

    @given(
        name=st.text(min_size=1, max_size=300),
        size=st.integers(0, 1 << 40),
        shift=st.integers(16, 22),
    )
    def test_offer_round_trip(self, name: str, size: int, shift: int) -> None:
        """When any valid offer is encoded, then it parses back equal."""
        offer = Offer(TID, name, size, b"\x01" * 32, "application/octet-stream", 1 << shift, SECRET)
        self.assertEqual(parse_transfer_record(encode_transfer_record(offer)), offer)


class ManifestTests(SynchronousTestCase):
    def make_offer(self, hashes: list[bytes], size: int) -> Offer:
        root = manifest_root(size, 65536, hashes)
        return Offer(TID, "f", size, root, "application/octet-stream", 65536, SECRET)

    def test_pages_assemble_to_the_offer(self) -> None:
        """When 9,000 hashes arrive in pages in any order, then the manifest is returned once
        complete and matching."""
        size = 9000 * 65536
        hashes = [chunk_hash(i.to_bytes(4, "big")) for i in range(9000)]
        offer = self.make_offer(hashes, size)
        pages = manifest_pages(hashes)
        self.assertEqual(len(pages), 3)
        assembler = ManifestAssembler(offer)
        self.assertIsNone(assembler.add(pages[2]))
        self.assertIsNone(assembler.add(pages[0]))
        self.assertEqual(assembler.add(pages[1]), tuple(hashes))

    def test_lying_manifest_refused(self) -> None:
        """When the hashes do not hash to the offered content hash, then ManifestMismatch."""
        hashes = [b"\x01" * 32, b"\x02" * 32]
        offer = self.make_offer(hashes, 65537)
        with self.assertRaises(ManifestMismatch):
            ManifestAssembler(offer).add(ManifestPage(0, (b"\x01" * 32, b"\x03" * 32)))
        with self.assertRaises(MalformedTransferRecord):
            ManifestAssembler(offer).add(ManifestPage(1, (b"\x01" * 32, b"\x03" * 32)))
        self.assertEqual(chunk_count(65537, 65536), 2)


class ProgressMeterTests(SynchronousTestCase):
    def test_rate_and_eta(self) -> None:
        """When 10 MiB arrive per second on the clock, then the rate is 10 MiB/s and the ETA
        what is left divided by it."""
        clock = Clock()
        meter = ProgressMeter(100 << 20, clock.seconds)
        first = meter.update(0)
        self.assertEqual((first.rate, first.eta), (0.0, None))
        for i in range(1, 4):
            clock.advance(1)
            progress = meter.update(i * (10 << 20))
        self.assertAlmostEqual(progress.rate, 10 << 20)
        self.assertAlmostEqual(progress.eta or 0, 7.0)


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[TransferStatus] = []

    def transfer_changed(self, status: TransferStatus) -> None:
        self.statuses.append(status)


INPUTS = {
    "accepted": (),
    "declined": ("no thanks",),
    "stream_opened": (),
    "stream_lost": ("reset",),
    "all_sent": (),
    "verified": (),
    "cancelled": ("user",),
    "failed": ("disk",),
}

#: (state, input) -> next state; every pair not listed keeps the state.
EXPECTED = {
    ("offered", "accepted"): "accepted",
    ("offered", "declined"): "cancelled",
    ("accepted", "stream_opened"): "streaming",
    ("streaming", "stream_lost"): "accepted",
    ("streaming", "all_sent"): "verifying",
    ("verifying", "verified"): "complete",
}
PATHS = {
    "offered": [],
    "accepted": ["accepted"],
    "streaming": ["accepted", "stream_opened"],
    "verifying": ["accepted", "stream_opened", "all_sent"],
    "complete": ["accepted", "stream_opened", "all_sent", "verified"],
    "cancelled": ["cancelled"],
    "failed": ["failed"],
}


def make_transfer(sending: bool = False) -> tuple[Transfer, Recorder]:
    recorder = Recorder()
    return Transfer(TID, sending=sending, observer=recorder), recorder


def drive(transfer: Transfer, name: str) -> None:
    getattr(transfer.inputs, name)(*INPUTS[name])


class TransferMachineTests(SynchronousTestCase):
    def test_every_state_handles_every_input(self) -> None:
        """When each input reaches each state, then the machine moves as the table says,
        reports only real changes, and final states ignore every late input."""
        self.assertEqual(set(PATHS), set(STATES))
        for state, path in PATHS.items():
            for name in INPUTS:
                with self.subTest(state=state, input=name):
                    transfer, recorder = make_transfer()
                    for step in path:
                        drive(transfer, step)
                    self.assertEqual(transfer.status.state, state)
                    before = len(recorder.statuses)
                    drive(transfer, name)
                    if (state, name) in EXPECTED:
                        expected = EXPECTED[(state, name)]
                    elif state not in FINAL_STATES and name in ("cancelled", "failed"):
                        expected = name
                    else:
                        expected = state
                    self.assertEqual(transfer.status.state, expected)
                    changed = len(recorder.statuses) - before
                    self.assertEqual(changed, 0 if expected == state else 1)

    def test_resume_cycle_and_reasons(self) -> None:
        """When the stream is lost and reopened, then the transfer goes back to accepted and on;
        a decline is reported as cancelled with the reason."""
        transfer, recorder = make_transfer(sending=True)
        for step in ["accepted", "stream_opened", "stream_lost", "stream_opened", "all_sent"]:
            drive(transfer, step)
        drive(transfer, "stream_lost")  # the sender keeps waiting for Complete
        drive(transfer, "verified")
        self.assertEqual(
            [s.state for s in recorder.statuses],
            ["accepted", "streaming", "accepted", "streaming", "verifying", "complete"],
        )
        self.assertTrue(all(s.sending for s in recorder.statuses))
        declined, rec = make_transfer()
        drive(declined, "declined")
        self.assertEqual(rec.statuses[-1].reason, "declined: no thanks")
