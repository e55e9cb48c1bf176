"""Jarvis's terminal UI: urwid on the Twisted asyncio reactor, a client of the daemon's local API.

Layout: :mod:`~jarvis.ui.keymap` (the one key table), :mod:`~jarvis.ui.model` (state, no urwid),
:mod:`~jarvis.ui.widgets` and :mod:`~jarvis.ui.screens` (views), :mod:`~jarvis.ui.controller`
(keys, daemon calls, events, reconnection), :mod:`~jarvis.ui.app` (``run()``: reactor, main
loop, connecting or starting the daemon).  Importing this package must stay cheap: it imports
nothing itself.
"""
