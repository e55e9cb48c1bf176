"""The pre-TLS knock: 32 bytes a dialling contact sends before its TLS ClientHello.

A listener answers nothing (no certificate, no byte) until the first 32 bytes of a connection
prove that the dialler holds a key it shares with one of the listener's contacts, for the
current minute.  Strangers learn nothing (not even the uid in the certificate) and cost one
HMAC per contact; contacts cost one HMAC, found by their hint.  The layout, the key derivation
and test vectors are in ``docs/protocol.md`` ("Knock"); in short::

    token = u32 window || hint (4 bytes) || nonce (8 bytes) || tag (16 bytes)
    window = floor(unix_time / 60)
    hint = HMAC-SHA256(knock_key, "jarvis-knock-v1" || 0x01 || window || listener uid)[:4]
    tag = HMAC-SHA256(knock_key, "jarvis-knock-v1" || 0x00 || window || hint || nonce
                      || listener uid)[:16]

The hint, the same for one contact during one window, lets the listener find the contact's key
in a table instead of trying every contact's.

The **pair key** comes from a static-static X25519 exchange of the two Ed25519 identity keys
(converted to X25519 as libsodium's ``crypto_sign_ed25519_*_to_curve25519`` do), so only the two
contacts can compute it.  A contact whose public key is not known yet (added by uid and address,
its key learnt at the first TLS connection) uses the weaker **uid key**, derived from the two
uids alone.

Pure code: no reactor, no I/O; time and randomness are passed in.  It must not decide who is a
contact (the caller passes the candidates) nor log (the caller logs the verdict).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Bytes in a knock token.
KNOCK_LENGTH = 32
#: Random bytes in a knock.
NONCE_BYTES = 8
#: Seconds in one time window.
WINDOW_SECONDS = 60
#: A knock is accepted in its own window and this many windows either side (clock skew).
ACCEPTED_SKEW = 1
#: Valid knocks remembered for replay detection, at most (valid ones only: strangers cannot
#: fill it).  When full, further knocks are refused until old windows expire.
MAX_REMEMBERED = 16_384

_LABEL = b"jarvis-knock-v1"
_HINT_BYTES = 4
_NONCE_BYTES = NONCE_BYTES
_TAG_BYTES = 16
_P = 2**255 - 19


class KnockKeyError(ValueError):
    """A contact's public key cannot give a pair key (a low-order or non-canonical point)."""


def ed25519_public_to_x25519(public32: bytes) -> bytes:
    """Return the X25519 (Montgomery u) public key of a raw Ed25519 public key.

    ``u = (1 + y) / (1 - y) mod p``, where *y* is the Edwards coordinate (the sign bit of x
    is dropped: u does not depend on it).

    :raises KnockKeyError: if the key is not 32 bytes, *y* is not canonical or ``y == 1``.
    """
    if len(public32) != 32:
        raise KnockKeyError("an Ed25519 public key is 32 bytes")
    y = int.from_bytes(public32, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise KnockKeyError("the Ed25519 public key has no X25519 form")
    u = (1 + y) * pow(1 - y, -1, _P) % _P
    return u.to_bytes(32, "little")


def ed25519_seed_to_x25519(seed32: bytes) -> X25519PrivateKey:
    """Return the X25519 private key of a raw Ed25519 private key (seed).

    The Ed25519 secret scalar is the first half of SHA-512(seed), clamped; X25519 clamps the
    same way, so its public key is :func:`ed25519_public_to_x25519` of the Ed25519 public key.
    """
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed32).digest()[:32])


def _uids_info(kind: bytes, uid_a: str, uid_b: str) -> bytes:
    first, second = sorted((uid_a, uid_b))
    return kind + b"\x00" + first.encode("ascii") + second.encode("ascii")


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_LABEL, info=info).derive(ikm)


def pair_key(own_seed: bytes, own_uid: str, peer_public: bytes, peer_uid: str) -> bytes:
    """Return the knock key of a pair whose public keys both sides know.

    ``HKDF-SHA256(salt="jarvis-knock-v1", ikm=X25519(own, peer), info="pair" 0x00 uid1 uid2)``
    with the uids sorted, so both sides get the same 32 bytes.

    :raises KnockKeyError: if *peer_public* has no X25519 form or the exchange gives zero.
    """
    return _pair_key(ed25519_seed_to_x25519(own_seed), own_uid, peer_public, peer_uid)


def _pair_key(own: X25519PrivateKey, own_uid: str, peer_public: bytes, peer_uid: str) -> bytes:
    peer = X25519PublicKey.from_public_bytes(ed25519_public_to_x25519(peer_public))
    try:
        shared = own.exchange(peer)
    except ValueError:
        raise KnockKeyError("the contact's public key is a low-order point") from None
    return _hkdf(shared, _uids_info(b"pair", own_uid, peer_uid))


def uid_key(uid_a: str, uid_b: str) -> bytes:
    """Return the knock key of a pair where one side does not know the other's public key yet.

    ``HKDF-SHA256(salt="jarvis-knock-v1", ikm="", info="uids" 0x00 uid1 uid2)``, uids sorted.
    Anyone who knows both uids can compute it: it keeps out scanners, not acquaintances.
    """
    return _hkdf(b"", _uids_info(b"uids", uid_a, uid_b))


def window_of(seconds: float) -> int:
    """Return the time window of a Unix time: ``floor(seconds / 60)``."""
    return int(seconds // WINDOW_SECONDS)


def _hint(key: bytes, window_bytes: bytes, listener_uid: str) -> bytes:
    data = _LABEL + b"\x01" + window_bytes + listener_uid.encode("ascii")
    return hmac.digest(key, data, "sha256")[:_HINT_BYTES]


def _tag(key: bytes, head: bytes, listener_uid: str) -> bytes:
    """The tag over *head* (window, hint and nonce: the token's first 16 bytes)."""
    data = _LABEL + b"\x00" + head + listener_uid.encode("ascii")
    return hmac.digest(key, data, "sha256")[:_TAG_BYTES]


def make_knock(key: bytes, listener_uid: str, window: int, nonce: bytes) -> bytes:
    """Return the 32-byte knock to send to *listener_uid* in *window*.

    :param nonce: :data:`NONCE_BYTES` random bytes (from the caller's random source).
    """
    if len(nonce) != _NONCE_BYTES:
        raise ValueError(f"a knock nonce is {_NONCE_BYTES} bytes")
    window_bytes = struct.pack(">I", window & 0xFFFFFFFF)
    head = window_bytes + _hint(key, window_bytes, listener_uid) + nonce
    return head + _tag(key, head, listener_uid)


@dataclass(frozen=True)
class Accepted:
    """The knock is valid: *uid* is the contact whose key made it."""

    uid: str


@dataclass(frozen=True)
class Refused:
    """The knock is not accepted.

    :ivar reason: a short, log-safe reason (``"no knock"`` for what looks like a TLS
        ClientHello, ``"bad knock"``, ``"stale knock"``, ``"replayed knock"``, ``"too many
        knocks"``).
    :ivar uid: the contact whose key made the knock, when the tag was valid (stale, replayed).
    :ivar skew: windows between the knock's and ours, for a stale knock.
    """

    reason: str
    uid: str | None = None
    skew: int = 0


Verdict = Accepted | Refused


def looks_like_tls(data: bytes) -> bool:
    """Whether *data* starts like a TLS handshake record (an un-knocked ClientHello).

    A knock's first byte is the top byte of the window, 0x01 until the year 2133.
    """
    return len(data) >= 2 and data[0] == 0x16 and data[1] == 0x03


HintTable = dict[bytes, list[tuple[str, bytes]]]


def hint_table(
    listener_uid: str, current: int, candidates: Iterable[tuple[str, bytes]]
) -> HintTable:
    """The table from ``(window, hint)`` to the contacts whose key makes that hint, for the
    windows accepted around *current* (pure: safe on any thread)."""
    table: HintTable = {}
    windows = [
        struct.pack(">I", w & 0xFFFFFFFF)
        for w in range(current - ACCEPTED_SKEW, current + ACCEPTED_SKEW + 1)
    ]
    for uid, key in candidates:
        for window_bytes in windows:
            index = window_bytes + _hint(key, window_bytes, listener_uid)
            table.setdefault(index, []).append((uid, key))
    return table


class KnockVerifier:
    """Checks knocks sent to one listener, remembering valid ones to refuse their replay.

    It keeps a table from ``(window, hint)`` to contacts for the three acceptable windows,
    rebuilt when the window changes (three HMACs per contact, once a minute) or after a knock
    the table missed was found valid.  A knock whose hint is not in the table is checked against
    every candidate (one HMAC each), so a contact added since the table was built still gets in.

    :param listener_uid: our uid (bound into every tag, so a knock cannot be reflected).
    :param max_remembered: how many valid knocks to remember at most.
    :param on_stale: given, the table is never rebuilt here after a change: the caller is
        called instead, makes a new table off the reactor and hands it to :meth:`prepared`.
        Meanwhile, after :meth:`invalidate`, every knock is checked against every candidate
        (one HMAC each, as a knock the table misses always is), never against the old table,
        until a table made since is given for the current window; after a valid knock the
        table missed, the table keeps serving the others.  Only a window reached with no
        table made for it (and no change pending) still builds one here.
    """

    def __init__(
        self,
        listener_uid: str,
        max_remembered: int = MAX_REMEMBERED,
        on_stale: Callable[[], None] | None = None,
    ) -> None:
        self._uid = listener_uid
        self._max = max_remembered
        self._on_stale = on_stale
        #: the table may hold keys no longer valid (with *on_stale*): not used until replaced
        self._stale = False
        self._seen: dict[int, set[bytes]] = {}
        self._count = 0
        self._table: dict[bytes, list[tuple[str, bytes]]] = {}
        self._table_window: int | None = None
        #: tables made ahead (off the reactor), by window
        self._prepared: dict[int, HintTable] = {}
        #: bumped by :meth:`invalidate`: a table prepared before is stale
        self.generation = 0

    @property
    def remembered(self) -> int:
        """How many valid knocks are remembered now."""
        return self._count

    def invalidate(self) -> None:
        """Rebuild the table at the next knock (a contact's key changed, or it was removed);
        with *on_stale*, ask the caller for a new one instead."""
        self._prepared.clear()
        self.generation += 1
        if self._on_stale is None:
            self._table_window = None
        else:
            self._stale = True
            self._on_stale()

    def prepare(self, window: int, candidates: Iterable[tuple[str, bytes]]) -> HintTable:
        """Make the table for *window* without keeping it: it touches no state of this
        verifier, so the caller may run it on another thread (three HMACs per contact, ~15 ms
        for 1,000 contacts), then hand it to :meth:`prepared` on its own thread."""
        return hint_table(self._uid, window, candidates)

    def prepared(self, window: int, table: HintTable, generation: int) -> None:
        """Keep *table* from :meth:`prepare` for *window*: the first knock of that window uses
        it instead of building one.  Dropped if :meth:`invalidate` was called since
        *generation* (:attr:`generation` when the candidates were read).  A table of the
        window in use replaces it at the next knock."""
        if generation == self.generation:
            self._prepared[window] = table

    def verify(
        self, token: bytes, now: float, candidates: Callable[[], Iterable[tuple[str, bytes]]]
    ) -> Verdict:
        """Return the verdict on *token* received at Unix time *now*.

        :param candidates: returns ``(uid, knock key)`` of every contact that may connect;
            called to rebuild the table, and to try every key when the hint is unknown.
        """
        if len(token) != KNOCK_LENGTH:
            return Refused("short knock")
        if looks_like_tls(token):
            return Refused("no knock")
        current = window_of(now)
        if self._prepared:
            ready = self._prepared.pop(current, None)
            for old in [w for w in self._prepared if w < current]:
                del self._prepared[old]
            if ready is not None:
                self._table, self._table_window, self._stale = ready, current, False
        if self._table_window != current and not self._stale:
            self._build_table(current, candidates())
        head, tag = token[:16], token[16:]
        uid = None if self._stale else self._match(head, tag, self._table.get(head[:8], ()))
        missed = uid is None and not self._stale
        if uid is None:
            uid = self._match(head, tag, candidates())
            if uid is None:
                return Refused("bad knock")
        window = struct.unpack(">I", head[:4])[0]
        skew = window - (current & 0xFFFFFFFF)
        if abs(skew) > ACCEPTED_SKEW:
            return Refused("stale knock", uid, skew)
        if missed:
            if self._on_stale is None:
                self._table_window = None  # the table missed a contact: rebuild it next time
            else:
                self._on_stale()  # the table missed a contact: the caller makes a new one
        self._forget_before(current - ACCEPTED_SKEW)
        seen = self._seen.setdefault(window, set())
        nonce = head[4:]
        if nonce in seen:
            return Refused("replayed knock", uid)
        if self._count >= self._max:
            return Refused("too many knocks", uid)
        seen.add(nonce)
        self._count += 1
        return Accepted(uid)

    def _match(
        self, head: bytes, tag: bytes, candidates: Iterable[tuple[str, bytes]]
    ) -> str | None:
        for uid, key in candidates:
            if hmac.compare_digest(_tag(key, head, self._uid), tag):
                return uid
        return None

    def _build_table(self, current: int, candidates: Iterable[tuple[str, bytes]]) -> None:
        self._table = hint_table(self._uid, current, candidates)
        self._table_window = current
        self._stale = False

    def _forget_before(self, oldest: int) -> None:
        for window in [w for w in self._seen if w < oldest]:
            self._count -= len(self._seen.pop(window))


class KnockKeys:
    """Our knock keys with each contact, computed once per (uid, public key) and kept.

    A pair key costs one X25519 exchange and a key conversion (about 50 µs, 52 ms for 1,000
    contacts); the listener's hint table needs every contact's key, so they are cached.  The
    caller may compute many off the reactor thread: :meth:`missing` says which are not cached,
    :meth:`compute` (which touches no mutable state, so it may run on any thread) computes them,
    and :meth:`add` (on the caller's thread) keeps them.

    :param own_seed: our raw Ed25519 private key.
    :param own_uid: our uid.
    """

    def __init__(self, own_seed: bytes, own_uid: str) -> None:
        self._own = ed25519_seed_to_x25519(own_seed)
        self._uid = own_uid
        self._cache: dict[tuple[str, bytes], bytes | None] = {}

    def key(self, peer_uid: str, peer_public: bytes | None) -> bytes | None:
        """Return the knock key with *peer_uid*: the pair key when its public key is known,
        else the uid key; ``None`` if the public key has no X25519 form."""
        index = (peer_uid, peer_public or b"")
        if index not in self._cache:
            self.add(self.compute([(peer_uid, peer_public)]))
        return self._cache[index]

    def cached(self, peer_uid: str, peer_public: bytes | None) -> bytes | None:
        """Return the cached knock key with *peer_uid*, or ``None`` (not cached, or none)."""
        return self._cache.get((peer_uid, peer_public or b""))

    def missing(self, peers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
        """Return the ``(uid, public key)`` of *peers* whose pair key is not cached (public
        keys unknown yet are left out: their uid key costs one hash, not an exchange)."""
        cache = self._cache
        return [(uid, public) for uid, public in peers if public and (uid, public) not in cache]

    def compute(
        self, peers: Iterable[tuple[str, bytes | None]]
    ) -> dict[tuple[str, bytes], bytes | None]:
        """Compute the knock keys of *peers* without caching them (safe on any thread).

        :returns: ``{(uid, public key or b""): key or None}``, for :meth:`add`.
        """
        computed: dict[tuple[str, bytes], bytes | None] = {}
        for peer_uid, peer_public in peers:
            try:
                value: bytes | None = (
                    _pair_key(self._own, self._uid, peer_public, peer_uid)
                    if peer_public
                    else uid_key(self._uid, peer_uid)
                )
            except KnockKeyError:
                value = None
            computed[(peer_uid, peer_public or b"")] = value
        return computed

    def add(self, computed: dict[tuple[str, bytes], bytes | None]) -> None:
        """Keep keys from :meth:`compute`."""
        if len(self._cache) + len(computed) > 65_536:
            self._cache.clear()  # contacts churned a lot: start again
        self._cache.update(computed)
