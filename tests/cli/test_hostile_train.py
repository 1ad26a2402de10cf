"""`archdiff train` against damaged inputs, through the real entry point: one `archdiff: error:` line and exit
code 2 where it must stop, a named fallback where it can carry on, and an earlier run's files intact either way.

The finished 3-step run (a checkpoint at every step) is trained once per session (tests/cli/conftest.py's
`finished_sd15`, shared with test_hostile_outputs.py); each test that changes it works on a copy.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hostile import FINISHED_SD15, FINISHED_STEPS, tree_digest, user_error
from safetensors.torch import load_file

STEPS = FINISHED_STEPS
TINY = FINISHED_SD15  # resuming the finished run takes the arguments that trained it
LORA = "pytorch_lora_weights.safetensors"
KOHYA = "demo-tiny.safetensors"
NEWEST = "checkpoints/step-000003"


@pytest.fixture
def finished(finished_sd15: Path) -> Path:
    """The session's finished run, read only: what a copy must end up equal to."""
    return finished_sd15


@pytest.fixture
def earlier(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, this test's to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


@pytest.fixture
def tiny_folder(archdiff_cache: Path) -> Path:
    """The tiny-sd15 pipeline folder the session built, to copy and damage."""
    (index,) = archdiff_cache.rglob("sd15/model_index.json")
    return index.parent


def same_tensors(a: Path, b: Path) -> bool:
    first, second = load_file(a), load_file(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# 1. A failing --overwrite destroys nothing: the base and the adapter are checked before the folder is touched.


def _base_with(tiny_folder: Path, tmp_path: Path, damage) -> list[str]:
    base = Path(shutil.copytree(tiny_folder, tmp_path / "half-downloaded"))
    damage(base)
    return ["--base", str(base)]


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        pytest.param(lambda b: cut(b / "unet/diffusion_pytorch_model.safetensors"), "unet", id="cut-unet-weights"),
        pytest.param(lambda b: cut(b / "vae/diffusion_pytorch_model.safetensors"), "vae", id="cut-vae-weights"),
        pytest.param(lambda b: cut(b / "text_encoder/model.safetensors"), "text_encoder", id="cut-text-encoder-weights"),
        pytest.param(lambda b: cut(b / "model_index.json"), "half-downloaded", id="cut-model-index"),
        pytest.param(lambda b: cut(b / "unet/config.json"), "config.json", id="cut-unet-config"),
        pytest.param(lambda b: (b / "unet/diffusion_pytorch_model.safetensors").unlink(), "unet", id="no-unet-weights"),
    ],
)
def test_overwrite_with_a_damaged_base_keeps_the_earlier_run(archdiff, earlier, tiny_folder, tmp_path, damage, says):
    before = tree_digest(earlier)
    base = _base_with(tiny_folder, tmp_path, damage)
    message = user_error(archdiff(*TINY, "-o", str(earlier), "--overwrite", *base))
    assert "half-downloaded" in message and says in message
    assert tree_digest(earlier) == before


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        pytest.param("lora.target_modules=[no_such_layer]", "lora.target_modules [no_such_layer] matched nothing", id="unet"),
        pytest.param(
            "lora.text_encoder={target_modules: [nope]}", "lora.text_encoder.target_modules [nope] matched nothing", id="te"
        ),
    ],
)
def test_overwrite_with_a_lora_that_matches_nothing_keeps_the_earlier_run(archdiff, earlier, setting, says):
    before = tree_digest(earlier)
    message = user_error(archdiff(*TINY, "-o", str(earlier), "--overwrite", "--set", setting))
    assert says in message
    assert tree_digest(earlier) == before


# 2. Killed between the last checkpoint and the LoRA file: resuming writes what is missing, from the checkpoint.


@pytest.mark.parametrize("lost", [[LORA, KOHYA], [LORA], [KOHYA]], ids=["both", "diffusers", "kohya"])
def test_resuming_a_finished_run_writes_the_missing_lora(archdiff, earlier, finished, lost):
    for name in lost:
        (earlier / name).unlink()
    checkpoints, metrics = tree_digest(earlier / "checkpoints"), (earlier / "metrics.jsonl").read_text()
    done = archdiff(*TINY, "-o", str(earlier), "--resume", "latest")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"finished at step {STEPS} without its {', '.join(lost)}: writing them now" in done.stdout
    assert "the final outputs were written from the last checkpoint" in done.stdout
    for name in (LORA, KOHYA):
        assert same_tensors(earlier / name, finished / name), name
    assert tree_digest(earlier / "checkpoints") == checkpoints
    assert (earlier / "metrics.jsonl").read_text() == metrics, "nothing trained, nothing logged twice"


def test_resuming_a_finished_run_draws_missing_final_samples(archdiff, earlier, finished):
    prompts = ["--set", "validation.prompts=[a house]", "--set", "validation.seeds=[0]", "--set", "validation.steps=2"]
    done = archdiff(*TINY, "-o", str(earlier), "--resume", "latest", *prompts)
    assert done.returncode == 0, done.stderr
    assert "without its step-000003.png: writing them now" in done.stdout
    assert (earlier / "samples/step-000003.png").is_file() and list((earlier / "samples/prompt00").glob("*.png"))
    assert same_tensors(earlier / LORA, finished / LORA), "the same adapter, written again"


def test_resuming_a_complete_finished_run_changes_nothing(archdiff, earlier):
    before = tree_digest(earlier)
    done = archdiff(*TINY, "-o", str(earlier), "--resume", "latest")
    assert done.returncode == 0, done.stderr
    assert f"already finished at step {STEPS} of {STEPS}: nothing to train" in done.stdout
    assert tree_digest(earlier) == before


# 4. A damaged newest checkpoint is named and passed over; the run resumes from the newest intact one, exactly.


def _unlink(name: str):
    return lambda checkpoint: (checkpoint / name).unlink()


def _garbage(name: str):
    return lambda checkpoint: (checkpoint / name).write_bytes(b"\x80\x04not a pickle at all")


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        pytest.param(lambda c: cut(c / "adapter.safetensors"), "adapter.safetensors is damaged", id="cut-adapter"),
        pytest.param(_garbage("optimizer.bin"), "optimizer.bin is damaged", id="garbage-optimizer"),
        pytest.param(lambda c: cut(c / "optimizer.bin"), "optimizer.bin is damaged", id="cut-optimizer"),
        pytest.param(_unlink("scheduler.bin"), "is missing scheduler.bin", id="no-scheduler"),
        pytest.param(_unlink("adapter.safetensors"), "is missing adapter.safetensors", id="no-adapter"),
        pytest.param(lambda c: cut(c / "trainer_state.json"), "trainer_state.json is damaged", id="cut-trainer-state"),
        pytest.param(_unlink("random_states_0.pkl"), "has no random_states_0.pkl", id="no-random-states"),
        pytest.param(_garbage("random_states_0.pkl"), "random_states_0.pkl is damaged", id="garbage-random-states"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_an_intact_one(archdiff, earlier, finished, damage, says):
    damage(earlier / NEWEST)
    older = {name: tree_digest(earlier / "checkpoints" / name) for name in ("step-000001", "step-000002")}
    done = archdiff(*TINY, "-o", str(earlier), "--resume", "latest")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    passed = [line for line in done.stdout.splitlines() if line.startswith("archdiff: passed over a damaged checkpoint")]
    assert len(passed) == 1 and says in passed[0], done.stdout
    assert f"resuming 'demo-tiny' from {earlier / 'checkpoints/step-000002'}" in done.stdout
    assert same_tensors(earlier / LORA, finished / LORA), "the fallback ends bit-identical to the uninterrupted run"
    assert same_tensors(earlier / NEWEST / "adapter.safetensors", finished / NEWEST / "adapter.safetensors")
    assert {name: tree_digest(earlier / "checkpoints" / name) for name in older} == older


def test_a_half_written_metrics_line_is_dropped_on_resume(archdiff, earlier, finished):
    shutil.rmtree(earlier / NEWEST)  # killed while logging the step after checkpoint 2
    with (earlier / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "loss": 0.1')
    done = archdiff(*TINY, "-o", str(earlier), "--resume", "latest")
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line)["step"] for line in (earlier / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS + 1))
    assert same_tensors(earlier / LORA, finished / LORA)


def test_a_damaged_checkpoint_named_explicitly_is_refused(archdiff, earlier):
    cut(earlier / NEWEST / "adapter.safetensors")
    before = tree_digest(earlier)
    message = user_error(archdiff(*TINY, "-o", str(earlier), "--resume", str(earlier / NEWEST)))
    assert f"{earlier / NEWEST / 'adapter.safetensors'} is damaged" in message
    assert tree_digest(earlier) == before


def test_no_intact_checkpoint_is_one_line_naming_the_newest_damage(archdiff, earlier):
    for checkpoint in sorted((earlier / "checkpoints").iterdir()):
        (checkpoint / "scheduler.bin").unlink()
    before = tree_digest(earlier)
    message = user_error(archdiff(*TINY, "-o", str(earlier), "--resume", "latest"))
    assert "no intact checkpoint" in message and f"{earlier / NEWEST} is missing scheduler.bin" in message
    assert tree_digest(earlier) == before


class Planted:
    """Unpickling this opens (creates) a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_pickle_that_runs_code_is_refused_not_passed_over(archdiff, earlier, tmp_path):
    marker = tmp_path / "code-ran"
    (earlier / NEWEST / "random_states_0.pkl").write_bytes(pickle.dumps({"step": 3, "payload": Planted(marker)}))
    before = tree_digest(earlier)
    message = user_error(archdiff(*TINY, "-o", str(earlier), "--resume", "latest"))
    assert "random_states_0.pkl is damaged or holds more than tensors and plain data" in message
    assert not marker.exists() and tree_digest(earlier) == before


# 5. An output that cannot be a run folder is refused before any work.


@pytest.mark.parametrize("resume", [[], ["--resume", "latest"]], ids=["new", "resume"])
def test_output_that_is_a_file(archdiff, tmp_path, resume):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine\n")
    message = user_error(archdiff(*TINY, "-o", str(existing), *resume))
    assert f"output '{existing}' is a file, not a folder" in message
    assert existing.read_text() == "mine\n"


def test_output_under_a_file(archdiff, tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    message = user_error(archdiff(*TINY, "-o", str(tmp_path / "notes.txt/run")))
    assert f"'{tmp_path / 'notes.txt'}' is a file, not a folder" in message
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_output_where_nobody_may_write(archdiff):
    """/proc/self refuses writes to everyone, root included (a chmod 0555 folder does not stop root)."""
    message = user_error(archdiff(*TINY, "-o", "/proc/self/archdiff-run"))
    assert "no write permission in '/proc/self'" in message
