"""Tests for jarvis.app.cli: argument parsing, password files, exit codes and one-line errors.

The process tests run ``python -m jarvis`` in a child process, against nothing (daemon not
running) or against a FakeNode server on a UNIX socket in this process, found through the data
directory's ``ipc.endpoint`` file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import ProcessProtocol
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.app import cli
from jarvis.app.exitstatus import EXIT_BROKEN_PIPE, EXIT_TOO_MANY_ATTEMPTS
from jarvis.common import errors
from jarvis.testing import fake_link
from tests.test_client import REPO, child_env
from tests.test_ipc_server import SocketTestCase


class ParsingTests(SynchronousTestCase):
    """Command-line parsing."""

    def parse(self, *args: str) -> cli.Options:
        options = cli.Options()
        options.parseOptions(list(args))
        return options

    def test_send(self) -> None:
        """When send gets contact, text and --wait, then they are parsed; a bad --wait is a
        usage error."""
        options = self.parse("--data-dir", "/x", "send", "alice", "hi", "--wait", "sent")
        self.assertEqual(options.subCommand, "send")
        sub = options.subOptions
        self.assertEqual(
            (sub["contact"], sub["text"], sub["wait"], sub["timeout"]),
            ("alice", "hi", "sent", 30.0),
        )
        self.assertRaises(usage.UsageError, self.parse, "send", "alice", "hi", "--wait", "read")
        self.assertRaises(usage.UsageError, self.parse, "send")

    def test_send_text_from_stdin(self) -> None:
        """When send gets no TEXT, then the text comes from stdin (as with '-'), so it need not
        appear in the process list; --help says so."""
        self.assertEqual(self.parse("send", "alice").subOptions["text"], "-")
        self.assertIn("stdin", str(cli.SendOptions()))
        self.assertIn("process list", str(cli.SendOptions()))

    def test_history_limits(self) -> None:
        """When history gets --limit N, then any N >= 1 is taken (no ceiling); --all means no
        limit; both together, or N < 1, are usage errors; --before/--after take message ids."""
        self.assertEqual(self.parse("history", "bob").subOptions["limit"], cli.DEFAULT_HISTORY)
        sub = self.parse("history", "bob", "--limit", "10000").subOptions
        self.assertEqual(sub["limit"], 10000)
        self.assertIsNone(self.parse("history", "bob", "--all").subOptions["limit"])
        self.assertRaises(usage.UsageError, self.parse, "history", "bob", "--limit", "0")
        self.assertRaises(usage.UsageError, self.parse, "history", "bob", "--all", "--limit", "5")
        sub = self.parse("history", "bob", "--before", "ab" * 16, "--after", "cd" * 16).subOptions
        self.assertEqual((sub["before"], sub["after"]), ("ab" * 16, "cd" * 16))

    def test_new_commands(self) -> None:
        """When verify, rename, remove, settings, peers and passwd are parsed, then their
        arguments and flags land where the commands read them."""
        self.assertTrue(self.parse("verify", "bob", "--yes").subOptions["yes"])
        sub = self.parse("rename", "bob", "Bobby B").subOptions
        self.assertEqual((sub["contact"], sub["name"]), ("bob", "Bobby B"))
        self.assertTrue(self.parse("remove", "bob", "--with-history").subOptions["with-history"])
        sub = self.parse("settings", "bell", "off").subOptions
        self.assertEqual((sub["key"], sub["value"]), ("bell", "off"))
        self.assertIsNone(self.parse("settings").subOptions["key"])
        self.assertEqual(self.parse("peers", "--json").subCommand, "peers")
        sub = self.parse("passwd", "-p", "a", "--new-password-file", "b").subOptions
        self.assertEqual((sub["password-file"], sub["new-password-file"]), ("a", "b"))
        self.assertRaises(usage.UsageError, self.parse, "rename", "bob")

    def test_json_anywhere(self) -> None:
        """When --json comes before or after the command, then the command wants JSON."""
        self.assertTrue(self.parse("--json", "contacts").wants_json())
        self.assertTrue(self.parse("daemon", "status", "--json").wants_json())
        self.assertFalse(self.parse("contacts").wants_json())

    def test_rpc_params(self) -> None:
        """When rpc gets params, then they must be a JSON object."""
        options = self.parse("rpc", "contacts.show", '{"contact": "bob"}')
        self.assertEqual(options.subOptions["params"], {"contact": "bob"})
        self.assertRaises(usage.UsageError, self.parse, "rpc", "x", "[1]")
        self.assertRaises(usage.UsageError, self.parse, "rpc", "x", "{nope")

    def test_daemon_needs_action(self) -> None:
        """When daemon has no action, then it is a usage error; start collects --advertise."""
        self.assertRaises(usage.UsageError, self.parse, "daemon")
        options = self.parse("daemon", "start", "--advertise", "a:1", "--advertise", "b:2")
        self.assertEqual(options.subOptions.subOptions["advertise"], ["a:1", "b:2"])

    def test_init_needs_name(self) -> None:
        """When init has no --name, then it is a usage error."""
        self.assertRaises(usage.UsageError, self.parse, "init")


class PasswordFileTests(SynchronousTestCase):
    """Password files: the first line, without its line ending."""

    def test_file(self) -> None:
        """When the file has several lines and spaces, then only the line ending is removed."""
        directory = tempfile.mkdtemp(prefix="jcli")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "password")
        with open(path, "w", encoding="utf-8") as f:
            f.write(" pass word \r\nsecond\n")
        self.assertEqual(cli.read_password_file(path), " pass word ")

    def test_stdin(self) -> None:
        """When the path is '-', then one line of stdin is read."""
        self.assertEqual(cli.read_password_file("-", io.StringIO("pw\nrest")), "pw")

    def test_missing(self) -> None:
        """When the file is missing, then the error names it."""
        error = self.assertRaises(cli.errors.InvalidInput, cli.read_password_file, "/nonexistent")
        self.assertIn("/nonexistent", str(error))


class FigureTests(SynchronousTestCase):
    """The text of ``peers`` and ``settings``."""

    def test_peer_lines_each_figure_once(self) -> None:
        """When a peer's figures are shown, then status, since, traffic in human units,
        dialled/accepted sessions, failed dials and the last error each appear once, and a
        control character in the name is shown escaped."""
        from jarvis.app.commands import peer_lines

        now = 1_800_000_000.0
        peer = {
            "uid": "k" * 52,
            "name": "Bo\x1b[2Jb",
            "status": "online",
            "connect_attempts": 9,
            "connect_successes": 2,
            "connect_failures": 7,
            "sessions_accepted": 3,
            "last_error": "connection refused",
            "last_error_at": now - 3600,
            "connected_since": now - 720,
            "offline_since": None,
            "bytes_in": 1536,
            "bytes_out": 5 * 1024 * 1024,
            "messages_in": 4,
            "messages_out": 6,
        }
        lines = peer_lines(peer, now)
        text = "\n".join(lines)
        self.assertNotIn("\x1b", text)
        self.assertTrue(lines[0].startswith("Bo\\x1b[2Jb (kkkkkkkkkkkk): online since "))
        self.assertTrue(lines[0].endswith(", 12 min ago"))
        self.assertEqual(
            lines[1:3],
            [
                "  traffic:    1.5 KiB in, 5.0 MiB out; messages 4 in, 6 out",
                "  sessions:   2 dialled, 3 accepted; 7 failed dials",
            ],
        )
        self.assertTrue(lines[3].endswith(", 1 h ago: connection refused"))
        self.assertEqual(len(lines), 4)

    def test_peer_lines_lan_addresses_and_path(self) -> None:
        """When a peer was found on the LAN and is online, then the path follows the state and
        the LAN addresses get their own line (a control character shown escaped)."""
        from jarvis.app.commands import peer_lines

        now = 1_800_000_000.0
        peer = {
            "uid": "k" * 52,
            "name": "Bob",
            "status": "online",
            "connected_since": now - 60,
            "path": "direct",
            "lan_addresses": ["10.213.0.2:7770", "10.0.0.9:1\x1b"],
        }
        lines = peer_lines(peer, now)
        self.assertTrue(lines[0].endswith("1 min ago, direct"), lines[0])
        self.assertEqual(lines[1], "  on the LAN: 10.213.0.2:7770, 10.0.0.9:1\\x1b")

    def test_peer_lines_path_reason(self) -> None:
        """When peers.status gives a path and its reason, then the reason gets its own line
        (a control character shown escaped); offline, the state line names no path."""
        from jarvis.app.commands import peer_lines

        now = 1_800_000_000.0
        peer = {
            "uid": "k" * 52,
            "name": "Bob",
            "status": "offline",
            "offline_since": now - 60,
            "path": "mailbox",
            "path_reason": "mailbox: no address answers (connection refused)\x1b[2J",
        }
        lines = peer_lines(peer, now)
        self.assertNotIn("mailbox", lines[0])
        self.assertEqual(
            lines[1], "  path:       mailbox: no address answers (connection refused)\\x1b[2J"
        )

    def test_offline_connecting(self) -> None:
        """When a peer is connecting, then it is shown offline since when, connecting now."""
        from jarvis.app.commands import peer_lines

        now = 1_800_000_000.0
        [line, *_] = peer_lines(
            {"uid": "k" * 52, "name": "Bob", "status": "connecting", "offline_since": now - 40},
            now,
        )
        self.assertIn("offline since", line)
        self.assertIn("40 s ago, connecting now", line)

    def test_parse_setting(self) -> None:
        """When a setting is given as text, then it is parsed as the type of its value."""
        from jarvis.app.commands import parse_setting
        from jarvis.common import errors

        self.assertIs(parse_setting("bell", "Off", True), False)
        self.assertIs(parse_setting("bell", "yes", False), True)
        self.assertEqual(parse_setting("n", "12", 3), 12)
        self.assertRaises(errors.InvalidInput, parse_setting, "bell", "maybe", True)
        self.assertRaises(errors.InvalidInput, parse_setting, "n", "x", 3)


class TerminalStderr(io.StringIO):
    """A stderr that says it is a terminal (80 columns)."""

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


class WaitBarTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.err = TerminalStderr()
        self.patch(sys, "stderr", self.err)

    def test_note_until_bytes_move_then_the_bar(self) -> None:
        """When send-file --wait waits on a terminal, then its note says whose accept it waits
        for, "accepted: starting" follows the accept, the bar replaces it once bytes move and
        stays when it ends (a newline); a note no bytes followed is wiped instead."""
        from jarvis.app.commands import _ProgressBar

        bar = _ProgressBar.on_terminal("waiting for alice to accept a.bin (Ctrl+C stops waiting)")
        assert bar is not None
        self.assertEqual(
            self.err.getvalue(), "\rwaiting for alice to accept a.bin (Ctrl+C stops waiting)\x1b[K"
        )
        bar({"id": "t1", "state": "accepted"})
        self.assertTrue(
            self.err.getvalue().endswith("\raccepted: starting (Ctrl+C stops waiting)\x1b[K")
        )
        bar({"id": "t1", "bytes": 512, "size": 1024, "rate": 2048.0, "eta": 1})
        self.assertIn(
            "[###############...............]  50.0% 512 B of 1.0 KiB 2.0 KiB/s ETA 1 s",
            self.err.getvalue(),
        )
        bar({"id": "t1", "bytes": 900, "size": 1024, "rate": 2048.0, "eta": 0.06})
        self.assertTrue(self.err.getvalue().endswith("ETA 1 s\x1b[K"), self.err.getvalue())
        bar({"id": "t1", "state": "accepted"})  # once bytes moved, no note comes back
        bar.close()
        self.assertEqual(self.err.getvalue().count("accepted: starting"), 1)
        self.assertTrue(self.err.getvalue().endswith("\n"))

        self.err.truncate(0)
        self.err.seek(0)
        declined = _ProgressBar.on_terminal("waiting for bob to accept b.bin")
        assert declined is not None
        declined({"id": "t2", "state": "cancelled"})
        declined.close()
        self.assertEqual(self.err.getvalue(), "\rwaiting for bob to accept b.bin\x1b[K\r\x1b[K")

    def test_a_folder_being_hashed_says_how_far_then_is_wiped(self) -> None:
        """When a folder sent whole is hashed before its offers, then the line says how many
        of its files are hashed, and is wiped once they are offered."""
        from jarvis.app.commands import _ProgressBar

        bar = _ProgressBar.on_terminal()
        assert bar is not None
        bar({"folder": "album", "hashed": 2, "files": 5})
        self.assertEqual(self.err.getvalue(), "\rhashing album: 2 of 5 files\x1b[K")
        bar.close()
        self.assertTrue(self.err.getvalue().endswith("\r\x1b[K"))

    def test_combined_bar_adds_up_and_no_bar_off_a_terminal(self) -> None:
        """When several transfers report, then one bar adds their bytes and sizes; when stderr
        is not a terminal, there is no bar and nothing is written; a note is cut to the
        terminal's width and made terminal-safe."""
        from jarvis.app.commands import _ProgressBar

        bar = _ProgressBar.on_terminal("waiting\x1b]52;x\x07 " + "x" * 200, combined=True)
        assert bar is not None
        note = self.err.getvalue()
        self.assertNotIn("\x1b]", note)
        self.assertLessEqual(len(note.removeprefix("\r").removesuffix("\x1b[K")), 79)
        bar({"id": "a", "bytes": 100, "size": 1000, "rate": 10.0, "eta": 5})
        bar({"id": "b", "bytes": 400, "size": 1000, "rate": 30.0, "eta": 9})
        bar({"id": "a", "bytes": 600, "size": 1000, "rate": 10.0, "eta": 2})
        self.assertIn("50.0% 1000 B of 2.0 KiB 40 B/s ETA 9 s", self.err.getvalue())
        self.patch(sys, "stderr", io.StringIO())
        self.assertIsNone(_ProgressBar.on_terminal("waiting"))
        self.assertEqual(sys.stderr.getvalue(), "")


class StartFailureTests(SynchronousTestCase):
    """What ``jarvis daemon start`` says when twistd exits at once."""

    def test_jarvis_error_in_log_is_shown_as_written(self) -> None:
        """When twistd only says "see the log file" and the log ends in a Jarvis error, then
        the reason is that error's own text (it says what to do), not the lower-level error
        above it."""
        from jarvis.app.commands import _start_failure
        from jarvis.common import paths

        data_dir = tempfile.mkdtemp(prefix="jvsf", dir="/tmp")
        self.addCleanup(shutil.rmtree, data_dir, True)
        stamp = "2026-12-03T06:31:34+0000 [stderr#error] "
        with open(paths.logfile_path(data_dir), "w", encoding="utf-8") as f:
            f.write(stamp + "OSError: [Errno 98] Address already in use\n")
            f.write(stamp + "    raise CannotListen(\n")
            f.write(stamp + "jarvis.common.errors.CannotListen: cannot listen on any:7770: taken\n")
        reason = _start_failure(data_dir, "Failed to load application: see the log file\n", 1)
        self.assertEqual(
            reason, f"cannot listen on any:7770: taken (log: {paths.logfile_path(data_dir)})"
        )
        with open(paths.logfile_path(data_dir), "w", encoding="utf-8") as f:
            f.write(stamp + "OSError: [Errno 98] Address already in use\n")
        reason = _start_failure(data_dir, "Failed to load application: see the log file\n", 1)
        self.assertTrue(reason.startswith("OSError: [Errno 98] Address already in use (log: "))


class CliProcess(ProcessProtocol):
    """A ``python -m jarvis`` child: feeds stdin, collects output, reports the exit code."""

    transport: Any

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        self.ended.callback(code if code is not None else -(reason.value.signal or 0))


class ClosedStdoutCli(CliProcess):
    """A ``python -m jarvis`` child whose stdout pipe is closed before it writes (``| head``)."""

    def connectionMade(self) -> None:
        self.transport.closeStdout()
        super().connectionMade()


def spawn_cli(
    reactor: Any, args: list[str], stdin: bytes = b"", *, closed_stdout: bool = False
) -> CliProcess:
    """Start ``python -m jarvis ARGS`` with the repository on PYTHONPATH."""
    proto = ClosedStdoutCli(stdin) if closed_stdout else CliProcess(stdin)
    env = child_env()
    env.pop("JARVIS_HOME", None)
    spawn: Any = reactor.spawnProcess
    spawn(proto, sys.executable, [sys.executable, "-m", "jarvis", *args], env=env, path=REPO)
    return proto


class NoDaemonTests(TestCase):
    """Exit codes without a daemon."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.data_dir = tempfile.mkdtemp(dir="/tmp", prefix="jcli")
        self.addCleanup(shutil.rmtree, self.data_dir, True)

    async def run_cli(
        self, *args: str, stdin: bytes = b"", closed_stdout: bool = False
    ) -> tuple[int, str, str]:
        argv = ["--data-dir", self.data_dir, *args]
        proto = spawn_cli(self.reactor, argv, stdin, closed_stdout=closed_stdout)
        code = await proto.ended
        return code, proto.out.decode(), proto.err.decode()

    async def test_not_running(self) -> None:
        """When no daemon runs, then a command exits 1 with one line on stderr, no traceback."""
        code, out, err = await self.run_cli("contacts")
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("no Jarvis daemon is running", err)
        self.assertNotIn("Traceback", err)

    async def test_usage_error(self) -> None:
        """When the arguments are wrong, then the exit status is 2."""
        code, _, err = await self.run_cli("send")
        self.assertEqual(code, 2)
        self.assertIn("jarvis:", err)
        code, _, _ = await self.run_cli("frobnicate")
        self.assertEqual(code, 2)

    async def test_no_terminal(self) -> None:
        """When unlock has no password file and stdin is no terminal, then it exits 2."""
        code, _, err = await self.run_cli("unlock")
        self.assertEqual(code, 2)
        self.assertIn("--password-file", err)

    async def test_status_stopped(self) -> None:
        """When no daemon runs, then 'daemon status --json' says so and exits 0."""
        code, out, _ = await self.run_cli("daemon", "status", "--json")
        self.assertEqual(code, 0)
        self.assertEqual(
            json.loads(out), {"running": False, "pid": None, "ipc": None, "version": None}
        )

    async def test_closed_stdout(self) -> None:
        """When stdout is closed before jarvis writes (``jarvis --help | head -1``), then it
        exits 141 quietly: no traceback, no "cannot reach the daemon", nothing on stderr."""
        for args in (["--help"], ["--json", "daemon", "status"], ["unlock", "--help"]):
            code, _out, err = await self.run_cli(*args, closed_stdout=True)
            self.assertEqual((code, err), (EXIT_BROKEN_PIPE, ""), args)

    async def test_version(self) -> None:
        """When --version is given, then the Jarvis version is printed."""
        code, out, _ = await self.run_cli("--version")
        self.assertEqual((code, out.strip()), (0, f"jarvis {cli.jarvis.__version__}"))


async def wait_until(reactor: Any, predicate: Any, timeout: float = 10.0) -> None:
    """Poll *predicate* every 10 ms; fail after *timeout* seconds."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"condition not reached within {timeout} s")


class FakeDaemonTests(SocketTestCase):
    """Commands against a FakeNode server found through the data directory."""

    def setUp(self) -> Any:
        d = super().setUp()
        self.data_dir = os.path.join(self.dir, "data")
        os.mkdir(self.data_dir, 0o700)
        with open(os.path.join(self.data_dir, "ipc.endpoint"), "w", encoding="ascii") as f:
            f.write(f"unix:{self.path}\n")
        return d

    async def run_cli(
        self, *args: str, stdin: bytes = b"", closed_stdout: bool = False
    ) -> tuple[int, str, str]:
        argv = ["--data-dir", self.data_dir, *args]
        proto = spawn_cli(self.reactor, argv, stdin, closed_stdout=closed_stdout)
        code = await proto.ended
        return code, proto.out.decode(), proto.err.decode()

    def complete_on_wait(self) -> list[list[str]]:
        """Make the fake daemon's ``files.wait`` complete the transfers it is asked to wait
        for; returns the lists of ids it was asked for, as they come."""
        waited: list[list[str]] = []

        def completing(refs: list[str], progress: Any = None) -> list[dict[str, Any]]:
            waited.append(refs)
            views = [t for t in self.node.transfers if t["id"] in refs]
            for view in views:
                view["state"] = "complete"
            return views

        self.node.wait_transfers = completing  # type: ignore[method-assign]
        return waited

    async def test_send_and_history(self) -> None:
        """When a message is sent from stdin, then its id is printed and history shows it."""
        code, out, err = await self.run_cli("send", "alice", "-", stdin=b"hello there\n")
        self.assertEqual(code, 0, err)
        [message] = self.node.messages_of("alice")
        self.assertEqual((out.strip(), message["body"]), (message["id"], "hello there"))
        code, out, _ = await self.run_cli("--json", "history", "alice")
        self.assertEqual([m["body"] for m in json.loads(out)], ["hello there"])

    async def test_mailbox_use_status_drop(self) -> None:
        """When mailbox use, status (text and --json) and drop run, then the link is used,
        shown and dropped; mailbox without an action is a usage error."""
        link = "jarvis-mailbox:" + "a" * 52 + "@127.0.0.1:7780"
        code, out, err = await self.run_cli("mailbox", "use", link)
        self.assertEqual(code, 0, err)
        self.assertIn(f"mailbox: {link}", out)
        code, out, err = await self.run_cli("--json", "mailbox", "status")
        self.assertEqual((code, json.loads(out)["link"]), (0, link), err)
        code, out, err = await self.run_cli("mailbox", "drop")
        self.assertEqual(code, 0, err)
        self.assertIn("no mailbox in use", out)
        code, _out, err = await self.run_cli("mailbox")
        self.assertNotEqual(code, 0)
        self.assertIn("mailbox needs use, status or drop", err)

    async def test_several_transfers_answered_at_once(self) -> None:
        """When decline gets three ids, one of them unknown, then the two known are declined
        (a line each), the unknown one is said on stderr with its reason, and the exit status
        is 1; with --json the answer lists the declined and the failed; one id answers as
        before (its transfer alone)."""
        a, b, c = (self.node.send_file("alice", f"/tmp/f{i}.txt") for i in range(3))
        code, out, err = await self.run_cli("decline", a["id"], "ffff", b["id"])
        self.assertEqual(code, 1)
        self.assertEqual([line.split()[0] for line in out.splitlines()], [a["id"][:8], b["id"][:8]])
        self.assertIn("jarvis: ffff: no single transfer with id 'ffff'", err)
        self.assertIn("1 of 3 transfers were not answered", err)
        self.assertEqual(
            [t["state"] for t in self.node.transfers], ["cancelled", "cancelled", "offered"]
        )
        code, out, err = await self.run_cli("--json", "accept", c["id"], "eeee")
        self.assertEqual(code, 1)
        answer = json.loads(out)
        self.assertEqual([t["id"] for t in answer["transfers"]], [c["id"]])
        self.assertEqual([f["id"] for f in answer["failed"]], ["eeee"])
        code, out, err = await self.run_cli("--json", "cancel", c["id"])
        self.assertEqual((code, json.loads(out)["id"]), (0, c["id"]), err)

    async def test_all_offers_answered_at_once(self) -> None:
        """When accept --all --from bob runs while bob's two offers and alice's one wait (and
        a file of ours is offered to alice), then bob's two are accepted, oldest first, into
        --to; decline --all then declines alice's; with nothing left, decline --all says so
        and exits 0 (--json: empty lists); IDs with --all, --from without it, or neither
        IDs nor --all are usage errors (exit 2)."""
        self.node.add_contact(link=fake_link("bob"))
        self.node.send_file("alice", "/tmp/ours.txt")
        newer = self.node.offered_file("bob", "b2.txt", 1_800_000_010.0)
        older = self.node.offered_file("bob", "b1.txt", 1_800_000_000.0)
        alices = self.node.offered_file("alice", "a.txt", 1_799_999_990.0)
        accepted: list[tuple[str, str | None]] = []
        accept = self.node.accept_transfer

        def recording(ref: str, directory: str | None = None) -> dict[str, Any]:
            accepted.append((ref, directory))
            return accept(ref, directory)

        self.node.accept_transfer = recording  # type: ignore[method-assign]
        code, out, err = await self.run_cli("accept", "--all", "--from", "bob", "--to", "/srv/in")
        self.assertEqual(code, 0, err)
        self.assertEqual(accepted, [(older["id"], "/srv/in"), (newer["id"], "/srv/in")])
        self.assertEqual(
            [line.split()[0] for line in out.splitlines()], [older["id"][:8], newer["id"][:8]]
        )
        code, out, err = await self.run_cli("--json", "decline", "--all")
        self.assertEqual(code, 0, err)
        answer = json.loads(out)
        self.assertEqual(
            ([t["id"] for t in answer["transfers"]], answer["failed"]), ([alices["id"]], [])
        )
        self.assertEqual(
            [t["state"] for t in self.node.transfers],
            ["offered", "accepted", "accepted", "cancelled"],
        )
        code, out, err = await self.run_cli("decline", "--all")
        self.assertEqual((code, out, err.strip()), (0, "", "no offer waits for your answer"))
        code, out, err = await self.run_cli("--json", "accept", "--all")
        self.assertEqual((code, json.loads(out)), (0, {"transfers": [], "failed": []}))
        for args, said in (
            (("accept", "--all", alices["id"]), "give IDs or --all, not both"),
            (("decline", "--from", "bob", alices["id"]), "--from goes with --all"),
            (("accept",), "give a transfer ID ('jarvis files' lists them), or --all"),
        ):
            code, _out, err = await self.run_cli(*args)
            self.assertEqual(code, 2, args)
            self.assertIn(said, err)

    async def test_several_files_offered_at_once(self) -> None:
        """When send-file gets three paths (relative, from the CLI's folder) and the daemon
        cannot read the middle one, then the other two are offered in order (a line each, as
        absolute paths), the failed one is said on stderr with its path and reason, and the
        exit status is 1; with --json the answer lists the offered and the failed; with --wait
        the command waits for all of them (files.wait) and prints each one's end, exit status
        1 unless all completed; no path, or an unknown contact, offers nothing."""
        sent: list[str] = []
        send = self.node.send_file

        def recording(ref: str, path: str, **kw: Any) -> dict[str, Any]:
            if path.endswith("unreadable.jpg"):
                raise errors.InvalidInput("cannot read the file: Permission denied")
            sent.append(path)
            return send(ref, path, **kw)

        self.node.send_file = recording  # type: ignore[method-assign]
        here = REPO  # the CLI's working directory
        code, out, err = await self.run_cli(
            "send-file", "alice", "a.jpg", "unreadable.jpg", "/srv/c.jpg"
        )
        self.assertEqual(code, 1)
        self.assertEqual(sent, [os.path.join(here, "a.jpg"), "/srv/c.jpg"])
        self.assertEqual([line.split()[-1] for line in out.splitlines()], ["a.jpg", "c.jpg"])
        self.assertIn(
            f"jarvis: {os.path.join(here, 'unreadable.jpg')}: cannot read the file: "
            "Permission denied",
            err,
        )
        self.assertIn("1 of 3 files were not offered", err)
        code, out, err = await self.run_cli(
            "--json", "send-file", "alice", "/srv/d.jpg", "/srv/unreadable.jpg"
        )
        answer = json.loads(out)
        self.assertEqual(code, 1)
        self.assertEqual([t["name"] for t in answer["transfers"]], ["d.jpg"])
        self.assertEqual([f["path"] for f in answer["failed"]], ["/srv/unreadable.jpg"])
        wait = self.node.wait_transfers
        waited = self.complete_on_wait()
        code, out, err = await self.run_cli("send-file", "alice", "/srv/e.jpg", "/srv/f.jpg", "-w")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(waited), 1)
        self.assertEqual(
            [t["name"] for t in self.node.transfers if t["id"] in waited[0]], ["e.jpg", "f.jpg"]
        )
        self.assertEqual([line.split()[3] for line in out.splitlines()], ["complete"] * 2)
        self.node.wait_transfers = wait  # type: ignore[method-assign]
        code, out, err = await self.run_cli("send-file", "alice", "/srv/g.jpg", "/srv/h.jpg", "-w")
        self.assertEqual(
            (code, [line.split()[3] for line in out.splitlines()]), (1, ["offered"] * 2)
        )
        before = len(sent)
        code, _out, err = await self.run_cli("send-file", "alice")
        self.assertEqual(code, 2)
        self.assertIn("send-file needs CONTACT and at least one PATH", err)
        code, _out, err = await self.run_cli("send-file", "nobody", "/srv/x.jpg", "/srv/y.jpg")
        self.assertEqual(code, 1)
        self.assertEqual(len(sent), before)

    async def test_a_folder_is_offered_whole(self) -> None:
        """When send-file gets a folder, then files.sendFolder offers its files: a line each
        naming the folder it is in, a file that could not be read said on stderr (exit status
        1), and so is a link left out; --json answers with the folder, the transfers, the
        failed and what was left out; --wait waits for all of them and prints their ends."""
        album = os.path.join(self.dir, "album")
        os.makedirs(os.path.join(album, "2024"))
        for name in ("a.jpg", "2024/b.jpg", "2024/unreadable.jpg"):
            open(os.path.join(album, name), "w").close()
        os.symlink(os.path.join(album, "a.jpg"), os.path.join(album, "2024", "link.jpg"))
        code, out, err = await self.run_cli("send-file", "alice", album)
        self.assertEqual(code, 1)
        self.assertEqual(
            [line.split()[-1] for line in out.splitlines()], ["album/a.jpg", "album/2024/b.jpg"]
        )
        self.assertIn(f"jarvis: {album}/2024/unreadable.jpg: cannot read the file", err)
        self.assertIn("1 of 3 files were not offered", err)
        self.assertIn(
            "jarvis: left out an entry that is not a regular file (links, devices, pipes, "
            "sockets): album/2024/link.jpg",
            err,
        )
        os.remove(os.path.join(album, "2024", "unreadable.jpg"))
        code, out, err = await self.run_cli("--json", "send-file", "alice", album)
        self.assertEqual(code, 0, err)
        answer = json.loads(out)
        self.assertEqual(answer["folder"], "album")
        self.assertEqual(answer["failed"], [])
        self.assertEqual((answer["left_out"], answer["left_out_first"]), (1, "album/2024/link.jpg"))
        self.assertNotIn("folders", answer)
        self.assertEqual([t["folder"] for t in answer["transfers"]], ["album", "album/2024"])
        self.complete_on_wait()
        code, out, err = await self.run_cli("send-file", "alice", album, "-w")
        self.assertEqual(code, 0, err)
        self.assertEqual([line.split()[3] for line in out.splitlines()], ["complete"] * 2)

    async def test_interrupted_wait_leaves_the_offers(self) -> None:
        """When Ctrl+C arrives while send-file --wait waits for two offered files, then the
        wait is cancelled in the daemon, the offers stay, the exit status is 130 and the
        message says the offers stay and how to stop one."""
        paused = self.node.pause("wait_transfers")
        argv = ["--data-dir", self.data_dir, "send-file", "alice", "/srv/a.jpg", "/srv/b.jpg", "-w"]
        proto = spawn_cli(self.reactor, argv)
        await wait_until(self.reactor, lambda: paused.waiting)
        os.kill(proto.transport.pid, signal.SIGINT)
        self.assertEqual(await proto.ended, cli.EXIT_INTERRUPTED, proto.err.decode())
        await wait_until(self.reactor, lambda: paused.cancelled)
        self.assertEqual([t["state"] for t in self.node.transfers], ["offered", "offered"])
        self.assertIn(
            "jarvis: interrupted; what was offered stays offered (jarvis files lists it; "
            "jarvis cancel ID stops it)",
            proto.err.decode(),
        )

    async def test_accept_wait_prints_how_the_files_arrived(self) -> None:
        """When accept --all --wait takes two offers from bob, then both are accepted, one
        files.wait waits for the two, and each one's end is printed (complete: exit 0);
        accept ID --wait whose file does not complete exits 1 with its state; with --json the
        answers are the ended views; Ctrl+C during the wait leaves the file accepted, exit
        130, saying it still arrives."""
        self.node.add_contact(link=fake_link("bob"))
        first = self.node.offered_file("bob", "a.txt", 1_800_000_001.0)
        second = self.node.offered_file("bob", "b.txt", 1_800_000_002.0)
        wait = self.node.wait_transfers
        waited = self.complete_on_wait()
        code, out, err = await self.run_cli("accept", "--all", "--wait")
        self.assertEqual(code, 0, err)
        self.assertEqual(waited, [[first["id"], second["id"]]])
        self.assertEqual(
            [(line.split()[0], line.split()[3]) for line in out.splitlines()],
            [(first["id"][:8], "complete"), (second["id"][:8], "complete")],
        )
        third = self.node.offered_file("bob", "c.txt", 1_800_000_003.0)
        code, out, err = await self.run_cli("--json", "accept", third["id"][:8], "-w")
        self.assertEqual((code, json.loads(out)["state"]), (0, "complete"), err)
        self.node.wait_transfers = wait  # type: ignore[method-assign]
        fourth = self.node.offered_file("bob", "d.txt", 1_800_000_004.0)
        code, out, err = await self.run_cli("accept", fourth["id"], "--wait")
        self.assertEqual((code, out.split()[3]), (1, "accepted"), err)
        fifth = self.node.offered_file("bob", "e.txt", 1_800_000_005.0)
        paused = self.node.pause("wait_transfers")
        argv = ["--data-dir", self.data_dir, "accept", fifth["id"], "--wait"]
        proto = spawn_cli(self.reactor, argv)
        await wait_until(self.reactor, lambda: paused.waiting)
        os.kill(proto.transport.pid, signal.SIGINT)
        self.assertEqual(await proto.ended, cli.EXIT_INTERRUPTED, proto.err.decode())
        self.assertEqual(fifth["state"], "accepted")
        self.assertIn("what was accepted still arrives", proto.err.decode())

    async def test_cancel_all_and_with_a_contact(self) -> None:
        """When cancel --all --with bob runs while two of our offers to alice, one offer from
        bob, one transfer of bob's that streams and one that completed are listed, then
        bob's two not ended are cancelled, oldest first; cancel --all then cancels alice's
        two; with nothing left it says so and exits 0; --with without --all, or IDs with
        --all, are usage errors."""
        self.node.add_contact(link=fake_link("bob"))
        ours = [self.node.send_file("alice", f"/tmp/o{i}.txt") for i in range(2)]
        ours[0]["created"], ours[1]["created"] = 1_800_000_005.0, 1_800_000_001.0
        bobs = self.node.offered_file("bob", "b.txt", 1_800_000_010.0)
        streaming = self.node.offered_file("bob", "s.bin", 1_800_000_000.0)
        streaming["state"] = "streaming"
        done = self.node.offered_file("bob", "done.txt", 1_799_999_000.0)
        done["state"] = "complete"
        code, out, err = await self.run_cli("cancel", "--all", "--with", "bob")
        self.assertEqual(code, 0, err)
        self.assertEqual(
            [line.split()[0] for line in out.splitlines()],
            [streaming["id"][:8], bobs["id"][:8]],
        )
        self.assertEqual(done["state"], "complete")
        self.assertEqual([t["state"] for t in ours], ["offered", "offered"])
        code, out, err = await self.run_cli("--json", "cancel", "--all")
        self.assertEqual(code, 0, err)
        self.assertEqual(
            [t["id"] for t in json.loads(out)["transfers"]], [ours[1]["id"], ours[0]["id"]]
        )
        code, out, err = await self.run_cli("cancel", "--all")
        self.assertEqual((code, out, err.strip()), (0, "", "no transfer is under way"))
        for args, said in (
            (("cancel", "--with", "bob", bobs["id"]), "--with goes with --all"),
            (("cancel", "--all", bobs["id"]), "give IDs or --all, not both"),
        ):
            code, _out, err = await self.run_cli(*args)
            self.assertEqual(code, 2, args)
            self.assertIn(said, err)

    async def test_files_active_lists_only_what_is_under_way(self) -> None:
        """When an offer from bob, a transfer of his that streams and one that completed are
        listed, then files --active (and -a) prints the first two only, --json keeps the
        shape of files.list with those two; once none is under way it says so."""
        self.node.add_contact(link=fake_link("bob"))
        offer = self.node.offered_file("bob", "b.txt", 1_800_000_010.0)
        streaming = self.node.offered_file("bob", "s.bin", 1_800_000_000.0)
        streaming["state"] = "streaming"
        done = self.node.offered_file("bob", "done.txt", 1_799_999_000.0)
        done["state"] = "complete"
        code, out, err = await self.run_cli("files")
        self.assertEqual((code, len(out.splitlines())), (0, 3), err)
        for flag in ("--active", "-a"):
            code, out, err = await self.run_cli("files", flag)
            self.assertEqual(code, 0, err)
            self.assertEqual(
                sorted(line.split()[0] for line in out.splitlines()),
                sorted([offer["id"][:8], streaming["id"][:8]]),
            )
        code, out, err = await self.run_cli("--json", "files", "--active")
        self.assertEqual(code, 0, err)
        listed = json.loads(out)["transfers"]
        self.assertEqual(sorted(t["id"] for t in listed), sorted([offer["id"], streaming["id"]]))
        offer["state"], streaming["state"] = "cancelled", "failed"
        code, out, err = await self.run_cli("files", "--active")
        self.assertEqual((code, out.strip()), (0, "no transfer is under way"), err)

    async def test_send_without_text_reads_stdin(self) -> None:
        """When send has no TEXT, then the message is read from stdin (not the arguments)."""
        code, out, err = await self.run_cli("send", "alice", stdin=b"not in argv\n")
        self.assertEqual(code, 0, err)
        [message] = self.node.messages_of("alice")
        self.assertEqual((out.strip(), message["body"]), (message["id"], "not in argv"))

    async def test_passwd_from_stdin(self) -> None:
        """When both password files are '-', then stdin's first line is the current password
        and its second the new one; a wrong current password changes nothing (exit 1)."""
        self.node._password = "old"  # type: ignore[attr-defined]
        args = ("passwd", "--password-file", "-", "--new-password-file", "-")
        code, _out, err = await self.run_cli(*args, stdin=b"wrong\nnew\n")
        self.assertEqual(code, 1)
        self.assertEqual(self.node._password, "old")  # type: ignore[attr-defined]
        code, out, err = await self.run_cli(*args, stdin=b"old\nnew\n")
        self.assertEqual((code, out.strip()), (0, "password changed"), err)
        self.assertEqual(self.node._password, "new")  # type: ignore[attr-defined]

    async def test_history_pages(self) -> None:
        """When history asks for more than a page, then the CLI pages through the API and
        prints them oldest first; --before/--after page from a message id."""
        for i in range(450):
            self.node.receive("alice", f"m{i}")
        ids = [m["id"] for m in self.node.messages_of("alice")]
        code, out, err = await self.run_cli("--json", "history", "alice", "--limit", "10000")
        self.assertEqual(code, 0, err)
        self.assertEqual([m["id"] for m in json.loads(out)], ids)
        code, out, err = await self.run_cli("history", "alice", "--limit", "300")
        self.assertEqual(out.splitlines()[0][-6:], "< m150")
        self.assertEqual(len(out.splitlines()), 300)
        code, out, err = await self.run_cli("--json", "history", "alice", "--after", ids[9])
        self.assertEqual([m["id"] for m in json.loads(out)], ids[10:30])
        code, out, err = await self.run_cli("--json", "history", "alice", "--before", ids[9])
        self.assertEqual([m["id"] for m in json.loads(out)], ids[:9])

    async def test_verify_json_needs_yes(self) -> None:
        """When verify runs with --json but without --yes, then it refuses (exit 2) without
        marking anything; with --yes the contact is verified."""
        code, out, err = await self.run_cli("--json", "verify", "alice")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("--yes", err)
        self.assertFalse(self.node._resolve("alice")["verified"])  # type: ignore[attr-defined]
        code, out, err = await self.run_cli("--json", "verify", "alice", "--yes")
        self.assertEqual(code, 0, err)
        self.assertTrue(json.loads(out)["verified"])
        self.assertTrue(self.node._resolve("alice")["verified"])  # type: ignore[attr-defined]

    async def test_verify_asks_on_the_terminal(self) -> None:
        """When verify runs on a terminal, then it shows both fingerprints and the safety code
        and asks; 'n' leaves the contact unverified (exit 1), 'y' marks it verified."""
        from tests.pty_terminal import PtyTerminal

        alice = self.node._resolve("alice")  # type: ignore[attr-defined]
        argv = [sys.executable, "-m", "jarvis", "--data-dir", self.data_dir, "verify", "alice"]
        env = child_env()
        for answer, code, verified in (("n", 1, False), ("y", 0, True)):
            terminal = PtyTerminal(argv, env=env, path=REPO, columns=120).start()
            self.addCleanup(terminal.stop)
            screen = await terminal.wait_for("[y/N]")
            self.assertIn(alice["safety_code"], screen)
            self.assertIn(alice["fingerprint"], screen)
            self.assertIn("your fingerprint:", screen)
            self.assertFalse(alice["verified"])
            terminal.type(answer + "\r")
            self.assertEqual(await terminal.wait_ended(), code)
            self.assertEqual(alice["verified"], verified)
        self.assertIn("is now verified", terminal.text())
        # Ctrl+C at the question: exit 130 at once (the read does not hold the exit), unmarked
        self.node.update_contact("alice", verified=False)
        terminal = PtyTerminal(argv, env=env, path=REPO, columns=120).start()
        self.addCleanup(terminal.stop)
        await terminal.wait_for("[y/N]")
        terminal.send(b"\x03")
        self.assertEqual(await terminal.wait_ended(), cli.EXIT_INTERRUPTED)
        self.assertFalse(alice["verified"])

    async def test_too_many_attempts(self) -> None:
        """When the daemon refuses a password unchecked (-32015), then unlock, passwd and
        delete-account say how long to wait on one line and exit 75 (not the generic 1)."""
        from jarvis.core.backoff import TooManyAttempts

        def refuse(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            return defer.fail(TooManyAttempts(6.2))

        for method in ("unlock", "change_password", "delete_account"):
            setattr(self.node, method, refuse)
        runs = [
            ("unlock", "--password-file", "-"),
            ("passwd", "--password-file", "-", "--new-password-file", "-"),
            ("delete-account", "--password-file", "-"),
        ]
        for args in runs:
            code, out, err = await self.run_cli(*args, stdin=b"pw\nnew\n")
            self.assertEqual((code, out), (EXIT_TOO_MANY_ATTEMPTS, ""), (args, err))
            self.assertEqual(
                err,
                "jarvis: Too many wrong passwords: retry in 7 s (the password was not tried)\n",
            )
        self.assertEqual(self.node._password, "pw")  # type: ignore[attr-defined]

    async def test_rpc_output_is_terminal_safe(self) -> None:
        """When a result holds C1 and bidi controls (a hostile contact name), then ``rpc``
        prints them escaped, and the JSON still parses to the same name."""
        name = "ev\x9b31mil\u202eman"
        self.node.add_contact(link=fake_link(name))
        code, out, err = await self.run_cli("rpc", "contacts.list")
        self.assertEqual(code, 0, err)
        self.assertNotIn("\x9b", out)
        self.assertNotIn("\u202e", out)
        self.assertIn("\\u009b", out)
        names = [c["name"] for c in json.loads(out)["contacts"]]
        self.assertIn(name, names)

    async def test_closed_stdout_with_a_daemon(self) -> None:
        """When stdout is closed before a command's answer is printed, then it exits 141
        with nothing on stderr (not "cannot reach the daemon: Broken pipe")."""
        for args in (["--json", "contacts"], ["rpc", "daemon.status"]):
            code, _out, err = await self.run_cli(*args, closed_stdout=True)
            self.assertEqual((code, err), (EXIT_BROKEN_PIPE, ""), args)

    async def test_remote_error(self) -> None:
        """When the daemon answers an error, then one line on stderr and exit 1."""
        code, out, err = await self.run_cli("history", "nobody")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("nobody", err)

    async def test_wait_times_out(self) -> None:
        """When --wait sent is not reached in time, then exit 1 says the message stays queued."""
        code, _, err = await self.run_cli(
            "send", "alice", "x", "--wait", "sent", "--timeout", "0.3"
        )
        self.assertEqual(code, 1)
        self.assertIn("stays queued", err)

    async def test_wait_sent(self) -> None:
        """When the message becomes sent while waiting, then send prints its id and exits 0."""
        proto = spawn_cli(
            self.reactor, ["--data-dir", self.data_dir, "send", "alice", "x", "--wait", "sent"]
        )
        await wait_until(self.reactor, lambda: self.node.messages_of("alice"))
        message_id = self.node.messages_of("alice")[0]["id"]
        self.node.set_message_state(message_id, "sent")
        self.assertEqual(await proto.ended, 0, proto.err.decode())
        self.assertEqual(proto.out.decode().strip(), message_id)

    async def test_watch_named_events(self) -> None:
        """When watch names an event, then only that event is printed; a misspelt name is one
        line on stderr and exit 1."""
        proto = spawn_cli(self.reactor, ["--data-dir", self.data_dir, "watch", "message.received"])
        await wait_until(self.reactor, lambda: any(c.subscribed for c in self.factory.connections))
        self.node.emit("contact.changed", {"contact": {"uid": "x"}})
        self.node.receive("alice", "watched")
        await wait_until(self.reactor, lambda: b"\n" in proto.out)
        os.kill(proto.transport.pid, signal.SIGINT)
        await proto.ended
        [line] = proto.out.decode().splitlines()
        event = json.loads(line)
        self.assertEqual(event["event"], "message.received")
        self.assertEqual(event["params"]["message"]["body"], "watched")
        code, out, err = await self.run_cli("watch", "message.recieved")
        self.assertEqual((code, out, err.count("\n")), (1, "", 1))
        self.assertIn("message.recieved", err)

    async def test_interrupt_cancels(self) -> None:
        """When Ctrl+C arrives during a call, then the daemon cancels it and the exit is 130."""
        paused = self.node.pause("send_message")
        params = json.dumps({"contact": "alice", "text": "x"})
        proto = spawn_cli(
            self.reactor, ["--data-dir", self.data_dir, "rpc", "messages.send", params]
        )
        await wait_until(self.reactor, lambda: paused.waiting)
        os.kill(proto.transport.pid, signal.SIGINT)
        self.assertEqual(await proto.ended, cli.EXIT_INTERRUPTED, proto.err.decode())
        await wait_until(self.reactor, lambda: paused.cancelled)
        self.assertEqual(self.node.messages_of("alice"), [])
        self.assertIn("cancelled", proto.err.decode())


class EmbeddedWiringTests(SynchronousTestCase):
    """The CLI is the composition root: it hands the UI the daemon's service builder."""

    def test_embedded_hands_the_builder(self) -> None:
        """When ``jarvis --embedded`` starts the UI, then the UI gets
        daemon.make_embedded_service; without the flag it gets none."""
        from jarvis.app import daemon
        from jarvis.ui import app

        seen: list[Any] = []
        self.patch(app, "run", lambda data_dir, **kw: seen.append(kw) or 0)
        for argv in (["--embedded"], []):
            options = cli.Options()
            options.parseOptions(["--data-dir", self.mktemp(), *argv])
            self.assertEqual(cli._start_ui(options), 0)
        self.assertIs(seen[0]["embedded_service"], daemon.make_embedded_service)
        self.assertIsNone(seen[1]["embedded_service"])

    def test_embedded_service_builds_the_daemon(self) -> None:
        """When the embedded builder runs, then it returns the daemon's service tree for the
        data directory."""
        import os

        from twisted.internet.testing import MemoryReactorClock

        from jarvis.app import daemon

        data_dir = os.path.join(self.mktemp(), "data")
        service = daemon.make_embedded_service(MemoryReactorClock(), data_dir)
        self.assertIsInstance(service, daemon.JarvisDaemon)
        self.assertEqual(service.data_dir, os.path.abspath(data_dir))
