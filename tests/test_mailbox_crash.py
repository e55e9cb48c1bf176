"""Kill -9 of a mailbox in the middle of deposits and of collection (issue 15): two real
daemons, two real mailboxes (``twistd -n jarvis-mailbox``) on loopback; the recipient's mailbox
is SIGKILLed while the sender's daemon deposits into it and again while the recipient collects,
and restarted each time on the same data directory and port."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.mailboxes import contacts_with_mailboxes, until

FIRST = 100  # deposited before the first kill
SECOND = 200  # deposited across it
COUNT = FIRST + SECOND


class MailboxKilledTests(TestCase):
    timeout = 300

    async def test_kill_during_deposits_and_collection(self) -> None:
        """When the recipient's mailbox is SIGKILLed while the sender deposits 300 messages
        and again while the recipient collects them, and is restarted each time on the same
        directory and port, then the sender's deposits resume within seconds (not after the
        60 s retry), every deposit acknowledged before the kill survives, the recipient holds
        all 300 exactly once and in order, and the sender's messages end delivered."""
        _box_a, box_b, alice, bob = await contacts_with_mailboxes(self)
        await bob.stop()
        await alice.recorder.wait(lambda: not alice.online_with(bob)())

        def sent_via_mailbox() -> set[str]:
            return {
                p["id"]
                for p in alice.recorder.named("message.stateChanged")
                if p.get("via") == "mailbox" and p["state"] == "sent"
            }

        async def send(start: int, count: int) -> list[str]:
            sent = await defer.gatherResults(
                [
                    alice.call("messages.send", contact=bob.uid, text=f"m {i}")
                    for i in range(start, start + count)
                ]
            )
            return [m["id"] for m in sent]

        async def deposited() -> int:
            return int((await alice.call("mailbox.status"))["deposited"])

        # a first batch is deposited and acknowledged
        sent_ids = await send(0, FIRST)
        await alice.recorder.wait(lambda: sent_via_mailbox() >= set(sent_ids), timeout=60)
        # the second batch: kill bob's mailbox once its deposits have begun
        base = await deposited()
        sent_ids += await send(FIRST, SECOND)
        await until(
            lambda: _above(deposited, base), what="deposits of the second batch", interval=0.005
        )
        acknowledged = sent_via_mailbox()
        killed_at = await deposited()
        started = time.monotonic()
        before = await box_b.restart_after_kill()
        restarted = time.monotonic() - started
        self.assertEqual(box_b.link(), before)  # same key, port: same link
        await alice.recorder.wait(lambda: sent_via_mailbox() >= set(sent_ids), timeout=60)
        resumed = time.monotonic() - started
        print(
            f"\nmailbox killed after {killed_at - base} of {SECOND} deposits of the second "
            f"batch, back {restarted:.2f} s later; all deposited {resumed:.2f} s after the kill"
        )
        self.assertLess(resumed, 45.0)  # the redial, not the courier's 60 s retry
        self.assertGreaterEqual(len(acknowledged), FIRST)

        # bob starts; kill his mailbox once collection has begun
        await bob.start(unlock=True)

        async def collected() -> int:
            return int((await bob.call("mailbox.status"))["collected"])

        await until(lambda: _above(collected, 0), what="collection to begin", interval=0.005)
        collected_at = await collected()
        await box_b.restart_after_kill()

        async def all_received() -> bool:
            counts = await bob.call("messages.unreadCounts")
            return sum(counts["unread"].values()) >= COUNT

        await until(all_received, timeout=90, what="bob received everything")
        print(f"mailbox killed after {collected_at} of {COUNT} collected")
        history = await bob.all_history(alice.uid)
        incoming = [m for m in history if m["direction"] == "in"]
        self.assertEqual([m["id"] for m in incoming], sent_ids)  # once each, in order
        self.assertEqual([m["body"] for m in incoming], [f"m {i}" for i in range(COUNT)])
        self.assertLessEqual(acknowledged, {m["id"] for m in incoming})
        received = [p["message"]["id"] for p in bob.recorder.named("message.received")]
        self.assertEqual(len(received), len(set(received)))  # no event told twice

        async def all_delivered() -> bool:
            messages = await alice.all_history(bob.uid)
            return sum(m["state"] == "delivered" for m in messages) == COUNT

        await until(all_delivered, timeout=90, what="alice's messages delivered")
        unread = await bob.call("messages.unreadCounts")
        self.assertEqual(sum(unread["unread"].values()), COUNT)


async def _above(counter: Any, base: int) -> bool:
    return bool(await counter() > base)
