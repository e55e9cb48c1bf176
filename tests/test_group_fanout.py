"""Tests for :mod:`jarvis.protocol.group_fanout`: who gets which entry, who may open a session."""

from __future__ import annotations

import importlib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.identity import IdentityKey
from jarvis.protocol.group_fanout import (
    KIND_MESSAGE,
    KIND_STATE,
    encode_payload,
    group_peers,
    parse_payload,
    plan_message,
    plan_state,
)
from jarvis.protocol.group_message import NO_HASH, message_id, parse_message, write_message
from jarvis.protocol.group_state import (
    GroupState,
    found_group,
    invite,
    parse_state,
    remove,
    state_hash,
)

ALICE = IdentityKey.from_private_bytes(bytes(range(0x00, 0x20)))
BOB = IdentityKey.from_private_bytes(bytes(range(0x20, 0x40)))
CAROL = IdentityKey.from_private_bytes(bytes(range(0x40, 0x60)))
DAVE = IdentityKey.from_private_bytes(bytes(range(0x60, 0x80)))
GROUP_ID = bytes(range(0x80, 0x90))


def make_state() -> GroupState:
    """Return version 3: Alice, Bob (address b"bob") and Carol."""
    v1 = found_group(ALICE, "Family", group_id=GROUP_ID)
    v2 = invite(v1, ALICE, BOB.public_bytes, addresses=b"bob")
    return invite(v2, ALICE, CAROL.public_bytes)


class PlanMessageTests(SynchronousTestCase):
    """A group message fans out to every other member."""

    def test_every_other_member_once(self) -> None:
        """When Bob sends under version 3, then Alice and Carol each get one entry, all with
        the message's id and a payload that parses back to the message."""
        state = make_state()
        message = write_message(
            BOB, GROUP_ID, seq=1, prev_hash=NO_HASH, state_version=3, created=0, body=b"hi"
        )
        entries = plan_message(state, message)
        self.assertEqual(sorted(e.recipient for e in entries), sorted([ALICE.uid, CAROL.uid]))
        self.assertEqual({e.entry_id for e in entries}, {message_id(message)})
        for e in entries:
            kind, record = parse_payload(e.payload)
            self.assertEqual(kind, KIND_MESSAGE)
            self.assertEqual(parse_message(record), message)

    def test_removed_member_gets_nothing(self) -> None:
        """When Carol is removed at version 4, then a message written under version 4 has no
        entry for her."""
        v4 = remove(make_state(), ALICE, CAROL.uid, last_seq=0)
        message = write_message(
            ALICE, GROUP_ID, seq=1, prev_hash=NO_HASH, state_version=4, created=0, body=b"x"
        )
        self.assertEqual([e.recipient for e in plan_message(v4, message)], [BOB.uid])

    def test_wrong_state(self) -> None:
        """When the message was written under another version, then planning raises."""
        message = write_message(
            ALICE, GROUP_ID, seq=1, prev_hash=NO_HASH, state_version=2, created=0, body=b"x"
        )
        self.assertRaises(ValueError, plan_message, make_state(), message)


class PlanStateTests(SynchronousTestCase):
    """A new state reaches the members, and the member it removes."""

    def test_removed_member_is_told(self) -> None:
        """When Alice removes Carol, then Bob and Carol get the new state (Carol learns she was
        removed), Alice does not, and the entries share the state's id."""
        v3 = make_state()
        v4 = remove(v3, ALICE, CAROL.uid, last_seq=0)
        entries = plan_state(v3, v4, ALICE.public_bytes)
        self.assertEqual(sorted(e.recipient for e in entries), sorted([BOB.uid, CAROL.uid]))
        self.assertEqual({e.entry_id for e in entries}, {state_hash(v4)[:16]})
        kind, record = parse_payload(entries[0].payload)
        self.assertEqual((kind, parse_state(record)), (KIND_STATE, v4))
        bob = next(e for e in entries if e.recipient == BOB.uid)
        self.assertEqual((bob.public_key, bob.addresses), (BOB.public_bytes, b"bob"))


class PeersTests(SynchronousTestCase):
    """Which non-contacts a node may accept a session from, and for which groups."""

    def test_group_peers(self) -> None:
        """When Bob is in "Family" with Alice and Carol, and in another group with Dave only,
        then Bob may talk to Alice and Carol for Family only, Dave for the other only; a group
        Bob is not in admits nobody."""
        family = make_state()
        other = invite(found_group(DAVE, "Chess", group_id=bytes(16)), DAVE, BOB.public_bytes)
        not_mine = found_group(CAROL, "Carol's", group_id=b"\x01" * 16)
        peers = group_peers([family, other, not_mine], BOB.public_bytes)
        self.assertEqual(
            peers,
            {
                ALICE.uid: frozenset({GROUP_ID}),
                CAROL.uid: frozenset({GROUP_ID}),
                DAVE.uid: frozenset({bytes(16)}),
            },
        )

    def test_payload_kinds(self) -> None:
        """When a payload is empty or of an unknown kind, then it is refused."""
        self.assertRaises(ValueError, parse_payload, b"")
        self.assertRaises(ValueError, parse_payload, b"\x09abc")
        self.assertRaises(ValueError, encode_payload, 9, b"")
        self.assertEqual(parse_payload(encode_payload(KIND_STATE, b"s")), (KIND_STATE, b"s"))


class GroupsDocTests(SynchronousTestCase):
    """docs/groups.md stays honest."""

    def test_every_cannot_cites_existing_tests(self) -> None:
        """When docs/groups.md's threat model says someone cannot do something, then that
        section cites tests, and every cited module, class and method exists."""
        from tests.test_docs import CITATION

        doc = Path(__file__).resolve().parent.parent / "docs" / "groups.md"
        text = doc.read_text(encoding="utf-8")
        sections = text.split("\n### ")
        cannot = [s for s in sections if s.split("\n")[0].endswith("cannot")]
        self.assertEqual(len(cannot), 5)
        for section in cannot:
            self.assertRegex(section, CITATION, section.splitlines()[0])
        missing = []
        for module_name, class_name, method in CITATION.findall(text):
            module = importlib.import_module(f"tests.{module_name}")
            if not class_name:
                continue
            owner = getattr(module, class_name, None)
            if owner is None or not hasattr(owner, method):
                missing.append(f"{module_name}::{class_name}::{method}")
        self.assertEqual(missing, [])


class BodyAndChainTests(SynchronousTestCase):
    """The 1:1 body that carries a group payload, and the invitation chain."""

    def test_body_round_trip_and_chat_text(self) -> None:
        """When a group payload is put in a 1:1 body, then it comes back exactly; a chat text
        is not taken for one, and a marked body with bad base64 is refused."""
        from jarvis.protocol.group_fanout import BODY_MARK, decode_body, encode_body

        payload = encode_payload(KIND_MESSAGE, b"\x00\xffrecord")
        body = encode_body(payload)
        body.decode("utf-8")  # stays text for the 1:1 outbox
        self.assertEqual(decode_body(body), payload)
        self.assertIsNone(decode_body(b"hello \x00jarvis-group"))
        with self.assertRaises(ValueError):
            decode_body(BODY_MARK + b"not base64 !")

    def test_chain_round_trip_and_truncation(self) -> None:
        """When a chain of states is encoded as an invitation, then it parses to the same
        states; a truncated or padded one is refused."""
        from jarvis.protocol.group_fanout import encode_chain, parse_chain

        chain = [found_group(ALICE, "Chain")]
        chain.append(invite(chain[-1], ALICE, BOB.public_bytes))
        data = encode_chain(chain)
        self.assertEqual(parse_chain(data), chain)
        for bad in (data[:-1], data + b"\x00", b"\x00\x00", b""):
            with self.assertRaises(ValueError):
                parse_chain(bad)

    def test_a_group_transfer_record_names_its_group(self) -> None:
        """When a transfer record travels by a group's queue (kind 6: group id then record),
        then the payload is about that group (a member's queue for it takes it); one with no
        record after the id, and a transfer record between contacts (kind 5), name none."""
        from jarvis.protocol.group_fanout import (
            KIND_GROUP_TRANSFER,
            KIND_TRANSFER,
            payload_group_id,
        )

        record = b"\x01\x02" + bytes(16)
        self.assertEqual(
            payload_group_id(encode_payload(KIND_GROUP_TRANSFER, GROUP_ID + record)), GROUP_ID
        )
        self.assertIsNone(payload_group_id(encode_payload(KIND_GROUP_TRANSFER, GROUP_ID)))
        self.assertIsNone(payload_group_id(encode_payload(KIND_TRANSFER, record)))
