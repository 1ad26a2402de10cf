"""Training subprocesses signalled mid-run, for the resume tests (imported by tests in this folder)."""

import subprocess
import sys
import time

from archdiff.run_files import MetricsLog


def signal_at_step(command: list[str], metrics, at_step: int, signal_number: int, cwd=None, env=None, wait: float = 180):
    """Start `command`, send `signal_number` once `metrics` (a metrics.jsonl) logs `at_step`; (returncode, stdout, stderr)."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and process.poll() is None:
        if MetricsLog.last_step(metrics) >= at_step:
            break
        time.sleep(0.02)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def train_command(run_dir, steps: int, settings: list[str], *extra: str) -> list[str]:
    """`archdiff train -r demo-tiny` into `run_dir` for `steps` steps, each recipe setting as a --set, then `extra`."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    return [
        sys.executable,
        "-m",
        "archdiff",
        "train",
        "-r",
        "demo-tiny",
        "-o",
        str(run_dir),
        "--max-steps",
        str(steps),
        *sets,
        *extra,
    ]
