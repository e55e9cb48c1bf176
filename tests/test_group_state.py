"""Tests for :mod:`jarvis.protocol.group_state`: layout, round trips and the rules of change."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.crypto.linkcode import CardMailbox
from jarvis.protocol.group_state import (
    MAX_ADDRESSES_BYTES,
    MAX_MEMBERS,
    MAX_STATE_BYTES,
    NO_HASH,
    Departure,
    GroupState,
    MalformedState,
    Member,
    Membership,
    Role,
    StateRefused,
    accept_chain,
    accept_next,
    encode_state,
    found_group,
    hand_over,
    heir,
    invite,
    leave,
    parse_state,
    preferred,
    remove,
    rename,
    set_addresses,
    set_role,
    state_hash,
    verify_founding,
    verify_successor,
)

ALICE = IdentityKey.from_private_bytes(bytes(range(0x00, 0x20)))
BOB = IdentityKey.from_private_bytes(bytes(range(0x20, 0x40)))
CAROL = IdentityKey.from_private_bytes(bytes(range(0x40, 0x60)))
DAVE = IdentityKey.from_private_bytes(bytes(range(0x60, 0x80)))
GROUP_ID = bytes(range(0x80, 0x90))
DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

#: Version 1 of "Family", founded by Alice (docs/protocol.md, "Groups").
FOUNDING_HEX = (
    "01808182838485868788898a8b8c8d8e8f0000000000000001"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000646616d696c79"
    "0000"
    "0001"
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    "010000"
    "0000"
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    "1cf81b8e476da2798154ea9846c33b50dfd51ea2760794f8f39fb1b258870c19"
    "c75b91e104754184e942d03ef5b53ef68c5e148088ddb1768357ea80f89e9803"
)


def make_family() -> list[GroupState]:
    """Return the chain: Alice founds, invites Bob (admin) and Carol; Bob renames."""
    v1 = found_group(ALICE, "Family", group_id=GROUP_ID)
    v2 = invite(v1, ALICE, BOB.public_bytes, role=Role.ADMIN, addresses=b"bob-addr")
    v3 = invite(v2, BOB, CAROL.public_bytes)
    v4 = rename(v3, BOB, topic="dinner at 8")
    return [v1, v2, v3, v4]


class LayoutTests(SynchronousTestCase):
    """The byte layout and its vector."""

    def test_documented(self) -> None:
        """When docs/protocol.md is read, then its "Groups" section shows the vector verbatim."""
        blocks = re.findall(r"```hex\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
        self.assertIn(FOUNDING_HEX, "".join("".join(block.split()) for block in blocks))

    def test_founding_vector(self) -> None:
        """When Alice founds "Family" with the vector's id, then the body is the vector's and
        the signature verifies."""
        v1 = found_group(ALICE, "Family", group_id=GROUP_ID)
        data = encode_state(v1)
        self.assertEqual(data.hex(), FOUNDING_HEX)
        self.assertEqual(parse_state(data), v1)
        verify_founding(v1)

    def test_size_limit_holds_a_full_group(self) -> None:
        """When a group has the most members with the longest fields, then it encodes within
        MAX_STATE_BYTES and parses back."""
        members = tuple(
            sorted(
                (
                    Member(IdentityKey.generate().public_bytes, Role.MEMBER, b"x" * 512)
                    for _ in range(MAX_MEMBERS - 1)
                ),
                key=lambda m: m.public_key,
            )
        )
        v1 = found_group(ALICE, "n" * 64, topic="t" * 256, group_id=GROUP_ID)
        full = replace(
            v1, members=tuple(sorted((*v1.members, *members), key=lambda m: m.public_key))
        )
        data = encode_state(full)
        self.assertLessEqual(len(data), MAX_STATE_BYTES)
        self.assertEqual(parse_state(data), full)

    def test_malformed(self) -> None:
        """When the bytes are truncated, extended, unsorted or too large, then parsing raises."""
        data = encode_state(make_family()[2])
        for cut in range(len(data)):
            self.assertRaises(MalformedState, parse_state, data[:cut])
        self.assertRaises(MalformedState, parse_state, data + b"\x00")
        self.assertRaises(MalformedState, parse_state, b"\x02" + data[1:])
        self.assertRaises(MalformedState, parse_state, bytes(MAX_STATE_BYTES + 1))
        state = make_family()[2]
        unsorted = replace(state, members=tuple(reversed(state.members)))
        self.assertRaises(ValueError, encode_state, unsorted)

    def test_member_uid_is_derived(self) -> None:
        """When a member is built from a key, then its uid is that key's uid."""
        self.assertEqual(Member(BOB.public_bytes, Role.MEMBER).uid, BOB.uid)


uid_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Zs")),
    min_size=1,
    max_size=64,
)


class RoundTripTests(SynchronousTestCase):
    """Hypothesis round trips."""

    @settings(max_examples=60, deadline=None)
    @given(
        name=uid_text,
        topic=st.text(
            alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
            max_size=256,
        ),
        version=st.integers(2, 2**64 - 1),
        prev_hash=st.binary(min_size=32, max_size=32).filter(lambda b: b != NO_HASH),
        addresses=st.lists(st.binary(max_size=MAX_ADDRESSES_BYTES), min_size=1, max_size=4),
        roles=st.lists(st.sampled_from([Role.ADMIN, Role.MEMBER]), min_size=3, max_size=3),
        signature=st.binary(min_size=64, max_size=64),
        departed=st.lists(
            st.builds(Departure, st.binary(min_size=32, max_size=32), st.integers(0, 2**64 - 1)),
            max_size=5,
            unique_by=lambda d: d.public_key,
        ),
    )
    def test_round_trip(
        self,
        name: str,
        topic: str,
        version: int,
        prev_hash: bytes,
        addresses: list[bytes],
        roles: list[Role],
        signature: bytes,
        departed: list[Departure],
    ) -> None:
        """When any in-range state is encoded, then parsing gives it back, and encoding again
        gives the same bytes."""
        keys = [ALICE, BOB, CAROL, DAVE][: len(addresses)]
        members = [
            Member(k.public_bytes, Role.FOUNDER if i == 0 else roles[i - 1], addresses[i])
            for i, k in enumerate(keys)
        ]
        present = {k.public_bytes for k in keys}
        state = GroupState(
            GROUP_ID,
            version,
            prev_hash,
            name.strip() or "x",
            topic,
            tuple(sorted(members, key=lambda m: m.public_key)),
            BOB.public_bytes,
            signature,
            tuple(sorted(d for d in departed if d.public_key not in present)),
        )
        data = encode_state(state)
        self.assertEqual(parse_state(data), state)
        self.assertEqual(encode_state(parse_state(data)), data)


class ChangeTests(SynchronousTestCase):
    """The change functions produce versions every member accepts."""

    def test_chain_accepted(self) -> None:
        """When a member holding version 1 receives the chain, then it ends at version 4 with
        Bob admin, Carol member and the new topic."""
        chain = make_family()
        held = accept_chain(chain[0], chain)
        self.assertEqual(held, chain[-1])
        self.assertEqual(held.version, 4)
        self.assertEqual(held.member(BOB.uid).role, Role.ADMIN)  # type: ignore[union-attr]
        self.assertEqual(held.member(CAROL.uid).role, Role.MEMBER)  # type: ignore[union-attr]
        self.assertEqual(held.topic, "dinner at 8")
        self.assertEqual(held.prev_hash, state_hash(chain[2]))

    def test_relay_of_held_version(self) -> None:
        """When the held version is relayed again, then it is kept without error."""
        chain = make_family()
        self.assertIs(accept_next(chain[3], chain[3]), chain[3])

    def test_member_leaves(self) -> None:
        """When Carol leaves, then the version she signed is accepted and she is gone."""
        v4 = make_family()[-1]
        v5 = leave(v4, CAROL, last_seq=0)
        verify_successor(v4, v5)
        self.assertIsNone(v5.member(CAROL.uid))

    def test_member_updates_own_addresses(self) -> None:
        """When Carol replaces her own addresses, then the version she signed is accepted."""
        v4 = make_family()[-1]
        v5 = set_addresses(v4, CAROL, CAROL.uid, b"new")
        self.assertEqual(v5.member(CAROL.uid).addresses, b"new")  # type: ignore[union-attr]

    def test_membership_history(self) -> None:
        """When Carol is removed at version 5 and invited again at 6, then Membership says when
        she was a member."""
        chain = make_family()
        v5 = remove(chain[-1], ALICE, CAROL.uid, last_seq=0)
        v6 = invite(v5, ALICE, CAROL.public_bytes)
        history = Membership([*chain, v5])
        self.assertEqual(history.removed_at(CAROL.public_bytes), 5)
        self.assertTrue(history.was_member(CAROL.public_bytes, 4))
        self.assertFalse(history.was_member(CAROL.public_bytes, 5))
        self.assertFalse(history.was_member(CAROL.public_bytes, 2))
        history.add(v6)
        self.assertTrue(history.was_member(CAROL.public_bytes, 6))
        self.assertIsNone(history.removed_at(CAROL.public_bytes))
        self.assertRaises(ValueError, history.add, v5)


class RefusalTests(SynchronousTestCase):
    """What members refuse, each with the state they keep."""

    def assert_refused(self, held: GroupState, candidate: GroupState, reason: str) -> None:
        with self.assertRaises(StateRefused) as caught:
            accept_next(held, candidate)
        self.assertEqual(caught.exception.reason, reason)

    def test_forged_signature(self) -> None:
        """When a version's signature is altered, then it is refused as a bad signature."""
        v1, v2 = make_family()[:2]
        forged = replace(v2, signature=bytes(64))
        self.assert_refused(v1, forged, "bad signature")
        bad_founding = replace(v1, signature=bytes([v1.signature[0] ^ 1]) + v1.signature[1:])
        self.assertRaises(StateRefused, verify_founding, bad_founding)

    def test_non_member_signer(self) -> None:
        """When Dave, not a member, signs a valid-looking next version adding himself, then it
        is refused."""
        v4 = make_family()[-1]
        self.assertRaises(StateRefused, invite, v4, DAVE, DAVE.public_bytes)
        forged = _resign(replace(_next_of(v4), members=_add(v4, DAVE)), DAVE)
        self.assert_refused(v4, forged, "the signer is not a member")

    def test_plain_member_cannot_invite_or_rename(self) -> None:
        """When Carol, a plain member, invites Dave or renames the group, then it is refused."""
        v4 = make_family()[-1]
        forged = _resign(replace(_next_of(v4), members=_add(v4, DAVE)), CAROL)
        self.assert_refused(v4, forged, "only the founder or an admin may make this change")
        renamed = _resign(replace(_next_of(v4), name="Mine"), CAROL)
        self.assert_refused(v4, renamed, "only the founder or an admin may make this change")
        self.assertRaises(StateRefused, remove, v4, CAROL, BOB.uid, last_seq=0)

    def test_admin_cannot_appoint_admins(self) -> None:
        """When Bob, an admin, promotes Carol or invites Dave as admin, then it is refused
        (only the founder appoints admins); the founder may."""
        v4 = make_family()[-1]
        self.assertRaises(StateRefused, set_role, v4, BOB, CAROL.uid, Role.ADMIN)
        self.assertRaises(StateRefused, invite, v4, BOB, DAVE.public_bytes, role=Role.ADMIN)
        promoted = set_role(v4, ALICE, CAROL.uid, Role.ADMIN)
        self.assertEqual(promoted.member(CAROL.uid).role, Role.ADMIN)  # type: ignore[union-attr]
        # and once an admin, Bob cannot remove her either
        self.assertRaises(StateRefused, remove, promoted, BOB, CAROL.uid, last_seq=0)

    def test_admin_cannot_remove_founder(self) -> None:
        """When Bob, an admin, removes or demotes Alice, the founder, then it is refused; so is
        the founder leaving."""
        v4 = make_family()[-1]
        self.assertRaises(StateRefused, remove, v4, BOB, ALICE.uid, last_seq=0)
        self.assertRaises(StateRefused, set_role, v4, BOB, ALICE.uid, Role.MEMBER)
        self.assertRaises(StateRefused, leave, v4, ALICE, last_seq=0)
        crowned = [
            replace(m, role=Role.FOUNDER if m.uid == BOB.uid else Role.MEMBER) for m in v4.members
        ]
        forged = _resign(replace(_next_of(v4), members=tuple(crowned)), BOB)
        self.assert_refused(v4, forged, "the founder cannot be removed or replaced")

    def test_admin_may_remove_plain_member(self) -> None:
        """When Bob, an admin, removes Carol, then the version is accepted."""
        v4 = make_family()[-1]
        self.assertIsNone(remove(v4, BOB, CAROL.uid, last_seq=0).member(CAROL.uid))

    def test_version_rollback_and_replay(self) -> None:
        """When a member holding version 4 is offered version 2 or 4's sibling with the same
        number, or version 6, then each is refused and version 4 is kept."""
        chain = make_family()
        held = chain[-1]
        self.assert_refused(held, chain[1], "version rollback or replay")
        other_four = rename(chain[2], ALICE, name="Other")
        self.assert_refused(held, other_four, "version rollback or replay")
        v6 = rename(rename(held, ALICE, name="A"), ALICE, name="B")
        self.assert_refused(held, v6, "version gap")
        self.assertEqual(accept_chain(chain[0], chain), held)

    def test_prev_hash_mismatch(self) -> None:
        """When version 5 names another hash than version 4's, then it is refused."""
        held = make_family()[-1]
        v5 = rename(held, ALICE, name="New")
        forged = _resign(replace(v5, prev_hash=bytes(range(32))), ALICE)
        self.assert_refused(held, forged, "previous hash mismatch")

    def test_departures_must_match(self) -> None:
        """When a removal omits the departure, or a rename lists one, then it is refused; the
        departure carries the last kept message and Membership applies it."""
        held = make_family()[-1]
        v5 = remove(held, ALICE, CAROL.uid, last_seq=7)
        self.assertEqual(v5.departed, (Departure(CAROL.public_bytes, 7),))
        self.assert_refused(held, _resign(replace(v5, departed=()), ALICE), _DEPARTURES)
        renamed = rename(held, ALICE, name="New")
        extra = replace(renamed, departed=(Departure(DAVE.public_bytes, 1),))
        self.assert_refused(held, _resign(extra, ALICE), _DEPARTURES)
        history = Membership([*make_family(), v5])
        self.assertTrue(history.may_write(CAROL.public_bytes, 4, 7))
        self.assertFalse(history.may_write(CAROL.public_bytes, 4, 8))
        self.assertFalse(history.may_write(CAROL.public_bytes, 5, 1))
        self.assertTrue(history.may_write(BOB.public_bytes, 5, 10**6))
        self.assertEqual(history.departed_last_seq(CAROL.public_bytes), 7)

    def test_another_group(self) -> None:
        """When a version of another group is offered, then it is refused."""
        held = make_family()[-1]
        other = rename(held, ALICE, name="New")
        forged = _resign(replace(other, group_id=bytes(16)), ALICE)
        self.assert_refused(held, forged, "another group")

    def test_founding_must_be_signed_by_founder(self) -> None:
        """When a version 1 names Alice founder but is signed by Bob, then it is refused."""
        v1 = found_group(ALICE, "Family", group_id=GROUP_ID)
        self.assertRaises(StateRefused, verify_founding, _resign(v1, BOB))
        self.assertRaises(StateRefused, verify_founding, make_family()[1])

    def test_preferred_concurrent_versions(self) -> None:
        """When two versions with one number compete, then the founder's wins, else the lower
        hash, whichever order they are compared in."""
        v3 = make_family()[2]
        by_bob = rename(v3, BOB, name="Bob's")
        by_alice = rename(v3, ALICE, name="Alice's")
        self.assertIs(preferred(by_bob, by_alice), by_alice)
        self.assertIs(preferred(by_alice, by_bob), by_alice)
        other = rename(v3, BOB, name="Bob's 2")
        self.assertIs(preferred(by_bob, other), preferred(other, by_bob))


_DEPARTURES = "the departures are not the members removed"


def _next_of(state: GroupState) -> GroupState:
    return replace(state, version=state.version + 1, prev_hash=state_hash(state))


def _add(state: GroupState, key: IdentityKey) -> tuple[Member, ...]:
    members = (*state.members, Member(key.public_bytes, Role.MEMBER))
    return tuple(sorted(members, key=lambda m: m.public_key))


def _resign(state: GroupState, signer: IdentityKey) -> GroupState:
    """Sign *state* as *signer* without the change functions' own rule check (an attacker)."""
    from jarvis.protocol import group_state

    unsigned = replace(state, signer=signer.public_bytes)
    body = group_state._body(unsigned)
    return replace(unsigned, signature=signer.sign(group_state._SIGN_LABEL + body))


class AddressesFieldTests(SynchronousTestCase):
    """The one encoding of a member's addresses field (docs/protocol.md, "Group state")."""

    def card(self, link_chars: int = 0) -> CardMailbox:

        host = "h" * link_chars if link_chars else "127.0.0.1"
        link = f"jarvis-mailbox:{ALICE.uid}@{host}:7780"[:255]
        return CardMailbox(link, b"s" * 24, b"k" * 32, b"p" * 112)

    def test_round_trip_with_and_without_a_mailbox(self) -> None:
        """When addresses and a group queue are encoded, then they parse back as they were;
        without a mailbox the field is the plain comma list it always was."""
        from jarvis.protocol.group_state import encode_addresses, parse_addresses

        card = self.card()
        raw = encode_addresses(["192.0.2.7:7770", "[2001:db8::1]:7770"], card)
        self.assertEqual(parse_addresses(raw), (("192.0.2.7:7770", "[2001:db8::1]:7770"), card))
        plain = encode_addresses(["192.0.2.7:7770", "198.51.100.1:7770"])
        self.assertEqual(plain, b"192.0.2.7:7770,198.51.100.1:7770")
        self.assertEqual(parse_addresses(plain), (("192.0.2.7:7770", "198.51.100.1:7770"), None))

    def test_longest_link_kept_whole_addresses_cut(self) -> None:
        """When the mailbox link is as long as a link may be, then the mailbox part is kept
        whole, the field stays within MAX_ADDRESSES_BYTES, and the addresses that do not fit
        are left out (the first ones kept)."""
        from jarvis.protocol.group_state import encode_addresses, parse_addresses

        card = self.card(link_chars=300)
        addresses = [f"192.0.2.{i}:7770" for i in range(1, 40)]
        raw = encode_addresses(addresses, card)
        self.assertLessEqual(len(raw), MAX_ADDRESSES_BYTES)
        kept, mailbox = parse_addresses(raw)
        self.assertEqual(mailbox, card)
        self.assertGreaterEqual(len(kept), 1)
        self.assertEqual(list(kept), addresses[: len(kept)])

    def test_malformed_mailbox_part_ignored(self) -> None:
        """When the part after the NUL byte does not parse exactly, then the addresses are
        still read and no mailbox is taken from it."""
        from jarvis.protocol.group_state import encode_addresses, parse_addresses

        raw = encode_addresses(["192.0.2.7:7770"], self.card())
        self.assertEqual(parse_addresses(raw[:-1]), (("192.0.2.7:7770",), None))
        self.assertEqual(parse_addresses(raw + b"x"), (("192.0.2.7:7770",), None))


def _named(state: GroupState, key: IdentityKey, name: str) -> tuple[Member, ...]:
    return tuple(replace(m, display_name=name) if m.uid == key.uid else m for m in state.members)


class DisplayNameTests(SynchronousTestCase):
    """Members' self-chosen display names: one encoding, set only by the member itself."""

    def test_own_name_round_trip_and_change(self) -> None:
        """When Carol publishes her name and later changes it, then both versions are accepted,
        round-trip in format 2, and the names are hers."""
        v4 = make_family()[-1]
        v5 = set_addresses(v4, CAROL, CAROL.uid, b"", display_name="Carol")
        v6 = set_addresses(v5, CAROL, CAROL.uid, b"", display_name="Caro \u00e9")
        self.assertEqual(accept_chain(v4, [v5, v6]), v6)
        self.assertEqual(encode_state(v5)[0], 2)
        self.assertEqual(encode_state(v4)[0], 1)
        self.assertEqual(parse_state(encode_state(v6)), v6)
        self.assertEqual(v6.member(CAROL.uid).display_name, "Caro \u00e9")  # type: ignore[union-attr]
        self.assertEqual(v6.member(BOB.uid).display_name, "")  # type: ignore[union-attr]

    def test_founding_with_name(self) -> None:
        """When Alice founds a group with her name, then version 1 carries it and verifies."""
        v1 = found_group(ALICE, "Family", group_id=GROUP_ID, display_name="Alice")
        verify_founding(parse_state(encode_state(v1)))
        self.assertEqual(v1.founder.display_name, "Alice")

    def test_nobody_sets_another_members_name(self) -> None:
        """When the founder (or an admin) writes a name into Carol's entry, or invites Dave with
        a name, then it is refused and Carol's entry keeps no name."""
        v4 = make_family()[-1]
        for signer in (ALICE, BOB):
            forged = _resign(replace(_next_of(v4), members=_named(v4, CAROL, "alice")), signer)
            with self.assertRaises(StateRefused) as caught:
                accept_next(v4, forged)
            self.assertEqual(caught.exception.reason, "only a member sets its own display name")
        self.assertRaises(StateRefused, set_addresses, v4, ALICE, CAROL.uid, b"", display_name="x")
        dave = Member(DAVE.public_bytes, Role.MEMBER, b"", "Dave")
        members = tuple(sorted((*v4.members, dave), key=lambda m: m.public_key))
        forged = _resign(replace(_next_of(v4), members=members), ALICE)
        self.assertRaises(StateRefused, accept_next, v4, forged)
        self.assertEqual(v4.member(CAROL.uid).display_name, "")  # type: ignore[union-attr]

    def test_names_refused_and_cleaned(self) -> None:
        """When a name has control, bidi or zero-width characters, padding or more than 64
        bytes, then a member entry refuses it, and clean_display_name makes it acceptable."""
        from jarvis.protocol.group_state import (
            MAX_DISPLAY_NAME_BYTES,
            check_display_name,
            clean_display_name,
        )

        for bad in ("\x1b[2Jbob", "bob\u202e", "b\u200bob", " bob", "bob\n", "\u00e9" * 33):
            self.assertRaises(ValueError, Member, BOB.public_bytes, Role.MEMBER, b"", bad)
        self.assertEqual(clean_display_name(" \u202ebob\x1b[2J\n "), "bob[2J")
        long = clean_display_name("\u00e9" * 40)
        self.assertLessEqual(len(long.encode()), MAX_DISPLAY_NAME_BYTES)
        self.assertEqual(long, "\u00e9" * 32)
        self.assertEqual(check_display_name(long), long)
        self.assertEqual(clean_display_name("\u202e\n"), "")

    def test_non_canonical_and_bad_names_on_the_wire(self) -> None:
        """When a format 2 state carries no name, a name of control characters or invalid
        UTF-8, then parsing refuses it (a state has exactly one encoding)."""
        v4 = make_family()[-1]
        v5 = set_addresses(v4, CAROL, CAROL.uid, b"", display_name="Carol")
        data = encode_state(v5)
        self.assertRaises(MalformedState, parse_state, b"\x02" + encode_state(v4)[1:])
        for bad in (b"Ca\x1bol", b"Car\xff\xfe"):
            self.assertRaises(MalformedState, parse_state, data.replace(b"Carol", bad))
        self.assertRaises(MalformedState, parse_state, b"\x03" + data[1:])


class HandOverTests(SynchronousTestCase):
    """The founder leaves by handing the founder role to another member."""

    def test_founder_hands_over_and_leaves(self) -> None:
        """When Alice hands over to Bob, then every member accepts it: Alice departed with her
        last seq, Bob is the founder, Carol unchanged; Bob can then invite and rename."""
        v4 = make_family()[-1]
        v5 = hand_over(v4, ALICE, BOB.uid, last_seq=7)
        self.assertEqual(accept_next(v4, v5), v5)
        self.assertIsNone(v5.member(ALICE.uid))
        self.assertEqual(v5.founder.uid, BOB.uid)
        self.assertEqual(v5.departed, (Departure(ALICE.public_bytes, 7),))
        self.assertEqual(v5.member(CAROL.uid), v4.member(CAROL.uid))
        v6 = invite(v5, BOB, DAVE.public_bytes)
        v7 = rename(v6, BOB, name="Kin")
        self.assertEqual(accept_chain(v4, [v5, v6, v7]).name, "Kin")
        history = Membership([*make_family(), v5])
        self.assertFalse(history.may_write(ALICE.public_bytes, 4, 8))
        self.assertTrue(history.may_write(ALICE.public_bytes, 4, 7))

    def test_heir_is_longest_standing_admin_else_member(self) -> None:
        """When the founder leaves without naming anyone, then the heir is the longest-standing
        admin; with no admin, the longest-standing member; alone, nobody."""
        chain = make_family()
        v5 = invite(chain[-1], ALICE, DAVE.public_bytes, role=Role.ADMIN)
        history = Membership([*chain, v5])
        self.assertEqual(heir(v5, history).uid, BOB.uid)  # type: ignore[union-attr]
        v6 = set_role(v5, ALICE, BOB.uid, Role.MEMBER)
        history.add(v6)
        self.assertEqual(heir(v6, history).uid, DAVE.uid)  # type: ignore[union-attr]
        v7 = set_role(v6, ALICE, DAVE.uid, Role.MEMBER)
        history.add(v7)
        self.assertEqual(heir(v7, history).uid, BOB.uid)  # type: ignore[union-attr]
        self.assertIsNone(heir(chain[0], Membership(chain[:1])))

    def test_non_founder_cannot_hand_over(self) -> None:
        """When Bob, an admin, or Carol signs a hand-over of Alice's role (to themselves or
        another), then it is refused and Alice stays the founder."""
        v4 = make_family()[-1]
        self.assertRaises(StateRefused, hand_over, v4, BOB, CAROL.uid, last_seq=0)
        honest = hand_over(v4, ALICE, BOB.uid, last_seq=0)
        for signer in (BOB, CAROL):
            forged = _resign(honest, signer)
            with self.assertRaises(StateRefused) as caught:
                accept_next(v4, forged)
            self.assertEqual(caught.exception.reason, "the founder cannot be removed or replaced")
        self.assertEqual(v4.founder.uid, ALICE.uid)

    def test_hand_over_plus_another_change_refused(self) -> None:
        """When the founder's hand-over also renames, removes Carol, keeps Alice, or crowns a
        stranger, then each is refused: a hand-over changes nothing but the founder."""
        v4 = make_family()[-1]
        honest = hand_over(v4, ALICE, BOB.uid, last_seq=0)
        renamed = _resign(replace(honest, name="Mine"), ALICE)
        self.assertRaises(StateRefused, accept_next, v4, renamed)
        without_carol = tuple(m for m in honest.members if m.uid != CAROL.uid)
        departed = tuple(sorted((*honest.departed, Departure(CAROL.public_bytes, 0))))
        removed = _resign(replace(honest, members=without_carol, departed=departed), ALICE)
        self.assertRaises(StateRefused, accept_next, v4, removed)
        demoted = tuple(
            replace(m, role=Role.MEMBER if m.uid == ALICE.uid else m.role) for m in [*v4.members]
        )
        crowned = tuple(replace(m, role=Role.FOUNDER) if m.uid == BOB.uid else m for m in demoted)
        kept = _resign(replace(_next_of(v4), members=crowned), ALICE)
        with self.assertRaises(StateRefused) as caught:
            accept_next(v4, kept)
        self.assertEqual(
            caught.exception.reason, "the founder hands the group over only when leaving"
        )
        dave = Member(DAVE.public_bytes, Role.FOUNDER)
        stranger = tuple(
            sorted(
                (*(m for m in v4.members if m.uid != ALICE.uid), dave), key=lambda m: m.public_key
            )
        )
        alien = _resign(
            replace(_next_of(v4), members=stranger, departed=(Departure(ALICE.public_bytes, 0),)),
            ALICE,
        )
        with self.assertRaises(StateRefused) as caught:
            accept_next(v4, alien)
        self.assertEqual(caught.exception.reason, "the new founder must already be a member")
        self.assertRaises(ValueError, hand_over, v4, ALICE, ALICE.uid, last_seq=0)
