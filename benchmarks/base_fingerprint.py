"""Start-up spent keying the caches on a base's files: the first run on a base, and every later one.

    python benchmarks/base_fingerprint.py [--base random-sdxl] [--repeats 3]

The latent cache, the text cache and DreamBooth's class images are keyed by a digest of the VAE's,
text encoder's and UNet's files. The first run hashes them (gigabytes for a real base); later runs find
each file's digest by path, size and modification time. Prints both times and the bytes behind them.
`random-sd15` / `random-sdxl` are built offline on first use (about 2.1 / 6.9 GB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="random-sdxl")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from archdiff.file_digests import FileDigests
    from archdiff.model.base import Components, component_folder, resolve_base

    base = resolve_base(args.base)  # built into the archdiff cache first if it is a random-* layout
    parts = ["vae", "text_encoder", "unet"]
    size = sum(p.stat().st_size for part in parts for p in component_folder(base.source, part).iterdir() if p.is_file())
    components = Components(None, None, None, base.source, {}, dtype=torch.float16)
    with tempfile.TemporaryDirectory() as digests_home:
        os.environ["ARCHDIFF_CACHE"] = digests_home  # a fresh digest store: the first run on this base
        cold, warm = [], []
        for _ in range(args.repeats):
            FileDigests.default().path.unlink(missing_ok=True)
            started = time.perf_counter()
            keys = [components.fingerprint(part) for part in parts]
            cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert [components.fingerprint(part) for part in parts] == keys
            warm.append(time.perf_counter() - started)
    print(f"{args.base}: {size / 1e9:.2f} GB in {', '.join(parts)}")
    first, later = statistics.median(cold), statistics.median(warm)
    print(f"first run (hash every file): {first:8.3f} s  (median of {args.repeats})")
    print(f"later runs (digests by stamp): {later:6.4f} s  ({first / later:.0f}x less)")


if __name__ == "__main__":
    main()
