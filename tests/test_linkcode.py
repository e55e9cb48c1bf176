"""Tests for :mod:`jarvis.crypto.linkcode`.

The byte-exact vector is the card of RFC 8032's first test key (secret
``9d61b19d...1cae7f60``), named "Alice", reachable at ``192.0.2.7:7770`` and
``[2001:db8::1]:7770``, created at Unix time 1700000000.  Ed25519 signatures are deterministic,
so the link is fully determined by these inputs; a change to the format shows up here first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains
from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto.errors import (
    AlteredCard,
    BadSignature,
    DamagedLink,
    LinkCodeError,
    MalformedCard,
    MalformedCardFile,
    NotALink,
    UnsupportedVersion,
)
from jarvis.crypto.identity import IdentityKey
from jarvis.crypto.linkcode import (
    MAX_ADDRESSES,
    MAX_LINK_CHARS,
    ContactCard,
    card_from_json,
    card_to_json,
    check_address,
    decode_link,
    encode_link,
    make_card,
    verify_card,
)

RFC8032_SECRET_1 = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
VECTOR_ADDRESSES = ("192.0.2.7:7770", "[2001:db8::1]:7770")
VECTOR_CREATED = 1_700_000_000
VECTOR_PAYLOAD = bytes.fromhex(
    # version, public key
    "01"
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    # name length, "Alice", address count, two length-prefixed addresses
    "0005"
    "416c696365"
    "02"
    "0e"
    "3139322e302e322e373a37373730"
    "12"
    "5b323030313a6462383a3a315d3a37373730"
    # created
    "000000006553f100"
    # signature
    "9c2ced127e734913fa7a7ec2e6d1f8c83fe34a50165316bbd49bc66224f18fc9"
    "97e0fe2e0045c49f5d4db36a7f86196b69ab98176ed7ed9e373974abba4d2107"
)
VECTOR_LINK = (
    "jarvis://ahlvvgabqkyqvn6vjp7nhslea45a5yls6pnkmizfv4bbu2hxa5iruaafifwgsy3faihdcojsfyyc4mrog45d"
    "onzxgajfwmrqgaytuzdcha5dumk5hi3tonzqaaaaaadfkpyqbhbm5ujh442jcp5hu7wc43i7rsb74nffafstc255jg6g"
    "mispdd6js7qp4lqaixcj6xknwnvh7bqznnu2xgaxn3l63hrxhf2kxosneed354zqka"
)
VECTOR_JSON = "\n".join(
    [
        "{",
        '  "jarvis_card": 1,',
        '  "uid": "a3r73d62fg5wbk2zkv66mhw3blwnwiyrgs7dbz23ivpy4g3zf6uq",',
        '  "name": "Alice",',
        '  "addresses": [',
        '    "192.0.2.7:7770",',
        '    "[2001:db8::1]:7770"',
        "  ],",
        '  "created": 1700000000,',
        '  "public_key": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",',
        '  "signature": "nCztEn5zSRP6en7C5tH4yD_jSlAWUxa71JvGYiTxj8mX4P4uAEXEn11Ns2p_'
        'hhlraauYF27X7Z43OXSruk0hBw"',
        "}",
        "",
    ]
)
BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"

ports = st.integers(min_value=1, max_value=65535)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address}]"),
    domains(max_length=240),
)
addresses = st.builds(lambda host, port: f"{host}:{port}", hosts, ports)
names = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
    min_size=1,
    max_size=64,
).filter(lambda name: name == name.strip())
address_lists = st.lists(addresses, max_size=MAX_ADDRESSES, unique=True)
times = st.integers(min_value=0, max_value=2**64 - 1)


def make_identity() -> IdentityKey:
    """Return the identity of RFC 8032's first test key."""
    return IdentityKey.from_private_bytes(RFC8032_SECRET_1)


def make_vector_card() -> ContactCard:
    """Return the card of the documented vector."""
    return make_card(make_identity(), "Alice", VECTOR_ADDRESSES, VECTOR_CREATED)


def link_for(payload: bytes) -> str:
    """Return a link for *payload* (body + signature) with a correct checksum."""
    data = payload + hashlib.sha256(payload).digest()[:4]
    return "jarvis://" + base64.b32encode(data).decode().rstrip("=").lower()


class VectorTests(SynchronousTestCase):
    def test_link_vector(self) -> None:
        """When the vector card is encoded, then the link is byte-for-byte the recorded one."""
        card = make_vector_card()
        self.assertEqual(card.body() + card.signature, VECTOR_PAYLOAD)
        self.assertEqual(link_for(VECTOR_PAYLOAD), VECTOR_LINK)
        self.assertEqual(encode_link(card), VECTOR_LINK)
        self.assertEqual(decode_link(VECTOR_LINK), card)

    def test_json_vector(self) -> None:
        """When the vector card is written as a .jcard, then the text is the recorded one."""
        card = make_vector_card()
        self.assertEqual(card_to_json(card), VECTOR_JSON)
        self.assertEqual(card_from_json(VECTOR_JSON), card)

    def test_uid(self) -> None:
        """When a card's uid is read, then it is its key's uid."""
        self.assertEqual(make_vector_card().uid, make_identity().uid)

    def test_copy_paste_friendly(self) -> None:
        """When a link is made, then it holds only lowercase letters, digits 2-7 and the prefix."""
        body = VECTOR_LINK.removeprefix("jarvis://")
        self.assertTrue(set(body) <= set(BASE32_ALPHABET))


class RoundTripTests(SynchronousTestCase):
    identity = IdentityKey.generate()

    @settings(deadline=None)
    @given(names, address_lists, times)
    def test_link_round_trip(self, name: str, addrs: list[str], created: int) -> None:
        """When any valid card is encoded as a link, then decoding gives the same card."""
        card = make_card(self.identity, name, addrs, created)
        link = encode_link(card)
        self.assertLessEqual(len(link), MAX_LINK_CHARS)
        self.assertEqual(decode_link(link), card)

    @settings(deadline=None)
    @given(names, address_lists, times)
    def test_json_round_trip(self, name: str, addrs: list[str], created: int) -> None:
        """When any valid card is written as JSON, then reading it gives the same card."""
        card = make_card(self.identity, name, addrs, created)
        self.assertEqual(card_from_json(card_to_json(card)), card)
        self.assertEqual(card_from_json(card_to_json(card).encode("utf-8")), card)

    def test_largest_card_fits(self) -> None:
        """When a card has the longest name and 8 longest addresses, then its link fits."""
        host = ".".join(["a" * 61] * 4)[:240]
        addrs = [f"{host}.x{i}:65535" for i in range(MAX_ADDRESSES)]
        card = make_card(self.identity, "\U0001f422" * 64, addrs, 2**64 - 1)
        link = encode_link(card)
        self.assertLessEqual(len(link), MAX_LINK_CHARS)
        self.assertEqual(decode_link(link), card)

    def test_white_space_ignored(self) -> None:
        """When a link is wrapped over lines and indented, then it still decodes."""
        wrapped = "\n  ".join(VECTOR_LINK[i : i + 60] for i in range(0, len(VECTOR_LINK), 60))
        self.assertEqual(decode_link(f"  {wrapped}\r\n"), make_vector_card())


class DamageTests(SynchronousTestCase):
    def test_every_single_character_change(self) -> None:
        """When any one character of a link is replaced, deleted or doubled, it is rejected."""
        replacements = BASE32_ALPHABET + "A0189:/=+-_.é"
        for index, original in enumerate(VECTOR_LINK):
            variants = [VECTOR_LINK[:index] + VECTOR_LINK[index + 1 :]]
            variants.append(VECTOR_LINK[:index] + original + VECTOR_LINK[index:])
            variants += [
                VECTOR_LINK[:index] + char + VECTOR_LINK[index + 1 :]
                for char in replacements
                if char != original
            ]
            for variant in variants:
                self.assertRaises(LinkCodeError, decode_link, variant)

    def test_every_truncation(self) -> None:
        """When a link is cut at any length, then DamagedLink is raised."""
        for length in range(1, len(VECTOR_LINK)):
            exc = self.assertRaises(DamagedLink, decode_link, VECTOR_LINK[:length])
            self.assertNotIn("\n", str(exc))

    def test_empty(self) -> None:
        """When the text is empty or blank, then NotALink is raised."""
        self.assertRaises(NotALink, decode_link, "")
        self.assertRaises(NotALink, decode_link, " \n ")

    def test_not_a_link(self) -> None:
        """When the text is something else, then NotALink says what a link looks like."""
        for text in ["https://example.org/", "hello", "JARVIS://" + VECTOR_LINK[9:], b"jarvis://"]:
            exc = self.assertRaises(NotALink, decode_link, text)
            self.assertIn("jarvis://", str(NotALink()))
            self.assertNotIn("\n", str(exc))

    def test_uppercase_body(self) -> None:
        """When the body was upper-cased, then DamagedLink is raised."""
        self.assertRaises(DamagedLink, decode_link, "jarvis://" + VECTOR_LINK[9:].upper())

    def test_too_long(self) -> None:
        """When a link is longer than the maximum, then it is refused before decoding."""
        exc = self.assertRaises(DamagedLink, decode_link, "jarvis://" + "a" * MAX_LINK_CHARS)
        self.assertIn("longer", str(exc))


class AlteredTests(SynchronousTestCase):
    def test_altered_name(self) -> None:
        """When the name is changed and the checksum recomputed, then AlteredCard is raised."""
        payload = VECTOR_PAYLOAD.replace(b"Alice", b"Mally")
        exc = self.assertRaises(AlteredCard, decode_link, link_for(payload))
        self.assertIn("altered", str(exc))
        self.assertIsInstance(exc, BadSignature)

    def test_altered_address(self) -> None:
        """When an address is changed and the checksum recomputed, then AlteredCard is raised."""
        payload = VECTOR_PAYLOAD.replace(b"192.0.2.7", b"192.0.2.9")
        self.assertRaises(AlteredCard, decode_link, link_for(payload))

    def test_altered_created(self) -> None:
        """When the creation time is changed, then AlteredCard is raised."""
        payload = VECTOR_PAYLOAD.replace(bytes.fromhex("6553f100"), bytes.fromhex("6553f101"))
        self.assertRaises(AlteredCard, decode_link, link_for(payload))

    def test_other_key(self) -> None:
        """When the public key is replaced, then AlteredCard is raised."""
        other = IdentityKey.generate().public_bytes
        payload = VECTOR_PAYLOAD[:1] + other + VECTOR_PAYLOAD[33:]
        self.assertRaises(AlteredCard, decode_link, link_for(payload))

    def test_verify_card(self) -> None:
        """When a card is built with another's signature, then verify_card refuses it."""
        card = make_vector_card()
        forged = ContactCard(
            card.public_key, "Mallory", card.addresses, card.created, card.signature
        )
        verify_card(card)
        self.assertRaises(AlteredCard, verify_card, forged)


class VersionAndFieldTests(SynchronousTestCase):
    def test_unsupported_version(self) -> None:
        """When the version byte is 3 and the checksum right, then UnsupportedVersion is raised."""
        exc = self.assertRaises(
            UnsupportedVersion, decode_link, link_for(b"\x03" + VECTOR_PAYLOAD[1:])
        )
        self.assertIn("version 3", str(exc))

    def test_trailing_bytes(self) -> None:
        """When the body has extra bytes, then MalformedCard is raised."""
        body, signature = VECTOR_PAYLOAD[:-64], VECTOR_PAYLOAD[-64:]
        self.assertRaises(MalformedCard, decode_link, link_for(body + b"\x00" + signature))

    def test_field_past_end(self) -> None:
        """When a length runs past the end of the body, then MalformedCard is raised."""
        payload = VECTOR_PAYLOAD[:33] + b"\xff\xff" + VECTOR_PAYLOAD[35:]
        self.assertRaises(MalformedCard, decode_link, link_for(payload))
        self.assertRaises(MalformedCard, decode_link, link_for(b"\x01" + bytes(64)))

    def test_bad_field_values(self) -> None:
        """When a checksummed card holds an invalid name or address, then MalformedCard."""
        for old, new in [
            (b"\x00\x05Alice", b"\x00\x05Al\nce"),
            (b"\x00\x05Alice", b"\x00\x05Al\xffce"),
            (b"192.0.2.7:7770", b"192.0.2.7:0000"),
            (b"\x0e192.0.2.7", b"\x0e\xc3\xa92.0.2.7"),
        ]:
            payload = VECTOR_PAYLOAD.replace(old, new)
            self.assertNotEqual(payload, VECTOR_PAYLOAD)
            exc = self.assertRaises(MalformedCard, decode_link, link_for(payload))
            self.assertNotIn("\n", str(exc))

    def test_make_card_refuses(self) -> None:
        """When make_card gets an invalid name, address list or time, then MalformedCard."""
        identity = make_identity()
        for name, addrs, created in [
            ("x" * 65, [], 0),
            ("", [], 0),
            ("Alice", [f"10.0.0.{i}:1" for i in range(MAX_ADDRESSES + 1)], 0),
            ("Alice", ["10.0.0.1:1", "10.0.0.1:1"], 0),
            ("Alice", ["10.0.0.1"], 0),
            ("Alice", [], -1),
            ("Alice", [], 2**64),
            ("Alice", [], True),
            ("Alice", "10.0.0.1:1", 0),
        ]:
            self.assertRaises(MalformedCard, make_card, identity, name, addrs, created)


class AddressTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """When an address is host:port with an IPv4, bracketed IPv6 or DNS host, it is valid."""
        for address in [
            "192.0.2.7:7770",
            "[::1]:7770",
            "[2001:db8::1]:1",
            "[::ffff:192.0.2.1]:65535",
            "localhost:7770",
            "alice.example.org:443",
            "Host-1.Example.COM:80",
            "xn--bcher-kva.example:7770",
            "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuv.onion:7770",
        ]:
            self.assertEqual(check_address(address), address)

    def test_invalid(self) -> None:
        """When an address is malformed, then ValueError names it."""
        for address in [
            "",
            "192.0.2.7",
            "192.0.2.7:",
            "192.0.2.7:0",
            "192.0.2.7:65536",
            "192.0.2.7:07770",
            "192.0.2.7:+80",
            "::1:7770",
            "[::1]",
            "[::1:7770",
            "[fe80::1%eth0]:7770",
            "[192.0.2.7]:7770",
            "256.0.0.1:7770",
            "1.2.3:7770",
            "-bad.example:7770",
            "bad-.example:7770",
            "under_score.example:7770",
            "example.org.:7770",
            "a..b:7770",
            ":7770",
            "bücher.example:7770",
            "a b:7770",
            ("a" * 63 + ".") * 4 + "a:1",
            42,
        ]:
            self.assertRaises(ValueError, check_address, address)


class CardFileTests(SynchronousTestCase):
    def edited(self, change: Any) -> str:
        """Return the vector card's JSON after *change* edited the parsed object in place."""
        document = json.loads(VECTOR_JSON)
        change(document)
        return json.dumps(document)

    def test_altered_name(self) -> None:
        """When the name in a card file is changed, then AlteredCard is raised."""
        text = self.edited(lambda d: d.__setitem__("name", "Mallory"))
        self.assertRaises(AlteredCard, card_from_json, text)

    def test_altered_address(self) -> None:
        """When an address is added to a card file, then AlteredCard is raised."""
        text = self.edited(lambda d: d["addresses"].append("203.0.113.5:7770"))
        self.assertRaises(AlteredCard, card_from_json, text)

    def test_uid_mismatch(self) -> None:
        """When the uid does not match the public key, then AlteredCard says so."""
        other = IdentityKey.generate().uid
        exc = self.assertRaises(
            AlteredCard, card_from_json, self.edited(lambda d: d.__setitem__("uid", other))
        )
        self.assertIn("uid", str(exc))

    def test_not_json(self) -> None:
        """When the file is not a JSON object, then MalformedCardFile is raised."""
        for text in ["", "{", "[]", "jarvis://abc", "\ud800", b"\xff", "{}" * 10_000]:
            exc = self.assertRaises(MalformedCardFile, card_from_json, text)
            self.assertNotIn("\n", str(exc))

    def test_missing_or_mistyped(self) -> None:
        """When a field is missing or of the wrong type, then MalformedCardFile is raised."""
        for name in json.loads(VECTOR_JSON):
            text = self.edited(lambda d, n=name: d.pop(n))
            self.assertRaises(MalformedCardFile, card_from_json, text)
        for name, value in [
            ("name", 5),
            ("addresses", "192.0.2.7:7770"),
            ("addresses", [1]),
            ("created", "1700000000"),
            ("created", 1.5),
            ("public_key", "not base64!"),
            ("signature", "QUJD="),
            ("jarvis_card", "1"),
        ]:
            text = self.edited(lambda d, n=name, v=value: d.__setitem__(n, v))
            self.assertRaises(MalformedCardFile, card_from_json, text)

    def test_bad_values(self) -> None:
        """When a field is well typed but invalid, then MalformedCard is raised."""
        for name, value in [
            ("name", "x" * 65),
            ("addresses", ["nowhere"]),
            ("created", -5),
            ("public_key", "AAAA"),
        ]:
            text = self.edited(lambda d, n=name, v=value: d.__setitem__(n, v))
            self.assertRaises(MalformedCard, card_from_json, text)

    def test_unsupported_version(self) -> None:
        """When the card version is 3, then UnsupportedVersion is raised."""
        text = self.edited(lambda d: d.__setitem__("jarvis_card", 3))
        self.assertRaises(UnsupportedVersion, card_from_json, text)

    def test_created_is_big_endian_seconds(self) -> None:
        """When the vector's created field is read, then it is the Unix time big-endian."""
        self.assertEqual(struct.unpack(">Q", VECTOR_PAYLOAD[-72:-64])[0], VECTOR_CREATED)


def vector_mailbox() -> Any:
    from jarvis.crypto.linkcode import CardMailbox

    return CardMailbox(
        "jarvis-mailbox:" + "a" * 52 + "@192.0.2.8:7780", b"i" * 24, b"k" * 32, b"p" * 112
    )


class MailboxCardTests(SynchronousTestCase):
    """Version 2: a card carrying its owner's mailbox queue (issue 15)."""

    def test_round_trip_link_and_file(self) -> None:
        """When a card carries a mailbox, then its link starts with version byte 2 and both
        the link and the card file give back the same card, mailbox included."""
        key = IdentityKey.from_private_bytes(RFC8032_SECRET_1)
        card = make_card(key, "Alice", VECTOR_ADDRESSES, VECTOR_CREATED, vector_mailbox())
        link = encode_link(card)
        text = link[len("jarvis://") :].upper()
        payload = base64.b32decode(text + "=" * (-len(text) % 8))
        self.assertEqual(payload[0], 2)
        self.assertEqual(decode_link(link), card)
        self.assertEqual(decode_link(link).mailbox, vector_mailbox())
        text = card_to_json(card)
        self.assertEqual(json.loads(text)["jarvis_card"], 2)
        self.assertEqual(card_from_json(text), card)

    def test_card_without_mailbox_stays_version_1(self) -> None:
        """When a card has no mailbox, then it is written exactly as before (version 1), so
        older Jarvis versions still read it."""
        key = IdentityKey.from_private_bytes(RFC8032_SECRET_1)
        card = make_card(key, "Alice", VECTOR_ADDRESSES, VECTOR_CREATED)
        self.assertEqual(encode_link(card), VECTOR_LINK)
        self.assertIsNone(decode_link(VECTOR_LINK).mailbox)

    def test_mailbox_is_signed(self) -> None:
        """When the mailbox of a signed card is replaced, or one is attached to a version 1
        card's signature, then the card is refused as altered."""
        from dataclasses import replace

        key = IdentityKey.from_private_bytes(RFC8032_SECRET_1)
        card = make_card(key, "Alice", VECTOR_ADDRESSES, VECTOR_CREATED, vector_mailbox())
        other = replace(vector_mailbox(), sender_id=b"j" * 24)
        self.assertRaises(AlteredCard, decode_link, encode_link(replace(card, mailbox=other)))
        plain = make_card(key, "Alice", VECTOR_ADDRESSES, VECTOR_CREATED)
        attached = replace(plain, mailbox=vector_mailbox())
        self.assertRaises(AlteredCard, decode_link, encode_link(attached))
        self.assertRaises(AlteredCard, card_from_json, card_to_json(attached))

    def test_malformed_mailbox(self) -> None:
        """When the mailbox link is not a jarvis-mailbox: link or a field has a wrong size,
        then MalformedCard is raised; a card file missing its mailbox is a malformed file."""
        from dataclasses import replace

        from jarvis.crypto.linkcode import CardMailbox

        self.assertRaises(MalformedCard, replace, vector_mailbox(), link="http://x")
        self.assertRaises(MalformedCard, replace, vector_mailbox(), prekey=b"p" * 111)
        self.assertRaises(MalformedCard, CardMailbox, "jarvis-mailbox:x", b"", b"k" * 32, b"")
        key = IdentityKey.from_private_bytes(RFC8032_SECRET_1)
        card = make_card(key, "Alice", VECTOR_ADDRESSES, VECTOR_CREATED, vector_mailbox())
        document = json.loads(card_to_json(card))
        del document["mailbox"]
        self.assertRaises(MalformedCardFile, card_from_json, json.dumps(document))
