"""Tests for jarvis.ipc.registry and jarvis.ipc.methods, on a task.Clock and a FakeNode."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.common.errors import NotFound
from jarvis.ipc import jsonrpc
from jarvis.ipc.methods import DaemonInfo, MethodContext, build_registry
from jarvis.ipc.registry import (
    ConcurrencyGroup,
    DeadlineTimer,
    Invocation,
    MethodSpec,
    Param,
    Registry,
)
from jarvis.testing import FakeNode, fake_link


def make_context(node: FakeNode | None = None) -> tuple[MethodContext, task.Clock, list[str]]:
    """Return a method context on a FakeNode and a Clock, and the list stop_daemon appends to."""
    clock = task.Clock()
    stops: list[str] = []
    ctx = MethodContext(
        node=node or FakeNode(),
        clock=clock,
        info=DaemonInfo(1234, "0.1.0", "/tmp/data", "unix:/tmp/s.sock"),
        stop_daemon=lambda: stops.append("stop"),
        pool_stats={"store": lambda: {"size": 1}},
    )
    return ctx, clock, stops


def unlocked_node() -> FakeNode:
    """Return a FakeNode with an unlocked identity and one contact, alice."""
    node = FakeNode()
    node.create_identity("me", "pw", progress=lambda v: None)
    node.add_contact(link=fake_link("alice"))
    return node


class ValidationTests(SynchronousTestCase):
    """Params are checked before anything runs."""

    def setUp(self) -> None:
        self.node = unlocked_node()
        self.ctx, self.clock, _ = make_context(self.node)
        self.registry = build_registry()

    def error_of(self, method: str, params: dict[str, Any]) -> jsonrpc.RpcError:
        d = self.registry.call(method, params, self.ctx)
        return self.failureResultOf(d, jsonrpc.RpcError).value  # type: ignore[return-value]

    def test_unknown_method(self) -> None:
        """When the method does not exist, then the error is -32601 naming it."""
        error = self.error_of("nope.nothing", {})
        self.assertEqual(error.code, jsonrpc.METHOD_NOT_FOUND)
        self.assertIn("nope.nothing", error.message)

    def test_missing_field(self) -> None:
        """When a required param is missing, then -32602 names it and the node is not called."""
        calls = len(self.node.calls)
        error = self.error_of("messages.send", {"contact": "alice"})
        self.assertEqual((error.code, error.data["field"]), (jsonrpc.INVALID_PARAMS, "text"))
        self.assertIn("text", error.message)
        self.assertEqual(len(self.node.calls), calls)

    def test_wrong_type(self) -> None:
        """When a param has the wrong type (bool for int too), then -32602 names it."""
        error = self.error_of("messages.history", {"contact": "alice", "limit": True})
        self.assertEqual(error.data["field"], "limit")
        error = self.error_of("messages.history", {"contact": "alice", "limit": 0})
        self.assertIn("between", error.message)

    def test_unknown_field(self) -> None:
        """When an unknown param is given, then it is refused, naming it."""
        error = self.error_of("contacts.list", {"verbose": True})
        self.assertEqual((error.code, error.data["field"]), (jsonrpc.INVALID_PARAMS, "verbose"))

    def test_link_or_card(self) -> None:
        """When contacts.add gets both link and card, then it is refused."""
        error = self.error_of("contacts.add", {"link": "jarvis://x", "card": "{}"})
        self.assertEqual(error.code, jsonrpc.INVALID_PARAMS)


class LockTests(SynchronousTestCase):
    """A locked daemon answers only daemon.*, identity.create/unlock and events.subscribe."""

    def test_locked(self) -> None:
        """When the identity is locked, then contacts.list fails with -32001 and
        daemon.status still answers."""
        node = unlocked_node()
        node.lock()
        ctx, _, _ = make_context(node)
        registry = build_registry()
        error = self.failureResultOf(registry.call("contacts.list", {}, ctx)).value
        self.assertEqual(error.code, jsonrpc.LOCKED)  # type: ignore[union-attr]
        status = self.successResultOf(registry.call("daemon.status", {}, ctx))
        self.assertTrue(status["locked"])

    def test_no_identity(self) -> None:
        """When no identity exists, then identity.show fails with -32007."""
        ctx, _, _ = make_context()
        error = self.failureResultOf(build_registry().call("identity.show", {}, ctx)).value
        self.assertEqual(error.code, jsonrpc.NO_IDENTITY)  # type: ignore[union-attr]

    def test_allowed_set(self) -> None:
        """When the registry is built, then exactly the documented methods work while locked."""
        allowed = {n for n, s in build_registry().methods.items() if not s.needs_unlocked}
        self.assertEqual(
            allowed,
            {
                "daemon.status",
                "daemon.stop",
                "identity.create",
                "identity.unlock",
                "events.subscribe",
                # creates the identity from an export, like identity.create from scratch
                "account.import",
            },
        )

    def test_wrong_password(self) -> None:
        """When unlock gets a wrong password, then the error is -32002 and it stays locked."""
        node = unlocked_node()
        node.lock()
        ctx, _, _ = make_context(node)
        d = build_registry().call("identity.unlock", {"password": "bad"}, ctx)
        self.assertEqual(self.failureResultOf(d).value.code, jsonrpc.WRONG_PASSWORD)  # type: ignore[union-attr]
        self.assertTrue(node.locked)


class DeadlineTests(SynchronousTestCase):
    """Deadlines run on the injected clock."""

    def test_timed_out(self) -> None:
        """When the deadline passes, then the caller gets -32004 and the work was cancelled."""
        node = unlocked_node()
        paused = node.pause("send_message")
        ctx, clock, _ = make_context(node)
        registry = build_registry()
        d = registry.call("messages.send", {"contact": "alice", "text": "hi"}, ctx)
        self.assertNoResult(d)
        self.assertEqual(len(registry.in_flight(clock.seconds())), 1)
        clock.advance(29.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        error = self.failureResultOf(d, jsonrpc.RpcError).value
        self.assertEqual(error.code, jsonrpc.TIMED_OUT)  # type: ignore[union-attr]
        self.assertEqual(paused.cancelled, 1)
        self.assertEqual(node.messages_of("alice"), [])
        self.assertEqual(registry.in_flight(clock.seconds()), [])


class DeadlineTimerTests(SynchronousTestCase):
    """Many deadlines share one delayed call and each still fires at its own time."""

    def test_each_at_its_time(self) -> None:
        """When deadlines are added out of order, then each expires at its time and only one
        delayed call is ever pending."""
        clock = task.Clock()
        timer = DeadlineTimer(clock)
        fired: list[str] = []
        timer.add(10, lambda: fired.append("ten"))
        timer.add(5, lambda: fired.append("five"))
        timer.add(7, lambda: fired.append("seven"))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(4.9)
        self.assertEqual(fired, [])
        clock.advance(0.2)
        self.assertEqual(fired, ["five"])
        clock.advance(2)
        self.assertEqual(fired, ["five", "seven"])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(3)
        self.assertEqual(fired, ["five", "seven", "ten"])
        self.assertEqual((clock.getDelayedCalls(), len(timer)), ([], 0))

    def test_discarded(self) -> None:
        """When entries are discarded, then they never fire, and once none is pending no
        delayed call remains."""
        clock = task.Clock()
        timer = DeadlineTimer(clock)
        fired: list[int] = []
        first = timer.add(1, lambda: fired.append(1))
        second = timer.add(2, lambda: fired.append(2))
        timer.discard(first)
        timer.discard(first)
        self.assertEqual(len(timer), 1)
        clock.advance(1.5)
        self.assertEqual(fired, [])
        timer.discard(second)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(5)
        self.assertEqual(fired, [])

    def test_compacts(self) -> None:
        """When most entries are discarded, then the heap shrinks to the live ones."""
        clock = task.Clock()
        timer = DeadlineTimer(clock)
        keep = timer.add(100, lambda: None)
        entries = [timer.add(10, lambda: None) for _ in range(DeadlineTimer.COMPACT_AFTER * 2)]
        for entry in entries:
            timer.discard(entry)
        self.assertLessEqual(len(timer._heap), DeadlineTimer.COMPACT_AFTER + 1)
        self.assertEqual(len(timer), 1)
        timer.discard(keep)
        self.assertEqual(clock.getDelayedCalls(), [])


class RegistryTimerTests(SynchronousTestCase):
    """The registry schedules deadlines only for calls that are still pending."""

    def test_synchronous_answer(self) -> None:
        """When a method answers synchronously, then no delayed call is left on the clock."""
        ctx, clock, _ = make_context(unlocked_node())
        self.successResultOf(build_registry().call("daemon.status", None, ctx))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_pending_then_answered(self) -> None:
        """When pending calls with different deadlines finish, then their timer is gone; when
        one of them outlives its deadline, then only that one times out."""
        gates: list[defer.Deferred[int]] = []

        def handler(inv: Invocation) -> defer.Deferred[int]:
            gate: defer.Deferred[int] = defer.Deferred()
            gates.append(gate)
            return gate

        specs = [
            MethodSpec("t.slow", handler, deadline=20.0, needs_unlocked=False),
            MethodSpec("t.fast", handler, deadline=2.0, needs_unlocked=False),
        ]
        registry = Registry(specs)
        ctx, clock, _ = make_context()
        slow = registry.call("t.slow", None, ctx)
        fast = registry.call("t.fast", None, ctx)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(2.1)
        error = self.failureResultOf(fast, jsonrpc.RpcError).value
        self.assertEqual(error.code, jsonrpc.TIMED_OUT)  # type: ignore[union-attr]
        self.assertIn("2 s", error.message)  # type: ignore[union-attr]
        self.assertNoResult(slow)
        gates[0].callback(7)
        self.assertEqual(self.successResultOf(slow), 7)
        self.assertEqual((clock.getDelayedCalls(), registry.in_flight(clock.seconds())), ([], []))


class CancellationTests(SynchronousTestCase):
    """Cancelling a call cancels the work."""

    def test_cancel(self) -> None:
        """When the caller cancels, then the error is -32800 and the state is unchanged."""
        node = unlocked_node()
        paused = node.pause("send_message")
        ctx, _, _ = make_context(node)
        d = build_registry().call("messages.send", {"contact": "alice", "text": "hi"}, ctx)
        d.cancel()
        error = self.failureResultOf(d, jsonrpc.RpcError).value
        self.assertEqual(error.code, jsonrpc.REQUEST_CANCELLED)  # type: ignore[union-attr]
        self.assertEqual(paused.cancelled, 1)
        paused.release()
        self.assertEqual(node.messages_of("alice"), [])


class ConcurrencyTests(SynchronousTestCase):
    """A concurrency group runs at most its limit of calls at once."""

    def test_one_at_a_time(self) -> None:
        """When two calls of a group with limit 1 arrive, then the second waits for the first,
        and cancelling a waiting call leaves the semaphore intact."""
        started: list[int] = []
        gates: list[defer.Deferred[int]] = []

        def handler(inv: Invocation) -> defer.Deferred[int]:
            started.append(inv.params["n"])
            gate: defer.Deferred[int] = defer.Deferred()
            gates.append(gate)
            return gate

        spec = MethodSpec(
            "t.run",
            handler,
            (Param("n", int, True),),
            needs_unlocked=False,
            concurrency="one",
        )
        registry = Registry([spec], [ConcurrencyGroup("one", 1)])
        ctx, _, _ = make_context()
        first = registry.call("t.run", {"n": 1}, ctx)
        second = registry.call("t.run", {"n": 2}, ctx)
        third = registry.call("t.run", {"n": 3}, ctx)
        self.assertEqual(started, [1])
        second.cancel()
        self.failureResultOf(second, jsonrpc.RpcError)
        gates[0].callback(10)
        self.assertEqual(self.successResultOf(first), 10)
        self.assertEqual(started, [1, 3])
        gates[1].callback(30)
        self.assertEqual(self.successResultOf(third), 30)


class ProgressTests(SynchronousTestCase):
    """Progress reaches the caller and daemon.status."""

    def test_progress(self) -> None:
        """When identity.create reports progress, then the callback sees each value."""
        ctx, _, _ = make_context()
        seen: list[Any] = []
        d = build_registry().call(
            "identity.create", {"name": "me", "password": "pw"}, ctx, progress=seen.append
        )
        self.assertEqual(self.successResultOf(d)["name"], "me")
        self.assertEqual(seen, [{"stage": "deriving key"}, {"stage": "writing key file"}])


class MethodTests(SynchronousTestCase):
    """The methods are thin calls into the node."""

    def setUp(self) -> None:
        self.node = unlocked_node()
        self.ctx, self.clock, self.stops = make_context(self.node)
        self.registry = build_registry()

    def call(self, method: str, **params: Any) -> Any:
        return self.successResultOf(self.registry.call(method, params, self.ctx))

    def test_status(self) -> None:
        """When daemon.status is called, then it reports pid, version, identity and pools."""
        status = self.call("daemon.status")
        self.assertEqual(
            (status["pid"], status["version"], status["locked"], status["pools"]),
            (1234, "0.1.0", False, {"store": {"size": 1}}),
        )
        self.assertEqual(status["in_flight"][0]["method"], "daemon.status")

    def test_stop(self) -> None:
        """When daemon.stop is called, then it answers first and stops the daemon shortly."""
        self.assertTrue(self.call("daemon.stop")["stopping"])
        self.assertEqual(self.stops, [])
        self.clock.advance(1)
        self.assertEqual(self.stops, ["stop"])

    def test_messages(self) -> None:
        """When a message is sent, then history pages it and markRead counts incoming ones."""
        sent = self.call("messages.send", contact="alice", text="hello")
        self.node.receive("alice", "hi back")
        self.assertEqual(self.call("messages.unreadCounts")["unread"][sent["contact"]], 1)
        page = self.call("messages.history", contact="alice", limit=1)
        self.assertEqual([m["body"] for m in page["messages"]], ["hi back"])
        older = self.call("messages.history", contact="alice", before=page["next"])
        self.assertEqual([m["body"] for m in older["messages"]], ["hello"])
        self.assertEqual(self.call("messages.markRead", contact="alice"), {"count": 1})

    def test_focus_on_a_contact_or_a_group(self) -> None:
        """When a client says it shows alice's conversation, then its focus is her uid; a
        group (by name), "group:" and the group's id; none, nothing; a contact and a group
        at once, or a group the node does not hold, is an error and the focus stays."""

        class Shown:
            focus: str | None = None

            def subscribe_events(self, names: Any = None) -> None:
                pass

        class Group:
            group_id = bytes.fromhex("ab" * 16)

        class Groups:
            def resolve(self, ref: str) -> Group:
                if ref != "team":
                    raise NotFound(f"no group {ref!r}")
                return Group()

        self.node.groups = Groups()  # type: ignore[attr-defined]
        session = Shown()

        def focus(**params: Any) -> defer.Deferred[Any]:
            return self.registry.call("ui.focus", params, self.ctx, session=session)

        alice = self.successResultOf(focus(contact="alice"))["focus"]
        self.assertEqual(session.focus, alice)
        self.assertEqual(self.successResultOf(focus(group="team")), {"focus": "group:" + "ab" * 16})
        self.assertEqual(session.focus, "group:" + "ab" * 16)
        for params in ({"contact": "alice", "group": "team"}, {"group": "other"}):
            self.failureResultOf(focus(**params))
            self.assertEqual(session.focus, "group:" + "ab" * 16)
        self.assertEqual(self.successResultOf(focus(group=None)), {"focus": None})

    def test_too_large(self) -> None:
        """When a message is over 64 KiB, then the error is -32005."""
        d = self.registry.call("messages.send", {"contact": "alice", "text": "x" * 70000}, self.ctx)
        self.assertEqual(self.failureResultOf(d).value.code, jsonrpc.TOO_LARGE)  # type: ignore[union-attr]

    def test_contacts(self) -> None:
        """When contacts are updated and removed, then list reflects it."""
        self.assertEqual(self.call("contacts.update", contact="alice", muted=True)["muted"], True)
        self.assertEqual(len(self.call("contacts.list")["contacts"]), 1)
        self.call("contacts.remove", contact="alice")
        self.assertEqual(self.call("contacts.list"), {"contacts": []})
        d = self.registry.call("contacts.show", {"contact": "alice"}, self.ctx)
        self.assertEqual(self.failureResultOf(d).value.code, jsonrpc.NOT_FOUND)  # type: ignore[union-attr]


class DocsTests(SynchronousTestCase):
    """docs/ipc.md is generated from the registry."""

    def test_docs_current(self) -> None:
        """When docs/ipc.md is compared with the generator's output, then they are equal
        (regenerate with: python -m jarvis.ipc.docgen > docs/ipc.md)."""
        import os

        from jarvis.ipc import docgen

        path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "ipc.md")
        with open(path, encoding="utf-8") as f:
            committed = f.read()
        self.assertEqual(
            committed, docgen.render(), "docs/ipc.md is stale: python -m jarvis.ipc.docgen"
        )

    def test_every_method_documented(self) -> None:
        """When the docs are rendered, then every method and error code appears."""
        from jarvis.ipc import docgen

        text = docgen.render()
        for name in build_registry().methods:
            self.assertIn(f"### `{name}`", text)
        for entry in jsonrpc.ERROR_CODES:
            self.assertIn(f"| {entry.code} |", text)


class RealNodeMethodTests(TestCase):
    """Methods in front of a real Node (key file, SQLite store), as the daemon serves them."""

    def context(self) -> tuple[MethodContext, Any, Any]:
        from tests.test_node import make_node

        node, clock, _ = make_node(self)
        ctx, _, _ = make_context(node)
        return ctx, node, clock

    async def test_create_name_with_control_character(self) -> None:
        """When identity.create gets a name with a control character, then the answer is
        -32602 naming the field and the character (not -32603), and no identity is made."""
        ctx, node, _ = self.context()
        with self.assertRaises(jsonrpc.RpcError) as caught:
            await build_registry().call(
                "identity.create", {"name": "Eve\x07il", "password": "pw"}, ctx
            )
        error = caught.exception
        self.assertEqual((error.code, error.data["field"]), (jsonrpc.INVALID_PARAMS, "name"))
        self.assertIn("U+0007", error.message)
        self.assertFalse(node.has_identity)

    async def test_history_by_message_id(self) -> None:
        """When messages.history gets a message id as before or after, then it pages back
        from it or forward from it (the oldest newer ones first, with a newer cursor); an id
        of no message in the conversation is not_found."""
        from tests.test_node import friend_link, turned

        ctx, node, clock = self.context()
        await node.create_identity("Alice", "pw")
        await node.add_contact(link=friend_link()[1])
        sent = await turned(
            clock, defer.gatherResults([node.send_message("Bob", f"m{i}") for i in range(250)])
        )
        ids = [m["id"] for m in sorted(sent, key=lambda m: m["seq"])]
        registry = build_registry()

        async def page(**params: Any) -> Any:
            return await registry.call("messages.history", {"contact": "Bob", **params}, ctx)

        older = await page(before=ids[100], limit=30)
        self.assertEqual([m["id"] for m in older["messages"]], ids[70:100][::-1])
        self.assertIsNone(older["newer"])
        newer = await page(after=ids[100], limit=100)
        self.assertEqual([m["id"] for m in newer["messages"]], ids[101:201][::-1])
        self.assertIsNone(newer["next"])
        rest = await page(after=newer["newer"], limit=100)
        self.assertEqual([m["id"] for m in rest["messages"]], ids[201:][::-1])
        self.assertIsNone(rest["newer"])
        with self.assertRaises(jsonrpc.RpcError) as caught:
            await page(after="0" * 32)
        self.assertEqual(caught.exception.code, jsonrpc.NOT_FOUND)
