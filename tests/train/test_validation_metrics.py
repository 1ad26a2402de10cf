"""`validation.metrics`: every validation grid scored into metrics.jsonl and TensorBoard, the metric models loaded once
and only when asked, an unloadable one refused before the output folder exists, and a recipe without prompts refused."""

import math
import os
import shutil
from pathlib import Path

import pytest

import archdiff.eval.features as features
from archdiff.config import load_recipe
from archdiff.errors import UserError
from archdiff.run_files import MetricsLog
from archdiff.train.run import run

COLUMNS = [
    "val_clip_score",
    "val_diversity",
    "val_vendi",
    "val_straight_fraction",
    "val_upright_fraction",
    "val_vertical_error_deg",
    "val_horizontal_error_deg",
]
QUICK = [
    "train.max_steps=4",
    "train.val_every=2",
    "train.log_every=2",
    "train.checkpoint_every=null",
    "validation.every=2",
    "validation.seeds=[0, 1]",
    "validation.steps=2",
    "validation.prompts=[timber house, brick tower]",
    "eval.clip=tiny-clip",
    "eval.dino=tiny-dino",
]
ALL_METRICS = "validation.metrics=[clip_score, diversity, vendi, geometry]"


@pytest.fixture
def model_loads(monkeypatch) -> dict[str, int]:
    """How often each metric model was loaded, counted at archdiff.eval.features (where MetricModels loads them)."""
    counts = {"clip": 0, "dino": 0}
    for kind in counts:
        real = getattr(features, f"load_{kind}")

        def counted(name, kind=kind, real=real):
            counts[kind] += 1
            return real(name)

        monkeypatch.setattr(features, f"load_{kind}", counted)
    return counts


@pytest.mark.slow
def test_each_validation_grid_is_scored_into_metrics_jsonl_and_tensorboard(tmp_path, tiny_base, model_loads):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from archdiff.runs import format_summary, summarize

    result = run(load_recipe("demo-tiny", [f"output={tmp_path / 'run'}", *QUICK, ALL_METRICS]))

    assert model_loads == {"clip": 1, "dino": 1}, "once per run, not once per grid"
    rows = MetricsLog.read(result.run_dir / "metrics.jsonl")
    scored = [row for row in rows if "val_clip_score" in row]
    assert [row["step"] for row in scored] == [2, 4], "the progress grid at step 2 and the final one"
    for row in scored:
        assert sorted(row) == sorted(["step", *COLUMNS]), row
        assert all(isinstance(row[name], float) and math.isfinite(row[name]) for name in COLUMNS), row
        assert 0 <= row["val_straight_fraction"] <= 1 and 0 <= row["val_upright_fraction"] <= 1
        assert 1 <= row["val_vendi"] <= 2, "two images per prompt: between one and two distinct images"
    assert [row["step"] for row in rows if "loss" in row] == [0, 2, 4], "the training rows are untouched"

    events = EventAccumulator(str(next((result.run_dir / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert set(COLUMNS) <= set(events.Tags()["scalars"])
    for name in COLUMNS:
        logged = [(event.step, event.value) for event in events.Scalars(name)]
        assert [step for step, _ in logged] == [2, 4], name
        for (_, value), row in zip(logged, scored, strict=True):
            assert value == pytest.approx(row[name], rel=1e-5), name  # TensorBoard keeps float32

    summary = summarize(result.run_dir)  # `archdiff runs show` reads the new rows without tripping on them
    assert summary.finished and summary.steps_done == 4 and summary.last_val_loss == rows[-2]["val_loss"]
    assert "finished: 4 of 4 steps" in format_summary(summary)


@pytest.mark.slow
def test_a_run_without_metrics_loads_no_metric_model(tmp_path, tiny_base, model_loads, monkeypatch):
    cache = tmp_path / "cache"  # a cache holding only tiny-sd15: whatever a metric model would build shows up in it
    shutil.copytree(tiny_base, cache / Path(tiny_base).relative_to(os.environ["ARCHDIFF_CACHE"]))
    monkeypatch.setenv("ARCHDIFF_CACHE", str(cache))
    overrides = [f"output={tmp_path / 'run'}", *QUICK, "train.max_steps=2", "validation.every=1"]

    result = run(load_recipe("demo-tiny", overrides))

    assert model_loads == {"clip": 0, "dino": 0}
    assert not (cache / "tiny" / "clip").exists() and not (cache / "tiny" / "dino").exists()
    rows = MetricsLog.read(result.run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 2], "no rows besides training's"
    assert not [name for row in rows for name in row if name.startswith("val_") and name != "val_loss"]
    assert (result.run_dir / "samples" / "step-000001.png").is_file(), "the grids are still drawn"


@pytest.mark.parametrize(
    ("metric", "key", "label"), [("clip_score", "clip", "CLIP model"), ("vendi", "dino", "DINOv2 model")], ids=["clip", "dino"]
)
def test_an_unloadable_metric_model_stops_the_run_before_its_folder_exists(tmp_path, tiny_base, metric, key, label):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not weights")
    output = tmp_path / "run"
    recipe = load_recipe("demo-tiny", [f"output={output}", *QUICK, f"validation.metrics=[{metric}]", f"eval.{key}={broken}"])

    with pytest.raises(UserError) as error:
        run(recipe)

    message = str(error.value)
    assert "\n" not in message and f"eval.{key}" in message and label in message and str(broken) in message, message
    assert "config.json" in message, message
    assert not output.exists(), "nothing written: the run stopped before it claimed its folder"


def test_geometry_without_opencv_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    from archdiff.train.validation_metrics import load_metric_models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "cv2" else real(name, *args))
    recipe = load_recipe("demo-tiny", [*QUICK, "validation.metrics=[geometry]"])

    with pytest.raises(UserError, match=r"validation.metrics geometry needs OpenCV: pip install 'archdiff\[controls\]'"):
        load_metric_models(recipe)


def test_metrics_without_prompts_is_a_recipe_error_naming_both_keys():
    with pytest.raises(UserError) as error:
        load_recipe("demo-tiny", ["validation.prompts=[]", "validation.metrics=[clip_score]"])

    message = str(error.value)
    assert "\n" not in message and "validation.metrics" in message and "validation.prompts" in message, message
    assert load_recipe("demo-tiny", ["validation.prompts=[]"]).validation.metrics == [], "no metrics, no prompts: fine"
