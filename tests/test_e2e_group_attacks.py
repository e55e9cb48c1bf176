"""End to end: attacks on a private group between real twistd daemons (issue 17).

The in-process tests (``tests/test_groups.py``) put fakes around a real ``Groups``; here every
member is a real ``twistd -n jarvis`` process (real TLS sessions, real SQLite, the real group
code) driven through its local API, as in ``tests/test_e2e_groups.py``.

How the hostile members misbehave: a hostile daemon is started through
``tests/hostile_twistd.py`` (``DaemonProcess.launcher``) instead of plain ``twistd``; that
launcher only adds ``hostile.*`` methods to the daemon's local API (forge a state, replay old
states, withhold one message from one member, write into a group one is not in), each acting
with the daemon's own key through its own durable outbox.  The honest daemons run the code under
test, unchanged.  A removed member with an old backup needs no hostile code at all: its data
directory is copied before its removal and restored after.

Every payload a hostile daemon queues is an outbox entry; the receiving daemon acknowledges it
once it handled it (stored or refused), so the test waits for the sender's ``delivered`` events
and then checks what every member holds; the refusals are also read from the honest daemons'
logs.  No fixed sleeps: every wait is for an event or a log line, with a deadline.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from jarvis.ipc.jsonrpc import RemoteError
from tests.daemons import short_tempdir
from tests.hostile_twistd import LAUNCHER
from tests.peers import Peer, befriend
from tests.test_e2e_groups import found_with, group_bodies, history

ADMIN_RULE = b"refused: only the founder or an admin may make this change"


async def start_peers(testcase: TestCase, names: list[str], hostile: set[str]) -> list[Peer]:
    """Start one daemon per name (those in *hostile* through the hostile launcher)."""
    root = short_tempdir(testcase)
    peers = [Peer(testcase, root, name) for name in names]
    for peer in peers:
        if peer.name in hostile:
            peer.process.launcher = LAUNCHER
    await defer.gatherResults([defer.ensureDeferred(p.start(create=True)) for p in peers])
    return peers


def delivered(peer: Peer, entries: list[dict[str, Any]]) -> Callable[[], bool]:
    """Whether every entry ``{to, id}`` *peer* queued was acknowledged by its recipient."""
    wanted = {(e["id"], e["to"]) for e in entries}

    def check() -> bool:
        done = {
            (p["id"], p["contact"])
            for p in peer.recorder.named("message.stateChanged")
            if p["state"] in ("delivered", "read")
        }
        return wanted <= done

    return check


def shown(peer: Peer, gid: str, body: str) -> Callable[[], bool]:
    return lambda: body in group_bodies(peer, gid)


async def all_show(peers: list[Peer], gid: str, body: str) -> None:
    await defer.gatherResults([p.recorder.wait(shown(p, gid, body), 60) for p in peers])


async def same_order(testcase: TestCase, peers: list[Peer], gid: str) -> list[str]:
    """Assert that *peers* show the same messages in the same order; return the bodies."""
    orders = [[(m["id"], m["body"]) for m in await history(p, gid)] for p in peers]
    for order in orders[1:]:
        testcase.assertEqual(order, orders[0])
    return [body for _id, body in orders[0]]


async def view(peer: Peer, gid: str) -> tuple[str, int, list[str]]:
    """*peer*'s name, version and member uids of group *gid*."""
    group = next(g for g in (await peer.call("groups.list"))["groups"] if g["id"] == gid)
    members = await peer.call("groups.members", group=gid)
    return group["name"], group["version"], sorted(m["uid"] for m in members["members"])


async def chat_barrier(sender: Peer, receiver: Peer, text: str) -> None:
    """A 1:1 message *sender* -> *receiver*, received: the pair's stream is in order, so
    whatever *sender* queued to *receiver* before it has been handled."""
    await sender.call("messages.send", contact=receiver.uid, text=text)
    await receiver.recorder.wait(lambda: text in receiver.received_bodies(), 60)


class RemovedMemberTests(TestCase):
    timeout = 240

    async def test_removed_member_and_its_old_backup_are_refused_old_states_change_nothing(
        self,
    ) -> None:
        """When dave withholds his second message from alice and alice (founder) removes him
        from a group of four at once, then every member keeps the same messages of dave (bob
        and carol drop the one alice never held); dave's daemon holds nothing bob and carol
        write afterwards and refuses to send; when dave's data directory is restored from a
        copy taken before his removal (a removed member with an old backup,
        who does not know it was removed) and he writes to the group, then alice, bob and carol
        (all three his contacts, so it reaches each of them) refuse it, keep working and tell
        him: dave's daemon ends up knowing he was removed (group.removed, groups.list shows
        the group left at the removal's version, nothing later) and refuses to send; and
        when bob re-sends every older state (one still listing dave), nothing changes anywhere:
        same name, version and members, and a message dave signs anyway is refused too."""
        alice, bob, carol, dave = await start_peers(
            self, ["alice", "bob", "carol", "dave"], hostile={"bob", "dave"}
        )
        honest = [alice, bob, carol]
        gid = await found_with(alice, [bob, carol, dave], "attacks")
        await befriend(dave, bob)
        await befriend(dave, carol)
        await dave.call("groups.send", group=gid, text="dave before")
        await all_show(honest, gid, "dave before")
        # dave's second message reaches bob and carol but not alice (who removes him)
        await dave.call("hostile.withhold", group=gid, member=alice.uid)
        withheld = await dave.call("groups.send", group=gid, text="dave withheld from alice")
        await all_show([bob, carol], gid, "dave withheld from alice")

        await dave.kill()  # SQLite is crash-consistent: the copy is dave's state at this point
        removed = await alice.call("groups.remove", group=gid, member=dave.uid)
        version = removed["version"]
        backup = dave.data_dir + ".old"
        shutil.copytree(dave.data_dir, backup, ignore=shutil.ignore_patterns("daemon.lock"))
        await dave.start(unlock=True)  # and learns of his removal
        await dave.recorder.wait(lambda: bool(dave.recorder.named("group.removed")), 60)
        for peer in (bob, carol):
            await peer.recorder.wait(
                lambda peer=peer: any(
                    p["group"]["version"] == version for p in peer.recorder.named("group.changed")
                ),
                60,
            )
        await bob.call("groups.send", group=gid, text="bob after removal")
        await carol.call("groups.send", group=gid, text="carol after removal")
        await all_show(honest, gid, "bob after removal")
        await all_show(honest, gid, "carol after removal")
        for peer in honest:
            await chat_barrier(peer, dave, f"barrier from {peer.name}")
        # the removal keeps dave's messages up to the last one alice held: unless a keepalive
        # brought his second one to her first, bob and carol drop it, so all show the same
        kept = ["dave before"]
        if "dave withheld from alice" in [m["body"] for m in await history(alice, gid)]:
            kept.append("dave withheld from alice")
        else:
            for peer in (bob, carol):
                dropped = [i for p in peer.recorder.named("group.dropped") for i in p["ids"]]
                self.assertEqual(dropped, [withheld["id"]])
        self.assertEqual([m["body"] for m in await history(dave, gid)], kept)
        with self.assertRaises(RemoteError):
            await dave.call("groups.send", group=gid, text="refused at home")
        expected = [*kept, "bob after removal", "carol after removal"]
        self.assertEqual(sorted(await same_order(self, honest, gid)), sorted(expected))
        members = sorted(p.uid for p in honest)

        # dave's old backup: he believes he is still a member and writes
        await dave.stop()
        shutil.rmtree(dave.data_dir)
        shutil.copytree(backup, dave.data_dir)
        await dave.start(unlock=True)
        believed = next(g for g in (await dave.call("groups.list"))["groups"] if g["id"] == gid)
        self.assertFalse(believed["left"])
        self.assertEqual(believed["version"], version - 1)
        still_writes = b"still writes at version %d:" % (version - 1)
        tells_before = {p.name: p.process.output.count(still_writes) for p in honest}
        ghost = await dave.call("groups.send", group=gid, text="ghost")
        await dave.recorder.wait(
            delivered(dave, [{"id": ghost["id"], "to": p.uid} for p in honest]), 60
        )
        for peer in honest:  # each handled it (acknowledged) and does not show it
            self.assertNotIn("ghost", [m["body"] for m in await history(peer, gid)])
            await peer.process.wait_for(
                b"a group message refused: written after the author was removed", 10
            )
        # the members tell the restored dave of his removal: he learns it and stops writing
        await dave.recorder.wait(lambda: bool(dave.recorder.named("group.removed")), 60)
        told = next(g for g in (await dave.call("groups.list"))["groups"] if g["id"] == gid)
        self.assertTrue(told["left"])
        self.assertEqual(told["version"], version)  # the removal, nothing later
        with self.assertRaises(RemoteError):
            await dave.call("groups.send", group=gid, text="refused once told")
        self.assertTrue(
            [p for p in honest if p.process.output.count(still_writes) > tells_before[p.name]]
        )
        await carol.call("groups.send", group=gid, text="still working")
        await all_show(honest, gid, "still working")
        order = await same_order(self, honest, gid)
        self.assertNotIn("ghost", order)
        self.assertEqual(sorted(order), sorted([*expected, "still working"]))
        for peer in honest:
            self.assertNotIn("ghost", group_bodies(peer, gid))
            self.assertEqual(await view(peer, gid), ("attacks", version, members))

        # bob replays every older state, versions 1 to 4 (4 still lists dave)
        replayed = await bob.call("hostile.replay", group=gid)
        self.assertEqual(len(replayed["entries"]), 2 * (version - 1))
        await bob.recorder.wait(delivered(bob, replayed["entries"]), 60)
        # dave's daemon refuses to send now: he signs one anyway (hostile), as of before
        ghosts = [
            await dave.call(
                "hostile.write", group=gid, version=version - 1, text="ghost after replay", to=p.uid
            )
            for p in honest
        ]
        await dave.recorder.wait(delivered(dave, [e for g in ghosts for e in g["entries"]]), 60)
        await alice.call("groups.send", group=gid, text="after replay")
        await all_show(honest, gid, "after replay")
        order = await same_order(self, honest, gid)
        self.assertEqual(sorted(order), sorted([*expected, "still working", "after replay"]))
        for peer in honest:
            self.assertEqual(await view(peer, gid), ("attacks", version, members))
            self.assertNotIn("ghost after replay", group_bodies(peer, gid))
        for peer in honest:
            await chat_barrier(peer, dave, f"last barrier from {peer.name}")
        # told, dave dropped what the removal does not keep: he shows what the others show
        self.assertEqual([m["body"] for m in await history(dave, gid)], kept)


class HostileMemberTests(TestCase):
    timeout = 240

    async def test_outsider_message_withheld_message_and_forged_states(self) -> None:
        """In a group of alice (founder), bob (a plain member, hostile) and carol, with eve a
        contact of bob only:

        - when eve signs a message into the group and sends it to bob, then bob refuses it,
          and when bob passes it on to alice and carol they refuse it too: nobody shows it,
          and the group keeps working;
        - when bob withholds his next message from carol (in the fan-out and when her summary
          asks for it), then carol detects the gap behind his following message and fills it
          from alice: she shows both, and all three show the same order;
        - when bob signs a next state renaming the group and adding eve, and another state
          with the number of the one held (a concurrent change), then alice and carol refuse
          both and eve refuses the invitation: name, version and members unchanged
          everywhere; alice's next real change and bob's next message reach everyone."""
        alice, bob, carol, eve = await start_peers(
            self, ["alice", "bob", "carol", "eve"], hostile={"bob", "eve"}
        )
        members = [alice, bob, carol]
        gid = await found_with(alice, [bob, carol], "attacks")
        await befriend(bob, eve)
        name, version, uids = await view(alice, gid)

        # 4. a message signed by a non-member, to the one member she knows
        outside = await eve.call(
            "hostile.write", group=gid, version=version, text="from outside", to=bob.uid
        )
        await eve.recorder.wait(delivered(eve, outside["entries"]), 60)
        self.assertEqual(await history(bob, gid), [])  # bob handled it, and shows nothing
        await bob.process.wait_for(b"refused: no shared group", 10)
        # a member (bob, hostile) passing it on: refused by the author check, not the sender's
        relayed = await bob.call(
            "hostile.relay", payload=outside["payload"], to=[alice.uid, carol.uid]
        )
        await bob.recorder.wait(delivered(bob, relayed["entries"]), 60)
        for peer in (alice, carol):
            self.assertEqual(await history(peer, gid), [])
            await peer.process.wait_for(
                b"a group message refused: not a member at that state version", 10
            )
        await bob.call("groups.send", group=gid, text="bob after outsider")
        await all_show(members, gid, "bob after outsider")
        self.assertEqual(await same_order(self, members, gid), ["bob after outsider"])
        self.assertEqual((await eve.call("groups.list"))["groups"], [])

        # 5. bob withholds his next message from carol
        held = await bob.call("hostile.withhold", group=gid, member=carol.uid)
        self.assertEqual(held["seq"], 2)
        first = await bob.call("groups.send", group=gid, text="withheld from carol")
        await bob.process.wait_for(b"hostile: withheld", 10)
        await bob.call("groups.send", group=gid, text="after the withheld one")
        await all_show(members, gid, "after the withheld one")
        await carol.recorder.wait(shown(carol, gid, "withheld from carol"), 60)
        carol_saw = group_bodies(carol, gid)
        self.assertEqual(
            carol_saw, ["bob after outsider", "withheld from carol", "after the withheld one"]
        )
        self.assertNotIn(
            (first["id"], carol.uid),
            {(p["id"], p["contact"]) for p in bob.recorder.named("message.stateChanged")},
        )  # bob never sent it to carol: it came from alice
        self.assertEqual(await same_order(self, members, gid), carol_saw)

        # 2. forged states from a plain member
        forged = await bob.call("hostile.forge", group=gid, name="hijacked", invite=eve.uid)
        self.assertEqual({e["to"] for e in forged["entries"]}, {alice.uid, carol.uid, eve.uid})
        await bob.recorder.wait(delivered(bob, forged["entries"]), 60)
        for peer in members:
            self.assertEqual(await view(peer, gid), (name, version, uids))
        self.assertEqual(eve.recorder.named("group.invited"), [])
        self.assertEqual((await eve.call("groups.invites"))["invites"], [])
        for peer in (alice, carol):
            await peer.process.wait_for(ADMIN_RULE, 10)
        await eve.process.wait_for(ADMIN_RULE, 10)  # "an invitation from ... refused: ..."

        # the same version as the one held (a concurrent change) goes another way: refused too
        refusals = {p.name: p.process.output.count(ADMIN_RULE) for p in (alice, carol)}
        concurrent = await bob.call("hostile.forge", group=gid, name="hijacked", concurrent=True)
        await bob.recorder.wait(delivered(bob, concurrent["entries"]), 60)
        for peer in members:
            self.assertEqual(await view(peer, gid), (name, version, uids))
        for peer in (alice, carol):
            await peer.process.wait_for_count(ADMIN_RULE, refusals[peer.name] + 1, 10)

        # the group keeps working: a real change and a message from bob reach everyone
        await alice.call("groups.rename", group=gid, name="kin")
        for peer in (bob, carol):
            await peer.recorder.wait(
                lambda peer=peer: any(
                    p["group"]["name"] == "kin" for p in peer.recorder.named("group.changed")
                ),
                60,
            )
        await bob.call("groups.send", group=gid, text="bob still here")
        await all_show(members, gid, "bob still here")
        for peer in members:
            self.assertEqual(await view(peer, gid), ("kin", version + 1, uids))
        self.assertEqual(await same_order(self, members, gid), [*carol_saw, "bob still here"])


class FloodTests(TestCase):
    timeout = 240

    async def test_forged_future_states_capped_group_keeps_working(self) -> None:
        """When bob (a plain member, hostile) sends alice and carol 100 forged states each,
        of versions beyond the next one, then each keeps only a few (its log says the rest
        were dropped: too many from this sender, or too far ahead), and the group keeps
        working: alice's rename reaches carol, carol's message reaches everyone, and name
        and version stay the same on all three."""
        alice, bob, carol = await start_peers(self, ["alice", "bob", "carol"], hostile={"bob"})
        gid = await found_with(alice, [bob, carol], "flooded")
        flooded = await bob.call("hostile.flood", group=gid, count=100)
        self.assertEqual(len(flooded["entries"]), 200)
        await bob.recorder.wait(delivered(bob, flooded["entries"]), 120)
        for peer in (alice, carol):
            await peer.process.wait_for(b"too many states ahead from this sender", 10)
            await peer.process.wait_for(b"too far ahead", 10)
            # The log may trail the acknowledgements: wait for the drops to be written.
            await peer.process.wait_for_count(b"sync fetches the chain later", 100 - 8, 30)
            self.assertLessEqual(peer.process.output.count(b"sync fetches the chain later"), 100)
        await alice.call("groups.rename", group=gid, name="still ours")
        await carol.recorder.wait(
            lambda: any(
                p["group"]["name"] == "still ours" for p in carol.recorder.named("group.changed")
            ),
            60,
        )
        await carol.call("groups.send", group=gid, text="after the flood")
        await all_show([alice, bob, carol], gid, "after the flood")
        views = [await view(p, gid) for p in (alice, bob, carol)]
        self.assertEqual(views[0][:2], ("still ours", views[0][1]))
        self.assertEqual(views[1], views[0])
        self.assertEqual(views[2], views[0])
