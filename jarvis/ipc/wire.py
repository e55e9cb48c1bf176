"""Sending a line at once: the write path of the local API's server and client.

Twisted's ``transport.write`` only buffers: the bytes leave on the next reactor turn, after the
reactor registered the socket for writing and the selector reported it writable (and then
unregistered it).  For a small line on an idle connection that costs a whole loop iteration and
two selector updates on each side of a round trip.  :func:`send_line` sends the line with the
transport's own ``writeSomeData`` when nothing is buffered yet, and hands whatever the socket did
not take to ``transport.write`` (which keeps the order, the producer flow control and the error
handling: a failed send is buffered and the reactor's next write reports the error as usual).

Only the **first** line of a reactor turn goes out directly; later lines of the same turn to the
same transport are buffered with ``transport.write`` and leave together in one ``send`` when the
reactor flushes.  A busy daemon answers a hundred requests and sends their events in one turn:
one system call per line had been the largest single cost of sending a message through the API
(about a fifth of the sending daemon's reactor time in ``python -m bench messaging``).

Only plain Twisted socket transports (:class:`~twisted.internet.abstract.FileDescriptor`, e.g.
TCP and UNIX connections without TLS) take the direct path; any other transport (TLS, test
transports) gets ``transport.write``.

This module must not import the global reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor

__all__ = ["send_line"]

# Whether transports of a type may be written directly, cached per type.
_DIRECT: dict[type, bool] = {}
# Transports that sent a line directly in the current reactor turn (each one leaves the set at
# the start of the next turn, through its reactor's callLater(0)).
_SENT_THIS_TURN: set[Any] = set()


def _direct_type(kind: type) -> bool:
    direct = _DIRECT.get(kind)
    if direct is None:
        direct = issubclass(kind, FileDescriptor) and hasattr(kind, "writeSomeData")
        _DIRECT[kind] = direct
    return direct


def send_line(transport: Any, data: bytes) -> None:
    """Write *data* (bytes) to *transport*, at once if it is idle and the first this turn.

    Same effect as ``transport.write(data)``: the bytes are sent in order, after whatever the
    transport still buffers, and not at all once the transport is closed or closing.
    """
    if (
        data
        and _direct_type(type(transport))
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not getattr(transport, "TLS", False)
        and not getattr(transport, "_aborting", False)
        and not getattr(transport, "_sendmsgQueue", None)
        and not transport._tempDataLen
        and not transport.dataBuffer
        and transport not in _SENT_THIS_TURN
    ):
        _SENT_THIS_TURN.add(transport)
        transport.reactor.callLater(0, _SENT_THIS_TURN.discard, transport)
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            if sent >= len(data):
                return
            data = data[sent:]
    transport.write(data)
