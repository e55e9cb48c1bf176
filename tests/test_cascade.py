"""Tests for :mod:`jarvis.crypto.cascade`: key schedule, five real layers, counters."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.cascade import (
    LAYERS,
    MAX_COUNTER,
    OVERHEAD,
    CascadeError,
    CascadeOpener,
    CascadeSealer,
    CounterExhausted,
    DirectionKeys,
    associated_data,
    cascade_transcript,
    derive_session_keys,
    layer_nonce,
)
from jarvis.crypto.errors import CryptoError

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

UID_ALICE = "ubiig7mfa4cyfthxhffqtceeptbrfs4iewnyssez63zdttyxsgsq"
UID_BOB = "qjgitkuo7ok67e3ctncrswmrfhfm4sw2zgtbqdnlumoo5va6z3ta"
EPHEMERAL_ALICE_PRIVATE = bytes(range(64, 96))
EPHEMERAL_BOB_PRIVATE = bytes(range(96, 128))
EPHEMERAL_ALICE = bytes.fromhex("79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a")
EPHEMERAL_BOB = bytes.fromhex("675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f")
CHANNEL_BINDING = b"\xcb" * 32

SHARED_HEX = "d6fb939511b2381bc8599b4b8edc5968829450dfd7a87aebe78a703cd04cd54e"
SALT_HEX = "1214af35765279ed9b13e0b6e28305a40aca23df0ca6077bf684e63270cdd9f8"
TO_RESPONDER_HEX = (
    "880cbc972b9eef69d42de140581837949547e1e21855c62058dcff61b97ca52c",
    "d943dc9cbaa2c9b197baf902f6bc74d4f122460e6ddce64c3feb4cb5d7c5fc50",
    "b61d0d5cfee3bfa02b6233c6d22a1c13734516a190bb58ffb5c613bf3c33edeb",
    "a21cfbadac8ec81f006ba1c76afbbfefbf44c6c8198487e088ffed1dfc8a873b",
    "f8070cff7249409cd416492ae3324fe199d34f6f55842ce39e3917b442de833d",
)
TO_INITIATOR_HEX = (
    "cae177ebec72c1b4db0e3c01ea45a308ea3eeac59400fed67334df22228902cc",
    "3eccfd908de05047eb4dfa6fed14efcf560b6ee1d8977d2416a87371a97886cb",
    "83cf69c419d8c587bf8c48ce6c5272106069cb541d995e0625a49be84be2cd0e",
    "177f33e54a8464815cc96e540273cbfa1b94534475c4cea2bbe94055f3e852d0",
    "1419c291daac990960b2f025e0f81a0c8ede22dfd641f009d0be8c23a541ae18",
)
MESSAGE_ID = bytes(range(16))
AD_HEX = (
    "6a61727669732f6d6573736167652f763100"
    "0034"
    + UID_ALICE.encode().hex()
    + "0034"
    + UID_BOB.encode().hex()
    + MESSAGE_ID.hex()
    + "0000000000000001"
)
#: "hello" from Alice to Bob, counter 1 (docs/protocol.md, "Cascade").
SEALED_HEX = (
    "c5c3521dfa347899a9af275e2924fe9dd17e8b93419ed31cad992c4d3743846e"
    "9cc02eeb4d9e85594a7364478adbcc53302f7fc4dacca06eb341ba546da9101e"
    "65544a1a7766b4613e56c0f201b1fd08e5c3f618d6"
)


def make_keys(
    channel_binding: bytes = CHANNEL_BINDING,
) -> tuple[DirectionKeys, DirectionKeys]:
    """Return the vector's (initiator -> responder, responder -> initiator) keys."""
    return derive_session_keys(
        bytes.fromhex(SHARED_HEX),
        initiator_uid=UID_ALICE,
        responder_uid=UID_BOB,
        initiator_ephemeral=EPHEMERAL_ALICE,
        responder_ephemeral=EPHEMERAL_BOB,
        channel_binding=channel_binding,
    )


def make_pair() -> tuple[CascadeSealer, CascadeOpener]:
    """Return Alice's sealer and Bob's opener for the Alice -> Bob direction."""
    to_responder, _ = make_keys()
    return (
        CascadeSealer(to_responder, UID_ALICE, UID_BOB),
        CascadeOpener(to_responder, UID_ALICE, UID_BOB),
    )


class KeyScheduleVectorTests(SynchronousTestCase):
    """derive_session_keys matches the documented vector."""

    def test_shared_secret(self) -> None:
        """When the two fixed ephemeral keys meet, then X25519 gives the documented secret."""
        alice = X25519PrivateKey.from_private_bytes(EPHEMERAL_ALICE_PRIVATE)
        bob = X25519PrivateKey.from_private_bytes(EPHEMERAL_BOB_PRIVATE)
        self.assertEqual(alice.exchange(bob.public_key()).hex(), SHARED_HEX)
        self.assertEqual(bob.exchange(alice.public_key()).hex(), SHARED_HEX)

    def test_salt(self) -> None:
        """When the transcript hash is computed, then it is the documented salt."""
        salt = cascade_transcript(
            initiator_uid=UID_ALICE,
            responder_uid=UID_BOB,
            initiator_ephemeral=EPHEMERAL_ALICE,
            responder_ephemeral=EPHEMERAL_BOB,
            channel_binding=CHANNEL_BINDING,
        )
        self.assertEqual(salt.hex(), SALT_HEX)

    def test_keys(self) -> None:
        """When keys are derived from the vector, then both directions match the document."""
        to_responder, to_initiator = make_keys()
        self.assertEqual(tuple(k.hex() for k in to_responder.layer_keys), TO_RESPONDER_HEX)
        self.assertEqual(tuple(k.hex() for k in to_initiator.layer_keys), TO_INITIATOR_HEX)

    def test_documented(self) -> None:
        """When docs/protocol.md is read, then it shows every cascade vector verbatim."""
        blocks = re.findall(r"```hex\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
        shown = "".join("".join(block.split()) for block in blocks)
        keys = SHARED_HEX + SALT_HEX + "".join(TO_RESPONDER_HEX) + "".join(TO_INITIATOR_HEX)
        for vector in (keys, AD_HEX, SEALED_HEX):
            self.assertIn(vector, shown)


class KeyScheduleTests(SynchronousTestCase):
    """Every input of the key schedule matters, and all ten keys differ."""

    def test_ten_distinct_keys(self) -> None:
        """When keys are derived, then the ten layer keys are pairwise different."""
        to_responder, to_initiator = make_keys()
        self.assertEqual(len(set(to_responder.layer_keys + to_initiator.layer_keys)), 10)

    def test_channel_binding_changes_keys(self) -> None:
        """When the channel binding differs, then every key differs."""
        other, _ = make_keys(b"\xcc" * 32)
        self.assertTrue(set(other.layer_keys).isdisjoint(make_keys()[0].layer_keys))

    def test_roles_matter(self) -> None:
        """When initiator and responder are swapped, then the keys differ."""
        swapped, _ = derive_session_keys(
            bytes.fromhex(SHARED_HEX),
            initiator_uid=UID_BOB,
            responder_uid=UID_ALICE,
            initiator_ephemeral=EPHEMERAL_BOB,
            responder_ephemeral=EPHEMERAL_ALICE,
            channel_binding=CHANNEL_BINDING,
        )
        self.assertNotEqual(swapped, make_keys()[0])

    def test_invalid_inputs(self) -> None:
        """When the secret is short or an ephemeral key has the wrong size, then ValueError."""
        base = dict(
            initiator_uid=UID_ALICE,
            responder_uid=UID_BOB,
            initiator_ephemeral=EPHEMERAL_ALICE,
            responder_ephemeral=EPHEMERAL_BOB,
            channel_binding=CHANNEL_BINDING,
        )
        self.assertRaises(ValueError, derive_session_keys, b"x" * 31, **base)
        self.assertRaises(
            ValueError, derive_session_keys, b"x" * 32, **{**base, "initiator_ephemeral": b"e"}
        )

    def test_direction_keys_validated_and_hidden(self) -> None:
        """When DirectionKeys is built or shown, then sizes are checked and keys never printed."""
        self.assertRaises(ValueError, DirectionKeys, (b"k" * 32,) * 4)
        self.assertRaises(ValueError, DirectionKeys, (b"k" * 31,) * 5)
        keys, _ = make_keys()
        self.assertNotIn(TO_RESPONDER_HEX[0][:8], repr(keys))
        self.assertNotIn(repr(keys.layer_keys[0]), repr(keys))


class SealVectorTests(SynchronousTestCase):
    """Sealing is deterministic for a given key, counter and message."""

    def test_associated_data(self) -> None:
        """When the associated data of the vector is built, then it matches the document."""
        self.assertEqual(associated_data(UID_ALICE, UID_BOB, MESSAGE_ID, 1).hex(), AD_HEX)

    def test_seal_vector(self) -> None:
        """When Alice seals "hello" first, then counter 1 and the documented bytes come out."""
        sealer, opener = make_pair()
        counter, sealed = sealer.seal(MESSAGE_ID, b"hello")
        self.assertEqual((counter, sealed.hex()), (1, SEALED_HEX))
        self.assertEqual(opener.open(1, MESSAGE_ID, sealed), b"hello")

    def test_layers_peel_by_hand(self) -> None:
        """When the vector is peeled with the documented ciphers, nonces and AD, then "hello"."""
        keys, _ = make_keys()
        ad = bytes.fromhex(AD_HEX)
        data = bytes.fromhex(SEALED_HEX)
        expected = ("AES-256-GCM", "ChaCha20-Poly1305") * 2 + ("AES-256-GCM",)
        self.assertEqual(LAYERS, expected)
        for layer in reversed(range(5)):
            key = keys.layer_keys[layer]
            cipher = AESGCM(key) if layer % 2 == 0 else ChaCha20Poly1305(key)
            nonce = layer.to_bytes(4, "big") + (1).to_bytes(8, "big")
            self.assertEqual(layer_nonce(layer, 1), nonce)
            shorter = cipher.decrypt(nonce, data, ad)
            self.assertEqual(len(shorter), len(data) - 16)
            data = shorter
        self.assertEqual(data, b"hello")

    @settings(max_examples=40, deadline=None)
    @given(plaintexts=st.lists(st.binary(max_size=500), min_size=1, max_size=5))
    def test_round_trip(self, plaintexts: list[bytes]) -> None:
        """When any plaintexts are sealed in order, then they open in order, 80 bytes longer."""
        sealer, opener = make_pair()
        for plaintext in plaintexts:
            counter, sealed = sealer.seal(MESSAGE_ID, plaintext)
            self.assertEqual(len(sealed), len(plaintext) + OVERHEAD)
            self.assertEqual(opener.open(counter, MESSAGE_ID, sealed), plaintext)


class EveryLayerTests(SynchronousTestCase):
    """Each of the five keys is really used."""

    def test_one_wrong_layer_key_breaks_it(self) -> None:
        """When any single layer key is replaced, then the vector no longer opens."""
        keys, _ = make_keys()
        for layer in range(5):
            altered = list(keys.layer_keys)
            altered[layer] = bytes(32)
            opener = CascadeOpener(DirectionKeys(tuple(altered)), UID_ALICE, UID_BOB)
            with self.assertRaises(CascadeError):
                opener.open(1, MESSAGE_ID, bytes.fromhex(SEALED_HEX))

    def test_four_layers_do_not_suffice(self) -> None:
        """When only four layers are peeled, then the result is not the plaintext."""
        keys, _ = make_keys()
        ad = bytes.fromhex(AD_HEX)
        data = bytes.fromhex(SEALED_HEX)
        for layer in (4, 3, 2, 1):
            key = keys.layer_keys[layer]
            cipher = AESGCM(key) if layer % 2 == 0 else ChaCha20Poly1305(key)
            data = cipher.decrypt(layer_nonce(layer, 1), data, ad)
        self.assertEqual(len(data), 5 + 16)
        self.assertNotIn(b"hello", data)


class TamperTests(SynchronousTestCase):
    """Altered data, wrong bindings and wrong keys are refused, and refusals change nothing."""

    def test_every_byte_flip(self) -> None:
        """When any single byte of the ciphertext is flipped, then CascadeError is raised."""
        sealed = bytes.fromhex(SEALED_HEX)
        _, opener = make_pair()
        for index in range(len(sealed)):
            altered = bytearray(sealed)
            altered[index] ^= 0x01
            self.assertRaises(CascadeError, opener.open, 1, MESSAGE_ID, bytes(altered))
        self.assertEqual(opener.open(1, MESSAGE_ID, sealed), b"hello")

    def test_truncated(self) -> None:
        """When the ciphertext is shorter than the tags or cut by a byte, then it is refused."""
        sealed = bytes.fromhex(SEALED_HEX)
        _, opener = make_pair()
        self.assertRaises(CascadeError, opener.open, 1, MESSAGE_ID, sealed[: OVERHEAD - 1])
        self.assertRaises(CascadeError, opener.open, 1, MESSAGE_ID, sealed[:-1])

    def test_bindings(self) -> None:
        """When the id, counter or uids differ from the sealing ones, then it is refused."""
        sealed = bytes.fromhex(SEALED_HEX)
        keys, _ = make_keys()
        _, opener = make_pair()
        self.assertRaises(CascadeError, opener.open, 1, bytes(16), sealed)
        self.assertRaises(CascadeError, opener.open, 2, MESSAGE_ID, sealed)
        self.assertRaises(CascadeError, opener.open, 1, b"short", sealed)
        swapped = CascadeOpener(keys, UID_BOB, UID_ALICE)
        self.assertRaises(CascadeError, swapped.open, 1, MESSAGE_ID, sealed)
        self.assertEqual(opener.open(1, MESSAGE_ID, sealed), b"hello")

    def test_is_crypto_error(self) -> None:
        """When a caller catches CryptoError, then cascade failures are caught too."""
        self.assertTrue(issubclass(CascadeError, CryptoError))
        self.assertTrue(issubclass(CounterExhausted, CascadeError))


class CounterTests(SynchronousTestCase):
    """Counters only go up, in both the sealer and the opener."""

    def test_replay_refused(self) -> None:
        """When the same message is opened twice, then the second open is refused."""
        sealer, opener = make_pair()
        counter, sealed = sealer.seal(MESSAGE_ID, b"once")
        opener.open(counter, MESSAGE_ID, sealed)
        with self.assertRaises(CascadeError):
            opener.open(counter, MESSAGE_ID, sealed)

    def test_reorder_refused(self) -> None:
        """When message 2 is opened before message 1, then message 1 is refused."""
        sealer, opener = make_pair()
        first = sealer.seal(MESSAGE_ID, b"first")
        second = sealer.seal(MESSAGE_ID, b"second")
        self.assertEqual(opener.open(second[0], MESSAGE_ID, second[1]), b"second")
        self.assertRaises(CascadeError, opener.open, first[0], MESSAGE_ID, first[1])
        self.assertEqual(opener.last_counter, 2)

    def test_gap_accepted(self) -> None:
        """When a counter is skipped (a message lost), then the later one still opens."""
        sealer, opener = make_pair()
        sealer.seal(MESSAGE_ID, b"lost")
        counter, sealed = sealer.seal(MESSAGE_ID, b"kept")
        self.assertEqual(opener.open(counter, MESSAGE_ID, sealed), b"kept")

    def test_zero_counter_refused(self) -> None:
        """When counter 0 is presented, then it is refused without trying to decrypt."""
        _, opener = make_pair()
        self.assertRaises(CascadeError, opener.open, 0, MESSAGE_ID, bytes(OVERHEAD))

    def test_many_messages_unique_nonces(self) -> None:
        """When 300 identical messages are sealed, then counters, nonces and bytes never repeat."""
        sealer, opener = make_pair()
        counters: list[int] = []
        sealed_set: set[bytes] = set()
        nonces: set[bytes] = set()
        for _ in range(300):
            counter, sealed = sealer.seal(MESSAGE_ID, b"same text")
            counters.append(counter)
            sealed_set.add(sealed)
            nonces.update(layer_nonce(layer, counter) for layer in range(5))
            self.assertEqual(opener.open(counter, MESSAGE_ID, sealed), b"same text")
        self.assertEqual(counters, list(range(1, 301)))
        self.assertEqual(len(sealed_set), 300)
        self.assertEqual(len(nonces), 1500)

    def test_counter_wrap_refused(self) -> None:
        """When the counter reaches 2**64 - 1, then the next seal raises CounterExhausted."""
        keys, _ = make_keys()
        sealer = CascadeSealer(keys, UID_ALICE, UID_BOB, last_counter=MAX_COUNTER - 1)
        counter, sealed = sealer.seal(MESSAGE_ID, b"last")
        self.assertEqual(counter, MAX_COUNTER)
        opener = CascadeOpener(keys, UID_ALICE, UID_BOB)
        self.assertEqual(opener.open(counter, MESSAGE_ID, sealed), b"last")
        self.assertRaises(CounterExhausted, sealer.seal, MESSAGE_ID, b"wraps")
        self.assertEqual(sealer.last_counter, MAX_COUNTER)


class DirectionTests(SynchronousTestCase):
    """The two directions of a session are independent."""

    def test_directions_independent(self) -> None:
        """When both sides send, then each opens only its own direction, counters separate."""
        to_responder, to_initiator = make_keys()
        alice_seal = CascadeSealer(to_responder, UID_ALICE, UID_BOB)
        bob_seal = CascadeSealer(to_initiator, UID_BOB, UID_ALICE)
        bob_open = CascadeOpener(to_responder, UID_ALICE, UID_BOB)
        alice_open = CascadeOpener(to_initiator, UID_BOB, UID_ALICE)
        from_alice = alice_seal.seal(MESSAGE_ID, b"hi bob")
        from_bob = bob_seal.seal(MESSAGE_ID, b"hi alice")
        self.assertEqual((from_alice[0], from_bob[0]), (1, 1))
        self.assertNotEqual(from_alice[1], from_bob[1])
        self.assertRaises(CascadeError, alice_open.open, from_alice[0], MESSAGE_ID, from_alice[1])
        self.assertEqual(bob_open.open(from_alice[0], MESSAGE_ID, from_alice[1]), b"hi bob")
        self.assertEqual(alice_open.open(from_bob[0], MESSAGE_ID, from_bob[1]), b"hi alice")

    def test_reflection_refused(self) -> None:
        """When Alice's own message is reflected back to her, then she cannot open it."""
        to_responder, to_initiator = make_keys()
        counter, sealed = CascadeSealer(to_responder, UID_ALICE, UID_BOB).seal(MESSAGE_ID, b"x")
        alice_open = CascadeOpener(to_initiator, UID_BOB, UID_ALICE)
        self.assertRaises(CascadeError, alice_open.open, counter, MESSAGE_ID, sealed)
