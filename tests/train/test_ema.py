"""train.ema: the average is exact, resumes bit for bit, is what validation measures and what the run saves."""

import signal
import subprocess
import sys

import killed_runs
import numpy
import pytest
import torch
from killed_runs import signal_at_step
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from archdiff.cli import main
from archdiff.config import load_recipe
from archdiff.config.schema import EmaConfig
from archdiff.errors import UserError
from archdiff.run_files import MetricsLog
from archdiff.train.checkpoints import checkpoint_name
from archdiff.train.ema import AdapterEMA
from archdiff.train.run import run

STEPS = 8
EMA = "train.ema={decay: 0.5, start_step: 1}"
QUICK = ["train.log_every=1", "train.val_every=2", "train.checkpoint_every=1", "train.checkpoint_limit=20"]
QUICK += ["validation.prompts=[]"]


def train_command(run_dir, *extra):
    return killed_runs.train_command(run_dir, STEPS, [*QUICK, EMA], *extra)


def checkpoint_file(run_dir, step, name):
    return load_file(run_dir / "checkpoints" / checkpoint_name(step) / name)


def diffusers_keys(tensors):
    """A checkpoint's peft keys (adapter.safetensors `x.lora_A.weight`, ema.safetensors `unet.x.lora_A.default.weight`)
    as the run's LoRA file names them (`unet.x.lora_A.weight`)."""
    return {("" if key.startswith("unet.") else "unet.") + key.replace(".default.", "."): value for key, value in tensors.items()}


def pixels(path):
    return torch.from_numpy(numpy.array(Image.open(path)))


def assert_same(expected, got):
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected), "not bit-identical"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_base):
    run_dir = tmp_path_factory.mktemp("ema") / "whole"
    done = subprocess.run(train_command(run_dir), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return run_dir


def test_the_average_by_hand_every_start_step_swap_and_file_round_trip(tmp_path):
    weight = torch.nn.Parameter(torch.zeros(3))
    ema = AdapterEMA(EmaConfig(decay=0.75, start_step=2, every=2), {"w": weight})
    expected = None
    for step in range(1, 8):
        with torch.no_grad():
            weight.copy_(torch.full((3,), float(step)))
        ema.update(step)
        if step <= 2:
            expected = float(step)  # a copy up to start_step
        elif (step - 2) % 2 == 0:
            expected = 0.75 * expected + 0.25 * step
        assert torch.equal(ema.shadow["w"], torch.full((3,), expected)), step
    assert ema.updates == 2  # steps 4 and 6
    with ema.swapped():
        assert torch.equal(weight.detach(), torch.full((3,), expected))
    assert torch.equal(weight.detach(), torch.full((3,), 7.0)), "the raw weights come back"
    ema.save(tmp_path)
    again = AdapterEMA(EmaConfig(), {"w": torch.nn.Parameter(torch.zeros(3))})
    again.load(tmp_path)
    assert torch.equal(again.shadow["w"], ema.shadow["w"]) and again.updates == 2
    with pytest.raises(UserError, match="does not hold this recipe's trainable weights"):
        AdapterEMA(EmaConfig(), {"v": torch.nn.Parameter(torch.zeros(3))}).load(tmp_path)


@pytest.mark.slow
def test_the_saved_lora_is_the_average_of_the_raw_weights_and_the_raw_file_the_raw_ones(uninterrupted):
    """decay 0.5 from step 1: ema_1 = raw_1, ema_k = (ema_{k-1} + raw_k) / 2, from each checkpoint's raw adapter."""
    expected = checkpoint_file(uninterrupted, 1, "adapter.safetensors")
    for step in range(1, STEPS + 1):
        raw = checkpoint_file(uninterrupted, step, "adapter.safetensors")
        expected = raw if step == 1 else {key: 0.5 * expected[key] + 0.5 * raw[key] for key in raw}
        got = diffusers_keys(checkpoint_file(uninterrupted, step, "ema.safetensors"))
        assert got.keys() == diffusers_keys(expected).keys()
        for key, value in diffusers_keys(expected).items():
            torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-8)
    final_ema = diffusers_keys(checkpoint_file(uninterrupted, STEPS, "ema.safetensors"))
    assert_same(final_ema, load_file(uninterrupted / "pytorch_lora_weights.safetensors"))
    final_raw = diffusers_keys(checkpoint_file(uninterrupted, STEPS, "adapter.safetensors"))
    assert_same(final_raw, load_file(uninterrupted / "pytorch_lora_weights_raw.safetensors"))
    assert not all(torch.equal(final_ema[key], final_raw[key]) for key in final_ema), "the average differs from the raw"
    with safe_open(uninterrupted / "checkpoints" / checkpoint_name(STEPS) / "ema.safetensors", framework="pt") as handle:
        assert handle.metadata()["updates"] == str(STEPS - 1)
    averaged = {value.numpy().tobytes() for value in final_ema.values()}
    kohya = [value for key, value in load_file(uninterrupted / "demo-tiny.safetensors").items() if not key.endswith(".alpha")]
    assert kohya and all(value.numpy().tobytes() in averaged for value in kohya), "the kohya twin holds the average too"


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_average_and_loras_bit_for_bit(tmp_path, uninterrupted):
    run_dir = tmp_path / "killed"
    command = train_command(run_dir)
    code, _, _ = signal_at_step(command, run_dir / "metrics.jsonl", 5, signal.SIGKILL, cwd=tmp_path)
    assert code == -signal.SIGKILL
    assert not (run_dir / "pytorch_lora_weights_raw.safetensors").exists(), "killed before the end"
    resumed = subprocess.run([*command, "--resume", "latest"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming 'demo-tiny' from" in resumed.stdout
    for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_raw.safetensors", "demo-tiny.safetensors"):
        assert_same(load_file(uninterrupted / name), load_file(run_dir / name))
    for name in ("ema.safetensors", "adapter.safetensors"):
        assert_same(checkpoint_file(uninterrupted, STEPS, name), checkpoint_file(run_dir, STEPS, name))
    whole, again = MetricsLog.read(uninterrupted / "metrics.jsonl"), MetricsLog.read(run_dir / "metrics.jsonl")
    assert [(r["step"], r["loss"], r["val_loss"]) for r in whole] == [(r["step"], r["loss"], r["val_loss"]) for r in again]


@pytest.mark.slow
def test_validation_measures_the_average_while_training_continues_on_the_raw_weights(tmp_path, tiny_base):
    """decay 1.0: the average never leaves the untrained LoRA, so val_loss and the sample grids stay the untrained
    ones; the losses and raw weights are those of the same run without EMA."""
    sets = ["train.max_steps=4", *QUICK[:-1], "train.checkpoint_every=4"]
    sets += ["validation.every=2", "validation.steps=2", "validation.seeds=[0]"]
    plain = run(load_recipe("demo-tiny", [f"output={tmp_path / 'plain'}", *sets]))
    frozen = run(load_recipe("demo-tiny", [f"output={tmp_path / 'frozen'}", *sets, "train.ema={decay: 1.0}"]))
    plain_rows, frozen_rows = MetricsLog.read(plain.run_dir / "metrics.jsonl"), MetricsLog.read(frozen.run_dir / "metrics.jsonl")
    assert [row["loss"] for row in frozen_rows] == [row["loss"] for row in plain_rows], "the steps train the raw weights"
    frozen_val = [row["val_loss"] for row in frozen_rows if row["val_loss"] is not None]
    plain_val = [row["val_loss"] for row in plain_rows if row["val_loss"] is not None]
    assert len(frozen_val) == 3 and set(frozen_val) == {plain_val[0]}, "the average is the untrained LoRA throughout"
    assert plain_val[-1] != plain_val[0], "while the raw weights move the held-out loss"
    assert_same(load_file(plain.lora_file), load_file(frozen.run_dir / "pytorch_lora_weights_raw.safetensors"))
    grids = {
        name: [pixels(result.run_dir / "samples" / f"{checkpoint_name(step)}.png") for step in (2, 4)]
        for name, result in (("plain", plain), ("frozen", frozen))
    }
    assert torch.equal(*grids["frozen"]), "the progress grid and the final one draw the same (untrained) average"
    assert not torch.equal(grids["plain"][1], grids["frozen"][1]), "the raw weights draw something else"
    saved = load_file(frozen.lora_file)
    assert all(not value.any() for key, value in saved.items() if "lora_B" in key), "the untrained LoRA (B = 0) is saved"


def test_a_controlnet_run_refuses_ema_in_one_line_with_exit_2(tmp_path, tiny_base, monkeypatch, capsys):
    output = tmp_path / "out"
    argv = ["archdiff", "train", "-r", "demo-controlnet", "-o", str(output), "--set", "train.ema={}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == "archdiff: error: train.ema does not apply to ControlNet runs (controlnet:): remove train.ema from the recipe\n"
    assert not output.exists()
