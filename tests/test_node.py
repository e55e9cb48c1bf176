"""Tests for :class:`jarvis.core.node.Node` with the real key file, crypto and SQLite store.

The peer network is a recording fake (the net layer has its own tests); sessions are fakes that
record what the node writes to them.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
from dataclasses import replace
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from jarvis.common.errors import Ambiguous, IdentityExists, Locked, NotFound, TooLarge
from jarvis.core.backoff import BACKOFF_FILE, TooManyAttempts
from jarvis.core.limits import RECEIPTS_SETTLE
from jarvis.core.node import Node
from jarvis.crypto import linkcode
from jarvis.crypto.errors import LinkCodeError, WrongPassword
from jarvis.crypto.identity import IdentityKey
from jarvis.crypto.keyfile import KdfParams
from jarvis.files.send import make_offer
from jarvis.protocol.group_fanout import (
    BODY_MARK,
    KIND_GROUP_TRANSFER,
    KIND_TRANSFER,
    encode_body,
    encode_payload,
)
from jarvis.protocol.transfer import encode_transfer_record

FAST = KdfParams(time_cost=1, memory_cost_kib=8, parallelism=1)


class FakeNetwork:
    """Records what the node asks of the peer network."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.stopped = False

    def connect(self, uid: str) -> None:
        self.calls.append(("connect", uid))

    def redial(self, uid: str) -> None:
        self.calls.append(("redial", uid))

    def forget(self, uid: str) -> None:
        self.calls.append(("forget", uid))

    def status(self, uid: str) -> Any:
        raise KeyError(uid)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


class FakeSession:
    """A peer session that records the records the node writes."""

    def __init__(self, peer_uid: str) -> None:
        self.peer_uid = peer_uid
        self.sent: list[tuple[bytes, bytes, int]] = []
        self.acks: list[bytes] = []
        self.reads: list[bytes] = []

    def send_message(self, message_id: bytes, body: bytes, created_ms: int) -> None:
        self.sent.append((message_id, body, created_ms))

    def send_ack(self, ids: list[bytes]) -> None:
        self.acks.extend(ids)

    def send_read(self, ids: list[bytes]) -> None:
        self.reads.extend(ids)


def make_node(
    testcase: TestCase, data_dir: str | None = None, clock: Clock | None = None
) -> tuple[Node, Clock, list]:
    """Return a started node on a fresh data directory, its delay clock and its event list.

    :param clock: the node's clock (default: a new ``Clock``; nodes that talk share one).
    """
    if data_dir is None:
        data_dir = testcase.mktemp()
        os.makedirs(data_dir, mode=0o700)
    if clock is None:
        clock = Clock()
    networks: list[FakeNetwork] = []

    def network_factory(identity: Any, directory: Any, observer: Any) -> FakeNetwork:
        networks.append(FakeNetwork())
        return networks[-1]

    node = Node(
        clock=clock,
        data_dir=data_dir,
        run_blocking=threads.deferToThread,
        network_factory=network_factory,
        advertise=("192.0.2.7:7770",),
        now=lambda: 1_700_000_000.0,
        kdf_params=FAST,
        reactor_for_store=reactor,
    )
    events: list[tuple[str, dict]] = []
    node.subscribe(lambda name, payload: events.append((name, payload)))
    node.startService()
    testcase.addCleanup(node.stopService)
    node.networks = networks  # type: ignore[attr-defined]
    return node, clock, events


async def node_with_bob(testcase: TestCase) -> tuple[Node, Clock, list, IdentityKey]:
    """Return a node with Alice's identity and Bob (a new key) as a contact: the node, its
    delay clock, its event list and Bob's key."""
    node, clock, events = make_node(testcase)
    await node.create_identity("Alice", "pw")
    key, link = friend_link()
    await node.add_contact(link=link)
    return node, clock, events, key


async def turned(clock: Clock, d: Deferred[Any]) -> Any:
    """Wait for *d*, running the node's end-of-turn calls (on its clock) meanwhile."""
    outcome: list[Any] = []
    d.addBoth(lambda result: outcome.append(result) or result)
    while not outcome:
        clock.advance(0)
        await deferLater(reactor, 0.001, lambda: None)
    return await d


def friend_link(
    name: str = "Bob", addresses: tuple[str, ...] = ("192.0.2.9:7770",)
) -> tuple[IdentityKey, str]:
    key = IdentityKey.generate()
    card = linkcode.make_card(key, name, addresses, 1_700_000_000)
    return key, linkcode.encode_link(card)


def files_bytes(path: str, but: str = "") -> bytes:
    chunks = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name == but:
                continue
            with open(os.path.join(root, name), "rb") as f:
                chunks.append(f.read())
    return b"".join(chunks)


async def settled_then_next(node: Node, clock: Clock, session: FakeSession) -> FakeSession:
    """Let *session* stay up RECEIPTS_SETTLE seconds (what it carried is then settled), close
    it and establish the next session with the same peer, which is returned."""
    clock.advance(RECEIPTS_SETTLE)
    await node.history("Bob")  # behind the store operation that notes receipts sent
    node.session_closed(session, "connection lost")
    following = FakeSession(session.peer_uid)
    await node.session_established(following)
    return following


class IdentityLifeCycleTests(TestCase):
    async def test_create_lock_unlock(self) -> None:
        """When an identity is created, wiped by a lock and unlocked, then it is the same uid,
        the key file is 0600 and events announce each change."""
        node, _clock, events = make_node(self)
        created = await node.create_identity("Alice", "correct horse")
        self.assertEqual(len(created["uid"]), 52)
        self.assertFalse(node.locked)
        self.assertEqual(stat.S_IMODE(os.stat(node.keyfile_path).st_mode), 0o600)
        await node.lock(wipe=True)
        self.assertTrue(node.locked)
        self.assertFalse(node.keys_loaded)
        self.assertTrue(node.networks[0].stopped)
        self.assertRaises(Locked, node.show_identity)
        unlocked = await node.unlock("correct horse")
        self.assertEqual(unlocked["uid"], created["uid"])
        names = [name for name, _ in events]
        self.assertIn("identity.locked", names)
        self.assertIn("identity.unlocked", names)

    async def test_create_twice_refused(self) -> None:
        """When an identity exists, then creating another is refused and the file unchanged."""
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw one")
        with open(node.keyfile_path, "rb") as f:
            before = f.read()
        with self.assertRaises(IdentityExists):
            await node.create_identity("Mallory", "pw two")
        with open(node.keyfile_path, "rb") as f:
            self.assertEqual(f.read(), before)

    async def test_wrong_password_slows_down_and_writes_nothing(self) -> None:
        """When wrong passwords are given repeatedly, then each fails with WrongPassword, the key
        file and the store do not change, and the third attempt is refused at once (even the
        right password) until the wait on the clock is over."""
        node, clock, _events = make_node(self)
        await node.create_identity("Alice", "right")
        await node.lock(wipe=True)
        before = files_bytes(node.data_dir, but=BACKOFF_FILE)
        for _ in range(2):
            with self.assertRaises(WrongPassword):
                await node.unlock("wrong")
        self.assertEqual(node.unlock_delay(), 1.0)
        self.assertEqual(files_bytes(node.data_dir, but=BACKOFF_FILE), before)
        refused = self.failureResultOf(node.unlock("right"), TooManyAttempts)
        self.assertEqual(refused.value.retry_after, 1)
        self.assertTrue(node.locked)
        clock.advance(1.0)
        result = await node.unlock("right")
        self.assertEqual(result["name"], "Alice")
        self.assertEqual(node.unlock_delay(), 0.0)

    async def test_screen_lock_keeps_keys(self) -> None:
        """When the screen lock is on, then the API is locked but keys and store stay loaded and
        an incoming message is still stored."""
        node, _clock, events, key = await node_with_bob(self)
        await node.lock()
        self.assertTrue(node.locked)
        self.assertTrue(node.keys_loaded)
        session = FakeSession(key.uid)
        await node.message_received(session, secrets.token_bytes(16), b"while locked", 1)
        _clock.advance(0)  # acks of one reactor turn leave together
        self.assertEqual(len(session.acks), 1)
        with self.assertRaises(WrongPassword):
            await node.unlock("nope")
        self.assertTrue(node.locked)
        await node.unlock("pw")
        history = await node.history(key.uid)
        self.assertEqual([m["body"] for m in history["messages"]], ["while locked"])
        self.assertIn(("identity.locked", {"wiped": False}), events)


class ContactTests(TestCase):
    async def test_add_by_link_and_update(self) -> None:
        """When a link code is added, then the contact is dialled; adding it again with new
        addresses updates them and redials, keeping the history."""
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        key, link = friend_link()
        view = await node.add_contact(link=link)
        self.assertEqual(view["uid"], key.uid)
        self.assertEqual(view["addresses"], ["192.0.2.9:7770"])
        self.assertEqual(len(view["safety_code"].split()), 12)
        await node.send_message("Bob", "hello")
        card = linkcode.make_card(key, "Bob", ("198.51.100.1:7000",), 1_700_000_100)
        view = await node.add_contact(card=linkcode.card_to_json(card))
        self.assertEqual(view["addresses"], ["198.51.100.1:7000"])
        self.assertEqual(node.networks[0].calls, [("connect", key.uid), ("redial", key.uid)])
        history = await node.history("Bob")
        self.assertEqual(len(history["messages"]), 1)

    async def test_tampered_link_refused(self) -> None:
        """When a link code has one character changed, then it is refused and no contact exists."""
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        _key, link = friend_link()
        i = len(link) // 2
        tampered = link[:i] + ("a" if link[i] != "a" else "b") + link[i + 1 :]
        with self.assertRaises(LinkCodeError):
            await node.add_contact(link=tampered)
        self.assertEqual(await node.list_contacts(), [])

    async def test_resolve(self) -> None:
        """When contacts share a name, then the name is ambiguous, a uid prefix resolves, and an
        unknown name is not found."""
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        k1, l1 = friend_link("Bob")
        _k2, l2 = friend_link("Bob")
        await node.add_contact(link=l1)
        await node.add_contact(link=l2)
        ambiguous = self.assertRaises(Ambiguous, node.resolve, "Bob")
        # the error names the candidates, so the user can pick one by its uid prefix
        for key in (k1, _k2):
            self.assertIn(key.uid[:12], str(ambiguous))
        self.assertEqual(node.resolve(k1.uid[:20]).uid, k1.uid)
        self.assertRaises(NotFound, node.resolve, "Carol")

    async def test_block_and_remove(self) -> None:
        """When a contact is blocked, then the network forgets it and it is not acceptable; when
        removed with history, its messages are gone."""
        node, _clock, _events, key = await node_with_bob(self)
        self.assertTrue(node.contacts.is_acceptable(key.uid))
        await node.update_contact("Bob", blocked=True)
        self.assertFalse(node.contacts.is_acceptable(key.uid))
        self.assertIn(("forget", key.uid), node.networks[0].calls)
        await node.update_contact("Bob", blocked=False)
        await node.send_message("Bob", "x")
        await node.remove_contact("Bob", with_history=True)
        self.assertRaises(NotFound, node.resolve, "Bob")
        self.assertEqual(await node.unread_counts(), {})


class MessagingTests(TestCase):
    async def test_outbox_replayed_in_order_then_delivered(self) -> None:
        """When messages are queued offline and a session is established, then they are written
        in order (state sent) and acks move them to delivered, each change an event."""
        node, clock, events, key = await node_with_bob(self)
        sent = [await node.send_message("Bob", f"m{i}") for i in range(5)]
        self.assertEqual({m["state"] for m in sent}, {"queued"})
        session = FakeSession(key.uid)
        await turned(clock, node.session_established(session))
        later = await turned(clock, node.send_message("Bob", "m5"))
        self.assertEqual(later["state"], "sent")
        clock.advance(0)  # the end of the turn records "sent" (before the peer could ack)
        await node.history("Bob")  # queued behind that store operation
        self.assertEqual([b for _, b, _ in session.sent], [f"m{i}".encode() for i in range(6)])
        await node.acks_received(session, [bytes.fromhex(m["id"]) for m in [*sent, later]])
        history = await node.history("Bob")
        self.assertEqual({m["state"] for m in history["messages"]}, {"delivered"})
        states = [p["state"] for n, p in events if n == "message.stateChanged"]
        self.assertEqual(states.count("sent"), 6)
        self.assertEqual(states.count("delivered"), 6)

    async def test_incoming_deduplicated_and_acked(self) -> None:
        """When the same message arrives twice, then it is stored once, acked both times, and
        announced once."""
        node, clock, events, key = await node_with_bob(self)
        session = FakeSession(key.uid)
        mid = secrets.token_bytes(16)
        first = node.message_received(session, mid, "héllo".encode(), 1_700_000_000_000)
        await node.message_received(session, mid, "héllo".encode(), 1_700_000_000_000)
        await first
        clock.advance(0)  # acks of one reactor turn leave together
        self.assertEqual(session.acks, [mid, mid])
        history = await node.history("Bob")
        self.assertEqual([m["body"] for m in history["messages"]], ["héllo"])
        self.assertEqual([n for n, _ in events].count("message.received"), 1)
        self.assertEqual(await node.unread_counts(), {key.uid: 1})
        result = await node.mark_read("Bob")
        self.assertEqual(result, {"count": 1})
        self.assertEqual(session.reads, [])  # no live session registered: nothing to send

    async def test_same_millisecond_keeps_order(self) -> None:
        """When three messages arrive with the same timestamp (a burst) and ids that sort the
        other way, and one is sent in between, then the events and the history carry seq
        1, 2, 3, 4 in the order they were stored, the order to show them in."""
        node, _clock, events, key = await node_with_bob(self)
        session = FakeSession(key.uid)
        ids = [bytes([255 - n]) * 16 for n in range(3)]  # descending ids
        await node.message_received(session, ids[0], b"one", 1_700_000_000_000)
        await node.message_received(session, ids[1], b"two", 1_700_000_000_000)
        sent = await node.send_message("Bob", "mine")
        await node.message_received(session, ids[2], b"three", 1_700_000_000_000)
        received = [p["message"] for n, p in events if n == "message.received"]
        self.assertEqual(
            [(m["body"], m["seq"]) for m in received], [("one", 1), ("two", 2), ("three", 4)]
        )
        self.assertEqual(sent["seq"], 3)
        history = await node.history("Bob")
        self.assertEqual(
            [(m["body"], m["seq"]) for m in reversed(history["messages"])],
            [("one", 1), ("two", 2), ("mine", 3), ("three", 4)],
        )

    async def test_read_receipts_respect_setting(self) -> None:
        """When a conversation is read with a live session, then a read receipt is sent unless
        the contact's read receipts are off."""
        node, _clock, _events, key = await node_with_bob(self)
        session = FakeSession(key.uid)
        await node.session_established(session)
        m1, m2 = secrets.token_bytes(16), secrets.token_bytes(16)
        await node.message_received(session, m1, b"one", 1)
        await node.mark_read("Bob")
        self.assertEqual(session.reads, [m1])
        await node.update_contact("Bob", read_receipts=False)
        await node.message_received(session, m2, b"two", 2)
        await node.mark_read("Bob")
        self.assertEqual(session.reads, [m1])

    async def test_read_receipts_owed_go_out_on_next_session(self) -> None:
        """When messages are read while the sender's session is down, then their receipts go out
        once the next session is established, and only once that session stayed up
        RECEIPTS_SETTLE seconds; receipts owed when the contact's read receipts are turned off
        are dropped, not sent later."""
        node, clock, _events, key = await node_with_bob(self)
        first = FakeSession(key.uid)
        await node.session_established(first)
        m1, m2, m3 = (secrets.token_bytes(16) for _ in range(3))
        await node.message_received(first, m1, b"one", 1)
        await node.message_received(first, m2, b"two", 2)
        node.session_closed(first, "connection lost")
        await node.mark_read("Bob")
        self.assertEqual(first.reads, [])
        second = FakeSession(key.uid)
        await node.session_established(second)
        self.assertEqual(second.reads, [m1, m2])
        third = await settled_then_next(node, clock, second)
        self.assertEqual(third.reads, [])
        await node.message_received(third, m3, b"three", 3)
        node.session_closed(third, "connection lost")
        await node.mark_read("Bob")
        await node.update_contact("Bob", read_receipts=False)
        fourth = FakeSession(key.uid)
        await node.session_established(fourth)
        node.session_closed(fourth, "connection lost")
        await node.update_contact("Bob", read_receipts=True)
        fifth = FakeSession(key.uid)
        await node.session_established(fifth)
        self.assertEqual((fourth.reads, fifth.reads), ([], []))

    async def test_receipts_written_into_a_session_that_ends_go_again(self) -> None:
        """When messages are read on a live session that then ends before RECEIPTS_SETTLE
        seconds (its peer was already gone: the write was lost), then the next session
        carries the receipts again; on a session that stays up, they are owed no more."""
        node, clock, _events, key = await node_with_bob(self)
        first = FakeSession(key.uid)
        await node.session_established(first)
        m1 = secrets.token_bytes(16)
        await node.message_received(first, m1, b"one", 1)
        await node.mark_read("Bob")
        self.assertEqual(first.reads, [m1])
        clock.advance(RECEIPTS_SETTLE / 2)
        node.session_closed(first, "connection lost")
        clock.advance(RECEIPTS_SETTLE)  # nothing left to clear them
        second = FakeSession(key.uid)
        await node.session_established(second)
        self.assertEqual(second.reads, [m1])
        third = await settled_then_next(node, clock, second)
        self.assertEqual(third.reads, [])
        settles = [c for c in clock.getDelayedCalls() if c.func.__name__ == "settle"]
        self.assertEqual(settles, [])  # the closed sessions left no clear pending

    async def test_too_large_refused(self) -> None:
        """When a message exceeds 64 KiB, then it is refused and nothing is stored."""
        node, _clock, _events, _key = await node_with_bob(self)
        with self.assertRaises(TooLarge):
            await node.send_message("Bob", "x" * (64 * 1024 + 1))
        self.assertEqual((await node.history("Bob"))["messages"], [])


class TransferEntryTests(TestCase):
    """A transfer's control record arriving as a durable entry (payload kind 5: how one
    crosses through the mailbox) goes to the transfers, never to the conversation."""

    async def test_an_offer_entry_is_listed_and_garbage_is_dropped_acknowledged(self) -> None:
        """When Bob's offer arrives as an entry of kind 5, then it is listed as an incoming
        offer and acknowledged, and nothing shows in the conversation; when an entry of kind 5
        carries bytes that are no transfer record, a kind-5 body is not base64, or the record
        is an offer from a stranger, then each is acknowledged (the sender stops sending it),
        nothing is listed or stored, and the node goes on."""
        node, clock, _events, key = await node_with_bob(self)
        path = os.path.join(self.mktemp() + "d")
        os.makedirs(path)
        with open(os.path.join(path, "menu.pdf"), "wb") as f:
            f.write(os.urandom(5000))
        offer = make_offer(os.path.join(path, "menu.pdf")).offer
        session = FakeSession(key.uid)

        def entry(record: bytes) -> bytes:
            return encode_body(encode_payload(KIND_TRANSFER, record))

        good, garbage, bad_base64 = (secrets.token_bytes(16) for _ in range(3))
        await node.message_received(session, good, entry(encode_transfer_record(offer)), 1)
        await node.message_received(session, garbage, entry(b"\x01\x7fnot a record"), 2)
        await node.message_received(session, bad_base64, BODY_MARK + b"***", 3)
        stranger = FakeSession(IdentityKey.generate().uid)
        other = replace(offer, transfer_id=os.urandom(16))
        await node.message_received(
            stranger, secrets.token_bytes(16), entry(encode_transfer_record(other)), 4
        )
        clock.advance(0)  # acks of one turn leave together
        self.assertEqual(session.acks, [good, garbage, bad_base64])
        listed = node.list_transfers()
        self.assertEqual(
            [(t["id"], t["direction"], t["state"]) for t in listed],
            [(offer.transfer_id.hex(), "in", "offered")],
        )
        history = await node.history("Bob")
        self.assertEqual(history["messages"], [])

    async def test_a_group_transfer_entry_goes_to_the_transfers_with_its_group(self) -> None:
        """When an entry of kind 6 (a transfer record by a group's queue) arrives, then the
        record goes to the transfers with the group id the entry names (they check the
        record is about it); one too short to hold a group id and a record is dropped; both
        are acknowledged and nothing reaches the conversation."""
        node, clock, _events, key = await node_with_bob(self)
        calls: list[tuple[str, bytes, bytes | None]] = []
        node.transfers.record_received = lambda uid, data, gid=None: calls.append(  # type: ignore[method-assign]
            (uid, data, gid)
        )
        session = FakeSession(key.uid)
        gid, record = b"\x42" * 16, b"\x01\x02" + os.urandom(16)
        good, short = secrets.token_bytes(16), secrets.token_bytes(16)
        body = encode_body(encode_payload(KIND_GROUP_TRANSFER, gid + record))
        await node.message_received(session, good, body, 1)
        truncated = encode_body(encode_payload(KIND_GROUP_TRANSFER, gid[:10]))
        await node.message_received(session, short, truncated, 2)
        clock.advance(0)
        self.assertEqual(calls, [(key.uid, record, gid)])
        self.assertEqual(session.acks, [good, short])
        self.assertEqual((await node.history("Bob"))["messages"], [])


class AtRestTests(TestCase):
    async def test_canary_not_on_disk(self) -> None:
        """When a contact name and messages carry a random canary and the identity is locked,
        then no file in the data directory contains the canary, its base64 or its hex."""
        node, _clock, _events = make_node(self)
        canary = "canary" + secrets.token_hex(8)
        await node.create_identity("Alice", "pw")
        key, link = friend_link(name=canary[:40])
        await node.add_contact(link=link, name=canary[:30])
        for i in range(20):
            await node.send_message(key.uid[:10], f"{canary} number {i}")
        session = FakeSession(key.uid)
        await node.message_received(session, secrets.token_bytes(16), canary.encode(), 5)
        await node.lock(wipe=True)
        blob = files_bytes(node.data_dir)
        self.assertGreater(len(blob), 4096)
        for needle in (
            canary.encode(),
            canary[:30].encode(),
            base64.b64encode(canary.encode())[:16],
            canary.encode().hex().encode(),
        ):
            self.assertNotIn(needle, blob)


class AccountTests(TestCase):
    async def test_export_import_round_trip(self) -> None:
        """When an account is exported and imported into an empty directory, then the uid,
        contacts and history are the same; a wrong export password writes nothing."""
        node, _clock, _events = make_node(self)
        created = await node.create_identity("Alice", "pw")
        _key, link = friend_link()
        await node.add_contact(link=link)
        await node.send_message("Bob", "kept across export")
        export_path = os.path.join(self.mktemp() + "x")
        os.makedirs(os.path.dirname(export_path) or ".", exist_ok=True)
        await node.export_account(export_path, "export pw")

        other, _c2, _e2 = make_node(self)
        with self.assertRaises(WrongPassword):
            await other.import_account(export_path, "bad", "new pw")
        self.assertEqual(os.listdir(other.data_dir), [])
        result = await other.import_account(export_path, "export pw", "new pw")
        self.assertEqual(result["uid"], created["uid"])
        history = await other.history("Bob")
        self.assertEqual([m["body"] for m in history["messages"]], ["kept across export"])
        await other.lock(wipe=True)
        await other.unlock("new pw")

    async def test_import_refused_when_not_empty(self) -> None:
        """When the data directory already has an identity, then import is refused."""
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        with self.assertRaises(IdentityExists):
            await node.import_account("/nonexistent", "a", "b")

    async def test_delete_needs_password(self) -> None:
        """When deletion is asked with a wrong password, then nothing is removed; with the right
        one every file of the data directory is gone."""
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        with self.assertRaises(WrongPassword):
            await node.delete_account("nope")
        self.assertTrue(node.has_identity)
        await node.delete_account("pw")
        self.assertEqual(os.listdir(node.data_dir), [])
        self.assertFalse(node.has_identity)


class MarkerTests(TestCase):
    async def test_marker_at_first_unread_until_read(self) -> None:
        """When messages arrive, then the marker is the first unread one for every reader of the
        history; it stays there once read (the read position, as in weechat), and the first
        message of the next unread run moves it."""
        node, _clock, _events, key = await node_with_bob(self)
        session = FakeSession(key.uid)
        ids = [secrets.token_bytes(16) for _ in range(4)]
        for i, mid in enumerate(ids[:2]):
            await node.message_received(session, mid, f"m{i}".encode(), i)
        first = await node.history("Bob")
        second = await node.history("Bob")
        self.assertEqual(first["marker"], ids[0].hex())
        self.assertEqual(second["marker"], ids[0].hex())
        await node.mark_read("Bob")
        self.assertEqual((await node.history("Bob"))["marker"], ids[0].hex())
        await node.message_received(session, ids[2], b"m2", 2)
        await node.message_received(session, ids[3], b"m3", 3)
        self.assertEqual((await node.history("Bob"))["marker"], ids[2].hex())
