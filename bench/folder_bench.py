"""A folder sent whole between two real daemons, beside magic-wormhole sending the same folder.

Two ``twistd -n jarvis`` daemons (as :mod:`bench.messaging_bench` starts them) befriend each
other; bob's auto-accept limit takes every file of alice's, and alice calls
``files.sendFolder`` on a folder of random files (a quarter of them in a folder below).
Figures:

- ``folder_files`` / ``folder_mib``: the folder's files and size;
- ``folder_mib_per_s``: its bytes per second from the ``files.sendFolder`` call (the sender
  hashes every file first, then offers them all) to bob's last ``transfer.changed``
  *complete* (every file's own data connection, sealed pieces, writes and whole-file check
  included); each received file is compared byte for byte with the sent one;
- ``folder_files_per_s``: files per second over the same time;
- ``folder_again_mib_per_s``: the same folder sent again at once, by the same daemons (it lands
  in ``album (1)``), while both still list the first one's transfers: what someone who sent a
  folder before meets (every event of a transfer once walked the whole list);
- with ``--wormhole-venv DIR``, each round first sends the same folder with ``wormhole send
  FOLDER`` / ``wormhole receive`` (:mod:`bench.wormhole_bench` ``--files N``: it zips the
  folder, deflated, and unzips it on the other side; timed from starting both programs to the
  receiver's exit), and adds ``wormhole_folder_mib_per_s`` and ``folder_vs_wormhole`` (Jarvis
  over magic-wormhole in the same round).

``python -m bench.folder_bench [--quick] [--smoke] [--files N] [--wormhole-venv DIR]
[--rounds N] [--json-out FILE]``: 200 files of 2 MiB (400 MiB); ``--quick`` 100 of 1 MiB;
``--smoke`` 20 of 64 KiB; ``--files N`` sets the count (the size stays).  Rounds alternate the
two programs; every figure is then the median over the rounds.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import sys
import time
from typing import Any

MIB = 1024 * 1024


def folder_shape(quick: bool, files: int | None = None) -> tuple[int, int]:
    """``(files, total bytes)`` of the folder this run sends."""
    from bench.harness import smoke_requested

    if smoke_requested():
        count, each = 20, 64 * 1024
    elif quick:
        count, each = 100, MIB
    else:
        count, each = 200, 2 * MIB
    total = count * each
    if files is not None:
        count = files
    return count, total


def write_folder(top: str, files: int, total: int) -> list[str]:
    """Fill folder *top* with *files* random files of *total* bytes together, a quarter of
    them in ``top/sub``; return their paths relative to *top*."""
    names = [f"sub/f{n:04d}.bin" if n % 4 == 3 else f"f{n:04d}.bin" for n in range(files)]
    os.makedirs(os.path.join(top, "sub"), exist_ok=True)
    each = total // files
    for name in names:
        with open(os.path.join(top, name), "wb") as f:
            f.write(os.urandom(each))
    return names


async def measure(reactor: Any, files: int, total: int) -> dict[str, Any]:
    """Send one folder from alice to bob; Jarvis's figures of it."""
    from bench.messaging_bench import friends

    async with friends(reactor) as (root, alice, bob):
        await alice.listen("transfer.changed")
        await bob.listen("transfer.changed")
        top = os.path.join(root, "album")
        names = write_folder(top, files, total)
        inbox = os.path.join(root, "inbox")
        await bob.call("files.policy", contact=alice.uid, auto_accept=total, downloads=inbox)
        complete: set[str] = set()
        ended: dict[str, str] = {}

        def changed(payload: dict[str, Any]) -> None:
            t = payload["transfer"]
            if t["state"] in ("complete", "failed", "cancelled"):
                ended[t["id"]] = t["state"]
                if t["state"] == "complete":
                    complete.add(t["id"])

        bob.events.on("transfer.changed", changed)
        times = []
        for landing in ("album", "album (1)"):  # the second send lists the first one's files
            started = time.perf_counter()
            sent = await alice.call("files.sendFolder", contact=bob.uid, path=top)
            ids = {t["id"] for t in sent["transfers"]}
            if len(ids) != files or sent["failed"]:
                raise RuntimeError(f"{len(ids)} of {files} files offered: {sent['failed']}")
            await bob.events.wait(lambda ids=ids: ids <= set(ended), 3600)
            times.append(time.perf_counter() - started)
            if not ids <= complete:
                raise RuntimeError(f"{len(ids - complete)} files did not complete")
            for name in names:
                landed = os.path.join(inbox, landing, name)
                if not filecmp.cmp(os.path.join(top, name), landed, shallow=False):
                    raise RuntimeError(f"{name} differs from the sent one")
    mib = total / MIB
    seconds, again = times
    print(
        f"folder: {files} files, {mib:.0f} MiB in {seconds:.2f} s = {mib / seconds:.0f} MiB/s;"
        f" again, the first one listed: {again:.2f} s = {mib / again:.0f} MiB/s",
        file=sys.stderr,
    )
    return {
        "folder_files": {"value": files, "unit": "files"},
        "folder_mib": {"value": mib, "unit": "MiB"},
        "folder_mib_per_s": {"value": mib / seconds, "unit": f"MiB/s ({files} files)"},
        "folder_files_per_s": {"value": files / seconds, "unit": "files/s"},
        "folder_again_mib_per_s": {
            "value": mib / again,
            "unit": f"MiB/s (the same {files} files again, the first folder listed)",
        },
    }


async def run_wormhole(reactor: Any, venv: str, files: int, total: int) -> float:
    """One magic-wormhole run of the same folder (:mod:`bench.wormhole_bench`, a child
    process through the reactor's process API); its MiB/s."""
    from twisted.internet.utils import getProcessOutputAndValue

    from bench.files_bench import REPOSITORY_ROOT

    args = ["-m", "bench.wormhole_bench", "--venv", venv, "--runs", "1"]
    args += ["--size-mib", str(max(1, total // MIB)), "--files", str(files)]
    out, err, code = await getProcessOutputAndValue(
        sys.executable, args, env=dict(os.environ), path=str(REPOSITORY_ROOT), reactor=reactor
    )
    for line in out.decode("utf-8", "replace").splitlines():
        if line.startswith("run 1: "):
            return float(json.loads(line[len("run 1: ") :])["wormhole_mib_per_s"])
    stderr = err.decode("utf-8", "replace").strip()[-2000:]
    raise RuntimeError(f"magic-wormhole's run failed (exit {code}): {stderr}")


async def measure_rounds(
    reactor: Any, quick: bool, files: int | None, venv: str | None, rounds: int
) -> dict[str, Any]:
    """*rounds* rounds of magic-wormhole (with *venv*) then Jarvis; the medians."""
    from bench.files_bench import median_figures

    count, total = folder_shape(quick, files)
    done: list[dict[str, Any]] = []
    for n in range(rounds):
        wormhole = None
        if venv is not None:
            wormhole = await run_wormhole(reactor, venv, count, total)
            print(f"folder: round {n + 1}: magic-wormhole {wormhole:.0f} MiB/s", file=sys.stderr)
        figures = await measure(reactor, count, total)
        if wormhole is not None:
            figures["wormhole_folder_mib_per_s"] = {
                "value": wormhole,
                "unit": "MiB/s (magic-wormhole, same round)",
            }
            figures["folder_vs_wormhole"] = {
                "value": figures["folder_mib_per_s"]["value"] / wormhole,
                "unit": "ratio (same round)",
            }
        done.append(figures)
        line = {k: round(f["value"], 2) for k, f in figures.items()}
        print(f"folder: round {n + 1}: {json.dumps(line)}", file=sys.stderr)
    merged = median_figures(done)
    if len(done) > 1 and "folder_vs_wormhole" in merged:
        merged["folder_vs_wormhole"]["value"] = statistics.median(
            r["folder_vs_wormhole"]["value"] for r in done
        )
    return {"figures": merged}


def run(
    quick: bool, files: int | None = None, wormhole_venv: str | None = None, rounds: int = 1
) -> dict[str, Any]:
    """Send one folder between two real daemons; see the module docstring."""
    from bench.harness import run_on_reactor

    return dict(
        run_on_reactor(lambda reactor: measure_rounds(reactor, quick, files, wormhole_venv, rounds))
    )


OWN_OPTIONS = """this benchmark's own options:
  --files N             the folder's files (its size stays that of the run)
  --wormhole-venv DIR   magic-wormhole from virtual environment DIR beside Jarvis, each round
  --rounds N            rounds (each: magic-wormhole, then Jarvis); figures are medians"""


def main(argv: list[str]) -> int:
    """The command line: the harness's options, plus ``--files N``, ``--wormhole-venv DIR``
    and ``--rounds N``."""
    from bench.harness import run_standalone

    own = argparse.ArgumentParser(prog="python -m bench.folder_bench", add_help=False)
    own.add_argument("--files", type=int)
    own.add_argument("--wormhole-venv")
    own.add_argument("--rounds", type=int, default=1)
    options, rest = own.parse_known_args(argv)
    if options.rounds < 1:
        own.error("--rounds must be at least 1")
    if options.files is not None and not 1 <= options.files <= 500:
        own.error("--files must be 1 to 500 (the most files of one folder sent)")
    return run_standalone(
        "folder",
        lambda quick: run(quick, options.files, options.wormhole_venv, options.rounds),
        rest,
        epilog=OWN_OPTIONS,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
