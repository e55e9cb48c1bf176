"""Reading conversations: opening one, its history pages, read marks and unread counts.

:class:`Reader` owns what the UI asks the daemon for a conversation: on opening it keeps the old
draft and restores the new one, loads the newest page (and older pages when the user scrolls
past the top), marks what is shown read, and refreshes the unread counts after read events.
It must not route keys, build dialogs, send messages nor touch the connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

from jarvis.ui.host import UiHost
from jarvis.ui.model import is_group

#: Messages per ``messages.history`` page the UI asks for.
HISTORY_PAGE = 100


class Reader:
    """Loads conversations and keeps their read marks and unread counts with the daemon.

    :param controller: the controller (:class:`~jarvis.ui.host.UiHost`): daemon calls, model,
        screens.
    """

    log = Logger()

    def __init__(self, controller: UiHost, groups: Any = None) -> None:
        """:param groups: the :class:`~jarvis.ui.grouping.GroupActions` (a group's history and
        read marks go through ``groups.*``)."""
        self._controller = controller
        self._groups = groups
        self.model = controller.model
        self.main_screen = controller.main_screen
        self._loading_older = False

    def load_older(self) -> None:
        """Fetch the page before the oldest loaded message (scrolling past the top)."""
        uid = self.model.current_uid
        conversation = self.model.conversations.get(uid) if uid is not None else None
        if uid is None or conversation is None or not conversation.older:
            return
        if self._loading_older or is_group(uid):
            return  # a group's history is one page (groups.history has no cursor)
        self._loading_older = True
        params = {"contact": uid, "limit": HISTORY_PAGE, "before": conversation.older}
        d = self._controller.call("messages.history", params)
        d.addCallback(lambda result: self.model.load_history(uid, result, older=True))
        d.addErrback(self._controller.report, "loading older messages")

        def done(_: Any) -> None:
            self._loading_older = False
            self._controller.redraw()

        d.addBoth(done)

    def fetch_unread(self) -> None:
        """Fetch ``messages.unreadCounts`` (once for a burst of read events)."""
        if not self._controller.connected() or self.model.locked:
            return
        d = self._controller.call("messages.unreadCounts")
        d.addCallback(self.model.load_unread)
        d.addErrback(lambda f: self.log.info("unread counts: {e}", e=type(f.value).__name__))
        d.addCallback(lambda _: self._controller.redraw())

    def open_conversation(self, uid: str) -> None:
        """Open *uid*'s conversation: keep the old draft, restore this one, load, mark read."""
        if uid not in self.model.contacts:
            return
        self._controller.save_draft()
        self.model.open(uid)
        draft = self.model.draft(uid)
        self.main_screen.input.set_edit_text(draft)
        self.main_screen.input.set_edit_pos(len(draft))
        self.main_screen.conversations.select(uid)
        self.main_screen.focus_area("input")
        self._controller.announce_focus()
        self.load_history(uid)

    def load_history(self, uid: str) -> None:
        """Load *uid*'s newest page; if it is the conversation shown, mark it read."""
        if is_group(uid) and self._groups is not None:
            d = self._groups.history(uid)
        else:
            d = self._controller.call("messages.history", {"contact": uid, "limit": HISTORY_PAGE})

        def loaded(result: Mapping[str, Any]) -> None:
            self.model.load_history(uid, result)
            if uid == self.model.current_uid and self._controller.on_main_screen():
                self.mark_read(uid)

        d.addCallback(loaded)
        d.addErrback(self._controller.report, "loading history")
        d.addCallback(lambda _: self._controller.redraw())

    def mark_open_read(self) -> None:
        """Mark the open conversation read, if the main screen shows it."""
        uid = self.model.current_uid
        if uid is not None and self._controller.on_main_screen():
            self.mark_read(uid)

    def mark_read(self, uid: str) -> None:
        """Mark *uid*'s conversation read (here and in the daemon), if anything is unread."""
        if is_group(uid):
            if self._groups is not None:
                self._groups.mark_read(uid)
            return
        contact = self.model.contacts.get(uid)
        conversation = self.model.conversations.get(uid)
        unread_loaded = conversation is not None and any(
            m.direction == "in" and m.state == "received" and m.read is None
            for m in conversation.messages.values()
        )
        if contact is None or not (contact.unread or unread_loaded):
            return
        self.model.mark_read(uid)
        d = self._controller.call("messages.markRead", {"contact": uid})
        d.addErrback(self._controller.report, "marking read")
