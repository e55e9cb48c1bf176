"""Tests for the mailbox in the terminal UI (issue 15): the settings dialog's "Mailbox" section,
its "Use a mailbox..." form and "Stop using the mailbox" question, and ``/mailbox [LINK|drop]``
(driven headless with the fake daemon of :mod:`tests.ui_fakes`)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jarvis.ui.model import MailboxStatus, SlashCommand, parse_input
from tests.ui_fakes import NOW, FakeDaemonClient, make_controller, make_populated_client, press

PIN = "m" * 51 + "a"  # a valid key hash: base32 of 32 bytes ends in a or q
LINK = f"jarvis-mailbox:{PIN}@127.0.0.1:4000"
SIZE = (120, 40)


def started() -> tuple[Any, FakeDaemonClient, Any]:
    """A controller on the populated fake daemon, plus the client and the clock."""
    controller, client, clock, _ = make_controller(make_populated_client())
    assert client is not None
    clock.advance(NOW)
    return controller, client, clock


def dialog_text(controller: Any) -> str:
    dialog = controller.window.dialog
    assert dialog is not None
    canvas = dialog.render(SIZE, focus=True)
    return "\n".join(line.decode("utf-8").rstrip() for line in canvas.text)


def buttons(controller: Any) -> list[str]:
    """The labels of the open dialog's buttons, in order."""
    labels = []
    for row in controller.window.dialog._walker:
        label = getattr(row.base_widget, "get_label", None)
        if label is not None and hasattr(row.base_widget, "signals"):
            labels.append(label())
    return labels


def press_button(controller: Any, label: str) -> None:
    """Focus the open dialog's button *label* and press Enter on it."""
    walker = controller.window.dialog._walker
    for index, row in enumerate(walker):
        get_label = getattr(row.base_widget, "get_label", None)
        if get_label is not None and get_label() == label:
            walker.set_focus(index)
            press(controller, "enter", size=SIZE)
            return
    raise AssertionError(f"no button {label!r} in {buttons(controller)}")


def status_text(controller: Any) -> str:
    return controller.model.status.text if controller.model.status else ""


class MailboxSettingsTests(SynchronousTestCase):
    """The settings dialog (F4) shows the mailbox and sets or drops it."""

    def test_settings_say_no_mailbox(self) -> None:
        """When no mailbox is in use and F4 is pressed, then the settings show a Mailbox section
        saying so, with "Use a mailbox..." and no "Stop using" action."""
        controller, client, _ = started()
        press(controller, "f4", size=SIZE)
        self.assertEqual(controller.window.dialog.kind, "settings")
        text = dialog_text(controller)
        self.assertIn("Mailbox", text)
        self.assertIn("No mailbox: messages wait", text)
        self.assertIn("Use a mailbox...", buttons(controller))
        self.assertNotIn("Stop using the mailbox", buttons(controller))
        self.assertIn(("mailbox.status", {}), client.calls)

    def test_settings_show_the_mailbox_in_use(self) -> None:
        """When a mailbox is in use, then the settings show its host:port (not the pin),
        connected, the queue count and the last collect."""
        controller, client, _ = started()
        client.mailbox_link = LINK
        press(controller, "f4", size=SIZE)
        text = dialog_text(controller)
        self.assertIn("Mailbox 127.0.0.1:4000: connected", text)
        self.assertIn("3 queues", text)
        self.assertIn("last collect:", text)
        self.assertIn("1 min ago", text)
        self.assertNotIn(PIN, text)
        self.assertIn("Stop using the mailbox", buttons(controller))

    def test_use_a_mailbox_from_settings(self) -> None:
        """When the user chooses "Use a mailbox...", pastes a link and presses Enter, then the
        daemon is asked to use it and the settings come back showing it connected."""
        controller, client, _ = started()
        press(controller, "f4", size=SIZE)
        press_button(controller, "Use a mailbox...")
        self.assertEqual(controller.window.dialog.kind, "mailbox")
        press(controller, LINK, "enter", size=SIZE)
        self.assertIn(("mailbox.use", {"link": LINK}), client.calls)
        self.assertEqual(client.mailbox_link, LINK)
        self.assertEqual(controller.window.dialog.kind, "settings")
        self.assertIn("Mailbox 127.0.0.1:4000: connected", dialog_text(controller))
        self.assertIn("mailbox in use: 127.0.0.1:4000", status_text(controller))

    def test_bad_link_shows_the_daemons_words(self) -> None:
        """When the pasted text is not a mailbox link, then the form stays open and shows the
        daemon's reason in words; no mailbox is in use."""
        controller, client, _ = started()
        press(controller, "f4", size=SIZE)
        press_button(controller, "Use a mailbox...")
        press(controller, "jarvis-mailbox:nonsense@here:1", "enter", size=SIZE)
        self.assertEqual(controller.window.dialog.kind, "mailbox")
        text = dialog_text(controller)
        self.assertIn("The daemon refused it: the link's pin is not a valid key hash", text)
        self.assertIsNone(client.mailbox_link)

    def test_empty_link_asks_for_one(self) -> None:
        """When Enter is pressed on an empty form, then it asks for a link and calls nothing."""
        controller, client, _ = started()
        press(controller, "f4", size=SIZE)
        press_button(controller, "Use a mailbox...")
        press(controller, "enter", size=SIZE)
        self.assertIn("Paste a jarvis-mailbox: link.", dialog_text(controller))
        self.assertNotIn("mailbox.use", [m for m, _ in client.calls])

    def test_stop_using_asks_first(self) -> None:
        """When "Stop using the mailbox" is chosen, then a question comes first: "No" keeps
        the mailbox and returns to the settings, "Yes" drops it and the settings say so."""
        controller, client, _ = started()
        client.mailbox_link = LINK
        press(controller, "f4", size=SIZE)
        press_button(controller, "Stop using the mailbox")
        self.assertEqual(controller.window.dialog.kind, "drop_mailbox")
        press(controller, "enter", size=SIZE)  # "No" has the focus
        self.assertEqual(client.mailbox_link, LINK)
        self.assertEqual(controller.window.dialog.kind, "settings")
        press_button(controller, "Stop using the mailbox")
        press_button(controller, "Yes")
        self.assertIn(("mailbox.drop", {}), client.calls)
        self.assertIsNone(client.mailbox_link)
        self.assertEqual(controller.window.dialog.kind, "settings")
        self.assertIn("No mailbox: messages wait", dialog_text(controller))

    def test_another_client_changing_the_mailbox_updates_open_settings(self) -> None:
        """When another client uses a mailbox while the settings are open (the daemon emits
        mailbox.changed), then the open settings show it, with the focus where it was."""
        controller, client, clock = started()
        press(controller, "f4", size=SIZE)
        press(controller, "tab", "tab", size=SIZE)
        focused = controller.window.dialog.focused_row()
        self.assertIn("No mailbox", dialog_text(controller))
        client.mailbox_link = LINK
        client.emit("mailbox.changed", {"link": LINK})
        clock.advance(0)
        self.assertIn("Mailbox 127.0.0.1:4000: connected", dialog_text(controller))
        self.assertEqual(controller.window.dialog.focused_row(), focused)
        self.assertNotEqual(focused, 0)


class MailboxSlashCommandTests(SynchronousTestCase):
    """``/mailbox``, ``/mailbox LINK``, ``/mailbox drop`` in the input line."""

    def test_parse(self) -> None:
        """When /mailbox lines are parsed, then the argument (none, a link, drop) is kept."""
        self.assertEqual(parse_input("/mailbox"), SlashCommand("mailbox", ()))
        self.assertEqual(parse_input("/mailbox  drop "), SlashCommand("mailbox", ("drop",)))
        self.assertEqual(parse_input(f"/mailbox {LINK}"), SlashCommand("mailbox", (LINK,)))

    def test_status_on_the_status_line(self) -> None:
        """When /mailbox is entered, then the status line shows the mailbox and its state."""
        controller, client, _ = started()
        press(controller, "/mailbox", "enter")
        self.assertIn("no mailbox in use", status_text(controller))
        client.mailbox_link = LINK
        press(controller, "/mailbox", "enter")
        line = status_text(controller)
        self.assertRegex(
            line,
            r"^mailbox 127\.0\.0\.1:4000: connected; 3 queues; "
            r"last collect \d\d:\d\d, 1 min ago$",
        )
        self.assertLessEqual(len(line), 80)
        self.assertIsNone(controller.window.dialog)

    def test_use_with_a_link(self) -> None:
        """When /mailbox LINK is entered, then the daemon uses it and the status line says so."""
        controller, client, _ = started()
        press(controller, f"/mailbox {LINK}", "enter")
        self.assertEqual(client.mailbox_link, LINK)
        self.assertIn("mailbox in use: 127.0.0.1:4000", status_text(controller))

    def test_bad_link_on_the_status_line(self) -> None:
        """When /mailbox is given a text that is no link, then the status line shows the
        daemon's reason and nothing is used."""
        controller, client, _ = started()
        press(controller, "/mailbox http://example", "enter")
        self.assertIn("using the mailbox failed: not a mailbox link", status_text(controller))
        self.assertEqual(controller.model.status.level, "error")
        self.assertIsNone(client.mailbox_link)

    def test_drop_asks_first(self) -> None:
        """When /mailbox drop is entered, then a question comes first and "Yes" drops it (the
        question closes: no settings dialog)."""
        controller, client, _ = started()
        client.mailbox_link = LINK
        press(controller, "/mailbox drop", "enter")
        self.assertEqual(controller.window.dialog.kind, "drop_mailbox")
        self.assertEqual(client.mailbox_link, LINK)
        press_button(controller, "Yes")
        self.assertIsNone(client.mailbox_link)
        self.assertIsNone(controller.window.dialog)
        self.assertIn("mailbox dropped", status_text(controller))


class MailboxStatusTests(SynchronousTestCase):
    """:class:`MailboxStatus` from the daemon's answer."""

    def test_hostile_text_is_made_safe(self) -> None:
        """When the link or error holds escape or bidi characters, then the lines hold none."""
        status = MailboxStatus.from_api(
            {
                "link": f"jarvis-mailbox:{PIN}@evil\x1b[2J\u202e:1",
                "connected": False,
                "error": "refused \x1b]0;x\x07",
                "queues": "many",
            }
        )
        text = "\n".join(status.lines(NOW))
        for bad in ("\x1b", "\u202e", "\x07"):
            self.assertNotIn(bad, text)
        self.assertIn("not connected (refused", text)
        self.assertIn("0 queues", text)
        self.assertIn("last collect: never", text)
