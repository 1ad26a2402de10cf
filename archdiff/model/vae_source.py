"""A recipe's `vae:` (a fixed or fine-tuned VAE replacing the base's): a local folder or Hub id, checked to be an
AutoencoderKL that fits the base from its config and weights' headers, before anything loads."""

from __future__ import annotations

from pathlib import Path

from archdiff.errors import UserError, first_line
from archdiff.hub_ids import is_hub_id
from archdiff.model.base import BaseModel, hub_reachable, read_json, safetensors_header


def resolve_vae(spec: str, base: BaseModel) -> Path:
    """A `vae:` recipe field (local folder or Hub id) as the local folder of an AutoencoderKL that fits the base,
    checked from its config and weights' headers; a Hub VAE is fetched here (or read from the HF cache)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists() or not is_hub_id(spec):
        found = "is not a folder" if path.exists() else "does not exist"
        raise UserError(f"vae '{spec}' {found} and is no Hub model id (owner/name); pass an AutoencoderKL folder or Hub id")
    else:
        folder = _hub_vae(spec)
    config = read_json(folder / "config.json", f"vae '{spec}': config.json") if (folder / "config.json").is_file() else {}
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderKL":
        found = f"a {config['_class_name']}" if isinstance(config, dict) and "_class_name" in config else "no model config"
        raise UserError(f"vae '{spec}' holds {found}, not an AutoencoderKL (config.json with _class_name AutoencoderKL)")
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not weights:
        raise UserError(f"vae '{spec}' holds no weights file (an incomplete download?)")
    for path in weights:
        if path.suffix == ".safetensors":
            safetensors_header(path, f"vae '{spec}': {path.name}")
    own = Path(base.source) / "vae" / "config.json"
    channels = read_json(own, f"base '{base.name}': vae/config.json").get("latent_channels", 4) if own.is_file() else None
    if channels is not None and config.get("latent_channels", 4) != channels:
        raise UserError(
            f"vae '{spec}' has {config.get('latent_channels', 4)} latent channels, base '{base.name}' {channels}: "
            "pick a VAE made for this base"
        )
    return folder


def _hub_vae(repo_id: str) -> Path:
    """A Hub VAE's diffusers files (config + safetensors weights) from the HF cache, fetched once when the Hub is reachable."""
    from huggingface_hub import constants, snapshot_download

    patterns = ["config.json", "diffusion_pytorch_model.safetensors"]  # not a single-file twin beside it
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (any form of it): fetch it below
        pass
    if constants.HF_HUB_OFFLINE or not hub_reachable():
        raise UserError(f"vae '{repo_id}' is not a local folder and the Hugging Face Hub is not reachable from here")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - any Hub failure means the same thing to the user
        raise UserError(f"vae '{repo_id}' could not be fetched from the Hugging Face Hub ({first_line(exc)})") from None
