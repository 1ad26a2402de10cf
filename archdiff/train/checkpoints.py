"""Resumable checkpoints: accelerate's state (optimizer, LR schedule, grad scaler, every process's RNG),
the LoRA tensors alone (not the frozen base), and where training stood (step, batches consumed).

A checkpoint is written into a hidden `.partial` folder and renamed into place only after its
trainer_state.json, written last, is there: a folder named step-NNNNNN is always complete.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archdiff.errors import UserError, first_line
from archdiff.run_files import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_STATE,
    CHECKPOINTS_DIR,
    complete_checkpoints,
    save_error_reason,
    save_errors,
)

ADAPTER_FILE = "adapter.safetensors"
TEXT_ENCODER_ADAPTER_FILES = ("text_encoder_adapter.safetensors", "text_encoder_2_adapter.safetensors")  # SDXL has two
EMA_FILE = "ema.safetensors"  # train.ema's average (archdiff.train.ema writes and reads it)
CONTROLNET_FILE = "controlnet.safetensors"  # a ControlNet run's trained weights (all of them, or its LoRA's)

# Recipe fields a resumed run may change: they steer logging, saving and sampling, not the maths.
CHANGEABLE_ON_RESUME = (
    "name",
    "description",
    "output",
    "train.max_steps",
    "train.log_every",
    "train.val_every",
    "train.checkpoint_every",
    "train.checkpoint_limit",
    "train.trackers",
    "validation.",
    "eval.",
    "data.num_workers",
    "data.decode_workers",
    "hub",
)
# Fields added since a checkpoint may have been written, whose default is not what runs did before them.
BEFORE_THE_FIELD = {"data.decode": "full"}  # images were decoded at full size before data.decode existed


class AlreadyFinished(Exception):
    """`--resume` on a run that reached max_steps: nothing to do, and that is not an error."""


@dataclass(frozen=True)
class TrainerState:
    step: int
    batches: int  # micro-batches consumed by this process: the bucket sampler restarts after them
    recipe: dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def read_state(checkpoint: Path) -> TrainerState:
    data = json.loads((checkpoint / CHECKPOINT_STATE).read_text(encoding="utf-8"))
    return TrainerState(data["step"], data["batches"], data["recipe"])


class UnsafeCheckpoint(UserError):
    """A checkpoint pickle that would run code when loaded: refused outright, never skipped for an older one."""


def check_safe_to_load(checkpoint: Path) -> None:
    """Open every pickle accelerate will read (optimizer, LR schedule, scaler, RNG states) as tensors and plain
    data only (`weights_only=True`), before accelerate does: a crafted file runs no code, and a damaged or
    missing one is named instead of being skipped silently (accelerate ignores an unreadable RNG state)."""
    from accelerate.utils import RNG_STATE_NAME, load

    random_states = sorted(checkpoint.glob(f"{RNG_STATE_NAME}_*.pkl"))
    if not random_states:
        raise UserError(f"{checkpoint} has no {RNG_STATE_NAME}_0.pkl: without its random state the run cannot continue exactly")
    for path in [*sorted(checkpoint.glob("*.bin")), *random_states]:
        try:
            with warnings.catch_warnings():  # torch warns about a pickle protocol before it refuses the file
                warnings.simplefilter("ignore")
                load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike: one line naming the file
            kind = UnsafeCheckpoint if _calls_code(path) else UserError
            raise kind(f"{path} is damaged or holds more than tensors and plain data ({first_line(error)})") from None


def _calls_code(path: Path) -> bool:
    """A complete bare pickle (torch.save writes zip archives) that imports or calls something: planted, not damaged."""
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        return False
    try:
        opcodes = {opcode.name for opcode, _, _ in pickletools.genops(path.read_bytes())}
    except Exception:  # noqa: BLE001 - an opcode stream that does not parse is damage
        return False
    return bool(opcodes & {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"})


def verify_checkpoint(checkpoint: Path) -> TrainerState:
    """Every file a resume reads, read once here: a damaged or missing one is a UserError naming it."""
    from safetensors.torch import load_file

    try:
        state = read_state(checkpoint)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{checkpoint / CHECKPOINT_STATE} is damaged ({first_line(error)})") from None
    controlnet = state.recipe.get("controlnet")
    required = ["optimizer.bin", "scheduler.bin"]
    required += [CONTROLNET_FILE] if controlnet else []
    required += [ADAPTER_FILE] if not controlnet or controlnet.get("unet_lora") else []
    if (state.recipe.get("lora") or {}).get("text_encoder"):
        required.append(TEXT_ENCODER_ADAPTER_FILES[0])
    if (state.recipe.get("train") or {}).get("ema"):
        required.append(EMA_FILE)
    missing = [name for name in required if not (checkpoint / name).is_file()]
    if missing:
        raise UserError(f"{checkpoint} is missing {', '.join(missing)}")
    for path in sorted(checkpoint.glob("*.safetensors")):
        try:
            load_file(path)
        except Exception as error:  # noqa: BLE001 - SafetensorError, OSError: one line naming the file
            raise UserError(f"{path} is damaged ({first_line(error)})") from None
    check_safe_to_load(checkpoint)
    return state


def find_checkpoint(spec: str, run_dir: Path) -> tuple[Path, TrainerState, list[str]]:
    """`latest` (in the recipe's output folder), a checkpoint folder, or a run folder (its latest intact one).

    Returns the checkpoint, its state, and one line for each newer checkpoint passed over as damaged.
    A checkpoint named explicitly must be intact; a pickle that would run code is never passed over.
    """
    if spec != "latest":
        path = Path(spec).expanduser()
        if (path / CHECKPOINT_STATE).is_file():
            return path, verify_checkpoint(path), []
        if not path.is_dir():
            raise UserError(f"--resume {spec}: no such folder")
        run_dir = path
    found = complete_checkpoints(run_dir)
    if not found:
        raise UserError(f"--resume {spec}: no complete checkpoint in {run_dir / CHECKPOINTS_DIR}")
    skipped: list[str] = []
    for checkpoint in reversed(found):
        try:
            return checkpoint, verify_checkpoint(checkpoint), skipped
        except UnsafeCheckpoint:
            raise
        except UserError as damage:
            skipped.append(str(damage))
    raise UserError(f"--resume {spec}: no intact checkpoint in {run_dir / CHECKPOINTS_DIR}; the newest: {skipped[0]}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested recipe fields as one level of dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changes_that_break_resume(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted recipe keys that differ and that a bit-exact continuation cannot absorb."""
    old, new = BEFORE_THE_FIELD | flatten(saved), flatten(current)
    differing = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    return [key for key in differing if not key.startswith(CHANGEABLE_ON_RESUME)]


def check_resumable(state: TrainerState, current: dict[str, Any], checkpoint: Path) -> None:
    broken = changes_that_break_resume(state.recipe, current)
    if broken:
        saved = BEFORE_THE_FIELD | flatten(state.recipe)
        shown = ", ".join(f"{key} ({saved.get(key)!r} -> {flatten(current).get(key)!r})" for key in broken)
        back = " ".join(f"--set {key}={json.dumps(saved.get(key))}" for key in broken)
        raise UserError(
            f"cannot resume from {checkpoint}: the recipe changed in {shown}; set it back ({back}) or start a new run instead"
        )


def trained_state_dict(model) -> dict:
    """What a model trains: its adapter's tensors when it has one (never the frozen base) and any other weight that
    trains beside it (a fresh ControlNet's zero convolutions), else all its weights."""
    from archdiff.model.lora import is_adapter_key, lora_state_dict

    if getattr(model, "peft_config", None):
        beside = {
            key: p.detach().contiguous() for key, p in model.named_parameters() if p.requires_grad and not is_adapter_key(key)
        }
        return {**lora_state_dict(model), **beside}
    return {key: value.contiguous() for key, value in model.state_dict().items()}


def load_trained_state(model, tensors: dict) -> None:
    from peft.utils import set_peft_model_state_dict

    from archdiff.model.lora import is_adapter_key

    if getattr(model, "peft_config", None):
        set_peft_model_state_dict(model, {key: value for key, value in tensors.items() if is_adapter_key(key)})
        beside = {key: value for key, value in tensors.items() if not is_adapter_key(key)}
        if beside:
            model.load_state_dict(beside, strict=False)
    else:
        model.load_state_dict(tensors)


def register_adapter_hooks(accelerator, trained: dict[str, list]) -> None:
    """Save and load only what trains through accelerate's state machinery, never the frozen base.

    `trained` maps "unet", "controlnet" and "text" to the (possibly DDP-wrapped) models that train.
    """
    from safetensors.torch import load_file, save_file

    files = {"unet": (ADAPTER_FILE,), "controlnet": (CONTROLNET_FILE,), "text": TEXT_ENCODER_ADAPTER_FILES}
    saved = {name: model for part, models in trained.items() for name, model in zip(files[part], models, strict=False)}

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for name, model in saved.items():
                tensors = trained_state_dict(accelerator.unwrap_model(model))
                save_file({k: v.detach().cpu() for k, v in tensors.items()}, os.path.join(output_dir, name))
        weights.clear()  # accelerate would otherwise write the whole UNet and text encoder

    def load_hook(models, input_dir):
        for name, model in saved.items():
            load_trained_state(accelerator.unwrap_model(model), load_file(os.path.join(input_dir, name)))
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator, run_dir: Path, state: TrainerState, limit: int) -> Path:
    """Write a complete checkpoint atomically on every process; keep the newest `limit`."""
    folder = run_dir / CHECKPOINTS_DIR
    final = folder / checkpoint_name(state.step)
    partial = folder / f".{final.name}.partial"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if main:
            (partial / CHECKPOINT_STATE).write_text(json.dumps(state.__dict__, indent=1), encoding="utf-8")
            shutil.rmtree(final, ignore_errors=True)  # a step saved twice (Ctrl-C right after a checkpoint)
            os.replace(partial, final)
    except save_errors() as error:
        if main:
            shutil.rmtree(partial, ignore_errors=True)
        previous = complete_checkpoints(run_dir)
        kept = f"the last complete checkpoint, {previous[-1]}, is intact" if previous else "no earlier checkpoint exists"
        raise UserError(f"could not save the checkpoint for step {state.step}: {save_error_reason(error)}; {kept}") from None
    accelerator.wait_for_everyone()
    if main:
        for old in complete_checkpoints(run_dir)[:-limit]:
            shutil.rmtree(old)
    return final
