"""DreamBooth: subject images captioned with the instance prompt, and class images for prior preservation.

Class images are drawn once by the base model itself, per bucket the subject's images use (so a class
batch always has the shape of the subject batch it joins), and cached by the base's weights, prompt
and size: a second run, or a longer one, reuses them and only draws what is missing.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from archdiff.config.schema import CaptionConfig, DataConfig, DreamBoothConfig
from archdiff.data.buckets import Bucket
from archdiff.paths import cache_dir


def instance_data(cfg: DataConfig, dreambooth: DreamBoothConfig) -> DataConfig:
    """The recipe's data with every caption replaced by the instance prompt."""
    prompt = dreambooth.instance_prompt.replace("{", "{{").replace("}", "}}")
    sources = [source.model_copy(update={"caption": None}) for source in cfg.sources]
    return cfg.model_copy(update={"sources": sources, "caption": CaptionConfig(template=prompt)})


def class_targets(buckets: list[Bucket], total: int, batch_size: int) -> dict[Bucket, int]:
    """Class images per bucket, in proportion to the subject samples there, and at least one batch each."""
    counts = Counter(buckets)
    return {bucket: max(batch_size, math.ceil(total * n / len(buckets))) for bucket, n in sorted(counts.items())}


def class_folder(unet_fingerprint: str, prompt: str) -> Path:
    key = hashlib.sha256(f"{unet_fingerprint}|{prompt}".encode()).hexdigest()[:20]
    return cache_dir() / "class-images" / key


@dataclass
class ClassImages:
    folder: Path
    generated: int
    reused: int

    def report(self) -> str:
        return f"class images: {self.generated} drawn, {self.reused} reused, in {self.folder}"


def ensure_class_images(dreambooth: DreamBoothConfig, targets: dict[Bucket, int], pipe, unet_fingerprint: str) -> ClassImages:
    """Draw the class images that are missing, one seed each, written atomically with a .txt caption."""
    from tqdm.auto import tqdm

    from archdiff.sample import generate

    folder = class_folder(unet_fingerprint, dreambooth.class_prompt)
    jobs = []
    for (width, height), count in targets.items():
        sub = folder / f"{width}x{height}"
        jobs += [(sub, width, height, seed) for seed in range(count) if not (sub / f"{seed:05d}.png").is_file()]
    reused = sum(targets.values()) - len(jobs)
    for sub, width, height, seed in tqdm(jobs, desc="class images", unit="img", disable=not jobs):
        sub.mkdir(parents=True, exist_ok=True)
        (image,) = generate(
            pipe, dreambooth.class_prompt, [seed], dreambooth.class_steps, dreambooth.class_guidance, width, height
        )
        partial = sub / f".{seed:05d}.png.partial"
        image.save(partial, format="PNG")
        (sub / f"{seed:05d}.txt").write_text(dreambooth.class_prompt, encoding="utf-8")
        os.replace(partial, sub / f"{seed:05d}.png")
    return ClassImages(folder, len(jobs), reused)


def class_data(cfg: DataConfig, folder: Path) -> DataConfig:
    """The class images as a data source (sidecar captions), with the subject data's buckets and transforms.

    Class images carry no mask; when the subject's do, they read their own alpha, which the drawn RGB images lack:
    a mask of ones, so class batches carry `loss_mask` like the subject batches they join."""
    masks = {"mask_column": None, "mask_alpha": any(source.masked for source in cfg.sources)}
    update = {"path": str(folder), "kind": "photo", "caption": None, "repeats": 1, **masks}
    source = cfg.sources[0].model_copy(update=update)
    return cfg.model_copy(update={"sources": [source], "caption": CaptionConfig(), "holdout": 0.0, "tile_drawings": None})


class ClassBatches:
    """Picks class samples of a given bucket for a step, reproducibly from (seed, process, batch number)."""

    def __init__(self, class_set, seed: int, process_index: int = 0):
        self.class_set, self.seed, self.process_index = class_set, seed, process_index
        self.by_bucket: dict[Bucket, list[int]] = {}
        for index, sample in enumerate(class_set.samples):
            self.by_bucket.setdefault(sample.bucket, []).append(index)

    def batch(self, bucket: Bucket, size: int, batch_number: int) -> list[dict]:
        rng = random.Random(f"{self.seed}/class/{self.process_index}/{batch_number}")
        indices = self.by_bucket[bucket]
        picked = rng.sample(indices, size) if len(indices) >= size else rng.choices(indices, k=size)
        return [self.class_set[(index, batch_number)] for index in picked]
