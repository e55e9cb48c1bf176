"""Start the terminal UI: reactor, urwid main loop, connection to (or start of) the daemon.

:func:`run` is what ``jarvis`` (no subcommand) calls.  It installs the asyncio reactor, builds
the urwid ``MainLoop`` on ``TwistedEventLoop``, lets Ctrl+C reach the UI, connects to the daemon
of a data directory with :class:`jarvis.ipc.client.IpcClient`, starts a detached daemon through
``reactor.spawnProcess`` when none answers (or runs the daemon's service tree in this process,
built by the ``embedded_service`` callable the composition root hands over: the UI never imports
the daemon), and shuts down gracefully in a "before shutdown" trigger.  Closing the UI
leaves a detached daemon running.

The UI's log goes to ``ui.log`` in the data directory (never to the terminal); no traceback
reaches the screen.  This module must not contain UI behaviour: that is the controller's.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

UI_LOGFILE = "ui.log"

log = Logger()


def osc52(text: str) -> str:
    """Return the OSC 52 escape sequence that asks the terminal to put *text* on the clipboard."""
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return f"\x1b]52;c;{encoded}\x07"


def write_private_file(path: str, text: str) -> None:
    """Write *text* to *path* (mode 0600, replacing it atomically: a symbolic link or another
    user's file there is replaced, never written through).  Blocking: run it in a thread."""
    from jarvis.common.atomicfile import write_text_atomically

    write_text_atomically(path, text, mode=0o600)


def read_text_file(path: str, limit: int = 1 << 20) -> str:
    """Read up to *limit* bytes of *path* as UTF-8.  Blocking: run it in a thread.

    :raises ValueError: if the file is larger than *limit*.
    """
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is too large for a contact card")
    return data.decode("utf-8")


class DaemonConnector:
    """The controller's ``connect()``: attach to the daemon, starting one the first time needed.

    :param reactor: the reactor.
    :param data_dir: the data directory (its endpoint file is re-read on every attempt).
    :param endpoint: a fixed endpoint description instead of the data directory's.
    :param start_daemon: spawn a detached daemon when none answers (once).
    :param report: shows a one-line problem on the status bar.
    :param daemon_args: more ``twistd jarvis`` options for the daemon it starts (``--listen``);
        without them, the options the data directory's last daemon recorded.
    """

    def __init__(
        self,
        reactor: Any,
        data_dir: str,
        *,
        endpoint: str | None = None,
        start_daemon: bool = True,
        report: Callable[[str], None] | None = None,
        daemon_args: Sequence[str] = (),
    ) -> None:
        self._reactor = reactor
        self._data_dir = data_dir
        self._endpoint = endpoint
        self._start_daemon = start_daemon
        self._report = report or (lambda line: None)
        self._daemon_args = list(daemon_args)
        self.spawned = False

    def _description(self) -> tuple[str, str | None]:
        from jarvis.common import paths

        description = self._endpoint or paths.client_endpoint_for(self._data_dir)
        return description, paths.client_token_for(self._data_dir, description)

    def __call__(self) -> defer.Deferred[Any]:
        from jarvis.ipc.client import IpcClient

        try:
            description, token = self._description()
            d = IpcClient.connect(self._reactor, description, token=token)
        except Exception:
            d = defer.fail(Failure())

        def failed(failure: Failure) -> Failure:
            if self._start_daemon and not self.spawned and self._endpoint is None:
                from jarvis.app import launcher

                # a daemon killed a moment ago may still be a zombie, which twistd and the lock
                # take for a running daemon: start the replacement on a later attempt
                if launcher.previous_daemon_lingers(self._data_dir):
                    log.info("the previous daemon has not been reaped yet; starting one later")
                else:
                    self.spawn()
            return failure

        return d.addErrback(failed)

    def spawn(self) -> None:
        """Start a detached daemon for the data directory (twistd forks and exits)."""
        self.spawned = True
        try:
            from jarvis.app import launcher

            # without options of its own, the replacement listens where the last daemon of this
            # data directory did (its daemon.json), not on the defaults
            daemon_args = self._daemon_args or launcher.replacement_argv(self._data_dir)
            ended = launcher.spawn_detached_daemon(self._reactor, self._data_dir, daemon_args)
            ended.addCallback(self._spawn_ended)
            log.info("starting a daemon for {data_dir}", data_dir=self._data_dir)
        except Exception:
            log.failure("could not start the daemon")
            self._report("could not start the daemon; details are in ui.log")

    def _spawn_ended(self, ended: tuple[int, str]) -> None:
        code, output = ended
        if code:
            lines = output.strip().splitlines()
            line = lines[-1] if lines else f"the daemon exited with status {code}"
            self._report(line[:200])


def make_screen() -> Any:
    """urwid's raw terminal screen, on which Ctrl+C is a key and Ctrl+Z suspends cleanly.

    Ctrl+C must reach the UI (it cancels the operation in flight) instead of raising SIGINT.
    Ctrl+Z is urwid's: on SIGTSTP it gives the terminal back as it found it (Ctrl+C a signal
    again, for the shell) and stops the process; on resume it starts the screen again and
    redraws all of it.  Every start therefore turns Ctrl+C into a key again: set only once,
    before the first start, Ctrl+C would kill the UI after the first Ctrl+Z and ``fg``.
    """
    import urwid

    class Screen(urwid.display.raw.Screen):  # type: ignore[misc,name-defined]
        def start(self, *args: Any, **kwargs: Any) -> Any:
            started = super().start(*args, **kwargs)
            self.tty_signal_keys(intr="undefined")
            return started

    return Screen()


def _start_logging(data_dir: str) -> Any:
    """Send the UI's log to ``ui.log`` in *data_dir* (or nowhere), never to the terminal."""
    from jarvis.common import logs

    try:
        f: Any = logs.open_private_append(os.path.join(data_dir, UI_LOGFILE))
    except OSError:
        f = open(os.devnull, "w", encoding="utf-8")
    predicate: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    text_observer: Any = textFileLogObserver(f)
    observer: Any = FilteringLogObserver(text_observer, [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    return f


def run(
    data_dir: Any,
    *,
    endpoint: str | None = None,
    embedded_service: Callable[[Any, str], Any] | None = None,
    start_daemon: bool = True,
    theme: str = "default",
    daemon_args: Sequence[str] = (),
) -> int:
    """Run the terminal UI until the user quits.

    :param data_dir: the Jarvis data directory whose daemon to attach to, or the ``jarvis``
        command's parsed options (:class:`jarvis.app.cli.Options`, whose ``data_dir()`` names it).
    :param endpoint: an IPC endpoint description to use instead of the data directory's.
    :param embedded_service: ``(reactor, data_dir) -> IService``: run the daemon's services it
        builds in this process instead of attaching to a separate daemon (they stop when the UI
        closes).  The composition root (:mod:`jarvis.app.cli`) passes
        :func:`jarvis.app.daemon.make_embedded_service`.
    :param start_daemon: start a detached daemon if none answers.
    :param theme: a palette theme (``default``, ``light``, ``mono``; ``NO_COLOR`` forces mono).
    :param daemon_args: more ``twistd jarvis`` options for a daemon the UI starts (e.g.
        ``["--listen", "tcp:0:interface=127.0.0.1"]``).
    :returns: the process exit status (0 after a normal quit).
    """
    if not isinstance(data_dir, str) and callable(getattr(data_dir, "data_dir", None)):
        # ``jarvis`` with no command passes its parsed options.
        data_dir = data_dir.data_dir()
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        sys.stderr.write("jarvis: the terminal UI needs a terminal (stdin and stdout)\n")
        return 2
    from jarvis.common import paths
    from jarvis.runtime import reactor as jreactor

    try:
        reactor = jreactor.install()
        data_dir = paths.ensure_data_dir(data_dir)
    except Exception as e:
        sys.stderr.write(f"jarvis: {e}\n")
        return 1
    log_file = _start_logging(data_dir)
    try:
        return _run(reactor, data_dir, endpoint, embedded_service, start_daemon, theme, daemon_args)
    except Exception as e:
        log.failure("the UI stopped with an error")
        sys.stderr.write(f"jarvis: the UI stopped: {type(e).__name__} (details in {UI_LOGFILE})\n")
        return 1
    finally:
        log_file.flush()


def _run(
    reactor: Any,
    data_dir: str,
    endpoint: str | None,
    embedded_service: Callable[[Any, str], Any] | None,
    start_daemon: bool,
    theme: str,
    daemon_args: Sequence[str] = (),
) -> int:
    import urwid

    from jarvis.ui.controller import Controller
    from jarvis.ui.palette import palette

    screen = make_screen()
    saved_keys = screen.tty_signal_keys()
    controller_box: list[Controller] = []

    def report(line: str) -> None:
        if controller_box:
            controller_box[0].model.notify(line, "error")
            controller_box[0].redraw()

    connector = DaemonConnector(
        reactor,
        data_dir,
        endpoint=endpoint,
        start_daemon=start_daemon and embedded_service is None,
        report=report,
        daemon_args=daemon_args,
    )

    def quit_ui() -> None:
        if reactor.running:
            reactor.stop()

    def terminal_write(data: str) -> None:
        try:
            screen.write(data)
            screen.flush()
        except Exception:
            log.failure("terminal write failed")

    controller = Controller(
        connector,
        reactor,
        read_file=lambda path: threads.deferToThread(read_text_file, path),
        write_file=lambda path, text: threads.deferToThread(write_private_file, path, text),
        clipboard=lambda text: terminal_write(osc52(text)),
        bell=lambda: terminal_write("\a"),
        on_quit=quit_ui,
    )
    controller_box.append(controller)

    if os.environ.get("NO_COLOR"):
        theme = "mono"
    loop = urwid.MainLoop(
        controller.window,
        palette(theme),
        screen=screen,
        event_loop=urwid.TwistedEventLoop(reactor=reactor, manage_reactor=True),
        handle_mouse=False,
    )
    controller.attach_main_loop(loop)

    service: Any = None
    if embedded_service is not None:
        service = embedded_service(reactor, data_dir)
        # as twistd does: bind the listeners first (a failed listen raises here), then start
        service.privilegedStartService()
        reactor.callWhenRunning(service.startService)

    def shutdown() -> defer.Deferred[Any]:
        d = controller.stop()
        if service is not None and service.running:
            d.addBoth(lambda _: service.stopService())
        return d

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.callWhenRunning(controller.start)
    try:
        loop.run()
    finally:
        try:
            if saved_keys:
                screen.tty_signal_keys(*saved_keys)
        except Exception:
            log.failure("restoring the terminal's signal keys failed")
    return 0
