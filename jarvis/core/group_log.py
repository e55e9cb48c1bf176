"""One member's log of a group's messages: per-author chains, gaps, forks and the order shown.

A :class:`GroupLog` takes signed group messages in any order, from any member that relays them,
and keeps for each author the contiguous chain ``1..n`` it holds.  What it is offered:

* a message whose author may not write under the state version it names (not a member, or
  removed at or before that version) or with a bad signature is **refused**;
* the next message of an author's chain is **accepted**, and so are the buffered ones it
  unblocks;
* a message further ahead is **buffered** and its gap reported (:meth:`GroupLog.gaps`: author and
  sequence range to ask any member for);
* a message at a position already held with another hash, or naming another predecessor, is
  **fork evidence**: two messages signed by the author that contradict each other
  (:func:`jarvis.protocol.group_message.is_fork_proof`); the first chain is kept.

The **order shown** is the same on every member that holds the same messages: a message is shown
once its author's previous message and its causal parents are shown, and shown messages are
sorted by (Lamport depth, hash), where the depth is one more than the largest depth of its
predecessor and parents.  Causes come before effects; concurrent messages are ordered by hash.
A late message may be inserted before messages already shown (the position is deterministic,
not the moment it arrived).

:meth:`GroupLog.summary` is what a member puts in its keepalives; :meth:`GroupLog.missing_for`
computes from a peer's summary what that peer lacks, :meth:`GroupLog.wanted_from` what to ask it.

Pure code: no reactor, no I/O, no clock; never log bodies.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from jarvis.crypto.errors import BadSignature
from jarvis.crypto.identity import uid_for_public_bytes
from jarvis.protocol.group_message import (
    GroupMessage,
    Parent,
    Summary,
    is_fork_proof,
    message_hash,
    verify_message,
)
from jarvis.protocol.group_state import Membership

#: Most messages buffered ahead of a gap, per author; more are refused until the gap fills.
MAX_BUFFERED_PER_AUTHOR = 1024
#: Most bytes (:func:`held_size`) buffered ahead of a gap, per author: 1,024 messages of the
#: largest body would be 16 MiB; beyond this budget they are refused until the gap fills
#: (sync sends them again then).
MAX_BUFFERED_BYTES_PER_AUTHOR = 1024 * 1024


def held_size(message: GroupMessage) -> int:
    """About how many bytes *message* takes while it waits in memory (body, parents,
    signature and fixed fields): what the per-author and per-group byte budgets count."""
    return len(message.body) + 40 * len(message.parents) + 160


class Outcome(Enum):
    """What :meth:`GroupLog.offer` did with a message."""

    accepted = "accepted"
    duplicate = "duplicate"
    buffered = "buffered"
    refused = "refused"
    forked = "forked"


@dataclass(frozen=True)
class Gap:
    """Messages ``first..last`` (inclusive) of *author* that a member lacks.

    :ivar author: the author's raw public key.
    """

    author: bytes
    first: int
    last: int

    @property
    def author_uid(self) -> str:
        """The author's uid."""
        return uid_for_public_bytes(self.author)


@dataclass(frozen=True)
class ForkEvidence:
    """Two messages signed by one author that contradict each other (see ``is_fork_proof``)."""

    first: GroupMessage
    second: GroupMessage


@dataclass(frozen=True)
class Offered:
    """The result of :meth:`GroupLog.offer`.

    :ivar outcome: :class:`Outcome`.
    :ivar reason: why a message was refused (a fixed phrase; never content).
    :ivar shown: messages that became shown, in the order shown.
    :ivar evidence: for :attr:`Outcome.forked`, the proof.
    """

    outcome: Outcome
    reason: str = ""
    shown: tuple[GroupMessage, ...] = ()
    evidence: ForkEvidence | None = None


_Key = tuple[bytes, int]  # (author, seq)


class GroupLog:
    """The messages of one group held by one member (see the module docstring)."""

    def __init__(self, group_id: bytes, membership: Membership) -> None:
        """Start an empty log of *group_id*, checking authors against *membership*.

        *membership* is shared with the caller, who :meth:`Membership.add`\\ s each state it
        accepts; a message naming a version not added yet is refused as ``state unknown`` (sync
        the state, then offer it again).
        """
        self._group_id = group_id
        self._membership = membership
        self._chains: dict[bytes, list[GroupMessage]] = {}
        self._hashes: dict[bytes, list[bytes]] = {}
        self._buffer: dict[bytes, dict[int, GroupMessage]] = {}
        self._waiting: set[_Key] = set()
        # what a waiting message waits for -> the waiting messages
        self._blocked: dict[_Key, set[_Key]] = {}
        self._shown_heads: dict[bytes, Parent] = {}
        self._depth: dict[_Key, int] = {}
        self._order: list[tuple[int, bytes]] = []
        self._shown: list[GroupMessage] = []
        self._evidence: list[ForkEvidence] = []

    # -- queries -------------------------------------------------------------------------

    @property
    def group_id(self) -> bytes:
        """The group this log holds."""
        return self._group_id

    def shown(self) -> list[GroupMessage]:
        """Return the shown messages in the order every member shows them."""
        return list(self._shown)

    def head(self, author: bytes) -> Parent | None:
        """Return the last contiguous message of *author* as a head, or None."""
        hashes = self._hashes.get(author)
        if not hashes:
            return None
        return Parent(author, len(hashes), hashes[-1])

    def heads(self) -> dict[bytes, Parent]:
        """Return every author's head."""
        return {a: Parent(a, len(h), h[-1]) for a, h in self._hashes.items() if h}

    def parents_for(self, author: bytes, limit: int) -> tuple[Parent, ...]:
        """Return the causal parents *author* should name in their next message: the last
        *shown* message of each other author, the *limit* most recent (deepest, ties by key).

        Only shown messages are named, so a message that can never be shown (its author named
        a parent nobody has) never holds up anyone else's messages.
        """
        others = [p for a, p in self._shown_heads.items() if a != author]
        others.sort(key=lambda p: (-self._depth[(p.author, p.seq)], p.author))
        return tuple(sorted(others[:limit]))

    def summary(self, state_version: int) -> Summary:
        """Return the keepalive summary: *state_version* and every head, sorted by author."""
        return Summary(self._group_id, state_version, tuple(sorted(self.heads().values())))

    def evidence(self) -> list[ForkEvidence]:
        """Return the fork evidence collected so far."""
        return list(self._evidence)

    def messages(self, author: bytes, first: int, last: int) -> list[GroupMessage]:
        """Return *author*'s held messages ``first..last`` (to answer a gap request)."""
        chain = self._chains.get(author, [])
        return chain[max(first, 1) - 1 : max(last, 0)]

    def gaps(self) -> list[Gap]:
        """Return what this member knows it lacks: holes before buffered messages, and messages
        named as parents but not held.  Ask any member for them.

        Only holes are listed (not what is buffered), one :class:`Gap` per hole.
        """
        wanted: dict[bytes, int] = {}
        for author, buffered in self._buffer.items():
            if buffered:
                wanted[author] = max(buffered)
        for author, seq in self._waiting:
            for p in self._chains[author][seq - 1].parents:
                wanted[p.author] = max(wanted.get(p.author, 0), self._reachable(p))
        gaps = []
        for author, last in sorted(wanted.items()):
            first = len(self._hashes.get(author, ())) + 1
            for seq in sorted(self._buffer.get(author, ())):
                if seq > first:
                    gaps.append(Gap(author, first, seq - 1))
                first = seq + 1
            if last >= first:
                gaps.append(Gap(author, first, last))
        return gaps

    def missing_for(self, peer: Summary | Mapping[bytes, Parent]) -> list[Gap]:
        """Return, from a peer's summary, the ranges this member holds and the peer lacks."""
        theirs = _heads_of(peer)
        gaps = []
        for author, mine in sorted(self.heads().items()):
            seq = theirs[author].seq if author in theirs else 0
            if mine.seq > seq:
                gaps.append(Gap(author, seq + 1, mine.seq))
        return gaps

    def wanted_from(self, peer: Summary | Mapping[bytes, Parent]) -> list[Gap]:
        """Return, from a peer's summary, the ranges the peer holds and this member lacks."""
        gaps = []
        for author, theirs in sorted(_heads_of(peer).items()):
            mine = len(self._hashes.get(author, ()))
            if theirs.seq > mine:
                gaps.append(Gap(author, mine + 1, theirs.seq))
        return gaps

    # -- input ---------------------------------------------------------------------------

    def offer(self, message: GroupMessage, *, verified: bool = False) -> Offered:
        """Take *message* (from its author or any relay) and say what became of it.

        :param verified: the author's signature was already checked
            (:func:`~jarvis.protocol.group_message.signatures_valid`, off the reactor at
            unlock): every other check still runs.
        """
        if message.group_id != self._group_id:
            return Offered(Outcome.refused, "another group")
        author = message.author
        if message.state_version > self._membership.version:
            return Offered(Outcome.refused, "state unknown")
        if not self._membership.was_member(author, message.state_version):
            return Offered(Outcome.refused, "not a member at that state version")
        if not self._membership.may_write(author, message.state_version, message.seq):
            return Offered(Outcome.refused, "written after the author was removed")
        for p in message.parents:
            if not self._membership.is_known(p.author):
                return Offered(Outcome.refused, "a parent names a non-member")
        if not verified:
            try:
                verify_message(message)
            except BadSignature:
                return Offered(Outcome.refused, "bad signature")
        digest = message_hash(message)
        hashes = self._hashes.setdefault(author, [])
        chain = self._chains.setdefault(author, [])
        if message.seq <= len(hashes):
            if hashes[message.seq - 1] == digest:
                return Offered(Outcome.duplicate)
            return self._forked(chain[message.seq - 1], message)
        buffered = self._buffer.setdefault(author, {})
        if message.seq > len(hashes) + 1:
            held = buffered.get(message.seq)
            if held is not None:
                if message_hash(held) == digest:
                    return Offered(Outcome.duplicate)
                return self._forked(held, message)
            if len(buffered) >= MAX_BUFFERED_PER_AUTHOR:
                return Offered(Outcome.refused, "too many messages ahead of a gap")
            used = sum(held_size(m) for m in buffered.values())
            if used + held_size(message) > MAX_BUFFERED_BYTES_PER_AUTHOR:
                return Offered(Outcome.refused, "too many bytes ahead of a gap")
            buffered[message.seq] = message
            return Offered(Outcome.buffered)
        refusal = self._append(message, digest)
        if refusal is not None:
            return refusal
        appended = [(author, message.seq)]
        while len(hashes) + 1 in buffered:
            following = buffered.pop(len(hashes) + 1)
            if self._append(following, message_hash(following)) is not None:
                break
            appended.append((author, following.seq))
        return Offered(Outcome.accepted, shown=tuple(self._show_ready(appended)))

    def _forked(self, first: GroupMessage, second: GroupMessage) -> Offered:
        evidence = ForkEvidence(first, second)
        assert is_fork_proof(first, second)
        self._evidence.append(evidence)
        return Offered(Outcome.forked, "the author forked their chain", evidence=evidence)

    def _append(self, message: GroupMessage, digest: bytes) -> Offered | None:
        """Append the next message of its author's chain, or return why not."""
        author = message.author
        chain, hashes = self._chains[author], self._hashes[author]
        if chain:
            if message.prev_hash != hashes[-1]:
                self._buffer.get(author, {}).clear()
                return self._forked(chain[-1], message)
            if message.state_version < chain[-1].state_version:
                return Offered(Outcome.refused, "state version went backwards")
        chain.append(message)
        hashes.append(digest)
        self._waiting.add((author, message.seq))
        return None

    def states_added(self) -> tuple[list[GroupMessage], list[GroupMessage]]:
        """Apply the states the caller has just added to the membership.

        Messages the membership now refuses (a departed author's messages beyond the last one
        their departure keeps, which this member accepted before it learned of the departure)
        are dropped, and the order is computed again: parents beyond a departed author's last
        kept message count as that last message, so every member ends with the same messages
        in the same order whenever it learned of the removal.

        :returns: ``(dropped, shown)``: the messages to take off the screen, and the shown
            messages in their order after the change.
        """
        dropped: list[GroupMessage] = []
        for author, chain in self._chains.items():
            for index, m in enumerate(chain):
                if not self._membership.may_write(author, m.state_version, m.seq):
                    dropped += chain[index:]
                    del chain[index:]
                    del self._hashes[author][index:]
                    break
        for author, buffered in self._buffer.items():
            limit = self._membership.departed_last_seq(author)
            if limit is not None:
                for seq in [seq for seq in buffered if seq > limit]:
                    del buffered[seq]
        self._depth.clear()
        self._order.clear()
        self._shown.clear()
        self._blocked.clear()
        self._shown_heads.clear()
        self._waiting = {(a, i + 1) for a, chain in self._chains.items() for i in range(len(chain))}
        self._show_ready(sorted(self._waiting))
        return dropped, list(self._shown)

    def _reachable(self, parent: Parent) -> int:
        """Return the seq of *parent*, or of its author's last kept message if they departed
        before it (a parent beyond that can never be shown)."""
        limit = self._membership.departed_last_seq(parent.author)
        return parent.seq if limit is None else min(parent.seq, limit)

    def _depth_or_missing(self, key: _Key) -> tuple[int, None] | tuple[None, _Key]:
        """Return ``(depth, None)`` if *key* can be shown, else ``(None, what it waits for)``."""
        author, seq = key
        depth = 0
        if seq > 1:
            before = self._depth.get((author, seq - 1))
            if before is None:
                return None, (author, seq - 1)
            depth = before
        for p in self._chains[author][seq - 1].parents:
            reachable = self._reachable(p)
            if reachable == 0:
                continue
            parent_depth = self._depth.get((p.author, reachable))
            if parent_depth is None:
                return None, (p.author, reachable)
            depth = max(depth, parent_depth)
        return depth + 1, None

    def _show_ready(self, candidates: Iterable[_Key]) -> list[GroupMessage]:
        """Show every waiting message among *candidates* (and those they unblock) that can be
        shown; a message that cannot is filed under the first thing it waits for, and tried
        again when that is shown."""
        shown: list[tuple[tuple[int, bytes], GroupMessage]] = []
        work = list(candidates)
        while work:
            key = work.pop()
            if key not in self._waiting:
                continue
            depth, missing = self._depth_or_missing(key)
            if depth is None:
                assert missing is not None
                self._blocked.setdefault(missing, set()).add(key)
                continue
            self._waiting.discard(key)
            self._depth[key] = depth
            author, seq = key
            message = self._chains[author][seq - 1]
            sort_key = (depth, self._hashes[author][seq - 1])
            at = bisect.bisect(self._order, sort_key)
            self._order.insert(at, sort_key)
            self._shown.insert(at, message)
            self._shown_heads[author] = Parent(author, seq, sort_key[1])
            shown.append((sort_key, message))
            work.extend(self._blocked.pop(key, ()))
        shown.sort(key=lambda pair: pair[0])
        return [message for _key, message in shown]


def _heads_of(peer: Summary | Mapping[bytes, Parent]) -> dict[bytes, Parent]:
    heads: Iterable[Parent] = peer.heads if isinstance(peer, Summary) else peer.values()
    return {h.author: h for h in heads}
