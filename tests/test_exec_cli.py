"""``jarvis exec`` and ``jarvis hook``: parsing and exit statuses (no daemon needed)."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from jarvis.app.cli import Options
from jarvis.app.commands import EXIT_TIMED_OUT, exec_status


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class ExecOptionsTests(SynchronousTestCase):
    def test_argv_after_double_dash(self) -> None:
        """When ARGV follows --, then its own options stay in ARGV and the exec options are
        parsed."""
        options = parse("exec", "--timeout", "5", "--pty", "--env", "A=b=c", "--", "ls", "-l")
        sub = options.subOptions
        self.assertEqual(sub["argv"], ["ls", "-l"])
        self.assertEqual((sub["timeout"], sub["pty"], sub["env"]), (5.0, True, {"A": "b=c"}))
        self.assertTrue(sub["cwd"].startswith("/"))

    def test_list_and_kill(self) -> None:
        """When --list or --kill ID is given alone, then no ARGV is needed."""
        self.assertTrue(parse("exec", "--list").subOptions["list"])
        self.assertEqual(parse("exec", "--kill", "7").subOptions["kill"], 7)

    def test_refused_combinations(self) -> None:
        """When nothing, or ARGV with --list, or --shell with several words, or a bad --env is
        given, then the command line is refused."""
        for argv in (
            ("exec",),
            ("exec", "--list", "--", "ls"),
            ("exec", "--shell", "--", "ls", "-l"),
            ("exec", "--env", "novalue", "--", "ls"),
        ):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_hook_add(self) -> None:
        """When hook add gets a name, options and ARGV, then all are parsed."""
        options = parse(
            "hook", "add", "bot", "--reply", "--pattern", "^/up", "--rate", "5", "--", "up", "-x"
        )
        sub = options.subOptions.subOptions
        self.assertEqual((sub["name"], sub["argv"]), ("bot", ["up", "-x"]))
        self.assertEqual((sub["reply"], sub["pattern"], sub["rate"]), (True, "^/up", 5))
        self.assertRaises(usage.UsageError, parse, "hook", "add", "bot")
        self.assertRaises(usage.UsageError, parse, "hook")


class ExitStatusTests(SynchronousTestCase):
    def test_statuses(self) -> None:
        """When a run exits, is signalled or times out, then jarvis exec exits with its code,
        128+N, or 124."""
        self.assertEqual(exec_status({"exit_code": 3, "signal": None, "timed_out": False}), 3)
        self.assertEqual(exec_status({"exit_code": None, "signal": "SIGKILL"}), 137)
        self.assertEqual(
            exec_status({"exit_code": None, "signal": "SIGTERM", "timed_out": True}),
            EXIT_TIMED_OUT,
        )
