"""Network namespaces for tests: a LAN of namespaces joined by a bridge, and entering one.

:class:`BridgedLan` makes namespaces ``<prefix>-br`` (holding a Linux bridge) and one namespace
per host, each linked to the bridge by a veth pair and given ``10.213.0.<n>/24``, so multicast
(mDNS) sent by one host reaches all the others and nothing outside.  :func:`inside` runs a block
of code with the calling thread in a namespace: sockets made there stay in it after the block,
so one test process can hold sockets of several hosts.

Needs root and ``ip``; :func:`unavailable` says why not, for ``SkipTest``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator

SUBNET = "10.213.0"
_CLONE_NEWNET = 0x40000000


def unavailable() -> str | None:
    """Return why namespace tests cannot run here, or ``None`` if they can."""
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns)"
    if shutil.which("ip") is None:
        return "network namespace tests need the 'ip' command (iproute2)"
    probe = f"jprobe-{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class BridgedLan:
    """Hosts in their own namespaces on one bridged /24, made at construction.

    :param prefix: namespace name prefix (short: it names interfaces too).
    :param hosts: host names; host *i* gets ``10.213.0.<i + 1>``.
    """

    def __init__(self, prefix: str, hosts: list[str]) -> None:
        self.bridge_ns = f"{prefix}-br"
        self.namespaces: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self._made: list[str] = []
        try:
            self._add_ns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for index, host in enumerate(hosts):
                ns = f"{prefix}-{host}"
                address = f"{SUBNET}.{index + 1}"
                self._add_ns(ns)
                side = f"v{index}"
                _ip("-n", self.bridge_ns, "link", "add", side, "type", "veth", "peer", "name",
                    "eth0", "netns", ns)  # fmt: skip
                _ip("-n", self.bridge_ns, "link", "set", side, "master", "br0")
                _ip("-n", self.bridge_ns, "link", "set", side, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
                self.namespaces[host] = ns
                self.addresses[host] = address
        except BaseException:
            self.remove()
            raise

    def _add_ns(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # a leftover
        _ip("netns", "add", name)
        self._made.append(name)

    def remove(self) -> None:
        """Delete every namespace made (their interfaces go with them)."""
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block with this thread in network namespace *namespace*, then come back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


#: Where :class:`NatTopology` puts its "public" service (on the public namespace's loopback).
PUBLIC_SERVICE = "10.214.100.1"


class NatTopology:
    """Hosts that each reach a "public" namespace but not each other ("both behind NAT").

    Namespace ``<prefix>-pub`` holds :data:`PUBLIC_SERVICE` on its loopback and one veth link
    per host: host *i* is ``10.214.<i + 1>.2/24``, its link's other end ``10.214.<i + 1>.1``.
    A host has a route to the service only (no default route), and the public namespace does
    not forward (``ip_forward`` is 0 in a new namespace), so dialling another host fails at
    once with "network unreachable" and the service is the only meeting point.

    With *drop*, a NAT that drops packets instead: each host routes the other hosts' addresses
    through the public namespace, which forwards but silently discards (a ``blackhole``
    policy rule on each host's link) every packet from a host to another host, so a direct
    dial is never refused: it waits for its timeout.  The service still answers.

    :param prefix: namespace name prefix (short).
    :param hosts: host names.
    :param drop: drop direct packets between hosts instead of refusing them.
    """

    def __init__(self, prefix: str, hosts: list[str], drop: bool = False) -> None:
        self.public_ns = f"{prefix}-pub"
        self.namespaces: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self._made: list[str] = []
        try:
            self._add_ns(self.public_ns)
            _ip("-n", self.public_ns, "link", "set", "lo", "up")
            _ip("-n", self.public_ns, "addr", "add", f"{PUBLIC_SERVICE}/32", "dev", "lo")
            if drop:  # forward, so that the blackhole rule discards silently (no ICMP)
                _ip("netns", "exec", self.public_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            for index, host in enumerate(hosts):
                ns = f"{prefix}-{host}"
                net = f"10.214.{index + 1}"
                self._add_ns(ns)
                side = f"h{index}"
                _ip("-n", self.public_ns, "link", "add", side, "type", "veth", "peer", "name",
                    "eth0", "netns", ns)  # fmt: skip
                _ip("-n", self.public_ns, "addr", "add", f"{net}.1/24", "dev", side)
                _ip("-n", self.public_ns, "link", "set", side, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{net}.2/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "route", "add", f"{PUBLIC_SERVICE}/32", "via", f"{net}.1")
                if drop:
                    _ip("-n", ns, "route", "add", "10.214.0.0/16", "via", f"{net}.1")
                    _ip("-n", self.public_ns, "rule", "add", "iif", side, "to", "10.214.0.0/16",
                        "blackhole")  # fmt: skip
                self.namespaces[host] = ns
                self.addresses[host] = f"{net}.2"
        except BaseException:
            self.remove()
            raise

    def _add_ns(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # a leftover
        _ip("netns", "add", name)
        self._made.append(name)

    def remove(self) -> None:
        """Delete every namespace made (their interfaces go with them)."""
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()
