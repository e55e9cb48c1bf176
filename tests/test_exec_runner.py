"""The process runner with real child processes on the real reactor.

Process trees are checked in ``/proc``: a test waits (polling, with a deadline) for the
processes of a run's group to appear before it stops them, and for every one of them to be gone
afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from jarvis.common import errors
from jarvis.exec.runner import ProcessRunner, Run, RunSpec

#: a process tree that ignores SIGTERM: the shell and both sleeps trap it
STUBBORN = "trap '' TERM; sleep 1000 & sleep 1000"


def group_members(pgid: int) -> list[int]:
    """The pids whose process group is *pgid* (zombies included), from ``/proc``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after the last ')'
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid:
            members.append(int(entry))
    return members


async def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> None:
    """Wait until *predicate()* holds, looking every *interval* s; fail after *timeout* s."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while not predicate():
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError(f"condition not reached within {timeout} s")
        await task.deferLater(reactor, interval, lambda: None)


class Recorder:
    """A run observer that keeps everything it is told."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.chunks: list[tuple[str, str]] = []
        self.is_congested = False

    def state_changed(self, run: Run) -> None:
        self.states.append(run.state)

    def output(self, run: Run, stream: str, text: str) -> None:
        self.chunks.append((stream, text))

    def congested(self) -> bool:
        return self.is_congested

    def text(self, stream: str = "stdout") -> str:
        return "".join(t for s, t in self.chunks if s == stream)


def make_runner(testcase: TestCase, **kwargs: Any) -> ProcessRunner:
    runner = ProcessRunner(reactor, **kwargs)
    runner.startService()
    testcase.addCleanup(runner.stopService)
    return runner


class OutputTests(TestCase):
    async def test_streams_and_exit(self) -> None:
        """When a program writes to stdout and stderr and exits 3, then both streams arrive
        apart and the result says exit 3 with the byte counts."""
        runner = make_runner(self)
        seen = Recorder()
        run = runner.start(RunSpec(("sh", "-c", "echo out; echo err >&2; exit 3")), seen)
        result = await run.done
        self.assertEqual((seen.text("stdout"), seen.text("stderr")), ("out\n", "err\n"))
        self.assertEqual((result.exit_code, result.signal), (3, None))
        self.assertEqual((result.stdout_bytes, result.stderr_bytes), (4, 4))
        self.assertFalse(result.timed_out or result.killed or result.cancelled)

    async def test_invalid_utf8_replaced_and_split_sequences_kept(self) -> None:
        """When a program writes invalid UTF-8 and a character split across two writes, then
        the invalid byte becomes U+FFFD and the split character arrives whole."""
        runner = make_runner(self)
        seen = Recorder()
        script = r"printf 'a\377b\303'; sleep 0.05; printf '\251\n'"
        result = await runner.start(RunSpec(("sh", "-c", script)), seen).done
        self.assertEqual(seen.text(), "a\ufffdb\u00e9\n")
        self.assertEqual(result.exit_code, 0)

    async def test_output_cap_keeps_prefix_in_order_and_counts_rest(self) -> None:
        """When a program prints far more than the output cap, then exactly the first cap bytes
        arrive, in order, and the rest is counted as dropped."""
        runner = make_runner(self)
        seen = Recorder()
        cap = 100_000
        result = await runner.start(RunSpec(("seq", "1", "100000"), output_cap=cap), seen).done
        expected = "".join(f"{i}\n" for i in range(1, 100001))
        self.assertEqual(seen.text(), expected[:cap])
        self.assertEqual(result.kept_bytes, cap)
        self.assertEqual(result.dropped_bytes, len(expected) - cap)

    async def test_output_beyond_cap_read_slowly(self) -> None:
        """When a program floods far beyond its cap for a second, then the runner reads the
        excess at a throttled pace (one read per DISCARD_PAUSE): the program is held back by
        its pipe instead of keeping the reactor busy (unthrottled, yes writes hundreds of MB)."""
        runner = make_runner(self)
        result = await runner.start(RunSpec(("yes",), output_cap=1000, timeout=1.0)).done
        self.assertEqual(result.kept_bytes, 1000)
        self.assertTrue(result.timed_out)
        # 1 s / 10 ms = 100 reads of at most 64 KiB (one pipe buffer) each, far less in practice
        self.assertLess(result.dropped_bytes, 100 * 64 * 1024)

    async def test_unknown_program_refused(self) -> None:
        """When the program does not exist, then start refuses with NotFound and nothing
        is queued."""
        runner = make_runner(self)
        self.assertRaises(errors.NotFound, runner.start, RunSpec(("no-such-program-xyz",)))
        self.assertEqual(runner.listing()["runs"], [])

    async def test_fifty_concurrent_floods_arrive_whole(self) -> None:
        """When 50 programs print as fast as they can at once, then each run's output
        arrives complete up to its cap and in order."""
        runner = make_runner(self, limit=50)
        cap = 200_000
        recorders = [Recorder() for _ in range(50)]
        runs = [runner.start(RunSpec(("seq", "1", "60000"), output_cap=cap), r) for r in recorders]
        await defer.gatherResults([r.done for r in runs])
        expected = "".join(f"{i}\n" for i in range(1, 60001))[:cap]
        for recorder in recorders:
            self.assertEqual(recorder.text(), expected)
        self.assertEqual(runner.peak_running, 50)


class TerminalTests(TestCase):
    async def test_pty_sees_a_terminal(self) -> None:
        """When a run asks for a pseudo-terminal, then the program's stdout is a terminal."""
        runner = make_runner(self)
        seen = Recorder()
        script = "test -t 1 && echo tty || echo notty"
        await runner.start(RunSpec(("sh", "-c", script), pty=True), seen).done
        self.assertEqual(seen.text().strip(), "tty")

    async def test_pty_has_a_size(self) -> None:
        """When a run has a pseudo-terminal, then it is 80 columns by 24 rows (not 0x0)."""
        runner = make_runner(self)
        seen = Recorder()
        # the program waits for its input, which the runner writes after setting the size
        spec = RunSpec(("sh", "-c", "read x; stty size"), pty=True, stdin=b"go\n")
        await runner.start(spec, seen).done
        self.assertEqual(seen.text().strip().splitlines()[-1], "24 80")

    async def test_pipes_are_not_a_terminal(self) -> None:
        """When a run has no pseudo-terminal, then the program's stdout is not a terminal."""
        runner = make_runner(self)
        seen = Recorder()
        await runner.start(RunSpec(("sh", "-c", "test -t 1 && echo tty || echo notty")), seen).done
        self.assertEqual(seen.text().strip(), "notty")


class StopTests(TestCase):
    timeout = 30

    async def _stubborn(self, runner: ProcessRunner, **kwargs: Any) -> Run:
        run = runner.start(RunSpec(("sh", "-c", STUBBORN), grace=0.5, **kwargs))
        await poll(lambda: run.pid is not None and len(group_members(run.pid)) >= 3, 10)
        return run

    async def _assert_tree_gone(self, run: Run) -> None:
        assert run.pid is not None
        # SIGKILL went out at the end of the grace period; the kernel (and init, for the
        # orphaned sleep) finish the job shortly after
        await poll(lambda: group_members(run.pid or 0) == [], 5)
        self.assertFalse(run.group_alive())

    async def test_timeout_kills_tree_ignoring_sigterm(self) -> None:
        """When a process tree that ignores SIGTERM outlives its timeout, then after the grace
        period it is killed, grandchild included, and the result says timed out by SIGKILL."""
        runner = make_runner(self)
        run = await self._stubborn(runner, timeout=0.5)
        members = group_members(run.pid or 0)
        result = await run.done
        self.assertTrue(result.timed_out)
        self.assertEqual(result.signal, "SIGKILL")
        await self._assert_tree_gone(run)
        self.assertEqual([p for p in members if os.path.exists(f"/proc/{p}")], [])

    async def test_cancel_kills_tree_ignoring_sigterm(self) -> None:
        """When a run whose tree ignores SIGTERM is cancelled, then its whole group is gone
        after the grace period."""
        runner = make_runner(self)
        run = await self._stubborn(runner, timeout=600)
        run.kill(cancelled=True)
        self.assertEqual(run.state, "stopping")
        result = await run.done
        self.assertTrue(result.cancelled)
        self.assertEqual(result.signal, "SIGKILL")
        await self._assert_tree_gone(run)

    async def test_background_job_does_not_outlive_run(self) -> None:
        """When a program exits leaving a background job, then the job is terminated too."""
        runner = make_runner(self)
        seen = Recorder()
        script = "sleep 1000 >/dev/null 2>&1 & echo $!"
        run = runner.start(RunSpec(("sh", "-c", script), grace=0.5), seen)
        result = await run.done
        self.assertEqual(result.exit_code, 0)
        job = int(seen.text())
        await poll(lambda: not os.path.exists(f"/proc/{job}"), 5)

    async def test_stop_service_kills_everything(self) -> None:
        """When the runner stops (daemon shutdown), then running trees are killed and queued
        runs are cancelled; it fires once they are gone."""
        runner = ProcessRunner(reactor, limit=1)
        runner.startService()
        run = await self._stubborn(runner, timeout=600)
        queued = runner.start(RunSpec(("true",)))
        self.assertEqual(queued.state, "queued")
        await runner.stopService()
        self.assertEqual(run.state, "ended")
        self.assertTrue((await queued.done).cancelled)
        self.assertIsNone(queued.pid)
        await self._assert_tree_gone(run)
        self.assertRaises(errors.DaemonBusy, runner.start, RunSpec(("true",)))


class LimitTests(TestCase):
    async def test_concurrency_cap_and_queue_order(self) -> None:
        """When five runs are started with a cap of two, then at most two run at once, the
        others show as queued and start in order, and a queued run can be cancelled."""
        runner = make_runner(self, limit=2)
        peak = []
        started: list[int] = []

        class Watch(Recorder):
            def state_changed(self, run: Run) -> None:
                if run.state == "running":
                    started.append(run.id)
                    peak.append(runner.running_count())

        runs = [runner.start(RunSpec(("sh", "-c", "sleep 0.1")), Watch()) for _ in range(5)]
        self.assertEqual(runner.listing()["queued"], 3)
        await poll(lambda: runs[1].state == "running", 5)
        self.assertEqual([r.state for r in runs], ["running"] * 2 + ["queued"] * 3)
        runs[3].kill(cancelled=True)
        results = await defer.gatherResults([r.done for r in runs])
        self.assertLessEqual(max(peak), 2)
        self.assertEqual(started, [runs[0].id, runs[1].id, runs[2].id, runs[4].id])
        self.assertTrue(results[3].cancelled)
        self.assertIsNone(results[3].pid)

    async def test_spawns_paced_one_per_turn(self) -> None:
        """When several runs get a slot at once, then they are spawned one per reactor turn
        (a burst does not stall the reactor for the sum of the spawns), and one cancelled
        before its turn ends without a process and frees its slot."""
        runner = make_runner(self, limit=10)
        runs = [runner.start(RunSpec(("true",))) for _ in range(3)]
        self.assertEqual([r.pid for r in runs], [None, None, None])
        runs[2].kill(cancelled=True)
        # the first spawn comes a turn or two later (the slot is granted through Deferreds);
        # at the first turn that spawned anything, exactly one was spawned
        spawned = 0
        for _ in range(50):
            await task.deferLater(reactor, 0, lambda: None)
            spawned = sum(r.pid is not None for r in runs)
            if spawned:
                break
        self.assertEqual(spawned, 1)
        results = await defer.gatherResults([r.done for r in runs])
        self.assertEqual([r.exit_code for r in results], [0, 0, None])
        self.assertTrue(results[2].cancelled)
        self.assertEqual(runner.running_count(), 0)

    async def test_queue_bound_refuses(self) -> None:
        """When max_queued runs already wait, then another start is refused as busy."""
        runner = make_runner(self, limit=1, max_queued=1)
        first = runner.start(RunSpec(("sh", "-c", "sleep 0.1")))
        second = runner.start(RunSpec(("true",)))
        self.assertRaises(errors.DaemonBusy, runner.start, RunSpec(("true",)))
        await defer.gatherResults([first.done, second.done])
        self.assertEqual(runner.refused_total, 1)

    async def test_congested_observer_pauses_output(self) -> None:
        """When the observer is congested, then the runner stops reading (the program blocks on
        its pipe, output stays bounded) and resumes once it is not; all output arrives."""
        runner = make_runner(self)
        seen = Recorder()
        seen.is_congested = True
        run = runner.start(RunSpec(("seq", "1", "200000"), output_cap=10_000_000), seen)
        await poll(lambda: run.paused, 5)
        held = run.stdout_bytes
        # while paused the program cannot get far ahead: at most a pipe buffer or two
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(run.stdout_bytes, held)
        self.assertEqual(run.state, "running")
        seen.is_congested = False
        result = await run.done
        self.assertEqual(seen.text(), "".join(f"{i}\n" for i in range(1, 200001)))
        self.assertEqual(result.exit_code, 0)
