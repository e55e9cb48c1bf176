"""The 50-member group benchmark (issue 17): one real sender, 49 simulated members.

One ``twistd -n jarvis`` process (the sender, started as :mod:`bench.scale_bench` starts its
hub) and one :mod:`bench.peer_load` process running 49 simulated peers (6 with ``--smoke``):
each is its own identity with a real :class:`jarvis.net.network.PeerNetwork` session to the
sender (pinned mutual TLS) and acknowledges every message it gets at once, as a daemon's
courier does once it stored it.  The sender adds each as a contact (``contacts.add``), founds a
group (``groups.create``) and invites all of them (``groups.invite``): every invitation makes a
new signed state with that member in it, so the group's state lists 50 members although the
simulated peers never answer with group traffic of their own.  Then, in the same run:

- ``fanout_p50_ms`` / ``fanout_p99_ms``: one ``groups.send`` at a time, from the call to the
  ``group.delivery`` event that counts the last member's acknowledgement (49 entries, each
  stored, written to its session, acknowledged and recorded delivered);
- ``group_msgs_per_s`` / ``group_cpu_ms_per_msg``: a burst of group messages
  (:data:`GROUP_WINDOW` calls in flight) until every entry is delivered: group messages per
  second and the sender's CPU (user + system, ``/proc/PID/stat``) per group message;
- ``one_to_one_msgs_per_s`` / ``one_to_one_cpu_ms_per_msg``: the same number of 1:1 messages as
  the burst had entries, round robin over the same 49 sessions (:data:`ONE_TO_ONE_WINDOW`
  ``messages.send`` calls in flight), until every one is delivered;
- ``group_vs_one_to_one_cpu``: CPU per group message over CPU per 1:1 message (49 would be "a
  group message costs its 49 copies"; less means the fan-out shares work between copies);
- ``store_bytes_per_group_msg`` / ``outbox_body_bytes_per_group_msg``: how much the sender's
  database grew per group message of the burst once every entry was acknowledged (pages in
  use: ``page_count - freelist_count``), and how many bytes of sealed bodies its outgoing rows
  hold per group message (the entries' payloads, if kept after the acknowledgement).

``python -m bench.group50_bench [--quick] [--smoke]`` prints the table.  This module must not
be imported by Jarvis itself.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import percentile
from bench.messaging_bench import BODY_BYTES, BenchDaemon, wait_online
from bench.scale_bench import LoadProcess, add_contacts, cpu_seconds

#: ``groups.send`` calls kept in flight during the group burst.
GROUP_WINDOW = 20
#: ``messages.send`` calls kept in flight during the 1:1 burst (as the messaging benchmark).
ONE_TO_ONE_WINDOW = 200
#: The fan-out latency goal of the 10-member benchmark, for comparison.
GOAL_P99_MS = 50.0


@dataclass(frozen=True)
class Sizes:
    """Members (the sender included), sequential samples and the burst's group messages."""

    members: int
    samples: int
    burst: int
    timeout: float

    @classmethod
    def choose(cls, quick: bool) -> Sizes:
        """Return the sizes for a full, ``--quick`` or ``--smoke`` run."""
        from bench.harness import smoke_requested

        if smoke_requested():
            return cls(members=7, samples=5, burst=40, timeout=60.0)
        if quick:
            return cls(members=50, samples=30, burst=100, timeout=120.0)
        return cls(members=50, samples=200, burst=400, timeout=300.0)


def store_usage(path: str) -> tuple[int, int]:
    """Read the daemon's database (read-only, its WAL included).

    :returns: bytes of pages in use, and bytes of sealed bodies of outgoing rows.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        (bodies,) = conn.execute(
            "SELECT coalesce(sum(length(body)), 0) FROM messages WHERE direction = 'out'"
        ).fetchone()
    finally:
        conn.close()
    return (pages - free) * page_size, int(bodies)


async def measure(reactor: Any, sizes: Sizes) -> dict[str, Any]:
    """Start the sender and the simulated members, form the group, measure; return figures."""
    from twisted.internet import defer

    from jarvis.core.account import DATABASE

    count = sizes.members - 1
    root = tempfile.mkdtemp(prefix="jvg50", dir="/tmp")
    os.chmod(root, 0o700)
    sender = BenchDaemon(reactor, root, "hub")
    load: LoadProcess | None = None
    try:
        await sender.start(create=True)
        load = LoadProcess(reactor, count, f"127.0.0.1:{sender.peer_port()}", sender.link, 0.25)
        await load.ready
        await add_contacts(sender, load.links)
        online = wait_online(reactor, sender, count, sizes.timeout)
        load.command("dial")
        await online
        members = [c["uid"] for c in (await sender.call("contacts.list"))["contacts"]]
        await sender.listen("group.delivery", "message.stateChanged")
        gid = (await sender.call("groups.create", name="bench50"))["id"]
        for uid in members:
            await sender.call("groups.invite", group=gid, contact=uid)
        listed = await sender.call("groups.members", group=gid)
        if len(listed["members"]) != sizes.members:
            raise RuntimeError(f"the group has {len(listed['members'])} members")
        print(f"group50: {sizes.members} members in the group", file=sys.stderr)

        # Each of our group messages: how many members acknowledged it (group.delivery).
        acked: dict[str, int] = {}
        done_at: dict[str, float] = {}

        def on_delivery(payload: dict[str, Any]) -> None:
            mid = payload["id"]
            acked[mid] = max(acked.get(mid, 0), int(payload["delivered"]))
            if acked[mid] >= count and mid not in done_at:
                done_at[mid] = time.perf_counter()

        sender.events.on("group.delivery", on_delivery)
        fanout: list[float] = []
        for index in range(sizes.samples + 5):  # the first 5 warm up
            started = time.perf_counter()
            mid = (await sender.call("groups.send", group=gid, text=f"fan-out {index}"))["id"]
            await sender.events.wait(lambda m=mid: m in done_at, sizes.timeout)
            if index >= 5:
                fanout.append((done_at[mid] - started) * 1e3)

        database = os.path.join(sender.data_dir, DATABASE)
        used_before, bodies_before = store_usage(database)
        ids: list[str] = []
        cpu_before = cpu_seconds(sender.pid)
        started = time.perf_counter()
        for first in range(0, sizes.burst, GROUP_WINDOW):
            answers = await defer.gatherResults(
                [
                    sender.call("groups.send", group=gid, text=f"burst {i}")
                    for i in range(first, min(sizes.burst, first + GROUP_WINDOW))
                ]
            )
            ids.extend(a["id"] for a in answers)
        await sender.events.wait(lambda: all(m in done_at for m in ids), sizes.timeout)
        group_s = time.perf_counter() - started
        group_cpu = cpu_seconds(sender.pid) - cpu_before
        used_after, bodies_after = store_usage(database)

        one_count = sizes.burst * count
        delivered: set[str] = set()
        sent: list[str] = []
        sender.events.on(
            "message.stateChanged",
            lambda p: delivered.add(p["id"]) if p.get("state") == "delivered" else None,
        )
        next_index = [0]
        failure: list[Any] = []

        def launch() -> None:
            index = next_index[0]
            if index == one_count:
                return
            next_index[0] = index + 1
            prefix = f"t{index:08d} "
            text = prefix + "x" * (BODY_BYTES - len(prefix))
            d = sender.call("messages.send", contact=members[index % count], text=text)
            d.addCallbacks(answer, failure.append)

        def answer(message: dict[str, Any]) -> None:
            sent.append(message["id"])
            launch()
            sender.events.check()

        cpu_before = cpu_seconds(sender.pid)
        started = time.perf_counter()
        for _ in range(min(ONE_TO_ONE_WINDOW, one_count)):
            launch()
        await sender.events.wait(
            lambda: bool(failure) or (len(sent) == one_count and delivered.issuperset(sent)),
            sizes.timeout,
        )
        if failure:
            failure[0].raiseException()
        one_s = time.perf_counter() - started
        one_cpu = cpu_seconds(sender.pid) - cpu_before
    finally:
        if load is not None:
            await load.stop()
        await sender.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    fanout.sort()
    if one_cpu <= 0:
        # /proc counts CPU in clock ticks (10 ms): the smoke size is chosen to use several.
        raise RuntimeError("the 1:1 burst used less than one clock tick of CPU: too short")
    group_cpu_ms = group_cpu / sizes.burst * 1e3
    one_cpu_ms = one_cpu / one_count * 1e3
    return {
        "figures": {
            "members": {"value": sizes.members, "unit": f"members ({count} simulated)"},
            "fanout_p50_ms": {
                "value": percentile(fanout, 0.50),
                "unit": f"ms (groups.send to the last of {count} acks, {len(fanout)} samples)",
            },
            "fanout_p99_ms": {"value": percentile(fanout, 0.99), "unit": "ms", "goal": GOAL_P99_MS},
            "group_msgs_per_s": {
                "value": sizes.burst / group_s,
                "unit": f"group msgs/s ({sizes.burst}, {GROUP_WINDOW} in flight, all acked)",
            },
            "group_cpu_ms_per_msg": {
                "value": group_cpu_ms,
                "unit": f"ms sender CPU per group message ({count} entries)",
            },
            "one_to_one_msgs_per_s": {
                "value": one_count / one_s,
                "unit": f"1:1 msgs/s ({one_count} over {count} sessions, same run)",
                "ceiling_key": "tls_rtt_100conn_per_s",
            },
            "one_to_one_cpu_ms_per_msg": {
                "value": one_cpu_ms,
                "unit": "ms sender CPU per 1:1 message (same run)",
            },
            "group_vs_one_to_one_cpu": {
                "value": group_cpu_ms / one_cpu_ms,
                "unit": f"x (CPU per group message / per 1:1 message; {count} = per copy)",
            },
            "store_bytes_per_group_msg": {
                "value": max(0.0, (used_after - used_before) / sizes.burst),
                "unit": "bytes of database pages per group message (all acked)",
            },
            "outbox_body_bytes_per_group_msg": {
                "value": max(0.0, (bodies_after - bodies_before) / sizes.burst),
                "unit": f"bytes of sealed bodies kept per group message ({count} entries)",
            },
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure a 50-member group's fan-out at one real sender (see the module docstring)."""
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, Sizes.choose(quick))))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("group50", run, sys.argv[1:]))
