"""The daemon's encrypted, crash-safe SQLite database and its thread.

:class:`Store` is the reactor-side face: every public method returns a Deferred and only queues
work.  All SQLite calls, and the sealing and opening of rows, run on one dedicated thread (a
:class:`~twisted.python.threadpool.ThreadPool` of exactly one worker, started and stopped with
the store) that owns the one connection, :class:`_Rows`.  Operations issued during the same
reactor turn are flushed to that thread together and run in ONE transaction (run again with a
savepoint per write if one fails, so one failing operation does not fail its neighbours); every
caller's Deferred fires after the COMMIT returned, so a fired Deferred means "stored".  Results
are delivered :data:`DELIVERY_CHUNK` per reactor turn, in issue order.

What says something about the user is sealed with the injected row cipher, with associated data
that names the row (table, column, row key), so a ciphertext moved to another row fails to open:
message bodies, contact profiles (uid, name, alias, addresses, public key), the uid behind each
conversation, setting names and values.  Contacts, conversations and settings are looked up by
an HMAC-SHA256 blind index under ``index_key``.  Ids, states, timestamps and counters are clear.

This module must not import the global reactor (it is passed in), must never run SQLite or the
cipher on the reactor thread, and must never log plaintext or keys.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import errno
import hashlib
import hmac
import itertools
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from jarvis.errors import InvalidInput, JarvisError, Locked, NotFound, StorageFull
from jarvis.store import schema
from jarvis.store.records import (
    Contact,
    HistoryPage,
    StoredMessage,
    copy_unchecked,
    states_for,
)
from jarvis.store.schema import OUTBOX_WHERE

#: At most this many queued operations go into one transaction.
DEFAULT_MAX_BATCH = 1000
#: At most this many callers' Deferreds fire in one reactor turn after a commit; the rest
#: follow in the next turns (firing a thousand at once stalls the reactor for tens of ms).
DELIVERY_CHUNK = 100
#: Format name and version written by :meth:`Store.dump`.
DUMP_FORMAT = "jarvis-store-dump"
DUMP_VERSION = 1

_AD_DOMAIN = b"jarvis-store/1"
#: How many uid -> blind index results the store's thread keeps.
_INDEX_CACHE = 4096


class _WriteFailed(Exception):
    """A write of a batch run without savepoints failed: run the batch again with them."""


class _Failed:
    """The result of an operation of a batch that raised *error* (other results are bare)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


#: One queued operation: the :class:`_Rows` method, its arguments, whether it writes, and the
#: caller's Deferred (which only the reactor thread touches).
_Op = tuple[Callable[..., Any], tuple[Any, ...], bool, Any]


class RowSealer(Protocol):
    """What the store needs of a row cipher (:class:`jarvis.crypto.aead.RowCipher`)."""

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt and authenticate *plaintext*, binding *associated_data*."""
        ...

    def open(self, blob: bytes, associated_data: bytes) -> bytes:
        """Check and decrypt *blob*; raise if it or *associated_data* does not match."""
        ...


class StoreClosed(Locked):
    """The message store is closed, most likely because the identity was locked.

    Unlock the identity again (``jarvis unlock``) and retry; nothing was written.
    """

    kind = "locked"

    def __init__(self) -> None:
        super().__init__("the message store is closed (the identity is locked): unlock and retry")


class CorruptStore(JarvisError):
    """The message database is damaged or is not a Jarvis database.

    Restore the data directory from a backup, or import an account export into a new data
    directory.  ``PRAGMA integrity_check`` (``Store.integrity_check()``) says more.
    """

    kind = "corrupt_store"


class CorruptRow(CorruptStore):
    """A row of the message database failed its integrity check and cannot be read.

    It was modified on disk, copied from another row or written under another key.  Nothing in
    it can be trusted.  Other rows are unaffected; restore from a backup or an export if this
    repeats.
    """

    def __init__(self, table: str, column: str, row: str, cause: BaseException | None) -> None:
        reason = f" ({type(cause).__name__})" if cause is not None else ""
        super().__init__(
            f"the {column} of {row} in the store's {table} table failed its integrity "
            f"check{reason}: it was altered, moved from another row or sealed under another key"
        )
        self.table = table
        self.column = column
        self.row = row


class WrongStoreKey(JarvisError):
    """The message database was encrypted under another data key than the one given.

    The key file and the database in the data directory do not belong together (a database
    copied from another installation, or a key file restored from an older backup).  Put back
    the matching key file, or move the database away and import an export.
    """

    kind = "wrong_store_key"


class StoreNotEmpty(JarvisError):
    """An export can only be loaded into an empty message store.

    Import the export into a new data directory (``--data-dir``), or remove the existing data
    directory first if it is no longer needed.
    """

    kind = "store_not_empty"


class DuplicateMessage(JarvisError):
    """A message with this id is already stored for this contact.

    Message ids are 16 random bytes chosen when the message is written; a repeat means the same
    message was submitted twice.  Nothing was written.
    """

    kind = "duplicate"


def storage_error(error: BaseException) -> BaseException:
    """Return :class:`~jarvis.errors.StorageFull` for a disk-full *error*, else *error* itself.

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


def associated_data(table: str, column: str, *key: bytes) -> bytes:
    """Return the associated data that binds a sealed value to its place in the database.

    Length-prefixed parts, so no two different places give the same bytes.

    :param table: the table name.
    :param column: the column name.
    :param key: the parts of the row key (blind index, message id...).
    """
    parts = (_AD_DOMAIN, table.encode(), column.encode(), *key)
    return b"".join(len(part).to_bytes(2, "big") + part for part in parts)


def blind_index(index_key: bytes, kind: str, value: str) -> bytes:
    """Return the HMAC-SHA256 blind index of *value* (a uid, a setting name) under *index_key*.

    :param index_key: the 32-byte index key.
    :param kind: what *value* is (``"uid"``, ``"setting"``); different kinds never collide.
    :param value: the plaintext to index.
    """
    data = kind.encode() + b"\x00" + value.encode()
    return hmac.new(index_key, data, hashlib.sha256).digest()


def _contact_to_json(contact: Contact) -> dict[str, Any]:
    out = dataclasses.asdict(contact)
    out["public_key"] = base64.b64encode(contact.public_key).decode("ascii")
    out["addresses"] = list(contact.addresses)
    return out


def _contact_from_json(data: Any) -> Contact:
    try:
        fields = dict(data)
        fields["public_key"] = base64.b64decode(fields["public_key"], validate=True)
        fields["addresses"] = tuple(str(a) for a in fields["addresses"])
        return Contact(**fields)
    except (TypeError, KeyError, ValueError) as exc:
        raise InvalidInput(f"a contact in the dump is malformed ({type(exc).__name__})")


def _message_from_json(data: Any) -> StoredMessage:
    try:
        message = StoredMessage(**dict(data))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"a message in the dump is malformed ({type(exc).__name__})")
    if not isinstance(message.seq, int) or message.seq < 1:
        raise InvalidInput(f"message {message.id} in the dump has no valid seq")
    return message


_T = TypeVar("_T")

_MESSAGE_COLUMNS = "conversation, seq, id, direction, state, created, sent, delivered, read, body"
#: Rows per multi-row INSERT (10 parameters each) and ids per multi-id UPDATE: well under the
#: 32,766 parameters SQLite allows in one statement.
_PER_STATEMENT = 500
#: The multi-row INSERT statements made so far, by row count.
_MULTI_INSERT: dict[int, str] = {}
_CONTACT_COLUMNS = "uid_index, profile, verified, blocked, muted, read_receipts, added_at"
_TIME_COLUMN = {"sent": "sent", "delivered": "delivered", "read": "read"}


_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")


def _history_bound(value: str | int | None) -> int | str | None:
    """Return a history bound as a seq (a cursor) or a message id, or None.

    A cursor is what :meth:`Store.history` returned (decimal digits, or an int); a message id is
    32 lowercase hex digits.

    :raises InvalidInput: for anything else.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if _MESSAGE_ID.fullmatch(value):
            return value
        if value.isascii() and value.isdigit() and len(value) < 20:
            return int(value)
    raise InvalidInput("the history cursor is neither a message id nor one this store returned")


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """*items* in slices of :data:`_PER_STATEMENT`, one statement's worth each."""
    for start in range(0, len(items), _PER_STATEMENT):
        yield items[start : start + _PER_STATEMENT]


def _advance_sql(state: str) -> str | None:
    """The UPDATE moving, per id of the ``ids`` CTE, the first row that may advance to *state*.

    The caller prefixes ``WITH ids(id) AS (VALUES (?), ...)``: one statement for a whole Ack
    (one GIL hand-off on the store's thread instead of one per id).  None: no row may advance.
    """
    clauses = []
    for direction in ("out", "in"):
        order = states_for(direction)
        if state not in order:
            continue
        below = order[: order.index(state)]
        if below:
            states = ", ".join(f"'{s}'" for s in below)
            clauses.append(f"(direction = '{direction}' AND state IN ({states}))")
    if not clauses:
        return None
    column = _TIME_COLUMN[state]
    return (
        f"UPDATE messages SET state = ?, {column} = ? WHERE rowid IN (SELECT ("
        f"SELECT rowid FROM messages WHERE id = ids.id AND ({' OR '.join(clauses)}) "
        "ORDER BY rowid LIMIT 1) FROM ids) RETURNING id, conversation"
    )


_ADVANCE_SQL: dict[str, str] = {
    state: sql
    for state in ("sent", "delivered", "read")
    if (sql := _advance_sql(state)) is not None
}


class _Rows:
    """The store's connection and everything done with it; used ONLY on the store's thread.

    Each public method here is one operation; :meth:`run_batch` runs a list of them in one
    transaction.
    """

    def __init__(self, path: str, cipher: RowSealer, index_key: bytes) -> None:
        self._path = path
        self._cipher = cipher
        self._index_key = index_key
        self._conn: sqlite3.Connection | None = None
        # conversation blind index -> uid, filled as rows are read or written.
        self._uids: dict[bytes, str] = {}
        # uid -> blind index (an HMAC per message adds up).
        self._indexes: dict[str, bytes] = {}
        # conversation -> next seq, as committed or as written in the open transaction;
        # cleared whenever anything is rolled back.
        self._next_seq: dict[bytes, int] = {}
        # conversation -> newest ``created`` appended in the open transaction whose
        # conversations row (next_seq, last_activity) is not updated yet: written once per
        # conversation by :meth:`_write_conversations`, not once per message.
        self._touched: dict[bytes, float] = {}
        # conversation -> associated data prefix of its message bodies (the id follows).
        self._body_ad: dict[bytes, bytes] = {}
        self.transactions = 0

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> int:
        """Open (creating if needed) and migrate the database; check the keys.

        :returns: the schema version found (0 for a new database).
        """
        # SQLite gives the -wal and -shm files the mode of the database file: create that
        # 0600 first (no process-wide umask change, which would race with other threads).
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        for suffix in ("", "-wal", "-shm"):
            try:
                os.chmod(self._path + suffix, 0o600)
            except FileNotFoundError:
                pass
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise CorruptStore(f"the database refused WAL mode (journal mode {mode})")
            # FULL: a commit is fsynced to the WAL before the Deferred fires, so an
            # acknowledged write survives power loss, not only a killed process.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("PRAGMA secure_delete=ON")
            found = schema.migrate(conn)
            self._conn = conn
            self._check_keys(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._conn = None
            raise CorruptStore(f"the message database cannot be opened: {exc}")
        except BaseException:
            conn.close()
            self._conn = None
            raise
        return found

    def _check_keys(self, conn: sqlite3.Connection) -> None:
        index_check = hmac.new(self._index_key, b"index check", hashlib.sha256).hexdigest()
        ad = associated_data("meta", "key_check")
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE '%_check'"))
        if "key_check" not in rows:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?), ('index_check', ?)",
                (self._cipher.seal(b"jarvis store key check", ad), index_check),
            )
            conn.execute("COMMIT")
            return
        try:
            self._cipher.open(rows["key_check"], ad)
        except Exception:
            raise WrongStoreKey("the message database belongs to another data key")
        if rows.get("index_check") != index_check:
            raise WrongStoreKey("the message database belongs to another index key")

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL when the last one closes)."""
        conn, self._conn = self._conn, None
        self._uids.clear()
        self._indexes.clear()
        self._body_ad.clear()
        self._forget_transaction()
        if conn is not None:
            conn.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosed()
        return self._conn

    def run_batch(self, ops: Sequence[_Op]) -> list[Any]:
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
            results = self._attempt(ops, writes, isolate=False)
        except _WriteFailed:
            results = self._attempt(ops, writes, isolate=True)
        if writes:
            self.transactions += 1
        return results

    def _attempt(
        self,
        ops: Sequence[_Op],
        writes: bool,
        isolate: bool,
    ) -> list[Any]:
        conn = self.conn
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
        try:
            if isolate:
                for method, args, write, _ in ops:
                    results.append(self._run_isolated(method, args, write))
            else:
                self._run_unisolated(ops, results)
                self._write_conversations()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._forget_transaction()
            raise
        return results

    def _run_unisolated(
        self,
        ops: Sequence[_Op],
        results: list[Any],
    ) -> None:
        """Run *ops* without savepoints; a failing write raises :class:`_WriteFailed`.

        Consecutive :meth:`add_outgoing` operations go in with one ``executemany`` per table.
        """
        add_outgoing = self.add_outgoing
        i, count = 0, len(ops)
        while i < count:
            method, args, write, _ = ops[i]
            if method == add_outgoing:
                j = i + 1
                while j < count and ops[j][0] == add_outgoing:
                    j += 1
                try:
                    values = self._add_outgoing_many([op[1][0] for op in ops[i:j]])
                except Exception as exc:
                    raise _WriteFailed() from exc
                results.extend(values)
                i = j
                continue
            if method != self.add_incoming:
                # Anything else may read the conversations rows: bring them up to date.
                self._write_conversations()
            try:
                value = method(*args)
            except Exception as exc:
                if write:
                    raise _WriteFailed() from exc
                results.append(_Failed(exc))
            else:
                results.append(value)
            i += 1

    def _run_isolated(self, method: Callable[..., Any], args: tuple[Any, ...], write: bool) -> Any:
        """Run one operation, a write in its own savepoint (undone alone if it fails)."""
        conn = self.conn
        if not write:
            try:
                return method(*args)
            except Exception as exc:
                return _Failed(exc)
        conn.execute("SAVEPOINT op")
        try:
            value = method(*args)
            self._write_conversations()
        except Exception as exc:
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back itself (it does on SQLITE_FULL, a
                # full disk): the batch's other writes are gone too, so the batch fails.
                raise
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            self._forget_transaction()
            return _Failed(exc)
        conn.execute("RELEASE op")
        return value

    def _forget_transaction(self) -> None:
        """Drop what is cached about uncommitted rows (after a rollback)."""
        self._next_seq.clear()
        self._touched.clear()

    def _write_conversations(self) -> None:
        """Write the next seq and last activity of the conversations appended to."""
        if not self._touched:
            return
        next_seq = self._next_seq
        self.conn.executemany(
            "UPDATE conversations SET next_seq = ?, "
            "last_activity = max(coalesce(last_activity, ?), ?) WHERE conversation = ?",
            [
                (next_seq[conversation], when, when, conversation)
                for conversation, when in self._touched.items()
            ],
        )
        self._touched.clear()

    # -- sealing ----------------------------------------------------------------------------

    def _seal(self, plaintext: bytes, table: str, column: str, *key: bytes) -> bytes:
        return self._cipher.seal(plaintext, associated_data(table, column, *key))

    def _open(self, blob: bytes, table: str, column: str, row: str, *key: bytes) -> bytes:
        try:
            return self._cipher.open(bytes(blob), associated_data(table, column, *key))
        except Exception as exc:
            raise CorruptRow(table, column, row, exc) from exc

    def _index(self, uid: str) -> bytes:
        index = self._indexes.get(uid)
        if index is None:
            if not isinstance(uid, str) or not uid:
                raise InvalidInput("a contact uid is a non-empty string")
            if len(self._indexes) >= _INDEX_CACHE:
                self._indexes.clear()
            index = self._indexes[uid] = blind_index(self._index_key, "uid", uid)
        return index

    # -- conversations ----------------------------------------------------------------------

    def _uid_of(self, conversation: bytes) -> str:
        uid = self._uids.get(conversation)
        if uid is None:
            row = self.conn.execute(
                "SELECT uid FROM conversations WHERE conversation = ?", (conversation,)
            ).fetchone()
            if row is None:
                raise CorruptStore("a message belongs to no conversation")
            uid = self._open(
                row[0], "conversations", "uid", "a conversation", conversation
            ).decode()
            self._uids[conversation] = uid
        return uid

    def _ensure_conversation(self, conversation: bytes, uid: str) -> int:
        """Create the conversation row if missing; return its next seq."""
        row = self.conn.execute(
            "SELECT next_seq FROM conversations WHERE conversation = ?", (conversation,)
        ).fetchone()
        if row is not None:
            return int(row[0])
        sealed = self._seal(uid.encode(), "conversations", "uid", conversation)
        self.conn.execute(
            "INSERT INTO conversations (conversation, uid, next_seq) VALUES (?, ?, 1)",
            (conversation, sealed),
        )
        self._uids[conversation] = uid
        return 1

    def _append(self, message: StoredMessage) -> int | None:
        """Store *message* as the next of its conversation.

        :returns: its seq, or None if its id is already stored for that conversation.
        """
        conversation = self._index(message.contact)
        seq = self._next_seq.get(conversation)
        if seq is None:
            seq = self._ensure_conversation(conversation, message.contact)
        try:
            self._insert_message(message, conversation, seq)
        except sqlite3.IntegrityError:
            if self._exists(conversation, message.id):
                return None
            raise
        self._appended(conversation, seq, message.created)
        return seq

    def _appended(self, conversation: bytes, seq: int, created: float) -> None:
        """Note that *seq* of *conversation* is taken (its row is written before COMMIT)."""
        self._next_seq[conversation] = seq + 1
        touched = self._touched
        when = touched.get(conversation)
        touched[conversation] = created if when is None or created > when else when

    def _seal_body(self, body: str, conversation: bytes, mid: str) -> bytes:
        """Seal a message body bound to its conversation and id (as :func:`associated_data`)."""
        prefix = self._body_ad.get(conversation)
        if prefix is None:
            if len(self._body_ad) >= _INDEX_CACHE:
                self._body_ad.clear()
            prefix = self._body_ad[conversation] = associated_data("messages", "body", conversation)
        key = mid.encode()
        return self._cipher.seal(body.encode(), prefix + len(key).to_bytes(2, "big") + key)

    # -- contacts ---------------------------------------------------------------------------

    def _contact_from_row(self, row: Sequence[Any]) -> Contact:
        uid_index, profile, verified, blocked, muted, read_receipts, added_at = row
        data = json.loads(self._open(profile, "contacts", "profile", "a contact", uid_index))
        return Contact(
            uid=data["uid"],
            public_key=base64.b64decode(data["public_key"]),
            name=data["name"],
            addresses=tuple(data["addresses"]),
            alias=data["alias"],
            verified=bool(verified),
            blocked=bool(blocked),
            muted=bool(muted),
            read_receipts=bool(read_receipts),
            added_at=float(added_at),
        )

    def put_contact(self, contact: Contact) -> None:
        uid_index = self._index(contact.uid)
        profile = json.dumps(
            {
                "uid": contact.uid,
                "public_key": base64.b64encode(bytes(contact.public_key)).decode("ascii"),
                "name": contact.name,
                "alias": contact.alias,
                "addresses": list(contact.addresses),
            }
        ).encode()
        self.conn.execute(
            f"INSERT OR REPLACE INTO contacts ({_CONTACT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                uid_index,
                self._seal(profile, "contacts", "profile", uid_index),
                int(contact.verified),
                int(contact.blocked),
                int(contact.muted),
                int(contact.read_receipts),
                float(contact.added_at),
            ),
        )

    def get_contact(self, uid: str) -> Contact | None:
        row = self.conn.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE uid_index = ?", (self._index(uid),)
        ).fetchone()
        return None if row is None else self._contact_from_row(row)

    def list_contacts(self) -> list[Contact]:
        rows = self.conn.execute(f"SELECT {_CONTACT_COLUMNS} FROM contacts").fetchall()
        contacts = [self._contact_from_row(row) for row in rows]
        contacts.sort(key=lambda c: ((c.alias or c.name).casefold(), c.uid))
        return contacts

    def remove_contact(self, uid: str, with_history: bool) -> bool:
        conversation = self._index(uid)
        removed = self.conn.execute(
            "DELETE FROM contacts WHERE uid_index = ?", (conversation,)
        ).rowcount
        if with_history:
            self.conn.execute("DELETE FROM messages WHERE conversation = ?", (conversation,))
            self.conn.execute("DELETE FROM conversations WHERE conversation = ?", (conversation,))
            self._next_seq.pop(conversation, None)
            self._touched.pop(conversation, None)
        return removed > 0

    # -- messages ---------------------------------------------------------------------------

    def _message_from_row(self, row: Sequence[Any]) -> StoredMessage:
        conversation, seq, mid, direction, state, created, sent, delivered, read, body = row
        text = self._open(body, "messages", "body", f"message {mid}", conversation, mid.encode())
        return StoredMessage(
            id=mid,
            contact=self._uid_of(conversation),
            direction=direction,
            body=text.decode(),
            state=state,
            created=created,
            sent=sent,
            delivered=delivered,
            read=read,
            seq=seq,
        )

    def _exists(self, conversation: bytes, mid: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM messages WHERE conversation = ? AND id = ?", (conversation, mid)
        ).fetchone()
        return row is not None

    def _insert_message(self, message: StoredMessage, conversation: bytes, seq: int) -> None:
        body = self._seal_body(message.body, conversation, message.id)
        self.conn.execute(
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conversation,
                seq,
                message.id,
                message.direction,
                message.state,
                message.created,
                message.sent,
                message.delivered,
                message.read,
                body,
            ),
        )

    def add_outgoing(self, message: StoredMessage) -> StoredMessage:
        """One outgoing message, through the same write path as a batch of them."""
        try:
            return self._add_outgoing_many([message])[0]
        except sqlite3.IntegrityError:
            if self._exists(self._index(message.contact), message.id):
                raise DuplicateMessage(f"message {message.id} is already stored") from None
            raise

    def _add_outgoing_many(self, messages: Sequence[StoredMessage]) -> list[StoredMessage]:
        """Store outgoing messages with multi-row INSERTs (:meth:`_insert_rows`): the one write
        path of outgoing messages (:meth:`add_outgoing` is this for one).

        (Queued and sent messages are in the outbox by their state: the outbox is a partial
        index of ``messages``, see :data:`jarvis.store.schema.OUTBOX_WHERE`.)

        :raises Exception: if any of them fails (the caller then retries them one by one).
        """
        message_rows: list[tuple[Any, ...]] = []
        stored: list[StoredMessage] = []
        next_seq = self._next_seq
        indexes = self._indexes
        for message in messages:
            if message.direction != "out":
                raise InvalidInput("add_outgoing takes an outgoing message (direction 'out')")
            contact = message.contact
            conversation = indexes.get(contact) or self._index(contact)
            seq = next_seq.get(conversation)
            if seq is None:
                seq = self._ensure_conversation(conversation, contact)
            mid = message.id
            message_rows.append(
                (
                    conversation,
                    seq,
                    mid,
                    "out",
                    message.state,
                    message.created,
                    message.sent,
                    message.delivered,
                    message.read,
                    self._seal_body(message.body, conversation, mid),
                )
            )
            self._appended(conversation, seq, message.created)
            stored.append(copy_unchecked(message, seq=seq))
        self._insert_rows(message_rows)
        return stored

    def _insert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert message rows (:data:`_MESSAGE_COLUMNS`), :data:`_PER_STATEMENT` per statement.

        One multi-row INSERT runs in one ``sqlite3_step``: the thread gives up and takes back
        the GIL once per chunk, not once per row as ``executemany`` does.  (Each take-back
        waits for the reactor thread to yield the GIL, up to the switch interval, so per row
        it halved the store's speed while the reactor was busy.)
        """
        conn = self.conn
        for chunk in _chunks(rows):
            sql = _MULTI_INSERT.get(len(chunk))
            if sql is None:
                sql = f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES " + ", ".join(
                    ["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)
                )
                if len(_MULTI_INSERT) < 64:
                    _MULTI_INSERT[len(chunk)] = sql
            conn.execute(sql, list(itertools.chain.from_iterable(chunk)))

    def add_incoming(self, message: StoredMessage) -> StoredMessage | None:
        if message.direction != "in":
            raise InvalidInput("add_incoming takes an incoming message (direction 'in')")
        seq = self._append(message)
        if seq is None:
            return None
        # The first message of a new unread run places the conversation's "new messages"
        # marker; it stays there (also once read) until the next unread run begins.
        conversation = self._index(message.contact)
        self.conn.execute(
            "UPDATE conversations SET marker = ? WHERE conversation = ? AND NOT EXISTS ("
            "SELECT 1 FROM messages WHERE conversation = ? AND direction = 'in' "
            "AND state = 'received' AND id != ?)",
            (message.id, conversation, conversation, message.id),
        )
        return copy_unchecked(message, seq=seq)

    def advance_states(
        self, mids: Sequence[str], state: str, at: float
    ) -> list[tuple[str, str, str]]:
        """Advance the messages *mids* to *state* (states never move backwards), without reading
        back (or opening) the rows.

        Per id, the first row (in rowid order) whose state may advance to *state* advances:
        one ``UPDATE ... RETURNING`` per :data:`_PER_STATEMENT` ids, whose WHERE clause holds the
        rank rule (a delivered or read message leaves the outbox index by its new state).  An
        id given twice counts once.

        :returns: ``(id, contact, state)`` of each message that changed, in the order given.
        """
        if state not in ("queued", "sent", "delivered", "read", "received"):
            raise InvalidInput(f"{state!r} is not a message state")
        sql = _ADVANCE_SQL.get(state)
        if sql is None:  # 'queued' and 'received' are first states: nothing advances to them
            return []
        conn = self.conn
        unique = list(dict.fromkeys(mids))
        moved: dict[str, bytes] = {}
        for chunk in _chunks(unique):
            values = ", ".join(["(?)"] * len(chunk))
            rows = conn.execute(f"WITH ids(id) AS (VALUES {values}) {sql}", (*chunk, state, at))
            moved.update(rows.fetchall())
        changed: list[tuple[str, str, str]] = []
        for mid in unique:
            conversation = moved.get(mid)
            if conversation is not None:
                uid = self._uids.get(conversation) or self._uid_of(conversation)
                changed.append((mid, uid, state))
        return changed

    def get_message(self, mid: str) -> StoredMessage | None:
        row = self.conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ? ORDER BY rowid LIMIT 1", (mid,)
        ).fetchone()
        return None if row is None else self._message_from_row(row)

    def outbox(self, uid: str) -> list[StoredMessage]:
        rows = self.conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation = ? AND {OUTBOX_WHERE} "
            "ORDER BY seq",
            (self._index(uid),),
        ).fetchall()
        return [self._message_from_row(row) for row in rows]

    def outbox_page(
        self, uid: str, after_seq: int, limit: int, max_bytes: int
    ) -> tuple[list[StoredMessage], bool]:
        """The next undelivered outgoing messages to *uid* after *after_seq*, oldest first.

        Rows are read one by one and reading stops at *limit* messages or once the sealed bodies
        would pass *max_bytes* (one message at least), so a page never holds more than that in
        memory however large the outbox is.

        :returns: the messages, and whether more follow them.
        """
        cursor = self.conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation = ? AND {OUTBOX_WHERE} "
            "AND seq > ? ORDER BY seq LIMIT ?",
            (self._index(uid), after_seq, limit + 1),
        )
        messages: list[StoredMessage] = []
        size = 0
        more = False
        for row in cursor:
            if len(messages) >= limit or (messages and size + len(row[9]) > max_bytes):
                more = True
                break
            size += len(row[9])
            messages.append(self._message_from_row(row))
        cursor.close()
        return messages, more

    def deliver_through(self, uid: str, mid: str, at: float) -> list[tuple[str, str, str]]:
        """Mark delivered every undelivered outgoing message to *uid* up to message *mid*.

        The peer said (in its Resume record) that it stored *mid* and everything we sent it
        before; an id that is not one of our messages to *uid* changes nothing.

        :returns: ``(id, uid, "delivered")`` per message that changed, in conversation order.
        """
        conversation = self._index(uid)
        row = self.conn.execute(
            "SELECT seq FROM messages WHERE id = ? AND conversation = ? AND direction = 'out'",
            (mid, conversation),
        ).fetchone()
        if row is None:
            return []
        rows = self.conn.execute(
            f"UPDATE messages SET state = 'delivered', delivered = ? WHERE conversation = ? "
            f"AND {OUTBOX_WHERE} AND seq <= ? RETURNING seq, id",
            (at, conversation, row[0]),
        ).fetchall()
        return [(changed, uid, "delivered") for _, changed in sorted(rows)]

    def _seq_of(self, conversation: bytes, bound: int | str) -> int:
        """Return the seq a history bound stands for: a cursor is one, an id is looked up."""
        if isinstance(bound, int):
            return bound
        row = self.conn.execute(
            "SELECT seq FROM messages WHERE conversation = ? AND id = ?", (conversation, bound)
        ).fetchone()
        if row is None:
            raise NotFound(f"message {bound} is not in this conversation")
        return int(row[0])

    def history(
        self, uid: str, limit: int, before: int | str | None, after: int | str | None = None
    ) -> HistoryPage:
        # keyset paging on seq (never OFFSET): each page costs its own rows whatever its depth
        conversation = self._index(uid)
        where = "conversation = ?"
        params: list[Any] = [conversation]
        if before is not None:
            where += " AND seq < ?"
            params.append(self._seq_of(conversation, before))
        if after is not None:
            where += " AND seq > ?"
            params.append(self._seq_of(conversation, after))
        # with after, the page holds the oldest messages newer than it (paging forward)
        order = "DESC" if after is None else "ASC"
        rows = self.conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {where} ORDER BY seq {order} LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        chosen = [self._message_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        if after is None:
            return HistoryPage(tuple(chosen), str(chosen[-1].seq) if more else None)
        return HistoryPage(
            tuple(reversed(chosen)), None, newer_cursor=str(chosen[-1].seq) if more else None
        )

    def unread_counts(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT conversation, count(*) FROM messages "
            "WHERE direction = 'in' AND state = 'received' GROUP BY conversation"
        ).fetchall()
        return {self._uid_of(conversation): count for conversation, count in rows}

    def mark_read(self, uid: str, up_to: str | None, at: float, receipts: bool) -> list[str]:
        conversation = self._index(uid)
        query = (
            "SELECT rowid, id FROM messages "
            "WHERE conversation = ? AND direction = 'in' AND state = 'received'"
        )
        params: tuple[Any, ...] = (conversation,)
        if up_to is not None:
            row = self.conn.execute(
                "SELECT seq FROM messages WHERE conversation = ? AND id = ?",
                (conversation, up_to),
            ).fetchone()
            if row is None:
                raise NotFound(f"message {up_to} is not in this conversation")
            query += " AND seq <= ?"
            params += (row[0],)
        rows = self.conn.execute(query + " ORDER BY seq", params).fetchall()
        due = 1 if receipts else 0
        self.conn.executemany(
            "UPDATE messages SET state = 'read', read = ?, receipt_due = ? WHERE rowid = ?",
            [(at, due, rowid) for rowid, _ in rows],
        )
        return [mid for _, mid in rows]

    def receipts_due(self, uid: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT id FROM messages WHERE conversation = ? AND receipt_due = 1 ORDER BY seq",
            (self._index(uid),),
        ).fetchall()
        return [row[0] for row in rows]

    def clear_receipts(self, uid: str, mids: Sequence[str]) -> None:
        conversation = self._index(uid)
        self.conn.executemany(
            "UPDATE messages SET receipt_due = 0 WHERE id = ? AND conversation = ? "
            "AND receipt_due = 1",
            [(mid, conversation) for mid in mids],
        )

    def last_activity(self) -> dict[str, float]:
        rows = self.conn.execute(
            "SELECT conversation, last_activity FROM conversations WHERE last_activity IS NOT NULL"
        ).fetchall()
        return {self._uid_of(conversation): when for conversation, when in rows}

    # -- markers and settings ---------------------------------------------------------------

    def set_marker(self, uid: str, mid: str | None) -> None:
        conversation = self._index(uid)
        self._ensure_conversation(conversation, uid)
        self.conn.execute(
            "UPDATE conversations SET marker = ? WHERE conversation = ?", (mid, conversation)
        )

    def get_marker(self, uid: str) -> str | None:
        row = self.conn.execute(
            "SELECT marker FROM conversations WHERE conversation = ?", (self._index(uid),)
        ).fetchone()
        return None if row is None else row[0]

    def set_setting(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidInput("a setting is a non-empty name and a string value")
        key_index = blind_index(self._index_key, "setting", key)
        self.conn.execute(
            "INSERT OR REPLACE INTO settings (key_index, name, value) VALUES (?, ?, ?)",
            (
                key_index,
                self._seal(key.encode(), "settings", "name", key_index),
                self._seal(value.encode(), "settings", "value", key_index),
            ),
        )

    def get_setting(self, key: str) -> str | None:
        key_index = blind_index(self._index_key, "setting", key)
        row = self.conn.execute(
            "SELECT value FROM settings WHERE key_index = ?", (key_index,)
        ).fetchone()
        if row is None:
            return None
        return self._open(row[0], "settings", "value", "a setting", key_index).decode()

    # -- export -----------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        conn = self.conn
        contacts = [_contact_to_json(c) for c in self.list_contacts()]
        messages = [
            dataclasses.asdict(self._message_from_row(row))
            for row in conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages")
        ]
        # By uid, not by blind index: the same data dumps alike under any index key.
        messages.sort(key=lambda m: (m["contact"], m["seq"]))
        markers = {
            self._uid_of(conversation): marker
            for conversation, marker in conn.execute(
                "SELECT conversation, marker FROM conversations WHERE marker IS NOT NULL"
            ).fetchall()
        }
        settings: dict[str, str] = {}
        for key_index, name, value in conn.execute("SELECT key_index, name, value FROM settings"):
            key = self._open(name, "settings", "name", "a setting", key_index).decode()
            settings[key] = self._open(value, "settings", "value", "a setting", key_index).decode()
        return {
            "format": DUMP_FORMAT,
            "version": DUMP_VERSION,
            "contacts": contacts,
            "messages": messages,
            "markers": dict(sorted(markers.items())),
            "settings": dict(sorted(settings.items())),
        }

    def load(self, dump: dict[str, Any]) -> None:
        conn = self.conn
        for table in ("contacts", "conversations", "messages", "settings"):
            if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                raise StoreNotEmpty("the message store is not empty: load an export into a new one")
        if not isinstance(dump, dict) or dump.get("format") != DUMP_FORMAT:
            raise InvalidInput("this is not a Jarvis store dump")
        if dump.get("version") != DUMP_VERSION:
            raise InvalidInput(f"store dump version {dump.get('version')!r} is not supported")
        for item in dump.get("contacts", []):
            self.put_contact(_contact_from_json(item))
        last: dict[bytes, tuple[int, float]] = {}
        for item in dump.get("messages", []):
            message = _message_from_json(item)
            conversation = self._index(message.contact)
            self._ensure_conversation(conversation, message.contact)
            if self._exists(conversation, message.id):
                raise InvalidInput(f"message {message.id} appears twice in the dump")
            try:
                self._insert_message(message, conversation, message.seq)
            except sqlite3.IntegrityError:
                raise InvalidInput(f"message {message.id} in the dump repeats a seq")
            seq, when = last.get(conversation, (0, message.created))
            last[conversation] = (max(seq, message.seq), max(when, message.created))
        self._next_seq.clear()
        for conversation, (seq, when) in last.items():
            conn.execute(
                "UPDATE conversations SET next_seq = ?, last_activity = ? WHERE conversation = ?",
                (seq + 1, when, conversation),
            )
        markers = dump.get("markers", {})
        settings = dump.get("settings", {})
        if not isinstance(markers, dict) or not isinstance(settings, dict):
            raise InvalidInput("the markers and settings of a store dump are objects")
        for uid, mid in markers.items():
            self.set_marker(uid, mid)
        for key, value in settings.items():
            self.set_setting(key, value)

    def integrity_check(self) -> list[str]:
        return schema.integrity_check(self.conn)


class Store:
    """The encrypted message store; every method returns a Deferred (see the module docstring).

    Do not construct it directly: use :meth:`Store.open`, and :meth:`close` it when the
    identity is locked.
    """

    log = Logger()

    def __init__(self, reactor: Any, pool: ThreadPool, rows: _Rows, max_batch: int) -> None:
        """Use :meth:`Store.open`."""
        self._reactor = reactor
        self._pool = pool
        self._rows = rows
        self._max_batch = max_batch
        self._pending: list[_Op] = []
        # Bound once: a new bound method per call is one more object per message.
        self._add_outgoing = rows.add_outgoing
        self._add_incoming = rows.add_incoming
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
        rows = _Rows(path, cipher, index_key)
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

    def _submit(self, method: Callable[..., Any], *args: Any, write: bool) -> Deferred[Any]:
        if self._closed:
            return fail(StoreClosed())
        d: Deferred[Any] = Deferred()
        self._pending.append((method, args, write, d))
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
        d = deferToThreadPool(self._reactor, self._pool, self._rows.run_batch, batch)
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

    # -- contacts ---------------------------------------------------------------------------

    def put_contact(self, contact: Contact) -> Deferred[None]:
        """Insert *contact*, or replace the stored contact with the same uid.

        :returns: a Deferred firing with None once stored.
        """
        return self._submit(self._rows.put_contact, contact, write=True)

    def get_contact(self, uid: str) -> Deferred[Contact | None]:
        """:returns: a Deferred firing with the contact whose uid is *uid*, or None."""
        return self._submit(self._rows.get_contact, uid, write=False)

    def list_contacts(self) -> Deferred[list[Contact]]:
        """:returns: a Deferred firing with every contact, sorted by alias or name."""
        return self._submit(self._rows.list_contacts, write=False)

    def remove_contact(self, uid: str, *, with_history: bool) -> Deferred[bool]:
        """Remove a contact, and with *with_history* its messages, outbox and marker.

        Without *with_history* the conversation stays readable by uid.

        :returns: a Deferred firing with whether a contact was removed.
        """
        return self._submit(self._rows.remove_contact, uid, with_history, write=True)

    # -- messages ---------------------------------------------------------------------------

    def add_outgoing(self, message: StoredMessage) -> Deferred[StoredMessage]:
        """Store an outgoing message and (if queued or sent) its outbox entry, atomically.

        :returns: a Deferred firing with *message* carrying its assigned ``seq``; it fails with
            :class:`DuplicateMessage` if the id is already stored for this contact, or
            :class:`~jarvis.errors.InvalidInput` if the message is not outgoing.
        """
        return self._submit(self._add_outgoing, message, write=True)

    def add_incoming(self, message: StoredMessage) -> Deferred[StoredMessage | None]:
        """Store an incoming message unless its id is already stored for its contact.

        The first message of a new unread run (no other unread incoming message in the
        conversation) becomes its "new messages" marker, in the same transaction.

        :returns: a Deferred firing with *message* carrying its assigned ``seq``, or with None
            if it was a duplicate.
        """
        return self._submit(self._add_incoming, message, write=True)

    def advance_states(
        self, message_ids: Sequence[str], state: str, at: float
    ) -> Deferred[list[tuple[str, str, str]]]:
        """Advance several messages to *state* in one operation (states never move backwards;
        a delivered or read message leaves the outbox), without reading the messages back.

        :returns: a Deferred firing with ``(id, contact, state)`` of each message that changed,
            in the order of *message_ids*.
        :raises InvalidInput: (in the Deferred) if *state* is no message state.
        """
        return self._submit(self._rows.advance_states, list(message_ids), state, at, write=True)

    def get_message(self, message_id: str) -> Deferred[StoredMessage | None]:
        """:returns: a Deferred firing with the message with this id, or None.

        :raises CorruptRow: (in the Deferred) if the stored row does not open.
        """
        return self._submit(self._rows.get_message, message_id, write=False)

    def outbox(self, uid: str) -> Deferred[list[StoredMessage]]:
        """:returns: a Deferred firing with the undelivered outgoing messages to *uid*,
        oldest first."""
        return self._submit(self._rows.outbox, uid, write=False)

    def outbox_page(
        self, uid: str, *, after_seq: int, limit: int, max_bytes: int
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        """:returns: a Deferred firing with ``(messages, more)``: at most *limit* undelivered
        outgoing messages to *uid* with a seq above *after_seq*, oldest first, whose sealed
        bodies stay within *max_bytes* (one message at least), and whether more follow."""
        return self._submit(
            self._rows.outbox_page, uid, after_seq, max(1, limit), max_bytes, write=False
        )

    def deliver_through(
        self, uid: str, message_id: str, at: float
    ) -> Deferred[list[tuple[str, str, str]]]:
        """Mark delivered (at *at*) every undelivered outgoing message to *uid* up to and
        including *message_id*, in one statement.

        :returns: a Deferred firing with ``(id, uid, "delivered")`` per message that changed, in
            conversation order (none if *message_id* is not an outgoing message to *uid*).
        """
        return self._submit(self._rows.deliver_through, uid, message_id, at, write=True)

    def history(
        self,
        uid: str,
        *,
        limit: int = 50,
        before: str | int | None = None,
        after: str | int | None = None,
    ) -> Deferred[HistoryPage]:
        """Return a page of the conversation with *uid*, newest message first.

        Without *after*, the page holds the newest messages (older than *before* when given);
        with *after*, it holds the oldest messages newer than *after* (and older than *before*
        when given), still newest first: that pages forward.

        :param limit: the most messages in the page, at least 1 (the core caps it at
            :data:`jarvis.core.limits.MAX_HISTORY_PAGE`).
        :param before: a cursor this store returned (``next_cursor``) or a message id of the
            conversation: only older messages.
        :param after: a cursor (``newer_cursor``) or a message id: only newer messages.
        :returns: a Deferred firing with a :class:`~jarvis.store.records.HistoryPage`.
        :raises InvalidInput: (in the Deferred) for a bad limit or cursor.
        :raises NotFound: (in the Deferred) for a message id not in this conversation.
        """
        if not isinstance(limit, int) or limit < 1:
            return fail(InvalidInput("a history page holds at least 1 message"))
        try:
            bounds = [_history_bound(b) for b in (before, after)]
        except InvalidInput as e:
            return fail(e)
        return self._submit(self._rows.history, uid, limit, *bounds, write=False)

    def unread_counts(self) -> Deferred[dict[str, int]]:
        """:returns: a Deferred firing with uid -> number of incoming messages not read
        (conversations with none are left out)."""
        return self._submit(self._rows.unread_counts, write=False)

    def mark_read(
        self, uid: str, *, up_to: str | None = None, at: float, receipts: bool = False
    ) -> Deferred[list[str]]:
        """Mark incoming messages from *uid* read, all of them or up to message *up_to*.

        :param receipts: whether the sender is owed read receipts for them (they stay owed,
            :meth:`receipts_due`, until :meth:`clear_receipts`).
        :returns: a Deferred firing with the ids newly marked read, oldest first.
        :raises NotFound: (in the Deferred) if *up_to* is not in this conversation.
        """
        return self._submit(self._rows.mark_read, uid, up_to, at, receipts, write=True)

    def receipts_due(self, uid: str) -> Deferred[list[str]]:
        """Return the ids of *uid*'s messages read here whose read receipt is still owed,
        oldest first."""
        return self._submit(self._rows.receipts_due, uid, write=False)

    def clear_receipts(self, uid: str, message_ids: Sequence[str]) -> Deferred[None]:
        """Note that the read receipts of *message_ids* (from *uid*) were written to a session."""
        return self._submit(self._rows.clear_receipts, uid, list(message_ids), write=True)

    def last_activity(self) -> Deferred[dict[str, float]]:
        """:returns: a Deferred firing with uid -> the newest message's ``created`` time."""
        return self._submit(self._rows.last_activity, write=False)

    # -- marker, settings, export -----------------------------------------------------------

    def set_marker(self, uid: str, message_id: str | None) -> Deferred[None]:
        """Set (or with None clear) the "new messages" marker of the conversation with *uid*."""
        return self._submit(self._rows.set_marker, uid, message_id, write=True)

    def get_marker(self, uid: str) -> Deferred[str | None]:
        """:returns: a Deferred firing with the marker's message id, or None."""
        return self._submit(self._rows.get_marker, uid, write=False)

    def set_setting(self, key: str, value: str) -> Deferred[None]:
        """Store the setting *key* (name and value are both encrypted)."""
        return self._submit(self._rows.set_setting, key, value, write=True)

    def get_setting(self, key: str) -> Deferred[str | None]:
        """:returns: a Deferred firing with the value of setting *key*, or None."""
        return self._submit(self._rows.get_setting, key, write=False)

    def dump(self) -> Deferred[dict[str, Any]]:
        """Return everything in the store as a JSON-able dict of PLAINTEXT (for an export,
        which the caller seals at once; never write it to disk as is).

        :returns: a Deferred firing with ``format``, ``version``, ``contacts``, ``messages``,
            ``markers`` and ``settings``.
        """
        return self._submit(self._rows.dump, write=False)

    def load(self, dump: dict[str, Any]) -> Deferred[None]:
        """Load a :meth:`dump` into this store, all or nothing.

        :returns: a Deferred firing with None once loaded; it fails with
            :class:`StoreNotEmpty` if the store holds anything, or
            :class:`~jarvis.errors.InvalidInput` if the dump is malformed.
        """
        return self._submit(self._rows.load, dump, write=True)

    def integrity_check(self) -> Deferred[list[str]]:
        """:returns: a Deferred firing with ``["ok"]``, or one line per problem found by
        ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``."""
        return self._submit(self._rows.integrity_check, write=False)
