"""File transfer between two real daemons, next to the same run's TLS stream ceiling (issue 18).

Two ``twistd -n jarvis`` daemons (as :mod:`bench.messaging_bench` starts them) befriend each
other; the sender calls ``files.send`` on a random file, the receiver ``files.accept``.  Figures:

- ``files_mib_per_s``: file bytes per second from the receiver's accept to its
  ``transfer.changed`` *complete* (the data connection's set-up, every chunk sealed by the
  five-layer cascade, written, and the receiver's whole-file re-check included; the sender's
  hashing at offer time is not: ``offer_hash_s``);
- ``sender_cpu_s_per_gib`` / ``receiver_cpu_s_per_gib``: user + system CPU seconds of each daemon
  process (all its threads) during that time, per GiB;
- ``sender_sys_cpu_s_per_gib`` / ``receiver_sys_cpu_s_per_gib``: the kernel's part of those
  (system time: socket copies, the direct writes, waking and switching threads);
- ``sender_switches_per_mib`` / ``receiver_switches_per_mib``: context switches (voluntary and
  not) of each daemon's threads during the transfer, per MiB (threads that ended meanwhile are
  not counted);
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

``python -m bench.files_bench [--quick] [--smoke] [--no-chat] [--wormhole-venv DIR]
[--rounds N] [--json-out FILE]`` (1 GiB; 256 MiB with ``--quick``; 16 MiB with ``--smoke``).
``--no-chat`` leaves the chat loop out (the benchmark only waits for the transfer's end), so the
CPU figures are the transfer's alone and ``chat_p50_ms`` / ``chat_p99_ms`` are not reported.

``--wormhole-venv DIR`` puts magic-wormhole beside Jarvis in the same run: each round first
sends the same size with ``wormhole send``/``receive`` (:mod:`bench.wormhole_bench`, one run,
from the virtual environment *DIR* that ``pip install .[bench]`` filled; root, for its
loopback-only namespace), then with Jarvis, and adds:

- ``wormhole_mib_per_s``, ``wormhole_sender_cpu_s_per_gib``,
  ``wormhole_receiver_cpu_s_per_gib``, ``wormhole_sender_peak_rss_mib``,
  ``wormhole_receiver_peak_rss_mib``: magic-wormhole's figures;
- ``files_vs_wormhole``: Jarvis's MiB/s over magic-wormhole's in the same round (goal: at
  least 1.0);
- ``sender_rss_vs_wormhole`` / ``receiver_rss_vs_wormhole``: each daemon's peak RSS over the
  matching wormhole end's (goal: at most 1.0).

``--rounds N`` (default 1) repeats the round; every figure is then the median over the rounds
(the ratios too: each round's ratio, then their median), and each round is printed as it ends.
Rounds alternate the two programs because this machine's state moves between runs
(``docs/benchmarks.md``, "why magic-wormhole's figure moves").
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import percentile

MIB = 1024 * 1024
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
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
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """``(user, system)`` CPU seconds of process *pid* so far (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def proc_switches(pid: int) -> int:
    """Context switches (voluntary and not) of *pid*'s threads alive now, so far."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except OSError:
            continue  # the thread ended meanwhile
    return total


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
        sys_before = {n: proc_cpu_split(p)[1] for n, p in pids.items()}
        switches_before = {n: proc_switches(p) for n, p in pids.items()}
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
        system = {n: proc_cpu_split(p)[1] - sys_before[n] for n, p in pids.items()}
        switches = {n: proc_switches(p) - switches_before[n] for n, p in pids.items()}
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
        "sender_sys_cpu_s_per_gib": {"value": system["alice"] / gib, "unit": "CPU s/GiB (kernel)"},
        "receiver_sys_cpu_s_per_gib": {"value": system["bob"] / gib, "unit": "CPU s/GiB (kernel)"},
        "sender_switches_per_mib": {
            "value": switches["alice"] / (size / MIB),
            "unit": "context switches/MiB",
        },
        "receiver_switches_per_mib": {
            "value": switches["bob"] / (size / MIB),
            "unit": "context switches/MiB",
        },
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


async def run_wormhole(reactor: Any, venv: str, size: int) -> dict[str, float]:
    """One magic-wormhole run of *size* bytes (:mod:`bench.wormhole_bench`, a child process
    through the reactor's process API); its figures."""
    from twisted.internet.utils import getProcessOutputAndValue

    args = ["-m", "bench.wormhole_bench", "--venv", venv]
    args += ["--size-mib", str(max(1, size // MIB)), "--runs", "1"]
    out, err, code = await getProcessOutputAndValue(
        sys.executable, args, env=dict(os.environ), path=str(REPOSITORY_ROOT), reactor=reactor
    )
    for line in out.decode("utf-8", "replace").splitlines():
        if line.startswith("run 1: "):
            return {k: float(v) for k, v in json.loads(line[len("run 1: ") :]).items()}
    stderr = err.decode("utf-8", "replace").strip()[-2000:]
    raise RuntimeError(f"magic-wormhole's run failed (exit {code}): {stderr}")


def side_by_side(jarvis: dict[str, Any], wormhole: dict[str, float]) -> dict[str, Any]:
    """Jarvis's figures of one round with magic-wormhole's of the same round and the ratios."""
    figures = dict(jarvis)
    for key, value in wormhole.items():
        unit = "CPU s/GiB" if "cpu" in key else "MiB" if "rss" in key else "MiB/s"
        figures[key] = {"value": value, "unit": f"{unit} (magic-wormhole, same round)"}
    figures["files_vs_wormhole"] = {
        "value": jarvis["files_mib_per_s"]["value"] / wormhole["wormhole_mib_per_s"],
        "unit": "ratio (same round)",
        "goal": 1.0,
    }
    for side in ("sender", "receiver"):
        figures[f"{side}_rss_vs_wormhole"] = {
            "value": jarvis[f"{side}_peak_rss_mib"]["value"]
            / wormhole[f"wormhole_{side}_peak_rss_mib"],
            "unit": "ratio (whole processes, same round; goal: at most)",
            "goal": 1.0,
        }
    return figures


def median_figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over *rounds* (units and goals from the first round)."""
    if len(rounds) == 1:
        return rounds[0]
    merged = {}
    for key, figure in rounds[0].items():
        values = [r[key]["value"] for r in rounds if key in r]
        merged[key] = dict(figure, value=statistics.median(values))
        merged[key]["unit"] = f"{figure['unit']}; median of {len(values)} rounds"
    return merged


async def measure_rounds(
    reactor: Any, quick: bool, chat_loop: bool, venv: str | None, rounds: int
) -> dict[str, Any]:
    """*rounds* rounds of magic-wormhole (with *venv*) then Jarvis; the medians."""
    done: list[dict[str, Any]] = []
    for n in range(rounds):
        wormhole = None
        if venv is not None:
            wormhole = await run_wormhole(reactor, venv, file_size(quick))
            print(
                f"files: round {n + 1}: magic-wormhole {wormhole['wormhole_mib_per_s']:.0f} MiB/s",
                file=sys.stderr,
            )
        figures = (await measure(reactor, quick, chat_loop))["figures"]
        if wormhole is not None:
            figures = side_by_side(figures, wormhole)
        done.append(figures)
        line = {k: round(f["value"], 2) for k, f in figures.items()}
        print(f"files: round {n + 1}: {json.dumps(line)}", file=sys.stderr)
    return {"figures": median_figures(done)}


def run(
    quick: bool, chat_loop: bool = True, wormhole_venv: str | None = None, rounds: int = 1
) -> dict[str, Any]:
    """Send one file between two real daemons; see the module docstring."""
    from bench.harness import run_on_reactor

    return dict(
        run_on_reactor(
            lambda reactor: measure_rounds(reactor, quick, chat_loop, wormhole_venv, rounds)
        )
    )


OWN_OPTIONS = """this benchmark's own options:
  --no-chat             no chat messages during the transfer (CPU figures of the transfer alone)
  --wormhole-venv DIR   magic-wormhole from virtual environment DIR beside Jarvis, each round
  --rounds N            rounds (each: magic-wormhole, then Jarvis); figures are medians"""


def main(argv: list[str]) -> int:
    """The command line: the harness's options, plus ``--no-chat``, ``--wormhole-venv DIR`` and
    ``--rounds N``."""
    from bench.harness import run_standalone

    own = argparse.ArgumentParser(prog="python -m bench.files_bench", add_help=False)
    own.add_argument(NO_CHAT_FLAG, action="store_true")
    own.add_argument("--wormhole-venv")
    own.add_argument("--rounds", type=int, default=1)
    options, rest = own.parse_known_args(argv)
    if options.rounds < 1:
        own.error("--rounds must be at least 1")
    return run_standalone(
        "files",
        lambda quick: run(quick, not options.no_chat, options.wormhole_venv, options.rounds),
        rest,
        epilog=OWN_OPTIONS,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
