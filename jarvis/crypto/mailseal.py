"""Sealing for mailbox deposits: the five-layer cascade keyed by an ephemeral X25519 exchange
with the recipient's signed, rotating prekey.

A mailbox holds what it is given until the recipient collects it, so a deposit must be readable
by the recipient alone, and only for a bounded time (forward secrecy for offline messages).  The
recipient publishes (to each contact, inside the end-to-end session) a *signed prekey*: an X25519
public key with an id and an expiry, signed by its Ed25519 identity key.  To seal:

1. check the prekey's signature against the recipient's identity key, and its expiry;
2. make an ephemeral X25519 key, exchange with the prekey;
3. ``transcript = SHA-256(CONTEXT || u16 sender uid || u16 recipient uid || prekey id ||
   prekey public || ephemeral public || message id)``;
4. five layer keys = HKDF-SHA256(shared, salt=transcript, info=KEYS_INFO);
5. inner = sender's identity signature over ``SIGN_CONTEXT || transcript || SHA-256(plaintext)``
   (64 bytes) || plaintext; sealed with :class:`~jarvis.crypto.cascade.CascadeSealer` (counter 1:
   the keys are used once), the uids and message id in every layer's associated data.

Envelope: ``version (1) || prekey id (8) || ephemeral public (32) || message id (16) || cascade
ciphertext``.  The recipient finds the prekey by id (a deleted or unknown one: :class:`SealError`,
so a message sealed to a prekey deleted after rotation can no longer be read by anyone), derives
the same keys, opens the cascade and verifies the sender's signature with the key of the contact
whose queue it came from.  The mailbox sees the envelope only (padded to one block by the client).

Rotation (:class:`PrekeyRing`): a new prekey every :data:`ROTATE_AFTER` (7 days); a prekey
expires (senders stop using it) :data:`ROTATE_AFTER` + :data:`SENDER_GRACE` after creation and
is deleted (recipients stop opening with it) :data:`DELETE_AFTER` (14 days) after creation.  A
deposit is therefore readable with a stolen recipient disk for at most 14 days after its
prekey was made (docs/security.md, "Offline delivery").

Pure computation: no I/O, no clock (``now`` is passed), no logging.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jarvis.crypto.cascade import (
    KEY_SIZE,
    LAYERS,
    MESSAGE_ID_SIZE,
    CascadeError,
    CascadeOpener,
    CascadeSealer,
    DirectionKeys,
)
from jarvis.crypto.errors import BadSignature, CryptoError
from jarvis.crypto.identity import IdentityKey, verify_signature

VERSION = 1
PREKEY_ID_SIZE = 8
KEY_BYTES = 32
SIGNATURE_SIZE = 64
PREKEY_CONTEXT = b"jarvis/prekey/v1\x00"
TRANSCRIPT_CONTEXT = b"jarvis/mailseal/v1 transcript\x00"
SIGN_CONTEXT = b"jarvis/mailseal/v1 sender\x00"
KEYS_INFO = b"jarvis/mailseal/v1 keys"
#: A new prekey is made this often (seconds).
ROTATE_AFTER = 7 * 86400
#: Senders may still seal to the previous prekey this long after its successor appeared.
SENDER_GRACE = 2 * 86400
#: A prekey's private half is deleted this long after it was made: the forward-secrecy window.
DELETE_AFTER = 14 * 86400
#: Bytes an envelope adds to the plaintext: header, signature, five tags.
OVERHEAD = 1 + PREKEY_ID_SIZE + KEY_BYTES + MESSAGE_ID_SIZE + SIGNATURE_SIZE + 16 * len(LAYERS)

_PREKEY = struct.Struct(">8s32sQ64s")
_HEADER = struct.Struct(">B8s32s16s")
_U16 = struct.Struct(">H")


class SealError(CryptoError):
    """A mailbox deposit failed to open or verify: altered, sealed for a prekey this side no
    longer has (deleted after rotation), or not signed by the contact whose queue it came from.
    It is dropped; the sender's message stays undelivered and goes again over a session."""

    message = "a mailbox deposit failed to open"


class PrekeyError(CryptoError):
    """A contact's prekey is not signed by its identity key, or has expired: nothing is sealed
    to it (the message waits for a direct session or a fresh prekey)."""

    message = "the contact's mailbox prekey is invalid or expired"


def _raw_x25519_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _raw_x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class SignedPrekey:
    """The public half of a prekey, signed: what a contact needs to seal to us.

    :ivar prekey_id: 8 random bytes naming the prekey.
    :ivar public: the X25519 public key.
    :ivar expires: Unix seconds after which senders must not use it.
    :ivar signature: the owner's identity signature over ``PREKEY_CONTEXT || id || public ||
        u64(expires)``.
    """

    prekey_id: bytes
    public: bytes
    expires: int
    signature: bytes

    def signed_data(self) -> bytes:
        return PREKEY_CONTEXT + self.prekey_id + self.public + struct.pack(">Q", self.expires)

    def to_bytes(self) -> bytes:
        """The 112-byte encoding."""
        return _PREKEY.pack(self.prekey_id, self.public, self.expires, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPrekey:
        """:raises PrekeyError: for a wrong size."""
        if len(data) != _PREKEY.size:
            raise PrekeyError("a signed prekey is 112 bytes")
        return cls(*_PREKEY.unpack(data))

    def check(self, owner_public: bytes, now: float) -> None:
        """:raises PrekeyError: unless signed by *owner_public* and not expired at *now*."""
        try:
            verify_signature(owner_public, self.signature, self.signed_data())
        except BadSignature:
            raise PrekeyError("the prekey is not signed by the contact's identity key") from None
        if now > self.expires:
            raise PrekeyError("the contact's prekey has expired")


@dataclass(frozen=True)
class Prekey:
    """A prekey we own: its private half, when it was made, and its signed public half."""

    private: bytes = field(repr=False)
    created: int
    signed: SignedPrekey

    @classmethod
    def generate(cls, identity: IdentityKey, now: float) -> Prekey:
        key = X25519PrivateKey.generate()
        created = int(now)
        unsigned = SignedPrekey(
            os.urandom(PREKEY_ID_SIZE),
            _raw_x25519_public(key),
            created + ROTATE_AFTER + SENDER_GRACE,
            b"",
        )
        signed = SignedPrekey(
            unsigned.prekey_id,
            unsigned.public,
            unsigned.expires,
            identity.sign(unsigned.signed_data()),
        )
        return cls(_raw_x25519_private(key), created, signed)

    def to_bytes(self) -> bytes:
        return self.private + struct.pack(">Q", self.created) + self.signed.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Prekey:
        if len(data) != KEY_BYTES + 8 + _PREKEY.size:
            raise ValueError("a stored prekey has a wrong size")
        (created,) = struct.unpack(">Q", data[32:40])
        return cls(data[:32], created, SignedPrekey.from_bytes(data[40:]))


class PrekeyRing:
    """Our prekeys, newest last: :meth:`rotate` makes and deletes them as time passes."""

    def __init__(self, prekeys: list[Prekey] | None = None) -> None:
        self.prekeys: list[Prekey] = list(prekeys or [])

    @property
    def current(self) -> Prekey | None:
        return self.prekeys[-1] if self.prekeys else None

    def rotate(self, identity: IdentityKey, now: float) -> bool:
        """Make a prekey if the newest is older than :data:`ROTATE_AFTER` (or none exists);
        delete those older than :data:`DELETE_AFTER`.  Returns whether anything changed."""
        changed = False
        before = len(self.prekeys)
        self.prekeys = [p for p in self.prekeys if now - p.created < DELETE_AFTER]
        changed = len(self.prekeys) != before
        newest = self.current
        if newest is None or now - newest.created >= ROTATE_AFTER:
            self.prekeys.append(Prekey.generate(identity, now))
            changed = True
        return changed

    def find(self, prekey_id: bytes) -> Prekey | None:
        for prekey in self.prekeys:
            if prekey.signed.prekey_id == prekey_id:
                return prekey
        return None

    def to_bytes(self) -> bytes:
        return b"".join(p.to_bytes() for p in self.prekeys)

    @classmethod
    def from_bytes(cls, data: bytes) -> PrekeyRing:
        size = KEY_BYTES + 8 + _PREKEY.size
        if len(data) % size:
            raise ValueError("stored prekeys have a wrong size")
        return cls([Prekey.from_bytes(data[i : i + size]) for i in range(0, len(data), size)])


def _prefixed(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U16.pack(len(raw)) + raw


def transcript(
    sender_uid: str,
    recipient_uid: str,
    prekey_id: bytes,
    prekey_public: bytes,
    ephemeral_public: bytes,
    message_id: bytes,
) -> bytes:
    """The SHA-256 transcript (HKDF salt, and what the sender signs)."""
    return hashlib.sha256(
        b"".join(
            [
                TRANSCRIPT_CONTEXT,
                _prefixed(sender_uid),
                _prefixed(recipient_uid),
                prekey_id,
                prekey_public,
                ephemeral_public,
                message_id,
            ]
        )
    ).digest()


def _keys(shared: bytes, salt: bytes) -> DirectionKeys:
    okm = HKDF(
        algorithm=hashes.SHA256(), length=len(LAYERS) * KEY_SIZE, salt=salt, info=KEYS_INFO
    ).derive(shared)
    return DirectionKeys(tuple(okm[i * KEY_SIZE : (i + 1) * KEY_SIZE] for i in range(len(LAYERS))))


def seal(
    sender: IdentityKey,
    recipient_uid: str,
    recipient_public: bytes,
    prekey: SignedPrekey,
    message_id: bytes,
    plaintext: bytes,
    now: float,
    *,
    ephemeral: X25519PrivateKey | None = None,
) -> bytes:
    """Seal *plaintext* for *recipient_uid* (whose identity key is *recipient_public*).

    :param ephemeral: for test vectors only; a fresh key otherwise.
    :raises PrekeyError: if *prekey* is not signed by *recipient_public* or has expired.
    """
    if len(message_id) != MESSAGE_ID_SIZE:
        raise ValueError("message id must be 16 bytes")
    prekey.check(recipient_public, now)
    eph = ephemeral or X25519PrivateKey.generate()
    eph_public = _raw_x25519_public(eph)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(prekey.public))
    salt = transcript(
        sender.uid, recipient_uid, prekey.prekey_id, prekey.public, eph_public, message_id
    )
    signature = sender.sign(SIGN_CONTEXT + salt + hashlib.sha256(plaintext).digest())
    sealer = CascadeSealer(_keys(shared, salt), sender.uid, recipient_uid)
    _, ciphertext = sealer.seal(message_id, signature + plaintext)
    return _HEADER.pack(VERSION, prekey.prekey_id, eph_public, message_id) + ciphertext


def _exchange(ring: PrekeyRing, envelope: bytes) -> tuple[bytes, bytes, bytes, Prekey, bytes]:
    """Parse the header and do the X25519 exchange: ``(prekey_id, eph_public, message_id,
    prekey, shared)``."""
    if len(envelope) < OVERHEAD or envelope[0] != VERSION:
        raise SealError("malformed mailbox envelope")
    _, prekey_id, eph_public, message_id = _HEADER.unpack_from(envelope)
    prekey = ring.find(prekey_id)
    if prekey is None:
        raise SealError("sealed for a prekey this side does not have (rotated out?)")
    try:
        shared = X25519PrivateKey.from_private_bytes(prekey.private).exchange(
            X25519PublicKey.from_public_bytes(eph_public)
        )
    except ValueError:
        raise SealError("bad ephemeral key") from None
    return prekey_id, eph_public, message_id, prekey, shared


def _open_from(
    recipient_uid: str,
    sender_uid: str,
    sender_public: bytes,
    envelope: bytes,
    exchanged: tuple[bytes, bytes, bytes, Prekey, bytes],
) -> bytes:
    prekey_id, eph_public, message_id, prekey, shared = exchanged
    salt = transcript(
        sender_uid, recipient_uid, prekey_id, prekey.signed.public, eph_public, message_id
    )
    opener = CascadeOpener(_keys(shared, salt), sender_uid, recipient_uid)
    try:
        inner = opener.open(1, message_id, envelope[_HEADER.size :])
    except CascadeError:
        raise SealError("the envelope failed to authenticate") from None
    signature, plaintext = inner[:SIGNATURE_SIZE], inner[SIGNATURE_SIZE:]
    try:
        verify_signature(
            sender_public, signature, SIGN_CONTEXT + salt + hashlib.sha256(plaintext).digest()
        )
    except BadSignature:
        raise SealError("the envelope is not signed by the contact") from None
    return plaintext


def open_sealed(
    recipient_uid: str,
    ring: PrekeyRing,
    sender_uid: str,
    sender_public: bytes,
    envelope: bytes,
) -> tuple[bytes, bytes]:
    """Open an envelope from *sender_uid* (identity key *sender_public*).

    :returns: ``(message_id, plaintext)``.
    :raises SealError: if it is malformed, names a prekey we do not have (unknown, or deleted
        after rotation), fails any layer, or is not signed by *sender_public*.
    """
    exchanged = _exchange(ring, envelope)
    plaintext = _open_from(recipient_uid, sender_uid, sender_public, envelope, exchanged)
    return exchanged[2], plaintext


def open_sealed_any(
    recipient_uid: str,
    ring: PrekeyRing,
    senders: Iterable[tuple[str, bytes]],
    envelope: bytes,
) -> tuple[str, bytes, bytes]:
    """Open an envelope from one of *senders* (``(uid, identity public key)`` pairs), not
    knowing which (a deposit into the introduction queue of a link code: anyone holding the
    code may deposit there).  The X25519 exchange is done once; each wrong candidate costs one
    key derivation and one failed authentication of the cascade.

    :returns: ``(sender_uid, message_id, plaintext)``.
    :raises SealError: if it is malformed, names a prekey we do not have, or none of
        *senders* sealed and signed it.
    """
    exchanged = _exchange(ring, envelope)
    for uid, public in senders:
        try:
            plaintext = _open_from(recipient_uid, uid, public, envelope, exchanged)
        except SealError:
            continue
        return uid, exchanged[2], plaintext
    raise SealError("the envelope is not from any contact")
