"""The store's queries: each a plain function of the store thread's :class:`Rows`.

Run one with :meth:`jarvis.store.database.Store.run`, e.g.
``store.run(queries.history, uid, limit=50, write=False)``: it runs on the store's thread in the
batch of its reactor turn and the Deferred fires after the COMMIT.  Never call these on the
reactor thread.  ``write`` says whether the query writes; consecutive :func:`add_outgoing` calls
of one batch are written together.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jarvis.common.errors import InvalidInput, NotFound
from jarvis.common.message_states import MESSAGE_STATES
from jarvis.store import schema
from jarvis.store.records import Contact, HistoryPage, StoredMessage, copy_unchecked
from jarvis.store.rows import (
    ADVANCE_IN_CONVERSATION_SQL,
    ADVANCE_SQL,
    COMPACTED_STATES,
    CONTACT_COLUMNS,
    DUMP_FORMAT,
    DUMP_VERSION,
    LOADABLE_DUMP_VERSIONS,
    MESSAGE_COLUMNS,
    DuplicateMessage,
    Rows,
    StoreNotEmpty,
    chunks,
    contact_from_json,
    contact_to_json,
    history_bound,
    message_from_json,
)
from jarvis.store.schema import OUTBOX_WHERE


def put_contact(db: Rows, contact: Contact) -> None:
    """Insert *contact*, or replace the stored contact with the same uid.

    :returns: None once stored.
    """
    uid_index = db.index(contact.uid)
    profile = json.dumps(
        {
            "uid": contact.uid,
            "public_key": base64.b64encode(bytes(contact.public_key)).decode("ascii"),
            "name": contact.name,
            "alias": contact.alias,
            "addresses": list(contact.addresses),
        }
    ).encode()
    db.conn.execute(
        f"INSERT OR REPLACE INTO contacts ({CONTACT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            uid_index,
            db.seal(profile, "contacts", "profile", uid_index),
            int(contact.verified),
            int(contact.blocked),
            int(contact.muted),
            int(contact.read_receipts),
            float(contact.added_at),
        ),
    )


def get_contact(db: Rows, uid: str) -> Contact | None:
    """:returns: the contact whose uid is *uid*, or None."""
    row = db.conn.execute(
        f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE uid_index = ?", (db.index(uid),)
    ).fetchone()
    return None if row is None else db.contact_from_row(row)


def list_contacts(db: Rows) -> list[Contact]:
    """:returns: every contact, sorted by alias or name."""
    rows = db.conn.execute(f"SELECT {CONTACT_COLUMNS} FROM contacts").fetchall()
    contacts = [db.contact_from_row(row) for row in rows]
    contacts.sort(key=lambda c: ((c.alias or c.name).casefold(), c.uid))
    return contacts


def remove_contact(db: Rows, uid: str, *, with_history: bool) -> bool:
    """Remove a contact, and with *with_history* its messages, outbox and marker.

    Without *with_history* the conversation stays readable by uid.

    :returns: whether a contact was removed.
    """
    conversation = db.index(uid)
    removed = db.conn.execute("DELETE FROM contacts WHERE uid_index = ?", (conversation,)).rowcount
    if with_history:
        db.conn.execute("DELETE FROM messages WHERE conversation = ?", (conversation,))
        db.conn.execute("DELETE FROM conversations WHERE conversation = ?", (conversation,))
        db.forget_conversation(conversation)
    return removed > 0


def add_outgoing(db: Rows, message: StoredMessage) -> StoredMessage:
    """Store an outgoing message and (if queued or sent) its outbox entry, atomically.

    The same write path as a batch of them (the store writes a run of these together).

    :returns: *message* carrying its assigned ``seq``.
    :raises DuplicateMessage: if the id is already stored for this contact.
    :raises InvalidInput: if the message is not outgoing.
    """
    try:
        return db.add_outgoing_many([message])[0]
    except sqlite3.IntegrityError:
        if db.exists(db.index(message.contact), message.id):
            raise DuplicateMessage(f"message {message.id} is already stored") from None
        raise


def add_incoming(db: Rows, message: StoredMessage) -> StoredMessage | None:
    """Store an incoming message unless its id is already stored for its contact.

    The first message of a new unread run (no other unread incoming message in the
    conversation) becomes its "new messages" marker, in the same transaction.

    :returns: *message* carrying its assigned ``seq``, or None if it was a duplicate.
    """
    if message.direction != "in":
        raise InvalidInput("add_incoming takes an incoming message (direction 'in')")
    seq = db.append(message)
    if seq is None:
        return None
    # The first message of a new unread run places the conversation's "new messages"
    # marker; it stays there (also once read) until the next unread run begins.
    conversation = db.index(message.contact)
    db.conn.execute(
        "UPDATE conversations SET marker = ? WHERE conversation = ? AND NOT EXISTS ("
        "SELECT 1 FROM messages WHERE conversation = ? AND direction = 'in' "
        "AND state = 'received' AND id != ?)",
        (message.id, conversation, conversation, message.id),
    )
    return copy_unchecked(message, seq=seq)


def advance_states(
    db: Rows, mids: Sequence[str], state: str, at: float, uids: Sequence[str] | None = None
) -> list[tuple[str, str, str]]:
    """Advance the messages *mids* to *state* (states never move backwards), without reading
    back (or opening) the rows.

    Per id, the first row (in rowid order) whose state may advance to *state* advances:
    one ``UPDATE ... RETURNING`` per :data:`_PER_STATEMENT` ids, whose WHERE clause holds the
    rank rule of :mod:`jarvis.common.message_states` (a delivered or read message leaves the outbox
    index by its new state).  An
    id given twice counts once.

    With *uids* (one per id), each id advances only in that contact's conversation: the
    entries of one group message share an id, one per member (issue 17), and an ack from one
    member must not move another's.

    :returns: ``(id, contact, state)`` of each message that changed, in the order given.
    """
    if state not in MESSAGE_STATES:
        raise InvalidInput(f"{state!r} is not a message state")
    if uids is not None:
        return _advance_in_conversations(db, mids, uids, state, at)
    sql = ADVANCE_SQL.get(state)
    if sql is None:  # 'queued' and 'received' are first states: nothing advances to them
        return []
    conn = db.conn
    unique = list(dict.fromkeys(mids))
    moved: dict[str, bytes] = {}
    for chunk in chunks(unique):
        values = ", ".join(["(?)"] * len(chunk))
        rows = conn.execute(f"WITH ids(id) AS (VALUES {values}) {sql}", (*chunk, state, at))
        returned = rows.fetchall()
        moved.update((row[0], row[1]) for row in returned)
        if state in COMPACTED_STATES:
            db.compact_group_entries(returned)
    changed: list[tuple[str, str, str]] = []
    for mid in unique:
        conversation = moved.get(mid)
        if conversation is not None:
            uid = db.uid_of(conversation)
            changed.append((mid, uid, state))
    return changed


def _advance_in_conversations(
    db: Rows, mids: Sequence[str], uids: Sequence[str], state: str, at: float
) -> list[tuple[str, str, str]]:
    """:func:`advance_states` per ``(id, uid)`` pair."""
    if len(uids) != len(mids):
        raise InvalidInput("one contact per message id")
    sql = ADVANCE_IN_CONVERSATION_SQL.get(state)
    if sql is None:
        return []
    pairs = list(dict.fromkeys(zip(mids, uids, strict=True)))
    moved: set[tuple[str, bytes]] = set()
    for chunk in chunks(pairs):
        values = ", ".join(["(?, ?)"] * len(chunk))
        params = [x for mid, uid in chunk for x in (mid, db.index(uid))]
        rows = db.conn.execute(
            f"WITH ids(id, conversation) AS (VALUES {values}) {sql}", (*params, state, at)
        )
        returned = rows.fetchall()
        moved.update((row[0], bytes(row[1])) for row in returned)
        if state in COMPACTED_STATES:
            db.compact_group_entries(returned)
    return [(mid, uid, state) for mid, uid in pairs if (mid, db.index(uid)) in moved]


def advance_via(
    db: Rows,
    mids: Sequence[str],
    state: str,
    at: float,
    path: str,
    uids: Sequence[str] | None = None,
) -> list[tuple[str, str, str]]:
    """:func:`advance_states`, and record that the outgoing messages *mids* left by *path*
    (``"mailbox"``: deposited in the contact's mailbox), in one transaction."""
    changed = advance_states(db, mids, state, at, uids)
    if uids is not None:
        db.conn.executemany(
            "UPDATE messages SET path = ? WHERE direction = 'out' AND id = ? AND conversation = ?",
            [(path, mid, db.index(uid)) for mid, uid in zip(mids, uids, strict=True)],
        )
        return changed
    for chunk in chunks(list(dict.fromkeys(mids))):
        values = ", ".join(["?"] * len(chunk))
        db.conn.execute(
            f"UPDATE messages SET path = ? WHERE direction = 'out' AND id IN ({values})",
            (path, *chunk),
        )
    return changed


def paths_of(db: Rows, uid: str, mids: Sequence[str]) -> dict[str, str]:
    """The recorded path (:func:`advance_via`) of those of *uid*'s messages *mids* that have
    one."""
    conversation = db.index(uid)
    found: dict[str, str] = {}
    for chunk in chunks(list(mids)):
        values = ", ".join(["?"] * len(chunk))
        rows = db.conn.execute(
            f"SELECT id, path FROM messages WHERE conversation = ? AND id IN ({values}) "
            "AND path IS NOT NULL",
            (conversation, *chunk),
        )
        found.update(rows.fetchall())
    return found


def get_message(db: Rows, mid: str) -> StoredMessage | None:
    """:returns: the message with this id, or None.

    :raises CorruptRow: if the stored row does not open.
    """
    row = db.conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? ORDER BY rowid LIMIT 1", (mid,)
    ).fetchone()
    return None if row is None else db.message_from_row(row)


def outbox(db: Rows, uid: str) -> list[StoredMessage]:
    """:returns: the undelivered outgoing messages to *uid*,
    oldest first.
    """
    rows = db.conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation = ? AND {OUTBOX_WHERE} "
        "ORDER BY seq",
        (db.index(uid),),
    ).fetchall()
    return [db.message_from_row(row) for row in rows]


def outbox_page(
    db: Rows, uid: str, *, after_seq: int, limit: int, max_bytes: int
) -> tuple[list[StoredMessage], bool]:
    """The next undelivered outgoing messages to *uid* after *after_seq*, oldest first.

    Rows are read one by one and reading stops at *limit* messages or once the sealed bodies
    would pass *max_bytes* (one message at least), so a page never holds more than that in
    memory however large the outbox is.

    :returns: the messages, and whether more follow them.
    """
    limit = max(1, limit)
    cursor = db.conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation = ? AND {OUTBOX_WHERE} "
        "AND seq > ? ORDER BY seq LIMIT ?",
        (db.index(uid), after_seq, limit + 1),
    )
    messages: list[StoredMessage] = []
    size = 0
    more = False
    for row in cursor:
        if len(messages) >= limit or (messages and size + len(row[9]) > max_bytes):
            more = True
            break
        size += len(row[9])
        messages.append(db.message_from_row(row))
    cursor.close()
    return messages, more


def deliver_through(db: Rows, uid: str, mid: str, at: float) -> list[tuple[str, str, str]]:
    """Mark delivered every undelivered outgoing message to *uid* up to message *mid*.

    The peer said (in its Resume record) that it stored *mid* and everything we sent it
    before; an id that is not one of our messages to *uid* changes nothing.

    :returns: ``(id, uid, "delivered")`` per message that changed, in conversation order.
    """
    conversation = db.index(uid)
    row = db.conn.execute(
        "SELECT seq FROM messages WHERE id = ? AND conversation = ? AND direction = 'out'",
        (mid, conversation),
    ).fetchone()
    if row is None:
        return []
    rows = db.conn.execute(
        f"UPDATE messages SET state = 'delivered', delivered = ? WHERE conversation = ? "
        f"AND {OUTBOX_WHERE} AND seq <= ? RETURNING seq, id, rowid, body",
        (at, conversation, row[0]),
    ).fetchall()
    db.compact_group_entries((mid, conversation, rowid, body) for _, mid, rowid, body in rows)
    return [(changed, uid, "delivered") for _, changed, _, _ in sorted(rows)]


def history(
    db: Rows,
    uid: str,
    *,
    limit: int = 50,
    before: str | int | None = None,
    after: str | int | None = None,
) -> HistoryPage:
    """Return a page of the conversation with *uid*, newest message first.

    Without *after*, the page holds the newest messages (older than *before* when given);
    with *after*, it holds the oldest messages newer than *after* (and older than *before*
    when given), still newest first: that pages forward.

    :param limit: the most messages in the page, at least 1 (the core caps it at
        :data:`jarvis.core.limits.MAX_HISTORY_PAGE`).
    :param before: a cursor this store returned (``next_cursor``) or a message id of the
        conversation: only older messages.
    :param after: a cursor (``newer_cursor``) or a message id: only newer messages.
    :returns: a :class:`~jarvis.store.records.HistoryPage`.
    :raises InvalidInput: for a bad limit or cursor.
    :raises NotFound: for a message id not in this conversation.
    """
    if not isinstance(limit, int) or limit < 1:
        raise InvalidInput("a history page holds at least 1 message")
    before, after = history_bound(before), history_bound(after)
    # keyset paging on seq (never OFFSET): each page costs its own rows whatever its depth
    conversation = db.index(uid)
    where = "conversation = ?"
    params: list[Any] = [conversation]
    if before is not None:
        where += " AND seq < ?"
        params.append(db.seq_of(conversation, before))
    if after is not None:
        where += " AND seq > ?"
        params.append(db.seq_of(conversation, after))
    # with after, the page holds the oldest messages newer than it (paging forward)
    order = "DESC" if after is None else "ASC"
    rows = db.conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {where} ORDER BY seq {order} LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    chosen = [db.message_from_row(row) for row in rows[:limit]]
    more = len(rows) > limit
    if after is None:
        return HistoryPage(tuple(chosen), str(chosen[-1].seq) if more else None)
    return HistoryPage(
        tuple(reversed(chosen)), None, newer_cursor=str(chosen[-1].seq) if more else None
    )


def unread_counts(db: Rows) -> dict[str, int]:
    """:returns: uid -> number of incoming messages not read
    (conversations with none are left out).
    """
    rows = db.conn.execute(
        "SELECT conversation, count(*) FROM messages "
        "WHERE direction = 'in' AND state = 'received' GROUP BY conversation"
    ).fetchall()
    return {db.uid_of(conversation): count for conversation, count in rows}


def mark_read(
    db: Rows, uid: str, *, up_to: str | None = None, at: float, receipts: bool = False
) -> list[str]:
    """Mark incoming messages from *uid* read, all of them or up to message *up_to*.

    :param receipts: whether the sender is owed read receipts for them (they stay owed,
        :meth:`receipts_due`, until :meth:`clear_receipts`).
    :returns: the ids newly marked read, oldest first.
    :raises NotFound: if *up_to* is not in this conversation.
    """
    conversation = db.index(uid)
    query = (
        "SELECT rowid, id FROM messages "
        "WHERE conversation = ? AND direction = 'in' AND state = 'received'"
    )
    params: tuple[Any, ...] = (conversation,)
    if up_to is not None:
        row = db.conn.execute(
            "SELECT seq FROM messages WHERE conversation = ? AND id = ?",
            (conversation, up_to),
        ).fetchone()
        if row is None:
            raise NotFound(f"message {up_to} is not in this conversation")
        query += " AND seq <= ?"
        params += (row[0],)
    rows = db.conn.execute(query + " ORDER BY seq", params).fetchall()
    due = 1 if receipts else 0
    db.conn.executemany(
        "UPDATE messages SET state = 'read', read = ?, receipt_due = ? WHERE rowid = ?",
        [(at, due, rowid) for rowid, _ in rows],
    )
    return [mid for _, mid in rows]


def receipts_due(db: Rows, uid: str) -> list[str]:
    """Return the ids of *uid*'s messages read here whose read receipt is still owed,
    oldest first.
    """
    rows = db.conn.execute(
        "SELECT id FROM messages WHERE conversation = ? AND receipt_due = 1 ORDER BY seq",
        (db.index(uid),),
    ).fetchall()
    return [row[0] for row in rows]


def clear_receipts(db: Rows, uid: str, mids: Sequence[str]) -> None:
    """Note that the read receipts of *message_ids* (from *uid*) were written to a session."""
    conversation = db.index(uid)
    db.conn.executemany(
        "UPDATE messages SET receipt_due = 0 WHERE id = ? AND conversation = ? AND receipt_due = 1",
        [(mid, conversation) for mid in mids],
    )


def last_activity(db: Rows) -> dict[str, float]:
    """:returns: uid -> the newest message's ``created`` time."""
    rows = db.conn.execute(
        "SELECT conversation, last_activity FROM conversations WHERE last_activity IS NOT NULL"
    ).fetchall()
    return {db.uid_of(conversation): when for conversation, when in rows}


def set_marker(db: Rows, uid: str, mid: str | None) -> None:
    """Set (or with None clear) the "new messages" marker of the conversation with *uid*."""
    conversation = db.index(uid)
    db.ensure_conversation(conversation, uid)
    db.conn.execute(
        "UPDATE conversations SET marker = ? WHERE conversation = ?", (mid, conversation)
    )


def get_marker(db: Rows, uid: str) -> str | None:
    """:returns: the marker's message id, or None."""
    row = db.conn.execute(
        "SELECT marker FROM conversations WHERE conversation = ?", (db.index(uid),)
    ).fetchone()
    return None if row is None else row[0]


def set_setting(db: Rows, key: str, value: str) -> None:
    """Store the setting *key* (name and value are both encrypted)."""
    if not isinstance(key, str) or not key or not isinstance(value, str):
        raise InvalidInput("a setting is a non-empty name and a string value")
    key_index = db.setting_index(key)
    db.conn.execute(
        "INSERT OR REPLACE INTO settings (key_index, name, value) VALUES (?, ?, ?)",
        (
            key_index,
            db.seal(key.encode(), "settings", "name", key_index),
            db.seal(value.encode(), "settings", "value", key_index),
        ),
    )


def get_setting(db: Rows, key: str) -> str | None:
    """:returns: the value of setting *key*, or None."""
    key_index = db.setting_index(key)
    row = db.conn.execute("SELECT value FROM settings WHERE key_index = ?", (key_index,)).fetchone()
    if row is None:
        return None
    return db.unseal(row[0], "settings", "value", "a setting", key_index).decode()


def settings_named(db: Rows, prefix: str) -> dict[str, str]:
    """:returns: every setting whose name starts with *prefix*, by name (names are sealed:
    every setting is opened to find them)."""
    found: dict[str, str] = {}
    rows = db.conn.execute("SELECT key_index, name, value FROM settings").fetchall()
    for key_index, name, value in rows:
        key = db.unseal(name, "settings", "name", "a setting", key_index).decode()
        if key.startswith(prefix):
            found[key] = db.unseal(value, "settings", "value", "a setting", key_index).decode()
    return found


def change_settings(db: Rows, values: Mapping[str, str], removed: Iterable[str] = ()) -> None:
    """Store the settings *values* and delete the settings named in *removed*, in one write
    (each setting sealed as :func:`set_setting` seals it)."""
    for key, value in values.items():
        set_setting(db, key, value)
    for key in removed:
        db.conn.execute("DELETE FROM settings WHERE key_index = ?", (db.setting_index(key),))


def dump(db: Rows) -> dict[str, Any]:
    """Return everything in the store as a JSON-able dict of PLAINTEXT (for an export,
    which the caller seals at once; never write it to disk as is).

    :returns: ``format``, ``version``, ``contacts``, ``messages``,
        ``markers`` and ``settings``.
    """
    conn = db.conn
    contacts = [contact_to_json(c) for c in list_contacts(db)]
    messages = [
        {**dataclasses.asdict(db.message_from_row(row[:-1])), "path": row[-1]}
        for row in conn.execute(f"SELECT {MESSAGE_COLUMNS}, path FROM messages")
    ]
    # By uid, not by blind index: the same data dumps alike under any index key.
    messages.sort(key=lambda m: (m["contact"], m["seq"]))
    markers = {
        db.uid_of(conversation): marker
        for conversation, marker in conn.execute(
            "SELECT conversation, marker FROM conversations WHERE marker IS NOT NULL"
        ).fetchall()
    }
    settings = settings_named(db, "")
    return {
        "format": DUMP_FORMAT,
        "version": DUMP_VERSION,
        "contacts": contacts,
        "messages": messages,
        "markers": dict(sorted(markers.items())),
        "settings": dict(sorted(settings.items())),
    }


def load(db: Rows, dump: dict[str, Any]) -> None:
    """Load a :meth:`dump` into this store, all or nothing.

    :returns: None once loaded; it fails with
        :class:`StoreNotEmpty` if the store holds anything, or
        :class:`~jarvis.common.errors.InvalidInput` if the dump is malformed.
    """
    conn = db.conn
    for table in ("contacts", "conversations", "messages", "settings"):
        if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
            raise StoreNotEmpty("the message store is not empty: load an export into a new one")
    if not isinstance(dump, dict) or dump.get("format") != DUMP_FORMAT:
        raise InvalidInput("this is not a Jarvis store dump")
    if dump.get("version") not in LOADABLE_DUMP_VERSIONS:
        raise InvalidInput(f"store dump version {dump.get('version')!r} is not supported")
    for item in dump.get("contacts", []):
        put_contact(db, contact_from_json(item))
    last: dict[bytes, tuple[int, float]] = {}
    for item in dump.get("messages", []):
        path = None
        if isinstance(item, dict) and "path" in item:
            item = dict(item)
            path = item.pop("path")
            if path is not None and (not isinstance(path, str) or len(path) > 16):
                raise InvalidInput("a message in the dump has a malformed path")
        message = message_from_json(item)
        conversation = db.index(message.contact)
        db.ensure_conversation(conversation, message.contact)
        if db.exists(conversation, message.id):
            raise InvalidInput(f"message {message.id} appears twice in the dump")
        try:
            db.insert_message(message, conversation, message.seq)
        except sqlite3.IntegrityError:
            raise InvalidInput(f"message {message.id} in the dump repeats a seq")
        if path is not None:
            conn.execute(
                "UPDATE messages SET path = ? WHERE conversation = ? AND id = ?",
                (path, conversation, message.id),
            )
        seq, when = last.get(conversation, (0, message.created))
        last[conversation] = (max(seq, message.seq), max(when, message.created))
    db.forget_conversation()
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
        set_marker(db, uid, mid)
    for key, value in settings.items():
        set_setting(db, key, value)


def integrity_check(db: Rows) -> list[str]:
    """:returns: ``["ok"]``, or one line per problem found by
    ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``.
    """
    return schema.integrity_check(db.conn)
