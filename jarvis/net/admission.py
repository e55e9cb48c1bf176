"""Admission control for the peer listener: bounded pre-authentication connections.

Anyone who can reach the peer port can open TCP connections; until a connection has completed
TLS *and* the session's hello it is a **pre-authentication** connection, and it costs a file
descriptor, memory and (for TLS) CPU.  :class:`AdmissionControl` wraps the listener's factory
(outermost, so it counts every stage in between: a knock, TLS, the hello) and keeps that cost
bounded:

* at most :data:`MAX_PREAUTH` pre-authentication connections in total and
  :data:`MAX_PREAUTH_PER_SOURCE` from one source (an IPv4 address, or an IPv6 ``/64``;
  loopback is exempt from the per-source cap); when a new connection would exceed a cap, the
  **oldest** pre-authentication connection (of that source, for the per-source cap) is
  dropped, so a flood of held connections cannot keep a contact out; if even the oldest is
  younger than :data:`MIN_AGE_TO_DROP`, the new connection is refused instead and (for the
  total caps) the listening port stops accepting until a place frees, so a burst waits in the
  kernel's accept queue rather than being refused;
* at most *max_connections* inbound connections in all (authenticated ones included), by
  default the process's descriptor limit minus :data:`RESERVED_DESCRIPTORS`, so that the
  local API, the store and the logs always find a descriptor; beyond that a new connection
  drops the oldest pre-authentication one, or is closed at once if every connection is
  authenticated;
* a pre-authentication connection is aborted :data:`PREAUTH_DEADLINE` seconds after it was
  accepted, whatever stage it is in.

Refusals and drops are logged as one aggregated line per :data:`SUMMARY_INTERVAL`
(:func:`refusal_summary`), never one line per stranger, and never with the stranger's address.

This module must not decide who is a contact (TLS and the network do) or parse any byte of
the connection.
"""

from __future__ import annotations

import ipaddress
import resource
from collections import OrderedDict
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from jarvis.net.peer import Clock, DelayedCall
from jarvis.net.refusals import RefusalTally

#: Pre-authentication connections allowed at once, from all sources together.  A restarted
#: daemon's 1,000 contacts redial at once: with 256 here they queued behind one another
#: (`python -m bench scale`: establish_all_s 8.1-8.4 s against 3.4-3.5 s before admission
#: control; 4.0 s with this cap); strangers are still held to 16 per source and to the
#: descriptor budget, and the knock refuses them within a round trip.
MAX_PREAUTH = 1024
#: Pre-authentication connections allowed at once from one source address (IPv6: one /64).
MAX_PREAUTH_PER_SOURCE = 16
#: Seconds from accept to authenticated hello before a connection is aborted.
PREAUTH_DEADLINE = 30.0
#: A pre-authentication connection is dropped for a newer one only once it is this old
#: (seconds); until then the newer one is refused and accepting pauses (newcomers wait in the
#: kernel's accept queue) until a place frees or the oldest reaches this age.  A handshake
#: takes milliseconds to a few round trips, a couple of seconds when a restarted daemon's
#: thousand contacts redial at once: they complete instead of each newcomer killing one in
#: progress.  A flood's held connections grow older than this and are dropped.
MIN_AGE_TO_DROP = 5.0
#: Descriptors kept free of peer connections (local API clients, store, logs, dials).
RESERVED_DESCRIPTORS = 64
#: Seconds between two aggregated refusal lines in the log.
SUMMARY_INTERVAL = 60.0

log = Logger(namespace="jarvis.net.admission")


def descriptor_budget(reserve: int = RESERVED_DESCRIPTORS) -> int:
    """Return how many inbound peer connections fit in the process's descriptor limit.

    :param reserve: descriptors left for everything else.
    :returns: the soft ``RLIMIT_NOFILE`` minus *reserve* (at least 1); a large number when the
        limit is unlimited.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(1, soft - reserve)


def is_loopback(address: IAddress | None) -> bool:
    """Whether *address* is this machine's loopback (not subject to the per-source cap: a
    local relay or proxy makes every remote peer appear from there)."""
    host = getattr(address, "host", None)
    try:
        return isinstance(host, str) and ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def source_of(address: IAddress | None) -> str:
    """Return the key that groups connections by origin: the IP address, an IPv6 /64 prefix.

    One host usually holds a whole IPv6 /64, so counting single IPv6 addresses would not bound
    it.  Anything else (a UNIX socket, an unknown address) is grouped by its ``repr``.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return repr(address)
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def refusal_summary(clock: Clock, interval: float = SUMMARY_INTERVAL) -> RefusalTally:
    """Return the tally of refused and dropped inbound connections: one line per *interval*
    with the counts by kind, never the stranger's address
    (:class:`~jarvis.net.refusals.RefusalTally`, one rule for every refusal log)."""
    line = "inbound connections refused or dropped in the last {period:g} s: {details}"
    return RefusalTally(clock, interval, log=log, first=line, summary=line)


class AdmittedConnection(ProtocolWrapper):
    """One inbound connection seen by :class:`AdmissionControl` (the outermost protocol)."""

    factory: AdmissionControl

    def __init__(
        self, factory: AdmissionControl, wrapped: Any, source: str, accepted_at: float
    ) -> None:
        super().__init__(factory, wrapped)
        self.source = source
        self.accepted_at = accepted_at
        self.authenticated = False
        self.drop_reason: str | None = None
        self.deadline: DelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        self.factory.learn_port(transport)
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.connection_ended(self)
        super().connectionLost(reason if reason is not None else Failure(ConnectionDone()))

    def drop(self, reason: str) -> None:
        """Abort the connection at once; *reason* is what the summary will count."""
        if self.drop_reason is None:
            self.drop_reason = reason
            self.factory.summary.note(reason)
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()


class AdmissionControl(WrappingFactory[AdmittedConnection]):
    """Wraps the peer listener's factory and bounds its pre-authentication connections.

    See the module docstring for the rules.  The owner calls :meth:`authenticated` when an
    inbound connection's session is established, and :meth:`stop` when it stops.

    :param clock: runs the deadlines and the log summary.
    :param wrapped: the factory that builds the real protocols (TLS, knock...).
    :param max_preauth: pre-authentication connections allowed in total.
    :param max_preauth_per_source: pre-authentication connections allowed per source.
    :param max_connections: inbound connections allowed in all; default
        :func:`descriptor_budget`.
    :param preauth_deadline: seconds a connection may stay unauthenticated.
    :param min_age: a pre-authentication connection younger than this is not dropped for a
        newer one: the newer one is refused instead.
    :param summary: where refusals are counted (a new :func:`refusal_summary` by default).
    """

    noisy = False

    def __init__(
        self,
        clock: Clock,
        wrapped: IProtocolFactory,
        *,
        max_preauth: int = MAX_PREAUTH,
        max_preauth_per_source: int = MAX_PREAUTH_PER_SOURCE,
        max_connections: int | None = None,
        preauth_deadline: float = PREAUTH_DEADLINE,
        min_age: float = MIN_AGE_TO_DROP,
        summary: RefusalTally | None = None,
    ) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.max_preauth = max_preauth
        self.max_preauth_per_source = max_preauth_per_source
        self.max_connections = (
            max_connections if max_connections is not None else descriptor_budget()
        )
        self.preauth_deadline = preauth_deadline
        self.min_age = min_age
        self.summary = summary if summary is not None else refusal_summary(clock)
        # insertion order is age order: the first entry is the oldest
        self._preauth: OrderedDict[AdmittedConnection, None] = OrderedDict()
        self._by_source: dict[str, OrderedDict[AdmittedConnection, None]] = {}
        self._open: set[AdmittedConnection] = set()
        self._port: Any = None
        self._resume_call: DelayedCall | None = None
        #: Whether accepting is paused (the kernel's accept queue holds newcomers meanwhile).
        self.paused = False
        #: How many times accepting was paused (for status and tests).
        self.pause_count = 0

    # -- figures ---------------------------------------------------------------------------

    @property
    def preauth_count(self) -> int:
        """How many inbound connections have not authenticated yet."""
        return len(self._preauth)

    @property
    def open_count(self) -> int:
        """How many inbound connections are open, authenticated or not."""
        return len(self._open)

    # -- the factory -------------------------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> Any:
        source = source_of(addr)
        if not self._make_room(source, per_source=not is_loopback(addr)):
            return None  # the port closes the socket
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        connection = AdmittedConnection(self, inner, source, self.clock.seconds())
        self._open.add(connection)
        self._preauth[connection] = None
        self._by_source.setdefault(source, OrderedDict())[connection] = None
        connection.deadline = self.clock.callLater(
            self.preauth_deadline, connection.drop, "not authenticated in time"
        )
        return connection

    def _make_room(self, source: str, *, per_source: bool) -> bool:
        """Drop what the caps require for one more connection from *source*; return whether
        it may come in (no: every candidate for dropping is younger than *min_age*)."""
        same = self._by_source.get(source) if per_source else None
        if same is not None and len(same) >= self.max_preauth_per_source:
            if not self._evict_oldest(same, "the per-source cap", pause=False):
                return False
        if len(self._preauth) >= self.max_preauth:
            if not self._evict_oldest(self._preauth, "the total cap", pause=True):
                return False
        if len(self._open) >= self.max_connections:
            if not self._preauth:  # every connection is a contact's
                self.summary.note("refused at the connection limit")
                self._pause(self.min_age)
                return False
            if not self._evict_oldest(self._preauth, "the connection limit", pause=True):
                return False
        return True

    def _evict_oldest(
        self, pool: OrderedDict[AdmittedConnection, None], cap: str, *, pause: bool
    ) -> bool:
        oldest = next(iter(pool))
        age = self.clock.seconds() - oldest.accepted_at
        if age < self.min_age:
            # a burst of new connections (contacts redialling after a restart): let the ones
            # in progress finish; this one is refused, the next wait in the kernel's queue
            self.summary.note(f"refused at {cap}")
            if pause:
                self._pause(self.min_age - age)
            return False
        self._evict(oldest, f"dropped at {cap}")
        return True

    # -- pausing the listening port -----------------------------------------------------------

    def learn_port(self, transport: Any) -> None:
        """Note the listening port that accepted *transport*, to pause it when full.

        ``tcp.Server.server`` is the ``tcp.Port`` that accepted the connection (a public but
        undocumented attribute, pinned by ``tests/test_admission.py::PortTests``); the port's
        ``pauseProducing``/``resumeProducing`` stop and restart its accept loop.  Without it
        (another transport) the caps refuse instead of pausing.
        """
        if self._port is None:
            port = getattr(transport, "server", None)
            if hasattr(port, "pauseProducing") and hasattr(port, "resumeProducing"):
                self._port = port

    def _pause(self, delay: float) -> None:
        if self._port is None or self.paused:
            return
        self.paused = True
        self.pause_count += 1
        self._port.pauseProducing()
        self._resume_call = self.clock.callLater(max(delay, 0.05), self._resume)

    def _resume(self) -> None:
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
        if self.paused:
            self.paused = False
            self._port.resumeProducing()

    def _room_freed(self) -> None:
        if (
            self.paused
            and len(self._preauth) < self.max_preauth
            and len(self._open) < self.max_connections
        ):
            self._resume()

    def _evict(self, connection: AdmittedConnection, reason: str) -> None:
        # forget it now: the abort's connectionLost may come later, and the new connection
        # must find the room freed
        self._forget_preauth(connection)
        self._open.discard(connection)
        connection.drop(reason)

    def _forget_preauth(self, connection: AdmittedConnection) -> None:
        if connection not in self._preauth:
            return  # not (or no longer) pre-authentication
        del self._preauth[connection]
        self._room_freed()
        same = self._by_source.get(connection.source)
        if same is not None:
            same.pop(connection, None)
            if not same:
                del self._by_source[connection.source]
        if connection.deadline is not None and connection.deadline.active():
            connection.deadline.cancel()
        connection.deadline = None

    # -- what the owner and the connections call ----------------------------------------------

    def authenticated(self, protocol: Any) -> bool:
        """Mark the inbound connection carrying *protocol* as authenticated.

        *protocol* is the innermost protocol (the peer connection); its chain of transports
        leads to the :class:`AdmittedConnection` that carries it.

        :returns: whether the connection was found.
        """
        transport = getattr(protocol, "transport", None)
        for _ in range(8):  # a few layers: knock, TLS...
            if transport is None:
                return False
            if isinstance(transport, AdmittedConnection) and transport.factory is self:
                transport.authenticated = True
                self._forget_preauth(transport)
                return True
            transport = getattr(transport, "transport", None)
        return False

    def connection_ended(self, connection: AdmittedConnection) -> None:
        """Forget *connection* (it is gone); count it if it never authenticated."""
        self._forget_preauth(connection)
        self._open.discard(connection)
        self._room_freed()
        if not connection.authenticated and connection.drop_reason is None:
            self.summary.note("closed before authentication")

    def stop(self) -> None:
        """Cancel every deadline, stop pausing, and log the last summary."""
        self._resume()
        for connection in list(self._preauth):
            if connection.deadline is not None and connection.deadline.active():
                connection.deadline.cancel()
            connection.deadline = None
        self.summary.stop()
