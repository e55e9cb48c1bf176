"""Tests for jarvis.net.lan: real mDNS discovery between namespaces, and what a capture holds."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SkipTest, TestCase
from zeroconf import DNSIncoming, IPVersion
from zeroconf.asyncio import AsyncZeroconf

from jarvis.crypto.identity import IdentityKey
from jarvis.net.lan import LanDiscovery
from jarvis.protocol import knock, lan
from tests import netns
from tests.waiting import Waiters

ALICE = IdentityKey.from_private_bytes(bytes(range(32)))
BOB = IdentityKey.from_private_bytes(bytes(range(32, 64)))
STRANGER = IdentityKey.from_private_bytes(bytes(range(96, 128)))
PORTS = {"a": 40001, "b": 40002, "s": 40003}
_TXT = 16  # DNS record type TXT


class ShiftedClock:
    """The reactor's clock moved by :attr:`shift` seconds (to jump to later windows)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def seconds(self) -> float:
        return reactor.seconds() + self.shift  # type: ignore[attr-defined,no-any-return]

    def callLater(self, delay: float, f: Callable[..., Any], /, *args: Any) -> Any:
        return reactor.callLater(delay, f, *args)  # type: ignore[attr-defined]


class Capture(DatagramProtocol):
    """Records every datagram received on the mDNS port."""

    def __init__(self, waiters: Waiters) -> None:
        self.packets: list[bytes] = []
        self.waiters = waiters

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.packets.append(datagram)
        self.waiters.check()


def txt_properties(text: bytes) -> dict[bytes, bytes]:
    """Parse a TXT record's length-prefixed ``key=value`` strings."""
    properties = {}
    at = 0
    while at < len(text):
        length = text[at]
        entry = text[at + 1 : at + 1 + length]
        at += 1 + length
        key, _, value = entry.partition(b"=")
        properties[key] = value
    return properties


class DisabledTests(TestCase):
    def make(self, factory: Callable[[], AsyncZeroconf], enabled: bool = True) -> LanDiscovery:
        return LanDiscovery(
            ALICE.uid,
            PORTS["a"],
            lan.LanKeys(ALICE.private_bytes(), ALICE.uid),
            lambda: [(BOB.uid, BOB.public_bytes)],
            lambda uid, host, port: None,
            clock=ShiftedClock(),
            enabled=enabled,
            zeroconf_factory=factory,
        )

    @inlineCallbacks
    def test_disabled(self) -> Any:
        """When the setting turns discovery off, then start() makes no zeroconf instance (no
        packet is sent) and nothing runs."""
        calls: list[int] = []

        def factory() -> AsyncZeroconf:
            calls.append(1)
            raise AssertionError("must not be called")

        discovery = self.make(factory, enabled=False)
        yield discovery.start()
        self.assertEqual(calls, [])
        self.assertFalse(discovery.running)
        self.assertIsNone(discovery.failure)
        yield discovery.stop()

    @inlineCallbacks
    def test_no_multicast(self) -> Any:
        """When the network refuses multicast (the socket cannot be made), then start() still
        succeeds, discovery stays off and says why."""

        def factory() -> AsyncZeroconf:
            raise OSError(19, "No such device")

        discovery = self.make(factory)
        yield discovery.start()
        self.assertFalse(discovery.running)
        self.assertIn("No such device", discovery.failure or "")
        yield discovery.stop()


class NamespaceDiscoveryTests(TestCase):
    """Alice, Bob, a stranger and a capture, each in its own namespace on one bridged LAN."""

    timeout = 90

    def setUp(self) -> None:
        reason = netns.unavailable()
        if reason is not None:
            raise SkipTest(reason)
        self.net = netns.BridgedLan(f"jl{os.getpid() % 100000}", ["a", "b", "s", "c"])
        self.addCleanup(self.net.remove)
        self.clock = ShiftedClock()
        self.waiters = Waiters(reactor, fire_later=True)
        self.found: dict[str, list[tuple[str, str, int]]] = {}

    def make(
        self,
        host: str,
        me: IdentityKey,
        contacts: list[IdentityKey],
        made: list[AsyncZeroconf] | None = None,
    ) -> LanDiscovery:
        """Return *me*'s discovery on *host*; each zeroconf instance it makes goes to *made*."""
        namespace, address = self.net.namespaces[host], self.net.addresses[host]
        found = self.found.setdefault(host, [])

        def factory() -> AsyncZeroconf:
            with netns.inside(namespace):
                zc = AsyncZeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
            if made is not None:
                made.append(zc)
            return zc

        def on_found(uid: str, found_host: str, port: int) -> None:
            found.append((uid, found_host, port))
            self.waiters.check()

        discovery = LanDiscovery(
            me.uid,
            PORTS[host],
            lan.LanKeys(me.private_bytes(), me.uid),
            lambda: [(c.uid, c.public_bytes) for c in contacts],
            on_found,
            clock=self.clock,
            addresses=lambda: [address],
            zeroconf_factory=factory,
        )
        self.addCleanup(discovery.stop)
        return discovery

    def capture(self) -> Capture:
        capture = Capture(self.waiters)
        with netns.inside(self.net.namespaces["c"]):
            port = reactor.listenMulticast(  # type: ignore[attr-defined]
                5353, capture, listenMultiple=True
            )
            port.joinGroup("224.0.0.251", self.net.addresses["c"])
        self.addCleanup(port.stopListening)
        return capture

    def uids_found(self, host: str) -> set[str]:
        return {uid for uid, _, _ in self.found.get(host, [])}

    @inlineCallbacks
    def test_contacts_find_each_other_stranger_nothing(self) -> Any:
        """When Alice and Bob (contacts) and a stranger who knows both public keys announce and
        browse on one LAN, then Alice and Bob find each other's address and port within
        seconds, and neither the stranger finds them nor they the stranger, although all saw
        every announcement."""
        alice = self.make("a", ALICE, [BOB])
        bob = self.make("b", BOB, [ALICE])
        stranger = self.make("s", STRANGER, [ALICE, BOB])
        began = time.monotonic()
        yield gatherResults([alice.start(), bob.start(), stranger.start()])
        yield self.waiters.wait(
            lambda: BOB.uid in self.uids_found("a") and ALICE.uid in self.uids_found("b"), 15
        )
        elapsed = time.monotonic() - began
        yield self.waiters.wait(
            lambda: min(d.services_seen for d in (alice, bob, stranger)) >= 2, 15
        )
        self.assertLess(elapsed, 5.0)
        self.assertEqual(bob.addresses_for(ALICE.uid), [(self.net.addresses["a"], PORTS["a"])])
        self.assertEqual(alice.addresses_for(BOB.uid), [(self.net.addresses["b"], PORTS["b"])])
        self.assertEqual(self.found.get("s", []), [])
        self.assertEqual(self.uids_found("a"), {BOB.uid})
        self.assertEqual(self.uids_found("b"), {ALICE.uid})
        self.assertEqual(stranger.addresses_for(ALICE.uid), [])

    @inlineCallbacks
    def test_capture_over_windows_leaks_nothing(self) -> Any:
        """When every mDNS packet on the LAN is captured over three windows of Alice and Bob,
        then no packet holds a uid, a public or private key, a pair or LAN key or the host
        name; every announcement carries 16 tokens; instance names and tokens never repeat
        across windows; and Bob finds Alice again in each window."""
        capture = self.capture()
        alice = self.make("a", ALICE, [BOB])
        bob = self.make("b", BOB, [ALICE])
        yield gatherResults([alice.start(), bob.start()])
        pair_key = knock.pair_key(ALICE.private_bytes(), ALICE.uid, BOB.public_bytes, BOB.uid)
        lan_key = lan.lan_key(pair_key)
        for step in range(3):
            if step:
                self.clock.shift += lan.WINDOW_SECONDS
                yield gatherResults([alice.contacts_changed(), bob.contacts_changed()])
            window = lan.window_of(self.clock.seconds())
            expected = [lan.token(lan_key, window, ALICE.uid), lan.token(lan_key, window, BOB.uid)]
            yield self.waiters.wait(
                lambda expected=expected: all(  # type: ignore[misc]
                    any(t in p for p in capture.packets) for t in expected
                ),
                15,
            )
            yield self.waiters.wait(lambda step=step: len(self.found.get("b", [])) > step, 15)  # type: ignore[misc]
        self.assertEqual(self.uids_found("b"), {ALICE.uid})

        hostname = socket.gethostname().split(".")[0].encode()
        label = bytes([len(hostname)]) + hostname  # as a DNS name label (host.local.)
        secrets = {
            # a short host name ("vm") would match random bytes: look for it as a DNS label
            "hostname.local": label + b"\x05local",
            "hostname label then pointer": label + b"\xc0",
            "pair key": pair_key,
            "lan key": lan_key,
        }
        for who, identity in (("alice", ALICE), ("bob", BOB)):
            secrets[f"{who} uid"] = identity.uid.encode()
            secrets[f"{who} uid (upper)"] = identity.uid.upper().encode()
            secrets[f"{who} public key"] = identity.public_bytes
            secrets[f"{who} private key"] = identity.private_bytes()
        if len(hostname) >= 8:
            secrets["hostname"] = hostname
        for name, secret in secrets.items():
            leaks = [p for p in capture.packets if secret in p]
            self.assertEqual(leaks, [], f"{name} in a captured packet")

        tokens_by_instance: dict[str, set[bytes]] = {}
        for packet in capture.packets:
            incoming = DNSIncoming(packet)
            for record in incoming.answers():
                if record.type != _TXT or not record.name.endswith(lan.SERVICE_TYPE):
                    continue
                tokens = lan.parse_tokens(txt_properties(record.text))  # type: ignore[attr-defined]
                self.assertEqual(len(tokens), lan.PAD_BUCKET)
                tokens_by_instance.setdefault(record.name, set()).update(tokens)
        # two daemons, three windows each: six instance names, none repeated
        self.assertEqual(len(tokens_by_instance), 6, sorted(tokens_by_instance))
        instances = list(tokens_by_instance)
        for i, first in enumerate(instances):
            for second in instances[i + 1 :]:
                self.assertEqual(tokens_by_instance[first] & tokens_by_instance[second], set())

    @inlineCallbacks
    def test_stop_before_start_ran(self) -> Any:
        """When stop() comes before the loop ran start()'s work (a daemon stopping as it
        starts), then the zeroconf instance made afterwards is closed and nothing runs."""
        made: list[AsyncZeroconf] = []
        alice = self.make("a", ALICE, [BOB], made)
        started = alice.start()
        yield alice.stop()
        yield started
        self.assertEqual(len(made), 1)
        self.assertFalse(alice.running)
        self.assertTrue(made[0].zeroconf.done)
