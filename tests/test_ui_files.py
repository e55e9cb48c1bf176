"""Tests for file transfer in the terminal UI: /file, /accept, /decline, /cancel, the offer
line, the progress bar on the status line and the end line (headless, fake daemon)."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from jarvis.ui import completion
from jarvis.ui.model import (
    FINAL_TRANSFER_STATES,
    FolderFiles,
    InputError,
    SlashCommand,
    file_name,
    group_key,
    parse_input,
    progress_bar,
)
from tests.daemons import short_tempdir
from tests.ui_fakes import (
    NOW,
    UID_ALICE,
    UID_BOB,
    UID_CAROL,
    FakeDaemonClient,
    make_controller,
    make_populated_client,
    press,
    remote_error,
    screen_text,
)

TID = "0123456789abcdef" * 2
TID2 = "fedcba9876543210" * 2
GID = "ab" * 16
KEY = group_key(GID)


def started() -> tuple[Any, FakeDaemonClient, Any]:
    controller, client, clock, _connector = make_controller(make_populated_client())
    assert client is not None
    return controller, client, clock


def transfer(**fields: Any) -> dict[str, Any]:
    view = {
        "id": TID,
        "contact": UID_ALICE,
        "contact_name": "alice",
        "direction": "in",
        "name": "holiday.jpg",
        "folder": None,
        "folder_id": None,
        "size": 3 * 1024 * 1024,
        "media_type": "image/jpeg",
        "state": "offered",
        "reason": "",
        "bytes": 0,
        "rate": 0.0,
        "eta": None,
        "path": None,
        "directory": None,
        "created": 1_700_000_100.0,
        "group": None,
    }
    view.update(fields)
    return view


class FakeViewTests(SynchronousTestCase):
    def test_the_fake_transfer_view_has_the_daemons_fields(self) -> None:
        """When the UI's tests build a transfer view, then it has exactly the fields the
        daemon's ``Transfers.view`` gives (a file's view lacking ``folder`` hid that the UI
        took every file offered with /file for a folder: "offered the folder None")."""
        from tests.test_transfers import make_transfers, send_a_file

        transfers, _sessions, _events, _store = make_transfers(self)  # type: ignore[arg-type]
        real = send_a_file(self, transfers)  # type: ignore[arg-type]
        self.assertEqual(sorted(transfer()), sorted(real))


class ParseTests(SynchronousTestCase):
    def test_file_commands(self) -> None:
        """When /file, /accept, /decline and /cancel are typed, then they parse to commands
        with an absolute path or folder; /accept and /decline without an id (the newest offer
        here), /accept with only a folder; a missing path or id elsewhere is a usage error."""
        self.assertEqual(parse_input("/file /tmp/a b.txt"), SlashCommand("file", ("/tmp/a b.txt",)))
        self.assertEqual(parse_input("/accept 0123abcd"), SlashCommand("accept", ("0123abcd",)))
        self.assertEqual(
            parse_input("/accept 0123abcd /srv/in"), SlashCommand("accept", ("0123abcd", "/srv/in"))
        )
        self.assertEqual(parse_input("/cancel 0123abcd"), SlashCommand("cancel", ("0123abcd",)))
        self.assertEqual(parse_input("/accept"), SlashCommand("accept"))
        self.assertEqual(parse_input("/decline"), SlashCommand("decline"))
        self.assertEqual(parse_input("/accept /srv/in"), SlashCommand("accept", ("", "/srv/in")))
        home = os.path.expanduser("~")
        self.assertEqual(
            parse_input("/accept ~/in"), SlashCommand("accept", ("", os.path.join(home, "in")))
        )
        for line in ("/file", "/cancel", "/fetch", "/decline a b"):
            self.assertIsInstance(parse_input(line), InputError, line)

    def test_progress_bar(self) -> None:
        """When a transfer is 45 % done, then the bar is 45 % filled and says rate and ETA,
        rounded up (0.6 s left is "1 s left", not "0 s")."""
        bar = progress_bar(45, 100, 10.0, 5.5, width=20)
        self.assertTrue(bar.startswith("[#########...........]  45% 45 B of 100 B"), bar)
        self.assertIn("10 B/s", bar)
        self.assertTrue(bar.endswith(", 6 s left"), bar)
        self.assertTrue(progress_bar(90, 100, 10.0, 0.6).endswith(", 1 s left"))


class TransferUiTests(SynchronousTestCase):
    def test_file_offers_to_the_open_conversation(self) -> None:
        """When /file PATH is typed in alice's conversation, then files.send goes to alice with
        the absolute path, and the conversation says it was offered and how to cancel."""
        controller, client, clock = started()
        client.m_files_send = lambda params: transfer(direction="out", name="report.pdf")
        press(controller, "meta 1")
        press(controller, "/file /tmp/report.pdf", "enter")
        clock.advance(0)
        self.assertIn(
            ("files.send", {"contact": UID_ALICE, "path": "/tmp/report.pdf"}), client.calls
        )
        text = screen_text(controller.window, (120, 24))
        self.assertIn("offered report.pdf (3.0 MiB); /cancel 01234567", text)
        # accepted and streaming, its /cancel stands; once it ended, the end line alone says so
        sent = transfer(direction="out", name="report.pdf", state="streaming")
        client.emit("transfer.changed", {"transfer": sent})
        self.assertIn("/cancel 01234567", "\n".join(lines(controller, UID_ALICE)))
        client.emit("transfer.changed", {"transfer": {**sent, "state": "complete"}})
        said = [b for b in lines(controller, UID_ALICE) if "report.pdf" in b]
        self.assertEqual(said, ["file report.pdf (3.0 MiB): complete"])

    def test_a_folder_is_offered_whole(self) -> None:
        """When /file names a folder, then files.sendFolder offers it to alice, and the
        conversation says the folder was offered, how many files and bytes, how to cancel,
        how many files could not be read and how many entries were left out (links...); an
        offer of a file in it shows its folder."""
        controller, client, clock = started()
        album = os.path.join(short_tempdir(self), "album")
        os.mkdir(album)
        views = [
            transfer(direction="out", name="a.jpg", folder="album", size=1024),
            transfer(direction="out", name="b.jpg", folder="album/2024", size=2048),
        ]
        client.m_files_sendFolder = lambda params: {
            "folder": "album",
            "transfers": views,
            "failed": [{"path": album + "/c.jpg", "error": "cannot read the file: gone"}],
            "left_out": 2,
            "left_out_first": "album/link.jpg",
        }
        press(controller, "meta 1")
        press(controller, f"/file {album}", "enter")
        clock.advance(0)
        self.assertIn(("files.sendFolder", {"contact": UID_ALICE, "path": album}), client.calls)
        self.assertNotIn("files.send", [method for method, _params in client.calls])
        self.assertIn(
            "offered the folder album: 2 files (3.0 KiB); /cancel all stops the transfers "
            f"here; 1 not offered ({album}/c.jpg: cannot read the file: gone); 2 left out, "
            "not regular files (links, devices, pipes): album/link.jpg and more",
            lines(controller, UID_ALICE),
        )
        self.assertEqual(file_name(views[1]), "album/2024/b.jpg")

    def test_the_prompt_of_a_folder_answers_all_its_files(self) -> None:
        """When the files of a folder sent whole arrive in the open conversation, then the
        accept prompt asks about the folder, and accepting it accepts every file of that
        folder waiting (not another offer waiting there), into the folder typed."""
        controller, client, clock = started()
        press(controller, "meta 1")
        folder_id = "66" * 16
        files = [
            transfer(id=f"{n:032x}", name=f"{n}.jpg", folder="album", folder_id=folder_id)
            for n in (1, 2)
        ]
        other = transfer(id="ab" * 16, name="other.pdf", created=1_700_000_000.0)
        client.m_files_accept = lambda params: transfer(id=params["id"], state="accepted")
        for t in (*files, other):
            client.emit("transfer.offered", {"transfer": t})
        text = screen_text(controller.window, (120, 30))
        self.assertIn("Folder offered", text)
        self.assertIn("alice offers the folder album, file by file (album/1.jpg, 3.0 MiB,", text)
        press(controller, "tab", "tab", "/srv/in", "tab", "enter")
        clock.advance(0)
        accepted = [p for method, p in client.calls if method == "files.accept"]
        self.assertEqual(accepted, [{"id": f"{n:032x}", "directory": "/srv/in"} for n in (1, 2)])

    def test_an_offer_to_an_offline_contact_says_it_went_to_their_mailbox(self) -> None:
        """When /file is typed for a contact who is offline and the daemon put the offer in
        their mailbox, then the conversation's line says so after the /cancel hint."""
        controller, client, clock = started()
        client.m_files_send = lambda params: transfer(
            direction="out",
            name="report.pdf",
            reason="offline: the offer goes through their mailbox",
        )
        press(controller, "meta 1")
        press(controller, "/file /tmp/report.pdf", "enter")
        clock.advance(0)
        text = screen_text(controller.window, (160, 24))
        self.assertIn(
            "offered report.pdf (3.0 MiB); /cancel 01234567 stops it (offline: the offer goes "
            "through their mailbox)",
            text,
        )

    def test_an_accept_that_went_to_the_mailbox_says_so(self) -> None:
        """When an offer is accepted while its sender is offline (the daemon put the accept in
        their mailbox), then the status line says it is accepted and why the file waits."""
        controller, client, clock = started()
        reason = (
            "offline: the accept goes through their mailbox; the file comes when both are online"
        )
        client.m_files_accept = lambda params: transfer(state="accepted", reason=reason)
        press(controller, "meta 1")
        press(controller, "/accept 01234567", "enter")
        clock.advance(0)
        self.assertEqual(controller.model.status.text, f"file holiday.jpg: accepted ({reason})")

    def test_file_without_a_conversation_says_so(self) -> None:
        """When /file is typed with no conversation open, then nothing is sent and the status
        line says to open one."""
        controller, client, _clock = started()
        press(controller, "/file /tmp/x", "enter")
        self.assertFalse([c for c in client.calls if c[0] == "files.send"])
        self.assertIn("open a conversation first", controller.model.status.text)

    def test_a_folder_shows_as_one_line(self) -> None:
        """When alice offers the three files of a folder, then her conversation shows one
        line for the folder (how many files, their size, /accept all), not a line per file;
        as they are accepted and move it counts them and draws one bar of the folder's bytes;
        once all arrived it says where the folder was saved, and so does the status line,
        whose bar said how each file ended before; a UI attached later shows the same one
        line from the daemon's list."""
        controller, client, _clock = started()
        press(controller, "meta 1")
        mib = 1024 * 1024
        files = [
            transfer(
                id=f"{n:032x}",
                name=name,
                folder=folder,
                folder_id="66" * 16,
                size=mib,
                created=1_700_000_100.0 + n,
            )
            for n, (folder, name) in enumerate(
                [("album", "a.jpg"), ("album/2024", "b.jpg"), ("album/2024", "c.jpg")], 1
            )
        ]
        for t in files:
            client.emit("transfer.offered", {"transfer": t})
        press(controller, "esc")  # the folder's accept prompt: later
        text = screen_text(controller.window, (160, 30))
        self.assertIn(
            "folder album from alice: 3 files (3.0 MiB), 3 offered: /accept all [DIR] or "
            "/decline all",
            text,
        )
        self.assertNotIn("a.jpg", text)
        for t in files:
            client.emit("transfer.changed", {"transfer": {**t, "state": "accepted"}})
        client.emit(
            "transfer.progress",
            {"id": files[0]["id"], "bytes": mib // 2, "size": mib, "contact": UID_ALICE},
        )
        text = screen_text(controller.window, (160, 30))
        self.assertIn("folder album from alice: 3 files (3.0 MiB), 2 accepted, 1 streaming", text)
        self.assertIn("17% 512 KiB of 3.0 MiB", text)
        paths = ["/in/album (1)/a.jpg", "/in/album (1)/2024/b.jpg", "/in/album (1)/2024/c.jpg"]
        self.assertTrue(controller.model.status.text.startswith("file album/a.jpg"))
        ends = []
        for t, path in zip(files, paths, strict=True):
            client.emit("transfer.changed", {"transfer": {**t, "state": "complete", "path": path}})
            ends.append(controller.model.status.text)
        text = screen_text(controller.window, (200, 30))
        line = (
            "folder album from alice: 3 files (3.0 MiB), 3 complete; saved in /in/album (1); "
            "open the folder: xdg-open '/in/album (1)'"
        )
        self.assertIn(line, text)
        # the status line's bar gave way to how each file ended, then to the folder's line
        self.assertEqual(ends[0], "file album/a.jpg (1.0 MiB): complete, saved as " + paths[0])
        self.assertEqual(ends[2], line)
        controller.model.clear_status()
        text = screen_text(controller.window, (200, 30))
        self.assertEqual(text.count("folder album"), 1)  # one line in the conversation

        later, client2, _clock = started()
        client2.m_files_list = lambda params: {
            "transfers": [
                {**t, "state": "complete", "path": p} for t, p in zip(files, paths, strict=True)
            ]
        }
        later.load_unlocked()
        press(later, "meta 1")
        self.assertIn("3 complete; saved in /in/album (1)", screen_text(later.window, (200, 30)))

    def test_offer_progress_and_end_are_shown(self) -> None:
        """When alice offers a file with a hostile name, then her conversation shows the offer
        with the escape made visible and the /accept hint; /accept calls files.accept; progress
        events fill the status line's bar; completion shows where the file was saved, in the
        conversation and on the status line, which also says it of a file that arrives while
        another conversation is open."""
        controller, client, clock = started()
        client.m_files_accept = lambda params: transfer(state="accepted")
        press(controller, "meta 1")
        hostile = transfer(name="evil\x1b]52;c;QUFB\x07.jpg")
        client.emit("transfer.offered", {"transfer": hostile})
        client.emit("transfer.changed", {"transfer": hostile})
        self.assertEqual(controller.window.dialog.kind, "file_offer")
        press(controller, "esc")  # the accept prompt: decide later, with /accept
        self.assertIsNone(controller.window.dialog)
        text = screen_text(controller.window, (140, 24))
        self.assertIn("offers evil\\x1b]52;c;QUFB\\x07.jpg (3.0 MiB): /accept 01234567", text)
        self.assertNotIn("\x1b", text)
        press(controller, "/accept 01234567 /srv/in", "enter")
        clock.advance(0)
        self.assertIn(("files.accept", {"id": "01234567", "directory": "/srv/in"}), client.calls)
        progress = {"id": TID, "bytes": 1024 * 1024, "size": 3 * 1024 * 1024, "rate": 2.0**20}
        client.emit("transfer.progress", {**progress, "eta": 2.0, "contact": UID_ALICE})
        self.assertIn("33%", controller.model.status.text)
        self.assertIn("[######", controller.model.status.text)
        done = transfer(state="complete", path="/srv/in/evil.jpg", directory="/srv/in")
        client.emit("transfer.changed", {"transfer": done})
        text = screen_text(controller.window, (140, 24))
        self.assertIn("complete, saved as /srv/in/evil.jpg (folder: /srv/in)", text)
        self.assertEqual(  # the bar gave way to how it ended
            controller.model.status.text,
            "file holiday.jpg (3.0 MiB): complete, saved as /srv/in/evil.jpg",
        )
        press(controller, "meta 2")  # in another conversation, the next file that arrives
        controller.model.clear_status()
        other = transfer(id=TID2, name="b.txt", size=10, state="complete", path="/srv/in/b.txt")
        client.emit("transfer.changed", {"transfer": other})
        self.assertEqual(
            controller.model.status.text, "file b.txt (10 B): complete, saved as /srv/in/b.txt"
        )


class ConversationProgressTests(SynchronousTestCase):
    def test_progress_bar_in_the_conversation_and_open_folder_hint(self) -> None:
        """When progress events of an accepted transfer arrive, then the conversation shows one
        line for the transfer whose bar moves in place (not one line per event); when it
        completes, that same line says so, where the file was saved and the command that opens
        the folder (shell-quoted): still one line for the transfer."""
        controller, client, _clock = started()
        press(controller, "meta 1")
        client.emit("transfer.changed", {"transfer": transfer(state="accepted")})
        size = 4 * 1024 * 1024
        for done in (1, 2, 3):
            event = {"id": TID, "bytes": done * 1024 * 1024, "size": size, "rate": 2.0**20}
            client.emit("transfer.progress", {**event, "eta": 1.0, "contact": UID_ALICE})
        text = screen_text(controller.window, (140, 30))
        self.assertIn("file holiday.jpg [###############.....]  75% 3.0 MiB of 4.0 MiB", text)
        self.assertNotIn("25%", text)
        self.assertNotIn(" 50%", text)
        # one line in the conversation, one on the status line
        self.assertEqual(text.count("file holiday.jpg ["), 2)
        self.assertEqual(controller.model.status.text.count("75%"), 1)
        done = transfer(state="complete", path="/srv/my in/holiday.jpg", directory="/srv/my in")
        client.emit("transfer.changed", {"transfer": done})
        text = screen_text(controller.window, (220, 30))
        self.assertIn(
            "file holiday.jpg (3.0 MiB): complete, saved as /srv/my in/holiday.jpg (folder: "
            "/srv/my in); open the folder: xdg-open '/srv/my in'",
            text,
        )
        self.assertEqual(len([b for b in lines(controller, UID_ALICE) if "holiday" in b]), 1)

    def test_an_answered_offer_stops_asking_and_an_ended_one_is_one_line(self) -> None:
        """When an offer is accepted (here, elsewhere or by the daemon itself), then its line no
        longer says /accept or /decline but that it was accepted; when the file has arrived,
        the transfer is one line (how it ended, where it was saved), with or without a bar
        before, and the list read again after a reconnect adds no second one."""
        controller, client, _clock = started()
        press(controller, "meta 1")
        client.emit("transfer.offered", {"transfer": transfer()})
        press(controller, "esc")
        self.assertIn("/accept 01234567", lines(controller, UID_ALICE)[-1])
        client.emit("transfer.changed", {"transfer": transfer(state="accepted")})
        said = [b for b in lines(controller, UID_ALICE) if "holiday" in b]
        self.assertEqual(said, ["alice offered holiday.jpg (3.0 MiB): accepted"])
        done = transfer(state="complete", path="/in/holiday.jpg", directory="/in")
        client.emit("transfer.changed", {"transfer": done})
        said = [b for b in lines(controller, UID_ALICE) if "holiday" in b]
        self.assertEqual(len(said), 1, said)
        self.assertTrue(said[0].startswith("file holiday.jpg (3.0 MiB): complete, saved as"))
        # the same with a bar: the progress line says how it ended, and stays the only one
        second = transfer(id=TID2, name="film.mkv")
        client.emit("transfer.offered", {"transfer": second})
        press(controller, "esc")
        client.emit("transfer.changed", {"transfer": {**second, "state": "accepted"}})
        event = {"id": TID2, "bytes": 1024, "size": 3 * 1024 * 1024, "rate": 1024.0, "eta": 9.0}
        client.emit("transfer.progress", {**event, "contact": UID_ALICE})
        film = {**second, "state": "complete", "path": "/in/film.mkv", "directory": "/in"}
        client.emit("transfer.changed", {"transfer": film})
        client.transfers = [film, done]
        controller.model.load_transfers({"transfers": client.transfers})
        said = [b for b in lines(controller, UID_ALICE) if "film" in b]
        self.assertEqual(len(said), 1, said)
        self.assertTrue(said[0].startswith("file film.mkv (3.0 MiB): complete, saved as"))
        self.assertEqual(len([b for b in lines(controller, UID_ALICE) if "holiday" in b]), 1)

    def test_waiting_reason_on_the_progress_line(self) -> None:
        """When a transfer's stream ends and it waits with a reason (the receiving disk is
        full), then its progress line says it waits and why, in place; the next progress
        event puts the bar back on the same line."""
        controller, client, _clock = started()
        press(controller, "meta 1")
        client.emit("transfer.changed", {"transfer": transfer(state="accepted")})
        size = 4 * 1024 * 1024
        event = {"id": TID, "bytes": 1024 * 1024, "size": size, "rate": 2.0**20, "eta": 3.0}
        client.emit("transfer.progress", {**event, "contact": UID_ALICE})
        full = "disk full: free space where the file is received; it resumes by itself then"
        client.emit("transfer.changed", {"transfer": transfer(state="accepted", reason=full)})
        text = screen_text(controller.window, (160, 30))
        self.assertIn(f"file holiday.jpg: waiting ({full})", text)
        self.assertNotIn("file holiday.jpg [", text)  # nor on the status line
        self.assertIsNone(controller.model.status)
        client.emit("transfer.progress", {**event, "bytes": 2 * 1024 * 1024, "contact": UID_ALICE})
        text = screen_text(controller.window, (160, 30))
        self.assertNotIn("waiting", text)
        self.assertIn("file holiday.jpg [##########..........]  50%", text)


class TransfersAtStartTests(SynchronousTestCase):
    """A UI started after offers came, or while files stream (transfers live in the daemon)."""

    def client_with_transfers(self) -> FakeDaemonClient:
        client = make_populated_client()
        client.transfers = [  # newest first, as the daemon lists them
            transfer(
                id=TID2,
                contact=UID_BOB,
                contact_name="bob",
                name="film.mkv",
                state="streaming",
                size=8 * 1024 * 1024,
                bytes=2 * 1024 * 1024,
            ),
            transfer(created=NOW - 20),  # alice's offer, waiting for us
            transfer(
                id="11" * 16,
                direction="out",
                name="notes.txt",
                size=2048,
                reason="offline: the offer goes through their mailbox",
                created=NOW - 30,
            ),
            transfer(
                id="22" * 16,
                name="old.jpg",
                state="complete",
                path="/in/old.jpg",
                directory="/in",
                created=NOW - 500,
            ),
            transfer(
                id="33" * 16,
                contact=UID_BOB,
                name="gone.zip",
                state="cancelled",
                reason="declined",
            ),
        ]
        return client

    def test_waiting_offers_and_running_transfers_show_when_the_ui_starts(self) -> None:
        """When the UI starts while alice's offer waits for an answer, bob's file streams and
        an offer of ours waits in alice's mailbox, then the status line says a file waits for
        an answer, alice's conversation shows her offer (with /accept and /decline) and ours
        with its reason, among her history by time (the list comes newest first), bob's
        shows the bar where it stands; the finished transfers show how they ended, in their
        conversations by time (a file received: where it was saved); the same offer arriving
        again as an event, the same end as an event, or the UI loading again (a reconnect),
        adds no second line."""
        client = self.client_with_transfers()
        controller, client, _clock, _connector = make_controller(client)
        assert client is not None
        self.assertIn(("files.list", {}), client.calls)
        self.assertEqual(
            controller.model.status.text,
            "a file offered to you waits for an answer: /accept ID or /decline ID",
        )
        press(controller, "meta 1")
        text = screen_text(controller.window, (160, 40))
        offer = "alice offers holiday.jpg (3.0 MiB): /accept 01234567 [DIR] or /decline 01234567"
        self.assertIn(offer, text)
        self.assertIn(
            "file notes.txt: offered (offline: the offer goes through their mailbox)", text
        )
        # by time: after the message sent 1,000 s before and our offer 30 s before, before
        # the message 10 s before
        self.assertLess(text.index("sent one"), text.index("file notes.txt"))
        self.assertLess(text.index("file notes.txt"), text.index(offer))
        self.assertLess(text.index(offer), text.index("news!"))
        ended = "file old.jpg (3.0 MiB): complete, saved as /in/old.jpg"
        self.assertIn(ended, text)
        self.assertNotIn("xdg-open", text)  # the folder's command only when it ends now
        self.assertLess(text.index("sent one"), text.index(ended))
        self.assertLess(text.index(ended), text.index("file notes.txt"))
        client.emit("transfer.offered", {"transfer": transfer(created=NOW - 20)})
        self.assertEqual(controller.window.dialog.kind, "file_offer")
        press(controller, "esc")  # its accept prompt: later
        controller.load_unlocked()
        text = screen_text(controller.window, (160, 40))
        self.assertEqual(text.count("alice offers holiday.jpg"), 1)
        self.assertEqual(text.count("file notes.txt"), 1)
        self.assertEqual(text.count("file old.jpg"), 1)
        press(controller, "meta 2")
        text = screen_text(controller.window, (160, 40))
        self.assertIn("file film.mkv [#####...............]  25% 2.0 MiB of 8.0 MiB", text)
        self.assertIn("file gone.zip (3.0 MiB): cancelled (declined)", text)
        gone = transfer(
            id="33" * 16, contact=UID_BOB, name="gone.zip", state="cancelled", reason="declined"
        )
        client.emit("transfer.changed", {"transfer": gone})
        text = screen_text(controller.window, (160, 40))
        self.assertEqual(text.count("gone.zip"), 1)

    def test_a_line_added_later_comes_after_the_offer_lines(self) -> None:
        """When carol's offer shown at start is the newest line of her conversation and one of
        her transfers then ends, then its end line comes below the offer line (not above it,
        as a tie of times sorted by the lines' ids put it)."""
        client = make_populated_client()
        client.transfers = [transfer(contact=UID_CAROL, contact_name="carol", created=NOW)]
        controller, client, _clock, _connector = make_controller(client)
        assert client is not None
        ended = transfer(
            id=TID2,
            contact=UID_CAROL,
            name="earlier.txt",
            state="cancelled",
            reason="declined",
            created=NOW - 60,
        )
        client.emit("transfer.changed", {"transfer": ended})
        press(controller, "meta 3")
        text = screen_text(controller.window, (160, 40))
        self.assertLess(
            text.index("carol offers holiday.jpg"), text.index("file earlier.txt (3.0 MiB)")
        )

    def test_a_daemon_without_the_list_still_shows_the_ui(self) -> None:
        """When files.list fails (an older daemon), then the main screen shows as before and
        the status line says nothing of files."""
        client = make_populated_client()
        client.failures["files.list"] = RuntimeError("no such method")
        controller, client, _clock, _connector = make_controller(client)
        press(controller, "meta 1")
        self.assertIn("news!", screen_text(controller.window, (160, 40)))
        self.assertIsNone(controller.model.status)


class AnswerWithoutIdTests(SynchronousTestCase):
    def test_accept_and_decline_without_an_id_answer_the_newest_offer_here(self) -> None:
        """When two of alice's offers wait (one shown at start, one arriving later) and one of
        bob's, then /accept with only a folder in alice's conversation accepts her newer one
        there; once it is no longer offered, /decline without an id declines her older one;
        then nothing waits there and /accept says so without calling the daemon; an offer
        answered elsewhere while the UI was away is forgotten when it loads again; bob's offer
        is never answered from alice's conversation."""
        client = make_populated_client()
        client.transfers = [transfer(id=TID2, created=NOW - 50)]
        controller, client, _clock, _connector = make_controller(client)
        assert client is not None
        client.m_files_accept = lambda params: transfer(state="accepted")
        client.m_files_decline = lambda params: transfer(id=TID2, state="cancelled")
        bobs = "99" * 16
        client.emit(
            "transfer.offered",
            {"transfer": transfer(id=bobs, contact=UID_BOB, contact_name="bob", created=NOW)},
        )
        press(controller, "meta 1")
        client.emit("transfer.offered", {"transfer": transfer(created=NOW - 5)})
        press(controller, "esc")  # its accept prompt: later
        press(controller, "/accept /srv/in", "enter")
        self.assertIn(("files.accept", {"id": TID, "directory": "/srv/in"}), client.calls)
        client.emit("transfer.changed", {"transfer": transfer(state="accepted")})
        press(controller, "/decline", "enter")
        self.assertIn(("files.decline", {"id": TID2}), client.calls)
        client.emit("transfer.changed", {"transfer": transfer(id=TID2, state="cancelled")})
        answered = len(client.calls)
        press(controller, "/accept", "enter")
        self.assertEqual(len(client.calls), answered)
        self.assertEqual(
            controller.model.status.text,
            "no offer waits for an answer here: /accept ID (jarvis files lists them)",
        )
        # an offer answered elsewhere while this UI was away is forgotten at the next load
        client.emit("transfer.offered", {"transfer": transfer(id="77" * 16, created=NOW)})
        press(controller, "esc")
        client.transfers = []
        controller.load_unlocked()
        press(controller, "/decline", "enter")
        self.assertNotIn(("files.decline", {"id": "77" * 16}), client.calls)
        self.assertTrue(controller.model.status.text.startswith("no offer waits"))
        self.assertNotIn(bobs, str(client.calls))


class ListTests(SynchronousTestCase):
    def test_files_lists_what_is_under_way_everywhere(self) -> None:
        """When /files is typed in bob's conversation while alice's offer waits, a file to
        bob streams at 40 % and a finished one is listed, then two local lines in bob's
        conversation list the two not ended, oldest first, with state, percent, name, size,
        direction and whom, and the status line counts them; with none under way it says
        so; /files with an argument is a usage error that calls nothing."""
        client = make_populated_client()
        client.transfers = [
            transfer(created=NOW - 10),
            transfer(
                id=TID2,
                contact=UID_BOB,
                contact_name="bob",
                direction="out",
                name="movie.mkv",
                size=1000,
                bytes=400,
                state="streaming",
                created=NOW - 20,
            ),
            transfer(id="33" * 16, state="complete", created=NOW - 30),
        ]
        controller, client, clock, _connector = make_controller(client)
        assert client is not None
        press(controller, "meta 2", "/files", "enter")
        clock.advance(0)
        ids = tuple(f"file {t}" for t in (TID[:8], TID2[:8], "33" * 4))
        listed = [line for line in lines(controller, UID_BOB) if line.startswith(ids)]
        self.assertEqual(
            listed,
            [
                f"file {TID2[:8]} streaming 40% movie.mkv (1000 B) to bob",
                f"file {TID[:8]} offered 0% holiday.jpg (3.0 MiB) from alice",
            ],
        )
        self.assertEqual(
            controller.model.status.text,
            "2 transfers under way (listed above): /accept, /decline or /cancel ID",
        )
        client.transfers = [transfer(state="cancelled")]
        press(controller, "/files", "enter")
        clock.advance(0)
        self.assertEqual(controller.model.status.text, "no transfer is under way")
        calls = len(client.calls)
        press(controller, "/files all", "enter")
        self.assertEqual(len(client.calls), calls)
        self.assertTrue(controller.model.status.text.startswith("usage: /files"))


class AnswerAllTests(SynchronousTestCase):
    def test_accept_all_answers_every_offer_waiting_here_and_says_how_many(self) -> None:
        """When three of alice's offers wait (two shown at start, one arriving later) and one
        of bob's, then /accept all DIR in alice's conversation accepts her three, oldest
        first, into DIR, and the status line says one was not answered and why (the daemon
        refused it); bob's is not answered; /decline all in bob's conversation declines his;
        /decline all where nothing waits says so without calling the daemon."""
        third, bobs = "33" * 16, "99" * 16
        client = make_populated_client()
        client.transfers = [transfer(id=TID2, created=NOW - 50), transfer(created=NOW - 60)]
        controller, client, _clock, _connector = make_controller(client)
        assert client is not None
        self.assertEqual(
            controller.model.status.text,
            "2 files offered to you wait for an answer: /accept ID|all or /decline ID|all",
        )

        def accept(params: dict[str, Any]) -> dict[str, Any]:
            if params["id"] == TID2:
                raise remote_error("invalid_input", "the folder is full")
            return transfer(id=params["id"], state="accepted")

        client.m_files_accept = accept
        client.m_files_decline = lambda params: transfer(id=bobs, state="cancelled")
        client.emit(
            "transfer.offered",
            {"transfer": transfer(id=bobs, contact=UID_BOB, contact_name="bob", created=NOW)},
        )
        press(controller, "esc")
        client.emit("transfer.offered", {"transfer": transfer(id=third, created=NOW - 5)})
        press(controller, "meta 1", "/accept all /srv/in", "enter")
        accepted = [p for m, p in client.calls if m == "files.accept"]
        self.assertEqual(
            accepted,
            [
                {"id": TID, "directory": "/srv/in"},
                {"id": TID2, "directory": "/srv/in"},
                {"id": third, "directory": "/srv/in"},
            ],
        )
        self.assertEqual(
            controller.model.status.text,
            "accepted 2 of 3 files offered here; not answered: the folder is full",
        )
        self.assertEqual([m for m, _p in client.calls if m == "files.decline"], [])
        press(controller, "meta 2", "/decline all", "enter")
        self.assertEqual([p for m, p in client.calls if m == "files.decline"], [{"id": bobs}])
        self.assertEqual(controller.model.status.text, "declined 1 of 1 files offered here")
        client.emit("transfer.changed", {"transfer": transfer(id=bobs, state="cancelled")})
        calls = len(client.calls)
        press(controller, "/decline all", "enter")
        self.assertEqual(len(client.calls), calls)
        self.assertEqual(
            controller.model.status.text, "no offer waits for an answer here: /decline all"
        )

    def test_the_count_of_offers_waiting_follows_them(self) -> None:
        """When the UI starts with two offers waiting, then the status line counts them; an
        offer arriving makes it three, one answered elsewhere two, another one; once the
        last is answered the notice goes; a notice about something else is not replaced."""
        client = make_populated_client()
        client.transfers = [transfer(id=TID2, created=NOW - 50), transfer(created=NOW - 60)]
        controller, client, _clock, _connector = make_controller(client)
        assert client is not None
        third = "33" * 16
        client.emit(
            "transfer.offered",
            {"transfer": transfer(id=third, contact=UID_BOB, contact_name="bob", created=NOW)},
        )
        self.assertEqual(
            controller.model.status.text,
            "3 files offered to you wait for an answer: /accept ID|all or /decline ID|all",
        )
        client.emit("transfer.changed", {"transfer": transfer(id=TID, state="accepted")})
        self.assertTrue(controller.model.status.text.startswith("2 files offered to you"))
        client.emit("transfer.changed", {"transfer": transfer(id=TID2, state="cancelled")})
        self.assertEqual(
            controller.model.status.text,
            "a file offered to you waits for an answer: /accept ID or /decline ID",
        )
        client.emit("transfer.changed", {"transfer": transfer(id=third, state="cancelled")})
        self.assertIsNone(controller.model.status)
        controller.model.notify("something else")
        client.emit("transfer.offered", {"transfer": transfer(id="44" * 16, created=NOW)})
        self.assertEqual(controller.model.status.text, "something else")

    def test_an_offer_elsewhere_shows_on_its_row_and_the_status_bar(self) -> None:
        """When bob offers two files while the UI shows no conversation and nothing else is
        said, then the status line says a file waits, bob's row in the list shows "2 files"
        and the status bar "2 offered files" (alice's row no badge); once both are answered
        from another client the badge, the count and the notice go."""
        controller, client, _clock = started()
        self.assertIsNone(controller.model.current_uid)
        self.assertIsNone(controller.model.status)
        client.emit(
            "transfer.offered",
            {"transfer": transfer(contact=UID_BOB, contact_name="bob", created=NOW)},
        )
        self.assertEqual(
            controller.model.status.text,
            "a file offered to you waits for an answer: /accept ID or /decline ID",
        )
        client.emit(
            "transfer.offered",
            {"transfer": transfer(id=TID2, contact=UID_BOB, contact_name="bob", created=NOW)},
        )
        lines = screen_text(controller.window, (120, 24)).splitlines()
        bob_row = next(line for line in lines if "bob" in line[:30])
        alice_row = next(line for line in lines if "alice" in line[:30])
        self.assertIn("2 files", bob_row)
        self.assertNotIn("file", alice_row)
        self.assertIn("│ 2 offered files │ 2 files offered to you wait", lines[-2])
        for tid in (TID, TID2):
            client.emit(
                "transfer.changed",
                {"transfer": transfer(id=tid, contact=UID_BOB, state="cancelled")},
            )
        lines = screen_text(controller.window, (120, 24)).splitlines()
        bob_row = next(line for line in lines if "bob" in line[:30])
        self.assertNotIn("files", bob_row)
        self.assertNotIn("offered", lines[-2])
        self.assertIsNone(controller.model.status)

    def test_cancel_all_cancels_what_is_under_way_here(self) -> None:
        """When /cancel all is typed in alice's conversation, then the daemon's list is asked
        for and every transfer with alice not ended is cancelled, oldest first (an offer of
        ours and a file streaming to us; not the complete one, nor bob's), and the status
        line says how many; in a conversation with nothing under way it says so; a list the
        daemon refuses is said as the call's failure."""
        ours, theirs, old, bobs = "11" * 16, "22" * 16, "33" * 16, "44" * 16
        controller, client, _clock = started()
        listed = [
            transfer(id=ours, direction="out", created=NOW - 10),
            transfer(id=theirs, state="streaming", created=NOW - 20),
            transfer(id=old, state="complete", created=NOW - 30),
            transfer(id=bobs, contact=UID_BOB, contact_name="bob", created=NOW - 40),
        ]
        client.m_files_list = lambda params: {"transfers": listed}
        client.m_files_cancel = lambda params: transfer(id=params["id"], state="cancelled")
        press(controller, "meta 1", "/cancel all", "enter")
        self.assertEqual(
            [p for m, p in client.calls if m == "files.cancel"], [{"id": theirs}, {"id": ours}]
        )
        self.assertEqual(controller.model.status.text, "cancelled 2 of 2 transfers here")
        listed[:] = listed[2:3]
        press(controller, "/cancel all", "enter")
        self.assertEqual(len([m for m, _p in client.calls if m == "files.cancel"]), 2)
        self.assertEqual(controller.model.status.text, "no transfer is under way here: /cancel all")

        def locked(params: dict[str, Any]) -> dict[str, Any]:
            raise remote_error("locked", "the identity is locked")

        client.m_files_list = locked
        press(controller, "/cancel all", "enter")
        self.assertEqual(controller.model.status.text, "/cancel all failed: the identity is locked")

    def test_ctrl_c_stops_the_rest(self) -> None:
        """When /accept all waits for the daemon's answer to the first of two offers and
        Ctrl+C is pressed, then that call is cancelled, the second offer is not answered, and
        the status line says the operation was cancelled."""
        client = make_populated_client()
        client.transfers = [transfer(id=TID2, created=NOW - 50), transfer(created=NOW - 60)]
        controller, client, _clock, _connector = make_controller(client)
        assert client is not None
        client.slow.add("files.accept")
        press(controller, "meta 1", "/accept all", "enter")
        self.assertEqual([p for m, p in client.calls if m == "files.accept"], [{"id": TID}])
        press(controller, "ctrl c")
        self.assertEqual(client.cancelled, ["files.accept"])
        self.assertEqual([p for m, p in client.calls if m == "files.accept"], [{"id": TID}])
        self.assertEqual(controller.model.status.text, "cancelled 1 operation")
        self.assertEqual(controller.model.offers_waiting_in(UID_ALICE), [TID, TID2])


class FilePatternTests(SynchronousTestCase):
    def make_folder(self) -> str:
        root = self.mktemp()
        os.makedirs(os.path.join(root, "d.jpg"))  # a folder: never offered
        for name in ("b.jpg", "a.jpg", "c.txt", ".hidden.jpg", "x*y.jpg"):
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"x")
        return os.path.abspath(root)

    def test_a_pattern_offers_each_file_it_matches(self) -> None:
        """When /file FOLDER/*.jpg is typed in alice's conversation and the daemon refuses
        b.jpg, then a.jpg, b.jpg and x*y.jpg are offered in that order (not the folder d.jpg,
        not the hidden file, not c.txt), the offered ones get their lines, and the status line
        says how many went and why one did not; a pattern matching nothing says so without a
        call; a name that holds a * itself is offered as one file."""
        root = self.make_folder()
        controller, client, _clock = started()
        controller.expand_paths = lambda pattern: defer.succeed(completion.matching(pattern))

        def send(params: dict[str, Any]) -> dict[str, Any]:
            name = os.path.basename(params["path"])
            if name == "b.jpg":
                raise remote_error("invalid", "cannot read the file: Permission denied")
            return transfer(id=f"{len(client.calls):032x}", direction="out", name=name)

        client.m_files_send = send
        press(controller, "meta 1", f"/file {root}/*.jpg", "enter")
        sent = [p["path"] for m, p in client.calls if m == "files.send"]
        self.assertEqual(sent, [os.path.join(root, n) for n in ("a.jpg", "b.jpg", "x*y.jpg")])
        self.assertEqual(
            controller.model.status.text,
            "offered 2 of 3 files; not offered: b.jpg: cannot read the file: Permission denied",
        )
        text = screen_text(controller.window, (120, 24))
        self.assertIn("offered a.jpg (3.0 MiB)", text)
        self.assertIn("offered x*y.jpg (3.0 MiB)", text)
        calls = len(client.calls)
        press(controller, f"/file {root}/*.png", "enter")
        self.assertEqual(len(client.calls), calls)
        self.assertEqual(controller.model.status.text, f"no file matches {root}/*.png")
        press(controller, f"/file {root}/x*y.jpg", "enter")
        self.assertEqual(
            [p["path"] for m, p in client.calls[calls:] if m == "files.send"],
            [os.path.join(root, "x*y.jpg")],
        )

    def test_ctrl_c_stops_the_rest(self) -> None:
        """When a pattern matched two files and the daemon still hashes the first when Ctrl+C
        is pressed, then the second is never offered."""
        root = self.make_folder()
        controller, client, _clock = started()
        controller.expand_paths = lambda pattern: defer.succeed(completion.matching(pattern))
        client.slow.add("files.send")
        press(controller, "meta 1", f"/file {root}/[ab].jpg", "enter")
        press(controller, "ctrl c")
        self.assertEqual(
            [p["path"] for m, p in client.calls if m == "files.send"],
            [os.path.join(root, "a.jpg")],
        )
        self.assertEqual(controller.model.status.text, "cancelled 1 operation")


class PathCompletionTests(SynchronousTestCase):
    def make_folder(self) -> str:
        import os

        root = self.mktemp()
        os.makedirs(os.path.join(root, "reports"))
        for name in ("report-2024.pdf", "report-2025.pdf", "photo.jpg", ".hidden", "evil\x1b]0;x"):
            with open(os.path.join(root, name), "w") as f:
                f.write("x")
        return root

    def test_complete_extends_to_the_shared_prefix(self) -> None:
        """When a path is completed, then a single match is completed whole (a folder gets
        ``/``), several extend to their shared prefix and are listed, hidden names only show
        for a typed dot, and a name with an escape character is never offered."""
        from jarvis.ui.completion import complete, listing

        root = self.make_folder()
        entries = listing(root)
        self.assertEqual(complete(root + "/ph", entries), (root + "/photo.jpg", ["photo.jpg"]))
        new, matches = complete(root + "/re", entries)
        self.assertEqual(new, root + "/report")
        self.assertEqual(matches, ["report-2024.pdf", "report-2025.pdf", "reports/"])
        self.assertEqual(complete(root + "/reports", entries)[0], root + "/reports/")
        self.assertEqual(complete(root + "/.h", entries), (root + "/.hidden", [".hidden"]))
        self.assertNotIn(".hidden", complete(root + "/", entries)[1])
        self.assertEqual(complete(root + "/ev", entries), (root + "/ev", []))
        self.assertEqual(listing(root + "/missing"), [])

    def test_tab_completes_file_paths_in_the_input_line(self) -> None:
        """When Tab is pressed on ``/file PARTIAL`` in the input line, then the folder is listed
        off the reactor thread (here synchronously) and the input line holds the completed
        path, several matches are listed on the status line; Tab on other text still moves the
        focus."""
        from twisted.internet import defer

        from jarvis.ui.completion import listing

        controller, _client, _clock = started()
        root = self.make_folder()
        listed: list[str] = []

        def list_dir(directory: str) -> Any:
            listed.append(directory)
            return defer.succeed(listing(directory))

        controller.list_dir = list_dir
        press(controller, "meta 1")
        press(controller, f"/file {root}/ph", "tab")
        self.assertEqual(controller.main_screen.input.edit_text, f"/file {root}/photo.jpg")
        self.assertEqual(listed, [root])
        controller.main_screen.input.set_edit_text("")
        press(controller, f"/file {root}/rep", "tab")
        self.assertEqual(controller.main_screen.input.edit_text, f"/file {root}/report")
        self.assertIn("report-2024.pdf  report-2025.pdf  reports/", controller.model.status.text)
        controller.main_screen.input.set_edit_text("")
        press(controller, "hello", "tab")
        self.assertEqual(listed, [root, root])
        self.assertNotEqual(controller.main_screen.area, "input")


class OfferDialogTests(SynchronousTestCase):
    def offered(self, controller: Any, client: FakeDaemonClient, **fields: Any) -> None:
        client.emit("transfer.offered", {"transfer": transfer(**fields)})

    def test_offer_in_the_open_conversation_prompts(self) -> None:
        """When an offer arrives in the open conversation, then a dialog asks; Enter on its
        focused first button (Later) accepts nothing; "Accept into the download folder" calls
        files.accept without a folder, the folder field accepts into the typed folder (``~``
        expanded) and Decline calls files.decline; the dialog closes after each answer."""
        import os

        controller, client, clock = started()
        client.m_files_accept = lambda params: transfer(state="accepted")
        client.m_files_decline = lambda params: transfer(state="cancelled")
        press(controller, "meta 1")
        self.offered(controller, client, name="plan\u202e.txt", media_type="text/plain")
        dialog = controller.window.dialog
        self.assertEqual(dialog.kind, "file_offer")
        text = screen_text(controller.window, (120, 30))
        self.assertIn("alice offers plan", text)
        self.assertIn("(3.0 MiB, text/plain)", text)
        self.assertNotIn("\u202e", text)
        press(controller, "enter")
        self.assertIsNone(controller.window.dialog)
        self.assertFalse(
            [c for c in client.calls if c[0].startswith("files.") and c[0] != "files.list"]
        )

        self.offered(controller, client)
        controller.window.dialog.accept_default()
        clock.advance(0)
        self.assertIn(("files.accept", {"id": TID}), client.calls)
        self.assertIsNone(controller.window.dialog)

        self.offered(controller, client)
        dialog = controller.window.dialog
        dialog.accept_into_folder()
        self.assertIsNotNone(controller.window.dialog, "no folder typed: nothing sent")
        dialog.folder_edit.set_edit_text("~/in")
        dialog.accept_into_folder()
        clock.advance(0)
        folder = os.path.expanduser("~/in")
        self.assertIn(("files.accept", {"id": TID, "directory": folder}), client.calls)

        self.offered(controller, client)
        controller.window.dialog.decline()
        clock.advance(0)
        self.assertIn(("files.decline", {"id": TID}), client.calls)
        self.assertIsNone(controller.window.dialog)

    def test_offer_elsewhere_or_auto_accepted_does_not_prompt(self) -> None:
        """When an offer arrives for a conversation that is not open, or already accepted (an
        auto-accept), or an outgoing one, then no dialog opens (the conversation line with
        /accept stays the way to answer)."""
        controller, client, _clock = started()
        self.offered(controller, client)
        self.assertIsNone(controller.window.dialog)
        press(controller, "meta 1")
        self.offered(controller, client, state="accepted")
        self.offered(controller, client, direction="out")
        self.assertIsNone(controller.window.dialog)
        self.offered(controller, client, contact="someone-else")
        self.assertIsNone(controller.window.dialog)

    def test_an_offer_the_daemon_accepts_by_itself_does_not_prompt(self) -> None:
        """When offers arrive in the open conversation that the daemon accepts by itself (the
        event's auto_accept: the contact's auto-accept limit), a folder's files among them,
        then no dialog asks about them (it stayed up over a folder already received)."""
        controller, client, clock = started()
        press(controller, "meta 1")
        for n in range(3):
            view = transfer(id=f"{n:032x}", folder="album", folder_id="f" * 32)
            client.emit("transfer.offered", {"transfer": view, "auto_accept": True})
        client.emit("transfer.offered", {"transfer": transfer(), "auto_accept": True})
        clock.advance(0)
        self.assertIsNone(controller.window.dialog)

    def test_an_offer_the_daemon_could_not_accept_by_itself_prompts_saying_why(self) -> None:
        """When the daemon said it accepts an offer by itself but could not (no room in the
        downloads folder: the offer waits, its transfer.changed carrying the reason), then the
        prompt opens after all and shows why; a later change of that offer asks no more."""
        controller, client, clock = started()
        press(controller, "meta 1")
        client.emit("transfer.offered", {"transfer": transfer(), "auto_accept": True})
        self.assertIsNone(controller.window.dialog)
        why = "not accepted by itself: not enough free space: 5.0 MiB free, 84 MiB needed"
        client.emit("transfer.changed", {"transfer": transfer(reason=why)})
        dialog = controller.window.dialog
        self.assertIsNotNone(dialog)
        self.assertEqual(dialog.kind, "file_offer")
        text = screen_text(controller.window, (140, 30))
        self.assertIn("Not accepted by itself: not enough free space", text)
        controller.window.close_dialog()
        self.assertIn(  # its line in the conversation says why it waits too
            f"alice offers holiday.jpg (3.0 MiB): /accept 01234567 [DIR] or /decline 01234567 "
            f"({why})",
            lines(controller, UID_ALICE),
        )
        client.emit("transfer.changed", {"transfer": transfer(reason=why)})
        self.assertIsNone(controller.window.dialog)
        # an offer accepted by itself as said is never asked about
        accepted = transfer(id="d" * 32)
        client.emit("transfer.offered", {"transfer": accepted, "auto_accept": True})
        client.emit("transfer.changed", {"transfer": {**accepted, "state": "accepted"}})
        client.emit("transfer.changed", {"transfer": {**accepted, "reason": "late"}})
        self.assertIsNone(controller.window.dialog)
        clock.advance(0)

    def test_the_prompt_closes_once_nothing_it_asks_about_waits(self) -> None:
        """When a file's prompt is up and that offer is answered elsewhere (another client,
        the command line), then the prompt closes; a folder's prompt stays while any file of
        the folder still waits and closes once none does; another file's change leaves a
        prompt alone."""
        controller, client, clock = started()
        press(controller, "meta 1")
        self.offered(controller, client)
        self.assertIsNotNone(controller.window.dialog)
        other = transfer(id="e" * 32, state="accepted", contact=UID_BOB)
        client.emit("transfer.changed", {"transfer": other})
        self.assertIsNotNone(controller.window.dialog)
        client.emit("transfer.changed", {"transfer": transfer(state="accepted")})
        self.assertIsNone(controller.window.dialog)

        files = [transfer(id=f"{n:032x}", folder="album", folder_id="f" * 32) for n in range(2)]
        for view in files:
            client.emit("transfer.offered", {"transfer": view})
        self.assertEqual(controller.window.dialog.folder_id, "f" * 32)
        client.emit("transfer.changed", {"transfer": {**files[0], "state": "accepted"}})
        self.assertIsNotNone(controller.window.dialog, "one file of the folder still waits")
        client.emit("transfer.changed", {"transfer": {**files[1], "state": "cancelled"}})
        self.assertIsNone(controller.window.dialog)
        clock.advance(0)


def started_with_group() -> tuple[Any, FakeDaemonClient, Any]:
    """A started controller whose daemon has group #family (GID) with alice and bob in it."""
    client = make_populated_client()
    client.add_group(GID, "family")
    client.add_group_member(GID, UID_ALICE, "alice")
    client.add_group_member(GID, UID_BOB, "bob")
    controller, client, clock, _connector = make_controller(client)
    assert client is not None
    return controller, client, clock


def lines(controller: Any, key: str) -> list[str]:
    """The bodies of the lines in conversation *key* (none if it was never made)."""
    conversation = controller.model.conversations.get(key)
    return [m.body for m in conversation.ordered()] if conversation is not None else []


class GroupFileTests(SynchronousTestCase):
    """Files sent into a group: their lines show in the group's conversation, /file in a group
    offers to every member, and an offer into the open group prompts."""

    def test_group_offer_line_in_the_group(self) -> None:
        """When alice offers a file into the group, then the offer line with /accept is in the
        group's conversation and not in alice's."""
        controller, client, _clock = started_with_group()
        client.emit("transfer.offered", {"transfer": transfer(group=GID)})
        offer = "alice offers holiday.jpg (3.0 MiB): /accept 01234567 [DIR] or /decline 01234567"
        self.assertIn(offer, lines(controller, KEY))
        self.assertFalse([b for b in lines(controller, UID_ALICE) if "offers" in b])

    def test_group_progress_and_end_in_the_group(self) -> None:
        """When my file offered into the group to bob makes progress and completes, then its
        progress line (named "holiday.jpg to bob") and its end line are in the group's
        conversation and not in bob's; an incoming group transfer's name has no "to"."""
        controller, client, _clock = started_with_group()
        mine = transfer(direction="out", contact=UID_BOB, contact_name="bob", group=GID)
        client.emit("transfer.changed", {"transfer": mine})
        size = 4 * 1024 * 1024
        event = {"id": TID, "bytes": size // 2, "size": size, "rate": 2.0**20, "eta": 2.0}
        client.emit(
            "transfer.progress", {**event, "contact": UID_BOB, "group": GID, "direction": "out"}
        )
        self.assertIn(
            "file holiday.jpg to bob [##########..........]  50%", lines(controller, KEY)[-1]
        )
        self.assertIn("file holiday.jpg to bob [", controller.model.status.text)
        client.emit("transfer.changed", {"transfer": {**mine, "state": "complete"}})
        group_lines = lines(controller, KEY)
        # its progress line says how it ended: one line for the transfer
        self.assertEqual(group_lines[-1], "file holiday.jpg (3.0 MiB) to bob: complete")
        self.assertEqual(len([b for b in group_lines if "holiday" in b]), 1)
        self.assertFalse([b for b in lines(controller, UID_BOB) if "holiday" in b])

        theirs = transfer(id=TID2, state="accepted", group=GID)
        client.emit("transfer.changed", {"transfer": theirs})
        client.emit("transfer.progress", {**event, "id": TID2, "contact": UID_ALICE, "group": GID})
        self.assertIn("file holiday.jpg [##########", lines(controller, KEY)[-1])
        self.assertFalse([b for b in lines(controller, UID_ALICE) if "holiday" in b])

    def test_file_in_a_group_offers_to_every_member(self) -> None:
        """When /file PATH is typed in the open group, then groups.sendFile is called with the
        group's id and the path (files.send is not), and the group's conversation says it was
        offered to alice and bob, each with the /cancel id of their own transfer; a pattern
        sends each file it matches into the group."""
        controller, client, clock = started_with_group()
        client.m_groups_sendFile = lambda params: {
            "group": GID,
            "transfers": [
                transfer(direction="out", name="report.pdf", group=GID),
                transfer(
                    id=TID2,
                    direction="out",
                    name="report.pdf",
                    contact=UID_BOB,
                    contact_name="bob",
                    group=GID,
                ),
            ],
        }
        controller.open_conversation(KEY)
        press(controller, "/file /tmp/report.pdf", "enter")
        clock.advance(0)
        self.assertIn(("groups.sendFile", {"group": GID, "path": "/tmp/report.pdf"}), client.calls)
        self.assertNotIn("files.send", client.methods_called())
        said = "offered report.pdf (3.0 MiB) to alice (/cancel 01234567), bob (/cancel fedcba98)"
        self.assertIn(said, lines(controller, KEY))
        # a pattern in a group: each file it matches goes into the group
        controller.expand_paths = lambda pattern: defer.succeed(["/tmp/a.pdf", "/tmp/b.pdf"])
        press(controller, "/file /tmp/*.pdf", "enter")
        self.assertEqual(
            [p["path"] for m, p in client.calls if m == "groups.sendFile"],
            ["/tmp/report.pdf", "/tmp/a.pdf", "/tmp/b.pdf"],
        )
        self.assertNotIn("files.send", client.methods_called())
        self.assertEqual(controller.model.status.text, "offered 2 of 2 files")

    def test_offer_into_the_open_group_prompts(self) -> None:
        """When an offer into the open group arrives, then the accept prompt opens naming the
        sender (a member who is no contact by the name the view gives) and accepting calls
        files.accept; an offer into a group that is not open, or alice's own offer while the
        group is open, or a group offer while alice's conversation is open, does not prompt."""
        controller, client, clock = started_with_group()
        client.m_files_accept = lambda params: transfer(state="accepted", group=GID)
        controller.open_conversation(KEY)
        client.emit("transfer.offered", {"transfer": transfer(group=GID)})
        self.assertEqual(controller.window.dialog.kind, "file_offer")
        self.assertIn(
            "alice offers holiday.jpg (3.0 MiB, image/jpeg).",
            screen_text(controller.window, (120, 30)),
        )
        controller.window.dialog.accept_default()
        clock.advance(0)
        self.assertIn(("files.accept", {"id": TID}), client.calls)
        self.assertIsNone(controller.window.dialog)

        stranger = transfer(contact="d" * 52, contact_name="dave", group=GID)
        client.emit("transfer.offered", {"transfer": stranger})
        self.assertEqual(controller.window.dialog.kind, "file_offer")
        self.assertIn(
            "dave offers holiday.jpg (3.0 MiB, image/jpeg).",
            screen_text(controller.window, (120, 30)),
        )
        press(controller, "esc")
        self.assertIsNone(controller.window.dialog)

        client.emit("transfer.offered", {"transfer": transfer(group="cd" * 16)})
        client.emit("transfer.offered", {"transfer": transfer()})
        self.assertIsNone(controller.window.dialog)
        controller.open_conversation(UID_ALICE)
        client.emit("transfer.offered", {"transfer": transfer(group=GID)})
        self.assertIsNone(controller.window.dialog)


class SharedFileUiTests(SynchronousTestCase):
    """A file shared into a group is a line of its history, and /fetch asks for it."""

    def test_a_shared_file_line_says_how_to_fetch_it_and_fetch_asks_the_daemon(self) -> None:
        """When alice's shared file arrives as a group message, then its line in the group
        ends with "(/fetch ID)"; typing /fetch ID DIR in the open group calls groups.fetchFile
        with the group, the id and the folder, and the status line says the file is
        requested and why it waits; /fetch with no group open calls nothing and says so."""
        controller, client, clock = started_with_group()
        mid = "5a" * 16
        message = {
            "id": mid,
            "group": GID,
            "author": UID_ALICE,
            "author_name": "alice",
            "body": "shared a file: report.pdf (3.0 MiB)",
            "file": {"name": "report.pdf", "size": 3 * 1024 * 1024, "media_type": "x/y"},
            "seq": 1,
            "created": 1_700_000_000.0,
            "index": 0,
        }
        client.emit("group.message", {"message": message})
        self.assertIn(
            "shared a file: report.pdf (3.0 MiB)  (/fetch 5a5a5a5a)", lines(controller, KEY)
        )
        client.m_groups_fetchFile = lambda params: transfer(
            state="requested",
            name="report.pdf",
            group=GID,
            reason="offline: the request goes when they come online",
        )
        press(controller, "/fetch 5a5a5a5a", "enter")  # alice's conversation is open
        clock.advance(0)
        self.assertNotIn("groups.fetchFile", client.methods_called())
        self.assertIn("open the group", controller.model.status.text)
        controller.open_conversation(KEY)
        press(controller, "/fetch 5a5a5a5a /srv/in", "enter")
        clock.advance(0)
        self.assertIn(
            (
                "groups.fetchFile",
                {"group": GID, "message": "5a5a5a5a", "directory": "/srv/in"},
            ),
            client.calls,
        )
        self.assertEqual(
            controller.model.status.text,
            "file report.pdf: requested from alice; it is accepted when offered "
            "(offline: the request goes when they come online)",
        )


_STATES = ("offered", "accepted", "streaming", "complete", "declined", "cancelled", "failed")


class FolderFilesTests(SynchronousTestCase):
    """A folder's one line is kept as its files' views change, not recounted from all of
    them at each event."""

    @given(
        st.lists(
            st.tuples(
                st.integers(0, 7),  # which file
                st.sampled_from(_STATES),
                st.integers(0, 5000),  # bytes
                st.sampled_from(["", "disk full", "no room"]),
            ),
            max_size=60,
        )
    )
    def test_the_summary_is_what_the_views_say(
        self, events: list[tuple[int, str, int, str]]
    ) -> None:
        """When the views of a folder's files change in any order (a file seen again in
        another state, with other bytes), then the kept size, bytes moved, counts by state,
        whether it ended, the first file offered, where it was saved and its failures are
        those counted afresh from the latest views."""
        folder = FolderFiles()
        saved = False
        for n, state, done, reason in events:
            saved = saved or state == "complete"
            view = {
                "id": f"t{n}",
                "size": 1000 * (n + 1),
                "bytes": done,
                "state": state,
                "created": float(n % 3),  # ties: the first seen stays first
                "folder": "album/sub",
                "path": "/in/album/sub/f" if state == "complete" else None,
                "reason": reason,
            }
            folder.put(f"t{n}", view)
        views = list(folder.views.values())
        self.assertEqual(folder.size, sum(v["size"] for v in views))
        done = sum(v["size"] if v["state"] == "complete" else v["bytes"] for v in views)
        self.assertEqual(folder.done, done)
        counted = {s: n for s, n in folder.states.items() if n}
        self.assertEqual(counted, {s: sum(v["state"] == s for v in views) for s in counted})
        self.assertEqual(sum(counted.values()), len(views))
        self.assertEqual(folder.ended, all(v["state"] in FINAL_TRANSFER_STATES for v in views))
        if views:
            self.assertIs(folder.first, min(views, key=lambda v: v["created"]))
        self.assertEqual(folder.root, "/in/album" if saved else "")  # once saved, said
        failed = {v["id"] for v in views if v["state"] == "failed" and v["reason"]}
        self.assertEqual(set(folder.failed), failed)
