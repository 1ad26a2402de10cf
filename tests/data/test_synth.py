"""The bundled synthetic sets are reproducible from the generator and show what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from archdiff.data import synth
from archdiff.data.synth import facades
from archdiff.paths import bundled_datasets_dir

SETS = ("facades", "plans")
MAX_TOTAL_BYTES = 3 * 1024 * 1024
COLUMNS = {
    "facades": {
        "file_name": str,
        "text": str,
        "kind": str,
        "storeys": int,
        "windows_per_storey": int,
        "material": str,
        "roof": str,
        "door": str,
        "balconies": bool,
        "wall_box": list,
        "width": int,
        "height": int,
    },
    "plans": {
        "file_name": str,
        "text": str,
        "kind": str,
        "rooms": int,
        "room_names": list,
        "doors": int,
        "windows": int,
        "north_arrow": bool,
        "scale_bar": bool,
        "width": int,
        "height": int,
    },
}


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synth.main([str(root)])
    return root


def test_generation_is_byte_identical_across_runs(regenerated: Path, tmp_path: Path) -> None:
    synth.generate_all(tmp_path)
    assert _tree(tmp_path) == _tree(regenerated)


@pytest.mark.parametrize("name", SETS)
def test_committed_set_matches_generator(regenerated: Path, name: str) -> None:
    """Metadata must match byte for byte and every image pixel for pixel.

    Pixels rather than PNG bytes, so a different zlib build cannot fail this
    while the drawn content is unchanged.
    """
    committed, fresh = bundled_datasets_dir() / name, regenerated / name
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in fresh.iterdir())
    assert (committed / "metadata.jsonl").read_bytes() == (fresh / "metadata.jsonl").read_bytes()
    for image_path in sorted(fresh.glob("*.png")):
        with Image.open(committed / image_path.name) as old, Image.open(image_path) as new:
            assert (old.mode, old.size, old.tobytes()) == (new.mode, new.size, new.tobytes()), image_path.name


@pytest.mark.parametrize("name", SETS)
def test_metadata_rows_point_at_images_with_all_columns(name: str) -> None:
    folder = bundled_datasets_dir() / name
    records = _records(folder)
    assert 24 <= len(records) <= 64
    assert sorted(r["file_name"] for r in records) == sorted(p.name for p in folder.glob("*.png"))
    for record in records:
        for column, kind in COLUMNS[name].items():
            assert isinstance(record[column], kind), (record["file_name"], column)
        assert record["text"].strip()
        assert record["kind"] == ("photo" if name == "facades" else "drawing")
        with Image.open(folder / record["file_name"]) as image:
            image.load()
            assert (image.mode, image.size) == ("RGB", (record["width"], record["height"]))


def test_bundled_sets_stay_small() -> None:
    total = sum(p.stat().st_size for name in SETS for p in (bundled_datasets_dir() / name).iterdir())
    assert total < MAX_TOTAL_BYTES


def test_facade_captions_state_the_metadata() -> None:
    for record in _records(bundled_datasets_dir() / "facades"):
        text = record["text"]
        assert f"{record['windows_per_storey']} windows" in text
        assert facades.MATERIAL_WORDS[record["material"]] in text
        assert f"{record['roof']} roof" in text
        assert ("balconies" in text) == record["balconies"]


def test_plan_captions_state_the_metadata() -> None:
    for record in _records(bundled_datasets_dir() / "plans"):
        text = record["text"]
        assert len(record["room_names"]) == record["rooms"]
        assert all(name in text for name in record["room_names"])
        assert f"{record['doors']} doors" in text
        assert f"{record['windows']} window" in text
        assert ("north arrow" in text) == record["north_arrow"]


@pytest.mark.parametrize(
    "material, looks_right",
    [
        ("brick", lambda r, g, b: r > g + 40 and r > b + 40),
        ("glass", lambda r, g, b: b > r + 25),
        ("render", lambda r, g, b: min(r, g, b) > 200),
    ],
)
def test_wall_colour_matches_material(material: str, looks_right) -> None:
    folder = bundled_datasets_dir() / "facades"
    walls = [r for r in _records(folder) if r["material"] == material]
    assert walls, f"no {material} facade in the set"
    for record in walls:
        with Image.open(folder / record["file_name"]) as image:
            median = ImageStat.Stat(image.crop(tuple(record["wall_box"]))).median
        assert looks_right(*median), (record["file_name"], median)


def test_top_storey_shows_the_stated_window_count() -> None:
    """Each window's upper pane is split by a glazing bar, so a row through it
    crosses two runs of the pane colour per window."""
    folder = bundled_datasets_dir() / "facades"
    for record in _records(folder):
        x0, y0, x1, y1 = record["wall_box"]
        storey_height = (y1 - y0) // record["storeys"]
        y = y0 + round(storey_height * 0.22) + 3
        with Image.open(folder / record["file_name"]) as image:
            row = [image.getpixel((x, y)) == facades.PANE_LIGHT for x in range(x0, x1)]
        runs = sum(1 for i, hit in enumerate(row) if hit and (i == 0 or not row[i - 1]))
        assert runs == 2 * record["windows_per_storey"], record["file_name"]


def test_plans_are_black_ink_on_white_paper() -> None:
    folder = bundled_datasets_dir() / "plans"
    for record in _records(folder):
        with Image.open(folder / record["file_name"]) as image:
            grey = image.convert("L")
        histogram, pixels = grey.histogram(), grey.width * grey.height
        assert sum(histogram[240:]) / pixels > 0.7, record["file_name"]
        assert sum(histogram[:30]) / pixels > 0.02, record["file_name"]
