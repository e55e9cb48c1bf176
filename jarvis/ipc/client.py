"""The Twisted client of the local API, used by the terminal UI and the ``jarvis`` CLI.

:meth:`IpcClient.connect` opens a connection from a ``clientFromString`` description (and
authenticates with a token on TCP): the ``unix:PATH`` and ``tcp:HOST:PORT`` forms Jarvis writes go
straight to ``connectUNIX``/``connectTCP`` (importing :mod:`twisted.internet.endpoints` costs the
UI's start-up tens of milliseconds), any other description through ``clientFromString``.
:meth:`IpcClient.call` sends a request and returns a Deferred of its result (cancelling it sends
``$/cancelRequest``); :meth:`IpcClient.subscribe` delivers daemon events.  Errors from the daemon
arrive as :class:`~jarvis.ipc.jsonrpc.RemoteError`; a lost connection fails pending calls with
:class:`~twisted.internet.error.ConnectionLost`.  On a UNIX socket the client first checks that
the server runs as our own uid (:func:`jarvis.common.peercred.check_local_server`) and sends
nothing to
any other.

This module must not import the global reactor (callers pass theirs to :meth:`IpcClient.connect`)
nor :mod:`twisted.internet.endpoints` at import time.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.protocol import ClientFactory, Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from jarvis.common.errors import UntrustedDaemon
from jarvis.common.peercred import check_local_server
from jarvis.ipc import jsonrpc
from jarvis.ipc.jsonrpc import RemoteError
from jarvis.ipc.wire import send_line

__all__ = ["IpcClient", "IpcClientProtocol", "RemoteError"]

EventHandler = Callable[[str, dict[str, Any]], None]
DisconnectObserver = Callable[[Failure], None]


class IpcClientProtocol(LineReceiver):
    """The line protocol under :class:`IpcClient`: matches responses to requests by id."""

    delimiter = b"\n"
    MAX_LENGTH = jsonrpc.MAX_INCOMING_LINE
    log = Logger()
    transport: Any

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int | str, defer.Deferred[Any]] = {}
        self._progress: dict[str, Callable[[Any], None]] = {}
        self.event_handlers: list[EventHandler] = []
        self.disconnect_observers: list[DisconnectObserver] = []
        self.connected_d: defer.Deferred[IpcClientProtocol] = defer.Deferred()
        self.lost: Failure | None = None
        self._lost_waiters: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        # Before anything is sent: a UNIX socket must be served by our own uid, or the first
        # request (unlock's password, a token) would go to whoever planted the socket.
        get_handle = getattr(self.transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            try:
                check_local_server(handle)
            except (UntrustedDaemon, OSError) as e:
                self.lost = Failure(e)
                self.transport.abortConnection()
                self.connected_d.errback(self.lost)
                return
        self.connected_d.callback(self)

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason
        # Observers first: code resumed by a failing call may already look at the client.
        for observer in list(self.disconnect_observers):
            try:
                observer(reason)
            except Exception:
                self.log.failure("disconnect observer failed")
        waiting, self._waiting = self._waiting, {}
        self._progress.clear()
        for d in waiting.values():
            d.errback(Failure(error.ConnectionLost("the connection to the daemon was lost")))
        waiters, self._lost_waiters = self._lost_waiters, []
        for w in waiters:
            w.callback(None)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.error("the daemon sent a line of {size} bytes: closing", size=len(line))
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        try:
            value = jsonrpc.load_line(line)
        except jsonrpc.InvalidMessage:
            self.log.warn("ignored a malformed line from the daemon")
            return
        if type(value) is dict and "method" not in value and "error" not in value:
            # The common case, a success response to a waiting call: parse_incoming's result
            # branch, inline (anything else takes the general path below).
            if "id" in value:
                request_id = value["id"]
                d = self._waiting.pop(request_id, None) if type(request_id) in (int, str) else None
                if d is not None:
                    if self._progress:
                        self._progress.pop(f"p{request_id}", None)
                    d.callback(value.get("result"))
                    return
        try:
            incoming = jsonrpc.parse_value(value)
        except jsonrpc.InvalidMessage:
            self.log.warn("ignored a malformed line from the daemon")
            return
        if incoming.is_notification:
            self._notified(str(incoming.method), incoming.params)
            return
        d = self._waiting.pop(incoming.id, None) if isinstance(incoming.id, int | str) else None
        if d is None:
            return  # a cancelled call's late answer, or an answer to a notification
        self._progress.pop(f"p{incoming.id}", None)
        if incoming.error is not None:
            d.errback(incoming.error)
        else:
            d.callback(incoming.result)

    def _notified(self, method: str, params: dict[str, Any]) -> None:
        if method == "$/progress":
            callback = self._progress.get(str(params.get("token")))
            if callback is not None:
                callback(params.get("value"))
            return
        for handler in list(self.event_handlers):
            try:
                handler(method, params)
            except Exception:
                self.log.failure("event handler failed for {event}", event=method)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        progress: Callable[[Any], None] | None = None,
    ) -> defer.Deferred[Any]:
        """Send a request; see :meth:`IpcClient.call`."""
        if self.lost is not None:
            return defer.fail(error.ConnectionLost("the connection to the daemon was lost"))
        request_id = next(self._ids)
        body = dict(params or {})
        if progress is not None:
            token = f"p{request_id}"
            self._progress[token] = progress
            body["_progress"] = token

        def cancel(_: defer.Deferred[Any]) -> None:
            self._waiting.pop(request_id, None)
            self._progress.pop(f"p{request_id}", None)
            if self.lost is None:
                self.transport.write(jsonrpc.notification("$/cancelRequest", {"id": request_id}))

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        self._waiting[request_id] = d
        send_line(self.transport, jsonrpc.request(request_id, method, body or None))
        return d

    def when_lost(self) -> defer.Deferred[None]:
        """Return a Deferred that fires once the connection is closed."""
        if self.lost is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._lost_waiters.append(d)
        return d


def _plain_description(description: str) -> tuple[str, str, int] | None:
    """Split ``unix:PATH`` or ``tcp:HOST:PORT`` into ``(kind, address, port)``.

    :returns: ``None`` for any other description (options, keywords, escapes, other kinds),
        which :func:`connect_description` leaves to ``clientFromString``.
    """
    kind, _, rest = description.partition(":")
    if not rest or "=" in rest or "\\" in rest:
        return None
    if kind == "unix" and ":" not in rest:
        return ("unix", rest, 0)
    if kind == "tcp":
        host, _, port = rest.partition(":")
        if host and port.isdigit() and ":" not in port:
            return ("tcp", host, int(port))
    return None


class _ConnectingFactory(ClientFactory):
    """Builds one :class:`IpcClientProtocol` and fires :attr:`connected` when it is connected."""

    def __init__(self) -> None:
        self.connector: Any = None
        self.connected: defer.Deferred[IpcClientProtocol] = defer.Deferred(self._cancel)

    def _cancel(self, d: defer.Deferred[IpcClientProtocol]) -> None:
        # Fail first: stopping the connector reports a UserError we no longer need.
        d.errback(defer.CancelledError())
        if self.connector is not None and self.connector.state == "connecting":
            self.connector.stopConnecting()

    def buildProtocol(self, addr: Any) -> IpcClientProtocol:
        protocol = IpcClientProtocol()

        def made(p: IpcClientProtocol) -> None:
            if not self.connected.called:
                self.connected.callback(p)
            else:  # cancelled while the connection was being made
                p.transport.loseConnection()

        def refused(reason: Failure) -> None:
            if not self.connected.called:
                self.connected.errback(reason)

        protocol.connected_d.addCallbacks(made, refused)
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.connected.called:
            self.connected.errback(reason)


def connect_description(reactor: Any, description: str) -> defer.Deferred[IpcClientProtocol]:
    """Connect an :class:`IpcClientProtocol` as ``clientFromString(reactor, description)`` would.

    :returns: a Deferred firing with the connected protocol, or failing with the connect error
        (e.g. ``ConnectError``); cancelling it stops the attempt.
    """
    plain = _plain_description(description)
    if plain is None:
        from twisted.internet import endpoints

        endpoint = endpoints.clientFromString(reactor, description)
        connecting: defer.Deferred[IpcClientProtocol] = endpoint.connect(
            Factory.forProtocol(IpcClientProtocol)
        )
        # fails with UntrustedDaemon if the server's uid is not ours
        return connecting.addCallback(lambda p: p.connected_d)
    kind, address, port = plain
    factory = _ConnectingFactory()
    if kind == "unix":
        factory.connector = reactor.connectUNIX(address, factory, timeout=30)
    else:
        factory.connector = reactor.connectTCP(address, port, factory, timeout=30)
    return factory.connected


def _only(names: frozenset[str], handler: EventHandler) -> EventHandler:
    def filtered(name: str, payload: dict[str, Any]) -> None:
        if name in names:
            handler(name, payload)

    return filtered


class IpcClient:
    """A connection to the daemon's local API.

    Build one with :meth:`connect`.  Any number of calls may be in flight at once.
    """

    def __init__(self, protocol: IpcClientProtocol) -> None:
        self._protocol = protocol
        self._subscription: Any = None
        self._subscribe_waiters: list[defer.Deferred[Any]] = []
        #: the events the connection asked for (``None``: all of them)
        self._requested: frozenset[str] | None = frozenset()
        self._asked = False
        self._in_flight = 0

    @classmethod
    def connect(
        cls, reactor: Any, endpoint_description: str, *, token: str | None = None
    ) -> defer.Deferred[IpcClient]:
        """Connect to the daemon.

        :param reactor: the reactor.
        :param endpoint_description: a ``clientFromString`` description (``unix:PATH`` or
            ``tcp:HOST:PORT``), usually ``jarvis.common.paths.client_endpoint_for(data_dir)``.
        :param token: the API token, sent with ``auth`` first (needed for TCP).
        :returns: a Deferred firing with the client; it fails with the endpoint's connect error
            (e.g. ``ConnectError``) if nobody listens, with
            :class:`~jarvis.common.errors.UntrustedDaemon` if the process on a UNIX socket runs as
            another user (checked before anything is sent), or with ``RemoteError``
            (``unauthorized``).
        """
        d = connect_description(reactor, endpoint_description)

        def connected(protocol: IpcClientProtocol) -> Any:
            client = cls(protocol)
            if token is None:
                return client
            auth = protocol.call("auth", {"token": token})

            def refused(failure: Failure) -> Failure:
                protocol.transport.loseConnection()
                return failure

            return auth.addCallbacks(lambda _: client, refused)

        return d.addCallback(connected)

    @property
    def connected(self) -> bool:
        """Whether the connection is still open."""
        return self._protocol.lost is None

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        progress: Callable[[Any], None] | None = None,
    ) -> defer.Deferred[Any]:
        """Call *method* with named *params*.

        :param progress: called with each ``$/progress`` value the method reports.
        :returns: a Deferred firing with the result; it fails with :class:`RemoteError`, or
            with ``ConnectionLost``.  Cancelling it sends ``$/cancelRequest`` (the daemon stops
            the work) and fails it with ``CancelledError`` at once.
        """
        return self._protocol.call(method, params, progress=progress)

    def subscribe(
        self, handler: EventHandler, events: Iterable[str] | None = None
    ) -> defer.Deferred[Any]:
        """Deliver daemon events to *handler(event_name, payload)*: every event, or only those
        called *events*.

        Handlers must ignore events and fields they do not know.  The connection subscribes
        (``events.subscribe``) to what its handlers asked for together; a handler that narrows
        nothing widens it to every event again.

        :returns: a Deferred firing with the daemon's answer once the subscription that
            includes *handler*'s events is confirmed.
        """
        names = None if events is None else frozenset(events)
        if names is None:
            self._protocol.event_handlers.append(handler)
        else:
            self._protocol.event_handlers.append(_only(names, handler))
        before = self._requested
        wanted = jsonrpc.widen_events(before, names)
        d: defer.Deferred[Any] = defer.Deferred()
        self._subscribe_waiters.append(d)
        if self._asked and wanted == before:
            if not self._in_flight:
                self._answer_subscribers(self._subscription)
            return d
        self._asked, self._requested, self._in_flight = True, wanted, self._in_flight + 1
        self.call("events.subscribe", jsonrpc.subscribe_params(wanted)).addBoth(self._subscribed)
        return d

    def _subscribed(self, outcome: Any) -> None:
        self._in_flight -= 1
        if isinstance(outcome, Failure):
            # Not subscribed to (all of) it: a later subscribe() asks again.
            self._asked = False
            self._requested = frozenset()
        else:
            self._subscription = outcome
        if not self._in_flight:
            self._answer_subscribers(outcome)

    def _answer_subscribers(self, outcome: Any) -> None:
        waiters, self._subscribe_waiters = self._subscribe_waiters, []
        for w in waiters:
            if isinstance(outcome, Failure):
                w.errback(outcome)
            else:
                w.callback(outcome)

    def add_disconnect_observer(self, observer: DisconnectObserver) -> None:
        """Call *observer(reason)* once when the connection closes, whoever closed it."""
        self._protocol.disconnect_observers.append(observer)

    def close(self) -> defer.Deferred[None]:
        """Close the connection (after sending what is buffered).

        :returns: a Deferred firing once it is closed.
        """
        d = self._protocol.when_lost()
        if self._protocol.lost is None:
            self._protocol.transport.loseConnection()
        return d
