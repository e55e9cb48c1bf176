"""The relay endpoint: reach a contact through a mailbox's relay when no direct path works.

:class:`RelayEndpoint` is an ``IStreamClientEndpoint``: ``connect(factory)`` opens a TCP
connection to the mailbox, sends the pair's join (:mod:`jarvis.protocol.relay`), waits for the
mailbox to pair it with the contact's join, and only then starts *factory*'s protocol on the
connection, which from then on carries the contact's bytes.  The network gives it the normal
pinned-TLS peer factory, as client (the contact with the lower uid) or as server, so the TLS
session is end to end and the mailbox only copies bytes.

A join answered "token already used" is retried at once on a new connection with the next
generation (both sides step the same way); any other refusal, a close or the deadline fails
the connection attempt with :class:`RelayFailed`.

This module makes connections and nothing else: it never decides who to dial, never logs
tokens, links or addresses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from jarvis.net.peer import Clock, DelayedCall
from jarvis.net.tls import CertifiedIdentity, ContextCache, PinnedServerCreator
from jarvis.protocol import relay as wire

#: The prefix of a relay candidate in a contact's dial list: ``relay:<mailbox link>``.
RELAY_PREFIX = "relay:"


class RelayFailed(Exception):
    """The mailbox's relay did not join us with the contact (no partner, busy, closed)."""


class _Joiner(Protocol):
    """One connection to the relay: the join, the answer, then the wrapped protocol."""

    transport: Any

    def __init__(self, factory: _JoinFactory, address: IAddress | None) -> None:
        self._factory = factory
        self._address = address
        self._inner: Any = None
        self._answered = False

    def connectionMade(self) -> None:
        self.transport.write(self._factory.join)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if self._answered:
            return
        self._answered = True
        status, rest = data[0], data[1:]
        if status != wire.STATUS_PAIRED:
            self._factory.answered(status, None)
            self.transport.abortConnection()
            return
        inner = self._factory.wrapped.buildProtocol(self._address)
        if inner is None:
            self._factory.answered(wire.STATUS_BAD, None)
            self.transport.abortConnection()
            return
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self._inner = inner
        inner.makeConnection(self.transport)
        self._factory.answered(status, inner)
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self._answered:
            self._factory.lost()


class _JoinFactory(Factory):
    noisy = False  # one per relay join, as the knock's: no "Starting factory" lines

    def __init__(self, wrapped: IProtocolFactory, join: bytes, done: Callable[..., None]):
        self.wrapped: Any = wrapped
        self.join = join
        self._done = done
        self.protocol_instance: _Joiner | None = None

    def buildProtocol(self, addr: IAddress | None) -> _Joiner:
        self.protocol_instance = _Joiner(self, addr)
        return self.protocol_instance

    def answered(self, status: int, inner: Any) -> None:
        self._done(status, inner)

    def lost(self) -> None:
        self._done(None, None)


class RelayEndpoint:
    """Connects a protocol factory to a contact through a relay (see the module docstring).

    :param tcp: the TCP endpoint of the mailbox (its usual host and port).
    :param key: the pair's relay key (:func:`jarvis.protocol.relay.relay_key`).
    :param side: our side (:func:`jarvis.protocol.relay.side_of`).
    :param clock: the reactor's time (token window, deadline).
    :param now: wall-clock seconds (the token window; defaults to ``clock.seconds``).
    :param timeout: seconds to wait for the partner, at most.
    :param token_for: ``(window, generation) -> token``; default the session's
        (:func:`jarvis.protocol.relay.token` with *key*); a file transfer's data connection
        passes its own (:func:`jarvis.protocol.relay.transfer_token`).
    """

    def __init__(
        self,
        tcp: Any,
        key: bytes,
        side: int,
        clock: Clock,
        *,
        now: Callable[[], float] | None = None,
        timeout: float = 35.0,
        token_for: Callable[[int, int], bytes] | None = None,
    ) -> None:
        self._token_for = token_for or (lambda window, gen: wire.token(key, window, gen))
        self._tcp = tcp
        self._key = key
        self._side = side
        self._clock = clock
        self._now = now or clock.seconds
        self._timeout = timeout

    def _join(self, generation: int) -> bytes:
        window = wire.window_of(self._now())
        return wire.Join(self._token_for(window, generation), self._side).to_bytes()

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """Join the relay; fire with *protocolFactory*'s protocol once paired."""
        state: dict[str, Any] = {"connecting": None, "factory": None, "done": False}

        def cancel(_: Deferred[Any]) -> None:
            finish(Failure(RelayFailed("cancelled")))

        result: Deferred[Any] = Deferred(cancel)
        deadline: DelayedCall = self._clock.callLater(
            self._timeout,
            lambda: finish(Failure(RelayFailed("no partner at the relay in time"))),
        )

        def finish(outcome: Any) -> None:
            if state["done"]:
                return
            state["done"] = True
            if deadline.active():
                deadline.cancel()
            if isinstance(outcome, Failure):
                connecting = state["connecting"]
                if connecting is not None:
                    connecting.cancel()
                joiner = state["factory"] and state["factory"].protocol_instance
                if joiner is not None and joiner.transport is not None:
                    joiner.transport.abortConnection()
                result.errback(outcome)
            else:
                result.callback(outcome)

        def attempt(generation: int) -> None:
            def done(status: int | None, inner: Any) -> None:
                if state["done"]:
                    return
                if status == wire.STATUS_PAIRED:
                    finish(inner)
                elif status == wire.STATUS_USED and generation + 1 < wire.MAX_GENERATIONS:
                    attempt(generation + 1)
                else:
                    name = "closed" if status is None else wire.STATUS_NAMES.get(status, "?")
                    finish(Failure(RelayFailed(f"relay: {name}")))

            factory = _JoinFactory(protocolFactory, self._join(generation), done)
            state["factory"] = factory
            connecting = self._tcp.connect(factory)
            state["connecting"] = connecting

            def connected(_: Any) -> None:
                state["connecting"] = None

            def failed(f: Failure) -> None:
                state["connecting"] = None
                if not f.check(error.ConnectingCancelledError):
                    finish(f)

            connecting.addCallbacks(connected, failed)

        attempt(0)
        return result


class RelayServerCreator(PinnedServerCreator):
    """The TLS server side of a relayed connection: only the one contact we dialled is
    accepted.

    :ivar refusal: why the client was refused, or ``None`` (the dialler reports it).
    """

    def __init__(
        self, identity: CertifiedIdentity, expected_uid: str, contexts: ContextCache | None = None
    ) -> None:
        self.expected_uid = expected_uid
        self.refusal: str | None = None
        super().__init__(identity, self._accept, self._note_refusal, contexts)

    def _accept(self, uid: str) -> bool:
        return uid == self.expected_uid

    def _note_refusal(self, uid: str, reason: str) -> None:
        self.refusal = f"the relayed peer is not the contact ({reason})"
