"""End to end: the ``jarvis`` CLI as a user types it, against real detached daemons.

Every command's happy path and its most likely mistake, with the exact exit status and message.
Two data directories (alice, bob) get their own daemons started by ``jarvis daemon start``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.daemons import REPO, child_env, short_tempdir


class Cli:
    """Runs ``python -m jarvis`` for one data directory."""

    def __init__(self, root: str, name: str) -> None:
        self.data_dir = os.path.join(root, name)
        self.env = child_env(JARVIS_HOME=self.data_dir, XDG_RUNTIME_DIR=root)

    async def run(self, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        argv = ["-m", "jarvis", *args]
        if stdin is not None:
            argv = ["-c", _STDIN_RUNNER, *args]
        out, err, code = await getProcessOutputAndValue(
            sys.executable, argv, env=self.env, path=REPO, reactor=reactor
        )
        return code, out.decode(), err.decode()

    async def ok(self, *args: str) -> str:
        code, out, err = await self.run(*args)
        if code != 0:
            raise AssertionError(f"jarvis {' '.join(args)} exited {code}: {err}")
        return out

    async def json(self, *args: str) -> Any:
        return json.loads(await self.ok("--json", *args))


_STDIN_RUNNER = "import sys; from jarvis.app.cli import main; main(sys.argv[1:])"


def write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


class CliTests(TestCase):
    timeout = 180

    async def test_commands_against_real_daemons(self) -> None:
        """When a user runs each CLI command against real daemons, then the happy paths work and
        the likely mistakes (daemon not running, wrong password, unknown contact, usage) exit
        with status 1 (or 2 for usage) and one line, never a traceback."""
        root = short_tempdir(self)
        pw = write(os.path.join(root, "pw"), "secret one\n")
        wrong = write(os.path.join(root, "wrong"), "not it\n")
        alice, bob = Cli(root, "alice"), Cli(root, "bob")
        self.addCleanup(alice.run, "daemon", "stop")
        self.addCleanup(bob.run, "daemon", "stop")

        # daemon not running
        code, _out, err = await alice.run("whoami")
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("daemon", err)
        self.assertNotIn("Traceback", err)
        self.assertIn("stopped", await alice.ok("daemon", "status"))

        # start, init, status, whoami
        for cli in (alice, bob):
            await cli.ok("daemon", "start", "--listen", "tcp:0:interface=127.0.0.1")
        status = await alice.json("daemon", "status")
        self.assertTrue(status["running"])
        self.assertIsInstance(status["pid"], int)
        self.assertTrue(status["ipc"].startswith("unix:"))
        self.assertEqual(status["version"], "0.1.0")
        await alice.ok("init", "--name", "Alice", "--password-file", pw)
        await bob.ok("init", "--name", "Bob", "--password-file", pw)
        code, _out, err = await alice.run("init", "--name", "Again", "--password-file", pw)
        self.assertEqual(code, 1)
        self.assertIn("already exists", err)
        me_a = await alice.json("whoami")
        me_b = await bob.json("whoami")
        for key in ("name", "uid", "fingerprint", "link", "addresses"):
            self.assertIn(key, me_a)
        self.assertEqual(me_a["name"], "Alice")
        self.assertTrue(me_a["link"].startswith("jarvis://"))
        self.assertTrue(me_a["addresses"][0].startswith("127.0.0.1:"))

        # contacts: link code and card file; a damaged link is refused
        code, _out, err = await alice.run("add", me_b["link"][:-3] + "aaa")
        self.assertEqual(code, 1)
        self.assertNotIn("Traceback", err)
        await alice.ok("add", me_b["link"], "--name", "bobby")
        card = os.path.join(root, "alice.jcard")
        await alice.ok("whoami", "--card", card)
        await bob.ok("add", card)
        contacts = await alice.json("contacts")
        self.assertEqual([c["uid"] for c in contacts["contacts"]], [me_b["uid"]])

        # send with --wait delivered; history on the other side; unknown contact
        message_id = (await alice.ok("send", "bobby", "hello bob", "--wait", "delivered")).strip()
        self.assertEqual(len(message_id), 32)
        history = await bob.json("history", "Alice")
        bodies = [(m["direction"], m["body"], m["id"]) for m in history]
        self.assertEqual(bodies, [("in", "hello bob", message_id)])
        self.assertIn("state", history[0])
        self.assertIn("created", history[0])
        code, _out, err = await alice.run("send", "carol", "hi")
        self.assertEqual(code, 1)
        self.assertIn("carol", err)

        # lock, wrong password, unlock
        await alice.ok("lock")
        code, _out, err = await alice.run("contacts")
        self.assertEqual(code, 1)
        self.assertIn("locked", err)
        code, _out, err = await alice.run("unlock", "--password-file", wrong)
        self.assertEqual(code, 1)
        self.assertIn("password", err.lower())
        await alice.ok("unlock", "--password-file", pw)

        # rpc and usage errors
        rpc = await alice.json("rpc", "daemon.status")
        self.assertFalse(rpc["locked"])
        code, _out, err = await alice.run("send")
        self.assertEqual(code, 2)
        code, _out, err = await alice.run("rpc", "no.such.method")
        self.assertEqual(code, 1)

        # export, then stop
        export = os.path.join(root, "alice.jexport")
        await alice.ok("export", export, "--password-file", pw)
        self.assertGreater(os.path.getsize(export), 100)
        await alice.ok("daemon", "stop")
        self.assertIn("stopped", await alice.ok("daemon", "status"))


def friend_link(name: str) -> tuple[str, str]:
    """Return the uid and link code of a new identity called *name* that nobody runs; its
    address is a closed loopback port, so dialling it fails at once (and is counted)."""
    from jarvis.crypto import linkcode
    from jarvis.crypto.identity import IdentityKey

    key = IdentityKey.generate()
    card = linkcode.make_card(key, name, ("127.0.0.1:9",), 1_700_000_000)
    return key.uid, linkcode.encode_link(card)


class CliReachTests(TestCase):
    """The CLI reaches as far as the API: long histories, contact and account commands."""

    timeout = 240

    async def test_long_history_and_contact_commands(self) -> None:
        """When a conversation holds 1,200 messages in a real store, then history --limit 10000
        and --all print all 1,200 in seq order, --before/--after page from a message id, and
        verify, rename, remove, settings, peers and passwd work against the real daemon."""
        from jarvis.common import paths
        from jarvis.ipc.client import IpcClient
        from jarvis.ipc.jsonrpc import INVALID_PARAMS, RemoteError

        root = short_tempdir(self)
        pw = write(os.path.join(root, "pw"), "secret one\n")
        new_pw = write(os.path.join(root, "pw2"), "secret two\n")
        alice = Cli(root, "alice")
        self.addCleanup(alice.run, "daemon", "stop")
        await alice.ok("daemon", "start", "--listen", "tcp:0:interface=127.0.0.1")
        await alice.ok("init", "--name", "Alice", "--password-file", pw)
        bob_uid, bob_link = friend_link("Bob")
        await alice.ok("add", bob_link)

        client = await IpcClient.connect(reactor, paths.client_endpoint_for(alice.data_dir))
        self.addCleanup(client.close)
        sent = [
            (await client.call("messages.send", {"contact": "Bob", "text": f"m{i}"}))["id"]
            for i in range(1200)
        ]
        # identity.create with a control character: invalid params with the reason
        with self.assertRaises(RemoteError) as caught:
            await client.call("identity.create", {"name": "Eve\x1b[2J", "password": "x"})
        self.assertEqual(caught.exception.code, INVALID_PARAMS)
        self.assertIn("U+001B", str(caught.exception))

        everything = await alice.json("history", "Bob", "--limit", "10000")
        self.assertEqual([m["id"] for m in everything], sent)
        seqs = [m["seq"] for m in everything]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual([m["id"] for m in await alice.json("history", "Bob", "--all")], sent)
        text = await alice.ok("history", "Bob", "--all")
        self.assertEqual(len(text.splitlines()), 1200)
        self.assertTrue(text.splitlines()[0].endswith("> m0"))
        self.assertTrue(text.splitlines()[-1].endswith("> m1199"))
        last = await alice.json("history", "Bob")
        self.assertEqual([m["id"] for m in last], sent[-20:])
        older = await alice.json("history", "Bob", "--before", sent[600], "--limit", "450")
        self.assertEqual([m["id"] for m in older], sent[150:600])
        newer = await alice.json("history", "Bob", "--after", sent[600], "--limit", "5")
        self.assertEqual([m["id"] for m in newer], sent[601:606])
        tail = await alice.json("history", "Bob", "--after", sent[700], "--all")
        self.assertEqual([m["id"] for m in tail], sent[701:])
        between = await alice.json("history", "Bob", "--after", sent[10], "--before", sent[15])
        self.assertEqual([m["id"] for m in between], sent[11:15])
        code, _out, err = await alice.run("history", "Bob", "--after", "0" * 32)
        self.assertEqual(code, 1)
        self.assertIn("not in this conversation", err)

        # verify: --json needs --yes; --yes marks verified, with both fingerprints and the code
        code, _out, err = await alice.run("--json", "verify", "Bob")
        self.assertEqual(code, 2)
        self.assertIn("--yes", err)
        shown = await alice.json("verify", "Bob", "--yes")
        me = await alice.json("whoami")
        self.assertEqual(
            (shown["uid"], shown["own_fingerprint"], shown["verified"]),
            (bob_uid, me["fingerprint"], True),
        )
        self.assertTrue(shown["safety_code"])
        contact = await client.call("contacts.show", {"contact": bob_uid})
        self.assertTrue(contact["verified"])
        again = await alice.ok("verify", "Bob", "--yes")
        self.assertIn("safety code:", again)
        self.assertIn(shown["safety_code"], again)
        self.assertIn("already verified", again)
        code, _out, err = await alice.run("verify", "Bob")  # no terminal to confirm on
        self.assertEqual(code, 2)
        self.assertIn("--yes", err)

        # rename; an ambiguous name names its candidates
        self.assertIn("renamed Bob to bobby", await alice.ok("rename", "Bob", "bobby"))
        other_uid, other_link = friend_link("Bob")
        third_uid, third_link = friend_link("Bob")
        await alice.ok("add", other_link)
        await alice.ok("add", third_link)
        code, _out, err = await alice.run("history", "Bob")
        self.assertEqual(code, 1)
        self.assertIn(other_uid[:12], err)
        self.assertIn(third_uid[:12], err)
        self.assertEqual(len(await alice.json("history", "bobby", "--all")), 1200)

        # settings: list, set (parsed as the API expects), get; a bad value is refused
        settings = await alice.json("settings")
        self.assertEqual(settings["bell"], True)
        self.assertEqual(await alice.json("settings", "bell", "off"), {"bell": False})
        self.assertEqual((await alice.ok("settings", "bell")).strip(), "bell off")
        code, _out, err = await alice.run("settings", "bell", "maybe")
        self.assertEqual(code, 1)
        self.assertIn("on or off", err)
        code, _out, err = await alice.run("settings", "colour")
        self.assertEqual(code, 1)
        self.assertIn("bell", err)

        # peers: each contact's status, since when, traffic and sessions, once each
        peers = await alice.json("peers")
        by_uid = {p["uid"]: p for p in peers["peers"]}
        self.assertEqual(by_uid[bob_uid]["sessions_accepted"], 0)
        self.assertIsNotNone(by_uid[bob_uid]["offline_since"])
        text = await alice.ok("peers")
        self.assertIn("0 of 3 contacts online", text)
        self.assertIn("bobby (", text)
        self.assertIn("offline since", text)
        self.assertIn("0 dialled, 0 accepted", text)

        # remove
        removed = await alice.json("remove", other_uid[:16])
        self.assertEqual((removed["removed"], removed["uid"]), (True, other_uid))
        contacts = await alice.json("contacts")
        self.assertNotIn(other_uid, [c["uid"] for c in contacts["contacts"]])

        # passwd: the old password no longer unlocks, the new one does
        await alice.ok("passwd", "--password-file", pw, "--new-password-file", new_pw)
        await alice.ok("lock")
        code, _out, _err = await alice.run("unlock", "--password-file", pw)
        self.assertEqual(code, 1)
        await alice.ok("unlock", "--password-file", new_pw)
