"""Public, interface-true fakes for tests of code that talks to Jarvis.

:class:`FakeNode` implements :class:`jarvis.core.interfaces.NodeApi` (the interface the real
:class:`~jarvis.core.node.Node` implements too; mypy checks both) in memory: an
identity with a password, contacts, conversations, unread counts, peers and events, with the
same error classes as the real Node.  Tests can pause a method (:meth:`FakeNode.pause`) to hold
calls in flight, then release or cancel them, and can inject incoming messages and state
changes.  Nothing here does I/O or cryptography, and nothing here may be used by the daemon.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer

from jarvis.common import errors
from jarvis.common.summary import summary_level
from jarvis.core.events import Events, Observer
from jarvis.core.interfaces import NodeApi
from jarvis.core.node import DEFAULT_SETTINGS
from jarvis.crypto import errors as crypto_errors
from jarvis.store.records import Contact


def fake_uid(seed: str) -> str:
    """Return a uid-shaped string (52 lowercase base32 characters) derived from *seed*."""
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")


def fake_link(name: str) -> str:
    """Return a link code that :meth:`FakeNode.add_contact` accepts, for a peer called *name*."""
    return f"jarvis://{fake_uid('peer:' + name)}/{name}"


class PausedCalls:
    """Calls of one FakeNode method held until :meth:`release`.

    ``waiting`` counts the calls held now, ``cancelled`` those cancelled while held; a
    cancelled call has no effect on the node's state.
    """

    def __init__(self) -> None:
        self._held: list[defer.Deferred[None]] = []
        self.cancelled = 0

    @property
    def waiting(self) -> int:
        """How many calls are held now."""
        return len(self._held)

    def hold(self) -> defer.Deferred[None]:
        """Return a Deferred that fires at :meth:`release` (used by FakeNode)."""

        def cancel(d: defer.Deferred[None]) -> None:
            self.cancelled += 1
            if d in self._held:
                self._held.remove(d)

        d: defer.Deferred[None] = defer.Deferred(cancel)
        self._held.append(d)
        return d

    def release(self) -> None:
        """Let every held call run."""
        held, self._held = self._held, []
        for d in held:
            d.callback(None)


class FakeNode:
    """An in-memory ``Node``.

    :param now: returns the wall-clock time for message timestamps (default: a counter).
    """

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        counter = itertools.count(1_700_000_000)
        self._now = now or (lambda: float(next(counter)))
        self.has_identity = False
        self.locked = True
        self._name: str | None = None
        self._uid: str | None = None
        self._password: str | None = None
        self._contacts: dict[str, dict[str, Any]] = {}
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._events = Events()
        self._paused: dict[str, PausedCalls] = {}
        self._settings: dict[str, bool] = dict(DEFAULT_SETTINGS)
        #: The file transfers' views (``send_file`` adds one).
        self.transfers: list[dict[str, Any]] = []
        #: Names of the methods called, in order (never their arguments).
        self.calls: list[str] = []

    # test controls -----------------------------------------------------------------------------

    def pause(self, method: str) -> PausedCalls:
        """Hold every later call of *method* (e.g. ``"send_message"``) until released."""
        paused = self._paused.setdefault(method, PausedCalls())
        return paused

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Send *event* with *payload* to every subscribed observer, in subscription order."""
        self._events.emit(event, payload)

    def receive(self, contact: str, text: str) -> dict[str, Any]:
        """Simulate an incoming message from *contact* (a ref) and emit ``message.received``."""
        c = self._resolve(contact)
        message = self._new_message(c["uid"], "in", text, "received")
        c["unread"] += 1
        self.emit("message.received", {"message": dict(message)})
        return dict(message)

    def set_message_state(self, message_id: str, state: str) -> None:
        """Change a message's state and emit ``message.stateChanged``."""
        for messages in self._messages.values():
            for m in messages:
                if m["id"] == message_id:
                    m["state"] = state
                    at = self._now()
                    if state in ("sent", "delivered", "read"):
                        m[state] = at
                    self.emit(
                        "message.stateChanged",
                        {"id": message_id, "contact": m["contact"], "state": state, "at": at},
                    )
                    return
        raise errors.NotFound(f"no message {message_id}")

    def _call(self, method: str, work: Callable[[], Any]) -> defer.Deferred[Any]:
        self.calls.append(method)
        paused = self._paused.get(method)
        if paused is None:
            return defer.maybeDeferred(work)
        return paused.hold().addCallback(lambda _: work())

    # identity ----------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Return ``{has_identity, locked, uid, name}`` (synchronously)."""
        unlocked = self.has_identity and not self.locked
        return {
            "has_identity": self.has_identity,
            "locked": self.locked,
            "uid": self._uid if unlocked else None,
            "name": self._name if unlocked else None,
        }

    def _fingerprint(self) -> str:
        assert self._uid is not None
        return " ".join(self._uid[i : i + 4] for i in range(0, 32, 4))

    def create_identity(
        self, name: str, password: str, *, progress: Callable[[Any], None]
    ) -> defer.Deferred[Any]:
        def work() -> dict[str, Any]:
            if self.has_identity:
                raise errors.IdentityExists("an identity already exists in this data directory")
            if not password:
                raise crypto_errors.WeakPassword("empty")
            progress({"stage": "deriving key"})
            progress({"stage": "writing key file"})
            self.has_identity, self.locked = True, False
            self._name, self._uid, self._password = name, fake_uid("me:" + name), password
            self.emit("identity.unlocked", {"uid": self._uid, "name": name})
            return {"uid": self._uid, "name": name, "fingerprint": self._fingerprint()}

        return self._call("create_identity", work)

    def unlock(self, password: str, *, progress: Callable[[Any], None]) -> defer.Deferred[Any]:
        def work() -> dict[str, Any]:
            if not self.has_identity:
                raise errors.NoIdentity("no identity exists yet: create one with jarvis init")
            progress({"stage": "deriving key"})
            if password != self._password:
                raise crypto_errors.WrongPassword()
            self.locked = False
            self.emit("identity.unlocked", {"uid": self._uid, "name": self._name})
            return {"uid": self._uid, "name": self._name}

        return self._call("unlock", work)

    def lock(self, *, wipe: bool = False) -> defer.Deferred[None]:
        def work() -> None:
            self.locked = True
            self.emit("identity.locked", {"wiped": wipe} if wipe else {})

        return self._call("lock", work)

    def change_password(
        self, old: str, new: str, *, progress: Callable[[Any], None]
    ) -> defer.Deferred[None]:
        def work() -> None:
            if old != self._password:
                raise crypto_errors.WrongPassword()
            if not new:
                raise crypto_errors.WeakPassword("empty")
            progress({"stage": "re-sealing key file"})
            self._password = new

        return self._call("change_password", work)

    def show_identity(self) -> defer.Deferred[Any]:
        def work() -> dict[str, Any]:
            assert self._name is not None
            return {
                "name": self._name,
                "uid": self._uid,
                "fingerprint": self._fingerprint(),
                "link": fake_link(self._name),
                "addresses": ["127.0.0.1:7770"],
            }

        return self._call("show_identity", work)

    # contacts ----------------------------------------------------------------------------------

    def _resolve(self, ref: str) -> dict[str, Any]:
        matches = [
            c
            for c in self._contacts.values()
            if ref in (c["name"], c["alias"]) or c["uid"].startswith(ref.lower())
        ]
        if not matches:
            raise errors.NotFound(f"no contact matches {ref!r}")
        if len(matches) > 1:
            raise errors.Ambiguous(f"{ref!r} matches {len(matches)} contacts")
        return matches[0]

    def resolve(self, ref: str) -> Contact:
        """Find a contact by alias, name or uid prefix, as the store's record."""
        c = self._resolve(ref)
        return Contact(
            uid=c["uid"],
            public_key=b"",
            name=c["name"],
            addresses=tuple(c["addresses"]),
            alias=c["alias"],
            verified=c["verified"],
            blocked=c["blocked"],
            muted=c["muted"],
            read_receipts=c["read_receipts"],
        )

    def add_contact(
        self,
        *,
        link: str | None = None,
        card: str | None = None,
        uid: str | None = None,
        addresses: Sequence[str] | None = None,
        name: str | None = None,
        verified: bool = False,
    ) -> defer.Deferred[Any]:
        def work() -> dict[str, Any]:
            if uid is not None:
                if link is not None or card is not None or not addresses:
                    raise errors.InvalidInput("give a uid with at least one HOST:PORT address")
                link_uid, their_name = uid, name or uid[:8]
            elif link is not None:
                if not link.startswith("jarvis://"):
                    raise crypto_errors.NotALink()
                link_uid, _, their_name = link[len("jarvis://") :].partition("/")
                if len(link_uid) != 52 or not their_name:
                    raise crypto_errors.DamagedLink()
            else:
                try:
                    parsed = json.loads(card or "")
                    link_uid, their_name = parsed["uid"], parsed["name"]
                except (ValueError, KeyError, TypeError):
                    raise crypto_errors.MalformedCardFile() from None
            contact: dict[str, Any] = {
                "uid": link_uid,
                "name": their_name,
                "alias": name if uid is None else None,
                "fingerprint": " ".join(link_uid[i : i + 4] for i in range(0, 32, 4)),
                "safety_code": link_uid[:12],
                "addresses": list(addresses or ()),
                "verified": verified,
                "blocked": False,
                "muted": False,
                "read_receipts": True,
                "status": "offline",
                "unread": 0,
                "last_activity": None,
            }
            self._contacts[link_uid] = contact
            self._messages.setdefault(link_uid, [])
            self.emit("contact.changed", {"contact": dict(contact)})
            return dict(contact)

        return self._call("add_contact", work)

    def list_contacts(self) -> defer.Deferred[Any]:
        return self._call("list_contacts", lambda: [dict(c) for c in self._contacts.values()])

    def show_contact(self, ref: str) -> defer.Deferred[Any]:
        return self._call("show_contact", lambda: dict(self._resolve(ref)))

    def update_contact(self, ref: str, **changes: Any) -> defer.Deferred[Any]:
        def work() -> dict[str, Any]:
            c = self._resolve(ref)
            for key, value in changes.items():
                if value is not None:
                    c["alias" if key == "name" else key] = value
            self.emit("contact.changed", {"contact": dict(c)})
            return dict(c)

        return self._call("update_contact", work)

    def remove_contact(self, ref: str, *, with_history: bool = False) -> defer.Deferred[None]:
        def work() -> None:
            c = self._resolve(ref)
            del self._contacts[c["uid"]]
            if with_history:
                self._messages.pop(c["uid"], None)
            self.emit("contact.changed", {"uid": c["uid"], "removed": True})

        return self._call("remove_contact", work)

    # messages ----------------------------------------------------------------------------------

    def _new_message(self, uid: str, direction: str, body: str, state: str) -> dict[str, Any]:
        message = {
            "id": f"m{next(self._ids)}",
            "contact": uid,
            "direction": direction,
            "body": body,
            "state": state,
            "created": self._now(),
            "sent": None,
            "delivered": None,
            "read": None,
            "seq": len(self._messages.get(uid, ())) + 1,
        }
        self._messages.setdefault(uid, []).append(message)
        self._contacts[uid]["last_activity"] = message["created"]
        return message

    def messages_of(self, ref: str) -> list[dict[str, Any]]:
        """Return a copy of the conversation with *ref*, oldest first (test inspection)."""
        return [dict(m) for m in self._messages.get(self._resolve(ref)["uid"], [])]

    def send_message(self, ref: str, text: str) -> defer.Deferred[Any]:
        def work() -> dict[str, Any]:
            c = self._resolve(ref)
            if len(text.encode("utf-8")) > 64 * 1024:
                raise errors.TooLarge("the message is longer than 64 KiB")
            return dict(self._new_message(c["uid"], "out", text, "queued"))

        return self._call("send_message", work)

    def history(
        self,
        ref: str,
        *,
        limit: int = 50,
        before: str | int | None = None,
        after: str | int | None = None,
    ) -> defer.Deferred[Any]:
        """Like ``Node.history``: newest first; cursors here are message ids."""

        def work() -> dict[str, Any]:
            c = self._resolve(ref)
            messages = self._messages.get(c["uid"], [])
            ids = [m["id"] for m in messages]

            def position(bound: str | int) -> int:
                if bound not in ids:
                    raise errors.NotFound(f"message {bound} is not in this conversation")
                return ids.index(bound)

            start, end = 0, len(messages)
            if before is not None:
                end = position(before)
            if after is not None:
                start = position(after) + 1
            if after is None:
                first, last = max(start, end - limit), end
            else:
                first, last = start, min(end, start + limit)
            page = [dict(m) for m in reversed(messages[first:last])]
            unread = [m for m in messages if m["direction"] == "in" and m["read"] is None]
            older = after is None and first > start
            newer = after is not None and last < end
            return {
                "messages": page,
                "next": messages[first]["id"] if older else None,
                "newer": messages[last - 1]["id"] if newer else None,
                "marker": unread[0]["id"] if unread and c["unread"] else None,
            }

        return self._call("history", work)

    def mark_read(self, ref: str, *, up_to: str | None = None) -> defer.Deferred[Any]:
        def work() -> dict[str, Any]:
            c = self._resolve(ref)
            count = 0
            for m in self._messages.get(c["uid"], []):
                if m["direction"] == "in" and m["read"] is None:
                    m["read"] = self._now()
                    count += 1
                if m["id"] == up_to:
                    break
            c["unread"] = max(0, c["unread"] - count)
            return {"count": count}

        return self._call("mark_read", work)

    def unread_counts(self) -> defer.Deferred[Any]:
        return self._call(
            "unread_counts", lambda: {uid: c["unread"] for uid, c in self._contacts.items()}
        )

    # settings, account, peers -------------------------------------------------------------------

    def get_settings(self) -> dict[str, bool]:
        """Return the settings (synchronously)."""
        self.calls.append("get_settings")
        return dict(self._settings)

    def update_settings(self, **changes: bool) -> defer.Deferred[Any]:
        def work() -> dict[str, bool]:
            unknown = set(changes) - set(self._settings)
            if unknown:
                raise errors.InvalidInput(f"unknown setting {sorted(unknown)[0]!r}")
            self._settings.update({k: bool(v) for k, v in changes.items()})
            self.emit("settings.changed", {"settings": dict(self._settings)})
            return dict(self._settings)

        return self._call("update_settings", work)

    def export_account(
        self, path: str, password: str, *, progress: Callable[[Any], None]
    ) -> defer.Deferred[Any]:
        """Pretend to write an export (nothing is written); answers like ``Node``."""

        def work() -> dict[str, Any]:
            if self.locked:
                raise errors.Locked("the identity is locked")
            progress({"stage": "sealing", "percent": 40})
            return {"path": path, "bytes": 0}

        return self._call("export_account", work)

    def import_account(
        self, path: str, export_password: str, password: str, *, progress: Callable[[Any], None]
    ) -> defer.Deferred[Any]:
        """Refuse, as ``Node`` does, when an identity exists; else become *path*'s identity."""

        def work() -> dict[str, Any]:
            if self.has_identity:
                raise errors.IdentityExists("import needs an empty data directory")
            progress({"stage": "opening export", "percent": 10})
            name = "imported"
            self.has_identity, self.locked = True, False
            self._name, self._uid, self._password = name, fake_uid("me:" + path), password
            return {"uid": self._uid, "name": name}

        return self._call("import_account", work)

    def delete_account(self, password: str) -> defer.Deferred[Any]:
        def work() -> dict[str, Any]:
            if not self.has_identity:
                raise errors.NoIdentity("there is no identity to delete")
            if password != self._password:
                raise crypto_errors.WrongPassword()
            self.has_identity, self.locked = False, True
            self._contacts.clear()
            self._messages.clear()
            self.emit("identity.locked", {"wiped": True, "deleted": True})
            return {"removed": 1}

        return self._call("delete_account", work)

    def redial(self, ref: str) -> dict[str, Any]:
        """Answer like ``Node.redial`` (synchronously; fake peers stay as they are)."""
        c = self._resolve(ref)
        return {"uid": c["uid"], "status": c["status"]}

    def mailbox_use(self, link: str) -> dict[str, Any]:
        """Answer like ``Node.mailbox_use`` (no connection: the link is only remembered)."""
        self._mailbox: str | None = link
        return self.mailbox_status()

    def mailbox_status(self) -> dict[str, Any]:
        """Answer like ``Node.mailbox_status``."""
        link = getattr(self, "_mailbox", None)
        return {
            "link": link,
            "connected": False,
            "queues": 0,
            "contacts_reachable": 0,
            "last_collect": None,
            "collected": 0,
            "deposited": 0,
            "acks_deposited": 0,
            "error": None,
            "contacts": [],
        }

    def mailbox_drop(self) -> dict[str, Any]:
        """Answer like ``Node.mailbox_drop``."""
        self._mailbox = None
        return self.mailbox_status()

    def send_file(
        self, ref: str, path: str, *, wait: bool = False, progress: Any = None
    ) -> dict[str, Any]:
        """Answer like ``Node.send_file`` (the fake sends nothing: the offer stays offered)."""
        uid = self.resolve(ref).uid
        view = {
            "id": "%032x" % (len(self.transfers) + 1),
            "contact": uid,
            "direction": "out",
            "name": os.path.basename(path),
            "size": 0,
            "state": "offered",
            "bytes": 0,
        }
        self.transfers.append(view)
        return view

    def send_folder(
        self, ref: str, path: str, *, wait: bool = False, progress: Any = None
    ) -> dict[str, Any]:
        """Answer like ``Node.send_folder``, listing the real folder (the fake sends nothing);
        a file whose name starts with ``unreadable`` is said to have failed."""
        from jarvis.files.send import folder_files

        views, failed = [], []
        left_out: list[str] = []
        for file_path, folder in folder_files(path, left_out=left_out):
            if os.path.basename(file_path).startswith("unreadable"):
                failed.append(
                    {"path": file_path, "error": "cannot read the file: Permission denied"}
                )
                continue
            views.append({**self.send_file(ref, file_path), "folder": folder})
            self.transfers[-1] = views[-1]
        return {
            "folder": os.path.basename(path),
            "transfers": views,
            "failed": failed,
            "left_out": len(left_out),
            "left_out_first": left_out[0] if left_out else None,
        }

    def offered_file(self, ref: str, name: str, created: float) -> dict[str, Any]:
        """Record a file that contact *ref* offers us at *created*, waiting for an answer."""
        view = {
            "id": "%032x" % (len(self.transfers) + 1),
            "contact": self.resolve(ref).uid,
            "direction": "in",
            "name": name,
            "size": 0,
            "state": "offered",
            "bytes": 0,
            "created": created,
        }
        self.transfers.append(view)
        return view

    def list_transfers(self) -> list[dict[str, Any]]:
        """Answer like ``Node.list_transfers``."""
        return list(self.transfers)

    def wait_transfers(self, refs: list[str], progress: Any = None) -> defer.Deferred[Any]:
        """Answer like ``Node.wait_transfers``; the fake's transfers never move, so it answers
        at once with their views as they are (unless paused: :meth:`pause`)."""
        return self._call("wait_transfers", lambda: [self._transfer(ref) for ref in refs])

    def _transfer(self, ref: str) -> dict[str, Any]:
        for view in self.transfers:
            if len(ref) >= 4 and view["id"].startswith(ref):
                return view
        raise errors.NotFound(f"no single transfer with id {ref!r}")

    def accept_transfer(self, ref: str, directory: str | None = None) -> dict[str, Any]:
        """Answer like ``Node.accept_transfer``."""
        view = self._transfer(ref)
        view["state"] = "accepted"
        return view

    def transfer_policy(
        self,
        *,
        max_size: int | None = None,
        downloads: str | None = None,
        contact: str | None = None,
        auto_accept: int | None = None,
    ) -> dict[str, Any]:
        """Answer like ``Node.transfer_policy`` (nothing is kept)."""
        return {"max_size": max_size or 4 * 1024**3, "downloads": downloads, "auto_accept": {}}

    def decline_transfer(self, ref: str) -> dict[str, Any]:
        """Answer like ``Node.decline_transfer``."""
        view = self._transfer(ref)
        view["state"] = "cancelled"
        return view

    def cancel_transfer(self, ref: str) -> dict[str, Any]:
        """Answer like ``Node.cancel_transfer``."""
        view = self._transfer(ref)
        view["state"] = "cancelled"
        return view

    def peers_status(self) -> dict[str, Any]:
        """Return the peers' connection figures (synchronously; every fake peer is offline)."""
        peers = [
            {
                "uid": c["uid"],
                "name": c["alias"] or c["name"],
                "status": c["status"],
                "connect_attempts": 0,
                "connect_successes": 0,
                "connect_failures": 0,
                "sessions_accepted": 0,
                "last_error": None,
                "last_error_at": None,
                "connected_since": None,
                "offline_since": None if c["status"] == "online" else self._now(),
                "bytes_in": 0,
                "bytes_out": 0,
                "messages_in": 0,
                "messages_out": 0,
            }
            for c in self._contacts.values()
        ]
        online = sum(1 for p in peers if p["status"] == "online")
        return {
            "summary": summary_level(online, len(peers)),
            "online": online,
            "total": len(peers),
            "peers": peers,
        }

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call *observer(event, payload)* for every event; returns the unsubscribe callable."""
        return self._events.subscribe(observer)

    @property
    def observer_count(self) -> int:
        """How many observers are subscribed (tests check that connections unsubscribe)."""
        return len(self._events)


def _declared(node: FakeNode) -> NodeApi:
    """Never called: mypy checks here that :class:`FakeNode` satisfies :class:`NodeApi`."""
    return node
