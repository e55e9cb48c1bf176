"""End to end: the mailbox in the real terminal UI's settings (issue 15).

The UI runs in a pty (:mod:`tests.pty_terminal`) against a real ``twistd jarvis`` daemon that has
a contact, with a real ``twistd jarvis-mailbox`` on loopback (:mod:`tests.mailboxes`).  The user
opens the settings (F4), chooses "Use a mailbox...", types the mailbox's link and presses Enter;
the daemon's own ``jarvis --json mailbox status`` then shows that mailbox, connected.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import TestCase

from tests.mailboxes import start_mailbox
from tests.peers import befriend
from tests.test_e2e_ui import cli, start_peers, start_ui


class MailboxSettingsTests(TestCase):
    timeout = 90

    async def test_link_pasted_into_settings_is_used_by_the_daemon(self) -> None:
        """When the user types a real mailbox's link into the settings' "Use a mailbox..."
        form, then the settings show it connected with one queue (for the one contact), and
        ``jarvis --json mailbox status`` shows the same link, connected; a garbled link first
        shows the daemon's reason in the form and changes nothing."""
        root, (alice, bob) = await start_peers(self, "alice", "bob")
        mailbox = await start_mailbox(self, os.path.join(root, "mbx"))
        link = str(mailbox.link())
        await befriend(alice, bob)
        ui = start_ui(self, alice.data_dir, root, columns=100, lines=30)
        await ui.wait_for("1/1 online")

        ui.press("f4")
        await ui.wait_for("No mailbox: messages wait")
        ui.press("shift tab", "shift tab")  # from the first box, wrapping: Close, then this
        ui.press("enter")
        await ui.wait_for("Mailbox link:")

        ui.type("jarvis-mailbox:garbled@127.0.0.1:1")
        ui.press("enter")
        await ui.wait_for("The daemon refused it: the link's pin is not a valid key hash")
        before = json.loads(await cli(root, alice, "--json", "mailbox", "status"))
        self.assertIsNone(before["link"])

        for _ in "jarvis-mailbox:garbled@127.0.0.1:1":
            ui.press("backspace")
        ui.type(link)
        ui.press("enter")
        address = f"127.0.0.1:{mailbox.link().port}"
        await ui.wait_for(
            lambda t: (
                f"Mailbox {address}: connected" in t
                and "1 queue; " in t
                and "Stop using the mailbox" in t
            )
        )

        status = json.loads(await cli(root, alice, "--json", "mailbox", "status"))
        self.assertEqual(status["link"], link)
        self.assertTrue(status["connected"])
        self.assertEqual(status["queues"], 1)
