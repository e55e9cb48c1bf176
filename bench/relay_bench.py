"""The relay benchmark: a relayed session against a direct one, in the same run.

On loopback, with a real ``twistd jarvis-mailbox`` (relay bandwidth unlimited) and four real
daemons (:class:`bench.messaging_bench.BenchDaemon`):

- ``direct_msgs_per_s`` / ``relayed_msgs_per_s``: the messaging benchmark's throughput
  (200-byte messages, 200 ``messages.send`` in flight, until every one is *delivered*) over a
  direct session (one pair) and over a relayed one (the other pair: their link codes carry
  ``127.0.0.1:1``, where nothing listens, so their only path is the mailbox's relay).  Goal:
  ``relayed_ratio`` >= 0.8.  Each measurement runs :data:`ROUNDS` times, direct and relayed
  alternating, and the best of each is reported (all rounds are printed).
- ``direct_stream_mib_s`` / ``relayed_stream_mib_s``: one-way bulk of 16 KiB writes over a
  pinned mutual TLS 1.3 connection (:mod:`jarvis.net.tls`, the session's TLS), both ends in
  this process, directly and through the relay (:class:`jarvis.net.relay.RelayEndpoint`).
  The direct figure is the same run's TLS stream ceiling for this set-up.  Goal:
  ``relayed_stream_ratio`` >= 0.6.
- ``relayed_session_s``: from the first ``contacts.add`` to both daemons of the relayed pair
  online; ``relayed_restart_s``: from spawning both daemons again (unlocking from a password
  file, Argon2id included) to both online again, next to the same for the direct pair
  (``direct_restart_s``: what starting a daemon costs here without the relay).  Goal: 10 s.

``python -m bench.relay_bench [--quick]`` prints the table.  Must not be imported by Jarvis.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Any

#: Goals of issue 16.
GOAL_RATIO = 0.8
GOAL_STREAM_RATIO = 0.6
GOAL_SESSION_S = 10.0
CHUNK = 16 * 1024
#: Alternating rounds of each measurement (the best of each is reported).
ROUNDS = 3


async def stream(connect_pair: Any, total: int) -> float:
    """Send *total* bytes one way in 16 KiB writes over a pinned TLS connection made by
    ``connect_pair(client_factory, server_factory)``; return MiB/s from the first write to
    the last byte received."""
    from twisted.internet import defer
    from twisted.internet.interfaces import IHandshakeListener, IPushProducer
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from zope.interface import implementer

    from jarvis.crypto.identity import IdentityKey
    from jarvis.net.tls import client_creator, server_creator

    done: defer.Deferred[float] = defer.Deferred()
    made: dict[str, defer.Deferred[Any]] = {"source": defer.Deferred(), "sink": defer.Deferred()}

    @implementer(IHandshakeListener)
    class Sink(Protocol):
        received = 0

        def handshakeCompleted(self) -> None:
            made["sink"].callback(self)

        def dataReceived(self, data: bytes) -> None:
            self.received += len(data)
            if self.received >= total and not done.called:
                done.callback(time.perf_counter())

    @implementer(IHandshakeListener, IPushProducer)
    class Source(Protocol):
        sent = 0
        paused = False

        def handshakeCompleted(self) -> None:
            made["source"].callback(self)

        def go(self) -> None:
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            self.resumeProducing()

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            chunk = b"\x5a" * CHUNK
            while not self.paused and self.sent < total:
                self.transport.write(chunk)  # type: ignore[union-attr]
                self.sent += CHUNK

        def stopProducing(self) -> None:
            self.paused = True

    a, b = IdentityKey.generate(), IdentityKey.generate()
    client = TLSMemoryBIOFactory(client_creator(a, b.uid), True, Factory.forProtocol(Source))
    server = TLSMemoryBIOFactory(
        server_creator(b, lambda uid: uid == a.uid), False, Factory.forProtocol(Sink)
    )
    await connect_pair(client, server)
    source, sink = await defer.gatherResults([made["source"], made["sink"]])
    started = time.perf_counter()
    source.go()
    ended = await done
    source.transport.unregisterProducer()
    source.transport.loseConnection()
    sink.transport.loseConnection()
    return float(total / (ended - started) / (1024 * 1024))


async def measure(reactor: Any, quick: bool) -> dict[str, Any]:
    from twisted.internet import defer
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from bench.messaging_bench import BenchDaemon, befriend, measure_throughput
    from jarvis.net.relay import RelayEndpoint
    from jarvis.protocol import relay as wire
    from tests.test_mailbox_e2e import MailboxProcess

    count = 2_000 if quick else 10_000
    total = (128 if quick else 512) * 1024 * 1024
    root = tempfile.mkdtemp(prefix="jvr", dir="/tmp")
    os.chmod(root, 0o700)
    os.makedirs(os.path.join(root, "mbox"))
    mailbox = MailboxProcess(os.path.join(root, "mbox"), ["--relay-bandwidth", "0"])
    daemons = {n: BenchDaemon(reactor, root, n) for n in ("adir", "bdir", "arel", "brel")}
    for name in ("arel", "brel"):
        daemons[name].process.extra = ["--advertise", "127.0.0.1:1"]
    try:
        await mailbox.start()
        link = mailbox.link()
        await defer.gatherResults(
            [defer.ensureDeferred(d.start(create=True)) for d in daemons.values()]
        )
        rela, relb = daemons["arel"], daemons["brel"]
        await defer.gatherResults([d.call("mailbox.use", link=str(link)) for d in (rela, relb)])
        print("relay: befriending", file=sys.stderr)
        await befriend(reactor, daemons["adir"], daemons["bdir"])
        started = time.perf_counter()
        await befriend(reactor, rela, relb)
        session_s = time.perf_counter() - started
        [peer] = (await rela.call("peers.status"))["peers"]
        if peer["path"] != "relayed":
            raise RuntimeError(f"the relayed pair is {peer['path']}")

        print("relay: throughput, direct then relayed", file=sys.stderr)
        for sender, receiver in ((daemons["adir"], daemons["bdir"]), (rela, relb)):
            await sender.listen("message.stateChanged")
            await receiver.listen()
        # alternating rounds, best of each: the machine's load moves more than the paths differ
        directs, relayeds = [], []
        for _ in range(ROUNDS):
            directs.append(
                await measure_throughput(reactor, daemons["adir"], daemons["bdir"], count)
            )
            relayeds.append(await measure_throughput(reactor, rela, relb, count))
        direct, relayed = max(directs), max(relayeds)

        print("relay: restart of each pair", file=sys.stderr)
        from bench.messaging_bench import wait_online

        async def restart(pair: tuple[Any, Any]) -> float:
            await defer.gatherResults([defer.ensureDeferred(d.stop()) for d in pair])
            started = time.perf_counter()
            await defer.gatherResults([defer.ensureDeferred(d.start(unlock=True)) for d in pair])
            await defer.gatherResults([wait_online(reactor, d, 1, 60) for d in pair])
            return time.perf_counter() - started

        for d in (daemons["adir"], daemons["bdir"]):
            # the same port again, as a real node keeps it: the contact dials its card's address
            d.process.listen = f"tcp:{d.peer_port()}:interface=127.0.0.1"
        direct_restart_s = await restart((daemons["adir"], daemons["bdir"]))
        restart_s = await restart((rela, relb))

        print("relay: bulk stream, direct then relayed", file=sys.stderr)

        async def direct_pair(client: Any, server: Any) -> None:
            port = reactor.listenTCP(0, server, interface="127.0.0.1")
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
            await endpoint.connect(client)
            await port.stopListening()

        async def relayed_pair(client: Any, server: Any) -> None:
            key = os.urandom(32)
            tcp = TCP4ClientEndpoint(reactor, link.host, link.port)
            await defer.gatherResults(
                [
                    RelayEndpoint(tcp, key, wire.SIDE_CLIENT, reactor).connect(client),
                    RelayEndpoint(tcp, key, wire.SIDE_SERVER, reactor).connect(server),
                ]
            )

        direct_mibs, relayed_mibs = [], []
        for _ in range(ROUNDS):
            direct_mibs.append(await stream(direct_pair, total))
            relayed_mibs.append(await stream(relayed_pair, total))
        direct_mib, relayed_mib = max(direct_mibs), max(relayed_mibs)
        print(
            f"relay: rounds msgs/s direct {[round(x) for x in directs]} relayed "
            f"{[round(x) for x in relayeds]}; MiB/s direct {[round(x) for x in direct_mibs]} "
            f"relayed {[round(x) for x in relayed_mibs]}",
            file=sys.stderr,
        )
    finally:
        await defer.gatherResults(
            [defer.ensureDeferred(d.cleanup()) for d in daemons.values()], consumeErrors=True
        )
        await mailbox.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    return {
        "figures": {
            "direct_msgs_per_s": {"value": round(direct, 1), "unit": "msgs/s"},
            "relayed_msgs_per_s": {"value": round(relayed, 1), "unit": "msgs/s"},
            "relayed_ratio": {"value": round(relayed / direct, 3), "unit": "x", "goal": GOAL_RATIO},
            "direct_stream_mib_s": {"value": round(direct_mib, 1), "unit": "MiB/s"},
            "relayed_stream_mib_s": {"value": round(relayed_mib, 1), "unit": "MiB/s"},
            "relayed_stream_ratio": {
                "value": round(relayed_mib / direct_mib, 3),
                "unit": "x",
                "goal": GOAL_STREAM_RATIO,
            },
            "relayed_session_s": {
                "value": round(session_s, 3),
                "unit": "s",
                "goal": GOAL_SESSION_S,
            },
            "direct_restart_s": {"value": round(direct_restart_s, 3), "unit": "s"},
            "relayed_restart_s": {
                "value": round(restart_s, 3),
                "unit": "s",
                "goal": GOAL_SESSION_S,
            },
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure a relayed session and stream against direct ones in the same run."""
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, quick)))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("relay_bench", run, sys.argv[1:]))
