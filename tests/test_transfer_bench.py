"""A smoke run of the file transfer benchmark (``bench/transfer_bench.py``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from twisted.internet import utils
from twisted.trial.unittest import TestCase

from bench import harness
from tests.daemons import short_tempdir

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

KEYS = {
    "cascade_seal_open_mib_per_s",
    "aesgcm_seal_open_mib_per_s",
    "cascade_vs_aesgcm",
    "sha256_mib_per_s",
    "loopback_mib_per_s",
    "tcp_copy_mib_per_s",
    "loopback_vs_tcp_copy",
    "sender_cpu_s_per_gib",
    "receiver_cpu_s_per_gib",
    "sender_peak_rss_mib",
    "receiver_peak_rss_mib",
}


class TransferBenchSmokeTests(TestCase):
    timeout = 180

    async def test_smoke(self) -> None:
        """When the transfer benchmark runs at smoke size, then it sends a file to a child
        receiver and writes every figure, positive, to its JSON file; it is registered."""
        self.assertEqual(harness.BENCHMARKS["transfer"], "bench.transfer_bench")
        out_file = os.path.join(short_tempdir(self), "transfer.json")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(REPOSITORY_ROOT), env.get("PYTHONPATH", "")) if part
        )
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "bench.transfer_bench", "--smoke", "--json-out", out_file],
            env=env,
            path=str(REPOSITORY_ROOT),
        )
        self.assertEqual(code, 0, err.decode("utf-8", "replace"))
        with open(out_file, encoding="utf-8") as f:
            document = json.load(f)
        figures = document["figures"]
        self.assertEqual(set(figures), KEYS)
        for key, figure in figures.items():
            self.assertGreater(figure["value"], 0, key)
        self.assertIn(b"loopback_mib_per_s", out)
