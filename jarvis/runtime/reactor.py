"""The one place that installs and checks Jarvis's reactor.

Jarvis runs on :mod:`twisted.internet.asyncioreactor` everywhere (daemon, CLI, UI, tests) so
that asyncio-based parts can share its loop with Twisted code (``Deferred.fromFuture`` and
``Deferred.asFuture``; no part does yet: the asyncio client :mod:`jarvis.client` runs without
Twisted, under a plain ``asyncio.run``).  Nothing else in the
package may call ``asyncioreactor.install()``; code that needs the reactor receives it as a
parameter or calls :func:`install` first.
"""

from __future__ import annotations

import sys
from typing import Any


class WrongReactor(Exception):
    """Jarvis needs the asyncio reactor, but another reactor is already installed.

    Start the daemon with ``twistd --reactor=asyncio jarvis`` or with no ``--reactor`` option at
    all (Jarvis then installs the asyncio reactor itself).
    """

    def __init__(self, name: str) -> None:
        super().__init__(
            f"Jarvis needs the asyncio reactor but the {name} reactor is installed: "
            "run 'twistd --reactor=asyncio jarvis' or leave out --reactor"
        )
        self.name = name


def _reactor_name(reactor: object) -> str:
    return type(reactor).__name__


def install() -> Any:
    """Install the asyncio reactor if no reactor is installed yet, and return it.

    :returns: the running process's reactor, an ``AsyncioSelectorReactor``.
    :raises WrongReactor: if a different reactor was installed before.
    """
    from twisted.internet import asyncioreactor

    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install()
    from twisted.internet import reactor

    return check(reactor)


def check(reactor: object) -> Any:
    """Return *reactor* if it is the asyncio reactor.

    :raises WrongReactor: otherwise, naming the reactor that was found.
    """
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise WrongReactor(_reactor_name(reactor))
    return reactor
