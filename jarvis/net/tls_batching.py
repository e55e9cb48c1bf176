"""Twisted's memory-BIO TLS, with each write handed to OpenSSL and the transport whole.

Twisted's :class:`~twisted.protocols.tls.TLSMemoryBIOProtocol` hands OpenSSL 16 KiB at a
time and, after each record, reads the send BIO into a fresh buffer and writes that one
record to the TCP transport.  A file transfer writes 512 KiB pieces, about 65,000 records per
GiB, so those per-record round trips cost the sending daemon about 0.25 CPU s/GiB here
(``docs/benchmarks.md``, "File transfer: writes past the page cache").

:class:`BatchingTLSProtocol` keeps Twisted's TLS machinery (handshake, producers, shutdown,
error reporting, the aggregation of small writes) and changes one thing: a write passes every
record of the write to OpenSSL first (16 KiB views, no copies), then drains the send BIO and
writes the ciphertext to the transport in one call.  Reads are Twisted's: collecting each read's
records into one delivery cost the receiving daemon more than it saved (measured there too).

The bytes on the wire are the same records as Twisted's (OpenSSL still cuts them at 16 KiB),
so either end may run either class.  :class:`BatchingTLSFactory` is
:class:`~twisted.protocols.tls.TLSMemoryBIOFactory` with this protocol; every Jarvis TLS
connection (sessions, transfer data connections, relay joins) is built with it.

It overrides two private methods of Twisted's protocol (``_write`` and ``_flushSendBIO``).
Should a Twisted release rename or reshape them, ``tests/test_tls_batching.py`` fails (it
counts the transport writes of a large write) rather than the change going unseen.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure

#: Largest plaintext of one TLS record (RFC 8446 section 5.1).
RECORD_PLAINTEXT = 2**14
#: Room asked of the send BIO per record beyond its plaintext (TLS 1.3 adds 22 bytes).
RECORD_OVERHEAD = 64
#: Bytes asked of the send BIO by each further read, when the first one came back full.
SEND_BIO_READ = 2**15


class BatchingTLSProtocol(BufferingTLSTransport):
    """Twisted's TLS protocol (with its small-write aggregation), one transport write per
    write."""

    def _flushSendBIO(self, expected: int = SEND_BIO_READ) -> None:
        """Write everything waiting in the send BIO to the transport, in one write when
        *expected* (the bytes the caller just had OpenSSL seal, with room for the records'
        overhead) covers it."""
        connection = self._tlsConnection
        transport: Any = self.transport
        chunks = []
        size = expected
        while True:
            try:
                chunk = connection.bio_read(size)
            except WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < size:
                break
            size = SEND_BIO_READ
        if len(chunks) == 1:
            transport.write(chunks[0])
        elif chunks:
            transport.writeSequence(chunks)

    def _write(self, bytes: Any) -> None:
        """Hand every record of *bytes* to OpenSSL, then flush the ciphertext once."""
        if self._lostTLSConnection:
            return
        view = memoryview(bytes)
        total = len(view)
        done = 0
        connection = self._tlsConnection
        failure = None
        while done < total:
            try:
                done += connection.send(view[done : done + RECORD_PLAINTEXT])
            except WantReadError:
                self._bufferedWrite(view[done:].tobytes())
                break
            except Error:
                failure = Failure()
                break
        self._flushSendBIO(done + (done // RECORD_PLAINTEXT + 1) * RECORD_OVERHEAD)
        if failure is not None:
            self._tlsShutdownFinished(failure)


class BatchingTLSFactory(TLSMemoryBIOFactory):
    """:class:`~twisted.protocols.tls.TLSMemoryBIOFactory` building
    :class:`BatchingTLSProtocol` connections."""

    protocol = BatchingTLSProtocol
