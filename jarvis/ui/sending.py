"""Sending from the input line: messages to the open conversation and slash commands.

:class:`Sender` owns what happens when the user presses Enter in the input line: a plain line
is sent to the open conversation, ``/msg NAME TEXT`` to a named contact, and ``/add``, ``/lock``,
``/help``, ``/quit``, ``/mailbox`` run their commands.  A line that could not be sent goes
back into an empty input line.  It must not build dialogs (:mod:`jarvis.ui.dialogs` does)
nor touch the connection (:mod:`jarvis.ui.link`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from jarvis.common.textsafe import human_bytes, terminal_safe
from jarvis.ui import completion
from jarvis.ui.calls import error_text, is_cancel
from jarvis.ui.host import UiHost
from jarvis.ui.model import (
    FINAL_TRANSFER_STATES,
    OFFER_LINE_PREFIX,
    InputError,
    Message,
    SendText,
    SlashCommand,
    file_name,
    folder_offered,
    is_group,
    parse_input,
    transfer_conversation,
    transfer_summary,
)

#: The most files one ``/file`` pattern offers (a receiver takes at most 500 offers from one
#: contact waiting at once).
MAX_MATCHED_FILES = 500


class Sender:
    """Sends what the input line holds, and runs its slash commands.

    :param controller: the controller (:class:`~jarvis.ui.host.UiHost`): daemon calls, model,
        screens.
    :param open_add_contact: opens the add-contact dialog with a link code typed in.
    """

    def __init__(
        self,
        controller: UiHost,
        open_add_contact: Callable[[str], Any],
        groups: Any = None,
        mailbox: Callable[[tuple[str, ...]], Any] | None = None,
    ) -> None:
        """:param groups: the :class:`~jarvis.ui.grouping.GroupActions` (sending in a group,
        the group slash commands).
        :param mailbox: runs ``/mailbox [LINK|drop]`` with its arguments."""
        self._controller = controller
        self._groups = groups
        self._open_add_contact = open_add_contact
        self._mailbox = mailbox
        self.model = controller.model
        self.main_screen = controller.main_screen

    def submit_input(self, text: str) -> None:
        """The input line's Enter: send a message or run a slash command."""
        action = parse_input(text)
        if action is None:
            return
        self.model.clear_status()
        if isinstance(action, InputError):
            self.model.notify(action.text, "error")
        elif isinstance(action, SendText):
            uid = self.model.current_uid
            if uid is None:
                self.main_screen.input.set_edit_text(text)
                self.model.notify("open a conversation first (Alt+1), or /msg NAME TEXT", "error")
                return
            self.model.set_draft(uid, "")
            self.send(uid, action.text, restore=text)
        elif isinstance(action, SlashCommand):
            self.slash(action, text)

    def slash(self, action: SlashCommand, line: str = "") -> None:
        if action.name == "quit":
            self._controller.quit()
        elif action.name in ("lock", "help"):
            self._controller.handle_command(action.name)
        elif action.name == "add":
            dialog = self._open_add_contact(action.args[0])
            dialog.submit()
        elif action.name == "msg":
            name, text = action.args
            self.message_to(name, text, restore=line or None)
        elif action.name == "file":
            self.offer_file(action.args[0])
        elif action.name == "decline" and self._groups is not None and self._is_invite(action):
            self._groups.slash(action)  # /decline of a group invitation, not of a file
        elif action.name in ("accept", "decline", "cancel"):
            self.answer_file(action.name, action.args)
        elif action.name == "fetch":
            self.fetch_file(action.args)
        elif action.name == "files":
            self.list_files()
        elif action.name == "mailbox" and self._mailbox is not None:
            self._mailbox(action.args)
        elif self._groups is not None:
            self._groups.slash(action)

    def _is_invite(self, action: SlashCommand) -> bool:
        """Whether ``/decline ID`` names a group invitation (else it is a file's)."""
        ident = str(action.args[0]) if action.args else ""
        return bool(ident) and any(
            str(i.get("id", "")).startswith(ident) for i in self.model.invites
        )

    def offer_file(self, path: str) -> None:
        """``/file PATH``: offer the file to the open conversation's contact, or in a group to
        every other member (``groups.sendFile``).  A pattern (``~/photos/*.jpg``) offers each
        file it matches (:meth:`offer_matching`)."""
        uid = self.model.current_uid
        if uid is None:
            self.model.notify("open a conversation first (Alt+1), then /file PATH", "error")
            return
        if completion.is_pattern(path):
            d = self._controller.expand_paths(path)
            d.addCallback(lambda paths: self.offer_matching(uid, path, paths))
            d.addErrback(self._controller.internal_error, "/file")
            return
        self._offer(uid, path).addErrback(self._controller.report, "/file")

    @defer.inlineCallbacks
    def offer_matching(self, uid: str, pattern: str, paths: list[str]) -> Any:
        """Offer each of *paths* (what *pattern* matched) in turn, one call after the other, a
        line each in the conversation; the status line then says how many were offered and,
        if any was not, the first reason.  Ctrl+C stops the rest."""
        if paths == [pattern]:  # the name itself holds a * or ?
            yield self._offer(uid, pattern).addErrback(self._controller.report, "/file")
            return
        if not paths or len(paths) > MAX_MATCHED_FILES:
            said = (
                f"no file matches {pattern}"
                if not paths
                else f"{pattern} matches {len(paths)} files: at most {MAX_MATCHED_FILES} at once"
            )
            self.model.notify(terminal_safe(said, keep_newlines=False), "error")
            self._controller.redraw()
            return
        yield self._one_by_one(
            paths,
            lambda path: self._offer(uid, path),
            ("offered", "files", "not offered"),
            name=lambda path: terminal_safe(os.path.basename(path), keep_newlines=False) + ": ",
        )

    def _offer(self, uid: str, path: str) -> defer.Deferred[Any]:
        """Offer the file at *path* in conversation *uid*, or to a contact every file of the
        folder at *path* (``files.sendFolder``); the conversation says so (a Deferred that
        fails with the daemon's refusal)."""
        group = self.model.contacts.get(uid) if is_group(uid) else None
        if group is not None:
            d = self._controller.call(
                "groups.sendFile", {"group": group.group_id, "path": path}, label="hashing"
            )
        else:
            d = self._controller.is_folder(path)
            d.addCallback(
                lambda folder: self._controller.call(
                    "files.sendFolder" if folder else "files.send",
                    {"contact": uid, "path": path},
                    label="hashing",
                )
            )

        def offered(result: Mapping[str, Any]) -> None:
            sent = result.get("transfers")
            views = sent if isinstance(sent, list) else [result]
            t = views[0] if views else {}
            label = file_name(t)
            size = human_bytes(int(t.get("size") or 0))
            if isinstance(sent, list) and "failed" in result:  # files.sendFolder's answer
                self.model.add_local(uid, folder_offered(result), self._controller.clock.seconds())
                self._controller.redraw()
                return
            if group is not None:
                each = ", ".join(
                    terminal_safe(str(v.get("contact_name") or ""), keep_newlines=False)
                    + f" (/cancel {str(v.get('id'))[:8]})"
                    for v in views
                )
                text = f"offered {label} ({size}) to {each}"
            else:
                text = f"offered {label} ({size}); /cancel {str(t.get('id'))[:8]} stops it"
                if t.get("reason"):  # e.g. the contact is offline: it went to their mailbox
                    text += f" ({terminal_safe(str(t['reason']), keep_newlines=False)})"
                # the offer's line: it gives way to the end line once the transfer ended
                line_id = OFFER_LINE_PREFIX + str(t.get("id"))
                self.model.add_local(uid, text, self._controller.clock.seconds(), line_id=line_id)
                self._controller.redraw()
                return
            self.model.add_local(uid, text, self._controller.clock.seconds())
            self._controller.redraw()

        return d.addCallback(offered)

    def answer_file(self, verb: str, args: tuple[str, ...]) -> None:
        """``/accept [ID] [DIR]``, ``/decline [ID]``, ``/cancel ID``; without an id, the
        newest offer waiting in the open conversation; ``all`` for the id, every offer waiting
        there (:meth:`answer_all`)."""
        if verb in ("accept", "decline") and args[:1] == ("all",):
            self.answer_all(verb, args[1] if len(args) > 1 else None)
            return
        if verb == "cancel" and args == ("all",):
            self.cancel_all()
            return
        if not args or not args[0]:
            newest = self.model.newest_offer(self.model.current_uid)
            if newest is None:
                self.model.notify(
                    f"no offer waits for an answer here: /{verb} ID (jarvis files lists them)",
                    "error",
                )
                self._controller.redraw()
                return
            args = (newest, *args[1:])
        params: dict[str, Any] = {"id": args[0]}
        if verb == "accept" and len(args) > 1:
            params["directory"] = args[1]
        d = self._controller.call(f"files.{verb}", params, label=verb)

        def answered(t: Mapping[str, Any]) -> None:
            # the reason of an accepted one: e.g. it went through their mailbox
            self._say_file(t, "", with_reason=t.get("state") == "accepted")

        d.addCallbacks(answered, self._controller.report, errbackArgs=(f"/{verb}",))

    def answer_all(self, verb: str, directory: str | None, folder_id: str | None = None) -> None:
        """``/accept all [DIR]``, ``/decline all``: answer every offer waiting in the open
        conversation, oldest first, one call each (:meth:`_answer_each`); with *folder_id*,
        every file of that folder sent whole still waiting there (the accept prompt of a
        folder's file: its files arrive as offers of their own)."""
        ids = self.model.offers_waiting_in(self.model.current_uid, folder_id)
        if not ids:
            none = (
                f"no offer waits for an answer here: /{verb} all"
                if folder_id is None
                else "no file of that folder waits for an answer here"
            )
            self.model.notify(none, "error")
            self._controller.redraw()
            return
        extra = {"directory": directory} if directory else {}
        what = "files offered here" if folder_id is None else "files of the folder"
        d = self._answer_each(verb, ids, extra, what)
        d.addErrback(self._controller.internal_error, f"/{verb} all")

    def cancel_all(self) -> None:
        """``/cancel all``: cancel every transfer not ended yet in the open conversation, both
        ways (the daemon's list says which), oldest first, one call each
        (:meth:`_answer_each`)."""
        uid = self.model.current_uid
        if uid is None:
            self.model.notify("open a conversation first (Alt+1), then /cancel all", "error")
            return

        @defer.inlineCallbacks
        def cancel() -> Any:
            listed = yield self._controller.call("files.list", label="cancel")
            here = sorted(
                (
                    t
                    for t in listed.get("transfers") or ()
                    if isinstance(t, Mapping)
                    and isinstance(t.get("contact"), str)
                    and transfer_conversation(t) == uid
                    and t.get("state") not in FINAL_TRANSFER_STATES
                ),
                key=lambda t: float(t.get("created") or 0.0),
            )
            if not here:
                self.model.notify("no transfer is under way here: /cancel all", "error")
                self._controller.redraw()
                return
            ids = [str(t["id"]) for t in here]
            yield self._answer_each("cancel", ids, {}, "transfers here")

        cancel().addErrback(self._controller.report, "/cancel all")  # e.g. the daemon is gone

    def _answer_each(
        self, verb: str, ids: list[str], extra: dict[str, Any], what: str
    ) -> defer.Deferred[Any]:
        """Call ``files.VERB`` for each of *ids* in turn (:meth:`_one_by_one`: "accepted 2 of 3
        *what*; not answered: WHY")."""
        done = {"accept": "accepted", "decline": "declined", "cancel": "cancelled"}[verb]
        return self._one_by_one(
            ids,
            lambda tid: self._controller.call(f"files.{verb}", {"id": tid, **extra}, label=verb),
            (done, what, "not answered"),
        )

    @defer.inlineCallbacks
    def _one_by_one(
        self,
        items: list[str],
        call: Callable[[str], defer.Deferred[Any]],
        words: tuple[str, str, str],
        name: Callable[[str], str] = lambda item: "",
    ) -> Any:
        """Run ``call(item)`` for each of *items*, one after the other; the status line then
        says how many went, in *words* ``(done, what, undone)``: "DONE 2 of 3 WHAT" and, if any
        failed, "; UNDONE: NAME WHY" for the first (``name(item)``).  Ctrl+C stops the rest
        (the controller says so)."""
        done, what, undone = words
        went, failed = 0, None
        for item in items:
            try:
                yield call(item)
            except Exception:
                failure = Failure()
                if is_cancel(failure):  # the rest are left as they are
                    return
                failed = failed or (item, failure)
            else:
                went += 1
        said = f"{done} {went} of {len(items)} {what}"
        if failed is None:
            self.model.notify(said)
        else:
            item, failure = failed
            self.model.notify(f"{said}; {undone}: {name(item)}{error_text(failure)}", "error")
        self._controller.redraw()

    def _say_file(self, t: Mapping[str, Any], after: str, *, with_reason: bool) -> None:
        """Say a transfer's state on the status line: "file NAME: STATE*after*", then its
        reason if *with_reason* and it has one."""
        said = f"file {file_name(t)}: {t.get('state')}{after}"
        if with_reason and t.get("reason"):
            said += f" ({terminal_safe(str(t['reason']), keep_newlines=False)})"
        self.model.notify(said)
        self._controller.redraw()

    def list_files(self) -> None:
        """``/files``: the transfers not ended (``files.list``), both ways and in every
        conversation, oldest first, as local lines of the view open (as irssi's ``/dcc
        list``); the status line says how many."""
        view = self.model.current_uid
        d = self._controller.call("files.list", {}, label="files")

        def listed(result: Mapping[str, Any]) -> None:
            views = [
                t
                for t in result.get("transfers") or ()
                if isinstance(t, Mapping) and t.get("state") not in FINAL_TRANSFER_STATES
            ]
            views.sort(key=lambda t: float(t.get("created") or 0.0))
            now = self._controller.clock.seconds()
            for t in views:
                self.model.add_local(view, "file " + transfer_summary(self.model, t), now)
            count = len(views)
            self.model.notify(
                "no transfer is under way"
                if not count
                else f"{count} transfer{'s' * (count > 1)} under way (listed above): "
                "/accept, /decline or /cancel ID"
            )
            self._controller.redraw()

        d.addCallbacks(listed, self._controller.report, errbackArgs=("/files",))

    def fetch_file(self, args: tuple[str, ...]) -> None:
        """``/fetch ID [DIR]``: ask for a file shared into the open group (``groups.fetchFile``:
        its author, else a member online who received it; ID is the shared file's message id
        shown on its line)."""
        uid = self.model.current_uid
        group = self.model.contacts.get(uid) if uid is not None and is_group(uid) else None
        if group is None:
            self.model.notify("open the group the file was shared in, then /fetch ID", "error")
            return
        params: dict[str, Any] = {"group": group.group_id, "message": args[0]}
        if len(args) > 1:
            params["directory"] = args[1]
        d = self._controller.call("groups.fetchFile", params, label="fetch")

        def asked(t: Mapping[str, Any]) -> None:  # the reason: e.g. the member is offline
            member = terminal_safe(str(t.get("contact_name") or ""), keep_newlines=False)
            whom = f" from {member}" if member and t.get("state") == "requested" else ""
            self._say_file(t, whom + "; it is accepted when offered", with_reason=True)

        d.addCallbacks(asked, self._controller.report, errbackArgs=("/fetch",))

    def message_to(self, name: str, text: str, *, restore: str | None = None) -> None:
        """``/msg NAME TEXT``: send *text* to the one contact called *name*.

        With no conversation open, NAME's conversation opens with the line in it (as irssi
        opens a query window); with another one open the UI stays there, and the status line
        says "sent to NAME" once the daemon took the message.  An unknown or ambiguous NAME
        sends nothing and names the candidates on the status line.

        :param restore: the typed line, put back into an empty input line if sending fails.
        """
        matches = self.model.find_contacts(name)
        if len(matches) != 1:
            self.model.notify(self.model.no_single_contact(name, matches), "error")
            return
        contact = matches[0]
        stay = self.model.current_uid not in (None, contact.uid)
        if self.model.current_uid is None:
            self._controller.open_conversation(contact.uid)
        d = self.send(contact.uid, text, restore=restore, restore_anywhere=True)
        if stay:
            label = contact.display_name

            def confirm(sent: bool) -> None:
                if sent:
                    self.model.notify(f"sent to {label}")

            d.addCallback(confirm)

    def send(
        self, uid: str, text: str, *, restore: str | None = None, restore_anywhere: bool = False
    ) -> defer.Deferred[bool]:
        """Send *text* to *uid*; on failure put *restore* back into an empty input line.

        The line shows from the call's answer or from the ``message.added`` event, whichever
        comes first (once: both carry the message's id).

        :param restore_anywhere: restore even if another conversation is open by then (the
            line names its contact: ``/msg``).
        :returns: a Deferred firing with whether the daemon took the message.
        """
        if is_group(uid) and self._groups is not None:
            d = self._groups.send(uid, text)
        else:
            d = self._controller.call(
                "messages.send", {"contact": uid, "text": text}, label="sending"
            )

        def sent(result: Mapping[str, Any]) -> bool:
            if is_group(uid):
                return True  # the group part took the answer in
            try:
                self.model.add_message(Message.from_api(result))
            except (ValueError, AttributeError):
                pass
            return True

        def failed(failure: Failure) -> bool:
            here = restore_anywhere or uid == self.model.current_uid
            if restore is not None and here:
                if not self.main_screen.input.edit_text:
                    self.main_screen.input.set_edit_text(restore)
                    self.main_screen.input.set_edit_pos(len(restore))
            self._controller.report(failure, "sending")
            return False

        d.addCallbacks(sent, failed)

        def drawn(outcome: bool) -> bool:
            self._controller.redraw()
            return outcome

        return d.addCallback(drawn)
