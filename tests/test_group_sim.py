"""The pure group blocks together: ten simulated members, pairwise fan-out, loss, sync, removal.

No network, no reactor: a seeded random scheduler delivers the fan-out entries that
:mod:`jarvis.protocol.group_fanout` plans, drops some (a member withholding, a lost copy), and
members catch up through keepalive summaries and gap requests to third members, as the wiring
will do with real daemons.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from twisted.trial.unittest import SynchronousTestCase

from jarvis.core.group_log import GroupLog
from jarvis.crypto.identity import IdentityKey
from jarvis.protocol.group_fanout import (
    KIND_MESSAGE,
    KIND_STATE,
    group_peers,
    parse_payload,
    plan_message,
    plan_state,
)
from jarvis.protocol.group_message import (
    MAX_PARENTS,
    NO_HASH,
    GroupMessage,
    message_hash,
    parse_message,
    write_message,
)
from jarvis.protocol.group_state import (
    GroupState,
    Membership,
    StateRefused,
    accept_chain,
    accept_next,
    found_group,
    invite,
    parse_state,
    remove,
    verify_founding,
)

GROUP_ID = bytes(range(0x80, 0x90))
KEYS = [IdentityKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(10)]


@dataclass
class Node:
    """One simulated member: its key, the state it holds, its log and its own chain."""

    key: IdentityKey
    state: GroupState
    membership: Membership
    log: GroupLog
    seq: int = 0
    prev: bytes = NO_HASH
    parked: list[GroupMessage] = field(default_factory=list)

    def write(self, body: bytes) -> GroupMessage:
        """Write the next message under the held state and keep it in the own log."""
        self.seq += 1
        message = write_message(
            self.key,
            GROUP_ID,
            seq=self.seq,
            prev_hash=self.prev,
            state_version=self.state.version,
            created=self.seq,
            parents=self.log.parents_for(self.key.public_bytes, MAX_PARENTS),
            body=body,
        )
        self.prev = message_hash(message)
        self.log.offer(message)
        return message

    def receive(self, payload: bytes) -> None:
        """Handle one group payload, as the wiring will."""
        kind, record = parse_payload(payload)
        if kind == KIND_STATE:
            try:
                new = accept_next(self.state, parse_state(record))
            except StateRefused:
                return
            if new is not self.state:
                self.state = new
                self.membership.add(new)
                self.log.states_added()
                parked, self.parked = self.parked, []
                for message in parked:
                    self.offer(message)
        elif kind == KIND_MESSAGE:
            self.offer(parse_message(record))

    def offer(self, message: GroupMessage) -> None:
        """Offer *message* to the log; park it if it names a state not held yet."""
        if self.log.offer(message).reason == "state unknown":
            self.parked.append(message)


def make_group() -> list[Node]:
    """Found a group of ten: KEYS[0] founds and invites the nine others; each joiner checks the
    chain from version 1."""
    chain = [found_group(KEYS[0], "Ten", group_id=GROUP_ID)]
    for key in KEYS[1:]:
        chain.append(invite(chain[-1], KEYS[0], key.public_bytes))
    nodes = []
    for key in KEYS:
        verify_founding(chain[0])
        held = accept_chain(chain[0], chain)
        membership = Membership(chain)
        nodes.append(Node(key, held, membership, GroupLog(GROUP_ID, membership)))
    return nodes


class Network:
    """Pending fan-out entries, delivered in a seeded random order, some dropped."""

    def __init__(self, nodes: list[Node], rng: random.Random, loss: float) -> None:
        self.by_uid = {n.key.uid: n for n in nodes}
        self.rng = rng
        self.loss = loss
        self.pending: list[tuple[str, bytes, bool]] = []
        self.dropped = 0

    def send(self, recipient: str, payload: bytes, *, reliable: bool = False) -> None:
        self.pending.append((recipient, payload, reliable))

    def deliver_some(self) -> None:
        self.rng.shuffle(self.pending)
        for _ in range(self.rng.randrange(len(self.pending) + 1)):
            self.deliver_one()

    def deliver_one(self) -> None:
        recipient, payload, reliable = self.pending.pop()
        if not reliable and self.rng.random() < self.loss:
            self.dropped += 1
            return
        self.by_uid[recipient].receive(payload)

    def flush(self) -> None:
        self.rng.shuffle(self.pending)
        while self.pending:
            self.deliver_one()


def sync(nodes: list[Node], rng: random.Random) -> int:
    """Run keepalive rounds (each member sends its summary to a random other member, which
    sends back what it lacks and answers gap requests) until every member holds the same
    heads; return the number of rounds."""
    for rounds in range(1, 50):
        for node in nodes:
            peer = rng.choice([n for n in nodes if n is not node])
            summary = node.log.summary(node.state.version)
            for gap in peer.log.missing_for(summary):
                for m in peer.log.messages(gap.author, gap.first, gap.last):
                    node.offer(m)
            for gap in node.log.gaps():
                helper = rng.choice([n for n in nodes if n is not node])
                for m in helper.log.messages(gap.author, gap.first, gap.last):
                    node.offer(m)
        if all(n.log.heads() == nodes[0].log.heads() for n in nodes):
            return rounds
    raise AssertionError("members did not converge")


class TenMembersTests(SynchronousTestCase):
    """Ten members, three senders, loss, sync and a removal, all pure."""

    def test_every_member_every_message_once_same_order(self) -> None:
        """When three of ten members write 300 messages concurrently, 5% of the copies are
        lost and members sync by summaries and gap requests to third members, then every
        member shows all 300 once, in the same order, each author's in sequence."""
        rng = random.Random(17)
        nodes = make_group()
        net = Network(nodes, rng, loss=0.05)
        senders = nodes[:3]
        written: list[GroupMessage] = []
        for i in range(300):
            author = rng.choice(senders)
            message = author.write(b"m%d" % i)
            written.append(message)
            for entry in plan_message(author.state, message):
                net.send(entry.recipient, entry.payload)
            net.deliver_some()
        net.flush()
        self.assertGreater(net.dropped, 0)
        sync(nodes, rng)
        expected = sorted(message_hash(m) for m in written)
        orders = [[message_hash(m) for m in n.log.shown()] for n in nodes]
        for order in orders:
            self.assertEqual(sorted(order), expected)
            self.assertEqual(order, orders[0])
        seqs: dict[bytes, list[int]] = {}
        for m in nodes[5].log.shown():
            seqs.setdefault(m.author, []).append(m.seq)
        for author_seqs in seqs.values():
            self.assertEqual(author_seqs, list(range(1, len(author_seqs) + 1)))

    def test_removed_member_refused_by_all(self) -> None:
        """When the founder removes the tenth member halfway, then nobody fans out to it once
        they hold the removal, every member refuses what it writes afterwards (under the new
        state or backdated), nobody admits it as a group peer, and all still agree."""
        rng = random.Random(5)
        nodes = make_group()
        net = Network(nodes, rng, loss=0.0)
        founder, victim = nodes[0], nodes[9]
        writers = [nodes[1], nodes[2], victim]
        for i in range(40):
            author = rng.choice(writers)
            for entry in plan_message(author.state, author.write(b"a%d" % i)):
                net.send(entry.recipient, entry.payload)
            net.deliver_some()
        net.flush()
        sync(nodes, rng)
        kept = founder.log.head(victim.key.public_bytes)
        last_seq = kept.seq if kept else 0
        previous = founder.state
        removal = remove(previous, founder.key, victim.key.uid, last_seq=last_seq)
        founder.receive(plan_state(previous, removal, b"")[0].payload)
        for entry in plan_state(previous, removal, founder.key.public_bytes):
            net.send(entry.recipient, entry.payload, reliable=True)
        late = victim.write(b"after removal, backdated")  # it has not applied the removal
        for entry in plan_message(previous, late):  # it still fans out to everyone
            net.send(entry.recipient, entry.payload)
        net.flush()  # the removal and the late message arrive in either order
        for i in range(20):
            author = rng.choice(writers[:2])
            entries = plan_message(author.state, author.write(b"b%d" % i))
            self.assertNotIn(victim.key.uid, [e.recipient for e in entries])
            for entry in entries:
                net.send(entry.recipient, entry.payload)
        net.flush()
        self.assertEqual(victim.state.version, removal.version)  # it was told
        self.assertIsNone(victim.state.member(victim.key.uid))
        members = nodes[:9]
        sync(members, rng)
        for node in members:
            self.assertNotIn(message_hash(late), [message_hash(m) for m in node.log.shown()])
            self.assertNotIn(victim.key.uid, group_peers([node.state], node.key.public_bytes))
        orders = [[message_hash(m) for m in n.log.shown()] for n in members]
        self.assertEqual(len(orders[0]), 60)
        for order in orders:
            self.assertEqual(order, orders[0])
