"""Tests for :mod:`jarvis.net.peer`: the session-feeding Protocol, in memory on a Clock.

Pairs run over real pinned TLS (``TLSMemoryBIOFactory`` both sides) through
``twisted.test.iosim``, with the real ``IdentityKey`` and ``PeerSession``.
"""

from __future__ import annotations

from typing import Any, cast

from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.net import tls
from jarvis.net.peer import PeerFactory, PeerProtocol, describe_failure
from jarvis.protocol.session import PeerSession


class RecordingHooks:
    """ConnectionHooks that build real PeerSessions (or refuse) and record what happens."""

    def __init__(self, me: IdentityKey, peer: IdentityKey, clock: Clock, give: bool = True):
        self.me, self.peer, self.clock, self.give = me, peer, clock, give
        self.started: list[PeerProtocol] = []
        self.opened: list[str] = []
        self.ended: list[str] = []
        self.events: list[tuple[Any, ...]] = []
        self.session: PeerSession | None = None

    def connection_started(self, protocol: PeerProtocol) -> None:
        self.started.append(protocol)

    def open_session(self, protocol: PeerProtocol, peer_uid: str) -> PeerSession | None:
        self.opened.append(peer_uid)
        if not self.give:
            return None
        self.session = PeerSession(
            local_uid=self.me.uid,
            sign=self.me.sign,
            peer_uid=peer_uid,
            peer_public_key=self.peer.public_bytes,
            initiator=protocol.initiator,
            clock=cast(IReactorTime, self.clock),
            send_bytes=protocol.send_bytes,
            lose_connection=protocol.lose_connection,
            observer=self,
        )
        return self.session

    def connection_ended(self, protocol: PeerProtocol, reason: str) -> None:
        self.ended.append(reason)

    # SessionObserver
    def session_established(self, session: PeerSession) -> None:
        self.events.append(("established",))

    def message_received(self, session: PeerSession, mid: bytes, body: bytes, ms: int) -> None:
        self.events.append(("message", body))

    def acks_received(self, session: PeerSession, ids: tuple[bytes, ...]) -> None:
        self.events.append(("acks", ids))

    def reads_received(self, session: PeerSession, ids: tuple[bytes, ...]) -> None:
        self.events.append(("reads", ids))

    def session_closed(self, session: PeerSession, reason: str) -> None:
        self.events.append(("closed", reason))


def tls_server(
    identity: IdentityKey, hooks: RecordingHooks, clock: Clock, accept: set[str]
) -> TLSMemoryBIOFactory:
    factory = PeerFactory(clock, hooks, initiator=False, handshake_timeout=10.0)
    return TLSMemoryBIOFactory(
        cast(IOpenSSLServerConnectionCreator, tls.server_creator(identity, accept.__contains__)),
        False,
        cast(IProtocolFactory, factory),
        clock=cast(IReactorTime, clock),
    )


def tls_client(
    identity: IdentityKey, hooks: RecordingHooks, clock: Clock, expected: str
) -> TLSMemoryBIOFactory:
    factory = PeerFactory(clock, hooks, initiator=True, handshake_timeout=10.0)
    return TLSMemoryBIOFactory(
        cast(IOpenSSLClientConnectionCreator, tls.client_creator(identity, expected)),
        True,
        cast(IProtocolFactory, factory),
        clock=cast(IReactorTime, clock),
    )


def run(pump: iosim.IOPump) -> None:
    for _ in range(30):
        pump.pump()


def make_pair(
    give: bool = True,
) -> tuple[RecordingHooks, RecordingHooks, iosim.IOPump, Clock, IdentityKey, IdentityKey]:
    """Connect Alice (client) to Bob (server) with PeerProtocols over TLS in memory."""
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    clock = Clock()
    alice_hooks = RecordingHooks(alice, bob, clock)
    bob_hooks = RecordingHooks(bob, alice, clock, give=give)
    address = cast(IAddress, iosim.FakeAddress())
    client_factory = tls_client(alice, alice_hooks, clock, bob.uid)
    server_factory = tls_server(bob, bob_hooks, clock, {alice.uid})
    _c, _s, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(address),
        lambda: client_factory.buildProtocol(address),
        greet=False,
        clock=clock,
    )
    run(pump)
    return alice_hooks, bob_hooks, pump, clock, alice, bob


class SessionFeedTests(SynchronousTestCase):
    """A PeerProtocol pair over pinned TLS feeding real sessions."""

    def test_sessions_establish_and_carry_messages(self) -> None:
        """When TLS completes, then each side's session starts and a message goes through."""
        alice_hooks, bob_hooks, pump, _clock, alice, bob = make_pair()
        self.assertEqual(alice_hooks.opened, [bob.uid])
        self.assertEqual(bob_hooks.opened, [alice.uid])
        self.assertEqual(alice_hooks.events, [("established",)])
        self.assertEqual(bob_hooks.events, [("established",)])
        assert alice_hooks.session is not None
        self.assertTrue(alice_hooks.session.initiator)
        alice_hooks.session.send_message(b"m" * 16, b"hi bob", 7)
        run(pump)
        self.assertEqual(bob_hooks.events[-1], ("message", b"hi bob"))

    def test_close_reaches_both_sides_once(self) -> None:
        """When one session closes, then both connections end and the hooks hear it once."""
        alice_hooks, bob_hooks, pump, _clock, _alice, _bob = make_pair()
        assert alice_hooks.session is not None
        alice_hooks.session.close("done")
        run(pump)
        self.assertEqual(alice_hooks.events[-1], ("closed", "done"))
        self.assertEqual(bob_hooks.events[-1], ("closed", "peer said goodbye: done"))
        self.assertEqual(len(alice_hooks.ended), 1)
        self.assertEqual(len(bob_hooks.ended), 1)
        self.assertEqual(alice_hooks.session.state, "closed")


class NoSessionTests(SynchronousTestCase):
    """The hooks decline to give a session."""

    def test_connection_dropped(self) -> None:
        """When open_session returns None, then the connection is closed and nothing is fed."""
        alice_hooks, bob_hooks, _pump, _clock, alice, _bob = make_pair(give=False)
        self.assertEqual(bob_hooks.opened, [alice.uid])
        self.assertEqual(bob_hooks.ended, ["no session for this peer"])
        self.assertEqual(len(alice_hooks.ended), 1)
        self.assertNotIn(("established",), alice_hooks.events)


class HandshakeDeadlineTests(SynchronousTestCase):
    """A TCP peer that never completes TLS."""

    def test_stalled_peer_dropped_at_deadline(self) -> None:
        """When a client sends nothing, then the server drops it after handshake_timeout."""
        bob = IdentityKey.generate()
        clock = Clock()
        hooks = RecordingHooks(bob, bob, clock)
        server = tls_server(bob, hooks, clock, set())
        silent = Protocol()
        address = cast(IAddress, iosim.FakeAddress())
        _c, _s, pump = iosim.connectedServerAndClient(
            lambda: server.buildProtocol(address), lambda: silent, greet=False, clock=clock
        )
        run(pump)
        self.assertEqual(len(hooks.started), 1)
        self.assertEqual(hooks.ended, [])
        clock.advance(9.9)
        run(pump)
        self.assertEqual(hooks.ended, [])
        clock.advance(0.2)
        run(pump)
        self.assertEqual(hooks.ended, ["TLS handshake not finished within 10 s"])
        self.assertEqual(hooks.opened, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_deadline_cancelled_by_handshake(self) -> None:
        """When TLS completes in time, then the deadline no longer fires."""
        alice_hooks, bob_hooks, pump, clock, _alice, _bob = make_pair()
        assert alice_hooks.session is not None
        alice_hooks.session.close("done")
        run(pump)
        clock.advance(60)
        self.assertEqual(len(bob_hooks.ended), 1)
        self.assertNotIn("TLS handshake", bob_hooks.ended[0])


class CloseDeadlineTests(SynchronousTestCase):
    """A graceful close that the peer never completes."""

    def test_abort_after_close_timeout(self) -> None:
        """When a graceful close is not completed, then the transport is aborted at the timeout."""
        clock = Clock()
        me = IdentityKey.generate()
        factory = PeerFactory(clock, RecordingHooks(me, me, clock), initiator=True, close_timeout=5)
        peer = factory.buildProtocol(cast(IAddress, iosim.FakeAddress()))
        assert peer is not None
        transport = StringTransport()
        peer.makeConnection(transport)
        peer.lose_connection()
        self.assertTrue(transport.disconnecting)
        clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.2)
        self.assertTrue(transport.disconnected)  # StringTransport.abortConnection sets it
        peer.connectionLost(Failure(error.ConnectionAborted()))
        self.assertEqual(clock.getDelayedCalls(), [])


class DescribeFailureTests(SynchronousTestCase):
    """Short reasons for connection ends."""

    def test_known_reasons(self) -> None:
        """When a connection ends for a known reason, then the description is short and plain."""
        cases = [
            (error.ConnectionDone(), "connection closed"),
            (error.ConnectionLost(), "connection lost"),
            (error.ConnectionRefusedError(), "connection refused"),
            (error.TimeoutError(), "connection attempt timed out"),
            (
                SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]),
                "TLS refused by the peer (tlsv1 alert unknown ca)",
            ),
            (
                SSL.Error([("SSL routines", "", "certificate verify failed")]),
                "TLS failed (certificate verify failed)",
            ),
            (ValueError("odd\nsecond line"), "ValueError: odd"),
        ]
        for value, text in cases:
            self.assertEqual(describe_failure(Failure(value)), text)


class BackPressureTests(SynchronousTestCase):
    """The PeerProtocol is the transport's push producer and passes its pauses to the session."""

    def test_transport_pause_and_resume_reach_the_session(self) -> None:
        """When the TCP transport under TLS pauses and resumes its producer (its buffers filled
        and drained), then the session's writing is paused and resumed; closing still works
        with the producer registered (it is unregistered first, or TLS would not shut down)."""
        alice_hooks, bob_hooks, pump, _clock, _alice, _bob = make_pair()
        session = alice_hooks.session
        assert session is not None
        producer = pump.clientIO.producer
        self.assertIsNotNone(producer)
        self.assertFalse(session.writing_paused)
        producer.pauseProducing()
        self.assertTrue(session.writing_paused)
        producer.resumeProducing()
        self.assertFalse(session.writing_paused)
        session.close("bye")
        run(pump)
        self.assertEqual(bob_hooks.events[-1], ("closed", "peer said goodbye: bye"))
        self.assertEqual(len(alice_hooks.ended), 1)
