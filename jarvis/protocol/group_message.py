"""A group message: signed by its author, chained to the author's previous one, with parents.

Every message in a group carries the group id, its author's public key, the author's sequence
number (1, 2, 3, ...), the hash of the author's previous message (so each author's messages form
a hash chain: a withheld message leaves a visible gap, two different messages at one position are
proof the author forked), the group state version it was written under (so members can refuse
what a removed member writes after removal), a creation time, the latest message the author had
seen from each of up to :data:`MAX_PARENTS` other authors (its causal parents, which fix the order
every member shows), and an opaque body.  The author signs it with their Ed25519 identity key.

Layout (integers unsigned big-endian; see docs/protocol.md, "Groups")::

    message = body || signature (64)
    body    = u8(1) || group_id (16) || author_key (32) || u64(seq) || prev_hash (32)
              || u64(state_version) || u64(created_ms) || u8(count) || parent * count
              || u32(len(text)) || text
    parent  = author_key (32) || u64(seq) || hash (32)
    signed  = "jarvis group message v1" || 0x00 || body
    hash    = SHA-256(message);  message id = hash[:16]

Parents are sorted by author key, one per author, never the author themself; seq 1 has an
all-zero ``prev_hash``.  The body is opaque here (the lead's layer puts UTF-8 text in it).

Pure code: no reactor, no I/O; never log bodies.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace

from jarvis.crypto.errors import BadSignature
from jarvis.crypto.identity import IdentityKey, uid_for_public_bytes, verify_signature

GROUP_ID_SIZE = 16
KEY_SIZE = 32
HASH_SIZE = 32
SIGNATURE_SIZE = 64
#: Size of a group message id (the first bytes of its hash), shared by its fan-out entries.
MESSAGE_ID_SIZE = 16
NO_HASH = bytes(HASH_SIZE)
#: Most causal parents one message names (one per other author, the most recent first).
MAX_PARENTS = 32
#: Most bytes of a message's body.
MAX_BODY_BYTES = 16 * 1024
MAX_U64 = 0xFFFFFFFFFFFFFFFF
#: Most bytes of an encoded message.
MAX_MESSAGE_BYTES = (
    1 + GROUP_ID_SIZE + KEY_SIZE + 8 + HASH_SIZE + 8 + 8 + 1
    + MAX_PARENTS * (KEY_SIZE + 8 + HASH_SIZE) + 4 + MAX_BODY_BYTES + SIGNATURE_SIZE
)  # fmt: skip

_FORMAT = 1
_SIGN_LABEL = b"jarvis group message v1\x00"
_HEAD = struct.Struct(">B16s32sQ32sQQB")
_PARENT = struct.Struct(">32sQ32s")
_U32 = struct.Struct(">I")


class MalformedGroupMessage(ValueError):
    """The bytes are not a group message (truncated, too long, non-canonical, out of range).

    Drop them; ``reason`` names the problem, never the body.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed group message: {reason}")
        self.reason = reason


@dataclass(frozen=True, order=True)
class Parent:
    """A causal parent: the latest message of *author* the writer had seen.

    :ivar author: the parent author's raw public key.
    :ivar seq: that message's sequence number.
    :ivar hash: that message's :func:`message_hash`.
    """

    author: bytes
    seq: int
    hash: bytes


@dataclass(frozen=True)
class GroupMessage:
    """One signed group message.  Build it with :func:`write_message`.

    :ivar group_id: the group's 16-byte id.
    :ivar author: the author's raw 32-byte Ed25519 key.
    :ivar seq: the author's sequence number in this group, from 1.
    :ivar prev_hash: :func:`message_hash` of the author's message ``seq - 1`` (zeros for 1).
    :ivar state_version: the group state version the author held when writing.
    :ivar created: milliseconds since the Unix epoch, by the author's clock (not trusted).
    :ivar parents: causal parents, sorted by author key.
    :ivar body: opaque content, at most :data:`MAX_BODY_BYTES`.
    :ivar signature: the author's Ed25519 signature.
    """

    group_id: bytes
    author: bytes
    seq: int
    prev_hash: bytes
    state_version: int
    created: int
    parents: tuple[Parent, ...]
    body: bytes
    signature: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "parents", tuple(self.parents))

    @property
    def author_uid(self) -> str:
        """The author's uid (derived from the key)."""
        return uid_for_public_bytes(self.author)


def _check(message: GroupMessage) -> None:
    if len(message.group_id) != GROUP_ID_SIZE:
        raise ValueError(f"the group id is {GROUP_ID_SIZE} bytes")
    if len(message.author) != KEY_SIZE:
        raise ValueError(f"the author's key is {KEY_SIZE} bytes")
    if not 1 <= message.seq <= MAX_U64:
        raise ValueError("the sequence number is out of range")
    if len(message.prev_hash) != HASH_SIZE:
        raise ValueError(f"the previous hash is {HASH_SIZE} bytes")
    if (message.seq == 1) != (message.prev_hash == NO_HASH):
        raise ValueError("only the first message has no previous hash")
    for value, what in ((message.state_version, "state version"), (message.created, "time")):
        if not 0 <= value <= MAX_U64:
            raise ValueError(f"the {what} is out of range")
    if message.state_version < 1:
        raise ValueError("the state version starts at 1")
    if len(message.parents) > MAX_PARENTS:
        raise ValueError(f"at most {MAX_PARENTS} parents")
    authors = [p.author for p in message.parents]
    if any(a >= b for a, b in itertools.pairwise(authors)):
        raise ValueError("parents are not sorted by author or not unique")
    for p in message.parents:
        if len(p.author) != KEY_SIZE or len(p.hash) != HASH_SIZE or not 1 <= p.seq <= MAX_U64:
            raise ValueError("a parent is out of range")
        if p.author == message.author:
            raise ValueError("a message's parents name other authors only")
    if len(message.body) > MAX_BODY_BYTES:
        raise ValueError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    if len(message.signature) != SIGNATURE_SIZE:
        raise ValueError(f"the signature is {SIGNATURE_SIZE} bytes")


def _body(message: GroupMessage) -> bytes:
    head = _HEAD.pack(
        _FORMAT,
        message.group_id,
        message.author,
        message.seq,
        message.prev_hash,
        message.state_version,
        message.created,
        len(message.parents),
    )
    parents = b"".join(_PARENT.pack(p.author, p.seq, p.hash) for p in message.parents)
    return head + parents + _U32.pack(len(message.body)) + message.body


def encode_message(message: GroupMessage) -> bytes:
    """Return the canonical bytes of *message*.

    :raises ValueError: if a field is out of range or the parents are not canonical.
    """
    _check(message)
    return _body(message) + message.signature


def message_hash(message: GroupMessage) -> bytes:
    """Return SHA-256 of the encoded *message* (what chains and parents name)."""
    return hashlib.sha256(encode_message(message)).digest()


def message_id(message: GroupMessage) -> bytes:
    """Return the 16-byte group message id: the first bytes of :func:`message_hash`."""
    return message_hash(message)[:MESSAGE_ID_SIZE]


def parse_message(data: bytes) -> GroupMessage:
    """Parse the canonical bytes of a group message; the signature is *not* checked here.

    :raises MalformedGroupMessage: if *data* is not exactly one canonical message.
    """
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedGroupMessage(f"larger than {MAX_MESSAGE_BYTES} bytes")
    if len(data) < _HEAD.size:
        raise MalformedGroupMessage("truncated header")
    fmt, group_id, author, seq, prev_hash, state_version, created, count = _HEAD.unpack_from(data)
    if fmt != _FORMAT:
        raise MalformedGroupMessage("unknown format")
    if count > MAX_PARENTS:
        raise MalformedGroupMessage("too many parents")
    at = _HEAD.size
    parents = []
    for _ in range(count):
        if at + _PARENT.size > len(data):
            raise MalformedGroupMessage("truncated parent")
        parents.append(Parent(*_PARENT.unpack_from(data, at)))
        at += _PARENT.size
    if at + 4 > len(data):
        raise MalformedGroupMessage("truncated body length")
    (length,) = _U32.unpack_from(data, at)
    at += 4
    if length > MAX_BODY_BYTES:
        raise MalformedGroupMessage("body too long")
    if at + length + SIGNATURE_SIZE != len(data):
        raise MalformedGroupMessage("truncated or trailing bytes")
    body = data[at : at + length]
    signature = data[at + length :]
    message = GroupMessage(
        group_id, author, seq, prev_hash, state_version, created, tuple(parents), body, signature
    )
    try:
        _check(message)
    except ValueError as e:
        raise MalformedGroupMessage(str(e)) from None
    return message


def verify_message(message: GroupMessage) -> None:
    """Check the author's signature on *message*.

    Whether the author may write in the group, and whether the message follows the author's
    previous one, is the group log's job (:class:`jarvis.core.group_log.GroupLog`).

    :raises BadSignature: if the signature is not the author's.
    """
    verify_signature(message.author, message.signature, _SIGN_LABEL + _body(message))


def signatures_valid(messages: Iterable[GroupMessage]) -> list[bool]:
    """Return, for each of *messages* in order, whether its author's signature holds.

    Pure and touching no shared state: the daemon runs it on a thread at unlock (one Ed25519
    verification each, ~50-100 µs) and offers the valid ones with ``verified=True``.
    """
    valid = []
    for message in messages:
        try:
            verify_message(message)
        except BadSignature:
            valid.append(False)
        else:
            valid.append(True)
    return valid


def write_message(
    author: IdentityKey,
    group_id: bytes,
    *,
    seq: int,
    prev_hash: bytes,
    state_version: int,
    created: int,
    parents: tuple[Parent, ...] | list[Parent] = (),
    body: bytes,
) -> GroupMessage:
    """Return a new message signed by *author*; *parents* are sorted here.

    :raises ValueError: if a field is out of range.
    """
    message = GroupMessage(
        group_id,
        author.public_bytes,
        seq,
        prev_hash,
        state_version,
        created,
        tuple(sorted(parents, key=lambda p: p.author)),
        bytes(body),
        bytes(SIGNATURE_SIZE),
    )
    _check(message)
    return replace(message, signature=author.sign(_SIGN_LABEL + _body(message)))


def is_fork_proof(first: GroupMessage, second: GroupMessage) -> bool:
    """Return whether two messages prove their author forked their chain.

    Both must carry the same author's valid signature in the same group, and either sit at the
    same sequence number with different hashes, or *second* follow *first* by one and name
    another predecessor.  Anyone can check this: it is the evidence a member shows others.
    """
    if first.author != second.author or first.group_id != second.group_id:
        return False
    try:
        verify_message(first)
        verify_message(second)
    except BadSignature:
        return False
    if first.seq == second.seq:
        return message_hash(first) != message_hash(second)
    return second.seq == first.seq + 1 and second.prev_hash != message_hash(first)


#: Most authors one :class:`Summary` lists.
MAX_SUMMARY_AUTHORS = 1024
_SUMMARY_HEAD = struct.Struct(">B16sQH")
#: The summary format that also carries the hash of the sender's state (concurrent changes).
_SUMMARY_WITH_HASH = 2
_STATE_HASH = struct.Struct(">32s")


@dataclass(frozen=True)
class Summary:
    """What a member holds of a group, for keepalives: its state version and per-author heads.

    :ivar group_id: the group.
    :ivar state_version: the member's group state version.
    :ivar heads: ``(author key, seq, hash)`` of each author's last contiguous message, sorted
        by author key (a :class:`Parent` value is exactly such a head).
    :ivar state_hash: the SHA-256 of the member's state at that version (empty: not given, as
        in format 1), so two members at one version with different states notice it.
    """

    group_id: bytes
    state_version: int
    heads: tuple[Parent, ...]
    state_hash: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))


def encode_summary(summary: Summary) -> bytes:
    """Return ``u8(1) || group_id || u64(state_version) || u16(count) || parent * count``,
    or with a state hash ``u8(2) || group_id || u64(state_version) || u16(count) ||
    state_hash (32) || parent * count``.

    :raises ValueError: if a field is out of range or heads are unsorted or repeated.
    """
    authors = [h.author for h in summary.heads]
    if any(a >= b for a, b in itertools.pairwise(authors)):
        raise ValueError("heads are not sorted by author or not unique")
    if len(summary.heads) > MAX_SUMMARY_AUTHORS:
        raise ValueError(f"at most {MAX_SUMMARY_AUTHORS} heads")
    if len(summary.group_id) != GROUP_ID_SIZE or not 0 <= summary.state_version <= MAX_U64:
        raise ValueError("group id or state version out of range")
    for h in summary.heads:
        if len(h.author) != KEY_SIZE or len(h.hash) != HASH_SIZE or not 1 <= h.seq <= MAX_U64:
            raise ValueError("a head is out of range")
    if summary.state_hash and len(summary.state_hash) != HASH_SIZE:
        raise ValueError("a state hash is 32 bytes")
    fmt = _SUMMARY_WITH_HASH if summary.state_hash else _FORMAT
    head = _SUMMARY_HEAD.pack(fmt, summary.group_id, summary.state_version, len(authors))
    head += summary.state_hash
    return head + b"".join(_PARENT.pack(h.author, h.seq, h.hash) for h in summary.heads)


def parse_summary(data: bytes) -> Summary:
    """Parse :func:`encode_summary`'s bytes.

    :raises MalformedGroupMessage: if they are not exactly one canonical summary.
    """
    data = bytes(data)
    if len(data) < _SUMMARY_HEAD.size:
        raise MalformedGroupMessage("truncated summary")
    fmt, group_id, version, count = _SUMMARY_HEAD.unpack_from(data)
    if fmt not in (_FORMAT, _SUMMARY_WITH_HASH) or count > MAX_SUMMARY_AUTHORS:
        raise MalformedGroupMessage("unknown summary format or too many heads")
    start = _SUMMARY_HEAD.size + (_STATE_HASH.size if fmt == _SUMMARY_WITH_HASH else 0)
    if len(data) != start + count * _PARENT.size:
        raise MalformedGroupMessage("truncated or trailing bytes in summary")
    digest = data[_SUMMARY_HEAD.size : start]
    heads = tuple(
        Parent(*_PARENT.unpack_from(data, start + i * _PARENT.size)) for i in range(count)
    )
    summary = Summary(group_id, version, heads, digest)
    try:
        encode_summary(summary)
    except ValueError as e:
        raise MalformedGroupMessage(str(e)) from None
    return summary
