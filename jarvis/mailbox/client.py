"""The mailbox client library: connect to a mailbox by its link, manage queues, deposit,
collect.  Twisted, every call returns a Deferred.

::

    client = yield connect_mailbox(reactor, parse_link(text))
    keys = yield client.create_queue()              # the collector keeps all of it
    cred = keys.sender_credential()                 # give this (sealed) to the contact
    msg_id = yield client.deposit(cred, sealed)     # at the contact's side: fires after commit
    got = yield client.collect(keys.recipient_id, keys.recipient_key)   # [Delivery, ...]
    yield client.subscribe(keys.recipient_id, keys.recipient_key, on_delivery)

Delivery is at least once: a message is deleted only when the collector acknowledges it, which
this library does after the handler (or :meth:`MailboxClientProtocol.collect`) has it.  If the
connection or the mailbox dies between the handler and the acknowledgement, the message comes
again with the same ``msg_id``: collectors dedupe by message id (and, end to end, by the id
inside their sealed payload, because a sender that retries a deposit whose acknowledgement was
lost makes a second copy with a new ``msg_id``).

Payloads are padded to one :data:`~jarvis.mailbox.wire.BLOCK_SIZE` block here; sealing them
is the caller's job.  Nothing here logs payloads, ids or keys.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.mailbox import wire
from jarvis.mailbox.tls import MailboxClientCreator
from jarvis.protocol.mailbox_link import MailboxLink


class MailboxRefused(Exception):
    """The mailbox refused a command; ``code`` and ``name`` say why (``wire.ERR_*``)."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.name = wire.ERROR_NAMES.get(code, f"error {code}")
        super().__init__(message or f"the mailbox refused the command: {self.name}")


class QueueFull(MailboxRefused):
    """The contact's mailbox queue is full: the contact has not collected for a while.  The
    message stays in your outbox; it is deposited when the queue has room again."""

    def __init__(self) -> None:
        super().__init__(wire.ERR_QUOTA, "the recipient's mailbox queue is full; retry later")


class MailboxConnectionLost(Exception):
    """The connection to the mailbox ended before the answer came; retry on a new one."""


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class SenderCredential:
    """What a contact needs to deposit into a queue: its sender id and sender key (seed)."""

    sender_id: bytes
    sender_key: bytes


@dataclass(frozen=True)
class QueueKeys:
    """A new queue: both ids and both private keys (32-byte Ed25519 seeds).

    The creator keeps ``recipient_id``/``recipient_key`` and hands
    :meth:`sender_credential` to the one contact who may deposit.
    """

    recipient_id: bytes
    sender_id: bytes
    recipient_key: bytes
    sender_key: bytes

    def sender_credential(self) -> SenderCredential:
        return SenderCredential(self.sender_id, self.sender_key)


@dataclass(frozen=True)
class Delivery:
    """One collected message: the mailbox's message id, deposit time (Unix seconds), payload."""

    msg_id: bytes
    timestamp: int
    payload: bytes


Handler = Callable[[Delivery], Any]


class _Subscription:
    def __init__(self, key: Ed25519PrivateKey, handler: Handler) -> None:
        self.key = key
        self.handler = handler
        self.on_empty: list[defer.Deferred[None]] = []


class MailboxClientProtocol(Protocol):
    """One connection to a mailbox.  Wait for :attr:`ready` before sending commands
    (:func:`connect_mailbox` does)."""

    log = Logger()
    transport: Any

    def __init__(self) -> None:
        self.ready: defer.Deferred[MailboxClientProtocol] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._decoder = wire.FrameDecoder()
        self._nonce: bytes | None = None
        self._corr = 0
        self._waiting: dict[int, tuple[defer.Deferred[Any], Callable[[wire.Record], Any]]] = {}
        self._subscriptions: dict[bytes, _Subscription] = {}
        self._keys: dict[bytes, Ed25519PrivateKey] = {}
        #: sender ids whose key this connection has proved to the mailbox
        self._proven: set[bytes] = set()
        self.connected = False

    # -- connection ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)  # acknowledgements are small: Nagle would delay each by 40 ms

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        waiting, self._waiting = self._waiting, {}
        for d, _ in waiting.values():
            d.errback(MailboxConnectionLost("the mailbox connection closed"))
        for sub in self._subscriptions.values():
            for d in sub.on_empty:
                d.errback(MailboxConnectionLost("the mailbox connection closed"))
        self._subscriptions.clear()
        if not self.ready.called:
            self.ready.errback(MailboxConnectionLost("the mailbox closed before its greeting"))
        self.closed.callback(None)

    def close(self) -> defer.Deferred[None]:
        """Close the connection; fire when it is closed."""
        if self.connected:
            self.transport.loseConnection()
        return self.closed

    def dataReceived(self, data: bytes) -> None:
        try:
            bodies = self._decoder.feed(data)
            for body in bodies:
                self._received(wire.parse(body))
        except wire.WireError:
            self.log.warn("the mailbox sent a malformed record; closing")
            self.transport.loseConnection()

    def _received(self, record: wire.Record) -> None:
        if isinstance(record, wire.Hello):
            if self._nonce is None:
                self._nonce = record.nonce
                self.ready.callback(self)
            return
        if isinstance(record, wire.Message):
            self._message(record)
            return
        if isinstance(record, wire.Empty):
            sub = self._subscriptions.get(record.queue_id)
            if sub is not None:
                empties, sub.on_empty = sub.on_empty, []
                for d in empties:
                    d.callback(None)
            return
        corr = getattr(record, "corr", 0)
        entry = self._waiting.pop(corr, None)
        if entry is None:
            if isinstance(record, wire.Error):
                self.log.warn("the mailbox closed the connection: {error}", error=record.name)
            return
        d, convert = entry
        if isinstance(record, wire.Error):
            d.errback(QueueFull() if record.code == wire.ERR_QUOTA else MailboxRefused(record.code))
        else:
            d.callback(convert(record))

    # -- commands -----------------------------------------------------------------------------

    def _next_corr(self) -> int:
        self._corr += 1
        return self._corr

    def _request(
        self, record: wire.Record, convert: Callable[[wire.Record], Any]
    ) -> defer.Deferred[Any]:
        if not self.connected:
            return defer.fail(MailboxConnectionLost("not connected to the mailbox"))
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting[getattr(record, "corr", 0)] = (d, convert)
        self.transport.write(wire.frame(record))
        return d

    def _signed(self, cmd: wire.SignedCommand, key: Ed25519PrivateKey) -> Any:
        assert self._nonce is not None, "wait for MailboxClientProtocol.ready"
        signature = key.sign(wire.signed_data(self._nonce, cmd))
        return dataclasses.replace(cmd, signature=signature)

    def _key(self, seed: bytes | Ed25519PrivateKey) -> Ed25519PrivateKey:
        if isinstance(seed, Ed25519PrivateKey):
            return seed
        key = self._keys.get(seed)
        if key is None:
            key = self._keys[seed] = Ed25519PrivateKey.from_private_bytes(seed)
        return key

    def create_queue(self) -> defer.Deferred[QueueKeys]:
        """Create a queue with fresh recipient and sender keys; fire with :class:`QueueKeys`."""
        recipient, sender = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        cmd = wire.NewQueue(self._next_corr(), _raw_public(recipient), _raw_public(sender))

        def keys(record: wire.Record) -> QueueKeys:
            assert isinstance(record, wire.QueueIds)
            return QueueKeys(
                record.recipient_id, record.sender_id, _raw_private(recipient), _raw_private(sender)
            )

        return self._request(cmd, keys)

    def deposit(self, credential: SenderCredential, payload: bytes) -> defer.Deferred[bytes]:
        """Pad *payload* into a block and deposit it; fire with the message id once the
        mailbox has committed it.

        :raises ValueError: if the payload exceeds :data:`~jarvis.mailbox.wire.MAX_PAYLOAD`.
        :raises QueueFull: (as the Deferred's failure) if the queue is full.
        """
        return self.deposit_block(credential, wire.pad_block(payload))

    def deposit_block(self, credential: SenderCredential, block: bytes) -> defer.Deferred[bytes]:
        """Deposit an already padded *block* (tests send wrong sizes through this)."""
        sid = credential.sender_id
        cmd = wire.Deposit(self._next_corr(), sid, bytes(64), block)
        if sid not in self._proven:
            # until the mailbox has accepted one signed deposit into this queue on this
            # connection, every deposit is signed; afterwards the signature field is zeros
            cmd = self._signed(cmd, self._key(credential.sender_key))

        def accepted(record: wire.Record) -> bytes:
            self._proven.add(sid)
            return getattr(record, "msg_id", b"")

        return self._request(cmd, accepted)

    def subscribe(
        self, recipient_id: bytes, recipient_key: bytes, handler: Handler
    ) -> defer.Deferred[None]:
        """Receive the queue's messages, oldest first, and new ones as they are deposited.

        ``handler(delivery)`` is called for each; once it returns (or its Deferred fires) the
        message is acknowledged and deleted at the mailbox, and the next is delivered.  If
        the handler fails, the message is not acknowledged (it comes again on the next
        subscription).  Fires when the mailbox has accepted the subscription.
        """
        key = self._key(recipient_key)
        self._subscriptions[recipient_id] = _Subscription(key, handler)
        cmd = self._signed(wire.Subscribe(self._next_corr(), recipient_id, bytes(64)), key)
        d = self._request(cmd, lambda r: None)

        def refused(failure: Failure) -> Failure:
            self._subscriptions.pop(recipient_id, None)
            return failure

        return d.addErrback(refused)

    def collect(self, recipient_id: bytes, recipient_key: bytes) -> defer.Deferred[list[Delivery]]:
        """Collect (and acknowledge) everything the queue holds now; fire with the messages in
        order once the mailbox says the queue is empty.  Then this side stops handling the
        queue: a message pushed later is left unacknowledged at the mailbox (it comes with the
        next :meth:`collect` or :meth:`subscribe`), never acknowledged into nowhere."""
        got: list[Delivery] = []
        empty: defer.Deferred[None] = defer.Deferred()
        d = self.subscribe(recipient_id, recipient_key, got.append)
        sub = self._subscriptions.get(recipient_id)
        if sub is not None:
            sub.on_empty.append(empty)

        def finished(_: None) -> list[Delivery]:
            if self._subscriptions.get(recipient_id) is sub:
                self.unsubscribe(recipient_id)
            return got

        return d.addCallback(lambda _: empty).addCallback(finished)

    def unsubscribe(self, recipient_id: bytes) -> None:
        """Stop handling the queue's messages on this side (the next one stays unacknowledged
        until a later subscription)."""
        self._subscriptions.pop(recipient_id, None)

    def _message(self, record: wire.Message) -> None:
        sub = self._subscriptions.get(record.queue_id)
        if sub is None:
            return
        try:
            payload = wire.unpad_block(record.block)
        except wire.MalformedRecord:
            self.log.warn("dropping a malformed block from the mailbox")
            payload = b""
        delivery = Delivery(record.msg_id, record.timestamp, payload)
        d = defer.maybeDeferred(sub.handler, delivery)

        def handled(_: Any) -> None:
            if self._subscriptions.get(record.queue_id) is not sub or not self.connected:
                return
            cmd = wire.Ack(self._next_corr(), record.queue_id, bytes(64), record.msg_id)
            ack = self._request(self._signed(cmd, sub.key), lambda r: None)
            ack.addErrback(lambda f: f.trap(MailboxRefused, MailboxConnectionLost))

        def failed(failure: Failure) -> None:
            self.log.failure("a mailbox delivery handler failed; not acknowledged", failure)

        d.addCallbacks(handled, failed)

    def delete_queue(self, recipient_id: bytes, recipient_key: bytes) -> defer.Deferred[None]:
        """Delete the queue and everything in it."""
        self._subscriptions.pop(recipient_id, None)
        cmd = wire.DeleteQueue(self._next_corr(), recipient_id, bytes(64))
        return self._request(self._signed(cmd, self._key(recipient_key)), lambda r: None)

    def status(self) -> defer.Deferred[dict[str, Any]]:
        """Fire with the mailbox's health figures."""
        return self._request(
            wire.StatusRequest(self._next_corr()),
            lambda r: json.loads(getattr(r, "figures", b"{}")),
        )


def connect_mailbox(
    reactor: Any, link: MailboxLink, timeout: float = 30.0
) -> defer.Deferred[MailboxClientProtocol]:
    """Connect to the mailbox of *link* over TLS pinned to its key; fire with the protocol once
    the mailbox has greeted (its challenge received)."""
    creator: Any = MailboxClientCreator(link.pin)
    tcp: Any = HostnameEndpoint(reactor, link.host.encode("idna"), link.port, timeout=timeout)
    endpoint = wrapClientTLS(creator, tcp)
    protocol = MailboxClientProtocol()
    d = connectProtocol(endpoint, protocol)
    d.addCallback(lambda p: p.ready)
    d.addTimeout(timeout, reactor)
    return d
