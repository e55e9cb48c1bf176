"""Tests of :mod:`jarvis.mailbox.attach`: a deposit survives a mailbox that restarts."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error, task
from twisted.trial.unittest import TestCase

from jarvis.mailbox import attach
from jarvis.mailbox.client import MailboxConnectionLost, MailboxRefused
from jarvis.protocol.mailbox_link import MailboxLink

LINK = str(MailboxLink("aeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaq", "127.0.0.1", 4000))


class FakeProtocol:
    """What :class:`MailboxConnector` uses of a client protocol."""

    def __init__(self, outcome: Any = None) -> None:
        self.connected = True
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.outcome = outcome
        self.deposits: list[bytes] = []

    def deposit(self, credential: Any, payload: bytes) -> defer.Deferred[Any]:
        if isinstance(self.outcome, Exception):
            self.connected = False
            return defer.fail(self.outcome)
        self.deposits.append(payload)
        return defer.succeed(b"ok")

    def close(self) -> defer.Deferred[None]:
        self.connected = False
        return defer.succeed(None)


class DepositRedialTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.dials: list[defer.Deferred[Any]] = []
        self.patch(attach, "connect_mailbox", self.dial)
        self.connector = attach.MailboxConnector(self.clock, lambda: 0.0)

    def dial(self, reactor: Any, link: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.dials.append(d)
        return d

    def test_deposit_waits_for_the_mailbox_to_come_back(self) -> None:
        """When a deposit is cut off by the mailbox going down and the mailbox refuses
        connections for ten seconds, then the deposit redials and succeeds within seconds of
        the mailbox accepting again (not failing for the courier's 60 s retry)."""
        results: list[Any] = []
        self.connector.deposit(LINK, b"s" * 16, b"k" * 32, b"payload").addBoth(results.append)
        self.dials[0].callback(FakeProtocol(MailboxConnectionLost("killed")))
        elapsed = 0.0
        while elapsed < 10.0:
            for d in self.dials:
                if not d.called:
                    d.errback(error.ConnectionRefusedError())
            self.clock.advance(0.25)
            elapsed += 0.25
        self.assertEqual(results, [])  # still trying
        back = FakeProtocol()
        self.clock.advance(attach.DEPOSIT_REDIAL_MAX)
        pending = [d for d in self.dials if not d.called]
        self.assertEqual(len(pending), 1)
        pending[0].callback(back)
        self.assertEqual(results, [b"ok"])
        self.assertEqual(back.deposits, [b"payload"])
        self.assertEqual(self.connector.deposited, 1)

    def test_deposit_fails_after_its_patience(self) -> None:
        """When the mailbox stays unreachable, then the deposit fails once its patience is
        spent (the courier retries later), and no timer is left behind."""
        results: list[Any] = []
        self.connector.deposit(LINK, b"s" * 16, b"k" * 32, b"payload").addBoth(results.append)
        for _ in range(int(attach.DEPOSIT_PATIENCE / 0.25) + 40):
            for d in self.dials:
                if not d.called:
                    d.errback(error.ConnectionRefusedError())
            self.clock.advance(0.25)
        self.assertEqual(len(results), 1)
        results[0].trap(error.ConnectionRefusedError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.connector.deposited, 0)

    def test_refusal_is_not_redialled(self) -> None:
        """When the mailbox refuses a deposit (not a connection failure), then the deposit
        fails at once without redialling."""
        results: list[Any] = []
        self.connector.deposit(LINK, b"s" * 16, b"k" * 32, b"payload").addBoth(results.append)
        self.dials[0].callback(FakeProtocol(MailboxRefused(1, "no")))
        self.assertEqual(len(results), 1)
        results[0].trap(MailboxRefused)
        self.assertEqual(len(self.dials), 1)


class OwnConnectionTests(TestCase):
    def setUp(self) -> None:
        self.dials: list[defer.Deferred[Any]] = []
        self.patch(attach, "connect_mailbox", self.dial)
        self.connector = attach.MailboxConnector(task.Clock(), lambda: 0.0)

    def dial(self, reactor: Any, link: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.dials.append(d)
        return d

    def test_every_waiter_gets_the_connection(self) -> None:
        """When a second operation (removing a contact deletes its queue) waits for our
        mailbox connection while the first waiter is an ``inlineCallbacks`` function, then
        both get the connection: one dial, and no waiter is handed ``None`` (before, the
        second got ``None`` and the queue was never deleted, so the removed contact could
        still deposit)."""
        seen: list[Any] = []

        @defer.inlineCallbacks
        def first() -> Any:
            own = yield self.connector.connect(LINK)
            seen.append(("first", own))

        first()
        second = self.connector._ensure_own()
        second.addCallback(lambda own: seen.append(("second", own)))
        protocol = FakeProtocol()
        self.assertEqual(len(self.dials), 1)
        self.dials[0].callback(protocol)
        self.assertEqual(
            sorted(seen, key=lambda s: s[0]), [("first", protocol), ("second", protocol)]
        )

    def test_failure_reaches_every_waiter(self) -> None:
        """When the connection fails, then every waiter gets the failure (none is left
        hanging, none is logged as unhandled)."""
        failures: list[Any] = []
        for _ in range(2):
            self.connector.connect(LINK).addErrback(failures.append)
        self.dials[0].errback(error.ConnectionRefusedError())
        self.assertEqual(len(failures), 2)
        self.connector.disconnect()


class ContactConnectionTests(TestCase):
    def setUp(self) -> None:
        self.dials: list[defer.Deferred[Any]] = []
        self.patch(attach, "connect_mailbox", self.dial)
        self.connector = attach.MailboxConnector(task.Clock(), lambda: 0.0)

    def dial(self, reactor: Any, link: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.dials.append(d)
        return d

    def test_deposits_share_one_dial(self) -> None:
        """When two deposits to a contact's mailbox wait for its connection being dialled and
        the first is an ``inlineCallbacks`` caller, then there is one dial and both deposits
        go through it (each waiter has a Deferred of its own, as for our own mailbox)."""
        results: list[Any] = []

        @defer.inlineCallbacks
        def first() -> Any:
            result = yield self.connector.deposit(LINK, b"s" * 16, b"k" * 32, b"one")
            results.append(result)

        first()
        self.connector.deposit(LINK, b"s" * 16, b"k" * 32, b"two").addBoth(results.append)
        self.assertEqual(len(self.dials), 1)
        protocol = FakeProtocol()
        self.dials[0].callback(protocol)
        self.assertEqual(results, [b"ok", b"ok"])
        self.assertEqual(protocol.deposits, [b"one", b"two"])

    def test_failed_dial_reaches_every_deposit_waiter(self) -> None:
        """When the dial of a contact's mailbox fails for good (refused), then every deposit
        waiting for it gets the failure and a later deposit dials again."""
        failures: list[Any] = []
        for payload in (b"one", b"two"):
            d = self.connector.deposit(LINK, b"s" * 16, b"k" * 32, payload)
            d.addErrback(failures.append)
        self.dials[0].errback(MailboxRefused(1, "no"))
        self.assertEqual(len(failures), 2)
        for failure in failures:
            failure.trap(MailboxRefused)
        self.connector.deposit(LINK, b"s" * 16, b"k" * 32, b"three").addErrback(failures.append)
        self.assertEqual(len(self.dials), 2)
