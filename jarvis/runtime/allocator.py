"""The C allocator's thresholds for the daemon's large, short-lived buffers.

A file transfer allocates and frees a few MiB every few milliseconds: 512 KiB sealed pieces,
their TLS records, the receiver's frames. With glibc's defaults, blocks above a moving threshold
are mapped and unmapped one by one, and free memory above 128 KiB at the top of a heap is handed
back to the kernel at once; either way the next buffer touches fresh pages, and the kernel
faults and zeroes each one. On a 1 GiB transfer that was about a seventh of the sending daemon's
CPU (``docs/benchmarks.md``, "The allocator's thresholds").

:func:`tune` keeps blocks up to :data:`MMAP_THRESHOLD` in the heaps and free memory up to
:data:`TRIM_THRESHOLD` mapped, so the same pages serve buffer after buffer, and has the threads
share :data:`ARENAS` heap(s), so that kept memory is not multiplied by the threads;
:func:`release_free_memory` hands what is free back to the kernel (the daemon calls it every
:data:`RELEASE_INTERVAL` seconds off the reactor thread, so an idle daemon shrinks again after
a transfer).  Both are no-ops where the C library is not glibc.

No reactor, no I/O besides the C library's own.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Blocks this large or larger are mapped on their own (glibc's largest allowed value).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of a heap beyond this is handed back at once.
TRIM_THRESHOLD = 128 * 1024 * 1024
#: Heaps ("arenas") the threads share.  glibc gives busy threads heaps of their own (up to 8
#: per core), and with the thresholds above each keeps the most a transfer's jobs ever held
#: on it: one heap for all keeps the sending daemon 5-10 MiB smaller for the same speed (the
#: large buffers are few, so the threads seldom wait for each other's allocations).
ARENAS = 1
#: Seconds between two :func:`release_free_memory` calls in the daemon.
RELEASE_INTERVAL = 60.0
#: Seconds after the identity is unlocked to the first release: unlocking (the key's
#: derivation, loading the store) leaves a few MiB free in the heap that a first transfer would
#: otherwise start on top of (its peak RSS up to 1.5 MiB higher, ``docs/benchmarks.md``); a
#: transfer may start a few seconds after unlocking.
SETTLE_DELAY = 1.0


@functools.cache
def glibc() -> Any:
    """The C library if it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def tune(libc: Any = None) -> bool:
    """Set the thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`) and the number of
    heaps (:data:`ARENAS`).

    :param libc: the C library (default: :func:`glibc`).
    :returns: whether all three were set.
    """
    libc = glibc() if libc is None else libc
    if libc is None:
        return False
    mapped = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trimmed = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    shared = libc.mallopt(M_ARENA_MAX, ARENAS)
    return bool(mapped) and bool(trimmed) and bool(shared)


def release_free_memory(libc: Any = None) -> bool:
    """Hand the heaps' free pages back to the kernel (``malloc_trim(0)``); it walks every heap,
    so call it off the reactor thread.

    :returns: whether any memory was released.
    """
    libc = glibc() if libc is None else libc
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))
