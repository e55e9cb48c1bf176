"""Whole screens and dialogs of the terminal UI, and the top window that routes keys.

Screens: connecting, welcome (animated banner), identity creation, lock/unlock, main.  Dialogs:
add contact, my identity, contact info, settings, help (generated from the keymap), and yes/no
confirmations.  They show what they are given and call back; the controller decides what the
callbacks do.  Nothing here calls the daemon, and nothing here may raise while rendering at any
terminal size down to 40x12.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

import urwid

from jarvis.common.textsafe import human_bytes, human_duration, human_since, local_time, strip_bidi
from jarvis.ui import keymap
from jarvis.ui.banner import TAGLINE, BannerText
from jarvis.ui.model import (
    SLASH_COMMANDS,
    Contact,
    Identity,
    MailboxStatus,
    MessengerModel,
    password_hint,
)
from jarvis.ui.widgets import (
    ConversationList,
    Dialog,
    DialogLayer,
    InputLine,
    ReadlineEdit,
    Scrollback,
    StatusBar,
    TitleBar,
    button,
    field,
)

LOST_PASSWORD_WARNING = (
    "There is no way to recover a lost master password: nobody, not even Jarvis, can open "
    "your identity or history without it. Write it down somewhere safe."
)


def _centered(rows: list[urwid.Widget]) -> urwid.Widget:
    """A column of flow widgets centred on the screen (scrolls if the terminal is short)."""
    listbox = urwid.ListBox(urwid.SimpleFocusListWalker(rows))  # type: ignore[arg-type]
    return urwid.Padding(listbox, "center", ("relative", 100), min_width=20, left=1, right=1)


class _Screen(urwid.WidgetWrap[Any]):
    """A whole screen; ``state`` is its keymap state (``"form"``, ``"lock"``, ...)."""

    state = keymap.FORM
    name = "screen"

    def selectable(self) -> bool:
        return True


class ConnectingScreen(_Screen):
    """Shown until the daemon answers (and while it does not)."""

    name = "connecting"

    def __init__(self, model: MessengerModel) -> None:
        self._model = model
        self._text = urwid.Text("", align="center")
        super().__init__(
            urwid.Filler(
                urwid.Pile(
                    [urwid.Text(("banner_bright", "J A R V I S"), align="center"), self._text]
                ),
                "middle",
            )
        )
        self.refresh()

    def refresh(self) -> None:
        """Show the model's status line (why we are still waiting)."""
        status = self._model.status
        text = status.text if status is not None else "Connecting to the Jarvis daemon..."
        style = "error" if status is not None and status.level == "error" else "hint"
        self._text.set_text([(style, text), ("hint", "\nCtrl+C quits.")])


class WelcomeScreen(_Screen):
    """First start: the animated banner and a way into identity creation.

    :param on_continue: called when the user presses Enter (or the button).
    """

    name = "welcome"

    def __init__(self, on_continue: Callable[[], None]) -> None:
        self.banner = BannerText()
        self._on_continue = on_continue
        rows: list[urwid.Widget] = [
            urwid.Divider(),
            self.banner,
            urwid.Text(("hint", TAGLINE), align="center"),
            urwid.Divider(),
            urwid.Text(
                "Welcome. Jarvis has no identity in this data directory yet.", align="center"
            ),
            urwid.Divider(),
            urwid.Padding(button("Create my identity", on_continue), "center", 24),
        ]
        super().__init__(_centered(rows))

    def submit(self) -> None:
        """Enter pressed: continue to identity creation."""
        self._on_continue()


class CreateIdentityScreen(_Screen):
    """Name, password twice, a strength hint and the lost-password warning.

    :param on_create: called with ``(name, password)`` once the form is valid.
    """

    name = "create"

    def __init__(self, on_create: Callable[[str, str], None]) -> None:
        self._on_create = on_create
        self.name_edit = ReadlineEdit("Your name:       ")
        self.password_edit = ReadlineEdit("Master password: ", mask="*")
        self.repeat_edit = ReadlineEdit("Repeat it:       ", mask="*")
        self.hint = urwid.Text("")
        self.error = urwid.Text("")
        urwid.connect_signal(self.password_edit, "postchange", lambda *_: self._update_hint())
        rows: list[urwid.Widget] = [
            urwid.Divider(),
            urwid.Text(("banner_bright", "J A R V I S"), align="center"),
            urwid.Divider(),
            urwid.Text(("pane_title", "Create your identity")),
            urwid.Divider(),
            field(self.name_edit),
            field(self.password_edit),
            field(self.repeat_edit),
            self.hint,
            urwid.Divider(),
            urwid.Text(("warning", LOST_PASSWORD_WARNING)),
            urwid.Divider(),
            self.error,
            urwid.Padding(button("Create", self.submit), "left", 10),
        ]
        self._walker: Any = urwid.SimpleFocusListWalker(rows)  # type: ignore[arg-type]
        super().__init__(
            urwid.Padding(urwid.ListBox(self._walker), "center", ("relative", 100), left=1, right=1)
        )
        self._walker.set_focus(5)
        self._update_hint()

    def _update_hint(self) -> None:
        hint = password_hint(self.password_edit.edit_text)
        style = {"strong": "good", "fair": "warning", "weak": "error"}.get(hint.level, "hint")
        self.hint.set_text((style, hint.text))

    def show_error(self, text: str) -> None:
        """Show *text* under the form."""
        self.error.set_text(("error", text))

    def show_note(self, text: str) -> None:
        """Show a progress note (not an error) under the form."""
        self.error.set_text(("hint", text))

    def move_focus(self, step: int) -> None:
        """Tab / Shift+Tab between the fields and the button."""
        selectable = [i for i, row in enumerate(self._walker) if row.selectable()]
        current = self._walker.focus
        position = selectable.index(current) if current in selectable else 0
        self._walker.set_focus(selectable[(position + step) % len(selectable)])

    def submit(self) -> None:
        """Check the form and call back with the name and password if it is complete."""
        name = self.name_edit.edit_text.strip()
        password = self.password_edit.edit_text
        if not name:
            self.show_error("Type a name (contacts see it when you share your link code).")
            return
        if not password:
            self.show_error("Choose a master password.")
            return
        if password != self.repeat_edit.edit_text:
            self.show_error("The two passwords differ: type the same password twice.")
            return
        self.show_error("")
        self._on_create(name, password)


class LockScreen(_Screen):
    """The lock (unlock) screen: only the right password opens it.

    It shows no contact, message or draft.  Escape, resizing and every key other than typing
    and Enter do nothing.

    :param on_unlock: called with the password when Enter is pressed.
    """

    state = keymap.LOCK
    name = "lock"

    def __init__(self, name: str, on_unlock: Callable[[str], None]) -> None:
        self._on_unlock = on_unlock
        self.password_edit = ReadlineEdit("Password: ", mask="*")
        self.error = urwid.Text("", align="center")
        who = f"{name}'s Jarvis is locked." if name else "Jarvis is locked."
        rows: list[urwid.Widget] = [
            urwid.Text(("banner_bright", "J A R V I S"), align="center"),
            urwid.Divider(),
            urwid.Text(who, align="center"),
            urwid.Text(("hint", "Type the master password and press Enter."), align="center"),
            urwid.Divider(),
            urwid.Padding(field(self.password_edit), "center", ("relative", 80), min_width=20),
            self.error,
        ]
        self._pile = urwid.Pile(rows, focus_item=5)
        super().__init__(urwid.Filler(self._pile, "middle"))

    def keypress(self, size: Any, key: str) -> str | None:
        """Give keys to the password field only; swallow everything else."""
        result = super().keypress(size, key)
        if result is not None and keymap.command_for(result, keymap.LOCK) == "submit":
            self.submit()
            return None
        if result is not None and keymap.command_for(result, keymap.LOCK) == "cancel":
            return result
        return None

    def submit(self) -> None:
        """Send the password typed (the field is cleared at once)."""
        password = self.password_edit.edit_text
        self.password_edit.set_edit_text("")
        if password:
            self.show_error("")
            self._on_unlock(password)

    def show_error(self, text: str) -> None:
        """Show *text* under the password field."""
        self.error.set_text(("error", text))

    def show_note(self, text: str) -> None:
        """Show a progress note (not an error) under the password field."""
        self.error.set_text(("hint", text))


class MainScreen(_Screen):
    """Conversations on the left, scrollback on the right, input and status bar at the bottom.

    :param on_submit: called with the text of the input line when Enter is pressed.
    :param on_open: called with a uid when a conversation is chosen in the list.
    :param tz: time zone for message times (``None``: local).
    """

    name = "main"
    AREAS = ("input", "list", "scrollback")

    def __init__(
        self,
        model: MessengerModel,
        on_submit: Callable[[str], None],
        on_open: Callable[[str], None],
        tz: datetime.tzinfo | None = None,
    ) -> None:
        self._model = model
        self.title = TitleBar(model)
        self.conversations = ConversationList(model, on_open)
        self.scrollback = Scrollback(model, tz)
        self.input = InputLine(model, on_submit)
        self.status = StatusBar(model)
        self._list_box = urwid.AttrMap(self.conversations, "conversation")
        self._columns = urwid.Columns(
            [(20, self._list_box), self.scrollback], dividechars=1, focus_column=1
        )
        self._footer = urwid.Pile([self.status, urwid.AttrMap(self.input, "input")])
        self._frame = urwid.Frame(
            self._columns, header=self.title, footer=self._footer, focus_part="footer"
        )
        self._footer.focus_position = 1
        self.area = "input"
        super().__init__(urwid.AttrMap(self._frame, "body"))

    @property
    def state(self) -> str:  # type: ignore[override]
        """``"input"`` when the input line has focus, else ``"browse"``."""
        return keymap.INPUT if self.area == "input" else keymap.BROWSE

    def refresh(self, what: str = "all") -> None:
        """Rebuild the parts that show *what* changed (a model change word, or ``"all"``)."""
        if what in ("all", "contacts", "current", "messages", "identity", "lock"):
            self.conversations.refresh()
            self.title.refresh()
        if what in ("all", "messages", "current", "contacts", "identity", "lock"):
            self.scrollback.refresh()
        self.status.refresh()

    def focus_area(self, area: str) -> None:
        """Give focus to ``"input"``, ``"list"`` or ``"scrollback"``."""
        self.area = area
        if area == "input":
            self._frame.focus_part = "footer"
            self._footer.focus_position = 1
        else:
            self._frame.focus_part = "body"
            self._columns.focus_position = 0 if area == "list" else 1

    def move_focus(self, step: int) -> None:
        """Tab / Shift+Tab through input, conversation list and scrollback."""
        index = (self.AREAS.index(self.area) + step) % len(self.AREAS)
        self.focus_area(self.AREAS[index])

    def render(self, size: Any, focus: bool = False) -> urwid.Canvas:
        maxcol = size[0]
        width = 14 if maxcol < 60 else min(28, maxcol // 4)
        self._columns.contents[0] = (self._list_box, self._columns.options("given", width))
        return super().render(size, focus)


# Dialogs ------------------------------------------------------------------------------------


def _text_row(label: str, value: str, style: str = "body") -> urwid.Text:
    return urwid.Text([("hint", f"{label}: "), (style, value or "-")])


def _buttons(*pairs: tuple[str, Callable[[], None]]) -> list[urwid.Widget]:
    return [button(label, action) for label, action in pairs]


def confirm_dialog(
    kind: str, question: str, on_yes: Callable[[], None], on_no: Callable[[], None]
) -> Dialog:
    """A yes/no question; "No" has focus so Enter is the safe answer."""
    no = button("No", on_no)
    yes = button("Yes", on_yes)
    dialog = Dialog(kind, "Confirm", [urwid.Text(question), urwid.Divider(), no, yes])
    return dialog


class AddContactDialog(Dialog):
    """Add a contact from a link code or a card file; then shows the safety code to compare.

    :param on_add: called with ``(link_or_path, name, verified)``.
    :param on_close: called by the Close button.
    """

    def __init__(
        self,
        on_add: Callable[[str, str, bool], None],
        on_close: Callable[[], None],
        initial: str = "",
    ) -> None:
        self._on_add = on_add
        self._on_close = on_close
        self.link_edit = ReadlineEdit("Link or card file: ", initial)
        self.name_edit = ReadlineEdit("Name (optional):   ")
        self.verified_box = urwid.CheckBox("I compared the safety code in person: mark verified")
        self.error = urwid.Text("")
        rows: list[urwid.Widget] = [
            urwid.Text(("hint", "Paste a jarvis:// link code, or the path of a .jcard file.")),
            field(self.link_edit),
            field(self.name_edit),
            self.verified_box,
            self.error,
            *_buttons(("Add", self.submit), ("Cancel", on_close)),
        ]
        super().__init__("add_contact", "Add a contact", rows, default_action=self.submit)

    def submit(self) -> None:
        """Call back with the form's values if a link or path was given."""
        link = self.link_edit.edit_text.strip()
        if not link:
            self.show_error("Paste a link code or type a card file path.")
            return
        self.show_error("")
        self._on_add(link, self.name_edit.edit_text.strip(), self.verified_box.get_state() is True)

    def show_error(self, text: str) -> None:
        """Show *text* in the dialog."""
        self.error.set_text(("error", text))

    def show_added(self, contact: Contact, on_verify: Callable[[], None]) -> None:
        """Show the added contact's safety code and a way to mark it verified."""
        rows: list[urwid.Widget] = [
            urwid.Text(["Added ", ("name_in", contact.display_name), "."]),
            urwid.Divider(),
            urwid.Text("Compare this safety code with your contact (in person or by phone):"),
            urwid.Text(("safety", contact.safety_code or "-"), align="center"),
            urwid.Divider(),
            _text_row("Verified", "yes" if contact.verified else "no"),
        ]
        actions: list[tuple[str, Callable[[], None]]] = []
        if not contact.verified:
            actions.append(("Codes match: mark verified", on_verify))
        actions.append(("Close", self._on_close))
        self.default_action = self._on_close
        self.set_rows(rows + _buttons(*actions))


class IdentityDialog(Dialog):
    """My identity: link code, fingerprint, addresses; export a card, copy the link code.

    :param on_export: called with a file path to write the contact card to.
    :param on_copy: called to copy the link code to the clipboard.
    """

    def __init__(
        self,
        identity: Identity,
        on_export: Callable[[str], None],
        on_copy: Callable[[], None],
        on_close: Callable[[], None],
    ) -> None:
        self._on_export = on_export
        self.path_edit = ReadlineEdit("Export card to: ", f"{identity.name or 'me'}.jcard")
        self.note = urwid.Text("")
        rows: list[urwid.Widget] = [
            _text_row("Name", identity.name, "name_out"),
            _text_row("UID", identity.uid),
            _text_row("Fingerprint", identity.fingerprint, "safety"),
            _text_row("Addresses", ", ".join(identity.addresses)),
            urwid.Divider(),
            urwid.Text(("hint", "Link code (give it to a contact):")),
            urwid.Text(identity.link or "-"),
            urwid.Divider(),
            field(self.path_edit),
            self.note,
            *_buttons(
                ("Export card", self.export),
                ("Copy link code", on_copy),
                ("Close", on_close),
            ),
        ]
        super().__init__("my_identity", "My identity", rows, default_action=self.export)

    def export(self) -> None:
        """Call back with the export path, if one is typed."""
        path = self.path_edit.edit_text.strip()
        if path:
            self._on_export(path)

    def show_note(self, text: str, level: str = "info") -> None:
        """Show the outcome of an export or copy."""
        self.note.set_text(("error" if level == "error" else "good", text))


def _figure(health: Mapping[str, Any], key: str) -> float | None:
    value = health.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(health: Mapping[str, Any], key: str) -> int:
    value = _figure(health, key)
    return int(value) if value is not None else 0


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def describe_health(status: str, health: Mapping[str, Any], now: float) -> list[tuple[str, str]]:
    """The connection rows of a contact's details, in words: each figure once.

    :param status: the contact's status (``online``, ``connecting``, ``offline``).
    :param health: the contact's entry of ``peers.status`` (may lack any field).
    :param now: the current time (epoch seconds), for "since 16:39, 12 min".
    :returns: ``(label, text)`` rows: status, last error, connections, traffic.
    """
    rows: list[tuple[str, str]] = []
    since = _figure(health, "connected_since")
    if status == "online" and since is not None:
        rows.append(
            ("Status", f"online since {local_time(since, now)} ({human_duration(now - since)})")
        )
    else:
        rows.append(("Status", status))
    error = health.get("last_error")
    if isinstance(error, str) and error:
        at = _figure(health, "last_error_at")
        when = f" (at {human_since(at, now)})" if at is not None else ""
        rows.append(("Last error", strip_bidi(error.splitlines()[0]) + when))
    attempts = _count(health, "connect_attempts")
    connected = _count(health, "connect_successes")
    failed = _count(health, "connect_failures")
    accepted = _count(health, "sessions_accepted")
    parts = []
    if attempts:
        outcome = [f"{connected} connected"] if connected else []
        outcome += [f"{failed} failed"] if failed else []
        pending = attempts - connected - failed
        outcome += [f"{pending} in progress"] if pending > 0 else []
        parts.append(f"we dialled {_times(attempts)} ({', '.join(outcome)})")
    if accepted:
        parts.append(f"they dialled us {_times(accepted)}")
    if parts or "connect_attempts" in health:
        rows.append(("Connections", "; ".join(parts) if parts else "none yet"))
    traffic = []
    if "bytes_in" in health or "bytes_out" in health:
        traffic.append(
            f"{human_bytes(_count(health, 'bytes_in'))} in, "
            f"{human_bytes(_count(health, 'bytes_out'))} out"
        )
    if "messages_in" in health or "messages_out" in health:
        traffic.append(
            f"messages {_count(health, 'messages_in')} in, {_count(health, 'messages_out')} out"
        )
    if traffic:
        rows.append(("Traffic", "; ".join(traffic)))
    return rows


#: The contact details' words for the path a message takes now.
PATH_DETAILS = {
    "lan": "on the LAN (a live session to where the contact was found on this network)",
    "direct": "direct (a live session with this contact)",
    "relayed": "relayed (a live session through a mailbox's relay; direct is tried meanwhile)",
    "mailbox": "via the mailbox (no session: messages are deposited in their mailbox)",
    "none": "none (no session and no mailbox address: messages stay queued)",
}


class ContactInfoDialog(Dialog):
    """A contact's details and actions: verify, rename, block, remove.

    :param actions: callbacks by name: ``rename(name)``, ``verify(bool)``, ``block(bool)``,
        ``remove()``, ``close()``.
    :param health: optional connection health figures from ``peers.status``.
    :param now: the current time (epoch seconds), for the health figures.
    :param path: the path a message takes now (``mailbox.status``), if known.
    """

    def __init__(
        self,
        contact: Contact,
        actions: Mapping[str, Callable[..., Any]],
        health: Mapping[str, Any] | None = None,
        now: float = 0.0,
        path: str | None = None,
    ) -> None:
        self.uid = contact.uid
        self.rename_edit = ReadlineEdit("Rename to: ", contact.display_name)
        self.note = urwid.Text("")
        name = contact.display_name
        if contact.alias and contact.name and contact.name != contact.alias:
            name += f" (calls themself {contact.name})"
        rows: list[urwid.Widget] = [
            _text_row("Name", name, "name_in"),
            _text_row("UID", contact.uid),
            _text_row("Fingerprint", contact.fingerprint),
            _text_row("Safety code", contact.safety_code, "safety"),
            _text_row("Verified", "yes" if contact.verified else "no - compare the safety code"),
            _text_row("Addresses", ", ".join(contact.addresses)),
        ]
        rows += [
            _text_row(label, text)
            for label, text in describe_health(contact.status, health or {}, now)
        ]
        if path in PATH_DETAILS:
            rows.append(_text_row("Path", PATH_DETAILS[path]))
        reason = (health or {}).get("path_reason")
        if isinstance(reason, str) and reason:
            rows.append(_text_row("Path now", strip_bidi(reason.splitlines()[0])))
        flags = [f for f, on in (("blocked", contact.blocked), ("muted", contact.muted)) if on]
        if flags:
            rows.append(_text_row("Flags", ", ".join(flags), "warning"))
        rows += [urwid.Divider(), field(self.rename_edit), self.note]
        rows += _buttons(
            ("Rename", lambda: actions["rename"](self.rename_edit.edit_text.strip())),
            (
                "Mark not verified" if contact.verified else "Codes match: mark verified",
                lambda: actions["verify"](not contact.verified),
            ),
            (
                "Unblock" if contact.blocked else "Block",
                lambda: actions["block"](not contact.blocked),
            ),
            ("Remove contact...", lambda: actions["remove"]()),
            ("Close", lambda: actions["close"]()),
        )
        super().__init__("contact_info", "Contact details", rows)

    def show_note(self, text: str, level: str = "info") -> None:
        """Show the outcome of an action."""
        self.note.set_text(("error" if level == "error" else "good", text))


class GroupInfoDialog(Dialog):
    """A group's details (F3 on a group): name, topic, my role, and each member's role,
    presence and path; buttons to leave and close.

    :param members: one line per member (:meth:`MessengerModel.member_lines`); ``None``
        while ``groups.members`` is on its way.
    :param actions: callbacks by name: ``leave()``, ``close()``.
    """

    def __init__(
        self,
        group: Contact,
        members: list[str] | None,
        actions: Mapping[str, Callable[[], Any]],
    ) -> None:
        self.uid = group.uid
        rows: list[urwid.Widget] = [
            _text_row("Group", group.display_name, "name_in"),
            _text_row("Topic", group.topic),
            _text_row("Id", group.group_id),
            _text_row("My role", group.role or ("left" if group.left else "")),
            urwid.Divider(),
        ]
        if members is None:
            rows.append(urwid.Text(("hint", "Loading the members...")))
        else:
            rows.append(urwid.Text(("hint", f"{len(members)} members:")))
            rows += [urwid.Text(("body", "  " + line)) for line in members]
        rows.append(urwid.Divider())
        if not group.left:
            rows += _buttons(("Leave group...", lambda: actions["leave"]()))
        rows += _buttons(("Close", lambda: actions["close"]()))
        super().__init__("group_info", "Group details", rows)


def _answer(on_answer: Callable[[str, bool], None], ident: str, join: bool) -> Callable[[], None]:
    return lambda: on_answer(ident, join)


class InvitesDialog(Dialog):
    """The group invitations received, each with Join and Decline buttons.

    :param on_answer: called with ``(invite_id, join)``.
    """

    def __init__(
        self,
        invites: list[dict[str, str]],
        on_answer: Callable[[str, bool], None],
        on_close: Callable[[], None],
    ) -> None:
        rows: list[urwid.Widget] = []
        if not invites:
            rows.append(urwid.Text(("hint", "No invitations.")))
        for invite in invites:
            ident = invite.get("id", "")
            who = invite.get("from_name") or invite.get("from", "")[:12]
            rows.append(
                urwid.Text(
                    [
                        ("name_in", "#" + invite.get("name", "?")),
                        ("body", f" from {who} ({invite.get('members', '?')} members) "),
                        ("hint", f"id {ident}"),
                    ]
                )
            )
            rows += _buttons(
                (f"Join #{invite.get('name', '?')}", _answer(on_answer, ident, True)),
                ("Decline", _answer(on_answer, ident, False)),
            )
        rows += [urwid.Divider(), *_buttons(("Close", on_close))]
        super().__init__("invites", "Group invitations", rows)


class SettingsDialog(Dialog):
    """Notifications, and read receipts and muting per contact.

    :param on_toggle: called with ``(setting, uid_or_None, value)``; settings are
        ``"notifications"``, ``"previews"``, ``"read_receipts"`` and ``"muted"``.
    """

    def __init__(
        self,
        model: MessengerModel,
        on_toggle: Callable[[str, str | None, bool], None],
        on_close: Callable[[], None],
        *,
        mailbox: MailboxStatus | None = None,
        mailbox_actions: Mapping[str, Callable[[], Any]] | None = None,
        now: float = 0.0,
    ) -> None:
        """:param mailbox: the mailbox section's status (``None``: still being asked).
        :param mailbox_actions: ``"use"`` and ``"drop"`` (no section without them).
        :param now: the time, for "last collect"."""
        #: the Mailbox section's status (``None``: not known yet)
        self.mailbox = mailbox

        def box(label: str, state: bool, setting: str, uid: str | None) -> urwid.CheckBox:
            return urwid.CheckBox(
                label,
                state,
                on_state_change=lambda _box, value: on_toggle(setting, uid, bool(value)),
            )

        rows: list[urwid.Widget] = [
            box("Notifications (desktop and bell)", model.notifications, "notifications", None),
            box("  show message text in them", model.previews, "previews", None),
            urwid.Divider(),
            urwid.Text(("pane_title", "Per contact")),
        ]
        for contact in model.ordered_contacts():
            rows.append(urwid.Text(("name_in", contact.display_name)))
            rows.append(
                box("  send read receipts", contact.read_receipts, "read_receipts", contact.uid)
            )
            rows.append(box("  mute", contact.muted, "muted", contact.uid))
        if not model.contacts:
            rows.append(urwid.Text(("hint", "No contacts yet.")))
        if mailbox_actions is not None:
            rows += mailbox_rows(mailbox, mailbox_actions, now)
        rows += [urwid.Divider(), button("Close", on_close)]
        super().__init__("settings", "Settings", rows)

    def focused_row(self) -> int:
        """The index of the row with the focus (to keep it when the dialog is rebuilt)."""
        return int(self._walker.focus or 0)

    def focus_row(self, index: int) -> None:
        """Put the focus on row *index* if it takes focus (else leave it where it is)."""
        if 0 <= index < len(self._walker) and self._walker[index].selectable():
            self._walker.set_focus(index)


def mailbox_rows(
    status: MailboxStatus | None, actions: Mapping[str, Callable[[], Any]], now: float
) -> list[urwid.Widget]:
    """The settings' "Mailbox" section: the status in words, then its actions."""
    rows: list[urwid.Widget] = [urwid.Divider(), urwid.Text(("pane_title", "Mailbox"))]
    if status is None:
        rows.append(urwid.Text(("hint", "asking the daemon...")))
        return rows
    rows += [urwid.Text(line) for line in status.lines(now)]
    rows.append(button("Use a mailbox...", actions["use"]))
    if status.link:
        rows.append(button("Stop using the mailbox", actions["drop"]))
    return rows


class MailboxDialog(Dialog):
    """A form asking for a ``jarvis-mailbox:`` link; the daemon's refusal shows in it.

    :param on_use: called with the link typed (stripped, not empty).
    """

    def __init__(self, on_use: Callable[[str], Any], on_close: Callable[[], None]) -> None:
        self._on_use = on_use
        # the caption on its own row: a link is longer than the field, which scrolls
        self.link_edit = ReadlineEdit("")
        self.error = urwid.Text("")
        rows: list[urwid.Widget] = [
            urwid.Text(
                (
                    "hint",
                    "Paste the jarvis-mailbox: link its operator gave you (the mailbox writes "
                    "it to mailbox.link). Your contacts will deposit there while you are away.",
                )
            ),
            urwid.Text("Mailbox link:"),
            field(self.link_edit),
            self.error,
            *_buttons(("Use it", self.submit), ("Cancel", on_close)),
        ]
        super().__init__("mailbox", "Use a mailbox", rows, default_action=self.submit)

    def submit(self) -> None:
        """Call back with the link if one was typed."""
        link = self.link_edit.edit_text.strip()
        if not link:
            self.show_error("Paste a jarvis-mailbox: link.")
            return
        self.show_error("")
        self._on_use(link)

    def show_error(self, text: str) -> None:
        """Show *text* (the daemon's reason, or a note) in the form."""
        self.error.set_text(("error", text) if text else "")

    def show_note(self, text: str) -> None:
        """Show a neutral note (e.g. "connecting...")."""
        self.error.set_text(("hint", text))


def help_dialog(on_close: Callable[[], None]) -> Dialog:
    """The keys, generated from the keymap, and the slash commands."""
    rows: list[urwid.Widget] = [button("Close (Esc)", on_close), urwid.Divider()]
    current = None
    for category, keys, text in keymap.help_rows():
        if category != current:
            if current is not None:
                rows.append(urwid.Divider())
            rows.append(urwid.Text(("help_category", category)))
            current = category
        rows.append(urwid.Columns([(16, urwid.Text(("help_key", keys))), urwid.Text(text)], 1))
    rows += [urwid.Divider(), urwid.Text(("help_category", "Commands in the input line"))]
    for usage, text in SLASH_COMMANDS:
        rows.append(urwid.Columns([(16, urwid.Text(("help_key", usage))), urwid.Text(text)], 1))
    return Dialog("help", "Keys (PageUp/PageDown scroll)", rows)


# The top window -----------------------------------------------------------------------------

KeyHandler = Callable[[str, str], bool]


class AppWindow(urwid.WidgetPlaceholder):
    """The top widget: one screen, maybe one dialog over it, and key routing.

    Every key first goes to ``before_widgets(state, key)``; if that returns false the screen or
    dialog gets it, and what they leave goes to ``after_widgets(state, key)``.  Nothing else
    reaches the main loop: unhandled keys stop here.
    """

    def __init__(self, screen: _Screen, before_widgets: KeyHandler, after_widgets: KeyHandler):
        self.screen = screen
        self.dialog: Dialog | None = None
        self._before = before_widgets
        self._after = after_widgets
        super().__init__(screen)

    @property
    def state(self) -> str:
        """The keymap state: the dialog's if one is open, else the screen's."""
        return keymap.DIALOG if self.dialog is not None else self.screen.state

    def show(self, screen: _Screen) -> None:
        """Replace the screen (any dialog is closed)."""
        self.screen = screen
        self.dialog = None
        self.original_widget = screen

    def open_dialog(self, dialog: Dialog) -> None:
        """Put *dialog* over the screen (replacing any dialog already open)."""
        self.dialog = dialog
        self.original_widget = DialogLayer(self.screen, dialog)

    def close_dialog(self) -> None:
        """Close the dialog, if any."""
        self.dialog = None
        self.original_widget = self.screen

    def keypress(self, size: Any, key: str) -> str | None:
        state = self.state
        if self._before(state, key):
            return None
        result = super().keypress(size, key)
        if result is not None:
            self._after(self.state, result)
        return None
