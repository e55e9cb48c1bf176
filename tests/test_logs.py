"""The daemon's log files: private (0600) whatever the umask, rotation with a size cap,
pseudonyms, Twisted's per-socket noise."""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.application.service import Application
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.app.daemon import DaemonOptions, make_service
from jarvis.common import logs
from jarvis.crypto.identity import IdentityKey
from tests.daemons import short_tempdir
from tests.test_e2e_cli import Cli


def emit(observer: Any, count: int, text: str = "x" * 100) -> None:
    """Send *count* events of about 150 bytes to *observer*."""
    log = Logger(namespace="tests.logs", observer=observer)
    for i in range(count):
        log.info("event {i}: {text}", i=i, text=text)


def log_files(directory: str, name: str) -> list[str]:
    return sorted(f for f in os.listdir(directory) if f == name or f.startswith(name + "."))


class RotationTests(SynchronousTestCase):
    """Both logs rotate at a size cap and keep a bounded number of files."""

    def test_json_log_rotates_and_keeps_bounded_files(self) -> None:
        """When far more than the cap is written to the JSON log, then it rotates at the cap,
        keeps at most *keep* old files, and all of them stay private (0600)."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "jarvis.log.json")
        observer, f = logs.json_file_observer(path, LogLevel.info, rotate_bytes=4096, keep=2)
        self.addCleanup(f.close)
        emit(observer, 1000)  # ~300 KB of JSON
        files = log_files(directory, "jarvis.log.json")
        self.assertEqual(files, ["jarvis.log.json", "jarvis.log.json.1", "jarvis.log.json.2"])
        total = 0
        for name in files:
            st = os.stat(os.path.join(directory, name))
            self.assertLess(st.st_size, 4096 + 1024)  # the cap plus at most one event
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
            total += st.st_size
        self.assertLess(total, 3 * (4096 + 1024))

    def test_text_log_rotates_under_twistd_logfile(self) -> None:
        """When twistd runs detached with ``--logfile``, then the daemon gives the application
        a text observer writing that file, rotating at the cap with bounded old files, and
        without Twisted's per-socket lines that name remote addresses."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "jarvis.log")
        observer = logs.text_observer(
            {"logfile": path, "nodaemon": False}, rotate_bytes=4096, keep=3
        )
        assert observer is not None
        emit(observer, 1000)
        Logger(namespace="twisted.internet.tcp.Port", observer=observer).info(
            "EMFILE recovery: Closed socket from {address}", address=("198.51.100.9", 4242)
        )
        files = log_files(directory, "jarvis.log")
        self.assertEqual(files, ["jarvis.log", "jarvis.log.1", "jarvis.log.2", "jarvis.log.3"])
        for name in files:
            with open(os.path.join(directory, name)) as f:
                text = f.read()
            self.assertLess(len(text), 4096 + 1024)
            self.assertNotIn("198.51.100.9", text)

    def test_both_logs_rotate_side_by_side(self) -> None:
        """When the text log and the JSON log share their directory (the daemon's
        ``jarvis.log`` and ``jarvis.log.json``) and the JSON log has rotated files, then the
        text log still rotates at its cap, counting only its own old files, and neither
        touches the other's: the JSON log's ``jarvis.log.json.2`` was taken for the text
        log's second old file, its rotation failed on a file that does not exist, and every
        line after it raised (the text log stopped for good, each event cost a traceback)."""
        directory = self.mktemp()
        os.makedirs(directory)
        json_observer, f = logs.json_file_observer(
            os.path.join(directory, "jarvis.log.json"), LogLevel.info, rotate_bytes=4096, keep=2
        )
        self.addCleanup(f.close)
        emit(json_observer, 100)  # ~30 KB: jarvis.log.json.1 and .2 exist
        text_observer = logs.text_observer(
            {"logfile": os.path.join(directory, "jarvis.log"), "nodaemon": False},
            rotate_bytes=4096,
            keep=3,
        )
        assert text_observer is not None
        emit(text_observer, 200)  # raised FileNotFoundError before
        emit(json_observer, 100)
        self.assertEqual(
            sorted(os.listdir(directory)),
            [
                *("jarvis.log", "jarvis.log.1", "jarvis.log.2", "jarvis.log.3"),
                *("jarvis.log.json", "jarvis.log.json.1", "jarvis.log.json.2"),
            ],
        )
        with open(os.path.join(directory, "jarvis.log")) as text:
            self.assertIn("event 199", text.read())  # the last line written is there
        with open(os.path.join(directory, "jarvis.log.json")) as lines:
            self.assertIn('"i": 99', lines.read())

    def test_daemon_installs_its_text_observer_in_twistd_application(self) -> None:
        """When twistd attaches the daemon to its application, then the application carries
        the rotating text observer (twistd uses it instead of its never-pruned file)."""
        root = self.mktemp()
        os.makedirs(root)
        options = DaemonOptions()
        options.parseOptions(["--data-dir", os.path.join(root, "data"), "--ipc", "unix:x.sock"])
        twistd_options = {"logfile": os.path.join(root, "jarvis.log")}
        options.parent = twistd_options  # what usage.Options sets for a subcommand
        application = Application("jarvis")
        service = make_service(options, reactor=MemoryReactorClock())
        service.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        emit(observer, 1)
        self.assertTrue(os.path.exists(twistd_options["logfile"]))

    def test_per_accept_lines_pass_once_per_interval(self) -> None:
        """When Twisted logs descriptor exhaustion at every accept, then each line passes once
        per interval of event time."""
        noise = logs.ConnectionNoiseFilter(interval=60)
        fmt = "EMFILE encountered; releasing reserved file descriptor."
        passed = [
            noise({"log_format": fmt, "log_time": 1000.0 + t * 0.5}) != logs.PredicateResult.no
            for t in range(240)
        ]
        self.assertEqual(sum(passed), 2)


class PseudonymTests(SynchronousTestCase):
    """Contacts and addresses appear in logs only as per-install pseudonyms."""

    def setUp(self) -> None:
        self.addCleanup(logs.set_log_key, os.urandom(32))

    def test_key_created_once_and_private(self) -> None:
        """When the data directory has no log key, then one is made (0600) and then reused."""
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        key = logs.load_log_key(data_dir)
        self.assertEqual(len(key), 32)
        self.assertEqual(logs.load_log_key(data_dir), key)
        mode = os.stat(os.path.join(data_dir, logs.LOG_KEY_FILE)).st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    def test_pseudonym_is_keyed_and_stable(self) -> None:
        """When a uid is logged, then it appears as 16 hex digits that depend on the install's
        key, the same in every line."""
        uid = IdentityKey.generate().uid
        logs.set_log_key(b"k" * 32)
        first = logs.log_id(uid)
        self.assertRegex(first, "^[0-9a-f]{16}$")
        self.assertEqual(logs.log_id(uid), first)
        logs.set_log_key(b"j" * 32)
        self.assertNotEqual(logs.log_id(uid), first)

    def test_redact_hides_uids_and_addresses_in_reasons(self) -> None:
        """When a reason names a uid or an address, then the logged text names neither."""
        uid = IdentityKey.generate().uid
        text = logs.redact(
            f"the certificate's key is {uid}, not x; 192.0.2.4:7770 and [2001:db8::1]:7770"
        )
        self.assertNotIn(uid, text)
        self.assertNotIn("192.0.2.4", text)
        self.assertNotIn("2001:db8", text)
        self.assertIn(logs.log_id(uid), text)


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
