"""The contact book: who the contacts are, how a reference names one, and who is online.

:class:`ContactBook` keeps the contacts in memory (loaded from the store at unlock, written
through on every change), resolves a user's reference (alias, name, uid prefix) to one contact,
answers the peer network as its :class:`~jarvis.core.interfaces.ContactDirectory`, and keeps
the presence the network reports (each peer's state and the connection summary).  It does not
send or store messages: that is the courier's (:mod:`jarvis.core.courier`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from jarvis.common.errors import Ambiguous, InvalidInput, NotFound
from jarvis.common.logs import log_id
from jarvis.common.summary import summary_level
from jarvis.core.addresses import dial_order
from jarvis.core.interfaces import PeerNetwork
from jarvis.core.views import contact_view, peer_view
from jarvis.crypto import linkcode
from jarvis.crypto.identity import is_valid_uid
from jarvis.protocol.peerpath import PeerPath
from jarvis.protocol.peerpath import offline as offline_path
from jarvis.store import queries
from jarvis.store.database import Store
from jarvis.store.records import Contact

#: How many candidates an ambiguous contact reference names.
_SHOWN_CANDIDATES = 5
#: Addresses kept per contact from LAN discovery (newest first); older ones are dropped.
MAX_DISCOVERED = 4


class ContactBook:
    """The contacts of the unlocked identity, and their presence.

    :param now: wall-clock time in seconds since the epoch.
    :param emit: ``(event, payload)``: publishes API events.
    """

    log = Logger()

    def __init__(self, *, now: Callable[[], float], emit: Callable[[str, Any], None]) -> None:
        self.now = now
        self._emit = emit
        self._store: Store | None = None
        self._network: PeerNetwork | None = None
        self._own_uid = ""
        self._contacts: dict[str, Contact] = {}
        #: each peer's last reported state
        self._peer_states: dict[str, str] = {}
        self._summary: tuple[str, int, int] | None = None
        #: addresses found by LAN discovery, per contact, newest first (memory only)
        self._discovered: dict[str, list[str]] = {}
        #: when a dial to each address of a contact last succeeded (memory only)
        self._succeeded: dict[str, dict[str, float]] = {}
        #: whether a message to a contact can be deposited in its mailbox (the node sets it)
        self.can_deposit: Callable[[str], bool] = lambda uid: False
        self._directory_watchers: list[Callable[[], None]] = []
        #: called with ``(uid, state)`` whenever the network reports a peer's new state (the
        #: courier: a dial that ended without a session lets a waiting deposit go at once)
        self.on_peer_state: Callable[[str, str], None] | None = None

    # -- life cycle (the node calls these at unlock and lock) ----------------------------------

    def open(self, store: Store, contacts: Sequence[Contact], own_uid: str) -> None:
        """Start with *contacts* (read from *store*, where changes are written)."""
        self._store = store
        self._own_uid = own_uid
        self._contacts = {c.uid: c for c in contacts}

    def attach(self, network: PeerNetwork) -> None:
        """Dial every contact that is not blocked on *network*, and keep it for later changes."""
        self._network = network
        for contact in self._contacts.values():
            if not contact.blocked:
                network.connect(contact.uid)

    def close(self) -> None:
        """Forget everything (the keys are being wiped)."""
        self._store = None
        self._network = None
        self._contacts = {}
        self._peer_states.clear()
        self._discovered.clear()
        self._succeeded.clear()

    def get(self, uid: str) -> Contact | None:
        """The contact with *uid*, if any."""
        return self._contacts.get(uid)

    # -- references ----------------------------------------------------------------------------

    def resolve(self, ref: str) -> Contact:
        """Find a contact by alias, name or unique uid prefix.

        :raises NotFound: if nothing matches.
        :raises Ambiguous: if several contacts match.
        """
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

    # -- views ---------------------------------------------------------------------------------

    def status_of(self, uid: str) -> str:
        """The peer's last reported state (kept from ``peer_status_changed``: O(1))."""
        if self._network is None:
            return "offline"
        return self._peer_states.get(uid, "offline")

    @defer.inlineCallbacks
    def views(self, contacts: Sequence[Contact]) -> Any:
        """The API views of *contacts*, with status, unread count, last activity and the path
        a message takes now (``path``, ``path_reason``)."""
        store = self._store
        assert store is not None
        unread = yield store.run(queries.unread_counts, write=False)
        activity = yield store.run(queries.last_activity, write=False)
        return [
            {
                **contact_view(
                    c,
                    own_uid=self._own_uid,
                    status=self.status_of(c.uid),
                    unread=unread.get(c.uid, 0),
                    last_activity=activity.get(c.uid),
                ),
                **self.path(c.uid).as_dict(),
            }
            for c in contacts
        ]

    @defer.inlineCallbacks
    def view(self, contact: Contact) -> Any:
        """The API view of one contact."""
        views = yield self.views([contact])
        return views[0]

    def list_views(self) -> defer.Deferred[Any]:
        """Every contact's view, sorted by display name."""
        ordered = sorted(self._contacts.values(), key=lambda c: (c.alias or c.name).lower())
        return self.views(ordered)

    @defer.inlineCallbacks
    def show(self, ref: str) -> Any:
        """One contact's view with its connection health."""
        contact = self.resolve(ref)
        view = yield self.view(contact)
        if self._network is not None:
            try:
                health = peer_view(self._network.status(contact.uid), contact.name)
                health.update(self._path_fields(contact.uid, health["status"]))
                view["health"] = health
            except Exception:
                view["health"] = None
        return view

    # -- changes -------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def add(
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
        store = self._store
        assert store is not None
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
        if new_uid == self._own_uid:
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
        yield store.run(queries.put_contact, contact, write=True)
        self._contacts[new_uid] = contact
        self.log.info("contact {uid} saved", uid=log_id(new_uid))
        self._directory_changed()
        if self._network is not None and not contact.blocked:
            if existing is None:
                self._network.connect(new_uid)
            else:
                self._network.redial(new_uid)
        view = yield self.view(contact)
        self._emit("contact.changed", {"contact": view})
        self.publish_summary()
        return view

    @defer.inlineCallbacks
    def update(
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
        store = self._store
        assert store is not None
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
        yield store.run(queries.put_contact, updated, write=True)
        self._contacts[updated.uid] = updated
        if updated.blocked != contact.blocked:
            self._discovered.pop(updated.uid, None)
            self._directory_changed()
        if self._network is not None:
            if updated.blocked and not contact.blocked:
                self._network.forget(updated.uid)
            elif not updated.blocked and (
                contact.blocked or updated.addresses != contact.addresses
            ):
                self._network.connect(updated.uid)
                self._network.redial(updated.uid)
        view = yield self.view(updated)
        self._emit("contact.changed", {"contact": view})
        self.publish_summary()
        return view

    @defer.inlineCallbacks
    def remove(self, contact: Contact, *, with_history: bool = False) -> Any:
        """Remove *contact* (hang up on it first), and its messages too when *with_history*."""
        store = self._store
        assert store is not None
        if self._network is not None:
            self._network.forget(contact.uid)
        yield store.run(queries.remove_contact, contact.uid, with_history=with_history, write=True)
        self._contacts.pop(contact.uid, None)
        self._peer_states.pop(contact.uid, None)
        self._discovered.pop(contact.uid, None)
        self._directory_changed()

    def removed(self, uid: str) -> None:
        """Announce that *uid* is gone (once every part forgot it)."""
        self._emit("contact.changed", {"uid": uid, "removed": True})
        self.publish_summary()

    def redial(self, ref: str) -> dict[str, Any]:
        """Dial a contact now, skipping the backoff wait (the user asked)."""
        contact = self.resolve(ref)
        if contact.blocked:
            raise InvalidInput(f"{contact.alias or contact.name} is blocked: unblock them first")
        if self._network is not None:
            self._network.connect(contact.uid)
            self._network.redial(contact.uid)
        return {"uid": contact.uid, "status": self.status_of(contact.uid)}

    # -- ContactDirectory, for the peer network ------------------------------------------------

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
        d = self._store.run(queries.put_contact, updated, write=True)
        d.addErrback(
            lambda f: self.log.failure("could not keep the key of {uid}", f, uid=log_id(uid))
        )
        self.log.info("learnt the key of manually added contact {uid}", uid=log_id(uid))
        self._directory_changed()

    def addresses(self, uid: str) -> tuple[str, ...]:
        """Where to dial the contact, best first (:func:`jarvis.core.addresses.dial_order`):
        addresses that worked, most recent success first; then where LAN discovery found it
        (newest first); then the addresses of its card; each once."""
        contact = self._contacts.get(uid)
        if contact is None:
            return ()
        return dial_order(
            self._discovered.get(uid, ()), contact.addresses, self._succeeded.get(uid, {})
        )

    def address_succeeded(self, uid: str, address: str) -> None:
        """A dial to contact *uid* at *address* reached a session: try it first next time (while
        it is still one of the contact's addresses; kept in memory only)."""
        if uid not in self._contacts:
            return
        successes = self._succeeded.setdefault(uid, {})
        successes[address] = self.now()
        if len(successes) > MAX_DISCOVERED * 2:
            oldest = min(successes, key=successes.__getitem__)
            del successes[oldest]

    def path(self, uid: str) -> PeerPath:
        """The path a message to *uid* takes now, and why (:mod:`jarvis.protocol.peerpath`):
        the live session's (``lan``, ``direct``, ``relayed``), else ``mailbox`` when it can be
        deposited, else ``none``."""
        network = self._network
        path_of = getattr(network, "path_of", None)
        live = path_of(uid) if path_of is not None else None
        if isinstance(live, PeerPath):
            return live
        if self._peer_states.get(uid) == "online":
            # a network that does not say how its session runs: a live session is direct
            return PeerPath("direct", "direct: live session")
        why = None
        if network is not None:
            try:
                why = network.status(uid).last_error
            except Exception:
                why = None
        reason = f"no address answers ({why})" if why else None
        return offline_path(self.can_deposit(uid), reason)

    def acceptable_uids(self) -> list[str]:
        """Every contact that may connect (not blocked): whose knock the listener tries."""
        return [uid for uid, contact in self._contacts.items() if not contact.blocked]

    # -- addresses found on the local network ---------------------------------------------------

    def watch_directory(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call *callback()* whenever who is acceptable or a contact's key changes (a contact
        added, removed, blocked or unblocked, a key learnt); returns the unsubscribe function.

        LAN discovery announces to, and recognises, exactly those contacts.
        """
        self._directory_watchers.append(callback)

        def unsubscribe() -> None:
            if callback in self._directory_watchers:
                self._directory_watchers.remove(callback)

        return unsubscribe

    def _directory_changed(self) -> None:
        for callback in list(self._directory_watchers):
            try:
                callback()
            except Exception:
                self.log.failure("contact directory watcher failed")

    def address_discovered(self, uid: str, address: str) -> None:
        """LAN discovery found contact *uid* at *address* (``host:port``): dial it first from now
        on, and at once unless a session is up.

        Kept in memory only, at most :data:`MAX_DISCOVERED` per contact (newest first); nothing
        for a stranger or a blocked contact.
        """
        if not self.is_acceptable(uid):
            return
        found = self._discovered.setdefault(uid, [])
        if address in found:
            found.remove(address)
        found.insert(0, address)
        del found[MAX_DISCOVERED:]
        self.log.info("contact {uid} found on the local network", uid=log_id(uid))
        if self._network is not None and (
            self.status_of(uid) != "online" or self.path(uid).kind == "relayed"
        ):
            self._network.redial(uid)  # relayed: the network upgrades if the dial succeeds

    def forget_discovered(self) -> None:
        """Drop every address LAN discovery found (it was turned off or stopped)."""
        self._discovered.clear()

    def discovered_addresses(self, uid: str) -> list[str]:
        """Where LAN discovery found contact *uid*, newest first."""
        return list(self._discovered.get(uid, ()))

    def _path_fields(self, uid: str, state: str) -> dict[str, Any]:
        return {"lan_addresses": self.discovered_addresses(uid), **self.path(uid).as_dict()}

    # -- presence ------------------------------------------------------------------------------

    def peer_status_changed(self, uid: str, status: Any) -> None:
        """The network reports *uid*'s new state: announce it, and the summary if it moved."""
        contact = self._contacts.get(uid)
        name = (contact.alias or contact.name) if contact else None
        state = str(getattr(status, "state", "offline"))
        previous = self._peer_states.get(uid)
        self._peer_states[uid] = state
        self._emit("peer.statusChanged", {"peer": peer_view(status, name)})
        if (previous == "online") != (state == "online"):
            self.publish_summary()
        if self.on_peer_state is not None and previous != state:
            self.on_peer_state(uid, state)

    def peers_status(self) -> dict[str, Any]:
        """The connection summary and every contact's health figures."""
        peers = []
        for uid, contact in self._contacts.items():
            if self._network is not None:
                try:
                    name = contact.alias or contact.name
                    view = peer_view(self._network.status(uid), name)
                    view.update(self._path_fields(uid, view["status"]))
                    peers.append(view)
                    continue
                except Exception:
                    pass
            peers.append(
                {
                    "uid": uid,
                    "status": "offline",
                    "name": contact.alias or contact.name,
                    **self._path_fields(uid, "offline"),
                }
            )
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

    def publish_summary(self) -> None:
        """Emit ``connection.summary`` when the summary changed since the last one."""
        current = self._compute_summary()
        if current != self._summary:
            self._summary = current
            summary, online, total = current
            self._emit("connection.summary", {"summary": summary, "online": online, "total": total})


def _candidates(matches: Sequence[Contact]) -> str:
    """Name the contacts an ambiguous reference matches: display name (repr, so a control
    character cannot reach a terminal) and uid prefix, a few of them."""
    ordered = sorted(matches, key=lambda c: c.uid)
    shown = [f"{c.alias or c.name!r} {c.uid[:12]}" for c in ordered[:_SHOWN_CANDIDATES]]
    if len(ordered) > _SHOWN_CANDIDATES:
        shown.append(f"{len(ordered) - _SHOWN_CANDIDATES} more")
    return ", ".join(shown)
