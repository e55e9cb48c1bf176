"""LAN discovery announcements that only contacts can recognise.

A daemon on a local network announces one mDNS service whose TXT record holds one short
**token** per contact; a browsing contact computes the token it expects from each of its own
contacts and looks for it.  A stranger capturing every mDNS packet sees random-looking bytes
that change every window and cannot be linked to a uid, a key, a name, the previous window's
announcement or the number of contacts.  The construction, with test vectors, is in
``docs/protocol.md`` ("LAN discovery"); in short::

    lan_key = HKDF-SHA256(salt="jarvis-lan-v1", ikm=knock pair key, info="lan")
    window  = floor(unix_time / 600)
    token   = HMAC-SHA256(lan_key, "jarvis-lan-v1" || u64 window || announcer uid)[:8]

The knock pair key (:func:`jarvis.protocol.knock.pair_key`, a static-static X25519 secret of the
two identity keys) is only computable by the two contacts.  The announcer's uid inside the HMAC
makes A's token for B differ from B's token for A, so two announcements never share a token that
would show the two are contacts.  Tokens are padded with random decoys to a multiple of
:data:`PAD_BUCKET` and sorted; the instance and host names are random for each window.

Pure code: no reactor, no zeroconf, no I/O; time and randomness are passed in.  It must not
decide who is a contact (the caller passes them) nor log.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jarvis.protocol.knock import KnockKeys

#: The mDNS service type Jarvis announces and browses.
SERVICE_TYPE = "_jarvis._tcp.local."
#: Seconds in one announcement window.
WINDOW_SECONDS = 600
#: A browser accepts tokens of its own window and this many windows either side (clock skew).
ACCEPTED_SKEW = 1
#: Bytes in a token (a stranger's random decoy matches a given contact with chance 2**-64).
TOKEN_BYTES = 8
#: The number of tokens is rounded up to a multiple of this (at least one bucket).
PAD_BUCKET = 16
#: At most this many tokens in an announcement (about 1 KiB of TXT: one mDNS packet).  A daemon
#: with more contacts announces to the first ones the caller lists.
MAX_TOKENS = 128
#: Bytes of randomness in the instance and host names.
NAME_BYTES = 8
#: TXT keys: ``v`` (version), then ``t0``, ``t1``... each holding one bucket of tokens.
VERSION_KEY = b"v"
VERSION = b"1"

_LABEL = b"jarvis-lan-v1"


def lan_key(knock_pair_key: bytes) -> bytes:
    """Return the LAN discovery key of a pair from its knock pair key.

    ``HKDF-SHA256(salt="jarvis-lan-v1", ikm=knock_pair_key, info="lan")``: a key separate from
    the knock's, so a token never helps forge a knock nor the reverse.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_LABEL, info=b"lan").derive(
        knock_pair_key
    )


class LanKeys:
    """Our LAN discovery keys with each contact, derived from (and cached like) the knock keys.

    Only contacts whose public key we know get a key: the knock's fallback "uid key" is
    computable by anyone who knows both uids, which would let an acquaintance recognise us on
    any LAN, so such contacts are never announced nor recognised.

    :param own_seed: our raw Ed25519 private key.
    :param own_uid: our uid.
    :param knock: the peer network's knock keys of the same identity, to share (the network
        computes them off the reactor at unlock, so discovery computes no X25519 exchange of
        its own); default: a cache of our own.
    """

    def __init__(self, own_seed: bytes, own_uid: str, knock: KnockKeys | None = None) -> None:
        self._knock = knock if knock is not None else KnockKeys(own_seed, own_uid)
        self._cache: dict[bytes, bytes] = {}
        #: ``(uid, public key) -> LAN key or None``: what :meth:`snapshot` reads
        self._by_peer: dict[tuple[str, bytes], bytes | None] = {}

    def key(self, peer_uid: str, peer_public: bytes | None) -> bytes | None:
        """Return the LAN key with *peer_uid*, or ``None`` when its public key is unknown or
        has no X25519 form."""
        if not peer_public:
            return None
        index = (peer_uid, peer_public)
        if index in self._by_peer:
            return self._by_peer[index]
        knock_key = self._knock.key(peer_uid, peer_public)
        if knock_key is None:
            return None
        if knock_key not in self._cache:
            if len(self._cache) >= 65_536:
                self._cache.clear()
            self._cache[knock_key] = lan_key(knock_key)
        return self._cache[knock_key]

    def snapshot(self, peers: Iterable[tuple[str, bytes | None]]) -> list[PeerKeys]:
        """Return what is cached about *peers* (on the owner's thread; dictionary look-ups
        only): for :func:`resolve_keys`, which computes the rest on any thread.  Peers
        without a public key are left out (they get no LAN key)."""
        by_peer, knock = self._by_peer, self._knock
        found = []
        for uid, public in peers:
            if not public:
                continue
            index = (uid, public)
            if index in by_peer:
                found.append(PeerKeys(uid, public, by_peer[index], True, None))
            else:
                found.append(PeerKeys(uid, public, None, False, knock.cached(uid, public)))
        return found

    def compute_key(
        self, peer_uid: str, peer_public: bytes, knock_key: bytes | None
    ) -> bytes | None:
        """Compute the LAN key with a peer without caching it (safe on any thread): from its
        knock key if given, else from a fresh X25519 exchange."""
        if knock_key is None:
            knock_key = self._knock.compute([(peer_uid, peer_public)])[(peer_uid, peer_public)]
        return None if knock_key is None else lan_key(knock_key)

    def add(self, computed: Mapping[tuple[str, bytes], bytes | None]) -> None:
        """Keep the keys :func:`resolve_keys` computed (on the owner's thread)."""
        if len(self._by_peer) + len(computed) > 65_536:
            self._by_peer.clear()
        self._by_peer.update(computed)


@dataclass(frozen=True)
class PeerKeys:
    """What :meth:`LanKeys.snapshot` knew about one contact: its LAN key if *known*, else its
    cached knock key (``None``: not cached)."""

    uid: str
    public: bytes
    lan_key: bytes | None
    known: bool
    knock_key: bytes | None


def resolve_keys(
    keys: LanKeys, peers: Iterable[PeerKeys]
) -> tuple[list[tuple[str, bytes]], dict[tuple[str, bytes], bytes | None]]:
    """Return the ``(uid, LAN key)`` of *peers* in their order, and the keys computed for
    :meth:`LanKeys.add` (pure: runs on any thread)."""
    found: list[tuple[str, bytes]] = []
    computed: dict[tuple[str, bytes], bytes | None] = {}
    for peer in peers:
        key = peer.lan_key
        if not peer.known:
            key = computed[(peer.uid, peer.public)] = keys.compute_key(
                peer.uid, peer.public, peer.knock_key
            )
        if key is not None:
            found.append((peer.uid, key))
    return found, computed


def window_of(seconds: float, window_seconds: int = WINDOW_SECONDS) -> int:
    """Return the announcement window of a Unix time: ``floor(seconds / window_seconds)``."""
    return int(seconds // window_seconds)


def token(key: bytes, window: int, announcer_uid: str) -> bytes:
    """Return the token *announcer_uid* publishes in *window* for the contact sharing *key*.

    ``HMAC-SHA256(key, "jarvis-lan-v1" || u64 window || announcer_uid)[:8]``.
    """
    data = _LABEL + struct.pack(">Q", window & 0xFFFFFFFFFFFFFFFF) + announcer_uid.encode("ascii")
    return hmac.digest(key, data, "sha256")[:TOKEN_BYTES]


def padded_count(real: int) -> int:
    """Return how many tokens an announcement with *real* contact tokens carries."""
    buckets = max(1, -(-min(real, MAX_TOKENS) // PAD_BUCKET))
    return buckets * PAD_BUCKET


@dataclass(frozen=True)
class Announcement:
    """What one daemon announces during one window.

    :ivar instance: the mDNS instance label (random hex, new each window).
    :ivar host: the mDNS host name label (random hex, new each window), without ``.local.``.
    :ivar tokens: the padded, sorted tokens.
    """

    instance: str
    host: str
    tokens: tuple[bytes, ...]

    def txt(self) -> dict[bytes, bytes]:
        """Return the TXT record's properties: the version and one entry per bucket."""
        properties = {VERSION_KEY: VERSION}
        joined = b"".join(self.tokens)
        step = PAD_BUCKET * TOKEN_BYTES
        for index in range(0, len(joined), step):
            properties[b"t%d" % (index // step)] = joined[index : index + step]
        return properties


def make_announcement(
    own_uid: str,
    keys: Iterable[bytes],
    window: int,
    random_bytes: Callable[[int], bytes],
) -> Announcement:
    """Return our announcement for *window*: one token per contact key, padded with decoys.

    :param keys: the LAN keys of the contacts to announce to (at most :data:`MAX_TOKENS` used).
    :param random_bytes: returns *n* random bytes (names and decoys).
    """
    return announcement_of(announced_tokens(own_uid, keys, window), random_bytes)


def announced_tokens(own_uid: str, keys: Iterable[bytes], window: int) -> list[bytes]:
    """Return our real tokens for *window*: one per contact key, the first
    :data:`MAX_TOKENS` (pure: made ahead on a thread)."""
    return [token(key, window, own_uid) for key in islice(keys, MAX_TOKENS)]


def announcement_of(real: list[bytes], random_bytes: Callable[[int], bytes]) -> Announcement:
    """Return the announcement carrying the real tokens *real*, padded with decoys, under
    new random names."""
    real = real[:MAX_TOKENS]
    decoys = [random_bytes(TOKEN_BYTES) for _ in range(padded_count(len(real)) - len(real))]
    return Announcement(
        instance=random_bytes(NAME_BYTES).hex(),
        host=random_bytes(NAME_BYTES).hex(),
        tokens=tuple(sorted(real + decoys)),
    )


def parse_tokens(properties: Mapping[bytes, bytes | None]) -> list[bytes]:
    """Return the tokens of a TXT record's properties (empty for another version or garbage).

    Never raises: the record comes from anyone on the LAN.
    """
    if properties.get(VERSION_KEY) != VERSION:
        return []
    found: list[bytes] = []
    for index in range(-(-MAX_TOKENS // PAD_BUCKET)):
        chunk = properties.get(b"t%d" % index)
        if not chunk:
            break
        found.extend(
            chunk[at : at + TOKEN_BYTES]
            for at in range(0, len(chunk) - TOKEN_BYTES + 1, TOKEN_BYTES)
        )
    return found[:MAX_TOKENS]


class TokenMatcher:
    """Recognises contacts' announcements: a table from expected token to contact uid.

    The table holds, for each contact, the token it publishes for us in the windows around
    ours; it is rebuilt when the window changes or :meth:`invalidate` is called (three HMACs
    per contact per window).

    :param window_seconds: the window length (tests shorten it).
    """

    def __init__(self, window_seconds: int = WINDOW_SECONDS) -> None:
        self._window_seconds = window_seconds
        self._table: dict[bytes, str] = {}
        self._table_window: int | None = None
        #: tables made ahead (off the reactor) by window: the first match in that window
        #: takes its table from here instead of building it
        self._prepared: dict[int, dict[bytes, str]] = {}

    def invalidate(self) -> None:
        """Rebuild the table at the next match (contacts or keys changed)."""
        self._table_window = None
        self._prepared.clear()

    def drop_prepared(self) -> None:
        """Forget the tables made ahead (contacts changed since), keeping the table in use
        until :meth:`prepared` gives a new one."""
        self._prepared.clear()

    def prepared(self, window: int, table: dict[bytes, str]) -> None:
        """Keep *table* (from :func:`expected_tokens`) for *window*: a match in that window
        uses it, even if a table of that window is in use already (it replaces it)."""
        self._prepared[window] = table

    def match(
        self,
        tokens: Iterable[bytes],
        now: float,
        contacts: Callable[[], Iterable[tuple[str, bytes]]],
    ) -> set[str]:
        """Return the uids of the contacts whose token is among *tokens* at Unix time *now*.

        :param contacts: returns ``(uid, LAN key)`` of every contact to recognise; called only
            to rebuild the table.
        """
        current = window_of(now, self._window_seconds)
        if self._prepared:
            ready = self._prepared.pop(current, None)
            for window in [w for w in self._prepared if w < current]:
                del self._prepared[window]
            if ready is not None:
                self._table, self._table_window = ready, current
        if self._table_window != current:
            self._table = expected_tokens(current, contacts())
            self._table_window = current
        return {self._table[t] for t in tokens if t in self._table}


def expected_tokens(current: int, contacts: Iterable[tuple[str, bytes]]) -> dict[bytes, str]:
    """Return the table from token to uid of the tokens *contacts* (``(uid, LAN key)``)
    publish for us in the windows accepted around *current* (three HMACs per contact; pure:
    safe on any thread)."""
    table: dict[bytes, str] = {}
    windows = range(current - ACCEPTED_SKEW, current + ACCEPTED_SKEW + 1)
    for uid, key in contacts:
        for window in windows:
            table[token(key, window, uid)] = uid
    return table


@dataclass(frozen=True)
class PreparedWindows:
    """What :func:`prepare_windows` made ahead for some windows.

    :ivar tables: by window, the matcher's table (:func:`expected_tokens`).
    :ivar announced: by window, our real tokens (:func:`announced_tokens`).
    :ivar computed: the LAN keys computed on the way, for :meth:`LanKeys.add`.
    """

    tables: dict[int, dict[bytes, str]]
    announced: dict[int, list[bytes]]
    computed: dict[tuple[str, bytes], bytes | None]


def prepare_windows(
    keys: LanKeys, own_uid: str, windows: Iterable[int], peers: list[PeerKeys]
) -> PreparedWindows:
    """Make the matcher's tables and our real tokens of *windows* for the contacts *peers*
    (from :meth:`LanKeys.snapshot`): the missing LAN keys, then three HMACs per contact and
    window (10-25 ms for 1,000 contacts).  Touches no shared state: runs on a thread."""
    found, computed = resolve_keys(keys, peers)
    windows = list(windows)
    return PreparedWindows(
        {w: expected_tokens(w, found) for w in windows},
        {w: announced_tokens(own_uid, (key for _, key in found), w) for w in windows},
        computed,
    )
