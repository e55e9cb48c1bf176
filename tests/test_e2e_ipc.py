"""The local API's edges against real daemons (``twistd -n jarvis``) over their real UNIX sockets.

- a subscriber that stops reading is told ``$/lagged`` and disconnected while the daemon's
  buffered bytes stay bounded, and a reading client keeps receiving everything (issue 12);
- a client that subscribes after the lock learns nothing of a message a contact sends (13);
- the password back-off survives a daemon restart and answers at once with ``retry_after`` (13).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from jarvis.crypto import linkcode
from jarvis.crypto.identity import IdentityKey
from jarvis.ipc import jsonrpc
from jarvis.ipc.wire import MAX_PENDING_OUTPUT
from tests.daemons import short_tempdir
from tests.peers import PASSWORD, Peer, befriend


class RawClient(Protocol):
    """Keeps every byte the daemon sends; can stop reading (a suspended client)."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def messages(self) -> list[Any]:
        return [json.loads(line) for line in self.data.splitlines()]


async def raw_client(testcase: TestCase, peer: Peer) -> RawClient:
    """Connect a raw client to *peer*'s API socket and subscribe it to every event."""
    endpoint = UNIXClientEndpoint(reactor, peer.process.socket)
    client = await connectProtocol(endpoint, RawClient())

    def close() -> defer.Deferred[None]:
        client.transport.loseConnection()
        return client.lost

    testcase.addCleanup(close)
    client.transport.write(b'{"id":"s","method":"events.subscribe"}\n')
    await wait_until(lambda: b'"subscribed":true' in client.data)
    return client


async def wait_until(condition: Any, timeout: float = 60.0) -> None:
    """Poll *condition* on every reactor turn (a few ms) until it holds."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while not condition():
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError("condition not reached")
        await task.deferLater(reactor, 0.005, lambda: None)


async def start(testcase: TestCase, *names: str) -> list[Peer]:
    root = short_tempdir(testcase)
    peers = [Peer(testcase, root, name) for name in names]
    await defer.gatherResults(
        [defer.ensureDeferred(p.start(create=True)) for p in peers], consumeErrors=True
    )
    return peers


class LaggedDaemonTests(TestCase):
    timeout = 180

    async def test_unread_subscriber_is_lagged_daemon_bounded(self) -> None:
        """When a subscriber of a real daemon stops reading while twice the bound of events is
        produced (messages of 60 kB), then daemon.status's output_buffered stays under the
        bound (plus 1 MiB for the reading client), the slow client gets a prefix of the events,
        then $/lagged, then EOF, and the reading client received every event."""
        [alice] = await start(self, "alice")
        card = linkcode.make_card(IdentityKey.generate(), "Bob", ("127.0.0.1:1",), 1_700_000_000)
        await alice.call("contacts.add", link=linkcode.encode_link(card))
        slow = await raw_client(self, alice)
        slow.transport.pauseProducing()  # stops reading, as a suspended UI
        text = "q" * 60_000
        count = 2 * MAX_PENDING_OUTPUT // len(text)
        peak = 0
        for start_at in range(0, count, 16):
            await defer.gatherResults(
                [
                    alice.call("messages.send", contact="Bob", text=f"{i}:{text}")
                    for i in range(start_at, min(count, start_at + 16))
                ]
            )
            status = await alice.call("daemon.status")
            peak = max(peak, status["output_buffered"])
        status = await alice.call("daemon.status")
        self.assertEqual(status["lagged"], 1)
        self.assertLessEqual(peak, MAX_PENDING_OUTPUT + (1 << 20))
        added = alice.recorder.named("message.added")
        self.assertEqual(
            [int(p["message"]["body"].split(":")[0]) for p in added], list(range(count))
        )
        slow.transport.resumeProducing()
        await slow.lost
        *events, last = slow.messages()
        self.assertEqual(last["method"], "$/lagged")
        self.assertGreater(last["params"]["dropped"], 0)
        bodies = [
            int(m["params"]["message"]["body"].split(":")[0])
            for m in events
            if m.get("method") == "message.added"
        ]
        self.assertEqual(bodies, list(range(len(bodies))))
        self.assertLess(len(bodies), count)


class LockedPairTests(TestCase):
    timeout = 120

    async def test_locked_subscriber_learns_nothing(self) -> None:
        """When alice's daemon is locked, a client subscribes and bob sends a message that
        alice's daemon stores and acknowledges, then no byte that client receives holds the
        text, bob's name or bob's uid; after unlock the next message arrives with its text."""
        alice, bob = await start(self, "alice", "bob")
        await befriend(alice, bob)
        await alice.call("identity.lock")
        watcher = await raw_client(self, alice)
        sent = await bob.call("messages.send", contact=alice.uid, text="canary while locked")
        await bob.recorder.wait(lambda: sent["id"] in bob.delivered_ids())
        # An answer on the watcher's own connection comes after any event sent before it.
        watcher.transport.write(b'{"id":"ping","method":"daemon.status"}\n')
        await wait_until(lambda: b'"id":"ping"' in watcher.data)
        self.assertTrue(watcher.messages()[-1]["result"]["locked"])
        for needle in (b"canary", b"bob", bob.uid.encode()):
            self.assertNotIn(needle, watcher.data)
        await alice.call("identity.unlock", password=PASSWORD)
        await bob.call("messages.send", contact=alice.uid, text="after unlock")
        await wait_until(lambda: b"after unlock" in watcher.data)
        self.assertNotIn(b"canary", watcher.data)


class BackoffRestartTests(TestCase):
    timeout = 120

    async def test_restart_keeps_the_count(self) -> None:
        """When two wrong passwords were given and the daemon is restarted, then the wait they
        started still holds, one more wrong password starts a 2 s wait (the count went on from
        2), the right password during it is answered at once -32015 with retry_after, and
        after the wait it unlocks."""
        [alice] = await start(self, "alice")
        await alice.call("identity.lock", wipe=True)
        for guess in ("guess 1", "guess 2"):
            with self.assertRaises(jsonrpc.RemoteError) as cm:
                await alice.call("identity.unlock", password=guess)
            self.assertEqual(cm.exception.code, jsonrpc.WRONG_PASSWORD)
        await alice.stop()
        await alice.start()
        while True:  # a quick restart finds the 1 s wait of the second guess still running
            with self.assertRaises(jsonrpc.RemoteError) as cm:
                await alice.call("identity.unlock", password="guess 3")
            if cm.exception.code != jsonrpc.TOO_MANY_ATTEMPTS:
                break
            await task.deferLater(reactor, cm.exception.data["retry_after"], lambda: None)
        self.assertEqual(cm.exception.code, jsonrpc.WRONG_PASSWORD)
        with self.assertRaises(jsonrpc.RemoteError) as cm:
            await alice.call("identity.unlock", password=PASSWORD)
        self.assertEqual(cm.exception.code, jsonrpc.TOO_MANY_ATTEMPTS)
        retry_after = cm.exception.data["retry_after"]
        self.assertIn(retry_after, (1, 2))
        await task.deferLater(reactor, retry_after, lambda: None)  # the wait the daemon named
        result = await alice.call("identity.unlock", password=PASSWORD)
        self.assertEqual(result["name"], "alice")
