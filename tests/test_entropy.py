"""Tests for :mod:`jarvis.common.entropy`: block-drawn public random bytes."""

from __future__ import annotations

import os
import threading

from twisted.trial.unittest import SynchronousTestCase

from jarvis.common import entropy


class PublicRandomTests(SynchronousTestCase):
    def test_sizes_and_distinct(self) -> None:
        """When many nonces are drawn across several blocks, then each has the size asked for
        and no two are equal."""
        values = [entropy.public_random(12) for _ in range(3 * entropy.BLOCK // 12 + 7)]
        self.assertEqual({len(v) for v in values}, {12})
        self.assertEqual(len(set(values)), len(values))

    def test_refused_sizes(self) -> None:
        """When a negative size or more than a block is asked for, then ValueError is raised."""
        self.assertRaises(ValueError, entropy.public_random, -1)
        self.assertRaises(ValueError, entropy.public_random, entropy.BLOCK + 1)

    def test_threads_do_not_share_bytes(self) -> None:
        """When two threads draw at the same time, then no value is handed out twice."""
        drawn: list[list[bytes]] = [[], []]

        def draw(into: list[bytes]) -> None:
            for _ in range(2000):
                into.append(entropy.public_random(16))

        threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        values = drawn[0] + drawn[1]
        self.assertEqual(len(set(values)), 4000)

    def test_forked_child_does_not_repeat_parent(self) -> None:
        """When the process forks with part of a block unused, then the child's next bytes are
        not the parent's next bytes (the child drops the inherited block)."""
        entropy.public_random(16)  # a block is loaded and mostly unused
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: send its next value and leave at once
            try:
                os.write(write_end, entropy.public_random(16))
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            child = os.read(read_end, 16)
        finally:
            os.close(read_end)
            os.waitpid(pid, 0)
        parent = entropy.public_random(16)
        self.assertEqual(len(child), 16)
        self.assertNotEqual(child, parent)
