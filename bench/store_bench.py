"""The store benchmark: how fast :class:`jarvis.store.Store` persists and pages messages.

Measured on a real SQLite file (WAL, ``synchronous=FULL``) in a fresh temporary directory, with
an AES-256-GCM row cipher:

- ``persist_msgs_per_s``: outgoing messages acknowledged as committed per second, issued in
  bursts of :data:`BURST` per reactor turn with a few bursts in flight (the store batches each
  burst into about one transaction);
- ``history_page_ms``: loading the 50 newest messages of a conversation of 100,000 messages
  (10,000 with ``--quick``), median of :data:`PAGE_LOADS` loads;
- ``stall_persist_ms`` and ``stall_history_ms``: the worst reactor stall during each phase,
  measured as the lateness of a 10 ms ``LoopingCall`` (it should stay near zero: the store's
  work runs on its own thread).

``run()`` runs the reactor, so it can be called once per process only (the harness runs each
benchmark in its own process).  ``python -m bench.store_bench [--quick]`` prints the figures as
JSON.  This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Messages issued per reactor turn while persisting.
BURST = 500
#: Bursts in flight at once.
WINDOW = 4
#: How many times the newest page is loaded (the median is reported).
PAGE_LOADS = 20
#: The conversation the messages go to.
CONTACT = "b" * 52


class BenchCipher:
    """AES-256-GCM row sealing with a random nonce, like ``jarvis.crypto.aead.RowCipher``."""

    def __init__(self) -> None:
        self._aead = AESGCM(os.urandom(32))

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt *plaintext* bound to *associated_data*."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, blob: bytes, associated_data: bytes) -> bytes:
        """Decrypt a blob made by :meth:`seal`."""
        return self._aead.decrypt(blob[:12], blob[12:], associated_data)


class StallProbe:
    """The worst lateness of a 10 ms LoopingCall between :meth:`start` and :meth:`stop`."""

    interval = 0.01

    def __init__(self, reactor: Any) -> None:
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._last = 0.0
        self.worst = 0.0

    def _tick(self) -> None:
        now = time.monotonic()
        if self._last:
            self.worst = max(self.worst, now - self._last - self.interval)
        self._last = now

    def start(self) -> None:
        """Start ticking."""
        self._loop.start(self.interval, now=True)

    def stop(self) -> float:
        """Stop ticking and return the worst stall in milliseconds."""
        self._loop.stop()
        return round(self.worst * 1000.0, 3)


def sizes(quick: bool) -> int:
    """Return how many messages the conversation gets (smoke, quick or full run)."""
    from bench.harness import smoke_requested

    if smoke_requested():
        return 500
    return 10_000 if quick else 100_000


async def measure(reactor: Any, count: int) -> dict[str, Any]:
    """Persist *count* messages, then load the newest page; return the harness's figures."""
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.internet.task import deferLater

    from jarvis.store import Message, Store

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
            probe = StallProbe(reactor)
            probe.start()
            started = time.perf_counter()
            for first in range(0, count, BURST):
                now = time.time()
                in_flight.append(
                    gatherResults(
                        [
                            store.add_outgoing(
                                Message(secrets.token_hex(16), CONTACT, "out", body, "queued", now)
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
            stall_persist = probe.stop()
            transactions = store.pool_stats()["transactions"]

            probe = StallProbe(reactor)
            probe.start()
            loads = []
            for _ in range(PAGE_LOADS):
                started = time.perf_counter()
                page = await store.history(CONTACT, limit=50)
                loads.append(time.perf_counter() - started)
                assert len(page.messages) == 50
            stall_history = probe.stop()
        finally:
            await store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "figures": {
            "persist_msgs_per_s": {"value": count / persist_seconds, "unit": "messages/s"},
            "msgs_per_transaction": {"value": count / max(1, transactions), "unit": "messages"},
            "history_page_ms": {
                "value": statistics.median(loads) * 1000.0,
                "unit": f"ms (50 newest of {count:,})",
            },
            "stall_persist_ms": {"value": stall_persist, "unit": "ms"},
            "stall_history_ms": {"value": stall_history, "unit": "ms"},
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the store benchmark on the asyncio reactor and return its figures.

    :param quick: 10,000 messages instead of 100,000.
    :returns: ``{"figures": {name: {"value": float, "unit": str}}}``.
    """
    from twisted.internet import defer

    from jarvis.reactor import install

    reactor = install()
    outcome: list[Any] = []

    def start() -> None:
        finished = defer.ensureDeferred(measure(reactor, sizes(quick)))
        finished.addBoth(outcome.append)
        finished.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        raise RuntimeError("the store benchmark did not finish")
    result = outcome[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return dict(result)


def main(argv: list[str]) -> None:
    """``python -m bench.store_bench [--quick]``: print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 messages, not 100,000")
    options = parser.parse_args(argv)

    from twisted.internet import defer, task

    from jarvis.reactor import install

    install()

    async def measure_and_print(reactor: Any) -> None:
        figures = await measure(reactor, sizes(options.quick))
        print(json.dumps(figures, indent=2))

    task.react(lambda reactor: defer.ensureDeferred(measure_and_print(reactor)))


if __name__ == "__main__":
    main(sys.argv[1:])
