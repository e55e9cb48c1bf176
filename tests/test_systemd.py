"""Tests for jarvis.app.systemd and ``jarvis daemon install-unit``: the systemd user unit."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import stat
import subprocess

from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.app import launcher, systemd
from jarvis.common import errors
from tests.daemons import short_tempdir
from tests.test_e2e_cli import Cli


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def exec_argv(value: str) -> list[str]:
    """Split an ``ExecStart=`` value as systemd does for the quoting the unit uses."""
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(value)]


class UnitTextTests(SynchronousTestCase):
    def test_unit_runs_the_daemon_in_the_foreground(self) -> None:
        """When the unit is built for a data directory, then ExecStart runs an existing
        executable as twistd in the foreground without a pid file, with the data directory and
        the options; it restarts on failure and stops with SIGTERM."""
        data_dir = "/home/someone/jarvis data"
        text = systemd.unit_text(data_dir, ["--listen", "tcp:7770"])
        unit = parse_unit(text)
        service = unit["Service"]
        argv = exec_argv(service["ExecStart"])
        self.assertTrue(os.path.isabs(argv[0]))
        self.assertTrue(os.access(argv[0], os.X_OK), argv[0])
        at = argv.index("jarvis")
        self.assertIn("-n", argv[:at])
        self.assertIn("--pidfile=", argv[:at])
        self.assertEqual(argv[at + 1 :], ["--data-dir", data_dir, "--listen", "tcp:7770"])
        self.assertEqual(service["Type"], "simple")
        self.assertEqual(service["Restart"], "on-failure")
        self.assertEqual(service["KillSignal"], "SIGTERM")
        self.assertEqual(service["WorkingDirectory"], data_dir)
        self.assertEqual(unit["Install"]["WantedBy"], "default.target")
        self.assertNotIn("password", service["ExecStart"])

    def test_twistd_runs_with_this_interpreter(self) -> None:
        """When the command runs, then it is twistd of the interpreter's environment (its
        ``--help`` lists the jarvis plugin)."""
        command = systemd.twistd_command()
        env = dict(os.environ)
        root = systemd.source_root()
        if root is not None:
            env["PYTHONPATH"] = root
        out = subprocess.run(
            [*command, "--help"], capture_output=True, env=env, cwd="/", check=True, timeout=60
        ).stdout
        self.assertIn(b"jarvis", out)

    def test_quoting(self) -> None:
        """When an argument holds spaces, quotes, '%' or '$', then it stays one word with its
        exact value; a control character is refused."""
        for arg in ("a b", 'say "hi"', "100%", "$HOME", "back\\slash", "", "plain:1=2"):
            self.assertEqual(exec_argv(systemd.quote(arg)), [arg], arg)
        self.assertRaises(errors.InvalidInput, systemd.quote, "a\nb")
        self.assertRaises(errors.InvalidInput, systemd.unit_text, "/x\n[Service]", [])

    def test_unit_path_honours_xdg_config_home(self) -> None:
        """When XDG_CONFIG_HOME is set (absolute), then the unit goes under it; else (unset or
        relative) under ~/.config."""
        self.assertEqual(
            systemd.unit_path({"XDG_CONFIG_HOME": "/c"}), "/c/systemd/user/jarvis.service"
        )
        home = os.path.expanduser("~")
        for env in ({}, {"XDG_CONFIG_HOME": "rel"}):
            self.assertEqual(systemd.unit_path(env), f"{home}/.config/systemd/user/jarvis.service")

    def test_systemd_analyze_verify(self) -> None:
        """When systemd-analyze is installed, then it finds nothing wrong with the unit."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise self.skipTest("systemd-analyze is not installed")
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, systemd.UNIT_NAME)
        systemd.write_unit(path, systemd.unit_text("/tmp/jarvis-data", []), force=False)
        result = subprocess.run(
            [analyze, "verify", path], capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))


class InstallUnitCommandTests(TestCase):
    timeout = 60

    def make_cli(self) -> tuple[Cli, str]:
        root = short_tempdir(self)
        cli = Cli(root, "data")
        config = os.path.join(root, "config")
        cli.env["XDG_CONFIG_HOME"] = config
        return cli, os.path.join(config, "systemd", "user", "jarvis.service")

    async def test_install_print_and_force(self) -> None:
        """When 'jarvis daemon install-unit' runs, then it writes the unit (0644) under
        XDG_CONFIG_HOME with the recorded start options and says what to run next; --print
        writes nothing; an existing unit is kept unless --force."""
        cli, path = self.make_cli()
        os.makedirs(cli.data_dir, mode=0o700)
        launcher.write_daemon_options(cli.data_dir, {"listen": "tcp:0:interface=127.0.0.1"})

        printed = await cli.ok("daemon", "install-unit", "--print")
        self.assertFalse(os.path.exists(os.path.dirname(path)))
        self.assertIn("ExecStart=", printed)

        out = await cli.ok("daemon", "install-unit")
        self.assertIn(f"wrote {path}", out)
        self.assertIn("systemctl --user daemon-reload && systemctl --user enable --now jarvis", out)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        with open(path, encoding="utf-8") as f:
            written = f.read()
        self.assertEqual(written.rstrip("\n"), printed.rstrip("\n"))
        argv = exec_argv(parse_unit(written)["Service"]["ExecStart"])
        self.assertEqual(argv[argv.index("--data-dir") + 1], cli.data_dir)
        self.assertEqual(argv[argv.index("--listen") + 1], "tcp:0:interface=127.0.0.1")

        with open(path, "w", encoding="utf-8") as f:
            f.write("# mine\n")
        code, _out, err = await cli.run("daemon", "install-unit", "--listen", "tcp:7001")
        self.assertEqual(code, 1)
        self.assertIn("--force", err)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), "# mine\n")

        await cli.ok("daemon", "install-unit", "--force", "--listen", "tcp:7001")
        with open(path, encoding="utf-8") as f:
            argv = exec_argv(parse_unit(f.read())["Service"]["ExecStart"])
        self.assertEqual(argv[argv.index("--listen") + 1], "tcp:7001")
        self.assertEqual(
            sorted(os.listdir(os.path.dirname(path))), ["jarvis.service"], "temporary file left"
        )
