"""Log observers for the daemon.

twistd already writes human-readable text (to the terminal with ``-n``, to ``--logfile`` when
detached).  The daemon adds a JSON-lines observer writing to ``jarvis.log.json`` in the data
directory, filtered by ``--log-level``, so scripts can read structured events.  Log events carry
ids, lengths and fingerprints only: never message text, keys, passwords or tokens.
"""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
)

LEVELS = ("debug", "info", "warn", "error", "critical")


def parse_level(name: str) -> LogLevel:
    """Return the :class:`LogLevel` called *name* (one of :data:`LEVELS`).

    :raises ValueError: for an unknown level name.
    """
    if name not in LEVELS:
        raise ValueError(f"unknown log level {name!r}: use one of {', '.join(LEVELS)}")
    return LogLevel.levelWithName(name)


def open_private_append(path: str) -> io.TextIOWrapper:
    """Open *path* for appending, creating it with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return open(fd, "a", encoding="utf-8")


def json_file_observer(path: str, level: LogLevel) -> tuple[ILogObserver, io.TextIOWrapper]:
    """Return an observer writing JSON lines at *level* and above to *path*, and its file."""
    f = open_private_append(path)
    predicate: Any = LogLevelFilterPredicate(defaultLogLevel=level)
    inner: Any = jsonFileLogObserver(f)
    observer: Any = FilteringLogObserver(inner, [predicate])
    return observer, f
