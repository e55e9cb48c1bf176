"""Where Jarvis keeps its files, and the checks that keep them private.

The data directory (identity key file, database, logs, pid file) defaults to the platform's user
data directory; ``JARVIS_HOME`` or ``--data-dir`` override it.  The local API socket is
``ipc.sock`` in the data directory when that path fits in an AF_UNIX address, else it lives in a
per-user runtime directory (mode 0700, created without following symbolic links and checked with
``lstat``) under a short name derived from the data directory, so that every client finds the
daemon of a data directory without extra flags.

This module does blocking file-system calls: call it at start-up or from the CLI, not from
reactor callbacks of a running daemon.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile

from jarvis.common.errors import DataDirError

#: Default peer-to-peer listening endpoint: TCP port 7770 on every interface.
DEFAULT_PEER_PORT = 7770
DEFAULT_LISTEN = f"tcp:{DEFAULT_PEER_PORT}"

#: AF_UNIX socket paths must stay below this many bytes (108 on Linux, 104 on macOS).
MAX_UNIX_PATH = 100

ENDPOINT_FILE = "ipc.endpoint"
PIDFILE = "jarvis.pid"
LOGFILE = "jarvis.log"
JSON_LOGFILE = "jarvis.log.json"
TOKEN_FILE = "ipc.token"
LOCKFILE = "daemon.lock"
SOCKET_FILE = "ipc.sock"


def default_data_dir() -> str:
    """Return the data directory to use when none is given.

    :returns: ``$JARVIS_HOME`` if set, else the platform's user data directory for ``jarvis``.
    """
    env = os.environ.get("JARVIS_HOME")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    import platformdirs

    return platformdirs.user_data_dir("jarvis", appauthor=False)


def runtime_dir() -> str:
    """Return the per-user runtime directory for sockets, creating it with mode 0700.

    ``$XDG_RUNTIME_DIR/jarvis`` when that variable names a directory, else ``/tmp/jarvis-<uid>``
    (the shared temporary directory: su, cron, containers, some ssh sessions).  The directory is
    created with ``mkdir`` (which never follows a symbolic link) and then checked with ``lstat``
    (:func:`check_runtime_dir`), so a name planted in ``/tmp`` by another user is refused, never
    used.

    :raises DataDirError: if the directory is a symbolic link, belongs to another user or others
        can enter it; the message says how to fix it.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        path = os.path.join(base, "jarvis")
    else:
        path = os.path.join(tempfile.gettempdir(), f"jarvis-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise DataDirError(
            f"cannot create the runtime directory {path}: {e.strerror}: set XDG_RUNTIME_DIR to "
            "a private directory or pass --ipc"
        ) from e
    check_runtime_dir(path)
    return path


def check_runtime_dir(path: str, *, uid: int | None = None) -> None:
    """Refuse a socket directory that is not a real directory of ours that only we can enter.

    Unlike :func:`check_private_dir` this does not follow a symbolic link: a link, even to a
    directory of ours, may be re-pointed later by whoever planted it.

    :param uid: the owner required (default: our uid; tests inject another).
    :raises DataDirError: naming what is wrong and how to fix it.
    """
    expected = os.getuid() if uid is None else uid
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise DataDirError(
            f"the runtime directory {path} is a symbolic link (to {os.readlink(path)!r}), which "
            "someone else may have planted to catch your password: Jarvis will not use it; "
            f"remove it ('rm {path}') after checking who made it, or set XDG_RUNTIME_DIR"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirError(
            f"the runtime directory {path} is not a directory: remove it ('rm {path}') or set "
            "XDG_RUNTIME_DIR"
        )
    if st.st_uid != expected:
        raise DataDirError(
            f"the runtime directory {path} belongs to uid {st.st_uid}, not to you "
            f"(uid {expected}): another user may have created it to catch your password; "
            "Jarvis will not use it: set XDG_RUNTIME_DIR to a private directory, or ask the "
            f"administrator to remove {path}"
        )
    if st.st_mode & 0o077:
        raise DataDirError(
            f"the runtime directory {path} is accessible to other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): run 'chmod 700 {path}'"
        )


def _short_id(data_dir: str) -> str:
    return hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:12]


def default_ipc_socket(data_dir: str) -> str:
    """Return the default local API socket path for *data_dir*.

    ``DATA_DIR/ipc.sock`` when that path fits in an AF_UNIX address and needs no escaping in an
    endpoint description (the data directory is private already, and daemon and clients agree
    on it whatever their environment), else
    ``<runtime directory>/<hash of the data directory>.sock`` (see :func:`runtime_dir`).

    :raises DataDirError: if the resulting path would be too long for AF_UNIX, or the runtime
        directory is unsafe.
    """
    in_data_dir = os.path.join(os.path.abspath(data_dir), SOCKET_FILE)
    # the path goes into endpoint descriptions, where ':', '=' and '\\' are syntax
    if len(in_data_dir.encode()) <= MAX_UNIX_PATH and not set(":=\\") & set(in_data_dir):
        return in_data_dir
    path = os.path.join(runtime_dir(), f"{_short_id(data_dir)}.sock")
    if len(path.encode()) > MAX_UNIX_PATH:
        raise DataDirError(
            f"socket path {path!r} is too long for a UNIX socket: set XDG_RUNTIME_DIR to a "
            "shorter directory or pass --ipc"
        )
    return path


def default_ipc_endpoint(data_dir: str) -> str:
    """Return the default IPC server endpoint description (a 0600 UNIX socket with a lock file)."""
    return f"unix:{default_ipc_socket(data_dir)}:mode=600:lockfile=1"


def client_endpoint_for(data_dir: str) -> str:
    """Return a ``clientFromString`` description that reaches the daemon of *data_dir*.

    A running daemon writes its real endpoint into ``ipc.endpoint`` in the data directory; without
    that file the default UNIX socket is assumed.  An existing data directory must be private
    (ours, mode 0700): a file another user could have written there must not choose where the
    password goes.

    :raises DataDirError: if the data directory exists but is not private.
    """
    if os.path.lexists(data_dir):
        check_private_dir(data_dir)
    try:
        with open(os.path.join(data_dir, ENDPOINT_FILE), encoding="utf-8") as f:
            text = f.read().strip()
        if text:
            return text
    except OSError:
        pass
    return f"unix:{default_ipc_socket(data_dir)}"


def client_token_for(data_dir: str, endpoint: str) -> str | None:
    """Return the token a client sends on *endpoint*: the data directory's loopback TCP token
    for a ``tcp:`` endpoint, ``None`` for a UNIX socket (or when the token file is unreadable).
    """
    if not endpoint.startswith("tcp:"):
        return None
    try:
        with open(token_path(data_dir), encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def pidfile_path(data_dir: str) -> str:
    """Return the daemon's pid file path in *data_dir*."""
    return os.path.join(data_dir, PIDFILE)


def logfile_path(data_dir: str) -> str:
    """Return the daemon's text log file path (used when it runs detached)."""
    return os.path.join(data_dir, LOGFILE)


def json_logfile_path(data_dir: str) -> str:
    """Return the daemon's JSON-lines log file path."""
    return os.path.join(data_dir, JSON_LOGFILE)


def token_path(data_dir: str) -> str:
    """Return the path of the 0600 file holding the loopback TCP API token."""
    return os.path.join(data_dir, TOKEN_FILE)


def endpoint_file_path(data_dir: str) -> str:
    """Return the path of the file where the daemon records its IPC client endpoint."""
    return os.path.join(data_dir, ENDPOINT_FILE)


def lock_path(data_dir: str) -> str:
    """Return the path of the daemon's data-directory lock."""
    return os.path.join(data_dir, LOCKFILE)


def check_private_dir(path: str) -> None:
    """Refuse a directory that another user owns or that group or others can access.

    :raises DataDirError: naming the problem and the ``chmod``/``chown`` that fixes it.
    """
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise DataDirError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): "
            "use a directory you own"
        )
    if st.st_mode & 0o077:
        raise DataDirError(
            f"{path} is accessible to other users (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"run 'chmod 700 {path}'"
        )


def ensure_data_dir(path: str) -> str:
    """Create *path* with mode 0700 if needed and check that it is private.

    :returns: the absolute path.
    :raises DataDirError: if it cannot be created or other users can read it.
    """
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise DataDirError(f"cannot create data directory {path}: {e.strerror}") from e
    check_private_dir(path)
    return path
