"""The password-protected key file that lives in the data directory.

It holds the two secrets of an account: the **data key** (which encrypts every row of the store)
and the **identity key** (Ed25519 seed), plus the display name.  A key derived from the master
password with Argon2id wraps them; changing the password re-wraps the same secrets, so the store
is never re-encrypted.

The file is UTF-8 JSON::

    {
      "jarvis_keyfile": 1,                      # format version
      "uid": "<52-char uid>",                   # in the clear, see below
      "public_key": "<base64url, 32 bytes>",    # in the clear, see below
      "kdf": {"algorithm": "argon2id", "time_cost": 3, "memory_cost_kib": 65536,
              "parallelism": 1, "salt": "<base64url, 16 bytes>"},
      "cipher": "aes-256-gcm",
      "check": "<base64url, 16 bytes>",         # password check value
      "nonce": "<base64url, 12 bytes>",
      "sealed": "<base64url>"                   # data key (32), identity seed (32), name
    }

* **What is in the clear, and why.**  The uid and the public key are stored unencrypted so that a
  locked daemon can still say who it is (``jarvis status``, the lock screen) and so that the
  file can be matched to its identity without the password.  Both are public anyway (they are in
  every link code); the name, the data key and the private key are not in the clear.
* **Sealed content.**  The 32-byte data key, then the 32-byte Ed25519 seed, then the name in
  UTF-8, encrypted with AES-256-GCM (its 16-byte tag at the end).
* **Key derivation.**  Argon2id (``argon2.low_level.hash_secret_raw``) over the NFC-normalized
  UTF-8 password and a random 16-byte salt gives a 32-byte master; HKDF-Expand-SHA256 splits it
  into the wrapping key and a 16-byte *check* value.  The parameters are stored in the file, so
  they can be raised later (:func:`change_password` never lowers them).
* **Binding.**  The associated data of the AES-256-GCM seal is the format version, uid, public
  key, KDF algorithm, parameters, salt and cipher name: none can be swapped without the seal
  failing.
* **Errors.**  A file that does not parse, has another version, whose uid does not match its
  public key, or whose parameters are out of range is :class:`CorruptKeyFile`.  A well-formed
  file whose check value does not match the password is :class:`WrongPassword`.  When the check
  *matches* but the seal fails, the password is right and the file was altered: that is
  :class:`CorruptKeyFile` too, so a damaged disk is not mistaken for a forgotten password.  The
  check value lets an attacker test a password guess no faster than the seal itself would: one
  Argon2id per guess either way.

Argon2id takes ~0.2 s of CPU at the default parameters: callers run these functions in a thread,
never on the reactor thread.  Pure code otherwise: bytes in, bytes out.
"""

from __future__ import annotations

import hmac
import json
import os
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from jarvis.crypto.aead import KEY_BYTES, new_data_key
from jarvis.crypto.encoding import b64url_decode, b64url_encode, get_field, loads_object
from jarvis.crypto.errors import CorruptKeyFile, WeakPassword, WrongPassword
from jarvis.crypto.identity import IdentityKey, check_name, uid_for_public_bytes

#: The key file format this module writes and reads.
FORMAT_VERSION = 1
#: A key file is a few hundred bytes; anything much larger is not one.
MAX_KEYFILE_BYTES = 64 * 1024
#: Size of the random Argon2id salt.
SALT_BYTES = 16
#: Size of the password check value.
CHECK_BYTES = 16

_KDF_ALGORITHM = "argon2id"
_CIPHER = "aes-256-gcm"
_NONCE_BYTES = 12
_SEED_BYTES = 32
_PUBLIC_BYTES = 32

# Argon2's own minimums are t=1 and m=8*p KiB.  The maximums keep a hostile or damaged file from
# making unlock allocate terabytes or spin for hours.
MIN_TIME_COST = 1
MIN_MEMORY_COST_KIB = 8
MAX_TIME_COST = 100
MAX_MEMORY_COST_KIB = 4 * 1024 * 1024  # 4 GiB
MAX_PARALLELISM = 64


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters: passes, memory in KiB, and lanes.

    :raises ValueError: on construction, if a parameter is not an integer or is out of range
        (below t=1, m=8 KiB per lane, p=1, or above the caps that protect unlock from a hostile
        file: t=100, m=4 GiB, p=64).
    """

    time_cost: int = 3
    memory_cost_kib: int = 65536
    parallelism: int = 1

    def __post_init__(self) -> None:
        for name in ("time_cost", "memory_cost_kib", "parallelism"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"Argon2id {name} must be an integer, not {value!r}")
        if not MIN_TIME_COST <= self.time_cost <= MAX_TIME_COST:
            raise ValueError(
                f"Argon2id time_cost must be {MIN_TIME_COST}..{MAX_TIME_COST}, not {self.time_cost}"
            )
        if not 1 <= self.parallelism <= MAX_PARALLELISM:
            raise ValueError(
                f"Argon2id parallelism must be 1..{MAX_PARALLELISM}, not {self.parallelism}"
            )
        low = max(MIN_MEMORY_COST_KIB, 8 * self.parallelism)
        if not low <= self.memory_cost_kib <= MAX_MEMORY_COST_KIB:
            raise ValueError(
                f"Argon2id memory_cost_kib must be {low}..{MAX_MEMORY_COST_KIB} with "
                f"parallelism {self.parallelism}, not {self.memory_cost_kib}"
            )

    def at_least(self, other: KdfParams) -> KdfParams:
        """Return the parameters that are, one by one, the larger of *self* and *other*."""
        return KdfParams(
            time_cost=max(self.time_cost, other.time_cost),
            memory_cost_kib=max(self.memory_cost_kib, other.memory_cost_kib),
            parallelism=max(self.parallelism, other.parallelism),
        )


#: The parameters new key files and exports use: t=3, m=64 MiB, p=1 (~0.2 s on one core),
#: the second recommended option of RFC 9106.
DEFAULT_PARAMS = KdfParams()


def password_bytes(password: str) -> bytes:
    """Return the bytes Argon2id hashes for *password*: its NFC normalization in UTF-8.

    Normalizing means that the same password typed with a composed or a decomposed accent (two
    keyboards, two operating systems) opens the same file.

    :raises WeakPassword: if the password is empty.
    :raises TypeError: if *password* is not a ``str``.
    """
    if not isinstance(password, str):
        raise TypeError("the password must be a str")
    if not password:
        raise WeakPassword("it is empty")
    return unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")


def derive_password_keys(
    password: str, salt: bytes, params: KdfParams, *, purpose: bytes
) -> tuple[bytes, bytes]:
    """Run Argon2id and return ``(wrapping_key, check)`` for *password*.

    The 32-byte Argon2id output is expanded with HKDF-Expand-SHA256 into a 32-byte wrapping key
    and a :data:`CHECK_BYTES` check value; *purpose* (``b"keyfile"``, ``b"export"``) keeps the
    keys of different containers apart.  Blocking: ~0.2 s at :data:`DEFAULT_PARAMS`.

    :raises WeakPassword: if the password is empty.
    """
    secret = password_bytes(password)
    master = hash_secret_raw(
        secret=secret,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_cost_kib,
        parallelism=params.parallelism,
        hash_len=32,
        type=Type.ID,
    )
    okm = HKDFExpand(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES + CHECK_BYTES,
        info=b"jarvis password keys v1\x00" + purpose,
    ).derive(master)
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


@dataclass
class UnlockedKeys:
    """The secrets of an unlocked key file.  ``repr()`` leaves out the data key."""

    identity: IdentityKey
    data_key: bytes = field(repr=False)
    name: str

    @property
    def uid(self) -> str:
        """The identity's uid."""
        return self.identity.uid


@dataclass(frozen=True)
class _KeyFile:
    """A parsed, validated key file (still sealed)."""

    uid: str
    public_key: bytes
    params: KdfParams
    salt: bytes
    check: bytes
    nonce: bytes
    sealed: bytes

    def associated_data(self) -> bytes:
        return _associated_data(self.uid, self.public_key, self.params, self.salt)


def _associated_data(uid: str, public_key: bytes, params: KdfParams, salt: bytes) -> bytes:
    fields = [
        "jarvis_keyfile",
        FORMAT_VERSION,
        uid,
        b64url_encode(public_key),
        _KDF_ALGORITHM,
        params.time_cost,
        params.memory_cost_kib,
        params.parallelism,
        b64url_encode(salt),
        _CIPHER,
    ]
    return json.dumps(fields, separators=(",", ":")).encode("ascii")


def _parse(content: bytes) -> _KeyFile:
    try:
        obj = loads_object(content, max_bytes=MAX_KEYFILE_BYTES)
        version = get_field(obj, "jarvis_keyfile", int)
    except ValueError as e:
        raise CorruptKeyFile(str(e)) from None
    if version != FORMAT_VERSION:
        raise CorruptKeyFile(f"format version {version} is not supported (this Jarvis reads 1)")
    try:
        uid = get_field(obj, "uid", str)
        public_key = b64url_decode(get_field(obj, "public_key", str), length=_PUBLIC_BYTES)
        kdf = get_field(obj, "kdf", dict)
        if get_field(kdf, "algorithm", str) != _KDF_ALGORITHM:
            raise ValueError(f"key derivation {kdf['algorithm']!r:.40} is not supported")
        params = KdfParams(
            time_cost=get_field(kdf, "time_cost", int),
            memory_cost_kib=get_field(kdf, "memory_cost_kib", int),
            parallelism=get_field(kdf, "parallelism", int),
        )
        salt = b64url_decode(get_field(kdf, "salt", str), length=SALT_BYTES)
        if get_field(obj, "cipher", str) != _CIPHER:
            raise ValueError(f"cipher {obj['cipher']!r:.40} is not supported")
        check = b64url_decode(get_field(obj, "check", str), length=CHECK_BYTES)
        nonce = b64url_decode(get_field(obj, "nonce", str), length=_NONCE_BYTES)
        sealed = b64url_decode(get_field(obj, "sealed", str))
    except ValueError as e:
        raise CorruptKeyFile(str(e)) from None
    if uid_for_public_bytes(public_key) != uid:
        raise CorruptKeyFile("its uid does not match its public key")
    return _KeyFile(uid, public_key, params, salt, check, nonce, sealed)


def create_keyfile(
    name: str,
    password: str,
    *,
    params: KdfParams = DEFAULT_PARAMS,
    identity: IdentityKey | None = None,
    data_key: bytes | None = None,
) -> tuple[bytes, UnlockedKeys]:
    """Make a key file for *name*, protected by *password*.  Blocking (Argon2id).

    :param identity: the identity to store; a new one is generated if omitted.
    :param data_key: the 32-byte data key to store; a new one is generated if omitted.
    :returns: the file content (UTF-8 JSON) and the unlocked keys it holds.
    :raises WeakPassword: if the password is empty.
    :raises ValueError: if *name* is not a valid display name or *data_key* not 32 bytes.
    """
    check_name(name)
    password_bytes(password)  # refuse a weak password before any expensive work
    if identity is None:
        identity = IdentityKey.generate()
    if data_key is None:
        data_key = new_data_key()
    elif not isinstance(data_key, bytes) or len(data_key) != KEY_BYTES:
        raise ValueError(f"a data key is {KEY_BYTES} bytes")
    salt = os.urandom(SALT_BYTES)
    wrapping_key, check = derive_password_keys(password, salt, params, purpose=b"keyfile")
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = data_key + identity.private_bytes() + name.encode("utf-8")
    ad = _associated_data(identity.uid, identity.public_bytes, params, salt)
    sealed = AESGCM(wrapping_key).encrypt(nonce, plaintext, ad)
    document: dict[str, Any] = {
        "jarvis_keyfile": FORMAT_VERSION,
        "uid": identity.uid,
        "public_key": b64url_encode(identity.public_bytes),
        "kdf": {
            "algorithm": _KDF_ALGORITHM,
            "time_cost": params.time_cost,
            "memory_cost_kib": params.memory_cost_kib,
            "parallelism": params.parallelism,
            "salt": b64url_encode(salt),
        },
        "cipher": _CIPHER,
        "check": b64url_encode(check),
        "nonce": b64url_encode(nonce),
        "sealed": b64url_encode(sealed),
    }
    content = (json.dumps(document, indent=2) + "\n").encode("utf-8")
    return content, UnlockedKeys(identity=identity, data_key=data_key, name=name)


def read_public(content: bytes) -> tuple[str, bytes]:
    """Return ``(uid, public_key)`` of a key file without its password.  Cheap.

    :raises CorruptKeyFile: if the content is not a valid key file.
    """
    parsed = _parse(content)
    return parsed.uid, parsed.public_key


def read_params(content: bytes) -> KdfParams:
    """Return the Argon2id parameters a key file was sealed with (to decide on an upgrade).

    :raises CorruptKeyFile: if the content is not a valid key file.
    """
    return _parse(content).params


def unlock_keyfile(content: bytes, password: str) -> UnlockedKeys:
    """Open a key file with *password*.  Blocking (Argon2id).

    :raises CorruptKeyFile: if the file is malformed, or altered (see the module docstring).
    :raises WrongPassword: if the password does not open this well-formed file.
    :raises WeakPassword: if the password is empty (no key file has an empty password).
    """
    parsed = _parse(content)
    wrapping_key, check = derive_password_keys(
        password, parsed.salt, parsed.params, purpose=b"keyfile"
    )
    if not hmac.compare_digest(check, parsed.check):
        raise WrongPassword()
    try:
        plaintext = AESGCM(wrapping_key).decrypt(
            parsed.nonce, parsed.sealed, parsed.associated_data()
        )
    except InvalidTag:
        raise CorruptKeyFile("the password is right but the sealed keys were altered") from None
    if len(plaintext) <= KEY_BYTES + _SEED_BYTES:
        raise CorruptKeyFile("the sealed keys are too short")
    data_key = plaintext[:KEY_BYTES]
    identity = IdentityKey.from_private_bytes(plaintext[KEY_BYTES : KEY_BYTES + _SEED_BYTES])
    try:
        name = check_name(plaintext[KEY_BYTES + _SEED_BYTES :].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptKeyFile(f"the sealed name is invalid ({e})") from None
    if identity.public_bytes != parsed.public_key:
        raise CorruptKeyFile("the sealed identity does not match the public key")
    return UnlockedKeys(identity=identity, data_key=data_key, name=name)


def change_password(
    content: bytes, old: str, new: str, *, params: KdfParams | None = None
) -> bytes:
    """Return the key file re-sealed under *new*, holding the same data key, identity and name.

    The store is not touched: its data key does not change.  Blocking (two Argon2id runs).

    :param params: the Argon2id parameters of the new file; by default the file's own,
        raised one by one to at least :data:`DEFAULT_PARAMS`, so a password change also
        upgrades an old file and never weakens it.
    :raises WrongPassword: if *old* does not open the file.
    :raises WeakPassword: if *new* (or *old*) is empty.
    :raises CorruptKeyFile: if the file is damaged.
    """
    password_bytes(new)  # refuse before the expensive unlock
    old_params = _parse(content).params
    keys = unlock_keyfile(content, old)
    if params is None:
        params = old_params.at_least(DEFAULT_PARAMS)
    new_content, _ = create_keyfile(
        keys.name, new, params=params, identity=keys.identity, data_key=keys.data_key
    )
    return new_content
