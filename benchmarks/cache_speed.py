"""Training steps/s on the tiny model with and without the latent + text caches (issue 3's yardstick).

    OMP_NUM_THREADS=1 python benchmarks/cache_speed.py [--steps 300] [--repeats 3]

Each mode trains demo-tiny from scratch in a temporary folder, without holdout or samples, so the timed
span is the training loop alone; the cache is filled before the first cached run and not timed. Prints
the median steps/s of each mode and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")


def steps_per_second(steps: int, cached: bool, output: str) -> float:
    from archdiff.config import load_recipe
    from archdiff.train.run import run

    overrides = [
        f"output={output}",
        f"train.max_steps={steps}",
        f"train.val_every={steps}",
        "data.holdout=0",
        "validation.prompts=[]",
        f"data.cache.latents={str(cached).lower()}",
        f"data.cache.text={str(cached).lower()}",
    ]
    return run(load_recipe("demo-tiny", overrides), overwrite=True).steps_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("ARCHDIFF_CACHE", os.path.join(scratch, "cache"))
        steps_per_second(10, True, os.path.join(scratch, "warm"))  # fills the cache, warms imports
        results = {}
        for cached in (False, True):
            runs = [steps_per_second(args.steps, cached, os.path.join(scratch, f"run-{cached}-{i}")) for i in range(args.repeats)]
            results[cached] = statistics.median(runs)
            each = ", ".join(f"{r:.1f}" for r in runs)
            print(f"{'with cache' if cached else 'no cache':>10}: {results[cached]:.1f} steps/s (runs: {each})")
    print(f"speed-up: {results[True] / results[False]:.2f}x")


if __name__ == "__main__":
    main()
