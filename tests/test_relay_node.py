"""The node's part of the relayed path: which relays a contact is dialled through, and a new
dial round once they are known after an unlock."""

from __future__ import annotations

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

    async def test_unlock_redials_with_the_relays(self) -> None:
        """When the daemon unlocks with a mailbox in use, then after the postbox is open every
        contact not online is redialled (its first round ran before the relays were known)."""
        node, _clock, _events, bob, _transport, _ring = await self.setup_pair()
        await node.lock(wipe=True)
        await node.unlock("pw")
        calls = node.networks[-1].calls  # type: ignore[attr-defined]
        self.assertEqual(calls, [("connect", bob.uid), ("redial", bob.uid)])


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
