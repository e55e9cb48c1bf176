"""Hash a byte range of an open file a block at a time, through one reused buffer.

Reading a whole chunk (up to 8 MiB) as one ``bytes`` leaves the daemon's heap that much bigger
for good once the allocator has seen such blocks freed (docs/benchmarks.md, "File transfer:
8 MiB chunks"); the offer, a reopened partial file and the final check all hash this way.

Blocks on the file system: run it off the reactor thread.  No reactor import.
"""

from __future__ import annotations

import os
from typing import Any

from jarvis.protocol.transfer import chunk_hasher

#: Bytes read at a time.
HASH_BLOCK = 1024 * 1024


def hash_range(fd: int, start: int, length: int, buffer: bytearray | None = None) -> Any:
    """Return a BLAKE3 chunk hasher fed the bytes *start* to *start* + *length* of *fd* (fewer if
    the file ends before: the caller's hash check then fails).

    :param buffer: a buffer to read into, reused across calls (one of :data:`HASH_BLOCK` bytes
        is made when it is ``None``).
    """
    view = memoryview(buffer if buffer is not None else bytearray(HASH_BLOCK))
    hasher = chunk_hasher()
    pos, end = start, start + length
    while pos < end:
        got = os.preadv(fd, [view[: min(len(view), end - pos)]], pos)
        if got <= 0:
            break
        hasher.update(view[:got])
        pos += got
    return hasher
