"""End to end: strangers on the network try to exhaust a real daemon and fill its disk.

Each test starts real ``twistd -n jarvis`` daemons (tests/peers.py), attacks the peer port from
this process over loopback, and checks what survives: the local API answers, the daemon does not
spin, its logs stay small, and contacts still connect and deliver.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.ipc.client import IpcClient
from jarvis.net import tls
from tests.daemons import short_tempdir
from tests.peers import Peer
from tests.waiting import Waiters

#: The descriptor limit of the flooded daemon: far below the flood.
NOFILE = 128
#: Connections the flood opens and holds: three times the daemon's descriptors.
FLOOD = 3 * NOFILE
#: Source addresses the flood uses (all of 127.0.0.0/8 is loopback on Linux): enough that the
#: per-source cap alone does not stop it.
SOURCES = 32


class Held(protocol.Protocol):
    """A flood connection: connects, says nothing, notes when the daemon drops it."""

    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


def limit_descriptors(peer: Peer, nofile: int) -> None:
    """Make *peer*'s daemon start with ``RLIMIT_NOFILE`` = *nofile* (soft and hard)."""
    argv = peer.process.argv
    setter = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
        "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
    )

    def limited() -> list[str]:
        return [sys.executable, "-c", setter, *argv()[1:]]

    peer.process.argv = limited  # type: ignore[method-assign]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process *pid* so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_bytes(peer: Peer) -> int:
    """Bytes the daemon logged so far: its text log (standard output) and its JSON log."""
    path = os.path.join(peer.data_dir, "jarvis.log.json")
    return len(peer.process.output) + (os.path.getsize(path) if os.path.exists(path) else 0)


async def flood(port: int, count: int, sources: int) -> list[Held]:
    """Open *count* idle connections to *port* from *sources* loopback addresses."""
    held = []
    for i in range(count):
        source = f"127.0.{1 + i % sources}.{1 + i // sources % 250}"
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
        held.append(await connectProtocol(endpoint, Held()))
    return held


class DescriptorFloodTests(TestCase):
    timeout = 180

    async def test_flood_beyond_descriptors_leaves_api_and_contacts(self) -> None:
        """When strangers hold three times as many connections as the daemon has descriptors,
        then a new local API client still gets ``daemon.status``, the daemon stays idle (no
        accept loop spinning), its logs grow by a few lines only, and a contact connects and
        delivers a message while the flood is still held."""
        root = short_tempdir(self)
        alice, bob = Peer(self, root, "alice"), Peer(self, root, "bob")
        limit_descriptors(alice, NOFILE)
        await defer.gatherResults(
            [
                defer.ensureDeferred(alice.start(create=True)),
                defer.ensureDeferred(bob.start(create=True)),
            ]
        )
        assert alice.process.transport is not None
        pid = alice.process.transport.pid
        with open(f"/proc/{pid}/limits") as f:
            self.assertIn(f"Max open files            {NOFILE}", f.read())
        await alice.call("contacts.add", link=bob.link)  # bob does not know alice yet
        before = log_bytes(alice)

        held = await flood(alice.peer_port(), FLOOD, SOURCES)
        self.addCleanup(lambda: [h.transport.abortConnection() for h in held if h.transport])
        # the daemon drops the oldest strangers to stay within its descriptors
        dropped = Waiters(reactor)
        for h in held:
            h.lost.addCallback(lambda _: dropped.check())
        await dropped.wait(lambda: sum(1 for h in held if h.lost.called) > FLOOD - NOFILE, 30)

        # the local API: a new client connects and gets an answer
        client = await IpcClient.connect(reactor, alice.process.endpoint).addTimeout(10, reactor)
        self.addCleanup(client.close)
        status = await client.call("daemon.status", {}).addTimeout(10, reactor)
        self.assertIn("locked", status)

        # no spinning: CPU over a measurement window while the flood is held
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await task.deferLater(reactor, 2.0, lambda: None)  # a measurement window, not a wait
        share = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        self.assertLess(share, 0.25)

        # a contact still gets in, while the strangers' connections are still held
        await bob.call("contacts.add", link=alice.link)
        await defer.gatherResults(
            [alice.recorder.wait(alice.online_with(bob)), bob.recorder.wait(bob.online_with(alice))]
        )
        sent = await bob.call("messages.send", contact=alice.uid, text="through the flood")
        await bob.recorder.wait(lambda: sent["id"] in bob.delivered_ids(), 30)
        self.assertEqual(alice.received_bodies(), ["through the flood"])

        # a few aggregated lines, not one (or three) per stranger
        self.assertLess(log_bytes(alice) - before, 16 * 1024)
        self.assertNotIn(b"Closed socket from", alice.process.output)


class StrangerFloodTests(TestCase):
    timeout = 180

    async def test_refused_strangers_write_bounded_log(self) -> None:
        """When 300 strangers with their own keys complete TCP and start TLS without a knock
        (refused at the knock gate, as a TLS scanner is), then the daemon's logs grow by less
        than 4 KiB in all (before: about 750 bytes per stranger) and still say that connections
        were refused."""
        root = short_tempdir(self)
        alice = Peer(self, root, "alice")
        await alice.start(create=True)
        before = log_bytes(alice)
        strangers, at_once = 300, 15  # under the per-source cap: each one reaches the gate

        async def stranger() -> None:
            creator = tls.client_creator(IdentityKey.generate(), alice.uid)
            factory = TLSMemoryBIOFactory(
                IOpenSSLClientConnectionCreator(creator),
                True,
                protocol.Factory.forProtocol(Held),
            )
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", alice.peer_port())
            wrapper = await endpoint.connect(factory)
            await wrapper.wrappedProtocol.lost.addTimeout(10, reactor)

        for _ in range(strangers // at_once):
            await defer.gatherResults(
                [defer.ensureDeferred(stranger()) for _ in range(at_once)], consumeErrors=True
            )
        grown = log_bytes(alice) - before
        self.assertLess(grown, 4 * 1024)
        self.assertIn(b"inbound connections refused or dropped", alice.process.output)
