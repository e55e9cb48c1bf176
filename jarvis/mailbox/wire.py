"""The mailbox wire protocol, sans-IO: frames, typed records, pure encode and parse.

**Frames.**  A 4-byte big-endian length, then that many bytes of record.  A length above
:data:`MAX_FRAME` is refused before any byte of the body is buffered (:class:`FrameTooLong`),
so a peer cannot make us hold more than one maximum frame per connection.

**Records.**  ``version (1) | type (1) | fields``; integers big-endian, fixed-size fields, the
block last.  Every record has a fixed layout for its type (:data:`LAYOUTS`); a record whose
length does not match exactly is :class:`MalformedRecord`.  Commands carry a correlation number
``corr`` that the server repeats in its answer.

Signed commands (everything that touches a queue) carry an Ed25519 signature by the queue's
key for that role over :func:`signed_data`: a domain label, the connection's 32-byte challenge
(sent by the server in :class:`Hello`), the record's head, ``corr`` and queue id, and the
SHA-256 of the fields after the signature (the block of a deposit: Ed25519 over 16 KiB costs
twice as much as over its hash, measured).  The server
requires ``corr`` to grow strictly on a connection, so a signature can be used once, on one
connection.

**Blocks.**  Deposited blocks are exactly :data:`BLOCK_SIZE` bytes: ``length (4) | payload |
zero padding`` (:func:`pad_block`, :func:`unpad_block`); payloads are at most
:data:`MAX_PAYLOAD` bytes.  The server refuses any other size, so every stored and delivered
block looks alike whatever it holds.

Pure code: no reactor, no I/O, no logging.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import ClassVar

#: Protocol version spoken by this module.
VERSION = 1
#: Size of every deposited block, in bytes (one bucket: 16 KiB).
BLOCK_SIZE = 16 * 1024
#: Largest payload a block can carry (the block's first 4 bytes hold the payload length).
MAX_PAYLOAD = BLOCK_SIZE - 4
#: Largest frame body accepted, in bytes: one block plus the largest header, rounded up.
MAX_FRAME = BLOCK_SIZE + 512
#: Length of queue ids (sender and recipient ids are independent random values).
QUEUE_ID_BYTES = 24
#: Length of message ids (random, chosen by the server at deposit).
MSG_ID_BYTES = 16
#: Length of the per-connection challenge.
NONCE_BYTES = 32
KEY_BYTES = 32
SIGNATURE_BYTES = 64
#: Domain label of command signatures.
SIGNATURE_DOMAIN = b"jarvis-mailbox-v1\x00"

_LEN = struct.Struct(">I")


class WireError(Exception):
    """Base class of protocol violations; the server answers with an error and closes."""


class FrameTooLong(WireError):
    """A frame announced more than MAX_FRAME bytes."""


class MalformedRecord(WireError):
    """A record's version, type or layout is wrong."""


class UnsupportedVersion(MalformedRecord):
    """The record is of a protocol version this side does not speak."""


# -- error codes ---------------------------------------------------------------------------------

#: The record could not be parsed (the connection is closed after this error).
ERR_SYNTAX = 1
#: No such queue, or the signature does not verify, or a replayed signature: deliberately one
#: code, so a guessed queue id is indistinguishable from a bad key.
ERR_AUTH = 2
#: The queue is full (message count or bytes quota): the sender should tell its user and retry
#: later, when the recipient has collected.
ERR_QUOTA = 3
#: Too many commands: slow down and retry.
ERR_RATE = 4
#: The block is not exactly BLOCK_SIZE bytes.
ERR_BLOCK_SIZE = 5
#: The acknowledged message is not the one delivered.
ERR_NO_MSG = 6
#: The record's version is not supported (the connection is closed after this error).
ERR_VERSION = 7
#: The frame was longer than MAX_FRAME (the connection is closed after this error).
ERR_TOO_LONG = 8
#: The server failed (storage); retry later.
ERR_INTERNAL = 9

ERROR_NAMES = {
    ERR_SYNTAX: "syntax",
    ERR_AUTH: "auth",
    ERR_QUOTA: "quota",
    ERR_RATE: "rate",
    ERR_BLOCK_SIZE: "block_size",
    ERR_NO_MSG: "no_msg",
    ERR_VERSION: "version",
    ERR_TOO_LONG: "too_long",
    ERR_INTERNAL: "internal",
}


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Server -> client, first record of a connection: the version and this connection's
    challenge, which every signature on this connection covers."""

    TYPE: ClassVar[int] = 0x01
    nonce: bytes


@dataclass(frozen=True)
class NewQueue:
    """Client -> server: create a queue with these two public keys (recipient, sender)."""

    TYPE: ClassVar[int] = 0x10
    corr: int
    recipient_key: bytes
    sender_key: bytes


@dataclass(frozen=True)
class Deposit:
    """Client -> server: store *block* in the queue whose sender id is *queue_id*."""

    TYPE: ClassVar[int] = 0x11
    corr: int
    queue_id: bytes
    signature: bytes
    block: bytes


@dataclass(frozen=True)
class Subscribe:
    """Client -> server: deliver the queue's messages (recipient id), oldest first, one at a
    time, and push new deposits while this connection lasts."""

    TYPE: ClassVar[int] = 0x12
    corr: int
    queue_id: bytes
    signature: bytes


@dataclass(frozen=True)
class Ack:
    """Client -> server: the delivered message *msg_id* is safe with the collector: delete it
    and deliver the next."""

    TYPE: ClassVar[int] = 0x13
    corr: int
    queue_id: bytes
    signature: bytes
    msg_id: bytes


@dataclass(frozen=True)
class DeleteQueue:
    """Client -> server: delete the queue (recipient id) and everything in it."""

    TYPE: ClassVar[int] = 0x14
    corr: int
    queue_id: bytes
    signature: bytes


@dataclass(frozen=True)
class StatusRequest:
    """Client -> server: aggregate health figures (no queue ids)."""

    TYPE: ClassVar[int] = 0x15
    corr: int


@dataclass(frozen=True)
class QueueIds:
    """Server -> client: the new queue's recipient id and sender id."""

    TYPE: ClassVar[int] = 0x20
    corr: int
    recipient_id: bytes
    sender_id: bytes


@dataclass(frozen=True)
class Ok:
    """Server -> client: the command *corr* succeeded; *msg_id* names a deposited message
    (zero bytes for other commands)."""

    TYPE: ClassVar[int] = 0x21
    corr: int
    msg_id: bytes


@dataclass(frozen=True)
class Error:
    """Server -> client: the command *corr* failed with *code* (0 when no command is meant)."""

    TYPE: ClassVar[int] = 0x22
    corr: int
    code: int

    @property
    def name(self) -> str:
        return ERROR_NAMES.get(self.code, f"error {self.code}")


@dataclass(frozen=True)
class Message:
    """Server -> client: one queued message of the subscribed queue *queue_id*."""

    TYPE: ClassVar[int] = 0x23
    queue_id: bytes
    msg_id: bytes
    timestamp: int
    block: bytes


@dataclass(frozen=True)
class Empty:
    """Server -> client: the subscribed queue *queue_id* has nothing more (for now)."""

    TYPE: ClassVar[int] = 0x24
    queue_id: bytes


@dataclass(frozen=True)
class StatusReply:
    """Server -> client: health figures as compact JSON (``lag``, ``queues``, ``messages``,
    ``bytes``, ``clients``, ``pending``)."""

    TYPE: ClassVar[int] = 0x25
    corr: int
    figures: bytes


Record = (
    Hello
    | NewQueue
    | Deposit
    | Subscribe
    | Ack
    | DeleteQueue
    | StatusRequest
    | QueueIds
    | Ok
    | Error
    | Message
    | Empty
    | StatusReply
)
SignedCommand = Deposit | Subscribe | Ack | DeleteQueue

_HEAD = struct.Struct(">BB")
_CORR = struct.Struct(">I")
_SIGNED = struct.Struct(f">I{QUEUE_ID_BYTES}s{SIGNATURE_BYTES}s")
_MESSAGE = struct.Struct(f">{QUEUE_ID_BYTES}s{MSG_ID_BYTES}sQ")
_ERROR = struct.Struct(">IH")

MAX_CORR = 0xFFFFFFFF


def _head(record_type: int) -> bytes:
    return _HEAD.pack(VERSION, record_type)


def _signed_fields(cmd: SignedCommand) -> bytes:
    """The command's fields after the signature (what the signature covers besides the head)."""
    if isinstance(cmd, Deposit):
        return cmd.block
    if isinstance(cmd, Ack):
        return cmd.msg_id
    return b""


def signed_data(nonce: bytes, cmd: SignedCommand) -> bytes:
    """Return the bytes a signed command's signature covers: domain, *nonce*, head, corr,
    queue id and the SHA-256 of the fields after the signature.

    :param nonce: the connection's challenge from :class:`Hello`.
    """
    return b"".join(
        (
            SIGNATURE_DOMAIN,
            nonce,
            _head(cmd.TYPE),
            _CORR.pack(cmd.corr),
            cmd.queue_id,
            hashlib.sha256(_signed_fields(cmd)).digest(),
        )
    )


def encode(record: Record) -> bytes:
    """Return the record's bytes (without the frame length).

    :raises ValueError: if a field has the wrong size.
    """
    _check(record)
    head = _head(record.TYPE)
    if isinstance(record, Hello):
        return head + record.nonce
    if isinstance(record, NewQueue):
        return head + _CORR.pack(record.corr) + record.recipient_key + record.sender_key
    if isinstance(record, Deposit | Subscribe | Ack | DeleteQueue):
        return (
            head
            + _SIGNED.pack(record.corr, record.queue_id, record.signature)
            + _signed_fields(record)
        )
    if isinstance(record, StatusRequest):
        return head + _CORR.pack(record.corr)
    if isinstance(record, QueueIds):
        return head + _CORR.pack(record.corr) + record.recipient_id + record.sender_id
    if isinstance(record, Ok):
        return head + _CORR.pack(record.corr) + record.msg_id
    if isinstance(record, Error):
        return head + _ERROR.pack(record.corr, record.code)
    if isinstance(record, Message):
        return head + _MESSAGE.pack(record.queue_id, record.msg_id, record.timestamp) + record.block
    if isinstance(record, Empty):
        return head + record.queue_id
    if isinstance(record, StatusReply):
        return head + _CORR.pack(record.corr) + record.figures
    raise TypeError(f"not a mailbox record: {record!r}")


def _check(record: Record) -> None:
    def size(value: bytes, n: int, what: str) -> None:
        if len(value) != n:
            raise ValueError(f"{what} must be {n} bytes, not {len(value)}")

    corr = getattr(record, "corr", 0)
    if not 0 <= corr <= MAX_CORR:
        raise ValueError(f"corr out of range: {corr}")
    if isinstance(record, Hello):
        size(record.nonce, NONCE_BYTES, "nonce")
    elif isinstance(record, NewQueue):
        size(record.recipient_key, KEY_BYTES, "recipient key")
        size(record.sender_key, KEY_BYTES, "sender key")
    elif isinstance(record, Deposit | Subscribe | Ack | DeleteQueue):
        size(record.queue_id, QUEUE_ID_BYTES, "queue id")
        size(record.signature, SIGNATURE_BYTES, "signature")
        if isinstance(record, Ack):
            size(record.msg_id, MSG_ID_BYTES, "message id")
        if isinstance(record, Deposit) and len(record.block) > BLOCK_SIZE:
            raise ValueError(f"block longer than {BLOCK_SIZE} bytes")
    elif isinstance(record, QueueIds):
        size(record.recipient_id, QUEUE_ID_BYTES, "recipient id")
        size(record.sender_id, QUEUE_ID_BYTES, "sender id")
    elif isinstance(record, Ok):
        if len(record.msg_id) not in (0, MSG_ID_BYTES):
            raise ValueError("message id must be empty or 16 bytes")
    elif isinstance(record, Error):
        if not 0 <= record.code <= 0xFFFF:
            raise ValueError("error code out of range")
    elif isinstance(record, Message):
        size(record.queue_id, QUEUE_ID_BYTES, "queue id")
        size(record.msg_id, MSG_ID_BYTES, "message id")
        if not 0 <= record.timestamp < 2**64:
            raise ValueError("timestamp out of range")
        if len(record.block) > BLOCK_SIZE:
            raise ValueError(f"block longer than {BLOCK_SIZE} bytes")
    elif isinstance(record, Empty):
        size(record.queue_id, QUEUE_ID_BYTES, "queue id")
    elif isinstance(record, StatusReply) and len(record.figures) > MAX_FRAME - 16:
        raise ValueError("status figures too long")


def parse(data: bytes) -> Record:
    """Parse one record (a frame's body).

    :raises UnsupportedVersion: if the version byte is not :data:`VERSION`.
    :raises MalformedRecord: for an unknown type or a wrong layout.
    """
    if len(data) < _HEAD.size:
        raise MalformedRecord("record shorter than its head")
    version, record_type = _HEAD.unpack_from(data)
    if version != VERSION:
        raise UnsupportedVersion(f"protocol version {version} is not supported")
    body = memoryview(data)[_HEAD.size :]
    try:
        return _parse_body(record_type, body)
    except struct.error:
        raise MalformedRecord(f"record of type {record_type:#x} has a wrong length") from None


def _exact(body: memoryview, n: int, record_type: int) -> None:
    if len(body) != n:
        raise MalformedRecord(f"record of type {record_type:#x} has a wrong length")


def _parse_body(t: int, body: memoryview) -> Record:
    if t == Hello.TYPE:
        _exact(body, NONCE_BYTES, t)
        return Hello(bytes(body))
    if t == NewQueue.TYPE:
        _exact(body, 4 + 2 * KEY_BYTES, t)
        (corr,) = _CORR.unpack_from(body)
        return NewQueue(corr, bytes(body[4:36]), bytes(body[36:68]))
    if t in (Deposit.TYPE, Subscribe.TYPE, Ack.TYPE, DeleteQueue.TYPE):
        if len(body) < _SIGNED.size:
            raise MalformedRecord(f"record of type {t:#x} has a wrong length")
        corr, queue_id, signature = _SIGNED.unpack_from(body)
        rest = body[_SIGNED.size :]
        if t == Deposit.TYPE:
            if len(rest) > BLOCK_SIZE:
                raise MalformedRecord("block longer than the block size")
            return Deposit(corr, queue_id, signature, bytes(rest))
        if t == Ack.TYPE:
            _exact(rest, MSG_ID_BYTES, t)
            return Ack(corr, queue_id, signature, bytes(rest))
        _exact(rest, 0, t)
        if t == Subscribe.TYPE:
            return Subscribe(corr, queue_id, signature)
        return DeleteQueue(corr, queue_id, signature)
    if t == StatusRequest.TYPE:
        _exact(body, 4, t)
        return StatusRequest(_CORR.unpack_from(body)[0])
    if t == QueueIds.TYPE:
        _exact(body, 4 + 2 * QUEUE_ID_BYTES, t)
        (corr,) = _CORR.unpack_from(body)
        return QueueIds(corr, bytes(body[4:28]), bytes(body[28:52]))
    if t == Ok.TYPE:
        if len(body) not in (4, 4 + MSG_ID_BYTES):
            raise MalformedRecord("ok record has a wrong length")
        return Ok(_CORR.unpack_from(body)[0], bytes(body[4:]))
    if t == Error.TYPE:
        _exact(body, _ERROR.size, t)
        corr, code = _ERROR.unpack_from(body)
        return Error(corr, code)
    if t == Message.TYPE:
        if len(body) < _MESSAGE.size or len(body) > _MESSAGE.size + BLOCK_SIZE:
            raise MalformedRecord("message record has a wrong length")
        queue_id, msg_id, timestamp = _MESSAGE.unpack_from(body)
        return Message(queue_id, msg_id, timestamp, bytes(body[_MESSAGE.size :]))
    if t == Empty.TYPE:
        _exact(body, QUEUE_ID_BYTES, t)
        return Empty(bytes(body))
    if t == StatusReply.TYPE:
        if len(body) < 4:
            raise MalformedRecord("status record has a wrong length")
        return StatusReply(_CORR.unpack_from(body)[0], bytes(body[4:]))
    raise MalformedRecord(f"unknown record type {t:#x}")


def frame(record: Record) -> bytes:
    """Return the record as one frame: length prefix and body."""
    body = encode(record)
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Split a byte stream into frame bodies, refusing any frame longer than *max_frame*.

    Feed bytes with :meth:`feed`; it returns the complete frame bodies found so far.  After a
    :class:`FrameTooLong` the decoder stays broken (the caller closes the connection).
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max = max_frame
        self._buffer = bytearray()
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add *data*; return every complete frame body, in order.

        :raises FrameTooLong: when a frame announces more than the maximum.
        """
        if self._broken:
            raise FrameTooLong("the stream is already broken")
        self._buffer += data
        frames: list[bytes] = []
        offset = 0
        buf = self._buffer
        while len(buf) - offset >= 4:
            (length,) = _LEN.unpack_from(buf, offset)
            if length > self._max:
                self._broken = True
                self._buffer = bytearray()
                raise FrameTooLong(f"frame of {length} bytes exceeds {self._max}")
            end = offset + 4 + length
            if len(buf) < end:
                break
            frames.append(bytes(buf[offset + 4 : end]))
            offset = end
        if offset:
            del buf[:offset]
        return frames


def pad_block(payload: bytes) -> bytes:
    """Return *payload* as one :data:`BLOCK_SIZE` block (length, payload, zero padding).

    :raises ValueError: if the payload exceeds :data:`MAX_PAYLOAD`.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _LEN.pack(len(payload)) + payload + bytes(MAX_PAYLOAD - len(payload))


def unpad_block(block: bytes) -> bytes:
    """Return the payload of a block made by :func:`pad_block`.

    :raises MalformedRecord: if the block's size or length field is wrong.
    """
    if len(block) != BLOCK_SIZE:
        raise MalformedRecord(f"block of {len(block)} bytes, not {BLOCK_SIZE}")
    (length,) = _LEN.unpack_from(block)
    if length > MAX_PAYLOAD:
        raise MalformedRecord("block length field out of range")
    return block[4 : 4 + length]
