"""kill -9 of a receiving process in the middle of a file, then resume from its files on disk.

The child (``tests/transfer_crash_child.py``) receives over real loopback TCP and reports each
verified byte count; the test kills it with SIGKILL once it holds half the file, reopens the
partial file from disk in this process and finishes the transfer on a new connection.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from typing import Any

from twisted.internet import defer, endpoints, protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from jarvis.files.receive import PartialFile
from jarvis.files.send import FileSource, make_offer
from jarvis.net.transfer import DEFAULT_WINDOW, TransferReceiver, TransferSender
from jarvis.protocol.transfer import encode_transfer_record
from tests.daemons import REPO, short_tempdir
from tests.test_net_transfer import Recorder, file_sha256

MIB = 1024 * 1024


class ChildReceiver(protocol.ProcessProtocol):
    """Reads the child's port and ``held N`` lines; kills it once it holds *kill_at* bytes."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at
        self.port: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.last_held = 0
        self.killed = False
        self.early_end = ""
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not self.port.called:
                self.port.callback(int(line))
            elif line.startswith(b"ended ") and not self.killed:
                # The connection ended before the kill: say why rather than wait for ever.
                self.early_end = line.decode(errors="replace")
                os.kill(self.transport.pid, signal.SIGKILL)  # type: ignore[union-attr]
            elif line.startswith(b"held ") and not self.killed:
                self.last_held = int(line.split()[1])
                if self.last_held >= self.kill_at:
                    self.killed = True
                    os.kill(self.transport.pid, signal.SIGKILL)  # type: ignore[union-attr]

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class ReceiverKilledTests(TestCase):
    timeout = 120

    async def test_kill_9_receiver_then_resume(self) -> None:
        """When the receiving process is killed with SIGKILL at half a 32 MiB file, then after
        reopening its partial file it holds at least every chunk it had reported (at most one
        window more), the new connection sends only the rest, and the file is byte-identical."""
        from twisted.internet import reactor

        size, chunk = 32 * MIB, MIB
        source_dir, directory = short_tempdir(self), short_tempdir(self)
        path = os.path.join(source_dir, "big.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        prepared = await deferToThread(make_offer, path, chunk_size=chunk)
        offer = prepared.offer
        child = ChildReceiver(kill_at=size // 2)
        env = dict(os.environ, PYTHONPATH=REPO)
        reactor.spawnProcess(  # type: ignore[attr-defined]
            child,
            sys.executable,
            [
                sys.executable,
                "-m",
                "tests.transfer_crash_child",
                directory,
                encode_transfer_record(offer).hex(),
            ],
            env=env,
            path=REPO,
        )
        port = await child.port
        source = FileSource(prepared)
        self.addCleanup(source.close)
        first = TransferSender(source, Recorder())
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        await endpoints.connectProtocol(endpoint, first)
        await child.ended
        await first.when_settled()
        self.assertEqual(child.early_end, "")
        self.assertTrue(child.killed)

        partial = await deferToThread(PartialFile.reopen, directory, offer)
        held = partial.held_bytes
        self.assertGreaterEqual(partial.written_bytes, child.last_held)
        self.assertLessEqual(partial.written_bytes, child.last_held + DEFAULT_WINDOW * chunk)
        self.assertLess(held, size)

        recorder = Recorder()
        receivers: list[TransferReceiver] = []

        def build(addr: Any) -> TransferReceiver:
            receivers.append(TransferReceiver(partial, recorder))
            return receivers[-1]

        factory = protocol.Factory()
        factory.buildProtocol = build  # type: ignore[method-assign]
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        second = TransferSender(source, Recorder())
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port)
        await endpoints.connectProtocol(endpoint, second)
        kind, final = await recorder.finished
        self.assertEqual(kind, "completed")
        await receivers[0].when_settled()
        self.assertEqual(second.chunks_sent, offer.chunks - held // chunk)
        with open(path, "rb") as f:
            expected = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(await deferToThread(file_sha256, final), expected)
        self.assertEqual(sorted(os.listdir(directory)), ["big.bin"])
