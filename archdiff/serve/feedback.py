"""The feedback store of `archdiff serve`: every image the studio generated and the rating a user gave it, in SQLite.

The results rated good become an imagefolder (`archdiff serve export-feedback`) that `archdiff train --data` reads,
so a user's picks train the next LoRA. SQLite in WAL mode with synchronous=FULL: a server killed mid-write (kill -9,
a power cut) loses at most the write in flight, never a result whose id was already returned. stdlib only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from archdiff.errors import UserError, first_line

STORE_FILE = "feedback.sqlite"
METADATA_FILE = "metadata.jsonl"
RATINGS = ("good", "bad")
SCHEMA_VERSION = 1
VERSION_TABLE = "archdiff_feedback"  # one row: the schema version; a database without it is not ours
EXPORT_COLUMNS = ("seed", "lora")  # settings copied into metadata.jsonl beside file_name and text
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id handed to a client is never reused
    created TEXT NOT NULL,
    prompt TEXT NOT NULL,
    settings TEXT NOT NULL,
    png BLOB NOT NULL,
    rating TEXT CHECK (rating IN ('good', 'bad')),
    rated TEXT
);
CREATE INDEX IF NOT EXISTS results_rating ON results (rating);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class FeedbackStore:
    """<folder>/feedback.sqlite: every generated image (PNG bytes), its prompt and settings, and its rating.

    One connection shared by the server's worker thread and its event loop, serialised by a lock; other processes
    (a second server, `export-feedback`) wait for SQLite's lock up to `timeout` seconds.
    """

    def __init__(self, folder: Path, timeout: float = 30.0):
        self.path = Path(folder) / STORE_FILE
        if Path(folder).exists() and not Path(folder).is_dir():
            raise UserError(f"--folder '{folder}' is a file, not a folder; choose a folder for the feedback store")
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise UserError(
                f"feedback store '{self.path}' cannot be opened: {first_line(error)}; choose another --folder"
            ) from None
        self._lock = threading.Lock()
        try:
            self._open()
        except sqlite3.Error as error:
            self._db.close()
            raise UserError(
                f"'{self.path}' is not a readable archdiff feedback database ({first_line(error)}); "
                "move it away or choose another --folder"
            ) from None
        except UserError:
            self._db.close()
            raise

    def _open(self) -> None:
        """Check the file is ours (or empty) before changing anything in it, then set WAL and create the schema."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and VERSION_TABLE not in tables:
            raise UserError(
                f"'{self.path}' is a SQLite database archdiff did not write (tables: {', '.join(sorted(tables))[:80]}); "
                "move it away or choose another --folder"
            )
        version = self._db.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone()[0] if tables else None
        if version is not None and version > SCHEMA_VERSION:
            raise UserError(
                f"'{self.path}' was written by a newer archdiff (store version {version}, this one reads "
                f"{SCHEMA_VERSION}); upgrade archdiff or choose another --folder"
            )
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("BEGIN IMMEDIATE")  # two processes opening a new store at once: one creates the schema
        try:
            for statement in filter(str.strip, SCHEMA.split(";")):
                self._db.execute(statement)
            if self._db.execute(f"SELECT COUNT(*) FROM {VERSION_TABLE}").fetchone()[0] == 0:
                self._db.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)", (SCHEMA_VERSION,))
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def add(self, png: bytes, prompt: str, settings: dict[str, Any]) -> int:
        """Store one result in one transaction; the id it returns is on disk (synchronous=FULL) when this returns."""
        row = (_now(), prompt, json.dumps(settings, ensure_ascii=False), png)
        with self._lock:
            cursor = self._db.execute("INSERT INTO results (created, prompt, settings, png) VALUES (?, ?, ?, ?)", row)
        return int(cursor.lastrowid)

    def rate(self, result_id: int, rating: str) -> None:
        """Rate a result "good" or "bad"; a later rating replaces the earlier one. An unknown id raises KeyError."""
        if rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)}, not {rating!r}")
        with self._lock:
            cursor = self._db.execute("UPDATE results SET rating = ?, rated = ? WHERE id = ?", (rating, _now(), result_id))
        if cursor.rowcount == 0:
            raise KeyError(result_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            total, good, bad = self._db.execute(
                "SELECT COUNT(*), COUNT(CASE WHEN rating = 'good' THEN 1 END), COUNT(CASE WHEN rating = 'bad' THEN 1 END) "
                "FROM results"
            ).fetchone()
        return {"results": total, "good": good, "bad": bad}

    def good(self) -> Iterator[tuple[int, bytes, str, dict[str, Any]]]:
        """(id, PNG bytes, prompt, settings) of each result rated good, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM results WHERE rating = 'good' ORDER BY id").fetchall()
        for (result_id,) in rows:  # one row at a time: a store of thousands of PNGs is never all in memory
            with self._lock:
                found = self._db.execute("SELECT png, prompt, settings FROM results WHERE id = ?", (result_id,)).fetchone()
            if found is not None:
                yield result_id, bytes(found[0]), found[1], json.loads(found[2])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_export(folder: Path) -> bool:
    """Whether `folder` holds only what export_good writes: metadata.jsonl and NNNNNN.png files."""
    names = [entry.name for entry in folder.iterdir()]
    pictures = [name for name in names if name != METADATA_FILE]
    return METADATA_FILE in names and all(name.endswith(".png") and name[:-4].isdigit() for name in pictures)


def _check_out(out: Path, overwrite: bool) -> None:
    """`out` can be written: not a file, and an existing non-empty folder only with --overwrite and only an earlier export."""
    from archdiff.outputs import check_output

    check_output(out, "DIR", folder=True)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"DIR '{out}' exists and is not empty; pass --overwrite to replace it, or choose another folder")
        if not _is_export(out):
            raise UserError(
                f"DIR '{out}' is not a folder export-feedback wrote (only {METADATA_FILE} and NNNNNN.png files); "
                "--overwrite replaces only those: choose another folder"
            )


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an earlier export (or empty folder) there is moved aside, then deleted."""
    from archdiff.run_files import move_into_place, staging_dir

    if not out.exists():
        move_into_place(staging, out)
        return
    with staging_dir(out.parent) as old:
        os.replace(out, old / out.name)
        try:
            move_into_place(staging, out)
        except BaseException:
            os.replace(old / out.name, out)
            raise


def export_good(folder: Path, out: Path, overwrite: bool = False) -> int:
    """The good results as an imagefolder: out/NNNNNN.png (the stored PNG bytes, unchanged: they carry their settings)
    + out/metadata.jsonl (file_name, text = the prompt, and the seed and LoRAs from the settings as columns).

    Written into a hidden folder beside `out` and renamed into place: a crash or full disk never leaves a half export.
    Returns how many images it wrote."""
    from archdiff.run_files import staging_dir, write_text_atomic

    store_path = Path(folder) / STORE_FILE
    if not store_path.is_file():
        raise UserError(f"no feedback store at '{store_path}'; pass the --folder `archdiff serve` wrote to")
    _check_out(out, overwrite)
    with FeedbackStore(folder) as store:
        counts = store.counts()
        if counts["good"] == 0:
            raise UserError(
                f"'{store_path}' holds no result rated good ({counts['results']} results, {counts['bad']} rated bad); "
                "rate results good in the studio first"
            )
        rows = []
        with staging_dir(out.parent) as staging:
            for result_id, png, prompt, settings in store.good():
                name = f"{result_id:06d}.png"
                (staging / name).write_bytes(png)
                rows.append({"file_name": name, "text": prompt, **{key: settings.get(key) for key in EXPORT_COLUMNS}})
            write_text_atomic(staging / METADATA_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            _swap_into_place(staging, out)
    return len(rows)
