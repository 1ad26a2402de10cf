"""`archdiff data list | inspect | check-vae | controls | caption`: what `--data NAME` accepts, what a run would make
of it, the paired folders ControlNet training reads, and machine captions for a folder's uncaptioned images."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Inspect and list training data.", no_args_is_help=True)


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned plain-text columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _bundled_row(folder: Path) -> tuple[str, ...]:
    """Name, training images (metadata.jsonl's rows), kinds (rows without one train as photo; `+ controls` for
    paired sets) and size on disk."""
    from archdiff.units import human_size

    files = [p for p in folder.rglob("*") if p.is_file()]
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    kinds = ", ".join(sorted({row.get("kind") or "photo" for row in rows}))
    paired = " + controls" if any(row.get("control") for row in rows) else ""
    return (folder.name, str(len(rows)), kinds + paired, human_size(sum(p.stat().st_size for p in files)))


@app.command("list")
def list_data() -> None:
    """List bundled image sets and Hub datasets that have a manifest."""
    from archdiff.data.manifests import load_manifests
    from archdiff.data.sources import bundled_names
    from archdiff.paths import bundled_datasets_dir

    root = bundled_datasets_dir()
    typer.echo("Bundled sets (offline):")
    for line in _columns([("NAME", "IMAGES", "KINDS", "SIZE"), *(_bundled_row(root / name) for name in bundled_names())]):
        typer.echo(f"  {line}")
    typer.echo("\nHub datasets (downloaded on first use):")
    manifests = [(m.name, m.id, m.kind, m.licence) for m in load_manifests()]
    for line in _columns([("NAME", "HUB ID", "KIND", "LICENCE"), *manifests]):
        typer.echo(f"  {line}")
    typer.echo("\nTrain on one: archdiff train --recipe facade-lora --data NAME")


DATA = typer.Argument(..., help="Bundled set or manifest name (archdiff data list), local image folder, or Hub dataset id.")
RECIPE = typer.Option(
    None, "--recipe", "-r", help="Use this recipe's data settings (resolution, buckets, captions) with DATA as the only source."
)


def _data_config(data: str, recipe: str | None, settings: dict | None = None):
    """DATA (with source `settings`) with default data settings, or with the recipe's (its sources replaced by DATA)."""
    source = {"path": data, **(settings or {})}
    if recipe is None:
        from archdiff.config.schema import DataConfig

        return DataConfig(sources=[source])
    from archdiff.config import load_recipe

    return load_recipe(recipe, [f"data.sources={json.dumps([source])}"]).data


@app.command("inspect")
def inspect_command(
    data: str = DATA,
    recipe: str = RECIPE,
    output: Path = typer.Option(
        None, "--output", "-o", help="Contact sheet PNG (default: runs/inspect/<data>/contact-sheet.png)."
    ),
    sheet_size: int = typer.Option(24, "--sheet-size", min=1, help="Images on the contact sheet, spread evenly over the data."),
    mask_column: str = typer.Option(
        None, "--mask-column", help="Show the loss masks this column names (tinted red where ignored)."
    ),
    mask_alpha: bool = typer.Option(False, "--mask-alpha", help="Show the images' alpha channels as their loss masks."),
) -> None:
    """Report what a run would make of DATA, with a contact sheet.

    Before a long run: skipped files, sizes, aspect ratios, buckets, captions and duplicates.
    """
    from archdiff.data.inspect.picks import safe_name
    from archdiff.outputs import IMAGE_SUFFIXES, check_output

    output = output or Path("runs/inspect") / safe_name(data) / "contact-sheet.png"
    check_output(output, "--output", folder=False, suffixes=IMAGE_SUFFIXES)
    cfg = _data_config(data, recipe, {"mask_column": mask_column, "mask_alpha": mask_alpha})
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.data.inspect.sheet import contact_sheet
    from archdiff.data.inspect.stats import format_report, inspect_data

    report = inspect_data(cfg)
    sheet = contact_sheet(report, output, sheet_size)
    typer.echo(format_report(report))
    typer.echo(f"contact sheet: {sheet}")


@app.command("check-vae")
def check_vae_command(
    data: str = DATA,
    base: str = typer.Option(..., "--base", help="Base model whose VAE to test: Hub id, local diffusers folder, or tiny-sd15."),
    recipe: str = RECIPE,
    output: Path = typer.Option(None, "--output", "-o", help="Folder for before/after PNGs (default: runs/check-vae/<data>)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Check only N images, spread evenly over the data."),
) -> None:
    """Round-trip the training crops through the base's VAE.

    Detail the VAE loses, a LoRA cannot learn.
    """
    from archdiff.data.inspect.picks import safe_name
    from archdiff.outputs import check_output

    output = output or Path("runs/check-vae") / safe_name(data)
    check_output(output, "--output", folder=True)
    cfg = _data_config(data, recipe)
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.data.inspect.vae_check import check_vae, format_vae_report

    report = check_vae(cfg, base, output, limit)
    typer.echo(format_vae_report(report))


EXTRACTED_TYPES = ("lines", "canny", "drawing", "depth")  # "none" would pair each image with itself


@app.command("controls")
def controls_command(
    data: str = DATA,
    control_type: str = typer.Option(
        ..., "--type", "-t", help="Control map: lines (straight segments), canny (edges), drawing or depth."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Folder to write (default: <DATA name>-<type> here)."),
    canny_low: int = typer.Option(100, "--canny-low", help="Canny's lower hysteresis threshold (0-255)."),
    canny_high: int = typer.Option(200, "--canny-high", help="Canny's upper hysteresis threshold (0-255)."),
    max_side: int = typer.Option(1024, "--max-side", help="Shrink larger images to this long side before extracting."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier control set at --output."),
    depth_model: str = typer.Option(
        None, "--depth-model", help="For --type depth: a transformers depth-estimation model (Hub id or folder)."
    ),
) -> None:
    """Pair each image of DATA with a control map, for ControlNet.

    Writes images/ (the original files), controls/ (the maps), metadata.jsonl (each image's metadata with
    file_name and control) and contact_sheet.png: the paired folder ControlNet training reads.
    """
    from archdiff.data.controls import check_control_request
    from archdiff.errors import UserError

    if control_type not in EXTRACTED_TYPES:
        raise UserError(
            f"--type {control_type!r} is not a control type `data controls` extracts; choose one of {', '.join(EXTRACTED_TYPES)}"
        )
    if max_side < 64:
        raise UserError(f"--max-side {max_side} is too small; give at least 64 (px on the long side)")
    if control_type == "depth" and depth_model is None:
        raise UserError("--type depth needs --depth-model: the Hub id or folder of a depth-estimation model")
    if control_type != "depth":
        if depth_model is not None:
            raise UserError(f"--depth-model is for --type depth only (got --type {control_type})")
        check_control_request(control_type, canny_low, canny_high)
    from archdiff.data.control_sets import check_control_output, default_output

    output = output or default_output(data, control_type)
    check_control_output(output, data, overwrite)
    from archdiff.config.schema import DataConfig
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    if depth_model is not None:
        from archdiff.data.controls import check_depth_model

        check_depth_model(depth_model)
    from archdiff.data.control_sets import write_control_set

    cfg = DataConfig(sources=[{"path": data}])
    result = write_control_set(
        cfg, control_type, output, canny_low=canny_low, canny_high=canny_high, max_side=max_side, depth_model=depth_model
    )
    for item in result.skipped:
        typer.echo(f"  skipped {item.name}: {item.reason}")
    typer.echo(f"{result.written} controls written to {result.folder}, skipped {len(result.skipped)}")
    typer.echo(f"contact sheet: {result.sheet}")


@app.command("caption")
def caption_command(
    src: str = typer.Argument(..., help="Local image folder; its metadata.jsonl is created or updated in place."),
    model: str = typer.Option(
        "Salesforce/blip-image-captioning-base",
        "--model",
        "-m",
        help="BLIP captioner or image-text-to-text model (LLaVA, Qwen-VL, Florence-2, ...): Hub id, folder, tiny-captioner "
        "or tiny-vlm-captioner.",
    ),
    prompt: str = typer.Option(
        None, "--prompt", help="What an image-text-to-text model is asked (default: building type, materials, setting)."
    ),
    template: str = typer.Option(
        None, "--template", help="Caption from metadata fields around the model's text, e.g. '{material} facade, {caption}'."
    ),
    overwrite_human: bool = typer.Option(False, "--overwrite-human", help="Replace human captions (metadata text, .txt) too."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per generate call."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", min=1, help="Longest caption, in tokens."),
) -> None:
    """Write machine captions for the images of SRC that have none.

    Resumable: metadata.jsonl is saved after every batch, and a second run skips what is captioned. Machine captions
    are marked caption_source: machine, with caption_model.
    """
    from archdiff.data.captioning import caption_folder_of, check_template, plan_captions

    folder = caption_folder_of(src)
    check_template(template)
    plan = plan_captions(folder, overwrite_human, template)
    kept = f"{plan.human} human captions kept, {plan.earlier} captioned earlier"
    if not plan.todo:
        typer.echo(f"nothing to caption in {folder}: {kept}")
        return
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.data.captioning import load_captioner, write_captions

    result = write_captions(plan, load_captioner(model, prompt), template, batch_size, max_new_tokens)
    for item in result.skipped:
        typer.echo(f"  skipped {item.name}: {item.reason}")
    typer.echo(f"{result.written} captions written to {result.metadata}; {kept}, {len(result.skipped)} skipped")
