"""Child process of ``tests/test_transfer_crash.py``: receives a file until it is killed.

Usage: ``python -m tests.transfer_crash_child DIRECTORY OFFER_HEX`` with the repository on
``PYTHONPATH``.  It creates the partial file, listens on 127.0.0.1, prints the port, then prints
``held N`` (unbuffered) each time N bytes are written and recorded, i.e. after a piece and its
mark were written.  The parent kills it with SIGKILL; it must never be run by the test runner.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def main(directory: str, offer_hex: str) -> None:
    """Receive into *directory* until killed."""
    from jarvis.runtime.reactor import install

    reactor: Any = install()
    from twisted.internet import protocol

    from jarvis.files.receive import PartialFile
    from jarvis.net.transfer import TransferReceiver
    from jarvis.protocol.transfer import Offer, parse_transfer_record

    offer = parse_transfer_record(bytes.fromhex(offer_hex))
    assert isinstance(offer, Offer)
    partial = PartialFile.create(directory, offer)

    class Reporter:
        def stream_opened(self) -> None:
            pass

        def bytes_done(self, done: int) -> None:
            os.write(1, f"held {done}\n".encode())

        def stream_completed(self, final_path: str | None) -> None:
            os.write(1, b"completed\n")

        def stream_ended(self, reason: str, resumable: bool) -> None:
            os.write(1, f"ended {reason}\n".encode())

    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: TransferReceiver(partial, Reporter())  # type: ignore[method-assign]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    os.write(1, f"{port.getHost().port}\n".encode())
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
