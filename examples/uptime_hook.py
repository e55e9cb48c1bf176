#!/usr/bin/env python3
"""A reply hook: answers ``/uptime`` and ``/echo TEXT`` in a conversation.

Bind it to incoming messages (its standard output becomes the reply)::

    jarvis hook add bot --reply --pattern '^/(uptime|echo)\\b' -- python3 examples/uptime_hook.py

The daemon runs it once per matching message with the event as JSON on standard input
(``{"event", "hook", "payload": {"message": {...}}}``) and ``JARVIS_CONTACT_NAME`` and friends in
its environment.  It prints nothing (no reply) for anything else.  A reply never starts with
``/``, so two such bots cannot keep each other busy.
"""

from __future__ import annotations

import json
import os
import sys


def uptime() -> str:
    """The machine's uptime in words (from ``/proc/uptime``)."""
    with open("/proc/uptime", encoding="ascii") as f:
        seconds = int(float(f.read().split()[0]))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days} d"] if days else []
    parts += [f"{hours} h", f"{minutes} min"]
    return "up " + " ".join(parts)


def answer(body: str, who: str) -> str | None:
    """The reply to *body* from *who*, or ``None``."""
    command, _, rest = body.strip().partition(" ")
    if command == "/uptime":
        return uptime()
    if command == "/echo" and rest.strip():
        return f"{who} said: {rest.strip().lstrip('/')}"
    return None


def main() -> int:
    event = json.load(sys.stdin)
    message = event.get("payload", {}).get("message", {})
    who = os.environ.get("JARVIS_CONTACT_NAME", "someone")
    reply = answer(message.get("body", ""), who)
    if reply:
        print(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
