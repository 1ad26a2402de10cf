"""LoRA on the UNet through peft, saved in diffusers' format (what diffusers, and later our kohya
exporter, load). The adapter metadata travels with the weights so alpha != rank reloads at the
right scale."""

from __future__ import annotations

from pathlib import Path

from archdiff.config.schema import LoraConfig, TextEncoderLoraConfig
from archdiff.errors import UserError, first_line
from archdiff.run_files import LORA_WEIGHTS, move_into_place, staging_dir


def peft_config(cfg: LoraConfig | TextEncoderLoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=getattr(cfg, "dropout", 0.0),
        init_lora_weights="gaussian",
        target_modules=list(cfg.target_modules),
    )


def attach_lora(unet, cfg: LoraConfig) -> None:
    """Freeze the UNet and add a trainable adapter; fail clearly if no module matches."""
    unet.requires_grad_(False)
    try:
        unet.add_adapter(peft_config(cfg))
    except ValueError as exc:
        names = ", ".join(cfg.target_modules)
        raise UserError(f"lora.target_modules [{names}] matched nothing in the UNet ({first_line(exc)})") from None


def attach_text_encoder_lora(text_encoder, cfg: TextEncoderLoraConfig) -> None:
    """peft's injection directly: transformers' own `add_adapter` wants a newer peft than this stack has."""
    from peft import inject_adapter_in_model

    text_encoder.requires_grad_(False)
    try:
        inject_adapter_in_model(peft_config(cfg), text_encoder)
    except ValueError as exc:
        names = ", ".join(cfg.target_modules)
        raise UserError(
            f"lora.text_encoder.target_modules [{names}] matched nothing in the text encoder ({first_line(exc)})"
        ) from None


def lora_state_dict(model) -> dict:
    """peft-named keys (`lora_A`/`lora_B`): diffusers loads them for every module type.

    (diffusers' `convert_state_dict_to_diffusers` renames only attention keys to the old
    `lora.down` style; a LoRA that also covers conv/ff layers then reloads without its attention part.)
    Contiguous, because safetensors refuses channels_last conv weights (memory.channels_last).
    """
    from peft.utils import get_peft_model_state_dict

    return {key: value.contiguous() for key, value in get_peft_model_state_dict(model).items()}


def save_lora(unet, cfg: LoraConfig, folder: Path, text_encoders=(), family=None) -> Path:
    """Write `pytorch_lora_weights.safetensors` atomically into `folder` (temp file, then rename).

    With a text-encoder LoRA, every adapter goes into the one file (SDXL and SD 3.5: both CLIP encoders'), so
    `load_lora_weights` restores them all. It is written by the family's own pipeline class, which reads it back;
    `unet` is the family's denoiser (SD 3.5: the transformer, whose keys start with `transformer.`).
    """
    from archdiff.model.families import Family
    from archdiff.run_files import save_error_reason, save_errors

    family = family or Family()

    text_encoder_parts = {}
    if cfg.text_encoder is not None:
        metadata = peft_config(cfg.text_encoder).to_dict()
        for prefix, encoder in zip(("text_encoder", "text_encoder_2")[: family.trainable_text], text_encoders, strict=False):
            text_encoder_parts[f"{prefix}_lora_layers"] = lora_state_dict(encoder)
            text_encoder_parts[f"{prefix}_lora_adapter_metadata"] = metadata
    try:
        with staging_dir(folder) as staging:  # removed whatever happens: a failed save leaves no half file behind
            family.pipeline_class().save_lora_weights(
                staging,
                **{f"{family.denoiser}_lora_layers": lora_state_dict(unet)},
                **{f"{family.denoiser}_lora_adapter_metadata": peft_config(cfg).to_dict()},
                **text_encoder_parts,
            )
            move_into_place(staging / LORA_WEIGHTS, folder / LORA_WEIGHTS)
    except save_errors() as error:  # a full disk reaches us as OSError, torch's RuntimeError or SafetensorError
        raise UserError(f"could not save the LoRA to {folder / LORA_WEIGHTS}: {save_error_reason(error)}") from None
    return folder / LORA_WEIGHTS


def merge_frozen_lora(unet, spec: str, base) -> None:
    """A finished LoRA (run folder, .safetensors in diffusers or kohya keys, Hub id) merged into the UNet's weights:
    the style a ControlNet then trains under, at no cost per step. Its format is read by diffusers' own loader."""
    from archdiff.lora_specs import LoraSpec
    from archdiff.model.families import FAMILIES

    lora = LoraSpec.parse(spec)
    folder, weight_name = lora.location()
    pipeline_class = FAMILIES[base.family].pipeline_class()
    try:
        state_dict, alphas = pipeline_class.lora_state_dict(folder, weight_name=weight_name)
        unet.load_lora_adapter(state_dict, network_alphas=alphas, prefix="unet", adapter_name="style")
    except Exception as error:  # noqa: BLE001 - a LoRA for another base, a damaged file: one line naming it
        raise UserError(f"controlnet.style_lora '{spec}' could not be loaded onto this base: {first_line(error)}") from None
    unet.fuse_lora(lora_scale=lora.scale, adapter_names=["style"])
    unet.unload_lora()
