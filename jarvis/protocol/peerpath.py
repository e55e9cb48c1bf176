"""The path a contact's messages take, and why: the one vocabulary for issue 16's paths.

Every part that reports or chooses a path uses these words: the peer network marks each live
session (``lan``, ``direct``, ``relayed``), the courier adds ``mailbox`` and ``none`` when no
session is up, and the API, the CLI and the UI show the kind and the reason.

Kinds, best first:

* ``lan``: a live session dialled to an address found on the local network (mDNS);
* ``direct``: a live session over a direct TCP connection (a card's address, or accepted);
* ``relayed``: a live session whose TLS runs end to end through a mailbox's relay;
* ``mailbox``: no live session; messages are deposited in the contact's mailbox;
* ``none``: no live session and no mailbox address: messages stay queued.

Only the *transport* rank decides which of two live sessions survives
(:func:`transport_rank`): both ends of a relayed connection know it is relayed, but the side
that accepted a TCP connection cannot tell a LAN dial from any other, so ``lan`` and
``direct`` rank the same there (two sides that disagreed would each close a different
session).  ``lan`` before ``direct`` is applied where one side decides alone: the order in
which addresses are dialled, and what is reported.

This module is pure: no reactor, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PathKind = Literal["lan", "direct", "relayed", "mailbox", "none"]

#: Every kind, best first.
PATH_KINDS: tuple[PathKind, ...] = ("lan", "direct", "relayed", "mailbox", "none")
#: Kinds of a live session.
LIVE_KINDS: tuple[PathKind, ...] = ("lan", "direct", "relayed")

_RANK = {kind: len(PATH_KINDS) - index for index, kind in enumerate(PATH_KINDS)}
_TRANSPORT_RANK = {"lan": 2, "direct": 2, "relayed": 1}

#: The reason given to a live session closed because the pair has one on a better transport.
UPGRADED = "moved to a better path"


@dataclass(frozen=True)
class PeerPath:
    """The path to one contact at one moment, with the reason in words.

    :ivar kind: one of :data:`PATH_KINDS`.
    :ivar reason: why, for people: ``"direct: dialled 10.0.0.2:7000"``,
        ``"mailbox: no address answers"``.  Never a key, a token or message content.
    """

    kind: PathKind
    reason: str

    @property
    def live(self) -> bool:
        """Whether this is a live session (``lan``, ``direct`` or ``relayed``)."""
        return self.kind in LIVE_KINDS

    def as_dict(self) -> dict[str, str]:
        """The API form: ``{"path": kind, "path_reason": reason}``."""
        return {"path": self.kind, "path_reason": self.reason}


def rank(kind: PathKind) -> int:
    """How good *kind* is: higher is better (``lan`` highest, ``none`` lowest)."""
    return _RANK[kind]


def transport_rank(kind: PathKind) -> int:
    """The rank both ends of one live session agree on: direct TCP (``lan`` or ``direct``)
    above ``relayed``.  Decides which of two live sessions with one contact survives."""
    return _TRANSPORT_RANK.get(kind, 0)


def dialled(address: str, *, found_on_lan: bool) -> PeerPath:
    """The path of a session we dialled at *address*."""
    if found_on_lan:
        return PeerPath("lan", f"lan: dialled {address}, found on the local network")
    return PeerPath("direct", f"direct: dialled {address}")


def accepted() -> PeerPath:
    """The path of a session the contact dialled (we accepted its TCP connection)."""
    return PeerPath("direct", "direct: the contact dialled us")


def relayed(via: str) -> PeerPath:
    """The path of a session relayed through a mailbox; *via* names the relay for people."""
    return PeerPath("relayed", f"relayed: through {via}")


def offline(can_deposit: bool, why: str | None) -> PeerPath:
    """The path when no session is up: the mailbox if we can deposit, else none.

    :param why: why there is no session (the last dial error), or ``None``.
    """
    cause = why or "no live session"
    if can_deposit:
        return PeerPath("mailbox", f"mailbox: {cause}")
    return PeerPath("none", f"none: {cause}, and no mailbox address: messages wait")
