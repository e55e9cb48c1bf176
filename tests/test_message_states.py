"""The one state-rank rule (jarvis.common.message_states): a message's state only moves forward, and
the store's UPDATEs, its outbox index and the UI's model all follow the same rule."""

from __future__ import annotations

import ast
import itertools
import os
import re
import shutil
import tempfile

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.common.message_states import (
    INCOMING_STATES,
    MESSAGE_STATES,
    OUTGOING_STATES,
    may_advance,
    states_before,
    states_from,
)
from jarvis.store import queries, schema
from jarvis.store.database import Store
from jarvis.ui.model import Message, MessengerModel
from tests.daemons import REPO
from tests.test_store import ALICE, AESGCMRowCipher, make_message
from tests.ui_fakes import NOW, UID_ALICE, make_contact


class RuleTests(SynchronousTestCase):
    def test_order(self) -> None:
        """When the rule is asked which states come before another, then it answers from the
        one order per direction, and nothing comes before a first state."""
        self.assertEqual(states_before("out", "delivered"), ("queued", "sent"))
        self.assertEqual(states_before("out", "queued"), ())
        self.assertEqual(states_before("in", "read"), ("received",))
        self.assertEqual(states_before("in", "sent"), ())
        self.assertEqual(set(MESSAGE_STATES), set(OUTGOING_STATES) | set(INCOMING_STATES))

    def test_states_from(self) -> None:
        """When the states a message has reached are asked for (``jarvis send --wait``), then
        they are the state and the later ones of its direction."""
        self.assertEqual(states_from("out", "sent"), ("sent", "delivered", "read"))
        self.assertEqual(states_from("out", "delivered"), ("delivered", "read"))
        self.assertEqual(states_from("in", "delivered"), ())

    def test_may_advance(self) -> None:
        """When a state is reported for a message, then it is taken only if it is one of the
        direction's states and not earlier than the current one."""
        self.assertTrue(may_advance("out", "sent", "delivered"))
        self.assertTrue(may_advance("out", "sent", "sent"))
        self.assertFalse(may_advance("out", "delivered", "sent"))
        self.assertFalse(may_advance("out", "queued", "received"))
        self.assertFalse(may_advance("in", "read", "received"))
        self.assertFalse(may_advance("local", "sent", "read"))

    def test_schema_indexes_follow_the_rule(self) -> None:
        """When the schema's partial indexes are read, then the outbox holds exactly the
        outgoing states before delivered and the unread index the incoming states before
        read."""
        outbox = re.findall(r"'(\w+)'", schema.OUTBOX_WHERE.split("state IN")[1])
        self.assertEqual(tuple(outbox), states_before("out", "delivered"))
        self.assertIn("direction = 'out'", schema.OUTBOX_WHERE)
        self.assertEqual(states_before("in", "read"), ("received",))


class StoreFollowsTheRuleTests(TestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="jarvis-states-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)

    async def test_every_pair(self) -> None:
        """When a stored outgoing message in each state is advanced to each state, then it
        changes exactly when the rule puts its state before the new one."""
        store = await Store.open(
            os.path.join(self.directory, "s.sqlite3"),
            reactor=reactor,
            cipher=AESGCMRowCipher(),
            index_key=os.urandom(32),
        )
        self.addCleanup(store.close)
        seen = []
        for old, new in itertools.product(OUTGOING_STATES, repeat=2):
            message = make_message(ALICE, "out", state=old)
            await store.run(queries.add_outgoing, message, write=True)
            changed = await store.run(queries.advance_states, [message.id], new, 5.0, write=True)
            stored = await store.run(queries.get_message, message.id, write=False)
            assert stored is not None
            moved = bool(changed)
            self.assertEqual(moved, old in states_before("out", new), (old, new))
            self.assertEqual(stored.state, new if moved else old)
            seen.append(moved)
        self.assertEqual(seen.count(True), 6)


class ModelFollowsTheRuleTests(SynchronousTestCase):
    def test_every_pair(self) -> None:
        """When the UI's model gets a state report for an outgoing message in each state, then
        it takes the report exactly when the rule allows it (a late report of an earlier state
        never takes the message back)."""
        for old, new in itertools.product(OUTGOING_STATES, repeat=2):
            model = MessengerModel()
            model.load_contacts([make_contact(UID_ALICE, "alice")])
            api = {
                "id": "m1",
                "contact": UID_ALICE,
                "direction": "out",
                "body": "hello",
                "state": old,
                "created": NOW,
            }
            model.add_message(Message.from_api(api))
            model.apply_event(
                "message.stateChanged",
                {"id": "m1", "contact": UID_ALICE, "state": new, "at": NOW + 1},
            )
            shown = model.conversations[UID_ALICE].messages["m1"].state
            self.assertEqual(shown, new if may_advance("out", old, new) else old, (old, new))


class QueriesUsePublicHelpersTests(SynchronousTestCase):
    def test_no_private_reach(self) -> None:
        """When the store's queries and its batch runner are parsed, then none reads a private
        (``_name``) attribute of another object or imports a private name of the rows module:
        queries are plain functions of the cursor's public methods."""
        found = []
        for name in ("queries.py", "database.py", "group_queries.py"):
            path = os.path.join(REPO, "jarvis", "store", name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                ):
                    found.append(f"{name}:{node.lineno} .{node.attr}")
                if isinstance(node, ast.ImportFrom) and node.module == "jarvis.store.rows":
                    found += [f"{name}: import {a.name}" for a in node.names if a.name[0] == "_"]
        self.assertEqual(found, [])
