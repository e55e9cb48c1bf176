"""Tests for :mod:`jarvis.store`: real SQLite files in temporary directories.

:class:`AESGCMRowCipher` is a tiny test double of :class:`jarvis.crypto.aead.RowCipher` (same
``seal``/``open`` interface); :mod:`tests.store_crash_child` uses it too.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.common.errors import InvalidInput, NotFound
from jarvis.store import (
    Contact,
    CorruptRow,
    CorruptStore,
    DuplicateMessage,
    SchemaTooNew,
    Store,
    StoreClosed,
    StoredMessage,
    StoreNotEmpty,
    WrongStoreKey,
    queries,
    schema,
)
from jarvis.store.database import DELIVERY_CHUNK, associated_data, blind_index
from jarvis.store.records import copy_unchecked, new_message_id
from jarvis.store.rows import Rows
from jarvis.store.schema import OUTBOX_WHERE, SCHEMA_VERSION

reactor: Any = _reactor

ALICE = "a" * 52
BOB = "b" * 52


class AESGCMRowCipher:
    """Test double of ``RowCipher``: AES-256-GCM with a random nonce prepended."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key if key is not None else os.urandom(32)
        self._aead = AESGCM(self.key)

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt *plaintext* bound to *associated_data*."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, blob: bytes, associated_data: bytes) -> bytes:
        """Decrypt a blob from :meth:`seal`; raises ``InvalidTag`` if anything differs."""
        return self._aead.decrypt(blob[:12], blob[12:], associated_data)


def make_contact(uid: str = ALICE, **changes: Any) -> Contact:
    """Return a contact with plausible fields, overridden by *changes*."""
    fields: dict[str, Any] = {
        "uid": uid,
        "public_key": b"\x01" * 32,
        "name": f"name of {uid[:4]}",
        "addresses": ("127.0.0.1:7000", "example.org:7001"),
    }
    fields.update(changes)
    return Contact(**fields)


def make_message(
    contact: str = ALICE, direction: str = "out", body: str = "hello", **changes: Any
) -> StoredMessage:
    """Return a new message with a random id, queued (out) or received (in)."""
    fields: dict[str, Any] = {
        "id": secrets.token_hex(16),
        "contact": contact,
        "direction": direction,
        "body": body,
        "state": "queued" if direction == "out" else "received",
        "created": time.time(),
    }
    fields.update(changes)
    return StoredMessage(**fields)


class StoreTestCase(TestCase):
    """Opens stores in a fresh temporary directory and closes them after the test."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="jarvis-store-test-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.path = os.path.join(self.directory, "jarvis.sqlite3")
        self.cipher = AESGCMRowCipher()
        self.index_key = os.urandom(32)

    async def open_store(self, **kwargs: Any) -> Store:
        """Open the store at ``self.path`` (closing it at cleanup); *kwargs* override keys."""
        options: dict[str, Any] = {"cipher": self.cipher, "index_key": self.index_key}
        options.update(kwargs)
        store = await Store.open(self.path, reactor=reactor, **options)
        self.addCleanup(store.close)
        return store


class OpenTests(StoreTestCase):
    async def test_new_database_files_are_private(self) -> None:
        """When a store is opened and written, then the db, -wal and -shm files are 0600."""
        store = await self.open_store()
        await store.run(queries.put_contact, make_contact(), write=True)
        for suffix in ("", "-wal", "-shm"):
            mode = stat.S_IMODE(os.stat(self.path + suffix).st_mode)
            self.assertEqual(mode, 0o600, suffix)

    async def test_schema_version_and_wal_recorded(self) -> None:
        """When a new store is opened, then meta holds the schema version and WAL is on."""
        store = await self.open_store()
        await store.close()
        with sqlite3.connect(self.path) as conn:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            self.assertEqual(int(version.fetchone()[0]), SCHEMA_VERSION)
            self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        conn.close()

    async def test_integrity_check_ok(self) -> None:
        """When a sound store is checked, then the answer is ["ok"]."""
        store = await self.open_store()
        await store.run(queries.add_outgoing, make_message(), write=True)
        self.assertEqual(await store.run(queries.integrity_check, write=False), ["ok"])

    async def test_reopen_keeps_data(self) -> None:
        """When a store is closed and reopened with the same keys, then its data is there."""
        store = await self.open_store()
        message = await store.run(queries.add_outgoing, make_message(), write=True)
        await store.close()
        store = await self.open_store()
        self.assertEqual(await store.run(queries.get_message, message.id, write=False), message)

    async def test_other_data_key_refused(self) -> None:
        """When a store is reopened with another data key, then WrongStoreKey is raised."""
        store = await self.open_store()
        await store.close()
        with self.assertRaises(WrongStoreKey):
            await self.open_store(cipher=AESGCMRowCipher())

    async def test_other_index_key_refused(self) -> None:
        """When a store is reopened with another index key, then WrongStoreKey is raised."""
        store = await self.open_store()
        await store.close()
        with self.assertRaises(WrongStoreKey):
            await self.open_store(index_key=os.urandom(32))

    async def test_newer_schema_refused(self) -> None:
        """When the database has a newer schema version, then SchemaTooNew is raised."""
        store = await self.open_store()
        await store.close()
        conn = sqlite3.connect(self.path)
        with conn:
            conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        conn.close()
        with self.assertRaises(SchemaTooNew):
            await self.open_store()

    async def test_not_a_database_refused(self) -> None:
        """When the file is not an SQLite database, then CorruptStore is raised."""
        with open(self.path, "wb") as f:
            f.write(b"this is not a database" * 100)
        with self.assertRaises(CorruptStore):
            await self.open_store()

    async def test_closed_store_refuses_work(self) -> None:
        """When a store is closed, then later calls fail with StoreClosed (a Locked error)."""
        store = await self.open_store()
        await store.close()
        await store.close()  # idempotent
        with self.assertRaises(StoreClosed):
            await store.run(queries.get_contact, ALICE, write=False)

    async def test_close_finishes_queued_work(self) -> None:
        """When close() is called with writes queued, then they are written first."""
        store = await self.open_store()
        pending = store.run(queries.add_outgoing, make_message(), write=True)
        await store.close()
        message = await pending
        store = await self.open_store()
        self.assertEqual(await store.run(queries.get_message, message.id, write=False), message)

    async def test_pool_stats(self) -> None:
        """When pool_stats() is asked, then it reports one thread and the queue length."""
        store = await self.open_store()
        pending = [store.run(queries.add_outgoing, make_message(), write=True) for _ in range(3)]
        stats = store.pool_stats()
        self.assertEqual(stats["size"], 1)
        self.assertEqual(stats["queued"], 3)
        await gatherResults(pending)
        stats = store.pool_stats()
        # the worker may still be leaving its job for a moment after the result was delivered
        self.assertEqual(stats["queued"], 0)
        self.assertLessEqual(stats["busy"], 1)
        self.assertGreaterEqual(stats["transactions"], 1)


class MigrationTests(StoreTestCase):
    """Forward migrations of databases written by earlier versions."""

    def write_v1(self, rows: list[tuple[str, str, str]]) -> None:
        """Write a version 1 database (outbox table) holding *rows* ``(id, direction, state)``
        of a conversation with ALICE, sealed as version 1 sealed them."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            schema.migrate(conn, target=1)
            conversation = blind_index(self.index_key, "uid", ALICE)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO conversations (conversation, uid, next_seq) VALUES (?, ?, ?)",
                (
                    conversation,
                    self.cipher.seal(
                        ALICE.encode(), associated_data("conversations", "uid", conversation)
                    ),
                    len(rows) + 1,
                ),
            )
            for seq, (mid, direction, state) in enumerate(rows, start=1):
                body = self.cipher.seal(
                    f"body {seq}".encode(),
                    associated_data("messages", "body", conversation, mid.encode()),
                )
                rowid = conn.execute(
                    "INSERT INTO messages (conversation, seq, id, direction, state, created, "
                    "body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (conversation, seq, mid, direction, state, 1_700_000_000.0 + seq, body),
                ).lastrowid
                if direction == "out" and state in ("queued", "sent"):
                    conn.execute(
                        "INSERT INTO outbox (message, conversation, seq) VALUES (?, ?, ?)",
                        (rowid, conversation, seq),
                    )
            conn.execute("COMMIT")
        finally:
            conn.close()

    async def test_v1_database_migrates(self) -> None:
        """When a version 1 database with delivered, sent, queued and received messages is
        opened, then it is at the current version, its history is whole, the outbox holds the
        sent and queued ones in order (through the partial index), a stored id is still refused
        and the integrity check is ok."""
        rows = [
            (secrets.token_hex(16), "out", "delivered"),
            (secrets.token_hex(16), "out", "sent"),
            (secrets.token_hex(16), "in", "received"),
            (secrets.token_hex(16), "out", "queued"),
            (secrets.token_hex(16), "out", "read"),
            (secrets.token_hex(16), "out", "queued"),
        ]
        self.write_v1(rows)
        store = await self.open_store()
        page = await store.run(queries.history, ALICE, limit=50, write=False)
        self.assertEqual(
            [(m.id, m.direction, m.state, m.body) for m in reversed(page.messages)],
            [(mid, d, st, f"body {i}") for i, (mid, d, st) in enumerate(rows, start=1)],
        )
        outbox = await store.run(queries.outbox, ALICE, write=False)
        self.assertEqual([m.id for m in outbox], [rows[1][0], rows[3][0], rows[5][0]])
        await advance(store, rows[3][0], "delivered", time.time())
        outbox = await store.run(queries.outbox, ALICE, write=False)
        self.assertEqual([m.id for m in outbox], [rows[1][0], rows[5][0]])
        duplicate = make_message(ALICE, "out", id=rows[0][0])
        with self.assertRaises(DuplicateMessage):
            await store.run(queries.add_outgoing, duplicate, write=True)
        self.assertEqual(await store.run(queries.integrity_check, write=False), ["ok"])
        await store.close()
        conn = sqlite3.connect(self.path)
        try:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            self.assertEqual(int(version.fetchone()[0]), SCHEMA_VERSION)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            self.assertNotIn("outbox_by_conversation", tables)
            self.assertNotIn("messages_v2", tables)
            plan = conn.execute(
                f"EXPLAIN QUERY PLAN SELECT id FROM messages WHERE conversation = ? AND "
                f"{OUTBOX_WHERE} ORDER BY seq",
                (b"x",),
            ).fetchall()
            self.assertIn("USING INDEX outbox", " ".join(str(row[-1]) for row in plan))
        finally:
            conn.close()


class ContactTests(StoreTestCase):
    async def test_round_trip(self) -> None:
        """When a contact is put, then get_contact returns an equal contact."""
        store = await self.open_store()
        contact = make_contact(alias="Al", verified=True, muted=True, added_at=12.5)
        await store.run(queries.put_contact, contact, write=True)
        self.assertEqual(await store.run(queries.get_contact, ALICE, write=False), contact)

    async def test_unknown_is_none(self) -> None:
        """When an unknown uid is asked for, then get_contact returns None."""
        store = await self.open_store()
        self.assertIsNone(await store.run(queries.get_contact, BOB, write=False))

    async def test_put_updates_by_uid(self) -> None:
        """When a contact with the same uid is put again, then it replaces the first."""
        store = await self.open_store()
        await store.run(queries.put_contact, make_contact(name="old"), write=True)
        await store.run(queries.put_contact, make_contact(name="new", blocked=True), write=True)
        self.assertEqual(
            await store.run(queries.list_contacts, write=False),
            [make_contact(name="new", blocked=True)],
        )

    async def test_list_sorted_by_display_name(self) -> None:
        """When several contacts exist, then list_contacts sorts them by alias or name."""
        store = await self.open_store()
        zed = make_contact(ALICE, name="Zed")
        amy = make_contact(BOB, name="Zoe", alias="amy")
        await store.run(queries.put_contact, zed, write=True)
        await store.run(queries.put_contact, amy, write=True)
        self.assertEqual(await store.run(queries.list_contacts, write=False), [amy, zed])

    async def test_remove_with_history(self) -> None:
        """When a contact is removed with history, then its messages and outbox go too."""
        store = await self.open_store()
        await store.run(queries.put_contact, make_contact(), write=True)
        message = await store.run(queries.add_outgoing, make_message(), write=True)
        await store.run(queries.set_marker, ALICE, message.id, write=True)
        self.assertTrue(
            await store.run(queries.remove_contact, ALICE, with_history=True, write=True)
        )
        self.assertIsNone(await store.run(queries.get_contact, ALICE, write=False))
        self.assertIsNone(await store.run(queries.get_message, message.id, write=False))
        self.assertEqual(await store.run(queries.outbox, ALICE, write=False), [])
        self.assertIsNone(await store.run(queries.get_marker, ALICE, write=False))
        self.assertEqual(await store.run(queries.last_activity, write=False), {})

    async def test_remove_without_history(self) -> None:
        """When a contact is removed without history, then its conversation stays readable."""
        store = await self.open_store()
        await store.run(queries.put_contact, make_contact(), write=True)
        message = await store.run(queries.add_outgoing, make_message(), write=True)
        self.assertTrue(
            await store.run(queries.remove_contact, ALICE, with_history=False, write=True)
        )
        self.assertIsNone(await store.run(queries.get_contact, ALICE, write=False))
        page = await store.run(queries.history, ALICE, write=False)
        self.assertEqual(page.messages, (message,))
        self.assertFalse(
            await store.run(queries.remove_contact, ALICE, with_history=False, write=True)
        )


class OutgoingTests(StoreTestCase):
    async def test_seq_assigned_per_conversation(self) -> None:
        """When messages are added, then each conversation numbers them 1, 2, 3..."""
        store = await self.open_store()
        a1 = await store.run(queries.add_outgoing, make_message(ALICE), write=True)
        b1 = await store.run(queries.add_outgoing, make_message(BOB), write=True)
        a2 = await store.run(queries.add_outgoing, make_message(ALICE), write=True)
        self.assertEqual((a1.seq, b1.seq, a2.seq), (1, 1, 2))

    async def test_round_trip_and_outbox(self) -> None:
        """When an outgoing message is added, then it reads back and is in the outbox."""
        store = await self.open_store()
        message = await store.run(queries.add_outgoing, make_message(body="héllo ✓"), write=True)
        self.assertEqual(await store.run(queries.get_message, message.id, write=False), message)
        self.assertEqual(await store.run(queries.outbox, ALICE, write=False), [message])
        self.assertEqual(await store.run(queries.outbox, BOB, write=False), [])

    async def test_outbox_oldest_first(self) -> None:
        """When several messages are queued, then the outbox lists them oldest first."""
        store = await self.open_store()
        added = [
            await store.run(queries.add_outgoing, make_message(body=str(i)), write=True)
            for i in range(4)
        ]
        self.assertEqual(await store.run(queries.outbox, ALICE, write=False), added)

    async def test_duplicate_id_refused(self) -> None:
        """When an outgoing id is added twice, then DuplicateMessage is raised once."""
        store = await self.open_store()
        message = make_message()
        await store.run(queries.add_outgoing, message, write=True)
        with self.assertRaises(DuplicateMessage):
            await store.run(queries.add_outgoing, message, write=True)

    async def test_incoming_refused(self) -> None:
        """When add_outgoing is given an incoming message, then InvalidInput is raised."""
        store = await self.open_store()
        with self.assertRaises(InvalidInput):
            await store.run(queries.add_outgoing, make_message(direction="in"), write=True)


class IncomingTests(StoreTestCase):
    async def test_dedup(self) -> None:
        """When the same incoming id arrives twice, then only the first is stored."""
        store = await self.open_store()
        message = make_message(direction="in")
        stored = await store.run(queries.add_incoming, message, write=True)
        self.assertEqual((stored.id, stored.body, stored.seq), (message.id, message.body, 1))
        self.assertIsNone(await store.run(queries.add_incoming, message, write=True))
        page = await store.run(queries.history, ALICE, write=False)
        self.assertEqual([m.id for m in page.messages], [message.id])
        self.assertEqual(page.messages[0].seq, 1)

    async def test_same_id_other_contact_stored(self) -> None:
        """When two contacts use the same message id, then both messages are stored."""
        store = await self.open_store()
        message = make_message(ALICE, direction="in")
        self.assertTrue(await store.run(queries.add_incoming, message, write=True))
        self.assertTrue(
            await store.run(
                queries.add_incoming, StoredMessage(**{**vars(message), "contact": BOB}), write=True
            )
        )

    async def test_incoming_not_in_outbox(self) -> None:
        """When an incoming message is stored, then no outbox lists it."""
        store = await self.open_store()
        await store.run(queries.add_incoming, make_message(direction="in"), write=True)
        self.assertEqual(await store.run(queries.outbox, ALICE, write=False), [])


async def advance(store: Store, message_id: str, state: str, at: float) -> Any:
    """Advance one message through :meth:`Store.advance_states`; return it as stored now, or
    ``None`` if it did not change."""
    changed = await store.run(queries.advance_states, [message_id], state, at, write=True)
    return await store.run(queries.get_message, message_id, write=False) if changed else None


class StateTests(StoreTestCase):
    async def test_advances_and_sets_timestamps(self) -> None:
        """When a message goes sent, delivered, read, then each timestamp is set."""
        store = await self.open_store()
        message = await store.run(queries.add_outgoing, make_message(), write=True)
        sent = await advance(store, message.id, "sent", 10.0)
        delivered = await advance(store, message.id, "delivered", 11.0)
        read = await advance(store, message.id, "read", 12.0)
        assert sent is not None and delivered is not None and read is not None
        self.assertEqual((sent.state, sent.sent), ("sent", 10.0))
        self.assertEqual((delivered.state, delivered.delivered), ("delivered", 11.0))
        self.assertEqual((read.state, read.sent, read.delivered, read.read), ("read", 10, 11, 12))
        self.assertEqual(await store.run(queries.get_message, message.id, write=False), read)

    async def test_never_backwards(self) -> None:
        """When an older or equal state is set, then nothing changes and None is returned."""
        store = await self.open_store()
        message = await store.run(queries.add_outgoing, make_message(), write=True)
        await advance(store, message.id, "delivered", 11.0)
        self.assertIsNone(await advance(store, message.id, "sent", 12.0))
        self.assertIsNone(await advance(store, message.id, "delivered", 13.0))
        self.assertIsNone(await advance(store, message.id, "queued", 14.0))
        stored = await store.run(queries.get_message, message.id, write=False)
        assert stored is not None
        self.assertEqual((stored.state, stored.sent, stored.delivered), ("delivered", None, 11.0))

    async def test_outbox_membership(self) -> None:
        """When a message is sent it stays in the outbox; once delivered it leaves."""
        store = await self.open_store()
        first = await store.run(queries.add_outgoing, make_message(), write=True)
        second = await store.run(queries.add_outgoing, make_message(), write=True)
        await advance(store, first.id, "sent", 1.0)
        self.assertEqual(
            [m.id for m in await store.run(queries.outbox, ALICE, write=False)],
            [first.id, second.id],
        )
        await advance(store, first.id, "delivered", 2.0)
        self.assertEqual(
            [m.id for m in await store.run(queries.outbox, ALICE, write=False)], [second.id]
        )
        await advance(store, second.id, "read", 3.0)
        self.assertEqual(await store.run(queries.outbox, ALICE, write=False), [])

    async def test_unknown_message(self) -> None:
        """When the id is unknown, then nothing advances."""
        store = await self.open_store()
        self.assertIsNone(await advance(store, "00" * 16, "sent", 1.0))

    async def test_incoming_only_to_read(self) -> None:
        """When an incoming message is updated, then only 'read' applies to it."""
        store = await self.open_store()
        message = make_message(direction="in")
        await store.run(queries.add_incoming, message, write=True)
        self.assertIsNone(await advance(store, message.id, "delivered", 1.0))
        read = await advance(store, message.id, "read", 2.0)
        assert read is not None
        self.assertEqual((read.state, read.read), ("read", 2.0))

    async def test_bad_state(self) -> None:
        """When the state is not a message state, then InvalidInput is raised."""
        store = await self.open_store()
        with self.assertRaises(InvalidInput):
            await advance(store, "00" * 16, "exploded", 1.0)


class AdvanceStatesTests(StoreTestCase):
    async def test_batch_advances_each_changed_one(self) -> None:
        """When several ids advance at once, then each changed one is returned and leaves the
        outbox once delivered; unknown, incoming and backward ones are left alone."""
        store = await self.open_store()
        first = await store.run(queries.add_outgoing, make_message(), write=True)
        second = await store.run(queries.add_outgoing, make_message(), write=True)
        third = await store.run(queries.add_outgoing, make_message(), write=True)
        incoming = make_message(direction="in")
        await store.run(queries.add_incoming, incoming, write=True)
        await advance(store, third.id, "read", 1.0)
        changed = await store.run(
            queries.advance_states,
            [first.id, "00" * 16, incoming.id, third.id, second.id],
            "delivered",
            5.0,
            write=True,
        )
        self.assertEqual(changed, [(first.id, ALICE, "delivered"), (second.id, ALICE, "delivered")])
        self.assertEqual(await store.run(queries.outbox, ALICE, write=False), [])
        stored = await store.run(queries.get_message, first.id, write=False)
        assert stored is not None
        self.assertEqual((stored.state, stored.delivered, stored.sent), ("delivered", 5.0, None))
        self.assertEqual(
            await store.run(queries.advance_states, [first.id], "sent", 6.0, write=True), []
        )
        self.assertEqual(
            await store.run(queries.advance_states, [first.id], "queued", 6.0, write=True), []
        )
        read = await store.run(
            queries.advance_states, [incoming.id, first.id], "read", 7.0, write=True
        )
        self.assertEqual(read, [(incoming.id, ALICE, "read"), (first.id, ALICE, "read")])

    async def test_bad_state(self) -> None:
        """When the state is not a message state, then InvalidInput is raised."""
        store = await self.open_store()
        with self.assertRaises(InvalidInput):
            await store.run(queries.advance_states, ["00" * 16], "exploded", 1.0, write=True)

    async def test_many_ids_in_chunks_and_twice(self) -> None:
        """When 1,203 ids (more than one statement's worth) advance, one of them given twice,
        then each advances once, the changes come back in the order given, and an id stored in
        two conversations advances only its first row."""
        store = await self.open_store()
        messages = [make_message(body=f"m{i}") for i in range(1200)]
        await gatherResults([store.run(queries.add_outgoing, m, write=True) for m in messages])
        shared = messages[5].id
        await store.run(queries.add_outgoing, make_message(BOB, id=shared), write=True)
        ids = [m.id for m in reversed(messages)]
        changed = await store.run(
            queries.advance_states, [*ids, shared, "ff" * 16], "sent", 3.0, write=True
        )
        self.assertEqual(changed, [(mid, ALICE, "sent") for mid in ids])
        again = await store.run(queries.advance_states, [shared], "sent", 4.0, write=True)
        self.assertEqual(again, [(shared, BOB, "sent")])
        self.assertEqual(len(await store.run(queries.outbox, ALICE, write=False)), 1200)

    async def test_shared_id_advances_in_the_named_conversation(self) -> None:
        """When one id is stored in two conversations (the entries of one group message) and
        the second contact acknowledges it, then only that contact's row is delivered and the
        first contact's stays in the outbox; ids given with contacts advance once each."""
        store = await self.open_store()
        first = make_message(ALICE)
        await store.run(queries.add_outgoing, first, write=True)
        await store.run(queries.add_outgoing, make_message(BOB, id=first.id), write=True)
        changed = await store.run(
            queries.advance_states, [first.id], "delivered", 5.0, uids=[BOB], write=True
        )
        self.assertEqual(changed, [(first.id, BOB, "delivered")])
        self.assertEqual(
            [m.id for m in await store.run(queries.outbox, ALICE, write=False)], [first.id]
        )
        self.assertEqual(await store.run(queries.outbox, BOB, write=False), [])
        both = await store.run(
            queries.advance_states,
            [first.id, first.id, first.id],
            "sent",
            6.0,
            uids=[ALICE, BOB, ALICE],
            write=True,
        )
        self.assertEqual(both, [(first.id, ALICE, "sent")])  # BOB's is delivered already
        with self.assertRaises(InvalidInput):
            await store.run(queries.advance_states, [first.id], "sent", 7.0, uids=[], write=True)


class ReceiptTests(StoreTestCase):
    async def test_receipts_owed_until_cleared(self) -> None:
        """When incoming messages are marked read with receipts, then their ids are owed in
        conversation order until cleared; marked read without receipts, none are owed; another
        conversation's owed receipts are untouched by clearing."""
        store = await self.open_store()
        mine = [make_message(direction="in", body=f"m{i}") for i in range(3)]
        for message in mine:
            await store.run(queries.add_incoming, message, write=True)
        other = make_message(BOB, direction="in")
        await store.run(queries.add_incoming, other, write=True)
        self.assertEqual(
            await store.run(queries.mark_read, ALICE, at=1.0, receipts=True, write=True),
            [m.id for m in mine],
        )
        await store.run(queries.mark_read, BOB, at=1.0, receipts=True, write=True)
        self.assertEqual(
            await store.run(queries.receipts_due, ALICE, write=False), [m.id for m in mine]
        )
        await store.run(
            queries.clear_receipts, ALICE, [mine[0].id, mine[2].id, other.id], write=True
        )
        self.assertEqual(await store.run(queries.receipts_due, ALICE, write=False), [mine[1].id])
        self.assertEqual(await store.run(queries.receipts_due, BOB, write=False), [other.id])
        late = make_message(direction="in")
        await store.run(queries.add_incoming, late, write=True)
        await store.run(queries.mark_read, ALICE, at=2.0, write=True)
        self.assertEqual(await store.run(queries.receipts_due, ALICE, write=False), [mine[1].id])


class HistoryTests(StoreTestCase):
    async def test_pages_newest_first_with_cursor(self) -> None:
        """When 7 messages are paged 3 at a time, then pages are 3, 3, 1 with cursors."""
        store = await self.open_store()
        added = [
            await store.run(queries.add_outgoing, make_message(body=f"m{i}"), write=True)
            for i in range(7)
        ]
        await store.run(queries.add_outgoing, make_message(BOB), write=True)
        newest_first = list(reversed(added))
        page1 = await store.run(queries.history, ALICE, limit=3, write=False)
        self.assertEqual(list(page1.messages), newest_first[:3])
        page2 = await store.run(
            queries.history, ALICE, limit=3, before=page1.next_cursor, write=False
        )
        self.assertEqual(list(page2.messages), newest_first[3:6])
        page3 = await store.run(
            queries.history, ALICE, limit=3, before=page2.next_cursor, write=False
        )
        self.assertEqual(list(page3.messages), newest_first[6:])
        self.assertIsNone(page3.next_cursor)

    async def test_exact_page_has_no_cursor(self) -> None:
        """When the page holds exactly the remaining messages, then next_cursor is None."""
        store = await self.open_store()
        for _ in range(3):
            await store.run(queries.add_outgoing, make_message(), write=True)
        page = await store.run(queries.history, ALICE, limit=3, write=False)
        self.assertEqual((len(page.messages), page.next_cursor), (3, None))

    async def test_empty(self) -> None:
        """When a conversation has no messages, then the page is empty."""
        store = await self.open_store()
        page = await store.run(queries.history, BOB, write=False)
        self.assertEqual((page.messages, page.next_cursor), ((), None))

    async def test_bad_arguments(self) -> None:
        """When the limit or cursor is invalid, then InvalidInput is raised."""
        store = await self.open_store()
        with self.assertRaises(InvalidInput):
            await store.run(queries.history, ALICE, limit=0, write=False)
        with self.assertRaises(InvalidInput):
            await store.run(queries.history, ALICE, before="not a cursor", write=False)


class HistoryBoundTests(StoreTestCase):
    """Paging from a message id, backwards (before) and forwards (after), by seq."""

    async def fill(self, count: int) -> tuple[Store, list[StoredMessage]]:
        store = await self.open_store()
        added = await gatherResults(
            [
                store.run(queries.add_outgoing, make_message(body=f"m{i}"), write=True)
                for i in range(count)
            ]
        )
        await store.run(queries.add_outgoing, make_message(BOB), write=True)
        return store, sorted(added, key=lambda m: m.seq)

    async def test_before_message_id(self) -> None:
        """When 1,200 messages are paged back from a message id, then each page holds the
        messages just older than it, newest first, and the cursors reach the oldest."""
        store, added = await self.fill(1200)
        page = await store.run(queries.history, ALICE, limit=200, before=added[700].id, write=False)
        self.assertEqual(list(page.messages), list(reversed(added[500:700])))
        seen = list(page.messages)
        while page.next_cursor is not None:
            page = await store.run(
                queries.history, ALICE, limit=200, before=page.next_cursor, write=False
            )
            seen.extend(page.messages)
        self.assertEqual(seen, list(reversed(added[:700])))
        self.assertIsNone(page.newer_cursor)

    async def test_after_message_id(self) -> None:
        """When 1,200 messages are paged forward from a message id, then each page holds the
        oldest messages newer than it (newest first in the page) and newer_cursor goes on to
        the newest; next_cursor stays None."""
        store, added = await self.fill(1200)
        page = await store.run(queries.history, ALICE, limit=200, after=added[99].id, write=False)
        self.assertEqual(list(page.messages), list(reversed(added[100:300])))
        self.assertIsNone(page.next_cursor)
        seen = list(reversed(page.messages))
        while page.newer_cursor is not None:
            page = await store.run(
                queries.history, ALICE, limit=200, after=page.newer_cursor, write=False
            )
            seen.extend(reversed(page.messages))
        self.assertEqual(seen, added[100:])
        page = await store.run(queries.history, ALICE, limit=5, after=added[-1].id, write=False)
        self.assertEqual((page.messages, page.newer_cursor), ((), None))

    async def test_between(self) -> None:
        """When both before and after are given, then only the messages between them come,
        the oldest first when more remain."""
        store, added = await self.fill(30)
        page = await store.run(
            queries.history, ALICE, limit=5, after=added[9].id, before=added[20].id, write=False
        )
        self.assertEqual(list(page.messages), list(reversed(added[10:15])))
        page = await store.run(
            queries.history,
            ALICE,
            limit=50,
            after=page.newer_cursor,
            before=added[20].id,
            write=False,
        )
        self.assertEqual(list(page.messages), list(reversed(added[15:20])))
        self.assertIsNone(page.newer_cursor)

    async def test_unknown_or_foreign_id(self) -> None:
        """When the message id is unknown or belongs to another conversation, then NotFound;
        a cursor that is neither an id nor a seq is InvalidInput."""
        store, _ = await self.fill(3)
        other = await store.run(queries.add_outgoing, make_message(BOB), write=True)
        for bound in (secrets.token_hex(16), other.id):
            with self.assertRaises(NotFound):
                await store.run(queries.history, ALICE, before=bound, write=False)
            with self.assertRaises(NotFound):
                await store.run(queries.history, ALICE, after=bound, write=False)
        with self.assertRaises(InvalidInput):
            await store.run(queries.history, ALICE, after="ABCDEF", write=False)


class UnreadTests(StoreTestCase):
    async def test_counts_and_mark_read_up_to(self) -> None:
        """When messages arrive and some are read, then counts and returned ids follow."""
        store = await self.open_store()
        incoming = [make_message(direction="in", created=float(i)) for i in range(4)]
        for message in incoming:
            await store.run(queries.add_incoming, message, write=True)
        await store.run(queries.add_incoming, make_message(BOB, direction="in"), write=True)
        await store.run(queries.add_outgoing, make_message(BOB), write=True)
        self.assertEqual(await store.run(queries.unread_counts, write=False), {ALICE: 4, BOB: 1})
        marked = await store.run(
            queries.mark_read, ALICE, up_to=incoming[1].id, at=50.0, write=True
        )
        self.assertEqual(marked, [incoming[0].id, incoming[1].id])
        self.assertEqual(await store.run(queries.unread_counts, write=False), {ALICE: 2, BOB: 1})
        self.assertEqual(
            await store.run(queries.mark_read, ALICE, up_to=incoming[1].id, at=51.0, write=True), []
        )
        marked = await store.run(queries.mark_read, ALICE, at=52.0, write=True)
        self.assertEqual(marked, [incoming[2].id, incoming[3].id])
        self.assertEqual(await store.run(queries.unread_counts, write=False), {BOB: 1})
        first = await store.run(queries.get_message, incoming[0].id, write=False)
        assert first is not None
        self.assertEqual((first.state, first.read), ("read", 50.0))

    async def test_mark_read_unknown_message(self) -> None:
        """When up_to names no message of the conversation, then NotFound is raised."""
        store = await self.open_store()
        with self.assertRaises(NotFound):
            await store.run(queries.mark_read, ALICE, up_to="ff" * 16, at=1.0, write=True)

    async def test_last_activity(self) -> None:
        """When messages exist, then last_activity gives each uid its newest created time."""
        store = await self.open_store()
        await store.run(queries.add_outgoing, make_message(ALICE, created=5.0), write=True)
        await store.run(
            queries.add_incoming, make_message(ALICE, direction="in", created=7.0), write=True
        )
        await store.run(queries.add_outgoing, make_message(BOB, created=3.0), write=True)
        self.assertEqual(
            await store.run(queries.last_activity, write=False), {ALICE: 7.0, BOB: 3.0}
        )


class MarkerAndSettingTests(StoreTestCase):
    async def test_marker_round_trip(self) -> None:
        """When a marker is set, moved and cleared, then get_marker follows."""
        store = await self.open_store()
        self.assertIsNone(await store.run(queries.get_marker, ALICE, write=False))
        await store.run(queries.set_marker, ALICE, "ab" * 16, write=True)
        self.assertEqual(await store.run(queries.get_marker, ALICE, write=False), "ab" * 16)
        await store.run(queries.set_marker, ALICE, None, write=True)
        self.assertIsNone(await store.run(queries.get_marker, ALICE, write=False))

    async def test_setting_round_trip(self) -> None:
        """When a setting is set twice, then get_setting returns the last value."""
        store = await self.open_store()
        self.assertIsNone(await store.run(queries.get_setting, "theme", write=False))
        await store.run(queries.set_setting, "theme", "dark", write=True)
        await store.run(queries.set_setting, "theme", "light", write=True)
        self.assertEqual(await store.run(queries.get_setting, "theme", write=False), "light")

    async def test_settings_changed_and_listed_by_prefix(self) -> None:
        """When settings are written and deleted together, then those named with a prefix
        are listed by name (theirs only, as last written) and the deleted ones are gone."""
        store = await self.open_store()
        await store.run(queries.set_setting, "theme", "dark", write=True)
        values = {"transfer/a": "1", "transfer/b": "2", "transfer/c": "3"}
        await store.run(queries.change_settings, values, write=True)
        await store.run(queries.change_settings, {"transfer/a": "4"}, ["transfer/b"], write=True)
        self.assertEqual(
            await store.run(queries.settings_named, "transfer/", write=False),
            {"transfer/a": "4", "transfer/c": "3"},
        )
        self.assertEqual(await store.run(queries.get_setting, "theme", write=False), "dark")


class DumpTests(StoreTestCase):
    async def fill(self, store: Store) -> None:
        await store.run(queries.put_contact, make_contact(alias="al"), write=True)
        await store.run(queries.put_contact, make_contact(BOB), write=True)
        sent = await store.run(queries.add_outgoing, make_message(body="one"), write=True)
        await advance(store, sent.id, "delivered", 3.0)
        await store.run(queries.add_outgoing, make_message(body="two"), write=True)
        await store.run(
            queries.add_incoming, make_message(BOB, direction="in", body="three"), write=True
        )
        await store.run(queries.set_marker, BOB, "cd" * 16, write=True)
        await store.run(queries.set_setting, "theme", "dark", write=True)

    async def test_round_trip(self) -> None:
        """When a dump is loaded into an empty store, then the new store dumps the same."""
        store = await self.open_store()
        await self.fill(store)
        dump = await store.run(queries.dump, write=False)
        self.path = os.path.join(self.directory, "other.sqlite3")
        other = await self.open_store(cipher=AESGCMRowCipher(), index_key=os.urandom(32))
        await other.run(queries.load, dump, write=True)
        self.assertEqual(await other.run(queries.dump, write=False), dump)
        self.assertEqual(
            [m.body for m in await other.run(queries.outbox, ALICE, write=False)], ["two"]
        )
        third = await other.run(queries.add_outgoing, make_message(), write=True)
        self.assertEqual(third.seq, 3)

    async def test_dump_is_json(self) -> None:
        """When a store is dumped, then the dict survives JSON unchanged."""
        import json

        store = await self.open_store()
        await self.fill(store)
        dump = await store.run(queries.dump, write=False)
        self.assertEqual(json.loads(json.dumps(dump)), dump)
        self.assertEqual(len(dump["messages"]), 3)

    async def test_load_into_non_empty_refused(self) -> None:
        """When load() is called on a store holding anything, then StoreNotEmpty is raised."""
        store = await self.open_store()
        await self.fill(store)
        dump = await store.run(queries.dump, write=False)
        with self.assertRaises(StoreNotEmpty):
            await store.run(queries.load, dump, write=True)
        self.assertEqual(await store.run(queries.dump, write=False), dump)

    async def test_malformed_dump_refused_whole(self) -> None:
        """When a dump has a bad message, then InvalidInput is raised and nothing is loaded."""
        store = await self.open_store()
        await self.fill(store)
        dump = await store.run(queries.dump, write=False)
        dump["messages"][-1]["state"] = "exploded"
        self.path = os.path.join(self.directory, "other.sqlite3")
        other = await self.open_store()
        with self.assertRaises(InvalidInput):
            await other.run(queries.load, dump, write=True)
        self.assertEqual(await other.run(queries.list_contacts, write=False), [])
        with self.assertRaises(InvalidInput):
            await other.run(queries.load, {"format": "something else"}, write=True)

    async def test_path_survives_export_and_old_dumps_load(self) -> None:
        """When a message deposited in the mailbox is dumped and loaded into a new store, then
        its path is still ``mailbox``; and a version-1 dump (no path) still loads, without it."""
        store = await self.open_store()
        await self.fill(store)
        sent = await store.run(queries.add_outgoing, make_message(body="four"), write=True)
        await store.run(queries.advance_via, [sent.id], "sent", 4.0, "mailbox", write=True)
        dump = await store.run(queries.dump, write=False)
        self.assertEqual(dump["version"], 2)
        self.assertEqual({m["body"]: m["path"] for m in dump["messages"]}["four"], "mailbox")
        self.path = os.path.join(self.directory, "other.sqlite3")
        other = await self.open_store(cipher=AESGCMRowCipher(), index_key=os.urandom(32))
        await other.run(queries.load, dump, write=True)
        self.assertEqual(
            await other.run(queries.paths_of, ALICE, [sent.id], write=False), {sent.id: "mailbox"}
        )
        self.assertEqual(await other.run(queries.dump, write=False), dump)
        old = {
            **dump,
            "version": 1,
            "messages": [{k: v for k, v in m.items() if k != "path"} for m in dump["messages"]],
        }
        self.path = os.path.join(self.directory, "third.sqlite3")
        third = await self.open_store(cipher=AESGCMRowCipher(), index_key=os.urandom(32))
        await third.run(queries.load, old, write=True)
        self.assertEqual(await third.run(queries.paths_of, ALICE, [sent.id], write=False), {})
        bodies = [m["body"] for m in (await third.run(queries.dump, write=False))["messages"]]
        self.assertEqual(sorted(bodies), ["four", "one", "three", "two"])


class BatchingTests(StoreTestCase):
    async def test_one_turn_is_a_handful_of_transactions(self) -> None:
        """When 1,000 add_outgoing calls are issued in one turn, then at most 3 commits run."""
        store = await self.open_store()
        before = store.pool_stats()["transactions"]
        added = await gatherResults(
            [store.run(queries.add_outgoing, make_message(), write=True) for _ in range(1000)]
        )
        commits = store.pool_stats()["transactions"] - before
        self.assertGreaterEqual(commits, 1)
        self.assertLessEqual(commits, 3)
        self.assertEqual([m.seq for m in added], list(range(1, 1001)))

    async def test_failing_operation_spares_its_batch(self) -> None:
        """When one write of a batch fails, then the others of that batch are still stored."""
        store = await self.open_store()
        first = await store.run(queries.add_outgoing, make_message(), write=True)
        before = store.pool_stats()["transactions"]
        good = store.run(queries.add_outgoing, make_message(), write=True)
        bad = store.run(queries.add_outgoing, first, write=True)
        also_good = store.run(queries.add_incoming, make_message(direction="in"), write=True)
        with self.assertRaises(DuplicateMessage):
            await bad
        self.assertEqual((await good).seq, 2)
        self.assertTrue(await also_good)
        self.assertEqual(store.pool_stats()["transactions"] - before, 1)
        self.assertEqual(len((await store.run(queries.history, ALICE, write=False)).messages), 3)

    async def test_reads_see_earlier_writes_of_the_turn(self) -> None:
        """When a read is issued right after a write in the same turn, then it sees it."""
        store = await self.open_store()
        put = store.run(queries.put_contact, make_contact(), write=True)
        got = store.run(queries.get_contact, ALICE, write=False)
        await put
        self.assertEqual(await got, make_contact())


class ChunkedDeliveryTests(StoreTestCase):
    async def test_results_fire_in_order_over_several_turns(self) -> None:
        """When a batch holds more writes than DELIVERY_CHUNK, then their Deferreds fire in
        issue order, after the COMMIT, and not all in the same reactor turn."""
        store = await self.open_store()
        total = DELIVERY_CHUNK * 2 + DELIVERY_CHUNK // 2
        before = store.pool_stats()["transactions"]
        fired: list[int] = []
        commits_seen: list[int] = []
        seen_next_turn: list[int] = []

        def record(message: StoredMessage) -> StoredMessage:
            if not fired:
                commits_seen.append(store.pool_stats()["transactions"] - before)
                reactor.callLater(0, lambda: seen_next_turn.append(len(fired)))
            fired.append(message.seq)
            return message

        pending = [
            store.run(queries.add_outgoing, make_message(), write=True).addCallback(record)
            for _ in range(total)
        ]
        await gatherResults(pending)
        self.assertEqual(fired, list(range(1, total + 1)))
        self.assertEqual(commits_seen, [1])
        self.assertEqual(len(seen_next_turn), 1)
        self.assertGreaterEqual(seen_next_turn[0], DELIVERY_CHUNK)
        self.assertLess(seen_next_turn[0], total)

    async def test_close_waits_for_delivery(self) -> None:
        """When close() is called while results are still being delivered, then every
        Deferred has fired before close() does."""
        store = await self.open_store()
        pending = [
            store.run(queries.add_outgoing, make_message(), write=True)
            for _ in range(DELIVERY_CHUNK * 3)
        ]
        await store.close()
        self.assertTrue(all(d.called for d in pending))
        self.assertEqual(len(await gatherResults(pending)), DELIVERY_CHUNK * 3)


class RunTests(StoreTestCase):
    async def test_any_function_runs_on_the_thread_in_the_batch(self) -> None:
        """When Store.run is given a plain function of the rows, then it runs on the store's
        thread inside the transaction of its turn's batch and sees that batch's writes."""
        store = await self.open_store()
        before = store.pool_stats()["transactions"]

        def probe(rows: Rows, table: str) -> tuple[threading.Thread, bool, int]:
            count = rows.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            return threading.current_thread(), rows.conn.in_transaction, count

        added = store.run(queries.add_outgoing, make_message(), write=True)
        thread, in_transaction, count = await store.run(probe, "messages", write=False)
        await added
        self.assertIsNot(thread, threading.current_thread())
        self.assertTrue(in_transaction)
        self.assertEqual(count, 1)
        self.assertEqual(store.pool_stats()["transactions"] - before, 1)

    async def test_keywords_reach_the_query(self) -> None:
        """When Store.run is given keyword arguments, then the query gets them."""
        store = await self.open_store()
        for _ in range(3):
            await store.run(queries.add_outgoing, make_message(), write=True)
        page = await store.run(queries.history, ALICE, limit=2, write=False)
        self.assertEqual([m.seq for m in page.messages], [3, 2])
        self.assertEqual(page.next_cursor, "2")

    async def test_closed_store_runs_nothing(self) -> None:
        """When the store is closed, then Store.run fails with StoreClosed and runs nothing."""
        store = await self.open_store()
        await store.close()
        ran: list[object] = []
        with self.assertRaises(StoreClosed):
            await store.run(ran.append, write=True)
        self.assertEqual(ran, [])


class BatchedAppendTests(StoreTestCase):
    async def test_mixed_turn_keeps_seqs_and_activity(self) -> None:
        """When one turn interleaves outgoing and incoming messages of two conversations with
        reads, then seqs are per conversation and gapless and the reads see the writes."""
        store = await self.open_store()
        adds = []
        for i in range(6):
            contact = ALICE if i % 2 else BOB
            adds.append(
                store.run(
                    queries.add_outgoing, make_message(contact, created=100.0 + i), write=True
                )
            )
            adds.append(
                store.run(queries.add_outgoing, make_message(contact, created=50.0), write=True)
            )
        incoming = store.run(
            queries.add_incoming, make_message(ALICE, "in", created=200.0), write=True
        )
        activity = store.run(queries.last_activity, write=False)
        page = store.run(queries.history, ALICE, limit=100, write=False)
        later = store.run(queries.add_outgoing, make_message(ALICE, created=10.0), write=True)
        added = await gatherResults(adds)
        self.assertEqual([m.seq for m in added if m.contact == ALICE], list(range(1, 7)))
        self.assertEqual([m.seq for m in added if m.contact == BOB], list(range(1, 7)))
        self.assertTrue(await incoming)
        self.assertEqual(await activity, {ALICE: 200.0, BOB: 104.0})
        self.assertEqual([m.seq for m in (await page).messages], list(range(7, 0, -1)))
        self.assertEqual((await later).seq, 8)
        self.assertEqual((await store.run(queries.last_activity, write=False))[ALICE], 200.0)

    async def test_duplicate_in_a_run_spares_the_run(self) -> None:
        """When a run of outgoing messages in one turn repeats an id, then only the repeat
        fails and the others get gapless seqs, also after the store is reopened."""
        store = await self.open_store()
        first = make_message()
        results = [store.run(queries.add_outgoing, make_message(), write=True) for _ in range(3)]
        results.append(store.run(queries.add_outgoing, first, write=True))
        results.append(store.run(queries.add_outgoing, first, write=True))
        results += [store.run(queries.add_outgoing, make_message(), write=True) for _ in range(3)]
        with self.assertRaises(DuplicateMessage):
            await results.pop(4)
        stored = await gatherResults(results)
        self.assertEqual([m.seq for m in stored], list(range(1, 8)))
        self.assertEqual(stored[3], dataclasses.replace(first, seq=4))
        await store.close()
        store = await self.open_store()
        self.assertEqual((await store.run(queries.add_outgoing, make_message(), write=True)).seq, 8)
        self.assertEqual(len(await store.run(queries.outbox, ALICE, write=False)), 8)


class AtRestTests(StoreTestCase):
    def assert_canary_absent(self, canary: str) -> int:
        """Read every file of the directory; fail if the canary shows in any encoding."""
        raw = canary.encode()
        needles = {
            raw,
            base64.b64encode(raw),
            base64.urlsafe_b64encode(raw),
            raw.hex().encode(),
            raw.hex().upper().encode(),
            canary.encode("utf-16-le"),
        }
        total = 0
        for name in os.listdir(self.directory):
            with open(os.path.join(self.directory, name), "rb") as f:
                data = f.read()
            total += len(data)
            for needle in needles:
                self.assertNotIn(needle, data, f"{needle!r} found in {name}")
        return total

    async def test_canary_not_on_disk(self) -> None:
        """When names, bodies and settings hold a canary, then no file shows it."""
        canary = "canary" + secrets.token_hex(8)
        store = await self.open_store()
        await store.run(
            queries.put_contact,
            make_contact(canary, name=f"Name {canary}", alias=canary, addresses=(canary,)),
            write=True,
        )
        for i in range(50):
            await store.run(
                queries.add_outgoing,
                make_message(canary, body=f"{i} body {canary} end"),
                write=True,
            )
        await store.run(
            queries.add_incoming, make_message(canary, direction="in", body=canary), write=True
        )
        await store.run(queries.set_setting, canary, canary, write=True)
        self.assertGreater(self.assert_canary_absent(canary), 0)  # while open: WAL present
        await store.close()
        self.assertGreater(self.assert_canary_absent(canary), 0)
        for name in os.listdir(self.directory):
            mode = stat.S_IMODE(os.stat(os.path.join(self.directory, name)).st_mode)
            self.assertEqual(mode, 0o600, name)

    async def test_conversation_column_is_blind_index(self) -> None:
        """When a message is stored, then its conversation column is the uid's HMAC."""
        store = await self.open_store()
        await store.run(queries.add_outgoing, make_message(), write=True)
        await store.close()
        conn = sqlite3.connect(self.path)
        try:
            (conversation,) = conn.execute("SELECT conversation FROM messages").fetchone()
        finally:
            conn.close()
        self.assertEqual(conversation, blind_index(self.index_key, "uid", ALICE))


class RowSwapTests(StoreTestCase):
    async def test_swapped_body_fails_clearly(self) -> None:
        """When one message's ciphertext is copied onto another row, then reading it fails
        with CorruptRow naming the row."""
        store = await self.open_store()
        first = await store.run(queries.add_outgoing, make_message(body="first"), write=True)
        second = await store.run(queries.add_outgoing, make_message(body="second"), write=True)
        await store.close()
        conn = sqlite3.connect(self.path)
        with conn:
            conn.execute(
                "UPDATE messages SET body = (SELECT body FROM messages WHERE id = ?) WHERE id = ?",
                (first.id, second.id),
            )
        conn.close()
        store = await self.open_store()
        self.assertEqual(await store.run(queries.get_message, first.id, write=False), first)
        with self.assertRaises(CorruptRow) as caught:
            await store.run(queries.get_message, second.id, write=False)
        self.assertIn(second.id, str(caught.exception))
        self.assertIn("messages", str(caught.exception))

    async def test_swapped_contact_profile_fails(self) -> None:
        """When a contact's sealed profile is copied onto another contact, then reading fails."""
        store = await self.open_store()
        await store.run(queries.put_contact, make_contact(ALICE), write=True)
        await store.run(queries.put_contact, make_contact(BOB), write=True)
        await store.close()
        conn = sqlite3.connect(self.path)
        with conn:
            conn.execute("UPDATE contacts SET profile = (SELECT max(profile) FROM contacts)")
        conn.close()
        store = await self.open_store()
        with self.assertRaises(CorruptRow):
            await store.run(queries.list_contacts, write=False)


class ReactorNotBlockedTests(StoreTestCase):
    async def test_writes_leave_reactor_responsive(self) -> None:
        """When 5,000 messages are written, then a 10 ms LoopingCall never waits 500 ms.

        A sanity bound that holds on a loaded 2-core CI machine; the measured stall is a
        benchmark figure (bench/store_bench.py), not a test assertion.
        """
        store = await self.open_store()
        gaps: list[float] = []
        last = [time.monotonic()]

        def tick() -> None:
            now = time.monotonic()
            gaps.append(now - last[0])
            last[0] = now

        loop = LoopingCall(tick)
        loop.clock = reactor
        loop.start(0.01)
        try:
            await gatherResults(
                [
                    store.run(queries.add_outgoing, make_message(body="x" * 200), write=True)
                    for _ in range(5000)
                ]
            )
        finally:
            loop.stop()
        self.assertGreater(len(gaps), 0)
        self.assertLess(max(gaps), 0.5)


class PureHelperTests(SynchronousTestCase):
    @given(st.lists(st.binary(max_size=8), max_size=3), st.lists(st.binary(max_size=8), max_size=3))
    def test_associated_data_injective(self, a: list[bytes], b: list[bytes]) -> None:
        """When two row keys differ, then their associated data differ."""
        if a != b:
            self.assertNotEqual(associated_data("t", "c", *a), associated_data("t", "c", *b))

    def test_blind_index_kinds_differ(self) -> None:
        """When the same text is indexed as a uid and as a setting, then the indexes differ."""
        key = b"k" * 32
        self.assertNotEqual(blind_index(key, "uid", ALICE), blind_index(key, "setting", ALICE))
        self.assertEqual(len(blind_index(key, "uid", ALICE)), 32)

    def test_message_state_validated(self) -> None:
        """When a message has a state of the other direction, then InvalidInput is raised."""
        with self.assertRaises(InvalidInput):
            make_message(direction="in", state="delivered")
        with self.assertRaises(InvalidInput):
            make_message(direction="sideways")


class MessageIdTests(SynchronousTestCase):
    """:func:`jarvis.store.records.new_message_id`."""

    def test_shape(self) -> None:
        """When an id is made, then it is 32 lowercase hex digits (16 bytes on the wire)."""
        mid = new_message_id(1_700_000_000.123)
        self.assertRegex(mid, r"\A[0-9a-f]{32}\Z")
        self.assertEqual(len(bytes.fromhex(mid)), 16)

    def test_time_first(self) -> None:
        """When ids are made at later times, then they sort after the earlier ones, and the
        first 6 bytes are the milliseconds given."""
        times = [1_700_000_000.0 + step * 0.001 for step in range(0, 5000, 7)]
        ids = [new_message_id(at) for at in times]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(int(ids[0][:12], 16), 1_700_000_000_000)

    def test_same_millisecond_distinct(self) -> None:
        """When many ids are made in the same millisecond, then they are all different."""
        ids = {new_message_id(1_700_000_000.0) for _ in range(10_000)}
        self.assertEqual(len(ids), 10_000)


class OutboxPageTests(StoreTestCase):
    """Reading the outbox a page at a time, and marking it delivered up to a message."""

    async def test_pages_bounded_by_count_and_bytes(self) -> None:
        """When the outbox is read in pages, then a page stops at its count or before its
        bytes (one message at least), says whether more follow, and the pages together are the
        outbox in order."""
        store = await self.open_store()
        added = [
            await store.run(queries.add_outgoing, make_message(body="x" * 1000), write=True)
            for _ in range(10)
        ]
        await store.run(queries.add_outgoing, make_message(BOB), write=True)
        first, more = await store.run(
            queries.outbox_page, ALICE, after_seq=0, limit=4, max_bytes=10**6, write=False
        )
        self.assertEqual((first, more), (added[:4], True))
        second, more = await store.run(
            queries.outbox_page, ALICE, after_seq=4, limit=10, max_bytes=2500, write=False
        )
        self.assertEqual((len(second), more), (2, True))
        tiny, more = await store.run(
            queries.outbox_page, ALICE, after_seq=6, limit=10, max_bytes=1, write=False
        )
        self.assertEqual((tiny, more), (added[6:7], True))
        rest, more = await store.run(
            queries.outbox_page, ALICE, after_seq=7, limit=10, max_bytes=10**6, write=False
        )
        self.assertEqual((rest, more), (added[7:], False))
        self.assertEqual(first + second + tiny + rest, added)

    async def test_deliver_through(self) -> None:
        """When the outbox is marked delivered through a message, then exactly the messages up
        to it in that conversation leave the outbox (in order); an id that is not an outgoing
        message to that contact changes nothing."""
        store = await self.open_store()
        added = [
            await store.run(queries.add_outgoing, make_message(), write=True) for _ in range(5)
        ]
        other = await store.run(queries.add_outgoing, make_message(BOB), write=True)
        incoming = await store.run(queries.add_incoming, make_message(direction="in"), write=True)
        assert incoming is not None
        self.assertEqual(
            await store.run(queries.deliver_through, ALICE, other.id, 1.0, write=True), []
        )
        self.assertEqual(
            await store.run(queries.deliver_through, ALICE, incoming.id, 1.0, write=True), []
        )
        changed = await store.run(queries.deliver_through, ALICE, added[2].id, 2.0, write=True)
        self.assertEqual(changed, [(m.id, ALICE, "delivered") for m in added[:3]])
        self.assertEqual(await store.run(queries.outbox, ALICE, write=False), added[3:])
        self.assertEqual(await store.run(queries.outbox, BOB, write=False), [other])
        self.assertEqual(
            (await store.run(queries.get_message, added[0].id, write=False)).delivered, 2.0
        )  # type: ignore[union-attr]
        self.assertEqual(
            await store.run(queries.deliver_through, ALICE, added[2].id, 3.0, write=True), []
        )


class CopyUncheckedTests(StoreTestCase):
    def test_copy_changes_only_the_given_fields(self) -> None:
        """When a stored message is copied with a new seq and state, then the copy equals
        ``dataclasses.replace``'s, the original is unchanged, and both stay frozen."""
        message = make_message()
        copy = copy_unchecked(message, seq=7, state="sent")
        self.assertEqual(copy, dataclasses.replace(message, seq=7, state="sent"))
        self.assertEqual((message.seq, message.state), (0, "queued"))
        with self.assertRaises(dataclasses.FrozenInstanceError):
            copy.seq = 8  # type: ignore[misc]


def group_entry_body(index: int) -> str:
    """The 1:1 body of a group entry carrying a 400-byte payload (as ``encode_body`` makes)."""
    from jarvis.protocol.group_fanout import encode_body

    return encode_body(bytes([1]) + index.to_bytes(4, "big") * 100).decode("ascii")


#: What an acknowledged group entry's body becomes: the group marker, no payload.
GROUP_ENTRY_DONE = "\x00jarvis-group\x00"


def outgoing_body_bytes(path: str) -> int:
    """Bytes of sealed bodies the outgoing rows of the database at *path* hold."""
    conn = sqlite3.connect(path)
    try:
        (total,) = conn.execute(
            "SELECT coalesce(sum(length(body)), 0) FROM messages WHERE direction = 'out'"
        ).fetchone()
    finally:
        conn.close()
    return int(total)


def used_bytes(path: str) -> int:
    """Bytes of the pages in use (``page_count - freelist_count``) of the database at *path*."""
    conn = sqlite3.connect(path)
    try:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    return int((pages - free) * size)


class GroupEntryCompactionTests(StoreTestCase):
    """Acknowledged group entries keep their delivery detail but not their payload (issue 17)."""

    MEMBERS = [c * 52 for c in "bcdefghi"]  # the 8 other members of a 9-member group

    async def write_group_messages(self, store: Store, count: int) -> list[str]:
        """Store *count* group messages, one entry per member sharing the message's id."""
        ids = []
        for index in range(count):
            mid = new_message_id(time.time())
            body = group_entry_body(index)
            await gatherResults(
                [
                    store.run(
                        queries.add_outgoing, make_message(uid, id=mid, body=body), write=True
                    )
                    for uid in self.MEMBERS
                ]
            )
            ids.append(mid)
        return ids

    async def test_acknowledged_entries_drop_their_payload(self) -> None:
        """When 50 group messages to 8 members are stored and every member acknowledges its
        entries, then the outgoing bodies no longer grow by 8 payloads per message (less than
        one payload each), while every row, its state and the "delivered to" detail survive,
        and a chat message delivered in the same acknowledgement keeps its text."""
        from jarvis.store import group_queries

        store = await self.open_store()
        chat = await store.run(queries.add_outgoing, make_message(BOB, body="hi"), write=True)
        ids = await self.write_group_messages(store, 50)
        payload = len(group_entry_body(0))
        before = outgoing_body_bytes(self.path)
        self.assertGreater(before, 50 * 8 * payload)  # every entry holds its payload
        for uid in self.MEMBERS:
            acked = [*ids, chat.id] if uid == BOB else ids
            changed = await store.run(
                queries.advance_states,
                acked,
                "delivered",
                5.0,
                uids=[uid] * len(acked),
                write=True,
            )
            self.assertEqual(len(changed), len(acked))
        after = outgoing_body_bytes(self.path)
        self.assertLess(after, 50 * payload)  # per message: less than one payload, not eight
        delivered = await store.run(group_queries.delivered_to, ids, write=False)
        self.assertEqual(
            {mid: sorted(uids) for mid, uids in delivered.items()},
            {mid: self.MEMBERS for mid in ids},
        )
        entry = await store.run(queries.get_message, ids[0], write=False)
        assert entry is not None
        self.assertEqual(
            (entry.state, entry.delivered, entry.body), ("delivered", 5.0, GROUP_ENTRY_DONE)
        )
        kept = await store.run(queries.get_message, chat.id, write=False)
        assert kept is not None
        self.assertEqual((kept.state, kept.body), ("delivered", "hi"))

    async def test_unacknowledged_entries_keep_their_payload(self) -> None:
        """When one member acknowledges and another's entry is only sent, then the sent entry
        still holds its whole payload (it may be written again) and stays in the outbox."""
        store = await self.open_store()
        [mid] = await self.write_group_messages(store, 1)
        first, second = self.MEMBERS[:2]
        await store.run(
            queries.advance_states, [mid, mid], "sent", 1.0, uids=[first, second], write=True
        )
        await store.run(queries.advance_states, [mid], "delivered", 2.0, uids=[first], write=True)
        [waiting] = await store.run(queries.outbox, second, write=False)
        self.assertEqual(waiting.body, group_entry_body(0))

    async def test_resume_and_read_compact_too(self) -> None:
        """When a member's Resume marks its entries delivered (``deliver_through``) and another
        member's entry goes straight to read, then both lose their payload; an incoming chat
        message read in the same batch is untouched."""
        store = await self.open_store()
        ids = await self.write_group_messages(store, 3)
        first, second = self.MEMBERS[:2]
        changed = await store.run(queries.deliver_through, first, ids[2], 3.0, write=True)
        self.assertEqual([mid for mid, _, _ in changed], ids)
        incoming = await store.run(queries.add_incoming, make_message(second, "in"), write=True)
        assert incoming is not None
        await store.run(
            queries.advance_states,
            [ids[0], incoming.id],
            "read",
            4.0,
            uids=[second, second],
            write=True,
        )
        page = await store.run(queries.history, first, limit=10, write=False)
        self.assertEqual([m.body for m in page.messages], [GROUP_ENTRY_DONE] * 3)
        page = await store.run(queries.history, second, limit=10, write=False)
        bodies = {m.id: m.body for m in page.messages}
        self.assertEqual(bodies[ids[0]], GROUP_ENTRY_DONE)
        self.assertEqual(bodies[ids[1]], group_entry_body(1))
        self.assertEqual(bodies[incoming.id], "hello")

    async def test_pages_of_acknowledged_entries_are_reused(self) -> None:
        """When 200 group messages to 8 members are written 20 at a time and each batch is
        acknowledged before the next, then the database's pages in use grow by less than the 8
        payloads per message the entries held before their acknowledgement (the emptied
        pages are reused, not only the bytes inside them freed)."""
        store = await self.open_store()
        payload = len(group_entry_body(0))
        await self.write_group_messages(store, 20)  # the table's first pages
        before = used_bytes(self.path)
        for _ in range(10):
            ids = await self.write_group_messages(store, 20)
            for uid in self.MEMBERS:
                await store.run(
                    queries.advance_states,
                    ids,
                    "delivered",
                    5.0,
                    uids=[uid] * len(ids),
                    write=True,
                )
        growth = (used_bytes(self.path) - before) / 200
        self.assertLess(growth, 8 * payload)
