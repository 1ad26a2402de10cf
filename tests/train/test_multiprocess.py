"""Two CPU processes through `--num-processes 2` (torchrun underneath): DDP with one writer."""

import subprocess
import sys

import pytest

from archdiff.run_files import MetricsLog, complete_checkpoints

pytestmark = pytest.mark.slow


def test_two_processes_train_one_lora_and_only_rank_0_writes(tmp_path, tiny_base):
    command = [sys.executable, "-m", "archdiff", "train", "-r", "demo-tiny", "--num-processes", "2", "-o", "out"]
    command += ["--max-steps", "6", "--set", "train.log_every=1", "--set", "train.checkpoint_every=3"]
    command += ["--set", "validation.prompts=[]"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("processes: 2, LoRA weights identical on every rank") == 1, "rank 1 reports nothing"
    assert done.stdout.count("archdiff: training 'demo-tiny'") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    run_dir = tmp_path / "out"
    assert [row["step"] for row in MetricsLog.read(run_dir / "metrics.jsonl")] == list(range(7)), "one writer, each step once"
    for checkpoint in complete_checkpoints(run_dir):
        names = sorted(p.name for p in checkpoint.iterdir())
        assert {"random_states_0.pkl", "random_states_1.pkl", "adapter.safetensors"} <= set(names), names


def test_two_processes_train_one_controlnet(tmp_path, tiny_base):
    command = [sys.executable, "-m", "archdiff", "train", "-r", "demo-controlnet", "--num-processes", "2", "-o", "out"]
    command += ["--max-steps", "4", "--set", "train.checkpoint_every=2", "--set", "validation.prompts=[]"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("processes: 2, ControlNet weights identical on every rank") == 1
    checkpoints = complete_checkpoints(tmp_path / "out")
    assert [sorted(p.name for p in c.iterdir() if p.suffix == ".safetensors") for c in checkpoints] == [
        ["controlnet.safetensors"]
    ] * 2
    assert (tmp_path / "out" / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
