"""Tests for :mod:`jarvis.core.transfers`: control records over fake sessions, kept state,
re-sending at session start, and the body prefix that keeps chat text apart."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from jarvis.common.errors import InvalidInput
from jarvis.core import transfers as transfers_module
from jarvis.core.transfers import (
    ACCEPT_IN_MAILBOX,
    ACCEPT_WAITS,
    CONTROL_PREFIX,
    OFFER_IN_MAILBOX,
    OFFER_WAITS,
    REDIAL_INITIAL,
    TransferEntry,
    Transfers,
    is_control_body,
)
from jarvis.files.receive import PartialFile, ReceivePolicy, find_received, partial_paths
from jarvis.files.send import folder_files, make_offer
from jarvis.net.transfer import DISK_FULL
from jarvis.protocol.transfer import (
    Accept,
    Cancel,
    Complete,
    Decline,
    DialBack,
    Offer,
    Request,
    SharedFile,
    TransferRecord,
    encode_transfer_record,
    parse_transfer_record,
)
from jarvis.store import queries
from tests.daemons import short_tempdir

ALICE = "a" * 52
BOB = "b" * 52
#: A file large enough that its stream counts as a whole one against the stream caps.
LARGE = 3 * 1024 * 1024


class FakeStore:
    """The setting queries Transfers uses, on a dict; counts the settings written."""

    def __init__(self) -> None:
        self.settings: dict[str, str] = {}
        self.written: list[str] = []

    def run(self, query: Any, *args: Any, write: bool = False) -> defer.Deferred[Any]:
        if query is queries.get_setting:
            return defer.succeed(self.settings.get(args[0]))
        if query is queries.set_setting:
            self.settings[args[0]] = args[1]
            return defer.succeed(None)
        if query is queries.settings_named:
            return defer.succeed({k: v for k, v in self.settings.items() if k.startswith(args[0])})
        if query is queries.change_settings:
            values, removed = args
            self.settings.update(values)
            self.written.extend(values)
            for key in removed:
                self.settings.pop(key, None)
            return defer.succeed(None)
        raise AssertionError(f"unexpected query {query}")

    def transfers(self) -> dict[str, Any]:
        """The transfers kept, by id, as JSON."""
        prefix = transfers_module.ENTRY_PREFIX
        return {
            k[len(prefix) :]: json.loads(v)
            for k, v in self.settings.items()
            if k.startswith(prefix)
        }


class FakeSession:
    """Records the control records written to it."""

    def __init__(self) -> None:
        self.records: list[TransferRecord] = []

    def send_message(self, message_id: bytes, body: bytes, created_ms: int) -> None:
        assert is_control_body(body)
        self.records.append(parse_transfer_record(body[len(CONTROL_PREFIX) :]))


class FakeNetwork:
    def __init__(self) -> None:
        self.opened: list[str] = []

    def open_transfer(self, uid: str, source: Any, observer: Any) -> None:
        self.opened.append(uid)
        source.close()

    def stop_transfer(self, transfer_id: bytes) -> None:
        pass

    def finish_stream(self, transfer_id: bytes) -> None:
        pass


def new_transfers(testcase: TestCase) -> tuple[Transfers, list[tuple[str, dict[str, Any]]]]:
    """A Transfers not opened yet, on a Clock, and the events it emits."""
    events: list[tuple[str, dict[str, Any]]] = []
    transfers = Transfers(
        clock=Clock(),
        now=lambda: 1_700_000_000.0,
        emit=lambda name, payload: events.append((name, payload)),
        run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
        display_name=lambda uid: uid[:4],
        downloads=short_tempdir(testcase),
    )
    return transfers, events


def make_transfers(
    testcase: TestCase,
    store: FakeStore | None = None,
    network: Any = None,
    sessions: dict[str, FakeSession | None] | None = None,
) -> tuple[Transfers, dict[str, FakeSession | None], list[tuple[str, dict[str, Any]]], FakeStore]:
    sessions = {} if sessions is None else sessions
    store = store or FakeStore()
    transfers, events = new_transfers(testcase)
    testcase.successResultOf(transfers.open(store, network or FakeNetwork(), sessions.get))
    return transfers, sessions, events, store


def an_offer(testcase: TestCase, size: int = 70_000) -> Offer:
    path = os.path.join(short_tempdir(testcase), "photo.jpg")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return make_offer(path).offer


def an_accepted_offer(
    testcase: TestCase, store: FakeStore, offer: Offer | None = None, directory: str | None = None
) -> tuple[Transfers, Offer, str]:
    """A Transfers on *store* that took *offer* (a fresh one by default) from alice and
    accepted it into *directory* (the downloads folder by default); and the offer, its id."""
    transfers, _sessions, _events, _ = make_transfers(testcase, store)
    offer = offer or an_offer(testcase)
    transfers._offer_received(ALICE, offer)
    tid = offer.transfer_id.hex()
    testcase.successResultOf(transfers.accept(tid, directory))
    return transfers, offer, tid


def send_a_file(
    testcase: TestCase, transfers: Transfers, size: int = 5000, folder: str | None = None
) -> dict[str, Any]:
    """Write a file of *size* bytes into *folder* (a fresh one by default) and offer it to
    bob; the transfer's view."""
    path = os.path.join(folder or short_tempdir(testcase), "doc.txt")
    with open(path, "wb") as f:
        f.write(b"x" * size)
    return testcase.successResultOf(transfers.send(BOB, path))


def offered(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [p["transfer"]["id"] for name, p in events if name == "transfer.offered"]


class BodyTests(TestCase):
    @given(st.text())
    def test_no_chat_text_is_a_control_body(self, text: str) -> None:
        """When any text is encoded as a chat body, then it is never taken for a control
        record (0xFF never occurs in UTF-8)."""
        self.assertFalse(is_control_body(text.encode("utf-8")))


class ReceiverTests(TestCase):
    def test_offer_received_twice_is_one_transfer(self) -> None:
        """When the same offer arrives twice (the sender wrote it again at a new session),
        then one transfer is listed and one transfer.offered event is raised."""
        transfers, _sessions, events, _store = make_transfers(self)
        offer = an_offer(self)
        body = CONTROL_PREFIX + encode_transfer_record(offer)
        transfers.control_received(ALICE, body)
        transfers.control_received(ALICE, body)
        self.assertEqual([t["id"] for t in transfers.list()], [offer.transfer_id.hex()])
        self.assertEqual(offered(events), [offer.transfer_id.hex()])

    def test_the_offer_event_says_whether_the_daemon_accepts_it(self) -> None:
        """When an offer arrives from a contact without an auto-accept limit, then its
        transfer.offered event says auto_accept false and it waits; when one arrives under
        the contact's limit, the event says true and the transfer is accepted by itself (a
        client has nothing to ask)."""
        transfers, _sessions, events, _store = make_transfers(self)
        asked = an_offer(self, size=5000)
        transfers._offer_received(ALICE, asked)
        self.successResultOf(transfers.set_policy(auto_accept=(ALICE, 10_000)))
        taken = an_offer(self, size=5000)
        transfers._offer_received(ALICE, taken)
        said = {p["transfer"]["id"]: p["auto_accept"] for n, p in events if n == "transfer.offered"}
        self.assertEqual(said, {asked.transfer_id.hex(): False, taken.transfer_id.hex(): True})
        states = {t["id"]: t["state"] for t in transfers.list()}
        self.assertEqual(states[asked.transfer_id.hex()], "offered")
        self.assertEqual(states[taken.transfer_id.hex()], "accepted")

    def test_an_empty_file_is_asked_about_without_an_auto_accept_limit(self) -> None:
        """When a contact without an auto-accept limit offers an empty file, then it waits for
        an answer like any other (its size, 0, is not "within" a limit of none: it was
        accepted by itself, from any contact)."""
        transfers, _sessions, events, _store = make_transfers(self)
        empty = an_offer(self, size=0)
        transfers._offer_received(ALICE, empty)
        said = [p["auto_accept"] for n, p in events if n == "transfer.offered"]
        self.assertEqual(said, [False])
        self.assertEqual(transfers.find(empty.transfer_id.hex()).state, "offered")

    def test_offers_to_accept_by_itself_left_waiting_at_a_stop_are_accepted_at_start(
        self,
    ) -> None:
        """When the daemon stopped (killed, say) after offers it was to accept by itself were
        listed but before it accepted them, then the next start accepts them; an offer from a
        contact without an auto-accept limit still waits."""
        store = FakeStore()
        transfers, _sessions, _events, _ = make_transfers(self, store)
        self.successResultOf(transfers.set_policy(auto_accept=(ALICE, 10_000)))
        taken, asked = an_offer(self, size=5000), an_offer(self, size=5000)
        transfers.accept = lambda *a, **k: defer.Deferred()  # type: ignore[method-assign]
        transfers._offer_received(ALICE, taken)  # its accept never ends: the daemon stops
        transfers._offer_received(BOB, asked)
        transfers.close()
        again, _sessions, _events, _ = make_transfers(self, store)
        self.assertEqual(again.find(taken.transfer_id.hex()).state, "accepted")
        self.assertEqual(again.find(asked.transfer_id.hex()).state, "offered")

    def test_an_offer_the_daemon_cannot_accept_by_itself_waits_saying_why(self) -> None:
        """When an offer under the contact's auto-accept limit arrives and the downloads
        folder cannot take it (here a file where the folder should be), then the offer is not
        lost: it waits, its reason says it was not accepted by itself and why, a
        transfer.changed carries that reason (a client asks then), and accepting it into a
        usable folder still works."""
        transfers, _sessions, events, _store = make_transfers(self)
        blocked = os.path.join(short_tempdir(self), "not-a-folder")
        with open(blocked, "wb") as f:
            f.write(b"x")
        self.successResultOf(transfers.set_policy(auto_accept=(ALICE, 10_000), downloads=blocked))
        offer = an_offer(self, size=5000)
        transfers._offer_received(ALICE, offer)
        tid = offer.transfer_id.hex()
        (view,) = [t for t in transfers.list() if t["id"] == tid]
        self.assertEqual(view["state"], "offered")
        self.assertTrue(view["reason"].startswith("not accepted by itself: "), view["reason"])
        self.assertGreater(len(view["reason"]), len("not accepted by itself: "))
        changed = [p["transfer"] for n, p in events if n == "transfer.changed"]
        self.assertEqual(changed[-1]["id"], tid)
        self.assertEqual(changed[-1]["reason"], view["reason"])
        accepted = self.successResultOf(transfers.accept(tid, short_tempdir(self)))
        self.assertEqual(accepted["state"], "accepted")
        self.assertFalse(accepted["reason"].startswith("not accepted"))

    def test_accept_is_written_again_at_each_session_until_complete(self) -> None:
        """When bob accepts while alice is offline, then Accept is written as soon as her
        session comes up, and again at the next session (the stream has not run)."""
        transfers, sessions, _events, store = make_transfers(self)
        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        view = self.successResultOf(transfers.accept(offer.transfer_id.hex()[:8]))
        self.assertEqual(view["state"], "accepted")
        session = FakeSession()
        sessions[ALICE] = session
        transfers.session_established(ALICE)
        transfers.session_established(ALICE)
        self.assertEqual(session.records, [Accept(offer.transfer_id)] * 2)
        self.assertEqual(list(store.transfers()), [offer.transfer_id.hex()])

    def test_state_survives_a_restart(self) -> None:
        """When the daemon restarts (a new Transfers on the same store), then the accepted
        transfer is listed again with its state, its partial file is reopened and the sender
        is asked (Accept again) to resume."""
        store = FakeStore()
        transfers, _sessions, _events, _ = make_transfers(self, store)
        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        self.successResultOf(transfers.accept(offer.transfer_id.hex()))
        transfers.close()
        again, sessions, _events, _ = make_transfers(self, store)
        self.assertEqual(
            [(t["id"], t["state"]) for t in again.list()],
            [(offer.transfer_id.hex(), "accepted")],
        )
        session = FakeSession()
        sessions[ALICE] = session
        self.successResultOf(again.reopen_partials())
        self.assertIsNotNone(again.find(offer.transfer_id.hex()).partial)
        self.assertEqual(session.records, [Accept(offer.transfer_id)])  # resume, sender

    def test_each_transfer_is_kept_when_a_kept_field_changed(self) -> None:
        """When any field a transfer keeps changes (each in turn, with no state change to
        announce it), then the next save writes that transfer alone, as it is now; a save
        with nothing changed writes nothing; a pruned transfer's setting is deleted."""
        store = FakeStore()
        transfers, _sessions, _events, _ = make_transfers(self, store)
        offers = [an_offer(self, size=10) for _ in range(3)]
        for offer in offers:
            transfers._offer_received(ALICE, offer)
        entry = transfers.find(offers[1].transfer_id.hex())

        def fresh() -> dict[str, Any]:
            return {k: e.to_json() for k, e in transfers._entries.items()}

        self.assertEqual(store.transfers(), fresh())
        changes: list[tuple[str, Any]] = [
            ("offer", replace(entry.offer, name="other.jpg")),
            ("peer", BOB),
            ("sending", True),
            ("state", "accepted"),
            ("created", 1.5),
            ("path", "/p"),
            ("directory", "/d"),
            ("folder_root", "/d/photos"),
            ("reason", "why"),
            ("notice", "cancel"),
            ("done", 7),
            ("ask_next", (ALICE,)),
            ("ask_last", BOB),
            ("asked", 3),
        ]
        key = transfers_module.ENTRY_PREFIX + entry.id
        for name, value in changes:
            with self.subTest(field=name):
                store.written.clear()
                setattr(entry, name, value)
                self.successResultOf(transfers._save())
                self.assertEqual(store.written, [key])
                self.assertEqual(store.transfers(), fresh())
        store.written.clear()
        self.successResultOf(transfers._save())
        self.assertEqual(store.written, [])
        del transfers._entries[entry.id]
        self.successResultOf(transfers._save())
        self.assertNotIn(key, store.settings)
        self.assertEqual(store.transfers(), fresh())

    def test_the_single_document_of_before_is_read_then_replaced(self) -> None:
        """When the store holds the transfers as one document (as Jarvis kept them before),
        then they are listed after unlock, each is written as a setting of its own, and the
        document is deleted; the next unlock lists the same from those settings."""
        store = FakeStore()
        earlier, _sessions, _events, _ = make_transfers(self, store)
        offers = [an_offer(self, size=10) for _ in range(2)]
        for offer in offers:
            earlier._offer_received(ALICE, offer)
        document = {k: e.to_json() for k, e in earlier._entries.items()}
        earlier.close()
        store.settings = {transfers_module.SETTING: json.dumps(document)}
        transfers, _sessions, _events, _ = make_transfers(self, store)
        ids = sorted(o.transfer_id.hex() for o in offers)
        self.assertEqual(sorted(t["id"] for t in transfers.list()), ids)
        self.assertNotIn(transfers_module.SETTING, store.settings)
        self.assertEqual(store.transfers(), document)
        transfers.close()
        again, _sessions, _events, _ = make_transfers(self, store)
        self.assertEqual(sorted(t["id"] for t in again.list()), ids)

    def test_cancel_while_offline_reaches_the_peer_later(self) -> None:
        """When bob cancels an accepted transfer while alice is offline, then his partial file
        is removed at once and the Cancel is written at her next session, once."""
        transfers, sessions, _events, _store = make_transfers(self)
        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        self.successResultOf(transfers.accept(offer.transfer_id.hex()))
        entry = transfers.find(offer.transfer_id.hex())
        directory = entry.directory
        self.successResultOf(transfers.cancel(offer.transfer_id.hex()))
        self.assertEqual(os.listdir(directory), [])
        session = FakeSession()
        sessions[ALICE] = session
        transfers.session_established(ALICE)
        transfers.session_established(ALICE)
        self.assertEqual(session.records, [Cancel(offer.transfer_id, "cancelled")])

    def test_a_cancel_says_its_reason_once(self) -> None:
        """When alice cancels two offers, one with the default reason "cancelled" and one
        with her own, then bob's transfers say "the peer cancelled" and "the peer cancelled:
        wrong file" (not "the peer cancelled: cancelled")."""
        transfers, _sessions, _events, _store = make_transfers(self)
        said = []
        for reason in ("cancelled", "wrong file"):
            offer = an_offer(self)
            transfers.control_received(ALICE, CONTROL_PREFIX + encode_transfer_record(offer))
            cancel = Cancel(offer.transfer_id, reason)
            transfers.control_received(ALICE, CONTROL_PREFIX + encode_transfer_record(cancel))
            said.append(transfers.find(offer.transfer_id.hex()).reason)
        self.assertEqual(said, ["the peer cancelled", "the peer cancelled: wrong file"])

    def test_a_session_up_before_the_transfers_loaded_is_caught_up(self) -> None:
        """When alice's daemon restarts and its session with bob comes up before her kept
        transfers are loaded (the session's event found none), then loading them does what
        the session would have: her offer still waiting is written to bob at once (an
        accepted one would resume its stream the same way), not at the next session."""
        store = FakeStore()
        first, _sessions, _events, _store = make_transfers(self, store)
        view = send_a_file(self, first)
        first.close()
        session = FakeSession()
        make_transfers(self, store, sessions={BOB: session})
        self.assertEqual(
            [(type(r).__name__, r.transfer_id.hex()) for r in session.records],
            [("Offer", view["id"])],
        )


class AcceptFolderTests(TestCase):
    def test_a_folder_that_cannot_take_the_file_says_why(self) -> None:
        """When an offer is accepted into a path that is a file, into a folder without room
        for the file and the reserve, or over the size cap, then each accept is refused with
        a sentence that names the problem in sizes people read, and the offer still waits."""
        from jarvis.files import receive

        transfers, _sessions, _events, _store = make_transfers(self)
        offer = an_offer(self, size=3 * 1024 * 1024)
        transfers._offer_received(ALICE, offer)
        tid = offer.transfer_id.hex()
        a_file = os.path.join(short_tempdir(self), "notes.txt")
        with open(a_file, "w") as f:
            f.write("x")
        refused = self.failureResultOf(transfers.accept(tid, a_file), InvalidInput)
        self.assertEqual(refused.getErrorMessage(), f"{a_file} is not a folder: choose a folder")
        self.patch(receive, "free_bytes", lambda directory: 1024 * 1024)
        refused = self.failureResultOf(transfers.accept(tid), InvalidInput)
        self.assertEqual(
            refused.getErrorMessage(),
            "the folder the file would go to does not have enough free space for it: 1.0 MiB "
            "free, 67 MiB needed (the 3.0 MiB of the file still to come and 64 MiB kept free)",
        )
        self.successResultOf(transfers.set_policy(max_size=1024 * 1024))
        refused = self.failureResultOf(transfers.accept(tid), InvalidInput)
        self.assertEqual(
            refused.getErrorMessage(),
            "the offered file is larger than the size you accept from this contact: 3.0 MiB, "
            "over the limit of 1.0 MiB",
        )
        self.assertEqual(transfers.find(tid).state, "offered")

    def test_accept_or_decline_of_what_is_not_a_waiting_offer_says_what_it_is(self) -> None:
        """When accept or decline is asked of a file we offered, of an offer already accepted
        and of one already declined, then each is refused saying what the transfer is (and
        how to stop it, when it can be), and none of them changes."""
        transfers, _sessions, _events, _store = make_transfers(self)
        sent = send_a_file(self, transfers)["id"]
        offer = an_offer(self, size=3000)
        transfers._offer_received(ALICE, offer)
        accepted = offer.transfer_id.hex()
        self.successResultOf(transfers.accept(accepted, short_tempdir(self)))
        other = replace(offer, transfer_id=os.urandom(16))
        transfers._offer_received(ALICE, other)
        declined = other.transfer_id.hex()
        self.successResultOf(transfers.decline(declined))
        for answer in (transfers.accept, transfers.decline):
            said = [
                self.failureResultOf(answer(tid), InvalidInput).getErrorMessage()
                for tid in (sent, accepted, declined)
            ]
            self.assertEqual(
                said,
                [
                    f"transfer {sent[:8]} is a file you offered: your contact accepts or "
                    f"declines it (jarvis cancel {sent[:8]} withdraws it)",
                    f"transfer {accepted[:8]} is accepted, no longer waiting for an answer "
                    f"(jarvis cancel {accepted[:8]} stops it)",
                    f"transfer {declined[:8]} is already cancelled",
                ],
            )
        states = [transfers.find(t).state for t in (sent, accepted, declined)]
        self.assertEqual(states, ["offered", "accepted", "cancelled"])


class SenderTests(TestCase):
    def test_offer_written_until_answered_then_stream_dialled(self) -> None:
        """When alice offers a file to offline bob, then the Offer is written at his session;
        his Accept makes her dial the data connection, and a later Cancel from him ends it."""
        transfers, sessions, events, _store = make_transfers(self)
        view = send_a_file(self, transfers)
        tid = bytes.fromhex(view["id"])
        session = FakeSession()
        sessions[BOB] = session
        transfers.session_established(BOB)
        self.assertEqual([type(r).__name__ for r in session.records], ["Offer"])
        transfers.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(Accept(tid)))
        network: Any = transfers._network
        self.assertEqual(network.opened, [BOB])
        self.assertEqual(transfers.find(view["id"]).state, "accepted")
        cancel = Cancel(tid, "no \x1b[2J thanks")
        transfers.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(cancel))
        final = transfers.find(view["id"])
        self.assertEqual(final.state, "cancelled")
        self.assertIn("\\x1b", final.reason)
        self.assertEqual(events[-1][1]["transfer"]["state"], "cancelled")

    def test_the_receivers_word_first_lets_the_stream_end_by_itself(self) -> None:
        """When bob's Complete reaches alice over the session before her data connection's own,
        then the transfer is complete at once (one event) but its connection is left to end
        its stream by itself (finish_stream: it carries her next file), not dropped; the
        stream's own end then frees its slot and changes nothing more.  A cancel still drops
        the connection at once."""

        class Recording(FakeNetwork):
            def __init__(self) -> None:
                super().__init__()
                self.observers: list[Any] = []
                self.finished: list[bytes] = []
                self.stopped: list[bytes] = []

            def open_transfer(self, uid: str, source: Any, observer: Any) -> None:
                self.opened.append(uid)
                self.observers.append(observer)  # its end closes the source

            def stop_transfer(self, transfer_id: bytes) -> None:
                self.stopped.append(transfer_id)

            def finish_stream(self, transfer_id: bytes) -> None:
                self.finished.append(transfer_id)

        network = Recording()
        transfers, sessions, events, _store = make_transfers(self, network=network)
        sessions[BOB] = FakeSession()
        transfers.session_established(BOB)
        views = [send_a_file(self, transfers) for _ in range(2)]
        tids = [bytes.fromhex(v["id"]) for v in views]
        for tid in tids:
            transfers.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(Accept(tid)))
        done, cancelled = network.observers
        done.stream_opened()
        cancelled.stream_opened()
        transfers.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(Complete(tids[0])))
        entry = transfers.find(views[0]["id"])
        self.assertEqual((entry.state, entry.streaming), ("complete", True))
        self.assertEqual((network.finished, network.stopped), ([tids[0]], []))
        done.stream_completed(None)
        self.assertFalse(entry.streaming)
        completes = [
            p
            for name, p in events
            if name == "transfer.changed"
            and p["transfer"]["id"] == views[0]["id"]
            and p["transfer"]["state"] == "complete"
        ]
        self.assertEqual(len(completes), 1)
        self.successResultOf(transfers.cancel(views[1]["id"]))
        self.assertEqual(network.stopped, [tids[1]])
        cancelled.stream_ended("the connection was dropped", True)  # as the network's abort

    def test_a_file_gone_before_the_accept_fails_without_telling_its_path(self) -> None:
        """When alice's file is deleted after she offered it and bob then accepts, then the
        transfer fails on her side saying why, and the Cancel written to bob says the same
        without the file's path (nor its folder): the peer learns nothing of her disk."""
        transfers, sessions, _events, _store = make_transfers(self)
        folder = os.path.join(short_tempdir(self), "private-projects")
        os.mkdir(folder)
        view = send_a_file(self, transfers, folder=folder)
        session = FakeSession()
        sessions[BOB] = session
        transfers.session_established(BOB)
        os.remove(os.path.join(folder, "doc.txt"))
        tid = bytes.fromhex(view["id"])
        transfers.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(Accept(tid)))
        entry = transfers.find(view["id"])
        self.assertEqual(entry.state, "failed")
        self.assertEqual(entry.reason, "the file changed or is gone (No such file or directory)")
        [cancel] = [r for r in session.records if isinstance(r, Cancel)]
        self.assertEqual(cancel.reason, entry.reason)
        self.assertNotIn("private-projects", cancel.reason)


class WaitTests(TestCase):
    def test_waits_fire_at_the_end_and_a_cancelled_one_is_forgotten(self) -> None:
        """When three waits are made on an offer and one of them is cancelled (its client
        went), then the offer keeps only the other two, and both fire with the final view
        when the offer is cancelled; a wait on an ended transfer fires at once."""
        transfers, _sessions, _events, _store = make_transfers(self)
        view = send_a_file(self, transfers, size=100)
        entry = transfers.find(view["id"])
        first, gone, last = (transfers.wait(entry) for _ in range(3))
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        self.assertEqual(entry.waiters, [first, last])
        self.successResultOf(transfers.cancel(view["id"]))
        for d in (first, last):
            self.assertEqual(self.successResultOf(d)["state"], "cancelled")
        self.assertEqual(entry.waiters, [])
        self.assertEqual(self.successResultOf(transfers.wait(entry))["state"], "cancelled")


class SendWhatTests(TestCase):
    def test_what_cannot_be_sent_is_refused_with_what_to_do(self) -> None:
        """When a folder, a named pipe or a file the kernel makes up as it is read (its size
        0, its content not) is sent, then each is refused before any offer, saying what it is
        and what to send instead; an empty regular file is offered (0 bytes)."""
        transfers, _sessions, _events, _store = make_transfers(self)
        folder = short_tempdir(self)
        fifo = os.path.join(folder, "pipe")
        os.mkfifo(fifo)
        empty = os.path.join(folder, "empty.txt")
        open(empty, "wb").close()
        said = {
            path: self.failureResultOf(transfers.send(BOB, path), InvalidInput).getErrorMessage()
            for path in (folder, fifo)
        }
        self.assertEqual(
            said[folder],
            "cannot read the file: it is a folder: send the files in it (FOLDER/* names them "
            "all) or one archive of it; to a contact, jarvis send-file sends a folder whole",
        )
        self.assertEqual(
            said[fifo], "cannot read the file: not a regular file (a device, pipe or socket)"
        )
        if os.path.exists("/proc/self/status"):
            refused = self.failureResultOf(transfers.send(BOB, "/proc/self/status"), InvalidInput)
            self.assertIn("its size is not known before it is read", refused.getErrorMessage())
        self.assertEqual(transfers.list(), [])
        view = self.successResultOf(transfers.send(BOB, empty))
        self.assertEqual((view["name"], view["size"]), ("empty.txt", 0))


class FolderTests(TestCase):
    def test_a_folder_is_offered_file_by_file_with_the_folder_each_is_in(self) -> None:
        """When a folder holding files in folders below it, a link to a file, a link to a
        folder, a named pipe and an empty folder is sent, then each regular file is one
        offer naming its folder (``photos``, ``photos/2024``), all with one folder id, and
        nothing else is offered, the answer counting the three entries left out and naming
        the first; an empty folder, a file and a folder of too many files are refused saying
        so; the hashing is reported file by file."""
        transfers, sessions, _events, _store = make_transfers(self)
        sessions[BOB] = session = FakeSession()
        top = os.path.join(short_tempdir(self), "photos")
        os.makedirs(os.path.join(top, "2024", "summer"))
        os.makedirs(os.path.join(top, "empty"))
        for name, data in [("a.jpg", b"a" * 70_000), ("2024/b.jpg", b"b"), (".hidden", b"h")]:
            with open(os.path.join(top, name), "wb") as f:
                f.write(data)
        os.symlink(os.path.join(top, "a.jpg"), os.path.join(top, "link.jpg"))
        os.symlink(short_tempdir(self), os.path.join(top, "linked"))
        os.mkfifo(os.path.join(top, "pipe"))
        heard: list[dict[str, Any]] = []
        result = self.successResultOf(transfers.send_folder(BOB, top, heard.append))
        self.assertEqual(result["folder"], "photos")
        self.assertEqual(heard, [{"folder": "photos", "hashed": n, "files": 3} for n in (1, 2, 3)])
        self.assertEqual(result["failed"], [])
        self.assertEqual((result["left_out"], result["left_out_first"]), (3, "photos/link.jpg"))
        self.assertEqual(
            [(v["folder"], v["name"], v["size"]) for v in result["transfers"]],
            [("photos", ".hidden", 1), ("photos", "a.jpg", 70_000), ("photos/2024", "b.jpg", 1)],
        )
        self.assertEqual(len({r.folder_id for r in session.records}), 1)  # type: ignore[attr-defined]
        self.assertEqual([r.folder for r in session.records], ["photos", "photos", "photos/2024"])  # type: ignore[attr-defined]
        for path, said in [
            (os.path.join(top, "empty"), "the folder holds no file to send (links are left out)"),
            (os.path.join(top, "a.jpg"), "not a folder: send-file sends a file as it is"),
        ]:
            refused = self.failureResultOf(transfers.send_folder(BOB, path), InvalidInput)
            self.assertEqual(refused.getErrorMessage(), said)
        self.patch(transfers_module, "folder_files", partial(folder_files, max_files=2))
        refused = self.failureResultOf(transfers.send_folder(BOB, top), InvalidInput)
        self.assertEqual(
            refused.getErrorMessage(),
            "cannot send the folder: it holds more than 2 files: send an archive of it",
        )
        self.assertEqual(len(transfers.list()), 3)

    def test_the_files_of_one_folder_land_in_one_new_folder(self) -> None:
        """When bob accepts the files of a folder alice sent, where a folder of that name
        already is, then they land in one new folder (``photos (1)``) with the folders below
        it, also a file accepted after a restart; another folder sent lands in ``photos
        (2)``; a hostile folder (``../../x``) stays inside the folder accepted into."""
        store = FakeStore()
        transfers, _sessions, _events, _ = make_transfers(self, store)
        base = transfers.downloads
        os.makedirs(os.path.join(base, "photos"))
        first, other = b"\x01" * 16, b"\x02" * 16

        def offer(folder: str, folder_id: bytes) -> str:
            sent = replace(an_offer(self, size=10), folder=folder, folder_id=folder_id)
            transfers._offer_received(ALICE, sent)
            return sent.transfer_id.hex()

        def accepted(tid: str, into: Any = transfers) -> str:
            return str(self.successResultOf(into.accept(tid))["directory"])

        a, b, c = offer("photos", first), offer("photos/2024", first), offer("photos", other)
        hostile = offer("../../x", b"\x03" * 16)
        late = offer("photos/2024/summer", first)
        self.assertEqual(accepted(a), os.path.join(base, "photos (1)"))
        self.assertEqual(accepted(b), os.path.join(base, "photos (1)", "2024"))
        self.assertEqual(accepted(c), os.path.join(base, "photos (2)"))
        self.assertEqual(accepted(hostile), os.path.join(base, "file", "file", "x"))
        self.assertEqual(transfers.find(a).folder_root, os.path.join(base, "photos (1)"))
        transfers.close()
        again, _sessions, _events, _ = make_transfers(self, store)
        again._default_downloads = base
        self.assertEqual(accepted(late, again), os.path.join(base, "photos (1)", "2024", "summer"))
        self.assertEqual(sorted(os.listdir(base)), ["file", "photos", "photos (1)", "photos (2)"])


class RoutedSession:
    """A session whose control records go straight to the peer's Transfers."""

    def __init__(self, peer: Transfers, me: str) -> None:
        self.peer = peer
        self.me = me
        self.records: list[TransferRecord] = []

    def send_message(self, message_id: bytes, body: bytes, created_ms: int) -> None:
        self.records.append(parse_transfer_record(body[len(CONTROL_PREFIX) :]))
        self.peer.control_received(self.me, body)


class UndialableNetwork:
    """The sender's network: no address of the receiver answers."""

    def __init__(self) -> None:
        self.dials = 0

    def open_transfer(self, uid: str, source: Any, observer: Any) -> None:
        self.dials += 1
        observer.stream_ended("no data connection: connection refused", True)

    def stop_transfer(self, transfer_id: bytes) -> None:
        pass

    def finish_stream(self, transfer_id: bytes) -> None:
        pass


class DialBackNetwork:
    """The receiver's network: dials the sender back, in memory, through its outbound_pull."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.sender: Transfers | None = None
        self.pulls = 0

    def open_transfer(self, uid: str, source: Any, observer: Any) -> None:
        raise AssertionError("the receiver never sends")

    def pull_transfer(self, uid: str, partial: Any, observer: Any) -> None:
        from twisted.test.iosim import connectedServerAndClient

        from jarvis.net.transfer import TransferReceiver, TransferSender

        self.pulls += 1
        assert self.sender is not None
        found = self.sender.outbound_pull(self.me, partial.offer.transfer_id)
        assert found is not None, "the sender refused the dial back"
        source, sender_observer = found
        _server, _client, pump = connectedServerAndClient(
            lambda: TransferSender(
                source, sender_observer, run_blocking=lambda f, *a: defer.maybeDeferred(f, *a)
            ),
            lambda: TransferReceiver(
                partial, observer, run_blocking=lambda f, *a: defer.maybeDeferred(f, *a)
            ),
        )
        pump.flush()

    def stop_transfer(self, transfer_id: bytes) -> None:
        pass

    def finish_stream(self, transfer_id: bytes) -> None:
        pass


class DialBackTests(TestCase):
    def make(self, network: Any) -> tuple[Transfers, dict[str, Any]]:
        sessions: dict[str, Any] = {}
        transfers = Transfers(
            clock=Clock(),
            now=lambda: 1_700_000_000.0,
            emit=lambda name, payload: None,
            run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
            display_name=lambda uid: uid[:4],
            downloads=short_tempdir(self),
        )
        self.successResultOf(transfers.open(FakeStore(), network, sessions.get))
        return transfers, sessions

    def test_receiver_dials_back_when_the_sender_cannot_dial_it(self) -> None:
        """When the sender cannot dial the receiver for the data (the session is relayed or
        the receiver takes no inbound connections), then it asks the receiver to dial back
        (DialBack in the session), the receiver dials the sender (pull preface: the dialling
        side receives), the file arrives byte-identical and both sides say complete; a second
        dial back for the same transfer is refused, and so is one for a transfer never
        offered to that contact."""
        import hashlib

        alice_net, bob_net = UndialableNetwork(), DialBackNetwork(BOB)
        alice, alice_sessions = self.make(alice_net)
        bob, bob_sessions = self.make(bob_net)
        bob_net.sender = alice
        to_bob, to_alice = RoutedSession(bob, ALICE), RoutedSession(alice, BOB)
        alice_sessions[BOB], bob_sessions[ALICE] = to_bob, to_alice
        path = os.path.join(short_tempdir(self), "big.bin")
        content = os.urandom(3 * 1024 * 1024 + 5)
        with open(path, "wb") as f:
            f.write(content)
        view = self.successResultOf(alice.send(BOB, path))
        self.successResultOf(bob.accept(view["id"]))
        self.assertEqual(alice_net.dials, 1)
        self.assertIn("DialBack", [type(r).__name__ for r in to_bob.records])
        self.assertEqual(bob_net.pulls, 1)
        received = bob.find(view["id"])
        self.assertEqual(received.state, "complete")
        with open(received.path, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(content).digest())
        self.assertEqual(alice.find(view["id"]).state, "complete")
        tid = bytes.fromhex(view["id"])
        self.assertIsNone(alice.outbound_pull(BOB, tid))
        self.assertIsNone(alice.outbound_pull(BOB, os.urandom(16)))

    def test_dial_back_only_for_the_offered_contact_and_an_accepted_transfer(self) -> None:
        """When the sender's dial fails, then its dial-back source is handed only to the
        contact the file was offered to (another contact's pull is refused) and not after the
        transfer is cancelled."""
        alice_net = UndialableNetwork()
        alice, alice_sessions = self.make(alice_net)
        session = FakeSession()
        alice_sessions[BOB] = session
        path = os.path.join(short_tempdir(self), "doc.txt")
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
        view = self.successResultOf(alice.send(BOB, path))
        tid = bytes.fromhex(view["id"])
        alice.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(Accept(tid)))
        self.assertEqual([type(r).__name__ for r in session.records], ["Offer", "DialBack"])
        self.assertIsNone(alice.outbound_pull("c" * 52, tid))
        self.successResultOf(alice.cancel(view["id"]))
        self.assertIsNone(alice.outbound_pull(BOB, tid))


class MeetingRelay:
    """An in-memory relay: joins the sender's and the receiver's ends of one transfer."""

    def __init__(self) -> None:
        self.ends: dict[bool, tuple[Any, Any]] = {}
        self.joins: list[tuple[str, bool]] = []

    def join(self, uid: str, sending: bool, stream: Any, observer: Any) -> None:
        from twisted.test.iosim import connectedServerAndClient

        from jarvis.net.transfer import TransferReceiver, TransferSender

        self.joins.append((uid, sending))
        self.ends[sending] = (stream, observer)
        if len(self.ends) < 2:
            return
        (source, sent_obs), (partial, recv_obs) = self.ends[True], self.ends[False]
        self.ends = {}
        run = lambda f, *a: defer.maybeDeferred(f, *a)  # noqa: E731
        _server, _client, pump = connectedServerAndClient(
            lambda: TransferSender(source, sent_obs, run_blocking=run),
            lambda: TransferReceiver(partial, recv_obs, run_blocking=run),
        )
        pump.flush()


class NoDirectPathNetwork:
    """Either side's network when neither can dial the other: every dial (and dial back)
    fails at once; both may meet at *relay*."""

    def __init__(self, relay: MeetingRelay, relays: bool = True) -> None:
        self.relay = relay
        self.relays = relays
        self.dials = self.pulls = 0
        self.pending_dial: Any = None

    def has_relay(self, uid: str) -> bool:
        return self.relays

    def open_transfer(self, uid: str, source: Any, observer: Any) -> None:
        self.dials += 1
        if self.pending_dial is False:
            self.pending_dial = observer  # held "in flight" until the test ends it
            return
        observer.stream_ended("no data connection: network unreachable", True)

    def pull_transfer(self, uid: str, partial: Any, observer: Any) -> None:
        self.pulls += 1
        observer.stream_ended("no data connection: network unreachable", True)

    def relay_send(self, uid: str, source: Any, observer: Any) -> None:
        self.relay.join(uid, True, source, observer)

    def relay_receive(self, uid: str, partial: Any, observer: Any) -> None:
        self.relay.join(uid, False, partial, observer)

    def stop_transfer(self, transfer_id: bytes) -> None:
        pass

    def finish_stream(self, transfer_id: bytes) -> None:
        pass


class RelayMeetTests(TestCase):
    """Neither side can dial the other: both meet at the relay for the data (issue 18)."""

    def make(self, network: Any) -> tuple[Transfers, dict[str, Any]]:
        sessions: dict[str, Any] = {}
        transfers = Transfers(
            clock=Clock(),
            now=lambda: 1_700_000_000.0,
            emit=lambda name, payload: None,
            run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
            display_name=lambda uid: uid[:4],
            downloads=short_tempdir(self),
        )
        self.successResultOf(transfers.open(FakeStore(), network, sessions.get))
        return transfers, sessions

    def pair(
        self, relays: bool = True
    ) -> tuple[Transfers, Transfers, NoDirectPathNetwork, NoDirectPathNetwork, MeetingRelay]:
        relay = MeetingRelay()
        alice_net, bob_net = NoDirectPathNetwork(relay, relays), NoDirectPathNetwork(relay, relays)
        alice, alice_sessions = self.make(alice_net)
        bob, bob_sessions = self.make(bob_net)
        alice_sessions[BOB], bob_sessions[ALICE] = (
            RoutedSession(bob, ALICE),
            RoutedSession(alice, BOB),
        )
        return alice, bob, alice_net, bob_net, relay

    def a_file(self, size: int) -> tuple[str, bytes]:
        import hashlib

        path = os.path.join(short_tempdir(self), "big.bin")
        content = os.urandom(size)
        with open(path, "wb") as f:
            f.write(content)
        return path, hashlib.sha256(content).digest()

    def test_both_dials_fail_then_both_meet_at_the_relay(self) -> None:
        """When the sender cannot dial the receiver and the receiver's dial back fails too,
        then the receiver joins the relay and asks the sender (a DialBack in the other
        direction) to join as well; the sender joins, and the file arrives byte-identical with
        both sides complete.  Direct paths were tried first, once each."""
        import hashlib

        alice, bob, alice_net, bob_net, relay = self.pair()
        path, digest = self.a_file(2 * 1024 * 1024 + 7)
        view = self.successResultOf(alice.send(BOB, path))
        self.successResultOf(bob.accept(view["id"]))
        self.assertEqual((alice_net.dials, bob_net.pulls), (1, 1))
        self.assertEqual(relay.joins, [(ALICE, False), (BOB, True)])  # receiver first
        received = bob.find(view["id"])
        self.assertEqual(received.state, "complete")
        with open(received.path, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), digest)
        self.assertEqual(alice.find(view["id"]).state, "complete")

    def test_relay_request_during_a_dial_joins_once_the_dial_fails(self) -> None:
        """When the receiver's request to meet at the relay reaches the sender while a dial of
        the sender's is still in flight, then the sender does not join at once (one stream at
        a time) but as soon as that dial fails, instead of asking for another dial back; a
        request from another contact for the same transfer id is ignored."""
        alice, _bob, alice_net, _bob_net, relay = self.pair()
        path, _digest = self.a_file(5000)
        view = self.successResultOf(alice.send(BOB, path))
        tid = bytes.fromhex(view["id"])
        alice_net.pending_dial = False
        alice.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(Accept(tid)))
        in_flight = alice_net.pending_dial
        self.assertIsNotNone(in_flight)
        alice.control_received("c" * 52, CONTROL_PREFIX + encode_transfer_record(DialBack(tid)))
        alice.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(DialBack(tid)))
        self.assertEqual(relay.joins, [])
        self.assertTrue(alice.find(view["id"]).relay_wanted)
        in_flight.stream_ended("no data connection: timed out", True)
        self.assertEqual(relay.joins, [(BOB, True)])
        self.assertFalse(alice.find(view["id"]).relay_wanted)

    def test_no_relay_known_no_meeting(self) -> None:
        """When no relay is known for the pair, then a failed dial back ends there: the
        receiver neither joins a relay nor asks the sender to (no DialBack back), and the
        transfer stays accepted for the sender's next attempt."""
        alice, bob, _alice_net, bob_net, relay = self.pair(relays=False)
        path, _digest = self.a_file(5000)
        view = self.successResultOf(alice.send(BOB, path))
        self.successResultOf(bob.accept(view["id"]))
        self.assertEqual(bob_net.pulls, 1)
        self.assertEqual(relay.joins, [])
        self.assertEqual(bob.find(view["id"]).state, "accepted")
        self.assertEqual(alice.find(view["id"]).state, "accepted")


#: Seconds a dial into a NAT that drops packets waits before it fails (the handshake timeout).
DROP_TIMEOUT = 10.0


class DroppingNetwork(NoDirectPathNetwork):
    """Either side's network behind a NAT that drops direct packets: a dial (or dial back)
    never answers and fails only after :data:`DROP_TIMEOUT` on *clock*, unless abandoned
    first (``abandon_data_dial``, as the real network's); the relay works.  *relayed* says
    whether the session with the contact runs through the relay (``path_of``)."""

    def __init__(self, relay: MeetingRelay, clock: Clock, relayed: bool = False) -> None:
        super().__init__(relay)
        self.clock = clock
        self.relayed = relayed
        self.in_flight: dict[bytes, tuple[Any, Any]] = {}
        self.abandoned = 0

    def path_of(self, uid: str) -> Any:
        from jarvis.protocol.peerpath import accepted, relayed

        return relayed("127.0.0.1:1") if self.relayed else accepted()

    def _hang(self, transfer_id: bytes, observer: Any) -> None:
        def timed_out() -> None:
            del self.in_flight[transfer_id]
            observer.stream_ended("no data connection: timed out", True)

        self.in_flight[transfer_id] = (observer, self.clock.callLater(DROP_TIMEOUT, timed_out))

    def open_transfer(self, uid: str, source: Any, observer: Any) -> None:
        self.dials += 1
        self._hang(source.prepared.offer.transfer_id, observer)

    def pull_transfer(self, uid: str, partial: Any, observer: Any) -> None:
        self.pulls += 1
        self._hang(partial.offer.transfer_id, observer)

    def abandon_data_dial(self, transfer_id: bytes) -> bool:
        held = self.in_flight.pop(transfer_id, None)
        if held is None:
            return False
        observer, timer = held
        timer.cancel()
        self.abandoned += 1
        observer.stream_ended("no data connection: no address answered within the head start", True)
        return True


class RelayHeadStartTests(TestCase):
    """Relayed transfers start fast (issue 18): a dial that does not answer is not waited for
    when a relay is known, and a relayed session sends its data through the relay at once."""

    def pair(
        self, relayed: bool
    ) -> tuple[Transfers, Transfers, DroppingNetwork, DroppingNetwork, MeetingRelay, Clock]:
        clock = Clock()
        relay = MeetingRelay()
        nets = DroppingNetwork(relay, clock, relayed), DroppingNetwork(relay, clock, relayed)
        sides: list[Transfers] = []
        sessions: list[dict[str, Any]] = []
        for network in nets:
            mine: dict[str, Any] = {}
            transfers = Transfers(
                clock=clock,
                now=lambda: 1_700_000_000.0,
                emit=lambda name, payload: None,
                run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
                display_name=lambda uid: uid[:4],
                downloads=short_tempdir(self),
            )
            self.successResultOf(transfers.open(FakeStore(), network, mine.get))
            sides.append(transfers)
            sessions.append(mine)
        alice, bob = sides
        sessions[0][BOB], sessions[1][ALICE] = RoutedSession(bob, ALICE), RoutedSession(alice, BOB)
        joined_at: list[float] = []
        join = relay.join

        def timed_join(uid: str, sending: bool, stream: Any, observer: Any) -> None:
            joined_at.append(clock.seconds())
            join(uid, sending, stream, observer)

        relay.join = timed_join  # type: ignore[method-assign]
        self.joined_at = joined_at
        return alice, bob, nets[0], nets[1], relay, clock

    def send_one(self, alice: Transfers, bob: Transfers) -> tuple[str, bytes]:
        import hashlib

        path = os.path.join(short_tempdir(self), "photo.jpg")
        content = os.urandom(300_000)
        with open(path, "wb") as f:
            f.write(content)
        view = self.successResultOf(alice.send(BOB, path))
        self.successResultOf(bob.accept(view["id"]))
        return view["id"], hashlib.sha256(content).digest()

    def assert_received(self, alice: Transfers, bob: Transfers, tid: str, digest: bytes) -> None:
        import hashlib

        received = bob.find(tid)
        self.assertEqual((received.state, alice.find(tid).state), ("complete", "complete"))
        with open(received.path, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), digest)

    def test_dials_that_never_answer_give_way_to_the_relay_after_the_head_start(self) -> None:
        """When a NAT drops both sides' direct packets (dials never answer, each would fail
        only after its 10 s timeout) and a relay is known, then the sender's dial is abandoned
        after the head start, the receiver's dial back after its own, both meet at the relay
        two head starts after the accept (not after both timeouts, 20 s), and the file
        arrives byte-identical; no dial is left in flight."""
        from jarvis.core.transfers import RELAY_HEAD_START

        alice, bob, alice_net, bob_net, relay, clock = self.pair(relayed=False)
        tid, digest = self.send_one(alice, bob)
        self.assertEqual((alice_net.dials, bob_net.pulls, relay.joins), (1, 0, []))
        clock.advance(RELAY_HEAD_START - 0.01)
        self.assertEqual((bob_net.pulls, relay.joins), (0, []))  # still the head start
        while bob.find(tid).state != "complete" and clock.seconds() < 3 * DROP_TIMEOUT:
            clock.advance(0.01)
        started = max(self.joined_at)
        print(f"\nrelayed data connection started {started:.2f} s after the accept (clock)")
        self.assertLessEqual(started, 2 * RELAY_HEAD_START + 0.02)
        self.assertEqual(bob_net.pulls, 1)
        self.assertEqual(sorted(relay.joins), [(ALICE, False), (BOB, True)])
        self.assert_received(alice, bob, tid, digest)
        self.assertEqual((alice_net.in_flight, bob_net.in_flight), ({}, {}))
        self.assertGreaterEqual(alice_net.abandoned + bob_net.abandoned, 2)
        waiting = [c.func.__name__ for c in clock.getDelayedCalls()]
        # progress, and the finished transfers' pruning, only
        self.assertEqual([name for name in waiting if name not in ("_tick", "_prune_later")], [])

    def test_a_relayed_session_sends_its_data_through_the_relay_at_once(self) -> None:
        """When the session with the contact is relayed right now, then neither side dials
        directly: the sender joins the relay when the accept arrives and asks the receiver,
        which joins at once too (clock not advanced); the file arrives byte-identical."""
        alice, bob, alice_net, bob_net, relay, _clock = self.pair(relayed=True)
        tid, digest = self.send_one(alice, bob)
        print(f"\nrelayed session: data connection started {max(self.joined_at):.2f} s (clock)")
        self.assertEqual((alice_net.dials, bob_net.pulls), (0, 0))
        self.assertEqual(relay.joins, [(BOB, True), (ALICE, False)])  # sender first
        self.assertEqual(self.joined_at, [0.0, 0.0])
        self.assert_received(alice, bob, tid, digest)

    def test_a_receiver_not_ready_is_asked_again_when_it_accepts_again(self) -> None:
        """When the sender waits at the relay and its ask to meet there did not reach the
        receiver (it restarted, its partial file was not open yet), then the receiver's next
        Accept (sent once its partial file is reopened) makes the sender ask again, and the
        receiver joins; the sender does not join twice and the file arrives."""
        alice, bob, _alice_net, _bob_net, relay, _clock = self.pair(relayed=True)
        route = alice._sessions(BOB)  # type: ignore[attr-defined]
        deliver = route.send_message
        dropped: list[bytes] = []

        def lossy(message_id: bytes, body: bytes, created_ms: int) -> None:
            record = parse_transfer_record(body[len(CONTROL_PREFIX) :])
            if isinstance(record, DialBack) and not dropped:
                dropped.append(body)
                return
            deliver(message_id, body, created_ms)

        route.send_message = lossy
        path = os.path.join(short_tempdir(self), "doc.pdf")
        with open(path, "wb") as f:
            f.write(os.urandom(5000))
        view = self.successResultOf(alice.send(BOB, path))
        self.successResultOf(bob.accept(view["id"]))
        self.assertEqual((len(dropped), relay.joins), (1, [(BOB, True)]))
        self.assertEqual(bob.find(view["id"]).state, "accepted")
        tid = bytes.fromhex(view["id"])
        alice.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(Accept(tid)))
        self.assertEqual(relay.joins, [(BOB, True), (ALICE, False)])
        self.assertEqual(
            (bob.find(view["id"]).state, alice.find(view["id"]).state), ("complete",) * 2
        )


class WaitingReasonTests(TestCase):
    def test_resumable_end_says_why_until_a_stream_opens(self) -> None:
        """When a receiving stream ends as resumable because the disk is full, then the
        transfer is accepted again with the reason in files.list and its transfer.changed
        event (kept across a restart), and the reason is cleared when a stream opens."""
        store = FakeStore()
        transfers, _sessions, events, _ = make_transfers(self, store)
        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        tid = offer.transfer_id.hex()
        self.successResultOf(transfers.accept(tid))
        entry = transfers.find(tid)
        transfers.stream_opened(entry)
        self.assertEqual(transfers.find(tid).state, "streaming")
        transfers.stream_ended(entry, DISK_FULL, True)
        (listed,) = transfers.list()
        self.assertEqual((listed["state"], listed["reason"]), ("accepted", DISK_FULL))
        changed = [p["transfer"] for name, p in events if name == "transfer.changed"]
        self.assertEqual((changed[-1]["state"], changed[-1]["reason"]), ("accepted", DISK_FULL))
        transfers.close()
        again, _sessions, _events, _ = make_transfers(self, store)
        (listed,) = again.list()
        self.assertEqual((listed["state"], listed["reason"]), ("accepted", DISK_FULL))
        again.stream_opened(again.find(tid))
        (listed,) = again.list()
        self.assertEqual((listed["state"], listed["reason"]), ("streaming", ""))

    def test_a_full_disk_refuses_data_connections_until_a_chunk_fits(self) -> None:
        """When a receiving stream ends because the disk is full, then the sender's data
        connections are refused (nothing is put on the wire to be refused again) while the
        free space is short, looked at every few seconds (also after a restart); once a
        chunk fits, the receiver writes Accept again (the sender dials at once) and the next
        data connection is taken; a cancel stops the looking."""
        free = {"bytes": 1000}
        looked: list[str] = []

        def fake_free(directory: str) -> int:
            looked.append(directory)
            return free["bytes"]

        self.patch(transfers_module, "free_bytes", fake_free)
        store = FakeStore()
        transfers, sessions, _events, _ = make_transfers(self, store)
        offer = an_offer(self, size=70_000)
        transfers._offer_received(ALICE, offer)
        tid = offer.transfer_id.hex()
        self.successResultOf(transfers.accept(tid))
        entry = transfers.find(tid)
        self.assertIsNotNone(transfers.inbound_stream(ALICE, offer.transfer_id))
        transfers.stream_opened(entry)
        transfers.stream_ended(entry, DISK_FULL, True)
        self.assertIsNone(transfers.inbound_stream(ALICE, offer.transfer_id))
        clock: Any = transfers.clock
        clock.advance(transfers_module.SPACE_PROBE_INTERVAL)
        self.assertEqual(len(looked), 1)
        self.assertIsNone(transfers.inbound_stream(ALICE, offer.transfer_id))

        transfers.close()  # a restart while the disk is still full
        again, sessions, _events, _ = make_transfers(self, store)
        self.assertEqual(again.find(tid).reason, DISK_FULL)
        self.successResultOf(again.reopen_partials())
        self.assertIsNone(again.inbound_stream(ALICE, offer.transfer_id))
        session = FakeSession()
        sessions[ALICE] = session
        free["bytes"] = 70_000
        again.clock.advance(transfers_module.SPACE_PROBE_INTERVAL)  # type: ignore[attr-defined]
        self.assertEqual(len(looked), 2)
        self.assertEqual(session.records, [Accept(offer.transfer_id)])
        self.assertIsNotNone(again.inbound_stream(ALICE, offer.transfer_id))

        entry = again.find(tid)
        again.stream_opened(entry)
        again.stream_ended(entry, DISK_FULL, True)
        self.successResultOf(again.cancel(tid))
        again.clock.advance(10 * transfers_module.SPACE_PROBE_INTERVAL)  # type: ignore[attr-defined]
        self.assertEqual(len(looked), 2)


CAROL = "c" * 52
GROUP = b"\x42" * 16


class GroupFileTests(TestCase):
    def test_one_hash_one_transfer_per_member_each_with_its_own_keys(self) -> None:
        """When a file is sent into a group of three others, then there is one transfer per
        member, each offered into the group over its own session, with the same content hash
        but its own transfer id and secret; a member's Accept dials that member only."""
        transfers, sessions, _events, _store = make_transfers(self)
        hashed: list[str] = []
        run = transfers._run
        transfers._run = lambda f, *a: (hashed.append(f.__name__), run(f, *a))[1]
        path = os.path.join(short_tempdir(self), "notes.txt")
        with open(path, "wb") as f:
            f.write(os.urandom(9000))
        members = [ALICE, BOB, CAROL]
        for uid in members:
            sessions[uid] = FakeSession()
        views = self.successResultOf(transfers.send_many(members, path, GROUP))
        self.assertEqual(hashed, ["_prepare"])
        self.assertEqual([v["contact"] for v in views], members)
        self.assertEqual({v["group"] for v in views}, {GROUP.hex()})
        offers = []
        for uid in members:
            session = sessions[uid]
            assert session is not None
            [record] = session.records
            assert isinstance(record, Offer)
            offers.append(record)
        self.assertEqual([o.transfer_id.hex() for o in offers], [v["id"] for v in views])
        self.assertEqual({o.group_id for o in offers}, {GROUP})
        self.assertEqual(len({o.content_hash for o in offers}), 1)
        self.assertEqual(len({o.transfer_id for o in offers}), 3)
        self.assertEqual(len({o.secret for o in offers}), 3)
        accept = Accept(offers[1].transfer_id)
        transfers.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(accept))
        network: Any = transfers._network
        self.assertEqual(network.opened, [BOB])
        self.assertEqual(transfers.find(views[0]["id"]).state, "offered")

    def test_offers_are_taken_only_where_the_node_allows(self) -> None:
        """When offers arrive and the node allows a group's offers from its members only
        (and no offer from a stranger outside a group), then an offer into the group from a
        member is listed with the group's id, while one from a non-member into it, one into
        another group and one from a stranger outside any group are dropped unseen."""
        transfers, _sessions, events, _store = make_transfers(self)
        members = {(ALICE, GROUP)}
        contacts = {BOB}
        transfers.may_offer = lambda uid, gid: (uid, gid) in members if gid else uid in contacts
        transfers.member_name = lambda gid, uid: "~alice" if gid == GROUP else None
        base = an_offer(self)

        def offer_from(uid: str, group_id: bytes) -> str:
            offer = Offer(
                os.urandom(16),
                base.name,
                base.size,
                base.content_hash,
                base.media_type,
                base.chunk_size,
                os.urandom(32),
                group_id=group_id,
            )
            transfers.control_received(uid, CONTROL_PREFIX + encode_transfer_record(offer))
            return offer.transfer_id.hex()

        taken = offer_from(ALICE, GROUP)
        from_contact = offer_from(BOB, b"")
        offer_from(CAROL, GROUP)  # not a member
        offer_from(ALICE, b"\x43" * 16)  # a group we do not share
        offer_from(ALICE, b"")  # a member, not a contact, outside the group
        self.assertEqual(offered(events), [taken, from_contact])
        view = transfers.view(transfers.find(taken))
        self.assertEqual((view["group"], view["contact_name"]), (GROUP.hex(), "~alice"))
        self.assertIsNone(transfers.view(transfers.find(from_contact))["group"])


class RevokeTests(TestCase):
    """Transfers with those we no longer exchange files with end (Transfers.revoke)."""

    def test_a_group_sweep_ends_only_that_groups_refused_transfers(self) -> None:
        """When bob is no longer in the group and the group's transfers are swept, then the
        file offered into it to bob ends cancelled with the reason and bob is told (Cancel),
        while the same group's transfer to alice, a file sent to bob outside any group and one
        into another group go on."""
        transfers, sessions, _events, _store = make_transfers(self)
        path = os.path.join(short_tempdir(self), "notes.txt")
        with open(path, "wb") as f:
            f.write(os.urandom(9000))
        for uid in (ALICE, BOB):
            sessions[uid] = FakeSession()
        other_group = b"\x43" * 16
        into_group = self.successResultOf(transfers.send_many([ALICE, BOB], path, GROUP))
        into_other = self.successResultOf(transfers.send_many([BOB], path, other_group))
        direct = self.successResultOf(transfers.send(BOB, path))
        asked: list[tuple[str, bytes]] = []

        def refusal(uid: str, gid: bytes) -> tuple[str, bool] | None:
            asked.append((uid, gid))
            return ("not in the group any more", True) if uid == BOB else None

        self.successResultOf(transfers.revoke(refusal, group_id=GROUP))
        self.assertEqual(sorted(asked), sorted([(ALICE, GROUP), (BOB, GROUP)]))
        to_alice, to_bob = (transfers.find(v["id"]) for v in into_group)
        self.assertEqual((to_bob.state, to_bob.reason), ("cancelled", "not in the group any more"))
        self.assertEqual(to_alice.state, "offered")
        self.assertEqual(transfers.find(into_other[0]["id"]).state, "offered")
        self.assertEqual(transfers.find(direct["id"]).state, "offered")
        bob_session = sessions[BOB]
        assert bob_session is not None
        cancels = [r for r in bob_session.records if isinstance(r, Cancel)]
        self.assertEqual([c.transfer_id.hex() for c in cancels], [to_bob.id])

    def test_a_contact_sweep_leaves_group_files_and_may_keep_quiet(self) -> None:
        """When alice is swept as a contact (blocked: not told), then her accepted incoming
        file outside any group ends cancelled, its partial file is removed and no Cancel is
        written to her, while her offer into a group goes on (the group decides)."""
        transfers, sessions, _events, _store = make_transfers(self)
        sessions[ALICE] = FakeSession()
        direct = an_offer(self)
        transfers._offer_received(ALICE, direct)
        grouped = replace(
            an_offer(self), transfer_id=os.urandom(16), secret=os.urandom(32), group_id=GROUP
        )
        transfers._offer_received(ALICE, grouped)
        self.successResultOf(transfers.accept(direct.transfer_id.hex()))
        entry = transfers.find(direct.transfer_id.hex())
        assert entry.partial is not None
        part = entry.partial.partial_path
        self.assertTrue(os.path.exists(part))
        written_before = list(sessions[ALICE].records)  # type: ignore[union-attr]
        self.successResultOf(
            transfers.revoke(lambda uid, gid: ("the contact is blocked", False), peer=ALICE)
        )
        self.assertEqual((entry.state, entry.reason), ("cancelled", "the contact is blocked"))
        self.assertFalse(os.path.exists(part))
        self.assertEqual(transfers.find(grouped.transfer_id.hex()).state, "offered")
        self.assertEqual(sessions[ALICE].records, written_before)  # type: ignore[union-attr]


class DepositTests(TestCase):
    """With no session up, an offer and the answers to it go as durable entries (the node
    puts them in the peer's mailbox); a DialBack never does."""

    def test_records_without_a_session_are_deposited_where_the_node_takes_them(self) -> None:
        """When bob has no session and the node takes deposits for him, then the offer to him
        and our cancel of it are handed to the deposit in order, a DialBack is not; once his
        session is up the cancel is written over it once more (a deposit may be lost, or
        dropped by an older peer) and new records go over the session only."""
        transfers, sessions, _events, _store = make_transfers(self)
        deposited: list[tuple[str, Any]] = []

        def deposit(uid: str, record: bytes, group_id: bytes) -> bool:
            deposited.append((uid, parse_transfer_record(record)))
            return True

        transfers.deposit = deposit
        path = os.path.join(short_tempdir(self), "doc.txt")
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
        view = self.successResultOf(transfers.send(BOB, path))
        self.assertEqual(view["reason"], OFFER_IN_MAILBOX)  # says where the offer went
        tid = bytes.fromhex(view["id"])
        self.assertFalse(transfers._send_control(BOB, DialBack(tid)))
        self.successResultOf(transfers.cancel(view["id"]))
        self.assertEqual([uid for uid, _ in deposited], [BOB, BOB])
        offer, cancel = (record for _, record in deposited)
        assert isinstance(offer, Offer) and isinstance(cancel, Cancel)
        self.assertEqual((offer.transfer_id, cancel.transfer_id), (tid, tid))
        self.assertEqual(transfers.find(view["id"]).notice, "cancel")  # owed to a session too
        sessions[BOB] = FakeSession()
        transfers.session_established(BOB)
        second = self.successResultOf(transfers.send(BOB, path))
        bob_session = sessions[BOB]
        assert bob_session is not None
        self.assertEqual(len(deposited), 2)
        self.assertEqual(
            [(type(r).__name__, r.transfer_id.hex()) for r in bob_session.records],
            [("Cancel", view["id"]), ("Offer", second["id"])],
        )
        self.assertEqual(transfers.find(view["id"]).notice, "")
        self.assertEqual(second["reason"], "")  # over the session: nothing to say

    def test_the_mailbox_reasons_last_until_a_session_or_the_answer(self) -> None:
        """When an offer and an accept go to the mailbox, then each transfer says so (the
        sender's offer, the receiver's accept), the sender's until the accept comes back and
        the receiver's until a session with the sender comes up."""
        transfers, sessions, _events, _store = make_transfers(self)
        transfers.deposit = lambda uid, record, gid: True
        path = os.path.join(short_tempdir(self), "doc.txt")
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
        out = transfers.find(self.successResultOf(transfers.send(BOB, path))["id"])
        self.assertEqual(out.reason, OFFER_IN_MAILBOX)
        accept = Accept(out.offer.transfer_id)
        transfers.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(accept))
        self.assertEqual((out.state, out.reason), ("accepted", ""))
        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        view = self.successResultOf(transfers.accept(offer.transfer_id.hex()))
        self.assertEqual((view["state"], view["reason"]), ("accepted", ACCEPT_IN_MAILBOX))
        sessions[ALICE] = FakeSession()
        transfers.session_established(ALICE)
        entry = transfers.find(offer.transfer_id.hex())
        self.assertEqual(entry.reason, "")
        alice_session = sessions[ALICE]
        assert alice_session is not None
        self.assertEqual([type(r).__name__ for r in alice_session.records], ["Accept"])

    def test_a_refused_deposit_waits_for_the_session(self) -> None:
        """When the node takes no deposit for bob (no mailbox known, not a contact), then the
        offer says it goes when he comes online, and a cancel with no session stays owed and
        is written when his session comes up."""
        transfers, sessions, _events, _store = make_transfers(self)
        transfers.deposit = lambda uid, record, gid: False
        path = os.path.join(short_tempdir(self), "doc.txt")
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
        view = self.successResultOf(transfers.send(BOB, path))
        self.assertEqual(view["reason"], OFFER_WAITS)
        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        accepted = self.successResultOf(transfers.accept(offer.transfer_id.hex()))
        self.assertEqual(accepted["reason"], ACCEPT_WAITS)
        self.successResultOf(transfers.cancel(view["id"]))
        self.assertEqual(transfers.find(view["id"]).notice, "cancel")
        sessions[BOB] = FakeSession()
        transfers.session_established(BOB)
        bob_session = sessions[BOB]
        assert bob_session is not None
        self.assertEqual([type(r).__name__ for r in bob_session.records], ["Cancel"])


class GroupDepositTests(TestCase):
    """Records of a file sent into a group name the group to the deposit (so they can go to
    a member's queue for it), and a record that came by a group's queue must be about it."""

    def test_a_group_transfers_records_go_with_its_group(self) -> None:
        """When an offer into GROUP and a 1:1 offer are made with no session, and the group
        one is cancelled, then the group's offer and cancel reach the deposit with GROUP and
        the 1:1 offer with no group."""
        transfers, _sessions, _events, _store = make_transfers(self)
        deposited: list[tuple[str, bytes]] = []

        def deposit(uid: str, record: bytes, group_id: bytes) -> bool:
            deposited.append((type(parse_transfer_record(record)).__name__, group_id))
            return True

        transfers.deposit = deposit
        path = os.path.join(short_tempdir(self), "doc.txt")
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
        [view] = self.successResultOf(transfers.send_many([BOB], path, GROUP))
        self.successResultOf(transfers.send(BOB, path))
        self.successResultOf(transfers.cancel(view["id"]))
        self.assertEqual(deposited, [("Offer", GROUP), ("Offer", b""), ("Cancel", GROUP)])

    def test_a_record_from_a_groups_queue_must_be_about_that_group(self) -> None:
        """When records arrive marked as coming by GROUP's queue, then an offer into another
        group, a 1:1 offer and an accept of a 1:1 transfer are dropped, while an offer into
        GROUP is listed."""
        transfers, sessions, _events, _store = make_transfers(self)
        sessions[ALICE] = FakeSession()
        base = an_offer(self)
        other = replace(base, transfer_id=os.urandom(16), group_id=b"\x43" * 16)
        alone = replace(base, transfer_id=os.urandom(16))
        into = replace(base, transfer_id=os.urandom(16), group_id=GROUP)
        for offer in (other, alone, into):
            transfers.record_received(ALICE, encode_transfer_record(offer), GROUP)
        self.assertEqual(
            [e.offer.transfer_id for e in transfers._entries.values()], [into.transfer_id]
        )
        path = os.path.join(short_tempdir(self), "doc.txt")
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
        mine = self.successResultOf(transfers.send(ALICE, path))
        accept = Accept(bytes.fromhex(mine["id"]))
        transfers.record_received(ALICE, encode_transfer_record(accept), GROUP)
        self.assertEqual(transfers.find(mine["id"]).state, "offered")
        transfers.record_received(ALICE, encode_transfer_record(accept))
        self.assertEqual(transfers.find(mine["id"]).state, "accepted")


class DeclineReasonTests(TestCase):
    def test_the_receivers_reason_is_shown_once(self) -> None:
        """When two offers are declined, one with the default reason and one with the
        receiver's own words, then the first ends as "declined" (not "declined: declined")
        and the second as "declined: " and those words."""
        transfers, _sessions, _events, _store = make_transfers(self)
        path = os.path.join(short_tempdir(self), "doc.txt")
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
        reasons = []
        for said in ("declined", "too big \x1b[2J"):
            view = self.successResultOf(transfers.send(BOB, path))
            decline = Decline(bytes.fromhex(view["id"]), said)
            transfers.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(decline))
            reasons.append(transfers.find(view["id"]).reason)
        self.assertEqual(reasons[0], "declined")
        self.assertTrue(reasons[1].startswith("declined: too big "), reasons[1])
        self.assertNotIn("\x1b", reasons[1])


class OpenOffersCapTests(TestCase):
    """An offer flood: what one contact (or all together) may leave waiting for an answer."""

    def flood(self, transfers: Transfers, uid: str, count: int) -> list[Offer]:
        base = an_offer(self, size=3000)
        offers = [replace(base, transfer_id=os.urandom(16)) for _ in range(count)]
        for offer in offers:
            transfers.control_received(uid, CONTROL_PREFIX + encode_transfer_record(offer))
        return offers

    def test_offers_beyond_the_cap_are_declined_unseen(self) -> None:
        """When a contact offers more files than may wait for an answer from one peer, then
        each further offer is declined at once with a reason that says why, nothing of it is
        listed, kept or announced, the earlier offers all stay listed, other contacts can
        still offer, and once one waiting offer is declined the contact's next offer is
        listed."""
        self.patch(transfers_module, "MAX_OPEN_FROM_PEER", 3)
        transfers, sessions, events, store = make_transfers(self)
        alice = sessions[ALICE] = FakeSession()
        offers = self.flood(transfers, ALICE, 5)
        kept = [o.transfer_id.hex() for o in offers[:3]]
        self.assertEqual(sorted(t["id"] for t in transfers.list()), sorted(kept))
        self.assertEqual(offered(events), kept)
        self.assertEqual(
            alice.records,
            [Decline(o.transfer_id, transfers_module.TOO_MANY_OPEN) for o in offers[3:]],
        )
        self.assertEqual(sorted(store.transfers()), sorted(kept))
        (bobs,) = self.flood(transfers, BOB, 1)
        self.assertEqual(offered(events)[-1], bobs.transfer_id.hex())
        self.successResultOf(transfers.decline(kept[0]))
        (again,) = self.flood(transfers, ALICE, 1)
        self.assertEqual(offered(events)[-1], again.transfer_id.hex())
        self.assertEqual(transfers.find(again.transfer_id.hex()).state, "offered")

    def folder_files(self, transfers: Transfers, uid: str, folder_id: bytes, n: int) -> list[Offer]:
        """*n* files of the folder *folder_id* offered by *uid*."""
        base = an_offer(self, size=3000)
        offers = [
            replace(base, transfer_id=os.urandom(16), folder="album", folder_id=folder_id)
            for _ in range(n)
        ]
        for offer in offers:
            transfers.control_received(uid, CONTROL_PREFIX + encode_transfer_record(offer))
        return offers

    def test_a_folder_started_under_the_cap_is_taken_whole(self) -> None:
        """When a contact with files already waiting sends a folder that takes it past its
        cap (the cap 3, a folder at most 4 files here), then every file of that folder is
        listed (it was cut where the cap fell, its last files declined); a new folder or a
        lone file past the cap is still declined, and a peer interleaving the files of
        several folders gets no more than the cap and one folder's worth listed."""
        self.patch(transfers_module, "MAX_OPEN_FROM_PEER", 3)
        self.patch(transfers_module, "MAX_FOLDER_FILES", 4)
        transfers, sessions, _events, _store = make_transfers(self)
        alice = sessions[ALICE] = FakeSession()
        self.flood(transfers, ALICE, 2)  # two files wait
        album = self.folder_files(transfers, ALICE, b"A" * 16, 4)
        listed = {t["id"] for t in transfers.list()}
        self.assertTrue({o.transfer_id.hex() for o in album} <= listed)
        self.assertEqual((alice.records, len(listed)), ([], 6))
        other = self.folder_files(transfers, ALICE, b"B" * 16, 2)
        lone = self.flood(transfers, ALICE, 1)
        self.assertEqual(
            alice.records,
            [Decline(o.transfer_id, transfers_module.TOO_MANY_OPEN) for o in [*other, *lone]],
        )

        transfers, sessions, _events, _store = make_transfers(self)
        alice = sessions[ALICE] = FakeSession()
        folders = [bytes([n]) * 16 for n in range(3)]
        for folder_id in folders:  # each folder's first file, under the cap
            self.folder_files(transfers, ALICE, folder_id, 1)
        for folder_id in folders:  # then the rest of each
            self.folder_files(transfers, ALICE, folder_id, 3)
        self.assertEqual(len(transfers._entries.open_in), 3 + 4)
        self.assertEqual(len(alice.records), 3 * 4 - (3 + 4))

    def test_accepted_transfers_count_until_complete_and_all_peers_share_a_cap(self) -> None:
        """When accepted (not yet complete) transfers and offers from several peers together
        reach the cap for all, then the next offer, from any peer, is declined with the
        reason for all; an offer sent again under a listed id is still answered as before."""
        self.patch(transfers_module, "MAX_OPEN_FROM_PEER", 3)
        self.patch(transfers_module, "MAX_OPEN_INCOMING", 4)
        transfers, sessions, _events, _store = make_transfers(self)
        bob = sessions[BOB] = FakeSession()
        alices = self.flood(transfers, ALICE, 3)
        self.successResultOf(transfers.accept(alices[0].transfer_id.hex()))
        bobs = self.flood(transfers, BOB, 2)
        self.assertEqual(len(transfers.list()), 4)
        self.assertEqual(
            bob.records, [Decline(bobs[1].transfer_id, transfers_module.TOO_MANY_OPEN_ALL)]
        )
        transfers.control_received(ALICE, CONTROL_PREFIX + encode_transfer_record(alices[0]))
        self.assertEqual(transfers.find(alices[0].transfer_id.hex()).state, "accepted")

    def test_a_flooding_peer_is_logged_a_bounded_number_of_times(self) -> None:
        """When one peer's offers are declined 1,000 times, then the daemon's log says so
        about ten times (at the 1st, 2nd, 4th ... refusal), each with the count so far."""
        self.patch(transfers_module, "MAX_OPEN_FROM_PEER", 1)
        transfers, sessions, _events, _store = make_transfers(self)
        sessions[ALICE] = FakeSession()
        logged: list[dict[str, Any]] = []
        transfers.log = Logger(observer=logged.append)  # type: ignore[misc]
        self.flood(transfers, ALICE, 1001)
        counts = [e["count"] for e in logged if "count" in e]
        self.assertEqual(counts, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])


class PullRecordingNetwork(FakeNetwork):
    """Records the dials back asked of it, and connects none."""

    def __init__(self) -> None:
        super().__init__()
        self.pulls: list[bytes] = []

    def pull_transfer(self, uid: str, partial: Any, observer: Any) -> None:
        self.pulls.append(partial.offer.transfer_id)


class ReceivingStreamsCapTests(TestCase):
    def accepted(
        self, count: int, uid: str = ALICE, size: int = LARGE
    ) -> tuple[Transfers, list[bytes], Any]:
        """*count* files of *size* bytes (large by default: a whole stream each) offered by
        *uid* and accepted."""
        network = PullRecordingNetwork()
        transfers, self.sessions, _events, _store = make_transfers(self, network=network)
        base = replace(an_offer(self, size=5000), size=size)
        ids = []
        for _ in range(count):
            offer = replace(base, transfer_id=os.urandom(16))
            transfers._offer_received(uid, offer)
            self.successResultOf(transfers.accept(offer.transfer_id.hex()))
            ids.append(offer.transfer_id)
        return transfers, ids, network

    def test_one_sender_gets_at_most_three_receiving_streams_at_once(self) -> None:
        """When alice, five of whose files bob accepted, opens a data connection for each at
        once, then three are taken and the fourth and fifth refused (still accepted, nothing
        changed); a dial back she asks for meanwhile is not dialled; once one stream ends, the
        first refused is called for (Accept again) and its connection taken; another sender
        still gets its own streams."""
        transfers, ids, network = self.accepted(5)
        alice = self.sessions[ALICE] = FakeSession()
        taken = [transfers.inbound_stream(ALICE, tid) for tid in ids]
        self.assertEqual([t is not None for t in taken], [True, True, True, False, False])
        self.assertEqual(
            [transfers.find(tid.hex()).streaming for tid in ids], [True, True, True, False, False]
        )
        self.assertEqual(transfers.find(ids[3].hex()).state, "accepted")
        transfers.record_received(ALICE, encode_transfer_record(DialBack(ids[4])))
        self.assertEqual(network.pulls, [])
        _partial, observer = taken[0]
        observer.stream_ended("connection lost", True)
        # the first connection refused is called for at once (not at her next redial)
        self.assertEqual(alice.records[-1], Accept(ids[3]))
        self.assertIsNotNone(transfers.inbound_stream(ALICE, ids[3]))
        base = replace(an_offer(self, size=5000), size=LARGE)
        transfers._offer_received(BOB, base)
        self.successResultOf(transfers.accept(base.transfer_id.hex()))
        self.assertIsNotNone(transfers.inbound_stream(BOB, base.transfer_id))

    def test_small_files_take_a_share_of_a_stream(self) -> None:
        """When alice opens a data connection for each of twelve accepted files of 10 KB, then
        nine are taken (each a third of a large file's stream) and the rest refused; for
        files of 2 MiB (two thirds each), four."""
        for size, taken_at_once in ((10_000, 9), (2 * 1024 * 1024, 4)):
            with self.subTest(size=size):
                transfers, ids, _network = self.accepted(12, size=size)
                self.sessions[ALICE] = FakeSession()
                taken = [transfers.inbound_stream(ALICE, tid) for tid in ids]
                self.assertEqual(
                    [t is not None for t in taken],
                    [True] * taken_at_once + [False] * (12 - taken_at_once),
                )

    def test_a_freed_slot_goes_to_a_sender_with_room(self) -> None:
        """When alice runs her three streams and bob one, with four allowed in all, and a
        fourth file of alice's then one of bob's are refused, then when bob's stream ends the
        slot goes to bob's waiting file (Accept to bob), not to alice's, who is still at her
        own cap."""
        self.patch(transfers_module, "MAX_RECEIVING_STREAMS", 4)
        transfers, ids, _network = self.accepted(4)
        bobs = []
        for _ in range(2):
            offer = replace(an_offer(self, size=5000), transfer_id=os.urandom(16), size=LARGE)
            transfers._offer_received(BOB, offer)
            self.successResultOf(transfers.accept(offer.transfer_id.hex()))
            bobs.append(offer.transfer_id)
        alice = self.sessions[ALICE] = FakeSession()
        bob = self.sessions[BOB] = FakeSession()
        self.assertTrue(all(transfers.inbound_stream(ALICE, tid) for tid in ids[:3]))
        taken = transfers.inbound_stream(BOB, bobs[0])
        self.assertIsNotNone(taken)
        self.assertIsNone(transfers.inbound_stream(ALICE, ids[3]))
        self.assertIsNone(transfers.inbound_stream(BOB, bobs[1]))
        _partial, observer = taken
        observer.stream_ended("connection lost", True)
        self.assertEqual(bob.records, [Accept(bobs[1])])
        self.assertEqual(alice.records, [])

    def test_all_senders_together_get_at_most_twelve(self) -> None:
        """When twelve receiving streams run (from several senders), then a thirteenth is
        refused whoever opens it, and a dial back is not dialled."""
        self.patch(transfers_module, "MAX_RECEIVING_FROM_PEER", 20)
        transfers, ids, network = self.accepted(14)
        taken = [transfers.inbound_stream(ALICE, tid) for tid in ids[:13]]
        self.assertEqual(sum(t is not None for t in taken), 12)
        self.assertIsNone(taken[12])
        transfers.record_received(ALICE, encode_transfer_record(DialBack(ids[13])))
        self.assertEqual(network.pulls, [])
        self.patch(transfers_module, "MAX_RECEIVING_STREAMS", 13)
        transfers.record_received(ALICE, encode_transfer_record(DialBack(ids[13])))
        self.assertEqual(network.pulls, [ids[13]])


class SendingSlotsTests(TestCase):
    def test_small_files_stream_several_at_a_time_in_order(self) -> None:
        """When eleven accepted files of 10 KB are to stream, then nine are dialled at once
        (a third of a large file's stream each) and two queued; when a large file is queued
        behind small ones, it is not passed: the small ones after it wait until it fits."""
        transfers, sessions, _events, _store = make_transfers(self)
        clock: Any = transfers.clock
        network: Any = transfers._network
        folder = short_tempdir(self)

        def accepted_file(name: str, size: int, uid: str) -> TransferEntry:
            path = os.path.join(folder, name)
            with open(path, "wb") as f:
                f.write(os.urandom(size))
            sessions[uid] = FakeSession()
            view = self.successResultOf(transfers.send(uid, path))
            accept = Accept(bytes.fromhex(view["id"]))
            transfers.control_received(uid, CONTROL_PREFIX + encode_transfer_record(accept))
            return transfers.find(view["id"])

        members = [chr(ord("d") + i) * 52 for i in range(14)]
        small = [accepted_file(f"s{i}", 10_000, members[i]) for i in range(11)]
        self.assertEqual(network.opened, members[:9])
        self.assertEqual([e.queued for e in small], [False] * 9 + [True] * 2)
        large = accepted_file("large", LARGE, members[11])
        after = accepted_file("s11", 10_000, members[12])
        self.assertTrue(large.queued and after.queued)
        transfers.stream_completed(small[0], None)
        clock.advance(0)  # one unit free: the oldest queued small one goes
        self.assertEqual(network.opened, [*members[:9], members[9]])
        for entry in small[1:3]:
            transfers.stream_completed(entry, None)
        clock.advance(0)  # two units free: the small one, then the large one does not fit
        self.assertEqual(network.opened, [*members[:9], members[9], members[10]])
        self.assertTrue(large.queued and after.queued)
        transfers.stream_completed(small[3], None)
        clock.advance(0)  # still two units: nothing passes the large one
        self.assertEqual(network.opened[-1], members[10])
        transfers.stream_completed(small[4], None)
        clock.advance(0)  # three units: the large one, and the small one behind it waits
        self.assertEqual(network.opened[-1], members[11])
        self.assertTrue(after.queued)

    def test_at_most_three_outgoing_streams_the_rest_queued_in_order(self) -> None:
        """When five accepted files (a file sent into a group of five) are to stream at once,
        then three streams are dialled and the other two wait with a "queued" reason, whatever
        starts them (the Accept, a session); as each stream ends (complete, a lost connection,
        a cancel) the oldest queued one is dialled, and the total never passes three."""
        transfers, sessions, events, _store = make_transfers(self)
        clock: Any = transfers.clock
        network: Any = transfers._network
        path = os.path.join(short_tempdir(self), "album.zip")
        with open(path, "wb") as f:
            f.write(os.urandom(LARGE))
        members = [chr(ord("d") + i) * 52 for i in range(5)]
        for uid in members:
            sessions[uid] = FakeSession()
        views = self.successResultOf(transfers.send_many(members, path, GROUP))
        for view, uid in zip(views, members, strict=True):
            accept = Accept(bytes.fromhex(view["id"]))
            transfers.control_received(uid, CONTROL_PREFIX + encode_transfer_record(accept))
        self.assertEqual(network.opened, members[:3])
        entries = [transfers.find(v["id"]) for v in views]
        for entry in entries[3:]:
            self.assertTrue(entry.reason.startswith("queued: 3 files are being sent"), entry.reason)
        self.assertEqual(transfers.view(entries[3])["state"], "accepted")
        transfers.session_established(members[4])  # a new session does not jump the queue
        self.assertEqual(network.opened, members[:3])

        transfers.stream_completed(entries[0], None)
        clock.advance(0)
        self.assertEqual(network.opened, members[:4])
        transfers.stream_ended(entries[1], "the connection was lost", True)
        clock.advance(0)
        self.assertEqual(network.opened, members[:5])
        self.assertEqual(sum(e.streaming for e in entries), 3)
        clock.advance(REDIAL_INITIAL)  # the lost one's redial finds no free slot: queued
        self.assertEqual(network.opened, members[:5])
        self.assertTrue(entries[1].queued)
        self.successResultOf(transfers.cancel(views[2]["id"]))
        transfers.stream_ended(entries[2], "cancelled", False)  # the network stops its stream
        clock.advance(0)
        self.assertEqual(network.opened, [*members[:5], members[1]])
        self.assertEqual(sum(e.streaming for e in entries), 3)
        queued = [
            p for n, p in events if n == "transfer.changed" and "queued" in p["transfer"]["reason"]
        ]
        self.assertTrue(queued)


def author_and_requester(
    testcase: TestCase,
) -> tuple[Transfers, Transfers, dict[str, Any], dict[str, Any], str]:
    """Bob (the author, who sent notes.txt into GROUP to alice) and carol (who will ask for
    it), their sessions routed to each other; returns both, both's sessions and the path."""
    bob, bob_sessions, _e, _s = make_transfers(testcase)
    carol, carol_sessions, _e2, _s2 = make_transfers(testcase)
    path = os.path.join(short_tempdir(testcase), "notes.txt")
    with open(path, "wb") as f:
        f.write(os.urandom(90_000))
    bob_sessions[ALICE] = FakeSession()
    testcase.successResultOf(bob.send_many([ALICE], path, GROUP))
    bob_sessions[CAROL] = RoutedSession(carol, BOB)
    carol_sessions[BOB] = RoutedSession(bob, CAROL)
    return bob, carol, bob_sessions, carol_sessions, path


class RequestTests(TestCase):
    """A member asks the author of a file shared into a group for it (``Request``); the
    author answers with an offer of that transfer id, or a decline."""

    def pair(self) -> tuple[Transfers, Transfers, dict[str, Any], str]:
        """Bob (the author, who sent notes.txt into GROUP to alice) and carol (the
        requester), their sessions routed to each other; returns the author, the requester,
        bob's sessions and the file's path."""
        bob, carol, bob_sessions, _carol_sessions, path = author_and_requester(self)
        return bob, carol, bob_sessions, path

    def hold_hashing(self, bob: Transfers) -> list[defer.Deferred[Any]]:
        """Make bob's rehashing of a requested file wait: each waits on a Deferred in the
        list returned, fired by the test."""
        pending: list[defer.Deferred[Any]] = []
        run = bob._run

        def held(f: Any, *a: Any) -> defer.Deferred[Any]:
            if f.__name__ != "prepare_again":
                return run(f, *a)
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append(d)
            d.addCallback(lambda _: f(*a))
            return d

        bob._run = held
        return pending

    def shared(self, bob: Transfers) -> SharedFile:
        [entry] = bob._entries.values()
        return SharedFile.of(entry.offer)

    def test_a_request_is_answered_with_an_offer_of_that_file_accepted_at_once(self) -> None:
        """When carol asks bob for the file he shared, then her transfer is "requested", bob
        hashes his copy again and offers it to her under the id she chose, with a secret of
        its own; her daemon takes it as the file asked for and accepts it at once into the
        folder she chose, and bob dials her for the data."""
        bob, carol, _sessions, _path = self.pair()
        hashed: list[str] = []
        run = bob._run
        bob._run = lambda f, *a: (hashed.append(f.__name__), run(f, *a))[1]
        inbox = os.path.join(short_tempdir(self), "inbox")
        shared = self.shared(bob)
        view = self.successResultOf(carol.request(BOB, GROUP, shared, inbox))
        self.assertEqual((view["contact"], view["group"]), (BOB, GROUP.hex()))
        self.assertEqual(hashed[:1], ["prepare_again"])  # then the stream opens the file
        self.assertEqual(hashed.count("prepare_again"), 1)
        at_bob = bob.find(view["id"])
        at_carol = carol.find(view["id"])
        self.assertEqual((at_bob.sending, at_bob.peer, at_bob.state), (True, CAROL, "accepted"))
        self.assertEqual((at_carol.state, at_carol.directory), ("accepted", inbox))
        self.assertEqual(at_carol.offer.secret, at_bob.offer.secret)
        [original] = [e for e in bob._entries.values() if e.peer == ALICE]
        self.assertNotEqual(at_bob.offer.secret, original.offer.secret)
        network: Any = bob._network
        self.assertEqual(network.opened, [CAROL])
        refused = self.failureResultOf(carol.request(BOB, GROUP, shared, inbox), InvalidInput)
        self.assertIn("is already accepted", refused.getErrorMessage())  # one at a time

    def test_a_request_for_a_file_gone_changed_or_never_shared_is_declined(self) -> None:
        """When carol asks for a file bob never shared from this device, then bob declines
        ("the file is not on this device"); when he changed the file on his disk, then
        he declines ("changed or is gone"); carol's transfers end cancelled with bob's
        reason, and no partial file is left in her folder."""
        bob, carol, _sessions, path = self.pair()
        inbox = os.path.join(short_tempdir(self), "inbox")
        shared = self.shared(bob)
        other = replace(shared, content_hash=b"\x01" * 32)
        never = self.successResultOf(carol.request(BOB, GROUP, other, inbox))
        self.assertEqual(
            (carol.find(never["id"]).state, carol.find(never["id"]).reason),
            ("cancelled", "the sender declined: " + transfers_module.NOT_SHARED_HERE),
        )
        with open(path, "r+b") as f:
            f.write(b"changed")
        changed = self.successResultOf(carol.request(BOB, GROUP, shared, inbox))
        self.assertEqual(
            carol.find(changed["id"]).reason,
            "the sender declined: " + transfers_module.SOURCE_GONE,
        )
        self.assertEqual(os.listdir(inbox), [])
        self.assertNotIn(changed["id"], bob._entries)

    def test_a_request_from_a_non_member_is_dropped_unanswered(self) -> None:
        """When the node says carol is not a member of the group, then bob neither offers
        nor declines: her request stays "requested" and bob hashes nothing."""
        bob, carol, _sessions, _path = self.pair()
        bob.may_offer = lambda uid, gid: uid != CAROL
        view = self.successResultOf(carol.request(BOB, GROUP, self.shared(bob)))
        self.assertEqual(carol.find(view["id"]).state, "requested")
        self.assertNotIn(view["id"], bob._entries)

    def test_an_offer_that_is_not_the_file_asked_for_is_refused(self) -> None:
        """When the offer answering carol's request carries another content hash (a lying or
        confused author), then carol does not accept it: her transfer ends cancelled and
        bob is told."""
        carol, sessions, _events, _store = make_transfers(self)
        sessions[BOB] = FakeSession()
        base = an_offer(self)
        shared = SharedFile.of(base)
        view = self.successResultOf(carol.request(BOB, GROUP, shared))
        tid = bytes.fromhex(view["id"])
        lying = replace(base, transfer_id=tid, group_id=GROUP, content_hash=b"\x02" * 32)
        carol.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(lying))
        entry = carol.find(view["id"])
        self.assertEqual(entry.state, "cancelled")
        self.assertIn("another file", entry.reason)
        session = sessions[BOB]
        assert session is not None
        self.assertEqual([type(r).__name__ for r in session.records], ["Request", "Cancel"])

    def test_a_request_goes_to_the_mailbox_and_again_at_the_next_session(self) -> None:
        """When carol asks while bob has no session, then the request is deposited and her
        transfer says so; when his session comes up, then the request is written again over
        it and the reason clears; bob answering it twice (the same id) makes one transfer."""
        bob, carol, _sessions, _path = self.pair()
        carol_sessions: dict[str, Any] = {}
        carol._sessions = carol_sessions.get
        deposited: list[Any] = []
        carol.deposit = lambda uid, record, gid: (
            deposited.append((parse_transfer_record(record), gid)) or True
        )
        view = self.successResultOf(carol.request(BOB, GROUP, self.shared(bob)))
        self.assertEqual(view["reason"], transfers_module.REQUEST_IN_MAILBOX)
        [(request, gid)] = deposited
        assert isinstance(request, Request)
        self.assertEqual(gid, GROUP)  # a member who is not a contact: its queue for GROUP
        bob.record_received(CAROL, encode_transfer_record(request), GROUP)  # from the mailbox
        carol_sessions[BOB] = RoutedSession(bob, CAROL)
        carol.session_established(BOB)  # the offer came meanwhile: accepted at once
        entry = carol.find(view["id"])
        self.assertEqual((entry.state, entry.reason), ("accepted", ""))
        self.assertEqual(len([e for e in bob._entries.values() if e.peer == CAROL]), 1)

    def test_asking_again_supersedes_the_earlier_transfer(self) -> None:
        """When carol asks twice for the same file with two ids (her first transfer lost,
        say), then bob cancels his first transfer to her ("asked for again") before offering
        the second: one live transfer of a file to a member."""
        bob, _carol, sessions, _path = self.pair()
        sessions[CAROL] = FakeSession()
        shared = self.shared(bob)
        first, second = os.urandom(16), os.urandom(16)
        for tid in (first, second):
            request = Request(tid, GROUP, shared.content_hash)
            bob.record_received(CAROL, encode_transfer_record(request))
        self.assertEqual(
            (bob.find(first.hex()).state, bob.find(first.hex()).reason),
            ("cancelled", "asked for again"),
        )
        self.assertEqual(bob.find(second.hex()).state, "offered")

    def test_a_request_cancelled_while_the_author_hashes_ends_at_the_author_too(self) -> None:
        """When carol cancels her request while bob is still hashing the file (her Cancel
        names a transfer bob does not have yet), then the offer bob sends afterwards is
        answered with a Cancel and his transfer ends too, instead of waiting "offered"."""
        bob, carol, _sessions, _path = self.pair()
        pending = self.hold_hashing(bob)
        view = self.successResultOf(carol.request(BOB, GROUP, self.shared(bob)))
        self.successResultOf(carol.cancel(view["id"]))
        self.assertNotIn(view["id"], bob._entries)  # the cancel found nothing to end
        [hashing] = pending
        hashing.callback(None)
        self.assertEqual(bob.find(view["id"]).state, "cancelled")

    def test_requests_for_two_files_at_once_are_both_answered(self) -> None:
        """When carol asks bob for two files he shared while the first is still being
        hashed, then both are offered (one hash at a time per member and file, not per
        member)."""
        bob, carol, _sessions, _path = self.pair()
        second = os.path.join(short_tempdir(self), "more.txt")
        with open(second, "wb") as f:
            f.write(os.urandom(70_000))
        self.successResultOf(bob.send_many([ALICE], second, GROUP))
        pending = self.hold_hashing(bob)
        views = [
            self.successResultOf(carol.request(BOB, GROUP, SharedFile.of(e.offer)))
            for e in list(bob._entries.values())
        ]
        self.assertEqual(len(pending), 2)
        for d in pending:
            d.callback(None)
        self.assertEqual({carol.find(v["id"]).state for v in views}, {"accepted"})


class LostAnswerTests(TestCase):
    def test_an_offer_sent_again_after_a_decline_is_told_again(self) -> None:
        """When an offer we declined arrives again (the sender never heard the decline: it
        restarted, the record was lost), then we answer Cancel with the reason, so the
        sender's transfer ends instead of staying "offered"; a blocked sender (the node no
        longer takes its offers) is told nothing."""
        transfers, sessions, _events, _store = make_transfers(self)
        sessions[ALICE] = FakeSession()
        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        self.successResultOf(transfers.decline(offer.transfer_id.hex()))
        session = sessions[ALICE]
        assert session is not None
        transfers.control_received(ALICE, CONTROL_PREFIX + encode_transfer_record(offer))
        self.assertEqual([type(r).__name__ for r in session.records], ["Decline", "Cancel"])
        cancel = session.records[-1]
        assert isinstance(cancel, Cancel)
        self.assertEqual((cancel.transfer_id, cancel.reason), (offer.transfer_id, "declined"))
        transfers.may_offer = lambda uid, gid: False
        transfers.control_received(ALICE, CONTROL_PREFIX + encode_transfer_record(offer))
        self.assertEqual(len(session.records), 2)


class StaleStreamNetwork:
    """The sender's network: its data connection reaches the receiver's Transfers
    (``inbound_stream``); a refused one closes, as the real listener aborts it."""

    def __init__(self, receiver: Transfers, me: str) -> None:
        self.receiver = receiver
        self.me = me
        self.dials = 0

    def open_transfer(self, uid: str, source: Any, observer: Any) -> None:
        self.dials += 1
        if self.receiver.inbound_stream(self.me, source.prepared.offer.transfer_id) is None:
            observer.stream_ended("no data connection: the connection closed", True)

    def stop_transfer(self, transfer_id: bytes) -> None:
        pass

    def finish_stream(self, transfer_id: bytes) -> None:
        pass


class StaleStreamTests(TestCase):
    def pair(self) -> tuple[Transfers, Transfers, StaleStreamNetwork, Callable[[], None]]:
        """Alice's Transfers (sending, her data connections reaching bob's), bob's, and a
        call that brings up their sessions (control records routed to each other)."""
        bob, bob_sessions, _events, _store = make_transfers(self)
        network = StaleStreamNetwork(bob, ALICE)
        alice, alice_sessions, _events, _store = make_transfers(self, network=network)

        def connect() -> None:
            alice_sessions[BOB] = RoutedSession(bob, ALICE)  # type: ignore[assignment]
            bob_sessions[ALICE] = RoutedSession(alice, BOB)  # type: ignore[assignment]

        return alice, bob, network, connect

    def test_a_stream_the_receiver_no_longer_lists_is_cancelled_not_dialled_for_ever(
        self,
    ) -> None:
        """When alice's transfer is accepted but bob no longer lists it (he pruned it after it
        ended, and alice never heard how), then her data connection is refused and bob says
        so over the session: her transfer ends cancelled with that reason, and she dials no
        more (before, she dialled every 30 s for ever)."""
        alice, bob, network, connect = self.pair()
        view = send_a_file(self, alice)  # bob never hears the offer: as if pruned since
        tid = bytes.fromhex(view["id"])
        connect()
        alice.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(Accept(tid)))
        self.assertEqual(network.dials, 1)
        final = alice.find(view["id"])
        self.assertEqual(final.state, "cancelled")
        self.assertEqual(final.reason, "the peer cancelled: " + transfers_module.NOT_LISTED_HERE)
        alice.clock.advance(transfers_module.REDIAL_MAX * 10)  # type: ignore[attr-defined]
        self.assertEqual(network.dials, 1)
        self.assertEqual(bob.list(), [])

    def test_a_stream_the_receiver_finished_ends_as_it_did_there(self) -> None:
        """When bob holds the transfer complete (or cancelled) and alice, who missed his
        word, dials to stream it, then he answers Complete (or Cancel with his reason) over
        the session: her transfer ends as his did, with one dial."""
        for ending, reason, expected in (
            ("complete", "", ("complete", "")),
            ("cancelled", "no room", ("cancelled", "the peer cancelled: no room")),
        ):
            alice, bob, network, connect = self.pair()
            connect()
            view = send_a_file(self, alice)
            tid = bytes.fromhex(view["id"])
            self.assertEqual(bob.find(view["id"]).state, "offered")
            bob._finish(bob.find(view["id"]), ending, reason, "")
            alice.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(Accept(tid)))
            final = alice.find(view["id"])
            self.assertEqual((final.state, final.reason), expected)
            alice.clock.advance(transfers_module.REDIAL_MAX * 10)  # type: ignore[attr-defined]
            self.assertEqual(network.dials, 1)

    def test_a_meeting_asked_for_a_finished_or_unknown_file_is_answered(self) -> None:
        """When alice asks bob to meet (DialBack: dial her back, or join her at the relay)
        for a file he does not list, or holds complete, then he answers Cancel with why, or
        Complete, instead of leaving her waiting at the relay; for a file he still receives,
        no such answer."""
        bob, sessions, _events, _store = make_transfers(self)
        session = FakeSession()
        sessions[ALICE] = session
        unknown = os.urandom(16)
        bob.control_received(ALICE, CONTROL_PREFIX + encode_transfer_record(DialBack(unknown)))
        self.assertEqual(session.records, [Cancel(unknown, transfers_module.NOT_LISTED_HERE)])
        offer = an_offer(self)
        bob._offer_received(ALICE, offer)
        self.successResultOf(bob.accept(offer.transfer_id.hex()))
        del session.records[:]
        bob.control_received(
            ALICE, CONTROL_PREFIX + encode_transfer_record(DialBack(offer.transfer_id))
        )
        self.assertNotIn("Cancel", [type(r).__name__ for r in session.records])
        self.assertNotIn("Complete", [type(r).__name__ for r in session.records])
        bob._finish(bob.find(offer.transfer_id.hex()), "complete", "", "")
        del session.records[:]
        bob.control_received(
            ALICE, CONTROL_PREFIX + encode_transfer_record(DialBack(offer.transfer_id))
        )
        self.assertEqual(session.records, [Complete(offer.transfer_id)])
        # the receiver, waiting at the relay, asks a sender who cancelled meanwhile
        alice, sessions, _events, _store = make_transfers(self)
        sessions[BOB] = to_bob = FakeSession()
        sent = send_a_file(self, alice)
        self.successResultOf(alice.cancel(sent["id"]))
        del to_bob.records[:]
        tid = bytes.fromhex(sent["id"])
        alice.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(DialBack(tid)))
        self.assertEqual([type(r).__name__ for r in to_bob.records], ["Cancel"])

    def test_an_accept_for_a_file_the_sender_cancelled_or_forgot_is_answered(self) -> None:
        """When bob accepted alice's file but her Cancel never reached him (her session
        dropped just then), then his Accept at the next session is answered with her Cancel
        and his transfer ends, instead of waiting "accepted" for ever, writing Accept at each
        session; the same when she no longer lists the transfer at all."""
        for forget in (False, True):
            bob, bob_sessions, _events, _store = make_transfers(self)
            alice, alice_sessions, _events, _store = make_transfers(self)
            alice_sessions[BOB] = RoutedSession(bob, ALICE)  # type: ignore[assignment]
            bob_sessions[ALICE] = RoutedSession(alice, BOB)  # type: ignore[assignment]
            view = send_a_file(self, alice)
            self.successResultOf(bob.accept(view["id"]))
            self.assertEqual(alice.find(view["id"]).state, "accepted")
            alice_sessions[BOB] = lost = FakeSession()  # her Cancel is lost on the way
            self.successResultOf(alice.cancel(view["id"], "changed my mind"))
            self.assertEqual([type(r).__name__ for r in lost.records], ["Cancel"])
            if forget:
                del alice._entries[view["id"]]
            alice_sessions[BOB] = RoutedSession(bob, ALICE)  # type: ignore[assignment]
            bob.session_established(ALICE)  # he writes Accept again
            final = bob.find(view["id"])
            expected = transfers_module.NOT_LISTED_HERE if forget else "changed my mind"
            self.assertEqual(
                (final.state, final.reason), ("cancelled", "the peer cancelled: " + expected)
            )

    def test_another_contacts_transfer_is_answered_as_one_not_listed(self) -> None:
        """When carol dials a data connection, or writes DialBack or Accept, for a transfer
        bob has with alice (she learnt its id somehow), then she gets the very answer an
        unknown id gets (no oracle of the ids bob holds for others), and alice's transfer is
        untouched."""
        carol = "c" * 52
        bob, sessions, _events, _store = make_transfers(self)
        sessions[carol] = to_carol = FakeSession()
        offer = an_offer(self)
        bob._offer_received(ALICE, offer)
        self.successResultOf(bob.accept(offer.transfer_id.hex()))
        unknown = os.urandom(16)
        for tid in (offer.transfer_id, unknown):
            self.assertIsNone(bob.inbound_stream(carol, tid))
            for record in (DialBack(tid), Accept(tid)):
                bob.control_received(carol, CONTROL_PREFIX + encode_transfer_record(record))
        said = [(r.transfer_id, r.reason) for r in to_carol.records]  # type: ignore[attr-defined]
        answer = transfers_module.NOT_LISTED_HERE
        self.assertEqual(said, [(offer.transfer_id, answer)] * 3 + [(unknown, answer)] * 3)
        self.assertEqual(bob.find(offer.transfer_id.hex()).state, "accepted")
        self.assertIsNotNone(bob.inbound_stream(ALICE, offer.transfer_id))

    def test_no_word_for_an_unknown_stream_without_a_session(self) -> None:
        """When a data connection names a transfer bob does not list and no session with its
        sender is up, then nothing is written (never a mailbox entry for an id he does not
        know)."""
        bob, _sessions, _events, _store = make_transfers(self)
        deposits: list[Any] = []
        bob.deposit = lambda *a: deposits.append(a) or True  # type: ignore[method-assign]
        self.assertIsNone(bob.inbound_stream(ALICE, os.urandom(16)))
        self.assertEqual(deposits, [])


class ReopenTests(TestCase):
    def test_a_complete_file_is_not_failed_by_a_late_reopening(self) -> None:
        """When a restarted receiver reopens an accepted transfer's partial file (off the
        reactor) and the sender's data connection comes meanwhile, then no second reopening
        starts; and a reopening that ends after the file was completed (its partial renamed
        into place) leaves it complete.  Before, the second one found the partial gone and
        failed the complete file, telling the sender "the partial file is gone" (seen after a
        kill -9 in a folder of 500 files)."""
        store = FakeStore()
        first, offer, tid = an_accepted_offer(self, store)
        first.close()

        pending: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

        def later(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append((f, args, d))
            return d

        def run_next() -> None:
            f, args, d = pending.pop(0)
            d.callback(f(*args))

        again, _events = new_transfers(self)
        again._run = later
        sessions: dict[str, Any] = {ALICE: FakeSession()}
        self.successResultOf(again.open(store, FakeNetwork(), sessions.get))
        again.reopen_partials()
        self.assertEqual(len(pending), 1)
        self.assertIsNone(again.inbound_stream(ALICE, offer.transfer_id))  # reopening runs
        self.assertEqual(len(pending), 1, "no second reopening")
        run_next()
        entry = again.find(tid)
        self.assertIsNotNone(entry.partial)
        # a late reopening (started by any path) ending after the file completed
        entry.partial.close()
        entry.partial = None
        again._reopen(entry)
        again._finish(entry, "complete", "", "")
        os.remove(partial_paths(entry.directory, entry.offer)[0])
        run_next()
        self.assertEqual((entry.state, entry.reason), ("complete", ""))


class HeldWritesStore(FakeStore):
    """A store whose writes wait until :meth:`release` (a store write off the reactor)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

    def run(self, query: Any, *args: Any, write: bool = False) -> defer.Deferred[Any]:
        if not write:
            return super().run(query, *args)
        d: defer.Deferred[Any] = defer.Deferred()
        self.held.append((d, query, args))
        return d

    def release(self) -> None:
        while self.held:
            d, query, args = self.held.pop(0)
            super().run(query, *args, write=True).chainDeferred(d)


class AcceptKeptFirstTests(TestCase):
    def test_the_sender_is_asked_only_once_the_accept_is_kept(self) -> None:
        """When bob accepts an offer, then his Accept is written to alice only once the store
        holds the transfer as accepted: a run killed after the file came but before its accept
        was kept found it "offered" at the restart and took it once more, a second copy
        ("name (1)") of a file already there.  A cancel that comes while the write is under
        way leaves nothing to ask."""
        store = HeldWritesStore()
        transfers, sessions, _events, _ = make_transfers(self, store)
        sessions[ALICE] = session = FakeSession()
        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        tid = offer.transfer_id.hex()
        accepted = transfers.accept(tid)
        self.assertNoResult(accepted)
        self.assertEqual(session.records, [])
        store.release()
        self.assertEqual(store.transfers()[tid]["state"], "accepted")
        self.assertEqual(session.records, [Accept(offer.transfer_id)])
        self.assertEqual(self.successResultOf(accepted)["state"], "accepted")

        other = an_offer(self)
        transfers._offer_received(ALICE, other)
        accepted = transfers.accept(other.transfer_id.hex())
        cancel = Cancel(other.transfer_id, "not any more")
        transfers.control_received(ALICE, CONTROL_PREFIX + encode_transfer_record(cancel))
        store.release()
        self.assertEqual(self.successResultOf(accepted)["state"], "cancelled")
        self.assertNotIn(Accept(other.transfer_id), session.records)


class CompletedBeforeAKillTests(TestCase):
    def test_a_file_completed_just_before_a_kill_is_complete_after_the_restart(self) -> None:
        """When the receiving daemon gave a file its name (and removed its partial file) and
        was killed before it recorded that it was complete, then after the restart the file
        is found by its name (the first of name, name (1)... whose content hashes to the
        offered hash: an older file of that name is passed over) and the transfer is complete
        with that path, the sender told; before, it failed "the partial file is gone" while
        the file was there, whole."""
        source = os.path.join(short_tempdir(self), "photo.jpg")
        content = os.urandom(70_000)
        with open(source, "wb") as f:
            f.write(content)
        store = FakeStore()
        folder = short_tempdir(self)
        first, offer, tid = an_accepted_offer(self, store, make_offer(source).offer, folder)
        first.close()
        # what the killed run had done: an older photo.jpg was there, ours got "photo (1).jpg"
        with open(os.path.join(folder, "photo.jpg"), "wb") as f:
            f.write(os.urandom(70_000))
        with open(os.path.join(folder, "photo (1).jpg"), "wb") as f:
            f.write(content)
        for path in partial_paths(folder, offer):
            os.remove(path)
        sessions: dict[str, FakeSession | None] = {ALICE: FakeSession()}
        again, _sessions, _events, _ = make_transfers(self, store, sessions=sessions)
        self.successResultOf(again.reopen_partials())
        entry = again.find(tid)
        saved = os.path.join(folder, "photo (1).jpg")
        self.assertEqual((entry.state, entry.path), ("complete", saved))
        told = sessions[ALICE].records  # type: ignore[union-attr]
        self.assertEqual(told[-1], Complete(offer.transfer_id))  # after the session's Accept
        self.assertNotIn("Cancel", [type(r).__name__ for r in told])

    def test_nothing_found_is_still_a_partial_file_gone(self) -> None:
        """When neither the partial file nor a file with the offered content is there (a
        file of that name and size holds other bytes, a link points at the right ones), then
        the transfer fails as before, "the partial file is gone"."""
        source = os.path.join(short_tempdir(self), "photo.jpg")
        with open(source, "wb") as f:
            f.write(os.urandom(70_000))
        offer = make_offer(source).offer
        folder = short_tempdir(self)
        with open(os.path.join(folder, "photo.jpg"), "wb") as f:
            f.write(os.urandom(70_000))
        os.symlink(source, os.path.join(folder, "photo (1).jpg"))
        self.assertIsNone(find_received(folder, offer))
        store = FakeStore()
        first, _sessions, _events, _ = make_transfers(self, store)
        first._offer_received(ALICE, offer)
        self.successResultOf(first.accept(offer.transfer_id.hex(), folder))
        first.close()
        for path in partial_paths(folder, offer):
            os.remove(path)
        again, _sessions, _events, _ = make_transfers(self, store)
        self.successResultOf(again.reopen_partials())
        entry = again.find(offer.transfer_id.hex())
        self.assertEqual((entry.state, entry.reason), ("failed", "the partial file is gone"))


class OrphanPartialTests(TestCase):
    def test_a_partial_left_by_a_killed_accept_is_taken_again(self) -> None:
        """When a run was killed after it created an offer's partial file but before it
        recorded the accept (the offer is still listed as offered), then accepting the offer
        again, by hand or by itself, takes that partial file (its sidecar describes this very
        offer) instead of refusing it as "not a folder"; one killed while it was being
        created (a sidecar short of its header) is made again; a link planted at another
        offer's partial name is refused, saying so, and left as it is."""
        transfers, _sessions, _events, _store = make_transfers(self)
        folder = short_tempdir(self)
        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        PartialFile.create(folder, offer, ReceivePolicy(reserve_bytes=0)).close()  # the kill
        view = self.successResultOf(transfers.accept(offer.transfer_id.hex(), folder))
        self.assertEqual(view["state"], "accepted")
        self.assertEqual(transfers.find(offer.transfer_id.hex()).partial.written_bytes, 0)

        torn = an_offer(self)
        transfers._offer_received(ALICE, torn)
        data, state = partial_paths(folder, torn)
        for path in (data, state):
            with open(path, "wb") as f:
                f.write(b"\0" * 7)  # killed while creating it
        view = self.successResultOf(transfers.accept(torn.transfer_id.hex(), folder))
        self.assertEqual(view["state"], "accepted")
        self.assertEqual(os.path.getsize(data), torn.size)

        other = an_offer(self)
        transfers._offer_received(ALICE, other)
        target = os.path.join(short_tempdir(self), "victim")
        with open(target, "wb") as f:
            f.write(b"keep")
        planted = partial_paths(folder, other)[0]
        os.symlink(target, planted)
        refused = self.failureResultOf(
            transfers.accept(other.transfer_id.hex(), folder), InvalidInput
        )
        self.assertEqual(
            refused.getErrorMessage(),
            f"something else is at this file's partial name in {folder}: choose another folder",
        )
        self.assertTrue(os.path.islink(planted))
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"keep")
        self.assertEqual(transfers.find(other.transfer_id.hex()).state, "offered")


class TwoAcceptsTests(TestCase):
    def test_a_second_accept_while_the_first_runs_is_refused_and_harms_nothing(self) -> None:
        """When an offer is accepted twice at once (the UI and the command line, or a held
        offer taken by itself while the start's sweep takes it too), then the second is
        refused saying the first runs, and the first's partial file stays and is used: the
        second once took that partial as a killed run's and then removed it as "accepted
        meanwhile"."""
        transfers, sessions, _events, _store = make_transfers(self)
        sessions[ALICE] = FakeSession()
        pending: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

        def later(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append((f, args, d))
            return d

        offer = an_offer(self)
        transfers._offer_received(ALICE, offer)
        transfers._run = later
        tid = offer.transfer_id.hex()
        first = transfers.accept(tid)
        refused = self.failureResultOf(transfers.accept(tid), InvalidInput)
        self.assertEqual(refused.getErrorMessage(), f"transfer {tid[:8]} is being accepted already")
        while pending:
            f, args, d = pending.pop(0)
            d.callback(f(*args))
        self.assertEqual(self.successResultOf(first)["state"], "accepted")
        entry = transfers.find(tid)
        self.assertTrue(os.path.exists(entry.partial.partial_path))


class SlowStore(FakeStore):
    """A store whose reads wait until :meth:`release` (a large store read off the reactor)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[defer.Deferred[Any], Any]] = []

    def run(self, query: Any, *args: Any, write: bool = False) -> defer.Deferred[Any]:
        if write:
            return super().run(query, *args, write=write)
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((d, super().run(query, *args)))
        return d

    def release(self) -> None:
        while self.waiting:
            d, result = self.waiting.pop(0)
            result.addCallback(d.callback)


class LoadingTests(TestCase):
    def test_what_a_peer_says_while_the_kept_transfers_load_is_not_lost(self) -> None:
        """When a peer's session comes up while the kept transfers are still being read (at
        unlock) and it offers a file, answers a kept offer and dials a data connection, then
        nothing is lost: the data connection is refused without a word (no "no longer
        lists" Cancel for a transfer not loaded yet), and once loaded the new offer is listed
        (with its transfer.offered event) and the kept offer is accepted.  Before, the load
        replaced the list: the new offer was gone while its sender took it as delivered."""
        kept_store = FakeStore()
        first, _sessions, _events, _store = make_transfers(self, kept_store)
        kept = send_a_file(self, first)  # ours to bob, kept in the store
        first.close()
        store = SlowStore()
        store.settings = dict(kept_store.settings)
        session = FakeSession()
        transfers, events = new_transfers(self)
        opened = transfers.open(store, FakeNetwork(), {ALICE: session, BOB: session}.get)
        self.assertNoResult(opened)
        offer = an_offer(self)
        transfers.control_received(ALICE, CONTROL_PREFIX + encode_transfer_record(offer))
        accept = Accept(bytes.fromhex(kept["id"]))
        transfers.control_received(BOB, CONTROL_PREFIX + encode_transfer_record(accept))
        self.assertIsNone(transfers.inbound_stream(ALICE, offer.transfer_id))
        self.assertEqual(session.records, [])
        self.assertEqual(offered(events), [])
        store.release()
        self.successResultOf(opened)
        self.assertEqual(offered(events), [offer.transfer_id.hex()])
        self.assertEqual(transfers.find(offer.transfer_id.hex()).state, "offered")
        self.assertEqual(transfers.find(kept["id"]).state, "accepted")
        self.assertNotIn("Cancel", [type(r).__name__ for r in session.records])


class TransferListTests(TestCase):
    """The list of transfers keeps, as they change, what is asked of it at every event: what
    to write, what was removed, which transfers stream and which wait for a slot, the open
    incoming ones by peer and the folders made for folders sent whole."""

    @property
    def offer(self) -> Offer:
        if not hasattr(self, "_offer"):
            self._offer = an_offer(self)
        return self._offer

    def entry(self, offer: Offer, **fields: Any) -> TransferEntry:
        return TransferEntry(
            offer=replace(offer, transfer_id=os.urandom(16)),
            peer=ALICE,
            sending=True,
            state="accepted",
            created=1.0,
            **fields,
        )

    def test_the_kept_fields_are_those_written(self) -> None:
        """When a transfer is written (every optional field set), then the fields it writes
        are exactly those whose assignment marks it to be written again."""
        entry = self.entry(
            an_offer(self), folder_root="/d", ask_next=(BOB,), ask_last=ALICE, asked=2
        )
        self.assertEqual(set(entry.to_json()), transfers_module.KEPT_FIELDS)
        self.assertEqual(len(entry.kept_fields()), len(transfers_module.KEPT_FIELDS))

    def test_flags_and_fields_move_a_transfer_in_its_indexes(self) -> None:
        """When transfers are added, assigned, replaced and removed, then the streaming and
        queued indexes hold exactly the transfers whose flag is set, the dirty set the ones
        added or assigned a kept field since it was taken (not for a runtime field), and
        the removed set the ones removed; a transfer removed or replaced is no longer
        watched."""
        offer = an_offer(self)
        kept = transfers_module.TransferList()
        a, b = self.entry(offer), self.entry(offer, streaming=True)
        kept[a.id] = a
        kept[b.id] = b
        self.assertEqual(kept.take_changes(), ({a.id, b.id}, set()))
        self.assertEqual(list(kept.streaming), [b.id])
        a.queued = True
        a.rate = 5.0  # runtime only
        self.assertEqual((list(kept.queued), kept.dirty), ([a.id], set()))
        a.queued, a.streaming = False, True
        b.streaming = False
        b.done = 10
        self.assertEqual((kept.queued, list(kept.streaming)), ({}, [a.id]))
        self.assertEqual(kept.take_changes(), ({b.id}, set()))
        del kept[a.id]
        self.assertEqual((kept.streaming, kept.take_changes()), ({}, (set(), {a.id})))
        a.state = "complete"  # no longer in the list: nothing to write
        a.streaming = True
        self.assertEqual((kept.dirty, kept.streaming), (set(), {}))
        c = replace(b, streaming=True)  # the same id, another object
        kept[b.id] = c
        b.state = "cancelled"
        b.streaming = False
        self.assertEqual((kept[b.id], list(kept.streaming)), (c, [b.id]))
        self.assertIsNone(b.watcher)
        self.assertEqual(kept.setdefault(b.id, b), c)  # through the watched path
        self.assertEqual(kept.pop(b.id), c)
        self.assertEqual((len(kept), kept.streaming, kept.removed), (0, {}, {b.id}))

    @settings(max_examples=300, deadline=None)
    @example([(0, "add", "offered", False), (0, "sending", "offered", True)])
    @example([(0, "add", "offered", False), (0, "root", "a", True), (0, "peer", "a", True)])
    @example([(0, "add", "accepted", False), (0, "root", "a", True), (0, "remove", "a", True)])
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 5),  # which transfer
                st.sampled_from(["add", "state", "sending", "peer", "root", "remove"]),
                st.sampled_from(["offered", "accepted", "requested", "complete", "failed"]),
                st.booleans(),
            ),
            max_size=40,
        )
    )
    def test_the_counts_are_those_of_the_transfers_listed(
        self, steps: list[tuple[int, str, str, bool]]
    ) -> None:
        """When transfers are added, removed and their state, direction, peer and folder
        assigned in any order, then the open incoming transfers counted by peer and by folder
        sent whole, and the folders made for folders sent whole, are those found by walking
        the list."""
        kept = transfers_module.TransferList()
        offer = self.offer
        made: dict[int, TransferEntry] = {}
        for n, step, state, flag in steps:
            entry = made.get(n)
            if step == "add" or entry is None:
                made[n] = entry = TransferEntry(
                    offer=replace(
                        offer, transfer_id=bytes([n]) * 16, folder="album", folder_id=b"f" * 16
                    ),
                    peer=ALICE,
                    sending=flag,
                    state=state,
                    created=1.0,
                )
                kept[entry.id] = entry
            elif step == "state":
                entry.state = state
            elif step == "sending":
                entry.sending = flag
            elif step == "peer":
                entry.peer = BOB if flag else ALICE
            elif step == "root":
                entry.folder_root = f"/in/{state}" if flag else ""
            elif entry.id in kept:
                del kept[entry.id]
        listed = list(kept.values())
        open_in = {
            e.id: e.peer
            for e in listed
            if not e.sending
            and e.state not in transfers_module.FINAL_STATES
            and e.state != transfers_module.REQUESTED
        }
        self.assertEqual(kept.open_in, open_in)
        by_peer = {p: list(open_in.values()).count(p) for p in set(open_in.values())}
        self.assertEqual(kept.open_by_peer, by_peer)
        folders = [(e.peer, e.offer.folder_id) for e in listed if e.id in open_in]
        self.assertEqual(kept.open_by_folder, {f: folders.count(f) for f in set(folders)})
        roots: dict[tuple[str, bytes], dict[str, str]] = {}
        for e in listed:
            if e.folder_root:
                roots.setdefault((e.peer, e.offer.folder_id), {})[e.id] = e.folder_root
        self.assertEqual(kept.roots, roots)

    def test_a_save_looks_only_at_what_changed(self) -> None:
        """When one transfer of many changes, then the save compares that one alone with
        what was written (not the whole list), and writes it."""
        store = FakeStore()
        transfers, _sessions, _events, _ = make_transfers(self, store)
        offer = an_offer(self)
        for _ in range(50):
            entry = self.entry(offer)
            transfers._entries[entry.id] = entry
        self.successResultOf(transfers._save())
        compared: list[str] = []
        kept_fields = TransferEntry.kept_fields

        def counting(e: TransferEntry) -> tuple[Any, ...]:
            compared.append(e.id)
            return kept_fields(e)

        self.patch(TransferEntry, "kept_fields", counting)
        entry.reason = "why"
        store.written.clear()
        self.successResultOf(transfers._save())
        self.assertEqual(
            (compared, store.written), ([entry.id], [transfers_module.ENTRY_PREFIX + entry.id])
        )


class RetentionTests(TestCase):
    """Finished transfers do not pile up for ever in the kept document."""

    def test_finished_transfers_beyond_the_limits_are_forgotten(self) -> None:
        """When more than MAX_FINISHED transfers have finished, some of them over
        FINISHED_KEPT old, then at the next load only the newest MAX_FINISHED finished ones
        younger than that are kept, plus every one not finished, one whose cancel the peer
        has yet to hear, and the newest outgoing transfer of a file shared into a group
        (a member may still ask for it), however old; the store holds the same."""
        store = FakeStore()
        transfers, _sessions, _events, _store = make_transfers(self, store)
        now = transfers.now()
        base = an_offer(self)

        def kept(state: str, age: float, **fields: Any) -> str:
            offer = replace(base, transfer_id=os.urandom(16), group_id=fields.pop("group", b""))
            entry = transfers_module.TransferEntry(
                offer=offer, peer=ALICE, sending=False, state=state, created=now - age
            )
            for name, value in fields.items():
                setattr(entry, name, value)
            transfers._entries[entry.id] = entry
            return entry.id

        limit = transfers_module.MAX_FINISHED
        recent = [kept("complete", 10.0 + i) for i in range(limit + 20)]
        old = kept("cancelled", transfers_module.FINISHED_KEPT + 5)
        waiting = kept("offered", transfers_module.FINISHED_KEPT * 3)
        owed = kept("cancelled", transfers_module.FINISHED_KEPT * 2, notice="cancel")
        source = kept(
            "complete", transfers_module.FINISHED_KEPT * 2, group=GROUP, sending=True, path="/f"
        )
        self.successResultOf(transfers._save())
        again, _s, _e, _st = make_transfers(self, store)
        ids = set(again._entries)
        self.assertEqual(ids & set(recent), set(recent[:limit]))  # the newest
        self.assertNotIn(old, ids)
        self.assertTrue({waiting, owed, source} <= ids)
        self.assertEqual(len(ids), limit + 3)
        third, _s, _e, _st = make_transfers(self, store)  # what was forgotten was stored
        self.assertEqual(set(third._entries), ids)

    def test_a_transfer_ending_prunes_the_others(self) -> None:
        """When transfers end while more than MAX_FINISHED have finished, then PRUNE_DELAY
        after the first of them the oldest finished ones are forgotten, in the store too, not
        only at the next load; the list is walked once for all that ended meanwhile."""
        transfers, _sessions, _events, store = make_transfers(self)
        walks: list[bool] = []
        prune = transfers._prune
        transfers._prune = lambda: walks.append(prune()) or walks[-1]  # type: ignore[method-assign]
        now = transfers.now()
        base = an_offer(self)
        for i in range(transfers_module.MAX_FINISHED + 3):
            entry = transfers_module.TransferEntry(
                offer=replace(base, transfer_id=os.urandom(16)),
                peer=ALICE,
                sending=False,
                state="complete",
                created=now - 100.0 - i,
            )
            transfers._entries[entry.id] = entry
        self.successResultOf(transfers._save())
        for _ in range(3):
            transfers._offer_received(ALICE, replace(base, transfer_id=os.urandom(16)))
        live = [e.id for e in transfers._entries.values() if e.state == "offered"]
        for tid in live:
            self.successResultOf(transfers.decline(tid))
        self.assertEqual(len(transfers._entries), transfers_module.MAX_FINISHED + 6)
        transfers.clock.advance(transfers_module.PRUNE_DELAY)
        self.assertEqual(walks, [True])
        self.assertEqual(len(transfers._entries), transfers_module.MAX_FINISHED)
        self.assertTrue(set(live) <= set(transfers._entries))
        self.assertEqual(set(store.transfers()), set(transfers._entries))

    def test_a_folder_is_forgotten_whole(self) -> None:
        """When the limit falls inside a folder sent whole (its files older than
        MAX_FINISHED - 1 newer transfers), then all its files stay, not the newest one
        alone; a folder wholly beyond the limit goes whole; and one whose last file still
        moves keeps its finished files too, however far beyond the limit."""
        transfers, _sessions, _events, _store = make_transfers(self)
        now = transfers.now()
        base = an_offer(self)
        limit = transfers_module.MAX_FINISHED

        def add(state: str, age: float, folder_id: bytes = b"") -> str:
            offer = replace(
                base,
                transfer_id=os.urandom(16),
                folder="photos" if folder_id else "",
                folder_id=folder_id,
            )
            entry = transfers_module.TransferEntry(
                offer=offer, peer=ALICE, sending=False, state=state, created=now - age
            )
            transfers._entries[entry.id] = entry
            return entry.id

        newer = [add("complete", 10.0 + i) for i in range(limit - 1)]
        straddling = [add("complete", 1000.0, b"s" * 16) for _ in range(3)]
        beyond = [add("complete", 2000.0, b"b" * 16) for _ in range(3)]
        moving = [add("complete", 3000.0, b"m" * 16) for _ in range(2)]
        moving.append(add("streaming", 3000.0, b"m" * 16))
        loose_beyond = add("cancelled", 4000.0)

        self.assertTrue(transfers._prune())

        ids = set(transfers._entries)
        self.assertTrue(set(newer) <= ids)
        self.assertTrue(set(straddling) <= ids)  # the limit fell inside it: all stay
        self.assertFalse(set(beyond) & ids)  # wholly beyond: all go
        self.assertTrue(set(moving) <= ids)  # a file of it still moves: all stay
        self.assertNotIn(loose_beyond, ids)
        self.assertEqual(len(ids), limit - 1 + 3 + 3)


DAVE = "d" * 52


class AskAnotherTests(TestCase):
    """Fetching a shared file without naming a member: the author when online, else the
    members online in turn, the author last (``Transfers.request`` with *others*)."""

    def leave(self, carol: Transfers, gone: set[str]) -> None:
        """The members in *gone* have left the group: carol's node refuses them (its one rule
        for the sweep and for :attr:`Transfers.may_offer`) and sweeps her transfers."""

        def refusal(uid: str, gid: bytes) -> tuple[str, bool] | None:
            return ("they left the group", False) if uid in gone else None

        carol.may_offer = lambda uid, gid: refusal(uid, gid) is None
        self.successResultOf(carol.revoke(refusal, group_id=GROUP))

    def members(self) -> tuple[Transfers, Transfers, dict[str, Any], SharedFile, str, str]:
        """Bob (the author, who sent notes.txt into GROUP to alice, offline for carol), alice
        (online, who received it complete and holds it), dave (online, without it) and carol,
        who asks; returns bob, carol, carol's sessions, the file, carol's folder and the path
        of alice's copy."""
        bob, carol, _bob_sessions, carol_sessions, path = author_and_requester(self)
        [source] = bob._entries.values()
        alice, alice_sessions, _e, _s = make_transfers(self)
        copy = os.path.join(short_tempdir(self), "notes.txt")
        shutil.copyfile(path, copy)
        offer = replace(source.offer, transfer_id=b"\x07" * 16)
        alice._entries[offer.transfer_id.hex()] = transfers_module.TransferEntry(
            offer=offer, peer=BOB, sending=False, state="complete", created=1.0, path=copy
        )
        dave, dave_sessions, _e2, _s2 = make_transfers(self)
        for who, sessions, uid in ((alice, alice_sessions, ALICE), (dave, dave_sessions, DAVE)):
            sessions[CAROL] = RoutedSession(carol, uid)
            carol_sessions[uid] = RoutedSession(who, CAROL)
        carol_sessions[BOB] = None  # bob is offline for carol
        inbox = os.path.join(short_tempdir(self), "inbox")
        return bob, carol, carol_sessions, SharedFile.of(source.offer), inbox, copy

    def test_while_the_author_is_offline_a_member_online_who_has_it_serves_it(self) -> None:
        """When carol fetches bob's file while bob is offline and dave (online, asked first)
        does not have it, then alice (online, who received it) is asked next and serves it:
        carol's transfer is accepted from alice, and bob is never asked."""
        bob, carol, _sessions, shared, inbox, _copy = self.members()
        view = self.successResultOf(carol.request(BOB, GROUP, shared, inbox, [DAVE, ALICE]))
        entry = carol.find(view["id"])
        self.assertEqual((entry.state, entry.peer, entry.asked), ("accepted", ALICE, 2))
        self.assertEqual(entry.directory, inbox)
        self.assertNotIn(view["id"], bob._entries)

    def test_members_without_it_pass_the_request_on_to_the_author_asked_last(self) -> None:
        """When neither dave nor alice (both online) has the file and bob, its author, is
        offline, then after both decline (alice's copy is gone) carol's request waits for bob
        ("requested", the request held for his session, what is left to ask kept across a
        restart); when bob comes online he is asked and serves it."""
        bob, carol, sessions, shared, inbox, copy = self.members()
        os.remove(copy)
        view = self.successResultOf(carol.request(BOB, GROUP, shared, inbox, [DAVE, ALICE]))
        entry = carol.find(view["id"])
        self.assertEqual(
            (entry.state, entry.peer, entry.asked), (transfers_module.REQUESTED, BOB, 3)
        )
        self.assertEqual(entry.reason, transfers_module.REQUEST_WAITS)
        self.assertEqual((entry.ask_next, entry.ask_last), ((), ""))
        again = transfers_module.TransferEntry.from_json(entry.to_json())
        self.assertEqual((again.peer, again.asked, again.ask_last), (BOB, 3, ""))

        sessions[BOB] = RoutedSession(bob, CAROL)
        carol.session_established(BOB)
        self.assertEqual((entry.state, entry.peer), ("accepted", BOB))

    def test_a_member_asked_who_leaves_the_group_passes_the_request_on(self) -> None:
        """When carol waits on alice (online, asked, her answer not come yet) and alice leaves
        the group, then the request goes on to dave, the next member online, who does not
        have it, then to bob, offline, asked last; when bob leaves too, carol's transfer ends
        cancelled with the reason of his leaving."""
        _bob, carol, sessions, shared, inbox, _copy = self.members()
        silent = FakeSession()  # alice: her answer has not come
        sessions[ALICE] = silent
        view = self.successResultOf(carol.request(BOB, GROUP, shared, inbox, [ALICE, DAVE]))
        entry = carol.find(view["id"])
        self.assertEqual((entry.state, entry.peer), (transfers_module.REQUESTED, ALICE))
        self.assertEqual([type(r).__name__ for r in silent.records], ["Request"])
        gone = {ALICE}
        self.leave(carol, gone)
        self.assertEqual(
            (entry.state, entry.peer, entry.asked), (transfers_module.REQUESTED, BOB, 3)
        )
        self.assertEqual(entry.reason, transfers_module.REQUEST_WAITS)
        gone.add(BOB)
        self.leave(carol, gone)
        self.assertEqual((entry.state, entry.reason), ("cancelled", "they left the group"))

    def test_members_who_left_before_their_turn_are_not_asked(self) -> None:
        """When alice (asked, silent) and dave (online, next to ask) both leave the group, then
        the request passes dave over and goes to bob, asked last: dave never hears it."""
        _bob, carol, sessions, shared, inbox, _copy = self.members()
        sessions[ALICE] = FakeSession()
        view = self.successResultOf(carol.request(BOB, GROUP, shared, inbox, [ALICE, DAVE]))
        entry = carol.find(view["id"])
        self.leave(carol, {ALICE, DAVE})
        self.assertEqual(
            (entry.state, entry.peer, entry.asked), (transfers_module.REQUESTED, BOB, 2)
        )
        self.assertEqual(sessions[DAVE].records, [])

    def test_a_member_who_does_not_answer_is_passed_over_and_a_late_offer_still_taken(
        self,
    ) -> None:
        """When alice, online, is asked and does not answer (her daemon is slow or dropped the
        request) for REQUEST_PATIENCE seconds, then dave is asked, who does not have it, then
        bob, offline, last, and no deadline runs while the request waits for bob; a late
        offer of another file under carol's id (dave's) is cancelled and changes nothing;
        alice's late offer of the very file is taken while carol still waits, and bob's,
        coming after it, is cancelled ("another member sent the file meanwhile").  A member
        asked with nobody left to ask has no deadline."""
        bob, carol, sessions, shared, inbox, _copy = self.members()
        silent = FakeSession()
        sessions[ALICE] = silent
        clock: Any = carol.clock
        view = self.successResultOf(carol.request(BOB, GROUP, shared, inbox, [ALICE, DAVE]))
        entry = carol.find(view["id"])
        clock.advance(transfers_module.REQUEST_PATIENCE - 1)
        self.assertEqual((entry.state, entry.peer), (transfers_module.REQUESTED, ALICE))
        clock.advance(1)
        self.assertEqual(
            (entry.state, entry.peer, entry.asked), (transfers_module.REQUESTED, BOB, 3)
        )
        self.assertEqual(entry.reason, transfers_module.REQUEST_WAITS)
        self.assertIsNone(entry.patience)

        [source] = bob._entries.values()
        tid = entry.offer.transfer_id
        bogus = replace(source.offer, transfer_id=tid, content_hash=b"\x05" * 32)
        carol.record_received(DAVE, encode_transfer_record(bogus))
        self.assertEqual((entry.state, entry.peer), (transfers_module.REQUESTED, BOB))
        self.assertIsInstance(sessions[DAVE].records[-1], Cancel)

        carol.record_received(ALICE, encode_transfer_record(replace(source.offer, transfer_id=tid)))
        self.assertEqual((entry.state, entry.peer), ("accepted", ALICE))
        self.assertEqual([type(r).__name__ for r in silent.records], ["Request", "Accept"])
        sessions[BOB] = FakeSession()
        carol.record_received(BOB, encode_transfer_record(replace(source.offer, transfer_id=tid)))
        self.assertEqual(
            [(type(r).__name__, getattr(r, "reason", "")) for r in sessions[BOB].records],
            [("Cancel", transfers_module.ASKED_ANOTHER)],
        )
        self.assertEqual((entry.state, entry.peer), ("accepted", ALICE))

        self.successResultOf(carol.cancel(view["id"]))
        alone = self.successResultOf(carol.request(ALICE, GROUP, shared, inbox))
        self.assertEqual(carol.find(alone["id"]).peer, ALICE)
        self.assertIsNone(carol.find(alone["id"]).patience)
        waiting = [c.func.__name__ for c in clock.getDelayedCalls()]
        self.assertEqual([name for name in waiting if name != "_prune_later"], [])

    def test_with_its_author_gone_only_the_members_online_are_asked(self) -> None:
        """When the author has left the group (no uid to ask), then the members online are
        asked in turn and alice, who holds it, serves it; with none of them online, the fetch
        is refused at once, naming the way out (--from), and no transfer is kept."""
        _bob, carol, sessions, shared, inbox, _copy = self.members()
        view = self.successResultOf(carol.request("", GROUP, shared, inbox, [DAVE, ALICE]))
        entry = carol.find(view["id"])
        self.assertEqual(
            (entry.state, entry.peer, entry.asked, entry.ask_last), ("accepted", ALICE, 2, "")
        )
        self.successResultOf(carol.cancel(view["id"]))
        sessions[ALICE] = sessions[DAVE] = None
        refused = self.failureResultOf(
            carol.request("", GROUP, shared, inbox, [DAVE, ALICE]), InvalidInput
        )
        self.assertIn("--from", refused.getErrorMessage())
        self.assertEqual(len(carol._entries), 1)

    def test_when_nobody_asked_has_it_the_transfer_says_how_many_were_asked(self) -> None:
        """When bob (online, asked first) changed his file and dave (online) never had it,
        and alice is offline, then carol's transfer ends cancelled saying that none of the 2
        members asked has it, with the last answer; alice, offline, is not asked, and what
        is left to ask survives a restart until then."""
        bob, carol, sessions, shared, inbox, _copy = self.members()
        sessions[BOB] = RoutedSession(bob, CAROL)
        sessions[ALICE] = None
        [source] = bob._entries.values()
        with open(source.path, "r+b") as f:
            f.write(b"changed")
        view = self.successResultOf(carol.request(BOB, GROUP, shared, inbox, [ALICE, DAVE]))
        entry = carol.find(view["id"])
        self.assertEqual(entry.state, "cancelled")
        self.assertEqual(
            entry.reason,
            "none of the 2 members asked has it (the last: "
            + transfers_module.NOT_SHARED_HERE
            + ")",
        )
        self.assertEqual(entry.peer, DAVE)
        waiting = transfers_module.TransferEntry(
            offer=entry.offer,
            peer=DAVE,
            sending=False,
            state=transfers_module.REQUESTED,
            created=1.0,
            ask_next=(ALICE,),
            ask_last=BOB,
            asked=2,
        )
        again = transfers_module.TransferEntry.from_json(waiting.to_json())
        self.assertEqual((again.ask_next, again.ask_last, again.asked), ((ALICE,), BOB, 2))


class HolderTests(TestCase):
    """A member who received a shared file complete serves it to a member who asks."""

    def test_a_member_who_received_the_file_serves_it(self) -> None:
        """When alice holds a file shared into GROUP (received complete, at its final path)
        and carol asks her for it, then alice hashes her copy and offers it under carol's id,
        and carol takes it (it is the recorded file) and accepts it at once; once alice's copy
        is gone, she declines ("changed or is gone"), and had her transfer of it not
        completed, she would decline "not on this device"."""
        alice, alice_sessions, _e, _s = make_transfers(self)
        carol, carol_sessions, _e2, _s2 = make_transfers(self)
        alice_sessions[CAROL] = RoutedSession(carol, ALICE)
        carol_sessions[ALICE] = RoutedSession(alice, CAROL)
        path = os.path.join(short_tempdir(self), "song.ogg")
        with open(path, "wb") as f:
            f.write(os.urandom(80_000))
        offer = replace(make_offer(path).offer, group_id=GROUP)
        received = transfers_module.TransferEntry(
            offer=offer, peer=BOB, sending=False, state="complete", created=1.0, path=path
        )
        alice._entries[received.id] = received
        shared = SharedFile.of(offer)
        view = self.successResultOf(carol.request(ALICE, GROUP, shared))
        entry = carol.find(view["id"])
        self.assertEqual((entry.state, entry.peer), ("accepted", ALICE))
        served = alice.find(view["id"])
        self.assertEqual((served.sending, served.path), (True, path))

        self.successResultOf(carol.cancel(view["id"]))
        os.remove(path)
        gone = self.successResultOf(carol.request(ALICE, GROUP, shared))
        self.assertEqual(
            carol.find(gone["id"]).reason, "the sender declined: " + transfers_module.SOURCE_GONE
        )
        for e in list(alice._entries.values()):  # alice never had it complete
            if e is not received:
                del alice._entries[e.id]
        received.state, received.path = "cancelled", ""
        never = self.successResultOf(carol.request(ALICE, GROUP, shared))
        self.assertEqual(
            carol.find(never["id"]).reason,
            "the sender declined: " + transfers_module.NOT_SHARED_HERE,
        )
