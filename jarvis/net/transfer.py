"""The transfer stream: thin Twisted protocols moving one file's chunks over their own connection.

The connection carries nothing but one transfer (the caller puts it behind the pinned TLS and
the knock, and picks the transfer by its id), so a file never delays chat messages.  Records and
their order are in :mod:`jarvis.protocol.transfer` and ``docs/protocol.md``, "File transfer"::

    receiver                                    sender
       Have(transfer id, epoch, held ranges,
            part-written chunks) -------------->
                                            <-- ManifestPage ...
                                            <-- Piece (of the missing chunks only)
       Ack(index, piece) --------------------->
                                            <-- Piece ...
                                            <-- End
       Complete (or Cancel) ------------------>

A chunk (8 MiB) travels as 512 KiB pieces, each sealed on its own.  The receiver acknowledges
each piece once it is written and recorded (a chunk's last piece once the chunk is verified and
marked held); the sender keeps at most *ack_window* (1) chunks' bytes unacknowledged on the
connection and seals the next pieces ahead on its threads meanwhile, so a killed receiver costs
at most one chunk sent again, and the data in the socket buffers is bounded by
acknowledgements rather than by their size.

Memory stays bounded whatever the file size, the chunk size and the receiver's disk speed:

- :class:`TransferSender` is an ``IPushProducer`` registered with its transport: it keeps at
  most *window* batches of :data:`SEND_BATCH_PIECES` pieces (2 MiB) being read and sealed on
  worker threads or waiting, besides the batch being written, and starts no new read while
  the transport has paused it (its buffer is full because the network or the receiver is
  slow);
- :class:`TransferReceiver` opens, checks and writes pieces on a worker thread and stops
  reading the socket (``transport.pauseProducing()``) while *window* batches' worth of pieces
  are waiting for the disk, so TCP's flow control slows the sender down.

File reads, hashing, sealing, opening and writes all run through *run_blocking* (by default
``deferToThread``); the reactor thread only cuts frames and moves buffers.
"""

from __future__ import annotations

import errno
import threading
from collections import deque
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer, protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jarvis.common.errors import reason_without_paths
from jarvis.common.logs import log_id
from jarvis.common.textsafe import terminal_safe
from jarvis.crypto.transfer_keys import ChunkCipher, ChunkRejected, WorkBuffers, new_epoch
from jarvis.files.receive import (
    DISK_FULL,
    ChunkMismatch,
    PartialFile,
    PieceDamaged,
    VerificationFailed,
)
from jarvis.files.send import FileSource, SourceChanged
from jarvis.protocol.framing import ChunkFrameReader, FrameDecoder, FramingError, encode_frame
from jarvis.protocol.transfer import (
    CHUNK,
    CHUNK_OVERHEAD,
    HASH_SIZE,
    MAX_HASHES_PER_PAGE,
    PIECE,
    PIECE_PREFIX,
    PIECE_SIZE,
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
    OutdatedPeer,
    TransferRecord,
    chunk_length,
    encode_transfer_record,
    manifest_pages,
    missing_indexes,
    parse_transfer_record,
    piece_count,
    piece_frame_head,
    piece_length,
    piece_position,
)

#: Pieces read and sealed in one worker job on the sender (2 MiB): the unit of the sender's
#: *window*, so memory does not grow with the chunk size.  With 8 (4 MiB) the sending daemon's
#: peak RSS grew by 11-12 MiB during a 1 GiB transfer, with 4 by 7.5-8 at the same rate: the
#: sender waits for its socket or for acknowledgements, almost never for a sealed batch
#: (docs/benchmarks.md, "The sender's batches").
SEND_BATCH_PIECES = 4
#: Pieces (a batch's worth) the receiver keeps waiting for the disk, per *window*, before it
#: pauses the socket (4 was 5 % slower: docs/benchmarks.md, 2026-12-06 18:13).
BATCH_PIECES = 8
#: Batches of pieces a side keeps in flight on worker threads (reads and seals on the sender,
#: pieces waiting for the disk on the receiver): 1 keeps the next batch sealed while one is on
#: the connection (tests/test_e2e_files.py measures the memory).  Above 1, the sender's jobs
#: run on several threads at once and are written in the order they started.
DEFAULT_WINDOW = 1
#: Chunks' worth of bytes the sender keeps on the connection unacknowledged (the receiver
#: acknowledges each piece once written and recorded): 1 means a killed receiver never costs
#: more than one chunk's bytes sent again (docs/protocol.md, "Pieces and acknowledgements").
DEFAULT_ACK_WINDOW = 1
#: Seconds the sender waits for an acknowledgement before it drops the connection (resumable:
#: a stuck disk, or a peer that never acknowledges, does not hang the transfer for ever).  The
#: wait restarts with each piece the transport takes (it resumes the sender) and each
#: acknowledgement, so a slow path only needs to carry about one piece in that time (512 KiB in
#: 120 s: about 4.4 KiB/s).
ACK_TIMEOUT = 120.0
#: Chunks past the last acknowledged one whose pages the receiver brings into the page cache
#: ahead of their writes (:meth:`~jarvis.files.receive.PartialFile.prepare_chunks`).
PREPARE_AHEAD = 2
#: The errors that end a receiving stream with :data:`~jarvis.files.receive.DISK_FULL`:
#: resumable, because the chunks already verified stay and the transfer goes on once there is
#: room (docs/protocol.md, "Disk full").
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Largest non-chunk frame: a full manifest page.
_CONTROL_MAX_FRAME = 16 + 4 + MAX_HASHES_PER_PAGE * HASH_SIZE + 64
#: Spare piece-frame buffers a receiver keeps for reuse (a batch of pieces and two).
_FRAME_POOL = BATCH_PIECES + 2

RunBlocking = Callable[..., "defer.Deferred[Any]"]


class TransferStreamObserver(TypingProtocol):
    """What a transfer stream reports (the node implements it and feeds its Transfer machine)."""

    def stream_opened(self) -> None:
        """The records of this transfer flow (the receiver sent, or the sender got, Have)."""

    def bytes_done(self, done: int) -> None:
        """Sender: bytes handed to the transport on this connection; receiver: bytes written
        and recorded (the chunks held and the pieces written of a chunk not yet held)."""

    def stream_completed(self, final_path: str | None) -> None:
        """The receiver verified the file (*final_path* on the receiving side, else ``None``)."""

    def stream_ended(self, reason: str, resumable: bool) -> None:
        """The connection ended before completion; *resumable* is false for a Cancel or a
        refusal that a new connection would not fix (the transfer has failed).  A peer's
        Cancel reason is quoted in *reason* with control and bidi characters escaped."""


def _to_reactor(home: int, f: Callable[..., object], *args: object) -> None:
    """Run ``f(*args)`` on the reactor thread (*home*, the thread that built the protocol):
    at once when already there (a synchronous *run_blocking* in unit tests), else through
    ``callFromThread``."""
    if threading.get_ident() == home:
        f(*args)
    else:
        from twisted.internet import reactor

        reactor.callFromThread(f, *args)  # type: ignore[attr-defined]


def _frame(record: TransferRecord) -> bytes:
    return encode_frame(encode_transfer_record(record))


#: Bytes a data connection's TCP transport reads at once, and buffers before it pauses the
#: sender (Twisted's default is 64 KiB, 64 reactor turns per 4 MiB chunk): 256 KiB gave 204-215
#: MiB/s against 200-207 with 64 KiB, and 1 MiB no more rate but chat p50 18 ms instead of 15
#: during a transfer (docs/benchmarks.md, 2026-12-06).
DATA_BUFFER = 256 * 1024


def widen_buffer(transport: Any, size: int = DATA_BUFFER) -> bool:
    """Give the TCP connection under *transport* (TLS, the knock or the relay wrap it) reads
    and a pausing threshold of *size* bytes; return whether there was one (a test's in-memory
    transport is left alone)."""
    inner = transport
    for _ in range(16):
        below = getattr(inner, "transport", None)
        if below is None:
            break
        inner = below
    if not isinstance(inner, FileDescriptor):
        return False
    inner.bufferSize = size
    return True


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
    :param window: the most batches of pieces (:data:`SEND_BATCH_PIECES`) read and sealed ahead
        of the transport.
    :param ack_window: the most chunks on the connection not yet acknowledged by the receiver.
    :param clock: an ``IReactorTime`` for the acknowledgement timeout (``None``: no timeout).
    :param ack_timeout: seconds without an acknowledgement before the connection is dropped.
    :param release: called once the receiver said ``Complete``, instead of closing the
        connection: ``True`` when it keeps the connection for the next file to this contact
        (``docs/protocol.md``, "One connection, several files"), ``False`` to close it.
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
        release: Callable[[], bool] | None = None,
    ) -> None:
        self._release = release
        self._ack_window = ack_window
        self._clock = clock
        self._ack_timeout = ack_timeout
        self._ack_timer: Any = None  # an IDelayedCall
        #: Pieces on the connection not yet acknowledged, oldest first: (chunk index, piece,
        #: plaintext bytes), and their bytes.  At most *ack_window* chunks' worth.
        self._unacked: deque[tuple[int, int, int]] = deque()
        self._unacked_bytes = 0
        self._ack_budget = ack_window * source.prepared.offer.chunk_size
        self._source = source
        self._offer = source.prepared.offer
        self._observer = observer
        self._run = run_blocking
        self._window = window
        self._decoder = FrameDecoder(_CONTROL_MAX_FRAME)
        #: Batches of pieces to send: (chunk index, first piece, end piece).
        self._queue: deque[tuple[int, int, int]] = deque()
        self._cipher: ChunkCipher | None = None
        self._work = WorkBuffers(min(self._offer.chunk_size, PIECE_SIZE) + CHUNK_OVERHEAD)
        self._in_flight = 0
        #: Sealed batches waiting for the transport, by the number of the job that sealed them:
        #: their pieces (index, piece, plaintext bytes, whole frame).  With a *window* above 1
        #: jobs run on several threads and may end in any order; batches go out in the order
        #: their jobs started.
        self._ready: dict[int, list[tuple[int, int, int, bytes]]] = {}
        self._jobs_started = 0
        self._next_job = 0
        #: The pieces of the batch being written.
        self._writing: deque[tuple[int, int, int, bytes]] = deque()
        self._pumping = False
        self._pump_again = False
        self._paused = False
        self._stopped = False
        self._end_sent = False
        self._ended = False
        self._settled: list[defer.Deferred[None]] = []
        #: Chunks (their last piece) and bytes handed to the transport on this connection.
        self.chunks_sent = 0
        self.bytes_sent = 0
        #: Most batches being read or waiting to be written at any time (a memory bound check).
        self.max_in_flight = 0
        #: Most plaintext bytes on the connection not yet acknowledged at any time.
        self.max_unacked_bytes = 0

    @property
    def _out(self) -> Any:
        # The transport, untyped: zope interfaces do not type-check as Protocol attributes.
        return self.transport

    def connectionMade(self) -> None:
        no_delay(self.transport)
        widen_buffer(self.transport)
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
            partial = dict(record.partial)
            missing = 0
            for index in missing_indexes(offer.chunks, record.held):
                first = partial.get(index, 0)
                pieces = self._pieces_of(index)
                if first >= pieces:
                    self._end("the receiver holds more pieces than a chunk has", resumable=True)
                    return
                missing += 1
                for start in range(first, pieces, SEND_BATCH_PIECES):
                    self._queue.append((index, start, min(start + SEND_BATCH_PIECES, pieces)))
            self._cipher = ChunkCipher.for_connection(offer.secret, offer.transfer_id, record.epoch)
            self.log.info(
                "sending {missing} of {chunks} chunks of transfer {transfer}",
                missing=missing,
                chunks=offer.chunks,
                transfer=log_id(offer.transfer_id.hex()),
            )
            self._observer.stream_opened()
            self._pump()
        elif isinstance(record, Ack) and self._cipher is not None:
            if not self._unacked or self._unacked[0][:2] != (record.index, record.piece):
                self._end(
                    f"acknowledgement of piece {record.piece} of chunk {record.index}, "
                    "not the next one sent",
                    resumable=True,
                )
                return
            self._unacked_bytes -= self._unacked.popleft()[2]
            self._arm_ack_timer()
            self._pump()
        elif isinstance(record, Complete) and record.transfer_id == offer.transfer_id:
            self._ended = True
            self._stop_ack_timer()
            self._observer.stream_completed(None)
            self._out.unregisterProducer()
            if self._release is not None and self._release():
                # The connection goes on to the next file: this stream is done with it.
                self._stopped = True
                self._log_sent()
                self._check_settled()
            else:
                self._out.loseConnection()
        elif isinstance(record, Cancel) and record.transfer_id == offer.transfer_id:
            reason = terminal_safe(record.reason, keep_newlines=False)
            self._end(f"the receiver cancelled: {reason}", resumable=False, cancel=False)
        else:
            self._end(f"unexpected {type(record).__name__} record", resumable=True)

    def _read_sealed(
        self, cipher: ChunkCipher, index: int, first: int, end: int
    ) -> list[tuple[int, int, int, bytes]]:
        # Worker thread: read pieces *first* to *end* - 1 of chunk *index*, seal each, and
        # build each piece's whole frame as one bytes object, which the TLS transport takes
        # without another copy.  Each piece is read into the second work buffer, which the
        # cascade's first layer reads and its second overwrites, so a batch needs no buffer
        # of its own; the frames go out only if the file did not change meanwhile.
        source = self._source
        frames = []
        with self._work.pair() as work:
            for piece in range(first, end):
                plain = source.read_piece(index, piece, work[1])
                head = piece_frame_head(index, piece, len(plain) + CHUNK_OVERHEAD)
                sealed = cipher.seal_frame(index, plain, head, work, piece)
                frames.append((index, piece, len(plain), sealed))
        source.check_unchanged()
        return frames

    def _pump(self) -> None:
        # Batches of pieces are read and sealed ahead while the transport is paused, up to
        # *window* held (being read, or sealed and waiting): the socket never waits for a read
        # after a resume, and memory stays bounded.  Re-entrant calls (a synchronous
        # run_blocking, a write that pauses or resumes us) only ask the running loop for
        # another round.
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
                    index, first, end = self._queue.popleft()
                    self._in_flight += 1
                    held = self._in_flight + len(self._ready)
                    self.max_in_flight = max(self.max_in_flight, held)
                    d = self._run(self._read_sealed, cipher, index, first, end)
                    d.addCallbacks(self._chunk_ready, self._read_failed, (self._jobs_started,))
                    self._jobs_started += 1
                if not self._writing and self._next_job in self._ready:
                    batch = self._ready.pop(self._next_job)
                    self._next_job += 1
                    self._writing.extend(batch)
                    index, piece = batch[-1][:2]
                    if piece + 1 == self._pieces_of(index):
                        self.chunks_sent += 1
                    continue
                if (
                    self._writing
                    and not self._paused
                    and self._unacked_bytes + self._writing[0][2] <= self._ack_budget
                ):
                    # One piece per round, so a transport that pauses us stops the chunk
                    # mid-way until it drains, and acknowledgements let more out as they come.
                    index, piece, length, frame = self._writing.popleft()
                    self._unacked.append((index, piece, length))
                    self._unacked_bytes += length
                    self.max_unacked_bytes = max(self.max_unacked_bytes, self._unacked_bytes)
                    self._arm_ack_timer()
                    self._out.write(frame)  # may pause us at once
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
            and not self._writing
            and self._in_flight == 0
            and not self._end_sent
            and not self._stopped
        ):
            self._end_sent = True
            self._out.write(_frame(End()))

    def _pieces_of(self, index: int) -> int:
        offer = self._offer
        return piece_count(chunk_length(index, offer.size, offer.chunk_size))

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

    def _chunk_ready(self, parts: list[tuple[int, int, int, bytes]], job: int) -> None:
        self._in_flight -= 1
        if not self._stopped:
            self._ready[job] = parts
        self._pump()
        self._check_settled()

    def _read_failed(self, failure: Failure) -> None:
        self._in_flight -= 1
        if failure.check(SourceChanged):
            self._end("the file changed after it was offered", resumable=False)
        else:
            self.log.failure("reading a chunk failed", failure)
            why = reason_without_paths(failure.value)  # the peer is told: no path of ours
            self._end(f"reading the file failed: {why}", resumable=False)
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

    def _log_sent(self) -> None:
        self.log.info(
            "transfer {transfer}: {sent} chunks ({sent_bytes} bytes) sent on this connection",
            transfer=log_id(self._offer.transfer_id.hex()),
            sent=self.chunks_sent,
            sent_bytes=self.bytes_sent,
        )

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._stopped = True
        self._stop_ack_timer()
        self._log_sent()
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
    :param window: the most batches of pieces (:data:`BATCH_PIECES`) waiting for the disk
        before the socket is paused.
    :param reread_on_finish: re-read the whole file for the final check
        (:meth:`PartialFile.finish`); off saves about 1 CPU second per GiB.
    :param release: called once ``Complete`` is written, instead of closing the connection:
        ``True`` when it keeps the connection waiting for the sender's next file, ``False`` to
        close it.
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
        release: Callable[[], bool] | None = None,
    ) -> None:
        self._release = release
        self._partial = partial
        self._reread = reread_on_finish
        self._offer = partial.offer
        self._observer = observer
        self._run = run_blocking
        self._window = window
        full_piece = min(self._offer.chunk_size, PIECE_SIZE)
        full_frame = PIECE_PREFIX + full_piece + CHUNK_OVERHEAD
        self._reader = ChunkFrameReader(
            max(_CONTROL_MAX_FRAME, full_frame), full_frame, pool=_FRAME_POOL
        )
        self._work = WorkBuffers(full_piece + CHUNK_OVERHEAD)
        #: Most pieces waiting for the disk before the socket is paused (*window* batches).
        self._limit = window * min(BATCH_PIECES, piece_count(self._offer.chunk_size))
        #: Pieces waiting for the worker, in order: (chunk index, piece, frame buffer).  The
        #: reactor thread appends; the one worker job draining it (``_lane_busy``) pops.
        self._lane: deque[tuple[int, int, bytearray]] = deque()
        self._lane_busy = False
        self._home = threading.get_ident()
        #: The next piece expected of each chunk whose first piece arrived.
        self._next_piece: dict[int, int] = {}
        self._assembler = ManifestAssembler(self._offer)
        self._manifest_ready = False
        #: The manifest is in the sidecar: pieces may be stored.
        self._manifest_stored = False
        self._cipher: ChunkCipher | None = None
        self._pending = 0
        #: Page-cache preparation jobs running (the file stays open until they end).
        self._preparing = 0
        #: fsync jobs running beside the lane (at most one) and whether another is due.
        self._syncing = 0
        self._sync_wanted = False
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
        widen_buffer(self.transport)
        epoch = new_epoch()
        offer = self._offer
        self._cipher = ChunkCipher.for_connection(offer.secret, offer.transfer_id, epoch)
        partial = self._partial.partial_pieces()
        self._next_piece = dict(partial)
        have = Have(offer.transfer_id, epoch, self._partial.held_ranges(), partial)
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
            while not self._ended and self._pending < self._limit and frames:
                frame = frames.popleft()
                if len(frame) >= PIECE_PREFIX and frame[0] == TRANSFER_VERSION:
                    if frame[1] == PIECE:
                        self._handle_piece(frame)
                        continue
                    if frame[1] == CHUNK:
                        raise OutdatedPeer("a whole-chunk record of an older Jarvis")
                self._handle(parse_transfer_record(bytes(frame)))
        except (FramingError, MalformedTransferRecord) as e:
            if isinstance(e, OutdatedPeer):
                self._end(
                    "the sender's Jarvis is too old (it sends whole chunks): both sides "
                    "need Jarvis with file pieces",
                    resumable=False,
                )
                return
            lying = isinstance(e, ManifestMismatch)
            self._end(f"bad record from the sender ({e})", resumable=not lying, discard=lying)
            return
        if (
            self._pending >= self._limit
            and not self._reading_paused
            and not self._ended
            and not self._gone
        ):
            self._reading_paused = True
            self._out.pauseProducing()

    def _handle_piece(self, frame: bytearray) -> None:
        # A Piece record, parsed in place: its sealed bytes go to the worker without a copy,
        # and the buffer back to the reader once the piece is written.
        index, piece = piece_position(frame)
        offer = self._offer
        if not self._manifest_ready or index >= offer.chunks:
            raise MalformedTransferRecord("piece before the manifest or out of range")
        length = chunk_length(index, offer.size, offer.chunk_size)
        pieces = piece_count(length)
        if piece != self._next_piece.get(index, 0) or piece >= pieces:
            raise MalformedTransferRecord(f"piece {piece} of chunk {index} out of order")
        if len(frame) != PIECE_PREFIX + piece_length(length, piece) + CHUNK_OVERHEAD:
            raise MalformedTransferRecord("sealed piece size out of range")
        if piece + 1 == pieces:
            self._next_piece.pop(index, None)
        else:
            self._next_piece[index] = piece + 1
        self._pending += 1
        self._lane.append((index, piece, frame))
        if not self._lane_busy and self._manifest_stored:
            self._start_lane()

    def _start_lane(self) -> None:
        self._lane_busy = True
        d = self._run(self._drain_lane, self._cipher)
        d.addErrback(lambda f: self.log.failure("the piece worker failed", f))
        d.addBoth(self._lane_idle)

    def _drain_lane(self, cipher: ChunkCipher) -> None:
        # Worker thread: open, hash and write the queued pieces in order until none is left
        # (pieces that arrive meanwhile are taken in the same job), handing each result to
        # the reactor thread at once so its acknowledgement leaves while the next piece is
        # worked on.
        lane = self._lane
        with self._work.pair() as work:
            while lane:
                index, piece, frame = lane.popleft()
                try:
                    sealed = memoryview(frame)[PIECE_PREFIX:]
                    plain = cipher.open_into(index, sealed, work, piece)
                    stored = self._partial.store_piece(index, piece, plain)
                    sync = stored is True and self._partial.sync_due()
                except BaseException:
                    _to_reactor(self._home, self._piece_failed, frame, Failure())
                    return
                _to_reactor(self._home, self._piece_stored, frame, index, piece, stored, sync)

    def _piece_stored(
        self, frame: bytearray, index: int, piece: int, stored: bool | None, sync: bool = False
    ) -> None:
        self._pending -= 1
        self._reader.give_back(frame)
        if sync:
            self._start_sync()
        if not self._gone and not self._ended:
            # Written and recorded (after a chunk's last piece: verified and marked held): the
            # sender may put more on the connection.
            self._out.write(_frame(Ack(index, piece)))
            if stored is not None:
                self._prepare_after(index)
        if stored:
            self.chunks_stored += 1
        if stored is not False:
            # Progress by piece, not by chunk: on a slow path a 4 MiB chunk takes a while.
            self._observer.bytes_done(self._partial.written_bytes)
        self._after_job()

    def _piece_failed(self, frame: bytearray, failure: Failure) -> None:
        self._pending -= 1
        self._reader.give_back(frame)
        self._store_failed(failure)
        self._after_job()

    def _start_sync(self) -> None:
        # The periodic fsync runs as a job of its own, so the lane keeps writing meanwhile.
        if self._syncing:
            self._sync_wanted = True
            return
        if self._ended or self._gone:
            return
        self._syncing += 1
        d = self._run(self._partial.sync)
        d.addCallbacks(self._synced, self._sync_failed)

    def _synced(self, _: object) -> None:
        self._syncing -= 1
        if self._sync_wanted:
            self._sync_wanted = False
            self._start_sync()
        self._after_job()

    def _sync_failed(self, failure: Failure) -> None:
        self._syncing -= 1
        self._store_failed(failure)
        self._after_job()

    def _lane_idle(self, _: object) -> None:
        # The worker job ended (every piece it took was reported before this runs).
        self._lane_busy = False
        if self._lane:
            if self._ended:
                self._pending -= len(self._lane)
                self._lane.clear()
            else:
                self._start_lane()
        self._after_job()

    def _handle(self, record: TransferRecord) -> None:
        if isinstance(record, ManifestPage):
            hashes = self._assembler.add(record)
            if hashes is not None:
                self._manifest_ready = True
                if self._partial.manifest_known:
                    self._manifest_stored = True
                else:
                    # Pieces wait in the lane until the manifest they are checked against
                    # is stored.
                    self._pending += 1
                    d = self._run(self._partial.set_manifest, hashes)
                    d.addCallbacks(self._manifest_done, self._chunk_failed)
        elif isinstance(record, End):
            self._end_received = True
            self._maybe_finish()
        elif isinstance(record, Cancel) and record.transfer_id == self._offer.transfer_id:
            reason = terminal_safe(record.reason, keep_newlines=False)
            self._end(f"the sender cancelled: {reason}", resumable=False, send=False)
        else:
            raise MalformedTransferRecord(f"unexpected {type(record).__name__} record")

    def _manifest_done(self, _: object) -> None:
        self._pending -= 1
        self._manifest_stored = True
        if self._lane and not self._lane_busy and not self._ended:
            self._start_lane()
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
        self._store_failed(failure)
        self._after_job()

    def _store_failed(self, failure: Failure) -> None:
        if failure.check(ChunkRejected):
            self._end("a chunk failed to open", resumable=True)
        elif failure.check(PieceDamaged):
            self._end("a part-written chunk changed on the disk: fetching it again", resumable=True)
        elif failure.check(ChunkMismatch):
            # The chunk opened (only the sender has the key) yet does not match the manifest
            # that matches the offer: the sender lies.
            self._end("a chunk does not match the offered file", resumable=False, discard=True)
        elif isinstance(failure.value, OSError) and failure.value.errno in _DISK_FULL_ERRNOS:
            # What is verified stays; the sender's redials resume it once there is room.
            self._end(DISK_FULL, resumable=True)
        else:
            self.log.failure("storing a chunk failed", failure)
            why = reason_without_paths(failure.value)  # the peer is told: no path of ours
            self._end(f"writing the file failed: {why}", resumable=False)

    def _after_job(self) -> None:
        if not self._ended:
            if self._reading_paused and self._pending < self._limit and not self._gone:
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
        if (
            self._ended
            or not self._end_received
            or self._pending
            or self._lane_busy
            or self._syncing
            or self._finishing
        ):
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
            if self._reading_paused:
                self._reading_paused = False
                self._out.resumeProducing()
            if self._release is None or not self._release():
                self._out.loseConnection()
            else:
                self._gone = True  # the connection went on to the sender's next file
        self._observer.stream_completed(final_path)
        self._check_settled()

    def _finish_failed(self, failure: Failure) -> None:
        self._pending -= 1
        if failure.check(VerificationFailed):
            self._end("the file does not match the offered hash", resumable=False)
        else:
            self.log.failure("finishing the file failed", failure)
            why = reason_without_paths(failure.value)  # the peer is told: no path of ours
            self._end(f"finishing the file failed: {why}", resumable=False)
        self._check_settled()

    def _end(
        self, reason: str, *, resumable: bool, send: bool = True, discard: bool = False
    ) -> None:
        if self._ended:
            return
        self._ended = True
        if not self._lane_busy:
            # Pieces still waiting (for the manifest) will never be stored.
            self._pending -= len(self._lane)
            self._lane.clear()
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
        if not (self._gone and self._pending == 0 and self._preparing == 0 and not self._syncing):
            return
        if self._lane_busy:
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
