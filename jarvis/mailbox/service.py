"""``twistd jarvis-mailbox``: the mailbox server's options and service tree.

``twistd -n jarvis-mailbox --data-dir DIR --listen tcp:PORT [--advertise HOST:PORT]`` builds a
:class:`MailboxService` that, in order:

- takes ``DIR/mailbox.lock`` (a second mailbox on the same directory is refused);
- loads or creates the mailbox's TLS key ``DIR/mailbox.key`` (raw Ed25519 seed, 0600);
- opens ``DIR/mailbox.sqlite`` (WAL) on its own database thread;
- listens with TLS 1.3 on ``--listen``, where connections that start with a relay join
  (:mod:`jarvis.mailbox.relay`) go to the relay instead; once listening writes its
  ``jarvis-mailbox:`` link (host from ``--advertise`` or the listening interface, the bound
  port, the key's pin) to ``DIR/mailbox.link`` atomically and logs it ("mailbox listening
  on jarvis-mailbox:...");
- expires uncollected messages every :data:`EXPIRY_INTERVAL` seconds and logs its health
  figures every :data:`STATUS_INTERVAL` seconds (lag, queues, bytes, clients).

Stopping closes the listener and the database, then releases the lock.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.lockfile import FilesystemLock

from jarvis.common.atomicfile import write_atomically, write_text_atomically
from jarvis.crypto.identity import IdentityKey
from jarvis.mailbox.relay import PortSharing, RelayFactory, RelayLimits
from jarvis.mailbox.server import MailboxLimits, MailboxServerFactory
from jarvis.mailbox.store import SQLiteMailboxStore
from jarvis.mailbox.tls import MailboxServerCreator
from jarvis.protocol.mailbox_link import MailboxLink

#: Seconds between two expiry sweeps.
EXPIRY_INTERVAL = 600.0
#: Seconds between two health log lines.
STATUS_INTERVAL = 300.0
#: Accept queue of the listener (see jarvis.app.daemon.PEER_BACKLOG for why not 50).
BACKLOG = 1024

KEY_FILE = "mailbox.key"
LINK_FILE = "mailbox.link"
DB_FILE = "mailbox.sqlite"
LOCK_FILE = "mailbox.lock"


class MailboxError(Exception):
    """The mailbox cannot start; the message says why and what to do."""


class MailboxOptions(usage.Options):
    """Options of ``twistd jarvis-mailbox``."""

    synopsis = "--data-dir DIR [--listen tcp:PORT] [--advertise HOST:PORT] [options]"
    longdesc = (
        "Run a Jarvis mailbox: a relay that keeps end-to-end-encrypted, padded blocks for "
        "recipients who are offline, in anonymous queues authorised by per-queue keys. "
        "Its address and key pin are written to DIR/mailbox.link."
    )
    optParameters = [
        ["data-dir", "d", None, "Directory for the key, the database and mailbox.link (required)."],
        ["listen", "l", "tcp:7780", "Listening endpoint (strports description)."],
        [
            "advertise",
            None,
            None,
            "HOST:PORT to publish in the link (default: the listening interface and port).",
        ],
        ["expiry-days", None, 21.0, "Days an uncollected message is kept.", float],
        ["queue-messages", None, 4096, "Messages one queue may hold.", int],
        ["queue-bytes", None, 64 * 1024 * 1024, "Bytes of blocks one queue may hold.", int],
        ["connection-rate", None, 2000.0, "Commands per second per connection.", float],
        ["queue-rate", None, 200.0, "Deposits per second into one queue.", float],
        [
            "relay-bandwidth",
            None,
            256.0,
            "MiB per second one relayed pair may send in each direction (0: no limit).",
            float,
        ],
        ["relay-pairs", None, 1024, "Pairs the relay joins at once (0: no relaying).", int],
        ["relay-timeout", None, 30.0, "Seconds a relay join waits for its partner.", float],
        [
            "sync",
            None,
            "full",
            "Durability of an acknowledged deposit: 'full' (fsynced: survives power loss) or "
            "'normal' (survives a killed mailbox, not an OS crash; faster on slow disks).",
        ],
    ]

    def postOptions(self) -> None:
        if not self["data-dir"]:
            raise usage.UsageError("--data-dir is required")
        self["data-dir"] = os.path.abspath(os.path.expanduser(self["data-dir"]))
        if self["advertise"]:
            from jarvis.crypto.linkcode import check_address

            try:
                check_address(self["advertise"])
            except ValueError as e:
                raise usage.UsageError(f"--advertise: {e}")
        if self["sync"] not in ("full", "normal"):
            raise usage.UsageError("--sync must be 'full' or 'normal'")
        for name in (
            "expiry-days",
            "queue-messages",
            "queue-bytes",
            "connection-rate",
            "queue-rate",
            "relay-timeout",
        ):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        if self["relay-bandwidth"] < 0:
            raise usage.UsageError("--relay-bandwidth must be 0 (no limit) or positive")
        if self["relay-pairs"] < 0:
            raise usage.UsageError("--relay-pairs must be 0 (no relaying) or positive")

    def limits(self) -> MailboxLimits:
        """The :class:`MailboxLimits` these options ask for."""
        return MailboxLimits(
            queue_messages=self["queue-messages"],
            queue_bytes=self["queue-bytes"],
            expiry=self["expiry-days"] * 86400.0,
            connection_rate=self["connection-rate"],
            connection_burst=2 * self["connection-rate"],
            queue_rate=self["queue-rate"],
            queue_burst=10 * self["queue-rate"],
        )

    def relay_limits(self) -> RelayLimits:
        """The relay's :class:`~jarvis.mailbox.relay.RelayLimits` these options ask for."""
        return RelayLimits(
            bandwidth=self["relay-bandwidth"] * 1024 * 1024,
            max_pairs=self["relay-pairs"],
            pairing_timeout=self["relay-timeout"],
        )


def load_or_create_key(path: str) -> IdentityKey:
    """Return the mailbox key stored at *path*, creating it (0600) if absent (start-up only)."""
    try:
        write_atomically(path, IdentityKey.generate().private_bytes(), mode=0o600, exclusive=True)
    except FileExistsError:
        pass
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return IdentityKey.from_private_bytes(raw)
    except ValueError:
        raise MailboxError(f"{path} is not a mailbox key (32 bytes): restore it or remove it")


def listen_description(description: str) -> str:
    """Add ``backlog=`` :data:`BACKLOG` to a TCP description that does not set its own."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={BACKLOG}"
    return description


class MailboxService(MultiService):
    """The mailbox's root service (see the module docstring)."""

    log = Logger()

    def __init__(self, reactor: Any, options: MailboxOptions) -> None:
        super().__init__()
        from jarvis.runtime.lag import ReactorLagProbe

        self.reactor = reactor
        self.options = options
        self.data_dir: str = options["data-dir"]
        self._lock = FilesystemLock(os.path.join(self.data_dir, LOCK_FILE))
        self.key = load_or_create_key(os.path.join(self.data_dir, KEY_FILE))
        self.store = SQLiteMailboxStore(
            os.path.join(self.data_dir, DB_FILE),
            reactor.callFromThread,
            synchronous=options["sync"].upper(),
        )
        self.lag_probe = ReactorLagProbe(reactor, interval=0.05)
        self.relay = RelayFactory(reactor, options.relay_limits())
        self.factory = MailboxServerFactory(
            self.store,
            reactor,
            time.time,
            options.limits(),
            lag=lambda: self.lag_probe.worst_recent(60.0),
            extra_figures=lambda: {
                "gc_worst_ms": round(self.gc_worst * 1000.0, 3),
                "gc_worst_generation": self.gc_worst_generation,
                **self.relay.figures(),
            },
        )
        creator: Any = MailboxServerCreator(self.key)
        server_factory: Any = self.factory
        tls_factory: Any = TLSMemoryBIOFactory(creator, False, server_factory)
        # one port for both: TLS clients reach the mailbox, relay joins the relay
        sharing: Any = PortSharing(tls_factory, self.relay)
        self.listener = strports.service(
            listen_description(options["listen"]), sharing, reactor=reactor
        )
        self.listener.setServiceParent(self)
        self.link: MailboxLink | None = None
        self.gc_worst = 0.0
        self.gc_worst_generation = -1
        self._gc_started = 0.0
        self._loops: list[LoopingCall] = []

    def privilegedStartService(self) -> None:
        if not self._lock.lock():
            raise MailboxError(f"another mailbox already uses {self.data_dir}: stop it first")
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self._lock.unlock()
            raise MailboxError(f"cannot listen on {self.options['listen']}: {e.socketError}")
        except BaseException:
            self._lock.unlock()
            raise

    def _gc_timer(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            took = time.perf_counter() - self._gc_started
            if took > self.gc_worst:
                self.gc_worst = took
                self.gc_worst_generation = int(info.get("generation", -1))

    def startService(self) -> None:
        # the worst garbage-collector pause, for the status: a full collection is the usual
        # source of a long reactor stall in a process holding many objects
        gc.callbacks.append(self._gc_timer)
        gc.collect()
        gc.freeze()
        if not self._lock.locked and not self._lock.lock():
            raise MailboxError(f"another mailbox already uses {self.data_dir}: stop it first")
        self.store.start()
        self.lag_probe.start()
        super().startService()
        waiting = getattr(self.listener, "_waitingForPort", None)
        if waiting is not None:
            waiting.addCallback(self._listening)
        for call, interval in (
            (self._expire, EXPIRY_INTERVAL),
            (self._log_status, STATUS_INTERVAL),
        ):
            loop = LoopingCall(call)
            loop.clock = self.reactor
            loop.start(interval, now=call is self._expire).addErrback(
                lambda f: self.log.failure("a periodic mailbox task stopped", f)
            )
            self._loops.append(loop)

    def _listening(self, port: Any) -> Any:
        bound = port.getHost()
        if self.options["advertise"]:
            host, _, p = self.options["advertise"].rpartition(":")
            link = MailboxLink(self.key.uid, host.strip("[]"), int(p))
        else:
            host = str(bound.host)
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
            link = MailboxLink(self.key.uid, host, int(bound.port))
        self.link = link
        # once, at start-up, before any client can know it: a small synchronous write
        write_text_atomically(os.path.join(self.data_dir, LINK_FILE), f"{link}\n", mode=0o644)
        self.log.info("mailbox listening on {link}", link=str(link))
        return port

    def _expire(self) -> defer.Deferred[int]:
        return self.factory.expire()

    def _log_status(self) -> defer.Deferred[None]:
        def show(figures: dict[str, Any]) -> None:
            self.log.info(
                "mailbox status: {queues} queues, {messages} messages ({bytes} bytes), "
                "{clients} clients, lag {lag_ms} ms",
                **figures,
            )

        return self.factory.status().addCallback(show)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        if self._gc_timer in gc.callbacks:
            gc.callbacks.remove(self._gc_timer)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        yield defer.maybeDeferred(super().stopService)
        self.lag_probe.stop()
        yield self.store.close()
        if self._lock.locked:
            self._lock.unlock()
        self.log.info("mailbox stopped")


def make_service(options: MailboxOptions, reactor: Any = None) -> MailboxService:
    """Build the mailbox's service tree (called by twistd through the plugin).

    Installs the asyncio reactor if none is installed yet; problems end the process with a
    one-line explanation (exit status 1).
    """
    from jarvis.common import paths
    from jarvis.common.errors import JarvisError
    from jarvis.runtime import reactor as jreactor

    try:
        if reactor is None:
            reactor = jreactor.install()
        options["data-dir"] = paths.ensure_data_dir(options["data-dir"])
        lock = FilesystemLock(os.path.join(options["data-dir"], LOCK_FILE))
        if not lock.lock():
            raise MailboxError(f"another mailbox already uses {options['data-dir']}: stop it first")
        lock.unlock()
        return MailboxService(reactor, options)
    except (JarvisError, MailboxError, jreactor.WrongReactor) as e:
        sys.stderr.write(f"jarvis-mailbox: {e}\n")
        raise SystemExit(1)
