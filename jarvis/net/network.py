"""The peer network: listening, dialling contacts with backoff, one session per contact.

:class:`PeerNetwork` owns every peer connection of a node.  The daemon listens with
:meth:`PeerNetwork.server_factory` (a pinned mutual-TLS factory for a ``strports`` service);
the core asks it to :meth:`~PeerNetwork.connect` to contacts and hears back through a
:class:`NetworkObserver`: the :class:`~jarvis.protocol.session.PeerSession` events, filtered so
that at most one session per contact is reported established at a time, plus
``peer_status_changed`` whenever a contact goes offline, connecting or online.

* A :class:`~jarvis.net.dialling.Dialler` per wanted contact (a Twisted ``ClientService`` per
  run, each round an address race) tries the contact's addresses; after a full round fails it
  waits ``min(initial * 2**rounds, max)`` plus a jitter of up to *initial* seconds (Twisted's
  :func:`~twisted.application.internet.backoffPolicy`).  It stops once a session with the
  contact is established (either direction; an attempt in flight still finishes) and the
  network restarts it when that session ends, if the contact is still wanted.  A contact with
  no address is not dialled until :meth:`PeerNetwork.redial`.
* When both sides dial at once there are two sessions; the one whose initiator has the lower
  uid survives (both sides compute the same), the other is closed with ``"duplicate
  session"``.  Between two sessions with the same initiator, the newer survives.
* Every connection starts with the pre-TLS knock (:mod:`jarvis.net.knock`): a listener
  writes nothing until a knock made with a contact's key arrives, and each dial sends one
  before its ClientHello.  Refusals are counted in :attr:`PeerNetwork.knock_refusals`.
* Inbound peers whose key is not an acceptable contact are refused inside the TLS handshake,
  before any application byte, and counted in :attr:`PeerNetwork.refused_count`.
* The listener is wrapped in :class:`~jarvis.net.admission.AdmissionControl`: it caps the
  connections that have not yet authenticated (total, per source, below the descriptor limit),
  dropping the oldest first, and logs refusals as one aggregated line a minute.  Contacts' uids
  and addresses are logged only as :func:`jarvis.common.logs.log_id` pseudonyms.

See ``docs/net.md`` for the exact observer contract, timeouts and status figures.

This module must not parse records or decide who is a contact (the
:class:`ContactDirectory` does), keep messages (the core's outbox does) or log message
content, keys or signatures.
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.common.errors import InvalidInput
from jarvis.common.logs import log_id, redact
from jarvis.crypto.identity import IdentityKey, uid_for_public_bytes
from jarvis.crypto.linkcode import check_address
from jarvis.net.admission import AdmissionControl
from jarvis.net.dialling import ConnectFailed, Dialler
from jarvis.net.eyeballs import AddressRace, RaceFailed
from jarvis.net.knock import (
    CLOSED_BEFORE_TLS,
    DEFAULT_KNOCK_DEADLINE,
    KnockGateFactory,
    KnockSenderFactory,
    refusal_log,
)
from jarvis.net.peer import (
    DEFAULT_CLOSE_TIMEOUT,
    PeerFactory,
    PeerProtocol,
    describe_failure,
)
from jarvis.net.relay import RELAY_PREFIX, RelayEndpoint, RelayServerCreator
from jarvis.net.tls import (
    ContextCache,
    client_creator,
    peer_public_bytes_of,
    server_creator,
)
from jarvis.net.tls_batching import BatchingTLSFactory
from jarvis.net.transfer import TransferReceiver, TransferSender
from jarvis.net.transfer_link import (
    TRANSFER_PREFACE,
    TRANSFER_PULL_PREFACE,
    InboundDemux,
    RelayedDataProtocol,
    TransferDialFactory,
    TransferDialProtocol,
)
from jarvis.protocol import relay as relay_wire
from jarvis.protocol.knock import (
    NONCE_BYTES,
    WINDOW_SECONDS,
    Accepted,
    KnockKeys,
    KnockVerifier,
    Refused,
    Verdict,
    make_knock,
    window_of,
)
from jarvis.protocol.mailbox_link import BadMailboxLink, parse_link
from jarvis.protocol.peerpath import (
    UPGRADED,
    PeerPath,
    accepted,
    dialled,
    transport_rank,
)
from jarvis.protocol.peerpath import relayed as relayed_path
from jarvis.protocol.session import PeerSession, SessionObserver

#: The reason given to the session that loses the simultaneous-connect tie-break.
DUPLICATE_SESSION = "duplicate session"
#: The reason given to sessions closed by :meth:`PeerNetwork.stop`.
SHUTTING_DOWN = "shutting down"
#: The reason given to sessions closed by :meth:`PeerNetwork.forget`.
FORGOTTEN = "contact forgotten"

PeerState = Literal["offline", "connecting", "online"]
#: The transport rank of a direct TCP session: nothing to upgrade to.
_BEST_TRANSPORT = transport_rank("direct")

log = Logger(namespace="jarvis.net.network")


#: Seconds before a knock window starts that its hint table is made (off the reactor).
KNOCK_TABLE_LEAD = 5.0
#: Seconds a data connection we dialled stays open after its file is complete, for the next
#: file to the same contact (a folder's files follow each other within milliseconds); shorter
#: than :data:`NEXT_FILE_WAIT`, so we never start a file on one the receiver is closing.
IDLE_LINK_KEEP = 2.0
#: Seconds the receiving side waits on a data connection for the sender's next file.
NEXT_FILE_WAIT = 10.0
#: Seconds a data connection may take to deliver its ``Complete`` once the receiver said so
#: over the session (:meth:`PeerNetwork.finish_stream`) before it is dropped.
COMPLETE_GRACE = 5.0
#: Seconds after a contacts change (removed, key learnt, a knock the table missed) before the
#: knock hint table is made anew off the reactor: a burst of changes makes one table.
KNOCK_REBUILD_DELAY = 0.25


@dataclass(frozen=True)
class PeerStatus:
    """What the network knows about one contact's connectivity, at one moment.

    Counters run from the network's start (or from :meth:`PeerNetwork.connect` for a contact
    first seen then) and survive reconnections; times are ``reactor.seconds()`` values
    (seconds since the epoch on a real reactor).

    :ivar uid: the contact.
    :ivar state: ``"online"`` (a session is established), ``"connecting"`` (a connection is
        being made or handshaking, in either direction) or ``"offline"`` (neither; the dialler
        may be waiting to retry).
    :ivar connect_attempts: outbound connection attempts started.
    :ivar connect_successes: attempts that reached an established session (sessions dialled).
    :ivar connect_failures: attempts that ended before that.
    :ivar sessions_accepted: inbound connections that reached an established session.
    :ivar last_error: why the last failed attempt failed, or ``None``.
    :ivar last_error_at: when it failed, or ``None``.
    :ivar connected_since: when the contact came online, or ``None`` while not online.
    :ivar offline_since: while not online, when its last session ended (or, if none did, when
        the network began to track the contact); ``None`` while online.
    :ivar bytes_in: session bytes received (after TLS, prologue included).
    :ivar bytes_out: session bytes sent.
    :ivar messages_in: messages received.
    :ivar messages_out: messages sent.
    """

    uid: str
    state: PeerState = "offline"
    connect_attempts: int = 0
    connect_successes: int = 0
    connect_failures: int = 0
    sessions_accepted: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    connected_since: float | None = None
    offline_since: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    #: how the live session runs: ``"direct"`` or ``"relayed"`` (``None`` while not online)
    path: str | None = None


class ClientEndpoint(Protocol):
    """The part of ``IStreamClientEndpoint`` the network uses."""

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """Connect *protocolFactory*'s protocol; fire with it once connected."""
        ...


class ContactDirectory(Protocol):
    """The network's view of the contact list (the core implements it)."""

    def is_acceptable(self, uid: str) -> bool:
        """Whether *uid* is a contact and not blocked: may it connect, may we talk to it?"""
        ...

    def public_key(self, uid: str) -> bytes | None:
        """The contact's raw 32-byte Ed25519 public key, or ``None`` if not a contact."""
        ...

    def addresses(self, uid: str) -> tuple[str, ...]:
        """Where to dial the contact: ``"host:port"``, IPv6 as ``"[::1]:7770"``."""
        ...

    def acceptable_uids(self) -> Iterable[str]:
        """Every uid for which :meth:`is_acceptable` holds (whose knock the listener tries)."""
        ...


class NetworkObserver(SessionObserver, Protocol):
    """Receives the session events of :class:`PeerNetwork` plus status changes."""

    def peer_status_changed(self, uid: str, status: PeerStatus) -> None:
        """*uid*'s :attr:`PeerStatus.state` changed; *status* is the new snapshot."""
        ...


class InvalidPeerAddress(InvalidInput):
    """A contact's address is not ``host:port`` (IPv6 in brackets: ``[2001:db8::1]:7770``).

    Correct the address in the contact's card, or ask the contact for a new link code.
    """


def parse_address(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` for IPv6) into host and port.

    :raises InvalidPeerAddress: if the text is not an address that link codes and cards accept
        (:func:`jarvis.crypto.linkcode.check_address`, the one rule for addresses).
    """
    try:
        check_address(text)
    except ValueError as e:
        raise InvalidPeerAddress(str(e)) from None
    host, _, port_text = text.rpartition(":")
    if host.startswith("["):
        host = host[1:-1]
    return host, int(port_text)


def backoff(
    initial: float, maximum: float, rng: Callable[[], float] = random.random
) -> Callable[[int], float]:
    """Return the retry policy: ``min(initial * 2**n, maximum) + rng() * initial`` seconds.

    :param initial: the delay after the first failed round (before jitter).
    :param maximum: the cap (before jitter).
    :param rng: returns a float in [0, 1); the jitter keeps two nodes from retrying in step.
    """
    return backoffPolicy(
        initialDelay=initial, maxDelay=maximum, factor=2.0, jitter=lambda: rng() * initial
    )


class _TrackedSession(PeerSession):
    """A :class:`PeerSession` that counts the messages sent through it."""

    messages_out = 0

    def send_message(self, message_id: bytes, body: bytes, created_ms: int) -> None:
        super().send_message(message_id, body, created_ms)
        self.messages_out += 1


@dataclass(eq=False)
class _Entry:
    """One live session and what the network knows about it."""

    peer: _Peer
    session: _TrackedSession
    protocol: PeerProtocol
    attempt: _Attempt | None
    path: PeerPath
    reported: bool = False  # session_established was forwarded
    closed_reported: bool = False  # session_closed was forwarded


class _Peer:
    """The network's mutable record of one contact."""

    def __init__(self, uid: str, dialler: Dialler, since: float) -> None:
        self.uid = uid
        self.dialler = dialler
        self.wanted = False
        self.active: _Entry | None = None
        self.entries: list[_Entry] = []
        self.attempts: set[_Attempt] = set()
        self.state: PeerState = "offline"
        self.connect_attempts = self.connect_successes = self.connect_failures = 0
        self.sessions_accepted = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.connected_since: float | None = None
        self.offline_since = since  # meaningful while not online
        self.bytes_in = self.bytes_out = self.messages_in = self.messages_out = 0
        # knock with the uid key instead of the pair key (see PeerNetwork._knock_for)
        self.uid_knock = False
        # a session was established (so each side has the other's key: no uid key any more)
        self.keys_exchanged = False

    def current_state(self) -> PeerState:
        if self.active is not None:
            return "online"
        if self.attempts or self.entries:
            return "connecting"
        return "offline"

    def snapshot(self) -> PeerStatus:
        live = [e.session for e in self.entries]
        return PeerStatus(
            uid=self.uid,
            state=self.current_state(),
            connect_attempts=self.connect_attempts,
            connect_successes=self.connect_successes,
            connect_failures=self.connect_failures,
            sessions_accepted=self.sessions_accepted,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            connected_since=self.connected_since,
            offline_since=None if self.active is not None else self.offline_since,
            bytes_in=self.bytes_in + sum(s.stats.bytes_in for s in live),
            bytes_out=self.bytes_out + sum(s.stats.bytes_out for s in live),
            messages_in=self.messages_in,
            messages_out=self.messages_out + sum(s.messages_out for s in live),
            path=self.path(),
        )

    def path(self) -> str | None:
        if self.active is None:
            return None
        return self.active.path.kind


class _Attempt:
    """One outbound connection attempt: TCP connect, TLS, then the session's hello."""

    def __init__(
        self,
        network: PeerNetwork,
        peer: _Peer,
        creator: Any,
        path: PeerPath,
        address: str | None,
    ) -> None:
        self.network = network
        self.peer = peer
        #: a PinnedClientCreator, or a RelayServerCreator (both keep ``refusal``)
        self.creator = creator
        self.path = path
        self.address = address
        self.result: Deferred[None] = Deferred(self._cancel)
        self.connecting: Deferred[Any] | None = None
        self.protocol: PeerProtocol | None = None
        self.resolved = False
        self.closed_before_tls = False

    # ConnectionHooks, for the PeerFactory of this attempt

    def connection_started(self, protocol: PeerProtocol) -> None:
        self.protocol = protocol
        self.network._track(protocol)

    def open_session(self, protocol: PeerProtocol, peer_uid: str) -> PeerSession | None:
        return self.network._open_session(protocol, peer_uid, self)

    def connection_ended(self, protocol: PeerProtocol, reason: str) -> None:
        self.network._connection_ended(protocol, reason)
        if self.creator.refusal is not None:
            reason = f"refused the server: {self.creator.refusal}"
        elif self.closed_before_tls:
            reason = CLOSED_BEFORE_TLS
        self.fail(reason)

    def peer_closed_before_tls(self) -> None:
        self.closed_before_tls = True
        # A contact that added us by uid alone does not know our key until a first session:
        # alternate keys until then.  Not after (a locked or busy peer also closes early).
        if not self.peer.keys_exchanged:
            self.peer.uid_knock = not self.peer.uid_knock

    # outcome

    def connected(self, _: object) -> None:
        self.connecting = None

    def connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        if not self.resolved:
            self.fail(describe_failure(failure))

    # The result fires before the bookkeeping: the bookkeeping notifies the observer, whose
    # code may run anything, including stop() (which cancels this result).

    def succeed(self) -> None:
        if not self.resolved:
            self.resolved = True
            self.result.callback(None)
            self.network._attempt_ended(self, None)

    def fail(self, reason: str) -> None:
        if not self.resolved:
            self.resolved = True
            self.result.errback(ConnectFailed(reason))
            self.network._attempt_ended(self, reason)

    def _cancel(self, _: Deferred[None]) -> None:
        if not self.resolved:
            self.resolved = True
            self.network._attempt_ended(self, None, counted=False)
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.protocol is not None:
            self.protocol.abort()


class _InboundHooks:
    """ConnectionHooks of the listening side (or of the accepting end of a relayed join)."""

    def __init__(self, network: PeerNetwork, path: PeerPath | None = None) -> None:
        self.network = network
        self.path = path

    def connection_started(self, protocol: PeerProtocol) -> None:
        self.network._track(protocol)

    def open_session(self, protocol: PeerProtocol, peer_uid: str) -> Any:
        # the first bytes tell a session from a file transfer's data connection
        return self.network._inbound_demux(protocol, peer_uid, self.path)

    def connection_ended(self, protocol: PeerProtocol, reason: str) -> None:
        self.network._connection_ended(protocol, reason)


class _Relay:
    """The observer every session reports to; the network filters and forwards."""

    def __init__(self, network: PeerNetwork) -> None:
        self.network = network

    def session_established(self, session: PeerSession) -> None:
        self.network._session_established(session)

    def message_received(
        self, session: PeerSession, message_id: bytes, body: bytes, created_ms: int
    ) -> None:
        entry = self.network._entries.get(id(session))
        if entry is not None:
            entry.peer.messages_in += 1
        self.network._forward("message_received", session, message_id, body, created_ms)

    def acks_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        self.network._forward("acks_received", session, message_ids)

    def reads_received(self, session: PeerSession, message_ids: tuple[bytes, ...]) -> None:
        self.network._forward("reads_received", session, message_ids)

    def session_closed(self, session: PeerSession, reason: str) -> None:
        self.network._session_closed(session, reason)

    def session_writable(self, session: PeerSession) -> None:
        if hasattr(self.network._observer, "session_writable"):
            self.network._forward("session_writable", session)


def tcp_endpoint(reactor: Any, host: str, port: int, timeout: float) -> ClientEndpoint:
    """Return the TCP endpoint that dials *host* (an IP address or a name) on *port*.

    An IP address (the usual case in link codes) gets a plain ``TCP4ClientEndpoint`` or
    ``TCP6ClientEndpoint``: ``HostnameEndpoint`` would resolve even a literal on a thread and
    cost ten times as much per dial (527 µs against 41 µs measured here), which adds up when a
    daemon redials all its contacts at once.  A name gets ``HostnameEndpoint`` (resolution,
    then every address tried, "happy eyeballs").
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=timeout)
    else:
        kind = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
        endpoint = kind(reactor, host, port, timeout=timeout)
    return cast(ClientEndpoint, endpoint)


class PeerNetwork:
    """All peer connections of one node: listening, dialling, one session per contact.

    :param reactor: provides TCP, name resolution and time (``IReactorTime``).
    :param identity: our identity key (TLS certificate and hello signatures).
    :param directory: who our contacts are, their keys and addresses.
    :param observer: receives session events and status changes.
    :param keepalive_interval: seconds between keepalive pings on a session.
    :param idle_timeout: seconds of silence after which a session is dropped.
    :param handshake_timeout: seconds for the TLS handshake (from TCP connect, or from the
        knock), and again for the session's hello exchange (from TLS completion); a listener
        waits at most this long, and 5 s at most, for the knock.
    :param backoff_initial: seconds before the second round of dialling.
    :param backoff_max: the longest wait between rounds (before jitter).
    :param rng: returns floats in [0, 1) for the jitter.
    :param connect_timeout: seconds for a TCP connection attempt.
    :param close_timeout: seconds a graceful close may take before the connection is aborted.
    :param endpoint_for: makes the TCP endpoint for ``(host, port)``; default
        :func:`tcp_endpoint` (tests pass in-memory endpoints, a proxy could go here).
    :param admission: keyword arguments of the listener's
        :class:`~jarvis.net.admission.AdmissionControl` (its caps; defaults otherwise).
    :param knock: send the pre-TLS knock when dialling and require it when listening
        (:mod:`jarvis.net.knock`); ``False`` behaves as a Jarvis from before the knock.
    :param random_bytes: returns *n* random bytes (knock nonces).
    :param run_blocking: runs a blocking callable on a thread and returns a Deferred (the
        node's ``run_blocking``): the contacts' knock pair keys (one X25519 each, 52 ms for
        1,000 contacts) are computed through it when the network is made and when a contact's
        key is learnt, not on the reactor.  ``None``: each is computed when first needed.
    :param relay_links: the mailbox links through whose relay a contact may be reached
        (:mod:`jarvis.net.relay`), tried after its addresses; ``None``: no relay.
    :param relay_timeout: seconds a relayed attempt waits for the contact at the relay.
    """

    def __init__(
        self,
        reactor: Any,
        identity: IdentityKey,
        directory: ContactDirectory,
        observer: NetworkObserver,
        *,
        keepalive_interval: float = 30.0,
        idle_timeout: float = 90.0,
        handshake_timeout: float = 10.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        rng: Callable[[], float] = random.random,
        connect_timeout: float = 10.0,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        endpoint_for: Callable[[str, int], ClientEndpoint] | None = None,
        admission: dict[str, Any] | None = None,
        knock: bool = True,
        random_bytes: Callable[[int], bytes] = os.urandom,
        run_blocking: Callable[..., Deferred[Any]] | None = None,
        relay_links: Callable[[str], Sequence[str]] | None = None,
        relay_timeout: float = 35.0,
    ) -> None:
        self._reactor = reactor
        self._relay_links = relay_links
        self._relay_timeout = relay_timeout
        self._identity = identity
        self._directory = directory
        self._observer = observer
        self._keepalive_interval = keepalive_interval
        self._idle_timeout = idle_timeout
        self._handshake_timeout = handshake_timeout
        self._backoff_initial = backoff_initial
        self._rng = rng
        self._policy = backoff(backoff_initial, backoff_max, rng)
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._endpoint_for = endpoint_for or self._tcp_endpoint
        self._peers: dict[str, _Peer] = {}
        self._entries: dict[int, _Entry] = {}
        self._protocols: dict[PeerProtocol, Deferred[None]] = {}
        self._stopping = False
        self._relay = _Relay(self)
        # file transfer data connections (jarvis.net.transfer_link), by transfer id
        self._links_in: dict[bytes, PeerProtocol] = {}
        self._links_out: dict[bytes, Any] = {}
        # data connections being made (an address race, a relay join), by transfer id
        self._data_dials: dict[bytes, Deferred[Any]] = {}
        # the direct address races among _data_dials (not relay joins), by transfer id
        self._direct_dials: dict[bytes, Deferred[Any]] = {}
        self._undecided: set[PeerProtocol] = set()
        # data connections we dialled whose file is complete, kept a while for the next file
        # to the same contact (oldest first), each with the call that closes it
        self._idle_links: dict[str, list[tuple[TransferDialProtocol, Any]]] = {}
        # transfers complete by the session whose data connection ends its stream by itself,
        # each with the call that drops it if it does not (finish_stream)
        self._finishing: dict[bytes, Any] = {}
        # one SSL.Context for the listener and every dial (built once per certificate)
        self._contexts = ContextCache(identity)
        self._server_creator = server_creator(
            identity, self._accept_uid, on_refused=self._refused, contexts=self._contexts
        )
        self._server_factory = BatchingTLSFactory(
            cast(IOpenSSLServerConnectionCreator, self._server_creator),
            False,
            cast(IProtocolFactory, self._peer_factory(_InboundHooks(self), initiator=False)),
            clock=reactor,
        )
        self._knock = knock
        self._random_bytes = random_bytes
        self._knock_keys = KnockKeys(identity.private_bytes(), identity.uid)
        self._knock_verifier = KnockVerifier(
            identity.uid,
            on_stale=self._knock_table_stale if knock and run_blocking is not None else None,
        )
        self._run_blocking = run_blocking
        self._knock_rebuild_call: Any = None
        self._keys_in_flight: set[str] = set()
        #: fires once the contacts' knock keys known at start are computed (``None``: nothing
        #: to compute); LAN discovery waits for it and shares :attr:`knock_keys`
        self.knock_keys_prepared: Deferred[None] | None = None
        self._knock_table_call: Any = None
        if knock:
            self.knock_keys_prepared = self.prepare_knock_keys(directory.acceptable_uids())
            if run_blocking is not None:
                # the hint table of each window is made off the reactor, once the keys are
                current = window_of(reactor.seconds())
                if self.knock_keys_prepared is None:
                    self._prepare_knock_table(current)
                else:

                    def then(result: object) -> object:
                        self._prepare_knock_table(current)
                        return result

                    self.knock_keys_prepared.addBoth(then)
        #: Connections refused at the knock, counted by reason and logged sparingly.
        self.knock_refusals = refusal_log(reactor)
        self._gate_factory = KnockGateFactory(
            cast(IProtocolFactory, self._server_factory),
            self._verify_knock,
            reactor,
            rng,
            self.knock_refusals,
            deadline=min(DEFAULT_KNOCK_DEADLINE, handshake_timeout),
        )
        # outermost: counts each inbound connection from accept to its authenticated hello,
        # through the knock and TLS
        self._admission = AdmissionControl(
            reactor,
            cast(IProtocolFactory, self._gate_factory if knock else self._server_factory),
            **(admission or {}),
        )

    # -- public API ---------------------------------------------------------------------------

    @property
    def refused_count(self) -> int:
        """How many inbound peers were refused in the TLS handshake so far."""
        return self._server_creator.refused_count

    @property
    def connections(self) -> int:
        """How many peer connections are open, in any stage (TLS, hello, established)."""
        return len(self._protocols)

    @property
    def admission(self) -> AdmissionControl:
        """The listener's admission control (pre-authentication caps and their figures)."""
        return self._admission

    def server_factory(self) -> IProtocolFactory:
        """Return the factory to listen with (``strports.service("tcp:7770", factory)``)."""
        return cast(IProtocolFactory, self._admission)

    def relayed_server_factory(self, path: PeerPath) -> IProtocolFactory:
        """Return a factory for the accepting (TLS server) end of a relayed connection.

        The knock and pinned TLS run as on the listener; the session is marked with *path*
        (``peerpath.relayed(...)``), so both ends of the join rank it as relayed and a direct
        session replaces it.  Not under the listener's admission control: we dialled the relay.
        """
        tls = BatchingTLSFactory(
            cast(IOpenSSLServerConnectionCreator, self._server_creator),
            False,
            cast(
                IProtocolFactory,
                self._peer_factory(_InboundHooks(self, path), initiator=False),
            ),
            clock=self._reactor,
        )
        if not self._knock:
            return cast(IProtocolFactory, tls)
        return cast(
            IProtocolFactory,
            KnockGateFactory(
                cast(IProtocolFactory, tls),
                self._verify_knock,
                self._reactor,
                self._rng,
                self.knock_refusals,
                deadline=min(DEFAULT_KNOCK_DEADLINE, self._handshake_timeout),
            ),
        )

    def connect(self, uid: str) -> None:
        """Keep a connection to contact *uid*: dial now unless already online (on a direct
        transport) or dialling.

        :raises ValueError: if *uid* is our own uid.
        """
        peer = self._want(uid)
        if self._knock:
            self.prepare_knock_keys((uid,))  # a new contact: its pair key off the reactor
        if self._may_dial(peer):
            peer.dialler.start()

    def redial(self, uid: str) -> None:
        """Dial *uid* at once with a fresh backoff (the user asked, or its addresses changed).

        Does nothing while a direct session with *uid* is established (a relayed one is
        upgraded if a dial succeeds).

        :raises ValueError: if *uid* is our own uid.
        """
        peer = self._want(uid)
        if self._may_dial(peer):
            peer.dialler.redial()

    def forget(self, uid: str) -> None:
        """Stop dialling *uid* and close its sessions (it was removed or blocked).

        Inbound connections are still governed by the directory's ``is_acceptable``.
        """
        peer = self._peers.get(uid)
        if peer is None:
            return
        peer.wanted = False
        self._knock_verifier.invalidate()
        peer.dialler.cancel()
        for entry in list(peer.entries):
            entry.session.close(FORGOTTEN)
        self._update_state(peer)
        self._drop_if_idle(peer)

    def session(self, uid: str) -> PeerSession | None:
        """Return the established session with *uid*, or ``None``."""
        peer = self._peers.get(uid)
        return peer.active.session if peer is not None and peer.active is not None else None

    def status(self, uid: str) -> PeerStatus:
        """Return *uid*'s current status (all zeros and offline for an unknown uid)."""
        peer = self._peers.get(uid)
        return peer.snapshot() if peer is not None else PeerStatus(uid=uid)

    def statuses(self) -> dict[str, PeerStatus]:
        """Return the status of every contact we dial or that has a session."""
        return {uid: peer.snapshot() for uid, peer in self._peers.items()}

    def stop(self) -> Deferred[None]:
        """Stop dialling, say goodbye on every session, and wait until all connections closed.

        New inbound connections are dropped from now on.  Each graceful close is bounded by
        *close_timeout*, so the Deferred fires within about that time.
        """
        self._stopping = True
        for call in (self._knock_table_call, self._knock_rebuild_call):
            if call is not None and call.active():
                call.cancel()
        self._knock_table_call = self._knock_rebuild_call = None
        self._admission.stop()
        self._gate_factory.stop()
        for peer in list(self._peers.values()):
            peer.dialler.cancel()
        for entry in list(self._entries.values()):
            entry.session.close(SHUTTING_DOWN)
        for protocol in list(self._protocols):
            if protocol.session is None:
                protocol.lose_connection()
        for tid in list(self._links_in) + list(self._links_out) + list(self._data_dials):
            self.stop_transfer(tid)
        for links in list(self._idle_links.values()):
            for link, _closing in list(links):
                self._close_idle(link)
        for late in self._finishing.values():
            if late.active():
                late.cancel()
        self._finishing.clear()
        for protocol in list(self._undecided):
            protocol.abort()
        waiting = list(self._protocols.values())
        done: Deferred[Any] = defer.gatherResults(waiting) if waiting else defer.succeed(None)
        return done.addCallback(lambda _: None)

    # -- connections --------------------------------------------------------------------------

    def _tcp_endpoint(self, host: str, port: int) -> ClientEndpoint:
        return tcp_endpoint(self._reactor, host, port, self._connect_timeout)

    def _peer_factory(self, hooks: Any, *, initiator: bool) -> PeerFactory:
        return PeerFactory(
            self._reactor,
            hooks,
            initiator=initiator,
            handshake_timeout=self._handshake_timeout,
            close_timeout=self._close_timeout,
        )

    def _want(self, uid: str) -> _Peer:
        if uid == self._identity.uid:
            raise ValueError("cannot connect to our own uid")
        peer = self._peer(uid)
        peer.wanted = True
        return peer

    def _peer(self, uid: str) -> _Peer:
        peer = self._peers.get(uid)
        if peer is None:
            dialler = Dialler(
                self._reactor,
                lambda: self._candidates(uid),
                lambda address: self._dial(uid, address),
                self._policy,
                label=log_id(uid),
            )
            peer = self._peers[uid] = _Peer(uid, dialler, self._reactor.seconds())
        return peer

    def _may_dial(self, peer: _Peer) -> bool:
        """Whether to dial: no live session, or one on a worse transport than direct."""
        if self._stopping:
            return False
        active = peer.active
        return active is None or transport_rank(active.path.kind) < _BEST_TRANSPORT

    def _drop_if_idle(self, peer: _Peer) -> None:
        if not peer.wanted and not peer.entries and not peer.attempts:
            if self._peers.get(peer.uid) is peer:
                del self._peers[peer.uid]

    def _refused(self, uid: str, reason: str) -> None:
        self._admission.summary.note("refused in TLS")

    def _accept_uid(self, uid: str) -> bool:
        if self._stopping or uid == self._identity.uid:
            return False
        return bool(self._directory.is_acceptable(uid))

    def _dial(self, uid: str, address: str) -> Deferred[None]:
        if address.startswith(RELAY_PREFIX):
            return self._dial_relay(uid, address[len(RELAY_PREFIX) :])
        peer = self._peer(uid)
        try:
            host, port = parse_address(address)
        except InvalidPeerAddress as e:
            peer.connect_attempts += 1
            self._record_failure(peer, str(e))
            return defer.fail(e)
        found = getattr(self._directory, "discovered_addresses", None)
        on_lan = found is not None and address in found(uid)
        path = dialled(address, found_on_lan=on_lan)
        log.debug("dialling {uid} at {address}", uid=log_id(uid), address=log_id(address))
        return self._dial_endpoint(peer, self._endpoint_for(host, port), path, address)

    def dial_via(self, uid: str, endpoint: ClientEndpoint, path: PeerPath) -> Deferred[None]:
        """Make one outbound attempt to contact *uid* through *endpoint*, its session marked
        with *path* (a relay's client endpoint gives ``peerpath.relayed(...)``).

        The knock, pinned TLS and hello run as for any dial; the session takes part in the
        one-session rule (a better transport wins, see :meth:`path_of`).  The Deferred fires
        when the session is established and fails with :class:`ConnectFailed` otherwise;
        cancelling it abandons the attempt.

        :raises ValueError: if *uid* is our own uid.
        """
        if uid == self._identity.uid:
            raise ValueError("cannot connect to our own uid")
        return self._dial_endpoint(self._peer(uid), endpoint, path, None)

    def path_of(self, uid: str) -> PeerPath | None:
        """The path of the live session with *uid* and why, or ``None`` while there is none.

        Of two live sessions with one contact the better transport survives (direct TCP over
        relayed, :func:`jarvis.protocol.peerpath.transport_rank`), whichever came first; on
        the same transport the tie-break of docs/net.md applies.  While the live session is
        relayed the dialler keeps trying the contact's addresses in the background.
        """
        peer = self._peers.get(uid)
        return peer.active.path if peer is not None and peer.active is not None else None

    def _pinned_factory(
        self,
        creator: Any,
        is_client: bool,
        inner: IProtocolFactory,
        knock_to: _Peer | None = None,
        closed_before_tls: Callable[[], None] = lambda: None,
    ) -> IProtocolFactory:
        """The factory of an outbound connection: pinned TLS as *creator* (the TLS client or,
        for a relay join, the server) around *inner*, behind the knock to *knock_to* when
        given (*closed_before_tls* is told when the peer closes before TLS starts).  Sessions
        and data connections, dialled or joined at a relay, are all built here."""
        tls = BatchingTLSFactory(creator, is_client, inner, clock=self._reactor)
        if knock_to is None:
            return cast(IProtocolFactory, tls)
        peer = knock_to
        return cast(
            IProtocolFactory,
            KnockSenderFactory(
                cast(IProtocolFactory, tls), lambda: self._knock_for(peer), closed_before_tls
            ),
        )

    def _dial_endpoint(
        self,
        peer: _Peer,
        endpoint: ClientEndpoint,
        path: PeerPath,
        address: str | None,
        *,
        creator: Any = None,
        initiator: bool = True,
        knock: bool = True,
    ) -> Deferred[None]:
        """One outbound attempt through *endpoint*: (the knock,) pinned TLS as *creator*
        (default: our client creator) and the session's hello, as initiator or not (a relayed
        attempt may be the TLS server of its join and sends no knock: the relay joined us)."""
        if creator is None:
            creator = client_creator(self._identity, peer.uid, contexts=self._contexts)
        attempt = _Attempt(self, peer, creator, path, address)
        peer.connect_attempts += 1
        peer.attempts.add(attempt)
        factory = self._pinned_factory(
            creator,
            initiator,
            cast(IProtocolFactory, self._peer_factory(attempt, initiator=initiator)),
            peer if knock else None,
            attempt.peer_closed_before_tls,
        )
        connecting = endpoint.connect(factory)
        attempt.connecting = connecting
        connecting.addCallbacks(attempt.connected, attempt.connect_failed)
        self._update_state(peer)
        return attempt.result

    # -- relay (jarvis.net.relay) ----------------------------------------------------------------

    def _candidates(self, uid: str) -> tuple[str, ...]:
        """The contact's addresses, then ``relay:<link>`` for each relay that may join us.

        While a live session runs (relayed: the dialler keeps looking for a direct path), the
        relays are left out: a second relayed session would only replace the first."""
        addresses = tuple(self._directory.addresses(uid))
        peer = self._peers.get(uid)
        live = peer is not None and peer.active is not None
        if live or self._relay_links is None or not self._directory.public_key(uid):
            return addresses
        return addresses + tuple(RELAY_PREFIX + link for link in self._relay_links(uid))

    def _dial_relay(self, uid: str, link_text: str) -> Deferred[None]:
        """One attempt through the relay of the mailbox *link_text*: join there, then pinned
        TLS end to end, as client if our uid is the lower one, else as server."""
        peer = self._peer(uid)
        public = self._directory.public_key(uid)
        pair = self._knock_keys.key(uid, public) if public else None
        try:
            link = parse_link(link_text)
        except BadMailboxLink as e:
            pair, reason = None, str(e)
        else:
            reason = "no pair key for the relay (the contact's key is not known)"
        if pair is None:
            peer.connect_attempts += 1
            self._record_failure(peer, reason)
            return defer.fail(ConnectFailed(reason))
        side = relay_wire.side_of(self._identity.uid, uid)
        is_client = side == relay_wire.SIDE_CLIENT
        creator: Any = (
            client_creator(self._identity, uid, contexts=self._contexts)
            if is_client
            else RelayServerCreator(self._identity, uid, self._contexts)
        )
        log.debug("joining {uid} through a relay", uid=log_id(uid))
        endpoint = RelayEndpoint(
            self._endpoint_for(link.host, link.port),
            relay_wire.relay_key(pair),
            side,
            self._reactor,
            timeout=self._relay_timeout,
        )
        return self._dial_endpoint(
            peer,
            endpoint,
            relayed_path(f"{link.host}:{link.port}"),
            None,
            creator=creator,
            initiator=is_client,
            knock=False,
        )

    # -- knock ----------------------------------------------------------------------------------

    def _prepare_knock_table(self, window: int, then_next: bool = True) -> None:
        """Make the knock hint table of *window* through *run_blocking* (three HMACs per
        contact: 15-40 ms for 1,000 contacts, measured by ``python -m bench postbox``), then
        (*then_next*) that of the next window :data:`KNOCK_TABLE_LEAD` seconds before it
        starts."""
        if then_next:
            self._knock_table_call = None
        if self._stopping or self._run_blocking is None:
            return
        verifier = self._knock_verifier
        generation = verifier.generation
        candidates = list(self._knock_candidates())

        def failed(failure: Failure) -> None:
            log.failure("preparing the knock table failed", failure)  # built on demand

        d = self._run_blocking(verifier.prepare, window, candidates)
        d.addCallbacks(lambda table: verifier.prepared(window, table, generation), failed)
        if then_next:
            d.addBoth(lambda _: self._schedule_knock_table(window + 1))

    def _knock_table_stale(self) -> None:
        """The verifier's table is out of date (a contact removed, a key learnt, a knock it
        missed): make a new one off the reactor, :data:`KNOCK_REBUILD_DELAY` seconds from now
        (one for a burst of changes); the verifier checks every candidate meanwhile."""
        if self._stopping or self._knock_rebuild_call is not None:
            return
        self._knock_rebuild_call = self._reactor.callLater(
            KNOCK_REBUILD_DELAY, self._rebuild_knock_tables
        )

    def _rebuild_knock_tables(self) -> None:
        """Make this window's hint table anew, and the next one's if it starts within
        :data:`KNOCK_TABLE_LEAD` (its table made ahead was dropped by the change)."""
        self._knock_rebuild_call = None
        now = self._reactor.seconds()
        current = window_of(now)
        self._prepare_knock_table(current, then_next=False)
        if (current + 1) * WINDOW_SECONDS - now <= KNOCK_TABLE_LEAD + KNOCK_REBUILD_DELAY:
            self._prepare_knock_table(current + 1, then_next=False)

    def _schedule_knock_table(self, window: int) -> None:
        if self._stopping:
            return
        start = window * WINDOW_SECONDS - KNOCK_TABLE_LEAD
        delay = max(0.0, start - self._reactor.seconds())
        self._knock_table_call = self._reactor.callLater(delay, self._prepare_knock_table, window)

    @property
    def knock_keys(self) -> KnockKeys:
        """Our knock keys with each contact (shared with LAN discovery, which derives its own
        keys from them)."""
        return self._knock_keys

    def prepare_knock_keys(self, uids: Iterable[str]) -> Deferred[None] | None:
        """Compute the knock pair keys of *uids* that are not cached yet through
        *run_blocking* (on a thread), so that neither the listener's first knock nor the dials
        compute them on the reactor; a knock needed before they are ready computes its own
        key (50 µs).

        :returns: a Deferred that fires once they are kept, or ``None`` when there is nothing
            to compute (or no *run_blocking*).
        """
        if self._run_blocking is None:
            return None
        in_flight = self._keys_in_flight
        public_key = self._directory.public_key
        missing = self._knock_keys.missing(
            (uid, public_key(uid))
            for uid in uids
            if uid not in in_flight and uid != self._identity.uid
        )
        if not missing:
            return None
        uids = [uid for uid, _ in missing]
        in_flight.update(uids)

        def kept(computed: dict[tuple[str, bytes], bytes | None]) -> None:
            self._knock_keys.add(computed)

        def failed(failure: Failure) -> None:
            # not fatal: each key is then computed when first needed
            log.failure("computing knock keys failed", failure)

        d = self._run_blocking(self._knock_keys.compute, missing)
        d.addCallbacks(kept, failed)
        d.addBoth(lambda _: in_flight.difference_update(uids))
        return d

    def _knock_key(self, uid: str) -> bytes | None:
        return self._knock_keys.key(uid, self._directory.public_key(uid))

    def _knock_for(self, peer: _Peer) -> bytes:
        """The knock for one dial: the pair key if we know the contact's public key, else (or
        on every other attempt after the peer closed before TLS) the uid key."""
        if not self._knock:
            return b""
        public = None if peer.uid_knock else self._directory.public_key(peer.uid)
        key = self._knock_keys.key(peer.uid, public)
        if key is None:
            return b""
        window = window_of(self._reactor.seconds())
        return make_knock(key, peer.uid, window, self._random_bytes(NONCE_BYTES))

    def _knock_candidates(self) -> Iterator[tuple[str, bytes]]:
        for uid in self._directory.acceptable_uids():
            if uid != self._identity.uid:
                key = self._knock_key(uid)
                if key is not None:
                    yield uid, key

    def _verify_knock(self, token: bytes) -> Verdict:
        verdict = self._knock_verifier.verify(
            token, self._reactor.seconds(), self._knock_candidates
        )
        if isinstance(verdict, Accepted) and not self._accept_uid(verdict.uid):
            # found in the verifier's table, but removed or blocked since it was built
            return Refused("bad knock", verdict.uid)
        return verdict

    def _attempt_ended(self, attempt: _Attempt, reason: str | None, counted: bool = True) -> None:
        peer = attempt.peer
        peer.attempts.discard(attempt)
        if not counted:
            peer.connect_attempts -= 1  # abandoned by us (forget, stop): neither outcome
        elif reason is None:
            peer.connect_successes += 1
            succeeded = getattr(self._directory, "address_succeeded", None)
            if attempt.address is not None and succeeded is not None:
                succeeded(peer.uid, attempt.address)
        else:
            self._record_failure(peer, reason)
        self._update_state(peer)
        self._drop_if_idle(peer)

    def _record_failure(self, peer: _Peer, reason: str) -> None:
        peer.connect_failures += 1
        peer.last_error = reason
        peer.last_error_at = self._reactor.seconds()
        log.info(
            "could not connect to {uid}: {reason}", uid=log_id(peer.uid), reason=redact(reason)
        )

    def _track(self, protocol: PeerProtocol) -> None:
        self._protocols[protocol] = Deferred()
        if self._stopping:
            protocol.abort()

    def _connection_ended(self, protocol: PeerProtocol, reason: str) -> None:
        self._undecided.discard(protocol)
        for tid, link in list(self._links_in.items()):
            if link is protocol:
                del self._links_in[tid]
        entry = self._entries.get(id(protocol.session))
        if entry is not None and entry.protocol is protocol:
            self._session_closed(entry.session, reason)  # the session did not report: be safe
        waiting = self._protocols.pop(protocol, None)
        if waiting is not None:
            waiting.callback(None)

    def _learn_key(self, protocol: PeerProtocol, peer_uid: str) -> bytes | None:
        """Take a manually added contact's key from its certificate.

        The TLS layer already checked that the certificate's key hashes to *peer_uid*, so the
        key is authentic for that uid; the directory is told so it can keep it.
        """
        try:
            key = peer_public_bytes_of(protocol.transport)
        except Exception:
            return None
        if uid_for_public_bytes(key) != peer_uid:
            return None
        learn = getattr(self._directory, "learn_public_key", None)
        if learn is not None:
            learn(peer_uid, key)
            self._knock_verifier.invalidate()  # it knocks with the pair key from now on
            if self._knock:
                self.prepare_knock_keys((peer_uid,))
        return key

    def _open_session(
        self,
        protocol: PeerProtocol,
        peer_uid: str,
        attempt: _Attempt | None,
        inbound_path: PeerPath | None = None,
    ) -> PeerSession | None:
        if self._stopping or (attempt is not None and attempt.peer.uid != peer_uid):
            return None
        acceptable = self._accept_uid(peer_uid)
        key = self._directory.public_key(peer_uid) if acceptable else None
        if key is None and acceptable:
            key = self._learn_key(protocol, peer_uid)
        if key is None or uid_for_public_bytes(key) != peer_uid:
            log.warn(
                "no usable contact key for {uid}: dropping the connection", uid=log_id(peer_uid)
            )
            return None
        session = _TrackedSession(
            local_uid=self._identity.uid,
            sign=self._identity.sign,
            peer_uid=peer_uid,
            peer_public_key=key,
            initiator=protocol.initiator,
            clock=self._reactor,
            send_bytes=protocol.send_bytes,
            lose_connection=protocol.lose_connection,
            observer=self._relay,
            handshake_timeout=self._handshake_timeout,
            keepalive_interval=self._keepalive_interval,
            idle_timeout=self._idle_timeout,
            resume_mark=getattr(self._observer, "resume_mark", None),
        )
        peer = self._peer(peer_uid)
        path = attempt.path if attempt is not None else (inbound_path or accepted())
        entry = _Entry(peer, session, protocol, attempt, path)
        peer.entries.append(entry)
        self._entries[id(session)] = entry
        self._update_state(peer)
        return session

    # -- session events -----------------------------------------------------------------------

    def _initiator_uid(self, entry: _Entry) -> str:
        return self._identity.uid if entry.session.initiator else entry.peer.uid

    def _session_established(self, session: PeerSession) -> None:
        entry = self._entries.get(id(session))
        if entry is None:
            return
        peer = entry.peer
        peer.keys_exchanged, peer.uid_knock = True, False
        if entry.attempt is not None:
            entry.attempt.succeed()
        else:
            self._admission.authenticated(entry.protocol)
            if not entry.session.initiator:
                peer.sessions_accepted += 1
        current = peer.active
        if current is None:
            peer.active = entry
            entry.reported = True
            peer.connected_since = self._reactor.seconds()
            self._keep_upgrading(peer)
            self._forward("session_established", session)
            self._update_state(peer)
            return
        # Two sessions with one peer: the better transport wins (both ends rank it the same);
        # then the lower initiator uid; same initiator: the newer.
        new_rank, current_rank = transport_rank(entry.path.kind), transport_rank(current.path.kind)
        if new_rank != current_rank:
            new_wins = new_rank > current_rank
        else:
            new_wins = self._initiator_uid(entry) <= self._initiator_uid(current)
        winner, loser = (entry, current) if new_wins else (current, entry)
        log.info(
            "duplicate session with {uid}: keeping the one initiated by {initiator}",
            uid=log_id(peer.uid),
            initiator=log_id(self._initiator_uid(winner)),
        )
        if new_wins:
            peer.active = winner
            winner.reported = True
        # closing reports session_closed (forwarded if reported)
        loser.session.close(UPGRADED if new_rank != current_rank else DUPLICATE_SESSION)
        if new_wins:
            self._keep_upgrading(peer)
            self._forward("session_established", winner.session)

    def _keep_upgrading(self, peer: _Peer) -> None:
        """Stop dialling once the live session is on the best transport; on a worse one
        (relayed) keep the dialler trying the contact's addresses in the background."""
        active = peer.active
        if active is None or transport_rank(active.path.kind) >= _BEST_TRANSPORT:
            peer.dialler.stop()
        elif peer.wanted and not self._stopping:
            peer.dialler.start()

    def _session_closed(self, session: PeerSession, reason: str) -> None:
        entry = self._entries.pop(id(session), None)
        if entry is None:
            return
        peer = entry.peer
        if entry in peer.entries:
            peer.entries.remove(entry)
        stats = entry.session.stats
        peer.bytes_in += stats.bytes_in
        peer.bytes_out += stats.bytes_out
        peer.messages_out += entry.session.messages_out
        if entry.attempt is not None:
            entry.attempt.fail(reason)  # no-op if it had reached established
        if entry.reported and not entry.closed_reported:
            entry.closed_reported = True
            self._forward("session_closed", session, reason)
        if peer.active is entry:
            peer.active = None
            peer.connected_since = None
            peer.offline_since = self._reactor.seconds()
            if peer.wanted and not self._stopping:
                # Not at once: if the peer closed a duplicate, the survivor is about to count.
                peer.dialler.start(delay=self._backoff_initial * (0.5 + self._rng() / 2))
        self._update_state(peer)
        self._drop_if_idle(peer)

    def _forward(self, event: str, *args: Any) -> None:
        try:
            getattr(self._observer, event)(*args)
        except Exception:
            log.failure("the network observer failed on {event}", event=event)

    def _update_state(self, peer: _Peer) -> None:
        state = peer.current_state()
        if state != peer.state:
            peer.state = state
            self._forward("peer_status_changed", peer.uid, peer.snapshot())

    # -- file transfer data connections (jarvis.net.transfer_link) ------------------------------

    def _inbound_demux(
        self, protocol: PeerProtocol, peer_uid: str, path: PeerPath | None = None
    ) -> InboundDemux | None:
        """An inbound connection passed TLS: wait for its first bytes (session or transfer)."""
        if self._stopping:
            return None
        self._undecided.add(protocol)

        def open_session() -> PeerSession | None:
            self._undecided.discard(protocol)
            return self._open_session(protocol, peer_uid, None, path)

        def open_transfer(transfer_id: bytes) -> Any:
            self._undecided.discard(protocol)
            ask = getattr(self._observer, "inbound_stream", None)
            if self._stopping or ask is None or not self._accept_uid(peer_uid):
                return None
            found = ask(peer_uid, transfer_id)
            if found is None:
                return None
            partial, observer = found
            self._links_in[transfer_id] = protocol

            def wait_for_next() -> bool:
                # Complete is written: wait on this connection for the sender's next file.
                if self._stopping or protocol.transport is None:
                    return False
                if self._links_in.get(transfer_id) is protocol:
                    del self._links_in[transfer_id]
                waiting = demux.for_next_file(NEXT_FILE_WAIT)
                self._undecided.add(protocol)
                protocol.session = waiting
                waiting.connection_made(b"")
                return True

            return self._transfer_receiver(partial, observer, wait_for_next)

        def open_pull(transfer_id: bytes) -> Any:
            # The receiver dials back (the sender could not dial it): send the file on this one.
            self._undecided.discard(protocol)
            ask = getattr(self._observer, "outbound_pull", None)
            if self._stopping or ask is None or not self._accept_uid(peer_uid):
                return None
            found = ask(peer_uid, transfer_id)
            if found is None:
                return None
            source, observer = found
            self._links_in[transfer_id] = protocol
            return self._transfer_sender(source, observer)

        demux = InboundDemux(
            protocol,
            peer_uid,
            open_session,
            open_transfer,
            self._admission.authenticated,
            self._reactor,
            self._handshake_timeout,
            open_pull=open_pull,
        )
        return demux

    def _transfer_sender(
        self, source: Any, observer: Any, release: Callable[[], bool] | None = None
    ) -> TransferSender:
        """The sending stream of a data connection, whichever way it was made (dialled,
        dialled back, met at a relay): the acknowledgement timeout runs on our reactor;
        *release* keeps a connection we dialled for the next file."""
        return TransferSender(source, observer, clock=self._reactor, release=release)

    def _transfer_receiver(
        self, partial: Any, observer: Any, release: Callable[[], bool] | None = None
    ) -> TransferReceiver:
        """The receiving stream of a data connection, whichever way it was made; *release*
        keeps a connection the sender dialled waiting for its next file.

        Every chunk was checked against the verified manifest as it arrived (and again at each
        reopen): re-reading the whole file at the end would add a serial pass over it (about
        1 s per GiB) before the file gets its name.
        """
        return TransferReceiver(partial, observer, reread_on_finish=False, release=release)

    def open_transfer(self, uid: str, source: Any, observer: Any) -> None:
        """Dial *uid* for a file's data connection and send *source* on it.

        The contact's addresses are tried in turn (knock, then pinned TLS on *uid*); the
        *observer* (a ``TransferStreamObserver``) hears ``stream_ended(reason, True)`` if none
        answers, and the stream's events otherwise.
        """
        transfer_id = source.prepared.offer.transfer_id

        def make_sender() -> TransferSender:
            return self._transfer_sender(
                source, observer, lambda: self._keep_idle(uid, transfer_id)
            )

        idle = self._take_idle(uid)
        if idle is not None:
            # a connection whose file just completed: no new TCP connection, knock or TLS
            self._links_out[transfer_id] = idle
            idle.carry(make_sender(), transfer_id)
            return
        self._dial_data(uid, transfer_id, make_sender, observer, TRANSFER_PREFACE)

    def _keep_idle(self, uid: str, transfer_id: bytes) -> bool:
        """The file of the connection we dialled for *transfer_id* is complete: keep the
        connection :data:`IDLE_LINK_KEEP` seconds for the next file to *uid*."""
        link = self._links_out.pop(transfer_id, None)
        late = self._finishing.pop(transfer_id, None)
        if late is not None and late.active():
            late.cancel()
        if self._stopping or not isinstance(link, TransferDialProtocol) or link.closed:
            return False
        closing = self._reactor.callLater(IDLE_LINK_KEEP, self._close_idle, link)
        self._idle_links.setdefault(uid, []).append((link, closing))
        link.go_idle(lambda: self._forget_idle(link))
        return True

    def _take_idle(self, uid: str) -> TransferDialProtocol | None:
        """An idle data connection to *uid* (the one kept longest), no longer idle; or None."""
        links = self._idle_links.get(uid)
        while links:
            link, closing = links.pop(0)
            if closing.active():
                closing.cancel()
            if not link.closed and link.transport is not None:
                if not links:
                    del self._idle_links[uid]
                return link
        self._idle_links.pop(uid, None)
        return None

    def _forget_idle(self, link: TransferDialProtocol) -> None:
        """An idle data connection ended (the receiver closed it, or we did)."""
        for uid, links in list(self._idle_links.items()):
            for kept in list(links):
                if kept[0] is link:
                    links.remove(kept)
                    if kept[1].active():
                        kept[1].cancel()
            if not links:
                del self._idle_links[uid]

    def _close_idle(self, link: TransferDialProtocol) -> None:
        """No next file came in time (or we stop): close the idle connection."""
        self._forget_idle(link)
        transport: Any = link.transport
        if not link.closed and transport is not None:
            transport.loseConnection()

    def pull_transfer(self, uid: str, partial: Any, observer: Any) -> None:
        """Dial *uid* (the sender, which could not dial us) and receive into *partial* on it.

        As :meth:`open_transfer`, with the pull preface: the dialling side receives.
        """
        transfer_id = partial.offer.transfer_id
        self._dial_data(
            uid,
            transfer_id,
            lambda: self._transfer_receiver(partial, observer),
            observer,
            TRANSFER_PULL_PREFACE,
        )

    def _dial_data(
        self,
        uid: str,
        transfer_id: bytes,
        make_inner: Callable[[], Any],
        observer: Any,
        preface: bytes,
    ) -> None:
        """Race *uid*'s addresses (happy eyeballs, :class:`~jarvis.net.eyeballs.AddressRace`,
        as the session's dialler does) for a data connection running ``make_inner()``: the
        first whose TLS completes carries it, the others are abandoned."""
        peer = self._peer(uid)
        won: list[TransferDialProtocol] = []

        def dial(address: str) -> Deferred[None]:
            try:
                host, port = parse_address(address)
            except InvalidPeerAddress as e:
                return defer.fail(ConnectFailed(str(e)))
            links: list[TransferDialProtocol] = []
            connecting: list[Deferred[Any]] = []

            def abandon(_: Deferred[None]) -> None:
                for d in connecting:
                    d.cancel()
                for link in links:
                    if link.transport is not None:
                        link.transport.abortConnection()

            ready: Deferred[None] = Deferred(abandon)

            def lost(reason: str) -> None:
                if not ready.called:
                    ready.errback(ConnectFailed(reason))

            def claim() -> bool:
                if won or ready.called:
                    return False
                won.append(link)
                self._links_out[transfer_id] = link
                self._direct_dials.pop(transfer_id, None)  # connected: no longer abandoned
                ready.callback(None)
                return True

            link = TransferDialProtocol(
                make_inner(),
                transfer_id,
                self._reactor,
                self._handshake_timeout,
                lost,
                preface,
                claim,
            )
            links.append(link)
            knocking = self._pinned_factory(
                client_creator(self._identity, uid, contexts=self._contexts),
                True,
                cast(IProtocolFactory, TransferDialFactory(lambda: link)),
                peer,
            )
            d = self._endpoint_for(host, port).connect(knocking)
            connecting.append(d)
            d.addErrback(lambda f: lost(describe_failure(f)))
            return ready

        race = AddressRace(self._reactor, dial)
        self._data_dials[transfer_id] = race.result
        self._direct_dials[transfer_id] = race.result

        def done(_: str) -> None:
            if self._direct_dials.get(transfer_id) is race.result:
                del self._direct_dials[transfer_id]
            if self._data_dials.get(transfer_id) is race.result:
                del self._data_dials[transfer_id]

        def failed(f: Failure) -> None:
            if self._direct_dials.get(transfer_id) is race.result:
                del self._direct_dials[transfer_id]
            if self._data_dials.get(transfer_id) is not race.result:
                return  # stopped (cancelled, shutting down): nothing more to say
            del self._data_dials[transfer_id]
            if f.check(RaceFailed):
                reason = "the contact has no address"
            elif f.check(defer.CancelledError):
                reason = "no address answered within the head start"  # abandon_data_dial
            elif f.check(ConnectFailed):
                reason = str(f.value)
            else:
                reason = describe_failure(f)
            observer.stream_ended(f"no data connection: {reason}", True)

        race.result.addCallbacks(done, failed)
        if self._stopping:
            race.result.cancel()
            observer.stream_ended("no data connection: shutting down", True)
            return
        race.offer(self._directory.addresses(uid))

    def abandon_data_dial(self, transfer_id: bytes) -> bool:
        """Give up the direct dial (or dial back) of *transfer_id* while no address has
        connected yet, so the transfer can meet at a relay instead of waiting for every
        address's timeout.  Its observer hears ``stream_ended("no data connection: ...",
        True)`` at once.

        :returns: whether a dial was abandoned (``False``: none in flight, a relay join, or a
            connection already carries the transfer).
        """
        dialling = self._data_dials.get(transfer_id)
        if dialling is None or self._direct_dials.get(transfer_id) is not dialling:
            return False
        dialling.cancel()
        return True

    # -- relayed data connections (jarvis.net.transfer_link.RelayedDataProtocol) ----------------

    def has_relay(self, uid: str) -> bool:
        """Whether a data connection with *uid* may go through a relay: a mailbox relay is
        known for the pair and so is the contact's key (the pair key makes the token)."""
        if self._relay_links is None or not self._directory.public_key(uid):
            return False
        return bool(self._relay_links(uid))

    def relay_send(self, uid: str, source: Any, observer: Any) -> None:
        """Meet *uid* at a relay for a file's data connection and send *source* on it.

        For when neither side could dial the other: the receiver joins too
        (:meth:`relay_receive`, asked over the session).  The relays of ``relay_links(uid)``
        are tried in order (both sides sort them alike); *observer* hears
        ``stream_ended(reason, True)`` if no partner came at any.
        """
        transfer_id = source.prepared.offer.transfer_id
        self._relay_data(
            uid, transfer_id, lambda: self._transfer_sender(source, observer), observer, True
        )

    def relay_receive(self, uid: str, partial: Any, observer: Any) -> None:
        """As :meth:`relay_send`, on the receiving side: receive into *partial*."""
        transfer_id = partial.offer.transfer_id
        self._relay_data(
            uid,
            transfer_id,
            lambda: self._transfer_receiver(partial, observer),
            observer,
            False,
        )

    def _relay_data(
        self,
        uid: str,
        transfer_id: bytes,
        make_inner: Callable[[], Any],
        observer: Any,
        sending: bool,
    ) -> None:
        """Join the relays for *uid* in turn with the transfer's token, then pinned TLS end to
        end (client: the lower uid; no knock: the relay joined us), then the hellos."""
        links = list(self._relay_links(uid)) if self._relay_links is not None else []
        public = self._directory.public_key(uid)
        pair = self._knock_keys.key(uid, public) if public else None
        side = relay_wire.side_of(self._identity.uid, uid)
        is_client = side == relay_wire.SIDE_CLIENT

        def try_next(reason: str) -> None:
            self._links_out.pop(transfer_id, None)
            self._data_dials.pop(transfer_id, None)
            if self._stopping or not links or pair is None:
                observer.stream_ended(f"no relayed data connection: {reason}", True)
                return
            try:
                link = parse_link(links.pop(0))
            except BadMailboxLink as e:
                try_next(str(e))
                return
            key = relay_wire.transfer_relay_key(pair)
            link_protocol = RelayedDataProtocol(
                make_inner(),
                transfer_id,
                self._reactor,
                self._handshake_timeout,
                try_next,
                sending,
            )
            creator: Any = (
                client_creator(self._identity, uid, contexts=self._contexts)
                if is_client
                else RelayServerCreator(self._identity, uid, self._contexts)
            )
            tls_factory = self._pinned_factory(
                creator,
                is_client,
                cast(IProtocolFactory, TransferDialFactory(lambda: link_protocol)),
            )
            endpoint = RelayEndpoint(
                self._endpoint_for(link.host, link.port),
                key,
                side,
                self._reactor,
                timeout=self._relay_timeout,
                token_for=lambda window, gen: relay_wire.transfer_token(
                    key, transfer_id, window, gen
                ),
            )
            log.debug("joining {uid} through a relay for a transfer", uid=log_id(uid))
            self._links_out[transfer_id] = link_protocol
            joining = endpoint.connect(tls_factory)
            self._data_dials[transfer_id] = joining

            def paired(result: Any) -> Any:
                self._data_dials.pop(transfer_id, None)
                return result

            def failed(f: Failure) -> None:
                if self._links_out.get(transfer_id) is link_protocol:
                    try_next(describe_failure(f))

            joining.addCallbacks(paired, failed)

        if pair is None:
            reason = "the contact's key is not known"
        else:
            reason = "no relay for this contact"
        try_next(reason)

    def finish_stream(self, transfer_id: bytes) -> None:
        """The receiver said over the session that *transfer_id* is complete, before its data
        connection's own ``Complete`` arrived: let that stream end by itself (the connection
        then carries our next file to the contact), and drop it only if it still carries
        this transfer :data:`COMPLETE_GRACE` seconds later.  A connection the receiver
        dialled (a dial back) is dropped at once, as :meth:`stop_transfer`."""
        link = self._links_out.get(transfer_id)
        if not isinstance(link, TransferDialProtocol) or link.closed or self._stopping:
            self.stop_transfer(transfer_id)
            return
        if transfer_id not in self._finishing:
            self._finishing[transfer_id] = self._reactor.callLater(
                COMPLETE_GRACE, self._finish_late, transfer_id
            )

    def _finish_late(self, transfer_id: bytes) -> None:
        self._finishing.pop(transfer_id, None)
        self.stop_transfer(transfer_id)

    def stop_transfer(self, transfer_id: bytes) -> None:
        """Drop the data connection of *transfer_id*, if one is open (it was cancelled)."""
        waiting = self._data_dials.pop(transfer_id, None)
        if waiting is not None:
            self._links_out.pop(transfer_id, None)
            waiting.cancel()
        inbound = self._links_in.pop(transfer_id, None)
        if inbound is not None:
            inbound.abort()
        outbound = self._links_out.pop(transfer_id, None)
        if outbound is not None and outbound.transport is not None and not outbound.closed:
            outbound.transport.abortConnection()
