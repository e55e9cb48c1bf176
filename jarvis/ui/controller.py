"""The UI's controller: key routing, daemon calls, events, redraws, reconnection.

It owns the :class:`~jarvis.ui.model.MessengerModel` and the top window, turns keymap commands
and form submissions into calls to the daemon's local API, feeds results and events into the
model, and redraws the screen after network events (urwid only redraws after input), once per
reactor turn however many events the turn brought.
Every daemon call that the user waits for is an operation in flight that Ctrl+C cancels.  When
the daemon goes away the UI keeps running with a grey summary; its
:class:`~jarvis.ui.link.DaemonLink`
(``ClientService``) reconnects with backoff on an injected clock, and the handshake here
subscribes again and reloads the state.

It must not let an exception reach urwid or the IPC client: failures become one line on the
status bar and the details go to the log (never message text, passwords or tokens).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.turn import OncePerTurn
from jarvis.ui import keymap
from jarvis.ui.calls import CallsInFlight, Unreachable, error_text, is_cancel
from jarvis.ui.events import Reaction, ScreenState, reaction_to
from jarvis.ui.execview import ExecRuns
from jarvis.ui.link import FIRST_RETRY, DaemonLink
from jarvis.ui.model import (
    Contact,
    InputError,
    Message,
    MessengerModel,
    SendText,
    SlashCommand,
    parse_input,
)
from jarvis.ui.screens import (
    AddContactDialog,
    AppWindow,
    ConnectingScreen,
    ContactInfoDialog,
    CreateIdentityScreen,
    IdentityDialog,
    LockScreen,
    MainScreen,
    SettingsDialog,
    WelcomeScreen,
    confirm_dialog,
    help_dialog,
)
from jarvis.ui.widgets import Dialog, button

Callbacks = dict[str, Callable[..., Any]]

HISTORY_PAGE = 100

__all__ = ["FIRST_RETRY", "Controller", "DaemonClient", "Unreachable", "error_text"]


class DaemonClient(Protocol):
    """What the controller needs of :class:`jarvis.ipc.client.IpcClient` (and the test fake)."""

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        progress: Callable[[Any], None] | None = None,
    ) -> defer.Deferred[Any]: ...

    def subscribe(self, handler: Callable[[str, dict[str, Any]], None]) -> defer.Deferred[Any]: ...

    def add_disconnect_observer(self, observer: Callable[[Failure], None]) -> None: ...

    def close(self) -> Any: ...


def _switcher(index: int) -> Callable[[Controller], None]:
    def switch(controller: Controller) -> None:
        controller._switch(index)

    return switch


class Controller:
    """Connects the widgets, the model and the daemon.

    :param connect: returns a Deferred firing with a connected client (``IpcClient`` or fake).
    :param clock: the reactor, or a ``task.Clock`` in tests (reconnection, spinner, banner).
    :param tz: time zone for message times (``None``: local).
    :param read_file: returns a Deferred with a text file's contents (off the reactor thread).
    :param write_file: writes text to a private file, returning a Deferred.
    :param clipboard: copies text to the terminal's clipboard (OSC 52).
    :param bell: alerts the user of a new message (terminal bell).
    :param on_quit: stops the UI (the daemon keeps running).
    :param animate: whether the welcome banner animates (golden tests turn it off).
    """

    log = Logger()

    def __init__(
        self,
        connect: Callable[[], defer.Deferred[Any]],
        clock: Any,
        *,
        model: MessengerModel | None = None,
        tz: datetime.tzinfo | None = None,
        read_file: Callable[[str], defer.Deferred[str]] | None = None,
        write_file: Callable[[str, str], defer.Deferred[Any]] | None = None,
        clipboard: Callable[[str], None] | None = None,
        bell: Callable[[], None] | None = None,
        on_quit: Callable[[], None] | None = None,
        animate: bool = True,
    ) -> None:
        self.model = model if model is not None else MessengerModel()
        self.clock: Any = clock
        self._tz = tz
        self._read_file = read_file
        self._write_file = write_file
        self._clipboard = clipboard
        self._bell = bell
        self._on_quit = on_quit
        self._animate = animate
        self.client: DaemonClient | None = None
        self.main_loop: Any = None
        self.quitting = False
        self.link = DaemonLink(
            connect,
            clock,
            connected=self._link_ready,
            lost=self._disconnected,
            failed=self._connect_failed,
            retrying=self._retrying,
        )
        self._generation = 0  # bumps on each connection; stale callbacks compare it
        self.calls = CallsInFlight(
            clock,
            begin=self.model.begin_operation,
            end=self.model.end_operation,
            spin=self._spin,
            finished=self.redraw,
        )
        self._banner_animation: Any = None
        self._unlocking = False
        self._unread_refresh = OncePerTurn(clock, self._fetch_unread)
        self._redraw = OncePerTurn(clock, self._draw)
        self._mark_read_soon = OncePerTurn(clock, self._mark_open_read)
        self._loading_older = False
        self.main_screen = MainScreen(self.model, self.submit_input, self.open_conversation, tz)
        self.window = AppWindow(
            ConnectingScreen(self.model), self._before_widgets, self._after_widgets
        )
        self.model.observe(self._model_changed)
        # /exec: running local programs and their output lines (jarvis/ui/execview.py)
        self.execs = ExecRuns(
            self.model,
            clock,
            client=lambda: self.client,
            send=lambda uid, text: self.send(uid, text),
            redraw=self.redraw,
        )

    @property
    def inflight(self) -> dict[int, defer.Deferred[Any]]:
        """The daemon calls in flight, by operation id."""
        return self.calls.inflight

    # life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the daemon (retrying with backoff until it answers)."""
        self.link.start()

    def stop(self) -> defer.Deferred[Any]:
        """Stop timers, cancel calls in flight and close the connection (the daemon keeps running).

        :returns: a Deferred firing once the connection is closed.
        """
        self.quitting = True
        for pending in (self._unread_refresh, self._redraw, self._mark_read_soon):
            pending.cancel()
        self.calls.stop()
        self._stop_banner()
        self.client = None
        return self.link.stop()

    def attach_main_loop(self, main_loop: Any) -> None:
        """Give the controller the urwid main loop, so it can redraw after network events."""
        self.main_loop = main_loop

    def redraw(self) -> None:
        """Draw the screen once the work of this reactor turn is done.

        Network events and timers are not followed by urwid's own redraw, so they ask for one
        here.  Every request of the same turn is served by one draw: a burst of events (an
        outbox flushed after a reconnect brings hundreds in one read) costs one draw, not one
        per event.
        """
        if self.main_loop is not None and not self.quitting:
            self._redraw.request()

    def _draw(self) -> None:
        loop = self.main_loop
        if loop is None or self.quitting:
            return
        try:
            if getattr(loop.screen, "started", True):
                loop.draw_screen()
        except Exception:
            self.log.failure("redraw failed")

    def _link_ready(self, client: DaemonClient) -> None:
        """The link's handshake: subscribe and load the state (``prepareConnection``)."""
        self.client = client
        self._generation += 1
        self.model.set_reachable(True)
        self.model.clear_status()
        generation = self._generation
        # Subscribing and loading go out together: the daemon handles a connection's requests
        # in order, so the subscription is in place before it answers the state calls.
        d = client.subscribe(self._event_received)
        d.addErrback(self._reload_failed, generation)
        self.reload(generation)
        self.redraw()

    def _connect_failed(self, failure: Failure) -> None:
        self.log.info("daemon unreachable: {error}", error=type(failure.value).__name__)
        self.model.set_reachable(False)
        self.redraw()

    def _retrying(self, delay: float) -> None:
        if not self.quitting:
            self.model.notify(f"daemon unreachable; retrying in {delay:g}s", "error")
            self.redraw()

    def _disconnected(self, reason: Any = None) -> None:
        if self.client is None:
            return
        self.client = None
        self.log.info("daemon connection lost")
        self.calls.cancel_all()
        self.model.set_reachable(False)
        self.redraw()

    def _reload_failed(self, failure: Failure, generation: int) -> None:
        if generation != self._generation or self.client is None:
            return
        self.log.failure("loading state from the daemon failed", failure)
        self.model.notify(error_text(failure), "error")
        self.redraw()

    # loading state -------------------------------------------------------------------------

    def reload(self, generation: int | None = None) -> defer.Deferred[Any]:
        """Fetch the daemon's status and, if unlocked, contacts, counts, summary and history.

        Unless the identity is known to be locked or missing, the unlocked state is requested
        together with the status (one round trip instead of four); the answers are dropped if
        the status says otherwise.

        :returns: a Deferred firing when the screen shows the reloaded state.
        """
        d = self._call("daemon.status")
        early: defer.Deferred[Any] | None = None
        if self.model.has_identity is not False and not self.model.locked:
            early = self._request_unlocked()

        def got_status(status: Mapping[str, Any]) -> Any:
            self.model.load_status(status)
            if self.model.has_identity and not self.model.locked:
                return self._load_unlocked(early)
            if early is not None:
                early.addErrback(lambda _: None)  # asked too early: the answers are not needed
            if not self.model.has_identity:
                self.show_welcome()
            else:
                self.show_lock()
            return None

        d.addCallback(got_status)
        d.addErrback(
            self._reload_failed, generation if generation is not None else self._generation
        )
        d.addCallback(lambda _: self.redraw())
        return d

    def _request_unlocked(self) -> defer.Deferred[Any]:
        """Ask for identity, contacts, unread counts and peer summary at once.

        :returns: a Deferred firing with the four answers in that order (``FirstError`` if
            one fails).
        """
        calls = [
            self._call("identity.show"),
            self._call("contacts.list"),
            self._call("messages.unreadCounts"),
            self._call("peers.status"),
        ]
        return defer.gatherResults(calls, consumeErrors=True)

    def _load_unlocked(self, requested: defer.Deferred[Any] | None = None) -> defer.Deferred[Any]:
        """Load the unlocked state (from *requested*, else from new calls), then show main."""
        d = requested if requested is not None else self._request_unlocked()

        def loaded(answers: list[Any]) -> None:
            identity, contacts, counts, summary = answers
            # Counts refer to contacts, so contacts go first.
            self.model.load_identity(identity)
            self.model.load_contacts(contacts)
            self.model.load_unread(counts)
            self.model.load_summary(summary)
            self._show_main()

        d.addCallback(loaded)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        return d

    def _announce_focus(self) -> None:
        """Tell the daemon which conversation this UI shows (no desktop notification for it)."""
        uid = self.model.current_uid if self._on_main_screen() else None
        if self.client is None:
            return
        d = self._call("ui.focus", {"contact": uid})
        d.addErrback(lambda f: self.log.info("ui.focus: {e}", e=type(f.value).__name__))

    def _load_settings(self) -> defer.Deferred[Any]:
        def loaded(settings: Mapping[str, Any]) -> None:
            if isinstance(settings, Mapping) and "notifications" in settings:
                self.model.notifications = bool(settings.get("bell", settings["notifications"]))
                self.model.previews = bool(settings.get("previews", False))

        d = self._call("settings.get")
        d.addCallback(loaded)
        d.addErrback(lambda f: self.log.info("settings: {e}", e=type(f.value).__name__))
        return d

    def _show_main(self) -> None:
        if self.model.locked:
            return
        already = self.window.screen is self.main_screen
        if not already:
            self._stop_banner()
            self.window.show(self.main_screen)
        self.main_screen.refresh()
        self._load_settings()
        self._announce_focus()
        uid = self.model.current_uid
        if uid is not None:
            self._load_history(uid)
        self.redraw()

    # screens -------------------------------------------------------------------------------

    def show_welcome(self) -> None:
        """Show the welcome screen (first start: no identity yet)."""
        if isinstance(self.window.screen, WelcomeScreen | CreateIdentityScreen):
            return
        screen = WelcomeScreen(self.show_create)
        self.window.show(screen)
        if self._animate:
            from jarvis.ui.banner import BannerAnimation

            self._banner_animation = BannerAnimation(screen.banner, self.clock, self.redraw)
            self._banner_animation.start()

    def _stop_banner(self) -> None:
        if self._banner_animation is not None:
            self._banner_animation.stop()
            self._banner_animation = None

    def show_create(self) -> None:
        """Show the identity creation form."""
        self._stop_banner()
        self.window.show(CreateIdentityScreen(self.create_identity))

    def show_lock(self) -> None:
        """Show the lock screen, dropping every conversation from the screen."""
        self._save_draft()
        self._stop_banner()
        if not isinstance(self.window.screen, LockScreen):
            name = self.model.identity.name if self.model.identity else ""
            self.window.show(LockScreen(name, self.unlock))
        self.main_screen.refresh()

    # keys ----------------------------------------------------------------------------------

    def _before_widgets(self, state: str, key: str) -> bool:
        name = keymap.command_for(key, state)
        if name is None:
            return False
        handler = self._PRE_COMMANDS.get(name)
        if handler is None:
            return False
        try:
            handler(self)
        except Exception:
            self.log.failure("command {command} failed", command=name)
            self.model.notify(f"{name} failed; details are in the log", "error")
        return True

    def _after_widgets(self, state: str, key: str) -> bool:
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

    def handle_command(self, name: str) -> None:
        """Run keymap command *name* as if its key had been pressed (for slash commands)."""
        handler = self._PRE_COMMANDS.get(name)
        if handler is not None:
            handler(self)

    def _on_main(self) -> bool:
        return self.window.screen is self.main_screen and self.window.dialog is None

    def _switch(self, index: int) -> None:
        if not self._on_main():
            return
        ordered = self.model.ordered_contacts()
        if 0 <= index < len(ordered):
            self.open_conversation(ordered[index].uid)

    def _step_conversation(self, step: int) -> None:
        if self._on_main():
            contact = self.model.neighbour(step)
            if contact is not None:
                self.open_conversation(contact.uid)

    def _next_unread(self) -> None:
        if not self._on_main():
            return
        contact = self.model.next_unread()
        if contact is None:
            self.model.notify("no unread messages")
        else:
            self.open_conversation(contact.uid)

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

    def _load_older(self) -> None:
        """Fetch the page before the oldest loaded message (scrolling past the top)."""
        uid = self.model.current_uid
        conversation = self.model.conversations.get(uid) if uid is not None else None
        if uid is None or conversation is None or not conversation.older:
            return
        if self._loading_older:
            return
        self._loading_older = True
        params = {"contact": uid, "limit": HISTORY_PAGE, "before": conversation.older}
        d = self._call("messages.history", params)
        d.addCallback(lambda result: self.model.load_history(uid, result, older=True))
        d.addErrback(self._report, "loading older messages")

        def done(_: Any) -> None:
            self._loading_older = False
            self.redraw()

        d.addBoth(done)

    def _close_dialog(self) -> None:
        # The lock screen is a screen, not a dialog: Esc can never close it.
        self.window.close_dialog()

    def cancel_or_quit(self) -> None:
        """Ctrl+C: cancel what is in flight; with nothing in flight ask whether to quit."""
        count = self.calls.cancel_all()
        if count:
            self.model.notify(f"cancelled {count} operation{'s' if count > 1 else ''}")
            return
        if self.execs.cancel_focused():  # the /exec command running here
            return
        if self.window.dialog is not None and self.window.dialog.kind == "quit":
            self.quit()
            return
        self.open_dialog(
            confirm_dialog(
                "quit",
                "Close Jarvis? The daemon keeps running and keeps delivering messages.",
                self.quit,
                self.window.close_dialog,
            )
        )

    def quit(self) -> None:
        """Close the UI (the daemon keeps running)."""
        self._save_draft()
        self.quitting = True
        if self._on_quit is not None:
            self._on_quit()

    _PRE_COMMANDS: dict[str, Callable[[Controller], Any]] = {
        **{f"switch_{n}": _switcher(n - 1) for n in range(1, 10)},
        "previous_conversation": lambda self: self._step_conversation(-1),
        "next_conversation": lambda self: self._step_conversation(1),
        "next_unread": lambda self: self._next_unread(),
        "focus_next": lambda self: self._move_focus(1),
        "focus_previous": lambda self: self._move_focus(-1),
        "scroll_up": lambda self: self._scroll("scroll_up"),
        "scroll_down": lambda self: self._scroll("scroll_down"),
        "scroll_top": lambda self: self._scroll("scroll_top"),
        "scroll_bottom": lambda self: self._scroll("scroll_bottom"),
        "help": lambda self: self.open_help(),
        "add_contact": lambda self: self.open_add_contact(),
        "my_identity": lambda self: self.open_identity(),
        "contact_info": lambda self: self.open_contact_info(),
        "settings": lambda self: self.open_settings(),
        "lock": lambda self: self.lock(),
        "cancel": lambda self: self.cancel_or_quit(),
        "close_dialog": lambda self: self._close_dialog(),
    }

    # daemon calls --------------------------------------------------------------------------

    def _call(
        self, method: str, params: dict[str, Any] | None = None, *, label: str | None = None
    ) -> defer.Deferred[Any]:
        """Call the daemon; with a *label* the call is an operation in flight (Ctrl+C cancels).

        :returns: the call's Deferred (fails with :class:`Unreachable` when not connected).
        """
        client = self.client
        if client is None:
            return defer.fail(Unreachable())
        try:
            d = client.call(method, params or {})
        except Exception:
            return defer.fail(Failure())
        if label is None:
            return d
        return self.calls.track(d, label)

    def _report(self, failure: Failure, what: str) -> None:
        """Errback: put a failed call on the status line and its details in the log."""
        text = error_text(failure)
        if is_cancel(failure):
            self.model.notify(f"{what}: cancelled")
        else:
            if getattr(failure.value, "kind", None) is None:
                self.log.failure("{what} failed", failure, what=what)
            else:
                kind = getattr(failure.value, "kind", None)
                self.log.info("{what} failed: {kind}", what=what, kind=kind)
            self.model.notify(f"{what} failed: {text}", "error")
            screen = self.window.screen
            if screen is not self.main_screen and hasattr(screen, "show_error"):
                screen.show_error(f"{what} failed: {text}")
        self.redraw()

    def _internal_error(self, failure: Failure, what: str) -> None:
        self.log.failure("internal error in {what}", failure, what=what)
        self.model.notify(f"internal error ({what}); details are in the log", "error")
        self.redraw()

    def _spin(self) -> None:
        self.main_screen.status.spinner_step += 1
        self.main_screen.status.refresh()
        self.redraw()

    # events --------------------------------------------------------------------------------

    def _event_received(self, name: str, payload: dict[str, Any]) -> None:
        try:
            self._apply_event(name, payload if isinstance(payload, dict) else {})
        except Exception:
            self.log.failure("handling event {event} failed", event=name)
            self.model.notify("could not show an update; details are in the log", "error")
        self.redraw()

    def _apply_event(self, name: str, payload: dict[str, Any]) -> None:
        self.model.apply_event(name, payload)
        reaction = reaction_to(name, payload, self._screen_state())
        if reaction is None:
            return
        if reaction is Reaction.SHOW_LOCK:
            self.show_lock()
        elif reaction is Reaction.LOAD_UNLOCKED:
            self._load_unlocked().addErrback(self._report, "loading")
        elif reaction is Reaction.MARK_READ:
            self._mark_read_soon.request()
        elif reaction is Reaction.BELL:
            if self._bell is not None:
                self._bell()
        elif reaction is Reaction.REFRESH_UNREAD:
            self._unread_refresh.request()
        elif reaction is Reaction.CLOSE_CONTACT_DIALOG:
            self.window.close_dialog()

    def _screen_state(self) -> ScreenState:
        dialog = self.window.dialog
        return ScreenState(
            current_uid=self.model.current_uid,
            on_main=self._on_main_screen(),
            lock_screen=isinstance(self.window.screen, LockScreen),
            unlocking=self._unlocking,
            notifications=self.model.notifications,
            contact_dialog_uid=dialog.uid if isinstance(dialog, ContactInfoDialog) else None,
            contacts=self.model.contacts,
        )

    def _fetch_unread(self) -> None:
        """Fetch ``messages.unreadCounts`` (once for a burst of read events)."""
        if self.client is None or self.model.locked:
            return
        d = self._call("messages.unreadCounts")
        d.addCallback(self.model.load_unread)
        d.addErrback(lambda f: self.log.info("unread counts: {e}", e=type(f.value).__name__))
        d.addCallback(lambda _: self.redraw())

    def _on_main_screen(self) -> bool:
        return self.window.screen is self.main_screen and not self.model.locked

    def _model_changed(self, what: str) -> None:
        if self.window.screen is self.main_screen or what in ("status", "reachable"):
            self.main_screen.refresh(what)
        if isinstance(self.window.screen, ConnectingScreen):
            self.window.screen.refresh()

    # conversations -------------------------------------------------------------------------

    def _save_draft(self) -> None:
        self.model.set_draft(self.model.current_uid, self.main_screen.input.edit_text)

    def open_conversation(self, uid: str) -> None:
        """Open *uid*'s conversation: keep the old draft, restore this one, load, mark read."""
        if uid not in self.model.contacts:
            return
        self._save_draft()
        self.model.open(uid)
        draft = self.model.draft(uid)
        self.main_screen.input.set_edit_text(draft)
        self.main_screen.input.set_edit_pos(len(draft))
        self.main_screen.conversations.select(uid)
        self.main_screen.focus_area("input")
        self._announce_focus()
        self._load_history(uid)

    def _load_history(self, uid: str) -> None:
        d = self._call("messages.history", {"contact": uid, "limit": HISTORY_PAGE})

        def loaded(result: Mapping[str, Any]) -> None:
            self.model.load_history(uid, result)
            if uid == self.model.current_uid and self._on_main_screen():
                self._mark_read(uid)

        d.addCallback(loaded)
        d.addErrback(self._report, "loading history")
        d.addCallback(lambda _: self.redraw())

    def _mark_open_read(self) -> None:
        uid = self.model.current_uid
        if uid is not None and self._on_main_screen():
            self._mark_read(uid)

    def _mark_read(self, uid: str) -> None:
        contact = self.model.contacts.get(uid)
        conversation = self.model.conversations.get(uid)
        unread_loaded = conversation is not None and any(
            m.direction == "in" and m.state == "received" and m.read is None
            for m in conversation.messages.values()
        )
        if contact is None or not (contact.unread or unread_loaded):
            return
        self.model.mark_read(uid)
        d = self._call("messages.markRead", {"contact": uid})
        d.addErrback(self._report, "marking read")

    def submit_input(self, text: str) -> None:
        """The input line's Enter: send a message or run a slash command."""
        if self.execs.submit(text):  # /exec (jarvis/ui/execview.py)
            return
        action = parse_input(text)
        if action is None:
            return
        self.model.clear_status()
        if isinstance(action, InputError):
            self.model.notify(action.text, "error")
        elif isinstance(action, SendText):
            uid = self.model.current_uid
            if uid is None:
                self.main_screen.input.set_edit_text(text)
                self.model.notify("open a conversation first (Alt+1), or /msg NAME TEXT", "error")
                return
            self.model.set_draft(uid, "")
            self.send(uid, action.text, restore=text)
        elif isinstance(action, SlashCommand):
            self._slash(action, text)

    def _slash(self, action: SlashCommand, line: str = "") -> None:
        if action.name == "quit":
            self.quit()
        elif action.name in ("lock", "help"):
            self.handle_command(action.name)
        elif action.name == "add":
            dialog = self.open_add_contact(action.args[0])
            dialog.submit()
        elif action.name == "msg":
            name, text = action.args
            self.message_to(name, text, restore=line or None)

    def message_to(self, name: str, text: str, *, restore: str | None = None) -> None:
        """``/msg NAME TEXT``: send *text* to the one contact called *name*.

        With no conversation open, NAME's conversation opens with the line in it (as irssi
        opens a query window); with another one open the UI stays there, and the status line
        says "sent to NAME" once the daemon took the message.  An unknown or ambiguous NAME
        sends nothing and names the candidates on the status line.

        :param restore: the typed line, put back into an empty input line if sending fails.
        """
        matches = self.model.find_contacts(name)
        if len(matches) != 1:
            self.model.notify(self.model.no_single_contact(name, matches), "error")
            return
        contact = matches[0]
        stay = self.model.current_uid not in (None, contact.uid)
        if self.model.current_uid is None:
            self.open_conversation(contact.uid)
        d = self.send(contact.uid, text, restore=restore, restore_anywhere=True)
        if stay:
            label = contact.display_name

            def confirm(sent: bool) -> None:
                if sent:
                    self.model.notify(f"sent to {label}")

            d.addCallback(confirm)

    def send(
        self, uid: str, text: str, *, restore: str | None = None, restore_anywhere: bool = False
    ) -> defer.Deferred[bool]:
        """Send *text* to *uid*; on failure put *restore* back into an empty input line.

        The line shows from the call's answer or from the ``message.added`` event, whichever
        comes first (once: both carry the message's id).

        :param restore_anywhere: restore even if another conversation is open by then (the
            line names its contact: ``/msg``).
        :returns: a Deferred firing with whether the daemon took the message.
        """
        d = self._call("messages.send", {"contact": uid, "text": text}, label="sending")

        def sent(result: Mapping[str, Any]) -> bool:
            try:
                self.model.add_message(Message.from_api(result))
            except (ValueError, AttributeError):
                pass
            return True

        def failed(failure: Failure) -> bool:
            here = restore_anywhere or uid == self.model.current_uid
            if restore is not None and here:
                if not self.main_screen.input.edit_text:
                    self.main_screen.input.set_edit_text(restore)
                    self.main_screen.input.set_edit_pos(len(restore))
            self._report(failure, "sending")
            return False

        d.addCallbacks(sent, failed)

        def drawn(outcome: bool) -> bool:
            self.redraw()
            return outcome

        return d.addCallback(drawn)

    # identity ------------------------------------------------------------------------------

    def create_identity(self, name: str, password: str) -> None:
        """Create the identity (the form checked the password was typed twice)."""
        d = self._call("identity.create", {"name": name, "password": password}, label="creating")
        screen = self.window.screen
        if isinstance(screen, CreateIdentityScreen):
            screen.show_note("Creating your identity (this takes a moment)... Ctrl+C cancels.")

        def created(result: Mapping[str, Any]) -> Any:
            self.model.load_identity(result)
            self.model.set_locked(False)
            return self._load_unlocked().addCallback(lambda _: self.open_identity())

        def failed(failure: Failure) -> None:
            screen = self.window.screen
            if isinstance(screen, CreateIdentityScreen):
                screen.show_error(error_text(failure))
            self._report(failure, "creating the identity")

        d.addCallbacks(created, failed)
        d.addErrback(self._report, "loading")

    def unlock(self, password: str) -> None:
        """Try *password*; only success leaves the lock screen."""
        d = self._call("identity.unlock", {"password": password}, label="unlocking")
        self._unlocking = True

        def done(result: Any) -> Any:
            self._unlocking = False
            return result

        d.addBoth(done)
        screen = self.window.screen
        if isinstance(screen, LockScreen):
            screen.show_note("Unlocking...")

        def unlocked(result: Mapping[str, Any]) -> Any:
            self.model.set_locked(False)
            self.model.load_identity(result)
            self.model.clear_status()
            return self._load_unlocked()

        def failed(failure: Failure) -> None:
            screen = self.window.screen
            kind = getattr(failure.value, "kind", None)
            text = "Wrong password." if kind == "wrong_password" else error_text(failure)
            if isinstance(screen, LockScreen):
                screen.show_error(text)
            if kind != "wrong_password":
                self._report(failure, "unlocking")
            self.redraw()

        d.addCallbacks(unlocked, failed)
        d.addErrback(self._report, "loading")

    def lock(self) -> None:
        """Ctrl+L: lock the daemon's identity and show the lock screen at once."""
        if self.model.has_identity is False:
            return
        self._save_draft()
        self.model.set_locked(True)
        self.show_lock()
        self._announce_focus()
        d = self._call("identity.lock", label="locking")
        d.addErrback(self._report, "locking")

    # dialogs -------------------------------------------------------------------------------

    def open_dialog(self, dialog: Dialog) -> None:
        """Show *dialog* over the current screen."""
        self.window.open_dialog(dialog)

    def open_help(self) -> None:
        """Show the keys (generated from the keymap)."""
        if self._on_main_screen():
            self.open_dialog(help_dialog(self.window.close_dialog))

    def open_add_contact(self, initial: str = "") -> AddContactDialog:
        """Show the add-contact dialog (optionally with a link code typed in)."""
        dialog = AddContactDialog(
            lambda link, name, verified: self.add_contact(dialog, link, name, verified),
            self.window.close_dialog,
            initial,
        )
        if self._on_main_screen():
            self.open_dialog(dialog)
        return dialog

    def add_contact(self, dialog: AddContactDialog, link: str, name: str, verified: bool) -> None:
        """Add a contact from a link code, or from a card file read off the reactor thread."""
        if link.startswith("jarvis://") or self._read_file is None:
            source: defer.Deferred[Any] = defer.succeed({"link": link})
        else:
            path = os.path.abspath(os.path.expanduser(link))
            source = self._read_file(path).addCallback(lambda text: {"card": text})
        params_extra: dict[str, Any] = {"verified": verified}
        if name:
            params_extra["name"] = name

        def call(params: dict[str, Any]) -> Any:
            return self._call("contacts.add", {**params, **params_extra}, label="adding contact")

        def added(result: Mapping[str, Any]) -> None:
            contact = self.model.upsert_contact(result)
            dialog.show_added(contact, lambda: self._verify_added(dialog, contact.uid))
            self.model.notify(f"added {contact.display_name}")

        def failed(failure: Failure) -> None:
            dialog.show_error(error_text(failure))
            self._report(failure, "adding the contact")

        source.addCallback(call).addCallbacks(added, failed)

    def _verify_added(self, dialog: AddContactDialog, uid: str) -> None:
        def done(contact: Contact) -> None:
            dialog.show_added(contact, lambda: None)

        self.update_contact(uid, {"verified": True}, "verifying").addCallback(done)

    def update_contact(self, uid: str, changes: dict[str, Any], label: str) -> defer.Deferred[Any]:
        """Call ``contacts.update`` and take in the result.

        :returns: a Deferred firing with the updated :class:`Contact` (errors are reported and
            the Deferred never fires with them).
        """
        d = self._call("contacts.update", {"contact": uid, **changes}, label=label)
        result: defer.Deferred[Any] = defer.Deferred()

        def updated(data: Mapping[str, Any]) -> None:
            result.callback(self.model.upsert_contact(data))

        d.addCallbacks(updated, self._report, errbackArgs=(label,))
        d.addErrback(self._internal_error, label)
        return result

    def open_identity(self) -> None:
        """Show my identity (fetching it from the daemon)."""
        if not self._on_main_screen():
            return
        d = self._call("identity.show", label="loading identity")

        def show(data: Mapping[str, Any]) -> None:
            self.model.load_identity(data)
            identity = self.model.identity
            if identity is None or not self._on_main_screen():
                return
            card = data.get("card") if isinstance(data.get("card"), str) else None
            dialog: IdentityDialog | None = None

            def export(path: str) -> None:
                assert dialog is not None
                self._export_card(dialog, path, card or identity.link + "\n")

            def copy() -> None:
                assert dialog is not None
                if self._clipboard is None:
                    dialog.show_note("no clipboard here: select the link code with the mouse")
                    return
                self._clipboard(identity.link)
                dialog.show_note("link code copied (needs a terminal with OSC 52 support)")

            dialog = IdentityDialog(identity, export, copy, self.window.close_dialog)
            self.open_dialog(dialog)

        d.addCallbacks(show, self._report, errbackArgs=("loading the identity",))
        d.addErrback(self._internal_error, "identity dialog")
        d.addCallback(lambda _: self.redraw())

    def _export_card(self, dialog: IdentityDialog, path: str, text: str) -> None:
        if self._write_file is None:
            dialog.show_note("exporting is not available here", "error")
            return
        full = os.path.abspath(os.path.expanduser(path))
        d = self._write_file(full, text)

        def written(_: Any) -> None:
            dialog.show_note(f"card written to {full}")

        def failed(failure: Failure) -> None:
            reason = getattr(failure.value, "strerror", None) or type(failure.value).__name__
            dialog.show_note(f"could not write {full}: {reason}", "error")

        d.addCallbacks(written, failed)
        d.addBoth(lambda _: self.redraw())

    def _target_contact(self) -> Contact | None:
        if self.main_screen.area == "list":
            uid = self.main_screen.conversations.selected_uid()
            if uid is not None:
                return self.model.contacts.get(uid)
        return self.model.current

    def open_contact_info(self, contact: Contact | None = None) -> None:
        """Show the open (or selected) contact's details and actions."""
        if not self._on_main_screen():
            return
        contact = contact or self._target_contact()
        if contact is None:
            self.model.notify("no conversation open: Alt+1 opens the first", "error")
            return
        uid = contact.uid

        def refresh(updated: Contact) -> None:
            dialog = self.window.dialog
            if isinstance(dialog, ContactInfoDialog) and dialog.uid == uid:
                self.open_contact_info(updated)

        actions: Callbacks = {
            "rename": lambda name: (
                self.update_contact(uid, {"name": name}, "renaming").addCallback(refresh)
                if name
                else None
            ),
            "verify": lambda value: self.update_contact(
                uid, {"verified": value}, "verifying"
            ).addCallback(refresh),
            "block": lambda value: self.update_contact(
                uid, {"blocked": value}, "blocking" if value else "unblocking"
            ).addCallback(refresh),
            "remove": lambda: self._confirm_remove(uid),
            "close": self.window.close_dialog,
        }
        self.open_dialog(ContactInfoDialog(contact, actions, now=self.clock.seconds()))
        d = self._call("peers.status")

        def health(status: Mapping[str, Any]) -> None:
            dialog = self.window.dialog
            if not (isinstance(dialog, ContactInfoDialog) and dialog.uid == uid):
                return
            for peer in status.get("peers") or ():
                if isinstance(peer, Mapping) and peer.get("uid") == uid:
                    current = self.model.contacts.get(uid, contact)
                    now = self.clock.seconds()
                    self.open_dialog(ContactInfoDialog(current, actions, peer, now))

        d.addCallback(health)
        d.addErrback(lambda f: self.log.info("no health figures: {e}", e=type(f.value).__name__))
        d.addCallback(lambda _: self.redraw())

    def _confirm_remove(self, uid: str) -> None:
        contact = self.model.contacts.get(uid)
        if contact is None:
            return

        def remove(history: bool) -> None:
            d = self._call(
                "contacts.remove", {"contact": uid, "with_history": history}, label="removing"
            )

            def removed(_: Any) -> None:
                self.model.remove_contact(uid)
                self.window.close_dialog()
                self.model.notify(f"removed {contact.display_name}")

            d.addCallbacks(removed, self._report, errbackArgs=("removing",))

        rows = [
            urwid_text(
                f"Remove {contact.display_name}? You will need their link code to add them again."
            ),
            button("No, keep", self.window.close_dialog),
            button("Remove, keep the history", lambda: remove(False)),
            button("Remove and delete the history", lambda: remove(True)),
        ]
        self.open_dialog(Dialog("remove", "Remove contact", rows))

    def open_settings(self) -> None:
        """Show settings: notifications, read receipts and mute per contact."""
        if not self._on_main_screen():
            return

        def toggle(setting: str, uid: str | None, value: bool) -> None:
            if setting == "notifications":
                self.model.notifications = value
                self.model.notify(f"notifications {'on' if value else 'off'}")
                # the daemon raises the desktop notifications; the UI rings the bell
                d = self._call("settings.set", {"notifications": value, "bell": value})
                d.addErrback(self._report, "saving settings")
            elif setting == "previews":
                self.model.previews = value
                d = self._call("settings.set", {"previews": value})
                d.addErrback(self._report, "saving settings")
            elif uid is not None:
                self.update_contact(uid, {setting: value}, "saving")

        self.open_dialog(SettingsDialog(self.model, toggle, self.window.close_dialog))


def urwid_text(text: str) -> Any:
    """A plain text row (kept here so the controller needs no other urwid names)."""
    import urwid

    return urwid.Text(text)
