"""Tests for :mod:`jarvis.crypto.transfer_keys`: per-connection chunk keys and chunk sealing."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.cascade import OVERHEAD
from jarvis.crypto.errors import CryptoError
from jarvis.crypto.transfer_keys import (
    ChunkCipher,
    ChunkRejected,
    WorkBuffers,
    chunk_associated_data,
    derive_chunk_keys,
    new_epoch,
    new_transfer_secret,
)

TID = bytes(range(16))
SECRET = bytes(range(32, 64))
EPOCH = b"\xee" * 16
KEY0 = "32346b3aecda7d3643b8c55958a8b819151b51d49a984b1322bdd9286ff040c0"


class ChunkKeyTests(SynchronousTestCase):
    def test_key_vector_and_independence(self) -> None:
        """When keys are derived, then layer key 0 is the documented vector, the five keys
        differ, and another epoch or transfer id gives other keys."""
        keys = derive_chunk_keys(SECRET, TID, EPOCH)
        self.assertEqual(keys.layer_keys[0].hex(), KEY0)
        self.assertEqual(len(set(keys.layer_keys)), 5)
        self.assertNotEqual(derive_chunk_keys(SECRET, TID, b"\xef" * 16), keys)
        self.assertNotEqual(derive_chunk_keys(SECRET, bytes(16), EPOCH), keys)
        with self.assertRaises(ValueError):
            derive_chunk_keys(SECRET[:31], TID, EPOCH)
        self.assertEqual(len(new_transfer_secret()), 32)
        self.assertNotEqual(new_epoch(), new_epoch())

    def test_five_real_layers(self) -> None:
        """When a chunk is sealed, then peeling the five layers by hand (outermost AES-GCM
        first) gives the plaintext back: each layer is really there."""
        keys = derive_chunk_keys(SECRET, TID, EPOCH)
        sealed = ChunkCipher(keys, TID).seal(7, b"hello")
        self.assertEqual(len(sealed), 5 + OVERHEAD)
        ad = chunk_associated_data(TID, 7, 5)
        data = sealed
        for layer in range(4, -1, -1):
            key = keys.layer_keys[layer]
            cipher = AESGCM(key) if layer % 2 == 0 else ChaCha20Poly1305(key)
            data = cipher.decrypt(layer.to_bytes(4, "big") + (7).to_bytes(8, "big"), data, ad)
        self.assertEqual(data, b"hello")


class ChunkCipherTests(SynchronousTestCase):
    @given(data=st.binary(max_size=3000), index=st.integers(0, 2**40))
    def test_round_trip(self, data: bytes, index: int) -> None:
        """When any chunk is sealed and opened under the same connection, then it is unchanged."""
        cipher = ChunkCipher.for_connection(SECRET, TID, EPOCH)
        self.assertEqual(cipher.open(index, cipher.seal(index, data)), data)

    @given(st.binary(max_size=3000), st.integers(0, 2**40))
    def test_buffered_seal_and_open_match(self, data: bytes, index: int) -> None:
        """When a chunk is sealed as a frame and opened into work buffers, then the frame is
        the header plus exactly what seal() gives, and open_into() gives the chunk back."""
        cipher = ChunkCipher.for_connection(SECRET, TID, EPOCH)
        work = WorkBuffers(3000 + OVERHEAD)
        with work.pair() as pair:
            frame = cipher.seal_frame(index, data, b"HEAD", pair)
        self.assertEqual(frame, b"HEAD" + cipher.seal(index, data))
        with work.pair() as pair:
            self.assertEqual(bytes(cipher.open_into(index, memoryview(frame)[4:], pair)), data)

    @given(st.binary(max_size=3000), st.integers(0, 2**40))
    def test_seal_frame_of_data_in_the_second_work_buffer(self, data: bytes, index: int) -> None:
        """When the chunk to seal lies in the pair's second buffer (where the sender reads
        pieces), then the frame is the same as from a chunk of its own."""
        cipher = ChunkCipher.for_connection(SECRET, TID, EPOCH)
        work = WorkBuffers(3000 + OVERHEAD)
        with work.pair() as pair:
            pair[1][: len(data)] = data
            frame = cipher.seal_frame(index, memoryview(pair[1])[: len(data)], b"HEAD", pair)
        self.assertEqual(frame, b"HEAD" + cipher.seal(index, data))

    def test_work_buffers_reused_and_tampering_refused_in_place(self) -> None:
        """When chunks are opened one after the other with the same pool, then one pair of
        buffers serves them all, and an altered or moved chunk is refused (ChunkRejected)
        without disturbing the next one."""
        cipher = ChunkCipher.for_connection(SECRET, TID, EPOCH)
        work = WorkBuffers(1000 + OVERHEAD)
        seen = set()
        for index in range(3):
            sealed = bytearray(cipher.seal(index, bytes([index]) * 1000))
            with work.pair() as pair:
                seen.add(id(pair[0]))
                opened = cipher.open_into(index, sealed, pair)
                self.assertEqual(bytes(opened), bytes([index]) * 1000)
                with self.assertRaises(ChunkRejected):
                    cipher.open_into(index + 1, sealed, pair)
                sealed[5] ^= 1
                with self.assertRaises(ChunkRejected):
                    cipher.open_into(index, sealed, pair)
                with self.assertRaises(ChunkRejected):
                    cipher.open_into(index, sealed[: OVERHEAD - 1], pair)
        self.assertEqual(len(seen), 1)

    def test_tampering_refused(self) -> None:
        """When a chunk is altered, moved to another index, truncated, or opened on another
        connection or transfer, then ChunkRejected (a CryptoError)."""
        cipher = ChunkCipher.for_connection(SECRET, TID, EPOCH)
        sealed = cipher.seal(3, b"x" * 1000)
        flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
        other_epoch = ChunkCipher.for_connection(SECRET, TID, new_epoch())
        other_transfer = ChunkCipher.for_connection(SECRET, bytes(16), EPOCH)
        cases = [
            lambda: cipher.open(3, flipped),
            lambda: cipher.open(4, sealed),
            lambda: cipher.open(3, sealed[:-1]),
            lambda: cipher.open(3, sealed[:10]),
            lambda: other_epoch.open(3, sealed),
            lambda: other_transfer.open(3, sealed),
        ]
        for case in cases:
            with self.assertRaises(ChunkRejected) as raised:
                case()
            self.assertIsInstance(raised.exception, CryptoError)
        self.assertEqual(cipher.open(3, sealed), b"x" * 1000)
