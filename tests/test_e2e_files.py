"""End to end: file transfer between two real twistd daemons over loopback (issue 18).

Each test starts two daemons, befriends them, and drives ``files.*`` through the real local
API; the file travels on its own pinned-TLS data connection.  What each test tries and what
must survive is in its docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from jarvis.protocol.transfer import DEFAULT_CHUNK_SIZE, PIECE_SIZE
from tests.daemons import short_tempdir
from tests.peers import Peer, befriend

MiB = 1024 * 1024
GiB = 1024 * MiB


async def start_friends(testcase: TestCase) -> tuple[Peer, Peer, str]:
    root = short_tempdir(testcase)
    alice, bob = Peer(testcase, root, "alice"), Peer(testcase, root, "bob")
    await defer.gatherResults(
        [
            defer.ensureDeferred(alice.start(create=True)),
            defer.ensureDeferred(bob.start(create=True)),
        ]
    )
    await befriend(alice, bob)
    return alice, bob, root


def random_file(path: str, size: int) -> str:
    """Write *size* random bytes to *path*; return their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def rss_mib(pid: int, key: str, *, reset_peak: bool = False) -> float:
    """``VmRSS``/``VmHWM`` of *pid* in MiB; *reset_peak* first resets the peak (Linux
    ``clear_refs``; the Argon2 of the identity's creation would otherwise be the peak)."""
    if reset_peak:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} for {pid}")


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def state_of(peer: Peer, transfer_id: str) -> str | None:
    """The last state *peer* announced for the transfer."""
    for payload in reversed(peer.recorder.named("transfer.changed")):
        if payload["transfer"]["id"] == transfer_id:
            return str(payload["transfer"]["state"])
    return None


def offered_ids(peer: Peer) -> list[str]:
    return [p["transfer"]["id"] for p in peer.recorder.named("transfer.offered")]


async def wait_state(peer: Peer, transfer_id: str, states: set[str], timeout: float = 60) -> None:
    await peer.recorder.wait(lambda: state_of(peer, transfer_id) in states, timeout)


async def offer_and_accept(
    alice: Peer, bob: Peer, path: str, inbox: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    sent = await alice.call("files.send", contact=bob.uid, path=path)
    await bob.recorder.wait(lambda: sent["id"] in offered_ids(bob), 30)
    accepted = await bob.call("files.accept", id=sent["id"][:8], directory=inbox)
    return sent, accepted


class TransferTests(TestCase):
    timeout = 480

    async def test_file_arrives_byte_identical(self) -> None:
        """When alice sends a 1 GiB random file and bob accepts it into a folder, then the
        file there is byte-identical, both sides say complete, no partial file is left,
        progress events carried bytes, rate and ETA on both sides, and neither daemon's peak
        RSS grew by more than 32 MiB during the transfer."""
        alice, bob, root = await start_friends(self)
        path = os.path.join(root, "big.bin")
        digest = await deferToThread(random_file, path, GiB + 12345)
        inbox = os.path.join(root, "inbox")
        sent = await alice.call("files.send", contact=bob.uid, path=path)
        await bob.recorder.wait(lambda: sent["id"] in offered_ids(bob), 30)
        pids = [alice.process.transport.pid, bob.process.transport.pid]
        before = [rss_mib(pid, "VmRSS", reset_peak=True) for pid in pids]
        accepted = await bob.call("files.accept", id=sent["id"][:8], directory=inbox)
        self.assertEqual(accepted["state"], "accepted")
        await wait_state(bob, sent["id"], {"complete", "failed", "cancelled"}, 400)
        await wait_state(alice, sent["id"], {"complete", "failed", "cancelled"}, 60)
        growth = [rss_mib(pid, "VmHWM") - b for pid, b in zip(pids, before, strict=True)]
        print(f"\nRSS growth during 1 GiB: sender {growth[0]:.1f} MiB, receiver {growth[1]:.1f}")
        self.assertLessEqual(max(growth), 32.0)
        self.assertEqual(state_of(bob, sent["id"]), "complete")
        self.assertEqual(state_of(alice, sent["id"]), "complete")
        self.assertEqual(os.listdir(inbox), ["big.bin"])
        self.assertEqual(await deferToThread(sha256_of, os.path.join(inbox, "big.bin")), digest)
        listed = (await bob.call("files.list"))["transfers"]
        self.assertEqual([(t["id"], t["state"]) for t in listed], [(sent["id"], "complete")])
        self.assertEqual(listed[0]["path"], os.path.join(inbox, "big.bin"))
        for peer in (alice, bob):
            progress = peer.recorder.named("transfer.progress")
            self.assertTrue(progress, f"{peer.name} reported no progress")
            self.assertTrue({"bytes", "rate", "eta", "size"} <= set(progress[-1]))

    async def test_chat_still_flows_and_hostile_name_lands_safely(self) -> None:
        """When alice offers a file named with an escape sequence, a path and an RTL override,
        then bob's file lands inside the chosen folder under a cleaned name, and a chat
        message sent meanwhile is delivered."""
        alice, bob, root = await start_friends(self)
        hostile = "..\x1b]52;c;AAAA\x07\u202etxt.exe"
        path = os.path.join(root, hostile)
        digest = random_file(path, 3 * MiB)
        inbox = os.path.join(root, "inbox")
        sent, _ = await offer_and_accept(alice, bob, path, inbox)
        message = await alice.call("messages.send", contact=bob.uid, text="still here")
        await alice.recorder.wait(lambda: message["id"] in alice.delivered_ids(), 60)
        await wait_state(bob, sent["id"], {"complete", "failed", "cancelled"}, 60)
        self.assertEqual(state_of(bob, sent["id"]), "complete")
        names = os.listdir(inbox)
        self.assertEqual(len(names), 1)
        name = names[0]
        self.assertFalse(name.startswith("."))
        self.assertNotIn("\x1b", name)
        self.assertNotIn("\u202e", name)
        self.assertEqual(sha256_of(os.path.join(inbox, name)), digest)
        self.assertEqual(bob.received_bodies(), ["still here"])

    async def test_decline_and_cancel_reach_both_sides(self) -> None:
        """When bob declines one offer and alice cancels another before it is accepted, then
        both sides show both cancelled, with the reason, and nothing is written to bob's
        folder."""
        alice, bob, root = await start_friends(self)
        path = os.path.join(root, "a.bin")
        random_file(path, 1000)
        first = await alice.call("files.send", contact=bob.uid, path=path)
        second = await alice.call("files.send", contact=bob.uid, path=path)
        await bob.recorder.wait(lambda: {first["id"], second["id"]} <= set(offered_ids(bob)), 30)
        declined = await bob.call("files.decline", id=first["id"])
        self.assertEqual(declined["state"], "cancelled")
        await wait_state(alice, first["id"], {"cancelled"}, 30)
        cancelled = await alice.call("files.cancel", id=second["id"])
        self.assertEqual(cancelled["state"], "cancelled")
        await wait_state(bob, second["id"], {"cancelled"}, 30)
        reasons = {t["id"]: t["reason"] for t in (await alice.call("files.list"))["transfers"]}
        self.assertIn("declined", reasons[first["id"]])

    async def test_sender_killed_mid_transfer_resumes(self) -> None:
        """When the sender is SIGKILLed in the middle of a transfer and restarted, then the
        transfer completes by itself, byte-identical, and the resumed connection sends exactly
        the chunks the receiver did not hold (every complete chunk that had arrived was kept,
        and the sender had at most one chunk unacknowledged on the connection: at most that one
        is sent again; the sender's last progress report, bytes handed to its transport, is at
        most one chunk ahead of what the receiver holds)."""
        alice, bob, root = await start_friends(self)
        path = os.path.join(root, "big.bin")
        digest = random_file(path, SIZE)
        inbox = os.path.join(root, "inbox")
        sent, _ = await offer_and_accept(alice, bob, path, inbox)
        await alice.recorder.wait(lambda: received(alice, sent["id"]) >= 8 * MiB, 120)
        await alice.kill()
        sent_before_kill = received(alice, sent["id"])
        await wait_state(bob, sent["id"], {"accepted"}, 30)
        listed = await listed_bytes(bob, sent["id"])
        self.assertLess(listed, SIZE, "the transfer ended before the kill: nothing was tested")
        held_chunks, written = on_disk(inbox)
        self.assertEqual(listed, written)  # the receiver lists what is on its disk
        # What the sender had handed to its transport (at least what it last reported) reached
        # the receiver's disk (held chunks and the pieces written of a chunk cut off), but for
        # at most one chunk's bytes that may have been in flight.
        self.assertLessEqual(sent_before_kill - written, LOST_BOUND * CHUNK)
        await alice.start(unlock=True)
        await wait_state(bob, sent["id"], {"complete", "failed", "cancelled"}, 180)
        self.assertEqual(state_of(bob, sent["id"]), "complete")
        self.assertEqual(sha256_of(os.path.join(inbox, "big.bin")), digest)
        await alice.process.wait_for(b"chunks of transfer")  # the log may trail the events
        self.assertEqual(chunks_resent(alice), [SIZE // CHUNK - held_chunks])

    async def test_receiver_killed_mid_transfer_resumes(self) -> None:
        """When the receiver is SIGKILLed in the middle of a transfer and restarted, then it
        re-verifies its hidden 0600 partial file, reports every chunk it had verified before
        the kill (each chunk's "held" byte is written to the sidecar right after the chunk, so
        it survives kill -9), the resumed connection sends exactly the chunks not on disk, and
        the file completes byte-identical.

        Re-sent here means sent again although the receiver had verified it (none: progress is
        announced only after a chunk's mark is written), and in total: the sender keeps at most
        one chunk unacknowledged on the connection (the receiver acknowledges each once it is
        written and marked held), so at most that one chunk, in flight when the receiver died,
        is sent again (``LOST_BOUND``)."""
        alice, bob, root = await start_friends(self)
        path = os.path.join(root, "big.bin")
        digest = random_file(path, SIZE)
        inbox = os.path.join(root, "inbox")
        sent, _ = await offer_and_accept(alice, bob, path, inbox)
        await bob.recorder.wait(lambda: received(bob, sent["id"]) >= 8 * MiB, 120)
        await bob.kill()
        announced = received(bob, sent["id"])
        await wait_state(alice, sent["id"], {"accepted"}, 30)
        partials = [n for n in os.listdir(inbox) if n.endswith(".jarvis-partial")]
        self.assertEqual(len(partials), 1)
        self.assertTrue(partials[0].startswith("."))
        self.assertEqual(os.stat(os.path.join(inbox, partials[0])).st_mode & 0o777, 0o600)
        held, written = on_disk(inbox)
        self.assertLess(held, SIZE // CHUNK, "the transfer ended before the kill")
        self.assertGreaterEqual(announced, 8 * MiB)
        # Every byte announced written (progress comes after a piece's mark) is on the disk:
        # none of it is asked for again.
        self.assertLessEqual(announced, written)
        await alice.process.wait_for(b"sent on this connection")
        first_connection = sent_per_connection(alice)
        self.assertEqual(len(first_connection), 1)
        await bob.start(unlock=True)
        await wait_state(alice, sent["id"], {"complete", "failed", "cancelled"}, 180)
        self.assertEqual(state_of(alice, sent["id"]), "complete")
        self.assertEqual(sha256_of(os.path.join(inbox, "big.bin")), digest)
        await alice.process.wait_for(f"sending {SIZE // CHUNK - held} of".encode())
        self.assertEqual(chunks_resent(alice), [SIZE // CHUNK, SIZE // CHUNK - held])
        lost = first_connection[0] - written
        print(
            f"\nreceiver kill: {announced} bytes announced written, {written} on disk after "
            f"the restart ({held} chunks held); {lost} bytes in flight sent again"
        )
        self.assertGreaterEqual(lost, 0)
        self.assertLessEqual(lost, LOST_BOUND * CHUNK)


#: The file of the kill tests and its chunk size (the default offered, 8 MiB).
SIZE = 192 * MiB
CHUNK = DEFAULT_CHUNK_SIZE
#: Chunks' bytes sent again in total after a kill: at most one chunk's bytes of pieces in
#: flight (the sender keeps at most one chunk's bytes unacknowledged; the receiver acknowledges
#: each piece once written and recorded, and a chunk cut off resumes from its next piece).
LOST_BOUND = 1
#: The sidecar mark of a chunk not held with some of its pieces written (0x80 | pieces).
PIECES_WRITTEN = 0x80
PIECE = PIECE_SIZE


def on_disk(inbox: str, size: int = 0) -> tuple[int, int]:
    """Chunks held and bytes written (held chunks and pieces of a chunk cut off) according to
    the only partial file's sidecar in *inbox* (of a file of *size* bytes, ``SIZE`` if 0)."""
    (partial,) = [n for n in os.listdir(inbox) if n.endswith(".jarvis-partial")]
    with open(os.path.join(inbox, partial + ".state"), "rb") as f:
        marks = f.read()[-((size or SIZE) // CHUNK) :]
    held = sum(1 for m in marks if m == 1)
    pieces = sum(m & ~PIECES_WRITTEN for m in marks if m & PIECES_WRITTEN)
    return held, held * CHUNK + pieces * PIECE


def received(peer: Peer, transfer_id: str) -> int:
    done = [p["bytes"] for p in peer.recorder.named("transfer.progress") if p["id"] == transfer_id]
    return max(done, default=0)


async def listed_bytes(peer: Peer, transfer_id: str) -> int:
    for t in (await peer.call("files.list"))["transfers"]:
        if t["id"] == transfer_id:
            return int(t["bytes"])
    raise AssertionError("transfer not listed")


def chunks_resent(sender: Peer) -> list[int]:
    """The ``missing`` of each "sending {missing} of {chunks} chunks" line of the sender."""
    found = re.findall(rb"sending (\d+) of \d+ chunks of transfer", sender.process.output)
    return [int(n) for n in found]


def sent_per_connection(sender: Peer) -> list[int]:
    """Bytes of the file the sender put on each of its connections."""
    found = re.findall(rb"\((\d+) bytes\) sent on this connection", sender.process.output)
    return [int(n) for n in found]


class DamageTests(TestCase):
    timeout = 240

    async def test_partial_corrupted_between_runs_fetches_the_bad_chunk_again(self) -> None:
        """When the receiver is killed mid-transfer and one chunk its sidecar says it holds is
        overwritten on disk before it restarts, then the restart detects it, the resumed
        connection fetches that chunk again with the missing ones, and the file is
        byte-identical."""
        alice, bob, root = await start_friends(self)
        path = os.path.join(root, "big.bin")
        digest = random_file(path, SIZE)
        inbox = os.path.join(root, "inbox")
        sent, _ = await offer_and_accept(alice, bob, path, inbox)
        await bob.recorder.wait(lambda: received(bob, sent["id"]) >= 8 * MiB, 120)
        await bob.kill()
        await wait_state(alice, sent["id"], {"accepted"}, 30)
        (partial,) = [n for n in os.listdir(inbox) if n.endswith(".jarvis-partial")]
        with open(os.path.join(inbox, partial + ".state"), "rb") as f:
            bitmap = f.read()[-(SIZE // CHUNK) :]
        held = sum(1 for m in bitmap if m == 1)
        self.assertGreater(held, 2)
        self.assertLess(held, SIZE // CHUNK)
        victim = bitmap.index(1, 1)
        with open(os.path.join(inbox, partial), "r+b") as f:
            f.seek(victim * CHUNK + 100)
            f.write(b"\x00corrupted\x00")
        await bob.start(unlock=True)
        await wait_state(alice, sent["id"], {"complete", "failed", "cancelled"}, 180)
        self.assertEqual(state_of(alice, sent["id"]), "complete")
        self.assertEqual(sha256_of(os.path.join(inbox, "big.bin")), digest)
        await alice.process.wait_for(f"sending {SIZE // CHUNK - held + 1} of".encode())
        self.assertEqual(chunks_resent(alice)[-1], SIZE // CHUNK - held + 1)


class ConcurrencyTests(TestCase):
    timeout = 300

    async def test_two_each_way_with_chat(self) -> None:
        """When two files go each way at once while alice and bob chat, then all four files
        arrive byte-identical and every chat message arrives in order while the files stream;
        the chat latency (send call to the receiver's event) is measured and bounded."""
        alice, bob, root = await start_friends(self)
        inbox_a, inbox_b = os.path.join(root, "in-a"), os.path.join(root, "in-b")
        digests: dict[str, tuple[Peer, str, str]] = {}
        for sender, receiver, inbox in ((alice, bob, inbox_b), (bob, alice, inbox_a)):
            for n in range(2):
                path = os.path.join(root, f"{sender.name}-{n}.bin")
                digest = random_file(path, CHAT_FILE)
                sent = await sender.call("files.send", contact=receiver.uid, path=path)
                digests[sent["id"]] = (
                    receiver,
                    os.path.join(inbox, os.path.basename(path)),
                    digest,
                )
        for tid, (receiver, _path, _digest) in digests.items():
            await receiver.recorder.wait(lambda r=receiver, t=tid: t in offered_ids(r), 30)
        for tid, (receiver, path, _digest) in digests.items():
            await receiver.call("files.accept", id=tid, directory=os.path.dirname(path))
        clock: Any = reactor
        latencies = []
        n = 0
        while not all(state_of(r, t) == "complete" for t, (r, _p, _d) in digests.items()):
            text = f"chat {n}"
            started = clock.seconds()
            await alice.call("messages.send", contact=bob.uid, text=text)
            await bob.recorder.wait(lambda c=n: len(bob.received_bodies()) > c, 30)
            latencies.append(clock.seconds() - started)
            n += 1
            self.assertLess(n, 100_000)
        for _tid, (_receiver, path, digest) in digests.items():
            self.assertEqual(sha256_of(path), digest)
        self.assertEqual(bob.received_bodies(), [f"chat {i}" for i in range(n)])
        latencies.sort()
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"\nchat during 4 transfers: {n} messages, p50 {p50:.3f} s, p99 {p99:.3f} s")
        self.assertGreater(n, 5, "the transfers ended before the chat was measured")
        self.assertLess(p99, CHAT_P99_BOUND)


#: Each file of the concurrency test.
CHAT_FILE = 96 * MiB
#: Chat p99 bound under four transfers on a shared 2-core CI machine (issue goal: 50 ms on a
#: quiet one; measured figures in docs/benchmarks.md).
CHAT_P99_BOUND = 1.0


class CliTests(TestCase):
    timeout = 240

    async def test_cli_send_accept_policy(self) -> None:
        """When files go through the CLI: send-file --wait answers once bob accepts and prints
        the complete transfer; files --json lists it on both sides; an auto-accept limit takes
        a small file without asking and leaves a larger one offered; a size cap refuses an
        oversize accept with the reason; cancel ends a waiting offer on both sides; send-file
        with several paths and --wait offers each (a missing one is said, the others go) and
        answers once all ended; accept --all --wait answers once the files it took arrived; a
        folder sent whole lands in one new folder beside the one of its name bob had."""
        from jarvis.common import paths
        from jarvis.ipc.client import IpcClient
        from tests.peers import EventRecorder
        from tests.test_e2e_cli import Cli, write

        root = short_tempdir(self)
        pw = write(os.path.join(root, "pw"), "secret one\n")
        alice, bob = Cli(root, "alice"), Cli(root, "bob")
        for cli, name in ((alice, "Alice"), (bob, "Bob")):
            self.addCleanup(cli.run, "daemon", "stop")
            await cli.ok("daemon", "start", "--listen", "tcp:0:interface=127.0.0.1")
            await cli.ok("init", "--name", name, "--password-file", pw)
        a_me, b_me = await alice.json("whoami"), await bob.json("whoami")
        await alice.ok("add", b_me["link"])
        await bob.ok("add", a_me["link"])
        path = os.path.join(root, "report.pdf")
        digest = random_file(path, 5 * MiB)
        inbox = os.path.join(root, "inbox")

        events = {}
        for cli, name in ((alice, "alice"), (bob, "bob")):
            client = await IpcClient.connect(reactor, paths.client_endpoint_for(cli.data_dir))
            self.addCleanup(client.close)
            events[name] = EventRecorder()
            await client.subscribe(events[name])

        def states(name: str) -> dict[str, str]:
            found: dict[str, str] = {}
            for p in events[name].named("transfer.changed"):
                found[p["transfer"]["id"]] = p["transfer"]["state"]
            return found

        async def reach(name: str, tid: str, state: str) -> None:
            await events[name].wait(lambda: states(name).get(tid) == state, 60)

        waiting = defer.ensureDeferred(alice.run("--json", "send-file", "Bob", path, "--wait"))
        await events["bob"].wait(lambda: bool(events["bob"].named("transfer.offered")), 60)
        offered = await bob.json("files")
        tid = offered["transfers"][0]["id"]
        self.assertEqual(offered["transfers"][0]["state"], "offered")
        accepted = await bob.json("accept", tid[:6], "--to", inbox)
        self.assertEqual(accepted["state"], "accepted")
        code, out, err = await waiting
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["state"], "complete")
        self.assertEqual(sha256_of(os.path.join(inbox, "report.pdf")), digest)
        await reach("bob", tid, "complete")
        done = await bob.json("files")
        self.assertEqual(done["transfers"][0]["path"], os.path.join(inbox, "report.pdf"))
        text = await bob.ok("files")
        self.assertIn("complete", text)
        self.assertIn("report.pdf", text)

        policy = await bob.json(
            "files", "--auto-accept", "Alice=1M", "--downloads", inbox, "--max-size", "3M"
        )
        self.assertEqual(policy["auto_accept"], {a_me["uid"]: 1024 * 1024})
        self.assertEqual((policy["max_size"], policy["downloads"]), (3 * MiB, inbox))
        small = os.path.join(root, "small.txt")
        small_digest = random_file(small, 1000)
        sent_small = await alice.json("send-file", "Bob", small)
        big = os.path.join(root, "big.bin")
        random_file(big, 4 * MiB)
        sent_big = await alice.json("send-file", "Bob", big)
        await reach("alice", sent_small["id"], "complete")
        self.assertEqual(sha256_of(os.path.join(inbox, "small.txt")), small_digest)
        await reach("bob", sent_big["id"], "offered")
        code, _out, err = await bob.run("accept", sent_big["id"])
        self.assertEqual(code, 1)
        self.assertIn("larger than the size you accept", err)
        cancelled = await alice.json("cancel", sent_big["id"])
        self.assertEqual(cancelled["state"], "cancelled")
        await reach("bob", sent_big["id"], "cancelled")
        self.assertFalse([n for n in os.listdir(inbox) if "partial" in n])

        # Several files in one command, one of them missing: the two others are taken by the
        # auto-accept limit, and --wait answers once both are complete.
        photos = [os.path.join(root, f"photo{i}.jpg") for i in (1, 2)]
        digests = [random_file(p, 200_000) for p in photos]
        missing = os.path.join(root, "missing.jpg")
        code, out, err = await alice.run("send-file", "Bob", photos[0], missing, photos[1], "-w")
        self.assertEqual(code, 1)
        self.assertEqual([line.split()[3] for line in out.splitlines()], ["complete"] * 2)
        self.assertIn(f"jarvis: {missing}: cannot read the file: No such file", err)
        for p, d in zip(photos, digests, strict=True):
            self.assertEqual(sha256_of(os.path.join(inbox, os.path.basename(p))), d)

        # Over the auto-accept limit, two files wait for bob, who takes both and waits for
        # them in one command: it answers once both arrived, with their ended views.
        scans = [os.path.join(root, f"scan{i}.pdf") for i in (1, 2)]
        scan_digests = [random_file(p, 1536 * 1024) for p in scans]
        offered_ids = [(await alice.json("send-file", "Bob", p))["id"] for p in scans]
        for ident in offered_ids:
            await reach("bob", ident, "offered")
        code, out, err = await bob.run("--json", "accept", "--all", "--wait")
        self.assertEqual(code, 0, err)
        arrived = json.loads(out)
        self.assertEqual(arrived["failed"], [])
        self.assertEqual([t["id"] for t in arrived["transfers"]], offered_ids)
        self.assertEqual([t["state"] for t in arrived["transfers"]], ["complete"] * 2)
        for p, d in zip(scans, scan_digests, strict=True):
            self.assertEqual(sha256_of(os.path.join(inbox, os.path.basename(p))), d)

        # A folder sent whole, where bob already has a folder of its name: its files (under
        # the auto-accept limit) land in one new folder, with the folder below it (its
        # escape sequence taken out of its name); the link in it is left out.
        album = os.path.join(root, "album")
        os.makedirs(os.path.join(album, "\x1b[31mred"))
        tree = {"one.jpg": 300_000, "\x1b[31mred/two.jpg": 200_000}
        tree_digests = {name: random_file(os.path.join(album, name), n) for name, n in tree.items()}
        os.symlink(path, os.path.join(album, "link.pdf"))
        os.makedirs(os.path.join(inbox, "album"))
        code, out, err = await alice.run("--json", "send-file", "Bob", album, "--wait")
        self.assertEqual(code, 0, err)
        sent_album = json.loads(out)
        self.assertEqual(sent_album["failed"], [])
        self.assertEqual(
            [(t["folder"], t["name"], t["state"]) for t in sent_album["transfers"]],
            [("album", "one.jpg", "complete"), ("album/\x1b[31mred", "two.jpg", "complete")],
        )
        landed = os.path.join(inbox, "album (1)")
        self.assertEqual(sha256_of(os.path.join(landed, "one.jpg")), tree_digests["one.jpg"])
        self.assertEqual(
            sha256_of(os.path.join(landed, "[31mred", "two.jpg")),
            tree_digests["\x1b[31mred/two.jpg"],
        )
        self.assertEqual(sorted(os.listdir(landed)), ["[31mred", "one.jpg"])
        self.assertEqual(os.listdir(os.path.join(inbox, "album")), [])
        listed = await bob.ok("files")
        self.assertIn("album/\\x1b[31mred/two.jpg", listed)  # shown, not run
        self.assertNotIn("\x1b", listed)


#: The folder whose ``sitecustomize`` turns a daemon into a lying sender.
LYING_HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hooks", "lying_sender")


class LyingSenderTests(TestCase):
    timeout = 120

    async def test_lying_sender_refused_and_partial_removed(self) -> None:
        """When a real sender daemon offers a file honestly (name, size, content hash) and then
        sends one chunk whose content does not match (one byte flipped, sealed with the real
        transfer keys: tests/hooks/lying_sender), then the receiver refuses it: its transfer
        fails saying the chunk does not match, the sender is told (its transfer ends too), the
        hidden partial file and its sidecar are removed, no file appears under the offered
        name, and the chat session survives (a message still arrives)."""
        from tests.daemons import REPO
        from tests.test_e2e_lifecycle import wait_until

        root = short_tempdir(self)
        alice, bob = Peer(self, root, "alice"), Peer(self, root, "bob")
        alice.process.env = {
            "PYTHONPATH": LYING_HOOK + os.pathsep + REPO,
            "JARVIS_TEST_LIE_CHUNK": "1",
        }
        await defer.gatherResults(
            [
                defer.ensureDeferred(alice.start(create=True)),
                defer.ensureDeferred(bob.start(create=True)),
            ]
        )
        await befriend(alice, bob)
        path = os.path.join(root, "lie.bin")
        random_file(path, 3 * CHUNK)  # the lie is in chunk 1 of 3
        inbox = os.path.join(root, "inbox")
        sent, accepted = await offer_and_accept(alice, bob, path, inbox)
        self.assertEqual(accepted["state"], "accepted")
        await wait_state(bob, sent["id"], {"complete", "failed", "cancelled"}, 60)
        self.assertEqual(state_of(bob, sent["id"]), "failed")
        reasons = {t["id"]: t["reason"] for t in (await bob.call("files.list"))["transfers"]}
        self.assertIn("does not match the offered file", reasons[sent["id"]])
        await wait_state(alice, sent["id"], {"failed", "cancelled"}, 30)
        await wait_until(lambda: os.listdir(inbox) == [], 30)
        self.assertFalse(os.path.exists(os.path.join(inbox, "lie.bin")))
        await alice.call("messages.send", contact=bob.uid, text="still here")
        await bob.recorder.wait(lambda: bob.received_bodies() == ["still here"], 30)


class FolderKillTests(TestCase):
    """A folder sent whole, its receiver SIGKILLed while the files arrive (real daemons)."""

    timeout = 240

    async def test_a_folder_arrives_whole_through_a_kill_of_the_receiver(self) -> None:
        """When bob, who takes alice's files by himself (an auto-accept limit), is SIGKILLed
        while a folder of 150 files arrives and is started again, then every file ends
        complete on both sides, each byte-identical under its own name, with no second copy
        (``name (1)``), no partial file left and no file failed or cancelled.  Seen by hand
        before: files completed just before the kill failed "the partial file is gone"
        though whole on disk, a file taken twice got a second copy, offers listed but not
        yet accepted waited for a hand answer, and an accept cut short left a partial file
        that refused the offer ("not a folder")."""
        alice, bob, root = await start_friends(self)
        inbox = os.path.join(root, "inbox")
        await bob.call("files.policy", downloads=inbox, contact=alice.uid, auto_accept=GiB)
        album = os.path.join(root, "album")
        os.mkdir(album)
        digests = {
            f"f{n:03d}.bin": random_file(os.path.join(album, f"f{n:03d}.bin"), 256 * 1024)
            for n in range(150)
        }
        sent = await alice.call("files.sendFolder", contact=bob.uid, path=album)
        ids = [t["id"] for t in sent["transfers"]]
        self.assertEqual(len(ids), 150)

        def completed(peer: Peer) -> int:
            return sum(1 for tid in ids if state_of(peer, tid) == "complete")

        await bob.recorder.wait(lambda: completed(bob) >= 15, 60)
        await bob.kill()
        self.assertLess(completed(alice), 150, "the folder ended before the kill")
        await bob.start(unlock=True)
        ended = {"complete", "failed", "cancelled"}
        await alice.recorder.wait(lambda: all(state_of(alice, tid) in ended for tid in ids), 120)
        self.assertEqual({state_of(alice, tid) for tid in ids}, {"complete"})
        theirs = {v["id"]: v["state"] for v in (await bob.call("files.list"))["transfers"]}
        self.assertEqual({theirs.get(tid) for tid in ids}, {"complete"})
        landed = os.path.join(inbox, "album")
        self.assertEqual(sorted(os.listdir(landed)), sorted(digests))  # no copy, no partial
        for name, digest in digests.items():
            self.assertEqual(sha256_of(os.path.join(landed, name)), digest, name)
