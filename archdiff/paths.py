"""Where archdiff finds its recipes, bundled datasets and caches. Stdlib only."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    """The shipped `recipes` or `datasets` folder: the wheel's copy (archdiff/_bundled/NAME, see setup.py)
    when installed, else the source tree's NAME/ (a checkout, an editable install).

    The wheel's copy is looked for first: next to an installed package, site-packages/datasets is HF `datasets`.
    """
    packaged = PACKAGE_DIR / "_bundled" / name
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / name


def recipe_dirs() -> list[Path]:
    """Recipe search path: $ARCHDIFF_RECIPES, then ./recipes, then the shipped recipes."""
    dirs = [Path(p) for p in os.environ.get("ARCHDIFF_RECIPES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "recipes", _shipped("recipes")]
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def bundled_datasets_dir() -> Path:
    """The bundled image sets and datasets/manifests."""
    return _shipped("datasets")


def cache_dir() -> Path:
    """Built tiny models live here; $ARCHDIFF_CACHE overrides (tests point it at a temp dir)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "archdiff"
    return Path(os.environ.get("ARCHDIFF_CACHE", default))
