"""Key agreement of the Hello exchange: the signed transcript and the session keys it yields.

Each side of a session makes one :class:`KeyAgreement` when TLS is up: it holds the X25519
ephemeral key, builds our signed :class:`~jarvis.protocol.records.Hello`, and checks the peer's
Hello into :class:`SessionKeys` (the sealer, the opener and the negotiated version), forgetting
the ephemeral private key afterwards (forward secrecy).  The session
(:class:`~jarvis.protocol.session.PeerSession`) decides *when* these run; this module decides
*what* is signed and derived.

Pure: no I/O, no clock, no logging; it never exposes the private key or the derived keys.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jarvis.crypto.cascade import CascadeOpener, CascadeSealer, derive_session_keys
from jarvis.protocol.records import Hello

#: Domain separation of the Hello signature.
HELLO_CONTEXT = b"jarvis/hello/v1\x00"
#: Role bytes in the Hello transcript.
ROLE_INITIATOR = b"I"
ROLE_RESPONDER = b"R"

_U16 = struct.Struct(">H")


def hello_transcript(
    *,
    initiator: bool,
    signer_uid: str,
    recipient_uid: str,
    ephemeral_key: bytes,
    min_version: int,
    max_version: int,
    channel_binding: bytes,
) -> bytes:
    """Return the bytes a Hello's signature covers.

    ``HELLO_CONTEXT || role ("I" or "R") || u16-prefixed signer uid || u16-prefixed recipient
    uid || ephemeral key (32) || u16 min_version || u16 max_version || u16-prefixed channel
    binding``.  Binding the role, both uids and the TLS channel binding stops a Hello from being
    replayed on another connection, towards another peer, or reflected back to its sender.

    :param initiator: whether the signer dialled the connection.
    :raises ValueError: if a field does not fit its length prefix.
    """
    fields = [
        HELLO_CONTEXT,
        ROLE_INITIATOR if initiator else ROLE_RESPONDER,
    ]
    for value in (signer_uid.encode("utf-8"), recipient_uid.encode("utf-8")):
        fields += [_U16.pack(len(value)), value]
    if len(channel_binding) > 0xFFFF:
        raise ValueError("channel binding too long")
    fields += [
        bytes(ephemeral_key),
        _U16.pack(min_version),
        _U16.pack(max_version),
        _U16.pack(len(channel_binding)),
        bytes(channel_binding),
    ]
    return b"".join(fields)


def negotiate_version(local: tuple[int, int], remote: tuple[int, int]) -> int | None:
    """Return the highest version both ranges contain, or ``None`` if they do not overlap.

    :param local: our ``(min_version, max_version)``.
    :param remote: the peer's ``(min_version, max_version)``.
    """
    low = max(local[0], remote[0])
    high = min(local[1], remote[1])
    return high if low <= high else None


@dataclass(frozen=True)
class SessionKeys:
    """What an accepted Hello yields: the keys of one established session.

    :ivar sealer: seals our messages to the peer.
    :ivar opener: opens the peer's messages (and refuses replays).
    :ivar version: the negotiated protocol version.
    """

    sealer: CascadeSealer
    opener: CascadeOpener
    version: int


class KeyAgreement:
    """One side's half of the Hello key agreement on one connection.

    :param local_uid: our uid.
    :param peer_uid: the uid the connection is pinned to.
    :param initiator: whether we dialled the connection.
    :param versions: our ``(min_version, max_version)``.
    :param channel_binding: the TLS exporter value of this connection.
    """

    def __init__(
        self,
        *,
        local_uid: str,
        peer_uid: str,
        initiator: bool,
        versions: tuple[int, int],
        channel_binding: bytes,
    ) -> None:
        self._local_uid = local_uid
        self._peer_uid = peer_uid
        self._initiator = initiator
        self._versions = versions
        self._channel_binding = bytes(channel_binding)
        self._ephemeral: X25519PrivateKey | None = X25519PrivateKey.generate()
        self._ephemeral_public = self._ephemeral.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )

    def hello(self, sign: Callable[[bytes], bytes]) -> Hello:
        """Return our Hello, signed with *sign* (our Ed25519 identity key)."""
        low, high = self._versions
        transcript = hello_transcript(
            initiator=self._initiator,
            signer_uid=self._local_uid,
            recipient_uid=self._peer_uid,
            ephemeral_key=self._ephemeral_public,
            min_version=low,
            max_version=high,
            channel_binding=self._channel_binding,
        )
        return Hello(low, high, self._local_uid, self._ephemeral_public, sign(transcript))

    def accept(self, hello: Hello, peer_key: Ed25519PublicKey) -> SessionKeys | str:
        """Check the peer's Hello and derive the session keys.

        :param peer_key: the peer's pinned Ed25519 identity key.
        :returns: the :class:`SessionKeys`, or the reason the Hello is refused.
        """
        if hello.uid != self._peer_uid:
            return "hello from an unexpected uid"
        transcript = hello_transcript(
            initiator=not self._initiator,
            signer_uid=hello.uid,
            recipient_uid=self._local_uid,
            ephemeral_key=hello.ephemeral_key,
            min_version=hello.min_version,
            max_version=hello.max_version,
            channel_binding=self._channel_binding,
        )
        try:
            peer_key.verify(hello.signature, transcript)
        except InvalidSignature:
            return "bad hello signature"
        version = negotiate_version(self._versions, (hello.min_version, hello.max_version))
        if version is None:
            return (
                f"no common protocol version (ours {self._versions[0]}-{self._versions[1]}, "
                f"theirs {hello.min_version}-{hello.max_version})"
            )
        if self._ephemeral is None:
            return "key agreement already used"
        try:
            shared = self._ephemeral.exchange(
                X25519PublicKey.from_public_bytes(hello.ephemeral_key)
            )
        except ValueError:
            return "invalid ephemeral key"
        if self._initiator:
            initiator_uid, responder_uid = self._local_uid, self._peer_uid
            initiator_eph, responder_eph = self._ephemeral_public, hello.ephemeral_key
        else:
            initiator_uid, responder_uid = self._peer_uid, self._local_uid
            initiator_eph, responder_eph = hello.ephemeral_key, self._ephemeral_public
        to_responder, to_initiator = derive_session_keys(
            shared,
            initiator_uid=initiator_uid,
            responder_uid=responder_uid,
            initiator_ephemeral=initiator_eph,
            responder_ephemeral=responder_eph,
            channel_binding=self._channel_binding,
        )
        outgoing, incoming = (
            (to_responder, to_initiator) if self._initiator else (to_initiator, to_responder)
        )
        self._ephemeral = None  # forward secrecy: the private half is not needed any more
        return SessionKeys(
            CascadeSealer(outgoing, self._local_uid, self._peer_uid),
            CascadeOpener(incoming, self._peer_uid, self._local_uid),
            version,
        )

    def forget(self) -> None:
        """Drop the ephemeral private key (the session is closing)."""
        self._ephemeral = None
