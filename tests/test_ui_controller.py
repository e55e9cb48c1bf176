"""Tests for jarvis.ui.controller: keys, daemon calls, events, lock, cancel, reconnection."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jarvis.common.textsafe import BIDI_CONTROLS, local_time
from jarvis.ipc.jsonrpc import TOO_MANY_ATTEMPTS, RemoteError
from jarvis.ui.controller import FIRST_RETRY, FRAME_INTERVAL
from jarvis.ui.screens import CreateIdentityScreen, LockScreen, WelcomeScreen
from tests.ui_fakes import (
    NOW,
    UID_ALICE,
    UID_BOB,
    UID_CAROL,
    FakeDaemonClient,
    make_controller,
    make_populated_client,
    press,
    remote_error,
    screen_text,
)


def started() -> tuple[Any, FakeDaemonClient, Any, Any]:
    """A controller on the populated fake daemon, plus the client."""
    controller, client, clock, connector = make_controller(make_populated_client())
    assert client is not None
    return controller, client, clock, connector


class StartTests(SynchronousTestCase):
    """What the controller shows after connecting."""

    def test_loads_state(self) -> None:
        """When connected and unlocked, then it subscribes, loads everything, shows main."""
        controller, client, _, _ = started()
        self.assertEqual(
            client.methods_called()[:6],
            [
                "events.subscribe",
                "daemon.status",
                "identity.show",
                "contacts.list",
                "messages.unreadCounts",
                "peers.status",
            ],
        )
        self.assertIs(controller.window.screen, controller.main_screen)
        self.assertEqual(controller.model.total_unread(), 2)

    def test_locked_at_start(self) -> None:
        """When the daemon is locked at start, then the state asked for early is dropped: the
        lock screen shows with no error on the status line."""
        client = make_populated_client()
        client.locked = True
        controller, _, _, _ = make_controller(client)
        self.assertIsInstance(controller.window.screen, LockScreen)
        self.assertIsNone(controller.model.status)
        self.assertNotIn("messages.history", client.methods_called())

    def test_locked_reconnect_asks_status_only(self) -> None:
        """When the UI knows the identity is locked and reconnects, then it asks for the
        status alone, and loads the rest once the status says unlocked."""
        client = make_populated_client()
        client.locked = True
        controller, _, clock, connector = make_controller(client)
        connector.client = None
        client.disconnect()
        fresh = make_populated_client()
        fresh.locked = True
        connector.client = fresh
        clock.advance(FIRST_RETRY)
        self.assertEqual(fresh.methods_called(), ["events.subscribe", "daemon.status"])
        self.assertIsInstance(controller.window.screen, LockScreen)
        fresh.locked = False
        controller.reload()
        self.assertIn("contacts.list", fresh.methods_called())
        self.assertIs(controller.window.screen, controller.main_screen)

    def test_no_identity_welcome_then_create(self) -> None:
        """When no identity exists, then welcome shows and the form creates one."""
        controller, client, _, _ = make_controller(FakeDaemonClient(has_identity=False))
        assert client is not None
        self.assertIsInstance(controller.window.screen, WelcomeScreen)
        press(controller, "enter")
        screen = controller.window.screen
        self.assertIsInstance(screen, CreateIdentityScreen)
        screen.name_edit.set_edit_text("zoe")
        screen.password_edit.set_edit_text("pass phrase one")
        screen.repeat_edit.set_edit_text("pass phrase two")
        screen.submit()
        self.assertIn("differ", screen.error.text)
        screen.repeat_edit.set_edit_text("pass phrase one")
        screen.submit()
        self.assertIn(
            ("identity.create", {"name": "zoe", "password": "pass phrase one"}), client.calls
        )
        self.assertIs(controller.window.screen, controller.main_screen)
        self.assertEqual(getattr(controller.window.dialog, "kind", None), "my_identity")


class ConversationTests(SynchronousTestCase):
    """Opening conversations, marking read, drafts."""

    def test_open_marks_read(self) -> None:
        """When alice's conversation opens, then history loads and it is marked read."""
        controller, client, _, _ = started()
        press(controller, "meta 1")
        self.assertEqual(controller.model.current_uid, UID_ALICE)
        self.assertIn(("messages.markRead", {"contact": UID_ALICE}), client.calls)
        self.assertEqual(controller.model.contacts[UID_ALICE].unread, 0)
        self.assertIn("new messages", screen_text(controller.window))

    def test_next_unread(self) -> None:
        """When Alt+A is pressed, then the next conversation with unread messages opens."""
        controller, _, _, _ = started()
        press(controller, "meta 1", "meta a")
        self.assertEqual(controller.model.current_uid, UID_BOB)

    def test_drafts_per_conversation(self) -> None:
        """When switching with a half-typed line, then each conversation keeps its draft."""
        controller, _, _, _ = started()
        press(controller, "meta 1", "for alice", "meta 2", "for bob", "meta 1")
        self.assertEqual(controller.main_screen.input.edit_text, "for alice")
        press(controller, "meta right")
        self.assertEqual(controller.main_screen.input.edit_text, "for bob")

    def test_received_in_open_conversation_marked_read(self) -> None:
        """When a message arrives for the open conversation, then it shows and is marked read."""
        controller, client, _, _ = started()
        press(controller, "meta 1")
        client.calls.clear()
        message = client.add_message(UID_ALICE, "live!", created=NOW + 5)
        client.emit("message.received", {"message": message})
        self.assertIn("live!", screen_text(controller.window))
        self.assertEqual(controller.model.contacts[UID_ALICE].unread, 0)

    def test_burst_in_open_conversation_marked_read_once(self) -> None:
        """When 50 messages arrive for the open conversation in one reactor turn, then the
        daemon is asked to mark it read once, after the turn."""
        controller, client, clock, _ = started()
        press(controller, "meta 1")
        clock.advance(0)
        client.calls.clear()
        for n in range(50):
            message = client.add_message(UID_ALICE, f"burst {n}", created=NOW + 5 + n)
            client.emit("message.received", {"message": message})
        self.assertNotIn("messages.markRead", client.methods_called())
        clock.advance(0)
        self.assertEqual(client.methods_called().count("messages.markRead"), 1)
        self.assertIn(("messages.markRead", {"contact": UID_ALICE}), client.calls)

    def test_history_arriving_after_open_shows_the_marker(self) -> None:
        """When a conversation's history arrives a round trip after it was opened (as from a
        real daemon), then it opens at the "new messages" marker, not at the newest line."""
        controller, client, clock, _ = started()
        for n in range(40):
            client.add_message(UID_ALICE, f"later {n}", created=NOW + 5 + n, unread=True)
        client.slow.add("messages.history")
        press(controller, "meta 1")
        self.assertIn("Loading...", screen_text(controller.window, (120, 20)))
        method, params, d = client.pending.pop()
        self.assertEqual(method, "messages.history")
        d.callback(client.m_messages_history(params))
        clock.advance(0)
        text = screen_text(controller.window, (120, 20))
        self.assertIn("new messages", text)
        self.assertIn("news!", text)
        self.assertNotIn("later 39", text)

    def test_received_elsewhere_counts_and_rings(self) -> None:
        """When a message arrives for another conversation, then its badge grows."""
        controller, client, _, _ = started()
        bells: list[int] = []
        controller._bell = lambda: bells.append(1)
        press(controller, "meta 1")
        message = client.add_message(UID_BOB, "psst", created=NOW + 5)
        client.emit("message.received", {"message": message})
        self.assertEqual(controller.model.contacts[UID_BOB].unread, 2)
        self.assertEqual(bells, [1])

    def test_browse_typing_goes_to_input(self) -> None:
        """When letters are typed with the list focused, then they land in the input line."""
        controller, _, _, _ = started()
        press(controller, "tab")
        self.assertEqual(controller.window.state, "browse")
        press(controller, "hi")
        self.assertEqual(controller.main_screen.input.edit_text, "hi")
        self.assertEqual(controller.window.state, "input")


class SlashCommandTests(SynchronousTestCase):
    """Slash commands in the input line."""

    def test_msg(self) -> None:
        """When /msg bob text is entered, then the text is sent to bob."""
        controller, client, _, _ = started()
        press(controller, "/msg bob hello bob", "enter")
        self.assertIn(("messages.send", {"contact": UID_BOB, "text": "hello bob"}), client.calls)

    def test_msg_with_nothing_open_opens_the_conversation(self) -> None:
        """When /msg bob hello is entered with no conversation open, then bob's conversation
        opens (as irssi opens a query window) and shows the sent line, once."""
        controller, _client, clock, _ = started()
        self.assertIsNone(controller.model.current_uid)
        press(controller, "/msg bob hello", "enter")
        clock.advance(0)
        self.assertEqual(controller.model.current_uid, UID_BOB)
        text = screen_text(controller.window, (80, 20))
        self.assertIn(" bob · connecting", text)
        self.assertEqual(text.count("me: hello"), 1, text)
        self.assertIn("hi from bob", text)
        self.assertEqual(controller.main_screen.input.edit_text, "")

    def test_msg_elsewhere_stays_and_confirms(self) -> None:
        """When /msg carol is entered while alice's conversation is open, then the UI stays on
        alice, the status line says "sent to carol" and carol's row moves to the top."""
        controller, _client, clock, _ = started()
        press(controller, "meta 1")
        self.assertEqual(controller.model.current_uid, UID_ALICE)
        rows = [r.uid for r in controller.main_screen.conversations.rows_shown()]
        self.assertEqual(rows[0], UID_ALICE)
        press(controller, "/msg carol see you at 8", "enter")
        clock.advance(0)
        self.assertEqual(controller.model.current_uid, UID_ALICE)
        self.assertIsNotNone(controller.model.status)
        self.assertEqual(controller.model.status.text, "sent to carol")
        text = screen_text(controller.window, (100, 20))
        self.assertIn("sent to carol", text)
        self.assertNotIn("see you at 8", text)
        rows = [r.uid for r in controller.main_screen.conversations.rows_shown()]
        self.assertEqual(rows[0], UID_CAROL)

    def test_msg_unknown_names_candidates(self) -> None:
        """When /msg names nobody, then nothing is sent and the status line says so in one
        line, suggesting the contacts whose names are close."""
        controller, client, _, _ = started()
        press(controller, "/msg bobby hi", "enter")
        self.assertNotIn("messages.send", client.methods_called())
        status = controller.model.status
        assert status is not None
        self.assertEqual(status.level, "error")
        self.assertEqual(status.text, "no contact called bobby; did you mean bob?")
        self.assertIsNone(controller.model.current_uid)

    def test_msg_ambiguous_names_candidates(self) -> None:
        """When /msg names two contacts called the same, then nothing is sent and the status
        line names both (name and start of uid)."""
        client = make_populated_client()
        client.add_contact("d" * 52, "bob")
        controller, _, _, _ = make_controller(client)
        press(controller, "/msg bob hi", "enter")
        self.assertNotIn("messages.send", client.methods_called())
        status = controller.model.status
        assert status is not None
        self.assertEqual(status.level, "error")
        self.assertEqual(
            status.text, "2 contacts match bob: bob (bbbbbbbb), bob (dddddddd); use more of the uid"
        )
        self.assertNotIn("\n", status.text)

    def test_msg_failure_restores_the_line(self) -> None:
        """When /msg to another conversation fails, then the typed line comes back."""
        controller, client, _, _ = started()
        press(controller, "meta 1")
        client.failures["messages.send"] = remote_error("invalid_input", "bob is blocked")
        press(controller, "/msg bob hi", "enter")
        self.assertEqual(controller.main_screen.input.edit_text, "/msg bob hi")
        self.assertEqual(controller.model.current_uid, UID_ALICE)

    def test_unknown_and_no_conversation(self) -> None:
        """When text is sent with nothing open or a command is unknown, then the bar says so."""
        controller, client, _, _ = started()
        press(controller, "hello", "enter")
        self.assertIn("open a conversation first", screen_text(controller.window, (120, 20)))
        self.assertEqual(controller.main_screen.input.edit_text, "hello")
        controller.main_screen.input.set_edit_text("")
        press(controller, "/bogus", "enter")
        self.assertIn("unknown command", screen_text(controller.window, (120, 20)))
        self.assertNotIn("messages.send", client.methods_called())

    def test_add(self) -> None:
        """When /add LINK is entered, then the contact is added and its safety code shown."""
        controller, client, _, _ = started()
        press(controller, "/add jarvis://dave", "enter")
        self.assertIn(("contacts.add", {"link": "jarvis://dave", "verified": False}), client.calls)
        text = screen_text(controller.window, (80, 24))
        self.assertIn("12345 67890", text)

    def test_lock_help_quit(self) -> None:
        """When /help, /lock and /quit are entered, then each does its job."""
        controller, client, _, _ = started()
        press(controller, "/help", "enter")
        self.assertEqual(getattr(controller.window.dialog, "kind", None), "help")
        press(controller, "esc", "/lock", "enter")
        self.assertIsInstance(controller.window.screen, LockScreen)
        self.assertIn("identity.lock", client.methods_called())
        controller2, _, _, _ = started()
        press(controller2, "/quit", "enter")
        self.assertEqual(controller2.files.get("<quit>"), "yes")


class LockScreenTests(SynchronousTestCase):
    """Only the password opens the lock screen."""

    def test_refuses_escape_and_wrong_password(self) -> None:
        """When Esc, other keys or a wrong password are tried, then it stays locked."""
        controller, _, _, _ = started()
        press(controller, "meta 1", "draft text", "ctrl l")
        self.assertIsInstance(controller.window.screen, LockScreen)
        press(controller, "esc", "meta 1", "f1", "ctrl n", "tab", "page up")
        self.assertIsInstance(controller.window.screen, LockScreen)
        self.assertIsNone(controller.window.dialog)
        press(controller, "wrong", "enter")
        self.assertIsInstance(controller.window.screen, LockScreen)
        self.assertIn("Wrong password", screen_text(controller.window))
        self.assertNotIn("alice", screen_text(controller.window))
        press(controller, "correct horse", "enter")
        self.assertIs(controller.window.screen, controller.main_screen)
        self.assertEqual(controller.main_screen.input.edit_text, "draft text")

    def test_locked_event(self) -> None:
        """When another UI locks (identity.locked event), then this one shows the lock screen."""
        controller, client, _, _ = started()
        press(controller, "meta 1", "f3")
        client.emit("identity.locked", {})
        self.assertIsInstance(controller.window.screen, LockScreen)
        self.assertIsNone(controller.window.dialog)
        self.assertNotIn("alice", screen_text(controller.window))

    def test_unlocked_event(self) -> None:
        """When another UI unlocks, then this one leaves the lock screen."""
        controller, client, _, _ = started()
        press(controller, "ctrl l")
        client.locked = False
        client.emit("identity.unlocked", {"uid": "m" * 52, "name": "me"})
        self.assertIs(controller.window.screen, controller.main_screen)

    def test_too_many_attempts(self) -> None:
        """When the daemon refuses the password unchecked (-32015), then the lock screen says
        how long to wait (not "Wrong password" or a generic failure) and keeps what was typed;
        once the wait is over, Enter retries the same password."""
        controller, client, _, _ = started()
        press(controller, "ctrl l")
        client.failures["identity.unlock"] = RemoteError(
            TOO_MANY_ATTEMPTS,
            "too many wrong passwords: retry in 12 s (this attempt was not tried)",
            {"kind": "too_many_attempts", "retry_after": 12},
        )
        press(controller, "correct horse", "enter")
        screen = controller.window.screen
        self.assertIsInstance(screen, LockScreen)
        text = screen_text(controller.window, (100, 20))
        self.assertIn("Too many wrong passwords: retry in 12 s", text)
        self.assertNotIn("Wrong password", text)
        self.assertNotIn("failed", text)
        self.assertEqual(screen.password_edit.edit_text, "correct horse")
        del client.failures["identity.unlock"]
        press(controller, "enter")
        self.assertIs(controller.window.screen, controller.main_screen)


class CancelTests(SynchronousTestCase):
    """Ctrl+C cancels what is in flight, else asks whether to quit."""

    def test_cancels_in_flight_call(self) -> None:
        """When a send is in flight and Ctrl+C is pressed, then its Deferred is cancelled."""
        controller, client, clock, _ = started()
        client.slow.add("messages.send")
        press(controller, "meta 1", "slow one", "enter")
        self.assertIn("sending", screen_text(controller.window))
        self.assertEqual(len(controller.inflight), 1)
        press(controller, "ctrl c")
        self.assertEqual(client.cancelled, ["messages.send"])
        self.assertEqual(controller.inflight, {})
        self.assertEqual(controller.main_screen.input.edit_text, "slow one")
        self.assertIsNone(controller.window.dialog)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_quit_confirmation(self) -> None:
        """When nothing is in flight, then Ctrl+C asks; Esc keeps running; Ctrl+C twice quits."""
        controller, _, _, _ = started()
        press(controller, "ctrl c")
        self.assertEqual(getattr(controller.window.dialog, "kind", None), "quit")
        press(controller, "esc")
        self.assertIsNone(controller.window.dialog)
        self.assertNotIn("<quit>", controller.files)
        press(controller, "ctrl c", "ctrl c")
        self.assertEqual(controller.files.get("<quit>"), "yes")

    def test_unlock_cancel(self) -> None:
        """When an unlock is slow, then Ctrl+C on the lock screen cancels it and stays locked."""
        controller, client, _, _ = started()
        press(controller, "ctrl l")
        client.slow.add("identity.unlock")
        press(controller, "correct horse", "enter", "ctrl c")
        self.assertEqual(client.cancelled, ["identity.unlock"])
        self.assertIsInstance(controller.window.screen, LockScreen)


class ReconnectTests(SynchronousTestCase):
    """Disconnect: grey, keep running, retry with backoff, reload."""

    def test_disconnect_and_reconnect(self) -> None:
        """When the daemon goes away and comes back, then grey, retries, then a full reload."""
        controller, client, clock, connector = started()
        press(controller, "meta 1")
        connector.client = None
        client.disconnect()
        text = screen_text(controller.window, (100, 20))
        self.assertIn("daemon unreachable", text)
        self.assertIs(controller.window.screen, controller.main_screen)
        clock.advance(FIRST_RETRY)
        self.assertEqual(connector.attempts, 2)
        fresh = make_populated_client()
        fresh.add_message(UID_ALICE, "while away", created=NOW + 100)
        connector.client = fresh
        clock.advance(FIRST_RETRY * 2)
        self.assertEqual(connector.attempts, 3)
        self.assertIn("events.subscribe", fresh.methods_called())
        self.assertIn("messages.history", fresh.methods_called())
        text = screen_text(controller.window, (100, 20))
        self.assertIn("1/2 online", text)
        self.assertIn("while away", text)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_unreachable_at_start(self) -> None:
        """When no daemon answers at start, then the connecting screen says so and retries."""
        controller, _, clock, connector = make_controller(None)
        self.assertIn("unreachable", screen_text(controller.window))
        connector.client = make_populated_client()
        clock.advance(FIRST_RETRY)
        self.assertIs(controller.window.screen, controller.main_screen)

    def test_stop_cancels_retry(self) -> None:
        """When the UI stops while retrying, then no timer is left behind."""
        controller, _, clock, _ = make_controller(None)
        controller.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class DialogTests(SynchronousTestCase):
    """Dialogs call the daemon and show results."""

    def test_contact_info_verify_and_remove(self) -> None:
        """When F3 is used on alice, then verify toggles and remove asks before removing."""
        controller, client, _, _ = started()
        press(controller, "meta 2", "f3")
        self.assertEqual(getattr(controller.window.dialog, "kind", None), "contact_info")
        self.assertIn("Connections: we dialled 3 times", screen_text(controller.window, (100, 40)))
        actions = controller.window.dialog
        self.assertIsNotNone(actions)
        controller.dialogs.update_contact(UID_BOB, {"verified": True}, "verifying")
        self.assertTrue(client.contacts[UID_BOB]["verified"])
        controller.dialogs.confirm_remove(UID_BOB)
        self.assertEqual(getattr(controller.window.dialog, "kind", None), "remove")
        self.assertIn(UID_BOB, client.contacts)

    def test_contact_info_in_words(self) -> None:
        """When F3 is used on a contact online through a session it dialled, then the details
        say since when in local time and for how long, the traffic in human units, who dialled
        whom, and show no raw epoch value, no "connect successes: 0" and the name once."""
        client = make_populated_client()
        client.health[UID_ALICE] = {
            "uid": UID_ALICE,
            "name": "alice",
            "status": "online",
            "connect_attempts": 0,
            "connect_successes": 0,
            "connect_failures": 0,
            "sessions_accepted": 1,
            "last_error": "connection refused",
            "last_error_at": NOW - 800.5,
            "connected_since": NOW - 720.25,
            "bytes_in": 1536,
            "bytes_out": 3 * 1024 * 1024,
            "messages_in": 4,
            "messages_out": 7,
        }
        controller, _, clock, _ = make_controller(client)
        clock.advance(NOW)
        press(controller, "meta 1", "f3")
        text = screen_text(controller.window, (100, 40))
        self.assertIn(f"Status: online since {local_time(NOW - 720.25, NOW)} (12 min)", text)
        self.assertIn(f"Last error: connection refused (at {local_time(NOW - 800.5, NOW)},", text)
        self.assertIn("13 min ago)", text)
        self.assertIn("Connections: they dialled us once", text)
        self.assertIn("Traffic: 1.5 KiB in, 3.0 MiB out; messages 4 in, 7 out", text)
        self.assertNotIn("1699999", text)
        self.assertNotIn("successes", text)
        self.assertEqual(text.count("Name: alice"), 1)
        self.assertNotIn("name:", text)

    def test_identity_export_and_copy(self) -> None:
        """When F2 is used, then the link shows, the card exports and the link copies."""
        controller, _, _, _ = started()
        press(controller, "f2")
        dialog = controller.window.dialog
        self.assertEqual(getattr(dialog, "kind", None), "my_identity")
        self.assertIn("jarvis://me-link", screen_text(controller.window, (100, 30)))
        dialog.export()
        self.assertIn('{"card": "me"}\n', controller.files.values())
        dialog._walker.set_focus(len(dialog._walker) - 2)  # the "Copy link code" button
        press(controller, "enter")
        self.assertEqual(controller.files["<clipboard>"], "jarvis://me-link")

    def test_add_contact_error(self) -> None:
        """When adding a bad link, then the dialog shows the daemon's message."""
        controller, _, _, _ = started()
        press(controller, "ctrl n", "jarvis://bad", "enter")
        self.assertIn("not valid", screen_text(controller.window, (100, 30)))

    def test_settings_mute(self) -> None:
        """When mute is toggled in settings, then contacts.update is called."""
        controller, client, _, _ = started()
        press(controller, "f4")
        self.assertEqual(getattr(controller.window.dialog, "kind", None), "settings")
        controller.dialogs.update_contact(UID_ALICE, {"muted": True}, "saving")
        self.assertTrue(controller.model.contacts[UID_ALICE].muted)
        self.assertIn(("contacts.update", {"contact": UID_ALICE, "muted": True}), client.calls)


class FakeMainLoop:
    """Counts redraws like ``urwid.MainLoop.draw_screen``."""

    def __init__(self) -> None:
        self.draws = 0
        self.screen = self

    started = True

    def draw_screen(self) -> None:
        self.draws += 1


class RedrawTests(SynchronousTestCase):
    """Network events redraw the screen (urwid only redraws after input)."""

    def test_event_and_unlock_redraw(self) -> None:
        """When an event arrives or an unlock completes, then draw_screen is called at the end
        of that reactor turn."""
        controller, client, clock, _ = started()
        loop = FakeMainLoop()
        controller.attach_main_loop(loop)
        client.emit("connection.summary", {"summary": "green", "online": 2, "total": 2})
        self.assertEqual(loop.draws, 0)
        clock.advance(0)
        self.assertEqual(loop.draws, 1)
        press(controller, "ctrl l")
        clock.advance(0)
        before = loop.draws
        press(controller, "correct horse", "enter")
        clock.advance(0)
        self.assertIs(controller.window.screen, controller.main_screen)
        self.assertGreater(loop.draws, before)

    def test_burst_of_events_drawn_once(self) -> None:
        """When 500 messages arrive in one reactor turn, then the screen is drawn once after
        the turn, showing the last of them, and a later event draws again."""
        controller, client, clock, _ = started()
        loop = FakeMainLoop()
        controller.attach_main_loop(loop)
        press(controller, "meta 1")
        clock.advance(0)
        press(controller, "end")  # it opened at the "new messages" marker: follow the newest
        clock.advance(0)
        loop.draws = 0
        for n in range(500):
            message = client.add_message(UID_ALICE, f"burst {n}", created=NOW + 5 + n)
            client.emit("message.received", {"message": message})
        self.assertEqual(loop.draws, 0)
        clock.advance(0)
        self.assertEqual(loop.draws, 1)
        self.assertIn("burst 499", screen_text(controller.window, (120, 20)))
        message = client.add_message(UID_ALICE, "after", created=NOW + 600)
        client.emit("message.received", {"message": message})
        clock.advance(0)
        self.assertEqual(loop.draws, 2)

    def test_burst_sorts_contacts_once(self) -> None:
        """When 50 messages arrive for another conversation in one reactor turn, then the
        contact list is sorted once, for the one draw, and shows the new order and badge."""
        controller, client, clock, _ = started()

        class RenderingLoop(FakeMainLoop):
            def draw_screen(self) -> None:
                super().draw_screen()
                controller.window.render((120, 20), focus=True)

        controller.attach_main_loop(RenderingLoop())
        press(controller, "meta 1")
        clock.advance(0)
        sorts: list[int] = []
        ordered_contacts = controller.model.ordered_contacts
        self.patch(
            controller.model,
            "ordered_contacts",
            lambda: sorts.append(1) or ordered_contacts(),
        )
        for n in range(50):
            message = client.add_message(UID_CAROL, f"burst {n}", created=NOW + 5 + n)
            client.emit("message.received", {"message": message})
        self.assertEqual(sorts, [])
        clock.advance(0)
        self.assertEqual(sorts, [1])
        first_row = screen_text(controller.window, (120, 20)).splitlines()[1]
        self.assertIn("carol", first_row)
        self.assertIn(" 50 ", first_row)

    def test_a_burst_over_many_turns_is_drawn_once_a_frame(self) -> None:
        """When events keep coming, each in a reactor turn of its own (a folder's files
        arriving), then after the first few draws at once the screen is drawn at most once per
        frame interval, the last draw showing the last event; after a quiet moment one event is
        drawn at the end of its turn again."""
        controller, client, clock, _ = started()
        drawn: list[tuple[float, int]] = []

        class TimedLoop(FakeMainLoop):
            def draw_screen(self) -> None:
                super().draw_screen()
                drawn.append((clock.seconds(), controller.model.summary.online))

        loop = TimedLoop()
        controller.attach_main_loop(loop)
        clock.advance(1.0)
        loop.draws = 0
        drawn.clear()
        step = FRAME_INTERVAL / 10
        for n in range(100):  # ten frame intervals, ten events each, a turn each
            summary = {"summary": "green", "online": n % 2 + 1, "total": 2}
            client.emit("connection.summary", summary)
            clock.advance(step)
        last_event = clock.seconds() - step
        clock.advance(FRAME_INTERVAL)
        self.assertGreaterEqual(loop.draws, 10)
        self.assertLessEqual(loop.draws, 10 + 3 + 1)  # a frame each, and the burst allowed
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(drawn)]
        self.assertGreaterEqual(min(gaps[3:]), FRAME_INTERVAL - 1e-9)
        self.assertGreaterEqual(drawn[-1][0], last_event)
        self.assertEqual(drawn[-1][1], 2)  # the last event's
        clock.advance(1.0)
        quiet = loop.draws
        client.emit("connection.summary", {"summary": "amber", "online": 1, "total": 2})
        clock.advance(0)
        self.assertEqual(loop.draws, quiet + 1)

    def test_no_draw_after_stop(self) -> None:
        """When the UI stops with a draw pending, then the screen is not drawn again."""
        controller, client, clock, _ = started()
        loop = FakeMainLoop()
        controller.attach_main_loop(loop)
        client.emit("connection.summary", {"summary": "amber", "online": 1, "total": 2})
        controller.stop()
        clock.advance(0)
        self.assertEqual(loop.draws, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_broken_event_goes_to_status_line(self) -> None:
        """When handling an event raises, then the status line says so and nothing escapes."""
        controller, client, _, _ = started()

        def boom(name: str, payload: dict) -> None:
            raise RuntimeError("bug")

        self.patch(controller.model, "apply_event", boom)
        client.emit("message.received", {"message": {}})
        self.assertIn("could not show an update", screen_text(controller.window, (120, 20)))
        self.flushLoggedErrors(RuntimeError)


class FocusAndSettingsTests(SynchronousTestCase):
    def test_focus_follows_the_open_conversation(self) -> None:
        """When a conversation is opened and then the UI locks, then the daemon is told which
        conversation is shown, then that none is (so notifications resume)."""
        client = make_populated_client()
        controller, _c, _clock, _connector = make_controller(client)
        uid = UID_ALICE
        controller.open_conversation(uid)
        self.assertEqual(client.focus, uid)
        controller.dialogs.lock()
        self.assertIsNone(client.focus)

    def test_notification_toggle_saved_in_daemon(self) -> None:
        """When notifications are turned off and previews on in the settings dialog, then the
        daemon's settings change accordingly."""
        client = make_populated_client()
        controller, _c, _clock, _connector = make_controller(client)
        controller.dialogs.open_settings()
        press(controller, " ", "down", " ")
        self.assertEqual(client.settings["notifications"], False)
        self.assertEqual(client.settings["bell"], False)
        self.assertEqual(client.settings["previews"], True)


class OlderHistoryTests(SynchronousTestCase):
    def test_scrolling_past_the_top_loads_older_pages(self) -> None:
        """When a conversation has more messages than one page and the user goes to the top,
        then the previous page is fetched with the cursor, until everything is loaded."""
        client = make_populated_client()
        for i in range(250):
            client.add_message(UID_BOB, f"old {i}", created=NOW - 100_000 + i)
        controller, _c, _clock, _connector = make_controller(client)
        controller.open_conversation(UID_BOB)
        conversation = controller.model.conversations[UID_BOB]
        self.assertEqual(len(conversation.messages), 100)
        press(controller, "home")
        self.assertEqual(len(conversation.messages), 200)
        press(controller, "home")
        self.assertEqual(len(conversation.messages), 251)
        self.assertIsNone(conversation.older)
        befores = [p.get("before") for m, p in client.calls if m == "messages.history"]
        self.assertEqual(befores, [None, "100", "200"])


def rows_with(controller: Any, needle: str, size: tuple[int, int] = (100, 30)) -> list[str]:
    """The screen rows of *controller*'s window that contain *needle*."""
    return [line for line in screen_text(controller.window, size).splitlines() if needle in line]


class OtherClientsTests(SynchronousTestCase):
    """Every client of one daemon shows the same conversation."""

    def test_message_sent_by_another_client_appears_with_its_marks(self) -> None:
        """When another client (the CLI, a bot) sends to the open conversation, then the line
        appears from the message.added event, and its delivery mark follows the state events."""
        controller, client, clock, _ = started()
        press(controller, "meta 1")
        message = client.add_message(
            UID_ALICE, "from the cli", direction="out", state="queued", created=NOW + 30
        )
        client.emit("message.added", {"message": dict(message)})
        clock.advance(0)
        self.assertEqual(len(rows_with(controller, "me: from the cli")), 1)
        self.assertTrue(rows_with(controller, "me: from the cli")[0].endswith("…"))
        for state, mark in (("sent", "✓"), ("delivered", "✓✓")):
            client.emit(
                "message.stateChanged",
                {"id": message["id"], "contact": UID_ALICE, "state": state, "at": NOW + 31},
            )
            self.assertTrue(rows_with(controller, "me: from the cli")[0].endswith(mark), state)

    def test_deposited_message_marked_as_via_the_mailbox(self) -> None:
        """When a message becomes sent by a deposit in the contact's mailbox (the state event
        says via mailbox), then its line shows the mailbox mark before the delivery mark, and
        keeps it when delivered; a message sent over the session shows no mailbox mark."""
        controller, client, clock, _ = started()
        press(controller, "meta 1")
        for body in ("deposited", "direct"):
            message = client.add_message(
                UID_ALICE, body, direction="out", state="queued", created=NOW + 30
            )
            client.emit("message.added", {"message": dict(message)})
            clock.advance(0)
            change = {"id": message["id"], "contact": UID_ALICE, "state": "sent", "at": NOW}
            if body == "deposited":
                change.update(via="mailbox", path="mailbox")
            client.emit("message.stateChanged", change)
        self.assertTrue(rows_with(controller, "me: deposited")[0].endswith("✉✓"))
        self.assertTrue(rows_with(controller, "me: direct")[0].endswith(" ✓"))
        deposited = next(m for m in client.messages[UID_ALICE] if m["body"] == "deposited")
        client.emit(
            "message.stateChanged",
            {"id": deposited["id"], "contact": UID_ALICE, "state": "delivered", "at": NOW},
        )
        self.assertTrue(rows_with(controller, "me: deposited")[0].endswith("✉✓✓"))

    def test_own_send_shown_once_whatever_the_order(self) -> None:
        """When the UI's own send is reported by the event, then by a state change, and the
        call's answer (state queued) comes last, then the line shows once, still sent."""
        controller, client, clock, _ = started()
        press(controller, "meta 1")
        client.slow.add("messages.send")
        press(controller, "only once", "enter")
        _method, params, d = client.pending.pop()
        answer = client.m_messages_send(params)  # emits message.added to the UI
        client.emit(
            "message.stateChanged",
            {"id": answer["id"], "contact": UID_ALICE, "state": "sent", "at": NOW + 61},
        )
        d.callback(answer)
        clock.advance(0)
        rows = rows_with(controller, "me: only once")
        self.assertEqual(len(rows), 1, rows)
        self.assertTrue(rows[0].endswith("✓"), rows)

    def test_two_uis_show_both_lines_once(self) -> None:
        """When two UIs on one daemon each send to bob, then both show both lines, each once,
        in the daemon's order."""
        client = make_populated_client()
        first, _, clock1, _ = make_controller(client)
        second, _, clock2, _ = make_controller(client)
        for ui in (first, second):
            press(ui, "meta 2")
            self.assertEqual(ui.model.current_uid, UID_BOB)
        press(first, "from the first ui", "enter")
        press(second, "from the second ui", "enter")
        clock1.advance(0)
        clock2.advance(0)
        for ui in (first, second):
            lines = [
                line
                for line in screen_text(ui.window, (100, 30)).splitlines()
                if "me: from the" in line
            ]
            self.assertEqual(len(lines), 2, lines)
            self.assertIn("from the first ui", lines[0])
            self.assertIn("from the second ui", lines[1])


class HostileTextTests(SynchronousTestCase):
    """Names and bodies from peers cannot reorder what the screen shows."""

    def test_no_bidi_controls_reach_the_screen(self) -> None:
        """When a contact's name and message carry bidi overrides and isolates (U+202E, U+2066)
        and an escape sequence, then no bidi control is rendered anywhere: list, title,
        scrollback, details; the visible text survives."""
        client = make_populated_client()
        evil = "e" * 52
        client.add_contact(evil, "\u202eevil\u2066", status="online", addresses=["\u202e1.2.3.4"])
        client.add_message(evil, "pay \u202e0001\u202c now \x1b]0;title\x07", created=NOW + 1)
        controller, _, clock, _ = make_controller(client)
        press(controller, "meta 1")
        self.assertEqual(controller.model.current_uid, evil)
        clock.advance(0)
        screens = [screen_text(controller.window, (100, 30))]
        press(controller, "f3")
        screens.append(screen_text(controller.window, (100, 40)))
        for text in screens:
            self.assertFalse(set(text) & BIDI_CONTROLS, text)
            self.assertNotIn("\x1b", text)
        self.assertIn("evil: pay 0001 now", screens[0])
        self.assertIn("Name: evil", screens[1])
        self.assertIn("Addresses: 1.2.3.4", screens[1])


def bodies(controller: Any, uid: str) -> list[str]:
    """The bodies of *uid*'s loaded messages, oldest first."""
    conversation = controller.model.conversations.get(uid)
    if conversation is None:
        return []
    return [m.body for m in conversation.messages.values()]


class MissedEventsTests(SynchronousTestCase):
    """Events the UI never got ($/lagged, a locked daemon): it reloads what it shows."""

    def _meanwhile(self, client: FakeDaemonClient) -> None:
        """Messages the daemon stored without telling this UI."""
        client.add_message(UID_ALICE, "while suspended", created=NOW + 100)
        client.add_message(UID_BOB, "bob meanwhile", created=NOW + 101, unread=True)

    def _assert_caught_up(self, controller: Any) -> None:
        self.assertEqual(controller.model.current_uid, UID_ALICE)
        self.assertIn("while suspended", bodies(controller, UID_ALICE))
        self.assertEqual(controller.model.contacts[UID_BOB].unread, 2)
        self.assertIs(controller.window.screen, controller.main_screen)
        self.assertIn("while suspended", screen_text(controller.window, (100, 20)))

    def test_lagged_then_disconnected(self) -> None:
        """When the daemon says $/lagged and closes the connection, then the UI reconnects,
        subscribes again and shows the messages that arrived meanwhile, with their counts."""
        controller, client, clock, connector = started()
        press(controller, "meta 1")
        fresh = make_populated_client()
        self._meanwhile(fresh)
        connector.client = fresh
        client.emit("$/lagged", {"dropped": 12, "message": "lagged, resubscribe"})
        client.disconnect()
        clock.advance(FIRST_RETRY)
        self.assertIn("events.subscribe", fresh.methods_called())
        self._assert_caught_up(controller)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lagged_drops_the_connection_itself(self) -> None:
        """When the daemon says $/lagged but has not closed yet, then the UI closes the
        connection itself (no wait for the daemon's grace period), says so, and reloads."""
        controller, client, clock, connector = started()
        press(controller, "meta 1")
        fresh = make_populated_client()
        self._meanwhile(fresh)
        connector.client = fresh
        client.emit("$/lagged", {"dropped": 12, "message": "lagged, resubscribe"})
        self.assertTrue(client.closed)
        self.assertIn("missed 12 updates", screen_text(controller.window, (100, 20)))
        clock.advance(FIRST_RETRY)
        self.assertEqual(connector.attempts, 2)
        self._assert_caught_up(controller)
        client.disconnect()  # the daemon's own close, late: changes nothing
        self.assertIs(controller.client, fresh)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_unlocked_event_reloads(self) -> None:
        """When another client locks, messages arrive while locked (no events), and another
        client unlocks, then the UI reloads contacts, the open conversation and the counts."""
        controller, client, clock, _ = started()
        press(controller, "meta 1")
        client.locked = True
        client.emit("identity.locked", {})
        self.assertIsInstance(controller.window.screen, LockScreen)
        self.assertEqual(bodies(controller, UID_ALICE), [])
        self._meanwhile(client)
        client.locked = False
        client.emit("identity.unlocked", {"name": "me"})
        clock.advance(0)
        self._assert_caught_up(controller)

    def test_unlocked_elsewhere_while_own_unlock_fails(self) -> None:
        """When another client unlocks while this UI's own unlock (a wrong password) is in
        flight, then the failure does not leave the UI on the lock screen: it reloads."""
        client = make_populated_client()
        client.locked = True
        controller, _, clock, _ = make_controller(client)
        self._meanwhile(client)
        client.slow.add("identity.unlock")
        press(controller, "wrong", "enter")
        client.locked = False
        client.emit("identity.unlocked", {"name": "me"})
        client.fire_pending("identity.unlock")
        clock.advance(0)
        self.assertIs(controller.window.screen, controller.main_screen)
        self.assertEqual(controller.model.contacts[UID_BOB].unread, 2)


class PathTests(SynchronousTestCase):
    """The path a message to a contact takes now (direct, via mailbox, waiting)."""

    def test_title_and_details_show_the_path(self) -> None:
        """When the daemon says carol is reached via the mailbox, then the conversation's
        title says "via mailbox" and her details (F3) say so in words."""
        client = make_populated_client()
        client.paths[UID_CAROL] = "mailbox"
        controller, _, _, _ = make_controller(client)
        press(controller, "meta 3")
        title = screen_text(controller.window, (80, 20)).splitlines()[0]
        self.assertEqual(title, " carol · offline · via mailbox · not verified")
        press(controller, "f3")
        text = screen_text(controller.window, (100, 40))
        self.assertIn("Path: via the mailbox (no session", text)

    def test_path_follows_peer_and_mailbox_events(self) -> None:
        """When carol comes online (peer.statusChanged), then the title says direct; when the
        mailbox is dropped (mailbox.changed) and she is offline, then it says no path (the
        daemon's none); a burst
        of events asks mailbox.status once."""
        client = make_populated_client()
        client.paths[UID_CAROL] = "mailbox"
        controller, _, clock, _ = make_controller(client)
        press(controller, "meta 3")

        def title() -> str:
            return screen_text(controller.window, (80, 20)).splitlines()[0]

        client.contacts[UID_CAROL]["status"] = "online"
        client.paths.pop(UID_CAROL)
        client.emit("peer.statusChanged", {"peer": {"uid": UID_CAROL, "status": "online"}})
        clock.advance(0)
        self.assertEqual(title(), " carol · online · direct · not verified")

        client.contacts[UID_CAROL]["status"] = "offline"
        client.paths[UID_CAROL] = "none"
        asked = sum(method == "mailbox.status" for method, _ in client.calls)
        client.emit("peer.statusChanged", {"peer": {"uid": UID_CAROL, "status": "offline"}})
        client.emit("mailbox.changed", {"link": None})
        clock.advance(0)
        self.assertEqual(sum(method == "mailbox.status" for method, _ in client.calls), asked + 1)
        self.assertEqual(title(), " carol · offline · no path · not verified")

    def test_no_path_when_the_daemon_cannot_say(self) -> None:
        """When mailbox.status fails (an older daemon), then the title shows no path and
        nothing else breaks."""
        client = make_populated_client()
        client.failures["mailbox.status"] = remote_error("method_not_found", "no method")
        controller, _, _, _ = make_controller(client)
        press(controller, "meta 3")
        title = screen_text(controller.window, (80, 20)).splitlines()[0]
        self.assertEqual(title, " carol · offline · not verified")
