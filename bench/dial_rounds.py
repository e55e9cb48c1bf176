"""The CPU of one dialling round, without the network: 1,000 diallers on a ``task.Clock``.

Every attempt fails on the next turn (``deferLater(clock, 0, ...)``), the daemon's JSON log
observer at info is installed, and ``time.process_time`` is read over *K* rounds of every
dialler (``python -m bench.dial_rounds [K]``, default 20).  The figure includes the ``Clock``'s
own sorting (the same in any implementation); compare two checkouts by running it in each.
Prints one JSON line.  This module must not be imported by Jarvis itself.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, globalLogBeginner

from jarvis.common.logs import json_file_observer
from jarvis.net import network as net


def main(argv: list[str]) -> int:
    """Run the rounds, print ``{"rounds": N, "us_per_round": x}``."""
    rounds = int(argv[0]) if argv else 20
    observer, logfile = json_file_observer(
        tempfile.mkdtemp(prefix="dialrounds", dir="/tmp") + "/d.log", LogLevel.info
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    clock = Clock()

    def fail() -> None:
        raise net.ConnectFailed("refused")

    def dial(address: str) -> Deferred[None]:
        return deferLater(clock, 0, fail)

    policy = net.backoff(1.0, 60.0)
    diallers = [net.Dialler(clock, lambda: ("127.0.0.1:9",), dial, policy) for _ in range(1000)]
    for dialler in diallers:
        dialler.start()
    start = time.process_time()
    for _ in range(rounds):
        clock.advance(0)  # every attempt fails: each dialler schedules its retry
        clock.advance(62)  # every retry fires: a new round, a new attempt
    used = time.process_time() - start
    total = len(diallers) * rounds
    print(json.dumps({"rounds": total, "us_per_round": round(used / total * 1e6, 1)}))
    logfile.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
