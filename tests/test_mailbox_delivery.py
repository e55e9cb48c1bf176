"""End-to-end tests of offline delivery through mailboxes (issue 15): two real daemons, two real
mailboxes (``twistd -n jarvis-mailbox``), on loopback; the two daemons are never online
together while the messages and their acks travel."""

from __future__ import annotations

import os
import time

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.daemons import short_tempdir
from tests.mailboxes import start_mailbox, until
from tests.peers import Peer, befriend

CANARY = "CANARY-7f3a9c"
COUNT = 1000


class NeverOnlineTogetherTests(TestCase):
    timeout = 300

    async def test_thousand_messages_and_acks_through_mailboxes(self) -> None:
        """When A sends 1,000 messages while B's daemon is stopped and A stops before B
        starts, then B receives all 1,000 exactly once and in order (the time from B's start
        is printed),
        its acks reach A when A starts again (every message ends delivered), the mailboxes'
        data directories and logs hold no canary, uid or name, and once B removes A, A's
        deposits are refused."""
        root = short_tempdir(self)
        box_a = await start_mailbox(self, os.path.join(root, "ma"))
        box_b = await start_mailbox(self, os.path.join(root, "mb"))
        alice, bob = Peer(self, root, "alice"), Peer(self, root, "bobby")
        await alice.start(create=True)
        await bob.start(create=True)
        await befriend(alice, bob)
        await alice.call("mailbox.use", link=str(box_a.link()))
        await bob.call("mailbox.use", link=str(box_b.link()))

        async def reachable(peer: Peer) -> bool:
            status = await peer.call("mailbox.status")
            return bool(status["connected"] and status["contacts_reachable"] == 1)

        await until(lambda: reachable(alice), what="alice knows bob's mailbox")
        await until(lambda: reachable(bob), what="bob knows alice's mailbox")

        # B goes offline; A sends 1,000 messages, deposited in B's mailbox
        await bob.stop()
        await alice.recorder.wait(lambda: not alice.online_with(bob)())
        sent = await defer.gatherResults(
            [
                alice.call("messages.send", contact=bob.uid, text=f"{CANARY} {i}")
                for i in range(COUNT)
            ]
        )
        sent_ids = [m["id"] for m in sent]

        def deposited() -> bool:
            via = {
                p["id"]
                for p in alice.recorder.named("message.stateChanged")
                if p.get("via") == "mailbox" and p["state"] == "sent"
            }
            return via >= set(sent_ids)

        await alice.recorder.wait(deposited, timeout=120)
        await alice.stop()

        # B starts alone and collects everything
        started = time.monotonic()
        await bob.start(unlock=True)
        unlocked = time.monotonic() - started

        async def all_received() -> bool:
            counts = await bob.call("messages.unreadCounts")
            return sum(counts["unread"].values()) >= COUNT

        await until(all_received, timeout=60, what="bob received everything")
        elapsed = time.monotonic() - started
        history = await bob.all_history(alice.uid)
        incoming = [m for m in history if m["direction"] == "in"]
        self.assertEqual([m["body"] for m in incoming], [f"{CANARY} {i}" for i in range(COUNT)])
        self.assertEqual([m["id"] for m in incoming], sent_ids)
        print(
            f"\n1,000 messages collected {elapsed:.2f} s after bob's daemon was started "
            f"(unlocked after {unlocked:.2f} s)"
        )
        # the goal is 5 s (issue 15); the time is reported, not asserted: this shared VM's
        # load decides it more than the code does (docs/mailbox.md has the figures)

        async def acks_out() -> bool:
            return (await bob.call("mailbox.status"))["acks_deposited"] >= COUNT

        await until(acks_out, what="bob deposited his acks")
        await bob.stop()

        # A starts alone and its messages end delivered
        await alice.start(unlock=True)

        async def all_delivered() -> bool:
            messages = await alice.all_history(bob.uid)
            return sum(m["state"] == "delivered" for m in messages) == COUNT

        await until(all_delivered, timeout=60, what="alice's messages delivered")

        # what the mailboxes kept and logged: no canary, no uid, no name
        secrets = [CANARY, alice.uid, bob.uid, "alice", "bobby"]
        for box in (box_a, box_b):
            for dirpath, _dirs, files in os.walk(box.data_dir):
                for name in files:
                    if os.path.islink(os.path.join(dirpath, name)):
                        continue  # the lock: a symbolic link naming the process id
                    with open(os.path.join(dirpath, name), "rb") as f:
                        data = f.read()
                    for secret in secrets:
                        self.assertNotIn(secret.encode(), data, f"{secret} in {name}")
            for secret in secrets:
                self.assertNotIn(secret.encode(), box.output)

        # B removes A: A's deposits into B's queue are refused
        await bob.start(unlock=True)
        await alice.recorder.wait(alice.online_with(bob))
        await bob.call("contacts.remove", contact=alice.uid)
        await bob.stop()
        await alice.recorder.wait(lambda: not alice.online_with(bob)())
        await alice.call("messages.send", contact=bob.uid, text="after removal")
        try:
            await alice.recorder.wait(
                lambda: bool(alice.recorder.named("mailbox.depositFailed")), timeout=60
            )
        except Exception:
            tail = b"\n".join(p.process.output[-3000:] for p in (alice, bob))
            raise AssertionError(tail.decode("utf-8", "replace")) from None
        refused = alice.recorder.named("mailbox.depositFailed")[0]
        self.assertEqual(refused["contact"], bob.uid)
