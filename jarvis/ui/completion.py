"""Path completion for ``/file PATH`` in the input line (Tab), without urwid.

:func:`file_argument` finds the path being typed, :func:`listing` reads the folder it names
(blocking: the controller runs it off the reactor thread) and :func:`complete` extends the typed
path to the longest prefix the matching names share, adding ``/`` after a folder.
:func:`matching` expands a ``/file`` pattern such as ``~/photos/*.jpg`` (blocking too).  Names are
shown through :func:`~jarvis.common.textsafe.terminal_safe`; a name that would not survive that (an
escape or control character) is completed as typed, never inserted raw into the input line.
"""

from __future__ import annotations

import glob
import os

from jarvis.common.textsafe import terminal_safe

#: The command whose argument is completed.
FILE_COMMAND = "/file "
#: Most candidate names shown on the status line when several match.
SHOWN_CANDIDATES = 12


def file_argument(text: str) -> str | None:
    """Return the path typed after ``/file `` in *text*, or ``None`` if *text* is not one."""
    if not text.startswith(FILE_COMMAND):
        return None
    return text[len(FILE_COMMAND) :]


def listing_directory(typed: str) -> str:
    """Return the folder to list for the typed path (``~`` expanded; ``.`` if none typed)."""
    head = os.path.dirname(typed)
    return os.path.expanduser(head) if head else "."


def listing(directory: str) -> list[tuple[str, bool]]:
    """Return ``(name, is_folder)`` for each entry of *directory* (blocking; ``[]`` on error)."""
    try:
        with os.scandir(directory) as entries:
            found = []
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                found.append((entry.name, is_dir))
            return found
    except OSError:
        return []


def is_pattern(path: str) -> bool:
    """Whether ``/file`` PATH is a shell-style pattern (``*``, ``?`` or ``[...]``) to expand."""
    return glob.has_magic(path)  # type: ignore[attr-defined]


def is_folder(path: str) -> bool:
    """Whether ``/file`` PATH names a folder (then it is sent whole); blocking, as above."""
    return os.path.isdir(path)


def matching(pattern: str) -> list[str]:
    """Return the files *pattern* names (blocking: the controller runs it off the reactor
    thread): the path itself if it exists (a name may hold ``*``), else what the pattern
    matches, sorted, folders left out; hidden names only when the pattern's name starts with
    ``.``, as in a shell."""
    if os.path.lexists(pattern):
        return [pattern]
    return sorted(p for p in glob.glob(pattern) if not os.path.isdir(p))


def complete(typed: str, entries: list[tuple[str, bool]]) -> tuple[str, list[str]]:
    """Complete *typed* against the names in its folder.

    :returns: the new path (as typed when nothing more is shared) and the matching names, sorted
        (folders with a trailing ``/``); hidden names only when the typed name starts with ``.``.
    """
    base = os.path.basename(typed)
    matches = sorted(
        (name + ("/" if is_dir else ""))
        for name, is_dir in entries
        if name.startswith(base)
        and (base.startswith(".") or not name.startswith("."))
        and terminal_safe(name, keep_newlines=False) == name
    )
    if not matches:
        return typed, []
    shared = _shared_prefix(matches)
    prefix = typed[: len(typed) - len(base)]
    return prefix + shared if len(shared) > len(base) else typed, matches


def candidates_text(matches: list[str]) -> str:
    """The status line listing several matching names."""
    shown = "  ".join(matches[:SHOWN_CANDIDATES])
    more = len(matches) - SHOWN_CANDIDATES
    return shown + (f"  (+{more} more)" if more > 0 else "")


def _shared_prefix(names: list[str]) -> str:
    """The longest string every name starts with (character by character, not by folder)."""
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]
