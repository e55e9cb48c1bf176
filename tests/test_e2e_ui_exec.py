"""End to end: ``/exec`` in the real terminal UI (a pty read by ``pyte``) on real daemons.

The UI runs as ``python -m jarvis`` (:func:`tests.test_e2e_ui.start_ui`) against real ``twistd
jarvis`` daemons (:mod:`tests.peers`); the programs run by the daemon's ``exec.run``, and the
tests check the daemon's side through its local API (``exec.list``, history) and the other
peer's daemon.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from jarvis.app.commands import pid_alive
from tests.peers import befriend
from tests.test_e2e_ui import conversation_rows, start_peers, start_ui


async def active_runs(peer: Any) -> list[dict[str, Any]]:
    """The daemon's runs not ended (queued, running, stopping)."""
    listing = await peer.call("exec.list")
    return list(listing["runs"])


async def api_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Ask the daemon every 50 ms until *check()* is true (its state comes by polling only)."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while not await check():
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]


class ExecUiTests(TestCase):
    timeout = 90

    async def test_output_shows_live(self) -> None:
        """When ``/exec printf 'a\\nb\\n'`` is typed with no conversation open, then the lines
        a and b show in the conversation area and the end line gives exit 0; a program that
        prints and keeps running shows its line while it still runs."""
        root, (alice,) = await start_peers(self, "alice")
        ui = start_ui(self, alice.data_dir, root)
        await ui.wait_for("No conversation open")
        ui.type("/exec printf 'a\\nb\\n'")
        ui.press("enter")
        await ui.wait_for(lambda t: "exec #" in t and ": exit 0" in t)
        rows = conversation_rows(ui)
        start = next(i for i, row in enumerate(rows) if "$ printf 'a\\nb\\n'" in row)
        self.assertEqual([row[6:] for row in rows[start + 1 : start + 3]], ["  a", "  b"], rows)

        ui.type("/exec sh -c 'echo first line; exec sleep 100'")
        ui.press("enter")
        await ui.wait_for("  first line")
        (run,) = await active_runs(alice)
        self.assertEqual(run["state"], "running")  # shown before the program ended
        self.assertEqual(run["argv"], ["sh", "-c", "echo first line; exec sleep 100"])

    async def test_ctrl_c_cancels_the_running_command(self) -> None:
        """When ``/exec sleep 100`` runs and Ctrl+C is pressed, then the UI says it was
        cancelled (no quit question), the daemon's exec.list has no run left and the process
        is gone."""
        root, (alice,) = await start_peers(self, "alice")
        ui = start_ui(self, alice.data_dir, root)
        await ui.wait_for("No conversation open")
        ui.type("/exec sleep 100")
        ui.press("enter")
        await ui.wait_for("$ sleep 100")
        runs: list[dict[str, Any]] = []

        async def running() -> bool:
            runs[:] = await active_runs(alice)
            return bool(runs) and runs[0]["state"] == "running"

        await api_until(running, what="the run to start")
        pid = runs[0]["pid"]
        self.assertTrue(pid_alive(pid))
        ui.press("ctrl c")
        await ui.wait_for(lambda t: "exec #" in t and ": cancelled" in t)
        self.assertFalse(ui.contains("Close Jarvis?"), ui.text())

        async def gone() -> bool:
            return not await active_runs(alice) and not pid_alive(pid)

        # the daemon answers the cancel at once and terminates the group behind it
        await api_until(gone, what="the run and its process to be gone")
        self.assertFalse(ui.ended)

    async def test_dash_o_sends_the_output(self) -> None:
        """When ``/exec -o echo hi`` is typed in bob's open conversation, then "hi" is sent
        to bob: it shows as alice's line, alice's history has it as sent, bob receives it."""
        root, (alice, bob) = await start_peers(self, "alice", "bob")
        await befriend(alice, bob)
        ui = start_ui(self, alice.data_dir, root)
        await ui.wait_for("1/1 online")
        ui.press("meta 1")
        await ui.wait_for("No messages with bob yet.")
        ui.type("/exec -o echo hi")
        ui.press("enter")
        await ui.wait_for("alice: hi")
        await bob.recorder.wait(lambda: "hi" in bob.received_bodies())
        history = await alice.all_history(bob.uid)
        self.assertEqual([(m["direction"], m["body"]) for m in history], [("out", "hi")])
        self.assertTrue(ui.contains("  hi"), ui.text())  # the local line too
