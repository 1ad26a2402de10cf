"""The run folder contract: which files a run writes, and how they are written and read back.

Shared by `train` (writes) and `sample`, `export`, `push`, `runs` (read); stdlib only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from archdiff.errors import UserError, first_line

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
RAW_LORA_WEIGHTS = "pytorch_lora_weights_raw.safetensors"  # with train.ema: the raw weights beside the averaged LoRA
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
BLANK_CONTROL_LOSS = "val_loss_blank_control"  # its column of a ControlNet run's held-out loss with blank controls
SAMPLES_DIR = "samples"
DATA_FILE = "data.txt"  # which images went to which bucket, and which were skipped and why
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"  # checkpoints/step-000250
CHECKPOINT_STATE = "trainer_state.json"  # written last: a checkpoint folder without it is incomplete
LOGS_DIR = "logs"  # TensorBoard / W&B
CONTROLNET_DIR = "controlnet"  # a ControlNet run's result: config.json + diffusion_pytorch_model.safetensors
EVAL_DIR = "eval"  # `archdiff eval`: report.json, report.html, the drawn images and each checkpoint's LoRA
EVAL_REPORT = "report.json"  # in EVAL_DIR: every score and the best checkpoint (`export --checkpoint best` reads it)
RUN_ENTRIES = (
    LORA_WEIGHTS,
    RAW_LORA_WEIGHTS,
    CONTROLNET_DIR,
    RECIPE_FILE,
    METRICS_FILE,
    SAMPLES_DIR,
    DATA_FILE,
    CHECKPOINTS_DIR,
    LOGS_DIR,
)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """A run's finished checkpoints, oldest first."""
    folder = run_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / CHECKPOINT_STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


def refuse_earlier_run(folder: Path, overwrite: bool) -> None:
    """Refuse to write over an earlier run unless asked; checked with the other inputs, before anything is written."""
    existing = [name for name in RUN_ENTRIES if (folder / name).exists()]
    if existing and not overwrite:
        raise UserError(
            f"output folder '{folder}' already holds a run ({', '.join(existing)}); "
            "choose another --output, or pass --overwrite to replace that run's files"
        )


def claim_run_dir(folder: Path) -> None:
    """Create the run folder for a new run: an earlier run's metrics, checkpoints, logs, samples, evaluation and trained
    weights go (so `--resume latest` can never pick up another run's state, nor `--lora RUN` another run's LoRA, nor
    `eval` another run's images); files archdiff did not write stay."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_FILE).unlink(missing_ok=True)
    (folder / LORA_WEIGHTS).unlink(missing_ok=True)
    (folder / RAW_LORA_WEIGHTS).unlink(missing_ok=True)
    for entry in (CHECKPOINTS_DIR, LOGS_DIR, SAMPLES_DIR, CONTROLNET_DIR, EVAL_DIR):
        shutil.rmtree(folder / entry, ignore_errors=True)


def save_errors() -> tuple[type[BaseException], ...]:
    """What writing weights raises when the disk fills: torch and safetensors do not raise OSError."""
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


def save_error_reason(error: BaseException) -> str:
    """A full disk as `No space left on device` whichever layer noticed it (OSError, torch, safetensors)."""
    return getattr(error, "strerror", None) or first_line(error)


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: a crash leaves the old file or the new one."""
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        move_into_place(Path(staging), path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def kohya_run_file(run_dir: Path, name: str) -> Path:
    """The run's LoRA in kohya's format, named after the run: the file ComfyUI and A1111 list."""
    return run_dir / f"{name}.safetensors"


def move_into_place(built: Path, final: Path) -> None:
    """Rename a finished file or folder to its real name, readable by other users as the umask allows.

    Temporary files (mkstemp, mkdtemp, safetensors' save_file) are created 0600/0700, which a WebUI
    running as another user (a Docker container) cannot read.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in [built, *(built.rglob("*") if built.is_dir() else ())]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    os.replace(built, final)


@contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A hidden temporary folder beside the destination: write there, then `os.replace` into place,
    so a crash never leaves a half-written file or folder under the real name."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, flushed at once so a crash loses nothing."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, **row: Any) -> None:
        if self.path is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """Every row; a last line cut short (the run was killed mid-write) is dropped, damage elsewhere is named."""
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                if number == len(lines):
                    break
                raise UserError(f"{path} line {number} is not JSON: {line[:60]!r}") from None
        return rows

    @staticmethod
    def last_step(path: Path) -> int:
        """The last logged step, read while a run may be appending (-1 when nothing is logged or readable yet)."""
        try:
            rows = MetricsLog.read(path)
        except (OSError, ValueError, UserError):
            return -1
        return rows[-1]["step"] if rows else -1

    @staticmethod
    def read_if_exists(path: Path | None) -> list[dict[str, Any]]:
        return MetricsLog.read(path) if path is not None and path.is_file() else []

    def keep_until(self, step: int) -> None:
        """Drop rows after `step`: a resumed run rewrites what the stopped one logged past its checkpoint."""
        if self.path is None:
            return
        rows = [row for row in self.read_if_exists(self.path) if row["step"] <= step]
        write_text_atomic(self.path, "".join(json.dumps(row) + "\n" for row in rows))
