"""`archdiff train -r demo-controlnet` against bad pairs and bad ControlNet options, through the real entry point:
one `archdiff: error:` line, exit code 2, no traceback, the output folder not created, an earlier run untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile import run_archdiff, tree_digest, user_error
from PIL import Image, ImageDraw

TRAIN = ["train", "-r", "demo-controlnet", "--max-steps", "3", "--set", "validation.prompts=[]"]
SIZES = [(64, 64), (96, 64), (64, 96), (64, 64), (96, 64), (64, 64)]


def paired_folder(root: Path) -> Path:
    """images/ + controls/ + metadata.jsonl: each target a grey facade, its control the same box as white lines on black."""
    (root / "images").mkdir(parents=True)
    (root / "controls").mkdir()
    rows = []
    for index, size in enumerate(SIZES):
        box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, size[1] - 4)
        target, control = Image.new("RGB", size, (200, 190, 170)), Image.new("RGB", size)
        ImageDraw.Draw(target).rectangle(box, fill=(120, 60, 40))
        ImageDraw.Draw(control).rectangle(box, outline="white")
        target.save(root / "images" / f"{index}.png")
        control.save(root / "controls" / f"{index}.png")
        rows.append({"file_name": f"images/{index}.png", "control": f"controls/{index}.png", "text": "a facade"})
    _write_rows(root, rows)
    return root


def _write_rows(root: Path, rows: list[dict]) -> None:
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _set_control(root: Path, index: int, value: str) -> None:
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    rows[index]["control"] = value
    _write_rows(root, rows)


def _outside(root: Path) -> Path:
    outside = root.parent / "outside.png"
    shutil.copy(root / "controls" / "0.png", outside)
    return outside


# Each case: how to spoil the paired folder (or None to use it as is), the extra arguments, what the line must say.
PAIR_CASES = {
    "missing-control": (lambda r: (r / "controls" / "1.png").unlink(), [], "control 'controls/1.png' does not exist"),
    "control-not-an-image": (
        lambda r: (r / "controls" / "1.png").write_bytes(b"GIF89a but not really"),
        [],
        "its control 1.png cannot be used",
    ),
    "control-outside-relative": (
        lambda r: (_outside(r), _set_control(r, 1, "../outside.png")),
        [],
        "control '../outside.png' points outside the data folder",
    ),
    "control-outside-absolute": (
        lambda r: _set_control(r, 1, str(_outside(r))),
        [],
        "points outside the data folder",
    ),
    "control-of-another-shape": (
        lambda r: _set_control(r, 1, "controls/2.png"),
        [],
        "1.png is 96x64 but its control 2.png is 64x96",
    ),
}


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    return paired_folder(tmp_path / "pairs")


@pytest.mark.parametrize("case", PAIR_CASES)
def test_a_bad_pair_is_one_line_and_creates_no_output(archdiff, pairs, tmp_path, case):
    spoil, extra, says = PAIR_CASES[case]
    spoil(pairs)
    message = user_error(archdiff(*TRAIN, "--data", str(pairs), "-o", str(tmp_path / "out"), *extra))
    assert says in message
    assert not (tmp_path / "out").exists()


def test_the_paired_folder_itself_trains(archdiff, pairs, tmp_path):
    """The cases above fail because of what they spoil, not because of the folder."""
    done = archdiff(*TRAIN, "--data", str(pairs), "-o", str(tmp_path / "out"), "--set", "data.holdout=0.2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "controlnet" / "config.json").is_file()


@pytest.fixture(scope="module")
def sdxl_controlnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import ControlNetModel, UNet2DConditionModel

    from archdiff.model.base import resolve_base

    folder = tmp_path_factory.mktemp("sdxl-controlnet") / "controlnet"
    unet = UNet2DConditionModel.from_pretrained(resolve_base("tiny-sdxl").source, subfolder="unet")
    ControlNetModel.from_unet(unet).save_pretrained(folder)
    return folder


def _no_config(tmp_path: Path) -> Path:
    folder = tmp_path / "no-config"
    folder.mkdir()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return folder


# Each case: the extra arguments (a function of tmp_path and the SDXL ControlNet), what the line must say.
OPTION_CASES = {
    "unpaired-source-without-extractor": (
        lambda t, x: ["--data", "facades", "--set", "data.control.type=none"],
        "has no control column 'control'",
    ),
    "sdxl-controlnet-init": (
        lambda t, x: ["--set", f"controlnet.init={x}"],
        "is an SDXL ControlNet on an SD 1.5 base ('tiny-sd15')",
    ),
    "init-without-config": (
        lambda t, x: ["--set", f"controlnet.init={_no_config(t)}"],
        "is not a ControlNet run folder",
    ),
    "missing-style-lora": (lambda t, x: ["--set", "controlnet.style_lora=missing.safetensors"], "missing.safetensors"),
    "tile-drawings": (lambda t, x: ["--set", "data.tile_drawings=4"], "data.tile_drawings"),
    "dreambooth-too": (
        lambda t, x: ["--set", "dreambooth={instance_prompt: a photo of sks house}"],
        "controlnet and dreambooth cannot be combined",
    ),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_a_bad_controlnet_option_is_one_line_and_creates_no_output(archdiff, sdxl_controlnet, tmp_path, case):
    arguments, says = OPTION_CASES[case]
    message = user_error(archdiff(*TRAIN, "-o", str(tmp_path / "out"), *arguments(tmp_path, sdxl_controlnet)))
    assert says in message, message
    assert not (tmp_path / "out").exists()
    if case == "sdxl-controlnet-init":
        assert "SDXL" in message


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, archdiff_cache: Path) -> Path:
    """A finished 3-step ControlNet run on the bundled pairs, with a checkpoint."""
    work = tmp_path_factory.mktemp("finished")
    done = run_archdiff(work, archdiff_cache, *TRAIN, "--set", "train.checkpoint_every=3", "-o", str(work / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "run" / "controlnet" / "config.json").is_file()
    return work / "run"


@pytest.mark.parametrize("case", ["missing-control", "control-of-another-shape"])
def test_overwrite_with_a_bad_pair_keeps_the_earlier_run(archdiff, finished, pairs, case):
    spoil, extra, says = PAIR_CASES[case]
    spoil(pairs)
    before = tree_digest(finished)
    message = user_error(archdiff(*TRAIN, "--data", str(pairs), "-o", str(finished), "--overwrite", *extra))
    assert says in message
    assert tree_digest(finished) == before


@pytest.mark.parametrize("case", ["sdxl-controlnet-init", "missing-style-lora", "init-without-config"])
def test_overwrite_with_a_bad_controlnet_option_keeps_the_earlier_run(archdiff, finished, sdxl_controlnet, tmp_path, case):
    arguments, says = OPTION_CASES[case]
    before = tree_digest(finished)
    message = user_error(archdiff(*TRAIN, "-o", str(finished), "--overwrite", *arguments(tmp_path, sdxl_controlnet)))
    assert says in message
    assert tree_digest(finished) == before
