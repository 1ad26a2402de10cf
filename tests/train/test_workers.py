"""`data.num_workers: 2` (facade-lora's default) in real runs: the same LoRA bit for bit as without workers,
and a Ctrl-C with the workers alive stops cleanly, leaves no worker behind and resumes to that same LoRA.

Every item's augmentation is seeded by (seed, epoch, index) and the loader's worker seeds come from its own
generator, never the global RNG that draws noise and timesteps: the worker count cannot change a run.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from archdiff.config import load_recipe
from archdiff.run_files import MetricsLog, complete_checkpoints
from archdiff.train.checkpoints import read_state
from archdiff.train.run import run

pytestmark = pytest.mark.slow

STEPS = 16
SETTINGS = [f"train.max_steps={STEPS}", "train.log_every=1", "validation.prompts=[]", "train.val_every=8"]


def lora(run_dir):
    return load_file(run_dir / "pytorch_lora_weights.safetensors")


def same_tensors(expected, got):
    return expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)


def losses(run_dir):
    """(step, loss, val_loss) of every logged step: what training did, without the timings."""
    return [(row["step"], row["loss"], row["val_loss"]) for row in MetricsLog.read(run_dir / "metrics.jsonl")]


class WorkerWatch:
    """Polls this process's descendants while a run trains: the DataLoader workers it started (any start method)."""

    def __init__(self):
        self.seen: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        me = psutil.Process()
        while not self._done.wait(0.02):
            for child in me.children(recursive=True):
                try:
                    if child.name() == "pt_data_worker":  # torch names its DataLoader workers so
                        self.seen.add(child.pid)
                except psutil.NoSuchProcess:
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


@pytest.fixture(scope="module")
def runs_by_workers(tmp_path_factory, tiny_base):
    """The same short run with 0 and with 2 DataLoader workers, in this process; and the workers seen during each."""
    folder = tmp_path_factory.mktemp("workers")
    runs, workers = {}, {}
    for count in (0, 2):
        recipe = load_recipe("demo-tiny", [f"output={folder / f'w{count}'}", f"data.num_workers={count}", *SETTINGS])
        with WorkerWatch() as watch:
            runs[count] = run(recipe).run_dir
        workers[count] = watch.seen
    return runs, workers


def test_two_workers_give_the_same_lora_bit_for_bit_as_none(runs_by_workers):
    runs, workers = runs_by_workers
    assert workers[0] == set() and len(workers[2]) == 2, f"2 worker processes loaded the data: {workers}"
    assert same_tensors(lora(runs[0]), lora(runs[2]))
    assert losses(runs[0]) == losses(runs[2]), "every step's loss and each val_loss identical too"
    assert [step for step, _, _ in losses(runs[2])] == list(range(STEPS + 1))


def train_command(run_dir, *extra):
    command = [sys.executable, "-m", "archdiff", "train", "-r", "demo-tiny", "-o", str(run_dir), "--set", "data.num_workers=2"]
    command += ["--set", "train.checkpoint_every=4"]
    for setting in SETTINGS:
        command += ["--set", setting]
    return [*command, *extra]


def test_ctrl_c_with_workers_alive_exits_130_leaves_no_worker_and_resumes_to_the_same_lora(tmp_path, runs_by_workers):
    """Ctrl-C in a terminal signals the whole foreground process group: the main process and its workers."""
    runs, _ = runs_by_workers
    run_dir = tmp_path / "stopped"
    # Output to files, not pipes: a worker inherits the pipes, and reading them to the end would wait for it.
    with (tmp_path / "out.txt").open("w") as out, (tmp_path / "err.txt").open("w") as err:
        process = subprocess.Popen(train_command(run_dir), cwd=tmp_path, stdout=out, stderr=err, start_new_session=True)
    workers = []
    try:
        metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.is_file() and MetricsLog.read(metrics)[-1]["step"] >= 5:
                break
            time.sleep(0.05)
        workers = [child for child in psutil.Process(process.pid).children(recursive=True) if child.name() == "pt_data_worker"]
        assert len(workers) == 2, "the DataLoader workers are alive when Ctrl-C comes"
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        _, alive = psutil.wait_procs(workers, timeout=1)  # an orphan would notice its parent is gone only after up to 5 s
        assert alive == [], "the main process shut its DataLoader workers down before exiting"
        stderr = (tmp_path / "err.txt").read_text()
        assert process.returncode == 130, stderr[-3000:]
        assert "Traceback" not in stderr
    finally:
        for leftover in [process, *workers]:  # only what this test started
            try:
                leftover.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        process.wait(timeout=30)

    latest = complete_checkpoints(run_dir)[-1]
    stopped_at = read_state(latest).step
    assert 5 <= stopped_at < STEPS and f"stopped at step {stopped_at}" in stderr
    resume = train_command(run_dir, "--resume", "latest")
    resumed = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming 'demo-tiny' from {latest}" in resumed.stdout
    assert same_tensors(lora(runs[2]), lora(run_dir)), "stopped and resumed with workers = uninterrupted"
    assert losses(run_dir) == losses(runs[2]), "each step logged once, with the uninterrupted run's losses"
