"""End to end, issue 16's "One reachable" (A can dial B but not the reverse: a direct session
whoever adds the other first, each side reporting the path and why) and "Upgrade" (the pair on
the mailbox path while the direct route is blocked; unblocked while 1,000 messages flow, it
moves to a live session: none lost or doubled, order kept).

Two real daemons, each in its own network namespace on one bridge (:class:`tests.netns.
BridgedLan`, as tests/test_e2e_lan.py).  A listens on its namespace's loopback only (nobody can
dial it; a loopback listener runs no LAN discovery either) and its link code gives an address
of the subnet that no host holds; B listens on its LAN address and its link code gives it.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from tests import netns
from tests.daemons import short_tempdir
from tests.mailboxes import NamespacedMailbox
from tests.peers import Peer
from tests.test_e2e_lan import UNREACHABLE, lan_peer

#: The peer port inside each namespace (each has its own port space).
PORT = 7770
#: How long a session may take once both are contacts: B's dial to A fails at once (nothing
#: routes to A's card address... it is ARP that gives up, ~3 s), A's dial to B succeeds.
SESSION_SECONDS = 10.0


class OneReachableTests(TestCase):
    """A (unreachable) and B (reachable), each in a namespace on one bridged LAN."""

    timeout = 120

    def setUp(self) -> None:
        reason = netns.unavailable()
        if reason is not None:
            raise SkipTest(reason)
        self.net = netns.BridgedLan(f"jp{os.getpid() % 100000}", ["a", "b"])
        self.addCleanup(self.net.remove)

    async def start_pair(self) -> tuple[Peer, Peer]:
        root = short_tempdir(self)
        a = lan_peer(
            self, root, "alice", self.net.namespaces["a"], f"tcp:{PORT}:interface=127.0.0.1",
            UNREACHABLE,
        )  # fmt: skip
        b_address = self.net.addresses["b"]
        b = lan_peer(
            self, root, "bob", self.net.namespaces["b"], f"tcp:{PORT}:interface={b_address}",
            f"{b_address}:{PORT}",
        )  # fmt: skip
        await defer.gatherResults([defer.ensureDeferred(p.start(create=True)) for p in (a, b)])
        return a, b

    async def meet(self, first: Peer, second: Peer, a: Peer, b: Peer) -> float:
        await first.call("contacts.add", link=second.link)
        await second.call("contacts.add", link=first.link)
        added = time.monotonic()
        await defer.gatherResults(
            [a.recorder.wait(a.online_with(b), 30), b.recorder.wait(b.online_with(a), 30)]
        )
        return time.monotonic() - added

    async def check_session(self, a: Peer, b: Peer, elapsed: float) -> None:
        self.assertLessEqual(elapsed, SESSION_SECONDS, f"session {elapsed:.2f} s after adds")
        await a.call("messages.send", contact=b.uid, text="from the unreachable side")
        await b.call("messages.send", contact=a.uid, text="from the reachable side")
        await b.recorder.wait(lambda: "from the unreachable side" in b.received_bodies(), 10)
        await a.recorder.wait(lambda: "from the reachable side" in a.received_bodies(), 10)
        [a_view] = (await a.call("peers.status"))["peers"]
        [b_view] = (await b.call("peers.status"))["peers"]
        b_address = f"{self.net.addresses['b']}:{PORT}"
        self.assertEqual(
            (a_view["path"], a_view["path_reason"]), ("direct", f"direct: dialled {b_address}")
        )
        self.assertEqual(
            (b_view["path"], b_view["path_reason"]), ("direct", "direct: the contact dialled us")
        )
        [listed] = (await a.call("contacts.list"))["contacts"]
        self.assertEqual(listed["path"], "direct")
        self.assertEqual(a_view["sessions_accepted"], 0)  # nobody could dial A
        self.assertEqual(b_view["connect_successes"], 0)

    async def test_unreachable_side_adds_first(self) -> None:
        """When A (whom nobody can dial) adds B first, then they get a direct session that A
        dialled, within 10 s of both adds, and messages flow both ways."""
        a, b = await self.start_pair()
        elapsed = await self.meet(a, b, a, b)
        await self.check_session(a, b, elapsed)

    async def test_reachable_side_adds_first(self) -> None:
        """When B adds A first (its dials to A's card address fail), then A's dial once A adds
        B still makes a direct session within 10 s, and messages flow both ways."""
        a, b = await self.start_pair()
        elapsed = await self.meet(b, a, a, b)
        await self.check_session(a, b, elapsed)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


#: Messages sent across the upgrade.
COUNT = 1000


class UpgradeTests(TestCase):
    """A and B each in a namespace, a mailbox in a third, on one bridge; the route between A
    and B is removed (each keeps a host route to the mailbox) and put back."""

    timeout = 300

    def setUp(self) -> None:
        reason = netns.unavailable()
        if reason is not None:
            raise SkipTest(reason)
        self.net = netns.BridgedLan(f"ju{os.getpid() % 100000}", ["a", "b", "m"])
        self.addCleanup(self.net.remove)

    def block(self) -> None:
        """A and B keep only a route to the mailbox: no path between them."""
        for host in ("a", "b"):
            ns = self.net.namespaces[host]
            _ip("-n", ns, "route", "del", f"{netns.SUBNET}.0/24", "dev", "eth0")
            _ip("-n", ns, "route", "add", f"{self.net.addresses['m']}/32", "dev", "eth0")

    def unblock(self) -> None:
        for host in ("a", "b"):
            _ip("-n", self.net.namespaces[host], "route", "add", f"{netns.SUBNET}.0/24",
                "dev", "eth0")  # fmt: skip

    def peer(self, root: str, name: str, host: str) -> Peer:
        address = self.net.addresses[host]
        return lan_peer(
            self,
            root,
            name,
            self.net.namespaces[host],
            f"tcp:{PORT}:interface={address}",
            f"{address}:{PORT}",
            pinned=True,
        )

    async def test_mailbox_to_live_session_while_messages_flow(self) -> None:
        """When A and B are on the mailbox path (no route between them, the mailbox relays
        nothing) and the route comes back while A sends 1,000 messages, then the pair gets a
        live session on its own (no redial asked), B has every message exactly once and in A's
        order, A sees every one delivered, and both report the live path."""
        await self.upgrade_while_messages_flow(relay=False)

    async def test_relayed_to_direct_while_messages_flow(self) -> None:
        """When A and B have a relayed session through the mailbox (no route between them) and
        the route comes back while A sends 1,000 messages, then the pair moves to a direct
        session on its own, B has every message exactly once and in A's order, A sees every
        one delivered, and both report the direct path."""
        await self.upgrade_while_messages_flow(relay=True)

    async def upgrade_while_messages_flow(self, *, relay: bool) -> None:
        root = short_tempdir(self)
        box = NamespacedMailbox(
            self.net.namespaces["m"],
            os.path.join(root, "m"),
            self.net.addresses["m"],
            [] if relay else ["--relay-pairs", "0"],
            port=7780,
        )
        os.makedirs(os.path.dirname(box.pidfile), exist_ok=True)
        self.addCleanup(box.cleanup)
        await box.start()
        alice, bob = self.peer(root, "alice", "a"), self.peer(root, "bob", "b")
        await defer.gatherResults(
            [defer.ensureDeferred(p.start(create=True)) for p in (alice, bob)]
        )
        await alice.call("contacts.add", link=bob.link)
        await bob.call("contacts.add", link=alice.link)
        for peer in (alice, bob):
            await peer.call("mailbox.use", link=str(box.link()))

        async def knows_mailbox(peer: Peer) -> bool:
            status = await peer.call("mailbox.status")
            return bool(status["connected"] and status["contacts_reachable"] == 1)

        await until(lambda: knows_mailbox(alice), "alice knows bob's mailbox")
        await until(lambda: knows_mailbox(bob), "bob knows alice's mailbox")

        # end the live session (bob stops: goodbye), block the route, bob starts again
        await bob.stop()
        await alice.recorder.wait(lambda: not alice.online_with(bob)(), 30)
        self.block()
        await bob.start(unlock=True)
        worse = "relayed" if relay else "mailbox"

        async def on_worse_path(peer: Peer) -> bool:
            [view] = (await peer.call("peers.status"))["peers"]
            return bool(view["path"] == worse)

        await until(lambda: on_worse_path(alice), f"alice on the {worse} path")
        if relay:
            await until(lambda: on_worse_path(bob), f"bob on the {worse} path")
        [view] = (await alice.call("peers.status"))["peers"]
        self.assertTrue(view["path_reason"].startswith(f"{worse}: "), view)

        bodies = [f"upgrade {i:04d}" for i in range(COUNT)]
        third = COUNT // 3
        sent = await defer.gatherResults(
            [alice.call("messages.send", contact=bob.uid, text=body) for body in bodies[:third]]
        )
        first_ids = {m["id"] for m in sent}

        def first_third_left() -> bool:
            left = {
                p["id"]
                for p in alice.recorder.named("message.stateChanged")
                if p["state"] in ("sent", "delivered") and (relay or p.get("via") == "mailbox")
            }
            return left >= first_ids

        await alice.recorder.wait(first_third_left, 60)  # the first third went the worse way
        self.unblock()  # the rest flow while the pair finds its direct session
        sent += await defer.gatherResults(
            [alice.call("messages.send", contact=bob.uid, text=body) for body in bodies[third:]]
        )
        sent_ids = [m["id"] for m in sent]

        async def direct(peer: Peer) -> bool:
            [view] = (await peer.call("peers.status"))["peers"]
            return bool(view["status"] == "online" and view["path"] in ("lan", "direct"))

        await until(lambda: direct(alice), "alice on a direct session", timeout=150)
        await until(lambda: direct(bob), "bob on a direct session", timeout=150)

        async def all_received() -> bool:
            history = await bob.all_history(alice.uid)
            return sum(m["direction"] == "in" for m in history) >= COUNT

        await until(all_received, "bob received everything", timeout=120)
        incoming = [m for m in await bob.all_history(alice.uid) if m["direction"] == "in"]
        self.assertEqual([m["id"] for m in incoming], sent_ids)  # once each, in order
        self.assertEqual([m["body"] for m in incoming], bodies)

        async def all_delivered() -> bool:
            history = await alice.all_history(bob.uid)
            return sum(m["state"] == "delivered" for m in history) == COUNT

        await until(all_delivered, "alice's messages delivered", timeout=120)
        if not relay:
            via_mailbox = {
                p["id"]
                for p in alice.recorder.named("message.stateChanged")
                if p.get("via") == "mailbox" and p["state"] == "sent"
            }
            print(f"\n{len(via_mailbox)} of {COUNT} messages deposited before the live session")


async def until(check: Any, what: str, timeout: float = 60.0) -> None:
    """Poll the async *check* every 0.2 s (API state no event announces) until it holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.2, lambda: None)
