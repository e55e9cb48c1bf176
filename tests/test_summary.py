"""Tests for :mod:`jarvis.common.summary`: the one connection summary rule."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from jarvis.common.summary import AMBER, GREEN, GREY, RED, summary_level


class SummaryLevelTests(SynchronousTestCase):
    """The colour for how many contacts are online."""

    def test_all_some_none(self) -> None:
        """When all, some or none of three contacts are online, then green, amber, red."""
        self.assertEqual(
            [summary_level(3, 3), summary_level(1, 3), summary_level(0, 3)], [GREEN, AMBER, RED]
        )

    def test_no_contacts_is_green(self) -> None:
        """When there are no contacts, then the summary is green (nothing is down), never red."""
        self.assertEqual(summary_level(0, 0), GREEN)

    def test_grey_is_never_computed(self) -> None:
        """When any counts are summarised, then the level is never grey (the UI's own)."""
        levels = {summary_level(online, total) for total in range(5) for online in range(total + 1)}
        self.assertEqual(levels, {GREEN, AMBER, RED})
        self.assertNotIn(GREY, levels)
