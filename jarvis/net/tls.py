"""Pinned mutual TLS 1.3 between Jarvis nodes, without any certificate authority.

Every node presents a self-signed certificate for its Ed25519 identity key with the single DNS
name ``<uid>.jarvis``.  A certificate is accepted when the uid computed from the key in the
leaf (``base32(sha256(SubjectPublicKeyInfo))``) is the one we want *and* the certificate names
that same uid (checked with :mod:`service_identity`).  The TLS handshake proves possession of
the key, so the key is the pin; issuer, chain and validity dates play no part, and a node may
reissue its certificate for the same key at any time.

* :func:`client_creator` dials one contact: the server must be exactly *expected_uid*.
* :func:`server_creator` listens for many: a client must present a certificate, and its uid
  must pass ``accept_uid``; refusals are counted and reported to ``on_refused`` (not logged
  one by one: a flood of strangers would fill the disk).
* :func:`peer_uid_of` and :func:`channel_binding_of` read the negotiated peer and the TLS
  exporter value (the channel binding the application hello signs) from a TLS transport.

Both creators speak TLS 1.3 only, disable session tickets and the session cache (a resumed
session would skip the certificate check), send no SNI (the uid we dial stays out of the clear
text), and hand :mod:`cryptography` key and certificate objects to pyOpenSSL.

This module configures TLS and nothing else: it never opens connections, never reads the
contact list itself (``accept_uid`` is the caller's policy) and never logs key material.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from OpenSSL import SSL
from service_identity.cryptography import verify_certificate_hostname
from service_identity.exceptions import CertificateError, VerificationError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from jarvis.common.logs import log_id, redact
from jarvis.crypto.identity import UID_DOMAIN, uid_for_certificate

#: Label of the TLS exporter (RFC 8446 section 7.5) that yields the channel binding.
EXPORTER_LABEL = b"EXPORTER-jarvis-v1"
#: Length of the channel binding in bytes.
CHANNEL_BINDING_BYTES = 32

_VERIFY_MODE = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT

log = Logger(namespace="jarvis.net.tls")


class CertifiedIdentity(Protocol):
    """What the TLS layer needs of an identity (:class:`jarvis.crypto.identity.IdentityKey`)."""

    @property
    def uid(self) -> str:
        """The identity's uid."""
        ...

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The private key, as a :mod:`cryptography` object."""
        ...

    def certificate(self) -> x509.Certificate:
        """A self-signed certificate for the key, currently valid."""
        ...


class NoPeerCertificate(Exception):
    """The TLS connection has no verified peer certificate (the handshake is not complete).

    This is a programming error in the caller: ask for the peer only after
    ``handshakeCompleted``.
    """


def peer_hostname(uid: str) -> str:
    """Return the DNS name that a certificate for *uid* must carry: ``<uid>.jarvis``."""
    return f"{uid}.{UID_DOMAIN}"


def certificate_refusal(cert: x509.Certificate, uid: str) -> str | None:
    """Say why *cert* does not prove to be *uid*, or return ``None`` if it does.

    :param cert: the leaf certificate a peer presented.
    :param uid: the uid computed from that certificate's key, or the uid we expect.
    :returns: ``None`` when the key hashes to *uid* and the certificate names
        ``<uid>.jarvis``; otherwise a short reason (no key material in it).
    """
    actual = uid_for_certificate(cert)
    if actual != uid:
        return f"the certificate's key is {actual}, not {uid}"
    try:
        verify_certificate_hostname(cert, peer_hostname(uid))
    except (VerificationError, CertificateError):
        return f"the certificate does not name {peer_hostname(uid)}"
    return None


class ContextCache:
    """One ``SSL.Context`` per certificate of our identity (rebuilt if it is reissued).

    The client and server settings are the same, so one cache serves every dial and the
    listener (:class:`jarvis.net.network.PeerNetwork` shares one).
    """

    def __init__(self, identity: CertifiedIdentity) -> None:
        self._identity = identity
        self._certificate: x509.Certificate | None = None
        self._context: SSL.Context | None = None

    def context(self) -> SSL.Context:
        cert = self._identity.certificate()
        if self._context is None or cert is not self._certificate:
            context = SSL.Context(SSL.TLS_METHOD)
            context.set_min_proto_version(SSL.TLS1_3_VERSION)
            context.set_max_proto_version(SSL.TLS1_3_VERSION)
            context.use_certificate(cert)
            context.use_privatekey(self._identity.private_key)
            context.check_privatekey()
            # No resumption: a resumed session would skip the verify callback (the pin).
            context.set_options(SSL.OP_NO_TICKET)
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            # Free a connection's read and write buffers (~34 KiB) while they are empty: most
            # sessions are idle most of the time (the scale benchmark's 1,000 sessions).
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            self._certificate, self._context = cert, context
        return self._context


Decide = Callable[[x509.Certificate], bool]


def _verify_callback(decide: Decide) -> Callable[[SSL.Connection, Any, int, int, int], bool]:
    """Build one connection's verify callback around *decide* (called once, on the leaf).

    OpenSSL calls the callback for every certificate of the chain it built, top first, and
    again for the same certificate for each error it finds; the verdict on the leaf is taken
    once and repeated.  Certificates above the leaf are let through: trust comes from the
    leaf's key alone.  Nothing may escape an OpenSSL callback, so any exception refuses.
    """
    verdict: bool | None = None

    def verify(connection: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
        nonlocal verdict
        if depth != 0:
            return True
        if verdict is None:
            try:
                verdict = bool(decide(cert.to_cryptography()))
            except Exception:
                log.failure("while checking a peer certificate")
                verdict = False
        return verdict

    return verify


def _new_connection(contexts: ContextCache, tls_protocol: object, decide: Decide) -> Any:
    connection = SSL.Connection(contexts.context(), None)
    connection.set_app_data(tls_protocol)
    connection.set_verify(_VERIFY_MODE, _verify_callback(decide))
    return connection


@implementer(IOpenSSLClientConnectionCreator)
class PinnedClientCreator:
    """Client side of a pinned connection: presents our certificate, wants one exact uid.

    :ivar refusal: why the last server was refused, or ``None``; the dialler reports it.
    """

    def __init__(
        self,
        identity: CertifiedIdentity,
        expected_uid: str,
        contexts: ContextCache | None = None,
    ) -> None:
        """Dial as *identity* and accept only a server whose key is *expected_uid*.

        :param contexts: the identity's shared :class:`ContextCache` (default: a new one).
        """
        self._contexts = contexts if contexts is not None else ContextCache(identity)
        self.expected_uid = expected_uid
        self.refusal: str | None = None

    def _decide(self, cert: x509.Certificate) -> bool:
        reason = certificate_refusal(cert, self.expected_uid)
        if reason is not None:
            self.refusal = reason
            log.warn(
                "refused server for {expected}: {reason}",
                expected=log_id(self.expected_uid),
                reason=redact(reason),
            )
            return False
        return True

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """Return a client ``SSL.Connection`` for *tlsProtocol* (Twisted calls this)."""
        connection = _new_connection(self._contexts, tlsProtocol, self._decide)
        connection.set_connect_state()
        return connection


@implementer(IOpenSSLServerConnectionCreator)
class PinnedServerCreator:
    """Server side: requires a client certificate and asks ``accept_uid`` about its uid.

    :ivar refused_count: how many client certificates were refused so far.
    """

    def __init__(
        self,
        identity: CertifiedIdentity,
        accept_uid: Callable[[str], bool],
        on_refused: Callable[[str, str], object] | None = None,
        contexts: ContextCache | None = None,
    ) -> None:
        """Listen as *identity*; accept a client if ``accept_uid(uid)`` and its SAN matches.

        :param on_refused: called with ``(uid, reason)`` after each refusal.
        :param contexts: the identity's shared :class:`ContextCache` (default: a new one).
        """
        self._contexts = contexts if contexts is not None else ContextCache(identity)
        self._accept_uid = accept_uid
        self._on_refused = on_refused
        self.refused_count = 0

    def _decide(self, cert: x509.Certificate) -> bool:
        uid = uid_for_certificate(cert)
        if not self._accept_uid(uid):
            reason = "not an acceptable contact"
        else:
            reason = certificate_refusal(cert, uid) or ""
        if not reason:
            return True
        self.refused_count += 1
        # not logged here: one line per stranger would let a flood fill the disk; the
        # listener's admission control logs an aggregate (jarvis.net.admission)
        if self._on_refused is not None:
            self._on_refused(uid, reason)
        return False

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """Return a server ``SSL.Connection`` for *tlsProtocol* (Twisted calls this)."""
        connection = _new_connection(self._contexts, tlsProtocol, self._decide)
        connection.set_accept_state()
        return connection


def client_creator(
    identity: CertifiedIdentity, expected_uid: str, *, contexts: ContextCache | None = None
) -> PinnedClientCreator:
    """Return the connection creator for dialling the contact *expected_uid* as *identity*.

    Use it as ``TLSMemoryBIOFactory(client_creator(me, uid), True, factory)``.
    """
    return PinnedClientCreator(identity, expected_uid, contexts)


def server_creator(
    identity: CertifiedIdentity,
    accept_uid: Callable[[str], bool],
    *,
    on_refused: Callable[[str, str], object] | None = None,
    contexts: ContextCache | None = None,
) -> PinnedServerCreator:
    """Return the connection creator for accepting contacts as *identity*.

    Use it as ``TLSMemoryBIOFactory(server_creator(me, ok), False, factory)``.

    :param accept_uid: the policy, called once per handshake with the client's uid.
    :param on_refused: called with ``(uid, reason)`` after each refusal.
    """
    return PinnedServerCreator(identity, accept_uid, on_refused, contexts)


def _handle(transport: Any) -> SSL.Connection:
    handle = transport.getHandle()
    if not isinstance(handle, SSL.Connection):
        raise NoPeerCertificate("the transport is not a TLS connection")
    return handle


def peer_uid_of(transport: Any) -> str:
    """Return the uid of the verified certificate the peer presented on *transport*.

    :param transport: a ``TLSMemoryBIOProtocol`` whose handshake has completed.
    :raises NoPeerCertificate: if there is no peer certificate (yet).
    """
    cert = _handle(transport).get_peer_certificate(as_cryptography=True)
    if cert is None:
        raise NoPeerCertificate("the peer presented no certificate")
    return uid_for_certificate(cert)


def peer_public_bytes_of(transport: Any) -> bytes:
    """Return the raw Ed25519 public key of the peer's verified certificate on *transport*.

    :raises NoPeerCertificate: if there is no peer certificate (yet).
    """
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = _handle(transport).get_peer_certificate(as_cryptography=True)
    if cert is None:
        raise NoPeerCertificate("the peer presented no certificate")
    return cert.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def channel_binding_of(transport: Any) -> bytes:
    """Return the 32-byte TLS exporter value of *transport*, the same on both ends.

    :param transport: a ``TLSMemoryBIOProtocol`` whose handshake has completed.
    :raises NoPeerCertificate: if *transport* is not TLS.
    """
    return _handle(transport).export_keying_material(EXPORTER_LABEL, CHANNEL_BINDING_BYTES)
