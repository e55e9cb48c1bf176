"""LAN discovery on the wire: announce and browse ``_jarvis._tcp.local.`` with python-zeroconf.

:class:`LanDiscovery` runs python-zeroconf's asyncio API (``AsyncZeroconf``,
``AsyncServiceInfo``, ``AsyncServiceBrowser``) on the reactor's own asyncio loop, through
:mod:`jarvis.runtime.aio`.  It announces one service with our peer port and the padded tokens of
:mod:`jarvis.protocol.lan` under random names, announces it anew at each window boundary and
when told the contacts changed, browses for other daemons' services, and reports
``(uid, host, port)`` for every announcement carrying a token of one of our contacts.

The tokens, keys and names are :mod:`jarvis.protocol.lan`'s business; dialling, and deciding who
is a contact, are the caller's.  This module must not dial, log tokens or keys, nor run
anything off the reactor's loop but the token tables handed to *run_blocking*: given one, the
table of expected tokens and our own tokens of each window (three HMACs per contact, 10-25 ms
for 1,000 contacts) are made on the pool :data:`TABLE_LEAD` seconds before the window starts,
and again (coalesced) after the contacts changed; the reactor only swaps them in.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ifaddr
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from jarvis.common.logs import log_id
from jarvis.net.peer import Clock, DelayedCall
from jarvis.protocol.lan import (
    SERVICE_TYPE,
    WINDOW_SECONDS,
    LanKeys,
    PreparedWindows,
    TokenMatcher,
    announced_tokens,
    announcement_of,
    parse_tokens,
    prepare_windows,
    window_of,
)
from jarvis.runtime import aio

#: Milliseconds to wait for a discovered service's records.
RESOLVE_TIMEOUT_MS = 3000
#: Services remembered at most (strangers' included): more are ignored until some go away.
MAX_SERVICES = 256
#: Seconds before a window starts that its token tables are made on the pool (at most half a
#: window).
TABLE_LEAD = 5.0
#: Seconds a contacts change waits before its tables are made: a burst of changes makes one.
REFRESH_DELAY = 0.25

log = Logger(namespace="jarvis.net.lan")


def local_ipv4_addresses() -> list[str]:
    """Return this host's IPv4 addresses, loopback excluded (the addresses we announce)."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(ip.ip)
    return sorted(set(found))


def default_zeroconf() -> AsyncZeroconf:
    """Return an ``AsyncZeroconf`` on every IPv4 interface (must run on the running loop)."""
    return AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)


@dataclass(frozen=True)
class _Seen:
    """A resolved service: its tokens, addresses and port."""

    tokens: tuple[bytes, ...]
    hosts: tuple[str, ...]
    port: int


class LanDiscovery:
    """Announces us to our contacts on the local network and finds theirs.

    Call :meth:`start` once the reactor runs or is about to (the zeroconf instance is made on
    the asyncio loop), :meth:`contacts_changed` when a contact is added, removed or its key
    learnt, and :meth:`stop` at shutdown.  Found addresses arrive through *on_found* and stay
    available from :meth:`addresses_for` until their service goes away.

    :param own_uid: our uid (bound into our tokens).
    :param port: the peer port to announce.
    :param keys: our LAN keys (:class:`~jarvis.protocol.lan.LanKeys` of our identity).
    :param contacts: returns ``(uid, public key or None)`` of every contact to announce to and
        recognise (blocked ones excluded); contacts without a public key are skipped.
    :param on_found: called with ``(uid, host, port)`` for each address of each new
        announcement of a contact: again at each window (the announcement's names change),
        so an address may be reported again; dialling is the caller's to deduplicate.
    :param clock: the reactor's time (the window timer; ``seconds()`` gives the window).
    :param enabled: ``False`` makes :meth:`start` do nothing (the user's setting).
    :param random_bytes: returns *n* random bytes (names and decoys).
    :param addresses: returns the IPv4 addresses to announce.
    :param zeroconf_factory: makes the ``AsyncZeroconf`` (called on the running loop).
    :param window_seconds: the window length.
    :param run_blocking: runs a blocking callable on a thread and returns a Deferred (the
        daemon's pool): the token tables are made there (see the module docstring); without
        it they are built on the reactor when first needed.
    """

    def __init__(
        self,
        own_uid: str,
        port: int,
        keys: LanKeys,
        contacts: Callable[[], Iterable[tuple[str, bytes | None]]],
        on_found: Callable[[str, str, int], None],
        *,
        clock: Clock,
        enabled: bool = True,
        random_bytes: Callable[[int], bytes] = os.urandom,
        addresses: Callable[[], list[str]] = local_ipv4_addresses,
        zeroconf_factory: Callable[[], AsyncZeroconf] = default_zeroconf,
        window_seconds: int = WINDOW_SECONDS,
        run_blocking: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self._uid = own_uid
        self._port = port
        self._keys = keys
        self._contacts = contacts
        self._on_found = on_found
        self._clock = clock
        self.enabled = enabled
        self._random_bytes = random_bytes
        self._addresses = addresses
        self._factory = zeroconf_factory
        self._window_seconds = window_seconds
        self._matcher = TokenMatcher(window_seconds)
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._timer: DelayedCall | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: dict[str, _Seen] = {}
        self._found: dict[str, dict[str, tuple[tuple[str, int], ...]]] = {}
        self._stopped = False
        #: Why discovery is not running although enabled (``None`` when it runs or is off).
        self.failure: str | None = None
        self._run_blocking = run_blocking
        #: bumped when the contacts change: tables being made from the old ones are dropped
        self._generation = 0
        #: our real tokens made ahead, by window
        self._announced: dict[int, list[bytes]] = {}
        self._prepare_timer: DelayedCall | None = None
        self._refreshing = False
        self._refresh_call: DelayedCall | None = None
        #: contacts_changed() callers waiting for the refresh in progress
        self._waiting: list[Deferred[None]] = []

    # -- the interface the daemon uses ---------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether we announce and browse now."""
        return self._zc is not None

    @property
    def services_seen(self) -> int:
        """How many Jarvis announcements (ours excluded, strangers' included) are known now."""
        return len(self._seen)

    def addresses_for(self, uid: str) -> list[tuple[str, int]]:
        """Return the ``(host, port)`` pairs where contact *uid* was found, newest first."""
        found: list[tuple[str, int]] = []
        for addresses in reversed(self._found.get(uid, {}).values()):
            found.extend(a for a in addresses if a not in found)
        return found

    def start(self) -> Deferred[None]:
        """Start announcing and browsing (nothing when disabled).

        The Deferred fires once our first announcement went out; it never fails: a network
        that refuses multicast leaves discovery off, with the reason in :attr:`failure`.
        """
        if not self.enabled or self._zc is not None:
            return succeed(None)
        self._stopped = False
        if self._run_blocking is None:
            return aio.deferred_from_coroutine(self._start())
        return self._prepare_then_start()

    def _prepare_then_start(self) -> Deferred[None]:
        """Make this window's tables off the reactor (so the first matches and announcement
        find them), then start; again first if the contacts changed meanwhile."""
        generation = self._generation

        def start(_: object) -> Deferred[None] | None:
            if self._stopped:
                return None
            if generation != self._generation:
                return self._prepare_then_start()
            return aio.deferred_from_coroutine(self._start())

        return self._prepare(self._windows_now()).addCallback(start)

    def stop(self) -> Deferred[None]:
        """Withdraw our announcement (mDNS goodbye), stop browsing and forget what was found."""
        self._stopped = True
        for timer in (self._timer, self._prepare_timer, self._refresh_call):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._prepare_timer = self._refresh_call = None
        if not self._refreshing:
            self._release(None)
        self._announced.clear()
        self._matcher.drop_prepared()
        if self._zc is None:
            return succeed(None)
        return aio.deferred_from_coroutine(self._stop())

    def contacts_changed(self) -> Deferred[None]:
        """Announce anew for the current contacts and look again at the services already seen.

        The Deferred fires once the new announcement is out.  With *run_blocking*, the new
        tables are made on the pool first, :data:`REFRESH_DELAY` seconds later (the changes of
        a burst make one run; the table in use serves until the new one comes).
        """
        if self._run_blocking is None:
            self._matcher.invalidate()
            if self._zc is None:
                return succeed(None)
            self._rematch()
            return aio.deferred_from_coroutine(self._announce())
        self._generation += 1
        self._matcher.drop_prepared()
        self._announced.clear()
        if self._zc is None:
            return succeed(None)  # start() prepares its own
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        self._schedule_refresh()
        return waiter

    # -- the token tables, made off the reactor ---------------------------------------------------

    def _windows_now(self) -> list[int]:
        """The current window, and the next one too when it starts within the lead."""
        now = self._clock.seconds()
        current = window_of(now, self._window_seconds)
        if (current + 1) * self._window_seconds - now <= self._lead():
            return [current, current + 1]
        return [current]

    def _lead(self) -> float:
        return min(TABLE_LEAD, self._window_seconds / 2)

    def _prepare(self, windows: list[int]) -> Deferred[None]:
        """Make the tables of *windows* through *run_blocking* and keep them (unless the
        contacts changed meanwhile).  Never fails: without them, the tables are built on the
        reactor when needed."""
        assert self._run_blocking is not None
        generation = self._generation
        peers = self._keys.snapshot(self._contacts())  # dictionary look-ups only

        def keep(made: PreparedWindows) -> None:
            if generation != self._generation or self._stopped:
                return  # made from contacts that changed since: a newer run follows
            self._keys.add(made.computed)
            for window, table in made.tables.items():
                self._matcher.prepared(window, table)
            self._announced.update(made.announced)

        def failed(failure: Failure) -> None:
            log.failure("LAN discovery could not prepare its tokens", failure)

        d = self._run_blocking(prepare_windows, self._keys, self._uid, windows, peers)
        d.addCallbacks(keep, failed)
        return d

    def _schedule_refresh(self) -> None:
        if self._refresh_call is None and not self._refreshing and not self._stopped:
            self._refresh_call = self._clock.callLater(REFRESH_DELAY, self._refresh)

    def _refresh(self) -> None:
        """After a contacts change: make this window's tables on the pool, then look again
        at the services seen and announce anew; once more if the contacts changed again."""
        self._refresh_call = None
        self._refreshing = True
        generation = self._generation

        def made(_: object) -> None:
            self._refreshing = False
            if self._zc is None or self._stopped:
                self._release(None)
                return
            if generation != self._generation:
                self._schedule_refresh()  # changed during the run: one more for all of them
                return
            waiting, self._waiting = self._waiting, []
            self._rematch()
            announced = aio.deferred_from_coroutine(self._announce())
            announced.addBoth(lambda _: self._release(None, waiting))

        self._prepare(self._windows_now()).addBoth(made)

    def _release(self, result: None, waiting: list[Deferred[None]] | None = None) -> None:
        if waiting is None:
            waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(result)

    def _prepare_next(self, window: int) -> None:
        self._prepare_timer = None
        if self._zc is not None and not self._stopped:
            self._prepare([window])

    # -- asyncio side -------------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            zc = self._factory()
        except OSError as e:
            self.failure = f"cannot use multicast DNS here: {e}"
            log.warn("LAN discovery is off: {reason}", reason=self.failure)
            return
        if self._stopped:  # stop() came before the loop ran us
            await zc.async_close()
            return
        self._zc = zc
        self.failure = None
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._service_changed]
        )
        await self._announce()
        log.info("LAN discovery started on port {port}", port=self._port)

    async def _stop(self) -> None:
        zc, browser = self._zc, self._browser
        self._zc = self._browser = None
        self._info = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # return_exceptions: the tasks' CancelledError comes back as a value, not raised
            await asyncio.gather(*tasks, return_exceptions=True)
        if browser is not None:
            await browser.async_cancel()
        if zc is not None:
            await zc.async_close()  # unregisters our service: sends its goodbye
        self._seen.clear()
        self._found.clear()

    def _contact_keys(self) -> list[tuple[str, bytes]]:
        keys = []
        for uid, public in self._contacts():
            key = self._keys.key(uid, public)
            if key is not None:
                keys.append((uid, key))
        return keys

    async def _announce(self) -> None:
        async with self._lock:
            zc = self._zc
            if zc is None:
                return
            window = window_of(self._clock.seconds(), self._window_seconds)
            for old_window in [w for w in self._announced if w < window]:
                del self._announced[old_window]
            real = self._announced.get(window)
            if real is None:  # not made ahead: here (on the reactor)
                real = announced_tokens(self._uid, (key for _, key in self._contact_keys()), window)
            announcement = announcement_of(real, self._random_bytes)
            info = AsyncServiceInfo(
                SERVICE_TYPE,
                f"{announcement.instance}.{SERVICE_TYPE}",
                port=self._port,
                properties=announcement.txt(),
                server=f"{announcement.host}.local.",
                parsed_addresses=self._addresses(),
            )
            old, self._info = self._info, info
            try:
                if old is not None:
                    await (await zc.async_unregister_service(old))
                await (await zc.async_register_service(info))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.failure("LAN discovery could not announce")
            self._schedule(window)

    def _schedule(self, window: int) -> None:
        if self._stopped:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        delay = (window + 1) * self._window_seconds - self._clock.seconds()
        self._timer = self._clock.callLater(max(delay, 0.0) + 0.5, self._window_ended)
        if self._run_blocking is not None:
            if self._prepare_timer is not None and self._prepare_timer.active():
                self._prepare_timer.cancel()
            lead = delay - self._lead()
            self._prepare_timer = self._clock.callLater(
                max(lead, 0.0), self._prepare_next, window + 1
            )

    def _window_ended(self) -> None:
        """A new window: look again at the services seen and announce anew, with the tables
        made ahead for it (built here only without *run_blocking* or if not made in time)."""
        self._timer = None
        if self._run_blocking is None:
            self.contacts_changed()
            return
        if self._zc is None:
            return
        self._rematch()
        aio.deferred_from_coroutine(self._announce())

    def _service_changed(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if self._info is not None and name == self._info.name:
            return
        if state_change is ServiceStateChange.Removed:
            self._seen.pop(name, None)
            for by_name in self._found.values():
                by_name.pop(name, None)
            return
        if name not in self._seen and len(self._seen) >= MAX_SERVICES:
            return
        task = asyncio.ensure_future(self._resolve(zeroconf, service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        try:
            if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
                return
            seen = _Seen(
                tuple(parse_tokens(info.properties)),
                tuple(info.parsed_addresses(IPVersion.V4Only)),
                info.port or 0,
            )
        except asyncio.CancelledError:
            return  # stop() cancelled us: nothing to report
        except Exception:
            log.failure("LAN discovery could not read a service")
            return
        if self._zc is None or not (0 < seen.port < 65536):
            return
        self._seen[name] = seen
        self._match(name, seen)

    def _rematch(self) -> None:
        for name, seen in list(self._seen.items()):
            self._match(name, seen)

    def _match(self, name: str, seen: _Seen) -> None:
        uids = self._matcher.match(seen.tokens, self._clock.seconds(), self._contact_keys)
        previous = {uid: by_name.pop(name, ()) for uid, by_name in self._found.items()}
        for uid in sorted(uids):
            addresses = tuple((host, seen.port) for host in seen.hosts)
            self._found.setdefault(uid, {})[name] = addresses
            for host, port in addresses:
                if (host, port) not in previous.get(uid, ()):
                    # pseudonyms only: the log must not say who was where (docs/security.md)
                    log.info(
                        "LAN discovery found {uid} at {address}",
                        uid=log_id(uid),
                        address=log_id(f"{host}:{port}"),
                    )
                    self._on_found(uid, host, port)
        for uid in [uid for uid, by_name in self._found.items() if not by_name]:
            del self._found[uid]
