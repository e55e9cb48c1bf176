"""TLS 1.3 for the mailbox: the server shows its pinned key, clients stay anonymous.

The peer-to-peer creators in :mod:`jarvis.net.tls` require a client certificate (they are
mutual); a mailbox must not: its clients are anonymous and authorise each command with a queue
key instead.  So this module builds its own two creators with the same settings (TLS 1.3 only,
no session tickets or cache, no SNI, :mod:`cryptography` objects handed to pyOpenSSL) and the
same pin check (:func:`jarvis.net.tls.certificate_refusal`: the key in the leaf must hash to
the pin and the certificate must name ``<pin>.jarvis``).

This module configures TLS and nothing else; it never logs key material.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from jarvis.net.tls import CertifiedIdentity, certificate_refusal

log = Logger(namespace="jarvis.mailbox.tls")


def _context() -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return context


@implementer(IOpenSSLServerConnectionCreator)
class MailboxServerCreator:
    """Server side: presents the mailbox's certificate, asks clients for none."""

    def __init__(self, identity: CertifiedIdentity) -> None:
        context = _context()
        context.use_certificate(identity.certificate())
        context.use_privatekey(identity.private_key)
        context.check_privatekey()
        context.set_verify(SSL.VERIFY_NONE)
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_accept_state()
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class MailboxClientCreator:
    """Client side: no certificate of ours; the server's key must hash to *pin*.

    :ivar refusal: why the last server was refused, or ``None``.
    """

    def __init__(self, pin: str) -> None:
        self.pin = pin
        self.refusal: str | None = None
        self._context = _context()

    def _verify(
        self, connection: SSL.Connection, cert: Any, errno: int, depth: int, ok: int
    ) -> bool:
        if depth != 0:
            return True  # trust comes from the leaf's key alone
        try:
            leaf: x509.Certificate = cert.to_cryptography()
            reason = certificate_refusal(leaf, self.pin)
        except Exception:
            reason = "unreadable certificate"
        if reason is not None:
            self.refusal = reason
            log.warn("refused a mailbox that does not match its pin")
            return False
        return True

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        connection.set_connect_state()
        return connection
