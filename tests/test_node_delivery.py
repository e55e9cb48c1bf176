"""Delivery tests of :class:`jarvis.core.node.Node`: the windowed outbox stream, resuming from the
peer's mark, retransmission on a live session and a full disk.

The node runs with the real key file, crypto and SQLite store (helpers from
:mod:`tests.test_node`); sessions are recording fakes, or real sans-IO
:class:`~jarvis.protocol.session.PeerSession` pairs wired through memory on a ``task.Clock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from jarvis.common.errors import StorageFull
from jarvis.core.limits import MAX_HISTORY_PAGE, RETRANSMIT_INITIAL, WINDOW_BYTES, WINDOW_MESSAGES
from jarvis.core.node import Node
from jarvis.ipc.jsonrpc import STORAGE, error_from_exception
from jarvis.protocol.session import PeerSession
from jarvis.store import queries
from jarvis.store.database import Store
from tests.test_node import FakeSession, make_node, node_with_bob, turned

CHANNEL_BINDING = b"\xcb" * 32


def fill_disk(store: Store) -> Deferred[Any]:
    """Make *store*'s database full, as a full disk does: SQLite then answers ``SQLITE_FULL``
    ("database or disk is full") to any write that needs a new page.

    (``max_page_count`` at its smallest caps the file at its current size; it runs on the
    store's own thread, where its connection lives.)
    """
    return deferToThreadPool(
        reactor,
        store._pool,  # the test stand-in for a full disk
        lambda: store._rows.conn.execute("PRAGMA max_page_count = 1"),
    )


def free_disk(store: Store) -> Deferred[Any]:
    """Undo :func:`fill_disk`."""
    return deferToThreadPool(
        reactor,
        store._pool,
        lambda: store._rows.conn.execute("PRAGMA max_page_count = 1073741823"),
    )


class FullDiskSendTests(TestCase):
    async def test_send_on_full_disk_is_a_storage_error(self) -> None:
        """When the sender's disk is full, then messages.send fails with a StorageFull error
        (API code -32020, kind 'storage', saying to free space) instead of an internal error,
        nothing is queued, and once space is freed the same send succeeds."""
        node, _clock, events, _key = await node_with_bob(self)
        store = node._store
        assert store is not None
        await fill_disk(store)
        with self.assertRaises(StorageFull) as raised:
            await node.send_message("Bob", "x" * 60_000)
        error = error_from_exception(raised.exception)
        self.assertEqual((error.code, error.kind), (STORAGE, "storage"))
        self.assertEqual(STORAGE, -32020)
        self.assertIn("disk full", error.message)
        self.assertIn("free space", error.message)
        self.assertEqual((await node.history("Bob"))["messages"], [])
        self.assertNotIn("message.added", [name for name, _ in events])
        await free_disk(store)
        sent = await node.send_message("Bob", "x" * 60_000)
        self.assertEqual(sent["state"], "queued")
        self.assertEqual(len((await node.history("Bob"))["messages"]), 1)


def outbox_ids(node: Node, uid: str) -> Deferred[Any]:
    """The ids of the node's undelivered messages to *uid*, oldest first."""
    store = node._store
    assert store is not None
    return store.run(queries.outbox, uid, write=False).addCallback(
        lambda messages: [m.id for m in messages]
    )


async def queue(node: Node, count: int, text: Callable[[int], str] = lambda i: f"m{i}") -> list:
    """Send *count* messages to Bob while no session is up; return their ids in order."""
    sent = await gatherResults([node.send_message("Bob", text(i)) for i in range(count)])
    return [m["id"] for m in sent]


class WindowTests(TestCase):
    """The outbox streams through the send window instead of being written at once."""

    async def test_large_outbox_never_has_more_than_the_window_in_flight(self) -> None:
        """When 5,000 messages wait in a real store and a session starts, then at most
        WINDOW_MESSAGES (256) are written before acks come; each ack frees room for as many
        more; in the end every message was written exactly once, in order, and none waits."""
        node, clock, _events, key = await node_with_bob(self)
        ids = await queue(node, 5000)
        session = FakeSession(key.uid)
        await turned(clock, node.session_established(session))
        self.assertEqual(len(session.sent), WINDOW_MESSAGES)
        acked = 0
        while acked < len(ids):
            in_flight = len(session.sent) - acked
            self.assertLessEqual(in_flight, WINDOW_MESSAGES)
            self.assertTrue(in_flight > 0)
            batch = [mid for mid, _, _ in session.sent[acked : acked + 100]]
            acked += len(batch)
            await turned(clock, node.acks_received(session, batch))
            self.assertEqual(len(session.sent), min(len(ids), acked + WINDOW_MESSAGES))
        self.assertEqual([mid.hex() for mid, _, _ in session.sent], ids)
        self.assertEqual(await outbox_ids(node, key.uid), [])

    async def test_window_bounds_bytes(self) -> None:
        """When 100 messages of 60,000 bytes wait, then a new session gets at most
        WINDOW_BYTES (4 MiB) of bodies plus one message before acks come."""
        node, clock, _events, key = await node_with_bob(self)
        await queue(node, 100, lambda i: f"{i:05d}" + "x" * 59_995)
        session = FakeSession(key.uid)
        await turned(clock, node.session_established(session))
        written = sum(len(body) for _, body, _ in session.sent)
        self.assertLess(len(session.sent), 100)
        self.assertLessEqual(written, WINDOW_BYTES + 60_000)
        self.assertGreaterEqual(written, WINDOW_BYTES - 60_000)

    async def test_paused_transport_stops_the_stream(self) -> None:
        """When the transport is paused (its buffers are full), then nothing more is written,
        even when acks free the window; once it resumes the stream goes on."""
        node, clock, _events, key = await node_with_bob(self)
        ids = await queue(node, 400)
        session = FakeSession(key.uid)
        session.writing_paused = True  # type: ignore[attr-defined]
        await turned(clock, node.session_established(session))
        self.assertEqual(session.sent, [])
        session.writing_paused = False  # type: ignore[attr-defined]
        node.session_writable(session)
        await turned(clock, outbox_ids(node, key.uid))
        await turned(clock, outbox_ids(node, key.uid))
        self.assertEqual(len(session.sent), WINDOW_MESSAGES)
        session.writing_paused = True  # type: ignore[attr-defined]
        await turned(clock, node.acks_received(session, [m for m, _, _ in session.sent[:100]]))
        self.assertEqual(len(session.sent), WINDOW_MESSAGES)
        session.writing_paused = False  # type: ignore[attr-defined]
        node.session_writable(session)
        await turned(clock, outbox_ids(node, key.uid))
        await turned(clock, outbox_ids(node, key.uid))
        self.assertEqual([m.hex() for m, _, _ in session.sent], ids[: WINDOW_MESSAGES + 100])


class ResumeMarkTests(TestCase):
    """A new session resends only what follows the peer's Resume mark."""

    async def test_cut_mid_stream_resends_only_the_unstored_remainder(self) -> None:
        """When a session is cut mid-stream after the peer stored 300 of 356 written messages
        but only 100 acks arrived, and the next session's Resume names the 300th, then the 200
        stored but unacknowledged are marked delivered without being sent again, only the 56
        written but not stored are resent, and the rest follows in order, each once."""
        node, clock, events, key = await node_with_bob(self)
        ids = await queue(node, 1000)
        first = FakeSession(key.uid)
        await turned(clock, node.session_established(first))
        await turned(clock, node.acks_received(first, [m for m, _, _ in first.sent[:100]]))
        self.assertEqual(len(first.sent), 100 + WINDOW_MESSAGES)
        node.session_closed(first, "connection lost")
        second = FakeSession(key.uid)
        second.peer_resume_mark = bytes.fromhex(ids[299])  # type: ignore[attr-defined]
        await turned(clock, node.session_established(second))
        self.assertEqual(second.sent[0][0].hex(), ids[300])
        resent = {m for m, _, _ in first.sent} & {m for m, _, _ in second.sent}
        self.assertEqual(len(resent), 56)
        delivered = [p["id"] for n, p in events if n == "message.stateChanged"]
        self.assertEqual(delivered.count(ids[299]), 2)  # sent, then delivered by the mark
        while len(second.sent) < 700:
            unacked = [m for m, _, _ in second.sent[-WINDOW_MESSAGES:]]
            await turned(clock, node.acks_received(second, unacked))
        await turned(clock, node.acks_received(second, [m for m, _, _ in second.sent]))
        self.assertEqual([m.hex() for m, _, _ in second.sent], ids[300:])
        self.assertEqual(await outbox_ids(node, key.uid), [])

    async def test_mark_of_no_message_of_ours_changes_nothing(self) -> None:
        """When the peer's Resume names an id that is not one of our messages to it, then
        nothing is marked delivered and the whole outbox is sent."""
        node, clock, _events, key = await node_with_bob(self)
        ids = await queue(node, 5)
        session = FakeSession(key.uid)
        session.peer_resume_mark = b"\x01" * 16  # type: ignore[attr-defined]
        await turned(clock, node.session_established(session))
        self.assertEqual([m.hex() for m, _, _ in session.sent], ids)
        self.assertEqual(await outbox_ids(node, key.uid), ids)


class Tap:
    """A session observer in front of a node that records the message ids it receives."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.received: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)

    def message_received(self, session: Any, mid: bytes, body: bytes, created: int) -> Any:
        self.received.append(mid)
        return self.node.message_received(session, mid, body, created)


class Link:
    """Alice's and Bob's nodes joined by real PeerSessions through memory, on one Clock."""

    def __init__(self, clock: Clock, alice: Node, bob: Node, bob_tap: Tap) -> None:
        self.clock = clock
        alice_key, bob_key = alice._keys.identity, bob._keys.identity  # type: ignore[union-attr]
        self.to_bob: list[bytes] = []
        self.to_alice: list[bytes] = []
        self.drop_acks = False
        self.alice = PeerSession(
            local_uid=alice_key.uid,
            sign=alice_key.sign,
            peer_uid=bob_key.uid,
            peer_public_key=bob_key.public_bytes,
            initiator=True,
            clock=clock,
            send_bytes=self.to_bob.append,
            lose_connection=lambda: None,
            observer=alice,  # type: ignore[arg-type]
            resume_mark=alice.resume_mark,
        )
        self.bob = PeerSession(
            local_uid=bob_key.uid,
            sign=bob_key.sign,
            peer_uid=alice_key.uid,
            peer_public_key=alice_key.public_bytes,
            initiator=False,
            clock=clock,
            send_bytes=self.to_alice.append,
            lose_connection=lambda: None,
            observer=bob_tap,  # type: ignore[arg-type]
            resume_mark=bob.resume_mark,
        )
        self.alice.connection_made(CHANNEL_BINDING)
        self.bob.connection_made(CHANNEL_BINDING)

    def pump(self) -> None:
        """Move the bytes written so far both ways (Bob's are dropped while drop_acks)."""
        while self.to_bob or self.to_alice:
            while self.to_bob:
                self.bob.data_received(self.to_bob.pop(0))
            while self.to_alice:
                data = self.to_alice.pop(0)
                if not self.drop_acks:
                    self.alice.data_received(data)

    def cut(self) -> None:
        """The connection is lost on both sides."""
        self.to_bob.clear()
        self.to_alice.clear()
        self.alice.connection_lost("connection lost")
        self.bob.connection_lost("connection lost")

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Run the clock's due calls and the link until *predicate()* holds (the stores work
        on their threads meanwhile)."""
        deadline = time.monotonic() + 60
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.clock.advance(0)
            self.pump()
            await deferLater(reactor, 0.001, lambda: None)


async def two_nodes(testcase: TestCase) -> tuple[Node, Node, Tap, Clock]:
    """Alice's and Bob's nodes (real stores), each the other's contact, on one Clock."""
    clock = Clock()  # one time for both nodes and the sessions between them
    alice, _clock, _events = make_node(testcase, clock=clock)
    bob, _clock, _events = make_node(testcase, clock=clock)
    await alice.create_identity("Alice", "pw")
    await bob.create_identity("Bob", "pw")
    await alice.add_contact(link=bob.show_identity()["link"])
    await bob.add_contact(link=alice.show_identity()["link"])
    return alice, bob, Tap(bob), clock


async def bodies(node: Node, ref: str) -> list[str]:
    """The conversation's bodies, oldest first (every page)."""
    found: list[str] = []
    before = None
    while True:
        page = await node.history(ref, limit=MAX_HISTORY_PAGE, before=before)
        found[:0] = [m["body"] for m in reversed(page["messages"])]
        before = page["next"]
        if before is None:
            return found


class RetransmitTests(TestCase):
    """Messages the receiver failed to store arrive later on the same session."""

    async def test_receiver_disk_full_then_freed_messages_arrive_on_the_same_session(
        self,
    ) -> None:
        """When the receiver's disk is full, then it stores and acknowledges nothing; once
        space is freed, after the retransmission timeout the messages arrive on the same
        session, each stored once, in order, and the sender sees them delivered."""
        alice, bob, tap, clock = await two_nodes(self)
        link = Link(clock, alice, bob, tap)
        await link.until(lambda: bob.courier._pumps and alice.courier._pumps, "the session")
        bob_store = bob._store
        assert bob_store is not None
        await fill_disk(bob_store)
        texts = [f"{i:03d}" + "y" * 60_000 for i in range(3)]
        for text in texts:
            await alice.send_message("Bob", text)
        await link.until(lambda: len(tap.received) == 3, "the first copies")
        await link.until(lambda: not bob_store._pending and not bob_store._in_flight, "stores")
        await link.until(lambda: True, "acks")
        self.assertEqual(await bodies(bob, "Alice"), [])
        self.assertEqual(len(await outbox_ids(alice, bob.info()["uid"])), 3)
        await free_disk(bob_store)
        clock.advance(RETRANSMIT_INITIAL - 0.5)
        await link.until(lambda: True, "nothing early")
        self.assertEqual(len(tap.received), 3)
        clock.advance(0.5)
        await link.until(lambda: len(tap.received) == 6, "the copies")
        uid = bob.info()["uid"]
        await link.until(lambda: not alice.courier._pumps[uid].in_flight, "the acks")
        self.assertEqual(await bodies(bob, "Alice"), texts)
        self.assertEqual(await outbox_ids(alice, uid), [])
        self.assertEqual((link.alice.state, link.bob.state), ("established", "established"))
        self.assertIs(alice.courier._pumps[uid].session, link.alice)

    async def test_retransmission_backs_off_and_resets(self) -> None:
        """When no ack comes, then the copies go after 5 s, then 10 s, 20 s ... at most 60 s
        apart; an ack resets the delay to 5 s."""
        node, clock, _events, key = await node_with_bob(self)
        ids = await queue(node, 2)
        session = FakeSession(key.uid)
        await turned(clock, node.session_established(session))
        self.assertEqual(len(session.sent), 2)
        for delay, total in ((5, 4), (10, 6), (20, 8), (40, 10), (60, 12), (60, 14)):
            clock.advance(delay - 0.125)
            self.assertEqual(len(session.sent), total - 2)
            clock.advance(0.125)
            self.assertEqual(len(session.sent), total)
        await turned(clock, node.acks_received(session, [bytes.fromhex(ids[0])]))
        clock.advance(RETRANSMIT_INITIAL)
        self.assertEqual(session.sent[-1][0].hex(), ids[1])
        self.assertEqual(len(session.sent), 15)


class ExactlyOnceAcrossCutsTests(TestCase):
    """Real sessions, real stores, lost acks and cut connections."""

    async def test_lost_acks_and_a_cut_cost_no_resend_and_no_duplicate(self) -> None:
        """When 600 messages stream, Bob stores the first window but every ack is lost and the
        connection is cut, then the next session (Bob's Resume names the last he stored)
        resends none of them; Bob ends with all 600 once, in order, and Alice with none
        waiting."""
        alice, bob, tap, clock = await two_nodes(self)
        bob_uid = bob.info()["uid"]
        ids = await gatherResults([alice.send_message("Bob", f"n{i}") for i in range(600)])
        first = Link(clock, alice, bob, tap)
        await first.until(
            lambda: (first.alice.state, first.bob.state) == ("established", "established"),
            "the first session",
        )
        first.drop_acks = True
        await first.until(lambda: len(tap.received) == WINDOW_MESSAGES, "the first window")
        await first.until(
            lambda: bob.resume_mark(alice.info()["uid"]) == bytes.fromhex(ids[255]["id"]),
            "Bob to store them",
        )
        first.cut()
        second = Link(clock, alice, bob, tap)
        await second.until(lambda: len(tap.received) == 600, "the rest")
        await second.until(lambda: not alice.courier._pumps[bob_uid].in_flight, "the acks")
        self.assertEqual([m.hex() for m in tap.received], [m["id"] for m in ids])
        self.assertEqual(await bodies(bob, "Alice"), [f"n{i}" for i in range(600)])
        self.assertEqual(await outbox_ids(alice, bob_uid), [])
