"""Tests for :mod:`jarvis.net.network`: real TLS over loopback TCP, and the dialler on a Clock.

The network tests run two or three :class:`PeerNetwork` instances with the real
``IdentityKey`` and ``PeerSession`` in one process, each listening on 127.0.0.1 port 0, and wait
for observer events (never fixed sleeps).  The dialler's timing runs on ``task.Clock``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, cast

from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints, protocol, task, threads
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
)
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.common import logs
from jarvis.common.logs import log_id
from jarvis.common.summary import summary_level
from jarvis.crypto.identity import IdentityKey
from jarvis.net import dialling, tls
from jarvis.net import network as net
from jarvis.protocol import knock as knock_protocol
from jarvis.protocol.session import PeerSession
from tests.test_tls import OtherKeyIdentity, RecordingProtocol, make_certificate
from tests.waiting import Waiters

reactor: Any = _reactor
#: Seconds any single wait may take before the test fails (loopback events take milliseconds).
WAIT = 10.0


class FakeDirectory:
    """An in-memory ContactDirectory: uid -> (public key, addresses)."""

    def __init__(self) -> None:
        self.contacts: dict[str, tuple[bytes, tuple[str, ...]]] = {}

    def add(self, identity: IdentityKey, *addresses: str) -> None:
        self.contacts[identity.uid] = (identity.public_bytes, addresses)

    def is_acceptable(self, uid: str) -> bool:
        return uid in self.contacts

    def public_key(self, uid: str) -> bytes | None:
        entry = self.contacts.get(uid)
        return entry[0] if entry else None

    def addresses(self, uid: str) -> tuple[str, ...]:
        entry = self.contacts.get(uid)
        return entry[1] if entry else ()

    def acceptable_uids(self) -> list[str]:
        return list(self.contacts)


class RecordingObserver(Waiters):
    """A NetworkObserver that records events and lets a test wait for a condition.

    Waiters resume the test on a later turn, not inside the session's own callback.
    """

    def __init__(self) -> None:
        super().__init__(reactor, fire_later=True)
        self.events: list[tuple[Any, ...]] = []

    def _record(self, *event: Any) -> None:
        self.events.append(event)
        self.check()

    def wait(self, condition: Callable[[], bool], timeout: float = WAIT) -> Deferred[None]:
        """Fire once *condition()* holds after some event (or now); fail after WAIT seconds."""
        return super().wait(condition, timeout)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == name]

    def session_established(self, session: PeerSession) -> None:
        self._record("established", session)

    def message_received(
        self, session: PeerSession, message_id: bytes, body: bytes, created_ms: int
    ) -> None:
        self._record("message", session, message_id, body, created_ms)

    def acks_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        self._record("acks", session, message_ids)

    def reads_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        self._record("reads", session, message_ids)

    def session_closed(self, session: PeerSession, reason: str) -> None:
        self._record("closed", session, reason)

    def peer_status_changed(self, uid: str, status: net.PeerStatus) -> None:
        self._record("status", uid, status)


class Node:
    """One PeerNetwork listening on loopback, with its identity, directory and observer."""

    def __init__(
        self, test: TestCase, directory: FakeDirectory | None = None, **options: Any
    ) -> None:
        self.identity = IdentityKey.generate()
        self.directory = directory or FakeDirectory()
        self.observer = RecordingObserver()
        options.setdefault("backoff_initial", 30.0)  # no retry inside a test unless asked
        self.network = net.PeerNetwork(
            reactor, self.identity, self.directory, self.observer, **options
        )
        self.port = reactor.listenTCP(0, self.network.server_factory(), interface="127.0.0.1")
        self.address = f"127.0.0.1:{self.port.getHost().port}"
        test.addCleanup(self.close)

    @property
    def uid(self) -> str:
        return self.identity.uid

    def knows(self, other: Node) -> None:
        self.directory.add(other.identity, other.address)

    def online_with(self, other: Node) -> bool:
        return self.network.session(other.uid) is not None

    def wait_online(self, other: Node) -> Deferred[None]:
        return self.observer.wait(lambda: self.online_with(other))

    @defer.inlineCallbacks
    def close(self) -> Any:
        yield self.network.stop()
        yield self.port.stopListening()


def make_pair(test: TestCase, **options: Any) -> tuple[Node, Node]:
    """Return two nodes that have each other as contacts."""
    a, b = Node(test, **options), Node(test, **options)
    a.knows(b)
    b.knows(a)
    return a, b


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Return once *condition()* holds, checking every few milliseconds; fail after timeout.

    For conditions no observer event announces (a connection finishing its close).
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.005, lambda: None)


def message_id() -> bytes:
    return os.urandom(16)


class RawClient(protocol.Protocol):
    """A TCP client that sends *payload* (maybe nothing) and reports when it is dropped."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.lost: Deferred[float] = Deferred()

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if self.payload:
            transport.write(self.payload)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(reactor.seconds())


async def connect_raw(test: TestCase, node: Node, payload: bytes) -> RawClient:
    client = RawClient(payload)
    creator = protocol.ClientCreator(reactor, lambda: client)
    await creator.connectTCP("127.0.0.1", node.port.getHost().port)
    test.addCleanup(lambda: client.transport.abortConnection() if client.transport else None)  # type: ignore[union-attr]
    return client


class EstablishTests(TestCase):
    """Two contacts that dial each other over real TLS."""

    async def test_session_and_message(self) -> None:
        """When A connects to B, then both see one established session and a message arrives."""
        a, b = make_pair(self)
        a.network.connect(b.uid)
        await a.wait_online(b)
        await b.wait_online(a)
        session = a.network.session(b.uid)
        assert session is not None
        self.assertTrue(session.initiator)
        mid = message_id()
        session.send_message(mid, b"hello bob", 1234)
        await b.observer.wait(lambda: bool(b.observer.named("message")))
        (_, received_on, got_id, body, created) = b.observer.named("message")[0]
        self.assertEqual((got_id, body, created), (mid, b"hello bob", 1234))
        self.assertIs(received_on, b.network.session(a.uid))
        self.assertEqual(len(a.observer.named("established")), 1)
        self.assertEqual(len(b.observer.named("established")), 1)

    async def test_status_figures(self) -> None:
        """When a session is up and a message sent, then the status figures say so."""
        a, b = make_pair(self)
        a.network.connect(b.uid)
        await a.wait_online(b)
        await b.wait_online(a)
        a.network.session(b.uid).send_message(message_id(), b"x", 1)  # type: ignore[union-attr]
        await b.observer.wait(lambda: bool(b.observer.named("message")))
        status_a, status_b = a.network.status(b.uid), b.network.status(a.uid)
        self.assertEqual(status_a.state, "online")
        self.assertEqual((status_a.connect_attempts, status_a.connect_successes), (1, 1))
        self.assertEqual(status_a.connect_failures, 0)
        # B was dialled: it accepted the session and dialled nothing; A accepted none
        self.assertEqual((status_b.connect_attempts, status_b.connect_successes), (0, 0))
        self.assertEqual((status_b.sessions_accepted, status_a.sessions_accepted), (1, 0))
        self.assertIsNotNone(status_a.connected_since)
        # dialled by A, accepted by B: each side counts the session once, on its own side
        self.assertEqual((status_a.sessions_accepted, status_b.sessions_accepted), (0, 1))
        self.assertEqual((status_b.connect_attempts, status_b.connect_successes), (0, 0))
        self.assertIsNone(status_a.offline_since)
        self.assertEqual((status_a.messages_out, status_b.messages_in), (1, 1))
        self.assertGreater(status_a.bytes_out, 0)
        self.assertGreater(status_b.bytes_in, 0)
        self.assertEqual(a.network.statuses(), {b.uid: status_a})
        states = [e[2].state for e in a.observer.named("status")]
        self.assertEqual(states, ["connecting", "online"])

    async def test_offline_since(self) -> None:
        """When a contact is tracked but not reached, then offline_since is when tracking began;
        when its session ends, then offline_since is that moment and connected_since is gone."""
        a, b = make_pair(self)
        before = reactor.seconds()
        a.network.connect(b.uid)
        tracked = a.network.status(b.uid).offline_since
        assert tracked is not None
        self.assertGreaterEqual(tracked, before)
        await a.wait_online(b)
        self.assertIsNone(a.network.status(b.uid).offline_since)
        online_at = a.network.status(b.uid).connected_since
        assert online_at is not None
        a.network.session(b.uid).close("test")  # type: ignore[union-attr]
        await a.observer.wait(lambda: bool(a.observer.named("closed")))
        status = a.network.status(b.uid)
        self.assertIsNone(status.connected_since)
        assert status.offline_since is not None
        self.assertGreaterEqual(status.offline_since, online_at)

    async def test_stop_says_goodbye(self) -> None:
        """When A stops, then B's session closes with A's goodbye and A's stop fires."""
        a, b = make_pair(self)
        a.network.connect(b.uid)
        await a.wait_online(b)
        await b.wait_online(a)
        await a.network.stop()
        await b.observer.wait(lambda: bool(b.observer.named("closed")))
        self.assertEqual(b.observer.named("closed")[0][2], "peer said goodbye: shutting down")
        self.assertEqual(a.observer.named("closed")[0][2], "shutting down")
        self.assertEqual(a.network.connections, 0)

    async def test_forget_closes(self) -> None:
        """When A forgets B, then the session closes and B drops out of A's statuses."""
        a, b = make_pair(self)
        a.network.connect(b.uid)
        await a.wait_online(b)
        a.network.forget(b.uid)
        self.assertIsNone(a.network.session(b.uid))
        self.assertEqual(a.observer.named("closed")[0][2], net.FORGOTTEN)
        self.assertEqual(a.network.statuses(), {})
        self.assertEqual(a.network.status(b.uid).state, "offline")


class RefusedKeyTests(TestCase):
    """Peers whose key is not the one expected."""

    async def test_unknown_key_is_refused_and_counted(self) -> None:
        """When a stranger dials B without the knock (B does not require one), then B refuses
        it in TLS, counts it and reports nothing."""
        b = Node(self, knock=False)
        stranger = Node(self, knock=False)
        stranger.knows(b)
        stranger.network.connect(b.uid)
        await stranger.observer.wait(lambda: stranger.network.status(b.uid).connect_failures > 0)
        self.assertEqual(b.network.refused_count, 1)
        self.assertEqual(b.observer.events, [])
        status = stranger.network.status(b.uid)
        self.assertEqual(status.state, "offline")
        self.assertIn("TLS refused by the peer", status.last_error or "")
        self.assertIsNone(stranger.network.session(b.uid))

    async def test_server_with_another_key_is_refused(self) -> None:
        """When B's address answers with another key (past the knock), then A refuses it in TLS
        and says why."""
        a, b = make_pair(self, knock=False)
        impostor = Node(self, knock=False)
        impostor.knows(a)  # the impostor would gladly talk to A
        a.directory.add(b.identity, impostor.address)
        a.network.connect(b.uid)
        await a.observer.wait(lambda: a.network.status(b.uid).connect_failures > 0)
        error = a.network.status(b.uid).last_error or ""
        self.assertIn(f"not {b.uid}", error)
        self.assertEqual(impostor.observer.named("established"), [])
        self.assertEqual(a.observer.named("established"), [])

    async def test_client_naming_a_known_uid_is_refused(self) -> None:
        """When a client's certificate names A but holds another key, then B (not requiring the
        knock) refuses it in TLS."""
        a, b = make_pair(self, knock=False)
        mallory = IdentityKey.generate()
        forged = OtherKeyIdentity(mallory, make_certificate(mallory, tls.peer_hostname(a.uid)))
        app = RecordingProtocol(b"hello?")
        lost: Deferred[None] = Deferred()
        app.connectionLost = lambda reason=None: lost.callback(None)  # type: ignore[method-assign]
        factory = TLSMemoryBIOFactory(
            IOpenSSLClientConnectionCreator(tls.client_creator(forged, b.uid)),
            True,
            IProtocolFactory(protocol.ClientFactory.forProtocol(lambda: app)),
        )
        connector = reactor.connectTCP("127.0.0.1", b.port.getHost().port, factory)
        self.addCleanup(connector.disconnect)
        await lost.addTimeout(WAIT, reactor)
        self.assertEqual(b.network.refused_count, 1)
        self.assertEqual(b.observer.events, [])


class SimultaneousConnectTests(TestCase):
    """Both contacts dial each other at the same moment."""

    async def test_one_session_survives(self) -> None:
        """When A and B dial each other at once, then one session remains on both sides."""
        a, b = make_pair(self)
        resolved: list[dict[str, Any]] = []

        def watch(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "jarvis.net.network" and "duplicate" in event.get(
                "log_format", ""
            ):
                resolved.append(event)

        observer = cast(ILogObserver, watch)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        started = reactor.seconds()
        a.network.connect(b.uid)
        b.network.connect(a.uid)

        def settled() -> bool:
            return all(
                node.online_with(other)
                and node.network.connections == 1
                and node.network.status(other.uid).state == "online"
                for node, other in ((a, b), (b, a))
            ) and not (a.network._peers[b.uid].attempts or b.network._peers[a.uid].attempts)

        await wait_until(settled)
        self.assertLess(reactor.seconds() - started, 1.0)
        lower = min(a.uid, b.uid)
        # A side that saw both sessions established logs its choice; when one side closes its
        # loser before the other side's copy of it finished its hello, only one side sees two
        # (seen on a busy machine).  Whoever chose, chose the lower uid's session:
        self.assertIn(len(resolved), (1, 2))
        self.assertEqual({e["initiator"] for e in resolved}, {log_id(lower)})
        for node, other in ((a, b), (b, a)):
            survivor = node.network.session(other.uid)
            assert survivor is not None
            self.assertEqual(survivor.initiator, node.uid == lower)
            established = node.observer.named("established")
            closed = node.observer.named("closed")
            self.assertEqual(len(established) - len(closed), 1)
            self.assertIs(established[-1][1], survivor)
        # The survivor carries messages.
        mid = message_id()
        a.network.session(b.uid).send_message(mid, b"still here", 5)  # type: ignore[union-attr]
        await b.observer.wait(lambda: bool(b.observer.named("message")))
        self.assertEqual(b.observer.named("message")[0][2], mid)


class HandshakeDeadlineTests(TestCase):
    """A TCP client that never speaks TLS."""

    async def test_stalled_client_dropped_while_session_works(self) -> None:
        """When a client connects and sends nothing, then it is dropped at the deadline."""
        a, b = make_pair(self, handshake_timeout=0.5)
        a.network.connect(b.uid)
        await a.wait_online(b)
        started = reactor.seconds()
        raw = await connect_raw(self, b, b"")
        dropped_at = await raw.lost.addTimeout(WAIT, reactor)
        self.assertGreaterEqual(dropped_at - started, 0.4)
        self.assertLess(dropped_at - started, 3.0)
        # The session between A and B is unaffected.
        a.network.session(b.uid).send_message(message_id(), b"ok", 1)  # type: ignore[union-attr]
        await b.observer.wait(lambda: bool(b.observer.named("message")))
        self.assertEqual(len(b.observer.named("established")), 1)
        self.assertEqual(b.observer.named("closed"), [])

    async def test_garbage_is_dropped(self) -> None:
        """When a client sends bytes that are not a knock, then it is dropped after the random
        refusal delay (0.5 to 2 s), unreported."""
        b = Node(self, handshake_timeout=5.0)
        started = reactor.seconds()
        raw = await connect_raw(self, b, b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64))
        dropped_at = await raw.lost.addTimeout(WAIT, reactor)
        self.assertGreaterEqual(dropped_at - started, 0.45)
        self.assertLess(dropped_at - started, 3.0)
        self.assertEqual(b.network.knock_refusals.totals["bad knock"], 1)
        self.assertEqual(b.observer.events, [])
        self.assertEqual(b.network.refused_count, 0)
        self.assertEqual(b.network.connections, 0)


class SummaryTests(TestCase):
    """The network's statuses feed the one summary rule
    (:func:`jarvis.common.summary.summary_level`)."""

    async def test_some_online_is_amber(self) -> None:
        """When one contact is online and another unreachable, then the summary is amber."""
        a, b = make_pair(self)
        gone = Node(self)
        await gone.port.stopListening()
        a.knows(gone)
        a.network.connect(b.uid)
        a.network.connect(gone.uid)
        await a.wait_online(b)
        await a.observer.wait(lambda: a.network.status(gone.uid).connect_failures > 0)
        statuses = a.network.statuses().values()
        online = sum(1 for status in statuses if status.state == "online")
        self.assertEqual(summary_level(online, len(statuses)), "amber")
        self.assertEqual(a.network.status(gone.uid).last_error, "connection refused")


class AddressTests(SynchronousTestCase):
    """Parsing contact addresses."""

    def test_valid(self) -> None:
        """When an address is host:port or [v6]:port, then it splits into host and port."""
        self.assertEqual(net.parse_address("127.0.0.1:7770"), ("127.0.0.1", 7770))
        self.assertEqual(net.parse_address("[::1]:7770"), ("::1", 7770))
        self.assertEqual(net.parse_address("example.org:1"), ("example.org", 1))

    def test_endpoint_kind(self) -> None:
        """When the host is an IPv4 or IPv6 address, then it is dialled directly (no resolver
        thread); a name goes through HostnameEndpoint."""
        clock = MemoryReactorClock()
        self.assertIsInstance(
            net.tcp_endpoint(clock, "127.0.0.1", 7770, 5.0), endpoints.TCP4ClientEndpoint
        )
        self.assertIsInstance(
            net.tcp_endpoint(clock, "::1", 7770, 5.0), endpoints.TCP6ClientEndpoint
        )
        self.assertIsInstance(
            net.tcp_endpoint(clock, "example.org", 7770, 5.0), endpoints.HostnameEndpoint
        )

    def test_invalid(self) -> None:
        """When an address lacks a port, has a bad port or bare IPv6, then it is refused."""
        for text in (
            "127.0.0.1",
            "::1:7770",
            "host:0",
            "host:65536",
            ":80",
            "host:x",
            "[]:1",
            "host:\u00b2",
        ):
            with self.assertRaises(net.InvalidPeerAddress, msg=text):
                net.parse_address(text)


class DiallerHarness:
    """A Dialler on a Clock whose attempts the test resolves by hand."""

    def __init__(self, addresses: tuple[str, ...], jitter: list[float] | None = None) -> None:
        self.clock = Clock()
        self.addresses = addresses
        self.attempts: list[tuple[str, Deferred[None]]] = []
        values = iter(jitter or [])
        rng = (lambda: next(values)) if jitter else (lambda: 0.0)
        self.dialler = net.Dialler(
            self.clock, lambda: self.addresses, self.dial, net.backoff(1.0, 60.0, rng)
        )

    def dial(self, address: str) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.attempts.append((address, d))
        return d

    def fail_last(self) -> None:
        self.attempts[-1][1].errback(net.ConnectFailed("refused"))

    def fail_rounds(self, rounds: int) -> list[float]:
        """Fail *rounds* full rounds, advancing the clock by each scheduled delay."""
        delays = []
        for _ in range(rounds):
            for _ in self.addresses:
                self.fail_last()
            call: Any
            (call,) = self.clock.getDelayedCalls()
            delay = call.getTime() - self.clock.seconds()
            delays.append(delay)
            self.clock.advance(delay)
        return delays


class BackoffTests(SynchronousTestCase):
    """The dialler's retry timing."""

    def test_delays_grow_to_the_cap(self) -> None:
        """When rounds keep failing, then the delays double up to the maximum."""
        harness = DiallerHarness(("h:1",))
        harness.dialler.start()
        delays = harness.fail_rounds(9)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0])

    def test_delays_are_jittered(self) -> None:
        """When rng varies, then each delay gains up to one initial delay of jitter."""
        harness = DiallerHarness(("h:1",), jitter=[0.5, 0.25, 0.99, 0.0])
        harness.dialler.start()
        delays = harness.fail_rounds(4)
        for got, want in zip(delays, [1.5, 2.25, 4.99, 8.0], strict=True):
            self.assertAlmostEqual(got, want)

    def test_addresses_in_turn(self) -> None:
        """When an address fails, then the next is tried at once, and the round then waits."""
        harness = DiallerHarness(("a:1", "b:2", "c:3"))
        harness.dialler.start()
        harness.fail_last()
        harness.fail_last()
        self.assertEqual([a for a, _ in harness.attempts], ["a:1", "b:2", "c:3"])
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        harness.fail_last()
        self.assertEqual(len(harness.clock.getDelayedCalls()), 1)
        harness.clock.advance(1.0)
        self.assertEqual(harness.attempts[-1][0], "a:1")

    def test_success_stops(self) -> None:
        """When an attempt succeeds, then nothing more is scheduled."""
        harness = DiallerHarness(("a:1",))
        harness.dialler.start()
        harness.fail_rounds(3)
        harness.attempts[-1][1].callback(None)
        self.assertFalse(harness.dialler.running)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        harness.dialler.start()
        harness.fail_last()
        self.assertEqual(harness.dialler.delays[-1], 1.0)  # the backoff starts over

    def test_redial_resets(self) -> None:
        """When redial is asked while waiting, then it dials at once with a fresh backoff."""
        harness = DiallerHarness(("a:1",))
        harness.dialler.start()
        harness.fail_rounds(4)
        harness.fail_last()
        self.assertEqual(harness.dialler.delays[-1], 16.0)
        harness.dialler.redial()
        self.assertEqual(len(harness.attempts), 6)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        harness.fail_last()
        self.assertEqual(harness.dialler.delays[-1], 1.0)

    def test_stop_and_cancel(self) -> None:
        """When stopped, then no retry is pending; cancel abandons the attempt in flight."""
        harness = DiallerHarness(("a:1",))
        harness.dialler.start()
        harness.fail_last()
        harness.dialler.stop()
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        harness.dialler.redial()
        cancelled: list[Deferred[None]] = []
        in_flight = harness.attempts[-1][1]
        in_flight._canceller = cancelled.append
        harness.dialler.cancel()
        self.assertEqual(cancelled, [in_flight])
        self.assertFalse(harness.dialler.dialling)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_no_address_costs_nothing_until_redial(self) -> None:
        """When the contact has no address, then no service runs and nothing is scheduled (a
        thousand such contacts cost a pass through ClientService at every backoff step); when
        it gains an address and is redialled, then it is dialled at once."""
        harness = DiallerHarness(())
        harness.dialler.start()
        harness.clock.advance(3600)
        self.assertEqual(harness.attempts, [])
        self.assertEqual(harness.dialler.delays, [])
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertFalse(harness.dialler.running)
        harness.addresses = ("a:1",)
        harness.dialler.redial()
        self.assertEqual([a for a, _ in harness.attempts], ["a:1"])
        self.assertTrue(harness.dialler.running)

    def test_delayed_start_without_address_schedules_nothing_more(self) -> None:
        """When a delayed start (after a session ended) finds no address, then the dialler
        stops there instead of backing off round after round."""
        harness = DiallerHarness(())
        harness.dialler.start(delay=0.5)
        harness.clock.advance(0.5)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertFalse(harness.dialler.running)


class InFlightTests(SynchronousTestCase):
    """An attempt in flight outlives a stop of the dialler."""

    def test_stop_lets_the_attempt_finish(self) -> None:
        """When the dialler stops with an attempt in flight, then the attempt is neither
        cancelled nor followed by another address, and its success schedules nothing."""
        harness = DiallerHarness(("a:1", "b:2"))
        harness.dialler.start()
        in_flight = harness.attempts[-1][1]
        cancelled: list[Deferred[None]] = []
        in_flight._canceller = cancelled.append
        harness.dialler.stop()
        self.assertFalse(harness.dialler.running)
        self.assertTrue(harness.dialler.dialling)
        self.assertEqual(cancelled, [])
        in_flight.callback(None)
        self.assertFalse(harness.dialler.dialling)
        self.assertEqual([a for a, _ in harness.attempts], ["a:1"])
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_stopped_attempt_failing_dials_no_further(self) -> None:
        """When a stopped dialler's attempt fails, then no other address is dialled."""
        harness = DiallerHarness(("a:1", "b:2"))
        harness.dialler.start()
        harness.dialler.stop()
        harness.fail_last()
        self.assertEqual([a for a, _ in harness.attempts], ["a:1"])
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_restart_waits_for_the_attempt(self) -> None:
        """When the dialler restarts while an attempt is in flight, then it dials nothing more
        until that attempt ends: on failure its round starts at once from the first address,
        on success it is done."""
        harness = DiallerHarness(("a:1", "b:2"))
        harness.dialler.start()
        harness.dialler.stop()
        harness.dialler.start(delay=5.0)
        self.assertTrue(harness.dialler.running)
        self.assertEqual(len(harness.attempts), 1)
        harness.fail_last()
        self.assertEqual([a for a, _ in harness.attempts], ["a:1", "a:1"])
        harness.attempts[-1][1].callback(None)
        self.assertFalse(harness.dialler.running)
        harness.dialler.redial()
        harness.dialler.stop()
        harness.dialler.redial()  # the attempt of the first redial is still in flight
        self.assertEqual(len(harness.attempts), 3)
        harness.attempts[-1][1].callback(None)
        self.assertFalse(harness.dialler.running)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_immediate_success_ends_the_run(self) -> None:
        """When an attempt succeeds before its dial returns, then the run ends all the same and
        a later start dials again."""
        harness = DiallerHarness(("a:1",))
        dials: list[str] = []

        def dial(address: str) -> Deferred[None]:
            dials.append(address)
            return defer.succeed(None)

        harness.dialler._dial = dial
        harness.dialler.start()
        self.assertEqual(dials, ["a:1"])
        self.assertFalse(harness.dialler.dialling)
        harness.clock.advance(0)  # the service is stopped on the next turn
        self.assertFalse(harness.dialler.running)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        harness.dialler.start()
        self.assertEqual(dials, ["a:1", "a:1"])

    def test_retry_lines_are_dropped_from_the_daemon_logs(self) -> None:
        """When the dialler's service schedules a retry, then its per-retry log line is one the
        daemon's log filter drops (a thousand unreachable contacts would write it at every
        backoff step)."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        harness = DiallerHarness(("a:1",))
        harness.dialler.start()
        harness.fail_last()
        retries = [e for e in events if "retry" in e.get("log_format", "")]
        self.assertEqual(len(retries), 1)
        noise = logs.ConnectionNoiseFilter()
        self.assertEqual(noise(retries[0]), logs.PredicateResult.no)

    def test_released_service_stops_at_once(self) -> None:
        """When a ClientService's connection is the dialler's released stand-in, then
        stopService fires before it returns and leaves no call scheduled (the Twisted
        behaviour the dialler relies on: Automat queues the loss reported inside the stop)."""
        clock = Clock()

        class Endpoint:
            def connect(self, factory: Any) -> Deferred[Any]:
                built = factory.buildProtocol(None)
                built.makeConnection(dialling._Handle(built))
                return defer.succeed(built)

        service = ClientService(
            cast(Any, Endpoint()),
            cast(Any, protocol.Factory.forProtocol(protocol.Protocol)),
            clock=clock,
        )
        service.startService()
        stopped = service.stopService()
        self.assertIsNone(self.successResultOf(stopped))
        self.failureResultOf(service.whenConnected(), defer.CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_redial_keeps_the_race_and_its_stagger(self) -> None:
        """When redial comes while a round's first address hangs, then that round goes on (its
        second address after the stagger, not the first one dialled again), and when the
        round then fails the next starts at once with a fresh backoff."""
        from jarvis.net.eyeballs import STAGGER

        harness = DiallerHarness(("a:1", "b:2"))
        harness.dialler.start()
        harness.dialler.redial()
        self.assertEqual([a for a, _ in harness.attempts], ["a:1"])
        harness.clock.advance(STAGGER)
        self.assertEqual([a for a, _ in harness.attempts], ["a:1", "b:2"])
        harness.attempts[0][1].errback(net.ConnectFailed("refused"))
        harness.fail_last()
        self.assertEqual([a for a, _ in harness.attempts], ["a:1", "b:2", "a:1"])
        self.assertTrue(harness.dialler.running)
        harness.clock.advance(STAGGER)
        harness.fail_last()
        harness.attempts[-2][1].errback(net.ConnectFailed("refused"))
        self.assertEqual(harness.dialler.delays[-1], 1.0)


class PipeEndpoint:
    """A client endpoint that connects in memory to *target*'s server factory (iosim)."""

    def __init__(self, target: net.PeerNetwork, clock: Clock, pumps: list[iosim.IOPump]):
        self.target, self.clock, self.pumps = target, clock, pumps

    def connect(self, factory: Any) -> Deferred[Any]:
        address = cast(IAddress, iosim.FakeAddress())
        client = factory.buildProtocol(address)
        server_factory: Any = self.target.server_factory()
        server = server_factory.buildProtocol(address)
        self.pumps.append(
            iosim.connect(
                server,
                iosim.makeFakeServer(server),
                client,
                iosim.makeFakeClient(client),
                greet=False,
                clock=self.clock,
            )
        )
        return defer.succeed(client)


class MemoryPair:
    """Two networks on one Clock, each dialling the other through PipeEndpoints."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.pumps: list[iosim.IOPump] = []
        low, high = sorted((IdentityKey.generate() for _ in range(2)), key=lambda k: k.uid)
        self.nodes: dict[str, tuple[net.PeerNetwork, RecordingObserver, IdentityKey]] = {}
        directories = {"low": FakeDirectory(), "high": FakeDirectory()}
        directories["low"].add(high, "high:1")
        directories["high"].add(low, "low:1")
        targets: dict[str, net.PeerNetwork] = {}
        for name, identity in (("low", low), ("high", high)):
            observer = RecordingObserver()
            other = "high" if name == "low" else "low"
            network = net.PeerNetwork(
                self.clock,
                identity,
                directories[name],
                observer,
                backoff_initial=30.0,
                endpoint_for=self._endpoint_to(targets, other),
            )
            targets[name] = network
            self.nodes[name] = (network, observer, identity)

    def _endpoint_to(
        self, targets: dict[str, net.PeerNetwork], other: str
    ) -> Callable[[str, int], net.ClientEndpoint]:
        def endpoint_for(host: str, port: int) -> net.ClientEndpoint:
            return PipeEndpoint(targets[other], self.clock, self.pumps)

        return endpoint_for

    def run(self) -> None:
        for _ in range(40):
            moved = [pump.pump() for pump in list(self.pumps)]
            if not any(moved):
                break

    def kinds(self, name: str) -> list[tuple[str, ...]]:
        """The observer's events as (kind, initiator uid or state, reason) tuples."""
        _network, observer, identity = self.nodes[name]
        other = self.nodes["high" if name == "low" else "low"][2]
        out: list[tuple[str, ...]] = []
        for event in observer.events:
            if event[0] == "status":
                out.append(("status", event[2].state))
            else:
                initiator = identity.uid if event[1].initiator else other.uid
                who = "low" if initiator == self.nodes["low"][2].uid else "high"
                out.append((event[0], who, *(event[2:3] if event[0] == "closed" else ())))
        return out


class TieBreakOrderTests(SynchronousTestCase):
    """The observer contract of the tie-break, with the order of events forced in memory."""

    def test_winner_after_reported_loser(self) -> None:
        """When the losing session was reported first, then its closure precedes the winner."""
        pair = MemoryPair()
        low_net, high_net = pair.nodes["low"][0], pair.nodes["high"][0]
        high_net.connect(low_net._identity.uid)  # high dials first: the loser by the rule
        pair.run()
        low_net._peers[high_net._identity.uid].dialler.start()  # force a second connection
        pair.run()
        start = [("status", "connecting"), ("established", "high"), ("status", "online")]
        # High resolves first: its goodbye reaches low before low's new session is up.
        self.assertEqual(
            pair.kinds("high"),
            [*start, ("closed", "high", net.DUPLICATE_SESSION), ("established", "low")],
        )
        self.assertEqual(
            pair.kinds("low"),
            [
                *start,
                ("closed", "high", "peer said goodbye: duplicate session"),
                ("status", "connecting"),
                ("established", "low"),
                ("status", "online"),
            ],
        )
        self.assertEqual(low_net.connections, 1)
        self.assertEqual(high_net.connections, 1)
        self.assertFalse(low_net._peers[high_net._identity.uid].dialler.running)

    def test_loser_after_reported_winner(self) -> None:
        """When the losing session comes second, then the observer never hears of it."""
        pair = MemoryPair()
        low_net, high_net = pair.nodes["low"][0], pair.nodes["high"][0]
        low_net.connect(high_net._identity.uid)
        pair.run()
        high_net.redial(low_net._identity.uid)  # does nothing: high is online already
        high_net._peers[low_net._identity.uid].dialler.start()  # force a second connection
        pair.run()
        for name in ("low", "high"):
            self.assertEqual(
                pair.kinds(name),
                [("status", "connecting"), ("established", "low"), ("status", "online")],
                name,
            )
        self.assertEqual(low_net.connections, 1)
        self.assertEqual(high_net.connections, 1)

    def test_simultaneous_dials_keep_the_low_session(self) -> None:
        """When both dial at once, then each attempt in flight finishes even after the other
        side's session stopped its dialler, the low initiator's session survives on both
        sides, and the closed duplicate makes neither side dial again."""
        pair = MemoryPair()
        low_net, high_net = pair.nodes["low"][0], pair.nodes["high"][0]
        low_uid, high_uid = low_net._identity.uid, high_net._identity.uid
        low_net.connect(high_uid)
        high_net.connect(low_uid)
        self.assertTrue(low_net._peers[high_uid].dialler.dialling)
        self.assertTrue(high_net._peers[low_uid].dialler.dialling)
        pair.run()
        for network, other in ((low_net, high_uid), (high_net, low_uid)):
            survivor = network.session(other)
            assert survivor is not None
            self.assertEqual(survivor.initiator, network is low_net)
            self.assertEqual(network.connections, 1)
            self.assertFalse(network._peers[other].dialler.running)
        pair.clock.advance(61.0)  # past any restart delay (backoff_initial is 30 s here)
        pair.run()
        self.assertEqual(low_net.status(high_uid).connect_attempts, 1)
        self.assertEqual(high_net.status(low_uid).connect_attempts, 1)
        self.assertEqual(low_net.status(high_uid).state, "online")

    def test_ended_session_redials_after_half_to_one_initial_delay(self) -> None:
        """When the active session of a wanted contact ends, then the dialler starts again
        after 0.5 to 1 times the initial backoff, not at once."""
        pair = MemoryPair()
        low_net, high_net = pair.nodes["low"][0], pair.nodes["high"][0]
        high_uid = high_net._identity.uid
        low_net.connect(high_uid)
        pair.run()
        self.assertEqual(low_net.status(high_uid).state, "online")
        high_net.forget(low_net._identity.uid)  # closes the session from the other side
        pair.run()
        dialler = low_net._peers[high_uid].dialler
        self.assertTrue(dialler.running)
        delay = dialler.delays[-1]
        self.assertTrue(15.0 <= delay <= 30.0, delay)  # backoff_initial is 30 s here
        pair.clock.advance(delay - 0.01)
        self.assertEqual(low_net.status(high_uid).connect_attempts, 1)
        pair.clock.advance(0.01)
        self.assertEqual(low_net.status(high_uid).connect_attempts, 2)


class KnockKeysOffReactorTests(TestCase):
    """The contacts' knock pair keys (one X25519 each) are computed on a thread."""

    def setUp(self) -> None:
        self.me = IdentityKey.generate()
        self.contacts = [IdentityKey.generate() for _ in range(3)]
        self.directory = FakeDirectory()
        for contact in self.contacts:
            self.directory.add(contact, "127.0.0.1:1")
        self.runs: list[Deferred[Any]] = []
        self.tables: list[Deferred[Any]] = []
        sender = self.contacts[1]
        # the key contact 1 knocks with (computed on its side, before the recording starts)
        self.sender_key = knock_protocol.pair_key(
            sender.private_bytes(), sender.uid, self.me.public_bytes, self.me.uid
        )
        # every pair-key exchange records the thread it ran on
        self.exchanges: list[threading.Thread] = []
        real = knock_protocol._pair_key

        def recording_pair_key(*args: Any) -> bytes:
            self.exchanges.append(threading.current_thread())
            return real(*args)

        self.patch(knock_protocol, "_pair_key", recording_pair_key)

    def run_blocking(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """The node's run_blocking: a thread of the reactor's pool."""
        d = threads.deferToThread(f, *args)
        if getattr(f, "__name__", "") == "prepare":
            self.tables.append(d)  # a knock hint table, made ahead
        else:
            self.runs.append(d)
        return d

    def make_network(self) -> net.PeerNetwork:
        network = net.PeerNetwork(
            MemoryReactorClock(),
            self.me,
            self.directory,
            RecordingObserver(),
            run_blocking=self.run_blocking,
        )
        return network

    async def test_keys_at_unlock_and_for_a_new_contact(self) -> None:
        """When the network is made (at unlock), then every contact's pair key is computed
        once, off the reactor thread, and a contact's valid knock then computes none on the
        reactor; a contact added later gets its key on a thread too."""
        network = self.make_network()
        self.assertEqual(len(self.runs), 1)
        for contact in self.contacts:
            network.connect(contact.uid)  # in flight already: no second computation
        self.assertEqual(len(self.runs), 1)
        await self.runs[0]
        self.assertEqual(len(self.exchanges), len(self.contacts))
        self.assertNotIn(threading.main_thread(), self.exchanges)
        sender = self.contacts[1]
        token = knock_protocol.make_knock(
            self.sender_key, self.me.uid, knock_protocol.window_of(0), b"n" * 8
        )
        verdict = network._verify_knock(token)
        self.assertEqual(verdict, knock_protocol.Accepted(sender.uid))
        self.assertEqual(len(self.exchanges), len(self.contacts))  # none on the reactor
        newcomer = IdentityKey.generate()
        self.directory.add(newcomer, "127.0.0.1:1")
        network.connect(newcomer.uid)
        self.assertEqual(len(self.runs), 2)
        await self.runs[1]
        self.assertEqual(len(self.exchanges), len(self.contacts) + 1)
        self.assertNotIn(threading.main_thread(), self.exchanges)
        network.connect(newcomer.uid)
        self.assertEqual(len(self.runs), 2)  # kept: nothing more to compute
        await network.stop()

    async def test_hint_table_made_off_the_reactor_each_window(self) -> None:
        """When the network is made, then the knock hint table of the current window is made
        on a thread once the keys are ready, a valid knock then computes no hint on the
        reactor, and the next window's table is made 5 s before that window starts."""
        token = knock_protocol.make_knock(
            self.sender_key, self.me.uid, knock_protocol.window_of(0), b"m" * 8
        )
        hints: list[threading.Thread] = []
        real = knock_protocol._hint

        def recording_hint(*args: Any) -> bytes:
            hints.append(threading.current_thread())
            return real(*args)

        self.patch(knock_protocol, "_hint", recording_hint)
        network = self.make_network()
        clock = network._reactor
        await self.runs[0]
        while not self.tables or not self.tables[0].called:
            await task.deferLater(_reactor, 0.001, lambda: None)
        await self.tables[0]
        self.assertEqual(len(hints), 3 * len(self.contacts))
        self.assertNotIn(threading.main_thread(), hints)
        self.assertEqual(
            network._verify_knock(token), knock_protocol.Accepted(self.contacts[1].uid)
        )
        self.assertNotIn(threading.main_thread(), hints)  # the table was ready
        self.assertEqual(len(self.tables), 1)
        clock.advance(knock_protocol.WINDOW_SECONDS - net.KNOCK_TABLE_LEAD)
        self.assertEqual(len(self.tables), 2)
        await self.tables[1]
        network.stop()

    async def test_hint_table_rebuilt_off_the_reactor_after_changes(self) -> None:
        """When a contact is removed and a new one knocks (missing from the table), then no
        hint is computed on the reactor: meanwhile knocks are checked against every current
        key (the removed one refused, the newcomer and a contact accepted), and one table
        (for both changes) is made on a thread 0.25 s later, which then finds each knock with
        one tag."""
        removed, kept = self.contacts[0], self.contacts[1]
        newcomer = IdentityKey.generate()

        def knock_of(sender: IdentityKey, nonce: bytes) -> bytes:
            key = knock_protocol.pair_key(
                sender.private_bytes(), sender.uid, self.me.public_bytes, self.me.uid
            )
            return knock_protocol.make_knock(key, self.me.uid, 0, nonce)

        # the senders' knocks, made before the recording starts
        knocks = {
            (sender.uid, n): knock_of(sender, bytes([n]) * 8)
            for sender in (removed, kept, newcomer)
            for n in range(2)
        }
        hints: list[threading.Thread] = []
        tags: list[threading.Thread] = []
        real_hint, real_tag = knock_protocol._hint, knock_protocol._tag

        def recording_hint(*args: Any) -> bytes:
            hints.append(threading.current_thread())
            return real_hint(*args)

        def recording_tag(*args: Any) -> bytes:
            tags.append(threading.current_thread())
            return real_tag(*args)

        self.patch(knock_protocol, "_hint", recording_hint)
        self.patch(knock_protocol, "_tag", recording_tag)
        network = self.make_network()
        clock = network._reactor
        await self.runs[0]
        while not self.tables or not self.tables[0].called:
            await task.deferLater(_reactor, 0.001, lambda: None)
        await self.tables[0]
        network.connect(removed.uid)
        del self.directory.contacts[removed.uid]
        network.forget(removed.uid)
        self.directory.add(newcomer, "127.0.0.1:1")
        network.connect(newcomer.uid)
        await self.runs[1]  # the newcomer's pair key, on a thread
        self.assertEqual(
            network._verify_knock(knocks[newcomer.uid, 0]),
            knock_protocol.Accepted(newcomer.uid),
        )
        self.assertEqual(
            network._verify_knock(knocks[removed.uid, 0]), knock_protocol.Refused("bad knock")
        )
        self.assertEqual(
            network._verify_knock(knocks[kept.uid, 0]), knock_protocol.Accepted(kept.uid)
        )
        self.assertNotIn(threading.main_thread(), hints)
        self.assertEqual(len(self.tables), 1)  # not yet: debounced
        clock.advance(net.KNOCK_REBUILD_DELAY)
        self.assertEqual(len(self.tables), 2)  # one table for both changes
        await self.tables[1]
        self.assertNotIn(threading.main_thread(), hints)
        for sender in (kept, newcomer):
            tags.clear()
            self.assertEqual(
                network._verify_knock(knocks[sender.uid, 1]), knock_protocol.Accepted(sender.uid)
            )
            self.assertEqual(len(tags), 1)  # found through the new table
        self.assertEqual(
            network._verify_knock(knocks[removed.uid, 1]), knock_protocol.Refused("bad knock")
        )
        self.assertNotIn(threading.main_thread(), hints)
        self.assertEqual(len(self.tables), 2)
        await network.stop()
