"""The mailbox benchmark: one real ``twistd -n jarvis-mailbox`` under many queues and deposits.

This process starts the mailbox (like ``tests/test_mailbox_e2e.py`` does, on ``127.0.0.1``),
connects :data:`CONNECTIONS` clients of :mod:`jarvis.mailbox.client` over pinned TLS 1.3 and:

- creates Q queues spread over the connections (10,000 in a full run, 2,000 with ``--quick``,
  100 with ``--smoke``): ``queues_created_per_s``;
- deposits D blocks of 16 KiB, round-robin over the queues, each connection keeping
  :data:`WINDOW` deposits in flight (60,000 full, 20,000 quick, 500 smoke); a deposit counts
  when the mailbox acknowledged it, i.e. after its commit (WAL, ``synchronous=FULL``):
  ``deposits_per_s`` (goal >= 5,000/s, shown next to the same run's ceiling of TLS 16 KiB
  frames/s on one connection, ``tls_stream_16k_frames_per_s``);
- splits the deposit phase's CPU: the mailbox's (``mailbox_cpu_per_deposit_us``, all its
  threads) and this client process's (``client_cpu_per_deposit_us``: if it neared a full core,
  the client, not the mailbox, would be the limit); and, from the mailbox's status before and
  after the phase, how much of the phase's wall time its database thread was busy
  (``db_busy_percent``: running operations and committing; near 100 means that thread is the
  limit), the part spent committing (``db_commit_percent``: fsync and checkpoint included)
  and the mean group-commit size (``deposits_per_batch``);
- collects (subscribe, acknowledge one by one) every message of :data:`COLLECT_QUEUES` queues
  on one connection each: ``collect_per_s``;
- reads the mailbox's VmRSS at the end (``rss_mib``, goal <= 200 MiB with all Q queues and
  every deposit stored) and its own reactor-lag probe over the run (``worst_stall_ms``, goal
  <= 20 ms, the worst lag of a 50 ms timer in the last 60 s, read from its status).

``MAILBOX_ARGS`` (environment) adds options to the mailbox's command line, e.g.
``MAILBOX_ARGS="--sync normal"``; ``MAILBOX_PROFILE_ARGS`` adds twistd options (a profiler).

``python -m bench.mailbox_bench [--quick] [--smoke]`` prints the table; ``python -m bench
mailbox`` runs the ceiling first and writes both to ``bench/results``.  This module must not
be imported by Jarvis itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

#: Client connections used for creation and deposits.
CONNECTIONS = 16
#: Deposits in flight per connection (below the server's MAX_PENDING of 64).
WINDOW = 48
#: Queues collected in the collect phase, each on its own connection.
COLLECT_QUEUES = 8

GOAL_DEPOSITS_PER_S = 5_000.0
GOAL_RSS_MIB = 200.0
GOAL_STALL_MS = 20.0


@dataclass(frozen=True)
class Sizes:
    """How big the run is."""

    queues: int
    deposits: int

    @classmethod
    def choose(cls, quick: bool) -> Sizes:
        from bench.harness import smoke_requested

        if smoke_requested():
            return cls(queues=100, deposits=500)
        if quick:
            return cls(queues=2_000, deposits=20_000)
        return cls(queues=10_000, deposits=60_000)


def rss_mib(pid: int) -> float:
    """Return the resident set size of process *pid* in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process *pid* used so far (all threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    sys.stderr.write(f"mailbox: {message}\n")
    sys.stderr.flush()


async def measure(reactor: Any, sizes: Sizes, root: str) -> dict[str, Any]:
    from twisted.internet import defer

    from jarvis.mailbox.client import connect_mailbox
    from tests.mailboxes import MailboxProcess

    mailbox = MailboxProcess(
        root,
        ["--connection-rate", "100000", *os.environ.get("MAILBOX_ARGS", "").split()],
        twistd_args=os.environ.get("MAILBOX_PROFILE_ARGS", "").split(),
    )
    await mailbox.start()
    try:
        link = mailbox.link()
        clients = [await connect_mailbox(reactor, link) for _ in range(CONNECTIONS)]

        # -- queues
        started = time.perf_counter()

        async def create(client: Any, count: int) -> list[Any]:
            made = []
            for _ in range(0, count, WINDOW):
                n = min(WINDOW, count - len(made))
                made += await defer.gatherResults([client.create_queue() for _ in range(n)])
            return made

        per = sizes.queues // CONNECTIONS
        batches = await defer.gatherResults([defer.ensureDeferred(create(c, per)) for c in clients])
        queues = [q for batch in batches for q in batch]
        create_s = time.perf_counter() - started
        progress(f"{len(queues):,} queues in {create_s:.2f} s")

        # -- deposits
        payload = os.urandom(12_000)
        per_conn = sizes.deposits // CONNECTIONS

        async def deposit(index: int, client: Any) -> None:
            sent = 0
            inflight: list[Any] = []
            while sent < per_conn:
                while len(inflight) < WINDOW and sent < per_conn:
                    q = queues[(index + sent * CONNECTIONS) % len(queues)]
                    inflight.append(client.deposit(q.sender_credential(), payload))
                    sent += 1
                await inflight.pop(0)
            await defer.gatherResults(inflight)

        before = await clients[0].status()
        pid = int(mailbox.transport.pid)
        started, cpu_before, own_before = time.perf_counter(), cpu_seconds(pid), time.process_time()
        await defer.gatherResults(
            [defer.ensureDeferred(deposit(i, c)) for i, c in enumerate(clients)]
        )
        deposit_s = time.perf_counter() - started
        server_cpu = cpu_seconds(pid) - cpu_before
        client_cpu = time.process_time() - own_before
        progress(f"deposit phase CPU: mailbox {server_cpu:.2f} s, clients {client_cpu:.2f} s")
        after = await clients[0].status()
        db_busy_ms = sum(after.get(k, 0) - before.get(k, 0) for k in ("db_run_ms", "db_commit_ms"))
        db_commit_ms = after.get("db_commit_ms", 0) - before.get("db_commit_ms", 0)
        db_batches = after.get("db_batches", 0) - before.get("db_batches", 0)
        deposits = per_conn * CONNECTIONS
        progress(f"{deposits:,} deposits in {deposit_s:.2f} s: {deposits / deposit_s:,.0f}/s")
        rss = rss_mib(int(mailbox.transport.pid))

        # -- collection
        collectors = [await connect_mailbox(reactor, link) for _ in range(COLLECT_QUEUES)]
        started = time.perf_counter()
        got = await defer.gatherResults(
            [
                c.collect(q.recipient_id, q.recipient_key)
                for c, q in zip(collectors, queues, strict=False)
            ]
        )
        collect_s = time.perf_counter() - started
        collected = sum(len(g) for g in got)
        progress(f"{collected:,} collected in {collect_s:.2f} s")
        status = await clients[0].status()
        progress(f"mailbox status: {status}")
        rss = max(rss, rss_mib(int(mailbox.transport.pid)))
        for c in clients + collectors:
            await c.close()
    finally:
        await mailbox.stop()
    return {
        "figures": {
            "queues_created_per_s": {"value": len(queues) / create_s, "unit": "queues/s"},
            "queues": {"value": float(status["queues"]), "unit": "queues"},
            "deposits_per_s": {
                "value": deposits / deposit_s,
                "unit": "deposits/s",
                "goal": GOAL_DEPOSITS_PER_S,
                "ceiling_key": "tls_stream_16k_frames_per_s",
            },
            "mailbox_cpu_per_deposit_us": {
                "value": server_cpu / deposits * 1e6,
                "unit": "µs",
            },
            "client_cpu_per_deposit_us": {
                "value": client_cpu / deposits * 1e6,
                "unit": "µs",
            },
            "db_busy_percent": {
                "value": db_busy_ms / 10.0 / deposit_s,
                "unit": "% of wall",
            },
            "db_commit_percent": {
                "value": db_commit_ms / 10.0 / deposit_s,
                "unit": "% of wall",
            },
            "deposits_per_batch": {
                "value": deposits / db_batches if db_batches else 0.0,
                "unit": "deposits",
            },
            "collect_per_s": {"value": collected / collect_s, "unit": "messages/s"},
            "rss_mib": {"value": rss, "unit": "MiB", "goal": GOAL_RSS_MIB},
            "worst_stall_ms": {
                "value": float(status["lag_ms"]),
                "unit": "ms",
                "goal": GOAL_STALL_MS,
            },
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the benchmark on a fresh reactor; return its figures.

    :returns: ``{"figures": {name: {"value", "unit", "goal"?, "ceiling_key"?}}}``.
    """
    from bench.harness import run_on_reactor

    sizes = Sizes.choose(quick)
    root = tempfile.mkdtemp(prefix="jvmb", dir="/tmp")
    os.chmod(root, 0o700)
    try:
        return run_on_reactor(lambda reactor: measure(reactor, sizes, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("mailbox", run, sys.argv[1:]))
