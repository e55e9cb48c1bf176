"""The store's SQLite schema: tables, indexes, forward migrations and the integrity check.

The schema version lives in the ``meta`` table (key ``schema_version``).  :data:`MIGRATIONS` is
a list of functions; migration ``n`` (0-based) takes a database from version ``n`` to ``n + 1``
and runs inside the transaction that also records the new version, so a crash mid-migration
leaves the previous version intact.  Migrations only ever go forward: a database written by a
newer Jarvis is refused (:class:`SchemaTooNew`), never downgraded.

Every function here runs on the store's own thread with its connection; this module must not
import the reactor, encrypt or decrypt anything, or know about the record types.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from jarvis.common.errors import JarvisError


class SchemaTooNew(JarvisError):
    """The database was written by a newer version of Jarvis than the one running.

    Jarvis never downgrades a database (it could lose data it does not understand).  Update
    Jarvis to the version that wrote the data directory, or restore an export into a new one.
    """

    kind = "schema_too_new"

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the database has schema version {found} but this Jarvis knows only up to "
            f"{known}: update Jarvis"
        )
        self.found = found
        self.known = known


# Version 1: contacts, conversations, messages, outbox, settings.  (executescript() would
# commit the migration's transaction half-way, so statements run one by one.)
_V1 = (
    # uid_index: HMAC-SHA256 blind index of the uid; profile: sealed JSON of uid, name, alias,
    # addresses and public key.  Flags and the time added are clear.
    """CREATE TABLE contacts (
        uid_index BLOB PRIMARY KEY,
        profile BLOB NOT NULL,
        verified INTEGER NOT NULL,
        blocked INTEGER NOT NULL,
        muted INTEGER NOT NULL,
        read_receipts INTEGER NOT NULL,
        added_at REAL NOT NULL
    ) WITHOUT ROWID""",
    # One row per conversation that ever had a message or a marker.  conversation is the
    # contact's blind index, uid the sealed uid (so a history outlives its removed contact).
    """CREATE TABLE conversations (
        conversation BLOB PRIMARY KEY,
        uid BLOB NOT NULL,
        next_seq INTEGER NOT NULL,
        last_activity REAL,
        marker TEXT
    ) WITHOUT ROWID""",
    # body is sealed; everything else is an id, a state, a time or a counter.
    """CREATE TABLE messages (
        rowid INTEGER PRIMARY KEY,
        conversation BLOB NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        state TEXT NOT NULL,
        created REAL NOT NULL,
        sent REAL,
        delivered REAL,
        read REAL,
        body BLOB NOT NULL,
        UNIQUE (conversation, seq),
        UNIQUE (conversation, id)
    )""",
    "CREATE INDEX messages_by_id ON messages (id)",
    """CREATE INDEX messages_unread ON messages (conversation)
        WHERE direction = 'in' AND state = 'received'""",
    # Outgoing messages not yet delivered, in conversation order.
    """CREATE TABLE outbox (
        message INTEGER PRIMARY KEY REFERENCES messages (rowid) ON DELETE CASCADE,
        conversation BLOB NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX outbox_by_conversation ON outbox (conversation, seq)",
    # key_index: blind index of the setting's name; name and value are sealed.
    """CREATE TABLE settings (
        key_index BLOB PRIMARY KEY,
        name BLOB NOT NULL,
        value BLOB NOT NULL
    ) WITHOUT ROWID""",
)


def _create_v1(conn: sqlite3.Connection) -> None:
    """Version 1: contacts, conversations, messages, outbox, settings."""
    for statement in _V1:
        conn.execute(statement)


#: The outbox from version 2 on: the outgoing messages not yet delivered, in conversation
#: order, as a partial index of ``messages`` (a query must repeat its WHERE clause to use it).
OUTBOX_WHERE = "direction = 'out' AND state IN ('queued', 'sent')"

# Version 2: one index on message ids instead of two (UNIQUE (id, conversation) answers both
# "this id in this conversation" and "this id anywhere"), and the outbox table becomes a partial
# index of messages, so storing a message and taking it out of the outbox write no second
# table.  A burst of messages then dirties about half as many pages (docs/benchmarks.md).
_V2 = (
    """CREATE TABLE messages_v2 (
        rowid INTEGER PRIMARY KEY,
        conversation BLOB NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        state TEXT NOT NULL,
        created REAL NOT NULL,
        sent REAL,
        delivered REAL,
        read REAL,
        body BLOB NOT NULL,
        UNIQUE (conversation, seq),
        UNIQUE (id, conversation)
    )""",
    """INSERT INTO messages_v2 (rowid, conversation, seq, id, direction, state, created, sent,
        delivered, read, body)
        SELECT rowid, conversation, seq, id, direction, state, created, sent, delivered, read,
        body FROM messages ORDER BY rowid""",
    # The outbox table held exactly the outgoing messages in 'queued' or 'sent' (it was written
    # and emptied with their state in the same transactions): the partial index has the same
    # rows.  It goes first, so that dropping messages cascades into nothing.
    "DROP TABLE outbox",
    "DROP TABLE messages",
    "ALTER TABLE messages_v2 RENAME TO messages",
    """CREATE INDEX messages_unread ON messages (conversation)
        WHERE direction = 'in' AND state = 'received'""",
    f"CREATE INDEX outbox ON messages (conversation, seq) WHERE {OUTBOX_WHERE}",
)


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """Version 2: one message-id index, the outbox as a partial index."""
    for statement in _V2:
        conn.execute(statement)


# Version 3: read receipts owed to the sender.  An incoming message read while its sender's
# session was down keeps receipt_due = 1 until the receipt is written to a session, so the
# sender learns it was read even when both are rarely online at the same time.
_V3 = (
    "ALTER TABLE messages ADD COLUMN receipt_due INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX receipts_due ON messages (conversation, seq) WHERE receipt_due = 1",
)


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    """Version 3: read receipts owed (``messages.receipt_due``)."""
    for statement in _V3:
        conn.execute(statement)


# Version 4: the path an outgoing message left by when it was not the session: 'mailbox' for a
# message deposited in the contact's mailbox (issue 15); NULL otherwise.
_V4 = ("ALTER TABLE messages ADD COLUMN path TEXT",)


def _v3_to_v4(conn: sqlite3.Connection) -> None:
    """Version 4: ``messages.path`` (sent via the mailbox)."""
    for statement in _V4:
        conn.execute(statement)


# Version 5: private groups (issue 17, docs/groups.md).  One row per group state, group
# message, invitation or per-group setting; item is a blind index of what the row holds (its
# kind and hash, or the group id), data is sealed (the encoded record).  Rows are read back in
# rowid order at unlock and offered to the groups' logs again.
_V5 = (
    """CREATE TABLE group_records (
        rowid INTEGER PRIMARY KEY,
        item BLOB NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        data BLOB NOT NULL
    )""",
)


def _v4_to_v5(conn: sqlite3.Connection) -> None:
    """Version 5: private groups (``group_records``)."""
    for statement in _V5:
        conn.execute(statement)


#: The forward migrations; the schema version of a database is how many of them it has run.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _create_v1,
    _v1_to_v2,
    _v2_to_v3,
    _v3_to_v4,
    _v4_to_v5,
]

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """Return the schema version recorded in *conn*'s ``meta`` table (0 for a new database).

    :param conn: a connection in autocommit mode (``isolation_level=None``).
    """
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring *conn*'s database up to *target*, one transaction per migration.

    :param conn: a connection in autocommit mode (``isolation_level=None``).
    :param target: the version to reach (tests make older databases with it).
    :returns: the schema version found before migrating (0 for a new database).
    :raises SchemaTooNew: if the database is newer than this code.
    """
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(found, SCHEMA_VERSION)
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID"
            )
            MIGRATIONS[version](conn)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(version + 1),),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def integrity_check(conn: sqlite3.Connection) -> list[str]:
    """Run ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``.

    :param conn: an open connection.
    :returns: ``["ok"]`` when the database is sound, else one line per problem found.
    """
    problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    problems = [] if problems == ["ok"] else problems
    for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check"):
        problems.append(f"foreign key: {table} row {rowid} refers to a missing {parent} row")
    return problems or ["ok"]
