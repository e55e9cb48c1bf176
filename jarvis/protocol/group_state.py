"""The state of a private group as a signed, versioned record, and the rules for changing it.

A group has no server: its state (name, topic, members with their roles and the addresses other
members need) is a record that the founder, or an admin the founder appointed, signs with their
Ed25519 identity key.  Every change (invite, remove, leave, role, rename, addresses) makes the
next version, which names the SHA-256 of the previous record, so the versions form a hash chain
that any member may relay and every member checks.  A member accepts version *N* + 1 only on
top of the version *N* it holds, signed by someone the rules of version *N* allow, and never a
lower version.

Layout (integers unsigned big-endian, ``lp16(x) = u16(len(x)) || x``; see docs/protocol.md,
"Groups")::

    state   = body || signature (64)
    body    = u8(format) || group_id (16) || u64(version) || prev_hash (32)
              || lp16(name) || lp16(topic) || u16(count) || member * count
              || u16(gone) || departure * gone || signer_key (32)
    member  = public_key (32) || u8(role) || lp16(addresses)            (format 1)
    member  = public_key (32) || u8(role) || lp16(addresses) || lp8(display_name)  (format 2)
    departure = public_key (32) || u64(last_seq)
    signed  = "jarvis group state v1" || 0x00 || body
    addresses = ASCII "host:port" joined by "," [ || 0x00 || mailbox ]
    mailbox = u8(len(link)) || link || sender_id (24) || sender_key (32) || signed prekey (112)

The ``addresses`` field is opaque to the state's rules; :func:`encode_addresses` and
:func:`parse_addresses` are its one encoding: where to dial the member, and the mailbox part
of a link code version 2 (``jarvis.crypto.linkcode.CardMailbox``): where and how to deposit for
the member when no session is possible (its group queue for this group).

A version that removes members (a removal or a leave) lists each of them as a *departure* with
the sequence number of their last group message that members keep: whatever they sign beyond
it is refused, whichever state version it claims (:meth:`Membership.may_write`), so "removed"
means the same on every member.

Format 2 adds each member's *display name*: the name the member chose for itself (at most
:data:`MAX_DISPLAY_NAME_BYTES` bytes of UTF-8, no control, format or bidi characters, see
:func:`check_display_name`), set only by the member itself.  A state is encoded in format 1
exactly when no member has a display name (so every state written before names existed keeps
its bytes and hash), in format 2 otherwise; a format 2 state without a name is non-canonical.
A name is never trusted for anything: it is what a member calls itself.

Members and departures are sorted by public key and unique, so a state has exactly one
encoding.  A member is
named by its raw public key on the wire; its uid is derived from the key
(:func:`jarvis.crypto.identity.uid_for_public_bytes`), so a state can never pair a uid with the
wrong key.

Pure code: no reactor, no I/O; never log names, topics or addresses.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum

from jarvis.common.textsafe import strip_bidi
from jarvis.crypto.errors import BadSignature, MalformedCard
from jarvis.crypto.identity import IdentityKey, check_name, uid_for_public_bytes, verify_signature
from jarvis.crypto.linkcode import CardMailbox

#: Size of a group id (random) and of a public key, hash and signature.
GROUP_ID_SIZE = 16
KEY_SIZE = 32
HASH_SIZE = 32
SIGNATURE_SIZE = 64
#: The prev_hash of version 1, which has no predecessor.
NO_HASH = bytes(HASH_SIZE)
#: Most members of one group (Tox NGC's default peer limit).
MAX_MEMBERS = 100
#: Most characters of a topic.
MAX_TOPIC_CHARS = 256
#: Most bytes of a member's opaque addresses field (addresses, mailbox queue credentials).
MAX_ADDRESSES_BYTES = 512
#: Most bytes of a member's self-chosen display name (UTF-8).
MAX_DISPLAY_NAME_BYTES = 64
#: Most bytes of an encoded state: with every field at its maximum it still fits one 1:1 body.
MAX_STATE_BYTES = (
    1 + GROUP_ID_SIZE + 8 + HASH_SIZE + 2 + 4 * 64 + 2 + 4 * MAX_TOPIC_CHARS + 2
    + MAX_MEMBERS * (KEY_SIZE + 1 + 2 + MAX_ADDRESSES_BYTES + 1 + MAX_DISPLAY_NAME_BYTES)
    + 2 + MAX_MEMBERS * (KEY_SIZE + 8)
    + KEY_SIZE + SIGNATURE_SIZE
)  # fmt: skip
MAX_VERSION = 0xFFFFFFFFFFFFFFFF

_FORMAT = 1
#: The format with members' display names.
_FORMAT_NAMES = 2
_SIGN_LABEL = b"jarvis group state v1\x00"
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class Role(IntEnum):
    """A member's role: the founder appoints admins; admins and the founder sign changes."""

    FOUNDER = 1
    ADMIN = 2
    MEMBER = 3


class MalformedState(ValueError):
    """The bytes are not a group state: truncated, too long, non-canonical or out of range.

    The sender's software is broken or hostile; drop the record.  ``reason`` names the problem.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed group state: {reason}")
        self.reason = reason


class StateRefused(Exception):
    """A well-formed group state is not an acceptable next version of the one held.

    Its signature is bad, its signer may not make this change, its version is not the next one
    (a replay or rollback) or it does not name the held version's hash.  Keep the state held;
    ``reason`` says which rule failed (it never contains names or addresses).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"group state refused: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Member:
    """One member of a group.

    :ivar public_key: the member's raw 32-byte Ed25519 identity key.
    :ivar role: :class:`Role`.
    :ivar addresses: opaque bytes other members need to reach this one (addresses, mailbox
        queues); at most :data:`MAX_ADDRESSES_BYTES`.
    :ivar display_name: the name the member chose for itself ("" until it publishes one);
        unverified, see :func:`check_display_name`.
    :ivar uid: derived from *public_key*.
    """

    public_key: bytes
    role: Role
    addresses: bytes = b""
    display_name: str = ""
    uid: str = field(init=False, compare=False, repr=True)

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != KEY_SIZE:
            raise ValueError(f"a member's public key is {KEY_SIZE} bytes")
        object.__setattr__(self, "role", Role(self.role))
        if len(self.addresses) > MAX_ADDRESSES_BYTES:
            raise ValueError(f"a member's addresses are at most {MAX_ADDRESSES_BYTES} bytes")
        object.__setattr__(self, "addresses", bytes(self.addresses))
        check_display_name(self.display_name)
        object.__setattr__(self, "uid", uid_for_public_bytes(self.public_key))


@dataclass(frozen=True, order=True)
class Departure:
    """A member removed (or leaving) in this version, and where their messages stop.

    :ivar public_key: the departed member's raw key.
    :ivar last_seq: the sequence number of their last group message members keep (0: none).
    """

    public_key: bytes
    last_seq: int


@dataclass(frozen=True)
class GroupState:
    """One signed version of a group's state.  Build it with the change functions below.

    :ivar group_id: 16 random bytes chosen by the founder; never changes.
    :ivar version: 1 for the founding state, then +1 per change.
    :ivar prev_hash: :func:`state_hash` of the previous version (:data:`NO_HASH` for version 1).
    :ivar name: the group's name (a display name, see :func:`jarvis.crypto.identity.check_name`).
    :ivar topic: free text, possibly empty.
    :ivar members: sorted by public key; exactly one founder.
    :ivar signer: public key of the member who signed this version.
    :ivar signature: Ed25519 signature of the signer over the body.
    :ivar departed: the members of the previous version missing from this one, sorted by key.
    """

    group_id: bytes
    version: int
    prev_hash: bytes
    name: str
    topic: str
    members: tuple[Member, ...]
    signer: bytes
    signature: bytes
    departed: tuple[Departure, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "departed", tuple(self.departed))

    @property
    def founder(self) -> Member:
        """The founder (every valid state has exactly one)."""
        return next(m for m in self.members if m.role is Role.FOUNDER)

    def member(self, uid: str) -> Member | None:
        """Return the member whose uid is *uid*, or None."""
        return next((m for m in self.members if m.uid == uid), None)

    def member_by_key(self, public_key: bytes) -> Member | None:
        """Return the member whose public key is *public_key*, or None."""
        return next((m for m in self.members if m.public_key == public_key), None)

    @property
    def uids(self) -> frozenset[str]:
        """The uids of all members."""
        return frozenset(m.uid for m in self.members)


def check_display_name(name: object) -> str:
    """Return *name* if it is an acceptable member display name, else raise ValueError.

    "" (no name) or at most :data:`MAX_DISPLAY_NAME_BYTES` bytes of UTF-8 with no control,
    format (bidi, zero-width), surrogate or line-separator character and no white space at
    either end.
    """
    if not isinstance(name, str):
        raise ValueError("a display name must be text")
    if not name:
        return name
    if len(name.encode("utf-8", "surrogatepass")) > MAX_DISPLAY_NAME_BYTES:
        raise ValueError(f"a display name is at most {MAX_DISPLAY_NAME_BYTES} bytes")
    if name != name.strip():
        raise ValueError("a display name starts or ends with white space")
    for char in name:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise ValueError(f"a display name contains the control character U+{ord(char):04X}")
    return name


def clean_display_name(text: str) -> str:
    """Return *text* made an acceptable display name (see :func:`check_display_name`): bidi,
    control and format characters dropped, white space trimmed, cut to at most
    :data:`MAX_DISPLAY_NAME_BYTES` bytes on a character boundary ("" if nothing is left)."""
    kept = "".join(
        c for c in strip_bidi(str(text)) if unicodedata.category(c) not in _REFUSED_CATEGORIES
    )
    kept = kept.strip()
    while len(kept.encode("utf-8")) > MAX_DISPLAY_NAME_BYTES:
        kept = kept[:-1].rstrip()
    return check_display_name(kept)


def _check_topic(topic: str) -> str:
    if not isinstance(topic, str):
        raise ValueError("the topic must be text")
    if len(topic) > MAX_TOPIC_CHARS:
        raise ValueError(f"the topic is longer than {MAX_TOPIC_CHARS} characters")
    for char in topic:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise ValueError(f"the topic contains the control character U+{ord(char):04X}")
    return topic


def _lp16(data: bytes) -> bytes:
    return _U16.pack(len(data)) + data


def _check_structure(state: GroupState) -> None:
    """Raise ValueError unless *state* obeys the rules that do not need its predecessor."""
    if len(state.group_id) != GROUP_ID_SIZE:
        raise ValueError(f"the group id is {GROUP_ID_SIZE} bytes")
    if not 1 <= state.version <= MAX_VERSION:
        raise ValueError("the version is out of range")
    if len(state.prev_hash) != HASH_SIZE:
        raise ValueError(f"the previous hash is {HASH_SIZE} bytes")
    if (state.version == 1) != (state.prev_hash == NO_HASH):
        raise ValueError("only version 1 has no previous hash")
    check_name(state.name)
    _check_topic(state.topic)
    if not 1 <= len(state.members) <= MAX_MEMBERS:
        raise ValueError(f"a group has 1 to {MAX_MEMBERS} members")
    keys = [m.public_key for m in state.members]
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise ValueError("members are not sorted by key or not unique")
    if sum(1 for m in state.members if m.role is Role.FOUNDER) != 1:
        raise ValueError("a group has exactly one founder")
    gone = [d.public_key for d in state.departed]
    if len(gone) > MAX_MEMBERS or any(a >= b for a, b in itertools.pairwise(gone)):
        raise ValueError("departures are not sorted by key, not unique or too many")
    for d in state.departed:
        if len(d.public_key) != KEY_SIZE or not 0 <= d.last_seq <= MAX_VERSION:
            raise ValueError("a departure is out of range")
    if set(gone) & set(keys):
        raise ValueError("a departed member is still a member")
    if len(state.signer) != KEY_SIZE:
        raise ValueError(f"the signer's key is {KEY_SIZE} bytes")
    if len(state.signature) != SIGNATURE_SIZE:
        raise ValueError(f"the signature is {SIGNATURE_SIZE} bytes")


def _body(state: GroupState) -> bytes:
    named = any(m.display_name for m in state.members)
    parts = [
        bytes([_FORMAT_NAMES if named else _FORMAT]),
        state.group_id,
        _U64.pack(state.version),
        state.prev_hash,
        _lp16(state.name.encode("utf-8")),
        _lp16(state.topic.encode("utf-8")),
        _U16.pack(len(state.members)),
    ]
    for m in state.members:
        parts += [m.public_key, bytes([m.role]), _lp16(m.addresses)]
        if named:
            raw = m.display_name.encode("utf-8")
            parts += [bytes([len(raw)]), raw]
    parts.append(_U16.pack(len(state.departed)))
    parts += [d.public_key + _U64.pack(d.last_seq) for d in state.departed]
    parts.append(state.signer)
    return b"".join(parts)


def encode_state(state: GroupState) -> bytes:
    """Return the canonical bytes of *state* (body and signature).

    :raises ValueError: if a field is out of range or the members are not canonical.
    """
    _check_structure(state)
    return _body(state) + state.signature


def state_hash(state: GroupState) -> bytes:
    """Return SHA-256 of the encoded *state*: what the next version names as ``prev_hash``."""
    return hashlib.sha256(encode_state(state)).digest()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, size: int, what: str) -> bytes:
        end = self._at + size
        if end > len(self._data):
            raise MalformedState(f"truncated {what}")
        chunk = self._data[self._at : end]
        self._at = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(_U16.unpack(self.take(2, what))[0])

    def u64(self, what: str) -> int:
        return int(_U64.unpack(self.take(8, what))[0])

    def lp16(self, what: str, limit: int) -> bytes:
        length = self.u16(f"{what} length")
        if length > limit:
            raise MalformedState(f"{what} too long")
        return self.take(length, what)

    def text(self, what: str, limit: int) -> str:
        try:
            return self.lp16(what, limit).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedState(f"{what} is not UTF-8") from None

    def finish(self) -> None:
        if self._at != len(self._data):
            raise MalformedState(f"{len(self._data) - self._at} trailing bytes")


def parse_state(data: bytes) -> GroupState:
    """Parse the canonical bytes of a group state; the signature is *not* checked here.

    :raises MalformedState: if *data* is not exactly one canonical, in-range state.
    """
    if len(data) > MAX_STATE_BYTES:
        raise MalformedState(f"larger than {MAX_STATE_BYTES} bytes")
    r = _Reader(bytes(data))
    form = r.u8("format")
    if form not in (_FORMAT, _FORMAT_NAMES):
        raise MalformedState("unknown format")
    group_id = r.take(GROUP_ID_SIZE, "group id")
    version = r.u64("version")
    prev_hash = r.take(HASH_SIZE, "previous hash")
    name = r.text("name", 4 * 64)
    topic = r.text("topic", 4 * MAX_TOPIC_CHARS)
    count = r.u16("member count")
    if count > MAX_MEMBERS:
        raise MalformedState("too many members")
    members = []
    for _ in range(count):
        key = r.take(KEY_SIZE, "member key")
        role = r.u8("role")
        if role not in Role._value2member_map_:
            raise MalformedState("unknown role")
        addresses = r.lp16("addresses", MAX_ADDRESSES_BYTES)
        display_name = ""
        if form == _FORMAT_NAMES:
            raw = r.take(r.u8("display name length"), "display name")
            try:
                display_name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedState("a display name is not UTF-8") from None
        try:
            members.append(Member(key, Role(role), addresses, display_name))
        except ValueError as e:
            raise MalformedState(str(e)) from None
    gone = r.u16("departure count")
    if gone > MAX_MEMBERS:
        raise MalformedState("too many departures")
    departed = tuple(
        Departure(r.take(KEY_SIZE, "departed key"), r.u64("last seq")) for _ in range(gone)
    )
    signer = r.take(KEY_SIZE, "signer")
    signature = r.take(SIGNATURE_SIZE, "signature")
    r.finish()
    if form == _FORMAT_NAMES and not any(m.display_name for m in members):
        raise MalformedState("format 2 without a display name is not canonical")
    state = GroupState(
        group_id, version, prev_hash, name, topic, tuple(members), signer, signature, departed
    )
    try:
        _check_structure(state)
    except ValueError as e:
        raise MalformedState(str(e)) from None
    return state


def _check_signature(state: GroupState) -> None:
    try:
        verify_signature(state.signer, state.signature, _SIGN_LABEL + _body(state))
    except BadSignature:
        raise StateRefused("bad signature") from None


def verify_founding(state: GroupState) -> None:
    """Check that *state* is a valid version 1: signed by its founder.

    A member joins through an invitation that carries the current state and the chain back to
    version 1 (or only the current state, from a contact it trusts; see docs/groups.md).

    :raises StateRefused: if it is not.
    """
    try:
        _check_structure(state)
    except ValueError as e:
        raise StateRefused(f"malformed: {e}") from None
    if state.version != 1:
        raise StateRefused("not a founding state")
    if state.signer != state.founder.public_key:
        raise StateRefused("the founding state is not signed by its founder")
    if state.departed:
        raise StateRefused("a founding state has no departures")
    _check_signature(state)


def _without(members: Iterable[Member], key: bytes) -> dict[bytes, Member]:
    return {m.public_key: m for m in members if m.public_key != key}


def verify_successor(previous: GroupState, candidate: GroupState) -> None:
    """Check that *candidate* is an acceptable next version of *previous*, which is trusted.

    Rules (each failure raises with its own reason):

    * same group id; version exactly ``previous.version + 1`` (a lower or equal version is a
      rollback or replay, a higher one needs the versions in between: :func:`accept_chain`);
      ``prev_hash`` is :func:`state_hash` of *previous*; a valid signature;
    * the signer is a member of *previous*;
    * the founder stays the founder: nobody removes or demotes them, nobody else becomes one,
      except in a *hand-over* (:func:`hand_over`): a version signed by the founder whose only
      change is the founder's departure and one member of *previous* made the founder;
    * a member's display name is set only by that member (a new member enters without one);
    * the founder may make any other change;
    * an admin may rename, change the topic, invite plain members, remove plain members and
      change addresses; only the founder appoints, demotes or removes admins;
    * any member (admin or plain) may sign a version whose only change is removing themself
      (leaving) or replacing their own addresses and/or display name;
    * the departures list exactly the members of *previous* missing from *candidate*.

    :raises StateRefused: if *candidate* breaks a rule.
    """
    try:
        _check_structure(candidate)
    except ValueError as e:
        raise StateRefused(f"malformed: {e}") from None
    if candidate.group_id != previous.group_id:
        raise StateRefused("another group")
    if candidate.version <= previous.version:
        raise StateRefused("version rollback or replay")
    if candidate.version != previous.version + 1:
        raise StateRefused("version gap")
    if candidate.prev_hash != state_hash(previous):
        raise StateRefused("previous hash mismatch")
    _check_signature(candidate)
    signer = previous.member_by_key(candidate.signer)
    if signer is None:
        raise StateRefused("the signer is not a member")
    gone = {m.public_key for m in previous.members} - {m.public_key for m in candidate.members}
    if {d.public_key for d in candidate.departed} != gone:
        raise StateRefused("the departures are not the members removed")
    before = {m.public_key: m for m in previous.members}
    after = {m.public_key: m for m in candidate.members}
    for key, entry in after.items():
        was = before.get(key)
        if entry.display_name != (was.display_name if was else "") and key != signer.public_key:
            raise StateRefused("only a member sets its own display name")
    if candidate.founder.public_key != previous.founder.public_key:
        _check_hand_over(previous, candidate, signer)
        return
    if signer.role is Role.FOUNDER:
        return
    same_settings = candidate.name == previous.name and candidate.topic == previous.topic
    others_before = _without(previous.members, signer.public_key)
    others_after = _without(candidate.members, signer.public_key)
    if same_settings and others_before == others_after:
        mine = after.get(signer.public_key)
        if mine is None or mine.role is signer.role:
            return  # leaving, or changing one's own addresses
    if signer.role is not Role.ADMIN:
        raise StateRefused("only the founder or an admin may make this change")
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        old_role = old.role if old else None
        new_role = new.role if new else None
        if old_role != new_role and Role.ADMIN in (old_role, new_role):
            raise StateRefused("only the founder appoints, demotes or removes admins")


def _check_hand_over(previous: GroupState, candidate: GroupState, signer: Member) -> None:
    """Refuse a change of founder unless it is exactly a hand-over by the founder."""
    old, new = previous.founder, candidate.founder
    if signer.role is not Role.FOUNDER:
        raise StateRefused("the founder cannot be removed or replaced")
    if candidate.member_by_key(old.public_key) is not None:
        raise StateRefused("the founder hands the group over only when leaving")
    chosen = previous.member_by_key(new.public_key)
    if chosen is None:
        raise StateRefused("the new founder must already be a member")
    unchanged = (
        candidate.name == previous.name
        and candidate.topic == previous.topic
        and replace(chosen, role=Role.FOUNDER) == new
        and _without(_without(previous.members, old.public_key).values(), new.public_key)
        == _without(candidate.members, new.public_key)
    )
    if not unchanged:
        raise StateRefused("a hand-over changes nothing but the founder")


def accept_next(held: GroupState, candidate: GroupState) -> GroupState:
    """Return the state to hold after *candidate* arrives while *held* is held.

    A candidate equal to *held* is a harmless relay and returns *held*.

    :raises StateRefused: if *candidate* is not a valid next version (see
        :func:`verify_successor`).
    """
    if candidate == held:
        return held
    verify_successor(held, candidate)
    return candidate


def accept_chain(held: GroupState, chain: Sequence[GroupState]) -> GroupState:
    """Return the newest state of *chain* (consecutive versions after *held*), all checked.

    Versions in *chain* below the held one are skipped (a relay may send the whole chain from
    version 1); each other one must follow the one before, and the first that does not raises.

    :raises StateRefused: naming the first refused version.
    """
    current = held
    for state in chain:
        if state.version < current.version:
            continue
        current = accept_next(current, state)
    return current


def preferred(a: GroupState, b: GroupState) -> GroupState:
    """Of two valid versions with the same number (two admins changed the group at once),
    return the one every member keeps: the founder's, else the lower :func:`state_hash`.

    The change in the other one is lost and its author has to make it again on top.
    """
    founder = a.founder.public_key
    if (a.signer == founder) != (b.signer == founder):
        return a if a.signer == founder else b
    return min(a, b, key=state_hash)


def _sign(state: GroupState, signer: IdentityKey) -> GroupState:
    unsigned = replace(state, signer=signer.public_bytes, signature=bytes(SIGNATURE_SIZE))
    _check_structure(unsigned)
    return replace(unsigned, signature=signer.sign(_SIGN_LABEL + _body(unsigned)))


def found_group(
    founder: IdentityKey,
    name: str,
    *,
    topic: str = "",
    addresses: bytes = b"",
    group_id: bytes | None = None,
    display_name: str = "",
) -> GroupState:
    """Return version 1 of a new group whose only member is *founder*.

    :param group_id: 16 bytes (default: random from the operating system).
    :param display_name: the founder's own name in the group (:func:`check_display_name`).
    :raises ValueError: if the name, topic or addresses are not acceptable.
    """
    state = GroupState(
        group_id=os.urandom(GROUP_ID_SIZE) if group_id is None else group_id,
        version=1,
        prev_hash=NO_HASH,
        name=check_name(name),
        topic=_check_topic(topic),
        members=(Member(founder.public_bytes, Role.FOUNDER, addresses, display_name),),
        signer=founder.public_bytes,
        signature=bytes(SIGNATURE_SIZE),
    )
    return _sign(state, founder)


def _next(
    held: GroupState,
    signer: IdentityKey,
    members: Iterable[Member],
    *,
    name: str | None = None,
    topic: str | None = None,
    departed: Iterable[Departure] = (),
) -> GroupState:
    candidate = _sign(
        replace(
            held,
            version=held.version + 1,
            prev_hash=state_hash(held),
            name=held.name if name is None else check_name(name),
            topic=held.topic if topic is None else _check_topic(topic),
            members=tuple(sorted(members, key=lambda m: m.public_key)),
            departed=tuple(sorted(departed)),
        ),
        signer,
    )
    verify_successor(held, candidate)  # the author obeys the rules every member checks
    return candidate


def _require(held: GroupState, uid: str) -> Member:
    member = held.member(uid)
    if member is None:
        raise ValueError("not a member of this group")
    return member


def invite(
    held: GroupState,
    signer: IdentityKey,
    public_key: bytes,
    *,
    addresses: bytes = b"",
    role: Role = Role.MEMBER,
) -> GroupState:
    """Return the next version with the member whose key is *public_key* added.

    :raises ValueError: if they are already a member or the group is full.
    :raises StateRefused: if *signer* may not add a member with this *role*.
    """
    if held.member_by_key(public_key) is not None:
        raise ValueError("already a member of this group")
    if len(held.members) >= MAX_MEMBERS:
        raise ValueError(f"a group has at most {MAX_MEMBERS} members")
    return _next(held, signer, [*held.members, Member(public_key, role, addresses)])


def remove(held: GroupState, signer: IdentityKey, uid: str, *, last_seq: int) -> GroupState:
    """Return the next version without the member *uid*.

    :param last_seq: the sequence number of *uid*'s last group message the signer holds:
        members keep their messages up to it and refuse any beyond it.
    :raises ValueError: if *uid* is not a member.
    :raises StateRefused: if *signer* may not remove them (the founder cannot be removed).
    """
    gone = _require(held, uid)
    if gone.role is Role.FOUNDER:
        raise StateRefused("the founder cannot be removed or replaced")
    members = _without(held.members, gone.public_key).values()
    return _next(held, signer, members, departed=[Departure(gone.public_key, last_seq)])


def leave(held: GroupState, member: IdentityKey, *, last_seq: int) -> GroupState:
    """Return the next version, signed by *member*, without *member*.

    :param last_seq: the sequence number of *member*'s last group message.
    :raises ValueError: if *member* is not a member.
    :raises StateRefused: if *member* is the founder (the founder leaves with
        :func:`hand_over`).
    """
    return remove(held, member, member.uid, last_seq=last_seq)


def hand_over(held: GroupState, founder: IdentityKey, uid: str, *, last_seq: int) -> GroupState:
    """Return the next version, signed by the *founder*, in which the founder leaves and the
    member *uid* becomes the founder (nothing else changes).

    :param last_seq: the sequence number of the founder's last group message.
    :raises ValueError: if *uid* is not a member or is the founder itself.
    :raises StateRefused: if *founder* is not the founder.
    """
    heir = _require(held, uid)
    me = _require(held, founder.uid)
    if heir.public_key == me.public_key:
        raise ValueError("the founder hands the group over to another member")
    if me.role is not Role.FOUNDER:
        raise StateRefused("only the founder hands the group over")
    members = [*_without(held.members, me.public_key).values()]
    members = [replace(m, role=Role.FOUNDER) if m.uid == uid else m for m in members]
    return _next(held, founder, members, departed=[Departure(me.public_key, last_seq)])


def heir(held: GroupState, membership: Membership) -> Member | None:
    """Return who takes the founder role when the founder leaves: the longest-standing admin,
    else the longest-standing member (ties by key); None if the founder is alone."""
    founder = held.founder.public_key
    others = [m for m in held.members if m.public_key != founder]
    if not others:
        return None
    admins = [m for m in others if m.role is Role.ADMIN] or others

    def since(m: Member) -> tuple[int, bytes]:
        start = membership.member_since(m.public_key)
        return (start if start is not None else held.version, m.public_key)

    return min(admins, key=since)


def set_role(held: GroupState, signer: IdentityKey, uid: str, role: Role) -> GroupState:
    """Return the next version with member *uid* given *role* (only the founder may do this).

    :raises ValueError: if *uid* is not a member.
    :raises StateRefused: if *signer* may not.
    """
    old = _require(held, uid)
    if Role.FOUNDER in (old.role, role):
        raise StateRefused("the founder cannot be removed or replaced")
    members = [*_without(held.members, old.public_key).values(), replace(old, role=role)]
    return _next(held, signer, members)


def encode_addresses(addresses: Iterable[str], mailbox: CardMailbox | None = None) -> bytes:
    """Return a member's addresses field: the ASCII ``host:port`` addresses joined by ``,``,
    then, with a *mailbox*, a NUL byte and its encoding.  The mailbox part is kept whole;
    addresses that do not fit in :data:`MAX_ADDRESSES_BYTES` beside it are left out (a link
    is at most 255 bytes, so the mailbox part is at most 424 and 87 bytes remain)."""
    tail = b"\x00" + mailbox.encode() if mailbox is not None else b""
    room = MAX_ADDRESSES_BYTES - len(tail)
    kept: list[bytes] = []
    for address in addresses:
        raw = address.encode("ascii", "ignore")
        if not raw or b"," in raw or b"\x00" in raw:
            continue
        if len(b",".join([*kept, raw])) > room:
            break
        kept.append(raw)
    return b",".join(kept) + tail


def parse_addresses(raw: bytes) -> tuple[tuple[str, ...], CardMailbox | None]:
    """Return ``(addresses, mailbox)`` of a member's addresses field (see
    :func:`encode_addresses`); a mailbox part that does not parse exactly is ignored (None)."""
    text, sep, tail = bytes(raw).partition(b"\x00")
    addresses = tuple(a for a in text.decode("ascii", "replace").split(",") if a)
    mailbox = None
    if sep:
        try:
            mailbox = CardMailbox.decode(tail)
        except MalformedCard:
            mailbox = None
    return addresses, mailbox


def set_addresses(
    held: GroupState,
    signer: IdentityKey,
    uid: str,
    addresses: bytes,
    *,
    display_name: str | None = None,
) -> GroupState:
    """Return the next version with member *uid*'s addresses (and, given, its *display_name*)
    replaced: any member for itself; nobody sets another member's name.

    :raises ValueError: if *uid* is not a member, *addresses* is too long or the name is not
        acceptable (:func:`check_display_name`).
    :raises StateRefused: if *signer* may not.
    """
    old = _require(held, uid)
    name = old.display_name if display_name is None else display_name
    new = Member(old.public_key, old.role, addresses, name)
    return _next(held, signer, [*_without(held.members, old.public_key).values(), new])


def rename(
    held: GroupState, signer: IdentityKey, *, name: str | None = None, topic: str | None = None
) -> GroupState:
    """Return the next version with a new *name* and/or *topic* (founder or admin).

    :raises ValueError: if the name or topic is not acceptable.
    :raises StateRefused: if *signer* may not.
    """
    return _next(held, signer, held.members, name=name, topic=topic)


@dataclass
class _Span:
    """One stretch of membership: versions ``start`` to ``end - 1`` (open while end is None),
    and the last message kept from it (None while still a member)."""

    start: int
    end: int | None = None
    last_seq: int | None = None


class Membership:
    """Who was a member at which version, and where a departed member's messages stop: what a
    group log needs to refuse a removed member.

    Fed every accepted state in order (:meth:`add`); a member may leave and be invited again,
    so each member has a list of spans of versions.
    """

    def __init__(self, states: Iterable[GroupState] = ()) -> None:
        """Start empty, then :meth:`add` each of *states*."""
        self._spans: dict[bytes, list[_Span]] = {}
        self._version = 0
        for state in states:
            self.add(state)

    @property
    def version(self) -> int:
        """The newest version added (0 before any)."""
        return self._version

    def add(self, state: GroupState) -> None:
        """Record the accepted *state* (its version must be the next one, or the first).

        :raises ValueError: if versions are added out of order.
        """
        if self._version and state.version != self._version + 1:
            raise ValueError("states must be added in version order")
        for m in state.members:
            spans = self._spans.setdefault(m.public_key, [])
            if not spans or spans[-1].end is not None:
                spans.append(_Span(state.version))
        for d in state.departed:
            gone = self._spans.get(d.public_key)
            if gone and gone[-1].end is None:
                gone[-1].end = state.version
                gone[-1].last_seq = d.last_seq
        self._version = state.version

    def member_since(self, public_key: bytes) -> int | None:
        """Return the version from which *public_key* has been a member without a break, or
        None if it is not a member now."""
        spans = self._spans.get(public_key)
        return spans[-1].start if spans and spans[-1].end is None else None

    def is_known(self, public_key: bytes) -> bool:
        """Return whether *public_key* was ever a member."""
        return public_key in self._spans

    def was_member(self, public_key: bytes, version: int) -> bool:
        """Return whether *public_key* was a member in *version*."""
        return self._span(public_key, version) is not None

    def may_write(self, public_key: bytes, version: int, seq: int) -> bool:
        """Return whether a message of *public_key* numbered *seq*, claiming to be written
        under *version*, is acceptable: the author was a member then and, if they departed
        since, *seq* is not beyond the last message their departure keeps."""
        span = self._span(public_key, version)
        return span is not None and (span.last_seq is None or seq <= span.last_seq)

    def departed_last_seq(self, public_key: bytes) -> int | None:
        """Return the last kept seq of *public_key* if it is not a member now, else None."""
        spans = self._spans.get(public_key)
        return spans[-1].last_seq if spans and spans[-1].end is not None else None

    def removed_at(self, public_key: bytes) -> int | None:
        """Return the first version without *public_key* if it is not a member now, else None."""
        spans = self._spans.get(public_key)
        return spans[-1].end if spans else None

    def _span(self, public_key: bytes, version: int) -> _Span | None:
        for span in self._spans.get(public_key, ()):
            if span.start <= version and (span.end is None or version < span.end):
                return span
        return None
