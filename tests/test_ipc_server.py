"""Tests for jarvis.ipc.server: the line protocol on StringTransport and on real UNIX sockets."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import sys
import tempfile
from typing import Any

from twisted.internet import defer, endpoints, task, utils
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.ipc import jsonrpc
from jarvis.ipc.client import IpcClient
from jarvis.ipc.methods import DaemonInfo, MethodContext, build_registry
from jarvis.ipc.registry import MethodSpec, Registry
from jarvis.ipc.server import IpcServerFactory, IpcServerProtocol, peer_uid
from jarvis.testing import FakeNode, fake_link


def unlocked_node() -> FakeNode:
    """Return a FakeNode with an unlocked identity and one contact, alice."""
    node = FakeNode()
    node.create_identity("me", "pw", progress=lambda v: None)
    node.add_contact(link=fake_link("alice"))
    return node


def make_factory(
    node: FakeNode | None = None, clock: Any = None, token: bytes | None = None
) -> IpcServerFactory:
    """Return a server factory on a FakeNode (unlocked, with alice, unless given)."""
    if clock is None:
        clock = task.Clock()
    ctx = MethodContext(
        node=node or unlocked_node(),
        clock=clock,
        info=DaemonInfo(os.getpid(), "0.1.0", "/tmp/data", "unix:/tmp/x.sock"),
        stop_daemon=lambda: None,
    )
    return IpcServerFactory(build_registry(), ctx, clock=clock, require_token=token)


def make_connection(
    factory: IpcServerFactory,
) -> tuple[IpcServerProtocol, StringTransport]:
    """Return a server protocol connected to a StringTransport (no peer uid: token rules)."""
    proto = factory.buildProtocol(None)
    assert isinstance(proto, IpcServerProtocol)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def sent(transport: StringTransport) -> list[dict[str, Any]]:
    """Return (and clear) the JSON messages written to *transport*."""
    data = transport.value()
    transport.clear()
    return [json.loads(line) for line in data.splitlines()]


class MalformedInputTests(SynchronousTestCase):
    """Bad lines get the right error and the connection stays usable."""

    def setUp(self) -> None:
        self.proto, self.transport = make_connection(make_factory())

    def exchange(self, line: bytes) -> list[dict[str, Any]]:
        self.proto.dataReceived(line + b"\n")
        return sent(self.transport)

    def test_garbage_then_good(self) -> None:
        """When a garbage line arrives, then -32700 comes back with id null and the next
        request is still answered."""
        [error] = self.exchange(b"}{ not json")
        self.assertEqual((error["id"], error["error"]["code"]), (None, jsonrpc.PARSE_ERROR))
        [answer] = self.exchange(b'{"jsonrpc":"2.0","id":1,"method":"daemon.status"}')
        self.assertEqual((answer["id"], answer["result"]["running"]), (1, True))
        self.assertFalse(self.transport.disconnecting)

    def test_non_object(self) -> None:
        """When the JSON is not an object (or is a batch), then -32600 comes back."""
        for line in (b"17", b'"a"', b"null"):
            [error] = self.exchange(line)
            self.assertEqual(error["error"]["code"], jsonrpc.INVALID_REQUEST)

    def test_unknown_method(self) -> None:
        """When the method is unknown, then -32601 comes back with the request's id."""
        [error] = self.exchange(b'{"id":"a","method":"no.such"}')
        self.assertEqual((error["id"], error["error"]["code"]), ("a", jsonrpc.METHOD_NOT_FOUND))

    def test_bad_params(self) -> None:
        """When a param is wrong, then -32602 names the field."""
        [error] = self.exchange(b'{"id":2,"method":"messages.send","params":{"contact":"alice"}}')
        self.assertEqual(error["error"]["code"], jsonrpc.INVALID_PARAMS)
        self.assertEqual(error["error"]["data"]["field"], "text")
        self.assertIn("text", error["error"]["message"])

    def test_oversized(self) -> None:
        """When a line is longer than 1 MiB, then an error is sent and the connection closes."""
        self.proto.dataReceived(b'{"id":1,"method":"' + b"x" * (jsonrpc.MAX_LINE + 10))
        [error] = sent(self.transport)
        self.assertEqual(error["error"]["code"], jsonrpc.INVALID_REQUEST)
        self.assertEqual(error["error"]["data"]["kind"], "too_large")
        self.assertTrue(self.transport.disconnecting)

    def test_duplicate_id(self) -> None:
        """When a request reuses the id of a pending one, then it is refused and the first
        still answers."""
        node = unlocked_node()
        paused = node.pause("send_message")
        proto, transport = make_connection(make_factory(node))
        line = b'{"id":9,"method":"messages.send","params":{"contact":"alice","text":"x"}}\n'
        proto.dataReceived(line + line)
        [error] = sent(transport)
        self.assertEqual((error["id"], error["error"]["code"]), (9, jsonrpc.INVALID_REQUEST))
        paused.release()
        [answer] = sent(transport)
        self.assertEqual(answer["result"]["body"], "x")


class CancelTests(SynchronousTestCase):
    """$/cancelRequest cancels a running request."""

    def test_cancel(self) -> None:
        """When the client cancels a slow send, then it gets -32800 and no message exists."""
        node = unlocked_node()
        paused = node.pause("send_message")
        proto, transport = make_connection(make_factory(node))
        proto.dataReceived(
            b'{"id":4,"method":"messages.send","params":{"contact":"alice","text":"x"}}\n'
        )
        self.assertEqual(sent(transport), [])
        proto.dataReceived(b'{"method":"$/cancelRequest","params":{"id":4}}\n')
        [error] = sent(transport)
        self.assertEqual((error["id"], error["error"]["code"]), (4, jsonrpc.REQUEST_CANCELLED))
        self.assertEqual(paused.cancelled, 1)
        self.assertEqual(node.messages_of("alice"), [])

    def test_connection_lost(self) -> None:
        """When the client goes away, then its pending requests are cancelled."""
        node = unlocked_node()
        paused = node.pause("send_message")
        proto, _ = make_connection(make_factory(node))
        proto.dataReceived(
            b'{"id":4,"method":"messages.send","params":{"contact":"alice","text":"x"}}\n'
        )
        proto.connectionLost(jsonrpc.RpcError(0, "gone"))  # type: ignore[arg-type]
        self.assertEqual(paused.cancelled, 1)


class DeadlineTests(SynchronousTestCase):
    """Deadlines on the server's clock."""

    def test_timed_out(self) -> None:
        """When a request outlives its deadline, then -32004 arrives and the work is cancelled."""
        node = unlocked_node()
        paused = node.pause("history")
        clock = task.Clock()
        proto, transport = make_connection(make_factory(node, clock))
        proto.dataReceived(b'{"id":1,"method":"messages.history","params":{"contact":"alice"}}\n')
        clock.advance(11)
        [error] = sent(transport)
        self.assertEqual(error["error"]["code"], jsonrpc.TIMED_OUT)
        self.assertEqual(paused.cancelled, 1)


class AnswerTests(SynchronousTestCase):
    """Answers leave nothing behind and survive results that are not JSON."""

    def test_synchronous_answers_leave_nothing(self) -> None:
        """When many requests are answered at once, then none stays pending and no deadline
        timer is left on the clock."""
        clock = task.Clock()
        proto, transport = make_connection(make_factory(clock=clock))
        for n in range(10):
            proto.dataReceived(b'{"id":%d,"method":"daemon.status"}\n' % n)
        answers = sent(transport)
        self.assertEqual([a["id"] for a in answers], list(range(10)))
        self.assertEqual(answers[-1]["result"]["in_flight"][0]["id"], 9)
        self.assertEqual((proto._pending, clock.getDelayedCalls()), ({}, []))

    def test_result_not_json(self) -> None:
        """When a method's result cannot be encoded (a cycle), then -32603 comes back and the
        next request is still answered."""
        cycle: list[Any] = []
        cycle.append(cycle)
        spec = MethodSpec("t.cycle", lambda inv: cycle, needs_unlocked=False)
        factory = make_factory()
        full = build_registry()
        factory.registry = Registry([*full.methods.values(), spec], full.groups.values())
        proto, transport = make_connection(factory)
        proto.dataReceived(b'{"id":1,"method":"t.cycle"}\n{"id":2,"method":"daemon.status"}\n')
        bad, good = sent(transport)
        self.assertEqual(bad["error"]["code"], jsonrpc.INTERNAL_ERROR)
        self.assertTrue(good["result"]["running"])
        # the encoder reports a cycle as too deep (orjson: a TypeError; json: RecursionError)
        self.assertEqual(len(self.flushLoggedErrors(*jsonrpc.ENCODE_ERRORS)), 1)


class ProgressTests(SynchronousTestCase):
    """Progress notifications."""

    def test_progress_token(self) -> None:
        """When a request carries _progress (or progressToken), then $/progress notifications
        with that token precede the answer."""
        for key in ("_progress", "progressToken"):
            proto, transport = make_connection(make_factory(FakeNode()))
            request = {"id": 1, "method": "identity.create"}
            request["params"] = {"name": "me", "password": "pw", key: "tok"}
            proto.dataReceived(json.dumps(request).encode() + b"\n")
            messages = sent(transport)
            self.assertEqual(
                [m.get("method") for m in messages], ["$/progress", "$/progress", None]
            )
            self.assertEqual(
                messages[0]["params"], {"token": "tok", "value": {"stage": "deriving key"}}
            )
            self.assertEqual(messages[2]["result"]["name"], "me")


class EventTests(SynchronousTestCase):
    """events.subscribe forwards Node events."""

    def test_subscribe(self) -> None:
        """When a connection subscribed, then node events arrive as notifications, and after
        it closes the node has no observer left."""
        node = unlocked_node()
        proto, transport = make_connection(make_factory(node))
        proto.dataReceived(b'{"id":1,"method":"events.subscribe"}\n')
        self.assertEqual(sent(transport)[0]["result"], {"subscribed": True, "events": None})
        node.receive("alice", "hello")
        [event] = sent(transport)
        self.assertEqual(event["method"], "message.received")
        self.assertEqual(event["params"]["message"]["body"], "hello")
        proto.connectionLost(jsonrpc.RpcError(0, "gone"))  # type: ignore[arg-type]
        self.assertEqual(node.observer_count, 0)

    def test_only_named_events(self) -> None:
        """When a connection subscribes to named events, then only those arrive; a later
        subscribe replaces the names, and null brings every event back."""
        node = unlocked_node()
        proto, transport = make_connection(make_factory(node))
        proto.dataReceived(
            b'{"id":1,"method":"events.subscribe","params":{"events":["peer.statusChanged"]}}\n'
        )
        self.assertEqual(
            sent(transport)[0]["result"], {"subscribed": True, "events": ["peer.statusChanged"]}
        )
        node.receive("alice", "hello")
        node.emit("peer.statusChanged", {"peer": {"uid": "a"}})
        self.assertEqual([m["method"] for m in sent(transport)], ["peer.statusChanged"])
        proto.dataReceived(
            b'{"id":2,"method":"events.subscribe","params":{"events":["message.received"]}}\n'
        )
        sent(transport)
        node.emit("peer.statusChanged", {"peer": {"uid": "a"}})
        node.receive("alice", "again")
        self.assertEqual([m["method"] for m in sent(transport)], ["message.received"])
        proto.dataReceived(b'{"id":3,"method":"events.subscribe","params":{"events":null}}\n')
        sent(transport)
        node.emit("peer.statusChanged", {"peer": {"uid": "a"}})
        node.receive("alice", "all")
        self.assertEqual(
            [m["method"] for m in sent(transport)], ["peer.statusChanged", "message.received"]
        )
        self.assertEqual(node.observer_count, 1)

    def test_unknown_event_name(self) -> None:
        """When a subscription names an event the daemon does not have (a typo), then -32602
        names it and the connection is not subscribed."""
        node = unlocked_node()
        proto, transport = make_connection(make_factory(node))
        proto.dataReceived(
            b'{"id":1,"method":"events.subscribe","params":{"events":["message.recieved"]}}\n'
        )
        [answer] = sent(transport)
        self.assertEqual(answer["error"]["code"], jsonrpc.INVALID_PARAMS)
        self.assertIn("message.recieved", answer["error"]["message"])
        node.receive("alice", "hello")
        self.assertEqual(sent(transport), [])
        self.assertEqual(node.observer_count, 0)


class TokenTests(SynchronousTestCase):
    """Non-UNIX connections must authenticate with the token first."""

    def test_missing_token(self) -> None:
        """When the first request is not auth, then -32011 comes back and the connection
        closes."""
        proto, transport = make_connection(make_factory(token=b"s3cret"))
        proto.dataReceived(b'{"id":1,"method":"daemon.status"}\n')
        [error] = sent(transport)
        self.assertEqual(error["error"]["code"], jsonrpc.UNAUTHORIZED)
        self.assertTrue(transport.disconnecting)

    def test_wrong_token(self) -> None:
        """When auth carries a wrong token, then -32011 and close, without echoing the token."""
        proto, transport = make_connection(make_factory(token=b"s3cret"))
        proto.dataReceived(b'{"id":1,"method":"auth","params":{"token":"guess"}}\n')
        data = transport.value()
        self.assertNotIn(b"guess", data)
        self.assertEqual(json.loads(data)["error"]["code"], jsonrpc.UNAUTHORIZED)
        self.assertTrue(transport.disconnecting)

    def test_right_token(self) -> None:
        """When auth carries the right token, then later requests are served."""
        proto, transport = make_connection(make_factory(token=b"s3cret"))
        proto.dataReceived(
            b'{"id":1,"method":"auth","params":{"token":"s3cret"}}\n'
            b'{"id":2,"method":"daemon.status"}\n'
        )
        first, second = sent(transport)
        self.assertEqual(first["result"], {"authenticated": True})
        self.assertTrue(second["result"]["running"])

    def test_no_peer_uid(self) -> None:
        """When the transport is not a socket, then peer_uid is None."""
        self.assertIsNone(peer_uid(StringTransport()))


class LineClient(LineReceiver):
    """A raw test client: writes lines, collects parsed JSON messages."""

    delimiter = b"\n"
    MAX_LENGTH = jsonrpc.MAX_INCOMING_LINE
    transport: Any

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.waiters: list[defer.Deferred[Any]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        message = json.loads(line)
        if self.waiters:
            self.waiters.pop(0).callback(message)
        else:
            self.messages.append(message)

    def next_message(self) -> defer.Deferred[Any]:
        if self.messages:
            return defer.succeed(self.messages.pop(0))
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiters.append(d)
        return d

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


def body_and(message: dict[str, Any], text: str) -> tuple[str, str]:
    """Return the message's body and the text that was sent."""
    return message["body"], text


def recorder(log: list[tuple[str, Any]]) -> Any:
    """Return an event handler appending (name, params) to *log*."""

    def record(name: str, params: Any) -> None:
        log.append((name, params))

    return record


class SocketTestCase(TestCase):
    """Base: a server with a FakeNode on a real UNIX socket in a fresh 0700 directory."""

    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.dir = tempfile.mkdtemp(dir="/tmp", prefix="jipc")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "api.sock")
        self.node = unlocked_node()
        self.factory = make_factory(self.node, reactor)
        endpoint = endpoints.UNIXServerEndpoint(reactor, self.path, mode=0o600)
        d = endpoint.listen(self.factory)

        def listening(port: Any) -> None:
            self.addCleanup(port.stopListening)

        return d.addCallback(listening)

    async def raw_client(self) -> LineClient:
        endpoint = endpoints.UNIXClientEndpoint(self.reactor, self.path)
        proto = await endpoint.connect(Factory.forProtocol(LineClient))
        assert isinstance(proto, LineClient)

        def close() -> defer.Deferred[None]:
            proto.transport.loseConnection()
            return proto.lost

        self.addCleanup(close)
        return proto

    async def client(self) -> IpcClient:
        client = await IpcClient.connect(self.reactor, f"unix:{self.path}")
        self.addCleanup(client.close)
        return client


class SocketTests(SocketTestCase):
    """The server on a real UNIX socket."""

    def test_modes(self) -> None:
        """When the server listens, then the socket is 0600 in a 0700 directory."""
        self.assertEqual(stat.S_IMODE(os.stat(self.dir).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    async def test_bad_lines_others_served(self) -> None:
        """When one client sends garbage, non-objects, unknown methods, bad params and finally
        an oversized line, then each gets its error and another client is still served."""
        bad = await self.raw_client()
        good = await self.client()
        cases = [
            (b"garbage", jsonrpc.PARSE_ERROR),
            (b"17", jsonrpc.INVALID_REQUEST),
            (b'{"id":1,"method":"x.y"}', jsonrpc.METHOD_NOT_FOUND),
            (b'{"id":2,"method":"contacts.show","params":{"contact":5}}', jsonrpc.INVALID_PARAMS),
        ]
        for line, code in cases:
            bad.transport.write(line + b"\n")
            message = await bad.next_message()
            self.assertEqual(message["error"]["code"], code, line)
        self.assertEqual((await good.call("daemon.status"))["running"], True)
        bad.transport.write(b"x" * (jsonrpc.MAX_LINE + 100))
        message = await bad.next_message()
        self.assertEqual(message["error"]["data"]["kind"], "too_large")
        await bad.lost
        self.assertEqual((await good.call("contacts.show", {"contact": "alice"}))["name"], "alice")

    async def test_many_clients(self) -> None:
        """When 20 clients each have 200 requests in flight, then every answer matches its
        request."""
        clients = [await self.client() for _ in range(20)]
        calls = []
        for c, client in enumerate(clients):
            for i in range(200):
                text = f"{c}-{i}"
                d = client.call("messages.send", {"contact": "alice", "text": text})
                calls.append(d.addCallback(body_and, text))
        results = await defer.gatherResults(calls)
        self.assertEqual(len(results), 4000)
        for body, text in results:
            self.assertEqual(body, text)

    async def test_cancel_over_socket(self) -> None:
        """When a client cancels a slow call, then the daemon drops the work and the state is
        unchanged."""
        paused = self.node.pause("send_message")
        client = await self.client()
        d = client.call("messages.send", {"contact": "alice", "text": "x"})
        while paused.waiting == 0:
            await task.deferLater(self.reactor, 0.005, lambda: None)
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            await d
        while paused.cancelled == 0:
            await task.deferLater(self.reactor, 0.005, lambda: None)
        self.assertEqual(self.node.messages_of("alice"), [])
        self.assertEqual(
            (await client.call("daemon.status"))["in_flight"][0]["method"], "daemon.status"
        )

    async def test_cancel_answer(self) -> None:
        """When a raw client sends $/cancelRequest, then the request answers -32800."""
        self.node.pause("history")
        raw = await self.raw_client()
        raw.transport.write(
            b'{"jsonrpc":"2.0","id":7,"method":"messages.history","params":{"contact":"alice"}}\n'
            b'{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":7}}\n'
        )
        message = await raw.next_message()
        self.assertEqual((message["id"], message["error"]["code"]), (7, jsonrpc.REQUEST_CANCELLED))

    async def test_events_same_order(self) -> None:
        """When two clients subscribed, then both get the same events in the same order."""
        seen: list[list[tuple[str, Any]]] = [[], []]
        clients = [await self.client(), await self.client()]
        for client, log in zip(clients, seen, strict=True):
            await client.subscribe(recorder(log))
        for i in range(20):
            self.node.receive("alice", f"m{i}")
        await clients[0].call("messages.markRead", {"contact": "alice"})
        await clients[1].call("daemon.status")
        self.assertEqual(len(seen[0]), 20)
        self.assertEqual(seen[0], seen[1])
        self.assertEqual([p["message"]["body"] for _, p in seen[0]], [f"m{i}" for i in range(20)])

    async def test_other_uid_refused(self) -> None:
        """When a process of another uid connects, then the server closes without answering."""
        if os.getuid() != 0:
            raise self.skipTest("needs root to run a client as another uid (nobody)")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise self.skipTest("no 'nobody' user on this machine") from None
        # Let nobody reach the socket, so that only SO_PEERCRED can refuse it.
        os.chmod(self.dir, 0o711)
        os.chmod(self.path, 0o666)
        script = (
            "import os, socket, sys\n"
            f"os.setgid({nobody.pw_gid}); os.setuid({nobody.pw_uid})\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(sys.argv[1])\n"
            "try:\n"
            '    s.sendall(b\'{"id":1,"method":"daemon.status"}\\n\')\n'
            "    data = s.recv(65536)\n"
            "except OSError as e:\n"
            "    data = type(e).__name__.encode()\n"
            "print(os.getuid(), repr(data))\n"
        )
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-c", script, self.path], env=dict(os.environ)
        )
        self.assertEqual(code, 0, err)
        uid, data = out.decode().split(" ", 1)
        self.assertEqual(int(uid), nobody.pw_uid)
        self.assertNotIn("result", data)
        self.assertIn(data.strip(), ("b''", "b'ConnectionResetError'", "b'BrokenPipeError'"))
        # Our own uid is still served.
        self.assertTrue((await (await self.client()).call("daemon.status"))["running"])


class FairnessTests(SynchronousTestCase):
    def test_pipelined_burst_yields_the_reactor(self) -> None:
        """When a client sends 100 requests in one read, then a bounded number is handled per
        reactor turn and the rest follow in the next turns, every one answered once."""
        clock = task.Clock()
        proto, transport = make_connection(make_factory(clock=clock))
        burst = b"".join(
            json.dumps({"jsonrpc": "2.0", "id": i, "method": "daemon.status"}).encode() + b"\n"
            for i in range(100)
        )
        proto.dataReceived(burst)
        first = sent(transport)
        self.assertEqual(len(first), IpcServerProtocol.LINES_PER_TURN)
        answered = [m["id"] for m in first]
        for _ in range(10):
            clock.advance(0)
            answered += [m["id"] for m in sent(transport)]
        self.assertEqual(answered, list(range(100)))


class LockedEventTests(TestCase):
    """While the identity is locked, subscribers learn no user content (issue 13)."""

    def test_fake_node_locked_subscriber(self) -> None:
        """When a client subscribes after the lock and a message arrives, then it receives
        neither the text nor the sender, only the lock events; after unlock text flows again."""
        node = unlocked_node()
        proto, transport = make_connection(make_factory(node))
        node.locked = True
        node.emit("identity.locked", {"wiped": False})
        proto.dataReceived(b'{"id":1,"method":"events.subscribe"}\n')
        sent(transport)
        node.receive("alice", "secret while locked")
        node.emit("contact.changed", {"contact": {"name": "alice"}})
        node.emit("peer.statusChanged", {"peer": {"name": "alice"}})
        self.assertEqual(transport.value(), b"")
        node.locked = False
        node.emit("identity.unlocked", {"uid": "u", "name": "me"})
        node.receive("alice", "visible after unlock")
        messages = sent(transport)
        self.assertEqual([m["method"] for m in messages], ["identity.unlocked", "message.received"])
        self.assertEqual(messages[1]["params"]["message"]["body"], "visible after unlock")

    async def test_real_node_hides_peer_message(self) -> None:
        """When the real node is screen-locked, a client subscribes and a contact's message is
        delivered (stored, acked), then no byte the client receives holds the text, the
        contact's name or uid; after unlock the next message's text arrives."""
        from tests.test_node import FakeSession, node_with_bob, turned

        node, clock, _events, bob = await node_with_bob(self)
        await node.lock()
        ctx = MethodContext(
            node=node,
            clock=clock,
            info=DaemonInfo(os.getpid(), "0.1.0", node.data_dir, "unix:/tmp/x.sock"),
            stop_daemon=lambda: None,
        )
        factory = IpcServerFactory(build_registry(), ctx, clock=clock)
        proto, transport = make_connection(factory)
        proto.dataReceived(b'{"id":1,"method":"events.subscribe"}\n')
        self.assertEqual(sent(transport)[0]["result"]["subscribed"], True)
        session = FakeSession(bob.uid)
        await turned(clock, node.message_received(session, os.urandom(16), b"canary-text", 1))
        clock.advance(0)
        self.assertEqual(len(session.acks), 1)  # delivered and stored despite the lock
        leaked = transport.value()
        for needle in (b"canary-text", b"Bob", bob.uid.encode()):
            self.assertNotIn(needle, leaked)
        await node.unlock("pw")
        await turned(clock, node.message_received(session, os.urandom(16), b"after-unlock", 2))
        methods = [m["method"] for m in sent(transport)]
        self.assertIn("identity.unlocked", methods)
        self.assertIn("message.received", methods)
        proto.connectionLost(jsonrpc.RpcError(0, "gone"))  # type: ignore[arg-type]


#: Section 7 of the JSON-RPC 2.0 specification, adapted to real methods: (name, line, check).
#: The "rpc call Batch" example: two calls, a notification, an invalid element, an unknown
#: method, a call with bad params ("mixed" valid, invalid and notification elements).
RPC_CALL_BATCH = (
    b'[{"jsonrpc":"2.0","method":"daemon.status","id":"1"},'
    b'{"jsonrpc":"2.0","method":"messages.send","params":{"contact":"alice","text":"hi"}},'
    b'{"jsonrpc":"2.0","method":"contacts.show","params":{"contact":"alice"},"id":"2"},'
    b'{"foo":"boo"},'
    b'{"jsonrpc":"2.0","method":"foo.get","params":{"name":"myself"},"id":"5"},'
    b'{"jsonrpc":"2.0","method":"contacts.show","params":{"contact":5},"id":"9"}]'
)
ALL_NOTIFICATIONS = (
    b'[{"jsonrpc":"2.0","method":"messages.send","params":{"contact":"alice","text":"n1"}},'
    b'{"jsonrpc":"2.0","method":"messages.send","params":{"contact":"alice","text":"n2"}}]'
)
INVALID_JSON_BATCH = (
    b'[{"jsonrpc":"2.0","method":"daemon.status","params":[1,2,4],"id":"1"},'
    b'{"jsonrpc":"2.0","method"]'
)


class BatchExamples:
    """Checks shared by the StringTransport and the real-socket batch tests."""

    def check_rpc_call_batch(self, tc: Any, answer: Any) -> None:
        tc.assertIsInstance(answer, list)
        by_id = {}
        for response in answer:
            by_id.setdefault(response["id"], []).append(response)
        tc.assertEqual(sorted(by_id, key=str), sorted(["1", "2", None, "5", "9"], key=str))
        tc.assertTrue(by_id["1"][0]["result"]["running"])
        tc.assertEqual(by_id["2"][0]["result"]["name"], "alice")
        tc.assertEqual(by_id[None][0]["error"]["code"], jsonrpc.INVALID_REQUEST)
        tc.assertEqual(by_id["5"][0]["error"]["code"], jsonrpc.METHOD_NOT_FOUND)
        tc.assertEqual(by_id["9"][0]["error"]["code"], jsonrpc.INVALID_PARAMS)

    def check_single_error(self, tc: Any, answer: Any, code: int) -> None:
        tc.assertIsInstance(answer, dict)  # one error object, not an array
        tc.assertEqual((answer["id"], answer["error"]["code"]), (None, code))

    def check_invalid_elements(self, tc: Any, answer: Any, count: int) -> None:
        tc.assertIsInstance(answer, list)
        tc.assertEqual(len(answer), count)
        for response in answer:
            tc.assertEqual((response["id"], response["error"]["code"]), (None, -32600))


class BatchTests(SynchronousTestCase, BatchExamples):
    """Batches on a StringTransport (JSON-RPC 2.0 section 6 and the examples of section 7)."""

    def setUp(self) -> None:
        self.node = unlocked_node()
        self.clock = task.Clock()
        self.proto, self.transport = make_connection(make_factory(self.node, self.clock))

    def exchange(self, line: bytes) -> list[Any]:
        self.proto.dataReceived(line + b"\n")
        return sent(self.transport)

    def test_rpc_call_batch(self) -> None:
        """When a batch mixes calls, a notification, an invalid element, an unknown method and
        bad params, then one line holds the five responses (not the notification's) and the
        notification ran."""
        [answer] = self.exchange(RPC_CALL_BATCH)
        self.check_rpc_call_batch(self, answer)
        self.assertEqual(len(answer), 5)
        self.assertEqual([m["body"] for m in self.node.messages_of("alice")], ["hi"])

    def test_all_notifications(self) -> None:
        """When every element is a notification, then nothing is written and each ran."""
        self.assertEqual(self.exchange(ALL_NOTIFICATIONS), [])
        bodies = [m["body"] for m in self.node.messages_of("alice")]
        self.assertEqual(sorted(bodies), ["n1", "n2"])

    def test_invalid_json_batch(self) -> None:
        """When the batch is not valid JSON, then one parse error (not an array) comes back."""
        [answer] = self.exchange(INVALID_JSON_BATCH)
        self.check_single_error(self, answer, jsonrpc.PARSE_ERROR)

    def test_empty_array(self) -> None:
        """When the batch is [], then one -32600 error with id null (not an array)."""
        [answer] = self.exchange(b"[]")
        self.check_single_error(self, answer, jsonrpc.INVALID_REQUEST)

    def test_invalid_not_empty(self) -> None:
        """When the batch is [1] or [1,2,3], then an array of one or three -32600 errors."""
        [answer] = self.exchange(b"[1]")
        self.check_invalid_elements(self, answer, 1)
        [answer] = self.exchange(b"[1,2,3]")
        self.check_invalid_elements(self, answer, 3)
        [answer] = self.exchange(b'{"id":1,"method":"daemon.status"}')
        self.assertTrue(answer["result"]["running"])  # the connection stays usable

    def test_waits_for_every_element_and_cancel_by_id(self) -> None:
        """When one element is slow, then nothing is written until it finishes; cancelling it
        by its id answers it -32800 inside the batch's array, with the fast element's result;
        the work was cancelled."""
        paused = self.node.pause("send_message")
        line = (
            b'[{"id":"slow","method":"messages.send","params":{"contact":"alice","text":"x"}},'
            b'{"id":"fast","method":"daemon.status"}]'
        )
        self.assertEqual(self.exchange(line), [])
        [answer] = self.exchange(b'{"method":"$/cancelRequest","params":{"id":"slow"}}')
        by_id = {r["id"]: r for r in answer}
        self.assertEqual(by_id["slow"]["error"]["code"], jsonrpc.REQUEST_CANCELLED)
        self.assertTrue(by_id["fast"]["result"]["running"])
        self.assertEqual(paused.cancelled, 1)
        self.assertEqual(self.node.messages_of("alice"), [])

    def test_deadline_per_element(self) -> None:
        """When a batch element outlives its method's deadline, then it answers -32004 in the
        array while the other element answered normally."""
        paused = self.node.pause("history")
        line = (
            b'[{"id":1,"method":"messages.history","params":{"contact":"alice"}},'
            b'{"id":2,"method":"contacts.list"}]'
        )
        self.assertEqual(self.exchange(line), [])
        self.clock.advance(11)
        [answer] = sent(self.transport)
        by_id = {r["id"]: r for r in answer}
        self.assertEqual(by_id[1]["error"]["code"], jsonrpc.TIMED_OUT)
        self.assertEqual(by_id[2]["result"]["contacts"][0]["name"], "alice")
        self.assertEqual(paused.cancelled, 1)

    def test_duplicate_id_in_batch(self) -> None:
        """When two pending elements share an id, then the second is refused -32600 and the
        first still answers."""
        paused = self.node.pause("send_message")
        line = (
            b'[{"id":7,"method":"messages.send","params":{"contact":"alice","text":"a"}},'
            b'{"id":7,"method":"messages.send","params":{"contact":"alice","text":"b"}}]'
        )
        self.assertEqual(self.exchange(line), [])
        paused.release()
        [answer] = sent(self.transport)
        codes = sorted(r.get("error", {}).get("code", 0) for r in answer)
        self.assertEqual(codes, [jsonrpc.INVALID_REQUEST, 0])

    def test_batch_before_auth_refused(self) -> None:
        """When a connection that must authenticate sends a batch first, then -32011 comes
        back and the connection closes (auth comes alone)."""
        proto, transport = make_connection(make_factory(token=b"s3cret"))
        proto.dataReceived(b'[{"id":1,"method":"auth","params":{"token":"s3cret"}}]\n')
        [error] = sent(transport)
        self.assertEqual(error["error"]["code"], jsonrpc.UNAUTHORIZED)
        self.assertTrue(transport.disconnecting)


class BatchSocketTests(SocketTestCase, BatchExamples):
    """Every example of section 7 over the real server on a real UNIX socket."""

    async def test_section_7_examples(self) -> None:
        """When a raw client sends each example of the specification in turn, then each gets
        the specified answer on one line, and an all-notification batch gets none (the next
        answer belongs to the request after it)."""
        client = await self.raw_client()

        async def exchange(line: bytes) -> Any:
            client.transport.write(line + b"\n")
            return await client.next_message()

        self.check_rpc_call_batch(self, await exchange(RPC_CALL_BATCH))
        client.transport.write(ALL_NOTIFICATIONS + b"\n")
        after = await exchange(b'{"id":"after","method":"daemon.status"}')
        self.assertEqual(after["id"], "after")
        bodies = sorted(m["body"] for m in self.node.messages_of("alice"))
        self.assertEqual(bodies, ["hi", "n1", "n2"])
        self.check_single_error(self, await exchange(INVALID_JSON_BATCH), jsonrpc.PARSE_ERROR)
        self.check_single_error(self, await exchange(b"[]"), jsonrpc.INVALID_REQUEST)
        self.check_invalid_elements(self, await exchange(b"[1]"), 1)
        self.check_invalid_elements(self, await exchange(b"[1,2,3]"), 3)
        self.assertEqual(client.messages, [])


class SlowClientTests(SocketTestCase):
    """A subscriber that stops reading cannot make the daemon buffer without bound (issue 12)."""

    async def wait_until(self, condition: Any) -> None:
        while not condition():
            await task.deferLater(self.reactor, 0.001, lambda: None)

    async def test_slow_subscriber_lagged_reader_served(self) -> None:
        """When one subscriber stops reading while three times the bound of events is
        produced, then the bytes the server holds for each client stay under the bound (and
        daemon.status's output_buffered, for both, under the bound and 1 MiB for the reader),
        the slow client receives a
        prefix of the events, then $/lagged with the count dropped, then EOF, and a reading
        subscriber receives every event in order."""
        from jarvis.ipc.wire import MAX_PENDING_OUTPUT

        slow = await self.raw_client()
        fast = await self.raw_client()
        for client in (slow, fast):
            client.transport.write(b'{"id":1,"method":"events.subscribe"}\n')
            self.assertEqual((await client.next_message())["result"]["subscribed"], True)
        slow.transport.pauseProducing()  # the client stops reading (a suspended UI)
        filler = "x" * 16_000
        total = 3 * MAX_PENDING_OUTPUT // len(filler)
        peak = peak_total = 0
        for i in range(total):
            self.node.receive("alice", f"{i}:{filler}")
            peak = max(peak, *(c.buffered for c in self.factory.connections))
            peak_total = max(peak_total, self.factory.client_figures()["output_buffered"])
            if i % 16 == 15:
                await self.wait_until(lambda i=i: len(fast.messages) > i - 8)
        await self.wait_until(lambda: len(fast.messages) == total)
        self.assertLessEqual(peak, MAX_PENDING_OUTPUT)
        self.assertGreater(peak, MAX_PENDING_OUTPUT // 2)  # the slow client did fill it
        self.assertLessEqual(peak_total, MAX_PENDING_OUTPUT + (1 << 20))
        self.assertEqual(self.factory.lagged, 1)
        bodies = [m["params"]["message"]["body"] for m in fast.messages]
        self.assertEqual([int(b.split(":")[0]) for b in bodies], list(range(total)))

        slow.transport.resumeProducing()
        await slow.lost
        await self.wait_until(lambda: len(self.factory.connections) == 1)  # the reader's
        *events, last = slow.messages
        self.assertEqual(last["method"], "$/lagged")
        self.assertIn("lagged, resubscribe", last["params"]["message"])
        received = [int(m["params"]["message"]["body"].split(":")[0]) for m in events]
        self.assertEqual(received, list(range(len(received))))  # a prefix, in order
        self.assertGreater(last["params"]["dropped"], 0)
        self.assertLess(len(received), total)

    async def test_unread_replies_count_too(self) -> None:
        """When a client pipelines calls and never reads the answers, then it is disconnected
        with $/lagged once they pass the bound, and other clients are still served."""
        from jarvis.ipc.wire import MAX_PENDING_OUTPUT

        greedy = await self.raw_client()
        greedy.transport.pauseProducing()
        self.node.receive("alice", "y" * 60_000)
        request = b'{"id":%d,"method":"messages.history","params":{"contact":"alice"}}\n'
        count = 2 * MAX_PENDING_OUTPUT // 60_000
        greedy.transport.write(b"".join(request % i for i in range(count)))
        await self.wait_until(lambda: self.factory.lagged == 1)
        good = await self.client()
        self.assertTrue((await good.call("daemon.status"))["running"])
        self.assertEqual(self.factory.client_figures()["lagged"], 1)
        greedy.transport.resumeProducing()
        await greedy.lost
        self.assertEqual(greedy.messages[-1]["method"], "$/lagged")


class LaggedTests(SynchronousTestCase):
    """$/lagged on a test transport, with the factory's bound and clock."""

    def test_lagged_then_closed_then_aborted(self) -> None:
        """When the transport stops taking lines and more than the bound waits, then later
        lines are dropped, $/lagged (with the count dropped) is the last line written, the
        connection closes, and it is aborted if the client still has not read after the
        grace period."""
        from jarvis.ipc.server import LAGGED_GRACE

        node = unlocked_node()
        clock = task.Clock()
        base = make_factory(node, clock)
        factory = IpcServerFactory(base.registry, base.ctx, clock=clock, output_limit=1000)
        proto, transport = make_connection(factory)
        proto.dataReceived(b'{"id":1,"method":"events.subscribe"}\n')
        sent(transport)
        transport.producer.pauseProducing()  # the transport's buffer is full
        for i in range(20):
            node.receive("alice", f"{i:02d}" + "z" * 100)
        [lagged] = sent(transport)  # every event waited, then was dropped
        self.assertEqual(lagged["method"], "$/lagged")
        self.assertGreaterEqual(lagged["params"]["dropped"], 2)  # queued ones and the last
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertEqual(factory.lagged, 1)
        node.receive("alice", "after")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnected)
        clock.advance(LAGGED_GRACE)
        self.assertTrue(transport.disconnected)
