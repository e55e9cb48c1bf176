"""Tests for :mod:`jarvis.core.transfers`: control records over fake sessions, kept state,
re-sending at session start, and the body prefix that keeps chat text apart."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from jarvis.core.transfers import CONTROL_PREFIX, Transfers, is_control_body
from jarvis.files.send import make_offer
from jarvis.protocol.transfer import (
    Accept,
    Cancel,
    Offer,
    TransferRecord,
    encode_transfer_record,
    parse_transfer_record,
)
from jarvis.store import queries
from tests.daemons import short_tempdir

ALICE = "a" * 52
BOB = "b" * 52


class FakeStore:
    """The two queries Transfers uses, on a dict."""

    def __init__(self) -> None:
        self.settings: dict[str, str] = {}

    def run(self, query: Any, *args: Any, write: bool = False) -> defer.Deferred[Any]:
        if query is queries.get_setting:
            return defer.succeed(self.settings.get(args[0]))
        if query is queries.set_setting:
            self.settings[args[0]] = args[1]
            return defer.succeed(None)
        raise AssertionError(f"unexpected query {query}")


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


def make_transfers(
    testcase: TestCase, store: FakeStore | None = None
) -> tuple[Transfers, dict[str, FakeSession | None], list[tuple[str, dict[str, Any]]], FakeStore]:
    events: list[tuple[str, dict[str, Any]]] = []
    sessions: dict[str, FakeSession | None] = {}
    store = store or FakeStore()
    transfers = Transfers(
        clock=Clock(),
        now=lambda: 1_700_000_000.0,
        emit=lambda name, payload: events.append((name, payload)),
        run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
        display_name=lambda uid: uid[:4],
        downloads=short_tempdir(testcase),
    )
    testcase.successResultOf(transfers.open(store, FakeNetwork(), sessions.get))
    return transfers, sessions, events, store


def an_offer(testcase: TestCase, size: int = 70_000) -> Offer:
    path = os.path.join(short_tempdir(testcase), "photo.jpg")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return make_offer(path).offer


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
        self.assertIn("transfers", store.settings)

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


class SenderTests(TestCase):
    def test_offer_written_until_answered_then_stream_dialled(self) -> None:
        """When alice offers a file to offline bob, then the Offer is written at his session;
        his Accept makes her dial the data connection, and a later Cancel from him ends it."""
        transfers, sessions, events, _store = make_transfers(self)
        path = os.path.join(short_tempdir(self), "doc.txt")
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
        view = self.successResultOf(transfers.send(BOB, path))
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
