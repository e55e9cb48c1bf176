"""Delivery tests of :class:`jarvis.core.node.Node`: the windowed outbox stream, resuming from the
peer's mark, retransmission on a live session and a full disk.

The node runs with the real key file, crypto and SQLite store (helpers from
:mod:`tests.test_node`); sessions are recording fakes, or real sans-IO
:class:`~jarvis.protocol.session.PeerSession` pairs wired through memory on a ``task.Clock``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from jarvis.errors import StorageFull
from jarvis.ipc.jsonrpc import STORAGE, error_from_exception
from jarvis.store.database import Store
from tests.test_node import node_with_bob


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
