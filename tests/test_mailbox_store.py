"""Tests for jarvis.mailbox.store's SQLite store on its own thread: group commit, the
savepoint-free fast path and its fallback, and the database thread's figures."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from jarvis.mailbox.store import SQLiteMailboxStore


class Boom(Exception):
    """The failure of the test's failing operation."""


def make_store(test: unittest.TestCase) -> SQLiteMailboxStore:
    """Return a threaded store on a new file, not started, closed after the test."""
    from twisted.internet import reactor

    directory = test.mktemp()
    os.makedirs(directory)
    store = SQLiteMailboxStore(os.path.join(directory, "mailbox.sqlite"), reactor.callFromThread)
    test.addCleanup(store.close)
    return store


def ids(n: int) -> tuple[bytes, bytes]:
    """A recipient id and a sender id made from *n* (distinct for distinct *n*)."""
    return bytes([1, n]) * 12, bytes([2, n]) * 12


def create(store: SQLiteMailboxStore, n: int) -> defer.Deferred[None]:
    rid, sid = ids(n)
    return store.create_queue(rid, sid, b"r" * 32, b"s" * 32, 1_800_000_000)


class GroupCommitTests(unittest.TestCase):
    """Operations waiting together are committed together."""

    async def test_batch_without_failure_runs_without_savepoints(self) -> None:
        """When a batch of operations all succeed, then they share one transaction and one
        commit and no savepoint statement is run (two statements per operation saved)."""
        store = make_store(self)
        statements: list[str] = []

        def trace(cur: sqlite3.Cursor) -> None:
            cur.connection.set_trace_callback(statements.append)

        # queued before the thread starts, so the thread takes them as one batch
        waiting = [store.run(trace)] + [create(store, n) for n in range(5)]
        store.start()
        await defer.gatherResults(waiting)
        self.assertEqual((store.batches, store.operations), (1, 6))
        self.assertEqual([s for s in statements if "SAVEPOINT" in s.upper()], [])
        self.assertEqual(sum(1 for s in statements if s.upper() == "COMMIT"), 1)
        figures = await store.figures()
        self.assertEqual(figures["queues"], 5)

    async def test_failing_operation_does_not_undo_the_others(self) -> None:
        """When one operation of a batch writes and then raises, then its Deferred fails with
        its error, its write is undone, and the others of the same batch still commit."""
        store = make_store(self)

        def half_then_fail(cur: sqlite3.Cursor) -> Any:
            rid, sid = ids(99)
            cur.execute(
                "INSERT INTO queues (recipient_id, sender_id, recipient_key, sender_key, "
                "created) VALUES (?, ?, ?, ?, ?)",
                (rid, sid, b"r" * 32, b"s" * 32, 0),
            )
            raise Boom()

        first = create(store, 1)
        failing = store.run(half_then_fail)
        last = create(store, 2)
        store.start()
        await first
        await last
        failure = await defer.Deferred.fromCoroutine(self._failure_of(failing))
        self.assertIsInstance(failure, Boom)
        self.assertEqual(store.batches, 1)
        self.assertIsNotNone(await store.recipient_key(ids(1)[0]))
        self.assertIsNotNone(await store.recipient_key(ids(2)[0]))
        self.assertIsNone(await store.recipient_key(ids(99)[0]))
        self.assertEqual((await store.figures())["queues"], 2)

    async def _failure_of(self, d: defer.Deferred[Any]) -> BaseException | None:
        try:
            await d
        except Exception as e:
            return e
        return None

    async def test_figures_report_the_database_thread(self) -> None:
        """When operations ran, then the figures count batches and operations and the
        thread's time running and committing them."""
        store = make_store(self)
        store.start()
        for n in range(3):
            await create(store, n)
        figures = await store.figures()
        # the figures call is itself the fourth operation, counted as it is delivered
        self.assertEqual((figures["db_batches"], figures["db_operations"]), (4, 4))
        self.assertGreaterEqual(figures["db_run_ms"], 0)
        self.assertGreaterEqual(figures["db_commit_ms"], 0)
        self.assertGreater(store.run_seconds + store.commit_seconds, 0.0)
