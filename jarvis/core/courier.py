"""The courier: a message's life after the user sends it or a peer delivers it.

:class:`Courier` owns the outbox stream and the conversations: it stores an outgoing message
and writes it to the peer's session through a send window, retransmits what is not
acknowledged, records ``sent``/``delivered``/``read``, stores incoming messages exactly once and
acknowledges them (one Ack record per reactor turn), keeps the Resume mark, and sends and
replays read receipts.  It is the core's :class:`~jarvis.core.interfaces.SessionObserver`:
every session event lands here.  It does not know contacts beyond asking the contact book, nor
keys or files.

Delivery contract (docs/protocol.md): ``send`` stores the message and its outbox entry in one
transaction before it answers (state ``queued``); it becomes ``sent`` when written to an
established session, ``delivered`` when the peer acknowledges it after storing it, ``read`` when
a UI on the peer marks it read.  On every new session the outbox streams in order through a
send window (:data:`~jarvis.core.limits.WINDOW_MESSAGES` / ``WINDOW_BYTES`` unacknowledged,
read from the store a page at a time), after what the peer's Resume mark says it already
stored; unacknowledged messages are written again after ``RETRANSMIT_INITIAL`` seconds without
an ack.  The receiver deduplicates by message id, so a message is stored exactly once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jarvis.common.errors import InvalidInput, StorageFull, TooLarge
from jarvis.common.logs import log_id, redact
from jarvis.core.contacts import ContactBook
from jarvis.core.interfaces import SessionHandle
from jarvis.core.limits import (
    MAX_HISTORY_PAGE,
    MAX_TEXT_BYTES,
    RECEIPTS_SETTLE,
    RETRANSMIT_INITIAL,
    RETRANSMIT_MAX,
    WINDOW_BYTES,
    WINDOW_MESSAGES,
)
from jarvis.core.views import message_view
from jarvis.crypto.errors import CryptoError
from jarvis.mailbox.wire import ERR_AUTH
from jarvis.protocol.group_fanout import BODY_MARK, decode_body, encode_body
from jarvis.runtime.turn import TurnBatch
from jarvis.store import queries
from jarvis.store.database import Store
from jarvis.store.records import Contact, StoredMessage, copy_unchecked, new_message_id

#: How a stored outbox entry carrying a group payload starts (hidden from 1:1 history).
_GROUP_TEXT = BODY_MARK.decode("ascii")

#: Most seconds a deposit waits while a dial to the contact is in flight (a dial in progress
#: usually succeeds in less, and the message then goes over the session).  A dial that ends
#: without a session ends the wait at once; with no dial in flight there is no wait at all.
MAILBOX_GRACE = 2.0


#: Seconds before deposits that failed for a passing reason (mailbox unreachable, queue full)
#: are tried again.
MAILBOX_RETRY = 60.0


def _worth_retrying(error: BaseException) -> bool:
    """Whether a failed deposit may succeed later: not when the mailbox refused our key (the
    contact deleted the queue: it removed us or dropped its mailbox), nor for a message too
    large for a block or an invalid prekey (those wait for a session or a new address)."""
    if isinstance(error, TooLarge | CryptoError):
        return False
    return getattr(error, "code", None) != ERR_AUTH


#: Seconds acks for collected messages wait to be deposited together (one sealed deposit for
#: up to ~1,000 ids instead of one per reactor turn).
MAILBOX_ACK_DELAY = 0.5


class MailboxPath:
    """Stands in for a session for what was collected from a contact's mailbox queue: acks
    go over the contact's session when one is up, else into its queue, gathered for
    :data:`MAILBOX_ACK_DELAY` seconds into one deposit."""

    def __init__(self, uid: str, courier: Courier) -> None:
        self.peer_uid = uid
        self._courier = courier
        self._pending: list[bytes] = []
        self._timer: Any = None

    def send_ack(self, message_ids: Sequence[bytes]) -> None:
        pump = self._courier._pumps.get(self.peer_uid)
        if pump is not None:
            pump.session.send_ack(message_ids)
            return
        self._pending.extend(message_ids)
        if self._timer is None or not self._timer.active():
            self._timer = self._courier._call_later(MAILBOX_ACK_DELAY, self.flush)

    def flush(self) -> None:
        """Send the gathered acks (over a session that came up meanwhile, else deposited)."""
        self._timer = None
        ids, self._pending = self._pending, []
        if not ids:
            return
        pump = self._courier._pumps.get(self.peer_uid)
        if pump is not None:
            pump.session.send_ack(ids)
            return
        postbox = self._courier.postbox
        if postbox is not None and postbox.can_deposit(self.peer_uid):
            postbox.deposit_acks(self.peer_uid, ids).addErrback(
                lambda f: self._courier.log.warn(
                    "acks not deposited: {error}", error=redact(str(f.value))
                )
            )


@dataclass(eq=False)
class PeerPump:
    """Per-session sending state: the window of unacknowledged messages and the stream position.

    :ivar in_flight: written and not yet acknowledged, in the order written: id -> (message,
        its body size).
    :ivar waiting: read from the store, not written yet: the next messages, read ahead (at most
        one more window) so that an ack is answered by writes without waiting for the store.
    :ivar last_seq: the seq of the last message read from the outbox; the next page starts
        after it.
    :ivar loading: a page is being read from the store.
    :ivar caught_up: the last page reached the end of the outbox (new messages may then be
        written as they are stored).
    :ivar retransmit: the pending retransmission of ``in_flight``, if armed.
    """

    session: SessionHandle
    in_flight: dict[str, tuple[StoredMessage, int]] = field(default_factory=dict)
    in_flight_bytes: int = 0
    waiting: deque[tuple[StoredMessage, int]] = field(default_factory=deque)
    waiting_bytes: int = 0
    last_seq: int = 0
    loading: bool = False
    caught_up: bool = False
    retransmit: Any = None
    retransmit_delay: float = RETRANSMIT_INITIAL
    #: Read receipts written on this session and still owed until it has stayed up
    #: :data:`RECEIPTS_SETTLE` seconds: the pending clears.
    receipt_settles: list[Any] = field(default_factory=list)

    def window_open(self) -> bool:
        """Whether the window takes another message now."""
        return not self.in_flight or (
            len(self.in_flight) < WINDOW_MESSAGES and self.in_flight_bytes < WINDOW_BYTES
        )

    def read_room(self) -> tuple[int, int]:
        """How many messages and bytes the next page may hold: the window and one more."""
        return (
            2 * WINDOW_MESSAGES - len(self.in_flight) - len(self.waiting),
            2 * WINDOW_BYTES - self.in_flight_bytes - self.waiting_bytes,
        )

    def paused(self) -> bool:
        """Whether the transport asked us to stop writing for now."""
        return bool(getattr(self.session, "writing_paused", False))

    def cancel_retransmit(self) -> None:
        """Disarm the pending retransmission, if any, and the pending clears of read receipts
        (the session ends: what it carried stays owed)."""
        if self.retransmit is not None and self.retransmit.active():
            self.retransmit.cancel()
        self.retransmit = None
        for call in self.receipt_settles:
            if call.active():
                call.cancel()
        self.receipt_settles.clear()


class Courier:
    """Sends, receives and tracks messages: see the module docstring.

    :param clock: time for retransmission delays and per-turn batches.
    :param now: wall-clock time in seconds since the epoch.
    :param emit: ``(event, payload)``: publishes API events.
    :param contacts: the contact book (asked whether a peer is a contact, and its flags).
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        now: Callable[[], float],
        emit: Callable[[str, Any], None],
        contacts: ContactBook,
    ) -> None:
        self.clock = clock
        self.now = now
        self._emit = emit
        self._contacts = contacts
        self._store: Store | None = None
        self._pumps: dict[str, PeerPump] = {}
        #: messages written to a session this reactor turn, waiting to be recorded as sent
        self._sent_this_turn = TurnBatch(clock, self._flush_sent)
        #: acks waiting for the end of the reactor turn, per session
        self._acks_this_turn = TurnBatch(clock, self._flush_acks)
        #: per contact: the last message it sent us that we stored with everything it sent
        #: before (told to it in our Resume record, so it resends only what follows)
        self._stored_marks: dict[str, bytes] = {}
        #: per contact: messages whose store failed and that have not been stored since; while
        #: any is missing, the stored mark stays where it was
        self._store_gaps: dict[str, set[bytes]] = {}
        #: the mailbox side (set by the node): deposits for contacts without a session
        self.postbox: Any = None
        #: per contact: the pending deposit timer (the grace while a dial is in flight, or the
        #: retry after a passing failure)
        self._mailbox_timers: dict[str, Any] = {}
        #: contacts whose timer is the grace for a dial in flight (ended early when it fails)
        self._grace_waits: set[str] = set()
        #: per contact: a deposit run is going on (what is queued meanwhile waits for it)
        self._depositing: set[str] = set()
        self._deposit_again: set[str] = set()
        #: per contact: the return path of mailbox-collected messages (acks batch on it)
        self._mailbox_paths: dict[str, MailboxPath] = {}
        #: the groups (set by the node): ``(uid, group payload) -> Deferred`` for 1:1 messages
        #: whose body carries a group payload (``group_fanout.BODY_MARK``); acknowledged once
        #: it fires
        self.on_group: Callable[[str, bytes], defer.Deferred[Any]] | None = None
        #: whether *uid* (not a contact) shares a group with us: its sessions are kept for
        #: group payloads only (docs/groups.md, "Members who are not contacts")
        self.group_peer: Callable[[str], bool] = lambda uid: False

    # -- life cycle ----------------------------------------------------------------------------

    def open(self, store: Store) -> None:
        """Work with *store* (the identity is unlocked)."""
        self._store = store

    def close(self) -> None:
        """Stop every stream and forget the store (the keys are being wiped)."""
        self._store = None
        for timer in self._mailbox_timers.values():
            if timer.active():
                timer.cancel()
        self._mailbox_timers.clear()
        self._grace_waits.clear()
        self._depositing.clear()
        self._deposit_again.clear()
        for pump in self._pumps.values():
            pump.cancel_retransmit()
        self._pumps.clear()
        self._stored_marks.clear()
        self._store_gaps.clear()

    def forget(self, uid: str) -> None:
        """Drop *uid*'s stream and marks (the contact was removed)."""
        pump = self._pumps.pop(uid, None)
        if pump is not None:
            pump.cancel_retransmit()
        self._stored_marks.pop(uid, None)
        self._store_gaps.pop(uid, None)

    # -- the user's side: send, read the history, mark read ------------------------------------

    def send(self, contact: Contact, text: str) -> defer.Deferred[Any]:
        """Store a message to *contact* and its outbox entry, then send it if a session is up.

        :returns: a Deferred firing with the message's view once it is stored (and written to
            the peer's session when one is up).
        :raises TooLarge: for more than :data:`~jarvis.core.limits.MAX_TEXT_BYTES` of UTF-8.
        :raises InvalidInput: for no text or a blocked contact.
        """
        store = self._store
        assert store is not None
        if not isinstance(text, str) or not text:
            raise InvalidInput("a message needs some text")
        if text.startswith(_GROUP_TEXT):
            raise InvalidInput("a message cannot start with the group payload marker")
        size = len(text.encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            raise TooLarge(f"the message is {size} bytes; the limit is {MAX_TEXT_BYTES}")
        if contact.blocked:
            raise InvalidInput(f"{contact.alias or contact.name} is blocked: unblock them first")
        now = self.now()
        message = StoredMessage(
            id=new_message_id(now),
            contact=contact.uid,
            direction="out",
            body=text,
            state="queued",
            created=now,
        )
        return store.run(queries.add_outgoing, message, write=True).addCallback(
            self._stored_outgoing
        )

    def queue_group_entry(self, uid: str, entry_id: str, payload: bytes) -> defer.Deferred[Any]:
        """Store one durable outbox entry to *uid* carrying a group *payload* (issue 17), or a
        file transfer's control record (payload kind ``KIND_TRANSFER``): it streams, is
        retransmitted, acknowledged and deposited like a chat message, but is never shown in
        the 1:1 conversation nor announced as a message.

        :param entry_id: the entry's 32-hex-digit id (a group message id, unique per member).
        """
        store = self._store
        assert store is not None
        message = StoredMessage(
            id=entry_id,
            contact=uid,
            direction="out",
            body=encode_body(payload).decode("ascii"),
            state="queued",
            created=self.now(),
        )
        d = store.run(queries.add_outgoing, message, write=True)
        return d.addCallback(self._stored_outgoing, announce=False)

    def is_connected(self, uid: str) -> bool:
        """Whether a session with *uid* is up now."""
        return uid in self._pumps

    def _stored_outgoing(self, stored: StoredMessage, announce: bool = True) -> dict[str, Any]:
        if announce:
            self._emit("message.added", {"message": message_view(stored)})
        pump = self._pumps.get(stored.contact)
        if pump is None:
            self.schedule_mailbox(stored.contact)
        if pump is not None and not pump.loading and stored.seq > pump.last_seq:
            if pump.caught_up and not pump.waiting and pump.window_open() and not pump.paused():
                # Written now (everything before it in the outbox already was); the answer
                # does not wait for "sent" to be recorded (that comes with the next store batch
                # and its own event).  Should the daemon die before, the message is still
                # queued in the store and goes again on the next session; the receiver drops
                # the copy.
                pump.last_seq = stored.seq
                self._write(pump, stored)
                stored = copy_unchecked(stored, state="sent")
            else:
                # The window is full (or paused): the stream reads it from the store later.
                pump.caught_up = False
                self._refill(pump)
        # While a page is being read, that read comes after this message's insert in the
        # store's queue, so the page holds it.
        return message_view(stored)

    def history(
        self,
        contact: Contact,
        *,
        limit: int = 50,
        before: str | int | None = None,
        after: str | int | None = None,
    ) -> Any:
        """Return a page of a conversation, newest first, with the cursors and the marker.

        :param before: a ``next`` cursor or a message id: only older messages.
        :param after: a ``newer`` cursor or a message id: the oldest messages newer than it.
        """
        store = self._store
        assert store is not None
        if not 1 <= limit <= MAX_HISTORY_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_HISTORY_PAGE}")

        @defer.inlineCallbacks
        def load() -> Any:
            page = yield store.run(
                queries.history, contact.uid, limit=limit, before=before, after=after, write=False
            )
            marker = yield store.run(queries.get_marker, contact.uid, write=False)
            outgoing = [m.id for m in page.messages if m.direction == "out"]
            paths = {}
            if outgoing:
                paths = yield store.run(queries.paths_of, contact.uid, outgoing, write=False)
            return {
                "messages": [
                    message_view(m, paths.get(m.id))
                    for m in page.messages
                    if not m.body.startswith(_GROUP_TEXT)
                ],
                "next": page.next_cursor,
                "newer": page.newer_cursor,
                "marker": marker,
            }

        return load()

    @defer.inlineCallbacks
    def mark_read(self, contact: Contact, *, up_to: str | None = None) -> Any:
        """Mark a conversation read (up to a message), send read receipts if allowed."""
        store = self._store
        assert store is not None
        ids = yield store.run(
            queries.mark_read,
            contact.uid,
            up_to=up_to,
            at=self.now(),
            receipts=contact.read_receipts,
            write=True,
        )
        if ids:
            for message_id in ids:
                self._emit(
                    "message.stateChanged",
                    {"id": message_id, "contact": contact.uid, "state": "read", "at": self.now()},
                )
            pump = self._pumps.get(contact.uid)
            if pump is not None and contact.read_receipts:
                self._send_receipts(pump, contact.uid, ids)
        return {"count": len(ids)}

    # -- SessionObserver: what the peer network reports -----------------------------------------

    def session_established(self, session: Any) -> defer.Deferred[Any]:
        """Stream the contact's outbox, in order, on the new session, a window at a time.

        When the peer said which of our messages it already stored (its Resume record), those
        are marked delivered first and not sent again.  Fires once the first window is written.
        """
        uid = session.peer_uid
        store = self._store
        if store is None or (self._contacts.get(uid) is None and not self.group_peer(uid)):
            return defer.succeed(None)
        old = self._pumps.get(uid)
        if old is not None:
            old.cancel_retransmit()
        pump = PeerPump(session=session)
        self._pumps[uid] = pump
        timer = self._mailbox_timers.pop(uid, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._grace_waits.discard(uid)
        if self.postbox is not None:
            self.postbox.session_established(session)
        self.log.info("session with {uid} established", uid=log_id(uid))
        mark = getattr(session, "peer_resume_mark", None)
        first: defer.Deferred[Any]
        if mark:
            # Queued before the first page is read: the store runs them in this order.
            first = store.run(
                queries.deliver_through, uid, bytes(mark).hex(), self.now(), write=True
            )
            first.addCallback(self._announce_changes)
            first.addErrback(lambda f: self.log.failure("resume mark not applied", f))
        else:
            first = defer.succeed(None)
        d = defer.gatherResults([first, self._refill(pump), self._replay_receipts(pump, uid)])
        d.addErrback(lambda f: self.log.failure("outbox replay failed", f))
        return d

    def session_closed(self, session: Any, reason: str) -> None:
        """Stop the stream of the closed session (unacknowledged messages stay queued)."""
        uid = getattr(session, "peer_uid", None)
        pump = self._pumps.get(uid) if uid else None
        if pump is not None and pump.session is session:
            pump.cancel_retransmit()
            del self._pumps[uid]  # type: ignore[arg-type]
            if self.postbox is not None:
                self.postbox.session_closed(session)
            if uid:
                self.schedule_mailbox(uid)
        self.log.info("session with {uid} closed: {reason}", uid=log_id(uid), reason=redact(reason))

    def session_writable(self, session: Any) -> None:
        """The transport takes bytes again after a pause: go on with the stream."""
        pump = self._pumps.get(getattr(session, "peer_uid", ""))
        if pump is not None and pump.session is session:
            self._drain(pump)

    def message_received(
        self, session: Any, message_id: bytes, body: bytes, created_ms: int
    ) -> defer.Deferred[Any]:
        """Store an incoming message (once), then acknowledge it; fires when done."""
        uid = session.peer_uid
        store = self._store
        if body.startswith(BODY_MARK) and self.on_group is not None and store is not None:
            return self._group_received(session, uid, message_id, body)
        if store is None or self._contacts.get(uid) is None:
            return defer.succeed(None)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self.log.warn(
                "message {id} from {uid} is not UTF-8", id=message_id.hex(), uid=log_id(uid)
            )
            return defer.succeed(None)
        message = StoredMessage(
            id=message_id.hex(),
            contact=uid,
            direction="in",
            body=text,
            state="received",
            created=created_ms / 1000.0,
        )

        def stored(new: StoredMessage | None) -> None:
            self._acks_this_turn.add(session, message_id)
            self._note_stored(uid, message_id)
            if new is not None:
                contact = self._contacts.get(uid)
                self._emit(
                    "message.received",
                    {"message": message_view(new), "muted": bool(contact and contact.muted)},
                )

        def failed(failure: Any) -> None:
            # Not acknowledged: the sender keeps it and writes it again (after a while on this
            # session, or on the next one).  Until it is stored, the mark stays where it is.
            self._store_gaps.setdefault(uid, set()).add(message_id)
            if failure.check(StorageFull):
                self.log.warn(
                    "message {id} from {uid} not stored: disk full", id=message_id.hex(), uid=uid
                )
            else:
                self.log.failure("storing an incoming message failed", failure)

        d = store.run(queries.add_incoming, message, write=True)
        d.addCallbacks(stored, failed)
        d.addErrback(lambda f: self.log.failure("handling an incoming message failed", f))
        return d

    def _group_received(
        self, session: Any, uid: str, message_id: bytes, body: bytes
    ) -> defer.Deferred[Any]:
        """A 1:1 message carrying a group payload: handed to the groups (from a contact or a
        group peer), acknowledged once they stored it; a bad one is acknowledged and dropped."""
        contact = self._contacts.get(uid)
        if (contact is None and not self.group_peer(uid)) or (contact and contact.blocked):
            return defer.succeed(None)
        assert self.on_group is not None
        try:
            payload = decode_body(body)
        except ValueError:
            payload = None
        if payload is None:
            self.log.warn("a malformed group payload from {uid}", uid=log_id(uid))
            self._acks_this_turn.add(session, message_id)
            return defer.succeed(None)

        def handled(_: object) -> None:
            self._acks_this_turn.add(session, message_id)
            self._note_stored(uid, message_id)

        def failed(failure: Any) -> None:
            self._store_gaps.setdefault(uid, set()).add(message_id)
            self.log.failure("handling a group payload failed", failure)

        return defer.maybeDeferred(self.on_group, uid, payload).addCallbacks(handled, failed)

    def acks_received(self, session: Any, message_ids: Sequence[bytes]) -> defer.Deferred[Any]:
        """What happens when an ack arrives: the messages are recorded ``delivered``, leave the
        send window (progress resets the retransmission delay), and the freed room takes the
        next messages of the outbox.  Fires when recorded and the next messages are written."""
        ids = [i.hex() for i in message_ids]
        recorded = self._advance_many(ids, "delivered", uids=[session.peer_uid] * len(ids))
        pump = self._pumps.get(session.peer_uid)
        if pump is None:
            return defer.gatherResults([recorded])
        progress = False
        for mid in ids:
            entry = pump.in_flight.pop(mid, None)
            if entry is not None:
                pump.in_flight_bytes -= entry[1]
                progress = True
        if not progress:
            return defer.gatherResults([recorded])
        pump.cancel_retransmit()
        pump.retransmit_delay = RETRANSMIT_INITIAL
        if pump.in_flight:
            pump.retransmit = self._call_later(pump.retransmit_delay, self._retransmit, pump)
        return defer.gatherResults([recorded, self._drain(pump)])

    def reads_received(self, session: Any, message_ids: Sequence[bytes]) -> defer.Deferred[Any]:
        """Mark messages read by the peer; fires when recorded."""
        ids = [i.hex() for i in message_ids]
        return self._advance_many(ids, "read", uids=[session.peer_uid] * len(ids))

    def resume_mark(self, uid: str) -> bytes | None:
        """The id of the last message from *uid* stored with everything *uid* sent before it.

        A new session tells it to the peer (in a Resume record), which then marks delivered
        what it had sent up to it and resends only what follows.  ``None`` when nothing from
        *uid* was stored since the store opened (the peer then resends every unacknowledged
        message; the copies are dropped).
        """
        return self._stored_marks.get(uid)

    # -- the mailbox path ----------------------------------------------------------------------

    def schedule_mailbox(self, uid: str) -> None:
        """Deposit *uid*'s queued messages in its mailbox now, unless a session may come up
        soon: while a dial to *uid* is in flight (its state is ``connecting``) the deposit
        waits until that dial ends without a session, or :data:`MAILBOX_GRACE` seconds."""
        postbox = self.postbox
        if postbox is None or not postbox.can_deposit(uid) or uid in self._pumps:
            return
        timer = self._mailbox_timers.get(uid)
        if timer is not None and timer.active():
            if uid in self._grace_waits:
                return  # a deposit is due within the grace anyway
            # A retry after an earlier failure (up to MAILBOX_RETRY away): what is new to
            # deposit goes now instead of waiting for it.
            timer.cancel()
            del self._mailbox_timers[uid]
        if self._contacts.status_of(uid) == "connecting":
            self._grace_waits.add(uid)
            self._mailbox_timers[uid] = self._call_later(MAILBOX_GRACE, self._deposit_outbox, uid)
            return
        self._deposit_now(uid)

    def peer_state_changed(self, uid: str, state: str) -> None:
        """The network reports *uid*'s new state: when a dial ended without a session
        (``offline``) while a deposit waited for it, the deposit goes now."""
        if state != "offline" or uid not in self._grace_waits:
            return
        self._grace_waits.discard(uid)
        timer = self._mailbox_timers.pop(uid, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._deposit_now(uid)

    def _deposit_now(self, uid: str) -> None:
        self._deposit_outbox(uid).addErrback(
            lambda f: self.log.failure("depositing for {uid} failed", f, uid=log_id(uid))
        )

    @defer.inlineCallbacks
    def _deposit_outbox(self, uid: str) -> Any:
        """No session with *uid*, none expected soon: seal and deposit its ``queued`` messages,
        in outbox order, a page at a time; each becomes ``sent`` (``via: mailbox``) once the
        mailbox committed it.  A message too large for one block stays queued for a session."""
        self._mailbox_timers.pop(uid, None)
        self._grace_waits.discard(uid)
        store, postbox = self._store, self.postbox
        if store is None or postbox is None or uid in self._pumps or not postbox.can_deposit(uid):
            return
        if uid in self._depositing:
            self._deposit_again.add(uid)  # once this run ends, another reads what came since
            return
        self._depositing.add(uid)
        retry = False
        try:
            after, more = 0, True
            while more and uid not in self._pumps and self._store is store:
                page, more = yield store.run(
                    queries.outbox_page,
                    uid,
                    after_seq=after,
                    limit=WINDOW_MESSAGES,
                    max_bytes=WINDOW_BYTES,
                    write=False,
                )
                if not page:
                    break
                after = page[-1].seq
                queued = [m for m in page if m.state == "queued"]
                deposits = [
                    postbox.deposit_message(
                        uid,
                        bytes.fromhex(m.id),
                        m.body.encode("utf-8"),
                        int(m.created * 1000),
                    )
                    for m in queued
                ]
                results = yield defer.DeferredList(deposits, consumeErrors=True)
                done = [m.id for m, (ok, _) in zip(queued, results, strict=True) if ok]
                for ok, failure in results:
                    if not ok and _worth_retrying(failure.value):
                        retry = True
                    if not ok:
                        self.log.warn(
                            "a message to {uid} not deposited: {error}",
                            uid=log_id(uid),
                            error=redact(str(failure.value)),
                        )
                        self._emit(
                            "mailbox.depositFailed",
                            {"contact": uid, "error": str(failure.value)},
                        )
                yield self._advance_many(done, "sent", via="mailbox", uids=[uid] * len(done))
        finally:
            self._depositing.discard(uid)
        if retry and uid not in self._mailbox_timers and self._store is store:
            self._mailbox_timers[uid] = self._call_later(MAILBOX_RETRY, self._deposit_outbox, uid)
        if uid in self._deposit_again:
            self._deposit_again.discard(uid)
            yield self._deposit_outbox(uid)

    def path_of(self, uid: str) -> str:
        """Which path a message to *uid* takes now: ``direct`` (a session is up), ``mailbox``
        (no session; its deposit address is known) or ``none`` (neither: it stays queued), in
        the words of :mod:`jarvis.protocol.peerpath`."""
        if uid in self._pumps:
            return "direct"
        if self.postbox is not None and self.postbox.can_deposit(uid):
            return "mailbox"
        return "none"

    def mailbox_path(self, uid: str) -> MailboxPath:
        """The return path for what was collected from *uid*'s queue."""
        path = self._mailbox_paths.get(uid)
        if path is None:
            path = self._mailbox_paths[uid] = MailboxPath(uid, self)
        return path

    def mailbox_message(
        self, uid: str, message_id: bytes, body: bytes, created_ms: int
    ) -> defer.Deferred[Any]:
        """A message collected from *uid*'s queue: stored on the session messages' path
        (once, by id); acknowledged over a session if one is up, else by a deposit.  From a
        blocked contact it is dropped (the network refuses its sessions; its deposits are
        collected and deleted unread).  From a group peer who is not a contact (collected
        from one of our group queues), only a group entry is taken, never a chat message."""
        contact = self._contacts.get(uid)
        if contact is None:
            if not (body.startswith(BODY_MARK) and self.group_peer(uid)):
                self.log.warn("a deposit from {uid} dropped: no contact, no group", uid=log_id(uid))
                return defer.succeed(None)
        elif contact.blocked:
            return defer.succeed(None)
        return self.message_received(self.mailbox_path(uid), message_id, body, created_ms)

    def mailbox_acks(self, uid: str, message_ids: Sequence[bytes]) -> defer.Deferred[Any]:
        """Acks collected from *uid*'s queue: our messages are ``delivered``."""
        return self.acks_received(self.mailbox_path(uid), message_ids)

    # -- the outbox stream ---------------------------------------------------------------------

    def _refill(self, pump: PeerPump) -> defer.Deferred[Any]:
        """Read the next page of the outbox ahead (at most one window beyond the one in
        flight, in messages and bytes), then write what the window takes.

        Fires once the page is written and its "sent" states recorded.  The read runs on the
        store's thread.
        """
        store = self._store
        uid = pump.session.peer_uid
        count, size = pump.read_room()
        if (
            store is None
            or pump.loading
            or pump.caught_up
            or count <= 0
            or (size <= 0 and (pump.in_flight or pump.waiting))
            # enough is read ahead: wait to read a larger page (fewer trips to the store)
            or (len(pump.waiting) > WINDOW_MESSAGES // 2 and count < WINDOW_MESSAGES // 2)
            or self._pumps.get(uid) is not pump
        ):
            return defer.succeed(None)
        pump.loading = True
        d = store.run(
            queries.outbox_page,
            uid,
            after_seq=pump.last_seq,
            limit=count,
            max_bytes=max(1, size),
            write=False,
        )

        def loaded(page: tuple[list[StoredMessage], bool]) -> Any:
            pump.loading = False
            messages, more = page
            if self._pumps.get(uid) is not pump:
                return None
            for message in messages:
                size = len(message.body.encode("utf-8"))
                pump.waiting.append((message, size))
                pump.waiting_bytes += size
                pump.last_seq = message.seq
            pump.caught_up = not more
            return self._drain(pump)

        def failed(failure: Any) -> None:
            pump.loading = False
            self.log.failure("reading the outbox for {uid} failed", failure, uid=uid)

        return d.addCallbacks(loaded, failed)

    def _drain(self, pump: PeerPump) -> defer.Deferred[Any]:
        """Write the messages read ahead while the window has room and the transport takes
        them; then read the next page.  Fires once their "sent" states are recorded."""
        written: list[defer.Deferred[Any]] = []
        while pump.waiting and pump.window_open() and not pump.paused():
            message, size = pump.waiting.popleft()
            pump.waiting_bytes -= size
            written.append(self._write(pump, message))
        written.append(self._refill(pump))
        return defer.gatherResults(written)

    def _write(self, pump: PeerPump, message: StoredMessage) -> defer.Deferred[Any]:
        """Write *message* to the pump's session, into the window; fires when its state is
        recorded."""
        if message.id in pump.in_flight:
            return defer.succeed(None)
        body = message.body.encode("utf-8")
        try:
            pump.session.send_message(bytes.fromhex(message.id), body, int(message.created * 1000))
        except Exception as e:
            self.log.warn("could not send {id}: {error}", id=message.id, error=redact(str(e)))
            return defer.succeed(None)
        pump.in_flight[message.id] = (message, len(body))
        pump.in_flight_bytes += len(body)
        if pump.retransmit is None:
            pump.retransmit = self._call_later(pump.retransmit_delay, self._retransmit, pump)
        if message.state == "queued":
            return self._advance_sent(message.id, message.contact)
        return defer.succeed(None)

    def _call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Any:
        clock: Any = self.clock  # IReactorTime's zope signature does not type-check
        return clock.callLater(delay, fn, *args)

    def _retransmit(self, pump: PeerPump) -> None:
        """No ack came for a while: write the unacknowledged messages again, in order.

        The peer may have failed to store them (a full disk): it acknowledged nothing, and on a
        session that stays up nothing else would send them again.  The receiver drops copies
        it already stored.  The delay doubles up to ``RETRANSMIT_MAX`` until an ack comes.
        """
        pump.retransmit = None
        if self._pumps.get(pump.session.peer_uid) is not pump or not pump.in_flight:
            return
        if not pump.paused():
            self.log.info(
                "no ack from {uid} for {delay:g} s: sending {count} messages again",
                uid=pump.session.peer_uid,
                delay=pump.retransmit_delay,
                count=len(pump.in_flight),
            )
            for message, _size in list(pump.in_flight.values()):
                try:
                    pump.session.send_message(
                        bytes.fromhex(message.id),
                        message.body.encode("utf-8"),
                        int(message.created * 1000),
                    )
                except Exception as e:
                    self.log.warn("could not send {id} again: {error}", id=message.id, error=str(e))
                    return
            pump.retransmit_delay = min(pump.retransmit_delay * 2, RETRANSMIT_MAX)
        pump.retransmit = self._call_later(pump.retransmit_delay, self._retransmit, pump)

    # -- acks and states -----------------------------------------------------------------------

    def _note_stored(self, uid: str, message_id: bytes) -> None:
        """Move *uid*'s stored mark to *message_id*, unless an earlier message is missing.

        Messages arrive in the order the peer sent them and their stores finish in that order,
        so without a failed store since the mark, everything the peer sent up to *message_id*
        is stored.  After a failure the mark waits until the failed messages are stored (the
        peer sends them again), and moves with the next message after that.
        """
        gaps = self._store_gaps.get(uid)
        if gaps:
            gaps.discard(message_id)
            if not gaps:
                del self._store_gaps[uid]
            return
        self._stored_marks[uid] = message_id

    def _flush_acks(self, pending: dict[Any, list[bytes]]) -> None:
        """Acknowledge the messages stored this reactor turn: one Ack record per session.

        A store batch commits many messages at once; one Ack per batch instead of one per
        message halves the records crossing the wire and the work on both sides.
        """
        for session, ids in pending.items():
            try:
                session.send_ack(ids)
            except Exception as e:
                self.log.warn(
                    "{count} acks for {uid} not sent: {error}",
                    count=len(ids),
                    uid=log_id(getattr(session, "peer_uid", None)),
                    error=redact(str(e)),
                )

    def _advance_sent(self, message_id: str, uid: str) -> defer.Deferred[None]:
        """Record *message_id* as sent with the others written this reactor turn, in one store
        operation (one statement on the store's thread instead of one per message).

        :returns: a Deferred firing once the state is recorded and announced.
        """
        waiter: defer.Deferred[None] = defer.Deferred()
        self._sent_this_turn.add(None, (message_id, uid, waiter))
        return waiter

    def _flush_sent(self, pending: dict[Any, list[tuple[str, str, defer.Deferred[None]]]]) -> None:
        written = pending[None]

        def recorded(_: object) -> None:
            for _mid, _uid, waiter in written:
                waiter.callback(None)

        mids = [mid for mid, _, _ in written]
        self._advance_many(mids, "sent", uids=[uid for _, uid, _ in written]).addBoth(recorded)

    def _advance_many(
        self,
        message_ids: Sequence[str],
        state: str,
        *,
        via: str | None = None,
        uids: Sequence[str] | None = None,
    ) -> defer.Deferred[Any]:
        """Advance *message_ids* to *state* in one store operation; announce each change.

        :param uids: the contact of each id (the entries of a group message share one id).
        """
        store = self._store
        if store is None or not message_ids:
            return defer.succeed(None)
        if via is not None:
            d = store.run(
                queries.advance_via,
                list(message_ids),
                state,
                self.now(),
                via,
                uids=uids,
                write=True,
            )
        else:
            d = store.run(
                queries.advance_states,
                list(message_ids),
                state,
                self.now(),
                uids=uids,
                write=True,
            )
        d.addCallback(self._announce_changes, via)
        d.addErrback(lambda f: self.log.failure("state update failed", f))
        return d

    def _announce_changes(
        self, changes: list[tuple[str, str, str]], via: str | None = None
    ) -> None:
        """Emit ``message.stateChanged`` per ``(id, contact, state)`` change (with ``via``
        when the path is not the session: ``"mailbox"``)."""
        emit = self._emit
        for mid, contact, new_state in changes:
            payload = {"id": mid, "contact": contact, "state": new_state, "at": self.now()}
            if via is not None:
                payload["via"] = payload["path"] = via
            emit("message.stateChanged", payload)

    # -- read receipts -------------------------------------------------------------------------

    def _send_receipts(self, pump: PeerPump, uid: str, ids: Sequence[str]) -> None:
        """Write read receipts for *ids* to the pump's session; once that session has stayed
        up :data:`RECEIPTS_SETTLE` seconds more, they are no longer owed.

        Receipts not written (no session, or the write failed), or written to a session that
        ends before then (a write into a session whose peer is already gone succeeds, and is
        lost), stay owed in the store and go out when the next session with *uid* is
        established; the peer takes a receipt for a message already read as a no-op.
        """
        try:
            pump.session.send_read([bytes.fromhex(i) for i in ids])
        except Exception as e:
            self.log.warn("read receipts not sent: {error}", error=redact(str(e)))
            return
        store = self._store
        if store is None:
            return
        written = list(ids)

        def settle() -> None:
            pump.receipt_settles[:] = [c for c in pump.receipt_settles if c.active()]
            if self._pumps.get(uid) is not pump or self._store is None:
                return  # that session ended: they stay owed
            self._store.run(queries.clear_receipts, uid, written, write=True).addErrback(
                lambda f: self.log.failure("read receipts not noted as sent", f)
            )

        pump.receipt_settles.append(self._call_later(RECEIPTS_SETTLE, settle))

    @defer.inlineCallbacks
    def _replay_receipts(self, pump: PeerPump, uid: str) -> Any:
        """Send the read receipts owed to *uid* (read while no session was up)."""
        store = self._store
        if store is None:
            return
        due = yield store.run(queries.receipts_due, uid, write=False)
        contact = self._contacts.get(uid)
        if not due or self._pumps.get(uid) is not pump:
            return
        if contact is None or not contact.read_receipts:
            # turned off since: what is owed is not sent any more
            yield store.run(queries.clear_receipts, uid, due, write=True)
            return
        self._send_receipts(pump, uid, due)
