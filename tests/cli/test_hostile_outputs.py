"""Bad outputs, sizes, scales, LoRAs for another family, broken run folders and broken bases, through the real CLI.

Each case gets one `archdiff: error:` line naming the problem, exit code 2, no traceback, and leaves the run folder
and any earlier output byte for byte as it was. Most run with torch, diffusers, transformers and peft made
unimportable: the refusal then provably comes before any model loads or any tensor is allocated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile import TRAIN_DEMO, tree_digest, user_error

NO_MODELS = ("torch", "diffusers", "transformers", "peft", "accelerate")
WEIGHTS = "pytorch_lora_weights.safetensors"
NOT_WRITABLE = "/sys/archdiff-hostile-out"  # not writable even for root (sysfs)


@pytest.fixture
def finished(finished_sd15: Path, finished_sdxl: Path) -> dict[str, Path]:
    """Finished runs on tiny-sd15 and tiny-sdxl, trained once per session (tests/cli/conftest.py); copy one before breaking it."""
    return {"sd15": finished_sd15, "sdxl": finished_sdxl}


@pytest.fixture
def sd15(finished: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the SD 1.5 run, free to break."""
    return Path(shutil.copytree(finished["sd15"], tmp_path / "run"))


def _digest(folder: Path) -> dict[str, str]:
    """tree_digest without the helper `hidden=` writes into the working folder."""
    return {name: digest for name, digest in tree_digest(folder).items() if not name.startswith("hide-packages/")}


def _refused(result, *says: str) -> str:
    message = user_error(result)
    for text in says:
        assert text in message, message
    return message


# 1. Output paths: a file where a folder goes (or the reverse), inside a file, not writable, a wrong file type.
OUTPUT_CASES = [
    pytest.param(["sample", "x", "--lora", "{run}", "-o", "afile"], "is a file", id="sample-o-existing-file"),
    pytest.param(["sample", "x", "--lora", "{run}", "-o", "afile/out"], "which is a file", id="sample-o-inside-file"),
    pytest.param(["sample", "x", "--lora", "{run}", "-o", NOT_WRITABLE], "not writable", id="sample-o-not-writable"),
    pytest.param(["data", "inspect", "facades", "-o", "adir"], "is a folder", id="inspect-o-existing-folder"),
    pytest.param(["data", "inspect", "facades", "-o", "afile/sheet.png"], "which is a file", id="inspect-o-inside-file"),
    pytest.param(["data", "inspect", "facades", "-o", NOT_WRITABLE + ".png"], "not writable", id="inspect-o-not-writable"),
    pytest.param(["data", "inspect", "facades", "-o", "sheet.txt"], ".png", id="inspect-o-wrong-suffix"),
    pytest.param(["data", "check-vae", "facades", "--base", "tiny-sd15", "-o", "afile"], "is a file", id="check-vae-o-file"),
    pytest.param(["runs", "show", "{run}", "--plot", "adir"], "is a folder", id="plot-existing-folder"),
    pytest.param(["runs", "show", "{run}", "--plot", "afile/loss.png"], "which is a file", id="plot-inside-file"),
    pytest.param(["runs", "show", "{run}", "--plot", NOT_WRITABLE + ".png"], "not writable", id="plot-not-writable"),
    pytest.param(["runs", "show", "{run}", "--plot", "loss.txt"], ".png", id="plot-wrong-suffix"),
    pytest.param(["export", "{run}", "-f", "kohya", "-o", "afile/x.safetensors"], "which is a file", id="export-kohya-inside"),
    pytest.param(["export", "{run}", "-f", "kohya", "-o", NOT_WRITABLE + ".safetensors"], "not writable", id="export-unwritable"),
    pytest.param(["export", "{run}", "-f", "peft", "-o", "afile/peft"], "which is a file", id="export-peft-inside-file"),
    pytest.param(["export", "{run}", "-f", "fused", "-o", "afile/fused"], "which is a file", id="export-fused-inside-file"),
    pytest.param(["export", "{run}", "-f", "fused", "-o", "afile"], "already exists", id="export-o-existing-file"),
]


@pytest.mark.parametrize(("args", "says"), OUTPUT_CASES)
def test_bad_output_path_is_refused_before_any_model_loads(archdiff, sd15: Path, tmp_path: Path, args, says) -> None:
    (tmp_path / "afile").write_text("earlier output\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "keep.png").write_bytes(b"earlier image")
    before = _digest(tmp_path)
    args = [arg.replace("{run}", str(sd15)) for arg in args]
    message = _refused(archdiff(*args, hidden=NO_MODELS), says)
    assert args[args.index("-o" if "-o" in args else "--plot") + 1] in message
    assert _digest(tmp_path) == before


# 2. Sizes and counts: refused with the rule they break, before anything is allocated.
SIZE_CASES = [
    pytest.param(["--width", "30000", "--height", "30000"], ["--width 30000", "4096"], id="width-beyond-memory"),
    pytest.param(["--height", "30000"], ["--height 30000", "4096"], id="height-beyond-memory"),
    pytest.param(["--width", "65"], ["--width 65", "multiple of 8", "64 or 72"], id="width-not-multiple-of-8"),
    pytest.param(["--height", "4"], ["--height 4", "multiple of 8", "8"], id="height-below-8"),
    pytest.param(["--width", "0"], ["--width", "positive", "0"], id="width-zero"),
    pytest.param(["--height", "-64"], ["--height", "positive", "-64"], id="height-negative"),
    pytest.param(["--steps", "0"], ["--steps", "at least 1", "0"], id="steps-zero"),
    pytest.param(["-n", "0"], ["--num-images", "at least 1", "0"], id="num-images-zero"),
    pytest.param(["--strength", "1.5"], ["--strength", "at most 1", "1.5"], id="strength-above-1"),
    pytest.param(["--strength", "0"], ["--strength", "above 0"], id="strength-zero"),
    pytest.param(["--guidance", "nan"], ["--guidance", "finite", "nan"], id="guidance-nan"),
    pytest.param(["--guidance", "-1"], ["--guidance", "0 or more", "-1"], id="guidance-negative"),
]


@pytest.mark.parametrize(("extra", "says"), SIZE_CASES)
def test_sample_sizes_and_counts(archdiff, finished: dict[str, Path], tmp_path: Path, extra, says) -> None:
    run = finished["sd15"]
    before = tree_digest(run)
    _refused(archdiff("sample", "x", "--lora", str(run), "-o", "out", *extra, hidden=NO_MODELS), *says)
    assert tree_digest(run) == before
    assert not (tmp_path / "out").exists()


# 3. Scales must be finite.
@pytest.mark.parametrize("scale", ["nan", "inf", "-inf"])
def test_sample_lora_scale_must_be_finite(archdiff, finished: dict[str, Path], tmp_path: Path, scale: str) -> None:
    run = finished["sd15"]
    _refused(archdiff("sample", "x", "--lora", f"{run}:{scale}", "-o", "out", hidden=NO_MODELS), f"'{scale}'", "finite")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scale", ["nan", "inf"])
def test_fused_export_scale_must_be_finite(archdiff, sd15: Path, scale: str) -> None:
    before = tree_digest(sd15)
    _refused(archdiff("export", str(sd15), "-f", "fused", "--scale", scale, hidden=NO_MODELS), "--scale", "finite", scale)
    assert tree_digest(sd15) == before


# 4. A LoRA for another family: named in one line from the file's header, no library noise, nothing loaded.
def _run(run: Path, tmp: Path) -> str:
    return str(run)


def _bare_lora_file(run: Path, tmp: Path) -> str:
    target = tmp / "bare-lora.safetensors"
    shutil.copy2(run / WEIGHTS, target)
    return str(target)


FAMILY_CASES = [
    pytest.param("sdxl", _run, "tiny-sd15", [], ["for SDXL", "'tiny-sd15' is SD 1.5"], id="sdxl-run-on-sd15"),
    pytest.param("sd15", _run, "tiny-sdxl", [], ["for SD 1.5", "'tiny-sdxl' is SDXL"], id="sd15-run-on-sdxl"),
    pytest.param("sdxl", _run, "tiny-sd15", ["--fuse"], ["for SDXL"], id="sdxl-run-fused-on-sd15"),
    pytest.param(
        "sdxl", lambda run, tmp: str(run / "demo-tiny.safetensors"), "tiny-sd15", [], ["for SDXL"], id="sdxl-kohya-file-on-sd15"
    ),
    pytest.param("sdxl", _bare_lora_file, "tiny-sd15", [], ["does not fit", "80-wide", "32"], id="bare-diffusers-file-on-sd15"),
    pytest.param("sd15", _bare_lora_file, "tiny-sdxl", [], ["does not fit", "32-wide", "80"], id="bare-sd15-file-on-sdxl"),
]


@pytest.mark.parametrize(("family", "lora", "base", "extra", "says"), FAMILY_CASES)
def test_lora_for_another_family(archdiff, finished, tmp_path: Path, family, lora, base, extra, says) -> None:
    run = finished[family]
    before = tree_digest(run)
    result = archdiff("sample", "x", "--lora", lora(run, tmp_path), "--base", base, *extra, "-o", "out", hidden=NO_MODELS)
    _refused(result, *says)
    assert tree_digest(run) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["kohya", "fused"])
def test_export_of_a_lora_whose_recipe_names_another_family(archdiff, finished, tmp_path: Path, fmt: str) -> None:
    """An SDXL run whose recipe.yaml was edited to name an SD 1.5 base: the LoRA's own shapes give it away."""
    run = Path(shutil.copytree(finished["sdxl"], tmp_path / "run"))
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("base: tiny-sdxl", "base: tiny-sd15"))
    before = tree_digest(run)
    _refused(archdiff("export", str(run), "-f", fmt, hidden=NO_MODELS), "does not fit", "tiny-sd15", "80-wide")
    assert tree_digest(run) == before


# 5. Broken run folders: the recipe.yaml or the LoRA file.
def _recipe_invalid(recipe: Path) -> None:
    recipe.write_text("name: run\nbase: [tiny-sd15\n")


def _recipe_not_mapping(recipe: Path) -> None:
    recipe.write_text("- base\n- tiny-sd15\n")


def _recipe_without_base(recipe: Path) -> None:
    recipe.write_text("".join(line for line in recipe.read_text().splitlines(True) if not line.startswith("base:")))


def _recipe_truncated(recipe: Path) -> None:
    recipe.write_text(recipe.read_text()[:20])  # "name: demo-tiny\ndesc"


def _recipe_section_not_mapping(recipe: Path) -> None:
    recipe.write_text("name: run\nbase: tiny-sd15\ndata: 512\n")


BROKEN_RECIPES = {
    "invalid-yaml": (_recipe_invalid, "not valid YAML"),
    "not-a-mapping": (_recipe_not_mapping, "YAML mapping"),
    "missing-base": (_recipe_without_base, "names no base"),
    "truncated": (_recipe_truncated, "recipe.yaml"),
    "section-not-mapping": (_recipe_section_not_mapping, "'data' is not a mapping"),
}
COMMANDS = {
    "sample": lambda run: ["sample", "x", "--lora", str(run), "-o", "out"],
    "push": lambda run: ["push", str(run), "--repo", "jane/facade-lora", "--dry-run"],
    "export": lambda run: ["export", str(run), "-f", "kohya"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("breakage", list(BROKEN_RECIPES))
def test_broken_recipe_in_run_folder(archdiff, sd15: Path, command: str, breakage: str) -> None:
    breaker, says = BROKEN_RECIPES[breakage]
    breaker(sd15 / "recipe.yaml")
    before = tree_digest(sd15)
    _refused(archdiff(*COMMANDS[command](sd15), hidden=NO_MODELS), str(sd15 / "recipe.yaml"), says)
    assert tree_digest(sd15) == before, "a refused command writes nothing into the run folder (no model card either)"


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("keep", [0.5, 0.001], ids=["half", "header-cut"])
def test_truncated_lora_in_run_folder(archdiff, sd15: Path, tmp_path: Path, command: str, keep: float) -> None:
    weights = sd15 / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: max(4, int(len(data) * keep))])
    before = tree_digest(sd15)
    _refused(archdiff(*COMMANDS[command](sd15), hidden=NO_MODELS), WEIGHTS, "truncated")
    assert tree_digest(sd15) == before
    assert not (tmp_path / "out").exists()


# 6. Broken bases: a local diffusers folder with a truncated index, half-downloaded weights or a missing part.
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


BROKEN_BASES = {
    "model-index-truncated": (lambda base: _truncate(base / "model_index.json"), "model_index.json"),
    "model-index-not-object": (lambda base: (base / "model_index.json").write_text("[]"), "model_index.json"),
    "unet-weights-truncated": (
        lambda base: _truncate(base / "unet" / "diffusion_pytorch_model.safetensors", 0.6),
        "unet/diffusion_pytorch_model.safetensors",
    ),
    "unet-config-truncated": (lambda base: _truncate(base / "unet" / "config.json"), "unet/config.json"),
    "vae-folder-missing": (lambda base: shutil.rmtree(base / "vae"), "no vae/ folder"),
}


@pytest.fixture
def broken_base(archdiff_cache: Path, tmp_path: Path, request) -> tuple[Path, str]:
    base = Path(shutil.copytree(archdiff_cache / "tiny" / "sd15", tmp_path / "my-base"))
    breaker, says = BROKEN_BASES[request.param]
    breaker(base)
    return base, says


@pytest.mark.parametrize("broken_base", list(BROKEN_BASES), indirect=True)
@pytest.mark.parametrize("command", ["sample", "check-vae"])
def test_broken_local_base(archdiff, broken_base: tuple[Path, str], tmp_path: Path, command: str) -> None:
    base, says = broken_base
    before = tree_digest(base)
    args = ["sample", "x", "--base", str(base), "-o", "out"] if command == "sample" else ["data", "check-vae", "facades"]
    if command == "check-vae":
        args += ["--base", str(base), "-o", "out"]
    _refused(archdiff(*args, hidden=NO_MODELS), f"base '{base}'", says)
    assert tree_digest(base) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("broken_base", ["unet-weights-truncated", "vae-folder-missing"], indirect=True)
def test_broken_local_base_for_training(archdiff, broken_base: tuple[Path, str], tmp_path: Path) -> None:
    """The train path resolves its base through the same checks: refused before a run folder is made."""
    base, says = broken_base
    _refused(archdiff(*TRAIN_DEMO, "--base", str(base), "-o", "run", "--max-steps", "1"), f"base '{base}'", says)
    assert not (tmp_path / "run").exists()


def test_unreadable_base_part_is_one_line_from_the_loader(archdiff, archdiff_cache: Path, tmp_path: Path) -> None:
    """A part that passes the file checks but not the loader (a config diffusers cannot build) is still one line."""
    base = Path(shutil.copytree(archdiff_cache / "tiny" / "sd15", tmp_path / "my-base"))
    config = base / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "block_out_channels": [8, 16, 24, 32]}))
    _refused(archdiff("sample", "x", "--base", str(base), "-n", "1", "--steps", "1", "-o", "out"), f"base '{base}'", "loaded")
    assert not (tmp_path / "out").exists()
