"""The scale benchmark: one real daemon holding N established peer sessions.

One ``twistd -n jarvis`` process (started like ``tests/daemons.py`` starts it, peers on
``127.0.0.1``) creates its identity through the local API.  A load process
(:mod:`bench.peer_load`) makes N simulated peers, each with its own identity; this process adds
each one as a contact with ``contacts.add`` and its link code (a card without addresses, so only
the simulated peer dials), then tells the load process to dial: every simulated peer runs a real
:class:`jarvis.net.network.PeerNetwork` (pinned mutual TLS, hello, keepalive every 30 s).
N = 1,000 in a full run, 100 with ``--quick``, 20 with ``--smoke``.

- ``establish_all_s`` / ``establish_per_s``: from "dial" until ``peers.status`` shows all N
  online (the rate is compared with the ceiling's ``tls_connect_100conn_per_s``);
- ``rss_per_session_kib``: the daemon's VmRSS (``/proc/PID/status``) once all are established
  minus VmRSS just before dialling (contacts already added), divided by N.  Goal <= 100 KiB;
- ``idle_cpu_percent``: the daemon's utime + stime (``/proc/PID/stat``, every thread) over
  :attr:`Sizes.idle_seconds` with every session idle and nobody calling the API, as a percentage
  of one core.  Goal < 2 %.  ``idle_cpu_no_sessions_percent`` is the same before dialling (all
  contacts added, no session): the daemon's own floor (its 10 ms reactor lag probe included);
- ``restart_unlocked_s``: after SIGTERM and exit, from starting the daemon again (same data
  directory, same ``--listen`` port, ``--password-file``) until it reports itself unlocked;
- ``reconnect_all_s``: from that same start until ``peers.status`` shows all N online again,
  the simulated peers redialling with the real backoff (1 s doubling, jitter).  Goal <= 10 s.

``run()`` runs the reactor, so it can be called once per process (the harness runs each
benchmark in its own process).  ``python -m bench.scale_bench [--quick] [--smoke]`` prints the
table.  This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench.messaging_bench import BenchDaemon, wait_online

#: contacts.add calls kept in flight.
ADD_WINDOW = 50

GOAL_RSS_KIB = 100.0
GOAL_IDLE_CPU_PERCENT = 2.0
GOAL_RECONNECT_S = 10.0


@dataclass(frozen=True)
class Sizes:
    """How big the run is.

    :param sessions: simulated peers.
    :param idle_seconds: how long the idle CPU is measured.
    :param backoff_initial: the load's first retry delay (the real default but in smoke runs).
    :param timeout: seconds any one phase may take.
    """

    sessions: int
    idle_seconds: float
    backoff_initial: float
    timeout: float

    @classmethod
    def choose(cls, quick: bool) -> Sizes:
        """Return the sizes for a full, ``--quick`` or ``--smoke`` run."""
        from bench.harness import smoke_requested

        if smoke_requested():
            return cls(sessions=20, idle_seconds=1.0, backoff_initial=0.25, timeout=60.0)
        if quick:
            return cls(sessions=100, idle_seconds=5.0, backoff_initial=1.0, timeout=120.0)
        return cls(sessions=1_000, idle_seconds=10.0, backoff_initial=1.0, timeout=300.0)


def rss_kib(pid: int) -> int:
    """Return the resident set size of process *pid* in KiB (``VmRSS``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process *pid* used so far (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class LoadProcess:
    """A :mod:`bench.peer_load` child: its link codes, its ``online`` reports, its commands."""

    def __init__(
        self, reactor: Any, count: int, target: str, daemon_link: str, backoff: float
    ) -> None:
        from twisted.internet import defer
        from twisted.internet.protocol import ProcessProtocol

        from tests.daemons import REPO, child_env

        self.links: list[str] = []
        self.online = 0
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        load = self
        buffer = [b""]

        class Watch(ProcessProtocol):
            def outReceived(self, data: bytes) -> None:
                lines = (buffer[0] + data).split(b"\n")
                buffer[0] = lines.pop()
                for line in lines:
                    load.line_received(line.decode("ascii", "replace"))

            def errReceived(self, data: bytes) -> None:
                sys.stderr.write(data.decode("utf-8", "replace"))

            def processEnded(self, reason: Any) -> None:
                if not load.ready.called:
                    load.ready.errback(RuntimeError(f"peer_load exited: {reason.value}"))
                load.ended.callback(None)

        args = [
            sys.executable,
            "-m",
            "bench.peer_load",
            "--count",
            str(count),
            "--target",
            target,
            "--daemon-link",
            daemon_link,
            "--backoff-initial",
            str(backoff),
        ]
        self.process = reactor.spawnProcess(
            Watch(), sys.executable, args, env=child_env(), path=REPO
        )

    def line_received(self, line: str) -> None:
        """Handle one line of the load's output."""
        if line.startswith("link "):
            self.links.append(line[5:])
        elif line == "ready" and not self.ready.called:
            self.ready.callback(None)
        elif line.startswith("online "):
            self.online = int(line[7:])

    def command(self, text: str) -> None:
        """Send one command line (``dial``, ``quit``)."""
        self.process.write(text.encode("ascii") + b"\n")

    async def stop(self) -> None:
        """Ask the load to quit (closing stdin too) and wait until it exited; kill it if stuck."""
        from twisted.internet import defer

        if not self.ended.called:
            try:
                self.command("quit")
                self.process.closeStdin()
            except Exception:
                pass
            ended: defer.Deferred[None] = defer.Deferred()
            self.ended.addBoth(lambda r: ended.callback(None) if not ended.called else None)
            from twisted.internet import reactor

            ended.addTimeout(20.0, reactor)  # type: ignore[arg-type]
            try:
                await ended
            except defer.TimeoutError:
                self.process.signalProcess("KILL")
                await self.ended


async def add_contacts(daemon: BenchDaemon, links: list[str]) -> None:
    """Add every link as a contact, :data:`ADD_WINDOW` calls at a time."""
    from twisted.internet import defer

    window = defer.DeferredSemaphore(ADD_WINDOW)
    await defer.gatherResults(
        [window.run(daemon.call, "contacts.add", link=link) for link in links],
        consumeErrors=True,
    )


async def idle_cpu_percent(reactor: Any, pid: int, seconds: float) -> float:
    """Return the CPU used by *pid* over *seconds* of wall time, in percent of one core."""
    from twisted.internet.task import deferLater

    before_cpu, before = cpu_seconds(pid), time.monotonic()
    await deferLater(reactor, seconds, lambda: None)
    after_cpu, after = cpu_seconds(pid), time.monotonic()
    return 100.0 * (after_cpu - before_cpu) / (after - before)


async def measure(reactor: Any, sizes: Sizes) -> dict[str, Any]:
    """Run the scale scenario (see the module docstring); return the harness's figures."""
    count = sizes.sessions
    root = tempfile.mkdtemp(prefix="jvs", dir="/tmp")
    os.chmod(root, 0o700)
    daemon = BenchDaemon(reactor, root, "hub")
    load: LoadProcess | None = None
    try:
        await daemon.start(create=True)
        port = daemon.peer_port()
        load = LoadProcess(reactor, count, f"127.0.0.1:{port}", daemon.link, sizes.backoff_initial)
        await load.ready
        await add_contacts(daemon, load.links)
        print(f"scale: {count} contacts added, idle without sessions", file=sys.stderr)
        idle_alone = await idle_cpu_percent(reactor, daemon.pid, sizes.idle_seconds)
        print("scale: dialling", file=sys.stderr)
        rss_before = rss_kib(daemon.pid)
        started = time.monotonic()
        online = wait_online(reactor, daemon, count, sizes.timeout)
        load.command("dial")
        await online
        establish_s = time.monotonic() - started
        rss_after = rss_kib(daemon.pid)
        print(
            f"scale: {count} sessions established, idle for {sizes.idle_seconds:g} s",
            file=sys.stderr,
        )
        idle = await idle_cpu_percent(reactor, daemon.pid, sizes.idle_seconds)

        await daemon.stop()
        daemon.drop_output()
        daemon.process.listen = f"tcp:{port}:interface=127.0.0.1"
        started = time.monotonic()
        await daemon.start(unlock=True)
        unlocked_s = time.monotonic() - started
        await wait_online(reactor, daemon, count, sizes.timeout)
        reconnect_s = time.monotonic() - started
        print(f"scale: {count} sessions back after the restart", file=sys.stderr)
    finally:
        if load is not None:
            await load.stop()
        await daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "figures": {
            "sessions": {"value": count, "unit": "sessions"},
            "establish_all_s": {"value": establish_s, "unit": "s"},
            "establish_per_s": {
                "value": count / establish_s,
                "unit": "sessions/s",
                "ceiling_key": "tls_connect_100conn_per_s",
            },
            "daemon_rss_mib": {"value": rss_after / 1024.0, "unit": "MiB (all established)"},
            "rss_per_session_kib": {
                "value": (rss_after - rss_before) / count,
                "unit": "KiB",
                "goal": GOAL_RSS_KIB,
            },
            "idle_cpu_percent": {
                "value": idle,
                "unit": f"% of a core ({sizes.idle_seconds:g} s, keepalive 30 s)",
                "goal": GOAL_IDLE_CPU_PERCENT,
            },
            "idle_cpu_no_sessions_percent": {
                "value": idle_alone,
                "unit": f"% of a core ({sizes.idle_seconds:g} s, contacts but no session)",
            },
            "restart_unlocked_s": {"value": unlocked_s, "unit": "s"},
            "reconnect_all_s": {"value": reconnect_s, "unit": "s", "goal": GOAL_RECONNECT_S},
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure one daemon holding many peer sessions (memory, idle CPU, reconnection).

    :param quick: 100 sessions instead of 1,000.
    :returns: ``{"figures": {name: {"value", "unit", "goal"?, "ceiling_key"?}}}``.
    """
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, Sizes.choose(quick))))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("scale", run, sys.argv[1:]))
