"""The group benchmark (issue 17): a group of real daemons on one machine.

Ten daemons (``twistd -n jarvis``, as :mod:`bench.messaging_bench` starts them; four with
``--smoke``): the founder is everyone's contact, the others are not each other's (they reach
each other as group peers).  Then:

- ``event_p50_ms`` / ``event_p99_ms``: one group message at a time from a member who is not the
  founder, from its ``groups.send`` call to each other member's ``group.message`` event (every
  member's time is a sample).  Goal (issue 17): p99 at most 50 ms.
- ``last_member_p50_ms`` / ``last_member_p99_ms``: the same to the last member to show it.
- ``group_msgs_per_s``: one sender writes a burst (``groups.send``, 100 calls in flight):
  messages per second until every member shows all of them (each is N - 1 pairwise copies).
- ``one_to_one_p50_ms`` / ``one_to_one_p99_ms``: in the same run, a 1:1 message from the
  founder to a member, send to ``message.received``, for comparison.
- ``burst_cpu_ms_per_msg`` / ``sender_cpu_ms_per_msg``: CPU seconds (user + system,
  ``/proc/PID/stat``) the burst cost all daemons together, and the sender alone, per group
  message: what one message costs the machine, next to the 1:1 path's.
- ``rss_mib_per_member``: the daemons' mean resident set size after the burst (each daemon
  holds the group's states and every message shown).

``python -m bench.group_bench [--quick] [--smoke]`` prints the table.  This module must not be
imported by Jarvis itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import percentile
from bench.mailbox_bench import cpu_seconds, rss_mib
from bench.messaging_bench import BenchDaemon, arrived, befriend, measure_latency

GOAL_P99_MS = 50.0


@dataclass(frozen=True)
class Sizes:
    """Members, latency samples and the burst's length."""

    members: int
    samples: int
    burst: int

    @classmethod
    def choose(cls, quick: bool) -> Sizes:
        from bench.harness import smoke_requested

        if smoke_requested():
            return cls(members=4, samples=5, burst=80)
        if quick:
            return cls(members=10, samples=30, burst=300)
        return cls(members=10, samples=100, burst=1000)


async def measure(reactor: Any, sizes: Sizes) -> dict[str, Any]:
    """Start the daemons, form the group, measure; return figures."""
    from twisted.internet import defer

    root = tempfile.mkdtemp(prefix="jvg", dir="/tmp")
    os.chmod(root, 0o700)
    daemons = [BenchDaemon(reactor, root, f"g{i:02d}") for i in range(sizes.members)]
    founder, members = daemons[0], daemons[1:]
    try:
        await defer.gatherResults([defer.ensureDeferred(d.start(create=True)) for d in daemons])
        for member in members:
            await befriend(reactor, founder, member)
        for d in daemons:
            await d.listen(
                "group.message", "group.invited", "message.received", "message.stateChanged"
            )
        gid = (await founder.call("groups.create", name="bench"))["id"]
        for member in members:
            invites: list[str] = []
            member.events.on("group.invited", lambda p, i=invites: i.append(p["invite"]["id"]))
            await founder.call("groups.invite", group=gid, contact=member.uid)
            await member.events.wait(lambda i=invites: bool(i), 60.0)
            await member.call("groups.join", invite=invites[0])
        shown: dict[str, dict[str, float]] = {d.uid: {} for d in daemons}
        for d in daemons:
            d.events.on(
                "group.message",
                lambda p, s=shown[d.uid]: s.setdefault(p["message"]["body"], time.perf_counter()),
            )
        sender = members[0]
        others = [d for d in daemons if d is not sender]
        print(f"group: {sizes.members} members, {sizes.samples} samples", file=sys.stderr)
        samples: list[float] = []
        lasts: list[float] = []
        for index in range(sizes.samples + 5):  # the first 5 warm up (and bring sessions up)
            text = f"group latency {index}"
            waiting = [d.events.wait(arrived(shown[d.uid], text), 60.0) for d in others]
            started = time.perf_counter()
            await sender.call("groups.send", group=gid, text=text)
            await defer.gatherResults(waiting)
            if index >= 5:
                times = [(shown[d.uid][text] - started) * 1e3 for d in others]
                samples.extend(times)
                lasts.append(max(times))
        bodies = [f"burst {i}" for i in range(sizes.burst)]
        waiting = [
            d.events.wait(lambda s=shown[d.uid]: all(b in s for b in bodies), 300.0) for d in others
        ]
        cpu_before = [cpu_seconds(d.pid) for d in daemons]
        started = time.perf_counter()
        for first in range(0, len(bodies), 100):  # 100 calls in flight at a time
            await defer.gatherResults(
                [sender.call("groups.send", group=gid, text=b) for b in bodies[first : first + 100]]
            )
        await defer.gatherResults(waiting)
        burst_s = time.perf_counter() - started
        cpu_spent = [cpu_seconds(d.pid) - b for d, b in zip(daemons, cpu_before, strict=True)]
        rss = [rss_mib(d.pid) for d in daemons]
        one_to_one = [
            t / 1e3 for t in await measure_latency(reactor, founder, members[1], sizes.samples)
        ]
    finally:
        await defer.gatherResults(
            [defer.ensureDeferred(d.cleanup()) for d in daemons], consumeErrors=True
        )
        shutil.rmtree(root, ignore_errors=True)
    samples.sort()
    lasts.sort()
    return {
        "figures": {
            "event_p50_ms": {
                "value": percentile(samples, 0.50),
                "unit": f"ms (send to each member's event, {len(samples)} samples, "
                f"{sizes.members} members)",
            },
            "event_p99_ms": {"value": percentile(samples, 0.99), "unit": "ms", "goal": GOAL_P99_MS},
            "last_member_p50_ms": {
                "value": percentile(lasts, 0.50),
                "unit": "ms (send to the last member's event)",
            },
            "last_member_p99_ms": {"value": percentile(lasts, 0.99), "unit": "ms"},
            "group_msgs_per_s": {
                "value": sizes.burst / burst_s,
                "unit": f"group msgs/s ({sizes.burst}, 100 calls in flight, until all show all)",
            },
            "one_to_one_p50_ms": {
                "value": percentile(one_to_one, 0.50),
                "unit": "ms (1:1 send to received, same run)",
            },
            "one_to_one_p99_ms": {"value": percentile(one_to_one, 0.99), "unit": "ms"},
            "burst_cpu_ms_per_msg": {
                "value": sum(cpu_spent) / sizes.burst * 1e3,
                "unit": f"ms CPU of all {sizes.members} daemons per group message (burst)",
            },
            "sender_cpu_ms_per_msg": {
                "value": cpu_spent[daemons.index(sender)] / sizes.burst * 1e3,
                "unit": f"ms CPU of the sender per group message ({sizes.members - 1} copies)",
            },
            "rss_mib_per_member": {
                "value": sum(rss) / len(rss),
                "unit": f"MiB mean daemon RSS after {sizes.burst + sizes.samples + 5} messages",
            },
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure group latency and throughput between real daemons (see the module docstring)."""
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, Sizes.choose(quick))))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("group", run, sys.argv[1:]))
