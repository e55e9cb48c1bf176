"""The password-sealed container of an account export (``.jexport``).

An export carries a whole account (key file secrets, contacts, history) off the machine, so it
is always encrypted: there is no plaintext mode.  The payload is opaque here (the store builds
it); this module only seals it under a password.

Byte layout (integers big-endian)::

    offset  size  field
         0     8  magic b"JARVISEX"
         8     1  format version = 1
         9     1  KDF algorithm = 1 (Argon2id)
        10     4  Argon2id time_cost
        14     4  Argon2id memory_cost in KiB
        18     1  Argon2id parallelism
        19    16  salt
        35    16  password check value
        51    12  nonce
        63     -  AES-256-GCM ciphertext of the payload, with its 16-byte tag at the end

The first 63 bytes (the header) are the associated data of the seal, so no parameter can be
changed without opening failing.  Keys come from :func:`jarvis.crypto.keyfile.derive_password_keys`
with purpose ``b"export"``: Argon2id, then HKDF into the wrapping key and the check value.  A
check mismatch is :class:`WrongPassword`; a matching check with a failing seal means the file was
damaged, :class:`CorruptExport`.

The payload is sealed in one piece, so it must fit in memory and stay below 2 GiB (the limit of
one AES-GCM call in :mod:`cryptography`).  Blocking (Argon2id): run in a thread.
"""

from __future__ import annotations

import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jarvis.crypto.errors import CorruptExport, WrongPassword
from jarvis.crypto.keyfile import (
    CHECK_BYTES,
    DEFAULT_PARAMS,
    SALT_BYTES,
    KdfParams,
    derive_password_keys,
    password_bytes,
)

#: The first bytes of every export.
MAGIC = b"JARVISEX"
#: The export format this module writes and reads.
FORMAT_VERSION = 1
#: The largest payload one export can hold.
MAX_PAYLOAD_BYTES = 2**31 - 1 - 16

_KDF_ARGON2ID = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_PARAMS = struct.Struct(">BBIIB")  # version, kdf, time_cost, memory_cost_kib, parallelism
_HEADER_BYTES = len(MAGIC) + _PARAMS.size + SALT_BYTES + CHECK_BYTES + _NONCE_BYTES


def seal_export(payload: bytes, password: str, *, params: KdfParams = DEFAULT_PARAMS) -> bytes:
    """Seal *payload* under *password*.  Blocking (Argon2id).

    :returns: the export file content (see the layout in the module docstring).
    :raises WeakPassword: if the password is empty.
    :raises ValueError: if the payload is larger than :data:`MAX_PAYLOAD_BYTES`.
    """
    password_bytes(password)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"an export holds at most {MAX_PAYLOAD_BYTES} bytes")
    salt = os.urandom(SALT_BYTES)
    wrapping_key, check = derive_password_keys(password, salt, params, purpose=b"export")
    nonce = os.urandom(_NONCE_BYTES)
    header = (
        MAGIC
        + _PARAMS.pack(
            FORMAT_VERSION,
            _KDF_ARGON2ID,
            params.time_cost,
            params.memory_cost_kib,
            params.parallelism,
        )
        + salt
        + check
        + nonce
    )
    return header + AESGCM(wrapping_key).encrypt(nonce, payload, header)


def open_export(blob: bytes, password: str) -> bytes:
    """Check and decrypt an export made by :func:`seal_export`.  Blocking (Argon2id).

    :returns: the payload.
    :raises CorruptExport: if the blob is not an export, is of another version, has
        out-of-range parameters, or was altered.
    :raises WrongPassword: if the password does not open this export.
    :raises WeakPassword: if the password is empty.
    """
    if len(blob) < _HEADER_BYTES + _TAG_BYTES or not blob.startswith(MAGIC):
        if blob[: len(MAGIC)] != MAGIC[: len(blob)]:
            raise CorruptExport("it does not start with the Jarvis export header")
        raise CorruptExport(f"it is truncated ({len(blob)} bytes)")
    header = bytes(blob[:_HEADER_BYTES])
    version, kdf, time_cost, memory_cost_kib, parallelism = _PARAMS.unpack_from(header, len(MAGIC))
    if version != FORMAT_VERSION:
        raise CorruptExport(f"format version {version} is not supported (this Jarvis reads 1)")
    if kdf != _KDF_ARGON2ID:
        raise CorruptExport(f"key derivation {kdf} is not supported")
    try:
        params = KdfParams(time_cost, memory_cost_kib, parallelism)
    except ValueError as e:
        raise CorruptExport(str(e)) from None
    offset = len(MAGIC) + _PARAMS.size
    salt = header[offset : offset + SALT_BYTES]
    offset += SALT_BYTES
    check = header[offset : offset + CHECK_BYTES]
    nonce = header[offset + CHECK_BYTES :]
    wrapping_key, expected = derive_password_keys(password, salt, params, purpose=b"export")
    if not hmac.compare_digest(check, expected):
        raise WrongPassword()
    try:
        return AESGCM(wrapping_key).decrypt(nonce, bytes(blob[_HEADER_BYTES:]), header)
    except InvalidTag:
        raise CorruptExport("the password is right but the content was altered") from None
