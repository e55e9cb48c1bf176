"""Tests for :mod:`jarvis.crypto.keyfile`.

Most tests use the cheapest Argon2id parameters (:data:`FAST`) so the suite stays quick; the
tests that exercise the defaults say so.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.encoding import b64url_encode
from jarvis.crypto.errors import CorruptKeyFile, WeakPassword, WrongPassword
from jarvis.crypto.identity import IdentityKey
from jarvis.crypto.keyfile import (
    DEFAULT_PARAMS,
    KdfParams,
    UnlockedKeys,
    change_password,
    create_keyfile,
    read_params,
    read_public,
    unlock_keyfile,
)

FAST = KdfParams(time_cost=1, memory_cost_kib=8, parallelism=1)
NAME = "Zanzibar Quokka"


def make_keyfile(password: str = "correct horse", **kwargs: Any) -> tuple[bytes, UnlockedKeys]:
    """Return a key file sealed with cheap parameters and its unlocked keys."""
    kwargs.setdefault("params", FAST)
    return create_keyfile(NAME, password, **kwargs)


def edit(content: bytes, change: Any) -> bytes:
    """Return *content* with its JSON object passed through *change* (which edits it in place)."""
    document = json.loads(content)
    change(document)
    return json.dumps(document).encode()


class ParamsTests(SynchronousTestCase):
    def test_defaults_strong_enough(self) -> None:
        """When the defaults are read, then they are at least t=3, m=64 MiB, p=1."""
        self.assertEqual(DEFAULT_PARAMS, KdfParams())
        self.assertGreaterEqual(DEFAULT_PARAMS.time_cost, 3)
        self.assertGreaterEqual(DEFAULT_PARAMS.memory_cost_kib, 64 * 1024)
        self.assertGreaterEqual(DEFAULT_PARAMS.parallelism, 1)

    def test_too_weak_refused(self) -> None:
        """When parameters are below Argon2's minimums, then ValueError is raised."""
        cases: list[dict[str, Any]] = [
            {"time_cost": 0},
            {"memory_cost_kib": 7},
            {"parallelism": 0},
            {"memory_cost_kib": 8, "parallelism": 2},
        ]
        for kwargs in cases:
            self.assertRaises(ValueError, KdfParams, **kwargs)

    def test_too_costly_or_wrong_type_refused(self) -> None:
        """When parameters are absurdly large or not integers, then ValueError is raised."""
        cases: list[dict[str, Any]] = [
            {"time_cost": 10_000},
            {"memory_cost_kib": 2**40},
            {"parallelism": 1000},
            {"time_cost": 3.0},
            {"time_cost": True},
        ]
        for kwargs in cases:
            self.assertRaises(ValueError, KdfParams, **kwargs)

    def test_at_least(self) -> None:
        """When parameters are raised to a floor, then each one is the larger of the two."""
        self.assertEqual(
            KdfParams(5, 1024, 1).at_least(KdfParams(3, 65536, 2)), KdfParams(5, 65536, 2)
        )


class CreateUnlockTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """When a key file is unlocked with its password, then the same keys come back."""
        content, keys = make_keyfile()
        unlocked = unlock_keyfile(content, "correct horse")
        self.assertEqual(unlocked, keys)
        self.assertEqual(unlocked.identity.uid, keys.uid)
        self.assertEqual(unlocked.data_key, keys.data_key)
        self.assertEqual(unlocked.name, NAME)

    def test_defaults_round_trip(self) -> None:
        """When a key file is made with the default parameters, then they are stored and used."""
        content, keys = create_keyfile(NAME, "pw")
        self.assertEqual(read_params(content), DEFAULT_PARAMS)
        self.assertEqual(unlock_keyfile(content, "pw"), keys)

    def test_given_keys_kept(self) -> None:
        """When an identity and a data key are given, then the file holds exactly those."""
        identity, data_key = IdentityKey.generate(), bytes(range(32))
        content, _ = make_keyfile(identity=identity, data_key=data_key)
        unlocked = unlock_keyfile(content, "correct horse")
        self.assertEqual(unlocked.identity, identity)
        self.assertEqual(unlocked.data_key, data_key)

    def test_json_and_cleartext(self) -> None:
        """When a file is made, then it is UTF-8 JSON with only the uid and public key readable."""
        content, keys = make_keyfile()
        document = json.loads(content.decode("utf-8"))
        self.assertEqual(document["jarvis_keyfile"], 1)
        self.assertEqual(document["uid"], keys.uid)
        self.assertEqual(document["public_key"], b64url_encode(keys.identity.public_bytes))
        self.assertEqual(
            document["kdf"],
            {
                **document["kdf"],
                "algorithm": "argon2id",
                "time_cost": 1,
                "memory_cost_kib": 8,
                "parallelism": 1,
            },
        )
        self.assertNotIn(b"Zanzibar", content)
        for secret in (keys.data_key, keys.identity.private_bytes()):
            self.assertNotIn(b64url_encode(secret).encode(), content)
            self.assertNotIn(secret.hex().encode(), content)

    def test_unicode_name(self) -> None:
        """When the name is not ASCII, then it comes back unchanged."""
        content, _ = create_keyfile("Zoë 李 🐢", "pw", params=FAST)
        self.assertEqual(unlock_keyfile(content, "pw").name, "Zoë 李 🐢")

    def test_password_normalized(self) -> None:
        """When the same password is typed composed or decomposed, then it opens the file."""
        composed = unicodedata.normalize("NFC", "café")
        decomposed = unicodedata.normalize("NFD", "café")
        self.assertNotEqual(composed, decomposed)
        content, keys = make_keyfile(composed)
        self.assertEqual(unlock_keyfile(content, decomposed), keys)

    def test_salt_fresh(self) -> None:
        """When the same keys are sealed twice, then the salts and contents differ."""
        identity, data_key = IdentityKey.generate(), bytes(32)
        first, _ = make_keyfile(identity=identity, data_key=data_key)
        second, _ = make_keyfile(identity=identity, data_key=data_key)
        self.assertNotEqual(json.loads(first)["kdf"]["salt"], json.loads(second)["kdf"]["salt"])

    def test_repr_hides_data_key(self) -> None:
        """When unlocked keys are printed, then the data key and private key do not show."""
        _, keys = make_keyfile()
        text = repr(keys)
        self.assertNotIn(repr(keys.data_key), text)
        self.assertNotIn("data_key", text)
        self.assertNotIn(keys.identity.private_bytes().hex(), text)

    def test_bad_arguments(self) -> None:
        """When the name or data key is invalid, then ValueError is raised."""
        self.assertRaises(ValueError, create_keyfile, "", "pw", params=FAST)
        self.assertRaises(ValueError, create_keyfile, "a\nb", "pw", params=FAST)
        self.assertRaises(ValueError, create_keyfile, NAME, "pw", params=FAST, data_key=bytes(16))


class PasswordTests(SynchronousTestCase):
    def test_wrong_password(self) -> None:
        """When another password is given, then WrongPassword is raised in one line."""
        content, _ = make_keyfile()
        exc = self.assertRaises(WrongPassword, unlock_keyfile, content, "Correct horse")
        self.assertEqual(str(exc), "wrong password")

    def test_empty_password_refused(self) -> None:
        """When the password is empty, then WeakPassword is raised."""
        self.assertRaises(WeakPassword, create_keyfile, NAME, "", params=FAST)
        content, _ = make_keyfile()
        self.assertRaises(WeakPassword, unlock_keyfile, content, "")

    def test_change_password(self) -> None:
        """When the password is changed, then the new one opens the same keys, the old does not."""
        content, keys = make_keyfile("old")
        changed = change_password(content, "old", "new", params=FAST)
        self.assertEqual(unlock_keyfile(changed, "new"), keys)
        self.assertRaises(WrongPassword, unlock_keyfile, changed, "old")
        self.assertEqual(read_public(changed), read_public(content))

    def test_change_password_wrong_old(self) -> None:
        """When the old password is wrong, then WrongPassword is raised."""
        content, _ = make_keyfile("old")
        self.assertRaises(WrongPassword, change_password, content, "olD", "new", params=FAST)

    def test_change_password_empty_new(self) -> None:
        """When the new password is empty, then WeakPassword is raised."""
        content, _ = make_keyfile("old")
        self.assertRaises(WeakPassword, change_password, content, "old", "", params=FAST)

    def test_change_password_raises_params(self) -> None:
        """When no parameters are given, then the new file's are at least the defaults."""
        content, keys = make_keyfile("old", params=KdfParams(4, 8, 1))
        changed = change_password(content, "old", "new")
        self.assertEqual(read_params(changed), KdfParams(4, DEFAULT_PARAMS.memory_cost_kib, 1))
        self.assertEqual(unlock_keyfile(changed, "new"), keys)

    def test_change_password_explicit_params(self) -> None:
        """When parameters are given, then the new file uses them."""
        content, _ = make_keyfile("old")
        changed = change_password(content, "old", "new", params=KdfParams(2, 16, 1))
        self.assertEqual(read_params(changed), KdfParams(2, 16, 1))


class ReadPublicTests(SynchronousTestCase):
    def test_read_public(self) -> None:
        """When a file is read without the password, then its uid and public key come out."""
        content, keys = make_keyfile()
        self.assertEqual(read_public(content), (keys.uid, keys.identity.public_bytes))


class CorruptTests(SynchronousTestCase):
    def assert_corrupt(self, content: bytes, *, sealed_only: bool = False) -> CorruptKeyFile:
        """Assert that unlocking (and, unless *sealed_only*, reading) *content* is refused."""
        exc = self.assertRaises(CorruptKeyFile, unlock_keyfile, content, "correct horse")
        self.assertNotIn("\n", str(exc))
        if not sealed_only:
            self.assertRaises(CorruptKeyFile, read_public, content)
        return exc

    def test_not_json(self) -> None:
        """When the content is not a JSON object, then CorruptKeyFile is raised."""
        for content in [b"", b"\xff\xfe", b"{", b"[]", b'"x"', b"null", b"{}" * 40_000]:
            self.assert_corrupt(content)

    def test_duplicate_key(self) -> None:
        """When a field appears twice, then CorruptKeyFile is raised."""
        content, _ = make_keyfile()
        text = content.decode().replace('"cipher"', '"uid": "x", "cipher"')
        self.assert_corrupt(text.encode())

    def test_other_version(self) -> None:
        """When the format version is not 1, then CorruptKeyFile names the version."""
        content, _ = make_keyfile()
        for version in (2, 0, "1", True):
            exc = self.assert_corrupt(
                edit(content, lambda d, v=version: d.__setitem__("jarvis_keyfile", v))
            )
            self.assertNotIn("wrong password", str(exc))

    def test_missing_fields(self) -> None:
        """When any field is missing, then CorruptKeyFile is raised."""
        content, _ = make_keyfile()
        for name in json.loads(content):
            self.assert_corrupt(edit(content, lambda d, n=name: d.pop(n)))
        for name in json.loads(content)["kdf"]:
            self.assert_corrupt(edit(content, lambda d, n=name: d["kdf"].pop(n)))

    def test_uid_mismatch(self) -> None:
        """When the uid does not match the public key, then CorruptKeyFile is raised."""
        content, _ = make_keyfile()
        other = IdentityKey.generate().uid
        exc = self.assert_corrupt(edit(content, lambda d: d.__setitem__("uid", other)))
        self.assertIn("uid", str(exc))

    def test_bad_encodings(self) -> None:
        """When a binary field is not canonical base64url of the right size, it is corrupt."""
        content, _ = make_keyfile()
        for field in ("public_key", "nonce", "check"):
            self.assert_corrupt(edit(content, lambda d, f=field: d.__setitem__(f, d[f][:-2])))
            self.assert_corrupt(edit(content, lambda d, f=field: d.__setitem__(f, d[f] + "=")))
        self.assert_corrupt(edit(content, lambda d: d["kdf"].__setitem__("salt", "A+/=")))

    def test_unsupported_algorithms(self) -> None:
        """When the KDF or cipher is not the one this version writes, then it is corrupt."""
        content, _ = make_keyfile()
        self.assert_corrupt(edit(content, lambda d: d["kdf"].__setitem__("algorithm", "scrypt")))
        self.assert_corrupt(edit(content, lambda d: d.__setitem__("cipher", "rot13")))

    def test_hostile_params(self) -> None:
        """When the stored parameters are out of range, then it is corrupt before any Argon2id."""
        content, _ = make_keyfile()
        for name, value in [("memory_cost_kib", 2**40), ("time_cost", 0), ("parallelism", -1)]:
            self.assert_corrupt(
                edit(content, lambda d, n=name, v=value: d["kdf"].__setitem__(n, v))
            )

    def test_sealed_altered(self) -> None:
        """When the sealed keys were altered, then the right password reports a corrupt file."""
        content, _ = make_keyfile()

        def flip(document: dict[str, Any]) -> None:
            sealed = document["sealed"]
            document["sealed"] = ("B" if sealed[0] == "A" else "A") + sealed[1:]

        exc = self.assert_corrupt(edit(content, flip), sealed_only=True)
        self.assertIn("altered", str(exc))

    def test_identity_swapped(self) -> None:
        """When another identity's uid and key are put in the clear, then it is corrupt."""
        content, _ = make_keyfile()
        other = IdentityKey.generate()

        def swap(document: dict[str, Any]) -> None:
            document["uid"] = other.uid
            document["public_key"] = b64url_encode(other.public_bytes)

        self.assert_corrupt(edit(content, swap), sealed_only=True)

    def test_params_swapped(self) -> None:
        """When the stored parameters are changed, then the file no longer opens."""
        content, _ = make_keyfile()
        changed = edit(content, lambda d: d["kdf"].__setitem__("time_cost", 2))
        self.assertRaises(WrongPassword, unlock_keyfile, changed, "correct horse")
