"""How to run the daemon as a child process: the one ``twistd`` command line Jarvis uses.

``python -m twisted.scripts.twistd`` does nothing (that module has no ``__main__`` block), and the
``twistd`` script may not be on ``PATH`` (a virtual environment that is not activated), so Jarvis
runs twistd through the current interpreter.
"""

from __future__ import annotations

import sys

from jarvis import paths


def twistd_argv() -> list[str]:
    """Return the argv prefix that runs twistd with this interpreter."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def detached_daemon_argv(data_dir: str, extra: list[str] | None = None) -> list[str]:
    """Return the argv that starts a detached daemon for *data_dir*.

    The pid file and the text log file go into the data directory.
    """
    return [
        *twistd_argv(),
        "--pidfile",
        paths.pidfile_path(data_dir),
        "--logfile",
        paths.logfile_path(data_dir),
        "jarvis",
        "--data-dir",
        data_dir,
        *(extra or []),
    ]
