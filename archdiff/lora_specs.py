"""What `--lora` names: a run folder, a .safetensors file or a Hub id, checked and fetched before any model loads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from archdiff.errors import UserError, first_line
from archdiff.hub_ids import is_hub_id
from archdiff.run_files import LORA_WEIGHTS, RECIPE_FILE
from archdiff.runs import read_recipe


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora WHERE[:SCALE]`: a run folder, a .safetensors file (diffusers or kohya keys) or a Hub id."""

    path: Path
    scale: float = 1.0
    hub_id: str | None = None  # `user/name` when the spec named no local path: the LoRA is fetched from the Hub

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        path, scale = text, 1.0
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                path, scale = head, float(tail)
            except ValueError:
                pass
            else:
                if not math.isfinite(scale):
                    raise UserError(f"--lora '{text}': the scale '{tail}' is not a finite number (e.g. {head}:0.8)")
        return cls(Path(path).expanduser(), scale, path if is_hub_id(path) else None)

    def location(self) -> tuple[str, str]:
        """(folder, file name) for `load_lora_weights`; a Hub LoRA is downloaded (or found in the HF cache) first."""
        if self.hub_id:
            return fetch_hub_lora(self.hub_id)
        if self.path.is_dir():
            weights = self.path / LORA_WEIGHTS
            if not weights.is_file():
                raise UserError(f"--lora '{self.path}' holds no LoRA ({LORA_WEIGHTS} is missing)")
            return str(self.path), LORA_WEIGHTS
        if self.path.is_file() and self.path.suffix == ".safetensors":
            return str(self.path.parent), self.path.name
        raise UserError(f"--lora '{self.path}' is not a run folder, a .safetensors LoRA file or a Hub id (user/name)")

    def local(self) -> LoraSpec:
        """This spec with a Hub id replaced by its downloaded file: checked, and fetched once."""
        folder, weight_name = self.location()
        return LoraSpec(Path(folder) / weight_name, self.scale)

    @property
    def label(self) -> str:
        return f"{self.path}:{self.scale:g}"


def fetch_hub_lora(repo_id: str) -> tuple[str, str]:
    """A Hub LoRA repo's weights: `pytorch_lora_weights.safetensors`, else its only .safetensors file (kohya uploads)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.safetensors"]))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: one line each
        reason = first_line(exc)
        raise UserError(f"--lora '{repo_id}' is no local path and could not be fetched from the Hub ({reason})") from None
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    if LORA_WEIGHTS in files or len(files) == 1:
        return str(folder), LORA_WEIGHTS if LORA_WEIGHTS in files else files[0]
    found = ", ".join(files) or "none"
    raise UserError(f"--lora '{repo_id}': expected {LORA_WEIGHTS} or a single .safetensors file in the repo (found: {found})")


def lora_recipe(folder: Path) -> dict:
    """A --lora run folder's recipe.yaml, checked: a broken one is one line naming the file."""
    path = folder / RECIPE_FILE
    if not path.is_file():
        raise UserError(f"'{folder}' has no {RECIPE_FILE}, so its base model is unknown; pass --base")
    return read_recipe(path)


def run_recipe(loras: list[LoraSpec]) -> dict:
    """The first --lora run folder's recipe: it names the base and the size the LoRA was trained at."""
    for lora in loras:
        if lora.path.is_dir():
            return lora_recipe(lora.path)
    return {}
