"""Tests for the benchmark harness (:mod:`bench.harness`) and smoke runs of every benchmark."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, utils
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from bench import harness
from bench.harness import Figure, Outcome

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

CEILING_KEYS = {
    "tcp_rtt_1conn_per_s",
    "tcp_rtt_1conn_p50_us",
    "tcp_rtt_1conn_p99_us",
    "tcp_rtt_100conn_per_s",
    "tcp_connect_100conn_per_s",
    "tcp_stream_200b_frames_per_s",
    "tcp_stream_200b_mib_per_s",
    "tcp_stream_16k_frames_per_s",
    "tcp_stream_16k_mib_per_s",
    "tls_rtt_1conn_per_s",
    "tls_rtt_1conn_p50_us",
    "tls_rtt_1conn_p99_us",
    "tls_rtt_100conn_per_s",
    "tls_connect_100conn_per_s",
    "tls_stream_200b_frames_per_s",
    "tls_stream_200b_mib_per_s",
    "tls_stream_16k_frames_per_s",
    "tls_stream_16k_mib_per_s",
    "tls_unbuffered_rtt_1conn_per_s",
    "tls_unbuffered_rtt_1conn_p50_us",
    "tls_unbuffered_rtt_1conn_p99_us",
}


#: Figures of each benchmark (besides the ceiling) that a smoke run must produce.
BENCHMARK_KEYS = {
    "lan": {
        "lan_session_s",
        "lan_session_max_s",
        "idle_cpu_discovery_on_pct",
        "idle_cpu_discovery_off_pct",
        "discovery_idle_cost_pct",
    },
    "group": {
        "event_p50_ms",
        "event_p99_ms",
        "last_member_p50_ms",
        "last_member_p99_ms",
        "group_msgs_per_s",
        "one_to_one_p50_ms",
        "one_to_one_p99_ms",
        "burst_cpu_ms_per_msg",
        "sender_cpu_ms_per_msg",
        "rss_mib_per_member",
    },
    "group50": {
        "members",
        "fanout_p50_ms",
        "fanout_p99_ms",
        "group_msgs_per_s",
        "group_cpu_ms_per_msg",
        "one_to_one_msgs_per_s",
        "one_to_one_cpu_ms_per_msg",
        "group_vs_one_to_one_cpu",
        "store_bytes_per_group_msg",
        "outbox_body_bytes_per_group_msg",
    },
    "files": {
        "files_mib_per_s",
        "tls_stream_16k_mib_per_s",
        "tls_batching_stream_16k_mib_per_s",
        "files_vs_tls_ceiling",
        "offer_hash_s",
        "sender_cpu_s_per_gib",
        "receiver_cpu_s_per_gib",
        "sender_sys_cpu_s_per_gib",
        "receiver_sys_cpu_s_per_gib",
        "sender_switches_per_mib",
        "receiver_switches_per_mib",
        "sender_rss_growth_mib",
        "receiver_rss_growth_mib",
        "sender_peak_rss_mib",
        "receiver_peak_rss_mib",
        "chat_p50_ms",
        "chat_p99_ms",
    },
    "folder": {
        "folder_files",
        "folder_mib",
        "folder_mib_per_s",
        "folder_files_per_s",
        "folder_again_mib_per_s",
    },
    "exec": {
        "line_latency_p50_ms",
        "line_latency_p99_ms",
        "flood_runs",
        "flood_status_p50_ms",
        "flood_status_p99_ms",
        "flood_status_max_ms",
        "flood_status_samples",
        "flood_stall_ms",
        "flood_kept_mib",
        "flood_dropped_mib",
        "setup_stall_ms",
        "load_avg_1min",
        "true_runs_per_s",
        "raw_spawn_true_per_s",
        "true_stall_ms",
        "hook_flood_messages",
        "hook_flood_delivered",
        "hook_flood_msgs_per_s",
        "hook_flood_peak_processes",
        "hook_flood_hook_runs",
        "hook_flood_dropped_events",
    },
    "store": {
        "persist_msgs_per_s",
        "msgs_per_transaction",
        "history_page_ms",
        "stall_persist_ms",
        "stall_history_ms",
        "unlock_ms",
        "stall_unlock_ms",
    },
    "ipc": {
        "status_rtt_p50_us",
        "status_rtt_p99_us",
        "status_rps_10_clients",
        "echo_rtt_p50_us",
        "echo_rtt_p99_us",
        "echo_rps_10_clients",
    },
    "messaging": {
        "throughput_msgs_per_s",
        "latency_p50_us",
        "latency_p99_us",
        "sender_lag_worst_ms",
        "receiver_lag_worst_ms",
    },
    "mailbox_path": {
        "latency_p50_us",
        "latency_p99_us",
        "grace_s",
        "sender_lag_worst_ms",
        "receiver_lag_worst_ms",
    },
    "scale": {
        "sessions",
        "establish_all_s",
        "establish_per_s",
        "daemon_rss_mib",
        "rss_per_session_kib",
        "idle_cpu_percent",
        "idle_cpu_no_sessions_percent",
        "restart_unlocked_s",
        "reconnect_all_s",
    },
}

#: Figures that may legitimately be zero (a stall or lag that did not happen, no CPU tick).
MAY_BE_ZERO = {
    "store_bytes_per_group_msg",
    # 16 MiB at smoke size can take less than a clock tick of kernel time
    "sender_sys_cpu_s_per_gib",
    "receiver_sys_cpu_s_per_gib",
    "idle_cpu_discovery_on_pct",
    "idle_cpu_discovery_off_pct",
    "discovery_idle_cost_pct",
    "flood_dropped_mib",
    "hook_flood_dropped_events",
    "load_avg_1min",
    "stall_persist_ms",
    "stall_history_ms",
    "stall_unlock_ms",
    "sender_lag_worst_ms",
    "receiver_lag_worst_ms",
    "idle_cpu_percent",
    "idle_cpu_no_sessions_percent",
}


def run_bench(*args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """Run ``python -m bench ARGS`` from the repository root without blocking the reactor."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPOSITORY_ROOT), env.get("PYTHONPATH", "")) if part
    )
    env.pop(harness.SMOKE_ENV, None)
    return utils.getProcessOutputAndValue(
        sys.executable, ["-m", "bench", *args], env=env, path=str(REPOSITORY_ROOT)
    )


def make_results_dir(test: SynchronousTestCase) -> Path:
    """Return a fresh directory for results, removed after *test*."""
    directory = Path(tempfile.mkdtemp(prefix="jarvis-bench-test-"))
    test.addCleanup(shutil.rmtree, directory, True)
    return directory


class CeilingSmokeRunTests(TestCase):
    """``python -m bench ceiling --quick --smoke`` end to end, in a subprocess."""

    timeout = 60

    async def test_table_and_json(self) -> None:
        """When the ceiling runs at smoke size, then it exits 0, prints the table, writes JSON."""
        results = make_results_dir(self)
        out, err, code = await run_bench(
            "ceiling", "--quick", "--smoke", "--results-dir", str(results)
        )
        self.assertEqual(code, 0, err.decode("utf-8", "replace"))
        table = out.decode("utf-8")
        self.assertIn("benchmark", table.splitlines()[0])
        for key in ("tcp_rtt_1conn_per_s", "tls_stream_16k_mib_per_s", "tls_rtt_1conn_p50_us"):
            self.assertIn(key, table)
        document = json.loads((results / "ceiling.json").read_text(encoding="utf-8"))
        self.assertEqual(document["name"], "ceiling")
        self.assertIs(document["quick"], True)
        self.assertIs(document["smoke"], True)
        self.assertEqual(document["machine"]["cpu_count"], os.cpu_count())
        self.assertEqual(
            set(document["versions"]), {"jarvis", "twisted", "pyopenssl", "cryptography", "urwid"}
        )
        self.assertEqual(set(document["figures"]), CEILING_KEYS)
        for key, figure in document["figures"].items():
            self.assertGreater(figure["value"], 0, key)
            self.assertTrue(figure["unit"], key)


class BenchmarkSmokeRunTests(TestCase):
    """``python -m bench NAME --quick --smoke`` for each benchmark besides the ceiling."""

    timeout = 90

    async def check_smoke(self, name: str) -> None:
        """Run *name* at smoke size and check its results file against :data:`BENCHMARK_KEYS`."""
        results = make_results_dir(self)
        out, err, code = await run_bench(name, "--quick", "--smoke", "--results-dir", str(results))
        self.assertEqual(code, 0, err.decode("utf-8", "replace")[-3000:])
        self.assertIn(name, out.decode("utf-8"))
        document = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
        self.assertEqual(document["name"], name)
        self.assertIs(document["smoke"], True)
        self.assertEqual(set(document["figures"]), BENCHMARK_KEYS[name])
        for key, figure in document["figures"].items():
            if key in MAY_BE_ZERO:
                self.assertGreaterEqual(figure["value"], 0, key)
            else:
                self.assertGreater(figure["value"], 0, key)
            self.assertTrue(figure["unit"], key)
            if "ceiling_key" in figure:
                self.assertGreater(figure["ratio"], 0, key)

    async def test_store(self) -> None:
        """When the store benchmark runs at smoke size, then it reports persistence, paging,
        unlock time and the stalls, with goals."""
        await self.check_smoke("store")

    async def test_ipc(self) -> None:
        """When the API benchmark runs at smoke size, then every API figure has its echo ratio."""
        await self.check_smoke("ipc")

    async def test_messaging(self) -> None:
        """When the messaging benchmark runs two daemons at smoke size, then it reports
        throughput, latency and lag with ratios to the ceiling."""
        await self.check_smoke("messaging")

    async def test_mailbox_path(self) -> None:
        """When the mailbox-path benchmark runs a mailbox and two daemons that cannot dial each
        other at smoke size, then it reports the latency through the mailbox with ratios to
        the ceiling, the most grace while a dial is in flight and both daemons' lag."""
        await self.check_smoke("mailbox_path")

    async def test_lan(self) -> None:
        """When the LAN benchmark runs two daemons in network namespaces at smoke size, then it
        reports the time to a live session and discovery's idle CPU cost, with goals."""
        from tests import netns

        reason = netns.unavailable()
        if reason is not None:
            raise SkipTest(reason)
        await self.check_smoke("lan")

    async def test_exec(self) -> None:
        """When the exec benchmark runs at smoke size, then it reports line latency, the
        flood's status round trips and stall, true runs/s against raw spawns and the hooked
        message flood."""
        await self.check_smoke("exec")

    async def test_group(self) -> None:
        """When the group benchmark runs four daemons in one group at smoke size, then it
        reports the send-to-event latency per member and to the last member, the burst's
        group messages/s and the same run's 1:1 latency."""
        await self.check_smoke("group")

    async def test_group50(self) -> None:
        """When the large-group benchmark runs a real sender with six simulated members at
        smoke size, then it reports the fan-out time to the last acknowledgement, CPU per group
        message next to the same run's 1:1 messages/s and CPU per message (with a ratio to the
        ceiling), and the store's growth per group message."""
        await self.check_smoke("group50")

    async def test_files(self) -> None:
        """When the file benchmark sends a file between two daemons at smoke size, then it
        reports throughput next to the same run's TLS ceiling, CPU (and its kernel part),
        context switches and RSS growth per side and chat latency during the transfer."""
        await self.check_smoke("files")

    async def test_folder(self) -> None:
        """When the folder benchmark sends a folder of files between two daemons at smoke
        size, then it reports the folder's files and size and its MiB/s and files/s, and the
        MiB/s of the same folder sent again with the first one listed (every file of both
        compared)."""
        await self.check_smoke("folder")

    def test_thread_figures_of_a_process(self) -> None:
        """When this process's CPU split and context switches are read twice around some
        work and a sleep, then user and system time are each never negative and do not go
        back, and the switches grow (the sleep is one)."""
        import time

        from bench.files_bench import proc_cpu_split, proc_switches

        user, system = proc_cpu_split(os.getpid())
        switches = proc_switches(os.getpid())
        sum(i * i for i in range(200_000))
        time.sleep(0.02)
        user2, system2 = proc_cpu_split(os.getpid())
        self.assertGreaterEqual(min(user, system), 0.0)
        self.assertGreaterEqual((user2, system2 >= system), (user, True))
        self.assertGreater(proc_switches(os.getpid()), switches)

    async def test_scale(self) -> None:
        """When the scale benchmark runs a daemon with 20 simulated peers, then it reports
        memory, idle CPU and reconnection figures."""
        await self.check_smoke("scale")


class ListTests(TestCase):
    """``python -m bench --list``."""

    async def test_lists_registry(self) -> None:
        """When --list is given, then every registered benchmark is printed with its module."""
        out, err, code = await run_bench("--list")
        self.assertEqual(code, 0, err.decode("utf-8", "replace"))
        text = out.decode("utf-8")
        for name, module in harness.BENCHMARKS.items():
            self.assertIn(name, text)
            self.assertIn(module, text)


class UnknownNameTests(TestCase):
    """Asking for a benchmark that is not registered."""

    async def test_usage_error(self) -> None:
        """When an unknown name is given, then the harness exits 2 and names it."""
        _out, err, code = await run_bench("no-such-benchmark")
        self.assertEqual(code, 2)
        self.assertIn(b"no-such-benchmark", err)


class PlanTests(SynchronousTestCase):
    """Which benchmarks run, in which order."""

    def setUp(self) -> None:
        registry = {"ceiling": "bench.ceiling", "store": "bench.store_bench", "ui": "bench.ui"}
        self.patch(harness, "BENCHMARKS", registry)

    def test_ceiling_first(self) -> None:
        """When another benchmark is named, then the ceiling runs first in the same invocation."""
        self.assertEqual(harness.plan(["store"]), ["ceiling", "store"])
        self.assertEqual(harness.plan(["store", "ceiling"]), ["ceiling", "store"])

    def test_ceiling_alone(self) -> None:
        """When only the ceiling is named, then only the ceiling runs."""
        self.assertEqual(harness.plan(["ceiling"]), ["ceiling"])

    def test_default_all(self) -> None:
        """When no name is given, then every registered benchmark runs, ceiling first."""
        self.assertEqual(harness.plan([]), ["ceiling", "store", "ui"])

    def test_unknown(self) -> None:
        """When a name is not registered, then plan raises KeyError naming it."""
        error = self.assertRaises(KeyError, harness.plan, ["nope"])
        self.assertEqual(error.args, ("nope",))


class MissingModuleTests(SynchronousTestCase):
    """A registered benchmark whose module is not written yet."""

    def test_reported_missing(self) -> None:
        """When the module does not exist, then the outcome is 'missing' and nothing runs."""
        outcome = harness.run_in_subprocess(
            "ghost", "bench.no_such_module", quick=True, smoke=True, timeout=5
        )
        self.assertEqual(outcome.status, "missing")
        self.assertIn("bench.no_such_module", outcome.error)
        self.assertIn("missing", harness.format_table([outcome]))


class FigureReadingTests(SynchronousTestCase):
    """Reading what a benchmark's run() returned."""

    def test_full_and_bare(self) -> None:
        """When figures are dicts or bare numbers, then both read as Figures."""
        figures = harness.read_figures(
            {
                "figures": {
                    "a": {"value": 3, "unit": "ops/s", "goal": 2, "ceiling_key": "c"},
                    "b": 1.5,
                }
            }
        )
        self.assertEqual(figures["a"], Figure(value=3.0, unit="ops/s", goal=2.0, ceiling_key="c"))
        self.assertEqual(figures["b"], Figure(value=1.5, unit=""))

    def test_garbage_refused(self) -> None:
        """When a figure is a string or there are no figures, then BenchmarkFailed is raised."""
        self.assertRaises(harness.BenchmarkFailed, harness.read_figures, {"figures": {"a": "x"}})
        self.assertRaises(harness.BenchmarkFailed, harness.read_figures, {"figures": {}})
        self.assertRaises(harness.BenchmarkFailed, harness.read_figures, [1])


def make_outcomes() -> tuple[Outcome, Outcome]:
    """Return a ceiling outcome and a store outcome whose figure compares with it."""
    ceiling = Outcome(
        name="ceiling",
        status="ok",
        figures={"tls_rtt_1conn_per_s": Figure(value=4000.0, unit="round trips/s")},
    )
    store = Outcome(
        name="store",
        status="ok",
        figures={
            "send_per_s": Figure(
                value=1000.0, unit="msgs/s", goal=500.0, ceiling_key="tls_rtt_1conn_per_s"
            ),
            "open_ms": Figure(value=12.0, unit="ms"),
        },
    )
    return ceiling, store


class RatioTests(SynchronousTestCase):
    """Figures compared with the ceiling measured in the same run."""

    def test_ratio_in_document(self) -> None:
        """When a figure names a ceiling key, then the JSON has the ceiling value and the ratio."""
        ceiling, store = make_outcomes()
        document: dict[str, Any] = harness.result_document(
            store, quick=True, smoke=False, ceiling=ceiling
        )
        self.assertEqual(document["figures"]["send_per_s"]["ceiling_value"], 4000.0)
        self.assertEqual(document["figures"]["send_per_s"]["ratio"], 0.25)
        self.assertNotIn("ratio", document["figures"]["open_ms"])
        self.assertEqual(document["ceiling"]["figures"]["tls_rtt_1conn_per_s"]["value"], 4000.0)
        json.dumps(document)

    def test_ratio_in_table(self) -> None:
        """When the table is printed with the ceiling, then the ratio column shows 0.25."""
        ceiling, store = make_outcomes()
        table = harness.format_table([ceiling, store], ceiling)
        line = next(row for row in table.splitlines() if "send_per_s" in row)
        self.assertTrue(line.endswith("0.25"), line)
        self.assertIn("4,000", line)

    def test_no_ceiling(self) -> None:
        """When the ceiling did not run, then there is no ratio and no ceiling block."""
        _, store = make_outcomes()
        document = harness.result_document(store, quick=False, smoke=False, ceiling=None)
        self.assertNotIn("ratio", document["figures"]["send_per_s"])
        self.assertIsNone(document["ceiling"])


class OwnCeilingTests(SynchronousTestCase):
    """A benchmark that measures its own ceiling (the API's line echo)."""

    def test_own_figure_as_ceiling(self) -> None:
        """When a ceiling_key is not in the ceiling but in the benchmark's own figures, then the
        ratio is taken from the benchmark's own figure."""
        ceiling, _ = make_outcomes()
        ipc = Outcome(
            name="ipc",
            status="ok",
            figures={
                "status_rtt_p50_us": Figure(value=300.0, unit="µs", ceiling_key="echo_rtt_p50_us"),
                "echo_rtt_p50_us": Figure(value=150.0, unit="µs"),
            },
        )
        document = harness.result_document(ipc, quick=True, smoke=False, ceiling=ceiling)
        self.assertEqual(document["figures"]["status_rtt_p50_us"]["ceiling_value"], 150.0)
        self.assertEqual(document["figures"]["status_rtt_p50_us"]["ratio"], 2.0)
        alone = harness.result_document(ipc, quick=True, smoke=False, ceiling=None)
        self.assertEqual(alone["figures"]["status_rtt_p50_us"]["ratio"], 2.0)
        line = next(
            row for row in harness.format_table([ipc], None).splitlines() if "status_rtt" in row
        )
        self.assertTrue(line.endswith("2.00"), line)


class WriteResultTests(SynchronousTestCase):
    """Writing bench/results/<name>.json."""

    def test_written_as_named(self) -> None:
        """When a document is written, then <dir>/<name>.json holds it and no temporary is left."""
        results = make_results_dir(self)
        ceiling, _ = make_outcomes()
        document = harness.result_document(ceiling, quick=True, smoke=False, ceiling=None)
        path = harness.write_result(document, results)
        self.assertEqual(path, results / "ceiling.json")
        self.assertEqual(json.loads(path.read_text(encoding="utf-8")), document)
        self.assertEqual(sorted(p.name for p in results.iterdir()), ["ceiling.json"])


class FilesBesideWormholeTests(SynchronousTestCase):
    """How ``bench.files_bench --wormhole-venv DIR --rounds N`` puts its figures together."""

    def jarvis_round(self, mib_per_s: float, sender_rss: float) -> dict[str, Any]:
        return {
            "files_mib_per_s": {"value": mib_per_s, "unit": "MiB/s"},
            "sender_peak_rss_mib": {"value": sender_rss, "unit": "MiB"},
            "receiver_peak_rss_mib": {"value": 66.0, "unit": "MiB"},
        }

    def wormhole_round(self, mib_per_s: float) -> dict[str, float]:
        return {
            "wormhole_mib_per_s": mib_per_s,
            "wormhole_sender_cpu_s_per_gib": 3.0,
            "wormhole_receiver_cpu_s_per_gib": 4.0,
            "wormhole_sender_peak_rss_mib": 60.0,
            "wormhole_receiver_peak_rss_mib": 55.0,
        }

    def test_ratios_are_of_the_same_round(self) -> None:
        """When a round has Jarvis's and magic-wormhole's figures, then the speed ratio is
        Jarvis's MiB/s over wormhole's with goal 1.0, and each side's peak RSS is divided by
        the matching wormhole end's."""
        from bench.files_bench import side_by_side

        figures = side_by_side(self.jarvis_round(300.0, 72.0), self.wormhole_round(200.0))
        self.assertEqual(figures["files_vs_wormhole"]["value"], 1.5)
        self.assertEqual(figures["files_vs_wormhole"]["goal"], 1.0)
        self.assertEqual(figures["sender_rss_vs_wormhole"]["value"], 72.0 / 60.0)
        self.assertEqual(figures["receiver_rss_vs_wormhole"]["value"], 66.0 / 55.0)
        self.assertEqual(figures["wormhole_receiver_cpu_s_per_gib"]["value"], 4.0)
        self.assertEqual(figures["files_mib_per_s"]["value"], 300.0)

    def test_rounds_give_medians_of_each_round_ratio(self) -> None:
        """When three rounds ran, then each figure is the median of its three values, the
        ratio included (the median of the rounds' ratios, not a ratio of medians)."""
        from bench.files_bench import median_figures, side_by_side

        rounds = [
            side_by_side(self.jarvis_round(300.0, 72.0), self.wormhole_round(200.0)),  # 1.5
            side_by_side(self.jarvis_round(330.0, 73.0), self.wormhole_round(330.0)),  # 1.0
            side_by_side(self.jarvis_round(320.0, 71.0), self.wormhole_round(160.0)),  # 2.0
        ]
        merged = median_figures(rounds)
        self.assertEqual(merged["files_mib_per_s"]["value"], 320.0)
        self.assertEqual(merged["wormhole_mib_per_s"]["value"], 200.0)
        self.assertEqual(merged["files_vs_wormhole"]["value"], 1.5)
        self.assertEqual(merged["sender_peak_rss_mib"]["value"], 72.0)
        self.assertIn("median of 3 rounds", merged["files_vs_wormhole"]["unit"])
        self.assertIs(median_figures(rounds[:1]), rounds[0])
