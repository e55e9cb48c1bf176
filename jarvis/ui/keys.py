"""What the keymap's commands do on the screen: key routing around the widgets, and navigation.

:class:`KeyRouter` asks :mod:`jarvis.ui.keymap` which command a key means and runs the commands
that come before the widgets (switching and stepping conversations, next unread, focus,
scrolling, and the commands the controller hands it: dialogs, lock, cancel, Esc); after the
widgets it handles Enter on forms and sends typing in the list to the input line.  It must not
call the daemon (scrolling past the top asks the reader for older messages) nor build dialogs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger

from jarvis.ui import keymap
from jarvis.ui.host import UiHost


class KeyRouter:
    """Runs keymap commands before and after the widgets see a key.

    :param controller: the controller (:class:`~jarvis.ui.host.UiHost`): model, window, screens.
    :param commands: handlers of the commands it does not implement itself, by command name.
    :param load_older: fetches the page before the oldest loaded message.
    """

    log = Logger()

    def __init__(
        self,
        controller: UiHost,
        commands: Mapping[str, Callable[[], Any]],
        load_older: Callable[[], Any],
    ) -> None:
        self._controller = controller
        self.model = controller.model
        self.window = controller.window
        self.main_screen = controller.main_screen
        self._load_older = load_older
        self._commands: dict[str, Callable[[], Any]] = {
            **{f"switch_{n}": self._switcher(n - 1) for n in range(1, 10)},
            "previous_conversation": lambda: self._step_conversation(-1),
            "next_conversation": lambda: self._step_conversation(1),
            "next_unread": self._next_unread,
            "focus_next": lambda: self._move_focus(1),
            "focus_previous": lambda: self._move_focus(-1),
            "scroll_up": lambda: self._scroll("scroll_up"),
            "scroll_down": lambda: self._scroll("scroll_down"),
            "scroll_top": lambda: self._scroll("scroll_top"),
            "scroll_bottom": lambda: self._scroll("scroll_bottom"),
            **commands,
        }

    def before_widgets(self, state: str, key: str) -> bool:
        """Run the command *key* means in *state*, if it is one that goes before the widgets.

        :returns: whether the key was taken.
        """
        name = keymap.command_for(key, state)
        if name is None:
            return False
        if name == "focus_next" and state == keymap.INPUT and self._complete_input():
            return True
        handler = self._commands.get(name)
        if handler is None:
            return False
        try:
            handler()
        except Exception:
            self.log.failure("command {command} failed", command=name)
            self.model.notify(f"{name} failed; details are in the log", "error")
        return True

    def after_widgets(self, state: str, key: str) -> bool:
        """Handle a key no widget took: Enter submits a form, typing goes to the input line.

        :returns: whether the key was taken.
        """
        name = keymap.command_for(key, state)
        if name == "submit":
            submit = getattr(self.window.screen, "submit", None)
            if submit is not None:
                submit()
            return True
        if (
            state == keymap.BROWSE
            and name is None
            and len(key) == 1
            and key.isprintable()
            and self.window.screen is self.main_screen
        ):
            # Typing in the list or scrollback goes to the input line, like weechat.
            self.main_screen.focus_area("input")
            self.main_screen.input.keypress((80,), key)
            return True
        return False

    def _complete_input(self) -> bool:
        # Tab on "/file PATH" in the input line completes the path instead of moving focus.
        complete = self._commands.get("complete_input")
        return bool(complete is not None and self._on_main() and complete())

    def run(self, name: str) -> None:
        """Run keymap command *name* as if its key had been pressed (for slash commands)."""
        handler = self._commands.get(name)
        if handler is not None:
            handler()

    def _switcher(self, index: int) -> Callable[[], None]:
        return lambda: self._switch(index)

    def _on_main(self) -> bool:
        return self.window.screen is self.main_screen and self.window.dialog is None

    def _switch(self, index: int) -> None:
        if not self._on_main():
            return
        ordered = self.model.ordered_contacts()
        if 0 <= index < len(ordered):
            self._controller.open_conversation(ordered[index].uid)

    def _step_conversation(self, step: int) -> None:
        if self._on_main():
            contact = self.model.neighbour(step)
            if contact is not None:
                self._controller.open_conversation(contact.uid)

    def _next_unread(self) -> None:
        if not self._on_main():
            return
        contact = self.model.next_unread()
        if contact is None:
            self.model.notify("no unread messages")
        else:
            self._controller.open_conversation(contact.uid)

    def _move_focus(self, step: int) -> None:
        if self.window.dialog is not None:
            self.window.dialog.move_focus(step)
        else:
            move = getattr(self.window.screen, "move_focus", None)
            if move is not None:
                move(step)

    def _scroll(self, command: str) -> None:
        if not self._on_main():
            return
        self.main_screen.scrollback.scroll(command)
        if command in ("scroll_up", "scroll_top") and self.main_screen.scrollback.at_top():
            self._load_older()
