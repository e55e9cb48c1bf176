"""The relay join: how two contacts who cannot reach each other meet at a mailbox.

Both contacts open a TCP connection to the same mailbox (on its usual port) and send a
**join** instead of a TLS ClientHello; the mailbox pairs two joins that carry the same token
and opposite sides, answers each with one status byte, and from then on copies bytes between
the two connections.  The pinned mutual TLS session runs inside, end to end: the mailbox
relays bytes it cannot read.  The layout, the key derivation and test vectors are in
``docs/protocol.md`` ("Relay join"); in short::

    join      = "jarvis-relay-v1\\n" (16 bytes) || token (32 bytes) || side (1 byte)
    relay_key = HKDF-SHA256(salt="jarvis-relay-v1", ikm=knock pair key, info="relay")
    window    = floor(unix_time / 600)
    token     = HMAC-SHA256(relay_key, "jarvis-relay-v1" || u64 window || u8 generation)
    side      = 0 for the contact with the lower uid (the TLS client), 1 for the other

The knock pair key (:func:`jarvis.protocol.knock.pair_key`) is computable only by the two
contacts, so nobody else can make their token, and tokens of two windows cannot be linked.
A file transfer's data connection joins the same way with a token of its own
(:func:`transfer_token`: another key, another label, and the transfer id), so the relay pairs
the transfer's two ends and keeps them apart from the session's.
A token that has been paired is burnt at the mailbox (a join replayed from a capture is
refused with :data:`STATUS_USED`); the pair then moves to the next *generation* of the same
window, which both sides compute alike.

Pure code: no reactor, no I/O; time is passed in.  It must not log.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: The first bytes of every join (its first byte is never 0x16, a TLS handshake record).
MAGIC = b"jarvis-relay-v1\n"
#: Bytes in a token.
TOKEN_BYTES = 32
#: Bytes in a join.
JOIN_LENGTH = len(MAGIC) + TOKEN_BYTES + 1
#: Seconds in one token window.
WINDOW_SECONDS = 600
#: Generations a client tries in one window before giving up (each burnt by a pairing).
MAX_GENERATIONS = 16

#: The side of the contact with the lower uid: it is the TLS client.
SIDE_CLIENT = 0
#: The side of the contact with the higher uid: it is the TLS server.
SIDE_SERVER = 1

#: The mailbox's one-byte answers to a join.
STATUS_PAIRED = 0x00  # from the next byte on, the partner's bytes
STATUS_USED = 0x01  # this token was paired already: try the next generation
STATUS_BUSY = 0x02  # a limit of the relay was reached: try later
STATUS_TIMEOUT = 0x03  # no partner came in time
STATUS_BAD = 0x04  # not a join
STATUS_NAMES = {
    STATUS_PAIRED: "paired",
    STATUS_USED: "token already used",
    STATUS_BUSY: "relay busy",
    STATUS_TIMEOUT: "no partner in time",
    STATUS_BAD: "not a join",
}

_LABEL = b"jarvis-relay-v1"


class MalformedJoin(ValueError):
    """The bytes are not a relay join (wrong magic or side)."""


def relay_key(knock_pair_key: bytes) -> bytes:
    """Return the relay key of a pair from its knock pair key.

    ``HKDF-SHA256(salt="jarvis-relay-v1", ikm=knock_pair_key, info="relay")``: separate from
    the knock's and the LAN's keys, so a relay token helps forge neither.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_LABEL, info=b"relay").derive(
        knock_pair_key
    )


def window_of(seconds: float) -> int:
    """Return the token window of a Unix time: ``floor(seconds / 600)``."""
    return int(seconds // WINDOW_SECONDS)


def token(key: bytes, window: int, generation: int = 0) -> bytes:
    """Return the pair's token for *window* and *generation* (the same on both sides)."""
    if not 0 <= generation < 256:
        raise ValueError("a generation is one byte")
    data = _LABEL + struct.pack(">QB", window & 0xFFFFFFFFFFFFFFFF, generation)
    return hmac.digest(key, data, "sha256")


#: The label of a file transfer's relay tokens (:func:`transfer_token`).
_TRANSFER_LABEL = b"jarvis-relay-transfer-v1"


def transfer_relay_key(knock_pair_key: bytes) -> bytes:
    """Return the pair's key for file transfer relay tokens (issue 18).

    ``HKDF-SHA256(salt="jarvis-relay-v1", ikm=knock_pair_key, info="relay transfer")``: a
    key of its own, so a transfer's token is never the session's (:func:`relay_key`) and
    helps compute neither the session's nor another transfer's.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_LABEL, info=b"relay transfer").derive(
        knock_pair_key
    )


def transfer_token(key: bytes, transfer_id: bytes, window: int, generation: int = 0) -> bytes:
    """Return the token that pairs the two ends of one transfer's relayed data connection.

    ``HMAC-SHA256(transfer_relay_key, "jarvis-relay-transfer-v1" || transfer id (16) ||
    u64 window || u8 generation)``: both contacts compute it from the transfer id they share,
    so the relay pairs the transfer's two ends, never a transfer's end with a session's.
    """
    if len(transfer_id) != 16:
        raise ValueError("a transfer id is 16 bytes")
    if not 0 <= generation < 256:
        raise ValueError("a generation is one byte")
    data = (
        _TRANSFER_LABEL + transfer_id + struct.pack(">QB", window & 0xFFFFFFFFFFFFFFFF, generation)
    )
    return hmac.digest(key, data, "sha256")


def side_of(own_uid: str, peer_uid: str) -> int:
    """Return our side: :data:`SIDE_CLIENT` (TLS client) if our uid is the lower one."""
    return SIDE_CLIENT if own_uid < peer_uid else SIDE_SERVER


@dataclass(frozen=True)
class Join:
    """A parsed join: the pair's *token* and the sender's *side*."""

    token: bytes
    side: int

    def to_bytes(self) -> bytes:
        """Return the :data:`JOIN_LENGTH` bytes of this join."""
        if len(self.token) != TOKEN_BYTES or self.side not in (SIDE_CLIENT, SIDE_SERVER):
            raise ValueError("a join has a 32-byte token and side 0 or 1")
        return MAGIC + self.token + bytes([self.side])


def parse_join(data: bytes) -> Join:
    """Parse the first :data:`JOIN_LENGTH` bytes of a connection.

    :raises MalformedJoin: if the magic or the side is wrong, or *data* is not that long.
    """
    if len(data) != JOIN_LENGTH or not data.startswith(MAGIC):
        raise MalformedJoin("not a relay join")
    side = data[-1]
    if side not in (SIDE_CLIENT, SIDE_SERVER):
        raise MalformedJoin("a join's side is 0 or 1")
    return Join(data[len(MAGIC) : len(MAGIC) + TOKEN_BYTES], side)
