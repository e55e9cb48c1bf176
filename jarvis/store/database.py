"""The daemon's encrypted, crash-safe SQLite database: the queue in front of its thread.

:class:`Store` is the reactor-side face.  Its one entry point, :meth:`Store.run`, takes a query
(a plain function of :mod:`jarvis.store.queries`), only queues it and returns a Deferred.  All
SQLite calls, and the sealing and opening of rows, run on one dedicated thread (a
:class:`~twisted.python.threadpool.ThreadPool` of exactly one worker, started and stopped with
the store) that owns the one connection, :class:`~jarvis.store.rows.Rows`.  Operations issued
during the same reactor turn are flushed to that thread together and run in ONE transaction
(run again with a savepoint per write if one fails, so one failing operation does not fail its
neighbours); consecutive :func:`~jarvis.store.queries.add_outgoing` calls are written with one
statement per table.  Every caller's Deferred fires after the COMMIT returned, so a fired
Deferred means "stored".  Results are delivered :data:`DELIVERY_CHUNK` per reactor turn, in
issue order.

What says something about the user is sealed with the injected row cipher, with associated data
that names the row (table, column, row key), so a ciphertext moved to another row fails to open:
message bodies, contact profiles (uid, name, alias, addresses, public key), the uid behind each
conversation, setting names and values.  Contacts, conversations and settings are looked up by
an HMAC-SHA256 blind index under ``index_key``.  Ids, states, timestamps and counters are clear.

This module must not import the global reactor (it is passed in), must never run SQLite or the
cipher on the reactor thread, and must never log plaintext or keys.
"""

from __future__ import annotations

import collections
import errno
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from jarvis.common.errors import StorageFull
from jarvis.store import queries, schema
from jarvis.store.rows import (
    DUMP_FORMAT,
    DUMP_VERSION,
    CorruptRow,
    CorruptStore,
    DuplicateMessage,
    Rows,
    RowSealer,
    StoreClosed,
    StoreNotEmpty,
    WrongStoreKey,
    associated_data,
    blind_index,
)

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DELIVERY_CHUNK",
    "DUMP_FORMAT",
    "DUMP_VERSION",
    "CorruptRow",
    "CorruptStore",
    "DuplicateMessage",
    "RowSealer",
    "Rows",
    "Store",
    "StoreClosed",
    "StoreNotEmpty",
    "WrongStoreKey",
    "associated_data",
    "blind_index",
    "storage_error",
]

_T = TypeVar("_T")


#: At most this many queued operations go into one transaction.
DEFAULT_MAX_BATCH = 1000


#: At most this many callers' Deferreds fire in one reactor turn after a commit; the rest
#: follow in the next turns (firing a thousand at once stalls the reactor for tens of ms).
DELIVERY_CHUNK = 100


class _WriteFailed(Exception):
    """A write of a batch run without savepoints failed: run the batch again with them."""


class _Failed:
    """The result of an operation of a batch that raised *error* (other results are bare)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


#: One queued operation: the :class:`Rows` method, its arguments, whether it writes, and the
#: caller's Deferred (which only the reactor thread touches).
_Op = tuple[Callable[..., Any], tuple[Any, ...], bool, Any]


def storage_error(error: BaseException) -> BaseException:
    """Return :class:`~jarvis.common.errors.StorageFull` for a disk-full *error*, else *error*
    itself.

    SQLite reports a full disk (or a database at its page limit) as ``SQLITE_FULL``
    ("database or disk is full"); a write of the operating system as ``ENOSPC``.  Both become one
    user-facing error that says what to do, instead of an internal error.
    """
    if isinstance(error, StorageFull):
        return error
    full = False
    if isinstance(error, sqlite3.Error):
        full = getattr(error, "sqlite_errorname", "") == "SQLITE_FULL" or (
            "database or disk is full" in str(error)
        )
    elif isinstance(error, OSError):
        full = error.errno == errno.ENOSPC
    if not full:
        return error
    replacement = StorageFull(
        "disk full: the message store cannot be written; free space on the data directory's "
        "disk and retry"
    )
    replacement.__cause__ = error
    return replacement


def _run_batch(rows: Rows, ops: Sequence[_Op]) -> list[Any]:
    """Run *ops* in one transaction; a failing write leaves the others of the batch alone.

    The batch first runs without savepoints (two statements less per operation).  If a
    write fails, that transaction is rolled back and the batch runs again with each write
    in its own savepoint, so only the failing write is undone.

    :param ops: ``(method, args, writes, deferred)``; the Deferred is not touched here.
    :returns: per op its value, or a :class:`_Failed` holding its exception, after the
        COMMIT (no tuple per op: fewer objects for the garbage collector).
    :raises Exception: if the transaction itself fails (then nothing was written).
    """
    writes = any(op[2] for op in ops)
    try:
        results = _attempt(rows, ops, writes, isolate=False)
    except _WriteFailed:
        results = _attempt(rows, ops, writes, isolate=True)
    if writes:
        rows.transactions += 1
    return results


def _attempt(
    rows: Rows,
    ops: Sequence[_Op],
    writes: bool,
    isolate: bool,
) -> list[Any]:
    conn = rows.conn
    results: list[Any] = []
    conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
    try:
        if isolate:
            for method, args, write, _ in ops:
                results.append(_run_isolated(rows, method, args, write))
        else:
            _run_unisolated(rows, ops, results)
            rows.write_conversations()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        rows.forget_transaction()
        raise
    return results


def _run_unisolated(
    rows: Rows,
    ops: Sequence[_Op],
    results: list[Any],
) -> None:
    """Run *ops* without savepoints; a failing write raises :class:`_WriteFailed`.

    Consecutive :func:`queries.add_outgoing` operations go in with one ``executemany`` per table.
    """

    add_outgoing = queries.add_outgoing
    add_incoming = queries.add_incoming
    i, count = 0, len(ops)
    while i < count:
        method, args, write, _ = ops[i]
        if method is add_outgoing:
            j = i + 1
            while j < count and ops[j][0] is add_outgoing:
                j += 1
            try:
                values = rows.add_outgoing_many([op[1][0] for op in ops[i:j]])
            except Exception as exc:
                raise _WriteFailed() from exc
            results.extend(values)
            i = j
            continue
        if method is not add_incoming:
            # Anything else may read the conversations rows: bring them up to date.
            rows.write_conversations()
        try:
            value = method(rows, *args)
        except Exception as exc:
            if write:
                raise _WriteFailed() from exc
            results.append(_Failed(exc))
        else:
            results.append(value)
        i += 1


def _run_isolated(
    rows: Rows, method: Callable[..., Any], args: tuple[Any, ...], write: bool
) -> Any:
    """Run one operation, a write in its own savepoint (undone alone if it fails)."""
    conn = rows.conn
    if not write:
        try:
            return method(rows, *args)
        except Exception as exc:
            return _Failed(exc)
    conn.execute("SAVEPOINT op")
    try:
        value = method(rows, *args)
        rows.write_conversations()
    except Exception as exc:
        if not conn.in_transaction:
            # SQLite rolled the whole transaction back itself (it does on SQLITE_FULL, a
            # full disk): the batch's other writes are gone too, so the batch fails.
            raise
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        rows.forget_transaction()
        return _Failed(exc)
    conn.execute("RELEASE op")
    return value


class Store:
    """The encrypted message store; every method returns a Deferred (see the module docstring).

    Do not construct it directly: use :meth:`Store.open`, and :meth:`close` it when the
    identity is locked.
    """

    log = Logger()

    def __init__(self, reactor: Any, pool: ThreadPool, rows: Rows, max_batch: int) -> None:
        """Use :meth:`Store.open`."""
        self._reactor = reactor
        self._pool = pool
        self._rows = rows
        self._max_batch = max_batch
        self._pending: list[_Op] = []
        self._flush_scheduled = False
        self._in_flight = False
        # (batch, its results or the Failure of its transaction) of committed batches, fired
        # in order, DELIVERY_CHUNK per turn; the first _delivered ops of the head are done.
        self._deliveries: collections.deque[tuple[list[_Op], Any]] = collections.deque()
        self._delivered = 0
        self._delivery_scheduled = False
        self._closed = False
        self._idle_waiters: list[Deferred[None]] = []
        self._close_waiters: list[Deferred[None]] | None = None
        self._shut = False
        self._shutdown_trigger = reactor.addSystemEventTrigger("before", "shutdown", self.close)

    @classmethod
    def open(
        cls,
        path: str,
        *,
        reactor: Any,
        cipher: RowSealer,
        index_key: bytes,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> Deferred[Store]:
        """Open the database at *path*, creating and migrating it as needed.

        :param path: the database file (in the data directory; created 0600).
        :param reactor: the reactor (``IReactorCore``, ``IReactorThreads``, ``IReactorTime``).
        :param cipher: seals and opens rows (:class:`jarvis.crypto.aead.RowCipher`).
        :param index_key: the 32-byte HMAC key of the blind indexes.
        :param max_batch: the most operations one transaction takes.
        :returns: a Deferred firing with the open :class:`Store`; it fails with
            :class:`WrongStoreKey` if the database was made under other keys,
            :class:`~jarvis.store.schema.SchemaTooNew` if a newer Jarvis wrote it, or
            :class:`CorruptStore` if it is not a readable SQLite database.
        """
        if not isinstance(index_key, bytes) or len(index_key) != 32:
            return fail(ValueError("the store's index key is 32 bytes"))
        pool = ThreadPool(1, 1, name="jarvis-store")
        pool.start()
        rows = Rows(path, cipher, index_key)
        d = deferToThreadPool(reactor, pool, rows.connect)

        def opened(found: int) -> Store:
            cls.log.info(
                "store opened: {path} (schema {found} -> {version})",
                path=path,
                found=found,
                version=schema.SCHEMA_VERSION,
            )
            return cls(reactor, pool, rows, max_batch)

        def failed(failure: Failure) -> Failure:
            pool.stop()
            return failure

        return d.addCallbacks(opened, failed)

    # -- the queue --------------------------------------------------------------------------

    def run(self, fn: Callable[..., _T], *args: Any, write: bool, **kwargs: Any) -> Deferred[_T]:
        """Run the query *fn* (a function of :mod:`jarvis.store.queries`) on the store's thread.

        ``fn(rows, *args, **kwargs)`` runs in the transaction of this reactor turn's batch (see
        the module docstring); the Deferred fires with its value after the COMMIT, or with its
        exception (a failing write is undone alone).

        :param write: whether *fn* writes (it then runs in a write transaction, in its own
            savepoint if a neighbour fails).
        :returns: a Deferred firing with what *fn* returned; it fails with
            :class:`StoreClosed` once the store is closed.
        """
        if kwargs:
            call, keywords = fn, kwargs

            def fn(rows: Any, *args: Any) -> Any:
                return call(rows, *args, **keywords)

        if self._closed:
            return fail(StoreClosed())
        d: Deferred[Any] = Deferred()
        self._pending.append((fn, args, write, d))
        if not self._flush_scheduled and not self._in_flight:
            self._flush_scheduled = True
            self._reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._in_flight or not self._pending:
            return
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._in_flight = True
        d = deferToThreadPool(self._reactor, self._pool, _run_batch, self._rows, batch)
        d.addBoth(self._batch_done, batch)

    def _batch_done(self, result: Any, batch: list[_Op]) -> None:
        self._in_flight = False
        if isinstance(result, Failure):
            translated = storage_error(result.value) if result.value is not None else None
            if translated is not None and translated is not result.value:
                result = Failure(translated)
            if isinstance(translated, StorageFull):
                # An operating condition, not a bug: no traceback (the callers get the error).
                self.log.warn(
                    "store transaction of {count} operations failed: disk full", count=len(batch)
                )
            else:
                self.log.failure(
                    "store transaction of {count} operations failed", result, count=len(batch)
                )
        self._deliveries.append((batch, result))
        # The thread starts on what queued up meanwhile while this turn fires the Deferreds.
        self._flush()
        if not self._delivery_scheduled:
            self._deliver()

    def _deliver(self) -> None:
        """Fire the next :data:`DELIVERY_CHUNK` Deferreds of committed batches, in order."""
        self._delivery_scheduled = False
        deliveries = self._deliveries
        budget = DELIVERY_CHUNK
        while deliveries and budget:
            batch, results = deliveries[0]
            start = self._delivered
            stop = min(len(batch), start + budget)
            budget -= stop - start
            if stop == len(batch):
                deliveries.popleft()
                self._delivered = 0
            else:
                self._delivered = stop
            if isinstance(results, Failure):
                for i in range(start, stop):
                    batch[i][3].errback(results)
                continue
            for i in range(start, stop):
                value = results[i]
                if type(value) is _Failed:
                    batch[i][3].errback(Failure(storage_error(value.error)))
                else:
                    batch[i][3].callback(value)
        if deliveries:
            if not self._delivery_scheduled:
                self._delivery_scheduled = True
                self._reactor.callLater(0, self._deliver)
        elif not self._in_flight and not self._pending:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def pool_stats(self) -> dict[str, int]:
        """Return the figures of the store's thread for the daemon status (synchronous).

        :returns: ``size`` (threads, always 1), ``busy`` (threads working), ``queued``
            (operations waiting for the thread) and ``transactions`` (write transactions
            committed since the store opened).
        """
        queued = len(self._pending) + self._pool.q.qsize()
        return {
            "size": self._pool.max,
            "busy": len(self._pool.working),
            "queued": queued,
            "transactions": self._rows.transactions,
        }

    def close(self) -> Deferred[None]:
        """Finish the queued operations, close the connection and stop the thread.

        Operations issued after this call fail with :class:`StoreClosed`.  Idempotent.

        :returns: a Deferred firing once the database file is closed.
        """
        done: Deferred[None] = Deferred()
        if self._close_waiters is not None:
            if self._shut:
                done.callback(None)  # already closed
            else:
                self._close_waiters.append(done)
            return done
        self._close_waiters = [done]
        self._closed = True
        try:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
        except (ValueError, KeyError):
            pass  # we are that trigger, running now
        idle: Deferred[None] = Deferred()
        if self._in_flight or self._pending or self._deliveries:
            self._idle_waiters.append(idle)
        else:
            idle.callback(None)
        idle.addCallback(lambda _: deferToThreadPool(self._reactor, self._pool, self._rows.close))

        def stopped(result: Any) -> None:
            self._pool.stop()
            self._shut = True
            self.log.info("store closed")
            waiters, self._close_waiters = self._close_waiters or [], []
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)

        idle.addBoth(stopped)
        return done
