"""The ceiling benchmark: raw Twisted length-prefixed echo between two processes on loopback.

Every Jarvis figure is bounded by what Twisted itself does on this machine with this reactor:
an ``Int32StringReceiver`` talking to another process over 127.0.0.1, in plain TCP and in
pinned mutual TLS 1.3 (Ed25519 certificates, each side trusting exactly the other's).  This
module measures that ceiling so that later benchmarks can report their figures as a ratio of
it, measured in the same run on the same (noisy) machine.

Measured, for each of ``tcp`` and ``tls``:

- ping-pong with 100-byte frames on 1 connection: round trips/s, p50 and p99 latency (µs);
- ping-pong on 100 connections at once: aggregate round trips/s;
- connecting 100 connections (including the TLS handshake and a first echo): connections/s;
- one-way pipelined streaming of 200-byte and 16 KiB frames on 1 connection: frames/s and
  MiB/s of payload, timed until the peer confirms it received every frame.

The echo server is a child process (:mod:`bench.echo_peer`); the client is this process.  Both
run the asyncio reactor.  Loops are bounded by both a time budget and a count; everything stays
on 127.0.0.1.  Run it with ``python -m bench ceiling [--quick]`` or ``python -m bench.ceiling``.
``run()`` runs the reactor, so it can be called once per process only.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from bench.echo_peer import (
    MAX_FRAME,
    MODE_ECHO,
    MODE_SINK,
    Identity,
    PinnedTLSCreator,
    make_identity,
)
from bench.harness import (
    REPOSITORY_ROOT,
    percentile,
    run_on_reactor,
    run_standalone,
    smoke_requested,
)

T = TypeVar("T")

PING_PAYLOAD = b"p" * 100
MIB = 1024 * 1024
SERVER_NAME = "server.bench.jarvis"
CLIENT_NAME = "client.bench.jarvis"


@dataclass(frozen=True)
class CeilingSizes:
    """How long and how much each measurement runs.

    :param phase_seconds: time budget of each measurement.
    :param max_round_trips: most round trips per ping-pong measurement (over all connections).
    :param connections: connections in the many-connections measurement.
    :param max_stream_frames: most frames per streaming measurement.
    :param warmup_round_trips: round trips before a 1-connection measurement starts.
    """

    phase_seconds: float
    max_round_trips: int
    connections: int
    max_stream_frames: int
    warmup_round_trips: int

    @classmethod
    def choose(cls, *, quick: bool, smoke: bool) -> CeilingSizes:
        """Return the sizes for a full, ``--quick`` or ``--smoke`` run."""
        if smoke:
            return cls(0.2, 300, 100, 300, 10)
        if quick:
            return cls(1.0, 5_000_000, 100, 20_000_000, 200)
        return cls(5.0, 50_000_000, 100, 200_000_000, 1000)


@dataclass(frozen=True)
class StreamFigures:
    """One streaming measurement: frames the peer confirmed and the seconds it took."""

    frames: int
    seconds: float


class PeerLost(Exception):
    """The echo peer closed a connection in the middle of a measurement."""


@implementer(IPushProducer)
class EchoClientProtocol(Int32StringReceiver):
    """Client side of one benchmark connection: ping-pong (``echo``) or streaming (``sink``).

    :param mode: :data:`~bench.echo_peer.MODE_ECHO` or :data:`~bench.echo_peer.MODE_SINK`,
        sent as the first frame.
    :param clock: the reactor, for yielding between streaming batches.
    """

    MAX_LENGTH = MAX_FRAME

    def __init__(self, mode: bytes, clock: Any) -> None:
        self._mode = mode
        self._clock = clock
        self._done: defer.Deferred[Any] | None = None
        self.closed: defer.Deferred[None] = defer.Deferred()
        # ping-pong state
        self._latencies: list[int] = []
        self._remaining = 0
        self._deadline_ns = 0
        self._sent_at = 0
        # streaming state
        self._frame = b""
        self._frames_left = 0
        self._sent = 0
        self._batch = 1
        self._deadline = 0.0
        self._paused = False
        self._producing = False
        self._started = 0.0

    def connectionMade(self) -> None:
        """Announce the mode."""
        self.sendString(self._mode)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Fail a measurement in flight and fire :attr:`closed`."""
        self._producing = False
        done, self._done = self._done, None
        if done is not None:
            done.errback(PeerLost(str(reason.value) if reason else "connection lost"))
        self.closed.callback(None)

    def close(self) -> defer.Deferred[None]:
        """Close the connection; the Deferred fires once it is closed."""
        transport: Any = self.transport
        transport.loseConnection()
        return self.closed

    def ping_pong(self, rounds: int, deadline: float) -> defer.Deferred[list[int]]:
        """Send a 100-byte frame and wait for its echo, again and again.

        :param rounds: stop after this many round trips.
        :param deadline: or at this ``time.perf_counter()`` value, whichever comes first.
        :returns: a Deferred firing with each round trip's latency in nanoseconds.
        """
        self._latencies = []
        self._remaining = rounds
        self._deadline_ns = int(deadline * 1e9)
        done: defer.Deferred[list[int]] = defer.Deferred()
        self._done = done
        self._sent_at = time.perf_counter_ns()
        self.sendString(PING_PAYLOAD)
        return done

    def stream(self, frame: bytes, frames: int, deadline: float) -> defer.Deferred[StreamFigures]:
        """Send *frame* back to back, respecting the transport's back-pressure.

        :param frame: the payload of every frame.
        :param frames: stop after this many frames.
        :param deadline: or at this ``time.perf_counter()`` value, whichever comes first.
        :returns: a Deferred firing once the peer confirmed how many frames it received.
        """
        self._frame = frame
        self._frames_left = frames
        self._sent = 0
        self._deadline = deadline
        # Write about 64 KiB per reactor turn, then yield so the TLS layer flushes and the
        # transport can push back (pauseProducing) before the next batch.
        self._batch = max(1, 65536 // (len(frame) + 4))
        self._paused = False
        self._producing = True
        done: defer.Deferred[StreamFigures] = defer.Deferred()
        self._done = done
        self._started = time.perf_counter()
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self._produce()
        return done

    def pauseProducing(self) -> None:
        """The transport's buffer is full: stop writing."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport drained: write again on the next reactor turn."""
        if self._paused:
            self._paused = False
            if self._producing:
                self._clock.callLater(0, self._produce)

    def stopProducing(self) -> None:
        """The connection is going away: stop writing for good."""
        self._producing = False

    def _produce(self) -> None:
        if not self._producing or self._paused:
            return
        if self._frames_left <= 0 or time.perf_counter() >= self._deadline:
            self._producing = False
            transport: Any = self.transport
            transport.unregisterProducer()
            self.sendString(b"")  # end marker: the peer answers with its count
            return
        for _ in range(min(self._batch, self._frames_left)):
            self.sendString(self._frame)
            self._sent += 1
            self._frames_left -= 1
            if self._paused:
                return
        self._clock.callLater(0, self._produce)

    def stringReceived(self, string: bytes) -> None:
        """Handle an echo (ping-pong) or the peer's frame count (streaming)."""
        if self._mode == MODE_ECHO:
            now = time.perf_counter_ns()
            self._latencies.append(now - self._sent_at)
            self._remaining -= 1
            if self._remaining > 0 and now < self._deadline_ns:
                self._sent_at = now
                self.sendString(PING_PAYLOAD)
                return
            self._finish(self._latencies)
        else:
            seconds = time.perf_counter() - self._started
            frames = int(string)
            if frames != self._sent:
                self._fail(PeerLost(f"peer counted {frames} frames, {self._sent} were sent"))
            else:
                self._finish(StreamFigures(frames=frames, seconds=seconds))

    def _finish(self, result: object) -> None:
        done, self._done = self._done, None
        if done is not None:
            done.callback(result)

    def _fail(self, problem: Exception) -> None:
        done, self._done = self._done, None
        if done is not None:
            done.errback(problem)


class EchoClientFactory(Factory):
    """Builds :class:`EchoClientProtocol` connections in one mode."""

    def __init__(self, mode: bytes, clock: Any) -> None:
        self._mode = mode
        self._clock = clock

    def buildProtocol(self, addr: object) -> EchoClientProtocol:
        """Return a new client protocol in this factory's mode."""
        protocol = EchoClientProtocol(self._mode, self._clock)
        protocol.factory = self
        return protocol


class EchoPeerProcess(ProcessProtocol):
    """Watches the echo peer child: its ports line, its stderr, its exit."""

    def __init__(self) -> None:
        self.ports: defer.Deferred[dict[str, int]] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._stdout = b""

    def outReceived(self, data: bytes) -> None:
        """Read ``tcp=<port> tls=<port>`` from the child's stdout."""
        self._stdout += data
        if b"\n" in self._stdout and not self.ports.called:
            line = self._stdout.split(b"\n", 1)[0].decode("ascii")
            fields = dict(part.split("=", 1) for part in line.split())
            self.ports.callback({name: int(port) for name, port in fields.items()})

    def errReceived(self, data: bytes) -> None:
        """Pass the child's stderr through."""
        sys.stderr.write(data.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        """Fire :attr:`ended`; fail :attr:`ports` if the child died before printing them."""
        if not self.ports.called:
            self.ports.errback(PeerLost(f"echo peer exited before listening: {reason.value}"))
        self.ended.callback(None)


def progress(message: str) -> None:
    """Print a progress line on stderr (stdout is kept for the table)."""
    print(f"   ceiling: {message}", file=sys.stderr, flush=True)


async def gather(awaitables: list[Coroutine[Any, Any, T]] | list[defer.Deferred[T]]) -> list[T]:
    """Wait for every Deferred/coroutine in *awaitables*; fail with the first failure."""
    deferreds: list[defer.Deferred[T]] = [defer.ensureDeferred(each) for each in awaitables]
    results = await defer.gatherResults(deferreds, consumeErrors=True)
    return list(results)


class CeilingRun:
    """One run of the ceiling against one echo peer process.

    :param reactor: the running asyncio reactor.
    :param sizes: the time budgets and counts.
    :param ports: the peer's ports on 127.0.0.1: ``tcp``, ``tls``, ``tls_unbuffered``.
    :param tls_creator: our pinned TLS client creator.
    """

    def __init__(
        self,
        reactor: Any,
        sizes: CeilingSizes,
        ports: dict[str, int],
        tls_creator: PinnedTLSCreator,
    ) -> None:
        self._reactor = reactor
        self._sizes = sizes
        self._ports = ports
        self._tls_creator = tls_creator
        self.figures: dict[str, dict[str, Any]] = {}

    def _figure(self, key: str, value: float, unit: str) -> None:
        self.figures[key] = {"value": round(value, 3), "unit": unit}

    async def connect(self, transport: str, mode: bytes) -> EchoClientProtocol:
        """Open one connection to the peer.

        :param transport: ``"tcp"``, ``"tls"`` (Twisted's default TLS protocol, which
            aggregates small writes until the next reactor turn), ``"tls_unbuffered"``, or
            ``"tls_batching"`` (Jarvis's own TLS protocol on this end,
            :mod:`jarvis.net.tls_batching`, to the ``"tls"`` port).
        :param mode: the connection's mode frame.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

        port = self._ports["tls" if transport == "tls_batching" else transport]
        endpoint = TCP4ClientEndpoint(self._reactor, "127.0.0.1", port, timeout=10)
        factory: Any = EchoClientFactory(mode, self._reactor)
        if transport == "tcp":
            protocol: EchoClientProtocol = await endpoint.connect(factory)
            return protocol
        creator: Any = self._tls_creator
        tls_factory: Any = TLSMemoryBIOFactory(creator, True, factory)
        if transport == "tls_unbuffered":
            tls_factory.protocol = TLSMemoryBIOProtocol
        if transport == "tls_batching":
            from jarvis.net.tls_batching import BatchingTLSFactory

            tls_factory = BatchingTLSFactory(creator, True, factory)
        wrapper = await endpoint.connect(tls_factory)
        return wrapper.wrappedProtocol  # type: ignore[no-any-return]

    async def measure(self) -> dict[str, dict[str, Any]]:
        """Run every measurement over TCP, then over TLS; return the figures."""
        for transport in ("tcp", "tls"):
            await self.measure_ping_pong_one(transport)
            await self.measure_ping_pong_many(transport)
            await self.measure_stream(transport, 200, "200b")
            await self.measure_stream(transport, 16 * 1024, "16k")
        await self.measure_ping_pong_one("tls_unbuffered")
        return self.figures

    async def measure_ping_pong_one(self, transport: str) -> None:
        """Round trips/s and latency percentiles on one connection."""
        sizes = self._sizes
        connection = await self.connect(transport, MODE_ECHO)
        try:
            await connection.ping_pong(sizes.warmup_round_trips, time.perf_counter() + 1.0)
            started = time.perf_counter()
            latencies = await connection.ping_pong(
                sizes.max_round_trips, started + sizes.phase_seconds
            )
            seconds = time.perf_counter() - started
        finally:
            await connection.close()
        latencies.sort()
        prefix = f"{transport}_rtt_1conn"
        self._figure(f"{prefix}_per_s", len(latencies) / seconds, "round trips/s")
        self._figure(f"{prefix}_p50_us", percentile(latencies, 0.50) / 1000.0, "µs")
        self._figure(f"{prefix}_p99_us", percentile(latencies, 0.99) / 1000.0, "µs")
        progress(
            f"{transport} 1 connection: {len(latencies) / seconds:,.0f} round trips/s, "
            f"p50 {percentile(latencies, 0.5) / 1000:.0f} µs"
        )

    async def measure_ping_pong_many(self, transport: str) -> None:
        """Connections/s for opening many connections, then their aggregate round trips/s."""
        sizes = self._sizes
        count = sizes.connections
        started = time.perf_counter()
        connections = await gather([self.connect(transport, MODE_ECHO) for _ in range(count)])
        try:
            # The first echo proves the peer accepted us (TLS 1.3 checks the client late).
            await gather([c.ping_pong(1, started + 30.0) for c in connections])
            connect_seconds = time.perf_counter() - started
            warmup = max(1, sizes.warmup_round_trips // 20)
            await gather([c.ping_pong(warmup, time.perf_counter() + 1.0) for c in connections])
            per_connection = max(1, math.ceil(sizes.max_round_trips / count))
            started = time.perf_counter()
            deadline = started + sizes.phase_seconds
            results = await gather([c.ping_pong(per_connection, deadline) for c in connections])
            seconds = time.perf_counter() - started
        finally:
            await gather([c.close() for c in connections])
        round_trips = sum(len(latencies) for latencies in results)
        self._figure(f"{transport}_connect_{count}conn_per_s", count / connect_seconds, "conn/s")
        self._figure(f"{transport}_rtt_{count}conn_per_s", round_trips / seconds, "round trips/s")
        progress(
            f"{transport} {count} connections: {round_trips / seconds:,.0f} round trips/s, "
            f"connected at {count / connect_seconds:,.0f}/s"
        )

    async def measure_stream(self, transport: str, frame_size: int, label: str) -> None:
        """Frames/s and MiB/s of one-way pipelined streaming on one connection."""
        sizes = self._sizes
        frame = b"s" * frame_size
        connection = await self.connect(transport, MODE_SINK)
        try:
            await connection.stream(frame, 10, time.perf_counter() + 5.0)  # handshake, warm-up
            result = await connection.stream(
                frame, sizes.max_stream_frames, time.perf_counter() + sizes.phase_seconds
            )
        finally:
            await connection.close()
        prefix = f"{transport}_stream_{label}"
        frames_per_s = result.frames / result.seconds
        self._figure(f"{prefix}_frames_per_s", frames_per_s, "frames/s")
        self._figure(f"{prefix}_mib_per_s", frames_per_s * frame_size / MIB, "MiB/s")
        progress(
            f"{transport} stream {label}: {frames_per_s:,.0f} frames/s, "
            f"{frames_per_s * frame_size / MIB:,.1f} MiB/s"
        )


async def measure_ceiling(reactor: Any, sizes: CeilingSizes) -> dict[str, dict[str, Any]]:
    """Start the echo peer, run every measurement, stop the peer.

    :param reactor: the running asyncio reactor.
    :param sizes: the time budgets and counts.
    :returns: figure name -> ``{"value", "unit"}``.
    """
    server = make_identity(SERVER_NAME)
    client = make_identity(CLIENT_NAME)
    with tempfile.TemporaryDirectory(prefix="jarvis-ceiling-") as scratch:
        paths = write_peer_files(Path(scratch), server, client)
        peer = EchoPeerProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(REPOSITORY_ROOT), env.get("PYTHONPATH", "")) if part
        )
        args = [sys.executable, "-m", "bench.echo_peer", *paths]
        process = reactor.spawnProcess(peer, sys.executable, args, env=env, path=REPOSITORY_ROOT)
        try:
            ports = await peer.ports.addTimeout(30, reactor)
            run = CeilingRun(reactor, sizes, ports, PinnedTLSCreator(client, server.certificate))
            return await run.measure()
        finally:
            await stop_peer(reactor, process, peer)


def write_peer_files(directory: Path, server: Identity, client: Identity) -> list[str]:
    """Write the echo peer's key, certificate and pinned client certificate into *directory*.

    :returns: the peer's command-line options naming those files.
    """
    files = {
        "--key": (directory / "server.key", server.key_pem()),
        "--cert": (directory / "server.crt", server.certificate_pem()),
        "--peer-cert": (directory / "client.crt", client.certificate_pem()),
    }
    options: list[str] = []
    for option, (path, content) in files.items():
        path.write_bytes(content)
        path.chmod(0o600)
        options += [option, str(path)]
    return options


async def stop_peer(reactor: Any, process: Any, peer: EchoPeerProcess) -> None:
    """Close the peer's stdin (it exits on EOF); kill it if it has not ended within 5 s."""
    if peer.ended.called:
        return
    process.closeStdin()
    killer = reactor.callLater(5.0, lambda: process.signalProcess("KILL"))
    await peer.ended
    if killer.active():
        killer.cancel()


def run(quick: bool) -> dict[str, Any]:
    """Measure the raw Twisted echo ceiling (TCP and pinned mutual TLS 1.3, on loopback).

    :param quick: a short run (about 1 s per measurement) instead of the full one (5 s each).
    :returns: ``{"figures": {name: {"value", "unit"}}}``.
    """
    sizes = CeilingSizes.choose(quick=quick, smoke=smoke_requested())
    figures = run_on_reactor(lambda reactor: measure_ceiling(reactor, sizes))
    return {"figures": figures}


if __name__ == "__main__":
    sys.exit(run_standalone("ceiling", run, sys.argv[1:]))
