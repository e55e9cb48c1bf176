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
from jarvis.ui.widgets import delivery_mark
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


def delivery(ident: str, delivered: int, members: int) -> dict[str, Any]:
    return {"group": GID, "id": ident, "delivered": delivered, "members": members}


def line_of(text: str, body: str) -> str:
    """The one screen line showing *body*, its padding before the mark squeezed to a space."""
    lines = [" ".join(line.split()) for line in text.splitlines() if body in line]
    if len(lines) != 1:
        raise AssertionError(f"{body!r} on {len(lines)} lines of {text!r}")
    return lines[0]


class GroupDeliveryModelTests(SynchronousTestCase):
    """ "Delivered to 3 of 9" in the model: my group messages' counts, kept only growing."""

    def loaded(self, **mine: Any) -> MessengerModel:
        model = unlocked_model()
        model.load_groups({"groups": [group_view()]})
        history = [
            group_message("g1", UID_BOB, "hi", 0, delivered=None, members=None),
            group_message("g2", ME_UID, "yo", 1, **({"delivered": 1, "members": 3} | mine)),
        ]
        model.load_history(KEY, {"group": GID, "messages": history})
        return model

    def counts(self, model: MessengerModel, ident: str = "g2") -> tuple[Any, Any, str]:
        message = model.conversations[KEY].messages[ident]
        return message.group_delivered, message.group_members, message.state

    def test_history_then_events_count_up(self) -> None:
        """When my message loads at 1 of 3 and group.delivery says 2 then 3, then it counts up
        and is delivered at 3 of 3; a late event (2) or an older page (1) never takes it
        back; another member's message carries no count."""
        model = self.loaded()
        self.assertEqual(self.counts(model), (1, 3, "sent"))
        self.assertEqual(self.counts(model, "g1"), (None, None, "received"))
        model.apply_event(
            "group.delivery", {"group": GID, "id": "g2", "delivered": 2, "members": 3}
        )
        self.assertEqual(self.counts(model), (2, 3, "sent"))
        model.apply_event(
            "group.delivery", {"group": GID, "id": "g2", "delivered": 3, "members": 3}
        )
        self.assertEqual(self.counts(model), (3, 3, "delivered"))
        model.apply_event(
            "group.delivery", {"group": GID, "id": "g2", "delivered": 2, "members": 3}
        )
        self.assertEqual(self.counts(model), (3, 3, "delivered"))
        older = [group_message("g2", ME_UID, "yo", 1, delivered=1, members=3)]
        model.load_history(KEY, {"group": GID, "messages": older})
        self.assertEqual(self.counts(model), (3, 3, "delivered"))

    def test_event_before_the_send_answer(self) -> None:
        """When group.delivery for my new message arrives before the send's answer (which
        says 0 of 2), then the line shows the event's 1 of 2, not 0."""
        model = self.loaded()
        model.apply_event(
            "group.delivery", {"group": GID, "id": "g9", "delivered": 1, "members": 2}
        )
        self.assertNotIn("g9", model.conversations[KEY].messages)
        answer = group_message("g9", ME_UID, "new", 2, delivered=0, members=2)
        model.add_message(Message.from_group(answer, ME_UID))
        self.assertEqual(self.counts(model, "g9"), (1, 2, "sent"))
        # the group.message event of the same send (also 0 of 2) changes nothing
        model.apply_event("group.message", {"message": answer})
        self.assertEqual(self.counts(model, "g9"), (1, 2, "sent"))
        # a group not open yet: the event waits for its history page (which says 0 of 3)
        model.conversations.clear()
        model.apply_event("group.delivery", delivery("g2", 3, 3))
        self.assertNotIn(KEY, model.conversations)
        mine = [group_message("g2", ME_UID, "yo", 1, delivered=0, members=3)]
        model.load_history(KEY, {"group": GID, "messages": mine})
        self.assertEqual(self.counts(model), (3, 3, "delivered"))

    def test_malformed_or_foreign_delivery_ignored(self) -> None:
        """When group.delivery names another member's message, an unknown group, or carries
        a count that is not a non-negative integer, then nothing changes (no conversation
        appears for the unknown group)."""
        model = self.loaded()
        bad = [
            {"group": GID, "id": "g1", "delivered": 2, "members": 3},
            {"group": "cd" * 16, "id": "g2", "delivered": 3, "members": 3},
            {"group": GID, "id": "g2", "delivered": True, "members": 3},
            {"group": GID, "id": "g2", "delivered": -1, "members": 3},
            {"group": GID, "id": "g2", "delivered": "3", "members": 3},
            {"group": GID, "id": "g2", "delivered": 3, "members": None},
            {"group": GID, "delivered": 3, "members": 3},
        ]
        for payload in bad:
            model.apply_event("group.delivery", payload)
        self.assertEqual(self.counts(model), (1, 3, "sent"))
        self.assertEqual(self.counts(model, "g1"), (None, None, "received"))
        self.assertNotIn(group_key("cd" * 16), model.conversations)

    def test_marks(self) -> None:
        """When a line's mark is chosen, then my group message says ✓ n/m while some members
        lack it and ✓✓ m/m once all have it; a group of one and 1:1 messages keep the plain
        marks (with ✉ for the mailbox)."""
        base = Message.from_group(group_message("g2", ME_UID, "yo", 1), ME_UID)
        self.assertEqual(delivery_mark(base.with_group_delivery(3, 9)), ("✓ 3/9", "mark_sent"))
        self.assertEqual(
            delivery_mark(base.with_group_delivery(9, 9)), ("✓✓ 9/9", "mark_delivered")
        )
        self.assertEqual(delivery_mark(base.with_group_delivery(0, 0)), ("✓", "mark_sent"))
        direct = Message("m1", UID_ALICE, "out", "hi", "delivered", 0.0, path="mailbox")
        self.assertEqual(delivery_mark(direct), ("✉✓✓", "mark_delivered"))
        body = "\x1b[31mred\u202e"
        hostile = group_message("g3", ME_UID, body, 2, delivered="\x1b[2J", members=2)
        message = Message.from_group(hostile, ME_UID)
        self.assertEqual((message.group_delivered, delivery_mark(message)[0]), (None, "✓"))


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

    def test_delivery_count_live(self) -> None:
        """When I write in a group of three, then my line shows ✓ 0/2, and each group.delivery
        updates it live: ✓ 1/2, then ✓✓ 2/2 (also on a 40-column screen)."""
        client = make_populated_client()
        client.add_group(GID, "family")
        client.add_group_member(GID, UID_ALICE, "alice")
        client.add_group_member(GID, UID_BOB, "bob")
        controller, client, _, _ = make_controller(client)
        open_group(controller)
        press(controller, "see you there", "enter", size=(100, 20))
        sent = client.group_messages[GID][-1]
        self.assertEqual((sent["delivered"], sent["members"]), (0, 2))
        body = "me: see you there"
        screen = (100, 20)
        self.assertTrue(line_of(screen_text(controller.window, screen), body).endswith(" ✓ 0/2"))
        client.deliver_group_message(GID, sent["id"])
        self.assertTrue(line_of(screen_text(controller.window, screen), body).endswith(" ✓ 1/2"))
        client.deliver_group_message(GID, sent["id"])
        text = screen_text(controller.window, screen)
        self.assertTrue(line_of(text, body).endswith("see you there ✓✓ 2/2"))
        self.assertIn("✓✓ 2/2", screen_text(controller.window, (40, 12)))

    def test_history_shows_counts_on_my_lines_only(self) -> None:
        """When a group opens whose history has my message stored by 1 of 2, then my line
        shows ✓ 1/2 and the other member's line shows no mark."""
        client = make_populated_client()
        client.add_group(GID, "family")
        client.add_group_member(GID, UID_ALICE, "alice")
        client.add_group_member(GID, UID_BOB, "bob")
        mine = client.add_group_message(GID, ME_UID, "who brings bread")
        mine["delivered"] = 1
        client.add_group_message(GID, UID_BOB, "I do", author_name="bob")
        controller, client, _, _ = make_controller(client)
        open_group(controller)
        text = screen_text(controller.window, (100, 20))
        self.assertTrue(line_of(text, "who brings bread").endswith("who brings bread ✓ 1/2"))
        self.assertNotIn("✓", line_of(text, "bob: I do"))

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

    def test_mute_and_focus(self) -> None:
        """When the group opens, then the daemon is told a group is shown (ui.focus with the
        group's id, so none of its messages raises a notification then); /mute and /unmute
        call groups.setMuted and say what they did."""
        controller, client = started_with_group()
        open_group(controller)
        self.assertEqual(client.focus, "group:" + GID)
        self.assertIn(("ui.focus", {"group": GID}), client.calls)
        press(controller, "/mute", "enter", size=(100, 20))
        self.assertIn(("groups.setMuted", {"group": GID, "muted": True}), client.calls)
        self.assertEqual(
            controller.model.status.text,
            "muted #family: its messages raise no desktop notification",
        )
        press(controller, "/unmute", "enter", size=(100, 20))
        self.assertIn(("groups.setMuted", {"group": GID, "muted": False}), client.calls)
        self.assertTrue(controller.model.status.text.startswith("unmuted #family"))
        controller.open_conversation(UID_ALICE)
        self.assertEqual(client.focus, UID_ALICE)

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

    def test_founder_leave_says_the_role_is_handed_over(self) -> None:
        """When the founder types /leave, then the confirmation says the founder role goes to
        the longest-standing admin (else member), and confirming calls groups.leave."""
        controller, client = started_with_group(role="founder")
        open_group(controller)
        press(controller, "/leave", "enter", size=(120, 20))
        self.assertEqual(controller.window.dialog.kind, "leave_group")
        text = " ".join(screen_text(controller.window, (120, 20)).split())
        self.assertIn("the founder role goes to the longest-standing admin", text)
        press(controller, "down", "enter", size=(120, 20))
        self.assertIn(("groups.leave", {"group": GID}), client.calls)

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
