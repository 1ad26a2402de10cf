"""Where archdiff finds its recipes, bundled datasets and caches. Stdlib only."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def recipe_dirs() -> list[Path]:
    """Recipe search path: $ARCHDIFF_RECIPES, then ./recipes, then the checkout's recipes/."""
    dirs = [Path(p) for p in os.environ.get("ARCHDIFF_RECIPES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "recipes", REPO_ROOT / "recipes"]
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def bundled_datasets_dir() -> Path:
    return REPO_ROOT / "datasets"


def cache_dir() -> Path:
    """Built tiny models live here; $ARCHDIFF_CACHE overrides (tests point it at a temp dir)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "archdiff"
    return Path(os.environ.get("ARCHDIFF_CACHE", default))
