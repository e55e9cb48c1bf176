"""The Jarvis daemon: its twistd options and its service tree.

``twistd jarvis`` calls :func:`make_service`, which checks the reactor and the data directory and
returns a :class:`JarvisDaemon` (a ``MultiService``) with these children, started in this order:

- the blocking-work thread pool (Argon2id, key file I/O),
- the reactor-lag probe,
- the :class:`~jarvis.core.node.Node` (identity, store, peers),
- LAN discovery (:class:`~jarvis.app.lanservice.LanService`), running while unlocked and the
  ``lan_discovery`` setting is on,
- the peer listener (``--listen``), a ``strports`` service, refusing connections while locked,
- the local API listener (``--ipc``), a ``strports`` service,
- the desktop notifier, then the process runner and the hooks (:mod:`jarvis.exec`), last so
  that they stop first: every program the daemon started is gone before the node stops.

A failed listen aborts start-up with the reason.  A second daemon on the same data directory is
refused by a lock file before anything is written.  Starting records the start options in
``daemon.json`` (for a replacement daemon, see :mod:`jarvis.app.launcher`) and the pid that
``daemon.status`` reports: twistd builds the service before it forks to daemonize, so the pid is
read when the service starts.  Stopping (SIGTERM, Ctrl-C, ``daemon.stop``) closes the listeners,
the peer sessions and the store, then removes the endpoint file and the lock.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.lockfile import FilesystemLock
from twisted.python.threadpool import ThreadPool

import jarvis
from jarvis.app.passwordfile import read_password_file
from jarvis.common import paths
from jarvis.common.atomicfile import write_text_atomically
from jarvis.common.errors import AlreadyRunning, CannotListen, JarvisError
from jarvis.common.logs import (
    LEVELS,
    json_file_observer,
    load_log_key,
    parse_level,
    prepare_private_file,
    set_log_key,
    text_observer,
)
from jarvis.mailbox.attach import MailboxConnector

#: The accept queue of the peer listener.  Twisted's default is 50: after a daemon restart every
#: contact redials within a few seconds, and connections beyond a full queue are dropped by the
#: kernel, whose clients retry their SYN only after 1, 3, 7... seconds.  The scale benchmark's
#: 1,000 peers counted tens of thousands of such drops (``nstat``'s ``TcpExtListenOverflows``)
#: and reconnecting them took 8-15 s.  The kernel caps it at ``net.core.somaxconn``.
PEER_BACKLOG = 1024


#: The accept queue of the local API listener.  With Twisted's default of 50, 200 clients connecting
#: at once saw tens of refusals (a UNIX socket refuses with EAGAIN once its queue is full; 149 of
#: 200 non-blocking connects in ``tests.test_e2e_lifecycle.ApiBacklogTests``), and the CLI then
#: claimed no daemon was running.  The kernel caps it at ``net.core.somaxconn``.
IPC_BACKLOG = 1024


def peer_listen_description(description: str) -> str:
    """Return the ``strports`` *description* of the peer listener with ``backlog=``
    :data:`PEER_BACKLOG` added to a ``tcp``/``tcp6`` endpoint that does not set its own."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={PEER_BACKLOG}"
    return description


def ipc_listen_description(description: str) -> str:
    """Return the ``strports`` *description* of the local API listener with ``backlog=``
    :data:`IPC_BACKLOG` added to a ``unix``/``tcp`` endpoint that does not set its own."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("unix", "tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={IPC_BACKLOG}"
    return description


class DaemonOptions(usage.Options):
    """Options of ``twistd jarvis``."""

    synopsis = "[options]"
    longdesc = (
        "Run the Jarvis daemon: it owns the identity, the encrypted store, the peer-to-peer "
        "connections and the local API used by the terminal UI, the CLI and scripts."
    )
    optParameters = [
        [
            "data-dir",
            "d",
            None,
            "Data directory (default: $JARVIS_HOME, else the platform's user data directory).",
        ],
        [
            "listen",
            "l",
            paths.DEFAULT_LISTEN,
            "Peer-to-peer listening endpoint (strports description).",
        ],
        [
            "ipc",
            None,
            None,
            "Local API endpoint (default: a 0600 UNIX socket in the per-user runtime directory).",
        ],
        ["log-level", None, "info", f"Minimum level of the JSON log: {', '.join(LEVELS)}."],
        ["exec-limit", None, "16", "Programs (exec.run and hooks) running at once; more queue."],
        ["hook-limit", None, "4", "Hook programs running at once (within --exec-limit)."],
        [
            "password-file",
            None,
            None,
            "Unlock the identity at start with the first line of this file (unattended use).",
        ],
    ]

    optFlags = [
        [
            "ipc-allow-remote",
            None,
            "Allow a TCP --ipc endpoint on a non-loopback interface (anyone who can reach it "
            "and has the token controls your messenger).",
        ]
    ]

    def __init__(self) -> None:
        super().__init__()
        self["advertise"] = []

    def opt_advertise(self, address: str) -> None:
        """Address (HOST:PORT) to publish in link codes; may be repeated."""
        self["advertise"].append(address)

    def postOptions(self) -> None:
        try:
            parse_level(self["log-level"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        if self["ipc"] and self["ipc"].startswith("tcp:"):
            self["ipc"] = loopback_only(self["ipc"], allow_remote=self["ipc-allow-remote"])
        for limit in ("exec-limit", "hook-limit"):
            try:
                self[limit] = int(self[limit])
            except ValueError:
                raise usage.UsageError(f"--{limit} must be a whole number") from None
            if not 1 <= self[limit] <= 1024:
                raise usage.UsageError(f"--{limit} must be between 1 and 1024")
        if self["data-dir"] is None:
            self["data-dir"] = paths.default_data_dir()
        self["data-dir"] = os.path.abspath(os.path.expanduser(self["data-dir"]))


def loopback_only(description: str, *, allow_remote: bool) -> str:
    """Return a TCP IPC server description bound to loopback unless remote use is allowed.

    ``tcp:PORT`` becomes ``tcp:PORT:interface=127.0.0.1``.

    :raises usage.UsageError: for a non-loopback interface without *allow_remote*.
    """
    import ipaddress

    fields = description.split(":")
    interfaces = [f.split("=", 1)[1] for f in fields[2:] if f.startswith("interface=")]
    if not interfaces:
        return description + ":interface=127.0.0.1"
    try:
        loopback = ipaddress.ip_address(interfaces[0].strip("[]")).is_loopback
    except ValueError:
        loopback = interfaces[0] == "localhost"
    if not loopback and not allow_remote:
        raise usage.UsageError(
            f"--ipc {description} would expose the local API beyond this machine: bind it to "
            "127.0.0.1, or pass --ipc-allow-remote if you really mean it"
        )
    return description


class PeerListenerFactory(Factory):
    """Accepts peer connections only while a peer network exists (the identity is unlocked).

    The listening port is bound at start-up so that a port conflict stops the daemon at once; while
    the identity is locked there is no key to run TLS with, so connections are closed immediately.
    """

    def __init__(self) -> None:
        self.current: Any = None

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self.current is None:
            return None
        protocol: Protocol | None = self.current.buildProtocol(addr)
        return protocol


@dataclasses.dataclass
class Backlog:
    """Work submitted to a thread pool that no thread has started yet (the pool's public API
    does not say); changed from the reactor and the pool's threads, hence the lock."""

    waiting: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class PortReportingEndpoint:
    """A server endpoint that also hands the port it listens on to :attr:`listening`.

    ``strports`` services keep the listening port to themselves; wrapping their public
    ``endpoint`` attribute gives it to the daemon without reading the service's privates.

    :param endpoint: the ``IStreamServerEndpoint`` to listen with.
    """

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint
        #: fires with the ``IListeningPort`` once listening
        self.listening: defer.Deferred[Any] = defer.Deferred()

    def listen(self, protocolFactory: Any) -> defer.Deferred[Any]:
        """Listen with the wrapped endpoint; report the port to :attr:`listening`."""

        def listening(port: Any) -> Any:
            if not self.listening.called:
                self.listening.callback(port)
            return port

        d: defer.Deferred[Any] = self._endpoint.listen(protocolFactory)
        return d.addCallback(listening)


def reporting_service(description: str, factory: Any, reactor: Any) -> Any:
    """Return ``strports.service(description, factory)`` whose endpoint is a
    :class:`PortReportingEndpoint` (the service's ``endpoint.listening`` fires with the port)."""
    service = strports.service(description, factory, reactor=reactor)
    service.endpoint = PortReportingEndpoint(service.endpoint)
    return service


class ThreadPoolService(Service):
    """Starts and stops a bounded thread pool with the daemon."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        self.pool.stop()
        return None


class LagProbeService(Service):
    """Runs the reactor-lag probe for ``daemon.status``."""

    def __init__(self, probe: Any) -> None:
        self.probe = probe

    def startService(self) -> None:
        super().startService()
        self.probe.start()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        self.probe.stop()
        return None


class AllocatorService(Service):
    """Sets the C allocator's thresholds (:mod:`jarvis.runtime.allocator`) and hands free
    memory back to the kernel every :data:`~jarvis.runtime.allocator.RELEASE_INTERVAL`
    seconds, and once :data:`~jarvis.runtime.allocator.SETTLE_DELAY` seconds after each
    :meth:`settled` (the identity unlocked), off the reactor thread."""

    log = Logger()

    def __init__(self, clock: Any, run_blocking: Callable[..., defer.Deferred[Any]]) -> None:
        self._clock = clock
        self._run_blocking = run_blocking
        self._loop: LoopingCall | None = None
        self._settle: Any = None

    def settled(self) -> None:
        """A burst of start-up work just ended (the identity unlocked): release the memory it
        left free once, :data:`~jarvis.runtime.allocator.SETTLE_DELAY` seconds from now (a
        second call moves that release)."""
        from jarvis.runtime import allocator

        if self._loop is None:
            return  # not running, or not glibc
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
        self._settle = self._clock.callLater(allocator.SETTLE_DELAY, self._release)

    def startService(self) -> None:
        from jarvis.runtime import allocator

        super().startService()
        if not allocator.tune():
            self.log.info("allocator thresholds not set: the C library is not glibc")
            return
        loop = LoopingCall(self._release)
        loop.clock = self._clock
        loop.start(allocator.RELEASE_INTERVAL, now=False)
        self._loop = loop

    def _release(self) -> defer.Deferred[Any]:
        # LoopingCall waits for the returned Deferred: one release at a time.
        from jarvis.runtime import allocator

        d = self._run_blocking(allocator.release_free_memory)
        return d.addErrback(lambda f: self.log.failure("releasing free memory failed", f))

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
        self._settle = None
        return None


def ipc_client_description(server_description: str, port: Any) -> str:
    """Return the client endpoint description matching an IPC server description.

    :param port: the listening port once known (its real address wins), or ``None``.
    """
    if server_description.startswith("unix:"):
        if port is None:
            return f"unix:{server_description.split(':')[1]}"
        name = port.getHost().name
        return f"unix:{os.fsdecode(name)}"
    if port is not None:
        host = port.getHost()
        return f"tcp:{host.host}:{host.port}"
    fields = server_description.split(":")
    interface = "127.0.0.1"
    for extra in fields[2:]:
        if extra.startswith("interface="):
            interface = extra.split("=", 1)[1]
    return f"tcp:{interface}:{fields[1]}"


class JarvisDaemon(MultiService):
    """The daemon's root service; see the module docstring for its children and life cycle."""

    log = Logger()

    def __init__(self, reactor: Any, options: DaemonOptions) -> None:
        super().__init__()
        from jarvis.core.node import Node
        from jarvis.ipc.methods import DaemonInfo, MethodContext, build_registry
        from jarvis.ipc.server import IpcServerFactory
        from jarvis.runtime.lag import ReactorLagProbe

        self.reactor = reactor
        self.options = options
        self.data_dir: str = options["data-dir"]
        self._lock = FilesystemLock(paths.lock_path(self.data_dir))
        self._log_file: Any = None
        self._log_observer: Any = None
        self._peer_port: Any = None

        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="jarvis-blocking")
        self._blocking_backlog = Backlog()
        ThreadPoolService(self.pool).setServiceParent(self)
        # 50 ms ticks: fine enough for stalls that matter, and cheap when idle (a 10 ms probe
        # alone costs ~2% of a core on the asyncio reactor)
        self.lag_probe = ReactorLagProbe(reactor, interval=0.05)
        LagProbeService(self.lag_probe).setServiceParent(self)
        self.allocator = AllocatorService(reactor, self.run_blocking)
        self.allocator.setServiceParent(self)

        self.peer_factory = PeerListenerFactory()
        self.node = Node(
            clock=reactor,
            data_dir=self.data_dir,
            run_blocking=self.run_blocking,
            network_factory=self._make_network,
            advertise=tuple(options["advertise"]),
            listening=self._listening,
            now=time.time,
            mailbox_factory=lambda: MailboxConnector(reactor, time.time),
        )
        self.node.setServiceParent(self)
        from jarvis.app.lanservice import LanService, lan_discovery_factory

        self._lan_knock_keys: Any = None  # the current network's, shared with discovery
        self.lan = LanService(
            self.node,
            lan_discovery_factory(reactor, lambda: self._lan_knock_keys, self.run_blocking),
            self._listening,
        )
        self.lan.setServiceParent(self)

        peer_factory: Any = self.peer_factory
        self.peer_listener = reporting_service(
            peer_listen_description(options["listen"]), peer_factory, reactor
        )
        self.peer_listener.setServiceParent(self)

        ipc_desc = options["ipc"] or paths.default_ipc_endpoint(self.data_dir)
        self.ipc_description = ipc_desc
        self.ipc_endpoint = ipc_client_description(ipc_desc, None)
        token = None
        if not ipc_desc.startswith("unix:"):
            token = self._ensure_token()
            if options["ipc-allow-remote"]:
                self.log.warn(
                    "the local API listens on {endpoint} beyond loopback: anyone who can reach "
                    "it and holds the token controls this messenger",
                    endpoint=ipc_desc,
                )
        factory: Any = IpcServerFactory(build_registry(), None, clock=reactor, require_token=token)
        from jarvis.exec.hooks import HookDispatcher
        from jarvis.exec.runner import ProcessRunner

        # added last, so stopped first: every child program is gone before the node stops
        self.runner = ProcessRunner(reactor, limit=int(options["exec-limit"]))
        self.hooks = HookDispatcher(
            self.node,
            self.runner,
            self.data_dir,
            self.run_blocking,
            reactor,
            limit=int(options["hook-limit"]),
        )
        self.context = MethodContext(
            node=self.node,
            clock=reactor,
            lag_probe=self.lag_probe,
            info=DaemonInfo(
                pid=os.getpid(),
                version=jarvis.__version__,
                data_dir=self.data_dir,
                ipc=self.ipc_endpoint,
            ),
            stop_daemon=self.stop_daemon,
            pool_stats={"blocking": self.blocking_pool_stats, "store": self.store_pool_stats},
            clients=factory.client_figures,
            runner=self.runner,
            hooks=self.hooks,
            lan=self.lan.figures,
        )
        factory.ctx = self.context
        self._ipc_factory = factory
        self.ipc_listener = reporting_service(ipc_listen_description(ipc_desc), factory, reactor)
        self.ipc_listener.setServiceParent(self)

        from jarvis.app.notify import Notifier

        def is_shown(uid: str) -> bool:
            return any(getattr(c, "focus", None) == uid for c in factory.connections)

        self.notifier = Notifier(reactor, self.node, is_shown)
        self.notifier.setServiceParent(self)
        self.runner.setServiceParent(self)
        self.hooks.setServiceParent(self)

    # -- helpers given to the node and the API ------------------------------------------------

    def run_blocking(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Run blocking *f* on the daemon's bounded thread pool (counted while it waits)."""
        backlog = self._blocking_backlog
        with backlog.lock:
            backlog.waiting += 1

        def started() -> Any:
            with backlog.lock:
                backlog.waiting -= 1
            return f(*args, **kwargs)

        return deferToThreadPool(self.reactor, self.pool, started)

    def _make_network(self, identity: Any, directory: Any, observer: Any) -> Any:
        from jarvis.net.network import PeerNetwork

        postbox = getattr(observer, "postbox", None)
        network = PeerNetwork(
            self.reactor,
            identity,
            directory,
            observer,
            run_blocking=self.run_blocking,
            # issue 16: through a mailbox's relay when no direct path works
            relay_links=postbox.relay_links if postbox is not None else None,
        )
        self.peer_factory.current = network.server_factory()
        self._lan_knock_keys = network.knock_keys
        self.lan.unlocked(identity, network.knock_keys_prepared)
        self.allocator.settled()
        return network

    def _listening(self) -> tuple[str, int] | None:
        """The peer listener's bound (host, port), once listening."""
        if self._peer_port is None:
            return None
        host = self._peer_port.getHost()
        return (str(host.host), int(host.port))

    def blocking_pool_stats(self) -> dict[str, Any]:
        """Size, busy threads and queue length of the blocking-work thread pool."""
        return {
            "size": self.pool.max,
            "threads": len(self.pool.threads),
            "busy": len(self.pool.working),
            "queued": self._blocking_backlog.waiting,
        }

    def store_pool_stats(self) -> dict[str, Any]:
        """The store's database thread figures (empty while locked)."""
        return self.node.store_pool_stats() or {}

    def stop_daemon(self) -> None:
        """Stop the reactor, and so the daemon (``daemon.stop`` calls it after answering)."""
        self.reactor.stop()

    def _ensure_token(self) -> bytes:
        path = paths.token_path(self.data_dir)
        try:
            write_text_atomically(path, os.urandom(32).hex() + "\n", mode=0o600, exclusive=True)
        except FileExistsError:
            pass  # the token of an earlier start: clients already hold it
        with open(path, encoding="ascii") as f:
            return f.read().strip().encode("ascii")

    # -- life cycle ---------------------------------------------------------------------------

    def setServiceParent(self, parent: Any) -> None:
        """Join *parent*; under twistd, also give the application our text log observer.

        twistd builds the application from :func:`make_service` and then starts logging with
        the application's ``ILogObserver`` component if it has one: ours rotates the text log
        (see :func:`jarvis.common.logs.text_observer`), twistd's own would keep every rotated file.
        """
        twistd_options = getattr(self.options, "parent", None)
        if isinstance(parent, Componentized) and twistd_options is not None:
            observer = text_observer(twistd_options)
            if observer is not None and parent.getComponent(ILogObserver) is None:
                parent.setComponent(ILogObserver, observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        if not self._lock.lock():
            raise AlreadyRunning(
                f"another Jarvis daemon already uses {self.data_dir}: stop it first "
                "('jarvis daemon stop')"
            )
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self._lock.unlock()
            where = f"{e.interface or 'any'}:{e.port}" if e.port is not None else e.interface
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise CannotListen(
                f"cannot listen on {where}: {reason}; another program (another Jarvis daemon?) "
                "holds it: choose another with --listen tcp:PORT (peers) or --ipc (local API)"
            ) from e
        except BaseException:
            # a failed listen aborts start-up: do not leave a lock behind for the next attempt
            self._lock.unlock()
            raise

    def startService(self) -> None:
        # Everything imported and built so far lives as long as the daemon: keep it out of the
        # cyclic collector's full passes, which otherwise stall the reactor for 20-40 ms each.
        gc.collect()
        gc.freeze()
        set_log_key(load_log_key(self.data_dir))
        observer, self._log_file = json_file_observer(
            paths.json_logfile_path(self.data_dir), parse_level(self.options["log-level"])
        )
        self._log_observer = observer
        globalLogPublisher.addObserver(observer)
        # twistd builds the service before it daemonizes (forks): the process that serves the
        # API, holds the lock and wrote the pid file is this one, so report its pid
        self.context = dataclasses.replace(
            self.context, info=dataclasses.replace(self.context.info, pid=os.getpid())
        )
        self._ipc_factory.ctx = self.context
        self._remember_options()
        super().startService()
        # the ports were bound in privilegedStartService; report them now that logging runs
        self.peer_listener.endpoint.listening.addCallback(self._peer_listening)
        self.ipc_listener.endpoint.listening.addCallback(self._ipc_listening)
        self.log.info(
            "jarvis {version} started: data directory {data_dir}, peers on {listen}",
            version=jarvis.__version__,
            data_dir=self.data_dir,
            listen=self.options["listen"],
        )
        if self.options["password-file"]:
            password = read_password_file(self.options["password-file"])
            d = self.node.unlock(password)
            d.addErrback(
                lambda f: self.log.error(
                    "unlock with --password-file failed: {reason}", reason=f.getErrorMessage()
                )
            )

    def _remember_options(self) -> None:
        """Record the start options for a replacement daemon (see :mod:`jarvis.app.launcher`)."""
        from jarvis.app import launcher

        try:
            launcher.write_daemon_options(self.data_dir, self.options)
        except OSError as e:
            self.log.warn(
                "cannot record the start options in {path}: {reason}",
                path=launcher.daemon_options_path(self.data_dir),
                reason=e.strerror,
            )

    def _peer_listening(self, port: Any) -> Any:
        self._peer_port = port
        return port

    def _ipc_listening(self, port: Any) -> Any:
        self.ipc_endpoint = ipc_client_description(self.ipc_description, port)
        # once, at start-up, before any client can know the endpoint: a small synchronous write
        write_text_atomically(
            paths.endpoint_file_path(self.data_dir), self.ipc_endpoint + "\n", mode=0o600
        )
        self.log.info("local API listening on {endpoint}", endpoint=self.ipc_endpoint)
        return port

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self.log.info("jarvis stopping")
        yield defer.maybeDeferred(super().stopService)
        try:
            os.unlink(paths.endpoint_file_path(self.data_dir))
        except OSError:
            pass
        if self._lock.locked:
            self._lock.unlock()
        self.log.info("jarvis stopped")
        if self._log_observer is not None:
            globalLogPublisher.removeObserver(self._log_observer)
            self._log_file.close()


def make_service(options: DaemonOptions, reactor: Any = None) -> JarvisDaemon:
    """Build the daemon's service tree (called by twistd through the plugin).

    Installs the asyncio reactor if none is installed yet, refuses any other reactor, and checks
    the data directory; problems end the process with a one-line explanation (exit status 1).

    :param options: parsed :class:`DaemonOptions`.
    :param reactor: the reactor to use (tests pass a fake); default: the installed asyncio reactor.
    """
    from jarvis.runtime import reactor as jreactor

    try:
        if reactor is None:
            reactor = jreactor.install()
        data_dir = paths.ensure_data_dir(options["data-dir"])
        options["data-dir"] = data_dir
        # twistd opens its --logfile after this, with the process umask: create it 0600 first
        twistd_options = getattr(options, "parent", None)
        logfile = twistd_options.get("logfile") if twistd_options is not None else None
        if logfile and logfile != "-":
            prepare_private_file(logfile)
        lock = FilesystemLock(paths.lock_path(data_dir))
        if not lock.lock():
            raise AlreadyRunning(
                f"another Jarvis daemon already uses {data_dir}: stop it first "
                "('jarvis daemon stop')"
            )
        lock.unlock()
        return JarvisDaemon(reactor, options)
    except (JarvisError, jreactor.WrongReactor) as e:
        sys.stderr.write(f"jarvis: {e}\n")
        raise SystemExit(1)


def make_embedded_service(reactor: Any, data_dir: str) -> JarvisDaemon:
    """Build the daemon's service tree to run inside the terminal UI's process.

    The composition root (``jarvis --embedded``) hands this to :func:`jarvis.ui.app.run`, so the
    UI never imports the daemon.

    :param reactor: the running UI's reactor.
    :param data_dir: the data directory.
    """
    options = DaemonOptions()
    options.parseOptions(["--data-dir", data_dir])
    return make_service(options, reactor)
