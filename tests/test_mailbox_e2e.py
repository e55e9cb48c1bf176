"""End-to-end tests of ``twistd -n jarvis-mailbox``: a real mailbox process on loopback, the
real client library over pinned TLS, kill -9 and restart, and a scan of what the mailbox kept.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from jarvis.mailbox import wire
from jarvis.mailbox.client import (
    Delivery,
    MailboxClientProtocol,
    MailboxConnectionLost,
    QueueFull,
    connect_mailbox,
)
from jarvis.mailbox.tls import MailboxClientCreator
from jarvis.protocol.mailbox_link import MailboxLink
from tests.daemons import short_tempdir
from tests.mailboxes import MailboxProcess, start_mailbox


class MailboxCase(TestCase):
    timeout = 120

    async def start_mailbox(self, extra: list[str] | None = None) -> MailboxProcess:
        return await start_mailbox(self, short_tempdir(self), extra)

    async def connect(self, mailbox: MailboxProcess) -> MailboxClientProtocol:
        client = await connect_mailbox(reactor, mailbox.link())
        self.addCleanup(client.close)
        return client


def seq_of(delivery: Delivery) -> int:
    return int(delivery.payload.split(b" ")[1])


class DeliveryTests(MailboxCase):
    """A real mailbox keeps and hands out what is deposited."""

    async def test_thousand_deposits_collected_once_in_order(self) -> None:
        """When 1,000 payloads are deposited into one queue, then the collector gets all of
        them exactly once, in order, and the queue is empty afterwards; a second queue shares
        no id or key with the first."""
        mailbox = await self.start_mailbox()
        client = await self.connect(mailbox)
        keys = await client.create_queue()
        cred = keys.sender_credential()
        await defer.gatherResults([client.deposit(cred, b"msg %d" % i) for i in range(1000)])
        got = await client.collect(keys.recipient_id, keys.recipient_key)
        self.assertEqual([seq_of(d) for d in got], list(range(1000)))
        self.assertEqual(len({d.msg_id for d in got}), 1000)
        status = await client.status()
        self.assertEqual((status["messages"], status["queues"]), (0, 1))
        # a second queue of the same user shares no id and no key with the first
        other = await client.create_queue()
        values = [keys.recipient_id, keys.sender_id, other.recipient_id, other.sender_id]
        values += [keys.recipient_key, keys.sender_key, other.recipient_key, other.sender_key]
        self.assertEqual(len(set(values)), 8)

    async def test_push_and_full_queue(self) -> None:
        """When a collector is subscribed, then a deposit from another connection is pushed
        to it at once; when the queue is full (--queue-messages 3), then the sender gets
        QueueFull, whose text it can show its user; after a collection there is room."""
        mailbox = await self.start_mailbox(["--queue-messages", "3"])
        collector, sender = await self.connect(mailbox), await self.connect(mailbox)
        keys = await collector.create_queue()
        pushed: defer.Deferred[Delivery] = defer.Deferred()
        await collector.subscribe(keys.recipient_id, keys.recipient_key, pushed.callback)
        await sender.deposit(keys.sender_credential(), b"first")
        self.assertEqual((await pushed).payload, b"first")
        while (await sender.status())["messages"]:  # until its acknowledgement is in
            await deferLater(0.01)
        await collector.close()
        for i in range(3):
            await sender.deposit(keys.sender_credential(), b"%d" % i)
        with self.assertRaises(QueueFull) as caught:
            await sender.deposit(keys.sender_credential(), b"one too many")
        self.assertIn("full", str(caught.exception))
        again = await self.connect(mailbox)
        got = await again.collect(keys.recipient_id, keys.recipient_key)
        self.assertEqual([d.payload for d in got], [b"0", b"1", b"2"])
        await sender.deposit(keys.sender_credential(), b"room again")

    async def test_wrong_pin_refused(self) -> None:
        """When a client holds a link whose pin is not the mailbox's key, then the TLS
        handshake fails and no command is sent: a mailbox cannot be impersonated."""
        mailbox = await self.start_mailbox()
        link = mailbox.link()
        forged = MailboxLink("a" * 52, link.host, link.port)
        with self.assertRaises(MailboxConnectionLost):
            await connect_mailbox(reactor, forged)


class CrashTests(MailboxCase):
    """kill -9 of the mailbox loses nothing acknowledged and, after dedupe, delivers nothing
    twice."""

    async def test_kill_during_deposits_and_collection(self) -> None:
        """When the mailbox is killed (SIGKILL) in the middle of 1,000 deposits and again in
        the middle of their collection, then after restarts every acknowledged deposit is
        collected, at most the one message in flight at the kill comes twice (same message
        id, deduped by the collector), and the collected sequence is in order."""
        await self.check_kill([])

    async def test_kill_with_sync_normal(self) -> None:
        """When the mailbox runs with --sync normal and is killed the same way, then the same
        holds: a commit without fsync still survives the process's death."""
        await self.check_kill(["--sync", "normal"])

    async def check_kill(self, extra: list[str]) -> None:
        mailbox = await self.start_mailbox(extra)
        client = await self.connect(mailbox)
        keys = await client.create_queue()
        cred = keys.sender_credential()
        acked: set[int] = set()
        killed: list[defer.Deferred[Any]] = []

        def confirmed(_msg_id: bytes, seq: int) -> None:
            acked.add(seq)
            if len(acked) == 400 and not killed:
                killed.append(mailbox.kill())

        deposits = []
        for seq in range(1000):
            d = client.deposit(cred, b"msg %d" % seq)
            d.addCallback(confirmed, seq)
            d.addErrback(lambda f: f.trap(MailboxConnectionLost))
            deposits.append(d)
        await defer.gatherResults(deposits)
        await killed[0]
        self.assertGreaterEqual(len(acked), 400)
        self.assertLess(len(acked), 1000, "the kill came after every deposit")

        # the sender retries whatever was not acknowledged, on a new connection
        await mailbox.start()
        client = await self.connect(mailbox)
        missing = [seq for seq in range(1000) if seq not in acked]
        for seq in missing:
            await client.deposit(cred, b"msg %d" % seq)

        # collect, and kill the mailbox after 300 deliveries
        got: list[Delivery] = []
        gone: list[defer.Deferred[Any]] = []

        def handler(delivery: Delivery) -> None:
            got.append(delivery)
            if len(got) == 300 and not gone:
                gone.append(mailbox.kill())

        await client.subscribe(keys.recipient_id, keys.recipient_key, handler)
        while not gone:
            await deferLater(0.05)
        await gone[0]
        await mailbox.start()
        client = await self.connect(mailbox)
        got += await client.collect(keys.recipient_id, keys.recipient_key)

        seqs = [seq_of(d) for d in got]
        self.assertTrue(acked <= set(seqs), "an acknowledged deposit was lost")
        self.assertEqual(set(seqs), set(range(1000)))
        repeated_ids = len(got) - len({d.msg_id for d in got})
        self.assertLessEqual(repeated_ids, 1)
        # deduped by the payload's own id (seq), the order holds: deposits commit in the
        # order they are sent, so the acknowledged ones are exactly 0..len(acked)-1, first
        firsts = list(dict.fromkeys(seqs))
        self.assertEqual(firsts[: len(acked)], list(range(len(acked))))
        self.assertEqual(sorted(firsts), list(range(1000)))


def deferLater(delay: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, delay, lambda: None)  # type: ignore[arg-type]


class ScanTests(MailboxCase):
    """What the operator's disk and logs hold after a run."""

    async def test_no_canary_in_logs_and_only_padded_blocks_in_db(self) -> None:
        """When payloads with canary text are deposited (unsealed, for the test) and some
        are collected, then the mailbox's log has no canary; the collected canary is
        nowhere on disk (secure delete); the uncollected one exists only inside 16 KiB
        blocks of the messages table; no other column or file holds it."""
        mailbox = await self.start_mailbox()
        client = await self.connect(mailbox)
        collected, kept = b"CANARY-collected-5e1f0a", b"CANARY-kept-9b77c2"
        q1 = await client.create_queue()
        q2 = await client.create_queue()
        for i in range(20):
            await client.deposit(q1.sender_credential(), collected + b" %d" % i)
            await client.deposit(q2.sender_credential(), kept + b" %d" % i)
        got = await client.collect(q1.recipient_id, q1.recipient_key)
        self.assertEqual(len(got), 20)
        await client.close()
        await mailbox.stop()

        self.assertNotIn(b"CANARY", mailbox.output)
        for name in os.listdir(mailbox.data_dir):
            with open(os.path.join(mailbox.data_dir, name), "rb") as f:
                content = f.read()
            self.assertNotIn(collected, content, name)
            if name != "mailbox.sqlite":
                self.assertNotIn(kept, content, name)

        db = sqlite3.connect(os.path.join(mailbox.data_dir, "mailbox.sqlite"))
        self.addCleanup(db.close)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            for row in db.execute(f"SELECT * FROM {table}"):
                for column, value in zip(columns, row, strict=True):
                    if table == "messages" and column == "block":
                        self.assertEqual(len(value), wire.BLOCK_SIZE)
                        payload = wire.unpad_block(value)
                        self.assertEqual(
                            value[4 + len(payload) :], bytes(len(value) - 4 - len(payload))
                        )
                    elif isinstance(value, bytes | str):
                        data = value if isinstance(value, bytes) else value.encode()
                        self.assertNotIn(b"CANARY", data, f"{table}.{column}")
        count = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        self.assertEqual(count, 20)
        columns = [r[1] for r in db.execute("PRAGMA table_info(messages)")]
        self.assertEqual(columns, ["seq", "queue", "msg_id", "ts", "block"])
        columns = [r[1] for r in db.execute("PRAGMA table_info(queues)")]
        self.assertEqual(
            columns,
            [
                "id",
                "recipient_id",
                "sender_id",
                "recipient_key",
                "sender_key",
                "created",
                "msg_count",
            ],
        )
        self.assertEqual(
            sorted(t for t in tables if t != "sqlite_sequence"), ["messages", "queues"]
        )


class _Raw(protocol.Protocol):
    """A TLS client that sends raw bytes and records what comes back."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.greeted: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.greeted.called and len(self.data) >= 4 + 2 + 32:
            self.greeted.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class HostileTests(MailboxCase):
    """Garbage and oversized frames over real TLS."""

    async def raw(self, mailbox: MailboxProcess) -> _Raw:
        link = mailbox.link()
        endpoint = wrapClientTLS(
            MailboxClientCreator(link.pin),  # type: ignore[arg-type]
            TCP4ClientEndpoint(reactor, link.host, link.port),
        )
        p = _Raw()
        await connectProtocol(endpoint, p)
        await p.greeted
        return p

    def records(self, data: bytes) -> list[wire.Record]:
        return [wire.parse(b) for b in wire.FrameDecoder().feed(data)]

    async def test_garbage_and_oversized_frames(self) -> None:
        """When one client sends garbage and another an oversized frame, then each gets its
        clear error and is disconnected, while a third client deposits and collects."""
        mailbox = await self.start_mailbox()
        good = await self.connect(mailbox)
        keys = await good.create_queue()

        garbage = await self.raw(mailbox)
        garbage.transport.write(b"\x00\x00\x00\x09\x01\x7fgarbage")
        await garbage.lost
        self.assertEqual(self.records(garbage.data)[1:], [wire.Error(0, wire.ERR_SYNTAX)])

        huge = await self.raw(mailbox)
        huge.transport.write((1 << 30).to_bytes(4, "big") + b"\x01" * 65536)
        await huge.lost
        self.assertEqual(self.records(huge.data)[1:], [wire.Error(0, wire.ERR_TOO_LONG)])

        await good.deposit(keys.sender_credential(), b"still here")
        got = await good.collect(keys.recipient_id, keys.recipient_key)
        self.assertEqual([d.payload for d in got], [b"still here"])
