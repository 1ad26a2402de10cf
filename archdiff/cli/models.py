"""`archdiff tiny-model`: build an offline tiny pipeline."""

from __future__ import annotations

from pathlib import Path

import typer


def tiny_model(
    folder: Path = typer.Argument(..., help="Folder to write the diffusers pipeline into."),
    family: str = typer.Option(
        "sd15",
        "--family",
        help="sd15 (SD 1.x, epsilon), sd2v (SD 2.x layout, v-prediction), sdxl (two text encoders) "
        "or sd3 (SD 3.5: MMDiT transformer, CLIP-L + CLIP-G + T5, flow matching).",
    ),
) -> None:
    """Build a tiny random diffusers pipeline, offline.

    For tests, demos and debugging: a few MB, loads with `--base FOLDER`.
    """
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.model.tiny import build_random_pipeline

    typer.echo(f"tiny {family} pipeline: {build_random_pipeline(folder, family)}")
