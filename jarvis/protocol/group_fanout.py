"""Pairwise fan-out of group traffic: which member gets which outbox entry, and who may talk.

A group has no shared key and no server: a group message (or a new group state) travels as one
ordinary 1:1 message to each other member, over the pinned, end-to-end sessions (and later the
mailbox), and the durable outbox of the 1:1 layer makes each delivery exactly-once.  The entries
of one group message share its group message id, so the UI can count deliveries ("7 of 9") and a
member that gets the same message twice (from its author and from a relay) keeps it once.

The 1:1 body of a group entry is a *group payload*: ``u8(kind) || record``, kind
:data:`KIND_MESSAGE` (a :mod:`~jarvis.protocol.group_message` message),
:data:`KIND_STATE` (a :mod:`~jarvis.protocol.group_state` state) or :data:`KIND_SUMMARY`
(a keepalive summary).  How the 1:1 layer tells a group payload from a chat text is the lead's
wiring (a body type byte or a record type); this module only builds the plan.

Members need not be contacts: :func:`group_peers` says, from the states a node holds, which
non-contact keys it may accept a session from *for group traffic only* (docs/groups.md).

Pure code: no reactor, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from jarvis.protocol.group_message import (
    GROUP_ID_SIZE,
    GroupMessage,
    encode_message,
    message_id,
    parse_message,
    parse_summary,
)
from jarvis.protocol.group_state import GroupState, encode_state, parse_state, state_hash

KIND_MESSAGE = 0x01
KIND_STATE = 0x02
KIND_SUMMARY = 0x03
#: An invitation: the whole chain of states from version 1, sent to the invitee only.
KIND_INVITE = 0x04
#: Not about a group: a file transfer's control record (``Offer``, ``Accept``, ``Decline``,
#: ``Cancel``, ``Complete``) to a contact with no session up, riding the same durable 1:1
#: entries so that it is deposited in the contact's mailbox (docs/protocol.md, "Control records
#: through the mailbox").  An older peer refuses it as an unknown kind and drops it.
KIND_TRANSFER = 0x05
#: A file transfer's control record about a file sent into a group, to a member who is not a
#: contact and has no session up: ``group id (16) || transfer record``, so that it goes into
#: (and is taken from) that member's queue for this group like the group's own entries.
KIND_GROUP_TRANSFER = 0x06
_KINDS = frozenset(
    {KIND_MESSAGE, KIND_STATE, KIND_SUMMARY, KIND_INVITE, KIND_TRANSFER, KIND_GROUP_TRANSFER}
)
#: Most states in an invitation's chain.
MAX_CHAIN = 4096
#: How a group payload travels as a 1:1 message body: this marker, then the payload in
#: base64 (so the body stays UTF-8 text in the 1:1 outbox and the mailbox path).  A chat text
#: never starts with a NUL byte (docs/protocol.md, "Groups over the 1:1 layer").
BODY_MARK = b"\x00jarvis-group\x00"
#: Size of the id a state's fan-out entries share (the first bytes of its hash).
ENTRY_ID_SIZE = 16


@dataclass(frozen=True)
class FanoutEntry:
    """One durable outbox entry of a group fan-out.

    :ivar recipient: the member's uid.
    :ivar public_key: the member's raw key (to open a session with a non-contact member).
    :ivar addresses: the member's opaque addresses from the group state.
    :ivar entry_id: 16 bytes shared by every entry of one group message or state.
    :ivar payload: the 1:1 body: ``u8(kind) || record``.
    """

    recipient: str
    public_key: bytes
    addresses: bytes
    entry_id: bytes
    payload: bytes


def encode_payload(kind: int, record: bytes) -> bytes:
    """Return a group payload: *kind* then the record bytes.

    :raises ValueError: for an unknown kind.
    """
    if kind not in _KINDS:
        raise ValueError("unknown group payload kind")
    return bytes([kind]) + record


def parse_payload(payload: bytes) -> tuple[int, bytes]:
    """Return ``(kind, record bytes)`` of a group payload (the record is parsed by its module).

    :raises ValueError: if it is empty or of an unknown kind.
    """
    if not payload or payload[0] not in _KINDS:
        raise ValueError("not a group payload")
    return payload[0], bytes(payload[1:])


def payload_group_id(payload: bytes) -> bytes | None:
    """Return the group id a message, state, summary or group transfer record payload is
    about; ``None`` for an
    invitation (it travels between contacts only) or anything that does not parse.

    A deposit into a member's group queue is taken only if this is that queue's group
    (docs/groups.md, "Members who are not contacts")."""
    try:
        kind, record = parse_payload(payload)
        if kind == KIND_MESSAGE:
            return parse_message(record).group_id
        if kind == KIND_STATE:
            return parse_state(record).group_id
        if kind == KIND_SUMMARY:
            return parse_summary(record).group_id
        if kind == KIND_GROUP_TRANSFER and len(record) > GROUP_ID_SIZE:
            return record[:GROUP_ID_SIZE]
    except ValueError:
        return None
    return None


def encode_body(payload: bytes) -> bytes:
    """Return the 1:1 message body that carries the group *payload*."""
    return BODY_MARK + base64.b64encode(payload)


def decode_body(body: bytes) -> bytes | None:
    """Return the group payload a 1:1 message *body* carries, or None for a chat text.

    :raises ValueError: if the body has the marker but no valid base64 after it.
    """
    if not body.startswith(BODY_MARK):
        return None
    try:
        return base64.b64decode(body[len(BODY_MARK) :], validate=True)
    except binascii.Error as e:
        raise ValueError("group body is not base64") from e


def encode_chain(states: Iterable[GroupState]) -> bytes:
    """Return an invitation record: u16 count, then each state as u32 length + bytes."""
    encoded = [encode_state(s) for s in states]
    if not 1 <= len(encoded) <= MAX_CHAIN:
        raise ValueError("an invitation carries 1 to 4096 states")
    return struct.pack(">H", len(encoded)) + b"".join(
        struct.pack(">I", len(e)) + e for e in encoded
    )


def parse_chain(data: bytes) -> list[GroupState]:
    """Parse an invitation record (states parsed, not yet checked: see ``accept_chain``).

    :raises ValueError: (``MalformedState`` included) if it does not parse exactly.
    """
    if len(data) < 2:
        raise ValueError("truncated invitation")
    (count,) = struct.unpack_from(">H", data)
    if not 1 <= count <= MAX_CHAIN:
        raise ValueError("an invitation carries 1 to 4096 states")
    offset, states = 2, []
    for _ in range(count):
        if offset + 4 > len(data):
            raise ValueError("truncated invitation")
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise ValueError("truncated invitation")
        states.append(parse_state(data[offset : offset + length]))
        offset += length
    if offset != len(data):
        raise ValueError("trailing bytes after the invitation")
    return states


def plan_message(state: GroupState, message: GroupMessage) -> list[FanoutEntry]:
    """Return one entry per member of *state* other than the message's author.

    The author writes under *state* (``message.state_version == state.version``): members
    removed by *state* get nothing, members added by it get the message.  A relay (a member
    answering a gap request) sends single entries with the same payload instead.

    :raises ValueError: if the message is of another group or another state version.
    """
    if message.group_id != state.group_id or message.state_version != state.version:
        raise ValueError("the message was not written under this state")
    payload = encode_payload(KIND_MESSAGE, encode_message(message))
    entry_id = message_id(message)
    return [
        FanoutEntry(m.uid, m.public_key, m.addresses, entry_id, payload)
        for m in state.members
        if m.public_key != message.author
    ]


def plan_state(previous: GroupState | None, state: GroupState, sender: bytes) -> list[FanoutEntry]:
    """Return the entries announcing *state*: to every member of *state* and of *previous*
    (so a removed member is told it was removed), except *sender* (a raw key).

    Members who were removed get the state once, then nothing more from the group.
    """
    payload = encode_payload(KIND_STATE, encode_state(state))
    entry_id = state_hash(state)[:ENTRY_ID_SIZE]
    recipients = {m.public_key: m for m in (previous.members if previous else ())}
    recipients.update({m.public_key: m for m in state.members})
    return [
        FanoutEntry(m.uid, m.public_key, m.addresses, entry_id, payload)
        for key, m in sorted(recipients.items())
        if key != sender
    ]


def group_peers(states: Iterable[GroupState], own_key: bytes) -> dict[str, frozenset[bytes]]:
    """Return, for each uid this node shares a group with, the ids of those groups.

    The network layer may accept a session from such a uid even if it is not a contact, and
    must then carry only group payloads of these groups on it (never chat messages, never
    make it a contact).  Pass the current state of every group the node is a member of.
    """
    peers: dict[str, set[bytes]] = {}
    for state in states:
        if state.member_by_key(own_key) is None:
            continue
        for m in state.members:
            if m.public_key != own_key:
                peers.setdefault(m.uid, set()).add(state.group_id)
    return {uid: frozenset(groups) for uid, groups in peers.items()}
