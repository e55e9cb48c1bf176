"""magic-wormhole next to Jarvis: one file sent by ``wormhole send``/``receive`` over loopback.

The anchor of issue 18's throughput goal.  A local mailbox server and transit relay (``twistd
wormhole-mailbox``, ``twistd transitrelay``) and both ``wormhole`` ends run inside a new
network namespace that holds only loopback (``unshare -n``; wormhole offers every interface's
address, and only loopback must be reachable), from the virtual environment given by
``--venv`` (``python -m venv V && V/bin/pip install .[bench]`` installs magic-wormhole there;
never into Jarvis's own environment).  Figures:

- ``wormhole_mib_per_s``: file bytes per second from starting both ends to the receiver's exit
  (both programs' start and the pairing included: a 1 MiB file takes 0.50 s here, so the rate
  while the bytes flow is higher; ``docs/benchmarks.md`` compares both ways);
- ``wormhole_sender_cpu_s_per_gib`` / ``wormhole_receiver_cpu_s_per_gib``: each end's user +
  system CPU seconds per GiB (``os.wait4``);
- ``wormhole_sender_peak_rss_mib`` / ``wormhole_receiver_peak_rss_mib``: each end's peak RSS.

``python -m bench.wormhole_bench --venv WORMHOLE_VENV [--size-mib 1024] [--runs 3]
[--files N]`` prints one line per run and the median; the received file is compared with the
sent one.  ``--files N`` sends a folder of *N* files of that size together instead (a quarter
in a folder below; magic-wormhole streams it as one zip and unzips it), every file compared
(:mod:`bench.folder_bench` puts it beside Jarvis's folder).
Needs root for ``unshare -n`` (it re-executes itself inside the namespace).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

MIB = 1024 * 1024
CODE = "7-jarvis-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # a benchmark helper outside any reactor: polling a port is fine
    raise RuntimeError(f"nothing listens on {port}")


def reap(proc: subprocess.Popen[bytes]) -> tuple[float, float]:
    """Wait for *proc*; return (CPU seconds, peak RSS MiB) from ``os.wait4``."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def same_tree(sent: str, received: str) -> bool:
    """Whether folder *received* holds exactly the files of *sent*, byte for byte."""
    listed = []
    for folder, _dirs, files in os.walk(sent):
        listed += [os.path.relpath(os.path.join(folder, f), sent) for f in files]
    match, mismatch, errors = filecmp.cmpfiles(sent, received, listed, shallow=False)
    return len(match) == len(listed) and not mismatch and not errors


def one_run(venv: str, size: int, scratch: str, source: str = "payload.bin") -> dict[str, float]:
    bin_dir = os.path.join(venv, "bin")
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    mailbox, relay = free_port(), free_port()
    servers = [
        subprocess.Popen(
            [os.path.join(bin_dir, "twistd"), "-n", "--pidfile", "", *args],
            cwd=scratch,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for args in (
            ["wormhole-mailbox", f"--port=tcp:{mailbox}:interface=127.0.0.1"],
            ["transitrelay", f"--port=tcp:{relay}:interface=127.0.0.1"],
        )
    ]
    try:
        wait_port(mailbox)
        wait_port(relay)
        src = os.path.join(scratch, source)
        out_dir = os.path.join(scratch, "out")
        os.makedirs(out_dir, exist_ok=True)
        common = [
            os.path.join(bin_dir, "wormhole"),
            "--relay-url",
            f"ws://127.0.0.1:{mailbox}/v1",
            "--transit-helper",
            f"tcp:127.0.0.1:{relay}",
        ]
        started = time.perf_counter()
        sender = subprocess.Popen(
            [*common, "send", "--code", CODE, "--hide-progress", src],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        receiver = subprocess.Popen(
            [*common, "receive", "--accept-file", "--hide-progress", "-o", out_dir, CODE],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        r_cpu, r_rss = reap(receiver)
        seconds = time.perf_counter() - started
        s_cpu, s_rss = reap(sender)
        received = os.path.join(out_dir, source)
        if os.path.isdir(src):
            if not same_tree(src, received):
                raise RuntimeError("the received folder differs")
            shutil.rmtree(received)
        else:
            if not filecmp.cmp(src, received, shallow=False):
                raise RuntimeError("the received file differs")
            os.unlink(received)
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    gib = size / (1024 * MIB)
    return {
        "wormhole_mib_per_s": size / MIB / seconds,
        "wormhole_sender_cpu_s_per_gib": s_cpu / gib,
        "wormhole_receiver_cpu_s_per_gib": r_cpu / gib,
        "wormhole_sender_peak_rss_mib": s_rss,
        "wormhole_receiver_peak_rss_mib": r_rss,
    }


def inside(args: argparse.Namespace) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    scratch = tempfile.mkdtemp(prefix="jvw", dir="/tmp")
    try:
        size = args.size_mib * MIB
        source = "payload.bin"
        if args.files:
            from bench.folder_bench import write_folder

            source = "payload"
            write_folder(os.path.join(scratch, source), args.files, size)
        else:
            with open(os.path.join(scratch, source), "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(MIB))
        runs = []
        for n in range(args.runs):
            figures = one_run(args.venv, size, scratch, source)
            runs.append(figures)
            print(f"run {n + 1}: " + json.dumps({k: round(v, 2) for k, v in figures.items()}))
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print("median: " + json.dumps({k: round(v, 2) for k, v in median.items()}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", required=True, help="virtual environment with magic-wormhole")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, help="send a folder of this many files instead")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        return inside(args)
    command = [sys.executable, "-m", "bench.wormhole_bench", "--inside", *argv]
    result: Any = subprocess.run(["unshare", "-n", *command], check=False)
    return int(result.returncode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
