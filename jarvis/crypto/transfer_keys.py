"""Per-transfer keys and the sealing of file chunks by the five-layer cascade.

The sender draws a fresh 32-byte transfer secret (:func:`new_transfer_secret`) and sends it in
the :class:`~jarvis.protocol.transfer.Offer`, inside the existing end-to-end session, so only
the two peers know it.  Each transfer connection then derives its own five layer keys
(:func:`derive_chunk_keys`): HKDF-SHA256 with salt ``transfer id || epoch`` (the epoch is 16
fresh random bytes from the receiver's ``Have``) and info ``b"jarvis/file-chunks/v1 keys"``.

Chunks are sealed with the same cascade as messages (AES-256-GCM, ChaCha20-Poly1305, AES-256-GCM,
ChaCha20-Poly1305, AES-256-GCM, innermost first, 80 bytes of tags):

A chunk travels as pieces (:data:`~jarvis.protocol.transfer.PIECE_SIZE` bytes, the last one
may be short), each sealed on its own:

- nonce of layer *i* for piece *p* of chunk *n*: ``u32(p * 256 + i) || u64(n)`` -- unique
  because keys are fresh per connection (a chunk re-sent after a reconnect is sealed under
  other keys) and each piece of each chunk is sent once per connection;
- associated data: ``b"jarvis/file-piece/v1\\x00" || transfer id || u64(n) || u32(length) ||
  u32(p)``, so a piece cannot be moved to another place, chunk or transfer, or truncated.

One AEAD object per key, built once per connection (building one per chunk costs as much as
sealing a small chunk).  The objects keep no per-call state, so sealing and opening run on
worker threads.  :meth:`ChunkCipher.seal_frame` and :meth:`ChunkCipher.open_into` run the
inner layers into two caller-owned work buffers (:class:`WorkBuffers`) instead of five fresh
1 MiB objects per chunk: fresh buffers of that size cost a page fault per 4 KiB each time,
which was most of the transfer's CPU (``docs/benchmarks.md``, 2026-12-05 night).
Pure computation: no I/O, no reactor, never logs keys or data.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jarvis.crypto.cascade import (
    KEY_SIZE,
    LAYERS,
    OVERHEAD,
    TAG_SIZE,
    CascadeError,
    DirectionKeys,
    _layer_ciphers,
)

#: Bytes of a transfer secret.
SECRET_SIZE = 32
#: Bytes of a connection epoch.
EPOCH_SIZE = 16
CHUNK_KEYS_INFO = b"jarvis/file-chunks/v1 keys"
CHUNK_AD_CONTEXT = b"jarvis/file-piece/v1\x00"

_NONCE = struct.Struct(">IQ")
_AD_TAIL = struct.Struct(">QII")
#: Nonce values between two pieces' layers (layers are numbered 0 to 4 within a piece).
_PIECE_STRIDE = 256


class ChunkRejected(CascadeError):
    """A file chunk failed to open: it was altered, moved, truncated or sealed for another
    connection.

    The transfer connection is closed and the chunk is fetched again on the next one; if it
    keeps happening with one contact, someone is tampering with the connection.
    """

    message = "a file chunk failed to open"


def new_transfer_secret() -> bytes:
    """Return a fresh 32-byte transfer secret from the operating system's CSPRNG."""
    return os.urandom(SECRET_SIZE)


def new_epoch() -> bytes:
    """Return a fresh 16-byte connection epoch."""
    return os.urandom(EPOCH_SIZE)


def derive_chunk_keys(secret: bytes, transfer_id: bytes, epoch: bytes) -> DirectionKeys:
    """Derive the five layer keys of one transfer connection.

    :param secret: the offer's 32-byte transfer secret.
    :param transfer_id: the offer's 16-byte transfer id.
    :param epoch: the 16-byte epoch of this connection (from the receiver's ``Have``).
    :raises ValueError: on a wrong size.
    """
    if len(secret) != SECRET_SIZE or len(transfer_id) != 16 or len(epoch) != EPOCH_SIZE:
        raise ValueError("secret 32 bytes, transfer id 16 bytes, epoch 16 bytes")
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=len(LAYERS) * KEY_SIZE,
        salt=bytes(transfer_id) + bytes(epoch),
        info=CHUNK_KEYS_INFO,
    ).derive(bytes(secret))
    return DirectionKeys(tuple(okm[i * KEY_SIZE : (i + 1) * KEY_SIZE] for i in range(len(LAYERS))))


def chunk_associated_data(transfer_id: bytes, index: int, length: int, piece: int = 0) -> bytes:
    """Return the associated data of piece *piece* of chunk *index* (plaintext *length*
    bytes)."""
    return CHUNK_AD_CONTEXT + bytes(transfer_id) + _AD_TAIL.pack(index, length, piece)


#: A pair of work buffers (:class:`WorkBuffers` lends memory maps; tests may pass bytearrays).
WorkPair = tuple[bytearray | mmap.mmap, bytearray | mmap.mmap]


def _nonces(index: int, piece: int) -> list[bytes]:
    """The nonce of each layer of piece *piece* of chunk *index*, innermost layer first."""
    if not 0 <= piece < 1 << 24:
        raise ValueError("piece out of range")
    base = piece * _PIECE_STRIDE
    return [_NONCE.pack(base + layer, index) for layer in range(len(LAYERS))]


class WorkBuffers:
    """A small pool of reusable pairs of work buffers for :class:`ChunkCipher` (thread-safe).

    Each pair holds two writable buffers of *size* bytes; a job takes a pair with :meth:`pair`
    and gives it back when done, so a transfer keeps at most one pair per job running at once
    (its window) instead of allocating new buffers per chunk.  The buffers are anonymous
    memory maps, so each starts on a page boundary: the receiver writes opened pieces from
    them with ``O_DIRECT``, which needs aligned memory.

    :param size: bytes per buffer: the largest sealed chunk (chunk size + overhead).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[WorkPair] = []
        self._lock = threading.Lock()

    @contextmanager
    def pair(self) -> Iterator[WorkPair]:
        """Lend a pair of buffers for the duration of the ``with`` block."""
        with self._lock:
            pair = self._free.pop() if self._free else None
        if pair is None:
            pair = (mmap.mmap(-1, self.size), mmap.mmap(-1, self.size))
        try:
            yield pair
        finally:
            with self._lock:
                self._free.append(pair)


class ChunkCipher:
    """Seal and open the chunks of one transfer connection.

    :param keys: from :func:`derive_chunk_keys`.
    :param transfer_id: bound into every chunk's associated data.
    """

    def __init__(self, keys: DirectionKeys, transfer_id: bytes) -> None:
        self._ciphers = _layer_ciphers(keys)
        self._transfer_id = bytes(transfer_id)

    @classmethod
    def for_connection(cls, secret: bytes, transfer_id: bytes, epoch: bytes) -> ChunkCipher:
        """Build the cipher of one connection from the offer's secret and the Have's epoch."""
        return cls(derive_chunk_keys(secret, transfer_id, epoch), transfer_id)

    def seal(self, index: int, data: bytes, piece: int = 0) -> bytes:
        """Seal piece *piece* of chunk *index*; the result is
        :data:`~jarvis.crypto.cascade.OVERHEAD` longer."""
        ad = chunk_associated_data(self._transfer_id, index, len(data), piece)
        for nonce, cipher in zip(_nonces(index, piece), self._ciphers, strict=True):
            data = cipher.encrypt(nonce, data, ad)
        return data

    def seal_frame(
        self,
        index: int,
        data: bytes | memoryview,
        head: bytes,
        work: WorkPair,
        piece: int = 0,
    ) -> bytes:
        """Seal piece *piece* of chunk *index* and return ``head || sealed`` as one ``bytes``
        (a whole frame the transport writes without another copy); the inner layers run in the
        *work* buffers (each at least ``len(data) + OVERHEAD`` bytes), the result equals
        ``head + seal(index, data, piece)``.  *data* may be a view of ``work[1]``: the first
        layer reads it into ``work[0]`` before the second layer overwrites ``work[1]``."""
        ad = chunk_associated_data(self._transfer_id, index, len(data), piece)
        nonces = _nonces(index, piece)
        ciphers = self._ciphers
        a, b = memoryview(work[0]), memoryview(work[1])
        src: bytes | memoryview = data
        length = len(data)
        for layer in range(len(ciphers) - 1):
            length += TAG_SIZE
            dst = a[:length]
            ciphers[layer].encrypt_into(nonces[layer], src, ad, dst)
            src = dst
            a, b = b, a
        last = len(ciphers) - 1
        return head + ciphers[last].encrypt(nonces[last], src, ad)

    def open_into(
        self,
        index: int,
        sealed: bytes | bytearray | memoryview,
        work: WorkPair,
        piece: int = 0,
    ) -> memoryview:
        """Open piece *piece* of chunk *index* into one of the *work* buffers (each at least
        ``len(sealed)`` bytes) and return a view of the plaintext there (valid until the
        buffers are reused).

        :raises ChunkRejected: if it is too short or any layer fails to authenticate.
        """
        if len(sealed) < OVERHEAD:
            raise ChunkRejected("sealed chunk too short")
        length = len(sealed)
        ad = chunk_associated_data(self._transfer_id, index, length - OVERHEAD, piece)
        nonces = _nonces(index, piece)
        ciphers = self._ciphers
        a, b = memoryview(work[0]), memoryview(work[1])
        src: bytes | bytearray | memoryview = sealed
        try:
            for layer in range(len(ciphers) - 1, -1, -1):
                length -= TAG_SIZE
                dst = a[:length]
                ciphers[layer].decrypt_into(nonces[layer], src, ad, dst)
                src = dst
                a, b = b, a
        except InvalidTag:
            raise ChunkRejected("a layer failed to authenticate") from None
        assert isinstance(src, memoryview)
        return src

    def open(self, index: int, sealed: bytes, piece: int = 0) -> bytes:
        """Open piece *piece* of chunk *index*.

        :raises ChunkRejected: if it is too short or any layer fails to authenticate.
        """
        if len(sealed) < OVERHEAD:
            raise ChunkRejected("sealed chunk too short")
        ad = chunk_associated_data(self._transfer_id, index, len(sealed) - OVERHEAD, piece)
        nonces = _nonces(index, piece)
        ciphers = self._ciphers
        data = sealed
        try:
            for layer in range(len(ciphers) - 1, -1, -1):
                data = ciphers[layer].decrypt(nonces[layer], data, ad)
        except InvalidTag:
            raise ChunkRejected("a layer failed to authenticate") from None
        return data
