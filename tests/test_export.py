"""Tests for :mod:`jarvis.crypto.export`."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.errors import CorruptExport, WeakPassword, WrongPassword
from jarvis.crypto.export import MAGIC, open_export, seal_export
from jarvis.crypto.keyfile import DEFAULT_PARAMS, KdfParams

FAST = KdfParams(time_cost=1, memory_cost_kib=8, parallelism=1)
PAYLOAD = b"contacts and history: the quick brown fox"
HEADER_BYTES = 63


def make_export(payload: bytes = PAYLOAD, password: str = "pw") -> bytes:
    """Return an export of *payload* sealed with cheap parameters."""
    return seal_export(payload, password, params=FAST)


def altered(blob: bytes, index: int, value: int | None = None) -> bytes:
    """Return *blob* with the byte at *index* flipped (or set to *value*)."""
    data = bytearray(blob)
    data[index] = data[index] ^ 0x01 if value is None else value
    return bytes(data)


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=30, deadline=None)
    @given(st.binary(max_size=4096), st.text(min_size=1, max_size=20))
    def test_round_trip(self, payload: bytes, password: str) -> None:
        """When an export is opened with its password, then the payload comes back."""
        self.assertEqual(open_export(make_export(payload, password), password), payload)

    def test_default_params(self) -> None:
        """When no parameters are given, then the defaults are written and used."""
        blob = seal_export(PAYLOAD, "pw")
        self.assertEqual(
            struct.unpack(">IIB", blob[10:19]),
            (DEFAULT_PARAMS.time_cost, DEFAULT_PARAMS.memory_cost_kib, DEFAULT_PARAMS.parallelism),
        )
        self.assertEqual(open_export(blob, "pw"), PAYLOAD)

    def test_layout(self) -> None:
        """When an export is made, then it has the documented header and overhead."""
        blob = make_export()
        self.assertEqual(blob[:8], MAGIC)
        self.assertEqual(blob[:8], b"JARVISEX")
        self.assertEqual(blob[8:10], b"\x01\x01")
        self.assertEqual(struct.unpack(">IIB", blob[10:19]), (1, 8, 1))
        self.assertEqual(len(blob), HEADER_BYTES + len(PAYLOAD) + 16)

    def test_never_plaintext(self) -> None:
        """When an export is made, then the payload does not appear in it."""
        self.assertNotIn(b"quick brown", make_export())

    def test_fresh_salt_and_nonce(self) -> None:
        """When the same payload is sealed twice, then salt, nonce and content differ."""
        first, second = make_export(), make_export()
        self.assertNotEqual(first[19:35], second[19:35])
        self.assertNotEqual(first[51:63], second[51:63])


class PasswordTests(SynchronousTestCase):
    def test_wrong_password(self) -> None:
        """When another password is given, then WrongPassword is raised."""
        self.assertRaises(WrongPassword, open_export, make_export(password="a"), "b")

    def test_empty_password(self) -> None:
        """When the password is empty, then WeakPassword is raised both ways."""
        self.assertRaises(WeakPassword, seal_export, PAYLOAD, "", params=FAST)
        self.assertRaises(WeakPassword, open_export, make_export(), "")

    def test_params_changed(self) -> None:
        """When the stored time cost is changed, then the password no longer opens it."""
        blob = make_export()
        self.assertRaises(WrongPassword, open_export, altered(blob, 13, 2), "pw")


class CorruptTests(SynchronousTestCase):
    def assert_corrupt(self, blob: bytes) -> CorruptExport:
        """Assert that opening *blob* with the right password reports a corrupt export."""
        exc = self.assertRaises(CorruptExport, open_export, blob, "pw")
        self.assertNotIn("\n", str(exc))
        return exc

    def test_not_an_export(self) -> None:
        """When the blob does not start with the magic, then CorruptExport is raised."""
        exc = self.assert_corrupt(b"PK\x03\x04" + bytes(100))
        self.assertIn("header", str(exc))
        self.assert_corrupt(altered(make_export(), 0))

    def test_truncated_everywhere(self) -> None:
        """When an export is cut at any length, then CorruptExport is raised."""
        blob = make_export()
        for length in range(len(blob)):
            self.assert_corrupt(blob[:length])

    def test_other_version(self) -> None:
        """When the version is not 1, then CorruptExport names it."""
        exc = self.assert_corrupt(altered(make_export(), 8, 2))
        self.assertIn("version 2", str(exc))
        self.assert_corrupt(altered(make_export(), 9, 7))

    def test_hostile_params(self) -> None:
        """When the parameters are out of range, then CorruptExport is raised before Argon2id."""
        blob = make_export()
        huge = blob[:14] + struct.pack(">I", 2**32 - 1) + blob[18:]
        self.assert_corrupt(huge)
        self.assert_corrupt(altered(blob, 13, 0))

    def test_every_byte_after_check(self) -> None:
        """When any byte from the nonce on is changed, then the right password reports damage."""
        blob = make_export()
        for index in range(51, len(blob)):
            exc = self.assert_corrupt(altered(blob, index))
            self.assertIn("altered", str(exc))
