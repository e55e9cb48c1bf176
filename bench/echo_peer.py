"""The ceiling benchmark's echo peer: a child process serving raw length-prefixed echo.

``python -m bench.echo_peer --cert C --key K --peer-cert P`` listens on 127.0.0.1, one port for
plain TCP and two for pinned mutual TLS 1.3 (Twisted's default write-aggregating TLS protocol,
and the unbuffered one), prints ``tcp=<port> tls=<port> tls_unbuffered=<port>`` on stdout, and
serves until its stdin closes (the parent closing the pipe, or dying, ends it).

Each connection's first frame picks its mode: ``echo`` sends every later frame back; ``sink``
counts frames and, on an empty frame, answers with the count in ASCII (one-way streaming).

This module also holds the pieces both ends share: :func:`make_identity` (a self-signed
Ed25519 certificate) and :class:`PinnedTLSCreator` (TLS 1.3 only, both sides present a
certificate, each trusts exactly one peer certificate).  It is benchmark code: it must not be
imported by the :mod:`jarvis` package, and it installs the reactor only in :func:`main`.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

#: Largest frame either end accepts (the streaming benchmark sends 16 KiB frames).
MAX_FRAME = 1 << 20

MODE_ECHO = b"echo"
MODE_SINK = b"sink"


@dataclass(frozen=True)
class Identity:
    """A private key and its self-signed certificate.

    :param key: the Ed25519 private key.
    :param certificate: the self-signed certificate for *key*, SAN ``DNS:<name>``.
    :param name: the DNS name in the certificate.
    """

    key: ed25519.Ed25519PrivateKey
    certificate: x509.Certificate
    name: str

    def key_pem(self) -> bytes:
        """Return the private key as unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def certificate_pem(self) -> bytes:
        """Return the certificate as PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def make_identity(name: str) -> Identity:
    """Make a fresh Ed25519 key and a self-signed certificate for it, valid for one day.

    :param name: DNS name for the subject and the SAN (e.g. ``"server.bench.jarvis"``).
    """
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, None)
    )
    return Identity(key=key, certificate=certificate, name=name)


def load_identity(key_path: Path, certificate_path: Path) -> Identity:
    """Load an :class:`Identity` written with :meth:`Identity.key_pem` / ``certificate_pem``.

    :raises TypeError: if the key is not Ed25519.
    """
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TypeError(f"{key_path} does not hold an Ed25519 key")
    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    return Identity(key=key, certificate=certificate, name=_dns_name(certificate))


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class PinnedTLSCreator:
    """Connection creator for pinned mutual TLS 1.3, usable as client or server.

    Both sides present their certificate and require the peer's; a peer is accepted only if its
    (self-signed, chainless) leaf certificate is byte-for-byte the pinned one.

    :param identity: our key and certificate.
    :param peer_certificate: the one certificate we accept from the other side.
    """

    def __init__(self, identity: Identity, peer_certificate: x509.Certificate) -> None:
        self._server_name = identity.name.encode("ascii")
        self._peer_name = _dns_name(peer_certificate).encode("ascii")
        pinned = peer_certificate.public_bytes(serialization.Encoding.DER)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.use_certificate(identity.certificate)
        context.use_privatekey(identity.key)
        context.check_privatekey()

        def verify(
            connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int
        ) -> bool:
            # The peer's certificate is self-signed, so OpenSSL's own chain check fails
            # (errno 18); the pin replaces it.  Anything above depth 0 is an unexpected chain.
            return depth == 0 and (
                certificate.to_cryptography().public_bytes(serialization.Encoding.DER) == pinned
            )

        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """Return a client-side connection that sends the peer's name as SNI."""
        connection = SSL.Connection(self._context, None)
        connection.set_tlsext_host_name(self._peer_name)
        return connection

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """Return a server-side connection."""
        return SSL.Connection(self._context, None)


def _dns_name(certificate: x509.Certificate) -> str:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return str(names.value.get_values_for_type(x509.DNSName)[0])


class EchoPeerProtocol(Int32StringReceiver):
    """Server side of one benchmark connection: echo or count frames, per the first frame."""

    MAX_LENGTH = MAX_FRAME

    def __init__(self) -> None:
        self._mode: bytes | None = None
        self._count = 0

    def stringReceived(self, string: bytes) -> None:
        """Handle one frame: the mode, an echo, or a sink frame / end marker."""
        if self._mode is None:
            if string not in (MODE_ECHO, MODE_SINK):
                transport: Any = self.transport
                transport.loseConnection()
                return
            self._mode = string
        elif self._mode == MODE_ECHO:
            self.sendString(string)
        elif string:
            self._count += 1
        else:
            self.sendString(str(self._count).encode("ascii"))
            self._count = 0

    def lengthLimitExceeded(self, length: int) -> None:
        """Drop a connection that announces a frame above :data:`MAX_FRAME`."""
        transport: Any = self.transport
        transport.loseConnection()


class ParentWatch(Protocol):
    """Stops the reactor when stdin closes: the parent is done or gone."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Stop the reactor (once)."""
        if self._reactor.running:
            self._reactor.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve echo on three loopback ports until stdin closes.

    :param argv: ``--cert``, ``--key``, ``--peer-cert`` (PEM files).
    :returns: the process exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.echo_peer")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--peer-cert", type=Path, required=True)
    options = parser.parse_args(argv)

    from jarvis.runtime.reactor import install

    reactor = install()
    from twisted.internet.stdio import StandardIO
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

    identity = load_identity(options.key, options.cert)
    peer = x509.load_pem_x509_certificate(options.peer_cert.read_bytes())
    # Any: mypy cannot see zope.interface declarations.
    echo_factory: Any = Factory.forProtocol(EchoPeerProtocol)
    creator: Any = PinnedTLSCreator(identity, peer)
    tls_factory = TLSMemoryBIOFactory(creator, False, echo_factory)
    # Twisted's default TLS protocol aggregates small writes until the next reactor turn;
    # the unbuffered variant writes each one at once (see docs/benchmarks.md).
    unbuffered_factory = TLSMemoryBIOFactory(creator, False, echo_factory)
    unbuffered_factory.protocol = TLSMemoryBIOProtocol
    ports = {
        name: reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1").getHost().port
        for name, factory in (
            ("tcp", echo_factory),
            ("tls", tls_factory),
            ("tls_unbuffered", unbuffered_factory),
        )
    }
    stdio = StandardIO(ParentWatch(reactor), reactor=reactor)
    line = " ".join(f"{name}={port}" for name, port in ports.items()) + "\n"
    stdio.write(line.encode("ascii"))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
