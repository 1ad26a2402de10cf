"""Checkpoints load as tensors and plain data only: a planted pickle runs no code, a damaged one is named."""

import pickle

import pytest
import torch

from archdiff.config import load_recipe
from archdiff.errors import UserError
from archdiff.run_files import complete_checkpoints
from archdiff.train.checkpoints import check_safe_to_load
from archdiff.train.run import run


class Planted:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_plain_states_pass_and_code_or_damage_is_refused(tmp_path):
    checkpoint = tmp_path / "step-000002"
    checkpoint.mkdir()
    with pytest.raises(UserError, match="has no random_states_0.pkl"):
        check_safe_to_load(checkpoint)
    torch.save({"step": 2, "torch_manual_seed": torch.get_rng_state()}, checkpoint / "random_states_0.pkl")
    torch.save({"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}, checkpoint / "optimizer.bin")
    check_safe_to_load(checkpoint)

    (checkpoint / "scheduler.bin").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError, match=r"scheduler.bin is damaged or holds more than tensors"):
        check_safe_to_load(checkpoint)


@pytest.mark.slow
def test_resuming_a_checkpoint_with_planted_code_refuses_before_running_it(tmp_path, tiny_base):
    overrides = [f"output={tmp_path / 'run'}", "train.max_steps=2", "train.checkpoint_every=1", "validation.prompts=[]"]
    run(load_recipe("demo-tiny", overrides))
    checkpoint = complete_checkpoints(tmp_path / "run")[-1]
    marker = tmp_path / "code-ran"
    with (checkpoint / "random_states_0.pkl").open("wb") as handle:
        pickle.dump({"step": 2, "payload": Planted(marker)}, handle)
    more = load_recipe("demo-tiny", [*overrides[:1], "train.max_steps=4", *overrides[2:]])
    with pytest.raises(UserError, match=r"random_states_0.pkl is damaged or holds more than tensors and plain data"):
        run(more, resume="latest")
    assert not marker.exists(), "nothing in the checkpoint was executed"


def test_planted_code_is_told_from_damage(tmp_path):
    """Damage lets `--resume latest` fall back to an older checkpoint; planted code never does."""
    from archdiff.train.checkpoints import UnsafeCheckpoint

    checkpoint = tmp_path / "step-000002"
    checkpoint.mkdir()
    (checkpoint / "random_states_0.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError, match="random_states_0.pkl is damaged") as damaged:
        check_safe_to_load(checkpoint)
    assert not isinstance(damaged.value, UnsafeCheckpoint)
    (checkpoint / "random_states_0.pkl").write_bytes(pickle.dumps({"payload": Planted(tmp_path / "code-ran")}))
    with pytest.raises(UnsafeCheckpoint):
        check_safe_to_load(checkpoint)
    assert not (tmp_path / "code-ran").exists()


def test_metrics_drop_a_half_written_last_line_and_name_damage_elsewhere(tmp_path):
    from archdiff.run_files import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "lo')
    assert MetricsLog.read(path) == [{"step": 0}, {"step": 1}]
    MetricsLog(path).keep_until(5)
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'
    path.write_text('{"step": 0}\n{"st\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl line 2 is not JSON"):
        MetricsLog.read(path)


def test_a_checkpoint_from_before_data_decode_resumes_with_full_decodes_only(tmp_path):
    """Runs before data.decode decoded every image in full: their checkpoints carry no such field, and resuming them
    with today's default (reduced) would change every cached latent; the refusal says how to set it back."""
    from archdiff.train.checkpoints import TrainerState, changes_that_break_resume, check_resumable

    current = load_recipe("demo-tiny").model_dump(mode="json")
    before = {
        **current,
        "data": {key: value for key, value in current["data"].items() if key not in ("decode", "decode_workers")},
    }
    assert changes_that_break_resume(before, current) == ["data.decode"]
    with pytest.raises(UserError, match=r"data\.decode \('full' -> 'reduced'\); set it back \(--set data\.decode=\"full\"\)"):
        check_resumable(TrainerState(10, 10, before), current, tmp_path / "step-000010")
    full = load_recipe("demo-tiny", ["data.decode=full", "data.decode_workers=1"]).model_dump(mode="json")
    assert changes_that_break_resume(before, full) == [], "the same decodes, any worker count"
