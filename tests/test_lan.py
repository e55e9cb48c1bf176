"""Tests for jarvis.protocol.lan: LAN discovery keys, tokens, padding, matching (pure)."""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import count
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.protocol import knock, lan

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

ALICE = IdentityKey.from_private_bytes(bytes(range(32)))
BOB = IdentityKey.from_private_bytes(bytes(range(32, 64)))
CAROL = IdentityKey.from_private_bytes(bytes(range(64, 96)))
#: The vectors' time: 2027-01-15T08:00:00Z, window 3,000,000.
NOW = 1_800_000_000
WINDOW = 3_000_000

#: docs/protocol.md, "LAN discovery": Alice and Bob's knock pair key (as in "Knock"), their
#: LAN key, Alice's token for Bob, Bob's token for Alice, and Alice's token in the next window.
PAIR_KEY_HEX = "3d11176e481a05a32bf8b8d59c722fc1e60e75ee640dff14f9e1ce8bce565568"
LAN_KEY_HEX = "3fcfbede54c27f72099a68537071e08379398739ec430277fc343c2a31ec469b"
ALICE_TOKEN_HEX = "db9daf275a98683c"
BOB_TOKEN_HEX = "f794271225352779"
ALICE_NEXT_TOKEN_HEX = "159a607b308acbca"


def lan_key_of(me: IdentityKey, peer: IdentityKey) -> bytes:
    key = lan.LanKeys(me.private_bytes(), me.uid).key(peer.uid, peer.public_bytes)
    assert key is not None
    return key


def counter_random() -> Callable[[int], bytes]:
    """A deterministic random source: 0x00, 0x01, 0x02... (wrapping)."""
    counter = count()

    def random_bytes(n: int) -> bytes:
        return bytes(next(counter) % 256 for _ in range(n))

    return random_bytes


class VectorTests(SynchronousTestCase):
    """The documented bytes."""

    def test_keys(self) -> None:
        """When Alice and Bob derive their LAN key, then both get the documented bytes, derived
        from the knock pair key and different from it."""
        self.assertEqual(
            knock.pair_key(ALICE.private_bytes(), ALICE.uid, BOB.public_bytes, BOB.uid).hex(),
            PAIR_KEY_HEX,
        )
        self.assertEqual(lan.lan_key(bytes.fromhex(PAIR_KEY_HEX)).hex(), LAN_KEY_HEX)
        self.assertEqual(lan_key_of(ALICE, BOB).hex(), LAN_KEY_HEX)
        self.assertEqual(lan_key_of(BOB, ALICE).hex(), LAN_KEY_HEX)

    def test_tokens(self) -> None:
        """When tokens are made at the vectors' time, then they are the documented bytes."""
        key = bytes.fromhex(LAN_KEY_HEX)
        self.assertEqual(lan.window_of(NOW), WINDOW)
        self.assertEqual(lan.token(key, WINDOW, ALICE.uid).hex(), ALICE_TOKEN_HEX)
        self.assertEqual(lan.token(key, WINDOW, BOB.uid).hex(), BOB_TOKEN_HEX)
        self.assertEqual(lan.token(key, WINDOW + 1, ALICE.uid).hex(), ALICE_NEXT_TOKEN_HEX)

    def test_documented(self) -> None:
        """When docs/protocol.md is read, then it shows every vector of this module."""
        text = DOC.read_text(encoding="utf-8")
        self.assertIn("## LAN discovery", text)
        for value in (
            LAN_KEY_HEX,
            ALICE_TOKEN_HEX,
            BOB_TOKEN_HEX,
            ALICE_NEXT_TOKEN_HEX,
            ALICE.uid,
            BOB.uid,
        ):
            self.assertIn(value, text)

    def test_announcement_layout(self) -> None:
        """When Alice announces to Bob with a counter as random source, then the announcement
        is 16 sorted tokens (hers for Bob and 15 decoys) in two TXT entries, with random names."""
        announcement = lan.make_announcement(
            ALICE.uid, [bytes.fromhex(LAN_KEY_HEX)], WINDOW, counter_random()
        )
        self.assertEqual(len(announcement.tokens), 16)
        self.assertEqual(list(announcement.tokens), sorted(announcement.tokens))
        self.assertIn(bytes.fromhex(ALICE_TOKEN_HEX), announcement.tokens)
        self.assertEqual(announcement.tokens[0], bytes(range(8)))  # the first decoy
        self.assertEqual(announcement.instance, bytes(range(120, 128)).hex())
        self.assertEqual(announcement.host, bytes(range(128, 136)).hex())
        txt = announcement.txt()
        self.assertEqual(sorted(txt), [b"t0", b"v"])
        self.assertEqual(txt[b"v"], b"1")
        self.assertEqual(txt[b"t0"], b"".join(announcement.tokens))


class KeyTests(SynchronousTestCase):
    def test_no_public_key_no_lan_key(self) -> None:
        """When a contact's public key is unknown, then it gets no LAN key (the knock's uid key,
        computable from the two uids, is never used on the LAN)."""
        keys = lan.LanKeys(ALICE.private_bytes(), ALICE.uid)
        self.assertIsNone(keys.key(BOB.uid, None))
        self.assertIsNone(keys.key(BOB.uid, b""))

    def test_bad_public_key(self) -> None:
        """When a contact's public key has no X25519 form, then it gets no LAN key."""
        keys = lan.LanKeys(ALICE.private_bytes(), ALICE.uid)
        one = (1).to_bytes(32, "little")  # y == 1: refused by the conversion
        self.assertIsNone(keys.key(BOB.uid, one))

    def test_pairs_differ(self) -> None:
        """When Alice has keys with Bob and with Carol, then the two differ, and Bob's key with
        Carol differs from both."""
        self.assertEqual(
            len({lan_key_of(ALICE, BOB), lan_key_of(ALICE, CAROL), lan_key_of(BOB, CAROL)}), 3
        )


class SharedKnockKeysTests(SynchronousTestCase):
    def test_shared_knock_keys_computed_once(self) -> None:
        """When LAN keys share the network's knock keys, already computed for a contact, then
        no X25519 exchange is computed again and the LAN key is the one of a separate cache."""
        peer = IdentityKey.generate()
        shared = knock.KnockKeys(ALICE.private_bytes(), ALICE.uid)
        shared.add(shared.compute([(peer.uid, peer.public_bytes)]))
        computed: list[object] = []
        original = shared.compute

        def counting(peers: object) -> object:
            computed.append(peers)
            return original(peers)  # type: ignore[arg-type]

        shared.compute = counting  # type: ignore[method-assign]
        keys = lan.LanKeys(ALICE.private_bytes(), ALICE.uid, knock=shared)
        own = lan.LanKeys(ALICE.private_bytes(), ALICE.uid)
        self.assertEqual(
            keys.key(peer.uid, peer.public_bytes), own.key(peer.uid, peer.public_bytes)
        )
        self.assertEqual(computed, [])


class UnlinkabilityTests(SynchronousTestCase):
    """What a stranger capturing announcements cannot compute or link."""

    @given(st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=2**40))
    def test_consecutive_windows_differ(self, key: bytes, window: int) -> None:
        """When the window moves on, then the announcer's token for the same contact changes
        (a capture cannot follow one token across windows)."""
        self.assertNotEqual(
            lan.token(key, window, ALICE.uid), lan.token(key, window + 1, ALICE.uid)
        )

    def test_two_directions_differ(self) -> None:
        """When Alice and Bob both announce in one window, then no token appears in both
        announcements (a shared token would show they are contacts)."""
        random_bytes = counter_random()
        alice = lan.make_announcement(ALICE.uid, [lan_key_of(ALICE, BOB)], WINDOW, random_bytes)
        bob = lan.make_announcement(BOB.uid, [lan_key_of(BOB, ALICE)], WINDOW, random_bytes)
        self.assertEqual(set(alice.tokens) & set(bob.tokens), set())

    @given(st.integers(min_value=0, max_value=2**40))
    @settings(max_examples=50)
    def test_public_values_do_not_give_the_token(self, window: int) -> None:
        """When a stranger computes a token from everything public (the uids, the public keys,
        the uid key the knock falls back to, the knock key itself if it ever leaked), then none
        equals Alice's token for Bob: only the LAN key gives it."""
        expected = lan.token(lan_key_of(ALICE, BOB), window, ALICE.uid)
        guesses = [
            knock.uid_key(ALICE.uid, BOB.uid),
            lan.lan_key(knock.uid_key(ALICE.uid, BOB.uid)),
            bytes.fromhex(PAIR_KEY_HEX),
            ALICE.public_bytes,
            BOB.public_bytes,
            ALICE.uid.encode(),
            BOB.uid.encode(),
            lan_key_of(ALICE, CAROL),
            lan_key_of(CAROL, BOB),
        ]
        for guess in guesses:
            self.assertNotEqual(lan.token(guess, window, ALICE.uid), expected)
            self.assertNotEqual(lan.token(guess, window, BOB.uid), expected)

    @given(st.integers(min_value=0, max_value=lan.MAX_TOKENS + 40))
    def test_padding_hides_the_count(self, contacts: int) -> None:
        """When a daemon has any number of contacts, then its announcement carries a multiple
        of 16 tokens (16 for 0 to 16 contacts), at most MAX_TOKENS, all 8 bytes, sorted."""
        keys = [i.to_bytes(32, "big") for i in range(contacts)]
        announcement = lan.make_announcement(ALICE.uid, keys, WINDOW, os.urandom)
        n = len(announcement.tokens)
        announced = min(contacts, lan.MAX_TOKENS)
        self.assertEqual(n % lan.PAD_BUCKET, 0)
        self.assertEqual(n, max(lan.PAD_BUCKET, -(-announced // lan.PAD_BUCKET) * lan.PAD_BUCKET))
        self.assertLessEqual(n, lan.MAX_TOKENS)
        if contacts <= lan.PAD_BUCKET:
            self.assertEqual(n, lan.PAD_BUCKET)
        self.assertEqual({len(t) for t in announcement.tokens}, {lan.TOKEN_BYTES})
        self.assertEqual(list(announcement.tokens), sorted(announcement.tokens))

    def test_names_rotate(self) -> None:
        """When a daemon announces in two windows, then the instance and host names differ and
        neither contains the uid."""
        first = lan.make_announcement(ALICE.uid, [], WINDOW, os.urandom)
        second = lan.make_announcement(ALICE.uid, [], WINDOW + 1, os.urandom)
        self.assertNotEqual(first.instance, second.instance)
        self.assertNotEqual(first.host, second.host)
        for name in (first.instance, first.host):
            self.assertNotIn(ALICE.uid[:8], name)
            self.assertEqual(len(name), 2 * lan.NAME_BYTES)


class MatcherTests(SynchronousTestCase):
    def alice_txt(self, window: int = WINDOW) -> dict[bytes, bytes]:
        keys = [lan_key_of(ALICE, CAROL), lan_key_of(ALICE, BOB)]
        return lan.make_announcement(ALICE.uid, keys, window, os.urandom).txt()

    def test_contact_recognises(self) -> None:
        """When Bob sees Alice's announcement of his window or a neighbour, then he finds
        Alice; two windows away, he does not."""
        matcher = lan.TokenMatcher()

        def bob_contacts() -> list[tuple[str, bytes]]:
            return [(ALICE.uid, lan_key_of(BOB, ALICE))]

        for skew, found in ((0, {ALICE.uid}), (-1, {ALICE.uid}), (1, {ALICE.uid}), (2, set())):
            tokens = lan.parse_tokens(self.alice_txt(WINDOW + skew))
            self.assertEqual(matcher.match(tokens, NOW, bob_contacts), found, skew)

    def test_stranger_learns_nothing(self) -> None:
        """When Dave, a stranger to Alice who knows her and Bob's public keys (his own LAN keys
        with both), matches Alice's announcement, then he finds no one."""
        dave = IdentityKey.from_private_bytes(bytes(range(96, 128)))
        matcher = lan.TokenMatcher()
        contacts = [(ALICE.uid, lan_key_of(dave, ALICE)), (BOB.uid, lan_key_of(dave, BOB))]
        self.assertEqual(
            matcher.match(lan.parse_tokens(self.alice_txt()), NOW, lambda: contacts), set()
        )

    def test_own_announcement_not_matched(self) -> None:
        """When Alice sees her own announcement (mDNS loops it back), then her matcher finds
        no contact in it."""
        matcher = lan.TokenMatcher()
        contacts = [(BOB.uid, lan_key_of(ALICE, BOB)), (CAROL.uid, lan_key_of(ALICE, CAROL))]
        self.assertEqual(
            matcher.match(lan.parse_tokens(self.alice_txt()), NOW, lambda: contacts), set()
        )

    def test_invalidate_picks_up_new_contact(self) -> None:
        """When Bob adds Alice after his table was built, then invalidate() makes the next
        match find her."""
        matcher = lan.TokenMatcher()
        contacts: list[tuple[str, bytes]] = []
        tokens = lan.parse_tokens(self.alice_txt())
        self.assertEqual(matcher.match(tokens, NOW, lambda: contacts), set())
        contacts.append((ALICE.uid, lan_key_of(BOB, ALICE)))
        self.assertEqual(matcher.match(tokens, NOW, lambda: contacts), set())
        matcher.invalidate()
        self.assertEqual(matcher.match(tokens, NOW, lambda: contacts), {ALICE.uid})


class ParseTests(SynchronousTestCase):
    @given(st.integers(min_value=0, max_value=lan.MAX_TOKENS))
    @settings(max_examples=30)
    def test_round_trip(self, contacts: int) -> None:
        """When an announcement's TXT properties are parsed, then the same tokens come back."""
        keys = [i.to_bytes(32, "big") for i in range(contacts)]
        announcement = lan.make_announcement(ALICE.uid, keys, WINDOW, os.urandom)
        self.assertEqual(tuple(lan.parse_tokens(announcement.txt())), announcement.tokens)

    @given(
        st.dictionaries(
            st.binary(max_size=4), st.one_of(st.none(), st.binary(max_size=300)), max_size=20
        )
    )
    def test_garbage(self, properties: dict[bytes, bytes | None]) -> None:
        """When a TXT record from anyone is parsed, then it never raises and gives at most
        MAX_TOKENS tokens of 8 bytes."""
        tokens = lan.parse_tokens(properties)
        self.assertLessEqual(len(tokens), lan.MAX_TOKENS)
        self.assertTrue(all(len(t) == lan.TOKEN_BYTES for t in tokens))

    def test_other_version(self) -> None:
        """When the TXT record has another version, then no token is read from it."""
        self.assertEqual(lan.parse_tokens({b"v": b"2", b"t0": bytes(128)}), [])


class PreparedWindowsTests(SynchronousTestCase):
    def test_prepared_equals_built(self) -> None:
        """When Alice's tables are made by prepare_windows from a snapshot with nothing cached
        (Dave has no public key), then the matcher's table and our tokens are those built on
        the spot, Dave is left out, the computed keys are kept (the next snapshot knows
        them), and a matcher given the table recognises Bob without building one."""
        dave = IdentityKey.from_private_bytes(bytes(range(96, 128)))
        keys = lan.LanKeys(ALICE.private_bytes(), ALICE.uid)
        peers = [(BOB.uid, BOB.public_bytes), (dave.uid, None), (CAROL.uid, CAROL.public_bytes)]
        snapshot = keys.snapshot(peers)
        self.assertEqual([p.uid for p in snapshot], [BOB.uid, CAROL.uid])
        made = lan.prepare_windows(keys, ALICE.uid, [WINDOW, WINDOW + 1], snapshot)
        contact_keys = [(BOB.uid, lan_key_of(ALICE, BOB)), (CAROL.uid, lan_key_of(ALICE, CAROL))]
        for window in (WINDOW, WINDOW + 1):
            self.assertEqual(made.tables[window], lan.expected_tokens(window, contact_keys))
            self.assertEqual(
                made.announced[window],
                [lan.token(key, window, ALICE.uid) for _, key in contact_keys],
            )
        keys.add(made.computed)
        self.assertTrue(all(p.known for p in keys.snapshot(peers)))
        matcher = lan.TokenMatcher()
        matcher.prepared(WINDOW, made.tables[WINDOW])
        bob_token = lan.token(lan_key_of(BOB, ALICE), WINDOW, BOB.uid)

        def no_build() -> list[tuple[str, bytes]]:
            raise AssertionError("the table was built on the spot")

        self.assertEqual(matcher.match([bob_token], NOW, no_build), {BOB.uid})
