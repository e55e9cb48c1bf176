"""Colour themes of the terminal UI: style name -> colours, one palette per theme.

Widgets use only the style names listed in :data:`STYLES`; this module maps them to colours.
Every theme has a monochrome column (bold/underline/standout) so the UI stays readable on a
terminal without colours (``--theme mono`` forces it).  It must not create widgets.
"""

from __future__ import annotations

#: Every style name widgets may use, with (foreground, background, monochrome) for the default
#: theme.  Foreground may carry urwid attributes after a comma ("white,bold").
_DEFAULT: dict[str, tuple[str, str, str]] = {
    "body": ("default", "default", ""),
    "header": ("white,bold", "dark blue", "standout"),
    "status": ("light gray", "dark blue", "standout"),
    "status_error": ("white,bold", "dark red", "standout,bold"),
    "status_info": ("light gray", "dark blue", "standout"),
    "summary_green": ("light green,bold", "dark blue", "standout,bold"),
    "summary_amber": ("yellow,bold", "dark blue", "standout,bold"),
    "summary_red": ("light red,bold", "dark blue", "standout,bold"),
    "summary_grey": ("dark gray", "dark blue", "standout"),
    "lock_state": ("yellow", "dark blue", "standout"),
    "spinner": ("light cyan", "dark blue", "standout"),
    "pane_title": ("light cyan,bold", "default", "bold"),
    "conversation": ("default", "default", ""),
    "conversation_focus": ("black", "light gray", "standout"),
    "conversation_open": ("white,bold", "default", "bold"),
    "dot_online": ("light green", "default", "bold"),
    "dot_connecting": ("yellow", "default", ""),
    "dot_offline": ("dark gray", "default", ""),
    "badge": ("white,bold", "dark magenta", "standout,bold"),
    "offer_badge": ("black", "yellow", "standout"),
    "day": ("dark cyan", "default", "underline"),
    "time": ("dark gray", "default", ""),
    "name_in": ("light cyan,bold", "default", "bold"),
    "name_out": ("light green,bold", "default", "bold"),
    "body_in": ("default", "default", ""),
    "body_out": ("default", "default", ""),
    "local": ("light gray", "default", ""),
    "mark_queued": ("dark gray", "default", ""),
    "mark_sent": ("light gray", "default", ""),
    "mark_delivered": ("light green", "default", ""),
    "mark_read": ("light cyan,bold", "default", "bold"),
    "marker": ("light red,bold", "default", "bold,underline"),
    "input": ("default", "default", ""),
    "prompt": ("light cyan,bold", "default", "bold"),
    "hint": ("dark gray", "default", ""),
    "warning": ("yellow,bold", "default", "bold"),
    "error": ("light red,bold", "default", "bold"),
    "good": ("light green", "default", "bold"),
    "dialog": ("default", "dark gray", ""),
    "dialog_title": ("white,bold", "dark blue", "standout"),
    "field": ("white", "black", "underline"),
    "field_focus": ("white,bold", "dark blue", "standout"),
    "button": ("light gray", "dark gray", ""),
    "button_focus": ("white,bold", "dark blue", "standout"),
    "banner": ("dark cyan", "default", ""),
    "banner_bright": ("white,bold", "default", "bold"),
    "lock": ("default", "default", ""),
    "safety": ("yellow,bold", "default", "bold"),
    "help_key": ("light cyan,bold", "default", "bold"),
    "help_category": ("white,bold,underline", "default", "bold,underline"),
}

STYLES: frozenset[str] = frozenset(_DEFAULT)

_LIGHT_OVERRIDES: dict[str, tuple[str, str, str]] = {
    "body": ("black", "light gray", ""),
    "conversation": ("black", "light gray", ""),
    "conversation_open": ("dark blue,bold", "light gray", "bold"),
    "dot_online": ("dark green", "light gray", "bold"),
    "dot_connecting": ("brown", "light gray", ""),
    "dot_offline": ("dark gray", "light gray", ""),
    "day": ("dark blue", "light gray", "underline"),
    "time": ("dark gray", "light gray", ""),
    "name_in": ("dark blue,bold", "light gray", "bold"),
    "name_out": ("dark green,bold", "light gray", "bold"),
    "body_in": ("black", "light gray", ""),
    "body_out": ("black", "light gray", ""),
    "local": ("dark gray", "light gray", ""),
    "marker": ("dark red,bold", "light gray", "bold,underline"),
    "input": ("black", "light gray", ""),
    "hint": ("dark gray", "light gray", ""),
    "dialog": ("black", "light gray", ""),
    "banner": ("dark blue", "light gray", ""),
    "banner_bright": ("black,bold", "light gray", "bold"),
    "pane_title": ("dark blue,bold", "light gray", "bold"),
}

THEMES = ("default", "light", "mono")

PaletteEntry = tuple[str, str, str, str]


def palette(theme: str = "default") -> list[PaletteEntry]:
    """Return an urwid palette for *theme*.

    :param theme: one of :data:`THEMES`; ``"mono"`` uses only the monochrome attributes.
    :returns: entries ``(name, foreground, background, mono)`` for ``urwid.MainLoop``.
    :raises ValueError: for an unknown theme.
    """
    if theme not in THEMES:
        raise ValueError(f"unknown theme {theme!r}; choose one of {', '.join(THEMES)}")
    table = dict(_DEFAULT)
    if theme == "light":
        table.update(_LIGHT_OVERRIDES)
    entries: list[PaletteEntry] = []
    for name, (fg, bg, mono) in table.items():
        if theme == "mono":
            fg, bg = (mono or "default"), "default"
        entries.append((name, fg, bg, mono))
    return entries
