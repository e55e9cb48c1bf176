"""User-facing errors shared by every layer.

Each class's docstring explains the problem and the fix; ``str(error)`` is one line that the CLI
and UI print as is.  ``kind`` is a stable machine-readable name that the local API maps to its
documented error codes (see :mod:`jarvis.ipc.jsonrpc`).  This module imports nothing from Jarvis.
"""

from __future__ import annotations


class JarvisError(Exception):
    """Base class of every error Jarvis reports to a user or a script."""

    kind = "error"


class Locked(JarvisError):
    """The identity is locked: unlock it with the master password first (``jarvis unlock``)."""

    kind = "locked"


class NoIdentity(JarvisError):
    """No identity exists in this data directory yet.

    Create one with ``jarvis init --name NAME``.
    """

    kind = "no_identity"


class IdentityExists(JarvisError):
    """An identity already exists in this data directory.

    Use another ``--data-dir`` for a second identity.
    """

    kind = "identity_exists"


class NotFound(JarvisError):
    """The contact or message named does not exist; ``jarvis contacts`` lists the contacts."""

    kind = "not_found"


class Ambiguous(JarvisError):
    """The name or uid prefix matches several contacts; give more characters of the uid."""

    kind = "ambiguous"


class TooLarge(JarvisError):
    """The input is larger than Jarvis accepts (a message is at most 64 KiB of UTF-8)."""

    kind = "too_large"


class InvalidInput(JarvisError):
    """An argument is malformed; the message names it and says what is expected."""

    kind = "invalid"


class DataDirError(JarvisError):
    """The data directory cannot be used as it is; the message says why and how to fix it."""

    kind = "data_dir"


class AlreadyRunning(JarvisError):
    """Another Jarvis daemon already uses this data directory.

    Stop it first (``jarvis daemon stop``) or use another ``--data-dir``.
    """

    kind = "already_running"


class CannotListen(JarvisError):
    """The daemon cannot listen where it was told to: another program holds that port or path.

    Another Jarvis daemon (of another data directory) is the usual holder of the default peer
    port; give one of them another with ``--listen tcp:PORT`` (peers) or ``--ipc`` (local API).
    """

    kind = "cannot_listen"


class DaemonNotRunning(JarvisError):
    """No Jarvis daemon answers for this data directory: start one with ``jarvis daemon start``."""

    kind = "not_running"


class DaemonBusy(JarvisError):
    """The data directory's daemon is running but refused the connection: its local API's
    accept queue is full (many clients connecting at once).  Try again in a moment."""

    kind = "busy"


class UntrustedDaemon(JarvisError):
    """The process answering on the daemon's socket runs as another user, so Jarvis sent it
    nothing (no password, no token, no request).

    Another user may have planted a fake daemon to steal your password.  Look at who owns the
    socket (``ls -l`` on the path, ``ss -xlp``), remove it, and start your own daemon; running
    Jarvis with ``XDG_RUNTIME_DIR`` set, or a data directory short enough to hold the socket,
    keeps the socket out of shared directories.
    """

    kind = "untrusted_daemon"


class StorageFull(JarvisError):
    """The disk holding the data directory is full: Jarvis could not write to its store.

    Nothing was written (the message was not queued).  Free some space on that disk, then
    retry; messages already queued stay queued and go out once space is available.
    """

    kind = "storage"


class MailboxUnreachable(JarvisError):
    """The mailbox named by the link does not answer (or answers with another key than the
    link's pin): check that the mailbox runs, that this machine reaches its address, and that
    the link was copied whole; then use it again."""

    kind = "mailbox_unreachable"


def reason_without_paths(error: BaseException | None) -> str:
    """One line saying why a file operation failed, without the file names an ``OSError``
    carries (``[Errno 2] No such file or directory: '/home/me/x'`` becomes ``No such file or
    directory``): the reason a transfer ends with is also told to the peer, which must not
    learn this device's paths."""
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error or "") or type(error).__name__
