"""`archdiff sample`: draw images from a base model with LoRA adapters."""

from __future__ import annotations

from pathlib import Path

import typer

from archdiff.cli import options


def sample(
    prompt: str = typer.Argument(..., help="What to draw."),
    base: str = options.BASE,
    lora: list[str] = typer.Option([], "--lora", help="Run folder or .safetensors file, optionally PATH:SCALE (repeatable)."),
    steps: int = typer.Option(25, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", min=0.0, help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image; image i uses seed + i."),
    num_images: int = typer.Option(4, "--num-images", "-n", min=1, help="How many images."),
    width: int = typer.Option(None, "--width", min=8, help="Width in pixels (default: the run's resolution)."),
    height: int = typer.Option(None, "--height", min=8, help="Height in pixels (default: the run's resolution)."),
    output: Path = typer.Option(None, "--output", "-o", help="Folder for the images (default: samples/<time>-<prompt>)."),
) -> None:
    """Generate images; if --base is omitted, a --lora run folder's recipe names the base."""
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.sample import LoraSpec, sample_to_folder

    specs = [LoraSpec.parse(item) for item in lora]
    paths = sample_to_folder(
        prompt,
        base,
        specs,
        steps=steps,
        guidance=guidance,
        seed=seed,
        num_images=num_images,
        width=width,
        height=height,
        output=output,
    )
    for path in paths:
        typer.echo(f"image: {path}")
    typer.echo(f"grid:  {paths[0].parent / 'grid.png'}")
