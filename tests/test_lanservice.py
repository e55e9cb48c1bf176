"""Tests for :mod:`jarvis.app.lanservice`: LAN discovery wired to a real node (store, contact book)
with a recording fake discovery and a recording fake peer network.

The real discovery between real daemons is ``tests/test_e2e_lan.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase

from jarvis.app.lanservice import LanService
from jarvis.core.contacts import MAX_DISCOVERED
from jarvis.core.node import Node
from tests.test_node import friend_link, make_node


class FakeDiscovery:
    """Records what the service asks of a ``LanDiscovery``."""

    def __init__(
        self,
        identity: Any,
        listening: tuple[str, int],
        contacts: Callable[[], list[tuple[str, bytes | None]]],
        on_found: Callable[[str, str, int], None],
        enabled: bool,
    ) -> None:
        self.uid = identity.uid
        self.host, self.port = listening
        self.contacts = contacts
        self.on_found = on_found
        self.enabled = enabled
        self.calls: list[str] = []
        self.running = False
        self.failure: str | None = None
        self.services_seen = 0

    def start(self) -> Any:
        self.calls.append("start")
        self.running = self.enabled
        return succeed(None)

    def stop(self) -> Any:
        self.calls.append("stop")
        self.running = False
        return succeed(None)

    def contacts_changed(self) -> Any:
        self.calls.append("contacts_changed")
        return succeed(None)


def make_wired(
    testcase: TestCase, listening: tuple[str, int] = ("0.0.0.0", 7770)
) -> tuple[Node, LanService, list[FakeDiscovery]]:
    """Return a started node whose network factory starts LAN discovery as the daemon's does,
    the service, and every fake discovery made (newest last).

    :param listening: the peer listener's bound address.
    """
    node, _clock, _events = make_node(testcase)
    made: list[FakeDiscovery] = []

    def make_discovery(*args: Any) -> FakeDiscovery:
        made.append(FakeDiscovery(*args))
        return made[-1]

    service = LanService(node, make_discovery, lambda: listening)
    inner = node.network_factory
    assert inner is not None

    def network_factory(identity: Any, directory: Any, observer: Any) -> Any:
        network = inner(identity, directory, observer)
        service.unlocked(identity)
        return network

    node.network_factory = network_factory
    service.startService()
    testcase.addCleanup(service.stopService)
    return node, service, made


class FoundTests(TestCase):
    async def test_found_address_is_dialled_first_at_once(self) -> None:
        """When discovery finds a contact that is not online, then its address comes first in
        the addresses the network dials, and the network is asked to dial it now."""
        node, _service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        key, link = friend_link(addresses=("10.213.0.250:7770",))
        await node.add_contact(link=link)
        network = node.networks[-1]  # type: ignore[attr-defined]
        network.calls.clear()

        made[-1].on_found(key.uid, "10.213.0.2", 40002)

        self.assertEqual(
            node.contacts.addresses(key.uid), ("10.213.0.2:40002", "10.213.0.250:7770")
        )
        self.assertEqual(network.calls, [("redial", key.uid)])
        view = node.peers_status()["peers"][0]
        self.assertEqual(view["lan_addresses"], ["10.213.0.2:40002"])
        self.assertEqual(view["path"], "none")  # offline, and no mailbox address
        self.assertIn("no mailbox address", view["path_reason"])

    async def test_newest_first_deduplicated_and_bounded(self) -> None:
        """When discovery reports many addresses, some again, then the newest comes first,
        each once, at most MAX_DISCOVERED of them, and the card's addresses follow."""
        node, _service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        key, link = friend_link(addresses=("10.213.0.250:7770",))
        await node.add_contact(link=link)
        found = made[-1].on_found
        for n in range(1, 8):
            found(key.uid, f"10.213.0.{n}", 7000)
        found(key.uid, "10.213.0.5", 7000)  # seen again: moves to the front

        expected = ("10.213.0.5:7000", "10.213.0.7:7000", "10.213.0.6:7000", "10.213.0.4:7000")
        self.assertEqual(len(expected), MAX_DISCOVERED)
        self.assertEqual(node.contacts.addresses(key.uid), (*expected, "10.213.0.250:7770"))
        # the card's address, found on the LAN too, is listed once
        found(key.uid, "10.213.0.250", 7770)
        addresses = node.contacts.addresses(key.uid)
        self.assertEqual(addresses[0], "10.213.0.250:7770")
        self.assertEqual(len(addresses), len(set(addresses)))

    async def test_online_contact_not_redialled(self) -> None:
        """When discovery finds a contact that is online, then the address is kept but the
        network is not asked to dial (one session per pair)."""
        node, _service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        key, link = friend_link()
        await node.add_contact(link=link)
        node.peer_status_changed(key.uid, type("S", (), {"uid": key.uid, "state": "online"})())
        network = node.networks[-1]  # type: ignore[attr-defined]
        network.calls.clear()

        made[-1].on_found(key.uid, "10.213.0.2", 40002)

        self.assertEqual(network.calls, [])
        self.assertEqual(node.contacts.addresses(key.uid)[0], "10.213.0.2:40002")

    async def test_stranger_and_blocked_ignored(self) -> None:
        """When discovery reports a uid that is no contact, or a blocked one, then nothing is
        kept and nothing dialled."""
        node, _service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        stranger, _ = friend_link()
        key, link = friend_link(addresses=("10.213.0.250:7770",))
        await node.add_contact(link=link)
        await node.update_contact(key.uid, blocked=True)
        network = node.networks[-1]  # type: ignore[attr-defined]
        network.calls.clear()

        made[-1].on_found(stranger.uid, "10.213.0.3", 1)
        made[-1].on_found(key.uid, "10.213.0.2", 40002)

        self.assertEqual(network.calls, [])
        self.assertEqual(node.contacts.addresses(key.uid), ("10.213.0.250:7770",))
        self.assertEqual(node.contacts.addresses(stranger.uid), ())


class LifeCycleTests(TestCase):
    async def test_started_at_unlock_with_identity_and_port(self) -> None:
        """When the identity is created (unlocked), then discovery starts with its uid, the
        peer port, and the unblocked contacts with their keys, and its figures say so."""
        node, service, made = make_wired(self)
        self.assertEqual(made, [])
        created = await node.create_identity("Alice", "pw")
        key, link = friend_link()
        await node.add_contact(link=link)
        blocked, link2 = friend_link("Eve")
        await node.add_contact(link=link2)
        await node.update_contact(blocked.uid, blocked=True)

        self.assertEqual(len(made), 1)
        discovery = made[0]
        self.assertEqual((discovery.uid, discovery.port), (created["uid"], 7770))
        self.assertTrue(discovery.running)
        self.assertEqual(discovery.contacts(), [(key.uid, key.public_bytes)])
        self.assertEqual(
            service.figures(),
            {"enabled": True, "running": True, "failure": None, "services_seen": 0},
        )

    async def test_loopback_listener_no_discovery(self) -> None:
        """When the peer listener is bound to loopback (as every other test daemon's is), then
        no discovery is made at unlock (no mDNS packet: nobody on the LAN could connect), and
        daemon.status's figures say why."""
        for host in ("127.0.0.1", "::1", "localhost"):
            node, service, made = make_wired(self, (host, 7770))
            await node.create_identity("Alice", "pw")
            self.assertEqual(made, [])
            figures = service.figures()
            self.assertFalse(figures["running"])
            self.assertIn("loopback", figures["failure"])
            await service.stopService()

    async def test_setting_off_stops_and_forgets_on_starts(self) -> None:
        """When lan_discovery is turned off, then discovery stops and the found addresses are
        forgotten; turned on again, it starts again."""
        node, _service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        key, link = friend_link(addresses=("10.213.0.250:7770",))
        await node.add_contact(link=link)
        discovery = made[-1]
        discovery.on_found(key.uid, "10.213.0.2", 40002)

        await node.update_settings(lan_discovery=False)
        self.assertFalse(discovery.running)
        self.assertEqual(discovery.calls[-1], "stop")
        self.assertEqual(node.contacts.addresses(key.uid), ("10.213.0.250:7770",))
        await node.update_settings(lan_discovery=True)
        self.assertTrue(discovery.running)
        self.assertEqual(discovery.calls[-1], "start")

    async def test_on_waits_for_the_stop_to_finish(self) -> None:
        """When lan_discovery is turned off and on again before the stop finished (it runs on
        a later turn of the loop), then the start waits for it, so discovery ends up running
        (the start was lost before: turned on, yet silent)."""
        node, _service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        discovery = made[-1]
        stopping: Deferred[None] = Deferred()
        discovery.stop = lambda: (discovery.calls.append("stop"), stopping)[1]  # type: ignore[method-assign]

        await node.update_settings(lan_discovery=False)
        await node.update_settings(lan_discovery=True)
        self.assertEqual(discovery.calls, ["start", "stop"])
        stopping.callback(None)
        self.assertEqual(discovery.calls, ["start", "stop", "start"])
        self.assertTrue(discovery.running)

    async def test_setting_off_kept_across_unlock(self) -> None:
        """When lan_discovery is off and the identity is locked and unlocked, then the new
        discovery is made disabled (it does not announce)."""
        node, _service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        await node.update_settings(lan_discovery=False)
        await node.lock(wipe=True)
        self.assertEqual(made[0].calls[-1], "stop")
        await node.unlock("pw")
        self.assertEqual(len(made), 2)
        self.assertFalse(made[1].enabled)
        self.assertFalse(made[1].running)

    async def test_lock_and_service_stop_stop_discovery(self) -> None:
        """When the keys are wiped, then discovery stops; when the daemon stops, too."""
        node, service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        await node.lock(wipe=True)
        self.assertFalse(made[0].running)
        self.assertIsNone(service.discovery)
        await node.unlock("pw")
        self.assertTrue(made[1].running)
        await service.stopService()
        self.assertFalse(made[1].running)

    async def test_contacts_changed_told(self) -> None:
        """When a contact is added, blocked, unblocked or removed, then discovery is told the
        contacts changed (it re-announces their tokens)."""
        node, _service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        discovery = made[-1]
        key, link = friend_link()
        await node.add_contact(link=link)
        self.assertEqual(discovery.calls.count("contacts_changed"), 1)
        await node.update_contact(key.uid, blocked=True)
        await node.update_contact(key.uid, blocked=False)
        self.assertEqual(discovery.calls.count("contacts_changed"), 3)
        await node.update_contact(key.uid, muted=True)  # not a directory change
        self.assertEqual(discovery.calls.count("contacts_changed"), 3)
        await node.remove_contact(key.uid)
        self.assertEqual(discovery.calls.count("contacts_changed"), 4)
        self.assertEqual(discovery.contacts(), [])


class SharedKeysTests(TestCase):
    async def test_discovery_starts_once_the_network_keys_are_ready(self) -> None:
        """When the network is still computing its knock keys off the reactor at unlock, then
        discovery (which derives its keys from them) starts only once they are ready."""
        node, service, made = make_wired(self)
        await node.create_identity("Alice", "pw")
        assert node._keys is not None
        ready: Deferred[None] = Deferred()
        service.unlocked(node._keys.identity, ready)
        discovery = made[-1]
        self.assertEqual(discovery.calls, [])
        ready.callback(None)
        self.assertEqual(discovery.calls, ["start"])
        self.assertIs(service.discovery, discovery)


class SettingTests(TestCase):
    def test_every_setting_can_be_changed_over_the_api(self) -> None:
        """When the node has a setting (lan_discovery included), then settings.set accepts it
        (it was refused as "give at least one setting to change")."""
        from jarvis.core.node import DEFAULT_SETTINGS
        from jarvis.ipc.methods import SETTING_NAMES

        self.assertEqual(set(SETTING_NAMES), set(DEFAULT_SETTINGS))
        self.assertIs(DEFAULT_SETTINGS["lan_discovery"], True)
