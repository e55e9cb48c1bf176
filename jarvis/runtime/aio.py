"""The one bridge between asyncio code and Twisted code.

Jarvis runs on ``asyncioreactor``, so asyncio coroutines and Twisted Deferreds share one event
loop.  This module converts between them and carries cancellation both ways; nothing else in
Jarvis should call ``Deferred.fromFuture`` or ``asFuture`` directly.  It never installs a reactor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def deferred_from_coroutine(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run an asyncio coroutine on the running loop and return a Deferred for its result.

    Cancelling the Deferred cancels the asyncio task; the Deferred then fails with Twisted's
    :class:`~twisted.internet.defer.CancelledError` (never ``asyncio.CancelledError``, which is a
    ``BaseException`` and would escape error handling).  A task cancelled from the asyncio side
    fails the Deferred the same way.

    :param coro: the coroutine; it may await asyncio futures and Deferreds wrapped by
        :func:`awaitable_from_deferred`.
    :returns: a Deferred that fires with the coroutine's result.
    """
    future = asyncio.ensure_future(coro)
    d: Deferred[T] = Deferred.fromFuture(future)

    def translate(failure: Failure) -> Failure:
        if failure.check(asyncio.CancelledError):
            return Failure(CancelledError())
        return failure

    return d.addErrback(translate)


def awaitable_from_deferred(d: Deferred[T]) -> asyncio.Future[T]:
    """Return an asyncio future for *d*, usable with ``await`` in asyncio code.

    Cancelling the future (for example because the awaiting task is cancelled) cancels *d*, and a
    cancelled *d* cancels the future.
    """
    loop = asyncio.get_event_loop()
    return d.asFuture(loop)
