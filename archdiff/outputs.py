"""Where a command writes, checked before any data is read or model loaded: a bad -o costs seconds, not a model load."""

from __future__ import annotations

import tempfile
from pathlib import Path

from archdiff.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _nearest_existing(path: Path) -> Path:
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def writable(folder: Path) -> bool:
    """Whether a file can be created in `folder`, by trying (permission bits say nothing to root or on read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_output(path: Path, option: str, *, folder: bool, suffixes: tuple[str, ...] = ()) -> None:
    """`path` can become a folder (or a file) of ours: not a file where a folder goes (or the reverse), not inside a
    file, a known file type, and its nearest existing folder writable. Nothing is created here."""
    if path.exists() and folder and not path.is_dir():
        raise UserError(f"{option} '{path}' is a file, not a folder; choose a folder to write the output into")
    if path.is_dir() and not folder:
        raise UserError(f"{option} '{path}' is a folder; give a file name, e.g. {path / ('output' + (suffixes or ('',))[0])}")
    if suffixes and not folder and path.suffix.lower() not in suffixes:
        raise UserError(f"{option} '{path}' must end in one of {', '.join(suffixes)} (got '{path.suffix or 'no suffix'}')")
    ancestor = _nearest_existing(path if folder else path.parent)
    if not ancestor.is_dir():
        raise UserError(f"{option} '{path}' lies inside '{ancestor}', which is a file; '{ancestor}' is a file, not a folder")
    if not writable(ancestor):
        reason = f"'{ancestor}' is not writable (no write permission in '{ancestor}')"
        raise UserError(f"{option} '{path}' cannot be written: {reason}")
