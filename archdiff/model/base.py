"""Resolve a base model name to something `from_pretrained` loads, and load its components.

One code path for all bases: `tiny-sd15` is built once into the cache and then loaded exactly like a
local folder or a Hub id, so the tiny model tests the same loading code a real run uses.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from archdiff.errors import UserError, first_line
from archdiff.hub_ids import is_hub_id
from archdiff.paths import cache_dir

TINY_PREFIX = "tiny-"
RANDOM_PREFIX = "random-"  # the real models' size with random weights, for measuring speed and memory offline
_BUILT_SIZES = {TINY_PREFIX: "tiny", RANDOM_PREFIX: "full"}
_PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3"}
_RANDOM_NAMES = {"sd35m": "sd3"}  # random-* bases named after the published model whose size they have (SD 3.5 Medium)
_OFFLINE_HINT = "for an offline try, use --base tiny-sd15"


@dataclass(frozen=True)
class BaseModel:
    """A resolved base: `source` is passed to `from_pretrained` (a local folder or a Hub id).

    `family` is "sd15" (one text encoder; SD 2.x too), "sdxl" (two text encoders, size/crop conditioning)
    or "sd3" (SD 3.x: MMDiT transformer, CLIP-L + CLIP-G + T5, flow matching); `vae` is the local folder of a
    recipe's `vae:` that replaces the base's own vae/ (None: the base's).
    """

    name: str
    source: str
    family: str
    vae: str | None = None


def _built_base(name: str, prefix: str) -> BaseModel:
    """tiny-* and random-* bases: built offline once into the cache, then loaded like any local folder."""
    from archdiff.model.tiny import FAMILIES, build_random_pipeline

    size = _BUILT_SIZES[prefix]
    names = {f: f for f in FAMILIES}
    if size == "full":
        names = {**{f: f for f in FAMILIES if f not in _RANDOM_NAMES.values()}, **_RANDOM_NAMES}
    family = names.get(name.removeprefix(prefix))
    if family is None:
        known = ", ".join(prefix + n for n in names)
        raise UserError(f"unknown {prefix.rstrip('-')} base '{name}'; choose one of: {known}")
    folder = cache_dir() / size / family
    if not (folder / "model_index.json").is_file():
        if size == "full":
            print(f"building {name} (the real {family} layout, random weights) into {folder}: several GB, once")
        build_random_pipeline(folder, family, size, overwrite=True)
    return BaseModel(name, str(folder), _family(json.loads((folder / "model_index.json").read_text()), name))


def _family(model_index: Any, name: str) -> str:
    if not isinstance(model_index, dict):
        raise UserError(f"base '{name}': model_index.json does not hold a JSON object; download the base again")
    pipeline_class = model_index.get("_class_name", "?")
    if pipeline_class not in _PIPELINE_FAMILIES:
        known = ", ".join(_PIPELINE_FAMILIES)
        raise UserError(f"base '{name}' is a {pipeline_class}; archdiff trains {known} bases (SD 1.x/2.x, SDXL, SD 3.5)")
    return _PIPELINE_FAMILIES[pipeline_class]


def hub_reachable() -> bool:
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _hub_model_index(repo_id: str) -> dict[str, Any]:
    """Fetch (or read from the local HF cache) a Hub pipeline's model_index.json, failing fast offline."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "model_index.json")
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    if constants.HF_HUB_OFFLINE or not hub_reachable():
        raise UserError(
            f"base '{repo_id}' is not a local folder and the Hugging Face Hub is not reachable from here; {_OFFLINE_HINT}"
        )
    try:
        return json.loads(Path(hf_hub_download(repo_id, "model_index.json")).read_text())
    except Exception as exc:  # noqa: BLE001 - any Hub failure means the same thing to the user
        reason = first_line(exc)
        raise UserError(f"base '{repo_id}' could not be found on the Hugging Face Hub ({reason}); {_OFFLINE_HINT}") from None


def resolve_base(name: str, vae: str | None = None) -> BaseModel:
    """The base, and `vae` (a recipe's `vae:`) checked and resolved to a local folder: both before anything loads."""
    from archdiff.model.vae_source import resolve_vae

    base = _resolve_base(name)
    return replace(base, vae=str(resolve_vae(vae, base))) if vae else base


def _resolve_base(name: str) -> BaseModel:
    for prefix in _BUILT_SIZES:
        if name.startswith(prefix) and not Path(name).exists():
            return _built_base(name, prefix)
    path = Path(name).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise UserError(f"base folder '{name}' is not a diffusers pipeline (no model_index.json); {_OFFLINE_HINT}")
        model_index = read_json(index, f"base '{name}': model_index.json")
        family = _family(model_index, name)
        check_base_files(path, model_index, name)
        return BaseModel(name, str(path), family)
    if not is_hub_id(name):
        found = "is not a folder" if path.exists() else "does not exist"
        raise UserError(f"base '{name}' {found} and is no Hub model id (owner/name); {_OFFLINE_HINT}")
    return BaseModel(name, name, _family(_hub_model_index(name), name))


def read_json(path: Path, what: str) -> Any:
    """A JSON file, or one line naming it: a half-downloaded config is bad input, not a bug."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{what} is not readable JSON ({first_line(error)}); it may be truncated") from None


_UNUSED_PARTS = {"safety_checker", "feature_extractor", "image_encoder"}  # archdiff loads pipelines without them
_WEIGHTED_PARTS = {"unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def safetensors_header(path: Path, what: str) -> dict[str, Any]:
    """A .safetensors file's header (tensor names, dtypes, shapes, `__metadata__`), checked against the file size
    without loading a tensor: a truncated or half-downloaded file is named here, not deep inside a library."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length > min(size - 8, _MAX_HEADER):
                raise ValueError(f"{size} bytes, too short for the header it announces")
            header = json.loads(handle.read(length))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise UserError(f"{what} is not a readable safetensors file ({first_line(error)}); it may be truncated") from None
    if 8 + length + end != size:
        raise UserError(f"{what} is truncated or damaged: {size} bytes, its header describes {8 + length + end}")
    return header


def check_base_files(folder: Path, model_index: dict[str, Any], name: str) -> None:
    """Every part model_index.json lists is there, its JSON files parse and its weights are whole (headers only)."""
    for part, spec in model_index.items():
        if part.startswith("_") or part in _UNUSED_PARTS or not (isinstance(spec, list) and len(spec) == 2 and all(spec)):
            continue
        subfolder = folder / part
        if not subfolder.is_dir():
            raise UserError(f"base '{name}' has no {part}/ folder, which its model_index.json lists; download it again")
        weights = [*subfolder.glob("*.safetensors"), *subfolder.glob("*.bin")]
        if part in _WEIGHTED_PARTS and not weights:
            raise UserError(f"base '{name}': {part}/ holds no weights file (an incomplete download?)")
        for path in sorted(subfolder.iterdir()):
            if path.suffix == ".json":
                read_json(path, f"base '{name}': {part}/{path.name}")
            elif path.suffix == ".safetensors":
                safetensors_header(path, f"base '{name}': {part}/{path.name}")


@dataclass
class Components:
    """The parts of a pipeline that training touches; `family` (model/families.py) says which and how they are used.

    The VAE and the text encoders load on first use: a run whose latents and captions are all
    cached loads none of them for training, only to draw sample images.
    """

    family: Any  # archdiff.model.families.Family
    tokenizer: Any
    unet: Any  # the denoiser: a UNet, or SD 3.x's MMDiT transformer
    noise_scheduler: Any
    source: str  # what from_pretrained loads the parts from (a local folder or a Hub id)
    vae_config: dict[str, Any]
    tokenizer_2: Any = None  # the second and third tokenizers (SDXL, SD 3.x); their text encoders load lazily
    vae_folder: str | None = None  # a recipe's `vae:` (local folder), used instead of the base's vae/
    device: Any = "cpu"
    dtype: Any = None  # of the frozen weights, once placed
    tokenizer_3: Any = None  # SD 3.x's T5 tokenizer; None also when memory.t5 drops T5
    _vae: Any = field(default=None, repr=False)
    _text_encoder: Any = field(default=None, repr=False)
    _text_encoder_2: Any = field(default=None, repr=False)
    _text_encoder_3: Any = field(default=None, repr=False)

    @property
    def sdxl(self) -> bool:
        return self.family.name == "sdxl"

    @property
    def text_encoder_folders(self) -> tuple[str, ...]:
        """The subfolders of the text encoders the family conditions on, without loading them (SD 3.x without T5: two)."""
        count = len(self.family.text_encoders)
        if count > 2 and self.tokenizer_3 is None:  # memory.t5: drop
            count = 2
        return ("text_encoder", "text_encoder_2", "text_encoder_3")[:count]

    @property
    def text_encoders(self) -> tuple:
        """The text encoders the family conditions on, in the pipeline's order (SD 3.x without T5: the two CLIPs)."""
        return tuple(self._encoder(index) for index in range(len(self.text_encoder_folders)))

    @property
    def tokenizers(self) -> tuple:
        """One tokenizer per text encoder in use, in the same order."""
        return (self.tokenizer, self.tokenizer_2, self.tokenizer_3)[: len(self.text_encoder_folders)]

    @property
    def trainable_text_encoders(self) -> tuple:
        """The encoders lora.text_encoder trains: SD 1.x's one, SDXL's two, SD 3.5's two CLIPs (never T5)."""
        return self.text_encoders[: self.family.trainable_text]

    @property
    def scaling_factor(self) -> float:
        return self.vae_config.get("scaling_factor", 0.18215)  # diffusers' default for configs that omit it

    @property
    def shift_factor(self) -> float:
        """SD 3.x's VAE centres its latents before scaling; SD 1.x/SDXL's do not."""
        return self.vae_config.get("shift_factor") or 0.0

    @property
    def vae_loaded(self) -> bool:
        return self._vae is not None

    @property
    def text_encoder_loaded(self) -> bool:
        return any(encoder is not None for encoder in (self._text_encoder, self._text_encoder_2, self._text_encoder_3))

    @property
    def vae(self):
        if self._vae is None:
            from diffusers import AutoencoderKL

            if self.vae_folder:
                vae = AutoencoderKL.from_pretrained(self.vae_folder)
            else:
                vae = AutoencoderKL.from_pretrained(self.source, subfolder="vae")
            self._vae = self._frozen(vae)
        return self._vae

    @property
    def text_encoder(self):
        return self._encoder(0)

    @property
    def text_encoder_2(self):
        """The second text encoder (SDXL, SD 3.x), loaded on first use; None for SD 1.x/2.x."""
        return self._encoder(1) if len(self.family.text_encoders) > 1 else None

    def _encoder(self, index: int):
        attribute = ("_text_encoder", "_text_encoder_2", "_text_encoder_3")[index]
        if getattr(self, attribute) is None:
            import transformers

            model_class = getattr(transformers, self.family.text_encoders[index])
            subfolder = "text_encoder" if index == 0 else f"text_encoder_{index + 1}"
            setattr(self, attribute, self._frozen(model_class.from_pretrained(self.source, subfolder=subfolder)))
        return getattr(self, attribute)

    def _frozen(self, module):
        return module.requires_grad_(False).to(self.device, dtype=self.dtype)

    def place(self, device, dtype) -> None:
        """Frozen weights to the training device and dtype (the VAE and text encoders go there when they load)."""
        self.device, self.dtype = device, dtype
        for frozen in (self._vae, self.unet, self._text_encoder, self._text_encoder_2, self._text_encoder_3):
            if frozen is not None:
                self._frozen(frozen)

    def fingerprint(self, subfolder: str) -> str:
        """A part's identity without loading it: its files' contents and the dtype it runs in (keys the caches).

        Each file's digest is remembered by path, size and mtime, so only a changed file is read again.
        "vae" is the recipe's `vae:` when it names one.
        """
        from archdiff.file_digests import folder_digest

        if subfolder == "vae" and self.vae_folder:
            return folder_digest(Path(self.vae_folder), salt=str(self.dtype))
        return folder_digest(component_folder(self.source, subfolder), salt=str(self.dtype))


def component_folder(source: str, subfolder: str) -> Path:
    """A pipeline part's local folder: in a local base, or in the HF cache for a Hub id (fetched if missing)."""
    local = Path(source) / subfolder
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, allow_patterns=[f"{subfolder}/*"])) / subfolder


def load_components(base: BaseModel, t5: bool = True) -> Components:
    try:
        return _load_components(base, t5)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a broken or partial base (Hub cache included) is one line naming it
        raise UserError(f"base '{base.name}' could not be loaded: {first_line(error)}") from None


def _load_components(base: BaseModel, t5: bool = True) -> Components:
    """The family's denoiser, scheduler and tokenizers (text encoders and the VAE load later, when first used).
    `t5`: False leaves SD 3.x's T5 out (memory.t5: drop)."""
    import diffusers
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTokenizer

    from archdiff.model.families import FAMILIES

    family = FAMILIES[base.family]
    extra = {}
    if len(family.text_encoders) > 1:
        extra["tokenizer_2"] = CLIPTokenizer.from_pretrained(base.source, subfolder="tokenizer_2")
    if len(family.text_encoders) > 2 and t5:
        extra["tokenizer_3"] = AutoTokenizer.from_pretrained(base.source, subfolder="tokenizer_3")
    vae_config = AutoencoderKL.load_config(base.vae) if base.vae else AutoencoderKL.load_config(base.source, subfolder="vae")
    denoiser_class = getattr(diffusers, family.denoiser_class)
    scheduler_class = getattr(diffusers, family.scheduler_class)
    return Components(
        tokenizer=CLIPTokenizer.from_pretrained(base.source, subfolder="tokenizer"),
        unet=denoiser_class.from_pretrained(base.source, subfolder=family.denoiser),
        noise_scheduler=scheduler_class.from_pretrained(base.source, subfolder="scheduler"),
        source=base.source,
        vae_config=dict(vae_config),
        vae_folder=base.vae,
        family=family,
        **extra,
    )


def stored_dtype(source: str, subfolder: str = "unet"):
    """The dtype a base's weights are stored in (fp16 for most published bases), from its safetensors file."""
    import torch
    from safetensors import safe_open

    files = sorted(component_folder(source, subfolder).glob("*.safetensors"))
    plain = [path for path in files if "." not in path.stem] or files  # not a `.fp16` variant beside the default
    if not plain:
        return torch.float32
    with safe_open(str(plain[0]), "pt") as handle:
        return handle.get_tensor(next(iter(handle.keys()))).dtype
