"""Log observers for the daemon, and the pseudonyms that keep contacts out of the logs.

twistd writes human-readable text (to the terminal with ``-n``, to ``--logfile`` when detached);
the daemon gives twistd that observer itself (:func:`text_observer`) so that the file rotates
at :data:`ROTATE_BYTES` and keeps at most :data:`KEEP_ROTATED` old files.  The daemon adds a
JSON-lines observer writing to ``jarvis.log.json`` in the data directory, filtered by
``--log-level`` and rotated the same way, so scripts can read structured events.

Log events carry ids, lengths and fingerprints only: never message text, keys, passwords or
tokens, and never a contact's uid or a remote address.  Those are logged as
:func:`log_id` pseudonyms: the first 8 bytes (hex) of HMAC-SHA256 under a random per-install
key kept in the data directory (``log.key``), so one contact has the same pseudonym in every
line and every run, and the owner can map it back (``log_id`` of each contact), but the log
alone does not say who the contacts are or where they connect from.

Every log file is private (mode 0600): the daemon creates twistd's ``--logfile`` 0600 before twistd
opens it (:func:`prepare_private_file`), the rotating files are opened with mode 0600, and
:func:`open_private_append` creates and repairs the others' modes.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import stat
import sys
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

LEVELS = ("debug", "info", "warn", "error", "critical")

#: A log file is rotated when it reaches this size (bytes).
ROTATE_BYTES = 4 * 1024 * 1024
#: Rotated files kept per log (``jarvis.log.1`` ... ``jarvis.log.N``); older ones are deleted.
KEEP_ROTATED = 4
#: The per-install pseudonym key's file name in the data directory.
LOG_KEY_FILE = "log.key"

# until the daemon loads the per-install key: pseudonyms stable within this process only
_log_key = os.urandom(32)

_UID = re.compile(r"\b[a-z2-7]{52}\b")
_ADDRESS = re.compile(r"\[[0-9a-fA-F:.%]+\](?::\d+)?|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")

#: Twisted's own per-connection lines (``tcp.Port`` recovering from EMFILE): one per refused
#: socket, with the remote address.  Dropped from the daemon's logs.
_PER_CONNECTION_FORMATS = frozenset({"EMFILE recovery: Closed socket from {address}"})
#: ``ClientService``'s line before each retry (the peer dialler, :mod:`jarvis.net.dialling`):
#: it repeats for every unreachable contact at each backoff step, and the network already logs
#: each failed attempt with its reason.  Dropped.
_RETRY_FORMATS = frozenset({"Scheduling retry {attempt} to connect {endpoint} in {delay} seconds."})
#: Twisted's per-accept lines when out of descriptors: let through once per
#: :data:`NOISE_INTERVAL` each, since a flood repeats them at every accept.
_PER_ACCEPT_FORMATS = frozenset(
    {
        "EMFILE encountered; releasing reserved file descriptor.",
        "Re-reserving EMFILE recovery file descriptor.",
        "Could not accept new connection ({acceptError})",
    }
)
#: Seconds between two of the same per-accept line.
NOISE_INTERVAL = 60.0


def load_log_key(data_dir: str) -> bytes:
    """Return the per-install pseudonym key, creating ``log.key`` (0600) on first use."""
    path = os.path.join(data_dir, LOG_KEY_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) >= 32:
            return key[:32]
        os.unlink(path)  # damaged: start a new one (old pseudonyms no longer match)
        return load_log_key(data_dir)
    key = os.urandom(32)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def set_log_key(key: bytes) -> None:
    """Use *key* for every :func:`log_id` from now on (the daemon calls it at start)."""
    global _log_key
    _log_key = bytes(key)


def log_id(value: str | None) -> str:
    """Return the log pseudonym of a uid or an address: 16 hex digits (``None`` stays ``-``)."""
    if value is None:
        return "-"
    return hmac.new(_log_key, value.encode("utf-8"), hashlib.sha256).digest()[:8].hex()


def redact(text: str) -> str:
    """Return *text* (a reason, an error message) with uids and IP addresses pseudonymised."""
    text = _UID.sub(lambda m: log_id(m.group(0)), text)
    return _ADDRESS.sub(lambda m: "addr:" + log_id(m.group(0)), text)


class ConnectionNoiseFilter:
    """A log filter predicate for Twisted's per-connection lines.

    Lines naming a refused socket's remote address and ``ClientService``'s per-retry lines are
    dropped; the per-accept lines of
    descriptor exhaustion pass at most once per *interval* seconds of event time each.
    """

    def __init__(self, interval: float = NOISE_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def __call__(self, event: LogEvent) -> PredicateResult:
        fmt = event.get("log_format")
        if fmt in _PER_CONNECTION_FORMATS or fmt in _RETRY_FORMATS:
            return PredicateResult.no
        if fmt in _PER_ACCEPT_FORMATS:
            now = float(event.get("log_time", 0.0))
            last = self._last.get(fmt)
            if last is not None and now - last < self.interval:
                return PredicateResult.no
            self._last[fmt] = now
        return PredicateResult.maybe


class RotatingLogFile(LogFile):
    """Twisted's :class:`~twisted.python.logfile.LogFile`, counting as its old files only
    ``NAME.1``, ``NAME.2``... of its own name.

    Twisted's ``listLogs`` takes every ``NAME.*`` whose last dotted part is a number, so the
    JSON log's ``jarvis.log.json.2`` beside the text log ``jarvis.log`` counted as the text
    log's second old file: its rotation then renamed or removed ``jarvis.log.2``, which does
    not exist, and raised; the text log stayed at its cap and every line after it raised again
    (lost, and Twisted logged a traceback of it into the JSON log each time).
    """

    def listLogs(self) -> list[int]:
        prefix = os.path.basename(self.path) + "."
        found = []
        for name in os.listdir(self.directory):
            number = name[len(prefix) :]
            if name.startswith(prefix) and number.isascii() and number.isdigit():
                if int(number) > 0:
                    found.append(int(number))
        return sorted(found)


def rotating_file(
    path: str, *, rotate_bytes: int = ROTATE_BYTES, keep: int = KEEP_ROTATED
) -> LogFile:
    """Open *path* (mode 0600) for appending, rotated at *rotate_bytes*, *keep* old files."""
    directory, name = os.path.split(os.path.abspath(path))
    return RotatingLogFile(
        name, directory, rotateLength=rotate_bytes, defaultMode=0o600, maxRotatedFiles=keep
    )


def text_observer(
    twistd_options: Any, *, rotate_bytes: int = ROTATE_BYTES, keep: int = KEEP_ROTATED
) -> ILogObserver | None:
    """Return the text log observer twistd should use, or ``None`` to leave it to twistd.

    Mirrors twistd's own choice (``--logfile -`` or ``-n`` without ``--logfile``: standard
    output; otherwise ``--logfile``, default ``twistd.log``), but with a rotating, size-capped
    file and without Twisted's per-connection lines.  ``--syslog`` and ``--logger`` are left
    to twistd.

    :param twistd_options: twistd's ``ServerOptions`` (``DaemonOptions.parent``).
    :param rotate_bytes: the file rotates at this size.
    :param keep: rotated files kept.
    """
    if twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    logfile = twistd_options.get("logfile")
    if logfile == "-" or (twistd_options.get("nodaemon") and not logfile):
        inner: Any = textFileLogObserver(sys.stdout)
    else:
        inner = textFileLogObserver(
            cast(
                IO[Any],
                rotating_file(logfile or "twistd.log", rotate_bytes=rotate_bytes, keep=keep),
            )
        )
    noise: Any = ConnectionNoiseFilter()
    observer: Any = FilteringLogObserver(inner, [noise])
    return observer


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


def json_file_observer(
    path: str, level: LogLevel, *, rotate_bytes: int = ROTATE_BYTES, keep: int = KEEP_ROTATED
) -> tuple[ILogObserver, LogFile]:
    """Return an observer writing JSON lines at *level* and above to *path*, and its file.

    The file rotates at *rotate_bytes* and keeps *keep* rotated files.
    """
    f = rotating_file(path, rotate_bytes=rotate_bytes, keep=keep)
    predicate: Any = LogLevelFilterPredicate(defaultLogLevel=level)
    inner: Any = jsonFileLogObserver(f)  # type: ignore[arg-type]
    noise: Any = ConnectionNoiseFilter()
    observer: Any = FilteringLogObserver(inner, [predicate, noise])
    return observer, f
