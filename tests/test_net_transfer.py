"""Tests for :mod:`jarvis.net.transfer`: the transfer stream over iosim pairs, fake slow
transports and real loopback TCP (a 64 MiB file, the connection killed halfway, resumed)."""

from __future__ import annotations

import errno
import hashlib
import io
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, endpoints, protocol
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import TestCase

from jarvis.crypto.transfer_keys import ChunkCipher
from jarvis.files.receive import PartialFile
from jarvis.files.send import FileSource, PreparedFile, make_offer
from jarvis.net.transfer import (
    DATA_BUFFER,
    DEFAULT_WINDOW,
    DISK_FULL,
    PREPARE_AHEAD,
    SEND_BATCH_PIECES,
    TransferReceiver,
    TransferSender,
    widen_buffer,
)
from jarvis.protocol.framing import FrameDecoder, encode_frame
from jarvis.protocol.transfer import (
    CHUNK_OVERHEAD,
    MAX_TRANSFER_FRAME,
    MIN_CHUNK_SIZE,
    PIECE_SIZE,
    Ack,
    Cancel,
    Complete,
    End,
    Have,
    Piece,
    encode_transfer_record,
    manifest_pages,
    parse_transfer_record,
)
from tests.daemons import short_tempdir
from tests.test_framing import feed

CHUNK = MIN_CHUNK_SIZE


class Recorder:
    """A TransferStreamObserver that records and lets a test wait for the end."""

    def __init__(self, on_bytes: Callable[[int], None] | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.done = 0
        self.finished: defer.Deferred[tuple[str, Any]] = defer.Deferred()
        self._on_bytes = on_bytes

    def stream_opened(self) -> None:
        self.events.append(("opened", None))

    def bytes_done(self, done: int) -> None:
        self.done = done
        if self._on_bytes is not None:
            self._on_bytes(done)

    def stream_completed(self, final_path: str | None) -> None:
        self.events.append(("completed", final_path))
        if not self.finished.called:
            self.finished.callback(("completed", final_path))

    def stream_ended(self, reason: str, resumable: bool) -> None:
        self.events.append(("ended", (reason, resumable)))
        if not self.finished.called:
            self.finished.callback(("ended", (reason, resumable)))


def run_now(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """A synchronous run_blocking for deterministic tests."""
    return defer.maybeDeferred(f, *args)


def make_prepared(testcase: TestCase, size: int, chunk: int = CHUNK) -> PreparedFile:
    path = os.path.join(short_tempdir(testcase), "data.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return make_offer(path, chunk_size=chunk)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def frame(record: Any) -> bytes:
    return encode_frame(encode_transfer_record(record))


class LyingSource(FileSource):
    """A sender whose chunk 1 differs from what its manifest and offer say."""

    def read_piece(self, index: int, piece: int, into: bytearray | mmap.mmap) -> memoryview:
        data = super().read_piece(index, piece, into)
        if (index, piece) != (1, 0):
            return data
        # Flip the chunk's first byte (setting it to 0 would be no lie when it already is: 1
        # in 256).
        lie = bytearray(data)
        lie[0] ^= 0xFF
        return memoryview(lie)


class ChangingSource(FileSource):
    """A sender whose file is written to while chunk 1's pieces are being read."""

    def read_piece(self, index: int, piece: int, into: bytearray | mmap.mmap) -> memoryview:
        if (index, piece) == (1, 0):
            with open(self.prepared.path, "r+b") as f:
                f.seek(self.prepared.offer.size - 1)
                f.write(b"\0")
        return super().read_piece(index, piece, into)


def connect_pair(
    case: TestCase, partial: PartialFile, source: FileSource
) -> tuple[TransferSender, TransferReceiver, Recorder, Recorder]:
    """Run a sender of *source* and a receiver into *partial* over an in-memory connection until
    nothing more moves; the sender, the receiver and their observers."""
    case.addCleanup(source.close)
    send_rec, recv_rec = Recorder(), Recorder()
    sender, receiver, pump = connectedServerAndClient(
        lambda: TransferReceiver(partial, recv_rec, run_blocking=run_now),
        lambda: TransferSender(source, send_rec, run_blocking=run_now),
    )
    pump.flush()
    return sender, receiver, send_rec, recv_rec


def connected_sender(
    case: TestCase, prepared: PreparedFile
) -> tuple[TransferSender, Recorder, StringTransport]:
    """A sender of *prepared* on an in-memory transport, its observer and the transport."""
    source = FileSource(prepared)
    case.addCleanup(source.close)
    recorder = Recorder()
    sender = TransferSender(source, recorder, run_blocking=run_now)
    transport = StringTransport()
    sender.makeConnection(transport)
    return sender, recorder, transport


class PairTests(TestCase):
    def make_pair(
        self, prepared: PreparedFile, source: FileSource | None = None
    ) -> tuple[TransferSender, TransferReceiver, Recorder, Recorder, str]:
        directory = short_tempdir(self)
        partial = PartialFile.create(directory, prepared.offer)
        return (*connect_pair(self, partial, source or FileSource(prepared)), directory)

    def test_small_file_arrives(self) -> None:
        """When a 5-chunk file is sent over a connected pair, then the receiver gets it
        byte-identical under its name and both sides report completion."""
        prepared = make_prepared(self, 4 * CHUNK + 17)
        sender, _receiver, send_rec, recv_rec, directory = self.make_pair(prepared)
        kind, final = self.successResultOf(recv_rec.finished)
        self.assertEqual(kind, "completed")
        self.assertEqual(file_sha256(final), file_sha256(prepared.path))
        self.assertEqual(self.successResultOf(send_rec.finished), ("completed", None))
        self.assertEqual(sender.chunks_sent, 5)
        self.assertEqual(os.listdir(directory), ["data.bin"])

    def test_a_connection_kept_for_the_next_file(self) -> None:
        """When both ends are given a release that keeps the connection (a folder's next file
        follows on it), then once the file is complete neither end closes it, each release
        is called once, after the receiver wrote Complete, the sender is no longer the
        transport's producer, and both streams settle (done with the connection, which goes
        on); when the releases decline, both ends close it as before."""
        for keep in (True, False):
            released: list[str] = []
            sender, receiver = self.released_pair(keep, released)
            self.assertEqual(released, ["receiver", "sender"])
            self.assertEqual(sender.transport.disconnecting, not keep)
            self.assertEqual(receiver.transport.disconnecting, not keep)
            self.assertIsNone(sender.transport.producer)
            if keep:  # done with the connection although it goes on: both settle
                self.successResultOf(sender.when_settled())
                self.successResultOf(receiver.when_settled())

    def released_pair(self, keep: bool, released: list[str]) -> tuple[Any, Any]:
        """Send a small file over an in-memory pair whose ends' releases answer *keep* (and
        append which end asked to *released*); the sender and receiver, once complete."""
        prepared = make_prepared(self, 2 * CHUNK + 5)
        partial = PartialFile.create(short_tempdir(self), prepared.offer)
        source = FileSource(prepared)
        self.addCleanup(source.close)

        def release(side: str) -> Any:
            def it() -> bool:
                released.append(side)
                return keep

            return it

        send_rec, recv_rec = Recorder(), Recorder()
        sender, receiver, pump = connectedServerAndClient(
            lambda: TransferReceiver(
                partial, recv_rec, run_blocking=run_now, release=release("receiver")
            ),
            lambda: TransferSender(
                source, send_rec, run_blocking=run_now, release=release("sender")
            ),
        )
        pump.flush()
        self.assertEqual(self.successResultOf(send_rec.finished), ("completed", None))
        self.assertEqual(self.successResultOf(recv_rec.finished)[0], "completed")
        return sender, receiver

    def test_empty_file_arrives(self) -> None:
        """When an empty file is sent, then it arrives empty under its name."""
        prepared = make_prepared(self, 0)
        sender, _receiver, _send_rec, recv_rec, _directory = self.make_pair(prepared)
        kind, final = self.successResultOf(recv_rec.finished)
        self.assertEqual(kind, "completed")
        self.assertEqual(os.path.getsize(final), 0)
        self.assertEqual(sender.chunks_sent, 0)

    def test_lying_chunk_refused_and_removed(self) -> None:
        """When the sender's chunk does not match the content it offered, then the receiver
        cancels for good and the partial file and sidecar are removed."""
        prepared = make_prepared(self, 3 * CHUNK)
        source = LyingSource(prepared)
        _s, receiver, send_rec, recv_rec, directory = self.make_pair(prepared, source)
        kind, (reason, resumable) = self.successResultOf(recv_rec.finished)
        self.assertEqual((kind, resumable), ("ended", False))
        self.assertIn("does not match", reason)
        self.successResultOf(receiver.when_settled())
        self.assertEqual(os.listdir(directory), [])
        kind, (reason, resumable) = self.successResultOf(send_rec.finished)
        self.assertEqual((kind, resumable), ("ended", False))
        self.assertIn("receiver cancelled", reason)

    def test_file_changed_while_its_pieces_are_read_is_not_sent(self) -> None:
        """When the sender's file is written to while a batch of its pieces is read, then none
        of that batch leaves (no more than chunk 0's bytes were handed to the connection): the
        sender ends for good saying the file changed, and the receiver is told."""
        prepared = make_prepared(self, 3 * CHUNK)
        source = ChangingSource(prepared)
        sender, _receiver, send_rec, recv_rec, _directory = self.make_pair(prepared, source)
        self.assertLessEqual(sender.bytes_sent, CHUNK)
        kind, (reason, resumable) = self.successResultOf(send_rec.finished)
        self.assertEqual((kind, resumable), ("ended", False))
        self.assertIn("the file changed after it was offered", reason)
        kind, (reason, resumable) = self.successResultOf(recv_rec.finished)
        self.assertEqual((kind, resumable), ("ended", False))
        self.assertIn("the file changed", reason)

    def test_lying_manifest_refused_and_removed(self) -> None:
        """When the manifest does not hash to the offered content hash, then the receiver
        refuses before any chunk is stored and removes the partial file."""
        prepared = make_prepared(self, 3 * CHUNK)
        hashes = list(prepared.chunk_hashes)
        hashes[2] = b"\x00" * 32
        lying = replace(prepared, chunk_hashes=tuple(hashes))
        _s, receiver, _send_rec, recv_rec, directory = self.make_pair(prepared, FileSource(lying))
        kind, (reason, resumable) = self.successResultOf(recv_rec.finished)
        self.assertEqual((kind, resumable), ("ended", False))
        self.assertIn("content hash", reason)
        self.assertEqual(receiver.chunks_stored, 0)
        self.successResultOf(receiver.when_settled())
        self.assertEqual(os.listdir(directory), [])


class DiskFullTests(TestCase):
    def test_disk_full_keeps_what_is_held_and_resumes(self) -> None:
        """When the receiver's disk fills up at chunk 1 (a write fails with ENOSPC), then the
        connection ends as resumable with the disk-full reason, chunk 0 stays held and the
        partial file stays; once there is room, a new connection fetches only the rest and
        the file arrives byte-identical."""
        prepared = make_prepared(self, 3 * CHUNK)
        directory = short_tempdir(self)
        partial = PartialFile.create(directory, prepared.offer)
        write = partial._write

        def full_from_chunk_1(data: Any, offset: int) -> None:
            if offset >= CHUNK:
                raise OSError(errno.ENOSPC, "No space left on device")
            write(data, offset)

        partial._write = full_from_chunk_1  # type: ignore[method-assign]
        _s, receiver, _send_rec, recv_rec = connect_pair(self, partial, FileSource(prepared))
        kind, (reason, resumable) = self.successResultOf(recv_rec.finished)
        self.assertEqual((kind, reason, resumable), ("ended", DISK_FULL, True))
        self.successResultOf(receiver.when_settled())
        self.assertEqual(partial.held_ranges(), ((0, 1),))
        partial.close()
        again = PartialFile.reopen(directory, prepared.offer)  # room again: plain writes
        self.addCleanup(again.close)
        self.assertEqual(again.held_ranges(), ((0, 1),))
        sender2, _r, _send2, recv2 = connect_pair(self, again, FileSource(prepared))
        kind, final = self.successResultOf(recv2.finished)
        self.assertEqual(kind, "completed")
        self.assertEqual(file_sha256(final), file_sha256(prepared.path))
        self.assertEqual(sender2.bytes_sent, 2 * CHUNK)

    def test_failures_tell_the_peer_no_path(self) -> None:
        """When the receiver cannot give the verified file its name (the rename fails with
        an error naming its folder), then both ends stop for good with the reason, and the
        sender hears it without the receiver's folder or file name; the same for a write
        that fails otherwise than with a full disk."""
        prepared = make_prepared(self, 2 * CHUNK)
        directory = short_tempdir(self)
        partial = PartialFile.create(directory, prepared.offer)
        secret = os.path.join(directory, "private-inbox", "data.bin")

        def denied(reread: bool = False) -> str:
            raise PermissionError(errno.EACCES, "Permission denied", secret)

        partial.finish = denied  # type: ignore[method-assign]
        _s, _receiver, send_rec, recv_rec = connect_pair(self, partial, FileSource(prepared))
        self.flushLoggedErrors(PermissionError)
        ended = self.successResultOf(recv_rec.finished)
        said = "finishing the file failed: Permission denied"
        self.assertEqual(ended, ("ended", (said, False)))
        self.assertEqual(
            self.successResultOf(send_rec.finished),
            ("ended", (f"the receiver cancelled: {said}", False)),
        )
        other = PartialFile.create(short_tempdir(self), prepared.offer)

        def broken(data: Any, offset: int) -> None:
            raise OSError(errno.EIO, "Input/output error", secret)

        other._write = broken  # type: ignore[method-assign]
        _s, _r, send_rec, _recv_rec = connect_pair(self, other, FileSource(prepared))
        self.flushLoggedErrors(OSError)
        self.assertEqual(
            self.successResultOf(send_rec.finished),
            (
                "ended",
                ("the receiver cancelled: writing the file failed: Input/output error", False),
            ),
        )


class SlowTransport(StringTransport):
    """A transport whose buffer drains only when the test says so, pausing its producer."""

    high_water = 256 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.max_buffered = 0
        self.paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self._check()

    def writeSequence(self, seq: Any) -> None:
        super().writeSequence(seq)
        self._check()

    def _check(self) -> None:
        size = len(self.io.getvalue())
        self.max_buffered = max(self.max_buffered, size)
        if size > self.high_water and not self.paused and self.producer is not None:
            self.paused = True
            self.producer.pauseProducing()

    def drain(self, n: int) -> bytes:
        data = self.io.getvalue()
        self.io = io.BytesIO()
        self.io.write(data[n:])
        if self.paused and len(data) - n <= self.high_water // 2:
            self.paused = False
            self.producer.resumeProducing()
        return data[:n]


Job = tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]


class SlowDisk:
    """A receiver of *prepared* whose worker jobs wait in :attr:`jobs` until the test runs them."""

    def __init__(self, case: TestCase, prepared: PreparedFile) -> None:
        self.partial = PartialFile.create(short_tempdir(case), prepared.offer)
        case.addCleanup(self.partial.close)
        self.jobs: list[Job] = []
        self.recorder = Recorder()
        self.receiver = TransferReceiver(self.partial, self.recorder, run_blocking=self.run)
        self.transport = StringTransport()
        self.receiver.makeConnection(self.transport)
        have = parse_transfer_record(feed(FrameDecoder(4096), self.transport.value())[0])
        assert isinstance(have, Have)
        offer = prepared.offer
        self.cipher = ChunkCipher.for_connection(offer.secret, offer.transfer_id, have.epoch)

    def run(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((f, args, d))
        return d

    def run_next(self) -> None:
        f, args, d = self.jobs.pop(0)
        d.callback(f(*args))


class BackpressureTests(TestCase):
    def test_slow_consumer_bounds_sender_buffer(self) -> None:
        """When the network drains slowly while a 16 MiB file is sent, then the sender's
        buffered bytes never exceed the high-water mark plus one window of chunks, and every
        chunk still goes out."""
        prepared = make_prepared(self, 16 * 1024 * 1024)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        sender = TransferSender(source, Recorder(), run_blocking=run_now)
        transport = SlowTransport()
        sender.makeConnection(transport)
        sender.dataReceived(frame(Have(prepared.offer.transfer_id, b"\x01" * 16, ())))
        decoder = FrameDecoder(MAX_TRANSFER_FRAME)
        chunks = 0
        ended = False
        while not ended:
            for payload in feed(decoder, transport.drain(100_000)):
                record = parse_transfer_record(payload)
                if isinstance(record, Piece):
                    chunks += 1
                    sender.dataReceived(frame(Ack(record.index, record.piece)))
                ended = isinstance(record, End)
        bound = SlowTransport.high_water + DEFAULT_WINDOW * (CHUNK + CHUNK_OVERHEAD + 14)
        self.assertLessEqual(transport.max_buffered, bound)
        self.assertLess(bound, prepared.offer.size // 8)
        self.assertEqual(chunks, prepared.offer.chunks)
        self.assertLessEqual(sender.max_in_flight, DEFAULT_WINDOW)

    def test_slow_disk_pauses_reading(self) -> None:
        """When the disk is slow, then the receiver keeps at most one window of chunks waiting,
        stops reading the socket, and resumes when the disk catches up."""
        prepared = make_prepared(self, 20 * CHUNK)
        partial = PartialFile.create(short_tempdir(self), prepared.offer)
        jobs: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]] = []

        def slow_disk(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            jobs.append((f, args, d))
            return d

        recorder = Recorder()
        receiver = TransferReceiver(partial, recorder, run_blocking=slow_disk)
        transport = StringTransport()
        receiver.makeConnection(transport)
        have = parse_transfer_record(feed(FrameDecoder(4096), transport.value())[0])
        assert isinstance(have, Have)
        offer = prepared.offer
        cipher = ChunkCipher.for_connection(offer.secret, offer.transfer_id, have.epoch)
        stream = b"".join(frame(p) for p in manifest_pages(prepared.chunk_hashes))
        with open(prepared.path, "rb") as f:
            for i in range(offer.chunks):
                stream += frame(Piece(i, 0, cipher.seal(i, f.read(CHUNK))))
        stream += frame(End())
        receiver.dataReceived(stream)
        self.assertEqual(transport.producerState, "paused")
        self.assertLessEqual(len(jobs), DEFAULT_WINDOW)
        most = 0
        while jobs:
            # Page-preparation jobs hold no chunk buffer: the window bounds the chunks.
            most = max(most, sum(1 for j in jobs if j[0] != partial.prepare_chunks))
            f, args, d = jobs.pop(0)
            d.callback(f(*args))
        self.assertLessEqual(most, DEFAULT_WINDOW)
        self.assertEqual(transport.producerState, "producing")
        kind, final = self.successResultOf(recorder.finished)
        self.assertEqual(kind, "completed")
        self.assertEqual(file_sha256(final), file_sha256(prepared.path))
        self.assertIn(frame(Complete(offer.transfer_id)), transport.value())
        sent_back = [parse_transfer_record(p) for p in feed(FrameDecoder(4096), transport.value())]
        acks = [r.index for r in sent_back if isinstance(r, Ack)]
        self.assertEqual(acks, list(range(offer.chunks)))

    def test_chunks_buffered_when_the_connection_drops_are_kept(self) -> None:
        """When the connection is lost while complete chunks still wait behind a slow disk,
        then they are stored before the (resumable) loss is reported, so the next connection's
        Have holds every chunk that had arrived whole and only the one cut off is sent again."""
        prepared = make_prepared(self, 12 * CHUNK)
        disk = SlowDisk(self, prepared)
        jobs, partial, recorder, receiver = disk.jobs, disk.partial, disk.recorder, disk.receiver
        cipher = disk.cipher
        stream = b"".join(frame(p) for p in manifest_pages(prepared.chunk_hashes))
        with open(prepared.path, "rb") as f:
            for i in range(10):
                stream += frame(Piece(i, 0, cipher.seal(i, f.read(CHUNK))))
            cut = frame(Piece(10, 0, cipher.seal(10, f.read(CHUNK))))
        receiver.dataReceived(stream + cut[: len(cut) // 2])
        self.assertLessEqual(len(jobs), DEFAULT_WINDOW)
        receiver.connectionLost(Failure(ConnectionLost("gone")))
        self.assertFalse(recorder.finished.called)
        while jobs:
            f, args, d = jobs.pop(0)
            d.callback(f(*args))
        kind, (reason, resumable) = self.successResultOf(recorder.finished)
        self.assertEqual((kind, resumable), ("ended", True))
        self.assertIn("connection lost", reason)
        self.assertEqual(partial.held_ranges(), ((0, 10),))

    def test_pieces_wait_for_the_manifest_to_be_stored(self) -> None:
        """When pieces arrive while the manifest is still being written to the sidecar (a
        worker job not yet done), then no piece job starts until it is (a piece checked
        before the manifest is stored would fail the transfer), and then they are stored."""
        prepared = make_prepared(self, 4 * CHUNK)
        disk = SlowDisk(self, prepared)
        stream = b"".join(frame(p) for p in manifest_pages(prepared.chunk_hashes))
        with open(prepared.path, "rb") as f:
            for i in range(2):
                stream += frame(Piece(i, 0, disk.cipher.seal(i, f.read(CHUNK))))
        disk.receiver.dataReceived(stream)
        self.assertEqual([j[0] for j in disk.jobs], [disk.partial.set_manifest])
        disk.run_next()
        self.assertEqual(len(disk.jobs), 1)  # the piece lane, now
        disk.run_next()
        self.assertEqual(disk.partial.held_ranges(), ((0, 2),))

    def test_next_chunks_pages_prepared_after_each_ack(self) -> None:
        """When a chunk is stored and acknowledged, then a worker job prepares the next chunks'
        pages (PREPARE_AHEAD of them, each asked for once), and the receiver does not report
        itself settled (the partial file may be closed) while that job still runs."""
        prepared = make_prepared(self, 6 * CHUNK)
        partial = PartialFile.create(short_tempdir(self), prepared.offer)
        self.addCleanup(partial.close)
        jobs: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]] = []

        def slow_disk(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            jobs.append((f, args, d))
            return d

        def run(job: tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]) -> None:
            f, args, d = job
            d.callback(f(*args))

        receiver = TransferReceiver(partial, Recorder(), run_blocking=slow_disk)
        transport = StringTransport()
        receiver.makeConnection(transport)
        have = parse_transfer_record(feed(FrameDecoder(4096), transport.value())[0])
        assert isinstance(have, Have)
        offer = prepared.offer
        cipher = ChunkCipher.for_connection(offer.secret, offer.transfer_id, have.epoch)
        receiver.dataReceived(b"".join(frame(p) for p in manifest_pages(prepared.chunk_hashes)))
        run(jobs.pop(0))  # the manifest
        prepares: list[tuple[Any, ...]] = []
        with open(prepared.path, "rb") as f:
            for i in range(2):
                receiver.dataReceived(frame(Piece(i, 0, cipher.seal(i, f.read(CHUNK)))))
                run(jobs.pop(0))  # the chunk: stored, acknowledged
                self.assertEqual([j[0] for j in jobs], [partial.prepare_chunks])
                prepares.append(jobs[0][1])
                if i == 0:
                    run(jobs.pop(0))
        self.assertEqual(prepares, [(1, 1 + PREPARE_AHEAD), (1 + PREPARE_AHEAD, 2 + PREPARE_AHEAD)])
        settled = receiver.when_settled()
        receiver.connectionLost(Failure(ConnectionLost("gone")))
        self.assertNoResult(settled)  # the second prepare job still runs
        run(jobs.pop(0))
        self.successResultOf(settled)
        self.assertEqual(partial.held_ranges(), ((0, 2),))
        sent_back = [parse_transfer_record(p) for p in feed(FrameDecoder(4096), transport.value())]
        self.assertEqual([r.index for r in sent_back if isinstance(r, Ack)], [0, 1])

    def test_periodic_sync_runs_beside_the_lane(self) -> None:
        """When SYNC_EVERY bytes are held, then the fsync runs as a job of its own while the
        lane goes on storing the next chunk (the lane never waits for the disk); the file is
        finished only after that job, and the receiver is not settled while it runs."""
        from jarvis.files import receive

        self.patch(receive, "SYNC_EVERY", 2 * CHUNK)
        prepared = make_prepared(self, 3 * CHUNK)
        disk = SlowDisk(self, prepared)
        partial, receiver = disk.partial, disk.receiver
        receiver.dataReceived(b"".join(frame(p) for p in manifest_pages(prepared.chunk_hashes)))
        disk.run_next()  # the manifest

        def names() -> list[str]:
            return [getattr(f, "__name__", "") for f, _args, _d in disk.jobs]

        with open(prepared.path, "rb") as f:
            for i in range(3):
                receiver.dataReceived(frame(Piece(i, 0, disk.cipher.seal(i, f.read(CHUNK)))))
                while "_drain_lane" in names():
                    f_, args, d = disk.jobs.pop(names().index("_drain_lane"))
                    d.callback(f_(*args))
                if i == 1:
                    self.assertIn("sync", names())  # due after the second chunk
                    sync_job = disk.jobs.pop(names().index("sync"))
        receiver.dataReceived(frame(End()))
        self.assertEqual(partial.held_ranges(), ((0, 3),))  # the lane went on meanwhile
        self.assertNotIn("<lambda>", names())  # no finish while the sync runs
        f_, args, d = sync_job
        d.callback(f_(*args))
        self.assertIn("<lambda>", names())  # now the finish job
        while disk.jobs:
            disk.run_next()
        kind, _detail = self.successResultOf(disk.recorder.finished)
        self.assertEqual(kind, "completed")

    def test_cancel_from_sender_ends_for_good(self) -> None:
        """When the sender cancels, then the receiver reports a final end, not a resumable one,
        quoting the sender's reason with its escape and bidi characters made visible."""
        prepared = make_prepared(self, CHUNK)
        partial = PartialFile.create(short_tempdir(self), prepared.offer)
        self.addCleanup(partial.close)
        recorder = Recorder()
        receiver = TransferReceiver(partial, recorder, run_blocking=run_now)
        receiver.makeConnection(StringTransport())
        receiver.dataReceived(frame(Cancel(prepared.offer.transfer_id, "user\x1b[2J\u202e")))
        expected = ("ended", ("the sender cancelled: user\\x1b[2J\\u202e", False))
        self.assertEqual(self.successResultOf(recorder.finished), expected)


class AckTests(TestCase):
    def start(self, chunks: int, **kwargs: Any) -> tuple[TransferSender, StringTransport, Any]:
        prepared = make_prepared(self, chunks * CHUNK)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        recorder = Recorder()
        sender = TransferSender(source, recorder, run_blocking=run_now, **kwargs)
        transport = StringTransport()
        sender.makeConnection(transport)
        sender.dataReceived(frame(Have(prepared.offer.transfer_id, b"\x01" * 16, ())))
        return sender, transport, recorder

    def chunks_in(self, transport: StringTransport) -> list[int]:
        payloads = feed(FrameDecoder(2 * CHUNK), transport.value())
        records = [parse_transfer_record(p) for p in payloads]
        return [r.index for r in records if isinstance(r, Piece)]

    def test_one_chunk_unacknowledged_then_the_next(self) -> None:
        """When the receiver acknowledges each chunk, then the sender never has more than one
        on the connection, yet has the next one sealed and written as soon as the ack comes."""
        sender, transport, _ = self.start(5)
        self.assertEqual(self.chunks_in(transport), [0])
        self.assertEqual(sender.max_in_flight, DEFAULT_WINDOW)  # sealed ahead meanwhile
        for i in range(5):
            self.assertEqual(self.chunks_in(transport)[-1], i)
            sender.dataReceived(frame(Ack(i)))
        self.assertEqual(self.chunks_in(transport), [0, 1, 2, 3, 4])
        self.assertEqual(sender.max_unacked_bytes, CHUNK)
        self.assertTrue(transport.value().endswith(frame(End())))

    def test_silent_receiver_times_out_resumably(self) -> None:
        """When the receiver never acknowledges (a stuck disk, an older peer), then exactly one
        chunk goes out, and after the ack timeout the connection is dropped as resumable."""
        clock = Clock()
        _sender, transport, recorder = self.start(3, clock=clock, ack_timeout=60)
        self.assertEqual(self.chunks_in(transport), [0])
        clock.advance(59)
        self.assertFalse(recorder.finished.called)
        clock.advance(1)
        self.assertEqual(
            self.successResultOf(recorder.finished),
            ("ended", ("the receiver acknowledged no chunk in 60 s", True)),
        )
        self.assertEqual(self.chunks_in(transport), [0])
        self.assertTrue(transport.disconnecting)

    def test_ack_wait_restarts_when_the_transport_takes_the_chunk(self) -> None:
        """When the transport keeps the sender paused for a while (a slow path), then the ack
        timeout counts from when it resumes the sender, not from the write."""
        clock = Clock()
        sender, transport, recorder = self.start(3, clock=clock, ack_timeout=120)
        sender.pauseProducing()
        clock.advance(100)
        sender.resumeProducing()
        clock.advance(100)
        self.assertFalse(recorder.finished.called)
        sender.dataReceived(frame(Ack(0)))
        self.assertEqual(self.chunks_in(transport), [0, 1])
        clock.advance(119)
        self.assertFalse(recorder.finished.called)
        clock.advance(1)
        kind, (reason, resumable) = self.successResultOf(recorder.finished)
        self.assertEqual((kind, resumable), ("ended", True))
        self.assertIn("acknowledged no chunk in 120 s", reason)

    def test_both_ends_turn_nagle_off(self) -> None:
        """When a transfer connection starts, then the sender and the receiver turn Nagle's
        algorithm off on their TCP transport (each chunk waits for an Ack: a delayed segment
        would stall every chunk), and a transport that refuses is left alone."""

        class TcpLike(StringTransport):
            def __init__(self, fail: bool = False) -> None:
                super().__init__()
                self.calls: list[bool] = []
                self.fail = fail

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.calls.append(enabled)
                if self.fail:
                    raise OSError("not a TCP socket")

        prepared = make_prepared(self, CHUNK)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        partial = PartialFile.create(short_tempdir(self), prepared.offer)
        self.addCleanup(partial.close)
        for fail in (False, True):
            sending, receiving = TcpLike(fail), TcpLike(fail)
            TransferSender(source, Recorder(), run_blocking=run_now).makeConnection(sending)
            TransferReceiver(partial, Recorder(), run_blocking=run_now).makeConnection(receiving)
            self.assertEqual((sending.calls, receiving.calls), ([True], [True]))
            self.assertTrue(receiving.value())  # the Have went out all the same

    def test_ack_of_a_chunk_not_sent_is_refused(self) -> None:
        """When an acknowledgement names a piece that is not the oldest on the connection,
        then the connection ends (resumable) and no further chunk goes out."""
        sender, transport, recorder = self.start(3)
        sender.dataReceived(frame(Ack(2)))
        kind, (reason, resumable) = self.successResultOf(recorder.finished)
        self.assertEqual((kind, resumable), ("ended", True))
        self.assertIn("acknowledgement of piece 0 of chunk 2, not the next one sent", reason)
        self.assertEqual(self.chunks_in(transport), [0])

    def test_wider_window_keeps_that_many(self) -> None:
        """When the ack window is 3, then three chunks go out before any acknowledgement."""
        sender, transport, _ = self.start(5, ack_window=3, window=3)
        self.assertEqual(self.chunks_in(transport), [0, 1, 2])
        sender.dataReceived(frame(Ack(0)))
        self.assertEqual(self.chunks_in(transport), [0, 1, 2, 3])
        self.assertEqual(sender.max_unacked_bytes, 3 * CHUNK)


#: A chunk size of four pieces.
FOUR_PIECES = 4 * PIECE_SIZE


def ack_all(sender: TransferSender, case: Any, transport: StringTransport, start: int = 0) -> None:
    """Acknowledge every piece on *transport* from the *start*-th, oldest first, as each
    acknowledgement lets more out."""
    acked = start
    while acked < len(case.pieces_in(transport)):
        sender.dataReceived(frame(Ack(*case.pieces_in(transport)[acked])))
        acked += 1


class PieceSendingTests(TestCase):
    """A chunk of four pieces goes out piece by piece, acknowledged one by one."""

    def start(self, partial: tuple[tuple[int, int], ...] = ()) -> Any:
        prepared = make_prepared(self, 3 * FOUR_PIECES, chunk=FOUR_PIECES)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        sender = TransferSender(source, Recorder(), run_blocking=run_now)
        transport = StringTransport()
        sender.makeConnection(transport)
        tid = prepared.offer.transfer_id
        sender.dataReceived(frame(Have(tid, b"\x01" * 16, (), partial)))
        return sender, transport

    def pieces_in(self, transport: StringTransport) -> list[tuple[int, int]]:
        payloads = feed(FrameDecoder(2 * FOUR_PIECES), transport.value())
        records = [parse_transfer_record(p) for p in payloads]
        return [(r.index, r.piece) for r in records if isinstance(r, Piece)]

    def test_one_chunks_bytes_unacknowledged_across_chunks(self) -> None:
        """When the receiver has acknowledged nothing, then the four pieces of the first chunk
        (one chunk's bytes) are on the connection and no more; each acknowledgement lets one
        more piece out, the next chunk's first pieces while the first chunk's last are still
        unacknowledged, so the unacknowledged bytes never exceed one chunk."""
        sender, transport = self.start()
        self.assertEqual(self.pieces_in(transport), [(0, 0), (0, 1), (0, 2), (0, 3)])
        sender.dataReceived(frame(Ack(0, 0)))
        self.assertEqual(self.pieces_in(transport)[-1], (1, 0))
        ack_all(sender, self, transport, start=1)
        self.assertEqual(len(self.pieces_in(transport)), 12)
        self.assertEqual(sender.max_unacked_bytes, FOUR_PIECES)

    def test_receiver_cut_off_mid_chunk_gets_only_the_rest(self) -> None:
        """When the receiver's Have says two pieces of chunk 1 are written, then chunk 1 goes
        out from its third piece, and the other chunks whole."""
        sender, transport = self.start(partial=((1, 2),))
        self.assertEqual(self.pieces_in(transport), [(0, 0), (0, 1), (0, 2), (0, 3)])
        ack_all(sender, self, transport)
        self.assertEqual(
            self.pieces_in(transport),
            [(0, 0), (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)],
        )


class BatchTests(TestCase):
    """A chunk of more pieces than a batch is read and sealed a batch at a time."""

    def test_big_chunk_read_and_sealed_a_batch_at_a_time(self) -> None:
        """When a chunk has twice SEND_BATCH_PIECES pieces, then the sender reads and seals it in
        two jobs of SEND_BATCH_PIECES pieces, and holds at most one sealed batch besides the one
        being written (the next chunk's two batches once all of chunk 0 is out); all the
        chunk's pieces go out before any acknowledgement (one chunk's bytes), and no piece of
        the next chunk."""
        chunk = 2 * SEND_BATCH_PIECES * PIECE_SIZE
        prepared = make_prepared(self, 2 * chunk, chunk=chunk)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        jobs: list[tuple[Any, ...]] = []

        def run(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
            if getattr(f, "__name__", "") == "_read_sealed":
                jobs.append(args[1:])
            return run_now(f, *args)

        sender = TransferSender(source, Recorder(), run_blocking=run)
        transport = StringTransport()
        sender.makeConnection(transport)
        sender.dataReceived(frame(Have(prepared.offer.transfer_id, b"\x01" * 16, (), ())))
        payloads = feed(FrameDecoder(2 * PIECE_SIZE), transport.value())
        records = [parse_transfer_record(p) for p in payloads]
        pieces = [(r.index, r.piece) for r in records if isinstance(r, Piece)]
        self.assertEqual(pieces, [(0, p) for p in range(2 * SEND_BATCH_PIECES)])
        self.assertEqual(
            jobs,
            [
                (0, 0, SEND_BATCH_PIECES),
                (0, SEND_BATCH_PIECES, 2 * SEND_BATCH_PIECES),
                (1, 0, SEND_BATCH_PIECES),
                (1, SEND_BATCH_PIECES, 2 * SEND_BATCH_PIECES),
            ],
        )
        self.assertEqual(sender.max_in_flight, DEFAULT_WINDOW)
        self.assertEqual(sender.max_unacked_bytes, chunk)

    def test_batches_sealed_at_once_go_out_in_order(self) -> None:
        """When the window lets three batches be sealed at once and their jobs end in another
        order than they started (last first), then the pieces still go out in order, each
        batch once the ones before it are out, and never more than three batches are held."""
        chunk = 4 * SEND_BATCH_PIECES * PIECE_SIZE
        prepared = make_prepared(self, chunk, chunk=chunk)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        jobs: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]] = []

        def held(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            jobs.append((f, args, d))
            return d

        sender = TransferSender(source, Recorder(), run_blocking=held, window=3)
        transport = StringTransport()
        sender.makeConnection(transport)
        sender.dataReceived(frame(Have(prepared.offer.transfer_id, b"\x01" * 16, (), ())))
        b = SEND_BATCH_PIECES
        self.assertEqual(
            [args[1:] for _f, args, _d in jobs], [(0, 0, b), (0, b, 2 * b), (0, 2 * b, 3 * b)]
        )

        def pieces_out() -> list[tuple[int, int]]:
            payloads = feed(FrameDecoder(2 * PIECE_SIZE), transport.value())
            records = [parse_transfer_record(p) for p in payloads]
            return [(r.index, r.piece) for r in records if isinstance(r, Piece)]

        last = jobs.pop()
        last[2].callback(last[0](*last[1]))
        self.assertEqual(pieces_out(), [])  # the third batch waits for the first two
        middle = jobs.pop()
        middle[2].callback(middle[0](*middle[1]))
        self.assertEqual(pieces_out(), [])
        first = jobs.pop()
        first[2].callback(first[0](*first[1]))
        self.assertEqual(pieces_out(), [(0, p) for p in range(3 * b)])
        self.assertEqual([args[1:] for _f, args, _d in jobs], [(0, 3 * b, 4 * b)])
        self.assertEqual(sender.max_in_flight, 3)


class HostilePieceTests(TestCase):
    """Pieces that break the rules end the connection with a clear reason and store nothing."""

    def receiver_with_manifest(self) -> tuple[SlowDisk, PreparedFile]:
        prepared = make_prepared(self, 2 * FOUR_PIECES, chunk=FOUR_PIECES)
        disk = SlowDisk(self, prepared)
        disk.receiver.dataReceived(
            b"".join(frame(p) for p in manifest_pages(prepared.chunk_hashes))
        )
        disk.run_next()  # the manifest is stored
        return disk, prepared

    def piece(self, disk: SlowDisk, prepared: PreparedFile, index: int, n: int) -> bytes:
        with open(prepared.path, "rb") as f:
            f.seek(index * FOUR_PIECES + n * PIECE_SIZE)
            data = f.read(PIECE_SIZE)
        return frame(Piece(index, n, disk.cipher.seal(index, data, n)))

    def test_piece_out_of_order_ends_the_connection(self) -> None:
        """When a chunk's second piece comes before its first, then the connection ends
        (resumable: a new connection starts the chunk over), with the reason, and no piece
        job ran."""
        disk, prepared = self.receiver_with_manifest()
        disk.receiver.dataReceived(self.piece(disk, prepared, 0, 1))
        kind, (reason, resumable) = self.successResultOf(disk.recorder.finished)
        self.assertEqual((kind, resumable), ("ended", True))
        self.assertIn("piece 1 of chunk 0 out of order", reason)
        self.assertEqual(disk.jobs, [])
        self.assertTrue(disk.transport.disconnecting)

    def test_piece_of_the_wrong_size_ends_the_connection(self) -> None:
        """When a piece is shorter than its place in the chunk says, then the connection ends
        before the piece is opened."""
        disk, _prepared = self.receiver_with_manifest()
        short = frame(Piece(0, 0, disk.cipher.seal(0, b"x" * 100, 0)))
        disk.receiver.dataReceived(short)
        kind, (reason, resumable) = self.successResultOf(disk.recorder.finished)
        self.assertEqual((kind, resumable), ("ended", True))
        self.assertIn("sealed piece size out of range", reason)
        self.assertEqual(disk.jobs, [])

    def test_have_claiming_more_pieces_than_a_chunk_has_is_refused(self) -> None:
        """When the receiver's Have says a chunk has as many pieces written as it has in all,
        then the sender ends the connection (resumable) and sends no piece."""
        prepared = make_prepared(self, 2 * FOUR_PIECES, chunk=FOUR_PIECES)
        sender, recorder, transport = connected_sender(self, prepared)
        tid = prepared.offer.transfer_id
        # Have refuses this at parse time; a record built in memory gets past that.
        have = Have(tid, b"\x01" * 16, (), ((1, 3),))
        object.__setattr__(have, "partial", ((1, 4),))
        sender.dataReceived(frame(have))
        kind, (reason, resumable) = self.successResultOf(recorder.finished)
        self.assertEqual((kind, resumable), ("ended", True))
        self.assertIn("holds more pieces than a chunk has", reason)
        records = [parse_transfer_record(p) for p in feed(FrameDecoder(1 << 20), transport.value())]
        self.assertFalse([r for r in records if isinstance(r, Piece)])


#: What a broken or hostile peer may put on a transfer connection: raw bytes, and frames of
#: version-1 records of any type (known or not) with arbitrary bodies.
GARBAGE = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda kind, body: encode_frame(bytes([1, kind]) + body),
            st.integers(0, 15),
            st.binary(max_size=200),
        ),
    ),
    min_size=1,
    max_size=6,
)


class GarbageTests(TestCase):
    """Whatever bytes the other end sends, an end waits for more or ends with a reason."""

    def assertEndedCleanly(self, recorder: Recorder, transport: StringTransport) -> None:
        # Ended through the observer exactly when the connection is being closed, with words.
        self.assertEqual(recorder.finished.called, transport.disconnecting)
        if recorder.finished.called:
            kind, (reason, _resumable) = self.successResultOf(recorder.finished)
            self.assertEqual(kind, "ended")
            self.assertIsInstance(reason, str)
            self.assertTrue(reason)

    @settings(max_examples=40, deadline=None)
    @given(GARBAGE)
    def test_receiver_after_the_manifest(self, garbage: list[bytes]) -> None:
        """When the sender's side of a connection sends arbitrary bytes and records after a
        valid manifest, then no exception escapes the receiver, it ends the connection only
        through its observer and with a reason, and no chunk is held."""
        prepared = make_prepared(self, 3 * CHUNK)
        partial = PartialFile.create(short_tempdir(self), prepared.offer)
        self.addCleanup(partial.close)
        recorder = Recorder()
        receiver = TransferReceiver(partial, recorder, run_blocking=run_now)
        transport = StringTransport()
        receiver.makeConnection(transport)
        receiver.dataReceived(b"".join(frame(p) for p in manifest_pages(prepared.chunk_hashes)))
        self.assertTrue(partial.manifest_known)
        for data in garbage:
            receiver.dataReceived(data)
        self.assertEndedCleanly(recorder, transport)
        self.assertEqual(partial.held_bytes, 0)

    @settings(max_examples=40, deadline=None)
    @given(GARBAGE)
    def test_sender_before_a_have(self, garbage: list[bytes]) -> None:
        """When the receiver's side of a connection sends arbitrary bytes and records instead
        of its Have, then no exception escapes the sender, it ends the connection only
        through its observer and with a reason, and it sends no piece of the file."""
        sender, recorder, transport = connected_sender(self, make_prepared(self, 3 * CHUNK))
        for data in garbage:
            sender.dataReceived(data)
        self.assertEndedCleanly(recorder, transport)
        sent = [parse_transfer_record(p) for p in feed(FrameDecoder(1 << 20), transport.value())]
        self.assertFalse([r for r in sent if isinstance(r, Piece)])


class LoopbackTests(TestCase):
    timeout = 120

    async def test_over_pinned_tls(self) -> None:
        """When a 32 MiB file is sent behind the pinned mutual TLS of jarvis.net.tls over
        loopback TCP, then it arrives byte-identical: the producers work through TLS."""
        from twisted.internet import reactor
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from jarvis.crypto.identity import IdentityKey
        from jarvis.net import tls

        alice, bob = IdentityKey.generate(), IdentityKey.generate()
        prepared = await deferToThread(make_prepared, self, 32 * 1024 * 1024, 1024 * 1024)
        directory = short_tempdir(self)
        partial = await deferToThread(PartialFile.create, directory, prepared.offer)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        recv_rec, send_rec = Recorder(), Recorder()
        receivers: list[TransferReceiver] = []

        def build(addr: Any) -> TransferReceiver:
            receivers.append(TransferReceiver(partial, recv_rec))
            return receivers[-1]

        inner = protocol.Factory()
        inner.buildProtocol = build  # type: ignore[method-assign]
        server = TLSMemoryBIOFactory(
            tls.server_creator(bob, {alice.uid}.__contains__),  # type: ignore[arg-type]
            False,
            inner,
        )
        port = reactor.listenTCP(0, server, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        sender = TransferSender(source, send_rec)
        client = TLSMemoryBIOFactory(
            tls.client_creator(alice, bob.uid),  # type: ignore[arg-type]
            True,
            protocol.Factory.forProtocol(lambda: sender),  # type: ignore[arg-type]
        )
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        started = time.perf_counter()
        await endpoint.connect(client)
        kind, final = await recv_rec.finished
        seconds = time.perf_counter() - started
        self.assertEqual(kind, "completed")
        self.assertEqual(await send_rec.finished, ("completed", None))
        await receivers[0].when_settled()
        await sender.when_settled()
        self.assertEqual(
            await deferToThread(file_sha256, final),
            await deferToThread(file_sha256, prepared.path),
        )
        self.assertLessEqual(sender.max_in_flight, DEFAULT_WINDOW)
        print(f"\n32 MiB over pinned TLS on loopback: {32 / seconds:.0f} MiB/s")

    async def test_64_mib_killed_halfway_resumes(self) -> None:
        """When a 64 MiB file is sent over loopback TCP and the connection is killed halfway
        and the receiver reopens its partial file from disk, then the second connection sends
        only the missing chunks, no chunk is stored twice, and the file is byte-identical."""
        from twisted.internet import reactor

        size = 64 * 1024 * 1024
        chunk = 1024 * 1024
        prepared = await deferToThread(make_prepared, self, size, chunk)
        offer = prepared.offer
        directory = short_tempdir(self)
        partial = await deferToThread(PartialFile.create, directory, offer)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        current: dict[str, Any] = {}

        def kill_halfway(done: int) -> None:
            if done >= size // 2 and not current.get("killed"):
                current["killed"] = True
                current["receiver"].transport.abortConnection()

        def build(addr: Any) -> TransferReceiver:
            receiver = TransferReceiver(current["partial"], current["recorder"])
            current["receiver"] = receiver
            return receiver

        factory = protocol.Factory()
        factory.buildProtocol = build  # type: ignore[method-assign]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        started = time.perf_counter()
        current.update(partial=partial, recorder=Recorder(on_bytes=kill_halfway))
        sender1 = TransferSender(source, Recorder())
        await endpoints.connectProtocol(endpoint, sender1)
        kind, (_reason, resumable) = await current["recorder"].finished
        self.assertEqual((kind, resumable), ("ended", True))
        receiver1 = current["receiver"]
        await receiver1.when_settled()
        await sender1.when_settled()
        first_seconds = time.perf_counter() - started

        # The receiver "crashes": its objects are dropped and it reopens from disk.
        partial.close()
        reopened = await deferToThread(PartialFile.reopen, directory, offer)
        held_chunks = reopened.held_bytes // chunk
        self.assertEqual(held_chunks, receiver1.chunks_stored)
        self.assertGreaterEqual(held_chunks, offer.chunks // 2)
        self.assertLess(held_chunks, offer.chunks)

        started = time.perf_counter()
        current.update(partial=reopened, recorder=Recorder())
        send_rec2 = Recorder()
        sender2 = TransferSender(source, send_rec2)
        await endpoints.connectProtocol(endpoint, sender2)
        kind, final = await current["recorder"].finished
        self.assertEqual(kind, "completed")
        self.assertEqual(await send_rec2.finished, ("completed", None))
        await current["receiver"].when_settled()
        await sender2.when_settled()
        second_seconds = time.perf_counter() - started

        self.assertEqual(sender2.chunks_sent, offer.chunks - held_chunks)
        self.assertEqual(receiver1.chunks_stored + current["receiver"].chunks_stored, offer.chunks)
        self.assertEqual(
            await deferToThread(file_sha256, final),
            await deferToThread(file_sha256, prepared.path),
        )
        self.assertEqual(sorted(os.listdir(directory)), ["data.bin"])
        # Chunks the first sender wrote that never arrived (in socket buffers when killed):
        lost = sender1.chunks_sent - receiver1.chunks_stored
        print(
            f"\n64 MiB over loopback: first connection {held_chunks} chunks in "
            f"{first_seconds:.2f} s, second {sender2.chunks_sent} chunks in "
            f"{second_seconds:.2f} s, "
            f"{size / (1 << 20) / (first_seconds + second_seconds):.0f} MiB/s overall; "
            f"{lost} chunks were in flight when the connection died"
        )


class WidenBufferTests(TestCase):
    def test_reaches_the_tcp_connection_under_the_wrappers(self) -> None:
        """When a data connection starts, then the TCP transport under its wrappers (TLS, the
        knock) reads DATA_BUFFER bytes at a time, and an in-memory transport is left alone."""
        from twisted.internet.abstract import FileDescriptor
        from twisted.internet.testing import MemoryReactor

        tcp = FileDescriptor(MemoryReactor())
        knock = Wrapper(tcp)
        tls = Wrapper(knock)
        self.assertTrue(widen_buffer(tls))
        self.assertEqual(tcp.bufferSize, DATA_BUFFER)
        self.assertFalse(widen_buffer(StringTransport()))


class Wrapper:
    """A transport wrapping another (as TLS or the knock do)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
