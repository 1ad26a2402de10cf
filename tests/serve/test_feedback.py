"""The feedback store of `archdiff serve`: results and ratings survive restarts, concurrent writers and kill -9,
and the results rated good export as an imagefolder `archdiff train --data` trains on."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from archdiff.errors import UserError
from archdiff.sample import png_info
from archdiff.serve.feedback import METADATA_FILE, STORE_FILE, FeedbackStore, export_good

REPO = Path(__file__).resolve().parents[2]


def settings_for(index: int) -> dict:
    """What the server stores per image: the settings `archdiff sample` writes into its PNGs."""
    return {
        "prompt": f"brick facade number {index}",
        "base": "tiny-sd15",
        "lora": ["facade:0.8"],
        "steps": 4,
        "guidance": 7.5,
        "seed": 1000 + index,
        "width": 64,
        "height": 64,
    }


def make_png(index: int) -> bytes:
    """A real 64x64 PNG, different per index, carrying its settings as text chunks like the server's."""
    image = Image.new("RGB", (64, 64), ((index * 37) % 256, (index * 91) % 256, 128))
    image.putpixel((index % 64, 0), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(settings_for(index)))
    return buffer.getvalue()


def add(store: FeedbackStore, index: int) -> int:
    settings = settings_for(index)
    return store.add(make_png(index), settings["prompt"], settings)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes: what a refusal must leave as it was."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_add_rate_counts_and_reopen(tmp_path):
    folder = tmp_path / "serve"
    with FeedbackStore(folder) as store:
        ids = [add(store, index) for index in range(4)]
        assert ids == sorted(ids) and len(set(ids)) == 4
        assert store.counts() == {"results": 4, "good": 0, "bad": 0}
        store.rate(ids[0], "good")
        store.rate(ids[1], "bad")
        store.rate(ids[2], "bad")
        store.rate(ids[2], "good")  # a later rating replaces the earlier one
        assert store.counts() == {"results": 4, "good": 2, "bad": 1}
        with pytest.raises(KeyError):
            store.rate(max(ids) + 1, "good")
        with pytest.raises(ValueError, match="rating must be one of good, bad"):
            store.rate(ids[3], "great")
    assert (folder / STORE_FILE).is_file()
    db = sqlite3.connect(folder / STORE_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()

    with FeedbackStore(folder) as store:  # a restarted server finds everything
        assert store.counts() == {"results": 4, "good": 2, "bad": 1}
        good = list(store.good())
        assert [row[0] for row in good] == [ids[0], ids[2]]
        for (_, png, prompt, settings), index in zip(good, (0, 2), strict=True):
            assert png == make_png(index) and prompt == settings_for(index)["prompt"] and settings == settings_for(index)
        assert add(store, 9) > max(ids), "ids keep growing after a restart"


def test_a_deleted_results_id_is_never_handed_out_again(tmp_path):
    """A client holding id N must never rate someone else's image: ids are not reused even after the last row goes."""
    with FeedbackStore(tmp_path) as store:
        first = add(store, 0)
    db = sqlite3.connect(tmp_path / STORE_FILE)
    db.execute("DELETE FROM results")
    db.commit()
    db.close()
    with FeedbackStore(tmp_path) as store:
        assert add(store, 1) > first


def test_concurrent_writers_lose_nothing(tmp_path):
    """The API's worker thread and event loop share one store; a second process has its own connection."""
    shared, other = FeedbackStore(tmp_path), FeedbackStore(tmp_path)
    written: dict[int, int] = {}
    errors: list[BaseException] = []

    def writer(store: FeedbackStore, first: int) -> None:
        try:
            for index in range(first, first + 15):
                result = add(store, index)
                store.rate(result, "good" if index % 3 else "bad")
                written[result] = index
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(store, n * 100)) for n, store in enumerate([shared, shared, shared, other])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(written) == 60, "every add returned its own id"
    good = sum(1 for index in written.values() if index % 3)
    assert shared.counts() == {"results": 60, "good": good, "bad": 60 - good}
    for result, png, prompt, settings in shared.good():
        assert (prompt, settings, png) == (
            settings_for(written[result])["prompt"],
            settings_for(written[result]),
            make_png(written[result]),
        )
    shared.close()
    other.close()


WRITER = """
import io, sys
from pathlib import Path
from PIL import Image
from archdiff.serve.feedback import FeedbackStore

store = FeedbackStore(Path(sys.argv[1]))
start = int(sys.argv[2])
print("ready", flush=True)
for index in range(start, start + 100000):
    image = Image.new("RGB", (64, 64), (index % 256, (index * 7) % 256, 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    result = store.add(buffer.getvalue() * 4, f"prompt {index}", {"seed": index, "lora": ["facade:1.0"]})
    store.rate(result, "good" if index % 2 else "bad")
    print(result, index, flush=True)
"""


def test_feedback_survives_kill_9_while_writing(tmp_path):
    """Must-hold: a server killed with SIGKILL mid-write leaves an intact database holding every result it answered."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    reported: dict[int, int] = {}
    for round_number, (kill_after, delay) in enumerate([(1, 0.0), (7, 0.002), (23, 0.005), (40, 0.013)]):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(round_number * 100000)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        for _ in range(kill_after):
            result, index = map(int, writer.stdout.readline().split())
            reported[result] = index
        time.sleep(delay)  # the writer keeps going: the kill lands at a different point of its loop each round
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        assert writer.returncode == -signal.SIGKILL

        db = sqlite3.connect(tmp_path / STORE_FILE)  # a fresh reader sees the state a restarted server would
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = {row[0]: row[1:] for row in db.execute("SELECT id, prompt, settings, png, rating FROM results")}
        db.close()
        assert set(reported) <= set(rows), f"round {round_number}: results whose add returned are missing"
        for result, (prompt, settings, png, rating) in rows.items():
            index = json.loads(settings)["seed"]
            assert prompt == f"prompt {index}"
            with Image.open(io.BytesIO(png)) as image:
                image.load()
                assert image.getpixel((0, 0)) == (index % 256, (index * 7) % 256, 3)
            if result in reported:
                assert reported[result] == index and rating == ("good" if index % 2 else "bad")
    with FeedbackStore(tmp_path) as store:  # and the server reopens it and carries on
        counts = store.counts()
        assert counts["results"] >= len(reported) and counts["good"] + counts["bad"] >= len(reported)
        assert add(store, 1) > max(reported)


@pytest.mark.parametrize("case", ["not sqlite", "foreign sqlite", "newer version", "folder is a file", "store is a folder"])
def test_a_file_that_is_not_our_store_is_refused_untouched(tmp_path, case):
    folder = tmp_path / "serve"
    folder.mkdir()
    store = folder / STORE_FILE
    if case == "not sqlite":
        store.write_bytes(b"these are not the results you are looking for\n" * 50)
    elif case == "foreign sqlite":
        db = sqlite3.connect(store)
        db.execute("CREATE TABLE invoices (id INTEGER)")
        db.commit()
        db.close()
    elif case == "newer version":
        FeedbackStore(folder).close()
        db = sqlite3.connect(store)
        db.execute("UPDATE archdiff_feedback SET version = 99")
        db.commit()
        db.close()
    elif case == "folder is a file":
        folder.rmdir()
        folder.write_text("a file where the store's folder goes")
    else:
        store.mkdir()
    before = tree(tmp_path)
    with pytest.raises(UserError) as refused:
        FeedbackStore(folder)
    message = str(refused.value)
    assert "\n" not in message and str(folder) in message
    expected = {
        "not sqlite": "not a readable archdiff feedback database",
        "foreign sqlite": "archdiff did not write (tables: invoices)",
        "newer version": "written by a newer archdiff (store version 99",
        "folder is a file": "is a file, not a folder",
        "store is a folder": "cannot be opened",
    }[case]
    assert expected in message
    assert tree(tmp_path) == before


def rated_store(folder: Path, good: int, bad: int = 1, unrated: int = 1) -> dict[int, int]:
    """A store with `good` results rated good (id -> index), and some rated bad or not at all."""
    ids = {}
    with FeedbackStore(folder) as store:
        for index in range(good + bad + unrated):
            result = add(store, index)
            if index < good:
                store.rate(result, "good")
                ids[result] = index
            elif index < good + bad:
                store.rate(result, "bad")
    return ids


def test_export_writes_the_good_results_unchanged(tmp_path):
    folder, out = tmp_path / "serve", tmp_path / "picked"
    ids = rated_store(folder, good=3)
    out.mkdir()  # an empty folder is taken
    assert export_good(folder, out) == 3
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{result:06d}.png" for result in ids] + [METADATA_FILE])
    rows = [json.loads(line) for line in (out / METADATA_FILE).read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"file_name": f"{result:06d}.png", "text": settings_for(index)["prompt"], "seed": 1000 + index, "lora": ["facade:0.8"]}
        for result, index in ids.items()
    ]
    for result, index in ids.items():
        png = (out / f"{result:06d}.png").read_bytes()
        assert png == make_png(index), "the stored bytes, with their settings chunks, unchanged"
        with Image.open(io.BytesIO(png)) as image:
            assert json.loads(image.text["seed"]) == 1000 + index
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no staging folder left behind"

    with FeedbackStore(folder) as store:  # rate again, export again over the earlier export
        store.rate(next(iter(ids)), "bad")
    assert export_good(folder, out, overwrite=True) == 2
    assert len(list(out.glob("*.png"))) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", ["missing store", "no good results", "out exists", "out is a file", "overwrite a non-export"])
def test_export_refusals_write_nothing(tmp_path, case):
    folder, out = tmp_path / "serve", tmp_path / "picked"
    if case != "missing store":
        rated_store(folder, good=0 if case == "no good results" else 2)
    if case == "out exists":
        export_good(folder, out)
    elif case == "out is a file":
        out.write_text("notes")
    elif case == "overwrite a non-export":
        out.mkdir()
        (out / "thesis.txt").write_text("years of work")
    before = tree(tmp_path)
    with pytest.raises(UserError) as refused:
        export_good(folder, out, overwrite=case == "overwrite a non-export")
    message = str(refused.value)
    expected = {
        "missing store": "no feedback store at",
        "no good results": "holds no result rated good (2 results, 1 rated bad)",
        "out exists": "exists and is not empty; pass --overwrite",
        "out is a file": "is a file, not a folder",
        "overwrite a non-export": "is not a folder export-feedback wrote",
    }[case]
    assert "\n" not in message and expected in message
    assert tree(tmp_path) == before


@pytest.mark.slow
def test_archdiff_train_accepts_the_export(tmp_path, tiny_base):
    """The loop closes: what users rated good trains the next LoRA through the real CLI."""
    folder, out, run_dir = tmp_path / "serve", tmp_path / "picked", tmp_path / "run"
    rated_store(folder, good=4, bad=2)
    assert export_good(folder, out) == 4
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "archdiff", "train", "--recipe", "demo-tiny", "--data", str(out), "--max-steps", "2"]
    command += ["--set", "validation.prompts=[]", "-o", str(run_dir)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = (run_dir / "data.txt").read_text()
    assert report.startswith(f"data: 4 images from {out}"), report
    assert "skipped" not in report
    assert (run_dir / "pytorch_lora_weights.safetensors").is_file()
