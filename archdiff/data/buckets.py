"""Aspect-ratio buckets: facades are wide and towers tall, so each image trains at a shape close to its own.

A bucket is a (width, height) with sides that are multiples of `step` and about `area` pixels. An image is
resized to cover its bucket and cropped by the small remainder, instead of being squashed or cut to a square.
The batch sampler keeps every batch (and, across processes, every step) inside one bucket, so tensors stack.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from fractions import Fraction

Bucket = tuple[int, int]  # (width, height) in pixels


def make_buckets(area: int, step: int, max_aspect: float) -> list[Bucket]:
    """Every (w, h) of multiples of `step` with h as large as fits w*h <= area (and the mirror), within max_aspect.

    Sorted by aspect w/h (then area). The square is among them when sqrt(area) is a multiple of step.
    Raises ValueError when nothing fits, so a bad config fails here rather than at the first image.
    """
    found: set[Bucket] = set()
    for width in range(step, area // step + 1, step):
        height = area // width // step * step
        if height >= step and max(width, height) <= max_aspect * min(width, height):
            found.update({(width, height), (height, width)})
    if not found:
        raise ValueError(f"no bucket of area <= {area} with sides in steps of {step} and aspect <= {max_aspect}")
    return sorted(found, key=lambda bucket: (bucket[0] / bucket[1], bucket[0] * bucket[1]))


def aspect_distance(width: int, height: int, bucket: Bucket) -> Fraction:
    """exp(|log(aspect) - log(bucket aspect)|) as an exact fraction: same order as the log distance, but ties are exact."""
    image_side, bucket_side = width * bucket[1], height * bucket[0]
    return Fraction(max(image_side, bucket_side), min(image_side, bucket_side))


def assign_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket nearest in log aspect ratio; on a tie the larger one, which keeps more of the image's detail."""
    return min(buckets, key=lambda bucket: (aspect_distance(width, height, bucket), -bucket[0] * bucket[1]))


def rounded_ratio(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, in integers so no float error can push a side below the bucket."""
    return (2 * numerator + denominator) // (2 * denominator)


def cover_size(width: int, height: int, bucket: Bucket) -> tuple[int, int]:
    """(w, h) to resize to so the image covers the bucket with the least crop, keeping its aspect.

    The binding side becomes exactly the bucket's; the other is rounded to nearest, which cannot fall below the
    bucket because its exact value is already at least the bucket's side.
    """
    bucket_width, bucket_height = bucket
    if bucket_width * height >= bucket_height * width:  # width binds: bw/w >= bh/h
        return bucket_width, rounded_ratio(height * bucket_width, width)
    return rounded_ratio(width * bucket_height, height), bucket_height


def crop_offsets(resized: tuple[int, int], bucket: Bucket, center: bool, rng: random.Random) -> tuple[int, int]:
    """(top, left) of the bucket-sized crop in the resized image, centred or uniform at random.

    Top first, like SDXL's crops_coords_top_left, so the pair can be fed to its time ids as is.
    """
    spare_width, spare_height = resized[0] - bucket[0], resized[1] - bucket[1]
    if spare_width < 0 or spare_height < 0:
        raise ValueError(f"resized image {resized} does not cover bucket {bucket}")
    if center:
        return spare_height // 2, spare_width // 2
    return rng.randint(0, spare_height), rng.randint(0, spare_width)


def derived_seed(*parts: object) -> int:
    """A stable integer seed from parts: hash() of a str is salted per process, sha256 is the same everywhere."""
    text = "/".join(map(str, parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def chunk_full(indices: list[int], size: int) -> list[list[int]]:
    """Consecutive chunks of `size`; the last is filled by wrapping to the start, so nothing is dropped or short."""
    count = math.ceil(len(indices) / size)
    wrapped = [indices[position % len(indices)] for position in range(count * size)]
    return [wrapped[start : start + size] for start in range(0, len(wrapped), size)]


class BucketBatchSampler:
    """Batches of (sample index, epoch), each batch from one bucket, epoch after epoch: the iterator never ends.

    Pass as DataLoader's batch_sampler and stop after max_steps. Every epoch plan is derived from (seed, epoch)
    alone, identical on every process: each bucket is shuffled and cut into full global batches of
    batch_size * num_processes (wrapping within the bucket), then the global batches are shuffled. Process r
    takes its slice of each, so all processes share a bucket at every step and see distinct samples. The epoch
    travels with each index so augmentation can be seeded per sample, whatever the DataLoader workers do.
    """

    def __init__(self, sample_buckets: list[Bucket], batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0):
        if not sample_buckets:
            raise ValueError("no samples to batch")
        if batch_size < 1 or not 0 <= process_index < num_processes:
            raise ValueError(f"bad batch_size {batch_size} or process {process_index} of {num_processes}")
        self.batch_size, self.seed = batch_size, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.by_bucket: dict[Bucket, list[int]] = {}
        for index, bucket in enumerate(sample_buckets):
            self.by_bucket.setdefault(bucket, []).append(index)
        self.start = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_processes

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in one epoch, the same on every process (each process takes one slice per global batch)."""
        return sum(math.ceil(len(indices) / self.global_batch_size) for indices in self.by_bucket.values())

    def __len__(self) -> int:
        """One epoch, for callers that ask; iteration itself goes on past it."""
        return self.batches_per_epoch

    def start_at(self, batches_done: int) -> None:
        """Make iteration resume after `batches_done` batches counted from epoch 0, for an exact restart."""
        self.start = batches_done

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches in order; a pure function of (seed, epoch), hence equal on all processes."""
        batches: list[list[int]] = []
        for bucket in sorted(self.by_bucket):
            indices = list(self.by_bucket[bucket])
            random.Random(derived_seed("bucket", self.seed, epoch, *bucket)).shuffle(indices)
            batches += chunk_full(indices, self.global_batch_size)
        random.Random(derived_seed("order", self.seed, epoch)).shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, position = divmod(self.start, self.batches_per_epoch)
        first, last = self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size
        while True:
            for batch in self.epoch_plan(epoch)[position:]:
                yield [(index, epoch) for index in batch[first:last]]
            epoch, position = epoch + 1, 0
