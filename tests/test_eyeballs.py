"""Tests for :mod:`jarvis.net.eyeballs`: one round over several addresses on a Clock."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from jarvis.net import network as net
from jarvis.net.eyeballs import STAGGER, AddressRace, RaceFailed


def make_race() -> tuple[AddressRace, Clock, dict[str, Deferred[None]], list[str]]:
    """A race on a Clock whose attempts the test resolves by hand; also the cancelled ones."""
    clock = Clock()
    attempts: dict[str, Deferred[None]] = {}
    cancelled: list[str] = []

    def dial(address: str) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda _: cancelled.append(address))
        attempts[address] = d
        return d

    return AddressRace(clock, dial), clock, attempts, cancelled


def outcome(race: AddressRace) -> list[object]:
    got: list[object] = []
    race.result.addBoth(got.append)
    return got


class RaceTests(SynchronousTestCase):
    """Happy eyeballs over a contact's addresses."""

    def test_staggered_first_to_connect_wins(self) -> None:
        """When the first address hangs, then the second starts after the stagger, the third
        after another; when the second connects, then it wins and the others are cancelled."""
        race, clock, attempts, cancelled = make_race()
        got = outcome(race)
        race.offer(["a:1", "b:2", "c:3"])
        self.assertEqual(list(attempts), ["a:1"])
        clock.advance(STAGGER - 0.01)
        self.assertEqual(list(attempts), ["a:1"])
        clock.advance(0.01)
        self.assertEqual(list(attempts), ["a:1", "b:2"])
        clock.advance(STAGGER)
        self.assertEqual(list(attempts), ["a:1", "b:2", "c:3"])
        attempts["b:2"].callback(None)
        self.assertEqual(got, ["b:2"])
        self.assertEqual(sorted(cancelled), ["a:1", "c:3"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failure_starts_the_next_at_once(self) -> None:
        """When an attempt fails before the stagger, then the next address starts at once."""
        race, clock, attempts, _ = make_race()
        race.offer(["a:1", "b:2"])
        attempts["a:1"].errback(net.ConnectFailed("refused"))
        self.assertEqual(list(attempts), ["a:1", "b:2"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_all_fail(self) -> None:
        """When every address fails, then the race fails with the last failure, once."""
        race, clock, attempts, _ = make_race()
        got = outcome(race)
        race.offer(["a:1", "b:2"])
        clock.advance(STAGGER)
        attempts["b:2"].errback(net.ConnectFailed("b refused"))
        self.assertEqual(got, [])
        attempts["a:1"].errback(net.ConnectFailed("a timed out"))
        [failure] = got
        assert isinstance(failure, Failure)
        self.assertEqual(str(failure.value), "a timed out")

    def test_nothing_to_dial(self) -> None:
        """When there is no address, then the race fails at once with RaceFailed."""
        race, _, _, _ = make_race()
        got = outcome(race)
        race.offer([])
        [failure] = got
        assert isinstance(failure, Failure)
        self.assertTrue(failure.check(RaceFailed))

    def test_offered_address_starts_at_once(self) -> None:
        """When a new address is offered while one hangs (found on the LAN), then it is dialled
        at once, a repeated address is not dialled twice, and the new one can win."""
        race, _, attempts, cancelled = make_race()
        got = outcome(race)
        race.offer(["far:1"])
        self.assertTrue(race.offer(["far:1", "near:2"], at_once=True))
        self.assertFalse(race.offer(["far:1", "near:2"], at_once=True))
        self.assertEqual(list(attempts), ["far:1", "near:2"])
        attempts["near:2"].callback(None)
        self.assertEqual(got, ["near:2"])
        self.assertEqual(cancelled, ["far:1"])

    def test_cancel_abandons_everything(self) -> None:
        """When the race is cancelled, then every attempt in flight is cancelled and nothing
        more starts."""
        race, clock, _attempts, cancelled = make_race()
        got = outcome(race)
        race.offer(["a:1", "b:2", "c:3"])
        clock.advance(STAGGER)
        race.result.cancel()
        self.assertEqual(sorted(cancelled), ["a:1", "b:2"])
        self.assertEqual(clock.getDelayedCalls(), [])
        [failure] = got
        assert isinstance(failure, Failure)
        self.assertTrue(failure.check(CancelledError))

    def test_hold_lets_attempts_finish(self) -> None:
        """When the race is held, then no further address starts, and an attempt in flight
        may still win."""
        race, clock, attempts, cancelled = make_race()
        got = outcome(race)
        race.offer(["a:1", "b:2"])
        race.hold()
        clock.advance(10 * STAGGER)
        self.assertEqual(list(attempts), ["a:1"])
        attempts["a:1"].callback(None)
        self.assertEqual(got, ["a:1"])
        self.assertEqual(cancelled, [])
