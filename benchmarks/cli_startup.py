"""How long `archdiff --help` and a few subcommand `--help`s take, each in a fresh process.

    python benchmarks/cli_startup.py [--runs 15] [--command="train --help"] ...

A help screen must not pay for torch, diffusers or the recipe schema. Each command runs RUNS times from
an empty temporary folder, after one untimed warm-up run (so the figures are warm-cache ones); prints
the median and the minimum wall time of each, and the median CPU time (user + system), which other
processes on a busy machine inflate much less than wall time. `archdiff` is the console script next to
the running interpreter, or `python -m archdiff` when there is none.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_COMMANDS = ["--help", "train --help", "data --help", "recipes list --help", "sample --help"]


def archdiff_command() -> list[str]:
    """The installed console script (what users run), else the module."""
    script = Path(sys.executable).parent / "archdiff"
    return [str(script)] if script.exists() else [sys.executable, "-m", "archdiff"]


def cpu_seconds() -> float:
    """User + system time of all finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timings(argv: list[str], runs: int, cwd: str) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run."""
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)  # warm-up: file cache, .pyc files
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
        wall.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--command", action="append", help="archdiff arguments to time, e.g. 'train --help' (repeatable; default: a few helps)"
    )
    args = parser.parse_args()
    base = archdiff_command()
    print(f"{shlex.join(base)}, {args.runs} runs each (after one warm-up)")
    print(f"{'command':<28} {'median':>8} {'min':>8} {'cpu':>8}")
    with tempfile.TemporaryDirectory(prefix="archdiff-startup-") as cwd:
        for command in args.command or DEFAULT_COMMANDS:
            wall, cpu = timings([*base, *shlex.split(command)], args.runs, cwd)
            print(f"{command:<28} {statistics.median(wall):>7.3f}s {min(wall):>7.3f}s {statistics.median(cpu):>7.3f}s")


if __name__ == "__main__":
    main()
