"""Manifests: small YAML files in datasets/manifests that describe public Hub datasets worth training on.

A manifest names the Hub id, split, image column, kind and caption recipe of one dataset, so
`--data cmp-facades` works without the user knowing the dataset's layout. It also lists the
dataset's columns, so a caption that names a missing column fails offline, not after a download.
Stdlib, yaml and pydantic only: `archdiff data list` must stay instant.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from archdiff.config.load import describe_error, read_yaml_mapping
from archdiff.config.schema import CaptionConfig, Section
from archdiff.data.captions import caption_columns
from archdiff.errors import UserError
from archdiff.paths import bundled_datasets_dir

NAME_PATTERN = r"[a-z0-9][a-z0-9-]*"


class Manifest(Section):
    """One public Hub dataset: where it is, which columns hold what, and how to caption it."""

    name: str = Field(pattern=f"^{NAME_PATTERN}$", description="The `--data` name; must equal the file stem.")
    id: str = Field(pattern=r"^[^/\s]+/[^/\s]+$", description="Hub dataset id, owner/name.")
    split: str = "train"
    image_column: str = "image"
    control_column: str | None = Field(None, description="The column holding each row's control image (paired sets).")
    kind: Literal["photo", "drawing"]
    columns: list[str] = Field(min_length=1, description="The dataset's columns, so captions can be checked offline.")
    caption: CaptionConfig
    licence: str = Field(min_length=1, description="Short licence note; caveats go in `note`.")
    url: str = Field(pattern=r"^https://", description="The dataset's page.")
    description: str = Field(min_length=1)
    note: str | None = None

    @model_validator(mode="after")
    def _columns_exist(self):
        if self.image_column not in self.columns:
            raise ValueError(f"image_column '{self.image_column}' is not one of the columns ({', '.join(self.columns)})")
        if self.control_column is not None and (
            self.control_column not in self.columns or self.control_column == self.image_column
        ):
            raise ValueError(
                f"control_column '{self.control_column}' is not one of the other columns ({', '.join(self.columns)})"
            )
        needed = caption_columns(self.caption)
        missing = [name for name in needed if name not in self.columns]
        if missing:
            where = "caption.template fields" if self.caption.template else "caption.column"
            raise ValueError(f"{where} {', '.join(missing)} not among the columns ({', '.join(self.columns)})")
        return self


def manifests_dir() -> Path:
    return bundled_datasets_dir() / "manifests"


def load_manifest(path: Path) -> Manifest:
    """Read and validate one manifest file; every problem is a UserError naming the file and the field."""
    raw = read_yaml_mapping(path, "manifest")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as error:
        raise UserError(f"manifest {path}: {'; '.join(describe_error(e, Manifest) for e in error.errors())}") from None
    if manifest.name != path.stem:
        raise UserError(f"manifest {path}: 'name' is '{manifest.name}' but must equal the file name '{path.stem}'")
    return manifest


def load_manifests(folder: Path | None = None) -> list[Manifest]:
    """Every manifest in `folder` (default: the bundled datasets/manifests), sorted by name."""
    folder = folder or manifests_dir()
    if not folder.is_dir():
        return []
    return sorted((load_manifest(path) for path in folder.glob("*.yaml")), key=lambda m: m.name)


def find_manifest(name: str) -> Manifest | None:
    """The bundled manifest called `name`, or None; only that one file is read, so a broken neighbour can't interfere."""
    path = manifests_dir() / f"{name}.yaml"
    if not re.fullmatch(NAME_PATTERN, name) or not path.is_file():
        return None
    return load_manifest(path)
