"""Smoke run of the mailbox benchmark (``python -m bench mailbox --quick --smoke``)."""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from tests.test_bench import make_results_dir, run_bench

#: Figures a smoke run of the mailbox benchmark must produce.
MAILBOX_KEYS = {
    "queues_created_per_s",
    "queues",
    "deposits_per_s",
    "mailbox_cpu_per_deposit_us",
    "client_cpu_per_deposit_us",
    "db_busy_percent",
    "db_commit_percent",
    "deposits_per_batch",
    "collect_per_s",
    "rss_mib",
    "worst_stall_ms",
}


class MailboxBenchSmokeTests(TestCase):
    timeout = 120

    async def test_mailbox(self) -> None:
        """When the mailbox benchmark runs at smoke size, then it reports deposits/s next to
        the TLS ceiling, queues, RSS and the worst stall, with goals."""
        results = make_results_dir(self)
        out, err, code = await run_bench(
            "mailbox", "--quick", "--smoke", "--results-dir", str(results)
        )
        self.assertEqual(code, 0, err.decode("utf-8", "replace")[-3000:])
        self.assertIn("mailbox", out.decode("utf-8"))
        document = json.loads((results / "mailbox.json").read_text(encoding="utf-8"))
        self.assertIs(document["smoke"], True)
        figures = document["figures"]
        self.assertEqual(set(figures), MAILBOX_KEYS)
        for key, figure in figures.items():
            if key in ("worst_stall_ms", "db_busy_percent", "db_commit_percent"):
                # whole milliseconds of a tiny run may round to nothing
                self.assertGreaterEqual(figure["value"], 0, key)
            else:
                self.assertGreater(figure["value"], 0, key)
        self.assertEqual(figures["deposits_per_s"]["ceiling_key"], "tls_stream_16k_frames_per_s")
        self.assertGreater(figures["deposits_per_s"]["ratio"], 0)
        self.assertEqual(figures["deposits_per_s"]["goal"], 5000)
