"""Who answers on a local (AF_UNIX) socket, and the check every client makes before it sends
anything to the daemon.

A client must not trust a socket path alone: if another user controls the directory it names
(or a symbolic link on the way), the process answering may be theirs, and the first thing a
client sends can be the master password.  :func:`check_local_server` asks the kernel which uid
the listening process has (``SO_PEERCRED``, Linux) and refuses any uid but ours.  Where the
platform has no ``SO_PEERCRED`` it falls back to the owner of the socket file itself
(``lstat`` of the peer's path: a socket that is a symbolic link or belongs to another user is
refused), which is weaker: it trusts that the file at that path is the one the server bound.

This module does not import Twisted: the asyncio client (:mod:`jarvis.client`) uses it too.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jarvis.common.errors import UntrustedDaemon

__all__ = ["PeerCredentials", "check_local_server", "peer_credentials", "socket_owner"]

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class PeerCredentials:
    """The process at the other end of a UNIX socket, as the kernel recorded it at connect."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: Any) -> PeerCredentials | None:
    """Return the credentials of *sock*'s peer, or ``None`` if the platform cannot tell
    (no ``SO_PEERCRED``).

    :param sock: a connected ``socket.socket`` (or asyncio's ``TransportSocket`` wrapper).
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def socket_owner(path: str) -> int:
    """Return the uid owning the socket file at *path* (not following a symbolic link).

    :raises UntrustedDaemon: if *path* is not a socket (a symbolic link, say).
    """
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise UntrustedDaemon(
            f"{path} is not a socket (a symbolic link or another file): nothing was sent; "
            "remove it and start your daemon again"
        )
    return st.st_uid


def check_local_server(
    sock: Any,
    *,
    uid: int | None = None,
    credentials: Callable[[Any], PeerCredentials | None] = peer_credentials,
    owner: Callable[[str], int] = socket_owner,
) -> None:
    """Refuse a UNIX-socket server that does not run as *uid* (default: our own uid).

    Call it once connected and before writing anything.  Other socket families (loopback TCP,
    protected by the API token) pass unchecked.

    :param sock: the connected client socket (``socket.socket`` or asyncio's
        ``TransportSocket``).
    :param uid: the uid the server must have; tests inject another.
    :param credentials: how to read the peer's credentials (tests inject a fake).
    :param owner: the fallback without ``SO_PEERCRED``: the socket file's owner.
    :raises UntrustedDaemon: naming the uid found and what to do.
    """
    if sock.family != socket.AF_UNIX:
        return
    expected = os.getuid() if uid is None else uid
    found = credentials(sock)
    if found is not None:
        actual = found.uid
        where = f"process {found.pid}"
    else:
        path = sock.getpeername()
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        actual = owner(path)
        where = f"the socket file {path}"
    if actual != expected:
        raise UntrustedDaemon(
            f"the local API socket is served by uid {actual} ({where}), not by you "
            f"(uid {expected}): nothing was sent to it; another user may be impersonating the "
            "daemon to catch your password: remove that socket and start your own daemon"
        )
