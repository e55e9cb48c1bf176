"""The animated ASCII banner of the welcome screen.

Frames are pure data (:func:`frame`): a bright band sweeps across the letters.  The animation
is driven by a :class:`twisted.internet.task.LoopingCall` on an injected clock, so tests step it
with :class:`twisted.internet.task.Clock` and golden screens use the static frame.  Narrow
terminals get a one-line fallback.  This module must not import the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import urwid
from twisted.internet.task import LoopingCall

ART: tuple[str, ...] = (
    "     _   _    ____  __     __ ___  ____  ",
    "    | | / \\  |  _ \\ \\ \\   / /|_ _|/ ___| ",
    " _  | |/ _ \\ | |_) | \\ \\ / /  | | \\___ \\ ",
    "| |_| / ___ \\|  _ <   \\ V /   | |  ___) |",
    " \\___/_/   \\_\\_| \\_\\   \\_/   |___||____/ ",
)
SMALL = "J A R V I S"
TAGLINE = "private messages, peer to peer, from your terminal"

WIDTH = max(len(line) for line in ART)
BAND = 6  # columns lit at once
FRAME_COUNT = WIDTH + BAND
INTERVAL = 0.08  # seconds between frames

Markup = list[tuple[str, str]]


def frame(step: int | None) -> list[Markup]:
    """Return the banner lines for animation *step* (``None``: the static frame).

    :returns: one markup list (``[(style, text), ...]``) per line of :data:`ART`.
    """
    lines: list[Markup] = []
    for row, text in enumerate(ART):
        text = text.ljust(WIDTH)
        if step is None:
            lines.append([("banner_bright", text)])
            continue
        # The band leans right as it goes down, like light on the letters.
        start = (step % FRAME_COUNT) - BAND + row
        before = max(0, min(WIDTH, start))
        after = max(0, min(WIDTH, start + BAND))
        parts = [("banner", text[:before]), ("banner_bright", text[before:after])]
        parts.append(("banner", text[after:]))
        lines.append([part for part in parts if part[1]])
    return lines


class BannerText(urwid.WidgetWrap[urwid.Text]):
    """The banner as a flow widget: the big art when it fits, else the one-line fallback."""

    def __init__(self) -> None:
        self._step: int | None = None
        self._big = urwid.Text(self._markup(), align="center")
        self._small = urwid.Text(("banner_bright", SMALL), align="center")
        super().__init__(self._big)

    def _markup(self) -> list[tuple[str, str]]:
        markup: list[tuple[str, str]] = []
        for index, line in enumerate(frame(self._step)):
            if index:
                markup.append(("banner", "\n"))
            markup.extend(line)
        return markup

    def set_step(self, step: int | None) -> None:
        """Show animation step *step* (``None``: the static frame)."""
        self._step = step
        self._big.set_text(self._markup())

    def rows(self, size: Any, focus: bool = False) -> int:
        (maxcol,) = size
        return len(ART) if maxcol >= WIDTH else 1

    def render(self, size: Any, focus: bool = False) -> urwid.Canvas:
        (maxcol,) = size
        widget = self._big if maxcol >= WIDTH else self._small
        return widget.render(size, focus)


class BannerAnimation:
    """Advances a :class:`BannerText` on a clock until stopped.

    :param banner: the widget to animate.
    :param clock: the reactor (or a ``Clock`` in tests).
    :param redraw: called after each frame (the main loop's ``draw_screen``).
    """

    def __init__(self, banner: BannerText, clock: Any, redraw: Callable[[], None]) -> None:
        self._banner = banner
        self._redraw = redraw
        self._step = 0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    @property
    def running(self) -> bool:
        """Whether frames are being advanced."""
        return bool(self._loop.running)

    def start(self) -> None:
        """Start animating (does nothing when already running)."""
        if not self._loop.running:
            self._loop.start(INTERVAL, now=True)

    def stop(self) -> None:
        """Stop animating and show the static frame."""
        if self._loop.running:
            self._loop.stop()
        self._banner.set_step(None)

    def _tick(self) -> None:
        self._banner.set_step(self._step)
        self._step = (self._step + 1) % FRAME_COUNT
        try:
            self._redraw()
        except Exception:
            # A failed redraw must not kill the LoopingCall's Deferred with an unhandled error.
            self.stop()
