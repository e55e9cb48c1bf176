"""The asyncio client of Jarvis's local API, for bots and scripts.

Use it under a plain ``asyncio.run(...)``; it needs no Twisted reactor and imports none::

    import asyncio
    from jarvis.client import Client

    async def main() -> None:
        async with await Client.connect() as client:      # the default data directory's daemon
            print(await client.call("daemon.status"))
            async for event in client.events():
                print(event.name, event.params)

    asyncio.run(main())

``call`` raises :class:`RemoteError` (with ``code``, ``kind`` and a one-line message) when the
daemon answers with an error; cancelling the task that awaits ``call`` sends
``$/cancelRequest`` so that the daemon stops the work too.  ``events()`` yields every event the
daemon sends; scripts must ignore event names and fields they do not know.

This module uses asyncio streams only: it must not import Twisted.  The protocol is described
in ``docs/ipc.md``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from jarvis.common.errors import DaemonNotRunning, UntrustedDaemon
from jarvis.common.peercred import check_local_server
from jarvis.ipc import jsonrpc
from jarvis.ipc.jsonrpc import RemoteError

__all__ = ["Client", "DaemonNotRunning", "Event", "RemoteError", "UntrustedDaemon"]


@dataclass(frozen=True)
class Event:
    """One daemon event: its name (e.g. ``message.received``) and its payload."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


_CLOSED = object()


def _split_endpoint(description: str) -> tuple[str, dict[str, str], list[str]]:
    kind, _, rest = description.partition(":")
    positional: list[str] = []
    named: dict[str, str] = {}
    for part in rest.split(":") if rest else []:
        key, eq, value = part.partition("=")
        if eq and key.isidentifier():
            named[key] = value
        else:
            positional.append(part)
    return kind, named, positional


async def _open_unix(path: str, limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path, limit=limit)
    # Before anything is sent: the server must run as our own uid, or the first request
    # (unlock's password, a token) would go to whoever planted the socket.
    try:
        check_local_server(writer.get_extra_info("socket"))
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


async def _open(target: str, limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    if target.startswith("unix:"):
        _, named, positional = _split_endpoint(target)
        path = named.get("path") or (positional[0] if positional else "")
        reader, writer = await _open_unix(path, limit)
        return reader, writer, "unix"
    if target.startswith("tcp:"):
        _, named, positional = _split_endpoint(target)
        host = named.get("host") or (positional[0] if positional else "127.0.0.1")
        port = int(named.get("port") or (positional[1] if len(positional) > 1 else "0"))
        reader, writer = await asyncio.open_connection(host, port, limit=limit)
        return reader, writer, "tcp"
    reader, writer = await _open_unix(target, limit)
    return reader, writer, "unix"


class Client:
    """A connection to the daemon's local API; build it with :meth:`connect`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        # each iterator's queue and the event names it wants (None: all)
        self._queues: list[tuple[asyncio.Queue[Any], frozenset[str] | None]] = []
        self._subscribed: asyncio.Future[Any] | None = None
        # what the connection asked the daemon for (None: all; unset before the first call)
        self._requested: frozenset[str] | None = frozenset()
        self._closed = False
        self._reading = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(
        cls,
        path_or_endpoint: str | None = None,
        token: str | None = None,
        *,
        data_dir: str | None = None,
    ) -> Client:
        """Connect to the daemon.

        :param path_or_endpoint: a UNIX socket path, or an endpoint description
            (``unix:PATH`` or ``tcp:HOST:PORT``); by default the endpoint of *data_dir*'s daemon.
        :param token: the API token for TCP endpoints (read from the data directory's token
            file when connecting by data directory).
        :param data_dir: the data directory (default ``$JARVIS_HOME`` or the platform's).
        :returns: the connected client.
        :raises DaemonNotRunning: if nothing listens there.
        :raises UntrustedDaemon: if the process on the UNIX socket runs as another user
            (checked before anything is sent to it).
        :raises RemoteError: ``unauthorized`` if the token is refused.
        """
        target = path_or_endpoint
        if target is None:
            from jarvis.common import paths

            directory = data_dir or paths.default_data_dir()
            target = paths.client_endpoint_for(directory)
            if token is None:
                token = paths.client_token_for(directory, target)
        try:
            reader, writer, _ = await _open(target, jsonrpc.MAX_INCOMING_LINE)
        except (OSError, ValueError) as e:
            reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
            raise DaemonNotRunning(
                f"no Jarvis daemon answers at {target} ({reason}): "
                "start one with 'jarvis daemon start'"
            ) from None
        client = cls(reader, writer)
        if token is not None:
            try:
                await client.call("auth", token=token)
            except BaseException:
                await client.close()
                raise
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self._closed

    async def call(self, method: str, /, **params: Any) -> Any:
        """Call *method* with named *params* and return its result.

        :raises RemoteError: the daemon's error (``code``, ``kind``, message).
        :raises ConnectionError: if the connection is or gets closed.
        :raises asyncio.CancelledError: if the awaiting task is cancelled; the daemon is told
            to cancel the request too.
        """
        request_id, future = self._send(method, params)
        try:
            return await future
        except asyncio.CancelledError:
            if self._waiting.pop(request_id, None) is not None and not self._closed:
                self._writer.write(jsonrpc.notification("$/cancelRequest", {"id": request_id}))
            raise

    def _send(self, method: str, params: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        # Writes at once (not when a coroutine first runs), so requests keep their order.
        if self._closed:
            raise ConnectionError("the connection to the daemon is closed")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._writer.write(jsonrpc.request(request_id, method, params or None))
        return request_id, future

    def events(self, *names: str) -> AsyncIterator[Event]:
        """Return an async iterator over the daemon's events from this call on: every event,
        or only those called *names* (see Events in ``docs/ipc.md``).

        The first call subscribes the connection (``events.subscribe`` is sent at once, so no
        event after this call is missed); a call that wants more than the connection asked for
        so far subscribes again to the union.  The iterator ends when the connection closes.
        Several iterators may run at once; each sees the events it asked for.

        :raises ConnectionError: if the connection is closed.
        """
        wanted = frozenset(names) if names else None
        before = self._requested
        union = jsonrpc.widen_events(before, wanted)
        if self._subscribed is None or union != before:
            self._requested = union
            _, subscribed = self._send("events.subscribe", jsonrpc.subscribe_params(union))
            subscribed.add_done_callback(self._subscription_done)
            self._subscribed = subscribed
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues.append((queue, wanted))
        return self._iterate(queue, self._subscribed)

    def _subscription_done(self, subscribed: asyncio.Future[Any]) -> None:
        # Refused (an unknown name) or lost: the next events() call subscribes afresh.
        if subscribed is self._subscribed and (subscribed.cancelled() or subscribed.exception()):
            self._subscribed = None
            self._requested = frozenset()

    async def _iterate(
        self, queue: asyncio.Queue[Any], subscribed: asyncio.Future[Any]
    ) -> AsyncIterator[Event]:
        try:
            await asyncio.shield(subscribed)
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                yield item
        finally:
            self._queues = [entry for entry in self._queues if entry[0] is not queue]

    async def close(self) -> None:
        """Close the connection; pending calls fail with ``ConnectionError``."""
        if not self._closed:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reading.cancel()
        try:
            await self._reading
        except asyncio.CancelledError:
            pass
        self._shut_down()

    def _shut_down(self) -> None:
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the connection to the daemon was lost"))
        for queue, _ in self._queues:
            queue.put_nowait(_CLOSED)

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    line = await self._reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    return
                self._received(line[:-1])
        except OSError:
            return
        finally:
            self._shut_down()

    def _received(self, line: bytes) -> None:
        try:
            incoming = jsonrpc.parse_incoming(line)
        except jsonrpc.InvalidMessage:
            return
        if incoming.is_notification:
            if incoming.method == "$/progress":
                return
            event = Event(str(incoming.method), incoming.params)
            for queue, wanted in self._queues:
                if wanted is None or event.name in wanted:
                    queue.put_nowait(event)
            return
        future = self._waiting.pop(incoming.id, None) if isinstance(incoming.id, int) else None
        if future is None or future.done():
            return
        if incoming.error is not None:
            future.set_exception(incoming.error)
        else:
            future.set_result(incoming.result)
