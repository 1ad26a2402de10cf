"""`archdiff export`: a run's LoRA in the format another tool loads."""

from __future__ import annotations

from pathlib import Path

import typer

FORMAT_HELP = "kohya (one .safetensors for A1111/ComfyUI), diffusers, peft, or fused (a full pipeline with the LoRA merged in)."
CHECKPOINT_HELP = (
    "Export a checkpoint's LoRA: best (the step `archdiff eval RUN` scored best), latest, or a step (200 or step-000200)."
)


def export(
    run: Path = typer.Argument(..., help="A finished run folder."),
    format_: str = typer.Option(..., "--format", "-f", help=FORMAT_HELP),
    output: Path = typer.Option(None, "--output", "-o", help="Where to write (default: RUN/export/...)."),
    scale: float = typer.Option(1.0, "--scale", help="With --format fused: the LoRA strength merged into the weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing export at --output."),
    checkpoint: str = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
) -> None:
    """Export a run's LoRA for other tools, or fused into a pipeline.

    kohya, diffusers and peft write the adapter; fused writes a standalone pipeline with the LoRA merged in.
    With --checkpoint, a training checkpoint's LoRA instead of the final one (default names carry the step).
    """
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.export import export_run
    from archdiff.units import human_size

    written = export_run(run, format_, output, scale, overwrite, checkpoint)
    files = sorted(p for p in written.rglob("*") if p.is_file()) if written.is_dir() else [written]
    typer.echo(f"{format_}: {written} ({human_size(sum(p.stat().st_size for p in files))} in {len(files)} files)")
