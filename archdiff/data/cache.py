"""Disk caches of VAE latents and text embeddings, so the training step runs the UNet and nothing else.

An entry's key hashes everything that shapes it: the image's content, its kind (which picks the resize
filter), bucket, tile and augmentation (each flip/rotation is cached as its own entry); the folder name
hashes the encoder's files and dtype. So a changed image, resolution or model misses exactly the entries it
affects, and nothing stale is ever read. Entries live in safetensors shards written whole, then renamed.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from archdiff.config.schema import DataConfig
from archdiff.data.samples import Sample, SampleSet, control_tensor, prepared_control, prepared_image, prepared_mask, tokenize
from archdiff.model.families import TEXT_ENTRIES
from archdiff.paths import cache_dir

FORMAT_VERSION = 1  # bump when image preparation changes what an entry holds
CONTROL_VERSION = 1  # bump when an extractor in data/controls.py changes what it draws
SHARD_ENTRIES = 256
TEXT_KEY_PREFIXES = dict(zip(TEXT_ENTRIES, ("text", "pooled", "t5"), strict=True))  # a text entry's cache-key prefix
ENCODE_BATCH = 8


def _key(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in (FORMAT_VERSION, *parts)).encode()).hexdigest()[:40]


class TensorCache:
    """Tensors by key across the safetensors shards of one folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._shard_of: dict[str, Path] = {}
        self._open: dict[Path, object] = {}
        for shard in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            with safe_open(shard, framework="pt") as handle:
                self._shard_of.update(dict.fromkeys(handle.keys(), shard))

    def __contains__(self, key: str) -> bool:
        return key in self._shard_of

    def __len__(self) -> int:
        return len(self._shard_of)

    def __getstate__(self):  # DataLoader workers reopen shards themselves
        return {**self.__dict__, "_open": {}}

    def get(self, key: str) -> torch.Tensor:
        shard = self._shard_of[key]
        if shard not in self._open:
            self._open[shard] = safe_open(shard, framework="pt")
        return self._open[shard].get_tensor(key)

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write one new shard: to a temporary name first, so a crash never leaves half a shard behind."""
        if not tensors:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = self.folder / f"shard-{time.time_ns()}-{os.getpid()}.safetensors"
        partial = shard.with_suffix(".partial")
        save_file({key: value.contiguous() for key, value in tensors.items()}, partial)
        os.replace(partial, shard)
        self._shard_of.update(dict.fromkeys(tensors, shard))


@dataclass
class Caches:
    latents: TensorCache | None
    texts: TensorCache | None
    controls: TensorCache | None = None  # a ControlNet run's control maps, beside its latents
    masks: TensorCache | None = None  # loss masks on the latent grid, beside the latents
    encoded: dict[str, int] = field(default_factory=lambda: {"latents": 0, "texts": 0})  # and "controls" when cached
    reused: dict[str, int] = field(default_factory=lambda: {"latents": 0, "texts": 0})

    @staticmethod
    def latent_key(sample: Sample, op: str, decode: str) -> str:
        """`decode` (data.decode) too: a reduced decode's pixels differ from a full one's, by a little."""
        record = sample.record
        return _key(record.content_hash, record.kind, sample.bucket, sample.tile, op, decode)

    @staticmethod
    def control_key(sample: Sample, op: str, cfg: DataConfig) -> str:
        """The latent key's parts plus the control's own content and the extractor's settings."""
        record, control = sample.record, cfg.control
        paired = record.control.digest if record.control else None
        extractor = (CONTROL_VERSION, control.type, control.canny_low, control.canny_high)
        return _key("control", record.content_hash, paired, record.kind, sample.bucket, sample.tile, op, *extractor, cfg.decode)

    @staticmethod
    def mask_key(sample: Sample, op: str) -> str:
        """The latent key's parts plus the mask's own content ("alpha": the image's, already in the key)."""
        record = sample.record
        return _key("mask", record.content_hash, record.mask.digest, record.kind, sample.bucket, sample.tile, op)

    @staticmethod
    def text_key(caption: str, entry: str = "text_embeddings") -> str:
        return _key(TEXT_KEY_PREFIXES[entry], caption)

    def text_item(self, caption: str) -> dict[str, torch.Tensor]:
        """A caption's cached conditioning as batch entries: its embedding, and what its family keeps beside it
        (SDXL's and SD 3.x's pooled projections, SD 3.x's T5 states)."""
        keys = {entry: self.text_key(caption, entry) for entry in TEXT_ENTRIES}
        return {entry: self.texts.get(key) for entry, key in keys.items() if key in self.texts}

    def report(self) -> str:
        parts = []
        for what in ("latents", "texts", "controls", "masks"):
            if getattr(self, what) is not None:
                parts.append(f"{what} {self.encoded[what]} encoded, {self.reused[what]} reused")
        return "cache: " + "; ".join(parts)


def _store(cache: TensorCache, pending: dict[str, torch.Tensor], final: bool = False) -> None:
    if pending and (final or len(pending) >= SHARD_ENTRIES):
        cache.add(dict(pending))
        pending.clear()


def _wanted(sets: list[SampleSet], key) -> dict[str, tuple[SampleSet, Sample, str]]:
    """Every (sample, augmentation) the sets can ask for, by its cache key."""
    from archdiff.data.images import possible_augmentations

    wanted: dict[str, tuple[SampleSet, Sample, str]] = {}
    for sample_set in sets:
        flip, rotate = sample_set.cfg.random_flip and sample_set.train, sample_set.cfg.rotate_drawings and sample_set.train
        for sample in sample_set.samples:
            for op in possible_augmentations(sample.record.kind, sample.bucket, flip, rotate):
                wanted.setdefault(key(sample_set, sample, op), (sample_set, sample, op))
    return wanted


@torch.no_grad()
def fill_latents(cache: TensorCache, sets: list[SampleSet], components, caches: Caches) -> None:
    """Encode every (sample, augmentation) the sets can ask for and the cache lacks, in batches of one bucket.

    Worker threads (data.decode_workers) each decode a batch; on a CPU each also encodes it (torch releases the GIL,
    and a batch is encoded alone, so its latents do not depend on the worker count); on a GPU this thread encodes
    while the workers decode the next batches.
    """
    from archdiff.data.workers import default_workers, ordered_map

    wanted = _wanted(sets, lambda sample_set, sample, op: Caches.latent_key(sample, op, sample_set.catalog.decode))
    missing = [(key, *job) for key, job in wanted.items() if key not in cache]
    caches.encoded["latents"], caches.reused["latents"] = len(missing), len(wanted) - len(missing)
    if not missing:
        return
    missing.sort(key=lambda job: job[2].bucket)
    batches = [
        group for start in range(0, len(missing), ENCODE_BATCH) for group in _by_bucket(missing[start : start + ENCODE_BATCH])
    ]
    vae = components.vae  # loads it: something is missing
    on_cpu = vae.device.type == "cpu"

    def prepared(batch: list) -> tuple[list[str], torch.Tensor]:
        from archdiff.data.images import to_tensor

        pixels = torch.stack([to_tensor(prepared_image(s.catalog, sample, s.cfg.max_pixels, op)) for _, s, sample, op in batch])
        return [key for key, *_ in batch], _encoded(vae, pixels) if on_cpu else pixels

    workers = default_workers(sets[0].cfg.decode_workers)
    pending: dict[str, torch.Tensor] = {}
    with tqdm(total=len(missing), desc="cache latents", unit="img") as progress:
        for keys, values in ordered_map(prepared, batches, workers, ahead=2 * workers):
            params = values if on_cpu else _encoded(vae, values)
            pending.update(zip(keys, params, strict=True))
            progress.update(len(keys))
            _store(cache, pending)
    _store(cache, pending, final=True)


def _by_bucket(jobs: list) -> list[list]:
    """A chunk of jobs split by bucket (a batch stacks images of one size), in order of first appearance."""
    groups: dict = {}
    for job in jobs:
        groups.setdefault(job[2].bucket, []).append(job)
    return list(groups.values())


@torch.no_grad()  # also on worker threads, where grad mode is not inherited
def _encoded(vae, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE's latent distribution parameters (mean and log-variance) for a batch of pixels, in float32 on the CPU."""
    return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.parameters.float().cpu()


def fill_controls(cache: TensorCache, sets: list[SampleSet], caches: Caches) -> None:
    """Extract every control map the sets can ask for and the cache lacks: with the latents cached, no image is
    decoded during training, for its control neither."""
    wanted = _wanted(sets, lambda sample_set, sample, op: Caches.control_key(sample, op, sample_set.cfg))
    missing = [(key, *job) for key, job in wanted.items() if key not in cache]
    caches.encoded["controls"], caches.reused["controls"] = len(missing), len(wanted) - len(missing)
    pending: dict[str, torch.Tensor] = {}
    for key, sample_set, sample, op in tqdm(missing, desc="cache controls", unit="img", disable=not missing):
        pending[key] = control_tensor(prepared_control(sample_set.catalog, sample, sample_set.cfg, op))
        _store(cache, pending)
    _store(cache, pending, final=True)


def fill_masks(cache: TensorCache, sets: list[SampleSet], caches: Caches) -> None:
    """Prepare every loss mask the sets can ask for and the cache lacks, so a cached run decodes no mask either."""
    from archdiff.data.masks import latent_mask

    wanted = _wanted(sets, lambda sample_set, sample, op: Caches.mask_key(sample, op) if sample.record.mask else None)
    wanted.pop(None, None)  # images without a mask learn everywhere: nothing to store
    missing = [(key, *job) for key, job in wanted.items() if key not in cache]
    caches.encoded["masks"], caches.reused["masks"] = len(missing), len(wanted) - len(missing)
    pending: dict[str, torch.Tensor] = {}
    for key, sample_set, sample, op in tqdm(missing, desc="cache masks", unit="img", disable=not missing):
        pending[key] = latent_mask(prepared_mask(sample_set.catalog, sample, sample_set.cfg.max_pixels, op), sample.bucket)
        _store(cache, pending)
    _store(cache, pending, final=True)


@torch.no_grad()
def fill_texts(cache: TensorCache, sets: list[SampleSet], components, caches: Caches) -> None:
    """Encode every caption the sets can produce (their fixed caption, and the empty one under dropout).

    The text encoders are loaded only when some caption is missing."""
    captions: set[str] = set()
    for sample_set in sets:
        for sample in sample_set.samples:
            captions.add(sample_set.caption(sample, None))
            if sample_set.train and sample_set.catalog.sources[sample.record.source].caption.dropout > 0:
                captions.add("")
    missing = sorted(c for c in captions if Caches.text_key(c) not in cache)
    caches.encoded["texts"], caches.reused["texts"] = len(missing), len(captions) - len(missing)
    pending: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(missing), ENCODE_BATCH), desc="cache captions", unit="batch", disable=not missing):
        pending.update(_encoded_captions(components, missing[start : start + ENCODE_BATCH]))
        _store(cache, pending)
    _store(cache, pending, final=True)


def _encoded_captions(components, captions: list[str]) -> dict[str, torch.Tensor]:
    """What the training step computes from each caption, as its family keeps it (Family.text_entries)."""
    ids = [tokenize(tokenizer, captions) for tokenizer in components.tokenizers]
    entries = components.family.text_entries(list(components.text_encoders), ids)
    return {
        Caches.text_key(caption, entry): values[index].float().cpu()
        for entry, values in entries.items()
        for index, caption in enumerate(captions)
    }


def text_cache_folder(components) -> Path:
    """Keyed by every text encoder's files in use: SDXL's and SD 3.x's entries change when any encoder does."""
    return cache_dir() / "text" / "-".join(components.fingerprint(encoder) for encoder in components.text_encoder_folders)


def build_caches(sets: list[SampleSet], want_latents: bool, want_texts: bool, components) -> Caches:
    """Open (and fill what is missing in) the caches a recipe asks for; attach them to the sets.

    The VAE and the text encoders are loaded only when some entry is missing: each cache folder is keyed
    by its encoders' files (the recipe's `vae:` for latents), not their weights in memory.
    """
    latents = TensorCache(cache_dir() / "latents" / components.fingerprint("vae")) if want_latents else None
    texts = TensorCache(text_cache_folder(components)) if want_texts else None
    controls = TensorCache(cache_dir() / "controls") if want_latents and any(s.controls for s in sets) else None
    masks = TensorCache(cache_dir() / "masks") if want_latents and any(s.masked for s in sets) else None
    caches = Caches(latents, texts, controls, masks)
    if latents is not None:
        fill_latents(latents, sets, components, caches)
    if controls is not None:
        fill_controls(controls, [s for s in sets if s.controls], caches)
    if masks is not None:
        fill_masks(masks, [s for s in sets if s.masked], caches)
    if texts is not None:
        fill_texts(texts, sets, components, caches)
    for sample_set in sets:
        sample_set.caches = caches
        sample_set.catalog.covers.clear()  # the scan's images served the cache build; training reads latents
    return caches
