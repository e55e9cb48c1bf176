"""File transfer benchmark: chunk crypto against the same run's AES-GCM ceiling, and a file
sent over loopback TCP to a receiver in another process, next to a plain Twisted TCP copy.

Figures:

- ``cascade_seal_open_mib_per_s``: 1 MiB chunks sealed and opened by the five-layer cascade
  (:class:`jarvis.crypto.transfer_keys.ChunkCipher`), one thread; next to
  ``aesgcm_seal_open_mib_per_s``, one AES-256-GCM layer sealing and opening the same chunks in
  the same run (the ceiling of any AEAD in ``cryptography``), and their ratio;
- ``sha256_mib_per_s``: ``hashlib.sha256`` of 1 MiB inputs (chunk and whole-file hashing);
- ``loopback_mib_per_s``: a file (256 MiB; 64 with ``--quick``) sent by :class:`TransferSender`
  in this process to :class:`TransferReceiver` in a child process over 127.0.0.1, from connect
  to the receiver's ``Complete`` (its final whole-file check included); CPU seconds per GiB and
  peak RSS of each side; next to ``tcp_copy_mib_per_s``, the same number of bytes pushed through
  plain Twisted TCP (1 MiB writes, a producer) to a child that discards them.

``python -m bench.transfer_bench [--quick] [--smoke] [--json-out FILE]`` runs it alone;
``python -m bench transfer`` runs it with the ceiling.  The child is this module with
``--child``.  Not reactor code: it blocks on the child process freely.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

MIB = 1024 * 1024
CHUNK = MIB


def sizes(quick: bool) -> tuple[int, int]:
    """Return (chunks for the crypto figures, bytes of the loopback file)."""
    from bench.harness import smoke_requested

    if smoke_requested():
        return 4, 4 * MIB
    return (64, 64 * MIB) if quick else (256, 256 * MIB)


def crypto_figures(chunks: int) -> dict[str, float]:
    """Measure the cascade, one AES-GCM layer and SHA-256 on 1 MiB chunks, best of three."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from jarvis.crypto.transfer_keys import ChunkCipher

    data = os.urandom(CHUNK)
    cipher = ChunkCipher.for_connection(os.urandom(32), os.urandom(16), os.urandom(16))
    aes = AESGCM(os.urandom(32))

    def cascade() -> None:
        for i in range(chunks):
            cipher.open(i, cipher.seal(i, data))

    def aesgcm() -> None:
        for i in range(chunks):
            nonce = i.to_bytes(12, "big")
            aes.decrypt(nonce, aes.encrypt(nonce, data, b"ad"), b"ad")

    def sha256() -> None:
        for _ in range(chunks):
            hashlib.sha256(data).digest()

    out = {}
    for name, fn in (("cascade", cascade), ("aesgcm", aesgcm), ("sha256", sha256)):
        best = min(_timed(fn) for _ in range(3))
        out[name] = chunks / best
    return out


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _usage() -> tuple[float, float]:
    """Return (CPU seconds, peak RSS in MiB) of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _spawn_child(*args: str) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.transfer_bench", "--child", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def _child_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the receiving child failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def loopback_figures(reactor: Any, size: int) -> dict[str, float]:
    """Send a *size*-byte file to a child receiver, then copy as many bytes over plain TCP."""
    from twisted.internet import defer, endpoints
    from twisted.internet.threads import deferToThread

    from jarvis.files.send import FileSource, make_offer
    from jarvis.net.transfer import TransferSender
    from jarvis.protocol.transfer import encode_transfer_record

    work = tempfile.mkdtemp(prefix="jvxfer", dir="/tmp")
    source_path = os.path.join(work, "source.bin")
    with open(source_path, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
    receive_dir = os.path.join(work, "in")
    os.mkdir(receive_dir)
    try:
        prepared = await deferToThread(make_offer, source_path, chunk_size=CHUNK)
        offer_hex = encode_transfer_record(prepared.offer).hex()
        proc, port = _spawn_child("receive", receive_dir, offer_hex)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)

        class Done:
            def __init__(self) -> None:
                self.d: defer.Deferred[str] = defer.Deferred()

            def stream_opened(self) -> None:
                pass

            def bytes_done(self, done: int) -> None:
                pass

            def stream_completed(self, final_path: str | None) -> None:
                self.d.callback("completed")

            def stream_ended(self, reason: str, resumable: bool) -> None:
                if not self.d.called:
                    self.d.errback(RuntimeError(reason))

        done = Done()
        source = FileSource(prepared)
        cpu_before, _ = _usage()
        started = time.perf_counter()
        await endpoints.connectProtocol(endpoint, TransferSender(source, done))
        await done.d
        seconds = time.perf_counter() - started
        cpu_after, sender_rss = _usage()
        source.close()
        child = _child_result(proc)
        received = os.path.join(receive_dir, "source.bin")
        same = await deferToThread(_same_file, source_path, received)
        if not same:
            raise RuntimeError("the received file differs")

        proc, port = _spawn_child("sink", str(size))
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        copier, copied = _copier(size)
        started = time.perf_counter()
        await endpoints.connectProtocol(endpoint, copier)
        await copied
        tcp_seconds = time.perf_counter() - started
        _child_result(proc)
    finally:
        for root, dirs, files in os.walk(work, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                os.rmdir(os.path.join(root, name))
        os.rmdir(work)
    gib = size / (1024 * MIB)
    return {
        "loopback_mib_per_s": size / MIB / seconds,
        "tcp_copy_mib_per_s": size / MIB / tcp_seconds,
        "sender_cpu_s_per_gib": (cpu_after - cpu_before) / gib,
        "receiver_cpu_s_per_gib": child["cpu_s"] / gib,
        "sender_peak_rss_mib": sender_rss,
        "receiver_peak_rss_mib": child["rss_mib"],
    }


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            if x != y:
                return False
            if not x:
                return True


def _copier(size: int) -> tuple[Any, Any]:
    """Return a protocol pushing *size* bytes in 1 MiB writes as a streaming producer, and a
    Deferred fired when the sink says it has them all."""
    from twisted.internet import defer, protocol
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    finished: defer.Deferred[None] = defer.Deferred()
    block = os.urandom(MIB)

    @implementer(IPushProducer)
    class Copier(protocol.Protocol):
        left = size
        paused = False

        def connectionMade(self) -> None:
            transport: Any = self.transport
            transport.registerProducer(self, True)
            self.resumeProducing()

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            while not self.paused and self.left > 0:
                transport: Any = self.transport
                transport.write(block)
                self.left -= MIB

        def stopProducing(self) -> None:
            self.left = 0

        def dataReceived(self, data: bytes) -> None:
            transport: Any = self.transport
            transport.loseConnection()
            finished.callback(None)

    return Copier(), finished


async def measure(reactor: Any, quick: bool) -> dict[str, Any]:
    """Run every part and return the harness's figures."""
    chunks, size = sizes(quick)
    crypto = crypto_figures(chunks)
    loop = await loopback_figures(reactor, size)
    return {
        "figures": {
            "cascade_seal_open_mib_per_s": {"value": crypto["cascade"], "unit": "MiB/s"},
            "aesgcm_seal_open_mib_per_s": {"value": crypto["aesgcm"], "unit": "MiB/s"},
            "cascade_vs_aesgcm": {"value": crypto["cascade"] / crypto["aesgcm"], "unit": "ratio"},
            "sha256_mib_per_s": {"value": crypto["sha256"], "unit": "MiB/s"},
            "loopback_mib_per_s": {
                "value": loop["loopback_mib_per_s"],
                "unit": f"MiB/s ({size // MIB} MiB)",
                "goal": 200.0,
            },
            "tcp_copy_mib_per_s": {"value": loop["tcp_copy_mib_per_s"], "unit": "MiB/s"},
            "loopback_vs_tcp_copy": {
                "value": loop["loopback_mib_per_s"] / loop["tcp_copy_mib_per_s"],
                "unit": "ratio",
                "goal": 0.7,
            },
            "sender_cpu_s_per_gib": {"value": loop["sender_cpu_s_per_gib"], "unit": "CPU s/GiB"},
            "receiver_cpu_s_per_gib": {
                "value": loop["receiver_cpu_s_per_gib"],
                "unit": "CPU s/GiB",
            },
            "sender_peak_rss_mib": {"value": loop["sender_peak_rss_mib"], "unit": "MiB"},
            "receiver_peak_rss_mib": {"value": loop["receiver_peak_rss_mib"], "unit": "MiB"},
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the transfer benchmark on the asyncio reactor and return its figures."""
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, quick)))


# -- the child: a receiver (or a plain sink) on 127.0.0.1 -------------------------------------


def child(argv: list[str]) -> int:
    """Listen on 127.0.0.1, print the port, receive, print a JSON line of usage, exit."""
    from jarvis.runtime.reactor import install

    reactor: Any = install()
    from twisted.internet import protocol

    mode = argv[0]
    result: dict[str, Any] = {}

    def finish(outcome: str) -> None:
        cpu, rss = _usage()
        result.update(outcome=outcome, cpu_s=cpu - cpu_start, rss_mib=rss)
        reactor.callLater(0, reactor.stop)

    if mode == "receive":
        from jarvis.files.receive import PartialFile
        from jarvis.net.transfer import TransferReceiver
        from jarvis.protocol.transfer import Offer, parse_transfer_record

        directory, offer_hex = argv[1], argv[2]
        offer = parse_transfer_record(bytes.fromhex(offer_hex))
        assert isinstance(offer, Offer)
        partial = PartialFile.create(directory, offer)

        class Observer:
            def stream_opened(self) -> None:
                pass

            def bytes_done(self, done: int) -> None:
                pass

            def stream_completed(self, final_path: str | None) -> None:
                finish("completed")

            def stream_ended(self, reason: str, resumable: bool) -> None:
                finish(f"ended: {reason}")

        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: TransferReceiver(partial, Observer())  # type: ignore[method-assign]
    else:
        total = int(argv[1])

        class Sink(protocol.Protocol):
            got = 0

            def dataReceived(self, data: bytes) -> None:
                self.got += len(data)
                if self.got >= total:
                    transport: Any = self.transport
                    transport.write(b"!")
                    finish("completed")

        factory = protocol.Factory.forProtocol(Sink)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    cpu_start, _ = _usage()
    print(port.getHost().port, flush=True)
    reactor.run()
    print(json.dumps(result), flush=True)
    return 0 if result.get("outcome") == "completed" else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2:]))
    from bench.harness import run_standalone

    sys.exit(run_standalone("transfer", run, sys.argv[1:]))
