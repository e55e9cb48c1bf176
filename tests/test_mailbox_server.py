"""Tests for jarvis.mailbox.server: the server protocol over in-memory transports, on a
``task.Clock``, with the SQLite store run inline on ``:memory:``."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from jarvis.mailbox import wire
from jarvis.mailbox.server import MAX_PENDING, MailboxLimits, MailboxServerFactory
from jarvis.mailbox.store import InlineSQLiteMailboxStore

LIMITS = MailboxLimits()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Conn:
    """One client connection to the server under test, driven record by record."""

    def __init__(self, factory: MailboxServerFactory) -> None:
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.decoder = wire.FrameDecoder()
        hello = self.replies()
        assert isinstance(hello[0], wire.Hello)
        self.nonce = hello[0].nonce
        self.corr = 0

    def next_corr(self) -> int:
        self.corr += 1
        return self.corr

    def send(self, record: wire.Record) -> list[wire.Record]:
        self.proto.dataReceived(wire.frame(record))
        return self.replies()

    def replies(self) -> list[wire.Record]:
        data = self.transport.value()
        self.transport.clear()
        return [wire.parse(b) for b in self.decoder.feed(data)]

    def signed(self, cmd: Any, key: Ed25519PrivateKey) -> Any:
        return replace(cmd, signature=key.sign(wire.signed_data(self.nonce, cmd)))

    def new_queue(self) -> tuple[bytes, bytes, Ed25519PrivateKey, Ed25519PrivateKey]:
        rkey, skey = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        (ids,) = self.send(wire.NewQueue(self.next_corr(), raw_public(rkey), raw_public(skey)))
        assert isinstance(ids, wire.QueueIds), ids
        return ids.recipient_id, ids.sender_id, rkey, skey

    def deposit(self, sid: bytes, skey: Ed25519PrivateKey, payload: bytes = b"x") -> wire.Record:
        cmd = wire.Deposit(self.next_corr(), sid, bytes(64), wire.pad_block(payload))
        (reply,) = self.send(self.signed(cmd, skey))
        return reply

    def subscribe(self, rid: bytes, rkey: Ed25519PrivateKey) -> list[wire.Record]:
        return self.send(self.signed(wire.Subscribe(self.next_corr(), rid, bytes(64)), rkey))

    def ack(self, rid: bytes, rkey: Ed25519PrivateKey, msg_id: bytes) -> list[wire.Record]:
        return self.send(self.signed(wire.Ack(self.next_corr(), rid, bytes(64), msg_id), rkey))


def make_server(**limits: Any) -> tuple[MailboxServerFactory, Clock, InlineSQLiteMailboxStore]:
    """Return a server factory on a Clock with an inline in-memory store."""
    clock = Clock()
    clock.advance(1_800_000_000)
    store = InlineSQLiteMailboxStore()
    factory = MailboxServerFactory(store, clock, clock.seconds, replace(LIMITS, **limits))
    return factory, clock, store


def codes(records: list[wire.Record]) -> list[int]:
    return [r.code for r in records if isinstance(r, wire.Error)]


class QueueTests(unittest.TestCase):
    """Creating queues, depositing and collecting."""

    def test_deposit_then_collect_in_order(self) -> None:
        """When three blocks are deposited, then a subscriber gets them in order, one per
        acknowledgement, then Empty, and the queue is left empty."""
        factory, _clock, store = make_server()
        c = Conn(factory)
        rid, sid, rkey, skey = c.new_queue()
        ids = []
        for i in range(3):
            ok = c.deposit(sid, skey, b"m%d" % i)
            assert isinstance(ok, wire.Ok)
            ids.append(ok.msg_id)
        ok, msg = c.subscribe(rid, rkey)
        self.assertIsInstance(ok, wire.Ok)
        got = []
        while isinstance(msg, wire.Message):
            got.append((msg.msg_id, wire.unpad_block(msg.block)))
            answer = c.ack(rid, rkey, msg.msg_id)
            self.assertIsInstance(answer[0], wire.Ok)
            msg = answer[1]
        self.assertIsInstance(msg, wire.Empty)
        self.assertEqual(got, list(zip(ids, [b"m0", b"m1", b"m2"], strict=True)))
        self.assertEqual(self.successResultOf(store.figures())["messages"], 0)

    def test_subscriber_is_pushed_new_deposits(self) -> None:
        """When a collector is subscribed and another connection deposits, then the message
        is pushed to the collector at once."""
        factory, _clock, _store = make_server()
        collector, sender = Conn(factory), Conn(factory)
        rid, sid, rkey, skey = collector.new_queue()
        self.assertIsInstance(collector.subscribe(rid, rkey)[1], wire.Empty)
        self.assertIsInstance(sender.deposit(sid, skey, b"hi"), wire.Ok)
        (pushed,) = collector.replies()
        assert isinstance(pushed, wire.Message)
        self.assertEqual(wire.unpad_block(pushed.block), b"hi")

    def test_queue_ids_are_independent(self) -> None:
        """When a queue is created, then its sender id and recipient id are different random
        values, and two queues share nothing."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        a, b = c.new_queue(), c.new_queue()
        self.assertEqual(len({a[0], a[1], b[0], b[1]}), 4)

    def test_delete_queue(self) -> None:
        """When the recipient deletes its queue, then deposits into it are refused like a
        queue that never existed."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        rid, sid, rkey, skey = c.new_queue()
        cmd = c.signed(wire.DeleteQueue(c.next_corr(), rid, bytes(64)), rkey)
        self.assertIsInstance(c.send(cmd)[0], wire.Ok)
        self.assertEqual(codes([c.deposit(sid, skey)]), [wire.ERR_AUTH])

    def test_ack_of_another_message(self) -> None:
        """When the collector acknowledges an id that was not delivered, then ERR_NO_MSG and
        the message stays."""
        factory, _clock, store = make_server()
        c = Conn(factory)
        rid, sid, rkey, skey = c.new_queue()
        c.deposit(sid, skey)
        c.subscribe(rid, rkey)
        self.assertEqual(codes(c.ack(rid, rkey, b"\x00" * 16)), [wire.ERR_NO_MSG])
        self.assertEqual(self.successResultOf(store.figures())["messages"], 1)

    def test_wrong_block_size(self) -> None:
        """When a deposit's block is not exactly 16 KiB, then ERR_BLOCK_SIZE."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        _rid, sid, _rkey, skey = c.new_queue()
        cmd = c.signed(wire.Deposit(c.next_corr(), sid, bytes(64), b"short"), skey)
        self.assertEqual(codes(c.send(cmd)), [wire.ERR_BLOCK_SIZE])

    def test_status_has_figures_and_no_ids(self) -> None:
        """When a client asks for the status, then it gets aggregate figures only."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        rid, sid, _rkey, skey = c.new_queue()
        c.deposit(sid, skey)
        (reply,) = c.send(wire.StatusRequest(c.next_corr()))
        assert isinstance(reply, wire.StatusReply)
        figures = json.loads(reply.figures)
        self.assertEqual(figures["queues"], 1)
        self.assertEqual(figures["messages"], 1)
        self.assertEqual(figures["bytes"], wire.BLOCK_SIZE)
        self.assertEqual(figures["clients"], 1)
        self.assertNotIn(rid.hex(), reply.figures.decode())
        self.assertNotIn(sid.hex(), reply.figures.decode())


class AuthTests(unittest.TestCase):
    """Commands are authorised by the queue's keys only."""

    def test_recipient_key_cannot_deposit(self) -> None:
        """When a deposit is signed with the recipient key, then ERR_AUTH and nothing stored."""
        factory, _clock, store = make_server()
        c = Conn(factory)
        _rid, sid, rkey, _skey = c.new_queue()
        self.assertEqual(codes([c.deposit(sid, rkey)]), [wire.ERR_AUTH])
        self.assertEqual(self.successResultOf(store.figures())["messages"], 0)

    def test_sender_key_cannot_collect(self) -> None:
        """When a subscription is signed with the sender key, then ERR_AUTH, nothing
        delivered."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        rid, sid, _rkey, skey = c.new_queue()
        c.deposit(sid, skey)
        self.assertEqual(codes(c.subscribe(rid, skey)), [wire.ERR_AUTH])
        self.assertEqual(c.replies(), [])

    def test_sender_id_cannot_collect(self) -> None:
        """When the sender id is used to subscribe (with either key), then ERR_AUTH: the two
        ids address different roles."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        _rid, sid, rkey, skey = c.new_queue()
        self.assertEqual(codes(c.subscribe(sid, rkey) + c.subscribe(sid, skey)), [2, 2])

    def test_guessed_ids_look_like_bad_keys(self) -> None:
        """When a client guesses a queue id, then the answer is the same record as for a real
        queue with a wrong key: guessing teaches nothing."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        rid, sid, rkey, skey = c.new_queue()
        wrong = Ed25519PrivateKey.generate()
        real = c.deposit(sid, wrong)
        guessed = c.deposit(b"\x42" * 24, skey)
        self.assertEqual((type(real), codes([real])), (type(guessed), codes([guessed])))
        real_sub = c.subscribe(rid, wrong)
        guessed_sub = c.subscribe(b"\x43" * 24, rkey)
        self.assertEqual(codes(real_sub), codes(guessed_sub))
        self.assertEqual(codes(real_sub), [wire.ERR_AUTH])

    def test_replayed_signature_refused_on_same_connection(self) -> None:
        """When the same signed deposit frame is sent twice on a connection, then the second
        is refused with ERR_AUTH and the queue holds one message."""
        factory, _clock, store = make_server()
        c = Conn(factory)
        _rid, sid, _rkey, skey = c.new_queue()
        cmd = c.signed(wire.Deposit(c.next_corr(), sid, bytes(64), wire.pad_block(b"x")), skey)
        self.assertIsInstance(c.send(cmd)[0], wire.Ok)
        self.assertEqual(codes(c.send(cmd)), [wire.ERR_AUTH])
        self.assertEqual(self.successResultOf(store.figures())["messages"], 1)

    def test_replayed_signature_refused_on_other_connection(self) -> None:
        """When a captured signed deposit is replayed on a new connection (new challenge),
        then ERR_AUTH and the queue holds one message."""
        factory, _clock, store = make_server()
        c = Conn(factory)
        _rid, sid, _rkey, skey = c.new_queue()
        cmd = c.signed(wire.Deposit(c.next_corr(), sid, bytes(64), wire.pad_block(b"x")), skey)
        self.assertIsInstance(c.send(cmd)[0], wire.Ok)
        attacker = Conn(factory)
        self.assertEqual(codes(attacker.send(cmd)), [wire.ERR_AUTH])
        self.assertEqual(self.successResultOf(store.figures())["messages"], 1)

    def test_proved_queue_needs_no_further_signature_on_that_connection_only(self) -> None:
        """When a connection has made one verified deposit into a queue, then later deposits
        there on that connection may carry a zero signature; the same zero-signed deposit on
        another connection is refused with ERR_AUTH."""
        factory, _clock, store = make_server()
        c, other = Conn(factory), Conn(factory)
        _rid, sid, _rkey, skey = c.new_queue()
        unsigned = wire.Deposit(0, sid, bytes(64), wire.pad_block(b"z"))
        self.assertEqual(codes(c.send(replace(unsigned, corr=c.next_corr()))), [wire.ERR_AUTH])
        self.assertIsInstance(c.deposit(sid, skey), wire.Ok)
        self.assertIsInstance(c.send(replace(unsigned, corr=c.next_corr()))[0], wire.Ok)
        refused = other.send(replace(unsigned, corr=other.next_corr()))
        self.assertEqual(codes(refused), [wire.ERR_AUTH])
        self.assertEqual(self.successResultOf(store.figures())["messages"], 2)


class LimitTests(unittest.TestCase):
    """Quotas, expiry and rate limits."""

    def test_full_queue_refuses_with_quota_error(self) -> None:
        """When a queue holds its quota of messages, then the next deposit gets ERR_QUOTA
        (which the client library raises as QueueFull); after one is collected, deposits
        are accepted again."""
        factory, _clock, _store = make_server(queue_messages=3)
        c = Conn(factory)
        rid, sid, rkey, skey = c.new_queue()
        results = [c.deposit(sid, skey) for _ in range(4)]
        self.assertEqual(codes(results), [wire.ERR_QUOTA])
        _ok, msg = c.subscribe(rid, rkey)
        assert isinstance(msg, wire.Message)
        c.ack(rid, rkey, msg.msg_id)
        self.assertIsInstance(c.deposit(sid, skey), wire.Ok)

    def test_bytes_quota(self) -> None:
        """When a queue's bytes quota allows two blocks, then the third deposit is refused."""
        factory, _clock, _store = make_server(queue_bytes=2 * wire.BLOCK_SIZE)
        c = Conn(factory)
        _rid, sid, _rkey, skey = c.new_queue()
        self.assertEqual(codes([c.deposit(sid, skey) for _ in range(3)]), [wire.ERR_QUOTA])

    def test_expiry(self) -> None:
        """When a message is older than the expiry, then the sweep deletes it and the
        collector finds the queue empty; a younger one stays."""
        factory, clock, _store = make_server(expiry=100.0)
        c = Conn(factory)
        rid, sid, rkey, skey = c.new_queue()
        c.deposit(sid, skey, b"old")
        clock.advance(60)
        c.deposit(sid, skey, b"young")
        clock.advance(50)
        self.assertEqual(self.successResultOf(factory.expire()), 1)
        _ok, msg = c.subscribe(rid, rkey)
        assert isinstance(msg, wire.Message)
        self.assertEqual(wire.unpad_block(msg.block), b"young")

    def test_connection_rate_limit(self) -> None:
        """When a connection sends more commands than its burst, then the excess gets
        ERR_RATE; a second later it may send again; other connections are unaffected."""
        factory, clock, _store = make_server(connection_rate=5.0, connection_burst=5.0)
        c, other = Conn(factory), Conn(factory)
        answers = [c.send(wire.StatusRequest(c.next_corr()))[0] for _ in range(7)]
        self.assertEqual(codes(answers), [wire.ERR_RATE, wire.ERR_RATE])
        self.assertIsInstance(
            other.send(wire.StatusRequest(other.next_corr()))[0], wire.StatusReply
        )
        clock.advance(1)
        self.assertIsInstance(c.send(wire.StatusRequest(c.next_corr()))[0], wire.StatusReply)

    def test_queue_rate_limit(self) -> None:
        """When one queue gets more deposits than its burst, then the excess gets ERR_RATE,
        even from several connections."""
        factory, clock, _store = make_server(queue_rate=1.0, queue_burst=2.0)
        a, b = Conn(factory), Conn(factory)
        _rid, sid, _rkey, skey = a.new_queue()
        results = [a.deposit(sid, skey), b.deposit(sid, skey), b.deposit(sid, skey)]
        self.assertEqual(codes(results), [wire.ERR_RATE])
        clock.advance(1)
        self.assertIsInstance(a.deposit(sid, skey), wire.Ok)

    def test_idle_connection_closed(self) -> None:
        """When a connection without subscriptions stays silent past the idle timeout, then
        it is closed; a subscribed one is kept."""
        factory, clock, _store = make_server(idle_timeout=30.0)
        idle, collector = Conn(factory), Conn(factory)
        rid, _sid, rkey, _skey = collector.new_queue()
        collector.subscribe(rid, rkey)
        clock.advance(31)
        self.assertTrue(idle.transport.disconnecting)
        self.assertFalse(collector.transport.disconnecting)


class HostileTests(unittest.TestCase):
    """Garbage, oversized frames and slow clients."""

    def test_garbage_closes_with_syntax_error(self) -> None:
        """When a client sends a garbage frame, then it gets Error(ERR_SYNTAX), is
        disconnected, and another client keeps working."""
        factory, _clock, _store = make_server()
        bad, good = Conn(factory), Conn(factory)
        bad.proto.dataReceived(b"\x00\x00\x00\x09\x01\x7fgarbage")
        self.assertEqual(bad.replies(), [wire.Error(0, wire.ERR_SYNTAX)])
        self.assertTrue(bad.transport.disconnecting)
        bad.proto.connectionLost(None)
        _rid, sid, _rkey, skey = good.new_queue()
        self.assertIsInstance(good.deposit(sid, skey), wire.Ok)

    def test_oversized_frame_closes(self) -> None:
        """When a client announces a frame beyond MAX_FRAME, then it gets ERR_TOO_LONG and
        is disconnected without the server buffering the body."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        c.proto.dataReceived((10 * wire.MAX_FRAME).to_bytes(4, "big") + b"\x01" * 1000)
        self.assertEqual(c.replies(), [wire.Error(0, wire.ERR_TOO_LONG)])
        self.assertTrue(c.transport.disconnecting)
        c.proto.dataReceived(b"\x01" * 100000)  # ignored after the close
        self.assertEqual(c.replies(), [])

    def test_other_version_closes(self) -> None:
        """When a client speaks another protocol version, then ERR_VERSION and close."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        c.proto.dataReceived(b"\x00\x00\x00\x06\x02\x15\x00\x00\x00\x01")
        self.assertEqual(c.replies(), [wire.Error(0, wire.ERR_VERSION)])
        self.assertTrue(c.transport.disconnecting)

    def test_server_record_from_client_refused(self) -> None:
        """When a client sends a server-to-client record, then ERR_SYNTAX and close."""
        factory, _clock, _store = make_server()
        c = Conn(factory)
        c.send(wire.Hello(b"n" * 32))
        self.assertTrue(c.transport.disconnecting)

    def test_slow_reader_gets_no_more_pushes(self) -> None:
        """When a collector's transport buffer is full (the transport pauses its producer),
        then the server stops reading from it and pushes no message until it resumes."""
        factory, _clock, _store = make_server()
        collector, sender = Conn(factory), Conn(factory)
        rid, sid, rkey, skey = collector.new_queue()
        collector.subscribe(rid, rkey)
        collector.proto.pauseProducing()
        self.assertEqual(collector.transport.producerState, "paused")
        sender.deposit(sid, skey, b"a")
        self.assertEqual(collector.replies(), [])
        collector.proto.resumeProducing()
        self.assertEqual(collector.transport.producerState, "producing")
        (msg,) = collector.replies()
        self.assertIsInstance(msg, wire.Message)

    def test_pending_commands_bounded(self) -> None:
        """When a client pipelines commands faster than the store answers, then after
        MAX_PENDING waiting commands the server stops reading from it."""
        factory, _clock, store = make_server()
        held: list[Any] = []
        original = store.run

        def hold(fn: Any, *args: Any) -> Any:
            d = original(fn, *args)
            from twisted.internet import defer

            later: defer.Deferred[Any] = defer.Deferred()
            d.addBoth(lambda r: held.append((later, r)))
            return later

        store.run = hold  # type: ignore[method-assign]
        c = Conn(factory)
        for _ in range(MAX_PENDING - 1):
            c.send(wire.StatusRequest(c.next_corr()))
        self.assertEqual(c.transport.producerState, "producing")
        c.send(wire.StatusRequest(c.next_corr()))
        self.assertEqual(c.transport.producerState, "paused")
        for later, result in held:
            later.callback(result)
        self.assertEqual(c.transport.producerState, "producing")
        self.assertEqual(len(c.replies()), MAX_PENDING)


class MessageIdTests(unittest.TestCase):
    """Message ids come from a pool of random bytes drawn at once."""

    def test_ids_cut_from_few_random_draws_never_repeat(self) -> None:
        """When 600 deposits are made, then the random source is asked for message ids only
        ceil(600 / MSG_ID_POOL) times, and every id is distinct and MSG_ID_BYTES long."""
        from jarvis.mailbox.server import MSG_ID_POOL

        draws: list[int] = []

        def counting(n: int) -> bytes:
            draws.append(n)
            return os.urandom(n)

        clock = Clock()
        factory = MailboxServerFactory(
            InlineSQLiteMailboxStore(), clock, clock.seconds, LIMITS, random_bytes=counting
        )
        c = Conn(factory)
        _rid, sid, _rkey, skey = c.new_queue()
        draws.clear()
        got = []
        for i in range(600):
            ok = c.deposit(sid, skey, b"%d" % i)
            assert isinstance(ok, wire.Ok), ok
            got.append(ok.msg_id)
        self.assertEqual(len(set(got)), 600)
        self.assertEqual({len(m) for m in got}, {wire.MSG_ID_BYTES})
        self.assertEqual(draws, [wire.MSG_ID_BYTES * MSG_ID_POOL] * -(-600 // MSG_ID_POOL))
