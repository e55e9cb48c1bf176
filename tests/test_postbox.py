"""Tests of the daemon's side of the mailbox in the core: the courier's choice of path (session
or mailbox, after the grace, on a ``task.Clock``), sealing for the contact, collection stored
once, acks routed by deposit.  The mailbox connections are a recording fake
(:class:`~jarvis.core.interfaces.MailboxTransport`); the node, keys and store are real."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from jarvis.core.courier import MAILBOX_ACK_DELAY, MAILBOX_GRACE, MAILBOX_RETRY
from jarvis.core.node import PREKEY_CHECK_INTERVAL, Node
from jarvis.core.postbox import KIND_ACKS, KIND_MESSAGE
from jarvis.crypto import mailseal
from jarvis.crypto.identity import IdentityKey
from jarvis.crypto.mailseal import PrekeyRing
from jarvis.mailbox.wire import ERR_AUTH
from jarvis.protocol.records import MailboxAddress
from tests.test_node import FakeSession, friend_link, make_node, turned

NOW = 1_700_000_000.0


async def until(clock: Any, predicate: Any) -> None:
    """Run the node's clock's turns and the real reactor (where the store's thread answers)
    until *predicate()* holds; the test's timeout bounds it."""
    while not predicate():
        clock.advance(0)
        await deferLater(reactor, 0.001, lambda: None)


class FakeTransport:
    """Records what the postbox asks of the mailboxes."""

    def __init__(self) -> None:
        self.deposits: list[tuple[str, bytes, bytes]] = []
        #: errors the next deposits fail with, in order
        self.failures: list[Exception] = []
        self.handlers: dict[bytes, Any] = {}
        self.deleted: list[bytes] = []
        self.created = 0

    def connect(self, link: str) -> defer.Deferred[Any]:
        return defer.succeed(None)

    def create_queue(self) -> defer.Deferred[tuple[bytes, bytes, bytes, bytes]]:
        self.created += 1
        n = bytes([self.created])
        return defer.succeed((b"r" * 23 + n, b"s" * 23 + n, n * 32, n * 31 + b"k"))

    def delete_queue(self, recipient_id: bytes, recipient_key: bytes) -> defer.Deferred[Any]:
        self.deleted.append(recipient_id)
        self.handlers.pop(recipient_id, None)
        return defer.succeed(None)

    def subscribe(self, recipient_id: bytes, recipient_key: bytes, handler: Any) -> Any:
        self.handlers[recipient_id] = handler
        return defer.succeed(None)

    def deposit(self, link: str, sender_id: bytes, sender_key: bytes, payload: bytes) -> Any:
        if self.failures:
            return defer.fail(self.failures.pop(0))
        self.deposits.append((link, sender_id, payload))
        return defer.succeed(b"msg-id")

    def status(self) -> dict[str, Any]:
        return {"connected": True, "collected": 0, "deposited": len(self.deposits)}

    def disconnect(self) -> defer.Deferred[Any]:
        return defer.succeed(None)


def link_for(seed: int) -> str:
    return f"jarvis-mailbox:{IdentityKey.from_private_bytes(bytes([seed]) * 32).uid}@127.0.0.1:7780"


class PostboxCase(TestCase):
    async def setup_pair(self) -> tuple[Node, Any, list, IdentityKey, FakeTransport, PrekeyRing]:
        """Alice's node using a mailbox, Bob a contact whose mailbox address she learnt."""
        node, clock, events = make_node(self)
        transport = FakeTransport()
        node.mailbox_factory = lambda: transport
        await node.create_identity("Alice", "pw")
        bob, link = friend_link()
        await node.add_contact(link=link)
        await node.mailbox_use(link_for(1))
        bob_ring = PrekeyRing()
        bob_ring.rotate(bob, NOW)
        current = bob_ring.current
        assert current is not None
        address = MailboxAddress(link_for(2), b"b" * 24, b"k" * 32, current.signed.to_bytes())
        node.postbox._address_received(FakeSession(bob.uid), address)
        return node, clock, events, bob, transport, bob_ring

    def open_deposit(self, node: Node, bob: IdentityKey, ring: PrekeyRing, envelope: bytes) -> Any:
        assert node._keys is not None
        alice = node._keys.identity
        return mailseal.open_sealed(bob.uid, ring, alice.uid, alice.public_bytes, envelope)


class PathChoiceTests(PostboxCase):
    async def test_no_session_within_grace_deposits(self) -> None:
        """When Bob has no session and none comes within the grace, then the message is
        sealed for Bob, deposited at his mailbox, and becomes sent via mailbox; not before
        the grace has passed."""
        node, clock, events, bob, transport, ring = await self.setup_pair()
        sent = await node.send_message("Bob", "hello offline")
        clock.advance(MAILBOX_GRACE - 0.1)
        self.assertEqual(transport.deposits, [])
        clock.advance(0.2)
        await until(clock, lambda: any(n == "message.stateChanged" for n, _ in events))
        self.assertEqual(len(transport.deposits), 1)
        link, sender_id, envelope = transport.deposits[0]
        self.assertEqual((link, sender_id), (link_for(2), b"b" * 24))
        self.assertNotIn(b"hello offline", envelope)
        message_id, payload = self.open_deposit(node, bob, ring, envelope)
        self.assertEqual(message_id.hex(), sent["id"])
        self.assertEqual(payload[0], KIND_MESSAGE)
        self.assertEqual(payload[9:], b"hello offline")
        changes = [p for n, p in events if n == "message.stateChanged"]
        self.assertEqual([(p["state"], p.get("via")) for p in changes], [("sent", "mailbox")])

    async def test_session_within_grace_uses_the_session(self) -> None:
        """When a session with Bob comes up within the grace, then the message goes over it
        and nothing is deposited."""
        node, clock, _events, bob, transport, _ring = await self.setup_pair()
        await node.send_message("Bob", "hello online")
        clock.advance(MAILBOX_GRACE / 2)
        session = FakeSession(bob.uid)
        await turned(clock, node.session_established(session))
        clock.advance(MAILBOX_GRACE * 2)
        self.assertEqual([body for _, body, _ in session.sent], [b"hello online"])
        self.assertEqual(transport.deposits, [])
        paths = node.mailbox_status()["contacts"]
        self.assertEqual([(p["uid"], p["path"]) for p in paths], [(bob.uid, "direct")])
        node.session_closed(session, "gone")
        self.assertEqual(node.mailbox_status()["contacts"][0]["path"], "mailbox")

    async def test_no_address_no_deposit(self) -> None:
        """When Bob's mailbox address is not known, then nothing is deposited: the message
        stays queued for a session."""
        node, clock, _events, _bob, transport, _ring = await self.setup_pair()
        node.postbox.peers.clear()
        sent = await node.send_message("Bob", "wait")
        self.assertEqual(node.mailbox_status()["contacts"][0]["path"], "waiting")
        clock.advance(MAILBOX_GRACE * 2)  # the run that fires checks the address first
        self.assertEqual(node.courier._depositing, set())
        self.assertEqual(transport.deposits, [])
        self.assertEqual(sent["state"], "queued")


class Refused(Exception):
    """Stands for jarvis.mailbox.client.MailboxRefused (a code from jarvis.mailbox.wire)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"refused {code}")
        self.code = code


class RetryTests(PostboxCase):
    async def test_unreachable_mailbox_retried_refused_queue_not(self) -> None:
        """When a deposit fails because the mailbox is unreachable, then it is tried again
        after MAILBOX_RETRY and succeeds; when the mailbox refuses the queue's key (the
        contact deleted it), then it is reported and not retried."""
        node, clock, events, _bob, transport, _ring = await self.setup_pair()
        transport.failures.append(ConnectionRefusedError("mailbox down"))
        await node.send_message("Bob", "retry me")
        clock.advance(MAILBOX_GRACE)
        await until(clock, lambda: bool(node.courier._mailbox_timers))
        self.assertEqual(len([n for n, _ in events if n == "mailbox.depositFailed"]), 1)
        clock.advance(MAILBOX_RETRY)
        await until(clock, lambda: len(transport.deposits) == 1)
        transport.failures.append(Refused(ERR_AUTH))
        await node.send_message("Bob", "refused")
        clock.advance(MAILBOX_GRACE)
        await until(clock, lambda: len([n for n, _ in events if n == "mailbox.depositFailed"]) == 2)
        await until(clock, lambda: not node.courier._depositing)
        self.assertEqual(node.courier._mailbox_timers, {})


class CollectTests(PostboxCase):
    async def test_collected_once_and_acked_by_deposit(self) -> None:
        """When Bob's sealed message is collected twice from Alice's queue and also arrives
        over a session, then it is stored once; the ack for the collection goes into Bob's
        queue (no session then)."""
        node, clock, _events, bob, transport, ring = await self.setup_pair()
        current = node.postbox.ring.current
        assert current is not None and node._keys is not None
        mid = bytes(range(16))
        body = bytes([KIND_MESSAGE]) + int(NOW * 1000).to_bytes(8, "big") + b"from bob"
        envelope = mailseal.seal(
            bob, node._keys.uid, node._keys.identity.public_bytes, current.signed, mid, body, NOW
        )
        (handler,) = transport.handlers.values()
        await turned(clock, defer.maybeDeferred(handler, envelope))
        await turned(clock, defer.maybeDeferred(handler, envelope))
        self.assertEqual(transport.deposits, [])  # acks wait to be deposited together
        clock.advance(MAILBOX_ACK_DELAY)
        self.assertEqual(len(transport.deposits), 1)
        session = FakeSession(bob.uid)
        await turned(clock, node.session_established(session))
        await turned(clock, node.message_received(session, mid, b"from bob", int(NOW * 1000)))
        history = (await node.history("Bob"))["messages"]
        self.assertEqual([m["body"] for m in history], ["from bob"])
        acks = []
        for _link, _sid, env in transport.deposits:
            _id, payload = self.open_deposit(node, bob, ring, env)
            if payload[0] == KIND_ACKS:
                acks.extend(payload[i : i + 16] for i in range(1, len(payload), 16))
        self.assertIn(mid, acks)

    async def test_forged_deposit_dropped(self) -> None:
        """When a deposit in Bob's queue is sealed by someone else, then nothing is stored."""
        node, clock, _events, _bob, transport, _ring = await self.setup_pair()
        current = node.postbox.ring.current
        assert current is not None and node._keys is not None
        mallory = IdentityKey.generate()
        body = bytes([KIND_MESSAGE]) + bytes(8) + b"forged"
        envelope = mailseal.seal(
            mallory,
            node._keys.uid,
            node._keys.identity.public_bytes,
            current.signed,
            bytes(16),
            body,
            NOW,
        )
        (handler,) = transport.handlers.values()
        await turned(clock, defer.maybeDeferred(handler, envelope))
        self.assertEqual((await node.history("Bob"))["messages"], [])

    async def test_blocked_contact_deposit_dropped(self) -> None:
        """When Bob is blocked, then his sealed deposit is collected but nothing is stored."""
        node, clock, _events, bob, transport, _ring = await self.setup_pair()
        await node.update_contact("Bob", blocked=True)
        current = node.postbox.ring.current
        assert current is not None and node._keys is not None
        body = bytes([KIND_MESSAGE]) + bytes(8) + b"blocked"
        envelope = mailseal.seal(
            bob,
            node._keys.uid,
            node._keys.identity.public_bytes,
            current.signed,
            bytes(16),
            body,
            NOW,
        )
        (handler,) = transport.handlers.values()
        await turned(clock, defer.maybeDeferred(handler, envelope))
        self.assertEqual((await node.history("Bob"))["messages"], [])

    async def test_removed_contact_queue_deleted(self) -> None:
        """When Bob is removed, then his queue at our mailbox is deleted (he can deposit no
        more) and his address is forgotten."""
        node, _clock, _events, bob, transport, _ring = await self.setup_pair()
        (queue_id,) = transport.handlers
        await node.remove_contact("Bob")
        self.assertEqual(transport.deleted, [queue_id])
        self.assertNotIn(bob.uid, node.postbox.peers)
        self.assertEqual(node.mailbox_status()["queues"], 0)


class ChangeTests(PostboxCase):
    async def test_changing_and_dropping_the_mailbox(self) -> None:
        """When the mailbox changes, then the old queue is deleted (over the old connection,
        before connecting to the new one), a new queue is made and the connected contact is
        told the new address; when it is dropped, the queue is deleted and the contact is
        told an empty address."""
        node, clock, _events, bob, transport, _ring = await self.setup_pair()
        session = FakeSession(bob.uid)
        sent: list[MailboxAddress] = []
        session.send_mailbox_address = sent.append  # type: ignore[attr-defined]
        await turned(clock, node.session_established(session))
        (old_queue,) = transport.handlers
        connected: list[tuple[str, list[bytes]]] = []
        connect = transport.connect

        def recording_connect(link: str) -> Any:
            connected.append((link, list(transport.deleted)))
            return connect(link)

        transport.connect = recording_connect  # type: ignore[method-assign]
        await node.mailbox_use(link_for(3))
        self.assertEqual(connected[0], (link_for(3), [old_queue]))
        self.assertEqual(sent[-1].link, link_for(3))
        self.assertEqual(node.mailbox_status()["queues"], 1)
        (new_queue,) = transport.handlers
        await node.mailbox_drop()
        self.assertEqual(transport.deleted, [old_queue, new_queue])
        self.assertEqual(sent[-1], MailboxAddress(""))
        self.assertIsNone(node.mailbox_status()["link"])


class RotationTests(PostboxCase):
    async def test_daily_check_rotates_and_announces(self) -> None:
        """When a week passes while unlocked, then the daily check makes a new prekey, tells
        the connected contact, and keeps the old one until it is two weeks old."""
        node, clock, _events, bob, _transport, _ring = await self.setup_pair()
        session = FakeSession(bob.uid)
        sent: list[MailboxAddress] = []
        session.send_mailbox_address = sent.append  # type: ignore[attr-defined]
        await turned(clock, node.session_established(session))
        first = node.postbox.ring.current
        assert first is not None
        self.assertEqual(sent[-1].prekey, first.signed.to_bytes())
        now = [NOW + mailseal.ROTATE_AFTER]
        node.postbox.now = lambda: now[0]
        clock.advance(PREKEY_CHECK_INTERVAL)
        second = node.postbox.ring.current
        assert second is not None
        self.assertNotEqual(second.signed.prekey_id, first.signed.prekey_id)
        self.assertEqual(sent[-1].prekey, second.signed.to_bytes())
        self.assertIsNotNone(node.postbox.ring.find(first.signed.prekey_id))
        now[0] = NOW + mailseal.DELETE_AFTER
        clock.advance(PREKEY_CHECK_INTERVAL)
        self.assertIsNone(node.postbox.ring.find(first.signed.prekey_id))
