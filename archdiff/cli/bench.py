"""`archdiff bench`: steps/s, images/s, peak memory and MFU of the real training step, per configuration."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from archdiff.cli import options


def bench(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (recipes/NAME.yaml) or path to a YAML file."),
    base: str = options.BASE,
    steps: int = typer.Option(60, "--steps", help="Training steps per configuration (the first fifth is warm-up)."),
    matrix: list[str] = typer.Option(
        [],
        "--matrix",
        help="One configuration as knob=value,... (repeatable). Knobs: cache, checkpointing, precision, attention, "
        "optimizer, channels_last, compile, and preset (low, balanced, fast: a whole memory preset). "
        "Default: the recipe, then each knob's other values one at a time.",
    ),
    set_: list[str] = options.SET,
    json_path: Path = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
) -> None:
    """Benchmark a recipe's training step across configurations.

    One row per memory/speed configuration: steps/s, images/s, peak memory and MFU.
    """
    from archdiff.config import load_recipe

    overrides = [*set_, *([f"base={json.dumps(base)}"] if base else [])]
    resolved = load_recipe(recipe, overrides)

    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.bench import default_matrix, parse_matrix, run_bench, write_json

    configs = parse_matrix(matrix) if matrix else default_matrix(resolved)
    rows, device = run_bench(resolved, configs, steps, progress=typer.echo)
    typer.echo(f"device: {device}; steps/s and img/s: median over timed windows after warm-up")
    if json_path:
        write_json(json_path, rows, device, resolved, steps)
        typer.echo(f"json:   {json_path}")
