"""Tests for :mod:`jarvis.core.backoff`: one password back-off, shared and kept across restarts.

The unit tests drive :class:`PasswordBackoff` on a ``task.Clock``; the node tests use the real
node (key file, Argon2id with small parameters, SQLite) from ``tests/test_node.py``, and the API
test goes through the real registry, its one-at-a-time ``identity`` group and error mapping.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.core.backoff import (
    BACKOFF_FILE,
    MAX_DELAY,
    PasswordBackoff,
    TooManyAttempts,
    delay_after,
)
from jarvis.crypto.errors import WrongPassword
from jarvis.ipc import jsonrpc
from jarvis.ipc.methods import DaemonInfo, MethodContext, build_registry
from tests.test_node import make_node


def run_now(fn: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    """A ``run_blocking`` that runs at once (the unit tests own no thread pool)."""
    return defer.maybeDeferred(fn, *args, **kwargs)


def make_backoff(testcase: SynchronousTestCase, data_dir: str | None = None) -> Any:
    """Return a loaded back-off on a fresh (or given) directory, and its clock."""
    if data_dir is None:
        data_dir = testcase.mktemp()
        os.makedirs(data_dir, mode=0o700)
    clock = Clock()
    backoff = PasswordBackoff(data_dir, seconds=clock.seconds, run_blocking=run_now)
    backoff.load()
    return backoff, clock


class ScheduleTests(SynchronousTestCase):
    def test_schedule(self) -> None:
        """When wrong passwords accumulate, then two are free, then the wait doubles from 1 s
        up to the maximum."""
        self.assertEqual([delay_after(n) for n in range(0, 4)], [0, 0, 1, 2])
        self.assertEqual(delay_after(100), MAX_DELAY)

    def test_refused_during_wait_then_reset(self) -> None:
        """When the wait runs, then check() raises TooManyAttempts with the whole seconds left;
        when it is over the attempt is allowed, and a success resets the count."""
        backoff, clock = make_backoff(self)
        for _ in range(3):
            backoff.failed()
        with self.assertRaises(TooManyAttempts) as cm:
            backoff.check()
        self.assertEqual(cm.exception.retry_after, 2)
        self.assertEqual(cm.exception.data, {"retry_after": 2})
        self.assertIn("retry in 2 s", str(cm.exception))
        clock.advance(1.5)
        with self.assertRaises(TooManyAttempts) as cm:
            backoff.check()
        self.assertEqual(cm.exception.retry_after, 1)
        clock.advance(0.5)
        backoff.check()
        backoff.succeeded()
        self.assertEqual(backoff.failures, 0)
        self.assertFalse(os.path.exists(backoff.path))


class PersistenceTests(SynchronousTestCase):
    def test_saved_private_and_reloaded(self) -> None:
        """When a wrong password is counted, then a 0600 file holds the count and the end of the
        wait, and a new back-off on the same directory (a restart) refuses until then."""
        backoff, _clock = make_backoff(self)
        backoff.failed()
        backoff.failed()
        self.assertEqual(stat.S_IMODE(os.stat(backoff.path).st_mode), 0o600)
        with open(backoff.path) as f:
            self.assertEqual(json.load(f), {"failures": 2, "not_before": 1.0})
        again, clock2 = make_backoff(self, os.path.dirname(backoff.path))
        self.assertEqual(again.failures, 2)
        self.assertRaises(TooManyAttempts, again.check)
        clock2.advance(1.0)
        again.check()
        again.failed()  # the count goes on from 2
        self.assertEqual(again.retry_after(), 2.0)

    def test_planted_link_not_followed(self) -> None:
        """When another process planted symbolic links at the names a temporary file of the
        back-off could take (the old ``password.backoff.tmp<pid>``), then counting a wrong
        password writes through none of them: their targets keep their content."""
        directory = self.mktemp()
        os.makedirs(directory)
        target = os.path.join(directory, "identity.key")
        with open(target, "w") as f:
            f.write("keep")
        path = os.path.join(directory, BACKOFF_FILE)
        os.symlink(target, f"{path}.tmp{os.getpid()}")
        backoff, _clock = make_backoff(self, directory)
        backoff.failed()
        with open(target) as f:
            self.assertEqual(f.read(), "keep")
        self.assertFalse(os.path.islink(path))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_clock_set_back_and_damaged_file(self) -> None:
        """When the saved wait ends far in the future (the clock was set back), then it is cut
        to the maximum from now; when the file is damaged, then there is no back-off."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, BACKOFF_FILE)
        with open(path, "w") as f:
            json.dump({"failures": 9, "not_before": 1e12}, f)
        backoff, _clock = make_backoff(self, directory)
        self.assertEqual(backoff.retry_after(), MAX_DELAY)
        with open(path, "w") as f:
            f.write("{not json")
        backoff, _clock = make_backoff(self, directory)
        self.assertEqual((backoff.failures, backoff.retry_after()), (0, 0.0))


class NodeBackoffTests(TestCase):
    """The real node: every password check shares the back-off (issue 13)."""

    async def test_methods_share_the_counter(self) -> None:
        """When wrong passwords go to changePassword and account.delete, then the next attempt
        of any of the three methods is refused at once, even with the right password, and
        nothing changes; after the wait the right password unlocks."""
        node, clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        with open(node.keyfile_path, "rb") as f:
            key_before = f.read()
        with self.assertRaises(WrongPassword):
            await node.change_password("guess 1", "new")
        with self.assertRaises(WrongPassword):
            await node.delete_account("guess 2")
        for attempt in (
            node.change_password("pw", "new"),
            node.delete_account("pw"),
        ):
            refused = self.failureResultOf(attempt, TooManyAttempts)  # at once: no KDF ran
            self.assertEqual(refused.value.retry_after, 1)
        await node.lock()
        self.failureResultOf(node.unlock("pw"), TooManyAttempts)
        with open(node.keyfile_path, "rb") as f:
            self.assertEqual(f.read(), key_before)
        self.assertTrue(node.has_identity)
        clock.advance(1.0)
        with self.assertRaises(WrongPassword):
            await node.unlock("guess 3")
        self.assertEqual(node.unlock_delay(), 2.0)  # the third wrong one, whichever method
        clock.advance(2.0)
        result = await node.unlock("pw")
        self.assertEqual(result["name"], "Alice")
        self.assertFalse(os.path.exists(os.path.join(node.data_dir, BACKOFF_FILE)))

    async def test_restart_keeps_the_wait(self) -> None:
        """When wrong passwords were given and the node is replaced by a new one over the same
        data directory (a daemon restart), then the new one refuses at once until the wait is
        over, then the right password unlocks."""
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        await node.lock(wipe=True)
        for guess in ("a", "b"):
            with self.assertRaises(WrongPassword):
                await node.unlock(guess)
        _clock.advance(1.0)
        with self.assertRaises(WrongPassword):
            await node.unlock("c")
        waited = _clock.seconds()
        await node.stopService()

        restarted, clock, _events = make_node(self, node.data_dir)
        clock.advance(waited)  # the same wall clock as before the restart
        refused = self.failureResultOf(restarted.unlock("pw"), TooManyAttempts)
        self.assertEqual(refused.value.retry_after, 2)
        clock.advance(2.0)
        result = await restarted.unlock("pw")
        self.assertEqual(result["name"], "Alice")

    async def test_api_answers_at_once_with_retry_after(self) -> None:
        """When a guesser has many unlock calls queued in the API's one-at-a-time identity group
        and the wait starts, then every later call (the owner's too) is answered -32015 with
        data.retry_after without running the KDF, so the owner is not stuck behind them; after
        the wait the owner's unlock succeeds."""
        node, clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        await node.lock(wipe=True)
        registry = build_registry()
        ctx = MethodContext(
            node=node,
            clock=clock,
            info=DaemonInfo(os.getpid(), "0.1.0", node.data_dir, "unix:/tmp/x.sock"),
            stop_daemon=lambda: None,
        )
        guesses = [
            registry.call("identity.unlock", {"password": f"guess {i}"}, ctx) for i in range(50)
        ]
        owner = registry.call("identity.unlock", {"password": "pw"}, ctx)
        results = await defer.DeferredList([*guesses, owner], consumeErrors=True)
        codes = [outcome.value.code for ok, outcome in results if not ok]  # type: ignore[union-attr]
        self.assertEqual(codes[:2], [jsonrpc.WRONG_PASSWORD] * 2)
        self.assertEqual(set(codes[2:]), {jsonrpc.TOO_MANY_ATTEMPTS})
        self.assertEqual(len(codes), 51)  # the owner's call too, answered, not queued
        error = results[-1][1].value  # type: ignore[union-attr]
        self.assertEqual(error.data, {"retry_after": 1, "kind": "too_many_attempts"})
        self.assertIn("retry in 1 s", error.message)
        self.assertEqual(clock.seconds(), 0.0)  # nobody waited on the clock
        clock.advance(1.0)
        unlocked = await registry.call("identity.unlock", {"password": "pw"}, ctx)
        self.assertEqual(unlocked["name"], "Alice")
