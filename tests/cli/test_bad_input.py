"""Bad input through the real `archdiff` entry point: one `archdiff: error:` line on stderr, exit code 2, no traceback.

Every test runs `python -m archdiff` in a subprocess with cwd=tmp_path, so nothing lands in the repo, the Hub is
unreachable (HF_HUB_OFFLINE=1) and built tiny models go to a session-wide temporary ARCHDIFF_CACHE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile import TRAIN_DEMO, run_archdiff, user_error

HEAVY_MODULES = ("torch", "diffusers", "transformers", "peft", "accelerate", "datasets")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["train", "--recipe", "facde-lora"],
            ["facade-lora", "demo-tiny", "plan-lora", "did you mean 'facade-lora'"],
            id="unknown-recipe",
        ),
        pytest.param(
            [*TRAIN_DEMO, "--set", "train.learning_rte=0.1"],
            ["train.learning_rte", "did you mean 'train.learning_rate'"],
            id="typo-key-via-set",
        ),
        pytest.param([*TRAIN_DEMO, "--set", "train.batch_size=abc"], ["train.batch_size"], id="wrong-type"),
        pytest.param(
            [*TRAIN_DEMO, "--set", "data.resolution=63"],
            ["data.resolution", "multiple of 8"],
            id="resolution-not-multiple-of-8",
        ),
        pytest.param([*TRAIN_DEMO, "--set", "train.batch_size"], ["dotted.key=value"], id="set-without-equals"),
    ],
)
def test_recipe_mistakes_name_the_key(archdiff, args: list[str], expected: list[str]) -> None:
    """Recipe and --set mistakes are caught before any model work, and say which key and what to type instead."""
    message = user_error(archdiff(*args)).lower()
    for text in expected:
        assert text.lower() in message


def test_typo_in_recipe_file_extending_by_name(archdiff, tmp_path: Path) -> None:
    """A user's own recipe that `extends:` a bundled one gets the same key suggestion as --set."""
    (tmp_path / "mine.yaml").write_text("extends: demo-tiny\ntrain: {learning_rte: 0.1}\n")
    message = user_error(archdiff("train", "--recipe", "mine.yaml"))
    assert "train.learning_rte" in message
    assert "did you mean 'train.learning_rate'" in message.lower()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param([*TRAIN_DEMO, "--base", "./no/such/folder"], "does not exist", id="train-missing-folder"),
        pytest.param([*TRAIN_DEMO, "--base", "someone/not-a-model"], "not reachable", id="train-hub-offline"),
        pytest.param(["sample", "x", "--base", "./nope"], "does not exist", id="sample-missing-folder"),
        pytest.param(["sample", "x", "--base", "someone/not-a-model"], "not reachable", id="sample-hub-offline"),
    ],
)
def test_unreachable_base_suggests_tiny(archdiff, args: list[str], says: str) -> None:
    """A base that is neither a folder nor on a reachable Hub fails fast and points at the offline base."""
    started = time.perf_counter()
    message = user_error(archdiff(*args, timeout=60))
    assert time.perf_counter() - started < 30, "an unreachable base must fail in seconds, not wait on the network"
    assert args[args.index("--base") + 1] in message
    assert says in message
    assert "--base tiny-sd15" in message


def _empty(folder: Path) -> None:
    folder.mkdir()


def _text_only(folder: Path) -> None:
    folder.mkdir()
    (folder / "captions.txt").write_text("a facade\n")


@pytest.mark.parametrize("make_folder", [_empty, _text_only], ids=["empty", "text-only"])
def test_data_folder_without_images(archdiff, tmp_path: Path, make_folder) -> None:
    """A --data folder without images is reported as such (checked after the base resolves)."""
    folder = tmp_path / "photos"
    make_folder(folder)
    message = user_error(archdiff(*TRAIN_DEMO, "--base", "tiny-sd15", "--data", str(folder)))
    assert "no images" in message
    assert str(folder) in message


def test_first_build_of_tiny_base_keeps_stderr_to_the_error_line(tmp_path: Path) -> None:
    """The first use of tiny-sd15 builds it into an empty cache; that must not add output to stderr either."""
    (tmp_path / "photos").mkdir()
    result = run_archdiff(tmp_path, tmp_path / "fresh-cache", *TRAIN_DEMO, "--base", "tiny-sd15", "--data", "photos")
    assert "no images" in user_error(result)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("run-without-lora", ["holds no LoRA", "pytorch_lora_weights.safetensors"], id="folder-without-lora"),
        pytest.param("notes.txt", ["notes.txt", ".safetensors"], id="not-safetensors-file"),
    ],
)
def test_lora_that_is_not_a_lora(archdiff, tmp_path: Path, name: str, expected: list[str]) -> None:
    """--lora must be a run folder with weights or a .safetensors file; anything else is named, before loading a model."""
    target = tmp_path / name
    if target.suffix:
        target.write_text("not weights\n")
    else:
        target.mkdir()
    message = user_error(archdiff("sample", "x", "--lora", str(target)))
    for text in expected:
        assert text in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param([], "--overwrite", id="earlier-run-without-overwrite"),
        pytest.param(["--data", "photos"], "no images", id="bad-data"),
    ],
)
def test_existing_output_folder_is_untouched(archdiff, tmp_path: Path, extra: list[str], expected: str) -> None:
    """A refused or failed run leaves every file already in --output byte for byte as it was, and adds none."""
    (tmp_path / "photos").mkdir()
    output = tmp_path / "out"
    output.mkdir()
    before = {"notes.txt": b"my notes\n", "pytorch_lora_weights.safetensors": b"\x00earlier LoRA bytes\xff"}
    for name, data in before.items():
        (output / name).write_bytes(data)
    message = user_error(archdiff(*TRAIN_DEMO, "--output", str(output), "--max-steps", "1", *extra))
    assert expected in message
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        pytest.param("memory.attention=xformers", ["xformers", "archdiff[cuda]"], id="xformers-without-extra"),
        pytest.param("memory.mixed_precision=fp16", ["fp16", "CUDA"], id="fp16-on-cpu"),
        pytest.param("memory.compile=true", ["memory.compile", "CUDA"], id="compile-on-cpu"),
        pytest.param("train.trackers=[tensorboard, wandb]", ["wandb", "pip install wandb"], id="wandb-not-installed"),
    ],
)
def test_memory_options_this_machine_cannot_honour(archdiff, setting: str, expected: list[str]) -> None:
    """CUDA-only knobs and missing optional packages are refused up front, saying what is missing."""
    message = user_error(archdiff(*TRAIN_DEMO, "--set", setting, hidden=("wandb", "xformers")))
    for text in expected:
        assert text in message


def test_validate_names_the_unknown_key(archdiff, tmp_path: Path) -> None:
    """`recipes validate` prints a FAIL line naming the key on stdout and one summary error line on stderr."""
    (tmp_path / "bad.yaml").write_text("extends: demo-tiny\ntarin: {max_steps: 5}\n")
    result = archdiff("recipes", "validate", "bad.yaml")
    message = user_error(result)
    assert "bad.yaml" in message
    fail_lines = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail_lines) == 1, result.stdout
    assert "'tarin'" in fail_lines[0]


def test_help_is_instant_and_imports_no_heavy_library(tmp_path: Path) -> None:
    """`archdiff --help` must not pay for torch & co.; timed on a second run so a cold disk cache does not count."""
    probe = (
        "import json, sys\n"
        "sys.argv = ['archdiff', '--help']\n"
        "import archdiff.cli\n"
        "try:\n"
        "    archdiff.cli.main()\n"
        "except SystemExit as stop:\n"
        "    print('EXIT=' + json.dumps(stop.code))\n"
        f"print('HEAVY=' + json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ARCHDIFF_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-c", probe]
    subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=120)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    markers = dict(line.split("=", 1) for line in result.stdout.splitlines() if line.startswith(("EXIT=", "HEAVY=")))
    assert json.loads(markers["EXIT"]) in (0, None), result.stdout
    assert json.loads(markers["HEAVY"]) == [], result.stdout
    assert "train" in result.stdout
    assert elapsed < 1.5, f"archdiff --help took {elapsed:.2f}s"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(["--resume", "latest"], "no complete checkpoint", id="resume-without-checkpoints"),
        pytest.param(["--resume", "nowhere/at/all"], "no such folder", id="resume-missing-folder"),
    ],
)
def test_resume_needs_a_checkpoint(archdiff, tmp_path: Path, extra: list[str], expected: str) -> None:
    message = user_error(archdiff(*TRAIN_DEMO, "--output", str(tmp_path / "fresh"), *extra))
    assert expected in message
    assert not (tmp_path / "fresh").exists(), "a refused resume creates nothing"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["bench", "--recipe", "demo-tiny", "--steps", "5"], ["--steps must be at least 30"], id="bench-steps"),
        pytest.param(["bench", "--recipe", "demo-tiny", "--matrix", "turbo=on"], ["--matrix 'turbo=on'"], id="bench-knob"),
        pytest.param(["export", "no-such-run", "--format", "kohya"], ["no-such-run", "holds no LoRA"], id="missing-run"),
        pytest.param(
            ["export", "run", "--format", "onnx"], ["unknown export format 'onnx'", "kohya, diffusers, peft, fused"], id="format"
        ),
        pytest.param(["export", "run", "--format", "kohya", "--scale", "0.5"], ["--scale applies only"], id="scale"),
        pytest.param(["export", "run", "--format", "kohya", "-o", "x.pt"], ["must end in .safetensors"], id="kohya-suffix"),
        pytest.param(
            ["sample", "x", "--lora", "run", "--init-image", "nope.png"], ["--init-image 'nope.png'", "not a file"], id="init"
        ),
        pytest.param(
            ["sample", "x", "--lora", "run", "--init-image", "run/recipe.yaml"], ["--init-image", "not an image"], id="init-txt"
        ),
        pytest.param(
            ["sample", "x", "--base", "tiny-sd15", "--lora", "someone/missing-lora"],
            ["someone/missing-lora", "could not be fetched from the Hub"],
            id="hub-lora",
        ),
    ],
)
def test_export_and_sample_inputs(archdiff, tmp_path: Path, args: list[str], expected: list[str]) -> None:
    """A run folder that looks finished (the checks come before any weights are read), and each bad request beside it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (run / "recipe.yaml").write_text("base: tiny-sd15\nname: run\n")
    result = archdiff(*args)
    message = user_error(result)
    for text in expected:
        assert text in message
    assert "archdiff bench:" not in result.stdout, "a refused benchmark announces nothing"


@pytest.mark.parametrize("seed", ["-1", str(2**64), str(2**32 - 1)])
def test_sample_seed_out_of_range(archdiff, tmp_path: Path, seed: str) -> None:
    """A seed torch or other generators cannot take (or whose later images overflow) is refused before any model loads."""
    output = tmp_path / "out"
    message = user_error(archdiff("sample", "x", "--base", "tiny-sd15", "--seed", seed, "-n", "2", "--output", str(output)))
    assert f"--seed {seed} is out of range" in message
    assert not output.exists()
