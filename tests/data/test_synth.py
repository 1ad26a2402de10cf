"""The bundled synthetic sets are reproducible from the generator and show what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageFilter, ImageStat

from archdiff.data import synth
from archdiff.data.synth import facades
from archdiff.data.synth.facade_pairs import generate_facade_pairs
from archdiff.errors import UserError
from archdiff.paths import bundled_datasets_dir

SETS = ("facades", "plans")  # flat image folders; facade-sketches holds images/ and controls/
PAIRS = "facade-sketches"
MAX_TOTAL_BYTES = 3 * 1024 * 1024
MAX_PAIRS_BYTES = 600 * 1024
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


@pytest.mark.parametrize("name", [*SETS, PAIRS])
def test_committed_set_matches_generator(regenerated: Path, name: str) -> None:
    """Metadata must match byte for byte and every image pixel for pixel.

    Pixels rather than PNG bytes, so a different zlib build cannot fail this
    while the drawn content is unchanged.
    """
    committed, fresh = bundled_datasets_dir() / name, regenerated / name
    assert _tree(committed).keys() == _tree(fresh).keys()
    assert (committed / "metadata.jsonl").read_bytes() == (fresh / "metadata.jsonl").read_bytes()
    for image_path in sorted(fresh.rglob("*.png")):
        name = image_path.relative_to(fresh)
        with Image.open(committed / name) as old, Image.open(image_path) as new:
            assert (old.mode, old.size, old.tobytes()) == (new.mode, new.size, new.tobytes()), name


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
    sizes = {name: sum(p.stat().st_size for p in (bundled_datasets_dir() / name).rglob("*")) for name in [*SETS, PAIRS]}
    assert sum(sizes.values()) < MAX_TOTAL_BYTES
    assert sizes[PAIRS] < MAX_PAIRS_BYTES


@pytest.mark.parametrize("name", ["facades", PAIRS])
def test_facade_captions_state_the_metadata(name: str) -> None:
    for record in _records(bundled_datasets_dir() / name):
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


# -- facade-sketches: each render paired with its elevation line drawing ----------------------------


def _pairs(folder: Path) -> list[tuple[dict, Image.Image, Image.Image]]:
    pairs = []
    for record in _records(folder):
        with Image.open(folder / record["file_name"]) as render, Image.open(folder / record["control"]) as control:
            pairs.append((record, render.convert("RGB"), control.convert("RGB")))
    return pairs


def _expected_boxes(record: dict) -> tuple[list[tuple], list[tuple]]:
    """The wall and door boxes, and the window boxes, worked out from the metadata alone.

    Storeys share the wall height equally; the ground floor has one more slot than the upper
    ones, for the door. Window and door widths are capped (44 and 30 px at 256, scaled with
    the short side).
    """
    x0, y0, x1, y1 = record["wall_box"]
    n, m = record["storeys"], record["windows_per_storey"]
    scale, sh = min(record["width"], record["height"]) / 256, (y1 - y0) // n
    boxes, windows = [(x0, y0, x1, y1)], []
    for storey in range(n):
        slots = m + 1 if storey == 0 else m
        slot_w, top = (x1 - x0) / slots, y1 - (storey + 1) * sh + round(sh * 0.22)
        door_slot = {"left": 0, "right": m, "centre": m // 2}[record["door"]] if storey == 0 else None
        for i in range(slots):
            cx = x0 + slot_w * (i + 0.5)
            if i == door_slot:
                w = min(round(slot_w * 0.55), round(30 * scale))
                boxes.append((round(cx - w / 2), y1 - round(sh * 0.8), round(cx + w / 2), y1))
            else:
                w = min(round(slot_w * 0.46), round(44 * scale))
                windows.append((round(cx - w / 2), top, round(cx + w / 2), top + round(sh * 0.55)))
    assert len(windows) == n * m and len(boxes) == 2
    return boxes, windows


def _check_pair(record: dict, render: Image.Image, control: Image.Image) -> None:
    """Every box's outline is ink in the drawing, exactly on the box (the pixel outside is paper),
    and the render changes colour across the top and the upper half of each side."""
    boxes, windows = _expected_boxes(record)
    for x0, y0, x1, y1 in boxes + windows:
        perimeter = [(x, y) for x in range(x0, x1) for y in (y0, y1 - 1)] + [(x, y) for y in range(y0, y1) for x in (x0, x1 - 1)]
        assert all(control.getpixel(p) == (0, 0, 0) for p in perimeter), (record["file_name"], (x0, y0, x1, y1))
        qx, qy = x0 + (x1 - x0) // 4, y0 + (y1 - y0) // 4
        outside = [(x0 - 1, qy), (x1, qy)] + ([(qx, y0 - 1)] if (x0, y0, x1, y1) != boxes[0] else [])  # the roof sits on the wall
        assert all(control.getpixel(p) == (255, 255, 255) for p in outside), (record["file_name"], (x0, y0, x1, y1))
        sides = {  # each side's pixels, each with its neighbour just outside the box
            "left": [((x0, y), (x0 - 1, y)) for y in range(y0, (y0 + y1) // 2)],
            "right": [((x1 - 1, y), (x1, y)) for y in range(y0, (y0 + y1) // 2)],
            "top": [((x, y0), (x, y0 - 1)) for x in range(x0, x1)],
        }
        if (x0, y0, x1, y1) == boxes[0]:
            del sides["top"]  # the roof meets the wall there, and a glass wall's top joint can match a slate roof
        for side, pixels in sides.items():
            differ = [_contrast(render.getpixel(inside), render.getpixel(out)) > 12 for inside, out in pixels]
            assert sum(differ) >= 0.9 * len(differ), (record["file_name"], (x0, y0, x1, y1), side)


def _contrast(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True))


def _check_drawing(name: str, control: Image.Image) -> None:
    """Pure black lines on white paper: mostly paper, some ink, nothing grey, and no filled areas."""
    colours = {colour for _, colour in control.getcolors(2**24)}
    assert colours == {(0, 0, 0), (255, 255, 255)}, name
    ink = control.convert("1").point(lambda v: 255 - v)  # ink as 255
    pixels = control.width * control.height
    assert 0.01 < ink.histogram()[255] / pixels < 0.15, name
    # a 3x3 block of ink anywhere would be a fill or a line thicker than 2 px
    assert ink.filter(ImageFilter.MinFilter(3)).getbbox() is None, name


def test_pair_metadata_points_at_equal_size_files() -> None:
    folder = bundled_datasets_dir() / PAIRS
    records = _records(folder)
    assert 24 <= len(records) <= 64
    assert sorted(r["file_name"] for r in records) == sorted(f"images/{p.name}" for p in (folder / "images").glob("*.png"))
    assert sorted(r["control"] for r in records) == sorted(f"controls/{p.name}" for p in (folder / "controls").glob("*.png"))
    assert sorted(p.name for p in folder.iterdir()) == ["controls", "images", "metadata.jsonl"]
    for record in records:
        assert record["control"] == record["file_name"].replace("images/", "controls/", 1)
        for column, kind in COLUMNS["facades"].items():
            assert isinstance(record[column], kind), (record["file_name"], column)
        assert record["kind"] == "photo"
        assert (record["width"], record["height"]) == (256, 256)
        for path in (record["file_name"], record["control"]):
            with Image.open(folder / path) as image:
                assert (image.mode, image.size) == ("RGB", (256, 256)), path


def test_each_control_is_a_line_drawing_aligned_with_its_render() -> None:
    for record, render, control in _pairs(bundled_datasets_dir() / PAIRS):
        _check_drawing(record["control"], control)
        _check_pair(record, render, control)


@pytest.mark.parametrize("size", [(512, 512), (384, 256), (256, 384)])
def test_pairs_at_other_sizes_stay_aligned(tmp_path: Path, size: tuple[int, int]) -> None:
    generate_facade_pairs(tmp_path, count=4, seed=3, size=size)
    for record, render, control in _pairs(tmp_path):
        assert render.size == control.size == size == (record["width"], record["height"])
        _check_drawing(record["control"], control)
        _check_pair(record, render, control)


def test_a_rerun_with_fewer_pairs_leaves_no_stale_files(tmp_path: Path) -> None:
    generate_facade_pairs(tmp_path, count=3)
    generate_facade_pairs(tmp_path, count=2)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        "controls/facade_000.png",
        "controls/facade_001.png",
        "images/facade_000.png",
        "images/facade_001.png",
    ]
    assert len(_records(tmp_path)) == 2


def test_pair_size_out_of_range_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="64x512"):
        generate_facade_pairs(tmp_path, count=1, size=(64, 512))
    assert not any(tmp_path.iterdir())
