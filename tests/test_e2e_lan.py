"""End to end: two real daemons on one LAN find each other by mDNS and get a live session.

Each daemon runs (``ip netns exec``) in its own network namespace, the namespaces joined by a
bridge (:class:`tests.netns.BridgedLan`); the test process drives them through their local API
sockets (pathname UNIX sockets are reachable from every namespace).  They add each other by
link codes whose only address is one no host holds (inside the LAN's subnet): without LAN
discovery they would never meet.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from tests import netns
from tests.daemons import DaemonProcess, short_tempdir
from tests.peers import Peer

#: Where the link codes say the daemons are: inside the LAN's subnet, held by no host.
UNREACHABLE = f"{netns.SUBNET}.250:7770"
#: The issue's bound on the time from "both are contacts" to a live session on a LAN.
LAN_SESSION_SECONDS = 5.0


class NamespacedDaemon(DaemonProcess):
    """A ``twistd -n jarvis`` started with ``ip netns exec NAMESPACE``."""

    def __init__(self, namespace: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.namespace = namespace

    def command(self) -> tuple[str, list[str]]:
        ip = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
        return ip, ["ip", "netns", "exec", self.namespace, sys.executable, *self.argv()[1:]]


class PinnedNamespacedDaemon(NamespacedDaemon):
    """A namespaced daemon that keeps its first ``listen`` across restarts (``Peer.start``
    would move a restarted daemon to loopback)."""

    @property
    def listen(self) -> str:
        return self._listen

    @listen.setter
    def listen(self, value: str) -> None:
        if not hasattr(self, "_listen"):
            self._listen = value


def lan_peer(
    testcase: TestCase,
    root: str,
    name: str,
    namespace: str,
    listen: str = "tcp:0",
    advertise: str = UNREACHABLE,
    *,
    pinned: bool = False,
) -> Peer:
    """Return a :class:`Peer` whose daemon runs in *namespace*, listening on *listen* (every
    interface there by default) and whose link code gives *advertise* (by default only
    :data:`UNREACHABLE`); *pinned*: it keeps *listen* across restarts."""
    peer = Peer(testcase, root, name)
    process = peer.process
    kind = PinnedNamespacedDaemon if pinned else NamespacedDaemon
    peer.process = kind(
        namespace,
        process.data_dir,
        os.path.dirname(process.socket),
        ["--advertise", advertise],
        listen=listen,
    )
    return peer


class LanSessionTests(TestCase):
    """Alice and Bob, each in a namespace on one bridged LAN."""

    timeout = 120

    def setUp(self) -> None:
        reason = netns.unavailable()
        if reason is not None:
            raise SkipTest(reason)
        self.net = netns.BridgedLan(f"je{os.getpid() % 100000}", ["a", "b"])
        self.addCleanup(self.net.remove)

    async def test_contacts_without_addresses_meet_on_the_lan(self) -> None:
        """When two daemons on one LAN add each other by link codes whose addresses nobody
        holds, then they find each other by mDNS and get a direct session within 5 s,
        exchange a message, peers.status shows where each was found and the path, and the
        log names neither the contact nor its address.  (Alice listens on every interface,
        Bob on his LAN address only: both ways of announcing.)"""
        root = short_tempdir(self)
        alice = lan_peer(self, root, "alice", self.net.namespaces["a"])
        bob_listen = f"tcp:0:interface={self.net.addresses['b']}"
        bob = lan_peer(self, root, "bob", self.net.namespaces["b"], bob_listen)
        await defer.gatherResults(
            [defer.ensureDeferred(p.start(create=True)) for p in (alice, bob)]
        )
        self.assertEqual(alice.link_addresses(), [UNREACHABLE])
        self.assertEqual(bob.link_addresses(), [UNREACHABLE])
        settings = await alice.call("settings.get")
        self.assertIs(settings["lan_discovery"], True)
        lan = (await alice.call("daemon.status"))["lan"]
        self.assertEqual((lan["enabled"], lan["failure"]), (True, None))

        await alice.call("contacts.add", link=bob.link)
        await bob.call("contacts.add", link=alice.link)
        added = time.monotonic()
        await defer.gatherResults(
            [
                alice.recorder.wait(alice.online_with(bob), 30),
                bob.recorder.wait(bob.online_with(alice), 30),
            ]
        )
        elapsed = time.monotonic() - added
        self.assertLessEqual(
            elapsed, LAN_SESSION_SECONDS, f"live session {elapsed:.2f} s after both added"
        )

        await alice.call("messages.send", contact=bob.uid, text="found you on the LAN")
        await bob.recorder.wait(lambda: "found you on the LAN" in bob.received_bodies(), 10)

        # the session may come from Bob's dial, before Alice found Bob herself: wait for it
        await alice.process.wait_for(b"found on the local network", 10)
        status = await alice.call("peers.status")
        [peer] = status["peers"]
        self.assertEqual(peer["status"], "online")
        # "lan" if Alice's dial to the found address made the session, "direct" if Bob's did
        self.assertIn(peer["path"], ("lan", "direct"))
        self.assertTrue(peer["path_reason"].startswith(peer["path"] + ": "), peer)
        bob_address = self.net.addresses["b"]
        self.assertTrue(
            any(a.startswith(f"{bob_address}:") for a in peer["lan_addresses"]),
            peer["lan_addresses"],
        )
        contact = await alice.call("contacts.show", contact=bob.uid)
        self.assertEqual(contact["addresses"], [UNREACHABLE])  # the card is unchanged
        # the log says that a contact was found, never who or where
        self.assertIn(b"found on the local network", alice.process.output)
        self.assertNotIn(bob.uid.encode(), alice.process.output)
        self.assertNotIn(bob_address.encode(), alice.process.output)

    async def test_setting_off_stops_discovery_live(self) -> None:
        """When lan_discovery is turned off on a running daemon, then discovery stops and the
        addresses it found are forgotten; turned on again, it finds the contact again."""
        root = short_tempdir(self)
        alice = lan_peer(self, root, "alice", self.net.namespaces["a"])
        bob = lan_peer(self, root, "bob", self.net.namespaces["b"])
        await defer.gatherResults(
            [defer.ensureDeferred(p.start(create=True)) for p in (alice, bob)]
        )
        await alice.call("contacts.add", link=bob.link)
        await bob.call("contacts.add", link=alice.link)
        await alice.recorder.wait(alice.online_with(bob), 30)

        changed = await alice.call("settings.set", lan_discovery=False)
        self.assertIs(changed["lan_discovery"], False)
        await alice.process.wait_for(b"LAN discovery turned off", 10)
        status = await alice.call("peers.status")
        self.assertEqual(status["peers"][0]["lan_addresses"], [])

        alice.process.output = b""  # wait for a finding after this point only
        await alice.call("settings.set", lan_discovery=True)
        await alice.process.wait_for(b"found on the local network", 30)
        status = await alice.call("peers.status")
        bob_address = self.net.addresses["b"]
        self.assertTrue(
            any(a.startswith(f"{bob_address}:") for a in status["peers"][0]["lan_addresses"])
        )
