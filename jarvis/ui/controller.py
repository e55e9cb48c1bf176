"""The UI's controller: wires the parts, loads the daemon's state, carries out events, redraws.

It owns the :class:`~jarvis.ui.model.MessengerModel` and the top window, and wires the parts
that each own one concern, through the :class:`~jarvis.ui.host.UiHost` seam: the daemon link
(:mod:`jarvis.ui.link`, ``ClientService`` reconnecting with backoff on an injected clock),
calls in flight (:mod:`jarvis.ui.calls`, Ctrl+C cancels), key routing (:mod:`jarvis.ui.keys`),
event reactions (:mod:`jarvis.ui.events`), dialogs and identity forms
(:mod:`jarvis.ui.dialogs`), the input line's sending and slash commands
(:mod:`jarvis.ui.sending`) and reading conversations (:mod:`jarvis.ui.reading`).  Itself it
keeps the link's handshake (subscribe, reload the state: also after ``$/lagged`` and an unlock
elsewhere), the screens shown, the daemon calls with their error reporting, and the redraw after
network events (urwid only redraws after input), once per reactor turn however many events the
turn brought, and on average at most once per :data:`FRAME_INTERVAL`.

It must not let an exception reach urwid or the IPC client: failures become one line on the
status bar and the details go to the log (never message text, passwords or tokens).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from jarvis.common.textsafe import terminal_safe
from jarvis.runtime.turn import OncePerFrame, OncePerTurn
from jarvis.ui import completion
from jarvis.ui.calls import CallsInFlight, Unreachable, error_text, is_cancel
from jarvis.ui.dialogs import Dialogs
from jarvis.ui.events import Reaction, ScreenState, reaction_to
from jarvis.ui.execview import ExecRuns
from jarvis.ui.grouping import GroupActions
from jarvis.ui.keys import KeyRouter
from jarvis.ui.link import FIRST_RETRY, DaemonLink
from jarvis.ui.model import GROUP_PREFIX, MessengerModel, is_group, transfer_conversation
from jarvis.ui.offerdialog import OfferDialog
from jarvis.ui.reading import Reader
from jarvis.ui.screens import (
    AppWindow,
    ConnectingScreen,
    ContactInfoDialog,
    CreateIdentityScreen,
    LockScreen,
    MainScreen,
    WelcomeScreen,
    confirm_dialog,
)
from jarvis.ui.sending import Sender

Callbacks = dict[str, Callable[..., Any]]

#: The least average time between two draws that network events ask for (30 a second once a
#: burst lasts, three at once allowed: :class:`~jarvis.runtime.turn.OncePerFrame`): a folder of
#: 500 files arriving drew the screen at every reactor turn, hundreds of times a second, most of
#: the UI's CPU (docs/benchmarks.md, "The UI while a folder arrives").
FRAME_INTERVAL = 1 / 30


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
        self._redraw = OncePerFrame(clock, self._draw, FRAME_INTERVAL)
        self.main_screen = MainScreen(self.model, self._submit_input, self.open_conversation, tz)
        self.window = AppWindow(
            ConnectingScreen(self.model),
            lambda state, key: self.keys.before_widgets(state, key),
            lambda state, key: self.keys.after_widgets(state, key),
        )
        self.dialogs = Dialogs(
            self, read_file=read_file, write_file=write_file, clipboard=clipboard
        )
        self.groups = GroupActions(self)
        self.sender = Sender(
            self,
            self.dialogs.open_add_contact,
            self.groups,
            mailbox=self.dialogs.mailbox_command,
        )
        self.reader = Reader(self, self.groups)
        self.dialogs.groups = self.groups
        #: Lists a folder off the reactor thread for ``/file`` path completion (Tab).
        self.list_dir: Callable[[str], defer.Deferred[list[tuple[str, bool]]]] = lambda directory: (
            threads.deferToThread(completion.listing, directory)
        )
        #: Whether a ``/file`` path is a folder (sent whole), asked off the reactor thread.
        self.is_folder: Callable[[str], defer.Deferred[bool]] = lambda path: threads.deferToThread(
            completion.is_folder, path
        )
        #: Expands a ``/file`` pattern (``~/photos/*.jpg``) off the reactor thread.
        self.expand_paths: Callable[[str], defer.Deferred[list[str]]] = lambda pattern: (
            threads.deferToThread(completion.matching, pattern)
        )
        self.keys = KeyRouter(
            self,
            {
                "complete_input": self.complete_file_path,
                "help": self.dialogs.open_help,
                "add_contact": self.dialogs.open_add_contact,
                "my_identity": self.dialogs.open_identity,
                "contact_info": self.dialogs.open_contact_info,
                "settings": self.dialogs.open_settings,
                "lock": self.dialogs.lock,
                "cancel": self.cancel_or_quit,
                # the lock screen is a screen, not a dialog: Esc can never close it
                "close_dialog": self.window.close_dialog,
            },
            self.reader.load_older,
        )
        self._unread_refresh = OncePerTurn(clock, self.reader.fetch_unread)
        self._mark_read_soon = OncePerTurn(clock, self.reader.mark_open_read)
        self._paths_refresh = OncePerTurn(clock, self.fetch_paths)
        #: Offers the daemon said it accepts by itself (``auto_accept``), not prompted for:
        #: if it cannot (no room, no folder), its ``transfer.changed`` says why and we ask.
        self._accepting_by_itself: set[str] = set()
        self.model.observe(self._model_changed)
        # /exec: running local programs and their output lines (jarvis/ui/execview.py)
        self.execs = ExecRuns(
            self.model,
            clock,
            client=lambda: self.client,
            send=lambda uid, text: self.sender.send(uid, text),
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
        for pending in (
            self._unread_refresh,
            self._redraw,
            self._mark_read_soon,
            self._paths_refresh,
        ):
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
        per event; and a burst spread over many turns (a folder's files arriving) is drawn at
        most once per :data:`FRAME_INTERVAL`.  Keys are drawn by urwid itself, at once.
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
        d = self.call("daemon.status")
        early: defer.Deferred[Any] | None = None
        if self.model.has_identity is not False and not self.model.locked:
            early = self._request_unlocked()

        def got_status(status: Mapping[str, Any]) -> Any:
            self.model.load_status(status)
            if self.model.has_identity and not self.model.locked:
                return self.load_unlocked(early)
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
            self.call("identity.show"),
            self.call("contacts.list"),
            self.call("messages.unreadCounts"),
            self.call("peers.status"),
        ]
        return defer.gatherResults(calls, consumeErrors=True)

    def load_unlocked(self, requested: defer.Deferred[Any] | None = None) -> defer.Deferred[Any]:
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

    def announce_focus(self) -> None:
        """Tell the daemon which conversation this UI shows (no desktop notification for it)."""
        uid = self.model.current_uid if self.on_main_screen() else None
        if self.client is None:
            return
        shown = {"contact": uid}
        if uid is not None and is_group(uid):
            shown = {"group": uid[len(GROUP_PREFIX) :]}
        d = self.call("ui.focus", shown)
        d.addErrback(lambda f: self.log.info("ui.focus: {e}", e=type(f.value).__name__))

    def _load_settings(self) -> defer.Deferred[Any]:
        def loaded(settings: Mapping[str, Any]) -> None:
            if isinstance(settings, Mapping) and "notifications" in settings:
                self.model.notifications = bool(settings.get("bell", settings["notifications"]))
                self.model.previews = bool(settings.get("previews", False))

        d = self.call("settings.get")
        d.addCallback(loaded)
        d.addErrback(lambda f: self.log.info("settings: {e}", e=type(f.value).__name__))
        return d

    def fetch_paths(self) -> defer.Deferred[Any]:
        """Ask ``mailbox.status`` for the path per contact (direct, mailbox, none), and for the
        settings' Mailbox section when that dialog is open."""
        d = self.call("mailbox.status")

        def loaded(status: Mapping[str, Any]) -> None:
            self.model.load_paths(status)
            self.dialogs.mailbox_status_arrived(status)

        d.addCallback(loaded)
        d.addErrback(lambda f: self.log.info("mailbox.status: {e}", e=type(f.value).__name__))
        d.addCallback(lambda _: self.redraw())
        return d

    def fetch_transfers(self) -> defer.Deferred[Any]:
        """Ask ``files.list`` for the transfers (offers that came while no UI ran, files
        streaming, transfers that ended) and show them in their conversations; the status
        line says how many offers wait for an answer."""
        d = self.call("files.list")

        def loaded(result: Mapping[str, Any]) -> None:
            if not isinstance(result, Mapping):
                return
            self.model.load_transfers(result)
            if self.model.status is None:
                self.model.show_offers_notice()
            self.redraw()

        d.addCallback(loaded)
        d.addErrback(lambda f: self.log.info("files.list: {e}", e=type(f.value).__name__))
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
        self.fetch_paths()
        self.fetch_transfers()
        self.groups.reload()
        self.announce_focus()
        uid = self.model.current_uid
        if uid is not None:
            self.reader.load_history(uid)
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
        self.window.show(CreateIdentityScreen(self.dialogs.create_identity))

    def show_lock(self) -> None:
        """Show the lock screen, dropping every conversation from the screen."""
        self.save_draft()
        self._stop_banner()
        if not isinstance(self.window.screen, LockScreen):
            name = self.model.identity.name if self.model.identity else ""
            self.window.show(LockScreen(name, self.dialogs.unlock))
        self.main_screen.refresh()

    # keys ----------------------------------------------------------------------------------

    def handle_command(self, name: str) -> None:
        """Run keymap command *name* as if its key had been pressed (for slash commands)."""
        self.keys.run(name)

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
        self.window.open_dialog(
            confirm_dialog(
                "quit",
                "Close Jarvis? The daemon keeps running and keeps delivering messages.",
                self.quit,
                self.window.close_dialog,
            )
        )

    def quit(self) -> None:
        """Close the UI (the daemon keeps running)."""
        self.save_draft()
        self.quitting = True
        if self._on_quit is not None:
            self._on_quit()

    # daemon calls --------------------------------------------------------------------------

    def call(
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

    def report(self, failure: Failure, what: str) -> None:
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

    def internal_error(self, failure: Failure, what: str) -> None:
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
        if name == "transfer.offered":
            self._prompt_offer(payload)
        elif name == "transfer.changed":
            self._close_answered_offer()
            self._ask_if_not_accepted(payload)
        reaction = reaction_to(name, payload, self._screen_state())
        if reaction is None:
            return
        if reaction is Reaction.SHOW_LOCK:
            self.show_lock()
        elif reaction is Reaction.LOAD_UNLOCKED:
            self.load_unlocked().addErrback(self.report, "loading")
        elif reaction is Reaction.MARK_READ:
            self._mark_read_soon.request()
        elif reaction is Reaction.BELL:
            if self._bell is not None:
                self._bell()
        elif reaction is Reaction.REFRESH_UNREAD:
            self._unread_refresh.request()
        elif reaction is Reaction.REFRESH_PATHS:
            self._paths_refresh.request()
        elif reaction is Reaction.REFRESH_GROUPS:
            self.groups.reload()
        elif reaction is Reaction.CLOSE_CONTACT_DIALOG:
            self.window.close_dialog()
        elif reaction is Reaction.RECONNECT:
            dropped = payload.get("dropped")
            missed = f"missed {dropped} updates" if isinstance(dropped, int) else "missed updates"
            self.log.info("the daemon dropped {dropped} events for this UI", dropped=dropped)
            self.link.reconnect()  # first: the retry note would hide the reason
            self.model.notify(f"this UI read too slowly and {missed}: reloading", "error")

    def _prompt_offer(self, payload: Mapping[str, Any]) -> None:
        """Open the accept prompt for an offer that arrives in the open conversation; for a
        file of a folder sent whole, its answer goes to every file of that folder waiting."""
        t = payload.get("transfer")
        if not isinstance(t, Mapping) or t.get("state") != "offered" or t.get("direction") != "in":
            return
        if payload.get("auto_accept"):
            # the daemon accepts it by itself: nothing to ask, unless it cannot
            self._accepting_by_itself.add(str(t.get("id", "")))
            return
        uid = t.get("contact")
        if (
            transfer_conversation(t) != self.model.current_uid
            or not self.on_main_screen()
            or self.window.dialog
        ):
            return
        contact = self.model.contacts.get(str(uid))
        name = terminal_safe(str(t.get("contact_name") or "a contact"), keep_newlines=False)
        sender = contact.display_name if contact is not None else name
        answer = self.sender.answer_file
        folder_id = t.get("folder_id")
        if isinstance(folder_id, str) and folder_id:

            def answer(verb: str, args: tuple[str, ...]) -> None:
                self.sender.answer_all(verb, args[1] if len(args) > 1 else None, folder_id)

        self.window.open_dialog(OfferDialog(t, sender, answer, self.window.close_dialog))

    def _ask_if_not_accepted(self, payload: Mapping[str, Any]) -> None:
        """Prompt for an offer the daemon meant to accept by itself and could not: it waits,
        its reason saying why (the prompt shows it)."""
        t = payload.get("transfer")
        if not isinstance(t, Mapping):
            return
        tid = str(t.get("id", ""))
        if tid not in self._accepting_by_itself:
            return
        if t.get("state") != "offered":
            self._accepting_by_itself.discard(tid)
        elif t.get("reason"):
            self._accepting_by_itself.discard(tid)
            self._prompt_offer({"transfer": t, "auto_accept": False})

    def _close_answered_offer(self) -> None:
        """Close the accept prompt once nothing it asks about waits any more (answered from
        another client or the command line, cancelled by the sender): for a folder's prompt,
        once no file of that folder waits."""
        dialog = self.window.dialog
        if not isinstance(dialog, OfferDialog):
            return
        waiting = self.model.waiting_offers
        if dialog.folder_id:
            if any(folder == dialog.folder_id for _uid, _at, folder in waiting.values()):
                return
        elif dialog.transfer_id in waiting:
            return
        self.window.close_dialog()

    def _screen_state(self) -> ScreenState:
        dialog = self.window.dialog
        return ScreenState(
            current_uid=self.model.current_uid,
            on_main=self.on_main_screen(),
            lock_screen=isinstance(self.window.screen, LockScreen),
            unlocking=self.dialogs.unlocking,
            notifications=self.model.notifications,
            contact_dialog_uid=dialog.uid if isinstance(dialog, ContactInfoDialog) else None,
            contacts=self.model.contacts,
            me=self.model.identity.uid if self.model.identity is not None else None,
        )

    def on_main_screen(self) -> bool:
        return self.window.screen is self.main_screen and not self.model.locked

    def _model_changed(self, what: str) -> None:
        if self.window.screen is self.main_screen or what in ("status", "reachable"):
            self.main_screen.refresh(what)
        if isinstance(self.window.screen, ConnectingScreen):
            self.window.screen.refresh()

    # conversations -------------------------------------------------------------------------

    def connected(self) -> bool:
        """Whether the daemon is connected now."""
        return self.client is not None

    def complete_file_path(self) -> bool:
        """Complete the path of a ``/file PATH`` being typed (Tab in the input line).

        :returns: whether the input line holds ``/file ...`` (then Tab completes, not moves).
        """
        edit = self.main_screen.input
        text = edit.edit_text
        typed = completion.file_argument(text)
        if typed is None:
            return False

        def listed(entries: list[tuple[str, bool]]) -> None:
            if edit.edit_text != text:
                return  # typed on meanwhile: this listing is stale
            new, matches = completion.complete(typed, entries)
            edit.set_edit_text(completion.FILE_COMMAND + new)
            edit.set_edit_pos(len(edit.edit_text))
            if not matches:
                self.model.notify("no file matches")
            elif len(matches) > 1:
                self.model.notify(completion.candidates_text(matches))
            self.redraw()

        d = self.list_dir(completion.listing_directory(typed))
        d.addCallback(listed)
        d.addErrback(lambda f: self.log.failure("listing a folder for completion failed", f))
        return True

    def _submit_input(self, text: str) -> None:
        """The input line's Enter: ``/exec`` (:mod:`jarvis.ui.execview`), else the sender."""
        if not self.execs.submit(text):
            self.sender.submit_input(text)

    def open_conversation(self, uid: str) -> None:
        """Open *uid*'s conversation: keep the old draft, restore this one, load, mark read."""
        self.reader.open_conversation(uid)

    def save_draft(self) -> None:
        self.model.set_draft(self.model.current_uid, self.main_screen.input.edit_text)
