"""The sending side of a file transfer, on disk: hash a file into an offer, read its chunks.

:func:`make_offer` reads the file once to compute each chunk's BLAKE3 hash and the content hash
(:func:`~jarvis.protocol.transfer.manifest_root`), and draws the transfer id and secret.
:class:`FileSource` reads pieces of chunks into the caller's buffer with ``preadv`` and checks,
before the sealed pieces leave, that the file is still the one that was hashed: same device,
inode, size, modification and change times (``fstat``, taken when the file was hashed). Any
write to the file changes its change time (which no user can set back), so a file changed after
the offer fails the transfer at the next batch of pieces instead of sending content the receiver
would refuse. This replaces a hash of every chunk (0.6 CPU ms per MiB with SHA-256 then): the
receiver still checks every chunk against the manifest and the whole file against the offered
hash, so a change this misses (a file system that does not keep those times) still never lands
under the file's name -- the receiver refuses the chunk. A :class:`PreparedFile` without that
signature (built by hand) falls back to hashing each chunk.

Every function blocks on the file system: run it off the reactor thread.  No reactor import.
"""

from __future__ import annotations

import mimetypes
import mmap
import os
import threading
from dataclasses import dataclass, field, replace

from jarvis.crypto.transfer_keys import new_transfer_secret
from jarvis.files.hashing import HASH_BLOCK, hash_range
from jarvis.protocol.transfer import (
    DEFAULT_CHUNK_SIZE,
    MAX_FOLDER_BYTES,
    MAX_FOLDER_DEPTH,
    PIECE_SIZE,
    Offer,
    chunk_count,
    chunk_hash,
    chunk_length,
    manifest_root,
)

#: Most files of one folder sent whole: as many offers as a receiver lists from one contact
#: at a time (``jarvis.core.transfers.MAX_OPEN_FROM_PEER``); a bigger folder is better sent
#: as one archive.
MAX_FOLDER_FILES = 500


class SourceChanged(Exception):
    """The file being sent changed after it was offered (a chunk no longer matches its hash).

    The transfer is cancelled: offer the file again.
    """


@dataclass(frozen=True)
class PreparedFile:
    """A file ready to offer: the offer and the chunk hashes (the manifest)."""

    path: str
    offer: Offer
    chunk_hashes: tuple[bytes, ...]
    #: ``(device, inode, size, mtime ns, ctime ns)`` of the file as hashed, or ``None`` if it
    #: changed while it was hashed (then every chunk read is hashed again).
    signature: tuple[int, ...] | None = field(default=None, compare=False)


def file_signature(fd: int) -> tuple[int, ...]:
    """Return what :class:`FileSource` compares to notice a change: device, inode, size,
    modification and change times of the open file *fd*."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_chunks(fd: int, chunk_size: int) -> tuple[int, list[bytes], tuple[int, ...] | None]:
    """Read the open file *fd* once: return its size, each chunk's BLAKE3 hash, and its
    :func:`file_signature` if it did not change while it was read (else ``None``)."""
    before = file_signature(fd)
    size = before[2]
    hashes = []
    buffer = bytearray(HASH_BLOCK)
    for index in range(chunk_count(size, chunk_size)):
        length = chunk_length(index, size, chunk_size)
        hashes.append(hash_range(fd, index * chunk_size, length, buffer).digest())
    return size, hashes, before if file_signature(fd) == before else None


def guess_media_type(name: str) -> str:
    """Return the media type guessed from *name*'s extension, or ``application/octet-stream``."""
    kind, _encoding = mimetypes.guess_type(name, strict=False)
    return kind.lower() if kind else "application/octet-stream"


def make_offer(path: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> PreparedFile:
    """Hash the file at *path* and return its offer (fresh id and secret) and manifest.

    :raises OSError: if the file cannot be read.
    """
    with open(path, "rb", buffering=0) as f:
        size, hashes, signature = _hash_chunks(f.fileno(), chunk_size)
    name = os.path.basename(path) or "file"
    offer = Offer(
        transfer_id=os.urandom(16),
        name=name.encode("utf-8", "replace")[:1024].decode("utf-8", "ignore") or "file",
        size=size,
        content_hash=manifest_root(size, chunk_size, hashes),
        media_type=guess_media_type(name),
        chunk_size=chunk_size,
        secret=new_transfer_secret(),
    )
    return PreparedFile(path, offer, tuple(hashes), signature)


class FolderTooBig(Exception):
    """A folder holds more files, or is deeper, than one folder sent whole may be."""


class NotAFolder(Exception):
    """What was given to send as a folder is a file (or another thing that is not a folder)."""


def folder_files(
    path: str,
    *,
    max_files: int = MAX_FOLDER_FILES,
    max_depth: int = MAX_FOLDER_DEPTH,
    left_out: list[str] | None = None,
) -> list[tuple[str, str]]:
    """List the files of the folder at *path* to send it whole: ``(file path, folder)`` pairs,
    *folder* being the file's folder relative to *path*'s parent (``photos/2024``), sorted
    by folder and name.  Regular files only, hidden ones included; links (to files or
    folders) and devices, pipes and sockets are left out, and empty folders are not listed.

    :param left_out: if given, gets each entry left out (a link, device, pipe or socket) as
        ``folder/name`` relative to *path*'s parent, so the sender can be told.

    :raises FolderTooBig: if there are more than *max_files* files, or they are more than
        *max_depth* folders deep.
    :raises NotAFolder: if *path* is there but not a folder.
    :raises OSError: if a folder or a file in it cannot be read (``filename`` says which).
    """
    if os.path.lexists(path) and not os.path.isdir(path):
        raise NotAFolder()
    top = os.path.basename(os.path.normpath(path)) or "folder"
    found: list[tuple[str, str]] = []

    def walk(folder: str, parts: list[str]) -> None:
        if len(parts) > max_depth:
            raise FolderTooBig(f"its files are more than {max_depth} folders deep")
        where = "/".join(_utf8(p) for p in parts)
        if len(where.encode("utf-8")) > MAX_FOLDER_BYTES:
            raise FolderTooBig(f"a folder in it is more than {MAX_FOLDER_BYTES} bytes deep")
        with os.scandir(folder) as entries:
            listed = sorted(entries, key=lambda e: e.name)
        below = []
        for entry in listed:
            if entry.is_symlink():
                pass
            elif entry.is_dir(follow_symlinks=False):
                below.append(entry)
                continue
            elif entry.is_file(follow_symlinks=False):
                if not os.access(entry.path, os.R_OK):
                    raise PermissionError(13, "Permission denied", entry.path)
                found.append((entry.path, where))
                if len(found) > max_files:
                    raise FolderTooBig(
                        f"it holds more than {max_files} files: send an archive of it"
                    )
                continue
            if left_out is not None:  # a link, device, pipe or socket
                left_out.append(f"{where}/{_utf8(entry.name)}")
        for entry in below:
            walk(entry.path, [*parts, entry.name])

    walk(path, [top])
    return found


def _utf8(name: str) -> str:
    """*name* as UTF-8 can carry it (a name that is not valid UTF-8 gets U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def offer_in_folder(prepared: PreparedFile, folder: str, folder_id: bytes) -> PreparedFile:
    """The hashed file's offer marked as being in *folder* of the folder sent as
    *folder_id* (:class:`~jarvis.protocol.transfer.Offer`'s ``folder``)."""
    return replace(prepared, offer=replace(prepared.offer, folder=folder, folder_id=folder_id))


def offer_again(prepared: PreparedFile, *, group_id: bytes = b"") -> PreparedFile:
    """The same hashed file offered once more (to another member of a group): a fresh
    transfer id and secret, so each receiver's transfer has its own keys; *group_id* names the
    group it is sent into.  No file access (the manifest is shared)."""
    offer = replace(
        prepared.offer,
        transfer_id=os.urandom(16),
        secret=new_transfer_secret(),
        group_id=group_id,
    )
    return replace(prepared, offer=offer)


def prepare_again(path: str, offer: Offer) -> PreparedFile:
    """Rebuild the manifest of an already offered file after a restart (the sender keeps only
    the path and the offer).

    :raises SourceChanged: if the file no longer hashes to the offered content hash.
    :raises OSError: if the file cannot be read.
    """
    with open(path, "rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size != offer.size:
            raise SourceChanged("the size changed")
        size, hashes, signature = _hash_chunks(f.fileno(), offer.chunk_size)
    if manifest_root(size, offer.chunk_size, hashes) != offer.content_hash:
        raise SourceChanged("the content changed")
    return PreparedFile(path, offer, tuple(hashes), signature)


class FileSource:
    """Read verified chunks of an offered file.

    :param prepared: from :func:`make_offer` (or rebuilt from storage after a restart).
    """

    def __init__(self, prepared: PreparedFile) -> None:
        self.prepared = prepared
        self._fd = os.open(prepared.path, os.O_RDONLY)
        # Without a signature: the last chunk read and checked against its hash, kept so the
        # chunk's other batches of pieces are cut from it instead of reading and hashing it
        # again (at most one chunk held; jobs reading at once take turns).
        self._checked: tuple[int, bytes] | None = None
        self._checked_lock = threading.Lock()

    def read_chunk(self, index: int) -> bytes:
        """Return chunk *index*, read while the file is unchanged since it was hashed (its
        signature, see the module docstring), or checked against its hash without a signature.

        :raises SourceChanged: if the file changed since the offer.
        """
        prepared = self.prepared
        offer = prepared.offer
        length = chunk_length(index, offer.size, offer.chunk_size)
        data = os.pread(self._fd, length, index * offer.chunk_size)
        if len(data) != length:
            raise SourceChanged(f"chunk {index}")
        if prepared.signature is not None:
            if file_signature(self._fd) != prepared.signature:
                raise SourceChanged(f"the file changed (chunk {index})")
        elif chunk_hash(data) != prepared.chunk_hashes[index]:
            raise SourceChanged(f"chunk {index}")
        return data

    def read_piece(self, index: int, piece: int, into: bytearray | mmap.mmap) -> memoryview:
        """Return piece *piece* of chunk *index* (``PIECE_SIZE`` bytes, the chunk's last one may
        be short), read into the caller's buffer *into* so a transfer reuses one buffer instead
        of a new one per read.  Call :meth:`check_unchanged` after the reads and before the
        pieces leave: only then are they the file that was hashed.

        Without a signature the whole chunk is read and checked against its hash
        (:meth:`read_chunk`) and the piece is a view of it; the chunk is kept until another
        chunk is asked for, so its other pieces are not read and hashed again.

        :raises SourceChanged: if the file is shorter than it was, or (without a signature) the
            chunk does not match its hash.
        """
        prepared = self.prepared
        offer = prepared.offer
        length = chunk_length(index, offer.size, offer.chunk_size)
        start = piece * PIECE_SIZE
        stop = min(start + PIECE_SIZE, length)
        if not 0 <= start < stop:
            raise ValueError(f"no piece {piece} in chunk {index}")
        if prepared.signature is None:
            with self._checked_lock:
                checked = self._checked
                if checked is None or checked[0] != index:
                    checked = self._checked = (index, self.read_chunk(index))
            return memoryview(checked[1])[start:stop]
        view = memoryview(into)[: stop - start]
        if os.preadv(self._fd, [view], index * offer.chunk_size + start) != stop - start:
            raise SourceChanged(f"chunk {index}")
        return view

    def check_unchanged(self) -> None:
        """Raise :class:`SourceChanged` if the file changed since it was hashed (its signature;
        without one each chunk was checked against its hash as it was read)."""
        signature = self.prepared.signature
        if signature is not None and file_signature(self._fd) != signature:
            raise SourceChanged("the file changed after it was offered")

    def close(self) -> None:
        """Close the file."""
        self._checked = None
        os.close(self._fd)
