"""The CUDA memory/speed knobs of a recipe, checked up front and applied to the UNet."""

from __future__ import annotations

import importlib.util

from archdiff.config.schema import MemoryConfig
from archdiff.errors import UserError


def _require_extra(module: str, option: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{option} needs {module}, from the optional cuda extra: pip install 'archdiff[cuda]'")


def check_memory_options(cfg: MemoryConfig, cuda: bool) -> None:
    """Refuse options this machine cannot honour before any model is loaded."""
    if cfg.attention == "xformers":
        _require_extra("xformers", "memory.attention=xformers")
        if not cuda:
            raise UserError("memory.attention=xformers needs a CUDA GPU; use sdpa on this machine")
    if cfg.optimizer == "adamw8bit":
        _require_extra("bitsandbytes", "memory.optimizer=adamw8bit")
    if cfg.compile and not cuda:
        # torch 2.13's CPU inductor compiled for 2.5 minutes on the tiny UNet and then failed on bucket shapes
        raise UserError("memory.compile needs a CUDA GPU (on CPU, compiling the UNet is slow and fails); set it false")
    if cfg.mixed_precision == "fp16" and not cuda:
        raise UserError("memory.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")


def apply_memory_options(unet, cfg: MemoryConfig) -> None:
    import torch

    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.attention == "xformers":
        unet.enable_xformers_memory_efficient_attention()
    if cfg.channels_last:
        unet.to(memory_format=torch.channels_last)
    if cfg.compile:
        # Regional compilation: every repeated transformer block (diffusers' `_repeated_blocks`) is compiled in
        # place and shares its compiled code with the blocks of the same width. Tracing the whole UNet instead
        # took 2.6x as long on SD 1.5 (210 s against 81 s for dynamo + AOT on a 2-core CPU), before inductor,
        # and SDXL has 70 blocks. Training, evaluation and sampling each add variants: allow more than 8.
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        unet.compile_repeated_blocks()  # hooks, adapters and saving still see the same modules
    if cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def weight_dtype(cfg: MemoryConfig):
    """The dtype of the frozen weights: half precision when training in mixed precision."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
