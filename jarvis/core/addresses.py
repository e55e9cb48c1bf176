"""The addresses a node publishes in its link code, and the order a contact's are dialled in.

The configured ``--advertise`` addresses win; otherwise the node's non-loopback interface
addresses with the peer listening port.  Never a hard-coded "localhost": a link code that points
at the reader's own machine is useless to them.  Blocking (interface look-ups): run it on a thread.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence

from jarvis.common.paths import DEFAULT_PEER_PORT

MAX_ADDRESSES = 8


def interface_addresses() -> list[str]:
    """Return the machine's non-loopback, non-link-local IPv4 and IPv6 addresses."""
    found: list[str] = []
    candidates: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            candidates.add(str(info[4][0]))
    except OSError:
        pass
    try:
        import fcntl
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _index, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(
                        s.fileno(), 0x8915, struct.pack("256s", name[:15].encode())
                    )  # SIOCGIFADDR
                except OSError:
                    continue
                candidates.add(socket.inet_ntoa(packed[20:24]))
    except (ImportError, OSError, AttributeError):
        pass
    for text in sorted(candidates):
        try:
            ip = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            continue
        found.append(str(ip))
    # IPv4 first: it is what most LANs and VPNs route.
    found.sort(key=lambda a: (":" in a, a))
    return found


def format_address(host: str, port: int) -> str:
    """Return ``host:port`` with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_addresses(advertise: Sequence[str], listening: tuple[str, int] | None) -> tuple[str, ...]:
    """Return the addresses to publish.

    :param advertise: configured ``host:port`` addresses; they win when given.
    :param listening: the peer listener's (host, port); a listener bound to one interface
        publishes that interface, one bound to every interface publishes the interface addresses.
    """
    if advertise:
        return tuple(advertise)[:MAX_ADDRESSES]
    host, port = listening if listening is not None else ("", DEFAULT_PEER_PORT)
    if host and host not in ("0.0.0.0", "::"):
        return (format_address(host, port),)
    return tuple(format_address(a, port) for a in interface_addresses()[:MAX_ADDRESSES])


def dial_order(
    found: Iterable[str], card: Iterable[str], successes: Mapping[str, float]
) -> tuple[str, ...]:
    """Return a contact's addresses best first, each once: those that reached a session, most
    recent success first; then those LAN discovery found (as given: newest first); then the
    card's.  A success is only a ranking: an address no longer found nor on the card is not
    dialled.  Pure; the dialler races them in this order (``jarvis.net.eyeballs``).

    :param found: where LAN discovery found the contact, newest first.
    :param card: the addresses of its card (link code or manual).
    :param successes: address -> when a dial to it last succeeded.
    """
    candidates = list(dict.fromkeys([*found, *card]))
    position = {address: index for index, address in enumerate(candidates)}
    return tuple(sorted(candidates, key=lambda a: (-successes.get(a, float("-inf")), position[a])))
