"""Two processes x batch b train on exactly the samples one process x batch 2b trains on, step by step.

Equal LoRA weights on both ranks (tests/train/test_multiprocess.py) prove little: DDP averages the gradients,
so the ranks agree even when both trained on the same samples. Nor can the final LoRAs of the two set-ups be
compared: each process draws its own noise and timesteps, and on the tiny model that noise moves lora_B
as much as the data does (measured on 8 steps: a 2x2 run's lora_B differs from the 1x4 run's by 105 % of its
norm, and from a 2x2 run whose ranks both loaded rank 0's samples by only 19 %).

So the test watches the data itself: a sitecustomize on the launched processes' PYTHONPATH wraps
SampleSet.__getitem__ and appends every training sample each process loads (index, epoch) to a file per rank.
At every step, rank 0's b samples followed by rank 1's must be the one-process run's 2b samples, in order:
a rank that loads its neighbour's slice, the whole global batch, or a bucket of its own fails. The
learning rate, which accelerate's scheduler steps once per process, must follow the one-process schedule.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from archdiff.config import load_recipe
from archdiff.data.samples import SampleSet
from archdiff.run_files import MetricsLog
from archdiff.train.run import run

pytestmark = pytest.mark.slow

STEPS, PER_PROCESS = 5, 2
SETTINGS = [f"train.max_steps={STEPS}", "train.log_every=1", "train.checkpoint_every=null", "validation.prompts=[]"]

RECORD_LOADED_SAMPLES = textwrap.dedent(
    """
    # Written by tests/train/test_ddp_equivalence.py: record the training samples this process loads.
    import os

    from archdiff.data.samples import SampleSet

    _load = SampleSet.__getitem__


    def _recording(self, key):
        if self.train:
            name = os.path.join(os.environ["ARCHDIFF_TEST_SAMPLES"], "rank" + os.environ.get("RANK", "0"))
            with open(name, "a") as handle:
                handle.write("%d %d\\n" % key)
        return _load(self, key)


    SampleSet.__getitem__ = _recording
    """
)


def per_step(samples: list[tuple[int, int]], batch: int) -> list[list[tuple[int, int]]]:
    assert len(samples) == STEPS * batch, f"{len(samples)} samples loaded for {STEPS} steps of {batch}"
    return [samples[step * batch : (step + 1) * batch] for step in range(STEPS)]


def read_samples(path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]


def learning_rates(run_dir) -> list[tuple[int, float]]:
    return [(row["step"], row["lr"]) for row in MetricsLog.read(run_dir / "metrics.jsonl")]


def test_two_processes_of_batch_b_load_what_one_process_of_batch_2b_loads(tmp_path, tiny_base, monkeypatch):
    single_samples = []
    load = SampleSet.__getitem__

    def recording(self, key):
        if self.train:
            single_samples.append(key)
        return load(self, key)

    with monkeypatch.context() as patch:
        patch.setattr(SampleSet, "__getitem__", recording)
        overrides = [f"output={tmp_path / 'one'}", f"train.batch_size={2 * PER_PROCESS}", *SETTINGS]
        single = run(load_recipe("demo-tiny", overrides)).run_dir

    hooks, samples = tmp_path / "hooks", tmp_path / "samples"
    hooks.mkdir()
    samples.mkdir()
    (hooks / "sitecustomize.py").write_text(RECORD_LOADED_SAMPLES)
    path = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "ARCHDIFF_TEST_SAMPLES": str(samples)}
    command = [sys.executable, "-m", "archdiff", "train", "-r", "demo-tiny", "--num-processes", "2", "-o", str(tmp_path / "two")]
    for setting in [f"train.batch_size={PER_PROCESS}", *SETTINGS]:
        command += ["--set", setting]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "processes: 2, LoRA weights identical on every rank" in done.stdout

    assert sorted(p.name for p in samples.iterdir()) == ["rank0", "rank1"], "each process recorded what it loaded"
    one = per_step(single_samples, 2 * PER_PROCESS)
    rank0, rank1 = (per_step(read_samples(samples / name), PER_PROCESS) for name in ("rank0", "rank1"))
    for step in range(STEPS):
        assert rank0[step] + rank1[step] == one[step], f"step {step + 1}: the ranks split the one-process batch"
    assert learning_rates(tmp_path / "two") == learning_rates(single), "the same learning rate at every step"
