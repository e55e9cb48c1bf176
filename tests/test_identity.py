"""Tests for :mod:`jarvis.crypto.identity`.

The fixed keys are the first two secret keys of RFC 8032 section 7.1 ("TEST 1" and "TEST 2"),
so the public key and the signature vectors can be checked against the RFC itself.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from service_identity.cryptography import verify_certificate_hostname
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.errors import BadSignature
from jarvis.crypto.identity import (
    MAX_NAME_CHARS,
    IdentityKey,
    check_name,
    fingerprint,
    is_valid_uid,
    safety_code,
    uid_for_certificate,
    uid_for_public_bytes,
    uid_for_public_key,
    verify_signature,
)

RFC8032_SECRET_1 = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC_1 = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE_1 = bytes.fromhex(  # of the empty message
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9"
    "b46bd25bf5f0595bbe24655141438e7a100b"
)
RFC8032_SECRET_2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
UID_1 = "a3r73d62fg5wbk2zkv66mhw3blwnwiyrgs7dbz23ivpy4g3zf6uq"
UID_2 = "32zn5u45yjx44dtaqw3pynf7nnmudej3x7rouykbcph7tyaeyfya"
# The SubjectPublicKeyInfo DER of an Ed25519 key is this fixed prefix and the raw key (RFC 8410).
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

uids = st.binary(min_size=32, max_size=32).map(
    lambda digest: base64.b32encode(digest).decode().rstrip("=").lower()
)


def make_identity(secret: bytes = RFC8032_SECRET_1) -> IdentityKey:
    """Return the identity of a fixed RFC 8032 secret key."""
    return IdentityKey.from_private_bytes(secret)


class UidTests(SynchronousTestCase):
    def test_vector(self) -> None:
        """When the uid of RFC 8032's first key is computed, then it is the recorded vector."""
        self.assertEqual(make_identity().uid, UID_1)
        self.assertEqual(make_identity(RFC8032_SECRET_2).uid, UID_2)

    def test_definition(self) -> None:
        """When a uid is computed, then it is lowercase unpadded base32 of SHA-256(SPKI DER)."""
        digest = hashlib.sha256(ED25519_SPKI_PREFIX + RFC8032_PUBLIC_1).digest()
        expected = base64.b32encode(digest).decode().rstrip("=").lower()
        self.assertEqual(uid_for_public_bytes(RFC8032_PUBLIC_1), expected)
        self.assertEqual(uid_for_public_key(make_identity().public_key), expected)

    def test_dns_label(self) -> None:
        """When uids are generated, then each is 52 characters and a valid DNS label."""
        for _ in range(20):
            uid = IdentityKey.generate().uid
            self.assertEqual(len(uid), 52)
            self.assertTrue(DNS_LABEL.fullmatch(uid), uid)
            self.assertTrue(is_valid_uid(uid))

    def test_public_bytes_length(self) -> None:
        """When a public key is not 32 bytes, then uid_for_public_bytes raises ValueError."""
        self.assertRaises(ValueError, uid_for_public_bytes, b"\x00" * 31)

    def test_invalid_uids(self) -> None:
        """When text is not a canonical uid, then is_valid_uid says so."""
        for text in [
            "",
            UID_1[:-1],
            UID_1 + "a",
            UID_1.upper(),
            UID_1[:-1] + "r",  # non-zero padding bits: another spelling of a uid
            "0" + UID_1[1:],
            UID_1[:10] + "=" + UID_1[11:],
            None,
            42,
            UID_1.encode(),
        ]:
            self.assertFalse(is_valid_uid(text), text)

    @given(uids)
    def test_canonical_uids_valid(self, uid: str) -> None:
        """When any 32-byte digest is written as a uid, then is_valid_uid accepts it."""
        self.assertTrue(is_valid_uid(uid))


class IdentityKeyTests(SynchronousTestCase):
    def test_rfc8032_public_key(self) -> None:
        """When RFC 8032's secret is loaded, then its public key is the RFC's."""
        self.assertEqual(make_identity().public_bytes, RFC8032_PUBLIC_1)

    def test_rfc8032_signature(self) -> None:
        """When the empty message is signed, then the signature is RFC 8032's."""
        self.assertEqual(make_identity().sign(b""), RFC8032_SIGNATURE_1)

    def test_private_bytes_round_trip(self) -> None:
        """When a key's private bytes are loaded again, then the identity is the same."""
        identity = IdentityKey.generate()
        again = IdentityKey.from_private_bytes(identity.private_bytes())
        self.assertEqual(again, identity)
        self.assertEqual(again.uid, identity.uid)
        self.assertEqual(hash(again), hash(identity))
        self.assertNotEqual(IdentityKey.generate(), identity)

    def test_private_bytes_length(self) -> None:
        """When private bytes are not 32 bytes, then from_private_bytes raises ValueError."""
        self.assertRaises(ValueError, IdentityKey.from_private_bytes, b"\x01" * 33)
        self.assertRaises(ValueError, IdentityKey.from_private_bytes, "x" * 32)

    def test_repr_hides_private_key(self) -> None:
        """When an identity is printed, then only its uid shows."""
        text = repr(make_identity())
        self.assertIn(UID_1, text)
        self.assertNotIn(RFC8032_SECRET_1.hex(), text)

    def test_private_key_object(self) -> None:
        """When the TLS layer asks for the key object, then it is the same key."""
        identity = make_identity()
        self.assertEqual(identity.private_key.public_key(), identity.public_key)


class SignatureTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """When a signature is checked against its data and key, then nothing is raised."""
        identity = make_identity()
        verify_signature(identity.public_bytes, identity.sign(b"data"), b"data")

    def test_altered_data(self) -> None:
        """When the data was altered, then BadSignature is raised."""
        identity = make_identity()
        signature = identity.sign(b"data")
        self.assertRaises(BadSignature, verify_signature, identity.public_bytes, signature, b"date")

    def test_other_key(self) -> None:
        """When another key signed the data, then BadSignature is raised."""
        signature = make_identity(RFC8032_SECRET_2).sign(b"data")
        self.assertRaises(BadSignature, verify_signature, RFC8032_PUBLIC_1, signature, b"data")

    def test_malformed_inputs(self) -> None:
        """When the key or the signature has the wrong length, then BadSignature is raised."""
        signature = make_identity().sign(b"data")
        self.assertRaises(BadSignature, verify_signature, RFC8032_PUBLIC_1[:31], signature, b"data")
        self.assertRaises(BadSignature, verify_signature, RFC8032_PUBLIC_1, signature[:63], b"data")
        self.assertRaises(BadSignature, verify_signature, RFC8032_PUBLIC_1, b"", b"data")


class CertificateTests(SynchronousTestCase):
    now = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)

    def test_fields(self) -> None:
        """When a certificate is made, then its CN, SAN, issuer and validity are as documented."""
        identity = make_identity()
        cert = identity.certificate(self.now)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.assertEqual(cn, UID_1)
        self.assertEqual(cert.issuer, cert.subject)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), [f"{UID_1}.jarvis"])
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertFalse(constraints.value.ca)
        self.assertEqual(cert.not_valid_before_utc, self.now - timedelta(days=1))
        self.assertGreaterEqual(cert.not_valid_after_utc, self.now.replace(year=self.now.year + 20))

    def test_self_signed(self) -> None:
        """When a certificate is made, then it is signed by the identity key itself."""
        identity = make_identity()
        cert = identity.certificate(self.now)
        self.assertEqual(cert.public_key(), identity.public_key)
        identity.public_key.verify(cert.signature, cert.tbs_certificate_bytes)
        self.assertEqual(uid_for_certificate(cert), identity.uid)

    def test_hostname(self) -> None:
        """When service-identity checks the certificate for <uid>.jarvis, then it matches."""
        cert = make_identity().certificate(self.now)
        verify_certificate_hostname(cert, f"{UID_1}.jarvis")

    def test_cached(self) -> None:
        """When a certificate is asked for twice, then the same one is returned."""
        identity = IdentityKey.generate()
        first = identity.certificate()
        self.assertIs(identity.certificate(), first)
        self.assertIs(identity.certificate(datetime.now(UTC) + timedelta(days=100)), first)

    def test_reissued_when_out_of_validity(self) -> None:
        """When *now* lies outside the cached certificate's validity, then a new one is made."""
        identity = make_identity()
        first = identity.certificate(self.now)
        later = identity.certificate(self.now + timedelta(days=365 * 25))
        self.assertIsNot(later, first)
        self.assertEqual(later.public_key(), first.public_key())

    def test_naive_time_refused(self) -> None:
        """When *now* has no time zone, then ValueError is raised."""
        self.assertRaises(ValueError, make_identity().certificate, datetime(2030, 1, 1))


class FingerprintTests(SynchronousTestCase):
    def test_vector(self) -> None:
        """When the fingerprint of the first RFC key is made, then it is 13 groups of 4."""
        self.assertEqual(
            fingerprint(UID_1),
            "a3r7 3d62 fg5w bk2z kv66 mhw3 blwn wiyr gs7d bz23 ivpy 4g3z f6uq",
        )

    @given(uids)
    def test_is_the_uid(self, uid: str) -> None:
        """When the spaces are removed from a fingerprint, then the uid remains."""
        groups = fingerprint(uid).split(" ")
        self.assertEqual([len(group) for group in groups], [4] * 13)
        self.assertEqual("".join(groups), uid)

    def test_invalid_uid(self) -> None:
        """When the argument is not a uid, then ValueError is raised."""
        self.assertRaises(ValueError, fingerprint, "not a uid")


class SafetyCodeTests(SynchronousTestCase):
    def test_vector(self) -> None:
        """When the code of the two RFC keys is made, then it is the recorded vector."""
        self.assertEqual(
            safety_code(UID_1, UID_2),
            "44181 92200 75770 18472 41640 11317 59776 18936 38218 21458 46261 23843",
        )

    @given(uids, uids)
    def test_symmetric(self, uid_a: str, uid_b: str) -> None:
        """When both sides compute the code, then they get the same 12 groups of 5 digits."""
        code = safety_code(uid_a, uid_b)
        self.assertEqual(code, safety_code(uid_b, uid_a))
        self.assertRegex(code, r"\A\d{5}( \d{5}){11}\Z")

    @settings(max_examples=50)
    @given(uids, uids, uids)
    def test_differs_per_pair(self, uid_a: str, uid_b: str, uid_c: str) -> None:
        """When one side of the pair changes, then the code changes."""
        if uid_b != uid_c:
            self.assertNotEqual(safety_code(uid_a, uid_b), safety_code(uid_a, uid_c))

    def test_each_half_belongs_to_one_uid(self) -> None:
        """When two pairs share a uid, then their codes share that uid's 30 digits."""
        uid_3 = IdentityKey.generate().uid
        halves_12 = set(_halves(safety_code(UID_1, UID_2)))
        halves_13 = set(_halves(safety_code(UID_1, uid_3)))
        self.assertEqual(len(halves_12 & halves_13), 1)

    def test_invalid_uid(self) -> None:
        """When an argument is not a uid, then ValueError is raised."""
        self.assertRaises(ValueError, safety_code, UID_1, "bob")
        self.assertRaises(ValueError, safety_code, UID_1.upper(), UID_2)


def _halves(code: str) -> tuple[str, str]:
    digits = code.replace(" ", "")
    return digits[:30], digits[30:]


class NameTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        """When a name is ordinary text of 1 to 64 characters, then it is accepted unchanged."""
        for name in ["Alice", "Zoë Ångström", "李小龍", "bob 🐢", "x" * MAX_NAME_CHARS, "a b"]:
            self.assertEqual(check_name(name), name)

    def test_refused(self) -> None:
        """When a name is empty, too long, padded or holds control characters, it is refused."""
        for name in [
            "",
            "x" * (MAX_NAME_CHARS + 1),
            " Alice",
            "Alice\n",
            "Al\x00ice",
            "Al\u202eecila",  # right-to-left override
            "Al\u200bice",  # zero-width space
            "Al\u2028ice",  # line separator
            "Al\ud800ice",  # lone surrogate
            b"Alice",
        ]:
            self.assertRaises(ValueError, check_name, name)
