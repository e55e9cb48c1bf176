"""The local API's methods: each one a thin, validated call into the ``Node``.

:func:`build_registry` declares every method once (params, result, deadline, lock rule,
concurrency group, documentation) for the server and for ``docs/ipc.md``.  Handlers translate
params into ``Node`` calls and nothing else: application rules live in :mod:`jarvis.core`.

Passwords travel in params and go straight to the Node; nothing here logs params or results.
This module must not import the reactor: time and the daemon's controls come in
:class:`MethodContext`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from jarvis.core.events import EVENT_DOCS
from jarvis.core.groups import GROUP_FOCUS_PREFIX
from jarvis.core.interfaces import NodeApi
from jarvis.core.limits import MAX_HISTORY_PAGE, MAX_TEXT_BYTES
from jarvis.crypto.identity import check_name
from jarvis.ipc import jsonrpc
from jarvis.ipc.exec_methods import exec_specs
from jarvis.ipc.group_api import group_specs, node_groups
from jarvis.ipc.registry import ConcurrencyGroup, Invocation, MethodSpec, Param, Registry

#: The longest message text, in UTF-8 bytes (the node's rule, named here for the docs).
MAX_MESSAGE_BYTES = MAX_TEXT_BYTES

#: How long ``daemon.stop`` waits before stopping, so that its answer reaches the caller.
STOP_DELAY = 0.05


@dataclass(frozen=True)
class DaemonInfo:
    """Facts about the running daemon that ``daemon.status`` reports.

    :param pid: the daemon's process id.
    :param version: the Jarvis version.
    :param data_dir: the data directory.
    :param ipc: the client endpoint description of the local API.
    """

    pid: int
    version: str
    data_dir: str
    ipc: str


@dataclass(frozen=True)
class MethodContext:
    """Everything the methods may use.

    :param node: the node's API (a ``Node``, or a :class:`jarvis.testing.FakeNode`).
    :param clock: the reactor's time interface.
    :param info: static facts for ``daemon.status``.
    :param stop_daemon: stops the daemon gracefully (``daemon.stop`` calls it after answering).
    :param lag_probe: an object with ``snapshot() -> dict`` (a ``ReactorLagProbe``), or ``None``.
    :param pool_stats: named callables returning pool figures (e.g. the store's ``pool_stats``).
    :param clients: returns ``{clients, subscribers, output_buffered, lagged}``: attached API
        connections, those subscribed to events, the bytes written for them and not yet
        flushed, and how many were disconnected with ``$/lagged``.
    """

    node: NodeApi
    clock: Any
    info: DaemonInfo
    stop_daemon: Callable[[], Any]
    lag_probe: Any = None
    pool_stats: Mapping[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    clients: Callable[[], dict[str, int]] | None = None
    #: the :class:`~jarvis.exec.runner.ProcessRunner` for ``exec.*`` (``None``: no programs)
    runner: Any = None
    #: the :class:`~jarvis.exec.hooks.HookDispatcher` for ``hooks.*``
    hooks: Any = None
    #: returns LAN discovery's figures for ``daemon.status`` (``None``: no LAN discovery)
    lan: Callable[[], dict[str, Any]] | None = None


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _name(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if len(value) > 64:
        return "must be at most 64 characters"
    return None


def _display_name(value: str) -> str | None:
    # the identity's own rule (it is signed into link codes): refuse here as invalid params,
    # with the reason, rather than let the key file code fail as an internal error
    try:
        check_name(value)
    except ValueError as e:
        return str(e)
    return None


def _password(value: str) -> str | None:
    return None if len(value) <= 4096 else "must be at most 4096 characters"


def _path(value: str) -> str | None:
    if not value or "\x00" in value:
        return "must be a file path"
    if not os.path.isabs(value):
        return "must be an absolute path (the daemon's working directory is not yours)"
    return None


def _history_limit(value: int) -> str | None:
    if 1 <= value <= MAX_HISTORY_PAGE:
        return None
    return f"must be between 1 and {MAX_HISTORY_PAGE}"


def _addresses(value: list[Any]) -> str | None:
    if all(isinstance(a, str) and a for a in value):
        return None
    return "must be an array of non-empty HOST:PORT strings"


CONTACT = Param("contact", str, True, "the contact: name, alias or a unique uid prefix", _non_empty)


# daemon.* --------------------------------------------------------------------------------------


def daemon_status(inv: Invocation) -> dict[str, Any]:
    ctx: MethodContext = inv.ctx
    info = ctx.node.info()
    return {
        "running": True,
        "pid": ctx.info.pid,
        "version": ctx.info.version,
        "ipc": ctx.info.ipc,
        "data_dir": ctx.info.data_dir,
        "has_identity": bool(info.get("has_identity")),
        "locked": bool(info.get("locked")),
        "uid": info.get("uid"),
        "name": info.get("name"),
        "lag": ctx.lag_probe.snapshot() if ctx.lag_probe is not None else None,
        "pools": {name: stats() for name, stats in ctx.pool_stats.items()},
        "in_flight": inv.registry.in_flight(ctx.clock.seconds()),
        **(ctx.clients() if ctx.clients is not None else {}),
        "lan": ctx.lan() if ctx.lan is not None else None,
    }


def daemon_stop(inv: Invocation) -> dict[str, Any]:
    ctx: MethodContext = inv.ctx
    ctx.clock.callLater(STOP_DELAY, ctx.stop_daemon)
    return {"stopping": True, "pid": ctx.info.pid}


# identity.* ------------------------------------------------------------------------------------


def identity_create(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    return defer.maybeDeferred(
        inv.ctx.node.create_identity, p["name"], p["password"], progress=inv.progress
    )


def identity_unlock(inv: Invocation) -> defer.Deferred[Any]:
    return defer.maybeDeferred(inv.ctx.node.unlock, inv.params["password"], progress=inv.progress)


def identity_lock(inv: Invocation) -> defer.Deferred[Any]:
    wipe = bool(inv.params.get("wipe", False))
    d = defer.maybeDeferred(inv.ctx.node.lock, wipe=wipe)
    return d.addCallback(lambda _: {"locked": True, "wiped": wipe})


def identity_show(inv: Invocation) -> defer.Deferred[Any]:
    return defer.maybeDeferred(inv.ctx.node.show_identity)


def identity_change_password(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    d = defer.maybeDeferred(
        inv.ctx.node.change_password, p["old_password"], p["new_password"], progress=inv.progress
    )
    return d.addCallback(lambda _: {"changed": True})


# contacts.* ------------------------------------------------------------------------------------


def contacts_add(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    if sum(k in p for k in ("link", "card", "uid")) != 1:
        raise jsonrpc.invalid_params("link", "give exactly one of link, card or uid")
    if "uid" in p and not p.get("addresses"):
        raise jsonrpc.invalid_params("addresses", "a manual contact needs HOST:PORT addresses")
    return defer.maybeDeferred(
        inv.ctx.node.add_contact,
        link=p.get("link"),
        card=p.get("card"),
        uid=p.get("uid"),
        addresses=p.get("addresses"),
        name=p.get("name"),
        verified=p.get("verified", False),
    )


def contacts_list(inv: Invocation) -> defer.Deferred[Any]:
    d = defer.maybeDeferred(inv.ctx.node.list_contacts)
    return d.addCallback(lambda contacts: {"contacts": list(contacts)})


def contacts_show(inv: Invocation) -> defer.Deferred[Any]:
    return defer.maybeDeferred(inv.ctx.node.show_contact, inv.params["contact"])


_UPDATABLE = ("name", "addresses", "verified", "blocked", "muted", "read_receipts")


def contacts_update(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    changes = {k: p[k] for k in _UPDATABLE if k in p}
    if not changes:
        raise jsonrpc.invalid_params("name", f"give at least one of {', '.join(_UPDATABLE)}")
    return defer.maybeDeferred(inv.ctx.node.update_contact, p["contact"], **changes)


def contacts_remove(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    d = defer.maybeDeferred(
        inv.ctx.node.remove_contact, p["contact"], with_history=p.get("with_history", False)
    )
    return d.addCallback(lambda _: {"removed": True})


# messages.* ------------------------------------------------------------------------------------


def messages_send(inv: Invocation) -> defer.Deferred[Any]:
    # The node refuses a text over MAX_MESSAGE_BYTES (TooLarge -> too_large): one rule.
    p = inv.params
    return defer.maybeDeferred(inv.ctx.node.send_message, p["contact"], p["text"])


def messages_history(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    bounds = {k: p[k] for k in ("before", "after") if p.get(k) is not None}
    return defer.maybeDeferred(
        inv.ctx.node.history, p["contact"], limit=p.get("limit", 50), **bounds
    )


def messages_mark_read(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    return defer.maybeDeferred(inv.ctx.node.mark_read, p["contact"], up_to=p.get("up_to"))


def messages_unread_counts(inv: Invocation) -> defer.Deferred[Any]:
    d = defer.maybeDeferred(inv.ctx.node.unread_counts)
    return d.addCallback(lambda counts: {"unread": dict(counts)})


# settings and UI focus --------------------------------------------------------------------------


#: The settings ``settings.set`` changes (the node's ``DEFAULT_SETTINGS``).
SETTING_NAMES = ("notifications", "previews", "bell", "lan_discovery")


def settings_get(inv: Invocation) -> Any:
    return inv.ctx.node.get_settings()


def settings_set(inv: Invocation) -> defer.Deferred[Any]:
    changes = {k: v for k, v in inv.params.items() if k in SETTING_NAMES}
    if not changes:
        raise jsonrpc.invalid_params("notifications", "give at least one setting to change")
    return defer.maybeDeferred(inv.ctx.node.update_settings, **changes)


def ui_focus(inv: Invocation) -> dict[str, Any]:
    if inv.session is None:
        raise jsonrpc.RpcError(jsonrpc.INVALID_REQUEST, "ui.focus needs a connection")
    contact, group = inv.params.get("contact"), inv.params.get("group")
    if contact and group:
        raise jsonrpc.invalid_params("group", "give a contact or a group, not both")
    if group:
        focus = GROUP_FOCUS_PREFIX + node_groups(inv).resolve(group).group_id.hex()
    else:
        focus = inv.ctx.node.resolve(contact).uid if contact else None
    inv.session.focus = focus
    return {"focus": focus}


# account.* -------------------------------------------------------------------------------------


def account_export(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    return defer.maybeDeferred(
        inv.ctx.node.export_account, p["path"], p["password"], progress=inv.progress
    )


def account_import(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    return defer.maybeDeferred(
        inv.ctx.node.import_account,
        p["path"],
        p["export_password"],
        p["password"],
        progress=inv.progress,
    )


def account_delete(inv: Invocation) -> defer.Deferred[Any]:
    return defer.maybeDeferred(inv.ctx.node.delete_account, inv.params["password"])


# peers, events -------------------------------------------------------------------------------


def peers_redial(inv: Invocation) -> Any:
    return inv.ctx.node.redial(inv.params["contact"])


def peers_status(inv: Invocation) -> Any:
    return inv.ctx.node.peers_status()


# mailbox -------------------------------------------------------------------------------------


def mailbox_use(inv: Invocation) -> Any:
    return defer.maybeDeferred(inv.ctx.node.mailbox_use, inv.params["link"])


def mailbox_status(inv: Invocation) -> Any:
    return inv.ctx.node.mailbox_status()


def mailbox_drop(inv: Invocation) -> Any:
    return defer.maybeDeferred(inv.ctx.node.mailbox_drop)


_MAILBOX_RESULT = (
    "{link (null: none), connected, queues, contacts_reachable, last_collect, collected, "
    "deposited, acks_deposited, error, contacts: [{uid, path "
    "('lan'|'direct'|'relayed'|'mailbox'|'none'), path_reason}]}"
)


def events_subscribe(inv: Invocation) -> dict[str, Any]:
    if inv.session is None:
        raise jsonrpc.RpcError(jsonrpc.INVALID_REQUEST, "events.subscribe needs a connection")
    names = inv.params.get("events")
    inv.session.subscribe_events(None if names is None else frozenset(names))
    return {"subscribed": True, "events": names}


def _known_events(value: list[Any]) -> str | None:
    unknown = [name for name in value if not isinstance(name, str) or name not in EVENT_DOCS]
    if unknown:
        return f"unknown events {unknown!r} (known: {', '.join(EVENT_DOCS)})"
    return None


IDENTITY_GROUP = ConcurrencyGroup(
    "identity",
    1,
    "key-file work (Argon2id, ~0.2 s of a core each) runs one call at a time; later calls queue",
)

_CONTACT_RESULT = (
    "contact: {uid, name, alias, fingerprint, safety_code, addresses, verified, blocked, muted, "
    "read_receipts, status, unread, last_activity, path, path_reason}"
)
_BACKOFF_DOC = (
    "Wrong passwords start the back-off shared by identity.unlock, identity.changePassword "
    "and account.delete (kept across restarts): during it every attempt is refused at once, "
    "unchecked, with -32015 and data.retry_after (seconds)."
)
_MESSAGE_RESULT = (
    "message: {id, contact, direction ('in'|'out'), body, state, created, sent, delivered, "
    "read, seq, path ('direct': sent over a session, 'mailbox': deposited in the contact's "
    "mailbox, kept across restarts; null while queued and for incoming messages)}"
)


def method_specs() -> tuple[MethodSpec, ...]:
    """Return every method's declaration, in documentation order."""
    return (
        MethodSpec(
            "daemon.status",
            daemon_status,
            result="{running, pid, version, ipc, data_dir, has_identity, locked, uid, name, "
            "lag (reactor lag probe figures or null), pools ({name: figures}), in_flight "
            "([{method, id, started, age, progress}]), clients, subscribers, output_buffered "
            "(bytes written for clients, not yet flushed), lagged (clients disconnected with "
            "$/lagged), lan (LAN discovery: {enabled, running, failure, services_seen} or "
            "null)}",
            doc="Report whether the daemon runs, its identity state, reactor lag, pool figures "
            "and the requests being served. lan.running says whether the daemon announces and "
            "browses now (while unlocked and the lan_discovery setting is on); failure, why "
            "not although enabled (multicast refused); services_seen, Jarvis announcements "
            "seen on the LAN (strangers' included).",
            deadline=5.0,
            needs_unlocked=False,
        ),
        MethodSpec(
            "daemon.stop",
            daemon_stop,
            result="{stopping: true, pid}",
            doc="Answer, then stop the daemon gracefully (connections close when it exits).",
            deadline=5.0,
            needs_unlocked=False,
        ),
        MethodSpec(
            "identity.create",
            identity_create,
            (
                Param(
                    "name",
                    str,
                    True,
                    "your display name: 1 to 64 characters, no control or format characters, "
                    "no white space at either end",
                    _display_name,
                ),
                Param("password", str, True, "the master password (never logged)", _password),
            ),
            result="{uid, name, fingerprint}",
            doc="Create the identity and its key file, sealed with the password; the identity "
            "is unlocked afterwards.",
            deadline=120.0,
            needs_unlocked=False,
            concurrency="identity",
            progress=True,
        ),
        MethodSpec(
            "identity.unlock",
            identity_unlock,
            (Param("password", str, True, "the master password (never logged)", _password),),
            result="{uid, name}",
            doc="Open the key file with the password and start messaging. " + _BACKOFF_DOC,
            deadline=120.0,
            needs_unlocked=False,
            concurrency="identity",
            progress=True,
        ),
        MethodSpec(
            "identity.lock",
            identity_lock,
            (
                Param(
                    "wipe",
                    bool,
                    False,
                    "also drop the keys, close the store and every peer session (default false)",
                ),
            ),
            result="{locked: true, wiped}",
            doc="Lock every client out until the password is given again. By default the keys "
            "stay in memory so peer sessions stay up and messages keep arriving (the lock "
            "screen); with wipe the daemon forgets them as at start-up.",
            deadline=30.0,
            concurrency="identity",
        ),
        MethodSpec(
            "identity.show",
            identity_show,
            result="{name, uid, fingerprint, link, addresses}",
            doc="Show your identity and the link code to give to contacts.",
        ),
        MethodSpec(
            "identity.changePassword",
            identity_change_password,
            (
                Param("old_password", str, True, "the current password", _password),
                Param("new_password", str, True, "the new password", _password),
            ),
            result="{changed: true}",
            doc="Re-seal the key file with a new password. " + _BACKOFF_DOC,
            deadline=120.0,
            concurrency="identity",
            progress=True,
        ),
        MethodSpec(
            "contacts.add",
            contacts_add,
            (
                Param("link", str, False, "a jarvis:// link code (give link, card or uid)"),
                Param("card", str, False, "the JSON text of a .jcard file (or link or uid)"),
                Param("uid", str, False, "manual entry: the contact's uid (with addresses)"),
                Param("addresses", list, False, "manual entry: HOST:PORT addresses"),
                Param("name", str, False, "a local alias for the contact", _name),
                Param("verified", bool, False, "mark the fingerprint as checked (default false)"),
            ),
            result=_CONTACT_RESULT,
            doc="Add a contact from a link code, a contact card, or manually by uid and "
            "addresses (its key is then learnt and checked against the uid at the first "
            "connection). Adding a known uid updates its addresses and keeps its history.",
        ),
        MethodSpec(
            "contacts.list",
            contacts_list,
            result="{contacts: [contact]}",
            doc="List every contact, each with the path a message to it takes now (path, "
            "path_reason: as in peers.status).",
        ),
        MethodSpec(
            "contacts.show",
            contacts_show,
            (CONTACT,),
            result=_CONTACT_RESULT,
            doc="Show one contact.",
        ),
        MethodSpec(
            "contacts.update",
            contacts_update,
            (
                CONTACT,
                Param("name", str, False, "a new local alias", _name),
                Param("addresses", list, False, "HOST:PORT addresses to dial", _addresses),
                Param("verified", bool, False, "fingerprint checked"),
                Param("blocked", bool, False, "refuse the contact's connections and messages"),
                Param("muted", bool, False, "no notifications for this contact"),
                Param("read_receipts", bool, False, "send read receipts to this contact"),
            ),
            result=_CONTACT_RESULT,
            doc="Change a contact's settings; give at least one field besides contact.",
        ),
        MethodSpec(
            "contacts.remove",
            contacts_remove,
            (CONTACT, Param("with_history", bool, False, "also delete the conversation")),
            result="{removed: true}",
            doc="Remove a contact (and optionally its history).",
        ),
        MethodSpec(
            "messages.send",
            messages_send,
            (
                CONTACT,
                Param("text", str, True, f"the message, at most {MAX_MESSAGE_BYTES} UTF-8 bytes"),
            ),
            result=_MESSAGE_RESULT + " (state 'queued' until sent; watch message.stateChanged)",
            doc="Queue a message; it is sent when the contact is reachable. When the daemon's "
            "disk is full nothing is queued and it answers `-32020` (`storage`): free space "
            "and retry.",
            deadline=30.0,
        ),
        MethodSpec(
            "messages.history",
            messages_history,
            (
                CONTACT,
                Param(
                    "limit",
                    int,
                    False,
                    f"messages per page, 1..{MAX_HISTORY_PAGE} (default 50)",
                    _history_limit,
                ),
                Param(
                    "before",
                    (str, int),
                    False,
                    "the `next` cursor of the previous page, or a message id of the "
                    "conversation: only messages older than it",
                    None,
                    nullable=True,
                ),
                Param(
                    "after",
                    (str, int),
                    False,
                    "the `newer` cursor of the previous page, or a message id of the "
                    "conversation: the oldest messages newer than it (paging forward)",
                    None,
                    nullable=True,
                ),
            ),
            result="{messages: [message] (newest first), next: cursor for the older page or null "
            "(always null with after), newer: with after, cursor for the next newer page or "
            "null (always null without after), marker: id of the first message of the latest "
            "unread run (the read position, shared by every client) or null}",
            doc="Page through a conversation, newest page first; with after, oldest page first "
            "from a message. Paging is by position in the conversation (keyset), so a page "
            "costs the same at any depth and messages arriving meanwhile neither repeat nor "
            "skip. A message id that is not in the conversation is not_found.",
        ),
        MethodSpec(
            "messages.markRead",
            messages_mark_read,
            (CONTACT, Param("up_to", str, False, "mark up to this message id", nullable=True)),
            result="{count}",
            doc="Mark a conversation's messages read (all, or up to a message).",
        ),
        MethodSpec(
            "messages.unreadCounts",
            messages_unread_counts,
            result="{unread: {uid: count}}",
            doc="Count unread messages per contact.",
        ),
        MethodSpec(
            "settings.get",
            settings_get,
            result="{notifications, previews, bell, lan_discovery}",
            doc="Read the settings: desktop notifications on new messages and files offered, "
            "message text and file names in them (opt-in), the terminal bell in UIs, and LAN "
            "discovery (announce to and find contacts on the local network, docs/net.md).",
        ),
        MethodSpec(
            "settings.set",
            settings_set,
            (
                Param("notifications", bool, False, "raise desktop notifications"),
                Param("previews", bool, False, "show message text in notifications"),
                Param("bell", bool, False, "let UIs ring the terminal bell"),
                Param(
                    "lan_discovery",
                    bool,
                    False,
                    "announce to and find contacts on the local network (mDNS); off stops it "
                    "at once and forgets the addresses it found",
                ),
            ),
            result="{notifications, previews, bell, lan_discovery}",
            doc="Change settings; they are stored encrypted and announced with settings.changed.",
        ),
        MethodSpec(
            "ui.focus",
            ui_focus,
            (
                Param(
                    "contact",
                    str,
                    False,
                    "the contact whose conversation this client now shows; absent or null: none",
                    nullable=True,
                ),
                Param(
                    "group",
                    str,
                    False,
                    "or the group (id, unique prefix or name) whose conversation it shows",
                    nullable=True,
                ),
            ),
            result="{focus: uid, 'group:' and the group's id, or null}",
            doc="Tell the daemon which conversation this client shows: no desktop notification "
            "is raised for a conversation (a contact's or a group's) that an attached client "
            "shows. Cleared when the connection closes.",
        ),
        MethodSpec(
            "account.export",
            account_export,
            (
                Param("path", str, True, "the .jexport file to create (must not exist)", _path),
                Param("password", str, True, "the password sealing the export", _password),
            ),
            result="{path, bytes}",
            doc="Write identity, contacts and history to one file sealed under a password "
            "(Argon2id); never unencrypted.",
            deadline=300.0,
            concurrency="identity",
            progress=True,
        ),
        MethodSpec(
            "account.import",
            account_import,
            (
                Param("path", str, True, "the .jexport file", _path),
                Param(
                    "export_password",
                    str,
                    True,
                    "the password the export was sealed with",
                    _password,
                ),
                Param(
                    "password", str, True, "the master password for this data directory", _password
                ),
            ),
            result="{uid, name}",
            doc="Restore an export into this daemon's empty data directory (refused when an "
            "identity exists); the identity is unlocked afterwards. A wrong password or a "
            "damaged file writes nothing.",
            deadline=300.0,
            needs_unlocked=False,
            concurrency="identity",
            progress=True,
        ),
        MethodSpec(
            "account.delete",
            account_delete,
            (Param("password", str, True, "the master password", _password),),
            result="{removed}",
            doc="Check the password, then remove every file of the data directory "
            "(overwritten first, best effort: see docs/security.md). " + _BACKOFF_DOC,
            deadline=60.0,
            concurrency="identity",
        ),
        MethodSpec(
            "peers.redial",
            peers_redial,
            (Param("contact", str, True, "name, alias or uid prefix"),),
            result="{uid, status}",
            doc="Dial a contact now instead of waiting for the next backoff attempt.",
        ),
        MethodSpec(
            "peers.status",
            peers_status,
            result="{summary, online, total, peers: [{uid, name, status ('offline'|'connecting'|"
            "'online'), connect_attempts, connect_successes, connect_failures, "
            "sessions_accepted, last_error, last_error_at, connected_since, offline_since, "
            "bytes_in, bytes_out, messages_in, messages_out, lan_addresses, path, "
            "path_reason}]}",
            doc="Show the connection state of every peer. connect_attempts counts outbound "
            "dials started; connect_successes those that reached a session (sessions dialled), "
            "connect_failures those that did not (last_error, last_error_at: the latest); "
            "sessions_accepted counts inbound connections that reached a session. "
            "connected_since is set while online, offline_since while not (when the last "
            "session ended, or when the daemon began to track the contact). Times are seconds "
            "since the epoch; counters run from the daemon's unlock. lan_addresses: the "
            "HOST:PORT addresses where LAN discovery found the contact, newest first (dialled "
            "before the card's addresses, after any address that reached a session, most recent "
            "success first). path: how a message to the contact goes now, best first: 'lan' (a "
            "live session dialled to where LAN discovery found it), 'direct' (a live TCP "
            "session: a card's address, or the contact dialled us), 'relayed' (a live session "
            "through a mailbox's relay; direct is tried meanwhile and replaces it), 'mailbox' "
            "(no session: deposited in its mailbox), 'none' (no session, no mailbox address: "
            "it waits); path_reason says why in words, e.g. 'direct: dialled 10.0.0.2:7770' or "
            "'mailbox: no address answers (connection refused)'.",
        ),
        MethodSpec(
            "mailbox.use",
            mailbox_use,
            (Param("link", str, True, "the mailbox's jarvis-mailbox: link"),),
            result=_MAILBOX_RESULT,
            doc="Use the mailbox at link for offline delivery: the daemon connects to it, "
            "creates one queue per contact there, collects them, and tells every contact "
            "(over its session) where to deposit. Replaces (and deletes the queues at) the "
            "mailbox used before. See docs/mailbox.md.",
            deadline=60.0,
        ),
        MethodSpec(
            "mailbox.status",
            mailbox_status,
            result=_MAILBOX_RESULT,
            doc="Show the mailbox in use: whether it is reachable, how many queues we hold "
            "there, how many contacts we can deposit for (contacts_reachable), when we last "
            "collected, and the deposits and collections since unlock; per contact, the path "
            "a message takes now: lan, direct or relayed (a session is up, of that kind: see "
            "peers.status), mailbox (deposited in the contact's mailbox) or none (neither: "
            "it stays queued), with path_reason: the words of contacts.list and peers.status "
            "(before, none was called waiting here).",
        ),
        MethodSpec(
            "mailbox.drop",
            mailbox_drop,
            result=_MAILBOX_RESULT,
            doc="Stop using the mailbox: delete our queues there and tell every connected "
            "contact (the others learn it at their next session; their deposits are refused).",
            deadline=60.0,
        ),
        MethodSpec(
            "events.subscribe",
            events_subscribe,
            (
                Param(
                    "events",
                    list,
                    False,
                    "only these events (names from the Events table); all when absent",
                    validator=_known_events,
                    nullable=True,
                ),
            ),
            result="{subscribed: true, events: [names] or null}",
            doc="Receive the daemon's events on this connection as notifications (see Events).",
            deadline=5.0,
            needs_unlocked=False,
        ),
        *exec_specs(),
        *group_specs(),
        *file_specs(),
    )


# files.* (issue 18) ---------------------------------------------------------------------------

_TRANSFER_VIEW = (
    "{id, contact, contact_name, direction ('in'|'out'), name, folder (the folder the file is "
    "in, for a file of a folder sent whole: photos/2024; else null), folder_id (the same for "
    "every file of one folder sent; else null), size, media_type, state "
    "('requested'|'offered'|'accepted'|'streaming'|'complete'|'cancelled'|'failed'), reason, "
    "bytes, rate, "
    "eta, path, directory, created, group (the group's id for a file sent into a group, else "
    "null)}"
)
TRANSFER = Param(
    "id", str, True, "the transfer id, or a unique prefix of it (4+ hex digits)", _non_empty
)

#: Where a received file goes (files.accept, groups.fetchFile).
_DIRECTORY = Param(
    "directory",
    str,
    False,
    "the folder to save into (absolute; default ~/Downloads)",
    _path,
    nullable=True,
)


def _send_file(inv: Invocation, send: Callable[..., Any], to: str) -> defer.Deferred[Any]:
    p = inv.params
    return defer.maybeDeferred(
        send, p[to], p["path"], wait=bool(p.get("wait")), progress=inv.progress
    )


def files_send(inv: Invocation) -> defer.Deferred[Any]:
    return _send_file(inv, inv.ctx.node.send_file, "contact")


def files_send_folder(inv: Invocation) -> defer.Deferred[Any]:
    return _send_file(inv, inv.ctx.node.send_folder, "contact")


def groups_send_file(inv: Invocation) -> defer.Deferred[Any]:
    return _send_file(inv, inv.ctx.node.send_group_file, "group")


def groups_fetch_file(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    return defer.maybeDeferred(
        inv.ctx.node.fetch_group_file,
        p["group"],
        p["message"],
        p.get("directory"),
        holder=p.get("from"),
        wait=bool(p.get("wait")),
        progress=inv.progress,
    )


def files_list(inv: Invocation) -> defer.Deferred[Any]:
    d = defer.maybeDeferred(inv.ctx.node.list_transfers)
    return d.addCallback(lambda views: {"transfers": views})


def files_wait(inv: Invocation) -> defer.Deferred[Any]:
    d = defer.maybeDeferred(inv.ctx.node.wait_transfers, inv.params["ids"], inv.progress)
    return d.addCallback(lambda views: {"transfers": views})


#: The most transfers one files.wait names.
MAX_WAITED = 1000


def _transfer_ids(value: list[Any]) -> str | None:
    if not value or len(value) > MAX_WAITED:
        return f"must name 1 to {MAX_WAITED} transfers"
    if all(isinstance(v, str) and v.strip() for v in value):
        return None
    return "must be an array of transfer ids (or unique prefixes of 4+ hex digits)"


def files_accept(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    return defer.maybeDeferred(inv.ctx.node.accept_transfer, p["id"], p.get("directory"))


def files_decline(inv: Invocation) -> defer.Deferred[Any]:
    return defer.maybeDeferred(inv.ctx.node.decline_transfer, inv.params["id"])


def files_cancel(inv: Invocation) -> defer.Deferred[Any]:
    return defer.maybeDeferred(inv.ctx.node.cancel_transfer, inv.params["id"])


def files_policy(inv: Invocation) -> defer.Deferred[Any]:
    p = inv.params
    return defer.maybeDeferred(
        inv.ctx.node.transfer_policy,
        max_size=p.get("max_size"),
        downloads=p.get("downloads"),
        contact=p.get("contact"),
        auto_accept=p.get("auto_accept"),
    )


def _byte_count(value: int) -> str | None:
    return None if value >= 0 else "must be a byte count (0 or more)"


def file_specs() -> tuple[MethodSpec, ...]:
    """The ``files.*`` methods (file transfer, issue 18)."""
    return (
        MethodSpec(
            "files.send",
            files_send,
            (
                CONTACT,
                Param("path", str, True, "the file to send (absolute path)", _path),
                Param("wait", bool, False, "answer only once the transfer ended"),
            ),
            result=_TRANSFER_VIEW,
            doc="Offer a file to a contact: the daemon hashes it (BLAKE3 per chunk), sends the "
            "offer inside the session, and streams it on a connection of its own once the "
            "contact accepts. With wait, progress ({id, bytes, size, rate, eta} and {id, "
            "state}) is reported with $/progress and the answer comes when the transfer is "
            "complete, cancelled or failed.",
            deadline=None,
            progress=True,
        ),
        MethodSpec(
            "files.sendFolder",
            files_send_folder,
            (
                CONTACT,
                Param("path", str, True, "the folder to send (absolute path)", _path),
                Param("wait", bool, False, "answer only once every file's transfer ended"),
            ),
            result="{folder, transfers: [transfer view], failed: [{path, error}], left_out, "
            "left_out_first}",
            doc="Offer every file of a folder to a contact, to be received as one folder: "
            "each file is a transfer of its own (accepted, declined, cancelled one by one) "
            "whose view names the folder it is in (folder: the folder sent, then the folders "
            "below it, joined by /); the contact's daemon puts the files of one folder sent "
            "in one new folder where they are accepted (photos, or photos (1) if taken), "
            "every folder name sanitised. Regular files only: links, devices, pipes and "
            "sockets are left out, and empty folders; at most 500 files, 32 folders deep. "
            "failed lists the files that could not be read once listed; left_out counts "
            "the entries left out (links, devices, pipes, sockets), left_out_first names the "
            "first (folder/name) or is null. The files are hashed "
            "first ($/progress {folder, hashed, files} after each), then offered together. "
            "With wait, progress as for files.wait and the answer once every transfer ended.",
            deadline=None,
            progress=True,
        ),
        MethodSpec(
            "groups.sendFile",
            groups_send_file,
            (
                Param("group", str, True, "the group: its id (or 4+ hex digits of it) or its name"),
                Param("path", str, True, "the file to send (absolute path)", _path),
                Param("wait", bool, False, "answer only once every transfer ended"),
            ),
            result="{group, message, transfers: [" + _TRANSFER_VIEW + "]}",
            doc="Send a file into a group: the daemon hashes it once and offers it to every "
            "other member, one transfer each (its own id and keys), over that member's session "
            "now or when it comes up; each member accepts or declines on its own (a member's "
            "daemon takes the offer only while both are in the group). The offers carry the "
            "group's id, so every client shows them in the group. The group's history records "
            "the file too (message: the id of that group message, whose history item has "
            "file: {name, size, media_type, hash}), so a member who joins later, or declined, "
            "can ask for it with groups.fetchFile. With wait, each transfer's "
            "progress is reported with $/progress ({id, bytes, size, rate, eta} and {id, "
            "state}) and the answer comes when every one is complete, cancelled or failed.",
            deadline=None,
            progress=True,
        ),
        MethodSpec(
            "groups.fetchFile",
            groups_fetch_file,
            (
                Param("group", str, True, "the group: its id (or 4+ hex digits of it) or its name"),
                Param(
                    "message",
                    str,
                    True,
                    "the group message that records the file (its id, or 8+ hex digits of it)",
                    _non_empty,
                ),
                _DIRECTORY,
                Param(
                    "from",
                    str,
                    False,
                    "ask only this member, one who received the file (its uid, 4+ "
                    "characters of it, or a contact's name)",
                    nullable=True,
                ),
                Param("wait", bool, False, "answer only once the transfer ended"),
            ),
            result=_TRANSFER_VIEW,
            doc="Ask for a file shared into the group (a history item with a file): a file shared "
            "before we joined, or one we declined. Without from, the member who shared it is "
            "asked when it is online; else, or when it does not have the file, the other members "
            "online are asked in turn (those who received it complete serve it), and an author "
            "who was offline last (one who left the group is not asked; with nobody online to "
            "ask, the call is refused); contact says who is being asked. With from, only that "
            "member is asked. The offer is checked against the group's record of the file whoever"
            " serves it. The transfer is 'requested' until a member's daemon answers with an "
            "offer of that very file (size, chunk size and content hash as recorded; anything "
            "else is refused), which is accepted at once into directory; a member who does not "
            "have the file unchanged declines, and when nobody left to ask has it the transfer "
            "ends cancelled ('the sender declined: ...', or 'none of the N members asked has it "
            "(the last: ...)'). The request goes over the member's session, or into its mailbox "
            "(its queue for the group when it is not a contact; reason says which while it "
            "waits). Refused if a transfer of this file from this group is already under way. "
            "With "
            "wait, progress as for groups.sendFile.",
            deadline=None,
            progress=True,
        ),
        MethodSpec(
            "files.list",
            files_list,
            result="{transfers: [" + _TRANSFER_VIEW + "]}",
            doc="List every file transfer, both directions, newest first; they survive "
            "restarts of the daemon. reason: why a transfer ended (cancelled, failed), or why "
            "an accepted one waits for its next connection (e.g. 'disk full: ...' on the "
            "receiving side, 'queued: ...' on the sending side while three other files are "
            "being sent; it resumes by itself), cleared when a stream opens. Finished "
            "transfers (complete, cancelled, failed) are listed for 30 days after they were "
            "offered, the newest 500 at most, a folder sent whole counting as one (its files "
            "are forgotten together, once all of them ended); the newest outgoing transfer "
            "of a file shared into a group stays, so members can still ask for it.",
        ),
        MethodSpec(
            "files.wait",
            files_wait,
            (
                Param(
                    "ids",
                    list,
                    True,
                    "the transfers: ids, or unique prefixes of 4+ hex digits",
                    _transfer_ids,
                ),
            ),
            result="{transfers: [" + _TRANSFER_VIEW + "]}",
            doc="Answer once every transfer named is complete, cancelled or failed (at once for "
            "those that ended already), with their views in the order named; meanwhile their "
            "progress is reported with $/progress ({id, bytes, size, rate, eta} and {id, "
            "state}), as for files.send with wait. Refused before any wait if an id names no "
            "single transfer. Cancelling the call stops the wait, not the transfers.",
            deadline=None,
            progress=True,
        ),
        MethodSpec(
            "files.accept",
            files_accept,
            (
                TRANSFER,
                _DIRECTORY,
            ),
            result=_TRANSFER_VIEW,
            doc="Accept an offered file: checks the size cap and the free disk space, creates "
            "the hidden 0600 partial file and tells the sender. The file gets its (sanitised, "
            "never overwriting) name only once verified against the offered hash.",
            deadline=60.0,
        ),
        MethodSpec(
            "files.policy",
            files_policy,
            (
                Param("max_size", int, False, "the largest file accepted, bytes", _byte_count),
                Param("downloads", str, False, "the default folder (absolute)", _path),
                Param("contact", str, False, "the contact whose auto-accept limit changes"),
                Param(
                    "auto_accept",
                    int,
                    False,
                    "accept this contact's files up to this size without asking (0: ask)",
                    _byte_count,
                ),
            ),
            result="{max_size, downloads, auto_accept: {uid: bytes}}",
            doc="Show the receiving policy, or change it: the size cap (larger offers cannot be "
            "accepted), the default folder, and per contact a size up to which offers are "
            "accepted without asking (into the default folder, after the same size and disk "
            "space checks). Kept encrypted in the store.",
        ),
        MethodSpec(
            "files.decline",
            files_decline,
            (TRANSFER,),
            result=_TRANSFER_VIEW,
            doc="Decline an offered file (the sender is told).",
        ),
        MethodSpec(
            "files.cancel",
            files_cancel,
            (TRANSFER,),
            result=_TRANSFER_VIEW,
            doc="Cancel a transfer in either direction at any time (the peer is told; a "
            "receiver's partial file is removed).",
            deadline=60.0,
        ),
    )


def build_registry() -> Registry:
    """Return the registry of every API method (deadlines run on each call's ``ctx.clock``)."""
    return Registry(method_specs(), (IDENTITY_GROUP,))
