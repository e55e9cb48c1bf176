"""Tests for the UI's widgets and screens: keys, rendering, sizes and golden screens.

Driven headless with ``keypress(size, key)`` and ``render(size).text``; times are UTC and the
banner does not animate, so the golden screens are deterministic.
"""

from __future__ import annotations

import datetime

import urwid
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jarvis.common.textsafe import local_time
from jarvis.ui import banner
from jarvis.ui.model import Message, MessengerModel
from jarvis.ui.palette import STYLES, THEMES, palette
from jarvis.ui.screens import describe_health
from jarvis.ui.widgets import ConversationList, ReadlineEdit, Scrollback, StatusBar
from tests.ui_fakes import (
    NOW,
    UID_ALICE,
    UID_BOB,
    FakeDaemonClient,
    make_controller,
    make_populated_client,
    press,
    screen_text,
)

GOLDEN_MAIN_60x12 = """\
 alice · online · direct · verified
1 ● alice       ───────── Monday 13 November 2023 ──────────
2 ◐ bob      1  22:13 alice: are you there?
3 ○ carol       ───────── Tuesday 14 November 2023 ─────────
                21:23 me: yes, here                        ●
                21:40 me: queued one                       …
                21:56 me: sent one                         ✓
                ━━━━━━━━━━━━━━━ new messages ━━━━━━━━━━━━━━━
                22:13 alice: news!

 me │ 1/2 online │ 1 unread
>"""

GOLDEN_LOCK_60x12 = """\


                         J A R V I S

                   me's Jarvis is locked.
          Type the master password and press Enter.

      Password:



"""

GOLDEN_START_60x8 = """\
 Jarvis
1 ● alice    1  No conversation open. Alt+1 opens the first;
2 ◐ bob      1  Ctrl+N adds a contact.
3 ○ carol


 me │ 1/2 online │ 2 unread
>"""


def styles_of(canvas: urwid.Canvas) -> list[object]:
    """Every attribute (style name) used in *canvas*, row by row."""
    return [attr for row in canvas.content() for attr, _cs, _text in row]


def type_into(widget: urwid.Widget, text: str, size: tuple[int] = (40,)) -> None:
    """Type *text* into a flow widget one key at a time."""
    for char in text:
        widget.keypress(size, char)


class ReadlineTests(SynchronousTestCase):
    """Readline editing keys in every edit field."""

    def make_edit(self, text: str = "hello big world") -> ReadlineEdit:
        edit = ReadlineEdit("> ", text)
        edit.set_edit_pos(len(text))
        return edit

    def test_line_start_end(self) -> None:
        """When Ctrl+A and Ctrl+E are pressed, then the cursor goes to start and end."""
        edit = self.make_edit()
        edit.keypress((40,), "ctrl a")
        self.assertEqual(edit.edit_pos, 0)
        edit.keypress((40,), "ctrl e")
        self.assertEqual(edit.edit_pos, len(edit.edit_text))

    def test_kill_and_yank(self) -> None:
        """When Ctrl+W, Ctrl+U, Ctrl+K and Ctrl+Y are used, then text is cut and pasted back."""
        edit = self.make_edit()
        edit.keypress((40,), "ctrl w")
        self.assertEqual(edit.edit_text, "hello big ")
        edit.keypress((40,), "ctrl y")
        self.assertEqual(edit.edit_text, "hello big world")
        edit.set_edit_pos(5)
        edit.keypress((40,), "ctrl k")
        self.assertEqual(edit.edit_text, "hello")
        edit.keypress((40,), "ctrl u")
        self.assertEqual(edit.edit_text, "")

    def test_words(self) -> None:
        """When Alt+B and Alt+F are pressed, then the cursor jumps by words."""
        edit = self.make_edit()
        edit.keypress((40,), "meta b")
        self.assertEqual(edit.edit_pos, 10)
        edit.keypress((40,), "meta b")
        self.assertEqual(edit.edit_pos, 6)
        edit.keypress((40,), "meta f")
        self.assertEqual(edit.edit_pos, 9)

    def test_typing_still_works(self) -> None:
        """When ordinary keys are typed, then they are inserted."""
        edit = ReadlineEdit()
        type_into(edit, "abc")
        edit.keypress((40,), "backspace")
        self.assertEqual(edit.edit_text, "ab")


class InputLineTests(SynchronousTestCase):
    """The main input line: Enter, history."""

    def test_enter_and_history(self) -> None:
        """When lines are sent, then Up/Down bring them back and the typed line is kept."""
        controller, client, _, _ = make_controller(make_populated_client())
        press(controller, "meta 1", "first", "enter", "second", "enter", "draft")
        line = controller.main_screen.input
        line.keypress((40,), "up")
        self.assertEqual(line.edit_text, "second")
        line.keypress((40,), "up")
        self.assertEqual(line.edit_text, "first")
        line.keypress((40,), "down")
        line.keypress((40,), "down")
        self.assertEqual(line.edit_text, "draft")
        assert client is not None
        sent = [p["text"] for m, p in client.calls if m == "messages.send"]
        self.assertEqual(sent, ["first", "second"])


class ScrollbackTests(SynchronousTestCase):
    """Day separators, times, delivery marks and the marker line."""

    def make_model(self, marker: str | None) -> MessengerModel:
        model = MessengerModel()
        model.load_contacts([{"uid": UID_ALICE, "name": "alice"}])
        model.open(UID_ALICE)
        messages = [
            {
                "id": "1",
                "contact": UID_ALICE,
                "direction": "in",
                "body": "old",
                "state": "received",
                "created": NOW - 86400,
            },
            {
                "id": "2",
                "contact": UID_ALICE,
                "direction": "out",
                "body": "mine",
                "state": "delivered",
                "created": NOW - 60,
            },
            {
                "id": "3",
                "contact": UID_ALICE,
                "direction": "in",
                "body": "fresh",
                "state": "received",
                "created": NOW,
            },
        ]
        model.load_history(UID_ALICE, {"messages": messages, "marker": marker})
        return model

    def test_rendering(self) -> None:
        """When a conversation spans two days, then both days, times and marks show."""
        scrollback = Scrollback(self.make_model("3"), datetime.UTC)
        text = screen_text(scrollback, (50, 10))
        self.assertIn("Monday 13 November 2023", text)
        self.assertIn("Tuesday 14 November 2023", text)
        self.assertIn("22:12 me: mine", text)
        self.assertIn("✓✓", text)
        self.assertIn("new messages", text)
        lines = text.splitlines()
        marker_row = next(i for i, line in enumerate(lines) if "new messages" in line)
        self.assertIn("fresh", lines[marker_row + 1])

    def test_no_marker(self) -> None:
        """When nothing was unread, then there is no marker line."""
        text = screen_text(Scrollback(self.make_model(None), datetime.UTC), (50, 10))
        self.assertNotIn("new messages", text)

    def test_state_change_updates_mark(self) -> None:
        """When a message becomes read, then its mark becomes ●."""
        model = self.make_model(None)
        scrollback = Scrollback(model, datetime.UTC)
        model.apply_event(
            "message.stateChanged", {"id": "2", "contact": UID_ALICE, "state": "read", "at": NOW}
        )
        scrollback.refresh()
        self.assertIn("●", screen_text(scrollback, (50, 10)))

    def test_new_messages_touch_only_their_rows(self) -> None:
        """When a message arrives and another changes state, then only their rows are new:
        the rows of the other messages are the same widgets, and the screen shows both
        changes with a separator for the new day."""
        model = self.make_model(None)
        scrollback = Scrollback(model, datetime.UTC)
        before = scrollback.rows_shown()
        model.add_message(Message("4", UID_ALICE, "in", "next day", "received", NOW + 86400))
        model.apply_event(
            "message.stateChanged", {"id": "2", "contact": UID_ALICE, "state": "read", "at": NOW}
        )
        scrollback.refresh()
        after = scrollback.rows_shown()
        changed = [i for i, row in enumerate(before) if after[i] is not row]
        self.assertEqual(len(changed), 1)
        self.assertIn("mine", screen_text(after[changed[0]], (50, 1)))
        self.assertEqual(len(after), len(before) + 2)  # the new day's separator, the message
        text = screen_text(scrollback, (50, 10))
        self.assertIn("Wednesday 15 November 2023", text)
        self.assertIn("next day", text)
        self.assertIn("●", text)

    def test_older_page_and_marker_rebuild(self) -> None:
        """When an older page is loaded, or the marker moves, then the rows are rebuilt in
        order: the older message shows first, under its own day, and the marker line sits
        before its message."""
        model = self.make_model(None)
        scrollback = Scrollback(model, datetime.UTC)
        older = {
            "id": "0",
            "contact": UID_ALICE,
            "direction": "in",
            "body": "ancient",
            "state": "received",
            "created": NOW - 3 * 86400,
        }
        model.load_history(UID_ALICE, {"messages": [older], "next": None}, older=True)
        scrollback.refresh()
        scrollback.scroll("scroll_top")
        lines = [line.strip() for line in screen_text(scrollback, (50, 12)).splitlines()]
        self.assertIn("Saturday 11 November 2023", lines[0])
        self.assertIn("ancient", lines[1])
        model.conversations[UID_ALICE].marker = "3"
        scrollback.refresh()
        scrollback.scroll("scroll_bottom")
        lines = screen_text(scrollback, (50, 12)).splitlines()
        marker_row = next(i for i, line in enumerate(lines) if "new messages" in line)
        self.assertIn("fresh", lines[marker_row + 1])

    def test_scroll_commands(self) -> None:
        """When scrolled to the top and bottom, then the first or last row has focus."""
        model = self.make_model(None)
        for n in range(30):
            model.add_message(
                Message(str(100 + n), UID_ALICE, "in", f"line {n}", "received", NOW + n)
            )
        scrollback = Scrollback(model, datetime.UTC)
        scrollback.render((40, 5))
        scrollback.scroll("scroll_top")
        self.assertIn("Monday", screen_text(scrollback, (40, 5)))
        scrollback.scroll("scroll_bottom")
        self.assertIn("line 29", screen_text(scrollback, (40, 5)))
        scrollback.scroll("scroll_up")
        self.assertNotIn("line 29", screen_text(scrollback, (40, 5)))


class ConversationListTests(SynchronousTestCase):
    """The conversation list keeps the rows that did not change."""

    def test_unchanged_rows_kept(self) -> None:
        """When a message arrives for bob, then only bob's row is new, it moves to the top with
        its badge, and the others' rows are the same widgets."""
        model = MessengerModel()
        model.load_contacts(
            [
                {"uid": UID_ALICE, "name": "alice", "last_activity": NOW},
                {"uid": UID_BOB, "name": "bob", "last_activity": NOW - 10},
            ]
        )
        model.open(UID_ALICE)
        conversations = ConversationList(model, lambda uid: None)
        before = {row.uid: row for row in conversations.rows_shown()}
        conversations.refresh()
        self.assertEqual(conversations.rows_shown(), list(before.values()))
        model.add_message(Message("x", UID_BOB, "in", "hi", "received", NOW + 5))
        conversations.refresh()
        rows = conversations.rows_shown()
        self.assertEqual([row.uid for row in rows], [UID_BOB, UID_ALICE])
        self.assertIsNot(rows[0], before[UID_BOB])
        self.assertIsNot(rows[1], before[UID_ALICE])  # its number changed from 1 to 2
        first, second = screen_text(conversations, (20, 2)).splitlines()
        self.assertEqual((first[:7], first.split()[-1]), ("1 ○ bob", "1"))  # one unread
        self.assertEqual(second.rstrip(), "2 ○ alice")
        model.add_message(Message("y", UID_BOB, "in", "again", "received", NOW + 6))
        conversations.refresh()
        self.assertIs(conversations.rows_shown()[1], rows[1])


class StatusBarTests(SynchronousTestCase):
    """The status bar."""

    def test_summary_and_operations(self) -> None:
        """When online and busy, then name, 'x/y online' and the operation show."""
        model = MessengerModel()
        model.load_identity({"name": "zoe"})
        model.load_summary({"summary": "amber", "online": 1, "total": 3})
        model.begin_operation("sending")
        bar = StatusBar(model)
        text = bar.render((60,)).text[0].decode()
        self.assertIn("zoe", text)
        self.assertIn("1/3 online", text)
        self.assertIn("sending", text)

    def test_unreachable_grey(self) -> None:
        """When the daemon is unreachable, then the bar says so in the grey style."""
        model = MessengerModel()
        model.set_reachable(False)
        bar = StatusBar(model)
        canvas = bar.render((60,))
        self.assertIn("daemon unreachable", canvas.text[0].decode())
        styles = styles_of(canvas)
        # urwid 5 layers the bar's own style under each segment's (LayeredAttr).
        self.assertTrue(any("summary_grey" in repr(style) for style in styles), styles)


class BannerTests(SynchronousTestCase):
    """The welcome banner animates on a clock and has a static fallback."""

    def test_animation_on_clock(self) -> None:
        """When the clock advances, then frames change and stop() restores the static frame."""
        widget = banner.BannerText()
        redraws: list[int] = []
        clock = Clock()
        animation = banner.BannerAnimation(widget, clock, lambda: redraws.append(1))
        animation.start()
        first = styles_of(widget.render((60,)))
        for _ in range(5):
            clock.advance(banner.INTERVAL)
        self.assertNotEqual(first, styles_of(widget.render((60,))))
        self.assertEqual(len(redraws), 6)
        animation.stop()
        self.assertFalse(animation.running)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_narrow_fallback(self) -> None:
        """When the terminal is narrower than the art, then the one-line banner shows."""
        widget = banner.BannerText()
        self.assertEqual(widget.rows((30,)), 1)
        self.assertIn("J A R V I S", widget.render((30,)).text[0].decode())


class PaletteTests(SynchronousTestCase):
    """Themes map every style."""

    def test_themes_complete(self) -> None:
        """When a theme's palette is built, then it names every style and urwid accepts it."""
        for theme in THEMES:
            entries = palette(theme)
            self.assertEqual({e[0] for e in entries}, set(STYLES))
            for _name, fg, bg, mono in entries:
                urwid.AttrSpec(fg, bg)
                if mono:
                    urwid.AttrSpec(mono, "default")

    def test_unknown_theme(self) -> None:
        """When an unknown theme is asked for, then ValueError names the choices."""
        self.assertRaises(ValueError, palette, "neon")


class SizeTests(SynchronousTestCase):
    """Every screen and dialog renders from 40x12 to 120x40 without exceptions."""

    SIZES = ((40, 12), (120, 40), (41, 13), (80, 24))

    def render_all(self, controller: object) -> None:
        for size in self.SIZES:
            screen_text(controller.window, size)  # type: ignore[attr-defined]

    def test_main_and_dialogs(self) -> None:
        """When each dialog is open over the main screen, then every size renders."""
        controller, _, _, _ = make_controller(make_populated_client())
        press(controller, "meta 1")
        self.render_all(controller)
        for key in ("f1", "ctrl n", "f2", "f3", "f4", "ctrl c"):
            press(controller, key)
            self.render_all(controller)
            press(controller, "esc")
        self.render_all(controller)

    def test_first_start_screens(self) -> None:
        """When there is no identity, then welcome and creation render at every size."""
        controller, _, _, _ = make_controller(FakeDaemonClient(has_identity=False))
        self.render_all(controller)
        press(controller, "enter")
        self.render_all(controller)

    def test_lock_and_unreachable(self) -> None:
        """When locked, or the daemon is unreachable, then every size renders."""
        controller, _, _, _ = make_controller(make_populated_client(locked=True))
        self.render_all(controller)
        unreachable, _, _, _ = make_controller(None)
        self.render_all(unreachable)
        unreachable.stop()


class GoldenScreenTests(SynchronousTestCase):
    """The text of the main views, kept verbatim."""

    def test_main_view(self) -> None:
        """When alice's conversation is open, then the screen is the golden one."""
        controller, _, _, _ = make_controller(make_populated_client())
        press(controller, "meta 1")
        self.assertEqual(screen_text(controller.window, (60, 12)), GOLDEN_MAIN_60x12)

    def test_start_view(self) -> None:
        """When nothing is open yet, then the list with badges and the hint show."""
        controller, _, _, _ = make_controller(make_populated_client())
        self.assertEqual(screen_text(controller.window, (60, 8)), GOLDEN_START_60x8)

    def test_lock_view(self) -> None:
        """When locked, then the lock screen shows no conversation at all."""
        controller, _, _, _ = make_controller(make_populated_client())
        press(controller, "meta 1", "ctrl l")
        text = screen_text(controller.window, (60, 12))
        self.assertEqual(text, GOLDEN_LOCK_60x12)
        self.assertNotIn("alice", text)


class HealthWordsTests(SynchronousTestCase):
    """A contact's connection figures as the details dialog words them."""

    def test_dialled_with_failures(self) -> None:
        """When we dialled a contact four times (one connected, two failed, one in flight) and
        it never dialled us, then the rows say so once each; no figure shows as a raw number
        of seconds."""
        health = {
            "connect_attempts": 4,
            "connect_successes": 1,
            "connect_failures": 2,
            "sessions_accepted": 0,
            "last_error": "timed out\nsecond line",
            "last_error_at": NOW - 30,
            "connected_since": None,
            "bytes_in": 100,
            "bytes_out": 0,
        }
        rows = dict(describe_health("connecting", health, NOW))
        self.assertEqual(rows["Status"], "connecting")
        at = local_time(NOW - 30, NOW)
        self.assertEqual(rows["Last error"], f"timed out (at {at}, 30 s ago)")
        self.assertEqual(
            rows["Connections"], "we dialled 4 times (1 connected, 2 failed, 1 in progress)"
        )
        self.assertEqual(rows["Traffic"], "100 B in, 0 B out")

    def test_nothing_known(self) -> None:
        """When there are no health figures (an offline contact), then only the status shows."""
        self.assertEqual(describe_health("offline", {}, NOW), [("Status", "offline")])
