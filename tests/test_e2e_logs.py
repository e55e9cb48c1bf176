"""End to end: what two real daemons write to their logs about each other.

docs/security.md promises that the logs do not say who the contacts are or where they connect
from: contacts' uids and remote addresses appear only as per-install pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from jarvis.common.logs import LOG_KEY_FILE
from tests.daemons import DaemonProcess, short_tempdir
from tests.peers import Peer, befriend
from tests.test_e2e_messaging import send_all, start_pair

#: ``host:port`` of IPv4, and Twisted's ``('host', port)`` tuples.
ADDRESS = re.compile(rb"\b\d{1,3}(?:\.\d{1,3}){3}:\d+|\(\s*'\d{1,3}(?:\.\d{1,3}){3}',\s*\d+")


def all_logs(peer: Peer) -> bytes:
    """The daemon's text log (its standard output under ``-n``) and its JSON log."""
    with open(os.path.join(peer.data_dir, "jarvis.log.json"), "rb") as f:
        return peer.process.output + f.read()


def pseudonym(peer: Peer, value: str) -> str:
    """*value*'s pseudonym in *peer*'s logs (computed from its data directory's key)."""
    with open(os.path.join(peer.data_dir, LOG_KEY_FILE), "rb") as f:
        key = f.read()
    return hmac.new(key, value.encode(), hashlib.sha256).digest()[:8].hex()


class LogPrivacyTests(TestCase):
    timeout = 120

    async def test_pair_exchange_logs_no_uid_or_remote_address(self) -> None:
        """When two daemons become contacts, exchange messages both ways and stop, then
        neither log holds the other's uid or any remote ``IP:port``; each names the other by
        its pseudonym, which differs between the two installs."""
        alice, bob, _root = await start_pair(self)
        await befriend(alice, bob)
        a = await send_all(alice, bob.uid, ["one", "two"])
        b = await send_all(bob, alice.uid, ["three"])
        await defer.gatherResults(
            [
                alice.recorder.wait(lambda: {m["id"] for m in a} <= alice.delivered_ids(), 30),
                bob.recorder.wait(lambda: {m["id"] for m in b} <= bob.delivered_ids(), 30),
            ]
        )
        await defer.gatherResults([defer.ensureDeferred(p.stop()) for p in (alice, bob)])
        for me, other in ((alice, bob), (bob, alice)):
            logs = all_logs(me)
            self.assertNotIn(other.uid.encode(), logs)
            self.assertIn(pseudonym(me, other.uid).encode(), logs)
            self.assertEqual(ADDRESS.findall(logs), [])
            for address in other.link_addresses():
                self.assertNotIn(address.encode(), logs)
        self.assertNotEqual(pseudonym(alice, bob.uid), pseudonym(bob, bob.uid))


class TextLogFileTests(TestCase):
    timeout = 60

    async def test_twistd_logfile_is_the_daemons_private_rotating_file(self) -> None:
        """When twistd runs the daemon with ``--logfile``, then the text log is written by the
        daemon's own observer (a rotating ``LogFile`` created 0600), not by twistd's default
        one (created with the umask's mode and never pruned)."""
        umask = os.umask(0o022)
        os.umask(umask)
        if umask & 0o044:
            raise SkipTest("the umask already makes new files private: nothing to tell apart")
        root = short_tempdir(self)
        logfile = os.path.join(root, "text.log")
        process = DaemonProcess(
            os.path.join(root, "data"), root, twistd_args=["--logfile", logfile]
        )
        self.addCleanup(process.cleanup)
        process.run_to_exit()  # spawns it; its standard output stays empty

        def listening() -> bool:
            if not os.path.exists(logfile):
                return False
            with open(logfile, "rb") as f:
                return b"local API listening on" in f.read()

        deadline = reactor.seconds() + 30  # type: ignore[attr-defined]
        while not listening():  # the log file is the only signal of a detached-style daemon
            self.assertLess(reactor.seconds(), deadline)  # type: ignore[attr-defined]
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(os.stat(logfile).st_mode & 0o777, 0o600)
        await process.stop()
