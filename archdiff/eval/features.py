"""Metric models for `archdiff eval`: load CLIP and DINOv2 (Hub id or local folder) and turn images and prompts into features.

Extraction is batched and without gradients, so memory is bounded by `batch_size` images, never by how many there
are (`images` is any iterable of PIL images in any mode, a generator included); features come back as float32 CPU
tensors (N, D) for archdiff.eval.metrics. Preprocessing always uses the
PIL image processors: the features then do not change with torchvision installed or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archdiff.errors import UserError, first_line
from archdiff.hub_ids import is_hub_id

BATCH_SIZE = 16
PROGRESS_MIN_IMAGES = 64  # fewer images are done in a blink: no bar

_CLIP_TYPES = ("clip",)
_DINO_TYPES = ("dinov2", "dinov2_with_registers")


@dataclass(frozen=True)
class MetricModel:
    """A loaded metric network, in eval mode on `device`, with its PIL image processor (and CLIP's tokenizer).

    `digest` identifies its files (a report says which weights measured it, not only which name).
    """

    name: str
    network: Any
    processor: Any
    device: str
    tokenizer: Any = None
    digest: str = ""


TINY_METRIC_MODELS = {"tiny-clip": "clip", "tiny-dino": "dino"}  # built offline into the cache, like tiny-sd15


def _built_tiny(name: str) -> str:
    """`tiny-clip` / `tiny-dino`: the random tiny model's folder in the cache, built on first use."""
    from archdiff.eval.tiny_models import build_tiny_clip, build_tiny_dino
    from archdiff.paths import cache_dir

    kind = TINY_METRIC_MODELS[name]
    folder = cache_dir() / "tiny" / kind
    if not (folder / "config.json").is_file():
        (build_tiny_clip if kind == "clip" else build_tiny_dino)(folder)
    return str(folder)


def _model_folder(name: str) -> Path:
    """Where a loaded model's files are: the folder itself, or the Hub snapshot transformers read."""
    from huggingface_hub import try_to_load_from_cache

    path = Path(name).expanduser()
    return path if path.is_dir() else Path(try_to_load_from_cache(name, "config.json")).parent


def check_model_source(name: str, what: str) -> None:
    """A missing folder, or a Hub id with no Hub, named in one line before transformers' long messages."""
    from huggingface_hub import constants, try_to_load_from_cache

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{what} '{name}' is a folder without config.json, not a transformers model folder")
        return
    if not is_hub_id(name):
        found = "is not a folder" if path.exists() else "does not exist"
        raise UserError(f"{what} '{name}' {found} and is no Hub model id (owner/name)")
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    from archdiff.model.base import hub_reachable

    if constants.HF_HUB_OFFLINE or not hub_reachable():
        raise UserError(
            f"{what} '{name}' is not downloaded and the Hugging Face Hub is not reachable (offline); "
            "give a local model folder, or download it once online"
        )


CLIP_WHAT, DINO_WHAT = "CLIP model", "DINOv2 model"


def metric_source(name: str, what: str) -> str:
    """What `from_pretrained` loads for `name` (a tiny model built first), checked without importing torch where it can be:
    a missing folder or an offline Hub id is one line in a fraction of a second."""
    source = _built_tiny(name) if name in TINY_METRIC_MODELS and not Path(name).exists() else name
    check_model_source(source, what)
    return source


def _load(name: str, what: str, model_types: tuple[str, ...], network_class: str, with_tokenizer: bool) -> MetricModel:
    source = metric_source(name, what)
    import torch
    import transformers
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its "Loading weights" bar would sit above archdiff's own
    try:
        config = transformers.AutoConfig.from_pretrained(source)
        if config.model_type not in model_types:
            raise ValueError(f"it is a {config.model_type} model, not {' or '.join(model_types)}")
        network = getattr(transformers, network_class).from_pretrained(source)
        processor = transformers.AutoImageProcessor.from_pretrained(source, backend="pil")
        tokenizer = transformers.AutoTokenizer.from_pretrained(source) if with_tokenizer else None
    except Exception as error:  # noqa: BLE001 - bad folder, failed download, wrong kind: the same fix for the user
        raise UserError(f"{what} '{name}' could not be loaded ({first_line(error)})") from None
    finally:
        transformers_logging.enable_progress_bar()
    from archdiff.file_digests import folder_digest

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return MetricModel(name, network.eval().to(device), processor, device, tokenizer, folder_digest(_model_folder(source)))


def load_clip(name: str) -> MetricModel:
    """A transformers CLIP model (Hub id, folder or tiny-clip) with its tokenizer, for CLIP score; one-line UserError
    if it cannot load."""
    return _load(name, CLIP_WHAT, _CLIP_TYPES, "CLIPModel", with_tokenizer=True)


def load_dino(name: str) -> MetricModel:
    """A transformers DINOv2 model (Hub id, folder or tiny-dino), for Fréchet/kernel distance and diversity."""
    return _load(name, DINO_WHAT, _DINO_TYPES, "AutoModel", with_tokenizer=False)


def _batches(images: Iterable, batch_size: int) -> Iterator[list]:
    """Lists of at most `batch_size` RGB images, pulled lazily: a generator of images is never held whole."""
    from archdiff.data.images import to_rgb

    if batch_size < 1:
        raise UserError(f"feature batch size must be at least 1, not {batch_size}")
    batch = []
    for image in images:
        batch.append(to_rgb(image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _extract(model: MetricModel, images: Iterable, batch_size: int, features, desc: str):
    import torch
    from tqdm.auto import tqdm

    total = len(images) if hasattr(images, "__len__") else None
    rows = []
    with (
        torch.inference_mode(),
        tqdm(total=total, desc=desc, unit="img", disable=total is not None and total < PROGRESS_MIN_IMAGES) as bar,
    ):
        for batch in _batches(images, batch_size):
            pixels = model.processor(images=batch, return_tensors="pt")["pixel_values"].to(model.device)
            rows.append(features(pixels).float().cpu())
            bar.update(len(batch))
    if not rows:
        raise UserError(f"no images to compute {desc} of")
    return torch.cat(rows)


def clip_image_embeds(model: MetricModel, images: Iterable, batch_size: int = BATCH_SIZE):
    """(N, projection_dim) CLIP image embeddings, projected but not normalised (clip_score takes the cosine)."""

    def embed(pixels):
        return model.network.get_image_features(pixel_values=pixels).pooler_output

    return _extract(model, images, batch_size, embed, "CLIP image features")


def clip_text_embeds(model: MetricModel, prompts: list[str], batch_size: int = BATCH_SIZE):
    """(N, projection_dim) CLIP text embeddings; prompts longer than CLIP's 77 tokens are cut, as CLIP score does."""
    import torch

    if not prompts:
        raise UserError("no prompts to compute CLIP text features of")
    max_length = model.network.config.text_config.max_position_embeddings
    rows = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            tokens = model.tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            tokens = tokens.to(model.device)
            rows.append(model.network.get_text_features(**tokens).pooler_output.float().cpu())
    return torch.cat(rows)


def dino_features(model: MetricModel, images: Iterable, batch_size: int = BATCH_SIZE):
    """(N, hidden_size) DINOv2 features: the CLS token after the final layer norm (the model's pooler_output).

    The CLS token is what DINOv2 was trained to make a global image descriptor (its linear-probe results use it), and
    it is the feature of the DINOv2 Fréchet distance in Stein et al. 2023; mean-pooled patches would weigh texture more.
    """
    return _extract(model, images, batch_size, lambda pixels: model.network(pixel_values=pixels).pooler_output, "DINOv2 features")
