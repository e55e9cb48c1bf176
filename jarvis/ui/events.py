"""What the UI does about a daemon event beyond updating the model: one pure decision per event.

The model applies every event to its own state (:meth:`MessengerModel.apply_event`); this module
decides the rest (show the lock screen, load after an unlock, mark the open conversation read,
ring the bell, refresh the unread counts, close a removed contact's dialog, reconnect
after ``$/lagged``) from the event and
what the screen shows, as a :class:`Reaction` that the controller carries out.  It must not call
the daemon, draw, or import urwid.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Reaction(enum.Enum):
    """What the controller does after the model applied an event."""

    SHOW_LOCK = "show_lock"
    LOAD_UNLOCKED = "load_unlocked"
    MARK_READ = "mark_read"
    BELL = "bell"
    REFRESH_UNREAD = "refresh_unread"
    CLOSE_CONTACT_DIALOG = "close_contact_dialog"
    #: ask ``mailbox.status`` again: the path per contact (direct, mailbox, none) may differ
    REFRESH_PATHS = "refresh_paths"
    #: ask ``groups.list`` and ``groups.invites`` again (a group's counts, an invitation)
    REFRESH_GROUPS = "refresh_groups"
    #: the daemon dropped events for this client (``$/lagged``): connect again and reload
    RECONNECT = "reconnect"


@dataclass(frozen=True)
class ScreenState:
    """What the screen shows when an event arrives.

    :param current_uid: the open conversation's contact, if any.
    :param on_main: the main screen is shown and the identity is unlocked.
    :param lock_screen: the lock screen is shown.
    :param unlocking: this UI's own unlock is in flight (it loads by itself).
    :param notifications: new-message alerts are on.
    :param contact_dialog_uid: the uid whose contact dialog is open, if any.
    :param contacts: the model's contacts by uid (each with ``muted``); not copied, so that a
        burst of events costs nothing per contact.
    """

    current_uid: str | None
    on_main: bool
    lock_screen: bool
    unlocking: bool
    notifications: bool
    contact_dialog_uid: str | None
    contacts: Mapping[str, Any]
    me: str | None = None  # my uid: my own group messages ring no bell


def reaction_to(name: str, payload: Mapping[str, Any], state: ScreenState) -> Reaction | None:
    """Return what to do about event *name* with *payload* beyond the model (``None``: nothing).

    :param name: the event name (``message.received``...).
    :param payload: its params (already checked to be a dict).
    :param state: what the screen shows.
    """
    if name == "$/lagged":
        # the daemon dropped events it owed this client and is closing the connection
        return Reaction.RECONNECT
    if name == "identity.locked":
        return Reaction.SHOW_LOCK
    if name == "identity.unlocked":
        return Reaction.LOAD_UNLOCKED if state.lock_screen and not state.unlocking else None
    if name == "group.invited":
        return Reaction.REFRESH_GROUPS if state.on_main else None
    if name in ("message.received", "group.message"):
        message = payload.get("message")
        if not isinstance(message, dict):
            return None
        uid = message.get("contact")
        if name == "group.message":
            group = message.get("group")
            uid = "group:" + group if isinstance(group, str) else None
        if not isinstance(uid, str):
            return None
        if uid == state.current_uid and state.on_main:
            # once for a burst of arrivals: each messages.markRead is a round trip and a store
            # write in the daemon, which then reports every message it marked
            return Reaction.MARK_READ
        contact = state.contacts.get(uid)
        incoming = message.get("direction") == "in" or (
            name == "group.message" and message.get("author") != state.me
        )
        if incoming and state.notifications and contact is not None:
            return None if contact.muted else Reaction.BELL
        return None
    if name == "message.stateChanged" and payload.get("state") == "read":
        # Another client (or this one) marked messages read: the daemon's counts are the truth,
        # so every attached UI shows the same unread badges.
        return Reaction.REFRESH_UNREAD
    if name == "contact.changed" and payload.get("removed"):
        if state.contact_dialog_uid is not None and state.contact_dialog_uid == payload.get("uid"):
            return Reaction.CLOSE_CONTACT_DIALOG
    if name in ("mailbox.changed", "peer.statusChanged") and state.on_main:
        return Reaction.REFRESH_PATHS
    return None
