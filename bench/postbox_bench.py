"""``postbox`` benchmark: what the daemon's mailbox and discovery work costs the reactor.

In one process, on the asyncio reactor, without a mailbox server (a transport that answers at
once) and without a store (the courier is a callback that counts):

* ``collect_stall_reactor_ms`` / ``collect_stall_thread_ms``: the worst reactor stall
  (:class:`jarvis.runtime.lag.ReactorLagProbe`, 1 ms ticks) while a burst of 1,000 collected
  deposits
  (one per queue, handed over in one reactor turn, as after an unlock with 1,000 contacts'
  deposits waiting) is opened and handed on, with the postbox opening on the reactor thread
  (``run_blocking`` absent: how it was before) and on a 2-thread pool like the daemon's;
* ``deposit_stall_reactor_ms`` / ``deposit_stall_thread_ms``: the same for 1,000 messages
  sealed and deposited in one turn;
* ``intro_open_ms``: opening one deposit of the introduction queue with 1,000 contacts when the
  sender is the last candidate (one key derivation and failed authentication per contact);
* ``lan_keys_1000_ms``: 1,000 contacts' LAN keys computed from nothing (what ``LanKeys`` did
  on the reactor at unlock) and ``lan_keys_shared_1000_ms`` with the knock keys already
  computed (shared with the network);
* ``knock_table_1000_ms`` / ``lan_table_1000_ms``: rebuilding the knock hint table and the LAN
  token table for 1,000 contacts (three HMACs per contact, once a minute).
"""

from __future__ import annotations

import sys
import time
from typing import Any

CONTACTS = 1000


def _figures(reactor: Any) -> Any:
    from twisted.internet import defer
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from bench.harness import smoke_requested
    from jarvis.core.postbox import KIND_MESSAGE, Postbox
    from jarvis.crypto import mailseal
    from jarvis.crypto.identity import IdentityKey
    from jarvis.crypto.mailseal import PrekeyRing
    from jarvis.protocol.knock import KnockKeys, KnockVerifier, make_knock, window_of
    from jarvis.protocol.lan import LanKeys, TokenMatcher
    from jarvis.protocol.records import MailboxAddress
    from jarvis.runtime.lag import ReactorLagProbe

    count = 100 if smoke_requested() else CONTACTS
    now = time.time()
    alice = IdentityKey.generate()
    contacts = [IdentityKey.generate() for _ in range(count)]
    publics = {c.uid: c.public_bytes for c in contacts}
    ring = PrekeyRing()
    ring.rotate(alice, now)
    assert ring.current is not None
    body = bytes([KIND_MESSAGE]) + int(now * 1000).to_bytes(8, "big") + b"x" * 100
    envelopes = [
        (
            c.uid,
            mailseal.seal(
                c, alice.uid, alice.public_bytes, ring.current.signed, bytes(16), body, now
            ),
        )
        for c in contacts
    ]
    bob_ring = PrekeyRing()
    bob_ring.rotate(contacts[0], now)
    assert bob_ring.current is not None
    link = f"jarvis-mailbox:{alice.uid}@127.0.0.1:7780"

    class Transport:
        deposits = 0

        def deposit(self, *args: Any) -> Any:
            self.deposits += 1
            return defer.succeed(b"id")

    pool = ThreadPool(minthreads=0, maxthreads=2, name="bench-blocking")
    pool.start()

    def make(threaded: bool) -> tuple[Postbox, list[bytes]]:
        handed: list[bytes] = []
        postbox = Postbox(
            now=lambda: now,
            emit=lambda *a: None,
            public_key=publics.get,
            contact_uids=lambda: list(publics),
            run_blocking=(lambda f, *a: deferToThreadPool(reactor, pool, f, *a))
            if threaded
            else None,
        )
        postbox._identity = alice  # what open() loads from the store
        postbox._transport = Transport()
        postbox.ring = ring
        postbox.on_message = lambda uid, mid, text, created: handed.append(mid)
        address = MailboxAddress(link, b"s" * 24, b"k" * 32, bob_ring.current.signed.to_bytes())  # type: ignore[union-attr]
        postbox.peers[contacts[0].uid] = address
        return postbox, handed

    async def stall(work: Any, done: Any) -> float:
        from twisted.internet.task import deferLater

        probe = ReactorLagProbe(reactor, interval=0.001)
        probe.start()
        await deferLater(reactor, 0.02, lambda: None)
        reactor.callLater(0, work)
        while not done():
            await deferLater(reactor, 0.001, lambda: None)
        await deferLater(reactor, 0.01, lambda: None)
        probe.stop()
        return probe.worst() * 1000

    async def measure() -> dict[str, Any]:
        try:
            return await measure_all()
        finally:
            pool.stop()

    async def measure_all() -> dict[str, Any]:
        figures: dict[str, Any] = {}
        for mode, threaded in (("reactor", False), ("thread", True)):
            postbox, handed = make(threaded)

            def collect(postbox: Postbox = postbox) -> None:
                for uid, envelope in envelopes:
                    postbox._collected(uid, envelope)

            ms = await stall(collect, lambda handed=handed: len(handed) >= count)
            figures[f"collect_stall_{mode}_ms"] = {"value": ms, "unit": "ms"}
            postbox, _ = make(threaded)
            transport = postbox._transport

            def deposit(postbox: Postbox = postbox) -> None:
                for n in range(count):
                    postbox.deposit_message(contacts[0].uid, n.to_bytes(16, "big"), b"x" * 100, 0)

            ms = await stall(deposit, lambda t=transport: t.deposits >= count)
            figures[f"deposit_stall_{mode}_ms"] = {"value": ms, "unit": "ms"}
        last = contacts[-1]
        intro = mailseal.seal(
            last, alice.uid, alice.public_bytes, ring.current.signed, bytes(16), body, now
        )  # type: ignore[union-attr]
        candidates = list(publics.items())
        started = time.perf_counter()
        mailseal.open_sealed_any(alice.uid, ring, candidates, intro)
        figures["intro_open_ms"] = {"value": (time.perf_counter() - started) * 1000, "unit": "ms"}
        seed = alice.private_bytes()
        started = time.perf_counter()
        lan = LanKeys(seed, alice.uid)
        for c in contacts:
            lan.key(c.uid, c.public_bytes)
        figures["lan_keys_1000_ms"] = {
            "value": (time.perf_counter() - started) * 1000,
            "unit": "ms",
        }
        knock = KnockKeys(seed, alice.uid)
        knock.add(knock.compute(publics.items()))
        started = time.perf_counter()
        shared = LanKeys(seed, alice.uid, knock=knock)
        lan_keys = [(c.uid, shared.key(c.uid, c.public_bytes)) for c in contacts]
        figures["lan_keys_shared_1000_ms"] = {
            "value": (time.perf_counter() - started) * 1000,
            "unit": "ms",
        }
        knock_keys = [(c.uid, knock.key(c.uid, c.public_bytes)) for c in contacts]
        verifier = KnockVerifier(alice.uid)
        token = make_knock(knock_keys[0][1], alice.uid, window_of(now), bytes(8))  # type: ignore[arg-type]
        started = time.perf_counter()
        verifier.verify(token, now, lambda: knock_keys)  # type: ignore[arg-type,return-value]
        figures["knock_table_1000_ms"] = {
            "value": (time.perf_counter() - started) * 1000,
            "unit": "ms",
        }
        matcher = TokenMatcher()
        started = time.perf_counter()
        matcher.match([], now, lambda: lan_keys)  # type: ignore[arg-type,return-value]
        figures["lan_table_1000_ms"] = {
            "value": (time.perf_counter() - started) * 1000,
            "unit": "ms",
        }
        return {"figures": figures}

    return measure()


def run(quick: bool) -> dict[str, Any]:
    """Measure the postbox's and discovery's reactor cost (see the module docstring)."""
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(_figures))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("postbox", run, sys.argv[1:]))
