"""Groups in the UI (issue 17): the group list, sending to a group, its slash commands, F3.

:class:`GroupActions` owns what the UI asks the daemon's ``groups.*`` methods: it loads the
groups (and invitations) into the conversation list, sends a line typed in an open group with
``groups.send``, runs ``/group create``, ``/invite``, ``/kick``, ``/leave``, ``/topic``,
``/invites``, ``/join``, ``/decline`` and ``/members``, and shows a group's members (F3).  A
daemon without groups (older, or one whose groups are off) leaves the list as it is.  It must
not route keys, draw, or touch the connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.ui.host import UiHost
from jarvis.ui.model import Contact, Message, SlashCommand, group_key
from jarvis.ui.screens import GroupInfoDialog, InvitesDialog, confirm_dialog

#: Methods tried in turn for ``/topic`` (another branch adds them; a daemon without any
#: answers ``method_not_found`` and the status line says so).
TOPIC_METHODS = ("groups.setTopic",)
#: Group messages per ``groups.history`` page the UI asks for.
GROUP_PAGE = 100


class GroupActions:
    """Groups: loading them, sending to them, their slash commands and their details dialog.

    :param controller: the controller (:class:`~jarvis.ui.host.UiHost`).
    """

    log = Logger()

    def __init__(self, controller: UiHost) -> None:
        self._controller = controller
        self.model = controller.model

    # loading -------------------------------------------------------------------------------

    def reload(self) -> defer.Deferred[Any]:
        """Load ``groups.list`` and ``groups.invites`` into the model (quietly without groups)."""
        d = self._controller.call("groups.list")
        d.addCallback(self.model.load_groups)
        d.addCallback(lambda _: self._controller.call("groups.invites"))
        d.addCallback(self._invites_loaded)
        d.addErrback(lambda f: self.log.info("no groups: {e}", e=type(f.value).__name__))
        d.addCallback(lambda _: self._controller.redraw())
        return d

    def _invites_loaded(self, result: Mapping[str, Any]) -> None:
        before = {i.get("id") for i in self.model.invites}
        self.model.load_invites(result)
        if any(i.get("id") not in before for i in self.model.invites):
            count = len(self.model.invites)
            self.model.notify(f"{count} group invitation{'s' if count > 1 else ''}: /invites")

    def history(self, key: str, *, before: Any = None) -> defer.Deferred[Any]:
        """Ask ``groups.history`` for group *key* (its conversation key)."""
        group = self.model.contacts.get(key)
        ident = group.group_id if group is not None else ""
        return self._controller.call("groups.history", {"group": ident, "limit": GROUP_PAGE})

    def mark_read(self, key: str) -> None:
        """Reset group *key*'s unread count here and in the daemon."""
        group = self.model.contacts.get(key)
        if group is None:
            return
        # also with no unread count here: the daemon counts what arrived while it was open
        self.model.mark_read(key)
        d = self._controller.call("groups.markRead", {"group": group.group_id})
        d.addErrback(self._controller.report, "marking read")

    # sending -------------------------------------------------------------------------------

    def send(self, key: str, text: str) -> defer.Deferred[Any]:
        """Send *text* to group *key* with ``groups.send``; the line shows from the answer or
        the ``group.message`` event, whichever comes first."""
        group = self.model.contacts.get(key)
        if group is None:
            return defer.fail(ValueError("no such group"))
        d = self._controller.call(
            "groups.send", {"group": group.group_id, "text": text}, label="sending"
        )

        def sent(result: Mapping[str, Any]) -> Any:
            me = self.model.identity.uid if self.model.identity is not None else None
            try:
                self.model.add_message(Message.from_group(result, me))
            except (ValueError, AttributeError):
                pass
            return result

        return d.addCallback(sent)

    # slash commands ------------------------------------------------------------------------

    def slash(self, action: SlashCommand) -> None:
        """Run a group slash command (``/group create``, ``/invite``, ``/kick``...)."""
        name = action.name
        if name == "group-create":
            self.create(action.args[0])
        elif name == "invites":
            self.open_invites()
        elif name in ("join", "decline"):
            self.answer_invite(action.args[0], name == "join")
        else:
            group = self.model.current
            if group is None or not group.group:
                self.model.notify(f"/{name} works in an open group (Alt+N opens one)", "error")
                return
            if name == "invite":
                self._change(group, "groups.invite", {"contact": action.args[0]}, "inviting")
            elif name == "kick":
                self._change(group, "groups.remove", {"member": action.args[0]}, "removing")
            elif name == "leave":
                self.confirm_leave(group)
            elif name == "topic":
                self.set_topic(group, action.args[0])
            elif name == "members":
                self.open_info(group)
            elif name in ("mute", "unmute"):
                self.set_muted(group, name == "mute")

    def create(self, name: str) -> None:
        """``/group create NAME``: found a group and open it."""
        d = self._controller.call("groups.create", {"name": name}, label="creating group")

        def created(result: Mapping[str, Any]) -> None:
            entry = self.model.upsert_group(result)
            if entry is not None:
                self._controller.open_conversation(entry.uid)
                self.model.notify(f"created {entry.display_name}: /invite CONTACT adds people")

        d.addCallbacks(created, self._controller.report, errbackArgs=("creating the group",))
        d.addBoth(lambda _: self._controller.redraw())

    def _change(self, group: Contact, method: str, params: dict[str, Any], label: str) -> None:
        d = self._controller.call(method, {"group": group.group_id, **params}, label=label)

        def done(result: Mapping[str, Any]) -> None:
            who = params.get("contact") or params.get("member")
            verb = {"inviting": "invited", "removing": "removed"}.get(label, label)
            self.model.notify(f"{verb} {who} ({group.display_name})")
            self.refresh(group.uid)

        d.addCallbacks(done, self._controller.report, errbackArgs=(label,))
        d.addBoth(lambda _: self._controller.redraw())

    def set_muted(self, group: Contact, muted: bool) -> None:
        """``/mute``, ``/unmute``: no desktop notification for *group*'s messages, or again
        (``groups.setMuted``, this device only)."""
        d = self._controller.call(
            "groups.setMuted", {"group": group.group_id, "muted": muted}, label="muting"
        )

        if muted:
            said = f"muted {group.display_name}: its messages raise no desktop notification"
        else:
            said = f"unmuted {group.display_name}: its messages raise desktop notifications"
        d.addCallbacks(
            lambda _result: self.model.notify(said),
            self._controller.report,
            errbackArgs=("/mute" if muted else "/unmute",),
        )
        d.addBoth(lambda _: self._controller.redraw())

    def confirm_leave(self, group: Contact) -> None:
        """Ask, then leave *group* (``groups.leave``)."""
        window = self._controller.window
        question = f"Leave {group.display_name}? Its members stop sending to you."
        if group.role == "founder":
            question += (
                " You are its founder: the founder role goes to the longest-standing admin"
                " (else member)."
            )

        def leave() -> None:
            window.close_dialog()
            d = self._controller.call("groups.leave", {"group": group.group_id}, label="leaving")

            def left(_: Any) -> None:
                entry = self.model.contacts.get(group.uid)
                if entry is not None:
                    self.model.upsert_group(
                        {
                            "id": group.group_id,
                            "name": entry.name,
                            "topic": entry.topic,
                            "left": True,
                            "members": entry.members,
                        }
                    )
                self.model.notify(f"you left {group.display_name}")

            d.addCallbacks(left, self._controller.report, errbackArgs=("leaving",))
            d.addBoth(lambda _: self._controller.redraw())

        window.open_dialog(
            confirm_dialog(
                "leave_group",
                question,
                leave,
                window.close_dialog,
            )
        )

    def set_topic(self, group: Contact, topic: str) -> None:
        """``/topic TEXT``: the daemon's topic method, or a clear word that it has none."""
        d = self._controller.call(
            TOPIC_METHODS[0], {"group": group.group_id, "topic": topic}, label="setting topic"
        )

        def done(result: Any) -> None:
            if isinstance(result, Mapping) and isinstance(result.get("group"), Mapping):
                self.model.upsert_group(result["group"])
            self.model.notify(f"topic of {group.display_name} set")
            self.refresh(group.uid)

        def failed(failure: Failure) -> None:
            if getattr(failure.value, "kind", None) == "method_not_found":
                self.model.notify(
                    "this daemon cannot change a group's topic yet (no groups.setTopic)", "error"
                )
                return
            self._controller.report(failure, "setting the topic")

        d.addCallbacks(done, failed)
        d.addBoth(lambda _: self._controller.redraw())

    def refresh(self, key: str) -> None:
        """Reload the group list (counts, topic) and, if its dialog is open, *key*'s members."""
        self.reload()
        dialog = self._controller.window.dialog
        if isinstance(dialog, GroupInfoDialog) and dialog.uid == key:
            group = self.model.contacts.get(key)
            if group is not None:
                self.open_info(group)

    # invitations ---------------------------------------------------------------------------

    def open_invites(self) -> None:
        """``/invites``: the invitations, each with Join and Decline."""
        window = self._controller.window
        window.open_dialog(
            InvitesDialog(self.model.invites, self.answer_invite, window.close_dialog)
        )
        d = self._controller.call("groups.invites")
        d.addCallback(self.model.load_invites)

        def shown(_: Any) -> None:
            if getattr(window.dialog, "kind", None) == "invites":
                window.open_dialog(
                    InvitesDialog(self.model.invites, self.answer_invite, window.close_dialog)
                )

        d.addCallbacks(shown, self._controller.report, errbackArgs=("listing invitations",))
        d.addBoth(lambda _: self._controller.redraw())

    def answer_invite(self, invite: str, join: bool) -> None:
        """Join (``groups.join``) or decline (``groups.decline``) invitation *invite*."""
        window = self._controller.window
        method, label = ("groups.join", "joining") if join else ("groups.decline", "declining")
        d = self._controller.call(method, {"invite": invite}, label=label)

        def done(result: Any) -> None:
            self.model.invites = [i for i in self.model.invites if i.get("id") != invite]
            if getattr(window.dialog, "kind", None) == "invites":
                window.close_dialog()
            if join and isinstance(result, Mapping):
                entry = self.model.upsert_group(result)
                if entry is not None:
                    self._controller.open_conversation(entry.uid)
                    self.model.notify(f"joined {entry.display_name}")
            elif not join:
                self.model.notify("invitation declined")

        d.addCallbacks(done, self._controller.report, errbackArgs=(label,))
        d.addBoth(lambda _: self._controller.redraw())

    # details -------------------------------------------------------------------------------

    def open_info(self, group: Contact) -> None:
        """F3 on a group: its members with their role, presence and path."""
        window = self._controller.window
        key = group.uid
        actions = {
            "leave": lambda: self.confirm_leave(group),
            "close": window.close_dialog,
        }
        known = self.model.member_lines(key) if key in self.model.members else None
        window.open_dialog(GroupInfoDialog(group, known, actions))
        d = self._controller.call("groups.members", {"group": group.group_id})

        def loaded(result: Mapping[str, Any]) -> None:
            self.model.load_members(key, result)
            dialog = window.dialog
            if isinstance(dialog, GroupInfoDialog) and dialog.uid == key:
                current = self.model.contacts.get(key, group)
                window.open_dialog(GroupInfoDialog(current, self.model.member_lines(key), actions))

        d.addCallbacks(loaded, self._controller.report, errbackArgs=("loading the members",))
        d.addBoth(lambda _: self._controller.redraw())


__all__ = ["GROUP_PAGE", "TOPIC_METHODS", "GroupActions", "group_key"]
