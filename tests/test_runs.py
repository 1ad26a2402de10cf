"""`archdiff runs show` on fake run folders (finished, stopped, empty, not a run) and once on a real trained run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from archdiff.cli import app
from archdiff.errors import UserError
from archdiff.runs import format_summary, plot_losses, read_metrics, summarize

MAX_STEPS = 40
WEIGHTS_BYTES = 3_000_000


def metric_rows(last_step: int, resumed_at: int | None = None) -> list[dict]:
    """Rows as training logs them: step 0 has only val_loss, loss every 5 steps, val_loss every 20, 3 s a step;
    `elapsed` restarts at 0 after `resumed_at`, as in a resumed session."""
    rows = [{"step": 0, "loss": None, "lr": 0.0, "val_loss": 0.5, "elapsed": 0.0}]
    for step in range(5, last_step + 1, 5):
        session_start = resumed_at if resumed_at is not None and step > resumed_at else 0
        loss = 0.4 - step / 400 + (0.02 if step % 10 else -0.02)
        val_loss = 0.5 - step / 200 if step % 20 == 0 else None
        rows.append({"step": step, "loss": loss, "lr": 1e-3, "val_loss": val_loss, "elapsed": 3.0 * (step - session_start)})
    return rows


def make_run(folder: Path, rows: list[dict] | None, checkpoints: tuple[int, ...] = (), recipe: bool = True) -> Path:
    """A run folder as `archdiff train` leaves it; rows=None: no metrics.jsonl at all."""
    folder.mkdir(parents=True)
    if recipe:
        recipe_dict = {"name": "facade-test", "base": "tiny-sd15", "train": {"max_steps": MAX_STEPS}}
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe_dict), encoding="utf-8")
    if rows is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"\0" * WEIGHTS_BYTES)
    for step in checkpoints:
        checkpoint = folder / "checkpoints" / f"step-{step:06d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"step": step}), encoding="utf-8")
        (checkpoint / "adapter.safetensors").write_bytes(b"\0" * 1000)
    return folder


def test_finished_run(tmp_path):
    run = make_run(tmp_path / "done", metric_rows(MAX_STEPS), checkpoints=(20, 40))
    (run / "checkpoints" / ".partial-step-000060").mkdir()  # interrupted while saving: not a checkpoint
    (run / "checkpoints" / "step-000050").mkdir()  # no trainer_state.json yet: incomplete

    summary = summarize(run)

    assert (summary.name, summary.base, summary.steps_done, summary.max_steps) == ("facade-test", "tiny-sd15", 40, 40)
    assert summary.finished
    assert summary.first_val_loss == 0.5
    assert (summary.best_val_loss, summary.best_val_step) == (pytest.approx(0.3), 40)
    assert summary.final_loss == pytest.approx(sum(row["loss"] for row in metric_rows(MAX_STEPS)[-5:]) / 5)
    assert summary.elapsed == 120.0
    assert summary.checkpoints == [20, 40]
    assert summary.files["pytorch_lora_weights.safetensors"] == WEIGHTS_BYTES
    assert summary.files["checkpoints"] == 2 * (1000 + len(json.dumps({"step": 20})))
    assert set(summary.files) == {"checkpoints", "metrics.jsonl", "pytorch_lora_weights.safetensors", "recipe.yaml"}


def test_elapsed_is_summed_over_resumed_sessions(tmp_path):
    run = make_run(tmp_path / "resumed", metric_rows(MAX_STEPS, resumed_at=20))
    assert [row["elapsed"] for row in read_metrics(run)][-5:] == [60.0, 15.0, 30.0, 45.0, 60.0]
    assert summarize(run).elapsed == 120.0


def test_stopped_run_says_how_to_resume(tmp_path):
    run = make_run(tmp_path / "stopped", metric_rows(25), checkpoints=(20,))
    summary = summarize(run)
    assert not summary.finished
    assert summary.steps_done == 25

    text = format_summary(summary)
    assert "stopped at step 25 of 40 (last checkpoint: 20) — resume with:" in text
    assert f"archdiff train --recipe {run / 'recipe.yaml'} --resume latest -o {run}" in text


def test_stopped_run_without_checkpoint_says_to_start_over(tmp_path):
    run = make_run(tmp_path / "early", metric_rows(10))
    text = format_summary(summarize(run))
    assert "stopped at step 10 of 40, no checkpoint to resume from" in text
    assert f"archdiff train --recipe {run / 'recipe.yaml'} -o {run} --overwrite" in text
    assert "--resume" not in text


def test_format_summary_is_aligned_with_human_units(tmp_path):
    run = make_run(tmp_path / "done", metric_rows(MAX_STEPS), checkpoints=(20, 40))
    text = format_summary(summarize(run))
    lines = text.splitlines()

    assert lines[0] == f"run          facade-test ({run})"
    assert "status       finished: 40 of 40 steps" in lines
    assert "time         2 min 00 s (0.33 steps/s)" in lines
    assert "val_loss     first 0.5000, best 0.3000 at step 40 (0.60x the first), last 0.3000" in lines
    assert "checkpoints  20, 40" in lines
    files = lines[lines.index("files") + 1 :]
    assert files == [
        "  2.0 KB  checkpoints",
        "   718 B  metrics.jsonl",
        "  2.9 MB  pytorch_lora_weights.safetensors",
        "    57 B  recipe.yaml",
    ]
    assert "resume" not in text


def test_run_without_metrics_yet(tmp_path):
    run = make_run(tmp_path / "starting", rows=[])
    summary = summarize(run)
    assert summary.steps_done is None and summary.elapsed is None and summary.first_val_loss is None
    assert not summary.finished
    assert "no metrics logged yet" in format_summary(summary)
    with pytest.raises(UserError, match="nothing to plot"):
        plot_losses([], tmp_path / "loss.png", "empty")


def test_metrics_without_recipe_still_summarize(tmp_path):
    run = make_run(tmp_path / "bare", metric_rows(20), recipe=False)
    summary = summarize(run)
    assert (summary.name, summary.base, summary.max_steps, summary.finished) == ("bare", None, None, False)
    assert "step 20 logged; no recipe.yaml, so max_steps is unknown" in format_summary(summary)


def test_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(UserError, match="no metrics.jsonl and no recipe.yaml"):
        summarize(tmp_path / "photos")
    with pytest.raises(UserError, match="does not exist"):
        summarize(tmp_path / "nowhere")


def test_corrupt_metrics_is_a_user_error(tmp_path):
    run = make_run(tmp_path / "corrupt", rows=[])
    (run / "metrics.jsonl").write_text('{"step": 0, "loss": 0.3}\n{"step": 5, "lo\n{"step": 6}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"metrics.jsonl line 2 is not JSON"):
        summarize(run)


def test_a_killed_runs_cut_last_metrics_line_is_read_past(tmp_path):
    run = make_run(tmp_path / "killed", rows=[])
    (run / "metrics.jsonl").write_text('{"step": 0, "loss": 0.3}\n{"step": 5, "lo', encoding="utf-8")
    assert [row["step"] for row in read_metrics(run)] == [0]


def test_plot_is_a_drawn_chart(tmp_path):
    path = plot_losses(metric_rows(MAX_STEPS), tmp_path / "plots" / "loss.png", "facade-test: loss by step")

    assert path == tmp_path / "plots" / "loss.png"
    image = Image.open(path).convert("RGB")
    assert image.size == (900, 500)
    assert path.stat().st_size > 5_000
    colours = {colour for _, colour in image.getcolors(maxcolors=100_000)}
    # the three series' colours, the axis grey and the text, not one flat fill
    assert {(166, 196, 232), (31, 90, 168), (214, 96, 31), (255, 255, 255)} <= colours
    assert len(colours) > 20


def test_plot_copes_with_a_single_row(tmp_path):
    path = plot_losses([{"step": 0, "loss": None, "val_loss": 0.5}], tmp_path / "one.png", "one point")
    assert (214, 96, 31) in {colour for _, colour in Image.open(path).convert("RGB").getcolors(maxcolors=100_000)}


def test_cli_show_prints_summary_and_writes_plot(tmp_path):
    run = make_run(tmp_path / "done", metric_rows(MAX_STEPS), checkpoints=(40,))
    plot = tmp_path / "loss.png"

    result = CliRunner().invoke(app, ["runs", "show", str(run), "--plot", str(plot)])

    assert result.exit_code == 0, result.output
    assert "finished: 40 of 40 steps" in result.output
    assert result.output.rstrip().endswith(f"plot: {plot}")
    assert Image.open(plot).size == (900, 500)


def test_cli_show_refuses_to_plot_an_empty_run(tmp_path):
    run = make_run(tmp_path / "starting", rows=None)
    plot = tmp_path / "loss.png"

    result = CliRunner().invoke(app, ["runs", "show", str(run), "--plot", str(plot)])

    assert isinstance(result.exception, UserError)
    assert "nothing to plot" in str(result.exception)
    assert not plot.exists()
    assert "no metrics logged yet" in CliRunner().invoke(app, ["runs", "show", str(run)]).output


def test_cli_not_a_run_is_one_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "archdiff", "runs", "show", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"archdiff: error: '{tmp_path}' is not a run folder: it has no metrics.jsonl and no recipe.yaml"
    ]


def test_show_does_not_import_heavy_libraries(tmp_path):
    """`runs show` is for looking at a run while another trains: it must start fast."""
    run = make_run(tmp_path / "done", metric_rows(MAX_STEPS))
    code = (
        "import sys; from typer.testing import CliRunner; from archdiff.cli import app; "
        f"r = CliRunner().invoke(app, ['runs', 'show', {str(run)!r}, '--plot', {str(tmp_path / 'p.png')!r}]); "
        "assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'diffusers', 'datasets', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_real_run_summarizes_as_finished(demo_run, tmp_path):
    summary = summarize(demo_run.run_dir)

    assert summary.finished and summary.steps_done == summary.max_steps == 300
    assert summary.best_val_loss < summary.first_val_loss
    assert summary.checkpoints[-1] == 300
    assert summary.elapsed is not None and summary.elapsed > 0
    assert summary.files["pytorch_lora_weights.safetensors"] == demo_run.lora_file.stat().st_size
    assert plot_losses(read_metrics(demo_run.run_dir), tmp_path / "demo.png", "demo").stat().st_size > 5_000


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"scale": 0.8, "lora": None, "unet_lora": True}, "drawing control, scale 0.8, all weights trained, with a UNet LoRA"),
        (
            {"scale": 1.0, "lora": {"rank": 8}, "style_lora": "runs/style"},
            "drawing control, scale 1.0, a LoRA on it trained, over the style LoRA runs/style",
        ),
    ],
)
def test_controlnet_run_shows_its_control_type_and_what_trained(tmp_path, settings, expected):
    run = make_run(tmp_path / "cn", metric_rows(MAX_STEPS))
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe | {"data": {"control": {"type": "drawing"}}, "controlnet": settings}))
    lines = format_summary(summarize(run)).splitlines()
    assert [line.split(None, 1)[1] for line in lines if line.startswith("controlnet ")] == [expected]
    assert lines.index(next(line for line in lines if line.startswith("controlnet "))) == 2, "right under the base"

    lora_run = make_run(tmp_path / "lora", metric_rows(MAX_STEPS))
    assert summarize(lora_run).controlnet is None
    assert not any(line.startswith("controlnet") for line in format_summary(summarize(lora_run)).splitlines())


def test_a_controlnet_runs_blank_control_loss_is_shown_beside_val_loss(tmp_path):
    rows = metric_rows(MAX_STEPS)
    for row in rows:
        if row["val_loss"] is not None:
            row["val_loss_blank_control"] = round(row["val_loss"] * 1.25, 6)
    summary = summarize(make_run(tmp_path / "cn", rows))
    assert summary.last_blank_control_loss == pytest.approx(0.375)
    assert "blank control  last 0.3750 (the control lowers val_loss by 20.00%)" in format_summary(summary)
    assert summarize(make_run(tmp_path / "lora", metric_rows(MAX_STEPS))).last_blank_control_loss is None


def test_validation_metrics_show_their_last_values(tmp_path):
    rows = [
        *metric_rows(MAX_STEPS),
        {"step": 20, "val_clip_score": 21.5, "val_diversity": None},
        {"step": 40, "val_clip_score": 23.25},
    ]
    rows.append({"step": 40, "val_diversity": 0.125})
    summary = summarize(make_run(tmp_path / "scored", rows))
    assert summary.last_scores == {"val_clip_score": 23.25, "val_diversity": 0.125}
    assert "val metrics  clip_score 23.25, diversity 0.125" in format_summary(summary)
    assert "val metrics" not in format_summary(summarize(make_run(tmp_path / "plain", metric_rows(MAX_STEPS))))


def test_an_evaluated_run_names_its_best_checkpoint_and_report(tmp_path):
    run = make_run(tmp_path / "evaluated", metric_rows(MAX_STEPS), checkpoints=(20, 40))
    (run / "eval").mkdir()
    best = {"metric": "fd_dino", "name": "step-000020", "step": 20, "value": 3.0204}
    (run / "eval" / "report.json").write_text(json.dumps({"rows": [], "best": best}), encoding="utf-8")
    shown = format_summary(summarize(run))
    assert f"eval         best step-000020 by fd_dino (3.02), report {run / 'eval' / 'report.html'}" in shown
    (run / "eval" / "report.json").write_text('{"best": nu', encoding="utf-8")  # cut short
    assert "is unreadable or names no best; run `archdiff eval" in format_summary(summarize(run))
    assert summarize(make_run(tmp_path / "fresh", metric_rows(MAX_STEPS))).evaluation is None
