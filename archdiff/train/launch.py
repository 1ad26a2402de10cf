"""`archdiff train --num-processes N`: start N copies of the same command as one DDP job.

Only a shortcut for the launchers people already use: `accelerate launch` on GPUs, and torchrun on
CPUs (accelerate's own CPU mode starts a single process without MPI). Under either, accelerate
reads the rank from the environment, so the training code is the same as for one process.
"""

from __future__ import annotations

import os
import subprocess
import sys


def launched_by_a_launcher() -> bool:
    return "LOCAL_RANK" in os.environ


def without_num_processes(argv: list[str]) -> list[str]:
    """The command line minus `--num-processes N` (or `--num-processes=N`), for the copies to run."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--num-processes":
            skip = True
        elif not arg.startswith("--num-processes="):
            kept.append(arg)
    return kept


def launch_command(num_processes: int, cuda: bool, archdiff_args: list[str]) -> list[str]:
    if cuda:
        launcher = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes)]
    else:
        launcher = ["torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes)]
    return [sys.executable, "-m", *launcher, "-m", "archdiff", *archdiff_args]


def relaunch(num_processes: int, argv: list[str]) -> int:
    """Run the job and return its exit code; every process gets one CPU thread unless told otherwise."""
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(launch_command(num_processes, torch.cuda.is_available(), without_num_processes(argv)), env=env)
