"""Replaying a large outbox on a new session: peak memory growth, longest stall, duration.

A standalone measurement (not in :data:`bench.harness.BENCHMARKS`; it takes one process and a
few seconds): ``python -m bench.outbox_replay [COUNT] [SIZE]`` from the checkout.  The sender is
a real :class:`~jarvis.core.node.Node` with its real store holding COUNT queued messages of
SIZE bytes (10,000 x 8 KiB by default: a 78 MiB outbox); the receiver is a bare
:class:`~jarvis.protocol.session.PeerSession` that acknowledges every message at the end of
each reactor turn, as a node does.  Bytes cross between the two sessions through
``reactor.callLater(0)`` both ways (a transport without back-pressure).  A 5 ms ``LoopingCall``
samples the resident set (``/proc/self/statm``) and the reactor's lateness from the session's
start until the receiver has every message.

Printed: ``rss_growth`` (peak resident set above the one before the session, MiB),
``worst_stall`` (the longest the probe ran late, ms) and ``replay`` (seconds until the receiver
had every message).  This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor, task, threads  # noqa: E402

from jarvis.core.node import Node  # noqa: E402
from jarvis.crypto import linkcode  # noqa: E402
from jarvis.crypto.identity import IdentityKey  # noqa: E402
from jarvis.crypto.keyfile import KdfParams  # noqa: E402
from jarvis.protocol.session import PeerSession  # noqa: E402

CHANNEL_BINDING = b"\xcb" * 32
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident() -> int:
    """This process's resident set, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class AckingReceiver:
    """A session observer that counts messages and acknowledges them once per reactor turn."""

    def __init__(self) -> None:
        self.count = 0
        self.pending: list[bytes] = []
        self.session: PeerSession | None = None

    def session_established(self, session: Any) -> None:
        pass

    def message_received(self, session: Any, message_id: bytes, body: bytes, ms: int) -> None:
        self.count += 1
        if not self.pending:
            reactor.callLater(0, self.flush)  # type: ignore[attr-defined]
        self.pending.append(message_id)

    def flush(self) -> None:
        ids, self.pending = self.pending, []
        assert self.session is not None
        self.session.send_ack(ids)

    def acks_received(self, session: Any, ids: Any) -> None:
        pass

    def reads_received(self, session: Any, ids: Any) -> None:
        pass

    def session_closed(self, session: Any, reason: str) -> None:
        pass


async def measure(count: int, size: int) -> dict[str, float]:
    """Queue *count* messages of *size* bytes, start a session, measure until all arrived."""
    data_dir = tempfile.mkdtemp(prefix="jarvis-outbox-")
    node = Node(
        clock=reactor,  # type: ignore[arg-type]
        data_dir=data_dir,
        run_blocking=threads.deferToThread,
        network_factory=None,
        now=time.time,
        kdf_params=KdfParams(time_cost=1, memory_cost_kib=8, parallelism=1),
    )
    node.startService()
    await node.create_identity("Alice", "benchmark")
    bob = IdentityKey.generate()
    card = linkcode.make_card(bob, "Bob", ("127.0.0.1:1",), int(time.time()))
    await node.add_contact(link=linkcode.encode_link(card))
    text = "x" * size
    for start in range(0, count, 1000):
        batch = min(1000, count - start)
        await defer.gatherResults([node.send_message("Bob", text) for _ in range(batch)])
    alice = node._keys.identity  # type: ignore[union-attr]  # the node's own key, for its session
    receiver = AckingReceiver()

    def deliver(target: PeerSession, data: bytes) -> None:
        reactor.callLater(0, target.data_received, data)  # type: ignore[attr-defined]

    sender: PeerSession = PeerSession(
        local_uid=alice.uid,
        sign=alice.sign,
        peer_uid=bob.uid,
        peer_public_key=bob.public_bytes,
        initiator=True,
        clock=reactor,  # type: ignore[arg-type]
        send_bytes=lambda data: deliver(peer, data),
        lose_connection=lambda: None,
        observer=node,  # type: ignore[arg-type]
        resume_mark=node.resume_mark,
    )
    peer: PeerSession = PeerSession(
        local_uid=bob.uid,
        sign=bob.sign,
        peer_uid=alice.uid,
        peer_public_key=alice.public_bytes,
        initiator=False,
        clock=reactor,  # type: ignore[arg-type]
        send_bytes=lambda data: deliver(sender, data),
        lose_connection=lambda: None,
        observer=receiver,  # type: ignore[arg-type]
    )
    receiver.session = peer
    base = peak = resident()
    worst = 0.0
    last = time.monotonic()

    def probe() -> None:
        nonlocal peak, worst, last
        now = time.monotonic()
        worst = max(worst, now - last - 0.005)
        last = now
        peak = max(peak, resident())

    sampler = task.LoopingCall(probe)
    sampler.start(0.005)
    started = time.monotonic()
    sender.connection_made(CHANNEL_BINDING)
    peer.connection_made(CHANNEL_BINDING)
    while receiver.count < count:
        await task.deferLater(reactor, 0.01, lambda: None)
    elapsed = time.monotonic() - started
    sampler.stop()
    sender.close("done")
    await node.stopService()
    return {
        "rss_growth_mib": (peak - base) / 2**20,
        "worst_stall_ms": worst * 1000,
        "replay_s": elapsed,
    }


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 8192

    async def run(_reactor: Any) -> None:
        figures = await measure(count, size)
        print(
            f"outbox {count} x {size} B ({count * size / 2**20:.0f} MiB): "
            f"rss_growth {figures['rss_growth_mib']:.0f} MiB, "
            f"worst_stall {figures['worst_stall_ms']:.0f} ms, "
            f"replay {figures['replay_s']:.1f} s"
        )

    task.react(lambda r: defer.ensureDeferred(run(r)))


if __name__ == "__main__":
    main()
