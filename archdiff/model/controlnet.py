"""The ControlNet a run trains: a copy of the base UNet's encoder, or a published ControlNet, fully or through a LoRA.

What the run saves is always a plain diffusers ControlNet (`ControlNetModel.from_pretrained(RUN/controlnet)`),
a LoRA merged into it first, in the dtype the base is published in, so ComfyUI, A1111 and diffusers load it as is.
"""

from __future__ import annotations

from pathlib import Path

from archdiff.config.schema import ControlNetConfig
from archdiff.errors import UserError, first_line
from archdiff.hub_ids import is_hub_id

CONTROLNET_DIR = "controlnet"  # in the run folder: config.json + diffusion_pytorch_model.safetensors


def family_of(config) -> str:
    """sdxl for a UNet or ControlNet config with SDXL's added size/text conditioning, else sd15 (SD 1.x/2.x)."""
    return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd15"


def check_fits(controlnet_config, unet_config, what: str) -> None:
    """A ControlNet feeds residuals into one UNet layout: SDXL's into SDXL, SD 1.5's (768-wide text) into SD 1.5."""
    family, base_family = family_of(controlnet_config), family_of(unet_config)
    names = {"sdxl": "SDXL", "sd15": "SD 1.x/2.x"}
    if family != base_family:
        raise UserError(f"{what} is a ControlNet for {names[family]}, but the base is {names[base_family]}")
    widths = controlnet_config.get("cross_attention_dim"), unet_config.get("cross_attention_dim")
    blocks = controlnet_config.get("block_out_channels"), unet_config.get("block_out_channels")
    if widths[0] != widths[1] or list(blocks[0] or []) != list(blocks[1] or []):
        raise UserError(
            f"{what} does not fit this base: text width {widths[0]} vs the base's {widths[1]}, "
            f"blocks {list(blocks[0] or [])} vs {list(blocks[1] or [])} (a ControlNet for another model, e.g. SD 2.x vs SD 1.5)"
        )


def controlnet_source(spec: str, what: str) -> str:
    """A ControlNet folder (diffusers layout) or Hub id, checked before anything loads."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{what} '{spec}' has no config.json: not a diffusers ControlNet folder")
        return str(path)
    if (path / CONTROLNET_DIR).is_dir():
        return str(path / CONTROLNET_DIR)
    if not is_hub_id(spec):
        raise UserError(f"{what} '{spec}' is neither a ControlNet folder nor a Hub id (owner/name)")
    return spec


def load_controlnet(cfg: ControlNetConfig, unet):
    """The ControlNet to train, built before the UNet gets any adapter (from_unet copies its plain weights)."""
    from diffusers import ControlNetModel

    if cfg.init is None:
        controlnet = ControlNetModel.from_unet(unet)
    else:
        source = controlnet_source(cfg.init, "controlnet.init")
        try:
            controlnet = ControlNetModel.from_pretrained(source)
        except Exception as error:  # noqa: BLE001 - a partial download, an offline Hub id: one line naming it
            raise UserError(f"controlnet.init '{cfg.init}' could not be loaded: {first_line(error)}") from None
        check_fits(controlnet.config, unet.config, f"controlnet.init '{cfg.init}'")
    if cfg.lora is None:
        controlnet.requires_grad_(True)
        return controlnet
    from archdiff.model.lora import peft_config

    controlnet.requires_grad_(False)
    try:
        controlnet.add_adapter(peft_config(cfg.lora))
    except ValueError as error:
        names = ", ".join(cfg.lora.target_modules)
        raise UserError(
            f"controlnet.lora.target_modules [{names}] matched nothing in the ControlNet ({first_line(error)})"
        ) from None
    return controlnet


def save_controlnet(controlnet, run_dir: Path, dtype) -> Path:
    """RUN/controlnet in diffusers' format, written beside it and renamed into place; a LoRA is merged first."""
    import copy
    import shutil

    from archdiff.run_files import move_into_place, save_error_reason, save_errors, staging_dir

    final = run_dir / CONTROLNET_DIR
    plain = copy.deepcopy(controlnet)
    if getattr(plain, "peft_config", None):
        plain.fuse_lora()
        plain.unload_lora()
    try:
        with staging_dir(run_dir) as staging:
            plain.to(dtype=dtype).save_pretrained(staging / CONTROLNET_DIR, safe_serialization=True)
            shutil.rmtree(final, ignore_errors=True)
            move_into_place(staging / CONTROLNET_DIR, final)
    except save_errors() as error:
        raise UserError(f"could not save the ControlNet to {final}: {save_error_reason(error)}") from None
    return final
