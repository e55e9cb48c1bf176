"""Tests for jarvis.ipc.client (Twisted) against the real server on UNIX and TCP sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints, error
from twisted.trial.unittest import TestCase

from jarvis.ipc import jsonrpc
from jarvis.ipc.client import IpcClient, RemoteError
from tests.test_ipc_server import SocketTestCase, make_factory, unlocked_node


class CallTests(SocketTestCase):
    """Calls, errors and progress."""

    async def test_remote_error(self) -> None:
        """When the daemon answers with an error, then the call fails with RemoteError carrying
        code, kind and the one-line message."""
        client = await self.client()
        with self.assertRaises(RemoteError) as caught:
            await client.call("contacts.show", {"contact": "nobody"})
        self.assertEqual((caught.exception.code, caught.exception.kind), (-32003, "not_found"))
        self.assertIn("nobody", str(caught.exception))

    async def test_progress(self) -> None:
        """When a call passes progress, then it receives each progress value before the result."""
        self.node.lock()
        client = await self.client()
        seen: list[Any] = []
        result = await client.call("identity.unlock", {"password": "pw"}, progress=seen.append)
        self.assertEqual(result["name"], "me")
        self.assertEqual(seen, [{"stage": "deriving key"}])

    async def test_subscribe_twice(self) -> None:
        """When two handlers subscribe on one client, then both see each event once."""
        client = await self.client()
        first: list[str] = []
        second: list[str] = []
        await client.subscribe(lambda name, params: first.append(name))
        await client.subscribe(lambda name, params: second.append(name))
        self.node.emit("peer.statusChanged", {"peer": {}})
        self.node.emit("future.event", {"unknown": True})
        await client.call("daemon.status")
        self.assertEqual(first, ["peer.statusChanged", "future.event"])
        self.assertEqual(first, second)
        self.assertEqual(self.node.observer_count, 1)


class DisconnectTests(SocketTestCase):
    """Losing the connection."""

    async def test_server_closes(self) -> None:
        """When the server drops the connection, then pending calls fail with ConnectionLost
        and disconnect observers run once."""
        self.node.pause("history")
        client = await self.client()
        reasons: list[Any] = []
        client.add_disconnect_observer(reasons.append)
        pending = client.call("messages.history", {"contact": "alice"})
        await client.call("daemon.status")
        [server_side] = list(self.factory.connections)
        server_side.transport.loseConnection()
        with self.assertRaises(error.ConnectionLost):
            await pending
        self.assertEqual(len(reasons), 1)
        self.assertFalse(client.connected)
        with self.assertRaises(error.ConnectionLost):
            await client.call("daemon.status")

    async def test_close(self) -> None:
        """When the client closes, then close() fires and the server forgets the connection."""
        client = await IpcClient.connect(self.reactor, f"unix:{self.path}")
        await client.call("daemon.status")
        await client.close()
        self.assertFalse(client.connected)

    async def test_nobody_listens(self) -> None:
        """When nothing listens at the path, then connect fails with a connect error."""
        with self.assertRaises(error.ConnectError):
            await IpcClient.connect(self.reactor, f"unix:{self.path}.none")


class TokenTests(TestCase):
    """TCP connections authenticate with the token."""

    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        factory = make_factory(unlocked_node(), reactor, token=b"t0ken")
        d = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)

        def listening(port: Any) -> None:
            self.addCleanup(port.stopListening)
            self.endpoint = f"tcp:127.0.0.1:{port.getHost().port}"

        return d.addCallback(listening)

    async def test_right_token(self) -> None:
        """When the client has the right token, then calls are served."""
        client = await IpcClient.connect(self.reactor, self.endpoint, token="t0ken")
        self.addCleanup(client.close)
        self.assertTrue((await client.call("daemon.status"))["running"])

    async def test_wrong_token(self) -> None:
        """When the token is wrong, then connect fails with unauthorized."""
        with self.assertRaises(RemoteError) as caught:
            await IpcClient.connect(self.reactor, self.endpoint, token="nope")
        self.assertEqual(caught.exception.code, jsonrpc.UNAUTHORIZED)

    async def test_missing_token(self) -> None:
        """When no token is sent, then the first call fails with unauthorized and the
        connection closes."""
        client = await IpcClient.connect(self.reactor, self.endpoint)
        lost: defer.Deferred[Any] = defer.Deferred()
        client.add_disconnect_observer(lambda reason: lost.callback(None))
        with self.assertRaises(RemoteError) as caught:
            await client.call("daemon.status")
        self.assertEqual(caught.exception.kind, "unauthorized")
        await lost
