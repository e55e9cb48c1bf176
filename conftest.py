"""pytest configuration: the asyncio reactor, and trial TestCases before plain functions.

Never import the reactor at module level here: pytest-twisted installs it from ``--reactor``.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run without ``--reactor=asyncio``: pytest-twisted would hang instead of failing."""
    reactor = config.getoption("reactor", default=None)
    if reactor != "asyncio":
        raise pytest.UsageError(
            "Jarvis's tests need '--reactor=asyncio' (set in pyproject.toml addopts)"
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run trial TestCases first.

    pytest-twisted leaves the reactor running after a plain test function.
    """
    from twisted.trial.unittest import SynchronousTestCase

    def is_trial(item: pytest.Item) -> bool:
        cls = getattr(item, "cls", None)
        return cls is not None and issubclass(cls, SynchronousTestCase)

    items.sort(key=lambda item: 0 if is_trial(item) else 1)
