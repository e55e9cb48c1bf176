"""Tests for jarvis.net.lan: real mDNS discovery between namespaces, and what a capture holds."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
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
CAROL = IdentityKey.from_private_bytes(bytes(range(64, 96)))
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
        # Start one second into a window: a test that ran across a window's end (every ten
        # minutes of real time) saw the daemons announce again for the new window, four more
        # instance names than it counted.
        now = self.clock.seconds()
        self.clock.shift = lan.WINDOW_SECONDS - now % lan.WINDOW_SECONDS + 1.0
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


class FakePool:
    """``run_blocking`` that queues the jobs; :meth:`run` runs them, marking the thread."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.in_pool = False

    def run_blocking(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((f, args, d))
        return d

    def run(self) -> list[Callable[..., Any]]:
        """Run the queued jobs (as the pool's threads would); return their functions."""
        jobs, self.jobs = self.jobs, []
        for f, args, d in jobs:
            self.in_pool = True
            try:
                result = f(*args)
            finally:
                self.in_pool = False
            d.callback(result)
        return [f for f, _, _ in jobs]


class FakeZeroconf:
    """What :class:`LanDiscovery` calls on an ``AsyncZeroconf``: records the services."""

    zeroconf = None

    def __init__(self, waiters: Waiters) -> None:
        self.registered: list[Any] = []
        self.waiters = waiters

    async def _done(self) -> None:
        return None

    async def async_register_service(self, info: Any) -> Any:
        self.registered.append(info)
        self.waiters.check()
        return self._done()

    async def async_unregister_service(self, info: Any) -> Any:
        return self._done()

    async def async_close(self) -> None:
        return None


class FakeBrowser:
    def __init__(self, zc: Any, types: list[str], handlers: list[Any]) -> None:
        self.handlers = handlers

    async def async_cancel(self) -> None:
        return None


class TablesOffReactorTests(TestCase):
    """The token tables (three HMACs per contact and window) are made on the pool, ahead of
    each window and after contacts change; the reactor only swaps them in (task harden 1)."""

    @inlineCallbacks
    def test_tables_made_on_the_pool(self) -> Any:
        """When discovery starts, two contacts changes come in a burst, and a window turns,
        then each table is made by one ``prepare_windows`` job on the pool (one for the
        burst), no token is computed on the reactor, the announcements carry Bob's token of
        their window, and Carol's service (added in the burst) is recognised."""
        from jarvis.net import lan as lan_net

        self.patch(lan_net, "AsyncServiceBrowser", FakeBrowser)
        waiters = Waiters(reactor)
        zc = FakeZeroconf(waiters)
        pool = FakePool()
        reactor_tokens: list[bytes] = []
        real_token = lan.token

        def token(key: bytes, window: int, uid: str) -> bytes:
            if not pool.in_pool:
                reactor_tokens.append(key)
            return real_token(key, window, uid)

        self.patch(lan, "token", token)
        clock = Clock()
        clock.advance(1_800_000_000 + 100)  # 100 s into window 3,000,000
        window = 3_000_000
        contacts = [(BOB.uid, BOB.public_bytes)]
        found: list[tuple[str, str, int]] = []
        discovery = LanDiscovery(
            ALICE.uid,
            PORTS["a"],
            lan.LanKeys(ALICE.private_bytes(), ALICE.uid),
            lambda: list(contacts),
            lambda uid, host, port: found.append((uid, host, port)),
            clock=clock,
            zeroconf_factory=lambda: zc,  # type: ignore[arg-type,return-value]
            addresses=lambda: ["192.0.2.1"],
            run_blocking=pool.run_blocking,
        )
        self.addCleanup(discovery.stop)
        alice_bob = lan.LanKeys(ALICE.private_bytes(), ALICE.uid).key(BOB.uid, BOB.public_bytes)
        assert alice_bob is not None

        started = discovery.start()
        self.assertEqual(zc.registered, [])  # waits for its tables
        self.assertEqual(pool.run(), [lan.prepare_windows])
        yield started
        self.assertEqual(len(zc.registered), 1)
        tokens = lan.parse_tokens(zc.registered[0].properties)
        self.assertIn(real_token(alice_bob, window, ALICE.uid), tokens)

        # Carol is added (and something else changes) while her service is already seen
        carol_alice = lan.LanKeys(CAROL.private_bytes(), CAROL.uid).key(
            ALICE.uid, ALICE.public_bytes
        )
        assert carol_alice is not None
        carol_token = real_token(carol_alice, window, CAROL.uid)
        discovery._seen["carol._jarvis._tcp.local."] = lan_net._Seen(
            (carol_token,), ("192.0.2.3",), 7770
        )
        contacts.append((CAROL.uid, CAROL.public_bytes))
        changes = [discovery.contacts_changed(), discovery.contacts_changed()]
        self.assertEqual(pool.jobs, [])  # debounced
        clock.advance(lan_net.REFRESH_DELAY)
        self.assertEqual(pool.run(), [lan.prepare_windows])  # one job for the burst
        yield gatherResults(changes)
        self.assertEqual(found, [(CAROL.uid, "192.0.2.3", 7770)])
        self.assertEqual(len(zc.registered), 2)

        # the next window's tables are made ahead, on the pool, then swapped in
        clock.advance((window + 1) * 600 - lan_net.TABLE_LEAD - clock.seconds())
        self.assertEqual(pool.run(), [lan.prepare_windows])
        clock.advance(lan_net.TABLE_LEAD + 1)  # the window turned: announce anew
        yield waiters.wait(lambda: len(zc.registered) == 3, 10)
        tokens = lan.parse_tokens(zc.registered[2].properties)
        self.assertIn(real_token(alice_bob, window + 1, ALICE.uid), tokens)
        self.assertEqual(reactor_tokens, [])
