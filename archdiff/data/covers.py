"""Decode once: the images a first scan decodes, kept at their bucket's size for the latent cache build.

A camera photo costs most of its preparation time in entropy decoding, which a reduced (draft) decode
cannot skip, so decoding each file twice (scan, then cache) would double the cost of a first run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COVERS_BUDGET = 1 << 30  # bytes of scanned images kept for the latent cache build (~1,300 at 512 px, ~330 at 1024)


class Covers:
    """Bucket-cover-sized images the scan decoded anyway, kept for the latent cache build: each file decoded once.

    Bounded by a byte budget; past it the cache build decodes the file again, to the same bytes (the same call).
    """

    def __init__(self, budget: int | None = None):
        self.budget, self.used = COVERS_BUDGET if budget is None else budget, 0
        self.images: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def fits(self, size: tuple[int, int]) -> bool:
        """Whether an RGB image of this size would still be kept (so one that would not is not even resized)."""
        return self.used + size[0] * size[1] * 3 <= self.budget

    def put(self, key: tuple, image) -> None:
        size = image.width * image.height * len(image.getbands())
        with self._lock:
            if key not in self.images and self.used + size <= self.budget:
                self.images[key] = image
                self.used += size

    def get(self, key: tuple):
        return self.images.get(key)

    def clear(self) -> None:
        with self._lock:
            self.images.clear()
            self.used = 0

    def __getstate__(self):  # DataLoader workers started by spawn (macOS) pickle the dataset: send no images, no lock
        return {"budget": self.budget, "used": 0, "images": {}}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


@dataclass(frozen=True)
class CoverKeeper:
    """How a row's image is decoded when a latent cache will be built: at the scale covering its bucket, resized to
    cover it and kept in `covers` under the key `prepared_image` looks up, so the cache build need not decode it again."""

    kind: str
    cover: Callable[[int, int], tuple[int, int]]  # full upright size -> the size it is resized to
    covers: Covers
    decode: str

    def keep(self, digest: str, image, size: tuple[int, int]) -> None:
        from archdiff.data.images import resize

        if self.covers.fits(size):
            resized = image if image.size == size else resize(image, size, self.kind)
            self.covers.put((digest, size, self.kind, self.decode), resized)
