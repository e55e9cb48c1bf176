"""The exec benchmark: programs run by a real daemon through the local API, and hooks under a flood.

One ``twistd -n jarvis`` child (``--exec-limit 64``, started as the messaging benchmark starts
its daemons) and API clients in this process measure:

- ``line_latency_p50_ms`` / ``line_latency_p99_ms``: a child prints its wall-clock time on a
  line every 5 ms; this process takes the difference with its own clock when the line arrives
  as ``$/progress`` output (same machine, same clock).  Goal p99 ≤ 50 ms.
- ``flood_status_p99_ms`` and ``flood_stall_ms``: 50 runs of ``yes`` at once, each printing as
  fast as it can for :attr:`Sizes.flood_seconds` (output capped at 1 MiB per run, the rest
  counted and dropped) while a second client calls ``daemon.status`` one at a time: its round
  trip p99 (goal ≤ 10 ms) and the daemon's ``lag.worst_last_minute_ms`` afterwards (goal ≤ 20
  ms; it covers the last minute, so it is an upper bound of the flood's own worst stall: the
  set-up's figure is reported as ``setup_stall_ms`` next to it).
- ``true_runs_per_s``: ``exec.run`` of ``true`` with 16 calls in flight, next to
  ``raw_spawn_true_per_s``, the same number of ``spawnProcess('/bin/true')`` in this process
  with the same window (the ceiling of any Twisted process runner here), and
  ``true_stall_ms`` (the daemon's worst stall of the last minute afterwards).
- ``hook_flood_*``: a second daemon pair; bob has a hook (``cat >/dev/null``, ``--hook-limit
  4``, rate 600/min) on alice's conversation and alice sends 10,000 messages (2,000 with
  ``--quick``): every message must be stored (``hook_flood_delivered``), the most hook
  processes at once (``hook_flood_peak_processes``, at most 4) and the delivery rate.

``python -m bench.exec_bench [--quick] [--smoke]`` prints the table; ``python -m bench exec``
records ``bench/results/exec.json``.  This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import percentile
from bench.messaging_bench import BenchDaemon

#: The ``daemon.status`` prober, run in its own process so that this process's own work (decoding
#: the flood's output) does not count: blocking socket, one call at a time until stdin closes,
#: then prints ``p50 p99 max count`` in milliseconds.
PROBER_SCRIPT = r"""
import json, os, select, socket, sys, time
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
line = b'{"jsonrpc":"2.0","id":1,"method":"daemon.status"}\n'
rtts = []
buffered = b""
while not select.select([sys.stdin], [], [], 0)[0]:
    started = time.perf_counter()
    sock.sendall(line)
    while b"\n" not in buffered:
        buffered += sock.recv(1 << 20)
    buffered = buffered.split(b"\n", 1)[1]
    rtts.append((time.perf_counter() - started) * 1000.0)
rtts.sort()
pick = lambda f: rtts[max(0, -(-int(f * len(rtts)) // 1) - 1)]
print(pick(0.5), pick(0.99), rtts[-1], len(rtts))
"""

LATENCY_SCRIPT = (
    "import sys, time\n"
    "for _ in range({n}):\n"
    "    sys.stdout.write(repr(time.time()) + '\\n'); sys.stdout.flush(); time.sleep(0.005)\n"
)


@dataclass(frozen=True)
class Sizes:
    """How much to measure."""

    latency_lines: int
    flood_runs: int
    flood_seconds: float
    true_runs: int
    hook_messages: int

    @classmethod
    def choose(cls, quick: bool) -> Sizes:
        """Return the sizes for a full, quick or smoke (``JARVIS_BENCH_SMOKE``) run."""
        from bench.harness import smoke_requested

        if smoke_requested():
            return cls(20, 5, 0.3, 20, 50)
        if quick:
            return cls(200, 50, 2.0, 300, 2000)
        return cls(1000, 50, 5.0, 2000, 10_000)


class Lines:
    """Splits streamed output into lines and times each line's arrival."""

    def __init__(self) -> None:
        self.partial = ""
        self.latencies: list[float] = []

    def __call__(self, value: Any) -> None:
        if value.get("stage") != "output":
            return
        now = time.time()
        *lines, self.partial = (self.partial + value["text"]).split("\n")
        for line in lines:
            self.latencies.append((now - float(line)) * 1000.0)


async def measure_latency(daemon: BenchDaemon, sizes: Sizes) -> dict[str, float]:
    lines = Lines()
    script = LATENCY_SCRIPT.format(n=sizes.latency_lines)
    await daemon.client.call(
        "exec.run", {"argv": [sys.executable, "-c", script], "timeout": 600}, progress=lines
    )
    return {
        "p50": percentile(lines.latencies, 0.5),
        "p99": percentile(lines.latencies, 0.99),
    }


async def measure_flood(reactor: Any, daemon: BenchDaemon, sizes: Sizes) -> dict[str, float]:
    from twisted.internet import defer
    from twisted.internet.protocol import ProcessProtocol

    class Prober(ProcessProtocol):
        def __init__(self) -> None:
            self.out = b""
            self.done: defer.Deferred[None] = defer.Deferred()

        def outReceived(self, data: bytes) -> None:
            self.out += data

        def processEnded(self, reason: Any) -> None:
            self.done.callback(None)

    prober = Prober()
    prober_process = reactor.spawnProcess(
        prober,
        sys.executable,
        [sys.executable, "-c", PROBER_SCRIPT, daemon.process.socket],
        env=dict(os.environ),
    )
    received = [0]

    def count(value: Any) -> None:
        if value.get("stage") == "output":
            received[0] += len(value["text"])

    runs = [
        daemon.client.call(
            "exec.run",
            {"argv": ["yes", "jarvis exec bench line"], "timeout": sizes.flood_seconds},
            progress=count,
        )
        for _ in range(sizes.flood_runs)
    ]
    results = await defer.DeferredList(runs, consumeErrors=True)
    prober_process.closeStdin()
    await prober.done
    p50, p99, worst, samples = (float(x) for x in prober.out.split())
    status = await daemon.call("daemon.status")
    kept = sum(r["bytes"]["kept"] for ok, r in results if ok)
    dropped = sum(r["bytes"]["dropped"] for ok, r in results if ok)
    return {
        "status_p50": p50,
        "status_p99": p99,
        "status_max": worst,
        "status_samples": samples,
        "stall": float(status["lag"]["worst_last_minute_ms"]),
        "received": float(received[0]),
        "kept": float(kept),
        "dropped": float(dropped),
    }


async def measure_true(reactor: Any, daemon: BenchDaemon, sizes: Sizes) -> dict[str, float]:
    from twisted.internet import defer
    from twisted.internet.protocol import ProcessProtocol

    window = 16

    async def through_api() -> None:
        for _ in range(sizes.true_runs // window):
            await defer.gatherResults(
                [daemon.call("exec.run", argv=["true"]) for _ in range(window)]
            )

    started = time.perf_counter()
    await through_api()
    api_rate = (sizes.true_runs // window * window) / (time.perf_counter() - started)
    stall = float((await daemon.call("daemon.status"))["lag"]["worst_last_minute_ms"])

    class Ended(ProcessProtocol):
        def __init__(self) -> None:
            self.done: defer.Deferred[None] = defer.Deferred()

        def processEnded(self, reason: Any) -> None:
            self.done.callback(None)

    def spawn() -> defer.Deferred[None]:
        protocol = Ended()
        reactor.spawnProcess(protocol, "/bin/true", ["true"], env={})
        return protocol.done

    started = time.perf_counter()
    for _ in range(sizes.true_runs // window):
        await defer.gatherResults([spawn() for _ in range(window)])
    raw_rate = (sizes.true_runs // window * window) / (time.perf_counter() - started)
    return {"api": api_rate, "raw": raw_rate, "stall": stall}


async def measure_hook_flood(reactor: Any, root: str, sizes: Sizes) -> dict[str, float]:
    from twisted.internet import defer

    alice = BenchDaemon(reactor, root, "alice")
    bob = BenchDaemon(reactor, root, "bob")
    bob.process.extra = ["--hook-limit", "4"]
    try:
        await defer.gatherResults(
            [
                defer.ensureDeferred(alice.start(create=True)),
                defer.ensureDeferred(bob.start(create=True)),
            ]
        )
        await alice.call("contacts.add", link=bob.link)
        await bob.call("contacts.add", link=alice.link)
        while (await alice.call("contacts.show", contact=bob.uid))["status"] != "online":
            await _sleep(reactor, 0.05)
        await bob.call("hooks.add", name="sink", argv=["sh", "-c", "cat >/dev/null"], rate=600)
        started = time.perf_counter()
        window = 200
        for first in range(0, sizes.hook_messages, window):
            count = min(window, sizes.hook_messages - first)
            await defer.gatherResults(
                [
                    alice.call("messages.send", contact=bob.uid, text=f"flood {first + i}")
                    for i in range(count)
                ]
            )
        while True:
            counts = await bob.call("messages.unreadCounts")
            if counts["unread"].get(alice.uid, 0) >= sizes.hook_messages:
                break
            await _sleep(reactor, 0.05)
        seconds = time.perf_counter() - started
        while (await bob.call("hooks.list"))["running"]:
            await _sleep(reactor, 0.05)
        hooks = await bob.call("hooks.list")
        stored = (await bob.call("messages.unreadCounts"))["unread"].get(alice.uid, 0)
        return {
            "delivered": float(stored),
            "rate": sizes.hook_messages / seconds,
            "peak": float(hooks["peak_running"]),
            "ran": float(hooks["ran"]),
            "dropped": float(hooks["dropped_rate"] + hooks["dropped_queue"]),
        }
    finally:
        for daemon in (alice, bob):
            if daemon.client is not None:
                await daemon.client.close()
            await daemon.process.cleanup()


async def _sleep(reactor: Any, seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)


async def measure(reactor: Any, sizes: Sizes) -> dict[str, Any]:
    """Run every measurement and return the figures."""
    root = tempfile.mkdtemp(prefix="jxb", dir="/tmp")
    os.chmod(root, 0o700)
    daemon = BenchDaemon(reactor, root, "exec")
    daemon.process.extra = ["--exec-limit", "64"]
    try:
        await daemon.start(create=True)
        setup_stall = float((await daemon.call("daemon.status"))["lag"]["worst_ms"])
        latency = await measure_latency(daemon, sizes)
        flood = await measure_flood(reactor, daemon, sizes)
        trues = await measure_true(reactor, daemon, sizes)
    finally:
        if daemon.client is not None:
            await daemon.client.close()
        await daemon.process.cleanup()
    hook = await measure_hook_flood(reactor, root, sizes)
    shutil.rmtree(root, ignore_errors=True)

    def figure(value: float, unit: str, **extra: Any) -> dict[str, Any]:
        return {"value": round(value, 3), "unit": unit, **extra}

    return {
        "figures": {
            "line_latency_p50_ms": figure(latency["p50"], "ms"),
            "line_latency_p99_ms": figure(latency["p99"], "ms", goal=50.0),
            "flood_runs": figure(sizes.flood_runs, "runs"),
            "flood_status_p50_ms": figure(flood["status_p50"], "ms"),
            "flood_status_p99_ms": figure(flood["status_p99"], "ms", goal=10.0),
            "flood_status_max_ms": figure(flood["status_max"], "ms"),
            "flood_status_samples": figure(flood["status_samples"], "calls"),
            "flood_stall_ms": figure(flood["stall"], "ms", goal=20.0),
            "flood_kept_mib": figure(flood["kept"] / 2**20, "MiB"),
            "flood_dropped_mib": figure(flood["dropped"] / 2**20, "MiB"),
            "setup_stall_ms": figure(setup_stall, "ms"),
            "load_avg_1min": figure(os.getloadavg()[0], "runnable"),
            "true_runs_per_s": figure(trues["api"], "runs/s", ceiling_key="raw_spawn_true_per_s"),
            "raw_spawn_true_per_s": figure(trues["raw"], "runs/s"),
            "true_stall_ms": figure(trues["stall"], "ms", goal=20.0),
            "hook_flood_messages": figure(sizes.hook_messages, "messages"),
            "hook_flood_delivered": figure(hook["delivered"], "messages"),
            "hook_flood_msgs_per_s": figure(hook["rate"], "messages/s"),
            "hook_flood_peak_processes": figure(hook["peak"], "processes"),
            "hook_flood_hook_runs": figure(hook["ran"], "runs"),
            "hook_flood_dropped_events": figure(hook["dropped"], "events"),
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure exec.run latency, a 50-run output flood, true runs/s and a hooked message flood.

    :param quick: shorter runs (2,000 hooked messages instead of 10,000).
    :returns: ``{"figures": {name: {"value", "unit"}}}``.
    """
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, Sizes.choose(quick))))


def main(argv: list[str]) -> int:
    """``python -m bench.exec_bench [--quick] [--smoke]``."""
    from bench.harness import run_standalone

    return run_standalone("exec", run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
