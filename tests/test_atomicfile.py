"""Tests for jarvis.common.atomicfile and every write path that uses it (export, key file, contact
card,
the UI's saved files, the daemon's endpoint and token files): planted symbolic links and
pre-created files in the destination's directory never receive the content."""

from __future__ import annotations

import os
import stat
import tempfile
from unittest import mock

from twisted.trial.unittest import TestCase

from jarvis.app.commands import _write_card
from jarvis.common import atomicfile
from jarvis.common.errors import InvalidInput
from jarvis.ui.app import write_private_file
from tests.test_node import make_node

BAIT = b"the attacker's file, untouched\n"


def shared_dir(testcase: TestCase) -> str:
    """A world-writable sticky directory, like /tmp, removed at the end of *testcase*."""
    path = tempfile.mkdtemp(prefix="jv-shared-", dir="/tmp")
    os.chmod(path, 0o1777)
    testcase.addCleanup(_remove_tree, path)
    return path


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def make_victim(testcase: TestCase) -> str:
    """A file standing for ``identity.key``: what a planted link points at."""
    directory = tempfile.mkdtemp(prefix="jv-victim-", dir="/tmp")
    testcase.addCleanup(_remove_tree, directory)
    victim = os.path.join(directory, "identity.key")
    with open(victim, "wb") as f:
        f.write(BAIT)
    return victim


def plant_links(directory: str, name: str, victim: str) -> list[str]:
    """Plant symbolic links to *victim* at the temporary names a writer of *name* could guess:
    the old ``NAME.tmp<pid>`` (this process is the daemon in these tests) and other usual
    spellings."""
    guesses = [
        f"{name}.tmp{os.getpid()}",
        f"{name}.tmp",
        f"{name}~",
        f".{name}.tmp",
        f".{name}.swp",
        f"{name}.new",
        f"{name}.part",
    ]
    planted = []
    for guess in guesses:
        link = os.path.join(directory, guess)
        os.symlink(victim, link)
        planted.append(link)
    return planted


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class PlantedLinkTests(TestCase):
    def test_links_at_guessable_names_are_not_followed(self) -> None:
        """When symbolic links to a victim file are planted at the old predictable temporary
        name and at other plausible ones, then writing the destination leaves the victim
        untouched, the links in place, and the destination holds the content."""
        directory = shared_dir(self)
        victim = make_victim(self)
        planted = plant_links(directory, "out.jexport", victim)
        dest = os.path.join(directory, "out.jexport")
        atomicfile.write_atomically(dest, b"sealed export")
        self.assertEqual(read(victim), BAIT)
        self.assertEqual(read(dest), b"sealed export")
        for link in planted:
            self.assertTrue(os.path.islink(link), link)
        self.assertEqual(stat.S_IMODE(os.lstat(dest).st_mode), 0o600)

    def test_destination_link_is_replaced_not_followed(self) -> None:
        """When the destination itself is a symbolic link to a victim, then a plain (replacing)
        write replaces the link with a regular file (rename does not follow) and the victim is
        untouched."""
        directory = shared_dir(self)
        victim = make_victim(self)
        dest = os.path.join(directory, "card.txt")
        os.symlink(victim, dest)
        atomicfile.write_atomically(dest, b"card", mode=0o644)
        self.assertEqual(read(victim), BAIT)
        self.assertFalse(os.path.islink(dest))
        self.assertEqual(read(dest), b"card")
        self.assertEqual(stat.S_IMODE(os.lstat(dest).st_mode), 0o644)

    def test_exclusive_refuses_any_existing_name(self) -> None:
        """When the destination exists as a file, a link to a victim or a dangling link, then an
        exclusive write refuses with FileExistsError and changes nothing; no temporary file is
        left."""
        directory = shared_dir(self)
        victim = make_victim(self)
        existing = os.path.join(directory, "file")
        with open(existing, "wb") as f:
            f.write(BAIT)
        link = os.path.join(directory, "link")
        os.symlink(victim, link)
        dangling = os.path.join(directory, "dangling")
        os.symlink(os.path.join(directory, "nowhere"), dangling)
        for dest in (existing, link, dangling):
            with self.assertRaises(FileExistsError):
                atomicfile.write_atomically(dest, b"new", exclusive=True)
        self.assertEqual(read(existing), BAIT)
        self.assertEqual(read(victim), BAIT)
        self.assertFalse(os.path.exists(os.path.join(directory, "nowhere")))
        self.assertEqual(sorted(os.listdir(directory)), ["dangling", "file", "link"])


class PreCreatedFileTests(TestCase):
    def test_world_writable_destination_replaced_by_private_file(self) -> None:
        """When another user pre-created the destination world-writable (and holds it open),
        then the write gives the name a new 0600 inode: the attacker's inode keeps its old
        content and never receives the new one."""
        directory = shared_dir(self)
        dest = os.path.join(directory, "out.jexport")
        with open(dest, "wb") as f:
            f.write(BAIT)
        os.chmod(dest, 0o666)
        before = os.lstat(dest)
        with open(dest, "rb") as held:  # the attacker's open descriptor on their inode
            atomicfile.write_atomically(dest, b"secret content")
            held.seek(0)
            self.assertEqual(held.read(), BAIT)
        after = os.lstat(dest)
        self.assertNotEqual(after.st_ino, before.st_ino)
        self.assertEqual(stat.S_IMODE(after.st_mode), 0o600)
        self.assertEqual(read(dest), b"secret content")

    def test_mode_is_applied_whatever_the_umask(self) -> None:
        """When the process umask is loose (000), then the new file still has exactly the
        requested mode."""
        directory = shared_dir(self)
        old = os.umask(0)
        try:
            atomicfile.write_atomically(os.path.join(directory, "a"), b"x")
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.lstat(os.path.join(directory, "a")).st_mode), 0o600)


class FailureTests(TestCase):
    def test_no_temporary_file_left_on_failure(self) -> None:
        """When writing, syncing or renaming fails, then the error propagates, the destination
        keeps its old content, and no temporary file remains in the directory."""
        directory = shared_dir(self)
        dest = os.path.join(directory, "keep")
        with open(dest, "wb") as f:
            f.write(b"old")
        for target in ("fsync", "replace"):
            with mock.patch.object(
                atomicfile.os, target, side_effect=OSError(28, "No space left on device")
            ):
                with self.assertRaises(OSError):
                    atomicfile.write_atomically(dest, b"new")
            self.assertEqual(os.listdir(directory), ["keep"], target)
            self.assertEqual(read(dest), b"old")

    def test_no_temporary_file_left_when_exclusive_refused(self) -> None:
        """When an exclusive write is refused, then only the pre-existing name remains."""
        directory = shared_dir(self)
        dest = os.path.join(directory, "taken")
        with open(dest, "wb") as f:
            f.write(b"old")
        with self.assertRaises(FileExistsError):
            atomicfile.write_atomically(dest, b"new", exclusive=True)
        self.assertEqual(os.listdir(directory), ["taken"])


class ExportTests(TestCase):
    async def test_export_into_shared_dir_with_planted_links(self) -> None:
        """When an export goes into a shared temporary directory where another user planted
        links to the identity key at the old ``FILE.tmp<daemon pid>`` name and other plausible
        ones, then the key file is untouched and the export is a private file that opens."""
        node, _clock, _events = make_node(self)
        created = await node.create_identity("Alice", "pw")
        key_before = read(node.keyfile_path)
        directory = shared_dir(self)
        planted = plant_links(directory, "me.jexport", node.keyfile_path)
        dest = os.path.join(directory, "me.jexport")
        await node.export_account(dest, "export pw")
        self.assertEqual(read(node.keyfile_path), key_before)
        self.assertFalse(os.path.islink(dest))
        self.assertEqual(stat.S_IMODE(os.lstat(dest).st_mode), 0o600)
        for link in planted:
            self.assertEqual(os.readlink(link), node.keyfile_path)
        other, _c, _e = make_node(self)
        result = await other.import_account(dest, "export pw", "new pw")
        self.assertEqual(result["uid"], created["uid"])

    async def test_export_refuses_pre_created_destination(self) -> None:
        """When another user pre-created the export's name (world-writable) or a link there,
        then the export is refused: the attacker's file receives nothing and the link's target
        is untouched."""
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        key_before = read(node.keyfile_path)
        directory = shared_dir(self)
        trap = os.path.join(directory, "trap.jexport")
        with open(trap, "wb") as f:
            f.write(BAIT)
        os.chmod(trap, 0o666)
        link = os.path.join(directory, "link.jexport")
        os.symlink(node.keyfile_path, link)
        for dest in (trap, link):
            with self.assertRaises(InvalidInput):
                await node.export_account(dest, "export pw")
        self.assertEqual(read(trap), BAIT)
        self.assertEqual(read(node.keyfile_path), key_before)
        self.assertEqual(sorted(os.listdir(directory)), ["link.jexport", "trap.jexport"])


class KeyFileTests(TestCase):
    async def test_key_file_written_through_helper(self) -> None:
        """When the identity is created and its password changed with a link to a victim
        planted at the old ``identity.key.tmp<pid>`` name, then the victim is untouched and the
        key file is a private regular file."""
        node, _clock, _events = make_node(self)
        victim = make_victim(self)
        plant_links(node.data_dir, "identity.key", victim)
        await node.create_identity("Alice", "pw")
        await node.change_password("pw", "pw2")
        self.assertEqual(read(victim), BAIT)
        st = os.lstat(node.keyfile_path)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)


class CardAndUiFileTests(TestCase):
    def test_card_and_saved_file_replace_links(self) -> None:
        """When ``jarvis whoami --card`` or the UI saves to a name that is a link to a victim
        (or is another user's world-writable file), then the link/file is replaced by a new
        file: the victim and the attacker's inode keep their content."""
        directory = shared_dir(self)
        victim = make_victim(self)
        card = os.path.join(directory, "card.txt")
        os.symlink(victim, card)
        _write_card(card, "jarvis-card\n")
        self.assertEqual(read(victim), BAIT)
        self.assertEqual(read(card), b"jarvis-card\n")
        self.assertEqual(stat.S_IMODE(os.lstat(card).st_mode), 0o644)

        saved = os.path.join(directory, "saved.txt")
        with open(saved, "wb") as f:
            f.write(BAIT)
        os.chmod(saved, 0o666)
        with open(saved, "rb") as held:
            write_private_file(saved, "conversation text")
            self.assertEqual(held.read(), BAIT)
        self.assertEqual(read(saved), b"conversation text")
        self.assertEqual(stat.S_IMODE(os.lstat(saved).st_mode), 0o600)
