"""The Jarvis node: wires the core's parts and owns the lock state.

A :class:`Node` is what the daemon's local API talks to (it satisfies
:class:`~jarvis.core.interfaces.NodeApi`).  It owns the identity's lock state (no identity,
locked, screen-locked, unlocked) and the settings, and hands everything else to one part per
concern, built here and wired through the seams of :mod:`jarvis.core.interfaces`:

- :class:`~jarvis.core.account.AccountFiles`: the key file, the password back-off, export,
  import and the wipe;
- :class:`~jarvis.core.contacts.ContactBook`: contacts, references, presence (the peer
  network's contact directory);
- :class:`~jarvis.core.courier.Courier`: outbox, send window, acks, receipts, history (the
  peer network's session observer).

What exists only while unlocked (the keys, the open store, the peer network) is opened in
:meth:`Node._open_keys` and closed in :meth:`Node._close_keys`.  The node never touches the
reactor directly: time (``clock``, ``now``), blocking work (``run_blocking``) and the peer
network (``network_factory``) are injected by :mod:`jarvis.app.daemon`, and tests pass fakes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jarvis.common.errors import IdentityExists, InvalidInput, Locked, NoIdentity
from jarvis.core.account import DATABASE, KEYFILE, AccountFiles, open_store, report
from jarvis.core.addresses import local_addresses
from jarvis.core.backoff import MAX_DELAY
from jarvis.core.contacts import ContactBook
from jarvis.core.courier import Courier
from jarvis.core.events import Events, Observer
from jarvis.core.groups import GroupDirectory, Groups
from jarvis.core.interfaces import (
    ContactDirectory,
    MailboxTransport,
    NodeApi,
    PeerNetwork,
    SessionObserver,
)
from jarvis.core.limits import (
    MAX_TEXT_BYTES,
    RETRANSMIT_INITIAL,
    RETRANSMIT_MAX,
    WINDOW_BYTES,
    WINDOW_MESSAGES,
)
from jarvis.core.postbox import Postbox
from jarvis.core.transfers import Transfers, is_control_body
from jarvis.crypto import keyfile, linkcode
from jarvis.crypto.identity import IdentityKey, fingerprint
from jarvis.protocol.group_fanout import (
    KIND_GROUP_TRANSFER,
    KIND_TRANSFER,
    encode_body,
    encode_payload,
    payload_group_id,
)
from jarvis.protocol.transfer import SharedFile
from jarvis.store import queries
from jarvis.store.database import Store
from jarvis.store.records import Contact

__all__ = [
    "DATABASE",
    "DEFAULT_SETTINGS",
    "KEYFILE",
    "MAX_TEXT_BYTES",
    "MAX_UNLOCK_DELAY",
    "RETRANSMIT_INITIAL",
    "RETRANSMIT_MAX",
    "WINDOW_BYTES",
    "WINDOW_MESSAGES",
    "Node",
]

#: Longest wait imposed after repeated wrong passwords, in seconds.
MAX_UNLOCK_DELAY = MAX_DELAY
#: User settings kept (encrypted) in the store, with their defaults.
DEFAULT_SETTINGS: dict[str, bool] = {
    "notifications": True,  # desktop notifications for new messages
    "previews": False,  # show message text in notifications (opt-in)
    "bell": True,  # UIs ring the terminal bell for new messages
    # announce to, and find, contacts on the local network (mDNS; docs/net.md, docs/security.md)
    "lan_discovery": True,
}
#: Seconds between checks of the mailbox prekeys (made weekly, deleted after two weeks).
PREKEY_CHECK_INTERVAL = 86400.0
#: ``(identity, directory, observer) -> network``: builds the peer network at unlock.
NetworkFactory = Callable[[IdentityKey, ContactDirectory, SessionObserver], PeerNetwork]


class Node(Service):
    """The application: see the module docstring.

    :param clock: time for delays (``IReactorTime``).
    :param data_dir: the private data directory (already checked by the daemon).
    :param run_blocking: runs a blocking callable off the reactor thread and returns a Deferred.
    :param network_factory: ``(identity, directory, observer) -> network``; called at unlock.
    :param advertise: ``host:port`` addresses to publish in link codes (else interface addresses).
    :param listening: returns the peer listener's (host, port), for link-code addresses.
    :param now: wall-clock time in seconds since the epoch.
    :param kdf_params: Argon2id parameters for new key files (tests use small ones).
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        data_dir: str,
        run_blocking: Callable[..., defer.Deferred[Any]],
        network_factory: NetworkFactory | None,
        advertise: Sequence[str] = (),
        listening: Callable[[], tuple[str, int] | None] = lambda: None,
        now: Callable[[], float],
        kdf_params: keyfile.KdfParams = keyfile.DEFAULT_PARAMS,
        reactor_for_store: Any = None,
        mailbox_factory: Callable[[], MailboxTransport] | None = None,
    ) -> None:
        self.clock = clock
        self.data_dir = data_dir
        self.run_blocking = run_blocking
        self.network_factory = network_factory
        self.advertise = tuple(advertise)
        self.listening = listening
        self.now = now
        self._store_reactor = reactor_for_store if reactor_for_store is not None else clock
        self._events = Events()
        self._emit = self._events.emit
        time_source: Any = clock  # IReactorTime's stub declares seconds() without self
        self.account = AccountFiles(
            data_dir,
            run_blocking=run_blocking,
            seconds=time_source.seconds,
            kdf_params=kdf_params,
            store_reactor=self._store_reactor,
        )
        self.contacts = ContactBook(now=now, emit=self._emit)
        self.courier = Courier(clock=clock, now=now, emit=self._emit, contacts=self.contacts)
        self.mailbox_factory = mailbox_factory
        self.postbox = Postbox(
            now=now,
            emit=self._emit,
            public_key=self.contacts.public_key,
            contact_uids=self.contacts.acceptable_uids,
            run_blocking=run_blocking,
        )
        self.courier.postbox = self.postbox
        self.contacts.can_deposit = self.postbox.can_deposit  # the path when no session is up
        self.postbox.on_message = self.courier.mailbox_message
        self.postbox.on_acks = self.courier.mailbox_acks
        self.postbox.on_address = self.courier.schedule_mailbox
        self.contacts.on_peer_state = self.courier.peer_state_changed
        self.groups = Groups(
            clock=clock,
            now=now,
            emit=self._emit,
            courier=self.courier,
            contacts=self.contacts,
            run_blocking=run_blocking,
        )
        self.courier.on_group = self._entry_received  # group payloads, and transfer records
        self.courier.group_peer = self.groups.is_peer
        # members who are not contacts, through the mailbox (docs/groups.md)
        self.groups.postbox = self.postbox
        self.postbox.group_key = self.groups.peer_key
        self.postbox.group_address = self.groups.peer_mailbox
        self.postbox.group_senders = self.groups.group_senders
        self.postbox.wait_for_members = self.groups.wait_for_members
        self.postbox.on_changed = self.groups.mailbox_changed
        self.transfers = Transfers(
            clock=clock,
            now=now,
            emit=self._emit,
            run_blocking=run_blocking,
            display_name=self.contacts.display_name,
        )
        self.transfers.may_offer = self._may_offer
        self.transfers.deposit = self._deposit_control
        self.transfers.member_name = self.groups.member_name
        self._events.subscribe(self.groups.event_seen)  # per-member delivery of group messages
        self._events.subscribe(self._peers_moved)  # transfers with those we no longer share
        # What exists only while unlocked:
        self._keys: keyfile.UnlockedKeys | None = None
        self._store: Store | None = None
        self._network: PeerNetwork | None = None
        self._screen_locked = False
        self._public_uid: str | None = None
        self._addresses: tuple[str, ...] = ()
        self._settings: dict[str, bool] = dict(DEFAULT_SETTINGS)
        self._rotation: Any = None

    # -- paths and status ----------------------------------------------------------------------

    @property
    def keyfile_path(self) -> str:
        return self.account.keyfile_path

    @property
    def database_path(self) -> str:
        return self.account.database_path

    @property
    def has_identity(self) -> bool:
        """Whether a key file exists in the data directory.

        Asked on every API request: while the keys are loaded the answer is known without a
        ``stat()`` on the reactor thread.
        """
        return self._keys is not None or self.account.exists()

    @property
    def locked(self) -> bool:
        """Whether API clients must unlock first (keys wiped, or the screen lock is on)."""
        return self._keys is None or self._screen_locked

    @property
    def keys_loaded(self) -> bool:
        """Whether the identity's keys are in memory (connections and storage work)."""
        return self._keys is not None

    def info(self) -> dict[str, Any]:
        """Return ``{has_identity, locked, keys_loaded, uid, name}`` (no secrets)."""
        uid = self._keys.uid if self._keys else self._public_uid
        name = self._keys.name if self._keys and not self._screen_locked else None
        return {
            "has_identity": self.has_identity,
            "locked": self.locked,
            "keys_loaded": self.keys_loaded,
            "uid": uid,
            "name": name,
        }

    def store_pool_stats(self) -> dict[str, Any] | None:
        """Thread figures of the store's database thread, when open."""
        return self._store.pool_stats() if self._store is not None else None

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call *observer(event, payload)* for every event; returns the unsubscribe function."""
        return self._events.subscribe(observer)

    # -- service life cycle --------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.account.backoff.load()
        if self.has_identity:
            self._public_uid = self.account.public_uid()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        yield self._close_keys()

    # -- the lock state ------------------------------------------------------------------------

    def _require_keys(self) -> keyfile.UnlockedKeys:
        if self._keys is None or self._screen_locked:
            if not self.has_identity:
                raise NoIdentity("no identity yet: create one with 'jarvis init --name NAME'")
            raise Locked("the identity is locked: unlock it with the master password")
        return self._keys

    def _require_store(self) -> Store:
        self._require_keys()
        assert self._store is not None
        return self._store

    @defer.inlineCallbacks
    def create_identity(
        self, name: str, password: str, *, progress: Callable[[Any], None] | None = None
    ) -> Any:
        """Create the identity and unlock it.  Argon2id runs on the thread pool.

        :raises IdentityExists: if the data directory already has one.
        """
        if self.has_identity:
            raise IdentityExists(f"an identity already exists in {self.data_dir}")
        report(progress, {"stage": "deriving key", "percent": 10})
        keys = yield self.account.create(name, password)
        report(progress, {"stage": "opening store", "percent": 80})
        yield self._open_keys(keys)
        self.log.info("identity {uid} created", uid=keys.uid)
        return {"uid": keys.uid, "name": keys.name, "fingerprint": fingerprint(keys.uid)}

    @defer.inlineCallbacks
    def unlock(self, password: str, *, progress: Callable[[Any], None] | None = None) -> Any:
        """Unlock with the master password (after the screen lock or a full lock).

        Wrong passwords start the shared back-off (:mod:`jarvis.core.backoff`); the key file is
        never written for a wrong password.

        :raises WrongPassword: for a wrong password.
        :raises TooManyAttempts: during the back-off (at once, the password unchecked).
        :raises NoIdentity: if there is no identity.
        """
        if not self.has_identity:
            raise NoIdentity("no identity yet: create one with 'jarvis init --name NAME'")
        report(progress, {"stage": "deriving key", "percent": 10})
        keys = yield self.account.unlock(password)
        if self._keys is not None:
            keys.data_key = b""
            self._screen_locked = False
        else:
            report(progress, {"stage": "opening store", "percent": 80})
            yield self._open_keys(keys)
        assert self._keys is not None
        self._emit("identity.unlocked", {"uid": self._keys.uid, "name": self._keys.name})
        return {"uid": self._keys.uid, "name": self._keys.name}

    def unlock_delay(self) -> float:
        """Seconds before a password attempt is accepted again (0: now)."""
        return self.account.backoff.retry_after()

    @defer.inlineCallbacks
    def _open_keys(self, keys: keyfile.UnlockedKeys) -> Any:
        """Open what exists only while unlocked: the store, the parts' state, the network."""
        store = yield open_store(self.database_path, keys, self._store_reactor)
        contacts = yield store.run(queries.list_contacts, write=False)
        self._keys = keys
        self._public_uid = keys.uid
        self._store = store
        self.contacts.open(store, contacts, keys.uid)
        self.courier.open(store)
        self._screen_locked = False
        stored_settings = yield store.run(queries.get_setting, "settings", write=False)
        self._settings = dict(DEFAULT_SETTINGS)
        if stored_settings:
            try:
                loaded = json.loads(stored_settings)
                self._settings.update(
                    {k: bool(v) for k, v in loaded.items() if k in DEFAULT_SETTINGS}
                )
            except (ValueError, AttributeError):
                self.log.warn("stored settings unreadable: using defaults")
        self._addresses = yield self.run_blocking(local_addresses, self.advertise, self.listening())
        yield self.groups.open(store, keys.identity, self._addresses, display_name=keys.name)
        # The postbox's state before the network: the first dial round knows the mailboxes'
        # relays, and a session that comes up at once hears our real mailbox address.
        transport = self.mailbox_factory() if self.mailbox_factory is not None else None
        yield self.postbox.open(store, keys.identity, transport)
        if self.network_factory is not None:
            directory = GroupDirectory(self.contacts, self.groups)
            self._network = self.network_factory(keys.identity, directory, self)
            assert self._network is not None
            self.contacts.attach(self._network)
            self.groups.attach(self._network)
        self.contacts.publish_summary()
        yield self.transfers.open(store, self._network, self._live_session)
        self.transfers.reopen_partials()
        self.postbox.start()
        for uid in [*self.postbox.peers, *self.groups.peer_uids()]:
            self.courier.schedule_mailbox(uid)
        self._schedule_rotation()

    def _schedule_rotation(self) -> None:
        """Check the mailbox prekeys once a day while unlocked (rotation, deletion)."""

        def check() -> None:
            self._rotation = None
            if self._keys is not None:
                self.postbox.rotate_due()
                self._schedule_rotation()

        clock: Any = self.clock
        self._rotation = clock.callLater(PREKEY_CHECK_INTERVAL, check)

    def lock(self, *, wipe: bool = False) -> defer.Deferred[Any]:
        """Lock the identity.

        Without *wipe* this is the screen lock: every client must give the password again, but
        the keys stay in memory so peer sessions stay up and incoming messages are stored.  With
        *wipe* the keys are dropped, the store closed and every session closed, as at start-up.
        """
        if self._keys is None:
            return defer.succeed(None)
        if not wipe:
            self._screen_locked = True
            self._emit("identity.locked", {"wiped": False})
            return defer.succeed(None)
        d = self._close_keys()
        d.addCallback(lambda _: self._emit("identity.locked", {"wiped": True}))
        return d

    @defer.inlineCallbacks
    def _close_keys(self) -> Any:
        network, self._network = self._network, None
        rotation, self._rotation = self._rotation, None
        if rotation is not None and rotation.active():
            rotation.cancel()
        self.transfers.close()
        self.courier.close()
        self.groups.close()
        yield self.postbox.close()
        self.contacts.close()
        if network is not None:
            yield network.stop()
        store, self._store = self._store, None
        if store is not None:
            yield store.close()
        keys, self._keys = self._keys, None
        if keys is not None:
            keys.data_key = b""
        self._screen_locked = False

    @defer.inlineCallbacks
    def change_password(
        self, old: str, new: str, *, progress: Callable[[Any], None] | None = None
    ) -> Any:
        """Re-wrap the data key under a new password (the store is not re-encrypted)."""
        self._require_keys()
        report(progress, {"stage": "deriving keys", "percent": 10})
        yield self.account.change_password(old, new)
        self.log.info("password changed")
        return None

    def show_identity(self) -> dict[str, Any]:
        """Return name, uid, fingerprint, link code and advertised addresses."""
        keys = self._require_keys()
        card = self.own_card()
        return {
            "name": keys.name,
            "uid": keys.uid,
            "fingerprint": fingerprint(keys.uid),
            "link": linkcode.encode_link(card),
            "card": linkcode.card_to_json(card),
            "addresses": list(card.addresses),
        }

    def own_card(self) -> linkcode.ContactCard:
        """Return this node's signed contact card."""
        keys = self._require_keys()
        return linkcode.make_card(
            keys.identity,
            keys.name,
            self._addresses,
            int(self.now()),
            mailbox=self.postbox.card_mailbox(),
        )

    # -- settings ------------------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, bool]:
        """The current settings (defaults while locked)."""
        return dict(self._settings)

    def get_settings(self) -> dict[str, bool]:
        """Return the user's settings."""
        self._require_keys()
        return self.settings

    @defer.inlineCallbacks
    def update_settings(self, **changes: bool) -> Any:
        """Change settings (names from :data:`DEFAULT_SETTINGS`) and keep them encrypted."""
        store = self._require_store()
        unknown = set(changes) - set(DEFAULT_SETTINGS)
        if unknown:
            raise InvalidInput(f"unknown setting {sorted(unknown)[0]!r}")
        self._settings.update({k: bool(v) for k, v in changes.items()})
        yield store.run(queries.set_setting, "settings", json.dumps(self._settings), write=True)
        self._emit("settings.changed", {"settings": self.settings})
        return self.settings

    # -- contacts (the contact book, once unlocked) --------------------------------------------

    def resolve(self, ref: str) -> Contact:
        """Find a contact by alias, name or unique uid prefix (see :meth:`ContactBook.resolve`)."""
        self._require_keys()
        return self.contacts.resolve(ref)

    def add_contact(self, **card: Any) -> defer.Deferred[Any]:
        """Add (or update) a contact: see :meth:`ContactBook.add` (and make its mailbox queue
        when a mailbox is in use; a code or card carrying the contact's mailbox lets us
        deposit for it at once)."""
        self._require_store()

        def queue(view: Any) -> Any:
            uid = view.get("uid") if isinstance(view, dict) else None
            if uid:
                mailbox = _card_mailbox(card)
                if mailbox is not None:
                    self.postbox.address_from_card(uid, mailbox)
                self.postbox.contact_added(uid).addErrback(
                    lambda f: self.log.warn("no mailbox queue for the contact: {e}", e=f.value)
                )
            return view

        return self.contacts.add(**card).addCallback(queue)

    def list_contacts(self) -> defer.Deferred[Any]:
        """Return every contact's view, sorted by display name."""
        self._require_store()
        return self.contacts.list_views()

    def show_contact(self, ref: str) -> defer.Deferred[Any]:
        """Return one contact's view with its connection health."""
        self._require_store()
        return self.contacts.show(ref)

    def update_contact(self, ref: str, **changes: Any) -> defer.Deferred[Any]:
        """Rename (set the alias), change addresses or flags: see :meth:`ContactBook.update`."""
        self._require_store()
        return self.contacts.update(ref, **changes)

    @defer.inlineCallbacks
    def remove_contact(self, ref: str, *, with_history: bool = False) -> Any:
        """Remove a contact, and its messages too when *with_history*."""
        self._require_store()
        contact = self.contacts.resolve(ref)
        yield self.contacts.remove(contact, with_history=with_history)
        self.courier.forget(contact.uid)
        self.contacts.removed(contact.uid)
        yield self.postbox.contact_removed(contact.uid)
        return None

    def redial(self, ref: str) -> dict[str, Any]:
        """Dial a contact now, skipping the backoff wait (the user asked)."""
        self._require_keys()
        return self.contacts.redial(ref)

    def peers_status(self) -> dict[str, Any]:
        """Return the connection summary and every contact's health figures."""
        self._require_keys()
        return self.contacts.peers_status()

    def display_name(self, uid: str) -> str:
        """The contact's alias or name (a uid prefix for strangers)."""
        return self.contacts.display_name(uid)

    def address_discovered(self, uid: str, address: str) -> None:
        """LAN discovery found contact *uid* at *address*: see
        :meth:`ContactBook.address_discovered` (nothing while locked)."""
        if self._keys is not None:
            self.contacts.address_discovered(uid, address)

    # -- the mailbox (the postbox, once unlocked) ----------------------------------------------

    def mailbox_use(self, link: str) -> defer.Deferred[Any]:
        """Use the mailbox at *link*: see :meth:`Postbox.use`."""
        self._require_store()
        return self.postbox.use(link)

    def mailbox_status(self) -> dict[str, Any]:
        """The mailbox in use, reachability, queues, last collect: see :meth:`Postbox.status`."""
        self._require_keys()
        status = self.postbox.status()
        status["contacts"] = [
            self._mailbox_path_entry(uid) for uid in sorted(self.contacts.acceptable_uids())
        ]
        return status

    def _mailbox_path_entry(self, uid: str) -> dict[str, Any]:
        """``{uid, path, path_reason}``: the courier's word (direct, mailbox, none), with a
        live session's kind (lan, direct, relayed: jarvis.protocol.peerpath) for "direct"."""
        path = self.courier.path_of(uid)
        live = self.contacts.path(uid)
        reason = live.reason
        if path == "direct":
            path, reason = (live.kind, live.reason) if live.live else (path, "direct: live")
        return {"uid": uid, "path": path, "path_reason": reason}

    def mailbox_drop(self) -> defer.Deferred[Any]:
        """Stop using the mailbox: see :meth:`Postbox.drop`."""
        self._require_store()
        return self.postbox.drop()

    # -- messages (the courier, once unlocked) -------------------------------------------------

    def send_message(self, ref: str, text: str) -> defer.Deferred[Any]:
        """Store a message and its outbox entry, then send it if the peer is connected.

        :returns: a Deferred firing with the message's view once it is stored (and written to
            the peer's session when one is up); it fails with ``TooLarge`` for more than
            64 KiB of UTF-8, ``InvalidInput`` for no text or a blocked contact, ``NotFound``
            for an unknown contact.
        """
        return defer.maybeDeferred(self._send_message, ref, text)

    def _send_message(self, ref: str, text: str) -> defer.Deferred[Any]:
        self._require_store()
        return self.courier.send(self.contacts.resolve(ref), text)

    def history(
        self,
        ref: str,
        *,
        limit: int = 50,
        before: str | int | None = None,
        after: str | int | None = None,
    ) -> Any:
        """Return a page of a conversation: see :meth:`Courier.history`."""
        self._require_store()
        contact = self.contacts.resolve(ref)
        return self.courier.history(contact, limit=limit, before=before, after=after)

    def mark_read(self, ref: str, *, up_to: str | None = None) -> defer.Deferred[Any]:
        """Mark a conversation read (up to a message), send read receipts if allowed."""
        self._require_store()
        return self.courier.mark_read(self.contacts.resolve(ref), up_to=up_to)

    def unread_counts(self) -> defer.Deferred[Any]:
        """Return ``{uid: unread}`` for conversations with unread messages."""
        return self._require_store().run(queries.unread_counts, write=False)

    # -- the peer network's observer: sessions to the courier, presence to the contact book ----

    def session_established(self, session: Any) -> defer.Deferred[Any]:
        d = self.courier.session_established(session)
        self.transfers.session_established(session.peer_uid)
        return d

    def session_closed(self, session: Any, reason: str) -> None:
        self.courier.session_closed(session, reason)

    def session_writable(self, session: Any) -> None:
        self.courier.session_writable(session)

    def message_received(
        self, session: Any, message_id: bytes, body: bytes, created_ms: int
    ) -> defer.Deferred[Any]:
        if is_control_body(body):
            self.transfers.control_received(session.peer_uid, body)
            return defer.succeed(None)
        return self.courier.message_received(session, message_id, body, created_ms)

    def acks_received(self, session: Any, message_ids: Sequence[bytes]) -> defer.Deferred[Any]:
        return self.courier.acks_received(session, message_ids)

    def reads_received(self, session: Any, message_ids: Sequence[bytes]) -> defer.Deferred[Any]:
        return self.courier.reads_received(session, message_ids)

    def resume_mark(self, uid: str) -> bytes | None:
        return self.courier.resume_mark(uid)

    def peer_status_changed(self, uid: str, status: Any) -> None:
        self.contacts.peer_status_changed(uid, status)

    # -- file transfers (jarvis.core.transfers, once unlocked) ---------------------------------

    def _live_session(self, uid: str) -> Any:
        network = self._network
        session = getattr(network, "session", None) if network is not None else None
        return session(uid) if session is not None else None

    def inbound_stream(self, uid: str, transfer_id: bytes) -> Any:
        """The peer network asks for the partial file of an inbound data connection."""
        if self._keys is None:
            return None
        return self.transfers.inbound_stream(uid, transfer_id)

    def outbound_pull(self, uid: str, transfer_id: bytes) -> Any:
        """The peer network asks for the file's source of a data connection the receiver
        dialled back."""
        if self._keys is None:
            return None
        return self.transfers.outbound_pull(uid, transfer_id)

    @defer.inlineCallbacks
    def send_file(self, ref: str, path: str, *, wait: bool = False, progress: Any = None) -> Any:
        """Offer the file at *path* to a contact; with *wait*, answer once it is complete,
        declined, cancelled or failed (reporting progress meanwhile)."""
        self._require_store()
        contact = self.contacts.resolve(ref)
        if contact.blocked:
            raise InvalidInput("the contact is blocked: unblock them first")
        view = yield self.transfers.send(contact.uid, path)
        if not wait:
            return view
        (final,) = yield self._wait_transfers([view["id"]], progress)
        return final

    @defer.inlineCallbacks
    def send_folder(self, ref: str, path: str, *, wait: bool = False, progress: Any = None) -> Any:
        """Offer every file of the folder at *path* to a contact, to be received as one folder
        (``{"folder", "transfers", "failed"}``); *progress* hears the hashing (``{folder,
        hashed, files}``), and with *wait* the transfers as ``send_file``'s; with *wait*,
        answer once every one ended."""
        self._require_store()
        contact = self.contacts.resolve(ref)
        if contact.blocked:
            raise InvalidInput("the contact is blocked: unblock them first")
        result = yield self.transfers.send_folder(contact.uid, path, progress)
        if not wait or not result["transfers"]:
            return result
        finals = yield self._wait_transfers([v["id"] for v in result["transfers"]], progress)
        return {**result, "transfers": finals}

    @defer.inlineCallbacks
    def send_group_file(
        self, ref: str, path: str, *, wait: bool = False, progress: Any = None
    ) -> Any:
        """Offer the file at *path* into a group: hashed once, one transfer per other member
        (each accepts on its own); with *wait*, answer once every one of them ended."""
        self._require_store()
        gid, uids = self.groups.file_recipients(ref)
        views = yield self.transfers.send_many(uids, path, gid)
        # The group's history records the file (later members see it and may ask for it).
        shared = SharedFile.of(self.transfers.find(views[0]["id"]).offer)
        try:
            message = yield self.groups.share_file(gid, shared)
        except Exception as e:  # the offers went: the file still reaches the members
            self.log.warn("the shared file was not recorded in the group: {e}", e=e)
            message = None
        result = {
            "group": gid.hex(),
            "message": message["id"] if message else None,
            "transfers": views,
        }
        if not wait:
            return result
        finals = yield self._wait_transfers([v["id"] for v in views], progress)
        return {**result, "transfers": finals}

    @defer.inlineCallbacks
    def fetch_group_file(
        self,
        ref: str,
        message_ref: str,
        directory: str | None = None,
        *,
        holder: str | None = None,
        wait: bool = False,
        progress: Any = None,
    ) -> Any:
        """Ask for the file of group message *message_ref* (a file shared before we joined, or
        one we declined): the member who shared it when it is online, else the other members
        online in turn (those who received it serve it), the author last; or only the member
        *holder* when given.  It is accepted into *directory* as soon as an offer of the
        recorded file comes.  With *wait*, answer once it ended."""
        self._require_store()
        gid, uid, shared = self.groups.shared_file(ref, message_ref, holder)
        others: list[str] = []
        if holder is None:
            _gid, members = self.groups.other_members(ref)
            others = [m for m in members if m != uid]
        view = yield self.transfers.request(uid, gid, shared, directory, others)
        if not wait:
            return view
        (final,) = yield self._wait_transfers([view["id"]], progress)
        return final

    def wait_transfers(self, refs: list[str], progress: Any = None) -> Any:
        """Answer with the views of the transfers *refs* (ids, or unique prefixes of 4+ hex
        digits), in that order, once each is complete, cancelled or failed; meanwhile
        *progress* hears them as with ``send_file``'s *wait*.  Cancelling the wait leaves the
        transfers as they are.

        :raises TransferNotFound: if a ref names no single transfer (before any wait).
        """
        self._require_keys()
        ids = list(dict.fromkeys(self.transfers.find(ref).id for ref in refs))
        return self._wait_transfers(ids, progress)

    @defer.inlineCallbacks
    def _wait_transfers(self, ids: list[str], progress: Any) -> Any:
        """The final views of the transfers *ids*, once each is complete, cancelled or failed;
        meanwhile *progress* (if given) hears their ``{id, bytes, size, rate, eta}`` and
        ``{id, state}``."""
        wanted = set(ids)
        unsubscribe = None
        if progress is not None:

            def relay(event: str, payload: dict[str, Any]) -> None:
                if event == "transfer.progress" and payload.get("id") in wanted:
                    progress(payload)
                elif event == "transfer.changed" and payload["transfer"]["id"] in wanted:
                    progress(
                        {"id": payload["transfer"]["id"], "state": payload["transfer"]["state"]}
                    )

            unsubscribe = self._events.subscribe(relay)
        try:
            finals = yield defer.gatherResults(
                [self.transfers.wait(self.transfers.find(tid)) for tid in ids], consumeErrors=True
            )
        finally:
            if unsubscribe is not None:
                unsubscribe()
        return finals

    def _may_offer(self, uid: str, group_id: bytes) -> bool:
        """A file offer from *uid* is taken from a contact who is not blocked, or, into a
        group, from a member of a group we are in: a group peer who is not a contact may
        offer files into the groups we share only (as it may send nothing but group
        traffic).  One rule with :meth:`_transfer_refusal`, which ends a transfer once its
        offer would no longer be taken."""
        return self._transfer_refusal(uid, group_id) is None

    def _entry_received(self, uid: str, payload: bytes) -> defer.Deferred[Any]:
        """A durable 1:1 entry's payload from *uid* (over a session or from the mailbox): a
        transfer's control record goes to the transfers (their gate decides, as for one that
        came over a session), anything else to the groups."""
        if payload[:1] == bytes([KIND_TRANSFER]):
            self.transfers.record_received(uid, payload[1:])
            return defer.succeed(None)
        if payload[:1] == bytes([KIND_GROUP_TRANSFER]):
            gid = payload_group_id(payload)
            if gid is not None:  # the transfers check the record is about that group
                self.transfers.record_received(uid, payload[1 + len(gid) :], gid)
            return defer.succeed(None)
        return self.groups.payload_received(uid, payload)

    def _deposit_control(self, uid: str, record: bytes, group_id: bytes = b"") -> bool:
        """Queue a transfer's control record for *uid*, who has no session now, as a durable
        entry (hidden from the conversation) that the courier deposits in its mailbox or
        streams at the next session: to a contact who is not blocked, into the queue it told
        us; to a member of group *group_id* (the transfer's file was sent into it) who is not
        a contact, into its queue for that group.  ``False`` (the record waits for a
        session) when neither applies or we know no mailbox for it."""
        contact = self.contacts.get(uid)
        if not self.postbox.can_deposit(uid):
            return False
        if contact is not None:
            if contact.blocked:
                return False
            payload = encode_payload(KIND_TRANSFER, record)
        elif group_id and self.groups.shares(group_id, uid):
            payload = encode_payload(KIND_GROUP_TRANSFER, group_id + record)
            if self.groups.peer_mailbox(uid, encode_body(payload)) is None:
                return False  # no queue of its for this group
        else:
            return False
        d = self.courier.queue_group_entry(uid, os.urandom(16).hex(), payload)
        d.addErrback(lambda f: self.log.failure("queueing a transfer record failed", f))
        return True

    def _transfer_refusal(self, uid: str, group_id: bytes) -> tuple[str, bool] | None:
        """Why a transfer with *uid* (into group *group_id*, if any) may not go on, and
        whether *uid* is told; ``None`` while :meth:`_may_offer` would still take its offer.
        A blocked contact is not told (blocking says nothing to the one blocked)."""
        if group_id:
            return (
                None if self.groups.shares(group_id, uid) else ("not in the group any more", True)
            )
        contact = self.contacts.get(uid)
        if contact is None:
            return ("not a contact any more", True)
        if contact.blocked:
            return ("the contact is blocked", False)
        return None

    def _peers_moved(self, event: str, payload: dict[str, Any]) -> None:
        """A group's members or a contact changed: the transfers the change refuses end
        (a member removed or gone, our own leaving, a contact removed or blocked)."""
        if event in ("group.changed", "group.removed"):
            group = payload.get("group")
            ident = group.get("id") if isinstance(group, dict) else group
            if isinstance(ident, str):
                self.transfers.revoke(self._transfer_refusal, group_id=bytes.fromhex(ident))
        elif event == "contact.changed":
            contact = payload.get("contact")
            uid = contact.get("uid") if isinstance(contact, dict) else payload.get("uid")
            if isinstance(uid, str):
                self.transfers.revoke(self._transfer_refusal, peer=uid)

    def list_transfers(self) -> list[dict[str, Any]]:
        """Every transfer, both directions, newest first."""
        self._require_keys()
        return self.transfers.list()

    def accept_transfer(self, ref: str, directory: str | None = None) -> Any:
        """Accept an incoming file into *directory* (default ~/Downloads)."""
        self._require_store()
        return self.transfers.accept(ref, directory)

    def transfer_policy(
        self,
        *,
        max_size: int | None = None,
        downloads: str | None = None,
        contact: str | None = None,
        auto_accept: int | None = None,
    ) -> Any:
        """Show, or change, the receiving policy: size cap, default folder, and one contact's
        auto-accept limit (bytes; 0 turns it off)."""
        self._require_store()
        pair = None
        if auto_accept is not None:
            if contact is None:
                raise InvalidInput("auto_accept needs a contact")
            pair = (self.contacts.resolve(contact).uid, auto_accept)
        if max_size is None and downloads is None and pair is None:
            return self.transfers.policy_view()
        return self.transfers.set_policy(max_size=max_size, downloads=downloads, auto_accept=pair)

    def decline_transfer(self, ref: str) -> Any:
        """Decline an incoming offer."""
        self._require_store()
        return self.transfers.decline(ref)

    def cancel_transfer(self, ref: str) -> Any:
        """Cancel a transfer, either direction."""
        self._require_store()
        return self.transfers.cancel(ref)

    # -- account export, import, deletion ------------------------------------------------------

    @defer.inlineCallbacks
    def export_account(
        self, path: str, password: str, *, progress: Callable[[Any], None] | None = None
    ) -> Any:
        """Write identity, contacts and history to a password-sealed ``.jexport`` file."""
        keys = self._require_keys()
        store = self._require_store()
        report(progress, {"stage": "collecting", "percent": 10})
        dump = yield store.run(queries.dump, write=False)
        report(progress, {"stage": "sealing", "percent": 40})
        result = yield self.account.export(path, password, keys, dump)
        return result

    @defer.inlineCallbacks
    def import_account(
        self,
        path: str,
        export_password: str,
        password: str,
        *,
        progress: Callable[[Any], None] | None = None,
    ) -> Any:
        """Restore an export into this (empty) data directory, protected by *password*."""
        if self.has_identity:
            raise IdentityExists("import needs an empty data directory")
        keys = yield self.account.import_(path, export_password, password, progress)
        yield self._open_keys(keys)
        return {"uid": keys.uid, "name": keys.name}

    @defer.inlineCallbacks
    def delete_account(self, password: str) -> Any:
        """Check the password, then remove every file of the data directory (best effort wipe)."""
        if not self.has_identity:
            raise NoIdentity("there is no identity to delete")
        yield self.account.check_for_delete(password)
        yield self._close_keys()
        removed = yield self.account.wipe()
        self._public_uid = None
        self._emit("identity.locked", {"wiped": True, "deleted": True})
        return {"removed": removed}


def _check_node_api(node: Node) -> NodeApi:
    """Never called: mypy checks here that :class:`Node` satisfies :class:`NodeApi`."""
    return node


def _card_mailbox(card: dict[str, Any]) -> linkcode.CardMailbox | None:
    """The mailbox queue in the link code or card file of an added contact, if any (the
    contact book already checked the code or card whole)."""
    try:
        if card.get("link") is not None:
            return linkcode.decode_link(card["link"]).mailbox
        if card.get("card") is not None:
            return linkcode.card_from_json(card["card"]).mailbox
    except Exception:
        return None
    return None
