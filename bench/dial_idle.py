"""The CPU a node spends dialling contacts it cannot reach: one PeerNetwork, N contacts.

One process, the real asyncio reactor, a real :class:`jarvis.net.network.PeerNetwork` with the
daemon's defaults (backoff 1 s doubling to 60 s, jitter) and the daemon's JSON log observer
(:func:`jarvis.common.logs.json_file_observer` at ``info``, into a temporary file).  N contacts are
added and :meth:`~jarvis.net.network.PeerNetwork.connect` is called for each, as the core does
at unlock; then the process's own CPU time (``resource.getrusage``, user + system) is read over
a window:

- ``--addresses none``: contacts without an address (added by uid or by a card without
  addresses), the case of ``idle_cpu_no_sessions_percent`` in :mod:`bench.scale_bench`;
- ``--addresses refused``: each contact at ``127.0.0.1`` on a port nobody listens on (every
  dial is refused at once: the dearest unreachable contact).

``--skip S`` waits *S* seconds before the window (``0`` measures the first backoff steps, where
rounds are densest; ``120`` the steady state at the 60 s cap).  ``--profile FILE`` writes a
cProfile of the window.  Prints one JSON line.  Run it in two checkouts, alternating, to
compare two dialling implementations on a shared machine.  This module must not be imported by
Jarvis itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import tempfile
import time
from typing import Any


def closed_port() -> int:
    """Return a loopback TCP port that nobody listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class Directory:
    """A ContactDirectory of *count* generated contacts sharing one address tuple."""

    def __init__(self, count: int, addresses: tuple[str, ...]) -> None:
        from jarvis.crypto.identity import IdentityKey

        keys = [IdentityKey.generate() for _ in range(count)]
        self.contacts = {k.uid: k.public_bytes for k in keys}
        self._addresses = addresses

    def is_acceptable(self, uid: str) -> bool:
        return uid in self.contacts

    def public_key(self, uid: str) -> bytes | None:
        return self.contacts.get(uid)

    def addresses(self, uid: str) -> tuple[str, ...]:
        return self._addresses

    def acceptable_uids(self) -> list[str]:
        return list(self.contacts)


class Observer:
    """A NetworkObserver that only counts status changes."""

    changes = 0

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None

    def peer_status_changed(self, uid: str, status: Any) -> None:
        self.changes += 1


def cpu() -> float:
    """Return this process's user + system CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Measure, print one JSON line, return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.dial_idle", description=__doc__)
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--skip", type=float, default=0.0)
    parser.add_argument("--addresses", choices=("none", "refused"), default="none")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    from twisted.logger import LogLevel, globalLogBeginner

    from jarvis.common.logs import json_file_observer
    from jarvis.crypto.identity import IdentityKey
    from jarvis.net.network import PeerNetwork

    workdir = tempfile.mkdtemp(prefix="dialidle", dir="/tmp")
    observer, logfile = json_file_observer(f"{workdir}/daemon.log", LogLevel.info)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    addresses = (f"127.0.0.1:{closed_port()}",) if args.addresses == "refused" else ()
    directory = Directory(args.contacts, addresses)
    status = Observer()
    network = PeerNetwork(reactor, IdentityKey.generate(), directory, status)  # type: ignore[arg-type]
    result: dict[str, Any] = {}

    async def run() -> None:
        for uid in directory.contacts:
            network.connect(uid)
        await deferLater(reactor, args.skip, lambda: None)
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        start_cpu, start = cpu(), time.monotonic()
        await deferLater(reactor, args.seconds, lambda: None)
        used, elapsed = cpu() - start_cpu, time.monotonic() - start
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        attempts = sum(s.connect_attempts for s in network.statuses().values())
        result.update(
            label=args.label,
            contacts=args.contacts,
            addresses=args.addresses,
            skip_s=args.skip,
            window_s=round(elapsed, 2),
            cpu_percent=round(100 * used / elapsed, 2),
            connect_attempts=attempts,
        )
        await network.stop()

    def go() -> None:
        from twisted.internet.defer import ensureDeferred

        d = ensureDeferred(run())
        d.addErrback(lambda f: (result.update(error=str(f.value)), f.printTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    logfile.close()
    print(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
