"""End to end: a file between two daemons whose only path is a mailbox's relay (issue 18).

Topology (:class:`tests.netns.NatTopology`, as in ``tests/test_e2e_relay.py``): Alice and Bob
each in a namespace that reaches a "public" namespace holding a real ``twistd jarvis-mailbox``
but not each other, so neither can dial the other for the data (nor dial back): the data
connection meets at the relay with the transfer's own token, beside the relayed session.
Skipped with the reason where network namespaces are not available (not root, no ``ip``).

:class:`DroppedPacketsTests` runs the same topology behind a NAT that *drops* direct packets
(``NatTopology(drop=True)``): a direct dial waits for its timeout instead of being refused.
"""

from __future__ import annotations

import os
import secrets
import sys
import time

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from bench.harness import percentile
from jarvis.protocol import relay as wire
from tests import netns
from tests.daemons import short_tempdir
from tests.mailboxes import NamespacedMailbox
from tests.peers import Peer
from tests.test_e2e_files import (
    CHUNK,
    LOST_BOUND,
    MiB,
    chunks_resent,
    offer_and_accept,
    offered_ids,
    on_disk,
    random_file,
    received,
    sent_per_connection,
    sha256_of,
    state_of,
    wait_state,
)
from tests.test_e2e_relay import PacketCapture, relay_peer

#: The resumed file (the issue's figure for this test).
SIZE = 32 * MiB
#: The relay's bandwidth per pair and direction in the resume test (MiB/s): slow enough to
#: kill the relay while the file is on its way.
SLOW_RELAY = 4
#: Chat messages timed before and during the relayed transfer, and the issue's bound on their
#: p99 (or three times the same run's p99 before the transfer, on a loaded machine).
CHATS = 200
CHAT_P99_MS = 50.0


async def chat_latencies(alice: Peer, bob: Peer, tag: str) -> list[float]:
    """Send :data:`CHATS` messages one after the other; return each one's latency in ms."""
    latencies = []
    first = len(bob.received_bodies())
    for i in range(CHATS):
        sent_at = time.monotonic()
        await alice.call("messages.send", contact=bob.uid, text=f"{tag} {i}")
        await bob.recorder.wait(lambda n=first + i + 1: len(bob.received_bodies()) >= n, 30)
        latencies.append((time.monotonic() - sent_at) * 1000.0)
    return latencies


class RelayedTransferTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        reason = netns.unavailable()
        if reason is not None:
            raise SkipTest(reason)
        self.net = netns.NatTopology(f"jf{os.getpid() % 100000}", ["a", "b"])
        self.addCleanup(self.net.remove)
        self.root = short_tempdir(self)

    async def start(self, extra: list[str] | None = None) -> tuple[NamespacedMailbox, Peer, Peer]:
        """The mailbox, then Alice and Bob using it, contacts with a live relayed session."""
        os.makedirs(os.path.join(self.root, "mbox"))
        mailbox = NamespacedMailbox(
            self.net.public_ns, os.path.join(self.root, "mbox"), netns.PUBLIC_SERVICE, extra
        )
        self.addCleanup(mailbox.cleanup)
        await mailbox.start()
        ns, addr = self.net.namespaces, self.net.addresses
        alice = relay_peer(self, self.root, "alice", ns["a"], addr["a"])
        bob = relay_peer(self, self.root, "bob", ns["b"], addr["b"])
        await defer.gatherResults(
            [defer.ensureDeferred(p.start(create=True)) for p in (alice, bob)]
        )
        link = str(mailbox.link())
        await defer.gatherResults([p.call("mailbox.use", link=link) for p in (alice, bob)])
        await alice.call("contacts.add", link=bob.link)
        await bob.call("contacts.add", link=alice.link)
        await defer.gatherResults(
            [
                alice.recorder.wait(alice.online_with(bob), 60),
                bob.recorder.wait(bob.online_with(alice), 60),
            ]
        )
        for me in (alice, bob):
            [peer] = (await me.call("peers.status"))["peers"]
            self.assertEqual((peer["status"], peer["path"]), ("online", "relayed"))
        return mailbox, alice, bob

    async def test_file_through_the_relay_arrives_and_the_relay_never_sees_it(self) -> None:
        """When two contacts can reach only the mailbox, then a file offered and accepted
        arrives byte-identical through the relay (neither direct dial nor dial back can work),
        a chat message sent meanwhile arrives on the session, the connection on Alice's link
        began with a relay join, and nothing on her link to the mailbox (the relay's whole view
        of her side) holds the file's content or its name: the relay sees sizes and timing."""
        mailbox, alice, bob = await self.start()
        canary = "canary-" + secrets.token_hex(12)
        name = f"{canary}.txt"
        path = os.path.join(self.root, name)
        with open(path, "wb") as f:
            f.write((canary + "\n").encode() * (4 * MiB // (len(canary) + 1)))
        inbox = os.path.join(self.root, "inbox")
        capture = PacketCapture(self.net.public_ns, "h0")
        self.addCleanup(capture.stop)
        started = time.monotonic()
        sent, _ = await offer_and_accept(alice, bob, path, inbox)
        await alice.call("messages.send", contact=bob.uid, text="during the transfer")
        await wait_state(bob, sent["id"], {"complete", "failed", "cancelled"}, 120)
        elapsed = time.monotonic() - started
        self.assertEqual(state_of(bob, sent["id"]), "complete")
        await wait_state(alice, sent["id"], {"complete"}, 30)
        self.assertEqual(sha256_of(os.path.join(inbox, name)), sha256_of(path))
        await bob.recorder.wait(lambda: "during the transfer" in bob.received_bodies(), 30)
        print(f"\nrelayed 4 MiB file: {elapsed:.2f} s from the offer", file=sys.stderr)
        seen = capture.stop()
        # the data met at the relay on both sides, and it crossed Alice's link (4.2 MB of
        # frames captured for the 4 MiB file; with the capture's default buffer it once saw
        # 0.6 MB, so the check leaves room for a few lost frames)
        await alice.process.wait_for(b"meeting at a relay for transfer", 10)
        await bob.process.wait_for(b"meeting at a relay for transfer", 10)
        self.assertGreater(len(seen), 3 * MiB)
        self.assertIn(wire.MAGIC, seen)  # the file's join (the session joined before the capture)
        self.assertNotIn(canary.encode(), seen)
        self.assertNotIn(canary.encode().hex().encode(), seen)
        for needle in (alice.uid, bob.uid, canary):
            self.assertNotIn(needle.encode(), mailbox.output)
        [peer] = (await alice.call("peers.status"))["peers"]
        self.assertEqual(peer["path"], "relayed")  # chat stayed on its own (relayed) session

    async def test_32_mib_through_the_relay_byte_identical(self) -> None:
        """When a 32 MiB random file goes between two contacts whose only path is the relay
        (its default bandwidth limit, 256 MiB/s per pair and direction), then it arrives
        byte-identical; the rate from accept to complete is printed next to the load."""
        _mailbox, alice, bob = await self.start()
        path = os.path.join(self.root, "big.bin")
        digest = random_file(path, SIZE)
        inbox = os.path.join(self.root, "inbox")
        started = time.monotonic()
        sent, _ = await offer_and_accept(alice, bob, path, inbox)
        await wait_state(bob, sent["id"], {"complete", "failed", "cancelled"}, 180)
        elapsed = time.monotonic() - started
        self.assertEqual(state_of(bob, sent["id"]), "complete")
        self.assertEqual(sha256_of(os.path.join(inbox, "big.bin")), digest)
        with open("/proc/loadavg", encoding="ascii") as f:
            load = f.read().split()[0]
        print(
            f"\nrelayed 32 MiB: {elapsed:.2f} s from the offer, {SIZE / MiB / elapsed:.1f} MiB/s "
            f"(load {load})",
            file=sys.stderr,
        )

    async def test_relay_killed_mid_transfer_resumes(self) -> None:
        """When the mailbox (the relay of both the session and the file) is SIGKILLed while a
        32 MiB file is on its way and started again on the same port, then the session and the
        data connection meet at the relay again (the burnt token's next generation) and the
        transfer completes byte-identical, resumed where it stopped: the receiver's progress
        never restarts from zero.  Before the kill, 200 chat messages sent one after the other
        while the file streams arrive with a p99 latency of at most 50 ms (or three times the
        same run's p99 before the transfer): the session is a pair of its own at the relay, with
        its own bandwidth (behind a 1 MiB chunk at 4 MiB/s a message would wait 250 ms)."""
        mailbox, alice, bob = await self.start(["--relay-bandwidth", str(SLOW_RELAY)])
        path = os.path.join(self.root, "big.bin")
        digest = random_file(path, SIZE)
        inbox = os.path.join(self.root, "inbox")
        base = await chat_latencies(alice, bob, "before")
        sent, _ = await offer_and_accept(alice, bob, path, inbox)
        await wait_state(bob, sent["id"], {"streaming"}, 60)
        during = await chat_latencies(alice, bob, "during")
        self.assertLess(received(bob, sent["id"]), SIZE - 4 * MiB, "no overlap with the file")
        (b50, b99), (d50, d99) = ((percentile(v, 0.5), percentile(v, 0.99)) for v in (base, during))
        with open("/proc/loadavg", encoding="ascii") as f:
            load = f.read().split()[0]
        print(
            f"\nchat p50/p99 before the transfer {b50:.1f}/{b99:.1f} ms, during it "
            f"{d50:.1f}/{d99:.1f} ms (load {load})"
        )
        self.assertLessEqual(d99, max(CHAT_P99_MS, 3 * b99))
        await bob.recorder.wait(lambda: received(bob, sent["id"]) >= 8 * MiB, 120)
        port = mailbox.link().port
        mailbox.listen = f"tcp:{port}:interface={netns.PUBLIC_SERVICE}"
        await mailbox.kill()
        await wait_state(bob, sent["id"], {"accepted"}, 60)
        held = max(received(bob, sent["id"]), 0)
        self.assertLess(held, SIZE, "the transfer ended before the kill: nothing was tested")
        progress_before = len(bob.recorder.named("transfer.progress"))
        await mailbox.start()
        await wait_state(bob, sent["id"], {"complete", "failed", "cancelled"}, 240)
        self.assertEqual(state_of(bob, sent["id"]), "complete")
        self.assertEqual(sha256_of(os.path.join(inbox, "big.bin")), digest)
        after = [
            p["bytes"]
            for p in bob.recorder.named("transfer.progress")[progress_before:]
            if p["id"] == sent["id"]
        ]
        self.assertTrue(after, "no progress after the restart")
        self.assertGreaterEqual(min(after), 8 * MiB - 2 * MiB)  # resumed, not restarted
        print(f"\nrelay killed at {held / MiB:.1f} MiB; resumed from {min(after) / MiB:.1f} MiB")


#: Seconds a data connection may take to start behind a dropping NAT: a direct dial (or dial
#: back) would wait 10 s each for its handshake timeout; the relay must not wait for them.
FAST_START = 8.0


class DroppedPacketsTests(TestCase):
    """Behind a NAT that drops direct packets, a relayed transfer starts as fast as the
    session did, and survives the receiver's kill -9 (issue 18)."""

    timeout = 300
    start = RelayedTransferTests.start

    def setUp(self) -> None:
        reason = netns.unavailable()
        if reason is not None:
            raise SkipTest(reason)
        self.net = netns.NatTopology(f"jd{os.getpid() % 100000}", ["a", "b"], drop=True)
        self.addCleanup(self.net.remove)
        self.root = short_tempdir(self)

    async def test_relayed_transfer_starts_without_waiting_for_direct_timeouts(self) -> None:
        """When direct packets between the contacts are dropped (a dial is never refused) and
        their session is relayed, then a file's data goes through the relay at once: it starts
        streaming well within one direct dial timeout of the accept (it took about 21 s when
        each direct stage waited for its timeout) and arrives byte-identical."""
        _mailbox, alice, bob = await self.start()
        path = os.path.join(self.root, "photo.bin")
        digest = random_file(path, 4 * MiB)
        inbox = os.path.join(self.root, "inbox")
        sent = await alice.call("files.send", contact=bob.uid, path=path)
        await bob.recorder.wait(lambda: sent["id"] in offered_ids(bob), 30)
        started = time.monotonic()
        await bob.call("files.accept", id=sent["id"][:8], directory=inbox)
        await wait_state(bob, sent["id"], {"streaming", "complete", "failed", "cancelled"}, 60)
        start_s = time.monotonic() - started
        await wait_state(bob, sent["id"], {"complete", "failed", "cancelled"}, 120)
        done_s = time.monotonic() - started
        with open("/proc/loadavg", encoding="ascii") as f:
            load = f.read().split()[0]
        print(
            f"\ndropping NAT: relayed data started {start_s:.2f} s after the accept, 4 MiB "
            f"complete after {done_s:.2f} s (load {load})",
            file=sys.stderr,
        )
        self.assertEqual(state_of(bob, sent["id"]), "complete")
        self.assertEqual(sha256_of(os.path.join(inbox, "photo.bin")), digest)
        self.assertLess(start_s, FAST_START)
        await alice.process.wait_for(b"meeting at a relay for transfer", 10)
        await bob.process.wait_for(b"meeting at a relay for transfer", 10)

    async def test_receiver_killed_over_the_relay_resumes(self) -> None:
        """When the receiver is SIGKILLed while a file streams through the relay and
        restarted, then the transfer meets at the relay again and completes byte-identical,
        with the bounds of the direct receiver-kill test (tests/test_e2e_files.py): at most
        one chunk the receiver had verified is sent again, the resumed connection sends
        exactly the chunks not on its disk, and those in flight at the kill are at most
        ``LOST_BOUND``."""
        _mailbox, alice, bob = await self.start(["--relay-bandwidth", str(SLOW_RELAY)])
        path = os.path.join(self.root, "big.bin")
        digest = random_file(path, SIZE)
        inbox = os.path.join(self.root, "inbox")
        sent, _ = await offer_and_accept(alice, bob, path, inbox)
        await bob.recorder.wait(lambda: received(bob, sent["id"]) >= 8 * MiB, 120)
        await bob.kill()
        announced = received(bob, sent["id"])
        await wait_state(alice, sent["id"], {"accepted"}, 60)
        partials = [n for n in os.listdir(inbox) if n.endswith(".jarvis-partial")]
        self.assertEqual(len(partials), 1)
        held, written = on_disk(inbox, SIZE)
        self.assertLess(held, SIZE // CHUNK, "the transfer ended before the kill")
        self.assertLessEqual(announced, written)  # what was announced written survived
        await alice.process.wait_for(b"sent on this connection")
        first_connection = sent_per_connection(alice)
        self.assertEqual(len(first_connection), 1)
        restarted = time.monotonic()
        await bob.start(unlock=True)
        await wait_state(alice, sent["id"], {"complete", "failed", "cancelled"}, 180)
        self.assertEqual(state_of(alice, sent["id"]), "complete")
        self.assertEqual(sha256_of(os.path.join(inbox, "big.bin")), digest)
        await alice.process.wait_for(f"sending {SIZE // CHUNK - held} of".encode())
        self.assertEqual(chunks_resent(alice), [SIZE // CHUNK, SIZE // CHUNK - held])
        lost = first_connection[0] - written
        print(
            f"\nrelayed receiver kill at {held} of {SIZE // CHUNK} chunks: "
            f"{announced} bytes announced written, {written} on disk, {lost} bytes "
            f"in flight sent again; complete {time.monotonic() - restarted:.1f} s after the "
            "restart",
            file=sys.stderr,
        )
        self.assertLessEqual(lost, LOST_BOUND * CHUNK)
