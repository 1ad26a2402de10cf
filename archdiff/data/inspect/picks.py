"""Which images both commands show, and the folder name their outputs go under: the same on every run."""

from __future__ import annotations

import re
from pathlib import Path


def safe_name(data: str) -> str:
    """A folder name for DATA's outputs: a local folder's own name, or the set name or Hub id with `/` as `-`."""
    path = Path(data).expanduser()
    text = path.resolve().name if path.is_dir() else data
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"


def spread(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over range(total), the first included: the same picks on every run."""
    if total <= count:
        return list(range(total))
    return [i * total // count for i in range(count)]
