"""Typed wire records of the peer protocol and their byte layout.

Every frame payload is one record: a 1-byte record type followed by the record's fields in a
fixed order.  Integers are unsigned big-endian; fixed-size byte fields (message ids, keys,
signatures, nonces) are written raw; variable-size fields are length-prefixed.  The layout is
deterministic, so a value has exactly one encoding and ``parse_record(encode_record(r)) == r``.

Record layouts are versioned by the protocol version the Hello exchange negotiates; version 1 is
the only one so far.  The Hello layout itself never changes, since it is what negotiates.
A record type this version does not know parses to :class:`UnknownRecord` (the session ignores
it, which lets a later version add records); a known type whose fields do not parse raises
:class:`MalformedRecord`.

Pure functions on bytes: no I/O, no cryptography (signatures are checked by the session), and
never log payloads.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

#: Record type bytes.
HELLO = 0x01
MESSAGE = 0x02
ACK = 0x03
READ = 0x04
PING = 0x05
PONG = 0x06
GOODBYE = 0x07
RESUME = 0x08
MAILBOX_ADDRESS = 0x09

MESSAGE_ID_SIZE = 16
EPHEMERAL_KEY_SIZE = 32
SIGNATURE_SIZE = 64
NONCE_SIZE = 8
#: A uid is 52 characters of lowercase base32; up to 64 are accepted on the wire.
MAX_UID_LENGTH = 64
#: Most message ids carried by one Ack or Read record; the session splits longer lists.
MAX_IDS_PER_RECORD = 1024
#: Most UTF-8 bytes of a Goodbye reason.
MAX_REASON_BYTES = 512
#: Sizes of a MailboxAddress's fixed fields: queue sender id, Ed25519 seed, signed prekey.
MAILBOX_QUEUE_ID_SIZE = 24
MAILBOX_KEY_SIZE = 32
MAILBOX_PREKEY_SIZE = 112
MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF

_UID_PATTERN = re.compile(r"[a-z2-7]{1,64}")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
#: A Message record after its type byte, up to its body: id, counter, created, body length.
_MESSAGE_HEAD = struct.Struct(">16sQQI")
_MESSAGE_TYPE = bytes([MESSAGE])
_MESSAGE_BODY_AT = 1 + _MESSAGE_HEAD.size


class MalformedRecord(Exception):
    """A record of a known type could not be parsed: a field is truncated, too long or invalid.

    The peer's software is broken or hostile; the session closes the connection.  The ``reason``
    attribute names the problem (never the payload's content).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed record: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Hello:
    """The first record each side sends: version range, identity, ephemeral key and signature.

    :ivar min_version: lowest protocol version the sender speaks.
    :ivar max_version: highest protocol version the sender speaks.
    :ivar uid: the sender's uid (lowercase base32).
    :ivar ephemeral_key: the sender's fresh X25519 public key (32 bytes).
    :ivar signature: Ed25519 signature (64 bytes) over the handshake transcript.
    """

    min_version: int
    max_version: int
    uid: str
    ephemeral_key: bytes
    signature: bytes


@dataclass(frozen=True)
class Message:
    """One sealed message.

    :ivar message_id: the message's 16-byte id, chosen by its author.
    :ivar counter: the cascade counter of this direction (see :mod:`jarvis.crypto.cascade`).
    :ivar created: when the author wrote it, in milliseconds since the Unix epoch.
    :ivar body: the cascade-sealed body.
    """

    message_id: bytes
    counter: int
    created: int
    body: bytes


@dataclass(frozen=True)
class Ack:
    """The sender stored these messages: the other side may drop them from its outbox."""

    message_ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        # Accept any sequence, keep a tuple: the value stays hashable and immutable.
        object.__setattr__(self, "message_ids", tuple(self.message_ids))


@dataclass(frozen=True)
class Read:
    """The sender's user has read these messages."""

    message_ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        # Accept any sequence, keep a tuple: the value stays hashable and immutable.
        object.__setattr__(self, "message_ids", tuple(self.message_ids))


@dataclass(frozen=True)
class Ping:
    """Keepalive probe; the receiver answers with a :class:`Pong` carrying the same nonce."""

    nonce: bytes


@dataclass(frozen=True)
class Pong:
    """Answer to a :class:`Ping`."""

    nonce: bytes


@dataclass(frozen=True)
class Goodbye:
    """The sender is closing the connection; *reason* is a short human-readable text."""

    reason: str


@dataclass(frozen=True)
class Resume:
    """Where the sender's receiving side stands: the id of the last message it stored from the
    receiver of this record, with every message the receiver sent before that one.

    Sent right before the sender's :class:`Hello` (a peer that does not know this record type
    ignores it, as every unknown record), so that the peer knows it when the session is
    established: it marks delivered what it sent up to *message_id* instead of sending it
    again.  Added in the life of protocol version 1; optional.

    :ivar message_id: a 16-byte message id the receiver of this record wrote.
    """

    message_id: bytes


@dataclass(frozen=True)
class UnknownRecord:
    """A record whose type this version does not know (ignored by the session)."""

    record_type: int


@dataclass(frozen=True)
class MailboxAddress:
    """Where to deposit messages for the sender of this record while it is offline (issue 15).

    Sent on an established session (a peer that does not know this record type ignores it).
    An empty *link* says the sender dropped its mailbox: deposit nothing any more.  Added in
    the life of protocol version 1; optional.

    :ivar link: the ``jarvis-mailbox:`` link of the sender's mailbox (ASCII), or empty.
    :ivar sender_id: the 24-byte id of the queue the receiver of this record deposits into.
    :ivar sender_key: the 32-byte Ed25519 seed that signs those deposits (for this queue only).
    :ivar prekey: the sender's signed prekey (112 bytes, ``jarvis.crypto.mailseal``) that
        deposits are sealed to.
    """

    link: str
    sender_id: bytes = b""
    sender_key: bytes = b""
    prekey: bytes = b""


Record = Hello | Message | Ack | Read | Ping | Pong | Goodbye | Resume | MailboxAddress


def _u16(value: int, name: str) -> bytes:
    if not 0 <= value <= MAX_U16:
        raise ValueError(f"{name} must fit in 16 bits")
    return _U16.pack(value)


def _check_u64(value: int, name: str) -> int:
    if not 0 <= value <= MAX_U64:
        raise ValueError(f"{name} must fit in 64 bits")
    return value


def _fixed(value: bytes, size: int, name: str) -> bytes:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(value)}")
    return bytes(value)


def _id_list(message_ids: tuple[bytes, ...]) -> bytes:
    if len(message_ids) > MAX_IDS_PER_RECORD:
        raise ValueError(f"at most {MAX_IDS_PER_RECORD} message ids per record")
    parts = [_U16.pack(len(message_ids))]
    parts.extend(_fixed(i, MESSAGE_ID_SIZE, "message id") for i in message_ids)
    return b"".join(parts)


def encode_record(record: Record) -> bytes:
    """Return the payload bytes of *record*.

    :param record: a :data:`Record` value.
    :returns: type byte + fields.
    :raises ValueError: if a field is out of range (wrong size, too long, bad uid).
    :raises TypeError: if *record* is not a known record.
    """
    match record:
        case Hello():
            if not _UID_PATTERN.fullmatch(record.uid):
                raise ValueError("uid must be 1 to 64 characters of lowercase base32")
            if record.min_version > record.max_version:
                raise ValueError("min_version must not exceed max_version")
            uid = record.uid.encode("ascii")
            return b"".join(
                [
                    bytes([HELLO]),
                    _u16(record.min_version, "min_version"),
                    _u16(record.max_version, "max_version"),
                    _U16.pack(len(uid)),
                    uid,
                    _fixed(record.ephemeral_key, EPHEMERAL_KEY_SIZE, "ephemeral key"),
                    _fixed(record.signature, SIGNATURE_SIZE, "signature"),
                ]
            )
        case Message():
            if len(record.body) > MAX_U32:
                raise ValueError("body too large")
            head = _MESSAGE_HEAD.pack(
                _fixed(record.message_id, MESSAGE_ID_SIZE, "message id"),
                _check_u64(record.counter, "counter"),
                _check_u64(record.created, "created"),
                len(record.body),
            )
            return _MESSAGE_TYPE + head + bytes(record.body)
        case Ack():
            return bytes([ACK]) + _id_list(record.message_ids)
        case Read():
            return bytes([READ]) + _id_list(record.message_ids)
        case Ping():
            return bytes([PING]) + _fixed(record.nonce, NONCE_SIZE, "nonce")
        case Pong():
            return bytes([PONG]) + _fixed(record.nonce, NONCE_SIZE, "nonce")
        case Goodbye():
            reason = record.reason.encode("utf-8")
            if len(reason) > MAX_REASON_BYTES:
                raise ValueError(f"reason must be at most {MAX_REASON_BYTES} UTF-8 bytes")
            return bytes([GOODBYE]) + _U16.pack(len(reason)) + reason
        case Resume():
            return bytes([RESUME]) + _fixed(record.message_id, MESSAGE_ID_SIZE, "message id")
        case MailboxAddress():
            link = record.link.encode("ascii")
            if len(link) > MAX_REASON_BYTES:
                raise ValueError(f"mailbox link must be at most {MAX_REASON_BYTES} bytes")
            if not link:
                return bytes([MAILBOX_ADDRESS]) + _U16.pack(0)
            return b"".join(
                [
                    bytes([MAILBOX_ADDRESS]),
                    _U16.pack(len(link)),
                    link,
                    _fixed(record.sender_id, MAILBOX_QUEUE_ID_SIZE, "sender id"),
                    _fixed(record.sender_key, MAILBOX_KEY_SIZE, "sender key"),
                    _fixed(record.prekey, MAILBOX_PREKEY_SIZE, "prekey"),
                ]
            )
    raise TypeError(f"not a record: {type(record).__name__}")


class _Reader:
    """Sequential reader over a payload that raises :class:`MalformedRecord` when short."""

    def __init__(self, data: bytes, kind: str) -> None:
        self._data = memoryview(data)
        self._offset = 0
        self._kind = kind

    def take(self, size: int, what: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise MalformedRecord(f"{self._kind}: truncated {what}")
        chunk = bytes(self._data[self._offset : end])
        self._offset = end
        return chunk

    def u16(self, what: str) -> int:
        (value,) = _U16.unpack(self.take(2, what))
        return int(value)

    def u32(self, what: str) -> int:
        (value,) = _U32.unpack(self.take(4, what))
        return int(value)

    def u64(self, what: str) -> int:
        (value,) = _U64.unpack(self.take(8, what))
        return int(value)

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise MalformedRecord(f"{self._kind}: {len(self._data) - self._offset} trailing bytes")

    def id_list(self) -> tuple[bytes, ...]:
        count = self.u16("id count")
        if count > MAX_IDS_PER_RECORD:
            raise MalformedRecord(f"{self._kind}: more than {MAX_IDS_PER_RECORD} message ids")
        return tuple(self.take(MESSAGE_ID_SIZE, "message id") for _ in range(count))


def _parse_hello(r: _Reader) -> Hello:
    min_version = r.u16("min_version")
    max_version = r.u16("max_version")
    uid_length = r.u16("uid length")
    if uid_length > MAX_UID_LENGTH:
        raise MalformedRecord("hello: uid too long")
    raw_uid = r.take(uid_length, "uid")
    uid = raw_uid.decode("ascii", "replace")
    if not _UID_PATTERN.fullmatch(uid):
        raise MalformedRecord("hello: uid is not lowercase base32")
    if min_version > max_version:
        raise MalformedRecord("hello: min_version exceeds max_version")
    ephemeral_key = r.take(EPHEMERAL_KEY_SIZE, "ephemeral key")
    signature = r.take(SIGNATURE_SIZE, "signature")
    return Hello(min_version, max_version, uid, ephemeral_key, signature)


def _parse_message(r: _Reader) -> Message:
    message_id = r.take(MESSAGE_ID_SIZE, "message id")
    counter = r.u64("counter")
    created = r.u64("created")
    body = r.take(r.u32("body length"), "body")
    return Message(message_id, counter, created, body)


def _parse_goodbye(r: _Reader) -> Goodbye:
    length = r.u16("reason length")
    if length > MAX_REASON_BYTES:
        raise MalformedRecord("goodbye: reason too long")
    try:
        reason = r.take(length, "reason").decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRecord("goodbye: reason is not UTF-8")
    return Goodbye(reason)


def _parse_mailbox_address(r: _Reader) -> MailboxAddress:
    length = r.u16("link length")
    if length > MAX_REASON_BYTES:
        raise MalformedRecord("mailbox address: link too long")
    raw = r.take(length, "link")
    if not raw:
        return MailboxAddress("")
    try:
        link = raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedRecord("mailbox address: link is not ASCII")
    return MailboxAddress(
        link,
        r.take(MAILBOX_QUEUE_ID_SIZE, "sender id"),
        r.take(MAILBOX_KEY_SIZE, "sender key"),
        r.take(MAILBOX_PREKEY_SIZE, "prekey"),
    )


_PARSERS: dict[int, tuple[str, Callable[[_Reader], Record]]] = {
    HELLO: ("hello", _parse_hello),
    MESSAGE: ("message", _parse_message),
    ACK: ("ack", lambda r: Ack(r.id_list())),
    READ: ("read", lambda r: Read(r.id_list())),
    PING: ("ping", lambda r: Ping(r.take(NONCE_SIZE, "nonce"))),
    PONG: ("pong", lambda r: Pong(r.take(NONCE_SIZE, "nonce"))),
    GOODBYE: ("goodbye", _parse_goodbye),
    RESUME: ("resume", lambda r: Resume(r.take(MESSAGE_ID_SIZE, "message id"))),
    MAILBOX_ADDRESS: ("mailbox address", _parse_mailbox_address),
}


def parse_record(payload: bytes) -> Record | UnknownRecord:
    """Parse one frame payload.

    :param payload: the bytes of one frame.
    :returns: the record, or :class:`UnknownRecord` for a type this version does not know.
    :raises MalformedRecord: if the payload is empty or a known record does not parse exactly
        (truncated, invalid field, trailing bytes).
    """
    if not payload:
        raise MalformedRecord("empty record")
    record_type = payload[0]
    if record_type == MESSAGE and len(payload) >= _MESSAGE_BODY_AT:
        # The hot path, in one unpack; anything but an exact fit takes the reader below,
        # which names what is wrong.
        message_id, counter, created, length = _MESSAGE_HEAD.unpack_from(payload, 1)
        if _MESSAGE_BODY_AT + length == len(payload):
            return Message(message_id, counter, created, bytes(payload[_MESSAGE_BODY_AT:]))
    entry = _PARSERS.get(record_type)
    if entry is None:
        return UnknownRecord(record_type)
    kind, parse = entry
    reader = _Reader(payload[1:], kind)
    record = parse(reader)
    reader.finish()
    return record
