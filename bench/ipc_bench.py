"""The local API benchmark: ``daemon.status`` round trips next to a raw line-echo ceiling.

A server child process listens on a temporary UNIX socket: either the real local API server
(:class:`jarvis.ipc.server.IpcServerFactory` with a :class:`jarvis.testing.FakeNode`) or a raw
line echo (the most any line protocol over that socket can do).  This process measures both,
in the same run, with the same request line size:

- ``status_rtt_p50_us`` / ``status_rtt_p99_us``: one client, one request at a time, through
  the real Twisted client (:class:`jarvis.ipc.client.IpcClient`);
- ``status_rps_10_clients``: 10 clients, each keeping :data:`WINDOW` requests in flight;
- the same three for the echo (``echo_*``); each API figure names its echo figure as
  ``ceiling_key``, so the harness prints the ratio (API / echo: for requests/s higher is
  better and 1.0 is the ceiling, for round-trip times lower is better).

The API's natural ceiling is the line echo over the same UNIX socket, measured here in the same
run (the harness resolves a ``ceiling_key`` in the benchmark's own figures when the TCP/TLS
ceiling, which measures another transport, does not have it).

``run()`` runs the reactor, so it can be called once per process (the harness runs each
benchmark in its own process).  ``python -m bench.ipc_bench [--quick] [--smoke]`` prints the
table.  This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import percentile

#: Clients in the throughput measurement.
CLIENTS = 10
#: Requests each client keeps in flight in the throughput measurement.
WINDOW = 8
#: The request line every measurement sends (the echo gets a line of the same size).
STATUS_LINE = b'{"jsonrpc":"2.0","id":1,"method":"daemon.status"}\n'


@dataclass(frozen=True)
class Sizes:
    """How much to measure: sequential round trips, and seconds of throughput per server."""

    round_trips: int
    seconds: float

    @classmethod
    def choose(cls, quick: bool) -> Sizes:
        """Return the sizes for a full, quick or smoke (``JARVIS_BENCH_SMOKE``) run."""
        from bench.harness import smoke_requested

        if smoke_requested():
            return cls(round_trips=100, seconds=0.2)
        if quick:
            return cls(round_trips=1000, seconds=1.0)
        return cls(round_trips=5000, seconds=5.0)


# The server child ------------------------------------------------------------------------------


def serve(mode: str, path: str) -> None:
    """Listen on *path* with the API server (``rpc``) or a line echo (``echo``) until killed."""
    from twisted.internet import defer, endpoints, task
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    from jarvis.runtime.reactor import install

    reactor = install()

    class LineEcho(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1024 * 1024
        transport: Any

        def lineReceived(self, line: bytes) -> None:
            self.transport.write(line + b"\n")

    def make_factory() -> Any:
        if mode == "echo":
            return Factory.forProtocol(LineEcho)
        from jarvis.ipc.methods import DaemonInfo, MethodContext, build_registry
        from jarvis.ipc.server import IpcServerFactory
        from jarvis.testing import FakeNode

        node = FakeNode()
        node.create_identity("bench", "pw", progress=lambda value: None)
        ctx = MethodContext(
            node=node,
            clock=reactor,
            info=DaemonInfo(os.getpid(), "bench", "/nonexistent", f"unix:{path}"),
            stop_daemon=lambda: None,
        )
        return IpcServerFactory(build_registry(), ctx, clock=reactor)

    async def main(reactor: Any) -> None:
        await endpoints.UNIXServerEndpoint(reactor, path, mode=0o600).listen(make_factory())
        print("ready", flush=True)
        await defer.Deferred()  # until the parent kills this process

    task.react(lambda r: defer.ensureDeferred(main(r)))


# The measuring side ----------------------------------------------------------------------------


class ServerChild:
    """A server child process (see :func:`serve`)."""

    def __init__(self, reactor: Any, mode: str, path: str) -> None:
        from twisted.internet import defer
        from twisted.internet.protocol import ProcessProtocol

        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        child = self

        class Watch(ProcessProtocol):
            def outReceived(self, data: bytes) -> None:
                if b"ready" in data and not child.ready.called:
                    child.ready.callback(None)

            def errReceived(self, data: bytes) -> None:
                sys.stderr.write(data.decode("utf-8", "replace"))

            def processEnded(self, reason: Any) -> None:
                if not child.ready.called:
                    child.ready.errback(RuntimeError(f"{mode} server child exited"))
                child.ended.callback(None)

        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        args = [sys.executable, "-m", "bench.ipc_bench", "--serve", mode, path]
        self.process = reactor.spawnProcess(Watch(), sys.executable, args, env=env, path=root)

    async def stop(self) -> None:
        """Kill the child and wait for it."""
        try:
            self.process.signalProcess("KILL")
        except Exception:
            pass
        await self.ended


async def _echo_connect(reactor: Any, path: str) -> Any:
    from twisted.internet import defer, endpoints
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    class EchoClient(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1024 * 1024
        transport: Any

        def __init__(self) -> None:
            self.waiting: list[defer.Deferred[bytes]] = []

        def lineReceived(self, line: bytes) -> None:
            self.waiting.pop(0).callback(line)

        def call(self, method: str) -> defer.Deferred[bytes]:
            d: defer.Deferred[bytes] = defer.Deferred()
            self.waiting.append(d)
            self.transport.write(STATUS_LINE)
            return d

        def close(self) -> None:
            self.transport.loseConnection()

    return await endpoints.UNIXClientEndpoint(reactor, path).connect(
        Factory.forProtocol(EchoClient)
    )


async def _rpc_connect(reactor: Any, path: str) -> Any:
    from jarvis.ipc.client import IpcClient

    client = await IpcClient.connect(reactor, f"unix:{path}")
    return client


async def _measure_server(reactor: Any, mode: str, sizes: Sizes) -> dict[str, float]:
    from twisted.internet import defer

    directory = tempfile.mkdtemp(dir="/tmp", prefix="jbench")
    path = os.path.join(directory, f"{mode}.sock")
    child = ServerChild(reactor, mode, path)
    try:
        await child.ready
        connect = _rpc_connect if mode == "rpc" else _echo_connect
        clients = [await connect(reactor, path) for _ in range(CLIENTS)]
        # Latency: one client, one request at a time (after a short warm-up).
        first = clients[0]
        for _ in range(min(100, sizes.round_trips)):
            await first.call("daemon.status")
        samples: list[float] = []
        for _ in range(sizes.round_trips):
            started = time.perf_counter()
            await first.call("daemon.status")
            samples.append((time.perf_counter() - started) * 1e6)
        samples.sort()
        # Throughput: every client keeps WINDOW requests in flight until the time is up.
        deadline = time.perf_counter() + sizes.seconds
        done = [0]

        async def pump(client: Any) -> None:
            async def lane() -> None:
                while time.perf_counter() < deadline:
                    await client.call("daemon.status")
                    done[0] += 1

            await defer.gatherResults(
                [defer.ensureDeferred(lane()) for _ in range(WINDOW)], consumeErrors=True
            )

        started = time.perf_counter()
        await defer.gatherResults(
            [defer.ensureDeferred(pump(c)) for c in clients], consumeErrors=True
        )
        elapsed = time.perf_counter() - started
        for c in clients:
            c.close()
        return {
            "p50": percentile(samples, 0.50),
            "p99": percentile(samples, 0.99),
            "rps": done[0] / elapsed,
        }
    finally:
        await child.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def measure(reactor: Any, sizes: Sizes) -> dict[str, Any]:
    """Measure the echo ceiling, then the API, and return the figures."""
    echo = await _measure_server(reactor, "echo", sizes)
    api = await _measure_server(reactor, "rpc", sizes)

    def figure(value: float, unit: str, ceiling_key: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"value": round(value, 3), "unit": unit}
        if ceiling_key is not None:
            out["ceiling_key"] = ceiling_key
        return out

    return {
        "figures": {
            "status_rtt_p50_us": figure(api["p50"], "µs", "echo_rtt_p50_us"),
            "status_rtt_p99_us": figure(api["p99"], "µs", "echo_rtt_p99_us"),
            "status_rps_10_clients": figure(api["rps"], "requests/s", "echo_rps_10_clients"),
            "echo_rtt_p50_us": figure(echo["p50"], "µs"),
            "echo_rtt_p99_us": figure(echo["p99"], "µs"),
            "echo_rps_10_clients": figure(echo["rps"], "requests/s"),
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure ``daemon.status`` round trips and throughput against a raw line-echo ceiling.

    :param quick: about 1 s of throughput per server instead of 5 s.
    :returns: ``{"figures": {name: {"value", "unit"}}}``.
    """
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, Sizes.choose(quick))))


def main(argv: list[str]) -> int:
    """``python -m bench.ipc_bench [--quick] [--smoke]``: print the table (or serve, internally).

    :returns: the process exit status.
    """
    if argv[:1] == ["--serve"]:
        parser = argparse.ArgumentParser(prog="python -m bench.ipc_bench")
        parser.add_argument("--serve", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
        serve(*parser.parse_args(argv).serve)
        return 0
    from bench.harness import run_standalone

    return run_standalone("ipc", run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
