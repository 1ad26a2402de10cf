"""Kill training with SIGKILL at random steps, resume, and compare the final LoRA with an uninterrupted run.

    OMP_NUM_THREADS=1 python benchmarks/resume_trials.py [--trials 10] [--steps 40] [--seed 0]

Each trial starts demo-tiny in a fresh folder, kills it (SIGKILL: no chance to save anything) once
metrics.jsonl reaches a random step, resumes with `--resume latest`, and checks the final LoRA tensors
for bit equality with the uninterrupted run. Prints one line per trial and a summary.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def command(run_dir: Path, steps: int, *extra: str) -> list[str]:
    settings = ["train.log_every=1", "train.checkpoint_every=5", "validation.prompts=[]"]
    return (
        [sys.executable, "-m", "archdiff", "train", "-r", "demo-tiny", "-o", str(run_dir), "--max-steps", str(steps)]
        + [item for setting in settings for item in ("--set", setting)]
        + list(extra)
    )


def last_logged_step(run_dir: Path) -> int:
    from archdiff.run_files import MetricsLog

    rows = MetricsLog.read_if_exists(run_dir / "metrics.jsonl")
    return rows[-1]["step"] if rows else -1


def kill_at(run_dir: Path, steps: int, step: int) -> int:
    process = subprocess.Popen(command(run_dir, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and last_logged_step(run_dir) < step:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return last_logged_step(run_dir)


def same_lora(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    left, right = load_file(a / "pytorch_lora_weights.safetensors"), load_file(b / "pytorch_lora_weights.safetensors")
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def main() -> None:
    from archdiff.run_files import complete_checkpoints

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        reference = Path(scratch) / "uninterrupted"
        subprocess.run(command(reference, args.steps), check=True, capture_output=True)
        identical = 0
        for trial in range(args.trials):
            run_dir = Path(scratch) / f"trial{trial}"
            target = rng.randint(1, args.steps - 1)
            reached = kill_at(run_dir, args.steps, target)
            # killed before the first checkpoint: nothing to resume, the run starts again
            how = ["--resume", "latest"] if complete_checkpoints(run_dir) else ["--overwrite"]
            subprocess.run(command(run_dir, args.steps, *how), check=True, capture_output=True)
            same = same_lora(reference, run_dir)
            identical += same
            verdict = "identical" if same else "DIFFERENT"
            print(f"trial {trial}: killed after step {reached} (aimed at {target}), then {' '.join(how)}: {verdict}")
    print(f"{identical} of {args.trials} resumed runs are bit-identical to the uninterrupted run")


if __name__ == "__main__":
    main()
