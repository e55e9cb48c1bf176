"""Test hook: makes a real daemon a lying sender (loaded only by tests that put this folder first
on a child daemon's ``PYTHONPATH``, see tests/test_e2e_files.py ``LyingSenderTests``).

The daemon offers the file honestly (its hash and manifest are the file's), then sends chunk
``JARVIS_TEST_LIE_CHUNK`` with its first byte flipped, sealed with the transfer's real keys:
content that does not match the offered hash, which the receiver must refuse.
"""

import os

from jarvis.files import send

_LIE = int(os.environ["JARVIS_TEST_LIE_CHUNK"])
_honest_read = send.FileSource.read_piece


def _lying_read(self: send.FileSource, index: int, piece: int, into: bytearray) -> memoryview:
    data = _honest_read(self, index, piece, into)
    if index == _LIE and piece == 0:
        lie = bytearray(data)
        lie[0] ^= 0xFF
        data = memoryview(lie)
    return data


send.FileSource.read_piece = _lying_read  # type: ignore[method-assign]
