"""How long `archdiff --help` and a few subcommand `--help`s take, each in a fresh process.

    python benchmarks/cli_startup.py [--runs 15] [--command "archdiff --help"] ...

A help screen must not pay for torch, diffusers or pydantic. Each command runs RUNS times from an empty
temporary folder, after one untimed warm-up run (so the figures are warm-cache ones); prints the median
and the minimum wall time of each. `archdiff` is the console script next to the running interpreter,
or `python -m archdiff` when there is none.
"""

from __future__ import annotations

import argparse
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


def wall_times(argv: list[str], runs: int, cwd: str) -> list[float]:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)  # warm-up: file cache, .pyc files
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--command", action="append", help="archdiff arguments to time, e.g. 'train --help' (repeatable; default: a few helps)"
    )
    args = parser.parse_args()
    base = archdiff_command()
    print(f"{shlex.join(base)}, {args.runs} runs each (after one warm-up)")
    print(f"{'command':<28} {'median':>8} {'min':>8}")
    with tempfile.TemporaryDirectory(prefix="archdiff-startup-") as cwd:
        for command in args.command or DEFAULT_COMMANDS:
            times = wall_times([*base, *shlex.split(command)], args.runs, cwd)
            print(f"{command:<28} {statistics.median(times):>7.3f}s {min(times):>7.3f}s")


if __name__ == "__main__":
    main()
