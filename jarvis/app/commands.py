"""The ``jarvis`` commands that talk to the daemon: one coroutine per command, run by :func:`run`.

:mod:`jarvis.app.cli` parses the command line, reads passwords and files, installs the reactor and
hands over to :func:`run` (``task.react``).  Keeping the commands here keeps them off the terminal
UI's start-up path (``jarvis`` with no command imports only :mod:`jarvis.app.cli`).  Output is plain
text, or one JSON document with ``--json``; errors become one line and an exit status.

Like :mod:`jarvis.app.cli`, this module must not import ``jarvis.core``: it only talks to the daemon
through the API (:mod:`jarvis.ipc.client`).  It must not import :mod:`jarvis.app.cli` either (the
CLI
is the composition root that calls it); the parsed options arrive as a :class:`CommandLine`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer, error
from twisted.python import usage
from twisted.python.failure import Failure

from jarvis.app.exitstatus import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_TOO_MANY_ATTEMPTS,
)
from jarvis.app.launcher import process_state, recorded_pids
from jarvis.common import errors
from jarvis.common.message_states import states_from
from jarvis.common.textsafe import (
    human_bytes,
    human_duration,
    human_since,
    human_time_left,
    is_unsafe,
    terminal_safe,
)
from jarvis.ipc.jsonrpc import RemoteError, too_many_attempts_text

#: How long ``daemon start`` waits for the new daemon's API, and ``daemon stop`` for its exit.
START_DEADLINE = 15.0
STOP_DEADLINE = 15.0


class CommandLine(Protocol):
    """What the commands need of the parsed command line (:class:`jarvis.app.cli.Options` is one):
    the commands never import the CLI, the CLI hands its options over."""

    subCommand: str | None
    subOptions: Any

    def data_dir(self) -> str:
        """Return the data directory (absolute)."""
        ...

    def wants_json(self) -> bool:
        """Whether ``--json`` was given."""
        ...


class Session:
    """The CLI's connection to the daemon (at most one), closed when the command ends."""

    def __init__(self, reactor: Any, options: CommandLine) -> None:
        self.reactor = reactor
        self.options = options
        self.data_dir = options.data_dir()
        self.client: Any = None
        #: What Ctrl+C leaves behind, said after "jarvis: interrupted; " (a command whose
        #: call goes on in the daemon says so; by default the call was cancelled).
        self.interrupted_note = "the request was cancelled"

    def endpoint(self) -> str:
        """Return the API endpoint of the data directory's daemon."""
        from jarvis.common import paths

        return paths.client_endpoint_for(self.data_dir)

    def token(self, endpoint: str) -> str | None:
        """Return the TCP token from the data directory, for TCP endpoints."""
        from jarvis.common import paths

        return paths.client_token_for(self.data_dir, endpoint)

    async def connect(self) -> Any:
        """Connect to the daemon (once).

        :raises errors.DaemonNotRunning: if no daemon answers for the data directory.
        """
        from jarvis.ipc.client import IpcClient

        if self.client is not None and self.client.connected:
            return self.client
        endpoint = self.endpoint()
        try:
            self.client = await IpcClient.connect(
                self.reactor, endpoint, token=self.token(endpoint)
            )
        except (error.ConnectError, OSError):
            raise unreachable_error(self.data_dir, endpoint) from None
        return self.client

    async def call(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        """Connect if needed and call *method*."""
        client = await self.connect()
        return await client.call(method, params, **kw)

    def close(self) -> defer.Deferred[None]:
        """Close the connection (flushing a pending ``$/cancelRequest``)."""
        client, self.client = self.client, None
        if client is None or not client.connected:
            return defer.succeed(None)
        return client.close()

    def emit(self, text: str | None, document: Any) -> None:
        """Print *text*, or *document* as JSON with ``--json``.

        Text goes through :func:`~jarvis.common.textsafe.terminal_safe` (names and bodies from peers
        cannot drive the terminal); JSON stays exact (see :func:`json_text`).
        """
        if self.options.wants_json():
            print(json_text(document, indent=2))
        elif text is not None:
            print(terminal_safe(text))


def _escape_unsafe(char: str) -> str:
    return f"\\u{ord(char):04x}" if is_unsafe(char) else char


def json_text(document: Any, *, indent: int | None = None) -> str:
    """*document* as JSON that is safe to print on a terminal and parses to the same value.

    ``json.dumps`` already escapes C0 controls (ESC is ``\\u001b``); C1 controls (such as
    U+009B, CSI), DEL, bidi controls and line separators are escaped here the same way.  They
    can only occur inside JSON strings, where ``\\uXXXX`` means the same character.
    """
    text = json.dumps(document, indent=indent, ensure_ascii=False)
    if text.isascii() and "\x7f" not in text:
        return text
    return "".join(_escape_unsafe(c) if c == "\x7f" or ord(c) > 0x7F else c for c in text)


def quiet_stdout() -> None:
    """After ``BrokenPipeError`` on stdout: point stdout at ``/dev/null``.

    Python flushes stdout once more at exit; with the reader gone that flush would fail again
    and print "Exception ignored ...".  (The recipe of the ``signal`` module's documentation.)
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def note(message: str) -> None:
    """Print a progress note on stderr (kept off stdout so --json stays one document)."""
    print(message, file=sys.stderr, flush=True)


def _progress_printer() -> Callable[[Any], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(value: Any) -> None:
        stage = value.get("stage") if isinstance(value, dict) else value
        note(f"... {stage}")

    return show


async def _status_or_none(session: Session) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = await session.call("daemon.status")
        return status
    except errors.DaemonNotRunning:
        return None
    except error.ConnectionLost:
        return None


async def start_daemon(session: Session, sub: usage.Options | None = None) -> dict[str, Any]:
    """Start a detached daemon for the session's data directory and wait for its API.

    :returns: the new daemon's ``daemon.status``.
    :raises errors.AlreadyRunning: if a daemon already answers.
    :raises errors.DaemonNotRunning: if it did not come up within :data:`START_DEADLINE`.
    """
    from jarvis.app.launcher import replacement_argv, spawn_detached_daemon, wait_until

    running = await _status_or_none(session)
    if running is not None:
        raise errors.AlreadyRunning(
            f"a Jarvis daemon already runs for {session.data_dir} (pid {running['pid']})"
        )
    await _wait_previous_gone(session)
    # the options given now, the others as the last daemon of this data directory had them
    extra = replacement_argv(
        session.data_dir,
        {"listen": sub["listen"], "advertise": sub["advertise"]} if sub is not None else None,
    )
    if sub is not None and sub["password-file"]:
        extra += ["--password-file", os.path.abspath(sub["password-file"])]
    os.makedirs(session.data_dir, mode=0o700, exist_ok=True)
    # wait for twistd's parent to end (an event), then for the API (nothing to wait on: retry)
    code, output = await spawn_detached_daemon(session.reactor, session.data_dir, extra)
    if code != 0:
        reason = _start_failure(session.data_dir, output, code)
        raise errors.DaemonNotRunning(f"the daemon did not start: {reason}")
    status = await wait_until(session.reactor, lambda: _status_or_none(session), START_DEADLINE)
    if status is not None:
        return status
    raise errors.DaemonNotRunning(
        f"the daemon did not answer within {START_DEADLINE:g} s: see its log in {session.data_dir}"
    )


def _start_failure(data_dir: str, output: str, code: int) -> str:
    """Return the most telling line about a failed start: twistd's output, else its log."""
    from jarvis.common import paths

    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit status {code}"
    if "log file" not in reason:
        return reason
    logfile = paths.logfile_path(data_dir)
    try:
        with open(logfile, encoding="utf-8", errors="replace") as f:
            tail = f.readlines()[-50:]
    except OSError:
        return f"{reason} ({logfile})"
    for line in reversed(tail):
        text = line.split("] ", 1)[-1].strip()
        if text.startswith("jarvis.common.errors."):
            # a JarvisError's text is written for the user: it says what to do
            return f"{text.split(': ', 1)[-1]} (log: {logfile})"
        if "Error" in text or "error:" in text:
            return f"{text} (log: {logfile})"
    return f"{reason} ({logfile})"


def pid_alive(pid: int) -> bool:
    """Whether a process with *pid* runs (it may belong to another user; a zombie does not)."""
    return process_state(pid) == "running"


def _pidfile_pid(data_dir: str) -> int | None:
    from jarvis.common import paths

    try:
        with open(paths.pidfile_path(data_dir), encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def daemon_pid(data_dir: str) -> int | None:
    """Return the pid of the data directory's daemon from its lock or pid file, if it runs."""
    for pid in recorded_pids(data_dir):
        if pid_alive(pid):
            return pid
    return None


def unreachable_error(data_dir: str, endpoint: str) -> errors.JarvisError:
    """Return the error for a refused connection to the API at *endpoint*.

    A daemon that runs (its lock or pid file names a live process) and whose socket file exists
    refused because its accept queue was full: :class:`errors.DaemonBusy`.  Otherwise no daemon
    runs (a socket left by a killed daemon refuses too): :class:`errors.DaemonNotRunning`.
    """
    pid = daemon_pid(data_dir)
    socket_there = not endpoint.startswith("unix:") or os.path.exists(endpoint.split(":")[1])
    if pid is not None and socket_there:
        return errors.DaemonBusy(
            f"the Jarvis daemon for {data_dir} (pid {pid}) is running but refused the "
            "connection: its local API is busy (too many clients connecting at once); "
            "try again in a moment"
        )
    return errors.DaemonNotRunning(
        f"no Jarvis daemon is running for {data_dir}: start one with 'jarvis daemon start'"
    )


async def _wait_previous_gone(session: Session) -> None:
    """Wait until the process named by the lock or pid file is gone (a daemon killed a moment
    ago may linger as a zombie, and twistd and the lock would take it for a running daemon).

    :raises errors.AlreadyRunning: if that process runs without answering, or lingers.
    """
    from jarvis.app.launcher import wait_until

    for pid in recorded_pids(session.data_dir):

        async def settled(pid: int = pid) -> bool | None:
            return True if process_state(pid) != "zombie" else None

        await wait_until(session.reactor, settled, START_DEADLINE)
        state = process_state(pid)
        if state != "gone":
            if state == "running":
                raise errors.AlreadyRunning(
                    f"process {pid}, named by the lock or pid file in {session.data_dir}, runs "
                    "but its API does not answer: stop it ('jarvis daemon stop' or kill "
                    f"{pid}); if it is not a Jarvis daemon, remove jarvis.pid and daemon.lock "
                    f"in {session.data_dir}"
                )
            raise errors.AlreadyRunning(
                f"the previous daemon (pid {pid}) has exited but its parent has not reaped "
                "it yet: try again in a moment"
            )


async def _wait_exit(reactor: Any, pid: int) -> bool:
    # another process's exit (not our child) has no event: check with backoff to the deadline
    from jarvis.app.launcher import wait_until

    async def exited() -> bool | None:
        return True if not pid_alive(pid) else None

    return bool(await wait_until(reactor, exited, STOP_DEADLINE))


async def cmd_daemon(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``daemon start|stop|status|install-unit``."""
    action = sub.subCommand
    if action == "start":
        started = await start_daemon(session, sub.subOptions)
        session.emit(
            f"jarvis daemon started (pid {started['pid']}, API {started['ipc']})",
            _status_doc(started),
        )
    elif action == "status":
        try:
            status = await _status_or_none(session)
        except errors.DaemonBusy as e:
            pid = daemon_pid(session.data_dir)
            session.emit(
                f"jarvis daemon: running but busy (pid {pid}): {e}",
                {"running": True, "busy": True, "pid": pid, "ipc": None, "version": None},
            )
            return
        if status is None:
            pid = _pidfile_pid(session.data_dir)
            stale = pid is not None and pid_alive(pid)
            text = "jarvis daemon: stopped"
            if stale:
                text += f" (pid {pid} exists but its API does not answer)"
            session.emit(text, {"running": False, "pid": None, "ipc": None, "version": None})
            return
        lock = "locked" if status["locked"] else "unlocked"
        if not status["has_identity"]:
            lock = "no identity"
        session.emit(
            f"jarvis daemon: running (pid {status['pid']}, API {status['ipc']}, "
            f"version {status['version']}, {lock})",
            _status_doc(status),
        )
    elif action == "install-unit":
        install_unit(session, sub.subOptions)
    else:
        await _stop_daemon(session)


def install_unit(session: Session, sub: usage.Options) -> None:
    """``daemon install-unit [--force] [--print]``: write (or print) the systemd user unit."""
    from jarvis.app import launcher, systemd

    daemon_args = launcher.replacement_argv(
        session.data_dir, {"listen": sub["listen"], "advertise": sub["advertise"]}
    )
    text = systemd.unit_text(session.data_dir, daemon_args, systemd.source_root())
    path = systemd.unit_path()
    if sub["print"]:
        session.emit(text.rstrip("\n"), {"path": path, "written": False, "unit": text})
        return
    systemd.write_unit(path, text, force=bool(sub["force"]))
    session.emit(
        f"wrote {path}\nnow run: {systemd.NEXT_STEPS}\n"
        "the daemon starts locked: unlock it in the UI ('jarvis') or with 'jarvis unlock'",
        {"path": path, "written": True, "unit": text, "next": systemd.NEXT_STEPS},
    )


def _status_doc(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "running": True,
        "pid": status["pid"],
        "ipc": status["ipc"],
        "version": status["version"],
    }


async def _stop_daemon(session: Session) -> None:
    pid: int | None
    try:
        client = await session.connect()
    except errors.DaemonNotRunning:
        client = None
    if client is not None:
        lost: defer.Deferred[None] = defer.Deferred()
        client.add_disconnect_observer(lambda reason: lost.callback(None))
        answer = await client.call("daemon.stop")
        pid = answer.get("pid")
        await lost
    else:
        pid = _pidfile_pid(session.data_dir)
        if pid is None or not pid_alive(pid):
            session.emit("jarvis daemon: not running", {"stopped": False, "pid": None})
            return
        os.kill(pid, signal.SIGTERM)
    if pid is not None and not await _wait_exit(session.reactor, pid):
        raise errors.AlreadyRunning(
            f"the daemon (pid {pid}) did not exit within {STOP_DEADLINE:g} s"
        )
    session.emit(f"jarvis daemon stopped (pid {pid})", {"stopped": True, "pid": pid})


async def _ensure_daemon(session: Session) -> None:
    """Start a daemon unless one answers (and say so on stderr)."""
    if await _status_or_none(session) is None:
        status = await start_daemon(session)
        note(f"started the jarvis daemon (pid {status['pid']})")


async def cmd_init(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``init --name NAME``: start a daemon if needed, then create the identity."""
    await _ensure_daemon(session)
    result = await session.call(
        "identity.create",
        {"name": sub["name"], "password": inputs["password"]},
        progress=_progress_printer(),
    )
    session.emit(
        f"created identity {result['name']}\nuid:         {result['uid']}\n"
        f"fingerprint: {result['fingerprint']}",
        result,
    )


async def cmd_unlock(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``unlock``."""
    result = await session.call(
        "identity.unlock", {"password": inputs["password"]}, progress=_progress_printer()
    )
    session.emit(f"unlocked: {result['name']} ({result['uid']})", result)


async def cmd_lock(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``lock [--wipe]``."""
    result = await session.call("identity.lock", {"wipe": bool(sub["wipe"])})
    session.emit("locked (keys wiped)" if sub["wipe"] else "locked", result)


async def cmd_export(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``export FILE``."""
    result = await session.call(
        "account.export",
        {"path": sub["path"], "password": inputs["password"]},
        progress=_progress_printer(),
    )
    session.emit(f"exported to {result['path']} ({result['bytes']} bytes)", result)


async def cmd_import(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``import FILE``: start a daemon if needed, then restore the export."""
    await _ensure_daemon(session)
    result = await session.call(
        "account.import",
        {
            "path": sub["path"],
            "export_password": inputs["export_password"],
            "password": inputs["password"],
        },
        progress=_progress_printer(),
    )
    session.emit(f"imported {result['name']} ({result['uid']})", result)


async def cmd_delete_account(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``delete-account``."""
    result = await session.call("account.delete", {"password": inputs["password"]})
    session.emit(f"account deleted: {result['removed']} files removed", result)


async def cmd_whoami(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``whoami``."""
    me = await session.call("identity.show")
    lines = [
        f"name:        {me['name']}",
        f"uid:         {me['uid']}",
        f"fingerprint: {me['fingerprint']}",
        f"addresses:   {', '.join(me.get('addresses') or []) or '-'}",
        f"link:        {me['link']}",
    ]
    if sub["card"]:
        path = os.path.abspath(sub["card"])
        from twisted.internet import threads

        await threads.deferToThread(_write_card, path, me["card"])
        lines.append(f"card:        written to {path}")
    session.emit("\n".join(lines), me)


def _write_card(path: str, text: str) -> None:
    """Write the contact card (public: mode 0644), replacing *path* atomically: a symbolic link
    or another user's file there is replaced, never written through."""
    from jarvis.common.atomicfile import write_text_atomically

    write_text_atomically(path, text, mode=0o644)


def _contact_name(contact: dict[str, Any]) -> str:
    return str(contact.get("alias") or contact.get("name") or contact.get("uid", "?")[:12])


async def cmd_add(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``add LINK_OR_CARD_FILE``."""
    params: dict[str, Any] = {k: inputs[k] for k in ("link", "card") if k in inputs}
    if sub["name"]:
        params["name"] = sub["name"]
    if sub["verified"]:
        params["verified"] = True
    contact = await session.call("contacts.add", params)
    session.emit(
        f"added {_contact_name(contact)} ({contact['uid'][:12]}), "
        f"fingerprint {contact['fingerprint']}",
        contact,
    )


async def cmd_contacts(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``contacts``."""
    result = await session.call("contacts.list")
    contacts = result["contacts"]
    lines = [
        f"{terminal_safe(_contact_name(c), keep_newlines=False):<20} "
        f"{terminal_safe(str(c['uid'])[:12], keep_newlines=False)}  {c.get('status', '?'):<10} "
        f"unread {c.get('unread', 0):<4} {'verified' if c.get('verified') else 'unverified'}"
        for c in contacts
    ]
    session.emit("\n".join(lines) if lines else "no contacts yet: jarvis add LINK", result)


async def cmd_send(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``send CONTACT TEXT|-``: prints the message id (after it is sent/delivered with --wait)."""
    states: dict[str, str] = {}
    reached: defer.Deferred[None] = defer.Deferred()
    wanted = states_from("out", sub["wait"]) if sub["wait"] else ()
    message_id: list[str] = []

    def on_event(name: str, params: dict[str, Any]) -> None:
        if name != "message.stateChanged" or not isinstance(params.get("id"), str):
            return
        states[params["id"]] = str(params.get("state"))
        if message_id and states.get(message_id[0]) in wanted and not reached.called:
            reached.callback(None)

    if wanted:
        client = await session.connect()
        await client.subscribe(on_event)
    message = await session.call(
        "messages.send", {"contact": sub["contact"], "text": inputs["text"]}
    )
    message_id.append(message["id"])
    if wanted:
        if message.get("state") in wanted or states.get(message["id"]) in wanted:
            pass
        else:
            reached.addTimeout(sub["timeout"], session.reactor)
            try:
                await reached
            except defer.TimeoutError:
                raise errors.JarvisError(
                    f"message {message['id']} was queued but not {sub['wait']} within "
                    f"{sub['timeout']:g} s; it stays queued and will be sent later"
                ) from None
        message["state"] = states.get(message["id"], message.get("state"))
    session.emit(message["id"], message)


def _when(timestamp: Any) -> str:
    if not isinstance(timestamp, int | float):
        return "                "
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


#: Messages per ``messages.history`` call (the API's largest page).
HISTORY_PAGE = 200


async def history_messages(
    session: Session,
    contact: str,
    *,
    limit: int | None,
    before: str | None = None,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """Return a conversation's messages, oldest first, paging through ``messages.history``.

    :param limit: the most messages (``None``: all): the newest ones, or with *after* the
        oldest ones newer than it.
    :param before: a message id: only older messages.
    :param after: a message id: only newer messages.
    """
    newest_first: list[dict[str, Any]] = []
    oldest_first: list[dict[str, Any]] = []
    cursor = after if after is not None else before
    while limit is None or len(newest_first) + len(oldest_first) < limit:
        got = len(newest_first) + len(oldest_first)
        size = HISTORY_PAGE if limit is None else min(HISTORY_PAGE, limit - got)
        params: dict[str, Any] = {"contact": contact, "limit": size}
        if after is None:
            if cursor is not None:
                params["before"] = cursor
            page = await session.call("messages.history", params)
            newest_first.extend(page["messages"])
            cursor = page.get("next")
        else:
            params["after"] = cursor
            if before is not None:
                params["before"] = before
            page = await session.call("messages.history", params)
            oldest_first.extend(reversed(page["messages"]))
            cursor = page.get("newer")
        if cursor is None:
            break
    return oldest_first if after is not None else list(reversed(newest_first))


async def cmd_history(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``history CONTACT [--limit N|--all] [--before ID] [--after ID]``: oldest first."""
    from jarvis.common.textsafe import terminal_safe

    messages = await history_messages(
        session, sub["contact"], limit=sub["limit"], before=sub["before"], after=sub["after"]
    )
    if session.options.wants_json():
        session.emit(None, messages)
        return
    lines = [
        f"{_when(m.get('created'))} {'>' if m.get('direction') == 'out' else '<'} "
        f"{terminal_safe(str(m.get('body')))}"
        + (" [via mailbox]" if m.get("path") == "mailbox" else "")
        for m in messages
    ]
    session.emit("\n".join(lines) if lines else "no messages", messages)


async def _show_contact(session: Session, ref: str) -> dict[str, Any]:
    contact: dict[str, Any] = await session.call("contacts.show", {"contact": ref})
    return contact


def _safe_name(contact: dict[str, Any]) -> str:
    from jarvis.common.textsafe import terminal_safe

    return terminal_safe(_contact_name(contact), keep_newlines=False)


async def _confirm(session: Session, question: str) -> bool:
    """Ask *question* on the terminal; True for an answer starting with y.

    The answer is read by a daemon thread (not the reactor's pool): Ctrl+C while it waits
    ends the command at once instead of waiting for the blocked read.
    """
    import threading

    answer: defer.Deferred[str] = defer.Deferred()

    def read() -> None:
        try:
            line = input(question)
        except (EOFError, OSError):
            line = ""
        session.reactor.callFromThread(answer.callback, line)

    threading.Thread(target=read, name="jarvis-confirm", daemon=True).start()
    return (await answer).strip().lower() in ("y", "yes")


async def cmd_verify(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``verify CONTACT [--yes]``: show both fingerprints and the safety code, confirm, mark
    the contact verified."""
    contact = await _show_contact(session, sub["contact"])
    me = await session.call("identity.show")
    name = _safe_name(contact)
    document = {
        "uid": contact["uid"],
        "name": contact.get("alias") or contact.get("name"),
        "fingerprint": contact["fingerprint"],
        "own_fingerprint": me["fingerprint"],
        "safety_code": contact["safety_code"],
        "verified": bool(contact.get("verified")),
    }
    if not session.options.wants_json():
        width = max(len("your fingerprint:"), len(name) + len("'s fingerprint:"))
        print(f"{'your fingerprint:':<{width}} {me['fingerprint']}")
        print(f"{name + chr(39) + 's fingerprint:':<{width}} {contact['fingerprint']}")
        print(f"{'safety code:':<{width}} {contact['safety_code']}")
    if contact.get("verified"):
        session.emit(f"{name} is already verified", document)
        return
    if not sub["yes"]:
        print(
            f"Ask {name} to read you their safety code, in person or over a channel you "
            "trust (not this one)."
        )
        if not await _confirm(session, "Is it the same as yours? [y/N] "):
            raise errors.JarvisError(
                f"{name} was not marked verified: the codes were not confirmed"
            )
    updated = await session.call("contacts.update", {"contact": contact["uid"], "verified": True})
    document["verified"] = bool(updated.get("verified"))
    session.emit(f"{name} is now verified", document)


async def cmd_remove(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``remove CONTACT [--with-history]``."""
    contact = await _show_contact(session, sub["contact"])
    with_history = bool(sub["with-history"])
    await session.call("contacts.remove", {"contact": contact["uid"], "with_history": with_history})
    outcome = "and the conversation" if with_history else "(the conversation is kept)"
    session.emit(
        f"removed {_safe_name(contact)} ({contact['uid'][:12]}) {outcome}",
        {
            "removed": True,
            "uid": contact["uid"],
            "name": contact.get("alias") or contact.get("name"),
            "with_history": with_history,
        },
    )


async def cmd_rename(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``rename CONTACT NAME``: set the contact's local alias."""
    contact = await _show_contact(session, sub["contact"])
    updated = await session.call(
        "contacts.update", {"contact": contact["uid"], "name": sub["name"]}
    )
    session.emit(f"renamed {_safe_name(contact)} to {_safe_name(updated)}", updated)


async def cmd_passwd(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``passwd``: re-seal the key file with a new password."""
    result = await session.call(
        "identity.changePassword",
        {"old_password": inputs["password"], "new_password": inputs["new_password"]},
        progress=_progress_printer(),
    )
    session.emit("password changed", result)


_ON = ("on", "true", "yes", "1")
_OFF = ("off", "false", "no", "0")


def parse_setting(key: str, text: str, current: Any) -> Any:
    """Return *text* as the type of the setting's *current* value (on/off for booleans).

    :raises errors.InvalidInput: if it is not a value of that type.
    """
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in _ON:
            return True
        if lowered in _OFF:
            return False
        raise errors.InvalidInput(f"{key} is on or off, not {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise errors.InvalidInput(f"{key} is a whole number, not {text!r}") from None
    return text


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


async def cmd_settings(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``settings [KEY [VALUE]]``: list, get or set."""
    settings: dict[str, Any] = await session.call("settings.get")
    key, value = sub["key"], sub["value"]
    if key is None:
        width = max((len(k) for k in settings), default=0)
        lines = [f"{k:<{width}}  {_setting_text(v)}" for k, v in settings.items()]
        session.emit("\n".join(lines), settings)
        return
    if key not in settings:
        raise errors.NotFound(f"no setting {key!r}: there are {', '.join(settings)}")
    if value is not None:
        changed = await session.call(
            "settings.set", {key: parse_setting(key, value, settings[key])}
        )
        settings = changed
    session.emit(f"{key} {_setting_text(settings[key])}", {key: settings[key]})


def _ago(timestamp: Any, now: float) -> str | None:
    from jarvis.common.textsafe import human_since

    if not isinstance(timestamp, int | float):
        return None
    return human_since(float(timestamp), now)


def peer_lines(peer: dict[str, Any], now: float) -> list[str]:
    """Return the text lines that describe one entry of ``peers.status``."""
    from jarvis.common.textsafe import human_bytes, terminal_safe

    name = terminal_safe(str(peer.get("name") or peer.get("uid", "?")[:12]), keep_newlines=False)
    status = str(peer.get("status") or "offline")
    if status == "online":
        since = _ago(peer.get("connected_since"), now)
        state = "online" + (f" since {since}" if since else "")
    else:
        since = _ago(peer.get("offline_since"), now)
        state = "offline" + (f" since {since}" if since else "")
        if status == "connecting":
            state += ", connecting now"
    if status == "online" and peer.get("path"):
        state += f", {terminal_safe(str(peer['path']), keep_newlines=False)}"
    lines = [f"{name} ({str(peer.get('uid', ''))[:12]}): {state}"]
    found = [terminal_safe(str(a), keep_newlines=False) for a in peer.get("lan_addresses") or []]
    if found:
        lines.append(f"  on the LAN: {', '.join(found)}")
    if peer.get("path_reason"):
        reason = terminal_safe(str(peer["path_reason"]), keep_newlines=False)
        lines.append(f"  path:       {reason}")
    if "bytes_in" in peer:
        lines.append(
            f"  traffic:    {human_bytes(peer.get('bytes_in') or 0)} in, "
            f"{human_bytes(peer.get('bytes_out') or 0)} out; "
            f"messages {peer.get('messages_in') or 0} in, {peer.get('messages_out') or 0} out"
        )
        lines.append(
            f"  sessions:   {peer.get('connect_successes') or 0} dialled, "
            f"{peer.get('sessions_accepted') or 0} accepted; "
            f"{peer.get('connect_failures') or 0} failed dials"
        )
    if peer.get("last_error"):
        when = _ago(peer.get("last_error_at"), now)
        error_text = terminal_safe(str(peer["last_error"]), keep_newlines=False)
        lines.append(f"  last error: {when + ': ' if when else ''}{error_text}")
    return lines


async def cmd_peers(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``peers``: connection status and health figures per contact."""
    result = await session.call("peers.status")
    now = time.time()
    lines = [f"{result.get('online', 0)} of {result.get('total', 0)} contacts online"]
    for peer in result.get("peers", []):
        lines.extend(peer_lines(peer, now))
    session.emit("\n".join(lines), result)


def mailbox_lines(result: dict[str, Any]) -> list[str]:
    """The text lines that describe ``mailbox.status``."""
    if not result.get("link"):
        return ["no mailbox in use (offline delivery is off): jarvis mailbox use LINK"]
    link = terminal_safe(str(result["link"]), keep_newlines=False)
    lines = [
        f"mailbox: {link}",
        f"  {'reachable' if result.get('connected') else 'not reachable'}"
        + (
            f" ({terminal_safe(str(result['error']), keep_newlines=False)})"
            if result.get("error") and not result.get("connected")
            else ""
        ),
        f"  queues: {result.get('queues', 0)}; contacts you can deposit for: "
        f"{result.get('contacts_reachable', 0)}",
        f"  collected {result.get('collected', 0)}, deposited {result.get('deposited', 0)}"
        " since unlock",
    ]
    if result.get("last_collect"):
        lines.append(f"  last collect: {human_since(result['last_collect'], time.time())}")
    paths = [c.get("path") for c in result.get("contacts", [])]
    if paths:
        lines.append(
            "  contacts: "
            + ", ".join(
                f"{paths.count(p)} {p}"
                for p in ("lan", "direct", "relayed", "mailbox", "none")
                if p in ("direct", "mailbox", "none") or p in paths
            )
        )
    return lines


async def cmd_mailbox(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``mailbox use LINK|status|drop``."""
    action, opts = sub.subCommand, sub.subOptions
    if action == "use":
        result = await session.call("mailbox.use", {"link": opts["link"]})
    elif action == "drop":
        result = await session.call("mailbox.drop")
    else:
        result = await session.call("mailbox.status")
    session.emit("\n".join(mailbox_lines(result)), result)


async def cmd_watch(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``watch [EVENT ...]``: events as JSON lines until Ctrl+C (or the daemon goes away:
    exit 1); only the named events when some are named (an unknown name: exit 1)."""
    client = await session.connect()
    lost: defer.Deferred[None] = defer.Deferred()
    client.add_disconnect_observer(lambda reason: lost.callback(None))

    def show(name: str, params: dict[str, Any]) -> None:
        print(json_text({"event": name, "params": params}), flush=True)

    await client.subscribe(show, sub["events"])
    await lost
    raise errors.DaemonNotRunning("the daemon closed the connection")


async def cmd_rpc(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``rpc METHOD [JSON_PARAMS]``: always prints JSON."""
    result = await session.call(sub["method"], sub["params"] or None)
    print(json_text(result, indent=2))


#: ``jarvis exec``'s exit status after the program's timeout (as timeout(1)).
EXIT_TIMED_OUT = 124


def exec_status(result: dict[str, Any]) -> int:
    """``jarvis exec``'s exit status for an ``exec.run`` result."""
    if result.get("timed_out"):
        return EXIT_TIMED_OUT
    if result.get("exit_code") is not None:
        return int(result["exit_code"])
    name = result.get("signal")
    try:
        return 128 + int(signal.Signals[name]) if name else 1
    except KeyError:
        return 1


def _run_lines(runs: list[dict[str, Any]]) -> list[str]:
    from jarvis.common.textsafe import human_bytes

    lines = []
    for run in runs:
        argv = terminal_safe(" ".join(run["argv"]), keep_newlines=False)
        size = human_bytes(run["bytes"]["stdout"] + run["bytes"]["stderr"])
        pid = run["pid"] if run["pid"] is not None else "-"
        lines.append(
            f"{run['id']:>5}  {run['state']:<8} pid {pid}  {human_duration(run['age'])}  "
            f"{size}  {run['owner']}  {argv}"
        )
    return lines


async def cmd_exec(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``exec [OPTIONS] -- ARGV...``, ``exec --list``, ``exec --kill ID``."""
    if sub["list"]:
        listing = await session.call("exec.list")
        lines = [
            f"{listing['running']} running, {listing['queued']} queued "
            f"(at most {listing['limit']} at once)",
            *_run_lines(listing["runs"]),
        ]
        session.emit("\n".join(lines), listing)
        return
    if sub["kill"] is not None:
        killed = await session.call("exec.kill", {"id": sub["kill"]})
        session.emit(f"run {killed['id']}: {killed['state']}", killed)
        return
    params: dict[str, Any] = {"cwd": sub["cwd"], "pty": bool(sub["pty"])}
    if sub["shell"]:
        params["command"] = sub["argv"][0]
    else:
        params["argv"] = sub["argv"]
    if sub["env"]:
        params["env"] = sub["env"]
    if sub["timeout"] is not None:
        params["timeout"] = sub["timeout"]
    as_json = session.options.wants_json()

    def show(value: Any) -> None:
        if not isinstance(value, dict):
            return
        if as_json:
            print(json_text(value), flush=True)
        elif value.get("stage") == "output":
            # the program's bytes are not trusted: no escape sequence reaches the terminal
            out = sys.stderr if value.get("stream") == "stderr" else sys.stdout
            out.write(terminal_safe(value.get("text", "")))
            out.flush()
        elif value.get("stage") == "queued":
            note(f"jarvis: queued behind {value.get('ahead', '?')} other programs")

    result = await session.call("exec.run", params, progress=show)
    if as_json:
        print(json_text({"stage": "result", **result}), flush=True)
    else:
        if result["bytes"]["dropped"]:
            note(f"jarvis: {result['bytes']['dropped']} more bytes of output were not kept")
        if result["timed_out"]:
            note(f"jarvis: timed out after {result['duration']:.1f} s")
    status = exec_status(result)
    if status:
        raise SystemExit(status)


async def cmd_hook(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``hook add|list|remove``."""
    action, opts = sub.subCommand, sub.subOptions
    if action == "add":
        params: dict[str, Any] = {
            "name": opts["name"],
            "argv": opts["argv"],
            "event": opts["event"],
            "reply": bool(opts["reply"]),
            "timeout": opts["timeout"],
            "rate": opts["rate"],
        }
        for key in ("contact", "pattern"):
            if opts[key] is not None:
                params[key] = opts[key]
        hook = await session.call("hooks.add", params)
        session.emit(f"hook {hook['name']} added", hook)
    elif action == "remove":
        removed = await session.call("hooks.remove", {"name": opts["name"]})
        session.emit(f"hook {opts['name']} removed", removed)
    else:
        listing = await session.call("hooks.list")
        lines = []
        for hook in listing["hooks"]:
            argv = terminal_safe(" ".join(hook["argv"]), keep_newlines=False)
            who = hook["contact"][:12] if hook["contact"] else "anyone"
            reply = " reply" if hook["reply"] else ""
            lines.append(
                f"{hook['name']}: {hook['event']} from {who}{reply}: {argv} "
                f"(ran {hook['ran']}, failed {hook['failed']}, dropped {hook['dropped']})"
            )
        session.emit("\n".join(lines) if lines else "no hooks", listing)


# groups (issue 17) ----------------------------------------------------------------------------


def _group_line(g: dict[str, Any]) -> str:
    unread = f", {g['unread']} unread" if g.get("unread") else ""
    left = " (left)" if g.get("left") else ""
    muted = " (muted)" if g.get("muted") else ""
    return f"{g['id']}  {g['name']}  {g['members']} members{unread}{left}{muted}"


async def cmd_group(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``group create|list|invite|invites|join|decline|send|send-file|history|members|remove|
    leave|rename|topic|role|mute|unmute``."""
    action, opts = sub.subCommand, sub.subOptions
    result: Any
    if action == "create":
        params = {"name": opts["name"]}
        if opts["topic"]:
            params["topic"] = opts["topic"]
        result = await session.call("groups.create", params)
        session.emit(result["id"], result)
    elif action == "list":
        result = await session.call("groups.list")
        groups = result["groups"]
        session.emit("\n".join(map(_group_line, groups)) or "no groups", groups)
    elif action == "invite":
        result = await session.call(
            "groups.invite", {"group": opts["group"], "contact": opts["contact"]}
        )
        who = terminal_safe(opts["contact"], keep_newlines=False)
        group = terminal_safe(opts["group"], keep_newlines=False)
        session.emit(f"invited {who} ({result['invited'][:12]}) to {group}", result)
    elif action == "invites":
        result = await session.call("groups.invites")
        invites = result["invites"]
        lines = [
            f"{i['id']}  {i['name']}  from {i['from_name']}  ({i['members']} members)"
            for i in invites
        ]
        session.emit("\n".join(lines) or "no invitations", invites)
    elif action in ("join", "decline"):
        result = await session.call(f"groups.{action}", {"invite": opts["invite"]})
        text = f"joined {result['name']} ({result['id']})" if action == "join" else "declined"
        session.emit(text, result)
    elif action == "send":
        result = await session.call("groups.send", {"group": opts["group"], "text": opts["text"]})
        session.emit(result["id"], result)
    elif action == "send-file":
        await group_send_file(session, opts)
    elif action == "fetch-file":
        await group_fetch_file(session, opts)
    elif action == "history":
        result = await session.call(
            "groups.history", {"group": opts["group"], "limit": opts["limit"]}
        )
        messages = result["messages"]
        lines = [
            f"{_when(m.get('created'))} {m['author_name']}: {m['body']}"
            + (f"  [{m['id'][:12]}]" if m.get("file") else "")
            for m in messages
        ]
        session.emit("\n".join(lines) or "no messages", messages)
    elif action == "members":
        result = await session.call("groups.members", {"group": opts["group"]})
        members = result["members"]
        lines = [
            f"{m['uid']}  {m['name']}  {m['role']}{'  online' if m['online'] else ''}"
            for m in members
        ]
        session.emit("\n".join(lines), members)
    elif action == "remove":
        result = await session.call(
            "groups.remove", {"group": opts["group"], "member": opts["member"]}
        )
        who = terminal_safe(opts["member"], keep_newlines=False)
        group = terminal_safe(opts["group"], keep_newlines=False)
        session.emit(f"removed {who} ({result['removed'][:12]}) from {group}", result)
    elif action == "leave":
        params = {"group": opts["group"]}
        if opts.get("to"):
            params["to"] = opts["to"]
        # the members' names, asked before leaving: afterwards they are no longer ours to ask
        members = (await session.call("groups.members", {"group": opts["group"]}))["members"]
        names = {m["uid"]: m["name"] for m in members}
        founders = {m["uid"] for m in members if m.get("role") == "founder"}
        result = await session.call("groups.leave", params)
        text = f"left {terminal_safe(opts['group'], keep_newlines=False)}"
        founder = result.get("founder")
        if founder and founder not in founders:  # we were the founder: handed over
            name = terminal_safe(str(names.get(founder) or founder[:12]), keep_newlines=False)
            text += f"; the founder is now {name} ({founder[:12]})"
        session.emit(text, result)
    elif action == "rename":
        result = await session.call("groups.rename", {"group": opts["group"], "name": opts["name"]})
        session.emit(f"renamed to {result['name']}", result)
    elif action == "topic":
        result = await session.call(
            "groups.setTopic", {"group": opts["group"], "topic": opts["text"]}
        )
        session.emit(f"topic: {result['topic']}" if result["topic"] else "topic cleared", result)
    elif action == "role":
        result = await session.call(
            "groups.setRole",
            {"group": opts["group"], "member": opts["member"], "role": opts["role"]},
        )
        who = terminal_safe(opts["member"], keep_newlines=False)
        session.emit(f"{who} ({result['member'][:12]}) is now {result['role']}", result)
    elif action in ("mute", "unmute"):
        result = await session.call(
            "groups.setMuted", {"group": opts["group"], "muted": action == "mute"}
        )
        session.emit(f"{result['name']}: {'muted' if result['muted'] else 'unmuted'}", result)


# file transfers (issue 18) ----------------------------------------------------------------------


def transfer_line(t: dict[str, Any]) -> str:
    """One line of ``jarvis files``: id prefix, direction, state, progress, name (after the
    folder it is in, for a file of a folder sent whole), contact."""
    size = int(t.get("size") or 0)
    done = int(t.get("bytes") or 0)
    percent = f"{100 * done // size:3d}%" if size else "100%"
    arrow = "->" if t.get("direction") == "out" else "<-"
    shown = f"{t['folder']}/{t.get('name', '')}" if t.get("folder") else t.get("name", "")
    name = terminal_safe(str(shown), keep_newlines=False)
    who = terminal_safe(
        str(t.get("contact_name") or t.get("contact", ""))[:20], keep_newlines=False
    )
    line = (
        f"{str(t['id'])[:8]}  {arrow} {who:<12} {t.get('state', '?'):<9} {percent} "
        f"{human_bytes(size):>9}  {name}"
    )
    if t.get("reason"):
        line += f"  ({terminal_safe(str(t['reason']), keep_newlines=False)})"
    if t.get("state") == "complete" and t.get("path") and t.get("direction") == "in":
        line += f"  -> {terminal_safe(str(t['path']), keep_newlines=False)}"
    return line


class _ProgressBar:
    """The progress bar of a file command's ``--wait`` on a terminal (stderr): first a note of
    what it waits for (the contact's accept), replaced by the bar once bytes move.

    :param waiting: the note shown until then.
    :param combined: one bar for several transfers: their bytes, sizes and rates summed,
        and the longest ETA.
    """

    WIDTH = 30

    def __init__(self, waiting: str, *, combined: bool = False) -> None:
        self.moved = False
        self._combined = combined
        self._latest: dict[str, dict[str, Any]] = {}
        if waiting:
            self._line(waiting)

    @classmethod
    def on_terminal(cls, waiting: str = "", *, combined: bool = False) -> _ProgressBar | None:
        """A bar when stderr is a terminal, else ``None`` (nothing is drawn)."""
        return cls(waiting, combined=combined) if sys.stderr.isatty() else None

    @staticmethod
    def _line(text: str) -> None:
        # One terminal line, cut to the width: a wrapped line would not be overwritten whole.
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except (OSError, ValueError):
            width = 80
        text = terminal_safe(text, keep_newlines=False)[: max(width - 1, 10)]
        sys.stderr.write(f"\r{text}\x1b[K")
        sys.stderr.flush()

    def __call__(self, value: Any) -> None:
        """Take one ``$/progress`` value: ``{id, bytes, size, rate, eta}``, ``{id, state}``, or
        a folder's hashing ``{folder, hashed, files}``."""
        if not isinstance(value, dict):
            return
        if "hashed" in value:
            self._line(
                f"hashing {value.get('folder')}: {value['hashed']} of {value.get('files')} files"
            )
            return
        if "size" not in value:
            if not self.moved and value.get("state") == "accepted":
                self._line("accepted: starting (Ctrl+C stops waiting)")
            return
        if self._combined:
            self._latest[str(value.get("id"))] = value
            views = self._latest.values()
            etas = [v["eta"] for v in views if isinstance(v.get("eta"), int | float)]
            value = {
                "bytes": sum(int(v.get("bytes") or 0) for v in views),
                "size": sum(int(v.get("size") or 0) for v in views),
                "rate": sum(float(v.get("rate") or 0) for v in views),
                "eta": max(etas) if etas else None,
            }
        self.moved = True
        size = int(value.get("size") or 0)
        done = int(value.get("bytes") or 0)
        fraction = done / size if size else 1.0
        filled = int(fraction * self.WIDTH)
        eta = value.get("eta")
        tail = f" ETA {human_time_left(eta)}" if isinstance(eta, int | float) else ""
        self._line(
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:5.1f}% "
            f"{human_bytes(done)} of {human_bytes(size)} "
            f"{human_bytes(int(value.get('rate') or 0))}/s{tail}"
        )

    def close(self) -> None:
        """End the bar's line: a bar stays (the next line goes below it), a note that no
        bytes followed is wiped."""
        sys.stderr.write("\n" if self.moved else "\r\x1b[K")
        sys.stderr.flush()


async def _waited(session: Session, method: str, params: dict[str, Any], bar: Any) -> Any:
    """``session.call(method, params)`` with *bar* (or none) hearing its progress; the bar's
    line is ended however the call ends."""
    try:
        return await session.call(method, params, progress=bar)
    finally:
        if bar is not None:
            bar.close()


async def cmd_send_file(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``send-file CONTACT PATH [PATH ...] [--wait]``: one path prints the transfer id (its end
    state with --wait); several, :func:`_send_files`."""
    session.interrupted_note = OFFERS_STAY
    paths = sub["paths"]
    if len(paths) > 1 or os.path.isdir(paths[0]):
        await _send_files(session, sub["contact"], paths, wait=bool(sub["wait"]))
        return
    params = {"contact": sub["contact"], "path": paths[0]}
    waiting = (
        f"waiting for {sub['contact']} to accept {os.path.basename(paths[0])} ({STOP_WAITING})"
    )
    await _one_transfer(session, "files.send", params, wait=bool(sub["wait"]), waiting=waiting)


#: What the note of ``send-file --wait`` says of Ctrl+C.
STOP_WAITING = "Ctrl+C stops waiting; the offer stays"

#: What Ctrl+C leaves of ``send-file`` (also while it waits): the offers already made.
OFFERS_STAY = "what was offered stays offered (jarvis files lists it; jarvis cancel ID stops it)"

#: Errors of ``files.send`` that concern one path only (unreadable, a folder, too large): the
#: other paths still go.  Any other (the contact, a locked identity) ends the command.
_PATH_ERRORS = frozenset({"invalid", "too_large"})


async def _send_files(session: Session, contact: str, paths: list[str], *, wait: bool) -> None:
    """``send-file`` with several paths, or a folder: :func:`_offer_each` to the contact."""
    uid = (await session.call("contacts.show", {"contact": contact}))["uid"]
    await _offer_each(session, "files.send", {"contact": uid}, paths, wait=wait, who=contact)


async def _offer_each(
    session: Session,
    method: str,
    params: dict[str, Any],
    paths: list[str],
    *,
    wait: bool,
    who: str,
) -> None:
    """Call *method* (``files.send`` or ``groups.sendFile``) with *params* for each of
    *paths* in turn: a line per transfer as it is offered, or with *wait* one progress bar
    for all (``files.wait``) and then a line for each one's end.  A path that cannot be sent
    is said on stderr ("PATH: why") while the others still go.  ``--json``: ``{"transfers":
    [...], "failed": [{"path", "error"}]}``, and for a group ``"messages"``: the group
    message recording each file sent.  Exit status 1 if a path failed, or with *wait* if a
    transfer did not complete.  *who*: whose accept the note of the bar waits for.  A folder
    given to ``files.send`` goes whole (``files.sendFolder``): a line per file offered, and
    its files that could not be read among the failed."""
    quiet = session.options.wants_json()
    offered: list[Any] = []
    messages: list[Any] = []
    failed: list[dict[str, str]] = []
    folders: list[dict[str, Any]] = []
    for path in paths:
        called, hashing = method, None
        if method == "files.send" and os.path.isdir(path):
            called, hashing = "files.sendFolder", _ProgressBar.on_terminal()
        try:
            result = await _waited(session, called, {**params, "path": path}, hashing)
        except RemoteError as e:
            if e.kind not in _PATH_ERRORS:
                raise
            failed.append({"path": path, "error": str(e)})
            if not quiet:
                print(f"jarvis: {terminal_safe(path)}: {terminal_safe(str(e))}", file=sys.stderr)
            continue
        views = result.get("transfers", [result])
        if called == "files.sendFolder":
            folders.append(result)
            left = int(result.get("left_out") or 0)
            if left and not quiet:
                first = terminal_safe(str(result.get("left_out_first") or ""))
                what = "an entry that is" if left == 1 else f"{left} entries that are"
                print(
                    f"jarvis: left out {what} not a regular file (links, devices, pipes, "
                    f"sockets): {first}{' and more' if left > 1 else ''}",
                    file=sys.stderr,
                )
        for unread in result.get("failed", []):
            failed.append(unread)
            if not quiet:
                why = f"{unread['path']}: {unread['error']}"
                print(f"jarvis: {terminal_safe(why)}", file=sys.stderr)
        if "message" in result:
            messages.append(result["message"])
        offered.extend(views)
        if not wait and not quiet:
            print("\n".join(terminal_safe(transfer_line(t)) for t in views))
    if wait and offered:
        count = len(offered)
        files = "a file" if count == 1 else f"{count} files"
        bar = _ProgressBar.on_terminal(
            f"waiting for {who} to accept {files} ({STOP_WAITING})", combined=True
        )
        ids = [t["id"] for t in offered]
        offered = (await _waited(session, "files.wait", {"ids": ids}, bar))["transfers"]
        if not quiet:
            print("\n".join(terminal_safe(transfer_line(t)) for t in offered))
    if quiet:
        answer: dict[str, Any] = {"transfers": offered, "failed": failed}
        if folders:
            # a folder sent whole: its name and what was left out (the first folder's, with
            # "folders" naming each when several paths were folders)
            answer["folder"] = folders[0]["folder"]
            answer["left_out"] = sum(int(f.get("left_out") or 0) for f in folders)
            answer["left_out_first"] = next(
                (f["left_out_first"] for f in folders if f.get("left_out_first")), None
            )
            if len(folders) > 1:
                answer["folders"] = [f["folder"] for f in folders]
        if method == "groups.sendFile":
            answer["messages"] = messages
        print(json_text(answer, indent=2))
    if failed:
        total = len(failed) + len(offered)
        raise errors.InvalidInput(f"{len(failed)} of {total} files were not offered")
    if wait and any(t.get("state") != "complete" for t in offered):
        raise SystemExit(1)


async def _one_transfer(
    session: Session, method: str, params: dict[str, Any], *, wait: bool, waiting: str
) -> None:
    """Call *method*, which starts one transfer: print its id, or with *wait* its end state
    after a progress bar on a terminal, which says *waiting* until bytes move (exit status 1
    unless it completed)."""
    if not wait:
        result = await session.call(method, params)
        session.emit(result["id"], result)
        return
    bar = _ProgressBar.on_terminal(waiting)
    result = await _waited(session, method, {**params, "wait": True}, bar)
    session.emit(transfer_line(result), result)
    if result.get("state") != "complete":
        raise SystemExit(1)


async def group_send_file(session: Session, opts: usage.Options) -> None:
    """``group send-file GROUP PATH [PATH ...] [--wait]``: one line per member's transfer
    (their end states with --wait; exit status 1 unless every one completed); several paths,
    :func:`_offer_each`."""
    session.interrupted_note = OFFERS_STAY
    members = f"the members of {opts['group']}"
    if len(opts["paths"]) > 1:
        group = {"group": opts["group"]}
        await _offer_each(
            session, "groups.sendFile", group, opts["paths"], wait=opts["wait"], who=members
        )
        return
    params: dict[str, Any] = {"group": opts["group"], "path": opts["paths"][0]}
    bar = None
    if opts["wait"]:
        params["wait"] = True
        name = os.path.basename(opts["paths"][0])
        bar = _ProgressBar.on_terminal(
            f"waiting for {members} to accept {name} ({STOP_WAITING})", combined=True
        )
    result = await _waited(session, "groups.sendFile", params, bar)
    transfers = result["transfers"]
    session.emit("\n".join(transfer_line(t) for t in transfers), result)
    if opts["wait"] and any(t.get("state") != "complete" for t in transfers):
        raise SystemExit(1)


async def group_fetch_file(session: Session, opts: usage.Options) -> None:
    """``group fetch-file GROUP MESSAGE [--to DIR] [--from MEMBER] [--wait]``: prints the
    transfer id (its end state with --wait; exit status 1 unless it completed)."""
    params: dict[str, Any] = {"group": opts["group"], "message": opts["message"]}
    if opts["to"] is not None:
        params["directory"] = opts["to"]
    if opts["from"] is not None:
        params["from"] = opts["from"]
    asked = opts["from"] or f"a member of {opts['group']}"
    waiting = f"asking {asked} for the file (Ctrl+C stops waiting)"
    await _one_transfer(
        session, "groups.fetchFile", params, wait=bool(opts["wait"]), waiting=waiting
    )


def policy_lines(policy: dict[str, Any], names: dict[str, str]) -> list[str]:
    """The receiving policy as ``jarvis files --policy`` prints it."""
    lines = [
        f"size cap:    {human_bytes(int(policy['max_size']))}",
        f"downloads:   {terminal_safe(str(policy['downloads']), keep_newlines=False)}",
    ]
    for uid, limit in sorted(policy.get("auto_accept", {}).items()):
        name = terminal_safe(names.get(uid, uid[:12]), keep_newlines=False)
        lines.append(f"auto-accept: {name} up to {human_bytes(int(limit))}")
    return lines


async def cmd_files(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``files [--active] [--policy | --max-size SIZE | --downloads DIR | --auto-accept
    CONTACT=SIZE]``."""
    changes: dict[str, Any] = {}
    if sub["max-size"] is not None:
        changes["max_size"] = sub["max-size"]
    if sub["downloads"] is not None:
        changes["downloads"] = sub["downloads"]
    if sub["auto-accept"] is not None:
        changes["contact"], changes["auto_accept"] = sub["auto-accept"]
    if changes or sub["policy"]:
        policy = await session.call("files.policy", changes)
        contacts = (await session.call("contacts.list"))["contacts"]
        names = {c["uid"]: _contact_name(c) for c in contacts}
        session.emit("\n".join(policy_lines(policy, names)), policy)
        return
    result = await session.call("files.list")
    if sub["active"]:
        result = {**result, "transfers": [t for t in result["transfers"] if _not_ended(t)]}
    lines = [transfer_line(t) for t in result["transfers"]]
    none = "no transfer is under way" if sub["active"] else "no file transfers"
    session.emit("\n".join(lines) if lines else none, result)


async def cmd_accept(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``accept (ID [ID ...] | --all [--from CONTACT]) [--to DIR] [--wait]``."""
    extra = {"directory": sub["to"]} if sub["to"] else {}
    if sub["wait"]:
        session.interrupted_note = ACCEPTED_STAY
    await _answer_offers(session, "files.accept", sub, extra, wait=bool(sub["wait"]))


#: What Ctrl+C leaves of ``accept --wait``: the files accepted go on arriving.
ACCEPTED_STAY = "what was accepted still arrives (jarvis files lists it; jarvis cancel ID stops it)"


async def cmd_decline(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``decline ID [ID ...] | --all [--from CONTACT]``."""
    await _answer_offers(session, "files.decline", sub, {})


def _waiting_for_us(t: dict[str, Any]) -> bool:
    """An offer waiting for our answer."""
    return bool(t["state"] == "offered" and t["direction"] == "in")


def _not_ended(t: dict[str, Any]) -> bool:
    """A transfer not complete, cancelled or failed yet (either way)."""
    return t["state"] not in ("complete", "cancelled", "failed")


async def _answer_offers(
    session: Session,
    method: str,
    sub: usage.Options,
    extra: dict[str, Any],
    *,
    chosen: Callable[[dict[str, Any]], bool] = _waiting_for_us,
    none: str = "no offer waits for your answer",
    wait: bool = False,
) -> None:
    """Answer the transfers *sub* names: its ids, or with ``--all`` every transfer *chosen*
    keeps (by default the offers waiting for our answer; the option named by
    ``sub.contact_option``, ``--from`` or ``--with``: that contact's only), oldest first,
    always in the several-ids form; *none* is said when there is none.  *wait*: see
    :func:`_answer_transfers`."""
    if not sub["all"]:
        await _answer_transfers(session, method, sub["ids"], extra, wait=wait)
        return
    peer, option = None, getattr(sub, "contact_option", "from")
    if sub[option] is not None:
        contact = await session.call("contacts.show", {"contact": sub[option]})
        peer = contact["uid"]
    listed = await session.call("files.list", {})
    picked = [
        t for t in listed["transfers"] if chosen(t) and (peer is None or t["contact"] == peer)
    ]
    picked.sort(key=lambda t: t.get("created") or 0.0)
    if not picked and not session.options.wants_json():
        print(none, file=sys.stderr)
    ids = [t["id"] for t in picked]
    await _answer_transfers(session, method, ids, extra, several=True, wait=wait)


async def cmd_cancel(session: Session, sub: usage.Options, inputs: dict[str, Any]) -> None:
    """``cancel ID [ID ...] | --all [--with CONTACT]``."""
    await _answer_offers(
        session, "files.cancel", sub, {}, chosen=_not_ended, none="no transfer is under way"
    )


async def _answer_transfers(
    session: Session,
    method: str,
    ids: list[str],
    extra: dict[str, Any],
    *,
    several: bool = False,
    wait: bool = False,
) -> None:
    """Call *method* for each of *ids* in turn.  One id (unless *several*): its transfer's
    line (``--json``: the transfer), a failure is the command's.  Several: a line for each
    answered, each failure said on stderr ("ID: why") while the others still go; ``--json``
    prints ``{"transfers": [...], "failed": [{"id", "error"}]}``; any failure makes the exit
    status 1.  With *wait* (``accept --wait``), the lines (and ``--json`` views) are those
    of the transfers as they ended, after ``files.wait`` and a progress bar on a terminal;
    exit status 1 unless all completed."""
    if len(ids) == 1 and not several:
        result = await session.call(method, {"id": ids[0], **extra})
        if wait:
            result = (await _wait_for_arrivals(session, [result]))[0]
        session.emit(transfer_line(result), result)
        if wait and result.get("state") != "complete":
            raise SystemExit(1)
        return
    answered: list[Any] = []
    failed: list[dict[str, str]] = []
    for ident in ids:
        try:
            result = await session.call(method, {"id": ident, **extra})
        except (RemoteError, errors.JarvisError) as e:
            said = error_line(Failure(e)) or type(e).__name__
            failed.append({"id": ident, "error": said})
            if not session.options.wants_json():
                print(f"jarvis: {terminal_safe(ident)}: {terminal_safe(said)}", file=sys.stderr)
            continue
        answered.append(result)
        if not session.options.wants_json() and not wait:
            print(terminal_safe(transfer_line(result)))
    if wait and answered:
        answered = await _wait_for_arrivals(session, answered)
        if not session.options.wants_json():
            print("\n".join(terminal_safe(transfer_line(t)) for t in answered))
    if session.options.wants_json():
        print(json_text({"transfers": answered, "failed": failed}, indent=2))
    if failed:
        raise errors.InvalidInput(f"{len(failed)} of {len(ids)} transfers were not answered")
    if wait and any(t.get("state") != "complete" for t in answered):
        raise SystemExit(1)


async def _wait_for_arrivals(session: Session, accepted: list[Any]) -> list[Any]:
    """The views of the *accepted* transfers once each has ended (``files.wait``), with a
    progress bar for them all on a terminal meanwhile."""
    files = "a file" if len(accepted) == 1 else f"{len(accepted)} files"
    bar = _ProgressBar.on_terminal(
        f"receiving {files} (Ctrl+C stops waiting; they still arrive)", combined=True
    )
    ids = [t["id"] for t in accepted]
    return list((await _waited(session, "files.wait", {"ids": ids}, bar))["transfers"])


COMMANDS: dict[str, Callable[[Session, Any, dict[str, Any]], Any]] = {
    "init": cmd_init,
    "daemon": cmd_daemon,
    "unlock": cmd_unlock,
    "lock": cmd_lock,
    "whoami": cmd_whoami,
    "add": cmd_add,
    "contacts": cmd_contacts,
    "send": cmd_send,
    "history": cmd_history,
    "verify": cmd_verify,
    "rename": cmd_rename,
    "remove": cmd_remove,
    "peers": cmd_peers,
    "settings": cmd_settings,
    "passwd": cmd_passwd,
    "watch": cmd_watch,
    "rpc": cmd_rpc,
    "exec": cmd_exec,
    "hook": cmd_hook,
    "mailbox": cmd_mailbox,
    "group": cmd_group,
    "export": cmd_export,
    "import": cmd_import,
    "delete-account": cmd_delete_account,
    "send-file": cmd_send_file,
    "files": cmd_files,
    "accept": cmd_accept,
    "decline": cmd_decline,
    "cancel": cmd_cancel,
}


def error_line(failure: Failure) -> str | None:
    """Return the one-line message for a failed command (``None``: a bug, show a traceback)."""
    exc = failure.value
    if getattr(exc, "kind", None) == "too_many_attempts":
        return too_many_attempts_text(getattr(exc, "data", None)) + " (the password was not tried)"
    if isinstance(exc, RemoteError | errors.JarvisError):
        text = str(exc) or (type(exc).__doc__ or type(exc).__name__).strip().splitlines()[0]
        return " ".join(text.split())
    if isinstance(exc, error.ConnectionLost):
        return "the connection to the daemon was lost (did it stop?)"
    if isinstance(exc, error.ConnectError | OSError):
        return f"cannot reach the daemon: {exc}"
    return None


def run(reactor: Any, options: CommandLine, inputs: dict[str, Any]) -> defer.Deferred[None]:
    """Run the parsed command on *reactor* (the function ``task.react`` calls).

    :returns: a Deferred that fails with ``SystemExit`` carrying the exit status on errors and
        after Ctrl+C; it succeeds (status 0) otherwise.
    """
    session = Session(reactor, options)
    command = options.subCommand
    assert command is not None
    handler = COMMANDS[command]
    work = defer.ensureDeferred(handler(session, options.subOptions, inputs))
    interrupted: list[bool] = []
    finished: defer.Deferred[None] = defer.Deferred()

    def on_shutdown() -> defer.Deferred[None]:
        # Ctrl+C or SIGTERM: cancel the call in flight (the client sends $/cancelRequest),
        # then wait until the connection is closed so that the cancel reaches the daemon.
        if not work.called:
            interrupted.append(True)
            work.cancel()
        return finished

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)

    def outcome(result: Any) -> Any:
        if not isinstance(result, Failure):
            return None
        if result.check(SystemExit):
            return result
        if interrupted and result.check(defer.CancelledError):
            if command == "watch":
                return None
            print(f"jarvis: interrupted; {session.interrupted_note}", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED)
        if result.check(BrokenPipeError):
            # stdout closed early (``| head -1``): nothing more to say, and nowhere to say it
            quiet_stdout()
            raise SystemExit(EXIT_BROKEN_PIPE)
        line = error_line(result)
        if line is None:
            print(f"jarvis: internal error: {result.getErrorMessage()}", file=sys.stderr)
            result.printTraceback(file=sys.stderr)
        else:
            print(f"jarvis: {line}", file=sys.stderr)
        if getattr(result.value, "kind", None) == "too_many_attempts":
            raise SystemExit(EXIT_TOO_MANY_ATTEMPTS)
        raise SystemExit(EXIT_FAILURE)

    def close(result: Any) -> defer.Deferred[Any]:
        d = session.close()
        d.addBoth(lambda _: result)
        return d

    work.addBoth(outcome)
    work.addBoth(close)

    def done(result: Any) -> Any:
        finished.callback(None)
        return result

    return work.addBoth(done)
