"""`archdiff sample`: draw images from a base model with LoRA adapters, optionally steered by ControlNets."""

from __future__ import annotations

from pathlib import Path

import typer

from archdiff.cli import options


def sample(
    prompt: str = typer.Argument(..., help="What to draw."),
    base: str = options.BASE,
    lora: list[str] = typer.Option(
        [],
        "--lora",
        help="Run folder, .safetensors file (diffusers or kohya keys) or Hub id, optionally WHERE:SCALE (repeatable).",
    ),
    fuse: bool = typer.Option(False, "--fuse", help="Merge the weighted LoRAs into the base weights: faster steps, same images."),
    init_image: Path = typer.Option(None, "--init-image", help="Start from this sketch or photo (img2img)."),
    strength: float = typer.Option(0.6, "--strength", help="With --init-image: how far to move away from it (1 = ignore it)."),
    control: list[Path] = typer.Option(
        [],
        "--control",
        help="Steer with this sketch, plan or photo through a ControlNet (repeatable; the image size follows it).",
    ),
    control_type: list[str] = typer.Option(
        [],
        "--control-type",
        help="Control map per --control: lines, canny, drawing or none (as given). Default: the ControlNet run's, else none.",
    ),
    controlnet: list[str] = typer.Option(
        [], "--controlnet", help="ControlNet per --control: a ControlNet run folder, a diffusers ControlNet folder or a Hub id."
    ),
    control_scale: list[float] = typer.Option(
        [], "--control-scale", help="Weight per --control (0 = ignore it). Default: the ControlNet run's, else 1.0."
    ),
    steps: int = typer.Option(25, "--steps", help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image; image i uses seed + i."),
    num_images: int = typer.Option(4, "--num-images", "-n", help="How many images."),
    width: int = typer.Option(None, "--width", help="Width in pixels, a multiple of 8 (default: the run's resolution)."),
    height: int = typer.Option(None, "--height", help="Height in pixels, a multiple of 8 (default: the run's resolution)."),
    output: Path = typer.Option(None, "--output", "-o", help="Folder for the images (default: samples/<time>-<prompt>)."),
) -> None:
    """Draw images with a base model, LoRAs and ControlNets.

    With --init-image, start from that image (img2img). With --control (and --controlnet, paired by position), follow
    its lines; several make a multi-ControlNet. Without --base, a --controlnet or --lora run folder's recipe names the base.
    """
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.controlnets import parse_controls
    from archdiff.sample import LoraSpec, sample_to_folder

    specs = [LoraSpec.parse(item) for item in lora]
    controls = parse_controls(control, control_type, controlnet, control_scale)
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
        init_image=init_image,
        strength=strength,
        fuse=fuse,
        controls=controls,
    )
    for path in paths:
        typer.echo(f"image: {path}")
    typer.echo(f"grid:  {paths[0].parent / 'grid.png'}")
    for index in range(len(controls)):
        typer.echo(f"control: {paths[0].parent / f'control-{index:02d}.png'}")
