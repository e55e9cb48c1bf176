"""The benchmark harness: run registered benchmarks in subprocesses, print and record figures.

``python -m bench [NAME ...] [--quick] [--list]`` runs each named benchmark (default: all in
:data:`BENCHMARKS`) in its own Python process, prints one table of figures and writes
``bench/results/<name>.json`` per benchmark.  Whenever a benchmark other than the ceiling runs,
the ceiling runs first in the same invocation, and every figure that names a ``ceiling_key`` is
reported next to that ceiling figure as a ratio.

A benchmark is a module (``bench.<something>``) with ``run(quick: bool) -> dict`` that returns
``{"figures": {key: {"value": float, "unit": str, "goal": float?, "ceiling_key": str?}}}``
(a bare ``{key: figure}`` dict is accepted too).  It reads :func:`smoke_requested` to shrink
itself to a few hundred operations for the harness's own test.  Its ``__main__`` block should
call :func:`run_standalone` so that ``python -m bench.<module>`` works on its own.

This is a command-line program, not reactor code: it blocks on ``subprocess`` freely.  It must
not import the reactor, because the benchmarks it runs install their own in their own process.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

#: Benchmark name -> module that exposes ``run(quick: bool) -> dict``.
_T = TypeVar("_T")

BENCHMARKS: dict[str, str] = {
    "ceiling": "bench.ceiling",
    "store": "bench.store_bench",
    "ipc": "bench.ipc_bench",
    "messaging": "bench.messaging_bench",
    "scale": "bench.scale_bench",
    "ui": "bench.ui_bench",
    "mailbox": "bench.mailbox_bench",
    "mailbox_path": "bench.mailbox_path_bench",
    "transfer": "bench.transfer_bench",
    "exec": "bench.exec_bench",
    "stall": "bench.stall_bench",
    "lan": "bench.lan_bench",
    "group": "bench.group_bench",
    "group50": "bench.group50_bench",
    "files": "bench.files_bench",
    "folder": "bench.folder_bench",
    "postbox": "bench.postbox_bench",
    "relay": "bench.relay_bench",
}

#: The benchmark every other benchmark is compared with.
CEILING = "ceiling"

#: Environment variable that asks benchmarks for a tiny "smoke" size (set by ``--smoke``).
SMOKE_ENV = "JARVIS_BENCH_SMOKE"

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPOSITORY_ROOT / "bench" / "results"

#: Distributions whose versions go into every result, by the name the result uses.
VERSIONED_DISTRIBUTIONS = {
    "jarvis": "jarvis-messenger",
    "twisted": "twisted",
    "pyopenssl": "pyOpenSSL",
    "cryptography": "cryptography",
    "urwid": "urwid",
}


class BenchmarkFailed(Exception):
    """A benchmark's process failed or returned figures the harness cannot read.

    The message says which benchmark and why; the benchmark's own output (passed through to the
    terminal) has the details.
    """


@dataclass(frozen=True)
class Figure:
    """One measured figure of a benchmark.

    :param value: the measured number.
    :param unit: what the number counts, e.g. ``"round trips/s"`` or ``"µs"``.
    :param goal: the target from the project's goals, if there is one.
    :param ceiling_key: the ceiling figure this one is compared with, if any.
    """

    value: float
    unit: str
    goal: float | None = None
    ceiling_key: str | None = None

    @classmethod
    def from_json(cls, key: str, raw: object) -> Figure:
        """Read a figure from what a benchmark's ``run()`` returned.

        :param key: the figure's name (for the error message).
        :param raw: a number, or a dict with ``value``, ``unit`` and optional ``goal`` and
            ``ceiling_key``.
        :raises BenchmarkFailed: if *raw* is neither.
        """
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return cls(value=float(raw), unit="")
        if isinstance(raw, dict) and isinstance(raw.get("value"), int | float):
            goal = raw.get("goal")
            ceiling_key = raw.get("ceiling_key")
            return cls(
                value=float(raw["value"]),
                unit=str(raw.get("unit", "")),
                goal=float(goal) if isinstance(goal, int | float) else None,
                ceiling_key=str(ceiling_key) if ceiling_key else None,
            )
        raise BenchmarkFailed(f"figure {key!r} is not a number or a {{value, unit}} dict: {raw!r}")

    def to_json(self) -> dict[str, Any]:
        """Return the figure as a JSON-able dict, leaving out absent optional fields."""
        out: dict[str, Any] = {"value": self.value, "unit": self.unit}
        if self.goal is not None:
            out["goal"] = self.goal
        if self.ceiling_key is not None:
            out["ceiling_key"] = self.ceiling_key
        return out


@dataclass(frozen=True)
class Outcome:
    """What happened when the harness ran one benchmark.

    :param name: the benchmark's registered name.
    :param status: ``"ok"``, ``"missing"`` (module not written yet) or ``"failed"``.
    :param figures: figure name -> figure (empty unless ``ok``).
    :param seconds: wall-clock time the benchmark's process took.
    :param error: why it is missing or failed.
    """

    name: str
    status: str
    figures: dict[str, Figure] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""


def smoke_requested() -> bool:
    """Return whether the harness asked for the tiny smoke size (``--smoke``)."""
    return os.environ.get(SMOKE_ENV, "") not in ("", "0")


def read_figures(raw: object) -> dict[str, Figure]:
    """Read the figures out of what a benchmark's ``run()`` returned.

    :param raw: ``{"figures": {...}}`` or a bare ``{key: figure}`` dict.
    :returns: figure name -> :class:`Figure`.
    :raises BenchmarkFailed: if *raw* has no readable figures.
    """
    if not isinstance(raw, dict):
        raise BenchmarkFailed(f"run() must return a dict, not {type(raw).__name__}")
    figures = raw.get("figures", raw)
    if not isinstance(figures, dict) or not figures:
        raise BenchmarkFailed("run() returned no figures")
    return {str(key): Figure.from_json(str(key), value) for key, value in figures.items()}


def machine_info() -> dict[str, Any]:
    """Describe the machine: platform, Python, CPU count and CPU model (from /proc/cpuinfo)."""
    cpu_model = platform.processor() or None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
    }


def versions() -> dict[str, str | None]:
    """Return the installed versions of Jarvis and the libraries the figures depend on."""
    found: dict[str, str | None] = {}
    for name, distribution in VERSIONED_DISTRIBUTIONS.items():
        try:
            found[name] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    if found["jarvis"] is None:
        import jarvis

        found["jarvis"] = jarvis.__version__
    return found


def module_available(module: str) -> bool:
    """Return whether *module* can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_in_subprocess(
    name: str, module: str, *, quick: bool, smoke: bool, timeout: float
) -> Outcome:
    """Run one benchmark in a fresh Python process and collect its figures.

    The child's stdout and stderr pass through to ours, so its progress shows.

    :param name: the benchmark's registered name.
    :param module: the module with ``run(quick)``.
    :param quick: pass ``quick=True`` to ``run``.
    :param smoke: set :data:`SMOKE_ENV` in the child.
    :param timeout: seconds before the child is killed and the benchmark counted as failed.
    :returns: the outcome; never raises for a failing benchmark.
    """
    if not module_available(module):
        return Outcome(name=name, status="missing", error=f"module {module} does not exist yet")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPOSITORY_ROOT), env.get("PYTHONPATH", "")) if part
    )
    if smoke:
        env[SMOKE_ENV] = "1"
    else:
        env.pop(SMOKE_ENV, None)
    with tempfile.TemporaryDirectory(prefix="jarvis-bench-") as scratch:
        json_out = Path(scratch) / f"{name}.json"
        command = [sys.executable, "-m", "bench", "--child", module, "--json-out", str(json_out)]
        if quick:
            command.append("--quick")
        started = time.monotonic()
        try:
            completed = subprocess.run(
                command, cwd=REPOSITORY_ROOT, env=env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return Outcome(
                name=name,
                status="failed",
                seconds=time.monotonic() - started,
                error=f"timed out after {timeout:g} s",
            )
        seconds = time.monotonic() - started
        if completed.returncode != 0:
            return Outcome(
                name=name,
                status="failed",
                seconds=seconds,
                error=f"exited with status {completed.returncode}",
            )
        try:
            figures = read_figures(json.loads(json_out.read_text(encoding="utf-8")))
        except (OSError, ValueError, BenchmarkFailed) as problem:
            return Outcome(name=name, status="failed", seconds=seconds, error=str(problem))
    return Outcome(name=name, status="ok", figures=figures, seconds=seconds)


def ratio_to_ceiling(
    figure: Figure, ceiling: Outcome | None, own: Outcome | None = None
) -> tuple[float | None, float | None]:
    """Return (ceiling value, figure value / ceiling value) for a figure with a ``ceiling_key``.

    The key is looked up in the ceiling's figures first, then in *own* (the figure's own
    benchmark), so a benchmark that measures its own ceiling in the same run (the API's line
    echo, say) can name it too.

    :returns: ``(None, None)`` when the figure names no ceiling key, or neither the ceiling
        (when it ran) nor *own* has that key; the ratio is ``None`` when the reference is zero.
    """
    if figure.ceiling_key is None:
        return None, None
    reference = None
    if ceiling is not None and ceiling.status == "ok":
        reference = ceiling.figures.get(figure.ceiling_key)
    if reference is None and own is not None and own.status == "ok":
        reference = own.figures.get(figure.ceiling_key)
    if reference is None:
        return None, None
    if reference.value == 0:
        return reference.value, None
    return reference.value, figure.value / reference.value


def result_document(
    outcome: Outcome, *, quick: bool, smoke: bool, ceiling: Outcome | None
) -> dict[str, Any]:
    """Build the JSON document written to ``bench/results/<name>.json``.

    :param outcome: a successful benchmark outcome.
    :param quick: whether the run was ``--quick``.
    :param smoke: whether the run was ``--smoke`` (figures are then meaningless).
    :param ceiling: the ceiling measured in the same invocation (``None`` for the ceiling
        itself or when it did not run).
    """
    figures: dict[str, Any] = {}
    for key, figure in outcome.figures.items():
        entry = figure.to_json()
        ceiling_value, ratio = ratio_to_ceiling(figure, ceiling, outcome)
        if ceiling_value is not None:
            entry["ceiling_value"] = ceiling_value
        if ratio is not None:
            entry["ratio"] = ratio
        figures[key] = entry
    document: dict[str, Any] = {
        "name": outcome.name,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "quick": quick,
        "smoke": smoke,
        "seconds": round(outcome.seconds, 3),
        "figures": figures,
        "ceiling": None,
    }
    if ceiling is not None and ceiling.status == "ok" and outcome.name != CEILING:
        document["ceiling"] = {
            "figures": {key: figure.to_json() for key, figure in ceiling.figures.items()},
            "seconds": round(ceiling.seconds, 3),
        }
    return document


def format_number(value: float) -> str:
    """Format *value* for the table: thousands separators above 100, 3 significant digits below."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_table(outcomes: Iterable[Outcome], ceiling: Outcome | None = None) -> str:
    """Return a plain-text table of every figure, with goal, ceiling value and ratio columns.

    :param outcomes: the benchmarks to show, in order; missing and failed ones get one line.
    :param ceiling: the ceiling measured in the same run, for the ratio columns.
    """
    header = ("benchmark", "figure", "value", "unit", "goal", "ceiling", "ratio")
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        if outcome.status != "ok":
            rows.append((outcome.name, f"({outcome.status}: {outcome.error})", "", "", "", "", ""))
            continue
        for key, figure in outcome.figures.items():
            ceiling_value, ratio = ratio_to_ceiling(figure, ceiling, outcome)
            rows.append(
                (
                    outcome.name,
                    key,
                    format_number(figure.value),
                    figure.unit,
                    "" if figure.goal is None else format_number(figure.goal),
                    "" if ceiling_value is None else format_number(ceiling_value),
                    "" if ratio is None else f"{ratio:.2f}",
                )
            )
    widths = [len(title) for title in header]
    for row in rows:
        for index, cell in enumerate(row):
            if index == 1 and not row[2]:
                continue  # a missing/failed line may be long; don't widen the column for it
            widths[index] = max(widths[index], len(cell))
    numeric = {2, 4, 5, 6}

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if index in numeric else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def write_result(document: dict[str, Any], results_dir: Path) -> Path:
    """Write *document* to ``<results_dir>/<name>.json`` and return the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{document['name']}.json"
    temporary = path.with_suffix(".json.tmp")
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return path


def plan(names: Sequence[str]) -> list[str]:
    """Return the benchmarks to run, in order: the ceiling first whenever another one runs.

    :param names: the names asked for (empty: all registered benchmarks).
    :raises KeyError: naming an unknown benchmark.
    """
    chosen = list(dict.fromkeys(names)) if names else list(BENCHMARKS)
    for name in chosen:
        if name not in BENCHMARKS:
            raise KeyError(name)
    if any(name != CEILING for name in chosen):
        chosen = [CEILING, *(name for name in chosen if name != CEILING)]
    return chosen


def run_child(module: str, *, quick: bool, json_out: Path) -> int:
    """Import *module*, call its ``run(quick)`` and write the figures to *json_out*.

    This is what the harness runs in each benchmark's subprocess.

    :returns: the process exit status (0 on success).
    """
    try:
        benchmark = importlib.import_module(module)
        raw = benchmark.run(quick)
        figures = read_figures(raw)
    except Exception:
        traceback.print_exc()
        return 1
    document = {"figures": {key: figure.to_json() for key, figure in figures.items()}}
    json_out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


def run_standalone(
    name: str,
    run: Callable[[bool], dict[str, Any]],
    argv: Sequence[str],
    epilog: str | None = None,
) -> int:
    """Run one benchmark in this process, for a benchmark module's ``__main__`` block.

    Understands ``--quick``, ``--smoke`` and ``--json-out FILE``; prints the table.

    :param name: the benchmark's registered name.
    :param run: the module's ``run`` function.
    :param argv: the command-line arguments after the program name.
    :param epilog: shown after the options by ``--help`` (a module's own options, which it
        takes out of *argv* before calling this).
    :returns: the process exit status.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=run.__doc__,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short run (seconds, not minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny run, to test the benchmark")
    parser.add_argument("--json-out", type=Path, help="also write the figures to this file")
    options = parser.parse_args(argv)
    if options.smoke:
        os.environ[SMOKE_ENV] = "1"
    started = time.monotonic()
    figures = read_figures(run(options.quick))
    outcome = Outcome(name=name, status="ok", figures=figures, seconds=time.monotonic() - started)
    print(format_table([outcome]))
    if options.json_out is not None:
        document = result_document(outcome, quick=options.quick, smoke=options.smoke, ceiling=None)
        options.json_out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for ``python -m bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run Jarvis's benchmarks, print a table and write bench/results/<name>.json.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="short runs (about 20 s each)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny runs (a few hundred operations) to test the harness; figures are meaningless",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help=f"where to write <name>.json (default: {DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds before a benchmark is killed"
    )
    parser.add_argument("--child", metavar="MODULE", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench``.

    :param argv: arguments after the program name (default: ``sys.argv[1:]``).
    :returns: 0 when every benchmark that exists succeeded, 1 if one failed, 2 on bad usage.
    """
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.child:
        if options.json_out is None:
            parser.error("--child needs --json-out")
        return run_child(options.child, quick=options.quick, json_out=options.json_out)
    if options.list:
        for name, module in BENCHMARKS.items():
            state = "" if module_available(module) else "  (missing)"
            print(f"{name:<12} {module}{state}")
        return 0
    try:
        names = plan(options.names)
    except KeyError as unknown:
        parser.error(f"unknown benchmark {unknown.args[0]!r}; known: {', '.join(BENCHMARKS)}")
    outcomes: list[Outcome] = []
    ceiling: Outcome | None = None
    for name in names:
        print(f"== {name} ({BENCHMARKS[name]})", file=sys.stderr, flush=True)
        outcome = run_in_subprocess(
            name,
            BENCHMARKS[name],
            quick=options.quick,
            smoke=options.smoke,
            timeout=options.timeout,
        )
        if name == CEILING:
            ceiling = outcome
        outcomes.append(outcome)
        if outcome.status == "ok":
            document = result_document(
                outcome,
                quick=options.quick,
                smoke=options.smoke,
                ceiling=None if name == CEILING else ceiling,
            )
            path = write_result(document, options.results_dir)
            print(f"   wrote {path} ({outcome.seconds:.1f} s)", file=sys.stderr, flush=True)
        else:
            print(f"   {outcome.status}: {outcome.error}", file=sys.stderr, flush=True)
    print(format_table(outcomes, ceiling))
    return 1 if any(outcome.status == "failed" for outcome in outcomes) else 0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of *values* (``fraction`` in 0..1; NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def run_on_reactor(main: Callable[[Any], Coroutine[Any, Any, _T]]) -> _T:
    """Install the asyncio reactor, run ``main(reactor)`` on it, and return its result.

    :raises Exception: whatever *main* raised.
    """
    from twisted.internet import defer
    from twisted.python.failure import Failure

    from jarvis.runtime.reactor import install

    reactor = install()
    outcome: list[_T] = []
    failures: list[Failure] = []

    def start() -> None:
        finished: defer.Deferred[_T] = defer.ensureDeferred(main(reactor))
        finished.addCallbacks(outcome.append, failures.append)
        finished.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if failures:
        failures[0].raiseException()
    return outcome[0]
