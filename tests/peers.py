"""Real peers for end-to-end tests: a daemon process plus an API client and an event recorder.

A :class:`Peer` is one ``twistd -n jarvis`` with its own data directory, listening for peers on
127.0.0.1, driven through the real local API.  Waiting is always for an event or a state reached
(with a deadline), never for a fixed time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor

from jarvis.ipc.client import IpcClient
from tests.daemons import DaemonProcess
from tests.waiting import Waiters

PASSWORD = "correct horse battery staple"


class EventRecorder(Waiters):
    """Keeps every event of one client and fires waiters when a predicate holds."""

    def __init__(self) -> None:
        super().__init__(reactor)
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, payload: dict[str, Any]) -> None:
        self.events.append((name, payload))
        self.check()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [p for n, p in self.events if n == name]

    def wait(self, predicate: Callable[[], bool], timeout: float = 30.0) -> defer.Deferred[None]:
        """Fire once *predicate()* is true (checked now and after every event)."""
        return super().wait(predicate, timeout)


class Peer:
    """One daemon and one subscribed API client."""

    def __init__(self, testcase: Any, root: str, name: str, extra: list[str] | None = None) -> None:
        self.name = name
        self.data_dir = os.path.join(root, name)
        sock_dir = os.path.join(root, f"s{name[:3]}")
        os.makedirs(sock_dir, mode=0o700, exist_ok=True)
        self.password_file = os.path.join(root, f"{name}.pw")
        with open(self.password_file, "w") as f:
            f.write(PASSWORD + "\n")
        self.process = DaemonProcess(self.data_dir, sock_dir, extra)
        self.client: IpcClient | None = None
        self.recorder = EventRecorder()
        self.uid = ""
        self.link = ""
        testcase.addCleanup(self.cleanup)

    async def start(self, *, create: bool = False, unlock: bool = False) -> None:
        """Start the daemon (unlocking it from the password file when asked) and attach."""
        if unlock and self.password_file not in self.process.extra:
            self.process.extra = [*self.process.extra, "--password-file", self.password_file]
        if self.link:
            # a restart keeps its port, as a real node does, so contacts can redial it
            self.process.listen = f"tcp:{self.peer_port()}:interface=127.0.0.1"
        await self.process.start()
        self.recorder = EventRecorder()
        self.client = await IpcClient.connect(reactor, self.process.endpoint)
        await self.client.subscribe(self.recorder)
        if create:
            created = await self.call("identity.create", name=self.name, password=PASSWORD)
            self.uid = created["uid"]
        if unlock:
            await self.wait_unlocked()
        if create or unlock:
            me = await self.call("identity.show")
            self.uid, self.link = me["uid"], me["link"]

    async def wait_unlocked(self, timeout: float = 30.0) -> None:
        deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
        while True:
            status = await self.call("daemon.status")
            if not status["locked"]:
                return
            if reactor.seconds() > deadline:  # type: ignore[attr-defined]
                raise AssertionError(f"{self.name} did not unlock")
            await self.recorder.wait(lambda: bool(self.recorder.named("identity.unlocked")), 5)

    def call(self, method: str, **params: Any) -> defer.Deferred[Any]:
        assert self.client is not None
        return self.client.call(method, params)

    def peer_port(self) -> int:
        """The TCP port this daemon listens on for peers (from its link code's address)."""
        return int(self.link_addresses()[0].rsplit(":", 1)[1])

    def link_addresses(self) -> list[str]:
        from jarvis.crypto.linkcode import decode_link

        return list(decode_link(self.link).addresses)

    async def detach(self) -> None:
        if self.client is not None and self.client.connected:
            await self.client.close()
        self.client = None

    async def kill(self) -> None:
        await self.detach()
        await self.process.kill()

    async def stop(self) -> None:
        await self.detach()
        await self.process.stop()

    async def cleanup(self) -> None:
        await self.detach()
        await self.process.cleanup()

    # conveniences -----------------------------------------------------------------------------

    def online_with(self, other: Peer) -> Callable[[], bool]:
        def check() -> bool:
            for payload in reversed(self.recorder.named("peer.statusChanged")):
                peer = payload.get("peer", {})
                if peer.get("uid") == other.uid:
                    return peer.get("status") == "online"
            return False

        return check

    def received_bodies(self) -> list[str]:
        return [p["message"]["body"] for p in self.recorder.named("message.received")]

    def delivered_ids(self) -> set[str]:
        return {
            p["id"]
            for p in self.recorder.named("message.stateChanged")
            if p["state"] == "delivered"
        }

    async def all_history(self, contact: str) -> list[dict[str, Any]]:
        """Every message of a conversation, oldest first."""
        messages: list[dict[str, Any]] = []
        before = None
        while True:
            params: dict[str, Any] = {"contact": contact, "limit": 200}
            if before:
                params["before"] = before
            page = await self.call("messages.history", **params)
            messages.extend(page["messages"])
            before = page["next"]
            if not before:
                break
        return list(reversed(messages))


async def befriend(a: Peer, b: Peer) -> None:
    """Exchange link codes both ways and wait until both see each other online."""
    await a.call("contacts.add", link=b.link)
    await b.call("contacts.add", link=a.link)
    await defer.gatherResults(
        [a.recorder.wait(a.online_with(b)), b.recorder.wait(b.online_with(a))]
    )
