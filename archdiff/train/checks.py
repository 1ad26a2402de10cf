"""Checks of a recipe against the machine and the base, run before anything is loaded or written."""

from __future__ import annotations

from archdiff.config import Recipe
from archdiff.errors import UserError


def check_trackers(recipe: Recipe) -> None:
    import importlib.util

    if "wandb" in recipe.train.trackers and importlib.util.find_spec("wandb") is None:
        raise UserError("train.trackers lists wandb, which is not installed: pip install wandb (or drop it from the list)")


def check_cache_options(recipe: Recipe) -> None:
    """A cache holds one crop per image and one embedding per caption: refuse settings that need more."""
    from archdiff.data.captions import varies_per_step

    data = recipe.data
    if data.cache.latents and not data.center_crop:
        raise UserError("data.cache.latents needs data.center_crop: true (a cached latent holds one crop of each image)")
    captions = [data.caption, *(source.caption for source in data.sources if source.caption)]
    if data.cache.text and recipe.lora.text_encoder:
        raise UserError("data.cache.text cannot hold embeddings of a text encoder that trains (lora.text_encoder)")
    if data.cache.text and any(varies_per_step(caption) for caption in captions):
        raise UserError(
            "data.cache.text needs fixed captions: turn off caption.shuffle_tags and caption.field_dropout, or the text cache"
        )


def check_family_options(recipe: Recipe, family: str) -> None:
    """Options a base family cannot do are refused by name, not half-applied."""
    from archdiff.model.families import FAMILIES

    label = FAMILIES[family].label
    if family != "sd3" and recipe.memory.t5 == "drop":
        raise UserError(f"memory.t5: drop leaves out SD 3.5's T5 encoder; a {label} base has none (remove it)")
    if family == "sd3":
        refused = {
            "controlnet": recipe.controlnet is not None,
            "dreambooth": recipe.dreambooth is not None,
            "train.snr_gamma (Min-SNR weighs DDPM timesteps; SD 3.5 trains on rectified flow)": recipe.train.snr_gamma,
            "train.prediction_type (SD 3.5 predicts the flow's velocity)": recipe.train.prediction_type,
        }
        for option, asked in refused.items():
            if asked:
                raise UserError(f"{option} is not supported on {label} bases; remove it from the recipe")
    if family == "sdxl" and recipe.memory.mixed_precision == "fp16" and not recipe.vae:
        raise UserError(
            "memory.mixed_precision=fp16 on SDXL: its own VAE overflows to NaN in fp16; set vae: to an fp16-fixed VAE "
            "(madebyollin/sdxl-vae-fp16-fix), or use bf16 (or no)"
        )


def check_controlnet_options(recipe: Recipe, base):
    """A ControlNet to start from must exist and fit the base (checked from its config, before anything loads);
    returns it, None for a ControlNet made from the base's UNet."""
    from archdiff.model.controlnet import check_controlnet_fits, find_controlnet

    cfg = recipe.controlnet
    if cfg is None:
        return None
    if recipe.data.tile_drawings:
        raise UserError(
            "data.tile_drawings cuts drawings into tiles their controls do not have: set it to null in a controlnet run"
        )
    if cfg.style_lora:
        _check_style_lora(cfg.style_lora, base)
    if cfg.init is None:
        return None
    init = find_controlnet(cfg.init, "controlnet.init")
    check_controlnet_fits(init, base)
    return init


def _check_style_lora(spec: str, base) -> None:
    """The style LoRA exists, is whole and was trained for this base's family: checked from its header and run folder."""
    from archdiff.lora_specs import LoraSpec, lora_recipe
    from archdiff.model.base import safetensors_header
    from archdiff.model.lora_fit import check_lora_fits

    lora, label = LoraSpec.parse(spec), f"controlnet.style_lora '{spec}'"
    header = safetensors_header(lora.local().path, label)  # a missing file or an unknown Hub LoRA: one line
    recipe_base = lora_recipe(lora.path).get("base") if lora.path.is_dir() else None
    check_lora_fits(header, label, base, str(recipe_base) if recipe_base else None)
