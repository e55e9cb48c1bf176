"""The Jarvis mailbox: a ciphertext-only store-and-forward relay for offline delivery (issue 15).

- :mod:`jarvis.mailbox.wire`: sans-IO framing and typed records of the mailbox protocol;
- :mod:`jarvis.protocol.mailbox_link`: the ``jarvis-mailbox:`` link (host, port, TLS key pin);
- :mod:`jarvis.mailbox.store`: the storage interface and its SQLite implementation;
- :mod:`jarvis.mailbox.server`: the server's per-connection protocol and its shared state;
- :mod:`jarvis.mailbox.service`: ``twistd jarvis-mailbox`` options and service tree;
- :mod:`jarvis.mailbox.client`: the Twisted client library the daemon uses.

See docs/mailbox.md for the protocol and the threat model.
"""
