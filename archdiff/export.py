"""Export a run's LoRA for other tools: kohya (A1111 / ComfyUI), diffusers, peft, or a fused pipeline.

Every format starts from the run's diffusers file (`pytorch_lora_weights.safetensors`) and the
adapter configs diffusers stores in its header, so alpha travels with the weights: kohya files carry
`lora_alpha` per module (not the rank, which is what diffusers' converter writes). A training checkpoint's LoRA
(`--checkpoint`) is first written as a run-like folder (archdiff.checkpoint_loras), then exported the same way.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from archdiff.checkpoint_loras import checkpoint_lora
from archdiff.errors import UserError, first_line
from archdiff.export_checkpoint import pick_checkpoint
from archdiff.export_lycoris import PEFT_KEYS, lycoris_unet_state_dict
from archdiff.run_files import (
    CHECKPOINT_STATE,
    CONTROLNET_DIR,
    LORA_WEIGHTS,
    RECIPE_FILE,
    checkpoint_step,
    kohya_run_file,
    move_into_place,
    staging_dir,
)

FORMATS = ("kohya", "diffusers", "peft", "fused")
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")


@dataclass
class RunLora:
    """A run's LoRA as stored: tensors by diffusers key (`unet.…lora_A.weight`) and each component's peft config."""

    run_dir: Path
    tensors: dict
    configs: dict[str, dict]  # component -> LoraConfig dict (lora_alpha, r, target_modules, ...)
    recipe: dict
    checkpoint: Path | None = None  # the training checkpoint it was taken from; None for the run's final LoRA

    def component(self, name: str) -> dict:
        """One component's tensors with the component prefix removed."""
        prefix = f"{name}."
        return {key.removeprefix(prefix): value for key, value in self.tensors.items() if key.startswith(prefix)}


def run_recipe(run_dir: Path) -> dict:
    """The run's recipe.yaml, checked (one line naming the file when it is broken), with the base it names."""
    from archdiff.runs import read_recipe

    path = run_dir / RECIPE_FILE
    if not path.is_file():
        raise UserError(f"'{run_dir}' has no {RECIPE_FILE}, so its base model is unknown; pass a finished run folder")
    recipe = read_recipe(path)
    if not recipe.get("base") or not isinstance(recipe["base"], str):
        raise UserError(f"{path} names no base model")
    return recipe


def read_run_lora(run_dir: Path) -> RunLora:
    from safetensors import SafetensorError, safe_open

    from archdiff.model.base import safetensors_header

    weights = run_dir / LORA_WEIGHTS
    if not weights.is_file():
        raise UserError(f"'{run_dir}' holds no LoRA ({LORA_WEIGHTS} is missing): pass a finished run folder")
    safetensors_header(weights, str(weights))
    try:
        with safe_open(str(weights), "pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            flat = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{weights} is not a readable safetensors file ({first_line(error)})") from None
    configs: dict[str, dict] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    missing = sorted({key.split(".")[0] for key in tensors} - set(configs))
    if missing:
        raise UserError(
            f"{weights} has no adapter config for {', '.join(missing)}; its alpha is unknown, so it cannot be exported"
        )
    return RunLora(run_dir, tensors, configs, run_recipe(run_dir))


def kohya_refusal(configs: dict[str, dict]) -> str | None:
    """Why a LoRA has no kohya file (DoRA and rsLoRA: kohya's loaders have no such scaling), or None."""
    for config in configs.values():
        if config.get("use_rslora") or config.get("use_dora"):
            return "rsLoRA and DoRA adapters have no kohya equivalent; export them as diffusers or peft"
    return None


def kohya_alpha(config: dict, module: str) -> float:
    """The alpha kohya's loaders expect: scale = alpha / rank, as peft's lora_alpha / r."""
    refusal = kohya_refusal({"": config})
    if refusal:
        raise UserError(refusal)
    pattern = config.get("alpha_pattern") or {}
    matches = [alpha for key, alpha in pattern.items() if module.endswith(key)]
    return float(matches[0] if matches else config.get("lora_alpha", config.get("alpha")))  # LoKr/LoHa: `alpha`


def lycoris_kind(lora: RunLora) -> str | None:
    """LOKR or LOHA when the UNet's adapter is one (written in LyCORIS's layout), else None."""
    kind = str(lora.configs.get("unet", {}).get("peft_type") or "LORA")
    return kind if kind in PEFT_KEYS else None


def kohya_state_dict(lora: RunLora, family: str) -> dict:
    """`lora_unet_<module>` / `lora_te*_<module>` with `.lora_down`, `.lora_up` and `.alpha` per module.

    Text-encoder modules get their `text_model.` root back: kohya names modules from the
    CLIPTextModel itself (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`).
    """
    import torch

    from archdiff.model.families import FAMILIES

    algo = lycoris_kind(lora)
    if algo:  # LoKr / LoHa (UNet only): LyCORIS's layout
        unet = lora.configs["unet"]
        return lycoris_unet_state_dict(lora.component("unet"), unet, algo, lambda module: kohya_alpha(unet, module))
    result = {}
    for component, prefix in FAMILIES[family].kohya:  # SD 1.x/2.x's text encoder is `lora_te_`, SDXL's `lora_te1_/2_`
        config = lora.configs.get(component)
        for key, tensor in lora.component(component).items():
            module, _, kind = key.rpartition(".lora_")
            if component != "unet" and not module.startswith("text_model."):
                module = f"text_model.{module}"
            name = f"{prefix}_{module.replace('.', '_')}"
            result[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = tensor
            result[f"{name}.alpha"] = torch.tensor(kohya_alpha(config, module), dtype=torch.float32)
    if not result:
        raise UserError(f"{lora.run_dir / LORA_WEIGHTS} holds no UNet or text-encoder LoRA tensors to export")
    return result


# base version -> (kohya's ss_base_model_version, SAI modelspec architecture)
BASE_VERSIONS = {
    "v1": ("sd_v1", "stable-diffusion-v1/lora"),
    "v2": ("sd_v2", "stable-diffusion-v2-512/lora"),
    "v2-v": ("sd_v2", "stable-diffusion-v2-768-v/lora"),
    "xl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
}


def kohya_metadata(lora: RunLora, version: str) -> dict[str, str]:
    """The `ss_*` training header kohya's scripts write (A1111 and ComfyUI show it), plus SAI's modelspec."""
    recipe, unet = lora.recipe, lora.configs["unet"]
    resolution = recipe.get("data", {}).get("resolution", 512)
    train = recipe.get("train", {})
    text_encoder = recipe.get("lora", {}).get("text_encoder") or {}
    name = str(recipe.get("name", lora.run_dir.name))
    if lora.checkpoint is not None:  # named apart from the final LoRA wherever a tool lists it
        name = f"{name}-{lora.checkpoint.name}"
    kind, conv = lycoris_kind(lora), recipe.get("lora", {}).get("conv") or {}
    network_args = {"algo": kind.lower()} if kind else {}
    if conv:
        network_args.update(conv_dim=str(conv.get("rank")), conv_alpha=f"{conv.get('alpha'):g}")
    metadata = {
        "ss_network_module": "lycoris.kohya" if kind else "networks.lora",
        "ss_network_dim": str(unet["r"]),
        "ss_network_alpha": f"{kohya_alpha(unet, ''):g}",
        "ss_network_args": json.dumps(network_args) if network_args else "",
        "archdiff_target_modules": json.dumps(unet["target_modules"]),
        "ss_base_model_version": BASE_VERSIONS[version][0],
        "ss_v2": str(version.startswith("v2")),
        "ss_v_parameterization": str(version == "v2-v"),
        "ss_sd_model_name": str(recipe.get("base", "")),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_max_train_steps": str(train.get("max_steps", "")),
        "ss_steps": str(checkpoint_step(lora.checkpoint)) if lora.checkpoint is not None else "",
        "ss_learning_rate": str(train.get("learning_rate", "")),
        "ss_unet_lr": str(train.get("learning_rate", "")),
        "ss_text_encoder_lr": str(text_encoder.get("learning_rate") or train.get("learning_rate", "")) if text_encoder else "",
        "ss_seed": str(train.get("seed", "")),
        "ss_output_name": name,
        "ss_training_comment": f"trained with archdiff; {recipe.get('description', '')}".rstrip("; "),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": BASE_VERSIONS[version][1],
        "modelspec.implementation": "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": _trained_at(lora),
    }
    return {key: value for key, value in metadata.items() if value != ""}


def _trained_at(lora: RunLora) -> str:
    """When the LoRA was trained (not when it is exported), so every export of a run or checkpoint has the same bytes."""
    trained = lora.checkpoint / CHECKPOINT_STATE if lora.checkpoint is not None else lora.run_dir / LORA_WEIGHTS
    written = trained.stat().st_mtime
    return datetime.fromtimestamp(written, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def base_version(source: str, family: str) -> str:
    """A key of BASE_VERSIONS, from the base's configs: SD 2.x has linear transformer projections, 768-v predicts v."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    if family == "sdxl":
        return "xl"
    if not UNet2DConditionModel.load_config(source, subfolder="unet").get("use_linear_projection"):
        return "v1"
    v_prediction = DDPMScheduler.load_config(source, subfolder="scheduler").get("prediction_type") == "v_prediction"
    return "v2-v" if v_prediction else "v2"


def default_output(run_dir: Path, fmt: str, name: str, tag: str = "") -> Path:
    """RUN/export/NAME-kohya.safetensors or RUN/export/FORMAT; a checkpoint's `tag` (-step-000200) keeps them apart."""
    return run_dir / "export" / (f"{name}{tag}-kohya.safetensors" if fmt == "kohya" else f"{fmt}{tag}")


def write_run_kohya(run_dir: Path, base) -> Path | None:
    """The run folder's own kohya file, written with the diffusers one: what users copy into ComfyUI or A1111 (None for an
    adapter type kohya's layout cannot hold)."""
    lora = read_run_lora(run_dir)
    if kohya_refusal(lora.configs):  # DoRA, LoKr, LoHa: the run keeps its diffusers (and peft) files only
        return None
    output = kohya_run_file(run_dir, str(lora.recipe.get("name", run_dir.name)))
    _write_kohya(lora, base.family, base_version(base.source, base.family), output)
    return output


def export_run(
    run_dir: Path,
    fmt: str,
    output: Path | None = None,
    scale: float = 1.0,
    overwrite: bool = False,
    checkpoint: str | None = None,
) -> Path:
    """What `archdiff export` does; every output is written beside its destination and renamed into place.

    `checkpoint` (best, or a step) exports that training checkpoint's LoRA instead of the final one.
    """
    from archdiff.model.base import resolve_base, safetensors_header
    from archdiff.model.lora_fit import check_lora_fits

    _check_request(fmt, output, scale)
    if checkpoint is not None:
        return _export_checkpoint(run_dir, fmt, output, scale, overwrite, checkpoint)
    weights = run_dir / LORA_WEIGHTS
    if not weights.is_file() and (run_dir / CONTROLNET_DIR / "config.json").is_file():
        raise UserError(
            f"'{run_dir}' is a ControlNet run without a LoRA: {run_dir / CONTROLNET_DIR} is already a diffusers ControlNet, "
            "which diffusers, ComfyUI and A1111 load as it is (nothing to export)"
        )
    if not weights.is_file():
        raise UserError(f"'{run_dir}' holds no LoRA ({LORA_WEIGHTS} is missing): pass a finished run folder")
    header = safetensors_header(weights, str(weights))  # whole files, a sound recipe, a writable output and a LoRA
    recipe = run_recipe(run_dir)  # that fits its base: all checked before a tensor is read
    output = _claim_output(output or default_output(run_dir, fmt, str(recipe.get("name", run_dir.name))), fmt, overwrite)
    base = resolve_base(recipe["base"], recipe.get("vae") if fmt == "fused" else None)  # a fused pipeline keeps `vae:`
    _check_format_fits(fmt, base)
    check_lora_fits(header, str(weights), base)
    _write(read_run_lora(run_dir), fmt, base, output, scale)
    return output


def _check_request(fmt: str, output: Path | None, scale: float) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if not math.isfinite(scale):
        raise UserError(f"--scale must be a finite number (got {scale}); it would write {scale} into every fused weight")
    if scale != 1.0 and fmt != "fused":
        raise UserError(
            "--scale applies only to --format fused (the other formats keep the LoRA separate: scale it when loading)"
        )
    if fmt == "kohya" and output is not None and output.suffix != ".safetensors":
        raise UserError(f"--output for a kohya file must end in .safetensors (got '{output}')")


def _check_format_fits(fmt: str, base) -> None:
    """A kohya file only where the loaders people use read one: SD 3.5's LoRA is loaded as diffusers writes it."""
    from archdiff.model.families import FAMILIES

    family = FAMILIES[base.family]
    if fmt == "kohya" and family.kohya is None:
        raise UserError(
            f"--format kohya: {family.label} has no kohya LoRA layout its loaders read; ComfyUI and diffusers load the run's "
            f"{LORA_WEIGHTS} as it is: use --format diffusers"
        )


def _claim_output(output: Path, fmt: str, overwrite: bool) -> Path:
    """`output`, once it is known to be free (or --overwrite) and writable."""
    from archdiff.outputs import check_output

    if output.exists() and not overwrite:
        raise UserError(f"'{output}' already exists; choose another --output, or pass --overwrite")
    check_output(output, "--output", folder=fmt != "kohya", suffixes=(".safetensors",) if fmt == "kohya" else ())
    return output


def _export_checkpoint(run_dir: Path, fmt: str, output: Path | None, scale: float, overwrite: bool, spec: str) -> Path:
    """A checkpoint's LoRA, written as RUN/eval/loras/step-NNNNNN once the request is known good, then exported."""
    from archdiff.model.base import resolve_base, safetensors_header
    from archdiff.model.lora_fit import check_lora_fits

    recipe = run_recipe(run_dir)
    if recipe.get("controlnet") and not recipe["controlnet"].get("unet_lora"):
        raise UserError(
            f"'{run_dir}' is a ControlNet run without a LoRA: its checkpoints hold a ControlNet, not a LoRA (nothing to export; "
            f"the finished run's {CONTROLNET_DIR}/ is already a diffusers ControlNet, which diffusers, ComfyUI and A1111 load)"
        )
    checkpoint = pick_checkpoint(run_dir, spec)
    name = str(recipe.get("name", run_dir.name))
    output = _claim_output(output or default_output(run_dir, fmt, name, f"-{checkpoint.name}"), fmt, overwrite)
    base = resolve_base(recipe["base"], recipe.get("vae") if fmt == "fused" else None)
    _check_format_fits(fmt, base)
    folder = checkpoint_lora(checkpoint, base.family)
    weights = folder / LORA_WEIGHTS
    check_lora_fits(safetensors_header(weights, str(weights)), str(weights), base)
    lora = read_run_lora(folder)
    lora.checkpoint = checkpoint
    _write(lora, fmt, base, output, scale)
    return output


def _write(lora: RunLora, fmt: str, base, output: Path, scale: float) -> None:
    if fmt == "kohya":
        _write_kohya(lora, base.family, base_version(base.source, base.family), output)
    elif fmt == "diffusers":
        _replace_folder(output, lambda staging: shutil.copy2(lora.run_dir / LORA_WEIGHTS, staging / LORA_WEIGHTS))
    elif fmt == "peft":
        _replace_folder(output, lambda staging: _write_peft(lora, base.name, staging))
    else:
        _replace_folder(output, lambda staging: fuse_into_pipeline(base, lora.run_dir, scale, staging))


def _write_kohya(lora: RunLora, family: str, version: str, output: Path) -> None:
    tensors = {key: value.contiguous() for key, value in kohya_state_dict(lora, family).items()}
    with staging_dir(output.parent) as staging:
        (staging / output.name).write_bytes(reproducible_safetensors(tensors, kohya_metadata(lora, version)))
        move_into_place(staging / output.name, output)


def reproducible_safetensors(tensors: dict, metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the header's keys sorted: the library writes its metadata in hash order, which
    changes from one write to the next, so the same LoRA would get a new file hash (A1111's, the Hub's) each time."""
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    length = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data that follows starts 8-byte aligned, as safetensors pads it
    return len(header).to_bytes(8, "little") + header + raw[8 + length :]


def _write_peft(lora: RunLora, base_name: str, folder: Path) -> None:
    """One peft adapter folder per component (`unet/`, `text_encoder/`...): what `PeftModel.from_pretrained` reads.

    The config is written by peft itself (LoRA, DoRA, LoKr or LoHa), from the adapter config diffusers stored with the weights.
    """
    from archdiff.model.lora import save_peft_adapter

    for component in COMPONENTS:
        tensors = lora.component(component)
        if tensors:
            save_peft_adapter(lora.configs[component], tensors, folder / component, base_name)


def fuse_into_pipeline(base, run_dir: Path, scale: float, folder: Path) -> None:
    """The base pipeline with the LoRA merged into its weights at `scale` (and the run's `vae:` as its vae/): loads
    anywhere, no adapter code needed."""
    from archdiff.model.base import stored_dtype
    from archdiff.model.families import FAMILIES
    from archdiff.sample import LoraSpec, load_pipeline

    lora = [LoraSpec(run_dir, scale)]
    pipe = load_pipeline(base.source, lora, base.family, device="cpu", vae=base.vae)  # fused in fp32, stored as the base is
    pipe.fuse_lora(lora_scale=1.0)  # the adapter weight set above is already `scale`
    pipe.unload_lora_weights()
    pipe.to(dtype=stored_dtype(base.source, FAMILIES[base.family].denoiser))
    pipe.save_pretrained(folder)


def _replace_folder(output: Path, write) -> None:
    """Build the folder under a hidden name beside `output`, then swap it in: never a half-written export."""
    with staging_dir(output.parent) as staging:
        built = staging / output.name
        built.mkdir()
        write(built)
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        move_into_place(built, output)
