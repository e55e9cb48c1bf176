"""Tests for :mod:`jarvis.crypto.aead`."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.aead import OVERHEAD, RowCipher, new_data_key
from jarvis.crypto.errors import DecryptionFailed, KeyWiped

FIXED_KEY = bytes(range(32))


def make_cipher(key: bytes = FIXED_KEY) -> RowCipher:
    """Return a cipher under a fixed key."""
    return RowCipher(key)


class SealOpenTests(SynchronousTestCase):
    @given(st.binary(max_size=2048), st.binary(max_size=64))
    def test_round_trip(self, plaintext: bytes, associated_data: bytes) -> None:
        """When a value is sealed and opened with the same data, then it comes back."""
        cipher = make_cipher()
        blob = cipher.seal(plaintext, associated_data)
        self.assertEqual(len(blob), len(plaintext) + OVERHEAD)
        self.assertEqual(cipher.open(blob, associated_data), plaintext)

    def test_layout(self) -> None:
        """When a blob is opened, then it is nonce || AES-256-GCM(ciphertext || tag)."""
        nonce = bytes(12)
        blob = nonce + AESGCM(FIXED_KEY).encrypt(nonce, b"row", b"messages/body/7")
        self.assertEqual(make_cipher().open(blob, b"messages/body/7"), b"row")

    def test_fresh_nonce(self) -> None:
        """When the same value is sealed twice, then the blobs (and nonces) differ."""
        cipher = make_cipher()
        first, second = cipher.seal(b"same", b"ad"), cipher.seal(b"same", b"ad")
        self.assertNotEqual(first[:12], second[:12])
        self.assertNotEqual(first, second)

    def test_no_plaintext(self) -> None:
        """When a value is sealed, then its plaintext does not appear in the blob."""
        plaintext = b"attack at dawn, attack at dawn"
        self.assertNotIn(b"attack", make_cipher().seal(plaintext, b""))

    def test_other_associated_data(self) -> None:
        """When a blob is opened with another row's associated data, then it fails."""
        cipher = make_cipher()
        blob = cipher.seal(b"secret", b"messages/body/1")
        self.assertRaises(DecryptionFailed, cipher.open, blob, b"messages/body/2")

    def test_other_key(self) -> None:
        """When a blob is opened under another key, then it fails."""
        blob = make_cipher().seal(b"secret", b"ad")
        self.assertRaises(DecryptionFailed, RowCipher(new_data_key()).open, blob, b"ad")

    def test_every_bit_flip(self) -> None:
        """When any bit of a blob is flipped, then opening fails."""
        cipher = make_cipher()
        blob = cipher.seal(b"secret", b"ad")
        for index in range(len(blob)):
            for bit in range(8):
                altered = bytearray(blob)
                altered[index] ^= 1 << bit
                self.assertRaises(DecryptionFailed, cipher.open, bytes(altered), b"ad")

    def test_truncated(self) -> None:
        """When a blob is cut at any length, then opening fails with DecryptionFailed."""
        cipher = make_cipher()
        blob = cipher.seal(b"secret", b"ad")
        for length in range(len(blob)):
            self.assertRaises(DecryptionFailed, cipher.open, blob[:length], b"ad")

    def test_error_is_one_line(self) -> None:
        """When opening fails, then the error says so in one line."""
        exc = self.assertRaises(DecryptionFailed, make_cipher().open, b"short", b"")
        self.assertNotIn("\n", str(exc))
        self.assertIn("decryption failed", str(exc))

    def test_key_length(self) -> None:
        """When the key is not 32 bytes, then ValueError is raised."""
        self.assertRaises(ValueError, RowCipher, bytes(16))
        self.assertRaises(ValueError, RowCipher, "k" * 32)


class SubkeyTests(SynchronousTestCase):
    def test_vector(self) -> None:
        """When a subkey is derived from the fixed key, then it is the recorded HKDF vector."""
        self.assertEqual(
            make_cipher().derive_subkey(b"blind-index").hex(),
            "dca84655b2bba92a99049e7615b09e2be1748cfe583bbc7ff7c4cfc6fc89fb3e",
        )

    def test_labels_independent(self) -> None:
        """When two labels are used, then the subkeys differ from each other and the key."""
        cipher = make_cipher()
        first, second = cipher.derive_subkey(b"a"), cipher.derive_subkey(b"b")
        self.assertEqual(len(first), 32)
        self.assertEqual(len({first, second, FIXED_KEY}), 3)
        self.assertEqual(cipher.derive_subkey(b"a"), first)

    def test_empty_label(self) -> None:
        """When the label is empty, then ValueError is raised."""
        self.assertRaises(ValueError, make_cipher().derive_subkey, b"")


class WipeTests(SynchronousTestCase):
    def test_use_after_wipe(self) -> None:
        """When a cipher is wiped, then every later use raises KeyWiped."""
        cipher = make_cipher()
        blob = cipher.seal(b"x", b"")
        cipher.wipe()
        self.assertTrue(cipher.wiped)
        self.assertRaises(KeyWiped, cipher.seal, b"x", b"")
        self.assertRaises(KeyWiped, cipher.open, blob, b"")
        self.assertRaises(KeyWiped, cipher.derive_subkey, b"label")
        cipher.wipe()  # idempotent

    def test_repr_hides_key(self) -> None:
        """When a cipher is printed, then its key does not show."""
        cipher = make_cipher()
        self.assertNotIn(FIXED_KEY.hex(), repr(cipher))
        self.assertNotIn(repr(FIXED_KEY), repr(cipher))


class DataKeyTests(SynchronousTestCase):
    def test_new_data_key(self) -> None:
        """When data keys are made, then each is 32 random bytes."""
        keys = {new_data_key() for _ in range(10)}
        self.assertEqual(len(keys), 10)
        self.assertEqual({len(key) for key in keys}, {32})
