"""A Jarvis identity: an Ed25519 key, the uid derived from it, and the ways humans compare them.

* The **uid** is the lowercase, unpadded base32 of SHA-256 over the key's SubjectPublicKeyInfo
  DER: 52 characters of ``a-z2-7``, a valid DNS label.  Identities are self-certifying: whoever
  proves possession of the private key (TLS does) *is* that uid; no authority vouches for it.
* The **fingerprint** is the uid written as 13 groups of 4 characters, to read aloud or compare
  by eye.  It is the whole uid (256 bits), so it can be checked against any place the uid is
  shown, and the base32 alphabet has no ``0``, ``1``, ``8`` or ``9`` to mistake for ``o``,
  ``l``, ``b`` or ``g``.
* The **safety code** of two identities is 60 digits (12 groups of 5) that both sides compute
  alike; comparing it once, in person or by voice, proves there is no one in the middle.
* The **certificate** is a self-signed X.509 certificate for the key, with ``<uid>.jarvis`` as
  its DNS name, for the pinned mutual TLS of the peer connections.

Pure code: no reactor, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import unicodedata
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from jarvis.crypto.errors import BadSignature

#: Length of a uid in characters (256 bits in base32, without padding).
UID_LENGTH = 52
#: The DNS suffix under which a uid appears in certificates: ``<uid>.jarvis``.
UID_DOMAIN = "jarvis"
#: Maximum length of a display name, in characters.
MAX_NAME_CHARS = 64

_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
_CERT_BACKDATE = timedelta(days=1)
_CERT_LIFETIME = timedelta(days=20 * 365 + 5)  # twenty years, leap days included
# Unicode categories refused in display names: controls, format characters (bidi overrides,
# zero-width joiners that make two names look alike), surrogates, line/paragraph separators.
_REFUSED_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SAFETY_LABEL = b"jarvis safety code v1\x00"


def uid_for_public_key(public_key: Ed25519PublicKey) -> str:
    """Return the uid of *public_key*: base32(SHA-256(SubjectPublicKeyInfo DER)), lowercase.

    Any key type with a SubjectPublicKeyInfo encoding is accepted (the hash commits to the key
    type too); Jarvis's own identities are Ed25519.
    """
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(spki).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def uid_for_public_bytes(raw32: bytes) -> str:
    """Return the uid of a raw 32-byte Ed25519 public key.

    :raises ValueError: if *raw32* is not 32 bytes.
    """
    return uid_for_public_key(_public_key(raw32))


def uid_for_certificate(cert: x509.Certificate) -> str:
    """Return the uid of the key in *cert* (the leaf a TLS peer presented)."""
    return uid_for_public_key(cert.public_key())  # type: ignore[arg-type]


def is_valid_uid(text: object) -> bool:
    """Return whether *text* is a uid: 52 lowercase base32 characters, canonically encoded."""
    if not isinstance(text, str) or len(text) != UID_LENGTH:
        return False
    try:
        digest = base64.b32decode(text.upper() + "====")
    except (binascii.Error, ValueError):
        return False
    # The last character carries 4 bits of padding; only one spelling of each digest is a uid.
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower() == text


def _check_uid(uid: str) -> None:
    if not is_valid_uid(uid):
        raise ValueError(f"not a Jarvis uid: {uid!r:.70}")


def fingerprint(uid: str) -> str:
    """Return *uid* as 13 space-separated groups of 4 characters, for reading aloud.

    The grouping is the only change: the fingerprint is the uid, so it can be compared with the
    uid anywhere it appears (a link code's card, a ``.jcard`` file, ``jarvis whoami``).

    :raises ValueError: if *uid* is not a valid uid.
    """
    _check_uid(uid)
    return " ".join(uid[i : i + 4] for i in range(0, UID_LENGTH, 4))


def _safety_half(uid: str) -> str:
    digest = hashlib.sha256(_SAFETY_LABEL + uid.encode("ascii")).digest()
    # Six 40-bit chunks, each reduced to five decimal digits (the bias, 2**40 % 10**5 / 2**40,
    # is below 1e-7): 30 digits, about 100 bits of the party's uid.
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5)
    )


def safety_code(uid_a: str, uid_b: str) -> str:
    """Return the safety code of a pair of identities: 12 groups of 5 digits.

    Like Signal's safety numbers, each uid yields 30 digits (six 5-digit groups from
    SHA-256 of a label and the uid); the two halves are sorted and joined, so both parties see
    the same code whichever side computes it.  Each half is ~100 bits: finding another key
    whose half collides is out of reach.

    :raises ValueError: if either argument is not a valid uid.
    """
    _check_uid(uid_a)
    _check_uid(uid_b)
    digits = "".join(sorted((_safety_half(uid_a), _safety_half(uid_b))))
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


def check_name(name: object) -> str:
    """Return *name* if it is an acceptable display name, else raise :class:`ValueError`.

    A display name is 1 to :data:`MAX_NAME_CHARS` characters with no control, format (bidi
    override, zero-width), surrogate or line-separator characters, and no leading or trailing
    whitespace.  It is not normalized: a signed name is kept byte for byte.
    """
    if not isinstance(name, str):
        raise ValueError("the name must be text")
    if not name:
        raise ValueError("the name is empty")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"the name is longer than {MAX_NAME_CHARS} characters")
    if name != name.strip():
        raise ValueError("the name starts or ends with white space")
    for char in name:
        if unicodedata.category(char) in _REFUSED_NAME_CATEGORIES:
            raise ValueError(f"the name contains the control character U+{ord(char):04X}")
    return name


def _public_key(raw32: bytes) -> Ed25519PublicKey:
    if not isinstance(raw32, bytes) or len(raw32) != _KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {_KEY_BYTES} bytes")
    return Ed25519PublicKey.from_public_bytes(raw32)


def verify_signature(public_raw32: bytes, signature: bytes, data: bytes) -> None:
    """Check that *signature* is the Ed25519 signature of *data* by the key *public_raw32*.

    :raises BadSignature: if it is not, including when the key or signature is malformed
        (both usually come from untrusted input).
    """
    try:
        key = _public_key(public_raw32)
    except ValueError as e:
        raise BadSignature(str(e)) from None
    if not isinstance(signature, bytes) or len(signature) != _SIGNATURE_BYTES:
        raise BadSignature(f"an Ed25519 signature is {_SIGNATURE_BYTES} bytes")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise BadSignature() from None


class IdentityKey:
    """An Ed25519 private key and what derives from it: uid, signatures, TLS certificate.

    ``repr()`` shows only the uid.  Two instances are equal when they hold the same private key.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        """Wrap *private_key*; use :meth:`generate` or :meth:`from_private_bytes` instead."""
        self._private_key = private_key
        self._public_key = private_key.public_key()
        self._public_bytes = self._public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._uid = uid_for_public_key(self._public_key)
        self._certificate: x509.Certificate | None = None

    @classmethod
    def generate(cls) -> IdentityKey:
        """Return a new random identity (from the operating system's CSPRNG)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw32: bytes) -> IdentityKey:
        """Return the identity whose raw 32-byte Ed25519 private key (seed) is *raw32*.

        :raises ValueError: if *raw32* is not 32 bytes.
        """
        if not isinstance(raw32, bytes | bytearray) or len(raw32) != _KEY_BYTES:
            raise ValueError(f"an Ed25519 private key is {_KEY_BYTES} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(raw32)))

    def private_bytes(self) -> bytes:
        """Return the raw 32-byte private key.  Keep it out of logs and unencrypted files."""
        return self._private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The :mod:`cryptography` private key object (for the TLS layer)."""
        return self._private_key

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The :mod:`cryptography` public key object."""
        return self._public_key

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._public_bytes

    @property
    def uid(self) -> str:
        """This identity's uid (see :func:`uid_for_public_key`)."""
        return self._uid

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of *data* (deterministic, RFC 8032)."""
        return self._private_key.sign(data)

    def certificate(self, now: datetime | None = None) -> x509.Certificate:
        """Return a self-signed certificate for this key, valid at *now* (default: the clock).

        Subject and issuer CN are the uid, the only SAN is ``DNS:<uid>.jarvis``, validity runs
        from a day before *now* (tolerating skewed peer clocks) to twenty years after it, and
        basic constraints say it is not a CA.  Peers pin the key, not the certificate, so a
        reissued certificate for the same key is just as good.  The certificate is cached and
        returned again while *now* lies inside its validity.
        """
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        cached = self._certificate
        if cached is not None and cached.not_valid_before_utc <= now <= cached.not_valid_after_utc:
            return cached
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self._uid)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CERT_BACKDATE)
            .not_valid_after(now + _CERT_LIFETIME)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(f"{self._uid}.{UID_DOMAIN}")]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._private_key, algorithm=None)
        )
        self._certificate = cert
        return cert

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdentityKey):
            return NotImplemented
        return hmac.compare_digest(self.private_bytes(), other.private_bytes())

    def __hash__(self) -> int:
        return hash(self._public_bytes)

    def __repr__(self) -> str:
        return f"IdentityKey(uid={self._uid!r})"
