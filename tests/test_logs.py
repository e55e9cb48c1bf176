"""Tests for the daemon's log files: private (0600) whoever creates them and whatever the umask."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import TestCase

from jarvis import logs
from tests.daemons import short_tempdir
from tests.test_e2e_cli import Cli


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class PrivateLogTests(TestCase):
    timeout = 120

    async def test_detached_daemon_logs_are_private(self) -> None:
        """When ``jarvis daemon start`` runs under umask 022, in one data directory with no logs
        and in one with logs an older version left 0644, then after start every log file
        (twistd's jarvis.log and jarvis.log.json) is 0600."""
        root = short_tempdir(self)
        fresh, old = Cli(root, "fresh"), Cli(root, "old")
        os.mkdir(old.data_dir, 0o700)
        for name in ("jarvis.log", "jarvis.log.json"):
            path = os.path.join(old.data_dir, name)
            with open(path, "w") as f:
                f.write("")
            os.chmod(path, 0o644)
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        for cli in (fresh, old):
            self.addCleanup(cli.run, "daemon", "stop")
            await cli.ok("daemon", "start", "--listen", "tcp:0:interface=127.0.0.1")
            for name in ("jarvis.log", "jarvis.log.json"):
                path = os.path.join(cli.data_dir, name)
                self.assertEqual(mode(path), 0o600, path)

    def test_open_private_append(self) -> None:
        """When a log is opened for appending, then a new file is 0600, an existing 0644 one is
        made 0600, and a symbolic link at the name is refused (its target untouched)."""
        directory = short_tempdir(self)
        path = os.path.join(directory, "a.log")
        logs.open_private_append(path).close()
        self.assertEqual(mode(path), 0o600)
        os.chmod(path, 0o644)
        logs.open_private_append(path).close()
        self.assertEqual(mode(path), 0o600)
        target = os.path.join(directory, "target")
        with open(target, "w") as f:
            f.write("keep")
        os.chmod(target, 0o644)
        link = os.path.join(directory, "b.log")
        os.symlink(target, link)
        with self.assertRaises(OSError):
            logs.open_private_append(link)
        with open(target) as f:
            self.assertEqual(f.read(), "keep")
        self.assertEqual(mode(target), 0o644)
