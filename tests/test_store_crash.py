"""Crash safety of :mod:`jarvis.store`: a writer killed with SIGKILL loses nothing it acknowledged.

A child process (:mod:`tests.store_crash_child`) writes messages through a real
:class:`~jarvis.store.Store` and prints each id once its Deferred fired; the test kills it at a
random moment after the first acknowledgement, several rounds on the same database, then checks
the database.  The child is driven by :func:`spawnProcess`, so the reactor is never blocked.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import sqlite3
import sys
import tempfile
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from jarvis.store import Store, queries
from tests.store_crash_child import CONTACTS
from tests.test_store import AESGCMRowCipher

reactor: Any = _reactor

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Kill rounds on the same database.
ROUNDS = 4
#: Messages a child would write if never killed (far more than it gets to).
CHILD_COUNT = 200_000


class ChildWriter(ProcessProtocol):
    """Collects the ids a child acknowledged; fires :attr:`first` and :attr:`ended`."""

    def __init__(self) -> None:
        self.acknowledged: list[str] = []
        self.stderr = b""
        self.first: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        self.acknowledged.extend(line.decode() for line in lines)
        if self.acknowledged and not self.first.called:
            self.first.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        if not self.first.called:
            self.first.errback(
                RuntimeError(f"the child ended before its first write: {self.stderr.decode()}")
            )
        self.reason = reason
        self.ended.callback(None)


def make_child_env() -> dict[str, str]:
    """Return the environment of the child: ours, with the repository on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY, env.get("PYTHONPATH")]))
    return env


class KilledWriterTests(TestCase):
    timeout = 60

    async def run_round(self, path: str, data_key: bytes, index_key: bytes) -> list[str]:
        """Start a child writer, SIGKILL it at a random moment, return what it acknowledged."""
        child = ChildWriter()
        args = [sys.executable, "-m", "tests.store_crash_child", path]
        args += [data_key.hex(), index_key.hex(), str(CHILD_COUNT)]
        transport = reactor.spawnProcess(
            child, sys.executable, args, env=make_child_env(), path=REPOSITORY
        )
        await child.first
        await deferLater(reactor, random.uniform(0.05, 1.0))
        if not child.ended.called:
            transport.signalProcess("KILL")
        await child.ended
        assert child.reason is not None
        if isinstance(child.reason.value, ProcessTerminated):
            self.assertEqual(child.reason.value.signal, 9, child.stderr.decode())
        else:
            self.assertIsInstance(child.reason.value, ProcessDone)
        return child.acknowledged

    async def test_acknowledged_writes_survive_sigkill(self) -> None:
        """When a writer is killed repeatedly, then the database is sound and holds every
        acknowledged message exactly once, with gap-free seqs per conversation."""
        directory = tempfile.mkdtemp(prefix="jarvis-store-crash-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        path = os.path.join(directory, "jarvis.sqlite3")
        data_key, index_key = os.urandom(32), os.urandom(32)
        acknowledged: list[str] = []
        for _ in range(ROUNDS):
            acknowledged += await self.run_round(path, data_key, index_key)
        self.assertGreater(len(acknowledged), ROUNDS)
        self.assertEqual(len(set(acknowledged)), len(acknowledged))

        store = await Store.open(
            path, reactor=reactor, cipher=AESGCMRowCipher(data_key), index_key=index_key
        )
        self.addCleanup(store.close)
        self.assertEqual(await store.run(queries.integrity_check, write=False), ["ok"])
        dump = await store.run(queries.dump, write=False)
        stored = collections.Counter(m["id"] for m in dump["messages"])
        self.assertEqual([i for i in acknowledged if stored[i] != 1], [])
        self.assertEqual([i for i, n in stored.items() if n != 1], [])
        for contact in CONTACTS:
            seqs = [m["seq"] for m in dump["messages"] if m["contact"] == contact]
            self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        await store.close()

        conn = sqlite3.connect(path)
        try:
            self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
        finally:
            conn.close()
