"""The mailbox server: one thin Twisted protocol per client and the state they share.

A :class:`MailboxServerFactory` holds the store, the limits, the clock and the table of
subscribed collectors; a :class:`MailboxServerProtocol` feeds bytes to a
:class:`~jarvis.mailbox.wire.FrameDecoder`, checks each command (replay, rate, signature) and
asks the store.  Clients are anonymous: a command is authorised only by a signature of the
queue's key for that role (sender key to deposit, recipient key to subscribe, acknowledge or
delete) over the connection's challenge and the command.  A missing queue and a bad signature
get the same error (``ERR_AUTH``), so guessing ids teaches nothing.

Bounded memory per connection:

- the decoder holds at most one frame (:data:`~jarvis.mailbox.wire.MAX_FRAME`);
- at most :data:`MAX_PENDING` commands wait for the store; beyond that the connection stops
  reading (``pauseProducing`` on the transport) until answers are out;
- the protocol is the transport's push producer: when the client does not read and the
  transport's buffer fills, reading from that client stops and no further message is pushed
  to it, until the buffer drains;
- delivery is one message at a time per subscribed queue (the next after the acknowledgement).

Other clients are unaffected by a slow or hostile one: nothing here waits for a client.

This module never logs queue ids, keys or blocks.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, INegotiated, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jarvis.mailbox import wire
from jarvis.mailbox.store import DepositOutcome, MailboxStore, Quota, StoredMessage

#: Commands of one connection waiting for the store before it stops reading.
MAX_PENDING = 64
#: Queues one connection may be subscribed to.
MAX_SUBSCRIPTIONS = 4096
#: Sender ids one connection remembers as proved (see :meth:`MailboxServerProtocol._deposit`).
MAX_PROVEN = 4096
#: Per-queue deposit buckets remembered (least recently used forgotten first).
MAX_QUEUE_BUCKETS = 100_000
#: Message ids drawn from the random source at once (see :meth:`MailboxServerFactory.new_msg_id`).
MSG_ID_POOL = 256


@dataclass(frozen=True)
class MailboxLimits:
    """Operator limits (the defaults are what ``twistd jarvis-mailbox`` uses).

    :ivar queue_messages: messages one queue may hold.
    :ivar queue_bytes: bytes of blocks one queue may hold.
    :ivar expiry: seconds a message is kept before it is deleted uncollected (21 days).
    :ivar connection_rate: commands per second one connection may send (sustained).
    :ivar connection_burst: commands one connection may send at once.
    :ivar queue_rate: deposits per second into one queue (sustained).
    :ivar queue_burst: deposits into one queue at once.
    :ivar idle_timeout: seconds a connection without subscriptions may stay silent.
    """

    queue_messages: int = 4096
    queue_bytes: int = 64 * 1024 * 1024
    expiry: float = 21 * 24 * 3600.0
    connection_rate: float = 2000.0
    connection_burst: float = 4000.0
    queue_rate: float = 200.0
    queue_burst: float = 2000.0
    idle_timeout: float = 300.0

    @property
    def quota(self) -> Quota:
        return Quota(self.queue_messages, self.queue_bytes)


class TokenBucket:
    """A token bucket on an injected clock: *rate* tokens per second, at most *burst*."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; return whether there was."""
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def signature_valid(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Return whether *signature* is *public_key*'s Ed25519 signature over *data*."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass
class _Subscription:
    """Delivery state of one subscribed queue on one connection."""

    key: bytes
    in_flight: bytes | None = None
    fetching: bool = False
    dirty: bool = False


class MailboxServerFactory(Factory):
    """Shared state of the mailbox server (see the module docstring).

    :param store: the storage.
    :param clock: the reactor's time (``task.Clock`` in tests).
    :param now: wall-clock seconds for deposit timestamps and expiry.
    :param limits: operator limits.
    :param random_bytes: source of ids and challenges (``os.urandom``).
    :param lag: returns the reactor's recent worst lag in seconds, for the status.
    :param extra_figures: more figures for the status (the service adds its GC pauses).
    """

    log = Logger()

    def __init__(
        self,
        store: MailboxStore,
        clock: Any,
        now: Callable[[], float],
        limits: MailboxLimits | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        lag: Callable[[], float] = lambda: 0.0,
        extra_figures: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.store = store
        self.clock = clock
        self.now = now
        self.limits = limits or MailboxLimits()
        self.random_bytes = random_bytes
        self.lag = lag
        self.extra_figures = extra_figures
        self.connections: set[MailboxServerProtocol] = set()
        self.subscribers: dict[bytes, MailboxServerProtocol] = {}
        self._queue_buckets: collections.OrderedDict[bytes, tuple[float, float]] = (
            collections.OrderedDict()
        )
        self.counters: collections.Counter[str] = collections.Counter()
        self._msg_ids = b""
        self._msg_ids_used = 0

    def new_msg_id(self) -> bytes:
        """Return a fresh random message id.

        Ids are cut from :data:`MSG_ID_POOL` ids' worth of random bytes drawn at once: one
        ``getrandom`` call per deposit was a system call that also gave the interpreter lock
        to the database thread and waited to get it back (~20 µs of a deposit under load,
        profiled).  Each byte of the pool is used once.
        """
        size = wire.MSG_ID_BYTES
        if self._msg_ids_used >= len(self._msg_ids):
            self._msg_ids = self.random_bytes(size * MSG_ID_POOL)
            self._msg_ids_used = 0
        start = self._msg_ids_used
        self._msg_ids_used = start + size
        return self._msg_ids[start : start + size]

    def buildProtocol(self, addr: Any) -> Any:
        p = MailboxServerProtocol()
        p.factory = self
        return p

    def queue_bucket_take(self, sender_id: bytes) -> bool:
        """Take a deposit token of the queue *sender_id*.

        Each bucket is a ``(tokens, last)`` tuple of floats, not an object: the garbage
        collector does not track such tuples, so 100,000 buckets add nothing to its full
        passes (reactor stalls).
        """
        buckets = self._queue_buckets
        now = self.clock.seconds()
        limits = self.limits
        state = buckets.pop(sender_id, None)
        if state is None:
            tokens = limits.queue_burst
            if len(buckets) >= MAX_QUEUE_BUCKETS:
                buckets.popitem(last=False)
        else:
            tokens = min(limits.queue_burst, state[0] + (now - state[1]) * limits.queue_rate)
        taken = tokens >= 1.0
        buckets[sender_id] = (tokens - 1.0 if taken else tokens, now)
        return taken

    def deposited(self, recipient_id: bytes) -> None:
        """A deposit into *recipient_id*'s queue committed: wake its collector, if connected."""
        subscriber = self.subscribers.get(recipient_id)
        if subscriber is not None:
            subscriber.queue_changed(recipient_id)

    def status(self) -> defer.Deferred[dict[str, Any]]:
        """Fire with the health figures: lag, queues, messages, bytes, clients, pending."""
        d = self.store.figures()

        def add(figures: dict[str, int]) -> dict[str, Any]:
            return {
                **figures,
                "lag_ms": round(self.lag() * 1000.0, 3),
                "clients": len(self.connections),
                "subscribed": len(self.subscribers),
                "pending": self.store.pending,
                "deposits": self.counters["deposits"],
                "deliveries": self.counters["deliveries"],
                "refused": self.counters["refused"],
                **self.extra_figures(),
            }

        return d.addCallback(add)

    def expire(self) -> defer.Deferred[int]:
        """Delete messages older than the expiry; fire with how many."""
        cutoff = int(self.now() - self.limits.expiry)
        d = self.store.expire(cutoff)

        def report(n: int) -> int:
            if n:
                self.log.info("expired {count} uncollected messages", count=n)
            return n

        return d.addCallback(report)


@implementer(IPushProducer, IHandshakeListener)
class MailboxServerProtocol(Protocol):
    """One anonymous client connection (see the module docstring)."""

    factory: MailboxServerFactory
    transport: Any
    log = Logger()

    def __init__(self) -> None:
        self._decoder = wire.FrameDecoder()
        self._nonce = b""
        self._last_corr = -1
        self._open = False
        self._pending = 0
        self._reading_paused: set[str] = set()
        self._output_paused = False
        self._bucket: TokenBucket | None = None
        self._subscriptions: dict[bytes, _Subscription] = {}
        self._idle_call: Any = None
        self._registered = False
        self._last_active = 0.0
        #: sender ids whose key this connection has proved with a verified signature
        self._proven: set[bytes] = set()

    # -- connection life ------------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self._open = True
        factory.connections.add(self)
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)  # one small answer at a time: Nagle would add 40 ms per message
        self._bucket = TokenBucket(
            factory.limits.connection_rate, factory.limits.connection_burst, factory.clock.seconds()
        )
        if not INegotiated.providedBy(self.transport):
            self._register()  # not TLS (unit tests): no handshake to wait for
        self._nonce = factory.random_bytes(wire.NONCE_BYTES)
        self._send(wire.Hello(self._nonce))
        self._last_active = factory.clock.seconds()
        self._reset_idle()

    def handshakeCompleted(self) -> None:
        """TLS is up: become the transport's producer.  (Before, the TLS layer pauses its
        producer while it buffers our greeting, and pausing reads then would stall the
        handshake itself.)"""
        if self._open:
            self._register()

    def _register(self) -> None:
        self.transport.registerProducer(self, True)
        self._registered = True

    def _close(self) -> None:
        """Close after what is written (a TLS transport waits for its producer to go)."""
        self._open = False
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._open = False
        factory = self.factory
        factory.connections.discard(self)
        for rid in self._subscriptions:
            if factory.subscribers.get(rid) is self:
                del factory.subscribers[rid]
        self._subscriptions.clear()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _reset_idle(self) -> None:
        # one timer per connection, re-armed only when it fires (a timer per command cost
        # ~30 µs of a deposit's budget, measured)
        self._idle_call = self.factory.clock.callLater(
            self.factory.limits.idle_timeout, self._idle_expired
        )

    def _idle_expired(self) -> None:
        self._idle_call = None
        if not self._open:
            return
        timeout = self.factory.limits.idle_timeout
        silent = self.factory.clock.seconds() - self._last_active
        if self._subscriptions:
            delay = timeout  # a collector waiting for pushes may be silent
        elif silent < timeout:
            delay = timeout - silent  # active since the timer was armed
        else:
            self._close()
            return
        self._idle_call = self.factory.clock.callLater(delay, self._idle_expired)

    def _send(self, record: wire.Record) -> None:
        if self._open:
            self.transport.write(wire.frame(record))

    def _fatal(self, code: int) -> None:
        """Answer a protocol violation with *code* and close the connection."""
        self.factory.counters["refused"] += 1
        self._send(wire.Error(0, code))
        self.log.info(
            "closed a mailbox client after a protocol error: {error}",
            error=wire.ERROR_NAMES.get(code, code),
        )
        self._close()

    # -- producer (the transport calls these when its buffer fills and drains) ------------

    def pauseProducing(self) -> None:
        self._output_paused = True
        self._pause_reading("output")

    def resumeProducing(self) -> None:
        self._output_paused = False
        self._resume_reading("output")
        for rid, sub in list(self._subscriptions.items()):
            if sub.in_flight is None and not sub.fetching:
                self._fetch(rid, sub)

    def stopProducing(self) -> None:
        self._open = False

    def _pause_reading(self, reason: str) -> None:
        if not self._reading_paused:
            self.transport.pauseProducing()
        self._reading_paused.add(reason)

    def _resume_reading(self, reason: str) -> None:
        if reason in self._reading_paused:
            self._reading_paused.discard(reason)
            if not self._reading_paused and self._open:
                self.transport.resumeProducing()

    # -- input ------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self._open:
            return
        try:
            frames = self._decoder.feed(data)
        except wire.FrameTooLong:
            self._fatal(wire.ERR_TOO_LONG)
            return
        for body in frames:
            if not self._open:
                return
            try:
                record = wire.parse(body)
            except wire.UnsupportedVersion:
                self._fatal(wire.ERR_VERSION)
                return
            except wire.MalformedRecord:
                self._fatal(wire.ERR_SYNTAX)
                return
            self._last_active = self.factory.clock.seconds()
            self._command(record)

    def _command(self, record: wire.Record) -> None:
        corr = getattr(record, "corr", None)
        if corr is None or not isinstance(
            record,
            wire.NewQueue
            | wire.Deposit
            | wire.Subscribe
            | wire.Ack
            | wire.DeleteQueue
            | wire.StatusRequest,
        ):
            self._fatal(wire.ERR_SYNTAX)  # a server-to-client record from a client
            return
        if corr <= self._last_corr:
            # a replayed or reordered command: its signature was for an earlier use
            self.factory.counters["refused"] += 1
            self._send(wire.Error(corr, wire.ERR_AUTH))
            return
        self._last_corr = corr
        assert self._bucket is not None
        if not self._bucket.take(self.factory.clock.seconds()):
            self.factory.counters["refused"] += 1
            self._send(wire.Error(corr, wire.ERR_RATE))
            return
        if isinstance(record, wire.NewQueue):
            self._track(self._new_queue(record), corr)
        elif isinstance(record, wire.Deposit):
            self._deposit(record)
        elif isinstance(record, wire.Subscribe):
            self._track(self._subscribe(record), corr)
        elif isinstance(record, wire.Ack):
            self._ack(record)
        elif isinstance(record, wire.DeleteQueue):
            self._track(self._delete(record), corr)
        else:
            self._track(self._status(record), corr)

    def _track(self, d: defer.Deferred[Any], corr: int) -> None:
        """Count *d* as pending (stop reading beyond MAX_PENDING); answer ERR_INTERNAL if it
        fails."""
        self._pending += 1
        if self._pending >= MAX_PENDING:
            self._pause_reading("pending")

        def done(result: Any) -> None:
            self._pending -= 1
            if self._pending < MAX_PENDING:
                self._resume_reading("pending")
            if isinstance(result, Failure):
                self.log.failure("a mailbox command failed", result)
                self._send(wire.Error(corr, wire.ERR_INTERNAL))

        d.addBoth(done)

    def _verified(self, key: bytes | None, cmd: wire.SignedCommand) -> bool:
        if key is None:
            return False
        return signature_valid(key, cmd.signature, wire.signed_data(self._nonce, cmd))

    # -- commands ---------------------------------------------------------------------------

    def _new_queue(self, cmd: wire.NewQueue) -> defer.Deferred[None]:
        factory = self.factory
        rid = factory.random_bytes(wire.QUEUE_ID_BYTES)
        sid = factory.random_bytes(wire.QUEUE_ID_BYTES)
        d = factory.store.create_queue(
            rid, sid, cmd.recipient_key, cmd.sender_key, int(factory.now())
        )

        def created(_: None) -> None:
            factory.counters["queues_created"] += 1
            self._send(wire.QueueIds(cmd.corr, rid, sid))

        return d.addCallback(created)

    def _deposit(self, cmd: wire.Deposit) -> None:
        """Store a block.  The first deposit into a queue on a connection must carry a valid
        signature; once one has verified, later deposits into that queue on the same
        connection are accepted whatever their signature field holds (clients send zeros):
        only the key holder's TLS stream can carry them, and verifying Ed25519 on every
        block cost ~100 µs of a deposit's ~250 µs (measured).  A replay on any other
        connection still needs a signature over that connection's challenge."""
        factory = self.factory
        if len(cmd.block) != wire.BLOCK_SIZE:
            factory.counters["refused"] += 1
            self._send(wire.Error(cmd.corr, wire.ERR_BLOCK_SIZE))
            return
        if not factory.queue_bucket_take(cmd.queue_id):
            factory.counters["refused"] += 1
            self._send(wire.Error(cmd.corr, wire.ERR_RATE))
            return
        sid = cmd.queue_id
        proven = sid in self._proven
        nonce = self._nonce

        def check(key: bytes) -> bool:
            # runs on the store's thread, inside the deposit's transaction (the SHA-256 of
            # the block too, off the reactor)
            return proven or signature_valid(key, cmd.signature, wire.signed_data(nonce, cmd))

        msg_id = factory.new_msg_id()
        d = factory.store.deposit(
            cmd.queue_id, check, msg_id, cmd.block, int(factory.now()), factory.limits.quota
        )

        def stored(outcome: DepositOutcome) -> None:
            if outcome.error != wire.ERR_AUTH and len(self._proven) < MAX_PROVEN:
                self._proven.add(sid)
            if outcome.error is not None or outcome.msg_id is None:
                factory.counters["refused"] += 1
                self._send(wire.Error(cmd.corr, outcome.error or wire.ERR_INTERNAL))
                return
            factory.counters["deposits"] += 1
            self._send(wire.Ok(cmd.corr, outcome.msg_id))
            assert outcome.recipient_id is not None
            factory.deposited(outcome.recipient_id)

        self._track(d.addCallback(stored), cmd.corr)

    def _subscribe(self, cmd: wire.Subscribe) -> defer.Deferred[None]:
        factory = self.factory
        rid = cmd.queue_id
        if rid not in self._subscriptions and len(self._subscriptions) >= MAX_SUBSCRIPTIONS:
            factory.counters["refused"] += 1
            self._send(wire.Error(cmd.corr, wire.ERR_QUOTA))
            return defer.succeed(None)

        def authorised(key: bytes | None) -> None:
            if not self._verified(key, cmd):
                factory.counters["refused"] += 1
                self._send(wire.Error(cmd.corr, wire.ERR_AUTH))
                return
            assert key is not None
            self._send(wire.Ok(cmd.corr, b""))
            if not self._open:
                return
            previous = factory.subscribers.get(rid)
            if previous is not None and previous is not self:
                previous.subscription_taken(rid)
            factory.subscribers[rid] = self
            sub = self._subscriptions.get(rid)
            if sub is None:
                sub = self._subscriptions[rid] = _Subscription(key)
            if sub.in_flight is None and not sub.fetching:
                self._fetch(rid, sub)

        return factory.store.recipient_key(rid).addCallback(authorised)

    def subscription_taken(self, rid: bytes) -> None:
        """Another connection subscribed to *rid*: stop delivering it here."""
        self._subscriptions.pop(rid, None)

    def queue_changed(self, rid: bytes) -> None:
        """A message was deposited into the subscribed queue *rid*."""
        sub = self._subscriptions.get(rid)
        if sub is None:
            return
        if sub.fetching:
            sub.dirty = True
        elif sub.in_flight is None:
            self._fetch(rid, sub)

    def _fetch(self, rid: bytes, sub: _Subscription) -> None:
        """Deliver the oldest message of *rid* (or say the queue is empty)."""
        if self._output_paused or not self._open:
            return  # resumeProducing fetches again
        sub.fetching = True
        sub.dirty = False

        def fetched(message: StoredMessage | None) -> None:
            sub.fetching = False
            if self._subscriptions.get(rid) is sub:
                self._delivered(rid, sub, message)

        def failed(failure: Failure) -> None:
            sub.fetching = False
            self.log.failure("reading a queue failed", failure)

        self.factory.store.next_message(rid).addCallbacks(fetched, failed)

    def _delivered(self, rid: bytes, sub: _Subscription, message: StoredMessage | None) -> None:
        """Send *message* (the queue's oldest) to the collector, or say the queue is empty."""
        if not self._open:
            return
        if message is None:
            if sub.dirty:
                self._fetch(rid, sub)
            else:
                self._send(wire.Empty(rid))
            return
        if self._output_paused:
            return  # resumeProducing fetches it again
        sub.in_flight = message.msg_id
        self.factory.counters["deliveries"] += 1
        self._send(wire.Message(rid, message.msg_id, message.timestamp, message.block))

    def _ack(self, cmd: wire.Ack) -> None:
        rid = cmd.queue_id
        sub = self._subscriptions.get(rid)
        if sub is None or not self._verified(sub.key, cmd):
            self.factory.counters["refused"] += 1
            self._send(wire.Error(cmd.corr, wire.ERR_AUTH))
            return
        if sub.in_flight != cmd.msg_id:
            self._send(wire.Error(cmd.corr, wire.ERR_NO_MSG))
            return

        sub.fetching = True
        sub.dirty = False

        def deleted(message: StoredMessage | None) -> None:
            sub.fetching = False
            sub.in_flight = None
            self._send(wire.Ok(cmd.corr, b""))
            if self._subscriptions.get(rid) is sub:
                self._delivered(rid, sub, message)

        def failed(failure: Failure) -> Failure:
            sub.fetching = False
            return failure

        self._track(self.factory.store.ack(rid, cmd.msg_id).addCallbacks(deleted, failed), cmd.corr)

    def _delete(self, cmd: wire.DeleteQueue) -> defer.Deferred[None]:
        factory = self.factory
        rid = cmd.queue_id

        def authorised(key: bytes | None) -> defer.Deferred[None] | None:
            if not self._verified(key, cmd):
                factory.counters["refused"] += 1
                self._send(wire.Error(cmd.corr, wire.ERR_AUTH))
                return None

            def deleted(_existed: bool) -> None:
                holder = factory.subscribers.pop(rid, None)
                if holder is not None:
                    holder.subscription_taken(rid)
                self._send(wire.Ok(cmd.corr, b""))

            return factory.store.delete_queue(rid).addCallback(deleted)

        return factory.store.recipient_key(rid).addCallback(authorised)

    def _status(self, cmd: wire.StatusRequest) -> defer.Deferred[None]:
        def reply(figures: dict[str, Any]) -> None:
            body = json.dumps(figures, separators=(",", ":"), sort_keys=True).encode()
            self._send(wire.StatusReply(cmd.corr, body))

        return self.factory.status().addCallback(reply)
