"""Desktop notifications for new messages, other members' group messages (unless the group is
muted) and file offers, raised by the daemon (so they come with no UI open).

For each ``message.received`` event, each ``group.message`` of another member, and each
``transfer.offered`` of a file a contact offers us, the :class:`Notifier` decides whether to
notify (setting on, contact or group not muted, no attached client shows that conversation)
and runs the platform's notifier:
``notify-send`` on Linux, ``termux-notification`` on Termux, ``osascript`` on macOS.

Message text is hostile input.  It only ever travels as one element of an argument list given to
``spawnProcess`` (never a shell, never interpolated into a script: ``osascript`` reads it from
``argv``), and by default it is not shown at all: the notification names the sender only; previews
are opt-in.  Each notifier runs in its own process group under a deadline; on timeout the whole
group is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.common.textsafe import human_bytes
from jarvis.core.groups import GROUP_FOCUS_PREFIX

#: Longest preview text shown, in characters.
PREVIEW_CHARS = 100
#: A notifier process still running after this many seconds is killed with its group.
DEFAULT_TIMEOUT = 5.0
#: At most this many notifier processes run at once; more notifications wait.
MAX_CONCURRENT = 2

#: Runs argv[1:] in a new process group: the group can then be killed as a whole (run as
#: ``python -P``, so nothing is imported from the folder the daemon was started in).
_NEW_GROUP = "import os, sys; os.setpgid(0, 0); os.execvp(sys.argv[1], sys.argv[1:])"

_APPLESCRIPT = (
    "on run argv\ndisplay notification (item 2 of argv) with title (item 1 of argv)\nend run"
)


@dataclass(frozen=True)
class Notification:
    """What to show: a title and a body (both plain text, possibly hostile)."""

    title: str
    body: str


def clean(text: str, limit: int) -> str:
    """Return *text* on one line without control characters, at most *limit* characters."""
    flat = "".join(" " if (ch.isspace() or not ch.isprintable()) else ch for ch in text)
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def title_for(sender: str) -> str:
    """A notification's title: "Jarvis: " and the sender's name, flat and cut."""
    return f"Jarvis: {clean(sender, 64)}"


def message_body(text: str, previews: bool) -> str:
    """A message's notification text: its start with *previews*, else "New message"."""
    return clean(text, PREVIEW_CHARS) if previews else "New message"


def offer_body(transfer: Mapping[str, Any], previews: bool) -> str:
    """A file offer's notification text: the file's name and size with *previews* (a name can
    say as much as a message), else "Offers a file"."""
    if not previews:
        return "Offers a file"
    size = transfer.get("size")
    label = human_bytes(size) if isinstance(size, int) else "?"
    return f"Offers {clean(str(transfer.get('name', '')), PREVIEW_CHARS - 20)} ({label})"


def detect_platform(env: Mapping[str, str] | None = None, platform: str | None = None) -> str:
    """Return ``"macos"``, ``"termux"``, ``"linux"`` or ``"none"`` for this machine."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if platform == "darwin":
        return "macos"
    if "TERMUX_VERSION" in env or shutil.which("termux-notification"):
        return "termux"
    if platform.startswith("linux") and shutil.which("notify-send"):
        return "linux"
    return "none"


def command_for(platform: str, notification: Notification) -> list[str] | None:
    """Return the argument list that shows *notification* on *platform* (None: no notifier).

    No element is ever parsed by a shell; texts are whole arguments after the options.
    """
    if platform == "linux":
        return ["notify-send", "--app-name=Jarvis", "--", notification.title, notification.body]
    if platform == "termux":
        return [
            "termux-notification",
            "--group",
            "jarvis",
            "--title",
            notification.title,
            "--content",
            notification.body,
        ]
    if platform == "macos":
        return ["osascript", "-e", _APPLESCRIPT, notification.title, notification.body]
    return None


class _Watch(protocol.ProcessProtocol):
    """Waits for a notifier process and reports how it ended."""

    def __init__(self) -> None:
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


class Notifier(Service):
    """Raises desktop notifications for the node's ``message.received`` events.

    :param reactor: provides ``spawnProcess`` and ``callLater``.
    :param node: the :class:`~jarvis.core.node.Node` (events, settings, contacts).
    :param is_shown: ``is_shown(uid)`` says whether an attached client shows that conversation.
    :param platform: ``"linux"``, ``"termux"``, ``"macos"`` or ``"none"``; default: detected.
    :param timeout: seconds before a notifier's process group is killed.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        node: Any,
        is_shown: Callable[[str], bool],
        *,
        platform: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.node = node
        self.is_shown = is_shown
        self.platform = platform if platform is not None else detect_platform()
        self.timeout = timeout
        self.env = dict(os.environ if env is None else env)
        self.semaphore = defer.DeferredSemaphore(MAX_CONCURRENT)
        self.raised = 0
        self.killed = 0
        #: notifications dropped because a burst already had one waiting
        self.coalesced = 0
        self._unsubscribe: Callable[[], None] | None = None

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self.node.subscribe(self.event)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        return None

    def event(self, name: str, payload: dict[str, Any]) -> None:
        """Node event observer: notify for new incoming messages, other members' messages in
        the groups we did not mute (a file shared into a group is such a message, so its
        offers raise no second one) and files a contact offers us, when appropriate."""
        if self.platform == "none":
            return
        if name == "group.message":
            self._group_message(payload.get("message") or {})
        elif name == "message.received":
            message = payload.get("message") or {}
            uid = message.get("contact")
            if isinstance(uid, str) and not payload.get("muted"):
                text = str(message.get("body", ""))
                self._notify(uid, lambda previews: message_body(text, previews))
        elif name == "transfer.offered":
            t = payload.get("transfer") or {}
            uid = t.get("contact")
            if isinstance(uid, str) and t.get("direction") == "in" and not t.get("group"):
                if not self._muted(uid):
                    self._notify(uid, lambda previews: offer_body(t, previews))

    def _group_message(self, message: Mapping[str, Any]) -> None:
        """A group message: "AUTHOR in GROUP", unless it is ours, the group is muted or shown
        by a client, or its author is a muted contact."""
        groups = getattr(self.node, "groups", None)
        group_name = groups.notice_for(message) if groups is not None else None
        author = message.get("author")
        if group_name is None or not isinstance(author, str) or self._muted(author):
            return
        sender = f"{message.get('author_name') or author[:8]} in {group_name}"
        text = str(message.get("body", ""))
        self._notify(
            GROUP_FOCUS_PREFIX + str(message.get("group")),
            lambda previews: message_body(text, previews),
            sender=sender,
        )

    def _muted(self, uid: str) -> bool:
        book = getattr(self.node, "contacts", None)
        contact = book.get(uid) if book is not None else None
        return bool(getattr(contact, "muted", False))

    def _notify(self, uid: str, body: Callable[[bool], str], *, sender: str | None = None) -> None:
        """Show ``body(previews)`` under *sender* (default: *uid*'s name), unless
        notifications are off, a client shows conversation *uid* (a contact's uid, or
        :data:`GROUP_FOCUS_PREFIX` and a group's id), or a burst already has one waiting."""
        settings = self.node.settings
        if not settings.get("notifications", True) or self.is_shown(uid):
            return
        semaphore = self.semaphore
        if semaphore.tokens == 0 and semaphore.waiting:
            # A burst: notifiers are running and one more already waits to show.  Thousands of
            # messages a second must not queue thousands of processes; the user sees one.
            self.coalesced += 1
            return
        if sender is None:
            sender = self.node.display_name(uid)
        note = Notification(title_for(sender), body(bool(settings.get("previews"))))
        argv = command_for(self.platform, note)
        if argv is None:
            return
        d = self.semaphore.run(self.run, argv)
        d.addErrback(lambda f: self.log.warn("notification failed: {e}", e=f.getErrorMessage()))

    def run(self, argv: list[str]) -> defer.Deferred[int | None]:
        """Run one notifier *argv* in its own process group, killing the group on timeout."""
        watch = _Watch()
        executable = sys.executable
        transport = self.reactor.spawnProcess(
            watch,
            executable,
            [executable, "-P", "-c", _NEW_GROUP, *argv],
            env=self.env,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self.raised += 1
        pid = transport.pid

        def kill() -> None:
            self.killed += 1
            self.log.warn("notifier {cmd} timed out: killing its process group", cmd=argv[0])
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                # not yet in its own group (killed before setpgid ran): kill the process itself
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

        timer = self.reactor.callLater(self.timeout, kill)

        def ended(code: int | None) -> int | None:
            if timer.active():
                timer.cancel()
            return code

        return watch.ended.addCallback(ended)
