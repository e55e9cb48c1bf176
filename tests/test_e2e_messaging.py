"""End to end: real twistd daemons with separate data directories talking over loopback.

Each test starts its daemons as child processes, drives them through the real local API and
waits for the events it expects.  What each test tries and what must survive is in its docstring.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase

from tests.daemons import short_tempdir
from tests.peers import PASSWORD, Peer, befriend


async def start_pair(testcase: TestCase) -> tuple[Peer, Peer, str]:
    root = short_tempdir(testcase)
    alice, bob = Peer(testcase, root, "alice"), Peer(testcase, root, "bob")
    await defer.gatherResults(
        [
            defer.ensureDeferred(alice.start(create=True)),
            defer.ensureDeferred(bob.start(create=True)),
        ]
    )
    return alice, bob, root


async def send_all(peer: Peer, contact: str, bodies: list[str]) -> list[dict[str, Any]]:
    """Issue every send at once (pipelined) and return the stored messages in order."""
    return list(
        await defer.gatherResults(
            [peer.call("messages.send", contact=contact, text=b) for b in bodies]
        )
    )


class ExchangeTests(TestCase):
    timeout = 180

    async def test_thousand_each_way(self) -> None:
        """When two daemons send 1,000 messages each to the other at the same time, then every
        message is received exactly once, in order, and every sender sees all its messages
        delivered."""
        alice, bob, _root = await start_pair(self)
        await befriend(alice, bob)
        a_bodies = [f"from alice {i}" for i in range(1000)]
        b_bodies = [f"from bob {i}" for i in range(1000)]
        a_sent, b_sent = await defer.gatherResults(
            [
                defer.ensureDeferred(send_all(alice, bob.uid, a_bodies)),
                defer.ensureDeferred(send_all(bob, alice.uid, b_bodies)),
            ]
        )
        a_ids = {m["id"] for m in a_sent}
        b_ids = {m["id"] for m in b_sent}
        await defer.gatherResults(
            [
                bob.recorder.wait(lambda: len(bob.received_bodies()) >= 1000, 120),
                alice.recorder.wait(lambda: len(alice.received_bodies()) >= 1000, 120),
                alice.recorder.wait(lambda: a_ids <= alice.delivered_ids(), 120),
                bob.recorder.wait(lambda: b_ids <= bob.delivered_ids(), 120),
            ]
        )
        self.assertEqual(bob.received_bodies(), a_bodies)
        self.assertEqual(alice.received_bodies(), b_bodies)
        history = await alice.all_history(bob.uid)
        self.assertEqual([m["body"] for m in history if m["direction"] == "in"], b_bodies)
        self.assertEqual({m["state"] for m in history if m["direction"] == "out"}, {"delivered"})
        self.assertEqual(len(history), 2000)


class CrashTests(TestCase):
    timeout = 180

    async def test_receiver_killed_mid_stream(self) -> None:
        """When the receiver is SIGKILLed while a stream of messages arrives and restarted, then
        every message is delivered exactly once and in order."""
        alice, bob, _root = await start_pair(self)
        await befriend(alice, bob)
        bodies = [f"m{i:04d}" for i in range(400)]
        sending = defer.ensureDeferred(send_all(alice, bob.uid, bodies))
        await bob.recorder.wait(lambda: len(bob.received_bodies()) >= 20, 60)
        await bob.kill()
        accepted = await sending
        self.assertEqual(len(accepted), 400)
        await bob.start(unlock=True)
        ids = {m["id"] for m in accepted}
        await alice.recorder.wait(lambda: ids <= alice.delivered_ids(), 90)
        history = await bob.all_history(alice.uid)
        self.assertEqual([m["body"] for m in history], bodies)

    async def test_sender_killed_after_accepting(self) -> None:
        """When the sender is SIGKILLed right after accepting messages for an offline contact and
        restarted, then everything it accepted is delivered exactly once and in order."""
        alice, bob, _root = await start_pair(self)
        await befriend(alice, bob)
        await bob.stop()
        bodies = [f"queued {i}" for i in range(200)]
        accepted = await send_all(alice, bob.uid, bodies)
        self.assertEqual({m["state"] for m in accepted}, {"queued"})
        await alice.kill()
        await bob.start(unlock=True)
        await alice.start(unlock=True)
        ids = {m["id"] for m in accepted}
        await alice.recorder.wait(lambda: ids <= alice.delivered_ids(), 90)
        history = await bob.all_history(alice.uid)
        self.assertEqual([m["body"] for m in history], bodies)


class ReadReceiptTests(TestCase):
    timeout = 180

    async def test_read_while_sender_down_reaches_sender_after_restart(self) -> None:
        """When the receiver reads messages while the sender's daemon is stopped, then after the
        sender starts again it learns they were read (the receipts were owed, not lost), and its
        history says read."""
        alice, bob, _root = await start_pair(self)
        await befriend(alice, bob)
        sent = await send_all(alice, bob.uid, ["first", "second"])
        ids = {m["id"] for m in sent}
        await alice.recorder.wait(lambda: ids <= alice.delivered_ids(), 60)
        await alice.stop()
        result = await bob.call("messages.markRead", contact=alice.uid)
        self.assertEqual(result, {"count": 2})
        await alice.start(unlock=True)

        def read_ids() -> set[str]:
            return {
                p["id"]
                for p in alice.recorder.named("message.stateChanged")
                if p["state"] == "read"
            }

        # Unlocked from its password file, alice may have its session and the receipts before
        # the test's client subscribed (alice.start subscribes, then waits for the unlock):
        # what the history says read already counts, and any later change is an event.
        history = await alice.all_history(bob.uid)
        already = {m["id"] for m in history if m["state"] == "read"}
        await alice.recorder.wait(lambda: ids <= already | read_ids(), 60)
        history = await alice.all_history(bob.uid)
        self.assertEqual([m["state"] for m in history], ["read", "read"])


class RecordingRelay(portforward.ProxyFactory):
    """A TCP relay that keeps every byte crossing it, both directions."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.captured = bytearray()

    def buildProtocol(self, addr: Any) -> Any:
        relay = self

        class Server(portforward.ProxyServer):
            def dataReceived(self, data: bytes) -> None:
                relay.captured += data
                super().dataReceived(data)

        class Client(portforward.ProxyClient):
            def dataReceived(self, data: bytes) -> None:
                relay.captured += data
                super().dataReceived(data)

        class ClientFactory(portforward.ProxyClientFactory):
            protocol = Client

        Server.clientProtocolFactory = ClientFactory
        p = Server()
        p.factory = self
        return p


class WireTests(TestCase):
    timeout = 120

    async def test_no_plaintext_on_the_wire(self) -> None:
        """When contacts added by hand (uid + address) exchange messages carrying a random
        canary across a recording relay, then the messages arrive, and neither the capture nor
        the daemons' logs hold the canary (or its base64 or hex) or the password."""
        alice, bob, _root = await start_pair(self)
        relay = RecordingRelay("127.0.0.1", bob.peer_port())
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(relay)
        self.addCleanup(port.stopListening)
        relay_address = f"127.0.0.1:{port.getHost().port}"
        # manual entries (uid + address): alice reaches bob only through the relay, bob cannot
        # dial alice back; both learn the other's key from its uid-checked certificate
        await alice.call("contacts.add", uid=bob.uid, addresses=[relay_address], name="bob")
        await bob.call("contacts.add", uid=alice.uid, addresses=["127.0.0.1:1"], name="alice")
        await alice.recorder.wait(alice.online_with(bob), 60)
        canary = "canary-" + secrets.token_hex(12)
        sent = await send_all(alice, bob.uid, [f"{canary} {i}" for i in range(20)])
        await send_all(bob, alice.uid, [f"re {canary}"])
        ids = {m["id"] for m in sent}
        await alice.recorder.wait(lambda: ids <= alice.delivered_ids(), 60)
        await alice.recorder.wait(lambda: len(alice.received_bodies()) == 1, 60)
        capture = bytes(relay.captured)
        self.assertGreater(len(capture), 2000)
        needles = (
            canary.encode(),
            base64.b64encode(canary.encode())[:20],
            canary.encode().hex().encode(),
        )
        for needle in needles:
            self.assertNotIn(needle, capture)
        # nor do the daemons' logs carry message text or the password
        for peer in (alice, bob):
            with open(os.path.join(peer.data_dir, "jarvis.log.json"), "rb") as f:
                logs = f.read() + peer.process.output
            self.assertIn(b"session with", logs)
            for needle in (*needles, PASSWORD.encode()):
                self.assertNotIn(needle, logs)


class RawClient(protocol.Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred[float] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(time.monotonic())


class HostileInputTests(TestCase):
    timeout = 120

    async def test_impersonation_refused(self) -> None:
        """When a stranger claims a contact's name, and when a contact's address leads to a
        different key than its uid, then neither ever becomes an online session."""
        root = short_tempdir(self)
        alice, bob, carol = (Peer(self, root, n) for n in ("alice", "bob", "carol"))
        for p in (alice, bob, carol):
            await p.start(create=True)
        # carol (a stranger to alice) has alice as contact and dials her: refused (unknown key)
        await carol.call("contacts.add", link=alice.link)
        # alice believes carol's address belongs to bob: the pinned uid does not match
        await alice.call("contacts.add", link=bob.link)
        await alice.call("contacts.update", contact=bob.uid, addresses=carol.link_addresses())

        def failed_towards_bob() -> bool:
            return any(
                p["peer"]["uid"] == bob.uid and (p["peer"].get("connect_failures") or 0) >= 1
                for p in alice.recorder.named("peer.statusChanged")
            )

        await alice.recorder.wait(failed_towards_bob, 60)
        status = await alice.call("peers.status")
        self.assertEqual([p["uid"] for p in status["peers"]], [bob.uid])
        self.assertNotEqual(status["peers"][0]["status"], "online")
        self.assertTrue(status["peers"][0]["last_error"])
        carol_status = await carol.call("peers.status")
        self.assertFalse(any(p["status"] == "online" for p in carol_status["peers"]))

    async def test_garbage_and_stall_dropped_others_unaffected(self) -> None:
        """When a client sends garbage to the peer port and another opens a connection and
        stalls, then both are dropped (the stall within the handshake deadline) while an
        established session keeps delivering."""
        alice, bob, _root = await start_pair(self)
        await befriend(alice, bob)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", alice.peer_port())
        garbage = RawClient()
        await connectProtocol(endpoint, garbage)
        garbage.transport.write(os.urandom(4096))
        staller = RawClient()
        started = time.monotonic()
        await connectProtocol(endpoint, staller)
        await garbage.lost
        sent = await send_all(bob, alice.uid, ["still here"])
        await bob.recorder.wait(lambda: sent[0]["id"] in bob.delivered_ids(), 30)
        dropped_at = await staller.lost
        self.assertLess(dropped_at - started, 25.0)
        self.assertEqual(alice.received_bodies(), ["still here"])

    async def test_simultaneous_connect_one_session(self) -> None:
        """When both sides add each other at the same moment, then both end online with one
        session each and messages flow both ways."""
        alice, bob, _root = await start_pair(self)
        await defer.gatherResults(
            [alice.call("contacts.add", link=bob.link), bob.call("contacts.add", link=alice.link)]
        )
        await defer.gatherResults(
            [alice.recorder.wait(alice.online_with(bob)), bob.recorder.wait(bob.online_with(alice))]
        )
        a = await send_all(alice, bob.uid, ["ping"])
        b = await send_all(bob, alice.uid, ["pong"])
        await alice.recorder.wait(lambda: a[0]["id"] in alice.delivered_ids(), 30)
        await bob.recorder.wait(lambda: b[0]["id"] in bob.delivered_ids(), 30)
        status = await alice.call("peers.status")
        (peer,) = status["peers"]
        self.assertEqual(peer["status"], "online")
        self.assertEqual(bob.received_bodies(), ["ping"])
        self.assertEqual(alice.received_bodies(), ["pong"])


class EchoBotTests(TestCase):
    timeout = 120

    async def test_echo_bot_answers_through_real_daemon(self) -> None:
        """When examples/echo_bot.py runs against bob's real daemon and alice writes to bob,
        then alice receives the echo of each message."""
        from twisted.internet.utils import getProcessOutputAndValue

        from tests.daemons import REPO, child_env

        alice, bob, _root = await start_pair(self)
        await befriend(alice, bob)
        bot = getProcessOutputAndValue(
            sys.executable,
            [
                os.path.join(REPO, "examples", "echo_bot.py"),
                "--endpoint",
                bob.process.endpoint,
                "--count",
                "2",
            ],
            env=child_env(),
            reactor=reactor,
        )
        # the bot subscribes before it can answer: wait until bob's daemon counts 2 subscribers
        await _wait_subscribers(bob, 2)
        await send_all(alice, bob.uid, ["one", "two"])
        await alice.recorder.wait(lambda: len(alice.received_bodies()) == 2, 60)
        self.assertEqual(alice.received_bodies(), ["echo: one", "echo: two"])
        _out, err, code = await bot
        self.assertEqual(code, 0, err)


async def _wait_subscribers(peer: Peer, count: int) -> None:
    """Wait until *count* clients of *peer*'s daemon receive events (polls daemon.status)."""
    from twisted.internet.task import deferLater

    for _ in range(500):
        status = await peer.call("daemon.status")
        if status.get("subscribers", 0) >= count:
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("the bot never subscribed")
