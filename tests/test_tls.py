"""Tests for :mod:`jarvis.net.tls`: pinned mutual TLS 1.3, in memory with ``iosim``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from jarvis.crypto.identity import IdentityKey
from jarvis.net import tls


@implementer(IHandshakeListener)
class RecordingProtocol(Protocol):
    """Records the TLS handshake, the application bytes and the loss; greets when it can."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.handshake_done = False
        self.received = b""
        self.lost: Failure | None = None
        self.peer_uid: str | None = None
        self.binding: bytes | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.peer_uid = tls.peer_uid_of(self.transport)
        self.binding = tls.channel_binding_of(self.transport)
        if self.greeting:
            transport: Any = self.transport
            transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class OtherKeyIdentity:
    """An identity that presents *cert* (made for another key or name) with its own key."""

    def __init__(self, identity: IdentityKey, cert: x509.Certificate) -> None:
        self.uid = identity.uid
        self.private_key = identity.private_key
        self._cert = cert

    def certificate(self) -> x509.Certificate:
        return self._cert


def make_certificate(key: IdentityKey, dns_name: str) -> x509.Certificate:
    """Return a self-signed certificate for *key* naming *dns_name* (maybe a wrong one)."""
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .sign(key.private_key, algorithm=None)
    )


def make_pair(
    client_identity: tls.CertifiedIdentity,
    expected_uid: str,
    server_identity: tls.CertifiedIdentity,
    accept: set[str],
    refused: list[tuple[str, str]] | None = None,
) -> tuple[RecordingProtocol, RecordingProtocol, tls.PinnedServerCreator, iosim.IOPump]:
    """Connect a client and a server over TLS in memory and run the handshake to its end."""
    clock = Clock()
    client_app = RecordingProtocol(b"from client")
    server_app = RecordingProtocol(b"from server")
    server_creator = tls.server_creator(
        server_identity,
        accept.__contains__,
        on_refused=None if refused is None else lambda *args: refused.append(args),
    )
    client_factory = TLSMemoryBIOFactory(
        cast(IOpenSSLClientConnectionCreator, tls.client_creator(client_identity, expected_uid)),
        True,
        cast(IProtocolFactory, Factory.forProtocol(lambda: client_app)),
        clock=cast(IReactorTime, clock),
    )
    server_factory = TLSMemoryBIOFactory(
        cast(IOpenSSLServerConnectionCreator, server_creator),
        False,
        cast(IProtocolFactory, Factory.forProtocol(lambda: server_app)),
        clock=cast(IReactorTime, clock),
    )
    address = cast(IAddress, iosim.FakeAddress())
    _client, _server, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(address),
        lambda: client_factory.buildProtocol(address),
        greet=False,
        clock=clock,
    )
    for _ in range(20):
        pump.pump()
    return client_app, server_app, server_creator, pump


class AcceptedPairTests(SynchronousTestCase):
    """Two contacts with the right keys and names."""

    def setUp(self) -> None:
        self.alice = IdentityKey.generate()
        self.bob = IdentityKey.generate()
        self.client, self.server, self.creator, _pump = make_pair(
            self.alice, self.bob.uid, self.bob, {self.alice.uid}
        )

    def test_both_sides_exchange_data(self) -> None:
        """When both keys are pinned, then the handshake completes and data flows both ways."""
        self.assertTrue(self.client.handshake_done)
        self.assertTrue(self.server.handshake_done)
        self.assertEqual(self.server.received, b"from client")
        self.assertEqual(self.client.received, b"from server")
        self.assertIsNone(self.client.lost)
        self.assertIsNone(self.server.lost)
        self.assertEqual(self.creator.refused_count, 0)

    def test_each_side_sees_the_other_uid(self) -> None:
        """When the handshake completes, then each side reads the other's uid from TLS."""
        self.assertEqual(self.client.peer_uid, self.bob.uid)
        self.assertEqual(self.server.peer_uid, self.alice.uid)

    def test_channel_binding_is_shared(self) -> None:
        """When the handshake completes, then both sides export the same 32-byte binding."""
        self.assertEqual(len(self.client.binding or b""), tls.CHANNEL_BINDING_BYTES)
        self.assertEqual(self.client.binding, self.server.binding)

    def test_a_new_connection_has_a_new_binding(self) -> None:
        """When the same pair connects again, then the channel binding differs."""
        client2, _server2, _creator, _pump = make_pair(
            self.alice, self.bob.uid, self.bob, {self.alice.uid}
        )
        self.assertNotEqual(client2.binding, self.client.binding)


class ContextTests(SynchronousTestCase):
    """The one SSL.Context of an identity."""

    def test_settings(self) -> None:
        """When the context is built, then it speaks only TLS 1.3, never resumes (the pin is
        checked on every handshake) and frees idle connections' buffers."""
        context = tls.ContextCache(IdentityKey.generate()).context()
        # set_mode ORs its argument in and returns the resulting mode
        self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)
        self.assertTrue(context.set_options(0) & SSL.OP_NO_TICKET)
        self.assertEqual(context.get_session_cache_mode(), SSL.SESS_CACHE_OFF)


class UnknownClientTests(SynchronousTestCase):
    """A client whose key the server does not accept."""

    def test_refused_before_any_data(self) -> None:
        """When the client's uid is not acceptable, then the server drops it unread, counted."""
        alice, bob, mallory = (IdentityKey.generate() for _ in range(3))
        client, server, creator, _pump = make_pair(mallory, bob.uid, bob, {alice.uid})
        self.assertIsNotNone(server.lost)
        self.assertFalse(server.handshake_done)
        self.assertEqual(server.received, b"")
        self.assertEqual(creator.refused_count, 1)
        # TLS 1.3: the client may finish its half, but the server's refusal still reaches it.
        self.assertIsNotNone(client.lost)
        self.assertEqual(client.received, b"")

    def test_refusal_is_reported_by_uid(self) -> None:
        """When a client is refused, then on_refused gets its uid and a reason."""
        bob, mallory = IdentityKey.generate(), IdentityKey.generate()
        refused: list[tuple[str, str]] = []
        make_pair(mallory, bob.uid, bob, set(), refused)
        self.assertEqual(refused, [(mallory.uid, "not an acceptable contact")])


class WrongServerKeyTests(SynchronousTestCase):
    """A server that answers for a uid with a different key."""

    def test_client_refuses(self) -> None:
        """When the server's key is not the expected uid, then the client drops it unread."""
        alice, bob, mallory = (IdentityKey.generate() for _ in range(3))
        # Mallory even carries Bob's name in her certificate; her key still gives her away.
        impostor = OtherKeyIdentity(mallory, make_certificate(mallory, tls.peer_hostname(bob.uid)))
        client, server, _creator, _pump = make_pair(alice, bob.uid, impostor, {alice.uid})
        self.assertFalse(client.handshake_done)
        self.assertIsNotNone(client.lost)
        self.assertEqual(client.received, b"")
        self.assertEqual(server.received, b"")
        self.assertIsInstance(client.lost.value if client.lost else None, SSL.Error)


class MismatchedNameTests(SynchronousTestCase):
    """A certificate whose SAN does not name the uid of its own key."""

    def test_server_refuses_client(self) -> None:
        """When the client's certificate names another uid, then the server refuses it."""
        alice, bob = IdentityKey.generate(), IdentityKey.generate()
        other = IdentityKey.generate()
        liar = OtherKeyIdentity(alice, make_certificate(alice, tls.peer_hostname(other.uid)))
        _client, server, creator, _pump = make_pair(liar, bob.uid, bob, {alice.uid})
        self.assertFalse(server.handshake_done)
        self.assertEqual(server.received, b"")
        self.assertEqual(creator.refused_count, 1)

    def test_client_refuses_server(self) -> None:
        """When the server's certificate names another uid, then the client refuses it."""
        alice, bob, other = (IdentityKey.generate() for _ in range(3))
        liar = OtherKeyIdentity(bob, make_certificate(bob, tls.peer_hostname(other.uid)))
        client, _server, _creator, _pump = make_pair(alice, bob.uid, liar, {alice.uid})
        self.assertFalse(client.handshake_done)
        self.assertEqual(client.received, b"")

    def test_refusal_reason(self) -> None:
        """When a certificate names another uid, then certificate_refusal says so."""
        alice, other = IdentityKey.generate(), IdentityKey.generate()
        cert = make_certificate(alice, tls.peer_hostname(other.uid))
        reason = tls.certificate_refusal(cert, alice.uid)
        self.assertEqual(reason, f"the certificate does not name {alice.uid}.jarvis")
        self.assertIsNone(tls.certificate_refusal(alice.certificate(), alice.uid))
        self.assertIn("not", tls.certificate_refusal(alice.certificate(), other.uid) or "")


class ProtocolVersionTests(SynchronousTestCase):
    """The creators speak TLS 1.3 only."""

    def test_negotiates_tls13(self) -> None:
        """When a pair connects, then the negotiated version is TLS 1.3."""
        alice, bob = IdentityKey.generate(), IdentityKey.generate()
        client, _server, _creator, _pump = make_pair(alice, bob.uid, bob, {alice.uid})
        handle = client.transport.getHandle()  # type: ignore[union-attr]
        self.assertEqual(handle.get_protocol_version_name(), "TLSv1.3")
