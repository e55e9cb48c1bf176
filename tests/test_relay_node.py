"""The node's part of the relayed path: which relays a contact is dialled through, known from
the first dial round after an unlock."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from tests.test_node import friend_link, make_node
from tests.test_postbox import PostboxCase, link_for


class RelayLinksTests(PostboxCase):
    async def test_own_and_contact_mailbox_sorted(self) -> None:
        """When we use a mailbox and the contact told us its own, then the contact's relay
        candidates are both links, sorted (the contact computes the same list)."""
        node, _clock, _events, bob, _transport, _ring = await self.setup_pair()
        self.assertEqual(node.postbox.relay_links(bob.uid), sorted([link_for(1), link_for(2)]))
        self.assertEqual(node.postbox.relay_links("someone-else"), [link_for(1)])

    async def test_first_dial_after_unlock_knows_the_relays(self) -> None:
        """When the daemon unlocks with a mailbox in use, then the postbox's state is loaded
        before the network is built: the first dial round already has both relays and our
        mailbox address for the first session, and each contact is dialled once."""
        node, _clock, _events, bob, _transport, _ring = await self.setup_pair()
        await node.lock(wipe=True)
        seen: list[tuple[list[str], str | None]] = []
        build = node.network_factory
        assert build is not None

        def network_factory(identity: Any, directory: Any, observer: Any) -> Any:
            seen.append((node.postbox.relay_links(bob.uid), node.postbox.own_address(bob.uid).link))
            return build(identity, directory, observer)

        node.network_factory = network_factory
        await node.unlock("pw")
        self.assertEqual(seen, [(sorted([link_for(1), link_for(2)]), link_for(1))])
        calls = node.networks[-1].calls  # type: ignore[attr-defined]
        self.assertEqual(calls, [("connect", bob.uid)])


class NoMailboxTests(TestCase):
    async def test_no_redial_without_a_mailbox(self) -> None:
        """When no mailbox is known, then an unlock dials each contact once, as before."""
        node, _clock, _events = make_node(self)
        await node.create_identity("Alice", "pw")
        bob, link = friend_link()
        await node.add_contact(link=link)
        await node.lock(wipe=True)
        await node.unlock("pw")
        self.assertEqual(node.networks[-1].calls, [("connect", bob.uid)])  # type: ignore[attr-defined]
