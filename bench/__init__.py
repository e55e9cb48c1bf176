"""Jarvis's benchmarks: ``python -m bench`` runs them (see :mod:`bench.harness`).

This package is not installed with Jarvis; run it from the repository root.  Nothing here may
be imported by the :mod:`jarvis` package.
"""
