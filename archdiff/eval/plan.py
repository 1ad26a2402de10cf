"""What `archdiff eval` draws and compares with: the run's held-out images, their captions and buckets.

The run's own data is read again and split exactly as training split it (same seed, same holdout rule), so the
reference images are ones the LoRA never trained on. Each checkpoint draws every reference caption, at that image's
bucket, with every seed: one caption's images are one diversity group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from archdiff.config.schema import Recipe

SEED_STRIDE = 1000  # a caption drawn again (more images than captions x seeds) takes seeds + 1000, + 2000, ...


@dataclass(frozen=True)
class Job:
    """One image to draw: the same job (prompt, seed, size, control) for every checkpoint and for the base."""

    prompt: str
    seed: int
    width: int
    height: int
    group: int  # the caption's draw: its images are compared for diversity
    reference: int  # index of the reference image whose caption, size (and control) it takes


@dataclass
class EvalData:
    """The real images the generated ones are measured against, and how to read them at their bucket size."""

    name: str  # "held-out", or "training" when the run held nothing out
    catalog: object
    data: object  # the run's DataConfig (a DreamBooth run's instance data)
    samples: list
    prompts: list[str]

    def image(self, index: int):
        from archdiff.data.samples import prepared_image

        return prepared_image(self.catalog, self.samples[index], self.data.max_pixels)

    def control(self, index: int):
        from archdiff.data.samples import prepared_control

        return prepared_control(self.catalog, self.samples[index], self.data)

    def images(self):
        """The reference images, read one at a time (a sized iterable, for the feature extractors' progress bars)."""
        return LazyImages(len(self.samples), self.image)


class LazyImages:
    """`count` images produced on demand by `load(index)`: iterable again and again, never all in memory."""

    def __init__(self, count: int, load):
        self.count, self.load = count, load

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return (self.load(index) for index in range(self.count))

    @classmethod
    def of_files(cls, paths: list[Path]) -> LazyImages:
        from PIL import Image

        def load(index: int):
            with Image.open(paths[index]) as image:
                return image.convert("RGB")

        return cls(len(paths), load)


def eval_data(recipe: Recipe) -> EvalData:
    """The run's held-out images (else its training images), split as training split them, with their plain captions."""
    from archdiff.data.captions import build_caption
    from archdiff.data.catalog import build_catalog, split_holdout
    from archdiff.data.samples import expand_samples
    from archdiff.train.dreambooth import instance_data

    data = instance_data(recipe.data, recipe.dreambooth) if recipe.dreambooth else recipe.data
    catalog = build_catalog(data, controls=recipe.controlnet is not None)
    train, held = split_holdout(catalog.records, data.holdout, data.holdout_group, recipe.train.seed)
    name, records = ("held-out", held) if held else ("training", train)
    samples = expand_samples(records, data, train=False)
    prompts = [build_caption(catalog.sources[s.record.source].caption, s.record.fields, None) for s in samples]
    return EvalData(name, catalog, data, samples, prompts)


def plan_jobs(sizes: list[tuple[int, int]], prompts: list[str], num_images: int, seeds: list[int]) -> list[Job]:
    """At least `num_images` images: the reference captions in order, each at its image's size with every seed; when
    more are needed than captions x seeds, the captions come round again with the seeds moved by SEED_STRIDE."""
    draws = math.ceil(num_images / len(seeds))
    jobs = []
    for group in range(draws):
        reference, cycle = group % len(prompts), group // len(prompts)
        width, height = sizes[reference]
        jobs += [Job(prompts[reference], seed + SEED_STRIDE * cycle, width, height, group, reference) for seed in seeds]
    return jobs
