"""Tests for jarvis.app.launcher: the start options a daemon records and a replacement reuses."""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jarvis.app import daemon, launcher
from jarvis.ui.app import DaemonConnector


def make_data_dir(testcase: SynchronousTestCase) -> str:
    path = os.path.abspath(testcase.mktemp())
    os.makedirs(path, mode=0o700)
    return path


def parsed(*argv: str) -> daemon.DaemonOptions:
    options = daemon.DaemonOptions()
    options.parseOptions(list(argv))
    return options


#: The process limits every daemon records (their defaults), as twistd arguments.
LIMITS = ("--exec-limit", "16", "--hook-limit", "4")


class RecordedOptionsTests(SynchronousTestCase):
    def test_round_trip_private(self) -> None:
        """When the daemon's parsed options are recorded, then daemon.json is 0600, holds the
        options a replacement needs (no password file, no unset --ipc) and reads back the same;
        no temporary file is left behind."""
        data_dir = make_data_dir(self)
        options = parsed(
            "--data-dir", data_dir, "--listen", "tcp:0:interface=127.0.0.1",
            "--advertise", "a.example:1", "--advertise", "[::1]:2",
            "--password-file", "/secret/pw",
        )  # fmt: skip
        launcher.write_daemon_options(data_dir, options)
        path = launcher.daemon_options_path(data_dir)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(data_dir), ["daemon.json"])
        recorded = launcher.read_daemon_options(data_dir)
        self.assertEqual(
            recorded,
            {
                "listen": "tcp:0:interface=127.0.0.1",
                "advertise": ["a.example:1", "[::1]:2"],
                "log-level": "info",
                "exec-limit": 16,
                "hook-limit": 4,
            },
        )
        with open(path, encoding="utf-8") as f:
            self.assertNotIn("secret", f.read())
        # the recorded options give back the same parsed options
        again = parsed("--data-dir", data_dir, *launcher.options_argv(recorded))
        for name in ("listen", "advertise", "log-level", "ipc", "ipc-allow-remote"):
            self.assertEqual(again[name], options[name], name)

    def test_process_limits_kept(self) -> None:
        """When the daemon was started with --exec-limit and --hook-limit, then a replacement
        gets the same limits (not the defaults)."""
        data_dir = make_data_dir(self)
        options = parsed("--data-dir", data_dir, "--exec-limit", "3", "--hook-limit", "2")
        launcher.write_daemon_options(data_dir, options)
        again = parsed("--data-dir", data_dir, *launcher.replacement_argv(data_dir))
        self.assertEqual((again["exec-limit"], again["hook-limit"]), (3, 2))

    def test_flags_and_ipc(self) -> None:
        """When --ipc and --ipc-allow-remote were given, then both are recorded and given back
        (a flag as a flag)."""
        data_dir = make_data_dir(self)
        options = parsed(
            "--data-dir", data_dir, "--ipc", "tcp:7000:interface=10.0.0.1", "--ipc-allow-remote"
        )
        launcher.write_daemon_options(data_dir, options)
        argv = launcher.options_argv(launcher.read_daemon_options(data_dir))
        self.assertIn("--ipc-allow-remote", argv)
        self.assertEqual(argv[argv.index("--ipc") + 1], "tcp:7000:interface=10.0.0.1")

    def test_damaged_or_missing(self) -> None:
        """When daemon.json is missing, not JSON, or holds values of the wrong type, then those
        count as not recorded (the daemon falls back to its defaults)."""
        data_dir = make_data_dir(self)
        self.assertEqual(launcher.read_daemon_options(data_dir), {})
        path = launcher.daemon_options_path(data_dir)
        with open(path, "w") as f:
            f.write("{not json")
        self.assertEqual(launcher.read_daemon_options(data_dir), {})
        with open(path, "w") as f:
            json.dump(
                {
                    "version": 1,
                    "options": {
                        "listen": 7770,
                        "advertise": ["ok:1", 2],
                        "log-level": "debug",
                        "password-file": "/x",
                    },
                },
                f,
            )
        self.assertEqual(launcher.read_daemon_options(data_dir), {"log-level": "debug"})

    def test_given_options_replace_recorded(self) -> None:
        """When options are given now, then each replaces the recorded one and the others are
        kept; unset ones (None, empty list) change nothing."""
        data_dir = make_data_dir(self)
        launcher.write_daemon_options(
            data_dir,
            parsed("--data-dir", data_dir, "--listen", "tcp:1", "--advertise", "h:1"),
        )
        self.assertEqual(
            launcher.replacement_argv(data_dir, {"listen": None, "advertise": []}),
            ["--listen", "tcp:1", "--advertise", "h:1", "--log-level", "info", *LIMITS],
        )
        self.assertEqual(
            launcher.replacement_argv(data_dir, {"listen": "tcp:2", "advertise": []}),
            ["--listen", "tcp:2", "--advertise", "h:1", "--log-level", "info", *LIMITS],
        )
        self.assertEqual(launcher.replacement_argv(make_data_dir(self)), [])


class FakeSpawner:
    """Records ``spawnProcess`` calls."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> None:
        self.argvs.append(list(args))


class UiReplacementTests(SynchronousTestCase):
    def test_ui_replacement_uses_recorded_options(self) -> None:
        """When the UI starts a daemon without options of its own, then the daemon gets the
        options the data directory's last daemon recorded, not the defaults (every interface,
        port 7770); options the UI was given win."""
        data_dir = make_data_dir(self)
        launcher.write_daemon_options(
            data_dir,
            parsed("--data-dir", data_dir, "--listen", "tcp:0:interface=127.0.0.1"),
        )
        reactor = FakeSpawner()
        DaemonConnector(reactor, data_dir).spawn()
        argv = reactor.argvs[-1]
        self.assertEqual(argv[argv.index("--listen") + 1], "tcp:0:interface=127.0.0.1")

        DaemonConnector(reactor, data_dir, daemon_args=["--listen", "tcp:9"]).spawn()
        argv = reactor.argvs[-1]
        self.assertEqual(argv[argv.index("--listen") + 1], "tcp:9")
        self.assertEqual(argv.count("--listen"), 1)

    def test_ui_waits_for_a_zombie_daemon(self) -> None:
        """When the daemon was killed a moment ago and is not reaped yet (a zombie that twistd
        and the lock would take for a running daemon), then the UI does not start a replacement
        that would be refused; it starts one on an attempt after the process is gone."""
        data_dir = make_data_dir(self)
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        self.addCleanup(child.wait)
        os.symlink(str(child.pid), os.path.join(data_dir, "daemon.lock"))
        if not os.path.exists(f"/proc/{child.pid}/stat"):
            raise self.skipTest("needs /proc to tell a zombie")
        # wait for the child's exit without reaping it: it stays a zombie until child.wait()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        self.assertTrue(launcher.previous_daemon_lingers(data_dir))
        reactor = FakeSpawner()
        connector = DaemonConnector(reactor, data_dir)
        self.failureResultOf(connector())
        self.assertEqual((reactor.argvs, connector.spawned), ([], False))
        child.wait()
        self.assertFalse(launcher.previous_daemon_lingers(data_dir))
        self.failureResultOf(connector())
        self.assertEqual((len(reactor.argvs), connector.spawned), (1, True))

    def test_recorded_pids(self) -> None:
        """When the lock and the pid file name pids, then both are listed once, never this
        process's own."""
        data_dir = make_data_dir(self)
        self.assertEqual(launcher.recorded_pids(data_dir), [])
        os.symlink("12345", os.path.join(data_dir, "daemon.lock"))
        with open(os.path.join(data_dir, "jarvis.pid"), "w") as f:
            f.write("12345")
        self.assertEqual(launcher.recorded_pids(data_dir), [12345])
        with open(os.path.join(data_dir, "jarvis.pid"), "w") as f:
            f.write(str(os.getpid()))
        self.assertEqual(launcher.recorded_pids(data_dir), [12345])


class WaitUntilTests(SynchronousTestCase):
    """The one waiting loop: backoff on the reactor's clock, up to a deadline."""

    def test_backoff_then_result(self) -> None:
        """When the third attempt succeeds, then the pauses were FIRST_WAIT and twice that, and
        the result is returned."""
        from twisted.internet import defer
        from twisted.internet.task import Clock

        clock = Clock()
        times: list[float] = []

        async def attempt() -> str | None:
            times.append(clock.seconds())
            return "up" if len(times) == 3 else None

        d = defer.ensureDeferred(launcher.wait_until(clock, attempt, 5.0))
        clock.advance(launcher.FIRST_WAIT)
        clock.advance(launcher.FIRST_WAIT * 2)
        self.assertEqual(self.successResultOf(d), "up")
        self.assertEqual(times, [0.0, launcher.FIRST_WAIT, launcher.FIRST_WAIT * 3])

    def test_deadline(self) -> None:
        """When nothing ever succeeds, then None comes at the deadline, with pauses no longer
        than MAX_WAIT and no timer left."""
        from twisted.internet import defer
        from twisted.internet.task import Clock

        clock = Clock()
        times: list[float] = []

        async def attempt() -> None:
            times.append(clock.seconds())
            return None

        d = defer.ensureDeferred(launcher.wait_until(clock, attempt, 3.0))
        while clock.getDelayedCalls():
            clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        self.assertIsNone(self.successResultOf(d))
        self.assertAlmostEqual(times[-1], 3.0, places=6)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        self.assertLessEqual(max(gaps), launcher.MAX_WAIT + 1e-6)
        self.assertEqual(clock.getDelayedCalls(), [])


class DaemonSpawnTests(SynchronousTestCase):
    def test_spawn_reports_end_and_output(self) -> None:
        """When twistd's parent process ends with a status and a last line, then ``ended``
        fires with both (the one starter both the CLI and the UI use)."""
        from twisted.internet.error import ProcessTerminated
        from twisted.internet.testing import MemoryReactor
        from twisted.python.failure import Failure

        spawned: list[Any] = []

        class Reactor(MemoryReactor):
            def spawnProcess(self, proto: Any, exe: Any, args: Any, **kw: Any) -> None:
                spawned.append((proto, args, kw))

        d = launcher.spawn_detached_daemon(Reactor(), "/tmp/jarvis-data", ["--listen", "tcp:0"])
        proto, args, kw = spawned[0]
        self.assertIn("--listen", args)
        self.assertEqual(kw["childFDs"], {0: "w", 1: "r", 2: "r"})
        proto.errReceived(b"jarvis: the data directory is not private\n")
        proto.processEnded(Failure(ProcessTerminated(exitCode=1)))
        code, output = self.successResultOf(d)
        self.assertEqual(code, 1)
        self.assertIn("not private", output)


class TwistdCommandTests(SynchronousTestCase):
    def test_no_code_from_the_folder_it_is_run_in(self) -> None:
        """When Jarvis's twistd command runs in a folder holding ``twisted/plugins/planted.py``
        (an unpacked archive, say), then that module is not imported (it would write a
        marker file) and the ``jarvis`` plugin is still found, whether Jarvis is installed or
        a checkout."""
        folder = os.path.abspath(self.mktemp())
        plugins = os.path.join(folder, "twisted", "plugins")
        os.makedirs(plugins)
        marker = os.path.join(folder, "imported")
        with open(os.path.join(plugins, "planted.py"), "w") as f:
            f.write(f"open({marker!r}, 'w').close()\n")
        done = subprocess.run(
            [*launcher.twistd_argv(), "--help"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertFalse(os.path.exists(marker), "the planted plugin module was imported")
        self.assertRegex(done.stdout, r"\n\s+jarvis\s+Jarvis peer-to-peer")
