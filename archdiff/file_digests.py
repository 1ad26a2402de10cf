"""Content digests of large files, remembered by path, size and modification time.

Caches key on what a base model's files hold (0.4 GB of VAE and text encoder for SD 1.5, about 7 GB
for SDXL); reading them at every start costs seconds to minutes, so an unchanged file is hashed once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from archdiff.paths import cache_dir

DIGESTS_VERSION = 1


def file_stamp(path: Path) -> str:
    """Resolved path, size and modification time: changes whenever the file is rewritten."""
    path = path.resolve()
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


class FileDigests:
    """sha256 of files by stamp, in one JSON file; a damaged or missing store just means hashing again."""

    def __init__(self, path: Path):
        self.path = path
        self.known: dict[str, str] = {}
        self.changed = False
        try:
            self.known = dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            pass

    @classmethod
    def default(cls) -> FileDigests:
        return cls(cache_dir() / "digests" / f"files-v{DIGESTS_VERSION}.json")

    def of(self, path: Path) -> str:
        stamp = file_stamp(path)
        if stamp not in self.known:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
            self.known[stamp] = digest.hexdigest()
            self.changed = True
        return self.known[stamp]

    def save(self) -> None:
        """Write the store, dropping entries of files that are gone (tests and tiny models come and go)."""
        from archdiff.run_files import write_text_atomic

        if not self.changed:
            return
        alive = {stamp: digest for stamp, digest in self.known.items() if Path(stamp.split("|")[0]).exists()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(alive, indent=0))
        self.changed = False


def folder_digest(folder: Path, salt: str = "") -> str:
    """A folder's identity from its files' contents (not its subfolders): what a model folder holds, hashed once per change."""
    digests = FileDigests.default()
    digest = hashlib.sha256(salt.encode())
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f"{path.name}|{digests.of(path)}".encode())
    digests.save()
    return digest.hexdigest()[:20]
