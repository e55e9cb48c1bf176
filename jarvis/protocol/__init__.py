"""The sans-IO peer protocol: framing, wire records and the peer session state machine.

Nothing in this package performs I/O or imports ``twisted.internet.reactor``,
``twisted.internet.protocol`` or ``urwid``: bytes come in through method calls, go out through
injected callables, and time comes from an injected ``IReactorTime``.  ``jarvis.net`` feeds it.
"""
