"""The store benchmark: how fast :class:`jarvis.store.Store` persists and pages messages.

Measured on a real SQLite file (WAL, ``synchronous=FULL``) in a fresh temporary directory, with
an AES-256-GCM row cipher:

- ``persist_msgs_per_s``: outgoing messages acknowledged as committed per second, issued in
  bursts of :data:`BURST` per reactor turn (about what one 64 KiB read of API requests brings)
  with :data:`WINDOW` bursts in flight; the store takes what queued up while its previous
  transaction ran into one transaction (``msgs_per_transaction``).  Ids are made as the daemon
  makes them (:func:`jarvis.store.records.new_message_id`), and the process freezes its
  start-up objects out of the garbage collector's full passes before it starts, as the daemon
  does (``jarvis.app.daemon``);
- ``history_page_ms``: loading the 50 newest messages of a conversation of 100,000 messages
  (10,000 with ``--quick``), median of :data:`PAGE_LOADS` loads;
- ``unlock_ms``: opening a key file made at the default Argon2id parameters (t=3, 64 MiB,
  p=1) with :func:`jarvis.crypto.keyfile.unlock_keyfile` on a thread (``deferToThread``), as
  the daemon does, median of 10 unlocks (3 with ``--quick``);
- ``stall_persist_ms``, ``stall_history_ms`` and ``stall_unlock_ms``: the worst reactor stall
  during each phase, measured by a :class:`jarvis.runtime.lag.ReactorLagProbe` ticking every 10 ms
  (it
  should stay near zero: the store's work and Argon2id run on other threads).

Goals (``goal`` in the figures): at least 20,000 messages/s persisted, a page load of at most
20 ms and stalls of at most 20 ms.

``run()`` runs the reactor, so it can be called once per process only (the harness runs each
benchmark in its own process).  ``python -m bench.store_bench [--quick] [--smoke]`` prints the
table.  This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import collections
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jarvis.common.entropy import public_random
from jarvis.store import queries

#: Messages issued per reactor turn while persisting.
BURST = 100
#: Bursts in flight at once.
WINDOW = 20
#: How many times the newest page is loaded (the median is reported).
PAGE_LOADS = 20
#: The conversation the messages go to.
CONTACT = "b" * 52

#: Goals (docs/benchmarks.md): messages persisted per second (at least), newest page load and
#: worst reactor stall (at most, milliseconds).
GOAL_PERSIST_PER_S = 20_000.0
GOAL_PAGE_MS = 20.0
GOAL_STALL_MS = 20.0


class BenchCipher:
    """AES-256-GCM row sealing with a random nonce, as ``jarvis.crypto.aead.RowCipher`` does."""

    def __init__(self) -> None:
        self._aead = AESGCM(os.urandom(32))

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt *plaintext* bound to *associated_data*."""
        nonce = public_random(12)
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, blob: bytes, associated_data: bytes) -> bytes:
        """Decrypt a blob made by :meth:`seal`."""
        return self._aead.decrypt(blob[:12], blob[12:], associated_data)


def start_probe(reactor: Any) -> Any:
    """Start and return a :class:`jarvis.runtime.lag.ReactorLagProbe` ticking every 10 ms."""
    from jarvis.runtime.lag import ReactorLagProbe

    probe = ReactorLagProbe(reactor, interval=0.01)
    probe.start()
    return probe


def stop_probe(probe: Any) -> float:
    """Stop *probe* and return the worst stall it saw, in milliseconds."""
    probe.stop()
    return round(probe.worst() * 1000.0, 3)


def unlock_rounds(quick: bool) -> int:
    """Return how many times the key file is unlocked (the median time is reported)."""
    from bench.harness import smoke_requested

    if smoke_requested():
        return 1
    return 3 if quick else 10


async def measure_unlock(reactor: Any, rounds: int) -> tuple[float, float]:
    """Unlock a key file made at the default Argon2id parameters *rounds* times, on a thread.

    :returns: the median unlock time and the worst reactor stall during the unlocks, both in ms.
    """
    from twisted.internet.threads import deferToThread

    from jarvis.crypto.keyfile import DEFAULT_PARAMS, create_keyfile, unlock_keyfile

    password = "correct horse battery staple"
    content, _keys = await deferToThread(create_keyfile, "bench", password, params=DEFAULT_PARAMS)
    times = []
    probe = start_probe(reactor)
    for _ in range(rounds):
        started = time.perf_counter()
        await deferToThread(unlock_keyfile, content, password)
        times.append(time.perf_counter() - started)
    stall = stop_probe(probe)
    return statistics.median(times) * 1000.0, stall


def sizes(quick: bool) -> int:
    """Return how many messages the conversation gets (smoke, quick or full run)."""
    from bench.harness import smoke_requested

    if smoke_requested():
        return 500
    return 10_000 if quick else 100_000


async def measure(reactor: Any, count: int, rounds: int) -> dict[str, Any]:
    """Persist *count* messages, load the newest page, unlock a key file *rounds* times.

    :returns: the harness's figures.
    """
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.task import deferLater

    from jarvis.store import Store, StoredMessage
    from jarvis.store.records import new_message_id

    # As the daemon's startService does: what start-up built lives as long as the process.
    gc.collect()
    gc.freeze()
    directory = tempfile.mkdtemp(prefix="jarvis-store-bench-")
    try:
        store = await Store.open(
            os.path.join(directory, "bench.sqlite3"),
            reactor=reactor,
            cipher=BenchCipher(),
            index_key=os.urandom(32),
        )
        try:
            body = "x" * 120
            in_flight: collections.deque[Deferred[Any]] = collections.deque()
            probe = start_probe(reactor)
            started = time.perf_counter()
            for first in range(0, count, BURST):
                now = time.time()
                in_flight.append(
                    gatherResults(
                        [
                            store.run(
                                queries.add_outgoing,
                                StoredMessage(
                                    new_message_id(now), CONTACT, "out", body, "queued", now
                                ),
                                write=True,
                            )
                            for _ in range(min(BURST, count - first))
                        ]
                    )
                )
                if len(in_flight) >= WINDOW:
                    await in_flight.popleft()
                else:
                    await deferLater(reactor, 0)
            while in_flight:
                await in_flight.popleft()
            persist_seconds = time.perf_counter() - started
            stall_persist = stop_probe(probe)
            transactions = store.pool_stats()["transactions"]

            probe = start_probe(reactor)
            loads = []
            for _ in range(PAGE_LOADS):
                started = time.perf_counter()
                page = await store.run(queries.history, CONTACT, limit=50, write=False)
                loads.append(time.perf_counter() - started)
                assert len(page.messages) == 50
            stall_history = stop_probe(probe)
        finally:
            await store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    unlock_ms, stall_unlock = await measure_unlock(reactor, rounds)
    return {
        "figures": {
            "persist_msgs_per_s": {
                "value": count / persist_seconds,
                "unit": "messages/s",
                "goal": GOAL_PERSIST_PER_S,
            },
            "msgs_per_transaction": {"value": count / max(1, transactions), "unit": "messages"},
            "history_page_ms": {
                "value": statistics.median(loads) * 1000.0,
                "unit": f"ms (50 newest of {count:,})",
                "goal": GOAL_PAGE_MS,
            },
            "stall_persist_ms": {"value": stall_persist, "unit": "ms", "goal": GOAL_STALL_MS},
            "stall_history_ms": {"value": stall_history, "unit": "ms", "goal": GOAL_STALL_MS},
            "unlock_ms": {"value": unlock_ms, "unit": "ms (Argon2id t=3, 64 MiB, p=1)"},
            "stall_unlock_ms": {"value": stall_unlock, "unit": "ms", "goal": GOAL_STALL_MS},
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the store benchmark on the asyncio reactor and return its figures.

    :param quick: 10,000 messages instead of 100,000.
    :returns: ``{"figures": {name: {"value": float, "unit": str}}}``.
    """
    from bench.harness import run_on_reactor

    return dict(
        run_on_reactor(lambda reactor: measure(reactor, sizes(quick), unlock_rounds(quick)))
    )


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("store", run, sys.argv[1:]))
