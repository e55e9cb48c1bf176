"""What the terminal UI knows: contacts, conversations, unread counts, connection summary, drafts.

The model is fed by results of the daemon's local API and by its events, and tells observers
what changed; widgets render from it and the controller changes it.  It holds immutable values
(:class:`Contact`, :class:`Message`, :class:`ConnectionSummary`) and small mutable per-conversation
state (loaded messages, the "new messages" marker, the draft).

This module must not import urwid, the reactor or the IPC client: it is tested on its own.
"""

from __future__ import annotations

import bisect
import itertools
import os
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jarvis.common.message_states import MESSAGE_STATES, may_advance
from jarvis.common.summary import AMBER, GREEN, GREY, RED, summary_level
from jarvis.common.textsafe import (
    human_bytes,
    human_since,
    human_time_left,
    strip_bidi,
    terminal_safe,
)

#: Connection summary levels and what they mean.

#: Slash commands of the input line, for the help screen and docs/keys.md.
SLASH_COMMANDS: tuple[tuple[str, str], ...] = (
    ("/add LINK", "Add a contact from a jarvis:// link code (or a card file path)"),
    ("/msg NAME TEXT", "Send TEXT to the contact called NAME (quote names with spaces)"),
    ("/exec [-o] [-t S] CMD", "Run CMD here, its output shown locally (-o: then sent)"),
    ("/exec -list", "List the running commands (/exec -kill ID stops one)"),
    (
        "/file PATH",
        "Offer the file at PATH to the open conversation (in a group: every member); a "
        "pattern (~/photos/*.jpg) offers each file it matches",
    ),
    ("/accept [ID] [DIR]", "Accept an offered file (no ID: the newest here; into DIR)"),
    ("/accept all [DIR]", "Accept every file offered in the open conversation"),
    ("/decline [ID]", "Decline an offered file (no ID: the newest here)"),
    ("/decline all", "Decline every file offered in the open conversation"),
    ("/cancel ID", "Cancel a file transfer, either way"),
    ("/cancel all", "Cancel every transfer not ended in the open conversation, both ways"),
    ("/fetch ID [DIR]", "Ask for a file shared into the open group (ID: on its line)"),
    ("/files", "List the file transfers not ended, in every conversation, here"),
    ("/group create NAME", "Found a private group called NAME (it opens)"),
    ("/invite CONTACT", "Invite a contact to the open group"),
    ("/kick MEMBER", "Remove a member (name or uid) from the open group"),
    ("/leave", "Leave the open group"),
    ("/mute, /unmute", "No desktop notifications for the open group's messages, or again"),
    ("/topic TEXT", "Set the open group's topic (if the daemon can)"),
    ("/invites", "List the group invitations received"),
    ("/join ID", "Join the group of invitation ID (/decline ID forgets it)"),
    ("/mailbox [LINK|drop]", "Show the mailbox; use the one at LINK; stop using it (drop)"),
    ("/lock", "Lock Jarvis"),
    ("/help", "Show the keys"),
    ("/quit", "Close the UI (the daemon keeps running)"),
    ("//TEXT", "Send TEXT starting with a single slash"),
)

#: The direction of a local line: shown in the conversation area only, never sent (``/exec``).
LOCAL = "local"
#: Where local lines go while no conversation is open (no contact has an empty uid).
NO_CONVERSATION = ""
PEER_STATUSES = ("offline", "connecting", "online")
#: The paths a message to a contact can take (``mailbox.status``'s ``contacts[].path``).
#: Conversation keys of groups start with this (contact uids are base32: never a colon).
GROUP_PREFIX = "group:"


def group_key(group_id: str) -> str:
    """The conversation key of group *group_id* (its entry in ``contacts``/``conversations``)."""
    return GROUP_PREFIX + group_id


def is_group(key: str | None) -> bool:
    """Whether conversation key *key* is a group's."""
    return bool(key) and str(key).startswith(GROUP_PREFIX)


PATHS = ("lan", "direct", "relayed", "mailbox", "none")


def _text(value: object, default: str = "") -> str:
    # urwid drops C0/C1 controls and escape sequences when it lays text out, but lets bidi
    # controls through: a name or body with U+202E would reverse what follows it on screen.
    return strip_bidi(value) if isinstance(value, str) else default


def _strings(value: object) -> tuple[str, ...]:
    return tuple(strip_bidi(str(v)) for v in value) if isinstance(value, list | tuple) else ()


def _tally(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


#: ``group.delivery`` events kept for a message not yet shown (the event raced its send).
EARLY_DELIVERIES = 256


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class Contact:
    """A contact as the daemon reports it (``contacts.list`` / ``contact.changed``).

    :param uid: the contact's 52-character identity.
    :param status: ``"offline"``, ``"connecting"`` or ``"online"``.
    :param last_activity: epoch seconds of the last message either way, if any.
    """

    uid: str
    name: str = ""
    alias: str = ""
    fingerprint: str = ""
    safety_code: str = ""
    addresses: tuple[str, ...] = ()
    verified: bool = False
    blocked: bool = False
    muted: bool = False
    read_receipts: bool = True
    status: str = "offline"
    unread: int = 0
    last_activity: float | None = None
    #: a group's entry (``uid`` is :func:`group_key` of its id): its topic, member count,
    #: my role and whether I left or was removed
    group: bool = False
    topic: str = ""
    members: int = 0
    role: str | None = None
    left: bool = False

    @classmethod
    def from_group(cls, data: Mapping[str, Any]) -> Contact:
        """Build a group's conversation-list entry from ``groups.list``/``group.changed``.

        :raises ValueError: if there is no id.
        """
        ident = data.get("id")
        if not isinstance(ident, str) or not ident:
            raise ValueError("group without id")
        unread = data.get("unread")
        members = data.get("members")
        role = data.get("role")
        return cls(
            uid=group_key(ident),
            name=_text(data.get("name")),
            status="online",
            unread=unread if isinstance(unread, int) and unread > 0 else 0,
            group=True,
            topic=_text(data.get("topic")),
            members=members if isinstance(members, int) and members > 0 else 0,
            role=str(role) if role in ("founder", "admin", "member") else None,
            left=bool(data.get("left", False)),
        )

    @property
    def group_id(self) -> str:
        """A group entry's group id (empty for a contact)."""
        return self.uid[len(GROUP_PREFIX) :] if self.group else ""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Contact:
        """Build a contact from the API's dictionary, tolerating missing or odd fields.

        :raises ValueError: if there is no uid.
        """
        uid = data.get("uid")
        if not isinstance(uid, str) or not uid:
            raise ValueError("contact without uid")
        addresses = data.get("addresses") or ()
        status = _text(data.get("status"), "offline")
        unread = data.get("unread")
        return cls(
            uid=uid,
            name=_text(data.get("name")),
            alias=_text(data.get("alias")),
            fingerprint=_text(data.get("fingerprint")),
            safety_code=_text(data.get("safety_code")),
            addresses=_strings(addresses),
            verified=bool(data.get("verified", False)),
            blocked=bool(data.get("blocked", False)),
            muted=bool(data.get("muted", False)),
            read_receipts=bool(data.get("read_receipts", True)),
            status=status if status in PEER_STATUSES else "offline",
            unread=unread if isinstance(unread, int) and unread > 0 else 0,
            last_activity=_number(data.get("last_activity")),
        )

    @property
    def display_name(self) -> str:
        """The alias if set, else the name, else the start of the uid (``#name`` for a group)."""
        if self.group:
            return "#" + (self.name or self.group_id[:8])
        return self.alias or self.name or self.uid[:12]


@dataclass(frozen=True)
class Message:
    """One message of a conversation (times are epoch seconds or ``None``).

    :param direction: ``"in"`` or ``"out"``.
    :param state: one of :data:`MESSAGE_STATES`.
    """

    id: str
    contact: str
    direction: str
    body: str
    state: str
    created: float
    sent: float | None = None
    delivered: float | None = None
    read: float | None = None
    seq: int = 0  # its position in the conversation (the daemon's order; 0 if not given)
    path: str | None = None  # "mailbox": deposited in the contact's mailbox; else None
    author: str = ""  # a group message's author, as shown on its line ("" in 1:1)
    #: my group message: how many of the other members (``group_members``, of the state it was
    #: written under) have stored it; both ``None`` on others' messages and in 1:1
    group_delivered: int | None = None
    group_members: int | None = None

    def with_group_delivery(self, delivered: int, members: int) -> Message:
        """This group message stored by *delivered* of *members* (never fewer than known):
        ``delivered`` once all have it."""
        if self.group_delivered is not None and self.group_delivered > delivered:
            delivered = self.group_delivered
        delivered = min(delivered, members)
        state = self.state
        if members and delivered >= members and may_advance(self.direction, state, "delivered"):
            state = "delivered"
        return replace(self, group_delivered=delivered, group_members=members, state=state)

    @classmethod
    def from_group(cls, data: Mapping[str, Any], me: str | None) -> Message:
        """Build a group message (``groups.history`` item, ``group.message`` event).

        :param me: my uid: my own messages are outgoing, every other member's incoming.
        :raises ValueError: if the id or group is missing.
        """
        ident = data.get("id")
        group = data.get("group")
        if not isinstance(ident, str | int) or not isinstance(group, str) or not group:
            raise ValueError("group message without id or group")
        author = data.get("author")
        mine = bool(me) and author == me
        name = _text(data.get("author_name")) or (author[:12] if isinstance(author, str) else "?")
        index = data.get("index")
        body = _text(data.get("body"))
        if isinstance(data.get("file"), Mapping) and not mine:
            body += f"  (/fetch {str(ident)[:8]})"  # a shared file: how to ask for it
        message = cls(
            id=str(ident),
            contact=group_key(group),
            direction="out" if mine else "in",
            body=body,
            state="sent" if mine else "received",
            created=_number(data.get("created")) or 0.0,
            seq=index + 1 if isinstance(index, int) and index >= 0 else 0,
            author="" if mine else name,
        )
        delivered, members = _tally(data.get("delivered")), _tally(data.get("members"))
        if mine and delivered is not None and members is not None:
            message = message.with_group_delivery(delivered, members)
        return message

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Message:
        """Build a message from the API's dictionary.

        :raises ValueError: if the id or contact is missing.
        """
        ident = data.get("id")
        contact = data.get("contact")
        if not isinstance(ident, str | int) or not isinstance(contact, str):
            raise ValueError("message without id or contact")
        state = _text(data.get("state"), "queued")
        direction = "in" if data.get("direction") == "in" else "out"
        return cls(
            id=str(ident),
            contact=contact,
            direction=direction,
            body=_text(data.get("body")),
            state=state if state in MESSAGE_STATES else "queued",
            created=_number(data.get("created")) or 0.0,
            sent=_number(data.get("sent")),
            delivered=_number(data.get("delivered")),
            read=_number(data.get("read")),
            seq=seq if isinstance(seq := data.get("seq"), int) and seq > 0 else 0,
            path="mailbox" if data.get("path") == "mailbox" else None,
        )


@dataclass(frozen=True)
class ConnectionSummary:
    """How many peers are connected, and the colour that says it.

    :param level: :data:`GREEN` (all), :data:`AMBER` (some), :data:`RED` (none) or :data:`GREY`
        (the daemon itself does not answer).
    """

    level: str
    online: int = 0
    total: int = 0

    @classmethod
    def from_counts(cls, online: int, total: int) -> ConnectionSummary:
        """Summarise *online* of *total* peers (the rule:
        :func:`jarvis.common.summary.summary_level`)."""
        return cls(summary_level(online, total), online, total)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ConnectionSummary:
        """Build from ``peers.status`` or a ``connection.summary`` event (trusts ``summary``)."""
        online = data.get("online")
        total = data.get("total")
        online_n = online if isinstance(online, int) else 0
        total_n = total if isinstance(total, int) else 0
        level = data.get("summary")
        if level in (GREEN, AMBER, RED):
            return cls(str(level), online_n, total_n)
        return cls.from_counts(online_n, total_n)

    @classmethod
    def unreachable(cls) -> ConnectionSummary:
        """The summary shown while the daemon does not answer."""
        return cls(GREY)

    @property
    def text(self) -> str:
        """``"x/y online"``, or ``"daemon unreachable"`` when grey."""
        if self.level == GREY:
            return "daemon unreachable"
        return f"{self.online}/{self.total} online"

    @property
    def style(self) -> str:
        """The palette style name for this level."""
        return f"summary_{self.level}"


@dataclass(frozen=True)
class Identity:
    """My identity as ``identity.show`` reports it (only what the UI displays)."""

    name: str
    uid: str = ""
    fingerprint: str = ""
    link: str = ""
    addresses: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Identity:
        """Build from ``identity.show``/``identity.unlock``/``identity.create`` results."""
        addresses = data.get("addresses") or ()
        return cls(
            name=_text(data.get("name")),
            uid=_text(data.get("uid")),
            fingerprint=_text(data.get("fingerprint")),
            link=_text(data.get("link")),
            addresses=_strings(addresses),
        )


@dataclass(frozen=True)
class Operation:
    """A daemon call in flight that Ctrl+C can cancel.

    :param id: a number unique in this model.
    :param label: what the status bar shows (``"sending"``, ``"unlocking"``).
    """

    id: int
    label: str


@dataclass(frozen=True)
class StatusLine:
    """The one-line notice at the bottom: an error or information, never a traceback."""

    text: str
    level: str = "info"  # "info" or "error"
    #: What the notice is about when the model keeps it current ("offers": how many offers
    #: wait for an answer); "" for a one-off notice.
    about: str = ""


class InputHistory:
    """Lines sent from the input line, browsed with Up/Down like a shell.

    The line being typed when browsing starts is kept and comes back after the newest entry.
    """

    def __init__(self, limit: int = 500) -> None:
        """:param limit: how many lines to keep."""
        self._entries: list[str] = []
        self._limit = limit
        self._position: int | None = None
        self._pending = ""

    @property
    def entries(self) -> tuple[str, ...]:
        """The remembered lines, oldest first."""
        return tuple(self._entries)

    def add(self, line: str) -> None:
        """Remember *line* (skipping blanks and an immediate repeat) and stop browsing."""
        self._position = None
        if not line.strip():
            return
        if self._entries and self._entries[-1] == line:
            return
        self._entries.append(line)
        del self._entries[: -self._limit]

    def previous(self, current: str) -> str | None:
        """Return the line before the one shown, or ``None`` at the oldest.

        :param current: the text in the input line now (kept when browsing starts).
        """
        if not self._entries:
            return None
        if self._position is None:
            self._pending = current
            self._position = len(self._entries)
        if self._position == 0:
            return None
        self._position -= 1
        return self._entries[self._position]

    def next(self) -> str | None:
        """Return the line after the one shown, the pending line after the newest, or ``None``."""
        if self._position is None:
            return None
        self._position += 1
        if self._position >= len(self._entries):
            self._position = None
            return self._pending
        return self._entries[self._position]

    def reset(self) -> None:
        """Stop browsing (the user typed or switched conversation)."""
        self._position = None


def _furthest(old: Message, new: Message) -> Message:
    """The newer report of one message, without going back to an earlier state.

    :returns: *old* itself when *new* tells nothing more.
    """
    # a later report of an earlier state never takes a message back
    if not may_advance(new.direction, old.state, new.state):
        new = replace(
            new,
            state=old.state,
            sent=old.sent or new.sent,
            delivered=old.delivered or new.delivered,
            read=old.read or new.read,
        )
    if not new.seq and old.seq:
        new = replace(new, seq=old.seq)
    if old.path and not new.path:
        new = replace(new, path=old.path)
    if old.group_delivered is not None and old.group_members is not None:
        # a group message's count only grows (an answer or a page may be older than an event)
        if new.group_members is None:
            new = replace(new, group_delivered=old.group_delivered, group_members=old.group_members)
        else:
            new = new.with_group_delivery(old.group_delivered, new.group_members)
    return old if new == old else new


def _order_key(message: Message) -> tuple[int, float, str]:
    # The daemon's seq is the conversation's order: messages written or received in the same
    # millisecond (a burst) share ``created``, and their random ids say nothing of order.
    return message.seq, message.created, message.id


@dataclass
class Conversation:
    """What the UI holds for one contact's conversation (mutable, owned by the model).

    ``messages`` is read here and written only through :meth:`put` and :meth:`clear`, which
    keep the oldest-first order up to date: a message newer than the newest, or a new state of
    a shown message, costs no sort (every incoming message would otherwise sort the whole
    conversation again, twice: for the scrollback and for the conversation list).
    """

    uid: str
    messages: dict[str, Message] = field(default_factory=dict)
    marker: str | None = None
    draft: str = ""
    loaded: bool = False
    older: Any = None  # the ``next`` cursor of messages.history, None when all are loaded
    # the messages oldest first and each one's index there; None until asked, or after a
    # message went in anywhere but at the end
    _order: list[Message] | None = field(default=None, repr=False, compare=False)
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def put(self, message: Message) -> None:
        """Add *message*, or replace the message with its id."""
        old = self.messages.get(message.id)
        self.messages[message.id] = message
        order = self._order
        if order is None:
            return
        if old is not None:
            if _order_key(old) == _order_key(message):
                order[self._index[message.id]] = message
            else:
                self._order = None
        elif not order or _order_key(order[-1]) <= _order_key(message):
            self._index[message.id] = len(order)
            order.append(message)
        else:
            self._order = None

    def clear(self) -> None:
        """Forget every message."""
        self.messages.clear()
        self._order = None

    def discard(self, message_id: str) -> bool:
        """Forget the message *message_id* (a local line another took the place of).

        :returns: whether it was there.
        """
        if self.messages.pop(message_id, None) is None:
            return False
        self._order = None
        return True

    def ordered(self) -> list[Message]:
        """Messages oldest first (the conversation's own list: read it, do not change it)."""
        order = self._order
        if order is None:
            order = self._order = sorted(self.messages.values(), key=_order_key)
            self._index = {message.id: index for index, message in enumerate(order)}
        return order

    def last_activity(self) -> float | None:
        """The newest message's time, if any message is loaded (local lines do not count)."""
        for message in reversed(self.ordered()):
            if message.direction != LOCAL:
                return message.created
        return None


# Slash command parsing ---------------------------------------------------------------------


@dataclass(frozen=True)
class SendText:
    """The input is a message for the open conversation."""

    text: str


@dataclass(frozen=True)
class SlashCommand:
    """The input is ``/name args``; ``args`` are already split as the command needs."""

    name: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class InputError:
    """The input is a malformed command; ``text`` says what is expected."""

    text: str


InputAction = SendText | SlashCommand | InputError


def _split_name(rest: str) -> tuple[str, str] | None:
    rest = rest.lstrip()
    if not rest:
        return None
    if rest[0] in "\"'":
        end = rest.find(rest[0], 1)
        if end < 0:
            return None
        return rest[1:end], rest[end + 1 :].lstrip()
    name, _, text = rest.partition(" ")
    return name, text.lstrip()


def parse_input(line: str) -> InputAction | None:
    """Decide what a line typed in the input means.

    :param line: the input line's text.
    :returns: the action, or ``None`` for a blank line.
    """
    if not line.strip():
        return None
    if line.startswith("//"):
        return SendText(line[1:])
    if not line.startswith("/"):
        return SendText(line)
    head, _, rest = line[1:].partition(" ")
    name = head.lower()
    rest = rest.strip()
    if name in ("lock", "help", "quit"):
        return SlashCommand(name)
    if name == "add":
        if not rest:
            return InputError("usage: /add LINK (a jarvis:// link code or a card file path)")
        return SlashCommand("add", (rest,))
    if name == "msg":
        parts = _split_name(rest)
        if parts is None or not parts[1]:
            return InputError("usage: /msg NAME TEXT")
        return SlashCommand("msg", parts)
    if name == "file":
        if not rest:
            return InputError("usage: /file PATH")
        return SlashCommand("file", (os.path.abspath(os.path.expanduser(rest)),))
    if name in ("accept", "decline") and not rest:
        return SlashCommand(name)  # the newest offer waiting in the open conversation
    if name == "accept" and rest[:1] in ("/", "~", "."):
        return SlashCommand(name, ("", os.path.abspath(os.path.expanduser(rest))))
    if name in ("accept", "decline", "cancel", "fetch"):
        ident, _, directory = rest.partition(" ")
        takes_dir = name in ("accept", "fetch")
        if not ident or (directory.strip() and not takes_dir):
            return InputError(f"usage: /{name} ID" + (" [DIR]" if takes_dir else ""))
        if directory.strip():
            folder = os.path.abspath(os.path.expanduser(directory.strip()))
            return SlashCommand(name, (ident, folder))
        return SlashCommand(name, (ident,))
    if name == "files":
        if rest:
            return InputError("usage: /files (the transfers not ended; jarvis files lists all)")
        return SlashCommand("files")
    if name == "mailbox":
        return SlashCommand("mailbox", (rest,) if rest else ())
    return _group_command(head, name, rest)


#: Group slash commands taking one argument, and their usage line.
_GROUP_USAGE = {
    "invite": "usage: /invite CONTACT (in an open group)",
    "kick": "usage: /kick MEMBER (a member's name or uid, in an open group)",
    "topic": "usage: /topic TEXT (in an open group)",
    "join": "usage: /join INVITE_ID (/invites lists them)",
    "decline": "usage: /decline INVITE_ID (/invites lists them)",
}


def _group_command(head: str, name: str, rest: str) -> InputAction:
    if name in ("leave", "invites", "members", "mute", "unmute"):
        return SlashCommand(name)
    if name in _GROUP_USAGE:
        if not rest:
            return InputError(_GROUP_USAGE[name])
        parts = _split_name(rest) if name in ("invite", "kick") else (rest, "")
        if parts is None or (name in ("invite", "kick") and parts[1]):
            return InputError(_GROUP_USAGE[name])
        return SlashCommand(name, (parts[0],))
    if name == "group":
        verb, _, group_name = rest.partition(" ")
        if verb.lower() != "create" or not group_name.strip():
            return InputError("usage: /group create NAME")
        return SlashCommand("group-create", (group_name.strip(),))
    return InputError(f"unknown command /{head}; /help lists the commands")


# The mailbox (issue 15) ----------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass(frozen=True)
class MailboxStatus:
    """The mailbox in use as ``mailbox.status`` reports it (``link`` empty: none).

    :param address: ``host:port`` of the link (the pin left out: it says nothing to a reader).
    :param last_collect: epoch seconds of the last collection, if any.
    """

    link: str = ""
    connected: bool = False
    queues: int = 0
    contacts_reachable: int = 0
    collected: int = 0
    deposited: int = 0
    last_collect: float | None = None
    error: str = ""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> MailboxStatus:
        """Build it from ``mailbox.status``'s answer, tolerating missing or odd fields."""

        def count(key: str) -> int:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        return cls(
            link=terminal_safe(_text(data.get("link")), keep_newlines=False),
            connected=bool(data.get("connected", False)),
            queues=count("queues"),
            contacts_reachable=count("contacts_reachable"),
            collected=count("collected"),
            deposited=count("deposited"),
            last_collect=_number(data.get("last_collect")),
            error=terminal_safe(_text(data.get("error")), keep_newlines=False),
        )

    @property
    def address(self) -> str:
        """``host:port`` from ``jarvis-mailbox:<pin>@<host>:<port>`` (the link if odd)."""
        return self.link.rpartition("@")[2] if "@" in self.link else self.link

    def lines(self, now: float) -> list[str]:
        """The status in words, one fact a line (for the settings dialog)."""
        if not self.link:
            return ["No mailbox: messages wait until you and the contact are online together."]
        reach = "connected" if self.connected else "not connected"
        if self.error and not self.connected:
            reach += f" ({self.error})"
        collect = human_since(self.last_collect, now) if self.last_collect else "never"
        return [
            f"Mailbox {self.address}: {reach}",
            f"{_count(self.queues, 'queue')}; "
            f"{_count(self.contacts_reachable, 'contact')} you can deposit for",
            f"collected {self.collected}, deposited {self.deposited} since unlock",
            f"last collect: {collect}",
        ]

    def summary(self, now: float) -> str:
        """The status on one line (for the status line: ``/mailbox``)."""
        if not self.link:
            return "no mailbox in use: /mailbox LINK uses one"
        reach = "connected" if self.connected else "not connected"
        if self.error and not self.connected:
            reach += f" ({self.error})"
        collect = human_since(self.last_collect, now) if self.last_collect else "never"
        # short enough for an 80-column status line; F4 shows the rest
        return f"mailbox {self.address}: {reach}; {_count(self.queues, 'queue')}; " + (
            f"last collect {collect}"
        )


# The model -----------------------------------------------------------------------------------

Observer = Callable[[str], None]


class MessengerModel:
    """Everything the UI shows, fed by API results and events, with change observers.

    Observers are called with one word saying what changed: ``"contacts"``, ``"messages"``,
    ``"summary"``, ``"identity"``, ``"lock"``, ``"operations"``, ``"status"``, ``"current"``,
    ``"reachable"``.
    """

    def __init__(self) -> None:
        self._observers: list[Observer] = []
        self.contacts: dict[str, Contact] = {}
        self.conversations: dict[str, Conversation] = {}
        self.current_uid: str | None = None
        self.identity: Identity | None = None
        self.has_identity: bool | None = None
        self.locked = False
        self.reachable = False
        self.summary = ConnectionSummary.unreachable()
        self.operations: dict[int, Operation] = {}
        self.status: StatusLine | None = None
        self.history = InputHistory()
        self.notifications = True
        #: whether the daemon's desktop notifications show message text (opt-in)
        self.previews = False
        #: per contact uid, the path a message takes now (``mailbox.status``'s
        #: ``contacts[].path``): ``direct``, ``mailbox`` or ``none``
        self.paths: dict[str, str] = {}
        #: group invitations received (``groups.invites``'s items, as text)
        self.invites: list[dict[str, str]] = []
        #: per group key, its members as ``groups.members`` last said
        self.members: dict[str, list[dict[str, Any]]] = {}
        self._next_operation = 1
        #: ``group.delivery`` counts of my group messages not shown yet, by (key, id)
        self._early_deliveries: dict[tuple[str, str], tuple[int, int]] = {}
        #: file names by transfer id (from transfer events), for the progress line
        self.transfer_names: dict[str, str] = {}
        #: offers waiting for our answer: transfer id -> (conversation, offered at, the folder
        #: id of a file of a folder sent whole or ""), for ``/accept`` and ``/decline`` without
        #: an id (the newest in the open conversation) and a folder's accept prompt
        self.waiting_offers: dict[str, tuple[str, float, str]] = {}
        #: Each folder sent whole, by folder id: its files' latest views and what its one
        #: line says of them (:meth:`_folder_line`).
        self.folders: dict[str, FolderFiles] = {}
        #: The folder id of each transfer that is a file of a folder sent whole.
        self.folder_of: dict[str, str] = {}

    # observers ---------------------------------------------------------------------------

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Call *observer* with a change word after every change.

        :returns: a function that stops the observation.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def _changed(self, what: str) -> None:
        for observer in list(self._observers):
            observer(what)

    # daemon state ------------------------------------------------------------------------

    def set_reachable(self, reachable: bool) -> None:
        """Record whether the daemon answers; unreachable turns the summary grey."""
        self.reachable = reachable
        if not reachable:
            self.summary = ConnectionSummary.unreachable()
            self.operations.clear()
        self._changed("reachable")

    def load_status(self, status: Mapping[str, Any]) -> None:
        """Take in a ``daemon.status`` result (identity existence and lock state)."""
        self.reachable = True
        self.has_identity = bool(status.get("has_identity", False))
        self._set_locked(bool(status.get("locked", False)))
        self._changed("reachable")

    def load_identity(self, data: Mapping[str, Any]) -> None:
        """Take in ``identity.show`` (or the result of create/unlock)."""
        identity = Identity.from_api(data)
        if self.identity is not None:
            # create/unlock results carry fewer fields than identity.show: keep what we knew.
            identity = replace(
                self.identity,
                **{k: v for k, v in identity.__dict__.items() if v},
            )
        self.identity = identity
        self.has_identity = True
        self._changed("identity")

    def load_summary(self, data: Mapping[str, Any]) -> None:
        """Take in ``peers.status`` or a ``connection.summary`` event."""
        self.summary = ConnectionSummary.from_api(data)
        self._changed("summary")

    def load_paths(self, status: Mapping[str, Any]) -> None:
        """Take in ``mailbox.status``: the path per contact (``contacts: [{uid, path}]``)."""
        fresh: dict[str, str] = {}
        for entry in status.get("contacts") or ():
            if not isinstance(entry, Mapping):
                continue
            uid, path = entry.get("uid"), entry.get("path")
            if isinstance(uid, str) and path in PATHS:
                fresh[uid] = str(path)
        if fresh != self.paths:
            self.paths = fresh
            self._changed("contacts")

    def path_of(self, uid: str) -> str | None:
        """The path a message to *uid* takes now, if the daemon said (see :data:`PATHS`)."""
        return self.paths.get(uid)

    def load_contacts(self, contacts: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> None:
        """Replace the contact list with a ``contacts.list`` result.

        :param contacts: ``{"contacts": [...]}`` as the daemon answers, or the bare list.
        """
        if isinstance(contacts, Mapping):
            contacts = contacts.get("contacts") or ()
        fresh: dict[str, Contact] = {}
        for data in contacts:
            if not isinstance(data, Mapping):
                continue
            try:
                contact = Contact.from_api(data)
            except ValueError:
                continue
            fresh[contact.uid] = contact
        # groups come from groups.list: a contact list leaves them as they are
        fresh.update((k, c) for k, c in self.contacts.items() if c.group)
        self.contacts = fresh
        for uid in list(self.conversations):
            if uid not in fresh and uid != NO_CONVERSATION:
                del self.conversations[uid]
        if self.current_uid not in fresh:
            self.current_uid = None
        self._changed("contacts")

    def load_unread(self, counts: Mapping[str, Any]) -> None:
        """Take in ``messages.unreadCounts``: ``{"unread": {uid: n}}`` or the bare ``{uid: n}``."""
        inner = counts.get("unread")
        if isinstance(inner, Mapping):
            counts = inner
        for uid, contact in list(self.contacts.items()):
            if contact.group:
                continue  # a group's count comes with groups.list
            count = counts.get(uid, 0)
            count = count if isinstance(count, int) and count > 0 else 0
            self.contacts[uid] = replace(contact, unread=count)
        self._changed("contacts")

    def load_groups(self, result: Mapping[str, Any]) -> None:
        """Replace the groups of the conversation list with a ``groups.list`` result."""
        fresh: dict[str, Contact] = {}
        for data in result.get("groups") or ():
            if not isinstance(data, Mapping):
                continue
            try:
                entry = Contact.from_group(data)
            except ValueError:
                continue
            fresh[entry.uid] = entry
        for key in [k for k, c in self.contacts.items() if c.group and k not in fresh]:
            del self.contacts[key]
            self.conversations.pop(key, None)
            if self.current_uid == key:
                self.current_uid = None
                self._changed("current")
        self.contacts.update(fresh)
        self._changed("contacts")

    def upsert_group(self, data: Mapping[str, Any]) -> Contact | None:
        """Add or replace one group's entry (``group.changed``, ``groups.create``/``join``)."""
        try:
            entry = Contact.from_group(data)
        except ValueError:
            return None
        old = self.contacts.get(entry.uid)
        if old is not None and "unread" not in data:
            entry = replace(entry, unread=old.unread)
        if old is not None:
            entry = replace(entry, last_activity=old.last_activity)
        self.contacts[entry.uid] = entry
        self._changed("contacts")
        return entry

    def load_invites(self, result: Mapping[str, Any]) -> None:
        """Take in ``groups.invites``: the invitations not yet joined or declined."""
        self.invites = [
            {k: strip_bidi(str(v)) for k, v in i.items() if v is not None}
            for i in result.get("invites") or ()
            if isinstance(i, Mapping) and i.get("id") is not None
        ]
        self._changed("invites")

    def load_members(self, key: str, result: Mapping[str, Any]) -> None:
        """Take in ``groups.members`` for group *key*: ``[{uid, name, role, contact, me,
        online}]``."""
        self.members[key] = [dict(m) for m in result.get("members") or () if isinstance(m, Mapping)]
        self._changed("members")

    def member_lines(self, key: str) -> list[str]:
        """One line per member of group *key*: name, role, presence and path (as F3 shows)."""
        lines = []
        for m in self.members.get(key, ()):
            uid = str(m.get("uid") or "")
            name = _text(m.get("name")) or uid[:12]
            role = _text(m.get("role"), "member")
            if m.get("me"):
                lines.append(f"{name} ({role}) · me")
                continue
            presence = "online" if m.get("online") else "offline"
            path = self.paths.get(uid)
            if path is None:
                path = (
                    "not a contact"
                    if not m.get("contact")
                    else ("direct" if m.get("online") else "waiting")
                )
            lines.append(f"{name} ({role}) · {presence} · {path} · {uid[:8]}")
        return lines

    def find_groups(self, name: str) -> list[Contact]:
        """Groups whose name is *name* (ignoring case and a leading #), else whose id starts
        with it."""
        wanted = name.lstrip("#").casefold()
        groups = [c for c in self.contacts.values() if c.group]
        exact = [g for g in groups if g.name.casefold() == wanted]
        return exact or [g for g in groups if wanted and g.group_id.startswith(wanted)]

    def load_history(self, uid: str, result: Mapping[str, Any], *, older: bool = False) -> None:
        """Take in a ``messages.history`` page for contact *uid*.

        :param older: the page continues back in time (keep the marker of the first page).
        """
        conversation = self.conversation(uid)
        me = self.identity.uid if self.identity is not None else None
        for data in result.get("messages") or ():
            try:
                message = Message.from_group(data, me) if is_group(uid) else Message.from_api(data)
            except ValueError:
                continue
            early = self._early_deliveries.pop((uid, message.id), None)
            if early is not None and message.group_members is not None:
                message = message.with_group_delivery(*early)
            old = conversation.messages.get(message.id)
            if old is not None and old.group_members is not None:
                message = _furthest(old, message)  # keep a count an event gave meanwhile
            conversation.put(message)
        if not older:
            marker = result.get("marker")
            entry = self.contacts.get(uid)
            if marker is None and entry is not None and entry.group and entry.unread:
                # groups.history has no marker: the first of the unread ones, counted back
                incoming = [m for m in conversation.ordered() if m.direction == "in"]
                if len(incoming) >= entry.unread:
                    marker = incoming[-entry.unread].id
            conversation.marker = str(marker) if isinstance(marker, str | int) else None
            _seat_local_lines(conversation)
        conversation.older = result.get("next")
        conversation.loaded = True
        self._changed("messages")

    def conversation(self, uid: str) -> Conversation:
        """Return (creating if needed) the conversation with contact *uid*."""
        conversation = self.conversations.get(uid)
        if conversation is None:
            conversation = self.conversations[uid] = Conversation(uid)
        return conversation

    # events ------------------------------------------------------------------------------

    def apply_event(self, name: str, payload: Mapping[str, Any]) -> None:
        """Apply one daemon event; unknown events and malformed payloads are ignored."""
        handler = self._EVENTS.get(name)
        if handler is not None:
            handler(self, payload)

    def _message_received(self, payload: Mapping[str, Any]) -> None:
        data = payload.get("message")
        if not isinstance(data, Mapping):
            return
        try:
            message = Message.from_api(data)
        except ValueError:
            return
        self.add_message(message)

    def _group_message(self, payload: Mapping[str, Any]) -> None:
        data = payload.get("message")
        if not isinstance(data, Mapping):
            return
        me = self.identity.uid if self.identity is not None else None
        try:
            message = Message.from_group(data, me)
        except ValueError:
            return
        if message.contact in self.contacts:
            self.add_message(message)

    def _group_delivery(self, payload: Mapping[str, Any]) -> None:
        ident, group = payload.get("id"), payload.get("group")
        delivered, members = _tally(payload.get("delivered")), _tally(payload.get("members"))
        if not isinstance(ident, str | int) or not isinstance(group, str) or not group:
            return
        key = group_key(group)
        if delivered is None or members is None or key not in self.contacts:
            return
        conversation = self.conversations.get(key)
        message = conversation.messages.get(str(ident)) if conversation is not None else None
        if message is None or conversation is None:
            # the event raced the send's answer (or the group is not open): keep it for then
            early = self._early_deliveries
            early[(key, str(ident))] = (delivered, members)
            while len(early) > EARLY_DELIVERIES:
                del early[next(iter(early))]
            return
        if message.direction != "out":
            return
        updated = message.with_group_delivery(delivered, members)
        if updated != message:
            conversation.put(updated)
            self._changed("messages")

    def _group_changed(self, payload: Mapping[str, Any]) -> None:
        data = payload.get("group")
        if isinstance(data, Mapping):
            self.upsert_group(data)

    def _group_removed(self, payload: Mapping[str, Any]) -> None:
        ident = payload.get("group")
        entry = self.contacts.get(group_key(ident)) if isinstance(ident, str) else None
        if entry is not None:
            self.contacts[entry.uid] = replace(entry, left=True)
            self._changed("contacts")

    def _group_invited(self, payload: Mapping[str, Any]) -> None:
        data = payload.get("invite")
        if not isinstance(data, Mapping) or data.get("id") is None:
            return
        invite = {k: strip_bidi(str(v)) for k, v in data.items() if v is not None}
        self.invites = [i for i in self.invites if i.get("id") != invite["id"]] + [invite]
        self._changed("invites")
        who = invite.get("from_name") or invite.get("from", "")[:12]
        self.notify(f"{who} invites you to #{invite.get('name', '?')}: /invites to answer")

    def _group_dropped(self, payload: Mapping[str, Any]) -> None:
        ident = payload.get("group")
        conversation = self.conversations.get(group_key(ident)) if isinstance(ident, str) else None
        ids = payload.get("ids")
        if conversation is None or not isinstance(ids, list):
            return
        kept = [m for m in conversation.messages.values() if m.id not in {str(i) for i in ids}]
        conversation.clear()
        for message in kept:
            conversation.put(message)
        self._changed("messages")

    def add_message(self, message: Message) -> None:
        """Add a received or sent message; an incoming one elsewhere than the open one is unread.

        The same message reported twice (a send's answer and its ``message.added`` event, in
        either order) is shown once, and keeps the furthest state either report gave it.
        """
        conversation = self.conversation(message.contact)
        early = self._early_deliveries.pop((message.contact, message.id), None)
        if early is not None and message.direction == "out":
            message = message.with_group_delivery(*early)
        old = conversation.messages.get(message.id)
        is_new = old is None
        if old is not None:
            message = _furthest(old, message)
            if message is old:
                return
        conversation.put(message)
        contact = self.contacts.get(message.contact)
        if contact is not None:
            unread = contact.unread
            if is_new and message.direction == "in" and message.contact != self.current_uid:
                unread += 1
            activity = max(contact.last_activity or 0.0, message.created)
            self.contacts[message.contact] = replace(contact, unread=unread, last_activity=activity)
        self._changed("messages")

    def _state_changed(self, payload: Mapping[str, Any]) -> None:
        ident = payload.get("id")
        uid = payload.get("contact")
        state = payload.get("state")
        if not isinstance(uid, str) or state not in MESSAGE_STATES:
            return
        conversation = self.conversations.get(uid)
        if conversation is None:
            return
        message = conversation.messages.get(str(ident))
        if message is None:
            return
        if not may_advance(message.direction, message.state, state):
            return  # a late report of an earlier state
        at = _number(payload.get("at"))
        changes: dict[str, Any] = {"state": state}
        if state in ("sent", "delivered", "read") and at is not None:
            changes[state] = at
        if payload.get("via") == "mailbox" or payload.get("path") == "mailbox":
            changes["path"] = "mailbox"
        conversation.put(replace(message, **changes))
        self._changed("messages")

    def _peer_status(self, payload: Mapping[str, Any]) -> None:
        peer = payload.get("peer")
        if not isinstance(peer, Mapping):
            return
        uid = peer.get("uid") or peer.get("contact")
        status = peer.get("status") or peer.get("state")
        contact = self.contacts.get(uid) if isinstance(uid, str) else None
        if contact is None or status not in PEER_STATUSES:
            return
        self.contacts[contact.uid] = replace(contact, status=str(status))
        if peer.get("path") == "direct":
            self.paths[contact.uid] = "direct"  # at once; mailbox.status is asked for the rest
        self._changed("contacts")

    def _summary(self, payload: Mapping[str, Any]) -> None:
        self.load_summary(payload)

    def _contact_changed(self, payload: Mapping[str, Any]) -> None:
        data = payload.get("contact")
        if isinstance(data, Mapping):
            try:
                self.upsert_contact(data)
            except ValueError:
                return
            return
        uid = payload.get("uid")
        if isinstance(uid, str) and payload.get("removed"):
            self.remove_contact(uid)

    def upsert_contact(self, data: Mapping[str, Any]) -> Contact:
        """Add or replace a contact from an API dictionary, keeping what only the UI counted.

        :raises ValueError: if the dictionary has no uid.
        """
        contact = Contact.from_api(data)
        old = self.contacts.get(contact.uid)
        if old is not None and "unread" not in data:
            contact = replace(contact, unread=old.unread)
        if old is not None and contact.last_activity is None:
            contact = replace(contact, last_activity=old.last_activity)
        self.contacts[contact.uid] = contact
        self._changed("contacts")
        return contact

    def remove_contact(self, uid: str) -> None:
        """Forget contact *uid* and its conversation."""
        self.contacts.pop(uid, None)
        self.conversations.pop(uid, None)
        if self.current_uid == uid:
            self.current_uid = None
            self._changed("current")
        self._changed("contacts")

    def _locked(self, payload: Mapping[str, Any]) -> None:
        self._set_locked(True)

    def _unlocked(self, payload: Mapping[str, Any]) -> None:
        self._set_locked(False)
        if payload.get("name"):
            self.load_identity(payload)

    def _set_locked(self, locked: bool) -> None:
        if locked:
            # Hide every conversation: nothing readable stays loaded while locked.
            for conversation in self.conversations.values():
                conversation.clear()
                conversation.loaded = False
                conversation.marker = None
            self.contacts = {}
            self.waiting_offers = {}
            self.folders = {}  # names of files: shown again from the list at unlock
            self.folder_of = {}
        changed = locked != self.locked
        self.locked = locked
        if changed:
            self._changed("lock")

    def set_locked(self, locked: bool) -> None:
        """Record the lock state (locking drops every loaded conversation and contact)."""
        self._set_locked(locked)

    # file transfers ----------------------------------------------------------------------

    def _transfer_offered(self, payload: Mapping[str, Any]) -> None:
        t = payload.get("transfer")
        if not isinstance(t, Mapping) or not isinstance(t.get("contact"), str):
            return
        known = str(t.get("id", "")) in self.waiting_offers
        self._offer_line(t)
        if not known and self.status is None and str(t.get("id", "")) in self.waiting_offers:
            # An offer arriving while nothing else is said: the status line says it waits,
            # whichever conversation it is in (its row shows it too).
            self.show_offers_notice()

    def _offer_line(self, t: Mapping[str, Any]) -> None:
        """The line that shows an offer waiting for our answer, once per transfer (an offer
        seen again, by its event and by :meth:`load_transfers`, keeps its line)."""
        if t.get("state", "offered") == "offered" and t.get("direction", "in") == "in":
            self.waiting_offers[str(t.get("id", ""))] = (
                transfer_conversation(t),
                _created(t),
                str(t.get("folder_id") or ""),
            )
            self._offers_changed()
        if self._folder_line(t) is not None:
            return
        self.add_local(
            transfer_conversation(t),
            _offer_text(self, t),
            float(t.get("created") or 0.0),
            line_id=OFFER_LINE_PREFIX + str(t.get("id", "")),
        )

    def show_offers_notice(self) -> None:
        """Say on the status line how many offers wait for our answer (nothing if none); the
        notice then follows offers arriving and answered until something else is said."""
        waiting = len(self.waiting_offers)
        if not waiting:
            return
        self.status = StatusLine(
            "a file offered to you waits for an answer: /accept ID or /decline ID"
            if waiting == 1
            else f"{waiting} files offered to you wait for an answer: /accept ID|all or "
            "/decline ID|all",
            about="offers",
        )
        self._changed("status")

    def _offers_changed(self) -> None:
        """The offers waiting changed: the conversation rows (their offer badges) and a
        notice counting them follow."""
        self._offers_notice_changed()
        self._changed("contacts")

    def _offers_notice_changed(self) -> None:
        """The offers waiting changed: a notice counting them is brought up to date (or
        cleared when none is left)."""
        if self.status is None or self.status.about != "offers":
            return
        if self.waiting_offers:
            self.show_offers_notice()
        else:
            self.clear_status()

    def newest_offer(self, uid: str | None) -> str | None:
        """The id of the newest offer waiting for our answer in conversation *uid*."""
        here = self.offers_waiting_in(uid)
        return here[-1] if here else None

    def offers_waiting_in(self, uid: str | None, folder_id: str | None = None) -> list[str]:
        """The ids of the offers waiting for our answer in conversation *uid*, oldest first;
        with *folder_id*, only the files of that folder sent whole."""
        here = [
            (at, tid)
            for tid, (where, at, folder) in self.waiting_offers.items()
            if where == uid and (folder_id is None or folder == folder_id)
        ]
        return [tid for _at, tid in sorted(here)]

    def offers_by_conversation(self) -> Counter[str]:
        """How many offers wait for our answer in each conversation (by its uid)."""
        return Counter(where for where, _at, _folder in self.waiting_offers.values())

    def load_transfers(self, result: Mapping[str, Any]) -> int:
        """Show the transfers the daemon lists when this UI attaches (``files.list``): a UI
        started after an offer came, while a file streams, or after transfers ended, shows
        them as one that was running then would (the offer line with ``/accept``, the
        transfer's line with its bar or what it waits for, the line that says how it ended:
        complete and where it was saved, declined, cancelled, failed and why), each in its
        conversation at the time it was offered.  The daemon lists finished transfers for 30
        days (the newest 500).

        :returns: how many offers wait for our answer.
        """
        waiting = 0
        views = [
            t
            for t in result.get("transfers") or ()
            if isinstance(t, Mapping) and isinstance(t.get("contact"), str)
        ]
        # oldest first: each line sorts after those shown before it
        views.sort(key=_created)
        self.waiting_offers = {}  # the daemon's list is the truth (answered meanwhile elsewhere)
        for t in views:
            state = t.get("state")
            tid = str(t.get("id", ""))
            self.transfer_names[tid] = _transfer_name(t)
            if state == "offered" and t.get("direction") == "in":
                self._offer_line(t)  # counts it waiting (a folder's file: its folder's line)
                waiting += 1
                continue
            if self._folder_line(t) is not None:
                continue
            if state in FINAL_TRANSFER_STATES:
                self._ended_line(t, hint=False)
                continue
            reason = terminal_safe(str(t.get("reason") or ""), keep_newlines=False)
            size, done = t.get("size"), t.get("bytes")
            if state in ("accepted", "streaming") and not reason:
                if not isinstance(size, int) or not isinstance(done, int):
                    continue
                text = f"file {self.transfer_names[tid]} {progress_bar(done, size, None, None)}"
            else:
                who = terminal_safe(str(t.get("contact_name") or ""), keep_newlines=False)
                what = f"requested from {who}" if state == "requested" else str(state)
                text = f"file {self.transfer_names[tid]}: {what}"
                if reason:
                    text += f" ({reason})"
            self._put_transfer_line(
                transfer_conversation(t), tid, text, float(t.get("created") or 0.0)
            )
        self._offers_changed()  # e.g. all answered meanwhile from another client
        return waiting

    def _transfer_changed(self, payload: Mapping[str, Any]) -> None:
        t = payload.get("transfer")
        if not isinstance(t, Mapping) or not isinstance(t.get("contact"), str):
            return
        state = t.get("state")
        self.transfer_names[str(t.get("id"))] = _transfer_name(t)
        if state != "offered" and self.waiting_offers.pop(str(t.get("id")), None) is not None:
            self._offers_changed()
        self._offer_line_follows(t)
        line = self._folder_line(t)
        if line is not None:
            showing_bar = self.status is not None and self.status.text.startswith("file ")
            if state in FINAL_TRANSFER_STATES and showing_bar:
                # The bar gives way to how the file ended, or to the folder's line once the
                # last of its files ended (how many arrived, where the folder is).
                ended = self.folders[str(t.get("folder_id"))].ended
                self.notify(line if ended else _end_text(t))
            return
        if state == "accepted" and t.get("reason"):
            # Its stream ended and it waits for the next one (e.g. a full disk): say why on
            # its progress line; the next progress event puts the bar back.
            reason = terminal_safe(str(t["reason"]), keep_newlines=False)
            self._transfer_line_says(str(t.get("id")), f"waiting ({reason})")
            if self.status is not None and self.status.text.startswith("file "):
                self.clear_status()  # its bar stopped
        if state not in FINAL_TRANSFER_STATES:
            return
        self._ended_line(t, hint=True)
        showing_bar = self.status is not None and self.status.text.startswith("file ")
        if showing_bar or (self.status is None and state in ("complete", "failed")):
            # The bar gives way to how it ended; a free status line says a file arrived, was
            # sent or failed, whichever conversation is open (a cancel is usually our own).
            self.notify(_end_text(t))

    def _ended_line(self, t: Mapping[str, Any], *, hint: bool) -> None:
        """The line that says how transfer *t* ended, once per transfer (its event and
        :meth:`load_transfers` after a reconnect show the same line).  With *hint* (it ends
        now), a received file's line also names its folder and the command that opens it;
        a line shown from the list at attach names the saved file only."""
        text = _end_text(t)
        received = t.get("state") == "complete" and t.get("direction") == "in" and t.get("path")
        if hint and received:
            folder = terminal_safe(str(t.get("directory") or ""), keep_newlines=False)
            text += f" (folder: {folder})" + open_folder_hint(str(t.get("directory") or ""))
        uid, tid = transfer_conversation(t), str(t.get("id", ""))
        if TRANSFER_LINE_PREFIX + tid in self.conversation(uid).messages:
            # it streamed here: its progress line, where the user watched it, says how it
            # ended (one line per transfer, not the bar's "complete" and an end line too)
            self._put_transfer_line(uid, tid, text)
            return
        self.add_local(
            transfer_conversation(t),
            text,
            float(t.get("created") or 0.0),
            line_id=ENDED_LINE_PREFIX + str(t.get("id", "")),
        )

    def _transfer_progress(self, payload: Mapping[str, Any]) -> None:
        size = payload.get("size")
        done = payload.get("bytes")
        if not isinstance(size, int) or not isinstance(done, int):
            return
        name = self.transfer_names.get(str(payload.get("id")), "")
        bar = progress_bar(done, size, payload.get("rate"), payload.get("eta"))
        self.notify(f"file {name} {bar}")
        folder = self.folder_of.get(str(payload.get("id")))
        if folder is not None:
            view = self.folders[folder].views[str(payload.get("id"))]
            self._folder_line({**view, "bytes": done, "state": "streaming"})
        elif isinstance(payload.get("contact"), str):
            key = transfer_conversation(payload)
            self._put_transfer_line(key, str(payload.get("id")), f"file {name} {bar}")

    def _folder_line(self, t: Mapping[str, Any]) -> str | None:
        """For a file of a folder sent whole, show its folder's one line instead of the
        file's own (its offer, bar and end: a folder of 500 files would otherwise be 1,500
        lines): what the folder holds, how many of its files are where, a bar of its bytes
        while they move, ``/accept all`` while some are offered to us, and once every file
        ended where it was saved.  Returns the line's text if *t* is such a file, else
        ``None``."""
        folder_id = t.get("folder_id")
        if not isinstance(folder_id, str) or not folder_id:
            return None
        tid = str(t.get("id", ""))
        folder = self.folders.setdefault(folder_id, FolderFiles())
        self.folder_of[tid] = folder_id
        folder.put(tid, dict(t))
        first = folder.first
        top = terminal_safe(str(first.get("folder") or "").split("/")[0], keep_newlines=False)
        incoming = first.get("direction") == "in"
        who = _sender_name(self, first)
        states = folder.states
        count = len(folder.views)
        files_said = "1 file" if count == 1 else f"{count} files"
        order = ("offered", "accepted", "streaming", "complete", "declined", "cancelled", "failed")
        counts = ", ".join(f"{states[s]} {s}" for s in order if states[s])
        text = f"folder {top} {'from' if incoming else 'to'} {who}: {files_said} "
        text += f"({human_bytes(folder.size)}), {counts}"
        ended = folder.ended
        if not ended and (states["accepted"] or states["streaming"]):
            text += " " + progress_bar(folder.done, folder.size)
        if incoming and states["offered"]:
            text += ": /accept all [DIR] or /decline all"
        root = folder.root if incoming else ""
        if ended and root:
            safe_root = terminal_safe(root, keep_newlines=False)
            text += f"; saved in {safe_root}" + open_folder_hint(root)
        if folder.failed:
            why = terminal_safe(next(iter(folder.failed.values())), keep_newlines=False)
            text += f" (failed: {why})"
        uid = transfer_conversation(first)
        self._put_line(uid, FOLDER_LINE_PREFIX + folder_id, text, _created(first))
        return text

    def _put_transfer_line(self, uid: str, tid: str, text: str, created: float = 0.0) -> None:
        """Show *text* on the transfer's own line in *uid*'s conversation (:meth:`_put_line`:
        one progress bar per transfer, not one line per event)."""
        self._put_line(uid, TRANSFER_LINE_PREFIX + tid, text, created)

    def _put_line(self, uid: str, line_id: str, text: str, created: float = 0.0) -> None:
        """Show *text* on local line *line_id* in *uid*'s conversation: added at the end the
        first time, then replaced in place.  *created*: the transfer's time, for a line
        added before the conversation's history is loaded (:meth:`_seat_local_lines` places
        it then)."""
        conversation = self.conversation(uid)
        old = conversation.messages.get(line_id)
        if old is None:
            order = conversation.ordered()
            last = order[-1] if order else None
            line = Message(
                id=line_id,
                contact=uid,
                direction=LOCAL,
                body=strip_bidi(text),
                state="received",
                created=_after(last, created),
                seq=last.seq if last is not None else 0,
            )
        else:
            line = replace(old, body=strip_bidi(text))
        conversation.put(line)
        self._changed("messages")

    def _offer_line_follows(self, t: Mapping[str, Any]) -> None:
        """An offer's line follows its transfer: an offer to us that waits says ``/accept``
        and ``/decline`` (and why, if it says: the daemon could not take it by itself); once
        answered (here, from another client, by the daemon itself) that it was accepted,
        while the file comes; an offer of ours keeps its ``/cancel``; once the transfer
        ended, either line goes (the end line, or the progress line, says how)."""
        uid, line_id = transfer_conversation(t), OFFER_LINE_PREFIX + str(t.get("id", ""))
        conversation = self.conversations.get(uid)
        if conversation is None or line_id not in conversation.messages:
            return
        state = t.get("state")
        if state in FINAL_TRANSFER_STATES:
            conversation.discard(line_id)
            self._changed("messages")
        elif t.get("direction") != "out":
            waiting = state == "offered"
            said = f"{_sender_name(self, t)} offered {_file_label(t)}: {state}"
            self._put_line(uid, line_id, _offer_text(self, t) if waiting else said)

    def _transfer_line_says(self, tid: str, what: str) -> None:
        """Put "file NAME: *what*" on the transfer's progress line, if it has one."""
        line_id = TRANSFER_LINE_PREFIX + tid
        for uid, conversation in self.conversations.items():
            if line_id in conversation.messages:
                name = self.transfer_names.get(tid, "")
                self._put_transfer_line(uid, tid, f"file {name}: {what}")

    _EVENTS: dict[str, Callable[[MessengerModel, Mapping[str, Any]], None]] = {
        "transfer.offered": _transfer_offered,
        "transfer.changed": _transfer_changed,
        "transfer.progress": _transfer_progress,
        # a message sent by any client of the daemon (this UI, another UI, the CLI, a bot)
        "message.added": _message_received,
        "message.received": _message_received,
        "message.stateChanged": _state_changed,
        "peer.statusChanged": _peer_status,
        "connection.summary": _summary,
        "contact.changed": _contact_changed,
        "identity.locked": _locked,
        "identity.unlocked": _unlocked,
        "group.message": _group_message,
        "group.changed": _group_changed,
        "group.removed": _group_removed,
        "group.invited": _group_invited,
        "group.dropped": _group_dropped,
        "group.delivery": _group_delivery,
    }

    # conversations -----------------------------------------------------------------------

    def ordered_contacts(self) -> list[Contact]:
        """Contacts for the conversation list: most recent activity first, then by name."""

        def activity(contact: Contact) -> float:
            loaded = self.conversations.get(contact.uid)
            seen = loaded.last_activity() if loaded is not None else None
            return max(contact.last_activity or 0.0, seen or 0.0)

        return sorted(
            self.contacts.values(),
            key=lambda c: (-activity(c), c.display_name.lower(), c.uid),
        )

    @property
    def current(self) -> Contact | None:
        """The contact whose conversation is open."""
        return self.contacts.get(self.current_uid) if self.current_uid else None

    def open(self, uid: str | None) -> None:
        """Make *uid*'s conversation the open one (``None``: no conversation open)."""
        if uid is not None and uid not in self.contacts:
            return
        if uid != self.current_uid:
            self.history.reset()
            self.current_uid = uid
            self._changed("current")

    def mark_read(self, uid: str) -> None:
        """Record that contact *uid*'s messages were read here (unread count to zero)."""
        contact = self.contacts.get(uid)
        if contact is not None and contact.unread:
            self.contacts[uid] = replace(contact, unread=0)
            self._changed("contacts")

    def next_unread(self) -> Contact | None:
        """The first contact in list order with unread messages, other than the open one."""
        for contact in self.ordered_contacts():
            if contact.unread and contact.uid != self.current_uid:
                return contact
        return None

    def neighbour(self, step: int) -> Contact | None:
        """The contact *step* places from the open one in list order (wrapping around)."""
        ordered = self.ordered_contacts()
        if not ordered:
            return None
        uids = [c.uid for c in ordered]
        if self.current_uid not in uids:
            return ordered[0 if step > 0 else -1]
        index = (uids.index(self.current_uid) + step) % len(uids)
        return ordered[index]

    def find_contacts(self, name: str) -> list[Contact]:
        """Contacts whose name or alias is *name* (ignoring case), else whose uid starts with it."""
        wanted = name.casefold()
        people = [c for c in self.contacts.values() if not c.group]
        exact = [c for c in people if wanted in (c.display_name.casefold(), c.name.casefold())]
        if exact:
            return exact
        return [c for c in people if c.uid.startswith(name.lower())]

    def no_single_contact(self, name: str, matches: list[Contact], limit: int = 5) -> str:
        """One line saying why *name* names no single contact, with the candidates.

        :param matches: what :meth:`find_contacts` found for *name* (none, or several).
        """
        if matches:
            shown = ", ".join(f"{c.display_name} ({c.uid[:8]})" for c in matches[:limit])
            more = f" and {len(matches) - limit} more" if len(matches) > limit else ""
            return f"{len(matches)} contacts match {name}: {shown}{more}; use more of the uid"
        wanted = name.casefold()
        similar = sorted(
            {
                c.display_name
                for c in self.contacts.values()
                if wanted
                and (wanted in c.display_name.casefold() or c.display_name.casefold() in wanted)
            },
            key=str.casefold,
        )
        if similar:
            more = f" and {len(similar) - limit} more" if len(similar) > limit else ""
            return f"no contact called {name}; did you mean {', '.join(similar[:limit])}{more}?"
        if not self.contacts:
            return f"no contact called {name}: no contacts yet (Ctrl+N adds one)"
        return f"no contact called {name} (the list on the left has every contact)"

    def total_unread(self) -> int:
        """Unread messages over every contact."""
        return sum(c.unread for c in self.contacts.values())

    # drafts ------------------------------------------------------------------------------

    def draft(self, uid: str | None) -> str:
        """The unsent text kept for *uid*'s conversation (``None``: no conversation open)."""
        if uid is None:
            return self._no_conversation_draft
        conversation = self.conversations.get(uid)
        return conversation.draft if conversation is not None else ""

    def set_draft(self, uid: str | None, text: str) -> None:
        """Keep *text* as the draft of *uid*'s conversation."""
        if uid is None:
            self._no_conversation_draft = text
            return
        self.conversation(uid).draft = text

    _no_conversation_draft = ""

    # local lines -------------------------------------------------------------------------

    def add_local(
        self, uid: str | None, text: str, now: float, *, line_id: str | None = None
    ) -> None:
        """Show *text* as a local line at the end of *uid*'s conversation (``None``: the view
        with no conversation open): it is never sent and goes when the UI locks or closes.

        The line sorts after the newest message loaded now and before any later one.  With
        *line_id*, a line of that id already shown stays where it is and nothing is added.
        """
        conversation = self.conversation(uid or NO_CONVERSATION)
        if line_id is not None and line_id in conversation.messages:
            return
        order = conversation.ordered()
        last = order[-1] if order else None
        self._local_lines += 1
        line = Message(
            id=line_id or f"~local{self._local_lines:010d}",
            contact=uid or NO_CONVERSATION,
            direction=LOCAL,
            body=strip_bidi(text),
            state="received",
            created=_after(last, now),
            seq=last.seq if last is not None else 0,
        )
        conversation.put(line)
        self._changed("messages")

    _local_lines = 0

    # operations in flight ------------------------------------------------------------------

    def begin_operation(self, label: str) -> Operation:
        """Record a daemon call in flight labelled *label*."""
        operation = Operation(self._next_operation, label)
        self._next_operation += 1
        self.operations[operation.id] = operation
        self._changed("operations")
        return operation

    def end_operation(self, operation: Operation) -> None:
        """Record that *operation* finished (succeeded, failed or was cancelled)."""
        if self.operations.pop(operation.id, None) is not None:
            self._changed("operations")

    # status line -------------------------------------------------------------------------

    def notify(self, text: str, level: str = "info") -> None:
        """Show *text* on the status line (``level`` ``"error"`` shows it as an error)."""
        self.status = StatusLine(text, level)
        self._changed("status")

    def clear_status(self) -> None:
        """Clear the status line."""
        if self.status is not None:
            self.status = None
            self._changed("status")


# Password strength ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PasswordHint:
    """A rough strength estimate for the identity-creation form (a hint, not a policy).

    :param level: ``"empty"``, ``"weak"``, ``"fair"`` or ``"strong"``.
    :param text: one line for the form.
    """

    level: str
    text: str


def password_hint(password: str) -> PasswordHint:
    """Estimate how hard *password* is to guess from its length and character variety.

    :returns: the hint; a long passphrase of plain words counts as strong.
    """
    if not password:
        return PasswordHint("empty", "Choose a master password (a few words make a good one).")
    classes = sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )
    length = len(password)
    if length >= 16 or (length >= 12 and classes >= 3):
        return PasswordHint("strong", "Strong password.")
    if length >= 10 and classes >= 2:
        return PasswordHint("fair", "Fair: a longer password or a few more words would be safer.")
    return PasswordHint("weak", "Weak: use at least 12 characters, or several words.")


#: Id prefix of a transfer's progress line in its conversation (a local line, never sent).
TRANSFER_LINE_PREFIX = "~transfer-"
#: Id prefix of the line showing an offer that waits for our answer (a local line).
OFFER_LINE_PREFIX = "~offer-"
#: Id prefix of the line saying how a transfer ended (a local line).
ENDED_LINE_PREFIX = "~ended-"
#: The id of the one line that shows a folder sent whole (then its folder id).
FOLDER_LINE_PREFIX = "~folder-"
#: The states a transfer ends in.
FINAL_TRANSFER_STATES = frozenset({"complete", "cancelled", "failed"})


def _seat_local_lines(conversation: Conversation) -> None:
    """Local lines put into *conversation* before its history was loaded (sequence 0: an
    offer or a transfer shown at start, an event meanwhile) go after the messages no newer
    than they are, not above the whole history."""
    loose = [m for m in conversation.messages.values() if m.direction == LOCAL and m.seq == 0]
    if not loose:
        return
    history = sorted(
        (m.created, m.seq) for m in conversation.messages.values() if m.direction != LOCAL
    )
    times = [created for created, _seq in history]
    highest = list(itertools.accumulate((seq for _created, seq in history), max))
    for line in loose:
        older = bisect.bisect_right(times, line.created)  # the messages no newer than it
        if older and highest[older - 1]:
            conversation.put(replace(line, seq=highest[older - 1]))


def _after(last: Message | None, now: float) -> float:
    """The time of a local line put after *last* (the conversation's newest line): *now*, or
    a microsecond after *last* when that is later, so the line sorts after it whatever their
    ids."""
    return now if last is None else max(now, last.created + 1e-6)


def _created(t: Mapping[str, Any]) -> float:
    created = t.get("created")
    return float(created) if isinstance(created, int | float) else 0.0


def _transfer_name(t: Mapping[str, Any]) -> str:
    """How a transfer's lines name it: the file's name and, for a file we send into a group
    (one transfer per member), " to MEMBER"."""
    return file_name(t) + _recipient(t)


def file_name(t: Mapping[str, Any]) -> str:
    """A transfer's file as its lines name it (terminal-safe): its name, after the folder it
    is in for a file of a folder sent whole (``photos/2024/b.jpg``)."""
    name = str(t.get("name", ""))
    if t.get("folder"):
        name = f"{t['folder']}/{name}"
    return terminal_safe(name, keep_newlines=False)


def _recipient(t: Mapping[str, Any]) -> str:
    """ " to MEMBER" for a file we send into a group (one transfer per member: their lines in
    the group say whose each is), else ``""``."""
    if t.get("group") and t.get("direction") == "out":
        return " to " + terminal_safe(str(t.get("contact_name") or ""), keep_newlines=False)
    return ""


def open_folder_hint(directory: str) -> str:
    """``; open the folder: xdg-open '/srv/in'`` (``open`` on macOS), or ``""`` without one."""
    if not directory:
        return ""
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    folder = shlex.quote(terminal_safe(directory, keep_newlines=False))
    return f"; open the folder: {opener} {folder}"


def progress_bar(done: int, size: int, rate: Any = None, eta: Any = None, width: int = 20) -> str:
    """``[#####.....]  45% 12 MiB of 26 MiB, 3 MiB/s, 5 s left`` for a transfer's progress."""
    fraction = min(1.0, done / size) if size else 1.0
    filled = int(fraction * width)
    text = f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}% "
    text += f"{human_bytes(done)} of {human_bytes(size)}"
    if isinstance(rate, int | float) and rate > 0:
        text += f", {human_bytes(rate)}/s"
    if isinstance(eta, int | float):
        text += f", {human_time_left(eta)} left"
    return text


def folder_offered(result: Mapping[str, Any]) -> str:
    """What the conversation says of a folder offered (``files.sendFolder``'s answer):
    "offered the folder NAME: N files (SIZE); /cancel all stops the transfers here", how
    many files could not be read, with the first reason, and how many entries were left out
    (links, devices, pipes, sockets), with the first."""
    views = result.get("transfers") or []
    size = sum(int(v.get("size") or 0) for v in views)
    files = "1 file" if len(views) == 1 else f"{len(views)} files"
    folder = terminal_safe(str(result.get("folder", "")), keep_newlines=False)
    text = f"offered the folder {folder}: {files} ({human_bytes(size)})"
    text += "; /cancel all stops the transfers here"
    failed = result.get("failed") or []
    if failed:
        first = failed[0]
        why = terminal_safe(f"{first.get('path')}: {first.get('error')}", keep_newlines=False)
        text += f"; {len(failed)} not offered ({why})"
    left = int(result.get("left_out") or 0)
    if left:
        first = terminal_safe(str(result.get("left_out_first") or ""), keep_newlines=False)
        more = " and more" if left > 1 else ""
        text += f"; {left} left out, not regular files (links, devices, pipes): {first}{more}"
    return text


def _folder_root(v: Mapping[str, Any]) -> str:
    """Where a folder sent whole was saved, from one of its files' view: the folder its files
    landed in below the folder accepted into, from a complete file's path (its folders' count
    up from the file); ``""`` for a file not complete."""
    path, folder = v.get("path"), v.get("folder")
    if v.get("state") == "complete" and isinstance(path, str) and isinstance(folder, str):
        root = os.path.dirname(path)
        for _ in range(len([p for p in folder.split("/") if p]) - 1):
            root = os.path.dirname(root)
        return root
    return ""


class FolderFiles:
    """The files of one folder sent whole as the UI knows them: each file's latest view, and
    what the folder's one line says of them (its size, the bytes moved, how many files are in
    each state, where it was saved, the first failure) kept as each view changes, so that one
    file's event costs the same in a folder of 3 files or of 500."""

    def __init__(self) -> None:
        #: The latest view of each file, by transfer id, in the order first seen.
        self.views: dict[str, dict[str, Any]] = {}
        self.size = 0
        #: Bytes moved: a complete file's size, else the bytes its view says.
        self.done = 0
        self.states: Counter[str] = Counter()
        #: The view of the file offered first (names the folder, its sender and conversation).
        self.first: dict[str, Any] = {}
        #: Where the folder was saved (from the first file seen complete), or ``""``.
        self.root = ""
        #: The reason of each failed file with one, in the order they failed (the line
        #: says the first).
        self.failed: dict[str, str] = {}

    @property
    def ended(self) -> bool:
        """Whether every file ended (complete, declined, cancelled or failed)."""
        return all(self.states[s] == 0 for s in self.states if s not in FINAL_TRANSFER_STATES)

    def put(self, tid: str, view: dict[str, Any]) -> None:
        """Take *view* as file *tid*'s latest."""
        old = self.views.get(tid)
        if old is not None:
            self._count(old, -1)
        self.views[tid] = view
        self._count(view, 1)
        if not self.first or self.first is old or _created(view) < _created(self.first):
            self.first = view  # the earliest offered; of two at once, the one seen first
        if not self.root:
            self.root = _folder_root(view)
        if view.get("state") == "failed" and view.get("reason"):
            self.failed.setdefault(tid, str(view["reason"]))
        else:
            self.failed.pop(tid, None)

    def _count(self, view: Mapping[str, Any], sign: int) -> None:
        size = int(view.get("size") or 0)
        self.size += sign * size
        state = str(view.get("state"))
        self.done += sign * (size if state == "complete" else int(view.get("bytes") or 0))
        self.states[state] += sign


def _offer_text(model: MessengerModel, t: Mapping[str, Any]) -> str:
    """The line of an offer waiting for our answer: "alice offers NAME (SIZE): /accept ID
    [DIR] or /decline ID", and why it waits if it says (not accepted by itself: ...)."""
    ident = str(t.get("id", ""))[:8]
    text = f"{_sender_name(model, t)} offers {_file_label(t)}: /accept {ident} [DIR] or "
    text += f"/decline {ident}"
    if t.get("reason"):
        text += f" ({terminal_safe(str(t['reason']), keep_newlines=False)})"
    return text


def _file_label(t: Mapping[str, Any]) -> str:
    return f"{file_name(t)} ({human_bytes(int(t.get('size') or 0))})"


def _end_text(t: Mapping[str, Any]) -> str:
    """How transfer *t* ended: "file NAME (SIZE)[ to WHO]: STATE (REASON)", and for a file
    received complete ", saved as PATH" (terminal-safe)."""
    state = str(t.get("state"))
    text = f"file {_file_label(t)}{_recipient(t)}: {state}"
    if t.get("reason"):
        text += f" ({terminal_safe(str(t['reason']), keep_newlines=False)})"
    if state == "complete" and t.get("direction") == "in" and t.get("path"):
        text += f", saved as {terminal_safe(str(t['path']), keep_newlines=False)}"
    return text


def transfer_summary(model: MessengerModel, t: Mapping[str, Any]) -> str:
    """One line of ``/files``: id prefix, direction and who, state, percent, name and size,
    and the reason it waits, if any (terminal-safe)."""
    size, done = int(t.get("size") or 0), int(t.get("bytes") or 0)
    percent = 100 * done // size if size else 100
    whom = f"{'to' if t.get('direction') == 'out' else 'from'} {_sender_name(model, t)}"
    group = t.get("group")
    entry = model.contacts.get(group_key(group)) if isinstance(group, str) and group else None
    if entry is not None:
        whom += f" in {entry.display_name}"
    line = f"{str(t.get('id', ''))[:8]} {t.get('state')} {percent}% {_file_label(t)} {whom}"
    if t.get("reason"):
        line += f" ({terminal_safe(str(t['reason']), keep_newlines=False)})"
    return line


def transfer_conversation(t: Mapping[str, Any]) -> str:
    """The conversation a transfer shows in: its group's for a file sent into a group, else
    its contact's."""
    group = t.get("group")
    return group_key(group) if isinstance(group, str) and group else str(t.get("contact"))


def _sender_name(model: MessengerModel, t: Mapping[str, Any]) -> str:
    contact = model.contacts.get(str(t.get("contact")))
    if contact is not None:
        return contact.display_name
    return terminal_safe(str(t.get("contact_name") or "a contact"), keep_newlines=False)
