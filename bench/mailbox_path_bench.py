"""The mailbox-path latency benchmark (issue 15): delivery through a mailbox while both
daemons run but neither can dial the other.

A real mailbox (``twistd -n jarvis-mailbox``, as ``tests/test_mailbox_e2e.py`` starts it) and
two real daemons (as :mod:`bench.messaging_bench` starts them) on loopback.  The daemons befriend
each other directly, both ``mailbox.use`` the one mailbox and exchange their queues' addresses
over that first session; then both restart on new peer ports, so each one's record of the
other names a closed port, and the mailbox relays nothing (``--relay-pairs 0``): no session
can come up, and ``mailbox.status`` lists the contact's
path as ``mailbox`` on both sides (checked before measuring).  Then:

- ``latency_p50_us`` / ``latency_p99_us``: one message at a time, from the sender's
  ``messages.send`` call to the receiver's ``message.received`` event (both seen by this
  process through the two API connections).  3 samples with ``--smoke``, 20 with ``--quick``,
  100 in full.  Compared with the ceiling's ``tls_rtt_1conn_p50_us`` / ``_p99_us``.
- ``grace_s``: the most the courier waits for a session before it deposits
  (:data:`jarvis.core.courier.MAILBOX_GRACE`), only while a dial to the contact is in flight;
  not part of these samples (between the dialler's rounds no dial is in flight, so each
  message is deposited at once).
- ``sender_lag_worst_ms`` / ``receiver_lag_worst_ms``: ``lag.worst_ms`` after the run.

Goals (issue 15): p50 at most 10 ms, p99 at most 50 ms.

``python -m bench.mailbox_path_bench [--quick] [--smoke]`` prints the table.  This module must
not be imported by Jarvis itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Any

from bench.harness import percentile
from bench.messaging_bench import BenchDaemon, arrived, befriend, lag_of

GOAL_P50_US = 10_000.0
GOAL_P99_US = 50_000.0


def samples_for(quick: bool) -> int:
    """Return the number of latency samples for a full, ``--quick`` or ``--smoke`` run."""
    from bench.harness import smoke_requested

    if smoke_requested():
        return 3
    return 20 if quick else 100


async def until(reactor: Any, check: Any, what: str, timeout: float = 60.0) -> None:
    """Poll the async *check* (50 ms apart) until it is true."""
    from twisted.internet import task

    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"mailbox_path: timed out waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


async def paths(daemon: BenchDaemon) -> list[str]:
    """The path of each contact of *daemon* per ``mailbox.status``."""
    status = await daemon.call("mailbox.status")
    return [c.get("path", "") for c in status.get("contacts", [])]


async def measure(reactor: Any, samples: int) -> dict[str, Any]:
    """Start a mailbox and two daemons, cut their direct path, measure; return figures."""
    from twisted.internet import defer

    from jarvis.core.courier import MAILBOX_GRACE
    from tests.mailboxes import MailboxProcess

    root = tempfile.mkdtemp(prefix="jvm", dir="/tmp")
    os.chmod(root, 0o700)
    box_root = os.path.join(root, "mb")
    os.makedirs(box_root)
    # no relaying (issue 16): it would join the two daemons, and this measures the mailbox path
    mailbox = MailboxProcess(box_root, ["--relay-pairs", "0"])
    alice = BenchDaemon(reactor, root, "alice")
    bob = BenchDaemon(reactor, root, "bob")
    try:
        await mailbox.start()
        with open(os.path.join(mailbox.data_dir, "mailbox.link"), encoding="ascii") as f:
            link = f.read().strip()
        await defer.gatherResults(
            [
                defer.ensureDeferred(alice.start(create=True)),
                defer.ensureDeferred(bob.start(create=True)),
            ]
        )
        await befriend(reactor, alice, bob)
        for daemon in (alice, bob):
            await daemon.call("mailbox.use", link=link)

        async def ready(daemon: BenchDaemon) -> bool:
            status = await daemon.call("mailbox.status")
            return bool(status["connected"] and status["contacts_reachable"] == 1)

        for daemon in (alice, bob):
            await until(reactor, lambda d=daemon: ready(d), f"{daemon.name}'s mailbox")
        print("mailbox_path: restarting both daemons on new ports", file=sys.stderr)
        for daemon in (alice, bob):
            await daemon.stop()
        for daemon in (alice, bob):
            await daemon.start(unlock=True)
        for daemon in (alice, bob):

            async def via_mailbox(d: BenchDaemon = daemon) -> bool:
                return await paths(d) == ["mailbox"] and await ready(d)

            await until(reactor, via_mailbox, f"{daemon.name} to use the mailbox path")
        await bob.listen("message.received")
        await alice.listen()
        print(f"mailbox_path: measuring {samples} samples", file=sys.stderr)
        received: dict[str, float] = {}
        bob.events.on(
            "message.received",
            lambda p: received.setdefault(p["message"]["body"], time.perf_counter()),
        )
        times: list[float] = []
        for index in range(samples + 1):  # the first warms up
            text = f"mailbox latency {index} " + "y" * 100
            waiting = bob.events.wait(arrived(received, text), 60.0)
            started = time.perf_counter()
            await alice.call("messages.send", contact=bob.uid, text=text)
            await waiting
            if index >= 1:
                times.append((received[text] - started) * 1e6)
        if await paths(alice) != ["mailbox"]:
            raise RuntimeError("mailbox_path: a direct session came up while measuring")
        sender = await alice.call("daemon.status")
        receiver = await bob.call("daemon.status")
    finally:
        await defer.gatherResults(
            [
                defer.ensureDeferred(alice.cleanup()),
                defer.ensureDeferred(bob.cleanup()),
                mailbox.cleanup(),
            ],
            consumeErrors=True,
        )
        shutil.rmtree(root, ignore_errors=True)
    times.sort()
    return {
        "figures": {
            "latency_p50_us": {
                "value": percentile(times, 0.50),
                "unit": f"µs (send to received via the mailbox, {len(times)} samples)",
                "goal": GOAL_P50_US,
                "ceiling_key": "tls_rtt_1conn_p50_us",
            },
            "latency_p99_us": {
                "value": percentile(times, 0.99),
                "unit": "µs",
                "goal": GOAL_P99_US,
                "ceiling_key": "tls_rtt_1conn_p99_us",
            },
            "grace_s": {
                "value": MAILBOX_GRACE,
                "unit": "s (most wait for a dial in flight; none in these samples)",
            },
            "sender_lag_worst_ms": {"value": lag_of(sender), "unit": "ms (since start)"},
            "receiver_lag_worst_ms": {"value": lag_of(receiver), "unit": "ms (since start)"},
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure send-to-received latency through a mailbox between two real daemons.

    :param quick: 20 samples instead of 100.
    :returns: ``{"figures": {name: {"value", "unit", "goal"?, "ceiling_key"?}}}``.
    """
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, samples_for(quick))))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("mailbox_path", run, sys.argv[1:]))
