"""Training end to end on hostile and mixed data, and from the caches without touching the VAE."""

import subprocess
import sys

import pytest

from archdiff.config import load_recipe
from archdiff.train.run import run

pytestmark = pytest.mark.slow


def test_cli_trains_on_a_hostile_folder_and_names_what_it_skipped(tmp_path, nasty_folder, tiny_base):
    folder, described = nasty_folder
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "archdiff", "train", "-r", "demo-tiny", "--data", str(folder), "-o", str(run_dir)]
    command += ["--max-steps", "6", "--set", "data.resolution=128", "--set", "data.holdout=0", "--set", "validation.prompts=[]"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = (run_dir / "data.txt").read_text()
    assert report in done.stdout, "the run prints what it writes to data.txt"
    assert f"{len(described['valid'])} images" in report and f"skipped {len(described['broken'])}:" in report
    for name, reason in described["broken"].items():
        assert f"{name}: {reason}" in report
    buckets = dict(part.split(": ") for part in report.split("buckets: ")[1].splitlines()[0].split(", "))
    shapes = {}
    for bucket, count in buckets.items():
        width, height = map(int, bucket.split("x"))
        shape = "wide" if width > 1.5 * height else "tall" if height > 1.5 * width else "square"
        shapes[shape] = shapes.get(shape, 0) + int(count)
    expected = {}
    for shape in described["valid"].values():
        expected[shape] = expected.get(shape, 0) + 1
    assert shapes == expected, "every valid image lands in a bucket of its own shape"


def test_training_from_the_caches_never_loads_the_vae_or_the_text_encoder(tmp_path, tiny_base, monkeypatch, capsys):
    """Cached latents and captions: neither encoder's weights are even loaded for training, only to draw the final images."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from archdiff.run_files import MetricsLog

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    overrides = ["train.max_steps=4", "validation.prompts=[]", "data.cache.latents=true", "data.cache.text=true"]
    first = run(load_recipe("demo-tiny", [f"output={tmp_path / 'first'}", *overrides]))
    # 29 training photos, each unflipped and flipped, and 3 held-out ones; 32 captions
    assert "cache: latents 61 encoded, 0 reused; texts 32 encoded, 0 reused" in capsys.readouterr().out

    loaded_after_step = []

    def watch(model_class):
        real_from_pretrained = model_class.from_pretrained.__func__

        def watched_from_pretrained(cls, *args, **kwargs):
            if not sampling:
                raise AssertionError(f"{cls.__name__} was loaded although everything it encodes was cached")
            loaded_after_step.append((cls.__name__, MetricsLog.read(tmp_path / "third" / "metrics.jsonl")[-1]["step"]))
            return real_from_pretrained(cls, *args, **kwargs)

        monkeypatch.setattr(model_class, "from_pretrained", classmethod(watched_from_pretrained))

    watch(AutoencoderKL)
    watch(CLIPTextModel)
    sampling = False
    second = run(load_recipe("demo-tiny", [f"output={tmp_path / 'second'}", *overrides]))
    assert "latents 0 encoded, 61 reused" in capsys.readouterr().out
    assert second.first_val_loss == pytest.approx(first.first_val_loss)
    assert second.final_val_loss == pytest.approx(first.final_val_loss)
    sampling = True  # validation prompts need both: they load after the last step, for the final images
    with_samples = [*overrides[:1], "validation.every=null", *overrides[2:]]
    run(load_recipe("demo-tiny", [f"output={tmp_path / 'third'}", *with_samples]))
    assert sorted(loaded_after_step) == [("AutoencoderKL", 4), ("CLIPTextModel", 4)]


def test_several_sources_mix_with_their_repeats(tmp_path, tiny_base):
    sources = '[{"path": "facades", "repeats": 2}, {"path": "plans"}]'
    overrides = [f"output={tmp_path / 'mixed'}", f"data.sources={sources}", "data.holdout=0", "train.max_steps=3"]
    result = run(load_recipe("demo-tiny", [*overrides, "validation.prompts=[]"]))
    report = (result.run_dir / "data.txt").read_text()
    assert "64 images from facades, plans: 64 train (96 samples), 0 held out" in report, "facades count twice, plans once"


def test_a_v_prediction_base_trains_with_the_velocity_target(tmp_path, monkeypatch, capsys):
    """The target comes from the base's scheduler: tiny-sd2v is v-prediction, like SD 2.x 768-v."""
    import archdiff.train.objective as objective

    seen = []
    real_target = objective.training_target

    def recording_target(*args):
        seen.append(args[-1])
        return real_target(*args)

    monkeypatch.setattr(objective, "training_target", recording_target)
    overrides = [f"output={tmp_path / 'v'}", "base=tiny-sd2v", "train.max_steps=60", "validation.prompts=[]"]
    result = run(load_recipe("demo-tiny", overrides))
    assert "target: v_prediction (from the base's scheduler)" in capsys.readouterr().out
    assert set(seen) == {"v_prediction"} and len(seen) > 60, "every training step and the val set"
    assert result.final_val_loss < 0.8 * result.first_val_loss


def test_bf16_runs_draw_their_validation_images(tmp_path, tiny_base):
    """Half-precision frozen weights with an fp32 LoRA: sampling (validation and DreamBooth's class images)
    runs under the same autocast as training. A subprocess: accelerate's precision is fixed per process."""
    dreambooth = (
        "dreambooth={instance_prompt: a photo of sks house, class_prompt: a photo of a house, class_images: 1, class_steps: 2}"
    )
    command = [sys.executable, "-m", "archdiff", "train", "-r", "demo-tiny", "-o", str(tmp_path / "bf16"), "--max-steps", "2"]
    for setting in ("memory.mixed_precision=bf16", "validation.seeds=[0]", "validation.steps=2", dreambooth):
        command += ["--set", setting]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "bf16" / "samples").rglob("*.png")) == [
        "00-seed0.png",
        "grid.png",
        "step-000002.png",
    ]
