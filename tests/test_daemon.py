"""Tests for the twistd plugin, the daemon's options and its service tree."""

from __future__ import annotations

import os
import signal
import stat
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jarvis.app import daemon
from jarvis.common import paths
from tests.daemons import DaemonProcess, short_tempdir


def make_options(*argv: str) -> daemon.DaemonOptions:
    options = daemon.DaemonOptions()
    options.parseOptions(list(argv))
    return options


class PluginTests(SynchronousTestCase):
    def test_plugin_discovered(self) -> None:
        """When twistd looks for service makers, then 'jarvis' is among them with its options."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("jarvis", makers)
        self.assertIs(makers["jarvis"].options, daemon.DaemonOptions)


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """When no option is given, then the data dir comes from JARVIS_HOME and the documented
        peer port is used."""
        home = self.mktemp()
        self.patch(os, "environ", {**os.environ, "JARVIS_HOME": home})
        options = make_options()
        self.assertEqual(options["data-dir"], os.path.abspath(home))
        self.assertEqual(options["listen"], "tcp:7770")
        self.assertEqual(options["advertise"], [])
        self.assertIsNone(options["password-file"])

    def test_advertise_repeats(self) -> None:
        """When --advertise is given twice, then both addresses are kept in order."""
        options = make_options("--advertise", "a.example:1", "--advertise", "[::1]:2")
        self.assertEqual(options["advertise"], ["a.example:1", "[::1]:2"])

    def test_bad_log_level(self) -> None:
        """When --log-level names no level, then parsing fails naming the choices."""
        exc = self.assertRaises(usage.UsageError, make_options, "--log-level", "loud")
        self.assertIn("debug", str(exc))


class ServiceTreeTests(SynchronousTestCase):
    def test_tree_on_memory_reactor(self) -> None:
        """When the service is built and started on a memory reactor, then the peer and API
        listeners are bound and the data directory is private."""
        data_dir = os.path.join(self.mktemp(), "data")
        sock_dir = short_tempdir(self)
        clock = MemoryReactorClock()
        options = make_options(
            "--data-dir", data_dir, "--listen", "tcp:7771", "--ipc", f"unix:{sock_dir}/s.sock"
        )
        service = daemon.make_service(options, reactor=clock)
        self.assertEqual(stat.S_IMODE(os.stat(data_dir).st_mode), 0o700)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([port for port, *_ in clock.tcpServers], [7771])
        self.assertEqual([addr for addr, *_ in clock.unixServers], [f"{sock_dir}/s.sock"])
        # the peer listener's accept queue holds a restart's worth of redialling contacts
        self.assertEqual([backlog for _, _, backlog, _ in clock.tcpServers], [1024])

    def test_peer_backlog(self) -> None:
        """When the listen description is TCP without a backlog, then the daemon's backlog is
        added; a backlog the user chose and other endpoint kinds stay as given."""
        self.assertEqual(
            daemon.peer_listen_description("tcp:0:interface=127.0.0.1"),
            f"tcp:0:interface=127.0.0.1:backlog={daemon.PEER_BACKLOG}",
        )
        self.assertEqual(
            daemon.peer_listen_description("tcp6:7770"), f"tcp6:7770:backlog={daemon.PEER_BACKLOG}"
        )
        self.assertEqual(daemon.peer_listen_description("tcp:7770:backlog=5"), "tcp:7770:backlog=5")
        self.assertEqual(daemon.peer_listen_description("unix:/tmp/p.sock"), "unix:/tmp/p.sock")

    def test_readable_data_dir_refused(self) -> None:
        """When the data directory is readable by others, then start-up stops with a one-line
        message naming the chmod that fixes it."""
        data_dir = self.mktemp()
        os.makedirs(data_dir, mode=0o755)
        os.chmod(data_dir, 0o755)
        written: list[str] = []
        self.patch(daemon.sys.stderr, "write", written.append)
        exc = self.assertRaises(
            SystemExit,
            daemon.make_service,
            make_options("--data-dir", data_dir),
            MemoryReactorClock(),
        )
        self.assertEqual(exc.code, 1)
        self.assertIn(f"chmod 700 {os.path.abspath(data_dir)}", "".join(written))


class RealDaemonTests(TestCase):
    timeout = 90

    async def test_start_refuse_second_and_stop(self) -> None:
        """When twistd runs the daemon, a second one is started on the same data directory, and
        the first gets SIGTERM, then the second is refused with a clear message, and the first
        exits cleanly removing its socket, lock and endpoint file."""
        root = short_tempdir(self)
        data_dir = os.path.join(root, "data")
        first = DaemonProcess(data_dir, root)
        self.addCleanup(first.cleanup)
        await first.start()
        self.assertTrue(os.path.exists(first.socket))
        self.assertEqual(stat.S_IMODE(os.stat(first.socket).st_mode), 0o600)
        with open(paths.endpoint_file_path(data_dir)) as f:
            self.assertEqual(f.read().strip(), first.endpoint)

        # its own pid file, so that twistd's pid-file check does not refuse it first
        second = DaemonProcess(data_dir, root, pidfile="second.pid")
        self.addCleanup(second.cleanup)
        code = await second.run_to_exit()
        self.assertEqual(code, 1)
        self.assertIn(b"another Jarvis daemon already uses", second.output)
        self.assertTrue(os.path.exists(first.socket), "the refused daemon removed the socket")

        code = await first.stop()
        self.assertIn(b"jarvis stopped", first.output)
        self.assertNotIn(b"Traceback", first.output)
        # twistd re-raises SIGTERM after a clean shutdown: the shell sees exit status 143
        self.assertEqual((code, first.exit_signal), (None, signal.SIGTERM))
        self.assertFalse(os.path.exists(first.socket))
        self.assertFalse(os.path.exists(first.socket + ".lock"))
        self.assertFalse(os.path.exists(paths.lock_path(data_dir)))
        self.assertFalse(os.path.exists(paths.endpoint_file_path(data_dir)))

    async def test_other_reactor_refused(self) -> None:
        """When twistd is asked for another reactor, then the daemon refuses in one line."""
        root = short_tempdir(self)
        proc = DaemonProcess(os.path.join(root, "data"), root, twistd_args=[])
        proc.twistd_args = []
        argv = proc.argv()
        argv.insert(argv.index("jarvis"), "--reactor=poll")
        self.patch(proc, "argv", lambda: argv)
        code = await proc.run_to_exit()
        self.assertEqual(code, 1)
        self.assertIn(b"Jarvis needs the asyncio reactor but the", proc.output)


class FailedListenTests(TestCase):
    timeout = 60

    async def test_port_in_use_aborts_and_leaves_no_lock(self) -> None:
        """When the peer port is already taken, then start-up fails naming the address, the
        reason and the option that fixes it, and a later start on the same data directory is not
        refused as 'already running'."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory, Protocol

        busy = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        self.addCleanup(busy.stopListening)
        root = short_tempdir(self)
        data_dir = os.path.join(root, "data")
        proc = DaemonProcess(
            data_dir, root, listen=f"tcp:{busy.getHost().port}:interface=127.0.0.1"
        )
        self.addCleanup(proc.cleanup)
        code = await proc.run_to_exit()
        self.assertNotEqual(code, 0)
        port = busy.getHost().port
        self.assertIn(
            f"cannot listen on 127.0.0.1:{port}: Address already in use; another program "
            "(another Jarvis daemon?) holds it: choose another with --listen tcp:PORT".encode(),
            proc.output,
        )
        self.assertFalse(os.path.exists(paths.lock_path(data_dir)))
        ok = DaemonProcess(data_dir, root, pidfile="ok.pid")
        self.addCleanup(ok.cleanup)
        await ok.start()
        await ok.stop()


class TcpIpcTests(SynchronousTestCase):
    def test_tcp_ipc_bound_to_loopback(self) -> None:
        """When --ipc is a TCP port without an interface, then it is bound to 127.0.0.1."""
        options = make_options("--ipc", "tcp:7779")
        self.assertEqual(options["ipc"], "tcp:7779:interface=127.0.0.1")

    def test_remote_ipc_needs_explicit_flag(self) -> None:
        """When --ipc names a non-loopback interface, then it is refused unless
        --ipc-allow-remote is given."""
        exc = self.assertRaises(
            usage.UsageError, make_options, "--ipc", "tcp:7779:interface=0.0.0.0"
        )
        self.assertIn("--ipc-allow-remote", str(exc))
        options = make_options("--ipc", "tcp:7779:interface=0.0.0.0", "--ipc-allow-remote")
        self.assertEqual(options["ipc"], "tcp:7779:interface=0.0.0.0")


class LifeCycleServiceTests(SynchronousTestCase):
    """What the service does when it starts: the pid it reports, its API backlog, its options."""

    def test_pid_read_after_daemonizing(self) -> None:
        """When twistd builds the service in one process and starts it in another (it forks to
        daemonize in between), then daemon.status and daemon.stop report the pid of the process
        that started the service (the one serving the API), not the builder's."""
        data_dir = os.path.join(self.mktemp(), "data")
        sock_dir = short_tempdir(self)
        clock = MemoryReactorClock()
        options = make_options("--data-dir", data_dir, "--ipc", f"unix:{sock_dir}/s.sock")
        builder_pid = os.getpid() + 1
        self.patch(daemon.os, "getpid", lambda: builder_pid)
        service = daemon.make_service(options, reactor=clock)
        self.patch(daemon.os, "getpid", lambda: builder_pid + 1)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        server: Any = service.ipc_listener.factory  # type: ignore[attr-defined]
        # the API's methods read the pid from the context its server hands them
        self.assertIs(server.ctx, service.context)
        self.assertEqual(server.ctx.info.pid, builder_pid + 1)

    def test_api_backlog(self) -> None:
        """When the local API listens on a UNIX socket (given or default) or loopback TCP, then
        its accept queue is IPC_BACKLOG, not Twisted's 50; a backlog given stays."""
        data_dir = os.path.join(self.mktemp(), "data")
        sock_dir = short_tempdir(self)
        clock = MemoryReactorClock()
        options = make_options("--data-dir", data_dir, "--ipc", f"unix:{sock_dir}/s.sock:mode=600")
        service = daemon.make_service(options, reactor=clock)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertEqual([backlog for _, _, backlog, *_ in clock.unixServers], [1024])
        self.assertEqual(
            daemon.ipc_listen_description("tcp:7779:interface=127.0.0.1"),
            "tcp:7779:interface=127.0.0.1:backlog=1024",
        )
        self.assertEqual(daemon.ipc_listen_description("unix:/s:backlog=5"), "unix:/s:backlog=5")

    def test_start_records_options(self) -> None:
        """When the service starts, then its start options are recorded in daemon.json (0600)
        for a replacement daemon."""
        from jarvis.app import launcher

        data_dir = os.path.join(self.mktemp(), "data")
        sock_dir = short_tempdir(self)
        clock = MemoryReactorClock()
        options = make_options(
            "--data-dir", data_dir, "--ipc", f"unix:{sock_dir}/s.sock", "--listen", "tcp:7772"
        )
        service = daemon.make_service(options, reactor=clock)
        service.privilegedStartService()
        self.assertFalse(os.path.exists(launcher.daemon_options_path(data_dir)))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            stat.S_IMODE(os.stat(launcher.daemon_options_path(data_dir)).st_mode), 0o600
        )
        self.assertEqual(
            launcher.read_daemon_options(data_dir),
            {
                "listen": "tcp:7772",
                "ipc": f"unix:{sock_dir}/s.sock",
                "log-level": "info",
                "exec-limit": 16,
                "hook-limit": 4,
            },
        )


class PublicTwistedApiTests(SynchronousTestCase):
    """The daemon learns its ports and its pool's backlog without Twisted's private attributes."""

    def test_listening_ports_reported(self) -> None:
        """When the service starts on a memory reactor, then the peer port and the API endpoint
        are reported through the endpoints (the endpoint file names the socket)."""
        data_dir = os.path.join(self.mktemp(), "data")
        sock_dir = short_tempdir(self)
        clock = MemoryReactorClock()
        options = make_options(
            "--data-dir", data_dir, "--listen", "tcp:7773", "--ipc", f"unix:{sock_dir}/s.sock"
        )
        service: Any = daemon.make_service(options, reactor=clock)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIsInstance(service.peer_listener.endpoint, daemon.PortReportingEndpoint)
        self.assertIsNotNone(service._listening())
        with open(paths.endpoint_file_path(service.data_dir), encoding="utf-8") as f:
            self.assertIn(f"{sock_dir}/s.sock", f.read())

    def test_blocking_backlog_counted(self) -> None:
        """When three jobs are submitted to the blocking pool and one starts, then two are
        reported queued; when they all start, then none."""
        data_dir = os.path.join(self.mktemp(), "data")
        sock_dir = short_tempdir(self)
        clock = MemoryReactorClock()
        options = make_options("--data-dir", data_dir, "--ipc", f"unix:{sock_dir}/s.sock")
        service: Any = daemon.make_service(options, reactor=clock)

        class FakePool:
            max = 2
            threads: list[Any] = []
            working: list[Any] = []

            def __init__(self) -> None:
                self.jobs: list[Any] = []

            def callInThreadWithCallback(self, on_result: Any, f: Any, *a: Any, **kw: Any) -> None:
                self.jobs.append(lambda: f(*a, **kw))

        pool = FakePool()
        service.pool = pool
        for n in range(3):
            service.run_blocking(lambda n=n: n)
        self.assertEqual(service.blocking_pool_stats()["queued"], 3)
        self.assertEqual(pool.jobs[0](), 0)
        self.assertEqual(service.blocking_pool_stats()["queued"], 2)
        for job in pool.jobs[1:]:
            job()
        self.assertEqual(service.blocking_pool_stats()["queued"], 0)
