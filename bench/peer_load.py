"""A load process for the scale benchmark: many simulated peers dialling one daemon on loopback.

``python -m bench.peer_load --count N --target 127.0.0.1:PORT --daemon-link LINK`` makes *N*
fresh identities (:meth:`jarvis.crypto.identity.IdentityKey.generate`), prints the link code of
each (``link <code>``, cards without addresses, so the daemon never dials them) and then
``ready``.  It waits for commands on stdin, one per line:

- ``dial``: start one :class:`jarvis.net.network.PeerNetwork` per identity, each keeping a
  session with the daemon (dialling with the real backoff, redialling when the session ends);
- ``quit``: close every session gracefully and exit.

While dialling it prints ``online K`` whenever the number of established sessions reaches a
tenth of *N*, *N*, or drops.  It answers nothing else and never listens.

It stays bounded and local: the target must be a loopback address, *N* is capped at
:data:`MAX_COUNT`, and it exits by itself when stdin closes (its parent died or is done) or
after ``--max-seconds``.  This module is a benchmark tool; Jarvis never imports it.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from typing import Any

#: The most simulated peers one load process runs.
MAX_COUNT = 5_000


class DaemonDirectory:
    """The contact list of a simulated peer: the daemon, and nobody else."""

    def __init__(self, uid: str, public_key: bytes, address: str) -> None:
        self.uid = uid
        self.key = public_key
        self.address = address

    def is_acceptable(self, uid: str) -> bool:
        """Only the daemon may talk to us."""
        return uid == self.uid

    def public_key(self, uid: str) -> bytes | None:
        """The daemon's key."""
        return self.key if uid == self.uid else None

    def addresses(self, uid: str) -> tuple[str, ...]:
        """The daemon's address."""
        return (self.address,) if uid == self.uid else ()

    def acceptable_uids(self) -> tuple[str, ...]:
        """Only the daemon."""
        return (self.uid,)


class LoadObserver:
    """Counts the simulated peers whose session with the daemon is established."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.online: set[str] = set()
        self.reported = -1

    def report(self, force: bool = False) -> None:
        """Print ``online K`` at every tenth of the count, at the count, and on any drop."""
        online = len(self.online)
        step = max(1, self.count // 10)
        milestone = online < self.reported or online == self.count or online % step == 0
        if force or (milestone and online != self.reported):
            self.reported = online
            print(f"online {online}", flush=True)


class PeerObserver:
    """The network observer of one simulated peer: counts it in the shared :class:`LoadObserver`.

    Acknowledges any message at once (the benchmark sends none); ignores everything else.
    """

    def __init__(self, shared: LoadObserver, name: str) -> None:
        self.shared = shared
        self.name = name

    def session_established(self, session: Any) -> None:
        pass

    def message_received(self, session: Any, message_id: bytes, body: bytes, created: int) -> None:
        try:
            session.send_ack([message_id])
        except Exception:
            pass

    def acks_received(self, session: Any, message_ids: tuple[bytes, ...]) -> None:
        pass

    def reads_received(self, session: Any, message_ids: tuple[bytes, ...]) -> None:
        pass

    def session_closed(self, session: Any, reason: str) -> None:
        pass

    def peer_status_changed(self, uid: str, status: Any) -> None:
        if status.state == "online":
            self.shared.online.add(self.name)
        else:
            self.shared.online.discard(self.name)
        self.shared.report()


def loopback_address(text: str) -> str:
    """Return *text* (``host:port``) if its host is a loopback IP address, else exit."""
    host, _, port = text.rpartition(":")
    try:
        if not ipaddress.ip_address(host.strip("[]")).is_loopback or not 0 < int(port) < 65536:
            raise ValueError(text)
    except ValueError:
        raise SystemExit(f"peer_load: the target must be a loopback host:port, not {text!r}")
    return text


def main(argv: list[str]) -> int:
    """Run the load process (see the module docstring); return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_load", description=__doc__)
    parser.add_argument("--count", type=int, required=True, help="simulated peers")
    parser.add_argument("--target", required=True, help="the daemon's 127.0.0.1:PORT")
    parser.add_argument("--daemon-link", required=True, help="the daemon's link code")
    parser.add_argument("--backoff-initial", type=float, default=1.0, help="first retry delay")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="exit after this")
    options = parser.parse_args(argv)
    if not 1 <= options.count <= MAX_COUNT:
        parser.error(f"--count must be 1..{MAX_COUNT}")
    target = loopback_address(options.target)

    from jarvis.runtime.reactor import install

    reactor = install()

    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    from jarvis.crypto.identity import IdentityKey
    from jarvis.crypto.linkcode import decode_link, encode_link, make_card
    from jarvis.net.network import PeerNetwork

    daemon = decode_link(options.daemon_link)
    directory = DaemonDirectory(daemon.uid, daemon.public_key, target)
    identities = [IdentityKey.generate() for _ in range(options.count)]
    now = int(time.time())
    for index, identity in enumerate(identities):
        card = make_card(identity, f"load peer {index}", (), now)
        print(f"link {encode_link(card)}", flush=False)
    print("ready", flush=True)

    shared = LoadObserver(options.count)
    networks: list[PeerNetwork] = []
    state = {"stopping": False}

    def dial() -> None:
        if networks:
            return
        for identity in identities:
            network = PeerNetwork(
                reactor,
                identity,
                directory,
                PeerObserver(shared, identity.uid),
                backoff_initial=options.backoff_initial,
            )
            networks.append(network)
            network.connect(daemon.uid)

    def quit_() -> None:
        if state["stopping"]:
            return
        state["stopping"] = True
        from twisted.internet import defer

        done = defer.gatherResults([network.stop() for network in networks])
        done.addTimeout(10.0, reactor)
        done.addBoth(lambda _: reactor.stop())

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            command = line.strip().decode("ascii", "replace")
            if command == "dial":
                dial()
            elif command == "quit":
                quit_()
            elif command == "report":
                shared.report(force=True)

        def connectionLost(self, reason: Any = None) -> None:
            quit_()  # stdin closed: the parent is gone or done

    stdio.StandardIO(Commands(), reactor=reactor)
    reactor.callLater(options.max_seconds, quit_)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
