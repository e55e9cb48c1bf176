"""Tests for jarvis.crypto.mailseal: sealing of mailbox deposits to a signed, rotating prekey."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.trial import unittest

from jarvis.crypto import mailseal
from jarvis.crypto.identity import IdentityKey
from jarvis.crypto.mailseal import (
    DELETE_AFTER,
    ROTATE_AFTER,
    SENDER_GRACE,
    Prekey,
    PrekeyError,
    PrekeyRing,
    SealError,
    open_sealed,
    seal,
)

NOW = 1_800_000_000
MID = bytes(range(16))


def _key(seed: int) -> IdentityKey:
    return IdentityKey.from_private_bytes(bytes([seed]) * 32)


class SealTests(unittest.TestCase):
    def setUp(self) -> None:
        self.alice = _key(1)
        self.bob = _key(2)
        self.ring = PrekeyRing()
        self.ring.rotate(self.bob, NOW)
        prekey = self.ring.current
        assert prekey is not None
        self.prekey = prekey

    def _seal(self, plaintext: bytes = b"canary text", now: float = NOW) -> bytes:
        return seal(
            self.alice, self.bob.uid, self.bob.public_bytes, self.prekey.signed, MID, plaintext, now
        )

    def _open(self, envelope: bytes, sender: IdentityKey | None = None) -> tuple[bytes, bytes]:
        sender = sender or self.alice
        return open_sealed(self.bob.uid, self.ring, sender.uid, sender.public_bytes, envelope)

    def test_open_from_any_candidate(self) -> None:
        """When an envelope comes from a queue that does not name its sender (a link code's
        introduction queue), then it opens against the candidate that sealed it, found among
        others, and names it; from no candidate (a stranger holding the code), it is refused."""
        others = [(k.uid, k.public_bytes) for k in (_key(5), _key(6), _key(7))]
        envelope = self._seal()
        candidates = [*others, (self.alice.uid, self.alice.public_bytes), others[0]]
        found = mailseal.open_sealed_any(self.bob.uid, self.ring, candidates, envelope)
        self.assertEqual(found, (self.alice.uid, MID, b"canary text"))
        self.assertRaises(
            SealError, mailseal.open_sealed_any, self.bob.uid, self.ring, others, envelope
        )
        # a stranger signs with its own key but claims to be Alice: refused too
        stranger = _key(9)
        forged = seal(
            stranger, self.bob.uid, self.bob.public_bytes, self.prekey.signed, MID, b"x", NOW
        )
        self.assertRaises(
            SealError, mailseal.open_sealed_any, self.bob.uid, self.ring, candidates, forged
        )

    def test_round_trip(self) -> None:
        """When Alice seals to Bob's prekey, then Bob opens it with the id and text, and the
        envelope holds neither the text nor either uid."""
        envelope = self._seal()
        self.assertEqual(self._open(envelope), (MID, b"canary text"))
        self.assertNotIn(b"canary", envelope)
        self.assertNotIn(self.alice.uid.encode(), envelope)
        self.assertNotIn(self.bob.uid.encode(), envelope)
        self.assertEqual(len(envelope), mailseal.OVERHEAD + len(b"canary text"))

    def test_vector(self) -> None:
        """When the ephemeral key and prekey are fixed, then the envelope is byte-exact
        (a change of the construction changes this digest)."""
        prekey = Prekey.from_bytes(
            bytes([7]) * 32
            + NOW.to_bytes(8, "big")
            + mailseal.SignedPrekey(
                bytes(8),
                X25519PrivateKey.from_private_bytes(bytes([7]) * 32)
                .public_key()
                .public_bytes_raw(),
                NOW + ROTATE_AFTER + SENDER_GRACE,
                bytes(64),
            ).to_bytes()
        )
        signed = mailseal.SignedPrekey(
            prekey.signed.prekey_id,
            prekey.signed.public,
            prekey.signed.expires,
            self.bob.sign(prekey.signed.signed_data()),
        )
        envelope = seal(
            self.alice,
            self.bob.uid,
            self.bob.public_bytes,
            signed,
            MID,
            b"vector",
            NOW,
            ephemeral=X25519PrivateKey.from_private_bytes(bytes([9]) * 32),
        )
        ring = PrekeyRing([Prekey(prekey.private, prekey.created, signed)])
        self.assertEqual(
            open_sealed(self.bob.uid, ring, self.alice.uid, self.alice.public_bytes, envelope),
            (MID, b"vector"),
        )
        self.assertEqual(
            hashlib.sha256(envelope).hexdigest(),
            "a11da70e70a828d2db84a27a627f6029a925a615caa875aa5441f8c9532ac3db",
        )

    def test_tamper(self) -> None:
        """When any byte of the envelope is flipped, then it does not open (SealError)."""
        envelope = bytearray(self._seal())
        for index in (0, 1, 9, 41, 57, len(envelope) - 1):
            altered = bytearray(envelope)
            altered[index] ^= 1
            with self.assertRaises(SealError):
                self._open(bytes(altered))
        self.assertEqual(self._open(bytes(envelope))[1], b"canary text")

    def test_wrong_sender(self) -> None:
        """When Mallory seals as herself but the envelope is read as Alice's (her queue), then
        it does not open."""
        mallory = _key(3)
        envelope = seal(
            mallory, self.bob.uid, self.bob.public_bytes, self.prekey.signed, MID, b"x", NOW
        )
        with self.assertRaises(SealError):
            self._open(envelope)
        self.assertEqual(self._open(envelope, mallory)[1], b"x")

    def test_wrong_prekey(self) -> None:
        """When the envelope names a prekey Bob does not have, then it does not open."""
        other = PrekeyRing()
        other.rotate(self.bob, NOW)
        with self.assertRaises(SealError):
            open_sealed(self.bob.uid, other, self.alice.uid, self.alice.public_bytes, self._seal())

    def test_prekey_signed_by_someone_else_refused(self) -> None:
        """When the prekey is signed by another key than the recipient's, then nothing is
        sealed."""
        forged = Prekey.generate(_key(3), NOW).signed
        with self.assertRaises(PrekeyError):
            seal(self.alice, self.bob.uid, self.bob.public_bytes, forged, MID, b"x", NOW)

    def test_expired_prekey_refused(self) -> None:
        """When the prekey has expired, then the sender refuses to seal to it."""
        late = NOW + ROTATE_AFTER + SENDER_GRACE + 1
        with self.assertRaises(PrekeyError):
            self._seal(now=late)

    def test_deleted_prekey_cannot_open(self) -> None:
        """When the prekey's deletion time has passed and the ring rotated, then an envelope
        sealed to it cannot be opened any more (forward secrecy), while a new prekey exists."""
        envelope = self._seal()
        self.ring.rotate(self.bob, NOW + ROTATE_AFTER)
        self.assertEqual(len(self.ring.prekeys), 2)
        self.assertEqual(self._open(envelope)[1], b"canary text")
        self.ring.rotate(self.bob, NOW + DELETE_AFTER)
        self.assertIsNone(self.ring.find(self.prekey.signed.prekey_id))
        with self.assertRaises(SealError):
            self._open(envelope)

    def test_ring_round_trip(self) -> None:
        """When a ring is encoded and decoded, then it opens the same envelopes."""
        ring = PrekeyRing.from_bytes(self.ring.to_bytes())
        self.assertEqual(
            open_sealed(self.bob.uid, ring, self.alice.uid, self.alice.public_bytes, self._seal()),
            (MID, b"canary text"),
        )
