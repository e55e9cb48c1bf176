"""The building blocks of the terminal UI: input line, conversation list, scrollback, status bar.

Widgets render from :class:`jarvis.ui.model.MessengerModel` and report what the user asked for
through callbacks; they never call the daemon and never decide policy (that is
:mod:`jarvis.ui.controller`).  Every key a widget reacts to comes from :mod:`jarvis.ui.keymap`;
every colour is a style name from :mod:`jarvis.ui.palette`.  Widgets must render at any size
down to 40x12 without raising.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import urwid

from jarvis.ui import keymap
from jarvis.ui.model import (
    LOCAL,
    NO_CONVERSATION,
    ConnectionSummary,
    Contact,
    Message,
    MessengerModel,
)

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

#: Delivery marks of outgoing messages: state -> (text, style).
DELIVERY_MARKS: dict[str, tuple[str, str]] = {
    "queued": ("…", "mark_queued"),
    "sent": ("✓", "mark_sent"),
    "delivered": ("✓✓", "mark_delivered"),
    "read": ("●", "mark_read"),
}

STATUS_DOTS: dict[str, tuple[str, str]] = {
    "online": ("●", "dot_online"),
    "connecting": ("◐", "dot_connecting"),
    "offline": ("○", "dot_offline"),
}

#: Put before the delivery mark of a message deposited in the contact's mailbox.
MAILBOX_MARK = "✉"

NEW_MESSAGES = " new messages "


def delivery_mark(message: Message) -> tuple[str, str]:
    """The mark (text, style) at the end of my message's line.

    A group message the daemon counts says how many of the other members stored it: ``✓ 3/9``
    while some have not, ``✓✓ 9/9`` once all have (a group of one shows the plain mark).
    """
    mark, style = DELIVERY_MARKS.get(message.state, DELIVERY_MARKS["queued"])
    delivered, members = message.group_delivered, message.group_members
    if delivered is not None and members:
        if delivered >= members:
            return f"✓✓ {members}/{members}", DELIVERY_MARKS["delivered"][1]
        return f"✓ {delivered}/{members}", DELIVERY_MARKS["sent"][1]
    if message.path == "mailbox":
        mark = MAILBOX_MARK + mark
    return mark, style


def _word_start(text: str, pos: int) -> int:
    """Index where the word before *pos* starts (readline's backward-word)."""
    while pos > 0 and not text[pos - 1].isalnum():
        pos -= 1
    while pos > 0 and text[pos - 1].isalnum():
        pos -= 1
    return pos


def _word_end(text: str, pos: int) -> int:
    """Index just after the word at or after *pos* (readline's forward-word)."""
    while pos < len(text) and not text[pos].isalnum():
        pos += 1
    while pos < len(text) and text[pos].isalnum():
        pos += 1
    return pos


def _rubout_start(text: str, pos: int) -> int:
    """Index where Ctrl+W starts deleting: back over spaces, then to the previous space."""
    while pos > 0 and text[pos - 1].isspace():
        pos -= 1
    while pos > 0 and not text[pos - 1].isspace():
        pos -= 1
    return pos


class ReadlineEdit(urwid.Edit):
    """A one-line edit field with readline keys (Ctrl+A/E/K/U/W/Y, Alt+B/F) from the keymap."""

    def __init__(self, caption: Any = "", edit_text: str = "", *, mask: str | None = None) -> None:
        """:param mask: a character shown instead of each typed one (passwords)."""
        super().__init__(caption, edit_text, multiline=False, mask=mask, wrap="clip")
        self.cut_text = ""

    def _cut(self, start: int, end: int) -> None:
        text = self.edit_text
        self.cut_text = text[start:end]
        self.set_edit_text(text[:start] + text[end:])
        self.set_edit_pos(start)

    def keypress(self, size: Any, key: str) -> str | None:
        """Handle a readline key, else let :class:`urwid.Edit` handle typing and cursor keys."""
        text, pos = self.edit_text, self.edit_pos
        name = keymap.command_in(key, keymap.EDIT)
        if name == "line_start":
            self.set_edit_pos(0)
        elif name == "line_end":
            self.set_edit_pos(len(text))
        elif name == "kill_to_end":
            self._cut(pos, len(text))
        elif name == "kill_to_start":
            self._cut(0, pos)
        elif name == "kill_word":
            self._cut(_rubout_start(text, pos), pos)
        elif name == "yank":
            self.insert_text(self.cut_text)
        elif name == "word_left":
            self.set_edit_pos(_word_start(text, pos))
        elif name == "word_right":
            self.set_edit_pos(_word_end(text, pos))
        else:
            return super().keypress(size, key)
        return None


class InputLine(ReadlineEdit):
    """The main screen's input line: Enter submits, Up/Down browse the input history.

    :param model: where the input history lives.
    :param on_submit: called with the text when Enter is pressed (the line is then cleared).
    """

    def __init__(self, model: MessengerModel, on_submit: Callable[[str], None]) -> None:
        super().__init__(("prompt", "> "))
        self._model = model
        self._on_submit = on_submit

    def keypress(self, size: Any, key: str) -> str | None:
        """Handle send and history keys, then readline keys."""
        if keymap.is_command(key, "send", keymap.INPUT):
            text = self.edit_text
            if text.strip():
                self._model.history.add(text)
                self.set_edit_text("")
                self._on_submit(text)
            return None
        if keymap.is_command(key, "history_previous", keymap.INPUT):
            line = self._model.history.previous(self.edit_text)
            if line is not None:
                self.set_edit_text(line)
                self.set_edit_pos(len(line))
            return None
        if keymap.is_command(key, "history_next", keymap.INPUT):
            line = self._model.history.next()
            if line is not None:
                self.set_edit_text(line)
                self.set_edit_pos(len(line))
            return None
        return super().keypress(size, key)


class ConversationRow(urwid.WidgetWrap[urwid.AttrMap]):
    """One line of the conversation list: number, online dot, name, unread badge, and how
    many offered files wait for an answer there."""

    def __init__(self, contact: Contact, number: int, is_open: bool, offers: int = 0) -> None:
        self.uid = contact.uid
        #: what the row shows; :class:`ConversationList` keeps a row whose key did not change
        self.key = (contact, number, is_open, offers)
        dot, dot_style = STATUS_DOTS.get(contact.status, STATUS_DOTS["offline"])
        if contact.group:  # a group has no one presence: its members' are in F3
            dot, dot_style = ("-", "hint") if contact.left else ("≡", "conversation")
        name_style = "conversation_open" if is_open else "conversation"
        label: list[Any] = []
        if number <= 9:
            label.append(("hint", f"{number} "))
        label += [(dot_style, dot + " "), (name_style, contact.display_name)]
        if contact.muted:
            label.append(("hint", " ~"))
        columns: list[Any] = [urwid.Text(label, wrap="ellipsis")]
        if contact.unread:
            count = str(contact.unread) if contact.unread < 1000 else "999+"
            columns.append(("pack", urwid.Text(("badge", f" {count} "))))
        if offers:
            files = "file" if offers == 1 else "files"
            columns.append(("pack", urwid.Text(("offer_badge", f" {min(offers, 999)} {files} "))))
        focus_map: dict[Any, str] = {
            None: "conversation_focus",
            "conversation": "conversation_focus",
            "conversation_open": "conversation_focus",
            "hint": "conversation_focus",
        }
        super().__init__(urwid.AttrMap(urwid.Columns(columns), None, focus_map))

    def selectable(self) -> bool:
        return True

    def keypress(self, size: Any, key: str) -> str | None:
        return key


class LazyPane(urwid.WidgetWrap[urwid.ListBox]):
    """A list of rows that follows the model lazily.

    :meth:`refresh` only notes that the model changed; :meth:`_bring_up_to_date` runs once,
    before the pane is next drawn, read or sent input, however many changes came before: a
    burst of messages costs one update of each pane, not one per message.
    """

    def __init__(self) -> None:
        self._walker: Any = urwid.SimpleFocusListWalker([])
        self._stale = True
        super().__init__(urwid.ListBox(self._walker))

    def refresh(self) -> None:
        """Note that the model changed (the rows follow before they are next used)."""
        self._stale = True
        self._invalidate()

    def _update(self) -> None:
        if self._stale:
            self._stale = False
            self._bring_up_to_date()

    def _bring_up_to_date(self) -> None:
        raise NotImplementedError

    def rows_shown(self) -> list[urwid.Widget]:
        """The rows as they are now (brought up to date first)."""
        self._update()
        return list(self._walker)

    def render(self, size: Any, focus: bool = False) -> urwid.Canvas:
        self._update()
        return super().render(size, focus)

    def keypress(self, size: Any, key: str) -> str | None:
        self._update()
        return super().keypress(size, key)

    def mouse_event(
        self, size: Any, event: str, button: int, col: int, row: int, focus: bool
    ) -> Any:
        self._update()
        return super().mouse_event(size, event, button, col, row, focus)


class ConversationList(LazyPane):
    """The left pane: contacts by recent activity; Enter opens the selected one.

    :param on_open: called with the uid of the conversation to open.
    """

    def __init__(self, model: MessengerModel, on_open: Callable[[str], None]) -> None:
        self._model = model
        self._on_open = on_open
        super().__init__()

    def _bring_up_to_date(self) -> None:
        """Show the model's contacts, keeping the selection on the same contact.

        A row whose contact, number, open state and offers waiting did not change is kept as
        it is, and the list is left alone when no row changed (most refreshes: a message in the open
        conversation, a delivery mark).
        """
        selected = self.selected_uid()
        kept = {row.uid: row for row in self._walker if isinstance(row, ConversationRow)}
        rows: list[urwid.Widget] = []
        offers = self._model.offers_by_conversation()
        for index, contact in enumerate(self._model.ordered_contacts(), start=1):
            key = (
                contact,
                index,
                contact.uid == self._model.current_uid,
                offers.get(contact.uid, 0),
            )
            existing = kept.get(contact.uid)
            # (an unchanged contact is the same object: the comparison stops at identity)
            if existing is None or existing.key != key:
                existing = ConversationRow(*key)
            rows.append(existing)
        if not rows:
            rows = [urwid.Text(("hint", "No contacts yet: Ctrl+N adds one."))]
        if len(rows) == len(self._walker) and all(
            new is old for new, old in zip(rows, self._walker, strict=True)
        ):
            return
        self._walker[:] = rows
        target = selected or self._model.current_uid
        for index, row in enumerate(rows):
            if isinstance(row, ConversationRow) and row.uid == target:
                self._walker.set_focus(index)
                break

    def selected_uid(self) -> str | None:
        """The uid of the row with the selection, if any."""
        self._update()
        if not len(self._walker):
            return None
        focus = self._walker.get_focus()[0]
        return focus.uid if isinstance(focus, ConversationRow) else None

    def select(self, uid: str) -> None:
        """Move the selection to *uid*'s row."""
        self._update()
        for index, row in enumerate(self._walker):
            if isinstance(row, ConversationRow) and row.uid == uid:
                self._walker.set_focus(index)

    def keypress(self, size: Any, key: str) -> str | None:
        if keymap.is_command(key, "open_conversation", keymap.BROWSE):
            uid = self.selected_uid()
            if uid is not None:
                self._on_open(uid)
            return None
        return super().keypress(size, key)


def format_time(when: float, tz: datetime.tzinfo | None) -> datetime.datetime:
    """Return *when* (epoch seconds) as an aware datetime in *tz* (``None``: local time)."""
    moment = datetime.datetime.fromtimestamp(when, tz=datetime.UTC)
    return moment.astimezone(tz) if tz is not None else moment.astimezone()


class MessageRow(urwid.WidgetWrap[urwid.Columns]):
    """One message: time, sender, text (wrapped under itself), delivery mark for outgoing ones."""

    def __init__(self, message: Message, sender: str, tz: datetime.tzinfo | None) -> None:
        self.message_id = message.id
        stamp = format_time(message.created, tz).strftime("%H:%M")
        if message.direction == LOCAL:  # shown here only (/exec output): no sender, no mark
            local = urwid.Text(("local", message.body))
            super().__init__(urwid.Columns([(6, urwid.Text(("time", stamp))), local]))
            return
        incoming = message.direction == "in"
        name_style, body_style = ("name_in", "body_in") if incoming else ("name_out", "body_out")
        sender = message.author or sender  # a group message names its author on its line
        body = urwid.Text([(name_style, sender[:16] + ": "), (body_style, message.body)])
        columns: list[Any] = [(6, urwid.Text(("time", stamp))), body]
        if not incoming:
            mark, style = delivery_mark(message)
            width = 3 if len(mark) <= 3 else len(mark) + 1  # a group's count keeps a space
            columns.append((width, urwid.Text((style, mark), align="right")))
        super().__init__(urwid.Columns(columns))


class SeparatorRow(urwid.WidgetWrap[urwid.Text]):
    """A centred rule with a label: day separators and the "new messages" marker."""

    def __init__(self, label: str, style: str, *, fill: str = "─") -> None:
        self.label = label
        self._fill = fill
        self._style = style
        super().__init__(urwid.Text((style, label), align="center", wrap="clip"))

    def render(self, size: Any, focus: bool = False) -> urwid.Canvas:
        (maxcol,) = size
        label = f" {self.label.strip()} "
        if len(label) >= maxcol:
            text = label[:maxcol]
        else:
            side = (maxcol - len(label)) // 2
            text = self._fill * side + label + self._fill * (maxcol - side - len(label))
        self._w.set_text((self._style, text))
        return super().render(size, focus)


class Scrollback(LazyPane):
    """The right pane: the open conversation with day separators, times, marks and the marker.

    It stays at the newest message unless the user scrolled up, and opens at the
    "new messages" marker when there is one.

    :param tz: time zone for times and days (``None``: local; tests pass UTC).
    """

    def __init__(self, model: MessengerModel, tz: datetime.tzinfo | None = None) -> None:
        self._model = model
        self._tz = tz
        self._size: Any | None = None
        self._shown_uid: str | None = None
        # what the rows show: the messages (oldest first), the walker index of each one's row,
        # the day of the last separator, the marker and the (contact, own) names
        self._shown: list[Message] = []
        self._rows_of: list[int] = []
        self._day: datetime.date | None = None
        self._shown_marker: str | None = None
        self._shown_names = ("", "")
        self._loading = False  # the rows say "Loading..." (the history is on its way)
        self._follow = True
        super().__init__()

    def _bring_up_to_date(self) -> None:
        """Show the model's open conversation.

        The common changes (new messages after the newest shown, a message's state) touch only
        their own rows; anything else (another conversation, an older page, the marker, a name)
        rebuilds the rows, which would otherwise make each burst cost as much as the whole
        conversation.
        """
        uid = self._model.current_uid
        contact = self._model.current
        switched = uid != self._shown_uid
        at_bottom = self._follow or not len(self._walker) or self._at_bottom()
        # the conversation shows its first messages: just opened, or its history just loaded
        # (it arrives a round trip after the switch); they open at the marker if there is one
        first_rows = switched or self._loading
        marker_index: int | None = None
        if switched or not self._update_rows():
            marker_index = self._rebuild(contact)
        self._shown_uid = uid
        last = len(self._walker) - 1
        if first_rows and marker_index is not None:
            self._walker.set_focus(marker_index)
            self._follow = False
        elif switched or at_bottom:
            self._walker.set_focus(last)
            self._follow = True

    def _names(self, contact: Contact) -> tuple[str, str]:
        me = self._model.identity.name if self._model.identity else "me"
        return contact.display_name, me

    def _rebuild(self, contact: Contact | None) -> int | None:
        """Build every row of the open conversation; return the marker row's index, if any."""
        self._shown = []
        self._rows_of = []
        self._day = None
        self._loading = False
        if contact is None:
            self._walker[:] = [
                urwid.Text(
                    ("hint", "No conversation open. Alt+1 opens the first; Ctrl+N adds a contact.")
                )
            ]
            # local lines (/exec output) of the view with no conversation open
            local = self._model.conversations.get(NO_CONVERSATION)
            if local is not None:
                self._walker.extend(MessageRow(m, "", self._tz) for m in local.ordered())
            return None
        conversation = self._model.conversations.get(contact.uid)
        messages = conversation.ordered() if conversation is not None else []
        marker = conversation.marker if conversation is not None else None
        self._shown_marker = marker
        self._shown_names = self._names(contact)
        rows: list[urwid.Widget] = []
        if not messages:
            self._loading = conversation is None or not conversation.loaded
            text = (
                "Loading..." if self._loading else f"No messages with {contact.display_name} yet."
            )
            rows.append(urwid.Text(("hint", text)))
        marker_index = self._add_rows(rows, messages, marker)
        self._walker[:] = rows
        return marker_index

    def _add_rows(
        self, rows: list[urwid.Widget], messages: list[Message], marker: str | None
    ) -> int | None:
        """Append the rows of *messages* (after those shown) to *rows*; return the marker's."""
        them, me = self._shown_names
        offset = len(self._walker) if self._shown else 0
        marker_index: int | None = None
        for message in messages:
            day = format_time(message.created, self._tz).date()
            if day != self._day:
                self._day = day
                rows.append(SeparatorRow(day.strftime("%A %d %B %Y"), "day"))
            if message.id == marker:
                marker_index = offset + len(rows)
                rows.append(SeparatorRow(NEW_MESSAGES, "marker", fill="━"))
            self._rows_of.append(offset + len(rows))
            self._shown.append(message)
            rows.append(MessageRow(message, them if message.direction == "in" else me, self._tz))
        return marker_index

    def _update_rows(self) -> bool:
        """Bring the shown rows up to date in place; ``False`` if they need a rebuild.

        In place means: the shown messages are still the oldest ones, in the same order, with
        the same marker and names; changed ones get a new row, newer ones are appended.
        """
        contact = self._model.current
        conversation = self._model.conversations.get(contact.uid) if contact else None
        shown = self._shown
        if contact is None or conversation is None or not shown:
            return False
        if conversation.marker != self._shown_marker or self._names(contact) != self._shown_names:
            return False
        messages = conversation.ordered()
        count = len(shown)
        if len(messages) < count:
            return False
        changed = []
        for index, (old, new) in enumerate(zip(shown, messages[:count], strict=True)):
            if old is not new:
                if old.id != new.id:
                    return False
                changed.append(index)
        if any(m.id == self._shown_marker for m in messages[count:]):
            return False
        them, me = self._shown_names
        for index in changed:
            message = shown[index] = messages[index]
            sender = them if message.direction == "in" else me
            self._walker[self._rows_of[index]] = MessageRow(message, sender, self._tz)
        if len(messages) > count:
            rows: list[urwid.Widget] = []
            self._add_rows(rows, messages[count:], None)
            self._walker.extend(rows)
        return True

    def _at_bottom(self) -> bool:
        return bool(len(self._walker)) and self._walker.focus == len(self._walker) - 1

    def render(self, size: Any, focus: bool = False) -> urwid.Canvas:
        self._size = size
        return super().render(size, focus)

    def scroll(self, command: str) -> None:
        """Scroll by a keymap command: scroll_up/down (a page), scroll_top/bottom."""
        self._update()
        if not len(self._walker):
            return
        if command == "scroll_top":
            self._walker.set_focus(0)
            self._w.set_focus_valign("top")
            self._follow = False
        elif command == "scroll_bottom":
            self._walker.set_focus(len(self._walker) - 1)
            self._w.set_focus_valign("bottom")
            self._follow = True
        elif command in ("scroll_up", "scroll_down"):
            size = self._size or (40, 10)
            self._w.keypress(size, "page up" if command == "scroll_up" else "page down")
            self._follow = self._at_bottom()

    def at_top(self) -> bool:
        """Whether the oldest loaded line is in focus (time to fetch an older page)."""
        self._update()
        return len(self._walker) == 0 or self._walker.focus == 0

    def keypress(self, size: Any, key: str) -> str | None:
        result = super().keypress(size, key)
        self._follow = self._at_bottom()
        return result

    def selectable(self) -> bool:
        return True


class StatusBar(urwid.WidgetWrap[urwid.Text]):
    """One line: my name, the connection summary in colour, lock state, operations, notices."""

    def __init__(self, model: MessengerModel) -> None:
        self._model = model
        self.spinner_step = 0
        super().__init__(urwid.Text("", wrap="ellipsis"))
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the text from the model."""
        model = self._model
        summary: ConnectionSummary = model.summary
        markup: list[Any] = []
        name = model.identity.name if model.identity and model.identity.name else "jarvis"
        markup.append(("status", f" {name} "))
        markup.append(("status", "│"))
        markup.append((summary.style, f" {summary.text} "))
        if model.locked:
            markup += [("status", "│"), ("lock_state", " locked ")]
        unread = model.total_unread()
        if unread:
            markup += [("status", "│"), ("status", f" {unread} unread ")]
        offers = len(model.waiting_offers)
        if offers:
            markup += [("status", "│"), ("status", f" {offers} offered file{'s' * (offers > 1)} ")]
        if model.operations:
            spin = SPINNER[self.spinner_step % len(SPINNER)]
            labels = ", ".join(op.label for op in list(model.operations.values())[:2])
            if len(model.operations) > 2:
                labels += f" +{len(model.operations) - 2}"
            markup += [("status", "│"), ("spinner", f" {spin} {labels} ")]
        if model.status is not None:
            style = "status_error" if model.status.level == "error" else "status_info"
            markup += [("status", "│"), (style, f" {model.status.text} ")]
        self._w.set_text(markup)

    def render(self, size: Any, focus: bool = False) -> urwid.Canvas:
        return urwid.AttrMap(self._w, "status").render(size, focus)


#: How the title bar names the path a message to the open conversation takes now.
PATH_WORDS = {
    "lan": "on the LAN",
    "direct": "direct",
    "relayed": "relayed",
    "mailbox": "via mailbox",
    "none": "no path",
}


class TitleBar(urwid.WidgetWrap[urwid.Text]):
    """The top line: the open conversation's name, status, path (direct, via mailbox,
    no path) and whether it is verified."""

    def __init__(self, model: MessengerModel) -> None:
        self._model = model
        super().__init__(urwid.Text("", wrap="ellipsis"))
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the text from the model."""
        contact = self._model.current
        if contact is None:
            text = " Jarvis"
        elif contact.group:
            count = f"{contact.members} member{'s' if contact.members != 1 else ''}"
            topic = f" · {contact.topic}" if contact.topic else ""
            gone = " · you are no longer a member" if contact.left else ""
            text = f" {contact.display_name} · {count}{topic}{gone} · F3: members"
        else:
            verified = "verified" if contact.verified else "not verified"
            extra = ", blocked" if contact.blocked else ""
            path = PATH_WORDS.get(self._model.path_of(contact.uid) or "")
            via = f" · {path}" if path else ""
            text = f" {contact.display_name} · {contact.status}{via} · {verified}{extra}"
        self._w.set_text(("header", text))

    def render(self, size: Any, focus: bool = False) -> urwid.Canvas:
        return urwid.AttrMap(self._w, "header").render(size, focus)


def button(label: str, on_press: Callable[[], None]) -> urwid.AttrMap:
    """A button with house styles that calls *on_press* with no argument."""
    widget = urwid.Button(label, on_press=lambda _button: on_press())
    return urwid.AttrMap(widget, "button", "button_focus")


def field(edit: urwid.Edit) -> urwid.AttrMap:
    """An edit field with the field styles."""
    return urwid.AttrMap(edit, "field", "field_focus")


class Dialog(urwid.WidgetWrap[urwid.AttrMap]):
    """A framed, scrollable dialog: a title and a list of rows (text, fields, buttons).

    The controller puts it over the current screen with :class:`DialogLayer`; Esc (handled by
    the controller) closes it.

    :param kind: a stable name (``"add_contact"``, ``"quit"``) for the controller and tests.
    """

    def __init__(
        self,
        kind: str,
        title: str,
        rows: list[urwid.Widget],
        *,
        default_action: Callable[[], None] | None = None,
    ) -> None:
        """:param default_action: what Enter does when no button or field takes it."""
        self.kind = kind
        self.title = title
        self.default_action = default_action
        self._walker: Any = urwid.SimpleFocusListWalker(rows)
        self._listbox = urwid.ListBox(self._walker)
        self._frame = urwid.LineBox(self._listbox, title=title, title_attr="dialog_title")
        super().__init__(urwid.AttrMap(self._frame, "dialog"))
        self._focus_first()

    def set_rows(self, rows: list[urwid.Widget]) -> None:
        """Replace the dialog's rows (e.g. to show a result)."""
        self._walker[:] = rows
        self._focus_first()

    def _selectable_indexes(self) -> list[int]:
        return [i for i, row in enumerate(self._walker) if row.selectable()]

    def _focus_first(self) -> None:
        indexes = self._selectable_indexes()
        if indexes:
            self._walker.set_focus(indexes[0])

    def move_focus(self, step: int) -> None:
        """Move focus to the next (``1``) or previous (``-1``) field or button, wrapping."""
        indexes = self._selectable_indexes()
        if not indexes:
            return
        current = self._walker.focus
        if current in indexes:
            position = (indexes.index(current) + step) % len(indexes)
        else:
            position = 0
        self._walker.set_focus(indexes[position])

    def keypress(self, size: Any, key: str) -> str | None:
        result = super().keypress(size, key)
        if result == "enter" and self.default_action is not None:
            self.default_action()
            return None
        return result

    def natural_rows(self, maxcol: int) -> int:
        """How many screen rows the dialog wants at width *maxcol* (frame included)."""
        inner = max(1, maxcol - 2)
        return 2 + sum(row.rows((inner,)) for row in self._walker)

    def selectable(self) -> bool:
        return True


class DialogLayer(urwid.Widget):
    """Draws a :class:`Dialog` centred over another box widget, sized to fit the terminal."""

    _sizing = frozenset([urwid.Sizing.BOX])
    _selectable = True

    def __init__(self, base: urwid.Widget, dialog: Dialog) -> None:
        super().__init__()
        self.base = base
        self.dialog = dialog

    def _overlay(self, size: Any) -> urwid.Overlay:
        maxcol, maxrow = size
        width = max(1, min(maxcol, max(min(72, maxcol - 4), min(36, maxcol))))
        height = max(1, min(maxrow, self.dialog.natural_rows(width)))
        return urwid.Overlay(self.dialog, self.base, "center", width, "middle", height)

    def render(self, size: Any, focus: bool = False) -> urwid.Canvas:
        return self._overlay(size).render(size, focus)

    def keypress(self, size: Any, key: str) -> str | None:
        return self._overlay(size).keypress(size, key)
