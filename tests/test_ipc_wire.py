"""Tests for jarvis.ipc.wire: the bounded write path of a local API connection.

The socket transport is Twisted's real ``FileDescriptor`` write buffer over a fake socket whose
``send`` takes at most *room* bytes (the sender's direct path and the transport's own writes
share it), on a fake reactor that records which descriptors want to write.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from jarvis.ipc.wire import WINDOW, LineSender, send_line


class _Reactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.writers: set[Any] = set()

    def addWriter(self, fd: Any) -> None:
        self.writers.add(fd)

    def removeWriter(self, fd: Any) -> None:
        self.writers.discard(fd)

    def addReader(self, fd: Any) -> None:
        pass

    def removeReader(self, fd: Any) -> None:
        pass


class _Sock(socket.socket):
    """A socket that never reaches the OS: ``send`` takes at most ``room`` bytes."""

    room: int | Exception = 0
    sent: list[bytes]

    def send(self, data: Any, flags: int = 0) -> int:
        if isinstance(self.room, Exception):
            raise self.room
        taken = bytes(data[: self.room])
        if not taken:
            raise BlockingIOError()
        self.room -= len(taken)
        self.sent.append(taken)
        return len(taken)


class _Socket(FileDescriptor):
    """A socket transport whose socket takes at most *room* bytes in all."""

    def __init__(self, testcase: unittest.TestCase, room: int | Exception) -> None:
        self.fake_reactor = _Reactor()
        super().__init__(self.fake_reactor)
        self.connected = 1
        self.sock = _Sock(socket.AF_UNIX, socket.SOCK_STREAM)
        testcase.addCleanup(self.sock.close)
        self.sock.room = room
        self.sock.sent = []

    @property
    def sent(self) -> list[bytes]:
        return self.sock.sent

    def getHandle(self) -> socket.socket:
        return self.sock

    def writeSomeData(self, data: bytes) -> Any:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as e:
            return e


def make_sender(
    transport: Any, clock: Any = None, limit: int = 1 << 20
) -> tuple[LineSender, list[int]]:
    """Return a sender on *transport* and the list its overflows are recorded in."""
    overflows: list[int] = []
    if clock is None:
        clock = getattr(transport, "fake_reactor", None) or Clock()
    return LineSender(transport, clock, limit=limit, overflowed=overflows.append), overflows


class DirectPathTests(unittest.TestCase):
    """The first line of a turn on an idle socket leaves at once."""

    def test_idle_socket_sends_at_once(self) -> None:
        """When the transport is idle, then a line is sent at once and nothing is buffered."""
        fd = _Socket(self, room=100)
        sender, _ = make_sender(fd)
        sender.send(b"hello\n")
        self.assertEqual(fd.sent, [b"hello\n"])
        self.assertEqual(fd.fake_reactor.writers, set())
        self.assertEqual(sender.buffered, 0)

    def test_later_lines_of_a_turn_are_buffered_together(self) -> None:
        """When three lines are sent in one reactor turn, then the first leaves at once and the
        other two leave in one send when the reactor flushes; in the next turn a line leaves
        at once again."""
        fd = _Socket(self, room=1000)
        sender, _ = make_sender(fd)
        sender.send(b"one\n")
        sender.send(b"two\n")
        sender.send(b"three\n")
        self.assertEqual(fd.sent, [b"one\n"])
        self.assertIn(fd, fd.fake_reactor.writers)
        self.assertEqual(sender.buffered, len(b"two\nthree\n"))
        fd.doWrite()
        self.assertEqual(fd.sent, [b"one\n", b"two\nthree\n"])
        self.assertEqual(sender.buffered, 0)  # the transport said it is empty
        fd.fake_reactor.advance(0)
        sender.send(b"four\n")
        self.assertEqual(fd.sent[-1], b"four\n")

    def test_partial_send_buffers_the_rest(self) -> None:
        """When the socket takes part of the line, then the rest waits in the transport."""
        fd = _Socket(self, room=2)
        sender, _ = make_sender(fd)
        sender.send(b"hello\n")
        self.assertEqual(fd.sent, [b"he"])
        self.assertEqual(sender.buffered, 4)
        self.assertIn(fd, fd.fake_reactor.writers)
        fd.sock.room = 100
        fd.doWrite()
        self.assertEqual(b"".join(fd.sent), b"hello\n")

    def test_failed_send_is_left_to_the_reactor(self) -> None:
        """When the socket fails, then the line goes to the transport, which reports it."""
        error = ConnectionResetError("gone")
        fd = _Socket(self, room=error)
        sender, _ = make_sender(fd)
        sender.send(b"hello\n")
        self.assertIs(fd.doWrite(), error)

    def test_other_transports_get_write(self) -> None:
        """When the transport is not a socket, then lines are written through."""
        transport = StringTransport()
        sender, _ = make_sender(transport)
        sender.send(b"hello\n")
        send_line(transport, b"again\n")
        self.assertEqual(transport.value(), b"hello\nagain\n")
        self.assertTrue(transport.streaming)


class BoundTests(unittest.TestCase):
    """The bytes held for a client that stops reading are bounded."""

    def test_unread_socket_overflows_at_the_limit(self) -> None:
        """When the client reads nothing, then lines beyond the window wait in the queue, the
        bytes held never pass the limit, and the line that would pass it overflows the
        sender once (with the count of lines dropped); later lines are refused."""
        fd = _Socket(self, room=0)
        limit = 4 * WINDOW
        sender, overflows = make_sender(fd, limit=limit)
        line = b"x" * 999 + b"\n"
        accepted = 0
        while sender.send(line):
            accepted += 1
            self.assertLessEqual(sender.buffered, limit)
        self.assertEqual(accepted, limit // len(line))
        queued_lines = accepted - (WINDOW // len(line) + 1)
        self.assertEqual(overflows, [queued_lines + 1])
        self.assertEqual(sender.queued, 0)
        self.assertFalse(sender.send(line))
        self.assertEqual(len(overflows), 1)

    def test_reading_client_gets_the_queue_in_one_write(self) -> None:
        """When the transport empties after the window filled, then every queued line is
        handed to it at once, in order, and nothing is lost."""
        fd = _Socket(self, room=0)
        sender, overflows = make_sender(fd, limit=10 * WINDOW)
        lines = [b"%06d\n" % i for i in range(30_000)]  # 210 kB: past the window
        for line in lines:
            self.assertTrue(sender.send(line))
        self.assertGreater(sender.queued, 0)
        fd.sock.room = 1 << 30
        while fd.fake_reactor.writers:
            fd.doWrite()
        self.assertEqual(b"".join(fd.sent), b"".join(lines))
        self.assertEqual((sender.buffered, overflows), (0, []))

    def test_push_mode_pauses_and_resumes(self) -> None:
        """When a non-socket transport pauses the sender, then lines wait and leave in order on
        resume; past the limit the sender overflows."""
        transport = StringTransport()
        sender, overflows = make_sender(transport, limit=100)
        sender.send(b"a\n")
        sender.pauseProducing()
        sender.send(b"b\n")
        sender.send(b"c\n")
        self.assertEqual(transport.value(), b"a\n")
        self.assertEqual(sender.buffered, 4)
        sender.resumeProducing()
        self.assertEqual(transport.value(), b"a\nb\nc\n")
        sender.pauseProducing()
        sender.send(b"d" * 60 + b"\n")
        self.assertFalse(sender.send(b"e" * 60 + b"\n"))
        self.assertEqual(overflows, [2])


class CloseTests(unittest.TestCase):
    def test_close_unregisters_and_closes(self) -> None:
        """When the sender is closed, then it is no longer the transport's producer and the
        transport closes once it has written what it holds."""
        fd = _Socket(self, room=0)
        sender, _ = make_sender(fd)
        sender.send(b"held\n")
        sender.send(b"more\n")
        sender.close()
        self.assertIsNone(fd.producer)
        self.assertTrue(fd.disconnecting)
        fd.sock.room = 100
        self.assertIs(fd.doWrite(), main.CONNECTION_DONE)
        self.assertEqual(b"".join(fd.sent), b"held\nmore\n")

    def test_transport_closed_by_someone_else(self) -> None:
        """When other code calls the transport's loseConnection, then the sender lets it close
        (a registered pull producer would keep it open)."""
        fd = _Socket(self, room=100)
        sender, _ = make_sender(fd)
        fd.loseConnection()
        fd.doWrite()  # empty: asks the producer for more, which steps aside
        self.assertIsNone(fd.producer)
        self.assertIs(fd.doWrite(), main.CONNECTION_DONE)
        self.assertFalse(sender.send(b"late\n"))
