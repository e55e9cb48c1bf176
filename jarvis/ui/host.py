"""The seam between the controller and its parts: what a part may ask of the controller.

:mod:`jarvis.ui.dialogs` and :mod:`jarvis.ui.sending` are typed against :class:`UiHost`, not
against the controller, so the parts import nothing of it and mypy keeps the controller true to
the seam.  It must hold no behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure

from jarvis.ui.model import MessengerModel
from jarvis.ui.screens import AppWindow, MainScreen


class UiHost(Protocol):
    """What the controller offers its parts (dialogs, sending)."""

    model: MessengerModel
    window: AppWindow
    main_screen: MainScreen
    clock: Any
    #: Expands a ``/file`` pattern to the files it names, off the reactor thread.
    expand_paths: Callable[[str], defer.Deferred[list[str]]]
    #: Whether a ``/file`` path is a folder (sent whole), off the reactor thread.
    is_folder: Callable[[str], defer.Deferred[bool]]

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, label: str | None = None
    ) -> defer.Deferred[Any]:
        """Call the daemon; with a *label* the call is an operation in flight (Ctrl+C cancels)."""
        ...

    def report(self, failure: Failure, what: str) -> None:
        """Errback: put a failed call on the status line and its details in the log."""
        ...

    def internal_error(self, failure: Failure, what: str) -> None:
        """Errback for a bug: log it, say so on the status line."""
        ...

    def connected(self) -> bool:
        """Whether the daemon is connected now."""
        ...

    def redraw(self) -> None:
        """Draw the screen once the work of this reactor turn is done."""
        ...

    def on_main_screen(self) -> bool:
        """Whether the main screen is shown and the identity unlocked."""
        ...

    def announce_focus(self) -> None:
        """Tell the daemon which conversation this UI shows."""
        ...

    def load_unlocked(self, requested: defer.Deferred[Any] | None = None) -> defer.Deferred[Any]:
        """Load the unlocked state, then show the main screen."""
        ...

    def save_draft(self) -> None:
        """Keep the input line as the open conversation's draft."""
        ...

    def show_lock(self) -> None:
        """Show the lock screen."""
        ...

    def open_conversation(self, uid: str) -> None:
        """Open *uid*'s conversation."""
        ...

    def handle_command(self, name: str) -> None:
        """Run keymap command *name* as if its key had been pressed."""
        ...

    def quit(self) -> None:
        """Close the UI (the daemon keeps running)."""
        ...

    def fetch_paths(self) -> defer.Deferred[Any]:
        """Ask ``mailbox.status`` again for the path per contact."""
        ...
