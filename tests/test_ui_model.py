"""Tests for jarvis.ui.model: state fed by API results and events, without urwid."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from jarvis.ui.model import (
    ConnectionSummary,
    Conversation,
    InputError,
    InputHistory,
    Message,
    MessengerModel,
    SendText,
    SlashCommand,
    parse_input,
    password_hint,
)
from tests.ui_fakes import NOW, UID_ALICE, UID_BOB, UID_CAROL, make_contact


def make_model() -> tuple[MessengerModel, list[str]]:
    """A model with alice (online), bob and carol, and the list of change words it reports."""
    model = MessengerModel()
    changes: list[str] = []
    model.observe(changes.append)
    model.load_contacts(
        [
            make_contact(UID_ALICE, "alice", status="online", last_activity=NOW - 10),
            make_contact(UID_BOB, "bob", last_activity=NOW - 5),
            make_contact(UID_CAROL, "carol"),
        ]
    )
    return model, changes


def message(ident: str, uid: str, created: float = NOW, direction: str = "in") -> dict:
    """The API form of a message."""
    return {
        "id": ident,
        "contact": uid,
        "direction": direction,
        "body": "hello",
        "state": "received" if direction == "in" else "queued",
        "created": created,
    }


class SummaryTests(SynchronousTestCase):
    """The connection summary's text and colour."""

    def test_levels(self) -> None:
        """When all, some or none are online, then the colour is green, amber or red."""
        self.assertEqual(ConnectionSummary.from_counts(3, 3).level, "green")
        self.assertEqual(ConnectionSummary.from_counts(1, 3).level, "amber")
        self.assertEqual(ConnectionSummary.from_counts(0, 3).level, "red")
        self.assertEqual(ConnectionSummary.from_counts(1, 3).text, "1/3 online")

    def test_unreachable(self) -> None:
        """When the daemon is unreachable, then the summary is grey 'daemon unreachable'."""
        model, changes = make_model()
        model.load_summary({"summary": "green", "online": 3, "total": 3})
        model.set_reachable(False)
        self.assertEqual(model.summary.level, "grey")
        self.assertEqual(model.summary.text, "daemon unreachable")
        self.assertEqual(model.summary.style, "summary_grey")
        self.assertIn("reachable", changes)

    def test_event(self) -> None:
        """When a connection.summary event arrives, then the summary follows it."""
        model, _ = make_model()
        model.apply_event("connection.summary", {"summary": "red", "online": 0, "total": 2})
        self.assertEqual((model.summary.level, model.summary.text), ("red", "0/2 online"))


class OrderingTests(SynchronousTestCase):
    """Conversations are ordered by recent activity."""

    def test_order(self) -> None:
        """When contacts have different activity, then the most recent comes first."""
        model, _ = make_model()
        self.assertEqual([c.name for c in model.ordered_contacts()], ["bob", "alice", "carol"])

    def test_new_message_moves_up(self) -> None:
        """When carol writes, then carol moves to the top."""
        model, _ = make_model()
        model.apply_event("message.received", {"message": message("m1", UID_CAROL, NOW)})
        self.assertEqual(model.ordered_contacts()[0].name, "carol")


class ConversationOrderTests(SynchronousTestCase):
    """A conversation keeps its messages oldest first through every kind of change."""

    def sorted_ids(self, conversation: Conversation) -> list[str]:
        return [
            m.id for m in sorted(conversation.messages.values(), key=lambda m: (m.created, m.id))
        ]

    def test_every_change_keeps_the_order(self) -> None:
        """When messages arrive newest-last, out of order, with equal times, change state,
        change time and are cleared, then ordered() always equals a fresh sort, and the newest
        time follows."""
        conversation = Conversation(UID_ALICE)
        self.assertEqual(conversation.ordered(), [])
        self.assertIsNone(conversation.last_activity())
        steps = [
            Message("b", UID_ALICE, "in", "2", "received", NOW + 2),
            Message("d", UID_ALICE, "in", "4", "received", NOW + 4),
            Message("a", UID_ALICE, "in", "1", "received", NOW + 1),  # older: goes before
            Message("c", UID_ALICE, "in", "2 too", "received", NOW + 2),  # same time, id after b
            Message("b", UID_ALICE, "in", "2", "read", NOW + 2),  # new state, same place
            Message("a", UID_ALICE, "in", "1", "received", NOW + 9),  # new time: moves last
        ]
        for step in steps:
            conversation.put(step)
            ordered = conversation.ordered()
            self.assertEqual([m.id for m in ordered], self.sorted_ids(conversation))
            self.assertEqual([m for m in ordered], [conversation.messages[m.id] for m in ordered])
            self.assertEqual(conversation.last_activity(), ordered[-1].created)
        self.assertEqual([m.id for m in conversation.ordered()], ["b", "c", "d", "a"])
        self.assertEqual(conversation.messages["b"].state, "read")
        conversation.clear()
        self.assertEqual(conversation.ordered(), [])
        conversation.put(steps[0])
        self.assertEqual([m.id for m in conversation.ordered()], ["b"])

    def test_seq_orders_a_burst(self) -> None:
        """When messages of one millisecond arrive with the daemon's seq and ids that sort
        the other way, then they are shown in seq order, also when one arrives late."""
        model = MessengerModel()
        for seq, ident in ((1, "z"), (2, "y"), (4, "w"), (3, "x")):
            model.apply_event(
                "message.received",
                {"message": {**message(ident, UID_ALICE, NOW), "seq": seq, "body": str(seq)}},
            )
        ordered = model.conversations[UID_ALICE].ordered()
        self.assertEqual([m.body for m in ordered], ["1", "2", "3", "4"])
        self.assertEqual([m.seq for m in ordered], [1, 2, 3, 4])


class UnreadTests(SynchronousTestCase):
    """Unread counts follow messages, the open conversation and markRead."""

    def test_received_elsewhere_counts(self) -> None:
        """When a message arrives for a closed conversation, then its unread count grows."""
        model, changes = make_model()
        model.apply_event("message.received", {"message": message("m1", UID_ALICE)})
        model.apply_event("message.received", {"message": message("m1", UID_ALICE)})
        self.assertEqual(model.contacts[UID_ALICE].unread, 1)
        self.assertEqual(model.total_unread(), 1)
        self.assertIn("messages", changes)

    def test_open_conversation_does_not_count(self) -> None:
        """When a message arrives for the open conversation, then no unread is counted."""
        model, _ = make_model()
        model.open(UID_ALICE)
        model.apply_event("message.received", {"message": message("m1", UID_ALICE)})
        self.assertEqual(model.contacts[UID_ALICE].unread, 0)

    def test_counts_and_mark_read(self) -> None:
        """When unreadCounts is loaded and then marked read, then the count goes to zero."""
        model, _ = make_model()
        model.load_unread({UID_BOB: 4})
        self.assertEqual(model.contacts[UID_BOB].unread, 4)
        self.assertEqual(getattr(model.next_unread(), "uid", None), UID_BOB)
        model.mark_read(UID_BOB)
        self.assertEqual(model.contacts[UID_BOB].unread, 0)
        self.assertIsNone(model.next_unread())


class HistoryTests(SynchronousTestCase):
    """Messages per conversation, with the marker and state changes."""

    def test_history_and_marker(self) -> None:
        """When a history page arrives, then messages are oldest first and the marker is kept."""
        model, _ = make_model()
        model.load_history(
            UID_ALICE,
            {
                "messages": [message("m2", UID_ALICE, NOW), message("m1", UID_ALICE, NOW - 60)],
                "next": None,
                "marker": "m2",
            },
        )
        conversation = model.conversations[UID_ALICE]
        self.assertEqual([m.id for m in conversation.ordered()], ["m1", "m2"])
        self.assertEqual(conversation.marker, "m2")
        self.assertTrue(conversation.loaded)

    def test_state_changed(self) -> None:
        """When message.stateChanged arrives, then the message's state and time change."""
        model, _ = make_model()
        model_message = Message.from_api(message("m1", UID_ALICE, direction="out"))
        model.add_message(model_message)
        model.apply_event(
            "message.stateChanged",
            {"id": "m1", "contact": UID_ALICE, "state": "delivered", "at": NOW + 5},
        )
        updated = model.conversations[UID_ALICE].messages[model_message.id]
        self.assertEqual((updated.state, updated.delivered), ("delivered", NOW + 5))

    def test_malformed_events_ignored(self) -> None:
        """When events carry junk, then the model ignores them without raising."""
        model, _ = make_model()
        model.apply_event("message.received", {"message": "nope"})
        model.apply_event("message.received", {"message": {"id": 1}})
        model.apply_event("peer.statusChanged", {"peer": {"uid": UID_BOB, "status": "weird"}})
        model.apply_event("unknown.event", {})
        self.assertEqual(model.total_unread(), 0)


class ContactEventTests(SynchronousTestCase):
    """Peer status and contact changes."""

    def test_peer_status(self) -> None:
        """When peer.statusChanged says bob is online, then bob's status is online."""
        model, _ = make_model()
        model.apply_event("peer.statusChanged", {"peer": {"uid": UID_BOB, "status": "online"}})
        self.assertEqual(model.contacts[UID_BOB].status, "online")

    def test_changed_and_removed(self) -> None:
        """When contact.changed renames and then removes bob, then the model follows."""
        model, _ = make_model()
        model.open(UID_BOB)
        model.apply_event("contact.changed", {"contact": make_contact(UID_BOB, "robert")})
        self.assertEqual(model.contacts[UID_BOB].name, "robert")
        model.apply_event("contact.changed", {"uid": UID_BOB, "removed": True})
        self.assertNotIn(UID_BOB, model.contacts)
        self.assertIsNone(model.current_uid)


class PathTests(SynchronousTestCase):
    """The path per contact from ``mailbox.status``."""

    def test_load_paths(self) -> None:
        """When mailbox.status lists paths, then the model keeps the known ones, skips odd
        entries and reports a change only when something changed; a peer coming online with
        a direct path is direct at once."""
        model, changes = make_model()
        status = {
            "contacts": [
                {"uid": UID_ALICE, "path": "direct"},
                {"uid": UID_BOB, "path": "mailbox"},
                {"uid": UID_CAROL, "path": "teleport"},
                {"path": "none"},
                "junk",
            ]
        }
        model.load_paths(status)
        self.assertEqual(model.paths, {UID_ALICE: "direct", UID_BOB: "mailbox"})
        self.assertIsNone(model.path_of(UID_CAROL))
        self.assertEqual(changes[-1], "contacts")
        changes.clear()
        model.load_paths(status)
        self.assertEqual(changes, [])
        peer = {"uid": UID_BOB, "status": "online", "path": "direct"}
        model.apply_event("peer.statusChanged", {"peer": peer})
        self.assertEqual(model.path_of(UID_BOB), "direct")


class LockTests(SynchronousTestCase):
    """Locking hides every conversation."""

    def test_locked_event_drops_conversations(self) -> None:
        """When identity.locked arrives, then no contact or message stays loaded."""
        model, changes = make_model()
        model.load_history(UID_ALICE, {"messages": [message("m1", UID_ALICE)], "marker": None})
        model.apply_event("identity.locked", {})
        self.assertTrue(model.locked)
        self.assertEqual(model.contacts, {})
        self.assertEqual(model.conversations[UID_ALICE].messages, {})
        self.assertIn("lock", changes)


class DraftTests(SynchronousTestCase):
    """Drafts are kept per conversation."""

    def test_drafts(self) -> None:
        """When drafts are set for two conversations, then each keeps its own."""
        model, _ = make_model()
        model.set_draft(UID_ALICE, "for alice")
        model.set_draft(UID_BOB, "for bob")
        self.assertEqual(model.draft(UID_ALICE), "for alice")
        self.assertEqual(model.draft(UID_BOB), "for bob")
        self.assertEqual(model.draft(UID_CAROL), "")


class InputHistoryTests(SynchronousTestCase):
    """Up/Down history keeps the line being typed."""

    def test_browse(self) -> None:
        """When browsing back and forth, then lines come in order and the pending line returns."""
        history = InputHistory()
        for line in ("one", "two", "two", " "):
            history.add(line)
        self.assertEqual(history.entries, ("one", "two"))
        self.assertEqual(history.previous("typing"), "two")
        self.assertEqual(history.previous("two"), "one")
        self.assertIsNone(history.previous("one"))
        self.assertEqual(history.next(), "two")
        self.assertEqual(history.next(), "typing")
        self.assertIsNone(history.next())


class OperationTests(SynchronousTestCase):
    """Operations in flight."""

    def test_begin_end(self) -> None:
        """When an operation begins and ends, then it is listed and then gone."""
        model, changes = make_model()
        op = model.begin_operation("sending")
        self.assertEqual(list(model.operations.values()), [op])
        model.end_operation(op)
        model.end_operation(op)
        self.assertEqual(model.operations, {})
        self.assertEqual(changes.count("operations"), 2)


class ParseInputTests(SynchronousTestCase):
    """Slash commands in the input line."""

    def test_commands(self) -> None:
        """When lines are typed, then they parse as text, commands or usage errors."""
        self.assertIsNone(parse_input("   "))
        self.assertEqual(parse_input("hi"), SendText("hi"))
        self.assertEqual(parse_input("//etc"), SendText("/etc"))
        self.assertEqual(parse_input("/lock"), SlashCommand("lock"))
        self.assertEqual(parse_input("/quit"), SlashCommand("quit"))
        self.assertEqual(parse_input("/help"), SlashCommand("help"))
        self.assertEqual(parse_input("/add jarvis://x"), SlashCommand("add", ("jarvis://x",)))
        self.assertEqual(parse_input("/msg bob hi there"), SlashCommand("msg", ("bob", "hi there")))
        self.assertEqual(
            parse_input('/msg "bob smith" hi'), SlashCommand("msg", ("bob smith", "hi"))
        )
        self.assertIsInstance(parse_input("/msg bob"), InputError)
        self.assertIsInstance(parse_input("/add"), InputError)
        self.assertIsInstance(parse_input("/frobnicate"), InputError)

    def test_find_contacts(self) -> None:
        """When /msg names a contact by name or uid prefix, then it is found."""
        model, _ = make_model()
        self.assertEqual([c.uid for c in model.find_contacts("BOB")], [UID_BOB])
        self.assertEqual([c.uid for c in model.find_contacts("ccc")], [UID_CAROL])
        self.assertEqual(model.find_contacts("nobody"), [])


class PasswordHintTests(SynchronousTestCase):
    """The strength hint of the identity form."""

    def test_levels(self) -> None:
        """When passwords get longer and more varied, then the hint improves."""
        self.assertEqual(password_hint("").level, "empty")
        self.assertEqual(password_hint("abc").level, "weak")
        self.assertEqual(password_hint("abcdef1234").level, "fair")
        self.assertEqual(password_hint("correct horse battery").level, "strong")
