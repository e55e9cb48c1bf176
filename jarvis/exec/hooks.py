"""Hooks: programs the local user binds to the node's events (an auto-reply bot, a notifier).

A :class:`Hook` names an event (:data:`HOOK_EVENTS`), optionally a contact and a regex on the
message body, and a program.  The :class:`HookDispatcher` subscribes to the node's events the
way the local API server does (``node.subscribe``) and, for each matching event, runs the
program through the daemon's :class:`~jarvis.exec.runner.ProcessRunner` with the event as JSON
on stdin and ``JARVIS_*`` variables.  A *reply* hook's standard output (exit status 0, not
blank) is sent back to the contact with the node's ``send_message``, as ``messages.send`` does.

Bounds, so that a contact flooding messages cannot fork-bomb the machine:

- a per-hook, per-contact token bucket (``rate`` runs per minute, as a burst too): events beyond
  it are dropped and counted (``dropped_rate``);
- one bounded queue (:data:`MAX_QUEUE` events) in front of at most ``limit`` hook processes:
  events beyond it are dropped and counted (``dropped_queue``);
- each run has its timeout and the runner's output cap.

Hooks never run while the identity is locked; a failing hook is logged (name, exit status) and
never affects delivery (the node stored and acknowledged the message before it emitted the
event).  Hooks are configured only locally (API ``hooks.*``, CLI ``jarvis hook``), stored in
``hooks.json`` in the data directory (0600, written atomically off the reactor thread); nothing
a peer sends can add or change one.  Nothing here logs message text, arguments or output.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from jarvis.common import errors
from jarvis.common.atomicfile import write_text_atomically
from jarvis.exec.runner import ProcessRunner, Run, RunResult, RunSpec

#: The events a hook may bind to.
HOOK_EVENTS = ("message.received", "peer.statusChanged", "contact.changed")

#: Events waiting for a hook process, at most; more are dropped and counted.
MAX_QUEUE = 64

#: Hook processes at once by default.
DEFAULT_LIMIT = 4

#: The highest ``rate`` (runs per minute per contact).
MAX_RATE = 600

#: A reply hook's output kept, bytes (a message's largest text).
REPLY_CAP = 64 * 1024

#: The file of the data directory that holds the hooks.
HOOKS_FILE = "hooks.json"

_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


def check_hook_name(name: str) -> None:
    """:raises errors.InvalidInput: unless *name* is 1 to 32 letters, digits, ``-``, ``_``."""
    if not _NAME.fullmatch(name):
        raise errors.InvalidInput("a hook name is 1 to 32 letters, digits, '-' or '_'")


@dataclass(frozen=True)
class Hook:
    """One binding of a program to an event.

    :param name: unique name.
    :param argv: the program and its arguments (no shell).
    :param event: one of :data:`HOOK_EVENTS`.
    :param contact: only events of this contact uid (``None``: every contact).
    :param pattern: only messages whose body matches this regex (``re.search``).
    :param reply: send the program's stdout back to the contact.
    :param timeout: seconds per run.
    :param rate: runs per minute per contact (and the burst).
    """

    name: str
    argv: tuple[str, ...]
    event: str = "message.received"
    contact: str | None = None
    pattern: str | None = None
    reply: bool = False
    timeout: float = 10.0
    rate: int = 10

    def check(self) -> None:
        """:raises errors.InvalidInput: for a bad name, event, argv, pattern or limit."""
        check_hook_name(self.name)
        if self.event not in HOOK_EVENTS:
            raise errors.InvalidInput(f"hooks bind to {', '.join(HOOK_EVENTS)}")
        if not self.argv or not self.argv[0]:
            raise errors.InvalidInput("a hook needs a program to run")
        if self.reply and self.event != "message.received":
            raise errors.InvalidInput("only message.received hooks can reply")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise errors.InvalidInput(f"bad pattern: {e}") from None
        if not 1 <= self.rate <= MAX_RATE:
            raise errors.InvalidInput(f"rate must be between 1 and {MAX_RATE}")

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        value = asdict(self)
        value["argv"] = list(self.argv)
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Hook:
        """:raises errors.InvalidInput: for a malformed entry."""
        try:
            hook = cls(**{**value, "argv": tuple(value["argv"])})
        except (TypeError, KeyError) as e:
            raise errors.InvalidInput(f"malformed hook: {e}") from None
        hook.check()
        return hook


def event_contact(event: str, payload: dict[str, Any]) -> str | None:
    """The contact uid an event is about (``None`` if none)."""
    if event == "message.received":
        return payload.get("message", {}).get("contact")
    if event == "peer.statusChanged":
        return payload.get("peer", {}).get("uid")
    if event == "contact.changed":
        return payload.get("contact", {}).get("uid") or payload.get("uid")
    return None


class _Bucket:
    """A token bucket: ``rate`` tokens per minute, at most ``rate`` held."""

    def __init__(self, rate: int, now: float) -> None:
        self.tokens = float(rate)
        self.at = now

    def take(self, rate: int, now: float) -> bool:
        self.tokens = min(float(rate), self.tokens + (now - self.at) * rate / 60.0)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Collector:
    """Keeps a hook run's stdout (up to the run's cap) for the reply."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def state_changed(self, run: Run) -> None:
        pass

    def output(self, run: Run, stream: str, text: str) -> None:
        if stream == "stdout":
            self.parts.append(text)

    def congested(self) -> bool:
        return False


@dataclass
class _Figures:
    ran: int = 0
    failed: int = 0
    replied: int = 0
    dropped: int = 0


class HookDispatcher(Service):
    """Runs the hooks (see the module docstring).

    :param node: the ``Node``: ``subscribe``, ``locked``, ``resolve``, ``send_message``.
    :param runner: the daemon's process runner.
    :param data_dir: where ``hooks.json`` lives.
    :param run_blocking: runs a blocking function off the reactor thread (the file write).
    :param clock: ``IReactorTime`` for the rate limits.
    :param limit: hook processes at once.
    :param max_queue: events waiting, at most.
    """

    log = Logger()

    def __init__(
        self,
        node: Any,
        runner: ProcessRunner,
        data_dir: str,
        run_blocking: Callable[..., defer.Deferred[Any]],
        clock: Any,
        *,
        limit: int = DEFAULT_LIMIT,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.node = node
        self.runner = runner
        self.path = os.path.join(data_dir, HOOKS_FILE)
        self.run_blocking = run_blocking
        self.clock = clock
        self.limit = limit
        self.max_queue = max_queue
        self.hooks: dict[str, Hook] = {}
        self._patterns: dict[str, re.Pattern[str]] = {}
        self._figures: dict[str, _Figures] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._queue: deque[tuple[Hook, str, dict[str, Any]]] = deque()
        self._unsubscribe: Callable[[], None] | None = None
        self.busy = 0
        self.peak_running = 0
        self.ran = 0
        self.failed = 0
        self.replied = 0
        self.dropped_rate = 0
        self.dropped_queue = 0
        self.skipped_locked = 0
        self._saving: defer.Deferred[Any] = defer.succeed(None)

    # -- configuration -----------------------------------------------------------------------

    def load(self) -> None:
        """Read ``hooks.json`` (at start-up: a small synchronous read).  A malformed file is
        logged and ignored (no hook runs) rather than stopping the daemon."""
        try:
            with open(self.path, encoding="utf-8") as f:
                entries = json.load(f)
            hooks = [Hook.from_json(e) for e in entries]
        except FileNotFoundError:
            return
        except (OSError, ValueError, errors.JarvisError, AttributeError) as e:
            self.log.error("ignoring {path}: {error}", path=self.path, error=str(e))
            return
        for hook in hooks:
            self._install(hook)

    def _install(self, hook: Hook) -> None:
        self.hooks[hook.name] = hook
        self._figures.setdefault(hook.name, _Figures())
        if hook.pattern is not None:
            self._patterns[hook.name] = re.compile(hook.pattern)
        else:
            self._patterns.pop(hook.name, None)

    def _save(self) -> defer.Deferred[Any]:
        text = json.dumps([h.to_json() for h in self.hooks.values()], indent=2) + "\n"

        def write(_: Any) -> defer.Deferred[Any]:
            return self.run_blocking(write_text_atomically, self.path, text, mode=0o600)

        # writes happen in order, the latest content last
        self._saving = self._saving.addBoth(write)
        return self._saving

    def add(self, hook: Hook) -> defer.Deferred[Any]:
        """Add or replace *hook* and store the hooks; fires with its view."""
        hook.check()
        self._install(hook)
        return self._save().addCallback(lambda _: self.view(hook))

    def remove(self, name: str) -> defer.Deferred[Any]:
        """Remove hook *name*; :raises errors.NotFound: if there is none."""
        if name not in self.hooks:
            raise errors.NotFound(f"no hook named {name!r} (see 'jarvis hook list')")
        del self.hooks[name]
        self._patterns.pop(name, None)
        self._figures.pop(name, None)
        return self._save().addCallback(lambda _: {"removed": True})

    def view(self, hook: Hook) -> dict[str, Any]:
        """The API form of *hook* with its figures."""
        figures = self._figures.get(hook.name, _Figures())
        return {**hook.to_json(), **asdict(figures)}

    def listing(self) -> dict[str, Any]:
        """``hooks.list``."""
        return {
            "hooks": [self.view(h) for h in self.hooks.values()],
            "limit": self.limit,
            "max_queue": self.max_queue,
            "queued": len(self._queue),
            "running": self.busy,
            "peak_running": self.peak_running,
            "ran": self.ran,
            "dropped_rate": self.dropped_rate,
            "dropped_queue": self.dropped_queue,
            "skipped_locked": self.skipped_locked,
            "failed": self.failed,
            "replied": self.replied,
        }

    # -- service -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.load()
        self._unsubscribe = self.node.subscribe(self._event)

    def stopService(self) -> Any:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._queue.clear()
        return self._saving

    # -- dispatching ---------------------------------------------------------------------------

    def _event(self, event: str, payload: dict[str, Any]) -> None:
        if event not in HOOK_EVENTS or not self.hooks:
            return
        if self.node.locked:
            self.skipped_locked += 1
            return
        contact = event_contact(event, payload)
        if contact is None:
            return
        body: str | None = None
        if event == "message.received":
            message = payload.get("message", {})
            if message.get("direction", "in") != "in":
                return
            body = message.get("body") or ""
        now = self.clock.seconds()
        for hook in list(self.hooks.values()):
            if hook.event != event or (hook.contact is not None and hook.contact != contact):
                continue
            pattern = self._patterns.get(hook.name)
            if pattern is not None and (body is None or pattern.search(body) is None):
                continue
            figures = self._figures[hook.name]
            bucket = self._buckets.get((hook.name, contact))
            if bucket is None:
                bucket = self._buckets[(hook.name, contact)] = _Bucket(hook.rate, now)
            if not bucket.take(hook.rate, now):
                self.dropped_rate += 1
                figures.dropped += 1
                continue
            if len(self._queue) >= self.max_queue:
                self.dropped_queue += 1
                figures.dropped += 1
                continue
            self._queue.append((hook, event, payload))
        self._pump()

    def _pump(self) -> None:
        if self._queue and self.node.locked:
            # locked meanwhile: what waits is dropped, as events arriving now are
            self.skipped_locked += len(self._queue)
            self._queue.clear()
        while self._queue and self.busy < self.limit:
            hook, event, payload = self._queue.popleft()
            self._run(hook, event, payload)

    def _environment(self, hook: Hook, event: str, payload: dict[str, Any]) -> dict[str, str]:
        contact = event_contact(event, payload) or ""
        env = {"JARVIS_HOOK": hook.name, "JARVIS_EVENT": event, "JARVIS_CONTACT_UID": contact}
        name = None
        resolve = getattr(self.node, "resolve", None)
        if resolve is not None:
            try:
                found = resolve(contact)
                name = found.alias or found.name
            except Exception:
                name = None
        if name:
            env["JARVIS_CONTACT_NAME"] = name.replace("\x00", "")
        message = payload.get("message")
        if isinstance(message, dict) and message.get("id"):
            env["JARVIS_MESSAGE_ID"] = str(message["id"])
        return env

    def _run(self, hook: Hook, event: str, payload: dict[str, Any]) -> None:
        stdin = json.dumps({"event": event, "hook": hook.name, "payload": payload}) + "\n"
        spec = RunSpec(
            argv=hook.argv,
            env=self._environment(hook, event, payload),
            timeout=hook.timeout,
            stdin=stdin.encode("utf-8"),
            output_cap=REPLY_CAP,
            owner=f"hook:{hook.name}",
        )
        collector = _Collector()
        figures = self._figures.get(hook.name, _Figures())
        try:
            run = self.runner.start(spec, collector)
        except errors.JarvisError as e:
            self.failed += 1
            figures.failed += 1
            self.log.warn("hook {name} cannot run: {error}", name=hook.name, error=str(e))
            return
        self.busy += 1
        self.ran += 1
        figures.ran += 1
        self.peak_running = max(self.peak_running, self.busy)

        def ended(result: RunResult) -> Any:
            ok = result.exit_code == 0 and result.signal is None
            if not ok:
                self.failed += 1
                figures.failed += 1
                self.log.warn(
                    "hook {name} failed: exit {code}, signal {signal}, timed out {timed_out}",
                    name=hook.name,
                    code=result.exit_code,
                    signal=result.signal,
                    timed_out=result.timed_out,
                )
                return None
            text = "".join(collector.parts).rstrip("\n")
            if hook.reply and text.strip() and not self.node.locked:
                contact = event_contact(event, payload)
                d = defer.maybeDeferred(self.node.send_message, contact, text)
                return d.addCallback(lambda _: self._replied(figures))
            return None

        def problem(failure: Any) -> None:
            self.failed += 1
            figures.failed += 1
            self.log.warn(
                "hook {name} failed: {error}", name=hook.name, error=failure.getErrorMessage()
            )

        def done(_: Any) -> None:
            self.busy -= 1
            self._pump()

        run.done.addCallback(ended).addErrback(problem).addBoth(done)

    def _replied(self, figures: _Figures) -> None:
        self.replied += 1
        figures.replied += 1


__all__ = ["HOOK_EVENTS", "Hook", "HookDispatcher", "check_hook_name"]
