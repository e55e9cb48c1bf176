"""Jarvis's peer network: thin Twisted code that carries sessions between nodes.

* :mod:`jarvis.net.tls`: pinned mutual TLS 1.3 connection creators (no certificate authority).
* :mod:`jarvis.net.peer`: the ``Protocol`` that feeds a sans-IO session, with a TLS deadline.
* :mod:`jarvis.net.network`: listening, dialling with backoff, one session per contact.

Everything above the bytes (records, the hello, messages, acks) lives in
:mod:`jarvis.protocol`; this package must not parse or build application records.
"""
