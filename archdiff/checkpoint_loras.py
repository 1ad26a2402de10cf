"""A checkpoint's LoRA as a folder of its own, laid out like a finished run (the diffusers LoRA file and recipe.yaml),
so `eval` draws with it and `export --checkpoint` exports it through the same code as a run's final LoRA.

A checkpoint stores peft's tensors without the adapter config (resuming rebuilds it from the recipe); here the
config comes from the recipe in the checkpoint's trainer_state.json, so alpha travels with the weights as it does in
the run's own file.
"""

from __future__ import annotations

from pathlib import Path

from archdiff.errors import UserError, first_line
from archdiff.run_files import (
    CHECKPOINT_STATE,
    EVAL_DIR,
    LORA_WEIGHTS,
    RECIPE_FILE,
    checkpoint_step,
    complete_checkpoints,
    move_into_place,
    staging_dir,
)

CHECKPOINT_LORAS_DIR = "loras"  # RUN/eval/loras/step-NNNNNN/


def find_steps(run_dir: Path, spec: str) -> list[Path]:
    """`all`, `latest` or `STEP,STEP,...` (200 or step-000200): the run's complete checkpoints it names, oldest first;
    one line for a step that has no checkpoint, naming the steps there are."""
    found = complete_checkpoints(run_dir)
    if not found:
        raise UserError(f"'{run_dir}' has no complete checkpoint (train it first, or pass another run)")
    spec = spec.strip()
    if spec == "all":
        return found
    if spec == "latest":
        return found[-1:]
    by_step = {checkpoint_step(path): path for path in found}
    picked = []
    for item in spec.split(","):
        item = item.strip().removeprefix("step-")
        if not item.isdigit():
            raise UserError(f"--checkpoints takes all, latest or steps like 100,200 or step-000200 (got '{spec}')")
        if int(item) not in by_step:
            there = ", ".join(str(step) for step in by_step)
            raise UserError(f"'{run_dir}' has no checkpoint at step {int(item)} (it has steps {there})")
        picked.append(by_step[int(item)])
    return sorted(set(picked))


def checkpoint_lora(checkpoint: Path, family: str) -> Path:
    """RUN/eval/loras/step-NNNNNN: the checkpoint's UNet (and text-encoder) adapter as `pytorch_lora_weights.safetensors`
    with the checkpoint's recipe. Written once (staged, renamed into place) and rebuilt if the checkpoint is newer."""
    import json

    from archdiff.config.load import dump_recipe
    from archdiff.config.schema import Recipe

    run_dir = checkpoint.parent.parent
    folder = run_dir / EVAL_DIR / CHECKPOINT_LORAS_DIR / checkpoint.name
    state_file = checkpoint / CHECKPOINT_STATE
    if (folder / LORA_WEIGHTS).is_file() and (folder / LORA_WEIGHTS).stat().st_mtime_ns >= state_file.stat().st_mtime_ns:
        return folder
    try:
        recipe = Recipe.model_validate(json.loads(state_file.read_text(encoding="utf-8"))["recipe"])
    except Exception as error:  # noqa: BLE001 - damaged JSON, a recipe this version cannot read: one line naming the file
        raise UserError(f"{state_file} cannot be read as a checkpoint of a run ({first_line(error)})") from None
    if not recipe.unet_lora_trains:
        raise UserError(f"{checkpoint} is a ControlNet checkpoint without a UNet LoRA: there is no LoRA to take from it")
    with staging_dir(folder.parent) as staging:
        _write_lora(checkpoint, recipe, staging, family)
        (staging / RECIPE_FILE).write_text(dump_recipe(recipe), encoding="utf-8")
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        move_into_place(staging, folder)
    return folder


def _write_lora(checkpoint: Path, recipe, folder: Path, family_name: str) -> None:
    from safetensors.torch import load_file

    from archdiff.model.families import FAMILIES
    from archdiff.model.lora import peft_config
    from archdiff.train.checkpoints import ADAPTER_FILE, TEXT_ENCODER_ADAPTER_FILES

    family = FAMILIES[family_name]
    parts = {
        f"{family.denoiser}_lora_layers": load_file(checkpoint / ADAPTER_FILE),
        f"{family.denoiser}_lora_adapter_metadata": peft_config(recipe.lora).to_dict(),
    }
    if recipe.lora.text_encoder is not None:
        metadata = peft_config(recipe.lora.text_encoder).to_dict()
        for prefix, name in zip(("text_encoder", "text_encoder_2"), TEXT_ENCODER_ADAPTER_FILES, strict=True):
            if (checkpoint / name).is_file():
                parts[f"{prefix}_lora_layers"] = load_file(checkpoint / name)
                parts[f"{prefix}_lora_adapter_metadata"] = metadata
    family.pipeline_class().save_lora_weights(folder, **parts)
