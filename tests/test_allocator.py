"""The C allocator's thresholds (:mod:`jarvis.runtime.allocator`) and the daemon's service that
sets them and hands free memory back (:class:`jarvis.app.daemon.AllocatorService`)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from jarvis.app.daemon import AllocatorService
from jarvis.runtime import allocator
from tests.daemons import child_env

#: Allocates and frees 4 MiB and 512 KiB buffers on a thread, as a transfer does, and prints the
#: page faults it took.
WORKLOAD = """
import resource, sys, threading
from jarvis.runtime import allocator
if sys.argv[1] == "tuned":
    allocator.tune()
def work():
    for i in range(40):
        big = bytes([i]) * (4 * 1024 * 1024)
        pieces = [big[j : j + 512 * 1024] for j in range(0, len(big), 512 * 1024)]
        del big
        sealed = [p + b"x" for p in pieces]
        del pieces, sealed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
worker = threading.Thread(target=work)
worker.start()
worker.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


class FakeLibc:
    """Records ``mallopt`` and ``malloc_trim`` calls; answers *result*."""

    def __init__(self, result: int = 1) -> None:
        self.result = result
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append(("mallopt", (parameter, value)))
        return self.result

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", (pad,)))
        return self.result


class TuneTests(SynchronousTestCase):
    """:func:`allocator.tune` and :func:`allocator.release_free_memory`."""

    def test_sets_thresholds_and_one_arena(self) -> None:
        """When the C library is glibc, then tune sets the mmap threshold to 32 MiB, the trim
        threshold to 128 MiB and one heap for all threads, and says so."""
        libc = FakeLibc()
        self.assertTrue(allocator.tune(libc))
        self.assertEqual(
            libc.calls,
            [
                ("mallopt", (allocator.M_MMAP_THRESHOLD, 32 * 1024 * 1024)),
                ("mallopt", (allocator.M_TRIM_THRESHOLD, 128 * 1024 * 1024)),
                ("mallopt", (allocator.M_ARENA_MAX, 1)),
            ],
        )

    def test_refused_value_reported(self) -> None:
        """When glibc refuses a value (mallopt answers 0), then tune says it was not set."""
        self.assertFalse(allocator.tune(FakeLibc(result=0)))

    def test_release_trims_every_heap(self) -> None:
        """When free memory is released, then malloc_trim(0) is called (every heap, no pad)."""
        libc = FakeLibc()
        self.assertTrue(allocator.release_free_memory(libc))
        self.assertEqual(libc.calls, [("malloc_trim", (0,))])

    def test_not_glibc_does_nothing(self) -> None:
        """When the C library is not glibc, then neither call does anything and both say so."""
        self.patch(allocator, "glibc", lambda: None)
        self.assertFalse(allocator.tune())
        self.assertFalse(allocator.release_free_memory())

    def test_tuned_process_reuses_its_pages(self) -> None:
        """When a thread allocates and frees 4 MiB and 512 KiB buffers 40 times, as a transfer
        does, then a process with the thresholds set takes under a tenth of the page faults of
        one with glibc's defaults (each fault is a fresh page the kernel zeroes)."""
        if allocator.glibc() is None:
            raise self.skipTest("the C library is not glibc")
        faults = {}
        for mode in ("plain", "tuned"):
            out = subprocess.run(
                [sys.executable, "-c", WORKLOAD, mode],
                env=child_env(),
                capture_output=True,
                check=True,
                timeout=60,
            )
            faults[mode] = int(out.stdout)
        self.assertLess(faults["tuned"] * 10, faults["plain"], faults)


class AllocatorServiceTests(SynchronousTestCase):
    """The daemon's :class:`AllocatorService`."""

    def test_tunes_then_releases_off_the_reactor_every_interval(self) -> None:
        """When the service starts, then the thresholds are set; every RELEASE_INTERVAL seconds
        free memory is released through run_blocking (one release at a time); after stop,
        nothing more runs."""
        libc = FakeLibc()
        self.patch(allocator, "glibc", lambda: libc)
        clock = task.Clock()
        jobs: list[defer.Deferred[Any]] = []
        ran: list[Any] = []

        def run_blocking(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            jobs.append(d)
            ran.append(f)
            return d.addCallback(lambda _: f(*args))

        service = AllocatorService(clock, run_blocking)
        service.startService()
        self.assertEqual([c for c, _ in libc.calls], ["mallopt"] * 3)
        clock.advance(allocator.RELEASE_INTERVAL - 1)
        self.assertEqual(ran, [])
        clock.advance(1)
        self.assertEqual(ran, [allocator.release_free_memory])
        clock.advance(allocator.RELEASE_INTERVAL)  # the first still runs: not another
        self.assertEqual(len(ran), 1)
        jobs[0].callback(None)
        self.assertEqual(libc.calls[-1], ("malloc_trim", (0,)))
        clock.advance(allocator.RELEASE_INTERVAL)
        self.assertEqual(len(ran), 2)
        jobs[1].callback(None)
        service.stopService()
        clock.advance(allocator.RELEASE_INTERVAL * 3)
        self.assertEqual(len(ran), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_settled_daemon_releases_once_soon(self) -> None:
        """When the daemon says it settled (unlocked) twice, then one release runs
        SETTLE_DELAY seconds after the second call, off the reactor, besides the interval's;
        after stop, a pending one is cancelled; before start, settling does nothing."""
        libc = FakeLibc()
        self.patch(allocator, "glibc", lambda: libc)
        clock = task.Clock()
        ran: list[Any] = []

        def run_blocking(f: Any, *args: Any) -> defer.Deferred[Any]:
            ran.append(f)
            return defer.maybeDeferred(f, *args)

        service = AllocatorService(clock, run_blocking)
        service.settled()
        self.assertEqual(clock.getDelayedCalls(), [])  # not started
        service.startService()
        service.settled()
        clock.advance(allocator.SETTLE_DELAY / 2)
        service.settled()  # moves the release
        clock.advance(allocator.SETTLE_DELAY * 0.75)
        self.assertEqual(ran, [])
        clock.advance(allocator.SETTLE_DELAY * 0.25)
        self.assertEqual(ran, [allocator.release_free_memory])
        self.assertEqual(libc.calls[-1], ("malloc_trim", (0,)))
        clock.advance(allocator.SETTLE_DELAY)
        self.assertEqual(len(ran), 1)  # once per settling
        service.settled()
        service.stopService()
        clock.advance(allocator.RELEASE_INTERVAL * 2)
        self.assertEqual(len(ran), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_not_glibc_no_loop(self) -> None:
        """When the C library is not glibc, then the service starts without a release loop."""
        self.patch(allocator, "glibc", lambda: None)
        clock = task.Clock()
        service = AllocatorService(clock, lambda f, *a: defer.succeed(None))
        service.startService()
        self.assertEqual(clock.getDelayedCalls(), [])
        service.stopService()
