"""Tests for :mod:`jarvis.net.transfer_link`: the inbound demux tells a session, a dialled
transfer and a dialled-back (pull) transfer apart by the first bytes after TLS."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from jarvis.net.transfer_link import (
    TRANSFER_PREFACE,
    TRANSFER_PULL_PREFACE,
    InboundDemux,
    RelayedDataProtocol,
    TransferDialProtocol,
)


class Inner(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class FakePeerProtocol:
    def __init__(self) -> None:
        self.transport = StringTransport()
        self.transport.registerProducer(self, True)  # as the PeerProtocol does
        self.session: Any = None
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def demux(
    protocol: FakePeerProtocol, opened: dict[str, list[bytes]], *, pull: bool = True
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
        Clock(),
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
