"""Tests for :mod:`jarvis.runtime.reactor`."""

from __future__ import annotations

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jarvis.runtime import reactor as jreactor


class InstallTests(SynchronousTestCase):
    def test_installed_is_asyncio(self) -> None:
        """When the test package is imported, then the installed reactor is the asyncio one."""
        self.assertIsInstance(jreactor.install(), AsyncioSelectorReactor)

    def test_other_reactor_refused(self) -> None:
        """When a different reactor is checked, then WrongReactor names it in one line."""
        exc = self.assertRaises(jreactor.WrongReactor, jreactor.check, Clock())
        self.assertIn("Clock", str(exc))
        self.assertNotIn("\n", str(exc))
