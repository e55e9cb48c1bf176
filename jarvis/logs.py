"""Log observers for the daemon.

twistd already writes human-readable text (to the terminal with ``-n``, to ``--logfile`` when
detached).  The daemon adds a JSON-lines observer writing to ``jarvis.log.json`` in the data
directory, filtered by ``--log-level``, so scripts can read structured events.  Log events carry
ids, lengths and fingerprints only: never message text, keys, passwords or tokens.

Every log file is private (mode 0600): the daemon creates twistd's ``--logfile`` 0600 before twistd
opens it (:func:`prepare_private_file`; a detached twistd then runs with umask 077, so rotated
logs are private too), and :func:`open_private_append` creates and repairs the others' modes.
"""

from __future__ import annotations

import io
import os
import stat
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

LEVELS = ("debug", "info", "warn", "error", "critical")


def parse_level(name: str) -> LogLevel:
    """Return the :class:`LogLevel` called *name* (one of :data:`LEVELS`).

    :raises ValueError: for an unknown level name.
    """
    if name not in LEVELS:
        raise ValueError(f"unknown log level {name!r}: use one of {', '.join(LEVELS)}")
    return LogLevel.levelWithName(name)


def open_private_append(path: str) -> io.TextIOWrapper:
    """Open *path* for appending, creating it with mode 0600.

    A symbolic link at *path* is refused (``O_NOFOLLOW``: ``OSError`` ``ELOOP``), and an existing
    log that others could read (left by an older version, or created under a loose umask) is
    made 0600 again.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "a", encoding="utf-8")


def prepare_private_file(path: str) -> None:
    """Create *path* empty with mode 0600 if it does not exist, else make it 0600 if others
    could read it (a symbolic link is left alone).

    For twistd's ``--logfile``: twistd opens it after the daemon's service is built, with the
    process umask (often 022, so world-readable); created first, it is only appended to.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        os.chmod(path, 0o600)


def json_file_observer(path: str, level: LogLevel) -> tuple[ILogObserver, io.TextIOWrapper]:
    """Return an observer writing JSON lines at *level* and above to *path*, and its file."""
    f = open_private_append(path)
    predicate: Any = LogLevelFilterPredicate(defaultLogLevel=level)
    inner: Any = jsonFileLogObserver(f)
    observer: Any = FilteringLogObserver(inner, [predicate])
    return observer, f
