"""Hooks on an in-memory node (FakeNode) with real hook processes on the real reactor."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from jarvis.common import errors
from jarvis.exec.hooks import Hook, HookDispatcher
from jarvis.exec.runner import ProcessRunner
from jarvis.testing import FakeNode, fake_link
from tests.test_exec_runner import poll


def run_now(f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args, **kwargs)


def make_hooks(
    testcase: TestCase, node: FakeNode | None = None, **kwargs: Any
) -> tuple[HookDispatcher, FakeNode, str]:
    """An unlocked FakeNode with contacts alice and bob, a runner and a started dispatcher."""
    if node is None:
        node = FakeNode()
        node.create_identity("me", "pw", progress=lambda v: None)
        node.add_contact(link=fake_link("alice"))
        node.add_contact(link=fake_link("bob"))
    data_dir = testcase.mktemp()
    os.makedirs(data_dir)
    runner = ProcessRunner(reactor)
    runner.startService()
    testcase.addCleanup(runner.stopService)
    hooks = HookDispatcher(node, runner, data_dir, run_now, reactor, **kwargs)
    hooks.startService()
    testcase.addCleanup(hooks.stopService)
    return hooks, node, data_dir


def uid_of(node: FakeNode, name: str) -> str:
    return str(node._resolve(name)["uid"])


def sent_to(node: FakeNode, name: str) -> list[str]:
    return [m["body"] for m in node.messages_of(name) if m["direction"] == "out"]


class ReplyTests(TestCase):
    async def test_reply_hook_answers_the_contact(self) -> None:
        """When a message arrives for a reply hook, then the hook gets the event as JSON on
        stdin and JARVIS_* variables, and its output is sent back to that contact only."""
        hooks, node, _ = make_hooks(self)
        script = (
            'python3 -c "import json,sys; e=json.load(sys.stdin); '
            "print(e['event'], e['payload']['message']['body'])\"; "
            'echo "$JARVIS_CONTACT_UID $JARVIS_MESSAGE_ID $JARVIS_HOOK"'
        )
        await hooks.add(Hook("echo", ("sh", "-c", script), reply=True))
        message = node.receive("alice", "hello there")
        await poll(lambda: bool(sent_to(node, "alice")), 10)
        self.assertEqual(
            sent_to(node, "alice"),
            [f"message.received hello there\n{uid_of(node, 'alice')} {message['id']} echo"],
        )
        self.assertEqual(sent_to(node, "bob"), [])
        await poll(lambda: hooks.busy == 0, 5)
        self.assertEqual(hooks.listing()["replied"], 1)

    async def test_pattern_and_contact_filter(self) -> None:
        """When a hook names a contact and a pattern, then only that contact's matching
        messages run it."""
        hooks, node, _ = make_hooks(self)
        await hooks.add(
            Hook("up", ("echo", "up"), contact=uid_of(node, "alice"), pattern=r"^/uptime\b")
        )
        node.receive("bob", "/uptime")
        node.receive("alice", "what is /uptime")
        node.receive("alice", "/uptime please")
        await poll(lambda: hooks.ran == 1 and hooks.busy == 0, 10)
        self.assertEqual(hooks.listing()["hooks"][0]["ran"], 1)

    async def test_locked_identity_runs_nothing(self) -> None:
        """When the identity is locked, then events do not run hooks (counted as skipped)."""
        hooks, node, _ = make_hooks(self)
        await hooks.add(Hook("echo", ("echo", "hi"), reply=True))
        node.locked = True
        node.emit("message.received", {"message": {"contact": "x" * 52, "body": "hi", "id": "m"}})
        self.assertEqual((hooks.ran, hooks.skipped_locked), (0, 1))
        self.assertEqual(hooks.runner.listing()["started_total"], 0)

    async def test_failing_hook_is_counted_and_sends_nothing(self) -> None:
        """When a reply hook exits non-zero, then nothing is sent and the failure is counted."""
        hooks, node, _ = make_hooks(self)
        await hooks.add(Hook("bad", ("sh", "-c", "echo oops; exit 2"), reply=True))
        node.receive("alice", "hi")
        await poll(lambda: hooks.failed == 1 and hooks.busy == 0, 10)
        self.assertEqual(sent_to(node, "alice"), [])
        self.assertEqual([m["body"] for m in node.messages_of("alice")], ["hi"])


class FloodTests(TestCase):
    timeout = 120

    async def test_flood_bounded_by_cap_queue_and_rate(self) -> None:
        """When a contact sends 2,000 messages at once to a hooked conversation, then at most
        the hook cap of processes run at any moment, every event beyond the queue or the rate
        is dropped and counted (ran + dropped = 2,000), and every message is kept in order."""
        hooks, node, _ = make_hooks(self, limit=2, max_queue=16)
        await hooks.add(Hook("slow", ("sh", "-c", "cat >/dev/null; echo ok"), rate=600))
        peaks: list[int] = []
        original = hooks._run

        def watched(*args: Any) -> None:
            original(*args)
            peaks.append(hooks.busy)

        hooks._run = watched  # type: ignore[method-assign]
        for i in range(2000):
            node.receive("alice", f"m{i}")
        await poll(lambda: hooks.busy == 0 and hooks.listing()["queued"] == 0, 60)
        figures = hooks.listing()
        self.assertLessEqual(max(peaks), 2)
        self.assertLessEqual(figures["peak_running"], 2)
        self.assertEqual(figures["ran"] + figures["dropped_rate"] + figures["dropped_queue"], 2000)
        # the bucket holds one minute's worth: 600 at most ran, the rest dropped
        self.assertLessEqual(figures["ran"], 600)
        self.assertGreater(figures["dropped_queue"], 0)
        bodies = [m["body"] for m in node.messages_of("alice")]
        self.assertEqual(bodies, [f"m{i}" for i in range(2000)])


class StorageTests(TestCase):
    async def test_hooks_stored_private_and_reloaded(self) -> None:
        """When hooks are added and removed, then hooks.json is 0600 and a new dispatcher
        loads exactly the hooks left."""
        hooks, node, data_dir = make_hooks(self)
        await hooks.add(Hook("a", ("echo", "a"), reply=True, pattern="x"))
        await hooks.add(Hook("b", ("echo", "b")))
        await hooks.remove("b")
        path = os.path.join(data_dir, "hooks.json")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual([h["name"] for h in json.load(f)], ["a"])
        again = HookDispatcher(node, hooks.runner, data_dir, run_now, reactor)
        again.load()
        expected = Hook("a", ("echo", "a"), reply=True, pattern="x")
        self.assertEqual(list(again.hooks.values()), [expected])

    def test_bad_hooks_refused(self) -> None:
        """When a hook has a bad name, event, pattern or a reply on a non-message event, then
        it is refused."""
        for hook in (
            Hook("bad name", ("echo",)),
            Hook("x", ("echo",), event="identity.unlocked"),
            Hook("x", ("echo",), pattern="("),
            Hook("x", ("echo",), event="peer.statusChanged", reply=True),
            Hook("x", ()),
        ):
            self.assertRaises(errors.InvalidInput, hook.check)
