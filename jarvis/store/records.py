"""The values the store takes and returns: contacts, messages and pages of history.

These are plain frozen dataclasses with light validation of their closed vocabularies
(direction, state).  They carry plaintext: the store encrypts them on the way in and decrypts
them on the way out.  This module must not touch SQLite, the cipher or the reactor.
"""

from __future__ import annotations

import dataclasses

from jarvis.common.entropy import public_random
from jarvis.common.errors import InvalidInput
from jarvis.common.message_states import states_for


def new_message_id(now: float) -> str:
    """Return a new message id for a message written at *now*: 32 hex digits, time first.

    The first 6 bytes are the milliseconds since the epoch (big-endian), the other 10 are
    random (80 bits: two ids made in the same millisecond collide with odds of 2**-80).  Ids
    that grow with time land at the right edge of the store's id index, so a burst of messages
    dirties a few index pages instead of one random page each (the store persists about twice
    as many messages per second with them; ``docs/benchmarks.md``).  The time in an id says
    nothing the message's clear ``created`` column and its record do not already say.

    :param now: seconds since the epoch (the caller's injected clock).
    :returns: the id, as it travels on the wire (16 bytes) in hex.
    """
    millis = max(0, int(now * 1000)) & 0xFFFF_FFFF_FFFF
    return (millis.to_bytes(6, "big") + public_random(10)).hex()


@dataclasses.dataclass(frozen=True)
class Contact:
    """A contact as the store keeps it.

    :param uid: the contact's identity uid (the key of the record).
    :param public_key: the contact's identity public key.
    :param name: the name the contact gave in their card.
    :param addresses: where to dial the contact (``host:port`` strings or similar).
    :param alias: the local user's own name for the contact, if any.
    :param verified: whether the safety code was compared out of band.
    :param blocked: whether messages from the contact are refused.
    :param muted: whether notifications for the contact are silenced.
    :param read_receipts: whether read receipts are sent to the contact.
    :param added_at: when the contact was added (seconds since the epoch).
    """

    uid: str
    public_key: bytes
    name: str
    addresses: tuple[str, ...]
    alias: str | None = None
    verified: bool = False
    blocked: bool = False
    muted: bool = False
    read_receipts: bool = True
    added_at: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.uid, str) or not self.uid:
            raise InvalidInput("a contact's uid is a non-empty string")
        if not isinstance(self.addresses, tuple):
            raise InvalidInput("a contact's addresses are a tuple of strings")


@dataclasses.dataclass(frozen=True)
class StoredMessage:
    """One message of a conversation as the store keeps it (the wire's record is
    :class:`jarvis.protocol.records`' own; the API's is :func:`jarvis.core.views.message_view`).

    :param id: the message id (hex of 16 bytes, chosen by the sender; :func:`new_message_id`).
    :param contact: the uid of the contact the conversation is with.
    :param direction: ``"in"`` (received) or ``"out"`` (sent by the local user).
    :param body: the text of the message.
    :param state: one of :func:`jarvis.common.message_states.states_for` *direction*.
    :param created: when the message was written (outgoing) or received (incoming).
    :param sent: when it left this node (outgoing), if it did.
    :param delivered: when the peer acknowledged it (outgoing), if it did.
    :param read: when it was read (by the peer for outgoing, locally for incoming).
    :param seq: its position in the conversation, assigned by the store (0 until stored).
    """

    id: str
    contact: str
    direction: str
    body: str
    state: str
    created: float
    sent: float | None = None
    delivered: float | None = None
    read: float | None = None
    seq: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not 0 < len(self.id) <= 128:
            raise InvalidInput("a message id is a string of 1 to 128 characters")
        if not isinstance(self.contact, str) or not self.contact:
            raise InvalidInput("a message's contact is a non-empty uid")
        if self.state not in states_for(self.direction):
            kind = "outgoing" if self.direction == "out" else "incoming"
            raise InvalidInput(f"{self.state!r} is not a state of an {kind} message")


def copy_unchecked(message: StoredMessage, **changes: object) -> StoredMessage:
    """A copy of *message* (already validated) with *changes*, without validating again.

    The one shortcut past ``__post_init__``, for the store's and the courier's hot paths:
    ``dataclasses.replace`` runs ``__init__`` and ``__post_init__`` again, measured at about
    12 µs against 2 µs here, a sizeable share of storing a message (the store persists some
    60,000 a second).  Only for changes that cannot make the message invalid: its ``seq``, or
    a state that follows its current one.
    """
    copy = object.__new__(StoredMessage)
    copy.__dict__.update(message.__dict__)
    copy.__dict__.update(changes)
    return copy


@dataclasses.dataclass(frozen=True)
class HistoryPage:
    """A page of a conversation's history, newest message first.

    :param messages: the messages of the page, newest first.
    :param next_cursor: pass it as ``before`` to get the next (older) page; ``None`` when
        there are no older messages (always ``None`` for a page asked with ``after``).
    :param newer_cursor: for a page asked with ``after``: pass it as ``after`` to get the next
        newer page; ``None`` when there are no newer messages (always for other pages).
    """

    messages: tuple[StoredMessage, ...]
    next_cursor: str | None
    newer_cursor: str | None = None
