"""Dialogs and forms: building them and carrying out what they submit.

:class:`Dialogs` owns the identity forms (create, unlock, lock), the add-contact, contact
details (rename, verify, block, remove), my identity (export, copy) and settings dialogs, and
the daemon calls they make.  It must not route keys, send messages (:mod:`jarvis.ui.sending`)
nor touch the connection (:mod:`jarvis.ui.link`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.ui.calls import error_text
from jarvis.ui.host import UiHost
from jarvis.ui.model import Contact, MailboxStatus
from jarvis.ui.screens import (
    AddContactDialog,
    ContactInfoDialog,
    CreateIdentityScreen,
    IdentityDialog,
    LockScreen,
    MailboxDialog,
    SettingsDialog,
    confirm_dialog,
    help_dialog,
)
from jarvis.ui.widgets import Dialog, button

Callbacks = dict[str, Callable[..., Any]]


class Dialogs:
    """Builds the dialogs and identity forms, and makes the daemon calls they submit.

    :param controller: the controller (:class:`~jarvis.ui.host.UiHost`): daemon calls, model,
        window.
    :param read_file: returns a Deferred with a text file's contents (off the reactor thread).
    :param write_file: writes text to a private file, returning a Deferred.
    :param clipboard: copies text to the terminal's clipboard (OSC 52).
    """

    log = Logger()

    def __init__(
        self,
        controller: UiHost,
        *,
        read_file: Callable[[str], defer.Deferred[str]] | None = None,
        write_file: Callable[[str, str], defer.Deferred[Any]] | None = None,
        clipboard: Callable[[str], None] | None = None,
    ) -> None:
        self._controller = controller
        self.model = controller.model
        self.window = controller.window
        self.main_screen = controller.main_screen
        self.clock = controller.clock
        #: the :class:`~jarvis.ui.grouping.GroupActions` (F3 on a group shows its members)
        self.groups: Any = None
        self._read_file = read_file
        self._write_file = write_file
        self._clipboard = clipboard
        #: an unlock is in flight (its events must not flip the lock screen)
        self.unlocking = False

    # identity forms ------------------------------------------------------------------------------

    def create_identity(self, name: str, password: str) -> None:
        """Create the identity (the form checked the password was typed twice)."""
        d = self._controller.call(
            "identity.create", {"name": name, "password": password}, label="creating"
        )
        screen = self.window.screen
        if isinstance(screen, CreateIdentityScreen):
            screen.show_note("Creating your identity (this takes a moment)... Ctrl+C cancels.")

        def created(result: Mapping[str, Any]) -> Any:
            self.model.load_identity(result)
            self.model.set_locked(False)
            return self._controller.load_unlocked().addCallback(lambda _: self.open_identity())

        def failed(failure: Failure) -> None:
            screen = self.window.screen
            if isinstance(screen, CreateIdentityScreen):
                screen.show_error(error_text(failure))
            self._controller.report(failure, "creating the identity")

        d.addCallbacks(created, failed)
        d.addErrback(self._controller.report, "loading")

    def unlock(self, password: str) -> None:
        """Try *password*; only success leaves the lock screen."""
        d = self._controller.call("identity.unlock", {"password": password}, label="unlocking")
        self.unlocking = True

        def done(result: Any) -> Any:
            self.unlocking = False
            return result

        d.addBoth(done)
        screen = self.window.screen
        if isinstance(screen, LockScreen):
            screen.show_note("Unlocking...")

        def unlocked(result: Mapping[str, Any]) -> Any:
            self.model.set_locked(False)
            self.model.load_identity(result)
            self.model.clear_status()
            return self._controller.load_unlocked()

        def failed(failure: Failure) -> Any:
            if not self.model.locked:
                # another client unlocked while this attempt was in flight (its event was
                # left to this call): the daemon is open whatever this attempt says
                return self._controller.load_unlocked()
            screen = self.window.screen
            kind = getattr(failure.value, "kind", None)
            text = "Wrong password." if kind == "wrong_password" else error_text(failure)
            if isinstance(screen, LockScreen):
                screen.show_error(text)
                if kind == "too_many_attempts" and not screen.password_edit.edit_text:
                    # refused unchecked: keep what was typed for the retry
                    screen.password_edit.set_edit_text(password)
                    screen.password_edit.set_edit_pos(len(password))
            if kind not in ("wrong_password", "too_many_attempts"):
                self._controller.report(failure, "unlocking")
            self._controller.redraw()
            return None

        d.addCallbacks(unlocked, failed)
        d.addErrback(self._controller.report, "loading")

    def lock(self) -> None:
        """Ctrl+L: lock the daemon's identity and show the lock screen at once."""
        if self.model.has_identity is False:
            return
        self._controller.save_draft()
        self.model.set_locked(True)
        self._controller.show_lock()
        self._controller.announce_focus()
        d = self._controller.call("identity.lock", label="locking")
        d.addErrback(self._controller.report, "locking")

    # dialogs -------------------------------------------------------------------------------

    def open_dialog(self, dialog: Dialog) -> None:
        """Show *dialog* over the current screen."""
        self.window.open_dialog(dialog)

    def open_help(self) -> None:
        """Show the keys (generated from the keymap)."""
        if self._controller.on_main_screen():
            self.open_dialog(help_dialog(self.window.close_dialog))

    def open_add_contact(self, initial: str = "") -> AddContactDialog:
        """Show the add-contact dialog (optionally with a link code typed in)."""
        dialog = AddContactDialog(
            lambda link, name, verified: self.add_contact(dialog, link, name, verified),
            self.window.close_dialog,
            initial,
        )
        if self._controller.on_main_screen():
            self.open_dialog(dialog)
        return dialog

    def add_contact(self, dialog: AddContactDialog, link: str, name: str, verified: bool) -> None:
        """Add a contact from a link code, or from a card file read off the reactor thread."""
        if link.startswith("jarvis://") or self._read_file is None:
            source: defer.Deferred[Any] = defer.succeed({"link": link})
        else:
            path = os.path.abspath(os.path.expanduser(link))
            source = self._read_file(path).addCallback(lambda text: {"card": text})
        params_extra: dict[str, Any] = {"verified": verified}
        if name:
            params_extra["name"] = name

        def call(params: dict[str, Any]) -> Any:
            return self._controller.call(
                "contacts.add", {**params, **params_extra}, label="adding contact"
            )

        def added(result: Mapping[str, Any]) -> None:
            contact = self.model.upsert_contact(result)
            dialog.show_added(contact, lambda: self._verify_added(dialog, contact.uid))
            self.model.notify(f"added {contact.display_name}")

        def failed(failure: Failure) -> None:
            dialog.show_error(error_text(failure))
            self._controller.report(failure, "adding the contact")

        source.addCallback(call).addCallbacks(added, failed)

    def _verify_added(self, dialog: AddContactDialog, uid: str) -> None:
        def done(contact: Contact) -> None:
            dialog.show_added(contact, lambda: None)

        self.update_contact(uid, {"verified": True}, "verifying").addCallback(done)

    def update_contact(self, uid: str, changes: dict[str, Any], label: str) -> defer.Deferred[Any]:
        """Call ``contacts.update`` and take in the result.

        :returns: a Deferred firing with the updated :class:`Contact` (errors are reported and
            the Deferred never fires with them).
        """
        d = self._controller.call("contacts.update", {"contact": uid, **changes}, label=label)
        result: defer.Deferred[Any] = defer.Deferred()

        def updated(data: Mapping[str, Any]) -> None:
            result.callback(self.model.upsert_contact(data))

        d.addCallbacks(updated, self._controller.report, errbackArgs=(label,))
        d.addErrback(self._controller.internal_error, label)
        return result

    def open_identity(self) -> None:
        """Show my identity (fetching it from the daemon)."""
        if not self._controller.on_main_screen():
            return
        d = self._controller.call("identity.show", label="loading identity")

        def show(data: Mapping[str, Any]) -> None:
            self.model.load_identity(data)
            identity = self.model.identity
            if identity is None or not self._controller.on_main_screen():
                return
            card = data.get("card") if isinstance(data.get("card"), str) else None
            dialog: IdentityDialog | None = None

            def export(path: str) -> None:
                assert dialog is not None
                self._export_card(dialog, path, card or identity.link + "\n")

            def copy() -> None:
                assert dialog is not None
                if self._clipboard is None:
                    dialog.show_note("no clipboard here: select the link code with the mouse")
                    return
                self._clipboard(identity.link)
                dialog.show_note("link code copied (needs a terminal with OSC 52 support)")

            dialog = IdentityDialog(identity, export, copy, self.window.close_dialog)
            self.open_dialog(dialog)

        d.addCallbacks(show, self._controller.report, errbackArgs=("loading the identity",))
        d.addErrback(self._controller.internal_error, "identity dialog")
        d.addCallback(lambda _: self._controller.redraw())

    def _export_card(self, dialog: IdentityDialog, path: str, text: str) -> None:
        if self._write_file is None:
            dialog.show_note("exporting is not available here", "error")
            return
        full = os.path.abspath(os.path.expanduser(path))
        d = self._write_file(full, text)

        def written(_: Any) -> None:
            dialog.show_note(f"card written to {full}")

        def failed(failure: Failure) -> None:
            reason = getattr(failure.value, "strerror", None) or type(failure.value).__name__
            dialog.show_note(f"could not write {full}: {reason}", "error")

        d.addCallbacks(written, failed)
        d.addBoth(lambda _: self._controller.redraw())

    def _target_contact(self) -> Contact | None:
        if self.main_screen.area == "list":
            uid = self.main_screen.conversations.selected_uid()
            if uid is not None:
                return self.model.contacts.get(uid)
        return self.model.current

    def open_contact_info(self, contact: Contact | None = None) -> None:
        """Show the open (or selected) contact's details and actions."""
        if not self._controller.on_main_screen():
            return
        contact = contact or self._target_contact()
        if contact is None:
            self.model.notify("no conversation open: Alt+1 opens the first", "error")
            return
        if contact.group and self.groups is not None:
            self.groups.open_info(contact)  # a group's members, their presence and path
            return
        uid = contact.uid

        def refresh(updated: Contact) -> None:
            dialog = self.window.dialog
            if isinstance(dialog, ContactInfoDialog) and dialog.uid == uid:
                self.open_contact_info(updated)

        actions: Callbacks = {
            "rename": lambda name: (
                self.update_contact(uid, {"name": name}, "renaming").addCallback(refresh)
                if name
                else None
            ),
            "verify": lambda value: self.update_contact(
                uid, {"verified": value}, "verifying"
            ).addCallback(refresh),
            "block": lambda value: self.update_contact(
                uid, {"blocked": value}, "blocking" if value else "unblocking"
            ).addCallback(refresh),
            "remove": lambda: self.confirm_remove(uid),
            "close": self.window.close_dialog,
        }
        self.open_dialog(
            ContactInfoDialog(
                contact, actions, now=self.clock.seconds(), path=self.model.path_of(uid)
            )
        )
        d = self._controller.call("peers.status")

        def health(status: Mapping[str, Any]) -> None:
            dialog = self.window.dialog
            if not (isinstance(dialog, ContactInfoDialog) and dialog.uid == uid):
                return
            for peer in status.get("peers") or ():
                if isinstance(peer, Mapping) and peer.get("uid") == uid:
                    current = self.model.contacts.get(uid, contact)
                    now = self.clock.seconds()
                    path = self.model.path_of(uid)
                    self.open_dialog(ContactInfoDialog(current, actions, peer, now, path))

        d.addCallback(health)
        d.addErrback(lambda f: self.log.info("no health figures: {e}", e=type(f.value).__name__))
        d.addCallback(lambda _: self._controller.redraw())

    def confirm_remove(self, uid: str) -> None:
        contact = self.model.contacts.get(uid)
        if contact is None:
            return

        def remove(history: bool) -> None:
            d = self._controller.call(
                "contacts.remove", {"contact": uid, "with_history": history}, label="removing"
            )

            def removed(_: Any) -> None:
                self.model.remove_contact(uid)
                self.window.close_dialog()
                self.model.notify(f"removed {contact.display_name}")

            d.addCallbacks(removed, self._controller.report, errbackArgs=("removing",))

        rows = [
            urwid_text(
                f"Remove {contact.display_name}? You will need their link code to add them again."
            ),
            button("No, keep", self.window.close_dialog),
            button("Remove, keep the history", lambda: remove(False)),
            button("Remove and delete the history", lambda: remove(True)),
        ]
        self.open_dialog(Dialog("remove", "Remove contact", rows))

    def open_settings(self) -> None:
        """Show settings: notifications, read receipts and mute per contact."""
        if not self._controller.on_main_screen():
            return

        def toggle(setting: str, uid: str | None, value: bool) -> None:
            if setting == "notifications":
                self.model.notifications = value
                self.model.notify(f"notifications {'on' if value else 'off'}")
                # the daemon raises the desktop notifications; the UI rings the bell
                d = self._controller.call("settings.set", {"notifications": value, "bell": value})
                d.addErrback(self._controller.report, "saving settings")
            elif setting == "previews":
                self.model.previews = value
                d = self._controller.call("settings.set", {"previews": value})
                d.addErrback(self._controller.report, "saving settings")
            elif uid is not None:
                self.update_contact(uid, {setting: value}, "saving")

        self._settings_toggle = toggle
        self._show_settings(None)
        d = self._controller.call("mailbox.status")

        def show(status: Mapping[str, Any]) -> None:
            if isinstance(self.window.dialog, SettingsDialog):
                self._show_settings(MailboxStatus.from_api(status))

        d.addCallbacks(show, self._controller.report, errbackArgs=("asking for the mailbox",))
        d.addErrback(self._controller.internal_error, "settings dialog")
        d.addCallback(lambda _: self._controller.redraw())

    def mailbox_status_arrived(self, status: Mapping[str, Any]) -> None:
        """A fresh ``mailbox.status`` (after a ``mailbox.changed`` event): an open settings
        dialog shows it, its focus kept (another client may have used or dropped one)."""
        dialog = self.window.dialog
        if not isinstance(dialog, SettingsDialog) or dialog.mailbox is None:
            return
        fresh = MailboxStatus.from_api(status)
        if fresh != dialog.mailbox:
            focus = dialog.focused_row()
            self._show_settings(fresh)
            replaced = self.window.dialog
            if isinstance(replaced, SettingsDialog):
                replaced.focus_row(focus)

    def _show_settings(self, mailbox: MailboxStatus | None) -> None:
        actions = {
            "use": self.open_mailbox_form,
            "drop": lambda: self.confirm_drop_mailbox(back_to_settings=True),
        }
        dialog = SettingsDialog(
            self.model,
            self._settings_toggle,
            self.window.close_dialog,
            mailbox=mailbox,
            mailbox_actions=actions,
            now=self.clock.seconds(),
        )
        self.open_dialog(dialog)

    # the mailbox (issue 15) ------------------------------------------------------------------

    def open_mailbox_form(self) -> MailboxDialog:
        """Show the form asking for a ``jarvis-mailbox:`` link (settings' "Use a mailbox...")."""
        dialog = MailboxDialog(lambda link: self.use_mailbox(link, dialog), self.open_settings)
        self.open_dialog(dialog)
        return dialog

    def use_mailbox(self, link: str, dialog: MailboxDialog | None = None) -> defer.Deferred[Any]:
        """Call ``mailbox.use``; the daemon's refusal shows in *dialog* (else the status line).

        On success the settings dialog comes back showing the new mailbox (from the form), or
        the status line says where the mailbox is (``/mailbox LINK``).
        """
        if dialog is not None:
            dialog.show_note("connecting to the mailbox...")
        d = self._controller.call("mailbox.use", {"link": link}, label="using the mailbox")

        def used(result: Mapping[str, Any]) -> None:
            status = MailboxStatus.from_api(result)
            self.model.notify(f"mailbox in use: {status.address}")
            self._controller.fetch_paths()
            if dialog is not None and self.window.dialog is dialog:
                self.open_settings()

        def failed(failure: Failure) -> None:
            if dialog is not None and self.window.dialog is dialog:
                dialog.show_error(f"The daemon refused it: {error_text(failure)}")
            self._controller.report(failure, "using the mailbox")

        d.addCallbacks(used, failed)
        d.addErrback(self._controller.internal_error, "using the mailbox")
        d.addCallback(lambda _: self._controller.redraw())
        return d

    def confirm_drop_mailbox(self, back_to_settings: bool = False) -> None:
        """Ask before ``mailbox.drop`` (settings' "Stop using the mailbox", ``/mailbox drop``).

        :param back_to_settings: show the settings again once dropped (else close the question).
        """

        def drop() -> None:
            self.drop_mailbox(back_to_settings)

        self.open_dialog(
            confirm_dialog(
                "drop_mailbox",
                "Stop using the mailbox? Your queues there are deleted and every contact is "
                "told; messages then wait until you are both online.",
                drop,
                self.open_settings if back_to_settings else self.window.close_dialog,
            )
        )

    def drop_mailbox(self, back_to_settings: bool = False) -> defer.Deferred[Any]:
        """Call ``mailbox.drop``; then the question closes (or the settings come back)."""
        d = self._controller.call("mailbox.drop", label="dropping the mailbox")

        def dropped(_: Any) -> None:
            self.model.notify("mailbox dropped: messages wait until you are both online")
            self._controller.fetch_paths()
            dialog = self.window.dialog
            if dialog is not None and dialog.kind == "drop_mailbox":
                if back_to_settings:
                    self.open_settings()
                else:
                    self.window.close_dialog()

        d.addCallbacks(dropped, self._controller.report, errbackArgs=("dropping the mailbox",))
        d.addErrback(self._controller.internal_error, "dropping the mailbox")
        d.addCallback(lambda _: self._controller.redraw())
        return d

    def show_mailbox_status(self) -> defer.Deferred[Any]:
        """``/mailbox``: put the mailbox's status on the status line."""
        d = self._controller.call("mailbox.status", label="asking for the mailbox")

        def show(status: Mapping[str, Any]) -> None:
            self.model.notify(MailboxStatus.from_api(status).summary(self.clock.seconds()))

        d.addCallbacks(show, self._controller.report, errbackArgs=("asking for the mailbox",))
        d.addCallback(lambda _: self._controller.redraw())
        return d

    def mailbox_command(self, args: tuple[str, ...]) -> None:
        """``/mailbox`` (status), ``/mailbox drop`` (asks first), ``/mailbox LINK`` (use it)."""
        if not args:
            self.show_mailbox_status()
        elif args[0].lower() == "drop":
            self.confirm_drop_mailbox()
        else:
            self.use_mailbox(args[0])


def urwid_text(text: str) -> Any:
    """A plain text row (kept here so the dialogs need no other urwid names)."""
    import urwid

    return urwid.Text(text)
