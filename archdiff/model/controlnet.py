"""The ControlNet a run trains: a copy of the base UNet's encoder, or a published ControlNet, fully or through a LoRA.

What the run saves is always a plain diffusers ControlNet (`ControlNetModel.from_pretrained(RUN/controlnet)`),
a LoRA merged into it first, in the dtype the base is published in, so ComfyUI, A1111 and diffusers load it as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from archdiff.config.schema import ControlNetConfig
from archdiff.errors import UserError, first_line
from archdiff.hub_ids import is_hub_id
from archdiff.run_files import CONTROLNET_DIR, RECIPE_FILE

CONTROLNET_CLASS = "ControlNetModel"
FAMILY_NAMES = {"sd15": "SD 1.5", "sdxl": "SDXL", "sd3": "SD 3.5"}


@dataclass(frozen=True)
class ControlNetSource:
    """One `--controlnet`: what `from_pretrained` loads, its config, and the recipe of the run that trained it."""

    label: str  # as the user wrote it
    source: str  # a local folder or a Hub id
    config: dict
    recipe: dict
    recipe_path: Path | None = None
    option: str = "--controlnet"  # what named it: the sample option, or a recipe's controlnet.init

    @property
    def family(self) -> str:
        return family_of(self.config)

    @property
    def name(self) -> str:
        """How images name it: the run or folder name, or the Hub id (never a home path)."""
        return self.label if is_hub_id(self.label) else Path(self.label).expanduser().resolve().name


def family_of(config) -> str:
    """sdxl for a UNet or ControlNet config with SDXL's added size/text conditioning, else sd15 (SD 1.x/2.x)."""
    return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd15"


def _config(path: Path, label: str, option: str) -> dict:
    from archdiff.model.base import read_json

    config = read_json(path, f"{option} '{label}': {path.name}")
    if not isinstance(config, dict) or config.get("_class_name") != CONTROLNET_CLASS:
        found = config.get("_class_name", "?") if isinstance(config, dict) else "not a JSON object"
        raise UserError(f"{option} '{label}': {path} is not a ControlNet config (_class_name {found}, not {CONTROLNET_CLASS})")
    return config


def _check_weights(folder: Path, label: str, option: str) -> None:
    from archdiff.model.base import safetensors_header

    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not weights:
        raise UserError(f"{option} '{label}': {folder} holds no weights file (an unfinished run or download?)")
    for path in weights:
        if path.suffix == ".safetensors":
            safetensors_header(path, f"{option} '{label}': {path.name}")


def find_controlnet(text: str, option: str = "--controlnet") -> ControlNetSource:
    """A training run folder (controlnet/ + recipe.yaml), a ControlNet folder, or a Hub id; checked from its files."""
    from archdiff.runs import read_recipe

    path = Path(text).expanduser()
    if (path / CONTROLNET_DIR).is_dir():
        folder, recipe_path = path / CONTROLNET_DIR, path / RECIPE_FILE
        recipe = read_recipe(recipe_path) if recipe_path.is_file() else {}
    elif (path / "config.json").is_file():
        folder, recipe, recipe_path = path, {}, None
    elif is_hub_id(text):
        return ControlNetSource(text, text, _hub_config(text, option), {}, option=option)
    else:
        raise UserError(
            f"{option} '{text}' is not a ControlNet run folder (with {CONTROLNET_DIR}/), "
            "a ControlNet folder (with config.json) or a Hub id (user/name)"
        )
    config = _config(folder / "config.json", text, option)
    _check_weights(folder, text, option)
    return ControlNetSource(text, str(folder), config, recipe, recipe_path if recipe else None, option)


def _hub_config(repo_id: str, option: str) -> dict:
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo_id, "config.json"))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: one line each
        raise UserError(
            f"{option} '{repo_id}' is no local path and could not be fetched from the Hub ({first_line(exc)})"
        ) from None
    return _config(path, repo_id, option)


def _base_unet_config(source: str, name: str) -> dict:
    """The base UNet's config.json alone (for a Hub base, not its weights)."""
    from archdiff.model.base import read_json

    local = Path(source) / "unet" / "config.json"
    if local.is_file():
        return read_json(local, f"base '{name}': unet/config.json")
    from huggingface_hub import hf_hub_download

    try:
        return read_json(Path(hf_hub_download(source, "config.json", subfolder="unet")), f"base '{name}': unet/config.json")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline or unknown: one line
        raise UserError(f"base '{name}': its unet/config.json could not be fetched ({first_line(exc)})") from None


def check_controlnet_fits(controlnet: ControlNetSource, base) -> None:
    """The ControlNet was made for this base's family and text-feature width (SD 1.5 vs SDXL vs SD 2.x): its
    residuals go into one UNet layout only."""
    unet = _base_unet_config(base.source, base.name)
    family = family_of(unet)
    what = f"{controlnet.option} '{controlnet.label}'"
    if controlnet.family != family:
        raise UserError(
            f"{what} is an {FAMILY_NAMES[controlnet.family]} ControlNet on an {FAMILY_NAMES[family]} base ('{base.name}'); "
            "use a ControlNet trained for this base, or pass its --base"
        )
    widths = controlnet.config.get("cross_attention_dim"), unet.get("cross_attention_dim")
    blocks = [list(config.get("block_out_channels") or []) for config in (controlnet.config, unet)]
    if widths[0] != widths[1] or blocks[0] != blocks[1]:
        raise UserError(
            f"{what} does not fit the base '{base.name}': text width {widths[0]} vs the base's {widths[1]}, "
            f"blocks {blocks[0]} vs {blocks[1]} (a ControlNet for another model, e.g. SD 2.x vs SD 1.5)"
        )


def load_controlnet(cfg: ControlNetConfig, unet, init: ControlNetSource | None):
    """The ControlNet to train (`init`: the checked controlnet.init), built before the UNet gets any adapter
    (from_unet copies its plain weights)."""
    from diffusers import ControlNetModel

    if init is None:
        controlnet = ControlNetModel.from_unet(unet)
    else:
        try:
            controlnet = ControlNetModel.from_pretrained(init.source)
        except Exception as error:  # noqa: BLE001 - a partial download, an offline Hub id: one line naming it
            raise UserError(f"controlnet.init '{cfg.init}' could not be loaded: {first_line(error)}") from None
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
    if init is None:  # from_unet's output convolutions start at zero, and a LoRA upstream of them gets no gradient
        for part in (controlnet.controlnet_cond_embedding, controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            part.requires_grad_(True)
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
