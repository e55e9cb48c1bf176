"""The postbox: the daemon's side of the mailbox (issue 15, offline delivery).

It owns what the user's mailbox needs while unlocked: the mailbox link, one queue per contact
at that mailbox (we collect it; the contact deposits into it), our signed prekeys
(:mod:`jarvis.crypto.mailseal`), and each contact's deposit address (their mailbox link, the
sender id and key of the queue they made for us, their signed prekey), learnt in a
``MailboxAddress`` record over the end-to-end session.  All of it is kept in the store's
encrypted settings (names and values sealed like every setting), under ``mailbox``,
``mailbox.queues`` and ``mailbox.peers``.

It seals and deposits what the courier gives it (messages, acks), and opens what is collected
from our queues and hands it to the courier, which stores it on the same path as a session's
messages (deduplicated by message id).  The mailbox connections themselves are behind
:class:`~jarvis.core.interfaces.MailboxTransport` (``jarvis.mailbox.attach``): no I/O here.

Deposit payloads (before sealing): ``kind (1)`` then for ``KIND_MESSAGE`` ``created_ms (8) ||
UTF-8 body``, for ``KIND_ACKS`` the acknowledged 16-byte ids, for ``KIND_ADDRESS`` the sender's
own ``MailboxAddress`` record for the recipient (as encoded on a session: where to deposit for
the sender from now on; an empty link: nowhere); the message id travels in the envelope (for
acks and addresses, a random id).

**Introduction queue.**  Besides one queue per contact, a daemon using a mailbox keeps one more
queue whose sender half travels in its link codes and cards (``jarvis.crypto.linkcode``,
version 2), so that someone who adds us from a code can deposit before we ever share a session.
Deposits there do not say who sent them: they are opened against every contact
(:func:`~jarvis.crypto.mailseal.open_sealed_any`) and dropped unless one of them sealed and
signed it.  A contact that deposits there also deposits its own address for us
(``KIND_ADDRESS``), and we answer likewise, so both move to per-contact queues.

**Group queues** (issue 17, docs/groups.md "Members who are not contacts").  For each group
we are a member of, one more queue, whose sender half (with our current prekey) we publish in
our member entry of the group's signed state.  Any member may deposit there, sealed exactly as
a contact's first deposit into the introduction queue; a deposit is opened against the
group's current members only, and taken only if it carries that group's traffic (a group
payload of that group, or acks of our group entries): a chat message, an address or another
group's payload is refused, and the sender never becomes a contact.  A deposit from a key
that is not a member yet (its state is still on its way in another queue) waits for the next
state of the group (at most ``jarvis.core.groups.GROUP_SENDER_WAIT`` seconds each time) before it
is dropped.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from jarvis.common.errors import InvalidInput, MailboxUnreachable
from jarvis.common.logs import log_id, redact
from jarvis.crypto import mailseal
from jarvis.crypto.identity import IdentityKey
from jarvis.crypto.linkcode import CardMailbox
from jarvis.crypto.mailseal import PrekeyError, PrekeyRing, SealError, SignedPrekey
from jarvis.mailbox.wire import MAX_PAYLOAD
from jarvis.protocol.group_fanout import decode_body, payload_group_id
from jarvis.protocol.mailbox_link import BadMailboxLink, parse_link
from jarvis.protocol.records import MailboxAddress, MalformedRecord, encode_record, parse_record
from jarvis.store import queries
from jarvis.store.database import Store

KIND_MESSAGE = 1
KIND_ACKS = 2
KIND_ADDRESS = 3
#: The key of the introduction queue in :attr:`Postbox.queues` (never a uid).
INTRO = ""
#: How the key of a group queue in :attr:`Postbox.queues` starts (then the group id in hex).
GROUP_QUEUE = "g:"
#: Most bytes of a message body that fit in one mailbox block once sealed.
MAX_MAILBOX_BODY = MAX_PAYLOAD - mailseal.OVERHEAD - 1 - 8
#: Most message ids one ack deposit carries.
MAX_ACKS_PER_DEPOSIT = (MAX_PAYLOAD - mailseal.OVERHEAD - 1) // 16
_CREATED = struct.Struct(">Q")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


class Postbox:
    """See the module docstring.

    :param now: wall-clock seconds.
    :param emit: publishes API events (``mailbox.changed``).
    :param public_key: the contact's identity public key by uid (the contact book's).
    :param contact_uids: every contact's uid.
    :param run_blocking: runs a callable off the reactor thread and returns a Deferred (the
        node's thread pool); sealing and opening deposits (an X25519 exchange and the cascade
        each, ~0.2 ms) run there, so a burst of collected deposits does not stall the reactor.
        Default: in the caller's thread.
    """

    log = Logger()

    def __init__(
        self,
        *,
        now: Callable[[], float],
        emit: Callable[[str, Any], None],
        public_key: Callable[[str], bytes | None],
        contact_uids: Callable[[], list[str]],
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
    ) -> None:
        self.now = now
        self._run_blocking: Callable[..., defer.Deferred[Any]] = (
            run_blocking if run_blocking is not None else defer.maybeDeferred
        )
        #: fires once every deposit asked for so far was handed to the transport: deposits
        #: are sealed off the reactor but reach the mailbox in the order they were asked for
        self._deposit_turn: defer.Deferred[None] = defer.succeed(None)
        self._emit = emit
        self._public_key = public_key
        self._contact_uids = contact_uids
        self._store: Store | None = None
        self._identity: IdentityKey | None = None
        self._transport: Any = None
        self.link: str | None = None
        self.ring = PrekeyRing()
        #: uid -> (recipient_id, sender_id, recipient_key, sender_key) of our queue for them;
        #: under :data:`INTRO`, the introduction queue of our link codes
        self.queues: dict[str, tuple[bytes, bytes, bytes, bytes]] = {}
        #: uid -> their MailboxAddress (where we deposit for them)
        self.peers: dict[str, MailboxAddress] = {}
        #: contacts whose address in :attr:`peers` came from their link code or card (their
        #: introduction queue), until they tell us their queue for us
        self.card_peers: set[str] = set()
        #: contacts we told our address by a deposit since unlock
        self._told_by_deposit: set[str] = set()
        #: uid -> the session currently up with them (to announce changes)
        self._sessions: dict[str, Any] = {}
        #: whether the stored state is loaded (from :meth:`open` to :meth:`close`): outside
        #: that a session hears no address from us (we would say "no mailbox" only because
        #: ours is not loaded, and the contact would forget it) and what it tells us is not
        #: kept.  The node opens the postbox before it builds the network, so at unlock every
        #: session comes after; this covers the sessions still up while the keys are wiped.
        self._loaded = False
        #: called with ``(uid, message_id, body, created_ms)`` / ``(uid, ids)``: the courier
        self.on_message: Callable[[str, bytes, bytes, int], Any] = lambda *a: None
        self.on_acks: Callable[[str, list[bytes]], Any] = lambda *a: None
        #: called with a uid whose deposit address became known (the courier deposits)
        self.on_address: Callable[[str], Any] = lambda uid: None
        #: message ids acknowledged by a deposit since unlock
        self.acks_deposited = 0
        #: group peers (members who are not contacts), set by the node from the groups:
        #: their identity key by uid; where to deposit for them (``(uid, 1:1 body or None)``
        #: -> the address from their member entry of the body's group, or of any shared group);
        #: the members who may deposit into a group queue (group id -> ``[(uid, key)]``); and
        #: a wait for the group's next state (group id -> Deferred firing True, or False
        #: after a while without one)
        self.group_key: Callable[[str], bytes | None] = lambda uid: None
        self.group_address: Callable[[str, bytes | None], MailboxAddress | None] = (
            lambda uid, body: None
        )
        self.group_senders: Callable[[bytes], list[tuple[str, bytes]]] = lambda gid: []
        self.wait_for_members: Callable[[bytes], defer.Deferred[bool]] = lambda gid: defer.succeed(
            False
        )
        #: called when our mailbox, its queues or our prekey changed (groups republish)
        self.on_changed: Callable[[], Any] = lambda: None
        #: deposits refused from group queues since unlock (not that group's traffic)
        self.group_refused = 0
        #: group queues being made (group queue key -> its waiters)
        self._making: dict[str, list[defer.Deferred[Any]]] = {}

    # -- life cycle ----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def open(self, store: Store, identity: IdentityKey, transport: Any) -> Any:
        """Load the mailbox state (:meth:`start` then connects to the mailbox).

        The node calls this before it builds the peer network, so the first dial round knows
        the relays (:meth:`relay_links`) and the first session hears our real address."""
        self._store = store
        self._identity = identity
        self._transport = transport
        raw = yield store.run(queries.get_setting, "mailbox", write=False)
        if raw:
            config = json.loads(raw)
            self.link = config.get("link") or None
            self.ring = PrekeyRing.from_bytes(_unb64(config.get("prekeys", "")))
        raw = yield store.run(queries.get_setting, "mailbox.queues", write=False)
        if raw:
            self.queues = {
                uid: tuple(_unb64(x) for x in creds)  # type: ignore[misc]
                for uid, creds in json.loads(raw).items()
            }
        raw = yield store.run(queries.get_setting, "mailbox.peers", write=False)
        if raw:
            for uid, fields in json.loads(raw).items():
                self.peers[uid] = MailboxAddress(
                    fields["link"],
                    _unb64(fields["sender_id"]),
                    _unb64(fields["sender_key"]),
                    _unb64(fields["prekey"]),
                )
                if fields.get("card"):
                    self.card_peers.add(uid)
        if self.ring.rotate(identity, self.now()):
            yield self._save_config()
        self._loaded = True
        for uid in list(self._sessions):
            self._announce(uid)

    def start(self) -> None:
        """Connect to our mailbox, if one is in use, make the missing queues and collect, in
        the background (a mailbox out of reach is logged)."""
        if self._loaded and self.link is not None and self._transport is not None:
            self._start().addErrback(
                lambda f: self.log.warn(
                    "mailbox not reachable: {error}", error=redact(str(f.value))
                )
            )

    def close(self) -> defer.Deferred[Any]:
        """Forget the state and close the mailbox connections (the keys are being wiped)."""
        transport, self._transport = self._transport, None
        self._store = None
        self._identity = None
        self.link = None
        self.queues = {}
        self.peers = {}
        self.card_peers = set()
        self._told_by_deposit = set()
        self._sessions.clear()
        self._loaded = False
        self._making.clear()
        self.ring = PrekeyRing()
        if transport is not None:
            return transport.disconnect()
        return defer.succeed(None)

    @defer.inlineCallbacks
    def _start(self) -> Any:
        """Connect to our mailbox, make the missing queues, subscribe every queue."""
        assert self.link is not None and self._transport is not None
        yield self._transport.connect(self.link)
        changed = False
        for uid in [*self._contact_uids(), INTRO]:
            if uid not in self.queues:
                self.queues[uid] = yield self._transport.create_queue()
                changed = True
        if changed:
            yield self._save_queues()
        for uid, creds in list(self.queues.items()):
            yield self._subscribe(uid, creds)
        self._changed()

    def _changed(self) -> None:
        try:
            self.on_changed()
        except Exception as e:
            self.log.warn("a mailbox change was not handled: {error}", error=redact(str(e)))

    def _subscribe(self, uid: str, creds: tuple[bytes, bytes, bytes, bytes]) -> Any:
        return self._transport.subscribe(
            creds[0], creds[2], lambda payload: self._collected(uid, payload)
        )

    # -- persistence ---------------------------------------------------------------------------

    def _save_config(self) -> Any:
        assert self._store is not None
        config = {"link": self.link or "", "prekeys": _b64(self.ring.to_bytes())}
        return self._store.run(queries.set_setting, "mailbox", json.dumps(config), write=True)

    def _save_queues(self) -> Any:
        assert self._store is not None
        data = {uid: [_b64(x) for x in creds] for uid, creds in self.queues.items()}
        return self._store.run(queries.set_setting, "mailbox.queues", json.dumps(data), write=True)

    def _save_peers(self) -> Any:
        assert self._store is not None
        data = {
            uid: {
                "link": a.link,
                "sender_id": _b64(a.sender_id),
                "sender_key": _b64(a.sender_key),
                "prekey": _b64(a.prekey),
                "card": uid in self.card_peers,
            }
            for uid, a in self.peers.items()
        }
        return self._store.run(queries.set_setting, "mailbox.peers", json.dumps(data), write=True)

    # -- the user's commands -------------------------------------------------------------------

    @defer.inlineCallbacks
    def use(self, link: str) -> Any:
        """Use the mailbox at *link*: connect, make one queue per contact, tell every contact.

        :raises InvalidInput: for a text that is not a mailbox link.
        """
        try:
            link = str(parse_link(link))
        except BadMailboxLink as e:
            raise InvalidInput(str(e)) from None
        if self._transport is None:
            raise InvalidInput("this daemon cannot reach mailboxes")
        if link != self.link:
            old_link, old_queues = self.link, self.queues
            if old_link is not None:
                # deleted over the connection to the old mailbox, before it is replaced
                yield self._delete_queues(old_queues, old_link)
                self.link, self.queues = None, {}
                yield self._save_config()
                yield self._save_queues()
                self._announce_all()
            try:
                yield self._transport.connect(link)
            except defer.CancelledError:
                raise
            except Exception as e:
                # the user's words, not "internal error": the link was fine, the mailbox silent
                address = link.rpartition("@")[2]
                reason = redact(str(e).splitlines()[0] if str(e) else type(e).__name__)
                raise MailboxUnreachable(f"cannot reach the mailbox at {address}: {reason}") from e
            self.link = link
            self.queues = {}
            yield self._save_config()
            yield self._save_queues()
        yield self._start()
        self._announce_all(by_deposit=True)
        self._emit("mailbox.changed", {"link": self.link})
        return self.status()

    @defer.inlineCallbacks
    def drop(self) -> Any:
        """Stop using the mailbox: delete our queues there, tell every contact."""
        if self.link is None:
            return self.status()
        old_link, old_queues = self.link, self.queues
        self.link = None
        self.queues = {}
        # the deposits of our empty address finish before the connections close
        told = self._announce_all(by_deposit=True)
        yield self._delete_queues(old_queues, old_link)
        yield told
        if self._transport is not None:
            yield self._transport.disconnect()
        yield self._save_config()
        yield self._save_queues()
        self._changed()
        self._emit("mailbox.changed", {"link": None})
        return self.status()

    @defer.inlineCallbacks
    def _delete_queues(
        self, queues: dict[str, tuple[bytes, bytes, bytes, bytes]], link: str
    ) -> Any:
        for creds in queues.values():
            try:
                yield self._transport.delete_queue(creds[0], creds[2])
            except Exception as e:
                self.log.warn("deleting a mailbox queue failed: {error}", error=redact(str(e)))

    def status(self) -> dict[str, Any]:
        """``{link, connected, queues, contacts_reachable, last_collect, collected, deposited,
        acks_deposited, error}`` (no keys, no ids)."""
        figures = self._transport.status() if self._transport is not None else {}
        return {
            "link": self.link,
            "connected": bool(self.link and figures.get("connected")),
            "queues": sum(
                1 for uid in self.queues if uid != INTRO and not uid.startswith(GROUP_QUEUE)
            ),
            "contacts_reachable": sum(1 for a in self.peers.values() if a.link),
            "last_collect": figures.get("last_collect"),
            "collected": figures.get("collected", 0),
            "deposited": figures.get("deposited", 0),
            "acks_deposited": self.acks_deposited,
            "error": figures.get("error"),
        }

    # -- contacts ------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def contact_added(self, uid: str) -> Any:
        """Make a queue for a new contact (when a mailbox is in use)."""
        if self.link is None or self._transport is None or uid in self.queues:
            return
        creds = yield self._transport.create_queue()
        self.queues[uid] = creds
        yield self._save_queues()
        yield self._subscribe(uid, creds)
        self._announce(uid)

    @defer.inlineCallbacks
    def contact_removed(self, uid: str) -> Any:
        """Delete the contact's queue (it can deposit no more) and forget its address."""
        creds = self.queues.pop(uid, None)
        had_peer = self.peers.pop(uid, None) is not None
        self.card_peers.discard(uid)
        self._sessions.pop(uid, None)
        if creds is not None and self._transport is not None:
            try:
                yield self._transport.delete_queue(creds[0], creds[2])
            except Exception as e:
                self.log.warn("deleting a mailbox queue failed: {error}", error=redact(str(e)))
        if self._store is not None:
            if creds is not None:
                yield self._save_queues()
            if had_peer:
                yield self._save_peers()

    # -- the session: our address out, theirs in -----------------------------------------------

    def session_established(self, session: Any) -> None:
        """Hear the peer's address on this session and tell it ours."""
        uid = session.peer_uid
        self._sessions[uid] = session
        if hasattr(session, "on_mailbox_address"):
            session.on_mailbox_address = self._address_received
        if not self._loaded:
            return  # open() announces once our state is loaded; close() ended it
        if self._identity is not None and self.ring.rotate(self._identity, self.now()):
            self._save_config()
            self._announce_all()
            self._changed()
            return
        self._announce(uid)

    def rotate_due(self) -> bool:
        """Make a new prekey or delete expired ones when due (the node calls this daily);
        tell every connected contact about a new one.  Returns whether anything changed."""
        if self._identity is None or self._store is None:
            return False
        if not self.ring.rotate(self._identity, self.now()):
            return False
        self._save_config().addErrback(lambda f: self.log.failure("saving prekeys failed", f))
        self._announce_all(by_deposit=True)
        self._changed()
        return True

    def session_closed(self, session: Any) -> None:
        uid = getattr(session, "peer_uid", None)
        if uid is not None and self._sessions.get(uid) is session:
            del self._sessions[uid]

    def own_address(self, uid: str) -> MailboxAddress:
        """What *uid* needs to deposit for us (an empty link: no mailbox)."""
        creds = self.queues.get(uid)
        prekey = self.ring.current
        if self.link is None or creds is None or prekey is None:
            return MailboxAddress("")
        return MailboxAddress(self.link, creds[1], creds[3], prekey.signed.to_bytes())

    def relay_links(self, uid: str) -> list[str]:
        """The mailboxes whose relay may join us with *uid*: ours and theirs, sorted.

        Both sides compute the same list from what they know (each its own link and the
        contact's, from its ``MailboxAddress``), so they try the same relay first.
        """
        links = {self.link} if self.link else set()
        theirs = self.peers.get(uid)
        if theirs is not None and theirs.link:
            links.add(theirs.link)
        return sorted(links)

    def _announce(self, uid: str) -> None:
        session = self._sessions.get(uid)
        send = getattr(session, "send_mailbox_address", None)
        if send is None:
            return
        try:
            send(self.own_address(uid))
        except Exception as e:
            self.log.warn("mailbox address not sent: {error}", error=redact(str(e)))

    def _announce_all(self, *, by_deposit: bool = False) -> defer.Deferred[Any]:
        """Tell every contact with a session our (new) address over it; with *by_deposit*,
        tell every other contact whose deposit address we know by a deposit into its queue
        (so a change or a drop reaches contacts that are offline now).

        :returns: a Deferred firing once those deposits are done (failures are logged)."""
        for uid in list(self._sessions):
            self._announce(uid)
        deposits = []
        if by_deposit:
            for uid in list(self.peers):
                if uid not in self._sessions and self.can_deposit(uid):
                    deposits.append(self._deposit_address(uid))
        return defer.gatherResults(deposits, consumeErrors=True)

    def _deposit_address(self, uid: str) -> defer.Deferred[Any]:
        """Deposit our current address for *uid* into its queue."""
        self._told_by_deposit.add(uid)
        payload = bytes([KIND_ADDRESS]) + encode_record(self.own_address(uid))
        d = self._deposit(uid, os.urandom(16), payload)

        def failed(failure: Any) -> None:
            self._told_by_deposit.discard(uid)
            self.log.warn(
                "address not deposited for {uid}: {error}",
                uid=log_id(uid),
                error=redact(str(failure.value)),
            )

        return d.addErrback(failed)

    # -- link codes and cards: the introduction queue ------------------------------------------

    def card_mailbox(self) -> CardMailbox | None:
        """What our link codes and cards carry for people who add us (``None``: no mailbox in
        use, or its introduction queue is not made yet)."""
        creds = self.queues.get(INTRO)
        prekey = self.ring.current
        if self.link is None or creds is None or prekey is None:
            return None
        return CardMailbox(self.link, creds[1], creds[3], prekey.signed.to_bytes())

    def group_mailbox(self, group_id: bytes) -> CardMailbox | None:
        """What our member entry of group *group_id* carries for the other members (``None``:
        no mailbox in use, or the group's queue is not made yet)."""
        creds = self.queues.get(GROUP_QUEUE + group_id.hex())
        prekey = self.ring.current
        if self.link is None or creds is None or prekey is None:
            return None
        return CardMailbox(self.link, creds[1], creds[3], prekey.signed.to_bytes())

    @defer.inlineCallbacks
    def ensure_group_queue(self, group_id: bytes) -> Any:
        """Make (and subscribe) our queue for group *group_id* at our mailbox if missing.

        :returns: a Deferred firing with :meth:`group_mailbox` (``None`` without a mailbox).
        """
        key = GROUP_QUEUE + group_id.hex()
        if self.link is None or self._transport is None or self._store is None:
            return None
        if key not in self.queues:
            waiters = self._making.get(key)
            if waiters is not None:
                waiter: defer.Deferred[Any] = defer.Deferred()
                waiters.append(waiter)
                yield waiter
            else:
                self._making[key] = []
                try:
                    creds = yield self._transport.create_queue()
                    self.queues[key] = creds
                    yield self._save_queues()
                    yield self._subscribe(key, creds)
                finally:
                    for waiter in self._making.pop(key, []):
                        waiter.callback(None)
        return self.group_mailbox(group_id)

    def address_from_card(self, uid: str, mailbox: CardMailbox) -> None:
        """Keep the introduction queue of contact *uid*'s link code or card as where to
        deposit for it, unless it already told us its queue for us (which stays)."""
        if self._store is None or (uid in self.peers and uid not in self.card_peers):
            return
        address = MailboxAddress(
            mailbox.link, mailbox.sender_id, mailbox.sender_key, mailbox.prekey
        )
        self._address_learnt(uid, address, from_card=True)

    def _address_received(self, session: Any, address: MailboxAddress) -> None:
        if self._loaded:
            self._address_learnt(session.peer_uid, address)

    def _address_learnt(
        self, uid: str, address: MailboxAddress, *, from_card: bool = False
    ) -> None:
        """*uid* told us where to deposit for it (over a session, by a deposit, or in its
        card); an empty link: nowhere any more."""
        if self._store is None or self._public_key(uid) is None:
            return
        if address.link:
            try:
                parse_link(address.link)
                SignedPrekey.from_bytes(address.prekey)
            except (BadMailboxLink, PrekeyError):
                self.log.warn("{uid} sent an invalid mailbox address", uid=log_id(uid))
                return
        if from_card:
            self.card_peers.add(uid)
        else:
            self.card_peers.discard(uid)
        if address.link:
            if self.peers.get(uid) == address:
                return
            self.peers[uid] = address
        elif self.peers.pop(uid, None) is None:
            return
        self._save_peers().addErrback(lambda f: self.log.failure("saving an address failed", f))
        if address.link:
            self.on_address(uid)

    # -- deposits ------------------------------------------------------------------------------

    def can_deposit(self, uid: str) -> bool:
        """Whether we know where and how to deposit for *uid*."""
        if self._transport is None or self._identity is None:
            return False
        return uid in self.peers or self.group_address(uid, None) is not None

    def _address_of(self, uid: str, body: bytes | None = None) -> MailboxAddress | None:
        """Where to deposit for *uid*: the address it told us (a contact), else its group
        queue from the group state (for *body*'s group when it is a group entry)."""
        address = self.peers.get(uid)
        if address is None:
            address = self.group_address(uid, body)
        return address

    def _deposit(
        self, uid: str, message_id: bytes, plaintext: bytes, body: bytes | None = None
    ) -> defer.Deferred[Any]:
        """Seal *plaintext* for *uid* off the reactor, then deposit it; deposits reach the
        transport in the order of these calls, each sealed exactly once.

        :param body: the 1:1 body a message deposit carries (picks a group peer's queue)."""
        address = self._address_of(uid, body)
        public = self._public_key(uid) or self.group_key(uid)
        identity, transport = self._identity, self._transport
        if address is None or public is None or identity is None or transport is None:
            return defer.fail(InvalidInput("no mailbox address for this contact"))
        sealed = self._run_blocking(
            _seal,
            identity,
            uid,
            public,
            address.prekey,
            message_id,
            plaintext,
            self.now(),
        )
        result: defer.Deferred[Any] = defer.Deferred()
        turn, self._deposit_turn = self._deposit_turn, defer.Deferred()
        mine = self._deposit_turn

        def issue(_: object) -> defer.Deferred[Any]:
            return sealed

        def deposit(envelope: bytes) -> None:
            defer.maybeDeferred(
                transport.deposit, address.link, address.sender_id, address.sender_key, envelope
            ).chainDeferred(result)

        def refused(failure: Any) -> None:
            result.errback(failure)

        turn.addCallback(issue).addCallbacks(deposit, refused).addBoth(
            lambda _: mine.callback(None)
        )
        return result

    def deposit_message(
        self, uid: str, message_id: bytes, body: bytes, created_ms: int
    ) -> defer.Deferred[Any]:
        """Seal and deposit one message for *uid*; fires once the mailbox committed it.

        :raises TooLarge: (in the Deferred) for a body over :data:`MAX_MAILBOX_BODY` bytes.
        """
        if len(body) > MAX_MAILBOX_BODY:
            from jarvis.common.errors import TooLarge

            return defer.fail(
                TooLarge(f"{len(body)} bytes do not fit in one mailbox block ({MAX_MAILBOX_BODY})")
            )
        payload = bytes([KIND_MESSAGE]) + _CREATED.pack(created_ms) + body
        if (
            uid in self.card_peers
            and uid not in self._told_by_deposit
            and self.own_address(uid).link
        ):
            # depositing into the contact's introduction queue (from its link code): it does
            # not know our queue for it yet; tell it first, once per unlock
            self._deposit_address(uid)
        return self._deposit(uid, message_id, payload, body)

    def deposit_acks(self, uid: str, message_ids: list[bytes]) -> defer.Deferred[Any]:
        """Deposit acknowledgements for *uid*'s messages into its queue."""
        deposits = []
        for start in range(0, len(message_ids), MAX_ACKS_PER_DEPOSIT):
            chunk = message_ids[start : start + MAX_ACKS_PER_DEPOSIT]
            payload = bytes([KIND_ACKS]) + b"".join(chunk)
            d = self._deposit(uid, os.urandom(16), payload)
            d.addCallback(self._count_acks, len(chunk))
            deposits.append(d)
        return defer.gatherResults(deposits, consumeErrors=True)

    def _count_acks(self, result: Any, count: int) -> Any:
        self.acks_deposited += count
        return result

    # -- collection ----------------------------------------------------------------------------

    def _collected(self, uid: str, envelope: bytes) -> Any:
        """One deposit from *uid*'s queue: open it off the reactor, hand it to the courier;
        the mailbox deletes it once the returned Deferred fires (after the store committed).
        A queue delivers one deposit at a time, so a queue's deposits are handled in order."""
        identity = self._identity
        if identity is None:
            return None
        if uid == INTRO:
            return self._collected_intro(envelope)
        if uid.startswith(GROUP_QUEUE):
            return self._collected_group(bytes.fromhex(uid[len(GROUP_QUEUE) :]), envelope)
        public = self._public_key(uid)
        if public is None:
            return None
        ring = PrekeyRing(self.ring.prekeys)
        opened = self._run_blocking(mailseal.open_sealed, identity.uid, ring, uid, public, envelope)

        def handle(result: tuple[bytes, bytes]) -> Any:
            if self._identity is not identity:
                return None  # locked meanwhile: the mailbox delivers it again
            return self._handle(uid, *result)

        def dropped(failure: Any) -> None:
            failure.trap(SealError)
            self.log.warn(
                "dropping a mailbox deposit from {uid}: {error}",
                uid=log_id(uid),
                error=failure.value,
            )

        return opened.addCallbacks(handle, dropped)

    def _handle(self, uid: str, message_id: bytes, payload: bytes) -> Any:
        """An opened deposit from *uid*: a message or acks to the courier, an address kept."""
        if not payload:
            return None
        if payload[0] == KIND_MESSAGE and len(payload) >= 9:
            (created_ms,) = _CREATED.unpack_from(payload, 1)
            return self.on_message(uid, message_id, payload[9:], created_ms)
        if payload[0] == KIND_ACKS and (len(payload) - 1) % 16 == 0:
            ids = [payload[i : i + 16] for i in range(1, len(payload), 16)]
            return self.on_acks(uid, ids)
        if payload[0] == KIND_ADDRESS:
            try:
                record = parse_record(payload[1:])
            except MalformedRecord:
                record = None
            if isinstance(record, MailboxAddress):
                self._address_learnt(uid, record)
                return None
        self.log.warn("dropping a mailbox deposit of unknown kind from {uid}", uid=log_id(uid))
        return None

    def _collected_intro(self, envelope: bytes) -> Any:
        """One deposit from the introduction queue: find which contact sealed it (off the
        reactor), then as from that contact's queue.  From nobody we know (a stranger holding
        our code, or a contact we removed), it is dropped."""
        identity = self._identity
        assert identity is not None
        candidates = []
        for uid in self._contact_uids():
            public = self._public_key(uid)
            if public is not None:
                candidates.append((uid, public))
        ring = PrekeyRing(self.ring.prekeys)
        opened = self._run_blocking(
            mailseal.open_sealed_any, identity.uid, ring, candidates, envelope
        )

        def handle(result: tuple[str, bytes, bytes]) -> Any:
            if self._identity is not identity:
                return None
            uid, message_id, payload = result
            if uid not in self._told_by_deposit and self.can_deposit(uid):
                # it added us from our code and does not know our queue for it: tell it
                self._deposit_address(uid)
            return self._handle(uid, message_id, payload)

        def dropped(failure: Any) -> None:
            failure.trap(SealError)
            self.log.warn(
                "dropping a deposit in the introduction queue: {error}", error=failure.value
            )

        return opened.addCallbacks(handle, dropped)

    def _collected_group(self, group_id: bytes, envelope: bytes) -> Any:
        """One deposit from our queue for group *group_id*: find which member sealed it (off
        the reactor), then take it if it carries that group's traffic (:meth:`_handle_group`).
        From a key that is not a member (yet), it waits for the group's next state and is
        tried again; once no new state comes for a while, it is dropped."""
        identity = self._identity
        assert identity is not None
        candidates = self.group_senders(group_id)
        ring = PrekeyRing(self.ring.prekeys)
        if candidates:
            opened = self._run_blocking(
                mailseal.open_sealed_any, identity.uid, ring, candidates, envelope
            )
        else:
            opened = defer.fail(SealError("no member of this group to open it against"))

        def handle(result: tuple[str, bytes, bytes]) -> Any:
            if self._identity is not identity:
                return None
            return self._handle_group(group_id, *result)

        def unknown(failure: Any) -> Any:
            failure.trap(SealError)
            if self._identity is not identity:
                return None

            def again(changed: bool) -> Any:
                if changed and self._identity is identity:
                    return self._collected_group(group_id, envelope)
                self.log.warn("dropping a deposit in a group queue: {error}", error=failure.value)
                return None

            return self.wait_for_members(group_id).addCallback(again)

        return opened.addCallbacks(handle, unknown)

    def _handle_group(self, group_id: bytes, uid: str, message_id: bytes, payload: bytes) -> Any:
        """An opened deposit from member *uid* in our queue for *group_id*: a group entry of
        that group goes to the courier (as a collected message), acks too; anything else (a
        chat message, an address, another group's payload) is refused."""
        if payload[:1] == bytes([KIND_MESSAGE]) and len(payload) >= 9:
            (created_ms,) = _CREATED.unpack_from(payload, 1)
            body = payload[9:]
            try:
                group_payload = decode_body(body)
            except ValueError:
                group_payload = None
            if group_payload is not None and payload_group_id(group_payload) == group_id:
                return self.on_message(uid, message_id, body, created_ms)
        elif payload[:1] == bytes([KIND_ACKS]) and (len(payload) - 1) % 16 == 0:
            ids = [payload[i : i + 16] for i in range(1, len(payload), 16)]
            return self.on_acks(uid, ids)
        self.group_refused += 1
        self.log.warn(
            "refused a deposit from {uid} in a group queue: not that group's traffic",
            uid=log_id(uid),
        )
        return None


def _seal(
    identity: IdentityKey,
    uid: str,
    public: bytes,
    prekey: bytes,
    message_id: bytes,
    plaintext: bytes,
    now: float,
) -> bytes:
    """Seal one deposit (runs off the reactor)."""
    return mailseal.seal(
        identity, uid, public, SignedPrekey.from_bytes(prekey), message_id, plaintext, now
    )
