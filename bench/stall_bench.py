"""``stall`` benchmark: the worst reactor stall of the discovery and knock tables and of the
groups' unlock, with the work on the reactor (how it was) and on a 2-thread pool (now).

In one process, on the asyncio reactor, with a :class:`~jarvis.runtime.lag.ReactorLagProbe`
(1 ms ticks) running while each step runs; ``*_reactor_ms`` is the worst stall without
``run_blocking`` (the tables and checks made on the reactor thread, as before), ``*_pool_ms``
with a 2-thread pool like the daemon's.  Each figure is the median over :data:`REPEATS`
repetitions (3 window turns) of the worst stall of one repetition:

* ``lan_window_*_ms``: a :class:`~jarvis.net.lan.LanDiscovery` with 1,000 contacts (a fake
  zeroconf, one contact's service seen) over one window turn (windows shortened to 4 s): the
  token table rebuilt and our announcement made (before), or made on the pool 2 s ahead and
  swapped in (now);
* ``lan_change_*_ms``: the same discovery told the contacts changed, until the new
  announcement is out;
* ``knock_change_*_ms``: a :class:`~jarvis.net.network.PeerNetwork` with 1,000 contacts
  forgets one, then checks a knock of another right away and again once the new hint table
  is made (before: the first knock rebuilt the table on the reactor; now: it is checked
  against every current key while the table is made on the pool);
* ``groups_unlock_*_ms``: :meth:`jarvis.core.groups.Groups.open` reading back one group with
  2,000 stored messages (one Ed25519 check each; on the pool now);
* ``*_cpu_ms``: the reactor thread's own CPU time (``time.thread_time``) over the same step
  run again with the probe off (median): the work left on the reactor thread, which the
  machine's load does not inflate (a window turn includes 4 s of the idle loop);
* ``idle_floor_ms``: the worst stall over 1 s of doing nothing (median of 5), in the same
  run: what the machine's load alone gives (the floor under every other figure).

Work on the pool still holds the GIL in Python code (the HMAC loop): the reactor thread gets
it back within the interpreter's switch interval (5 ms), so a pool figure cannot go much
under 5 ms plus the floor while a table is being made.

1,000 contacts and 2,000 messages in a full run, a tenth with ``--smoke``.  ``python -m
bench.stall_bench [--quick] [--smoke]`` prints the table; the load average is printed on
stderr next to it.  This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import sys
import time
from typing import Any

CONTACTS = 1000
MESSAGES = 2000
#: The shortened LAN window of the benchmark (seconds).
WINDOW = 4
#: Repetitions of each step (window turns: 3).
REPEATS = 5


def _figures(reactor: Any) -> Any:
    from twisted.internet import defer
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from bench.harness import smoke_requested
    from jarvis.runtime.lag import ReactorLagProbe

    scale = 10 if smoke_requested() else 1
    contacts_n, messages_n = CONTACTS // scale, MESSAGES // scale
    pool = ThreadPool(minthreads=0, maxthreads=2, name="bench-blocking")
    pool.start()

    def on_pool(f: Any, *args: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(reactor, pool, f, *args)

    async def worst_during(work: Any) -> float:
        """The worst stall (ms) while ``await work()`` runs (and 20 ms after)."""
        probe = ReactorLagProbe(reactor, interval=0.001)
        probe.start()
        await deferLater(reactor, 0.02, lambda: None)
        await work()
        await deferLater(reactor, 0.02, lambda: None)
        probe.stop()
        return float(probe.worst() * 1000)

    async def sleep(seconds: float) -> None:
        await deferLater(reactor, seconds, lambda: None)

    async def median_worst(work: Any, times: int = REPEATS) -> float:
        values = sorted([await worst_during(work) for _ in range(times)])
        return values[len(values) // 2]

    async def median_cpu(work: Any, times: int = REPEATS) -> float:
        """The reactor thread's own CPU time (ms) while ``await work()`` runs, probe off:
        what the step costs the reactor thread, whatever the load (median of *times*)."""
        values = []
        for _ in range(times):
            started = time.thread_time()
            await work()
            values.append((time.thread_time() - started) * 1000)
        values.sort()
        return values[len(values) // 2]

    async def lan(mode: str, threaded: bool) -> dict[str, float]:
        from jarvis.crypto.identity import IdentityKey
        from jarvis.net import lan as lan_net
        from jarvis.protocol import knock, lan
        from tests.test_lan_net import FakeBrowser, FakeZeroconf
        from tests.waiting import Waiters

        lan_net.AsyncServiceBrowser = FakeBrowser  # type: ignore[misc,assignment]
        me = IdentityKey.generate()
        peers = [IdentityKey.generate() for _ in range(contacts_n)]
        shared = knock.KnockKeys(me.private_bytes(), me.uid)
        shared.add(shared.compute([(p.uid, p.public_bytes) for p in peers]))  # as at unlock
        zc = FakeZeroconf(Waiters(reactor))
        discovery = lan_net.LanDiscovery(
            me.uid,
            7770,
            lan.LanKeys(me.private_bytes(), me.uid, knock=shared),
            lambda: [(p.uid, p.public_bytes) for p in peers],
            lambda uid, host, port: None,
            clock=reactor,
            zeroconf_factory=lambda: zc,  # type: ignore[arg-type,return-value]
            addresses=lambda: ["192.0.2.1"],
            window_seconds=WINDOW,
            run_blocking=on_pool if threaded else None,
        )
        await discovery.start()
        last = peers[-1]
        key = lan.LanKeys(last.private_bytes(), last.uid).key(me.uid, me.public_bytes)
        assert key is not None
        window = lan.window_of(reactor.seconds(), WINDOW)
        discovery._seen["peer._jarvis._tcp.local."] = lan_net._Seen(
            tuple(lan.token(key, w, last.uid) for w in range(window - 1, window + 3)),
            ("192.0.2.9",),
            7770,
        )
        # settle: the first window turn after start (tables of the start made)
        await sleep((window + 1) * WINDOW - reactor.seconds() + 0.6)
        registered = len(zc.registered)

        async def window_turn() -> None:
            now = reactor.seconds()
            await sleep((lan.window_of(now, WINDOW) + 1) * WINDOW - now + 0.6)

        figures = {f"lan_window_{mode}_ms": await median_worst(window_turn, 3)}
        assert len(zc.registered) >= registered + 3, "no announcement at a window turn"
        figures[f"lan_window_{mode}_cpu_ms"] = await median_cpu(window_turn, 3)

        async def change() -> None:
            await discovery.contacts_changed()

        figures[f"lan_change_{mode}_ms"] = await median_worst(change)
        figures[f"lan_change_{mode}_cpu_ms"] = await median_cpu(change)
        await discovery.stop()
        return figures

    async def knock_change(mode: str, threaded: bool) -> dict[str, float]:
        from jarvis.crypto.identity import IdentityKey
        from jarvis.net import network as net
        from jarvis.protocol import knock
        from tests.test_network import FakeDirectory, RecordingObserver

        me = IdentityKey.generate()
        peers = [IdentityKey.generate() for _ in range(contacts_n)]
        directory = FakeDirectory()
        for p in peers:
            directory.add(p)
        network = net.PeerNetwork(reactor, me, directory, RecordingObserver(), run_blocking=on_pool)
        if not threaded:  # the verifier as it was: rebuilt on the reactor after a change
            network._knock_verifier = knock.KnockVerifier(me.uid)
        assert network.knock_keys_prepared is not None
        await network.knock_keys_prepared
        await sleep(0.3)  # the table of this window, made on the pool
        sender = peers[-1]
        pair = knock.pair_key(sender.private_bytes(), sender.uid, me.public_bytes, me.uid)
        window = knock.window_of(reactor.seconds())
        tokens = iter([knock.make_knock(pair, me.uid, window, bytes([n]) * 8) for n in range(99)])
        assert network._verify_knock(next(tokens)) == knock.Accepted(sender.uid)
        removed_ones = iter(peers[: 2 * REPEATS])

        async def change() -> None:
            removed = next(removed_ones)
            network.connect(removed.uid)
            del directory.contacts[removed.uid]
            network.forget(removed.uid)
            assert network._verify_knock(next(tokens)) == knock.Accepted(sender.uid)
            await sleep(net.KNOCK_REBUILD_DELAY + 0.2)  # the new table (now)
            assert network._verify_knock(next(tokens)) == knock.Accepted(sender.uid)

        figures = {f"knock_change_{mode}_ms": await median_worst(change)}
        figures[f"knock_change_{mode}_cpu_ms"] = await median_cpu(change)
        await network.stop()
        return figures

    async def groups_unlock(mode: str, threaded: bool) -> dict[str, float]:
        from jarvis.core.groups import Groups
        from jarvis.crypto.identity import IdentityKey
        from jarvis.protocol.group_message import (
            NO_HASH,
            encode_message,
            message_hash,
            write_message,
        )
        from jarvis.protocol.group_state import encode_state, found_group, state_hash
        from tests.test_groups import FakeContacts, FakeCourier, FakeStore

        me = IdentityKey.generate()
        state = found_group(me, "bench")
        store = FakeStore()
        store.rows[("state", state_hash(state))] = encode_state(state)
        prev = NO_HASH
        for seq in range(1, messages_n + 1):
            m = write_message(
                me,
                state.group_id,
                seq=seq,
                prev_hash=prev,
                state_version=1,
                created=seq,
                body=b"x" * 100,
            )
            prev = message_hash(m)
            store.rows[("message", prev)] = encode_message(m)

        async def unlock() -> None:
            groups = Groups(
                clock=reactor,
                now=reactor.seconds,
                emit=lambda e, p: None,
                courier=FakeCourier(me.uid, []),
                contacts=FakeContacts(),
                keepalive=3600.0,
                run_blocking=on_pool if threaded else None,
            )
            await groups.open(store, me, ["192.0.2.1:7770"])  # type: ignore[arg-type]
            shown = len(groups.resolve(state.group_id.hex()).log.shown())
            assert shown == messages_n, shown
            groups.close()

        return {
            f"groups_unlock_{mode}_ms": await median_worst(unlock, 3),
            f"groups_unlock_{mode}_cpu_ms": await median_cpu(unlock, 3),
        }

    async def measure() -> dict[str, Any]:
        figures: dict[str, Any] = {}
        floor = await median_worst(lambda: sleep(1.0))
        figures["idle_floor_ms"] = {"value": floor, "unit": "ms"}
        try:
            for step in (lan, knock_change, groups_unlock):
                for mode, threaded in (("reactor", False), ("pool", True)):
                    for name, value in (await step(mode, threaded)).items():
                        figures[name] = {"value": value, "unit": "ms"}
        finally:
            pool.stop()
        with open("/proc/loadavg", encoding="ascii") as f:
            print(f"load average: {f.read().strip()}", file=sys.stderr)
        return {"figures": figures}

    return measure()


def run(quick: bool) -> dict[str, Any]:
    """Measure the worst reactor stalls of the tables and the groups' unlock (see the module)."""
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(_figures))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("stall", run, sys.argv[1:]))
