"""Tests for the path per contact in the UI: the contact info dialog and the title bar's word
for each kind of :mod:`jarvis.protocol.peerpath` (driven headless, ``render(size).text``)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jarvis.ui.model import Contact, MessengerModel
from jarvis.ui.screens import ContactInfoDialog

UID = "a" * 52


def rendered(widget: Any, cols: int = 120) -> str:
    canvas = widget.render((cols, 40))
    return "\n".join(line.decode() for line in canvas.text)


class ContactInfoPathTests(SynchronousTestCase):
    def test_relayed_path_and_reason_shown(self) -> None:
        """When peers.status says the session is relayed and why, then the contact info shows
        the relayed path and the reason, with bidi controls stripped."""
        contact = Contact.from_api({"uid": UID, "name": "Bob", "status": "online"})
        health = {
            "uid": UID,
            "status": "online",
            "path": "relayed",
            "path_reason": "relayed: through the mailbox \u202em.example",
        }
        dialog = ContactInfoDialog(contact, {}, health, 0.0, "relayed")
        text = rendered(dialog)
        self.assertIn("relayed (a live session through a mailbox's relay", text)
        self.assertIn("Path now: relayed: through the mailbox m.example", text)
        self.assertNotIn("\u202e", text)

    def test_model_keeps_lan_and_relayed(self) -> None:
        """When mailbox.status gives lan and relayed paths, then the model keeps them."""
        model = MessengerModel()
        model.load_paths(
            {"contacts": [{"uid": UID, "path": "lan"}, {"uid": "b" * 52, "path": "relayed"}]}
        )
        self.assertEqual((model.path_of(UID), model.path_of("b" * 52)), ("lan", "relayed"))
