"""The application core: identity life cycle, contacts, conversations, outbox and events.

Pure application logic over :mod:`jarvis.crypto`, :mod:`jarvis.store` and the sans-IO
:mod:`jarvis.protocol`; it never imports the reactor, ``twisted.internet.protocol`` or urwid.
The daemon injects time, the thread runner and the peer network.
"""
