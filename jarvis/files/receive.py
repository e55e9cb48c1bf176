"""The receiving side of a file transfer, on disk: safe names, private partial files, resume.

- :func:`safe_file_name` turns an offered name into one that is safe to create: no path
  separators, no ``..``, no leading dot, no control, bidi or line-separator characters, no
  Windows device names or reserved characters, at most 200 UTF-8 bytes (extension kept).
- :func:`check_acceptable` refuses a file over the configured size cap or one the disk cannot
  hold (``os.statvfs``), before anything is accepted.
- :class:`PartialFile` holds the chunks while they arrive, in a hidden
  ``.NAME.ID.jarvis-partial`` created 0600 with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (never through a
  planted link, never into someone else's file), next to a sidecar ``...jarvis-partial.state``
  (created the same way) that records the verified chunk hashes and one byte per chunk saying
  "held, verified".  A chunk's byte is written after the chunk itself, so after ``kill -9`` the
  sidecar never claims a chunk that was not written; data and sidecar are fsynced every
  :data:`SYNC_EVERY` bytes (:meth:`PartialFile.sync`, a job of its own beside the writes, so
  writing never waits for the disk) and before the file gets its name, and
  :meth:`PartialFile.reopen`
  re-hashes every chunk the sidecar claims, so a chunk lost or corrupted on disk (a power cut,
  a bad sector, a meddler) is fetched again.  At most the chunk in flight is sent twice.
  Aligned pieces are written with ``O_DIRECT`` through a second descriptor of the same file
  (:meth:`PartialFile.store_piece`): the file gets no page-cache pages of its own while it
  arrives, which were the costliest step of receiving here.
- :meth:`PartialFile.finish` re-reads the whole file, checks it against the offered content
  hash, and only then links it into place under a name that does not exist yet
  (``name (1).ext``, ``name (2).ext``...): nothing is ever overwritten, and a file that does not
  match (a lying sender) is removed with its sidecar.

Every function here blocks on the file system: run it off the reactor thread (``deferToThread``
or the transfer's own thread).  No reactor import, no logging of names or content.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jarvis.common.atomicfile import sync_directory
from jarvis.common.textsafe import human_bytes, is_unsafe
from jarvis.files.hashing import HASH_BLOCK, hash_range
from jarvis.protocol.transfer import (
    HASH_SIZE,
    PIECE_SIZE,
    Offer,
    chunk_hasher,
    chunk_length,
    manifest_root,
    piece_count,
    piece_length,
    ranges_from_indexes,
)

#: Longest name (UTF-8 bytes) a received file gets; leaves room for `` (123)`` and the partial
#: file's prefix and suffix under the usual 255-byte limit.
MAX_NAME_BYTES = 200
#: Longest extension kept when a name is shortened or numbered.
MAX_EXTENSION_CHARS = 16
#: The name used when nothing of the offered name is left.
FALLBACK_NAME = "file"
#: Windows device names (with any extension) that must not be created.
DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"}
    | {f"COM{i}" for i in "123456789¹²³"}
    | {f"LPT{i}" for i in "123456789¹²³"}
)
_RESERVED = set('<>:"|?*')
#: Bytes held between two fsyncs of the partial file and its sidecar (:meth:`PartialFile.sync`).
#: The fsync runs beside the writes: inline, each one (17-20 ms for 32 MiB here) stopped the
#: piece lane, and 1 GiB went 5-15 % slower (docs/benchmarks.md, "File transfer: 8 MiB
#: chunks").  Every 8 MiB rather than 32: the daemon's own store commits (a chat message) wait
#: behind a flush in progress, and a small fsync's p99 fell from 14 ms to 2-5 ms here (chat
#: p99 during 1 GiB: 40-42 ms against 44-53).  A power cut loses at most what was not synced
#: yet: reopening re-hashes what the sidecar claims, so a mark that reached the disk before
#: its data is caught there.
SYNC_EVERY = 8 * 1024 * 1024
#: Pieces whose offset and length are multiples of this are written with ``O_DIRECT`` where
#: the file system allows it (:meth:`PartialFile.store_piece`).
DIRECT_ALIGN = 4096
PARTIAL_SUFFIX = ".jarvis-partial"
STATE_SUFFIX = ".jarvis-partial.state"
_MAGIC = b"JVPART\x00\x01"
_STATE_HEAD = struct.Struct(">8s16sQI32sB")
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)
#: A sidecar chunk mark with this bit set counts the pieces written of a chunk not yet held
#: (0 is missing, 1 held verified).
_PIECES_WRITTEN = 0x80


class ReceiveError(Exception):
    """Base class of the errors of the receiving side."""


class FileTooLarge(ReceiveError):
    """The offered file is larger than the size you accept from this contact.

    Raise the limit (the receive size cap in the configuration) or ask for a smaller file.
    """


class NotEnoughSpace(ReceiveError):
    """The folder the file would go to does not have enough free space for it.

    Free some space or accept the file into another folder.
    """


class PartialNameTaken(ReceiveError):
    """Something that is not this transfer's partial file is at its name."""


class PartialFileMismatch(ReceiveError):
    """The partial file on disk belongs to another transfer or is damaged beyond use.

    Cancel the transfer and start it again.
    """


class ChunkMismatch(ReceiveError):
    """A chunk does not match its hash in the verified manifest: the sender is broken or lying.

    The chunk is not written; the transfer connection is closed.
    """


class PieceDamaged(ReceiveError):
    """A chunk resumed from pieces written before a cut did not match its hash: those pieces
    changed on the disk meanwhile.  The chunk is marked missing and fetched whole again (the
    sender is not to blame)."""


class VerificationFailed(ReceiveError):
    """The complete file does not match the hash the sender offered; it was deleted.

    The sender's file changed during the transfer, or the sender is broken or hostile.
    """


def safe_file_name(name: str, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """Return a file name made from *name* that is safe to create in a folder.

    Keeps only the last path component (``/`` and ``\\`` both count), drops control, bidi and
    line-separator characters, replaces Windows-reserved characters with ``_``, strips leading
    dots and spaces (no hidden files, no ``..``) and trailing dots and spaces, prefixes Windows
    device names with ``_`` and shortens the result to *max_bytes* of UTF-8, keeping the
    extension.  Never returns an empty name.
    """
    name = unicodedata.normalize("NFC", name)
    parts = [p for p in name.replace("\\", "/").split("/") if p.strip(" .")]
    name = parts[-1] if parts else ""
    name = "".join(
        "_" if c in _RESERVED else c for c in name if not is_unsafe(c, keep_newlines=False)
    )
    name = name.lstrip(" .").rstrip(" .")
    if not name:
        name = FALLBACK_NAME
    if name.split(".", 1)[0].rstrip(" ").upper() in DEVICE_NAMES:
        name = "_" + name
    return _shorten(name, max_bytes)


def safe_folder_parts(folder: str) -> list[str]:
    """Return the parts of an offered *folder* (``photos/2024``) as folder names safe to
    create, each made by :func:`safe_file_name` (so no ``..``, no leading dot, no control or
    bidi characters, no device names; a part with nothing left is ``file``).  Parts are split
    on ``/`` and ``\\``; empty ones are dropped."""
    parts = unicodedata.normalize("NFC", folder).replace("\\", "/").split("/")
    return [safe_file_name(p) for p in parts if p]


def make_folder_root(directory: str, name: str, *, tries: int = 10000) -> str:
    """Create the folder a folder sent whole is received into: *name* in *directory*, or
    ``name (1)``, ``name (2)``... when taken (never into an existing folder, nor through a
    planted link: ``mkdir`` creates it or fails); mode 0700.  Returns its path."""
    for n in range(tries):
        candidate = os.path.join(directory, name if n == 0 else f"{name} ({n})")
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            continue
        sync_directory(directory)
        return candidate
    raise FileExistsError(errno.EEXIST, "no free name", name)


def make_subfolders(root: str, parts: Sequence[str]) -> str:
    """Create the folders *parts* below *root* (made by :func:`make_folder_root`; made again
    if it went meanwhile) and return the deepest.  A part that exists is used only if it is a
    real folder, not a link: a link planted there cannot lead the file out of *root*.

    :raises NotADirectoryError: if a part exists and is not a folder (or is a link).
    """
    path = root
    for part in ["", *parts]:
        path = os.path.join(path, part) if part else path
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", path) from None
    return path


def _split_extension(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > MAX_EXTENSION_CHARS:
        return name, ""
    return stem, "." + ext


def _shorten(name: str, max_bytes: int) -> str:
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    stem, ext = _split_extension(name)
    budget = max_bytes - len(ext.encode("utf-8"))
    stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(" .") or "f"
    return stem + ext


def numbered_name(name: str, n: int) -> str:
    """Return *name* with `` (n)`` before its extension (``name`` itself for ``n == 0``)."""
    if n == 0:
        return name
    stem, ext = _split_extension(name)
    return f"{stem} ({n}){ext}"


@dataclass(frozen=True)
class ReceivePolicy:
    """What a receiver accepts.

    :ivar max_size: the largest file accepted, in bytes.
    :ivar reserve_bytes: free space that must remain on the disk after the file.
    """

    max_size: int = 4 * 1024**3
    reserve_bytes: int = 64 * 1024**2


#: Why a receiving stream ended when the disk filled up (``ENOSPC``/``EDQUOT``): what is held
#: stays, and the transfer resumes once there is room (the receiver watches the free space).
DISK_FULL = "disk full: free space where the file is received; it resumes by itself then"


def free_bytes(directory: str) -> int:
    """Return the bytes an unprivileged user may still write in *directory*'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def check_acceptable(
    directory: str, offer: Offer, policy: ReceivePolicy, *, already_held: int = 0
) -> None:
    """Refuse an offer that is over the size cap or does not fit on the disk.

    :param already_held: bytes of this file already on disk (a resumed transfer).
    :raises FileTooLarge: if ``offer.size`` exceeds ``policy.max_size``.
    :raises NotEnoughSpace: if the free space minus the reserve cannot hold what is missing.
    """
    if offer.size > policy.max_size:
        raise FileTooLarge(
            f"{human_bytes(offer.size)}, over the limit of {human_bytes(policy.max_size)}"
        )
    needed = offer.size - already_held + policy.reserve_bytes
    available = free_bytes(directory)
    if available < needed:
        raise NotEnoughSpace(
            f"{human_bytes(available)} free, {human_bytes(needed)} needed (the "
            f"{human_bytes(offer.size - already_held)} of the file still to come and "
            f"{human_bytes(policy.reserve_bytes)} kept free)"
        )


def partial_paths(directory: str, offer: Offer) -> tuple[str, str]:
    """Return the paths of the hidden partial file and of its sidecar for *offer*."""
    base = f".{safe_file_name(offer.name)}.{offer.transfer_id.hex()[:16]}"
    return (
        os.path.join(directory, base + PARTIAL_SUFFIX),
        os.path.join(directory, base + STATE_SUFFIX),
    )


class PartialFile:
    """A file being received: the hidden partial file and its sidecar, both open.

    Build it with :meth:`create` (a new transfer) or :meth:`reopen` (after a restart).
    :meth:`store_piece` runs on a worker thread, the pieces of a chunk one at a time and in
    order (the piece lane); the sidecar writes take a lock, and what the reactor thread reads
    (:attr:`written_bytes`, :meth:`held_ranges`, :meth:`partial_pieces`, :meth:`is_complete`)
    is copied without it, so the reactor never waits behind a write or an fsync.
    """

    def __init__(
        self, directory: str, offer: Offer, data_fd: int, state_fd: int, manifest: bytes | None
    ) -> None:
        self.directory = directory
        self.offer = offer
        self.partial_path, self.state_path = partial_paths(directory, offer)
        self._data_fd = data_fd
        self._state_fd = state_fd
        #: A second descriptor of the same file opened with ``O_DIRECT`` (-1 where the
        #: platform or the file system has none): aligned pieces go to the disk without
        #: passing through the page cache (see :meth:`store_piece`).
        self._direct_fd = _open_direct(data_fd)
        self._count = offer.chunks
        self._manifest = manifest  # count * 32 bytes, or None until set_manifest()
        self._held = bytearray(self._count)
        self._held_bytes = 0
        self._unsynced = 0
        self._lock = threading.Lock()
        #: The running hash of each chunk whose pieces are being stored (store_piece), and
        #: whether it began with pieces read back from the disk (a resumed chunk).
        self._hashing: dict[int, Any] = {}
        self._resumed: set[int] = set()
        #: Pieces written of each chunk not held (a transfer cut off mid-chunk).
        self._pieces: dict[int, int] = {}

    # -- offsets in the sidecar

    @property
    def _manifest_at(self) -> int:
        return _STATE_HEAD.size

    @property
    def _bitmap_at(self) -> int:
        return _STATE_HEAD.size + self._count * HASH_SIZE

    @classmethod
    def create(
        cls, directory: str, offer: Offer, policy: ReceivePolicy | None = None
    ) -> PartialFile:
        """Create the partial file and sidecar of a newly accepted *offer* in *directory*.

        :raises FileTooLarge: / :raises NotEnoughSpace: see :func:`check_acceptable`.
        :raises FileExistsError: if a partial file of this transfer (or anything planted at its
            name) exists already: use :meth:`reopen`.
        """
        check_acceptable(directory, offer, policy or ReceivePolicy())
        partial, state = partial_paths(directory, offer)
        data_fd = os.open(partial, _CREATE_FLAGS, 0o600)
        try:
            state_fd = os.open(state, _CREATE_FLAGS, 0o600)
        except BaseException:
            os.close(data_fd)
            os.unlink(partial)
            raise
        try:
            os.fchmod(data_fd, 0o600)
            os.fchmod(state_fd, 0o600)
            if offer.size:
                try:
                    os.posix_fallocate(data_fd, 0, offer.size)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise NotEnoughSpace("the disk filled up while reserving space") from e
                    os.ftruncate(data_fd, offer.size)  # no fallocate on this file system
            count = offer.chunks
            head = _STATE_HEAD.pack(
                _MAGIC, offer.transfer_id, offer.size, offer.chunk_size, offer.content_hash, 0
            )
            os.pwrite(state_fd, head + bytes(count * HASH_SIZE + count), 0)
            os.fsync(data_fd)
            os.fsync(state_fd)
            sync_directory(directory)
        except BaseException:
            os.close(data_fd)
            os.close(state_fd)
            for path in (partial, state):
                os.unlink(path)
            raise
        return cls(directory, offer, data_fd, state_fd, None)

    @classmethod
    def create_or_take(
        cls, directory: str, offer: Offer, policy: ReceivePolicy | None = None
    ) -> PartialFile:
        """:meth:`create`; or, if a run stopped (killed) between creating the partial file
        and recording the accept left one, take it when its sidecar describes this very
        offer (:meth:`reopen`: its held chunks checked again), or make it again when the
        sidecar is torn (killed while creating it) and both are our own regular files.

        :raises PartialNameTaken: if anything else is at those names (a link, another user's
            file); it is left as it is.
        """
        try:
            return cls.create(directory, offer, policy)
        except FileExistsError:
            pass
        try:
            return cls.reopen(directory, offer)
        except (OSError, PartialFileMismatch):
            pass
        paths = partial_paths(directory, offer)
        for path in paths:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise PartialNameTaken()
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            return cls.create(directory, offer, policy)
        except FileExistsError:
            raise PartialNameTaken() from None

    @classmethod
    def reopen(cls, directory: str, offer: Offer) -> PartialFile:
        """Open the partial file of *offer* after a restart and re-verify what it holds.

        Every chunk the sidecar marks as held is read back and hashed against the stored
        manifest; a chunk that does not match is marked missing (and will be fetched again).

        :raises FileNotFoundError: if there is no partial file for this transfer.
        :raises PartialFileMismatch: if the sidecar describes another transfer or is truncated.
        """
        partial, state = partial_paths(directory, offer)
        data_fd = os.open(partial, _OPEN_FLAGS)
        try:
            state_fd = os.open(state, _OPEN_FLAGS)
        except BaseException:
            os.close(data_fd)
            raise
        try:
            count = offer.chunks
            size = _STATE_HEAD.size + count * (HASH_SIZE + 1)
            raw = os.pread(state_fd, size, 0)
            if len(raw) != size:
                raise PartialFileMismatch("the sidecar is truncated")
            magic, tid, fsize, chunk_size, root, known = _STATE_HEAD.unpack_from(raw)
            if (magic, tid, fsize, chunk_size, root) != (
                _MAGIC,
                offer.transfer_id,
                offer.size,
                offer.chunk_size,
                offer.content_hash,
            ):
                raise PartialFileMismatch("the sidecar belongs to another transfer")
            manifest = raw[_STATE_HEAD.size : _STATE_HEAD.size + count * HASH_SIZE]
            if known and _root_of(offer, manifest) != offer.content_hash:
                known = 0  # a damaged manifest: the sender sends it again
        except BaseException:
            os.close(data_fd)
            os.close(state_fd)
            raise
        self = cls(directory, offer, data_fd, state_fd, manifest if known else None)
        bitmap = raw[self._bitmap_at :]
        buffer = bytearray(HASH_BLOCK)
        for index in range(count):
            if not bitmap[index] or self._manifest is None:
                continue
            if bitmap[index] & _PIECES_WRITTEN:
                pieces = bitmap[index] & ~_PIECES_WRITTEN
                length = chunk_length(index, offer.size, offer.chunk_size)
                if 0 < pieces < piece_count(length):
                    self._pieces[index] = pieces  # checked with the chunk's last piece
                continue
            length = chunk_length(index, offer.size, offer.chunk_size)
            hasher = hash_range(data_fd, _at(offer, index), length, buffer)
            if hasher.digest() == self._expected(index):
                self._held[index] = 1
                self._held_bytes += length
        # Make the sidecar say exactly what was verified (and which chunks are part written).
        marks = bytearray(self._held)
        for index, pieces in self._pieces.items():
            marks[index] = _PIECES_WRITTEN | pieces
        os.pwrite(state_fd, bytes(marks), self._bitmap_at)
        return self

    # -- state

    @property
    def held_bytes(self) -> int:
        """Bytes held verified."""
        return self._held_bytes

    @property
    def written_bytes(self) -> int:
        """Bytes on disk and recorded: the chunks held verified and the pieces written of the
        chunks cut off mid-way (what a resumed transfer will not ask for again)."""
        # Read on the reactor thread at every piece: no lock, which the worker holds across
        # its sidecar writes and fsyncs (a dict copy is atomic under the GIL).
        offer = self.offer
        pieces = sum(
            min(n * PIECE_SIZE, chunk_length(i, offer.size, offer.chunk_size))
            for i, n in self._pieces.copy().items()
        )
        return self._held_bytes + pieces

    @property
    def manifest_known(self) -> bool:
        """Whether a manifest matching the offer is stored."""
        return self._manifest is not None

    def held_ranges(self) -> tuple[tuple[int, int], ...]:
        """Return the chunk ranges held verified (for the ``Have`` record)."""
        # Read on the reactor thread: no lock (see written_bytes); a bytearray copy is atomic
        # under the GIL.
        return ranges_from_indexes(i for i, h in enumerate(bytes(self._held)) if h)

    def partial_pieces(self) -> tuple[tuple[int, int], ...]:
        """Return ``(index, pieces written)`` of the chunks cut off mid-way (for ``Have``)."""
        return tuple(sorted(self._pieces.copy().items()))

    def is_complete(self) -> bool:
        """Whether every chunk is held verified."""
        return all(bytes(self._held))

    def set_manifest(self, hashes: Sequence[bytes]) -> None:
        """Store the chunk hashes (already checked against the offer) in the sidecar.

        :raises ValueError: if they do not hash to the offered content hash.
        """
        manifest = b"".join(hashes)
        if _root_of(self.offer, manifest) != self.offer.content_hash:
            raise ValueError("the manifest does not match the offer")
        with self._lock:
            if self._manifest == manifest:
                return
            self._manifest = manifest
            os.pwrite(self._state_fd, manifest, self._manifest_at)
            os.fsync(self._state_fd)
            os.pwrite(self._state_fd, b"\x01", _STATE_HEAD.size - 1)
            os.fsync(self._state_fd)

    def _expected(self, index: int) -> bytes:
        assert self._manifest is not None
        return self._manifest[index * HASH_SIZE : (index + 1) * HASH_SIZE]

    def store_piece(self, index: int, piece: int, data: bytes | memoryview) -> bool | None:
        """Hash and write piece *piece* of chunk *index*; after its last piece, verify the
        chunk against the manifest and mark it held.

        Pieces of a chunk come in order, each from one caller at a time (the piece lane);
        they are written as they come, before the chunk is verified, and each is recorded in
        the sidecar after its data (a crash keeps them: a resumed transfer sends only the
        rest); a chunk is held only once its last piece matched.

        :returns: ``None`` before the chunk's last piece; then whether the chunk was new
            (``False`` for a chunk already held, which is not written again).
        :raises ChunkMismatch: if a piece has the wrong length or comes out of order, or the
            whole chunk does not match its hash (it is not marked held).
        :raises ValueError: before the manifest is set, or for an index out of range.
        """
        if self._manifest is None:
            raise ValueError("no manifest yet")
        offer = self.offer
        length = chunk_length(index, offer.size, offer.chunk_size)
        try:
            expected_length = piece_length(length, piece)
        except ValueError:
            raise ChunkMismatch(f"chunk {index} has no piece {piece}") from None
        if len(data) != expected_length:
            raise ChunkMismatch(f"piece {piece} of chunk {index} has the wrong length")
        hasher = self._hashing.get(index) if piece else None
        if piece == 0:
            hasher = self._hashing[index] = chunk_hasher()
            self._resumed.discard(index)
        elif hasher is None and self._pieces.get(index) == piece:
            hasher = self._hashing[index] = self._hash_written(index, piece)
            self._resumed.add(index)
        if hasher is None:
            raise ChunkMismatch(f"piece {piece} of chunk {index} came out of order")
        hasher.update(data)
        held = self._held[index]
        if not held:
            self._write(data, _at(offer, index) + piece * PIECE_SIZE)
        if piece + 1 < piece_count(length):
            if not held:
                # Recorded after the data, so a resumed transfer asks only for the rest.
                with self._lock:
                    os.pwrite(
                        self._state_fd, bytes([_PIECES_WRITTEN | piece + 1]), self._mark(index)
                    )
                    self._pieces[index] = piece + 1
            return None
        del self._hashing[index]
        if hasher.digest() != self._expected(index):
            if index in self._resumed:
                # The pieces read back from the disk changed since they were written: the
                # sender is not to blame; the chunk is fetched whole again.
                self._resumed.discard(index)
                with self._lock:
                    self._pieces.pop(index, None)
                    os.pwrite(self._state_fd, b"\x00", self._mark(index))
                raise PieceDamaged(f"chunk {index} changed on the disk while cut off")
            raise ChunkMismatch(f"chunk {index} does not match the manifest")
        self._resumed.discard(index)
        return self._mark_held(index, length)

    def _write(self, data: bytes | memoryview, offset: int) -> None:
        # A piece whose offset and length are aligned (all but a file's last) goes through the
        # O_DIRECT descriptor: the kernel copies it straight to the disk instead of first
        # giving the file fresh page-cache pages, which costs more CPU here than any other
        # step of receiving (docs/benchmarks.md, "File transfer: writes past the page
        # cache").  Its buffer must be aligned too: the transfer's work buffers are
        # (jarvis.crypto.transfer_keys.WorkBuffers).  Should the kernel refuse one (EINVAL),
        # this file is written through the page cache from then on.
        fd = self._direct_fd
        if fd >= 0 and not (offset % DIRECT_ALIGN or len(data) % DIRECT_ALIGN):
            try:
                os.pwrite(fd, data, offset)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.stop_direct_writes()
        os.pwrite(self._data_fd, data, offset)

    @property
    def writes_direct(self) -> bool:
        """Whether aligned pieces are written with ``O_DIRECT`` (past the page cache)."""
        return self._direct_fd >= 0

    def stop_direct_writes(self) -> None:
        """Write every piece through the page cache from now on."""
        fd, self._direct_fd = self._direct_fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _mark(self, index: int) -> int:
        return self._bitmap_at + index

    def _hash_written(self, index: int, pieces: int) -> Any:
        # The running hash of the first *pieces* pieces of chunk *index*, read back.
        length = min(
            pieces * PIECE_SIZE, chunk_length(index, self.offer.size, self.offer.chunk_size)
        )
        return hash_range(self._data_fd, _at(self.offer, index), length)

    def _mark_held(self, index: int, length: int) -> bool:
        with self._lock:
            if self._held[index]:
                return False
            # The byte that says "held" is written after the data: a crash in between leaves
            # the chunk missing, never falsely held.
            os.pwrite(self._state_fd, b"\x01", self._bitmap_at + index)
            self._held[index] = 1
            self._pieces.pop(index, None)
            self._held_bytes += length
            self._unsynced += length
        return True

    def sync_due(self) -> bool:
        """Whether :data:`SYNC_EVERY` bytes were held since the last :meth:`sync` was asked for
        (then the count starts again: the caller runs one sync job)."""
        with self._lock:
            if self._unsynced < SYNC_EVERY:
                return False
            self._unsynced = 0
            return True

    def sync(self) -> None:
        """Flush the partial file and its sidecar to the disk (``fsync``), on a worker thread
        beside the one storing pieces; do not close the file while it runs."""
        os.fsync(self._data_fd)
        os.fsync(self._state_fd)

    def prepare_chunks(self, first: int, end: int) -> int:
        """Bring the pages of chunks *first* to *end* - 1 that are not held into the page cache
        (``posix_fadvise(WILLNEED)``), ahead of their writes; return how many were asked for.

        Writing a chunk into pages the file never had costs the kernel ~3-4 ms per MiB here
        (page allocation inside ``pwrite``), against ~0.8 ms to read the same unwritten range
        ahead and ~0.7 ms to write over it then; called on a worker thread while the chunk is
        still on the network, it takes that cost off the acknowledgement's path.  Only a
        hint: nothing is written, and a file system without it is left alone.  Nothing is
        asked while pieces are written with ``O_DIRECT`` (they need no pages).
        """
        advise = getattr(os, "posix_fadvise", None)
        offer = self.offer
        asked = 0
        if advise is None or self._data_fd < 0 or self._direct_fd >= 0:
            # Direct writes need no pages: preparing them would be work thrown away.
            return asked
        for index in range(max(first, 0), min(end, self._count)):
            if self._held[index]:
                continue
            length = chunk_length(index, offer.size, offer.chunk_size)
            try:
                advise(self._data_fd, _at(offer, index), length, os.POSIX_FADV_WILLNEED)
            except OSError:
                return asked
            asked += 1
        return asked

    def finish(self, *, reread: bool = True) -> str:
        """Verify the whole file against the offer and give it its name; return the final path.

        The partial file is synced, read back and hashed chunk by chunk; the root must equal
        the offered content hash.  Then it is linked to the first free name among ``name``,
        ``name (1).ext``... (never replacing anything) and the partial file and sidecar are
        removed.

        :param reread: re-read the file (about 1 CPU second per GiB).  Without it the check
            rests on the hashes taken as each chunk was written (and re-taken at each reopen),
            so it misses only a change made to the partial file on disk since.
        :raises VerificationFailed: if a chunk is missing or the content does not match; the
            partial file and sidecar are removed.
        """
        offer = self.offer
        os.fsync(self._data_fd)
        if reread:
            matches = self.is_complete() and self._hash_on_disk() == offer.content_hash
        else:
            with self._lock:
                complete, manifest = all(self._held), self._manifest
            matches = complete and (
                offer.chunks == 0
                or (manifest is not None and _root_of(offer, manifest) == offer.content_hash)
            )
        if not matches:
            self.discard()
            raise VerificationFailed()
        final = _link_free_name(self.partial_path, self.directory, safe_file_name(offer.name))
        self.discard()
        return final

    def _hash_on_disk(self) -> bytes:
        """Return the content hash of the partial file as it is on disk."""
        offer = self.offer
        buffer = bytearray(HASH_BLOCK)
        hashes = [
            hash_range(
                self._data_fd,
                _at(offer, index),
                chunk_length(index, offer.size, offer.chunk_size),
                buffer,
            ).digest()
            for index in range(offer.chunks)
        ]
        return manifest_root(offer.size, offer.chunk_size, hashes)

    def close(self) -> None:
        """Close the file descriptors (the files stay for a later :meth:`reopen`)."""
        self.stop_direct_writes()
        for fd in (self._data_fd, self._state_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._data_fd = self._state_fd = -1

    def discard(self) -> None:
        """Close and remove the partial file and its sidecar."""
        self.close()
        for path in (self.partial_path, self.state_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        sync_directory(self.directory)


def find_received(directory: str, offer: Offer, *, tries: int = 100) -> str | None:
    """The file *offer* was saved as in *directory*, if a run completed it (linked it to its
    name and removed the partial file) and stopped before it recorded so: the first of
    ``name``, ``name (1).ext``... that is a regular file of the offered size whose content
    hashes to the offered content hash; None if none is (the names are taken in order, so
    the search ends at the first free one).  Reads each candidate of the right size whole."""
    name = safe_file_name(offer.name)
    buffer = bytearray(HASH_BLOCK)
    for n in range(tries):
        candidate = os.path.join(directory, numbered_name(name, n))
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        except OSError:
            continue  # a link, or unreadable: not ours
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != offer.size:
                continue
            hashes = [
                hash_range(
                    fd, _at(offer, i), chunk_length(i, offer.size, offer.chunk_size), buffer
                ).digest()
                for i in range(offer.chunks)
            ]
            if manifest_root(offer.size, offer.chunk_size, hashes) == offer.content_hash:
                return candidate
        finally:
            os.close(fd)
    return None


def _open_direct(data_fd: int) -> int:
    """Open the file behind *data_fd* once more, with ``O_DIRECT``; -1 where that fails.

    Reopened through ``/proc/self/fd`` (Linux), so it is the same file whatever happened to
    the directory since: never a name looked up again."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct or data_fd < 0:
        return -1
    try:
        return os.open(f"/proc/self/fd/{data_fd}", os.O_WRONLY | direct)
    except OSError:
        return -1


def _at(offer: Offer, index: int) -> int:
    return index * offer.chunk_size


def _root_of(offer: Offer, manifest: bytes) -> bytes:
    hashes = [manifest[i : i + HASH_SIZE] for i in range(0, len(manifest), HASH_SIZE)]
    return manifest_root(offer.size, offer.chunk_size, hashes)


def _link_free_name(source: str, directory: str, name: str, *, tries: int = 10000) -> str:
    """Give *source* the first free name among *name*, ``name (1).ext``...; return it.  A
    name that already is *source* (the same file: a run killed between linking it and
    removing the partial file) is taken as it is, not linked once more under the next."""
    linked = os.stat(source, follow_symlinks=False)
    for n in range(tries):
        candidate = os.path.join(directory, numbered_name(name, n))
        try:
            os.link(source, candidate, follow_symlinks=False)
        except FileExistsError:
            there = os.stat(candidate, follow_symlinks=False)
            if (there.st_dev, there.st_ino) == (linked.st_dev, linked.st_ino):
                return candidate
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            if os.path.lexists(candidate):  # no hard links here: check, then rename
                continue
            os.rename(source, candidate)
        sync_directory(directory)
        return candidate
    raise FileExistsError(errno.EEXIST, "no free name", name)
