"""Tests for jarvis.common.peercred and the clients that use it: a "daemon" run by another user on
the
socket path gets no byte (no password) from the Twisted client, the asyncio client or the CLI.

The end-to-end tests need root (to run the fake daemon as ``nobody``) and skip otherwise."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from jarvis.common.errors import UntrustedDaemon
from jarvis.common.peercred import PeerCredentials, check_local_server, peer_credentials
from jarvis.ipc.client import IpcClient
from tests.daemons import REPO, child_env, short_tempdir

NOBODY = 65534
PASSWORD = "correct horse battery staple"


class FakeSocket:
    """Stands for a connected socket: its family and its peer's path, nothing else."""

    def __init__(self, family: int = socket.AF_UNIX, path: str = "/run/x.sock") -> None:
        self.family = family
        self.path = path

    def getpeername(self) -> str:
        return self.path


class CheckTests(TestCase):
    def test_other_uid_refused(self) -> None:
        """When the peer's credentials say another uid, then the check raises UntrustedDaemon
        naming that uid and the pid."""
        with self.assertRaises(UntrustedDaemon) as caught:
            check_local_server(
                FakeSocket(), uid=1000, credentials=lambda s: PeerCredentials(4242, 1001, 1001)
            )
        self.assertIn("uid 1001", str(caught.exception))
        self.assertIn("process 4242", str(caught.exception))
        self.assertIn("nothing was sent", str(caught.exception))

    def test_same_uid_accepted(self) -> None:
        """When the peer runs as the expected uid, then the check passes."""
        check_local_server(
            FakeSocket(), uid=1000, credentials=lambda s: PeerCredentials(1, 1000, 5)
        )

    def test_fallback_to_socket_owner(self) -> None:
        """When the platform has no SO_PEERCRED, then the socket file's owner decides."""
        seen: list[str] = []

        def owner(path: str) -> int:
            seen.append(path)
            return 1001

        with self.assertRaises(UntrustedDaemon):
            check_local_server(FakeSocket(), uid=1000, credentials=lambda s: None, owner=owner)
        self.assertEqual(seen, ["/run/x.sock"])
        check_local_server(FakeSocket(), uid=1001, credentials=lambda s: None, owner=owner)

    def test_fallback_refuses_a_link(self) -> None:
        """When the fallback finds a symbolic link at the socket's path, then it refuses."""
        directory = short_tempdir(self)
        link = os.path.join(directory, "s")
        os.symlink("/nonexistent", link)
        with self.assertRaises(UntrustedDaemon):
            check_local_server(FakeSocket(path=link), credentials=lambda s: None)

    def test_tcp_not_checked(self) -> None:
        """When the socket is not AF_UNIX (loopback TCP, protected by the token), then no
        credentials are asked for."""

        def credentials(s: Any) -> PeerCredentials:
            raise AssertionError("asked")

        check_local_server(FakeSocket(socket.AF_INET), uid=1, credentials=credentials)

    def test_real_socket_pair(self) -> None:
        """When both ends are this process, then SO_PEERCRED reports our pid and uid, our uid
        passes and any other is refused."""
        if not hasattr(socket, "SO_PEERCRED"):
            raise SkipTest("no SO_PEERCRED on this platform")
        a, b = socket.socketpair(socket.AF_UNIX)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        creds = peer_credentials(a)
        self.assertEqual((creds.pid, creds.uid) if creds else None, (os.getpid(), os.getuid()))
        check_local_server(a)
        with self.assertRaises(UntrustedDaemon):
            check_local_server(a, uid=os.getuid() + 1)


FAKE_DAEMON = r"""
import json, os, socket, sys
path = sys.argv[1]
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
os.chmod(path, 0o777)
server.listen(5)
sys.stdout.write("ready\n")
sys.stdout.flush()
while True:
    conn, _ = server.accept()
    conn.settimeout(20)
    data = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            while b"\n" in chunk:
                # answer like a daemon that accepted the password
                line, _, chunk = chunk.partition(b"\n")
                try:
                    rid = json.loads(line).get("id")
                except ValueError:
                    continue
                if rid is not None:
                    reply = {"jsonrpc": "2.0", "id": rid,
                             "result": {"name": "Victim", "uid": "fake", "unlocked": True}}
                    conn.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass
    sys.stdout.write("conn " + data.hex() + "\n")
    sys.stdout.flush()
    conn.close()
"""


class FakeDaemon(protocol.ProcessProtocol):
    """A process that drops to ``nobody`` and listens on a UNIX socket, answering every request
    with success and reporting, per connection, every byte it received."""

    def __init__(self) -> None:
        self.output = b""
        self.errors = b""
        self.waiters: list[tuple[bytes, defer.Deferred[None]]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        ready = [(n, d) for n, d in self.waiters if n in self.output]
        self.waiters = [(n, d) for n, d in self.waiters if n not in self.output]
        for _n, d in ready:
            d.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Any) -> None:
        waiters, self.waiters = self.waiters, []
        for needle, d in waiters:
            d.errback(RuntimeError(f"fake daemon ended before {needle!r}: {self.errors!r}"))
        self.ended.callback(None)

    def wait_for(self, needle: bytes) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if needle in self.output:
            d.callback(None)
        else:
            self.waiters.append((needle, d))
        d.addTimeout(30, reactor)  # type: ignore[arg-type]
        return d

    def received(self) -> list[bytes]:
        """The bytes of each finished connection."""
        return [
            bytes.fromhex(line[5:].decode())
            for line in self.output.splitlines()
            if line.startswith(b"conn ")
        ]


async def start_fake_daemon(testcase: TestCase, path: str) -> FakeDaemon:
    """Run :data:`FAKE_DAEMON` as ``nobody`` on *path*; it is killed at the end of *testcase*."""
    if os.getuid() != 0:
        raise SkipTest("needs root to run a fake daemon as another user (nobody)")
    if not hasattr(socket, "SO_PEERCRED"):
        raise SkipTest("no SO_PEERCRED on this platform")
    # nobody must reach the directory it binds in: enter the test's root, write its own dir
    os.chmod(os.path.dirname(os.path.dirname(path)), 0o711)
    os.chmod(os.path.dirname(path), 0o777)
    fake = FakeDaemon()
    transport = reactor.spawnProcess(  # type: ignore[attr-defined]
        fake, sys.executable, [sys.executable, "-c", FAKE_DAEMON, path], env=child_env()
    )

    async def stop() -> None:
        if not fake.ended.called:
            transport.signalProcess("KILL")
            await fake.ended

    testcase.addCleanup(stop)
    await fake.wait_for(b"ready\n")
    return fake


class FakeDaemonTests(TestCase):
    timeout = 60

    async def test_twisted_client_sends_nothing(self) -> None:
        """When another user's process answers on the socket path, then IpcClient.connect fails
        with UntrustedDaemon and that process received no byte."""
        root = short_tempdir(self)
        fake_dir = os.path.join(root, "fake")
        os.mkdir(fake_dir)
        path = os.path.join(fake_dir, "s.sock")
        fake = await start_fake_daemon(self, path)
        with self.assertRaises(UntrustedDaemon) as caught:
            await IpcClient.connect(reactor, f"unix:{path}", token="t0ken")
        self.assertIn(f"uid {NOBODY}", str(caught.exception))
        # through clientFromString too (a description with options)
        with self.assertRaises(UntrustedDaemon):
            await IpcClient.connect(reactor, f"unix:path={path}:timeout=5")
        await fake.wait_for(b"conn \nconn \n")
        self.assertEqual(fake.received(), [b"", b""])

    async def test_asyncio_client_sends_nothing(self) -> None:
        """When another user's process answers on the socket path, then the asyncio
        Client.connect raises UntrustedDaemon and that process received no byte."""
        root = short_tempdir(self)
        fake_dir = os.path.join(root, "fake")
        os.mkdir(fake_dir)
        path = os.path.join(fake_dir, "s.sock")
        fake = await start_fake_daemon(self, path)
        script = (
            "import asyncio, sys\n"
            "from jarvis.client import Client\n"
            "from jarvis.common.errors import UntrustedDaemon\n"
            "async def main():\n"
            "    try:\n"
            "        client = await Client.connect(sys.argv[1])\n"
            "    except UntrustedDaemon as e:\n"
            "        print('refused:', e)\n"
            "        return\n"
            "    print(await client.call('identity.unlock', password=sys.argv[2]))\n"
            "    await client.close()\n"
            "asyncio.run(main())\n"
        )
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-c", script, f"unix:{path}", PASSWORD],
            env=child_env(),
            path=REPO,
            reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        self.assertIn(f"refused: the local API socket is served by uid {NOBODY}", out.decode())
        await fake.wait_for(b"conn ")
        self.assertEqual(fake.received(), [b""])

    async def test_cli_unlock_does_not_give_the_password(self) -> None:
        """When a fake daemon of another user answers at the data directory's socket path, then
        ``jarvis unlock`` exits 1 without printing "unlocked", and the fake received nothing:
        not the password."""
        root = short_tempdir(self)
        data_dir = os.path.join(root, "d")
        os.mkdir(data_dir, 0o700)
        fake_dir = os.path.join(root, "fake")
        os.mkdir(fake_dir)
        fake = await start_fake_daemon(self, os.path.join(fake_dir, "s.sock"))
        # whatever answers on the path the CLI uses: the fake's socket, moved there
        os.rename(os.path.join(fake_dir, "s.sock"), os.path.join(data_dir, "ipc.sock"))
        password_file = os.path.join(root, "pw")
        with open(password_file, "w") as f:
            f.write(PASSWORD + "\n")
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "jarvis", "--data-dir", data_dir, "unlock", "--password-file", password_file],
            env=child_env(XDG_RUNTIME_DIR=root),
            path=REPO,
            reactor=reactor,
        )
        self.assertEqual(code, 1, (out, err))
        self.assertNotIn(b"unlocked", out)
        self.assertIn(f"uid {NOBODY}".encode(), err)
        self.assertNotIn(b"Traceback", err)
        await fake.wait_for(b"conn ")
        received = fake.received()
        self.assertEqual(received, [b""])
        self.assertNotIn(PASSWORD.encode(), b"".join(received))
        self.assertNotIn(json.dumps(PASSWORD).encode(), b"".join(received))
