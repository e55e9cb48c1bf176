"""Tests for :mod:`jarvis.core.group_log`: chains, gaps, forks, removal, the order shown, sync."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.core.group_log import Gap, GroupLog, Outcome
from jarvis.crypto.identity import IdentityKey
from jarvis.protocol.group_message import (
    MAX_PARENTS,
    NO_HASH,
    GroupMessage,
    Parent,
    is_fork_proof,
    message_hash,
    write_message,
)
from jarvis.protocol.group_state import GroupState, Membership, found_group, invite, remove

ALICE = IdentityKey.from_private_bytes(bytes(range(0x00, 0x20)))
BOB = IdentityKey.from_private_bytes(bytes(range(0x20, 0x40)))
CAROL = IdentityKey.from_private_bytes(bytes(range(0x40, 0x60)))
DAVE = IdentityKey.from_private_bytes(bytes(range(0x60, 0x80)))
GROUP_ID = bytes(range(0x80, 0x90))


def make_states() -> list[GroupState]:
    """Return versions 1..3: Alice founds, invites Bob, then Carol."""
    v1 = found_group(ALICE, "Family", group_id=GROUP_ID)
    v2 = invite(v1, ALICE, BOB.public_bytes)
    v3 = invite(v2, ALICE, CAROL.public_bytes)
    return [v1, v2, v3]


def make_log(states: list[GroupState] | None = None) -> GroupLog:
    """Return an empty log that knows *states* (default: versions 1..3)."""
    return GroupLog(GROUP_ID, Membership(make_states() if states is None else states))


class Writer:
    """A member writing messages: keeps its seq and previous hash, names parents from *log*."""

    def __init__(self, key: IdentityKey, log: GroupLog, state_version: int = 3) -> None:
        self.key = key
        self.log = log
        self.seq = 0
        self.prev = NO_HASH
        self.state_version = state_version

    def write(self, body: bytes) -> GroupMessage:
        """Write the next message, offer it to the writer's own log and return it."""
        self.seq += 1
        message = write_message(
            self.key,
            GROUP_ID,
            seq=self.seq,
            prev_hash=self.prev,
            state_version=self.state_version,
            created=1_700_000_000_000 + self.seq,
            parents=self.log.parents_for(self.key.public_bytes, MAX_PARENTS),
            body=body,
        )
        self.prev = message_hash(message)
        self.log.offer(message)
        return message


class ChainTests(SynchronousTestCase):
    """Per-author chains: in order, duplicates, gaps and their filling."""

    def test_in_order(self) -> None:
        """When Alice's messages arrive in order, then each is accepted and shown in order."""
        alice = Writer(ALICE, make_log())
        messages = [alice.write(b"%d" % i) for i in range(3)]
        log = make_log()
        for m in messages:
            offered = log.offer(m)
            self.assertEqual(offered.outcome, Outcome.accepted)
            self.assertEqual(offered.shown, (m,))
        self.assertEqual(log.shown(), messages)
        self.assertEqual(log.offer(messages[1]).outcome, Outcome.duplicate)
        self.assertEqual(log.shown(), messages)

    def test_gap_detected_and_filled_from_a_third(self) -> None:
        """When Bob withholds Alice's message 2 from Carol, then Carol's log reports the gap
        (Alice, 2..2); when a third member's log serves it, the gap closes and all
        three show in order."""
        alice = Writer(ALICE, make_log())
        m1, m2, m3 = (alice.write(b"a"), alice.write(b"b"), alice.write(b"c"))
        carol = make_log()
        self.assertEqual(carol.offer(m1).outcome, Outcome.accepted)
        self.assertEqual(carol.offer(m3).outcome, Outcome.buffered)
        self.assertEqual(carol.gaps(), [Gap(ALICE.public_bytes, 2, 2)])
        self.assertEqual(carol.shown(), [m1])
        third = make_log()
        for m in (m1, m2, m3):
            third.offer(m)
        (served,) = third.messages(ALICE.public_bytes, 2, 2)
        offered = carol.offer(served)
        self.assertEqual(offered.outcome, Outcome.accepted)
        self.assertEqual(offered.shown, (m2, m3))
        self.assertEqual(carol.gaps(), [])
        self.assertEqual(carol.shown(), [m1, m2, m3])

    def test_missing_parent_is_a_gap(self) -> None:
        """When Bob's message names Alice's message 2 as parent and Carol lacks it, then it is
        accepted but not shown, and the gap (Alice, 1..2) is reported until it fills."""
        alice = Writer(ALICE, make_log())
        a1, a2 = alice.write(b"a1"), alice.write(b"a2")
        bob_log = make_log()
        bob_log.offer(a1)
        bob_log.offer(a2)
        b1 = Writer(BOB, bob_log).write(b"b1")
        carol = make_log()
        offered = carol.offer(b1)
        self.assertEqual((offered.outcome, offered.shown), (Outcome.accepted, ()))
        self.assertEqual(carol.gaps(), [Gap(ALICE.public_bytes, 1, 2)])
        carol.offer(a1)
        self.assertEqual(carol.offer(a2).shown, (a2, b1))
        self.assertEqual(carol.shown(), [a1, a2, b1])
        self.assertEqual(carol.gaps(), [])

    def test_gaps_are_holes_only(self) -> None:
        """When Alice's messages 2 and 4 are missing and 3 and 5 are held, then two gaps are
        reported, (2..2) and (4..4), not what is already held."""
        alice = Writer(ALICE, make_log())
        m = [alice.write(b"%d" % i) for i in range(5)]
        log = make_log()
        for i in (0, 2, 4):
            log.offer(m[i])
        self.assertEqual(log.gaps(), [Gap(ALICE.public_bytes, 2, 2), Gap(ALICE.public_bytes, 4, 4)])

    def test_bogus_parent_holds_up_only_its_author(self) -> None:
        """When Carol names a parent nobody has (Alice's message 99), then her message waits
        and reports the gap, but Bob, who holds it, does not name it as a parent, so his own
        messages are shown by everyone."""
        a1 = Writer(ALICE, make_log()).write(b"a1")
        bogus = write_message(
            CAROL,
            GROUP_ID,
            seq=1,
            prev_hash=NO_HASH,
            state_version=3,
            created=0,
            parents=[Parent(ALICE.public_bytes, 99, b"\x01" * 32)],
            body=b"c1",
        )
        bob_log = make_log()
        bob_log.offer(a1)
        self.assertEqual(bob_log.offer(bogus).shown, ())
        self.assertEqual(bob_log.gaps(), [Gap(ALICE.public_bytes, 2, 99)])
        b1 = Writer(BOB, bob_log).write(b"b1")
        self.assertEqual([p.author for p in b1.parents], [ALICE.public_bytes])
        other = make_log()
        for message in (bogus, a1, b1):
            other.offer(message)
        self.assertEqual(other.shown(), [a1, b1])


class ForkTests(SynchronousTestCase):
    """An author who signs two versions of one position is caught."""

    def test_same_seq_different_message(self) -> None:
        """When Alice sends Bob one message 2 and Carol another, and a relay brings Carol's to
        Bob, then Bob's log returns fork evidence that anyone can check, and keeps the first."""
        alice = Writer(ALICE, make_log())
        m1, m2 = alice.write(b"one"), alice.write(b"to Bob")
        other = write_message(
            ALICE,
            GROUP_ID,
            seq=2,
            prev_hash=message_hash(m1),
            state_version=3,
            created=0,
            body=b"to Carol",
        )
        bob = make_log()
        bob.offer(m1)
        bob.offer(m2)
        offered = bob.offer(other)
        self.assertEqual(offered.outcome, Outcome.forked)
        assert offered.evidence is not None
        self.assertTrue(is_fork_proof(offered.evidence.first, offered.evidence.second))
        self.assertEqual(bob.evidence(), [offered.evidence])
        self.assertEqual(bob.shown(), [m1, m2])

    def test_other_predecessor(self) -> None:
        """When Alice's message 3 names another message 2 than the one held, then it is fork
        evidence and is not accepted."""
        alice = Writer(ALICE, make_log())
        m1, m2 = alice.write(b"one"), alice.write(b"two")
        forged3 = write_message(
            ALICE,
            GROUP_ID,
            seq=3,
            prev_hash=b"\x01" * 32,
            state_version=3,
            created=0,
            body=b"three",
        )
        log = make_log()
        log.offer(m1)
        log.offer(m2)
        self.assertEqual(log.offer(forged3).outcome, Outcome.forked)
        self.assertEqual(log.head(ALICE.public_bytes).seq, 2)  # type: ignore[union-attr]

    def test_buffered_conflict(self) -> None:
        """When two different messages 3 arrive ahead of a gap, then the second is evidence."""
        alice = Writer(ALICE, make_log())
        m1, _m2, m3 = alice.write(b"1"), alice.write(b"2"), alice.write(b"3")
        other3 = write_message(
            ALICE, GROUP_ID, seq=3, prev_hash=m3.prev_hash, state_version=3, created=1, body=b"x"
        )
        log = make_log()
        log.offer(m1)
        self.assertEqual(log.offer(m3).outcome, Outcome.buffered)
        self.assertEqual(log.offer(m3).outcome, Outcome.duplicate)
        self.assertEqual(log.offer(other3).outcome, Outcome.forked)


class MembershipTests(SynchronousTestCase):
    """Who may write."""

    def test_removed_member_refused_after_removal(self) -> None:
        """When Carol is removed at version 4 after her first message, then her message written
        under version 4 is refused by every member, and so is a later message she backdates to
        version 3; her first message is kept."""
        states = make_states()
        v4 = remove(states[-1], ALICE, CAROL.uid, last_seq=1)
        carol = Writer(CAROL, make_log())
        before = carol.write(b"before")
        backdated = carol.write(b"backdated")
        carol.state_version = 4
        after = carol.write(b"after")
        log = make_log([*states, v4])
        self.assertEqual(log.offer(before).outcome, Outcome.accepted)
        offered = log.offer(after)
        self.assertEqual(offered.outcome, Outcome.refused)
        self.assertEqual(offered.reason, "not a member at that state version")
        offered = log.offer(backdated)
        self.assertEqual(offered.outcome, Outcome.refused)
        self.assertEqual(offered.reason, "written after the author was removed")
        self.assertEqual(log.shown(), [before])

    def test_removal_learned_late(self) -> None:
        """When a member accepted Carol's message 2 (and Bob's reply naming it) before learning
        that Carol was removed after message 1, then applying the removal drops message 2, and
        it shows the same messages in the same order as a member that knew of the removal
        from the start, with no gap reported."""
        states = make_states()
        v4 = remove(states[-1], ALICE, CAROL.uid, last_seq=1)
        carol = Writer(CAROL, make_log())
        c1, c2 = carol.write(b"c1"), carol.write(b"c2")
        bob_view = make_log()
        bob_view.offer(c1)
        bob_view.offer(c2)
        bob = Writer(BOB, bob_view)
        b1 = bob.write(b"reply")
        self.assertIn(Parent(CAROL.public_bytes, 2, message_hash(c2)), b1.parents)
        membership = Membership(states)
        late = GroupLog(GROUP_ID, membership)
        for m in (c1, c2, b1):
            self.assertEqual(late.offer(m).outcome, Outcome.accepted)
        self.assertEqual(late.shown(), [c1, c2, b1])
        membership.add(v4)
        dropped, shown = late.states_added()
        self.assertEqual(dropped, [c2])
        self.assertEqual(shown, [c1, b1])
        knew = make_log([*states, v4])
        for m in (b1, c2, c1):
            knew.offer(m)
        self.assertEqual(knew.shown(), [c1, b1])
        self.assertEqual(knew.gaps(), [])
        self.assertEqual(late.gaps(), [])

    def test_non_member_refused(self) -> None:
        """When Dave, never a member, writes to the group, then his message is refused, and so
        is a member's message naming Dave as a parent."""
        dave = Writer(DAVE, make_log()).write(b"hello")
        log = make_log()
        self.assertEqual(log.offer(dave).outcome, Outcome.refused)
        sneaky = write_message(
            ALICE,
            GROUP_ID,
            seq=1,
            prev_hash=NO_HASH,
            state_version=3,
            created=0,
            parents=[Parent(DAVE.public_bytes, 1, message_hash(dave))],
            body=b"x",
        )
        self.assertEqual(log.offer(sneaky).reason, "a parent names a non-member")
        self.assertEqual(log.shown(), [])

    def test_bad_signature_and_unknown_state(self) -> None:
        """When a message's signature is forged or it names a state version not held yet, or
        another group, then it is refused and nothing is kept."""
        m = Writer(ALICE, make_log()).write(b"x")
        log = make_log()
        self.assertEqual(log.offer(replace(m, body=b"y")).reason, "bad signature")
        future = Writer(ALICE, make_log(), state_version=9).write(b"x")
        self.assertEqual(log.offer(future).reason, "state unknown")
        self.assertEqual(log.offer(replace(m, group_id=bytes(16))).reason, "another group")
        self.assertEqual(log.heads(), {})


def run_group(seed: int, writes: int) -> list[GroupMessage]:
    """Simulate Alice, Bob and Carol writing concurrently with random, partial delivery;
    return every message written."""
    rng = random.Random(seed)
    writers = [Writer(k, make_log()) for k in (ALICE, BOB, CAROL)]
    pending: list[tuple[Writer, GroupMessage]] = []
    written: list[GroupMessage] = []
    for i in range(writes):
        author = rng.choice(writers)
        message = author.write(b"m%d" % i)
        written.append(message)
        pending.extend((w, message) for w in writers if w is not author)
        rng.shuffle(pending)
        for _ in range(rng.randrange(len(pending) + 1)):
            reader, m = pending.pop()
            reader.log.offer(m)
    return written


class OrderTests(SynchronousTestCase):
    """Every member shows the same order."""

    @settings(max_examples=25, deadline=None)
    @given(seed=st.integers(0, 2**32), writes=st.integers(1, 40))
    def test_three_members_same_order(self, seed: int, writes: int) -> None:
        """When three members write concurrently and their messages reach three readers in
        different orders, then every reader shows every message once, in the same order, each
        after its author's previous one and its parents."""
        written = run_group(seed, writes)
        orders = []
        for reader_seed in range(3):
            deliveries = list(written)
            random.Random(seed + reader_seed).shuffle(deliveries)
            log = make_log()
            for m in deliveries:
                self.assertIn(log.offer(m).outcome, (Outcome.accepted, Outcome.buffered))
            self.assertEqual(log.gaps(), [])
            orders.append([message_hash(m) for m in log.shown()])
        self.assertEqual(orders[0], orders[1])
        self.assertEqual(orders[0], orders[2])
        self.assertEqual(sorted(orders[0]), sorted(message_hash(m) for m in written))
        position = {h: i for i, h in enumerate(orders[0])}
        for m in written:
            if m.seq > 1:
                self.assertLess(position[m.prev_hash], position[message_hash(m)])
            for p in m.parents:
                self.assertLess(position[p.hash], position[message_hash(m)])


class SyncTests(SynchronousTestCase):
    """Heads in keepalives and what a peer is missing."""

    def test_missing_and_wanted(self) -> None:
        """When X holds Alice 1..3 and Bob 1, and Y holds Alice 1 and Carol 1..2, then from
        Y's summary X computes that Y lacks Alice 2..3 and Bob 1 and that X lacks Carol 1..2;
        after exchanging exactly those, both hold the same heads and show the same order."""
        alice = Writer(ALICE, make_log())
        a = [alice.write(b"a%d" % i) for i in range(3)]
        b1 = Writer(BOB, make_log()).write(b"b")
        carol = Writer(CAROL, make_log())
        c = [carol.write(b"c1"), carol.write(b"c2")]
        x, y = make_log(), make_log()
        for m in (*a, b1):
            x.offer(m)
        for m in (a[0], *c):
            y.offer(m)
        y_summary = y.summary(3)
        self.assertEqual(
            x.missing_for(y_summary),
            sorted(
                [Gap(ALICE.public_bytes, 2, 3), Gap(BOB.public_bytes, 1, 1)], key=lambda g: g.author
            ),
        )
        self.assertEqual(x.wanted_from(y_summary), [Gap(CAROL.public_bytes, 1, 2)])
        for gap in x.missing_for(y_summary):
            for m in x.messages(gap.author, gap.first, gap.last):
                y.offer(m)
        for gap in x.wanted_from(y_summary):
            for m in y.messages(gap.author, gap.first, gap.last):
                x.offer(m)
        self.assertEqual(x.heads(), y.heads())
        self.assertEqual(x.missing_for(y.summary(3)), [])
        self.assertEqual(x.shown(), y.shown())
        self.assertEqual(len(x.shown()), 6)
