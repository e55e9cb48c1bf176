"""The five-layer message cascade: end-to-end sealing of message bodies inside TLS.

Each message body is sealed five times, innermost first: AES-256-GCM, ChaCha20-Poly1305,
AES-256-GCM, ChaCha20-Poly1305, AES-256-GCM, each layer with its own 256-bit key.  Breaking the
cascade needs a break of both AEAD constructions (or of all five keys).  Each direction of a
session has five independent keys (:func:`derive_session_keys`, HKDF-SHA256 over the X25519
shared secret and the handshake transcript) and a strictly increasing 64-bit counter that makes
every nonce unique and lets the receiver refuse replayed or reordered messages.

Layout (see ``docs/protocol.md``, "Key schedule" and "Cascade"):

- nonce of layer *i* (0..4) for counter *c*: ``u32(i) || u64(c)`` (12 bytes, big-endian);
- associated data, the same for every layer: ``b"jarvis/message/v1\\x00" || u16-prefixed sender
  uid || u16-prefixed recipient uid || message id (16 bytes) || u64(c)``;
- ciphertext = layer 4(layer 3(...layer 0(plaintext))), 80 bytes longer than the plaintext.

Pure computation: no I/O, no time, no logging (never log keys or plaintext).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jarvis.crypto.errors import CryptoError

#: The cipher of each layer, innermost first.
LAYERS: tuple[str, ...] = (
    "AES-256-GCM",
    "ChaCha20-Poly1305",
    "AES-256-GCM",
    "ChaCha20-Poly1305",
    "AES-256-GCM",
)
KEY_SIZE = 32
TAG_SIZE = 16
#: Bytes the cascade adds to a plaintext (one 16-byte tag per layer).
OVERHEAD = TAG_SIZE * len(LAYERS)
MESSAGE_ID_SIZE = 16
#: The last counter value a direction may use; sealing past it raises :class:`CounterExhausted`.
MAX_COUNTER = 0xFFFFFFFFFFFFFFFF

TRANSCRIPT_CONTEXT = b"jarvis/cascade/v1 transcript\x00"
KEYS_INFO = b"jarvis/cascade/v1 keys"
AD_CONTEXT = b"jarvis/message/v1\x00"

_U16 = struct.Struct(">H")
_NONCE = struct.Struct(">IQ")
_COUNTER = struct.Struct(">Q")


class CascadeError(CryptoError):
    """A sealed message failed to open: it was altered, replayed, reordered or sealed for others.

    The session that received it is closed, since nothing more from that connection can be
    trusted; the sender's Jarvis keeps the message in its outbox and sends it again on a new
    connection.  If it repeats with one contact, someone is tampering with the connection.
    """

    message = "a sealed message failed to open"


class CounterExhausted(CascadeError):
    """A session sealed 2**64 - 1 messages: its counter would wrap and reuse nonces.

    Close the session and connect again; the new handshake derives fresh keys.
    """

    message = "the message counter of this session is exhausted: reconnect"


def _prefixed(value: bytes, what: str) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"{what} is too long")
    return _U16.pack(len(value)) + value


@dataclass(frozen=True)
class DirectionKeys:
    """The five layer keys of one direction of a session, innermost layer first.

    :ivar layer_keys: five 32-byte keys (never shown by ``repr``).
    """

    layer_keys: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        keys = tuple(bytes(k) for k in self.layer_keys)
        if len(keys) != len(LAYERS) or any(len(k) != KEY_SIZE for k in keys):
            raise ValueError(f"expected {len(LAYERS)} keys of {KEY_SIZE} bytes")
        object.__setattr__(self, "layer_keys", keys)


def cascade_transcript(
    *,
    initiator_uid: str,
    responder_uid: str,
    initiator_ephemeral: bytes,
    responder_ephemeral: bytes,
    channel_binding: bytes,
) -> bytes:
    """Return the SHA-256 transcript hash used as the HKDF salt of :func:`derive_session_keys`.

    :returns: ``SHA-256(TRANSCRIPT_CONTEXT || u16-prefixed initiator uid || u16-prefixed
        responder uid || initiator ephemeral (32) || responder ephemeral (32) || u16-prefixed
        channel binding)``.
    :raises ValueError: if an ephemeral key is not 32 bytes or a field is too long.
    """
    if len(initiator_ephemeral) != 32 or len(responder_ephemeral) != 32:
        raise ValueError("ephemeral keys must be 32 bytes")
    data = b"".join(
        [
            TRANSCRIPT_CONTEXT,
            _prefixed(initiator_uid.encode("utf-8"), "initiator uid"),
            _prefixed(responder_uid.encode("utf-8"), "responder uid"),
            bytes(initiator_ephemeral),
            bytes(responder_ephemeral),
            _prefixed(bytes(channel_binding), "channel binding"),
        ]
    )
    return hashlib.sha256(data).digest()


def derive_session_keys(
    shared_secret: bytes,
    *,
    initiator_uid: str,
    responder_uid: str,
    initiator_ephemeral: bytes,
    responder_ephemeral: bytes,
    channel_binding: bytes,
) -> tuple[DirectionKeys, DirectionKeys]:
    """Derive the ten layer keys of a session from the X25519 shared secret.

    HKDF-SHA256 with the transcript hash (:func:`cascade_transcript`) as salt and
    :data:`KEYS_INFO` as info expands 320 bytes: the first five 32-byte keys seal
    initiator -> responder, the next five responder -> initiator.

    :param shared_secret: the X25519 output of the two ephemeral keys (at least 32 bytes).
    :param channel_binding: the TLS exporter value of the connection, so keys never outlive it.
    :returns: ``(initiator_to_responder, responder_to_initiator)``.
    :raises ValueError: if the secret is shorter than 32 bytes or a transcript field is invalid.
    """
    if len(shared_secret) < 32:
        raise ValueError("the shared secret must be at least 32 bytes")
    salt = cascade_transcript(
        initiator_uid=initiator_uid,
        responder_uid=responder_uid,
        initiator_ephemeral=initiator_ephemeral,
        responder_ephemeral=responder_ephemeral,
        channel_binding=channel_binding,
    )
    count = len(LAYERS)
    okm = HKDF(
        algorithm=hashes.SHA256(), length=2 * count * KEY_SIZE, salt=salt, info=KEYS_INFO
    ).derive(bytes(shared_secret))
    keys = [okm[i * KEY_SIZE : (i + 1) * KEY_SIZE] for i in range(2 * count)]
    return DirectionKeys(tuple(keys[:count])), DirectionKeys(tuple(keys[count:]))


def associated_data(sender_uid: str, recipient_uid: str, message_id: bytes, counter: int) -> bytes:
    """Return the associated data every layer authenticates for one message.

    :raises ValueError: if the message id is not 16 bytes or the counter is out of range.
    """
    if len(message_id) != MESSAGE_ID_SIZE:
        raise ValueError(f"message id must be {MESSAGE_ID_SIZE} bytes")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError("counter out of range")
    return _ad_prefix(sender_uid, recipient_uid) + bytes(message_id) + _COUNTER.pack(counter)


def _ad_prefix(sender_uid: str, recipient_uid: str) -> bytes:
    # The part of the associated data that is the same for every message of a direction.
    return b"".join(
        [
            AD_CONTEXT,
            _prefixed(sender_uid.encode("utf-8"), "sender uid"),
            _prefixed(recipient_uid.encode("utf-8"), "recipient uid"),
        ]
    )


def layer_nonce(layer: int, counter: int) -> bytes:
    """Return the 12-byte nonce of *layer* (0..4) for *counter*: ``u32(layer) || u64(counter)``."""
    return _NONCE.pack(layer, counter)


def _layer_ciphers(keys: DirectionKeys) -> tuple[AESGCM | ChaCha20Poly1305, ...]:
    # One AEAD object per key, built once: constructing them per message doubles the cost.
    ciphers: list[AESGCM | ChaCha20Poly1305] = []
    for name, key in zip(LAYERS, keys.layer_keys, strict=True):
        ciphers.append(AESGCM(key) if name == "AES-256-GCM" else ChaCha20Poly1305(key))
    return tuple(ciphers)


class CascadeSealer:
    """Seal the messages of one direction, numbering them 1, 2, 3, ...

    :param keys: the keys of this direction.
    :param sender_uid: the uid of the side sealing (bound into the associated data).
    :param recipient_uid: the uid of the side that will open.
    :param last_counter: the counter already used (0 for a fresh session; tests use it to reach
        the end of the counter space).
    """

    def __init__(
        self, keys: DirectionKeys, sender_uid: str, recipient_uid: str, *, last_counter: int = 0
    ) -> None:
        if not 0 <= last_counter <= MAX_COUNTER:
            raise ValueError("last_counter out of range")
        self._ciphers = _layer_ciphers(keys)
        self._ad_prefix = _ad_prefix(sender_uid, recipient_uid)
        self._last_counter = last_counter

    @property
    def last_counter(self) -> int:
        """The counter of the last sealed message (0 before the first)."""
        return self._last_counter

    def seal(self, message_id: bytes, plaintext: bytes) -> tuple[int, bytes]:
        """Seal *plaintext* under the next counter.

        :param message_id: the message's 16-byte id (bound into the associated data).
        :param plaintext: the body to seal.
        :returns: ``(counter, ciphertext)``; the receiver needs both.
        :raises CounterExhausted: if the counter would pass :data:`MAX_COUNTER`.
        :raises ValueError: if the message id is not 16 bytes.
        """
        if self._last_counter >= MAX_COUNTER:
            raise CounterExhausted()
        if len(message_id) != MESSAGE_ID_SIZE:
            raise ValueError(f"message id must be {MESSAGE_ID_SIZE} bytes")
        counter = self._last_counter + 1
        # associated_data() and layer_nonce(), without a call per layer (the hot path)
        ad = self._ad_prefix + bytes(message_id) + _COUNTER.pack(counter)
        data = bytes(plaintext)
        pack = _NONCE.pack
        for layer, cipher in enumerate(self._ciphers):
            data = cipher.encrypt(pack(layer, counter), data, ad)
        self._last_counter = counter
        return counter, data


class CascadeOpener:
    """Open the messages of one direction, refusing any counter not above the last accepted.

    :param keys: the keys of this direction (the peer's sealing keys).
    :param sender_uid: the uid of the peer that sealed.
    :param recipient_uid: our uid.
    """

    def __init__(self, keys: DirectionKeys, sender_uid: str, recipient_uid: str) -> None:
        self._ciphers = _layer_ciphers(keys)
        self._ad_prefix = _ad_prefix(sender_uid, recipient_uid)
        self._last_counter = 0

    @property
    def last_counter(self) -> int:
        """The counter of the last message accepted (0 before the first)."""
        return self._last_counter

    def open(self, counter: int, message_id: bytes, ciphertext: bytes) -> bytes:
        """Open one sealed message.

        A failed open leaves the opener unchanged: the next valid message still opens.

        :param counter: the counter the sender sealed it under.
        :param message_id: the message's 16-byte id.
        :param ciphertext: the sealed body.
        :returns: the plaintext.
        :raises CascadeError: if the counter is not above the last accepted one (a replay or a
            reordering), the id or ciphertext has a wrong size, or any layer fails to
            authenticate (altered data, wrong keys, wrong uids, wrong id or counter).
        """
        if not 0 < counter <= MAX_COUNTER:
            raise CascadeError("counter out of range")
        if counter <= self._last_counter:
            raise CascadeError("replayed or reordered message")
        if len(message_id) != MESSAGE_ID_SIZE:
            raise CascadeError("message id must be 16 bytes")
        if len(ciphertext) < OVERHEAD:
            raise CascadeError("ciphertext too short")
        ad = self._ad_prefix + bytes(message_id) + _COUNTER.pack(counter)
        data = bytes(ciphertext)
        pack = _NONCE.pack
        ciphers = self._ciphers
        try:
            for layer in range(len(ciphers) - 1, -1, -1):
                data = ciphers[layer].decrypt(pack(layer, counter), data, ad)
        except InvalidTag:
            raise CascadeError("a layer failed to authenticate")
        self._last_counter = counter
        return data
