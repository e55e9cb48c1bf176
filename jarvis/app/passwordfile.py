"""Read a password from a file or stdin, for the CLI and the daemon's ``--password-file``.

Shared by the composition roots (:mod:`jarvis.app.cli`, :mod:`jarvis.app.daemon`) so that neither
imports
the other.  It must not prompt (the CLI does that) nor log what it reads.
"""

from __future__ import annotations

import sys
from typing import Any

from jarvis.common import errors


def read_password_file(path: str, stdin: Any = None) -> str:
    """Return the first line of *path* without its line ending (``-``: one line of stdin).

    :raises errors.InvalidInput: if the file cannot be read.
    """
    if path == "-":
        line = (stdin or sys.stdin).readline()
    else:
        try:
            with open(path, encoding="utf-8") as f:
                line = f.readline()
        except OSError as e:
            raise errors.InvalidInput(f"cannot read the password file {path}: {e.strerror}")
    return line.rstrip("\r\n")
