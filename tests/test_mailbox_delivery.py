"""End-to-end tests of offline delivery through mailboxes (issue 15): two real daemons, two real
mailboxes (``twistd -n jarvis-mailbox``), on loopback; the two daemons are never online
together while the messages and their acks travel."""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from jarvis.core.transfers import OFFER_IN_MAILBOX
from tests.daemons import short_tempdir
from tests.mailboxes import (
    MailboxProcess,
    accept_while_apart,
    contacts_with_mailboxes,
    deposited_to,
    until,
)
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
        box_a, box_b, alice, bob = await contacts_with_mailboxes(self)

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
            # say where alice's message stands (its state, her path to bob and why), then
            # both logs' ends
            status = await alice.call("mailbox.status")
            history = await alice.all_history(bob.uid)
            last = [(m["body"], m["state"]) for m in history[-1:]]
            tail = b"\n".join(p.process.output[-3000:] for p in (alice, bob))
            raise AssertionError(
                f"{last} {status['contacts']}\n" + tail.decode("utf-8", "replace")
            ) from None
        refused = alice.recorder.named("mailbox.depositFailed")[0]
        self.assertEqual(refused["contact"], bob.uid)


class LinkCodeQueueTests(TestCase):
    """Link codes carrying a mailbox queue (issue 15): two people who exchanged codes but were
    never online together still talk."""

    timeout = 300

    async def test_added_from_codes_never_online_together(self) -> None:
        """When Alice and Bob each use a mailbox, Alice adds Bob from his code while Bob's
        daemon is stopped, then stops, and Bob adds Alice from her code and sends, then
        stops, then Alice starts and receives Bob's message; her answer and her ack reach
        Bob at his next start: his message ends delivered, and no session ever existed."""
        from jarvis.crypto.linkcode import decode_link

        root = short_tempdir(self)
        box = MailboxProcess(os.path.join(root, "mx"))
        os.makedirs(os.path.join(root, "mx"), exist_ok=True)
        self.addCleanup(box.cleanup)
        await box.start()
        alice, bob = Peer(self, root, "alice"), Peer(self, root, "bobby")
        codes = {}
        for peer in (alice, bob):
            await peer.start(create=True)
            await peer.call("mailbox.use", link=str(box.link()))
            codes[peer.name] = (await peer.call("identity.show"))["link"]
            self.assertIsNotNone(decode_link(codes[peer.name]).mailbox)
            await peer.stop()

        def no_session(peer: Peer) -> None:
            statuses = [p["peer"]["status"] for p in peer.recorder.named("peer.statusChanged")]
            self.assertNotIn("online", statuses)

        # Alice adds Bob from his code (Bob is stopped), then stops
        await alice.start(unlock=True)
        await alice.call("contacts.add", link=codes["bobby"])
        no_session(alice)
        await alice.stop()

        # Bob adds Alice from her code (Alice is stopped) and sends at once, then stops
        await bob.start(unlock=True)
        await bob.call("contacts.add", link=codes["alice"])
        sent = await bob.call("messages.send", contact=alice.uid, text=f"{CANARY} hello")

        def deposited(peer: Peer, message_id: str) -> Any:
            def check() -> bool:
                return any(
                    p["id"] == message_id and p.get("via") == "mailbox"
                    for p in peer.recorder.named("message.stateChanged")
                )

            return check

        await bob.recorder.wait(deposited(bob, sent["id"]), timeout=60)
        no_session(bob)
        await bob.stop()

        # Alice starts alone: she receives it, answers, and acknowledges it by deposit
        await alice.start(unlock=True)

        async def received(peer: Peer, contact: str, text: str) -> bool:
            history = await peer.all_history(contact)
            return any(m["direction"] == "in" and m["body"] == text for m in history)

        await until(lambda: received(alice, bob.uid, f"{CANARY} hello"), what="alice received")
        answer = await alice.call("messages.send", contact=bob.uid, text="hello back")
        await alice.recorder.wait(deposited(alice, answer["id"]), timeout=60)

        async def acked() -> bool:
            return bool((await alice.call("mailbox.status"))["acks_deposited"] >= 1)

        await until(acked, what="alice deposited her ack")
        no_session(alice)
        await alice.stop()

        # Bob starts alone: the answer arrives and his message is delivered
        await bob.start(unlock=True)
        await until(lambda: received(bob, alice.uid, "hello back"), what="bob received")

        async def delivered() -> bool:
            history = await bob.all_history(alice.uid)
            return any(m["id"] == sent["id"] and m["state"] == "delivered" for m in history)

        await until(delivered, what="bob's message delivered")
        no_session(bob)
        incoming = [m for m in await bob.all_history(alice.uid) if m["direction"] == "in"]
        self.assertEqual([m["body"] for m in incoming], ["hello back"])


class TellEveryContactTests(TestCase):
    """ "Changing or dropping a mailbox tells every contact" (issue 15), offline ones too."""

    timeout = 300

    async def test_change_and_drop_reach_a_stopped_contact(self) -> None:
        """When Alice changes her mailbox while Bob's daemon is stopped, then Bob, started
        alone, deposits into her new mailbox (her message there reaches her); when she then
        drops it while he is stopped again, then at his next start he knows no address for
        her any more (his message waits for a session)."""
        root = short_tempdir(self)
        boxes = []
        for name in ("m1", "m2", "mb"):
            box = MailboxProcess(os.path.join(root, name))
            os.makedirs(os.path.join(root, name), exist_ok=True)
            self.addCleanup(box.cleanup)
            await box.start()
            boxes.append(box)
        alice, bob = Peer(self, root, "alice"), Peer(self, root, "bobby")
        await alice.start(create=True)
        await bob.start(create=True)
        await befriend(alice, bob)
        await alice.call("mailbox.use", link=str(boxes[0].link()))
        await bob.call("mailbox.use", link=str(boxes[2].link()))

        async def knows(peer: Peer, reachable: int) -> bool:
            status = await peer.call("mailbox.status")
            return bool(status["connected"]) and status["contacts_reachable"] == reachable

        await until(lambda: knows(alice, 1), what="alice knows bob's mailbox")
        await until(lambda: knows(bob, 1), what="bob knows alice's mailbox")
        await bob.stop()
        await alice.recorder.wait(lambda: not alice.online_with(bob)())

        # Alice moves to the second mailbox while Bob is stopped
        await alice.call("mailbox.use", link=str(boxes[1].link()))
        await until(
            lambda: deposits_of(alice, 1), what="alice told bob her new mailbox by a deposit"
        )
        await alice.stop()
        await bob.start(unlock=True)
        sent = await bob.call("messages.send", contact=alice.uid, text="to the new mailbox")
        await bob.recorder.wait(
            lambda: any(
                p["id"] == sent["id"] and p.get("via") == "mailbox"
                for p in bob.recorder.named("message.stateChanged")
            ),
            timeout=60,
        )
        await bob.stop()
        await alice.start(unlock=True)

        async def received() -> bool:
            history = await alice.all_history(bob.uid)
            return any(m["body"] == "to the new mailbox" for m in history)

        await until(received, what="alice received through her new mailbox")

        # Alice drops her mailbox while Bob is stopped
        await alice.call("mailbox.drop")
        await alice.stop()
        await bob.start(unlock=True)
        await until(lambda: knows(bob, 0), what="bob forgot alice's mailbox")
        status = await bob.call("mailbox.status")
        self.assertEqual([(c["uid"], c["path"]) for c in status["contacts"]], [(alice.uid, "none")])


async def deposits_of(peer: Peer, count: int) -> bool:
    """Whether *peer*'s daemon made at least *count* deposits since its unlock."""
    return bool((await peer.call("mailbox.status"))["deposited"] >= count)


class FileOfferTests(TestCase):
    timeout = 300

    async def test_an_offer_and_its_accept_cross_while_never_online_together(self) -> None:
        """When alice offers bob a file while his daemon is stopped and stops before he starts,
        then bob finds the offer (from his mailbox) and accepts it while she is stopped; his
        Accept reaches her, through hers, while he is stopped (her transfer turns accepted
        alone); once both run again the file streams without anyone accepting again and lands
        byte-identical."""
        _box_a, _box_b, alice, bob = await contacts_with_mailboxes(self)
        await bob.stop()
        await alice.recorder.wait(lambda: not alice.online_with(bob)())
        root = short_tempdir(self)
        path = os.path.join(root, "report.pdf")
        data = os.urandom(1024 * 1024 + 3)
        with open(path, "wb") as f:
            f.write(data)
        sent = await alice.call("files.send", contact=bob.uid, path=path)
        tid = sent["id"]
        self.assertEqual(sent["reason"], OFFER_IN_MAILBOX)  # alice is told where it went
        await alice.recorder.wait(lambda: deposited_to(alice, bob), timeout=60)  # the offer
        await alice.stop()
        await accept_while_apart(alice, bob, tid, os.path.join(root, "inbox"), "report.pdf", data)
