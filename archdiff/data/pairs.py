"""Paired data for ControlNet runs: each target image's control image, named by a metadata column.

A folder's control column holds file names relative to the folder (the traversal rules of `file_name`);
a Hub dataset's holds images. Controls are checked at scan time like the targets, and more strictly:
a missing, unreadable or differently shaped control stops the run with one line, since a ControlNet
trained on misaligned pairs learns nothing useful and says nothing about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archdiff.errors import UserError

ASPECT_TOLERANCE = 0.01  # a control shrunk from its target may be a pixel off per side after rounding


@dataclass(frozen=True)
class PairedControl:
    """A target's control image: where its bytes are (an undecoded `datasets.Image` value), its content and size."""

    value: dict[str, Any]
    digest: str
    width: int
    height: int
    name: str


def named_control_files(folder: Path, metadata: Path, rows: list[tuple[int, dict[str, Any], Path]], column: str, resolve: bool):
    """The files a metadata file's control column names (so they are not reported as unlisted training images).

    With `resolve` (a ControlNet run), each name is checked like a `file_name` and rewritten to its full path.
    """
    root = folder.resolve()
    named: set[Path] = set()
    for number, row, _ in rows:
        name = row.get(column)
        if not isinstance(name, str) or not name:
            continue
        path = folder / name
        inside = not Path(name).is_absolute() and path.resolve().is_relative_to(root)
        if resolve and not inside:
            raise UserError(f"{metadata}: line {number}: {column} '{name}' points outside the data folder; refused")
        if resolve and not path.is_file():
            raise UserError(f"{metadata}: line {number}: {column} '{name}' does not exist")
        if inside:
            named.add(path.resolve())
        if resolve:
            row[column] = str(path)
    return named


def mappable(target: tuple[int, int], control: tuple[int, int]) -> bool:
    """Whether a control of this size covers its target exactly once scaled (the same shape, up to rounding)."""
    (width, height), (control_width, control_height) = target, control
    return abs(control_height * width / control_width - height) <= max(1.0, ASPECT_TOLERANCE * height)


def scan_companion(value: Any, name: str, label: str, target: tuple[int, int], scans, max_pixels: int, what: str):
    """A target's companion image (its `what`: control, mask), scanned like the target and checked for the target's
    shape: (its file name, content digest), or None when the row names none."""
    from archdiff.data.images import UnreadableImage

    if not value or not (value.get("path") or value.get("bytes")):
        return None
    shown = Path(value["path"]).name if value.get("path") else f"{name} ({what})"
    try:
        digest, width, height = scans.scan(value, max_pixels)
    except (UnreadableImage, OSError) as error:
        raise UserError(f"data '{label}': {name}: its {what} {shown} cannot be used: {error}") from None
    if not mappable(target, (width, height)):
        raise UserError(
            f"data '{label}': {name} is {target[0]}x{target[1]} but its {what} {shown} is {width}x{height}: "
            f"a {what} must have its image's shape (the same aspect ratio)"
        )
    return shown, digest, width, height


def scan_control(value: Any, name: str, label: str, target: tuple[int, int], scans, max_pixels: int) -> PairedControl | None:
    """The checked control of one target image, None when its row names none (the row is then skipped)."""
    found = scan_companion(value, name, label, target, scans, max_pixels, "control")
    if found is None:
        return None
    shown, digest, width, height = found
    return PairedControl(value, digest, width, height, shown)
