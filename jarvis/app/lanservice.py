"""LAN discovery in the daemon: run it while the identity is unlocked and the setting is on.

:class:`LanService` is the composition root's glue between :class:`jarvis.net.lan.LanDiscovery`
(announce and browse on the local network) and the node: the daemon tells it when the peer
network is made at unlock (:meth:`LanService.unlocked`); it stops discovery when the keys are
wiped, when the daemon stops and when the user turns ``lan_discovery`` off (and starts it again
when turned on); it hands every address found to the node (``address_discovered``, which dials
it first) and tells discovery when the contacts changed.  It must not dial, nor keep addresses
itself: the node's contact book does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from jarvis.core.addresses import format_address

#: The setting that turns discovery on and off.
SETTING = "lan_discovery"


class Discovery(Protocol):
    """What this service calls on :class:`jarvis.net.lan.LanDiscovery` (tests fake it)."""

    enabled: bool

    @property
    def running(self) -> bool: ...

    @property
    def failure(self) -> str | None: ...

    @property
    def services_seen(self) -> int: ...

    def start(self) -> Any: ...

    def stop(self) -> Any: ...

    def contacts_changed(self) -> Any: ...


class Contacts(Protocol):
    """The part of the node's contact book this service uses."""

    def acceptable_uids(self) -> Any: ...

    def public_key(self, uid: str) -> bytes | None: ...

    def watch_directory(self, callback: Callable[[], None]) -> Callable[[], None]: ...

    def forget_discovered(self) -> None: ...


class LanNode(Protocol):
    """The part of the node this service uses."""

    @property
    def contacts(self) -> Contacts: ...

    @property
    def settings(self) -> dict[str, bool]: ...

    def subscribe(self, observer: Callable[[str, Any], None]) -> Callable[[], None]: ...

    def address_discovered(self, uid: str, address: str) -> None: ...


#: ``(identity, (host, port), contacts, on_found, enabled) -> discovery``: *host* is the peer
#: listener's bound address ("" or a wildcard: every interface).
DiscoveryFactory = Callable[
    [
        Any,
        tuple[str, int],
        Callable[[], list[tuple[str, bytes | None]]],
        Callable[[str, str, int], None],
        bool,
    ],
    Discovery,
]

#: Why discovery does not run for a listener bound to loopback.
LOOPBACK_ONLY = (
    "the peer listener accepts loopback connections only (--listen): nobody on the LAN "
    "could connect"
)


def is_wildcard(host: str) -> bool:
    """Whether a listener bound to *host* accepts on every interface."""
    return host in ("", "0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    """Whether a listener bound to *host* accepts loopback connections only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def lan_discovery_factory(
    clock: Any,
    shared_keys: Callable[[], Any] = lambda: None,
    run_blocking: Callable[..., Any] | None = None,
) -> DiscoveryFactory:
    """Return a factory of real :class:`~jarvis.net.lan.LanDiscovery` on *clock* (the reactor).

    A listener bound to one IPv4 address announces that address only, from that interface
    only; a listener on every interface announces every non-loopback IPv4 address.

    :param shared_keys: returns the peer network's
        :class:`~jarvis.protocol.knock.KnockKeys` of the identity being unlocked (or
        ``None``): discovery derives its keys from them instead of computing its own X25519
        exchange per contact on the reactor.
    :param run_blocking: the daemon's thread pool runner: discovery makes its token tables
        there, not on the reactor.
    """

    def make(
        identity: Any,
        listening: tuple[str, int],
        contacts: Callable[[], list[tuple[str, bytes | None]]],
        on_found: Callable[[str, str, int], None],
        enabled: bool,
    ) -> Discovery:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncZeroconf

        from jarvis.net.lan import LanDiscovery, default_zeroconf, local_ipv4_addresses
        from jarvis.protocol.lan import LanKeys

        host, port = listening
        addresses = local_ipv4_addresses
        factory = default_zeroconf
        if not is_wildcard(host):

            def addresses() -> list[str]:
                return [host]

            def factory() -> AsyncZeroconf:
                return AsyncZeroconf(interfaces=[host], ip_version=IPVersion.V4Only)

        return LanDiscovery(
            identity.uid,
            port,
            LanKeys(identity.private_bytes(), identity.uid, knock=shared_keys()),
            contacts=contacts,
            on_found=on_found,
            clock=clock,
            enabled=enabled,
            addresses=addresses,
            zeroconf_factory=factory,
            run_blocking=run_blocking,
        )

    return make


class LanService(Service):
    """Runs LAN discovery for the unlocked identity; see the module docstring.

    :param node: the node (settings, events, contact book, ``address_discovered``).
    :param make_discovery: builds the discovery (:func:`lan_discovery_factory`).
    :param listening: returns the peer listener's bound ``(host, port)``, or ``None``.
        Discovery does not run for a listener bound to loopback (nobody on the LAN could
        connect: no announcement is worth sending), nor without a listener.
    """

    log = Logger()

    def __init__(
        self,
        node: LanNode,
        make_discovery: DiscoveryFactory,
        listening: Callable[[], tuple[str, int] | None],
    ) -> None:
        self._node = node
        self._make = make_discovery
        self._listening = listening
        #: why discovery was not made at the last unlock (``None``: it was)
        self.not_made: str | None = None
        #: the discovery of the unlocked identity, or ``None`` while locked
        self.discovery: Discovery | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        # a discovery's start and stop each finish on a later turn of the loop: a start made
        # before the previous stop finished would be lost, so they run one after the other
        self._switching = defer.DeferredLock()

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = [
            self._node.subscribe(self._event),
            self._node.contacts.watch_directory(self._contacts_changed),
        ]

    def stopService(self) -> Any:
        super().stopService()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        return self._stop()

    def figures(self) -> dict[str, Any]:
        """``{enabled, running, failure, services_seen}`` for ``daemon.status``."""
        discovery = self.discovery
        return {
            "enabled": self._enabled(),
            "running": discovery is not None and discovery.running,
            "failure": discovery.failure if discovery is not None else self.not_made,
            "services_seen": discovery.services_seen if discovery is not None else 0,
        }

    def unlocked(self, identity: Any, keys_ready: defer.Deferred[Any] | None = None) -> None:
        """The peer network of *identity* was just made: discover with its keys (if enabled).

        :param keys_ready: fires once the network computed its contacts' knock keys off the
            reactor (discovery derives its keys from them): discovery starts after it, so it
            computes none on the reactor.
        """
        self._stop()
        listening = self._listening()
        if listening is None:
            self.not_made = "the peer listener has no port"
        elif is_loopback(listening[0]):
            self.not_made = LOOPBACK_ONLY
        else:
            self.not_made = None
        if self.not_made is not None:
            self.log.info("LAN discovery is off: {reason}", reason=self.not_made)
            return
        assert listening is not None
        discovery = self.discovery = self._make(
            identity, listening, self._contacts, self._found, self._enabled()
        )
        if keys_ready is None:
            self._switching.run(discovery.start)
            return

        def start(result: Any) -> Any:
            if self.discovery is discovery:  # not stopped or replaced meanwhile
                self._switching.run(discovery.start)
            return result

        keys_ready.addBoth(start)

    def _enabled(self) -> bool:
        return bool(self._node.settings.get(SETTING, True))

    def _contacts(self) -> list[tuple[str, bytes | None]]:
        book = self._node.contacts
        return [(uid, book.public_key(uid)) for uid in book.acceptable_uids()]

    def _found(self, uid: str, host: str, port: int) -> None:
        self._node.address_discovered(uid, format_address(host, port))

    def _contacts_changed(self) -> None:
        if self.discovery is not None:
            self.discovery.contacts_changed()

    def _event(self, event: str, payload: Any) -> None:
        if event == "identity.locked" and payload.get("wiped"):
            self._stop()
        elif event == "settings.changed" and self.discovery is not None:
            enabled = bool(payload.get("settings", {}).get(SETTING, True))
            if enabled == self.discovery.enabled:
                return
            discovery = self.discovery
            discovery.enabled = enabled
            if enabled:
                self.log.info("LAN discovery turned on")
                self._switching.run(discovery.start)
            else:
                self.log.info("LAN discovery turned off")
                self._switching.run(discovery.stop)
                self._node.contacts.forget_discovered()

    def _stop(self) -> defer.Deferred[Any]:
        discovery, self.discovery = self.discovery, None
        if discovery is None:
            return defer.succeed(None)
        return self._switching.run(discovery.stop)
