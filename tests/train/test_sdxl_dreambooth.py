"""DreamBooth with prior preservation on SDXL: class images drawn once by the SDXL base, per bucket, with their own
size/crop time ids in the batches they join."""

import pytest
import torch

from archdiff.config import load_recipe
from archdiff.train.run import run

pytestmark = pytest.mark.slow

DREAMBOOTH = (
    "dreambooth={instance_prompt: a photo of sks house, class_prompt: a photo of a house, class_images: 6, class_steps: 2}"
)


def test_sdxl_dreambooth_draws_class_images_once_and_trains_on_both(tmp_path, monkeypatch):
    import archdiff.model.families as families
    import archdiff.train.run as run_module
    import archdiff.train.step as step

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    pipelines, class_sets, losses, time_ids = [], [], [], []
    real_ensure, real_class_set, real_loss, real_ids = (
        run_module.ensure_class_images,
        run_module._class_set,
        step.prior_preservation_loss,
        families.sdxl_time_ids,
    )

    def ensure(cfg, targets, pipe, fingerprint):
        pipelines.append(type(pipe).__name__)
        return real_ensure(cfg, targets, pipe, fingerprint)

    def recording_loss(prediction, target, weights, instances, prior_weight):
        losses.append((len(prediction), instances, prior_weight))
        return real_loss(prediction, target, weights, instances, prior_weight)

    def recording_ids(original_size, crop_top_left, bucket):
        ids = real_ids(original_size, crop_top_left, bucket)
        time_ids.append((bucket, ids))
        return ids

    monkeypatch.setattr(run_module, "ensure_class_images", ensure)
    monkeypatch.setattr(run_module, "_class_set", lambda *a: class_sets.append(real_class_set(*a)) or class_sets[-1])
    monkeypatch.setattr(step, "prior_preservation_loss", recording_loss)
    monkeypatch.setattr(families, "sdxl_time_ids", recording_ids)
    overrides = ["base=tiny-sdxl", "train.max_steps=3", "validation.prompts=[]", "data.holdout=0", DREAMBOOTH]
    overrides += ["dreambooth.prior_loss_weight=0.5", "lora.text_encoder=null"]
    first = run(load_recipe("demo-tiny", [f"output={tmp_path / 'first'}", *overrides]))
    report = (first.run_dir / "data.txt").read_text()
    assert "instance prompt: a photo of sks house" in report
    drawn = next(line for line in report.splitlines() if line.startswith("class images:"))
    assert drawn.startswith("class images: 12 drawn, 0 reused"), "three buckets, one batch of 4 each"
    assert pipelines == ["StableDiffusionXLPipeline"], "the SDXL base draws them"
    assert losses == [(8, 4, 0.5)] * 3, "each step: 4 subject + 4 class samples in one batch, class loss weighted 0.5"

    (class_set,) = class_sets
    assert class_set.tokenizer_2 is not None, "class batches carry the second encoder's tokens"
    for index, sample in enumerate(class_set.samples):
        width, height = sample.bucket
        item = class_set[(index, 0)]
        assert item["original_size"].tolist() == [height, width] and item["crop_top_left"].tolist() == [0, 0]
    for bucket, ids in time_ids:  # the class half of each batch: drawn at the bucket's size, never cropped
        width, height = bucket
        assert (ids[4:] == torch.tensor([height, width, 0, 0, height, width])).all()
    assert any((ids[:4, :2] != torch.tensor([bucket[1], bucket[0]])).any() for bucket, ids in time_ids), (
        "the subject half keeps its photos' own sizes"
    )

    second = run(load_recipe("demo-tiny", [f"output={tmp_path / 'second'}", *overrides]))
    assert "class images: 0 drawn, 12 reused" in (second.run_dir / "data.txt").read_text()
    class_pngs = list((tmp_path / "cache" / "class-images").rglob("*.png"))
    assert len(class_pngs) == 12 and all(p.with_suffix(".txt").read_text() == "a photo of a house" for p in class_pngs)
    assert {p.parent.name for p in class_pngs} == {"48x80", "64x64", "80x48"}
