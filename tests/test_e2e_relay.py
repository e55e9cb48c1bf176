"""End to end: two daemons that cannot reach each other meet through a mailbox's relay.

Topology (:class:`tests.netns.NatTopology`): Alice and Bob each in a namespace that reaches a
"public" namespace holding a real ``twistd jarvis-mailbox``, but not each other (no route; the
public namespace does not forward).  Their link codes carry their real addresses, which the
other cannot reach.  Both use the same mailbox; the relay on its port joins their dials, and
the pinned TLS session runs through it.  A third namespace plays the stranger.  A packet
capture on Alice's link to the public namespace (``AF_PACKET``, in the test process) checks
what the relay and the wire can see, and provides a real join to replay.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SkipTest, TestCase

from bench.harness import percentile
from jarvis.protocol import relay as wire
from tests import netns
from tests.daemons import short_tempdir
from tests.mailboxes import NamespacedMailbox
from tests.peers import Peer
from tests.test_e2e_lan import lan_peer

#: The issue's bounds.
RELAYED_SESSION_SECONDS = 10.0
P99_MS = 50.0
COUNT = 1000
PEER_PORT = 7770
_ETH_P_ALL = 0x0003


#: Bytes the kernel may queue for a capture before it drops frames: a transfer's burst
#: outruns the reading thread, and the default (about 200 KiB) lost most of a 4 MiB file's
#: frames in one CI run.
CAPTURE_BUFFER = 64 * 1024 * 1024
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class PacketCapture:
    """Every frame on one interface of one namespace, read on a thread (``AF_PACKET``)."""

    def __init__(self, namespace: str, interface: str) -> None:
        with netns.inside(namespace):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            self._sock.bind((interface, 0))
        try:  # root (the namespaces need it) may pass the system's limit
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, CAPTURE_BUFFER)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CAPTURE_BUFFER)
        self._sock.settimeout(0.1)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self._sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> bytes:
        """Stop capturing; return everything captured, frames concatenated."""
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        return b"".join(self.frames)


def relay_peer(testcase: TestCase, root: str, name: str, namespace: str, address: str) -> Peer:
    """A :class:`Peer` whose daemon runs in *namespace*, listening and advertising
    *address*:7770 (which the other peer cannot reach)."""
    listen = f"tcp:{PEER_PORT}:interface={address}"
    return lan_peer(testcase, root, name, namespace, listen, f"{address}:{PEER_PORT}")


class _Raw(protocol.Protocol):
    """A raw client of the relay: sends its bytes, keeps the answer."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.answer = b""
        self.lost: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.payload:
            self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(self.answer)


class RelayedSessionTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        reason = netns.unavailable()
        if reason is not None:
            raise SkipTest(reason)
        self.net = netns.NatTopology(f"jr{os.getpid() % 100000}", ["a", "b", "c"])
        self.addCleanup(self.net.remove)

    def assert_unreachable(self, source: str, target: str) -> None:
        with netns.inside(self.net.namespaces[source]):
            s = socket.socket()
        with s:
            err = s.connect_ex((self.net.addresses[target], PEER_PORT))
        self.assertNotEqual(err, 0, f"{source} can reach {target}: not a NAT topology")

    async def start(self, extra: list[str] | None = None) -> tuple[NamespacedMailbox, Peer, Peer]:
        """The mailbox, Alice and Bob started, both using the mailbox, not yet contacts."""
        self.assert_unreachable("a", "b")
        self.assert_unreachable("b", "a")
        root = short_tempdir(self)
        os.makedirs(os.path.join(root, "mbox"))
        mailbox = NamespacedMailbox(
            self.net.public_ns, os.path.join(root, "mbox"), netns.PUBLIC_SERVICE, extra
        )
        self.addCleanup(mailbox.cleanup)
        await mailbox.start()
        alice = relay_peer(self, root, "alice", self.net.namespaces["a"], self.net.addresses["a"])
        bob = relay_peer(self, root, "bob", self.net.namespaces["b"], self.net.addresses["b"])
        await defer.gatherResults(
            [defer.ensureDeferred(p.start(create=True)) for p in (alice, bob)]
        )
        link = str(mailbox.link())
        await defer.gatherResults([p.call("mailbox.use", link=link) for p in (alice, bob)])
        return mailbox, alice, bob

    async def befriend(self, alice: Peer, bob: Peer) -> float:
        """Add each other; return the seconds from the first add until both see a live
        session."""
        added = time.monotonic()
        await alice.call("contacts.add", link=bob.link)
        await bob.call("contacts.add", link=alice.link)
        await defer.gatherResults(
            [
                alice.recorder.wait(alice.online_with(bob), 60),
                bob.recorder.wait(bob.online_with(alice), 60),
            ]
        )
        return time.monotonic() - added

    async def test_both_behind_nat(self) -> None:
        """When Alice and Bob can each reach the mailbox but not each other, then they get a
        live session through its relay within 10 s of the first adding the other, both report
        the path "relayed", 1,000 messages sent one after the other arrive exactly once and in order
        with a p99 latency of at most 50 ms, and nothing on Alice's link to the mailbox (the
        relay's whole view of her side) holds a message's text."""
        mailbox, alice, bob = await self.start()
        capture = PacketCapture(self.net.public_ns, "h0")
        self.addCleanup(capture.stop)
        elapsed = await self.befriend(alice, bob)
        print(f"\nrelayed session {elapsed:.2f} s after the first contacts.add", file=sys.stderr)
        self.assertLessEqual(elapsed, RELAYED_SESSION_SECONDS)
        for me in (alice, bob):
            status = await me.call("peers.status")
            [peer] = status["peers"]
            self.assertEqual((peer["status"], peer["path"]), ("online", "relayed"))

        canary = "canary-" + secrets.token_hex(12)
        latencies: list[float] = []
        for i in range(COUNT):
            text = f"{canary} {i}"
            sent_at = time.monotonic()
            await alice.call("messages.send", contact=bob.uid, text=text)
            await bob.recorder.wait(lambda n=i + 1: len(bob.received_bodies()) >= n, 30)
            latencies.append((time.monotonic() - sent_at) * 1000.0)
        history = await bob.all_history(alice.uid)
        self.assertEqual([m["body"] for m in history], [f"{canary} {i}" for i in range(COUNT)])
        self.assertEqual(bob.received_bodies(), [f"{canary} {i}" for i in range(COUNT)])
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(f"relayed latency p50 {p50:.2f} ms, p99 {p99:.2f} ms", file=sys.stderr)
        self.assertLessEqual(p99, P99_MS)

        seen = capture.stop()
        self.assertGreater(len(seen), COUNT * 100)  # the session went through this link
        self.assertIn(wire.MAGIC, seen)  # and began with a join there
        self.assertNotIn(canary.encode(), seen)
        self.assertNotIn(canary.encode().hex().encode(), seen)
        # the mailbox logged neither uid nor message
        for needle in (alice.uid, bob.uid, canary):
            self.assertNotIn(needle.encode(), mailbox.output)

    async def test_relay_abuse(self) -> None:
        """When a stranger joins with a token of its own, replays Alice's join captured on the
        wire, and holds 500 joins open at once, then the replay is refused ("token already
        used"), the stranger's joins are refused ("busy") beyond the per-source cap or time out
        without a partner, the mailbox's memory grows by less than 16 MiB, and Alice and Bob's
        relayed session stays up and carries 100 messages meanwhile."""
        mailbox, alice, bob = await self.start(["--relay-timeout", "3"])
        capture = PacketCapture(self.net.public_ns, "h0")
        self.addCleanup(capture.stop)
        await self.befriend(alice, bob)
        seen = capture.stop()
        at = seen.index(wire.MAGIC)
        join = seen[at : at + wire.JOIN_LENGTH]
        link = mailbox.link()
        with netns.inside(self.net.namespaces["c"]):
            endpoint = TCP4ClientEndpoint(reactor, link.host, link.port, timeout=10)

        async def raw(payload: bytes) -> bytes:
            with netns.inside(self.net.namespaces["c"]):
                client = _Raw(payload)
                connecting = connectProtocol(endpoint, client)
            await connecting
            return await client.lost

        # a replayed join: refused
        self.assertEqual(await raw(join), bytes([wire.STATUS_USED]))
        # a stranger's own token: no partner, then closed
        stranger = wire.Join(secrets.token_bytes(32), 0).to_bytes()
        self.assertEqual(await raw(stranger), bytes([wire.STATUS_TIMEOUT]))

        rss_before = mailbox.rss_kib()
        idle = [
            defer.ensureDeferred(raw(wire.Join(secrets.token_bytes(32), n % 2).to_bytes()))
            for n in range(500)
        ]
        sent = []
        for i in range(100):
            sent.append(await alice.call("messages.send", contact=bob.uid, text=f"during {i}"))
        await bob.recorder.wait(lambda: len(bob.received_bodies()) == 100, 30)
        answers = await defer.gatherResults(idle)
        rss_after = mailbox.rss_kib()
        busy = answers.count(bytes([wire.STATUS_BUSY]))
        timed_out = answers.count(bytes([wire.STATUS_TIMEOUT]))
        print(
            f"\n500 idle joins: {busy} busy, {timed_out} timed out; mailbox RSS "
            f"{rss_before} -> {rss_after} KiB",
            file=sys.stderr,
        )
        self.assertEqual(busy + timed_out, 500)
        self.assertGreater(busy, 0)
        self.assertLessEqual(timed_out, 64)  # the per-source cap on waiting joins
        self.assertLess(rss_after - rss_before, 16 * 1024)
        self.assertEqual(bob.received_bodies(), [f"during {i}" for i in range(100)])
        # the pair never dropped: Alice saw Bob go online once and never offline
        states = [
            p["peer"]["status"]
            for p in alice.recorder.named("peer.statusChanged")
            if p["peer"]["uid"] == bob.uid
        ]
        self.assertEqual(states.count("online"), 1, states)
        self.assertEqual(states[-1], "online")
