"""Resolve `--data` (bundled name, local folder, Hub dataset id) and load it through HF `datasets`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archdiff.config.schema import DataConfig
from archdiff.errors import UserError
from archdiff.paths import bundled_datasets_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def bundled_names() -> list[str]:
    root = bundled_datasets_dir()
    return sorted(p.name for p in root.iterdir() if (p / "metadata.jsonl").is_file()) if root.is_dir() else []


def _local_folder(source: str) -> Path | None:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source in bundled_names():
        return bundled_datasets_dir() / source
    return None


def _load_folder(folder: Path) -> Any:
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file()):
        raise UserError(f"data folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    disable_progress_bar()  # its "Downloading data" bars would only mislead for a local folder
    try:
        return load_dataset("imagefolder", data_dir=str(folder), split="train")
    finally:
        enable_progress_bar()


def _load_hub(source: str) -> Any:
    from datasets import load_dataset

    known = ", ".join(bundled_names())
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise UserError(f"data '{source}' is neither a local folder nor a bundled set ({known})")
    try:
        return load_dataset(source, split="train")
    except Exception as exc:  # noqa: BLE001 - offline, missing or private: the same fix for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"data '{source}' is not a local folder or bundled set ({known}), and the Hub could not provide it: {reason}"
        ) from None


@dataclass
class TrainingData:
    train: Any
    holdout: Any | None
    caption_column: str


def load_training_data(cfg: DataConfig, seed: int) -> TrainingData:
    """Load the images and captions, and split off the held-out part deterministically."""
    folder = _local_folder(cfg.source)
    dataset = _load_folder(folder) if folder else _load_hub(cfg.source)
    if "image" not in dataset.column_names:
        raise UserError(f"data '{cfg.source}' has no image column (columns: {', '.join(dataset.column_names)})")
    if cfg.caption_column not in dataset.column_names:
        raise UserError(
            f"data '{cfg.source}' has no caption column '{cfg.caption_column}' (columns: {', '.join(dataset.column_names)}); "
            "add a metadata.jsonl with file_name and text, or set data.caption_column"
        )
    n_holdout = round(len(dataset) * cfg.holdout)
    if cfg.holdout > 0 and len(dataset) >= 2:
        n_holdout = max(1, n_holdout)
    if n_holdout == 0:
        return TrainingData(dataset, None, cfg.caption_column)
    split = dataset.train_test_split(test_size=n_holdout, seed=seed, shuffle=True)
    return TrainingData(split["train"], split["test"], cfg.caption_column)
