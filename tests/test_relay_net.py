"""The peer network's relayed path: two PeerNetworks that cannot dial each other meet through
a relay (in this process, on 127.0.0.1), with the pinned TLS session end to end."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.mailbox.relay import PortSharing, RelayConnection, RelayFactory, RelayLimits
from jarvis.protocol import relay as wire
from tests.test_network import Node, message_id

#: An address where nothing listens: a direct dial is refused at once.
NOWHERE = "127.0.0.1:1"


class AnyPairRelay(RelayFactory):
    """A hostile relay: pairs any two joins of opposite sides, whatever their tokens."""

    def joined(self, connection: RelayConnection) -> None:
        join = connection.join
        assert join is not None
        for (_token, side), other in list(self.waiting.items()):
            if side != join.side:
                self._unwait(other)
                self.pairs.add((other, connection))
                self.counters["pairs"] += 1
                other.pair_with(connection)
                connection.pair_with(other)
                other.start_copying()
                connection.start_copying()
                return
        self.waiting[(join.token, join.side)] = connection
        connection.wait()


class RelayedNetworkTests(TestCase):
    timeout = 60

    def listen(self, relay: RelayFactory) -> str:
        inner: Any = Factory.forProtocol(Protocol)
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, PortSharing(inner, relay), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        pin = IdentityKey.generate().uid  # the relay never checks it: only TLS to a mailbox
        return f"jarvis-mailbox:{pin}@127.0.0.1:{port.getHost().port}"

    def node(self, link: str) -> Node:
        return Node(self, relay_links=lambda uid: [link], relay_timeout=5.0)

    async def test_relayed_session(self) -> None:
        """When two contacts' addresses cannot be dialled but both know a relay, then both
        get one session through it, reported with the path "relayed"; the lower uid is the
        TLS client (the session's initiator) on both sides; a message crosses it."""
        relay = RelayFactory(reactor, RelayLimits(pairing_timeout=5.0))
        link = self.listen(relay)
        a, b = self.node(link), self.node(link)
        a.directory.add(b.identity, NOWHERE)
        b.directory.add(a.identity, NOWHERE)
        a.network.connect(b.uid)
        b.network.connect(a.uid)
        await a.wait_online(b)
        await b.wait_online(a)
        for me, other in ((a, b), (b, a)):
            status = me.network.status(other.uid)
            self.assertEqual((status.state, status.path), ("online", "relayed"))
            session = me.network.session(other.uid)
            assert session is not None
            self.assertEqual(session.initiator, me.uid < other.uid)
        self.assertEqual(relay.figures()["relay_pairs"], 1)
        session = a.network.session(b.uid)
        assert session is not None
        session.send_message(message_id(), b"through the relay", 1)
        await b.observer.wait(lambda: bool(b.observer.named("message")))
        self.assertEqual(b.observer.named("message")[0][3], b"through the relay")

    def test_candidates_follow_addresses_and_need_the_key(self) -> None:
        """When a contact is dialled, then the relay comes after its addresses; a contact
        whose public key is unknown gets no relay candidate (no pair key to make a token)."""
        link = "jarvis-mailbox:" + IdentityKey.generate().uid + "@127.0.0.1:9"
        a = self.node(link)
        other = IdentityKey.generate()
        a.directory.add(other, NOWHERE)
        self.assertEqual(a.network._candidates(other.uid), (NOWHERE, "relay:" + link))
        a.directory.contacts[other.uid] = (b"", (NOWHERE,))
        self.assertEqual(a.network._candidates(other.uid), (NOWHERE,))

    async def test_hostile_relay_cannot_join_us_to_someone_else(self) -> None:
        """When a relay joins Alice's dial to Bob with Carol's dial to Alice (it ignores the
        tokens), then no session is established: Alice's pinned TLS wants Bob's key, and the
        attempt fails saying so."""
        relay = AnyPairRelay(reactor, RelayLimits(pairing_timeout=5.0))
        link = self.listen(relay)
        alice, bob = self.node(link), self.node(link)
        carol = self.node(link)
        for _ in range(50):  # Carol must take the TLS role opposite to Alice's
            if wire.side_of(carol.uid, alice.uid) != wire.side_of(alice.uid, bob.uid):
                break
            carol = self.node(link)
        alice.directory.add(bob.identity, NOWHERE)
        alice.directory.add(carol.identity, NOWHERE)
        carol.directory.add(alice.identity, NOWHERE)
        alice.network.connect(bob.uid)
        carol.network.connect(alice.uid)

        def failed_relayed() -> bool:
            return alice.network.status(bob.uid).connect_failures >= 2

        await alice.observer.wait(failed_relayed, 15)
        self.assertIsNone(alice.network.session(bob.uid))
        self.assertIsNone(carol.network.session(alice.uid))
        self.assertIsNone(alice.network.session(carol.uid))
        self.assertGreaterEqual(relay.counters["pairs"], 1)  # the relay did join them
        error = alice.network.status(bob.uid).last_error or ""
        self.assertTrue("refused" in error or "TLS" in error or "not the contact" in error, error)
