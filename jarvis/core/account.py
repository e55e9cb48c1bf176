"""The account's files: the key file (create, unlock, change password), export, import, wipe.

:class:`AccountFiles` owns everything the node keeps on disk outside the store's rows: the
password-wrapped key file, the password back-off every password check goes through
(:mod:`jarvis.core.backoff`), the sealed ``.jexport`` file, and the wipe of the data directory.
Blocking work (Argon2id, file writes, JSON of a whole history) runs through the injected
``run_blocking``, never on the reactor thread.  It must not hold the unlocked keys: it hands
them to the node, which owns the lock state.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from jarvis.common.atomicfile import write_atomically
from jarvis.common.errors import DataDirError, IdentityExists, InvalidInput
from jarvis.core.backoff import PasswordBackoff
from jarvis.crypto import export as export_crypto
from jarvis.crypto import keyfile
from jarvis.crypto.aead import RowCipher
from jarvis.crypto.errors import WrongPassword
from jarvis.crypto.identity import IdentityKey
from jarvis.store import queries
from jarvis.store.database import Store

KEYFILE = "identity.key"
DATABASE = "jarvis.db"
EXPORT_FORMAT = 1
#: The key, derived from the data key, of the store's blind index of contact uids.
INDEX_KEY_INFO = b"jarvis store blind index v1"


def open_store(path: str, keys: keyfile.UnlockedKeys, reactor: Any) -> defer.Deferred[Store]:
    """Open (or create) the store at *path* under *keys*' data key."""
    cipher = RowCipher(keys.data_key)
    return Store.open(
        path, reactor=reactor, cipher=cipher, index_key=cipher.derive_subkey(INDEX_KEY_INFO)
    )


class AccountFiles:
    """The key file, the back-off, export/import and the wipe of one data directory.

    :param data_dir: the private data directory (already checked by the daemon).
    :param run_blocking: runs a blocking callable off the reactor thread; returns a Deferred.
    :param seconds: wall-clock time for the password back-off.
    :param kdf_params: Argon2id parameters for new key files (tests use small ones).
    :param store_reactor: the reactor the store's thread answers on.
    """

    log = Logger()

    def __init__(
        self,
        data_dir: str,
        *,
        run_blocking: Callable[..., defer.Deferred[Any]],
        seconds: Callable[[], float],
        kdf_params: keyfile.KdfParams,
        store_reactor: Any,
    ) -> None:
        self.data_dir = data_dir
        self.run_blocking = run_blocking
        self.kdf_params = kdf_params
        self.store_reactor = store_reactor
        #: one wrong-password counter for every method that checks the password, kept on disk
        self.backoff = PasswordBackoff(data_dir, seconds=seconds, run_blocking=run_blocking)

    @property
    def keyfile_path(self) -> str:
        return os.path.join(self.data_dir, KEYFILE)

    @property
    def database_path(self) -> str:
        return os.path.join(self.data_dir, DATABASE)

    def exists(self) -> bool:
        """Whether a key file exists (a ``stat()``: callers cache the answer when they can)."""
        return os.path.exists(self.keyfile_path)

    def public_uid(self) -> str | None:
        """The uid written in clear in the key file, or ``None`` if unreadable."""
        try:
            with open(self.keyfile_path, "rb") as f:
                uid, _ = keyfile.read_public(f.read())
            return str(uid)
        except Exception:
            self.log.warn("the identity key file could not be read")
            return None

    @defer.inlineCallbacks
    def check_password(self, check: Callable[..., Any], *args: Any) -> Any:
        """Run *check* on *args* (it raises ``WrongPassword``) off the reactor, under the
        back-off every password-checking method shares.

        :raises TooManyAttempts: during the back-off, without running *check*.
        :raises WrongPassword: for a wrong password, once the failure is saved.
        """
        self.backoff.check()
        try:
            result = yield self.run_blocking(check, *args)
        except WrongPassword:
            yield self.backoff.failed()
            raise
        yield self.backoff.succeeded()
        return result

    @defer.inlineCallbacks
    def create(self, name: str, password: str) -> Any:
        """Derive a new key file for *name* and write it; fire with its unlocked keys.

        :raises IdentityExists: if the data directory already has one (checked again after
            the slow derivation).
        """
        if self.exists():
            raise IdentityExists(f"an identity already exists in {self.data_dir}")
        content, keys = yield self.run_blocking(
            keyfile.create_keyfile, name, password, params=self.kdf_params
        )
        if self.exists():
            raise IdentityExists(f"an identity already exists in {self.data_dir}")
        yield self.run_blocking(write_private_atomically, self.keyfile_path, content)
        return keys

    @defer.inlineCallbacks
    def unlock(self, password: str) -> Any:
        """Open the key file with *password* (under the back-off); fire with its keys."""
        self.backoff.check()
        content = yield self.run_blocking(read_file, self.keyfile_path)
        keys = yield self.check_password(keyfile.unlock_keyfile, content, password)
        return keys

    @defer.inlineCallbacks
    def change_password(self, old: str, new: str) -> Any:
        """Re-wrap the data key under *new* (the store is not re-encrypted)."""
        self.backoff.check()
        content = yield self.run_blocking(read_file, self.keyfile_path)
        new_content = yield self.check_password(keyfile.change_password, content, old, new)
        yield self.run_blocking(write_private_atomically, self.keyfile_path, new_content)

    @defer.inlineCallbacks
    def export(
        self, path: str, password: str, keys: keyfile.UnlockedKeys, dump: dict[str, Any]
    ) -> Any:
        """Seal *keys*' identity and the store's *dump* under *password* into a new file at
        *path*; fire with ``{path, bytes}``."""
        content = {
            "jarvis_export": EXPORT_FORMAT,
            "name": keys.name,
            "identity": keys.identity.private_bytes().hex(),
            "store": dump,
        }
        # Encoding the whole history is work in proportion to it: on the thread, with the KDF.
        blob = yield self.run_blocking(_seal_export, content, password, self.kdf_params)
        yield self.run_blocking(write_private_atomically, path, blob, exclusive=True)
        return {"path": path, "bytes": len(blob)}

    @defer.inlineCallbacks
    def import_(
        self,
        path: str,
        export_password: str,
        password: str,
        progress: Callable[[Any], None] | None,
    ) -> Any:
        """Restore an export into this (empty) data directory under *password*; fire with the
        new key file's unlocked keys once the store and key file are in place."""
        if self.exists() or os.path.exists(self.database_path):
            raise IdentityExists("import needs an empty data directory")
        blob = yield self.run_blocking(read_file, path)
        report(progress, {"stage": "opening export", "percent": 10})
        identity, name, dump = yield self.run_blocking(_open_export, blob, export_password)
        report(progress, {"stage": "deriving key", "percent": 40})
        content, keys = yield self.run_blocking(
            keyfile.create_keyfile, name, password, params=self.kdf_params, identity=identity
        )
        store = yield open_store(self.database_path + ".import", keys, self.store_reactor)
        try:
            yield store.run(queries.load, dump, write=True)
        finally:
            yield store.close()
        yield self.run_blocking(_finish_import, self.database_path, self.keyfile_path, content)
        return keys

    @defer.inlineCallbacks
    def check_for_delete(self, password: str) -> Any:
        """Check *password* (under the back-off) before the account is deleted."""
        self.backoff.check()
        content = yield self.run_blocking(read_file, self.keyfile_path)
        yield self.check_password(keyfile.unlock_keyfile, content, password)

    def wipe(self) -> defer.Deferred[int]:
        """Overwrite and remove every regular file of the data directory; fire with the count."""
        return self.run_blocking(_wipe_directory, self.data_dir)


def report(progress: Callable[[Any], None] | None, value: Any) -> None:
    """Tell *progress* (if any) about *value*."""
    if progress is not None:
        progress(value)


def _seal_export(content: dict[str, Any], password: str, params: keyfile.KdfParams) -> bytes:
    """Encode and seal an export's content (runs on a thread: JSON of the whole history)."""
    payload = json.dumps(content).encode("utf-8")
    return export_crypto.seal_export(payload, password, params=params)


def _open_export(blob: bytes, password: str) -> tuple[IdentityKey, str, dict[str, Any]]:
    """Open and decode an export (runs on a thread): its identity key, name and store dump.

    :raises DataDirError: if the opened content is not what an export holds.
    """
    payload = export_crypto.open_export(blob, password)
    try:
        data = json.loads(payload)
        identity = IdentityKey.from_private_bytes(bytes.fromhex(data["identity"]))
        return identity, data["name"], data["store"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataDirError(f"the export's content is damaged: {e}") from e


def read_file(path: str) -> bytes:
    """Read a whole file (blocking: run it through ``run_blocking``)."""
    with open(path, "rb") as f:
        return f.read()


def write_private_atomically(path: str, content: bytes, *, exclusive: bool = False) -> None:
    """Write *content* to *path* (mode 0600) through
    :func:`jarvis.common.atomicfile.write_atomically`
    (an exclusively created temporary file, fsync, rename).

    :raises InvalidInput: with *exclusive*, if *path* already exists (a symbolic link too).
    """
    try:
        write_atomically(path, content, mode=0o600, exclusive=exclusive)
    except FileExistsError:
        raise InvalidInput(f"{path} already exists: choose another file name") from None


def _finish_import(database_path: str, keyfile_path: str, content: bytes) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(database_path + ".import" + suffix):
            os.replace(database_path + ".import" + suffix, database_path + suffix)
    write_private_atomically(keyfile_path, content)


def _wipe_directory(path: str) -> int:
    """Overwrite (best effort) and remove every regular file under *path*; return the count.

    Sockets and symbolic links are left alone: they hold no data, and the running daemon still
    needs them (its local API socket ``ipc.sock`` and the lock links beside it).
    """
    removed = 0
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            full = os.path.join(root, name)
            try:
                if not stat.S_ISREG(os.lstat(full).st_mode):
                    continue
                size = os.path.getsize(full)
                with open(full, "r+b") as f:
                    f.write(b"\0" * size)
                    f.flush()
                    os.fsync(f.fileno())
                os.unlink(full)
                removed += 1
            except OSError:
                pass
    return removed
