"""File transfer between two real daemons, next to the same run's TLS stream ceiling (issue 18).

Two ``twistd -n jarvis`` daemons (as :mod:`bench.messaging_bench` starts them) befriend each
other; the sender calls ``files.send`` on a random file, the receiver ``files.accept``.  Figures:

- ``files_mib_per_s``: file bytes per second from the receiver's accept to its
  ``transfer.changed`` *complete* (the data connection's set-up, every chunk sealed by the
  five-layer cascade, written, and the receiver's whole-file re-check included; the sender's
  hashing at offer time is not: ``offer_hash_s``);
- ``sender_cpu_s_per_gib`` / ``receiver_cpu_s_per_gib``: user + system CPU seconds of each daemon
  process (all its threads) during that time, per GiB;
- ``sender_rss_growth_mib`` / ``receiver_rss_growth_mib``: each daemon's peak RSS (``VmHWM``)
  after the transfer minus its RSS before it (goal: at most 32 MiB);
- ``sender_peak_rss_mib`` / ``receiver_peak_rss_mib``: each whole daemon's peak RSS during the
  transfer (the peak is reset before it where the kernel allows), to set beside
  magic-wormhole's whole processes (``bench.wormhole_bench``);
- ``chat_p50_ms`` / ``chat_p99_ms``: one chat message at a time during the transfer, from the
  sender's ``messages.send`` to the receiver's ``message.received`` event;
- the received file is compared byte for byte with the sent one (the run fails otherwise);
- ``tls_stream_16k_mib_per_s``: the ceiling's one-way stream of 16 KiB frames over pinned TLS
  1.3 to an echo peer process, measured in this run (:mod:`bench.ceiling`);
- ``tls_batching_stream_16k_mib_per_s``: the same stream sent through the daemons' own TLS
  protocol (:mod:`jarvis.net.tls_batching`), which hands each write's records to TCP at once;
  ``files_vs_tls_ceiling`` divides by the higher of the two.

``python -m bench.files_bench [--quick] [--smoke] [--no-chat] [--json-out FILE]`` (1 GiB;
256 MiB with ``--quick``; 16 MiB with ``--smoke``).  ``--no-chat`` leaves the chat loop out
(the benchmark only waits for the transfer's end), so the CPU figures are the transfer's alone
and ``chat_p50_ms`` / ``chat_p99_ms`` are not reported.  magic-wormhole is measured next to it by
:mod:`bench.wormhole_bench` in its own virtual environment (``pip install .[bench]``).
"""

from __future__ import annotations

import filecmp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import percentile

MIB = 1024 * 1024
#: Set by ``--no-chat``: no chat messages during the transfer.
NO_CHAT_FLAG = "--no-chat"
GOAL_RSS_GROWTH_MIB = 32.0


def file_size(quick: bool) -> int:
    from bench.harness import smoke_requested

    if smoke_requested():
        return 16 * MIB
    return 256 * MIB if quick else 1024 * MIB


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process *pid* so far (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_memory_mib(pid: int, key: str) -> float:
    """``VmRSS`` or ``VmHWM`` of process *pid*, in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak(pid: int) -> None:
    """Reset the peak RSS of *pid* (``/proc/PID/clear_refs`` 5), where the kernel allows it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


def write_random(path: str, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MIB))
            f.write(block)
            left -= len(block)


async def tls_ceiling(reactor: Any, quick: bool) -> tuple[float, float]:
    """The ceiling's pinned-TLS 16 KiB stream, MiB/s, measured now: through Twisted's TLS
    protocol, then through the daemons' own (:mod:`jarvis.net.tls_batching`)."""
    from bench import ceiling
    from bench.harness import smoke_requested

    sizes = ceiling.CeilingSizes.choose(quick=quick, smoke=smoke_requested())
    server = ceiling.make_identity(ceiling.SERVER_NAME)
    client = ceiling.make_identity(ceiling.CLIENT_NAME)
    with tempfile.TemporaryDirectory(prefix="jarvis-ceiling-") as scratch:
        paths = ceiling.write_peer_files(Path(scratch), server, client)
        peer = ceiling.EchoPeerProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ceiling.REPOSITORY_ROOT), env.get("PYTHONPATH", "")) if p
        )
        args = [sys.executable, "-m", "bench.echo_peer", *paths]
        process = reactor.spawnProcess(
            peer, sys.executable, args, env=env, path=ceiling.REPOSITORY_ROOT
        )
        try:
            ports = await peer.ports.addTimeout(30, reactor)
            run = ceiling.CeilingRun(
                reactor, sizes, ports, ceiling.PinnedTLSCreator(client, server.certificate)
            )
            await run.measure_stream("tls", 16 * 1024, "16k")
            await run.measure_stream("tls_batching", 16 * 1024, "16k")
        finally:
            await ceiling.stop_peer(reactor, process, peer)
    return (
        float(run.figures["tls_stream_16k_mib_per_s"]["value"]),
        float(run.figures["tls_batching_stream_16k_mib_per_s"]["value"]),
    )


async def measure(reactor: Any, quick: bool, chat_loop: bool = True) -> dict[str, Any]:
    from bench.messaging_bench import friends

    size = file_size(quick)
    stock_mib, batching_mib = await tls_ceiling(reactor, quick)
    ceiling_mib = max(stock_mib, batching_mib)
    ceiling_key = (
        "tls_batching_stream_16k_mib_per_s"
        if batching_mib > stock_mib
        else "tls_stream_16k_mib_per_s"
    )
    print(
        f"files: TLS ceiling {stock_mib:.0f} MiB/s (Twisted's TLS), "
        f"{batching_mib:.0f} MiB/s (the daemons' TLS)",
        file=sys.stderr,
    )
    async with friends(reactor) as (root, alice, bob):
        await alice.listen("transfer.changed")
        await bob.listen("transfer.changed", "transfer.offered", "message.received")
        path = os.path.join(root, "payload.bin")
        write_random(path, size)
        states: dict[str, dict[str, str]] = {"alice": {}, "bob": {}}
        received: list[str] = []
        for name, daemon in (("alice", alice), ("bob", bob)):
            daemon.events.on(
                "transfer.changed",
                lambda p, n=name: states[n].__setitem__(
                    p["transfer"]["id"], p["transfer"]["state"]
                ),
            )
        bob.events.on("message.received", lambda p: received.append(p["message"]["body"]))
        offered = time.perf_counter()
        sent = await alice.call("files.send", contact=bob.uid, path=path)
        offer_hash_s = time.perf_counter() - offered
        tid = sent["id"]
        await bob.events.wait(lambda: tid in states["bob"], 60)
        pids = {"alice": alice.pid, "bob": bob.pid}
        for pid in pids.values():
            reset_peak(pid)
        rss_before = {n: proc_memory_mib(p, "VmRSS") for n, p in pids.items()}
        cpu_before = {n: proc_cpu_seconds(p) for n, p in pids.items()}
        started = time.perf_counter()
        await bob.call("files.accept", id=tid, directory=os.path.join(root, "inbox"))
        chat: list[float] = []
        if not chat_loop:
            await bob.events.wait(
                lambda: states["bob"].get(tid) in ("complete", "failed", "cancelled"), 3600
            )
        while states["bob"].get(tid) not in ("complete", "failed", "cancelled"):
            text = f"chat {len(chat)}"
            t0 = time.perf_counter()
            await alice.call("messages.send", contact=bob.uid, text=text)
            await bob.events.wait(lambda t=text: t in received, 30)
            chat.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
        if states["bob"][tid] != "complete":
            raise RuntimeError(f"the transfer ended {states['bob'][tid]}")
        cpu = {n: proc_cpu_seconds(p) - cpu_before[n] for n, p in pids.items()}
        peak = {n: proc_memory_mib(p, "VmHWM") for n, p in pids.items()}
        growth = {n: peak[n] - rss_before[n] for n, p in pids.items()}
        landed = os.path.join(root, "inbox", "payload.bin")
        if not filecmp.cmp(path, landed, shallow=False):
            raise RuntimeError("the received file differs from the sent one")
    gib = size / (1024 * MIB)
    mib_per_s = size / MIB / seconds
    print(f"files: {size // MIB} MiB in {seconds:.2f} s = {mib_per_s:.0f} MiB/s", file=sys.stderr)
    unit_size = f"MiB/s ({size // MIB} MiB)"
    figures: dict[str, Any] = {
        "files_mib_per_s": {
            "value": mib_per_s,
            "unit": unit_size,
            "ceiling_key": ceiling_key,
            "goal": 0.7,
        },
        "tls_stream_16k_mib_per_s": {"value": stock_mib, "unit": "MiB/s (same run)"},
        "tls_batching_stream_16k_mib_per_s": {
            "value": batching_mib,
            "unit": "MiB/s (same run, the daemons' TLS)",
        },
        "files_vs_tls_ceiling": {"value": mib_per_s / ceiling_mib, "unit": "ratio"},
        "offer_hash_s": {"value": offer_hash_s, "unit": "s (sender hashes the file)"},
        "sender_cpu_s_per_gib": {"value": cpu["alice"] / gib, "unit": "CPU s/GiB"},
        "receiver_cpu_s_per_gib": {"value": cpu["bob"] / gib, "unit": "CPU s/GiB"},
        "sender_rss_growth_mib": {
            "value": growth["alice"],
            "unit": "MiB",
            "goal": GOAL_RSS_GROWTH_MIB,
        },
        "receiver_rss_growth_mib": {
            "value": growth["bob"],
            "unit": "MiB",
            "goal": GOAL_RSS_GROWTH_MIB,
        },
        "sender_peak_rss_mib": {"value": peak["alice"], "unit": "MiB (whole daemon)"},
        "receiver_peak_rss_mib": {"value": peak["bob"], "unit": "MiB (whole daemon)"},
    }
    if chat:
        figures["chat_p50_ms"] = {
            "value": percentile(chat, 0.5) * 1000,
            "unit": f"ms ({len(chat)})",
        }
        figures["chat_p99_ms"] = {"value": percentile(chat, 0.99) * 1000, "unit": "ms", "goal": 50}
    return {"figures": figures}


def run(quick: bool, chat_loop: bool = True) -> dict[str, Any]:
    """Send one file between two real daemons; see the module docstring."""
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, quick, chat_loop)))


def main(argv: list[str]) -> int:
    """The command line: the harness's options, plus ``--no-chat``."""
    from bench.harness import run_standalone

    chat_loop = NO_CHAT_FLAG not in argv
    rest = [a for a in argv if a != NO_CHAT_FLAG]
    return run_standalone("files", lambda quick: run(quick, chat_loop), rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
