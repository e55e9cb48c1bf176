"""Tests for :mod:`jarvis.common.textsafe`: hostile text made safe for a terminal, human figures."""

from __future__ import annotations

import os
import time

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from jarvis.common.textsafe import (
    human_bytes,
    human_duration,
    human_since,
    strip_bidi,
    terminal_safe,
)

ATTACKS = {
    "osc52 clipboard": "\x1b]52;c;ZWNobyBwd25lZA==\x07",
    "window title": "\x1b]0;owned\x07",
    "osc8 link": "\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\",
    "clear screen": "\x1b[2J\x1b[H",
    "cursor up forge": "\x1b[1A\r<bob> fake line",
    "dcs": "\x1bP1$r0m\x1b\\",
    "c1 csi": "\x9b2J",
    "rlo": "abc\u202eexe.txt",
    "isolate": "\u2067hidden\u2069",
}


class TerminalSafeTests(unittest.TestCase):
    def test_attacks_lose_every_control(self) -> None:
        """When a body carries an escape-sequence attack, then no control or bidi char survives."""
        for name, attack in ATTACKS.items():
            out = terminal_safe(attack)
            self.assertFalse(any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out), (name, out))
            self.assertNotIn("\u202e", out, name)
            self.assertNotIn("\u2067", out, name)

    def test_escape_visible(self) -> None:
        """When ESC is replaced, then it shows as the four characters \\x1b."""
        self.assertEqual(terminal_safe("a\x1b[2Jb"), "a\\x1b[2Jb")
        self.assertEqual(terminal_safe("x\u202ey"), "x\\u202ey")

    def test_newlines_kept_unless_one_line(self) -> None:
        """When a body has newlines and tabs, then they stay; a one-line field escapes them."""
        self.assertEqual(terminal_safe("a\nb\tc"), "a\nb\tc")
        self.assertEqual(terminal_safe("a\nb", keep_newlines=False), "a\\x0ab")

    def test_plain_text_unchanged(self) -> None:
        """When text is ordinary (accents, emoji, CJK), then it is returned as is."""
        text = "héllo 👋 你好 — ok"
        self.assertEqual(terminal_safe(text), text)

    @given(st.text())
    def test_never_leaves_controls(self, text: str) -> None:
        """When any text is made safe, then only newline and tab remain of the controls."""
        out = terminal_safe(text)
        for char in out:
            code = ord(char)
            self.assertFalse(
                (code < 0x20 and char not in "\n\t") or 0x7F <= code <= 0x9F, repr(out)
            )

    def test_strip_bidi(self) -> None:
        """When a name carries U+202E, then strip_bidi removes it and keeps the rest."""
        self.assertEqual(strip_bidi("ab\u202ecd\u2066"), "abcd")


class HumanTests(unittest.TestCase):
    def setUp(self) -> None:
        old = os.environ.get("TZ")
        os.environ["TZ"] = "UTC"
        time.tzset()

        def restore() -> None:
            if old is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = old
            time.tzset()

        self.addCleanup(restore)

    def test_bytes(self) -> None:
        """When byte counts are shown, then they use binary units."""
        self.assertEqual(human_bytes(512), "512 B")
        self.assertEqual(human_bytes(1536), "1.5 KiB")
        self.assertEqual(human_bytes(12 * 1024 * 1024), "12 MiB")

    def test_durations(self) -> None:
        """When durations are shown, then they read as seconds, minutes, hours or days."""
        self.assertEqual(human_duration(40), "40 s")
        self.assertEqual(human_duration(12 * 60 + 5), "12 min")
        self.assertEqual(human_duration(3 * 3600 + 5 * 60), "3 h 5 min")
        self.assertEqual(human_duration(2 * 86400 + 4 * 3600), "2 d 4 h")

    def test_since(self) -> None:
        """When a moment today is shown, then it reads as local HH:MM and how long ago."""
        now = 1796488769.0  # 2026-12-05 16:39:29 UTC
        self.assertEqual(human_since(now - 720, now), "16:27, 12 min ago")
        self.assertEqual(human_since(now - 3 * 86400, now)[:10], "2026-12-02")
