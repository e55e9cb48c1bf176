"""Tests for :mod:`jarvis.net.tls_batching`: TLS writes handed to the transport whole, in
memory with ``iosim``, against Twisted's own TLS protocol on the other end."""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.net import tls
from jarvis.net.tls_batching import BatchingTLSFactory
from tests.test_tls import RecordingProtocol

MiB = 1024 * 1024


class Pair:
    """A pinned-TLS client and server in memory; *client_batches* / *server_batches* choose
    :class:`BatchingTLSFactory` or Twisted's ``TLSMemoryBIOFactory`` for each end."""

    def __init__(self, client_batches: bool, server_batches: bool, handshake: bool = True):
        alice, bob = IdentityKey.generate(), IdentityKey.generate()
        self.clock = Clock()
        self.client = RecordingProtocol()
        self.server = RecordingProtocol()
        client_factory = (BatchingTLSFactory if client_batches else TLSMemoryBIOFactory)(
            cast(IOpenSSLClientConnectionCreator, tls.client_creator(alice, bob.uid)),
            True,
            cast(IProtocolFactory, Factory.forProtocol(lambda: self.client)),
            clock=cast(IReactorTime, self.clock),
        )
        server_factory = (BatchingTLSFactory if server_batches else TLSMemoryBIOFactory)(
            cast(
                IOpenSSLServerConnectionCreator,
                tls.server_creator(bob, {alice.uid}.__contains__),
            ),
            False,
            cast(IProtocolFactory, Factory.forProtocol(lambda: self.server)),
            clock=cast(IReactorTime, self.clock),
        )
        address = cast(IAddress, iosim.FakeAddress())
        client_tls, _server_tls, self.pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(address),
            lambda: client_factory.buildProtocol(address),
            greet=False,
            clock=self.clock,
        )
        #: The sizes of the client's writes to its TCP transport.
        self.client_writes: list[int] = []
        wire: Any = client_tls.transport
        real_write, real_sequence = wire.write, wire.writeSequence

        def write(data: bytes) -> None:
            self.client_writes.append(len(data))
            real_write(data)

        def write_sequence(data: list[bytes]) -> None:
            self.client_writes.append(sum(map(len, data)))
            real_sequence(data)

        wire.write, wire.writeSequence = write, write_sequence
        if handshake:
            self.settle()

    def settle(self) -> None:
        """Run the clock's pending calls and move every byte across, until nothing moves."""
        for _ in range(50):
            self.clock.advance(0)
            self.pump.pump()

    def client_write(self, data: bytes) -> None:
        transport: Any = self.client.transport
        transport.write(data)


class LargeWriteTests(SynchronousTestCase):
    """A file transfer's piece-sized writes."""

    def test_a_large_write_leaves_in_one_transport_write(self) -> None:
        """When 1 MiB is written at once, then it reaches TCP as one write of 64 records (its
        length plus 22 bytes a record), where Twisted's protocol makes one write per record;
        the stock peer receives it byte for byte either way."""
        payload = os.urandom(MiB)
        for batches, writes in ((True, [MiB + 64 * 22]), (False, [16384 + 22] * 64)):
            pair = Pair(client_batches=batches, server_batches=False)
            pair.client_writes.clear()
            pair.client_write(payload)
            pair.clock.advance(0)
            self.assertEqual(pair.client_writes, writes)
            pair.settle()
            self.assertEqual(pair.server.received, payload)

    def test_writes_of_every_size_arrive_in_order_both_ways(self) -> None:
        """When both ends batch and each writes pieces of awkward sizes (1 byte, one record,
        one record and a byte, several records), interleaved with the other end's, then each
        end receives exactly the other's bytes in order."""
        pair = Pair(client_batches=True, server_batches=True)
        sizes = [1, 16384, 16385, 100_000, 7, 3 * 16384]
        sent_by_client, sent_by_server = b"", b""
        for size in sizes:
            a, b = os.urandom(size), os.urandom(size + 1)
            pair.client_write(a)
            server: Any = pair.server.transport
            server.write(b)
            sent_by_client += a
            sent_by_server += b
            pair.pump.pump()
        pair.settle()
        self.assertEqual(pair.server.received, sent_by_client)
        self.assertEqual(pair.client.received, sent_by_server)

    def test_a_write_before_the_handshake_leaves_after_it(self) -> None:
        """When 300 KiB are written before the TLS handshake is over, then they are held and
        sent once it completes, whole and in order."""
        pair = Pair(client_batches=True, server_batches=False, handshake=False)
        payload = os.urandom(300 * 1024)
        pair.client_write(payload)
        self.assertFalse(pair.server.handshake_done)
        pair.settle()
        self.assertTrue(pair.server.handshake_done)
        self.assertEqual(pair.server.received, payload)

    def test_closing_after_a_large_write_delivers_it_first(self) -> None:
        """When the writer closes right after a 2 MiB write, then the peer receives all of it
        and then a clean close (TLS close_notify, not a lost connection)."""
        pair = Pair(client_batches=True, server_batches=False)
        payload = os.urandom(2 * MiB)
        pair.client_write(payload)
        transport: Any = pair.client.transport
        transport.loseConnection()
        pair.settle()
        self.assertEqual(pair.server.received, payload)
        self.assertIsNotNone(pair.server.lost)
        assert pair.server.lost is not None
        self.assertTrue(pair.server.lost.check(ConnectionDone))
