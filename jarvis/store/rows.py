"""The store thread's connection: :class:`Rows` opens, migrates and checks the database and
seals, opens and indexes rows; the queries (:mod:`jarvis.store.queries`) use it.

Used ONLY on the store's thread (:class:`jarvis.store.database.Store` runs everything there).
This module must not import the global reactor and must never log plaintext or keys.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from jarvis.common.errors import InvalidInput, JarvisError, Locked, NotFound
from jarvis.common.message_states import states_before
from jarvis.protocol.group_fanout import BODY_MARK
from jarvis.store import schema
from jarvis.store.records import Contact, StoredMessage, copy_unchecked

#: Format name and version written by :meth:`Store.dump`.
DUMP_FORMAT = "jarvis-store-dump"


#: Version 2: each message carries ``path`` (how an outgoing message left: ``"mailbox"``,
#: ``"direct"``, or ``None``; schema version 4).  Version 1 dumps (no ``path``) still load.
DUMP_VERSION = 2
#: The dump versions :func:`~jarvis.store.queries.load` accepts.
LOADABLE_DUMP_VERSIONS = (1, 2)


_AD_DOMAIN = b"jarvis-store/1"


#: How many uid -> blind index results the store's thread keeps.
_INDEX_CACHE = 4096


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
    directory.  ``PRAGMA integrity_check`` (``queries.integrity_check``) says more.
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


def contact_to_json(contact: Contact) -> dict[str, Any]:
    out = dataclasses.asdict(contact)
    out["public_key"] = base64.b64encode(contact.public_key).decode("ascii")
    out["addresses"] = list(contact.addresses)
    return out


def contact_from_json(data: Any) -> Contact:
    try:
        fields = dict(data)
        fields["public_key"] = base64.b64decode(fields["public_key"], validate=True)
        fields["addresses"] = tuple(str(a) for a in fields["addresses"])
        return Contact(**fields)
    except (TypeError, KeyError, ValueError) as exc:
        raise InvalidInput(f"a contact in the dump is malformed ({type(exc).__name__})")


def message_from_json(data: Any) -> StoredMessage:
    try:
        message = StoredMessage(**dict(data))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"a message in the dump is malformed ({type(exc).__name__})")
    if not isinstance(message.seq, int) or message.seq < 1:
        raise InvalidInput(f"message {message.id} in the dump has no valid seq")
    return message


_T = TypeVar("_T")


MESSAGE_COLUMNS = "conversation, seq, id, direction, state, created, sent, delivered, read, body"


#: Rows per multi-row INSERT (10 parameters each) and ids per multi-id UPDATE: well under the
#: 32,766 parameters SQLite allows in one statement.
_PER_STATEMENT = 500


#: The multi-row INSERT statements made so far, by row count.
_MULTI_INSERT: dict[int, str] = {}


CONTACT_COLUMNS = "uid_index, profile, verified, blocked, muted, read_receipts, added_at"


_TIME_COLUMN = {"sent": "sent", "delivered": "delivered", "read": "read"}


_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")


def history_bound(value: str | int | None) -> int | str | None:
    """Return a history bound as a seq (a cursor) or a message id, or None.

    A cursor is what :func:`~jarvis.store.queries.history` returned (decimal digits, or an
    int); a message id is 32 lowercase hex digits.

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


def chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """*items* in slices of :data:`_PER_STATEMENT`, one statement's worth each."""
    for start in range(0, len(items), _PER_STATEMENT):
        yield items[start : start + _PER_STATEMENT]


#: The states in which an outgoing group entry keeps no payload (issue 17): the member stored
#: it, nothing will send it again.
COMPACTED_STATES = frozenset({"delivered", "read"})
#: The body an acknowledged group entry keeps: the group marker and no payload.  Its row (id,
#: member, state, times) stays: it is the per-member delivery detail ("delivered to 7 of 9").
GROUP_ENTRY_DONE = BODY_MARK.decode("ascii")


def _advance_sql(state: str, in_conversation: bool = False) -> str | None:
    """The UPDATE moving, per id of the ``ids`` CTE, the first row that may advance to *state*.

    The caller prefixes ``WITH ids(id) AS (VALUES (?), ...)``: one statement for a whole Ack
    (one GIL hand-off on the store's thread instead of one per id).  None: no row may advance.
    With *in_conversation*, the CTE is ``ids(id, conversation)`` and only that conversation's
    row with the id moves (the entries of one group message share an id, one per member).
    """
    clauses = []
    for direction in ("out", "in"):
        below = states_before(direction, state)
        if below:
            states = ", ".join(f"'{s}'" for s in below)
            clauses.append(f"(direction = '{direction}' AND state IN ({states}))")
    if not clauses:
        return None
    column = _TIME_COLUMN[state]
    where = " AND conversation = ids.conversation" if in_conversation else ""
    # Delivered and read outgoing rows come back with their rowid and sealed body, for
    # Rows.compact_group_entries (the payload of a group entry is not kept once acknowledged).
    returning = "id, conversation"
    if state in COMPACTED_STATES:
        returning += ", rowid, CASE WHEN direction = 'out' THEN body END"
    return (
        f"UPDATE messages SET state = ?, {column} = ? WHERE rowid IN (SELECT ("
        f"SELECT rowid FROM messages WHERE id = ids.id{where} AND ({' OR '.join(clauses)}) "
        f"ORDER BY rowid LIMIT 1) FROM ids) RETURNING {returning}"
    )


ADVANCE_SQL: dict[str, str] = {
    state: sql
    for state in ("sent", "delivered", "read")
    if (sql := _advance_sql(state)) is not None
}
#: :data:`ADVANCE_SQL` per ``(id, conversation)`` pair.
ADVANCE_IN_CONVERSATION_SQL: dict[str, str] = {
    state: sql
    for state in ("sent", "delivered", "read")
    if (sql := _advance_sql(state, in_conversation=True)) is not None
}


class Rows:
    """The store's connection and the row sealing, opening and indexing around it; used ONLY
    on the store's thread.

    The queries (:mod:`jarvis.store.queries`) are plain functions of it (as of an adbapi cursor)
    and use only its public methods; the store runs a batch of them in one transaction.
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
        # conversation by :meth:`write_conversations`, not once per message.
        self._touched: dict[bytes, float] = {}
        # conversation -> associated data prefix of its message bodies (the id follows).
        self._body_prefixes: dict[bytes, bytes] = {}
        #: the sealed size of GROUP_ENTRY_DONE: a body no longer than that has nothing to drop
        self._done_size = len(cipher.seal(BODY_MARK, b""))
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
        self._body_prefixes.clear()
        self.forget_transaction()
        if conn is not None:
            conn.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosed()
        return self._conn

    def forget_transaction(self) -> None:
        """Drop what is cached about uncommitted rows (after a rollback)."""
        self._next_seq.clear()
        self._touched.clear()

    def forget_conversation(self, conversation: bytes | None = None) -> None:
        """Drop the cached next seq and pending activity of *conversation* (of every one for
        None): its rows were deleted or written by other means in this transaction."""
        if conversation is None:
            self._next_seq.clear()
            self._touched.clear()
        else:
            self._next_seq.pop(conversation, None)
            self._touched.pop(conversation, None)

    def write_conversations(self) -> None:
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

    def seal(self, plaintext: bytes, table: str, column: str, *key: bytes) -> bytes:
        return self._cipher.seal(plaintext, associated_data(table, column, *key))

    def unseal(self, blob: bytes, table: str, column: str, row: str, *key: bytes) -> bytes:
        try:
            return self._cipher.open(bytes(blob), associated_data(table, column, *key))
        except Exception as exc:
            raise CorruptRow(table, column, row, exc) from exc

    def index(self, uid: str) -> bytes:
        index = self._indexes.get(uid)
        if index is None:
            if not isinstance(uid, str) or not uid:
                raise InvalidInput("a contact uid is a non-empty string")
            if len(self._indexes) >= _INDEX_CACHE:
                self._indexes.clear()
            index = self._indexes[uid] = blind_index(self._index_key, "uid", uid)
        return index

    def setting_index(self, key: str) -> bytes:
        """Return the blind index of the setting named *key*."""
        return blind_index(self._index_key, "setting", key)

    def blind(self, kind: str, value: str) -> bytes:
        """Return the blind index of *value* in the namespace *kind* (e.g. a group record's)."""
        return blind_index(self._index_key, kind, value)

    # -- conversations ----------------------------------------------------------------------

    def uid_of(self, conversation: bytes) -> str:
        uid = self._uids.get(conversation)
        if uid is None:
            row = self.conn.execute(
                "SELECT uid FROM conversations WHERE conversation = ?", (conversation,)
            ).fetchone()
            if row is None:
                raise CorruptStore("a message belongs to no conversation")
            uid = self.unseal(
                row[0], "conversations", "uid", "a conversation", conversation
            ).decode()
            self._uids[conversation] = uid
        return uid

    def ensure_conversation(self, conversation: bytes, uid: str) -> int:
        """Create the conversation row if missing; return its next seq."""
        row = self.conn.execute(
            "SELECT next_seq FROM conversations WHERE conversation = ?", (conversation,)
        ).fetchone()
        if row is not None:
            return int(row[0])
        sealed = self.seal(uid.encode(), "conversations", "uid", conversation)
        self.conn.execute(
            "INSERT INTO conversations (conversation, uid, next_seq) VALUES (?, ?, 1)",
            (conversation, sealed),
        )
        self._uids[conversation] = uid
        return 1

    def append(self, message: StoredMessage) -> int | None:
        """Store *message* as the next of its conversation.

        :returns: its seq, or None if its id is already stored for that conversation.
        """
        conversation = self.index(message.contact)
        seq = self._next_seq.get(conversation)
        if seq is None:
            seq = self.ensure_conversation(conversation, message.contact)
        try:
            self.insert_message(message, conversation, seq)
        except sqlite3.IntegrityError:
            if self.exists(conversation, message.id):
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

    def _body_ad(self, conversation: bytes, mid: str) -> bytes:
        """The associated data of a message body (as :func:`associated_data`), its
        conversation's prefix cached."""
        prefix = self._body_prefixes.get(conversation)
        if prefix is None:
            if len(self._body_prefixes) >= _INDEX_CACHE:
                self._body_prefixes.clear()
            prefix = associated_data("messages", "body", conversation)
            self._body_prefixes[conversation] = prefix
        key = mid.encode()
        return prefix + len(key).to_bytes(2, "big") + key

    def _seal_body(self, body: str, conversation: bytes, mid: str) -> bytes:
        """Seal a message body bound to its conversation and id (as :func:`associated_data`)."""
        return self._cipher.seal(body.encode(), self._body_ad(conversation, mid))

    def compact_group_entries(self, rows: Iterable[Sequence[Any]]) -> int:
        """Drop the payload of the acknowledged outgoing group entries among *rows*.

        A group message is one outbox entry per member (issue 17); once a member stored its
        entry, nothing sends it again, so its body becomes :data:`GROUP_ENTRY_DONE` (the marker
        alone, still sealed to its row) and the row keeps only what the delivery detail needs:
        its id, member, state and times.  Chat messages are left as they are.

        :param rows: ``(id, conversation, rowid, sealed body or None)`` as the delivered and
            read :data:`ADVANCE_SQL` statements return them (None: an incoming row).
        :returns: how many rows were compacted.
        """
        updates: list[tuple[bytes, int]] = []
        floor = self._done_size
        for mid, conversation, rowid, body in rows:
            if body is None or len(body) <= floor:
                continue  # incoming, or nothing to gain (already compacted)
            ad = self._body_ad(bytes(conversation), mid)
            try:
                text = self._cipher.open(bytes(body), ad)
            except Exception:
                continue  # a damaged row stays as it is: reading it reports it
            if text.startswith(BODY_MARK):
                updates.append((self._cipher.seal(BODY_MARK, ad), rowid))
        if not updates:
            return 0
        # The short row moves to the end of the table (a new rowid; seq, which orders a
        # conversation, stays): its old leaf page empties as its neighbours are acknowledged
        # and goes back to the free list, where an in-place update would leave every page
        # holding the space of the payload (appends never reuse it).
        (last,) = self.conn.execute("SELECT max(rowid) FROM messages").fetchone()
        self.conn.executemany(
            "UPDATE messages SET body = ?, rowid = ? WHERE rowid = ?",
            [(body, last + 1 + i, rowid) for i, (body, rowid) in enumerate(updates)],
        )
        return len(updates)

    # -- contacts ---------------------------------------------------------------------------

    def contact_from_row(self, row: Sequence[Any]) -> Contact:
        uid_index, profile, verified, blocked, muted, read_receipts, added_at = row
        data = json.loads(self.unseal(profile, "contacts", "profile", "a contact", uid_index))
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

    # -- messages ---------------------------------------------------------------------------

    def message_from_row(self, row: Sequence[Any]) -> StoredMessage:
        conversation, seq, mid, direction, state, created, sent, delivered, read, body = row
        text = self.unseal(body, "messages", "body", f"message {mid}", conversation, mid.encode())
        return StoredMessage(
            id=mid,
            contact=self.uid_of(conversation),
            direction=direction,
            body=text.decode(),
            state=state,
            created=created,
            sent=sent,
            delivered=delivered,
            read=read,
            seq=seq,
        )

    def exists(self, conversation: bytes, mid: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM messages WHERE conversation = ? AND id = ?", (conversation, mid)
        ).fetchone()
        return row is not None

    def insert_message(self, message: StoredMessage, conversation: bytes, seq: int) -> None:
        body = self._seal_body(message.body, conversation, message.id)
        self.conn.execute(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def add_outgoing_many(self, messages: Sequence[StoredMessage]) -> list[StoredMessage]:
        """Store outgoing messages with multi-row INSERTs (:meth:`_insert_rows`): the one write
        path of outgoing messages (:func:`~jarvis.store.queries.add_outgoing` is this for one).

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
            conversation = indexes.get(contact) or self.index(contact)
            seq = next_seq.get(conversation)
            if seq is None:
                seq = self.ensure_conversation(conversation, contact)
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
        """Insert message rows (:data:`MESSAGE_COLUMNS`), :data:`_PER_STATEMENT` per statement.

        One multi-row INSERT runs in one ``sqlite3_step``: the thread gives up and takes back
        the GIL once per chunk, not once per row as ``executemany`` does.  (Each take-back
        waits for the reactor thread to yield the GIL, up to the switch interval, so per row
        it halved the store's speed while the reactor was busy.)
        """
        conn = self.conn
        for chunk in chunks(rows):
            sql = _MULTI_INSERT.get(len(chunk))
            if sql is None:
                sql = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES " + ", ".join(
                    ["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)
                )
                if len(_MULTI_INSERT) < 64:
                    _MULTI_INSERT[len(chunk)] = sql
            conn.execute(sql, list(itertools.chain.from_iterable(chunk)))

    def seq_of(self, conversation: bytes, bound: int | str) -> int:
        """Return the seq a history bound stands for: a cursor is one, an id is looked up."""
        if isinstance(bound, int):
            return bound
        row = self.conn.execute(
            "SELECT seq FROM messages WHERE conversation = ? AND id = ?", (conversation, bound)
        ).fetchone()
        if row is None:
            raise NotFound(f"message {bound} is not in this conversation")
        return int(row[0])
