"""`archdiff bench`: configurations, the timing maths, the FLOP count, and the table from the real CLI."""

import json
import os
import subprocess
import sys

import pytest

from archdiff.bench import KNOBS, default_matrix, model_flops_per_step, parse_matrix, timed_steps_per_second
from archdiff.config import load_recipe
from archdiff.errors import UserError


def test_matrix_entries_are_configurations():
    assert parse_matrix(["cache=on,checkpointing=on", "precision=bf16"]) == [
        {"cache": "on", "checkpointing": "on"},
        {"precision": "bf16"},
    ]
    with pytest.raises(UserError, match="knob among cache, checkpointing"):
        parse_matrix(["turbo=on"])
    with pytest.raises(UserError, match="precision takes no, bf16, fp16"):
        parse_matrix(["precision=fp8"])


def test_default_matrix_is_the_recipe_then_each_other_value():
    configs = default_matrix(load_recipe("demo-tiny"))
    assert configs[0] == {}
    assert {"cache": "on"} in configs and {"cache": "off"} not in configs, "the recipe's own value is the baseline"
    assert {"precision": "bf16"} in configs and {"precision": "fp16"} in configs and {"precision": "no"} not in configs
    assert len(configs) == 1 + sum(len(values) - 1 for _, values in KNOBS.values())


def test_steps_per_second_is_the_median_after_warm_up_without_the_last_window():
    rows = [{"step": 0, "loss": None, "elapsed": 0.0}]
    elapsed = 0.0
    for step, seconds in zip(range(10, 70, 10), [5.0, 1.0, 1.0, 2.0, 1.0, 9.0], strict=True):
        elapsed += seconds
        rows.append({"step": step, "loss": 1.0, "elapsed": elapsed})
    # windows after step 10: 1.0, 1.0, 2.0, 1.0 s per 10 steps; the last (9 s, with validation) is left out
    assert timed_steps_per_second(rows, warmup=10) == 10.0
    assert timed_steps_per_second(rows[:3], warmup=10) is None


def test_flop_count_grows_with_the_batch_and_covers_sdxl(tiny_base):
    one = model_flops_per_step(load_recipe("demo-tiny", ["train.batch_size=1"]))
    two = model_flops_per_step(load_recipe("demo-tiny", ["train.batch_size=2"]))
    assert one > 0 and two == pytest.approx(2 * one, rel=0.01)
    assert model_flops_per_step(load_recipe("demo-tiny", ["base=tiny-sdxl", "train.batch_size=1"])) > 0


@pytest.mark.slow
def test_bench_prints_measured_rows_and_refuses_cuda_only_ones(tmp_path, tiny_base):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "archdiff", "bench", "--recipe", "demo-tiny", "--steps", "30"]
    command += ["--matrix", "cache=on", "--matrix", "precision=fp16", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "configuration" in done.stdout and "needs CUDA" in done.stdout
    rows = {row["config"]: row for row in json.loads(out.read_text())["rows"]}
    measured = rows["cache=on"]
    assert measured["steps_per_s"] > 0 and measured["images_per_s"] == pytest.approx(4 * measured["steps_per_s"])
    assert measured["peak_memory_mb"] > 100 and measured["startup_s"] > 0 and measured["gflop_per_step"] > 0
    assert measured["mfu"] is None, "no peak rate is known for a CPU"
    assert rows["precision=fp16"]["note"] == "needs CUDA" and rows["precision=fp16"]["steps_per_s"] is None


def test_cache_rows_also_cache_captions_where_the_recipe_allows_it(tmp_path):
    from archdiff.bench import configured

    sd15 = configured(load_recipe("demo-tiny"), {"cache": "on"}, tmp_path / "a", steps=30)
    assert sd15.data.cache.latents and sd15.data.cache.text
    assert sd15.train.max_steps == 30 and sd15.validation.prompts == [] and sd15.train.checkpoint_every is None
    sdxl = configured(load_recipe("demo-tiny", ["base=tiny-sdxl"]), {"cache": "on"}, tmp_path / "b", steps=30)
    assert sdxl.data.cache.latents and sdxl.data.cache.text, "SDXL caches both encoders' embeddings"
    trains = configured(load_recipe("demo-tiny", ["lora.text_encoder={rank: 4}"]), {"cache": "on"}, tmp_path / "c", steps=30)
    assert trains.data.cache.latents and not trains.data.cache.text, "a text encoder that trains cannot be cached"


def test_a_preset_row_is_the_preset_as_a_run_would_apply_it(tmp_path):
    """`--matrix preset=low` measures what `memory: low` does in a real run: its knobs and the latent cache."""
    from archdiff.bench import configured
    from archdiff.config.schema import MEMORY_PRESETS

    assert parse_matrix(["preset=balanced"]) == [{"preset": "balanced"}]
    with pytest.raises(UserError, match="preset takes low, balanced, fast"):
        parse_matrix(["preset=turbo"])
    for preset in MEMORY_PRESETS:
        row = configured(load_recipe("demo-tiny"), {"preset": preset}, tmp_path / preset, steps=30)
        assert row.memory == load_recipe("demo-tiny", [f"memory.preset={preset}"]).memory and row.memory.preset == preset
        assert row.data.cache.latents and not row.data.cache.text, "the preset's latent cache, and no more"
    beside = configured(load_recipe("demo-tiny"), {"precision": "no", "preset": "low"}, tmp_path / "x", steps=30)
    assert (beside.memory.mixed_precision, beside.memory.optimizer) == ("no", "adamw8bit"), "a knob beside a preset wins"
