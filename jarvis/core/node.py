"""The Jarvis node: the application behind the daemon's local API.

A :class:`Node` owns the identity life cycle (create, unlock, lock, change password, export,
import, delete), the contact book, the conversations and the outbox, and turns peer-session
events into stored messages and API events.  It is a Twisted ``Service`` but never touches the
reactor directly: time (``clock``, ``now``), blocking work (``run_blocking``, a bounded thread
pool) and the peer network (``network_factory``) are injected by :mod:`jarvis.daemon`, and tests
pass fakes.

Delivery contract (docs/protocol.md): ``send_message`` stores the message and its outbox entry in
one transaction before it answers (state ``queued``); it becomes ``sent`` when written to an
established session, ``delivered`` when the peer acknowledges it after storing it, ``read`` when
a UI on the peer marks it read.  On every new session the outbox streams in order through a
send window (:data:`WINDOW_MESSAGES` / :data:`WINDOW_BYTES` unacknowledged, read from the store a
page at a time), after what the peer's Resume mark says it already stored; unacknowledged
messages are written again after :data:`RETRANSMIT_INITIAL` seconds without an ack.  The
receiver deduplicates by message id, so a message is stored exactly once.
"""

from __future__ import annotations

import json
import os
import stat
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from jarvis.atomicfile import write_atomically
from jarvis.core.addresses import local_addresses
from jarvis.core.backoff import MAX_DELAY, PasswordBackoff
from jarvis.core.events import Events, Observer
from jarvis.core.views import contact_view, message_view, peer_view, summary_level
from jarvis.crypto import export as export_crypto
from jarvis.crypto import keyfile, linkcode
from jarvis.crypto.aead import RowCipher
from jarvis.crypto.errors import WrongPassword
from jarvis.crypto.identity import IdentityKey, fingerprint, is_valid_uid
from jarvis.errors import (
    Ambiguous,
    DataDirError,
    IdentityExists,
    InvalidInput,
    Locked,
    NoIdentity,
    NotFound,
    StorageFull,
    TooLarge,
)
from jarvis.logs import log_id, redact
from jarvis.store.database import Store
from jarvis.store.records import Contact, Message, new_message_id
from jarvis.turn import TurnBatch

KEYFILE = "identity.key"
DATABASE = "jarvis.db"
#: Largest message text accepted, in bytes of UTF-8.
MAX_TEXT_BYTES = 64 * 1024
#: Longest wait imposed after repeated wrong passwords, in seconds.
MAX_UNLOCK_DELAY = MAX_DELAY
EXPORT_FORMAT = 1
#: User settings kept (encrypted) in the store, with their defaults.
DEFAULT_SETTINGS: dict[str, bool] = {
    "notifications": True,  # desktop notifications for new messages
    "previews": False,  # show message text in notifications (opt-in)
    "bell": True,  # UIs ring the terminal bell for new messages
}


#: Most messages written to a session and not yet acknowledged (the send window).  The outbox
#: streams through this window: the next page is read from the store as acks free it.
WINDOW_MESSAGES = 256
#: Most bytes of message bodies written to a session and not yet acknowledged.
WINDOW_BYTES = 4 * 1024 * 1024
#: Seconds without any ack, while messages are unacknowledged on a live session, before they
#: are written again (the receiver may have failed to store them, for instance on a full disk).
RETRANSMIT_INITIAL = 5.0
#: The retransmission delay doubles after each retransmission without progress, up to this.
RETRANSMIT_MAX = 60.0


@dataclass(eq=False)
class _PeerPump:
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

    session: Any
    in_flight: dict[str, tuple[Message, int]] = field(default_factory=dict)
    in_flight_bytes: int = 0
    waiting: deque[tuple[Message, int]] = field(default_factory=deque)
    waiting_bytes: int = 0
    last_seq: int = 0
    loading: bool = False
    caught_up: bool = False
    retransmit: Any = None
    retransmit_delay: float = RETRANSMIT_INITIAL

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
        network_factory: Callable[[IdentityKey, Any, Any], Any] | None,
        advertise: Sequence[str] = (),
        listening: Callable[[], tuple[str, int] | None] = lambda: None,
        now: Callable[[], float],
        kdf_params: keyfile.KdfParams = keyfile.DEFAULT_PARAMS,
        reactor_for_store: Any = None,
    ) -> None:
        self.clock = clock
        self.data_dir = data_dir
        self.run_blocking = run_blocking
        self.network_factory = network_factory
        self.advertise = tuple(advertise)
        self.listening = listening
        self.now = now
        self.kdf_params = kdf_params
        self._store_reactor = reactor_for_store if reactor_for_store is not None else clock
        self._events = Events()
        self._emit = self._events.emit
        self._keys: keyfile.UnlockedKeys | None = None
        self._store: Store | None = None
        self._network: Any = None
        self._contacts: dict[str, Contact] = {}
        self._pumps: dict[str, _PeerPump] = {}
        self._screen_locked = False
        #: one wrong-password counter for every method that checks the password, kept on disk
        time_source: Any = clock  # IReactorTime's stub declares seconds() without self
        self._backoff = PasswordBackoff(
            data_dir, seconds=time_source.seconds, run_blocking=run_blocking
        )
        self._public_uid: str | None = None
        self._public_name: str | None = None
        self._addresses: tuple[str, ...] = ()
        self._summary: tuple[str, int, int] | None = None
        self._settings: dict[str, bool] = dict(DEFAULT_SETTINGS)
        #: each peer's last reported state, and how many acceptable contacts are online
        self._peer_states: dict[str, str] = {}
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

    # -- paths and status ----------------------------------------------------------------------

    @property
    def keyfile_path(self) -> str:
        return os.path.join(self.data_dir, KEYFILE)

    @property
    def database_path(self) -> str:
        return os.path.join(self.data_dir, DATABASE)

    @property
    def has_identity(self) -> bool:
        """Whether a key file exists in the data directory.

        Asked on every API request: while the keys are loaded the answer is known without a
        ``stat()`` on the reactor thread.
        """
        return self._keys is not None or os.path.exists(self.keyfile_path)

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

    # -- events --------------------------------------------------------------------------------

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call *observer(event, payload)* for every event; returns the unsubscribe function."""
        return self._events.subscribe(observer)

    # -- service life cycle --------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._backoff.load()
        if self.has_identity:
            try:
                with open(self.keyfile_path, "rb") as f:
                    self._public_uid, _ = keyfile.read_public(f.read())
            except Exception:
                self.log.warn("the identity key file could not be read")

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        yield self._close_keys()

    # -- identity ------------------------------------------------------------------------------

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
        _report(progress, {"stage": "deriving key", "percent": 10})
        content, keys = yield self.run_blocking(
            keyfile.create_keyfile, name, password, params=self.kdf_params
        )
        if self.has_identity:
            raise IdentityExists(f"an identity already exists in {self.data_dir}")
        yield self.run_blocking(_write_private_atomically, self.keyfile_path, content)
        _report(progress, {"stage": "opening store", "percent": 80})
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
        self._backoff.check()
        _report(progress, {"stage": "deriving key", "percent": 10})
        content = yield self.run_blocking(_read_file, self.keyfile_path)
        keys = yield self._check_password(keyfile.unlock_keyfile, content, password)
        if self._keys is not None:
            keys.data_key = b""
            self._screen_locked = False
        else:
            _report(progress, {"stage": "opening store", "percent": 80})
            yield self._open_keys(keys)
        assert self._keys is not None
        self._emit("identity.unlocked", {"uid": self._keys.uid, "name": self._keys.name})
        return {"uid": self._keys.uid, "name": self._keys.name}

    def unlock_delay(self) -> float:
        """Seconds before a password attempt is accepted again (0: now)."""
        return self._backoff.retry_after()

    @defer.inlineCallbacks
    def _check_password(self, check: Callable[..., Any], *args: Any) -> Any:
        """Run *check* on *args* (it raises ``WrongPassword``) off the reactor, under the
        back-off every password-checking method shares.

        :raises TooManyAttempts: during the back-off, without running *check*.
        :raises WrongPassword: for a wrong password, once the failure is saved.
        """
        self._backoff.check()
        try:
            result = yield self.run_blocking(check, *args)
        except WrongPassword:
            yield self._backoff.failed()
            raise
        yield self._backoff.succeeded()
        return result

    @defer.inlineCallbacks
    def _open_keys(self, keys: keyfile.UnlockedKeys) -> Any:
        cipher = RowCipher(keys.data_key)
        index_key = cipher.derive_subkey(b"jarvis store blind index v1")
        store = yield Store.open(
            self.database_path, reactor=self._store_reactor, cipher=cipher, index_key=index_key
        )
        contacts = yield store.list_contacts()
        self._keys = keys
        self._public_uid = keys.uid
        self._public_name = keys.name
        self._store = store
        self._contacts = {c.uid: c for c in contacts}
        self._screen_locked = False
        stored_settings = yield store.get_setting("settings")
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
        if self.network_factory is not None:
            self._network = self.network_factory(keys.identity, self, self)
            for contact in self._contacts.values():
                if not contact.blocked:
                    self._network.connect(contact.uid)
        self._publish_summary()

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
        for pump in self._pumps.values():
            _cancel_retransmit(pump)
        self._pumps.clear()
        self._stored_marks.clear()
        self._store_gaps.clear()
        self._peer_states.clear()
        if network is not None:
            yield network.stop()
        store, self._store = self._store, None
        if store is not None:
            yield store.close()
        keys, self._keys = self._keys, None
        if keys is not None:
            keys.data_key = b""
        self._contacts = {}
        self._screen_locked = False

    @defer.inlineCallbacks
    def change_password(
        self, old: str, new: str, *, progress: Callable[[Any], None] | None = None
    ) -> Any:
        """Re-wrap the data key under a new password (the store is not re-encrypted)."""
        self._require_keys()
        self._backoff.check()
        _report(progress, {"stage": "deriving keys", "percent": 10})
        content = yield self.run_blocking(_read_file, self.keyfile_path)
        new_content = yield self._check_password(keyfile.change_password, content, old, new)
        yield self.run_blocking(_write_private_atomically, self.keyfile_path, new_content)
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
        return linkcode.make_card(keys.identity, keys.name, self._addresses, int(self.now()))

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
        yield store.set_setting("settings", json.dumps(self._settings))
        self._emit("settings.changed", {"settings": self.settings})
        return self.settings

    # -- contacts ------------------------------------------------------------------------------

    def resolve(self, ref: str) -> Contact:
        """Find a contact by alias, name or unique uid prefix.

        :raises NotFound: if nothing matches.
        :raises Ambiguous: if several contacts match.
        """
        self._require_keys()
        if not isinstance(ref, str) or not ref:
            raise InvalidInput("a contact is named by its name, alias or uid prefix")
        if ref in self._contacts:
            return self._contacts[ref]
        for getter in (lambda c: c.alias, lambda c: c.name):
            matches = [c for c in self._contacts.values() if getter(c) == ref]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise Ambiguous(
                    f"{ref!r} names {len(matches)} contacts ({_candidates(matches)}): "
                    "use a uid prefix"
                )
        lowered = ref.lower()
        matches = [c for c in self._contacts.values() if c.uid.startswith(lowered)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise Ambiguous(
                f"{ref!r} is the start of {len(matches)} uids ({_candidates(matches)}): "
                "give more characters"
            )
        raise NotFound(f"no contact called {ref!r}: 'jarvis contacts' lists them")

    def _status_of(self, uid: str) -> str:
        """The peer's last reported state (kept from ``peer_status_changed``: O(1))."""
        if self._network is None:
            return "offline"
        return self._peer_states.get(uid, "offline")

    @defer.inlineCallbacks
    def _views(self, contacts: Sequence[Contact]) -> Any:
        store = self._require_store()
        keys = self._require_keys()
        unread = yield store.unread_counts()
        activity = yield store.last_activity()
        return [
            contact_view(
                c,
                own_uid=keys.uid,
                status=self._status_of(c.uid),
                unread=unread.get(c.uid, 0),
                last_activity=activity.get(c.uid),
            )
            for c in contacts
        ]

    @defer.inlineCallbacks
    def _view(self, contact: Contact) -> Any:
        views = yield self._views([contact])
        return views[0]

    @defer.inlineCallbacks
    def add_contact(
        self,
        *,
        link: str | None = None,
        card: str | None = None,
        uid: str | None = None,
        addresses: Sequence[str] | None = None,
        name: str | None = None,
        verified: bool = False,
    ) -> Any:
        """Add (or update) a contact from a link code, a card's JSON text, or uid + addresses.

        Adding a uid that is already a contact updates its addresses and name and keeps its
        history.  A manual entry (uid + addresses) has no public key yet: it is learnt, and
        checked against the uid, from the certificate at the first connection.

        :raises LinkCodeError: for a tampered, truncated or malformed code or card.
        """
        keys = self._require_keys()
        store = self._require_store()
        if sum(x is not None for x in (link, card, uid)) != 1:
            raise InvalidInput("give exactly one of a link code, a contact card or a uid")
        if link is not None:
            parsed = linkcode.decode_link(link)
        elif card is not None:
            parsed = linkcode.card_from_json(card)
        else:
            parsed = None
        if parsed is not None:
            new_uid, public_key = parsed.uid, parsed.public_key
            card_name, card_addresses = parsed.name, tuple(parsed.addresses)
        else:
            if not is_valid_uid(uid):
                raise InvalidInput("a uid is 52 characters of lowercase base32")
            assert uid is not None
            new_uid, public_key, card_name = uid, b"", name or uid[:8]
            card_addresses = tuple(linkcode.check_address(a) for a in addresses or ())
            if not card_addresses:
                raise InvalidInput("a manual contact needs at least one HOST:PORT address")
        if new_uid == keys.uid:
            raise InvalidInput("that link code is your own")
        existing = self._contacts.get(new_uid)
        if existing is not None:
            contact = replace(
                existing,
                name=card_name,
                addresses=card_addresses,
                public_key=public_key or existing.public_key,
                alias=name if name is not None and parsed is not None else existing.alias,
                verified=existing.verified or verified,
            )
        else:
            contact = Contact(
                uid=new_uid,
                public_key=public_key,
                name=card_name,
                addresses=card_addresses,
                alias=name if parsed is not None else None,
                verified=verified,
                added_at=self.now(),
            )
        yield store.put_contact(contact)
        self._contacts[new_uid] = contact
        self.log.info("contact {uid} saved", uid=log_id(new_uid))
        if self._network is not None and not contact.blocked:
            if existing is None:
                self._network.connect(new_uid)
            else:
                self._network.redial(new_uid)
        view = yield self._view(contact)
        self._emit("contact.changed", {"contact": view})
        self._publish_summary()
        return view

    def list_contacts(self) -> defer.Deferred[Any]:
        """Return every contact's view, sorted by display name."""
        self._require_keys()
        ordered = sorted(self._contacts.values(), key=lambda c: (c.alias or c.name).lower())
        return self._views(ordered)

    @defer.inlineCallbacks
    def show_contact(self, ref: str) -> Any:
        """Return one contact's view with its connection health."""
        contact = self.resolve(ref)
        view = yield self._view(contact)
        if self._network is not None:
            try:
                view["health"] = peer_view(self._network.status(contact.uid), contact.name)
            except Exception:
                view["health"] = None
        return view

    @defer.inlineCallbacks
    def update_contact(
        self,
        ref: str,
        *,
        name: str | None = None,
        addresses: Sequence[str] | None = None,
        verified: bool | None = None,
        blocked: bool | None = None,
        muted: bool | None = None,
        read_receipts: bool | None = None,
    ) -> Any:
        """Rename (set the alias), change addresses or flags of a contact."""
        store = self._require_store()
        contact = self.resolve(ref)
        changes: dict[str, Any] = {}
        if name is not None:
            changes["alias"] = name or None
        if addresses is not None:
            changes["addresses"] = tuple(linkcode.check_address(a) for a in addresses)
        for key, value in (
            ("verified", verified),
            ("blocked", blocked),
            ("muted", muted),
            ("read_receipts", read_receipts),
        ):
            if value is not None:
                changes[key] = bool(value)
        updated = replace(contact, **changes)
        yield store.put_contact(updated)
        self._contacts[updated.uid] = updated
        if self._network is not None:
            if updated.blocked and not contact.blocked:
                self._network.forget(updated.uid)
            elif not updated.blocked and (
                contact.blocked or updated.addresses != contact.addresses
            ):
                self._network.connect(updated.uid)
                self._network.redial(updated.uid)
        view = yield self._view(updated)
        self._emit("contact.changed", {"contact": view})
        self._publish_summary()
        return view

    @defer.inlineCallbacks
    def remove_contact(self, ref: str, *, with_history: bool = False) -> Any:
        """Remove a contact, and its messages too when *with_history*."""
        store = self._require_store()
        contact = self.resolve(ref)
        if self._network is not None:
            self._network.forget(contact.uid)
        yield store.remove_contact(contact.uid, with_history=with_history)
        self._contacts.pop(contact.uid, None)
        pump = self._pumps.pop(contact.uid, None)
        if pump is not None:
            _cancel_retransmit(pump)
        self._stored_marks.pop(contact.uid, None)
        self._store_gaps.pop(contact.uid, None)
        self._peer_states.pop(contact.uid, None)
        self._emit("contact.changed", {"uid": contact.uid, "removed": True})
        self._publish_summary()
        return None

    # ContactDirectory, for the peer network ----------------------------------------------------

    def is_acceptable(self, uid: str) -> bool:
        """Whether a peer presenting *uid* may connect (a contact, not blocked)."""
        contact = self._contacts.get(uid)
        return contact is not None and not contact.blocked

    def public_key(self, uid: str) -> bytes | None:
        """The contact's identity public key, if known."""
        contact = self._contacts.get(uid)
        return contact.public_key if contact is not None and contact.public_key else None

    def display_name(self, uid: str) -> str:
        """The contact's alias or name (a uid prefix for strangers)."""
        contact = self._contacts.get(uid)
        return (contact.alias or contact.name) if contact else uid[:12]

    def learn_public_key(self, uid: str, public_key: bytes) -> None:
        """Keep the key of a manually added contact, seen in its (uid-checked) certificate."""
        contact = self._contacts.get(uid)
        if contact is None or contact.public_key or self._store is None:
            return
        updated = replace(contact, public_key=public_key)
        self._contacts[uid] = updated
        d = self._store.put_contact(updated)
        d.addErrback(
            lambda f: self.log.failure("could not keep the key of {uid}", f, uid=log_id(uid))
        )
        self.log.info("learnt the key of manually added contact {uid}", uid=log_id(uid))

    def addresses(self, uid: str) -> tuple[str, ...]:
        """Where to dial the contact."""
        contact = self._contacts.get(uid)
        return contact.addresses if contact is not None else ()

    def acceptable_uids(self) -> list[str]:
        """Every contact that may connect (not blocked): whose knock the listener tries."""
        return [uid for uid, contact in self._contacts.items() if not contact.blocked]

    # -- messages ------------------------------------------------------------------------------

    def send_message(self, ref: str, text: str) -> defer.Deferred[Any]:
        """Store a message and its outbox entry, then send it if the peer is connected.

        :returns: a Deferred firing with the message's view once it is stored (and written to
            the peer's session when one is up); it fails with ``TooLarge`` for more than
            64 KiB of UTF-8, ``InvalidInput`` for no text or a blocked contact, ``NotFound``
            for an unknown contact.
        """
        return defer.maybeDeferred(self._send_message, ref, text)

    def _send_message(self, ref: str, text: str) -> defer.Deferred[Any]:
        store = self._require_store()
        contact = self.resolve(ref)
        if not isinstance(text, str) or not text:
            raise InvalidInput("a message needs some text")
        size = len(text.encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            raise TooLarge(f"the message is {size} bytes; the limit is {MAX_TEXT_BYTES}")
        if contact.blocked:
            raise InvalidInput(f"{contact.alias or contact.name} is blocked: unblock them first")
        now = self.now()
        message = Message(
            id=new_message_id(now),
            contact=contact.uid,
            direction="out",
            body=text,
            state="queued",
            created=now,
        )
        return store.add_outgoing(message).addCallback(self._stored_outgoing, message)

    def _stored_outgoing(self, stored: Message | None, message: Message) -> dict[str, Any]:
        if stored is None:
            stored = message
        self._emit("message.added", {"message": message_view(stored)})
        pump = self._pumps.get(stored.contact)
        if pump is not None and not pump.loading and stored.seq > pump.last_seq:
            if pump.caught_up and not pump.waiting and pump.window_open() and not pump.paused():
                # Written now (everything before it in the outbox already was); the answer
                # does not wait for "sent" to be recorded (that comes with the next store batch
                # and its own event).  Should the daemon die before, the message is still
                # queued in the store and goes again on the next session; the receiver drops
                # the copy.
                pump.last_seq = stored.seq
                self._write(pump, stored)
                stored = _with_state(stored, "sent")
            else:
                # The window is full (or paused): the stream reads it from the store later.
                pump.caught_up = False
                self._refill(pump)
        # While a page is being read, that read comes after this message's insert in the
        # store's queue, so the page holds it.
        return message_view(stored)

    def _refill(self, pump: _PeerPump) -> defer.Deferred[Any]:
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
        d = store.outbox_page(uid, after_seq=pump.last_seq, limit=count, max_bytes=max(1, size))

        def loaded(page: tuple[list[Message], bool]) -> Any:
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

    def _drain(self, pump: _PeerPump) -> defer.Deferred[Any]:
        """Write the messages read ahead while the window has room and the transport takes
        them; then read the next page.  Fires once their "sent" states are recorded."""
        written: list[defer.Deferred[Any]] = []
        while pump.waiting and pump.window_open() and not pump.paused():
            message, size = pump.waiting.popleft()
            pump.waiting_bytes -= size
            written.append(self._write(pump, message))
        written.append(self._refill(pump))
        return defer.gatherResults(written)

    def _write(self, pump: _PeerPump, message: Message) -> defer.Deferred[Any]:
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
            return self._advance_sent(message.id)
        return defer.succeed(None)

    def _call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Any:
        clock: Any = self.clock  # IReactorTime's zope signature does not type-check
        return clock.callLater(delay, fn, *args)

    def _retransmit(self, pump: _PeerPump) -> None:
        """No ack came for a while: write the unacknowledged messages again, in order.

        The peer may have failed to store them (a full disk): it acknowledged nothing, and on a
        session that stays up nothing else would send them again.  The receiver drops copies
        it already stored.  The delay doubles up to :data:`RETRANSMIT_MAX` until an ack comes.
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

    def _acknowledged(self, uid: str, message_ids: Sequence[str]) -> defer.Deferred[Any]:
        """Take acknowledged messages out of *uid*'s window; progress resets the retransmission
        delay; the freed room takes the next messages (fires once they are written)."""
        pump = self._pumps.get(uid)
        if pump is None:
            return defer.succeed(None)
        progress = False
        for mid in message_ids:
            entry = pump.in_flight.pop(mid, None)
            if entry is not None:
                pump.in_flight_bytes -= entry[1]
                progress = True
        if not progress:
            return defer.succeed(None)
        _cancel_retransmit(pump)
        pump.retransmit_delay = RETRANSMIT_INITIAL
        if pump.in_flight:
            pump.retransmit = self._call_later(pump.retransmit_delay, self._retransmit, pump)
        return self._drain(pump)

    def session_writable(self, session: Any) -> None:
        """The transport takes bytes again after a pause: go on with the stream."""
        pump = self._pumps.get(getattr(session, "peer_uid", ""))
        if pump is not None and pump.session is session:
            self._drain(pump)

    def resume_mark(self, uid: str) -> bytes | None:
        """The id of the last message from *uid* stored with everything *uid* sent before it.

        A new session tells it to the peer (in a Resume record), which then marks delivered
        what it had sent up to it and resends only what follows.  ``None`` when nothing from
        *uid* was stored since the store opened (the peer then resends every unacknowledged
        message; the copies are dropped).
        """
        return self._stored_marks.get(uid)

    def _advance_sent(self, message_id: str) -> defer.Deferred[None]:
        """Record *message_id* as sent with the others written this reactor turn, in one store
        operation (one statement on the store's thread instead of one per message).

        :returns: a Deferred firing once the state is recorded and announced.
        """
        waiter: defer.Deferred[None] = defer.Deferred()
        self._sent_this_turn.add(None, (message_id, waiter))
        return waiter

    def _flush_sent(self, pending: dict[Any, list[tuple[str, defer.Deferred[None]]]]) -> None:
        written = pending[None]

        def recorded(_: object) -> None:
            for _mid, waiter in written:
                waiter.callback(None)

        self._advance_many([mid for mid, _ in written], "sent").addBoth(recorded)

    def _advance_many(self, message_ids: Sequence[str], state: str) -> defer.Deferred[Any]:
        """Advance *message_ids* to *state* in one store operation; announce each change."""
        store = self._store
        if store is None or not message_ids:
            return defer.succeed(None)
        d = store.advance_states(message_ids, state, self.now())
        d.addCallback(self._announce_changes)
        d.addErrback(lambda f: self.log.failure("state update failed", f))
        return d

    def _announce_changes(self, changes: list[tuple[str, str, str]]) -> None:
        """Emit ``message.stateChanged`` per ``(id, contact, state)`` change."""
        emit = self._emit
        for mid, contact, new_state in changes:
            emit(
                "message.stateChanged",
                {"id": mid, "contact": contact, "state": new_state, "at": self.now()},
            )

    def history(
        self,
        ref: str,
        *,
        limit: int = 50,
        before: str | int | None = None,
        after: str | int | None = None,
    ) -> Any:
        """Return a page of a conversation, newest first, with the cursors and the marker.

        :param before: a ``next`` cursor or a message id: only older messages.
        :param after: a ``newer`` cursor or a message id: the oldest messages newer than it.
        """
        store = self._require_store()
        contact = self.resolve(ref)
        if not 1 <= limit <= 500:
            raise InvalidInput("limit must be between 1 and 500")

        @defer.inlineCallbacks
        def load() -> Any:
            page = yield store.history(contact.uid, limit=limit, before=before, after=after)
            marker = yield store.get_marker(contact.uid)
            return {
                "messages": [message_view(m) for m in page.messages],
                "next": page.next_cursor,
                "newer": page.newer_cursor,
                "marker": marker,
            }

        return load()

    @defer.inlineCallbacks
    def mark_read(self, ref: str, *, up_to: str | None = None) -> Any:
        """Mark a conversation read (up to a message), send read receipts if allowed."""
        store = self._require_store()
        contact = self.resolve(ref)
        ids = yield store.mark_read(
            contact.uid, up_to=up_to, at=self.now(), receipts=contact.read_receipts
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

    def _send_receipts(self, pump: _PeerPump, uid: str, ids: Sequence[str]) -> None:
        """Write read receipts for *ids* to the pump's session; then they are no longer owed.

        Receipts not written (no session, or the write failed) stay owed in the store and go
        out when the next session with *uid* is established.
        """
        try:
            pump.session.send_read([bytes.fromhex(i) for i in ids])
        except Exception as e:
            self.log.warn("read receipts not sent: {error}", error=redact(str(e)))
            return
        store = self._store
        if store is not None:
            store.clear_receipts(uid, ids).addErrback(
                lambda f: self.log.failure("read receipts not noted as sent", f)
            )

    @defer.inlineCallbacks
    def _replay_receipts(self, pump: _PeerPump, uid: str) -> Any:
        """Send the read receipts owed to *uid* (read while no session was up)."""
        store = self._store
        if store is None:
            return
        due = yield store.receipts_due(uid)
        contact = self._contacts.get(uid)
        if not due or self._pumps.get(uid) is not pump:
            return
        if contact is None or not contact.read_receipts:
            # turned off since: what is owed is not sent any more
            yield store.clear_receipts(uid, due)
            return
        self._send_receipts(pump, uid, due)

    def unread_counts(self) -> defer.Deferred[Any]:
        """Return ``{uid: unread}`` for conversations with unread messages."""
        return self._require_store().unread_counts()

    def redial(self, ref: str) -> dict[str, Any]:
        """Dial a contact now, skipping the backoff wait (the user asked)."""
        contact = self.resolve(ref)
        if contact.blocked:
            raise InvalidInput(f"{contact.alias or contact.name} is blocked: unblock them first")
        if self._network is not None:
            self._network.connect(contact.uid)
            self._network.redial(contact.uid)
        return {"uid": contact.uid, "status": self._status_of(contact.uid)}

    def peers_status(self) -> dict[str, Any]:
        """Return the connection summary and every contact's health figures."""
        self._require_keys()
        peers = []
        for uid, contact in self._contacts.items():
            if self._network is not None:
                try:
                    name = contact.alias or contact.name
                    peers.append(peer_view(self._network.status(uid), name))
                    continue
                except Exception:
                    pass
            peers.append({"uid": uid, "status": "offline", "name": contact.alias or contact.name})
        summary, online, total = self._compute_summary()
        return {"summary": summary, "online": online, "total": total, "peers": peers}

    def _compute_summary(self) -> tuple[str, int, int]:
        # peer_status_changed fires for every dial attempt of every contact: this must stay
        # cheap (no per-contact network snapshots), or 1,000 contacts cost O(n^2) per round
        total = sum(1 for c in self._contacts.values() if not c.blocked)
        online = sum(
            1
            for uid, state in self._peer_states.items()
            if state == "online" and self.is_acceptable(uid)
        )
        return summary_level(online, total), online, total

    def _publish_summary(self) -> None:
        current = self._compute_summary()
        if current != self._summary:
            self._summary = current
            summary, online, total = current
            self._emit("connection.summary", {"summary": summary, "online": online, "total": total})

    # -- SessionObserver / network observer ----------------------------------------------------

    def session_established(self, session: Any) -> defer.Deferred[Any]:
        """Stream the contact's outbox, in order, on the new session, a window at a time.

        When the peer said which of our messages it already stored (its Resume record), those
        are marked delivered first and not sent again.  Fires once the first window is written.
        """
        uid = session.peer_uid
        store = self._store
        if store is None or uid not in self._contacts:
            return defer.succeed(None)
        old = self._pumps.get(uid)
        if old is not None:
            _cancel_retransmit(old)
        pump = _PeerPump(session=session)
        self._pumps[uid] = pump
        self.log.info("session with {uid} established", uid=log_id(uid))
        mark = getattr(session, "peer_resume_mark", None)
        first: defer.Deferred[Any]
        if mark:
            # Queued before the first page is read: the store runs them in this order.
            first = store.deliver_through(uid, bytes(mark).hex(), self.now())
            first.addCallback(self._announce_changes)
            first.addErrback(lambda f: self.log.failure("resume mark not applied", f))
        else:
            first = defer.succeed(None)
        d = defer.gatherResults([first, self._refill(pump), self._replay_receipts(pump, uid)])
        d.addErrback(lambda f: self.log.failure("outbox replay failed", f))
        return d

    def session_closed(self, session: Any, reason: str) -> None:
        uid = getattr(session, "peer_uid", None)
        pump = self._pumps.get(uid) if uid else None
        if pump is not None and pump.session is session:
            _cancel_retransmit(pump)
            del self._pumps[uid]  # type: ignore[arg-type]
        self.log.info("session with {uid} closed: {reason}", uid=log_id(uid), reason=redact(reason))

    def message_received(
        self, session: Any, message_id: bytes, body: bytes, created_ms: int
    ) -> defer.Deferred[Any]:
        """Store an incoming message (once), then acknowledge it; fires when done."""
        uid = session.peer_uid
        store = self._store
        if store is None or uid not in self._contacts:
            return defer.succeed(None)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self.log.warn(
                "message {id} from {uid} is not UTF-8", id=message_id.hex(), uid=log_id(uid)
            )
            return defer.succeed(None)
        message = Message(
            id=message_id.hex(),
            contact=uid,
            direction="in",
            body=text,
            state="received",
            created=created_ms / 1000.0,
        )

        def stored(new: Message | None) -> None:
            self._queue_ack(session, message_id)
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

        d = store.add_incoming(message)
        d.addCallbacks(stored, failed)
        d.addErrback(lambda f: self.log.failure("handling an incoming message failed", f))
        return d

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

    def _queue_ack(self, session: Any, message_id: bytes) -> None:
        """Acknowledge *message_id* (stored) with the others of this reactor turn in one record.

        A store batch commits many messages at once; one Ack per batch instead of one per
        message halves the records crossing the wire and the work on both sides.
        """
        self._acks_this_turn.add(session, message_id)

    def _flush_acks(self, pending: dict[Any, list[bytes]]) -> None:
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

    def acks_received(self, session: Any, message_ids: Sequence[bytes]) -> defer.Deferred[Any]:
        """Mark acknowledged messages delivered and free their room in the window; fires when
        recorded and the next messages are written."""
        ids = [i.hex() for i in message_ids]
        recorded = self._advance_many(ids, "delivered")
        return defer.gatherResults([recorded, self._acknowledged(session.peer_uid, ids)])

    def reads_received(self, session: Any, message_ids: Sequence[bytes]) -> defer.Deferred[Any]:
        """Mark messages read by the peer; fires when recorded."""
        return self._advance_many([i.hex() for i in message_ids], "read")

    def peer_status_changed(self, uid: str, status: Any) -> None:
        contact = self._contacts.get(uid)
        name = (contact.alias or contact.name) if contact else None
        state = str(getattr(status, "state", "offline"))
        previous = self._peer_states.get(uid)
        self._peer_states[uid] = state
        self._emit("peer.statusChanged", {"peer": peer_view(status, name)})
        if (previous == "online") != (state == "online"):
            self._publish_summary()

    # -- account export, import, deletion ------------------------------------------------------

    @defer.inlineCallbacks
    def export_account(
        self, path: str, password: str, *, progress: Callable[[Any], None] | None = None
    ) -> Any:
        """Write identity, contacts and history to a password-sealed ``.jexport`` file."""
        keys = self._require_keys()
        store = self._require_store()
        _report(progress, {"stage": "collecting", "percent": 10})
        dump = yield store.dump()
        content = {
            "jarvis_export": EXPORT_FORMAT,
            "name": keys.name,
            "identity": keys.identity.private_bytes().hex(),
            "store": dump,
        }
        _report(progress, {"stage": "sealing", "percent": 40})
        # Encoding the whole history is work in proportion to it: on the thread, with the KDF.
        blob = yield self.run_blocking(_seal_export, content, password, self.kdf_params)
        yield self.run_blocking(_write_private_atomically, path, blob, exclusive=True)
        return {"path": path, "bytes": len(blob)}

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
        if self.has_identity or os.path.exists(self.database_path):
            raise IdentityExists("import needs an empty data directory")
        blob = yield self.run_blocking(_read_file, path)
        _report(progress, {"stage": "opening export", "percent": 10})
        identity, name, dump = yield self.run_blocking(_open_export, blob, export_password)
        _report(progress, {"stage": "deriving key", "percent": 40})
        content, keys = yield self.run_blocking(
            keyfile.create_keyfile, name, password, params=self.kdf_params, identity=identity
        )
        cipher = RowCipher(keys.data_key)
        store = yield Store.open(
            self.database_path + ".import",
            reactor=self._store_reactor,
            cipher=cipher,
            index_key=cipher.derive_subkey(b"jarvis store blind index v1"),
        )
        try:
            yield store.load(dump)
        finally:
            yield store.close()
        yield self.run_blocking(_finish_import, self.database_path, self.keyfile_path, content)
        yield self._open_keys(keys)
        return {"uid": keys.uid, "name": keys.name}

    @defer.inlineCallbacks
    def delete_account(self, password: str) -> Any:
        """Check the password, then remove every file of the data directory (best effort wipe)."""
        if not self.has_identity:
            raise NoIdentity("there is no identity to delete")
        self._backoff.check()
        content = yield self.run_blocking(_read_file, self.keyfile_path)
        yield self._check_password(keyfile.unlock_keyfile, content, password)
        yield self._close_keys()
        removed = yield self.run_blocking(_wipe_directory, self.data_dir)
        self._public_uid = None
        self._emit("identity.locked", {"wiped": True, "deleted": True})
        return {"removed": removed}


#: How many candidates an ambiguous contact reference names.
_SHOWN_CANDIDATES = 5


def _candidates(matches: Sequence[Contact]) -> str:
    """Name the contacts an ambiguous reference matches: display name (repr, so a control
    character cannot reach a terminal) and uid prefix, a few of them."""
    ordered = sorted(matches, key=lambda c: c.uid)
    shown = [f"{c.alias or c.name!r} {c.uid[:12]}" for c in ordered[:_SHOWN_CANDIDATES]]
    if len(ordered) > _SHOWN_CANDIDATES:
        shown.append(f"{len(ordered) - _SHOWN_CANDIDATES} more")
    return ", ".join(shown)


def _cancel_retransmit(pump: _PeerPump) -> None:
    if pump.retransmit is not None and pump.retransmit.active():
        pump.retransmit.cancel()
    pump.retransmit = None


def _with_state(message: Message, state: str) -> Message:
    """A copy of *message* (valid already) in *state*, without dataclasses.replace's checks."""
    copy = object.__new__(Message)
    copy.__dict__.update(message.__dict__)
    copy.__dict__["state"] = state
    return copy


def _report(progress: Callable[[Any], None] | None, value: Any) -> None:
    if progress is not None:
        progress(value)


def _seal_export(content: dict[str, Any], password: str, params: keyfile.KdfParams) -> bytes:
    """Encode and seal an export's content (runs on a thread: JSON of the whole history)."""
    payload = json.dumps(content).encode("utf-8")
    return export_crypto.seal_export(payload, password, params=params)


def _open_export(blob: bytes, password: str) -> tuple[IdentityKey, str, dict[str, Any]]:
    """Open and decode an export (runs on a thread): its identity key, name and store dump.

    :raises DataDirError: if the opened content is not what an export holds.
    """
    payload = export_crypto.open_export(blob, password)
    try:
        data = json.loads(payload)
        identity = IdentityKey.from_private_bytes(bytes.fromhex(data["identity"]))
        return identity, data["name"], data["store"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataDirError(f"the export's content is damaged: {e}") from e


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_private_atomically(path: str, content: bytes, *, exclusive: bool = False) -> None:
    """Write *content* to *path* (mode 0600) through :func:`jarvis.atomicfile.write_atomically`
    (an exclusively created temporary file, fsync, rename).

    :raises InvalidInput: with *exclusive*, if *path* already exists (a symbolic link too).
    """
    try:
        write_atomically(path, content, mode=0o600, exclusive=exclusive)
    except FileExistsError:
        raise InvalidInput(f"{path} already exists: choose another file name") from None


def _finish_import(database_path: str, keyfile_path: str, content: bytes) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(database_path + ".import" + suffix):
            os.replace(database_path + ".import" + suffix, database_path + suffix)
    _write_private_atomically(keyfile_path, content)


def _wipe_directory(path: str) -> int:
    """Overwrite (best effort) and remove every regular file under *path*; return the count.

    Sockets and symbolic links are left alone: they hold no data, and the running daemon still
    needs them (its local API socket ``ipc.sock`` and the lock links beside it).
    """
    removed = 0
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            full = os.path.join(root, name)
            try:
                if not stat.S_ISREG(os.lstat(full).st_mode):
                    continue
                size = os.path.getsize(full)
                with open(full, "r+b") as f:
                    f.write(b"\0" * size)
                    f.flush()
                    os.fsync(f.fileno())
                os.unlink(full)
                removed += 1
            except OSError:
                pass
    return removed
