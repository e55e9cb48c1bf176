"""The transfer stream: thin Twisted protocols moving one file's chunks over their own connection.

The connection carries nothing but one transfer (the caller puts it behind the pinned TLS and
the knock, and picks the transfer by its id), so a file never delays chat messages.  Records and
their order are in :mod:`jarvis.protocol.transfer` and ``docs/protocol.md``, "File transfer"::

    receiver                                    sender
       Have(transfer id, epoch, held ranges) -->
                                            <-- ManifestPage ...
                                            <-- Chunk (only the missing ones)
       Ack(index) ---------------------------->
                                            <-- Chunk ...
                                            <-- End
       Complete (or Cancel) ------------------>

The receiver acknowledges each chunk once it is written and marked held; the sender keeps at
most *ack_window* (1) chunks unacknowledged on the connection and seals the next ones ahead on
its threads meanwhile, so a killed receiver costs at most one chunk sent again, and the data in
the socket buffers is bounded by acknowledgements rather than by their size.

Memory stays bounded whatever the file size and the receiver's disk speed:

- :class:`TransferSender` is an ``IPushProducer`` registered with its transport: it keeps at
  most *window* chunks being read and sealed on worker threads, and starts no new read while the
  transport has paused it (its buffer is full because the network or the receiver is slow);
- :class:`TransferReceiver` opens, checks and writes chunks on worker threads and stops reading
  the socket (``transport.pauseProducing()``) while *window* chunks are waiting for the disk, so
  TCP's flow control slows the sender down.

File reads, hashing, sealing, opening and writes all run through *run_blocking* (by default
``deferToThread``); the reactor thread only cuts frames and moves buffers.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jarvis.common.logs import log_id
from jarvis.common.textsafe import terminal_safe
from jarvis.crypto.transfer_keys import ChunkCipher, ChunkRejected, WorkBuffers, new_epoch
from jarvis.files.receive import ChunkMismatch, PartialFile, VerificationFailed
from jarvis.files.send import FileSource, SourceChanged
from jarvis.protocol.framing import FrameDecoder, FrameTooLarge, FramingError, encode_frame
from jarvis.protocol.transfer import (
    CHUNK,
    CHUNK_OVERHEAD,
    HASH_SIZE,
    MAX_HASHES_PER_PAGE,
    TRANSFER_VERSION,
    Ack,
    Cancel,
    Complete,
    End,
    Have,
    MalformedTransferRecord,
    ManifestAssembler,
    ManifestMismatch,
    ManifestPage,
    TransferRecord,
    encode_transfer_record,
    manifest_pages,
    missing_indexes,
    parse_transfer_record,
)

#: Chunks a side keeps in flight on worker threads (reads on the sender, writes on the
#: receiver): 2 keeps a core busy on each side while the peak RSS of a daemon grows by about
#: 16 MiB during a transfer (4 doubled that, tests/test_e2e_files.py measures it).
DEFAULT_WINDOW = 2
#: Chunks the sender puts on the connection before the receiver acknowledges one (written and
#: marked held): 1 means a killed receiver never costs more than one chunk sent again
#: (docs/files.md, "Acknowledgements", measures what it costs).
DEFAULT_ACK_WINDOW = 1
#: Seconds the sender waits for an acknowledgement before it drops the connection (resumable:
#: a stuck disk, or a peer that never acknowledges, does not hang the transfer for ever).  The
#: wait restarts when the transport has taken the chunk (it resumes the sender), so a slow path
#: only needs to carry one chunk in that time (1 MiB in 120 s: about 9 KiB/s).
ACK_TIMEOUT = 120.0
#: Chunks past the last acknowledged one whose pages the receiver brings into the page cache
#: ahead of their writes (:meth:`~jarvis.files.receive.PartialFile.prepare_chunks`).
PREPARE_AHEAD = 2
#: Largest non-chunk frame: a full manifest page.
_CONTROL_MAX_FRAME = 16 + 4 + MAX_HASHES_PER_PAGE * HASH_SIZE + 64
_CHUNK_HEAD = struct.Struct(">IBBQ")
_U64 = struct.Struct(">Q")
_CHUNK_TYPE = bytes([TRANSFER_VERSION, CHUNK])


_LENGTH = struct.Struct(">I")
#: Bytes before the sealed data in a Chunk record: version, type, index.
_CHUNK_PREFIX = 2 + 8
#: Spare chunk-frame buffers a receiver keeps for reuse.
_FRAME_POOL = 4

RunBlocking = Callable[..., "defer.Deferred[Any]"]


class ChunkFrameReader:
    """Cut the sender's byte stream into frames, copying each byte once.

    TLS hands the stream over in pieces of up to 32 KiB; each frame's payload is copied
    straight into a ``bytearray`` of its own length (a full chunk frame's buffer comes from a
    small pool and goes back with :meth:`give_back` once the chunk is stored), instead of
    growing a buffer and slicing a payload and then a record out of it (three more 1 MiB copies
    and as many fresh allocations per chunk, on the reactor thread).  A length above
    *max_frame* is refused as soon as its header arrives, before any of its body is buffered.

    :param max_frame: the largest payload accepted.
    :param pooled: the payload length whose buffers are reused (a full chunk's frame).
    """

    def __init__(self, max_frame: int, pooled: int) -> None:
        self._max_frame = max_frame
        self._pooled = pooled
        self._head = bytearray()
        self._frame: bytearray | None = None
        self._filled = 0
        self._pool: list[bytearray] = []
        #: Complete payloads not yet taken, oldest first.
        self.frames: deque[bytearray] = deque()

    def receive(self, data: bytes) -> None:
        """Take the next piece of the stream.

        :raises FrameTooLarge: if a header announces more than *max_frame*.
        """
        view = memoryview(data)
        off, end = 0, len(data)
        while off < end:
            frame = self._frame
            if frame is None:
                need = 4 - len(self._head)
                self._head += view[off : off + need]
                off += min(need, end - off)
                if len(self._head) < 4:
                    return
                (length,) = _LENGTH.unpack(self._head)
                self._head.clear()
                if length > self._max_frame:
                    raise FrameTooLarge(length, self._max_frame)
                frame = self._pool.pop() if length == self._pooled and self._pool else None
                frame = frame if frame is not None else bytearray(length)
                self._frame, self._filled = frame, 0
            take = min(len(frame) - self._filled, end - off)
            frame[self._filled : self._filled + take] = view[off : off + take]
            self._filled += take
            off += take
            if self._filled == len(frame):
                self.frames.append(frame)
                self._frame = None

    def give_back(self, frame: bytearray) -> None:
        """Return a payload buffer nobody uses any more, for reuse."""
        if len(frame) == self._pooled and len(self._pool) < _FRAME_POOL:
            self._pool.append(frame)


class TransferStreamObserver(TypingProtocol):
    """What a transfer stream reports (the node implements it and feeds its Transfer machine)."""

    def stream_opened(self) -> None:
        """The records of this transfer flow (the receiver sent, or the sender got, Have)."""

    def bytes_done(self, done: int) -> None:
        """Sender: bytes handed to the transport on this connection; receiver: bytes held."""

    def stream_completed(self, final_path: str | None) -> None:
        """The receiver verified the file (*final_path* on the receiving side, else ``None``)."""

    def stream_ended(self, reason: str, resumable: bool) -> None:
        """The connection ended before completion; *resumable* is false for a Cancel or a
        refusal that a new connection would not fix (the transfer has failed).  A peer's
        Cancel reason is quoted in *reason* with control and bidi characters escaped."""


def _frame(record: TransferRecord) -> bytes:
    return encode_frame(encode_transfer_record(record))


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on the TCP connection under *transport* (TLS and the knock
    wrappers pass the call down), where there is one.

    Chunks are acknowledged one at a time: with Nagle on, a frame's short last segment or a
    small Ack waits for the peer's delayed TCP acknowledgement, and every chunk pays that wait.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not a TCP socket (a UNIX socket in a test): nothing to turn off


@implementer(IPushProducer)
class TransferSender(protocol.Protocol):
    """Send one offered file's missing chunks on this connection.

    :param source: the file being sent.
    :param observer: told of progress and the end.
    :param run_blocking: runs a blocking callable off the reactor thread, returning a Deferred.
    :param window: the most chunks read and sealed ahead of the transport.
    :param ack_window: the most chunks on the connection not yet acknowledged by the receiver.
    :param clock: an ``IReactorTime`` for the acknowledgement timeout (``None``: no timeout).
    :param ack_timeout: seconds without an acknowledgement before the connection is dropped.
    """

    log = Logger()

    def __init__(
        self,
        source: FileSource,
        observer: TransferStreamObserver,
        *,
        run_blocking: RunBlocking = deferToThread,
        window: int = DEFAULT_WINDOW,
        ack_window: int = DEFAULT_ACK_WINDOW,
        clock: Any = None,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self._ack_window = ack_window
        self._clock = clock
        self._ack_timeout = ack_timeout
        self._ack_timer: Any = None  # an IDelayedCall
        #: Chunks on the connection not yet acknowledged, oldest first.
        self._unacked: deque[int] = deque()
        self._source = source
        self._offer = source.prepared.offer
        self._observer = observer
        self._run = run_blocking
        self._window = window
        self._decoder = FrameDecoder(_CONTROL_MAX_FRAME)
        self._queue: deque[int] = deque()
        self._cipher: ChunkCipher | None = None
        self._work = WorkBuffers(self._offer.chunk_size + CHUNK_OVERHEAD)
        self._in_flight = 0
        #: Sealed chunks waiting for the transport: (index, plaintext length, whole frame).
        self._ready: deque[tuple[int, int, bytes]] = deque()
        self._pumping = False
        self._pump_again = False
        self._paused = False
        self._stopped = False
        self._end_sent = False
        self._ended = False
        self._settled: list[defer.Deferred[None]] = []
        #: Chunks and bytes handed to the transport on this connection.
        self.chunks_sent = 0
        self.bytes_sent = 0
        #: Most chunks being read or waiting to be written at any time (a memory bound check).
        self.max_in_flight = 0
        #: Most chunks on the connection not yet acknowledged at any time.
        self.max_unacked = 0

    @property
    def _out(self) -> Any:
        # The transport, untyped: zope interfaces do not type-check as Protocol attributes.
        return self.transport

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._out.registerProducer(self, True)
        for page in manifest_pages(self._source.prepared.chunk_hashes):
            self._out.write(_frame(page))

    def dataReceived(self, data: bytes) -> None:
        try:
            self._decoder.receive(data)
            while not self._ended and (payload := self._decoder.next_frame()) is not None:
                self._handle(parse_transfer_record(payload))
        except (FramingError, MalformedTransferRecord) as e:
            self._end(f"bad record from the receiver ({e})", resumable=True)

    def _handle(self, record: TransferRecord) -> None:
        offer = self._offer
        if isinstance(record, Have) and self._cipher is None:
            if record.transfer_id != offer.transfer_id:
                self._end("the receiver asked for another transfer", resumable=False)
                return
            self._cipher = ChunkCipher.for_connection(offer.secret, offer.transfer_id, record.epoch)
            self._queue.extend(missing_indexes(offer.chunks, record.held))
            self.log.info(
                "sending {missing} of {chunks} chunks of transfer {transfer}",
                missing=len(self._queue),
                chunks=offer.chunks,
                transfer=log_id(offer.transfer_id.hex()),
            )
            self._observer.stream_opened()
            self._pump()
        elif isinstance(record, Ack) and self._cipher is not None:
            if record.index not in self._unacked:
                self._end(f"acknowledgement of chunk {record.index}, not sent", resumable=True)
                return
            self._unacked.remove(record.index)
            self._arm_ack_timer()
            self._pump()
        elif isinstance(record, Complete) and record.transfer_id == offer.transfer_id:
            self._ended = True
            self._stop_ack_timer()
            self._observer.stream_completed(None)
            self._out.loseConnection()
        elif isinstance(record, Cancel) and record.transfer_id == offer.transfer_id:
            reason = terminal_safe(record.reason, keep_newlines=False)
            self._end(f"the receiver cancelled: {reason}", resumable=False, cancel=False)
        else:
            self._end(f"unexpected {type(record).__name__} record", resumable=True)

    def _read_sealed(self, cipher: ChunkCipher, index: int) -> tuple[int, int, bytes]:
        # Worker thread: read (checking the file did not change), seal, and build the whole
        # frame as one bytes object, which the TLS transport takes without another copy.
        data = self._source.read_chunk(index)
        head = _CHUNK_HEAD.pack(2 + 8 + len(data) + CHUNK_OVERHEAD, TRANSFER_VERSION, CHUNK, index)
        with self._work.pair() as work:
            return index, len(data), cipher.seal_frame(index, data, head, work)

    def _pump(self) -> None:
        # Chunks are read and sealed ahead while the transport is paused, up to *window*
        # held (being read, or sealed and waiting): the socket never waits for a read after a
        # resume, and memory stays bounded.  Re-entrant calls (a synchronous run_blocking, a
        # write that pauses or resumes us) only ask the running loop for another round.
        if self._pumping:
            self._pump_again = True
            return
        cipher = self._cipher
        if cipher is None:
            return
        self._pumping = True
        try:
            while not self._stopped:
                self._pump_again = False
                while self._in_flight + len(self._ready) < self._window and self._queue:
                    index = self._queue.popleft()
                    self._in_flight += 1
                    held = self._in_flight + len(self._ready)
                    self.max_in_flight = max(self.max_in_flight, held)
                    d = self._run(self._read_sealed, cipher, index)
                    d.addCallbacks(self._chunk_ready, self._read_failed)
                if self._ready and not self._paused and len(self._unacked) < self._ack_window:
                    index, length, frame = self._ready.popleft()
                    self._unacked.append(index)
                    self.max_unacked = max(self.max_unacked, len(self._unacked))
                    self._arm_ack_timer()
                    self._out.write(frame)  # may pause us at once
                    self.chunks_sent += 1
                    self.bytes_sent += length
                    self._observer.bytes_done(self.bytes_sent)
                    continue
                if not self._pump_again:
                    break
        finally:
            self._pumping = False
        if (
            not self._queue
            and not self._ready
            and self._in_flight == 0
            and not self._end_sent
            and not self._stopped
        ):
            self._end_sent = True
            self._out.write(_frame(End()))

    def _arm_ack_timer(self) -> None:
        # Runs while a chunk waits for its acknowledgement; restarted by each one.
        self._stop_ack_timer()
        if self._unacked and self._clock is not None and not self._stopped:
            self._ack_timer = self._clock.callLater(self._ack_timeout, self._ack_timed_out)

    def _stop_ack_timer(self) -> None:
        if self._ack_timer is not None and self._ack_timer.active():
            self._ack_timer.cancel()
        self._ack_timer = None

    def _ack_timed_out(self) -> None:
        self._ack_timer = None
        self._end(
            f"the receiver acknowledged no chunk in {self._ack_timeout:.0f} s", resumable=True
        )

    def _chunk_ready(self, parts: tuple[int, int, bytes]) -> None:
        self._in_flight -= 1
        if not self._stopped:
            self._ready.append(parts)
        self._pump()
        self._check_settled()

    def _read_failed(self, failure: Failure) -> None:
        self._in_flight -= 1
        if failure.check(SourceChanged):
            self._end("the file changed after it was offered", resumable=False)
        else:
            self.log.failure("reading a chunk failed", failure)
            self._end(f"reading the file failed: {failure.getErrorMessage()}", resumable=False)
        self._check_settled()

    def _end(self, reason: str, *, resumable: bool, cancel: bool = True) -> None:
        if self._ended:
            return
        self._ended = True
        self._stopped = True
        self._stop_ack_timer()
        if cancel and not resumable:
            self._out.write(_frame(Cancel(self._offer.transfer_id, reason[:200])))
        self._observer.stream_ended(reason, resumable)
        self._out.loseConnection()

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._unacked:
            self._arm_ack_timer()  # the transport took what was written: wait from now
        self._pump()

    def stopProducing(self) -> None:
        self._stopped = True

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._stopped = True
        self._stop_ack_timer()
        self.log.info(
            "transfer {transfer}: {sent} chunks sent on this connection",
            transfer=log_id(self._offer.transfer_id.hex()),
            sent=self.chunks_sent,
        )
        if not self._ended:
            self._ended = True
            self._observer.stream_ended(f"connection lost: {reason.getErrorMessage()}", True)
        self._check_settled()

    def when_settled(self) -> defer.Deferred[None]:
        """Return a Deferred that fires once the connection is gone and no read is running."""
        d: defer.Deferred[None] = defer.Deferred()
        self._settled.append(d)
        self._check_settled()
        return d

    def _check_settled(self) -> None:
        if self._stopped and self._in_flight == 0:
            waiting, self._settled = self._settled, []
            for d in waiting:
                d.callback(None)


class TransferReceiver(protocol.Protocol):
    """Receive one accepted file into its :class:`~jarvis.files.receive.PartialFile`.

    :param partial: the partial file (created or reopened off the reactor thread).
    :param observer: told of progress and the end.
    :param run_blocking: runs a blocking callable off the reactor thread, returning a Deferred.
    :param window: the most chunks waiting for the disk before the socket is paused.
    :param reread_on_finish: re-read the whole file for the final check
        (:meth:`PartialFile.finish`); off saves about 1 CPU second per GiB.
    """

    log = Logger()

    def __init__(
        self,
        partial: PartialFile,
        observer: TransferStreamObserver,
        *,
        run_blocking: RunBlocking = deferToThread,
        window: int = DEFAULT_WINDOW,
        reread_on_finish: bool = True,
    ) -> None:
        self._partial = partial
        self._reread = reread_on_finish
        self._offer = partial.offer
        self._observer = observer
        self._run = run_blocking
        self._window = window
        full_chunk = _CHUNK_PREFIX + self._offer.chunk_size + CHUNK_OVERHEAD
        self._reader = ChunkFrameReader(max(_CONTROL_MAX_FRAME, full_chunk), full_chunk)
        self._work = WorkBuffers(self._offer.chunk_size + CHUNK_OVERHEAD)
        self._assembler = ManifestAssembler(self._offer)
        self._manifest_ready = False
        self._cipher: ChunkCipher | None = None
        self._pending = 0
        #: Page-cache preparation jobs running (the file stays open until they end).
        self._preparing = 0
        #: Chunks below this index were already asked for (prepare_chunks).
        self._prepared_to = 0
        self._reading_paused = False
        self._end_received = False
        self._finishing = False
        self._ended = False
        self._gone = False
        self._settled: list[defer.Deferred[None]] = []
        #: Chunks this connection stored (new ones only).
        self.chunks_stored = 0

    @property
    def _out(self) -> Any:
        # The transport, untyped: zope interfaces do not type-check as Protocol attributes.
        return self.transport

    def connectionMade(self) -> None:
        no_delay(self.transport)
        epoch = new_epoch()
        offer = self._offer
        self._cipher = ChunkCipher.for_connection(offer.secret, offer.transfer_id, epoch)
        have = Have(offer.transfer_id, epoch, self._partial.held_ranges())
        self._out.write(_frame(have))
        self._observer.stream_opened()

    def dataReceived(self, data: bytes) -> None:
        try:
            self._reader.receive(data)
        except FramingError as e:
            self._end(f"bad frame from the sender ({e})", resumable=True)
            return
        self._process()

    def _process(self) -> None:
        frames = self._reader.frames
        try:
            while not self._ended and self._pending < self._window and frames:
                frame = frames.popleft()
                if (
                    len(frame) >= _CHUNK_PREFIX
                    and frame[0] == TRANSFER_VERSION
                    and frame[1] == CHUNK
                ):
                    self._handle_chunk(frame)
                else:
                    self._handle(parse_transfer_record(bytes(frame)))
        except (FramingError, MalformedTransferRecord) as e:
            lying = isinstance(e, ManifestMismatch)
            self._end(f"bad record from the sender ({e})", resumable=not lying, discard=lying)
            return
        if (
            self._pending >= self._window
            and not self._reading_paused
            and not self._ended
            and not self._gone
        ):
            self._reading_paused = True
            self._out.pauseProducing()

    def _handle_chunk(self, frame: bytearray) -> None:
        # A Chunk record, parsed in place: its sealed bytes go to the worker thread without a
        # copy, and the buffer back to the reader once the chunk is stored.
        (index,) = _U64.unpack_from(frame, 2)
        if not self._manifest_ready or index >= self._offer.chunks:
            raise MalformedTransferRecord("chunk before the manifest or out of range")
        if len(frame) < _CHUNK_PREFIX + CHUNK_OVERHEAD:
            raise MalformedTransferRecord("sealed chunk size out of range")
        self._pending += 1
        d = self._run(self._open_and_store, self._cipher, index, frame)
        d.addBoth(self._give_back, frame)
        d.addCallbacks(self._chunk_stored, self._chunk_failed, callbackArgs=(index,))

    def _give_back(self, result: object, frame: bytearray) -> object:
        self._reader.give_back(frame)
        return result

    def _handle(self, record: TransferRecord) -> None:
        if isinstance(record, ManifestPage):
            hashes = self._assembler.add(record)
            if hashes is not None:
                self._manifest_ready = True
                if not self._partial.manifest_known:
                    self._pending += 1
                    d = self._run(self._partial.set_manifest, hashes)
                    d.addCallbacks(self._chunk_stored, self._chunk_failed)
        elif isinstance(record, End):
            self._end_received = True
            self._maybe_finish()
        elif isinstance(record, Cancel) and record.transfer_id == self._offer.transfer_id:
            reason = terminal_safe(record.reason, keep_newlines=False)
            self._end(f"the sender cancelled: {reason}", resumable=False, send=False)
        else:
            raise MalformedTransferRecord(f"unexpected {type(record).__name__} record")

    def _open_and_store(self, cipher: ChunkCipher, index: int, frame: bytearray) -> bool:
        # Worker thread: open into a pair of work buffers, verify and write from there.
        with self._work.pair() as work:
            plain = cipher.open_into(index, memoryview(frame)[_CHUNK_PREFIX:], work)
            return self._partial.store_chunk(index, plain)

    def _chunk_stored(self, new: object, index: int | None = None) -> None:
        self._pending -= 1
        if index is not None and not self._gone and not self._ended:
            # Written and marked held: the sender may put the next chunk on the connection.
            self._out.write(_frame(Ack(index)))
            self._prepare_after(index)
        if new is True:
            self.chunks_stored += 1
            self._observer.bytes_done(self._partial.held_bytes)
        self._after_job()

    def _prepare_after(self, index: int) -> None:
        # While the next chunk crosses the network, a worker thread gets its pages ready, so
        # its write (and so the acknowledgement) does not wait for the kernel's allocation.
        end = min(index + 1 + PREPARE_AHEAD, self._offer.chunks)
        first = max(self._prepared_to, index + 1)
        if first >= end or self._preparing:
            return
        self._prepared_to = end
        self._preparing += 1
        d = self._run(self._partial.prepare_chunks, first, end)
        d.addErrback(lambda f: self.log.failure("preparing pages failed", f))
        d.addBoth(self._prepared)

    def _prepared(self, _: object) -> None:
        self._preparing -= 1
        self._check_settled()

    def _chunk_failed(self, failure: Failure) -> None:
        self._pending -= 1
        if failure.check(ChunkRejected):
            self._end("a chunk failed to open", resumable=True)
        elif failure.check(ChunkMismatch):
            # The chunk opened (only the sender has the key) yet does not match the manifest
            # that matches the offer: the sender lies.
            self._end("a chunk does not match the offered file", resumable=False, discard=True)
        else:
            self.log.failure("storing a chunk failed", failure)
            self._end(f"writing the file failed: {failure.getErrorMessage()}", resumable=False)
        self._after_job()

    def _after_job(self) -> None:
        if not self._ended:
            if self._reading_paused and self._pending < self._window and not self._gone:
                self._reading_paused = False
                self._out.resumeProducing()
            self._process()
            self._maybe_finish()
            self._end_when_drained()
        self._check_settled()

    def _end_when_drained(self) -> None:
        # After the connection is lost, the complete chunks already received are still
        # stored (they are authentic): the resumed transfer re-sends only what was cut off.
        if self._gone and not self._ended and self._pending == 0:
            self._ended = True
            self._observer.stream_ended(self._lost_reason, True)

    def _maybe_finish(self) -> None:
        if self._ended or not self._end_received or self._pending or self._finishing:
            return
        if not self._partial.is_complete():
            self._end("the sender ended with chunks missing", resumable=True)
            return
        self._finishing = True
        self._pending += 1
        finishing = self._run(lambda: self._partial.finish(reread=self._reread))
        finishing.addCallbacks(self._finished, self._finish_failed)

    def _finished(self, final_path: str) -> None:
        self._pending -= 1
        self._ended = True
        if not self._gone:
            self._out.write(_frame(Complete(self._offer.transfer_id)))
            self._out.loseConnection()
        self._observer.stream_completed(final_path)
        self._check_settled()

    def _finish_failed(self, failure: Failure) -> None:
        self._pending -= 1
        if failure.check(VerificationFailed):
            self._end("the file does not match the offered hash", resumable=False)
        else:
            self.log.failure("finishing the file failed", failure)
            self._end(f"finishing the file failed: {failure.getErrorMessage()}", resumable=False)
        self._check_settled()

    def _end(
        self, reason: str, *, resumable: bool, send: bool = True, discard: bool = False
    ) -> None:
        if self._ended:
            return
        self._ended = True
        if not self._gone:
            if send and not resumable:
                self._out.write(_frame(Cancel(self._offer.transfer_id, reason[:200])))
            self._out.loseConnection()
        if discard:
            self._discard_when_idle = True
        self._observer.stream_ended(reason, resumable)
        self._check_settled()

    _discard_when_idle = False

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._gone = True
        if not self._ended:
            self._lost_reason = f"connection lost: {reason.getErrorMessage()}"
            self._process()
            self._maybe_finish()
            self._end_when_drained()
        self._check_settled()

    _lost_reason = "connection lost"

    def when_settled(self) -> defer.Deferred[None]:
        """Return a Deferred that fires once the connection is gone and no disk job runs
        (then the partial file may be closed, reopened or discarded)."""
        d: defer.Deferred[None] = defer.Deferred()
        self._settled.append(d)
        self._check_settled()
        return d

    def _check_settled(self) -> None:
        if not (self._gone and self._pending == 0 and self._preparing == 0):
            return
        if self._discard_when_idle:
            self._discard_when_idle = False
            self._pending += 1
            self._run(self._partial.discard).addErrback(
                lambda f: self.log.failure("removing the refused file failed", f)
            ).addBoth(self._discarded)
            return
        self._fire_settled()

    def _discarded(self, _: object) -> None:
        self._pending -= 1
        self._fire_settled()

    def _fire_settled(self) -> None:
        waiting, self._settled = self._settled, []
        for d in waiting:
            d.callback(None)
