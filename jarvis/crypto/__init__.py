"""Jarvis's cryptography: identity keys, the key file, row encryption, contact cards, exports.

Everything here is pure code: bytes in, bytes out, no reactor, no files, no sockets.  The
password-based functions (:mod:`~jarvis.crypto.keyfile`, :mod:`~jarvis.crypto.export`) run
Argon2id and block for a fraction of a second: callers run them in a thread, never on the
reactor thread.

* :mod:`jarvis.crypto.identity` -- the Ed25519 identity key, uid, fingerprint, safety code and
  self-signed TLS certificate.
* :mod:`jarvis.crypto.keyfile` -- the password-protected key file of the data directory.
* :mod:`jarvis.crypto.aead` -- :class:`~jarvis.crypto.aead.RowCipher`, AES-256-GCM for rows at rest.
* :mod:`jarvis.crypto.linkcode` -- signed contact cards as ``jarvis://`` links and ``.jcard`` files.
* :mod:`jarvis.crypto.export` -- the password-sealed account export container.
* :mod:`jarvis.crypto.cascade` -- the layered message encryption between peers.
* :mod:`jarvis.crypto.encoding` -- strict base64url and JSON decoding for the formats above.
* :mod:`jarvis.crypto.errors` -- every error raised here, each explaining its fix.

See ``docs/crypto.md`` for the formats and their limits.
"""
