"""The messaging benchmark: two real daemons on loopback, driven through the real local API.

Two ``twistd -n jarvis`` processes (started as ``tests/daemons.py`` starts them: the checkout on
``PYTHONPATH``, a private data directory, the peer listener on ``127.0.0.1`` port 0, the local
API on a short UNIX socket) create their identities with ``identity.create``, exchange link
codes with ``contacts.add`` and wait until each sees the other online.  Each API connection
subscribes only to the events this process waits for (``events.subscribe`` with ``events``), as
a script would: the sender's to ``message.stateChanged``, the receiver's to none while
measuring throughput and to ``message.received`` while measuring latency.  Then:

- ``throughput_msgs_per_s``: the sender issues ``messages.send`` with 200-byte texts, keeping
  :data:`WINDOW` calls in flight, until every message is *delivered*: the receiver stored it and
  acknowledged it, and the sender stored that state and announced it as
  ``message.stateChanged`` (``delivered``).  2,000 messages with ``--quick``, 20,000 in full.
  Compared with the ceiling's ``tls_rtt_100conn_per_s``: every message is answered by an ack,
  many are in flight, so a raw TLS echo with many frames in flight is the closest raw figure
  (one-way ``tls_stream_200b_frames_per_s`` is another two orders of magnitude higher).
- ``latency_p50_us`` / ``latency_p99_us``: one message at a time, from the sender's
  ``messages.send`` call to the receiver's ``message.received`` event (both seen by this
  process through the two API connections); the next message goes once the previous one is
  delivered.  100 samples with ``--quick``, 1,000 in full.  Compared with the ceiling's
  ``tls_rtt_1conn_p50_us`` / ``_p99_us`` (a round trip over TLS; a message crosses two API
  hops, the cascade, the store on both sides and one TLS hop).
- ``sender_lag_worst_ms`` / ``receiver_lag_worst_ms``: each daemon's ``lag.worst_ms`` from
  ``daemon.status`` after the run (the worst reactor stall since the daemon started).

Goals: at least 5,000 messages/s, p50 at most 5 ms, p99 at most 20 ms.  This process, both
daemons and their store threads share the machine's cores.

``run()`` runs the reactor, so it can be called once per process (the harness runs each
benchmark in its own process).  ``python -m bench.messaging_bench [--quick] [--smoke]`` prints
the table.  This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from bench.harness import percentile
from tests.waiting import Waiters

#: Password of the benchmark identities (never a real one).
PASSWORD = "correct horse battery staple"
#: ``messages.send`` calls kept in flight while measuring throughput.
WINDOW = 200
#: Bytes of each message text.
BODY_BYTES = 200
#: The events the clients wait for while the daemons start and befriend.
START_EVENTS = ("identity.unlocked", "connection.summary")

GOAL_THROUGHPUT = 5_000.0
GOAL_P50_US = 5_000.0
GOAL_P99_US = 20_000.0


@dataclass(frozen=True)
class Sizes:
    """How much to measure: messages for throughput, samples for latency."""

    messages: int
    samples: int

    @classmethod
    def choose(cls, quick: bool) -> Sizes:
        """Return the sizes for a full, ``--quick`` or ``--smoke`` run."""
        from bench.harness import smoke_requested

        if smoke_requested():
            return cls(messages=200, samples=20)
        if quick:
            return cls(messages=2_000, samples=100)
        return cls(messages=20_000, samples=1_000)


class EventWaiters(Waiters):
    """An event handler for one API connection that fires Deferreds when conditions hold.

    Every event goes to the hooks in :attr:`hooks` (name -> callables), then the waiters'
    predicates are checked.  Unlike a recorder it keeps no history, so long runs stay linear.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.hooks: dict[str, list[Callable[[dict[str, Any]], object]]] = {}

    def __call__(self, name: str, payload: dict[str, Any]) -> None:
        for hook in self.hooks.get(name, ()):
            hook(payload)
        self.check()

    def on(self, name: str, hook: Callable[[dict[str, Any]], object]) -> None:
        """Call *hook(payload)* for every event called *name*."""
        self.hooks.setdefault(name, []).append(hook)


class BenchDaemon:
    """One ``twistd -n jarvis`` child (:class:`tests.daemons.DaemonProcess`) and an API client.

    :param reactor: the running reactor.
    :param root: a short private directory under ``/tmp`` holding everything of the daemon.
    :param name: the daemon's name (display name and directory names).
    """

    def __init__(self, reactor: Any, root: str, name: str) -> None:
        from tests.daemons import DaemonProcess

        self.reactor = reactor
        self.name = name
        self.data_dir = os.path.join(root, name)
        sock_dir = os.path.join(root, f"s{name[:3]}")
        os.makedirs(sock_dir, mode=0o700, exist_ok=True)
        self.password_file = os.path.join(root, f"{name}.pw")
        with open(self.password_file, "w", encoding="utf-8") as f:
            f.write(PASSWORD + "\n")
        self.process = DaemonProcess(self.data_dir, sock_dir)
        self.client: Any = None
        self.events = EventWaiters(reactor)
        self.uid = ""
        self.link = ""

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return int(self.process.transport.pid)

    async def start(self, *, create: bool = False, unlock: bool = False) -> None:
        """Start the daemon, attach a subscribed client, create or wait for the identity."""
        from jarvis.ipc.client import IpcClient

        if unlock and self.password_file not in self.process.extra:
            self.process.extra = [*self.process.extra, "--password-file", self.password_file]
        await self.process.start()
        self.drop_output()
        self.client = await IpcClient.connect(self.reactor, self.process.endpoint)
        await self.client.subscribe(self.events)
        await self.listen(*START_EVENTS)
        if create:
            await self.call("identity.create", name=self.name, password=PASSWORD)
        if unlock:
            await self.wait_unlocked()
        me = await self.call("identity.show")
        self.uid, self.link = me["uid"], me["link"]

    async def listen(self, *names: str) -> None:
        """Receive only the events called *names* from now on (``events.subscribe``)."""
        await self.call("events.subscribe", events=list(names))

    def drop_output(self) -> None:
        """Forget the daemon's output so far (it is only searched at start-up)."""
        self.process.output = b""

    async def wait_unlocked(self, timeout: float = 60.0) -> None:
        """Return once ``daemon.status`` says the identity is unlocked."""
        unlocked = [False]
        self.events.on("identity.unlocked", lambda payload: unlocked.__setitem__(0, True))
        deadline = time.monotonic() + timeout
        if not (await self.call("daemon.status"))["locked"]:
            return
        while True:
            await self.events.wait(lambda: unlocked[0], 1.0).addErrback(lambda f: None)
            if not (await self.call("daemon.status"))["locked"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not unlock in {timeout:g} s")

    def call(self, method: str, **params: Any) -> Any:
        """Call an API method; fire with its result."""
        return self.client.call(method, params)

    def peer_port(self) -> int:
        """The TCP port this daemon listens on for peers (from its link code)."""
        from jarvis.crypto.linkcode import decode_link

        return int(decode_link(self.link).addresses[0].rsplit(":", 1)[1])

    async def stop(self) -> None:
        """Close the client and SIGTERM the daemon; return once it exited."""
        if self.client is not None and self.client.connected:
            await self.client.close()
        self.client = None
        self.events = EventWaiters(self.reactor)
        await self.process.stop()

    async def cleanup(self) -> None:
        """Close the client and kill the daemon if it still runs."""
        if self.client is not None and self.client.connected:
            await self.client.close()
        self.client = None
        await self.process.cleanup()


def wait_online(reactor: Any, daemon: BenchDaemon, count: int, timeout: float) -> Any:
    """Return a Deferred firing once *daemon* reports *count* contacts online.

    Watches ``connection.summary`` events and confirms with ``peers.status``.
    """
    from twisted.internet import defer

    latest = [-1]
    daemon.events.on("connection.summary", lambda p: latest.__setitem__(0, int(p["online"])))

    async def wait() -> None:
        status = await daemon.call("peers.status")
        latest[0] = max(latest[0], int(status["online"]))
        deadline = time.monotonic() + timeout
        while True:
            await daemon.events.wait(
                lambda: latest[0] >= count, max(0.1, deadline - time.monotonic())
            )
            status = await daemon.call("peers.status")
            if int(status["online"]) >= count:
                return
            latest[0] = int(status["online"])

    return defer.ensureDeferred(wait())


async def befriend(reactor: Any, a: BenchDaemon, b: BenchDaemon) -> None:
    """Exchange link codes both ways and wait until both see each other online."""
    from twisted.internet import defer

    online = defer.gatherResults([wait_online(reactor, a, 1, 60), wait_online(reactor, b, 1, 60)])
    await a.call("contacts.add", link=b.link)
    await b.call("contacts.add", link=a.link)
    await online


async def measure_throughput(reactor: Any, a: BenchDaemon, b: BenchDaemon, count: int) -> float:
    """Send *count* 200-byte messages from *a* to *b*, pipelined; return messages/s delivered."""
    delivered: set[str] = set()
    sent: set[str] = set()
    answered = [0]

    def on_state(payload: dict[str, Any]) -> None:
        if payload.get("state") == "delivered":
            delivered.add(payload["id"])

    a.events.on("message.stateChanged", on_state)

    def all_delivered() -> bool:
        return answered[0] == count and len(delivered) >= count and sent <= delivered

    done = a.events.wait(all_delivered, 600.0)
    next_index = [0]

    def body(index: int) -> str:
        prefix = f"t{index:08d} "
        return prefix + "x" * (BODY_BYTES - len(prefix))

    def launch() -> None:
        # One more call, keeping WINDOW in flight: each answer launches the next.
        index = next_index[0]
        if index == count:
            return
        next_index[0] = index + 1
        a.call("messages.send", contact=b.uid, text=body(index)).addCallbacks(answer, failed)

    def answer(message: dict[str, Any]) -> None:
        sent.add(message["id"])
        answered[0] += 1
        launch()
        a.events.check()

    def failed(reason: Any) -> None:
        if not done.called:
            done.errback(reason)

    started = time.perf_counter()
    for _ in range(min(WINDOW, count)):
        launch()
    await done
    return count / (time.perf_counter() - started)


def arrived(seen: set[str] | dict[str, float], key: str) -> Callable[[], bool]:
    """Return a predicate: has *key* been seen?"""
    return lambda: key in seen


async def measure_latency(
    reactor: Any, a: BenchDaemon, b: BenchDaemon, samples: int
) -> list[float]:
    """Send *samples* messages one at a time; return send-to-received times in µs, sorted."""

    received: dict[str, float] = {}
    delivered: set[str] = set()
    b.events.on(
        "message.received",
        lambda p: received.setdefault(p["message"]["body"], time.perf_counter()),
    )
    a.events.on(
        "message.stateChanged",
        lambda p: delivered.add(p["id"]) if p.get("state") == "delivered" else None,
    )
    times: list[float] = []
    for index in range(samples + 10):  # the first 10 warm up
        text = f"latency {index} " + "y" * 100
        waiting = b.events.wait(arrived(received, text), 30.0)
        started = time.perf_counter()
        message = await a.call("messages.send", contact=b.uid, text=text)
        await waiting
        if index >= 10:
            times.append((received[text] - started) * 1e6)
        message_id = message["id"]
        await a.events.wait(arrived(delivered, message_id), 30.0)
    return sorted(times)


@contextlib.asynccontextmanager
async def friends(reactor: Any) -> AsyncIterator[tuple[str, BenchDaemon, BenchDaemon]]:
    """Two new daemons, alice and bob, each the other's contact and online; yields
    ``(root, alice, bob)`` (*root*: their private directory) and removes all afterwards."""
    from twisted.internet import defer

    root = tempfile.mkdtemp(prefix="jvb", dir="/tmp")
    os.chmod(root, 0o700)
    alice = BenchDaemon(reactor, root, "alice")
    bob = BenchDaemon(reactor, root, "bob")
    try:
        await defer.gatherResults(
            [
                defer.ensureDeferred(alice.start(create=True)),
                defer.ensureDeferred(bob.start(create=True)),
            ]
        )
        await befriend(reactor, alice, bob)
        yield root, alice, bob
    finally:
        await defer.gatherResults(
            [defer.ensureDeferred(alice.cleanup()), defer.ensureDeferred(bob.cleanup())],
            consumeErrors=True,
        )
        shutil.rmtree(root, ignore_errors=True)


async def measure(reactor: Any, sizes: Sizes) -> dict[str, Any]:
    """Start two daemons, befriend them, measure; return the harness's figures."""
    async with friends(reactor) as (_, alice, bob):
        print("messaging: both daemons online, measuring throughput", file=sys.stderr)
        # Each API connection asks for the events it waits for, as a script would.
        await alice.listen("message.stateChanged")
        await bob.listen()
        throughput = await measure_throughput(reactor, alice, bob, sizes.messages)
        print("messaging: measuring latency", file=sys.stderr)
        await bob.listen("message.received")
        latencies = await measure_latency(reactor, alice, bob, sizes.samples)
        sender = await alice.call("daemon.status")
        receiver = await bob.call("daemon.status")
    return {
        "figures": {
            "throughput_msgs_per_s": {
                "value": throughput,
                "unit": f"messages/s ({sizes.messages:,} x {BODY_BYTES} B)",
                "goal": GOAL_THROUGHPUT,
                "ceiling_key": "tls_rtt_100conn_per_s",
            },
            "latency_p50_us": {
                "value": percentile(latencies, 0.50),
                "unit": f"µs (send to received, {len(latencies)} samples)",
                "goal": GOAL_P50_US,
                "ceiling_key": "tls_rtt_1conn_p50_us",
            },
            "latency_p99_us": {
                "value": percentile(latencies, 0.99),
                "unit": "µs",
                "goal": GOAL_P99_US,
                "ceiling_key": "tls_rtt_1conn_p99_us",
            },
            "sender_lag_worst_ms": {"value": lag_of(sender), "unit": "ms (since start)"},
            "receiver_lag_worst_ms": {"value": lag_of(receiver), "unit": "ms (since start)"},
        }
    }


def lag_of(status: dict[str, Any]) -> float:
    """Return ``lag.worst_ms`` of a ``daemon.status`` result (0.0 without a probe)."""
    lag = status.get("lag") or {}
    return float(lag.get("worst_ms", 0.0))


def run(quick: bool) -> dict[str, Any]:
    """Measure messaging throughput and latency between two real daemons.

    :param quick: 2,000 messages and 100 latency samples instead of 20,000 and 1,000.
    :returns: ``{"figures": {name: {"value", "unit", "goal"?, "ceiling_key"?}}}``.
    """
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, Sizes.choose(quick))))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("messaging", run, sys.argv[1:]))
