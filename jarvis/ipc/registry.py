"""The method registry: every API method declared once, and the rules every call goes through.

A :class:`MethodSpec` names a method, its params schema, its result, its deadline, whether it
needs an unlocked identity, its concurrency group and its documentation.  :meth:`Registry.call`
validates the params before anything runs, checks the lock, waits for the concurrency group's
:class:`~twisted.internet.defer.DeferredSemaphore` (methods without a group run at once),
applies the deadline on the injected clock (a :class:`DeadlineTimer`: one delayed call for all
pending requests; a call that answers synchronously needs none), supports cancellation and
records the requests in flight for ``daemon.status``.

Unknown params are refused (``-32602`` naming the field): a typo must not silently drop an
option.  Params whose names start with ``_`` are transport-level (the server strips
``_progress`` before calling) and are refused here too.

This module knows nothing of sockets or JSON lines and must not import the reactor: time comes
from the clock passed in.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import CoroutineType
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.common import errors
from jarvis.ipc import jsonrpc

#: A progress callback: receives one JSON-able value (usually a dict with ``stage``).
ProgressCallback = Callable[[Any], None]


class Session(Protocol):
    """What a method may ask of the connection that called it."""

    #: the conversation this client shows (set by ``ui.focus``): a contact's uid, or "group:"
    #: and a group's id
    focus: str | None

    def subscribe_events(self, names: frozenset[str] | None = None) -> None:
        """Forward the Node's events called *names* (all for ``None``) to this connection as
        notifications; a later call replaces the names."""


@dataclass(frozen=True)
class Param:
    """One named parameter of a method.

    :param name: the field name in ``params``.
    :param type: the accepted JSON type(s): ``str``, ``int``, ``bool``, ``list``, ``dict``,
        ``float`` (accepts ints too) or a tuple of them; ``bool`` is never accepted as ``int``.
    :param required: whether the field must be present.
    :param doc: one line for the documentation.
    :param validator: returns a problem description for a bad value, ``None`` for a good one;
        runs after the type check.
    :param nullable: whether JSON ``null`` is accepted (it means "not given").
    """

    name: str
    type: type | tuple[type, ...]
    required: bool = False
    doc: str = ""
    validator: Callable[[Any], str | None] | None = None
    nullable: bool = False

    def type_names(self) -> str:
        """Return the JSON type name(s) for messages and docs, e.g. ``string or null``."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        names = [_JSON_NAMES.get(t, t.__name__) for t in types]
        if self.nullable:
            names.append("null")
        return " or ".join(names)

    def check(self, value: Any) -> str | None:
        """Return what is wrong with *value*, or ``None`` if it is acceptable."""
        if value is None:
            return None if self.nullable else f"must be {self.type_names()}, not null"
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        ok = False
        for t in types:
            if t is float:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            elif t is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, t)
            if ok:
                break
        if not ok:
            return f"must be {self.type_names()}, not {_json_type(value)}"
        if self.validator is not None:
            return self.validator(value)
        return None


_JSON_NAMES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


def _json_type(value: Any) -> str:
    for t, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        (list, "array"),
        (dict, "object"),
    ):
        if isinstance(value, t):
            return name
    return type(value).__name__


@dataclass(frozen=True)
class Invocation:
    """What a method handler receives.

    :param ctx: the daemon's :class:`~jarvis.ipc.methods.MethodContext`.
    :param params: the validated params (only declared fields; absent optional ones missing).
    :param progress: call it with a JSON-able value to report progress (never raises).
    :param registry: the registry running the call (``daemon.status`` lists its requests).
    :param session: the calling connection, or ``None`` for in-process calls.
    """

    ctx: Any
    params: Mapping[str, Any]
    progress: ProgressCallback
    registry: Registry
    session: Session | None = None


#: A method handler: returns the JSON-able result or a Deferred of it.
Handler = Callable[[Invocation], Any]


@dataclass(frozen=True)
class MethodSpec:
    """The one declaration of an API method.

    :param name: ``group.verb`` name, e.g. ``messages.send``.
    :param handler: the function that does the work (see :data:`Handler`).
    :param params: the accepted params.
    :param result: a description of the result for the documentation.
    :param doc: what the method does, for the documentation.
    :param deadline: seconds before the call fails with "timed out" (``None``: no deadline).
    :param needs_unlocked: whether the identity must exist and be unlocked.
    :param concurrency: the name of the concurrency group (see :class:`Registry`), or ``None``.
    :param progress: whether the method reports progress (documentation only).
    """

    name: str
    handler: Handler
    params: tuple[Param, ...] = ()
    result: str = "null"
    doc: str = ""
    deadline: float | None = 10.0
    needs_unlocked: bool = True
    concurrency: str | None = None
    progress: bool = False

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check *params* against the schema.

        :returns: a copy holding only the fields given.
        :raises jsonrpc.RpcError: ``-32602`` naming the first bad, missing or unknown field.
        """
        known = {p.name: p for p in self.params}
        for name in params:
            if name not in known:
                raise jsonrpc.invalid_params(name, "unknown parameter")
        checked: dict[str, Any] = {}
        for p in self.params:
            if p.name not in params:
                if p.required:
                    raise jsonrpc.invalid_params(p.name, "missing required parameter")
                continue
            problem = p.check(params[p.name])
            if problem is not None:
                raise jsonrpc.invalid_params(p.name, problem)
            checked[p.name] = params[p.name]
        return checked


@dataclass
class InFlight:
    """A request being served (mutable: ``progress`` changes while it runs)."""

    method: str
    id: int | str | None
    started: float
    progress: Any = None


@dataclass(frozen=True)
class ConcurrencyGroup:
    """A named limit shared by several methods.

    :param name: the group name methods refer to.
    :param limit: how many calls of the group may run at once; the others wait in order.
    :param doc: why the limit exists.
    """

    name: str
    limit: int
    doc: str = ""


class Registry:
    """The set of API methods and the machinery every call goes through.

    :param specs: the methods.
    :param groups: the concurrency groups the methods name.

    Time comes from ``ctx.clock`` of each call (an ``IReactorTime``; a ``task.Clock`` in tests).
    :raises ValueError: for a duplicate method name or an unknown concurrency group.
    """

    log = Logger()

    def __init__(
        self,
        specs: Iterable[MethodSpec],
        groups: Iterable[ConcurrencyGroup] = (),
    ) -> None:
        self.groups: dict[str, ConcurrencyGroup] = {g.name: g for g in groups}
        self._semaphores = {g.name: defer.DeferredSemaphore(g.limit) for g in self.groups.values()}
        self.methods: dict[str, MethodSpec] = {}
        for spec in specs:
            if spec.name in self.methods:
                raise ValueError(f"method {spec.name} is declared twice")
            if spec.concurrency is not None and spec.concurrency not in self.groups:
                raise ValueError(f"method {spec.name} names unknown group {spec.concurrency}")
            self.methods[spec.name] = spec
        self._in_flight: dict[int, InFlight] = {}
        self._keys = itertools.count()
        self._deadlines: dict[Any, DeadlineTimer] = {}

    def in_flight(self, now: float) -> list[dict[str, Any]]:
        """Return the requests being served, oldest first, as JSON-able dicts.

        :param now: the current time on the clock the calls were started with.
        :returns: dicts with ``method``, ``id``, ``started`` (clock seconds), ``age`` (seconds)
            and ``progress`` (the last value reported, or ``None``).
        """
        return [
            {
                "method": r.method,
                "id": r.id,
                "started": r.started,
                "age": round(now - r.started, 6),
                "progress": r.progress,
            }
            for r in self._in_flight.values()
        ]

    def call(
        self,
        name: str,
        params: Mapping[str, Any] | None,
        ctx: Any,
        *,
        progress: ProgressCallback | None = None,
        request_id: int | str | None = None,
        session: Session | None = None,
    ) -> defer.Deferred[Any]:
        """Run method *name* with *params*.

        :param name: the method name.
        :param params: the named params (``None`` for none).
        :param ctx: the daemon's method context; ``ctx.node`` is checked for the lock and
            ``ctx.clock`` runs the deadline.
        :param progress: receives each progress value the method reports.
        :param request_id: the JSON-RPC id, for ``daemon.status``.
        :param session: the calling connection (needed by ``events.subscribe``).
        :returns: a Deferred firing with the result; it fails only with
            :class:`jsonrpc.RpcError` (``-32601`` unknown method, ``-32602`` bad params,
            ``-32001`` locked, ``-32007`` no identity, ``-32004`` deadline passed, ``-32800``
            cancelled, or the method's own error mapped by
            :func:`jsonrpc.error_from_exception`).  Cancelling it cancels the work.
        """
        spec = self.methods.get(name)
        if spec is None:
            return defer.fail(
                jsonrpc.RpcError(jsonrpc.METHOD_NOT_FOUND, f"method not found: {name}")
            )
        try:
            checked = spec.validate(params or {})
            if spec.needs_unlocked:
                self._check_unlocked(ctx)
        except jsonrpc.RpcError as e:
            return defer.fail(e)

        key = next(self._keys)
        clock: Any = ctx.clock
        record = InFlight(name, request_id, clock.seconds())
        in_flight = self._in_flight
        in_flight[key] = record

        def report(value: Any) -> None:
            record.progress = value
            if progress is not None:
                try:
                    progress(value)
                except Exception:
                    self.log.failure("progress observer failed for {method}", method=name)

        invocation = Invocation(ctx, checked, report, self, session)
        semaphore = self._semaphores.get(spec.concurrency) if spec.concurrency else None
        if semaphore is None:
            # Most methods answer at once: call the handler directly, and only a result that
            # is still pending gets a deadline (a finished call cannot outlive it).
            try:
                value = spec.handler(invocation)
            except Exception:
                del in_flight[key]
                return defer.fail(self._translate_error(Failure(), spec, timed_out=False))
            if isinstance(value, Failure):
                del in_flight[key]
                return defer.fail(self._translate_error(value, spec, timed_out=False))
            if isinstance(value, CoroutineType):
                value = defer.Deferred.fromCoroutine(value)
            if not isinstance(value, defer.Deferred):
                del in_flight[key]
                return defer.succeed(value)
            result: defer.Deferred[Any] = value
        else:
            result = semaphore.run(spec.handler, invocation)

        expiry: list[bool] = []
        deadline: list[Any] | None = None
        if spec.deadline is not None and not result.called:

            def expire() -> None:
                expiry.append(True)
                result.cancel()

            deadline = self._deadlines_of(clock).add(spec.deadline, expire)

        def finish(value: Any) -> Any:
            in_flight.pop(key, None)
            if deadline is not None:
                self._deadlines_of(clock).discard(deadline)
            if isinstance(value, Failure):
                raise self._translate_error(value, spec, timed_out=bool(expiry))
            return value

        return result.addBoth(finish)

    def _deadlines_of(self, clock: Any) -> DeadlineTimer:
        timer = self._deadlines.get(clock)
        if timer is None:
            timer = self._deadlines[clock] = DeadlineTimer(clock)
        return timer

    def _check_unlocked(self, ctx: Any) -> None:
        node = ctx.node
        if not node.has_identity:
            raise jsonrpc.error_from_exception(
                errors.NoIdentity("no identity exists yet: create one with 'jarvis init'")
            )
        if node.locked:
            raise jsonrpc.error_from_exception(
                errors.Locked("the identity is locked: unlock it first ('jarvis unlock')")
            )

    def _translate_error(
        self, failure: Failure, spec: MethodSpec, *, timed_out: bool
    ) -> jsonrpc.RpcError:
        if failure.check(defer.CancelledError, defer.TimeoutError):
            if timed_out or failure.check(defer.TimeoutError):
                return jsonrpc.RpcError(
                    jsonrpc.TIMED_OUT, f"{spec.name} timed out after {spec.deadline:g} s"
                )
            return jsonrpc.RpcError(jsonrpc.REQUEST_CANCELLED, f"{spec.name} was cancelled")
        exc = failure.value if failure.value is not None else RuntimeError("no exception")
        error = jsonrpc.error_from_exception(exc)
        if error.code == jsonrpc.INTERNAL_ERROR:
            # The traceback goes to the log only; the client gets the exception type.
            self.log.failure("method {method} failed", failure, method=spec.name)
        return error


class DeadlineTimer:
    """Every pending deadline on one clock, run by a single delayed call.

    A call per request (``Deferred.addTimeout``) costs a reactor timer to schedule and cancel
    even for the many requests that finish long before their deadline; here a request costs a
    heap push, and the one delayed call always waits for the earliest deadline, so every
    deadline still fires at its exact time.  Finished requests are only marked (their entries
    are dropped when they reach the top, or all at once when most entries are finished).

    Measured against ``Deferred.addTimeout`` on the asyncio reactor (100,000 requests that finish
    before a 30 s deadline, best of 5, 2-core machine shared with other jobs): with 10 requests
    pending at once 2.5-4.8 µs per request here against 4.5-7.3 µs, with 100 pending 1.7-8.2 µs
    against 5.0-14.3 µs; with one pending at a time it costs more (13-41 µs against 8-14 µs,
    both a timer per request).  ``ipc_bench`` does not reach it (``daemon.status`` answers at
    once, and only a pending result gets a deadline).  It uses no private attribute of Twisted;
    ``DeadlineTimerTests`` in ``tests/test_registry.py`` pin its behaviour.

    :param clock: the ``IReactorTime`` the deadlines run on.
    """

    #: Rebuild the heap when more than this many entries are finished and they are the majority.
    COMPACT_AFTER = 256

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._call: Any = None
        self._live = 0

    def __len__(self) -> int:
        """The number of deadlines still pending."""
        return self._live

    def add(self, delay: float, expire: Callable[[], None]) -> list[Any]:
        """Call *expire* in *delay* seconds unless :meth:`discard` is called first.

        :returns: the entry to pass to :meth:`discard`.
        """
        when = self._clock.seconds() + delay
        entry = [when, next(self._order), expire]
        heapq.heappush(self._heap, entry)
        self._live += 1
        call = self._call
        if call is None:
            self._call = self._clock.callLater(delay, self._expired)
        elif when < call.getTime():
            call.cancel()
            self._call = self._clock.callLater(delay, self._expired)
        return entry

    def discard(self, entry: list[Any]) -> None:
        """Forget *entry* (its request finished); idempotent."""
        if entry[2] is None:
            return
        entry[2] = None
        self._live -= 1
        if self._live == 0:
            # Nothing pending: no timer may outlive the last request.
            self._heap.clear()
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif len(self._heap) > self.COMPACT_AFTER and self._live * 2 < len(self._heap):
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)

    def _expired(self) -> None:
        self._call = None
        heap = self._heap
        now = self._clock.seconds()
        due: list[Callable[[], None]] = []
        while heap and (heap[0][2] is None or heap[0][0] <= now):
            entry = heapq.heappop(heap)
            if entry[2] is not None:
                due.append(entry[2])
                entry[2] = None
                self._live -= 1
        if heap:
            self._call = self._clock.callLater(max(0.0, heap[0][0] - now), self._expired)
        for expire in due:
            expire()
