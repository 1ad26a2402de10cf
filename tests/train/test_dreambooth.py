"""DreamBooth with prior preservation on the tiny model: class images drawn once, then reused."""

import pytest

from archdiff.config import load_recipe
from archdiff.train.dreambooth import class_targets
from archdiff.train.run import run

pytestmark = pytest.mark.slow

DREAMBOOTH = (
    "dreambooth={instance_prompt: a photo of sks house, class_prompt: a photo of a house, class_images: 6, class_steps: 4}"
)


def test_class_targets_follow_the_subject_buckets():
    buckets = [(64, 64)] * 6 + [(80, 48)] * 2
    assert class_targets(buckets, 16, batch_size=4) == {(64, 64): 12, (80, 48): 4}
    assert class_targets(buckets, 2, batch_size=3) == {(64, 64): 3, (80, 48): 3}, "at least one batch per bucket"


def test_dreambooth_draws_class_images_once_and_trains_on_both(tmp_path, tiny_base, monkeypatch):
    import archdiff.train.step as step

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    calls = []
    real_loss = step.prior_preservation_loss

    def recording_loss(prediction, target, weights, instances, prior_weight):
        calls.append((len(prediction), instances, prior_weight))
        return real_loss(prediction, target, weights, instances, prior_weight)

    monkeypatch.setattr(step, "prior_preservation_loss", recording_loss)
    overrides = ["train.max_steps=4", "validation.prompts=[]", "data.holdout=0", DREAMBOOTH, "dreambooth.prior_loss_weight=0.5"]
    first = run(load_recipe("demo-tiny", [f"output={tmp_path / 'first'}", *overrides]))
    report = (first.run_dir / "data.txt").read_text()
    assert "instance prompt: a photo of sks house" in report
    assert "subject images: facade_000.png, facade_001.png" in report
    drawn = next(line for line in report.splitlines() if line.startswith("class images:"))
    assert drawn.startswith("class images: 12 drawn, 0 reused"), "three buckets, one batch of 4 each"
    assert calls == [(8, 4, 0.5)] * 4, "each step: 4 subject + 4 class samples in one batch, class loss weighted 0.5"

    second = run(load_recipe("demo-tiny", [f"output={tmp_path / 'second'}", *overrides]))
    assert "class images: 0 drawn, 12 reused" in (second.run_dir / "data.txt").read_text()
    class_pngs = list((tmp_path / "cache" / "class-images").rglob("*.png"))
    assert len(class_pngs) == 12 and all(p.with_suffix(".txt").read_text() == "a photo of a house" for p in class_pngs)
