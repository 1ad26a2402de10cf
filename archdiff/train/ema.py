"""`train.ema`: an exponential moving average of the trainable weights, which validation and the saved LoRA use.

Not diffusers' EMAModel: it ramps its decay as (1 + n) / (10 + n), so a recipe's 0.999 would only take effect
after ~9000 steps. Here the decay is the recipe's from the first update, which is what the README promises.
The average lives beside the raw weights; `swapped()` puts it into the models for evaluation and puts the raw
weights back, so training always continues on the raw ones.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from archdiff.config.schema import EmaConfig, Recipe
from archdiff.errors import UserError, first_line
from archdiff.run_files import RAW_LORA_WEIGHTS
from archdiff.train.checkpoints import EMA_FILE  # in every checkpoint: the averaged tensors, their update count in the metadata


def check_ema_options(recipe: Recipe) -> None:
    if recipe.train.ema is not None and recipe.controlnet is not None:
        raise UserError("train.ema does not apply to ControlNet runs (controlnet:): remove train.ema from the recipe")


def trainable_parameters(models: dict) -> dict:
    """label -> parameter for every weight that trains in `models` (label -> model or None), in a fixed order."""
    return {
        f"{label}.{name}": p
        for label, model in models.items()
        if model is not None
        for name, p in model.named_parameters()
        if p.requires_grad
    }


class AdapterEMA:
    """The average of `named` (label -> trainable parameter): after step s, if s > start_step and
    (s - start_step) % every == 0, ema = decay * ema + (1 - decay) * raw; up to start_step it is a copy of raw."""

    def __init__(self, cfg: EmaConfig, named: dict):
        self.cfg, self.named = cfg, named
        self.shadow = {name: p.detach().float().clone() for name, p in named.items()}
        self.updates = 0  # averaging updates so far (the copies up to start_step not counted)

    def update(self, step: int) -> None:
        """After optimizer step `step` (1-based)."""
        import torch

        cfg = self.cfg
        shadow, raw = list(self.shadow.values()), [p.detach().float() for p in self.named.values()]
        with torch.no_grad():
            if step <= cfg.start_step:
                torch._foreach_copy_(shadow, raw)
            elif (step - cfg.start_step) % cfg.every == 0:
                torch._foreach_lerp_(shadow, raw, 1.0 - cfg.decay)
                self.updates += 1

    @contextmanager
    def swapped(self):
        """The averaged weights in the models for the `with` body; the raw ones back afterwards, bit for bit."""
        import torch

        params = list(self.named.values())
        with torch.no_grad():
            raw = [p.detach().clone() for p in params]
            torch._foreach_copy_(params, list(self.shadow.values()))
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, raw)

    def swap_in_for_good(self) -> None:
        """The averaged weights into the models once training is over: what the run saves and samples with."""
        import torch

        with torch.no_grad():
            torch._foreach_copy_(list(self.named.values()), list(self.shadow.values()))

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {name: value.contiguous().cpu() for name, value in self.shadow.items()}
        save_file(tensors, os.path.join(folder, EMA_FILE), metadata={"updates": str(self.updates)})

    def load(self, folder: Path) -> None:
        """Exactly what `save` wrote; a file from another recipe (other tensors) is a one-line error."""
        import torch
        from safetensors import safe_open

        path = Path(folder) / EMA_FILE
        try:
            with safe_open(path, framework="pt") as handle:
                updates = int(handle.metadata()["updates"])
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
        except Exception as error:  # noqa: BLE001 - OSError, SafetensorError, a missing count: one line naming the file
            raise UserError(f"{path} is damaged ({first_line(error)})") from None
        if tensors.keys() != self.shadow.keys():
            raise UserError(f"{path} does not hold this recipe's trainable weights: resume a checkpoint of this run")
        with torch.no_grad():
            for name, value in tensors.items():
                self.shadow[name].copy_(value)
        self.updates = updates

    def register_hooks(self, accelerator) -> None:
        """Checkpoints carry the average (main process writes it); every process reads it on resume."""

        def save_hook(models, weights, output_dir):
            if accelerator.is_main_process:
                self.save(Path(output_dir))

        def load_hook(models, input_dir):
            self.load(Path(input_dir))

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)


def build_ema(recipe: Recipe, unet, text_encoders) -> AdapterEMA | None:
    """train.ema's average of every weight that trains (the UNet's and the text encoders' LoRA), or None."""
    if recipe.train.ema is None:
        return None
    labels = ("unet", "text_encoder", "text_encoder_2")
    return AdapterEMA(recipe.train.ema, trainable_parameters(dict(zip(labels, (unet, *text_encoders), strict=False))))


def save_raw_then_average(ema: AdapterEMA | None, unet, recipe: Recipe, run_dir: Path, text_encoders, family) -> None:
    """With train.ema: the LoRA as trained beside the run's, then the average into the models for good (saved and
    sampled from there on)."""
    if ema is not None:
        save_raw_lora(unet, recipe, run_dir, text_encoders, family)
        ema.swap_in_for_good()


def save_raw_lora(unet, recipe: Recipe, run_dir: Path, text_encoders, family) -> Path:
    """The LoRA as trained, before the average goes in, as RUN/pytorch_lora_weights_raw.safetensors."""
    from archdiff.model.lora import save_lora
    from archdiff.run_files import save_error_reason, save_errors

    staging = run_dir / ".raw-lora.partial"  # save_lora writes one fixed name: the raw file is renamed out of here
    staging.mkdir(parents=True, exist_ok=True)
    try:
        written = save_lora(unet, recipe.lora, staging, text_encoders, family)
        os.replace(written, run_dir / RAW_LORA_WEIGHTS)
    except save_errors() as error:
        raise UserError(f"could not save the raw LoRA to {run_dir / RAW_LORA_WEIGHTS}: {save_error_reason(error)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return run_dir / RAW_LORA_WEIGHTS
