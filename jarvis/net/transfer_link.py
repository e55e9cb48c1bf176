"""Transfer data connections: their own pinned-TLS connection to a contact, beside the session.

A file's chunks never share a connection with chat (issue 18): the sender dials the receiver
exactly as for a session (the knock, then pinned mutual TLS on the contact's uid), and its first
application bytes are :data:`TRANSFER_PREFACE` and the 16-byte transfer id instead of the
session's prologue.  Then the connection carries the stream records of
:mod:`jarvis.net.transfer` (``TransferSender`` on the dialling side, ``TransferReceiver`` on the
listening side) and nothing else, but for the next file's preface between two files (below).

- :class:`TransferDialProtocol` is the protocol inside the dialling side's TLS: when TLS is up
  it writes the preface and hands the transport to the sender.
- :class:`InboundDemux` is what the listener's :class:`~jarvis.net.peer.PeerProtocol` feeds
  first: it waits for the peer's first 8 bytes.  The session prologue makes it start the
  ordinary session (which then owns the connection); the transfer preface makes it ask the
  node for the transfer's partial file and run a ``TransferReceiver``; the pull preface (a
  receiver dialling back, :data:`TRANSFER_PULL_PREFACE`) makes it ask for the file's source
  and run a ``TransferSender``.  A peer that sends none within the handshake timeout is dropped.

Through a relay (:class:`RelayedDataProtocol`) both ends dial out to the mailbox, join with
the transfer's own token (:func:`jarvis.protocol.relay.transfer_token`) and write a hello: the
sender its preface, the receiver the pull preface, each with the transfer id.

One connection, several files: once the receiver wrote ``Complete``, a connection the sender
dialled waits for the sender's next file to the same contact instead of closing
(:meth:`TransferDialProtocol.go_idle`, :meth:`TransferDialProtocol.carry`;
:meth:`InboundDemux.for_next_file` on the listening side): the sender writes the preface and
the next transfer id again, and the next stream runs on the same TLS connection, with keys of
its own as ever.  A folder of small files then pays one TCP connection, knock and TLS
handshake, not one per file.  Dialled-back and relayed connections carry one file.

The preface can never start a session by mistake: it differs from ``JARVIS\\x00\\x01`` in its
first byte.  This module never logs file names or content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jarvis.protocol.framing import PROLOGUE

#: The first 8 application bytes of a transfer data connection (then the 16-byte transfer id).
TRANSFER_PREFACE = b"JXFER\x00\x00\x01"
TRANSFER_ID_SIZE = 16
#: The first 8 bytes of a data connection the *receiver* dialled (a dial back, asked by the
#: sender's ``DialBack`` record when it could not dial the receiver): the dialling side then
#: runs the ``TransferReceiver`` and the listening side the ``TransferSender``.
TRANSFER_PULL_PREFACE = b"JXPUL\x00\x00\x01"

log = Logger(namespace="jarvis.net.transfer_link")


@implementer(IHandshakeListener)
class TransferDialProtocol(Protocol):
    """The dialling side of a data connection, inside TLS: preface, then the sender.

    :param inner: the ``TransferSender`` to run once TLS is up.
    :param transfer_id: the transfer this connection carries.
    :param clock: for the handshake deadline.
    :param timeout: seconds from TCP connection to the end of the TLS handshake.
    :param on_lost: called once with a reason if the connection ends before TLS completed.
    :param claim: called when TLS is up, before anything is written: ``False`` (another
        attempt of the same happy-eyeballs race won) aborts this connection instead.
    """

    def __init__(
        self,
        inner: Protocol,
        transfer_id: bytes,
        clock: Any,
        timeout: float,
        on_lost: Callable[[str], None],
        preface: bytes = TRANSFER_PREFACE,
        claim: Callable[[], bool] | None = None,
    ) -> None:
        self._claim = claim
        self.preface = preface
        self.inner = inner
        self.transfer_id = transfer_id
        self._clock = clock
        self._timeout = timeout
        self._on_lost = on_lost
        self._deadline: Any = None
        self._started = False
        #: Between two files (:meth:`go_idle`): called once if the connection ends meanwhile.
        self._idle_lost: Callable[[], None] | None = None
        #: the connection has ended (nothing left to abort)
        self.closed = False

    def connectionMade(self) -> None:
        self._deadline = self._clock.callLater(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._deadline = None
        transport: Any = self.transport
        transport.abortConnection()

    def handshakeCompleted(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        transport: Any = self.transport
        if self._claim is not None and not self._claim():
            transport.abortConnection()  # another address of the race won
            return
        transport.write(self.preface + self.transfer_id)
        self._started = True
        self.inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._idle_lost is not None:
            # Between two files the receiver has nothing to say.
            transport: Any = self.transport
            transport.abortConnection()
        elif self._started:
            self.inner.dataReceived(data)

    def go_idle(self, lost: Callable[[], None]) -> None:
        """The file this connection carried is complete: keep the connection for the next
        file to the same contact (:meth:`carry`); *lost* is called if it ends meanwhile."""
        self._idle_lost = lost

    def carry(self, inner: Protocol, transfer_id: bytes) -> None:
        """Carry the next file on this idle connection: its preface and transfer id, then its
        stream (*inner*, a ``TransferSender``)."""
        self._idle_lost = None
        self.inner = inner
        self.transfer_id = transfer_id
        transport: Any = self.transport
        transport.write(self.preface + transfer_id)
        inner.makeConnection(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._idle_lost is not None:
            lost, self._idle_lost = self._idle_lost, None
            lost()
        elif self._started:
            self.inner.connectionLost(reason)
        else:
            self._on_lost(str(reason.getErrorMessage()))


class RelayedDataProtocol(TransferDialProtocol):
    """Either end of a data connection through a mailbox's relay, inside TLS.

    Both contacts joined the relay with the transfer's own token and neither listens, so each
    writes a hello when TLS is up: :data:`TRANSFER_PREFACE` and the transfer id from the
    sender, :data:`TRANSFER_PULL_PREFACE` and the transfer id from the receiver.  Each side
    checks that the other's hello is the opposite one for the same transfer before it hands
    the transport to *inner* (the ``TransferSender`` or ``TransferReceiver``); anything else
    aborts the connection.  The TLS roles (client: the lower uid) are the relay's rule and
    independent of who sends the file.

    :param sending: whether this side sends the file.
    """

    def __init__(
        self,
        inner: Protocol,
        transfer_id: bytes,
        clock: Any,
        timeout: float,
        on_lost: Callable[[str], None],
        sending: bool,
    ) -> None:
        own, other = (TRANSFER_PREFACE, TRANSFER_PULL_PREFACE)[:: 1 if sending else -1]
        super().__init__(inner, transfer_id, clock, timeout, on_lost, own)
        self._expected = other + transfer_id
        self._hello = b""
        self._tls_up = False

    def handshakeCompleted(self) -> None:
        transport: Any = self.transport
        transport.write(self.preface + self.transfer_id)
        self._tls_up = True
        self._check_hello()

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            self.inner.dataReceived(data)
            return
        self._hello += data
        self._check_hello()

    def _check_hello(self) -> None:
        if not self._tls_up or len(self._hello) < len(self._expected):
            return
        transport: Any = self.transport
        head, rest = self._hello[: len(self._expected)], self._hello[len(self._expected) :]
        self._hello = b""
        if head != self._expected:
            self._tls_up = False
            transport.abortConnection()
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._started = True
        self.inner.makeConnection(transport)
        if rest:
            self.inner.dataReceived(rest)


class TransferDialFactory(Factory):
    """Builds the one :class:`TransferDialProtocol` of a dial (wrap it in TLS)."""

    noisy = False

    def __init__(self, make: Callable[[], TransferDialProtocol]) -> None:
        self._make = make

    def buildProtocol(self, addr: Any) -> TransferDialProtocol:
        return self._make()


class _ReceiverSession:
    """What the listener's PeerProtocol feeds once the connection carries a transfer."""

    def __init__(self, receiver: Protocol) -> None:
        self.receiver = receiver

    def connection_made(self, channel_binding: bytes) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.receiver.dataReceived(data)

    def connection_lost(self, reason: str) -> None:
        self.receiver.connectionLost(Failure(error.ConnectionLost(reason)))

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def close(self, reason: str) -> None:
        transport: Any = self.receiver.transport
        if transport is not None:
            transport.abortConnection()


class InboundDemux:
    """The first thing an inbound connection feeds after TLS: session or transfer?

    :param protocol: the connection's ``PeerProtocol``.
    :param peer_uid: the uid TLS verified.
    :param open_session: ``() -> session or None``: starts the ordinary session.
    :param open_transfer: ``(transfer_id) -> receiver Protocol or None``.
    :param authenticated: tells the listener's admission control the connection is a contact's.
    :param clock: for the deadline.
    :param timeout: seconds to wait for the peer's first bytes.
    """

    def __init__(
        self,
        protocol: Any,
        peer_uid: str,
        open_session: Callable[[], Any],
        open_transfer: Callable[[bytes], Protocol | None],
        authenticated: Callable[[Any], object],
        clock: Any,
        timeout: float,
        open_pull: Callable[[bytes], Protocol | None] | None = None,
    ) -> None:
        self._open_pull = open_pull
        self._protocol = protocol
        self._peer_uid = peer_uid
        self._open_session = open_session
        self._open_transfer = open_transfer
        self._authenticated = authenticated
        self._clock = clock
        self._timeout = timeout
        self._buffer = b""
        self._binding: bytes | None = None
        self._deadline: Any = None
        self._decided = False
        #: The PeerProtocol is still its transport's producer (until the first file starts).
        self._producer_registered = True

    def for_next_file(self, timeout: float) -> InboundDemux:
        """A demux for this connection once its file is complete: it waits up to *timeout*
        seconds for the sender's next file (the transfer preface only: no session, no pull)
        and runs it as the first; the caller makes it the connection's session and calls its
        :meth:`connection_made`."""
        waiting = InboundDemux(
            self._protocol,
            self._peer_uid,
            lambda: None,
            self._open_transfer,
            self._authenticated,
            self._clock,
            timeout,
        )
        waiting._producer_registered = False  # the first file's demux unregistered it
        return waiting

    def connection_made(self, channel_binding: bytes) -> None:
        self._binding = channel_binding
        self._deadline = self._clock.callLater(self._timeout, self._timed_out)
        self._decide()

    def _timed_out(self) -> None:
        self._deadline = None
        if not self._decided:
            self._decided = True
            self._protocol.abort()

    def data_received(self, data: bytes) -> None:
        if self._decided:
            return
        self._buffer += data
        if len(self._buffer) > 64 * 1024:
            self._decided = True
            self._protocol.abort()
            return
        self._decide()

    def _decide(self) -> None:
        if self._decided or self._binding is None:
            return
        if len(self._buffer) < len(PROLOGUE):
            return
        head = self._buffer[: len(PROLOGUE)]
        if head == PROLOGUE:
            self._become_session()
            return
        prefaces = (TRANSFER_PREFACE, TRANSFER_PULL_PREFACE)
        if head in prefaces and len(self._buffer) < len(head) + TRANSFER_ID_SIZE:
            return
        self._decided = True
        self._stop_deadline()
        opener = self._open_transfer if head == TRANSFER_PREFACE else self._open_pull
        if head not in prefaces or opener is None:
            self._protocol.abort()
            return
        start = len(head)
        tid = self._buffer[start : start + TRANSFER_ID_SIZE]
        rest = self._buffer[start + TRANSFER_ID_SIZE :]
        self._buffer = b""
        receiver = opener(tid)
        if receiver is None:
            self._protocol.abort()
            return
        self._authenticated(self._protocol)
        transport: Any = self._protocol.transport
        if self._producer_registered:
            # the PeerProtocol registered itself; the receiver pauses the transport instead
            transport.unregisterProducer()
        session = _ReceiverSession(receiver)
        self._protocol.session = session
        receiver.makeConnection(transport)
        if rest:
            receiver.dataReceived(rest)

    def _become_session(self) -> None:
        self._decided = True
        self._stop_deadline()
        session = self._open_session()
        if session is None:
            self._protocol.lose_connection()
            return
        self._protocol.session = session
        buffered, self._buffer = self._buffer, b""
        assert self._binding is not None
        session.connection_made(self._binding)
        if buffered:
            session.data_received(buffered)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connection_lost(self, reason: str) -> None:
        self._decided = True
        self._stop_deadline()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def close(self, reason: str) -> None:
        self._decided = True
        self._stop_deadline()
        self._protocol.abort()
