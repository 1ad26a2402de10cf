"""The model card `archdiff push` writes into the run folder and uploads as the repo's README.md.

The Hub metadata (base, licence, tags, trigger words, widget images) is a huggingface_hub `ModelCardData`
and the card a `ModelCard`, so the Hub reads it as it reads its own; the body says what the adapter (a LoRA, or a
ControlNet with its control type and control | result grid) is, how it was trained and how to load it. A generated
card ends with a marker holding its own hash: an unedited card follows the run, and one edited by hand is kept. No
local path goes into a card. huggingface_hub is imported inside the functions that use it, so `archdiff --help` stays instant.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from archdiff.errors import UserError
from archdiff.hub_ids import is_hub_id
from archdiff.model.base import TINY_PREFIX
from archdiff.model.families import FAMILIES
from archdiff.run_files import CONTROLNET_DIR, LORA_WEIGHTS, RECIPE_FILE, SAMPLES_DIR, write_text_atomic

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

CARD_FILE = "README.md"
_CARD_MARK = "\n<!-- archdiff card {digest}: if you edit this file, archdiff push keeps your version -->\n"
_CARD_MARK_PATTERN = re.compile(r"\n<!-- archdiff card ([0-9a-f]{16}): .* -->\n\Z")
_GRID = re.compile(rf"{SAMPLES_DIR}/step-\d+\.png")  # samples/step-000300.png
_PROMPT_IMAGE = re.compile(rf"{SAMPLES_DIR}/prompt\d+/\d+-seed-?\d+\.png")  # samples/prompt00/00-seed0.png
_LICENSES = {  # when the base's own card cannot be read (offline, gated)
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-1-base": "openrail++",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
}
_TINY_LICENSE = "apache-2.0"  # archdiff's own random test models, under archdiff's licence
# RUN/controlnet/NAME goes to NAME at the repo root (see archdiff.push): what ControlNetModel.from_pretrained(repo) reads.
CONTROLNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def inside_run(run_dir: Path, name: str) -> bool:
    """RUN/NAME is a regular file inside the run folder: a link that leads out is never read or uploaded."""
    path = run_dir / name
    return path.is_file() and path.resolve().is_relative_to(run_dir.resolve())


def final_samples(run_dir: Path) -> list[str]:
    """The samples that go up with the adapter and onto its card: the last sample grid and the final image per
    prompt and seed, by their paths in the repo."""
    samples = run_dir / SAMPLES_DIR
    found = [p.relative_to(run_dir).as_posix() for p in samples.glob("**/*.png")] if samples.is_dir() else []
    grids = sorted(name for name in found if _GRID.fullmatch(name))
    images = sorted(name for name in found if _PROMPT_IMAGE.fullmatch(name))
    return [name for name in (*grids[-1:], *images) if inside_run(run_dir, name)]


def run_weights(recipe: dict[str, Any]) -> list[str]:
    """The weights the run made, by their paths in the run folder: a ControlNet run's controlnet/ files (and its UNet
    LoRA with controlnet.unet_lora), else the LoRA. From the recipe, not the files: a folder reused with --overwrite
    may still hold an earlier run's LoRA or ControlNet."""
    if not recipe.get("controlnet"):
        return [LORA_WEIGHTS]
    lora = [LORA_WEIGHTS] if recipe["controlnet"].get("unet_lora") else []
    return [*(f"{CONTROLNET_DIR}/{name}" for name in CONTROLNET_FILES), *lora]


def write_card(run_dir: Path, repo: str, replace: bool = False) -> bool:
    """Write the model card to RUN/README.md, unless the file there was written or edited by hand: that one is
    kept (and pushed) as it is, unless `replace`. Returns whether archdiff wrote the card.

    A generated card ends with a marker holding its own hash, so an unedited one is told from an edited one
    and is regenerated when the run has changed (more steps, new samples)."""
    path = run_dir / CARD_FILE
    if not replace and path.is_file() and not path.is_symlink():
        text = path.read_text(encoding="utf-8", errors="replace")
        mark = _CARD_MARK_PATTERN.search(text)
        if not mark or mark.group(1) != _card_digest(text[: mark.start()]):
            return False
    card = str(model_card(run_dir, repo))
    write_text_atomic(path, card + _CARD_MARK.format(digest=_card_digest(card)))
    return True


def _card_digest(card: str) -> str:
    return hashlib.sha256(card.encode()).hexdigest()[:16]


def model_card(run_dir: Path, repo: str) -> ModelCard:
    """The repo's README.md: Hub metadata (base, licence, tags, trigger, widget) and a body that says what the
    adapter is, how it was trained and how to load it."""
    from huggingface_hub import ModelCard, ModelCardData

    recipe = yaml.safe_load((run_dir / RECIPE_FILE).read_text(encoding="utf-8")) or {}
    base = str(recipe.get("base", "?"))
    controlnet, lora = bool(recipe.get("controlnet")), LORA_WEIGHTS in run_weights(recipe)
    family = FAMILIES[_family_of_run(base, run_dir, controlnet)]
    license_ = base_license(base)
    dreambooth = recipe.get("dreambooth") or {}
    triggers = trigger_words(recipe)
    samples = final_samples(run_dir)
    widget = [{"text": prompt, "output": {"url": name}} for name in samples if (prompt := _png_prompt(run_dir / name))]
    kinds = ["controlnet", *(["lora"] if lora else [])] if controlnet else ["lora"]
    tags = [*kinds, "diffusers", "text-to-image", "architecture", family.hub_tag]
    data = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        license=license_,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=[*tags, *(["dreambooth"] if dreambooth else [])],
        instance_prompt=dreambooth.get("instance_prompt") or ", ".join(triggers) or None,
        widget=widget or None,
    )
    grid = next((name for name in samples if _GRID.fullmatch(name)), None)
    if controlnet:  # a ControlNet (maybe with a UNet LoRA): its control type and grid, and how to feed it a sketch
        from archdiff.model_card_controlnet import control_section, controlnet_recipe_section, controlnet_usage_section

        sections = [
            _what_it_is(recipe, base, family, lora),
            control_section(recipe),
            *([_trigger_section(triggers, dreambooth)] if triggers else []),
            *([_samples_section(recipe, grid)] if grid else []),
            controlnet_recipe_section(recipe, base),
            controlnet_usage_section(recipe, base, repo, family, lora, triggers),
        ]
    else:
        sections = [
            _what_it_is(recipe, base, family, lora),
            _trigger_section(triggers, dreambooth),
            *([_samples_section(recipe, grid)] if grid else []),
            _recipe_section(recipe, base, family),
            _usage_section(recipe, base, repo, family, triggers),
        ]
    body = "\n\n".join([f"# {repo.split('/')[1]}", *sections, _license_section(base, license_)])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def base_license(base: str) -> str:
    """The base's licence, which the adapter inherits: from the base's own card (a local folder's README.md or
    the Hub's), else a table of well-known bases, else "other" (the card then says to check it)."""
    if _is_tiny(base):
        return _TINY_LICENSE
    from huggingface_hub import ModelCard

    source = base if is_hub_id(base) else Path(base).expanduser() / CARD_FILE
    try:
        license_ = ModelCard.load(source).data.license
    except Exception:  # noqa: BLE001 - offline, missing, gated or malformed card: fall back to the table
        license_ = None
    return license_ if isinstance(license_, str) and license_ else _LICENSES.get(base, "other")


def _is_tiny(base: str) -> bool:
    return base.startswith(TINY_PREFIX) and not Path(base).exists()


def _family_of_run(base: str, run_dir: Path, controlnet: bool) -> str:
    """The run's model family, to name the right pipeline class: the base's own model_index.json (tiny, local, or a
    Hub base in the HF cache), else the ControlNet's config (SDXL's text_time conditioning), else the LoRA's keys
    (SD 3.5's transformer; SDXL's text_encoder_2 / add_embedding) or an "xl" in the name."""
    from safetensors import safe_open

    from archdiff.model.base import read_json, resolve_base
    from archdiff.model.controlnet import family_of

    try:
        return resolve_base(base).family
    except UserError:
        pass
    if controlnet:
        config = run_dir / CONTROLNET_DIR / CONTROLNET_FILES[0]
        return family_of(read_json(config, str(config)))
    with safe_open(str(run_dir / LORA_WEIGHTS), framework="np") as weights:
        keys = list(weights.keys())
    if any(key.startswith("transformer.") for key in keys):
        return "sd3"
    sdxl = any(key.startswith(("text_encoder_2.", "unet.add_embedding.")) for key in keys) or "xl" in base.lower()
    return "sdxl" if sdxl else "sd15"


def _png_prompt(path: Path) -> str | None:
    """The prompt `archdiff` stored in the image's PNG text chunks."""
    from PIL import Image

    with Image.open(path) as image:
        return getattr(image, "text", {}).get("prompt")


def trigger_words(recipe: dict[str, Any]) -> list[str]:
    data = recipe.get("data") or {}
    captions = [data.get("caption") or {}, *((source.get("caption") or {}) for source in data.get("sources") or [])]
    return list(dict.fromkeys(caption["trigger"] for caption in captions if caption.get("trigger")))


def public_name(name: str) -> str:
    """A base or data source as the card and the uploaded recipe name it: a Hub id in full, anything else by its
    last part only, so no home or client-project paths go public (a tiny base or a bundled set is its own last part)."""
    return name if is_hub_id(name) else Path(name).name


def _base_label(base: str) -> str:
    if is_hub_id(base):
        return f"[{base}](https://huggingface.co/{base})"
    if _is_tiny(base):
        return f"`{base}` (archdiff's tiny random test model: the adapter shows the pipeline works, not a style)"
    return f"a local base model (`{public_name(base)}`)"


def _what_it_is(recipe: dict[str, Any], base: str, model_family, lora: bool) -> str:
    family = model_family.title
    what = f"A LoRA adapter for {family}, on {_base_label(base)}, trained with archdiff on architecture imagery."
    if net := recipe.get("controlnet"):
        what = f"A ControlNet for {family}, on {_base_label(base)}, trained with archdiff on paired architecture images."
        if lora:
            what += f" A style LoRA for the UNet, trained with it, comes along (`{LORA_WEIGHTS}`): the samples used both."
        if style := net.get("style_lora"):
            what += f" It was trained over the style LoRA `{public_name(str(style))}`, merged into the UNet: load it too."
    description = recipe.get("description")
    return f"{description}\n\n{what}" if description else what


def _trigger_section(triggers: list[str], dreambooth: dict[str, Any]) -> str:
    if dreambooth:
        words = f"Prompt with the instance prompt `{dreambooth['instance_prompt']}` (DreamBooth)"
        if dreambooth.get("class_prompt"):
            words += f"; the class, `{dreambooth['class_prompt']}`, was kept as the base drew it"
        return f"## Trigger words\n\n{words}."
    if triggers:
        return "## Trigger words\n\nStart the prompt with " + ", ".join(f"`{t}`" for t in triggers) + "."
    return "## Trigger words\n\nNone: every training caption was used as it was, so the adapter applies to any prompt."


def _samples_section(recipe: dict[str, Any], grid: str) -> str:
    validation = recipe.get("validation") or {}
    prompts = "; ".join(f"*{p}*" for p in validation.get("prompts") or [])
    seeds = ", ".join(str(s) for s in validation.get("seeds") or [])
    step = int(grid.rsplit("-", 1)[1].removesuffix(".png"))
    title, layout = "Samples", f"prompts top to bottom ({prompts}), seeds {seeds} left to right"
    if recipe.get("controlnet"):  # the grid's first column is the control each row was drawn from
        title, layout = (
            "Control and results",
            f"each row a held-out control (first column) and its prompt, top to bottom ({prompts}); seeds {seeds} left to right",
        )
    return (
        f"## {title}\n\n![{title} after {step} steps]({grid})\n\n"
        f"After {step} steps, {validation.get('steps')} sampling steps at guidance {validation.get('guidance')}: {layout}."
    )


def _recipe_section(recipe: dict[str, Any], base: str, family) -> str:
    lora = recipe.get("lora") or {}
    rows = [
        ("Base", f"`{public_name(base)}`"),
        ("LoRA", f"rank {lora.get('rank')}, alpha {lora.get('alpha')}"),
        (f"{family.denoiser_title} targets", ", ".join(f"`{m}`" for m in lora.get("target_modules") or [])),
    ]
    if text_encoder := lora.get("text_encoder"):
        rows.append(("Text encoder LoRA", f"rank {text_encoder.get('rank')}, alpha {text_encoder.get('alpha')}"))
    rows += training_rows(recipe)
    if dreambooth := recipe.get("dreambooth"):
        rows.append(("DreamBooth", f"`{dreambooth.get('instance_prompt')}`, class `{dreambooth.get('class_prompt')}`"))
    return recipe_table(rows)


def training_rows(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    train, data = recipe.get("train") or {}, recipe.get("data") or {}
    batch = f"{train.get('batch_size')} x {train.get('gradient_accumulation')} accumulated"
    buckets = (data.get("buckets") or {}).get("enabled", True)
    return [
        ("Steps", f"{train.get('max_steps')} (batch {batch})"),
        ("Learning rate", f"{train.get('learning_rate')} ({train.get('lr_scheduler')}, {train.get('warmup_steps')} warm-up)"),
        ("Resolution", f"{data.get('resolution')} px" + (", aspect-ratio buckets" if buckets else " squares")),
        ("Data", ", ".join(_source_label(source) for source in data.get("sources") or [])),
    ]


def recipe_table(rows: list[tuple[str, str]]) -> str:
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return f"## Training recipe\n\n| | |\n|---|---|\n{table}\n\nThe full resolved recipe is in [`{RECIPE_FILE}`]({RECIPE_FILE})."


def _source_label(source: dict[str, Any]) -> str:
    """A Hub dataset, bundled set or manifest by its name; a local folder by its last part only."""
    path = str(source.get("path", "?"))
    name = f"`{path}`" if is_hub_id(path) or "/" not in path else f"local folder `{public_name(path)}`"
    return f"{name} x{source.get('repeats', 1)}" if source.get("repeats", 1) != 1 else name


def example_prompt(recipe: dict[str, Any], triggers: list[str]) -> str:
    validation, dreambooth = recipe.get("validation") or {}, recipe.get("dreambooth") or {}
    prompt = next(iter(validation.get("prompts") or []), None) or dreambooth.get("instance_prompt") or "a brick facade"
    return f"{triggers[0]}, {prompt}" if triggers and not prompt.startswith(triggers[0]) else prompt


def base_source(base: str) -> tuple[str, str]:
    """The base as the usage code loads it, and a comment line to go before it."""
    if is_hub_id(base):
        return base, ""
    if _is_tiny(base):
        family = base.removeprefix(TINY_PREFIX)
        return base, f"# the tiny base is built locally: archdiff tiny-model {base} --family {family}\n"
    return f"path/to/{public_name(base)}", "# the local base this adapter was trained on\n"


def _usage_section(recipe: dict[str, Any], base: str, repo: str, family, triggers: list[str]) -> str:
    pipeline = family.pipeline
    validation = recipe.get("validation") or {}
    prompt = example_prompt(recipe, triggers)
    source, note = base_source(base)
    code = (
        "import torch\n"
        f"from diffusers import {pipeline}\n\n"
        f"{note}"
        f'pipe = {pipeline}.from_pretrained({json.dumps(source)}, dtype=torch.float16).to("cuda")\n'
        f"pipe.load_lora_weights({json.dumps(repo)}, weight_name={json.dumps(LORA_WEIGHTS)})\n"
        f"image = pipe({json.dumps(prompt)}, num_inference_steps={validation.get('steps', 25)}, "
        f"guidance_scale={validation.get('guidance', 7.5)}).images[0]\n"
        'image.save("sample.png")'
    )
    return f"## Use it with diffusers\n\n```python\n{code}\n```"


def _license_section(base: str, license_: str) -> str:
    name = public_name(base)
    if license_ == "other":
        return (
            f"## Licence\n\nThe licence of the base model `{name}` could not be read here. "
            "An adapter is bound by its base's licence: check it before you use or share this one."
        )
    return f"## Licence\n\n`{license_}`, inherited from the base model `{name}`: its terms and use restrictions apply here too."
