"""Sampling helpers: --lora specs, PNG metadata, grids, and the base taken from a run folder."""

from pathlib import Path

import pytest
from PIL import Image

from archdiff.errors import UserError
from archdiff.sample import LoraSpec, grid, run_recipe, sample_to_folder, save_images


@pytest.mark.parametrize(
    ("text", "path", "scale"),
    [
        ("runs/facade-lora", "runs/facade-lora", 1.0),
        ("runs/facade-lora:0.8", "runs/facade-lora", 0.8),
        ("a/b.safetensors:-0.5", "a/b.safetensors", -0.5),
        ("C:/loras/x.safetensors", "C:/loras/x.safetensors", 1.0),
    ],
)
def test_lora_spec_parses_an_optional_scale(text, path, scale):
    spec = LoraSpec.parse(text)
    assert spec.path == Path(path) and spec.scale == scale


def test_lora_spec_rejects_folders_without_weights(tmp_path):
    with pytest.raises(UserError, match="holds no LoRA"):
        LoraSpec(tmp_path).weights_file()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="neither a run folder nor a .safetensors"):
        LoraSpec(tmp_path / "notes.txt").weights_file()


def test_base_comes_from_the_run_recipe(tmp_path):
    (tmp_path / "recipe.yaml").write_text("base: some/base\n")
    assert run_recipe([LoraSpec(tmp_path)])["base"] == "some/base"
    with pytest.raises(UserError, match="pass --base"):
        sample_to_folder(
            "x", None, [], steps=1, guidance=1.0, seed=0, num_images=1, width=None, height=None, output=tmp_path / "out"
        )


def test_saved_images_carry_their_settings(tmp_path):
    images = [Image.new("RGB", (8, 6), c) for c in ("red", "green", "blue")]
    settings = {"prompt": "a tower", "base": "tiny-sd15", "lora": ["run:0.5"], "steps": 3, "guidance": 2.0}
    paths = save_images(images, [5, 6, 7], settings, tmp_path)
    assert [p.name for p in paths] == ["00-seed5.png", "01-seed6.png", "02-seed7.png"]
    text = Image.open(paths[1]).text
    assert text["prompt"] == "a tower" and text["seed"] == "6" and text["lora"] == '["run:0.5"]'
    assert text["parameters"].startswith("a tower\nSteps: 3, CFG scale: 2.0, Seed: 6, Size: 8x6")
    assert Image.open(tmp_path / "grid.png").size == (16, 12)


def test_grid_layout():
    sheet = grid([Image.new("RGB", (4, 4), "white")] * 5, columns=3)
    assert sheet.size == (12, 8)
