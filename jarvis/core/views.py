"""JSON-able views of core values, as the local API and its events show them.

Pure functions from store records (plus live status) to dictionaries.  Field names are part of
the documented local API (docs/ipc.md): add fields freely, never rename or remove one.
"""

from __future__ import annotations

from typing import Any

from jarvis.crypto.identity import fingerprint, safety_code
from jarvis.store.records import Contact, StoredMessage


def message_view(message: StoredMessage, path: str | None = None) -> dict[str, Any]:
    """Return the API form of *message*.

    :param path: the recorded path it left by (``"mailbox"``), if any; otherwise an outgoing
        message past ``queued`` went over a session (``"direct"``), and the others have none.
    """
    if path is None and message.direction == "out" and message.state != "queued":
        path = "direct"
    return {
        "id": message.id,
        "contact": message.contact,
        "direction": message.direction,
        "body": message.body,
        "state": message.state,
        "created": message.created,
        "sent": message.sent,
        "delivered": message.delivered,
        "read": message.read,
        "seq": message.seq,
        "path": path,
    }


def contact_view(
    contact: Contact,
    *,
    own_uid: str,
    status: str = "offline",
    unread: int = 0,
    last_activity: float | None = None,
) -> dict[str, Any]:
    """Return the API form of *contact* with its live status and counters."""
    return {
        "uid": contact.uid,
        "name": contact.name,
        "alias": contact.alias,
        "display_name": contact.alias or contact.name,
        "fingerprint": fingerprint(contact.uid),
        "safety_code": safety_code(own_uid, contact.uid),
        "addresses": list(contact.addresses),
        "verified": contact.verified,
        "blocked": contact.blocked,
        "muted": contact.muted,
        "read_receipts": contact.read_receipts,
        "status": status,
        "unread": unread,
        "last_activity": last_activity,
        "added_at": contact.added_at,
    }


def peer_view(status: Any, name: str | None) -> dict[str, Any]:
    """Return the API form of a network ``PeerStatus`` (any object with its attributes)."""
    fields = (
        "uid",
        "state",
        "connect_attempts",
        "connect_successes",
        "connect_failures",
        "sessions_accepted",
        "last_error",
        "last_error_at",
        "connected_since",
        "offline_since",
        "bytes_in",
        "bytes_out",
        "messages_in",
        "messages_out",
    )
    view = {f: getattr(status, f, None) for f in fields}
    view["status"] = view.pop("state") or "offline"
    view["name"] = name
    return view
