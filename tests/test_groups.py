"""The node's groups (:mod:`jarvis.core.groups`) between in-process members.

Each member is a real :class:`~jarvis.core.groups.Groups` with fakes around it: a courier that
queues the fan-out entries in a list (the test delivers, drops or forges them), a store that
keeps the group records in memory, a contact book of plain records, and a ``task.Clock``.
So the tests can do what a hostile member or the network would: withhold one copy, replay an
old state, sign a state without the right, write after a removal.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from jarvis.common.errors import InvalidInput, NotFound
from jarvis.core import group_log
from jarvis.core.groups import (
    GAP_DELAY,
    MAX_AHEAD_PER_SENDER,
    MAX_MEMBER_WAITS,
    MAX_PARKED,
    MAX_PARKED_BYTES,
    MAX_STATES_AHEAD,
    REMOVED_TELL_WINDOW,
    REMOVED_TELLS,
    Groups,
)
from jarvis.crypto.identity import IdentityKey
from jarvis.protocol.group_fanout import (
    KIND_INVITE,
    KIND_MESSAGE,
    KIND_STATE,
    KIND_SUMMARY,
    encode_body,
    encode_chain,
    encode_payload,
    parse_payload,
)
from jarvis.protocol.group_message import (
    MAX_BODY_BYTES,
    NO_HASH,
    encode_message,
    message_hash,
    parse_message,
    write_message,
)
from jarvis.protocol.group_state import (
    Member,
    Role,
    _sign,
    encode_state,
    found_group,
    parse_state,
    preferred,
    state_hash,
)
from jarvis.protocol.group_state import invite as state_invite
from jarvis.protocol.group_state import remove as state_remove
from jarvis.protocol.group_state import set_addresses as state_set_addresses
from jarvis.protocol.transfer import SharedFile
from jarvis.store import group_queries
from jarvis.store.records import Contact
from tests.test_node import FakeSession, node_with_bob, turned

KEYS = {
    name: IdentityKey.from_private_bytes(bytes([i + 1]) * 32)
    for i, name in enumerate(["alice", "bob", "carol", "dave", "eve"])
}


class FakeStore:
    """Keeps ``group_records`` in memory; runs the group queries at once."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, bytes], bytes] = {}

    def run(self, fn: Any, *args: Any, write: bool, **kwargs: Any) -> defer.Deferred[Any]:
        if fn is group_queries.put_group_records:
            new = 0
            for kind, key, data in args[0]:
                if (kind, key) not in self.rows:
                    self.rows[(kind, key)] = data
                    new += 1
            return defer.succeed(new)
        if fn is group_queries.put_group_record:
            kind, key, data = args
            self.rows[(kind, key)] = data
            return defer.succeed(True)
        if fn is group_queries.delete_group_record:
            self.rows.pop((args[0], args[1]), None)
            return defer.succeed(None)
        if fn is group_queries.load_group_records:
            return defer.succeed([(kind, data) for (kind, _), data in self.rows.items()])
        if fn is group_queries.delivered_to:
            return defer.succeed({})  # the fake courier keeps no entry states
        raise AssertionError(f"unexpected query {fn}")


class FakeCourier:
    """Queues entries as ``(sender, recipient, payload)`` in the shared outbox."""

    def __init__(self, uid: str, outbox: list[tuple[str, str, bytes]]) -> None:
        self.uid = uid
        self.outbox = outbox

    def queue_group_entry(self, uid: str, entry_id: str, payload: bytes) -> defer.Deferred[Any]:
        self.outbox.append((self.uid, uid, payload))
        return defer.succeed(None)

    def is_connected(self, uid: str) -> bool:
        return True


class FakeContacts:
    """Everyone in :data:`KEYS` is everyone's contact."""

    def __init__(self) -> None:
        self.by_uid = {k.uid: Contact(k.uid, k.public_bytes, name, ()) for name, k in KEYS.items()}

    def get(self, uid: str) -> Contact | None:
        return self.by_uid.get(uid)

    def resolve(self, ref: str) -> Contact:
        for c in self.by_uid.values():
            if ref in (c.uid, c.name):
                return c
        raise NotFound(ref)

    def display_name(self, uid: str) -> str:
        contact = self.by_uid.get(uid)
        return contact.name if contact else uid[:12]


class Members:
    """A few members' :class:`Groups`, a shared outbox and a clock."""

    def __init__(
        self, testcase: TestCase, names: list[str], display_names: dict[str, str] | None = None
    ) -> None:
        self.display_names = display_names or {}
        self.clock = task.Clock()
        self.outbox: list[tuple[str, str, bytes]] = []
        self.groups: dict[str, Groups] = {}
        self.events: dict[str, list[tuple[str, Any]]] = {}
        self.by_uid: dict[str, str] = {}
        self.stores: dict[str, FakeStore] = {}
        for name in names:
            events: list[tuple[str, Any]] = []
            g = Groups(
                clock=self.clock,
                now=lambda: 1_800_000_000.0,
                emit=lambda e, p, events=events: events.append((e, p)),
                courier=FakeCourier(KEYS[name].uid, self.outbox),
                contacts=FakeContacts(),
                keepalive=3600.0,  # no keepalive during a test: only gaps ask
            )
            self.stores[name] = FakeStore()
            g.open(
                self.stores[name],  # type: ignore[arg-type]
                KEYS[name],
                ["127.0.0.1:1"],
                display_name=self.display_names.get(name, ""),
            )
            testcase.addCleanup(g.close)
            self.groups[name] = g
            self.events[name] = events
            self.by_uid[KEYS[name].uid] = name

    def deliver(self, drop: Any = None) -> int:
        """Deliver every queued entry (and what they cause) until none is left; *drop*
        ``(sender, recipient, payload) -> bool`` withholds some.  :returns: how many."""
        count = 0
        while self.outbox:
            sender, recipient, payload = self.outbox.pop(0)
            if drop is not None and drop(sender, recipient, payload):
                continue
            name = self.by_uid.get(recipient)
            if name is not None:
                self.groups[name].payload_received(sender, payload)
                count += 1
        return count

    def restart(self, name: str) -> None:
        """Close *name*'s groups and open them again from its store (a daemon restart)."""
        g = self.groups[name]
        g.close()
        g.open(
            self.stores[name],  # type: ignore[arg-type]
            KEYS[name],
            ["127.0.0.1:1"],
            display_name=self.display_names.get(name, ""),
        )

    def settle(self) -> None:
        """Deliver, let the gap timers fire, deliver again, until quiet."""
        for _ in range(20):
            self.deliver()
            self.clock.advance(GAP_DELAY)
            if not self.outbox:
                return

    def bodies(self, name: str, gid: str) -> list[str]:
        return [m["body"] for m in self.groups[name].history(gid, limit=1000)["messages"]]

    async def group_of(self, founder: str, members: list[str]) -> str:
        g = self.groups[founder]
        gid = str((await g.create("team"))["id"])
        for name in members:
            await g.invite(gid, name)
            self.deliver()
            invites = self.groups[name].invites()
            await self.groups[name].join(invites[-1]["id"])
            self.settle()
        return gid


class RefusalTests(TestCase):
    """What members refuse from the wire, whoever relays it."""

    async def test_forged_state_from_plain_member_refused(self) -> None:
        """When a plain member signs a next state that adds someone and sends it to the
        others, then nobody takes it: their version and members stay."""
        m = Members(self, ["alice", "bob", "carol", "eve"])
        gid = await m.group_of("alice", ["bob", "carol"])
        held = m.groups["bob"].resolve(gid).state
        forged = _sign(
            replace(
                held,
                version=held.version + 1,
                prev_hash=state_hash(held),
                members=tuple(
                    sorted(
                        [*held.members, Member(KEYS["eve"].public_bytes, Role.MEMBER, b"")],
                        key=lambda x: x.public_key,
                    )
                ),
            ),
            KEYS["bob"],
        )
        payload = encode_payload(KIND_STATE, encode_state(forged))
        for name in ("alice", "carol"):
            m.groups[name].payload_received(KEYS["bob"].uid, payload)
            state = m.groups[name].resolve(gid).state
            self.assertEqual(state.version, held.version)
            self.assertIsNone(state.member(KEYS["eve"].uid))

    async def test_replayed_old_state_refused(self) -> None:
        """When an old state (version 2) is sent again after version 3, then members keep
        version 3 and its members."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        states = m.groups["alice"].resolve(gid).states
        old = encode_payload(KIND_STATE, encode_state(states[1]))
        m.groups["carol"].payload_received(KEYS["bob"].uid, old)
        state = m.groups["carol"].resolve(gid).state
        self.assertEqual(state, states[-1])
        self.assertEqual(len(state.members), 3)

    async def test_message_from_non_member_refused(self) -> None:
        """When someone outside the group (a contact of every member) writes a signed message
        for its id and sends it, then no member shows it; a member's message still goes."""
        m = Members(self, ["alice", "bob", "eve"])
        gid = await m.group_of("alice", ["bob"])
        group_id = bytes.fromhex(gid)
        forged = write_message(
            KEYS["eve"],
            group_id,
            seq=1,
            prev_hash=bytes(32),
            state_version=2,
            created=1,
            body=b"let me in",
        )
        payload = encode_payload(KIND_MESSAGE, encode_message(forged))
        for name in ("alice", "bob"):
            m.groups[name].payload_received(KEYS["eve"].uid, payload)
        await m.groups["alice"].send(gid, "hi")
        m.settle()
        self.assertEqual(m.bodies("bob", gid), ["hi"])
        self.assertEqual(m.bodies("alice", gid), ["hi"])


class RemovalTests(TestCase):
    """A removed member gets nothing more and writes nothing that counts."""

    async def test_removed_member_receives_nothing_and_is_refused(self) -> None:
        """When alice removes dave, then dave is told (group.removed), no entry is queued to
        him for later messages, his daemon refuses to send, and a message he signs after the
        removal (under the old version, as if he had not learnt it) is refused by all."""
        m = Members(self, ["alice", "bob", "carol", "dave"])
        gid = await m.group_of("alice", ["bob", "carol", "dave"])
        await m.groups["dave"].send(gid, "before")
        m.settle()
        old_version = m.groups["dave"].resolve(gid).state.version
        await m.groups["alice"].remove(gid, "dave")
        m.deliver()
        self.assertTrue([p for e, p in m.events["dave"] if e == "group.removed"])
        await m.groups["bob"].send(gid, "after")
        self.assertEqual([r for _, r, _ in m.outbox if r == KEYS["dave"].uid], [])
        m.settle()
        self.assertEqual(m.bodies("dave", gid), ["before"])
        with self.assertRaises(InvalidInput):
            await m.groups["dave"].send(gid, "still here?")
        group = m.groups["dave"].resolve(gid)
        late = write_message(
            KEYS["dave"],
            group.group_id,
            seq=2,
            prev_hash=group.log.head(KEYS["dave"].public_bytes).hash,  # type: ignore[union-attr]
            state_version=old_version,
            created=2,
            body=b"after removal",
        )
        payload = encode_payload(KIND_MESSAGE, encode_message(late))
        for name in ("alice", "bob", "carol"):
            m.groups[name].payload_received(KEYS["dave"].uid, payload)
            self.assertEqual(m.bodies(name, gid), ["before", "after"])


class RestoredRemovedMemberTests(TestCase):
    """A removed member restored from a backup taken before its removal is told."""

    async def test_restored_member_told_of_its_removal_and_nothing_later(self) -> None:
        """When dave's store is restored from a copy taken before alice removed him (and
        alice renamed the group after), then dave believes he is a member and writes; the
        members answer with the removal state only (not the later rename), so dave shows
        group.removed, is marked left and refuses to send, and nobody shows his message."""
        m = Members(self, ["alice", "bob", "carol", "dave"])
        gid = await m.group_of("alice", ["bob", "carol", "dave"])
        await m.groups["dave"].send(gid, "before")
        m.settle()
        backup = dict(m.stores["dave"].rows)
        removed = await m.groups["alice"].remove(gid, "dave")
        m.settle()
        await m.groups["alice"].rename(gid, name="after dave")
        m.settle()
        self.assertTrue(m.groups["dave"].resolve(gid).left)
        m.stores["dave"].rows = backup
        m.restart("dave")
        m.events["dave"].clear()
        self.assertFalse(m.groups["dave"].resolve(gid).left)
        await m.groups["dave"].send(gid, "ghost")
        held_for_dave = []
        while m.outbox:  # deliver dave's message; hold what is sent back to him
            entry = m.outbox.pop(0)
            if entry[1] == KEYS["dave"].uid:
                held_for_dave.append(entry)
            else:
                m.groups[m.by_uid[entry[1]]].payload_received(entry[0], entry[2])
        m.outbox[:] = held_for_dave
        told = [
            parse_state(parse_payload(p)[1])
            for _s, r, p in m.outbox
            if r == KEYS["dave"].uid and parse_payload(p)[0] == KIND_STATE
        ]
        self.assertEqual({s.version for s in told}, {removed["version"]})
        m.settle()
        dave = m.groups["dave"].resolve(gid)
        self.assertTrue(dave.left)
        self.assertEqual(dave.state.version, removed["version"])
        self.assertNotEqual(dave.state.name, "after dave")
        self.assertTrue([p for e, p in m.events["dave"] if e == "group.removed"])
        listed = next(v for v in m.groups["dave"].list_groups() if v["id"] == gid)
        self.assertTrue(listed["left"])
        with self.assertRaises(InvalidInput):
            await m.groups["dave"].send(gid, "still here?")
        for name in ("alice", "bob", "carol"):
            self.assertEqual(m.bodies(name, gid), ["before"])
            self.assertEqual(m.groups[name].resolve(gid).state.name, "after dave")

    async def test_telling_is_rate_limited(self) -> None:
        """When a removed member sends bob the same old summary 20 times, then bob answers
        with the removal state REMOVED_TELLS times only, not again within
        REMOVED_TELL_WINDOW seconds, and REMOVED_TELLS times more after it."""
        m = Members(self, ["alice", "bob", "dave"])
        gid = await m.group_of("alice", ["bob", "dave"])
        group = m.groups["dave"].resolve(gid)
        await m.groups["dave"]._send_summary(group, [KEYS["bob"].uid])
        summary = m.outbox.pop()[2]
        self.assertEqual(parse_payload(summary)[0], KIND_SUMMARY)
        await m.groups["alice"].remove(gid, "dave")
        m.deliver()
        m.outbox.clear()

        def tells() -> int:
            return sum(
                1
                for s, r, p in m.outbox
                if s == KEYS["bob"].uid
                and r == KEYS["dave"].uid
                and parse_payload(p)[0] == KIND_STATE
            )

        for _ in range(20):
            m.groups["bob"].payload_received(KEYS["dave"].uid, summary)
        self.assertEqual(tells(), REMOVED_TELLS)
        m.clock.advance(REMOVED_TELL_WINDOW / 2)
        m.groups["bob"].payload_received(KEYS["dave"].uid, summary)
        self.assertEqual(tells(), REMOVED_TELLS)
        m.clock.advance(REMOVED_TELL_WINDOW / 2)
        for _ in range(20):
            m.groups["bob"].payload_received(KEYS["dave"].uid, summary)
        self.assertEqual(tells(), 2 * REMOVED_TELLS)


class GapTests(TestCase):
    """Withholding is detected and filled from a third member."""

    async def test_withheld_message_filled_from_a_third(self) -> None:
        """When alice's first message never reaches carol (withheld), then carol, seeing
        alice's second, asks the others with her summary and bob's copy fills the gap: carol
        shows both, in the order alice and bob show."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        await m.groups["alice"].send(gid, "one")

        def withhold(sender: str, recipient: str, payload: bytes) -> bool:
            kind, record = parse_payload(payload)
            return (
                recipient == KEYS["carol"].uid
                and kind == KIND_MESSAGE
                and parse_message(record).body == b"one"
            )

        m.deliver(drop=withhold)
        self.assertEqual(m.bodies("carol", gid), [])
        await m.groups["alice"].send(gid, "two")
        m.deliver(drop=withhold)
        self.assertEqual(m.bodies("carol", gid), [])  # "two" waits for "one"
        self.assertTrue(m.groups["carol"].resolve(gid).log.gaps())
        # Alice withholds "one" from carol for good; carol's gap timer asks, bob answers.
        m.clock.advance(GAP_DELAY)
        m.deliver(drop=lambda s, r, p: s == KEYS["alice"].uid and withhold(s, r, p))
        self.assertEqual(m.bodies("carol", gid), ["one", "two"])
        self.assertEqual(m.bodies("bob", gid), ["one", "two"])


class LeaveTests(TestCase):
    """A member leaves."""

    async def test_leaving_member_tells_everyone_then_gets_nothing(self) -> None:
        """When carol leaves, then every member holds the state without her, the members stay
        her group peers (so the news reaches those who are not her contacts), and a message
        written after is queued to nobody but the remaining members."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        await m.groups["carol"].leave(gid)
        self.assertTrue(m.groups["carol"].is_peer(KEYS["bob"].uid))
        m.settle()
        for name in ("alice", "bob"):
            state = m.groups[name].resolve(gid).state
            self.assertIsNone(state.member(KEYS["carol"].uid))
        self.assertTrue(m.groups["carol"].resolve(gid).left)
        await m.groups["bob"].send(gid, "after carol left")
        self.assertEqual({r for _, r, _ in m.outbox}, {KEYS["alice"].uid})
        with self.assertRaises(InvalidInput):
            await m.groups["bob"].leave(gid, to="alice")  # only the founder hands over


class RenameAndRoleTests(TestCase):
    """Rename, topic and roles through :class:`Groups` (groups.rename, setTopic, setRole)."""

    async def test_founder_renames_and_sets_topic_everyone_sees_it(self) -> None:
        """When the founder renames the group and sets its topic, then every member holds
        the new name and topic at the new version and got a group.changed event with them."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        view = await m.groups["alice"].rename(gid, name="family")
        self.assertEqual(view["name"], "family")
        view = await m.groups["alice"].rename(gid, topic="sunday lunch")
        m.settle()
        for name in ("alice", "bob", "carol"):
            state = m.groups[name].resolve("family").state
            self.assertEqual((state.name, state.topic, state.version), view_tuple(view))
            changed = [p["group"] for e, p in m.events[name] if e == "group.changed"]
            last = changed[-1]
            self.assertEqual((last["name"], last["topic"]), ("family", "sunday lunch"))

    async def test_plain_member_cannot_rename_until_made_admin(self) -> None:
        """When a plain member tries to rename, then it is refused and nothing changes; once
        the founder makes them admin they can set the topic, and once demoted they cannot."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        version = m.groups["bob"].resolve(gid).state.version
        with self.assertRaises(InvalidInput):
            await m.groups["bob"].rename(gid, name="bob's group")
        with self.assertRaises(InvalidInput):
            await m.groups["bob"].set_role(gid, "carol", "admin")  # only the founder appoints
        self.assertEqual(m.groups["bob"].resolve(gid).state.version, version)
        self.assertEqual(m.outbox, [])

        result = await m.groups["alice"].set_role(gid, "bob", "admin")
        self.assertEqual((result["member"], result["role"]), (KEYS["bob"].uid, "admin"))
        m.settle()
        members = m.groups["carol"].members(gid)["members"]
        roles = {x["uid"]: x["role"] for x in members}
        self.assertEqual(roles[KEYS["bob"].uid], "admin")
        await m.groups["bob"].rename(gid, topic="bob's topic")
        m.settle()
        self.assertEqual(m.groups["carol"].resolve(gid).state.topic, "bob's topic")

        await m.groups["alice"].set_role(gid, KEYS["bob"].uid, "member")
        m.settle()
        with self.assertRaises(InvalidInput):
            await m.groups["bob"].rename(gid, topic="again")
        self.assertEqual(m.groups["alice"].resolve(gid).state.topic, "bob's topic")

    async def test_bad_role_and_founder_role_refused(self) -> None:
        """When asked for an unknown role or to change the founder's role, then InvalidInput."""
        m = Members(self, ["alice", "bob"])
        gid = await m.group_of("alice", ["bob"])
        with self.assertRaises(InvalidInput):
            await m.groups["alice"].set_role(gid, "bob", "founder")
        with self.assertRaises(InvalidInput):
            await m.groups["alice"].set_role(gid, "alice", "member")
        with self.assertRaises(InvalidInput):
            await m.groups["alice"].rename(gid)


def view_tuple(view: dict[str, Any]) -> tuple[str, str, int]:
    return (view["name"], view["topic"], view["version"])


class UnreadTests(TestCase):
    """Unread counts are stored."""

    async def test_unread_survives_restart_and_mark_read_sticks(self) -> None:
        """When bob has 3 unread messages and restarts, then he still has 3; marked read and
        restarted, 0; one more message, 1 (also after a restart); his own messages never
        count."""
        m = Members(self, ["alice", "bob"])
        gid = await m.group_of("alice", ["bob"])

        def unread() -> int:
            return int(m.groups["bob"].list_groups()[0]["unread"])

        for text in ("one", "two", "three"):
            await m.groups["alice"].send(gid, text)
        await m.groups["bob"].send(gid, "mine")
        m.settle()
        self.assertEqual(unread(), 3)
        m.restart("bob")
        self.assertEqual(unread(), 3)
        self.assertEqual(sorted(m.bodies("bob", gid)), ["mine", "one", "three", "two"])
        self.assertEqual(await m.groups["bob"].mark_read(gid), {"group": gid, "unread": 0})
        m.restart("bob")
        self.assertEqual(unread(), 0)
        await m.groups["alice"].send(gid, "four")
        m.settle()
        self.assertEqual(unread(), 1)
        m.restart("bob")
        self.assertEqual(unread(), 1)


class MuteTests(TestCase):
    """A group muted on one device: stored, ours only."""

    async def test_a_muted_group_raises_no_notice_and_stays_muted_after_a_restart(self) -> None:
        """When bob mutes the group, then its view says so (group.changed tells his clients),
        alice's messages there no longer give a notice (before: the group's name; his own
        never do); after a restart it is still muted; unmuted, alice's give notices again;
        alice's view of the group never says muted (she is not told)."""
        m = Members(self, ["alice", "bob"])
        gid = await m.group_of("alice", ["bob"])
        bob = m.groups["bob"]
        alices = {"group": gid, "author": KEYS["alice"].uid, "body": "hi"}
        own = {"group": gid, "author": KEYS["bob"].uid, "body": "mine"}
        self.assertEqual((bob.notice_for(alices), bob.notice_for(own)), ("team", None))
        self.assertIsNone(bob.notice_for({"group": "zz", "author": KEYS["alice"].uid}))
        view = await bob.set_muted(gid, True)
        self.assertTrue(view["muted"])
        self.assertEqual(m.events["bob"][-1], ("group.changed", {"group": view}))
        self.assertIsNone(bob.notice_for(alices))
        m.restart("bob")
        self.assertTrue(bob.list_groups()[0]["muted"])
        self.assertIsNone(bob.notice_for(alices))
        self.assertFalse((await bob.set_muted(gid, False))["muted"])
        m.restart("bob")
        self.assertEqual(bob.notice_for(alices), "team")
        self.assertFalse(m.groups["alice"].list_groups()[0]["muted"])


def group_body(kind: int, record: bytes) -> bytes:
    """A 1:1 message body carrying a group payload, as a member's daemon sends it."""
    return encode_body(encode_payload(kind, record))


class NonContactMemberTests(TestCase):
    """A member who is not a contact, against a real :class:`~jarvis.core.node.Node` (real
    store and courier; the sessions are recording fakes)."""

    async def test_chat_dropped_group_taken_session_forgotten_after_removal(self) -> None:
        """When carol (in bob's group with alice, not alice's contact) sends alice a chat
        message over her group session, then alice stores, announces and acknowledges
        nothing and carol does not become a contact, while carol's group message is shown;
        when bob removes carol, then alice forgets carol (the network closes her sessions)
        and carol's later sessions carry nothing."""
        node, clock, events, bob = await node_with_bob(self)
        carol = IdentityKey.generate()
        alice_key = node.own_card().public_key
        v1 = found_group(bob, "club")
        v2 = state_invite(v1, bob, carol.public_bytes, addresses=b"192.0.2.10:7770")
        v3 = state_invite(v2, bob, alice_key, addresses=b"")
        bob_session = FakeSession(bob.uid)
        await turned(clock, node.session_established(bob_session))
        body = group_body(KIND_INVITE, encode_chain([v1, v2, v3]))
        await turned(clock, node.message_received(bob_session, os.urandom(16), body, 1))
        invites = node.groups.invites()
        self.assertEqual([i["name"] for i in invites], ["club"])
        await turned(clock, node.groups.join(invites[0]["id"]))
        self.assertTrue(node.groups.is_peer(carol.uid))
        network = node.networks[-1]  # type: ignore[attr-defined]
        self.assertIn(("connect", carol.uid), network.calls)

        carol_session = FakeSession(carol.uid)
        await turned(clock, node.session_established(carol_session))
        chat_id = os.urandom(16)
        await turned(clock, node.message_received(carol_session, chat_id, b"add me?", 2))
        clock.advance(0)
        self.assertNotIn("message.received", [name for name, _ in events])
        self.assertNotIn(chat_id, carol_session.acks)
        self.assertIsNone(node.contacts.get(carol.uid))
        self.assertNotIn(carol.uid, await node.unread_counts())

        hello = write_message(
            carol, v1.group_id, seq=1, prev_hash=NO_HASH, state_version=3, created=3, body=b"hi"
        )
        hello_id = os.urandom(16)
        body = group_body(KIND_MESSAGE, encode_message(hello))
        await turned(clock, node.message_received(carol_session, hello_id, body, 3))
        clock.advance(0)
        self.assertIn(hello_id, carol_session.acks)
        self.assertEqual(m_bodies(node, v1.group_id.hex()), ["hi"])

        v4 = state_remove(v3, bob, carol.uid, last_seq=1)
        body = group_body(KIND_STATE, encode_state(v4))
        await turned(clock, node.message_received(bob_session, os.urandom(16), body, 4))
        self.assertFalse(node.groups.is_peer(carol.uid))
        self.assertIn(("forget", carol.uid), network.calls)
        late_session = FakeSession(carol.uid)
        await turned(clock, node.session_established(late_session))
        late = group_body(KIND_MESSAGE, encode_message(hello))
        await turned(clock, node.message_received(late_session, os.urandom(16), late, 5))
        clock.advance(0)
        self.assertEqual(late_session.acks, [])
        self.assertEqual(late_session.sent, [])


def m_bodies(node: Any, gid: str) -> list[str]:
    return [m["body"] for m in node.groups.history(gid, limit=100)["messages"]]


class DepartingPeerTests(TestCase):
    """The remover keeps the removed member as a peer only until it was told."""

    async def test_removed_member_dropped_once_told(self) -> None:
        """When alice removes carol, then carol stays alice's group peer until the entry
        carrying the removal is delivered to carol (message.stateChanged), then not; bob, who
        only received the removal, drops carol at once."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        await m.groups["alice"].remove(gid, "carol")
        self.assertTrue(m.groups["alice"].is_peer(KEYS["carol"].uid))
        m.deliver()
        self.assertFalse(m.groups["bob"].is_peer(KEYS["carol"].uid))
        state = m.groups["alice"].resolve(gid).state
        entry = state_hash(state)[:16].hex()
        m.groups["alice"].event_seen(
            "message.stateChanged",
            {"id": entry, "contact": KEYS["bob"].uid, "state": "delivered"},
        )
        self.assertTrue(m.groups["alice"].is_peer(KEYS["carol"].uid))
        m.groups["alice"].event_seen(
            "message.stateChanged",
            {"id": entry, "contact": KEYS["carol"].uid, "state": "delivered"},
        )
        self.assertFalse(m.groups["alice"].is_peer(KEYS["carol"].uid))
        self.assertTrue(m.groups["alice"].is_peer(KEYS["bob"].uid))


class ConcurrentChangeTests(TestCase):
    """Two admins change the group at once: every member keeps the same version."""

    async def make(self) -> tuple[Members, str, Any, Any]:
        """Alice's group of five with bob and carol admins; bob renames and carol sets the
        topic at the same version.  :returns: the members, the group id, both states."""
        m = Members(self, ["alice", "bob", "carol", "dave", "eve"])
        gid = await m.group_of("alice", ["bob", "carol", "dave", "eve"])
        await m.groups["alice"].set_role(gid, "bob", "admin")
        await m.groups["alice"].set_role(gid, "carol", "admin")
        m.settle()
        await m.groups["bob"].rename(gid, name="bob's name")
        await m.groups["carol"].rename(gid, topic="carol's topic")
        by_bob = m.groups["bob"].resolve(gid).state
        by_carol = m.groups["carol"].resolve(gid).state
        self.assertEqual(by_bob.version, by_carol.version)
        self.assertNotEqual(state_hash(by_bob), state_hash(by_carol))
        return m, gid, by_bob, by_carol

    def assert_converged(self, m: Members, gid: str, winner: Any) -> Any:
        """Every member holds the same chain: *winner* at its version, then the losing
        admin's change made again on top, so both changes hold (bob's name, carol's topic).
        :returns: the state they all hold."""
        final = m.groups["alice"].resolve(gid).state
        for name, g in m.groups.items():
            group = g.resolve(gid)
            self.assertEqual(state_hash(group.state), state_hash(final), name)
            self.assertIn(winner, group.states, name)
        self.assertEqual(final.version, winner.version + 1)
        self.assertEqual((final.name, final.topic), ("bob's name", "carol's topic"))
        return final

    async def test_direct_exchange_converges_on_preferred(self) -> None:
        """When both states reach everyone in any order, then every member holds the one
        `preferred` picks (the lower hash: neither is the founder's), the other admin
        included, and that admin makes its change again on top (both changes hold); a
        message written after reaches everyone."""
        m, gid, by_bob, by_carol = await self.make()
        m.settle()
        winner = preferred(by_bob, by_carol)
        final = self.assert_converged(m, gid, winner)
        loser = "carol" if winner is by_bob else "bob"
        changed = [p["group"] for e, p in m.events[loser] if e == "group.changed"]
        self.assertEqual((changed[-1]["name"], changed[-1]["topic"]), (final.name, final.topic))
        await m.groups["dave"].send(gid, "after the race")
        m.settle()
        for name in m.groups:
            self.assertEqual(m.bodies(name, gid), ["after the race"])

    async def test_summary_state_hash_converges_when_the_states_never_crossed(self) -> None:
        """When no state reaches the admin whose change loses (every copy to it is dropped),
        then the others converge and the keepalive summaries, which carry the state hash,
        bring that admin over: all hold `preferred`, then that admin's change made again;
        the same after a restart of both admins (the store holds both states of that
        version)."""
        m, gid, by_bob, by_carol = await self.make()
        winner = preferred(by_bob, by_carol)
        loser = "carol" if winner is by_bob else "bob"

        def to_loser(sender: str, recipient: str, payload: bytes) -> bool:
            return recipient == KEYS[loser].uid and parse_payload(payload)[0] == KIND_STATE

        m.deliver(drop=to_loser)
        self.assertNotEqual(state_hash(m.groups[loser].resolve(gid).state), state_hash(winner))
        for _ in range(4):  # keepalives (each member to one random member), then delivery
            m.clock.advance(3600 * 1.5)
            m.settle()
        self.assert_converged(m, gid, winner)
        m.restart("bob")
        m.restart("carol")
        self.assert_converged(m, gid, winner)


def forged_ahead(held: Any, version: int, signer: IdentityKey, name: str = "x") -> Any:
    """A state *signer* signs for *version* (beyond the next one) of the group of *held*."""
    return _sign(replace(held, version=version, prev_hash=os.urandom(32), name=name), signer)


class HostileBufferTests(TestCase):
    """A hostile member cannot fill another member's memory through the group buffers."""

    async def test_forged_future_states_are_capped_and_the_real_chain_still_comes(self) -> None:
        """When bob (a plain member) sends carol 200 forged states of versions beyond the
        next one, then carol keeps at most MAX_AHEAD_PER_SENDER of them, none further than
        MAX_STATES_AHEAD versions ahead; alice's two real changes, delivered in the wrong
        order, are still taken, and carol's sync brings the rest: carol holds alice's
        state."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        carol = m.groups["carol"]
        held = carol.resolve(gid).state
        for version in range(held.version + 2, held.version + 202):
            payload = encode_payload(
                KIND_STATE, encode_state(forged_ahead(held, version, KEYS["bob"]))
            )
            carol.payload_received(KEYS["bob"].uid, payload)
        group = carol.resolve(gid)
        kept = [v for by_version in group.ahead.values() for v in by_version]
        self.assertLessEqual(len(kept), MAX_AHEAD_PER_SENDER)
        self.assertLessEqual(max(kept), held.version + MAX_STATES_AHEAD)
        self.assertEqual(group.state, held)
        await m.groups["alice"].rename(gid, name="one")
        await m.groups["alice"].rename(gid, name="two")
        to_carol = [e for e in m.outbox if e[1] == KEYS["carol"].uid]
        m.outbox[:] = [e for e in m.outbox if e[1] != KEYS["carol"].uid]
        for sender, _recipient, payload in reversed(to_carol):  # "two" first
            carol.payload_received(sender, payload)
        self.assertEqual(carol.resolve(gid).state.name, "two")
        self.assertEqual(carol.resolve(gid).state, m.groups["alice"].resolve(gid).state)
        m.settle()
        await m.groups["bob"].send(gid, "still fine")
        m.settle()
        self.assertEqual(m.bodies("carol", gid), ["still fine"])

    async def test_messages_naming_unknown_states_are_capped(self) -> None:
        """When bob sends carol 2,000 signed messages naming state versions carol does not
        hold (most too far ahead, the rest beyond the parking budget), then carol parks at
        most MAX_PARKED of them, within MAX_PARKED_BYTES, none naming a version further than
        MAX_STATES_AHEAD; alice's real message is still shown."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        carol = m.groups["carol"]
        group = carol.resolve(gid)
        held = group.state.version
        for i in range(2000):
            message = write_message(
                KEYS["bob"],
                group.group_id,
                seq=1,
                prev_hash=NO_HASH,
                state_version=held + 1 + i % (4 * MAX_STATES_AHEAD),
                created=i,
                body=b"x" * 4000,
            )
            carol.payload_received(
                KEYS["bob"].uid, encode_payload(KIND_MESSAGE, encode_message(message))
            )
        self.assertLessEqual(len(group.parked), MAX_PARKED)
        self.assertLessEqual(sum(len(p.body) for p in group.parked), MAX_PARKED_BYTES)
        self.assertTrue(group.parked)
        self.assertLessEqual(max(p.state_version for p in group.parked), held + MAX_STATES_AHEAD)
        await m.groups["alice"].send(gid, "real")
        m.deliver()
        self.assertEqual(m.bodies("carol", gid), ["real"])

    async def test_messages_ahead_of_a_gap_are_capped_in_bytes(self) -> None:
        """When bob sends carol 300 of his messages of the largest body after a gap (his
        first never sent), then carol buffers at most MAX_BUFFERED_BYTES_PER_AUTHOR of them
        (not 300 x 16 KiB); once his first message comes, those buffered are shown in
        order."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        carol = m.groups["carol"]
        group = carol.resolve(gid)
        written = []
        prev = NO_HASH
        for seq in range(1, 302):
            message = write_message(
                KEYS["bob"],
                group.group_id,
                seq=seq,
                prev_hash=prev,
                state_version=group.state.version,
                created=seq,
                body=bytes([65 + seq % 26]) * MAX_BODY_BYTES,
            )
            prev = message_hash(message)
            written.append(message)
        for message in written[1:]:
            carol.payload_received(
                KEYS["bob"].uid, encode_payload(KIND_MESSAGE, encode_message(message))
            )
        buffered = group.log._buffer[KEYS["bob"].public_bytes]
        held = sum(group_log.held_size(b) for b in buffered.values())
        self.assertLessEqual(held, group_log.MAX_BUFFERED_BYTES_PER_AUTHOR)
        self.assertTrue(buffered)
        carol.payload_received(
            KEYS["bob"].uid, encode_payload(KIND_MESSAGE, encode_message(written[0]))
        )
        shown = [m.seq for m in group.log.shown()]
        self.assertEqual(shown, list(range(1, len(shown) + 1)))
        self.assertGreater(len(shown), 1)

    async def test_deposits_waiting_for_a_member_are_capped(self) -> None:
        """When 100 deposits from unknown keys wait for a group's next state, then only
        MAX_MEMBER_WAITS wait (the rest are dropped at once: False), and the next state
        wakes the waiting ones (True)."""
        m = Members(self, ["alice", "bob"])
        gid = await m.group_of("alice", ["bob"])
        group_id = bytes.fromhex(gid)
        results: list[bool] = []
        for _ in range(100):
            m.groups["bob"].wait_for_members(group_id).addCallback(results.append)
        self.assertEqual(results, [False] * (100 - MAX_MEMBER_WAITS))
        await m.groups["alice"].rename(gid, name="next")
        m.deliver()
        self.assertEqual(results[100 - MAX_MEMBER_WAITS :], [True] * MAX_MEMBER_WAITS)


class LostBranchTests(TestCase):
    """Members already further on the branch that loses switch to the preferred one."""

    async def test_members_further_on_the_lost_branch_switch_and_changes_are_made_again(
        self,
    ) -> None:
        """When bob and carol (admins) change the group at once and the admin whose change
        loses is cut off from the other (with everything it sends or receives held back),
        and it then makes a second change (a rename) that alice, dave and eve take on top of
        the losing one, then once everything flows again every member (those two versions
        further on the losing branch included) holds the same chain: the preferred change at
        its version, then the losing admin's two changes made again on top; the same after a
        restart of everyone; and a message written after reaches everyone."""
        m = Members(self, ["alice", "bob", "carol", "dave", "eve"])
        gid = await m.group_of("alice", ["bob", "carol", "dave", "eve"])
        await m.groups["alice"].set_role(gid, "bob", "admin")
        await m.groups["alice"].set_role(gid, "carol", "admin")
        m.settle()
        await m.groups["bob"].rename(gid, name="bob's name")
        await m.groups["carol"].rename(gid, topic="carol's topic")
        by_bob = m.groups["bob"].resolve(gid).state
        by_carol = m.groups["carol"].resolve(gid).state
        winner = preferred(by_bob, by_carol)
        winning = "bob" if winner is by_bob else "carol"
        losing = "carol" if winning == "bob" else "bob"
        held: list[tuple[str, str, bytes]] = []

        def cut_off(sender: str, recipient: str, payload: bytes) -> bool:
            if KEYS[winning].uid in (sender, recipient):
                held.append((sender, recipient, payload))
                return True
            return False

        m.deliver(drop=cut_off)
        await m.groups[losing].rename(gid, name=f"second from {losing}")
        m.deliver(drop=cut_off)
        further = m.groups["alice"].resolve(gid).state
        self.assertEqual(further.version, winner.version + 1)  # on the losing branch
        self.assertEqual(further.name, f"second from {losing}")
        for name in ("alice", "dave", "eve", losing):
            self.assertNotIn(winner, m.groups[name].resolve(gid).states)
        m.outbox[:0] = held
        m.settle()
        for _ in range(4):  # keepalives, then delivery
            m.clock.advance(3600 * 1.5)
            m.settle()
        final = m.groups[winning].resolve(gid).state
        for name, g in m.groups.items():
            group = g.resolve(gid)
            self.assertEqual(state_hash(group.state), state_hash(final), name)
            self.assertEqual(group.states[winner.version - 1], winner, name)
        self.assertEqual((final.name, final.topic), (f"second from {losing}", "carol's topic"))
        for name in m.groups:
            m.restart(name)
            self.assertEqual(state_hash(m.groups[name].resolve(gid).state), state_hash(final))
        await m.groups["dave"].send(gid, "after the branches met")
        m.settle()
        for name in m.groups:
            self.assertEqual(m.bodies(name, gid), ["after the branches met"])


class UnlockOffReactorTests(TestCase):
    """The unlock's Ed25519 work (one signature check per stored group message) runs on the
    thread pool, not on the reactor (task harden 3)."""

    async def test_stored_signatures_checked_on_the_pool_at_unlock(self) -> None:
        """When bob's groups are opened again from a store holding four messages and one
        forged copy (a valid message's body changed, its signature kept), then the signature
        checks are handed to *run_blocking* as one job, none runs on the reactor before or
        after it, the group is rebuilt only once the job's answer came, and the forged copy
        is still refused: bob shows the four real messages."""
        m = Members(self, ["alice", "bob"])
        gid = await m.group_of("alice", ["bob"])
        for text in ("one", "two", "three"):
            await m.groups["alice"].send(gid, text)
        await m.groups["bob"].send(gid, "mine")
        m.settle()
        store = m.stores["bob"]
        real = [parse_message(d) for (k, _), d in store.rows.items() if k == "message"]
        forged = replace(real[0], body=real[0].body + b"!")
        store.rows[("message", b"forged")] = encode_message(forged)
        m.groups["bob"].close()

        jobs: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

        def run_blocking(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            jobs.append((f, args, d))
            return d

        reactor_checks: list[bytes] = []
        real_verify = group_log.verify_message

        def counting(message: Any) -> None:
            reactor_checks.append(message.body)
            real_verify(message)

        self.patch(group_log, "verify_message", counting)
        bob = Groups(
            clock=m.clock,
            now=lambda: 1_800_000_000.0,
            emit=lambda e, p: None,
            courier=FakeCourier(KEYS["bob"].uid, m.outbox),
            contacts=FakeContacts(),
            keepalive=3600.0,
            run_blocking=run_blocking,
        )
        self.addCleanup(bob.close)
        opened = bob.open(store, KEYS["bob"], ["127.0.0.1:1"])  # type: ignore[arg-type]
        self.assertNoResult(opened)
        self.assertEqual(len(jobs), 1)
        f, args, d = jobs[0]
        handed = sorted(msg.body for msg in args[0])
        self.assertEqual(handed, sorted([*(r.body for r in real), forged.body]))
        self.assertEqual(reactor_checks, [])
        self.assertEqual(bob.resolve(gid).log.shown(), [])  # nothing offered before the answer
        d.callback(f(*args))  # the pool's work, run here
        self.successResultOf(opened)
        # only the forged copy is checked again on the reactor (refused and logged in turn)
        self.assertEqual(reactor_checks, [forged.body])
        shown = [msg.body for msg in bob.resolve(gid).log.shown()]
        self.assertEqual(sorted(shown), sorted(r.body for r in real))
        self.assertNotIn(forged.body, shown)


def strangers(m: Members, name: str, *others: str) -> None:
    """Make *others* not contacts of *name* (they meet only through the group)."""
    for other in others:
        del m.groups[name]._contacts.by_uid[KEYS[other].uid]


def author_names(m: Members, name: str, gid: str) -> list[tuple[str, str, str]]:
    items = m.groups[name].history(gid, limit=100)["messages"]
    return [(i["author"], i["author_name"], i["body"]) for i in items]


def shown_members(m: Members, name: str, gid: str) -> dict[str, tuple[str, str]]:
    members = m.groups[name].members(gid)["members"]
    return {x["uid"]: (x["name"], x["display_name"]) for x in members}


class DisplayNameTests(TestCase):
    """Members who are not contacts are shown by the name they chose, marked unverified."""

    NAMES = {"alice": "Alice", "bob": "Bob", "carol": "Carol"}

    async def test_non_contact_shown_by_own_name_contact_by_petname(self) -> None:
        """When bob (not carol's contact) writes to the group, then carol's history and member
        list show him as ~Bob with his uid as author, while alice (carol's contact) keeps the
        name carol gave her, not the one she chose; every member's state carries all names."""
        m = Members(self, ["alice", "bob", "carol"], self.NAMES)
        strangers(m, "carol", "bob")
        gid = await m.group_of("alice", ["bob", "carol"])
        await m.groups["bob"].send(gid, "hi from bob")
        m.settle()
        await m.groups["alice"].send(gid, "hi from alice")
        m.settle()
        bob, alice = KEYS["bob"].uid, KEYS["alice"].uid
        self.assertEqual(
            author_names(m, "carol", gid),
            [(bob, "~Bob", "hi from bob"), (alice, "alice", "hi from alice")],
        )
        listed = shown_members(m, "carol", gid)
        self.assertEqual(listed[bob], ("~Bob", "Bob"))
        self.assertEqual(listed[alice], ("alice", "Alice"))
        self.assertEqual(listed[KEYS["carol"].uid], ("me", "Carol"))
        for name in ("alice", "bob", "carol"):
            state = m.groups[name].resolve(gid).state
            self.assertEqual(
                sorted(x.display_name for x in state.members), ["Alice", "Bob", "Carol"]
            )

    async def test_member_posing_as_a_contact_is_marked_with_its_uid(self) -> None:
        """When bob, not carol's contact, calls himself "alice" (the name of carol's contact
        alice), then carol sees him as ~alice plus his short uid, and alice as alice: the
        chosen name never stands for a contact."""
        m = Members(self, ["alice", "bob", "carol"], {**self.NAMES, "bob": "alice"})
        strangers(m, "carol", "bob")
        gid = await m.group_of("alice", ["bob", "carol"])
        await m.groups["bob"].send(gid, "it's me, alice")
        m.settle()
        bob = KEYS["bob"].uid
        self.assertEqual(
            author_names(m, "carol", gid), [(bob, f"~alice ({bob[:8]})", "it's me, alice")]
        )
        listed = shown_members(m, "carol", gid)
        self.assertEqual(listed[KEYS["alice"].uid][0], "alice")
        self.assertEqual(listed[bob][0], f"~alice ({bob[:8]})")

    async def test_member_changes_its_name(self) -> None:
        """When bob's daemon starts with another name, then he signs his own entry again and
        carol shows him by the new name; a member without a name shows as a uid prefix."""
        m = Members(self, ["alice", "bob", "carol"], {**self.NAMES, "bob": ""})
        strangers(m, "carol", "bob")
        gid = await m.group_of("alice", ["bob", "carol"])
        bob = KEYS["bob"].uid
        self.assertEqual(shown_members(m, "carol", gid)[bob], (bob[:12], ""))
        m.display_names["bob"] = "Robert \u202eevil\x1b[2J"
        m.restart("bob")
        m.settle()
        self.assertEqual(shown_members(m, "carol", gid)[bob], ("~Robert evil[2J", "Robert evil[2J"))
        self.assertEqual(m.groups["alice"].resolve(gid).state.version, 5)


class FounderLeavesTests(TestCase):
    """The founder leaves by handing the founder role over in the same state."""

    async def test_founder_hands_over_to_longest_standing_then_new_founder_acts(self) -> None:
        """When alice (founder) leaves a group of alice, bob and carol (no admins), then bob,
        the longest-standing member, is the founder on every member, alice is gone and holds
        nothing new; bob then invites dave and renames the group, and carol and dave agree."""
        m = Members(self, ["alice", "bob", "carol", "dave"])
        gid = await m.group_of("alice", ["bob", "carol"])
        left = await m.groups["alice"].leave(gid)
        self.assertEqual(left["founder"], KEYS["bob"].uid)
        m.settle()
        self.assertTrue(m.groups["alice"].resolve(gid).left)
        for name in ("bob", "carol"):
            state = m.groups[name].resolve(gid).state
            self.assertEqual(state.founder.uid, KEYS["bob"].uid)
            self.assertIsNone(state.member(KEYS["alice"].uid))
        await m.groups["bob"].invite(gid, "dave")
        m.deliver()
        await m.groups["dave"].join(m.groups["dave"].invites()[-1]["id"])
        m.settle()
        await m.groups["bob"].rename(gid, name="kin")
        m.settle()
        views = {n: m.groups[n].resolve(gid).state for n in ("bob", "carol", "dave")}
        self.assertEqual(
            {(s.name, s.version, s.founder.uid) for s in views.values()},
            {("kin", 6, KEYS["bob"].uid)},
        )
        self.assertEqual(m.groups["alice"].resolve(gid).state.version, 4)

    async def test_founder_hands_over_to_named_member_or_admin(self) -> None:
        """When carol is an admin, alice's leaving hands over to her (an admin before a
        longer-standing member); with --to bob it goes to bob; alone, the founder cannot
        leave and a non-member is refused."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        await m.groups["alice"].set_role(gid, "carol", "admin")
        m.settle()
        with self.assertRaises(NotFound):
            await m.groups["alice"].leave(gid, to="dave")
        left = await m.groups["alice"].leave(gid, to="bob")
        m.settle()
        self.assertEqual(left["founder"], KEYS["bob"].uid)
        self.assertEqual(m.groups["carol"].resolve(gid).state.founder.uid, KEYS["bob"].uid)

        m2 = Members(self, ["alice", "bob", "carol"])
        gid2 = await m2.group_of("alice", ["bob", "carol"])
        await m2.groups["alice"].set_role(gid2, "carol", "admin")
        m2.settle()
        left = await m2.groups["alice"].leave(gid2)
        self.assertEqual(left["founder"], KEYS["carol"].uid)
        alone = str((await m2.groups["bob"].create("solo"))["id"])
        with self.assertRaises(InvalidInput):
            await m2.groups["bob"].leave(alone)


def hold_first_state_write(store: FakeStore) -> list[defer.Deferred[Any]]:
    """Make *store* hold back its next write of group states until the test fires the
    Deferred it puts in the returned list (a state still being stored); later writes go on."""
    held: list[defer.Deferred[Any]] = []
    real_run = store.run

    def run(fn: Any, *args: Any, write: bool, **kwargs: Any) -> defer.Deferred[Any]:
        if fn is group_queries.put_group_records and args[0][0][0] == "state" and not held:
            d: defer.Deferred[Any] = defer.Deferred()
            held.append(d)
            return d.addCallback(lambda _: real_run(fn, *args, write=write, **kwargs))
        return real_run(fn, *args, write=write, **kwargs)

    store.run = run  # type: ignore[method-assign]
    return held


class AnnouncedOnceTests(TestCase):
    """A message is announced once even when a concurrent state replaces ours meanwhile."""

    async def test_send_while_a_preferred_state_is_stored(self) -> None:
        """When bob's own state loses to alice's concurrent one and bob sends a message while
        alice's state is still being stored, then bob's daemon announces that message once
        (group.message), and his history holds it once."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob"])
        await m.groups["bob"]._change(
            m.groups["bob"].resolve(gid),
            lambda s: state_set_addresses(s, KEYS["bob"], KEYS["bob"].uid, b"elsewhere"),
        )
        m.outbox.clear()  # alice never gets bob's version: hers wins anyway (the founder's)
        await m.groups["alice"].invite(gid, "carol")
        held = hold_first_state_write(m.stores["bob"])
        states = [p for s, r, p in m.outbox if r == KEYS["bob"].uid]
        for payload in states:
            m.groups["bob"].payload_received(KEYS["alice"].uid, payload)
        self.assertEqual(len(held), 1)  # bob is replacing his head, the store not done yet
        await m.groups["bob"].send(gid, "while replacing")
        held[0].callback(None)
        announced = [p["message"]["body"] for e, p in m.events["bob"] if e == "group.message"]
        self.assertEqual(announced.count("while replacing"), 1)
        self.assertEqual(m.bodies("bob", gid), ["while replacing"])


class SwitchRaceTests(TestCase):
    """A state that arrives while a branch switch is being stored counts."""

    async def test_reinvited_during_a_switch_stays_a_member(self) -> None:
        """When carol joined on a branch that loses (bob's own change, then alice's invitation
        of carol) and, while her switch to the preferred branch (dave's own change, on which
        carol is not yet a member) is still being stored, the next version arrives (alice's
        invitation of carol made again), then carol ends on that version as a member, not as
        a member who left (she kept syncing and receiving; before, she stayed "left" for good
        and never saw another message)."""
        m = Members(self, ["alice", "bob", "carol", "dave"])
        gid = await m.group_of("alice", ["bob", "dave"])
        alice = m.groups["alice"].resolve(gid)
        base = alice.state
        by_bob = state_set_addresses(base, KEYS["bob"], KEYS["bob"].uid, b"bob elsewhere")
        by_dave = state_set_addresses(base, KEYS["dave"], KEYS["dave"].uid, b"dave elsewhere")
        winner = preferred(by_bob, by_dave)
        loser = by_dave if winner is by_bob else by_bob
        carol_key = KEYS["carol"].public_bytes
        lost_invite = state_invite(loser, KEYS["alice"], carol_key)
        won_invite = state_invite(winner, KEYS["alice"], carol_key)
        m.outbox.clear()
        chain = [*alice.states, loser, lost_invite]
        carol = m.groups["carol"]
        carol.payload_received(KEYS["alice"].uid, encode_payload(KIND_INVITE, encode_chain(chain)))
        await carol.join(carol.invites()[-1]["id"])
        self.assertEqual(carol.resolve(gid).state, lost_invite)
        held = hold_first_state_write(m.stores["carol"])
        for state in (winner, won_invite):
            carol.payload_received(
                KEYS["alice"].uid, encode_payload(KIND_STATE, encode_state(state))
            )
        self.assertEqual(len(held), 1)  # the switch to the winner is still being stored
        held[0].callback(None)
        group = carol.resolve(gid)
        self.assertEqual(group.state, won_invite)
        self.assertFalse(group.left)
        self.assertFalse(carol.list_groups()[0]["left"])
        await carol.send(gid, "still here")
        to_others = {r for s, r, p in m.outbox if s == KEYS["carol"].uid}
        self.assertEqual(to_others, {KEYS[n].uid for n in ("alice", "bob", "dave")})


class FileRecipientsTests(TestCase):
    """Who a file sent into a group goes to, and whose group offers a member takes."""

    async def test_recipients_and_shared_membership_follow_the_state(self) -> None:
        """When alice, bob and carol share a group, then a file alice sends into it goes to bob
        and carol, and bob takes a group offer from carol but not from a stranger nor into
        another group; once carol left, bob no longer takes hers and carol takes none, and a
        group whose only member is its founder has nobody to send a file to."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        raw = bytes.fromhex(gid)
        alice, bob, carol = (KEYS[n].uid for n in ("alice", "bob", "carol"))
        got_gid, uids = m.groups["alice"].file_recipients("team")
        self.assertEqual((got_gid, sorted(uids)), (raw, sorted([bob, carol])))
        self.assertTrue(m.groups["bob"].shares(raw, carol))
        self.assertFalse(m.groups["bob"].shares(raw, "s" * 52))
        self.assertFalse(m.groups["bob"].shares(b"\x00" * 16, carol))
        self.assertFalse(m.groups["bob"].shares(raw, bob))  # ourselves
        await m.groups["carol"].leave(gid)
        m.settle()
        self.assertFalse(m.groups["bob"].shares(raw, carol))
        self.assertFalse(m.groups["carol"].shares(raw, alice))
        self.assertEqual(sorted(m.groups["alice"].file_recipients(gid)[1]), [bob])
        await m.groups["bob"].create("solo")
        with self.assertRaises(InvalidInput):
            m.groups["bob"].file_recipients("solo")


class SharedFileRecordTests(TestCase):
    """A file shared into a group is a group message: in every member's history, shown in
    words with a ``file`` field, and the record a member asks the author by."""

    async def test_the_record_reaches_the_history_and_names_its_author(self) -> None:
        """When alice shares a file into a group with bob, then both histories hold one
        message saying "shared a file: NAME (SIZE)" with its name, size, media type and
        hash; bob finds it by an id prefix with alice as its author, while alice cannot ask
        herself for it, a text message is no shared file, a too-short prefix names nothing,
        and a text starting with NUL (which could pose as a record) is refused."""
        m = Members(self, ["alice", "bob"])
        gid = await m.group_of("alice", ["bob"])
        shared = SharedFile("plan.pdf", 3 * 1024 * 1024, b"\x33" * 32, "application/pdf", 1 << 23)
        view = await m.groups["alice"].share_file(bytes.fromhex(gid), shared)
        text = await m.groups["alice"].send(gid, "see the plan")
        m.settle()
        for name in ("alice", "bob"):
            items = m.groups[name].history(gid)["messages"]
            [item] = [i for i in items if i["id"] == view["id"]]
            self.assertEqual(item["body"], "shared a file: plan.pdf (3.0 MiB)")
            self.assertEqual(
                item["file"],
                {
                    "name": "plan.pdf",
                    "size": 3 * 1024 * 1024,
                    "media_type": "application/pdf",
                    "hash": "33" * 32,
                },
            )
            [said] = [i for i in items if i["id"] == text["id"]]
            self.assertIsNone(said["file"])
        got = m.groups["bob"].shared_file(gid, view["id"][:10])
        self.assertEqual(got, (bytes.fromhex(gid), KEYS["alice"].uid, shared))
        with self.assertRaises(InvalidInput):
            m.groups["alice"].shared_file(gid, view["id"])
        with self.assertRaises(InvalidInput):
            m.groups["bob"].shared_file(gid, text["id"])
        with self.assertRaises(NotFound):
            m.groups["bob"].shared_file(gid, view["id"][:6])
        with self.assertRaises(InvalidInput):
            await m.groups["bob"].send(gid, "\x00jarvis/shared-file/v1\x00")

    async def test_an_author_who_left_is_not_asked(self) -> None:
        """When the member who shared a file has left the group, then it is not named as the
        member to ask (its daemon would drop the request unanswered: other members are
        asked instead); asking a named member still works."""
        m = Members(self, ["alice", "bob", "carol"])
        gid = await m.group_of("alice", ["bob", "carol"])
        shared = SharedFile("notes.txt", 10, b"\x44" * 32, "text/plain", 1 << 16)
        view = await m.groups["bob"].share_file(bytes.fromhex(gid), shared)
        m.settle()
        await m.groups["bob"].leave(gid)
        m.settle()
        self.assertEqual(
            m.groups["carol"].shared_file(gid, view["id"]), (bytes.fromhex(gid), "", shared)
        )
        got = m.groups["carol"].shared_file(gid, view["id"], KEYS["alice"].uid)
        self.assertEqual(got[1:], (KEYS["alice"].uid, shared))
