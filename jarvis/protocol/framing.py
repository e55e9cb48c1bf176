"""Length-prefixed frames and the connection prologue of the peer protocol.

After TLS is up each side sends the 8-byte :data:`PROLOGUE` once, then a stream of frames: a
4-byte big-endian payload length followed by the payload (one record, see
:mod:`jarvis.protocol.records`).  :class:`FrameDecoder` enforces a hard maximum and refuses an
oversized frame as soon as its header arrives, before buffering any of its body, so a peer cannot
make us hold more than one maximum-sized frame in memory.  :class:`ChunkFrameReader` cuts the same
frames for a file transfer's data connection, copying each byte once into reused buffers (its
frames are up to a piece of a chunk, far above a session's maximum).

Pure byte manipulation: no I/O, no time, no knowledge of what a payload means.
"""

from __future__ import annotations

import struct
from collections import deque

#: Magic ``JARVIS`` + NUL + prologue version 1; each side sends it first, exactly once.
PROLOGUE = b"JARVIS\x00\x01"

#: Size of the big-endian length header in front of every frame.
HEADER_SIZE = 4

#: Largest payload accepted before the peer's Hello is accepted: Hello records are small, and a
#: peer that has not authenticated yet must not make us buffer much.
HANDSHAKE_MAX_FRAME = 4 * 1024

#: Largest payload accepted on an established session (a message carries up to 64 KiB of text
#: plus its envelope and the cascade's tags).
MAX_FRAME = 96 * 1024

_HEADER = struct.Struct(">I")


class FramingError(Exception):
    """Base class of the errors raised while cutting the byte stream into frames."""


class FrameTooLarge(FramingError):
    """The peer announced a frame larger than the current maximum.

    The connection is closed without reading the body.  A well-behaved Jarvis never sends such a
    frame; if it keeps happening with one contact, their software is broken or hostile.
    """

    def __init__(self, announced: int, maximum: int) -> None:
        super().__init__(f"frame of {announced} bytes exceeds the maximum of {maximum}")
        self.announced = announced
        self.maximum = maximum


class BadPrologue(FramingError):
    """The stream did not start with the Jarvis prologue (``JARVIS\\x00\\x01``).

    The other end is not a Jarvis peer, or speaks an incompatible prologue version: check the
    address and port of the contact, and that both sides run a current Jarvis.
    """


def encode_frame(payload: bytes) -> bytes:
    """Return *payload* with its 4-byte big-endian length header in front.

    :param payload: the frame content (an encoded record).
    :returns: header + payload.
    :raises ValueError: if the payload cannot be described by a 4-byte length.
    """
    if len(payload) > 0xFFFFFFFF:
        raise ValueError("payload too large for a frame")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Cut an incoming byte stream into frame payloads, enforcing a maximum frame size.

    Feed it bytes in chunks of any size; it returns each complete payload exactly once, in order.
    After it raised, the stream is unusable and the decoder must be dropped with the connection.

    :param max_frame: the largest payload accepted, in bytes.
    :param expect_prologue: if true, the stream must start with :data:`PROLOGUE`, which is checked
        byte by byte (garbage is refused at its first wrong byte) and consumed.
    """

    def __init__(self, max_frame: int, *, expect_prologue: bool = False) -> None:
        if max_frame < 0:
            raise ValueError("max_frame must not be negative")
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._prologue_pending = expect_prologue

    @property
    def max_frame(self) -> int:
        """The largest payload currently accepted."""
        return self._max_frame

    def set_max_frame(self, max_frame: int) -> None:
        """Change the maximum; it applies to every frame not yet returned.

        :param max_frame: the new largest payload accepted, in bytes.
        """
        if max_frame < 0:
            raise ValueError("max_frame must not be negative")
        self._max_frame = max_frame

    def receive(self, data: bytes) -> None:
        """Buffer *data* without cutting frames; use :meth:`next_frame` to take them one by one.

        This lets a caller change the maximum between two frames of the same chunk (the session
        raises it right after the peer's Hello).

        :raises BadPrologue: if the stream does not start with the prologue.
        :raises FrameTooLarge: if a buffered header announces more than the maximum.
        """
        self._buffer += data
        self._check_prologue()
        self._check_header()

    def next_frame(self) -> bytes | None:
        """Remove and return the next complete payload, or ``None`` if none is complete yet.

        :raises FrameTooLarge: if the next header announces more than the maximum.
        """
        if self._prologue_pending or not self._check_header():
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        # The next header is checked by the next call, so that a caller can raise the maximum
        # between two frames of the same chunk.
        return payload

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet returned as payloads."""
        return len(self._buffer)

    def _check_prologue(self) -> None:
        if not self._prologue_pending:
            return
        seen = bytes(self._buffer[: len(PROLOGUE)])
        if not PROLOGUE.startswith(seen):
            raise BadPrologue("the stream does not start with the Jarvis prologue")
        if len(seen) == len(PROLOGUE):
            del self._buffer[: len(PROLOGUE)]
            self._prologue_pending = False

    def _check_header(self) -> bool:
        """Return whether a complete header is buffered, refusing it if it is too large."""
        if self._prologue_pending or len(self._buffer) < HEADER_SIZE:
            return False
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self._max_frame:
            raise FrameTooLarge(length, self._max_frame)
        return True


class ChunkFrameReader:
    """Cut the sender's byte stream into frames, copying each byte once.

    TLS hands the stream over in pieces of up to 32 KiB; each frame's payload is copied
    straight into a ``bytearray`` of its own length (a full chunk frame's buffer comes from a
    small pool and goes back with :meth:`give_back` once the chunk is stored), instead of
    growing a buffer and slicing a payload and then a record out of it (three more 1 MiB copies
    and as many fresh allocations per chunk, on the reactor thread).  A length above
    *max_frame* is refused as soon as its header arrives, before any of its body is buffered.

    :param max_frame: the largest payload accepted.
    :param pooled: the payload length whose buffers are reused (a full chunk's frame).
    :param pool: how many spare buffers to keep.
    """

    def __init__(self, max_frame: int, pooled: int, pool: int = 4) -> None:
        self._max_frame = max_frame
        self._pooled = pooled
        self._pool_size = pool
        self._head = bytearray()
        self._frame: bytearray | None = None
        self._filled = 0
        self._pool: list[bytearray] = []
        #: Complete payloads not yet taken, oldest first.
        self.frames: deque[bytearray] = deque()

    def receive(self, data: bytes) -> None:
        """Take the next piece of the stream.

        :raises FrameTooLarge: if a header announces more than *max_frame*.
        """
        view = memoryview(data)
        off, end = 0, len(data)
        while off < end:
            frame = self._frame
            if frame is None:
                need = 4 - len(self._head)
                self._head += view[off : off + need]
                off += min(need, end - off)
                if len(self._head) < 4:
                    return
                (length,) = _HEADER.unpack(self._head)
                self._head.clear()
                if length > self._max_frame:
                    raise FrameTooLarge(length, self._max_frame)
                frame = self._pool.pop() if length == self._pooled and self._pool else None
                frame = frame if frame is not None else bytearray(length)
                self._frame, self._filled = frame, 0
            take = min(len(frame) - self._filled, end - off)
            frame[self._filled : self._filled + take] = view[off : off + take]
            self._filled += take
            off += take
            if self._filled == len(frame):
                self.frames.append(frame)
                self._frame = None

    def give_back(self, frame: bytearray) -> None:
        """Return a payload buffer nobody uses any more, for reuse."""
        if len(frame) == self._pooled and len(self._pool) < self._pool_size:
            self._pool.append(frame)
