"""Jarvis: a terminal, peer-to-peer, end-to-end-encrypted messenger built on Twisted.

This package must stay import-light: importing :mod:`jarvis` never imports or installs a
reactor (see :mod:`jarvis.runtime.reactor` for the one place that does).
"""

__version__ = "0.1.0"
