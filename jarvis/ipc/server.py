"""The local API server: a JSON-RPC line protocol on the daemon's private socket.

:class:`IpcServerFactory` builds one :class:`IpcServerProtocol` per client.  Each connection:

- on a UNIX socket, checks the peer's uid with ``SO_PEERCRED`` and closes connections of other
  users (the socket is 0600 in a 0700 directory already; this is the second lock);
- on any other transport, when the factory has a token, requires ``auth`` with that token as
  the first request (constant-time comparison), else answers ``-32011`` and closes;
- reads lines of at most :data:`~jarvis.ipc.jsonrpc.MAX_LINE` bytes: an oversized line gets an
  error response and the connection is closed; a malformed line gets ``-32700`` or ``-32600``
  and the connection stays usable;
- runs requests concurrently through the :class:`~jarvis.ipc.registry.Registry`, answers each
  with its id, honours ``$/cancelRequest`` and sends ``$/progress`` for requests that carry a
  progress token (``params._progress`` or its alias ``params.progressToken``);
- runs the elements of a batch (a JSON array) the same way, each with its own deadline and id
  (``$/cancelRequest`` names it), and answers the batch with one line, the array of the
  elements' responses, once every element has finished (nothing if all were notifications);
- writes through a bounded :class:`~jarvis.ipc.wire.LineSender`: a client that stops reading
  while more than :data:`~jarvis.ipc.wire.MAX_PENDING_OUTPUT` bytes (events and answers) wait
  for it gets a last ``$/lagged`` notification and is disconnected;
- after ``events.subscribe``, forwards every Node event as a notification, except while the
  identity is locked: then only :data:`~jarvis.core.events.LOCKED_EVENTS` (no names, no text).

This module must not know any method: it only moves lines between sockets and the registry.
It never logs params, results or tokens (params may hold passwords).
"""

from __future__ import annotations

import hmac
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from jarvis.core.events import LOCKED_EVENTS
from jarvis.ipc import jsonrpc
from jarvis.ipc.registry import Registry
from jarvis.ipc.wire import MAX_PENDING_OUTPUT, LineSender
from jarvis.runtime.turn import OncePerTurn

#: The transport-level param keys that carry a progress token (stripped before validation).
PROGRESS_KEYS = ("_progress", "progressToken")

#: The notification a client sends to cancel one of its requests.
CANCEL_METHOD = "$/cancelRequest"

#: The notification the server sends to report progress.
PROGRESS_METHOD = "$/progress"

#: The last notification a client that fell too far behind gets before it is disconnected.
LAGGED_METHOD = "$/lagged"

#: Seconds a lagged client has to read what is still buffered (and ``$/lagged``) before its
#: connection is aborted, so that a client that never reads again costs nothing after that.
LAGGED_GRACE = 30.0

#: The first request a TCP client must send.
AUTH_METHOD = "auth"

_UCRED = struct.Struct("3i")


def peer_uid(transport: Any) -> int | None:
    """Return the uid of the process at the other end of a UNIX socket transport.

    :returns: the uid from ``SO_PEERCRED``, or ``None`` if *transport* is not a UNIX socket or
        the platform has no ``SO_PEERCRED``.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    handle = get_handle()
    if not isinstance(handle, socket.socket) or handle.family != socket.AF_UNIX:
        return None
    raw = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


class IpcServerProtocol(LineReceiver):
    """One client connection of the local API (see the module docstring)."""

    delimiter = b"\n"
    MAX_LENGTH = jsonrpc.MAX_LINE
    log = Logger()
    transport: Any

    factory: IpcServerFactory

    def __init__(self) -> None:
        self._pending: dict[int | str, defer.Deferred[Any]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._event_names: frozenset[str] | None = None
        #: the contact whose conversation this client shows (``ui.focus``), for notifications
        self.focus: str | None = None
        self._authenticated = False
        self._open = False
        self._sender: LineSender | None = None
        self._abort_call: Any = None

    def connectionMade(self) -> None:
        self._open = True
        factory = self.factory
        uid = peer_uid(self.transport)
        if uid is not None:
            if uid != factory.allowed_uid:
                self.log.warn(
                    "refused local API connection from uid {uid} (only uid {allowed} may connect)",
                    uid=uid,
                    allowed=factory.allowed_uid,
                )
                self._open = False
                self.transport.loseConnection()
                return
            self._authenticated = True
        else:
            self._authenticated = factory.require_token is None
        self._sender = LineSender(
            self.transport, factory.clock, limit=factory.output_limit, overflowed=self._lagged
        )
        factory.connections.add(self)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._open = False
        self.factory.connections.discard(self)
        if self._sender is not None:
            self._sender.stopProducing()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.cancel()

    # sending -----------------------------------------------------------------------------------

    def _send(self, line: bytes) -> None:
        if self._open and self._sender is not None:
            self._sender.send(line)

    @property
    def buffered(self) -> int:
        """Bytes written for this client and not yet flushed to it (see ``LineSender``)."""
        return self._sender.buffered if self._sender is not None else 0

    def _close(self) -> None:
        self._open = False
        if self._sender is not None:
            self._sender.close()
        else:
            self.transport.loseConnection()

    def _lagged(self, dropped: int) -> None:
        """The client fell more than the bound behind: tell it, and disconnect it."""
        self.log.warn(
            "local API client {reading}lagged: {dropped} messages dropped, disconnecting",
            reading="" if self.subscribed else "(not subscribed) ",
            dropped=dropped,
        )
        self.factory.lagged += 1
        if self._sender is not None:
            self._sender.write_last(
                jsonrpc.notification(
                    LAGGED_METHOD,
                    {
                        "dropped": dropped,
                        "message": "lagged, resubscribe: this client read too slowly; "
                        "reconnect and reload the state",
                    },
                )
            )
        self._close()
        self._abort_call = self.factory.clock.callLater(
            LAGGED_GRACE, self.transport.abortConnection
        )

    def _send_error(self, request_id: int | str | None, error: jsonrpc.RpcError) -> None:
        self._send(jsonrpc.error_response(request_id, error))

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification (an event or ``$/progress``) to this client."""
        try:
            line = jsonrpc.notification(method, params)
        except jsonrpc.ENCODE_ERRORS:
            self.log.failure("cannot encode notification {method}", method=method)
            return
        self._send(line)

    @property
    def subscribed(self) -> bool:
        """Whether this client receives events."""
        return self._unsubscribe is not None

    def subscribe_events(self, names: frozenset[str] | None = None) -> None:
        """Forward the Node's events called *names* (every event for ``None``) to this client
        from now on; a later call replaces the names."""
        self._event_names = names
        if self._unsubscribe is None and self._open:
            self._unsubscribe = self.factory.ctx.node.subscribe(self._forward_event)

    def _forward_event(self, event: str, payload: dict[str, Any]) -> None:
        names = self._event_names
        if names is None or event in names:
            if event not in LOCKED_EVENTS and self.factory.ctx.node.locked:
                # The lock hides user content: no text, no names, not even that a message came.
                return
            self.notify(event, payload)

    # receiving ---------------------------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.warn("local API line too long ({size} bytes): closing", size=len(line))
        self._send_error(
            None,
            jsonrpc.RpcError(
                jsonrpc.INVALID_REQUEST,
                f"invalid request: line longer than {jsonrpc.MAX_LINE} bytes; closing",
                {"kind": "too_large"},
            ),
        )
        self._close()

    #: Requests handled in one reactor turn before yielding to other work: a client with
    #: hundreds of pipelined requests must not stall every other connection and timer.
    LINES_PER_TURN = 32

    _lines_this_turn = 0
    _turn_ended: OncePerTurn | None = None

    def _yield_turn(self) -> None:
        self._lines_this_turn += 1
        if self._lines_this_turn >= self.LINES_PER_TURN and not self.paused:
            self.pauseProducing()
            if self._turn_ended is None:
                self._turn_ended = OncePerTurn(self.factory.clock, self._next_turn)
            self._turn_ended.request()

    def _next_turn(self) -> None:
        self._lines_this_turn = 0
        if self._open and self.paused:
            self.resumeProducing()

    def lineReceived(self, line: bytes) -> None:
        if not self._open:
            return
        self._yield_turn()
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return
        try:
            req = jsonrpc.parse_line(line)
        except jsonrpc.InvalidMessage as e:
            self._send_error(e.request_id, e)
            if not self._authenticated:
                self._refuse()
            return
        if isinstance(req, jsonrpc.Batch):
            self._run_batch(req)
            return
        if not self._authenticated:
            self._authenticate(req)
            return
        self._handle(req, self._send)

    def _handle(self, req: jsonrpc.Request, reply: Callable[[bytes], None]) -> None:
        """Serve one request (alone or in a batch): its response line goes to *reply*."""
        if req.method == CANCEL_METHOD:
            self._cancel(req, reply)
            return
        if req.method == AUTH_METHOD:
            if not req.is_notification:
                reply(jsonrpc.result_response(req.id, {"authenticated": True}))
            return
        self._dispatch(req, reply)

    def _run_batch(self, batch: jsonrpc.Batch) -> None:
        if not self._authenticated:
            # ``auth`` comes alone, first: a batch cannot carry it.
            self._authenticate(jsonrpc.Request("batch"))
            return
        answers = _BatchAnswers(self._send)
        for element in batch.elements:
            if isinstance(element, jsonrpc.InvalidMessage):
                answers.expect()(jsonrpc.error_response(element.request_id, element))
            elif element.is_notification:
                self._handle(element, _no_reply)
            else:
                self._handle(element, answers.expect())
        answers.seal()

    def _refuse(self) -> None:
        self._close()

    def _authenticate(self, req: jsonrpc.Request) -> None:
        token = req.params.get("token") if req.method == AUTH_METHOD else None
        expected = self.factory.require_token
        if (
            isinstance(token, str)
            and expected is not None
            and hmac.compare_digest(token.encode("utf-8"), expected)
        ):
            self._authenticated = True
            if not req.is_notification:
                self._send(jsonrpc.result_response(req.id, {"authenticated": True}))
            return
        self.log.warn("refused local API connection: missing or wrong token")
        self._send_error(
            req.id,
            jsonrpc.RpcError(
                jsonrpc.UNAUTHORIZED,
                'unauthorized: send {"method": "auth", "params": {"token": ...}} first',
            ),
        )
        self._refuse()

    def _cancel(self, req: jsonrpc.Request, reply: Callable[[bytes], None]) -> None:
        target = req.params.get("id")
        d = self._pending.get(target) if isinstance(target, int | str) else None
        if d is not None:
            d.cancel()
        if not req.is_notification:
            reply(jsonrpc.result_response(req.id, {"cancelled": d is not None}))

    def _dispatch(self, req: jsonrpc.Request, reply: Callable[[bytes], None]) -> None:
        params = req.params
        token = None
        if "_progress" in params or "progressToken" in params:
            params = dict(params)  # the request's own params stay as they came
            for key in PROGRESS_KEYS:
                if key in params:
                    token = params.pop(key)
        if token is not None and not isinstance(token, int | str):
            problem = "must be a string or an integer"
            reply(jsonrpc.error_response(req.id, jsonrpc.invalid_params("_progress", problem)))
            return
        if not req.is_notification and req.id in self._pending:
            in_use = f"invalid request: id {req.id!r} is already in use"
            reply(jsonrpc.error_response(req.id, jsonrpc.RpcError(jsonrpc.INVALID_REQUEST, in_use)))
            return

        progress = None
        if token is not None:

            def progress(value: Any) -> None:
                self.notify(PROGRESS_METHOD, {"token": token, "value": value})

        d = self.factory.registry.call(
            req.method,
            params,
            self.factory.ctx,
            progress=progress,
            request_id=req.id,
            session=self,
        )
        if req.is_notification:
            d.addErrback(self._log_notification_failure, req.method)
            return
        request_id = req.id
        if d.called and not d.paused:
            result = d.result
            if not isinstance(result, Failure | defer.Deferred):
                # Answered at once (most methods): no callbacks, nothing to track.
                self._answer(result, request_id, reply)
                return
        if request_id is not None:
            # Tracked until answered (the callbacks below pop it, at once if d has fired);
            # a null id cannot be named by $/cancelRequest, so it is not tracked.
            self._pending[request_id] = d
        d.addCallbacks(
            self._answer, self._answer_error, (request_id, reply), {}, (request_id, reply)
        )

    def _answer(
        self, result: Any, request_id: int | str | None, reply: Callable[[bytes], None]
    ) -> None:
        if request_id is not None:
            self._pending.pop(request_id, None)
        try:
            line = jsonrpc.result_response(request_id, result)
        except jsonrpc.ENCODE_ERRORS:
            self.log.failure("result of request id={id} is not JSON", id=request_id)
            line = jsonrpc.error_response(
                request_id, jsonrpc.error_from_exception(TypeError("result is not JSON"))
            )
        reply(line)

    def _answer_error(
        self, failure: Failure, request_id: int | str | None, reply: Callable[[bytes], None]
    ) -> None:
        if request_id is not None:
            self._pending.pop(request_id, None)
        # The registry already mapped (and logged) the method's errors.
        reply(
            jsonrpc.error_response(request_id, jsonrpc.error_from_exception(_exception_of(failure)))
        )

    def _log_notification_failure(self, failure: Failure, method: str) -> None:
        # Nobody waits for a notification's answer; the registry logged internal errors.
        self.log.debug(
            "local API notification {method} failed: {error}", method=method, error=failure.value
        )


def _no_reply(line: bytes) -> None:
    """Where the (never written) response of a notification in a batch would go."""


class _BatchAnswers:
    """Collects the response lines of a batch's elements and sends them as one array.

    :param send: writes the batch response line once every expected response arrived and
        :meth:`seal` was called; nothing is written when no response was expected.
    """

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send
        self._lines: list[bytes] = []
        self._waiting = 0
        self._sealed = False

    def expect(self) -> Callable[[bytes], None]:
        """Return the reply function of one more element (call it exactly once)."""
        self._waiting += 1
        return self._add

    def _add(self, line: bytes) -> None:
        self._lines.append(line)
        self._waiting -= 1
        self._finish()

    def seal(self) -> None:
        """Every element has been started: send the array as soon as all have answered."""
        self._sealed = True
        self._finish()

    def _finish(self) -> None:
        if self._sealed and self._waiting == 0 and self._lines:
            lines, self._lines = self._lines, []
            self._send(jsonrpc.batch_response(lines))


def _exception_of(failure: Failure) -> BaseException:
    return failure.value if failure.value is not None else RuntimeError("no exception")


class IpcServerFactory(Factory):
    """Builds the local API connections.

    :param registry: the methods (``jarvis.ipc.methods.build_registry()``).
    :param ctx: the :class:`~jarvis.ipc.methods.MethodContext` passed to every method.
    :param clock: the reactor's time (the protocol yields the reactor between bursts of
        pipelined requests with it).
    :param require_token: the token TCP clients must send with ``auth``; ``None`` means no
        token is asked (only for UNIX sockets, which check the peer uid instead).
    :param allowed_uid: the uid allowed on UNIX sockets (default: this process's uid).
    :param output_limit: the most bytes held for one client before it is told ``$/lagged``
        and disconnected (:data:`~jarvis.ipc.wire.MAX_PENDING_OUTPUT`).
    """

    protocol = IpcServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        registry: Registry,
        ctx: Any,
        *,
        clock: Any,
        require_token: bytes | None = None,
        allowed_uid: int | None = None,
        output_limit: int = MAX_PENDING_OUTPUT,
    ) -> None:
        self.registry = registry
        self.ctx = ctx
        self.clock = clock
        self.require_token = require_token
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self.output_limit = output_limit
        #: The open connections (``daemon.status`` and shutdown may use them).
        self.connections: set[IpcServerProtocol] = set()
        #: How many clients were disconnected for reading too slowly.
        self.lagged = 0

    def client_figures(self) -> dict[str, int]:
        """Return ``{clients, subscribers, output_buffered, lagged}`` for ``daemon.status``:
        the connections, those receiving events, the bytes written for them and not yet
        flushed, and how many clients were disconnected with ``$/lagged`` so far."""
        connections = self.connections
        return {
            "clients": len(connections),
            "subscribers": sum(1 for c in connections if c.subscribed),
            "output_buffered": sum(c.buffered for c in connections),
            "lagged": self.lagged,
        }
