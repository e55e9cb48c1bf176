"""The terminal UI benchmark: how fast the real UI draws, echoes keys and opens a conversation.

The UI runs as ``python -m jarvis`` in a pseudo-terminal read by a ``pyte`` screen
(:mod:`tests.pty_terminal`), attached to a real ``twistd jarvis`` daemon that is already running
and unlocked.  Its data directory holds one conversation of 100,000 messages (10,000 with
``--quick``), written straight into the store while the daemon is stopped (see
:func:`fill_history`).  Figures:

- ``first_screen_ms``: from spawning the UI process to the main screen drawn (interpreter start,
  imports, attaching, loading contacts and counts), median of :func:`sizes` runs;
- ``first_output_ms``: from spawning to the first screen drawn (any screen), same runs;
- ``open_conversation_ms``: Alt+1 to the newest message of the big conversation on screen,
  median over the runs (each run is a fresh UI, so nothing is cached);
- ``keypress_echo_p50_ms`` / ``keypress_echo_p99_ms``: a key typed in the input line to the
  character on screen, with that conversation open;
- ``live_burst_ms``: :func:`measure_live_burst`, the same kind of burst through every real
  part: two more daemons (alice and bob, befriended over loopback TLS), the UI on alice's in a
  pty with bob's conversation open; bob's API sends 500 messages at once and the figure ends
  when the last one is on alice's screen (so it includes both daemons' messaging, alice's
  marking them read, and the UI);
- ``incoming_burst_ms``: :func:`measure_burst`, the UI's own cost of a burst of incoming
  messages (an outbox flushed after a reconnect): 500 ``message.received`` events in one reactor
  turn into an open conversation that already shows 1,000 messages, until the screen is drawn.
  This one runs in the benchmark's process: the real controller, model and urwid widgets on a
  ``task.Clock``, fed by the tests' fake daemon client, rendering a 160x45 canvas per draw
  (median of 5; smoke: 100 into 100, once); ``incoming_burst_crowd_ms`` is the same with
  1,000 more contacts in the conversation list (smoke: 100).

Before the first UI starts, the checkout's ``jarvis`` package is compiled to bytecode
(:func:`compile_bytecode`), as ``pip install`` compiles an installed Jarvis: otherwise, where
``PYTHONDONTWRITEBYTECODE`` is set, every UI start would also compile Jarvis's modules (about
40 ms here), which no installed user's start does.

Times are seen from the terminal's side: they end when the output that completes the screen
arrives from the pty (before ``pyte`` parses it, which costs milliseconds per screen).
``run()`` runs the reactor, so it can be called once per process only (the harness runs each
benchmark in its own process).  ``python -m bench.ui_bench [--quick|--smoke]`` runs it alone.
This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from bench.harness import percentile
from jarvis.store import queries

PASSWORD = "bench horse battery staple"
#: Messages written per store batch while filling the history, and batches in flight.
BURST = 1000
WINDOW = 4
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Sizes:
    """How big one run is."""

    history: int  # messages in the big conversation
    ui_runs: int  # fresh UI processes (first screen, open conversation)
    keypresses: int  # keys typed for the echo figure


def sizes(quick: bool) -> Sizes:
    """Return the sizes of a smoke, quick or full run."""
    from bench.harness import smoke_requested

    if smoke_requested():
        return Sizes(history=300, ui_runs=1, keypresses=20)
    if quick:
        return Sizes(history=10_000, ui_runs=3, keypresses=100)
    return Sizes(history=100_000, ui_runs=5, keypresses=200)


def fake_link(name: str) -> str:
    """The link code of a new random identity that never answers (an unused loopback port)."""
    from jarvis.crypto.identity import IdentityKey
    from jarvis.crypto.linkcode import encode_link, make_card

    return encode_link(make_card(IdentityKey.generate(), name, ["127.0.0.1:9"], int(time.time())))


async def fill_history(reactor: Any, data_dir: str, contact: str, count: int) -> float:
    """Write *count* messages (alternately in and out, all read or delivered) with *contact*
    straight into the stopped daemon's store; returns the messages written per second.

    This opens the store the way :class:`jarvis.core.node.Node` does when it unlocks, which is
    thousands of times faster than sending through the API.
    """
    from twisted.internet import defer, threads
    from twisted.internet.task import deferLater

    from jarvis.core.node import DATABASE, KEYFILE
    from jarvis.crypto import keyfile
    from jarvis.crypto.aead import RowCipher
    from jarvis.store import Store, StoredMessage

    with open(os.path.join(data_dir, KEYFILE), "rb") as f:
        content = f.read()
    keys = await threads.deferToThread(keyfile.unlock_keyfile, content, PASSWORD)
    cipher = RowCipher(keys.data_key)
    store = await Store.open(
        os.path.join(data_dir, DATABASE),
        reactor=reactor,
        cipher=cipher,
        index_key=cipher.derive_subkey(b"jarvis store blind index v1"),
    )
    started = time.perf_counter()
    base = time.time() - count - 60
    try:
        in_flight: deque[Any] = deque()
        for first in range(0, count, BURST):
            batch = []
            for i in range(first, min(count, first + BURST)):
                when = base + i
                body = f"m{i:06d} the quick brown fox jumps over the lazy dog"
                if i % 2:
                    message = StoredMessage(
                        secrets.token_hex(16), contact, "in", body, "read", when, read=when
                    )
                    batch.append(store.run(queries.add_incoming, message, write=True))
                else:
                    message = StoredMessage(
                        secrets.token_hex(16),
                        contact,
                        "out",
                        body,
                        "delivered",
                        when,
                        sent=when,
                        delivered=when,
                    )
                    batch.append(store.run(queries.add_outgoing, message, write=True))
            in_flight.append(defer.gatherResults(batch, consumeErrors=True))
            if len(in_flight) >= WINDOW:
                await in_flight.popleft()
            else:
                await deferLater(reactor, 0, lambda: None)
        while in_flight:
            await in_flight.popleft()
        await store.run(queries.set_marker, contact, None, write=True)
    finally:
        await store.close()
    return count / (time.perf_counter() - started)


def measure_burst(shown: int, burst: int, repeats: int, contacts: int = 0) -> float:
    """Seconds for *burst* ``message.received`` events in one turn to reach a drawn canvas.

    The conversation is open and shows *shown* messages first; *contacts* more contacts fill
    the conversation list; median of *repeats* bursts.
    """
    from tests.ui_fakes import NOW, UID_ALICE, make_controller, make_populated_client, press

    client = make_populated_client()
    for n in range(contacts):
        client.add_contact(f"{n:052d}", f"friend {n}", last_activity=NOW - 5000 - n)
    controller, _, clock, _ = make_controller(client)

    class Canvas:
        """A main loop whose draw renders the whole window, as urwid's draw_screen does."""

        screen = None
        draws = 0

        def draw_screen(self) -> None:
            controller.window.render((160, 45), focus=True)
            self.draws += 1

    canvas = Canvas()
    controller.attach_main_loop(canvas)
    press(controller, "meta 1")
    created = NOW + 10

    def messages(count: int) -> list[dict[str, Any]]:
        nonlocal created
        batch = []
        for n in range(count):
            created += 1
            body = f"burst {n} the quick brown fox jumps over the lazy dog"
            batch.append(client.add_message(UID_ALICE, body, created=created))
        return batch

    for message in messages(shown):
        client.emit("message.received", {"message": message})
    clock.advance(0)
    times = []
    for _ in range(repeats):
        batch = messages(burst)
        clock.advance(1.0)  # a quiet second before each burst, as between two reconnects
        drawn = canvas.draws
        started = time.perf_counter()
        for message in batch:
            client.emit("message.received", {"message": message})
        clock.advance(0)
        times.append(time.perf_counter() - started)
        if canvas.draws != drawn + 1:
            raise RuntimeError(f"the burst was drawn {canvas.draws - drawn} times, not once")
    return statistics.median(times)


async def measure_live_burst(reactor: Any, burst: int) -> float:
    """Seconds from bob's first ``messages.send`` of *burst* to the last on alice's UI."""
    from twisted.internet import defer

    from bench.messaging_bench import friends
    from tests.daemons import ui_env
    from tests.pty_terminal import PtyTerminal

    async with friends(reactor) as (root, alice, bob):
        terminal = PtyTerminal(
            [sys.executable, "-m", "jarvis"], env=ui_env(alice.data_dir, root), path=REPOSITORY_ROOT
        )
        terminal.start()
        try:
            await terminal.wait_for(" alice │ 1/1 online", 30)
            terminal.press("meta 1")
            await terminal.wait_for("No messages with bob yet", 30)
            started = time.perf_counter()
            sends = [
                bob.call("messages.send", contact=alice.uid, text=f"live {n:04d} from bob")
                for n in range(burst)
            ]
            await terminal.wait_for(f"live {burst - 1:04d} from bob", 120)
            shown = terminal.last_output_at - started
            await defer.gatherResults(sends)
            numbers = [int(m) for m in re.findall(r"live (\d{4}) from bob", terminal.text())]
            if numbers != sorted(numbers) or numbers[-1] != burst - 1:
                raise RuntimeError(f"the burst is shown out of order: {numbers}")
        finally:
            await terminal.stop()
    return shown


def compile_bytecode() -> None:
    """Compile the checkout's ``jarvis`` package to ``__pycache__`` (what pip does on install).

    ``compileall`` writes the files even where ``PYTHONDONTWRITEBYTECODE`` is set; the UI
    child reads them like any installed package's.
    """
    import compileall

    if not compileall.compile_dir(os.path.join(REPOSITORY_ROOT, "jarvis"), quiet=1):
        raise RuntimeError("compiling the jarvis package failed")


async def connect(reactor: Any, daemon: Any) -> Any:
    """A connected API client of *daemon* (a :class:`tests.daemons.DaemonProcess`)."""
    from jarvis.ipc.client import IpcClient

    return await IpcClient.connect(reactor, daemon.endpoint)


async def wait_unlocked(reactor: Any, daemon: Any, timeout: float = 30.0) -> None:
    """Wait until the daemon (started with ``--password-file``) has unlocked."""
    from twisted.internet.task import deferLater

    client = await connect(reactor, daemon)
    try:
        deadline = time.monotonic() + timeout
        while (await client.call("daemon.status"))["locked"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not unlock from its password file")
            await deferLater(reactor, 0.05, lambda: None)
    finally:
        await client.close()


async def measure_ui(
    reactor: Any, data_dir: str, root: str, newest: str, keypresses: int
) -> dict[str, Any]:
    """Run one fresh UI: first output, main screen, open the conversation, type *keypresses*."""
    from tests.daemons import ui_env
    from tests.pty_terminal import PtyTerminal

    terminal = PtyTerminal(
        [sys.executable, "-m", "jarvis"], env=ui_env(data_dir, root), path=REPOSITORY_ROOT
    )
    started = time.perf_counter()
    terminal.start()
    try:
        await terminal.wait_for(lambda text: bool(text.strip()), 30)
        first_output = terminal.last_output_at - started
        await terminal.wait_for(" alice │ 0/1 online", 30)
        first_screen = terminal.last_output_at - started

        started = time.perf_counter()
        terminal.press("meta 1")
        await terminal.wait_for(newest, 30)
        opened = terminal.last_output_at - started

        echoes: list[float] = []
        typed = ""
        for n in range(keypresses):
            if len(typed) >= 50:
                terminal.press("ctrl u")
                await terminal.wait_for(lambda text: terminal.rows()[-1] == ">", 10)
                typed = ""
            key = "abcdefghij"[n % 10]
            typed += key
            expected = "> " + typed
            started = time.perf_counter()
            terminal.type(key)
            await terminal.wait_for(
                lambda text, expected=expected: terminal.rows()[-1] == expected, 10
            )
            # when the echo arrived, before pyte parsed it (pyte takes ms per screen)
            echoes.append(terminal.last_output_at - started)
    finally:
        await terminal.stop()
    return {
        "first_output": first_output,
        "first_screen": first_screen,
        "open": opened,
        "echoes": echoes,
    }


async def measure(reactor: Any, size: Sizes) -> dict[str, Any]:
    """Set up the daemon and history, run the UIs, return the harness's figures."""
    root = tempfile.mkdtemp(prefix="jvb", dir="/tmp")
    os.chmod(root, 0o700)
    data_dir = os.path.join(root, "alice")
    sock_dir = os.path.join(root, "s")
    os.makedirs(sock_dir, mode=0o700)
    password_file = os.path.join(root, "pw")
    with open(password_file, "w", encoding="utf-8") as f:
        f.write(PASSWORD + "\n")
    from bench.harness import smoke_requested
    from tests.daemons import DaemonProcess

    smoke = smoke_requested()
    shown, arriving = (100, 100) if smoke else (1000, 500)
    burst = measure_burst(shown, arriving, 1 if smoke else 5)
    crowd = 100 if smoke else 1000
    crowded = measure_burst(shown, arriving, 1 if smoke else 5, contacts=crowd)
    daemon = DaemonProcess(data_dir, sock_dir)
    try:
        await daemon.start()
        client = await connect(reactor, daemon)
        try:
            await client.call("identity.create", {"name": "alice", "password": PASSWORD})
            bob = await client.call("contacts.add", {"link": fake_link("bob")})
        finally:
            await client.close()
        await daemon.stop()
        fill_rate = await fill_history(reactor, data_dir, bob["uid"], size.history)

        compile_bytecode()
        daemon.extra = ["--password-file", password_file]
        await daemon.start()
        await wait_unlocked(reactor, daemon)
        newest = f"m{size.history - 1:06d}"
        runs = []
        for index in range(size.ui_runs):
            last = index == size.ui_runs - 1
            runs.append(
                await measure_ui(reactor, data_dir, root, newest, size.keypresses if last else 0)
            )
    finally:
        await daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    live = await measure_live_burst(reactor, arriving)

    echoes = [e * 1000.0 for run in runs for e in run["echoes"]]
    count = f"{size.history:,}"
    return {
        "figures": {
            "first_screen_ms": {
                "value": statistics.median(r["first_screen"] for r in runs) * 1000.0,
                "unit": "ms (spawn to main screen)",
                "goal": 300.0,
            },
            "first_output_ms": {
                "value": statistics.median(r["first_output"] for r in runs) * 1000.0,
                "unit": "ms (spawn to first drawn screen)",
            },
            "open_conversation_ms": {
                "value": statistics.median(r["open"] for r in runs) * 1000.0,
                "unit": f"ms (Alt+1 to newest of {count} on screen)",
                "goal": 100.0,
            },
            "keypress_echo_p50_ms": {
                "value": statistics.median(echoes),
                "unit": f"ms ({count} in history)",
                "goal": 16.0,
            },
            "keypress_echo_p99_ms": {
                "value": percentile(echoes, 0.99),
                "unit": f"ms ({count} in history)",
                "goal": 16.0,
            },
            "live_burst_ms": {
                "value": live * 1000.0,
                "unit": f"ms (bob sends {arriving:,} at once to the last on alice's UI)",
            },
            "incoming_burst_ms": {
                "value": burst * 1000.0,
                "unit": f"ms ({arriving:,} received into {shown:,} shown, drawn; in-process)",
            },
            "incoming_burst_crowd_ms": {
                "value": crowded * 1000.0,
                "unit": f"ms (the same with {crowd:,} more contacts listed)",
            },
            "history_fill_msgs_per_s": {
                "value": fill_rate,
                "unit": "messages/s (setup, straight into the store)",
            },
        }
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the UI benchmark on the asyncio reactor and return its figures.

    :param quick: 10,000 messages and 3 UI runs instead of 100,000 and 5.
    :returns: ``{"figures": {name: {"value": float, "unit": str, "goal"?: float}}}``.
    """
    from bench.harness import run_on_reactor

    return dict(run_on_reactor(lambda reactor: measure(reactor, sizes(quick))))


if __name__ == "__main__":
    from bench.harness import run_standalone

    sys.exit(run_standalone("ui", run, sys.argv[1:]))
