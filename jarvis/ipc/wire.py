"""Sending a line at once: the write path of the local API's server and client.

Twisted's ``transport.write`` only buffers: the bytes leave on the next reactor turn, after the
reactor registered the socket for writing and the selector reported it writable (and then
unregistered it).  For a small line on an idle connection that costs a whole loop iteration and
two selector updates on each side of a round trip.  :func:`send_line` sends the line with the
transport's own ``writeSomeData`` when nothing is buffered yet, and hands whatever the socket did
not take to ``transport.write`` (which keeps the order, the producer flow control and the error
handling: a failed send is buffered and the reactor's next write reports the error as usual).

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


def _direct_type(kind: type) -> bool:
    direct = _DIRECT.get(kind)
    if direct is None:
        direct = issubclass(kind, FileDescriptor) and hasattr(kind, "writeSomeData")
        _DIRECT[kind] = direct
    return direct


def send_line(transport: Any, data: bytes) -> None:
    """Write *data* (bytes) to *transport*, sending it at once when the transport is idle.

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
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            if sent >= len(data):
                return
            data = data[sent:]
    transport.write(data)
