"""The ``jarvis-mailbox:`` link: where a mailbox listens and the pin of its TLS key.

Form: ``jarvis-mailbox:<pin>@<host>:<port>``, where ``<pin>`` is the mailbox key's uid
(lowercase base32 of SHA-256 over its SubjectPublicKeyInfo, 52 characters, as for Jarvis
identities) and ``<host>`` is a DNS name, an IPv4 address or a bracketed IPv6 address.
A client that holds the link needs nothing else: no CA, no account.

Pure code: no reactor, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from jarvis.crypto.identity import is_valid_uid
from jarvis.crypto.linkcode import check_address

#: Prefix of every mailbox link.
SCHEME = "jarvis-mailbox:"


class BadMailboxLink(ValueError):
    """The text is not a mailbox link: it must read ``jarvis-mailbox:<pin>@<host>:<port>``,
    as the mailbox wrote it to ``mailbox.link``; copy it again whole."""


@dataclass(frozen=True)
class MailboxLink:
    """A mailbox's address (``host``, ``port``) and the uid of its TLS key (``pin``)."""

    pin: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}{self.pin}@{host}:{self.port}"


def parse_link(text: str) -> MailboxLink:
    """Parse a ``jarvis-mailbox:`` link (white space around it is ignored).

    :raises BadMailboxLink: if the scheme, pin, host or port is wrong.
    """
    text = text.strip()
    if not text.startswith(SCHEME) or "@" not in text:
        raise BadMailboxLink(f"not a mailbox link (it must start with {SCHEME!r})")
    pin, _, address = text[len(SCHEME) :].partition("@")
    if not is_valid_uid(pin):
        raise BadMailboxLink("the link's pin is not a valid key hash")
    try:
        address = check_address(address)
    except ValueError as e:
        raise BadMailboxLink(f"the link's address is wrong: {e}") from None
    host, _, port = address.rpartition(":")
    return MailboxLink(pin, host.strip("[]"), int(port))
