"""File transfers of one node: offers, answers, streams, resume, progress (issue 18).

:class:`Transfers` keeps every transfer of the unlocked identity, both directions, and drives
the parts that already exist (see ``docs/protocol.md``, "File transfer"):

- **Control records** (:class:`~jarvis.protocol.transfer.Offer`, ``Accept``, ``Decline``,
  ``Cancel``, ``Complete``) travel inside the end-to-end session as message bodies that start
  with :data:`CONTROL_PREFIX` (a ``0xFF`` byte is never UTF-8, so no chat text is ever taken for
  one).  They are not kept in the chat history: every transfer's state is kept (encrypted) in
  the store, and the record a peer still needs is written again at each new session with it
  (the sender's ``Offer`` while unanswered, the receiver's ``Accept`` while incomplete, a
  pending ``Cancel``/``Decline``/``Complete``, a member's ``Request`` for a file shared into
  a group while unanswered).  Handling each record is idempotent.  With no session up, they
  go as durable entries through the peer's mailbox where the node can (:attr:`deposit`).
- **Shared files**: a member asks the author of a file shared into a group, or a member who
  received it, for the file (:meth:`Transfers.request`, a ``Request`` under a transfer id the
  requester chose); the member asked hashes its copy again and offers it under that id, or
  declines; the requester accepts at once an offer of exactly the recorded file.
- **Data** travels on a connection of its own to the same peer (pinned TLS and the knock, see
  :mod:`jarvis.net.transfer_link`), so a file never delays chat: the sender dials it when the
  ``Accept`` arrives (again after every session start, so either side's restart resumes), the
  receiver's network hands it to :meth:`Transfers.inbound_stream`.  The receiver's
  ``Have`` says which chunks it holds verified, so a resumed transfer re-sends at most the
  chunks in flight.
- **Progress** is pushed as ``transfer.progress`` events (bytes, rate, ETA) every
  :data:`PROGRESS_INTERVAL` seconds while a stream runs, and ``transfer.changed`` at every
  change of state.
- **The list** (:class:`TransferList`) holds hundreds of transfers (a folder's files, the
  newest finished ones) and keeps, as they change, what is asked of it at every event: the
  transfers to write again, the streams running, the queue; nothing done per event walks
  the whole list (the finished ones are pruned once a second at most).

Blocking work (hashing, creating, reopening, discarding files) goes through *run_blocking*.
No reactor import; never logs file names, keys or content (ids as
:func:`jarvis.common.logs.log_id`).
"""

from __future__ import annotations

import json
import os
from collections.abc import (
    Callable,
    ItemsView,
    Iterator,
    MutableMapping,
    Sequence,
    ValuesView,
)
from dataclasses import dataclass, field, replace
from functools import partial as bind
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from jarvis.common.errors import InvalidInput, NotFound, reason_without_paths
from jarvis.common.logs import log_id
from jarvis.common.textsafe import terminal_safe
from jarvis.crypto.transfer_keys import new_transfer_secret
from jarvis.files.receive import (
    DISK_FULL,
    FileTooLarge,
    NotEnoughSpace,
    PartialFile,
    PartialNameTaken,
    ReceivePolicy,
    check_acceptable,
    find_received,
    free_bytes,
    make_folder_root,
    make_subfolders,
    safe_folder_parts,
)
from jarvis.files.send import (
    MAX_FOLDER_FILES,
    FileSource,
    FolderTooBig,
    NotAFolder,
    PreparedFile,
    SourceChanged,
    folder_files,
    make_offer,
    offer_again,
    offer_in_folder,
    prepare_again,
)
from jarvis.protocol.transfer import (
    FINAL_STATES,
    FOLDER_ID_SIZE,
    Accept,
    Cancel,
    Complete,
    Decline,
    DialBack,
    MalformedTransferRecord,
    Offer,
    ProgressMeter,
    Request,
    SharedFile,
    TransferRecord,
    encode_transfer_record,
    parse_transfer_record,
)
from jarvis.store import queries

#: The first bytes of a message body that carries a transfer control record.
CONTROL_PREFIX = b"\xffJXF"
#: Each transfer is kept (encrypted, as JSON) in the store setting named this prefix and its
#: id, written when it changed.
ENTRY_PREFIX = "transfer/"
#: The one setting that kept every transfer in a single document before (read once and
#: replaced by one setting per transfer: rewriting it whole at every change made a folder of
#: 200 files spend a quarter of its time writing it).
SETTING = "transfers"
#: The store setting that keeps the receiving policy (size cap, folder, auto-accept).
POLICY_SETTING = "files"
#: The largest file accepted unless the user says otherwise (4 GiB).
DEFAULT_MAX_SIZE = 4 * 1024**3
#: Seconds between two ``transfer.progress`` events of a running stream.
PROGRESS_INTERVAL = 0.4
#: Seconds before a sender dials again after a stream was lost (doubling up to the max).
REDIAL_INITIAL = 1.0
REDIAL_MAX = 30.0
#: How the network's ``stream_ended`` reason starts when no address of the receiver answered
#: the sender's dial (then the sender asks the receiver to dial back: ``DialBack``).
NO_DATA_CONNECTION = "no data connection"
#: Seconds a direct data dial (or dial back) may go without connecting before it is abandoned
#: for the relay, when one is known for the pair: a NAT that drops packets would otherwise hold
#: each stage for its whole connect timeout (about 10 s) before the relay is tried.
RELAY_HEAD_START = 2.0
#: Seconds a member asked for a shared file over a live session has to answer before the
#: next member left to ask is asked (it hashes the file again first: 0.25-0.27 s a GiB here
#: from the page cache, the files benchmark's offer_hash_s): a member whose daemon drops the
#: request (it does not yet know us as a member) would otherwise hold the request for ever
#: while others could serve it.  A late offer is still taken while nobody else's came, else
#: cancelled (:meth:`Transfers._offer_received`).
REQUEST_PATIENCE = 60.0
#: Most outgoing streams at once (each holds up to about 12 MiB of sealed pieces and TLS
#: records, and they share one uplink): a file sent into a group of 20 would otherwise stream
#: to every member who accepts at once.  More wait, "queued", and start as others end.
MAX_SENDING_STREAMS = 3
#: Receiving streams (data connections bringing a file here) at once from one peer, and from
#: everyone together: each holds about 5.5 MiB of frame and work buffers while it runs.  An
#: honest sender runs at most :data:`MAX_SENDING_STREAMS` to everyone; a hostile one whose
#: many files we accepted (an auto-accept limit) could open a connection per file.  One more
#: is refused (its sender dials again later, or asks again for a dial back).
MAX_RECEIVING_FROM_PEER = MAX_SENDING_STREAMS
MAX_RECEIVING_STREAMS = 12
#: The caps above count streams of large files; a small file's stream holds no more than its
#: file's pieces, so it counts as a share of one: a stream takes one unit per
#: :data:`STREAM_UNIT_BYTES` of its file (at least one), and a large file's
#: :data:`UNITS_PER_STREAM`.  Three streams of large files, or nine of files up to 1 MiB (four
#: of 2 MiB), run at once, within about the same memory (a receiving stream of a 1 MiB file
#: holds about 2 MiB of frames and work buffers: nine, 18 MiB, against three large files'
#: 16.5; four of 2 MiB, 12): each file of a folder costs a stream of its own (about 30 ms
#: here with a connection each, before a connection carried the next file), and small files
#: went three at a time (docs/benchmarks.md, "Folders").
STREAM_UNIT_BYTES = 1024 * 1024
UNITS_PER_STREAM = 3


def stream_units(offer: Offer) -> int:
    """The share of the stream caps a stream of *offer*'s file takes
    (:data:`UNITS_PER_STREAM` for a large file)."""
    return min(UNITS_PER_STREAM, max(1, -(-offer.size // STREAM_UNIT_BYTES)))


#: Seconds between two looks at the free space while a receiving transfer waits for room.
SPACE_PROBE_INTERVAL = 5.0
#: The default folder received files go to (under the user's home).
DEFAULT_DOWNLOADS = os.path.join("~", "Downloads")
#: Finished transfers (complete, cancelled, failed) stay listed for this long after they were
#: offered, and at most :data:`MAX_FINISHED` of them (the newest): every transfer is kept in
#: the store, loaded at unlock and listed, so they must not grow for ever.  Kept whatever their
#: age: those with a record the peer still has to hear, and the newest transfer that says
#: where we hold each file shared into a group, sent or received (where a member's
#: ``Request`` for it is answered from).  A folder sent whole counts as one: its files are
#: forgotten together, once all of them finished, so up to a folder's files more may be kept.
FINISHED_KEPT = 30 * 86400.0
MAX_FINISHED = 500
#: Seconds a transfer that ended waits for the others to be pruned (:meth:`Transfers._prune`):
#: one pass a second at most however many end, where a folder of 500 files ending file by file
#: walked and sorted the whole list 500 times (a seventh of each daemon's reactor time while
#: a folder moved, docs/benchmarks.md "The list of transfers").
PRUNE_DELAY = 1.0


class TransferNotFound(NotFound):
    """No transfer has this id (or unique id prefix): list them with ``jarvis files``."""

    kind = "not_found"


#: The control records that may travel through the mailbox (durable entries): an offer and
#: the answers to it.  ``DialBack`` asks for a connection now and goes over a session only.
_DURABLE_RECORDS = (Offer, Accept, Decline, Cancel, Complete, Request)
#: The state of a transfer we asked a group member for (a file it shared into the group,
#: ``Request``) until its offer comes; the offer is then accepted at once, into the folder
#: chosen when asking.
REQUESTED = "requested"
#: The start of an offer's reason when auto-accept could not take it (the offer waits).
NOT_ACCEPTED_BY_ITSELF = "not accepted by itself"
#: Records held while the kept transfers load (a peer's session may come up meanwhile); more
#: are dropped (the peer writes them again at its next session).
MAX_HELD_RECORDS = 4096
#: Why a side cancels a stream, or a meeting, for a transfer it does not list (finished and
#: pruned, or never accepted there); the peer shows it as "the peer cancelled: ...".
NOT_LISTED_HERE = "the transfer is no longer listed on their side"
#: Why the author of a shared file declines a request for it.
NOT_SHARED_HERE = "the file is not on this device (any more)"
SOURCE_GONE = "the file changed or is gone at the sender"
#: Why an offer, or an accept, waits: it went to the peer's mailbox (no session was up).
#: Cleared once a session carries it, or the answer or the stream comes.
OFFER_IN_MAILBOX = "offline: the offer goes through their mailbox"
ACCEPT_IN_MAILBOX = (
    "offline: the accept goes through their mailbox; the file comes when both are online"
)
#: The same when the peer has no mailbox we can use: the record waits for its session.
OFFER_WAITS = "offline: the offer goes when they come online"
ACCEPT_WAITS = "offline: the accept goes when they come online"
_OFFER_REASONS = {"session": "", "mailbox": OFFER_IN_MAILBOX, "held": OFFER_WAITS}
_ACCEPT_REASONS = {"session": "", "mailbox": ACCEPT_IN_MAILBOX, "held": ACCEPT_WAITS}
REQUEST_IN_MAILBOX = "offline: the request goes through their mailbox"
REQUEST_WAITS = "offline: the request goes when they come online"
#: Why a member's late offer answering a request is cancelled: another member's came first.
ASKED_ANOTHER = "another member sent the file meanwhile"
#: Incoming transfers one peer may have open here at once (offered and waiting for our answer,
#: or accepted and not yet complete), and all peers together.  Every transfer is kept in the
#: store, loaded at unlock and listed, so a contact or group member offering without end would
#: grow all three without end: a further offer is declined at once (:data:`TOO_MANY_OPEN`),
#: nothing is kept for it, and its sender may offer it again once some are answered.  The
#: files of a folder sent whole whose first file was taken under the cap are all taken (up to
#: a folder's most files, :meth:`Transfers._too_many_open`), so one peer has at most this and
#: one folder's worth open.
MAX_OPEN_FROM_PEER = 500
MAX_OPEN_INCOMING = 2000
TOO_MANY_OPEN = (
    "too many files from you wait here for an answer: offer it again once some are taken or "
    "declined"
)
TOO_MANY_OPEN_ALL = (
    "too many files wait here for an answer: offer it again once some are taken or declined"
)
_REQUEST_REASONS = {"session": "", "mailbox": REQUEST_IN_MAILBOX, "held": REQUEST_WAITS}
_UNTIL_SESSION = frozenset(
    {
        OFFER_IN_MAILBOX,
        ACCEPT_IN_MAILBOX,
        OFFER_WAITS,
        ACCEPT_WAITS,
        REQUEST_IN_MAILBOX,
        REQUEST_WAITS,
    }
)


def is_control_body(body: bytes) -> bool:
    """Whether a message body carries a transfer control record."""
    return body.startswith(CONTROL_PREFIX)


def control_body(record: TransferRecord) -> bytes:
    """Return the message body carrying the control *record*."""
    return CONTROL_PREFIX + encode_transfer_record(record)


@dataclass
class TransferEntry:
    """One transfer as this side keeps it (persisted as JSON, inside the encrypted store).

    :ivar notice: a control record the peer still has to hear (``"cancel"``, ``"decline"``,
        ``"complete"``), written at its next session; ``""`` when none.
    """

    offer: Offer
    peer: str
    sending: bool
    state: str
    created: float
    path: str = ""  # sender: the file; receiver: the final file once complete
    directory: str = ""  # receiver: where the partial file lives
    #: Receiver, a file of a folder sent whole: the folder made for that folder (the files of
    #: one folder sent, accepted into one place, all land below the same one).
    folder_root: str = ""
    reason: str = ""
    notice: str = ""
    done: int = 0
    # runtime only
    partial: PartialFile | None = field(default=None, repr=False)
    prepared: PreparedFile | None = field(default=None, repr=False)
    streaming: bool = False
    meter: ProgressMeter | None = field(default=None, repr=False)
    rate: float = 0.0
    eta: float | None = None
    redial: Any = None
    redial_delay: float = REDIAL_INITIAL
    #: Sender: the source kept open for the receiver's dial back (after our dial failed).
    pull_source: Any = None
    #: Sender: the receiver asked to meet at the relay while a dial of ours was in flight.
    relay_wanted: bool = False
    #: This side's data connection is a relay join (waiting for the peer there, or running).
    at_relay: bool = False
    #: The pending call that abandons a direct dial still unanswered for the relay.
    head_start: Any = None
    #: Receiver waiting for disk space: the next look at the free space (a pending call), or
    #: ``True`` while one runs; ``None`` when not waiting.  Data connections are refused
    #: meanwhile.
    space_probe: Any = None
    #: Sender: waiting for one of the :data:`MAX_SENDING_STREAMS` slots.
    queued: bool = False
    waiters: list[defer.Deferred[Any]] = field(default_factory=list)
    #: Requester: members still to ask for the file when the one asked (``peer``) does not
    #: have it; each is asked only while a session with it is up.
    ask_next: tuple[str, ...] = ()
    #: Requester: the file's author, asked last (its request may wait for it to come online)
    #: when it was offline at first; ``""`` once asked, or when it was asked first.
    ask_last: str = ""
    #: Requester: how many members were asked so far.
    asked: int = 1
    #: Told of every assignment to a kept field (:data:`KEPT_FIELDS`) or to ``streaming`` or
    #: ``queued``: set by the :class:`TransferList` the transfer is in.
    watcher: Callable[[TransferEntry, str], None] | None = field(
        default=None, repr=False, compare=False
    )
    #: Requester: the pending call that asks the next member when the one asked over a
    #: session does not answer in :data:`REQUEST_PATIENCE` seconds.
    patience: Any = None

    @property
    def id(self) -> str:
        return self.offer.transfer_id.hex()

    def to_json(self) -> dict[str, Any]:
        asking = (
            {"ask_next": list(self.ask_next), "ask_last": self.ask_last, "asked": self.asked}
            if self.ask_next or self.ask_last or self.asked != 1
            else {}
        )
        return {
            "offer": encode_transfer_record(self.offer).hex(),
            "peer": self.peer,
            "sending": self.sending,
            "state": self.state,
            "created": self.created,
            "path": self.path,
            "directory": self.directory,
            **({"folder_root": self.folder_root} if self.folder_root else {}),
            "reason": self.reason,
            "notice": self.notice,
            "done": self.done,
            **asking,
        }

    def kept_fields(self) -> tuple[Any, ...]:
        """Every field :meth:`to_json` writes, as they are now: a transfer is written to the
        store again only when these changed (``Transfers._save``)."""
        return (
            self.offer,
            self.peer,
            self.sending,
            self.state,
            self.created,
            self.path,
            self.directory,
            self.folder_root,
            self.reason,
            self.notice,
            self.done,
            self.ask_next,
            self.ask_last,
            self.asked,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TransferEntry:
        offer = parse_transfer_record(bytes.fromhex(data["offer"]))
        if not isinstance(offer, Offer):
            raise ValueError("not an offer")
        return cls(
            offer=offer,
            peer=str(data["peer"]),
            sending=bool(data["sending"]),
            state=str(data["state"]),
            created=float(data["created"]),
            path=str(data.get("path", "")),
            directory=str(data.get("directory", "")),
            folder_root=str(data.get("folder_root", "")),
            reason=str(data.get("reason", "")),
            notice=str(data.get("notice", "")),
            done=int(data.get("done", 0)),
            ask_next=tuple(str(u) for u in data.get("ask_next", [])),
            ask_last=str(data.get("ask_last", "")),
            asked=int(data.get("asked", 1)),
        )

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        watcher = self.__dict__.get("watcher")
        if watcher is not None and name in _WATCHED:
            watcher(self, name)


#: The fields :meth:`TransferEntry.to_json` writes (what :meth:`TransferEntry.kept_fields`
#: compares): assigning one marks the transfer to be written again.  They are assigned, never
#: changed in place (``ask_next`` is a tuple).
KEPT_FIELDS = frozenset(
    {
        "offer",
        "peer",
        "sending",
        "state",
        "created",
        "path",
        "directory",
        "folder_root",
        "reason",
        "notice",
        "done",
        "ask_next",
        "ask_last",
        "asked",
    }
)
#: What :class:`TransferList` is told of: the kept fields, and the flags it indexes.
_WATCHED = KEPT_FIELDS | {"streaming", "queued"}
#: The kept fields its counts of open incoming transfers and folder roots depend on.
_COUNTED = frozenset({"offer", "peer", "sending", "state", "folder_root"})


def _fire(waiters: list[defer.Deferred[None]]) -> None:
    """Fire each of *waiters* (a list no one appends to any more)."""
    for d in waiters:
        d.callback(None)


def _count_down(counts: dict[Any, int], key: Any) -> None:
    """One less under *key* in *counts* (the key goes at zero)."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class TransferList(MutableMapping[str, TransferEntry]):
    """The transfers by id, keeping what :class:`Transfers` asks of them at every event
    without a walk through all of them: which changed since the last write to the store
    (:attr:`dirty`) and which were removed (:attr:`removed`), the streams running
    (:attr:`streaming`), the outgoing transfers waiting for a slot (:attr:`queued`), the
    incoming ones still open by peer (:attr:`open_by_peer`, at each offer) and the folders the
    files of folders sent whole landed in (:attr:`roots`, at each accept).

    Each transfer added is watched (:attr:`TransferEntry.watcher`): assigning one of its kept
    fields marks it dirty, its ``streaming`` and ``queued`` flags move it in and out of the
    indexes.  Reads go straight to the dict inside.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, TransferEntry] = {}
        #: Ids of the transfers added, or whose kept fields were assigned, since the caller
        #: last took them (:meth:`take_changes`).
        self.dirty: set[str] = set()
        #: Ids of the transfers removed since the caller last took them.
        self.removed: set[str] = set()
        #: The transfers whose data connection runs (or is being dialled), by id.
        self.streaming: dict[str, TransferEntry] = {}
        #: The outgoing transfers waiting for a sending slot, by id.
        self.queued: dict[str, TransferEntry] = {}
        #: The incoming transfers still open (not ended, not a request waiting for its
        #: offer): the peer each is counted under, by id; and how many each peer has.
        self.open_in: dict[str, str] = {}
        self.open_by_peer: dict[str, int] = {}
        #: Of those, the files of folders sent whole, by ``(peer, folder id)``: how many.
        self.open_by_folder: dict[tuple[str, bytes], int] = {}
        self._open_folder: dict[str, tuple[str, bytes]] = {}
        #: The folder made for each folder sent whole, by ``(peer, folder id)``: the root
        #: of each of its files given one, by id.
        self.roots: dict[tuple[str, bytes], dict[str, str]] = {}
        self._rooted: dict[str, tuple[str, bytes]] = {}

    def __getitem__(self, tid: str) -> TransferEntry:
        return self._by_id[tid]

    def __setitem__(self, tid: str, entry: TransferEntry) -> None:
        old = self._by_id.get(tid)
        if old is not None and old is not entry:
            self._forget(tid, old)
        self._by_id[tid] = entry
        entry.watcher = self._assigned
        self.dirty.add(tid)
        self.removed.discard(tid)
        self._index(entry, "streaming")
        self._index(entry, "queued")
        self._recount(tid, entry)

    def __delitem__(self, tid: str) -> None:
        entry = self._by_id.pop(tid)
        self._forget(tid, entry)
        self.removed.add(tid)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, tid: object) -> bool:
        return tid in self._by_id

    def get(self, tid: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._by_id.get(tid, default)

    def values(self) -> ValuesView[TransferEntry]:
        return self._by_id.values()

    def items(self) -> ItemsView[str, TransferEntry]:
        return self._by_id.items()

    def take_changes(self) -> tuple[set[str], set[str]]:
        """``(dirty, removed)`` since the last call; both start empty again."""
        dirty, removed = self.dirty, self.removed
        self.dirty, self.removed = set(), set()
        return dirty, removed

    def _forget(self, tid: str, entry: TransferEntry) -> None:
        entry.watcher = None
        self.dirty.discard(tid)
        self.streaming.pop(tid, None)
        self.queued.pop(tid, None)
        self._recount(tid, None)

    def _assigned(self, entry: TransferEntry, name: str) -> None:
        tid = entry.id
        if self._by_id.get(tid) is not entry:
            return
        if name == "streaming" or name == "queued":
            self._index(entry, name)
        else:
            self.dirty.add(tid)
            if name in _COUNTED:
                self._recount(tid, entry)

    def _recount(self, tid: str, entry: TransferEntry | None) -> None:
        """Count transfer *tid* again as it is now (*entry*; ``None``: removed) in
        :attr:`open_in` and :attr:`roots`."""
        peer = self.open_in.pop(tid, None)
        if peer is not None:
            _count_down(self.open_by_peer, peer)
        folder = self._open_folder.pop(tid, None)
        if folder is not None:
            _count_down(self.open_by_folder, folder)
        key = self._rooted.pop(tid, None)
        if key is not None:
            roots = self.roots[key]
            del roots[tid]
            if not roots:
                del self.roots[key]
        if entry is None:
            return
        if not entry.sending and entry.state not in FINAL_STATES and entry.state != REQUESTED:
            self.open_in[tid] = entry.peer
            self.open_by_peer[entry.peer] = self.open_by_peer.get(entry.peer, 0) + 1
            if entry.offer.folder_id:
                folder = (entry.peer, entry.offer.folder_id)
                self._open_folder[tid] = folder
                self.open_by_folder[folder] = self.open_by_folder.get(folder, 0) + 1
        if entry.folder_root:
            key = (entry.peer, entry.offer.folder_id)
            self._rooted[tid] = key
            self.roots.setdefault(key, {})[tid] = entry.folder_root

    def _index(self, entry: TransferEntry, flag: str) -> None:
        index = self.streaming if flag == "streaming" else self.queued
        if getattr(entry, flag):
            index[entry.id] = entry
        else:
            index.pop(entry.id, None)


class Transfers:
    """Every file transfer of the unlocked identity: see the module docstring.

    :param clock: ``IReactorTime`` (timers, the progress meter).
    :param now: wall-clock seconds since the epoch (creation times).
    :param emit: ``(event, payload)`` to API clients.
    :param run_blocking: runs a blocking callable off the reactor thread, returns a Deferred.
    :param display_name: the contact's display name for a uid.
    :param policy: returns the receive policy (size cap, reserve) and auto-accept limit for a
        contact uid: ``(ReceivePolicy, auto_accept_bytes)``.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: Any,
        now: Callable[[], float],
        emit: Callable[[str, dict[str, Any]], None],
        run_blocking: Callable[..., defer.Deferred[Any]],
        display_name: Callable[[str], str],
        downloads: str | None = None,
    ) -> None:
        self.clock = clock
        self.now = now
        self._emit = emit
        self._run = run_blocking
        self._display_name = display_name
        self._default_downloads = downloads or os.path.expanduser(DEFAULT_DOWNLOADS)
        self._settings: dict[str, Any] = {}
        self._store: Any = None
        self._network: Any = None
        self._sessions: Callable[[str], Any] = lambda uid: None
        self._entries = TransferList()
        #: Whether the kept transfers are loaded (:meth:`open` done, :meth:`close` not yet):
        #: until then records are held (:attr:`_held`) and data connections refused, so
        #: nothing a peer says while the store is read lands in a list about to be replaced.
        self._loaded = False
        #: Records that arrived while loading: ``(uid, data, group_id)``, answered in order
        #: once loaded (at most :data:`MAX_HELD_RECORDS`).
        self._held: list[tuple[str, bytes, bytes | None]] = []
        #: Ids of the transfers whose partial file is being reopened (:meth:`_reopen`).
        self._reopening: set[str] = set()
        #: Ids of the offers being accepted (:meth:`accept`, one at a time each).
        self._accepting: set[str] = set()
        self._ticker: Any = None
        #: The pending call that prunes the finished transfers (:data:`PRUNE_DELAY`).
        self._pruning: Any = None
        self._saving: defer.Deferred[Any] | None = None
        #: Callers waiting for the changes made so far to be written (:meth:`_kept`).
        self._keep_waiters: list[defer.Deferred[None]] = []
        self._save_again = False
        #: The kept fields of each transfer as last written to the store (by id).
        self._stored: dict[str, tuple[Any, ...]] = {}
        #: Settings of pruned transfers whose deletion failed: deleted at the next write.
        self._unremoved: set[str] = set()
        #: Whether the single document of an earlier Jarvis is still to be deleted.
        self._drop_document = False
        #: The pending call that starts queued outgoing streams once a slot freed.
        self._dequeue: Any = None
        #: ``(member, content hash)`` of the requests for a shared file being answered (the
        #: file hashed again off the reactor): one at a time each, so a member cannot make us
        #: hash a file in a loop.
        self._answering: set[tuple[str, bytes]] = set()
        #: Held while the folder of a file of a folder sent whole is found or made, so two
        #: files of one folder accepted at once land in the same one.
        self._folder_lock = defer.DeferredLock()
        #: Offers declined unseen per peer (:meth:`_too_many_open`), for a bounded log.
        self._refused: dict[str, int] = {}
        #: Receiving streams made to wait per peer (:meth:`_receiving_full`), for the same.
        self._streams_refused: dict[str, int] = {}
        #: Transfers whose data connection was refused while the receiving slots were full,
        #: in order (an ordered set): the first is called for when a slot frees.
        self._waiting_slot: dict[str, None] = {}
        #: Whether an offer from *uid* into group *gid* (``b""``: to us alone) is taken: the
        #: node allows contacts for ``b""`` and the members of a group we are in for a group.
        self.may_offer: Callable[[str, bytes], bool] = lambda uid, gid: True
        #: How a member of group *gid* is shown there (None: as a contact is).
        self.member_name: Callable[[bytes, str], str | None] = lambda gid, uid: None
        #: Writes a control record (encoded) for *uid* as a durable entry when no session is
        #: up, so the peer gets it through its mailbox; the third argument is the group the
        #: transfer's file was sent into (``b""``: none).  Returns whether it was taken (the
        #: node: a contact whose mailbox we know, or a member of that group whose queue for it
        #: we know).  While it is not, records wait for a session.
        self.deposit: Callable[[str, bytes, bytes], bool] = lambda uid, record, gid: False

    # -- life cycle ----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def open(self, store: Any, network: Any, sessions: Callable[[str], Any]) -> Any:
        """Load the kept transfers (after unlock); *sessions(uid)* is the live session or None.

        Sessions may come up (and peers write records) while the store is read: those records
        are held and answered once the kept transfers are loaded (an offer received then was
        lost with the list the load replaced; a stream was refused as unknown)."""
        self._store = store
        self._network = network
        self._sessions = sessions
        self._loaded = False
        raw_policy = yield store.run(queries.get_setting, POLICY_SETTING, write=False)
        self._settings = {}
        if raw_policy:
            try:
                self._settings = _checked_policy(json.loads(raw_policy))
            except (ValueError, TypeError):
                self.log.warn("file transfer settings unreadable: using defaults")
        kept = yield store.run(queries.settings_named, ENTRY_PREFIX, write=False)
        raw = yield store.run(queries.get_setting, SETTING, write=False)
        self._entries = TransferList()
        self._stored = {}
        for key in sorted(kept):
            try:
                entry = TransferEntry.from_json(json.loads(kept[key]))
            except (ValueError, KeyError, TypeError, MalformedTransferRecord):
                self.log.warn("a kept transfer is unreadable: left out")
                continue
            self._entries[entry.id] = entry
            self._stored[entry.id] = entry.kept_fields()
        self._drop_document = raw is not None
        if raw:
            try:
                for data in json.loads(raw).values():
                    entry = TransferEntry.from_json(data)
                    self._entries.setdefault(entry.id, entry)
            except (ValueError, KeyError, TypeError, MalformedTransferRecord):
                self.log.warn("kept transfers unreadable: starting with none")
        if self._prune() or self._drop_document:
            self._save()
        for entry in self._entries.values():
            if entry.state == "streaming":
                entry.state = "accepted"  # the stream died with the previous run
            if not entry.sending and entry.state == "accepted" and entry.reason == DISK_FULL:
                self._wait_for_space(entry)
        self._loaded = True
        # A session that came up while the kept transfers were loading found none of them:
        # catch up now, or an accepted transfer would wait for the next session to resume.
        for uid in sorted({e.peer for e in self._entries.values()}):
            if sessions(uid) is not None:
                self.session_established(uid)
        held, self._held = self._held, []
        for uid, data, group_id in held:
            self.record_received(uid, data, group_id)
        # Offers the daemon was to accept by itself and had not yet when it stopped (killed
        # while a folder's offers came in, say): accepted now.
        for entry in list(self._entries.values()):
            if (
                not entry.sending
                and entry.state == "offered"
                and entry.id not in self._accepting  # a held offer taken just now
                and self._takes_by_itself(entry)
            ):
                self.accept(entry.id).addErrback(self._not_accepted_by_itself, entry)

    def close(self) -> None:
        """Forget the runtime state (at lock); the kept state stays in the store."""
        self._loaded = False
        self._held = []
        self._reopening = set()
        for entry in self._entries.values():
            self._cancel_redial(entry)
            self._stop_patience(entry)
            self._stop_space_probe(entry)
            if entry.partial is not None and not entry.streaming:
                entry.partial.close()
            entry.partial = None
        if self._ticker is not None and self._ticker.active():
            self._ticker.cancel()
        self._ticker = None
        for call in (self._dequeue, self._pruning):
            if call is not None and call.active():
                call.cancel()
        self._dequeue = self._pruning = None
        self._store = None
        self._network = None

    def _save(self) -> defer.Deferred[Any]:
        """Write the transfers that changed since the last write to the store, and forget
        those pruned (one write at a time, the latest state wins)."""
        if self._saving is not None and self._store is not None:
            self._save_again = True
            return self._saving
        waiters, self._keep_waiters = self._keep_waiters, []
        values, removed = self._changes() if self._store is not None else ({}, [])
        if not values and not removed:
            _fire(waiters)
            return defer.succeed(None)
        d = self._store.run(queries.change_settings, values, removed, write=True)
        self._saving = d

        def written(result: Any) -> Any:
            if SETTING in removed:
                self._drop_document = False
            return result

        def failed(failure: Any) -> None:
            # written again at the next save
            for key in values:
                tid = key[len(ENTRY_PREFIX) :]
                self._stored.pop(tid, None)
                if tid in self._entries:
                    self._entries.dirty.add(tid)
            self._unremoved.update(k for k in removed if k != SETTING)
            self.log.failure("keeping the transfers failed", failure)

        def done(result: Any) -> Any:
            self._saving = None
            _fire(waiters)
            if self._save_again:
                self._save_again = False
                self._save()
            return result

        d.addCallbacks(written, failed)
        d.addBoth(done)
        return d

    def _kept(self) -> defer.Deferred[None]:
        """A Deferred that fires once the changes made so far are written to the store (a
        failed write too: it is logged, and tried again at the next)."""
        d: defer.Deferred[None] = defer.Deferred()
        self._keep_waiters.append(d)
        self._save()
        return d

    def _changes(self) -> tuple[dict[str, str], list[str]]:
        """The settings to write (the transfers whose kept fields changed since they were
        last written, as JSON) and to delete (transfers pruned since); the written state is
        taken as stored from now on.  Only the transfers added, assigned or removed since the
        last write are looked at (:meth:`TransferList.take_changes`)."""
        values: dict[str, str] = {}
        dirty, dropped = self._entries.take_changes()
        for tid in dirty:
            entry = self._entries.get(tid)
            if entry is None:
                continue
            fields = entry.kept_fields()
            if self._stored.get(tid) != fields:
                values[ENTRY_PREFIX + tid] = json.dumps(entry.to_json())
                self._stored[tid] = fields
        gone = [tid for tid in dropped if tid in self._stored and tid not in self._entries]
        for tid in gone:
            del self._stored[tid]
        removed = sorted({ENTRY_PREFIX + tid for tid in gone} | self._unremoved)
        self._unremoved = set()
        if self._drop_document:
            removed.append(SETTING)
        return values, removed

    # -- the receiving policy ------------------------------------------------------------------

    @property
    def downloads(self) -> str:
        """The folder accepted files go to when none is given."""
        return str(self._settings.get("downloads") or self._default_downloads)

    def _policy(self, uid: str) -> tuple[ReceivePolicy, int]:
        """``(policy, auto-accept limit in bytes)`` for files from *uid* (limit 0: ask)."""
        max_size = int(self._settings.get("max_size", DEFAULT_MAX_SIZE))
        auto = int(self._settings.get("auto_accept", {}).get(uid, 0))
        return ReceivePolicy(max_size=max_size), min(auto, max_size)

    def policy_view(self) -> dict[str, Any]:
        """``{max_size, downloads, auto_accept: {uid: bytes}}``."""
        return {
            "max_size": int(self._settings.get("max_size", DEFAULT_MAX_SIZE)),
            "downloads": self.downloads,
            "auto_accept": dict(self._settings.get("auto_accept", {})),
        }

    @defer.inlineCallbacks
    def set_policy(
        self,
        *,
        max_size: int | None = None,
        downloads: str | None = None,
        auto_accept: tuple[str, int] | None = None,
    ) -> Any:
        """Change the size cap, the default folder or one contact's auto-accept limit
        (0 removes it); kept encrypted in the store.  Returns :meth:`policy_view`."""
        settings = dict(self._settings)
        if max_size is not None:
            settings["max_size"] = max_size
        if downloads is not None:
            settings["downloads"] = os.path.abspath(os.path.expanduser(downloads))
        if auto_accept is not None:
            uid, limit = auto_accept
            table = dict(settings.get("auto_accept", {}))
            if limit > 0:
                table[uid] = limit
            else:
                table.pop(uid, None)
            settings["auto_accept"] = table
        self._settings = _checked_policy(settings)
        if self._store is not None:
            yield self._store.run(
                queries.set_setting, POLICY_SETTING, json.dumps(self._settings), write=True
            )
        view = self.policy_view()
        self._emit("transfer.policyChanged", {"policy": view})
        return view

    # -- views -----------------------------------------------------------------------------

    def view(self, entry: TransferEntry) -> dict[str, Any]:
        """The API view of a transfer (names escaped for terminals by the clients)."""
        offer = entry.offer
        return {
            "id": entry.id,
            "contact": entry.peer,
            "contact_name": (offer.group_id and self.member_name(offer.group_id, entry.peer))
            or self._display_name(entry.peer),
            "direction": "out" if entry.sending else "in",
            "name": offer.name,
            "folder": offer.folder or None,
            "folder_id": offer.folder_id.hex() or None,
            "size": offer.size,
            "media_type": offer.media_type,
            "state": entry.state,
            "reason": entry.reason,
            "bytes": entry.done,
            "rate": entry.rate,
            "eta": entry.eta,
            "path": entry.path or None,
            "directory": entry.directory or None,
            "created": entry.created,
            "group": offer.group_id.hex() or None,
        }

    def list(self) -> list[dict[str, Any]]:
        """Every transfer's view, newest first."""
        entries = sorted(self._entries.values(), key=lambda e: e.created, reverse=True)
        return [self.view(e) for e in entries]

    def find(self, ref: str) -> TransferEntry:
        """Return the transfer whose id starts with *ref* (at least 4 hex digits).

        :raises TransferNotFound: if none or several match.
        """
        ref = ref.strip().lower()
        if ref in self._entries:  # a whole id (what clients hold): no walk through the list
            return self._entries[ref]
        matches = [e for k, e in self._entries.items() if len(ref) >= 4 and k.startswith(ref)]
        if len(matches) != 1:
            raise TransferNotFound(f"no single transfer with id {terminal_safe(ref)!r}")
        return matches[0]

    def _prune_later(self) -> None:
        self._pruning = None
        if self._prune():
            self._save()

    def _prune(self) -> bool:
        """Forget the finished transfers beyond :data:`FINISHED_KEPT` and
        :data:`MAX_FINISHED`; returns whether any was."""
        finished = [e for e in self._entries.values() if e.state in FINAL_STATES]
        now = self.now()
        if len(finished) <= MAX_FINISHED and all(
            now - e.created <= FINISHED_KEPT for e in finished
        ):
            return False  # none is over either limit
        sources: dict[tuple[bytes, bytes], TransferEntry] = {}
        for e in self._entries.values():
            key = (e.offer.group_id, e.offer.content_hash)
            if _holds(e) and e.offer.group_id:
                if key not in sources or e.created > sources[key].created:
                    sources[key] = e
        kept = {e.id for e in sources.values()}
        # The files of a folder sent whole go as one batch, once every one of them finished:
        # its one line (the UI's, ``jarvis files``) never counts only some of them.
        moving = {e.offer.folder_id for e in self._entries.values() if e.state not in FINAL_STATES}
        batches: dict[object, list[TransferEntry]] = {}
        for e in finished:
            batches.setdefault(e.offer.folder_id or e.id, []).append(e)
        newest_first = sorted(
            batches.values(), key=lambda b: max(e.created for e in b), reverse=True
        )
        dropped: list[str] = []
        newer = 0  # finished transfers in the batches before this one
        for batch in newest_first:
            age = now - max(e.created for e in batch)
            over = newer >= MAX_FINISHED or age > FINISHED_KEPT
            newer += len(batch)
            if over and not (batch[0].offer.folder_id and batch[0].offer.folder_id in moving):
                dropped.extend(
                    e.id for e in batch if e.id not in kept and not e.notice and not e.waiters
                )
        for tid in dropped:
            del self._entries[tid]
        return bool(dropped)

    def _changed(self, entry: TransferEntry) -> None:
        if entry.state in FINAL_STATES and self._pruning is None:
            self._pruning = self.clock.callLater(PRUNE_DELAY, self._prune_later)
        self._save()
        self._emit("transfer.changed", {"transfer": self.view(entry)})
        if entry.state in FINAL_STATES:
            waiters, entry.waiters = entry.waiters, []
            for d in waiters:
                d.callback(self.view(entry))

    def wait(self, entry: TransferEntry) -> defer.Deferred[Any]:
        """A Deferred firing with the view once *entry* reaches a final state.  Cancelling it
        forgets the wait (a client that asks and goes, again and again, leaves nothing
        behind on a transfer that lasts)."""
        if entry.state in FINAL_STATES:
            return defer.succeed(self.view(entry))

        def forget(d: defer.Deferred[Any]) -> None:
            if d in entry.waiters:
                entry.waiters.remove(d)

        d: defer.Deferred[Any] = defer.Deferred(forget)
        entry.waiters.append(d)
        return d

    # -- control records -------------------------------------------------------------------------

    def _send_control(
        self, uid: str, record: TransferRecord, group_id: bytes | None = None
    ) -> bool:
        session = self._sessions(uid)
        if session is None:
            # No session: an offer and the answers to it go as a durable entry, through the
            # peer's mailbox where it has one (the node decides); a DialBack only makes sense
            # live.
            if isinstance(record, _DURABLE_RECORDS):
                gid = self._group_of(record) if group_id is None else group_id
                return self.deposit(uid, encode_transfer_record(record), gid)
            return False
        try:
            session.send_message(os.urandom(16), control_body(record), int(self.now() * 1000))
        except Exception:
            self.log.failure("writing a transfer record failed")
            return False
        return True

    def _group_of(self, record: TransferRecord) -> bytes:
        """The group the transfer *record* is about (``b""``: none, or not known here)."""
        if isinstance(record, Offer | Request):
            return record.group_id
        tid = getattr(record, "transfer_id", None)
        entry = self._entries.get(tid.hex()) if isinstance(tid, bytes) else None
        return entry.offer.group_id if entry is not None else b""

    def _write(self, uid: str, record: TransferRecord, group_id: bytes | None = None) -> str:
        """Write *record* to *uid* (:meth:`_send_control`); say how: ``"session"``,
        ``"mailbox"`` (no session was up; it went as a durable entry), or ``"held"`` (it waits
        for the next session)."""
        live = self._sessions(uid) is not None
        written = self._send_control(uid, record, group_id)
        return "session" if live else "mailbox" if written else "held"

    def _notice_record(self, entry: TransferEntry) -> TransferRecord | None:
        tid = entry.offer.transfer_id
        if entry.notice == "cancel":
            return Cancel(tid, entry.reason[:200])
        if entry.notice == "decline":
            return Decline(tid, entry.reason[:200])
        if entry.notice == "complete":
            return Complete(tid)
        return None

    def _send_notice(self, entry: TransferEntry) -> None:
        record = self._notice_record(entry)
        if record is not None and self._write(entry.peer, record) == "session":
            # Written over a session: done.  One that went to the mailbox is written again
            # over the next session too (a peer that dropped it, or a lost deposit, still
            # hears it; a second copy changes nothing).
            entry.notice = ""
            self._save()

    def session_established(self, uid: str) -> None:
        """A session with *uid* is up: write what the peer still needs, resume streams."""
        for entry in list(self._entries.values()):
            if entry.peer != uid:
                continue
            if entry.reason in _UNTIL_SESSION:
                entry.reason = ""  # written over this session below
                self._changed(entry)
            if entry.notice:
                self._send_notice(entry)
            elif entry.state == "offered" and entry.sending:
                self._send_control(uid, entry.offer)
            elif not entry.sending and entry.state in ("accepted", "streaming"):
                self._send_control(uid, Accept(entry.offer.transfer_id))
            elif not entry.sending and entry.state == REQUESTED:
                self._send_control(uid, _request_of(entry))
                self._be_patient(entry)
            elif entry.sending and entry.state == "accepted":
                entry.redial_delay = REDIAL_INITIAL
                self._start_stream(entry)

    def control_received(self, uid: str, body: bytes) -> None:
        """A control record arrived from *uid* (a message body with :data:`CONTROL_PREFIX`)."""
        self.record_received(uid, body[len(CONTROL_PREFIX) :])

    def record_received(self, uid: str, data: bytes, group_id: bytes | None = None) -> None:
        """A control record's bytes arrived from *uid*: over a session (in a message body) or
        as a durable entry (through the mailbox); refused if malformed, else handled.

        :param group_id: the group a member's entry said the record is about (it came by a
            group's queue); a record about another transfer, or outside that group, is
            dropped.
        """
        if not self._loaded:
            if self._store is None:
                return  # locked: the peer writes it again at the next session
            if len(self._held) >= MAX_HELD_RECORDS:
                self.log.warn(
                    "transfer record from {uid} dropped: too many while loading", uid=log_id(uid)
                )
                return
            self._held.append((uid, data, group_id))
            return
        try:
            record = parse_transfer_record(data)
        except MalformedTransferRecord as e:
            self.log.warn("bad transfer record from {uid}: {e}", uid=log_id(uid), e=e.reason)
            return
        if group_id is not None and self._group_of(record) != group_id:
            self.log.warn("transfer record from {uid} outside its group", uid=log_id(uid))
            return
        if isinstance(record, Offer):
            self._offer_received(uid, record)
            return
        if isinstance(record, Request):
            self._request_received(uid, record)
            return
        tid = getattr(record, "transfer_id", b"")
        entry = self._entries.get(tid.hex()) if isinstance(tid, bytes) else None
        if isinstance(record, DialBack | Accept) and (
            entry is None or entry.peer != uid or entry.state in FINAL_STATES
        ):
            # the peer accepts, or asks to meet (dial back, the relay) for, a file that ended
            # here or that we no longer list (it missed our Cancel, say, and writes Accept at
            # each session): say how it ended, as for a data connection (inbound_stream)
            self._answer_stale_stream(uid, tid, entry)
            return
        if entry is None or entry.peer != uid:
            return
        if isinstance(record, Accept) and entry.sending:
            if entry.state == "offered":
                entry.state = "accepted"
                if entry.reason in _UNTIL_SESSION:
                    entry.reason = ""
                self._changed(entry)
            if entry.state == "accepted" and not entry.streaming:
                entry.redial_delay = REDIAL_INITIAL
                self._start_stream(entry)
            elif entry.state == "accepted" and entry.at_relay:
                # the receiver (restarted, or not ready at our first ask) has not joined yet
                self._send_control(uid, DialBack(entry.offer.transfer_id))
        elif isinstance(record, DialBack) and not entry.sending:
            self._dial_back(entry)
        elif isinstance(record, DialBack) and entry.sending:
            # the receiver could not dial us either and waits at the relay: meet it there
            self._relay_requested(entry)
        elif isinstance(record, Decline) and not entry.sending and entry.state == REQUESTED:
            said = _safe(record.reason) or "declined"
            if self._ask_another(entry):
                return
            if entry.asked > 1:
                reason = f"none of the {entry.asked} members asked has it (the last: {said})"
            else:
                reason = "the sender declined: " + said
            self._finish(entry, "cancelled", reason, "")
        elif isinstance(record, Decline) and entry.sending and entry.state == "offered":
            said = _safe(record.reason)
            # a decline with no reason of its own carries "declined": not "declined: declined"
            reason = "declined" if said in ("", "declined") else "declined: " + said
            self._finish(entry, "cancelled", reason, notice="")
        elif isinstance(record, Cancel) and entry.state not in FINAL_STATES:
            said = _safe(record.reason)
            # as for a decline: a cancel with no reason of its own carries "cancelled"
            reason = "the peer cancelled" + ("" if said in ("", "cancelled") else ": " + said)
            self._finish(entry, "cancelled", reason, "")
        elif isinstance(record, Complete) and entry.sending and entry.state not in FINAL_STATES:
            entry.done = entry.offer.size
            self._finish(entry, "complete", "", "")

    def _offer_received(self, uid: str, offer: Offer) -> None:
        known = self._entries.get(offer.transfer_id.hex())
        if known is not None:
            if known.peer != uid:
                if (
                    not known.sending
                    and known.offer.group_id
                    and known.offer.group_id == offer.group_id
                    and self.may_offer(uid, offer.group_id)
                ):
                    # A member we asked for this file before asking another (our transfer id
                    # went to nobody else), answering late (REQUEST_PATIENCE): while we still
                    # wait, its offer of the very file is taken; else it is cancelled.
                    if known.state == REQUESTED and SharedFile.of(known.offer).matches(offer):
                        known.peer = uid
                        self._requested_offer(known, offer)
                    else:
                        self._send_control(uid, Cancel(offer.transfer_id, ASKED_ANOTHER))
                return
            if known.state == REQUESTED and not known.sending:
                self._requested_offer(known, offer)
            elif known.notice:
                self._send_notice(known)
            elif known.state in ("accepted", "streaming") and not known.sending:
                self._send_control(uid, Accept(offer.transfer_id))
            elif known.state == "complete" and not known.sending:
                self._send_control(uid, Complete(offer.transfer_id))
            elif (
                known.state in ("cancelled", "failed")
                and not known.sending
                and self.may_offer(uid, offer.group_id)  # a blocked sender is told nothing
            ):
                # offered again after our answer was lost (or, for a request we cancelled,
                # offered after our cancel passed the sender's hashing): say it again
                self._send_control(uid, Cancel(offer.transfer_id, known.reason[:200]))
            return
        if not self.may_offer(uid, offer.group_id):
            # A group peer who is not a contact offering outside a group, or an offer into a
            # group we are not in (or the sender is not in): not ours to show.
            self.log.warn(
                "file offer from {uid} dropped: {why}",
                uid=log_id(uid),
                why="not a member of that group" if offer.group_id else "not a contact",
            )
            return
        crowded = self._too_many_open(uid, offer)
        if crowded:
            self._warn_bounded(
                self._refused, uid, "file offers from {uid} declined: {why}", why=crowded
            )
            self._write(uid, Decline(offer.transfer_id, crowded), offer.group_id or None)
            return
        entry = TransferEntry(
            offer=offer, peer=uid, sending=False, state="offered", created=self.now()
        )
        self._entries[entry.id] = entry
        self.log.info(
            "file offered by {uid}: transfer {tid}, {size} bytes",
            uid=log_id(uid),
            tid=log_id(entry.id),
            size=offer.size,
        )
        auto = self._takes_by_itself(entry)
        self._emit("transfer.offered", {"transfer": self.view(entry), "auto_accept": auto})
        self._changed(entry)
        if auto:
            self.accept(entry.id).addErrback(self._not_accepted_by_itself, entry)

    def _takes_by_itself(self, entry: TransferEntry) -> bool:
        """Whether the offer of *entry* is accepted without asking: its sender has an
        auto-accept limit (none: ask, whatever the size, an empty file too) and the file is
        within it, and its sender may offer it."""
        _policy, limit = self._policy(entry.peer)
        return (
            limit > 0
            and entry.offer.size <= limit
            and self.may_offer(entry.peer, entry.offer.group_id)
        )

    def _not_accepted_by_itself(self, failure: Any, entry: TransferEntry) -> None:
        """The daemon could not accept an offer by itself (auto-accept): no room in the
        downloads folder, the folder gone or not writable.  The offer waits for an answer,
        saying why (its ``reason``, in ``transfer.changed``), so that a client asks."""
        why = failure.getErrorMessage()
        self.log.warn(
            "transfer {tid}: auto-accept refused ({kind})",
            tid=log_id(entry.id),
            kind=type(failure.value).__name__,
        )
        if entry.state == "offered" and self._entries.get(entry.id) is entry:
            entry.reason = f"{NOT_ACCEPTED_BY_ITSELF}: {why}"[:500]
            self._changed(entry)

    def _too_many_open(self, uid: str, offer: Offer) -> str:
        """Why a new *offer* from *uid* is declined unseen (:data:`MAX_OPEN_FROM_PEER`,
        :data:`MAX_OPEN_INCOMING`), or ``""`` if it may be listed.  A file of a folder sent
        whole whose other files are listed already is taken past the peer's own cap, up to
        the most files a folder has (:data:`~jarvis.files.send.MAX_FOLDER_FILES`): a folder
        is taken whole, not cut where the cap fell (a folder of 500 files sent while a few
        other files from that contact waited lost its last ones); a peer still never has
        more than :data:`MAX_OPEN_FROM_PEER` and one folder's worth open."""
        mine = self._entries.open_by_peer.get(uid, 0)
        every = len(self._entries.open_in)
        if mine >= MAX_OPEN_FROM_PEER:
            listed = self._entries.open_by_folder.get((uid, offer.folder_id), 0)
            continues = bool(offer.folder_id) and 0 < listed < MAX_FOLDER_FILES
            if not continues or mine >= MAX_OPEN_FROM_PEER + MAX_FOLDER_FILES:
                return TOO_MANY_OPEN
        if every >= MAX_OPEN_INCOMING:
            return TOO_MANY_OPEN_ALL
        return ""

    def _requested_offer(self, entry: TransferEntry, offer: Offer) -> None:
        """The offer answering our request arrived: taken if it is the file asked for, and
        accepted at once into the folder chosen when asking."""
        asked = SharedFile.of(entry.offer)
        if offer.group_id != entry.offer.group_id or not asked.matches(offer):
            self.log.warn(
                "transfer {tid}: the offer is not the file asked for", tid=log_id(entry.id)
            )
            self._finish(
                entry,
                "cancelled",
                "the sender offered another file than the one asked for",
                "cancel",
            )
            return
        if not self.may_offer(entry.peer, offer.group_id):
            return  # no longer members together: the sweep ends it
        self._stop_patience(entry)
        entry.offer = offer
        entry.state = "offered"
        entry.reason = ""
        self._changed(entry)

        def not_accepted(failure: Any) -> None:
            entry.reason = "not accepted: " + failure.getErrorMessage()
            self._changed(entry)

        self.accept(entry.id, entry.directory or None).addErrback(not_accepted)

    def _request_received(self, uid: str, request: Request) -> None:
        """A member asks for a file shared into a group, by us or received by us complete:
        offer it (a transfer of its own, under the id the member chose) if we still have it
        unchanged, else decline.  The requester checks the offer against the group's record
        of the file, so it does not matter who serves it."""
        tid = request.transfer_id
        known = self._entries.get(tid.hex())
        if known is not None:
            # asked again (a restart, a new session): answer as before, idempotently
            if known.peer == uid and known.sending and known.notice:
                self._send_notice(known)
            elif known.peer == uid and known.sending and known.state == "offered":
                self._send_control(uid, known.offer)
            return
        if not self.may_offer(uid, request.group_id):
            self.log.warn("file request from {uid} dropped: not a member", uid=log_id(uid))
            return
        answering = (uid, request.content_hash)
        if answering in self._answering:
            return  # a flood of requests for the file being hashed: one at a time
        sources = [
            e
            for e in self._entries.values()
            if _holds(e)
            and e.offer.group_id == request.group_id
            and e.offer.content_hash == request.content_hash
        ]
        if not sources:
            self._write(uid, Decline(tid, NOT_SHARED_HERE), request.group_id)
            return
        source = max(sources, key=lambda e: e.created)
        offer = replace(source.offer, transfer_id=tid, secret=new_transfer_secret())
        superseded = [
            e for e in sources if e.sending and e.peer == uid and e.state not in FINAL_STATES
        ]
        self._answering.add(answering)
        self.log.info(
            "file request from {uid}: transfer {tid}", uid=log_id(uid), tid=log_id(tid.hex())
        )

        def prepared(ready: PreparedFile) -> None:
            if tid.hex() in self._entries or not self.may_offer(uid, request.group_id):
                return  # answered meanwhile, or no longer members together
            for old in superseded:  # one live transfer of a file to a member at a time
                self._finish(old, "cancelled", "asked for again", "cancel")
            self._offer_prepared(uid, ready)

        def gone(failure: Any) -> None:
            failure.trap(OSError, SourceChanged)
            self._write(uid, Decline(tid, SOURCE_GONE), request.group_id)

        d = self._run(prepare_again, source.path, offer)
        d.addCallbacks(prepared, gone)
        d.addErrback(lambda f: self.log.failure("answering a file request failed", f))
        d.addBoth(lambda _: self._answering.discard(answering))

    # -- user actions ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def request(
        self,
        uid: str,
        group_id: bytes,
        shared: SharedFile,
        directory: str | None = None,
        others: Sequence[str] = (),
    ) -> Any:
        """Ask member *uid* for the file it *shared* into group *group_id*: a transfer in state
        ``requested`` until the offer comes, then accepted at once into *directory* (default:
        the downloads folder).  Returns the view.

        *others* are members who may hold the file too (who received it): while *uid* is
        offline, those online are asked first and *uid* last; when *uid* is online it is asked
        first; *uid* ``""`` (the author left the group) asks only them.  Whoever does not have
        it declines, and the next one online is asked (:meth:`_ask_another`); the offer is
        taken only if it is the recorded file, whoever serves it.

        :raises InvalidInput: if a transfer of this file from this group is already on its
            way to us, or the file cannot be taken (over the size cap, no room, no folder),
            or *uid* is ``""`` and none of *others* is online.
        """
        directory = os.path.abspath(os.path.expanduser(directory or self.downloads))
        asked = Offer(
            os.urandom(16),
            shared.name,
            shared.size,
            shared.content_hash,
            shared.media_type,
            shared.chunk_size,
            bytes(32),  # the author's offer brings the transfer's secret
            group_id,
        )
        policy, _auto = self._policy(uid)
        yield self._in_folder(_check_folder, directory, asked, policy)
        for known in self._entries.values():  # checked after the folder: two asks at once
            if (
                not known.sending
                and known.offer.group_id == group_id
                and known.offer.content_hash == shared.content_hash
                and known.state not in FINAL_STATES
            ):
                raise InvalidInput(f"transfer {known.id[:8]} of this file is already {known.state}")
        others = [o for o in dict.fromkeys(others) if o != uid]
        first = uid
        if not uid or self._sessions(uid) is None:
            first = next((o for o in others if self._sessions(o) is not None), uid)
        if not first:
            raise InvalidInput(
                "its author has left the group and no other member is online: try again "
                "later, or ask a member who received it (from, --from MEMBER)"
            )
        entry = TransferEntry(
            offer=asked,
            peer=first,
            sending=False,
            state=REQUESTED,
            created=self.now(),
            directory=directory,
            ask_next=tuple(o for o in others if o != first),
            ask_last=uid if first != uid else "",
        )
        self._entries[entry.id] = entry
        self._ask(entry, first)
        return self.view(entry)

    def _ask(self, entry: TransferEntry, uid: str) -> None:
        """Send the request of *entry* to member *uid*; unless answered at once, its reason
        says where the request went."""
        self._stop_patience(entry)
        entry.peer = uid
        entry.reason = ""
        how = self._write(uid, _request_of(entry))
        if entry.state == REQUESTED and entry.peer == uid:  # not answered already
            entry.reason = _REQUEST_REASONS[how]
            self._changed(entry)
            if how == "session":
                self._be_patient(entry)
        self.log.info(
            "asked {uid} for a shared file: transfer {tid}", uid=log_id(uid), tid=log_id(entry.id)
        )

    def _be_patient(self, entry: TransferEntry) -> None:
        """Give the member just asked over a session :data:`REQUEST_PATIENCE` seconds to
        answer, when someone else is left to ask."""
        self._stop_patience(entry)
        if entry.ask_next or entry.ask_last:
            entry.patience = self.clock.callLater(
                REQUEST_PATIENCE, self._out_of_patience, entry, entry.peer
            )

    def _stop_patience(self, entry: TransferEntry) -> None:
        if entry.patience is not None and entry.patience.active():
            entry.patience.cancel()
        entry.patience = None

    def _out_of_patience(self, entry: TransferEntry, asked: str) -> None:
        entry.patience = None
        if entry.state == REQUESTED and entry.peer == asked and not entry.sending:
            self.log.info(
                "transfer {tid}: {uid} did not answer the request",
                tid=log_id(entry.id),
                uid=log_id(asked),
            )
            self._ask_another(entry)

    def _ask_another(self, entry: TransferEntry) -> bool:
        """The member asked for a requested file does not have it (or left): ask the next
        member with a session up, else the author kept for last (its request may wait for
        it); members offline meanwhile, or with whom we no longer exchange files in that
        group (:attr:`may_offer`: one left, or we did), are passed over.  Return whether
        anyone was asked."""
        gid = entry.offer.group_id
        following = iter(entry.ask_next)
        ask = next(
            (o for o in following if self._sessions(o) is not None and self.may_offer(o, gid)),
            "",
        )
        entry.ask_next = tuple(following)
        if not ask:
            if entry.ask_last and self.may_offer(entry.ask_last, gid):
                ask = entry.ask_last
            entry.ask_last = ""
        if not ask:
            return False
        entry.asked += 1
        self._ask(entry, ask)
        return True

    @defer.inlineCallbacks
    def send(self, uid: str, path: str) -> Any:
        """Hash the file at *path* (off the reactor) and offer it to *uid*; returns the view.

        :raises InvalidInput: if *path* is not a readable regular file.
        """
        prepared = yield self._hash(path)
        return self._offer_prepared(uid, prepared)

    @defer.inlineCallbacks
    def send_many(self, uids: Sequence[str], path: str, group_id: bytes) -> Any:
        """Hash the file at *path* once (off the reactor) and offer it into group *group_id* to
        each of *uids*: one transfer per member, each with its own id and secret (so its own
        keys), offered over that member's session now or when it comes up.

        :returns: the views, in the order of *uids*.
        :raises InvalidInput: if *path* is not a readable regular file.
        """
        prepared = yield self._hash(path)
        views = []
        for uid in uids:
            views.append(self._offer_prepared(uid, offer_again(prepared, group_id=group_id)))
        return views

    @defer.inlineCallbacks
    def send_folder(self, uid: str, path: str, progress: Any = None) -> Any:
        """Offer every file of the folder at *path* to *uid*, each a transfer of its own
        marked with the folder it is in (``Offer.folder``) and one folder id, so the receiver
        puts them all in one new folder (:func:`~jarvis.files.send.folder_files` says which
        files: links and special files are left out).  Files are hashed one by one off the
        reactor (*progress*, if given, hears ``{folder, hashed, files}`` after each), then all
        offered at once.

        :returns: ``{"folder", "transfers", "failed", "left_out", "left_out_first"}``: the
            folder's name, the views of the files offered, ``{"path", "error"}`` for each file
            that could not be read meanwhile (it changed or went after the folder was
            listed), and how many entries were left out (links, devices, pipes, sockets) with
            the first of them (``folder/name``, or None).
        :raises InvalidInput: if *path* is not a readable folder, holds no file, or holds too
            many (:data:`~jarvis.files.send.MAX_FOLDER_FILES`).
        """
        left_out: list[str] = []
        try:
            files = yield self._read(bind(folder_files, left_out=left_out), path, "folder")
        except FolderTooBig as e:
            raise InvalidInput(f"cannot send the folder: {e}") from None
        except NotAFolder:
            raise InvalidInput("not a folder: send-file sends a file as it is") from None
        if not files:
            raise InvalidInput("the folder holds no file to send (links are left out)")
        folder_id = os.urandom(FOLDER_ID_SIZE)
        top = files[0][1].split("/")[0]
        ready: list[PreparedFile] = []
        failed: list[dict[str, str]] = []
        for hashed, (file_path, folder) in enumerate(files, 1):
            try:
                prepared = yield self._hash(file_path)
            except InvalidInput as e:
                failed.append({"path": file_path, "error": str(e)})
            else:
                ready.append(offer_in_folder(prepared, folder, folder_id))
            if progress is not None:
                progress({"folder": top, "hashed": hashed, "files": len(files)})
        # offered together once all are hashed: the contact sees the whole folder at once
        # (its accept prompt answers every file of it waiting)
        views = [self._offer_prepared(uid, prepared) for prepared in ready]
        return {
            "folder": top,
            "transfers": views,
            "failed": failed,
            "left_out": len(left_out),
            "left_out_first": left_out[0] if left_out else None,
        }

    def _hash(self, path: str) -> Any:
        """Hash the file at *path* off the reactor: a Deferred firing with its
        :class:`PreparedFile` (:raises InvalidInput: if it is not a readable regular file)."""
        return self._read(_prepare, path, "file")

    @defer.inlineCallbacks
    def _read(self, f: Callable[[str], Any], path: str, what: str) -> Any:
        """``f(path)`` off the reactor, *path* being absolute; an ``OSError`` is
        ``InvalidInput``: "cannot read the WHAT: why" (and which file, if another)."""
        if not os.path.isabs(path):
            raise InvalidInput("the path must be absolute")
        try:
            result = yield self._run(f, path)
        except OSError as e:
            where = f" ({e.filename})" if e.filename and e.filename != path else ""
            raise InvalidInput(f"cannot read the {what}: {e.strerror or e}{where}") from None
        return result

    def _offer_prepared(self, uid: str, prepared: PreparedFile) -> dict[str, Any]:
        entry = TransferEntry(
            offer=prepared.offer,
            peer=uid,
            sending=True,
            state="offered",
            created=self.now(),
            path=prepared.path,
            prepared=prepared,
        )
        self._entries[entry.id] = entry
        entry.reason = _OFFER_REASONS[self._write(uid, entry.offer)]
        self._changed(entry)
        self.log.info(
            "offering transfer {tid} to {uid}: {size} bytes",
            tid=log_id(entry.id),
            uid=log_id(uid),
            size=entry.offer.size,
        )
        return self.view(entry)

    @defer.inlineCallbacks
    def accept(self, ref: str, directory: str | None = None) -> Any:
        """Accept an offered file into *directory* (default: the downloads folder).

        :raises InvalidInput: if the transfer is not an incoming offer, or the folder is not
            usable; ``FileTooLarge`` / ``NotEnoughSpace`` mapped to InvalidInput with the reason.
        """
        entry = self.find(ref)
        _check_waiting_offer(entry)
        if entry.id in self._accepting:
            # one accept at a time: a second one would take the first's partial file (as a
            # killed run's) and then remove it as "accepted meanwhile"
            raise InvalidInput(f"transfer {entry.id[:8]} is being accepted already")
        self._accepting.add(entry.id)
        try:
            view = yield self._accept(entry, directory)
        finally:
            self._accepting.discard(entry.id)
        return view

    @defer.inlineCallbacks
    def _accept(self, entry: TransferEntry, directory: str | None) -> Any:
        directory = os.path.abspath(os.path.expanduser(directory or self.downloads))
        policy, _auto = self._policy(entry.peer)
        if entry.offer.folder_id:
            directory = yield self._folder_for(entry, directory)
        partial = yield self._in_folder(_create_partial, directory, entry.offer, policy)
        if entry.state != "offered":  # cancelled meanwhile
            yield self._run(partial.discard)
            raise InvalidInput(f"transfer {entry.id[:8]} was {entry.state} meanwhile")
        entry.partial = partial
        entry.directory = directory
        entry.state = "accepted"
        self._changed(entry)
        # Kept before the sender is asked: a run killed after the file came but before its
        # accept was kept listed it "offered" again at the restart, and took it once more
        # (a second copy, "name (1)").
        yield self._kept()
        if entry.state != "accepted" or self._entries.get(entry.id) is not entry:
            return self.view(entry)  # cancelled (or locked) meanwhile: no Accept
        entry.reason = _ACCEPT_REASONS[self._write(entry.peer, Accept(entry.offer.transfer_id))]
        self._changed(entry)
        return self.view(entry)

    def _folder_for(self, entry: TransferEntry, base: str) -> defer.Deferred[Any]:
        """Where a file of a folder sent whole goes when accepted into *base*
        (:meth:`_find_folder`), one at a time: two files of one folder accepted at once land
        in the same folder."""
        return self._folder_lock.run(self._find_folder, entry, base)

    @defer.inlineCallbacks
    def _find_folder(self, entry: TransferEntry, base: str) -> Any:
        """Below the folder already made in *base* for the same folder sent (a file of it
        accepted before), or a new one named as the sender's (``photos``, ``photos (1)`` if
        taken); then the folders the file is in below it, every name sanitised."""
        made = self._entries.roots.get((entry.peer, entry.offer.folder_id), {})
        root = next((r for r in made.values() if os.path.dirname(r) == base), None)
        try:
            root, directory = yield self._run(_folder_of, base, entry.offer.folder, root)
        except (FileExistsError, NotADirectoryError) as e:
            where = e.filename or base
            raise InvalidInput(f"{where} is not a folder: choose a folder") from None
        except OSError as e:
            raise InvalidInput(f"cannot write into {base}: {e.strerror or e}") from None
        entry.folder_root = root
        return directory

    @defer.inlineCallbacks
    def _in_folder(
        self,
        f: Callable[[str, Offer, ReceivePolicy], Any],
        directory: str,
        offer: Offer,
        policy: ReceivePolicy,
    ) -> Any:
        """Run *f* (a check or the creation of a partial file in *directory*) off the reactor;
        a file that cannot be taken there is ``InvalidInput`` saying why."""
        try:
            result = yield self._run(f, directory, offer, policy)
        except (FileTooLarge, NotEnoughSpace) as e:
            said = (type(e).__doc__ or "").splitlines()[0].rstrip(".")
            raise InvalidInput(f"{said[:1].lower()}{said[1:]}: {e}") from None
        except PartialNameTaken:
            raise InvalidInput(
                f"something else is at this file's partial name in {directory}: choose "
                "another folder"
            ) from None
        except (FileExistsError, NotADirectoryError):
            raise InvalidInput(f"{directory} is not a folder: choose a folder") from None
        except OSError as e:
            raise InvalidInput(f"cannot write into {directory}: {e.strerror or e}") from None
        return result

    @defer.inlineCallbacks
    def decline(self, ref: str, reason: str = "") -> Any:
        """Decline an incoming offer (the sender is told)."""
        entry = self.find(ref)
        _check_waiting_offer(entry)
        yield self._finish(entry, "cancelled", reason or "declined", notice="decline")
        return self.view(entry)

    @defer.inlineCallbacks
    def cancel(self, ref: str, reason: str = "") -> Any:
        """Cancel a transfer on this side and tell the peer (either direction, any time)."""
        entry = self.find(ref)
        if entry.state in FINAL_STATES:
            raise InvalidInput(f"transfer {entry.id[:8]} is already {entry.state}")
        yield self._finish(entry, "cancelled", reason or "cancelled", notice="cancel")
        return self.view(entry)

    def revoke(
        self,
        refusal: Callable[[str, bytes], tuple[str, bool] | None],
        *,
        peer: str | None = None,
        group_id: bytes | None = None,
    ) -> defer.Deferred[Any]:
        """End the transfers not over yet with whom we no longer exchange files: those with
        *peer* outside any group, or those into group *group_id* (either direction).

        *refusal(uid, group id)* says why a transfer may not go on (a contact removed or
        blocked, a member who left the group or was removed, our own leaving), and whether
        the peer is told: ``(reason, tell)``, or ``None`` if it may.  Each one refused is
        cancelled as :meth:`cancel` would (its partial file removed), except a shared file we
        asked a member for and are still waiting on: the request goes on to the next member
        left to ask, if any (:meth:`_ask_another`, which passes over those :attr:`may_offer`
        refuses: the same rule as *refusal* in the node).
        """
        ending = []
        for entry in list(self._entries.values()):
            if entry.state in FINAL_STATES:
                continue
            gid = entry.offer.group_id
            if group_id is not None and gid != group_id:
                continue
            if peer is not None and (gid or entry.peer != peer):
                continue
            refused = refusal(entry.peer, gid)
            if refused is None:
                continue
            if entry.state == REQUESTED and not entry.sending and self._ask_another(entry):
                continue
            reason, tell = refused
            self.log.info("transfer {tid} refused now: {why}", tid=log_id(entry.id), why=reason)
            ending.append(self._finish(entry, "cancelled", reason, notice="cancel" if tell else ""))
        done = defer.gatherResults(ending, consumeErrors=True)
        done.addErrback(lambda f: self.log.failure("ending refused transfers failed", f))
        return done

    @defer.inlineCallbacks
    def _finish(self, entry: TransferEntry, state: str, reason: str, notice: str) -> Any:
        entry.state = state
        entry.reason = reason
        entry.notice = notice
        self._cancel_redial(entry)
        self._stop_patience(entry)
        self._stop_space_probe(entry)
        entry.queued = False
        if entry.pull_source is not None:
            entry.pull_source.close()
            entry.pull_source = None
        if entry.streaming and state == "complete" and entry.sending:
            # The receiver said so over the session before the data connection's own
            # Complete came: that ends the stream, and its connection carries the next file.
            self._network.finish_stream(entry.offer.transfer_id)
        elif entry.streaming:
            self._network.stop_transfer(entry.offer.transfer_id)
        if notice:
            self._send_notice(entry)
        self._changed(entry)
        if state != "complete" and not entry.sending:
            partial, entry.partial = entry.partial, None
            try:
                if partial is None and entry.directory:
                    partial = yield self._run(_reopen_partial, entry.directory, entry.offer)
                if partial is not None:
                    yield self._run(partial.discard)
            except Exception:
                self.log.warn("removing a partial file failed")
        self.log.info("transfer {tid} {state}", tid=log_id(entry.id), state=state)

    # -- streams -----------------------------------------------------------------------------

    def _cancel_redial(self, entry: TransferEntry) -> None:
        if entry.redial is not None and entry.redial.active():
            entry.redial.cancel()
        entry.redial = None
        self._cancel_head_start(entry)

    def _cancel_head_start(self, entry: TransferEntry) -> None:
        if entry.head_start is not None and entry.head_start.active():
            entry.head_start.cancel()
        entry.head_start = None

    def _relayed_now(self, uid: str) -> bool:
        """Whether the live session with *uid* runs through a relay right now (then a direct
        data dial would only wait for its timeouts: the transfer goes to the relay at once)."""
        path_of = getattr(self._network, "path_of", None)
        path = path_of(uid) if path_of is not None else None
        return getattr(path, "kind", None) == "relayed"

    def _start_head_start(self, entry: TransferEntry) -> None:
        """A direct dial (or dial back) of *entry* started: abandon it for the relay if it has
        not connected within :data:`RELAY_HEAD_START` seconds and a relay is known."""
        self._cancel_head_start(entry)
        if self._can_relay(entry.peer):
            entry.head_start = self.clock.callLater(RELAY_HEAD_START, self._head_start_over, entry)

    def _head_start_over(self, entry: TransferEntry) -> None:
        entry.head_start = None
        self._abandon_dial(entry)

    def _abandon_dial(self, entry: TransferEntry) -> bool:
        """Give up *entry*'s direct dial still in flight (the network ends its stream with
        :data:`NO_DATA_CONNECTION`, which moves the transfer on towards the relay)."""
        abandon = getattr(self._network, "abandon_data_dial", None)
        if abandon is None or entry.state != "accepted" or not entry.streaming or entry.at_relay:
            return False
        if not abandon(entry.offer.transfer_id):
            return False  # it connected (or none is in flight): nothing to give up
        self.log.info("no direct data connection in time for transfer {tid}", tid=log_id(entry.id))
        return True

    @defer.inlineCallbacks
    def _start_stream(self, entry: TransferEntry) -> Any:
        """Sender: dial the data connection for *entry* (rebuilding the manifest if needed),
        or queue it while :data:`MAX_SENDING_STREAMS` streams run."""
        if entry.streaming or self._network is None or entry.state != "accepted":
            return
        if not self._sending_room(entry):
            self._cancel_redial(entry)
            entry.queued = True
            sending = self._sending_streams()
            reason = f"queued: {sending} files are being sent; it starts when one of them ends"
            if entry.reason != reason:
                entry.reason = reason
                self._changed(entry)
            return
        entry.queued = False
        if self._relayed_now(entry.peer) and self._can_relay(entry.peer):
            yield self._join_relay(entry)  # the session is relayed: so is its data
            return
        self._cancel_redial(entry)
        entry.streaming = True
        source = yield self._open_source(entry)
        if source is None or self._network is None:
            return
        observer = _StreamObserver(self, entry, source)
        self._network.open_transfer(entry.peer, source, observer)
        if entry.streaming and entry.state == "accepted":
            self._start_head_start(entry)

    def _sending_streams(self) -> int:
        """Outgoing streams running (or dialling).  A dial back the receiver makes after ours
        failed is answered outside this count: its slot was freed when our dial failed, and
        holding it for a receiver that may never dial would starve the queue."""
        return sum(1 for e in self._entries.streaming.values() if e.sending)

    def _sending_room(self, entry: TransferEntry) -> bool:
        """Whether *entry*'s stream fits beside the outgoing streams running
        (:data:`MAX_SENDING_STREAMS` large files' worth, :func:`stream_units`)."""
        running = sum(stream_units(e.offer) for e in self._entries.streaming.values() if e.sending)
        return running + stream_units(entry.offer) <= MAX_SENDING_STREAMS * UNITS_PER_STREAM

    def _slot_freed(self) -> None:
        """An outgoing stream ended: start queued ones on the next turn (once, however many
        ended in this one)."""
        if self._dequeue is None and self._entries.queued:
            self._dequeue = self.clock.callLater(0, self._start_queued)

    def _start_queued(self) -> None:
        self._dequeue = None
        waiting = sorted(
            (
                e
                for e in self._entries.queued.values()
                if e.sending and e.state == "accepted" and not e.streaming
            ),
            key=lambda e: e.created,
        )
        for entry in waiting:
            if self._network is None or not self._sending_room(entry):
                return  # in order: a large file is not passed by the small ones behind it
            if self._sessions(entry.peer) is not None:  # else: at its next session
                entry.redial_delay = REDIAL_INITIAL
                self._start_stream(entry)

    @defer.inlineCallbacks
    def _open_source(self, entry: TransferEntry) -> Any:
        """Sender: open *entry*'s file for a data connection (its manifest rebuilt first after
        a restart).  :returns: a Deferred firing with the :class:`FileSource`, or ``None`` when
        the file changed or is gone (the transfer fails, and the receiver is told) or the
        transfer moved on meanwhile; then *entry* is no longer streaming."""
        try:
            if entry.prepared is None:
                entry.prepared = yield self._run(prepare_again, entry.path, entry.offer)
            source = yield self._run(FileSource, entry.prepared)
        except (SourceChanged, OSError) as e:
            entry.streaming = entry.at_relay = False
            why = reason_without_paths(e)  # the receiver is told: no path of ours in it
            yield self._finish(entry, "failed", f"the file changed or is gone ({why})", "cancel")
            return None
        if entry.state != "accepted" or self._network is None:
            entry.streaming = entry.at_relay = False
            source.close()
            return None
        return source

    def _answer_stale_stream(
        self, uid: str, transfer_id: bytes, entry: TransferEntry | None
    ) -> None:
        """*uid* dials to stream (or asks to meet for) a file that already ended on this side,
        or that we no longer list (it missed our ``Complete`` or ``Cancel``, or we pruned the
        transfer since): say how it ended, over the live session, instead of only refusing,
        which the peer takes for a network failure and tries again every :data:`REDIAL_MAX`
        seconds for ever.  A transfer of ours with someone else is answered as one we do not
        list (the same words, and the other transfer untouched): no oracle of which ids we
        hold for others."""
        if entry is None or entry.peer != uid:
            if self._sessions(uid) is not None:  # never through a mailbox for an unknown id
                self._send_control(uid, Cancel(transfer_id, NOT_LISTED_HERE))
        elif entry.state == "complete":
            self._send_control(uid, Complete(transfer_id))
        elif self.may_offer(uid, entry.offer.group_id):  # a blocked sender is told nothing
            self._send_control(uid, Cancel(transfer_id, (entry.reason or "cancelled")[:200]))

    def inbound_stream(self, uid: str, transfer_id: bytes) -> Any:
        """The network asks for the partial file and observer of an inbound data connection.

        :returns: ``(partial, observer)``, or ``None`` to refuse the connection.
        """
        if not self._loaded:
            return None  # the kept transfers are still loading: the sender dials again
        entry = self._entries.get(transfer_id.hex())
        if (
            entry is None
            or entry.peer != uid
            or (not entry.sending and entry.state in FINAL_STATES)
        ):
            self._answer_stale_stream(uid, transfer_id, entry)
            return None
        if (
            entry.sending
            or entry.state not in ("accepted",)
            or entry.streaming
            or entry.partial is None
            or entry.space_probe is not None
        ):
            if entry.partial is None and entry.state == "accepted":
                self._reopen(entry)
            return None
        if self._receiving_full(entry):
            return None
        entry.streaming = True
        self._waiting_slot.pop(entry.id, None)
        return entry.partial, _StreamObserver(self, entry, None)

    def _receiving_slot_freed(self) -> None:
        """A receiving stream ended: write ``Accept`` again for the first transfer whose data
        connection was refused while the slots were full, which makes its sender dial at once
        (instead of at the end of its back-off, up to :data:`REDIAL_MAX`)."""
        for tid in list(self._waiting_slot):
            entry = self._entries.get(tid)
            if entry is None or entry.state != "accepted" or entry.streaming:
                del self._waiting_slot[tid]
            elif self._receiving_at_cap(entry) is None:  # one still at its cap waits on
                del self._waiting_slot[tid]
                self._send_control(entry.peer, Accept(entry.offer.transfer_id))
                return

    def _receiving_at_cap(self, entry: TransferEntry) -> tuple[int, int] | None:
        """How many receiving streams run, ``(its peer's, everyone's)``, when *entry*'s
        stream would pass :data:`MAX_RECEIVING_FROM_PEER` or :data:`MAX_RECEIVING_STREAMS`
        (large files' worth, :func:`stream_units`); else ``None``."""
        units = stream_units(entry.offer)
        mine, every = self._receiving(entry.peer, stream_units_of)
        if (
            mine + units <= MAX_RECEIVING_FROM_PEER * UNITS_PER_STREAM
            and every + units <= MAX_RECEIVING_STREAMS * UNITS_PER_STREAM
        ):
            return None
        return self._receiving(entry.peer)

    def _receiving_full(self, entry: TransferEntry) -> bool:
        """Whether one more receiving stream, *entry*'s, would pass the caps
        (:meth:`_receiving_at_cap`); then it waits, and is called for when one ends
        (:meth:`_receiving_slot_freed`)."""
        running = self._receiving_at_cap(entry)
        if running is None:
            return False
        mine, every = running
        self._waiting_slot[entry.id] = None
        self._warn_bounded(
            self._streams_refused,
            entry.peer,
            "a receiving stream from {uid} waits: {mine} of its and {every} in all run",
            mine=mine,
            every=every,
        )
        return True

    def _receiving(
        self, uid: str, weight: Callable[[TransferEntry], int] = lambda e: 1
    ) -> tuple[int, int]:
        """How many receiving streams run (each its *weight*): *uid*'s, and everyone's."""
        mine = every = 0
        for e in self._entries.streaming.values():
            if not e.sending:
                w = weight(e)
                every += w
                mine += w if e.peer == uid else 0
        return mine, every

    def _warn_bounded(self, counts: dict[str, int], uid: str, text: str, **fields: Any) -> None:
        """Log *text* about *uid* the 1st, 2nd, 4th, 8th ... time (*counts* keeps how many):
        a flood writes a bounded log."""
        counts[uid] = count = counts.get(uid, 0) + 1
        if count & (count - 1) == 0:
            self.log.warn(text + " ({count} so far)", uid=log_id(uid), count=count, **fields)

    def outbound_pull(self, uid: str, transfer_id: bytes) -> Any:
        """The network asks for the source of a data connection the receiver dialled back.

        :returns: ``(source, observer)``, or ``None`` to refuse the connection (not a transfer
            we asked *uid* to dial back for, or one streaming already).
        """
        if not self._loaded:
            return None
        entry = self._entries.get(transfer_id.hex())
        if (
            entry is None
            or entry.peer != uid
            or not entry.sending
            or entry.state != "accepted"
            or entry.streaming
            or entry.pull_source is None
        ):
            return None
        source, entry.pull_source = entry.pull_source, None
        entry.streaming = True
        self._cancel_redial(entry)
        return source, _StreamObserver(self, entry, source)

    def _dial_back(self, entry: TransferEntry) -> None:
        """Receiver: the sender could not dial us; dial it for the data instead."""
        if (
            entry.state != "accepted"
            or entry.streaming
            or entry.partial is None
            or entry.space_probe is not None
            or self._network is None
            or getattr(self._network, "pull_transfer", None) is None
            or self._receiving_full(entry)
        ):
            return
        if self._relayed_now(entry.peer) and self._can_relay(entry.peer):
            self._meet_at_relay(entry)  # the session is relayed: a dial back would time out
            return
        entry.streaming = True
        self.log.info("dialling back for transfer {tid}", tid=log_id(entry.id))
        self._network.pull_transfer(entry.peer, entry.partial, _StreamObserver(self, entry, None))
        if entry.streaming and entry.state == "accepted":
            self._start_head_start(entry)

    @defer.inlineCallbacks
    def _ask_dial_back(self, entry: TransferEntry) -> Any:
        """Sender: our dial failed; keep the file open and ask the receiver to dial us."""
        if entry.pull_source is None and entry.prepared is not None:
            try:
                source = yield self._run(FileSource, entry.prepared)
            except OSError:
                return
            if entry.state != "accepted" or entry.pull_source is not None:
                source.close()
                return
            entry.pull_source = source
        if entry.pull_source is not None:
            self._send_control(entry.peer, DialBack(entry.offer.transfer_id))

    def _can_relay(self, uid: str) -> bool:
        has_relay = getattr(self._network, "has_relay", None)
        return has_relay is not None and bool(has_relay(uid))

    def _meet_at_relay(self, entry: TransferEntry) -> None:
        """Receiver: neither side could dial the other; join the relay for this transfer and
        ask the sender (a ``DialBack`` in the other direction) to join it too."""
        if (
            entry.state != "accepted"
            or entry.streaming
            or entry.partial is None
            or entry.space_probe is not None
            or self._network is None
            or not self._can_relay(entry.peer)
            or self._receiving_full(entry)
        ):
            return
        self._cancel_head_start(entry)
        entry.streaming = True
        entry.at_relay = True
        self.log.info("meeting at a relay for transfer {tid}", tid=log_id(entry.id))
        self._network.relay_receive(entry.peer, entry.partial, _StreamObserver(self, entry, None))
        if entry.streaming:
            self._send_control(entry.peer, DialBack(entry.offer.transfer_id))

    def _relay_requested(self, entry: TransferEntry) -> None:
        """Sender: the receiver waits for us at the relay (after both dials failed)."""
        if entry.state != "accepted" or self._network is None or not self._can_relay(entry.peer):
            return
        if entry.at_relay:
            return  # we are there already (we asked first, or both asked at once)
        if entry.streaming:
            entry.relay_wanted = True  # a dial of ours is in flight: join once it fails,
            self._abandon_dial(entry)  # which is now if it has not connected yet
            return
        self._join_relay(entry)

    @defer.inlineCallbacks
    def _join_relay(self, entry: TransferEntry) -> Any:
        """Sender: join the relay for *entry*'s data and send the file there, and ask the
        receiver (a ``DialBack``: it joins at once while the session is relayed, else once
        its dial back fails) to meet us there."""
        self._cancel_redial(entry)
        entry.streaming = True
        entry.at_relay = True
        source, entry.pull_source = entry.pull_source, None
        if source is None:
            source = yield self._open_source(entry)
        elif entry.state != "accepted" or self._network is None:
            entry.streaming = entry.at_relay = False
            source.close()
            return
        if source is None or self._network is None:
            return
        self.log.info("meeting at a relay for transfer {tid}", tid=log_id(entry.id))
        self._network.relay_send(entry.peer, source, _StreamObserver(self, entry, source))
        if entry.at_relay and entry.state == "accepted":
            self._send_control(entry.peer, DialBack(entry.offer.transfer_id))

    def reopen_partials(self) -> defer.Deferred[Any]:
        """Reopen (and re-verify) the partial files of accepted incoming transfers."""
        return defer.DeferredList(
            [
                self._reopen(e)
                for e in self._entries.values()
                if not e.sending and e.state == "accepted" and e.partial is None
            ]
        )

    def _reopen(self, entry: TransferEntry) -> defer.Deferred[Any]:
        """Reopen (and re-verify, off the reactor) the partial file of an accepted incoming
        transfer, once at a time: a data connection that comes while the restart's reopening
        runs does not start a second one.  What it finds is used only if the transfer still
        waits for it: a reopening that ends after the file was completed (and its partial
        renamed into place) by the first must not call it gone and fail a complete file.  A
        partial file gone because a run completed and named the file, then stopped before it
        recorded so, is found by its name and content (:func:`_reopen_partial`): complete."""
        if entry.directory == "" or entry.id in self._reopening:
            return defer.succeed(None)
        self._reopening.add(entry.id)

        def opened(partial: PartialFile | str | None) -> None:
            self._reopening.discard(entry.id)
            waiting = (
                entry.state == "accepted"
                and entry.partial is None
                and self._entries.get(entry.id) is entry
                and self._store is not None
            )
            if not waiting:
                if isinstance(partial, PartialFile):
                    partial.close()
                return
            if isinstance(partial, str):
                # completed and given its name by a run that stopped before recording so
                entry.done = entry.offer.size
                entry.path = partial
                self._finish(entry, "complete", "", "complete")
                return
            if partial is None:
                self._finish(entry, "failed", "the partial file is gone", "cancel")
                return
            entry.partial = partial
            entry.done = partial.written_bytes
            self._send_control(entry.peer, Accept(entry.offer.transfer_id))

        def not_opened(failure: Any) -> None:
            self._reopening.discard(entry.id)
            self.log.failure("reopening a partial file failed", failure)

        d = self._run(_reopen_partial, entry.directory, entry.offer)
        d.addCallbacks(opened, not_opened)
        return d

    def stream_opened(self, entry: TransferEntry) -> None:
        self._cancel_head_start(entry)
        entry.meter = ProgressMeter(entry.offer.size, self.clock.seconds)
        if entry.state == "accepted":
            entry.state = "streaming"
            entry.reason = ""  # why it waited, if it did
            self._changed(entry)
        self._tick()

    def bytes_done(self, entry: TransferEntry, done: int) -> None:
        entry.done = done

    def _stream_gone(self, entry: TransferEntry) -> None:
        """*entry*'s data connection ended (complete or not): its sending or receiving slot
        goes to the next transfer waiting for one."""
        was_streaming, entry.streaming = entry.streaming, False
        entry.at_relay = False
        if entry.sending:
            self._slot_freed()
        elif was_streaming:
            self._receiving_slot_freed()

    def stream_completed(self, entry: TransferEntry, final_path: str | None) -> None:
        self._stream_gone(entry)
        if entry.state == "complete":
            return  # the receiver's word over the session came first (finish_stream)
        entry.relay_wanted = False
        self._cancel_head_start(entry)
        entry.done = entry.offer.size
        if final_path is not None:
            entry.path = final_path
            entry.partial = None
            self._finish(entry, "complete", "", "complete")
        else:
            self._finish(entry, "complete", "", "")

    def stream_ended(self, entry: TransferEntry, reason: str, resumable: bool) -> None:
        self._stream_gone(entry)
        self._cancel_head_start(entry)
        entry.rate, entry.eta = 0.0, None
        if entry.state in FINAL_STATES:
            return
        if not resumable:
            self._finish(entry, "failed", reason, "cancel")
            return
        if entry.state == "streaming":
            # Back to waiting for the next connection; the reason says why (a lost connection,
            # a full disk here) until a stream opens again.
            entry.state = "accepted"
            entry.reason = _safe(reason)
            self._changed(entry)
        if entry.sending and entry.relay_wanted:
            entry.relay_wanted = False
            if self._sessions(entry.peer) is not None:
                self._join_relay(entry)
                return
        if not entry.sending and reason == DISK_FULL:
            self._wait_for_space(entry)
            return
        if not entry.sending and reason.startswith(NO_DATA_CONNECTION):
            self._meet_at_relay(entry)  # our dial back failed too
            return
        if entry.sending and self._sessions(entry.peer) is not None:
            if reason.startswith(NO_DATA_CONNECTION):
                self._ask_dial_back(entry)
            delay, entry.redial_delay = entry.redial_delay, min(entry.redial_delay * 2, REDIAL_MAX)
            entry.redial = self.clock.callLater(delay, self._start_stream, entry)

    # -- waiting for disk space (receiver) ----------------------------------------------------

    def _wait_for_space(self, entry: TransferEntry) -> None:
        """The disk filled up under *entry*'s stream: refuse its data connections (each of the
        sender's redials would put up to a chunk on the wire only to be refused again) and
        look at the free space every :data:`SPACE_PROBE_INTERVAL` seconds; once the next chunk
        fits, write ``Accept`` again, which makes the sender dial at once."""
        if entry.space_probe is None:
            entry.space_probe = self.clock.callLater(SPACE_PROBE_INTERVAL, self._probe_space, entry)

    def _probe_space(self, entry: TransferEntry) -> None:
        entry.space_probe = True
        d = self._run(free_bytes, entry.directory)
        d.addCallbacks(
            lambda free: self._space_probed(entry, free),
            lambda failure: self._space_probed(entry, None),
        )

    def _space_probed(self, entry: TransferEntry, free: int | None) -> None:
        if entry.space_probe is not True:
            return  # stopped meanwhile (locked, cancelled)
        entry.space_probe = None
        if self._store is None or entry.state != "accepted":
            return
        needed = min(entry.offer.chunk_size, max(entry.offer.size - entry.done, 0))
        if free is None or free < needed:
            self._wait_for_space(entry)
            return
        self.log.info("room again for transfer {tid}", tid=log_id(entry.id))
        self._send_control(entry.peer, Accept(entry.offer.transfer_id))

    def _stop_space_probe(self, entry: TransferEntry) -> None:
        probe = entry.space_probe
        if probe is not None and probe is not True and probe.active():
            probe.cancel()
        entry.space_probe = None

    # -- progress -----------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._ticker is not None and self._ticker.active():
            return
        active = [e for e in self._entries.streaming.values() if e.meter is not None]
        for entry in active:
            assert entry.meter is not None
            p = entry.meter.update(entry.done)
            entry.rate, entry.eta = p.rate, p.eta
            self._emit(
                "transfer.progress",
                {
                    "id": entry.id,
                    "contact": entry.peer,
                    "group": entry.offer.group_id.hex() or None,
                    "direction": "out" if entry.sending else "in",
                    "bytes": p.done,
                    "size": p.total,
                    "rate": p.rate,
                    "eta": p.eta,
                },
            )
        if active:
            self._ticker = self.clock.callLater(PROGRESS_INTERVAL, self._tick)
        else:
            self._ticker = None


class _StreamObserver:
    """Feeds one data connection's events to :class:`Transfers` (a TransferStreamObserver)."""

    def __init__(self, owner: Transfers, entry: TransferEntry, source: FileSource | None) -> None:
        self._owner = owner
        self._entry = entry
        self._source = source
        self._ended = False

    def stream_opened(self) -> None:
        self._owner.stream_opened(self._entry)

    def bytes_done(self, done: int) -> None:
        self._owner.bytes_done(self._entry, done)

    def stream_completed(self, final_path: str | None) -> None:
        if self._end():
            self._owner.stream_completed(self._entry, final_path)

    def stream_ended(self, reason: str, resumable: bool) -> None:
        if self._end():
            self._owner.stream_ended(self._entry, reason, resumable)

    def _end(self) -> bool:
        if self._ended:
            return False
        self._ended = True
        if self._source is not None:
            self._source.close()
        return True


def _safe(text: str) -> str:
    return terminal_safe(text, keep_newlines=False)[:200]


def _holds(entry: TransferEntry) -> bool:
    """Whether *entry* says where this side has its file: the file we sent (any state), or the
    one we received complete."""
    return bool(entry.path) and (entry.sending or entry.state == "complete")


def _request_of(entry: TransferEntry) -> Request:
    offer = entry.offer
    return Request(offer.transfer_id, offer.group_id, offer.content_hash)


def _check_waiting_offer(entry: TransferEntry) -> None:
    """Raise :class:`InvalidInput` saying what *entry* is, unless it is an offer waiting for
    our answer (what ``accept`` and ``decline`` take)."""
    tid = entry.id[:8]
    if entry.sending:
        raise InvalidInput(
            f"transfer {tid} is a file you offered: your contact accepts or declines it "
            f"(jarvis cancel {tid} withdraws it)"
        )
    if entry.state in FINAL_STATES:
        raise InvalidInput(f"transfer {tid} is already {entry.state}")
    if entry.state != "offered":
        raise InvalidInput(
            f"transfer {tid} is {entry.state}, no longer waiting for an answer "
            f"(jarvis cancel {tid} stops it)"
        )


def stream_units_of(entry: TransferEntry) -> int:
    """:func:`stream_units` of *entry*'s file."""
    return stream_units(entry.offer)


def _folder_of(base: str, folder: str, root: str | None) -> tuple[str, str]:
    """Make (or find again) the folder a file of a folder sent whole goes into: *root* if
    known, else a new one in *base* named as the folder sent; then the folders below it.
    Returns ``(root, the file's folder)``."""
    parts = safe_folder_parts(folder)
    os.makedirs(base, mode=0o700, exist_ok=True)
    if root is None:
        root = make_folder_root(base, parts[0])
    return root, make_subfolders(root, parts[1:])


def _check_folder(directory: str, offer: Offer, policy: ReceivePolicy) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    check_acceptable(directory, offer, policy)


def _prepare(path: str) -> PreparedFile:
    import stat

    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise OSError(
            0,
            "it is a folder: send the files in it (FOLDER/* names them all) or one archive of "
            "it; to a contact, jarvis send-file sends a folder whole",
        )
    if not stat.S_ISREG(st.st_mode):
        raise OSError(0, "not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        with open(path, "rb", buffering=0) as f:
            if f.read(1):
                # a file the kernel makes up as it is read (/proc, /sys): its size says 0,
                # and the receiver would get an empty file
                raise OSError(
                    0,
                    "its size is not known before it is read (a file the system makes up, "
                    "like those under /proc): copy it to a regular file and send that",
                )
    return make_offer(path)


def _create_partial(directory: str, offer: Offer, policy: ReceivePolicy) -> PartialFile:
    _check_folder(directory, offer, policy)
    return PartialFile.create_or_take(directory, offer, policy)


def _reopen_partial(directory: str, offer: Offer) -> PartialFile | str | None:
    """The partial file of *offer* reopened; else the path of the file it became, if a run
    completed it and stopped before recording so (:func:`find_received`); else None."""
    try:
        return PartialFile.reopen(directory, offer)
    except FileNotFoundError:
        return find_received(directory, offer)


def _checked_policy(data: Any) -> dict[str, Any]:
    """Return the receiving policy *data* if well formed; raises ValueError otherwise."""
    if not isinstance(data, dict):
        raise ValueError("the policy is an object")
    out: dict[str, Any] = {}
    if "max_size" in data:
        if not isinstance(data["max_size"], int) or data["max_size"] < 0:
            raise ValueError("max_size is a byte count")
        out["max_size"] = data["max_size"]
    if data.get("downloads"):
        if not isinstance(data["downloads"], str) or not os.path.isabs(data["downloads"]):
            raise ValueError("downloads is an absolute path")
        out["downloads"] = data["downloads"]
    table = data.get("auto_accept", {})
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in table.items()
    ):
        raise ValueError("auto_accept maps uids to byte counts")
    out["auto_accept"] = dict(table)
    return out
