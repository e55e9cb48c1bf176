"""The local API's ``exec.*`` and ``hooks.*`` methods (declared here, listed by
:func:`jarvis.ipc.methods.method_specs`): the API layer over :mod:`jarvis.exec`.

``exec.run`` streams a program's output as ``$/progress`` values and answers with how it ended;
``$/cancelRequest`` (or the client's disconnection) terminates its process group.  Handlers only
translate params into :class:`~jarvis.exec.runner.ProcessRunner` and
:class:`~jarvis.exec.hooks.HookDispatcher` calls.  This module must not import the reactor and
never logs params (argv, environment, stdin) or output.

It lives in :mod:`jarvis.ipc` (not in :mod:`jarvis.exec`) so that imports point one way: the API
layer knows the process runner, the runner knows nothing of JSON-RPC.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from jarvis.common import errors
from jarvis.exec import runner as runner_module
from jarvis.exec.hooks import HOOK_EVENTS, MAX_RATE, Hook, check_hook_name
from jarvis.exec.runner import Run, RunSpec
from jarvis.ipc import jsonrpc
from jarvis.ipc.registry import Invocation, MethodSpec, Param

#: A client with more than this many bytes written for it and not yet read pauses the output
#: of its runs (the programs block on their pipes) until it is below :data:`LOW_WATER`.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


def _argv(value: list[Any]) -> str | None:
    if not value:
        return "must not be empty"
    if not all(isinstance(a, str) for a in value):
        return "must be an array of strings"
    if not value[0]:
        return "the program name must not be empty"
    return None


def _env(value: dict[str, Any]) -> str | None:
    if not all(isinstance(v, str) for v in value.values()):
        return "values must be strings"
    return None


def _timeout(value: float) -> str | None:
    if 0 < value <= runner_module.MAX_TIMEOUT:
        return None
    return f"must be between 0 and {runner_module.MAX_TIMEOUT:g} seconds"


class ApiRunObserver:
    """Turns a run's output and state into ``$/progress`` values for one API call.

    Congested while the calling connection holds more than :data:`HIGH_WATER` bytes for its
    client (until it is back under :data:`LOW_WATER`); an in-process call is never congested.
    """

    def __init__(self, progress: Any, session: Any) -> None:
        self._progress = progress
        self._session = session
        self._congested = False

    def state_changed(self, run: Run) -> None:
        self._progress({"stage": run.state, "id": run.id, "pid": run.pid})

    def output(self, run: Run, stream: str, text: str) -> None:
        self._progress({"stage": "output", "id": run.id, "stream": stream, "text": text})

    def congested(self) -> bool:
        buffered = getattr(self._session, "buffered", 0)
        self._congested = buffered > (LOW_WATER if self._congested else HIGH_WATER)
        return self._congested


def _runner(inv: Invocation) -> Any:
    runner = getattr(inv.ctx, "runner", None)
    if runner is None:
        raise errors.InvalidInput("this daemon runs no programs")
    return runner


def _hooks(inv: Invocation) -> Any:
    hooks = getattr(inv.ctx, "hooks", None)
    if hooks is None:
        raise errors.InvalidInput("this daemon runs no hooks")
    return hooks


def exec_run(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    if ("argv" in p) == ("command" in p):
        raise jsonrpc.invalid_params("argv", "give exactly one of argv or command")
    runner = _runner(inv)
    stdin = p.get("stdin")
    options: dict[str, Any] = {
        "cwd": p.get("cwd"),
        "env": dict(p.get("env") or {}),
        "timeout": float(p.get("timeout", runner_module.DEFAULT_TIMEOUT)),
        "pty": bool(p.get("pty", False)),
        "stdin": stdin.encode("utf-8") if stdin is not None else None,
        "output_cap": int(p.get("output_cap", runner_module.DEFAULT_OUTPUT_CAP)),
        "grace": float(p.get("grace", runner_module.DEFAULT_GRACE)),
    }
    if "command" in p:
        spec = RunSpec.shell(p["command"], **options)
    else:
        spec = RunSpec(argv=tuple(p["argv"]), **options)
    run = runner.start(spec, ApiRunObserver(inv.progress, inv.session))
    if run.state == "queued":
        inv.progress({"stage": "queued", "id": run.id, "pid": None, "ahead": runner.queued_count()})

    def cancel(_: defer.Deferred[Any]) -> None:
        run.kill(cancelled=True)

    answer: defer.Deferred[Any] = defer.Deferred(cancel)

    def ended(result: Any) -> None:
        if not answer.called:
            answer.callback(result.view())

    def failed(failure: Any) -> None:
        if not answer.called:
            answer.errback(failure)

    run.done.addCallbacks(ended, failed)
    return answer


def exec_list(inv: Invocation) -> Any:
    return _runner(inv).listing()


def exec_kill(inv: Invocation) -> Any:
    run = _runner(inv).get(inv.params["id"])
    run.kill()
    return {"id": run.id, "state": run.state}


def hooks_list(inv: Invocation) -> Any:
    return _hooks(inv).listing()


def hooks_add(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params

    def build(uid: str | None) -> defer.Deferred[Any]:
        hook = Hook(
            name=p["name"],
            argv=tuple(p["argv"]),
            event=p.get("event", "message.received"),
            contact=uid,
            pattern=p.get("pattern"),
            reply=bool(p.get("reply", False)),
            timeout=float(p.get("timeout", 10.0)),
            rate=int(p.get("rate", 10)),
        )
        return _hooks(inv).add(hook)

    contact = p.get("contact")
    if not contact:
        return build(None)
    d = defer.maybeDeferred(inv.ctx.node.show_contact, contact)
    return d.addCallback(lambda view: build(view["uid"]))


def hooks_remove(inv: Invocation) -> defer.Deferred[Any]:
    return _hooks(inv).remove(inv.params["name"])


def _hook_name(value: str) -> str | None:
    try:
        check_hook_name(value)
    except errors.InvalidInput as e:
        return str(e)
    return None


def _hook_event(value: str) -> str | None:
    return None if value in HOOK_EVENTS else f"must be one of {', '.join(HOOK_EVENTS)}"


def _rate(value: int) -> str | None:
    return None if 1 <= value <= MAX_RATE else f"must be between 1 and {MAX_RATE}"


_RUN_RESULT = (
    "{id, pid, exit_code (null when a signal ended it), signal ('SIGTERM'... or null), "
    "timed_out, killed (exec.kill), cancelled, duration (s), queued_for (s), bytes: {stdout, "
    "stderr, kept (delivered), dropped (beyond output_cap, counted only)}}"
)
_RUN_VIEW = (
    "{id, argv, owner ('api' or 'hook:NAME'), state ('queued'|'running'|'stopping'|'ended'), "
    "pid, pty, timeout, age, paused (output waits for a slow client), bytes, result}"
)
_HOOK_VIEW = (
    "{name, event, argv, contact (uid or null: every contact), pattern, reply, timeout, rate, "
    "ran, failed, replied, dropped}"
)


def exec_specs() -> tuple[MethodSpec, ...]:
    """The ``exec.*`` and ``hooks.*`` declarations, in documentation order."""
    return (
        MethodSpec(
            "exec.run",
            exec_run,
            (
                Param("argv", list, False, "the program and its arguments (no shell)", _argv),
                Param(
                    "command",
                    str,
                    False,
                    "instead of argv: a command line run by /bin/sh -c (a shell only when "
                    "asked for)",
                ),
                Param("cwd", str, False, "absolute working directory (default: the daemon's)"),
                Param("env", dict, False, "variables added to the daemon's environment", _env),
                Param(
                    "timeout",
                    float,
                    False,
                    f"seconds before the process group is terminated (default "
                    f"{runner_module.DEFAULT_TIMEOUT:g})",
                    _timeout,
                ),
                Param("pty", bool, False, "run on a pseudo-terminal (stdout and stderr merged)"),
                Param("stdin", str, False, "text written to standard input, which is then closed"),
                Param(
                    "output_cap",
                    int,
                    False,
                    f"bytes of output delivered; more is counted, not kept (default "
                    f"{runner_module.DEFAULT_OUTPUT_CAP}, at most {runner_module.MAX_OUTPUT_CAP})",
                ),
                Param(
                    "grace",
                    float,
                    False,
                    "seconds between SIGTERM and SIGKILL "
                    f"(default {runner_module.DEFAULT_GRACE:g})",
                ),
            ),
            result=_RUN_RESULT,
            doc="Run a program for the local user and stream its output: with a progress token "
            "each `$/progress` value is `{stage: 'queued'|'running'|'stopping', id, pid}` or "
            "`{stage: 'output', id, stream ('stdout'|'stderr'), text}` (the exact text, invalid "
            "UTF-8 replaced; escape sequences included: a client must make them safe before "
            "showing them). The program runs in its own process group; on timeout, "
            "`$/cancelRequest`, exec.kill or the client's disconnection the group gets SIGTERM, "
            "then SIGKILL after grace. At most the daemon's --exec-limit programs run at once; "
            "later runs wait in order (`queued`). A client that reads slowly pauses the "
            "program's output instead of making the daemon buffer it. Answers when the program "
            "and everything it started are gone. See docs/exec.md.",
            deadline=None,
        ),
        MethodSpec(
            "exec.list",
            exec_list,
            result="{runs: [run], finished: [run] (the latest), limit, running, queued, "
            "peak_running, started_total, refused_total}; run: " + _RUN_VIEW,
            doc="List the programs running or queued (exec.run and hooks) and the latest "
            "finished ones.",
        ),
        MethodSpec(
            "exec.kill",
            exec_kill,
            (Param("id", int, True, "the run id (from exec.list or the exec.run progress)"),),
            result="{id, state}",
            doc="Terminate a run's process group (SIGTERM, then SIGKILL after its grace) or "
            "drop it from the queue; its exec.run call answers with killed: true.",
        ),
        MethodSpec(
            "hooks.list",
            hooks_list,
            result="{hooks: [hook], limit, max_queue, queued, running, peak_running, ran, "
            "dropped_rate, dropped_queue, skipped_locked, failed, replied}; hook: " + _HOOK_VIEW,
            doc="List the hooks and their figures.",
        ),
        MethodSpec(
            "hooks.add",
            hooks_add,
            (
                Param("name", str, True, "a unique name: letters, digits, - and _", _hook_name),
                Param("argv", list, True, "the program and its arguments (no shell)", _argv),
                Param(
                    "event",
                    str,
                    False,
                    f"the event: {', '.join(HOOK_EVENTS)} (default message.received)",
                    _hook_event,
                ),
                Param(
                    "contact",
                    str,
                    False,
                    "only this contact (name, alias or uid prefix); default every contact",
                ),
                Param("pattern", str, False, "only message bodies matching this regex (search)"),
                Param(
                    "reply",
                    bool,
                    False,
                    "send the program's standard output back to the contact (exit 0, not blank)",
                ),
                Param("timeout", float, False, "seconds per run (default 10)", _timeout),
                Param(
                    "rate",
                    int,
                    False,
                    f"runs per minute per contact, 1..{MAX_RATE} (default 10): more are dropped",
                    _rate,
                ),
            ),
            result=_HOOK_VIEW,
            doc="Bind a program to an event (replaces a hook of the same name). It runs with "
            "the event as JSON on stdin and JARVIS_* variables; see docs/exec.md. Only the "
            "local user configures hooks; they never run while the identity is locked.",
        ),
        MethodSpec(
            "hooks.remove",
            hooks_remove,
            (Param("name", str, True, "the hook's name"),),
            result="{removed: true}",
            doc="Remove a hook.",
        ),
    )
