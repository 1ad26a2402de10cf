"""`archdiff train`: run a recipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from archdiff.cli import options
from archdiff.errors import UserError


def train(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (recipes/NAME.yaml) or path to a YAML file."),
    base: str = options.BASE,
    data: str = typer.Option(
        None, "--data", help="Bundled set or manifest name (archdiff data list), local image folder, or Hub dataset id."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Run folder (default: the recipe's output)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Override train.max_steps."),
    set_: list[str] = options.SET,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files of an earlier run in the output folder."),
    resume: str = typer.Option(
        None, "--resume", help="Continue from a checkpoint: 'latest' (in the output folder), a checkpoint or a run folder."
    ),
    num_processes: int = typer.Option(
        1, "--num-processes", min=1, help="Train as N data-parallel processes (accelerate launch on GPUs, torchrun on CPUs)."
    ),
) -> None:
    """Fine-tune a LoRA on the recipe's base model and data."""
    from archdiff.config import load_recipe

    shortcuts = {
        "base": base,
        "data.sources": [{"path": data}] if data else None,
        "output": str(output) if output else None,
        "train.max_steps": max_steps,
    }
    overrides = [*set_, *(f"{key}={json.dumps(value)}" for key, value in shortcuts.items() if value is not None)]
    resolved = load_recipe(recipe, overrides)
    if resolved.hub:
        from archdiff.push import hub_token

        hub_token("or drop hub from the recipe to train without pushing")  # before training, not after it

    from archdiff.train.launch import launched_by_a_launcher, relaunch

    if num_processes > 1 and not launched_by_a_launcher():
        raise typer.Exit(relaunch(num_processes, sys.argv[1:]))

    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.train.checkpoints import AlreadyFinished
    from archdiff.train.loop import Interrupted
    from archdiff.train.run import run

    try:
        result = run(resolved, overwrite=overwrite, resume=resume)
    except AlreadyFinished as finished:
        typer.echo(f"archdiff: {finished}")
        return
    except Interrupted as stop:
        if not stop.main:
            raise typer.Exit(128 + stop.signal_number) from None
        run_dir = Path(resolved.output)
        kept = f"checkpoint {stop.checkpoint}" if stop.checkpoint else "no new checkpoint (stopped twice)"
        trained = "ControlNet" if resolved.controlnet else "LoRA"
        typer.echo(f"\narchdiff: stopped at step {stop.step}; saved {kept} and the {trained} so far in {run_dir}", err=True)
        typer.echo(f"resume with: archdiff train --recipe {run_dir / 'recipe.yaml'} --resume latest", err=True)
        raise typer.Exit(128 + stop.signal_number) from None
    if not result.main:
        return
    if result.steps_trained:
        typer.echo(f"done: {result.steps_trained} steps at {result.steps_per_second:.1f} steps/s")
    else:
        typer.echo("done: nothing left to train; the final outputs were written from the last checkpoint")
    if result.first_val_loss is not None and result.final_val_loss is not None:
        ratio = result.final_val_loss / result.first_val_loss
        typer.echo(
            f"held-out loss: {result.first_val_loss:.4f} -> {result.final_val_loss:.4f} ({ratio:.2f}x the untrained model's)"
        )
    if result.final_blank_control_loss is not None and result.final_val_loss is not None:
        gain = round(1 - result.final_val_loss / result.final_blank_control_loss, 4) + 0.0  # no "-0.00%"
        typer.echo(f"with blank controls: {result.final_blank_control_loss:.4f} (the control lowers held-out loss by {gain:.2%})")
    trained = "ControlNet" if resolved.controlnet else "LoRA"
    if result.processes > 1:
        same = "identical on every rank" if result.ranks_agree else "DIFFERENT across ranks (a DDP sync problem)"
        typer.echo(f"processes: {result.processes}, {trained} weights {same}")
    typer.echo(f"{trained + ':':<8} {result.lora_file}")
    typer.echo(f"metrics: {result.run_dir / 'metrics.jsonl'}")
    if result.sample_files:
        typer.echo(f"samples: {result.sample_files[0].parent.parent}")
    guide = f"--controlnet {result.run_dir} --control SKETCH.png" if resolved.controlnet else f"--lora {result.run_dir}"
    typer.echo(f'next:    archdiff sample "timber house in mountains" {guide}')
    if resolved.hub:
        _push(result.run_dir, resolved.hub.repo, resolved.hub.private)


def _push(run_dir: Path, repo: str, private: bool) -> None:
    """The recipe's hub.repo: push at the end; a failed push keeps the run and says how to retry it."""
    from archdiff.push import push_run

    try:
        pushed = push_run(run_dir, repo, private=private)
    except UserError as error:
        raise UserError(f"the run is kept in {run_dir}, but {error}") from None
    kept = " (with the RUN/README.md you edited as its model card)" if pushed.card_kept else ""
    typer.echo(f"pushed:  {pushed.url}{kept}")
