"""File transfer, sans-IO: the records, the chunk manifest and the transfer state machine.

A transfer has two halves (see ``docs/protocol.md``, "File transfer"):

- **Control records** travel inside the existing end-to-end session, as message bodies:
  :class:`Offer` (name, size, content hash, media type, chunk size, a 16-byte transfer id and the
  32-byte transfer secret the chunk keys come from), :class:`Accept`, :class:`Decline`,
  :class:`Cancel`, and a group member's :class:`Request` for a file shared into the group
  (whose group message body is a :class:`SharedFile`, :func:`encode_shared_file`).
- **Stream records** travel on the transfer's own connection: the receiver says which chunks it
  holds verified (:class:`Have`, with a fresh epoch the chunk keys of this connection are derived
  from), the sender sends the chunk hashes (:class:`ManifestPage`, checked against the offered
  content hash), the missing chunks (as :class:`Piece` records sealed by the five-layer
  cascade), then
  :class:`End`; the receiver acknowledges each chunk once it is written and marked held
  (:class:`Ack`; the sender keeps at most one chunk unacknowledged, so a killed receiver costs
  at most one chunk sent again), verifies the whole file and answers :class:`Complete` (or
  :class:`Cancel`).

Every record is ``version (1 byte) || type (1 byte) || fields`` with one deterministic encoding
(``parse_transfer_record(encode_transfer_record(r)) == r``); a frame is a 4-byte big-endian
length and one record, at most :data:`MAX_TRANSFER_FRAME` bytes.

The content hash is the root of a one-level BLAKE3 hash list (:func:`manifest_root`): it binds
the size, the chunk size and every chunk's BLAKE3 hash, so the receiver checks each chunk as it
arrives, a resumed partial file chunk by chunk, and the whole file before it gets its name.

Pure code: no I/O, no reactor, no wall clock (time is injected), never logs names, keys or data.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from automat import TypeMachineBuilder
from blake3 import blake3

#: The version byte every transfer record starts with.
TRANSFER_VERSION = 1

# Record types.
OFFER = 0x01
ACCEPT = 0x02
DECLINE = 0x03
CANCEL = 0x04
HAVE = 0x05
MANIFEST_PAGE = 0x06
#: Whole-chunk records of Jarvis before pieces: refused with :class:`OutdatedPeer`.
CHUNK = 0x07
END = 0x08
COMPLETE = 0x09
DIAL_BACK = 0x0A
ACK = 0x0B
PIECE = 0x0C
#: An :class:`Offer` into a group: the offer's fields, then the group id (16 bytes).
GROUP_OFFER = 0x0D
#: A member asks the author of a file shared into a group for a transfer of it (``Request``).
REQUEST = 0x0E
#: An :class:`Offer` of a file inside a folder sent whole: the offer's fields, then the folder
#: id (16 bytes) and the folder the file is in, relative to the folder sent (text).
FOLDER_OFFER = 0x0F

TRANSFER_ID_SIZE = 16
GROUP_ID_SIZE = 16
SECRET_SIZE = 32
HASH_SIZE = 32
EPOCH_SIZE = 16
#: Chunk sizes a receiver accepts (powers of two between 64 KiB and 8 MiB).
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 8 * 1024 * 1024
#: The chunk size Jarvis offers.  A chunk is the unit of hashing and of "held", and the sender
#: keeps at most one chunk's bytes unacknowledged, so it is also what a killed receiver may cost
#: sent again, and the depth of the pipe between acknowledgements: 1 MiB left the two cores
#: idle a third of the time (147-165 MiB/s), 4 MiB gave 214-219 and 8 MiB 230-242 in the same
#: hour; 16 MiB unacknowledged gave no more (218).  docs/benchmarks.md has the runs.
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
#: Bytes the five-layer cascade adds to a chunk.
CHUNK_OVERHEAD = 80
#: A chunk travels as pieces of this many bytes (the last one may be short), each sealed on
#: its own, so the receiver opens, hashes and writes a chunk while its later pieces are still
#: arriving: the acknowledgement of a chunk follows its last piece by one piece's work, not a
#: whole chunk's (docs/protocol.md, "Pieces and acknowledgements").
PIECE_SIZE = 512 * 1024
#: Most pieces of a chunk (a largest chunk's).
MAX_PIECES = MAX_CHUNK_SIZE // PIECE_SIZE
#: Largest file size on the wire (1 TiB); the receiver's own cap is usually lower.
MAX_FILE_SIZE = 1 << 40
#: Most UTF-8 bytes of an offered name (the receiver sanitises and shortens it anyway).
MAX_NAME_BYTES = 1024
#: Most UTF-8 bytes of the folder an offered file is in (its path inside the folder sent).
MAX_FOLDER_BYTES = 1024
#: Most folders deep a file of a folder sent may be (the folder sent counts as one).
MAX_FOLDER_DEPTH = 32
FOLDER_ID_SIZE = 16
#: Most bytes of an offered media type (``type/subtype``).
MAX_TYPE_BYTES = 127
#: Most bytes of a Decline or Cancel reason.
MAX_REASON_BYTES = 512
#: Most chunk hashes in one ManifestPage (128 KiB of hashes).
MAX_HASHES_PER_PAGE = 4096
#: Most ranges in one Have record.
MAX_RANGES = 4096
#: Largest frame payload on a transfer stream: one largest sealed chunk plus its header.
MAX_TRANSFER_FRAME = MAX_CHUNK_SIZE + CHUNK_OVERHEAD + 64

MANIFEST_CONTEXT = b"jarvis/file-manifest/v2 blake3\x00"

_HEADER = struct.Struct(">BB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_RANGE = struct.Struct(">QQ")
#: version, type, chunk index, piece number: the bytes before a Piece's sealed data.
_PIECE_HEAD = struct.Struct(">BBQI")
#: The same with the frame's length in front: what precedes a sealed piece on the stream.
_PIECE_FRAME_HEAD = struct.Struct(">IBBQI")
#: Bytes of a Piece record before its sealed data (version, type, index, piece).
PIECE_PREFIX = _PIECE_HEAD.size
#: A chunk index and a piece number (or a count of pieces).
_PARTIAL = struct.Struct(">QI")
_TYPE_PATTERN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


class MalformedTransferRecord(Exception):
    """A transfer record could not be parsed: wrong version, unknown type or a bad field.

    The peer's software is broken or hostile; the transfer stream is closed (the transfer can be
    resumed on a new connection).  ``reason`` names the problem, never the content.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed transfer record: {reason}")
        self.reason = reason


class ManifestMismatch(MalformedTransferRecord):
    """The chunk hashes the sender sent do not hash to the content hash it offered.

    The sender is broken or lying about the file; the transfer fails and the partial file is
    removed.
    """


class OutdatedPeer(MalformedTransferRecord):
    """The peer sent whole-chunk records (:data:`CHUNK`) of a Jarvis from before pieces.

    The transfer fails with this reason instead of retrying: both sides need a Jarvis that
    sends chunks as pieces (``docs/protocol.md``, "Pieces and acknowledgements").
    """


def chunk_count(size: int, chunk_size: int) -> int:
    """Return how many chunks a file of *size* bytes has (an empty file has none)."""
    return -(-size // chunk_size)


def chunk_length(index: int, size: int, chunk_size: int) -> int:
    """Return the length of chunk *index* (the last one may be short).

    :raises ValueError: if *index* is not a chunk of this file.
    """
    count = chunk_count(size, chunk_size)
    if not 0 <= index < count:
        raise ValueError("chunk index out of range")
    return min(chunk_size, size - index * chunk_size)


def piece_count(chunk_bytes: int) -> int:
    """Return how many pieces carry a chunk of *chunk_bytes* bytes (at least one)."""
    return max(1, -(-chunk_bytes // PIECE_SIZE))


def piece_length(chunk_bytes: int, piece: int) -> int:
    """Return the length of piece *piece* of a chunk of *chunk_bytes* bytes.

    :raises ValueError: if *piece* is not a piece of that chunk.
    """
    if not 0 <= piece < piece_count(chunk_bytes):
        raise ValueError("piece out of range")
    return min(PIECE_SIZE, chunk_bytes - piece * PIECE_SIZE)


def chunk_hasher(data: bytes | bytearray | memoryview = b"") -> Any:
    """Return a new BLAKE3 hasher of chunk contents (``update()``, ``digest()``: 32 bytes),
    fed *data* first.

    BLAKE3 rather than SHA-256: 0.14 against 0.61 CPU ms per MiB on one core here
    (docs/protocol.md, "Content hash"), and it releases the GIL while it hashes.
    """
    return blake3(data)


def chunk_hash(data: bytes | bytearray | memoryview) -> bytes:
    """Return the 32-byte BLAKE3 hash of one chunk's contents."""
    return bytes(blake3(data).digest())


def manifest_root(size: int, chunk_size: int, chunk_hashes: Sequence[bytes]) -> bytes:
    """Return the content hash of a file: BLAKE3 over its size, chunk size and chunk hashes.

    ``BLAKE3(MANIFEST_CONTEXT || u64 size || u32 chunk_size || BLAKE3(chunk 0) || ...)``.

    :raises ValueError: if the number of hashes does not match the size or a hash is not 32 bytes.
    """
    if len(chunk_hashes) != chunk_count(size, chunk_size):
        raise ValueError("wrong number of chunk hashes")
    h = blake3(MANIFEST_CONTEXT + _U64.pack(size) + _U32.pack(chunk_size))
    for digest in chunk_hashes:
        if len(digest) != HASH_SIZE:
            raise ValueError("a chunk hash is 32 bytes")
        h.update(digest)
    return h.digest()


def ranges_from_indexes(indexes: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Return sorted half-open ``(start, end)`` ranges covering *indexes* exactly."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(indexes)):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return tuple(out)


def missing_indexes(count: int, held: Sequence[tuple[int, int]]) -> list[int]:
    """Return the chunk indexes below *count* not covered by the *held* ranges, in order."""
    have = bytearray(count)
    for start, end in held:
        for i in range(max(start, 0), min(end, count)):
            have[i] = 1
    return [i for i in range(count) if not have[i]]


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """The sender proposes a file (a control record, sent inside the end-to-end session).

    :ivar transfer_id: 16 random bytes naming this transfer on both sides, across restarts.
    :ivar name: the file's name as the sender has it (the receiver sanitises it).
    :ivar size: the file size in bytes.
    :ivar content_hash: :func:`manifest_root` of the file.
    :ivar media_type: a lowercase ``type/subtype`` (``application/octet-stream`` if unknown).
    :ivar chunk_size: bytes per chunk, a power of two in [64 KiB, 8 MiB].
    :ivar secret: 32 random bytes the chunk keys are derived from (never shown by ``repr``).
    :ivar group_id: the group the file was sent into (16 bytes), or ``b""`` for a file sent to
        one contact.  A group offer travels as :data:`GROUP_OFFER`; the receiver takes it only
        from a member of that group while we are one (``docs/groups.md``, "Files").
    :ivar folder: for a file of a folder sent whole, the folder it is in as the sender has it:
        the folder sent, then the folders below it, joined by ``/`` (``photos/2024``); ``""``
        for a file sent alone.  The receiver sanitises every part (``docs/protocol.md``,
        "Folders").  Travels as :data:`FOLDER_OFFER`.
    :ivar folder_id: 16 random bytes shared by every file of one folder sent (the receiver
        puts them all in one new folder), or ``b""``.
    """

    transfer_id: bytes
    name: str
    size: int
    content_hash: bytes
    media_type: str
    chunk_size: int
    secret: bytes = field(repr=False)
    group_id: bytes = b""
    folder: str = ""
    folder_id: bytes = b""

    def __post_init__(self) -> None:
        _check_id(self.transfer_id)
        _check_text(self.name, MAX_NAME_BYTES, "name", allow_empty=False)
        if not 0 <= self.size <= MAX_FILE_SIZE:
            raise ValueError("size out of range")
        if len(self.content_hash) != HASH_SIZE:
            raise ValueError("content hash is 32 bytes")
        if len(self.media_type) > MAX_TYPE_BYTES or not _TYPE_PATTERN.fullmatch(self.media_type):
            raise ValueError("media type is not a lowercase type/subtype")
        if not (
            MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE
            and self.chunk_size & (self.chunk_size - 1) == 0
        ):
            raise ValueError("chunk size must be a power of two in [64 KiB, 8 MiB]")
        if len(self.secret) != SECRET_SIZE:
            raise ValueError("secret is 32 bytes")
        if self.group_id and len(self.group_id) != GROUP_ID_SIZE:
            raise ValueError("group id is 16 bytes")
        if bool(self.folder) != bool(self.folder_id):
            raise ValueError("a folder and its id go together")
        if self.folder_id:
            if self.group_id:
                raise ValueError("a folder is sent to one contact, not into a group")
            if len(self.folder_id) != FOLDER_ID_SIZE:
                raise ValueError("folder id is 16 bytes")
            _check_text(self.folder, MAX_FOLDER_BYTES, "folder", allow_empty=False)
            parts = self.folder.split("/")
            if len(parts) > MAX_FOLDER_DEPTH or not all(parts):
                raise ValueError(f"folder is 1 to {MAX_FOLDER_DEPTH} non-empty parts")

    @property
    def chunks(self) -> int:
        """How many chunks the file has."""
        return chunk_count(self.size, self.chunk_size)


@dataclass(frozen=True)
class Accept:
    """The receiver accepted the offer (control record)."""

    transfer_id: bytes

    def __post_init__(self) -> None:
        _check_id(self.transfer_id)


@dataclass(frozen=True)
class Decline:
    """The receiver declined the offer (control record); *reason* is shown to the sender."""

    transfer_id: bytes
    reason: str

    def __post_init__(self) -> None:
        _check_id(self.transfer_id)
        _check_text(self.reason, MAX_REASON_BYTES, "reason")


@dataclass(frozen=True)
class Cancel:
    """Either side stops the transfer for good (control or stream record)."""

    transfer_id: bytes
    reason: str

    def __post_init__(self) -> None:
        _check_id(self.transfer_id)
        _check_text(self.reason, MAX_REASON_BYTES, "reason")


@dataclass(frozen=True)
class Have:
    """The receiver's first stream record: the chunks it holds verified, and a fresh epoch.

    :ivar transfer_id: which transfer this connection carries.
    :ivar epoch: 16 fresh random bytes; this connection's chunk keys are derived from them, so
        a chunk sealed on one connection never opens on another and no nonce repeats.
    :ivar held: sorted, disjoint half-open ``(start, end)`` chunk index ranges.
    :ivar partial: ``(index, pieces)`` for each chunk not held of which the first *pieces*
        pieces are written (a transfer cut off mid-chunk): the sender sends only the rest.
    """

    transfer_id: bytes
    epoch: bytes
    held: tuple[tuple[int, int], ...]
    partial: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        _check_id(self.transfer_id)
        if len(self.epoch) != EPOCH_SIZE:
            raise ValueError("epoch is 16 bytes")
        if len(self.held) > MAX_RANGES:
            raise ValueError("too many ranges")
        last = -1
        for start, end in self.held:
            if not last < start < end or end > MAX_FILE_SIZE:
                raise ValueError("ranges must be sorted, disjoint and non-empty")
            last = end
        if len(self.partial) > MAX_RANGES:
            raise ValueError("too many partial chunks")
        for index, pieces in self.partial:
            if not 0 <= index <= MAX_FILE_SIZE or not 0 < pieces < MAX_PIECES:
                raise ValueError(f"a partial chunk has 1 to {MAX_PIECES - 1} pieces written")


@dataclass(frozen=True)
class ManifestPage:
    """Consecutive chunk hashes from *first*; the pages together are checked against the offer."""

    first: int
    hashes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.first <= MAX_FILE_SIZE:
            raise ValueError("first index out of range")
        if not 0 < len(self.hashes) <= MAX_HASHES_PER_PAGE:
            raise ValueError("a page holds 1 to 4096 hashes")
        if any(len(h) != HASH_SIZE for h in self.hashes):
            raise ValueError("a chunk hash is 32 bytes")


@dataclass(frozen=True)
class Piece:
    """One sealed piece of a chunk: the chunk's index, the piece's number in it and the
    cascade's ciphertext (data + 80 bytes of tags)."""

    index: int
    piece: int
    sealed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.index <= MAX_FILE_SIZE:
            raise ValueError("index out of range")
        if not 0 <= self.piece < MAX_PIECES:
            raise ValueError("piece out of range")
        if not CHUNK_OVERHEAD <= len(self.sealed) <= PIECE_SIZE + CHUNK_OVERHEAD:
            raise ValueError("sealed piece size out of range")


@dataclass(frozen=True)
class Ack:
    """The receiver wrote piece *piece* of chunk *index* and recorded it (after a chunk's last
    piece: verified the chunk and marked it held), a stream record: the sender may put more
    on the connection."""

    index: int
    piece: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index <= MAX_FILE_SIZE:
            raise ValueError("index out of range")
        if not 0 <= self.piece < MAX_PIECES:
            raise ValueError("piece out of range")


@dataclass(frozen=True)
class End:
    """The sender sent every chunk the receiver lacked."""


@dataclass(frozen=True)
class Complete:
    """The receiver verified the whole file and gave it its name."""

    transfer_id: bytes

    def __post_init__(self) -> None:
        _check_id(self.transfer_id)


@dataclass(frozen=True)
class DialBack:
    """The sender could not dial the receiver for the data: the receiver dials the sender
    instead (control record; the data connection then starts with the pull preface of
    :mod:`jarvis.net.transfer_link`, and the records flow as on a dialled one)."""

    transfer_id: bytes

    def __post_init__(self) -> None:
        _check_id(self.transfer_id)


@dataclass(frozen=True)
class Request:
    """A group member asks for a file shared into the group (control record, requester to
    author): the author answers with an :class:`Offer` of that *transfer_id* (chosen by the
    requester, so both sides name the transfer before the offer exists) or a
    :class:`Decline` of it.

    :ivar transfer_id: 16 random bytes the requester chose.
    :ivar group_id: the group the file was shared into.
    :ivar content_hash: the shared file's :func:`manifest_root` (as in its :class:`SharedFile`).
    """

    transfer_id: bytes
    group_id: bytes
    content_hash: bytes

    def __post_init__(self) -> None:
        _check_id(self.transfer_id)
        if len(self.group_id) != GROUP_ID_SIZE:
            raise ValueError("group id is 16 bytes")
        if len(self.content_hash) != HASH_SIZE:
            raise ValueError("content hash is 32 bytes")


TransferRecord = (
    Offer
    | Request
    | Accept
    | Decline
    | Cancel
    | Have
    | ManifestPage
    | Piece
    | Ack
    | End
    | Complete
    | DialBack
)


def _check_id(transfer_id: bytes) -> None:
    if not isinstance(transfer_id, bytes) or len(transfer_id) != TRANSFER_ID_SIZE:
        raise ValueError("transfer id is 16 bytes")


def _check_text(text: str, limit: int, what: str, *, allow_empty: bool = True) -> None:
    if not allow_empty and not text:
        raise ValueError(f"{what} is empty")
    if len(text.encode("utf-8")) > limit:
        raise ValueError(f"{what} is longer than {limit} bytes")


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return _U16.pack(len(data)) + data


def piece_frame_head(index: int, piece: int, sealed_length: int) -> bytes:
    """Return the frame header and record prefix of a Piece of *sealed_length* sealed bytes,
    which the sealed bytes follow on the stream (``encode_frame(encode_transfer_record(p))``
    without building the record: the sender seals each piece straight after its head)."""
    return _PIECE_FRAME_HEAD.pack(
        PIECE_PREFIX + sealed_length, TRANSFER_VERSION, PIECE, index, piece
    )


def piece_position(record: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Return ``(chunk index, piece)`` of a Piece *record* (whose first two bytes the caller
    checked), read in place: the receiver keeps the sealed bytes in the frame buffer."""
    _version, _kind, index, piece = _PIECE_HEAD.unpack_from(record)
    return index, piece


def encode_transfer_record(record: TransferRecord) -> bytes:
    """Return the wire form of *record*: ``version || type || fields``."""
    if isinstance(record, Piece):
        head = _PIECE_HEAD.pack(TRANSFER_VERSION, PIECE, record.index, record.piece)
        return head + record.sealed
    if isinstance(record, Offer):
        body = b"".join(
            [
                record.transfer_id,
                _text(record.name),
                _U64.pack(record.size),
                record.content_hash,
                _text(record.media_type),
                _U32.pack(record.chunk_size),
                record.secret,
                record.group_id,
            ]
        )
        if record.folder_id:
            body += record.folder_id + _text(record.folder)
            return _HEADER.pack(TRANSFER_VERSION, FOLDER_OFFER) + body
        kind = GROUP_OFFER if record.group_id else OFFER
        return _HEADER.pack(TRANSFER_VERSION, kind) + body
    if isinstance(record, Accept):
        return _HEADER.pack(TRANSFER_VERSION, ACCEPT) + record.transfer_id
    if isinstance(record, Decline):
        return _HEADER.pack(TRANSFER_VERSION, DECLINE) + record.transfer_id + _text(record.reason)
    if isinstance(record, Cancel):
        return _HEADER.pack(TRANSFER_VERSION, CANCEL) + record.transfer_id + _text(record.reason)
    if isinstance(record, Have):
        ranges = b"".join(_RANGE.pack(s, e) for s, e in record.held)
        partial = b"".join(_PARTIAL.pack(i, n) for i, n in record.partial)
        return (
            _HEADER.pack(TRANSFER_VERSION, HAVE)
            + record.transfer_id
            + record.epoch
            + _U32.pack(len(record.held))
            + ranges
            + _U32.pack(len(record.partial))
            + partial
        )
    if isinstance(record, ManifestPage):
        return (
            _HEADER.pack(TRANSFER_VERSION, MANIFEST_PAGE)
            + _U64.pack(record.first)
            + _U32.pack(len(record.hashes))
            + b"".join(record.hashes)
        )
    if isinstance(record, Ack):
        return _HEADER.pack(TRANSFER_VERSION, ACK) + _PARTIAL.pack(record.index, record.piece)
    if isinstance(record, End):
        return _HEADER.pack(TRANSFER_VERSION, END)
    if isinstance(record, Complete):
        return _HEADER.pack(TRANSFER_VERSION, COMPLETE) + record.transfer_id
    if isinstance(record, DialBack):
        return _HEADER.pack(TRANSFER_VERSION, DIAL_BACK) + record.transfer_id
    if isinstance(record, Request):
        return (
            _HEADER.pack(TRANSFER_VERSION, REQUEST)
            + record.transfer_id
            + record.group_id
            + record.content_hash
        )
    raise TypeError(f"not a transfer record: {type(record).__name__}")


class _Reader:
    """Reads fields off a payload, raising :class:`MalformedTransferRecord` when it runs short."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def take(self, n: int, what: str) -> bytes:
        end = self.offset + n
        if end > len(self.data):
            raise MalformedTransferRecord(f"{what} truncated")
        out = self.data[self.offset : end]
        self.offset = end
        return bytes(out)

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = _U64.unpack(self.take(8, what))[0]
        return value

    def text(self, what: str, limit: int) -> str:
        (length,) = _U16.unpack(self.take(2, what))
        if length > limit:
            raise MalformedTransferRecord(f"{what} too long")
        try:
            return self.take(length, what).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedTransferRecord(f"{what} is not UTF-8") from None

    def done(self) -> None:
        if self.offset != len(self.data):
            raise MalformedTransferRecord("trailing bytes")


def parse_transfer_record(payload: bytes) -> TransferRecord:
    """Parse one transfer record.

    :raises MalformedTransferRecord: if the version is not 1, the type is unknown, a field is
        truncated or invalid, or bytes are left over.
    """
    if len(payload) < _HEADER.size:
        raise MalformedTransferRecord("header truncated")
    version, kind = _HEADER.unpack_from(payload)
    if version != TRANSFER_VERSION:
        raise MalformedTransferRecord(f"unsupported version {version}")
    r = _Reader(payload, _HEADER.size)
    try:
        record: TransferRecord
        if kind == PIECE:
            index = r.u64("index")
            piece = r.u32("piece")
            record = Piece(index, piece, bytes(payload[r.offset :]))
            return record
        if kind == CHUNK:
            raise OutdatedPeer("a whole-chunk record of an older Jarvis")
        if kind in (OFFER, GROUP_OFFER, FOLDER_OFFER):
            record = Offer(
                transfer_id=r.take(TRANSFER_ID_SIZE, "transfer id"),
                name=r.text("name", MAX_NAME_BYTES),
                size=r.u64("size"),
                content_hash=r.take(HASH_SIZE, "content hash"),
                media_type=r.text("media type", MAX_TYPE_BYTES),
                chunk_size=r.u32("chunk size"),
                secret=r.take(SECRET_SIZE, "secret"),
                group_id=r.take(GROUP_ID_SIZE, "group id") if kind == GROUP_OFFER else b"",
                folder_id=r.take(FOLDER_ID_SIZE, "folder id") if kind == FOLDER_OFFER else b"",
                folder=r.text("folder", MAX_FOLDER_BYTES) if kind == FOLDER_OFFER else "",
            )
        elif kind == ACCEPT:
            record = Accept(r.take(TRANSFER_ID_SIZE, "transfer id"))
        elif kind in (DECLINE, CANCEL):
            tid = r.take(TRANSFER_ID_SIZE, "transfer id")
            reason = r.text("reason", MAX_REASON_BYTES)
            record = Decline(tid, reason) if kind == DECLINE else Cancel(tid, reason)
        elif kind == HAVE:
            tid = r.take(TRANSFER_ID_SIZE, "transfer id")
            epoch = r.take(EPOCH_SIZE, "epoch")
            count = r.u32("range count")
            if count > MAX_RANGES:
                raise MalformedTransferRecord("too many ranges")
            raw = r.take(count * _RANGE.size, "ranges")
            held = tuple(_RANGE.iter_unpack(raw))
            count = r.u32("partial count")
            if count > MAX_RANGES:
                raise MalformedTransferRecord("too many partial chunks")
            raw = r.take(count * _PARTIAL.size, "partial chunks")
            record = Have(tid, epoch, held, tuple(_PARTIAL.iter_unpack(raw)))
        elif kind == MANIFEST_PAGE:
            first = r.u64("first index")
            count = r.u32("hash count")
            if count > MAX_HASHES_PER_PAGE:
                raise MalformedTransferRecord("too many hashes")
            raw = r.take(count * HASH_SIZE, "hashes")
            hashes = tuple(raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE))
            record = ManifestPage(first, hashes)
        elif kind == ACK:
            index = r.u64("index")
            record = Ack(index, r.u32("piece"))
        elif kind == END:
            record = End()
        elif kind == COMPLETE:
            record = Complete(r.take(TRANSFER_ID_SIZE, "transfer id"))
        elif kind == DIAL_BACK:
            record = DialBack(r.take(TRANSFER_ID_SIZE, "transfer id"))
        elif kind == REQUEST:
            record = Request(
                r.take(TRANSFER_ID_SIZE, "transfer id"),
                r.take(GROUP_ID_SIZE, "group id"),
                r.take(HASH_SIZE, "content hash"),
            )
        else:
            raise MalformedTransferRecord(f"unknown record type {kind}")
    except ValueError as e:
        raise MalformedTransferRecord(str(e)) from None
    r.done()
    return record


# -- a file shared into a group: the group message that records it ---------------------------

#: The start of a group message body that records a shared file rather than text (a NUL
#: first: no text a member writes starts with it, ``Groups.send`` refuses one that does).
SHARED_FILE_MARK = b"\x00jarvis/shared-file/v1\x00"


@dataclass(frozen=True)
class SharedFile:
    """What a group message says of a file its author shared into the group: enough for the
    history to show it and for a member to ask the author for it (:class:`Request`); no
    transfer id and no secret (each transfer has its own)."""

    name: str
    size: int
    content_hash: bytes
    media_type: str
    chunk_size: int

    def __post_init__(self) -> None:
        # the same rules as an offer's fields
        Offer(
            bytes(TRANSFER_ID_SIZE),
            self.name,
            self.size,
            self.content_hash,
            self.media_type,
            self.chunk_size,
            bytes(SECRET_SIZE),
        )

    @classmethod
    def of(cls, offer: Offer) -> SharedFile:
        """The shared file an *offer* is a transfer of."""
        return cls(offer.name, offer.size, offer.content_hash, offer.media_type, offer.chunk_size)

    def matches(self, offer: Offer) -> bool:
        """Whether *offer* is a transfer of this very file (its name may differ: the receiver
        sanitises names anyway; size, chunk size and content hash may not)."""
        return (offer.size, offer.chunk_size, offer.content_hash) == (
            self.size,
            self.chunk_size,
            self.content_hash,
        )


def encode_shared_file(shared: SharedFile) -> bytes:
    """The group message body recording *shared*: :data:`SHARED_FILE_MARK` then its fields."""
    return b"".join(
        [
            SHARED_FILE_MARK,
            _text(shared.name),
            _U64.pack(shared.size),
            shared.content_hash,
            _text(shared.media_type),
            _U32.pack(shared.chunk_size),
        ]
    )


def is_shared_file_body(body: bytes) -> bool:
    """Whether a group message *body* records a shared file (well formed or not)."""
    return body.startswith(SHARED_FILE_MARK)


def parse_shared_file(body: bytes) -> SharedFile:
    """Parse a group message body that :func:`is_shared_file_body`.

    :raises MalformedTransferRecord: if it is not exactly one well-formed shared file.
    """
    if not is_shared_file_body(body):
        raise MalformedTransferRecord("not a shared file")
    r = _Reader(body, len(SHARED_FILE_MARK))
    try:
        shared = SharedFile(
            name=r.text("name", MAX_NAME_BYTES),
            size=r.u64("size"),
            content_hash=r.take(HASH_SIZE, "content hash"),
            media_type=r.text("media type", MAX_TYPE_BYTES),
            chunk_size=r.u32("chunk size"),
        )
    except ValueError as e:
        raise MalformedTransferRecord(str(e)) from None
    r.done()
    return shared


def manifest_pages(chunk_hashes: Sequence[bytes]) -> list[ManifestPage]:
    """Cut a file's chunk hashes into :class:`ManifestPage` records."""
    return [
        ManifestPage(first, tuple(chunk_hashes[first : first + MAX_HASHES_PER_PAGE]))
        for first in range(0, len(chunk_hashes), MAX_HASHES_PER_PAGE)
    ]


class ManifestAssembler:
    """Collect :class:`ManifestPage` records and check them against the offered content hash.

    :param offer: the accepted offer.
    """

    def __init__(self, offer: Offer) -> None:
        self._offer = offer
        self._hashes: list[bytes | None] = [None] * offer.chunks

    def add(self, page: ManifestPage) -> tuple[bytes, ...] | None:
        """Take one page; return the whole manifest once every hash arrived and matched.

        :raises MalformedTransferRecord: if the page reaches past the last chunk, or the
            complete manifest does not hash to the offered content hash (a lying sender).
        """
        if page.first + len(page.hashes) > len(self._hashes):
            raise MalformedTransferRecord("manifest page past the last chunk")
        self._hashes[page.first : page.first + len(page.hashes)] = page.hashes
        if any(h is None for h in self._hashes):
            return None
        hashes = tuple(h for h in self._hashes if h is not None)
        offer = self._offer
        if manifest_root(offer.size, offer.chunk_size, hashes) != offer.content_hash:
            raise ManifestMismatch("manifest does not match the offered content hash")
        return hashes


# -- progress --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """A progress report: bytes done of *total*, the recent rate and the estimated time left.

    :ivar rate: bytes per second over the meter's window (0 until two samples exist).
    :ivar eta: seconds left at that rate, or ``None`` when the rate is 0.
    """

    done: int
    total: int
    rate: float
    eta: float | None


class ProgressMeter:
    """Turn byte counts into :class:`Progress` reports with a rate over a sliding window.

    :param total: the file size.
    :param seconds: the injected clock (``IReactorTime.seconds``).
    :param window: seconds of history the rate is computed over.
    """

    def __init__(self, total: int, seconds: Callable[[], float], *, window: float = 5.0) -> None:
        self._total = total
        self._seconds = seconds
        self._window = window
        self._samples: list[tuple[float, int]] = []

    def update(self, done: int) -> Progress:
        """Record that *done* bytes are held now and return the report."""
        now = self._seconds()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            del self._samples[0]
        first_t, first_done = self._samples[0]
        elapsed = now - first_t
        rate = (done - first_done) / elapsed if elapsed > 0 else 0.0
        eta = (self._total - done) / rate if rate > 0 else None
        return Progress(done, self._total, rate, eta)


# -- the state machine -----------------------------------------------------------------------

#: The states, for observers and docs.
STATES = ("offered", "accepted", "streaming", "verifying", "complete", "cancelled", "failed")
#: States a transfer never leaves.
FINAL_STATES = frozenset({"complete", "cancelled", "failed"})


@dataclass(frozen=True)
class TransferStatus:
    """What a :class:`Transfer` reports at each change of state.

    :ivar state: one of :data:`STATES`.
    :ivar reason: why it was cancelled or failed ("" otherwise).
    """

    transfer_id: bytes
    sending: bool
    state: str
    reason: str = ""


class TransferObserver(Protocol):
    """Told of every state change of a :class:`Transfer` (the node implements it)."""

    def transfer_changed(self, status: TransferStatus) -> None:
        """The transfer entered ``status.state``."""


class _TransferInputs(Protocol):
    """The inputs of the transfer machine (every state handles each of them)."""

    def accepted(self) -> None:
        "The receiver's user accepted (receiver), or the peer's Accept arrived (sender)."

    def declined(self, reason: str) -> None:
        "The receiver declined the offer."

    def stream_opened(self) -> None:
        "The transfer connection is up and the Have was exchanged."

    def stream_lost(self, reason: str) -> None:
        "The transfer connection went away (a resumable event)."

    def all_sent(self) -> None:
        "Receiver: every chunk is held; sender: End was sent."

    def verified(self) -> None:
        "Receiver: the whole file matched and got its name; sender: the peer's Complete arrived."

    def cancelled(self, reason: str) -> None:
        "Either side cancelled."

    def failed(self, reason: str) -> None:
        "Something not recoverable happened (verification failed, disk full, bad peer)."


class Transfer:
    """The lifecycle of one transfer on one side, as an Automat machine::

        offered --accepted--> accepted --stream_opened--> streaming --all_sent--> verifying
           |                     ^                            |                     |
           |                     +-------stream_lost----------+                     |
           |                                                                        v
           +--declined/cancelled--> cancelled   any active --failed--> failed   complete

    Every state handles every input; inputs that make no sense in a state (a late chunk
    report after a cancel, a second accept) are ignored and leave the state unchanged.  A
    sender that loses the stream while verifying keeps waiting: the receiver's
    :class:`Complete` also travels inside the end-to-end session.

    :param transfer_id: the transfer's id.
    :param sending: whether this side sends the file.
    :param observer: told of each change of state.
    """

    def __init__(self, transfer_id: bytes, *, sending: bool, observer: TransferObserver) -> None:
        self.transfer_id = transfer_id
        self.sending = sending
        self._observer = observer
        self._status = TransferStatus(transfer_id, sending, "offered")
        self._machine: _TransferInputs = _TransferMachine(self)

    @property
    def status(self) -> TransferStatus:
        """The last reported status."""
        return self._status

    @property
    def inputs(self) -> _TransferInputs:
        """The machine's inputs: ``transfer.inputs.accepted()`` and so on."""
        return self._machine

    def _enter(self, state: str, reason: str = "") -> None:
        self._status = TransferStatus(self.transfer_id, self.sending, state, reason)
        self._observer.transfer_changed(self._status)


_builder = TypeMachineBuilder(_TransferInputs, Transfer)
_offered = _builder.state("offered")
_accepted = _builder.state("accepted")
_streaming = _builder.state("streaming")
_verifying = _builder.state("verifying")
_complete = _builder.state("complete")
_cancelled = _builder.state("cancelled")
_failed = _builder.state("failed")

_ALL_INPUTS: tuple[Callable[..., None], ...] = (
    _TransferInputs.accepted,
    _TransferInputs.declined,
    _TransferInputs.stream_opened,
    _TransferInputs.stream_lost,
    _TransferInputs.all_sent,
    _TransferInputs.verified,
    _TransferInputs.cancelled,
    _TransferInputs.failed,
)


def _enter(state: str) -> Callable[..., None]:
    def output(inputs: _TransferInputs, core: Transfer, reason: str = "") -> None:
        core._enter(state, reason)

    output.__name__ = f"enter_{state}"
    return output


def _enter_with(state: str, prefix: str) -> Callable[..., None]:
    def output(inputs: _TransferInputs, core: Transfer, reason: str = "") -> None:
        core._enter(state, f"{prefix}: {reason}" if reason else prefix)

    output.__name__ = f"enter_{state}_{prefix}"
    return output


_offered.upon(_TransferInputs.accepted).to(_accepted)(_enter("accepted"))
_offered.upon(_TransferInputs.declined).to(_cancelled)(_enter_with("cancelled", "declined"))
_accepted.upon(_TransferInputs.stream_opened).to(_streaming)(_enter("streaming"))
_streaming.upon(_TransferInputs.stream_lost).to(_accepted)(_enter("accepted"))
_streaming.upon(_TransferInputs.all_sent).to(_verifying)(_enter("verifying"))
_verifying.upon(_TransferInputs.verified).to(_complete)(_enter("complete"))
# A sender waiting for Complete goes back to waiting for a connection; a receiver verifies
# locally and does not care.
_verifying.upon(_TransferInputs.stream_lost).loop()(lambda inputs, core, reason: None)

_TRANSITIONS = {
    ("offered", "accepted"),
    ("offered", "declined"),
    ("accepted", "stream_opened"),
    ("streaming", "stream_lost"),
    ("streaming", "all_sent"),
    ("verifying", "verified"),
    ("verifying", "stream_lost"),
}
_ACTIVE = {"offered": _offered, "accepted": _accepted, "streaming": _streaming}
_ACTIVE["verifying"] = _verifying
for _name, _state in _ACTIVE.items():
    _state.upon(_TransferInputs.cancelled).to(_cancelled)(_enter("cancelled"))
    _state.upon(_TransferInputs.failed).to(_failed)(_enter("failed"))
    for _input in _ALL_INPUTS:
        if _input.__name__ in ("cancelled", "failed") or (_name, _input.__name__) in _TRANSITIONS:
            continue
        _state.upon(_input).loop()(lambda inputs, core, *args: None)
for _final in (_complete, _cancelled, _failed):
    for _input in _ALL_INPUTS:
        _final.upon(_input).loop()(lambda inputs, core, *args: None)

_TransferMachine = _builder.build()
