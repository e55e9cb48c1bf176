"""Tests for :mod:`jarvis.app.notify`: hostile message text never reaches a shell."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.app import notify

HOSTILE = "hi\" '; $(touch {canary}) `id` \n-rf --help & | > /tmp/x"


def compose(sender: str, text: str, *, previews: bool) -> notify.Notification:
    """A message's notification, as the notifier builds it."""
    return notify.Notification(notify.title_for(sender), notify.message_body(text, previews))


class CommandTests(SynchronousTestCase):
    def test_each_platform_argument_list(self) -> None:
        """When a hostile preview is composed for each platform, then the command is an
        argument list without a shell, and the text is one argument, unchanged but flattened."""
        note = compose("Bob; rm -rf ~", HOSTILE, previews=True)
        self.assertNotIn("\n", note.body)
        self.assertIn("$(touch {canary})", note.body)
        expected_tail = [note.title, note.body]
        for platform, program in (
            ("linux", "notify-send"),
            ("termux", "termux-notification"),
            ("macos", "osascript"),
        ):
            argv = notify.command_for(platform, note)
            assert argv is not None
            self.assertEqual(argv[0], program)
            self.assertNotIn(argv[0], ("sh", "bash", "/bin/sh"))
            self.assertEqual([a for a in argv if a in expected_tail], expected_tail)
        mac = notify.command_for("macos", note)
        assert mac is not None
        self.assertNotIn(note.body, mac[2])  # the script never contains the text
        self.assertEqual(notify.command_for("linux", note)[2], "--")  # type: ignore[index]
        self.assertIsNone(notify.command_for("none", note))

    def test_sender_only_by_default(self) -> None:
        """When previews are off (the default), then the notification names the sender only."""
        note = compose("Bob", "the secret plan", previews=False)
        self.assertIn("Bob", note.title)
        self.assertNotIn("secret", note.title + note.body)

    def test_preview_cut(self) -> None:
        """When a preview is long, then it is cut to the documented length."""
        note = compose("Bob", "x" * 500, previews=True)
        self.assertEqual(len(note.body), notify.PREVIEW_CHARS)


class FakeNode:
    def __init__(self) -> None:
        self.observers: list[Any] = []
        self.settings = {"notifications": True, "previews": True}

    def subscribe(self, observer: Any) -> Any:
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)

    def display_name(self, uid: str) -> str:
        return "Bob $(whoami)"

    def emit(self, message: dict[str, Any], muted: bool = False) -> None:
        for o in list(self.observers):
            o("message.received", {"message": message, "muted": muted})

    def group_message(self, **fields: Any) -> None:
        message = {"group": GID, "author": "u2", "author_name": "carol", "body": "hi there"}
        message.update(fields)
        for o in list(self.observers):
            o("group.message", {"message": message})

    def offer(self, **fields: Any) -> None:
        transfer = {"contact": "u1", "direction": "in", "group": None, "name": "a.pdf"}
        transfer.update(fields)
        for o in list(self.observers):
            o("transfer.offered", {"transfer": transfer})


GID = "ab" * 16


class _Groups:
    """What the notifier asks of the groups: a group's name, unless the message is ours or
    the group muted (``Groups.notice_for``, tested in tests/test_groups.py)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.muted = False

    def notice_for(self, message: dict[str, Any]) -> str | None:
        if self.muted or message.get("author") == "me" or message.get("group") != GID:
            return None
        return self.name


#: A fake notifier's body that records each call's arguments in a file of its own (see
#: :func:`_argvs`).
RECORD_ARGV = (
    "import pathlib\n"
    "out = pathlib.Path(os.path.dirname(sys.argv[0])) / f'argv-{time.time_ns()}.json'\n"
    "out.write_text(json.dumps(sys.argv[1:]))"
)


class _Contact:
    def __init__(self, muted: bool) -> None:
        self.muted = muted


def fake_notifier(directory: str, body: str) -> str:
    """Install an executable called notify-send in *directory* running *body* (Python)."""
    path = os.path.join(directory, "notify-send")
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\nimport json, os, sys, time\n{body}\n")
    os.chmod(path, 0o755)
    return path


class RealProcessTests(TestCase):
    timeout = 30

    def make(self, body: str, **kwargs: Any) -> tuple[notify.Notifier, FakeNode, str]:
        directory = self.mktemp()
        os.makedirs(directory)
        fake_notifier(directory, body)
        node = FakeNode()
        shown: set[str] = set(kwargs.pop("shown", ()))
        notifier = notify.Notifier(
            reactor,
            node,
            shown.__contains__,
            platform="linux",
            env={"PATH": directory + os.pathsep + os.environ.get("PATH", "")},
            **kwargs,
        )
        notifier.startService()
        self.addCleanup(notifier.stopService)
        return notifier, node, directory

    async def test_hostile_text_reaches_notifier_verbatim(self) -> None:
        """When a message with quotes, $(...), backticks and newlines is notified, then the
        notifier receives it as one argument and nothing in it is executed."""
        notifier, node, directory = self.make(
            "open(os.path.join(os.path.dirname(sys.argv[0]), 'argv.json'), 'w')"
            ".write(json.dumps(sys.argv[1:]))"
        )
        canary = os.path.join(directory, "pwned")
        text = HOSTILE.format(canary=canary)
        node.emit({"contact": "u1", "body": text})
        await _wait_file(os.path.join(directory, "argv.json"))
        with open(os.path.join(directory, "argv.json")) as f:
            argv = json.load(f)
        self.assertEqual(argv[:2], ["--app-name=Jarvis", "--"])
        self.assertEqual(argv[2], "Jarvis: Bob $(whoami)")
        self.assertEqual(argv[3], notify.clean(text, notify.PREVIEW_CHARS))
        self.assertFalse(os.path.exists(canary))
        self.assertEqual(notifier.raised, 1)

    async def test_timeout_kills_process_group(self) -> None:
        """When the notifier hangs with a child of its own, then after the deadline the whole
        process group is killed, the child included."""
        notifier, node, directory = self.make(
            "import subprocess\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "open(os.path.join(os.path.dirname(sys.argv[0]), 'pids'), 'w')"
            ".write(f'{os.getpid()} {child.pid}')\n"
            "time.sleep(60)",
            timeout=1.0,
        )
        node.emit({"contact": "u1", "body": "hello"})
        pids_file = os.path.join(directory, "pids")
        await _wait_file(pids_file)
        with open(pids_file) as f:
            pids = [int(p) for p in f.read().split()]
        await _wait(lambda: all(not _alive(p) for p in pids), 10)
        self.assertEqual(notifier.killed, 1)

    async def test_burst_coalesced(self) -> None:
        """When 50 messages arrive while the notifiers hang, then only the running ones and one
        waiting notification exist; the other 47 are counted as coalesced, not queued."""
        notifier, node, _directory = self.make("time.sleep(60)", timeout=2.0)
        for index in range(50):
            node.emit({"contact": "u1", "body": f"message {index}"})
        self.assertEqual(notifier.raised, notify.MAX_CONCURRENT)
        self.assertEqual(len(notifier.semaphore.waiting), 1)
        self.assertEqual(notifier.coalesced, 50 - notify.MAX_CONCURRENT - 1)
        await _wait(lambda: notifier.killed == notify.MAX_CONCURRENT + 1, 15)

    async def test_muted_shown_or_off_raise_nothing(self) -> None:
        """When the contact is muted, the conversation is shown by a client, or notifications
        are off, then no notifier runs."""
        notifier, node, _directory = self.make("pass", shown={"shown"})
        node.emit({"contact": "u1", "body": "x"}, muted=True)
        node.emit({"contact": "shown", "body": "x"})
        node.settings["notifications"] = False
        node.emit({"contact": "u2", "body": "x"})
        self.assertEqual(notifier.raised, 0)


class FileOfferTests(TestCase):
    timeout = 30

    async def test_a_file_offer_notifies_naming_the_file_only_with_previews(self) -> None:
        """When a contact offers a file whose name holds $(...) and a newline, then the
        notification names the sender, and the file (one flat argument, nothing executed) with
        its size only when previews are on; "Offers a file" otherwise."""
        notifier, node, directory = RealProcessTests.make(self, RECORD_ARGV)  # type: ignore[arg-type]
        canary = os.path.join(directory, "pwned")
        name = f"plan $(touch {canary})\n.pdf"
        node.offer(name=name, size=3 * 1024 * 1024)
        await _wait(lambda: len(_argvs(directory)) == 1, 10)
        node.settings["previews"] = False
        node.offer(name="secret.pdf", size=10)
        await _wait(lambda: len(_argvs(directory)) == 2, 10)
        first, second = sorted(_argvs(directory), key=lambda a: "a file" in a[3])
        self.assertEqual(first[2], "Jarvis: Bob $(whoami)")
        flat = notify.clean(name, notify.PREVIEW_CHARS - 20)
        self.assertTrue(flat.startswith("plan $(touch "), flat)
        self.assertEqual(first[3], f"Offers {flat} (3.0 MiB)")
        self.assertEqual(second[3], "Offers a file")
        self.assertFalse(os.path.exists(canary))
        await _wait(lambda: notifier.semaphore.tokens == notify.MAX_CONCURRENT, 10)

    async def test_offers_into_a_group_ours_or_from_a_muted_contact_raise_nothing(self) -> None:
        """When a file is offered into a group, is one we send, comes from a muted contact or
        from one whose conversation a client shows, then no notifier runs."""
        notifier, node, _directory = RealProcessTests.make(
            self,  # type: ignore[arg-type]
            "pass",
            shown={"shown"},
        )
        node.contacts = {"muted": _Contact(True), "u1": _Contact(False)}  # type: ignore[attr-defined]
        node.offer(group="ab" * 16)
        node.offer(direction="out")
        node.offer(contact="muted")
        node.offer(contact="shown")
        self.assertEqual(notifier.raised, 0)
        node.offer()
        self.assertEqual(notifier.raised, 1)
        await _wait(lambda: notifier.semaphore.tokens == notify.MAX_CONCURRENT, 10)


class GroupMessageTests(TestCase):
    timeout = 30

    async def test_a_group_message_names_its_author_and_the_group(self) -> None:
        """When another member writes in a group (its name holding $(...) and a newline), then
        the notification's title names the author and the group, flat, in one argument, and
        its text is the message with previews on, "New message" without; nothing runs."""
        notifier, node, directory = RealProcessTests.make(self, RECORD_ARGV)  # type: ignore[arg-type]
        canary = os.path.join(directory, "pwned")
        node.groups = _Groups(f"team $(touch {canary})\nnews")  # type: ignore[attr-defined]
        node.group_message()
        await _wait(lambda: len(_argvs(directory)) == 1, 10)
        node.settings["previews"] = False
        node.group_message(body="the secret plan")
        await _wait(lambda: len(_argvs(directory)) == 2, 10)
        first, second = sorted(_argvs(directory), key=lambda a: a[3] == "New message")
        flat = notify.clean(f"carol in team $(touch {canary})\nnews", 64)
        self.assertEqual(first[2], f"Jarvis: {flat}")
        self.assertTrue(flat.startswith("carol in team $(touch "), flat)
        self.assertEqual(first[3], "hi there")
        self.assertEqual(second[2:], [first[2], "New message"])
        self.assertFalse(os.path.exists(canary))
        await _wait(lambda: notifier.semaphore.tokens == notify.MAX_CONCURRENT, 10)

    async def test_ours_muted_shown_or_off_raise_nothing(self) -> None:
        """When a group message is ours, its group is muted, a client shows the group, its
        author is a muted contact, or notifications are off, then no notifier runs; a group
        file offer raises none either (its group message does)."""
        notifier, node, _directory = RealProcessTests.make(
            self,  # type: ignore[arg-type]
            "pass",
            shown={"group:" + "cd" * 16},
        )
        groups = _Groups("team")
        node.groups = groups  # type: ignore[attr-defined]
        node.contacts = {"muted": _Contact(True)}  # type: ignore[attr-defined]
        node.group_message(author="me")
        node.group_message(author="muted")
        node.group_message(group="cd" * 16)
        node.offer(group=GID)
        groups.muted = True
        node.group_message()
        groups.muted = False
        node.settings["notifications"] = False
        node.group_message()
        self.assertEqual(notifier.raised, 0)
        node.settings["notifications"] = True
        node.group_message()
        self.assertEqual(notifier.raised, 1)
        await _wait(lambda: notifier.semaphore.tokens == notify.MAX_CONCURRENT, 10)


def _argvs(directory: str) -> list[list[str]]:
    found = []
    for name in os.listdir(directory):
        if name.startswith("argv-") and name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                try:
                    found.append(json.load(f))
                except ValueError:
                    continue  # still being written
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): read its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except OSError:
        return False


async def _wait(predicate: Any, timeout: float) -> None:
    """Poll *predicate* each 20 ms until true (a process's end has no event to wait for)."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while not predicate():
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]


async def _wait_file(path: str) -> None:
    await _wait(lambda: os.path.exists(path) and os.path.getsize(path) > 0, 10)
