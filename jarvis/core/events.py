"""The node's events: observers subscribe, the node emits ``(event, payload)`` to each.

Shared by :class:`jarvis.core.node.Node` and its test double :class:`jarvis.testing.FakeNode`,
so both deliver events the same way.  Pure code: no reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

#: Every event the node emits, with its payload as documented in ``docs/ipc.md``.  The local
#: API renders its event table from this and refuses subscriptions to names not in it.
EVENT_DOCS: dict[str, str] = {
    "message.added": "`{message}`: a message the user sent is stored (state `queued`)",
    "message.received": "`{message, muted}`",
    "message.stateChanged": '`{id, contact, state, at}`, and `via: "mailbox"` (and the '
    'same `path: "mailbox"` as in the message history) when the message was deposited in '
    "the contact's mailbox (state `sent`) rather than written to a session",
    "mailbox.changed": "`{link}`: the mailbox in use changed (`null`: dropped)",
    "mailbox.depositFailed": "`{contact, error}`: a message could not be deposited in the "
    "contact's mailbox (for instance its queue is full); it stays queued",
    "peer.statusChanged": "`{peer}`",
    "connection.summary": "`{summary, online, total}`",
    "contact.changed": "`{contact}`, or `{uid, removed: true}`",
    "settings.changed": "`{settings}` (every setting and its value)",
    "identity.locked": "`{wiped}`, and `deleted: true` after `account.delete`",
    "identity.unlocked": "`{uid, name}`",
    "group.changed": "`{group}`: a group was created, joined, or its state changed (members, "
    "name, topic)",
    "group.message": "`{message}`: a group message became shown (`{id, group, author, "
    "author_name, body, seq, created, index, delivered, members}`)",
    "group.invited": "`{invite}`: a contact invited us to a group (`jarvis group invites`)",
    "group.removed": "`{group, name}`: we were removed from a group (or left it)",
    "group.dropped": "`{group, ids}`: messages taken back (written after their author's "
    "removal, learnt late)",
    "transfer.offered": "`{transfer, auto_accept}`: a contact offers a file (accept with "
    "`files.accept`); `auto_accept`: true when the daemon accepts it by itself (the contact's "
    "auto-accept limit, `files.policy`), so a client need not ask; if it cannot (no room, "
    "no usable downloads folder), the offer waits and its `transfer.changed` gives the "
    '`reason` ("not accepted by itself: ..."): ask then',
    "transfer.changed": "`{transfer}`: a file transfer changed state (see `files.list`)",
    "transfer.policyChanged": "`{policy}`: the receiving policy changed (see `files.policy`)",
    "transfer.progress": "`{id, contact, direction, bytes, size, rate, eta}`: a running "
    "transfer, every 0.4 s (rate in bytes/s, eta in s or null)",
    "group.delivery": "`{group, id, delivered, members}`: one more member's daemon stored our "
    "group message `id` (delivered to `delivered` of `members`)",
}

#: The only events an API client receives while the identity is locked (screen lock or wipe).
#: Every other event names a contact or carries message text, settings or peer addresses, which
#: the lock must hide from a client that has not given the password: those events are dropped,
#: not delayed or redacted (a client reloads its state after ``identity.unlocked``).
LOCKED_EVENTS: frozenset[str] = frozenset({"identity.locked", "identity.unlocked"})

#: ``observer(event, payload)``.
Observer = Callable[[str, dict[str, Any]], None]


class Events:
    """Observers of one event source, called in subscription order."""

    log = Logger()

    def __init__(self) -> None:
        self._observers: list[Observer] = []

    def __len__(self) -> int:
        """How many observers are subscribed."""
        return len(self._observers)

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call *observer(event, payload)* for every event; returns the unsubscribe function."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Give *event* to every observer; one that raises is logged and the others still run."""
        for observer in list(self._observers):
            try:
                observer(event, payload)
            except Exception:
                self.log.failure("event observer failed for {event}", event=event)
