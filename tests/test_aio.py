"""Tests for :mod:`jarvis.runtime.aio`, the asyncio <-> Twisted bridge."""

from __future__ import annotations

import asyncio

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import TestCase

from jarvis.runtime import aio


class CoroutineToDeferredTests(TestCase):
    def test_result(self) -> Deferred[None]:
        """When a coroutine awaits an asyncio sleep and returns, then the Deferred fires with it."""

        async def work() -> int:
            await asyncio.sleep(0.001)
            return 42

        d = aio.deferred_from_coroutine(work())
        d.addCallback(self.assertEqual, 42)
        return d

    def test_exception(self) -> Deferred[None]:
        """When the coroutine raises, then the Deferred fails with that exception."""

        async def work() -> None:
            await asyncio.sleep(0)
            raise ValueError("boom")

        return self.assertFailure(aio.deferred_from_coroutine(work()), ValueError)

    async def test_cancel_deferred_cancels_task(self) -> None:
        """When the Deferred is cancelled, then the task sees CancelledError and the Deferred
        fails with Twisted's CancelledError."""
        seen: list[str] = []
        started: Deferred[None] = Deferred()

        async def work() -> None:
            started.callback(None)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        d = aio.deferred_from_coroutine(work())
        await started
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        # the task runs its except clause on the next loop iteration
        await deferLater(0.01)
        self.assertEqual(seen, ["cancelled"])


class DeferredToAwaitableTests(TestCase):
    def test_await_deferred(self) -> Deferred[None]:
        """When asyncio code awaits a Deferred through the bridge, then it gets its result."""
        source: Deferred[str] = Deferred()

        async def work() -> str:
            return await aio.awaitable_from_deferred(source)

        d = aio.deferred_from_coroutine(work())
        reactor.callLater(0, source.callback, "hello")  # type: ignore[attr-defined]
        d.addCallback(self.assertEqual, "hello")
        return d

    async def test_cancel_task_cancels_deferred(self) -> None:
        """When the awaiting asyncio task is cancelled, then the Deferred it awaits is cancelled."""
        cancelled: list[bool] = []
        source: Deferred[str] = Deferred(lambda _: cancelled.append(True))

        async def work() -> str:
            return await aio.awaitable_from_deferred(source)

        task = asyncio.ensure_future(work())
        await deferLater(0.01)
        task.cancel()
        await deferLater(0.01)
        self.assertEqual(cancelled, [True])
        self.assertTrue(task.cancelled())


def deferLater(delay: float) -> Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, delay, lambda: None)  # type: ignore[arg-type]
