"""Tests for :mod:`jarvis.files.receive` and :mod:`jarvis.files.send`: the transfer on disk."""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
from dataclasses import replace

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from jarvis.common.textsafe import BIDI_CONTROLS
from jarvis.files.receive import (
    MAX_NAME_BYTES,
    ChunkMismatch,
    FileTooLarge,
    NotEnoughSpace,
    PartialFile,
    PartialFileMismatch,
    PieceDamaged,
    ReceivePolicy,
    VerificationFailed,
    _open_direct,
    make_folder_root,
    make_subfolders,
    numbered_name,
    partial_paths,
    safe_file_name,
    safe_folder_parts,
)
from jarvis.files.send import (
    FileSource,
    PreparedFile,
    SourceChanged,
    make_offer,
    prepare_again,
)
from jarvis.protocol.transfer import (
    MIN_CHUNK_SIZE,
    PIECE_SIZE,
    chunk_hash,
    missing_indexes,
    piece_count,
)
from tests.daemons import short_tempdir

CHUNK = MIN_CHUNK_SIZE
#: A chunk size of four pieces.
FOUR_PIECES = 4 * PIECE_SIZE


def make_prepared(
    testcase: SynchronousTestCase, size: int, name: str = "a.bin", chunk: int = CHUNK
) -> PreparedFile:
    """Write a random file of *size* bytes and return it prepared for sending."""
    source_dir = short_tempdir(testcase)
    path = os.path.join(source_dir, name)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return make_offer(path, chunk_size=chunk)


def read_chunk(prepared: PreparedFile, index: int) -> bytes:
    chunk = prepared.offer.chunk_size
    with open(prepared.path, "rb") as f:
        f.seek(index * chunk)
        return f.read(chunk)


def read_pieces(source: FileSource, index: int, first: int, end: int) -> bytes:
    """Pieces *first* to *end* - 1 of chunk *index* as a sender's job reads them: each into
    the same reused buffer, then the file checked unchanged."""
    into = bytearray(PIECE_SIZE)
    pieces = [bytes(source.read_piece(index, piece, into)) for piece in range(first, end)]
    source.check_unchanged()
    return b"".join(pieces)


def store_whole(partial: PartialFile, index: int, data: bytes) -> bool | None:
    """Store chunk *index* piece by piece, as the daemon does; return the last piece's result
    (whether the chunk was new)."""
    result = None
    for piece in range(piece_count(len(data))):
        result = partial.store_piece(
            index, piece, data[piece * PIECE_SIZE : (piece + 1) * PIECE_SIZE]
        )
    return result


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class SafeNameTests(SynchronousTestCase):
    def test_hostile_names(self) -> None:
        """When hostile names are offered, then the name kept has no path, no leading dot, no
        control or bidi characters and no device name."""
        cases = {
            "../../.bashrc": "bashrc",
            "..": "file",
            "": "file",
            "/": "file",
            " . ": "file",
            "a/b\\c.txt": "c.txt",
            "C:\\Windows\\evil.exe": "evil.exe",
            "CON": "_CON",
            "con.txt": "_con.txt",
            "LPT1.tar.gz": "_LPT1.tar.gz",
            "nul ": "_nul",
            "what?.txt": "what_.txt",
            "x\x1b]52;c;QUFB\x07y.txt": "x]52;c;QUFBy.txt",
            "invoice\u202egpj.exe": "invoicegpj.exe",
            "line\u2028break\n.txt": "linebreak.txt",
            "trailing...": "trailing",
        }
        for offered, expected in cases.items():
            with self.subTest(offered=offered):
                self.assertEqual(safe_file_name(offered), expected)

    def test_long_names_keep_extension(self) -> None:
        """When a 4,000-character name arrives, then it is cut to 200 UTF-8 bytes with its
        extension kept, also for multi-byte characters."""
        for char in ("a", "é", "😀"):
            name = safe_file_name(char * 4000 + ".pdf")
            self.assertLessEqual(len(name.encode("utf-8")), MAX_NAME_BYTES)
            self.assertTrue(name.endswith(".pdf"))
            self.assertTrue(name.startswith(char))

    def test_no_unsafe_characters_survive(self) -> None:
        """When every control and bidi character is in a name, then none survives."""
        nasty = "".join(chr(c) for c in range(0x20)) + "\x7f" + "".join(BIDI_CONTROLS) + "ok"
        name = safe_file_name(nasty)
        self.assertEqual(name, "ok")
        self.assertEqual(numbered_name("a.tar.gz", 2), "a.tar (2).gz")
        self.assertEqual(numbered_name("README", 1), "README (1)")


class FolderTests(SynchronousTestCase):
    def test_hostile_folder_parts(self) -> None:
        """When the folder of a file of a folder sent whole holds ``..``, leading dots,
        backslashes, escapes, bidi controls or device names, then every part kept is a plain
        folder name, none of them ``..`` or hidden."""
        cases = {
            "photos/2024": ["photos", "2024"],
            "../../etc": ["file", "file", "etc"],
            "..\\..\\x": ["file", "file", "x"],
            ".ssh/keys": ["ssh", "keys"],
            "a/./b": ["a", "file", "b"],
            "CON/aux": ["_CON", "_aux"],
            "x\x1b]52;c;QUFB\x07/\u202egpj": ["x]52;c;QUFB", "gpj"],
        }
        for offered, expected in cases.items():
            with self.subTest(offered=offered):
                self.assertEqual(safe_folder_parts(offered), expected)

    def test_a_new_folder_each_time_never_an_existing_one(self) -> None:
        """When the folder for a folder sent is made where one of that name exists (a folder,
        a file, a link to elsewhere), then a new one is made beside it, ``photos (N)``, 0700,
        and nothing is written through the link."""
        base = short_tempdir(self)
        elsewhere = short_tempdir(self)
        os.mkdir(os.path.join(base, "photos"))
        open(os.path.join(base, "photos (1)"), "w").close()
        os.symlink(elsewhere, os.path.join(base, "photos (2)"))
        root = make_folder_root(base, "photos")
        self.assertEqual(root, os.path.join(base, "photos (3)"))
        self.assertEqual(stat.S_IMODE(os.lstat(root).st_mode) & 0o077, 0)
        self.assertEqual(make_folder_root(base, "photos"), os.path.join(base, "photos (4)"))
        self.assertEqual(os.listdir(elsewhere), [])

    def test_subfolders_are_made_but_never_through_a_link(self) -> None:
        """When the folders below a received folder are made, then missing ones are created
        (the root too, if it went), existing real folders are used, and a link planted where
        a part goes is refused (NotADirectoryError) with nothing made where it points."""
        base = short_tempdir(self)
        elsewhere = short_tempdir(self)
        root = os.path.join(base, "photos")
        deep = make_subfolders(root, ["2024", "summer"])
        self.assertEqual(deep, os.path.join(root, "2024", "summer"))
        self.assertTrue(os.path.isdir(deep))
        self.assertEqual(make_subfolders(root, ["2024", "summer"]), deep)
        os.symlink(elsewhere, os.path.join(root, "2025"))
        with self.assertRaises(NotADirectoryError):
            make_subfolders(root, ["2025", "x"])
        self.assertEqual(os.listdir(elsewhere), [])


class PartialFileTests(SynchronousTestCase):
    def make(self, size: int = 10 * CHUNK + 123) -> tuple[PreparedFile, str, PartialFile]:
        prepared = make_prepared(self, size)
        directory = short_tempdir(self)
        partial = PartialFile.create(directory, prepared.offer)
        self.addCleanup(partial.close)
        return prepared, directory, partial

    def test_partial_is_private_hidden_and_exclusive(self) -> None:
        """When a transfer is accepted, then its partial file and sidecar are hidden and 0600;
        a symbolic link planted at that name is never followed."""
        prepared, directory, partial = self.make()
        for path in (partial.partial_path, partial.state_path):
            self.assertTrue(os.path.basename(path).startswith("."))
            self.assertEqual(stat.S_IMODE(os.lstat(path).st_mode), 0o600)
        self.assertEqual([n for n in os.listdir(directory) if not n.startswith(".")], [])
        # A second create (or a planted link) is refused, and the link's target is untouched.
        other_dir = short_tempdir(self)
        target = os.path.join(other_dir, "victim")
        with open(target, "wb") as f:
            f.write(b"keep")
        data_path, _state_path = partial_paths(other_dir, prepared.offer)
        os.symlink(target, data_path)
        with self.assertRaises(FileExistsError):
            PartialFile.create(other_dir, prepared.offer)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"keep")
        with self.assertRaises(FileExistsError):
            PartialFile.create(directory, prepared.offer)

    def test_size_cap_and_disk_space(self) -> None:
        """When the file is over the cap or the disk cannot hold it, then it is refused before
        anything is created."""
        prepared = make_prepared(self, CHUNK)
        directory = short_tempdir(self)
        with self.assertRaises(FileTooLarge):
            PartialFile.create(directory, prepared.offer, ReceivePolicy(max_size=CHUNK - 1))
        with self.assertRaises(NotEnoughSpace):
            PartialFile.create(directory, prepared.offer, ReceivePolicy(reserve_bytes=1 << 60))
        self.assertEqual(os.listdir(directory), [])

    def test_complete_file_gets_a_free_name(self) -> None:
        """When a file completes and a file of that name exists, then it lands as
        ``name (1).ext``, private (0600, as the partial file was, whatever the umask), and the
        existing file is untouched; the partial files are gone."""
        prepared, directory, partial = self.make()
        with open(os.path.join(directory, "a.bin"), "wb") as f:
            f.write(b"mine")
        partial.set_manifest(prepared.chunk_hashes)
        for i in range(prepared.offer.chunks):
            self.assertTrue(store_whole(partial, i, read_chunk(prepared, i)))
        self.assertFalse(store_whole(partial, 0, read_chunk(prepared, 0)))
        self.assertTrue(partial.is_complete())
        final = partial.finish()
        self.assertEqual(os.path.basename(final), "a (1).bin")
        self.assertEqual(stat.S_IMODE(os.lstat(final).st_mode), 0o600)
        self.assertEqual(sha256_file(final), sha256_file(prepared.path))
        with open(os.path.join(directory, "a.bin"), "rb") as f:
            self.assertEqual(f.read(), b"mine")
        self.assertEqual(sorted(os.listdir(directory)), ["a (1).bin", "a.bin"])

    def test_a_finish_killed_after_the_link_is_not_linked_twice(self) -> None:
        """When a run gave the complete file its name and was killed before it removed the
        partial file (the partial reopened at the restart, complete), then finishing again
        takes that name (the same file) instead of linking it once more as ``name (1).ext``;
        another file that holds the very same bytes under the name is still not taken."""
        prepared, directory, partial = self.make()
        partial.set_manifest(prepared.chunk_hashes)
        for i in range(prepared.offer.chunks):
            store_whole(partial, i, read_chunk(prepared, i))
        partial.close()
        os.link(partial.partial_path, os.path.join(directory, "a.bin"))  # then the kill
        again = PartialFile.reopen(directory, prepared.offer)
        final = again.finish()
        self.assertEqual(os.path.basename(final), "a.bin")
        self.assertEqual(sorted(n for n in os.listdir(directory)), ["a.bin"])
        # a copy (not the same file) under the name: the next name, as before
        prepared2, directory2, partial2 = self.make()
        partial2.set_manifest(prepared2.chunk_hashes)
        for i in range(prepared2.offer.chunks):
            store_whole(partial2, i, read_chunk(prepared2, i))
        with open(prepared2.path, "rb") as src, open(os.path.join(directory2, "a.bin"), "wb") as f:
            f.write(src.read())
        self.assertEqual(os.path.basename(partial2.finish()), "a (1).bin")

    def test_finish_without_reread(self) -> None:
        """When the final check skips the re-read, then a complete file still lands verified,
        and an incomplete one is refused and removed."""
        prepared, _directory, partial = self.make()
        partial.set_manifest(prepared.chunk_hashes)
        for i in range(prepared.offer.chunks):
            store_whole(partial, i, read_chunk(prepared, i))
        final = partial.finish(reread=False)
        self.assertEqual(sha256_file(final), sha256_file(prepared.path))
        prepared2, directory2, partial2 = self.make()
        partial2.set_manifest(prepared2.chunk_hashes)
        store_whole(partial2, 0, read_chunk(prepared2, 0))
        with self.assertRaises(VerificationFailed):
            partial2.finish(reread=False)
        self.assertEqual(os.listdir(directory2), [])

    def test_prepare_chunks_asks_for_missing_ones_and_writes_nothing(self) -> None:
        """When the receiver prepares the pages of chunks ahead of their writes, then only the
        chunks not held are asked for, nothing is written or marked held, and the file still
        lands verified once every chunk is stored."""
        prepared, _directory, partial = self.make()
        partial.set_manifest(prepared.chunk_hashes)
        partial.stop_direct_writes()  # the page cache is prepared only for writes through it
        store_whole(partial, 1, read_chunk(prepared, 1))
        with open(partial.partial_path, "rb") as f:
            before = f.read()
        asked = partial.prepare_chunks(0, prepared.offer.chunks + 5)
        expected = prepared.offer.chunks - 1 if hasattr(os, "posix_fadvise") else 0
        self.assertEqual(asked, expected)
        with open(partial.partial_path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(partial.held_ranges(), ((1, 2),))
        for i in range(prepared.offer.chunks):
            store_whole(partial, i, read_chunk(prepared, i))
        self.assertEqual(sha256_file(partial.finish()), sha256_file(prepared.path))
        self.assertEqual(partial.prepare_chunks(0, 1), 0)  # closed: nothing asked

    def test_chunk_not_matching_manifest_not_held(self) -> None:
        """When a chunk does not match its hash, then ChunkMismatch and it is not held."""
        prepared, _directory, partial = self.make()
        with self.assertRaises(ValueError):
            store_whole(partial, 0, read_chunk(prepared, 0))  # no manifest yet
        partial.set_manifest(prepared.chunk_hashes)
        with self.assertRaises(ChunkMismatch):
            store_whole(partial, 1, read_chunk(prepared, 2))
        self.assertEqual(partial.held_ranges(), ())

    def test_resume_after_crash_resends_at_most_one_chunk(self) -> None:
        """When the receiver dies after half the chunks and in the middle of writing the next,
        then after reopening from disk it asks for every chunk but those it held: over both
        runs exactly one chunk is sent twice, and the file is byte-identical."""
        prepared, directory, partial = self.make()
        count = prepared.offer.chunks
        partial.set_manifest(prepared.chunk_hashes)
        sent = 0
        half = count // 2
        for i in range(half):
            store_whole(partial, i, read_chunk(prepared, i))
            sent += 1
        # "kill -9" in the middle of the next chunk: its data reached the file, its mark did not.
        with open(partial.partial_path, "r+b") as f:
            f.seek(half * CHUNK)
            f.write(read_chunk(prepared, half)[:1000])
        sent += 1
        partial.close()
        del partial

        reopened = PartialFile.reopen(directory, prepared.offer)
        self.addCleanup(reopened.close)
        self.assertTrue(reopened.manifest_known)
        self.assertEqual(reopened.held_ranges(), ((0, half),))
        missing = missing_indexes(count, reopened.held_ranges())
        for i in missing:
            store_whole(reopened, i, read_chunk(prepared, i))
            sent += 1
        self.assertEqual(sent - count, 1)
        final = reopened.finish()
        self.assertEqual(sha256_file(final), sha256_file(prepared.path))

    def test_sync_is_due_every_sync_every_bytes(self) -> None:
        """When chunks are held, then a sync is due once SYNC_EVERY bytes were held since the
        last one was asked for, and the count starts again; sync flushes without error."""
        from jarvis.files import receive

        self.patch(receive, "SYNC_EVERY", 2 * CHUNK)
        prepared, _directory, partial = self.make()
        partial.set_manifest(prepared.chunk_hashes)
        due = []
        for i in range(5):
            store_whole(partial, i, read_chunk(prepared, i))
            due.append(partial.sync_due())
        self.assertEqual(due, [False, True, False, True, False])
        partial.sync()

    def test_chunk_corrupted_on_disk_is_fetched_again(self) -> None:
        """When a held chunk is damaged on disk between runs, then reopening marks it missing."""
        prepared, directory, partial = self.make()
        partial.set_manifest(prepared.chunk_hashes)
        for i in range(4):
            store_whole(partial, i, read_chunk(prepared, i))
        partial.close()
        with open(partial.partial_path, "r+b") as f:
            f.seek(2 * CHUNK + 7)
            byte = f.read(1)
            f.seek(2 * CHUNK + 7)
            f.write(bytes([byte[0] ^ 0xFF]))
        reopened = PartialFile.reopen(directory, prepared.offer)
        self.addCleanup(reopened.close)
        self.assertEqual(reopened.held_ranges(), ((0, 2), (3, 4)))
        self.assertEqual(reopened.held_bytes, 3 * CHUNK)

    def test_final_check_refuses_and_removes(self) -> None:
        """When the file on disk no longer matches the offer at the end, then
        VerificationFailed, and neither the file nor its partial files remain."""
        prepared, directory, partial = self.make()
        partial.set_manifest(prepared.chunk_hashes)
        for i in range(prepared.offer.chunks):
            store_whole(partial, i, read_chunk(prepared, i))
        with open(partial.partial_path, "r+b") as f:
            f.write(b"\x00" * 16)
        with self.assertRaises(VerificationFailed):
            partial.finish()
        self.assertEqual(os.listdir(directory), [])

    def test_reopen_refuses_another_transfers_sidecar(self) -> None:
        """When the sidecar on disk belongs to another offer, then PartialFileMismatch."""
        prepared, directory, partial = self.make()
        partial.close()
        other = make_offer(prepared.path, chunk_size=CHUNK)
        # Same name and id, another content hash: the sidecar does not describe it.
        lying = replace(other.offer, transfer_id=prepared.offer.transfer_id)
        lying = replace(lying, content_hash=b"\x00" * 32)
        with self.assertRaises(PartialFileMismatch):
            PartialFile.reopen(directory, lying)


class DirectWriteTests(SynchronousTestCase):
    """Pieces written with ``O_DIRECT``, past the page cache."""

    def setUp(self) -> None:
        self.prepared = make_prepared(self, 2 * FOUR_PIECES + 1000, chunk=FOUR_PIECES)
        self.directory = short_tempdir(self)
        self.partial = PartialFile.create(self.directory, self.prepared.offer)
        self.addCleanup(lambda: self.partial.close())
        if not self.partial.writes_direct:
            raise SkipTest("no O_DIRECT for this file system or platform")
        self.partial.set_manifest(self.prepared.chunk_hashes)
        with open(self.prepared.path, "rb") as f:
            self.data = f.read()

    def store(self, index: int, aligned: mmap.mmap, shift: int = 0) -> None:
        """Store chunk *index* piece by piece from the page-aligned *aligned* (at *shift*)."""
        chunk = self.data[index * FOUR_PIECES : (index + 1) * FOUR_PIECES]
        for piece in range(piece_count(len(chunk))):
            part = chunk[piece * PIECE_SIZE : (piece + 1) * PIECE_SIZE]
            aligned[shift : shift + len(part)] = part
            self.partial.store_piece(index, piece, memoryview(aligned)[shift : shift + len(part)])

    def test_aligned_pieces_go_past_the_page_cache(self) -> None:
        """When every piece comes from page-aligned memory (as the transfer's work buffers
        are), then the aligned ones are written with O_DIRECT to the end, the short last piece
        through the page cache, nothing is prepared in the page cache, and the file lands
        byte for byte, its re-read check included."""
        aligned = mmap.mmap(-1, PIECE_SIZE)
        for index in range(self.prepared.offer.chunks):
            self.store(index, aligned)
        self.assertTrue(self.partial.writes_direct)
        self.assertEqual(self.partial.prepare_chunks(0, self.prepared.offer.chunks), 0)
        final = self.partial.finish(reread=True)
        self.assertEqual(sha256_file(final), sha256_file(self.prepared.path))

    def test_a_refused_direct_write_falls_back_to_the_page_cache(self) -> None:
        """When the kernel refuses a direct write (here a buffer one byte off alignment), then
        that piece and every later one are written through the page cache, and the file still
        lands byte for byte."""
        aligned = mmap.mmap(-1, PIECE_SIZE + 1)
        self.store(0, aligned)
        self.assertTrue(self.partial.writes_direct)
        self.store(1, aligned, shift=1)
        if self.partial.writes_direct:
            raise SkipTest("this file system accepts direct writes from unaligned memory")
        self.store(2, aligned)
        final = self.partial.finish(reread=True)
        self.assertEqual(sha256_file(final), sha256_file(self.prepared.path))

    def test_the_direct_descriptor_is_the_same_file_whatever_its_name_becomes(self) -> None:
        """When another file takes the partial file's name before the direct descriptor is
        opened (a meddler swapping files in the directory), then the descriptor still opens
        the file already open, never the one now under the name."""
        directory = short_tempdir(self)
        path = os.path.join(directory, "p")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.addCleanup(os.close, fd)
        os.rename(path, path + ".moved")
        with open(path, "wb") as planted:
            planted.write(b"planted")
        direct = _open_direct(fd)
        self.assertGreaterEqual(direct, 0)
        self.addCleanup(os.close, direct)
        self.assertEqual(os.fstat(direct).st_ino, os.fstat(fd).st_ino)
        self.assertNotEqual(os.stat(path).st_ino, os.fstat(fd).st_ino)


class FileSourceTests(SynchronousTestCase):
    def test_offer_and_changed_source(self) -> None:
        """When a file is offered and then changed, then reading any chunk raises
        SourceChanged (the file's signature changed: the sender does not hash chunks again)."""
        prepared = make_prepared(self, 3 * CHUNK + 5, name="photo.JPG")
        self.assertEqual(prepared.offer.media_type, "image/jpeg")
        self.assertEqual(prepared.offer.chunks, 4)
        self.assertIsNotNone(prepared.signature)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        self.assertEqual(source.read_chunk(3), read_chunk(prepared, 3))
        with open(prepared.path, "r+b") as f:
            f.seek(CHUNK)
            f.write(b"changed")
        with self.assertRaises(SourceChanged):
            source.read_chunk(1)
        with self.assertRaises(SourceChanged):
            source.read_chunk(0)

    def test_changed_source_same_times(self) -> None:
        """When a file is changed and its modification time set back, then its change time
        still differs and reading raises SourceChanged."""
        prepared = make_prepared(self, 2 * CHUNK)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        before = os.stat(prepared.path)
        with open(prepared.path, "r+b") as f:
            f.write(b"x")
        os.utime(prepared.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        with self.assertRaises(SourceChanged):
            source.read_chunk(1)

    def test_without_signature_each_chunk_is_hashed(self) -> None:
        """When a prepared file has no signature (it changed while being hashed), then each
        chunk is checked against its hash: a changed chunk raises, the others still read."""
        prepared = replace(make_prepared(self, 3 * CHUNK), signature=None)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        with open(prepared.path, "r+b") as f:
            f.seek(CHUNK)
            f.write(b"changed")
        with self.assertRaises(SourceChanged):
            source.read_chunk(1)
        self.assertEqual(source.read_chunk(0), read_chunk(prepared, 0))

    def test_read_pieces_of_a_chunk(self) -> None:
        """When pieces of a chunk are read into one reused buffer, then they are the chunk's
        bytes from the first piece to the end piece (the last piece short); after a change the
        check raises SourceChanged, and a piece that is not in the chunk is refused."""
        prepared = make_prepared(self, 2 * FOUR_PIECES + 1000, chunk=FOUR_PIECES)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        whole = read_chunk(prepared, 1)
        self.assertEqual(read_pieces(source, 1, 1, 3), whole[PIECE_SIZE : 3 * PIECE_SIZE])
        self.assertEqual(read_pieces(source, 2, 0, 1), read_chunk(prepared, 2))
        self.assertEqual(len(read_pieces(source, 2, 0, 1)), 1000)
        with self.assertRaises(ValueError):
            source.read_piece(2, 1, bytearray(PIECE_SIZE))  # the last chunk has one piece
        with open(prepared.path, "r+b") as f:
            f.write(b"changed")
        with self.assertRaises(SourceChanged):
            read_pieces(source, 1, 0, 2)

    def test_a_piece_is_read_into_the_callers_buffer(self) -> None:
        """When a piece is read from a file with a signature, then its bytes are in the
        caller's buffer (no buffer of its own), and a file cut shorter raises SourceChanged."""
        prepared = make_prepared(self, 2 * FOUR_PIECES, chunk=FOUR_PIECES)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        into = mmap.mmap(-1, PIECE_SIZE)
        view = source.read_piece(1, 2, into)
        self.assertEqual(bytes(view), read_chunk(prepared, 1)[2 * PIECE_SIZE : 3 * PIECE_SIZE])
        self.assertEqual(into[:], bytes(view))
        view.release()
        os.truncate(prepared.path, FOUR_PIECES + PIECE_SIZE)
        with self.assertRaises(SourceChanged):
            source.read_piece(1, 2, into)

    def test_read_pieces_without_signature_checks_the_chunk(self) -> None:
        """When a prepared file has no signature, then reading pieces checks their whole chunk
        against its hash: a change in another piece of the chunk raises."""
        prepared = replace(make_prepared(self, 2 * FOUR_PIECES, chunk=FOUR_PIECES), signature=None)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        with open(prepared.path, "r+b") as f:
            f.seek(FOUR_PIECES + 3 * PIECE_SIZE)
            f.write(b"changed")
        self.assertEqual(read_pieces(source, 0, 2, 4), read_chunk(prepared, 0)[2 * PIECE_SIZE :])
        with self.assertRaises(SourceChanged):
            read_pieces(source, 1, 0, 1)

    def test_read_pieces_without_signature_reads_each_chunk_once(self) -> None:
        """When a file without a signature is sent in batches of pieces (two per chunk), then
        each chunk is read and checked once, not once per batch, and every batch holds the
        chunk's right bytes."""
        prepared = replace(make_prepared(self, 2 * FOUR_PIECES, chunk=FOUR_PIECES), signature=None)
        source = FileSource(prepared)
        self.addCleanup(source.close)
        reads: list[int] = []
        real_read_chunk = source.read_chunk

        def read_chunk_counted(index: int) -> bytes:
            reads.append(index)
            return real_read_chunk(index)

        source.read_chunk = read_chunk_counted  # type: ignore[method-assign]
        for index in (0, 1):
            whole = read_chunk(prepared, index)
            self.assertEqual(read_pieces(source, index, 0, 2), whole[: 2 * PIECE_SIZE])
            self.assertEqual(read_pieces(source, index, 2, 4), whole[2 * PIECE_SIZE :])
        self.assertEqual(reads, [0, 1])

    def test_prepare_again_after_restart(self) -> None:
        """When the sender restarts, then the same offer is rebuilt from the file, and refused
        once the file changed."""
        prepared = make_prepared(self, 2 * CHUNK + 1)
        again = prepare_again(prepared.path, prepared.offer)
        self.assertEqual(again, prepared)
        with open(prepared.path, "r+b") as f:
            f.seek(CHUNK + 3)
            f.write(b"!")
        with self.assertRaises(SourceChanged):
            prepare_again(prepared.path, prepared.offer)
        with open(prepared.path, "ab") as f:
            f.write(b"more")
        with self.assertRaises(SourceChanged):
            prepare_again(prepared.path, prepared.offer)


class HashRangeTests(SynchronousTestCase):
    def test_range_hashed_block_by_block(self) -> None:
        """When a range longer than one block is hashed through a small reused buffer, then the
        hash is the range's chunk hash; a range past the end of the file hashes what is there."""
        from jarvis.files.hashing import hash_range

        path = os.path.join(short_tempdir(self), "r.bin")
        data = os.urandom(3 * 1000 + 17)
        with open(path, "wb") as f:
            f.write(data)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        buffer = bytearray(1000)
        self.assertEqual(hash_range(fd, 5, 2500, buffer).digest(), chunk_hash(data[5:2505]))
        self.assertEqual(hash_range(fd, 2000, 5000, buffer).digest(), chunk_hash(data[2000:]))
        self.assertEqual(hash_range(fd, 0, len(data)).digest(), chunk_hash(data))


class PieceTests(SynchronousTestCase):
    """A chunk of four pieces stored piece by piece (``store_piece``)."""

    def setUp(self) -> None:
        source_dir = short_tempdir(self)
        self.path = os.path.join(source_dir, "p.bin")
        with open(self.path, "wb") as f:
            f.write(os.urandom(2 * FOUR_PIECES))
        self.prepared = make_offer(self.path, chunk_size=FOUR_PIECES)
        self.directory = short_tempdir(self)
        self.partial = PartialFile.create(self.directory, self.prepared.offer)
        self.addCleanup(lambda: self.partial.close())
        with open(self.path, "rb") as f:
            self.data = f.read()
        self.partial.set_manifest(self.prepared.chunk_hashes)

    def piece(self, index: int, piece: int) -> bytes:
        start = index * FOUR_PIECES + piece * PIECE_SIZE
        return self.data[start : start + PIECE_SIZE]

    def test_pieces_in_order_hold_the_chunk_after_the_last(self) -> None:
        """When a chunk's four pieces are stored in order, then the first three report None
        (written, not yet held) and the last one True (verified and held)."""
        results = [self.partial.store_piece(1, p, self.piece(1, p)) for p in range(4)]
        self.assertEqual(results, [None, None, None, True])
        self.assertEqual(self.partial.held_ranges(), ((1, 2),))
        self.assertEqual(self.partial.partial_pieces(), ())

    def test_piece_out_of_order_is_refused(self) -> None:
        """When a chunk's second piece comes before its first, or a piece has the wrong length,
        then ChunkMismatch, and nothing is recorded."""
        with self.assertRaises(ChunkMismatch):
            self.partial.store_piece(0, 1, self.piece(0, 1))
        with self.assertRaises(ChunkMismatch):
            self.partial.store_piece(0, 0, self.piece(0, 0)[:-1])
        self.assertEqual(self.partial.partial_pieces(), ())

    def test_cut_off_mid_chunk_resumes_from_the_next_piece(self) -> None:
        """When two pieces of a chunk are written and the partial file is reopened (a restart),
        then it reports them (for Have), and the chunk completes from its third piece: the
        written pieces are read back into the chunk's hash."""
        self.partial.store_piece(0, 0, self.piece(0, 0))
        self.partial.store_piece(0, 1, self.piece(0, 1))
        self.partial.close()
        self.partial = PartialFile.reopen(self.directory, self.prepared.offer)
        self.assertEqual(self.partial.partial_pieces(), ((0, 2),))
        self.assertEqual(self.partial.held_ranges(), ())
        self.assertIsNone(self.partial.store_piece(0, 2, self.piece(0, 2)))
        self.assertTrue(self.partial.store_piece(0, 3, self.piece(0, 3)))
        self.assertEqual(self.partial.held_ranges(), ((0, 1),))

    def test_written_piece_damaged_while_cut_off_is_fetched_again(self) -> None:
        """When a written piece changes on the disk before the chunk resumes, then the chunk's
        last piece raises PieceDamaged (not ChunkMismatch: the sender is not blamed), and the
        chunk is marked missing, so the next connection fetches it whole."""
        self.partial.store_piece(0, 0, self.piece(0, 0))
        self.partial.close()
        with open(self.partial.partial_path, "r+b") as f:
            f.seek(100)
            f.write(b"\x00damaged\x00")
        self.partial = PartialFile.reopen(self.directory, self.prepared.offer)
        for p in (1, 2):
            self.partial.store_piece(0, p, self.piece(0, p))
        with self.assertRaises(PieceDamaged):
            self.partial.store_piece(0, 3, self.piece(0, 3))
        self.assertEqual(self.partial.partial_pieces(), ())
        self.partial.close()
        self.partial = PartialFile.reopen(self.directory, self.prepared.offer)
        self.assertEqual((self.partial.partial_pieces(), self.partial.held_ranges()), ((), ()))
