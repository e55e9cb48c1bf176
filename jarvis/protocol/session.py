"""The sans-IO peer session: handshake, sealed messages, acks, keepalive and closing.

One :class:`PeerSession` lives for one TLS connection.  ``jarvis.net`` feeds it
(:meth:`~PeerSession.connection_made`, :meth:`~PeerSession.data_received`,
:meth:`~PeerSession.connection_lost`) and gives it two callables to write bytes and to drop the
connection; ``jarvis.core`` drives it (:meth:`~PeerSession.send_message`, acks, reads,
:meth:`~PeerSession.close`) and hears back through a :class:`SessionObserver`.

The lifecycle is an Automat machine whose table lists what every state does with every input,
late inputs after the close included (see ``docs/protocol.md``, "Session state machine")::

    connecting --connection_made--> handshaking --valid Hello--> established
        |                               |                            |
        +------ close / timeout / bad input / peer Goodbye ----------+--> closing
        +------------------------ connection_lost -------------------+--> closed
                                                           closing --connection_lost--> closed

``session_closed`` is reported exactly once, when the session leaves the first three states.

This module must not do I/O itself, read the wall clock or import ``twisted.internet.reactor``,
``twisted.internet.protocol`` or ``urwid``: time comes from the injected ``IReactorTime``.  It
never logs message bodies, keys or signatures: only uids, lengths, counters and reasons.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

from automat import TypeMachineBuilder
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from jarvis.common.logs import log_id, redact
from jarvis.crypto.cascade import OVERHEAD, CascadeError, CascadeOpener, CascadeSealer
from jarvis.protocol.framing import (
    HANDSHAKE_MAX_FRAME,
    MAX_FRAME,
    PROLOGUE,
    BadPrologue,
    FrameDecoder,
    FrameTooLarge,
    encode_frame,
)
from jarvis.protocol.keys import KeyAgreement, SessionKeys
from jarvis.protocol.records import (
    MAX_IDS_PER_RECORD,
    MAX_REASON_BYTES,
    MAX_U64,
    MESSAGE_ID_SIZE,
    NONCE_SIZE,
    Ack,
    Goodbye,
    Hello,
    MailboxAddress,
    MalformedRecord,
    Message,
    Ping,
    Pong,
    Read,
    Record,
    Resume,
    UnknownRecord,
    encode_record,
    parse_record,
)

#: Largest plaintext body :meth:`PeerSession.send_message` accepts: a Message frame with the
#: cascade's tags and the record header must fit in :data:`~jarvis.protocol.framing.MAX_FRAME`.
MAX_BODY = MAX_FRAME - OVERHEAD - 64

#: Most bytes buffered before :meth:`PeerSession.connection_made` (a Hello frame and change).
EARLY_DATA_LIMIT = HANDSHAKE_MAX_FRAME + 64


class _DelayedCall(Protocol):
    """The part of ``IDelayedCall`` the session uses (zope interfaces do not type-check)."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, seconds: float) -> None: ...


class ClockLike(Protocol):
    """The part of ``IReactorTime`` the session uses (``task.Clock`` provides it too)."""

    def callLater(self, delay: float, callable: Callable[..., Any], /) -> _DelayedCall: ...

    def seconds(self) -> float: ...


class NotEstablished(Exception):
    """The session is not established (still handshaking, or closing or closed).

    Nothing was sent.  Keep the message in the outbox and send it once
    ``session_established`` is reported for a session with this peer.
    """


class SessionObserver(Protocol):
    """What a :class:`PeerSession` reports; ``jarvis.core`` implements it."""

    def session_established(self, session: PeerSession) -> None:
        """The peer's Hello was accepted: messages can flow both ways."""

    def message_received(
        self, session: PeerSession, message_id: bytes, body: bytes, created_ms: int
    ) -> None:
        """A message arrived and opened (its counter was above every earlier one)."""

    def acks_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        """The peer stored these messages."""

    def reads_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        """The peer's user read these messages."""

    def session_closed(self, session: PeerSession, reason: str) -> None:
        """The session ended (reported exactly once); *reason* says why."""

    # Optional (called only when the observer has it):
    # ``session_writable(session)``: the transport takes bytes again after
    # :meth:`PeerSession.pause_writing`; ``resume_mark(peer_uid) -> bytes | None``: passed as
    # the session's *resume_mark* by the network.


@dataclass(frozen=True)
class SessionStats:
    """Traffic counters of one session.

    :ivar bytes_in: bytes received (prologue included).
    :ivar bytes_out: bytes sent (prologue included).
    :ivar records_in: records parsed (unknown types included).
    :ivar records_out: records sent.
    """

    bytes_in: int
    bytes_out: int
    records_in: int
    records_out: int


def _printable(text: str) -> str:
    """Return *text* with control characters replaced, safe to log and show (peer input)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _goodbye_reason(reason: str) -> str:
    return reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


class _SessionInputs(Protocol):
    """The inputs of the session machine (every state handles each of them)."""

    def connection_made(self, channel_binding: bytes) -> None:
        "TLS is up."

    def hello_received(self, hello: Hello) -> None:
        "The peer's Hello arrived."

    def hello_accepted(self, keys: SessionKeys) -> None:
        "The peer's Hello verified; these are the session's keys."

    def message_received(self, message: Message) -> None:
        "A Message record arrived."

    def ack_received(self, ack: Ack) -> None:
        "An Ack record arrived."

    def read_received(self, read: Read) -> None:
        "A Read record arrived."

    def ping_received(self, ping: Ping) -> None:
        "A Ping record arrived."

    def pong_received(self, pong: Pong) -> None:
        "A Pong record arrived."

    def goodbye_received(self, goodbye: Goodbye) -> None:
        "The peer is closing."

    def protocol_failed(self, reason: str) -> None:
        "The peer sent something we refuse."

    def close(self, reason: str) -> None:
        "Our side wants to close."

    def connection_lost(self, reason: str) -> None:
        "The transport is gone."

    def handshake_timed_out(self) -> None:
        "No valid Hello in time."

    def idle_timed_out(self) -> None:
        "Nothing received for the idle timeout."

    def keepalive_due(self) -> None:
        "Time to send a Ping."


# -- what each state carries -----------------------------------------------------------------
# The machine's states carry their own data (Twisted's ClientService does the same): the keys
# exist only in ``established``, the ephemeral key only in ``handshaking``.  Each data object is
# made by the machine's data factory on entering its state, so ``PeerSession.state`` (read from
# the current data object) cannot disagree with the machine.


class _StateData:
    """What every state's data offers: its name, and how to stop what it runs."""

    name: ClassVar[str]

    def stop(self) -> None:
        """Stop the state's timers (nothing, unless a state has some)."""


class Connecting(_StateData):
    """The machine's first state: TLS is not up, nothing was sent (no data of its own)."""

    name: ClassVar[str] = "connecting"


@dataclass(eq=False)
class Handshaking(_StateData):
    """Our Hello is sent; the key agreement waits for the peer's Hello."""

    name: ClassVar[str] = "handshaking"
    agreement: KeyAgreement

    def stop(self) -> None:
        """Forget the ephemeral private key."""
        self.agreement.forget()


@dataclass(eq=False)
class Established(_StateData):
    """Messages flow: the session keys, the idle timer and the keepalive live here only."""

    name: ClassVar[str] = "established"
    sealer: CascadeSealer
    opener: CascadeOpener
    idle_call: _DelayedCall
    keepalive: LoopingCall

    def stop(self) -> None:
        """Stop the timers (the keys go with this object when the state is left)."""
        if self.idle_call.active():
            self.idle_call.cancel()
        if self.keepalive.running:
            self.keepalive.stop()


class Closing(_StateData):
    """We dropped the connection and wait for the transport to go."""

    name: ClassVar[str] = "closing"


class Closed(_StateData):
    """All is over; late inputs are ignored."""

    name: ClassVar[str] = "closed"


class PeerSession:
    """One peer connection's protocol, fed bytes and events, with no I/O of its own.

    The handshake timer starts when the session is created, so a peer that stalls the TLS
    handshake or never sends a valid Hello is dropped after *handshake_timeout* seconds.

    :param local_uid: our uid.
    :param sign: signs bytes with our Ed25519 identity key (returns the 64-byte signature).
    :param peer_uid: the uid the connection is pinned to.
    :param peer_public_key: that peer's raw 32-byte Ed25519 public key.
    :param initiator: whether we dialled the connection.
    :param clock: the time source for every timer.
    :param send_bytes: writes bytes to the connection.
    :param lose_connection: drops the connection (the net layer then calls
        :meth:`connection_lost`).
    :param observer: receives the session's events.
    :param handshake_timeout: seconds from creation until the peer's Hello must be accepted.
    :param keepalive_interval: seconds between Pings on an established session.
    :param idle_timeout: seconds without any received byte before an established session closes.
    :param versions: our ``(min_version, max_version)`` protocol range.
    :param resume_mark: returns, for the peer's uid, the id of the last message we stored from
        it with everything it sent before (or ``None``); sent in a :class:`Resume` record right
        before our Hello, so the peer resends only what follows.
    :raises ValueError: if *peer_public_key* is not an Ed25519 key or *versions* is invalid.
    """

    log = Logger()

    def __init__(
        self,
        *,
        local_uid: str,
        sign: Callable[[bytes], bytes],
        peer_uid: str,
        peer_public_key: bytes,
        initiator: bool,
        clock: IReactorTime | ClockLike,
        send_bytes: Callable[[bytes], None],
        lose_connection: Callable[[], None],
        observer: SessionObserver,
        handshake_timeout: float = 10.0,
        keepalive_interval: float = 30.0,
        idle_timeout: float = 90.0,
        versions: tuple[int, int] = (1, 1),
        resume_mark: Callable[[str], bytes | None] | None = None,
    ) -> None:
        if not 0 < versions[0] <= versions[1] <= 0xFFFF:
            raise ValueError("versions must be (min, max) with 0 < min <= max <= 65535")
        self.local_uid = local_uid
        self.peer_uid = peer_uid
        self.initiator = initiator
        self._peer_key = Ed25519PublicKey.from_public_bytes(bytes(peer_public_key))
        self._sign = sign
        self._reactor_time = cast(IReactorTime, clock)
        self._clock = cast(ClockLike, clock)
        self._send_bytes = send_bytes
        self._lose_connection = lose_connection
        self._observer = observer
        self._keepalive_interval = keepalive_interval
        self._idle_timeout = idle_timeout
        self._versions = versions
        self._resume_mark = resume_mark
        self._peer_resume_mark: bytes | None = None
        #: called with ``(session, MailboxAddress)`` when the peer sends its mailbox address
        self.on_mailbox_address: Callable[[Any, MailboxAddress], Any] | None = None
        self._writing_paused = False

        self._close_reason: str | None = None
        self._version: int | None = None
        self._decoder: FrameDecoder | None = FrameDecoder(HANDSHAKE_MAX_FRAME, expect_prologue=True)
        self._bytes_in = self._bytes_out = self._records_in = self._records_out = 0

        #: The current state's data, set only by the machine's data factories (see
        #: ``_entering``); the initial state, ``connecting``, carries none of its own.
        self._data: _StateData = Connecting()
        self._machine: _SessionInputs = _SessionMachine(self)
        # The deadline spans connecting and handshaking: it starts with the session.
        self._handshake_deadline: _DelayedCall = self._clock.callLater(
            handshake_timeout, self._machine.handshake_timed_out
        )

    # -- what callers see -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"connecting"``, ``"handshaking"``, ``"established"``, ``"closing"`` or ``"closed"``."""
        return self._data.name

    @property
    def version(self) -> int | None:
        """The negotiated protocol version once established, else ``None``."""
        return self._version

    @property
    def close_reason(self) -> str | None:
        """Why the session closed (as reported to ``session_closed``), or ``None`` while open."""
        return self._close_reason

    @property
    def peer_resume_mark(self) -> bytes | None:
        """The message id from the peer's :class:`Resume` record (sent before its Hello): the
        last of our messages it stored with everything we sent before; ``None`` if it sent none.
        """
        return self._peer_resume_mark

    @property
    def writing_paused(self) -> bool:
        """Whether the transport asked to stop writing for now (its buffers are full).

        Writes still go through (nothing is dropped); a sender streaming many messages should
        wait for ``session_writable`` before writing more.
        """
        return self._writing_paused

    def pause_writing(self) -> None:
        """The transport's buffers are full (its producer was paused): see
        :attr:`writing_paused`."""
        self._writing_paused = True

    def resume_writing(self) -> None:
        """The transport takes bytes again: tell the observer (``session_writable``)."""
        if not self._writing_paused:
            return
        self._writing_paused = False
        if type(self._data) is Established:
            notify = getattr(self._observer, "session_writable", None)
            if notify is not None:
                notify(self)

    @property
    def stats(self) -> SessionStats:
        """The traffic counters so far."""
        return SessionStats(self._bytes_in, self._bytes_out, self._records_in, self._records_out)

    def connection_made(self, channel_binding: bytes) -> None:
        """TLS is up: send the prologue and our Hello, then process anything already received.

        :param channel_binding: a TLS exporter value of this connection (both sides must pass
            the same bytes); the Hello signatures and the session keys are bound to it.
        """
        self._machine.connection_made(channel_binding)
        self._receive(b"")

    def data_received(self, data: bytes) -> None:
        """Process bytes received from the peer (any chunking); ignored once closing.

        Bytes that arrive before :meth:`connection_made` (the TLS layers of the two sides do
        not finish at the same moment) are checked and buffered, up to
        :data:`EARLY_DATA_LIMIT` bytes, and processed once the connection is made.  Refused
        input (bad prologue, oversized frame, malformed record, bad Hello, a message that fails
        to open, a record before the Hello) closes the session with a reason.
        """
        if self._decoder is None:
            return
        self._bytes_in += len(data)
        state = self._data
        if type(state) is Established and state.idle_call.active():
            state.idle_call.reset(self._idle_timeout)
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        try:
            if self._decoder is not None:
                self._decoder.receive(data)
            if type(self._data) is Connecting:
                if self._decoder is not None and self._decoder.buffered > EARLY_DATA_LIMIT:
                    self._machine.protocol_failed("too much data before the connection was made")
                return
            while self._decoder is not None:
                payload = self._decoder.next_frame()
                if payload is None:
                    break
                record = parse_record(payload)
                self._records_in += 1
                self._dispatch(record)
        except BadPrologue:
            self._machine.protocol_failed("bad prologue")
        except FrameTooLarge as e:
            self._machine.protocol_failed(
                f"frame too large ({e.announced} bytes, maximum {e.maximum})"
            )
        except MalformedRecord as e:
            self._machine.protocol_failed(e.args[0])

    def send_message(self, message_id: bytes, body: bytes, created_ms: int) -> None:
        """Seal and send one message.

        Not a machine input: it never changes the state, so an observer may call it from its
        callbacks (for instance flush the outbox from ``session_established``).

        :param message_id: the message's 16-byte id.
        :param body: the plaintext body, at most :data:`MAX_BODY` bytes.
        :param created_ms: when it was written, in milliseconds since the epoch.
        :raises NotEstablished: unless the session is established (nothing is sent).
        :raises ValueError: for a wrong id size, a body too large or a negative time.
        :raises jarvis.crypto.cascade.CounterExhausted: after 2**64 - 1 messages.
        """
        state = self._data
        if type(state) is not Established:
            raise NotEstablished(f"session with {self.peer_uid} is {state.name}")
        if len(message_id) != MESSAGE_ID_SIZE:
            raise ValueError(f"message id must be {MESSAGE_ID_SIZE} bytes")
        if len(body) > MAX_BODY:
            raise ValueError(f"message body larger than {MAX_BODY} bytes")
        if not 0 <= created_ms <= MAX_U64:
            raise ValueError("created_ms out of range")
        counter, sealed = state.sealer.seal(message_id, body)
        self._send_records([Message(message_id, counter, created_ms, sealed)])

    def send_ack(self, message_ids: Sequence[bytes]) -> None:
        """Tell the peer these messages are stored (split into records of at most 1024 ids).

        :raises NotEstablished: unless the session is established.
        :raises ValueError: if an id is not 16 bytes.
        """
        self._send_ids(Ack, message_ids)

    def send_mailbox_address(self, address: MailboxAddress) -> None:
        """Tell the peer where to deposit for us while we are offline (or, with an empty link,
        that we have no mailbox any more).

        :raises NotEstablished: unless the session is established.
        """
        state = self._data
        if type(state) is not Established:
            raise NotEstablished(f"session with {self.peer_uid} is {state.name}")
        self._send_records([address])

    def send_read(self, message_ids: Sequence[bytes]) -> None:
        """Tell the peer our user read these messages.

        :raises NotEstablished: unless the session is established.
        :raises ValueError: if an id is not 16 bytes.
        """
        self._send_ids(Read, message_ids)

    def close(self, reason: str) -> None:
        """Close: send Goodbye (when TLS is up), drop the connection, report ``session_closed``.

        Does nothing once closing or closed.
        """
        self._machine.close(reason)

    def connection_lost(self, reason: str) -> None:
        """The transport is gone; reports ``session_closed(reason)`` unless already reported."""
        self._machine.connection_lost(reason)

    # -- helpers used by the machine's transitions ------------------------------------------

    def _dispatch(self, record: Record | UnknownRecord) -> None:
        state = self._data
        if type(state) is Established and self._deliver_established_record(state, record):
            return
        match record:
            case Hello():
                self._machine.hello_received(record)
            case Message():
                self._machine.message_received(record)
            case Ack():
                self._machine.ack_received(record)
            case Read():
                self._machine.read_received(record)
            case Ping():
                self._machine.ping_received(record)
            case Pong():
                self._machine.pong_received(record)
            case Goodbye():
                self._machine.goodbye_received(record)
            case Resume():
                # Not a machine input: it changes no state, and only counts before the Hello
                # (it tells where the peer's stream resumes, read once the session is up).
                if type(self._data) is Handshaking and self._peer_resume_mark is None:
                    self._peer_resume_mark = record.message_id
            case MailboxAddress():
                # Not a machine input either: handed to whoever set ``on_mailbox_address``
                # (the courier, at session_established), only on an established session.
                handler = self.on_mailbox_address
                if type(self._data) is Established and handler is not None:
                    handler(self, record)
            case UnknownRecord():
                self.log.debug(
                    "ignoring unknown record type {record_type} from {peer_uid}",
                    record_type=record.record_type,
                    peer_uid=log_id(self.peer_uid),
                )

    def _deliver_established_record(
        self, state: Established, record: Record | UnknownRecord
    ) -> bool:
        """The measured fast path: run a data record's established transition directly.

        Message, Ack, Read, Ping and Pong only loop in ``established``; this calls the very
        function the table below registers for that input (:data:`_ESTABLISHED_DATA`, checked
        against the table by ``tests/test_session.py``), without Automat's per-input dispatch.
        Returns whether it handled *record*; anything else goes through the machine.
        """
        transition = _ESTABLISHED_DATA.get(type(record))
        if transition is None:
            return False
        transition(self._machine, self, state, record)
        return True

    def _send_ids(self, kind: type[Ack] | type[Read], message_ids: Sequence[bytes]) -> None:
        state = self._data
        if type(state) is not Established:
            raise NotEstablished(f"session with {self.peer_uid} is {state.name}")
        ids = tuple(bytes(i) for i in message_ids)
        if any(len(i) != MESSAGE_ID_SIZE for i in ids):
            raise ValueError(f"message ids must be {MESSAGE_ID_SIZE} bytes")
        self._send_records(
            [
                kind(ids[start : start + MAX_IDS_PER_RECORD])
                for start in range(0, len(ids), MAX_IDS_PER_RECORD)
            ]
        )

    def _send_records(self, records: Sequence[Record], prefix: bytes = b"") -> None:
        data = prefix + b"".join(encode_frame(encode_record(r)) for r in records)
        if not data:
            return
        self._bytes_out += len(data)
        self._records_out += len(records)
        self._send_bytes(data)

    def _send_hello(self, agreement: KeyAgreement) -> None:
        records: list[Record] = [agreement.hello(self._sign)]
        mark = self._resume_mark(self.peer_uid) if self._resume_mark is not None else None
        if mark is not None and len(mark) == MESSAGE_ID_SIZE:
            records.insert(0, Resume(bytes(mark)))
        self._send_records(records, prefix=PROLOGUE)

    def _entering(self, data: _StateData) -> _StateData:
        """Keep the new state's data where the fast path and :attr:`state` read it."""
        self._data = data
        return data

    def _start_established(self, keys: SessionKeys) -> Established:
        """The ``established`` state's data: the keys, a fresh idle timer and the keepalive."""
        if self._handshake_deadline.active():
            self._handshake_deadline.cancel()
        self._version = keys.version
        keepalive = LoopingCall(self._machine.keepalive_due)
        keepalive.clock = self._reactor_time
        state = Established(
            keys.sealer,
            keys.opener,
            self._clock.callLater(self._idle_timeout, self._machine.idle_timed_out),
            keepalive,
        )
        self._entering(state)
        return state

    def _establish(self, state: Established) -> None:
        if self._decoder is not None:
            self._decoder.set_max_frame(MAX_FRAME)
        state.keepalive.start(self._keepalive_interval, now=False).addErrback(
            lambda failure: self.log.failure("keepalive failed", failure)
        )
        self.log.info(
            "session with {peer_uid} established (protocol version {version}, {role})",
            peer_uid=log_id(self.peer_uid),
            version=self._version,
            role="initiator" if self.initiator else "responder",
        )
        self._observer.session_established(self)

    def _end(
        self,
        left: _StateData,
        reason: str,
        *,
        goodbye: bool,
        transport_gone: bool,
        refused: bool,
    ) -> None:
        """Leave an active state: stop its timers, forget its keys, say goodbye, report once."""
        self._close_reason = reason
        self._decoder = None
        if self._handshake_deadline.active():
            self._handshake_deadline.cancel()
        left.stop()
        log = self.log.warn if refused else self.log.info
        log(
            "session with {peer_uid} closed in {state}: {reason}",
            peer_uid=log_id(self.peer_uid),
            state=self._data.name,
            reason=redact(reason),
        )
        if goodbye:
            self._send_records([Goodbye(_goodbye_reason(reason))])
        if not transport_gone:
            self._lose_connection()
        self._observer.session_closed(self, reason)


# -- the machine -----------------------------------------------------------------------------


def _handshaking_data(
    inputs: _SessionInputs, core: PeerSession, channel_binding: bytes
) -> Handshaking:
    state = Handshaking(
        KeyAgreement(
            local_uid=core.local_uid,
            peer_uid=core.peer_uid,
            initiator=core.initiator,
            versions=core._versions,
            channel_binding=channel_binding,
        )
    )
    core._entering(state)
    return state


def _established_data(inputs: _SessionInputs, core: PeerSession, keys: SessionKeys) -> Established:
    return core._start_established(keys)


def _closing_data(inputs: _SessionInputs, core: PeerSession, *args: Any) -> Closing:
    state = Closing()
    core._entering(state)
    return state


def _closed_data(inputs: _SessionInputs, core: PeerSession, *args: Any) -> Closed:
    state = Closed()
    core._entering(state)
    return state


_builder = TypeMachineBuilder(_SessionInputs, PeerSession)
connecting = _builder.state("connecting")
handshaking = _builder.state("handshaking", _handshaking_data)
established = _builder.state("established", _established_data)
# Entered upon inputs of every signature: typed loosely, as their factories take any arguments.
closing = _builder.state("closing", cast(Callable[..., Closing], _closing_data))
closed = _builder.state("closed", cast(Callable[..., Closed], _closed_data))

_RECORD_INPUTS = (
    _SessionInputs.message_received,
    _SessionInputs.ack_received,
    _SessionInputs.read_received,
    _SessionInputs.ping_received,
    _SessionInputs.pong_received,
)


def _refuse(reason: str) -> Callable[..., None]:
    """A transition output that closes because the peer broke the protocol."""

    def refuse(inputs: _SessionInputs, core: PeerSession, left: _StateData, *args: object) -> None:
        core._end(left, reason, goodbye=True, transport_gone=False, refused=True)

    refuse.__name__ = f"refuse({reason})"
    return refuse


# connecting: TLS is not up yet; we have sent nothing.


@connecting.upon(_SessionInputs.connection_made).to(handshaking)
def _start_handshake(inputs: _SessionInputs, core: PeerSession, channel_binding: bytes) -> None:
    state = core._data
    assert type(state) is Handshaking  # made by _handshaking_data before this output runs
    core._send_hello(state.agreement)


def _drop_early(reason: str) -> Callable[..., None]:
    """Close before TLS is up: no Goodbye (nothing was sent yet)."""

    def drop(inputs: _SessionInputs, core: PeerSession, *args: object) -> None:
        core._end(Connecting(), reason, goodbye=False, transport_gone=False, refused=True)

    drop.__name__ = f"drop({reason})"
    return drop


connecting.upon(_SessionInputs.hello_received).to(closing)(
    _drop_early("data before the connection was made")
)
for _input in _RECORD_INPUTS:
    connecting.upon(_input).to(closing)(_drop_early("data before the connection was made"))
connecting.upon(_SessionInputs.goodbye_received).to(closing)(
    _drop_early("data before the connection was made")
)
connecting.upon(_SessionInputs.hello_accepted).loop().returns(None)
connecting.upon(_SessionInputs.handshake_timed_out).to(closing)(_drop_early("handshake timeout"))
connecting.upon(_SessionInputs.idle_timed_out).loop().returns(None)
connecting.upon(_SessionInputs.keepalive_due).loop().returns(None)


@connecting.upon(_SessionInputs.protocol_failed).to(closing)
def _fail_early(inputs: _SessionInputs, core: PeerSession, reason: str) -> None:
    core._end(Connecting(), reason, goodbye=False, transport_gone=False, refused=True)


@connecting.upon(_SessionInputs.close).to(closing)
def _close_early(inputs: _SessionInputs, core: PeerSession, reason: str) -> None:
    core._end(Connecting(), reason, goodbye=False, transport_gone=False, refused=False)


@connecting.upon(_SessionInputs.connection_lost).to(closed)
def _lost_early(inputs: _SessionInputs, core: PeerSession, reason: str) -> None:
    core._end(Connecting(), reason, goodbye=False, transport_gone=True, refused=False)


# handshaking: our Hello is sent; only the peer's Hello (or its Goodbye) is acceptable.


@handshaking.upon(_SessionInputs.hello_received).loop()
def _check_hello(
    inputs: _SessionInputs, core: PeerSession, state: Handshaking, hello: Hello
) -> None:
    keys = state.agreement.accept(hello, core._peer_key)
    if isinstance(keys, str):
        inputs.protocol_failed(keys)
    else:
        inputs.hello_accepted(keys)


@handshaking.upon(_SessionInputs.hello_accepted).to(established)
def _establish(
    inputs: _SessionInputs, core: PeerSession, left: Handshaking, keys: SessionKeys
) -> None:
    state = core._data
    assert type(state) is Established  # made by _established_data before this output runs
    core._establish(state)


for _input in _RECORD_INPUTS:
    handshaking.upon(_input).to(closing)(_refuse("record before hello"))
handshaking.upon(_SessionInputs.connection_made).loop().returns(None)
handshaking.upon(_SessionInputs.handshake_timed_out).to(closing)(_refuse("handshake timeout"))
handshaking.upon(_SessionInputs.idle_timed_out).loop().returns(None)
handshaking.upon(_SessionInputs.keepalive_due).loop().returns(None)

# established: messages, acks, reads and keepalives flow both ways.


@established.upon(_SessionInputs.message_received).loop()
def _open_message(
    inputs: _SessionInputs, core: PeerSession, state: Established, message: Message
) -> None:
    try:
        body = state.opener.open(message.counter, message.message_id, message.body)
    except CascadeError as e:
        inputs.protocol_failed(f"message failed to open ({e.detail})")
        return
    core._observer.message_received(core, message.message_id, body, message.created)


@established.upon(_SessionInputs.ack_received).loop()
def _report_acks(inputs: _SessionInputs, core: PeerSession, state: Established, ack: Ack) -> None:
    core._observer.acks_received(core, ack.message_ids)


@established.upon(_SessionInputs.read_received).loop()
def _report_reads(
    inputs: _SessionInputs, core: PeerSession, state: Established, read: Read
) -> None:
    core._observer.reads_received(core, read.message_ids)


@established.upon(_SessionInputs.ping_received).loop()
def _answer_ping(inputs: _SessionInputs, core: PeerSession, state: Established, ping: Ping) -> None:
    core._send_records([Pong(ping.nonce)])


@established.upon(_SessionInputs.pong_received).loop()
def _note_pong(inputs: _SessionInputs, core: PeerSession, state: Established, pong: Pong) -> None:
    """Nothing to do: the idle timer was reset when the bytes arrived."""


@established.upon(_SessionInputs.keepalive_due).loop()
def _send_ping(inputs: _SessionInputs, core: PeerSession, state: Established) -> None:
    core._send_records([Ping(os.urandom(NONCE_SIZE))])


established.upon(_SessionInputs.hello_received).to(closing)(_refuse("unexpected second hello"))
established.upon(_SessionInputs.hello_accepted).loop().returns(None)
established.upon(_SessionInputs.connection_made).loop().returns(None)
established.upon(_SessionInputs.handshake_timed_out).loop().returns(None)
established.upon(_SessionInputs.idle_timed_out).to(closing)(_refuse("idle timeout"))

# handshaking and established end the same ways.

for _active in (handshaking, established):

    @_active.upon(_SessionInputs.protocol_failed).to(closing)
    def _fail(inputs: _SessionInputs, core: PeerSession, left: _StateData, reason: str) -> None:
        core._end(left, reason, goodbye=True, transport_gone=False, refused=True)

    @_active.upon(_SessionInputs.close).to(closing)
    def _close(inputs: _SessionInputs, core: PeerSession, left: _StateData, reason: str) -> None:
        core._end(left, reason, goodbye=True, transport_gone=False, refused=False)

    @_active.upon(_SessionInputs.goodbye_received).to(closing)
    def _peer_goodbye(
        inputs: _SessionInputs, core: PeerSession, left: _StateData, goodbye: Goodbye
    ) -> None:
        reason = f"peer said goodbye: {_printable(goodbye.reason)}"
        core._end(left, reason, goodbye=False, transport_gone=False, refused=False)

    @_active.upon(_SessionInputs.connection_lost).to(closed)
    def _lost(inputs: _SessionInputs, core: PeerSession, left: _StateData, reason: str) -> None:
        core._end(left, reason, goodbye=False, transport_gone=True, refused=False)


# closing: we dropped the connection and wait for the transport to go; closed: all is over.
# Both ignore every late input.

closing.upon(_SessionInputs.connection_lost).to(closed).returns(None)
closed.upon(_SessionInputs.connection_lost).loop().returns(None)
for _ended in (closing, closed):
    for _late_input in (
        _SessionInputs.connection_made,
        _SessionInputs.hello_received,
        _SessionInputs.hello_accepted,
        *_RECORD_INPUTS,
        _SessionInputs.goodbye_received,
        _SessionInputs.protocol_failed,
        _SessionInputs.close,
        _SessionInputs.handshake_timed_out,
        _SessionInputs.idle_timed_out,
        _SessionInputs.keepalive_due,
    ):
        _ended.upon(_late_input).loop().returns(None)

_SessionMachine = _builder.build()


#: The established state's data-record transitions (each only loops there), by record type:
#: :meth:`PeerSession._deliver_established_record` calls them directly.
_ESTABLISHED_DATA: dict[type, Callable[[Any, PeerSession, Established, Any], None]] = {
    Message: _open_message,
    Ack: _report_acks,
    Read: _report_reads,
    Ping: _answer_ping,
    Pong: _note_pong,
}
