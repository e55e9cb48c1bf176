"""Private groups wired into the node (issue 17, docs/groups.md).

:class:`Groups` holds every group this node is a member of (its chain of signed states, its
:class:`~jarvis.core.group_log.GroupLog`), the invitations received, and the group peers (members
who are not contacts).  Group traffic is pairwise fan-out over the 1:1 layer: every state,
message, summary or invitation is one durable outbox entry per recipient
(:meth:`Courier.queue_group_entry`), so it streams, is acknowledged, retransmitted and deposited
in the mailbox like a chat message, and the receiver hands it here (``Courier.on_group``).

What is stored: every accepted state, every message offered and not refused, every pending
invitation (``jarvis.store.group_queries``); at unlock they are read back and offered again
(offering is idempotent and the order shown does not depend on the order of offering).

Sync (Tox's version gossip, Briar's gap requests): when a member sees a gap, or every
:data:`SYNC_INTERVAL` seconds, it sends its summary (state version and per-author heads) to the
members it has a session with; a member receiving a summary sends back the states and messages
the sender lacks, and its own summary if it lacks something the sender holds.  So a member
catches up from any member, and a message withheld by one member is filled from a third.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import replace as replaced
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jarvis.common.errors import Ambiguous, InvalidInput, NotFound
from jarvis.common.logs import log_id
from jarvis.common.textsafe import human_bytes
from jarvis.core.group_log import GroupLog, Outcome, held_size
from jarvis.crypto.identity import IdentityKey
from jarvis.protocol.group_fanout import (
    ENTRY_ID_SIZE,
    KIND_INVITE,
    KIND_MESSAGE,
    KIND_STATE,
    KIND_SUMMARY,
    decode_body,
    encode_chain,
    encode_payload,
    parse_chain,
    parse_payload,
    payload_group_id,
    plan_message,
    plan_state,
)
from jarvis.protocol.group_message import (
    MAX_BODY_BYTES,
    MAX_PARENTS,
    NO_HASH,
    GroupMessage,
    encode_message,
    encode_summary,
    message_hash,
    message_id,
    parse_message,
    parse_summary,
    signatures_valid,
    write_message,
)
from jarvis.protocol.group_state import (
    GroupState,
    Membership,
    Role,
    StateRefused,
    accept_chain,
    accept_next,
    clean_display_name,
    encode_addresses,
    encode_state,
    found_group,
    hand_over,
    heir,
    invite,
    leave,
    parse_addresses,
    parse_state,
    preferred,
    remove,
    rename,
    set_addresses,
    set_role,
    state_hash,
    verify_founding,
)
from jarvis.protocol.records import MailboxAddress
from jarvis.protocol.transfer import (
    MalformedTransferRecord,
    SharedFile,
    encode_shared_file,
    is_shared_file_body,
    parse_shared_file,
)
from jarvis.store import group_queries
from jarvis.store.database import Store
from jarvis.store.records import new_message_id

#: A client's focus (``ui.focus``) on a group's conversation: this, then the group's id (hex).
GROUP_FOCUS_PREFIX = "group:"
#: Seconds between keepalive summaries to connected members of each group.
SYNC_INTERVAL = 5.0
#: Seconds a gap waits before a summary asks for it (more messages may fill it first).
GAP_DELAY = 0.5
#: Most messages sent back for one summary (the rest on the next round).
MAX_SYNC_MESSAGES = 2048
#: Most seconds a deposit from a key that is not (yet) a member of the group waits for the
#: group's next state before it is dropped (docs/groups.md, "Members who are not contacts").
GROUP_SENDER_WAIT = 30.0
#: Most versions beyond the one held that a state received out of order may have to be kept
#: (``Group.ahead``) and a message naming an unknown version may name to be parked: anything
#: further is dropped, and the summary sync fetches the real chain in order later.
MAX_STATES_AHEAD = 16
#: Most states kept ahead per sender, and their bytes; and all senders' bytes per group.
MAX_AHEAD_PER_SENDER = 8
MAX_AHEAD_BYTES_PER_SENDER = 256 * 1024
MAX_AHEAD_BYTES = 1024 * 1024
#: Most messages parked (naming a state version not held yet) per group, and their bytes
#: (:func:`~jarvis.core.group_log.held_size`); the excess is dropped and fetched by sync later.
MAX_PARKED = 512
MAX_PARKED_BYTES = 1024 * 1024
#: Most deposits from keys that are not (yet) members waiting for a group's next state.
MAX_MEMBER_WAITS = 64
#: How often a member answers one removed member (per group) that still writes as a member
#: (a summary or a message from a key a held state removed): at most
#: :data:`REMOVED_TELLS` times per :data:`REMOVED_TELL_WINDOW` seconds.
REMOVED_TELLS = 3
REMOVED_TELL_WINDOW = 3600.0
#: The roles ``groups.setRole`` gives, by their API name (the founder role is not given).
ROLES = {"admin": Role.ADMIN, "member": Role.MEMBER}


@dataclass
class Group:
    """One group this node is (or was) a member of."""

    states: list[GroupState]
    membership: Membership
    log: GroupLog
    #: messages naming a state version not held yet: offered again when it arrives
    parked: list[GroupMessage] = field(default_factory=list)
    #: states received ahead of the next version: by sender uid, by version, with their size
    ahead: dict[str, dict[int, tuple[GroupState, int]]] = field(default_factory=dict)
    #: the highest version heard of that was dropped as too far ahead (sync asks for it)
    behind: int = 0
    #: how many messages of other members are shown
    others_shown: int = 0
    #: how many of them were shown when the group was last marked read (stored)
    read: int = 0
    left: bool = False
    #: no desktop notification for its messages (stored, ours only)
    muted: bool = False

    @property
    def unread(self) -> int:
        """Messages of other members shown since the group was last marked read."""
        return max(0, self.others_shown - self.read)

    @property
    def state(self) -> GroupState:
        return self.states[-1]

    @property
    def group_id(self) -> bytes:
        return self.states[0].group_id


@dataclass
class Delivery:
    """Where one of our group messages got to: its entries (one per member) delivered."""

    group_id: bytes
    #: how many members it went to (the other members of the state it was written under)
    members: int
    delivered: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Invitation:
    """A received invitation: the chain of states and who handed it over."""

    invite_id: str
    sender: str
    chain: tuple[GroupState, ...]

    @property
    def state(self) -> GroupState:
        return self.chain[-1]


class Groups:
    """The node's groups: see the module docstring.

    :param clock: time for the sync timers.
    :param now: wall-clock time in seconds since the epoch.
    :param emit: ``(event, payload)``: publishes API events.
    :param courier: queues the fan-out entries (``queue_group_entry``, ``is_connected``).
    :param contacts: the contact book (resolving contacts, display names).
    :param keepalive: mean seconds between keepalive summaries (jittered by half).
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        now: Callable[[], float],
        emit: Callable[[str, Any], None],
        courier: Any,
        contacts: Any,
        keepalive: float = SYNC_INTERVAL,
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
    ) -> None:
        self.clock = clock
        #: runs blocking work on a thread (the unlock's signature checks); None: inline
        self._run_blocking = run_blocking
        self.keepalive = keepalive
        self.now = now
        self._emit = emit
        self._courier = courier
        self._contacts = contacts
        self._store: Store | None = None
        self._identity: IdentityKey | None = None
        self._addresses = b""
        self._groups: dict[bytes, Group] = {}
        self._invites: dict[str, Invitation] = {}
        self._peers: dict[str, tuple[bytes, tuple[str, ...]]] = {}
        self._network: Any = None
        self._timers: dict[bytes, Any] = {}
        self._keepalive: Any = None
        #: (state entry id hex, uid): a peer kept until the state we signed that parted us
        #: (their removal, our leaving) is delivered to them; and those delivered
        self._departing: set[tuple[str, str]] = set()
        self._told: set[tuple[str, str]] = set()
        #: our own group messages by id (hex): to how many members their entries went
        self._deliveries: dict[str, Delivery] = {}
        #: called with no argument when the set of group peers changed
        self.on_peers_changed: Callable[[], None] = lambda: None
        #: the mailbox side (set by the node): our group queues, published in our entries
        self.postbox: Any = None
        self._address_list: list[str] = []
        #: group ids whose mailbox publication is under way
        self._publishing: set[bytes] = set()
        #: per group: deposits from unknown keys waiting for its next state
        self._member_waits: dict[bytes, list[tuple[defer.Deferred[bool], Any]]] = {}
        #: (group id, uid) -> when we last told that removed member of its removal
        self._removal_told: dict[tuple[bytes, str], list[float]] = {}
        #: our own display name, published in our member entry of every group
        self._display_name = ""
        #: per group: (the state they were read from, uid -> the member's self-chosen name)
        self._chosen: dict[bytes, tuple[GroupState, dict[str, str]]] = {}

    # -- life cycle ----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def open(
        self,
        store: Store,
        identity: IdentityKey,
        addresses: Iterable[str],
        *,
        display_name: str = "",
    ) -> Any:
        """Read the groups back from *store* (the identity is unlocked); *display_name* (our
        own name, cleaned of control and bidi characters and cut to 64 bytes) goes into our
        member entry of every group we are in."""
        self._store = store
        self._identity = identity
        self._display_name = clean_display_name(display_name)
        self._address_list = list(addresses)
        self._addresses = encode_addresses(self._address_list)
        rows = yield store.run(group_queries.load_group_records, write=False)
        states: list[GroupState] = []
        messages: list[GroupMessage] = []
        left: set[bytes] = set()
        muted: set[bytes] = set()
        read: dict[bytes, int] = {}
        for kind, data in rows:
            try:
                if kind == "state":
                    states.append(parse_state(data))
                elif kind == "message":
                    messages.append(parse_message(data))
                elif kind == "invite":
                    record = json.loads(data)
                    chain = tuple(parse_chain(bytes.fromhex(record["chain"])))
                    self._invites[record["id"]] = Invitation(record["id"], record["from"], chain)
                elif kind == "setting":
                    record = json.loads(data)
                    if record.get("left"):
                        left.add(bytes.fromhex(record["group"]))
                    if record.get("muted"):
                        muted.add(bytes.fromhex(record["group"]))
                    read[bytes.fromhex(record["group"])] = int(record.get("read", 0))
            except (ValueError, KeyError):
                self.log.warn("an unreadable group record was skipped")
        states.sort(key=lambda s: (s.group_id, s.version))
        chains: dict[bytes, list[GroupState]] = {}
        for state in states:
            held = chains.setdefault(state.group_id, [])
            if not held:
                held.append(state)
            elif state.version == held[-1].version + 1 and state.prev_hash == state_hash(held[-1]):
                held.append(state)
            elif (
                len(held) > 1
                and state.version == held[-1].version
                and state.prev_hash == held[-1].prev_hash
            ):
                held[-1] = preferred(held[-1], state)  # two admins' concurrent changes
        for gid, held in chains.items():
            membership = Membership(held)
            self._groups[gid] = Group(held, membership, GroupLog(gid, membership))
        for group in self._groups.values():
            group.left = group.group_id in left or not self._is_member(group.state)
            group.muted = group.group_id in muted
        valid = yield self._signatures_valid(messages)  # Ed25519 checks off the reactor
        for message, ok in zip(messages, valid, strict=True):
            target = self._groups.get(message.group_id)
            if target is not None:
                self._offer(target, message, verified=ok)
        own = identity.public_bytes
        for group in self._groups.values():
            group.read = read.get(group.group_id, 0)
            for m in group.log.shown():
                if m.author == own:
                    self._track(group, m)
                else:
                    group.others_shown += 1
        if self._deliveries:
            delivered = yield store.run(
                group_queries.delivered_to, list(self._deliveries), write=False
            )
            for mid, uids in delivered.items():
                self._deliveries[mid].delivered.update(uids)
        self._update_peers()
        for group in self._groups.values():
            self._publish_name(group)
        if self._departing:
            told = yield store.run(
                group_queries.delivered_to, [mid for mid, _ in self._departing], write=False
            )
            self._told.update(k for k in self._departing if k[1] in told.get(k[0], ()))
            self._update_peers()
        self._schedule_keepalive()

    def _track(self, group: Group, message: GroupMessage) -> Delivery:
        """Start counting the deliveries of our *message*."""
        mid = message_id(message).hex()
        written_under = next(
            (s for s in group.states if s.version == message.state_version), group.state
        )
        delivery = Delivery(group.group_id, len(written_under.members) - 1)
        self._deliveries[mid] = delivery
        return delivery

    def event_seen(self, event: str, payload: Any) -> None:
        """An event of the node: a ``message.stateChanged`` of an entry of one of our group
        messages to *delivered* or *read* counts that member once, and emits
        ``group.delivery`` ``{group, id, delivered, members}`` when the count grew."""
        if event != "message.stateChanged" or payload.get("state") not in ("delivered", "read"):
            return
        mid = payload.get("id")
        departing = (mid, payload.get("contact"))
        if departing in self._departing and self._identity is not None:
            self._told.add(departing)  # type: ignore[arg-type]
            self._update_peers()
            return
        delivery = self._deliveries.get(mid) if isinstance(mid, str) else None
        if delivery is None or payload.get("contact") in delivery.delivered:
            return
        delivery.delivered.add(payload.get("contact"))
        self._emit(
            "group.delivery",
            {
                "group": delivery.group_id.hex(),
                "id": mid,
                "delivered": len(delivery.delivered),
                "members": delivery.members,
            },
        )

    def close(self) -> None:
        """Forget everything (the keys are being wiped)."""
        for timer in [*self._timers.values(), self._keepalive]:
            if timer is not None and timer.active():
                timer.cancel()
        self._timers.clear()
        self._keepalive = None
        self._store = None
        self._identity = None
        self._groups.clear()
        self._invites.clear()
        self._peers.clear()
        self._deliveries.clear()
        self._departing.clear()
        self._told.clear()
        self._removal_told.clear()
        self._network = None
        self._publishing.clear()
        for gid in list(self._member_waits):
            self._wake_waiters(gid, False)

    def attach(self, network: Any) -> None:
        """Keep sessions with the group peers who are not contacts on *network*."""
        self._network = network
        for uid in self._peers:
            if self._contacts.get(uid) is None:
                network.connect(uid)

    # -- group peers (members who are not contacts) -------------------------------------------

    def is_peer(self, uid: str) -> bool:
        """Whether *uid* shares a group with us (its session carries group payloads only)."""
        return uid in self._peers

    def peer_key(self, uid: str) -> bytes | None:
        entry = self._peers.get(uid)
        return entry[0] if entry else None

    def peer_addresses(self, uid: str) -> tuple[str, ...]:
        entry = self._peers.get(uid)
        return entry[1] if entry else ()

    def peer_uids(self) -> list[str]:
        return list(self._peers)

    # -- files into a group (jarvis.core.transfers) --------------------------------------------

    def shares(self, gid: bytes, uid: str) -> bool:
        """Whether *uid* is a member of group *gid* while we are one too (a file offered into
        that group by *uid* is ours to show)."""
        group = self._groups.get(gid)
        return (
            group is not None
            and not group.left
            and self._identity is not None
            and self._is_member(group.state)
            and uid != self._identity.uid
            and group.state.member(uid) is not None
        )

    def file_recipients(self, ref: str) -> tuple[bytes, list[str]]:
        """``(group id, uids)``: whom a file sent into group *ref* is offered to, every other
        member.

        :raises InvalidInput: if we left it or are its only member.
        """
        gid, uids = self.other_members(ref)
        if not uids:
            raise InvalidInput("the group has no other member to send the file to")
        return gid, uids

    def other_members(self, ref: str) -> tuple[bytes, list[str]]:
        """``(group id, uids)``: every member of group *ref* but us (maybe none).

        :raises InvalidInput: if we left it.
        """
        self._require()
        group = self._live(ref)
        own = self._own_key()
        return group.group_id, [m.uid for m in group.state.members if m.public_key != own]

    def member_name(self, gid: bytes, uid: str) -> str | None:
        """How *uid* is shown in group *gid* (None if we hold no such group)."""
        group = self._groups.get(gid)
        return self._name_of(uid, group) if group is not None else None

    def _update_peers(self) -> None:
        """Recompute the group peers: the members of every group we are in, the members the
        latest state removed (they are told of their removal once), and, for a group we left
        ourselves, its remaining members (they are told of our leaving)."""
        own = self._own_key()
        peers: dict[str, tuple[bytes, tuple[str, ...]]] = {}
        self._departing = set()
        for group in self._groups.values():
            members = list(group.state.members)
            if group.left:
                departed = {d.public_key for d in group.state.departed}
                if group.state.signer != own or own not in departed:
                    continue
                members = [m for m in members if self._keep_departing(group, m.uid)]
            elif len(group.states) > 1:
                gone = {d.public_key for d in group.state.departed}
                members += [
                    m
                    for m in group.states[-2].members
                    if m.public_key in gone and self._keep_departing(group, m.uid)
                ]
            for m in members:
                if m.public_key == own:
                    continue
                addresses, _mailbox = parse_addresses(m.addresses)
                peers[m.uid] = (m.public_key, addresses)
        old = set(self._peers)
        self._peers = peers
        if self._network is not None:
            for uid in set(peers) - old:
                if self._contacts.get(uid) is None:
                    self._network.connect(uid)
            for uid in old - set(peers):
                if self._contacts.get(uid) is None:
                    self._network.forget(uid)
        if old != set(peers):
            self.on_peers_changed()

    def _keep_departing(self, group: Group, uid: str) -> bool:
        """Whether *uid*, no longer our fellow member in *group*, stays a group peer: only
        while the state we signed that parted us (their removal, our leaving) is not yet
        delivered to them.  A member that only received the state drops them at once."""
        if group.state.signer != self._own_key():
            return False
        key = (state_hash(group.state)[:ENTRY_ID_SIZE].hex(), uid)
        if key in self._told:
            return False
        self._departing.add(key)
        return True

    # -- the mailbox: our group queues, the members' queues ---------------------------------

    def peer_mailbox(self, uid: str, body: bytes | None = None) -> MailboxAddress | None:
        """Where to deposit for group peer *uid*: the group queue in its member entry of the
        group *body* (a 1:1 body carrying a group payload) is about, or, for anything else
        (acks), of the first group we share in which it has one.  ``None``: nowhere."""
        if uid not in self._peers or self._contacts.get(uid) is not None:
            return None  # a contact: the queue it told us (chat and group entries alike)
        gid = None
        if body is not None:
            try:
                payload = decode_body(body)
            except ValueError:
                payload = None
            if payload is not None:
                gid = payload_group_id(payload)
            if gid is None:
                return None
        groups = [self._groups[gid]] if gid in self._groups else []
        if gid is None:
            groups = sorted(self._groups.values(), key=lambda g: g.group_id)
        for group in groups:
            # the latest state, or the one before it (a member it removed is told so)
            for state in reversed(group.states[-2:]):
                member = state.member(uid)
                if member is None:
                    continue
                _addresses, mailbox = parse_addresses(member.addresses)
                if mailbox is not None:
                    return MailboxAddress(
                        mailbox.link, mailbox.sender_id, mailbox.sender_key, mailbox.prekey
                    )
                break
        return None

    def group_senders(self, gid: bytes) -> list[tuple[str, bytes]]:
        """Who may deposit into our queue for group *gid*: its members (and those its latest
        state removed, whose last entries may still be on their way), not us."""
        group = self._groups.get(gid)
        if group is None or self._identity is None:
            return []
        own = self._own_key()
        senders: dict[str, bytes] = {}
        for state in group.states[-2:]:
            for m in state.members:
                if m.public_key != own:
                    senders[m.uid] = m.public_key
        return sorted(senders.items())

    def wait_for_members(self, gid: bytes) -> defer.Deferred[bool]:
        """A Deferred firing True at group *gid*'s next state, or False after
        :data:`GROUP_SENDER_WAIT` seconds without one (or at lock)."""
        d: defer.Deferred[bool] = defer.Deferred()
        if self._identity is None or gid not in self._groups:
            d.callback(False)
            return d
        clock: Any = self.clock
        waits = self._member_waits.setdefault(gid, [])
        if len(waits) >= MAX_MEMBER_WAITS:
            self.log.warn(
                "a deposit from a key that is not a member dropped: {n} already wait",
                n=len(waits),
            )
            d.callback(False)
            return d

        def expire() -> None:
            for i, (waiting, _timer) in enumerate(waits):
                if waiting is d:
                    del waits[i]
                    d.callback(False)
                    return

        waits.append((d, clock.callLater(GROUP_SENDER_WAIT, expire)))
        return d

    def _wake_waiters(self, gid: bytes, changed: bool) -> None:
        for d, timer in self._member_waits.pop(gid, []):
            if timer.active():
                timer.cancel()
            d.callback(changed)

    def _states_moved(self, group: Group) -> None:
        """New states held: deposits waiting for a member are tried again, and entries
        queued for group peers without a session go to the mailbox a state may just have
        given them."""
        self._wake_waiters(group.group_id, True)
        schedule = getattr(self._courier, "schedule_mailbox", None)
        if schedule is None:
            return
        for m in group.state.members:
            if m.uid in self._peers and not self._courier.is_connected(m.uid):
                schedule(m.uid)

    def mailbox_changed(self) -> None:
        """Our mailbox, its queues or our prekey changed: every group we are in gets our
        group queue for it in our member entry (a state version we sign ourselves)."""
        for group in list(self._groups.values()):
            self._republish(group)

    def _publish_name(self, group: Group) -> None:
        """Sign the next state of *group* with our display name in our own member entry if it
        carries another one (a name chosen before, none yet); the addresses stay."""
        identity = self._identity
        own = group.state.member_by_key(self._own_key())
        if identity is None or group.left or own is None:
            return
        name, addresses = self._display_name, own.addresses
        if own.display_name == name:
            return
        d = self._change(
            group,
            lambda s: set_addresses(s, identity, identity.uid, addresses, display_name=name),
        )
        d.addErrback(
            lambda f: self.log.warn("our group display name not published: {e}", e=f.value)
        )

    def _republish(self, group: Group) -> None:
        if self._identity is None or group.left:
            return
        if group.group_id in self._publishing:
            return
        self._publishing.add(group.group_id)

        def done(result: Any) -> Any:
            self._publishing.discard(group.group_id)
            return result

        d = self._publish_mailbox(group).addBoth(done)
        d.addErrback(lambda f: self.log.warn("our group mailbox not published: {e}", e=f.value))

    @defer.inlineCallbacks
    def _publish_mailbox(self, group: Group) -> Any:
        """Make our queue for *group* at our mailbox if missing; if our member entry does not
        carry it (or carries an old one: another mailbox, an expired prekey, none any more),
        sign the next state with our own addresses replaced and fan it out."""
        identity = self._identity
        assert identity is not None
        own = group.state.member_by_key(identity.public_bytes)
        if own is None:
            return
        card = parse_addresses(own.addresses)[1]
        if self.postbox is not None:
            card = yield self.postbox.ensure_group_queue(group.group_id)
        if self._identity is not identity or group.left:
            return
        own = group.state.member_by_key(identity.public_bytes)
        if own is None:
            return
        addresses, current = parse_addresses(own.addresses)
        new = own.addresses
        if current != card:
            new = encode_addresses(self._address_list or addresses, card)
        name = self._display_name
        if new == own.addresses and name == own.display_name:
            return
        yield self._change(
            group,
            lambda s: set_addresses(s, identity, identity.uid, new, display_name=name),
        )

    # -- helpers -------------------------------------------------------------------------------

    def _own_key(self) -> bytes:
        assert self._identity is not None
        return self._identity.public_bytes

    def _is_member(self, state: GroupState) -> bool:
        return state.member_by_key(self._own_key()) is not None

    def _require(self) -> tuple[Store, IdentityKey]:
        if self._store is None or self._identity is None:
            raise InvalidInput("groups are not open")
        return self._store, self._identity

    def resolve(self, ref: str) -> Group:
        """Find a group by id (or a unique id prefix of 4 or more hex digits) or by name.

        :raises NotFound: if nothing matches.
        :raises Ambiguous: if several groups match.
        """
        if not isinstance(ref, str) or not ref:
            raise InvalidInput("a group is named by its id or its name")
        lowered = ref.lower()
        for gid, group in self._groups.items():
            if gid.hex() == lowered:
                return group
        named = [g for g in self._groups.values() if g.state.name == ref]
        if not named and len(lowered) >= 4:
            named = [g for gid, g in self._groups.items() if gid.hex().startswith(lowered)]
        if len(named) > 1:
            live = [g for g in named if not g.left]
            if len(live) == 1:
                return live[0]
            raise Ambiguous(f"{ref!r} names {len(named)} groups: use the group id")
        if not named:
            raise NotFound(f"no group called {ref!r}: 'jarvis group list' lists them")
        return named[0]

    def _name_of(self, uid: str, group: Group | None = None) -> str:
        """How *uid* is shown: "me"; a contact by the name we gave it (a petname wins); a
        member who is not a contact by its self-chosen name marked unverified, ``~bob``, with
        its short uid when another member or contact goes by the same name; else a uid
        prefix."""
        if uid == (self._identity.uid if self._identity else None):
            return "me"
        if group is None or self._contacts.get(uid) is not None:
            return str(self._contacts.display_name(uid))
        chosen = self._chosen_names(group)
        name = chosen.get(uid, "")
        if not name:
            return uid[:12]
        wanted = name.casefold()
        clash = wanted in (self._display_name.casefold(), "me") or any(
            other != uid and theirs.casefold() == wanted for other, theirs in chosen.items()
        )
        if not clash:
            clash = any(
                str(self._contacts.display_name(m.uid)).casefold() == wanted
                for m in group.state.members
                if self._contacts.get(m.uid) is not None
            )
        return f"~{name} ({uid[:8]})" if clash else f"~{name}"

    def _chosen_names(self, group: Group) -> dict[str, str]:
        """uid -> the name each member (or departed member) last chose for itself."""
        cached = self._chosen.get(group.group_id)
        if cached is not None and cached[0] is group.state:
            return cached[1]
        chosen: dict[str, str] = {}
        for state in group.states:
            for m in state.members:
                if m.display_name:
                    chosen[m.uid] = m.display_name
                else:
                    chosen.pop(m.uid, None)
        self._chosen[group.group_id] = (group.state, chosen)
        return chosen

    def _view(self, group: Group) -> dict[str, Any]:
        state = group.state
        return {
            "id": group.group_id.hex(),
            "name": state.name,
            "topic": state.topic,
            "version": state.version,
            "members": len(state.members),
            "role": _role_name(state, self._own_key()),
            "unread": group.unread,
            "messages": len(group.log.shown()),
            "left": group.left,
            "muted": group.muted,
        }

    def _message_view(self, group: Group, m: GroupMessage, index: int) -> dict[str, Any]:
        mid = message_id(m).hex()
        delivery = self._deliveries.get(mid)
        shared = _shared_file(m)
        if shared is not None:
            body = f"shared a file: {shared.name} ({human_bytes(shared.size)})"
            file: dict[str, Any] | None = {
                "name": shared.name,
                "size": shared.size,
                "media_type": shared.media_type,
                "hash": shared.content_hash.hex(),
            }
        elif is_shared_file_body(m.body):
            body, file = "shared a file (unreadable)", None
        else:
            body, file = m.body.decode("utf-8", "replace"), None
        return {
            "id": mid,
            "delivered": len(delivery.delivered) if delivery else None,
            "members": delivery.members if delivery else None,
            "group": group.group_id.hex(),
            "author": m.author_uid,
            "author_name": self._name_of(m.author_uid, group),
            "body": body,
            "file": file,
            "seq": m.seq,
            "created": m.created / 1000.0,
            "index": index,
        }

    def _persist(self, records: list[tuple[str, bytes, bytes]]) -> defer.Deferred[Any]:
        store = self._store
        if store is None or not records:
            return defer.succeed(0)
        return store.run(group_queries.put_group_records, records, write=True)

    def _send(self, uid: str, entry_id: bytes | None, payload: bytes) -> defer.Deferred[Any]:
        """Queue one durable entry to *uid* (a fresh id when *entry_id* is None)."""
        mid = entry_id.hex() if entry_id is not None else new_message_id(self.now())
        d = self._courier.queue_group_entry(uid, mid, payload)
        return d.addErrback(self._send_failed, uid)

    def _send_failed(self, failure: Any, uid: str) -> None:
        from jarvis.store.rows import DuplicateMessage

        if failure.check(DuplicateMessage):
            return None  # this very entry is already queued or delivered
        self.log.warn("a group entry to {uid} was not queued: {e}", uid=log_id(uid), e=failure)
        return None

    def _fan_state(self, previous: GroupState | None, state: GroupState) -> defer.Deferred[Any]:
        sends = [
            self._send(e.recipient, e.entry_id, e.payload)
            for e in plan_state(previous, state, self._own_key())
        ]
        return defer.gatherResults(sends)

    # -- the API -------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def create(self, name: str, topic: str = "") -> Any:
        """Found a group with us as its only member; :returns: its view (``id``: the group id)."""
        _store, identity = self._require()
        try:
            state = found_group(
                identity,
                name,
                topic=topic,
                addresses=self._addresses,
                display_name=self._display_name,
            )
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        membership = Membership([state])
        group = Group([state], membership, GroupLog(state.group_id, membership))
        yield self._persist([("state", state_hash(state), encode_state(state))])
        self._groups[state.group_id] = group
        view = self._view(group)
        self._emit("group.changed", {"group": view})
        self._republish(group)
        return view

    def list_groups(self) -> list[dict[str, Any]]:
        """Every group, by name."""
        self._require()
        return sorted((self._view(g) for g in self._groups.values()), key=lambda v: v["name"])

    def members(self, ref: str) -> dict[str, Any]:
        """The members of a group with their role, and whether a session is up."""
        self._require()
        group = self.resolve(ref)
        own = self._own_key()
        members = []
        for m in group.state.members:
            members.append(
                {
                    "uid": m.uid,
                    "name": self._name_of(m.uid, group),
                    "display_name": m.display_name,
                    "role": m.role.name.lower(),
                    "contact": self._contacts.get(m.uid) is not None,
                    "me": m.public_key == own,
                    "online": m.public_key == own or self._courier.is_connected(m.uid),
                }
            )
        return {"group": group.group_id.hex(), "members": members}

    @defer.inlineCallbacks
    def invite(self, ref: str, contact_ref: str) -> Any:
        """Add a contact to a group (admins and the founder): a new state to every member, the
        whole chain to the invitee, whose daemon lists it as an invitation."""
        _store, identity = self._require()
        group = self._live(ref)
        contact = self._contacts.resolve(contact_ref)
        if not contact.public_key:
            raise InvalidInput("the contact's key is not known yet: connect with it once first")
        addresses = encode_addresses(contact.addresses)
        state = yield self._change(
            group,
            lambda s: invite(s, identity, bytes(contact.public_key), addresses=addresses),
        )
        chain = encode_payload(KIND_INVITE, encode_chain(group.states))
        yield self._send(contact.uid, None, chain)
        return {"group": group.group_id.hex(), "invited": contact.uid, "version": state.version}

    def invites(self) -> list[dict[str, Any]]:
        """The pending invitations."""
        self._require()
        return [self._invite_view(i) for i in self._invites.values()]

    def _invite_view(self, invitation: Invitation) -> dict[str, Any]:
        state = invitation.state
        return {
            "id": invitation.invite_id,
            "group": state.group_id.hex(),
            "name": state.name,
            "topic": state.topic,
            "from": invitation.sender,
            "from_name": self._name_of(invitation.sender),
            "members": len(state.members),
        }

    @defer.inlineCallbacks
    def join(self, invite_id: str) -> Any:
        """Accept an invitation: the group is ours from now on; history comes by sync."""
        store, _identity = self._require()
        invitation = self._invites.get(invite_id)
        if invitation is None:
            raise NotFound(f"no invitation {invite_id!r}: 'jarvis group invites' lists them")
        chain = list(invitation.chain)
        gid = chain[0].group_id
        existing = self._groups.get(gid)
        if existing is not None and not existing.left:
            del self._invites[invite_id]
            yield store.run(
                group_queries.delete_group_record, "invite", _key(invite_id), write=True
            )
            return self._view(existing)
        membership = Membership(chain)
        group = Group(chain, membership, GroupLog(gid, membership))
        self._groups[gid] = group
        del self._invites[invite_id]
        yield self._persist([("state", state_hash(s), encode_state(s)) for s in chain])
        yield store.run(group_queries.delete_group_record, "invite", _key(invite_id), write=True)
        yield self._set_left(group, False)
        self._update_peers()
        yield self._send_summary(group, [invitation.sender])
        view = self._view(group)
        self._emit("group.changed", {"group": view})
        self._republish(group)
        return view

    @defer.inlineCallbacks
    def decline(self, invite_id: str) -> Any:
        """Forget an invitation."""
        store, _identity = self._require()
        if self._invites.pop(invite_id, None) is None:
            raise NotFound(f"no invitation {invite_id!r}")
        yield store.run(group_queries.delete_group_record, "invite", _key(invite_id), write=True)
        return {"declined": invite_id}

    @defer.inlineCallbacks
    def send(self, ref: str, text: str) -> Any:
        """Write a message to a group: stored, then one entry per other member."""
        self._require()
        group = self._live(ref)
        if not isinstance(text, str) or not text:
            raise InvalidInput("a message needs some text")
        body = text.encode("utf-8")
        if len(body) > MAX_BODY_BYTES:
            raise InvalidInput(f"a group message holds at most {MAX_BODY_BYTES} bytes")
        if is_shared_file_body(body):
            raise InvalidInput("a message may not start with a NUL character")
        view = yield self._write(group, body)
        return view

    @defer.inlineCallbacks
    def share_file(self, gid: bytes, shared: SharedFile) -> Any:
        """Record in group *gid* that we shared the file *shared* into it: a group message
        (in every member's history, and a later member's) that members ask us for the file
        by (``Transfers.request``)."""
        self._require()
        group = self._groups.get(gid)
        if group is None or group.left:
            raise InvalidInput("you are no longer a member of this group")
        view = yield self._write(group, encode_shared_file(shared))
        return view

    def shared_file(
        self, ref: str, message_ref: str, holder: str | None = None
    ) -> tuple[bytes, str, SharedFile]:
        """``(group id, uid to ask, file)`` of the shared file message *message_ref* (its id,
        or a unique prefix of 8 or more hex digits) in group *ref*: its author, or the member
        *holder* (a uid, a uid prefix or a contact's name) when given; ``""`` instead of the
        author when it has left the group (its daemon would drop the request: other members
        are asked, :meth:`jarvis.core.transfers.Transfers.request`).

        :raises NotFound: if no single message of that group has that id, or *holder* is not
            a member.
        :raises InvalidInput: if it is not a shared file, or we would ask ourselves.
        """
        self._require()
        group = self._live(ref)
        wanted = message_ref.strip().lower() if isinstance(message_ref, str) else ""
        found = [
            m
            for m in group.log.shown()
            if len(wanted) >= 8 and message_id(m).hex().startswith(wanted)
        ]
        if len(found) != 1:
            raise NotFound(f"no single message {wanted[:32]!r} in this group")
        (m,) = found
        shared = _shared_file(m)
        if shared is None:
            raise InvalidInput("that message is not a shared file")
        if holder is not None:
            member = self._member(group, holder)
            if member.public_key == self._own_key():
                raise InvalidInput("you cannot ask yourself for a file")
            return group.group_id, member.uid, shared
        if m.author == self._own_key():
            raise InvalidInput("you shared that file yourself")
        if group.state.member(m.author_uid) is None:
            return group.group_id, "", shared  # it would drop the request unanswered
        return group.group_id, m.author_uid, shared

    @defer.inlineCallbacks
    def _write(self, group: Group, body: bytes) -> Any:
        """Write a message with *body* to *group*: stored, then one entry per other member."""
        _store, identity = self._require()
        own = self._own_key()
        head = group.log.head(own)
        message = write_message(
            identity,
            group.group_id,
            seq=(head.seq if head else 0) + 1,
            prev_hash=head.hash if head else NO_HASH,
            state_version=group.state.version,
            created=int(self.now() * 1000),
            parents=group.log.parents_for(own, MAX_PARENTS),
            body=body,
        )
        offered = group.log.offer(message)
        if offered.outcome is not Outcome.accepted:
            raise InvalidInput(f"the message was not accepted: {offered.reason}")
        entries = plan_message(group.state, message)
        self._track(group, message)
        # Stored in the same store batch as the entries (one reactor turn, one transaction).
        stored = self._persist([("message", message_hash(message), encode_message(message))])
        sends = [self._send(e.recipient, e.entry_id, e.payload) for e in entries]
        try:
            yield defer.gatherResults([stored, *sends], consumeErrors=True)
        except defer.FirstError as e:
            self.log.failure("a group message was not stored", e.subFailure)
            e.subFailure.raiseException()
        self._announce(group, offered.shown)
        return self._message_view(group, message, len(group.log.shown()) - 1)

    def history(self, ref: str, *, limit: int = 50) -> dict[str, Any]:
        """The last *limit* messages shown, oldest first, in the order every member shows."""
        self._require()
        group = self.resolve(ref)
        if not 1 <= limit <= 100000:
            raise InvalidInput("limit must be between 1 and 100000")
        shown = group.log.shown()
        start = max(0, len(shown) - limit)
        return {
            "group": group.group_id.hex(),
            "messages": [
                self._message_view(group, m, start + i) for i, m in enumerate(shown[start:])
            ],
        }

    @defer.inlineCallbacks
    def mark_read(self, ref: str) -> Any:
        """Reset a group's unread count (stored: it stays 0 after a restart)."""
        self._require()
        group = self.resolve(ref)
        group.read = group.others_shown
        yield self._put_setting(group)
        return {"group": group.group_id.hex(), "unread": 0}

    @defer.inlineCallbacks
    def set_muted(self, ref: str, muted: bool) -> Any:
        """Mute or unmute a group: a muted group's messages raise no desktop notification.
        Ours only (the other members are not told); stored.  :returns: the group's view."""
        self._require()
        group = self.resolve(ref)
        group.muted = bool(muted)
        yield self._put_setting(group)
        view = self._view(group)
        self._emit("group.changed", {"group": view})
        return view

    def notice_for(self, message: Mapping[str, Any]) -> str | None:
        """The name of the group of *message* (a ``group.message`` view) if it may raise a
        desktop notification: another member's, in a group we hold, are still in and did not
        mute; else ``None``."""
        try:
            group = self._groups.get(bytes.fromhex(str(message.get("group"))))
        except ValueError:
            return None
        mine = self._identity is not None and message.get("author") == self._identity.uid
        if group is None or group.muted or group.left or mine:
            return None
        return group.state.name

    @defer.inlineCallbacks
    def remove(self, ref: str, member_ref: str) -> Any:
        """Remove a member (admins and the founder): nobody fans out to them from now on, and
        their later messages are refused by every member."""
        _store, identity = self._require()
        group = self._live(ref)
        member = self._member(group, member_ref)
        head = group.log.head(member.public_key)
        state = yield self._change(
            group, lambda s: remove(s, identity, member.uid, last_seq=head.seq if head else 0)
        )
        return {"group": group.group_id.hex(), "removed": member.uid, "version": state.version}

    @defer.inlineCallbacks
    def leave(self, ref: str, to: str | None = None) -> Any:
        """Leave a group: a new state to every member, then nothing more.  The founder hands
        the founder role over in that same state: to the member *to*, else to the
        longest-standing admin, else to the longest-standing member.

        :returns: ``{group, left, version, founder}`` (founder: the founder's uid now).
        """
        _store, identity = self._require()
        group = self._live(ref)
        head = group.log.head(self._own_key())
        last_seq = head.seq if head else 0
        own = group.state.member_by_key(self._own_key())
        if own is not None and own.role is Role.FOUNDER:
            successor = (
                self._member(group, to) if to is not None else heir(group.state, group.membership)
            )
            if successor is None:
                raise InvalidInput("you are the only member: there is nobody to hand the group to")
            if successor.public_key == own.public_key:
                raise InvalidInput("hand the group over to another member")
            uid = successor.uid
            state = yield self._change(
                group, lambda s: hand_over(s, identity, uid, last_seq=last_seq)
            )
        else:
            if to is not None:
                raise InvalidInput("only the founder hands the group over (--to)")
            state = yield self._change(group, lambda s: leave(s, identity, last_seq=last_seq))
        return {
            "group": group.group_id.hex(),
            "left": True,
            "version": state.version,
            "founder": state.founder.uid,
        }

    @defer.inlineCallbacks
    def rename(self, ref: str, *, name: str | None = None, topic: str | None = None) -> Any:
        """Give a group a new name and/or topic (founder and admins): a new signed state to
        every member.  :returns: the group's view."""
        _store, identity = self._require()
        group = self._live(ref)
        if name is None and topic is None:
            raise InvalidInput("give a new name or a new topic")
        yield self._change(group, lambda s: rename(s, identity, name=name, topic=topic))
        return self._view(group)

    @defer.inlineCallbacks
    def set_role(self, ref: str, member_ref: str, role: str) -> Any:
        """Make a member an admin or a plain member (the founder only): a new signed state to
        every member.  :returns: ``{group, member (uid), role, version}``."""
        _store, identity = self._require()
        group = self._live(ref)
        wanted = ROLES.get(role) if isinstance(role, str) else None
        if wanted is None:
            raise InvalidInput("a role is 'admin' or 'member'")
        member = self._member(group, member_ref)
        if member.role is wanted:
            return {
                "group": group.group_id.hex(),
                "member": member.uid,
                "role": role,
                "version": group.state.version,
            }
        state = yield self._change(group, lambda s: set_role(s, identity, member.uid, wanted))
        return {
            "group": group.group_id.hex(),
            "member": member.uid,
            "role": role,
            "version": state.version,
        }

    def _live(self, ref: str) -> Group:
        group = self.resolve(ref)
        if group.left:
            raise InvalidInput("you are no longer a member of this group")
        return group

    def _member(self, group: Group, ref: str) -> Any:
        for m in group.state.members:
            if m.uid == ref.lower():
                return m
        try:
            contact = self._contacts.resolve(ref)
        except NotFound:
            contact = None
        if contact is not None:
            found = group.state.member(contact.uid)
            if found is not None:
                return found
        matches = [m for m in group.state.members if m.uid.startswith(ref.lower())]
        if len(matches) == 1:
            return matches[0]
        raise NotFound(f"{ref!r} is not a member of {group.state.name!r}")

    # -- states --------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _change(self, group: Any, make: Callable[[GroupState], GroupState]) -> Any:
        """Make the next state of *group* with *make* (invite, remove, leave, rename, role),
        keep it and fan it out to the members; a refused change is ``InvalidInput`` ("not
        allowed: ...") and changes nothing.

        :returns: a Deferred firing with the new state.
        """
        previous = group.state
        try:
            state = make(previous)
        except StateRefused as e:
            raise InvalidInput(f"not allowed: {e.reason}") from e
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        yield self._adopt(group, [state])
        yield self._fan_state(previous, state)
        return state

    @defer.inlineCallbacks
    def _adopt(self, group: Group, states: list[GroupState]) -> Any:
        """Hold *states* (already checked, in version order): membership, log, peers, store."""
        for state in states:
            group.states.append(state)
            group.membership.add(state)
        # at once, not after the store: what these states admit (a member's deposit opened
        # meanwhile against the new members) must find them peers
        self._update_peers()
        dropped, _shown = group.log.states_added()
        if dropped:
            own = self._own_key()
            group.others_shown = sum(1 for m in group.log.shown() if m.author != own)
        yield self._persist([("state", state_hash(s), encode_state(s)) for s in states])
        parked, group.parked = group.parked, []
        shown: list[GroupMessage] = []
        for message in parked:
            offered = self._offer(group, message)
            if offered is not None:
                shown += offered
        yield self._follow_membership(group)
        self._update_peers()
        self._emit("group.changed", {"group": self._view(group)})
        if dropped:
            self._emit(
                "group.dropped",
                {"group": group.group_id.hex(), "ids": [message_id(m).hex() for m in dropped]},
            )
        self._announce(group, shown)
        self._states_moved(group)

    @defer.inlineCallbacks
    def _follow_membership(self, group: Group) -> Any:
        """Mark the group left (``group.removed``) or not as the state held *now* says: after a
        store, since a next version may have been adopted, or a branch switched, meanwhile."""
        is_member = self._is_member(group.state)
        if not group.left and not is_member:
            yield self._set_left(group, True)
            self._emit("group.removed", {"group": group.group_id.hex(), "name": group.state.name})
        elif group.left and is_member:
            yield self._set_left(group, False)

    def _set_left(self, group: Group, left: bool) -> defer.Deferred[Any]:
        group.left = left
        return self._put_setting(group)

    def _put_setting(self, group: Group) -> defer.Deferred[Any]:
        """Store the group's own settings: whether we left, how many messages were read,
        whether it is muted."""
        store = self._store
        if store is None:
            return defer.succeed(None)
        setting = {
            "group": group.group_id.hex(),
            "left": group.left,
            "read": group.read,
            "muted": group.muted,
        }
        data = json.dumps(setting).encode()
        return store.run(
            group_queries.put_group_record,
            "setting",
            group.group_id,
            data,
            replace=True,
            write=True,
        )

    # -- receiving -----------------------------------------------------------------------------

    def payload_received(self, uid: str, payload: bytes) -> defer.Deferred[Any]:
        """A group payload from *uid* (over a session or the mailbox); fires once stored."""
        if self._store is None:
            return defer.succeed(None)
        try:
            kind, record = parse_payload(payload)
            if kind == KIND_MESSAGE:
                return self._message_received(uid, parse_message(record))
            if kind == KIND_STATE:
                return self._state_received(uid, parse_state(record), len(record))
            if kind == KIND_SUMMARY:
                return self._summary_received(uid, parse_summary(record))
            if kind == KIND_INVITE:
                return self._invite_received(uid, parse_chain(record))
        except ValueError as e:
            self.log.warn("a group payload from {uid} refused: {e}", uid=log_id(uid), e=str(e))
        return defer.succeed(None)

    def _sender_may_relay(self, group: Group, uid: str) -> bool:
        """Whether *uid* is a member now (or was removed by the latest state, whose messages
        from before their removal still arrive)."""
        return (
            uid in group.state.uids
            or uid in self._peers
            or uid in {m.uid for s in group.states[-2:] for m in s.members}
        )

    def _message_received(self, uid: str, message: GroupMessage) -> defer.Deferred[Any]:
        group = self._groups.get(message.group_id)
        if group is not None and message.author_uid == uid:
            self._tell_removed(group, uid, message.state_version)
        if group is None or group.left or not self._sender_may_relay(group, uid):
            self.log.info("a group message from {uid} refused: no shared group", uid=log_id(uid))
            return defer.succeed(None)
        before = len(group.parked)
        shown = self._offer(group, message)
        if shown is None and len(group.parked) == before:
            return defer.succeed(None)
        d = self._persist([("message", message_hash(message), encode_message(message))])
        if shown:
            self._announce(group, shown)
        if group.log.gaps() or group.parked:
            self._gap_seen(group, uid)
        return d

    def _signatures_valid(self, messages: list[GroupMessage]) -> defer.Deferred[list[bool]]:
        """Check the signatures of *messages* through ``run_blocking`` (inline without it):
        the unlock's Ed25519 work, one verification per stored message, off the reactor."""
        if self._run_blocking is None or not messages:
            return defer.succeed(signatures_valid(messages))
        return self._run_blocking(signatures_valid, list(messages))

    def _offer(
        self, group: Group, message: GroupMessage, *, verified: bool = False
    ) -> list[GroupMessage] | None:
        """Offer *message*: :returns: what became shown, or None if refused or a duplicate.
        *verified*: its signature was checked already (a message found invalid is offered
        with False: checked again, refused and logged in its turn, as before)."""
        offered = group.log.offer(message, verified=verified)
        if offered.outcome is Outcome.refused:
            if offered.reason == "state unknown":
                self._park(group, message)
            else:
                self.log.info("a group message refused: {reason}", reason=offered.reason)
            return None
        if offered.outcome is Outcome.forked:
            self.log.warn("fork evidence against {uid}", uid=log_id(message.author_uid))
            return None
        if offered.outcome is Outcome.duplicate:
            return None
        return list(offered.shown)

    def _park(self, group: Group, message: GroupMessage) -> None:
        """Keep *message* (naming a state version not held yet) until that state comes,
        within the group's budget (:data:`MAX_STATES_AHEAD`, :data:`MAX_PARKED`,
        :data:`MAX_PARKED_BYTES`): beyond it, drop it and let the sync fetch it later."""
        if message in group.parked:
            return
        held = group.state.version
        why = None
        if message.state_version > held + MAX_STATES_AHEAD:
            why = "too far ahead"
        elif len(group.parked) >= MAX_PARKED:
            why = "too many parked"
        elif sum(held_size(m) for m in group.parked) + held_size(message) > MAX_PARKED_BYTES:
            why = "too many bytes parked"
        if why is None:
            group.parked.append(message)
            return
        group.behind = max(group.behind, min(message.state_version, held + MAX_STATES_AHEAD))
        self.log.warn(
            "a group message naming state version {version} (ours {held}) dropped: {why};"
            " sync fetches it later",
            version=message.state_version,
            held=held,
            why=why,
        )

    def _announce(self, group: Group, shown: Iterable[GroupMessage]) -> None:
        own = self._own_key()
        total = len(group.log.shown())
        shown = list(shown)
        for i, m in enumerate(shown):
            if m.author != own:
                group.others_shown += 1
            self._emit(
                "group.message",
                {"message": self._message_view(group, m, total - len(shown) + i)},
            )

    def _keep_ahead(self, group: Group, uid: str, state: GroupState, size: int) -> bool:
        """Keep *state* (beyond the next version) from *uid* until the versions before it
        come, within the budgets (:data:`MAX_STATES_AHEAD`, :data:`MAX_AHEAD_PER_SENDER`,
        :data:`MAX_AHEAD_BYTES_PER_SENDER`, :data:`MAX_AHEAD_BYTES`); beyond them it is
        dropped (the sync fetches the real chain in order later).  :returns: whether kept."""
        held = group.state.version
        mine = group.ahead.get(uid, {})
        why = None
        if state.version == held + 1:
            pass  # the next version is always tried at once, whatever is kept ahead
        elif state.version > held + MAX_STATES_AHEAD:
            why = "too far ahead"
        elif state.version not in mine and len(mine) >= MAX_AHEAD_PER_SENDER:
            why = "too many states ahead from this sender"
        elif sum(n for v, (_, n) in mine.items() if v != state.version) + size > (
            MAX_AHEAD_BYTES_PER_SENDER
        ):
            why = "too many bytes ahead from this sender"
        elif (
            sum(n for sender, kept in group.ahead.items() for v, (_, n) in kept.items())
            - (mine[state.version][1] if state.version in mine else 0)
            + size
            > MAX_AHEAD_BYTES
        ):
            why = "too many bytes ahead in this group"
        if why is None:
            group.ahead.setdefault(uid, {})[state.version] = (state, size)
            return True
        group.behind = max(group.behind, min(state.version, held + MAX_STATES_AHEAD))
        self.log.warn(
            "a group state from {uid} (version {version}, ours {held}) dropped: {why};"
            " sync fetches the chain later",
            uid=log_id(uid),
            version=state.version,
            held=held,
            why=why,
        )
        return False

    def _next_ahead(self, group: Group, held: GroupState) -> GroupState | None:
        """Take the states kept for the version after *held* (from every sender) off
        ``group.ahead``: :returns: the valid one (:func:`preferred` of several), or None."""
        found: GroupState | None = None
        for sender, kept in list(group.ahead.items()):
            entry = kept.pop(held.version + 1, None)
            if not kept:
                del group.ahead[sender]
            if entry is None:
                continue
            try:
                candidate = accept_next(held, entry[0])
            except StateRefused as e:
                self.log.warn(
                    "a group state from {uid} refused: {reason}",
                    uid=log_id(sender),
                    reason=e.reason,
                )
                continue
            found = candidate if found is None else preferred(found, candidate)
        return found

    @defer.inlineCallbacks
    def _state_received(self, uid: str, state: GroupState, size: int = 0) -> Any:
        group = self._groups.get(state.group_id)
        if group is None:
            return
        if state.version <= group.state.version:
            # a relay or replay of what we hold, or another branch (docs/groups.md,
            # "Concurrent changes")
            yield self._branch_state(group, uid, state)
            return
        if state.version == group.state.version + 1 and state.prev_hash != state_hash(group.state):
            self.log.warn(
                "a group state from {uid} refused: it follows a version we do not hold"
                " (another branch?); ours sent back",
                uid=log_id(uid),
            )
            self._answer_fork(group, uid, group.state)
            return
        if not self._keep_ahead(group, uid, state, size or len(encode_state(state))):
            self._gap_seen(group, uid)
            return
        accepted: list[GroupState] = []
        held = group.state
        while True:
            following = self._next_ahead(group, held)
            if following is None:
                break
            held = following
            accepted.append(held)
        for sender, kept in list(group.ahead.items()):
            for version in [v for v in kept if v <= held.version]:
                del kept[version]
            if not kept:
                del group.ahead[sender]
        if accepted:
            yield self._adopt(group, accepted)
            self._republish(group)
        elif group.ahead:
            self._gap_seen(group, uid)

    @defer.inlineCallbacks
    def _invite_received(self, uid: str, chain: list[GroupState]) -> Any:
        if not chain or self._contacts.get(uid) is None:
            return  # invitations come from contacts only
        try:
            verify_founding(chain[0])
            last = accept_chain(chain[0], chain)
        except StateRefused as e:
            self.log.warn("an invitation from {uid} refused: {r}", uid=log_id(uid), r=e.reason)
            return
        if not self._is_member(last) or last.member(uid) is None:
            return
        existing = self._groups.get(last.group_id)
        if existing is not None and not existing.left:
            return
        invite_id = state_hash(last)[:6].hex()
        if invite_id in self._invites:
            return
        invitation = Invitation(invite_id, uid, tuple(chain))
        self._invites[invite_id] = invitation
        data = json.dumps(
            {"id": invite_id, "from": uid, "chain": encode_chain(chain).hex()}
        ).encode()
        store = self._store
        if store is not None:
            yield store.run(
                group_queries.put_group_record, "invite", _key(invite_id), data, write=True
            )
        self._emit("group.invited", {"invite": self._invite_view(invitation)})

    def _state_at(self, group: Group, version: int) -> GroupState | None:
        """Our state of *version* (None if we hold none of it)."""
        index = version - group.states[0].version
        if 0 <= index < len(group.states) and group.states[index].version == version:
            return group.states[index]
        return None

    def _answer_fork(self, group: Group, uid: str, state: GroupState) -> None:
        """Send *state* (ours) to member *uid*, which holds another state of its version or
        built on another one: it compares, and the preferred branch wins on both sides."""
        if group.left or group.state.member(uid) is None:
            return
        self._send(uid, None, encode_payload(KIND_STATE, encode_state(state)))

    @defer.inlineCallbacks
    def _branch_state(self, group: Group, uid: str, state: GroupState) -> Any:
        """*state* has a version we hold already: the same state (a relay or replay:
        nothing), or another change made at once on the same previous version (two admins),
        or one built on another such change further down.  Of two states of one version on
        the same previous one, every member keeps :func:`preferred`: if ours is kept, the
        sender gets our chain from there; if the sender's is, we switch to it (dropping our
        later versions, :meth:`_switch_branch`).  A state built on a previous version we do
        not hold is answered with ours of that version, so the sender finds where the two
        chains part (one round trip per version down to the fork)."""
        index = state.version - group.states[0].version
        ours = self._state_at(group, state.version)
        if ours is None or state == ours:
            return
        if index == 0:
            self.log.warn("a group state from {uid} refused: another founding", uid=log_id(uid))
            return
        parent = group.states[index - 1]
        if state.prev_hash != state_hash(parent):
            self._answer_fork(group, uid, parent)
            return
        try:
            accept_next(parent, state)
        except StateRefused as e:
            self.log.warn("a group state from {uid} refused: {r}", uid=log_id(uid), r=e.reason)
            return
        if preferred(ours, state) == ours:
            if not group.left and group.state.member(uid) is not None:
                for kept in group.states[index:]:
                    yield self._send(uid, None, encode_payload(KIND_STATE, encode_state(kept)))
            return
        yield self._switch_branch(group, index, state)

    @defer.inlineCallbacks
    def _switch_branch(self, group: Group, index: int, state: GroupState) -> Any:
        """Hold *state* instead of our state of its version (the one at *index*, same
        previous version, *state* preferred), dropping our later versions: membership and log
        rebuilt from the states, every message held offered again (a message naming a
        version we no longer hold waits for it).  Then the changes we signed on the dropped
        versions are made again on top (:meth:`_reapply`)."""
        before = group.log.shown()
        lost = group.states[index:]
        own = self._own_key()
        previous = [group.states[index - 1], *lost[:-1]]
        mine = [(p, s) for p, s in zip(previous, lost, strict=True) if s.signer == own]
        states = [*group.states[:index], state]
        membership = Membership(states)
        log = GroupLog(group.group_id, membership)
        group.states, group.membership, group.log = states, membership, log
        self._update_peers()
        parked, group.parked = group.parked, []
        for message in [*before, *parked]:
            self._offer(group, message)
        # what this replacement shows anew, taken now: a message offered while the state is
        # stored (our own send) is announced by whoever offered it, not twice
        before_ids = {message_hash(m) for m in before}
        fresh = [m for m in log.shown() if message_hash(m) not in before_ids]
        yield self._persist([("state", state_hash(state), encode_state(state))])
        group.others_shown = sum(1 for m in log.shown() if m.author != own)
        kept = {message_hash(m) for m in log.shown()}
        dropped = [m for m in before if message_hash(m) not in kept]
        yield self._follow_membership(group)
        self._update_peers()
        self._emit("group.changed", {"group": self._view(group)})
        if dropped:
            self._emit(
                "group.dropped",
                {"group": group.group_id.hex(), "ids": [message_id(m).hex() for m in dropped]},
            )
        self._announce(group, fresh)
        self._states_moved(group)
        self._republish(group)
        if mine:
            yield self._reapply(group, mine)

    @defer.inlineCallbacks
    def _reapply(self, group: Group, changes: list[tuple[GroupState, GroupState]]) -> Any:
        """Make again, on the chain we switched to, the changes we signed on the branch that
        lost (each ``(previous, lost)`` pair: rename/topic, members added, roles, removals,
        our leaving), those not already true there; a change the new chain does not allow
        (e.g. we are no longer an admin) is logged and skipped."""
        identity = self._identity
        if identity is None:
            return
        for previous, lost in changes:
            for make in _lost_changes(previous, lost, identity, group.log):
                if self._identity is not identity or not self._is_member(group.state):
                    return
                try:
                    state = make(group.state)
                except (StateRefused, ValueError) as e:
                    reason = e.reason if isinstance(e, StateRefused) else str(e)
                    self.log.warn("a lost group change not made again: {r}", r=reason)
                    continue
                if state is None:
                    continue
                self.log.info(
                    "a group change lost to a concurrent one made again (version {v})",
                    v=state.version,
                )
                yield self._change(group, _constantly(state))

    # -- sync ----------------------------------------------------------------------------------

    def _gap_seen(self, group: Group, uid: str) -> None:
        """A gap or a state ahead: ask soon (other copies may fill it first)."""
        gid = group.group_id
        timer = self._timers.get(gid)
        if timer is not None and timer.active():
            return
        clock: Any = self.clock
        self._timers[gid] = clock.callLater(GAP_DELAY, self._ask, gid, uid)

    def _ask(self, gid: bytes, uid: str) -> None:
        self._timers.pop(gid, None)
        group = self._groups.get(gid)
        if group is None or group.left or self._store is None:
            return
        if not (
            group.log.gaps() or group.parked or group.ahead or group.behind > group.state.version
        ):
            return
        targets = [uid, *self._connected_members(group)]
        self._send_summary(group, list(dict.fromkeys(targets))).addErrback(
            lambda f: self.log.failure("group summary not sent", f)
        )

    def _connected_members(self, group: Group) -> list[str]:
        own = self._own_key()
        return [
            m.uid
            for m in group.state.members
            if m.public_key != own and self._courier.is_connected(m.uid)
        ]

    def _send_summary(self, group: Group, uids: Iterable[str]) -> defer.Deferred[Any]:
        summary = replaced(
            group.log.summary(group.state.version), state_hash=state_hash(group.state)
        )
        payload = encode_payload(KIND_SUMMARY, encode_summary(summary))
        return defer.gatherResults([self._send(uid, None, payload) for uid in uids])

    @defer.inlineCallbacks
    def _summary_received(self, uid: str, summary: Any) -> Any:
        group = self._groups.get(summary.group_id)
        if group is not None:
            self._tell_removed(group, uid, summary.state_version)
        if group is None or group.left or group.state.member(uid) is None:
            return
        sends = []
        ours = self._state_at(group, summary.state_version)
        if ours is not None and summary.state_hash and summary.state_hash != state_hash(ours):
            # the same version, another state: both sides keep `preferred` once they hold
            # both (and find where the chains part first if they part further down)
            sends.append(self._send(uid, None, encode_payload(KIND_STATE, encode_state(ours))))
        elif summary.state_version < group.state.version:
            for state in group.states:
                if state.version > summary.state_version:
                    payload = encode_payload(KIND_STATE, encode_state(state))
                    sends.append(self._send(uid, None, payload))
        budget = MAX_SYNC_MESSAGES
        for gap in group.log.missing_for(summary):
            for m in group.log.messages(gap.author, gap.first, gap.last)[:budget]:
                sends.append(self._send(uid, None, encode_payload(KIND_MESSAGE, encode_message(m))))
                budget -= 1
        yield defer.gatherResults(sends)
        if group.log.wanted_from(summary) or summary.state_version > group.state.version:
            yield self._send_summary(group, [uid])

    def _tell_removed(self, group: Group, uid: str, since: int) -> None:
        """*uid* wrote to us (a summary or its own message) as a member at state version
        *since*, but a state we hold removed it: send it the states after *since* up to the
        first one that removed it, which it was sent at its removal already (nothing later,
        so nothing new leaks), at most :data:`REMOVED_TELLS` times per
        :data:`REMOVED_TELL_WINDOW` per group and peer.  A restored backup of a removed
        member so learns it was removed (``group.removed``) and stops writing."""
        if group.left or group.state.member(uid) is not None:
            return
        states = removal_states(group.states, uid, since)
        if not states:
            return
        if self._contacts.get(uid) is None and uid not in self._peers:
            return  # no way to reach it (no session accepted, no mailbox queue known)
        clock: Any = self.clock
        now = clock.seconds()
        key = (group.group_id, uid)
        told = [t for t in self._removal_told.get(key, []) if now - t < REMOVED_TELL_WINDOW]
        if len(told) >= REMOVED_TELLS:
            self._removal_told[key] = told
            return
        self._removal_told[key] = [*told, now]
        self.log.info(
            "a removed member {uid} still writes at version {since}: told it of its removal"
            " (version {version})",
            uid=log_id(uid),
            since=since,
            version=states[-1].version,
        )
        for state in states:
            self._send(uid, None, encode_payload(KIND_STATE, encode_state(state)))

    def _schedule_keepalive(self) -> None:
        clock: Any = self.clock
        self._keepalive = clock.callLater(self.keepalive * (0.5 + random.random()), self._tick)

    def _tick(self) -> None:
        """Keepalive: each group's summary to one connected member (Tox-style gossip)."""
        self._keepalive = None
        if self._store is None:
            return
        for group in list(self._groups.values()):
            if group.left:
                continue
            connected = self._connected_members(group)
            if connected:
                self._send_summary(group, [random.choice(connected)]).addErrback(
                    lambda f: self.log.failure("group keepalive not sent", f)
                )
        self._schedule_keepalive()


def removal_states(states: list[GroupState], uid: str, since: int) -> list[GroupState]:
    """The states of *states* (a chain in version order) after version *since*, up to the
    first one that removed *uid* (its departure: the version before listed it, this one does
    not); empty if none after *since* removed it."""
    for i in range(1, len(states)):
        state = states[i]
        if state.version <= since:
            continue
        if states[i - 1].member(uid) is not None and state.member(uid) is None:
            return [s for s in states[: i + 1] if s.version > since]
    return []


def _constantly(state: GroupState) -> Callable[[GroupState], GroupState]:
    """A ``make`` for :meth:`Groups._change` that gives *state* (made on the held state)."""
    return lambda _held: state


def _lost_changes(
    previous: GroupState, lost: GroupState, identity: IdentityKey, log: GroupLog
) -> list[Callable[[GroupState], GroupState | None]]:
    """What *lost* (signed by *identity*) changed from *previous*, as functions making that
    change on another held state (None: already so there)."""
    changes: list[Callable[[GroupState], GroupState | None]] = []
    if (lost.name, lost.topic) != (previous.name, previous.topic):

        def renamed(held: GroupState) -> GroupState | None:
            name = lost.name if lost.name != previous.name and held.name != lost.name else None
            topic = (
                lost.topic if lost.topic != previous.topic and held.topic != lost.topic else None
            )
            if name is None and topic is None:
                return None
            return rename(held, identity, name=name, topic=topic)

        changes.append(renamed)
    for m in lost.members:
        before = previous.member_by_key(m.public_key)
        if before is None:

            def invited(held: GroupState, m: Any = m) -> GroupState | None:
                if held.member_by_key(m.public_key) is not None:
                    return None
                return invite(held, identity, m.public_key, addresses=m.addresses, role=m.role)

            changes.append(invited)
        elif before.role is not m.role:

            def role_set(held: GroupState, m: Any = m) -> GroupState | None:
                now = held.member_by_key(m.public_key)
                if now is None or now.role is m.role:
                    return None
                return set_role(held, identity, m.uid, m.role)

            changes.append(role_set)
    for d in lost.departed:

        def departed(held: GroupState, key: bytes = d.public_key) -> GroupState | None:
            gone = held.member_by_key(key)
            if gone is None:
                return None
            head = log.head(key)
            last_seq = head.seq if head else 0
            if key == identity.public_bytes:
                return leave(held, identity, last_seq=last_seq)
            return remove(held, identity, gone.uid, last_seq=last_seq)

        changes.append(departed)
    return changes


def _key(invite_id: str) -> bytes:
    return invite_id.encode("ascii")


def _shared_file(m: GroupMessage) -> SharedFile | None:
    """The file a message records as shared, or None (text, or a malformed record)."""
    if not is_shared_file_body(m.body):
        return None
    try:
        return parse_shared_file(m.body)
    except MalformedTransferRecord:
        return None


def _role_name(state: GroupState, key: bytes) -> str | None:
    member = state.member_by_key(key)
    return member.role.name.lower() if member else None


class GroupDirectory:
    """The peer network's directory: the contact book, plus the group peers (members who are
    not contacts), who may connect and be dialled at the addresses their group state gives.
    Their sessions carry group payloads only (the courier drops anything else)."""

    def __init__(self, contacts: Any, groups: Groups) -> None:
        self._contacts = contacts
        self._groups = groups

    def is_acceptable(self, uid: str) -> bool:
        if self._contacts.get(uid) is not None:
            return bool(self._contacts.is_acceptable(uid))
        return self._groups.is_peer(uid)

    def public_key(self, uid: str) -> bytes | None:
        if self._contacts.get(uid) is not None:
            key: bytes | None = self._contacts.public_key(uid)
            return key
        return self._groups.peer_key(uid)

    def addresses(self, uid: str) -> tuple[str, ...]:
        if self._contacts.get(uid) is not None:
            return tuple(self._contacts.addresses(uid))
        return self._groups.peer_addresses(uid)

    def acceptable_uids(self) -> list[str]:
        uids = list(self._contacts.acceptable_uids())
        known = set(uids)
        return uids + [
            u for u in self._groups.peer_uids() if u not in known and self._contacts.get(u) is None
        ]

    def learn_public_key(self, uid: str, public_key: bytes) -> None:
        self._contacts.learn_public_key(uid, public_key)
