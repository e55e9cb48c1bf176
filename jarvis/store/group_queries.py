"""The store's queries for private groups (``group_records``, schema version 4).

Each row holds one group record, sealed: a state, a message, an invitation or a per-group
setting (``kind``).  ``item`` is a blind index of the row's identity (kind and hash, or kind and
group id), so storing the same record twice is a no-op and nothing readable is left in the
clear.  Run them with :meth:`jarvis.store.database.Store.run` like :mod:`jarvis.store.queries`.
"""

from __future__ import annotations

from jarvis.store.rows import Rows, chunks

#: What a row holds.
KINDS = frozenset({"state", "message", "invite", "setting"})


def _item(db: Rows, kind: str, key: bytes) -> bytes:
    return db.blind("group-" + kind, key.hex())


def put_group_record(
    db: Rows, kind: str, key: bytes, data: bytes, *, replace: bool = False
) -> bool:
    """Store *data* as the record *kind*/*key*; with *replace*, over the one held.

    :returns: whether a row was written (False: that record was already stored).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown group record kind {kind!r}")
    item = _item(db, kind, key)
    sealed = db.seal(data, "group_records", "data", item)
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    cursor = db.conn.execute(
        f"{verb} INTO group_records (item, kind, data) VALUES (?, ?, ?)", (item, kind, sealed)
    )
    return cursor.rowcount > 0


def put_group_records(db: Rows, records: list[tuple[str, bytes, bytes]]) -> int:
    """Store many ``(kind, key, data)`` records (never replacing); :returns: how many were new."""
    return sum(put_group_record(db, kind, key, data) for kind, key, data in records)


def delete_group_record(db: Rows, kind: str, key: bytes) -> None:
    """Delete the record *kind*/*key* if held."""
    db.conn.execute("DELETE FROM group_records WHERE item = ?", (_item(db, kind, key),))


def load_group_records(db: Rows) -> list[tuple[str, bytes]]:
    """:returns: every ``(kind, data)``, in the order they were first stored."""
    rows = db.conn.execute("SELECT item, kind, data FROM group_records ORDER BY rowid").fetchall()
    return [
        (kind, db.unseal(data, "group_records", "data", "a group record", item))
        for item, kind, data in rows
    ]


def delivered_to(db: Rows, mids: list[str]) -> dict[str, list[str]]:
    """The members each of our group messages *mids* (hex ids) was delivered to: the
    contacts of the outgoing entries with that id in state delivered or read (one entry per
    member shares the group message's id).

    :returns: id -> uids, for the ids with at least one delivered entry.
    """
    found: dict[str, list[str]] = {}
    for chunk in chunks(list(dict.fromkeys(mids))):
        marks = ", ".join(["?"] * len(chunk))
        rows = db.conn.execute(
            f"SELECT id, conversation FROM messages WHERE direction = 'out' "
            f"AND state IN ('delivered', 'read') AND id IN ({marks})",
            tuple(chunk),
        ).fetchall()
        for mid, conversation in rows:
            found.setdefault(mid, []).append(db.uid_of(bytes(conversation)))
    return found
