"""End to end, issue 16's "One reachable": A can dial B but not the reverse; they get a direct
session whoever adds the other first, and each reports the path and why.

Two real daemons, each in its own network namespace on one bridge (:class:`tests.netns.
BridgedLan`, as tests/test_e2e_lan.py).  A listens on its namespace's loopback only (nobody can
dial it; a loopback listener runs no LAN discovery either) and its link code gives an address
of the subnet that no host holds; B listens on its LAN address and its link code gives it.
"""

from __future__ import annotations

import os
import time

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from tests import netns
from tests.daemons import short_tempdir
from tests.peers import Peer
from tests.test_e2e_lan import UNREACHABLE, NamespacedDaemon

#: The peer port inside each namespace (each has its own port space).
PORT = 7770
#: How long a session may take once both are contacts: B's dial to A fails at once (nothing
#: routes to A's card address... it is ARP that gives up, ~3 s), A's dial to B succeeds.
SESSION_SECONDS = 10.0


def peer_in(
    testcase: TestCase, root: str, name: str, namespace: str, listen: str, advertise: str
) -> Peer:
    """A :class:`Peer` whose daemon runs in *namespace*, listening on *listen*, whose link code
    gives *advertise*."""
    peer = Peer(testcase, root, name)
    process = peer.process
    peer.process = NamespacedDaemon(
        namespace,
        process.data_dir,
        os.path.dirname(process.socket),
        ["--advertise", advertise],
        listen=listen,
    )
    return peer


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
        a = peer_in(
            self, root, "alice", self.net.namespaces["a"], f"tcp:{PORT}:interface=127.0.0.1",
            UNREACHABLE,
        )  # fmt: skip
        b_address = self.net.addresses["b"]
        b = peer_in(
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
