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
