"""Signed contact cards, exchanged as ``jarvis://`` link codes or ``.jcard`` files.

A :class:`ContactCard` says "the key K, called N, can be reached at A1..An", signed by K.  It is
self-certifying: the uid is derived from K, and the signature proves the name and addresses come
from K's owner.  Whether K is really the friend you think it is, only comparing the fingerprint
or safety code tells.

**Link code, version 1.**  ``"jarvis://" + base32(payload)``, lowercase, no padding (alphabet
``a-z2-7``: no ``+``, ``/`` or ``=``, nothing a terminal, chat app or URL parser mangles).
The payload, integers big-endian::

    body       version          1  0x01
               public key      32  raw Ed25519
               name length      2  bytes of UTF-8
               name             n  UTF-8, at most 64 characters
               address count    1  0..8
               per address:     1  length, then "host:port" in ASCII (at most 255 bytes)
               created          8  Unix time in seconds
    signature                  64  Ed25519 over b"jarvis card v1\\0" + body
    checksum                    4  first 4 bytes of SHA-256(body + signature)

**Link code, version 2** (a card carrying a mailbox queue, issue 15): the version byte is
``0x02``, the signature context ``b"jarvis card v2\\0"``, and after ``created`` the body goes on
with where the card's owner collects deposits from people who added it from this card::

               mailbox link len 1  ASCII, ``jarvis-mailbox:<pin>@<host>:<port>`` (<= 255 bytes)
               mailbox link     n
               sender id       24  the id of the owner's introduction queue to deposit into
               sender key      32  the Ed25519 seed that signs those deposits
               prekey         112  the owner's current signed prekey (jarvis.crypto.mailseal)

A card without a mailbox is still written as version 1, so older Jarvis versions read it;
both versions are read.

Decoding checks, in order: the ``jarvis://`` prefix (:class:`NotALink`), the alphabet, canonical
base32 and the checksum (:class:`DamagedLink`: any lost or changed character), the version
(:class:`UnsupportedVersion`), the field layout and values (:class:`MalformedCard`), and the
signature (:class:`AlteredCard`).  The whole link is at most :data:`MAX_LINK_CHARS` characters;
white space anywhere in it (line wrapping) is ignored.

**Card file.**  The same card as a JSON object: ``"jarvis_card": 1``, ``uid``, ``name``,
``addresses``, ``created``, and ``public_key`` and ``signature`` in unpadded base64url; a card
with a mailbox is ``"jarvis_card": 2`` with ``mailbox``: ``{link, sender_id, sender_key,
prekey}`` (the bytes in unpadded base64url).  The
signature is the same as the link's, so a card converts between the two forms.

Pure code: no reactor, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jarvis.crypto.encoding import b64url_decode, b64url_encode, get_field, loads_object
from jarvis.crypto.errors import (
    AlteredCard,
    BadSignature,
    DamagedLink,
    MalformedCard,
    MalformedCardFile,
    NotALink,
    UnsupportedVersion,
)
from jarvis.crypto.identity import IdentityKey, check_name, uid_for_public_bytes, verify_signature

#: The scheme every link code starts with.
LINK_PREFIX = "jarvis://"
#: The card format version of a card without a mailbox (in links and card files alike).
CARD_VERSION = 1
#: The card format version of a card carrying a mailbox queue (:class:`CardMailbox`).
CARD_VERSION_MAILBOX = 2
#: The versions this module reads.
READ_VERSIONS = (CARD_VERSION, CARD_VERSION_MAILBOX)
#: At most this many addresses in a card.
MAX_ADDRESSES = 8
#: At most this many bytes in one "host:port" address.
MAX_ADDRESS_BYTES = 255
#: The longest link code accepted (a card with the longest name and 8 longest addresses fits).
MAX_LINK_CHARS = 4096
#: The largest ``.jcard`` file accepted.
MAX_CARD_FILE_BYTES = 16 * 1024

_SIGNATURE_CONTEXT = b"jarvis card v1\x00"
_SIGNATURE_CONTEXT_MAILBOX = b"jarvis card v2\x00"
_MAILBOX_PREFIX = "jarvis-mailbox:"
_QUEUE_ID_BYTES = 24
_QUEUE_KEY_BYTES = 32
_PREKEY_BYTES = 112
_PUBLIC_BYTES = 32
_SIGNATURE_BYTES = 64
_CHECKSUM_BYTES = 4
_MAX_CREATED = 2**64 - 1
_BASE32_TEXT = re.compile(r"[a-z2-7]*")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")


def check_address(address: object) -> str:
    """Return *address* if it is a valid ``host:port``, else raise :class:`ValueError`.

    The host is an IPv4 address (``192.0.2.7``), an IPv6 address in brackets (``[::1]``, no
    zone id) or a DNS host name (letters, digits and hyphens; the last label not all digits);
    the port is 1..65535 without leading zeros.  At most :data:`MAX_ADDRESS_BYTES` bytes.
    """
    if not isinstance(address, str):
        raise ValueError("an address must be text")
    if not address.isascii() or len(address) > MAX_ADDRESS_BYTES:
        raise ValueError(f"address {address!r:.80} is not ASCII or longer than 255 bytes")
    host, colon, port = address.rpartition(":")
    if not colon or not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"address {address!r} needs a port 1..65535 (host:port)")
    if host.startswith("["):
        if not host.endswith("]") or "%" in host:
            raise ValueError(f"address {address!r} has a malformed IPv6 host")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"address {address!r} has a malformed IPv6 host") from None
        return address
    if ":" in host:
        raise ValueError(f"address {address!r}: write an IPv6 host in brackets, [::1]:7770")
    labels = host.split(".")
    if labels[-1].isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"address {address!r} has a malformed IPv4 host") from None
        return address
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"address {address!r} has a malformed host name")
    return address


def _field_error(error: ValueError) -> MalformedCard:
    return MalformedCard(str(error))


@dataclass(frozen=True)
class CardMailbox:
    """Where people who add the card's owner deposit for it before they ever share a session:
    the owner's mailbox link and the sender half of its introduction queue, and the owner's
    current signed prekey to seal to.  Construction checks sizes and the link's form
    (:class:`MalformedCard`); the daemon checks the link and prekey further before using them.
    """

    link: str
    sender_id: bytes
    sender_key: bytes
    prekey: bytes

    def __post_init__(self) -> None:
        link = self.link
        if (
            not isinstance(link, str)
            or not link.isascii()
            or not link.startswith(_MAILBOX_PREFIX)
            or len(link) > MAX_ADDRESS_BYTES
        ):
            raise MalformedCard("the mailbox link is not a jarvis-mailbox: link")
        for value, size, what in (
            (self.sender_id, _QUEUE_ID_BYTES, "mailbox sender id"),
            (self.sender_key, _QUEUE_KEY_BYTES, "mailbox sender key"),
            (self.prekey, _PREKEY_BYTES, "mailbox prekey"),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise MalformedCard(f"the {what} is not {size} bytes")

    def encode(self) -> bytes:
        """The bytes that follow ``created`` in a version 2 body."""
        link = self.link.encode("ascii")
        return struct.pack(">B", len(link)) + link + self.sender_id + self.sender_key + self.prekey

    @classmethod
    def decode(cls, data: bytes) -> CardMailbox:
        """Parse exactly the bytes :meth:`encode` gives (also the mailbox part of a group
        member's addresses, ``jarvis.protocol.group_state.encode_addresses``).

        :raises MalformedCard: if they do not parse exactly.
        """
        reader = _Reader(bytes(data))
        raw_link = reader.take(reader.uint(">B", "mailbox link length"), "mailbox link")
        mailbox = cls(
            _text(raw_link, "ascii", "mailbox link"),
            reader.take(_QUEUE_ID_BYTES, "mailbox sender id"),
            reader.take(_QUEUE_KEY_BYTES, "mailbox sender key"),
            reader.take(_PREKEY_BYTES, "mailbox prekey"),
        )
        reader.finish()
        return mailbox


@dataclass(frozen=True)
class ContactCard:
    """A contact's public key, name, addresses and creation time, signed by that key.

    Construction checks every field (:class:`MalformedCard` otherwise) but not the signature:
    use :func:`verify_card`, which :func:`decode_link` and :func:`card_from_json` call.
    """

    public_key: bytes
    name: str
    addresses: tuple[str, ...]
    created: int
    signature: bytes
    #: the owner's mailbox queue for new contacts (version 2), or ``None`` (version 1)
    mailbox: CardMailbox | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != _PUBLIC_BYTES:
            raise MalformedCard(f"the public key is not {_PUBLIC_BYTES} bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != _SIGNATURE_BYTES:
            raise MalformedCard(f"the signature is not {_SIGNATURE_BYTES} bytes")
        try:
            check_name(self.name)
        except ValueError as e:
            raise _field_error(e) from None
        if isinstance(self.addresses, str) or not isinstance(self.addresses, Sequence):
            raise MalformedCard("the addresses are not a list")
        addresses = tuple(self.addresses)
        object.__setattr__(self, "addresses", addresses)
        if len(addresses) > MAX_ADDRESSES:
            raise MalformedCard(f"more than {MAX_ADDRESSES} addresses")
        if len(set(addresses)) != len(addresses):
            raise MalformedCard("an address is listed twice")
        try:
            for address in addresses:
                check_address(address)
        except ValueError as e:
            raise _field_error(e) from None
        created = self.created
        if not isinstance(created, int) or isinstance(created, bool):
            raise MalformedCard("the creation time is not an integer")
        if not 0 <= created <= _MAX_CREATED:
            raise MalformedCard("the creation time is out of range")
        if self.mailbox is not None and not isinstance(self.mailbox, CardMailbox):
            raise MalformedCard("the mailbox is not a CardMailbox")

    @property
    def version(self) -> int:
        """The format version this card is written in (2 when it carries a mailbox)."""
        return CARD_VERSION if self.mailbox is None else CARD_VERSION_MAILBOX

    @property
    def uid(self) -> str:
        """The uid of the card's public key."""
        return uid_for_public_bytes(self.public_key)

    def body(self) -> bytes:
        """The canonical encoding of the signed fields (the link's body, see the module doc)."""
        name = self.name.encode("utf-8")
        parts = [
            struct.pack(">B", self.version),
            self.public_key,
            struct.pack(">H", len(name)),
            name,
            struct.pack(">B", len(self.addresses)),
        ]
        for address in self.addresses:
            parts += [struct.pack(">B", len(address)), address.encode("ascii")]
        parts.append(struct.pack(">Q", self.created))
        if self.mailbox is not None:
            parts.append(self.mailbox.encode())
        return b"".join(parts)

    def signed_data(self) -> bytes:
        """The exact bytes the signature covers: a context label, then :meth:`body`."""
        context = _SIGNATURE_CONTEXT if self.mailbox is None else _SIGNATURE_CONTEXT_MAILBOX
        return context + self.body()


def make_card(
    identity: IdentityKey,
    name: str,
    addresses: Sequence[str],
    created: int,
    mailbox: CardMailbox | None = None,
) -> ContactCard:
    """Return the card of *identity*, signed by it.

    :param created: the creation time, Unix seconds (from the caller's injected clock).
    :param mailbox: the owner's introduction queue (makes a version 2 card), if any.
    :raises MalformedCard: if the name, an address or the time is invalid.
    """
    unsigned = ContactCard(
        public_key=identity.public_bytes,
        name=name,
        addresses=tuple(addresses),
        created=created,
        signature=bytes(_SIGNATURE_BYTES),
        mailbox=mailbox,
    )
    signature = identity.sign(unsigned.signed_data())
    return ContactCard(identity.public_bytes, name, unsigned.addresses, created, signature, mailbox)


def verify_card(card: ContactCard) -> None:
    """Check the card's signature against its own public key.

    :raises AlteredCard: if the signature does not match.
    """
    try:
        verify_signature(card.public_key, card.signature, card.signed_data())
    except BadSignature:
        raise AlteredCard() from None


def _checksum(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:_CHECKSUM_BYTES]


def encode_link(card: ContactCard) -> str:
    """Return the ``jarvis://`` link code of *card* (see the layout in the module docstring)."""
    signed = card.body() + card.signature
    payload = signed + _checksum(signed)
    return LINK_PREFIX + base64.b32encode(payload).decode("ascii").rstrip("=").lower()


def _b32decode_canonical(text: str) -> bytes:
    if not _BASE32_TEXT.fullmatch(text):
        raise DamagedLink("it contains characters that are not in a link code")
    try:
        payload = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise DamagedLink("it was cut off") from None
    if base64.b32encode(payload).decode("ascii").rstrip("=").lower() != text:
        raise DamagedLink("its last character was changed or cut off")
    return payload


class _Reader:
    """A cursor over the body, raising :class:`MalformedCard` when a field runs past the end."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise MalformedCard(f"the {what} runs past the end of the card")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def uint(self, fmt: str, what: str) -> int:
        value: int = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]
        return value

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise MalformedCard(f"{len(self._data) - self._offset} unexpected bytes at the end")


def _text(data: bytes, encoding: str, what: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise MalformedCard(f"the {what} is not valid {encoding}") from None


def decode_link(text: str) -> ContactCard:
    """Return the card in a ``jarvis://`` link code, after checking it completely.

    White space anywhere in *text* is ignored (a link wrapped over several lines still works).

    :raises NotALink: if the text is not a link code at all.
    :raises DamagedLink: if it is truncated or a character was changed (checksum).
    :raises UnsupportedVersion: if a newer Jarvis made it.
    :raises MalformedCard: if a field is invalid.
    :raises AlteredCard: if the signature does not match (the content was altered).
    """
    if not isinstance(text, str):
        raise NotALink("it is not text")
    text = "".join(text.split())
    if not text:
        raise NotALink("it is empty")
    if not text.startswith(LINK_PREFIX):
        if LINK_PREFIX.startswith(text):
            raise DamagedLink("it was cut off")
        raise NotALink()
    if len(text) > MAX_LINK_CHARS:
        raise DamagedLink(f"it is longer than {MAX_LINK_CHARS} characters")
    payload = _b32decode_canonical(text[len(LINK_PREFIX) :])
    minimum = 1 + _SIGNATURE_BYTES + _CHECKSUM_BYTES
    if len(payload) < minimum:
        raise DamagedLink("it was cut off")
    signed, checksum = payload[:-_CHECKSUM_BYTES], payload[-_CHECKSUM_BYTES:]
    if _checksum(signed) != checksum:
        raise DamagedLink()
    if signed[0] not in READ_VERSIONS:
        raise UnsupportedVersion(
            f"card version {signed[0]}, this Jarvis reads {CARD_VERSION_MAILBOX} and older"
        )
    body, signature = signed[:-_SIGNATURE_BYTES], signed[-_SIGNATURE_BYTES:]
    reader = _Reader(body)
    reader.take(1, "version")
    public_key = reader.take(_PUBLIC_BYTES, "public key")
    name = _text(reader.take(reader.uint(">H", "name length"), "name"), "utf-8", "name")
    addresses = []
    for _ in range(reader.uint(">B", "address count")):
        raw = reader.take(reader.uint(">B", "address length"), "address")
        addresses.append(_text(raw, "ascii", "address"))
    created = reader.uint(">Q", "creation time")
    mailbox = None
    if signed[0] == CARD_VERSION_MAILBOX:
        raw_link = reader.take(reader.uint(">B", "mailbox link length"), "mailbox link")
        mailbox = CardMailbox(
            _text(raw_link, "ascii", "mailbox link"),
            reader.take(_QUEUE_ID_BYTES, "mailbox sender id"),
            reader.take(_QUEUE_KEY_BYTES, "mailbox sender key"),
            reader.take(_PREKEY_BYTES, "mailbox prekey"),
        )
    reader.finish()
    card = ContactCard(public_key, name, tuple(addresses), created, signature, mailbox)
    verify_card(card)
    return card


def card_to_json(card: ContactCard) -> str:
    """Return the ``.jcard`` file text of *card*: an indented JSON object ending in a newline."""
    document: dict[str, Any] = {
        "jarvis_card": card.version,
        "uid": card.uid,
        "name": card.name,
        "addresses": list(card.addresses),
        "created": card.created,
        "public_key": b64url_encode(card.public_key),
        "signature": b64url_encode(card.signature),
    }
    if card.mailbox is not None:
        document["mailbox"] = {
            "link": card.mailbox.link,
            "sender_id": b64url_encode(card.mailbox.sender_id),
            "sender_key": b64url_encode(card.mailbox.sender_key),
            "prekey": b64url_encode(card.mailbox.prekey),
        }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def card_from_json(text: str | bytes) -> ContactCard:
    """Return the card in a ``.jcard`` file's text, after checking it completely.

    :raises MalformedCardFile: if the text is not a card JSON object with the required fields.
    :raises UnsupportedVersion: if a newer Jarvis made it.
    :raises MalformedCard: if a field's value is invalid.
    :raises AlteredCard: if the uid does not match the public key or the signature does not
        match the content.
    """
    try:
        obj = loads_object(text, max_bytes=MAX_CARD_FILE_BYTES)
        version = get_field(obj, "jarvis_card", int)
    except ValueError as e:
        raise MalformedCardFile(str(e)) from None
    if version not in READ_VERSIONS:
        raise UnsupportedVersion(
            f"card version {version}, this Jarvis reads {CARD_VERSION_MAILBOX} and older"
        )
    fields: dict[str, Any] = {}
    try:
        uid = get_field(obj, "uid", str)
        fields["name"] = get_field(obj, "name", str)
        addresses = get_field(obj, "addresses", list)
        if not all(isinstance(address, str) for address in addresses):
            raise ValueError("field 'addresses' must be a list of strings")
        fields["addresses"] = tuple(addresses)
        fields["created"] = get_field(obj, "created", int)
        fields["public_key"] = b64url_decode(get_field(obj, "public_key", str))
        fields["signature"] = b64url_decode(get_field(obj, "signature", str))
        if version == CARD_VERSION_MAILBOX:
            box = get_field(obj, "mailbox", dict)
            fields["mailbox"] = CardMailbox(
                get_field(box, "link", str),
                b64url_decode(get_field(box, "sender_id", str)),
                b64url_decode(get_field(box, "sender_key", str)),
                b64url_decode(get_field(box, "prekey", str)),
            )
    except ValueError as e:
        raise MalformedCardFile(str(e)) from None
    card = ContactCard(**fields)
    if card.uid != uid:
        raise AlteredCard("its uid does not match its public key")
    verify_card(card)
    return card
