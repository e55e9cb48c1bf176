"""Test hook: makes a real daemon a lying sender (loaded only by tests that put this folder first
on a child daemon's ``PYTHONPATH``, see tests/test_e2e_files.py ``LyingSenderTests``).

The daemon offers the file honestly (its hash and manifest are the file's), then sends chunk
``JARVIS_TEST_LIE_CHUNK`` with its first byte flipped, sealed with the transfer's real keys:
content that does not match the offered hash, which the receiver must refuse.
"""

import os

from jarvis.files import send

_LIE = int(os.environ["JARVIS_TEST_LIE_CHUNK"])
_honest_read = send.FileSource.read_pieces


def _lying_read(self: send.FileSource, index: int, first: int, end: int) -> bytes:
    data = _honest_read(self, index, first, end)
    if index == _LIE and first == 0:
        data = bytes([data[0] ^ 0xFF]) + data[1:]
    return data


send.FileSource.read_pieces = _lying_read  # type: ignore[method-assign]
