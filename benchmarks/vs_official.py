"""archdiff's side of the yardstick against diffusers' official `train_text_to_image_lora.py` (issue 7).

    OMP_NUM_THREADS=1 python benchmarks/vs_official.py [--steps 300]

The model is the one both scripts are meant to train: the SD-1.5-shaped dummy pipeline of diffusers' own
tests (a 1.43 M-parameter UNet whose first level has no attention, a factor-2 VAE: 64 px images -> 32x32
latents), built here with random weights around the tiny-sd15 text encoder and tokenizer. archdiff trains
the bundled 32 facades at 64 px squares, batch 2, LoRA rank 4 on the attention projections, lr 1e-4
constant (the official defaults), with latents and captions cached. Each run is a separate
`archdiff train` process under GNU time, so wall time and peak RSS cover the whole process; the first
run also fills the cache, the second reuses it. Prints steady-state steps/s (median of 10-step windows
after warm-up), wall, peak RSS and held-out loss.

It also prints the floor: the same UNet with the same LoRA, forward + backward + clipping + fused AdamW on
random latents in a bare loop, with no data, VAE, text encoder or logging. No trainer's step can beat it on
this machine, so with `--official-steps-per-s` it prints the largest speed-up over the official script that
any amount of caching could give.
The official script is not part of this repository; run it on the same pipeline folder to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the official script's


def build_pipeline(folder: Path) -> int:
    """tiny-sd15 with the UNet and VAE layout of diffusers' test dummies; returns the UNet's parameter count."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from archdiff.model.base import resolve_base

    shutil.copytree(resolve_base("tiny-sd15").source, folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=UNet2DConditionModel.load_config(folder, subfolder="unet")["cross_attention_dim"],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    for name, part in (("unet", unet), ("vae", vae)):
        shutil.rmtree(folder / name)
        part.save_pretrained(folder / name)
    return sum(p.numel() for p in unet.parameters())


def train(base: Path, output: Path, steps: int, cache: Path) -> dict:
    overrides = {
        "base": str(base),
        "output": str(output),
        "data.resolution": 64,
        "data.buckets.enabled": False,
        "data.cache.latents": True,
        "data.cache.text": True,
        "data.num_workers": 0,
        "train.batch_size": 2,
        "train.max_steps": steps,
        "train.learning_rate": 1e-4,
        "train.lr_scheduler": "constant",
        "train.warmup_steps": 0,
        "train.log_every": 10,
        "train.val_every": steps,
        "train.checkpoint_every": None,
        "train.trackers": [],
        "lora.rank": 4,
        "lora.alpha": 4,
        "lora.target_modules": LORA_TARGETS,
        "validation.prompts": [],
    }
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "archdiff", "train", "--recipe", "demo-tiny", "--overwrite"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    env = {**os.environ, "ARCHDIFF_CACHE": str(cache), "TQDM_DISABLE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(x) if x else 0.0 for x in wall.groups())
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    from archdiff.bench import timed_steps_per_second

    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {
        "steady_steps_per_s": timed_steps_per_second(rows, warmup=max(10, steps // 5)),
        "wall_s": hours * 3600 + minutes * 60 + seconds,
        "peak_rss_mb": peak_kb / 1024,
        "startup_s": rows[0]["startup"],
        "val_loss_before": rows[0]["val_loss"],
        "val_loss_after": rows[-1]["val_loss"],
    }


def step_floor(base: Path, steps: int) -> float:
    """Steady steps/s of the bare UNet + LoRA step at the benchmark's shapes (batch 2, 32x32 latents)."""
    import statistics
    import time
    from itertools import pairwise

    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet").requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    latents = torch.randn(2, 4, 32, 32)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    window_times = []
    for step in range(steps):
        if step % 10 == 0:
            window_times.append(time.perf_counter())
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (2,))
        loss = torch.nn.functional.mse_loss(unet(latents + noise, timesteps, text).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    warm = max(1, len(window_times) // 5)  # the same warm-up share as the runs' windows
    return statistics.median(10 / (b - a) for a, b in pairwise(window_times[warm:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--official-steps-per-s", type=float, help="the official script's steady rate on the same pipeline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="archdiff-vs-official-") as work:
        root = Path(work)
        params = build_pipeline(root / "base")
        print(f"pipeline: {root / 'base'} (UNet {params / 1e6:.2f} M parameters, factor-2 VAE)")
        for label in ("cold cache", "warm cache"):
            result = train(root / "base", root / label.replace(" ", "-"), args.steps, root / "cache")
            print(
                f"{label}: {result['steady_steps_per_s']:.1f} steps/s steady, whole process {result['wall_s']:.1f} s "
                f"(start-up {result['startup_s']:.1f} s), peak RSS {result['peak_rss_mb']:.0f} MB, held-out loss "
                f"{result['val_loss_before']:.4f} -> {result['val_loss_after']:.4f}"
            )
        floor = step_floor(root / "base", args.steps)
        print(f"floor (bare UNet + LoRA step, nothing else): {floor:.1f} steps/s")
        if args.official_steps_per_s:
            print(f"the most any trainer can gain over the official script here: {floor / args.official_steps_per_s:.2f}x")


if __name__ == "__main__":
    main()
