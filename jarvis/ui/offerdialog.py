"""The accept prompt of an incoming file offer (issue 18): accept into the download folder,
accept into a folder you type, decline, or decide later.  For a file of a folder sent whole it
asks about the folder: the controller then answers every file of it still waiting.

The controller opens it when an offer (``transfer.offered``) arrives in the conversation that is
open on the main screen and no other dialog is up, unless the daemon accepts it by itself (the
event's ``auto_accept``), or asks after all when it could not (the offer's reason, shown in the
prompt, says why); offers elsewhere keep their line with the ``/accept`` hint.  It closes
by itself once nothing it asks about waits (answered from another client, cancelled).  "Later"
has the focus, so an Enter typed for a message as the dialog appears accepts nothing.  Names
are shown through :func:`~jarvis.common.textsafe.terminal_safe`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import urwid

from jarvis.common.textsafe import human_bytes, terminal_safe
from jarvis.ui.model import file_name
from jarvis.ui.widgets import Dialog, ReadlineEdit, button, field

#: ``on_answer(verb, args)``: ``("accept", (id,))``, ``("accept", (id, folder))`` or
#: ``("decline", (id,))``, as ``/accept`` and ``/decline`` would send them.
Answer = Callable[[str, tuple[str, ...]], None]


class OfferDialog(Dialog):
    """Ask what to do with an offered file.

    :param transfer: the transfer view of the ``transfer.offered`` event.
    :param sender: the sender's display name.
    :param on_answer: called with the answer (see :data:`Answer`); the dialog then closes.
    :param on_close: closes the dialog (Later, Esc).
    """

    def __init__(
        self,
        transfer: Mapping[str, Any],
        sender: str,
        on_answer: Answer,
        on_close: Callable[[], None],
    ) -> None:
        self.transfer_id = str(transfer.get("id", ""))
        #: The folder id of a folder's prompt (its answer goes to every file of it), or "".
        self.folder_id = str(transfer.get("folder_id") or "")
        self._on_answer = on_answer
        self._on_close = on_close
        name = file_name(transfer)
        kind = terminal_safe(str(transfer.get("media_type") or ""), keep_newlines=False)
        size = human_bytes(int(transfer.get("size") or 0))
        self.folder_edit = ReadlineEdit("Folder: ")
        # why it waits, if the daemon meant to accept it by itself and could not
        reason = terminal_safe(str(transfer.get("reason") or ""), keep_newlines=False)
        self.error = urwid.Text(("error", reason[:1].upper() + reason[1:] + ".") if reason else "")
        folder = str(transfer.get("folder") or "")
        if transfer.get("folder_id") and folder:
            # A file of a folder sent whole: the answer goes to every file of it waiting.
            top = terminal_safe(folder.split("/")[0], keep_newlines=False)
            said = f" offers the folder {top}, file by file ({name}, {size}, first)."
            words = ("Folder offered", "its files into", "Decline its files")
        else:
            said = f" offers {name} ({size}{', ' + kind if kind else ''})."
            words = ("File offered", "into", "Decline")
        title, into, decline = words
        rows: list[urwid.Widget] = [
            urwid.Text([("name_in", sender), said]),
            urwid.Divider(),
            button("Later (keep it offered: /accept or /decline)", on_close),
            button(f"Accept {into} the download folder", self.accept_default),
            field(self.folder_edit),
            button(f"Accept {into} the folder above", self.accept_into_folder),
            button(decline, self.decline),
            self.error,
        ]
        super().__init__("file_offer", title, rows)

    def accept_default(self) -> None:
        """Accept into the daemon's download folder."""
        self._answer("accept", (self.transfer_id,))

    def accept_into_folder(self) -> None:
        """Accept into the folder typed in the field (``~`` expanded, made absolute)."""
        folder = self.folder_edit.edit_text.strip()
        if not folder:
            self.error.set_text(("error", "Type a folder first."))
            return
        self._answer("accept", (self.transfer_id, os.path.abspath(os.path.expanduser(folder))))

    def decline(self) -> None:
        """Decline the offer (the sender is told)."""
        self._answer("decline", (self.transfer_id,))

    def _answer(self, verb: str, args: tuple[str, ...]) -> None:
        self._on_close()
        self._on_answer(verb, args)
