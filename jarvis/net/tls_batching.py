"""Twisted's memory-BIO TLS, with each write and each read handled in batches of records.

Twisted's :class:`~twisted.protocols.tls.TLSMemoryBIOProtocol` hands OpenSSL 16 KiB at a
time and, after each record, reads the send BIO and writes the record to the TCP transport;
on the way in it delivers each record's plaintext to the protocol on its own.  A file
transfer moves about 65,000 records per GiB, so those per-record Python round trips
(pyOpenSSL call, a fresh buffer, a transport write or a ``dataReceived`` chain) become a
large share of a daemon's CPU (measured in ``docs/benchmarks.md``, "File transfer: TLS
records in batches").

:class:`BatchingTLSProtocol` keeps Twisted's TLS machinery (handshake, producers, shutdown,
error reporting) and changes two things:

- a write passes every record of the write to OpenSSL first, then drains the send BIO once
  and writes the ciphertext to the transport in one call;
- a read collects the plaintext of every record OpenSSL can decrypt (up to
  :data:`RECEIVE_BATCH` bytes) into one buffer and delivers it in one ``dataReceived``.

The bytes on the wire are the same records as Twisted's (OpenSSL still cuts them at 16 KiB),
so either end may run either class.  :class:`BatchingTLSFactory` is
:class:`~twisted.protocols.tls.TLSMemoryBIOFactory` with this protocol; every Jarvis TLS
connection (sessions, transfer data connections, relay joins) is built with it.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure

#: Largest plaintext of one TLS record (RFC 8446 section 5.1).
RECORD_PLAINTEXT = 2**14
#: Bytes asked of the send BIO per read: a few records' worth.
SEND_BIO_READ = 2**18
#: Most plaintext delivered to the wrapped protocol in one ``dataReceived``.
RECEIVE_BATCH = 2**18


class BatchingTLSProtocol(BufferingTLSTransport):
    """Twisted's TLS protocol (with its small-write aggregation), batching records."""

    #: Where records' plaintext is collected before delivery: one buffer for every connection,
    #: since TLS protocols run on the reactor thread only and each batch is copied out before
    #: it is delivered (a daemon with thousands of sessions holds it once).
    _receive_buffer = bytearray(RECEIVE_BATCH)

    def _flushSendBIO(self) -> None:
        """Write everything waiting in the send BIO to the transport in one write."""
        connection = self._tlsConnection
        chunks = []
        while True:
            try:
                chunks.append(connection.bio_read(SEND_BIO_READ))
            except WantReadError:
                break
        if len(chunks) == 1:
            self.transport.write(chunks[0])
        elif chunks:
            self.transport.write(b"".join(chunks))

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
        self._flushSendBIO()
        if failure is not None:
            self._tlsShutdownFinished(failure)

    def _flushReceiveBIO(self) -> None:
        """Deliver the plaintext of every decryptable record, in batches of up to
        :data:`RECEIVE_BATCH` bytes, then flush anything the reads made OpenSSL send."""
        buffer = memoryview(self._receive_buffer)
        connection = self._tlsConnection
        while not self._lostTLSConnection:
            filled = 0
            ended: Any = None
            waiting = False
            while filled < RECEIVE_BATCH:
                try:
                    filled += connection.recv_into(
                        buffer[filled:], min(RECEIVE_BATCH - filled, RECORD_PLAINTEXT)
                    )
                except WantReadError:
                    waiting = True
                    break
                except ZeroReturnError:
                    ended = True
                    break
                except Error:
                    ended = Failure()
                    break
            if filled and not self._aborted:
                ProtocolWrapper.dataReceived(self, buffer[:filled].tobytes())
            if ended is True:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            elif ended is not None:
                self._tlsShutdownFinished(ended)
            elif waiting:
                break
        self._flushSendBIO()


class BatchingTLSFactory(TLSMemoryBIOFactory):
    """:class:`~twisted.protocols.tls.TLSMemoryBIOFactory` building
    :class:`BatchingTLSProtocol` connections."""

    protocol = BatchingTLSProtocol
