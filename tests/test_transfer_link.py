"""Tests for :mod:`jarvis.net.transfer_link`: the inbound demux tells a session, a dialled
transfer and a dialled-back (pull) transfer apart by the first bytes after TLS."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import error
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from jarvis.net.transfer_link import (
    TRANSFER_PREFACE,
    TRANSFER_PULL_PREFACE,
    InboundDemux,
    RelayedDataProtocol,
    TransferDialProtocol,
)
from jarvis.protocol.framing import PROLOGUE


class Inner(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.made = False
        self.lost = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class FakePeerProtocol:
    def __init__(self) -> None:
        self.transport = StringTransport()
        self.transport.registerProducer(self, True)  # as the PeerProtocol does
        self.session: Any = None
        self.aborted = False
        self.closed = False

    def abort(self) -> None:
        self.aborted = True

    def lose_connection(self) -> None:
        self.closed = True


def demux(
    protocol: FakePeerProtocol,
    opened: dict[str, list[bytes]],
    *,
    pull: bool = True,
    clock: Clock | None = None,
) -> tuple[InboundDemux, Inner]:
    inner = Inner()

    def opener(kind: str) -> Any:
        def open_it(tid: bytes) -> Inner:
            opened.setdefault(kind, []).append(tid)
            return inner

        return open_it

    d = InboundDemux(
        protocol,
        "a" * 52,
        lambda: None,
        opener("transfer"),
        lambda p: None,
        clock or Clock(),
        10.0,
        open_pull=opener("pull") if pull else None,
    )
    d.connection_made(b"binding")
    return d, inner


class DemuxTests(TestCase):
    def test_pull_preface_runs_the_pull_opener(self) -> None:
        """When a contact's connection starts with the pull preface and a transfer id, then
        the pull opener (the sender's side of a dial back) gets the id and its protocol the
        bytes that followed; the ordinary preface still goes to the receiving opener."""
        tid = os.urandom(16)
        protocol = FakePeerProtocol()
        opened: dict[str, list[bytes]] = {}
        d, inner = demux(protocol, opened)
        d.data_received(TRANSFER_PULL_PREFACE + tid[:5])
        self.assertEqual(opened, {})
        d.data_received(tid[5:] + b"have")
        self.assertEqual(opened, {"pull": [tid]})
        self.assertTrue(inner.made)
        self.assertEqual(inner.received, b"have")
        self.assertFalse(protocol.aborted)
        other = FakePeerProtocol()
        d2, _inner2 = demux(other, opened)
        d2.data_received(TRANSFER_PREFACE + tid)
        self.assertEqual(opened, {"pull": [tid], "transfer": [tid]})

    def test_pull_without_an_opener_or_unknown_preface_is_dropped(self) -> None:
        """When a pull arrives where no pull opener is wired, or the first bytes are neither
        preface nor the session prologue, then the connection is aborted and nothing opens."""
        tid = os.urandom(16)
        opened: dict[str, list[bytes]] = {}
        protocol = FakePeerProtocol()
        d, _inner = demux(protocol, opened, pull=False)
        d.data_received(TRANSFER_PULL_PREFACE + tid)
        self.assertTrue(protocol.aborted)
        other = FakePeerProtocol()
        d2, _ = demux(other, opened)
        d2.data_received(b"JXNOPE\x00\x01" + tid)
        self.assertTrue(other.aborted)
        self.assertEqual(opened, {})

    def test_dialling_side_writes_its_preface(self) -> None:
        """When a dial-back connection finishes TLS, then the dialling side writes the pull
        preface and the transfer id before its inner protocol's first bytes."""
        tid = os.urandom(16)
        inner = Inner()
        preface = TRANSFER_PULL_PREFACE
        link = TransferDialProtocol(inner, tid, Clock(), 10.0, lambda r: None, preface)
        transport = StringTransport()
        link.makeConnection(transport)
        link.handshakeCompleted()
        self.assertEqual(transport.value(), TRANSFER_PULL_PREFACE + tid)
        self.assertTrue(inner.made)


class NextFileTests(TestCase):
    """One connection, several files: a connection whose file is complete carries the next."""

    def test_an_idle_dialled_connection_carries_the_next_file(self) -> None:
        """When the file of a dialled data connection is complete and the connection goes
        idle, then carrying the next file writes the preface and the next transfer id again
        and hands the transport to the next stream, which alone gets the bytes after."""
        first, second = os.urandom(16), os.urandom(16)
        inner, following = Inner(), Inner()
        link = TransferDialProtocol(inner, first, Clock(), 10.0, lambda r: None)
        transport = StringTransport()
        link.makeConnection(transport)
        link.handshakeCompleted()
        transport.clear()
        link.go_idle(lambda: None)
        link.carry(following, second)
        self.assertEqual(transport.value(), TRANSFER_PREFACE + second)
        self.assertEqual(link.transfer_id, second)
        self.assertTrue(following.made)
        link.dataReceived(b"have")
        self.assertEqual((inner.received, following.received), (b"", b"have"))

    def test_bytes_or_the_end_while_idle(self) -> None:
        """When bytes arrive on an idle connection (the receiver has nothing to say between
        two files), then it is aborted; when an idle connection ends, then its lost callback
        is told once and the completed stream hears nothing more."""
        inner = Inner()
        link = TransferDialProtocol(inner, os.urandom(16), Clock(), 10.0, lambda r: None)
        transport = StringTransport()
        link.makeConnection(transport)
        link.handshakeCompleted()
        lost: list[int] = []
        link.go_idle(lambda: lost.append(1))
        link.dataReceived(b"unexpected")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(inner.received, b"")
        link.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(lost, [1])
        self.assertFalse(inner.lost)
        self.assertTrue(link.closed)

    def test_the_waiting_side_takes_only_a_next_file(self) -> None:
        """When a receiving connection waits for the sender's next file, then the transfer
        preface opens it as on a new connection; the session prologue closes the connection
        (a session never starts mid-connection), the pull preface aborts it, and so does
        silence past the wait."""
        tid = os.urandom(16)
        opened: dict[str, list[bytes]] = {}
        protocol = FakePeerProtocol()
        d, inner = demux(protocol, opened)
        d.data_received(TRANSFER_PREFACE + os.urandom(16))
        waiting = d.for_next_file(5.0)
        waiting.connection_made(b"")
        waiting.data_received(TRANSFER_PREFACE + tid + b"rest")
        self.assertEqual(opened["transfer"][-1], tid)
        self.assertTrue(inner.received.endswith(b"rest"))
        self.assertFalse(protocol.aborted or protocol.closed)

        session_wanted = FakePeerProtocol()
        d, _ = demux(session_wanted, opened)
        waiting = d.for_next_file(5.0)
        waiting.connection_made(b"")
        waiting.data_received(PROLOGUE + b"\x00" * 16)
        self.assertTrue(session_wanted.closed)

        pulled = FakePeerProtocol()
        d, _ = demux(pulled, opened)
        waiting = d.for_next_file(5.0)
        waiting.connection_made(b"")
        waiting.data_received(TRANSFER_PULL_PREFACE + tid)
        self.assertTrue(pulled.aborted)
        self.assertEqual(opened.get("pull"), None)

        clock = Clock()
        silent = FakePeerProtocol()
        d, _ = demux(silent, opened, clock=clock)
        waiting = d.for_next_file(5.0)
        waiting.connection_made(b"")
        clock.advance(4.9)
        self.assertFalse(silent.aborted)
        clock.advance(0.2)
        self.assertTrue(silent.aborted)


class RelayedDataTests(TestCase):
    """Both ends of a data connection met at a relay: each writes a hello, checks the other's."""

    def ends(
        self, tid: bytes, other_tid: bytes | None = None, *, both_send: bool = False
    ) -> tuple[Any, ...]:
        sender, receiver = Inner(), Inner()
        a = RelayedDataProtocol(sender, tid, Clock(), 10.0, lambda r: None, True)
        b = RelayedDataProtocol(
            receiver, other_tid or tid, Clock(), 10.0, lambda r: None, both_send
        )
        ta, tb = StringTransport(), StringTransport()
        a.makeConnection(ta)
        b.makeConnection(tb)
        return a, b, ta, tb, sender, receiver

    def test_hellos_cross_then_inner_protocols_start(self) -> None:
        """When TLS is up on both ends, then the sender writes the transfer preface and the
        receiver the pull preface, each with the transfer id; neither inner protocol starts
        before the other's hello arrived, and bytes after it go to the inner protocol."""
        tid = os.urandom(16)
        a, b, ta, tb, sender, receiver = self.ends(tid)
        a.handshakeCompleted()
        b.handshakeCompleted()
        self.assertEqual(ta.value(), TRANSFER_PREFACE + tid)
        self.assertEqual(tb.value(), TRANSFER_PULL_PREFACE + tid)
        self.assertFalse(sender.made or receiver.made)
        a.dataReceived(tb.value()[:10])
        self.assertFalse(sender.made)
        a.dataReceived(tb.value()[10:] + b"have")
        b.dataReceived(ta.value() + b"manifest")
        self.assertTrue(sender.made and receiver.made)
        self.assertEqual((sender.received, receiver.received), (b"have", b"manifest"))
        self.assertFalse(ta.disconnecting or tb.disconnecting)

    def test_wrong_hello_aborts(self) -> None:
        """When the other end's hello names another transfer, or both ends would send the file,
        then the connection is aborted and no inner protocol ever starts."""
        tid = os.urandom(16)
        for other, both_send in ((os.urandom(16), False), (None, True)):
            a, b, ta, tb, sender, receiver = self.ends(tid, other, both_send=both_send)
            a.handshakeCompleted()
            b.handshakeCompleted()
            a.dataReceived(tb.value() + b"x")
            b.dataReceived(ta.value() + b"y")
            self.assertTrue(ta.disconnecting and tb.disconnecting)
            self.assertFalse(sender.made or receiver.made)
