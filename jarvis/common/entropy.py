"""Random bytes for public values (nonces, message ids), taken from the OS in blocks.

``os.urandom`` releases the GIL around its system call, so a thread that calls it once per
message gives the GIL away and must win it back each time: while another thread is busy that
can wait for the whole switch interval (5 ms).  The store's thread (one nonce per row) and the
reactor thread (one id per message) did exactly that against each other and ran at half speed.
:func:`public_random` draws :data:`BLOCK` bytes from ``os.urandom`` at a time per thread and
hands them out in slices: the same CSPRNG output, one system call per few hundred values.

Only for values that are public anyway (a nonce is stored next to its ciphertext, a message id
travels with its message): the unused part of a block sits in memory until it is handed out, so
keys and salts keep coming straight from ``os.urandom``.  A forked child drops its parent's
blocks, so parent and child never hand out the same bytes.  Pure code: no reactor, no I/O
beyond ``os.urandom``.
"""

from __future__ import annotations

import os
import threading

#: Bytes drawn from the OS at a time, per thread.
BLOCK = 4096


class _Pool(threading.local):
    """The current block of one thread and how much of it is used."""

    block = b""
    used = 0


_pool = _Pool()


def _forget_blocks() -> None:
    """Drop the blocks inherited from the parent process (runs in a forked child)."""
    global _pool
    _pool = _Pool()


os.register_at_fork(after_in_child=_forget_blocks)


def public_random(size: int) -> bytes:
    """Return *size* random bytes from the OS's CSPRNG, for a nonce or an id.

    :param size: how many bytes (at most :data:`BLOCK`).
    :raises ValueError: if *size* is negative or larger than :data:`BLOCK`.
    """
    if not 0 <= size <= BLOCK:
        raise ValueError(f"public_random gives 0 to {BLOCK} bytes at a time")
    pool = _pool
    start = pool.used
    end = start + size
    if end > len(pool.block):
        pool.block = os.urandom(BLOCK)
        start, end = 0, size
    pool.used = end
    return pool.block[start:end]
