"""The UI's link to the daemon: one connection at a time, reconnected with backoff.

It owns the connection's life cycle only: :class:`DaemonLink` runs Twisted's
``ClientService`` (its state table, its retry timer on the injected clock) over
:class:`ConnectorEndpoint`, which turns the UI's ``connect()`` callable (find the data
directory's daemon, start one when none answers, authenticate) into a client endpoint.  The
post-connect handshake (subscribe, reload) is the ``prepareConnection`` the controller gives.

It must not touch the model or the screen: it reports to the callables it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

#: Reconnection delays grow by this factor from FIRST_RETRY up to MAX_RETRY seconds.
FIRST_RETRY = 0.5
RETRY_FACTOR = 2.0
MAX_RETRY = 15.0


def retry_delay(failed_attempts: int) -> float:
    """The delay before attempt number *failed_attempts* + 1 (no jitter: one UI, one daemon).

    :param failed_attempts: how many attempts failed in a row (1 after the first failure or
        after a connection was lost).
    """
    return float(min(MAX_RETRY, FIRST_RETRY * RETRY_FACTOR ** max(0, failed_attempts - 1)))


class _ClientTransport:
    """The transport ``ClientService`` closes on stop: closing it closes the client."""

    def __init__(self, client: Any, closed: Callable[[Failure], None]) -> None:
        self.client = client
        self._closed = closed

    def loseConnection(self) -> None:
        d = defer.maybeDeferred(self.client.close)
        # a client we close does not tell its observers (the fake) or tells them first (the
        # real one): report the end once either way, so that ClientService stops
        d.addBoth(lambda _: self._closed(Failure(ConnectionError("closed by the UI"))))


class LinkProtocol(Protocol):
    """What ``ClientService`` holds while connected: the daemon client, and its end."""

    def __init__(self) -> None:
        self.ended = False

    @property
    def client(self) -> Any:
        """The connected daemon client."""
        return self.transport.client if self.transport is not None else None

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.ended = True


@implementer(IStreamClientEndpoint)
class ConnectorEndpoint:
    """A client endpoint over a ``connect()`` callable that fires with a connected client.

    :param connect: returns a Deferred firing with a client that has ``close()`` and
        ``add_disconnect_observer(observer)`` (``IpcClient`` or the tests' fake).
    :param failed: called with the failure of each attempt.
    """

    def __init__(
        self, connect: Callable[[], Any], failed: Callable[[Failure], None] | None = None
    ) -> None:
        self._connect = connect
        self._failed = failed or (lambda failure: None)

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        """Connect with ``connect()`` and hand the client to a protocol from *protocolFactory*."""

        def connected(client: Any) -> Any:
            protocol = protocolFactory.buildProtocol(None)
            lost: list[bool] = []

            def end(reason: Failure) -> None:
                if not lost:
                    lost.append(True)
                    protocol.connectionLost(reason)

            protocol.makeConnection(_ClientTransport(client, end))
            client.add_disconnect_observer(end)
            return protocol

        def failed(failure: Failure) -> Failure:
            if not failure.check(defer.CancelledError):
                self._failed(failure)
            return failure

        return defer.maybeDeferred(self._connect).addCallbacks(connected, failed)


class DaemonLink:
    """The UI's connection to the daemon, reconnected with backoff by ``ClientService``.

    :param connect: the ``connect()`` callable (see :class:`ConnectorEndpoint`).
    :param clock: the reactor, or a ``task.Clock`` in tests (the retry timer).
    :param connected: the post-connect handshake: called with the new client; may return a
        Deferred (``ClientService``'s ``prepareConnection``).
    :param lost: called with the failure when an established connection ends.
    :param failed: called with the failure of each connection attempt.
    :param retrying: called with the delay in seconds before each retry.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        clock: Any,
        *,
        connected: Callable[[Any], Any],
        lost: Callable[[Failure], None],
        failed: Callable[[Failure], None],
        retrying: Callable[[float], None],
    ) -> None:
        self._lost = lost
        self._retrying = retrying
        self.client: Any = None
        self._protocol: LinkProtocol | None = None
        link = self

        class _LinkProtocol(LinkProtocol):
            def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
                super().connectionLost(reason)
                link._ended(self, reason)

        def policy(failed_attempts: int) -> float:
            delay = retry_delay(failed_attempts)
            self._retrying(delay)
            return delay

        def prepare(protocol: Any) -> Any:
            self._protocol = protocol
            self.client = protocol.client
            return connected(protocol.client)

        # without mypy-zope, mypy cannot see that these provide the interfaces
        endpoint: Any = ConnectorEndpoint(connect, failed)
        factory: Any = Factory.forProtocol(_LinkProtocol)
        self.service = ClientService(
            endpoint,
            factory,
            retryPolicy=policy,
            clock=clock,
            prepareConnection=prepare,
        )

    def _ended(self, protocol: LinkProtocol, reason: Failure) -> None:
        if self.client is protocol.client and self.client is not None:
            self.client = None
            self._lost(reason)

    def reconnect(self) -> None:
        """Drop the current connection now; ``ClientService`` connects again after its delay.

        For a connection the daemon gave up on (``$/lagged``): it closes it itself after a
        grace period, but the events are lost already, so there is nothing to wait for.
        """
        protocol = self._protocol
        transport: Any = protocol.transport if protocol is not None else None
        if protocol is None or protocol.ended or transport is None:
            return
        transport.loseConnection()

    def start(self) -> None:
        """Connect now, and again after every failure or loss until :meth:`stop`."""
        self.service.startService()

    def stop(self) -> defer.Deferred[Any]:
        """Stop retrying and close the connection.

        :returns: a Deferred firing once it is closed.
        """
        self.client = None
        if not self.service.running:
            return defer.succeed(None)
        return defer.maybeDeferred(self.service.stopService).addErrback(lambda _: None)
