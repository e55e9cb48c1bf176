"""Child process of ``tests/test_store_crash.py``: writes messages through a Store until killed.

Usage: ``python -m tests.store_crash_child DB_PATH DATA_KEY_HEX INDEX_KEY_HEX COUNT`` with the
repository on ``PYTHONPATH``.  Each message id is written to stdout (one line, unbuffered) only
after its Deferred fired, i.e. once the store acknowledged it as committed.  The parent kills
this process with SIGKILL at a random moment; it must never be run by the test suite's runner.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from typing import Any

from jarvis.store import queries

#: Messages issued per reactor turn (then the child waits for all of them).
BURST = 100
#: Conversations the messages are spread over.
CONTACTS = ("c" * 52, "d" * 52, "e" * 52)


def acknowledge(_: Any, message_id: str) -> None:
    """Report one stored message id to the parent."""
    os.write(1, message_id.encode() + b"\n")


async def write_messages(
    reactor: Any, path: str, data_key: bytes, index_key: bytes, count: int
) -> None:
    """Write *count* messages in bursts, acknowledging each on stdout as it is committed."""
    from twisted.internet.defer import Deferred, gatherResults

    from jarvis.store import Store, StoredMessage
    from tests.test_store import AESGCMRowCipher

    store = await Store.open(
        path, reactor=reactor, cipher=AESGCMRowCipher(data_key), index_key=index_key
    )
    written = 0
    while written < count:
        burst: list[Deferred[Any]] = []
        for i in range(BURST):
            message_id = secrets.token_hex(16)
            contact = CONTACTS[(written + i) % len(CONTACTS)]
            if i % 2:
                message = StoredMessage(
                    message_id, contact, "in", f"in {i}", "received", time.time()
                )
                d: Deferred[Any] = store.run(queries.add_incoming, message, write=True)
            else:
                message = StoredMessage(
                    message_id, contact, "out", f"out {i}", "queued", time.time()
                )
                d = store.run(queries.add_outgoing, message, write=True)
            d.addCallback(acknowledge, message_id)
            burst.append(d)
        await gatherResults(burst)
        written += BURST
    await store.close()


def main(argv: list[str]) -> None:
    """Install the asyncio reactor and write messages as told by *argv*."""
    from jarvis.runtime import reactor as jarvis_reactor

    jarvis_reactor.install()
    from twisted.internet import defer, task

    path, data_key, index_key, count = argv
    task.react(
        lambda reactor: defer.ensureDeferred(
            write_messages(
                reactor, path, bytes.fromhex(data_key), bytes.fromhex(index_key), int(count)
            )
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
