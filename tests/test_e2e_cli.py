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


_STDIN_RUNNER = "import sys; from jarvis.cli import main; main(sys.argv[1:])"


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
