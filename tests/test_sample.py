"""Sampling helpers: --lora specs, PNG metadata, grids, and the base taken from a run folder."""

import json
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
        LoraSpec(tmp_path).location()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a run folder, a .safetensors LoRA file or a Hub id"):
        LoraSpec(tmp_path / "notes.txt").location()


def test_lora_spec_locations(tmp_path, monkeypatch):
    """A run folder, a file in any folder, and `user/name` as a Hub id only when nothing local has that name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (tmp_path / "kohya.safetensors").write_bytes(b"")
    assert LoraSpec.parse("run:0.5").location() == ("run", "pytorch_lora_weights.safetensors")
    assert LoraSpec.parse(str(tmp_path / "kohya.safetensors")).location() == (str(tmp_path), "kohya.safetensors")
    assert LoraSpec.parse("user/facade-lora:0.8").hub_id == "user/facade-lora"
    (tmp_path / "user" / "facade-lora").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no LoRA"):
        LoraSpec.parse("user/facade-lora").location()


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


@pytest.mark.slow
def test_two_loras_at_their_weights_equal_the_fused_pipeline(demo_run, small_lora_runs):
    """`--lora A:1.0 --lora B:0.5` unfused and with --fuse: the same image up to float rounding (< 1e-4 of 1.0)."""
    import numpy as np
    import torch

    from archdiff.model.base import resolve_base
    from archdiff.sample import load_pipeline

    source = resolve_base("tiny-sd15").source
    both = [LoraSpec(demo_run.run_dir, 1.0), LoraSpec(small_lora_runs["tiny-sd15"], 0.5)]

    def draw(loras, fuse=False):
        pipe = load_pipeline(source, loras, fuse=fuse)
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe("timber house", num_inference_steps=6, width=64, height=64, generator=generator, output_type="np").images[0]

    combined, fused = draw(both), draw(both, fuse=True)
    assert np.abs(combined - fused).max() < 1e-4
    for alone in (both[0], both[1]):
        assert np.abs(combined - draw([alone])).max() > 1e-3, "each adapter contributes"


@pytest.mark.slow
def test_sample_takes_a_kohya_file_like_the_run_folder(small_lora_runs, tmp_path):
    import numpy as np

    from archdiff.export import export_run

    run_dir = small_lora_runs["tiny-sdxl"]
    kohya = export_run(run_dir, "kohya", tmp_path / "k.safetensors")
    common = dict(steps=4, guidance=5.0, seed=3, num_images=1, width=None, height=None)
    from_run = sample_to_folder("a tower", None, [LoraSpec(run_dir)], output=tmp_path / "run", **common)
    from_kohya = sample_to_folder("a tower", "tiny-sdxl", [LoraSpec(kohya)], output=tmp_path / "kohya", **common)
    assert np.array_equal(np.asarray(Image.open(from_run[0])), np.asarray(Image.open(from_kohya[0])))


def _sketch(path: Path, size=(240, 120)) -> Path:
    """A 1-bit line drawing, as a scanned sketch often is."""
    from PIL import ImageDraw

    image = Image.new("1", size, 1)
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 30, 200, 100), outline=0, width=2)
    draw.polygon([(20, 30), (110, 5), (200, 30)], outline=0)
    image.save(path)
    return path


def _vae_round_trip(image: Image.Image):
    """What the tiny base's random VAE makes of the image: the closest any img2img result can get to it."""
    import numpy as np
    import torch

    from archdiff.model.base import resolve_base
    from archdiff.sample import load_pipeline

    pipe = load_pipeline(resolve_base("tiny-sd15").source, [])
    pixels = pipe.image_processor.preprocess(image)
    with torch.no_grad():
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mode()).sample
    return np.asarray(pipe.image_processor.postprocess(decoded, output_type="pil")[0], dtype=float)


@pytest.mark.slow
def test_img2img_starts_from_the_sketch_in_the_bucket_of_its_shape(demo_run, tmp_path):
    import numpy as np

    from archdiff.data.buckets import assign_bucket, make_buckets
    from archdiff.sample import init_image_for

    sketch = _sketch(tmp_path / "sketch.png")
    start = init_image_for(sketch, None, None, resolution=64, step=16)
    assert start.mode == "RGB" and start.size == assign_bucket(240, 120, make_buckets(64 * 64, 16, 4.0)) == (80, 48)
    reference = _vae_round_trip(start)

    def distance(strength):
        common = dict(steps=10, guidance=5.0, seed=0, num_images=2, width=None, height=None, init_image=sketch)
        paths = sample_to_folder(
            "a house", None, [LoraSpec(demo_run.run_dir)], output=tmp_path / str(strength), strength=strength, **common
        )
        assert Image.open(paths[0]).size == (80, 48)
        assert f"Denoising strength: {strength}" in Image.open(paths[0]).text["parameters"]
        return np.mean([np.abs(np.asarray(Image.open(p).convert("RGB"), dtype=float) - reference).mean() for p in paths])

    # measured on the 300-step demo LoRA: 0.1 stays ~20% nearer the sketch than 1.0 (a random VAE blurs both)
    assert distance(0.1) < 0.9 * distance(1.0), "a low strength stays near the sketch"


def test_init_image_must_be_a_readable_image(tmp_path):
    from archdiff.sample import init_image_for

    with pytest.raises(UserError, match="is not a file"):
        init_image_for(tmp_path / "missing.png", None, None, 64, 16)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match="empty file"):
        init_image_for(tmp_path / "empty.png", None, None, 64, 16)


@pytest.mark.slow
def test_hub_lora_from_the_hf_cache_draws_like_the_run_folder(small_lora_runs, tmp_path, monkeypatch):
    """`--lora user/name` goes through huggingface_hub (here its offline cache, laid out as a download leaves it)."""
    import shutil

    import numpy as np
    from huggingface_hub import constants

    run_dir = small_lora_runs["tiny-sd15"]
    cache, commit = tmp_path / "hub", "0" * 40
    snapshot = cache / "models--someone--facade-lora" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(run_dir / "pytorch_lora_weights.safetensors", snapshot)
    (cache / "models--someone--facade-lora" / "refs").mkdir()
    (cache / "models--someone--facade-lora" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)

    assert LoraSpec.parse("someone/facade-lora:0.7").local() == LoraSpec(snapshot / "pytorch_lora_weights.safetensors", 0.7)
    common = dict(steps=4, guidance=5.0, seed=1, num_images=1, width=64, height=64)
    hub = sample_to_folder("a tower", "tiny-sd15", [LoraSpec.parse("someone/facade-lora")], output=tmp_path / "hub-out", **common)
    local = sample_to_folder("a tower", None, [LoraSpec(run_dir)], output=tmp_path / "run-out", **common)
    assert np.array_equal(np.asarray(Image.open(hub[0])), np.asarray(Image.open(local[0])))
    assert json.loads(Image.open(hub[0]).text["lora"]) == ["someone/facade-lora:1"]


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"width": 65}, r"--width 65 is not a multiple of 8 \(the VAE's factor\); use 64 or 72"),
        ({"height": 30000}, "--height 30000 is over the limit of 4096 px per side"),
        ({"steps": 0}, r"--steps must be at least 1 \(got 0\)"),
        ({"guidance": float("inf")}, r"--guidance must be a finite number, 0 or more \(got inf\)"),
        ({"strength": 0.0}, r"--strength must be above 0 and at most 1 \(got 0.0\)"),
        ({"seed": -1}, r"--seed -1 is out of range: image i uses seed \+ i, which must stay between 0 and 4294967295"),
        ({"seed": 2**64}, r"--seed 18446744073709551616 is out of range"),
        ({"seed": 2**32 - 1, "num_images": 2}, r"--seed 4294967295 is out of range"),
    ],
)
def test_sample_settings_are_checked_before_anything_loads(settings, says):
    from archdiff.sample import check_sample_settings

    values = {"steps": 1, "guidance": 7.5, "num_images": 1, "width": 64, "height": 64, "strength": 0.6, "seed": 0} | settings
    with pytest.raises(UserError, match=says):
        check_sample_settings(**values)
    check_sample_settings(**(values | {key: {"guidance": 0.0, "strength": 1.0}.get(key, 8) for key in settings}))
