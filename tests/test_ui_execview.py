"""Tests for jarvis.ui.execview: ``/exec`` parsing, live local lines, Ctrl+C, -o, -list, -kill
(the controller on the fake daemon's scripted ``exec.run``)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jarvis.core.limits import MAX_TEXT_BYTES
from jarvis.ui import execview
from jarvis.ui.execview import (
    MAX_LINES,
    MESSAGE_LIMIT,
    ExecKill,
    ExecList,
    ExecStart,
    ExecUsage,
    cut_to_message,
    parse_exec,
)
from jarvis.ui.model import LOCAL
from tests.ui_fakes import (
    UID_ALICE,
    UID_BOB,
    FakeDaemonClient,
    make_controller,
    make_populated_client,
    press,
    screen_text,
)


def started() -> tuple[Any, FakeDaemonClient, Any]:
    controller, client, clock, _ = make_controller(make_populated_client())
    assert client is not None
    controller.execs._cwd = lambda: "/home/me"
    return controller, client, clock


def local_lines(controller: Any, uid: str | None) -> list[str]:
    conversation = controller.model.conversations.get(uid or "")
    if conversation is None:
        return []
    return [m.body for m in conversation.ordered() if m.direction == LOCAL]


def submit(controller: Any, line: str) -> None:
    controller.main_screen.input.set_edit_text(line)
    press(controller, "enter")


def exec_params(client: FakeDaemonClient) -> list[dict[str, Any]]:
    return [params for method, params in client.calls if method == "exec.run"]


def sent(client: FakeDaemonClient) -> list[dict[str, Any]]:
    return [params for method, params in client.calls if method == "messages.send"]


class ParseTests(SynchronousTestCase):
    """Reading ``/exec`` lines."""

    def test_command_and_options(self) -> None:
        """When /exec has -o, -t and a quoted command, then argv is split like a shell would
        (no shell runs) and the options are read."""
        self.assertEqual(
            parse_exec("/exec -o -t 2.5 printf 'a\\nb\\n' \"two words\""),
            ExecStart(("printf", "a\\nb\\n", "two words"), True, 2.5),
        )
        self.assertEqual(parse_exec("/exec ls -l"), ExecStart(("ls", "-l"), False, None))
        self.assertEqual(parse_exec("/exec -- -o"), ExecStart(("-o",), False, None))

    def test_list_and_kill(self) -> None:
        """When /exec -list or -kill ID is typed, then they are recognised; a bad ID is not."""
        self.assertEqual(parse_exec("/exec -list"), ExecList())
        self.assertEqual(parse_exec("/exec -kill 12"), ExecKill(12))
        self.assertIsInstance(parse_exec("/exec -kill x"), ExecUsage)
        self.assertIsInstance(parse_exec("/exec -kill"), ExecUsage)

    def test_malformed(self) -> None:
        """When /exec is malformed (nothing to run, bad timeout, unknown option, open quote),
        then it is a usage error, not a run."""
        for line in (
            "/exec",
            "/exec -o",
            "/exec -t",
            "/exec -t 0 ls",
            "/exec -t nan ls",
            "/exec -t 100000 ls",
            "/exec -x ls",
            "/exec echo 'open",
        ):
            self.assertIsInstance(parse_exec(line), ExecUsage, line)

    def test_message_limit_is_the_cores(self) -> None:
        """The UI's copy of the message size limit is the core's (the UI may not import it)."""
        self.assertEqual(MESSAGE_LIMIT, MAX_TEXT_BYTES)


class CutTests(SynchronousTestCase):
    """Fitting output into one message."""

    def test_fits(self) -> None:
        """When the output fits and nothing is missing, then it is sent as it is."""
        self.assertEqual(cut_to_message("hi", 0, 10), "hi")

    def test_cut_counts_what_is_not_sent(self) -> None:
        """When the output is larger than the limit, then the message is at most the limit,
        ends with the note, and the note counts exactly the bytes not sent."""
        text = "é" * 100  # 200 bytes: the cut may fall inside a character
        for limit in (60, 61, 99):
            message = cut_to_message(text, 5, limit)
            head, note = message.rsplit("\n", 1)
            self.assertLessEqual(len(message.encode("utf-8")), limit)
            self.assertTrue(text.startswith(head))
            self.assertEqual(note, f"(cut: {200 - len(head.encode()) + 5} bytes not sent)")

    def test_missing_bytes_alone_give_a_note(self) -> None:
        """When bytes never arrived (beyond the daemon's cap), then the note says so."""
        self.assertEqual(cut_to_message("hi", 7, 100), "hi\n(cut: 7 bytes not sent)")


class RunTests(SynchronousTestCase):
    """Running a command from the input line."""

    def test_output_shown_live_not_sent(self) -> None:
        """When /exec runs a program in an open conversation, then exec.run gets the argv
        and the UI's directory, the output shows as local lines while it runs, the end line
        follows, and nothing is sent."""
        controller, client, _ = started()
        press(controller, "meta 1")
        client.exec_holds = True
        client.exec_output = [("stdout", "a\nb")]
        submit(controller, "/exec printf 'a\\nb\\n'")
        self.assertEqual(exec_params(client), [{"argv": ["printf", "a\\nb\\n"], "cwd": "/home/me"}])
        # "b" has no newline yet: it waits for the rest of its line
        self.assertEqual(local_lines(controller, UID_ALICE), ["$ printf 'a\\nb\\n'", "  a"])
        client.exec_write(7, "c\nd\n", "stdout")
        client.exec_finish(7)
        self.assertEqual(
            local_lines(controller, UID_ALICE),
            ["$ printf 'a\\nb\\n'", "  a", "  bc", "  d", "exec #7: exit 0 after 0 s"],
        )
        text = screen_text(controller.window, (80, 24))
        self.assertIn("  bc", text)
        self.assertIn("exec #7: exit 0", text)
        self.assertEqual(sent(client), [])
        self.assertEqual(controller.execs.runs, {})

    def test_timeout_option_passed(self) -> None:
        """When -t is given, then exec.run gets it as its timeout."""
        controller, client, _ = started()
        submit(controller, "/exec -t 5 true")
        self.assertEqual(exec_params(client)[0]["timeout"], 5.0)

    def test_escapes_and_bidi_made_visible(self) -> None:
        """When a program prints escape sequences, C1 controls and bidi overrides, then the
        local line shows them as visible escapes: none reaches the screen raw."""
        controller, client, _ = started()
        press(controller, "meta 1")
        client.exec_output = [("stdout", "\x1b[2Jred\x1b]0;title\x07\u202eevil\x9b\ttab\n")]
        submit(controller, "/exec evil")
        line = local_lines(controller, UID_ALICE)[1]
        # (the tab is expanded before the escapes are made visible)
        self.assertEqual(line, "  \\x1b[2Jred\\x1b]0;title\\x07\\u202eevil\\x9b tab")
        self.assertFalse(any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line))

    def test_stderr_and_failure_exit(self) -> None:
        """When the program writes to stderr and exits non-zero, then both show and the end
        line gives the status; a signal is named."""
        controller, client, _ = started()
        press(controller, "meta 1")
        client.exec_holds = True
        submit(controller, "/exec false")
        client.exec_write(7, "oops\n", "stderr")
        client.exec_finish(7, 1)
        submit(controller, "/exec -t 1 sleep 5")
        client.exec_finish(8, None, "SIGTERM", timed_out=True)
        lines = local_lines(controller, UID_ALICE)
        self.assertIn("  oops", lines)
        self.assertIn("exec #7: exit 1 after 0 s", lines)
        self.assertIn("exec #8: SIGTERM (timed out) after 0 s", lines)

    def test_lines_capped_per_run(self) -> None:
        """When a program prints more than MAX_LINES lines, then MAX_LINES show and the rest
        are counted; a line longer than MAX_LINE continues on the next line."""
        controller, client, _ = started()
        press(controller, "meta 1")
        client.exec_output = [("stdout", "x\n" * (MAX_LINES + 5))]
        submit(controller, "/exec yes")
        lines = local_lines(controller, UID_ALICE)
        self.assertEqual(lines.count("  x"), MAX_LINES)
        self.assertIn("(5 more lines not shown)", lines)
        client.exec_output = [("stdout", "y" * (execview.MAX_LINE + 3))]
        submit(controller, "/exec long")
        lines = local_lines(controller, UID_ALICE)
        self.assertIn("  " + "y" * execview.MAX_LINE, lines)
        self.assertIn("  yyy", lines)

    def test_no_conversation_open(self) -> None:
        """When no conversation is open, then the output shows in the conversation area
        under the "No conversation open" hint, and stays when contacts reload."""
        controller, client, _ = started()
        client.exec_output = [("stdout", "uptime 3 days\n")]
        submit(controller, "/exec uptime")
        text = screen_text(controller.window, (80, 24))
        self.assertIn("No conversation open", text)
        self.assertIn("uptime 3 days", text)
        controller.reload()
        self.assertIn("  uptime 3 days", local_lines(controller, None))

    def test_local_lines_do_not_count_as_activity(self) -> None:
        """When output lines land in bob's conversation, then they are not unread and do not
        move bob up the conversation list; locking hides them."""
        controller, client, _ = started()
        press(controller, "meta 2")
        self.assertEqual(controller.model.current_uid, UID_BOB)
        order = [c.uid for c in controller.model.ordered_contacts()]
        client.exec_output = [("stdout", "secret output\n")]
        submit(controller, "/exec cat notes")
        self.assertEqual([c.uid for c in controller.model.ordered_contacts()], order)
        self.assertEqual(controller.model.total_unread(), 1)  # alice's, as before
        controller.model.set_locked(True)
        self.assertEqual(local_lines(controller, UID_BOB), [])

    def test_usage_error_runs_nothing(self) -> None:
        """When /exec is malformed, then the status line says the usage and nothing runs."""
        controller, client, _ = started()
        submit(controller, "/exec -t x ls")
        assert controller.model.status is not None
        self.assertEqual(controller.model.status.level, "error")
        self.assertNotIn("exec.run", client.methods_called())

    def test_daemon_refuses(self) -> None:
        """When exec.run fails (this daemon runs no programs), then the end line and the
        status line say why."""
        from tests.ui_fakes import remote_error

        controller, client, _ = started()
        press(controller, "meta 1")
        client.failures["exec.run"] = remote_error("invalid_input", "this daemon runs no programs")
        submit(controller, "/exec ls")
        self.assertIn(
            "exec failed: this daemon runs no programs", local_lines(controller, UID_ALICE)
        )
        self.assertEqual(controller.execs.runs, {})


class CancelTests(SynchronousTestCase):
    """Ctrl+C and the running command in focus."""

    def test_ctrl_c_cancels_the_newest_here(self) -> None:
        """When two commands run in alice's conversation and one in bob's, then Ctrl+C in
        alice's cancels alice's newest only, the next Ctrl+C the older one, and only then
        asks whether to quit."""
        controller, client, _ = started()
        client.exec_holds = True
        press(controller, "meta 1")
        submit(controller, "/exec sleep 100")  # 7
        submit(controller, "/exec sleep 200")  # 8
        press(controller, "meta 2")
        submit(controller, "/exec sleep 300")  # 9
        press(controller, "meta 1")
        press(controller, "ctrl c")
        self.assertEqual(sorted(client.exec_runs), [7, 9])
        self.assertIn("exec #8: cancelled", local_lines(controller, UID_ALICE))
        self.assertIsNone(controller.window.dialog)
        press(controller, "ctrl c")
        self.assertEqual(sorted(client.exec_runs), [9])
        self.assertEqual(client.cancelled, ["exec.run", "exec.run"])
        press(controller, "ctrl c")
        self.assertEqual(getattr(controller.window.dialog, "kind", None), "quit")
        self.assertEqual(sorted(client.exec_runs), [9])

    def test_calls_in_flight_first(self) -> None:
        """When a call the user waits for is in flight too, then Ctrl+C cancels that call
        first and the command keeps running."""
        controller, client, _ = started()
        client.exec_holds = True
        press(controller, "meta 1")
        submit(controller, "/exec sleep 100")
        client.slow.add("messages.send")
        submit(controller, "hello")
        press(controller, "ctrl c")
        self.assertEqual(client.cancelled, ["messages.send"])
        self.assertEqual(sorted(client.exec_runs), [7])

    def test_disconnect_ends_the_run_in_the_ui(self) -> None:
        """When the connection is lost while a command runs (the daemon then kills it), then
        the run ends in the UI with a line saying why."""
        controller, client, _ = started()
        client.exec_holds = True
        press(controller, "meta 1")
        submit(controller, "/exec sleep 100")
        call = client.exec_runs[7]["call"]
        client.disconnect()
        from twisted.python.failure import Failure

        call.errback(Failure(ConnectionError("connection lost")))
        self.assertIn(
            "exec #7 failed: lost the connection to the daemon", local_lines(controller, UID_ALICE)
        )
        self.assertEqual(controller.execs.runs, {})


class SendTests(SynchronousTestCase):
    """``-o``: the output as one message."""

    def test_output_sent_once_when_done(self) -> None:
        """When /exec -o ends, then its output (trailing newline stripped) is sent to the
        conversation open when it started, as one message, and shows as sent."""
        controller, client, _ = started()
        press(controller, "meta 1")
        client.exec_holds = True
        submit(controller, "/exec -o echo hi")
        client.exec_write(7, "hi\n")
        self.assertEqual(sent(client), [])
        press(controller, "meta 2")  # the output still goes to alice
        client.exec_finish(7)
        self.assertEqual(sent(client), [{"contact": UID_ALICE, "text": "hi"}])
        bodies = [m.body for m in controller.model.conversations[UID_ALICE].ordered()]
        self.assertEqual(bodies[-1], "hi")

    def test_large_output_cut_with_note(self) -> None:
        """When -o output is larger than a message, then the message is at most the limit and
        ends with a note counting the bytes not sent (including those the daemon dropped)."""
        controller, client, _ = started()
        press(controller, "meta 1")
        client.exec_holds = True
        submit(controller, "/exec -o cat big")
        chunk = "z" * 999 + "\n"
        for _ in range(100):  # 100,000 bytes
            client.exec_write(7, chunk)
        client.exec_finish(
            7, bytes={"stdout": 100_000, "stderr": 0, "kept": 100_000, "dropped": 50}
        )
        (params,) = sent(client)
        text = params["text"]
        self.assertLessEqual(len(text.encode("utf-8")), MESSAGE_LIMIT)
        head, note = text.rsplit("\n", 1)
        self.assertEqual(note, f"(cut: {100_000 - 1 - len(head) + 50} bytes not sent)")
        self.assertTrue(head.startswith("z" * 999 + "\n"))

    def test_output_sent_as_shown(self) -> None:
        """When -o output holds escape sequences, then the message holds their visible form,
        as the local lines showed them."""
        controller, client, _ = started()
        press(controller, "meta 1")
        client.exec_output = [("stdout", "\x1b[31mred\n")]
        submit(controller, "/exec -o colour")
        self.assertEqual(sent(client)[0]["text"], "\\x1b[31mred")

    def test_nothing_to_send(self) -> None:
        """When -o output is empty or the command is cancelled, then nothing is sent."""
        controller, client, _ = started()
        press(controller, "meta 1")
        submit(controller, "/exec -o true")
        self.assertIn("exec #7: no output to send", local_lines(controller, UID_ALICE))
        client.exec_holds = True
        submit(controller, "/exec -o sleep 100")
        client.exec_write(8, "partial\n")
        press(controller, "ctrl c")
        self.assertEqual(sent(client), [])

    def test_needs_an_open_conversation(self) -> None:
        """When -o is used with no conversation open, then nothing runs and the status line
        says to open one."""
        controller, client, _ = started()
        submit(controller, "/exec -o echo hi")
        self.assertNotIn("exec.run", client.methods_called())
        assert controller.model.status is not None
        self.assertIn("open a conversation", controller.model.status.text)


class ListKillTests(SynchronousTestCase):
    """``/exec -list`` and ``/exec -kill ID``."""

    def test_list_and_kill(self) -> None:
        """When commands run, then -list shows each with id, state, elapsed time and argv;
        -kill ID stops one (its end line says killed) and -list then shows the other only."""
        controller, client, _ = started()
        press(controller, "meta 1")
        client.exec_holds = True
        submit(controller, "/exec sleep 100")
        submit(controller, "/exec sleep 'two words'")
        submit(controller, "/exec -list")
        lines = local_lines(controller, UID_ALICE)
        self.assertIn("#7 running 3 s  sleep 100", lines)
        self.assertIn("#8 running 3 s  sleep 'two words'", lines)
        submit(controller, "/exec -kill 7")
        self.assertIn(("exec.kill", {"id": 7}), client.calls)
        self.assertIn("exec #7: SIGTERM (killed) after 0 s", local_lines(controller, UID_ALICE))
        self.assertEqual(list(controller.execs.runs), [2])

    def test_list_empty_and_kill_unknown(self) -> None:
        """When nothing runs, then -list says so; -kill of an unknown id is an error."""
        controller, _, _ = started()
        submit(controller, "/exec -list")
        self.assertEqual(local_lines(controller, None), ["exec: nothing running"])
        submit(controller, "/exec -kill 99")
        assert controller.model.status is not None
        self.assertEqual(controller.model.status.level, "error")
        self.assertIn("/exec -kill 99 failed", controller.model.status.text)


class LocalLineTests(SynchronousTestCase):
    """Local lines in the model and the scrollback."""

    def test_local_line_between_messages(self) -> None:
        """When a local line is added and a message arrives after it, then the conversation
        shows the loaded messages, the local line (no sender, no mark), then the new message,
        both updated in place and after a rebuild."""
        from jarvis.ui.model import Message

        controller, _, _ = started()
        press(controller, "meta 1")
        model = controller.model
        newest = model.conversations[UID_ALICE].ordered()[-1]
        model.add_local(UID_ALICE, "a local line", 0.0)
        model.add_message(
            Message("m99", UID_ALICE, "in", "after it", "received", newest.created, seq=99)
        )
        bodies = [m.body for m in model.conversations[UID_ALICE].ordered()]
        self.assertEqual(bodies[-3:], [newest.body, "a local line", "after it"])
        rows = screen_text(controller.window, (80, 24)).splitlines()
        local_row = next(i for i, row in enumerate(rows) if "a local line" in row)
        self.assertIn("after it", rows[local_row + 1])
        self.assertRegex(rows[local_row], r"\d\d:\d\d a local line$")
        controller.main_screen.scrollback._rebuild(model.current)  # the same rows rebuilt
        self.assertEqual(screen_text(controller.window, (80, 24)).splitlines(), rows)
