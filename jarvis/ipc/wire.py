"""Sending lines on a local API connection: bounded, with the transport's own flow control.

A client that subscribes to events and stops reading (``jarvis watch | less``, a suspended UI)
must not make the daemon buffer every event.  :class:`LineSender` is each server connection's
write path: it counts the bytes written but not yet flushed to the client and, past
:data:`MAX_PENDING_OUTPUT`, gives up on the connection (the server then sends ``$/lagged`` and
closes it; the client reconnects and reloads its state).

It uses only the consumer/producer API of the transport (``registerProducer``):

- on a plain socket transport (TCP or UNIX, no TLS) it is a **pull** producer: the transport
  calls ``resumeProducing()`` each time its buffer is empty, so the sender knows exactly what
  the transport still holds (what it handed over since the last call) and keeps everything
  beyond a window of :data:`WINDOW` bytes in its own queue, which it hands over in one write at
  the next call;
- on any other transport (TLS, test transports) it is a **streaming** (push) producer: lines
  are written through until the transport calls ``pauseProducing()`` (its buffer is full) and
  queued until ``resumeProducing()``.

The queue is counted in bytes and bounded; replies to calls count against the bound as events
do.  A line is always accepted when nothing is buffered (one reply may be larger than the bound:
a client that reads gets it).

Latency: Twisted's ``transport.write`` only buffers; the bytes leave on the next reactor turn,
after the reactor registered the socket for writing and the selector reported it writable.  For
a small line on an idle connection that costs a loop iteration and two selector updates on each
side of a round trip.  So on a socket transport that the sender knows to be empty, the **first**
line of a reactor turn is sent at once on the transport's socket (``getHandle().send``; what the
socket does not take goes to ``transport.write``, which keeps the order and reports errors);
later lines of the same turn leave together in one ``send`` when the reactor flushes (one
system call per line had been the largest single cost of sending a message through the API).

This module must not import the global reactor.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPullProducer, IPushProducer, ISSLTransport
from zope.interface import implementer

from jarvis.runtime.turn import OncePerTurn

__all__ = ["MAX_PENDING_OUTPUT", "WINDOW", "LineSender", "send_line"]

#: The most bytes a connection may hold for its client (written but not yet flushed), in
#: bytes.  Past it the client is told ``$/lagged`` and disconnected.
MAX_PENDING_OUTPUT = 8 * 1024 * 1024

#: On socket transports, the bytes handed to the transport before later lines wait in the
#: sender's queue for the transport to empty (Twisted's own ``bufferSize``).
WINDOW = 64 * 1024


def send_line(transport: Any, data: bytes) -> None:
    """Write *data* to *transport* (``transport.write``; kept for the clients' write path)."""
    transport.write(data)


@implementer(IPushProducer, IPullProducer)
class LineSender:
    """The bounded write path of one connection (see the module docstring).

    :param transport: the connection's transport; the sender registers itself as its producer.
    :param clock: an ``IReactorTime`` (marks the end of a reactor turn with ``callLater(0)``).
    :param limit: the most bytes held for the client (:data:`MAX_PENDING_OUTPUT`).
    :param overflowed: called once, with the number of lines dropped, when a line would take
        the bytes held beyond *limit*; the queue is dropped and later lines are refused.
    """

    def __init__(
        self,
        transport: Any,
        clock: Any,
        *,
        limit: int = MAX_PENDING_OUTPUT,
        overflowed: Callable[[int], None],
    ) -> None:
        self._transport = transport
        self._clock = clock
        self.limit = limit
        self._overflowed = overflowed
        self._queue: deque[bytes] = deque()
        #: bytes in the queue (not yet handed to the transport)
        self.queued = 0
        #: bytes handed to the transport since it was last empty (pull mode only)
        self.handed = 0
        #: whether the transport asked to stop (push mode only)
        self.paused = False
        #: whether the sender overflowed or its connection was closed (nothing more is sent)
        self.closed = False
        self._direct_used = False
        self._turn_ended = OncePerTurn(clock, self._next_turn)
        self._registered = True
        self._socket: socket.socket | None = None
        self.pull = isinstance(transport, FileDescriptor) and not ISSLTransport.providedBy(
            transport
        )
        if self.pull:
            handle = transport.getHandle()
            if isinstance(handle, socket.socket):
                self._socket = handle
        transport.registerProducer(self, not self.pull)

    @property
    def buffered(self) -> int:
        """Bytes held for the client: queued here, and (on a socket transport) handed to the
        transport since it was last empty; on other transports its own buffer (at most about
        :data:`WINDOW` bytes and one line) is not counted."""
        return self.queued + self.handed

    def send(self, line: bytes) -> bool:
        """Send *line* after every earlier one.

        :returns: ``False`` when the line was dropped: the sender overflowed (now or before).
        """
        if self.closed:
            return False
        if not self._queue:
            if self.pull:
                if self.handed < WINDOW:
                    self._hand(line)
                    return True
            elif not self.paused:
                self._transport.write(line)
                return True
        if self.buffered and self.buffered + len(line) > self.limit:
            self._overflow()
            return False
        self._queue.append(line)
        self.queued += len(line)
        return True

    def _hand(self, data: bytes) -> None:
        if self.handed == 0 and not self._direct_used and self._socket is not None:
            # The transport is empty (it said so): the first line of this turn goes out now.
            self._direct_used = True
            self._turn_ended.request()
            try:
                sent = self._socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the transport's own write reports the error as usual
            if sent >= len(data):
                return
            data = data[sent:]
        self.handed += len(data)
        self._transport.write(data)

    def _next_turn(self) -> None:
        self._direct_used = False

    def _overflow(self) -> None:
        dropped = len(self._queue) + 1
        self._queue.clear()
        self.queued = 0
        self.closed = True
        self._overflowed(dropped)

    def write_last(self, line: bytes) -> None:
        """Write *line* after what the transport holds, past the bound (the final notice)."""
        self._transport.write(line)

    def close(self) -> None:
        """Stop sending: drop the queue, unregister from the transport and close it once it has
        written what it holds (an unread client may be aborted by the caller later)."""
        self.closed = True
        self._queue.clear()
        self.queued = 0
        self._release()
        self._transport.loseConnection()

    def _release(self) -> None:
        if self._registered:
            self._registered = False
            self._transport.unregisterProducer()

    # IPushProducer / IPullProducer (called by the transport) -----------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full (push mode): queue lines until it resumes us."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The transport's buffer is empty (pull mode) or below its limit (push mode): hand
        it the queue."""
        self.paused = False
        if self.pull:
            self.handed = 0
            if self._transport.disconnecting:
                # Someone closed the transport: it waits for its producer to go away.
                self.stopProducing()
                self._transport.unregisterProducer()
                return
            if self._queue:
                chunk = b"".join(self._queue)
                self._queue.clear()
                self.queued = 0
                self._hand(chunk)
            return
        while self._queue and not self.paused:
            line = self._queue.popleft()
            self.queued -= len(line)
            self._transport.write(line)

    def stopProducing(self) -> None:
        """The connection is gone: drop what waits."""
        self._registered = False
        self.closed = True
        self._queue.clear()
        self.queued = 0
