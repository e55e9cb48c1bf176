"""End to end: private groups between real twistd daemons (issue 17, docs/groups.md).

Each test starts its daemons as child processes, drives them through the real local API and
waits for the events it expects.  What each test tries and what must survive is in its docstring.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from jarvis.core.transfers import OFFER_IN_MAILBOX
from jarvis.ipc.jsonrpc import RemoteError
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


async def history_of_at_least(peer: Peer, gid: str, count: int) -> list[dict[str, Any]]:
    """*peer*'s group history once it holds *count* messages (checked after each event)."""
    while True:
        seen = len(peer.recorder.named("group.message"))
        items = await history(peer, gid)
        if len(items) >= count:
            return items
        await peer.recorder.wait(
            lambda seen=seen: len(peer.recorder.named("group.message")) > seen, 60
        )


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
        await history_of_at_least(alice, gid, 2)
        orders = [[m["id"] for m in await history(p, gid)] for p in (alice, bob, carol)]
        self.assertEqual(len(orders[0]), 2)
        self.assertEqual(orders[0], orders[1])
        self.assertEqual(orders[0], orders[2])
        items = await history(bob, gid)
        self.assertEqual(
            [(m["author"], m["body"], m["seq"]) for m in items],
            [(bob.uid, "hello from bob", 1), (carol.uid, "hello from carol", 1)],
        )
        with self.assertRaises(RemoteError):  # a chat text cannot pose as a group payload
            await bob.call("messages.send", contact=alice.uid, text="\x00jarvis-group\x00AQ==")
        bob_contacts = await bob.call("contacts.list")
        self.assertNotIn(carol.uid, [c["uid"] for c in bob_contacts["contacts"]])
        members = await carol.call("groups.members", group=gid)
        self.assertEqual(
            sorted(m["uid"] for m in members["members"]), sorted([alice.uid, bob.uid, carol.uid])
        )


async def found_with(founder: Peer, members: list[Peer], name: str) -> str:
    """*founder* befriends every member, founds group *name* and brings them all in; returns
    the group id once every member holds the last state (each member's invitation, then the
    version in which the member publishes its own display name)."""
    await defer.gatherResults([defer.ensureDeferred(befriend(founder, m)) for m in members])
    gid = str((await founder.call("groups.create", name=name))["id"])
    for done, member in enumerate(members, 1):
        await invite_and_join(founder, gid, member)

        def named(done: int = done) -> bool:
            return any(
                p["group"]["id"] == gid and p["group"]["version"] == 1 + 2 * done
                for p in founder.recorder.named("group.changed")
            )

        await founder.recorder.wait(named, 60)
    version = 1 + 2 * len(members)

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

        async def write(sender: Peer, count: int) -> None:
            for first in range(0, count, 50):  # 50 calls in flight per sender
                await defer.gatherResults(
                    [
                        sender.call("groups.send", group=gid, text=f"{sender.name} {i}")
                        for i in range(first, min(count, first + 50))
                    ]
                )

        await defer.gatherResults(
            [defer.ensureDeferred(write(s, n)) for s, n in zip(senders, counts, strict=True)]
        )
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


async def until_version(peer: Peer, gid: str, version: int) -> None:
    """Wait until *peer* announced group *gid* at *version* (or later)."""

    def check() -> bool:
        return any(
            p["group"]["id"] == gid and p["group"]["version"] >= version
            for p in peer.recorder.named("group.changed")
        )

    await peer.recorder.wait(check, 60)


class GroupNamesAndFounderTests(TestCase):
    timeout = 240

    async def test_names_shown_and_founder_leaves_new_founder_acts(self) -> None:
        """When alice founds a group with bob and carol (her contacts, not each other's) and
        bob writes, then carol shows him as ~bob (the name he chose, unverified) with his uid
        as author; when alice (the founder) leaves, then bob (the longest-standing member)
        is the founder on every member; bob invites dave (his contact) and renames the group,
        and bob, carol and dave agree on name, version, founder and members, while alice has
        left and holds the hand-over version."""
        alice, bob, carol, dave = await start_peers(self, ["alice", "bob", "carol", "dave"])
        gid = await found_with(alice, [bob, carol], "names")
        await bob.call("groups.send", group=gid, text="hi from bob")
        await carol.recorder.wait(lambda: group_bodies(carol, gid) == ["hi from bob"], 60)
        items = await history(carol, gid)
        self.assertEqual([(m["author"], m["author_name"]) for m in items], [(bob.uid, "~bob")])
        listed = await carol.call("groups.members", group=gid)
        shown = {m["uid"]: (m["name"], m["display_name"]) for m in listed["members"]}
        self.assertEqual(shown[bob.uid], ("~bob", "bob"))
        self.assertEqual(shown[alice.uid], ("alice", "alice"))  # a contact: carol's name

        left = await alice.call("groups.leave", group=gid)
        self.assertEqual(left["founder"], bob.uid)
        for peer in (bob, carol):
            await until_version(peer, gid, left["version"])
            members = (await peer.call("groups.members", group=gid))["members"]
            roles = {m["uid"]: m["role"] for m in members}
            self.assertEqual(roles, {bob.uid: "founder", carol.uid: "member"})
        await befriend(bob, dave)
        await invite_and_join(bob, gid, dave)
        await until_version(bob, gid, left["version"] + 2)  # dave's own name, signed by dave
        renamed = await bob.call("groups.rename", group=gid, name="kin")
        version = renamed["version"]
        self.assertEqual(version, left["version"] + 3)
        views = []
        for peer in (bob, carol, dave):
            await until_version(peer, gid, version)
            group = next(g for g in (await peer.call("groups.list"))["groups"] if g["id"] == gid)
            members = (await peer.call("groups.members", group=gid))["members"]
            views.append(
                (group["name"], group["version"], sorted((m["uid"], m["role"]) for m in members))
            )
        expected = sorted([(bob.uid, "founder"), (carol.uid, "member"), (dave.uid, "member")])
        self.assertEqual(views, [("kin", version, expected)] * 3)
        mine = next(g for g in (await alice.call("groups.list"))["groups"] if g["id"] == gid)
        self.assertTrue(mine["left"])
        self.assertEqual(mine["version"], left["version"])


class GroupOfflineTests(TestCase):
    timeout = 300

    async def test_offline_member_catches_up_while_author_is_offline(self) -> None:
        """When carol is stopped while bob writes, and bob is stopped before carol returns,
        then carol catches up from alice (a third member): she shows all of bob's messages
        once, in bob's order, as alice does."""
        alice, bob, carol = await start_peers(self, ["alice", "bob", "carol"])
        gid = await found_with(alice, [bob, carol], "offline")
        await carol.stop()
        bodies = [f"while carol is away {i}" for i in range(20)]
        for text in bodies:
            await bob.call("groups.send", group=gid, text=text)
        await alice.recorder.wait(lambda: group_bodies(alice, gid) == bodies, 60)
        await bob.stop()
        await carol.start(unlock=True)
        await carol.recorder.wait(lambda: len(group_bodies(carol, gid)) >= 20, 60)
        carol_items = await history(carol, gid)
        self.assertEqual([m["body"] for m in carol_items], bodies)
        self.assertEqual(
            [m["id"] for m in carol_items], [m["id"] for m in await history(alice, gid)]
        )

    async def test_kill_9_of_members_loses_and_doubles_nothing(self) -> None:
        """When a receiving member (carol) is killed with SIGKILL in the middle of 300
        messages and restarted, and the sender (bob) is killed right after its last send was
        answered and restarted, then every member shows all 300 exactly once, in one order."""
        alice, bob, carol, dave = await start_peers(self, ["alice", "bob", "carol", "dave"])
        gid = await found_with(alice, [bob, carol, dave], "kill")
        bodies = [f"m {i}" for i in range(300)]
        first = [bob.call("groups.send", group=gid, text=t) for t in bodies[:150]]
        await carol.recorder.wait(lambda: len(group_bodies(carol, gid)) >= 20, 60)
        await carol.kill()
        await defer.gatherResults(first)
        await defer.gatherResults(
            [bob.call("groups.send", group=gid, text=t) for t in bodies[150:]]
        )
        await bob.kill()
        await defer.gatherResults(
            [
                defer.ensureDeferred(bob.start(unlock=True)),
                defer.ensureDeferred(carol.start(unlock=True)),
            ]
        )
        others = [alice, bob, carol, dave]

        histories = [await history_of_at_least(p, gid, 300) for p in others]
        for items in histories:
            self.assertEqual(len(items), 300)
            self.assertEqual([m["body"] for m in items], bodies)
            self.assertEqual([m["seq"] for m in items], list(range(1, 301)))
        for items in histories[1:]:
            self.assertEqual([m["id"] for m in items], [m["id"] for m in histories[0]])


class GroupCliTests(TestCase):
    timeout = 180

    async def test_group_commands_as_a_user_types_them(self) -> None:
        """When alice and bob use the ``jarvis group`` commands against real daemons, then
        create prints the group id, the invitation reaches bob's daemon and is listed with an
        id, join, send, history (JSON items with id, author, body, seq), members and remove
        work, bob mutes and unmutes the group (alice is not told), a removed member's send
        fails with one line (exit 1), and the founder left
        alone cannot leave (nobody to hand the group to; `leave --help` documents --to); bob's
        ``group send-file --wait`` answers with alice's transfer complete once she accepted it
        with ``accept``, and her copy is identical; ``group send-file`` with three paths, one
        missing, offers the two others into the group and says which failed."""
        from jarvis.common import paths
        from jarvis.ipc.client import IpcClient
        from tests.peers import EventRecorder
        from tests.test_e2e_cli import Cli, write

        root = short_tempdir(self)
        pw = write(os.path.join(root, "pw"), "secret one\n")
        alice, bob = Cli(root, "alice"), Cli(root, "bob")
        self.addCleanup(alice.run, "daemon", "stop")
        self.addCleanup(bob.run, "daemon", "stop")
        for cli, name in ((alice, "Alice"), (bob, "Bob")):
            await cli.ok("daemon", "start", "--listen", "tcp:0:interface=127.0.0.1")
            await cli.ok("init", "--name", name, "--password-file", pw)
        me_a, me_b = await alice.json("whoami"), await bob.json("whoami")
        await alice.ok("add", me_b["link"])
        await bob.ok("add", me_a["link"])

        gid = (await alice.ok("group", "create", "family")).strip()
        self.assertEqual(len(gid), 32)
        int(gid, 16)
        listed = await alice.json("group", "list")
        self.assertEqual([(g["id"], g["name"]) for g in listed], [(gid, "family")])
        said = await alice.ok("group", "invite", "family", "Bob")
        self.assertEqual(said.strip(), f"invited Bob ({me_b['uid'][:12]}) to family")
        # the 1:1 stream is in order: once this is delivered, the invitation was handled
        await alice.ok("send", "Bob", "barrier", "--wait", "delivered")
        invites = await bob.json("group", "invites")
        self.assertEqual([(i["group"], i["name"]) for i in invites], [(gid, "family")])
        joined = await bob.json("group", "join", invites[0]["id"])
        self.assertEqual(joined["id"], gid)

        await bob.ok("group", "send", gid, "hello family")
        await bob.ok("send", "Alice", "barrier", "--wait", "delivered")
        items = await alice.json("group", "history", "family", "--limit", "10")
        self.assertEqual(
            [(m["author"], m["body"], m["seq"]) for m in items],
            [(me_b["uid"], "hello family", 1)],
        )
        self.assertEqual(len(items[0]["id"]), 32)
        self.assertIn("hello family", await alice.ok("group", "history", "family"))
        members = await bob.json("group", "members", "family")
        self.assertEqual(sorted(m["uid"] for m in members), sorted([me_a["uid"], me_b["uid"]]))

        # a file into the group: bob waits on the command line while alice accepts hers
        seen = EventRecorder()
        client = await IpcClient.connect(reactor, paths.client_endpoint_for(alice.data_dir))
        self.addCleanup(client.close)
        await client.subscribe(seen)
        menu = write(os.path.join(root, "menu.txt"), "soup\n" * 1000)
        waiting = defer.ensureDeferred(
            bob.run("--json", "group", "send-file", "family", menu, "--wait")
        )
        await seen.wait(lambda: bool(seen.named("transfer.offered")), 60)
        offer = seen.named("transfer.offered")[0]["transfer"]
        self.assertEqual((offer["group"], offer["name"]), (gid, "menu.txt"))
        inbox = os.path.join(root, "inbox")
        await alice.ok("accept", offer["id"][:8], "--to", inbox)
        code, out, err = await waiting
        self.assertEqual(code, 0, err)
        sent = json.loads(out)
        self.assertEqual(sent["group"], gid)
        self.assertEqual(
            [(t["contact"], t["state"]) for t in sent["transfers"]], [(me_a["uid"], "complete")]
        )
        with open(os.path.join(inbox, "menu.txt"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "soup\n" * 1000)
        self.assertIn("menu.txt", await bob.ok("files"))
        # two files and a missing one into the group in one command
        lists = [write(os.path.join(root, f"list{i}.txt"), f"item {i}\n") for i in (1, 2)]
        missing = os.path.join(root, "missing.txt")
        code, out, err = await bob.run(
            "--json", "group", "send-file", "family", lists[0], missing, lists[1]
        )
        self.assertEqual(code, 1)
        sent = json.loads(out)
        self.assertEqual(
            [(t["name"], t["contact"]) for t in sent["transfers"]],
            [("list1.txt", me_a["uid"]), ("list2.txt", me_a["uid"])],
        )
        self.assertEqual(len(sent["messages"]), 2)
        self.assertEqual([f["path"] for f in sent["failed"]], [missing])
        await seen.wait(lambda: len(seen.named("transfer.offered")) == 3, 60)

        role = await alice.json("group", "role", "family", "Bob", "admin")
        self.assertEqual((role["member"], role["role"]), (me_b["uid"], "admin"))
        await alice.ok("send", "Bob", "barrier 1", "--wait", "delivered")
        self.assertIn("topic: sunday lunch", await bob.ok("group", "topic", gid, "sunday lunch"))
        await bob.ok("send", "Alice", "barrier 1a", "--wait", "delivered")
        renamed = await alice.json("group", "rename", gid, "relatives")
        self.assertEqual(renamed["name"], "relatives")
        await alice.ok("send", "Bob", "barrier 1b", "--wait", "delivered")
        listed = await bob.json("group", "list")
        self.assertEqual([(g["name"], g["topic"]) for g in listed], [("relatives", "sunday lunch")])
        self.assertIn("relatives: muted", await bob.ok("group", "mute", "relatives"))
        self.assertIn("(muted)", await bob.ok("group", "list"))
        self.assertFalse((await alice.json("group", "list"))[0]["muted"])  # she is not told
        self.assertFalse((await bob.json("group", "unmute", gid))["muted"])
        code, _out, err = await bob.run("group", "role", "relatives", "Alice", "admin")
        self.assertEqual(code, 1)  # only the founder gives roles, and not to itself
        code, _out, _err = await bob.run("group", "role", "relatives", "Alice", "boss")
        self.assertEqual(code, 2)

        removed = await alice.json("group", "remove", "relatives", me_b["uid"])
        self.assertEqual(removed["removed"], me_b["uid"])
        await alice.ok("send", "Bob", "barrier 2", "--wait", "delivered")
        self.assertTrue((await bob.json("group", "list"))[0]["left"])
        code, _out, err = await bob.run("group", "send", "relatives", "still here?")
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("no longer a member", err)
        code, _out, err = await alice.run("group", "leave", "relatives")
        self.assertEqual(code, 1)  # the founder alone has nobody to hand the group to
        self.assertIn("nobody to hand the group to", err)
        self.assertIn("--to", await alice.ok("group", "leave", "--help"))
        code, _out, _err = await alice.run("group")
        self.assertEqual(code, 2)


class GroupDeliveryTests(TestCase):
    timeout = 240

    async def test_delivered_to_n_of_m_per_member(self) -> None:
        """When alice writes to a group of four while dave's daemon is stopped, then her
        history says delivered to 2 of 3 with a group.delivery event per member that stored
        it (naming bob and carol, never dave); after a restart of alice it still says 2 of 3,
        and once dave returns it says 3 of 3.  Other authors' messages carry no counts."""
        alice, bob, carol, dave = await start_peers(self, ["alice", "bob", "carol", "dave"])
        gid = await found_with(alice, [bob, carol, dave], "delivery")
        await bob.call("groups.send", group=gid, text="from bob")
        await alice.recorder.wait(lambda: group_bodies(alice, gid) == ["from bob"], 60)
        await dave.stop()
        sent = await alice.call("groups.send", group=gid, text="to everyone")
        self.assertEqual((sent["delivered"], sent["members"]), (0, 3))
        mid = sent["id"]

        def deliveries() -> list[dict[str, Any]]:
            return [p for p in alice.recorder.named("group.delivery") if p["id"] == mid]

        def delivered_to() -> set[str]:
            return {
                p["contact"]
                for p in alice.recorder.named("message.stateChanged")
                if p["id"] == mid and p["state"] == "delivered"
            }

        # group.delivery is emitted while the entry's message.stateChanged is: wait for both
        await alice.recorder.wait(lambda: len(deliveries()) >= 2 and len(delivered_to()) >= 2, 60)
        self.assertEqual(
            [(p["group"], p["delivered"], p["members"]) for p in deliveries()],
            [(gid, 1, 3), (gid, 2, 3)],
        )
        self.assertEqual(delivered_to(), {bob.uid, carol.uid})
        items = {m["id"]: m for m in await history(alice, gid)}
        self.assertEqual((items[mid]["delivered"], items[mid]["members"]), (2, 3))
        bob_item = next(m for m in items.values() if m["body"] == "from bob")
        self.assertEqual((bob_item["delivered"], bob_item["members"]), (None, None))
        bob_view = {m["id"]: m for m in await history(bob, gid)}[mid]
        self.assertEqual((bob_view["delivered"], bob_view["members"]), (None, None))

        await alice.stop()
        await alice.start(unlock=True)
        items = {m["id"]: m for m in await history(alice, gid)}
        self.assertEqual((items[mid]["delivered"], items[mid]["members"]), (2, 3))

        await dave.start(unlock=True)
        await alice.recorder.wait(lambda: any(p["delivered"] == 3 for p in deliveries()), 90)
        items = {m["id"]: m for m in await history(alice, gid)}
        self.assertEqual((items[mid]["delivered"], items[mid]["members"]), (3, 3))


#: The folder whose ``sitecustomize`` makes a daemon deposit a chat message into a group queue.
CHAT_HOOK = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "hooks", "group_chat_depositor"
)


async def group_version(peer: Peer, gid: str) -> int:
    listed = await peer.call("groups.list")
    return int(next(g["version"] for g in listed["groups"] if g["id"] == gid))


class GroupMailboxTests(TestCase):
    timeout = 300

    async def test_members_never_online_together_exchange_through_the_mailbox(self) -> None:
        """When fred founds a group with bob and carol (his contacts, not each other's, each
        on their own mailbox), and bob and carol are never online at the same time, then what
        carol writes reaches bob through his group queue and what bob writes reaches carol
        through hers, each returning while every other member is stopped; all three end with
        every message once, in the same order, and neither becomes the other's contact.  A chat
        message bob's daemon also deposits into carol's group queue (sealed with his real key,
        tests/hooks/group_chat_depositor) is refused: carol receives and stores nothing from
        him but group traffic."""
        from tests.daemons import REPO
        from tests.mailboxes import start_mailbox, until

        root = short_tempdir(self)
        boxes = [await start_mailbox(self, os.path.join(root, f"m{i}")) for i in range(3)]
        fred, bob, carol = (Peer(self, root, name) for name in ("fred", "bob", "carol"))
        # bob also deposits a chat message into carol's group queue (tests/hooks)
        bob.process.env = {"PYTHONPATH": CHAT_HOOK + os.pathsep + REPO}

        async def on_mailbox(peer: Peer, box: Any) -> None:
            await peer.call("mailbox.use", link=str(box.link()))

        async def reaching(peer: Peer, contacts: int) -> None:
            async def reachable() -> bool:
                status = await peer.call("mailbox.status")
                return bool(status["connected"] and status["contacts_reachable"] == contacts)

            await until(reachable, what=f"{peer.name} knows its contacts' mailboxes")

        async def at_version(peer: Peer, version: int) -> None:
            async def check() -> bool:
                return await group_version(peer, gid) >= version

            await until(check, what=f"{peer.name} at group version {version}")

        def deposited_to(peer: Peer, uid: str) -> set[str]:
            return {
                p["id"]
                for p in peer.recorder.named("message.stateChanged")
                if p.get("via") == "mailbox" and p["contact"] == uid and p["state"] == "sent"
            }

        # fred and bob: contacts, each on a mailbox; the group; bob publishes his group queue
        await fred.start(create=True)
        await bob.start(create=True)
        await befriend(fred, bob)
        await on_mailbox(fred, boxes[0])
        await on_mailbox(bob, boxes[1])
        await reaching(fred, 1)
        await reaching(bob, 1)
        gid = str((await fred.call("groups.create", name="club"))["id"])
        await at_version(fred, 2)  # fred's own group queue in his entry
        await invite_and_join(fred, gid, bob)  # version 3
        await at_version(fred, 4)  # bob's group queue in his entry, signed by bob
        await at_version(bob, 4)
        await bob.stop()

        # carol, fred's contact only, joins while bob is stopped; she writes, fred writes
        await carol.start(create=True)
        await befriend(fred, carol)
        await on_mailbox(carol, boxes[2])
        await reaching(fred, 2)
        await reaching(carol, 1)
        await invite_and_join(fred, gid, carol)  # version 5
        await at_version(fred, 6)  # carol's group queue, signed by carol
        await at_version(carol, 6)
        sent = await carol.call("groups.send", group=gid, text="carol while bob is away")
        await fred.recorder.wait(lambda: "carol while bob is away" in group_bodies(fred, gid), 60)
        too = await fred.call("groups.send", group=gid, text="fred too")
        await carol.recorder.wait(lambda: "fred too" in group_bodies(carol, gid), 60)
        # carol's entry for bob went into bob's group queue (bob is not her contact), fred's
        # into bob's queue for fred (after the state that added carol, in outbox order)
        await carol.recorder.wait(lambda: sent["id"] in deposited_to(carol, bob.uid), 60)
        await fred.recorder.wait(lambda: too["id"] in deposited_to(fred, bob.uid), 60)
        await carol.stop()
        await fred.stop()

        # bob returns alone: everything comes from his mailbox; he answers into carol's
        await bob.start(unlock=True)
        await history_of_at_least(bob, gid, 2)
        answer = await bob.call("groups.send", group=gid, text="bob answers")
        await bob.recorder.wait(lambda: answer["id"] in deposited_to(bob, carol.uid), 60)
        await bob.recorder.wait(lambda: answer["id"] in deposited_to(bob, fred.uid), 60)
        await bob.process.wait_for(b"test hook: chat deposited in a group queue", 60)
        bob_order = [m["id"] for m in await history(bob, gid)]
        await bob.stop()

        # carol returns alone, then fred
        await carol.start(unlock=True)
        carol_items = await history_of_at_least(carol, gid, 3)
        await fred.start(unlock=True)
        fred_items = await history_of_at_least(fred, gid, 3)

        self.assertEqual(
            sorted(m["body"] for m in carol_items),
            ["bob answers", "carol while bob is away", "fred too"],
        )
        self.assertEqual(len(set(bob_order)), 3)
        self.assertEqual([m["id"] for m in carol_items], bob_order)
        self.assertEqual([m["id"] for m in fred_items], bob_order)
        carol_contacts = await carol.call("contacts.list")
        self.assertNotIn(bob.uid, [c["uid"] for c in carol_contacts["contacts"]])
        # bob's chat deposit in her group queue was refused: nothing received or stored
        await carol.process.wait_for(b"in a group queue: not that group's traffic", 60)
        self.assertEqual(carol.recorder.named("message.received"), [])
        members = await carol.call("groups.members", group=gid)
        self.assertIn(bob.uid, [m["uid"] for m in members["members"]])

    async def test_a_file_crosses_between_members_who_are_not_contacts_never_online_together(
        self,
    ) -> None:
        """When fred founds a group with bob and carol (his contacts, not each other's, each
        on their own mailbox) and carol sends a file into it while bob is stopped, then her
        offer goes into bob's queue for the group and she stops; bob, started alone, finds it
        there and accepts it, and his accept goes into carol's queue for the group while she
        is stopped; carol, started alone, sees her transfer accepted; once both run the file
        streams without anyone acting again and lands byte-identical; bob and carol are still
        not each other's contacts."""
        from tests.mailboxes import accept_while_apart, deposited_to, start_mailbox, until

        root = short_tempdir(self)
        boxes = [await start_mailbox(self, os.path.join(root, f"m{i}")) for i in range(3)]
        fred, bob, carol = (Peer(self, root, name) for name in ("fred", "bob", "carol"))

        async def at_version(peer: Peer, version: int) -> None:
            async def check() -> bool:
                return await group_version(peer, gid) >= version

            await until(check, what=f"{peer.name} at group version {version}")

        async def reaching(peer: Peer, contacts: int) -> None:
            async def reachable() -> bool:
                status = await peer.call("mailbox.status")
                return bool(status["connected"] and status["contacts_reachable"] == contacts)

            await until(reachable, what=f"{peer.name} knows its contacts' mailboxes")

        for peer, box in ((fred, boxes[0]), (bob, boxes[1]), (carol, boxes[2])):
            await peer.start(create=True)
            await peer.call("mailbox.use", link=str(box.link()))
        await befriend(fred, bob)
        await befriend(fred, carol)
        for peer, contacts in ((fred, 2), (bob, 1), (carol, 1)):
            await reaching(peer, contacts)
        gid = str((await fred.call("groups.create", name="club"))["id"])
        await at_version(fred, 2)  # fred's group queue in his entry
        await invite_and_join(fred, gid, bob)
        await at_version(fred, 4)  # bob's group queue, signed by bob
        await invite_and_join(fred, gid, carol)
        for peer in (fred, bob, carol):
            await at_version(peer, 6)  # carol's group queue: every member knows every queue

        await bob.stop()
        await carol.recorder.wait(lambda: not carol.online_with(bob)(), 60)
        path = os.path.join(root, "minutes.odt")
        data = os.urandom(1024 * 1024 + 9)
        with open(path, "wb") as f:
            f.write(data)
        sent = await carol.call("groups.sendFile", group=gid, path=path)
        [to_bob] = [t for t in sent["transfers"] if t["contact"] == bob.uid]
        tid = to_bob["id"]
        self.assertEqual(to_bob["reason"], OFFER_IN_MAILBOX)
        await carol.recorder.wait(lambda: deposited_to(carol, bob), 60)
        await carol.stop()
        inbox = os.path.join(root, "inbox")
        await accept_while_apart(carol, bob, tid, inbox, "minutes.odt", data)
        for peer, other in ((bob, carol), (carol, bob)):
            contacts = (await peer.call("contacts.list"))["contacts"]
            self.assertNotIn(other.uid, [c["uid"] for c in contacts])


def offers_into(peer: Peer, gid: str) -> list[dict[str, Any]]:
    """The transfer.offered views *peer* saw for files sent into group *gid*."""
    return [
        p["transfer"]
        for p in peer.recorder.named("transfer.offered")
        if p["transfer"]["group"] == gid
    ]


def transfer_state(peer: Peer, transfer_id: str) -> str | None:
    for payload in reversed(peer.recorder.named("transfer.changed")):
        if payload["transfer"]["id"] == transfer_id:
            return str(payload["transfer"]["state"])
    return None


class GroupFileTests(TestCase):
    timeout = 240

    async def test_a_file_into_a_group_reaches_every_member_who_accepts(self) -> None:
        """When bob sends a 3 MiB file into a group with alice (his contact) and carol (not
        his contact), then each gets one offer marked with the group and named as the group
        shows the sender; carol accepts hers, alice declines hers, and carol's copy is
        byte-identical; bob sees one transfer per member ending complete and cancelled
        (declined); carol and bob still are not each other's contacts, and carol cannot send
        a file to bob outside the group."""
        alice, bob, carol = await start_peers(self, ["alice", "bob", "carol"])
        gid = await found_with(alice, [bob, carol], "family")  # every name known to all
        path = os.path.join(short_tempdir(self), "photos.tar")
        data = os.urandom(3 * 1024 * 1024 + 17)
        with open(path, "wb") as f:
            f.write(data)
        sent = await bob.call("groups.sendFile", group="family", path=path)
        self.assertEqual(sent["group"], gid)
        by_member = {t["contact"]: t for t in sent["transfers"]}
        self.assertEqual(set(by_member), {alice.uid, carol.uid})
        self.assertTrue(
            all(t["group"] == gid and t["direction"] == "out" for t in by_member.values())
        )
        for peer in (alice, carol):
            await peer.recorder.wait(lambda peer=peer: bool(offers_into(peer, gid)), 60)
        [at_carol] = offers_into(carol, gid)
        [at_alice] = offers_into(alice, gid)
        self.assertEqual(at_carol["id"], by_member[carol.uid]["id"])
        self.assertEqual(at_alice["id"], by_member[alice.uid]["id"])
        self.assertEqual(at_carol["contact"], bob.uid)
        self.assertEqual(at_carol["contact_name"], "~bob")  # bob's chosen name, unverified
        inbox = os.path.join(short_tempdir(self), "inbox")
        await carol.call("files.accept", id=at_carol["id"], directory=inbox)
        await alice.call("files.decline", id=at_alice["id"])
        await carol.recorder.wait(lambda: transfer_state(carol, at_carol["id"]) == "complete", 120)
        with open(os.path.join(inbox, "photos.tar"), "rb") as f:
            self.assertEqual(f.read(), data)
        await bob.recorder.wait(
            lambda: (
                {transfer_state(bob, t) for t in (at_carol["id"], at_alice["id"])}
                == {"complete", "cancelled"}
            ),
            60,
        )
        listed = {t["id"]: t for t in (await bob.call("files.list"))["transfers"]}
        self.assertEqual(listed[at_alice["id"]]["reason"], "declined")
        bob_contacts = await bob.call("contacts.list")
        self.assertNotIn(carol.uid, [c["uid"] for c in bob_contacts["contacts"]])
        with self.assertRaises(RemoteError):
            await carol.call("files.send", contact=bob.uid, path=path)

    async def test_a_later_member_asks_for_a_file_shared_before_it_joined(self) -> None:
        """When bob shares a 2 MiB file into a group with alice (who declines it), then the
        group's history records it ("shared a file", name, size, hash) at both; when carol,
        who is not bob's contact, joins later, the record reaches her with the history, she
        asks for the file (groups.fetchFile), bob offers it to her alone (alice, asked first
        when carol's session with bob is not up yet, does not have it) and it is accepted by
        itself, and her copy is byte-identical; alice, who declined, asks too and gets it;
        once bob changed the file on his disk, a new request is declined ("the file changed
        or is gone at the sender") and nothing lands."""
        alice, bob, carol, gid, root, path, data, sent = await self._bob_shares(
            "report.pdf", 2 * 1024 * 1024 + 5
        )
        [to_alice] = sent["transfers"]
        await alice.call("files.decline", id=to_alice["id"])
        record = await self._shared_in_history(alice, gid, sent["message"])
        self.assertEqual(record["author"], bob.uid)
        self.assertEqual(record["file"]["name"], "report.pdf")
        self.assertEqual(record["file"]["size"], len(data))
        self.assertTrue(record["body"].startswith("shared a file: report.pdf"))

        await befriend(alice, carol)
        await invite_and_join(alice, gid, carol)
        seen = await self._shared_in_history(carol, gid, sent["message"])
        self.assertEqual(seen["file"], record["file"])
        self.assertNotIn(
            carol.uid, [c["uid"] for c in (await bob.call("contacts.list"))["contacts"]]
        )
        inbox = os.path.join(root, "carol-inbox")
        asked = await carol.call(
            "groups.fetchFile", group=gid, message=sent["message"][:12], directory=inbox
        )
        self.assertEqual((asked["state"], asked["group"]), ("requested", gid))
        # bob when carol's session with him is up already, else alice first, who declines
        self.assertIn(asked["contact"], (bob.uid, alice.uid))
        with self.assertRaises(RemoteError):  # one transfer of a file at a time
            await carol.call("groups.fetchFile", group=gid, message=sent["message"])
        await carol.recorder.wait(lambda: transfer_state(carol, asked["id"]) == "complete", 120)
        with open(os.path.join(inbox, "report.pdf"), "rb") as f:
            self.assertEqual(f.read(), data)
        at_bob = {t["id"]: t for t in (await bob.call("files.list"))["transfers"]}
        self.assertEqual(at_bob[asked["id"]]["contact"], carol.uid)
        self.assertEqual(at_bob[asked["id"]]["direction"], "out")

        again = await alice.call(
            "groups.fetchFile",
            group=gid,
            message=sent["message"],
            directory=os.path.join(root, "a"),
        )
        await alice.recorder.wait(lambda: transfer_state(alice, again["id"]) == "complete", 120)
        with open(os.path.join(root, "a", "report.pdf"), "rb") as f:
            self.assertEqual(f.read(), data)

        with open(path, "r+b") as f:
            f.write(b"changed")
        late = os.path.join(root, "late")
        refused = await carol.call(  # bob alone: alice, who now holds it, would serve it
            "groups.fetchFile",
            group=gid,
            message=sent["message"],
            directory=late,
            **{"from": bob.uid},
        )
        await carol.recorder.wait(lambda: transfer_state(carol, refused["id"]) == "cancelled", 60)
        listed = {t["id"]: t for t in (await carol.call("files.list"))["transfers"]}
        self.assertEqual(
            listed[refused["id"]]["reason"],
            "the sender declined: the file changed or is gone at the sender",
        )
        self.assertFalse(os.path.exists(os.path.join(late, "report.pdf")))

    async def test_a_member_who_received_a_file_serves_it_while_its_author_is_away(
        self,
    ) -> None:
        """When bob shares a file into a group, alice receives it complete, and bob stops,
        then carol, who joins later, fetches it without naming anyone (groups.fetchFile): bob
        is away, so alice, online, is asked and serves it byte-identical; the record still
        names bob as its author; asking bob alone (from) meanwhile waits ("requested"), and
        asking alice alone (from) serves it again."""
        alice, bob, carol, gid, root, _path, data, sent = await self._bob_shares(
            "tour.mp4", 3 * 1024 * 1024 + 1
        )
        await self._alice_receives(alice, sent, root)
        await bob.stop()

        await self._carol_joins(alice, bob, carol, gid, sent)
        got = os.path.join(root, "f")
        fetched = await self._fetched(carol, gid, sent, got, "tour.mp4", data)
        self.assertEqual(fetched["contact"], alice.uid)  # bob is away: alice is asked

        waiting = await carol.call(
            "groups.fetchFile",
            group=gid,
            message=sent["message"],
            directory=os.path.join(root, "w"),
            **{"from": bob.uid[:8]},
        )
        self.assertEqual((waiting["state"], waiting["contact"]), ("requested", bob.uid))
        await carol.call("files.cancel", id=waiting["id"])
        got = os.path.join(root, "c")
        asked = await self._fetched(carol, gid, sent, got, "tour.mp4", data, alice.uid[:8])
        self.assertEqual(asked["contact"], alice.uid)

    async def test_a_file_whose_author_left_the_group_comes_from_a_member(self) -> None:
        """When bob shares a file into a group, alice receives it complete and bob leaves the
        group, then carol, who joins later, fetches it without naming anyone: bob (gone) is
        not asked, alice is, and serves it byte-identical; the history still names bob as
        the author."""
        alice, bob, carol, gid, root, _path, data, sent = await self._bob_shares(
            "plans.odt", 1024 * 1024 + 3
        )
        await self._alice_receives(alice, sent, root)
        left = await bob.call("groups.leave", group=gid)
        await until_version(alice, gid, left["version"])

        await self._carol_joins(alice, bob, carol, gid, sent)
        fetched = await self._fetched(carol, gid, sent, os.path.join(root, "c"), "plans.odt", data)
        self.assertEqual(fetched["contact"], alice.uid)
        at_bob = {t["id"] for t in (await bob.call("files.list"))["transfers"]}
        self.assertNotIn(fetched["id"], at_bob)

    async def _alice_receives(self, alice: Peer, sent: dict[str, Any], root: str) -> None:
        """Alice accepts bob's offer of the shared file into ROOT/a and it completes."""
        [to_alice] = sent["transfers"]
        await alice.call("files.accept", id=to_alice["id"], directory=os.path.join(root, "a"))
        await alice.recorder.wait(lambda: transfer_state(alice, to_alice["id"]) == "complete", 120)

    async def _carol_joins(
        self, alice: Peer, bob: Peer, carol: Peer, gid: str, sent: dict[str, Any]
    ) -> None:
        """Carol befriends alice and joins the group; its history reaches her, naming bob as
        the author of the shared file."""
        await befriend(alice, carol)
        await invite_and_join(alice, gid, carol)
        record = await self._shared_in_history(carol, gid, sent["message"])
        self.assertEqual(record["author"], bob.uid)

    async def _fetched(
        self,
        peer: Peer,
        gid: str,
        sent: dict[str, Any],
        folder: str,
        name: str,
        data: bytes,
        holder: str | None = None,
    ) -> dict[str, Any]:
        """*peer* fetches the shared file into *folder* (from *holder* alone when given); once
        complete, its copy is byte-identical.  Returns the fetch's answer (the transfer as it
        was asked)."""
        params = {} if holder is None else {"from": holder}
        view = await peer.call(
            "groups.fetchFile", group=gid, message=sent["message"], directory=folder, **params
        )
        await peer.recorder.wait(lambda: transfer_state(peer, view["id"]) == "complete", 120)
        with open(os.path.join(folder, name), "rb") as f:
            self.assertEqual(f.read(), data)
        return dict(view)

    async def _bob_shares(
        self, name: str, size: int
    ) -> tuple[Peer, Peer, Peer, str, str, str, bytes, dict[str, Any]]:
        """Start alice, bob and carol; alice founds "family" with bob, who shares a file of
        *size* random bytes called *name* into it, and waits until alice's daemon lists the
        offer.  Returns ``(alice, bob, carol, group id, folder, path, data, the
        groups.sendFile answer)``."""
        alice, bob, carol = await start_peers(self, ["alice", "bob", "carol"])
        gid = await found_with(alice, [bob], "family")
        root = short_tempdir(self)
        path = os.path.join(root, name)
        data = os.urandom(size)
        with open(path, "wb") as f:
            f.write(data)
        sent = await bob.call("groups.sendFile", group=gid, path=path)
        await alice.recorder.wait(lambda: bool(offers_into(alice, gid)), 60)
        return alice, bob, carol, gid, root, path, data, sent

    async def _shared_in_history(self, peer: Peer, gid: str, message: str) -> dict[str, Any]:
        """The history item *message* of group *gid* at *peer*, once it holds it."""
        while True:
            seen = len(peer.recorder.named("group.message"))
            items = {m["id"]: m for m in await history(peer, gid)}
            if message in items:
                return items[message]
            await peer.recorder.wait(
                lambda seen=seen: len(peer.recorder.named("group.message")) > seen, 60
            )

    async def test_a_member_removed_or_a_contact_blocked_loses_its_transfers(self) -> None:
        """When bob has offered a file into a group to alice and carol, and one to alice alone,
        and alice, the founder, removes carol before she accepts, then the transfer to carol
        ends cancelled on both sides ("not in the group any more") and she can no longer
        accept it, while both of alice's offers stay open; when alice then blocks bob, her
        offer from him alone ends ("the contact is blocked") and bob is not told, while his
        offer into the group, where he still is a member, stays open."""
        alice, bob, carol = await start_peers(self, ["alice", "bob", "carol"])
        gid = await found_with(alice, [bob, carol], "family")
        path = os.path.join(short_tempdir(self), "plans.pdf")
        with open(path, "wb") as f:
            f.write(os.urandom(256 * 1024))
        sent = await bob.call("groups.sendFile", group=gid, path=path)
        by_member = {t["contact"]: t["id"] for t in sent["transfers"]}
        to_carol, to_alice = by_member[carol.uid], by_member[alice.uid]
        direct = (await bob.call("files.send", contact=alice.uid, path=path))["id"]
        for peer, ids in ((alice, {to_alice, direct}), (carol, {to_carol})):
            await peer.recorder.wait(
                lambda peer=peer, ids=ids: (
                    ids <= {p["transfer"]["id"] for p in peer.recorder.named("transfer.offered")}
                ),
                60,
            )

        async def states(peer: Peer) -> dict[str, tuple[str, str]]:
            listed = (await peer.call("files.list"))["transfers"]
            return {t["id"]: (t["state"], t["reason"]) for t in listed}

        await alice.call("groups.remove", group=gid, member=carol.uid)
        for peer in (bob, carol):
            await peer.recorder.wait(
                lambda peer=peer: transfer_state(peer, to_carol) == "cancelled", 60
            )
            _state, reason = (await states(peer))[to_carol]
            self.assertIn("not in the group any more", reason)
        with self.assertRaises(RemoteError):
            await carol.call("files.accept", id=to_carol)
        at_alice = await states(alice)
        self.assertEqual((at_alice[to_alice][0], at_alice[direct][0]), ("offered", "offered"))

        await alice.call("contacts.update", contact=bob.uid, blocked=True)
        await alice.recorder.wait(lambda: transfer_state(alice, direct) == "cancelled", 30)
        at_alice = await states(alice)
        self.assertEqual(at_alice[direct], ("cancelled", "the contact is blocked"))
        self.assertEqual(at_alice[to_alice][0], "offered")  # a group file: the group decides
        self.assertEqual((await states(bob))[direct][0], "offered")  # bob is not told

    async def test_a_file_into_a_group_of_five_streams_to_three_at_a_time(self) -> None:
        """When alice sends a 48 MiB file into a group of five whose four other members
        auto-accept her files, then every member gets a byte-identical copy, while alice never
        streams to more than three of them at once: the fourth waits with a "queued" reason
        and starts when one ends."""
        peers = await start_peers(self, ["alice", "bob", "carol", "dave", "erin"])
        alice, others = peers[0], peers[1:]
        gid = await found_with(alice, others, "club")
        for peer in others:
            await peer.call("files.policy", contact=alice.uid, auto_accept=64 * 1024 * 1024)
        root = short_tempdir(self)
        path = os.path.join(root, "video.mp4")
        data = os.urandom(48 * 1024 * 1024)
        with open(path, "wb") as f:
            f.write(data)
        for peer in others:  # each receives into its own folder
            await peer.call("files.policy", downloads=os.path.join(root, peer.name))
        sent = await alice.call("groups.sendFile", group=gid, path=path)
        ids = {t["id"] for t in sent["transfers"]}
        self.assertEqual(len(ids), 4)

        def states() -> list[tuple[str, str, str]]:
            return [
                (p["transfer"]["id"], p["transfer"]["state"], p["transfer"]["reason"])
                for p in alice.recorder.named("transfer.changed")
                if p["transfer"]["id"] in ids
            ]

        try:
            await alice.recorder.wait(
                lambda: {i for i, s, _ in states() if s == "complete"} == ids, 180
            )
        except defer.TimeoutError:
            received = {p.name: p.recorder.named("transfer.changed")[-1:] for p in others}
            lines = alice.process.output.decode("utf-8", "replace").splitlines()
            told = [line for line in lines if "transfer" in line or "offer" in line][-40:]
            self.fail(f"not all complete: {states()}\nreceivers: {received}\n" + "\n".join(told))
        running: set[str] = set()
        most = 0
        for tid, state, _reason in states():
            if state == "streaming":
                running.add(tid)
            else:
                running.discard(tid)
            most = max(most, len(running))
        self.assertEqual(most, 3)
        self.assertTrue([r for _i, _s, r in states() if r.startswith("queued: 3 files")])
        for peer in others:
            with open(os.path.join(root, peer.name, "video.mp4"), "rb") as f:
                self.assertEqual(f.read(), data, peer.name)
