"""End to end: private groups between real twistd daemons (issue 17, docs/groups.md).

Each test starts its daemons as child processes, drives them through the real local API and
waits for the events it expects.  What each test tries and what must survive is in its docstring.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.daemons import short_tempdir
from tests.peers import Peer, befriend


async def start_peers(testcase: TestCase, names: list[str]) -> list[Peer]:
    root = short_tempdir(testcase)
    peers = [Peer(testcase, root, name) for name in names]
    await defer.gatherResults([defer.ensureDeferred(p.start(create=True)) for p in peers])
    return peers


def group_bodies(peer: Peer, gid: str) -> list[str]:
    """The bodies of the group.message events *peer* saw for group *gid*, in event order."""
    return [
        p["message"]["body"]
        for p in peer.recorder.named("group.message")
        if p["message"]["group"] == gid
    ]


async def history(peer: Peer, gid: str) -> list[dict[str, Any]]:
    result = await peer.call("groups.history", group=gid, limit=100000)
    return list(result["messages"])


async def invite_and_join(founder: Peer, gid: str, member: Peer) -> None:
    """*founder* invites *member* (a contact), whose daemon gets the invitation and joins."""
    await founder.call("groups.invite", group=gid, contact=member.uid)
    await member.recorder.wait(lambda: bool(member.recorder.named("group.invited")), 30)
    invite = member.recorder.named("group.invited")[-1]["invite"]
    listed = await member.call("groups.invites")
    assert invite["id"] in [i["id"] for i in listed["invites"]]
    await member.call("groups.join", invite=invite["id"])


class GroupBasicsTests(TestCase):
    timeout = 180

    async def test_members_who_are_not_contacts_exchange_messages(self) -> None:
        """When alice founds a group and invites bob and carol (her contacts, who are not each
        other's), then bob and carol each read what the other writes, every message once,
        and all three show the same order; neither becomes the other's contact."""
        alice, bob, carol = await start_peers(self, ["alice", "bob", "carol"])
        await befriend(alice, bob)
        await befriend(alice, carol)
        created = await alice.call("groups.create", name="family")
        gid = created["id"]
        await invite_and_join(alice, gid, bob)
        await invite_and_join(alice, gid, carol)
        await bob.call("groups.send", group="family", text="hello from bob")
        await carol.recorder.wait(lambda: group_bodies(carol, gid) == ["hello from bob"], 60)
        await carol.call("groups.send", group=gid, text="hello from carol")
        await bob.recorder.wait(lambda: "hello from carol" in group_bodies(bob, gid), 60)
        await alice.recorder.wait(lambda: len(group_bodies(alice, gid)) == 2, 60)
        orders = [[m["id"] for m in await history(p, gid)] for p in (alice, bob, carol)]
        self.assertEqual(len(orders[0]), 2)
        self.assertEqual(orders[0], orders[1])
        self.assertEqual(orders[0], orders[2])
        items = await history(bob, gid)
        self.assertEqual(
            [(m["author"], m["body"], m["seq"]) for m in items],
            [(bob.uid, "hello from bob", 1), (carol.uid, "hello from carol", 1)],
        )
        bob_contacts = await bob.call("contacts.list")
        self.assertNotIn(carol.uid, [c["uid"] for c in bob_contacts["contacts"]])
        members = await carol.call("groups.members", group=gid)
        self.assertEqual(
            sorted(m["uid"] for m in members["members"]), sorted([alice.uid, bob.uid, carol.uid])
        )


async def found_with(founder: Peer, members: list[Peer], name: str) -> str:
    """*founder* befriends every member, founds group *name* and brings them all in; returns
    the group id once every member holds the last state."""
    await defer.gatherResults([defer.ensureDeferred(befriend(founder, m)) for m in members])
    gid = str((await founder.call("groups.create", name=name))["id"])
    for member in members:
        await invite_and_join(founder, gid, member)
    version = 1 + len(members)

    async def holds_last(member: Peer) -> None:
        def check() -> bool:
            return any(
                p["group"]["id"] == gid and p["group"]["version"] == version
                for p in member.recorder.named("group.changed")
            )

        await member.recorder.wait(check, 60)

    await defer.gatherResults([defer.ensureDeferred(holds_last(m)) for m in members])
    return gid


class GroupScaleTests(TestCase):
    timeout = 600

    async def test_ten_members_three_senders_thousand_messages(self) -> None:
        """When ten daemons share a group (only the founder is everyone's contact) and three
        members who are not each other's contacts write 1,000 messages concurrently, then
        every member shows every message exactly once, each author's in sequence, and all ten
        show the same order."""
        peers = await start_peers(self, [f"m{i:02d}" for i in range(10)])
        founder, members = peers[0], peers[1:]
        gid = await found_with(founder, members, "ten")
        senders = members[:3]
        counts = [334, 333, 333]
        sends = [
            s.call("groups.send", group=gid, text=f"{s.name} {i}")
            for s, n in zip(senders, counts, strict=True)
            for i in range(n)
        ]
        await defer.gatherResults(sends)
        await defer.gatherResults(
            [p.recorder.wait(lambda p=p: len(group_bodies(p, gid)) >= 1000, 300) for p in peers]
        )
        orders = []
        for p in peers:
            items = await history(p, gid)
            self.assertEqual(len(items), 1000)
            self.assertEqual(len({m["id"] for m in items}), 1000)
            self.assertEqual(sorted(group_bodies(p, gid)), sorted(m["body"] for m in items))
            for s, n in zip(senders, counts, strict=True):
                mine = [m for m in items if m["author"] == s.uid]
                self.assertEqual([m["seq"] for m in mine], list(range(1, n + 1)))
                self.assertEqual([m["body"] for m in mine], [f"{s.name} {i}" for i in range(n)])
            orders.append([m["id"] for m in items])
        for order in orders[1:]:
            self.assertEqual(order, orders[0])
