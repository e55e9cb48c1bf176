"""Tests for jarvis.ui.events: what the UI does about a daemon event beyond the model."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jarvis.ui.events import Reaction, ScreenState, reaction_to


class Contact:
    def __init__(self, muted: bool = False) -> None:
        self.muted = muted


def make_state(**changes: Any) -> ScreenState:
    """The main screen with alice's conversation open; bob and the muted carol listed."""
    fields: dict[str, Any] = {
        "current_uid": "alice",
        "on_main": True,
        "lock_screen": False,
        "unlocking": False,
        "notifications": True,
        "contact_dialog_uid": None,
        "contacts": {"alice": Contact(), "bob": Contact(), "carol": Contact(muted=True)},
    }
    fields.update(changes)
    return ScreenState(**fields)


def received(uid: Any, direction: str = "in") -> dict[str, Any]:
    return {"message": {"contact": uid, "direction": direction}}


class ReactionTests(SynchronousTestCase):
    def test_message_received(self) -> None:
        """When a message arrives, then the open conversation is marked read, another contact's
        message rings the bell unless muted or alerts are off, and a bad payload does nothing."""
        state = make_state()
        self.assertIs(reaction_to("message.received", received("alice"), state), Reaction.MARK_READ)
        self.assertIs(reaction_to("message.received", received("bob"), state), Reaction.BELL)
        self.assertIsNone(reaction_to("message.received", received("carol"), state))
        self.assertIsNone(reaction_to("message.received", received("bob", "out"), state))
        self.assertIsNone(reaction_to("message.received", received("dave"), state))
        quiet = make_state(notifications=False)
        self.assertIsNone(reaction_to("message.received", received("bob"), quiet))
        self.assertIsNone(reaction_to("message.received", received(7), state))
        self.assertIsNone(reaction_to("message.received", {"message": "x"}, state))

    def test_lock_and_unlock(self) -> None:
        """When the identity locks, then the lock screen shows; when another client unlocks it
        while the lock screen shows, then the UI loads, but not during its own unlock."""
        self.assertIs(reaction_to("identity.locked", {}, make_state()), Reaction.SHOW_LOCK)
        locked = make_state(lock_screen=True, on_main=False)
        self.assertIs(reaction_to("identity.unlocked", {}, locked), Reaction.LOAD_UNLOCKED)
        own = make_state(lock_screen=True, unlocking=True)
        self.assertIsNone(reaction_to("identity.unlocked", {}, own))

    def test_read_and_removed(self) -> None:
        """When messages are marked read, then the unread counts are refreshed; when the contact
        whose dialog is open is removed, then the dialog closes (another contact's: nothing)."""
        state = make_state(contact_dialog_uid="bob")
        read = {"state": "read"}
        self.assertIs(reaction_to("message.stateChanged", read, state), Reaction.REFRESH_UNREAD)
        removed = {"uid": "bob", "removed": True}
        self.assertIs(reaction_to("contact.changed", removed, state), Reaction.CLOSE_CONTACT_DIALOG)
        other = {"uid": "alice", "removed": True}
        self.assertIsNone(reaction_to("contact.changed", other, state))

    def test_paths_refreshed(self) -> None:
        """When the mailbox changes or a peer's status changes on the main screen, then the
        paths are asked for again; on the lock screen, not (mailbox.status needs the keys)."""
        for name in ("mailbox.changed", "peer.statusChanged"):
            self.assertIs(reaction_to(name, {}, make_state()), Reaction.REFRESH_PATHS)
            locked = make_state(on_main=False, lock_screen=True)
            self.assertIsNone(reaction_to(name, {}, locked))

    def test_lagged_reconnects(self) -> None:
        """When the daemon says $/lagged, then the UI reconnects, whatever the screen shows
        (the lock screen too: the lock events may be among those dropped)."""
        for state in (make_state(), make_state(on_main=False, lock_screen=True)):
            self.assertIs(reaction_to("$/lagged", {"dropped": 3}, state), Reaction.RECONNECT)
