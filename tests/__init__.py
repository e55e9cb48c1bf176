"""Jarvis's test suite, run by both ``python -m twisted.trial tests`` and ``pytest``.

Importing this package installs the asyncio reactor when none is installed yet, so plain trial
runs on the same reactor as pytest (``--reactor=asyncio``) and as the daemon.
"""

from jarvis.runtime import reactor as _reactor

_reactor.install()
