"""The daemon's encrypted, crash-safe SQLite database (see ``docs/store.md``).

:class:`Store` runs every query on its own thread and returns Deferreds; the values it takes and
returns are in :mod:`jarvis.store.records`.  The store is open only while the identity is
unlocked.  This package must not import the global reactor: the caller passes it in.
"""

from jarvis.store.database import (
    CorruptRow,
    CorruptStore,
    DuplicateMessage,
    Store,
    StoreClosed,
    StoreNotEmpty,
    WrongStoreKey,
)
from jarvis.store.records import Contact, HistoryPage, StoredMessage
from jarvis.store.schema import SchemaTooNew

__all__ = [
    "Contact",
    "CorruptRow",
    "CorruptStore",
    "DuplicateMessage",
    "HistoryPage",
    "SchemaTooNew",
    "Store",
    "StoreClosed",
    "StoreNotEmpty",
    "StoredMessage",
    "WrongStoreKey",
]
