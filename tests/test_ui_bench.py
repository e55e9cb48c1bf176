"""A smoke run of the terminal UI benchmark (:mod:`bench.ui_bench`) in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.daemons import REPO, child_env

UI_KEYS = {
    "first_screen_ms",
    "first_output_ms",
    "open_conversation_ms",
    "keypress_echo_p50_ms",
    "keypress_echo_p99_ms",
    "history_fill_msgs_per_s",
    "incoming_burst_ms",
    "live_burst_ms",
    "incoming_burst_crowd_ms",
}


class UiBenchSmokeTests(TestCase):
    timeout = 60

    async def test_smoke(self) -> None:
        """When ``python -m bench.ui_bench --smoke`` runs, then it exits 0 and reports every UI
        figure (positive, with a unit, goals on the three measured goals)."""
        directory = tempfile.mkdtemp(prefix="jvbt", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        out_file = os.path.join(directory, "ui.json")
        env = child_env()
        env.pop("JARVIS_BENCH_SMOKE", None)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "bench.ui_bench", "--smoke", "--json-out", out_file],
            env=env,
            path=REPO,
            reactor=reactor,
        )
        self.assertEqual(code, 0, err.decode("utf-8", "replace")[-3000:])
        self.assertIn("keypress_echo_p50_ms", out.decode("utf-8"))
        with open(out_file, encoding="utf-8") as f:
            document = json.load(f)
        self.assertEqual(set(document["figures"]), UI_KEYS)
        for key, figure in document["figures"].items():
            self.assertGreater(figure["value"], 0, key)
            self.assertTrue(figure["unit"], key)
        for key in ("first_screen_ms", "open_conversation_ms", "keypress_echo_p50_ms"):
            self.assertIn("goal", document["figures"][key])
