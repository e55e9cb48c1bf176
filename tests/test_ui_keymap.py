"""Tests for jarvis.ui.keymap and the generated docs/keys.md."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from jarvis.ui import keymap, keysdoc

DOCS_KEYS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "keys.md")


class ClashTests(SynchronousTestCase):
    """No key means two commands where both are active."""

    def test_no_clashes(self) -> None:
        """When the table is checked, then no key is bound twice in one state."""
        self.assertEqual(keymap.clashes(), [])

    def test_clash_is_detected(self) -> None:
        """When two commands share a key in one context, then clashes() reports it."""
        extra = keymap._command("dummy", "x", "General", ("ctrl l",), (keymap.MAIN,))
        original = keymap.COMMANDS
        self.patch(keymap, "COMMANDS", (*original, extra))
        found = keymap.clashes()
        self.assertIn(("input", "ctrl l", "lock", "dummy"), found)

    def test_forbidden_keys_unbound(self) -> None:
        """When every binding is listed, then Ctrl+S, Ctrl+Q and Ctrl+Z are not among them."""
        bound = {b.key for c in keymap.COMMANDS for b in c.bindings}
        self.assertEqual(bound & keymap.FORBIDDEN_KEYS, set())

    def test_contexts_are_known(self) -> None:
        """When a binding names a context, then some state activates it."""
        active = {c for contexts in keymap.ACTIVE_CONTEXTS.values() for c in contexts}
        for cmd in keymap.COMMANDS:
            for binding in cmd.bindings:
                for context in binding.contexts:
                    self.assertIn(context, active, cmd.name)


class DefaultsTests(SynchronousTestCase):
    """The default keys asked for are bound to the right commands."""

    def test_defaults(self) -> None:
        """When looking up the documented defaults, then each maps to its command."""
        cases = [
            ("meta 1", keymap.INPUT, "switch_1"),
            ("meta 9", keymap.BROWSE, "switch_9"),
            ("meta left", keymap.INPUT, "previous_conversation"),
            ("meta right", keymap.INPUT, "next_conversation"),
            ("meta a", keymap.INPUT, "next_unread"),
            ("tab", keymap.INPUT, "focus_next"),
            ("f1", keymap.INPUT, "help"),
            ("?", keymap.BROWSE, "help"),
            ("ctrl l", keymap.INPUT, "lock"),
            ("ctrl c", keymap.LOCK, "cancel"),
            ("page up", keymap.INPUT, "scroll_up"),
            ("page down", keymap.INPUT, "scroll_down"),
            ("home", keymap.INPUT, "scroll_top"),
            ("end", keymap.INPUT, "scroll_bottom"),
            ("ctrl n", keymap.INPUT, "add_contact"),
            ("f2", keymap.INPUT, "my_identity"),
            ("f3", keymap.INPUT, "contact_info"),
            ("f4", keymap.INPUT, "settings"),
            ("enter", keymap.INPUT, "send"),
            ("up", keymap.INPUT, "history_previous"),
            ("down", keymap.INPUT, "history_next"),
            ("esc", keymap.DIALOG, "close_dialog"),
            ("ctrl w", keymap.INPUT, "kill_word"),
            ("meta b", keymap.DIALOG, "word_left"),
        ]
        for key, state, name in cases:
            self.assertEqual(keymap.command_for(key, state), name, key)

    def test_question_mark_types_in_input(self) -> None:
        """When ? is pressed in the input line, then it is no command (it is typed)."""
        self.assertIsNone(keymap.command_for("?", keymap.INPUT))

    def test_escape_means_nothing_on_lock_screen(self) -> None:
        """When Esc is pressed on the lock screen, then no command is bound to it."""
        self.assertIsNone(keymap.command_for("esc", keymap.LOCK))

    def test_display_names(self) -> None:
        """When keys are shown to people, then they read Alt+1, Ctrl+L, PageUp, F1."""
        self.assertEqual(keymap.display_key("meta 1"), "Alt+1")
        self.assertEqual(keymap.display_key("ctrl l"), "Ctrl+L")
        self.assertEqual(keymap.display_key("meta left"), "Alt+Left")
        self.assertEqual(keymap.display_key("page up"), "PageUp")
        self.assertEqual(keymap.display_key("f1"), "F1")


class DocsTests(SynchronousTestCase):
    """docs/keys.md is generated from the table."""

    def test_docs_current(self) -> None:
        """When docs/keys.md is compared with the generator, then they are identical."""
        with open(DOCS_KEYS, encoding="utf-8") as f:
            on_disk = f.read()
        self.assertEqual(
            on_disk,
            keysdoc.render_markdown(),
            "docs/keys.md is stale: run python -m jarvis.ui.keysdoc > docs/keys.md",
        )

    def test_every_command_documented(self) -> None:
        """When the document is generated, then every command's help text is in it."""
        text = keysdoc.render_markdown()
        for cmd in keymap.COMMANDS:
            if not cmd.name.startswith("switch_"):
                self.assertIn(cmd.help, text)
