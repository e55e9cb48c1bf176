"""Text from peers made safe to print on a terminal, and shown in words a person reads.

Message bodies and contact names come from other people.  Printed raw, they could carry escape
sequences that write the clipboard (OSC 52), set the window title, forge lines with cursor moves,
or reverse text with bidi overrides.  :func:`terminal_safe` replaces every such character with a
visible escape (``\\x1b`` -> ``\\x1b`` shown as the four characters ``\\x1b``), keeping newlines and
tabs.  ``--json`` output never goes through it: JSON escapes control characters itself and stays
exact.

The second half turns machine values into what a person reads: local times, durations, bytes.

This module must not import the reactor or urwid: the CLI, the UI and the daemon all use it.
"""

from __future__ import annotations

import math
import time as _time

# Bidi embedding, override and isolate controls, and the marks that reorder text invisibly.
BIDI_CONTROLS = frozenset(
    "\u200e\u200f\u061c"  # LRM, RLM, ALM
    "\u202a\u202b\u202c\u202d\u202e"  # LRE, RLE, PDF, LRO, RLO
    "\u2066\u2067\u2068\u2069"  # LRI, RLI, FSI, PDI
)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def is_unsafe(char: str, *, keep_newlines: bool = True) -> bool:
    """Return whether *char* must not reach a terminal raw.

    :param keep_newlines: let ``\\n`` and ``\\t`` through (multi-line message bodies).
    """
    code = ord(char)
    if keep_newlines and char in "\n\t":
        return False
    if code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F:  # C0, DEL, C1 (CSI, OSC, DCS...)
        return True
    return char in BIDI_CONTROLS or code in (0x2028, 0x2029)


def terminal_safe(text: str, *, keep_newlines: bool = True) -> str:
    """Return *text* with control, C1 and bidi characters replaced by visible escapes.

    ESC itself becomes ``\\x1b``, so no escape sequence survives: what follows it is printed as
    ordinary characters.

    :param keep_newlines: keep ``\\n`` and ``\\t`` (bodies); ``False`` for one-line fields.
    """
    if text.isprintable() and not any(c in BIDI_CONTROLS for c in text):
        return text
    return "".join(_escape(c) if is_unsafe(c, keep_newlines=keep_newlines) else c for c in text)


def strip_bidi(text: str) -> str:
    """Return *text* without bidi controls (for widgets that already drop C0/C1 controls)."""
    if not any(c in BIDI_CONTROLS for c in text):
        return text
    return "".join(c for c in text if c not in BIDI_CONTROLS)


def human_bytes(count: float) -> str:
    """Return a byte count in binary units: ``512 B``, ``1.5 KiB``, ``12 MiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """Return a duration the way people say it: ``40 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def human_time_left(seconds: float) -> str:
    """An ETA the way :func:`human_duration` says a duration, rounded up: 0.6 s left is
    ``1 s``, not ``0 s`` while the bar still moves."""
    return human_duration(math.ceil(seconds))


def local_time(timestamp: float, now: float) -> str:
    """Return *timestamp* as local ``HH:MM`` today, else ``YYYY-MM-DD HH:MM``."""
    stamp = _time.localtime(timestamp)
    if _time.localtime(now)[:3] == stamp[:3]:
        return _time.strftime("%H:%M", stamp)
    return _time.strftime("%Y-%m-%d %H:%M", stamp)


def human_since(timestamp: float, now: float) -> str:
    """Return ``16:39, 12 min ago`` for a moment in the past (local time)."""
    return f"{local_time(timestamp, now)}, {human_duration(now - timestamp)} ago"
