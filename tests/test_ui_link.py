"""Tests for jarvis.ui.link: the UI's daemon link reconnected by ClientService."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from jarvis.ui.link import FIRST_RETRY, MAX_RETRY, DaemonLink, retry_delay


class FakeClient:
    """A connected client: ``close()`` and disconnect observers."""

    def __init__(self) -> None:
        self.observers: list[Any] = []
        self.closed = False

    def add_disconnect_observer(self, observer: Any) -> None:
        self.observers.append(observer)

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    def drop(self) -> None:
        for observer in self.observers:
            observer(Failure(ConnectionError("lost")))


def make_link() -> tuple[DaemonLink, Clock, dict[str, list[Any]], list[Any]]:
    """A link on a Clock whose connect() hands out the clients in the returned list (or fails
    when it is empty); the dict records what the link reported."""
    clock = Clock()
    clients: list[Any] = []
    seen: dict[str, list[Any]] = {"connected": [], "lost": [], "failed": [], "retrying": []}

    def connect() -> defer.Deferred[Any]:
        if not clients:
            return defer.fail(ConnectionRefusedError("nobody listens"))
        return defer.succeed(clients.pop(0))

    link = DaemonLink(
        connect,
        clock,
        connected=seen["connected"].append,
        lost=seen["lost"].append,
        failed=seen["failed"].append,
        retrying=seen["retrying"].append,
    )
    return link, clock, seen, clients


class RetryDelayTests(SynchronousTestCase):
    def test_backoff(self) -> None:
        """When attempts keep failing, then the delay doubles from FIRST_RETRY up to MAX_RETRY."""
        self.assertEqual(retry_delay(1), FIRST_RETRY)
        self.assertEqual(retry_delay(2), FIRST_RETRY * 2)
        self.assertEqual(retry_delay(50), MAX_RETRY)


class DaemonLinkTests(SynchronousTestCase):
    def test_failures_then_connect(self) -> None:
        """When the daemon answers only at the third attempt, then two failures and two retries
        are reported with growing delays, then the handshake gets the client."""
        link, clock, seen, clients = make_link()
        link.start()
        self.assertEqual(len(seen["failed"]), 1)
        self.assertEqual(seen["retrying"], [FIRST_RETRY])
        clock.advance(FIRST_RETRY)
        self.assertEqual(seen["retrying"], [FIRST_RETRY, FIRST_RETRY * 2])
        client = FakeClient()
        clients.append(client)
        clock.advance(FIRST_RETRY * 2)
        self.assertEqual(seen["connected"], [client])
        self.assertIs(link.client, client)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_loss_reported_once_and_reconnects(self) -> None:
        """When an established connection drops, then the loss is reported once and a new
        connection follows after FIRST_RETRY."""
        link, clock, seen, clients = make_link()
        first, second = FakeClient(), FakeClient()
        clients.extend([first, second])
        link.start()
        first.drop()
        first.drop()
        self.assertEqual(len(seen["lost"]), 1)
        self.assertIsNone(link.client)
        clock.advance(FIRST_RETRY)
        self.assertEqual(seen["connected"], [first, second])

    def test_stop_while_connected_closes(self) -> None:
        """When the link stops while connected, then the client is closed, the stop finishes,
        no loss is reported and no timer is left."""
        link, clock, seen, clients = make_link()
        client = FakeClient()
        clients.append(client)
        link.start()
        stopped = link.stop()
        self.assertTrue(client.closed)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(seen["lost"], [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_while_waiting(self) -> None:
        """When the link stops while waiting to retry, then the retry timer is cancelled."""
        link, clock, _seen, _clients = make_link()
        link.start()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.successResultOf(link.stop())
        self.assertEqual(clock.getDelayedCalls(), [])
