"""Real mailbox processes for tests and benchmarks: ``twistd -n jarvis-mailbox`` children on
loopback (beside :mod:`tests.daemons`, which starts the messenger's daemons), and a poll for an
async condition that the mailbox end-to-end tests share."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from twisted.internet import defer, reactor, task

from jarvis.app.launcher import twistd_argv
from jarvis.protocol.mailbox_link import MailboxLink, parse_link
from tests.daemons import DaemonProcess

#: Where a mailbox listens unless told otherwise: a free loopback port.
ANY_PORT = "tcp:0:interface=127.0.0.1"


class MailboxProcess(DaemonProcess):
    """One ``twistd -n jarvis-mailbox`` child process on a loopback port.

    :param root: its directory: the data directory is ``root/data``, the pid file is here.
    :param extra: more mailbox options (e.g. ``["--sync", "normal"]``).
    :param twistd_args: options for twistd itself (e.g. a profiler's).
    """

    def __init__(
        self, root: str, extra: list[str] | None = None, *, twistd_args: list[str] | None = None
    ) -> None:
        super().__init__(
            os.path.join(root, "data"), root, extra, listen=ANY_PORT, twistd_args=twistd_args
        )

    def argv(self) -> list[str]:
        return [
            *twistd_argv(),
            "-n",
            "--pidfile",
            self.pidfile,
            *self.twistd_args,
            "jarvis-mailbox",
            "--data-dir",
            self.data_dir,
            "--listen",
            self.listen,
            *self.extra,
        ]

    def start(self, timeout: float = 30.0) -> defer.Deferred[None]:
        """Spawn the mailbox; fire when it listens."""
        self._spawn()
        return self.wait_for(b"mailbox listening on", timeout)

    def link(self) -> MailboxLink:
        """The link the mailbox wrote at its (latest) start."""
        with open(os.path.join(self.data_dir, "mailbox.link"), encoding="ascii") as f:
            return parse_link(f.read())

    async def restart_after_kill(self) -> MailboxLink:
        """SIGKILL the mailbox and start it again on the same port and data directory.

        :returns: its link from before the kill (the restarted one must be the same).
        """
        before = self.link()
        self.listen = f"tcp:{before.port}:interface=127.0.0.1"
        await self.kill()
        await self.start()
        return before


class NamespacedMailbox(MailboxProcess):
    """A mailbox started with ``ip netns exec NAMESPACE``, listening on *address*:*port* there
    (and advertising it).

    :param extra: more mailbox options (e.g. ``["--relay-pairs", "0"]``).
    """

    def __init__(
        self,
        namespace: str,
        root: str,
        address: str,
        extra: list[str] | None = None,
        *,
        port: int = 0,
    ) -> None:
        advertise = ["--advertise", f"{address}:{port}"] if port else []
        super().__init__(root, [*advertise, *(extra or [])])
        self.namespace = namespace
        self.listen = f"tcp:{port}:interface={address}"

    def command(self) -> tuple[str, list[str]]:
        ip = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
        return ip, ["ip", "netns", "exec", self.namespace, sys.executable, *self.argv()[1:]]

    def rss_kib(self) -> int:
        """The mailbox's resident memory (``ip netns exec`` execs it: same pid)."""
        with open(f"/proc/{self.transport.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


async def start_mailbox(testcase: Any, root: str, extra: list[str] | None = None) -> MailboxProcess:
    """Start a mailbox in *root* (created if missing), killed at *testcase*'s cleanup."""
    os.makedirs(root, exist_ok=True)
    mailbox = MailboxProcess(root, extra)
    testcase.addCleanup(mailbox.cleanup)
    await mailbox.start()
    return mailbox


async def until(
    check: Any, timeout: float = 60.0, what: str = "a state", interval: float = 0.05
) -> Any:
    """Call the async *check* until it returns a true value, *interval* seconds between calls
    (a daemon's state seen through its API, which sends no event for it).

    :raises AssertionError: after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, interval, lambda: None)


async def contacts_with_mailboxes(
    testcase: Any,
) -> tuple[MailboxProcess, MailboxProcess, Any, Any]:
    """Start two mailboxes and two befriended daemons, alice (on the first) and bobby (on the
    second), and wait until each knows the other's mailbox.

    :returns: ``(box_a, box_b, alice, bob)``.
    """
    from tests.daemons import short_tempdir
    from tests.peers import Peer, befriend

    root = short_tempdir(testcase)
    box_a = await start_mailbox(testcase, os.path.join(root, "ma"))
    box_b = await start_mailbox(testcase, os.path.join(root, "mb"))
    alice, bob = Peer(testcase, root, "alice"), Peer(testcase, root, "bobby")
    await alice.start(create=True)
    await bob.start(create=True)
    await befriend(alice, bob)
    await alice.call("mailbox.use", link=str(box_a.link()))
    await bob.call("mailbox.use", link=str(box_b.link()))

    async def reachable(peer: Any) -> bool:
        status = await peer.call("mailbox.status")
        return bool(status["connected"] and status["contacts_reachable"] == 1)

    await until(lambda: reachable(alice), what="alice knows bob's mailbox")
    await until(lambda: reachable(bob), what="bob knows alice's mailbox")
    return box_a, box_b, alice, bob


def deposited_to(peer: Any, to: Any) -> bool:
    """Whether *peer* deposited an entry (a message or a transfer's record) for *to* in a
    mailbox since its daemon started."""
    return any(
        p.get("via") == "mailbox" and p["contact"] == to.uid and p["state"] == "sent"
        for p in peer.recorder.named("message.stateChanged")
    )


async def transfer_state(peer: Any, tid: str) -> str | None:
    """The state of transfer *tid* in *peer*'s list (None: not listed)."""
    for t in (await peer.call("files.list"))["transfers"]:
        if t["id"] == tid:
            return str(t["state"])
    return None


async def accept_while_apart(
    sender: Any, receiver: Any, tid: str, inbox: str, name: str, data: bytes
) -> None:
    """Both stopped, *sender* having offered transfer *tid* to *receiver* through its mailbox:
    the receiver, started alone, finds the offer and accepts it into *inbox* (its accept goes
    through the sender's mailbox: it says so), and stops; the sender, started alone, collects
    the accept; once both run the file lands as *name*, byte-identical to *data*, and both see
    it complete.  Nobody acts after the accept."""
    from jarvis.core.transfers import ACCEPT_IN_MAILBOX

    async def state_is(peer: Any, state: str) -> bool:
        return await transfer_state(peer, tid) == state

    await receiver.start(unlock=True)
    await until(lambda: state_is(receiver, "offered"), what="the offer found in the mailbox")
    accepted = await receiver.call("files.accept", id=tid, directory=inbox)
    if accepted["reason"] != ACCEPT_IN_MAILBOX:
        raise AssertionError(f"the accept did not say it went to the mailbox: {accepted}")
    await receiver.recorder.wait(lambda: deposited_to(receiver, sender), 60)  # the accept
    await receiver.stop()

    await sender.start(unlock=True)
    await until(lambda: state_is(sender, "accepted"), what="the sender collects the accept")
    await receiver.start(unlock=True)
    await until(lambda: state_is(receiver, "complete"), timeout=120, what="the file lands")
    with open(os.path.join(inbox, name), "rb") as f:
        if f.read() != data:
            raise AssertionError(f"{name} arrived different")
    await until(lambda: state_is(sender, "complete"), what="the sender sees it complete")
