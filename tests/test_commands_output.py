"""Tests for what jarvis.app.commands prints: hostile names and bodies cannot drive the terminal.

Contact names and message bodies come from other people.  The commands run in this process
against a stand-in for the daemon connection, and their standard output is captured: text
output carries no ESC, C1 or bidi control, and ``--json`` output parses to exactly what the
daemon sent.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from jarvis.app import commands
from jarvis.app.cli import Options
from jarvis.common import errors
from jarvis.common.textsafe import BIDI_CONTROLS

#: A name that would set the window title, write the clipboard (OSC 52), link (OSC 8), clear
#: the screen, move the cursor up to forge a line, send a DCS and a C1 CSI, reverse the text.
HOSTILE_NAME = (
    "\x1b]0;pwned\x07eve\x1b]52;c;cm0gLXJmIH4=\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\"
    "\x1b[2J\x1b[1A\rbob: send me your password\x1bPq#0\x1b\\\x9b31m\u202eolleh\nsecond"
)
HOSTILE_BODY = "hi\n\x1b[1A\x1b[2Kalice: forged line\x9d0;title\x9c\u2066end"
UID = "e" * 52


def options(*args: str) -> Options:
    """Parsed ``jarvis ARGS``."""
    parsed = Options()
    parsed.parseOptions(["--data-dir", "/nonexistent-jarvis-test", *args])
    return parsed


class FakeClient:
    """The part of ``IpcClient`` that ``watch`` uses."""

    def __init__(self) -> None:
        self.handlers: list[Callable[[str, dict[str, Any]], None]] = []
        self.observers: list[Callable[[Any], None]] = []

    def subscribe(self, handler: Callable[..., None], events: Any = None) -> Any:
        self.handlers.append(handler)
        return defer.succeed({"subscribed": True})

    def add_disconnect_observer(self, observer: Callable[[Any], None]) -> None:
        self.observers.append(observer)


class FakeSession(commands.Session):
    """A session whose daemon answers from a table (no socket)."""

    def __init__(self, opts: Options, answers: dict[str, Any]) -> None:
        super().__init__(None, opts)
        self.answers = answers
        self.fake_client = FakeClient()

    async def call(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        return self.answers[method]

    async def connect(self) -> Any:
        return self.fake_client


def run_command(coroutine: Any) -> tuple[str, Any]:
    """Run a command coroutine to its end; return its stdout and its result (or failure)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        d = defer.ensureDeferred(coroutine)
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    return out.getvalue(), outcome[0] if outcome else None


def assert_terminal_safe(test: SynchronousTestCase, text: str) -> None:
    """No ESC, no other C0 control but newline, no DEL or C1, no bidi control."""
    for char in text:
        code = ord(char)
        test.assertFalse(code < 0x20 and char != "\n", repr(char))
        test.assertFalse(0x7F <= code <= 0x9F, repr(char))
        test.assertNotIn(char, BIDI_CONTROLS)


def hostile_contacts() -> dict[str, Any]:
    return {
        "contacts": [
            {"uid": UID, "name": HOSTILE_NAME, "alias": "", "status": "online", "unread": 2},
        ]
    }


class ContactsOutputTests(SynchronousTestCase):
    """``jarvis contacts``."""

    def test_text_is_terminal_safe(self) -> None:
        """When a contact's name carries escape sequences, C1 and bidi controls and a newline,
        then ``contacts`` prints it on one line with every control as a visible escape."""
        session = FakeSession(options("contacts"), {"contacts.list": hostile_contacts()})
        out, result = run_command(commands.cmd_contacts(session, None, {}))
        self.assertIsNone(result)
        assert_terminal_safe(self, out)
        self.assertEqual(out.count("\n"), 1, out)
        self.assertIn("\\x1b]52;c;cm0gLXJmIH4=\\x07", out)
        self.assertIn("\\x9b31m\\u202eolleh\\x0asecond", out)
        self.assertIn(UID[:12], out)

    def test_json_is_exact(self) -> None:
        """When the same contact is listed with --json, then the output parses to exactly what
        the daemon sent, and is still safe to print on a terminal."""
        document = hostile_contacts()
        session = FakeSession(options("--json", "contacts"), {"contacts.list": document})
        out, _ = run_command(commands.cmd_contacts(session, None, {}))
        self.assertEqual(json.loads(out), document)
        assert_terminal_safe(self, out)


class WatchOutputTests(SynchronousTestCase):
    """``jarvis watch``."""

    def test_events_are_exact_and_terminal_safe(self) -> None:
        """When an event carries a hostile body and name, then ``watch`` prints a JSON line
        that parses to exactly the event and holds no raw control character."""
        session = FakeSession(options("watch"), {})
        sub = options("watch").subOptions
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            d = defer.ensureDeferred(commands.cmd_watch(session, sub, {}))
            [handler] = session.fake_client.handlers
            params = {
                "message": {"id": "m1", "contact": UID, "body": HOSTILE_BODY},
                "name": HOSTILE_NAME,
            }
            handler("message.received", params)
            for observer in session.fake_client.observers:
                observer(None)
        self.failureResultOf(d, errors.DaemonNotRunning)
        [line] = out.getvalue().splitlines()
        self.assertEqual(json.loads(line), {"event": "message.received", "params": params})
        assert_terminal_safe(self, out.getvalue())


class EmitTests(SynchronousTestCase):
    """The shared print helper every command's text output goes through."""

    def test_bodies_keep_newlines_lose_controls(self) -> None:
        """When a command prints a multi-line body, then its newlines stay and its escape
        sequences become visible text."""
        session = FakeSession(options("contacts"), {})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            session.emit(HOSTILE_BODY, {})
        self.assertEqual(
            out.getvalue(),
            "hi\n\\x1b[1A\\x1b[2Kalice: forged line\\x9d0;title\\x9c\\u2066end\n",
        )

    def test_json_text_unchanged_when_harmless(self) -> None:
        """When a document holds only printable text (accents, emoji), then it is printed as
        ``json.dumps`` prints it."""
        document = {"body": "héllo 👋 — ok", "n": [1, 2]}
        self.assertEqual(commands.json_text(document), json.dumps(document, ensure_ascii=False))


class HistoryPathTests(SynchronousTestCase):
    """``jarvis history``: the path a message left by."""

    def test_deposited_message_says_via_mailbox(self) -> None:
        """When the history holds a message deposited in the contact's mailbox and one sent
        over a session, then the text marks the first ``[via mailbox]`` only, and --json
        keeps each message's ``path`` as the daemon sent it."""
        page = {
            "messages": [
                {"id": "b", "direction": "out", "body": "direct", "created": 2.0, "path": "direct"},
                {"id": "a", "direction": "out", "body": "boxed", "created": 1.0, "path": "mailbox"},
            ],
            "next": None,
        }
        sub = {"contact": UID, "limit": 50, "before": None, "after": None}
        session = FakeSession(options("history", UID), {"messages.history": page})
        out, _ = run_command(commands.cmd_history(session, sub, {}))  # type: ignore[arg-type]
        lines = out.splitlines()
        self.assertTrue(lines[0].endswith("> boxed [via mailbox]"), lines)
        self.assertTrue(lines[1].endswith("> direct"), lines)
        session = FakeSession(options("--json", "history", UID), {"messages.history": page})
        out, _ = run_command(commands.cmd_history(session, sub, {}))  # type: ignore[arg-type]
        self.assertEqual([m["path"] for m in json.loads(out)], ["mailbox", "direct"])


class GroupMembershipOutputTests(SynchronousTestCase):
    """``jarvis group invite|remove|role|leave``: whom, by name."""

    def group(self, *args: str, answers: dict[str, Any]) -> str:
        opts = options("group", *args)
        session = FakeSession(opts, answers)
        out, result = run_command(commands.cmd_group(session, opts.subOptions, {}))
        self.assertIsNone(result)
        return out

    def test_names_not_bare_uids(self) -> None:
        """When a contact is invited, a member removed or made admin, and the group left with
        its founding passed on, then each line names the person (as typed, or the new founder
        by the name the group knows, escapes made visible) with the first 12 characters of the
        uid,
        where the daemon's answers hold only uids; a member who was not the founder leaving
        is told nothing of the founder; --json still prints the answer itself."""
        invited = {"group": "ab" * 16, "invited": UID, "version": 3}
        out = self.group("invite", "book club", "bob", answers={"groups.invite": invited})
        self.assertEqual(out, f"invited bob ({UID[:12]}) to book club\n")
        removed = {"group": "ab" * 16, "removed": UID, "version": 4}
        out = self.group("remove", "book club", "bob", answers={"groups.remove": removed})
        self.assertEqual(out, f"removed bob ({UID[:12]}) from book club\n")
        role = {"group": "ab" * 16, "member": UID, "role": "admin", "version": 5}
        out = self.group("role", "book club", "bob", "admin", answers={"groups.setRole": role})
        self.assertEqual(out, f"bob ({UID[:12]}) is now admin\n")
        members = {
            "members": [
                {"uid": "m" * 52, "name": "me", "role": "founder", "online": True},
                {"uid": UID, "name": "eve\x1b[2J", "role": "member", "online": False},
            ]
        }
        left = {"group": "ab" * 16, "left": True, "founder": UID}
        answers = {"groups.members": members, "groups.leave": left}
        out = self.group("leave", "book club", answers=answers)
        self.assertEqual(out, f"left book club; the founder is now eve\\x1b[2J ({UID[:12]})\n")
        # a member who was not the founder leaves: the founder stays who it was, unsaid
        members["members"][0]["role"], members["members"][1]["role"] = "member", "founder"
        out = self.group("leave", "book club", answers=answers)
        self.assertEqual(out, "left book club\n")
        opts = options("--json", "group", "leave", "book club")
        out, _ = run_command(commands.cmd_group(FakeSession(opts, answers), opts.subOptions, {}))
        self.assertEqual(json.loads(out), left)
