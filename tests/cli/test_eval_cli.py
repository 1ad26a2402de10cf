"""`archdiff eval` through the real entry point: a report row for the base and for every checkpoint, an image cache a
second call reuses, checkpoint selection, and bad input refused in one line with nothing written under the run."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import yaml
from hostile import FINISHED_STEPS, run_archdiff, tree_digest, user_error

EVAL_ARGS = ["-n", "4", "--seeds", "0,1"]  # 2 held-out captions x 2 seeds: 4 images a row, ~1 s each on a CPU
CHECKPOINTS = [f"step-{step:06d}" for step in range(1, FINISHED_STEPS + 1)]
ALWAYS_FINITE = (
    "clip_score",
    "fd_dino",
    "kid_dino",
    "kid_dino_std",
    "diversity",
    "vendi",
    "straight_fraction",
    "upright_fraction",
)
MAYBE_NULL = ("vertical_error_deg", "horizontal_error_deg")  # no near-vertical (horizontal) lines in noise: null


def _eval(root: Path, cache: Path, *args: str):
    started = time.perf_counter()
    result = run_archdiff(root, cache, "eval", *args, timeout=600)
    return result, time.perf_counter() - started


def _report(run: Path) -> dict:
    return json.loads((run / "eval" / "report.json").read_text(encoding="utf-8"))


def _run_files(run: Path) -> dict[str, str]:
    """Everything training wrote: eval must leave it byte for byte as it was."""
    return {name: digest for name, digest in tree_digest(run).items() if not name.startswith("eval/")}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, finished_sd15, archdiff_cache):
    """A copy of the shared three-checkpoint run, evaluated once with every metric of its recipe; its first report."""
    root = tmp_path_factory.mktemp("eval")
    run = root / "sd15"
    shutil.copytree(finished_sd15, run)
    before = _run_files(run)
    result, seconds = _eval(root, archdiff_cache, "sd15", *EVAL_ARGS)
    assert result.returncode == 0, result.stderr
    print(f"\nfirst eval (16 images drawn): {seconds:.1f} s")
    return {"root": root, "run": run, "result": result, "seconds": seconds, "report": _report(run), "before": before}


def test_report_has_the_base_and_every_checkpoint_with_finite_scores(evaluated):
    report, run = evaluated["report"], evaluated["run"]
    assert report["run"] == "sd15" and report["recipe"] == "demo-tiny" and report["base"] == "tiny-sd15"
    assert [row["name"] for row in report["rows"]] == ["base", *CHECKPOINTS]
    assert [row["step"] for row in report["rows"]] == [None, *range(1, FINISHED_STEPS + 1)]
    for row in report["rows"]:
        assert row["images"] == 4, row
        for column in ALWAYS_FINITE:
            assert isinstance(row[column], float) and math.isfinite(row[column]), (row["name"], column, row[column])
        for column in MAYBE_NULL:
            assert row[column] is None or math.isfinite(row[column]), (row["name"], column)
        assert (run / "eval" / row["grid"]).read_bytes().startswith(b"\x89PNG")
        assert len(list((run / "eval" / "images" / row["name"]).glob("*.png"))) == 4
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert report["rows"][0]["val_loss"] == metrics[0]["val_loss"]  # step 0: the untrained model, i.e. the base
    assert report["rows"][-1]["val_loss"] == metrics[-1]["val_loss"]
    assert report["settings"] == {
        "num_images": 4,
        "seeds": [0, 1],
        "steps": 20,
        "guidance": 7.5,
        "prompts": 2,
        "metrics": ["clip_score", "fd_dino", "kid_dino", "diversity", "vendi", "geometry"],
        "reference": "held-out",
        "reference_images": 3,
    }
    reference = report["reference"]
    assert reference["name"] == "held-out" and reference["images"] == 3
    assert (run / "eval" / reference["grid"]).read_bytes().startswith(b"\x89PNG")
    assert math.isfinite(reference["clip_score"]) and "fd_dino" not in reference


def test_report_names_its_metric_models_and_the_best_row(evaluated):
    report, stdout = evaluated["report"], evaluated["result"].stdout
    models = report["metric_models"]
    assert {kind: model["id"] for kind, model in models.items()} == {"clip": "tiny-clip", "dino": "tiny-dino"}
    assert all(len(model["digest"]) >= 16 and int(model["digest"], 16) >= 0 for model in models.values())
    best = report["best"]
    rows = {row["name"]: row for row in report["rows"]}
    assert best["metric"] == "fd_dino"  # the recipe's eval.select
    assert best["name"] in rows and best["step"] == rows[best["name"]]["step"]
    assert best["value"] == rows[best["name"]]["fd_dino"] == min(row["fd_dino"] for row in rows.values())
    assert f"best: {best['name']} (fd_dino" in stdout
    assert "images: 16 drawn, 0 reused" in stdout


def test_report_html_names_every_row_and_training_files_are_untouched(evaluated):
    run = evaluated["run"]
    html = (run / "eval" / "report.html").read_text(encoding="utf-8")
    assert all(name in html for name in ["base", *CHECKPOINTS, "held-out"])
    assert _run_files(run) == evaluated["before"]
    assert not list((run / "eval").rglob(".*"))  # no staged image or LoRA folder left behind


def test_checkpoint_images_are_the_loras_not_the_base(evaluated):
    """The same jobs drawn with the last checkpoint's LoRA differ from the base's: the adapter was really switched in."""
    from PIL import Image

    images = evaluated["run"] / "eval" / "images"

    def pixels(row: str) -> set[bytes]:
        return {Image.open(path).tobytes() for path in (images / row).glob("*.png")}

    assert not pixels("base") & pixels(CHECKPOINTS[-1])
    with Image.open(next((images / CHECKPOINTS[-1]).glob("*.png"))) as image:
        assert image.text["base"] == "tiny-sd15" and image.text["lora"] == f'["{CHECKPOINTS[-1]}:1"]'


def test_a_second_call_with_other_metrics_draws_nothing(evaluated, archdiff_cache):
    result, seconds = _eval(evaluated["root"], archdiff_cache, "sd15", *EVAL_ARGS, "--metrics", "clip_score")
    assert result.returncode == 0, result.stderr
    print(f"\nfirst eval {evaluated['seconds']:.1f} s; again with --metrics clip_score: {seconds:.1f} s")
    assert "images: 0 drawn, 16 reused" in result.stdout
    report = _report(evaluated["run"])
    assert report["settings"]["metrics"] == ["clip_score"]
    assert list(report["metric_models"]) == ["clip"]
    assert all("fd_dino" not in row and "straight_fraction" not in row for row in report["rows"])
    first = {row["name"]: row["clip_score"] for row in evaluated["report"]["rows"]}
    assert {row["name"]: row["clip_score"] for row in report["rows"]} == first  # the same images, the same scores
    assert report["best"]["metric"] == "clip_score" and report["best"]["value"] == max(first.values())


@pytest.mark.parametrize(
    ("checkpoints", "rows"),
    [("latest", ["base", CHECKPOINTS[-1]]), ("2", ["base", "step-000002"])],
)
def test_checkpoints_option_picks_the_rows(evaluated, archdiff_cache, checkpoints, rows):
    args = ["sd15", *EVAL_ARGS, "--checkpoints", checkpoints, "--metrics", "geometry"]  # geometry: no metric model to load
    result, seconds = _eval(evaluated["root"], archdiff_cache, *args)
    assert result.returncode == 0, result.stderr
    print(f"\n--checkpoints {checkpoints}: {seconds:.1f} s")
    report = _report(evaluated["run"])
    assert [row["name"] for row in report["rows"]] == rows
    assert f"images: 0 drawn, {4 * len(rows)} reused" in result.stdout
    assert report["best"] is None and report["metric_models"] == {}  # no CLIP, FD or KID asked: nothing to pick by
    assert "best: none" in result.stdout


# Bad input: one line, exit 2, and the run exactly as it was (no RUN/eval created).


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, finished_sd15) -> Path:
    """A copy of the shared run that the refused commands below may not change (they only read it)."""
    run = tmp_path_factory.mktemp("pristine") / "sd15"
    shutil.copytree(finished_sd15, run)
    return run


def _refused(tmp_path: Path, cache: Path, run: Path, *args: str) -> str:
    before = tree_digest(run) if run.exists() else None
    had_eval = (run / "eval").exists()
    result, seconds = _eval(tmp_path, cache, str(run), *args)
    print(f"\nrefused in {seconds:.1f} s: {result.stderr.strip()}")
    line = user_error(result)
    assert (tree_digest(run) if run.exists() else None) == before
    assert (run / "eval").exists() == had_eval
    assert result.stdout == ""
    return line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "clip_score,nope"], "unknown metric 'nope'; choose from clip_score, fd_dino"),
        (["--num-images", "0"], "--num-images must be at least 1 (got 0)"),
        (["--num-images", "-3"], "--num-images must be at least 1 (got -3)"),
        (["--seeds", "a,b"], "--seeds takes whole numbers separated by commas"),
        (["--seeds", ","], "--seeds needs at least one seed"),
        (["--checkpoints", "999"], "has no checkpoint at step 999 (it has steps 1, 2, 3)"),
        (["--checkpoints", "x"], "--checkpoints takes all, latest or steps like 100,200 or step-000200 (got 'x')"),
        (["--metrics", "control_f1"], "this run trained no ControlNet"),
        (["--metrics", "diversity", "--seeds", "0"], "give 2 or more --seeds"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(tmp_path, archdiff_cache, pristine, args, message):
    assert message in _refused(tmp_path, archdiff_cache, pristine, *args)


def test_a_folder_that_is_not_a_run(tmp_path, archdiff_cache):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "facade.png").write_bytes(b"not really")
    assert "is not a run folder (no recipe.yaml)" in _refused(tmp_path, archdiff_cache, folder)


def test_a_missing_folder(tmp_path, archdiff_cache):
    assert "is not a folder" in _refused(tmp_path, archdiff_cache, tmp_path / "no-such-run")
    assert not (tmp_path / "no-such-run").exists()


def _copy(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("optimizer.bin", "random_states_*"))
    return run


def test_a_run_without_checkpoints(tmp_path, archdiff_cache, finished_sd15):
    run = _copy(finished_sd15, tmp_path)
    shutil.rmtree(run / "checkpoints")
    assert "has no complete checkpoint (train it first" in _refused(tmp_path, archdiff_cache, run)


def test_eval_being_a_file(tmp_path, archdiff_cache, finished_sd15):
    run = _copy(finished_sd15, tmp_path)
    (run / "eval").write_text("notes", encoding="utf-8")
    assert "eval folder" in _refused(tmp_path, archdiff_cache, run, *EVAL_ARGS)
    assert (run / "eval").read_text(encoding="utf-8") == "notes"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base: [tiny-sd15\neval: {: :\n", "recipe.yaml is not valid YAML"),
        ("- a list\n- of lines\n", "does not hold a recipe (a YAML mapping)"),
        ("eval: {num_images: 4}\n", "is not a recipe this archdiff reads (base: Field required)"),
    ],
)
def test_a_damaged_recipe_yaml(tmp_path, archdiff_cache, finished_sd15, text, message):
    run = _copy(finished_sd15, tmp_path)
    (run / "recipe.yaml").write_text(text, encoding="utf-8")
    assert message in _refused(tmp_path, archdiff_cache, run)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("clip", "{empty}", "CLIP model '{empty}' is a folder without config.json"),
        ("dino", "facebook/dinov2-small", "'facebook/dinov2-small' is not downloaded and the Hugging Face Hub is not reachable"),
    ],
)
def test_a_metric_model_that_cannot_be_loaded(tmp_path, archdiff_cache, finished_sd15, key, value, message):
    """Found before any image is drawn or any checkpoint's LoRA is written (both under RUN/eval)."""
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    run = _copy(finished_sd15, tmp_path)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    recipe["eval"][key] = value.format(empty=empty)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    assert message.format(empty=empty) in _refused(tmp_path, archdiff_cache, run, *EVAL_ARGS)


# Found while writing these tests: settings refused only after images are drawn (RUN/eval written), or not by name.
# In-process (a CLI call would spend ~15 s drawing first): the first write under RUN/eval fails the test.


def _refused_before_writing(monkeypatch, run: Path, options) -> str:
    from archdiff.errors import UserError
    from archdiff.eval.run import evaluate

    def wrote(*args, **kwargs):
        raise AssertionError("a checkpoint's LoRA or an image was about to be written under RUN/eval")

    monkeypatch.setattr("archdiff.checkpoint_loras.checkpoint_lora", wrote)
    monkeypatch.setattr("archdiff.eval.draw.draw_missing", wrote)
    before = tree_digest(run)
    with pytest.raises(UserError) as refused:
        evaluate(run, options)
    assert tree_digest(run) == before and not (run / "eval").exists()
    return str(refused.value)


@pytest.mark.parametrize("metric", ["fd_dino", "kid_dino"])
def test_fd_or_kid_of_a_single_image_is_refused_before_drawing(monkeypatch, tmp_path, finished_sd15, metric):
    from archdiff.eval.run import EvalOptions

    run = _copy(finished_sd15, tmp_path)
    assert "at least 2" in _refused_before_writing(monkeypatch, run, EvalOptions("latest", 1, [metric], [0]))


def test_fd_against_a_single_held_out_image_is_refused_before_drawing(monkeypatch, tmp_path, finished_sd15):
    from archdiff.eval.run import EvalOptions

    run = _copy(finished_sd15, tmp_path)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    recipe["data"]["holdout"] = 0.03  # round(32 x 0.03) = 1 image held out
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    _refused_before_writing(monkeypatch, run, EvalOptions("latest", 2, ["fd_dino"], [0, 1]))


def test_a_seed_torch_cannot_take_is_refused_before_drawing(monkeypatch, tmp_path, finished_sd15):
    from archdiff.eval.run import EvalOptions

    run = _copy(finished_sd15, tmp_path)
    assert "seed" in _refused_before_writing(monkeypatch, run, EvalOptions("latest", 2, ["geometry"], [0, 2**64]))
