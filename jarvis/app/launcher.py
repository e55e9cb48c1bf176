"""How to run the daemon as a child process: the one ``twistd`` command line Jarvis uses.

``python -m twisted.scripts.twistd`` does nothing (that module has no ``__main__`` block), and the
``twistd`` script may not be on ``PATH`` (a virtual environment that is not activated), so Jarvis
runs twistd through the current interpreter.

A daemon records the options it was started with (``--listen``, ``--advertise``...) in
``daemon.json`` in its data directory; a daemon started later without options (by the UI when its
daemon died, or by ``jarvis daemon start``) reuses them instead of the defaults.

:func:`spawn_detached_daemon` is the one daemon starter both the CLI and the UI use: it spawns
twistd and fires when twistd's parent process ends (it has daemonized, or failed);
:func:`wait_until` is the one waiting loop after it (backoff up to a deadline on the reactor's
clock), for what has no event of its own (the new daemon's API, another process's exit).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from twisted.internet import defer, task
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

import jarvis
from jarvis.common import paths
from jarvis.common.atomicfile import write_atomically

T = TypeVar("T")

#: The first and the longest pause of :func:`wait_until`, in seconds (doubling in between).
FIRST_WAIT = 0.02
MAX_WAIT = 0.5


def twistd_argv() -> list[str]:
    """Return the argv prefix that runs twistd with this interpreter (:func:`run_twistd`).

    ``-P``: the folder the command is run from is not put on ``sys.path``.  Without it,
    twistd's plugin scan imported any ``twisted/plugins/*.py`` found there, into the daemon
    that holds the unlocked keys (``jarvis`` run in a folder where an archive was unpacked);
    a checkout's own plugin is found by :func:`run_twistd` instead.
    """
    return [sys.executable, "-P", "-c", "from jarvis.app.launcher import run_twistd; run_twistd()"]


def checkout_root() -> str | None:
    """Return the checkout Jarvis runs from (the folder holding ``jarvis/`` and
    ``twisted/plugins/jarvis_plugin.py``), or ``None`` when it runs from an installed package
    (whose plugin twistd finds by itself)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(jarvis.__file__)))
    if os.path.basename(root) in ("site-packages", "dist-packages"):
        return None
    if not os.path.isfile(os.path.join(root, "twisted", "plugins", "jarvis_plugin.py")):
        return None
    return root


def run_twistd() -> None:
    """Run twistd's command line (``sys.argv``), finding the ``jarvis`` plugin of a checkout
    too: an editable install (``pip install -e``) hides ``twisted/plugins`` from twistd's scan,
    which then said "Unknown command: jarvis" unless run from the checkout itself."""
    root = checkout_root()
    if root is not None:
        import twisted.plugins

        folder = os.path.join(root, "twisted", "plugins")
        if folder not in twisted.plugins.__path__:
            twisted.plugins.__path__.append(folder)
    from twisted.scripts.twistd import run

    run()


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


# The options a replacement daemon reuses -------------------------------------------------------

#: The file in the data directory where the daemon records the options it was started with.
DAEMON_OPTIONS_FILE = "daemon.json"

#: The daemon options recorded in :data:`DAEMON_OPTIONS_FILE` and reused by a replacement daemon,
#: with the type each must have.  ``--password-file`` is left out on purpose: a replacement comes
#: up locked and the password comes from the UI or ``jarvis unlock``.
REMEMBERED_OPTIONS: dict[str, type] = {
    "listen": str,
    "advertise": list,
    "ipc": str,
    "ipc-allow-remote": bool,
    "log-level": str,
    "exec-limit": int,
    "hook-limit": int,
}


def daemon_options_path(data_dir: str) -> str:
    """Return the path of the file recording the daemon's start options in *data_dir*."""
    return os.path.join(data_dir, DAEMON_OPTIONS_FILE)


def remembered_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the part of parsed daemon *options* that a replacement daemon reuses
    (unset ones, such as the default ``--ipc``, are left out)."""
    picked: dict[str, Any] = {}
    for name in REMEMBERED_OPTIONS:
        value = options.get(name)
        if REMEMBERED_OPTIONS[name] is bool:
            value = bool(value)  # usage.Options flags are 0 or 1
        if value is None or value is False or value == []:
            continue
        picked[name] = list(value) if isinstance(value, list | tuple) else value
    return picked


def write_daemon_options(data_dir: str, options: Mapping[str, Any]) -> None:
    """Record *options* (see :func:`remembered_options`) in :data:`DAEMON_OPTIONS_FILE`.

    Written atomically (a temporary file in the same directory, fsync, rename) with mode 0600,
    so a reader sees the old file or the new one, never a torn one.
    """
    document = {"version": 1, "options": remembered_options(options)}
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
    path = daemon_options_path(data_dir)
    write_atomically(path, data, mode=0o600)


def read_daemon_options(data_dir: str) -> dict[str, Any]:
    """Return the options recorded in *data_dir* (``{}`` when there are none).

    A missing, unreadable or damaged file, and values of the wrong type, count as not recorded:
    the daemon then starts with its defaults, as it would have without the file.
    """
    try:
        with open(daemon_options_path(data_dir), encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError):
        return {}
    options = document.get("options") if isinstance(document, dict) else None
    if not isinstance(options, dict):
        return {}
    valid: dict[str, Any] = {}
    for name, kind in REMEMBERED_OPTIONS.items():
        value: Any = options.get(name)
        if not isinstance(value, kind):
            continue
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            continue
        valid[name] = value
    return valid


def options_argv(options: Mapping[str, Any]) -> list[str]:
    """Return the ``twistd jarvis`` arguments that give a daemon *options*."""
    argv: list[str] = []
    for name in REMEMBERED_OPTIONS:
        value = options.get(name)
        if value is None or value is False:
            continue
        if name == "advertise":
            for address in value:
                argv += ["--advertise", address]
        elif value is True:
            argv.append(f"--{name}")
        else:
            argv += [f"--{name}", str(value)]
    return argv


def replacement_argv(data_dir: str, given: Mapping[str, Any] | None = None) -> list[str]:
    """Return the ``twistd jarvis`` options for a daemon started for *data_dir*: the options its
    last daemon recorded, each replaced by the one in *given* when that is set.

    :param given: options chosen now (``listen``, ``advertise``...); unset ones are ignored.
    """
    options = read_daemon_options(data_dir)
    options.update(remembered_options(given or {}))
    return options_argv(options)


# The previous daemon's process ------------------------------------------------------------------


def process_state(pid: int) -> str:
    """Return ``"running"``, ``"zombie"`` (it has exited, its parent has not reaped it yet) or
    ``"gone"`` for the process *pid* (it may belong to another user).

    A zombie holds no socket and no file, but ``kill(pid, 0)`` still finds it, and so do twistd's
    pid file check and the data directory's lock: a new daemon must wait until it is gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # "pid (comm) state ...": comm may hold spaces and parentheses
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "running"
    return "zombie" if state in ("Z", "X") else "running"


def recorded_pids(data_dir: str) -> list[int]:
    """Return the pids named by *data_dir*'s lock (a running daemon always holds it, with or
    without a pid file) and pid file, each once, leaving out this process."""
    pids: list[int] = []
    try:
        pids.append(int(os.readlink(paths.lock_path(data_dir))))
    except (OSError, ValueError):
        pass
    try:
        with open(paths.pidfile_path(data_dir), encoding="ascii") as f:
            pids.append(int(f.read().strip()))
    except (OSError, ValueError):
        pass
    return [pid for i, pid in enumerate(pids) if pid != os.getpid() and pid not in pids[:i]]


def previous_daemon_lingers(data_dir: str) -> bool:
    """Whether the last daemon of *data_dir* has exited but is not reaped yet (a zombie): twistd's
    pid-file check and the lock would refuse a new daemon until it is gone."""
    return any(process_state(pid) == "zombie" for pid in recorded_pids(data_dir))


class DaemonSpawn(ProcessProtocol):
    """The ``twistd`` parent that daemonizes itself: its output, and its end.

    :attr ended: fires with ``(exit status, output)`` when the parent process has ended and
        closed its pipes (the daemon runs on in the background, or failed to start).
    """

    def __init__(self) -> None:
        self._output = b""
        self.ended: defer.Deferred[tuple[int, str]] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self._output = (self._output + data)[-8192:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", 0) or 0
        self.ended.callback((int(code), self._output.decode("utf-8", "replace")))


def spawn_detached_daemon(
    reactor: Any, data_dir: str, daemon_args: list[str] | None = None
) -> defer.Deferred[tuple[int, str]]:
    """Start a detached daemon for *data_dir* (``twistd`` forks and its parent exits).

    :param reactor: an ``IReactorProcess``.
    :param daemon_args: more ``twistd jarvis`` options (see :func:`replacement_argv`).
    :returns: a Deferred firing with ``(exit status, output)`` of twistd's parent process:
        status 0 means the daemon is on its way (its API may not answer yet).
    """
    argv = detached_daemon_argv(data_dir, daemon_args)
    spawn = DaemonSpawn()
    reactor.spawnProcess(
        spawn, argv[0], argv, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
    )
    return spawn.ended


async def wait_until(
    reactor: Any, attempt: Callable[[], Awaitable[T | None]], deadline: float
) -> T | None:
    """Await *attempt()* until it returns something other than ``None``, pausing between
    attempts from :data:`FIRST_WAIT` doubling up to :data:`MAX_WAIT` seconds.

    :param reactor: an ``IReactorTime`` (the pauses and the deadline run on its clock).
    :param deadline: give up after this many seconds.
    :returns: the first result that is not ``None``, or ``None`` at the deadline.
    """
    end = reactor.seconds() + deadline
    pause = FIRST_WAIT
    while True:
        result = await attempt()
        if result is not None:
            return result
        left = end - reactor.seconds()
        if left <= 0:
            return None
        await task.deferLater(reactor, min(pause, left), lambda: None)
        pause = min(MAX_WAIT, pause * 2)
