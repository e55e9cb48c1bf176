"""An in-memory stand-in for the daemon's IPC client, for the terminal UI's tests.

:class:`FakeDaemonClient` speaks the same interface as :class:`jarvis.ipc.client.IpcClient`
(``call``, ``subscribe``, ``add_disconnect_observer``, ``close``) over in-memory contacts and
messages.  It records every call, emits events on request, simulates a disconnect, and can hold
chosen methods' Deferreds so a test fires (or cancels) them by hand.  It must not touch the
network, the reactor or the file system.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from jarvis.ipc.jsonrpc import RemoteError, code_for_kind

UID_ALICE = "a" * 52
UID_BOB = "b" * 52
UID_CAROL = "c" * 52
NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
ME_UID = "m" * 52  # identity.show's uid


def remote_error(kind: str, message: str) -> RemoteError:
    """A ``RemoteError`` of *kind* as the real client raises it."""
    return RemoteError(code_for_kind(kind), message, {"kind": kind})


def make_contact(uid: str, name: str, **fields: Any) -> dict[str, Any]:
    """The API form of a contact with sensible defaults."""
    contact = {
        "uid": uid,
        "name": name,
        "alias": "",
        "fingerprint": "FP-" + uid[:8],
        "safety_code": "12345 67890 11121 31415",
        "addresses": ["127.0.0.1:7000"],
        "verified": False,
        "blocked": False,
        "muted": False,
        "read_receipts": True,
        "status": "offline",
        "unread": 0,
        "last_activity": None,
    }
    contact.update(fields)
    return contact


class FakeGroupsMixin:
    """The ``groups.*`` methods of the fake daemon (issue 17), over ``groups``,
    ``group_messages``, ``group_members`` and ``group_invites``."""

    groups: dict[str, dict[str, Any]]
    group_messages: dict[str, list[dict[str, Any]]]
    group_members: dict[str, list[dict[str, Any]]]
    group_invites: list[dict[str, Any]]
    contacts: dict[str, dict[str, Any]]

    def _group(self, params: dict[str, Any]) -> dict[str, Any]:
        wanted = str(params.get("group", ""))
        for view in self.groups.values():  # type: ignore[attr-defined]
            if wanted in (view["id"], view["name"]):
                return view
        raise remote_error("not_found", f"no group {wanted}")

    def m_groups_list(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"groups": [dict(v) for v in self.groups.values()]}

    def m_groups_invites(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"invites": list(self.group_invites)}

    def m_groups_create(self, params: dict[str, Any]) -> dict[str, Any]:
        ident = f"{len(self.groups) + 1:032x}"
        view = self.add_group(ident, params["name"], topic=params.get("topic") or "")  # type: ignore[attr-defined]
        self.emit("group.changed", {"group": dict(view)})  # type: ignore[attr-defined]
        return dict(view)

    def m_groups_send(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._group(params)
        message = self.add_group_message(view["id"], ME_UID, params["text"])  # type: ignore[attr-defined]
        self.emit("group.message", {"message": dict(message)})  # type: ignore[attr-defined]
        return dict(message)

    def m_groups_history(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._group(params)
        limit = params.get("limit") or 50
        return {"group": view["id"], "messages": self.group_messages[view["id"]][-limit:]}

    def m_groups_markRead(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._group(params)
        view["unread"] = 0
        return {"group": view["id"], "unread": 0}

    def m_groups_members(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._group(params)
        return {"group": view["id"], "members": list(self.group_members[view["id"]])}

    def m_groups_invite(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._group(params)
        wanted = params["contact"]
        found = [c for c in self.contacts.values() if wanted in (c["uid"], c["name"])]
        if len(found) != 1:
            raise remote_error("not_found", f"no contact {wanted}")
        contact = found[0]
        self.group_members[view["id"]].append(
            {
                "uid": contact["uid"],
                "name": contact["name"],
                "role": "member",
                "contact": True,
                "me": False,
                "online": contact.get("status") == "online",
            }
        )
        view["members"] = len(self.group_members[view["id"]])
        view["version"] += 1
        return {"group": view["id"], "invited": contact["uid"], "version": view["version"]}

    def m_groups_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._group(params)
        wanted = params["member"]
        members = self.group_members[view["id"]]
        gone = [m for m in members if wanted in (m["uid"], m["name"]) and not m["me"]]
        if len(gone) != 1:
            raise remote_error("not_found", f"no member {wanted}")
        members.remove(gone[0])
        view["members"] = len(members)
        view["version"] += 1
        return {"group": view["id"], "removed": gone[0]["uid"], "version": view["version"]}

    def m_groups_setMuted(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._group(params)
        view["muted"] = bool(params["muted"])
        return dict(view)

    def m_groups_leave(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._group(params)
        if view["role"] == "founder":
            raise remote_error("invalid_input", "the founder cannot leave")
        view["left"] = True
        return {"group": view["id"], "left": True, "version": view["version"]}

    def _invite(self, params: dict[str, Any]) -> dict[str, Any]:
        for invite in self.group_invites:
            if invite["id"] == params["invite"]:
                self.group_invites.remove(invite)
                return invite
        raise remote_error("not_found", f"no invitation {params['invite']!r}")

    def m_groups_join(self, params: dict[str, Any]) -> dict[str, Any]:
        invite = self._invite(params)
        view = self.add_group(invite["group"], invite["name"], role="member")  # type: ignore[attr-defined]
        return dict(view)

    def m_groups_decline(self, params: dict[str, Any]) -> dict[str, Any]:
        self._invite(params)
        return {"declined": params["invite"]}


class FakeDaemonClient(FakeGroupsMixin):
    """A fake IPC client over in-memory state.

    :param has_identity: whether an identity exists.
    :param locked: whether it starts locked.
    :param password: the password ``identity.unlock`` accepts.
    """

    def __init__(
        self,
        *,
        has_identity: bool = True,
        locked: bool = False,
        name: str = "me",
        password: str = "correct horse",
    ) -> None:
        self.has_identity = has_identity
        self.locked = locked
        self.name = name
        self.password = password
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.focus: str | None = None
        self.settings: dict[str, bool] = {"notifications": True, "previews": False, "bell": True}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.markers: dict[str, str | None] = {}
        self.handlers: list[Callable[[str, dict[str, Any]], None]] = []
        self.disconnect_observers: list[Callable[[Any], None]] = []
        self.slow: set[str] = set()
        self.pending: list[tuple[str, dict[str, Any], defer.Deferred[Any]]] = []
        self.cancelled: list[str] = []
        self.failures: dict[str, Exception] = {}
        self.closed = False
        self.summary = {"summary": "amber", "online": 1, "total": 2}
        #: ``peers.status`` entries by uid (a default one for the others)
        self.health: dict[str, dict[str, Any]] = {}
        #: ``mailbox.status`` paths by uid (default: ``direct`` when online, else ``none``)
        self.paths: dict[str, str] = {}
        #: the mailbox in use (``mailbox.use`` / ``mailbox.drop``): its link, or ``None``
        self.mailbox_link: str | None = None
        self._next_id = 1
        #: ``exec.run``: what each new run prints at once ((stream, text) pairs) and whether it
        #: then keeps running (until :meth:`exec_finish`, ``exec.kill`` or a cancel)
        self.exec_output: list[tuple[str, str]] = []
        self.exec_holds = False
        #: the runs not ended: id -> {"argv", "params", "progress", "call"}
        self.exec_runs: dict[int, dict[str, Any]] = {}
        self._next_run = 7
        #: groups (issue 17): views by id, their messages, members, and invitations received
        self.groups: dict[str, dict[str, Any]] = {}
        self.group_messages: dict[str, list[dict[str, Any]]] = {}
        self.group_members: dict[str, list[dict[str, Any]]] = {}
        self.group_invites: list[dict[str, Any]] = []
        #: ``files.list``: transfer views, newest first
        self.transfers: list[dict[str, Any]] = []

    # setting up ---------------------------------------------------------------------------

    def add_contact(self, uid: str, name: str, **fields: Any) -> dict[str, Any]:
        """Add a contact to the fake daemon's book."""
        contact = make_contact(uid, name, **fields)
        self.contacts[uid] = contact
        self.messages.setdefault(uid, [])
        return contact

    def add_message(
        self,
        uid: str,
        body: str,
        *,
        direction: str = "in",
        state: str | None = None,
        created: float = NOW,
        unread: bool = False,
    ) -> dict[str, Any]:
        """Store a message (an incoming unread one counts toward the unread count)."""
        message = {
            "id": f"m{self._next_id}",
            "contact": uid,
            "direction": direction,
            "body": body,
            "state": state or ("received" if direction == "in" else "delivered"),
            "created": created,
            "sent": created if direction == "out" else None,
            "delivered": None,
            "read": None,
            "seq": self._next_id,
        }
        self._next_id += 1
        self.messages.setdefault(uid, []).append(message)
        if unread:
            self.contacts[uid]["unread"] = self.contacts[uid].get("unread", 0) + 1
            if self.markers.get(uid) is None:
                self.markers[uid] = str(message["id"])
        self.contacts[uid]["last_activity"] = created
        return message

    def add_group(self, ident: str, name: str, **fields: Any) -> dict[str, Any]:
        """Add a group I am a member of (``groups.list``'s view, with me as its founder)."""
        view = {
            "id": ident,
            "name": name,
            "topic": "",
            "version": 1,
            "members": 1,
            "role": "founder",
            "unread": 0,
            "messages": 0,
            "left": False,
        }
        view.update(fields)
        self.groups[ident] = view
        self.group_messages.setdefault(ident, [])
        self.group_members[ident] = [
            {
                "uid": ME_UID,
                "name": self.name,
                "role": "founder",
                "contact": False,
                "me": True,
                "online": True,
            }
        ]
        return view

    def add_group_message(
        self, ident: str, author: str, body: str, *, author_name: str = "", unread: bool = False
    ) -> dict[str, Any]:
        """Store a group message by *author* (a uid; :data:`ME_UID` is me)."""
        messages = self.group_messages.setdefault(ident, [])
        message = {
            "id": f"g{self._next_id}",
            "group": ident,
            "author": author,
            "author_name": author_name or (self.name if author == ME_UID else author[:12]),
            "body": body,
            "seq": len(messages) + 1,
            "created": NOW + self._next_id,
            "index": len(messages),
            # my own: stored by none yet of the other members; others' carry no count
            "delivered": 0 if author == ME_UID else None,
            "members": len(self.group_members.get(ident, [])) - 1 if author == ME_UID else None,
        }
        self._next_id += 1
        messages.append(message)
        self.groups[ident]["messages"] = len(messages)
        if unread:
            self.groups[ident]["unread"] += 1
        return message

    def add_group_member(self, ident: str, uid: str, name: str) -> None:
        """Make contact *uid* a member of group *ident* (as an accepted invitation would)."""
        self.group_members[ident].append(
            {
                "uid": uid,
                "name": name,
                "role": "member",
                "contact": True,
                "me": False,
                "online": True,
            }
        )
        self.groups[ident]["members"] = len(self.group_members[ident])

    def deliver_group_message(self, ident: str, message_id: str) -> dict[str, Any]:
        """One more member stored my group message: count it and emit ``group.delivery``."""
        for message in self.group_messages[ident]:
            if message["id"] == message_id:
                message["delivered"] += 1
                payload = {
                    "group": ident,
                    "id": message_id,
                    "delivered": message["delivered"],
                    "members": message["members"],
                }
                self.emit("group.delivery", payload)
                return payload
        raise KeyError(message_id)

    # the interface ------------------------------------------------------------------------

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        progress: Callable[[Any], None] | None = None,
    ) -> defer.Deferred[Any]:
        """Record the call and answer it from memory (or hold it when *method* is slow)."""
        params = dict(params or {})
        self.calls.append((method, params))
        if self.closed:
            return defer.fail(ConnectionError("closed"))
        if method == "exec.run" and method not in self.failures:
            return self._exec_run(params, progress)
        if method in self.slow:

            def cancel(_: defer.Deferred[Any]) -> None:
                self.cancelled.append(method)

            d: defer.Deferred[Any] = defer.Deferred(cancel)
            self.pending.append((method, params, d))
            return d
        return self._answer(method, params)

    def _answer(self, method: str, params: dict[str, Any]) -> defer.Deferred[Any]:
        if method in self.failures:
            return defer.fail(self.failures[method])
        handler = getattr(self, "m_" + method.replace(".", "_"), None)
        if handler is None:
            return defer.fail(remote_error("method_not_found", f"no method {method}"))
        try:
            return defer.succeed(handler(params))
        except RemoteError as e:
            return defer.fail(e)

    def fire_pending(self, method: str | None = None) -> None:
        """Answer the held calls (all, or those of *method*) as if the daemon replied."""
        keep = []
        for m, params, d in self.pending:
            if method is None or m == method:
                if not d.called:
                    self._answer(m, params).chainDeferred(d)
            else:
                keep.append((m, params, d))
        self.pending = keep

    def subscribe(self, handler: Callable[[str, dict[str, Any]], None]) -> defer.Deferred[Any]:
        """Deliver every later :meth:`emit` to *handler*."""
        self.calls.append(("events.subscribe", {}))
        self.handlers.append(handler)
        return defer.succeed({"subscribed": True})

    def add_disconnect_observer(self, observer: Callable[[Any], None]) -> None:
        """Call *observer* on :meth:`disconnect`."""
        self.disconnect_observers.append(observer)

    def close(self) -> defer.Deferred[None]:
        """Close the fake connection (observers are not called: we closed it)."""
        self.closed = True
        return defer.succeed(None)

    # simulation ---------------------------------------------------------------------------

    def emit(self, name: str, payload: dict[str, Any]) -> None:
        """Send event *name* to every subscriber."""
        for handler in list(self.handlers):
            handler(name, payload)

    def disconnect(self) -> None:
        """Drop the connection: pending calls fail, disconnect observers are called."""
        self.closed = True
        pending, self.pending = self.pending, []
        for _method, _params, d in pending:
            if not d.called:
                d.errback(Failure(ConnectionError("connection lost")))
        for observer in list(self.disconnect_observers):
            observer(Failure(ConnectionError("connection lost")))

    def _exec_run(
        self, params: dict[str, Any], progress: Callable[[Any], None] | None
    ) -> defer.Deferred[Any]:
        """``exec.run`` as the daemon streams it: ``running``, the scripted output, then the
        answer (at once, or held while :attr:`exec_holds`).  Cancelling the call ends the run
        as ``$/cancelRequest`` does (the real client fails the call with ``CancelledError``)."""
        try:
            self._unlocked()
        except RemoteError as e:
            return defer.fail(e)
        run_id = self._next_run
        self._next_run += 1

        def cancel(_: defer.Deferred[Any]) -> None:
            self.cancelled.append("exec.run")
            self.exec_runs.pop(run_id, None)

        call: defer.Deferred[Any] = defer.Deferred(cancel)
        self.exec_runs[run_id] = {
            "argv": list(params.get("argv") or []),
            "params": params,
            "progress": progress or (lambda value: None),
            "call": call,
            "bytes": 0,
        }
        self._progress(run_id, {"stage": "running", "id": run_id, "pid": 4000 + run_id})
        for stream, text in self.exec_output:
            self.exec_write(run_id, text, stream)
        if not self.exec_holds:
            self.exec_finish(run_id)
        return call

    def _progress(self, run_id: int, value: dict[str, Any]) -> None:
        run = self.exec_runs.get(run_id)
        if run is not None:
            run["progress"](value)

    def exec_write(self, run_id: int, text: str, stream: str = "stdout") -> None:
        """Run *run_id* prints *text* on *stream* (a ``$/progress`` output value)."""
        run = self.exec_runs.get(run_id)
        if run is not None:
            run["bytes"] += len(text.encode("utf-8"))
        self._progress(run_id, {"stage": "output", "id": run_id, "stream": stream, "text": text})

    def exec_finish(
        self, run_id: int, exit_code: int | None = 0, signal: str | None = None, **flags: Any
    ) -> None:
        """Run *run_id* ends: its call answers as exec.run does."""
        run = self.exec_runs.pop(run_id, None)
        if run is None:
            return
        size = run["bytes"]
        result = {
            "id": run_id,
            "pid": 4000 + run_id,
            "exit_code": exit_code,
            "signal": signal,
            "timed_out": False,
            "killed": False,
            "cancelled": False,
            "duration": 0.25,
            "queued_for": 0.0,
            "bytes": {"stdout": size, "stderr": 0, "kept": size, "dropped": 0},
        }
        result.update(flags)
        run["call"].callback(result)

    def m_exec_list(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        runs = [
            {"id": i, "argv": r["argv"], "owner": "api", "state": "running", "age": 3.0}
            for i, r in self.exec_runs.items()
        ]
        return {"runs": runs, "finished": [], "limit": 16, "running": len(runs), "queued": 0}

    def m_exec_kill(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        run_id = params.get("id")
        if run_id not in self.exec_runs:
            raise remote_error("not_found", f"no run {run_id}")
        self.exec_finish(run_id, None, "SIGTERM", killed=True)
        return {"id": run_id, "state": "stopping"}

    def methods_called(self) -> list[str]:
        """The names of the methods called so far, in order."""
        return [method for method, _ in self.calls]

    # methods ------------------------------------------------------------------------------

    def _unlocked(self) -> None:
        if not self.has_identity:
            raise remote_error("no_identity", "no identity")
        if self.locked:
            raise remote_error("locked", "the identity is locked")

    def m_daemon_status(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "running": True,
            "pid": 1,
            "version": "test",
            "locked": self.locked,
            "has_identity": self.has_identity,
        }

    def m_identity_create(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.has_identity:
            raise remote_error("identity_exists", "an identity already exists")
        self.has_identity, self.locked, self.name = True, False, params["name"]
        return {"uid": "m" * 52, "name": self.name, "fingerprint": "FP-me"}

    def m_identity_unlock(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("password") != self.password:
            raise remote_error("wrong_password", "wrong password")
        self.locked = False
        return {"uid": "m" * 52, "name": self.name}

    def m_identity_lock(self, params: dict[str, Any]) -> dict[str, Any]:
        self.locked = True
        return {}

    def m_identity_show(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        return {
            "name": self.name,
            "uid": ME_UID,
            "fingerprint": "FP-me",
            "link": "jarvis://me-link",
            "card": '{"card": "me"}\n',
            "addresses": ["127.0.0.1:7001"],
        }

    def m_contacts_list(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        return {"contacts": [dict(c) for c in self.contacts.values()]}

    def m_contacts_add(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        link = params.get("link") or params.get("card") or ""
        if "bad" in link:
            raise remote_error("invalid_link", "the link code is not valid")
        uid = "d" * 52
        contact = self.add_contact(
            uid, params.get("name") or "dave", verified=bool(params.get("verified"))
        )
        return dict(contact)

    def _contact(self, params: dict[str, Any]) -> dict[str, Any]:
        contact = self.contacts.get(params.get("contact", ""))
        if contact is None:
            raise remote_error("not_found", "no such contact")
        return contact

    def m_contacts_show(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        return dict(self._contact(params))

    def m_contacts_update(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        contact = self._contact(params)
        for key in ("name", "verified", "blocked", "muted", "read_receipts"):
            if key in params:
                contact[key] = params[key]
        return dict(contact)

    def m_contacts_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        contact = self._contact(params)
        del self.contacts[contact["uid"]]
        return {"removed": True}

    def m_messages_send(self, params: dict[str, Any]) -> dict[str, Any]:
        """Store the message and, as the daemon does, tell every subscriber before answering."""
        self._unlocked()
        contact = self._contact(params)
        message = self.add_message(
            contact["uid"], params["text"], direction="out", state="queued", created=NOW + 60
        )
        self.emit("message.added", {"message": dict(message)})
        return dict(message)

    def m_messages_history(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        contact = self._contact(params)
        messages = list(reversed(self.messages.get(contact["uid"], [])))
        limit = params.get("limit", 50)
        start = int(params.get("before") or 0)
        end = start + limit
        return {
            "messages": messages[start:end],
            "next": str(end) if end < len(messages) else None,
            "marker": self.markers.get(contact["uid"]),
        }

    def m_messages_markRead(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        contact = self._contact(params)
        count = contact.get("unread", 0)
        contact["unread"] = 0
        self.markers[contact["uid"]] = None
        return {"count": count}

    def m_messages_unreadCounts(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        counts = {uid: c.get("unread", 0) for uid, c in self.contacts.items() if c.get("unread")}
        return {"unread": counts}

    def m_ui_focus(self, params: dict[str, Any]) -> dict[str, Any]:
        group = params.get("group")
        self.focus = "group:" + group if group else params.get("contact")
        return {"focus": self.focus}

    def m_files_list(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"transfers": list(self.transfers)}

    def m_settings_get(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(self.settings)

    def m_settings_set(self, params: dict[str, Any]) -> dict[str, Any]:
        self.settings.update(params)
        return dict(self.settings)

    def m_peers_status(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        peers = [
            self.health.get(uid)
            or {
                "uid": uid,
                "status": c["status"],
                "connect_attempts": 3,
                "path": "direct" if c["status"] == "online" else None,
            }
            for uid, c in self.contacts.items()
        ]
        return {**self.summary, "peers": peers}

    def path_of(self, uid: str) -> str:
        """The path ``mailbox.status`` reports for *uid*."""
        default = "direct" if self.contacts[uid]["status"] == "online" else "none"
        return self.paths.get(uid, default)

    def m_mailbox_status(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        link = self.mailbox_link
        return {
            "link": link,
            "connected": link is not None,
            "queues": len(self.contacts) if link else 0,
            "contacts_reachable": sum(p == "mailbox" for p in self.paths.values()),
            "last_collect": NOW - 60 if link else None,
            "collected": 0,
            "deposited": 0,
            "acks_deposited": 0,
            "error": None,
            "contacts": [{"uid": uid, "path": self.path_of(uid)} for uid in sorted(self.contacts)],
        }

    def m_mailbox_use(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the link as the daemon does (its words on refusal), then use it."""
        from jarvis.protocol.mailbox_link import BadMailboxLink, parse_link

        self._unlocked()
        try:
            self.mailbox_link = str(parse_link(str(params.get("link", ""))))
        except BadMailboxLink as e:
            raise remote_error("invalid", str(e)) from None
        return self.m_mailbox_status({})

    def m_mailbox_drop(self, params: dict[str, Any]) -> dict[str, Any]:
        self._unlocked()
        self.mailbox_link = None
        return self.m_mailbox_status({})


class FakeConnector:
    """A ``connect()`` callable handing out :class:`FakeDaemonClient` s, or failing while down.

    :param client: the client the next successful connect returns.
    """

    def __init__(self, client: FakeDaemonClient | None) -> None:
        self.client = client
        self.attempts = 0

    def __call__(self) -> defer.Deferred[Any]:
        self.attempts += 1
        if self.client is None:
            return defer.fail(ConnectionRefusedError("nobody listens"))
        return defer.succeed(self.client)


def make_populated_client(**kwargs: Any) -> FakeDaemonClient:
    """A fake daemon with alice (online, history with an unread message), bob and carol."""
    client = FakeDaemonClient(**kwargs)
    client.add_contact(UID_ALICE, "alice", status="online", verified=True)
    client.add_contact(UID_BOB, "bob", status="connecting")
    client.add_contact(UID_CAROL, "carol")
    client.add_message(UID_ALICE, "are you there?", created=NOW - 86400)
    client.add_message(UID_ALICE, "yes, here", direction="out", state="read", created=NOW - 3000)
    client.add_message(UID_ALICE, "queued one", direction="out", state="queued", created=NOW - 2000)
    client.add_message(UID_ALICE, "sent one", direction="out", state="sent", created=NOW - 1000)
    client.add_message(UID_ALICE, "news!", created=NOW - 10, unread=True)
    client.add_message(UID_BOB, "hi from bob", created=NOW - 500, unread=True)
    return client


def make_controller(
    client: FakeDaemonClient | None = None, *, start: bool = True
) -> tuple[Any, FakeDaemonClient | None, Any, FakeConnector]:
    """A started controller on a fake daemon and a ``Clock``, with UTC times and no animation.

    :returns: ``(controller, client, clock, connector)``.
    """
    import datetime

    from twisted.internet.task import Clock

    from jarvis.ui.controller import Controller

    clock = Clock()
    connector = FakeConnector(client)
    files: dict[str, str] = {}

    def write_file(path: str, text: str) -> defer.Deferred[None]:
        files[path] = text
        return defer.succeed(None)

    def read_file(path: str) -> defer.Deferred[str]:
        if path in files:
            return defer.succeed(files[path])
        return defer.fail(FileNotFoundError(2, "No such file or directory"))

    controller = Controller(
        connector,
        clock,
        tz=datetime.UTC,
        animate=False,
        write_file=write_file,
        read_file=read_file,
        clipboard=lambda text: files.__setitem__("<clipboard>", text),
        on_quit=lambda: files.__setitem__("<quit>", "yes"),
    )
    controller.files = files  # type: ignore[attr-defined]
    # a folder is told apart at once (the real one asks a thread)
    controller.is_folder = lambda path: defer.succeed(os.path.isdir(path))
    if start:
        controller.start()
    return controller, client, clock, connector


def screen_text(widget: Any, size: tuple[int, int] = (80, 20)) -> str:
    """The text a box widget renders at *size*, lines joined, trailing spaces removed."""
    canvas = widget.render(size, focus=True)
    return "\n".join(line.decode("utf-8").rstrip() for line in canvas.text)


def press(controller: Any, *keys: str, size: tuple[int, int] = (80, 20)) -> None:
    """Send *keys* to the controller's window.

    A key name (``"enter"``, ``"meta 1"``, ``"ctrl l"``, ``"f2"``, ``"page up"``) is sent as
    one key; any other string is typed character by character.
    """
    names = {"enter", "esc", "tab", "up", "down", "left", "right", "home", "end", "backspace"}
    prefixes = ("meta ", "ctrl ", "shift ", "page ")
    for key in keys:
        is_function_key = key[0] == "f" and key[1:].isdigit()
        if len(key) == 1 or key in names or key.startswith(prefixes) or is_function_key:
            controller.window.keypress(size, key)
        else:
            for char in key:
                controller.window.keypress(size, char)
