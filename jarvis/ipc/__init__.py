"""The daemon's local API: JSON-RPC 2.0, one JSON object per line, over a private socket.

- :mod:`jarvis.ipc.jsonrpc`: framing, error codes and message helpers (pure, no I/O);
- :mod:`jarvis.ipc.registry`: method declarations, validation, deadlines, cancellation, progress;
- :mod:`jarvis.ipc.methods`: the methods themselves, thin calls into the ``Node``;
- :mod:`jarvis.ipc.server`: the Twisted server protocol and factory;
- :mod:`jarvis.ipc.client`: the Twisted client (the terminal UI and the CLI use it);
- :mod:`jarvis.ipc.docgen`: renders ``docs/ipc.md`` from the registry.

Importing this package imports no reactor.  The asyncio client for scripts is :mod:`jarvis.client`.
"""
