"""Tests for the path per contact in the core: the dial order of a contact's addresses
(:func:`jarvis.core.addresses.dial_order`, ``ContactBook.address_succeeded``) and the path and
its reason in ``peers.status``, ``contacts.list`` and ``contacts.show``."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.core.addresses import dial_order
from jarvis.protocol.peerpath import PeerPath, relayed
from tests.test_node import friend_link, make_node


class DialOrderTests(SynchronousTestCase):
    """The order the dialler races a contact's addresses in."""

    def test_success_then_found_then_card(self) -> None:
        """When some addresses worked, then the most recent success comes first, then the
        other LAN findings (newest first), then the card's; each once; an address that worked
        once but is neither found nor on the card any more is not dialled."""
        order = dial_order(
            ["10.0.0.5:7770", "10.0.0.6:7770"],
            ["198.51.100.1:7770", "10.0.0.6:7770", "198.51.100.2:7770"],
            {"198.51.100.2:7770": 20.0, "10.0.0.6:7770": 10.0, "gone:1": 30.0},
        )
        self.assertEqual(
            order,
            (
                "198.51.100.2:7770",
                "10.0.0.6:7770",
                "10.0.0.5:7770",
                "198.51.100.1:7770",
            ),
        )

    def test_no_success(self) -> None:
        """When nothing worked yet, then found addresses precede the card's."""
        self.assertEqual(dial_order(["b:1"], ["a:1", "b:1"], {}), ("b:1", "a:1"))


class ContactPathTests(TestCase):
    """What the API says about the path to a contact."""

    async def make(self) -> tuple[Any, Any, str]:
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        key, link = friend_link(addresses=("10.213.0.250:7770", "10.213.0.251:7770"))
        await node.add_contact(link=link)
        network = node.networks[-1]  # type: ignore[attr-defined]
        return node, network, key.uid

    async def test_success_moves_an_address_first(self) -> None:
        """When a dial to the card's second address succeeded, then it is dialled first."""
        node, _network, uid = await self.make()
        self.assertEqual(node.contacts.addresses(uid), ("10.213.0.250:7770", "10.213.0.251:7770"))
        node.contacts.address_succeeded(uid, "10.213.0.251:7770")
        self.assertEqual(node.contacts.addresses(uid), ("10.213.0.251:7770", "10.213.0.250:7770"))
        node.contacts.address_succeeded("someone-else", "10.0.0.1:1")  # not a contact: ignored
        self.assertEqual(node.contacts.addresses("someone-else"), ())

    async def test_live_path_reported_everywhere(self) -> None:
        """When the network says the session is relayed, then peers.status, contacts.list and
        contacts.show give path "relayed" with its reason."""
        node, network, uid = await self.make()
        path = relayed("the mailbox m.example")
        network.path_of = lambda u: path if u == uid else None
        [peer] = node.peers_status()["peers"]
        self.assertEqual((peer["path"], peer["path_reason"]), ("relayed", path.reason))
        [listed] = await node.contacts.list_views()
        self.assertEqual((listed["path"], listed["path_reason"]), ("relayed", path.reason))
        shown = await node.contacts.show(uid)
        self.assertEqual(shown["path"], "relayed")

    async def test_offline_mailbox_or_none(self) -> None:
        """When no session is up, then the path is "mailbox" if a deposit is possible, else
        "none", and the reason says that no session is up."""
        node, network, uid = await self.make()
        network.path_of = lambda u: None
        [peer] = node.peers_status()["peers"]
        self.assertEqual(peer["path"], "none")
        self.assertIn("no live session", peer["path_reason"])
        node.contacts.can_deposit = lambda u: u == uid
        [peer] = node.peers_status()["peers"]
        self.assertEqual(peer["path"], "mailbox")
        self.assertTrue(peer["path_reason"].startswith("mailbox: "), peer["path_reason"])

    async def test_found_on_lan_while_relayed_redials(self) -> None:
        """When a contact on a relayed session is found on the LAN, then the network is asked
        to dial it (a direct session would replace the relayed one)."""
        node, network, uid = await self.make()
        node.contacts.peer_status_changed(uid, type("S", (), {"state": "online"})())
        network.path_of = lambda u: PeerPath("direct", "direct: dialled x")
        network.calls.clear()
        node.contacts.address_discovered(uid, "10.213.0.2:7770")
        self.assertEqual(network.calls, [])
        network.path_of = lambda u: relayed("the mailbox")
        node.contacts.address_discovered(uid, "10.213.0.3:7770")
        self.assertEqual(network.calls, [("redial", uid)])
