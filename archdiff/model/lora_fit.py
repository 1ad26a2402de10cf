"""Does a LoRA fit a base? Told from the LoRA file's header (names, shapes, kohya's header) and the base's UNet
config, before anything loads: a LoRA for another model family is one line, not pages of size mismatches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archdiff.errors import UserError

FAMILY_NAMES = {"sd15": "SD 1.5/2.x", "sdxl": "SDXL", "sd3": "SD 3.5"}
_CONTEXT_FAMILIES = {768: "sd15", 1024: "sd15", 2048: "sdxl"}  # the real bases' text-feature widths
_DOWN = ("lora_A.weight", "lora_down.weight", "lora.down.weight")


def family_of_base_name(name: str) -> str | None:
    """A run recipe's base family, where that needs no network: built bases, local folders, a cached Hub index."""
    from archdiff.model.base import RANDOM_PREFIX, TINY_PREFIX

    for prefix in (TINY_PREFIX, RANDOM_PREFIX):
        if name.startswith(prefix) and name.removeprefix(prefix) in FAMILY_NAMES:
            return name.removeprefix(prefix)
    index = Path(name).expanduser() / "model_index.json"
    try:
        if not index.is_file():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "model_index.json")
            index = Path(cached) if isinstance(cached, str) else None
        if index is None:
            return None
        from archdiff.model.families import FAMILIES

        pipelines = {family.pipeline: name for name, family in FAMILIES.items()}
        return pipelines.get(json.loads(index.read_text()).get("_class_name"))
    except Exception:  # noqa: BLE001 - a name that says nothing leaves the decision to the LoRA's shapes
        return None


def context_width(header: dict[str, Any]) -> int | None:
    """The text-feature width the LoRA's cross-attention key projections take (768 SD 1.x, 1024 SD 2.x, 2048 SDXL)."""
    for key, entry in header.items():
        flat = key.replace("_", ".")
        if "attn2.to.k" in flat and key.endswith(_DOWN) and len(entry.get("shape", [])) >= 2:
            return int(entry["shape"][1])
    return None


def lora_family(header: dict[str, Any], recipe_base: str | None = None) -> str | None:
    if recipe_base and (family := family_of_base_name(recipe_base)):
        return family
    version = (header.get("__metadata__") or {}).get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v"):
        return "sd15"
    if any(key.startswith("transformer.") for key in header):  # SD 3.5's MMDiT (diffusers' own key layout)
        return "sd3"
    if any(key.startswith(("text_encoder_2.", "lora_te2_", "lora_te1_")) for key in header):
        return "sdxl"
    if any(key.startswith("lora_te_") for key in header):
        return "sd15"
    return _CONTEXT_FAMILIES.get(context_width(header) or 0)


def base_context_width(source: str) -> int | None:
    """The base UNet's cross_attention_dim, from its config file alone (a local folder or the HF cache)."""
    config = Path(source) / "unet" / "config.json"
    try:
        if not config.is_file():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "unet/config.json")
            if not isinstance(cached, str):
                return None
            config = Path(cached)
        width = json.loads(config.read_text()).get("cross_attention_dim")
    except Exception:  # noqa: BLE001 - no config to compare with: the load itself will say what is wrong
        return None
    width = width[0] if isinstance(width, list) and width else width
    return width if isinstance(width, int) else None


def check_lora_fits(header: dict[str, Any], label: str, base, recipe_base: str | None = None) -> None:
    """One line when the LoRA was trained for another family than `base` (a BaseModel), or for another text width."""
    family = lora_family(header, recipe_base)
    if family and family != base.family:
        raise UserError(
            f"{label} is a LoRA for {FAMILY_NAMES[family]}, but the base '{base.name}' is {FAMILY_NAMES[base.family]}; "
            f"pass a {FAMILY_NAMES[family]} base with --base"
        )
    width, base_width = context_width(header), base_context_width(base.source)
    if width and base_width and width != base_width:
        raise UserError(
            f"{label} does not fit the base '{base.name}': its cross-attention takes {width}-wide text features, "
            f"the base's {base_width} (a LoRA trained on another model)"
        )
