"""The errors of :mod:`jarvis.crypto`: one class per problem a user or caller can meet.

Each class's docstring explains the problem and the fix (the CLI and UI show it); ``str()`` of an
instance is one line saying what went wrong, optionally followed by a detail.  Every class derives
from :class:`CryptoError` so a caller can catch the whole family at once.

This module must not import anything from the rest of Jarvis.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class of every error raised by :mod:`jarvis.crypto`."""

    #: The one-line message shown to the user; subclasses override it.
    message = "a cryptographic operation failed"
    #: The local API's error kind (``docs/ipc.md``); ``"internal"`` for errors a caller cannot
    #: cause with its input (they are bugs, logged by the daemon).
    kind = "internal"

    def __init__(self, detail: str | None = None) -> None:
        text = self.message if not detail else f"{self.message}: {detail}"
        # A message is one line, whatever the detail contains (it may quote untrusted input).
        super().__init__(" ".join(text.split()))
        self.detail = detail


class WeakPassword(CryptoError):
    """The password was refused before any key derivation.

    Jarvis refuses an empty password: a key file or export sealed with it would be readable by
    anyone who copies the file.  Choose a longer password (a few random words is a good one).
    """

    message = "the password is refused"
    kind = "weak_password"


class WrongPassword(CryptoError):
    """The password does not open this key file or export.

    The file itself is well formed, so the password is the likely culprit: check the keyboard
    layout and Caps Lock and try again.  Jarvis cannot recover a forgotten password; without it
    the identity and the history are lost (an export made earlier opens with its own password).
    """

    message = "wrong password"
    kind = "wrong_password"


class CorruptKeyFile(CryptoError):
    """The key file in the data directory is damaged, truncated or not a Jarvis key file.

    No password can open it.  Restore the file from a backup, or import an account export; if
    neither exists the identity is lost and a new one must be created.
    """

    message = "the key file is damaged or not a Jarvis key file"
    kind = "data_dir"


class CorruptExport(CryptoError):
    """The account export is damaged, truncated or not a Jarvis export.

    No password can open it.  Copy the export again from where it was made (check that the
    transfer was complete and binary-safe) or make a new export on the original machine.
    """

    message = "the file is damaged or not a Jarvis account export"
    kind = "invalid"


class DecryptionFailed(CryptoError):
    """Encrypted data failed its integrity check.

    Either it was encrypted under another key (for instance a store opened with the wrong data
    key), or it was modified or truncated on disk.  Nothing of it can be trusted; restore the
    store from a backup or an export if this repeats.
    """

    message = "decryption failed: the data was altered or belongs to another key"


class KeyWiped(CryptoError):
    """A cipher was used after :meth:`~jarvis.crypto.aead.RowCipher.wipe` dropped its key.

    This happens when the store is locked while work is still in flight; unlock Jarvis again and
    retry the operation.
    """

    message = "the key was wiped (Jarvis is locked): unlock and retry"


class BadSignature(CryptoError):
    """A signature did not verify with the public key it claims to come from.

    The signed data was altered, or it was signed by another key.  Treat the data as forged:
    ask its author for a fresh copy over a channel you trust.
    """

    message = "the signature does not match: the data was altered or signed by another key"


class LinkCodeError(CryptoError):
    """Base class of the errors raised while reading a contact's link code or card file."""

    message = "the contact link code or card is not valid"
    kind = "invalid_link"


class NotALink(LinkCodeError):
    """The text is not a Jarvis link code.

    A link code starts with ``jarvis://``; ask your contact for the link their Jarvis shows
    (``jarvis link``), or for their ``.jcard`` file.
    """

    message = "this is not a Jarvis link code (it must start with jarvis://)"


class DamagedLink(LinkCodeError):
    """The link code is truncated or damaged: its checksum does not match.

    A character was lost or changed while copying (line wrapping, a chat app that shortens long
    text, a typo).  Copy the whole link again, from ``jarvis://`` to its last character.
    """

    message = "the link code is truncated or damaged: copy the whole link again"


class UnsupportedVersion(LinkCodeError):
    """The link code or card was made by a newer version of Jarvis.

    Update Jarvis, or ask your contact for a card in the version this Jarvis reads.
    """

    message = "the link code or card was made by a newer Jarvis: update Jarvis"


class AlteredCard(LinkCodeError, BadSignature):
    """The contact card's signature does not match its content: it was altered.

    The name, an address or the key was changed after the owner signed the card; whoever sent
    it may be trying to impersonate your contact.  Do not add it: get the link or card again
    directly from your contact and compare fingerprints.
    """

    message = "the contact card was altered: its signature does not match"


class MalformedCard(LinkCodeError):
    """A field of the contact card is invalid (a name too long, a bad address, a wrong length).

    The card passed its checksum, so it was made this way rather than damaged in transit: ask
    your contact to update Jarvis and send a new link.
    """

    message = "the contact card has an invalid field"


class MalformedCardFile(LinkCodeError):
    """The file is not a valid Jarvis contact card (``.jcard``) JSON document.

    It is not JSON, or a required field is missing or of the wrong type.  Ask your contact for
    the card file again, or use their ``jarvis://`` link code instead.
    """

    message = "the file is not a valid Jarvis contact card"
