"""A systemd user unit that runs the daemon under the user's service manager.

``jarvis daemon install-unit`` writes ``jarvis.service`` into ``$XDG_CONFIG_HOME/systemd/user``
(``~/.config/systemd/user`` by default).  The unit runs ``twistd -n --pidfile= jarvis`` in the
foreground (systemd tracks the process itself, so no pid file and no fork), with the data
directory and the start options the daemon last recorded; systemd restarts it when it fails and
stops it with SIGTERM, which the daemon handles as a clean stop.  It comes up locked: the password
is given in the UI or with ``jarvis unlock``, never stored in the unit.

This module only builds text and writes one file; it must not import the daemon or the reactor.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence

from jarvis.app import launcher
from jarvis.common import errors
from jarvis.common.atomicfile import write_text_atomically

UNIT_NAME = "jarvis.service"

#: What to run once the unit file is written.
NEXT_STEPS = "systemctl --user daemon-reload && systemctl --user enable --now jarvis"

_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


class UnitExists(errors.JarvisError):
    """A unit file is already there and was left as it is: look at it, then run the command again
    with ``--force`` to replace it (or ``--print`` to see the new one)."""

    kind = "exists"


def unit_path(environ: Mapping[str, str] | None = None) -> str:
    """Return where the user unit goes: ``$XDG_CONFIG_HOME/systemd/user/jarvis.service``, with
    ``~/.config`` when that variable is unset or not absolute (as the XDG specification says)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "systemd", "user", UNIT_NAME)


def twistd_command() -> list[str]:
    """Return the absolute command that runs twistd with this interpreter's packages: the
    ``twistd`` script next to ``sys.executable`` (a virtual environment's), else the interpreter
    itself running twistd."""
    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "twistd")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [os.path.abspath(sys.executable), *launcher.twistd_argv()[1:]]


def source_root() -> str | None:
    """Return the directory to put on ``PYTHONPATH`` when Jarvis runs from a checkout rather than
    from an installed package (``None`` when installed: twistd finds it by itself)."""
    return launcher.checkout_root()


def quote(arg: str, *, dollar: bool = True) -> str:
    """Return *arg* as one word of a systemd unit setting: ``%`` (specifiers) doubled, ``$``
    (variable expansion in ``ExecStart=``) doubled when *dollar*, and double quotes with
    backslash escapes around anything but plain characters.

    :raises errors.InvalidInput: for control characters, which a unit file cannot hold.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in arg):
        raise errors.InvalidInput(f"{arg!r} holds a control character: a unit cannot say it")
    escaped = arg.replace("%", "%%")
    if dollar:
        escaped = escaped.replace("$", "$$")
    if arg and _PLAIN.fullmatch(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_start_argv(data_dir: str, daemon_args: Sequence[str]) -> list[str]:
    """Return the daemon's foreground command line for *data_dir* with *daemon_args*."""
    return [
        *twistd_command(),
        "-n",
        "--pidfile=",
        "jarvis",
        "--data-dir",
        os.path.abspath(data_dir),
        *daemon_args,
    ]


def unit_text(data_dir: str, daemon_args: Sequence[str], python_path: str | None = None) -> str:
    """Return the text of the user unit that runs the daemon of *data_dir*.

    :param daemon_args: more ``twistd jarvis`` options (``--listen``...).
    :param python_path: a directory for ``PYTHONPATH`` (a checkout), or ``None``.
    """
    data_dir = os.path.abspath(data_dir)
    exec_start = " ".join(quote(arg) for arg in exec_start_argv(data_dir, daemon_args))
    environment = ""
    if python_path is not None:
        environment = f"Environment={quote('PYTHONPATH=' + python_path, dollar=False)}\n"
    description = f"Jarvis messenger daemon for {data_dir}".replace("%", "%%")
    return (
        "# Written by 'jarvis daemon install-unit'.  The daemon starts locked: unlock it in the\n"
        "# UI ('jarvis') or with 'jarvis unlock'.  Then: " + NEXT_STEPS + "\n"
        "[Unit]\n"
        f"Description={description}\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={exec_start}\n"
        f"{environment}"
        f"WorkingDirectory={data_dir.replace('%', '%%')}\n"
        "UMask=0077\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "KillSignal=SIGTERM\n"
        "TimeoutStopSec=30\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def write_unit(path: str, text: str, *, force: bool) -> None:
    """Write *text* to *path* atomically with mode 0644, creating its directory.

    :raises UnitExists: if *path* exists and not *force*.
    """
    if os.path.lexists(path) and not force:
        raise UnitExists(f"{path} already exists: run again with --force to replace it")
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    write_text_atomically(path, text, mode=0o644)
