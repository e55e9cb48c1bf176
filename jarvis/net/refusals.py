"""Refused connections, counted by kind and logged without flooding.

The knock gate (:mod:`jarvis.net.knock`) and the admission control
(:mod:`jarvis.net.admission`) both refuse strangers, possibly thousands a second.  A
:class:`RefusalTally` counts every refusal by kind, logs the first one after a quiet period at
once (a user watching the log sees it), and the rest as one line per period.

It must not log keys, tokens or anything a stranger sent; callers pass log-safe fields.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.logger import Logger

from jarvis.net.peer import Clock, DelayedCall


class RefusalTally:
    """Counts refusals by kind; logs the first at once, then one line per *period*.

    :param clock: schedules the next line.
    :param period: seconds between two lines, at least.
    :param log: the logger the lines go to (the caller's, so they keep their namespace).
    :param first: the format of the line for the first refusal after a quiet period; it gets
        ``kind``, ``period``, ``details`` (``"1 <kind>"``) and the fields given to :meth:`note`.
    :param summary: the format of the line for the refusals counted during a period; it gets
        ``count``, ``period``, ``details`` (``"<n> <kind>, ..."``) and ``counts``.
    """

    def __init__(
        self, clock: Clock, period: float, *, log: Logger, first: str, summary: str
    ) -> None:
        self._clock = clock
        self._period = period
        self._log = log
        self._first = first
        self._summary = summary
        self._since: Counter[str] = Counter()
        self._pending: DelayedCall | None = None
        self._stopped = False
        #: Every refusal counted so far, by kind (for status and tests).
        self.totals: Counter[str] = Counter()

    def note(self, kind: str, **fields: Any) -> None:
        """Count one refusal of *kind*; log it now unless a line was logged within the period.

        :param kind: a short phrase (``"bad knock"``, ``"refused at the total cap"``).
        :param fields: log-safe fields for the *first* format.
        """
        self.totals[kind] += 1
        if self._stopped:
            return
        if self._pending is None:
            self._log.info(
                self._first, kind=kind, period=self._period, details=f"1 {kind}", **fields
            )
            self._pending = self._clock.callLater(self._period, self._summarise)
        else:
            self._since[kind] += 1

    def _summarise(self) -> None:
        self._pending = None
        if not self._since:
            return
        self._log.info(
            self._summary,
            count=sum(self._since.values()),
            period=self._period,
            details=", ".join(f"{n} {kind}" for kind, n in sorted(self._since.items())),
            counts=dict(self._since),
        )
        self._since.clear()
        if not self._stopped:
            self._pending = self._clock.callLater(self._period, self._summarise)

    def stop(self) -> None:
        """Log what is counted and schedule nothing more (later refusals are only totalled)."""
        self._stopped = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        self._summarise()
