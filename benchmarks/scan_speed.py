"""Start-up spent scanning the data: the first run on a folder of camera-sized JPEGs, and a later run.

    python benchmarks/scan_speed.py [--images 100] [--size 4000x3000]

Writes the JPEGs (smooth gradients with noise, about what a photo costs to decode) and their captions to
a temporary folder with its own archdiff cache, then times `build_catalog` on it twice: the first scan
decodes every image, the second finds them all in the scan cache. Prints both times and the time per image.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height = size
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    for index in range(count):
        pixels = ramp + rng.normal(0, 12, (height, width, 3)).astype(np.float32) + index % 50
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"photo_{index:05d}.jpg", quality=90)
        (folder / f"photo_{index:05d}.txt").write_text("a facade")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of each photo")
    args = parser.parse_args()
    size = tuple(int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="archdiff-scan-speed-") as work:
        root = Path(work)
        (root / "photos").mkdir()
        os.environ["ARCHDIFF_CACHE"] = str(root / "cache")
        write_photos(root / "photos", args.images, size)
        megabytes = sum(p.stat().st_size for p in (root / "photos").glob("*.jpg")) / 1e6
        print(f"{args.images} JPEGs of {size[0]}x{size[1]} ({megabytes:.0f} MB)")

        from archdiff.config.schema import DataConfig
        from archdiff.data.catalog import build_catalog

        cfg = DataConfig(sources=[{"path": str(root / "photos")}], max_pixels=size[0] * size[1])
        for label in ("first scan (decodes every image)", "later scan (scan cache)"):
            started = time.perf_counter()
            catalog = build_catalog(cfg)
            seconds = time.perf_counter() - started
            print(f"{label}: {seconds:.2f} s, {1000 * seconds / len(catalog.records):.1f} ms per image")


if __name__ == "__main__":
    main()
