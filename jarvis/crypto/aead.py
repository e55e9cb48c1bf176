"""Authenticated encryption of rows at rest under the store's data key.

:class:`RowCipher` seals each value with AES-256-GCM under a random 96-bit nonce, which it
prepends: ``blob = nonce (12) || ciphertext || tag (16)``.  The caller's associated data names
the row (table, column, row id...), so a sealed value cannot be moved to another row or column
without :meth:`RowCipher.open` failing.  Random nonces are safe for up to 2**32 seals per key
(NIST SP 800-38D); a personal message store stays far below that.

One :class:`~cryptography.hazmat.primitives.ciphers.aead.AESGCM` object is kept per key (making
one per call doubles the cost of a small row).  Pure code: no reactor, no I/O.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jarvis.common.entropy import public_random
from jarvis.crypto.errors import DecryptionFailed, KeyWiped

#: Size of a data key in bytes.
KEY_BYTES = 32
#: Size of the nonce prepended to every sealed blob.
NONCE_BYTES = 12
#: Size of the GCM authentication tag at the end of every sealed blob.
TAG_BYTES = 16
#: Bytes a sealed blob adds to its plaintext.
OVERHEAD = NONCE_BYTES + TAG_BYTES

_SUBKEY_INFO_PREFIX = b"jarvis row subkey v1\x00"


def new_data_key() -> bytes:
    """Return a new random 32-byte data key from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


class RowCipher:
    """AES-256-GCM sealing and opening of values under one 32-byte data key.

    Thread-safe: the cipher keeps no per-call state, so the store's thread and the threads
    that run exports can share one instance.
    """

    def __init__(self, key: bytes) -> None:
        """:param key: the 32-byte data key.
        :raises ValueError: if *key* is not 32 bytes.
        """
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes")
        self._key: bytes | None = bytes(key)
        self._aead: AESGCM | None = AESGCM(self._key)

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt and authenticate *plaintext*, binding *associated_data* (not stored).

        :returns: ``nonce || ciphertext || tag``, :data:`OVERHEAD` bytes longer than *plaintext*.
        :raises KeyWiped: after :meth:`wipe`.
        """
        aead = self._cipher()
        nonce = public_random(NONCE_BYTES)
        return nonce + aead.encrypt(nonce, plaintext, associated_data)

    def open(self, blob: bytes, associated_data: bytes) -> bytes:
        """Check and decrypt a blob made by :meth:`seal` with the same *associated_data*.

        :raises DecryptionFailed: if the blob is too short, was altered, was sealed under
            another key or with other associated data.
        :raises KeyWiped: after :meth:`wipe`.
        """
        aead = self._cipher()
        if len(blob) < OVERHEAD:
            raise DecryptionFailed(f"the blob is {len(blob)} bytes, shorter than {OVERHEAD}")
        nonce = bytes(blob[:NONCE_BYTES])
        try:
            return aead.decrypt(nonce, bytes(blob[NONCE_BYTES:]), associated_data)
        except InvalidTag:
            raise DecryptionFailed() from None

    def derive_subkey(self, label: bytes) -> bytes:
        """Return a 32-byte key derived from the data key for the purpose named by *label*.

        HKDF-SHA256 (RFC 5869) with info ``b"jarvis row subkey v1\\0" + label``: different labels
        give independent keys, e.g. ``b"blind-index"`` for the HMAC key of a searchable index.

        :raises ValueError: if *label* is empty.
        :raises KeyWiped: after :meth:`wipe`.
        """
        if not label:
            raise ValueError("a subkey needs a non-empty label")
        key = self._key  # one read: wipe() may run on another thread
        if key is None:
            raise KeyWiped()
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_BYTES,
            salt=None,
            info=_SUBKEY_INFO_PREFIX + label,
        )
        return hkdf.derive(key)

    def wipe(self) -> None:
        """Drop this object's references to the key, so later calls raise :class:`KeyWiped`.

        This is all Python allows: the key bytes themselves stay in memory until the garbage
        collector frees them and the allocator reuses the space, copies may exist elsewhere
        (the caller's ``bytes``, OpenSSL's expanded key schedule inside the AESGCM object,
        swapped-out pages), and nothing here overwrites them.  Wiping prevents *use* of the
        key by this object after a lock; it is not a guarantee of *erasure*.
        """
        self._key = None
        self._aead = None

    @property
    def wiped(self) -> bool:
        """Whether :meth:`wipe` was called."""
        return self._aead is None

    def _cipher(self) -> AESGCM:
        aead = self._aead
        if aead is None:
            raise KeyWiped()
        return aead

    def __repr__(self) -> str:
        return f"RowCipher({'wiped' if self.wiped else 'ready'})"
