"""Tests for the mailbox's twistd plugin, options, link and store interface."""

from __future__ import annotations

import os

from twisted.application.service import IServiceMaker
from twisted.internet import utils
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.app.launcher import twistd_argv
from jarvis.mailbox.service import MailboxOptions, load_or_create_key
from jarvis.mailbox.store import InlineSQLiteMailboxStore, MailboxStore, SQLiteMailboxStore
from jarvis.protocol import mailbox_link as mlink
from tests.daemons import REPO, child_env, short_tempdir


class PluginTests(SynchronousTestCase):
    def test_plugin_discovered(self) -> None:
        """When twistd looks for service makers, then 'jarvis-mailbox' is among them with its
        options, next to 'jarvis'."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("jarvis", makers)
        self.assertIs(makers["jarvis-mailbox"].options, MailboxOptions)

    def test_plugin_module_is_import_light(self) -> None:
        """When the plugin module is read, then it imports nothing of jarvis at module level
        (twistd imports every plugin to list them)."""
        path = os.path.join(REPO, "twisted", "plugins", "jarvis_mailbox_plugin.py")
        with open(path, encoding="utf-8") as f:
            top_level = [line for line in f if line.startswith(("import ", "from "))]
        self.assertFalse([line for line in top_level if "jarvis" in line], top_level)


class TwistdHelpTests(TestCase):
    async def test_twistd_help_lists_mailbox(self) -> None:
        """When 'twistd --help' runs from outside the checkout, then it lists jarvis-mailbox."""
        root = short_tempdir(self)
        argv = [*twistd_argv(), "--help"]
        out = await utils.getProcessOutput(argv[0], argv[1:], env=child_env(), path=root)
        self.assertIn(b"jarvis-mailbox", out)


class OptionsTests(SynchronousTestCase):
    def test_data_dir_required(self) -> None:
        """When --data-dir is missing, then parsing fails saying so."""
        exc = self.assertRaises(usage.UsageError, MailboxOptions().parseOptions, [])
        self.assertIn("--data-dir", str(exc))

    def test_limits(self) -> None:
        """When limits are given, then they reach MailboxLimits (days in seconds)."""
        options = MailboxOptions()
        options.parseOptions(["--data-dir", "x", "--expiry-days", "2", "--queue-messages", "7"])
        limits = options.limits()
        self.assertEqual((limits.expiry, limits.queue_messages), (172800.0, 7))

    def test_sync_choices(self) -> None:
        """When --sync is neither full nor normal, then parsing fails; full is the default."""
        options = MailboxOptions()
        options.parseOptions(["-d", "x"])
        self.assertEqual(options["sync"], "full")
        self.assertRaises(
            usage.UsageError, MailboxOptions().parseOptions, ["-d", "x", "--sync", "off"]
        )

    def test_bad_advertise(self) -> None:
        """When --advertise is not HOST:PORT, then parsing fails."""
        self.assertRaises(
            usage.UsageError, MailboxOptions().parseOptions, ["-d", "x", "--advertise", "nope"]
        )

    def test_key_created_once(self) -> None:
        """When the key file is loaded twice, then the same key comes back, stored 0600."""
        path = os.path.join(short_tempdir(self), "mailbox.key")
        first, second = load_or_create_key(path), load_or_create_key(path)
        self.assertEqual(first.uid, second.uid)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)


class LinkTests(SynchronousTestCase):
    PIN = "a" * 52

    def test_round_trip(self) -> None:
        """When a link is written and parsed, then host, port and pin come back (IPv6 too)."""
        for host in ("127.0.0.1", "mail.example", "::1"):
            link = mlink.MailboxLink(self.PIN, host, 7780)
            self.assertEqual(mlink.parse_link(f" {link}\n"), link)
        self.assertEqual(
            str(mlink.MailboxLink(self.PIN, "::1", 1)), f"jarvis-mailbox:{self.PIN}@[::1]:1"
        )

    def test_bad_links(self) -> None:
        """When the scheme, pin or address is wrong, then BadMailboxLink."""
        for text in (
            f"jarvis://{self.PIN}@h:1",
            "jarvis-mailbox:short@h:1",
            f"jarvis-mailbox:{self.PIN}@h",
            f"jarvis-mailbox:{self.PIN}@h:0",
            f"jarvis-mailbox:{self.PIN}",
        ):
            self.assertRaises(mlink.BadMailboxLink, mlink.parse_link, text)


class StoreInterfaceTests(SynchronousTestCase):
    def test_implementations_fit_the_protocol(self) -> None:
        """When the SQLite stores are typed as MailboxStore, then they fit (mypy checks the
        assignment; this checks every method exists)."""
        stores: list[MailboxStore] = [
            InlineSQLiteMailboxStore(),
            SQLiteMailboxStore(":memory:", lambda f, *a: f(*a)),
        ]
        names = [n for n in dir(MailboxStore) if not n.startswith("_")]
        for store in stores:
            for name in names:
                self.assertTrue(hasattr(store, name), name)
