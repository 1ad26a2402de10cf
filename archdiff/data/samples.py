"""From catalogued images to training samples: repeats, drawing tiles, buckets, and the torch Dataset.

Per-sample randomness (crop, flip/rotation, caption variation) is drawn from a generator seeded by
(seed, epoch, sample index), so a sample's augmentation is the same whatever the worker count, and an
exact resume only needs to know where in the bucketed order it stopped.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from archdiff.config.schema import DataConfig
from archdiff.data.buckets import Bucket, assign_bucket, cover_size, crop_offsets, make_buckets
from archdiff.data.catalog import Catalog, ImageRecord

Box = tuple[int, int, int, int]  # left, top, right, bottom in the image's own pixels


@dataclass(frozen=True)
class Sample:
    record: ImageRecord
    bucket: Bucket
    tile: Box | None = None  # a native-resolution tile of a large drawing sheet


def bucket_list(cfg: DataConfig) -> list[Bucket]:
    if not cfg.buckets.enabled:
        return [(cfg.resolution, cfg.resolution)]
    return make_buckets(cfg.resolution**2, cfg.buckets.step, cfg.buckets.max_aspect)


def expand_samples(records: list[ImageRecord], cfg: DataConfig, train: bool) -> list[Sample]:
    """Each image once in its bucket (times its source's repeats when training), plus tiles of large drawings."""
    from archdiff.data.images import tile_boxes

    buckets = bucket_list(cfg)
    samples: list[Sample] = []
    for record in records:
        bucket = assign_bucket(record.width, record.height, buckets)
        these = [Sample(record, bucket)]
        large = record.width * record.height > (cfg.tile_drawings or float("inf")) * bucket[0] * bucket[1]
        if train and record.kind == "drawing" and large:
            these += [Sample(record, bucket, box) for box in tile_boxes(record.width, record.height, bucket, cfg.tile_overlap)]
        samples += these * (cfg.sources[record.source].repeats if train else 1)
    return samples


def bucket_report(samples: list[Sample]) -> str:
    """'64x64: 20, 128x32: 6 (2 tiles)': how the data lands in buckets, for the run's log."""
    counts = Counter(s.bucket for s in samples)
    tiles = Counter(s.bucket for s in samples if s.tile)
    parts = []
    for (width, height), count in sorted(counts.items(), key=lambda item: item[0][0] / item[0][1]):
        extra = f" ({tiles[(width, height)]} tiles)" if tiles[(width, height)] else ""
        parts.append(f"{width}x{height}: {count}{extra}")
    return ", ".join(parts)


def crop_geometry(sample: Sample, center: bool, rng: random.Random) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(resize to (w, h), original (h, w), crop (top, left)): where the bucket-sized crop comes from.

    original and crop are the numbers SDXL's time ids are made of; a tile is cut at native resolution.
    """
    original = (sample.record.height, sample.record.width)
    if sample.tile:
        left, top, _, _ = sample.tile
        return (sample.record.width, sample.record.height), original, (top, left)
    size = cover_size(sample.record.width, sample.record.height, sample.bucket)
    return size, original, crop_offsets(size, sample.bucket, center, rng)


def crop_to_bucket(image, sample: Sample, size: tuple[int, int], crop: tuple[int, int], kind: str | None = None):
    from archdiff.data.images import resize

    if size != image.size:
        image = resize(image, size, kind or sample.record.kind)
    top, left = crop
    return image.crop((left, top, left + sample.bucket[0], top + sample.bucket[1]))


def prepared_image(catalog: Catalog, sample: Sample, max_pixels: int, op: str = "", geometry=None):
    """The bucket-sized image a run trains on: centre-cropped unless `geometry` (size, crop) says otherwise, then `op`.

    data.decode reduced: a JPEG decodes at the smallest scale covering the resize (tiles need every native pixel);
    an image the scan already decoded and resized this way comes from `catalog.covers`, the same pixels.
    """
    from archdiff.data.images import apply_augmentation, open_image

    size, crop = geometry or crop_geometry(sample, center=True, rng=None)[::2]
    record = sample.record
    image = None if sample.tile else catalog.covers.get((record.content_hash, size, record.kind, catalog.decode))
    if image is None:
        reduce_to = size if catalog.decode == "reduced" and not sample.tile else None
        image = open_image(catalog.image_bytes(record), max_pixels, reduce_to=reduce_to)
    return apply_augmentation(crop_to_bucket(image, sample, size, crop), op)


def prepared_mask(catalog: Catalog, sample: Sample, max_pixels: int, op: str = "", geometry=None):
    """The loss mask (mode L) beside `prepared_image(... op, geometry)`, cut and turned the same way with the same
    filter; None where the image learns everywhere (no mask, an empty cell, or no alpha channel)."""
    from archdiff.data.images import apply_augmentation
    from archdiff.data.masks import mask_image

    record = sample.record
    if record.mask is None:
        return None
    size, crop = geometry or crop_geometry(sample, center=True, rng=None)[::2]
    full = mask_image(record.mask, lambda: catalog.image_bytes(record), (record.width, record.height), record.kind, max_pixels)
    return None if full is None else apply_augmentation(crop_to_bucket(full, sample, size, crop), op)


def prepared_control(catalog: Catalog, sample: Sample, cfg: DataConfig, op: str = "", geometry=None, target=None):
    """The control map a ControlNet trains on beside `prepared_image(... op, geometry)`: the same pixels of the same scene.

    A paired control is scaled to the target's size with the line-keeping drawing filter and cut by the target's
    bucket crop (or tile); without one the target itself is the source (`target`: that bucket-sized image, unflipped,
    when the caller has it, so it is not decoded twice). The extractor runs before the flip or rotation, which
    then applies to the map exactly as to the target.
    """
    from archdiff.data.controls import extract_control
    from archdiff.data.images import apply_augmentation, open_image, resize

    size, crop = geometry or crop_geometry(sample, center=True, rng=None)[::2]
    record = sample.record
    if record.control is None:
        image = target or prepared_image(catalog, sample, cfg.max_pixels, "", (size, crop))
    else:
        image = open_image(catalog.control_bytes(record), cfg.max_pixels)
        if sample.tile and image.size != (record.width, record.height):  # a tile is cut from the full-size target
            image = resize(image, (record.width, record.height), "drawing")
        image = crop_to_bucket(image, sample, size, crop, kind="drawing")
    control = extract_control(image, cfg.control.type, canny_low=cfg.control.canny_low, canny_high=cfg.control.canny_high)
    return apply_augmentation(control, op)


def control_tensor(image):
    """HWC uint8 RGB -> CHW uint8: how controls are cached and batched (a ControlNet reads them in [0, 1])."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def tokenize(tokenizer, captions: list[str]):
    return tokenizer(
        captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
    ).input_ids


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    return random.Random(f"{seed}/{epoch}/{index}")


class SampleSet:
    """A map-style dataset (torch DataLoader compatible): latents or pixels, text embeddings or token ids.

    Keys are `(index, epoch)` pairs from the bucket sampler; training draws augmentation from them,
    evaluation (train=False) is deterministic: centre crop, no flip, the plain caption. With caches, an
    item carries the VAE's latent distribution and the text embedding instead of pixels and tokens,
    drawn in the same order from the same generator, so cached and uncached runs see the same samples.
    """

    def __init__(
        self,
        catalog: Catalog,
        samples: list[Sample],
        cfg: DataConfig,
        tokenizer,
        seed: int,
        train: bool,
        caches=None,
        tokenizer_2=None,
        controls: bool = False,
        tokenizer_3=None,
    ):
        self.catalog, self.samples, self.cfg, self.tokenizer, self.seed, self.train = (
            catalog,
            samples,
            cfg,
            tokenizer,
            seed,
            train,
        )
        self.caches = caches
        self.tokenizer_2 = tokenizer_2  # SDXL, SD 3.x: items also carry `input_ids_2` for the second text encoder
        self.tokenizer_3 = tokenizer_3  # SD 3.x with T5: and `input_ids_3`
        self.controls = controls  # a ControlNet run: items also carry `control_values`, the control map as uint8
        self.masked = any(source.config.masked for source in catalog.sources)  # items also carry `loss_mask`

    def __len__(self) -> int:
        return len(self.samples)

    def caption(self, sample: Sample, rng: random.Random | None) -> str:
        from archdiff.data.captions import build_caption

        return build_caption(
            self.catalog.sources[sample.record.source].caption, sample.record.fields, rng, detail=bool(sample.tile)
        )

    def augmentation(self, sample: Sample, rng: random.Random) -> str:
        from archdiff.data.images import choose_augmentation

        if not self.train:
            return ""
        return choose_augmentation(sample.record.kind, sample.bucket, self.cfg.random_flip, self.cfg.rotate_drawings, rng)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        import torch

        from archdiff.data.images import apply_augmentation, to_tensor

        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[index]
        rng = sample_rng(self.seed, epoch, index)
        size, original, crop = crop_geometry(sample, self.cfg.center_crop or not self.train, rng)
        op = self.augmentation(sample, rng)
        caption = self.caption(sample, rng if self.train else None)
        item = {"original_size": torch.tensor(original), "crop_top_left": torch.tensor(crop)}
        target = None
        if self.caches and self.caches.latents:
            item["latent_params"] = self.caches.latents.get(self.caches.latent_key(sample, op, self.catalog.decode))
        else:
            target = prepared_image(self.catalog, sample, self.cfg.max_pixels, "", (size, crop))  # decoded once for both
            item["pixel_values"] = to_tensor(apply_augmentation(target, op))
        if self.controls and self.caches and self.caches.controls:
            item["control_values"] = self.caches.controls.get(self.caches.control_key(sample, op, self.cfg))
        elif self.controls:
            control = prepared_control(self.catalog, sample, self.cfg, op, (size, crop), target)
            item["control_values"] = control_tensor(control)
        if self.masked:
            item["loss_mask"] = self.loss_mask(sample, op, (size, crop))
        if self.caches and self.caches.texts:
            item.update(self.caches.text_item(caption))  # SDXL's pooled embedding too
        else:
            item["input_ids"] = tokenize(self.tokenizer, [caption])[0]
            if self.tokenizer_2 is not None:
                item["input_ids_2"] = tokenize(self.tokenizer_2, [caption])[0]
            if self.tokenizer_3 is not None:
                item["input_ids_3"] = tokenize(self.tokenizer_3, [caption])[0]
        return item

    def loss_mask(self, sample: Sample, op: str, geometry):
        """The sample's mask on the latent grid, (1, h, w): from the cache when the latents are cached, else prepared."""
        from archdiff.data.masks import latent_mask

        if sample.record.mask is None:
            return latent_mask(None, sample.bucket)
        if self.caches and self.caches.masks:
            return self.caches.masks.get(self.caches.mask_key(sample, op))
        return latent_mask(prepared_mask(self.catalog, sample, self.cfg.max_pixels, op, geometry), sample.bucket)


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; the bucket sampler guarantees equal shapes."""
    import torch

    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}


def data_summary(catalog: Catalog, train: list[Sample], holdout: list[Sample]) -> str:
    """What a run trains on, in a few lines: sources, split, buckets, and every skipped file with its reason."""
    labels = ", ".join(source.label for source in catalog.sources)
    images = len({(s.record.source, s.record.row) for s in train})
    lines = [
        f"data: {len(catalog.records)} images from {labels}: {images} train ({len(train)} samples), {len(holdout)} held out",
        f"buckets: {bucket_report(train)}",
    ]
    if catalog.skipped:
        lines.append(f"skipped {len(catalog.skipped)}:")
        lines += [f"  {skipped.name}: {skipped.reason}" for skipped in catalog.skipped]
    return "\n".join(lines)
