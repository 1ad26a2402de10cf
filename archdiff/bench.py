"""`archdiff bench`: the real `archdiff train` step under each configuration, as a table of figures.

Every configuration runs as its own `archdiff train` process (same code as a real run; precision and
peak memory are per process), logging every WINDOW steps; steps/s is the median over the timed
windows after warm-up, leaving out the last window, which also holds the final validation.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from archdiff.config import Recipe, apply_overrides, dump_recipe
from archdiff.config.load import validate_recipe
from archdiff.config.schema import MEMORY_PRESETS
from archdiff.errors import UserError

WINDOW = 10  # steps per timed window
# knob -> (recipe key, {word on the command line: recipe value}); the recipe's own value is the baseline
KNOBS: dict[str, tuple[str, dict[str, object]]] = {
    "cache": ("data.cache.latents", {"off": False, "on": True}),
    "checkpointing": ("memory.gradient_checkpointing", {"off": False, "on": True}),
    "precision": ("memory.mixed_precision", {"no": "no", "bf16": "bf16", "fp16": "fp16"}),
    "attention": ("memory.attention", {"sdpa": "sdpa", "xformers": "xformers"}),
    "optimizer": ("memory.optimizer", {"adamw": "adamw", "adamw8bit": "adamw8bit"}),
    "channels_last": ("memory.channels_last", {"off": False, "on": True}),
    "compile": ("memory.compile", {"off": False, "on": True}),
}
PRESET = "preset"  # a whole `memory:` preset as one configuration (`--matrix preset=low`); not in the default matrix
CUDA_ONLY = {("precision", "fp16"), ("attention", "xformers"), ("compile", "on")}
# dense bf16 tensor-core peak, FLOP/s, by device name: MFU = model FLOPs per step x steps/s / peak
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "4090": 165e12}


@dataclass
class Row:
    config: str
    steps_per_s: float | None = None
    images_per_s: float | None = None
    peak_memory_mb: float | None = None
    startup_s: float | None = None
    gflop_per_step: float | None = None
    mfu: float | None = None
    note: str = ""


def _choices(name: str):
    return MEMORY_PRESETS if name == PRESET else KNOBS[name][1]


def parse_matrix(entries: list[str]) -> list[dict[str, str]]:
    """`--matrix cache=on,checkpointing=on` -> one configuration per entry; a clear error naming a bad knob or value."""
    configs = []
    for entry in entries:
        config = {}
        for pair in filter(None, (part.strip() for part in entry.split(","))):
            name, sep, value = pair.partition("=")
            if not sep or (name not in KNOBS and name != PRESET):
                raise UserError(f"--matrix '{pair}': write knob=value with a knob among {', '.join([*KNOBS, PRESET])}")
            if value not in _choices(name):
                raise UserError(f"--matrix '{pair}': {name} takes {', '.join(_choices(name))}")
            config[name] = value
        configs.append(config)
    return configs


def default_matrix(recipe: Recipe) -> list[dict[str, str]]:
    """The recipe as it is, then each knob's other values one at a time."""
    dumped = recipe.model_dump(mode="json")
    configs: list[dict[str, str]] = [{}]
    for name, (key, values) in KNOBS.items():
        current = _lookup(dumped, key)
        configs += [{name: word} for word, value in values.items() if value != current]
    return configs


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def configured(recipe: Recipe, config: dict[str, str], output: Path, steps: int) -> Recipe:
    """The recipe with this configuration's knobs, trimmed to timing: no sample images, trackers or checkpoints.

    `cache=on` also caches captions where the recipe allows it; a preset sets what it sets in a run, latents cached."""
    overrides: dict[str, object] = {}
    for name, word in sorted(config.items(), key=lambda item: item[0] != PRESET):  # knobs beside a preset win over it
        overrides |= _knob_overrides(name, word)
    if config.get("cache") == "on" and _text_cache_allowed(recipe):
        overrides["data.cache.text"] = True
    overrides |= {
        "output": str(output),
        "train.max_steps": steps,
        "train.log_every": WINDOW,
        "train.val_every": steps,
        "train.checkpoint_every": None,
        "train.trackers": [],
        "validation.prompts": [],
        "hub": None,
    }
    settings = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return validate_recipe(apply_overrides(recipe.model_dump(mode="json"), settings), f"bench configuration {config}")


def _knob_overrides(name: str, word: str) -> dict[str, object]:
    if name == PRESET:  # replaces the recipe's memory settings, as in a run; with the latent cache every preset turns on
        return {"memory.preset": word, "data.cache.latents": True}
    key, values = KNOBS[name]
    return {key: values[word]}


def _text_cache_allowed(recipe: Recipe) -> bool:
    """Whether the recipe could also cache caption embeddings (fixed captions, frozen text encoder, not SDXL)."""
    from archdiff.model.base import resolve_base
    from archdiff.train.checks import check_cache_options, check_family_options

    trial = recipe.model_copy(deep=True)
    trial.data.cache.text = True
    try:
        check_cache_options(trial)
        check_family_options(trial, resolve_base(trial.base).family)
    except UserError:
        return False
    return True


def refusal(recipe: Recipe, cuda: bool) -> str | None:
    """Why this machine cannot run the configuration ("needs CUDA" ...), or None."""
    from archdiff.model.base import resolve_base
    from archdiff.model.memory import check_memory_options
    from archdiff.train.checks import check_cache_options, check_family_options

    try:
        check_memory_options(recipe.memory, cuda)
        check_cache_options(recipe)
        check_family_options(recipe, resolve_base(recipe.base).family)
    except UserError as error:
        return str(error)
    return None


def timed_steps_per_second(rows: list[dict], warmup: int) -> float | None:
    """Median steps/s over the logged windows after `warmup` steps, without the last (it holds the final validation)."""
    logged = [row for row in rows if row.get("loss") is not None]
    rates = []
    for before, after in zip(logged, logged[1:-1], strict=False):
        if before["step"] >= warmup and after["elapsed"] > before["elapsed"]:
            rates.append((after["step"] - before["step"]) / (after["elapsed"] - before["elapsed"]))
    return statistics.median(rates) if rates else None


def model_flops_per_step(recipe: Recipe) -> float:
    """FLOPs of one UNet forward and backward (LoRA attached) at the square bucket, counted by torch on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from archdiff.model.base import resolve_base
    from archdiff.model.lora import attach_lora

    base = resolve_base(recipe.base)
    config = UNet2DConditionModel.load_config(base.source, subfolder="unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    attach_lora(unet, recipe.lora)
    batch, side = recipe.train.batch_size * recipe.train.gradient_accumulation, recipe.data.resolution // 8
    latents = torch.empty(batch, config["in_channels"], side, side, device="meta")
    text = torch.empty(batch, 77, config["cross_attention_dim"], device="meta")
    added = None
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        added = {"text_embeds": torch.empty(batch, pooled, device="meta"), "time_ids": torch.empty(batch, 6, device="meta")}
    with FlopCounterMode(display=False) as counter:
        prediction = unet(latents, torch.zeros(batch, device="meta"), text, added_cond_kwargs=added).sample
        prediction.float().pow(2).mean().backward()
    return float(counter.get_total_flops())


def device_peak_flops() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def bench_row(
    recipe: Recipe, config: dict[str, str], steps: int, output: Path, cuda: bool, flops: float, peak: float | None
) -> Row:
    label = ",".join(f"{k}={v}" for k, v in config.items()) or "recipe as is"
    if not cuda and CUDA_ONLY & set(config.items()):
        return Row(label, note="needs CUDA")
    try:
        row_recipe = configured(recipe, config, output, steps)
    except UserError as error:  # a configuration the schema refuses is a row, not a crash
        return Row(label, note=str(error))
    if reason := refusal(row_recipe, cuda):
        return Row(label, note=reason)
    recipe_file = output.with_suffix(".yaml")
    recipe_file.write_text(dump_recipe(row_recipe), encoding="utf-8")
    command = [sys.executable, "-m", "archdiff", "train", "--recipe", str(recipe_file), "--overwrite"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if not cuda:
        env.setdefault("OMP_NUM_THREADS", "1")  # on small CPU machines two threads were up to 10x slower
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return Row(label, note=f"failed: {lines[-1] if lines else done.returncode}")
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    rate = timed_steps_per_second(rows, warmup=max(WINDOW, steps // 5))
    images = recipe.train.batch_size * recipe.train.gradient_accumulation
    achieved = flops * rate if rate else None
    return Row(
        label,
        steps_per_s=rate,
        images_per_s=rate * images if rate else None,
        peak_memory_mb=rows[-1].get("peak_memory_mb"),
        startup_s=rows[0].get("startup"),
        gflop_per_step=flops / 1e9,
        mfu=achieved / peak if achieved and peak else None,
    )


def run_bench(recipe: Recipe, configs: list[dict[str, str]], steps: int, progress=print) -> tuple[list[Row], str]:
    """Every configuration in turn; returns the rows and the device they ran on."""
    import torch

    if steps < 3 * WINDOW:
        raise UserError(f"--steps must be at least {3 * WINDOW}: one warm-up window, one timed, and the final one")
    progress(f"archdiff bench: {recipe.name} on {recipe.base}, {len(configs)} configurations x {steps} steps")
    cuda = torch.cuda.is_available()
    device, peak = device_peak_flops()
    flops = model_flops_per_step(recipe)
    progress(HEADER)
    rows = []
    with tempfile.TemporaryDirectory(prefix="archdiff-bench-") as work:
        for index, config in enumerate(configs):
            row = bench_row(recipe, config, steps, Path(work) / f"row{index}", cuda, flops, peak)
            progress(format_row(row))
            rows.append(row)
    return rows, device


HEADER = f"{'configuration':<34} {'steps/s':>8} {'img/s':>8} {'peak MB':>8} {'start s':>8} {'GFLOP/st':>9} {'MFU':>6}  note"


def format_row(row: Row) -> str:
    def cell(value, width, spec):
        return f"{value:>{width}{spec}}" if value is not None else f"{'-':>{width}}"

    return (
        f"{row.config:<34} {cell(row.steps_per_s, 8, '.2f')} {cell(row.images_per_s, 8, '.1f')} "
        f"{cell(row.peak_memory_mb, 8, '.0f')} {cell(row.startup_s, 8, '.1f')} {cell(row.gflop_per_step, 9, '.2f')} "
        f"{cell(row.mfu * 100 if row.mfu is not None else None, 5, '.1f')}{'%' if row.mfu is not None else ' '}  {row.note}"
    ).rstrip()


def write_json(path: Path, rows: list[Row], device: str, recipe: Recipe, steps: int) -> None:
    payload = {"device": device, "recipe": recipe.name, "base": recipe.base, "steps": steps, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
