"""LoRA (and DoRA, LoKr, LoHa) on the UNet through peft, saved in diffusers' format (what diffusers, and our kohya
exporter, load). The adapter metadata travels with the weights so alpha != rank reloads at the right scale; a
LoKr/LoHa run also gets a plain peft folder, since diffusers' loader reads neither (load_adapter reads both)."""

from __future__ import annotations

import shutil
from pathlib import Path

from archdiff.config.schema import LoraConfig, TextEncoderLoraConfig, conv_targets
from archdiff.errors import UserError, first_line
from archdiff.run_files import LORA_WEIGHTS, move_into_place, staging_dir

PEFT_DIR = "peft"  # RUN/peft/unet/: a LoKr/LoHa adapter as peft saves it
PEFT_TYPES = {"lokr": "LOKR", "loha": "LOHA"}  # the adapter types diffusers' LoRA loader cannot read: peft loads them
ADAPTER_MARKERS = ("lora_", "lokr_", "hada_")  # what peft's LoRA/DoRA, LoKr and LoHa name their tensors


def is_adapter_key(key: str) -> bool:
    """A tensor of the peft adapter (any type), not a weight that trains beside it."""
    return any(marker in key for marker in ADAPTER_MARKERS)


def peft_config(cfg: LoraConfig | TextEncoderLoraConfig):
    """peft's config for `lora.type`: LoraConfig (use_dora for dora) or LoKrConfig/LoHaConfig, with `lora.conv` as
    rank/alpha patterns for the conv* targets (kohya's conv_dim)."""
    from peft import LoHaConfig, LoKrConfig
    from peft import LoraConfig as PeftLoraConfig

    kind = getattr(cfg, "type", "lora")
    conv = getattr(cfg, "conv", None)
    convs = conv_targets(cfg.target_modules) if conv is not None else []
    common = {
        "r": cfg.rank,
        "target_modules": list(cfg.target_modules),
        "rank_pattern": {name: conv.rank for name in convs},
        "alpha_pattern": {name: conv.alpha for name in convs},
    }
    if kind in PEFT_TYPES:
        return (LoKrConfig if kind == "lokr" else LoHaConfig)(alpha=cfg.alpha, **common)
    return PeftLoraConfig(
        lora_alpha=cfg.alpha,
        lora_dropout=getattr(cfg, "dropout", 0.0),
        init_lora_weights="gaussian",
        use_dora=kind == "dora",
        **common,
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
            if cfg.type in PEFT_TYPES:  # plain peft loads this folder; diffusers cannot load the file above
                save_peft_adapter(peft_config(cfg).to_dict(), lora_state_dict(unet), staging / PEFT_DIR / family.denoiser)
                shutil.rmtree(folder / PEFT_DIR, ignore_errors=True)
                move_into_place(staging / PEFT_DIR, folder / PEFT_DIR)
            move_into_place(staging / LORA_WEIGHTS, folder / LORA_WEIGHTS)
    except save_errors() as error:  # a full disk reaches us as OSError, torch's RuntimeError or SafetensorError
        raise UserError(f"could not save the LoRA to {folder / LORA_WEIGHTS}: {save_error_reason(error)}") from None
    return folder / LORA_WEIGHTS


def stored_peft_config(fields: dict, base_name: str | None = None):
    """The peft config (LoRA, DoRA, LoKr, LoHa) from the dict stored with the weights, for inference."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[fields.get("peft_type") or "LORA"]
    known = set(config_class.__dataclass_fields__)
    kwargs = {key: value for key, value in fields.items() if key in known and key != "peft_type"}
    return config_class(**{**kwargs, "base_model_name_or_path": base_name, "inference_mode": True})


def save_peft_adapter(fields: dict, tensors: dict, folder: Path, base_name: str | None = None) -> None:
    """One peft adapter folder (adapter_config.json + adapter_model.safetensors): what `PeftModel.from_pretrained` reads."""
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    stored_peft_config(fields, base_name).save_pretrained(str(folder))
    save_file(
        {f"base_model.model.{key}": value.contiguous() for key, value in tensors.items()}, str(folder / SAFETENSORS_WEIGHTS_NAME)
    )


def load_adapter(pipe, folder: str, weight_name: str, adapter_name: str) -> None:
    """One LoRA file onto a pipeline as a named adapter: diffusers' loader (LoRA, DoRA, kohya keys), except for a
    LoKr/LoHa file (its stored config says so), which peft injects into the denoiser; set_adapters and fuse_lora
    then treat both alike."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / weight_name
    with safe_open(str(path), "pt") as handle:
        flat = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    prefix = "unet" if hasattr(pipe, "unet") else "transformer"
    fields = {key.partition(".")[2]: value for key, value in flat.items() if key.startswith(f"{prefix}.")}
    if fields.get("peft_type") not in PEFT_TYPES.values():
        pipe.load_lora_weights(folder, weight_name=weight_name, adapter_name=adapter_name)
        return
    from peft.utils import set_peft_model_state_dict

    denoiser = getattr(pipe, prefix)
    tensors = {key.removeprefix(f"{prefix}."): value for key, value in load_file(str(path)).items()}
    denoiser.add_adapter(stored_peft_config(fields), adapter_name=adapter_name)
    result = set_peft_model_state_dict(denoiser, tensors, adapter_name=adapter_name)
    if result.unexpected_keys:
        raise ValueError(f"{len(result.unexpected_keys)} tensors match no module, e.g. {result.unexpected_keys[0]}")


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
