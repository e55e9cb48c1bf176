"""The password back-off: one counter of wrong master passwords, kept across restarts.

Every method that checks the master password (``identity.unlock``, ``identity.changePassword``,
``account.delete``) asks :class:`PasswordBackoff` first.  After two wrong passwords in a row each
further wrong one imposes a wait of 1, 2, 4 … seconds (at most :data:`MAX_DELAY`); an attempt
made during that wait is **refused at once** with :class:`TooManyAttempts` (which names the
seconds left) instead of being queued, so the owner's own attempt is never stuck behind a
guesser's queued guesses, and a guesser's parallel requests cost nothing.

The counter and the end of the wait are written to a small file in the data directory (0600,
atomically, through the injected ``run_blocking``: never on the reactor thread) before the wrong
password is answered, so stopping and restarting the daemon does not reset it.  A correct
password resets it.

Time comes from the injected ``seconds`` (the reactor's wall-clock ``seconds()``; a
``task.Clock`` in tests).  This module must not import the reactor.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from jarvis.common.atomicfile import write_atomically
from jarvis.common.errors import JarvisError

#: The file (in the data directory) that keeps the back-off across restarts.
BACKOFF_FILE = "password.backoff"
#: Longest wait imposed after repeated wrong passwords, in seconds.
MAX_DELAY = 30.0
#: Wrong passwords allowed in a row before the first wait.
FREE_ATTEMPTS = 2


class TooManyAttempts(JarvisError):
    """Too many wrong passwords in a row: this attempt was refused without checking it.

    Wait the number of seconds named (``retry_after``), then try again.  The wait doubles with
    each further wrong password (at most 30 s) and ends with a correct one; restarting the
    daemon does not shorten it.
    """

    kind = "too_many_attempts"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            f"too many wrong passwords: retry in {self.retry_after} s (this attempt was not tried)"
        )

    @property
    def data(self) -> dict[str, Any]:
        """Extra fields for the API error's ``data``."""
        return {"retry_after": self.retry_after}


def delay_after(failures: int) -> float:
    """Seconds to wait after *failures* wrong passwords in a row."""
    if failures < FREE_ATTEMPTS:
        return 0.0
    return float(min(MAX_DELAY, 2 ** (failures - FREE_ATTEMPTS)))


class PasswordBackoff:
    """The shared wrong-password counter of one data directory (see the module docstring).

    :param data_dir: where :data:`BACKOFF_FILE` lives.
    :param seconds: the current wall-clock time in seconds (``IReactorTime.seconds``).
    :param run_blocking: runs a blocking callable off the reactor thread, returns a Deferred.
    """

    log = Logger()

    def __init__(
        self,
        data_dir: str,
        *,
        seconds: Callable[[], float],
        run_blocking: Callable[..., defer.Deferred[Any]],
    ) -> None:
        self.path = os.path.join(data_dir, BACKOFF_FILE)
        self._seconds = seconds
        self._run_blocking = run_blocking
        self.failures = 0
        #: the time before which attempts are refused
        self.not_before = 0.0

    def load(self) -> None:
        """Read the saved state (a few bytes, at start-up); a missing or damaged file is no
        back-off, a wait longer than :data:`MAX_DELAY` from now (the clock was set back) is
        shortened to it."""
        try:
            with open(self.path, "rb") as f:
                saved = json.loads(f.read(4096))
            failures = int(saved["failures"])
            not_before = float(saved["not_before"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            self.log.warn("the password back-off file is unreadable: starting from zero")
            return
        self.failures = max(0, failures)
        if math.isfinite(not_before):
            self.not_before = min(not_before, self._seconds() + MAX_DELAY)

    def retry_after(self) -> float:
        """Seconds until the next attempt is allowed (0: now)."""
        return max(0.0, self.not_before - self._seconds())

    def check(self) -> None:
        """Refuse an attempt made during the wait.

        :raises TooManyAttempts: naming the seconds left.
        """
        left = self.retry_after()
        if left > 0:
            raise TooManyAttempts(left)

    def failed(self) -> defer.Deferred[Any]:
        """Count a wrong password, start the wait, and save both; fires once saved."""
        self.failures += 1
        self.not_before = self._seconds() + delay_after(self.failures)
        self.log.warn("wrong password ({count} in a row)", count=self.failures)
        return self._save()

    def succeeded(self) -> defer.Deferred[Any]:
        """Reset after a correct password; fires once the saved state is removed."""
        if self.failures == 0 and self.not_before == 0.0:
            return defer.succeed(None)
        self.failures = 0
        self.not_before = 0.0
        return self._save()

    def _save(self) -> defer.Deferred[Any]:
        if self.failures == 0:
            d = self._run_blocking(_remove, self.path)
        else:
            content = json.dumps({"failures": self.failures, "not_before": self.not_before})
            d = self._run_blocking(write_atomically, self.path, content.encode("ascii"))

        def unsaved(failure: Any) -> None:
            # The in-memory back-off still applies; only a restart would forget it.
            self.log.failure("the password back-off could not be saved", failure)

        return d.addErrback(unsaved)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
