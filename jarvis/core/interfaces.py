"""The seams of the core, declared once as :class:`typing.Protocol`\\ s.

What the node offers the local API (:class:`NodeApi`, which :class:`~jarvis.core.node.Node` and
:class:`jarvis.testing.FakeNode` both satisfy, checked by mypy), what the core offers the peer
network (:class:`ContactDirectory`, :class:`SessionObserver`), and what the core calls on the
network and on a session (:class:`PeerNetwork`, :class:`SessionHandle`).  The peer network's
own declarations (``jarvis.net.network.ContactDirectory``, ``jarvis.protocol.session``) are
structurally the same; the core declares them here so that it never imports ``jarvis.net``.
This module holds declarations only: no behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from twisted.internet import defer

#: ``(event, payload)``: receives every API event.
from jarvis.core.events import Observer
from jarvis.store.records import Contact

#: Receives a long call's progress values.
Progress = Callable[[Any], None]


class SessionHandle(Protocol):
    """What the core calls on an established peer session (a ``PeerSession``)."""

    @property
    def peer_uid(self) -> str:
        """The uid the peer proved."""
        ...

    def send_message(self, message_id: bytes, body: bytes, created_ms: int) -> None:
        """Write one message record."""
        ...

    def send_ack(self, message_ids: Sequence[bytes]) -> None:
        """Write one Ack record for *message_ids* (stored here)."""
        ...

    def send_read(self, message_ids: Sequence[bytes]) -> None:
        """Write one Read record for *message_ids* (read by our user)."""
        ...


class SessionObserver(Protocol):
    """What the core hears from the peer network's sessions (the courier implements it)."""

    def session_established(self, session: Any) -> Any:
        """A session is up: messages may flow both ways."""
        ...

    def session_closed(self, session: Any, reason: str) -> None:
        """The session ended (reported once)."""
        ...

    def session_writable(self, session: Any) -> None:
        """The transport takes bytes again after a pause."""
        ...

    def message_received(
        self, session: Any, message_id: bytes, body: bytes, created_ms: int
    ) -> Any:
        """A message arrived."""
        ...

    def acks_received(self, session: Any, message_ids: Sequence[bytes]) -> Any:
        """The peer stored these messages."""
        ...

    def reads_received(self, session: Any, message_ids: Sequence[bytes]) -> Any:
        """The peer's user read these messages."""
        ...

    def resume_mark(self, uid: str) -> bytes | None:
        """The last message from *uid* stored with everything it sent before."""
        ...


class ContactDirectory(Protocol):
    """The network's view of the contact list (the contact book implements it)."""

    def is_acceptable(self, uid: str) -> bool:
        """Whether *uid* is a contact and not blocked."""
        ...

    def public_key(self, uid: str) -> bytes | None:
        """The contact's raw Ed25519 public key, if known."""
        ...

    def addresses(self, uid: str) -> tuple[str, ...]:
        """Where to dial the contact."""
        ...

    def acceptable_uids(self) -> Iterable[str]:
        """Every uid for which :meth:`is_acceptable` holds."""
        ...


class PeerNetwork(Protocol):
    """What the core calls on the peer network (``jarvis.net.network.PeerNetwork``)."""

    def connect(self, uid: str) -> None:
        """Keep a session with *uid* up (dial, with backoff)."""
        ...

    def redial(self, uid: str) -> None:
        """Dial *uid* now, skipping the backoff wait."""
        ...

    def forget(self, uid: str) -> None:
        """Stop dialling *uid* and close its session."""
        ...

    def status(self, uid: str) -> Any:
        """*uid*'s connection health snapshot."""
        ...

    def stop(self) -> Any:
        """Close every session; may return a Deferred."""
        ...


class MailboxTransport(Protocol):
    """What the core calls to reach mailboxes (``jarvis.mailbox.attach.MailboxConnector``).

    Queue credentials are ``(recipient_id, sender_id, recipient_key, sender_key)`` bytes.
    Every call answers a Deferred; failures are ``jarvis.mailbox.client`` exceptions
    (``MailboxRefused``, ``QueueFull``, ``MailboxConnectionLost``) or connection errors.
    """

    def connect(self, link: str) -> defer.Deferred[Any]:
        """Connect to our own mailbox at *link* (replacing any previous one)."""
        ...

    def create_queue(self) -> defer.Deferred[tuple[bytes, bytes, bytes, bytes]]:
        """Create a queue at our mailbox."""
        ...

    def delete_queue(self, recipient_id: bytes, recipient_key: bytes) -> defer.Deferred[Any]:
        """Delete one of our queues (a removed contact can deposit no more)."""
        ...

    def subscribe(
        self,
        recipient_id: bytes,
        recipient_key: bytes,
        handler: Callable[[bytes], defer.Deferred[Any]],
    ) -> defer.Deferred[Any]:
        """Collect the queue: *handler(payload)* per message, acknowledged when it fires."""
        ...

    def deposit(
        self, link: str, sender_id: bytes, sender_key: bytes, payload: bytes
    ) -> defer.Deferred[Any]:
        """Deposit *payload* (at most one block) into a contact's queue at *link*."""
        ...

    def status(self) -> dict[str, Any]:
        """``{connected, link, last_collect, collected, deposited}``."""
        ...

    def disconnect(self) -> defer.Deferred[Any]:
        """Close every mailbox connection."""
        ...


class NodeApi(Protocol):
    """The node as the local API's methods (:mod:`jarvis.ipc.methods`) and server use it.

    Methods answer a value or a Deferred (handlers wrap them in ``maybeDeferred``).
    """

    @property
    def locked(self) -> bool:
        """Whether API clients must unlock first."""
        ...

    def info(self) -> dict[str, Any]:
        """``{has_identity, locked, keys_loaded, uid, name}``."""
        ...

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call *observer* for every event; returns the unsubscribe function."""
        ...

    def create_identity(self, name: str, password: str, *, progress: Progress) -> Any: ...

    def unlock(self, password: str, *, progress: Progress) -> Any: ...

    def lock(self, *, wipe: bool = False) -> Any: ...

    def show_identity(self) -> Any: ...

    def change_password(self, old: str, new: str, *, progress: Progress) -> Any: ...

    def resolve(self, ref: str) -> Contact: ...

    def add_contact(
        self,
        *,
        link: str | None = None,
        card: str | None = None,
        uid: str | None = None,
        addresses: Sequence[str] | None = None,
        name: str | None = None,
        verified: bool = False,
    ) -> Any: ...

    def list_contacts(self) -> Any: ...

    def show_contact(self, ref: str) -> Any: ...

    def update_contact(self, ref: str, **changes: Any) -> Any: ...

    def remove_contact(self, ref: str, *, with_history: bool = False) -> Any: ...

    def send_message(self, ref: str, text: str) -> defer.Deferred[Any]: ...

    def history(
        self,
        ref: str,
        *,
        limit: int = 50,
        before: str | int | None = None,
        after: str | int | None = None,
    ) -> Any: ...

    def mark_read(self, ref: str, *, up_to: str | None = None) -> Any: ...

    def unread_counts(self) -> Any: ...

    def get_settings(self) -> dict[str, bool]: ...

    def update_settings(self, **changes: bool) -> Any: ...

    def export_account(self, path: str, password: str, *, progress: Progress) -> Any: ...

    def import_account(
        self, path: str, export_password: str, password: str, *, progress: Progress
    ) -> Any: ...

    def delete_account(self, password: str) -> Any: ...

    def redial(self, ref: str) -> dict[str, Any]: ...

    def peers_status(self) -> dict[str, Any]: ...

    def mailbox_use(self, link: str) -> Any: ...

    def mailbox_status(self) -> Any: ...

    def mailbox_drop(self) -> Any: ...

    def send_file(
        self, ref: str, path: str, *, wait: bool = False, progress: Progress | None = None
    ) -> Any: ...

    def list_transfers(self) -> Any: ...

    def wait_transfers(self, refs: list[str], progress: Progress | None = None) -> Any: ...

    def accept_transfer(self, ref: str, directory: str | None = None) -> Any: ...

    def decline_transfer(self, ref: str) -> Any: ...

    def transfer_policy(
        self,
        *,
        max_size: int | None = None,
        downloads: str | None = None,
        contact: str | None = None,
        auto_accept: int | None = None,
    ) -> Any: ...

    def cancel_transfer(self, ref: str) -> Any: ...
