"""The transfer stream: thin Twisted protocols moving one file's chunks over their own connection.

The connection carries nothing but one transfer (the caller puts it behind the pinned TLS and
the knock, and picks the transfer by its id), so a file never delays chat messages.  Records and
their order are in :mod:`jarvis.protocol.transfer` and ``docs/protocol.md``, "File transfer"::

    receiver                                    sender
       Have(transfer id, epoch, held ranges) -->
                                            <-- ManifestPage ...
                                            <-- Chunk ... (only the missing ones)
                                            <-- End
       Complete (or Cancel) ------------------>

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
from jarvis.crypto.transfer_keys import ChunkCipher, ChunkRejected, new_epoch
from jarvis.files.receive import ChunkMismatch, PartialFile, VerificationFailed
from jarvis.files.send import FileSource, SourceChanged
from jarvis.protocol.framing import FrameDecoder, FramingError, encode_frame
from jarvis.protocol.transfer import (
    CHUNK,
    CHUNK_OVERHEAD,
    HASH_SIZE,
    MAX_HASHES_PER_PAGE,
    TRANSFER_VERSION,
    Cancel,
    Chunk,
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
#: Largest non-chunk frame: a full manifest page.
_CONTROL_MAX_FRAME = 16 + 4 + MAX_HASHES_PER_PAGE * HASH_SIZE + 64
_CHUNK_HEAD = struct.Struct(">IBBQ")

RunBlocking = Callable[..., "defer.Deferred[Any]"]


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


@implementer(IPushProducer)
class TransferSender(protocol.Protocol):
    """Send one offered file's missing chunks on this connection.

    :param source: the file being sent.
    :param observer: told of progress and the end.
    :param run_blocking: runs a blocking callable off the reactor thread, returning a Deferred.
    :param window: the most chunks read and sealed ahead of the transport.
    """

    log = Logger()

    def __init__(
        self,
        source: FileSource,
        observer: TransferStreamObserver,
        *,
        run_blocking: RunBlocking = deferToThread,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self._source = source
        self._offer = source.prepared.offer
        self._observer = observer
        self._run = run_blocking
        self._window = window
        self._decoder = FrameDecoder(_CONTROL_MAX_FRAME)
        self._queue: deque[int] = deque()
        self._cipher: ChunkCipher | None = None
        self._in_flight = 0
        self._ready: deque[tuple[bytes, bytes]] = deque()
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

    @property
    def _out(self) -> Any:
        # The transport, untyped: zope interfaces do not type-check as Protocol attributes.
        return self.transport

    def connectionMade(self) -> None:
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
        elif isinstance(record, Complete) and record.transfer_id == offer.transfer_id:
            self._ended = True
            self._observer.stream_completed(None)
            self._out.loseConnection()
        elif isinstance(record, Cancel) and record.transfer_id == offer.transfer_id:
            reason = terminal_safe(record.reason, keep_newlines=False)
            self._end(f"the receiver cancelled: {reason}", resumable=False, cancel=False)
        else:
            self._end(f"unexpected {type(record).__name__} record", resumable=True)

    def _read_sealed(self, cipher: ChunkCipher, index: int) -> tuple[bytes, bytes]:
        # Worker thread: read, check against the manifest, seal, and build the frame header.
        sealed = cipher.seal(index, self._source.read_chunk(index))
        head = _CHUNK_HEAD.pack(2 + 8 + len(sealed), TRANSFER_VERSION, CHUNK, index)
        return head, sealed

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
                if self._ready and not self._paused:
                    parts = self._ready.popleft()
                    self._out.writeSequence(parts)  # may pause us at once
                    self.chunks_sent += 1
                    self.bytes_sent += len(parts[1]) - CHUNK_OVERHEAD
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

    def _chunk_ready(self, parts: tuple[bytes, bytes]) -> None:
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
        if cancel and not resumable:
            self._out.write(_frame(Cancel(self._offer.transfer_id, reason[:200])))
        self._observer.stream_ended(reason, resumable)
        self._out.loseConnection()

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._stopped = True

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._stopped = True
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
        max_frame = max(_CONTROL_MAX_FRAME, self._offer.chunk_size + CHUNK_OVERHEAD + 16)
        self._decoder = FrameDecoder(max_frame)
        self._assembler = ManifestAssembler(self._offer)
        self._manifest_ready = False
        self._cipher: ChunkCipher | None = None
        self._pending = 0
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
        epoch = new_epoch()
        offer = self._offer
        self._cipher = ChunkCipher.for_connection(offer.secret, offer.transfer_id, epoch)
        have = Have(offer.transfer_id, epoch, self._partial.held_ranges())
        self._out.write(_frame(have))
        self._observer.stream_opened()

    def dataReceived(self, data: bytes) -> None:
        try:
            self._decoder.receive(data)
        except FramingError as e:
            self._end(f"bad frame from the sender ({e})", resumable=True)
            return
        self._process()

    def _process(self) -> None:
        try:
            while not self._ended and self._pending < self._window:
                payload = self._decoder.next_frame()
                if payload is None:
                    break
                self._handle(parse_transfer_record(payload))
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

    def _handle(self, record: TransferRecord) -> None:
        if isinstance(record, Chunk):
            if not self._manifest_ready or record.index >= self._offer.chunks:
                raise MalformedTransferRecord("chunk before the manifest or out of range")
            self._pending += 1
            d = self._run(self._open_and_store, self._cipher, record.index, record.sealed)
            d.addCallbacks(self._chunk_stored, self._chunk_failed)
        elif isinstance(record, ManifestPage):
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

    def _open_and_store(self, cipher: ChunkCipher, index: int, sealed: bytes) -> bool:
        # Worker thread.
        return self._partial.store_chunk(index, cipher.open(index, sealed))

    def _chunk_stored(self, new: object) -> None:
        self._pending -= 1
        if new is True:
            self.chunks_stored += 1
            self._observer.bytes_done(self._partial.held_bytes)
        self._after_job()

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
        if not (self._gone and self._pending == 0):
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
