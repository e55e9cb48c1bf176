"""The paths of a file's data connection in the peer network (issue 18): a happy-eyeballs race
over the contact's addresses, and a relayed connection met at a relay with the transfer's own
token.  Real PeerNetworks and a real relay on 127.0.0.1; the transfer stream itself is replaced
by recording protocols (its records are tested in tests/test_net_transfer.py)."""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.mailbox.relay import PortSharing, RelayFactory, RelayLimits
from jarvis.net import network as net
from jarvis.net.transfer_link import TRANSFER_PREFACE
from tests.test_network import Node, wait_until

#: An address where nothing listens: a direct dial is refused at once.
NOWHERE = "127.0.0.1:1"


class Stream(Protocol):
    """Stands in for a TransferSender or TransferReceiver: records what it is given."""

    made: list[Stream] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.received = b""
        self.lost = False
        #: what the network gives a stream to keep its connection for the next file
        self.release = kwargs.get("release")

    def connectionMade(self) -> None:
        Stream.made.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Ends:
    """A TransferStreamObserver that records how the stream ended."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, bool]] = []

    def stream_ended(self, reason: str, resumable: bool) -> None:
        self.ended.append((reason, resumable))


class Silent(Protocol):
    """Accepts a TCP connection and never answers (a dead or black-holed address)."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed += 1  # type: ignore[attr-defined]


class StandInStreams(TestCase):
    """Real PeerNetworks whose transfer streams are :class:`Stream` stand-ins."""

    timeout = 60

    def setUp(self) -> None:
        Stream.made = []
        self.patch(net, "TransferSender", Stream)
        self.patch(net, "TransferReceiver", Stream)


def fake_source(tid: bytes) -> Any:
    """What ``open_transfer`` reads of a file's source: its offer's transfer id."""
    offer = type("Offer", (), {"transfer_id": tid})()
    return type("Source", (), {"prepared": type("Prepared", (), {"offer": offer})()})()


class DataPathTests(StandInStreams):
    def relay(self) -> tuple[RelayFactory, str]:
        relay = RelayFactory(reactor, RelayLimits(pairing_timeout=5.0))
        inner: Any = Factory.forProtocol(Protocol)
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, PortSharing(inner, relay), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        pin = IdentityKey.generate().uid
        return relay, f"jarvis-mailbox:{pin}@127.0.0.1:{port.getHost().port}"

    async def test_addresses_race_and_a_dead_one_does_not_hold_the_data(self) -> None:
        """When the receiver's first address accepts TCP but never answers and its second is
        its real listener, then the data connection is made on the second within a fraction
        of the handshake timeout (happy eyeballs: the next address starts after the stagger)
        and the dead connection is abandoned; the receiver's stream gets the data."""
        silent = Factory.forProtocol(Silent)
        silent.connections, silent.closed = [], 0  # type: ignore[attr-defined]
        dead = reactor.listenTCP(0, silent, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(dead.stopListening)
        a, b = Node(self), Node(self)
        a.directory.add(b.identity, f"127.0.0.1:{dead.getHost().port}", b.address)
        b.knows(a)
        tid = os.urandom(16)
        b.observer.inbound_stream = lambda uid, t: (object(), Ends()) if t == tid else None  # type: ignore[attr-defined]
        ends = Ends()
        started = time.monotonic()
        a.network._dial_data(b.uid, tid, Stream, ends, TRANSFER_PREFACE)
        await wait_until(lambda: len(Stream.made) == 2, 10)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 5.0)  # the handshake timeout is 10 s
        sender = a.network._links_out[tid].inner
        sender.transport.write(b"chunk")
        receiver = next(s for s in Stream.made if s is not sender)
        await wait_until(lambda: receiver.received == b"chunk", 10)
        await wait_until(lambda: silent.closed == 1, 10)  # type: ignore[attr-defined]
        self.assertEqual(ends.ended, [])

    async def test_no_address_answers_says_no_data_connection(self) -> None:
        """When no address of the receiver answers, then the stream ends resumable with a
        reason starting "no data connection" (what makes the sender ask for a dial back)."""
        a, b = Node(self), Node(self)
        a.directory.add(b.identity, NOWHERE, "not an address")
        ends = Ends()
        a.network._dial_data(b.uid, os.urandom(16), Stream, ends, TRANSFER_PREFACE)
        await wait_until(lambda: bool(ends.ended), 10)
        [(reason, resumable)] = ends.ended
        self.assertTrue(reason.startswith("no data connection: "), reason)
        self.assertTrue(resumable)
        self.assertEqual(Stream.made, [])

    async def test_relayed_data_connection_meets_beside_the_session(self) -> None:
        """When two contacts that cannot dial each other have a relayed session and both join
        the relay for a transfer, then the relay pairs the transfer's two ends as a second
        pair (the session keeps its own), pinned TLS runs end to end with the relay's TLS
        roles, and bytes flow both ways between the two streams."""
        relay, link = self.relay()
        options = {"relay_links": lambda uid: [link], "relay_timeout": 5.0}
        a, b = Node(self, **options), Node(self, **options)
        a.directory.add(b.identity, NOWHERE)
        b.directory.add(a.identity, NOWHERE)
        a.network.connect(b.uid)
        b.network.connect(a.uid)
        await a.wait_online(b)
        await b.wait_online(a)
        self.assertEqual(relay.counters["pairs"], 1)
        self.assertTrue(a.network.has_relay(b.uid))
        tid = os.urandom(16)
        ends_a, ends_b = Ends(), Ends()
        a.network._relay_data(b.uid, tid, Stream, ends_a, True)
        b.network._relay_data(a.uid, tid, Stream, ends_b, False)
        await wait_until(lambda: len(Stream.made) == 2, 10)
        self.assertEqual(relay.counters["pairs"], 2)
        sender, receiver = (a.network._links_out[tid].inner, b.network._links_out[tid].inner)
        sender.transport.write(b"manifest")
        receiver.transport.write(b"have")
        await wait_until(lambda: (receiver.received, sender.received) == (b"manifest", b"have"))
        self.assertEqual((ends_a.ended, ends_b.ended), ([], []))
        self.assertIsNotNone(a.network.session(b.uid))  # chat kept its own connection
        a.network.stop_transfer(tid)
        await wait_until(lambda: receiver.lost, 10)

    async def test_relay_without_partner_ends_resumable(self) -> None:
        """When only one side joins the relay for a transfer, then after the relay's pairing
        timeout the stream ends resumable, saying no relayed data connection was made; a
        contact with no relay known is told so at once."""
        relay = RelayFactory(reactor, RelayLimits(pairing_timeout=0.3))
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, PortSharing(Factory.forProtocol(Protocol), relay), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        link = f"jarvis-mailbox:{IdentityKey.generate().uid}@127.0.0.1:{port.getHost().port}"
        a, b = Node(self, relay_links=lambda uid: [link]), Node(self)
        a.directory.add(b.identity, NOWHERE)
        ends = Ends()
        a.network._relay_data(b.uid, os.urandom(16), Stream, ends, True)
        await wait_until(lambda: bool(ends.ended), 10)
        [(reason, resumable)] = ends.ended
        self.assertTrue(reason.startswith("no relayed data connection: "), reason)
        self.assertIn("no partner", reason)
        self.assertTrue(resumable)
        lonely = Ends()
        b.directory.add(a.identity, NOWHERE)
        self.assertFalse(b.network.has_relay(a.uid))
        b.network._relay_data(a.uid, os.urandom(16), Stream, lonely, False)
        self.assertEqual(len(lonely.ended), 1)
        self.assertEqual(Stream.made, [])

    async def test_an_unanswered_dial_is_abandoned_for_the_relay(self) -> None:
        """When the receiver's only address accepts TCP but never answers (packets dropped
        past the connect) and the node abandons the dial, then the stream ends at once,
        resumable, saying "no data connection" (what moves the transfer towards the relay),
        the silent connection is closed, and nothing else is abandoned: a second call, or one
        while a relay join waits for its partner, does nothing."""
        silent = Factory.forProtocol(Silent)
        silent.connections, silent.closed = [], 0  # type: ignore[attr-defined]
        dead = reactor.listenTCP(0, silent, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(dead.stopListening)
        _relay, link = self.relay()
        a, b = Node(self, relay_links=lambda uid: [link]), Node(self)
        a.directory.add(b.identity, f"127.0.0.1:{dead.getHost().port}")
        tid = os.urandom(16)
        ends = Ends()
        a.network._dial_data(b.uid, tid, Stream, ends, TRANSFER_PREFACE)
        await wait_until(lambda: len(silent.connections) == 1, 10)  # type: ignore[attr-defined]
        self.assertTrue(a.network.abandon_data_dial(tid))
        [(reason, resumable)] = ends.ended
        self.assertTrue(reason.startswith("no data connection: "), reason)
        self.assertIn("head start", reason)
        self.assertTrue(resumable)
        await wait_until(lambda: silent.closed == 1, 10)  # type: ignore[attr-defined]
        self.assertFalse(a.network.abandon_data_dial(tid))
        joining = Ends()
        a.network._relay_data(b.uid, tid, Stream, joining, True)
        self.assertFalse(a.network.abandon_data_dial(tid))  # a relay join is not a dial
        self.assertEqual(joining.ended, [])
        a.network.stop_transfer(tid)
        self.assertEqual(Stream.made, [])


class NextFileTests(StandInStreams):
    """One connection, several files, between two real PeerNetworks over pinned TLS."""

    async def test_a_folder_s_next_file_rides_the_same_connection(self) -> None:
        """When a file's stream is complete on both ends (each released its connection) and
        the sender sends the next file to the same contact, then no new connection is made:
        the next file's preface and id go on the same TLS connection, the receiver opens it
        as on a new one, and its bytes reach its own receiving stream; with no file after
        it, the sender closes the idle connection after IDLE_LINK_KEEP seconds and forgets
        it."""
        self.patch(net, "IDLE_LINK_KEEP", 0.3)
        a, b = Node(self), Node(self)
        a.knows(b)
        b.knows(a)
        first, second = os.urandom(16), os.urandom(16)
        asked: list[bytes] = []

        def inbound(uid: str, tid: bytes) -> Any:
            asked.append(tid)
            return (object(), Ends())

        b.observer.inbound_stream = inbound  # type: ignore[attr-defined]
        a.network.open_transfer(b.uid, fake_source(first), Ends())
        await wait_until(lambda: len(Stream.made) == 2, 10)
        link = a.network._links_out[first]
        sender = link.inner
        receiver = next(s for s in Stream.made if s is not sender)
        self.assertTrue(receiver.release())  # Complete written: it waits for the next file
        self.assertTrue(sender.release())  # Complete read: the connection is kept
        a.network.open_transfer(b.uid, fake_source(second), Ends())
        self.assertIs(a.network._links_out[second], link)
        await wait_until(lambda: len(Stream.made) == 4, 10)
        self.assertEqual(asked, [first, second])
        next_sender = link.inner
        next_receiver = next(s for s in Stream.made[2:] if s is not next_sender)
        next_sender.transport.write(b"chunk")
        await wait_until(lambda: next_receiver.received == b"chunk", 10)
        self.assertEqual(receiver.received, b"")
        self.assertTrue(next_receiver.release())
        self.assertTrue(next_sender.release())
        self.assertIn(b.uid, a.network._idle_links)
        await wait_until(lambda: link.closed, 10)
        self.assertEqual(a.network._idle_links, {})
        self.assertFalse(next_sender.lost)  # a stream complete hears nothing of the close

    async def test_the_receiver_closing_a_waiting_connection_is_not_a_lost_stream(
        self,
    ) -> None:
        """When the receiver closes a connection waiting for a next file (its wait ran out,
        or it stops) while the sender keeps it idle, then the sender forgets it, tells no
        stream, and its next file to that contact dials a new connection."""
        a, b = Node(self), Node(self)
        a.knows(b)
        b.knows(a)
        first, second = os.urandom(16), os.urandom(16)
        b.observer.inbound_stream = lambda uid, tid: (object(), Ends())  # type: ignore[attr-defined]
        a.network.open_transfer(b.uid, fake_source(first), Ends())
        await wait_until(lambda: len(Stream.made) == 2, 10)
        link = a.network._links_out[first]
        sender = link.inner
        receiver = next(s for s in Stream.made if s is not sender)
        self.assertTrue(receiver.release())
        self.assertTrue(sender.release())
        receiver.transport.loseConnection()
        await wait_until(lambda: link.closed, 10)
        self.assertEqual(a.network._idle_links, {})
        self.assertFalse(sender.lost)
        a.network.open_transfer(b.uid, fake_source(second), Ends())
        await wait_until(lambda: second in a.network._links_out, 10)
        await wait_until(lambda: len(Stream.made) == 4, 10)
        self.assertIsNot(a.network._links_out[second], link)


class StreamMadeTests(TestCase):
    """Every way of making a data connection builds its stream alike."""

    def test_every_sending_stream_has_the_acknowledgement_timeout(self) -> None:
        """When a file's sending stream is made for a direct dial, for a receiver's dial back,
        and for a meeting at a relay, then each is given the network's reactor for its
        acknowledgement timeout (a relayed transfer whose receiver stops acknowledging is
        dropped, resumable, like a direct one, instead of waiting for ever), and every
        receiving stream skips the final re-read alike."""
        made: list[tuple[str, dict[str, Any]]] = []

        def recorder(kind: str) -> Any:
            def make(*args: Any, **kwargs: Any) -> Protocol:
                made.append((kind, kwargs))
                return Protocol()

            return make

        self.patch(net, "TransferSender", recorder("send"))
        self.patch(net, "TransferReceiver", recorder("receive"))
        a = Node(self)
        source = fake_source(os.urandom(16))
        partial = type("Partial", (), {"offer": source.prepared.offer})()
        captured: list[Any] = []
        self.patch(a.network, "_dial_data", lambda *args: captured.append(args[2]))
        self.patch(a.network, "_relay_data", lambda *args: captured.append(args[2]))
        a.network.open_transfer("someone", source, Ends())
        a.network.pull_transfer("someone", partial, Ends())
        a.network.relay_send("someone", source, Ends())
        a.network.relay_receive("someone", partial, Ends())
        for make_inner in captured:
            make_inner()
        self.assertEqual([kind for kind, _ in made], ["send", "receive", "send", "receive"])
        for kind, kwargs in made:
            if kind == "send":
                self.assertIs(kwargs.get("clock"), a.network._reactor)
            else:
                self.assertEqual(kwargs.get("reread_on_finish"), False)
