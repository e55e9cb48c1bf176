"""Tests for jarvis.ipc.wire: sending a line at once, or through transport.write."""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from jarvis.ipc.wire import send_line


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


class _Socket(FileDescriptor):
    """A FileDescriptor whose socket takes at most *room* bytes per send."""

    def __init__(self, room: int | Exception) -> None:
        self.fake_reactor = _Reactor()
        super().__init__(self.fake_reactor)
        self.connected = 1
        self.room = room
        self.sent: list[bytes] = []

    def writeSomeData(self, data: bytes) -> Any:
        if isinstance(self.room, Exception):
            return self.room
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        self.sent.append(taken)
        return len(taken)


class SendLineTests(unittest.TestCase):
    def test_idle_socket_sends_at_once(self) -> None:
        fd = _Socket(room=100)
        send_line(fd, b"hello\n")
        self.assertEqual(fd.sent, [b"hello\n"])
        self.assertEqual(fd.fake_reactor.writers, set())
        self.assertEqual(fd._tempDataLen, 0)

    def test_later_lines_of_a_turn_are_buffered_together(self) -> None:
        """When three lines are sent in one reactor turn, then the first leaves at once and the
        other two are buffered and leave in one send when the reactor flushes; in the next turn
        a line leaves at once again."""
        fd = _Socket(room=1000)
        send_line(fd, b"one\n")
        send_line(fd, b"two\n")
        send_line(fd, b"three\n")
        self.assertEqual(fd.sent, [b"one\n"])
        self.assertIn(fd, fd.fake_reactor.writers)
        fd.doWrite()
        self.assertEqual(fd.sent, [b"one\n", b"two\nthree\n"])
        fd.fake_reactor.advance(0)
        send_line(fd, b"four\n")
        self.assertEqual(fd.sent[-1], b"four\n")

    def test_partial_send_buffers_the_rest(self) -> None:
        fd = _Socket(room=2)
        send_line(fd, b"hello\n")
        self.assertEqual(fd.sent, [b"he"])
        self.assertEqual(fd._tempDataBuffer, [b"llo\n"])
        self.assertIn(fd, fd.fake_reactor.writers)

    def test_buffered_data_keeps_the_order(self) -> None:
        fd = _Socket(room=0)
        send_line(fd, b"first\n")
        fd.room = 100
        send_line(fd, b"second\n")
        # Nothing was sent around the buffered line: both wait for the reactor.
        self.assertEqual(fd.sent, [b""])
        self.assertEqual(fd._tempDataBuffer, [b"first\n", b"second\n"])
        fd.doWrite()
        self.assertEqual(fd.sent[-1], b"first\nsecond\n")

    def test_failed_send_is_left_to_the_reactor(self) -> None:
        error = ConnectionResetError("gone")
        fd = _Socket(room=error)
        send_line(fd, b"hello\n")
        self.assertEqual(fd._tempDataBuffer, [b"hello\n"])
        self.assertIs(fd.doWrite(), error)

    def test_closing_socket_sends_nothing_directly(self) -> None:
        fd = _Socket(room=100)
        fd.disconnecting = True
        send_line(fd, b"hello\n")
        self.assertEqual(fd.sent, [])
        fd = _Socket(room=100)
        fd.connected = 0
        send_line(fd, b"hello\n")
        self.assertEqual(fd.sent, [])
        self.assertEqual(fd._tempDataBuffer, [])

    def test_other_transports_get_write(self) -> None:
        transport = StringTransport()
        send_line(transport, b"hello\n")
        self.assertEqual(transport.value(), b"hello\n")
