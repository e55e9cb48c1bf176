"""Writing a whole file atomically and safely: the one way Jarvis replaces or creates a file.

:func:`write_atomically` writes the content to a temporary file that it creates *exclusively*
(``O_CREAT|O_EXCL|O_NOFOLLOW``, an unpredictable name, as :func:`tempfile.mkstemp` does) in
the destination's own directory, syncs it, then moves it into place with one ``rename``
(``os.replace``) and syncs the directory.  So:

- nobody can steer the write elsewhere: a symbolic link planted at any name in that directory
  (the old predictable ``FILE.tmp<pid>`` included) is never opened or followed, and a file
  another user pre-created there never receives the content;
- the destination is replaced, never written into: a destination that is a symbolic link is
  replaced by the file itself (``rename`` does not follow a link at its target), and a
  pre-existing file (world-writable or not) keeps its old inode and content for whoever holds
  it open, while the name now points at a new file with the requested mode (0600 by default);
- with ``exclusive=True`` an existing destination (even a dangling symbolic link) is refused,
  atomically (``link`` never overwrites), so an export cannot clobber anything;
- a reader sees the old content or the new one, never a part, and after a crash at most a
  stray ``.NAME.*.tmp`` file of the writer's own remains (failures remove it at once).

This module does blocking file-system calls and fsyncs: call it from a thread (the daemon's
``run_blocking``, ``deferToThread``) or at start-up, never from a reactor callback of a running
daemon.  It imports no reactor.
"""

from __future__ import annotations

import errno
import os
import tempfile

__all__ = ["write_atomically", "write_text_atomically"]

#: ``link`` errors that mean "this file system has no hard links": fall back to a checked rename.
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS})


def write_atomically(
    path: str, content: bytes, *, mode: int = 0o600, exclusive: bool = False
) -> None:
    """Replace (or create) *path* with a file holding exactly *content*, with *mode*.

    :param path: the destination; its directory must exist.
    :param content: the bytes to write.
    :param mode: the new file's permission bits (applied with ``fchmod``, whatever the umask).
    :param exclusive: refuse if *path* already exists (a file, a directory or any symbolic
        link) instead of replacing it.
    :raises FileExistsError: with *exclusive*, if *path* exists.
    :raises OSError: if the directory cannot be written or the disk is full; no temporary file
        is left behind.
    """
    path = os.path.abspath(path)
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    placed = False
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
            placed = True
        sync_directory(directory)
    finally:
        if not placed:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def write_text_atomically(
    path: str, text: str, *, mode: int = 0o600, exclusive: bool = False
) -> None:
    """:func:`write_atomically` for UTF-8 text."""
    write_atomically(path, text.encode("utf-8"), mode=mode, exclusive=exclusive)


def _link_new(tmp: str, path: str) -> None:
    """Give the finished *tmp* the name *path* only if that name is free (the caller unlinks
    *tmp* afterwards)."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "file exists", path) from None
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
        # No hard links here (some FUSE and FAT file systems): check, then rename.  The window
        # between the two is the best this file system allows.
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", path) from None
        os.rename(tmp, path)


def sync_directory(directory: str) -> None:
    """Make a rename, link or unlink in *directory* durable; file systems that cannot sync a
    directory are let be (blocking: never on the reactor thread)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(dir_fd)
