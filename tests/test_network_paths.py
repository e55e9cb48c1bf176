"""Tests for the path of each session in :mod:`jarvis.net.network`: reported per contact, and
a relayed session upgraded to a direct one without losing, doubling or reordering a message.

Two :class:`PeerNetwork`\\ s on one Clock, connected in memory (iosim): a "direct" endpoint that
a test can block, and a "relay" that joins one network's :meth:`~PeerNetwork.dial_via` to the
other's :meth:`~PeerNetwork.relayed_server_factory` (what the mailbox's relay does with bytes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.net import network as net
from jarvis.protocol import peerpath
from jarvis.protocol.session import PeerSession
from tests.test_network import FakeDirectory


class PipeTo:
    """A client endpoint connected in memory to the factory *server()* returns."""

    def __init__(self, server: Callable[[], Any], pair: RelayPair) -> None:
        self.server, self.pair = server, pair

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.pair.blocked:
            return defer.fail(ConnectionRefusedError("blocked"))
        address = cast(IAddress, iosim.FakeAddress())
        client = factory.buildProtocol(address)
        server = self.server().buildProtocol(address)
        self.pair.pumps.append(
            iosim.connect(
                server,
                iosim.makeFakeServer(server),
                client,
                iosim.makeFakeClient(client),
                greet=False,
                clock=self.pair.clock,
            )
        )
        return defer.succeed(client)


class Outbox:
    """The observer of one side, with the outbox rule of docs/net.md: every unacked message is
    resent, in order, on each session_established; received messages are kept once, by id, in
    the order they first arrived, and acked on the live session."""

    def __init__(self) -> None:
        self.network: net.PeerNetwork | None = None
        self.peer_uid = ""
        self.unacked: dict[bytes, bytes] = {}
        self.received: list[bytes] = []
        self.copies = 0
        self.events: list[tuple[str, str]] = []

    def send(self, body: bytes) -> None:
        message_id = os.urandom(16)
        self.unacked[message_id] = body
        assert self.network is not None
        session = self.network.session(self.peer_uid)
        if session is not None:
            session.send_message(message_id, body, 0)

    def session_established(self, session: PeerSession) -> None:
        assert self.network is not None
        path = self.network.path_of(session.peer_uid)
        self.events.append(("established", path.kind if path else "?"))
        for message_id, body in list(self.unacked.items()):
            session.send_message(message_id, body, 0)

    def message_received(
        self, session: PeerSession, message_id: bytes, body: bytes, created_ms: int
    ) -> None:
        self.copies += 1
        if body not in self.received:
            self.received.append(body)
        assert self.network is not None
        live = self.network.session(session.peer_uid)
        if live is not None:
            live.send_ack((message_id,))

    def acks_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        for message_id in message_ids:
            self.unacked.pop(message_id, None)

    def reads_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        pass

    def session_closed(self, session: PeerSession, reason: str) -> None:
        self.events.append(("closed", reason))

    def peer_status_changed(self, uid: str, status: net.PeerStatus) -> None:
        pass


class RelayPair:
    """Two networks on one Clock: a blockable direct route, and a relay between them."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.pumps: list[iosim.IOPump] = []
        self.blocked = True
        keys = sorted((IdentityKey.generate() for _ in range(2)), key=_uid)
        self.identities = {"low": keys[0], "high": keys[1]}
        self.networks: dict[str, net.PeerNetwork] = {}
        self.outboxes: dict[str, Outbox] = {}
        for name, other in (("low", "high"), ("high", "low")):
            directory = FakeDirectory()
            directory.add(self.identities[other], f"{other}:1")
            outbox = Outbox()
            network = net.PeerNetwork(
                self.clock,
                self.identities[name],
                directory,
                outbox,
                backoff_initial=5.0,
                backoff_max=5.0,
                rng=lambda: 0.0,
                endpoint_for=self._direct_to(other),
            )
            outbox.network, outbox.peer_uid = network, self.identities[other].uid
            self.networks[name], self.outboxes[name] = network, outbox

    def _direct_to(self, other: str) -> Callable[[str, int], net.ClientEndpoint]:
        return lambda host, port: PipeTo(lambda: self.networks[other].server_factory(), self)

    def uid(self, name: str) -> str:
        return self.identities[name].uid

    def relay(self, dialler: str, accepter: str) -> Deferred[None]:
        """Join *dialler*'s dial_via to *accepter*'s relayed factory (never blocked)."""
        path = peerpath.relayed("the mailbox m.example")
        blocked, self.blocked = self.blocked, False
        try:
            endpoint = PipeTo(lambda: self.networks[accepter].relayed_server_factory(path), self)
            return self.networks[dialler].dial_via(self.uid(accepter), endpoint, path)
        finally:
            self.blocked = blocked

    def run(self) -> None:
        for _ in range(200):
            if not any([pump.pump() for pump in list(self.pumps)]):
                break


def _uid(key: IdentityKey) -> str:
    return key.uid


class PathTests(SynchronousTestCase):
    """The path of the live session, on both ends."""

    def test_direct_and_accepted(self) -> None:
        """When one side dials the other's address, then it reports "direct: dialled ..." and
        the other "direct: the contact dialled us"; with no session, no path."""
        pair = RelayPair()
        pair.blocked = False
        self.assertIsNone(pair.networks["low"].path_of(pair.uid("high")))
        pair.networks["low"].connect(pair.uid("high"))
        pair.run()
        self.assertEqual(
            pair.networks["low"].path_of(pair.uid("high")),
            peerpath.PeerPath("direct", "direct: dialled high:1"),
        )
        self.assertEqual(pair.networks["high"].path_of(pair.uid("low")), peerpath.accepted())

    def test_lan_address(self) -> None:
        """When the dialled address was found on the LAN, then the path is "lan"."""
        pair = RelayPair()
        pair.blocked = False
        directory = cast(Any, pair.networks["low"])._directory
        directory.discovered_addresses = lambda uid: ["high:1"]
        pair.networks["low"].connect(pair.uid("high"))
        pair.run()
        path = pair.networks["low"].path_of(pair.uid("high"))
        assert path is not None
        self.assertEqual(path.kind, "lan")

    def test_address_success_reported(self) -> None:
        """When a dial succeeds, then the directory hears which address worked."""
        pair = RelayPair()
        pair.blocked = False
        worked: list[tuple[str, str]] = []
        directory = cast(Any, pair.networks["low"])._directory
        directory.address_succeeded = lambda uid, address: worked.append((uid, address))
        pair.networks["low"].connect(pair.uid("high"))
        pair.run()
        self.assertEqual(worked, [(pair.uid("high"), "high:1")])


class UpgradeTests(SynchronousTestCase):
    """A relayed session moves to direct when the direct route opens."""

    def upgrade_while_sending(self, relay_dialler: str, direct_dialler: str) -> RelayPair:
        pair = RelayPair()
        low, high = pair.networks["low"], pair.networks["high"]
        for name in ("low", "high"):
            other = "high" if name == "low" else "low"
            pair.networks[name].connect(pair.uid(other))  # dials fail: the route is blocked
        pair.run()
        self.assertIsNone(low.session(pair.uid("high")))
        relay_other = "high" if relay_dialler == "low" else "low"
        pair.relay(relay_dialler, relay_other)
        pair.run()
        for network, other in ((low, "high"), (high, "low")):
            path = network.path_of(pair.uid(other))
            assert path is not None
            self.assertEqual(path.kind, "relayed")
        sent = [b"m%04d" % i for i in range(1000)]
        for body in sent[:400]:
            pair.outboxes["low"].send(body)
        pair.run()
        for body in sent[400:700]:
            pair.outboxes["low"].send(body)  # in flight when the route opens
        pair.blocked = False
        other = "high" if direct_dialler == "low" else "low"
        pair.networks[direct_dialler].redial(pair.uid(other))  # the background dialler's turn
        for body in sent[700:]:
            pair.outboxes["low"].send(body)
        pair.run()
        pair.clock.advance(10.0)
        pair.run()
        for network, other in ((low, "high"), (high, "low")):
            path = network.path_of(pair.uid(other))
            assert path is not None
            self.assertIn(path.kind, ("direct", "lan"))
            self.assertEqual(network.connections, 1)
        self.assertEqual(pair.outboxes["high"].received, sent)  # none lost, in order
        self.assertEqual(pair.outboxes["low"].unacked, {})
        return pair

    def test_upgrade_whoever_relayed_and_dialled(self) -> None:
        """When the pair runs relayed and the direct route opens while 1,000 messages flow,
        then both ends move to the direct session (whichever side relayed or dialled, and
        whatever the uids), each message arrives exactly once and in order, and the relayed
        session is closed as upgraded."""
        for relay_dialler in ("low", "high"):
            for direct_dialler in ("low", "high"):
                pair = self.upgrade_while_sending(relay_dialler, direct_dialler)
                events = pair.outboxes["low"].events
                self.assertEqual(events[0], ("established", "relayed"))
                self.assertIn(events[-1], [("established", "direct")])
                closed = [e for e in events if e[0] == "closed"]
                self.assertEqual(len(closed), 1)
                self.assertIn(peerpath.UPGRADED, closed[0][1])

    def test_relayed_never_replaces_direct(self) -> None:
        """When a direct session is up and a relayed one arrives (even from the lower uid),
        then the relayed one is closed and the direct one stays on both ends."""
        pair = RelayPair()
        pair.blocked = False
        high = pair.networks["high"]
        high.connect(pair.uid("low"))
        pair.run()
        direct = high.session(pair.uid("low"))
        pair.relay("low", "high")
        pair.run()
        self.assertIs(high.session(pair.uid("low")), direct)
        path = pair.networks["low"].path_of(pair.uid("high"))
        assert path is not None
        self.assertEqual(path.kind, "direct")

    def test_dialler_keeps_trying_while_relayed(self) -> None:
        """When the live session is relayed, then the dialler keeps retrying the addresses in
        the background; once direct, it stops."""
        pair = RelayPair()
        low = pair.networks["low"]
        low.connect(pair.uid("high"))
        pair.run()
        pair.relay("high", "low")
        pair.run()
        attempts = low.status(pair.uid("high")).connect_attempts
        pair.clock.advance(5.0)
        pair.run()
        pair.clock.advance(5.0)
        pair.run()
        self.assertGreaterEqual(low.status(pair.uid("high")).connect_attempts, attempts + 2)
        pair.blocked = False
        pair.clock.advance(5.0)
        pair.run()
        path = low.path_of(pair.uid("high"))
        assert path is not None
        self.assertEqual(path.kind, "direct")
        settled = low.status(pair.uid("high")).connect_attempts
        pair.clock.advance(60.0)
        pair.run()
        self.assertEqual(low.status(pair.uid("high")).connect_attempts, settled)


class DiallerRaceTests(SynchronousTestCase):
    """The dialler's rounds are address races."""

    def test_found_address_dialled_while_the_card_address_hangs(self) -> None:
        """When a round hangs on the card's address and the contact is found on the LAN
        (redial with a new first address), then the new address is dialled at once in that
        round, and when it connects the hanging attempt is cancelled and dialling stops."""
        from tests.test_network import DiallerHarness

        harness = DiallerHarness(("far:1",))
        harness.dialler.start()
        far = harness.attempts[-1][1]
        cancelled: list[Deferred[None]] = []
        far._canceller = cancelled.append
        harness.addresses = ("near:2", "far:1")
        harness.dialler.redial()
        self.assertEqual([a for a, _ in harness.attempts], ["far:1", "near:2"])
        harness.attempts[-1][1].callback(None)
        self.assertEqual(cancelled, [far])
        self.assertFalse(harness.dialler.running)
        self.assertFalse(harness.dialler.dialling)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_second_address_after_the_stagger(self) -> None:
        """When the first address neither connects nor fails, then the second is dialled
        after the stagger, not after the first's connect timeout."""
        from jarvis.net.eyeballs import STAGGER
        from tests.test_network import DiallerHarness

        harness = DiallerHarness(("a:1", "b:2"))
        harness.dialler.start()
        self.assertEqual([a for a, _ in harness.attempts], ["a:1"])
        harness.clock.advance(STAGGER)
        self.assertEqual([a for a, _ in harness.attempts], ["a:1", "b:2"])
