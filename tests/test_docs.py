"""The documentation stays honest: every test docs/security.md cites exists."""

from __future__ import annotations

import importlib
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.daemons import REPO

CITATION = re.compile(r"`tests/(test_\w+)\.py(?:::(\w+))?(?:::(\w+))?`")


class SecurityDocTests(SynchronousTestCase):
    def test_every_cited_test_exists(self) -> None:
        """When docs/security.md cites tests, then each module, class and method exists."""
        with open(os.path.join(REPO, "docs", "security.md"), encoding="utf-8") as f:
            text = f.read()
        citations = CITATION.findall(text)
        self.assertGreater(len(citations), 20)
        missing = []
        for module_name, class_name, method in citations:
            module = importlib.import_module(f"tests.{module_name}")
            if class_name and not hasattr(module, class_name):
                missing.append(f"{module_name}::{class_name}")
            elif method and not hasattr(getattr(module, class_name), method):
                missing.append(f"{module_name}::{class_name}::{method}")
        self.assertEqual(missing, [])

    def test_each_cannot_names_a_test(self) -> None:
        """When the threat model says an attacker cannot do something, then the section cites
        at least one test."""
        with open(os.path.join(REPO, "docs", "security.md"), encoding="utf-8") as f:
            sections = f.read().split("\n## ")
        for section in sections:
            if "Cannot" in section:
                self.assertRegex(section, CITATION, section.splitlines()[0])
