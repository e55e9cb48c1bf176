"""Tests for jarvis.ipc.client (Twisted) against the real server on UNIX and TCP sockets."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from twisted.internet import defer, endpoints, error
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from jarvis.ipc import jsonrpc
from jarvis.ipc.client import IpcClient, RemoteError, _plain_description
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

    async def test_subscribe_to_named_events(self) -> None:
        """When one handler asks for named events and another for others, then each sees only
        its own and the daemon sends the union; a handler asking for everything widens it."""
        client = await self.client()
        peers: list[str] = []
        messages: list[str] = []
        answer = await client.subscribe(
            lambda name, params: peers.append(name), events=["peer.statusChanged"]
        )
        self.assertEqual(answer["events"], ["peer.statusChanged"])
        answer = await client.subscribe(
            lambda name, params: messages.append(name), events=["message.received"]
        )
        self.assertEqual(answer["events"], ["message.received", "peer.statusChanged"])
        [server_side] = list(self.factory.connections)
        forwarded: list[str] = []
        real_notify = server_side.notify
        server_side.notify = lambda m, p: (forwarded.append(m), real_notify(m, p))  # type: ignore[method-assign]
        self.node.emit("peer.statusChanged", {"peer": {}})
        self.node.emit("contact.changed", {"contact": {}})
        self.node.receive("alice", "hello")
        await client.call("daemon.status")
        self.assertEqual(peers, ["peer.statusChanged"])
        self.assertEqual(messages, ["message.received"])
        self.assertEqual(forwarded, ["peer.statusChanged", "message.received"])
        everything: list[str] = []
        answer = await client.subscribe(lambda name, params: everything.append(name))
        self.assertIsNone(answer["events"])
        self.node.emit("contact.changed", {"contact": {}})
        await client.call("daemon.status")
        self.assertEqual(everything, ["contact.changed"])
        self.assertEqual(peers, ["peer.statusChanged"])


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


class DescriptionTests(SocketTestCase):
    """Endpoint descriptions: the plain forms connect directly, the others via endpoints."""

    def test_plain_forms(self) -> None:
        """When a description is unix:PATH or tcp:HOST:PORT, then it is split directly; any
        option, keyword, escape or other kind is left to clientFromString."""
        self.assertEqual(_plain_description("unix:/run/j/api.sock"), ("unix", "/run/j/api.sock", 0))
        self.assertEqual(_plain_description("tcp:127.0.0.1:7771"), ("tcp", "127.0.0.1", 7771))
        self.assertEqual(_plain_description("tcp:localhost:80"), ("tcp", "localhost", 80))
        for other in (
            "unix:path=/x",
            "unix:/x:timeout=3",
            "unix:/x:lockfile=1",
            "tcp:127.0.0.1:7771:timeout=5",
            "tcp:host=h:port=1",
            "tcp:\\:\\:1:7771",
            "tcp:127.0.0.1:http",
            "tcp:127.0.0.1",
            "ssl:127.0.0.1:443",
            "unix:",
        ):
            self.assertIsNone(_plain_description(other), other)

    async def test_keyword_description(self) -> None:
        """When the description uses clientFromString keywords, then it still connects."""
        client = await IpcClient.connect(self.reactor, f"unix:path={self.path}:timeout=5")
        self.addCleanup(client.close)
        self.assertTrue((await client.call("daemon.status"))["running"])

    async def test_cancel_connect(self) -> None:
        """When the connect Deferred is cancelled before the connection is made, then it fails
        with CancelledError and no connection is left open."""
        d = IpcClient.connect(self.reactor, f"unix:{self.path}")
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            await d
        await deferLater(self.reactor, 0.05, lambda: None)
        self.assertEqual(len(self.factory.connections), 0)


class ImportTests(TestCase):
    """The client stays cheap to import (the terminal UI's start-up)."""

    def test_no_endpoints_import(self) -> None:
        """When jarvis.app.cli and the IPC client are imported in a fresh interpreter, then none of
        twisted.internet.endpoints, TLS (twisted.internet.ssl, OpenSSL), cryptography's keys
        or the CLI's commands (jarvis.app.commands) is imported."""
        code = (
            "import sys, jarvis.app.cli, jarvis.ipc.client; "
            "bad = [m for m in ('twisted.internet.endpoints', 'twisted.internet.ssl', 'OpenSSL', "
            "'jarvis.crypto.identity', 'cryptography.hazmat.primitives.asymmetric.ed25519', "
            "'jarvis.app.commands') if m in sys.modules]; "
            "print(','.join(bad))"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
        )
        self.assertEqual(out.stdout.strip(), "")


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

    async def test_tcp_description(self) -> None:
        """When the description is tcp:HOST:PORT, then the client connects over TCP."""
        client = await IpcClient.connect(self.reactor, self.endpoint, token="t0ken")
        self.addCleanup(client.close)
        self.assertEqual(client._protocol.transport.getPeer().type, "TCP")

    async def test_tcp_nobody_listens(self) -> None:
        """When nothing listens on the TCP port, then connect fails with a connect error."""
        with self.assertRaises(error.ConnectError):
            await IpcClient.connect(self.reactor, "tcp:127.0.0.1:1")

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
