"""Tests for groups in the terminal UI (issue 17): the pure model, and the controller on the
fake daemon (jarvis.ui.grouping, reading, sending, dialogs)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jarvis.ui.events import Reaction, ScreenState, reaction_to
from jarvis.ui.model import (
    Contact,
    InputError,
    Message,
    MessengerModel,
    SlashCommand,
    group_key,
    parse_input,
)
from tests.ui_fakes import (
    ME_UID,
    UID_ALICE,
    UID_BOB,
    make_controller,
    make_populated_client,
    press,
    screen_text,
)

GID = "ab" * 16
KEY = group_key(GID)


def group_view(**fields: Any) -> dict[str, Any]:
    view = {"id": GID, "name": "family", "topic": "", "members": 3, "role": "member"}
    view.update(fields)
    return view


def group_message(ident: str, author: str, body: str, index: int, **fields: Any) -> dict:
    message = {
        "id": ident,
        "group": GID,
        "author": author,
        "author_name": {UID_ALICE: "alice", UID_BOB: "bob"}.get(author, "me"),
        "body": body,
        "seq": index + 1,
        "created": 1_700_000_000.0 + index,
        "index": index,
    }
    message.update(fields)
    return message


def unlocked_model() -> MessengerModel:
    model = MessengerModel()
    model.load_identity({"name": "me", "uid": ME_UID})
    model.load_contacts({"contacts": [{"uid": UID_ALICE, "name": "alice"}]})
    return model


class GroupModelTests(SynchronousTestCase):
    """Groups in the pure model: the list entry, messages with authors, unread and marker."""

    def test_groups_sit_beside_contacts(self) -> None:
        """When groups.list and contacts.list load in either order, then both stay listed, a
        group shows as #name, and /msg's contact search never finds a group."""
        model = unlocked_model()
        model.load_groups({"groups": [group_view(unread=2)]})
        model.load_contacts({"contacts": [{"uid": UID_ALICE, "name": "alice"}]})
        model.load_unread({"unread": {UID_ALICE: 1}})
        self.assertEqual(model.contacts[KEY].display_name, "#family")
        self.assertEqual(model.contacts[KEY].unread, 2)
        self.assertEqual(model.total_unread(), 3)
        model.load_groups({"groups": [group_view(name="alice")]})
        self.assertEqual([c.uid for c in model.find_contacts("alice")], [UID_ALICE])
        self.assertEqual([g.uid for g in model.find_groups("#alice")], [KEY])

    def test_group_message_author_and_direction(self) -> None:
        """When group messages arrive from others and from me, then each names its author,
        mine are outgoing, and only others' count unread while the group is not open."""
        model = unlocked_model()
        model.load_groups({"groups": [group_view()]})
        model.apply_event("group.message", {"message": group_message("g1", UID_BOB, "hi", 0)})
        model.apply_event("group.message", {"message": group_message("g2", ME_UID, "yo", 1)})
        messages = model.conversations[KEY].ordered()
        self.assertEqual([(m.author, m.direction) for m in messages], [("bob", "in"), ("", "out")])
        self.assertEqual(model.contacts[KEY].unread, 1)
        model.open(KEY)
        model.apply_event("group.message", {"message": group_message("g3", UID_ALICE, "x", 2)})
        self.assertEqual(model.contacts[KEY].unread, 1)
        self.assertEqual(model.conversations[KEY].ordered()[-1].author, "alice")

    def test_message_of_unknown_group_ignored(self) -> None:
        """When a group.message names a group the list does not have, then nothing is added
        (no conversation appears for it)."""
        model = unlocked_model()
        model.apply_event("group.message", {"message": group_message("g1", UID_BOB, "hi", 0)})
        self.assertNotIn(KEY, model.conversations)
        self.assertNotIn(KEY, model.contacts)

    def test_history_marker_from_unread_count(self) -> None:
        """When a group with 2 unread opens, then the "new messages" marker sits before the
        second newest incoming message (groups.history has no marker of its own)."""
        model = unlocked_model()
        model.load_groups({"groups": [group_view(unread=2)]})
        history = [
            group_message("g1", UID_BOB, "old", 0),
            group_message("g2", ME_UID, "mine", 1),
            group_message("g3", UID_BOB, "new 1", 2),
            group_message("g4", UID_ALICE, "new 2", 3),
        ]
        model.load_history(KEY, {"group": GID, "messages": history})
        self.assertEqual(model.conversations[KEY].marker, "g3")

    def test_removed_dropped_and_invited(self) -> None:
        """When we are removed, messages are dropped and an invitation arrives, then the group
        shows as left, the dropped messages go, and the invitation is listed."""
        model = unlocked_model()
        model.load_groups({"groups": [group_view()]})
        for i, ident in enumerate(("g1", "g2")):
            message = group_message(ident, UID_BOB, "m", i)
            model.apply_event("group.message", {"message": message})
        model.apply_event("group.dropped", {"group": GID, "ids": ["g2"]})
        self.assertEqual(list(model.conversations[KEY].messages), ["g1"])
        model.apply_event("group.removed", {"group": GID, "name": "family"})
        self.assertTrue(model.contacts[KEY].left)
        invite = {"id": "7", "group": "cd" * 16, "name": "team", "from_name": "alice"}
        model.apply_event("group.invited", {"invite": invite})
        self.assertEqual([i["name"] for i in model.invites], ["team"])

    def test_member_lines(self) -> None:
        """When members load, then each line has role, presence and path (mailbox from
        mailbox.status; not a contact when the member is only known through the group)."""
        model = unlocked_model()
        model.load_paths({"contacts": [{"uid": UID_ALICE, "path": "mailbox"}]})
        members = [
            {"uid": ME_UID, "name": "me", "role": "founder", "me": True, "online": True},
            {"uid": UID_ALICE, "name": "alice", "role": "admin", "contact": True},
            {"uid": UID_BOB, "name": "bob", "role": "member", "contact": False, "online": True},
        ]
        model.load_members(KEY, {"members": members})
        self.assertEqual(
            model.member_lines(KEY),
            [
                "me (founder) · me",
                f"alice (admin) · offline · mailbox · {UID_ALICE[:8]}",
                f"bob (member) · online · not a contact · {UID_BOB[:8]}",
            ],
        )

    def test_from_group_needs_id(self) -> None:
        """When a group view or message lacks its id, then building it raises ValueError."""
        with self.assertRaises(ValueError):
            Contact.from_group({"name": "x"})
        with self.assertRaises(ValueError):
            Message.from_group({"group": GID}, ME_UID)

    def test_parse_group_commands(self) -> None:
        """When group slash commands are typed, then they parse with their argument, and a
        missing argument gives the usage."""
        self.assertEqual(
            parse_input("/group create the team"), SlashCommand("group-create", ("the team",))
        )
        self.assertEqual(parse_input("/invite alice"), SlashCommand("invite", ("alice",)))
        self.assertEqual(parse_input('/kick "bob b"'), SlashCommand("kick", ("bob b",)))
        self.assertEqual(
            parse_input("/topic Sunday lunch"), SlashCommand("topic", ("Sunday lunch",))
        )
        self.assertEqual(parse_input("/leave"), SlashCommand("leave"))
        self.assertEqual(parse_input("/join 7"), SlashCommand("join", ("7",)))
        self.assertIsInstance(parse_input("/invite"), InputError)
        self.assertIsInstance(parse_input("/invite alice bob"), InputError)
        self.assertIsInstance(parse_input("/group delete x"), InputError)


def started_with_group(**fields: Any) -> tuple[Any, Any]:
    client = make_populated_client()
    client.add_group(GID, "family", **fields)
    client.add_group_message(GID, UID_BOB, "dinner at 7", author_name="bob", unread=True)
    controller, client, _, _ = make_controller(client)
    return controller, client


def open_group(controller: Any) -> None:
    controller.open_conversation(KEY)


class GroupControllerTests(SynchronousTestCase):
    """The controller with groups on the fake daemon."""

    def test_group_listed_with_unread(self) -> None:
        """When the UI starts, then the group is in the conversation list with its unread
        count, beside the contacts."""
        controller, client = started_with_group()
        self.assertIn("groups.list", client.methods_called())
        self.assertEqual(controller.model.contacts[KEY].unread, 1)
        self.assertIn("#family", screen_text(controller.window, (100, 20)))

    def test_open_shows_authors_and_marks_read(self) -> None:
        """When the group opens, then its history shows with the author on the line, the new
        messages marker, and it is marked read with groups.markRead."""
        controller, client = started_with_group()
        open_group(controller)
        text = screen_text(controller.window, (100, 20))
        self.assertIn("bob: dinner at 7", text)
        self.assertIn("new messages", text)
        self.assertIn(("groups.markRead", {"group": GID}), client.calls)
        self.assertEqual(controller.model.contacts[KEY].unread, 0)

    def test_send_goes_to_groups_send(self) -> None:
        """When a line is typed in an open group, then it goes to groups.send (never to
        messages.send) and shows once, although the answer and the event both carry it."""
        controller, client = started_with_group()
        open_group(controller)
        press(controller, "see you there", "enter", size=(100, 20))
        self.assertIn(("groups.send", {"group": GID, "text": "see you there"}), client.calls)
        self.assertNotIn("messages.send", client.methods_called())
        text = screen_text(controller.window, (100, 20))
        self.assertEqual(text.count("see you there"), 1)

    def test_live_message_from_other_member(self) -> None:
        """When a group.message event arrives for the open group, then it shows with its
        author, and the read mark goes to the daemon."""
        controller, client = started_with_group()
        open_group(controller)
        client.calls.clear()
        message = client.add_group_message(GID, UID_ALICE, "on my way", author_name="alice")
        client.emit("group.message", {"message": message})
        controller.clock.advance(0)
        self.assertIn("alice: on my way", screen_text(controller.window, (100, 20)))
        self.assertIn("groups.markRead", client.methods_called())

    def test_create_opens_group(self) -> None:
        """When /group create NAME is typed, then groups.create is called and the new group
        opens."""
        controller, client = started_with_group()
        press(controller, "meta 1", "/group create the team", "enter", size=(100, 20))
        self.assertIn(("groups.create", {"name": "the team"}), client.calls)
        current = controller.model.current
        self.assertIsNotNone(current)
        self.assertEqual(current.display_name, "#the team")

    def test_invite_and_kick(self) -> None:
        """When /invite alice and /kick alice are typed in an open group, then groups.invite
        and groups.remove are called with the group's id, and the members follow."""
        controller, client = started_with_group()
        open_group(controller)
        press(controller, "/invite alice", "enter", size=(100, 20))
        self.assertIn(("groups.invite", {"group": GID, "contact": "alice"}), client.calls)
        self.assertEqual(len(client.group_members[GID]), 2)
        self.assertEqual(controller.model.contacts[KEY].members, 2)
        press(controller, "/kick alice", "enter", size=(100, 20))
        self.assertIn(("groups.remove", {"group": GID, "member": "alice"}), client.calls)
        self.assertEqual(len(client.group_members[GID]), 1)

    def test_group_command_outside_group(self) -> None:
        """When /invite is typed with a contact's conversation open, then nothing is called
        and the status line says it needs a group."""
        controller, client = started_with_group()
        press(controller, "meta 1", size=(100, 20))
        controller.open_conversation(UID_ALICE)
        press(controller, "/invite bob", "enter", size=(100, 20))
        self.assertNotIn("groups.invite", client.methods_called())
        self.assertIn("open group", controller.model.status.text)

    def test_topic_without_daemon_method(self) -> None:
        """When /topic is typed and the daemon has no groups.setTopic, then the status line
        says the daemon cannot change a topic yet (not a raw error)."""
        controller, client = started_with_group()
        open_group(controller)
        press(controller, "/topic lunch", "enter", size=(100, 20))
        self.assertIn(("groups.setTopic", {"group": GID, "topic": "lunch"}), client.calls)
        self.assertIn("cannot change a group's topic", controller.model.status.text)

    def test_leave_after_confirm(self) -> None:
        """When /leave is typed and confirmed, then groups.leave is called and the group shows
        as left (nothing is called before the confirmation)."""
        controller, client = started_with_group(role="member")
        open_group(controller)
        press(controller, "/leave", "enter", size=(100, 20))
        self.assertNotIn("groups.leave", client.methods_called())
        self.assertEqual(controller.window.dialog.kind, "leave_group")
        press(controller, "enter", size=(100, 20))  # "No" has the focus: nothing happens
        self.assertNotIn("groups.leave", client.methods_called())
        press(controller, "/leave", "enter", "down", "enter", size=(100, 20))
        self.assertIn(("groups.leave", {"group": GID}), client.calls)
        self.assertTrue(controller.model.contacts[KEY].left)

    def test_f3_shows_members(self) -> None:
        """When F3 is pressed in an open group, then the member list shows each member's role
        and presence (from groups.members), not the contact dialog."""
        controller, client = started_with_group()
        client.group_members[GID].append(
            {"uid": UID_BOB, "name": "bob", "role": "member", "contact": True, "online": True}
        )
        open_group(controller)
        press(controller, "f3", size=(100, 30))
        self.assertEqual(controller.window.dialog.kind, "group_info")
        text = screen_text(controller.window, (100, 30))
        self.assertIn("bob (member) · online", text)
        self.assertIn("me (founder)", text)

    def test_invitation_join(self) -> None:
        """When an invitation arrives, then /invites lists it, and Join calls groups.join and
        opens the group."""
        controller, client = started_with_group()
        invite = {
            "id": "5",
            "group": "cd" * 16,
            "name": "team",
            "from": UID_ALICE,
            "from_name": "alice",
            "members": 2,
        }
        client.group_invites.append(invite)
        client.emit("group.invited", {"invite": invite})
        controller.clock.advance(0)
        self.assertIn("/invites", controller.model.status.text)
        press(controller, "meta 1", "/invites", "enter", size=(100, 30))
        self.assertEqual(controller.window.dialog.kind, "invites")
        self.assertIn("#team from alice", screen_text(controller.window, (100, 30)))
        press(controller, "enter", size=(100, 30))  # the first button: Join
        self.assertIn(("groups.join", {"invite": "5"}), client.calls)
        self.assertEqual(controller.model.current_uid, group_key("cd" * 16))


class GroupReactionTests(SynchronousTestCase):
    """What the screen does about group events (jarvis.ui.events, pure)."""

    def state(self, current: str | None) -> ScreenState:
        entry = Contact.from_group(group_view())
        return ScreenState(current, True, False, False, True, None, {KEY: entry}, ME_UID)

    def test_group_message_reactions(self) -> None:
        """When a member writes in a group that is not open, then the bell rings; in the open
        group the read mark goes; my own message (another client of mine) rings nothing; an
        invitation reloads the groups."""
        other = {"message": group_message("g1", UID_BOB, "hi", 0)}
        mine = {"message": group_message("g2", ME_UID, "hi", 1)}
        self.assertIs(reaction_to("group.message", other, self.state(None)), Reaction.BELL)
        self.assertIs(reaction_to("group.message", other, self.state(KEY)), Reaction.MARK_READ)
        self.assertIsNone(reaction_to("group.message", mine, self.state(None)))
        invited = {"invite": {"id": "1", "name": "team"}}
        self.assertIs(
            reaction_to("group.invited", invited, self.state(None)), Reaction.REFRESH_GROUPS
        )
