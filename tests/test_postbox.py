"""Tests of the daemon's side of the mailbox in the core: the courier's choice of path (session
or mailbox, after the grace, on a ``task.Clock``), sealing for the contact, collection stored
once, acks routed by deposit.  The mailbox connections are a recording fake
(:class:`~jarvis.core.interfaces.MailboxTransport`); the node, keys and store are real."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from jarvis.core.courier import MAILBOX_ACK_DELAY, MAILBOX_GRACE, MAILBOX_RETRY
from jarvis.core.node import PREKEY_CHECK_INTERVAL, Node
from jarvis.core.postbox import KIND_ACKS, KIND_ADDRESS, KIND_MESSAGE
from jarvis.crypto import linkcode, mailseal
from jarvis.crypto.identity import IdentityKey
from jarvis.crypto.mailseal import PrekeyRing
from jarvis.mailbox.wire import ERR_AUTH
from jarvis.net.network import PeerStatus
from jarvis.protocol.records import MailboxAddress, encode_record, parse_record
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


def report_state(node: Node, uid: str, state: Any) -> None:
    """Report *uid*'s connection state to *node* as the peer network does."""
    node.contacts.peer_status_changed(uid, PeerStatus(uid=uid, state=state))


class PathChoiceTests(PostboxCase):
    async def test_no_dial_in_flight_deposits_at_once(self) -> None:
        """When Bob has no session and no dial to him is in flight, then the message is
        sealed for Bob and deposited at his mailbox at once (no grace: the clock does not
        move), and becomes sent via mailbox."""
        node, clock, events, bob, transport, ring = await self.setup_pair()
        report_state(node, bob.uid, "offline")
        sent = await node.send_message("Bob", "hello offline")
        await until(clock, lambda: any(n == "message.stateChanged" for n, _ in events))
        self.assertEqual(clock.seconds(), 0)
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

    async def test_dial_in_flight_waits_until_it_fails(self) -> None:
        """When a dial to Bob is in flight, then the deposit waits for it; when that dial
        ends without a session, then the message is deposited at once (before the grace
        ends)."""
        node, clock, events, bob, transport, _ring = await self.setup_pair()
        report_state(node, bob.uid, "connecting")
        await node.send_message("Bob", "after the dial")
        clock.advance(MAILBOX_GRACE / 4)
        await turned(clock, defer.succeed(None))
        self.assertEqual(transport.deposits, [])
        report_state(node, bob.uid, "offline")
        await until(clock, lambda: any(n == "message.stateChanged" for n, _ in events))
        self.assertEqual(len(transport.deposits), 1)
        self.assertLess(clock.seconds(), MAILBOX_GRACE)

    async def test_dial_in_flight_waits_at_most_the_grace(self) -> None:
        """When a dial to Bob stays in flight, then the message is deposited once the grace
        has passed, not before."""
        node, clock, events, bob, transport, _ring = await self.setup_pair()
        report_state(node, bob.uid, "connecting")
        await node.send_message("Bob", "slow dial")
        clock.advance(MAILBOX_GRACE - 0.1)
        await turned(clock, defer.succeed(None))
        self.assertEqual(transport.deposits, [])
        clock.advance(0.2)
        await until(clock, lambda: any(n == "message.stateChanged" for n, _ in events))
        self.assertEqual(len(transport.deposits), 1)

    async def test_session_within_grace_uses_the_session(self) -> None:
        """When a session with Bob comes up while the dial was in flight, then the message
        goes over it and nothing is deposited (not even after the dial's later state)."""
        node, clock, _events, bob, transport, _ring = await self.setup_pair()
        report_state(node, bob.uid, "connecting")
        await node.send_message("Bob", "hello online")
        clock.advance(MAILBOX_GRACE / 2)
        session = FakeSession(bob.uid)
        await turned(clock, node.session_established(session))
        report_state(node, bob.uid, "online")
        clock.advance(MAILBOX_GRACE * 2)
        self.assertEqual([body for _, body, _ in session.sent], [b"hello online"])
        self.assertEqual(transport.deposits, [])
        paths = node.mailbox_status()["contacts"]
        self.assertEqual([(p["uid"], p["path"]) for p in paths], [(bob.uid, "direct")])
        node.session_closed(session, "gone")
        self.assertEqual(node.mailbox_status()["contacts"][0]["path"], "mailbox")

    async def test_session_after_deposit_takes_over(self) -> None:
        """When a message was deposited (no dial in flight) and a session with Bob comes up
        before Bob acknowledged it, then the direct path takes over: the message (same id)
        is written on the session too (Bob stores it once, by id), and new messages go over
        the session only."""
        node, clock, events, bob, transport, _ring = await self.setup_pair()
        first = await node.send_message("Bob", "deposited first")
        await until(clock, lambda: any(n == "message.stateChanged" for n, _ in events))
        self.assertEqual(len(transport.deposits), 1)
        session = FakeSession(bob.uid)
        await turned(clock, node.session_established(session))
        await until(clock, lambda: len(session.sent) == 1)
        self.assertEqual(session.sent[0][0].hex(), first["id"])
        await node.send_message("Bob", "over the session")
        await until(clock, lambda: len(session.sent) == 2)
        self.assertEqual(session.sent[1][1], b"over the session")
        self.assertEqual(len(transport.deposits), 1)

    async def test_no_address_no_deposit(self) -> None:
        """When Bob's mailbox address is not known, then nothing is deposited: the message
        stays queued for a session."""
        node, clock, _events, _bob, transport, _ring = await self.setup_pair()
        node.postbox.peers.clear()
        sent = await node.send_message("Bob", "wait")
        status = node.mailbox_status()["contacts"][0]
        self.assertEqual(status["path"], "none")  # peerpath's word, as in contacts.list
        views = await node.list_contacts()
        self.assertEqual(status["path"], views[0]["path"])
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

    async def test_a_new_message_does_not_wait_for_an_earlier_retry(self) -> None:
        """When a deposit failed (the mailbox unreachable) and waits for its retry, and a new
        message is sent, then both are deposited at once, not MAILBOX_RETRY later."""
        node, clock, _events, _bob, transport, _ring = await self.setup_pair()
        transport.failures.append(ConnectionRefusedError("mailbox down"))
        await node.send_message("Bob", "first")
        clock.advance(MAILBOX_GRACE)
        await until(clock, lambda: bool(node.courier._mailbox_timers))
        await until(clock, lambda: not node.courier._depositing)
        await node.send_message("Bob", "second")
        clock.advance(MAILBOX_GRACE)
        await until(clock, lambda: len(transport.deposits) == 2)


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
        handler = transport.handlers[node.postbox.queues[bob.uid][0]]
        await turned(clock, defer.maybeDeferred(handler, envelope))
        await turned(clock, defer.maybeDeferred(handler, envelope))
        self.assertEqual(transport.deposits, [])  # acks wait to be deposited together
        clock.advance(MAILBOX_ACK_DELAY)
        await until(clock, lambda: len(transport.deposits) >= 1)  # sealed off the reactor
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
        node, clock, _events, bob, transport, _ring = await self.setup_pair()
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
        handler = transport.handlers[node.postbox.queues[bob.uid][0]]
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
        handler = transport.handlers[node.postbox.queues[bob.uid][0]]
        await turned(clock, defer.maybeDeferred(handler, envelope))
        self.assertEqual((await node.history("Bob"))["messages"], [])

    async def test_removed_contact_queue_deleted(self) -> None:
        """When Bob is removed, then his queue at our mailbox is deleted (he can deposit no
        more) and his address is forgotten."""
        node, _clock, _events, bob, transport, _ring = await self.setup_pair()
        queue_id = node.postbox.queues[bob.uid][0]
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
        old_queue = node.postbox.queues[bob.uid][0]
        old_intro = node.postbox.queues[""][0]
        connected: list[tuple[str, list[bytes]]] = []
        connect = transport.connect

        def recording_connect(link: str) -> Any:
            connected.append((link, list(transport.deleted)))
            return connect(link)

        transport.connect = recording_connect  # type: ignore[method-assign]
        await node.mailbox_use(link_for(3))
        self.assertEqual(connected[0], (link_for(3), [old_queue, old_intro]))
        self.assertEqual(sent[-1].link, link_for(3))
        self.assertEqual(node.mailbox_status()["queues"], 1)
        new_queue = node.postbox.queues[bob.uid][0]
        new_intro = node.postbox.queues[""][0]
        await node.mailbox_drop()
        self.assertEqual(transport.deleted, [old_queue, old_intro, new_queue, new_intro])
        self.assertEqual(sent[-1], MailboxAddress(""))
        self.assertIsNone(node.mailbox_status()["link"])


class EarlySessionTests(PostboxCase):
    async def test_a_session_while_the_keys_are_wiped_hears_nothing(self) -> None:
        """When a contact's session reaches the postbox while the keys are wiped (the network
        closes its sessions after the postbox is closed), then we tell the contact nothing
        rather than "no mailbox" (it would forget our address) and keep nothing it tells us;
        after the unlock the session hears our real address and the stored address of the
        contact stands."""
        node, _clock, _events, bob, _transport, ring = await self.setup_pair()
        stored = node.postbox.peers[bob.uid]
        await node.lock(wipe=True)
        session = FakeSession(bob.uid)
        sent: list[MailboxAddress] = []
        session.send_mailbox_address = sent.append  # type: ignore[attr-defined]
        node.postbox.session_established(session)
        current = ring.current
        assert current is not None
        other = MailboxAddress(link_for(4), b"n" * 24, b"m" * 32, current.signed.to_bytes())
        node.postbox._address_received(session, other)
        self.assertEqual(sent, [])
        self.assertEqual(node.postbox.peers, {})
        await node.unlock("pw")
        self.assertEqual([a.link for a in sent], [link_for(1)])
        self.assertEqual(node.postbox.peers[bob.uid], stored)
        self.assertEqual(node.courier.path_of(bob.uid), "mailbox")


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


def card_with_mailbox(name: str, link: str) -> tuple[IdentityKey, PrekeyRing, str]:
    """A new key, its prekey ring and its link code carrying an introduction queue."""
    key = IdentityKey.generate()
    ring = PrekeyRing()
    ring.rotate(key, NOW)
    assert ring.current is not None
    box = linkcode.CardMailbox(link, b"i" * 24, b"j" * 32, ring.current.signed.to_bytes())
    card = linkcode.make_card(key, name, ("192.0.2.10:7770",), int(NOW), box)
    return key, ring, linkcode.encode_link(card)


def kinds(node: Node, key: IdentityKey, ring: PrekeyRing, transport: FakeTransport) -> list:
    """``(sender_id, kind, rest)`` of every deposit, opened as *key* (the recipient)."""
    assert node._keys is not None
    alice = node._keys.identity
    opened = []
    for _link, sender_id, envelope in transport.deposits:
        _mid, payload = mailseal.open_sealed(key.uid, ring, alice.uid, alice.public_bytes, envelope)
        opened.append((sender_id, payload[0], payload[1:]))
    return opened


class IntroductionTests(PostboxCase):
    """Link codes and cards carrying a mailbox queue (issue 15)."""

    async def test_own_code_carries_the_introduction_queue(self) -> None:
        """When no mailbox is in use, then our link code is a version 1 card; once one is,
        then it carries the mailbox link, the introduction queue's sender half and our
        current signed prekey."""
        node, _clock, _events = make_node(self)
        transport = FakeTransport()
        node.mailbox_factory = lambda: transport
        await node.create_identity("Alice", "pw")
        self.assertIsNone(linkcode.decode_link(node.show_identity()["link"]).mailbox)
        await node.mailbox_use(link_for(1))
        box = linkcode.decode_link(node.show_identity()["link"]).mailbox
        intro = node.postbox.queues[""]
        current = node.postbox.ring.current
        assert box is not None and current is not None
        self.assertEqual(box.link, link_for(1))
        self.assertEqual((box.sender_id, box.sender_key), (intro[1], intro[3]))
        self.assertEqual(box.prekey, current.signed.to_bytes())
        self.assertEqual(node.mailbox_status()["queues"], 0)  # the intro queue is not counted

    async def test_added_from_a_code_deposits_at_once(self) -> None:
        """When Alice adds Carol from a code carrying Carol's introduction queue, then a
        message to Carol (no session, no dial in flight) is deposited there at once, sealed
        to Carol's prekey, after Alice's own address for Carol (so Carol can answer into
        Alice's queue for her)."""
        node, clock, events, _bob, transport, _ring = await self.setup_pair()
        carol, carol_ring, code = card_with_mailbox("Carol", link_for(4))
        await node.add_contact(link=code)
        await until(clock, lambda: "" in node.postbox.queues and len(node.postbox.queues) == 3)
        self.assertIn(carol.uid, node.postbox.card_peers)
        sent = await node.send_message("Carol", "hello before we ever met")
        await until(clock, lambda: any(n == "message.stateChanged" for n, _ in events))
        opened = kinds(node, carol, carol_ring, transport)
        self.assertEqual([(sid, kind) for sid, kind, _ in opened], [(b"i" * 24, 3), (b"i" * 24, 1)])
        address = parse_record(opened[0][2])
        assert isinstance(address, MailboxAddress)
        self.assertEqual(address, node.postbox.own_address(carol.uid))
        self.assertEqual(opened[1][2][8:], b"hello before we ever met")
        states = [p for n, p in events if n == "message.stateChanged" and p["id"] == sent["id"]]
        self.assertEqual(states[0]["via"], "mailbox")

    async def test_introduction_deposit_opened_for_the_contact_that_sealed_it(self) -> None:
        """When Bob (who added Alice from her code) deposits into her introduction queue, then
        the message is stored as Bob's and Alice tells Bob her queue for him by a deposit; a
        stranger's deposit there is dropped."""
        node, clock, _events, bob, transport, ring = await self.setup_pair()
        current = node.postbox.ring.current
        assert current is not None and node._keys is not None
        handler = transport.handlers[node.postbox.queues[""][0]]
        body = bytes([KIND_MESSAGE]) + int(NOW * 1000).to_bytes(8, "big") + b"via your code"
        for sender in (IdentityKey.generate(), bob):
            envelope = mailseal.seal(
                sender,
                node._keys.uid,
                node._keys.identity.public_bytes,
                current.signed,
                bytes([len(transport.deposits)]) * 16,
                body,
                NOW,
            )
            await turned(clock, defer.maybeDeferred(handler, envelope))
        messages = (await node.history("Bob"))["messages"]
        self.assertEqual([m["body"] for m in messages], ["via your code"])
        opened = kinds(node, bob, ring, transport)
        self.assertEqual(opened[0][1], 3)
        self.assertEqual(parse_record(opened[0][2]), node.postbox.own_address(bob.uid))

    async def test_address_by_deposit_replaces_the_code(self) -> None:
        """When Carol, added from her code, deposits her own queue's address for Alice, then
        Alice deposits there from then on (not into the introduction queue)."""
        node, clock, _events, _bob, transport, _ring = await self.setup_pair()
        carol, carol_ring, code = card_with_mailbox("Carol", link_for(4))
        await node.add_contact(link=code)
        await until(
            clock,
            lambda: node.postbox.queues.get(carol.uid, (b"",))[0] in transport.handlers,
        )
        current, carol_prekey = node.postbox.ring.current, carol_ring.current
        assert current is not None and carol_prekey is not None and node._keys is not None
        own = MailboxAddress(link_for(5), b"c" * 24, b"d" * 32, carol_prekey.signed.to_bytes())
        envelope = mailseal.seal(
            carol,
            node._keys.uid,
            node._keys.identity.public_bytes,
            current.signed,
            bytes(16),
            bytes([KIND_ADDRESS]) + encode_record(own),
            NOW,
        )
        handler = transport.handlers[node.postbox.queues[carol.uid][0]]
        await turned(clock, defer.maybeDeferred(handler, envelope))
        self.assertEqual(node.postbox.peers[carol.uid], own)
        self.assertNotIn(carol.uid, node.postbox.card_peers)
        # a later (older) code does not replace what Carol told us
        await node.add_contact(link=code)
        self.assertEqual(node.postbox.peers[carol.uid], own)


class TellEveryContactTests(PostboxCase):
    async def test_change_and_drop_reach_offline_contacts_by_deposit(self) -> None:
        """When Alice changes her mailbox, then Bob, who has no session now but whose queue
        she knows, gets her new address by a deposit; when she drops it, he gets an empty
        address the same way (he deposits nothing any more)."""
        node, clock, _events, bob, transport, ring = await self.setup_pair()
        await node.mailbox_use(link_for(3))
        await until(clock, lambda: len(transport.deposits) == 1)
        ((_sid, kind, rest),) = kinds(node, bob, ring, transport)
        self.assertEqual(kind, 3)
        told = parse_record(rest)
        assert isinstance(told, MailboxAddress)
        self.assertEqual(told.link, link_for(3))
        self.assertEqual(told, node.postbox.own_address(bob.uid))
        await node.mailbox_drop()
        await until(clock, lambda: len(transport.deposits) == 2)
        _sid, kind, rest = kinds(node, bob, ring, transport)[1]
        self.assertEqual((kind, parse_record(rest)), (3, MailboxAddress("")))


class SentViaMailboxTests(PostboxCase):
    async def test_path_recorded_shown_and_kept_across_restart(self) -> None:
        """When a message is deposited in Bob's mailbox, then its history entry says path
        mailbox (a message later sent over a session says direct), also after the keys were
        wiped and the store reopened; Bob's contact view and peer status say mailbox while
        he has no session, direct while he has one."""
        node, clock, events, bob, _transport, _ring = await self.setup_pair()
        deposited = await node.send_message("Bob", "deposited")
        self.assertIsNone(deposited["path"])  # queued: no path yet
        await until(clock, lambda: any(n == "message.stateChanged" for n, _ in events))
        (change,) = [p for n, p in events if n == "message.stateChanged"]
        self.assertEqual((change["via"], change["path"]), ("mailbox", "mailbox"))
        (contact,) = await node.list_contacts()
        self.assertEqual(contact["path"], "mailbox")
        self.assertEqual(node.peers_status()["peers"][0]["path"], "mailbox")
        session = FakeSession(bob.uid)
        await turned(clock, node.session_established(session))
        report_state(node, bob.uid, "online")
        (contact,) = await node.list_contacts()
        self.assertEqual(contact["path"], "direct")
        direct = await node.send_message("Bob", "direct")
        await turned(clock, node.acks_received(session, [bytes.fromhex(direct["id"])]))
        node.session_closed(session, "gone")
        report_state(node, bob.uid, "offline")
        await node.lock(wipe=True)
        await node.unlock("pw")
        history = (await node.history("Bob"))["messages"]
        self.assertEqual(
            [(m["body"], m["path"]) for m in history],
            [("direct", "direct"), ("deposited", "mailbox")],
        )


class OffReactorTests(PostboxCase):
    async def test_sealing_and_opening_run_off_the_reactor_thread(self) -> None:
        """When Alice deposits for Bob and collects Bob's deposits (his queue and the
        introduction queue), then every seal and open runs on a thread other than the
        reactor's, and what was collected is stored once."""
        node, clock, _events, bob, transport, _ring = await self.setup_pair()
        ran: list[tuple[str, bool]] = []
        main = threading.current_thread()

        def recording(f: Any, *args: Any, **kwargs: Any) -> Any:
            def run() -> Any:
                ran.append((f.__name__, threading.current_thread() is not main))
                return f(*args, **kwargs)

            return threads.deferToThread(run)

        node.postbox._run_blocking = recording
        report_state(node, bob.uid, "offline")
        await node.send_message("Bob", "to bob")
        await until(clock, lambda: len(transport.deposits) >= 1)
        current = node.postbox.ring.current
        assert current is not None and node._keys is not None
        for n, queue in ((1, node.postbox.queues[bob.uid][0]), (2, node.postbox.queues[""][0])):
            body = bytes([KIND_MESSAGE]) + int(NOW * 1000).to_bytes(8, "big") + b"from bob %d" % n
            envelope = mailseal.seal(
                bob,
                node._keys.uid,
                node._keys.identity.public_bytes,
                current.signed,
                bytes([n]) * 16,
                body,
                NOW,
            )
            await turned(clock, defer.maybeDeferred(transport.handlers[queue], envelope))
        names = [name for name, _ in ran]
        self.assertIn("_seal", names)
        self.assertIn("open_sealed", names)
        self.assertIn("open_sealed_any", names)
        self.assertTrue(all(off for _, off in ran), ran)
        history = (await node.history("Bob"))["messages"]
        self.assertEqual(sorted(m["body"] for m in history), ["from bob 1", "from bob 2", "to bob"])

    async def test_deposits_keep_their_order_when_seals_finish_out_of_order(self) -> None:
        """When three deposits are sealed and the seals finish in reverse order, then the
        mailbox still receives them in the order they were asked for, each once."""
        node, _clock, _events, bob, transport, ring = await self.setup_pair()
        pending: list[tuple[defer.Deferred[Any], Any]] = []

        def held(f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append((d, lambda: f(*args, **kwargs)))
            return d

        node.postbox._run_blocking = held
        ids = [bytes([n]) * 16 for n in (1, 2, 3)]
        done = [node.postbox.deposit_message(bob.uid, i, b"m", 0) for i in ids]
        self.assertEqual(len(pending), 3)
        for d, work in reversed(pending):
            d.callback(work())
        await defer.gatherResults(done)
        opened = [self.open_deposit(node, bob, ring, env)[0] for _l, _s, env in transport.deposits]
        self.assertEqual(opened, ids)


class RefusingTransport(FakeTransport):
    """A transport whose mailbox does not answer."""

    def connect(self, link: str) -> defer.Deferred[Any]:
        return defer.fail(ConnectionRefusedError("Connection was refused by other side"))


class UnreachableMailboxTests(TestCase):
    async def test_unreachable_mailbox_is_refused_in_words(self) -> None:
        """When mailbox.use names a mailbox that does not answer, then it fails with
        MailboxUnreachable naming the address and the reason (not an internal error), and no
        mailbox is in use."""
        from jarvis.common.errors import MailboxUnreachable

        node, _clock, _events = make_node(self)
        node.mailbox_factory = RefusingTransport
        await node.create_identity("Alice", "pw")
        with self.assertRaises(MailboxUnreachable) as caught:
            await node.mailbox_use(link_for(1))
        self.assertEqual(
            str(caught.exception),
            "cannot reach the mailbox at 127.0.0.1:7780: Connection was refused by other side",
        )
        self.assertIsNone(node.mailbox_status()["link"])


class GroupQueueTests(PostboxCase):
    """Issue 17: members who are not contacts deposit into our group queue, for that group's
    traffic only (docs/groups.md, "Members who are not contacts")."""

    async def join_club(self) -> tuple[Node, Any, list, IdentityKey, FakeTransport, bytes]:
        """Alice (using a mailbox) joins Bob's group "club", in which Carol, who is not her
        contact, is a member; Alice's daemon publishes her group queue in a state she signs.

        :returns: ``(node, clock, events, carol, transport, group id)``."""
        from jarvis.protocol.group_fanout import KIND_INVITE, encode_chain, encode_payload
        from jarvis.protocol.group_state import found_group, invite

        node, clock, events, bob, transport, _ring = await self.setup_pair()
        self.bob = bob
        assert node._keys is not None
        carol = IdentityKey.generate()
        v1 = found_group(bob, "club")
        v2 = invite(v1, bob, node._keys.identity.public_bytes)
        v3 = invite(v2, bob, carol.public_bytes)
        payload = encode_payload(KIND_INVITE, encode_chain([v1, v2, v3]))
        await turned(clock, node.groups.payload_received(bob.uid, payload))
        invited = [p for n, p in events if n == "group.invited"]
        await turned(clock, node.groups.join(invited[-1]["invite"]["id"]))
        gid = v1.group_id
        await until(clock, lambda: node.groups.resolve("club").state.version == 4)
        return node, clock, events, carol, transport, gid

    def seal_for_alice(
        self, node: Node, gid: bytes, sender: IdentityKey, plaintext: bytes, mid: bytes
    ) -> bytes:
        assert node._keys is not None
        card = node.postbox.group_mailbox(gid)
        assert card is not None
        return mailseal.seal(
            sender,
            node._keys.uid,
            node._keys.identity.public_bytes,
            mailseal.SignedPrekey.from_bytes(card.prekey),
            mid,
            plaintext,
            NOW,
        )

    async def test_own_entry_carries_the_group_queue(self) -> None:
        """When Alice joins a group while using a mailbox, then the state she signs next
        carries, in her member entry, her mailbox link, the sender half of a queue made for
        this group and her current prekey; and the other members' entries are read back."""
        from jarvis.protocol.group_state import parse_addresses

        node, _clock, _events, carol, _transport, gid = await self.join_club()
        assert node._keys is not None
        state = node.groups.resolve("club").state
        self.assertEqual(state.signer, node._keys.identity.public_bytes)
        own = state.member_by_key(node._keys.identity.public_bytes)
        assert own is not None
        _addresses, mailbox = parse_addresses(own.addresses)
        self.assertEqual(mailbox, node.postbox.group_mailbox(gid))
        assert mailbox is not None
        self.assertEqual(mailbox.link, link_for(1))
        creds = node.postbox.queues["g:" + gid.hex()]
        self.assertEqual((mailbox.sender_id, mailbox.sender_key), (creds[1], creds[3]))
        self.assertIsNone(node.groups.peer_mailbox(carol.uid))  # Carol published none

    async def test_chat_from_a_group_peer_refused_group_entry_taken(self) -> None:
        """When Carol, a member who is not Alice's contact, deposits a chat message into
        Alice's group queue, then it is refused (nothing stored, no event, Carol does not
        become a contact); a group message of that group from her is taken and shown, and a
        payload about another group is refused."""
        from jarvis.protocol.group_fanout import KIND_MESSAGE as GROUP_MESSAGE
        from jarvis.protocol.group_fanout import encode_body, encode_payload
        from jarvis.protocol.group_message import NO_HASH, encode_message, write_message

        node, clock, events, carol, transport, gid = await self.join_club()
        handler = transport.handlers[node.postbox.queues["g:" + gid.hex()][0]]
        created = int(NOW * 1000).to_bytes(8, "big")
        chat = bytes([KIND_MESSAGE]) + created + b"psst, a chat message"
        envelope = self.seal_for_alice(node, gid, carol, chat, bytes(range(16)))
        await turned(clock, defer.maybeDeferred(handler, envelope))
        self.assertEqual(node.postbox.group_refused, 1)
        self.assertEqual([p for n, p in events if n == "message.received"], [])
        contacts = await node.list_contacts()
        self.assertNotIn(carol.uid, [c["uid"] for c in contacts])

        def group_entry(group_id: bytes, text: bytes) -> bytes:
            message = write_message(
                carol,
                group_id,
                seq=1,
                prev_hash=NO_HASH,
                state_version=4,
                created=int(NOW * 1000),
                body=text,
            )
            return encode_body(encode_payload(GROUP_MESSAGE, encode_message(message)))

        other = bytes(16)
        wrong = bytes([KIND_MESSAGE]) + created + group_entry(other, b"elsewhere")
        envelope = self.seal_for_alice(node, gid, carol, wrong, bytes(range(1, 17)))
        await turned(clock, defer.maybeDeferred(handler, envelope))
        self.assertEqual(node.postbox.group_refused, 2)

        right = bytes([KIND_MESSAGE]) + created + group_entry(gid, b"hello club")
        envelope = self.seal_for_alice(node, gid, carol, right, bytes(range(2, 18)))
        await turned(clock, defer.maybeDeferred(handler, envelope))
        shown = [p["message"] for n, p in events if n == "group.message"]
        self.assertEqual([(m["author"], m["body"]) for m in shown], [(carol.uid, "hello club")])
        self.assertEqual(node.postbox.group_refused, 2)
        history = node.groups.history("club")
        self.assertEqual([m["body"] for m in history["messages"]], ["hello club"])

    async def test_new_member_is_a_peer_before_its_state_is_stored(self) -> None:
        """When a state adding Dave arrives, then Dave is a group peer at once, before the
        state is stored: a deposit of his opened meanwhile (against the new members) is
        taken, not dropped as from a stranger; then his group message is shown."""
        from jarvis.protocol.group_fanout import KIND_MESSAGE as GROUP_MESSAGE
        from jarvis.protocol.group_fanout import KIND_STATE, encode_body, encode_payload
        from jarvis.protocol.group_message import NO_HASH, encode_message, write_message
        from jarvis.protocol.group_state import encode_state, invite

        node, clock, events, _carol, transport, gid = await self.join_club()
        bob = self.bob
        dave = IdentityKey.generate()
        v5 = invite(node.groups.resolve("club").state, bob, dave.public_bytes)
        adopted = node.groups.payload_received(
            bob.uid, encode_payload(KIND_STATE, encode_state(v5))
        )
        self.assertTrue(node.groups.is_peer(dave.uid))
        await turned(clock, adopted)
        message = write_message(
            dave, gid, seq=1, prev_hash=NO_HASH, state_version=5, created=0, body=b"hi"
        )
        body = encode_body(encode_payload(GROUP_MESSAGE, encode_message(message)))
        plain = bytes([KIND_MESSAGE]) + int(NOW * 1000).to_bytes(8, "big") + body
        handler = transport.handlers[node.postbox.queues["g:" + gid.hex()][0]]
        envelope = self.seal_for_alice(node, gid, dave, plain, bytes(range(16)))
        await turned(clock, defer.maybeDeferred(handler, envelope))
        shown = [p["message"] for n, p in events if n == "group.message"]
        self.assertEqual([(m["author"], m["body"]) for m in shown], [(dave.uid, "hi")])

    async def test_deposit_from_a_non_member_dropped_after_the_wait(self) -> None:
        """When someone who is not a member deposits into Alice's group queue, then the
        deposit waits for the group's next state and, none coming for GROUP_SENDER_WAIT
        seconds, is dropped (the queue goes on); nothing is stored."""
        from jarvis.core.groups import GROUP_SENDER_WAIT

        node, clock, events, _carol, transport, gid = await self.join_club()
        stranger = IdentityKey.generate()
        handler = transport.handlers[node.postbox.queues["g:" + gid.hex()][0]]
        chat = bytes([KIND_MESSAGE]) + int(NOW * 1000).to_bytes(8, "big") + b"let me in"
        envelope = self.seal_for_alice(node, gid, stranger, chat, bytes(range(16)))
        handled = defer.maybeDeferred(handler, envelope)
        done: list[Any] = []
        handled.addBoth(lambda result: done.append(result) or result)
        for _ in range(20):
            clock.advance(0)
            await deferLater(reactor, 0.001, lambda: None)
        self.assertEqual(done, [])  # waiting for a state that could make it a member
        clock.advance(GROUP_SENDER_WAIT)
        await turned(clock, handled)
        self.assertEqual([p for n, p in events if n in ("message.received", "group.message")], [])
