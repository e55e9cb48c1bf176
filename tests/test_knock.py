"""Tests for jarvis.protocol.knock: keys, tokens, windows, replays (byte-exact and hypothesis)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.protocol import knock

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

ALICE = IdentityKey.from_private_bytes(bytes(range(32)))
BOB = IdentityKey.from_private_bytes(bytes(range(32, 64)))
#: The vectors' time: 2027-01-15T08:00:00Z.
NOW = 1_800_000_000
NONCE = bytes(range(0x80, 0x88))

#: docs/protocol.md, "Knock": the X25519 forms of Alice's and Bob's Ed25519 public keys.
ALICE_X25519_HEX = "4701d08488451f545a409fb58ae3e58581ca40ac3f7f114698cd71deac73ca01"
BOB_X25519_HEX = "5730800ab340fcb18ce5111eda9d705f91388b41e4544cbd103ba5942db2233e"
#: The static-static X25519 shared secret of Alice and Bob.
SHARED_HEX = "f6f92efb32945aff683324a1c984c5001f46aaea513f3453138d740b3a604b7d"
#: Their pair key and their uid key.
PAIR_KEY_HEX = "3d11176e481a05a32bf8b8d59c722fc1e60e75ee640dff14f9e1ce8bce565568"
UID_KEY_HEX = "fbe324de21d3bf02775b3f847dbbb08b0aea63461c5965ae01c995cf9046e70c"
#: Alice's knock to Bob at NOW with NONCE, with the pair key, then with the uid key.
PAIR_KNOCK_HEX = "01c9c380bc40a7be80818283848586875d8d897507f5cf099360ce8c7ca5f324"
UID_KNOCK_HEX = "01c9c380de1affe18081828384858687ddc903a260e931386868834b2f9cf7eb"


def pair_key() -> bytes:
    return knock.pair_key(ALICE.private_bytes(), ALICE.uid, BOB.public_bytes, BOB.uid)


def alice_knock(window: int | None = None, nonce: bytes = NONCE) -> bytes:
    if window is None:
        window = knock.window_of(NOW)
    return knock.make_knock(pair_key(), BOB.uid, window, nonce)


def bob_candidates(*extra: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    """Bob's contacts as a listener sees them: Alice, plus *extra*."""
    bob_key = knock.pair_key(BOB.private_bytes(), BOB.uid, ALICE.public_bytes, ALICE.uid)
    return [*extra, (ALICE.uid, bob_key)]


class VectorTests(SynchronousTestCase):
    """The documented bytes."""

    def test_x25519_forms(self) -> None:
        """When the vector identities' keys are converted, then they give the documented
        X25519 keys, and the converted seed gives the converted public key."""
        self.assertEqual(knock.ed25519_public_to_x25519(ALICE.public_bytes).hex(), ALICE_X25519_HEX)
        self.assertEqual(knock.ed25519_public_to_x25519(BOB.public_bytes).hex(), BOB_X25519_HEX)
        converted = knock.ed25519_seed_to_x25519(ALICE.private_bytes()).public_key()
        self.assertEqual(converted.public_bytes_raw().hex(), ALICE_X25519_HEX)
        shared = knock.ed25519_seed_to_x25519(ALICE.private_bytes()).exchange(
            knock.ed25519_seed_to_x25519(BOB.private_bytes()).public_key()
        )
        self.assertEqual(shared.hex(), SHARED_HEX)

    def test_keys(self) -> None:
        """When Alice and Bob each derive their keys, then both get the documented ones."""
        self.assertEqual(pair_key().hex(), PAIR_KEY_HEX)
        bob_side = knock.pair_key(BOB.private_bytes(), BOB.uid, ALICE.public_bytes, ALICE.uid)
        self.assertEqual(bob_side.hex(), PAIR_KEY_HEX)
        self.assertEqual(knock.uid_key(ALICE.uid, BOB.uid).hex(), UID_KEY_HEX)
        self.assertEqual(knock.uid_key(BOB.uid, ALICE.uid).hex(), UID_KEY_HEX)

    def test_tokens(self) -> None:
        """When Alice knocks on Bob at the vector time, then the tokens are the documented
        32 bytes."""
        self.assertEqual(knock.window_of(NOW), 30_000_000)
        self.assertEqual(alice_knock().hex(), PAIR_KNOCK_HEX)
        uid_knock = knock.make_knock(bytes.fromhex(UID_KEY_HEX), BOB.uid, 30_000_000, NONCE)
        self.assertEqual(uid_knock.hex(), UID_KNOCK_HEX)
        self.assertEqual(len(uid_knock), knock.KNOCK_LENGTH)

    def test_documented(self) -> None:
        """When docs/protocol.md is read, then it shows every knock vector verbatim."""
        text = DOC.read_text(encoding="utf-8")
        blocks = ["".join(b.split()) for b in re.findall(r"```hex\n(.*?)```", text, re.S)]
        for vector in (PAIR_KNOCK_HEX, UID_KNOCK_HEX):
            self.assertIn(vector, blocks)
        for value in (ALICE_X25519_HEX, BOB_X25519_HEX, SHARED_HEX, PAIR_KEY_HEX, UID_KEY_HEX):
            self.assertIn(value, text)

    @settings(max_examples=30, deadline=None)
    @given(seed=st.binary(min_size=32, max_size=32))
    def test_conversion_matches_scalar_multiplication(self, seed: bytes) -> None:
        """When any Ed25519 key is converted, then the public form is the converted private
        key's public key (the map is the birational one)."""
        identity = IdentityKey.from_private_bytes(seed)
        self.assertEqual(
            knock.ed25519_public_to_x25519(identity.public_bytes),
            knock.ed25519_seed_to_x25519(seed).public_key().public_bytes_raw(),
        )

    def test_unusable_public_key(self) -> None:
        """When a public key is the neutral point (y = 1) or not canonical, then it gives no
        key, and KnockKeys says None instead of raising."""
        neutral = (1).to_bytes(32, "little")
        self.assertRaises(knock.KnockKeyError, knock.ed25519_public_to_x25519, neutral)
        self.assertRaises(knock.KnockKeyError, knock.ed25519_public_to_x25519, b"\xff" * 32)
        self.assertRaises(knock.KnockKeyError, knock.ed25519_public_to_x25519, b"\x00" * 31)
        keys = knock.KnockKeys(ALICE.private_bytes(), ALICE.uid)
        self.assertIsNone(keys.key(BOB.uid, neutral))
        self.assertEqual(keys.key(BOB.uid, BOB.public_bytes), bytes.fromhex(PAIR_KEY_HEX))
        self.assertEqual(keys.key(BOB.uid, None), bytes.fromhex(UID_KEY_HEX))

    def test_compute_then_add(self) -> None:
        """When keys are computed apart (as on a thread) and then added, then they are the
        keys :meth:`KnockKeys.key` gives, computing leaves the cache alone, and only the
        contacts with a public key and no cached key are missing."""
        keys = knock.KnockKeys(ALICE.private_bytes(), ALICE.uid)
        peers = [(BOB.uid, BOB.public_bytes), ("c" * 52, None)]
        self.assertEqual(keys.missing(peers), [(BOB.uid, BOB.public_bytes)])
        computed = keys.compute(keys.missing(peers))
        self.assertEqual(computed, {(BOB.uid, BOB.public_bytes): bytes.fromhex(PAIR_KEY_HEX)})
        self.assertEqual(keys.missing(peers), [(BOB.uid, BOB.public_bytes)])
        keys.add(computed)
        self.assertEqual(keys.missing(peers), [])
        self.assertEqual(keys.key(BOB.uid, BOB.public_bytes), bytes.fromhex(PAIR_KEY_HEX))


class WindowTests(SynchronousTestCase):
    """A knock is valid in its minute and one either side."""

    def test_accepted_within_one_window(self) -> None:
        """When a knock is checked one window early, on time or one late, then it is
        accepted as Alice's."""
        current = knock.window_of(NOW)
        for offset in (-1, 0, 1):
            verifier = knock.KnockVerifier(BOB.uid)
            token = alice_knock(current + offset)
            self.assertEqual(verifier.verify(token, NOW, bob_candidates), knock.Accepted(ALICE.uid))

    def test_refused_two_windows_off(self) -> None:
        """When a knock is two windows off, then it is refused as stale, naming Alice and the
        skew (so the log can say the clocks differ)."""
        current = knock.window_of(NOW)
        verifier = knock.KnockVerifier(BOB.uid)
        for offset in (-2, 2, -1000):
            verdict = verifier.verify(alice_knock(current + offset), NOW, bob_candidates)
            self.assertEqual(verdict, knock.Refused("stale knock", ALICE.uid, offset))


class ReplayTests(SynchronousTestCase):
    """A captured knock cannot be used again."""

    def test_replay_refused(self) -> None:
        """When the same knock arrives twice, then the second is refused as a replay, and a
        fresh nonce is accepted."""
        verifier = knock.KnockVerifier(BOB.uid)
        token = alice_knock()
        self.assertEqual(verifier.verify(token, NOW, bob_candidates), knock.Accepted(ALICE.uid))
        self.assertEqual(
            verifier.verify(token, NOW + 30, bob_candidates),
            knock.Refused("replayed knock", ALICE.uid),
        )
        fresh = alice_knock(nonce=os.urandom(knock.NONCE_BYTES))
        self.assertEqual(verifier.verify(fresh, NOW, bob_candidates), knock.Accepted(ALICE.uid))

    def test_replay_refused_until_it_is_stale(self) -> None:
        """When a knock is replayed at any time until it expires, then it is refused, and the
        memory of it is dropped only once it would be stale anyway."""
        verifier = knock.KnockVerifier(BOB.uid)
        token = alice_knock(knock.window_of(NOW) + 1)  # from a clock a minute ahead
        verifier.verify(token, NOW, bob_candidates)
        for later in (1, 60, 119):
            verdict = verifier.verify(token, NOW + later, bob_candidates)
            self.assertIsInstance(verdict, knock.Refused)
        self.assertEqual(verifier.remembered, 1)
        verdict = verifier.verify(token, NOW + 180, bob_candidates)
        self.assertEqual(verdict, knock.Refused("stale knock", ALICE.uid, -2))
        verifier.verify(
            alice_knock(knock.window_of(NOW + 180), os.urandom(knock.NONCE_BYTES)),
            NOW + 180,
            bob_candidates,
        )
        self.assertEqual(verifier.remembered, 1)  # the old one was forgotten

    def test_memory_is_bounded(self) -> None:
        """When more valid knocks arrive than the memory holds, then the extra ones are
        refused (never a replay let through by forgetting)."""
        verifier = knock.KnockVerifier(BOB.uid, max_remembered=3)
        for _ in range(3):
            token = alice_knock(nonce=os.urandom(knock.NONCE_BYTES))
            self.assertIsInstance(verifier.verify(token, NOW, bob_candidates), knock.Accepted)
        verdict = verifier.verify(
            alice_knock(nonce=os.urandom(knock.NONCE_BYTES)), NOW, bob_candidates
        )
        self.assertEqual(verdict, knock.Refused("too many knocks", ALICE.uid))


class ForgeryTests(SynchronousTestCase):
    """Knocks not made with a contact's key for this listener."""

    def test_wrong_key_refused(self) -> None:
        """When a stranger knocks with its own pair key with Bob, then Bob refuses it and
        remembers nothing."""
        mallory = IdentityKey.generate()
        key = knock.pair_key(mallory.private_bytes(), mallory.uid, BOB.public_bytes, BOB.uid)
        token = knock.make_knock(key, BOB.uid, knock.window_of(NOW), NONCE)
        verifier = knock.KnockVerifier(BOB.uid)
        self.assertEqual(verifier.verify(token, NOW, bob_candidates), knock.Refused("bad knock"))
        self.assertEqual(verifier.remembered, 0)

    def test_uid_key_refused_where_the_pair_key_is_known(self) -> None:
        """When someone who knows both uids knocks with the uid key, then a listener that knows
        Alice's public key refuses it (it expects the pair key)."""
        token = knock.make_knock(bytes.fromhex(UID_KEY_HEX), BOB.uid, knock.window_of(NOW), NONCE)
        verifier = knock.KnockVerifier(BOB.uid)
        self.assertEqual(verifier.verify(token, NOW, bob_candidates), knock.Refused("bad knock"))

    def test_reflected_knock_refused(self) -> None:
        """When Alice's knock for Bob is sent to Alice (same pair key), then she refuses it:
        the tag binds the listener's uid."""
        verifier = knock.KnockVerifier(ALICE.uid)
        verdict = verifier.verify(alice_knock(), NOW, lambda: [(BOB.uid, pair_key())])
        self.assertEqual(verdict, knock.Refused("bad knock"))

    def test_found_among_many_contacts(self) -> None:
        """When Bob has a thousand other contacts, then Alice's knock is still found as hers."""
        others = [(f"c{i}", os.urandom(32)) for i in range(1000)]
        verifier = knock.KnockVerifier(BOB.uid)
        self.assertEqual(
            verifier.verify(alice_knock(), NOW, lambda: bob_candidates(*others)),
            knock.Accepted(ALICE.uid),
        )

    @settings(max_examples=200, deadline=None)
    @given(bit=st.integers(min_value=0, max_value=knock.KNOCK_LENGTH * 8 - 1))
    def test_any_bit_flip_refused(self, bit: int) -> None:
        """When any one bit of a valid knock is flipped, then it is refused."""
        token = bytearray(alice_knock())
        token[bit // 8] ^= 1 << (bit % 8)
        verdict = knock.KnockVerifier(BOB.uid).verify(bytes(token), NOW, bob_candidates)
        self.assertIsInstance(verdict, knock.Refused)

    @settings(max_examples=100, deadline=None)
    @given(data=st.binary(max_size=64))
    def test_arbitrary_bytes_refused(self, data: bytes) -> None:
        """When arbitrary bytes arrive instead of a knock, then they are refused."""
        verdict = knock.KnockVerifier(BOB.uid).verify(data, NOW, bob_candidates)
        self.assertIsInstance(verdict, knock.Refused)

    def test_tls_client_hello_is_named(self) -> None:
        """When the first 32 bytes are the start of a TLS ClientHello, then the refusal says
        "no knock" (an older Jarvis or a scanner), and a real knock never looks like TLS."""
        hello = bytes.fromhex("160301") + os.urandom(29)
        self.assertEqual(
            knock.KnockVerifier(BOB.uid).verify(hello, NOW, bob_candidates),
            knock.Refused("no knock"),
        )
        self.assertFalse(knock.looks_like_tls(alice_knock()))


class HintTableTests(SynchronousTestCase):
    """The listener finds a contact's key by the hint, not by trying every key."""

    def make_counted(self, contacts: list[tuple[str, bytes]]) -> tuple[Any, list[int]]:
        calls: list[int] = []

        def candidates() -> list[tuple[str, bytes]]:
            calls.append(1)
            return list(contacts)

        return candidates, calls

    def test_known_contact_costs_no_scan(self) -> None:
        """When the table is built and Alice knocks again (another nonce, the next window),
        then the candidates are not listed again: her key is found by its hint."""
        others = [(f"c{i}", os.urandom(32)) for i in range(1000)]
        candidates, calls = self.make_counted(bob_candidates(*others))
        verifier = knock.KnockVerifier(BOB.uid)
        self.assertEqual(verifier.verify(alice_knock(), NOW, candidates), knock.Accepted(ALICE.uid))
        self.assertEqual(len(calls), 1)  # the table was built
        again = alice_knock(knock.window_of(NOW) + 1, os.urandom(knock.NONCE_BYTES))
        self.assertEqual(verifier.verify(again, NOW, candidates), knock.Accepted(ALICE.uid))
        self.assertEqual(len(calls), 1)

    def test_contact_added_after_the_table_gets_in(self) -> None:
        """When Alice becomes a contact after the table was built, then her knock is still
        accepted (every key is tried on a miss) and the table is rebuilt with her."""
        contacts: list[tuple[str, bytes]] = [("c0", os.urandom(32))]
        candidates, calls = self.make_counted(contacts)
        verifier = knock.KnockVerifier(BOB.uid)
        self.assertEqual(verifier.verify(b"\x01" * 32, NOW, candidates), knock.Refused("bad knock"))
        contacts.extend(bob_candidates())
        self.assertEqual(verifier.verify(alice_knock(), NOW, candidates), knock.Accepted(ALICE.uid))
        fresh = alice_knock(nonce=os.urandom(knock.NONCE_BYTES))
        self.assertEqual(verifier.verify(fresh, NOW, candidates), knock.Accepted(ALICE.uid))
        count = len(calls)
        fresh = alice_knock(nonce=os.urandom(knock.NONCE_BYTES))
        self.assertEqual(verifier.verify(fresh, NOW, candidates), knock.Accepted(ALICE.uid))
        self.assertEqual(len(calls), count)  # found in the rebuilt table

    def test_removed_contact_refused_once_the_table_is_rebuilt(self) -> None:
        """When Alice is no longer a candidate, then her knock is refused once the table is
        rebuilt (at the next window, or at once after invalidate(); the network also checks
        that an accepted uid is still acceptable)."""
        contacts = bob_candidates()
        candidates, _ = self.make_counted(contacts)
        verifier = knock.KnockVerifier(BOB.uid)
        verifier.verify(alice_knock(), NOW, candidates)
        contacts.clear()
        verifier.invalidate()
        token = alice_knock(nonce=os.urandom(knock.NONCE_BYTES))
        self.assertEqual(verifier.verify(token, NOW, candidates), knock.Refused("bad knock"))
        later = NOW + knock.WINDOW_SECONDS
        token = alice_knock(knock.window_of(later), os.urandom(knock.NONCE_BYTES))
        self.assertEqual(verifier.verify(token, later, candidates), knock.Refused("bad knock"))

    def test_with_on_stale_the_old_table_is_never_used_nor_rebuilt(self) -> None:
        """When the verifier has an owner that makes tables (on_stale) and Alice is removed,
        then the owner is asked once, her knock is refused at once (the old table is not
        used), no table is built on the spot, and once the owner's table comes Carol is found
        in it without listing the candidates; a table made before the change is dropped."""
        carol = ("carol", os.urandom(32))
        contacts = bob_candidates(carol)
        candidates, calls = self.make_counted(contacts)
        asked: list[int] = []
        verifier = knock.KnockVerifier(BOB.uid, on_stale=lambda: asked.append(1))
        window = knock.window_of(NOW)
        generation = verifier.generation
        verifier.prepared(window, verifier.prepare(window, contacts), generation)
        self.assertEqual(verifier.verify(alice_knock(), NOW, candidates), knock.Accepted(ALICE.uid))
        self.assertEqual(calls, [])  # the table made ahead served
        old = verifier.prepare(window, contacts)
        contacts.remove(contacts[-1])  # Alice
        verifier.invalidate()
        self.assertEqual(asked, [1])
        verifier.prepared(window, old, generation)  # made before the change: dropped
        token = alice_knock(nonce=os.urandom(knock.NONCE_BYTES))
        self.assertEqual(verifier.verify(token, NOW, candidates), knock.Refused("bad knock"))
        self.assertEqual(len(calls), 1)  # every current key tried, no table built
        verifier.prepared(window, verifier.prepare(window, contacts), verifier.generation)
        carol_knock = knock.make_knock(carol[1], BOB.uid, window, NONCE)
        self.assertEqual(verifier.verify(carol_knock, NOW, candidates), knock.Accepted("carol"))
        self.assertEqual(len(calls), 1)
        self.assertEqual(asked, [1])
