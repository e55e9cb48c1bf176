"""An echo bot: answers every message it receives with ``echo: <text>``.

It shows how a script uses :mod:`jarvis.client` under a plain ``asyncio.run``: connect, listen
to events, call methods.  Run it next to a running, unlocked daemon::

    python examples/echo_bot.py                 # the default data directory's daemon
    python examples/echo_bot.py --data-dir DIR  # another one
    python examples/echo_bot.py --endpoint unix:/path/to/api.sock --count 3

It never answers a message that is itself an echo, so two bots cannot loop forever.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from jarvis.client import Client, DaemonNotRunning, RemoteError

PREFIX = "echo: "


async def echo(client: Client, count: int | None = None) -> int:
    """Answer received messages until the connection closes or *count* answers were sent.

    :returns: how many answers were sent.
    """
    answered = 0
    async for event in client.events():
        if event.name != "message.received":
            continue  # scripts ignore the events they do not need
        message = event.params.get("message") or {}
        body = message.get("body")
        if message.get("direction") != "in" or not isinstance(body, str):
            continue
        if body.startswith(PREFIX):
            continue
        try:
            await client.call("messages.send", contact=message["contact"], text=PREFIX + body)
        except RemoteError as e:
            print(f"echo_bot: could not answer: {e}", file=sys.stderr)
            continue
        answered += 1
        if count is not None and answered >= count:
            break
    return answered


async def main(argv: list[str] | None = None) -> int:
    """Parse *argv*, connect and echo; returns the process exit code."""
    parser = argparse.ArgumentParser(description="Answer every Jarvis message with an echo.")
    parser.add_argument("--data-dir", help="the daemon's data directory")
    parser.add_argument("--endpoint", help="a socket path or unix:/tcp: endpoint")
    parser.add_argument("--count", type=int, help="stop after this many answers")
    args = parser.parse_args(argv)
    try:
        client = await Client.connect(args.endpoint, data_dir=args.data_dir)
    except DaemonNotRunning as e:
        print(f"echo_bot: {e}", file=sys.stderr)
        return 1
    async with client:
        print("echo_bot: listening", flush=True)
        await echo(client, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
