"""The Twisted ``Protocol`` of a peer connection: it feeds a sans-IO session and nothing more.

A :class:`PeerProtocol` sits inside ``TLSMemoryBIOProtocol`` (pinned mutual TLS, see
:mod:`jarvis.net.tls`).  When TLS completes it reads the peer's uid and the channel binding
from the transport, asks its factory's :class:`ConnectionHooks` for a session, and from then on
passes bytes and the connection's end to that session.  The session writes through
:meth:`PeerProtocol.send_bytes` and drops the connection through
:meth:`PeerProtocol.lose_connection`.

Its only timers bound the transport itself: the TLS handshake must complete within
*handshake_timeout* seconds of the TCP connection (a peer that connects and stalls is dropped),
and a connection being closed gracefully is aborted if the peer does not finish the TLS close
within *close_timeout* seconds.

This module must not parse or build records, decide who may connect (TLS and the hooks do),
or reconnect (see :mod:`jarvis.net.network`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jarvis.net.tls import NoPeerCertificate, channel_binding_of, peer_uid_of

#: Default seconds from TCP connection to the end of the TLS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Default seconds a graceful close may take before the connection is aborted.
DEFAULT_CLOSE_TIMEOUT = 5.0


class DelayedCall(TypingProtocol):
    """The part of ``IDelayedCall`` this package uses."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(TypingProtocol):
    """The part of ``IReactorTime`` this package uses (a reactor, or ``task.Clock`` in tests)."""

    def callLater(self, delay: float, callable: Callable[..., Any], /, *args: Any) -> DelayedCall:
        """Call *callable* after *delay* seconds."""
        ...

    def seconds(self) -> float:
        """The current time."""
        ...


class SessionLike(TypingProtocol):
    """What :class:`PeerProtocol` needs of a session: a ``PeerSession`` in practice."""

    def connection_made(self, channel_binding: bytes) -> None:
        """TLS is up; *channel_binding* is the connection's exporter value."""
        ...

    def data_received(self, data: bytes) -> None:
        """Bytes arrived from the peer."""
        ...

    def connection_lost(self, reason: str) -> None:
        """The connection is gone, for *reason*."""
        ...

    def pause_writing(self) -> None:
        """The transport's buffers are full: stop streaming for now."""
        ...

    def resume_writing(self) -> None:
        """The transport takes bytes again."""
        ...


class ConnectionHooks(TypingProtocol):
    """What a :class:`PeerFactory` reports to its owner (the network) about its connections."""

    def connection_started(self, protocol: PeerProtocol) -> None:
        """A TCP connection was made; TLS is starting."""
        ...

    def open_session(self, protocol: PeerProtocol, peer_uid: str) -> SessionLike | None:
        """TLS accepted *peer_uid*: return the session to feed, or ``None`` to drop the peer."""
        ...

    def connection_ended(self, protocol: PeerProtocol, reason: str) -> None:
        """The connection is gone (after its session, if any, was told)."""
        ...


def describe_failure(reason: Failure) -> str:
    """Return a short, log-safe description of why a connection ended.

    :param reason: the ``Failure`` given to ``connectionLost`` or to a connect errback.
    """
    value = reason.value
    if isinstance(value, error.ConnectionDone):
        return "connection closed"
    if isinstance(value, error.ConnectionLost | error.ConnectionAborted):
        return "connection lost"
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, error.TimeoutError):
        return "connection attempt timed out"
    if isinstance(value, error.DNSLookupError):
        return "host name not found"
    if isinstance(value, SSL.Error):
        details = [
            str(entry[-1])
            for entry in (value.args[0] if value.args and isinstance(value.args[0], list) else [])
            if isinstance(entry, tuple) and entry
        ]
        detail = details[-1] if details else "handshake failed"
        if "alert" in detail:
            return f"TLS refused by the peer ({detail})"
        return f"TLS failed ({detail})"
    text = str(value).strip().splitlines()
    return f"{type(value).__name__}: {text[0][:120] if text else ''}".rstrip(": ")


@implementer(IHandshakeListener, IPushProducer)
class PeerProtocol(Protocol):
    """One peer connection: TLS handshake deadline, then bytes to and from its session.

    It is its transport's streaming producer once its session starts: when the transport's
    buffers fill up, ``pauseProducing`` reaches the session (``pause_writing``), which stops
    streaming the outbox until ``resumeProducing`` (``resume_writing``).

    :ivar session: the session fed by this connection, once TLS completed and one was given.
    :ivar peer_uid: the uid TLS verified, once the handshake completed.
    """

    factory: PeerFactory
    log = Logger()

    def __init__(self) -> None:
        self.session: SessionLike | None = None
        self.peer_uid: str | None = None
        self._deadline: DelayedCall | None = None
        self._close_deadline: DelayedCall | None = None
        self._local_reason: str | None = None
        self._lost = False

    @property
    def initiator(self) -> bool:
        """Whether we dialled this connection."""
        return self.factory.initiator

    def connectionMade(self) -> None:
        """Start the TLS handshake deadline and tell the hooks."""
        self._deadline = self.factory.clock.callLater(
            self.factory.handshake_timeout, self._handshake_timed_out
        )
        self.factory.hooks.connection_started(self)

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        self._local_reason = (
            f"TLS handshake not finished within {self.factory.handshake_timeout:g} s"
        )
        # not logged: a flood of stalled strangers would write one line each; the listener's
        # admission control counts them, a dial reports the reason in the contact's status
        self.abort()

    def handshakeCompleted(self) -> None:
        """TLS is up: find the peer's uid, get its session and start it."""
        self._cancel(self._deadline)
        self._deadline = None
        try:
            peer_uid = peer_uid_of(self.transport)
            binding = channel_binding_of(self.transport)
        except NoPeerCertificate:  # cannot happen with the pinned creators; be safe anyway
            self.log.failure("TLS completed without a peer certificate")
            self.abort()
            return
        self.peer_uid = peer_uid
        session = self.factory.hooks.open_session(self, peer_uid)
        if session is None:
            self._local_reason = "no session for this peer"
            self.lose_connection()
            return
        self.session = session
        transport: Any = self.transport
        transport.registerProducer(self, True)
        session.connection_made(binding)

    def dataReceived(self, data: bytes) -> None:
        """Hand bytes to the session (TLS delivers none before the handshake)."""
        if self.session is not None:
            self.session.data_received(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Tell the session, then the hooks, why the connection ended."""
        if self._lost:
            return
        self._lost = True
        self._cancel(self._deadline)
        self._cancel(self._close_deadline)
        self._deadline = self._close_deadline = None
        if self._local_reason is not None:
            text = self._local_reason
        elif reason is not None:
            text = describe_failure(reason)
        else:
            text = "connection lost"
        if self.session is not None:
            self.session.connection_lost(text)
        self.factory.hooks.connection_ended(self, text)

    # -- IPushProducer: the transport's back-pressure, passed on to the session ---------------

    def pauseProducing(self) -> None:
        """The transport's buffers are full."""
        if self.session is not None:
            self.session.pause_writing()

    def resumeProducing(self) -> None:
        """The transport drained its buffers."""
        if self.session is not None:
            self.session.resume_writing()

    def stopProducing(self) -> None:
        """The connection is going away (``connectionLost`` follows)."""

    # -- what the session (and the network) call ---------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        """Write *data* to the peer, unless the connection is already going away."""
        transport: Any = self.transport
        if transport is not None and not self._lost:
            transport.write(data)

    def lose_connection(self) -> None:
        """Close gracefully (TLS close_notify); abort if that takes over *close_timeout*."""
        transport: Any = self.transport
        if transport is None or self._lost or self._close_deadline is not None:
            return
        self._close_deadline = self.factory.clock.callLater(
            self.factory.close_timeout, self._close_timed_out
        )
        if self.session is not None:
            # TLS shuts down only once no producer is registered.
            transport.unregisterProducer()
        transport.loseConnection()

    def _close_timed_out(self) -> None:
        self._close_deadline = None
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once, without a TLS goodbye."""
        transport: Any = self.transport
        if transport is not None and not self._lost:
            transport.abortConnection()

    @property
    def closed(self) -> bool:
        """Whether ``connectionLost`` has run."""
        return self._lost

    @staticmethod
    def _cancel(call: DelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()


class PeerFactory(Factory[PeerProtocol]):
    """Builds :class:`PeerProtocol` instances; wrap it in ``TLSMemoryBIOFactory``.

    :param clock: the time source of the TLS handshake and close deadlines.
    :param hooks: told about each connection, and asked for its session.
    :param initiator: whether the connections are ones we dial (client side).
    :param handshake_timeout: seconds from TCP connection to the end of the TLS handshake.
    :param close_timeout: seconds a graceful close may take before the connection is aborted.
    """

    protocol = PeerProtocol
    noisy = False

    def __init__(
        self,
        clock: Clock,
        hooks: ConnectionHooks,
        *,
        initiator: bool,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self.clock = clock
        self.hooks = hooks
        self.initiator = initiator
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
