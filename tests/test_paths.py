"""Tests for jarvis.common.paths: where the local API socket lives, and the runtime directory that
another
local user must not be able to plant or redirect."""

from __future__ import annotations

import os
import stat
import tempfile
from unittest import mock

from twisted.trial.unittest import SkipTest, TestCase

from jarvis.common import paths
from jarvis.common.errors import DataDirError
from tests.daemons import short_tempdir


def shared_tmp(testcase: TestCase) -> str:
    """A world-writable sticky directory standing for /tmp; ``paths`` uses it as the temporary
    directory and sees no ``XDG_RUNTIME_DIR`` (as under su, cron, containers)."""
    path = tempfile.mkdtemp(prefix="jvt", dir="/tmp")
    os.chmod(path, 0o1777)
    testcase.addCleanup(_remove, path)
    environ = mock.patch.dict(os.environ)
    environ.start()
    testcase.addCleanup(environ.stop)
    os.environ.pop("XDG_RUNTIME_DIR", None)
    gettempdir = mock.patch.object(paths.tempfile, "gettempdir", return_value=path)
    gettempdir.start()
    testcase.addCleanup(gettempdir.stop)
    return path


def _remove(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class RuntimeDirTests(TestCase):
    def test_created_private(self) -> None:
        """When no runtime directory exists, then ``jarvis-<uid>`` is made 0700 and ours."""
        tmp = shared_tmp(self)
        path = paths.runtime_dir()
        self.assertEqual(path, os.path.join(tmp, f"jarvis-{os.getuid()}"))
        st = os.lstat(path)
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o700)
        self.assertEqual(st.st_uid, os.getuid())

    def test_planted_symlink_refused(self) -> None:
        """When another user planted ``jarvis-<uid>`` as a symbolic link (to a directory they
        control, or even to one of ours), then it is refused with the fix in the message, and
        nothing is created where the link points."""
        tmp = shared_tmp(self)
        target = os.path.join(tmp, "attacker")
        os.mkdir(target, 0o700)
        os.symlink(target, os.path.join(tmp, f"jarvis-{os.getuid()}"))
        with self.assertRaises(DataDirError) as caught:
            paths.runtime_dir()
        message = str(caught.exception)
        self.assertIn("symbolic link", message)
        self.assertIn("rm ", message)
        self.assertEqual(os.listdir(target), [])

    def test_dangling_symlink_refused(self) -> None:
        """When the planted link points nowhere yet (to be created later), then it is refused
        and the target is not created."""
        tmp = shared_tmp(self)
        target = os.path.join(tmp, "later")
        os.symlink(target, os.path.join(tmp, f"jarvis-{os.getuid()}"))
        with self.assertRaises(DataDirError):
            paths.runtime_dir()
        self.assertFalse(os.path.lexists(target))

    def test_open_mode_refused(self) -> None:
        """When the directory exists with mode 0777, then it is refused with the chmod fix."""
        tmp = shared_tmp(self)
        path = os.path.join(tmp, f"jarvis-{os.getuid()}")
        os.mkdir(path)
        os.chmod(path, 0o777)
        with self.assertRaises(DataDirError) as caught:
            paths.runtime_dir()
        self.assertIn(f"chmod 700 {path}", str(caught.exception))

    def test_other_owner_refused(self) -> None:
        """When the directory belongs to another uid, then it is refused, naming that uid."""
        directory = short_tempdir(self)
        me = os.stat(directory).st_uid
        with self.assertRaises(DataDirError) as caught:
            paths.check_runtime_dir(directory, uid=me + 1)
        self.assertIn(f"belongs to uid {me}", str(caught.exception))
        paths.check_runtime_dir(directory, uid=me)

    def test_other_owner_refused_for_real(self) -> None:
        """When another user (nobody) created ``jarvis-<uid>`` first, then it is refused."""
        if os.getuid() != 0:
            raise SkipTest("needs root to give the directory to another user")
        tmp = shared_tmp(self)
        path = os.path.join(tmp, f"jarvis-{os.getuid()}")
        os.mkdir(path, 0o700)
        os.chown(path, 65534, 65534)
        with self.assertRaises(DataDirError) as caught:
            paths.runtime_dir()
        self.assertIn("belongs to uid 65534", str(caught.exception))

    def test_not_a_directory_refused(self) -> None:
        """When a plain file stands at the name, then it is refused."""
        tmp = shared_tmp(self)
        with open(os.path.join(tmp, f"jarvis-{os.getuid()}"), "w"):
            pass
        with self.assertRaises(DataDirError) as caught:
            paths.runtime_dir()
        self.assertIn("not a directory", str(caught.exception))

    def test_xdg_runtime_dir_preferred(self) -> None:
        """When ``XDG_RUNTIME_DIR`` names a directory, then the runtime directory is under it,
        not in the shared temporary directory."""
        tmp = shared_tmp(self)
        xdg = short_tempdir(self)
        os.environ["XDG_RUNTIME_DIR"] = xdg
        self.assertEqual(paths.runtime_dir(), os.path.join(xdg, "jarvis"))
        self.assertEqual(os.listdir(tmp), [])


class SocketPathTests(TestCase):
    def test_in_data_dir_when_short_enough(self) -> None:
        """When the data directory's path is short, then the socket is ``DATA/ipc.sock`` and no
        shared directory is touched."""
        tmp = shared_tmp(self)
        data = os.path.join(short_tempdir(self), "data")
        self.assertEqual(paths.default_ipc_socket(data), os.path.join(data, "ipc.sock"))
        self.assertEqual(os.listdir(tmp), [])

    def test_long_data_dir_uses_runtime_dir(self) -> None:
        """When ``DATA/ipc.sock`` would not fit in an AF_UNIX address, then the socket goes into
        the checked runtime directory, and a planted link there is refused."""
        tmp = shared_tmp(self)
        data = os.path.join(short_tempdir(self), "d" * 120)
        path = paths.default_ipc_socket(data)
        self.assertEqual(os.path.dirname(path), os.path.join(tmp, f"jarvis-{os.getuid()}"))
        self.assertLessEqual(len(path.encode()), paths.MAX_UNIX_PATH)
        os.rmdir(os.path.dirname(path))
        os.symlink(short_tempdir(self), os.path.dirname(path))
        with self.assertRaises(DataDirError):
            paths.default_ipc_socket(data)

    def test_description_syntax_in_data_dir_uses_runtime_dir(self) -> None:
        """When the data directory's path holds ':' (endpoint description syntax), then the
        socket goes into the runtime directory under a hashed name."""
        tmp = shared_tmp(self)
        data = os.path.join(short_tempdir(self), "a:b")
        path = paths.default_ipc_socket(data)
        self.assertEqual(os.path.dirname(path), os.path.join(tmp, f"jarvis-{os.getuid()}"))
        self.assertNotIn(":", path)

    def test_client_refuses_open_data_dir(self) -> None:
        """When the data directory others can write exists, then a client refuses to read its
        ``ipc.endpoint`` (someone else could have chosen where the password goes)."""
        data = os.path.join(short_tempdir(self), "data")
        os.mkdir(data)
        os.chmod(data, 0o777)
        with open(os.path.join(data, paths.ENDPOINT_FILE), "w") as f:
            f.write("tcp:127.0.0.1:9\n")
        with self.assertRaises(DataDirError):
            paths.client_endpoint_for(data)
        os.chmod(data, 0o700)
        self.assertEqual(paths.client_endpoint_for(data), "tcp:127.0.0.1:9")
