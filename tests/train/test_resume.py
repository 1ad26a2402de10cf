"""Runs you can stop any way you like: SIGKILL, Ctrl-C, SIGTERM, NaN, a full disk; and resume exactly."""

import errno
import signal
import subprocess
import time

import killed_runs
import pytest
import torch
from killed_runs import signal_at_step
from safetensors.torch import load_file

from archdiff.config import load_recipe
from archdiff.errors import Diverged, UserError
from archdiff.run_files import MetricsLog, complete_checkpoints
from archdiff.train.checkpoints import read_state
from archdiff.train.run import run

pytestmark = pytest.mark.slow

STEPS = 24
QUICK = ["train.log_every=1", "train.checkpoint_every=4", "validation.prompts=[]"]


def train_command(run_dir, *extra):
    return killed_runs.train_command(run_dir, STEPS, QUICK, *extra)


def start_and_signal(run_dir, cwd, at_step, signal_number):
    """Start training and send a signal once metrics.jsonl shows `at_step` steps done."""
    return signal_at_step(train_command(run_dir), run_dir / "metrics.jsonl", at_step, signal_number, cwd=cwd)


def lora(run_dir):
    return load_file(run_dir / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_base):
    run_dir = tmp_path_factory.mktemp("resume") / "whole"
    done = subprocess.run(train_command(run_dir), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.mark.parametrize("kill_at", [5, 14])
def test_sigkill_then_resume_gives_the_same_lora_bit_for_bit(tmp_path, uninterrupted, kill_at):
    run_dir = tmp_path / "killed"
    code, _, _ = start_and_signal(run_dir, tmp_path, kill_at, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (run_dir / "pytorch_lora_weights.safetensors").exists(), "killed before the end"
    resumed = subprocess.run(train_command(run_dir, "--resume", "latest"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming 'demo-tiny' from" in resumed.stdout
    expected, got = lora(uninterrupted), lora(run_dir)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    steps = [row["step"] for row in MetricsLog.read(run_dir / "metrics.jsonl")]
    assert steps == list(range(STEPS + 1)), "each step logged once, the killed run's extra rows dropped"


@pytest.mark.parametrize(("signal_number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_checkpoint_and_print_the_resume_command(tmp_path, tiny_base, signal_number, code):
    run_dir = tmp_path / "stopped"
    returncode, _, stderr = start_and_signal(run_dir, tmp_path, 3, signal_number)
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"resume with: archdiff train --recipe {run_dir / 'recipe.yaml'} --resume latest" in stderr
    latest = complete_checkpoints(run_dir)[-1]
    state = read_state(latest)
    assert f"stopped at step {state.step}" in stderr and 3 <= state.step < STEPS
    adapter = {f"unet.{key}" for key in load_file(latest / "adapter.safetensors")}
    assert adapter == set(lora(run_dir)), "the checkpoint holds the adapter, and the LoRA so far was saved"


def test_resuming_a_finished_run_trains_nothing(uninterrupted):
    before = (uninterrupted / "metrics.jsonl").read_text()
    done = subprocess.run(train_command(uninterrupted, "--resume", "latest"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"already finished at step {STEPS} of {STEPS}: nothing to train" in done.stdout
    assert (uninterrupted / "metrics.jsonl").read_text() == before


def test_a_recipe_change_that_breaks_resumption_is_refused_by_name(uninterrupted):
    command = train_command(uninterrupted, "--resume", "latest", "--set", "train.batch_size=2", "--set", "data.resolution=48")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert (
        done.stderr.count("\n") == 1
        and "data.resolution (64 -> 48)" in done.stderr
        and "train.batch_size (4 -> 2)" in done.stderr
    )


def quick_recipe(run_dir, **train):
    overrides = [f"output={run_dir}", f"train.max_steps={STEPS}", "train.checkpoint_every=2", "validation.prompts=[]"]
    return load_recipe("demo-tiny", overrides + [f"train.{key}={value}" for key, value in train.items()])


def test_a_nan_loss_stops_the_run_naming_the_step(tmp_path, tiny_base, monkeypatch):
    import archdiff.train.step as step

    real_loss, calls = step.diffusion_loss, []

    def loss_that_explodes(*args, **kwargs):
        value = real_loss(*args, **kwargs)
        if not torch.is_grad_enabled():  # val_loss, not a training step
            return value
        calls.append(1)
        return value * float("nan") if len(calls) == 5 else value

    monkeypatch.setattr(step, "diffusion_loss", loss_that_explodes)
    with pytest.raises(Diverged, match=r"the loss became nan or inf at step 5; nothing from that step was applied"):
        run(quick_recipe(tmp_path / "nan"))
    kept = complete_checkpoints(tmp_path / "nan")
    assert [read_state(c).step for c in kept] == [2, 4], "the last good checkpoints stay"
    assert all(torch.isfinite(t).all() for t in load_file(kept[-1] / "adapter.safetensors").values())


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_base, monkeypatch):
    from accelerate import Accelerator

    real_save, saves = Accelerator.save_state, []

    def save_that_fills_the_disk(self, output_dir=None, **kwargs):
        saves.append(output_dir)
        real_save(self, output_dir, **kwargs)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", save_that_fills_the_disk)
    with pytest.raises(
        UserError, match=r"could not save the checkpoint for step 4: No space left on device; .*step-000002, is intact"
    ):
        run(quick_recipe(tmp_path / "full"))
    folder = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002"], "no half-written checkpoint is left"
    assert read_state(folder / "step-000002").step == 2 and load_file(folder / "step-000002" / "adapter.safetensors")


def test_sigterm_to_the_whole_process_group_with_data_workers_still_checkpoints(tmp_path, tiny_base):
    """`timeout`, `kill -- -PGID`, SLURM and systemd signal every process of the run, DataLoader workers too."""
    import os

    run_dir = tmp_path / "group"
    command = train_command(run_dir, "--set", "data.num_workers=2")
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, **pipes)
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and MetricsLog.read(metrics)[-1]["step"] >= 3:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and "resume with: archdiff train" in stderr
    assert 3 <= read_state(complete_checkpoints(run_dir)[-1]).step < STEPS


def _disk_full(kind):
    """What a full disk looks like from torch.save (RuntimeError) and safetensors' save_file (SafetensorError)."""
    from safetensors import SafetensorError

    if kind == "torch":
        return RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0")
    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("kind", ["torch", "safetensors"])
def test_a_full_disk_reported_by_torch_or_safetensors_keeps_the_previous_checkpoint(tmp_path, tiny_base, monkeypatch, kind):
    from accelerate import Accelerator

    real_save, saves = Accelerator.save_state, []

    def save_that_fills_the_disk(self, output_dir=None, **kwargs):
        saves.append(output_dir)
        real_save(self, output_dir, **kwargs)
        if len(saves) == 2:
            raise _disk_full(kind)

    monkeypatch.setattr(Accelerator, "save_state", save_that_fills_the_disk)
    reason = "PytorchStreamWriter failed writing file" if kind == "torch" else "No space left on device"
    with pytest.raises(UserError, match=rf"could not save the checkpoint for step 4: .*{reason}.*; .*step-000002, is intact"):
        run(quick_recipe(tmp_path / "full"))
    folder = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002"], "no half-written checkpoint is left"


@pytest.mark.parametrize("kind", ["oserror", "torch", "safetensors"])
def test_a_full_disk_while_saving_the_lora_leaves_no_partial_file(tmp_path, tiny_base, monkeypatch, kind):
    from diffusers import StableDiffusionPipeline

    def save_that_fills_the_disk(save_directory, **kwargs):
        (save_directory / "pytorch_lora_weights.safetensors").write_bytes(b"\x00" * 100)  # half a file
        raise OSError(errno.ENOSPC, "No space left on device") if kind == "oserror" else _disk_full(kind)

    monkeypatch.setattr(StableDiffusionPipeline, "save_lora_weights", staticmethod(save_that_fills_the_disk))
    run_dir = tmp_path / "full"
    with pytest.raises(UserError, match=r"could not save the LoRA to .*pytorch_lora_weights.safetensors: "):
        run(quick_recipe(run_dir, max_steps=4))
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [], "the staging folder is gone"
    assert not (run_dir / "pytorch_lora_weights.safetensors").exists()
    assert [read_state(c).step for c in complete_checkpoints(run_dir)] == [2, 4], "every checkpoint is kept"
