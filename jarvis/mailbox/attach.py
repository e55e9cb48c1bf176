"""The daemon's connections to mailboxes (issue 15): one to its own mailbox (create queues,
collect them), one per contact's mailbox it deposits into.  Implements
:class:`jarvis.core.interfaces.MailboxTransport`, the seam the core's postbox calls, so that the
core never imports Twisted's I/O.

A lost connection to our own mailbox is re-established with a growing delay (1 s to 60 s) and
every subscription is renewed (which also collects what arrived meanwhile).  Connections to
other mailboxes are made on the first deposit and kept.  A deposit whose connection is lost
or cannot be made (the mailbox restarts, say) keeps redialling with a growing delay (0.25 s to
4 s) for up to :data:`DEPOSIT_PATIENCE` seconds, so deposits resume within seconds of the
mailbox coming back instead of waiting for the courier's next retry run; only then does it
fail.  A deposit cut off before its acknowledgement may be stored twice by the mailbox: the
recipient keeps one (by message id).  Nothing here logs ids, keys or payloads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.mailbox.client import (
    Delivery,
    MailboxClientProtocol,
    MailboxConnectionLost,
    SenderCredential,
    connect_mailbox,
)
from jarvis.protocol.mailbox_link import parse_link

RECONNECT_MIN = 1.0
RECONNECT_MAX = 60.0
#: Seconds a deposit keeps redialling a mailbox it cannot reach before it fails.
DEPOSIT_PATIENCE = 30.0
DEPOSIT_REDIAL_MIN = 0.25
DEPOSIT_REDIAL_MAX = 4.0

#: Failures of the connection rather than refusals by the mailbox: worth redialling.
_CONNECTION_FAILURES = (
    MailboxConnectionLost,
    error.ConnectError,
    error.ConnectionLost,
    error.ConnectionClosed,
    defer.TimeoutError,
    defer.CancelledError,
)


class _Waiting:
    """The callers waiting for one connection being made, each with a Deferred of its own.

    Never the connecting Deferred itself: a caller's callbacks on a shared Deferred would change
    the result the next caller sees (an ``inlineCallbacks`` caller leaves ``None`` behind it).
    Used for our own mailbox and for each contact's mailbox being dialled.
    """

    def __init__(self) -> None:
        self._waiters: list[defer.Deferred[MailboxClientProtocol]] = []

    def wait(self) -> defer.Deferred[MailboxClientProtocol]:
        """Return a new Deferred that fires with the connection (or its failure)."""
        waiter: defer.Deferred[MailboxClientProtocol] = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def settle(self, result: Any) -> None:
        """Fire every waiter with *result* (a protocol or a Failure), then forget them; the
        result is consumed (a failure handed to the waiters is not logged as unhandled)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


class MailboxConnector:
    """See the module docstring.  :param reactor: for connections and the reconnect timer;
    :param now: wall-clock seconds (for ``last_collect``)."""

    log = Logger()

    def __init__(self, reactor: Any, now: Callable[[], float]) -> None:
        self.reactor = reactor
        self.now = now
        self._link: str | None = None
        self._own: MailboxClientProtocol | None = None
        self._connecting: defer.Deferred[MailboxClientProtocol] | None = None
        #: callers waiting for the connection to our mailbox being made
        self._own_waiting = _Waiting()
        self._subscriptions: dict[bytes, tuple[bytes, Callable[[bytes], Any]]] = {}
        self._others: dict[str, MailboxClientProtocol] = {}
        #: callers waiting for a contact's mailbox being dialled, by link
        self._dialling: dict[str, _Waiting] = {}
        self._retry: Any = None
        self._delay = RECONNECT_MIN
        self._stopped = False
        self.last_collect: float | None = None
        self.collected = 0
        self.deposited = 0
        self.last_error: str | None = None

    # -- our own mailbox ----------------------------------------------------------------------

    def connect(self, link: str) -> defer.Deferred[Any]:
        parse_link(link)
        self._stopped = False
        if self._link != link:
            self._drop_own()
            self._subscriptions.clear()
            self._link = link
        return self._ensure_own()

    def _ensure_own(self) -> defer.Deferred[MailboxClientProtocol]:
        if self._own is not None and self._own.connected:
            return defer.succeed(self._own)
        if self._connecting is not None:
            return self._own_waiting.wait()
        if self._link is None:
            return defer.fail(MailboxConnectionLost("no mailbox in use"))
        link = self._link
        d = connect_mailbox(self.reactor, parse_link(link))
        self._connecting = d

        def connected(protocol: MailboxClientProtocol) -> Any:
            self._connecting = None
            if self._link != link or self._stopped:
                protocol.close()
                raise MailboxConnectionLost("the mailbox changed")
            self._own = protocol
            self._delay = RECONNECT_MIN
            self.last_error = None
            protocol.closed.addCallback(lambda _: self._own_lost(protocol))
            for rid, (key, handler) in list(self._subscriptions.items()):
                self._subscribe_on(protocol, rid, key, handler)
            return protocol

        def failed(failure: Any) -> Any:
            self._connecting = None
            self.last_error = str(failure.value) or failure.type.__name__
            self._schedule_reconnect()
            return failure

        waiter = self._own_waiting.wait()  # before the callbacks: d may have fired already
        d.addCallbacks(connected, failed)
        d.addBoth(self._own_waiting.settle)
        return waiter

    def _own_lost(self, protocol: MailboxClientProtocol) -> None:
        if self._own is protocol:
            self._own = None
            self.log.info("the connection to our mailbox closed; reconnecting")
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._stopped or self._link is None or self._retry is not None:
            return

        def again() -> None:
            self._retry = None
            self._ensure_own().addErrback(lambda f: None)

        self._retry = self.reactor.callLater(self._delay, again)
        self._delay = min(self._delay * 2, RECONNECT_MAX)

    def _drop_own(self) -> None:
        own, self._own = self._own, None
        if own is not None:
            own.close()

    @defer.inlineCallbacks
    def create_queue(self) -> Any:
        own = yield self._ensure_own()
        keys = yield own.create_queue()
        return (keys.recipient_id, keys.sender_id, keys.recipient_key, keys.sender_key)

    @defer.inlineCallbacks
    def delete_queue(self, recipient_id: bytes, recipient_key: bytes) -> Any:
        self._subscriptions.pop(recipient_id, None)
        own = yield self._ensure_own()
        yield own.delete_queue(recipient_id, recipient_key)

    def subscribe(
        self,
        recipient_id: bytes,
        recipient_key: bytes,
        handler: Callable[[bytes], defer.Deferred[Any]],
    ) -> defer.Deferred[Any]:
        self._subscriptions[recipient_id] = (recipient_key, handler)
        return self._ensure_own().addCallback(
            lambda own: self._subscribe_on(own, recipient_id, recipient_key, handler)
        )

    def _subscribe_on(
        self,
        own: MailboxClientProtocol,
        recipient_id: bytes,
        recipient_key: bytes,
        handler: Callable[[bytes], Any],
    ) -> defer.Deferred[Any]:
        def deliver(delivery: Delivery) -> Any:
            self.last_collect = self.now()
            self.collected += 1
            return handler(delivery.payload)

        d = own.subscribe(recipient_id, recipient_key, deliver)
        d.addErrback(
            lambda f: self.log.warn("subscribing a mailbox queue failed: {error}", error=f.value)
        )
        return d

    # -- contacts' mailboxes ------------------------------------------------------------------

    def _connection(self, link: str) -> defer.Deferred[MailboxClientProtocol]:
        if link == self._link:
            return self._ensure_own()
        protocol = self._others.get(link)
        if protocol is not None and protocol.connected:
            return defer.succeed(protocol)
        waiting = self._dialling.get(link)
        if waiting is not None:
            return waiting.wait()
        waiting = self._dialling[link] = _Waiting()
        waiter = waiting.wait()  # before dialling: the dial may fail at once

        def done(result: Any) -> None:
            self._dialling.pop(link, None)
            if isinstance(result, MailboxClientProtocol):
                self._others[link] = result
            waiting.settle(result)

        connect_mailbox(self.reactor, parse_link(link)).addBoth(done)
        return waiter

    def deposit(
        self, link: str, sender_id: bytes, sender_key: bytes, payload: bytes
    ) -> defer.Deferred[Any]:
        credential = SenderCredential(sender_id, sender_key)

        def send(protocol: MailboxClientProtocol) -> defer.Deferred[Any]:
            return protocol.deposit(credential, payload)

        deadline = self.reactor.seconds() + DEPOSIT_PATIENCE
        delay = DEPOSIT_REDIAL_MIN

        def attempt() -> defer.Deferred[Any]:
            return self._connection(link).addCallback(send).addErrback(again)

        def again(failure: Failure) -> Any:
            nonlocal delay
            failure.trap(*_CONNECTION_FAILURES)
            wait = delay
            if self._stopped:
                return failure  # disconnect(): the daemon is stopping
            if self.reactor.seconds() + wait > deadline:
                return failure
            delay = min(delay * 2, DEPOSIT_REDIAL_MAX)
            return task.deferLater(self.reactor, wait, attempt)

        def counted(result: Any) -> Any:
            self.deposited += 1
            return result

        return attempt().addCallback(counted)

    # -- status and shutdown ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "link": self._link,
            "connected": self._own is not None and self._own.connected,
            "last_collect": self.last_collect,
            "collected": self.collected,
            "deposited": self.deposited,
            "subscriptions": len(self._subscriptions),
            "error": self.last_error,
        }

    def disconnect(self) -> defer.Deferred[Any]:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._link = None
        self._subscriptions.clear()
        closing = []
        own, self._own = self._own, None
        if own is not None:
            closing.append(own.close())
        for protocol in self._others.values():
            closing.append(protocol.close())
        self._others.clear()
        return defer.gatherResults(closing, consumeErrors=True)
