"""`archdiff data controls`: the paired folder it writes, checked file by file, and the inputs it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hostile import run_archdiff, tree_digest, user_error
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from archdiff.cli import app
from archdiff.config.schema import DataConfig
from archdiff.data.control_sets import write_control_set
from archdiff.data.controls import extract_control
from archdiff.data.images import open_image, resize
from archdiff.paths import bundled_datasets_dir

runner = CliRunner()
NOT_WRITABLE = "/sys/archdiff-controls-out"  # not writable even for root (sysfs)


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def check_pairs(folder: Path, binary: bool = True) -> list[dict]:
    """Every row names an image and a control that exist, the control an RGB PNG (black and white unless a depth map);
    no file unlisted."""
    rows = rows_of(folder)
    for row in rows:
        assert (folder / row["file_name"]).is_file() and (folder / row["control"]).is_file(), row
        with Image.open(folder / row["control"]) as control:
            assert control.format == "PNG" and control.mode == "RGB"
            assert set(np.unique(np.asarray(control))) <= {0, 255} or not binary
    listed = {row["file_name"] for row in rows} | {row["control"] for row in rows}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == listed | {"metadata.jsonl", "contact_sheet.png"}
    return rows


def test_facades_become_pairs_with_their_metadata_bytes_and_controls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "controls", "facades", "--type", "lines"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-2:] == ["32 controls written to facades-lines, skipped 0", "contact sheet: facades-lines/contact_sheet.png"]
    folder = tmp_path / "facades-lines"
    rows = check_pairs(folder)
    source_dir = bundled_datasets_dir() / "facades"
    source_rows = {row["file_name"]: row for row in map(json.loads, (source_dir / "metadata.jsonl").read_text().splitlines())}
    assert [row["file_name"] for row in rows] == [f"images/{name}" for name in source_rows]
    for row in rows:
        name = Path(row["file_name"]).name
        assert row == {**source_rows[name], "file_name": f"images/{name}", "control": f"controls/{Path(name).stem}.png"}
        original = (source_dir / name).read_bytes()
        assert (folder / row["file_name"]).read_bytes() == original
        with Image.open(folder / row["control"]) as control:
            expected = extract_control(open_image(original, 10**8), "lines")
            assert control.size == expected.size and np.array_equal(np.asarray(control), np.asarray(expected))
    with Image.open(folder / "contact_sheet.png") as sheet:
        assert sheet.width > 1000 and sheet.height > 1000  # 24 pairs, 3 to a row


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """A big photo, a grey-mode drawing, the same name in a subfolder, and a truncated PNG."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    photo = Image.new("RGB", (1600, 1000), (200, 190, 170))
    ImageDraw.Draw(photo).rectangle((300, 200, 1300, 800), outline=(40, 30, 20), width=12)
    photo.save(folder / "tower.jpg", quality=90)
    plan = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(plan).line((20, 20, 20, 180, 150, 180), fill=0, width=4)  # an L in the left half
    plan.save(folder / "plan.png")
    plan.save(folder / "sub" / "plan.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown upright as portrait
    Image.new("RGB", (120, 80), "white").save(folder / "phone.jpg", exif=exif)
    (folder / "broken.png").write_bytes((folder / "plan.png").read_bytes()[:60])
    rows = [
        {"file_name": "tower.jpg", "text": "a tower", "kind": "photo", "storeys": 9},
        {"file_name": "plan.png", "text": "a plan", "kind": "drawing"},
        {"file_name": "sub/plan.png", "text": "another plan", "kind": "drawing"},
        {"file_name": "phone.jpg", "text": "a phone photo"},
        {"file_name": "broken.png", "text": "cut short", "kind": "photo"},
    ]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_a_folder_with_a_broken_image_big_images_shrunk_and_names_kept_apart(tmp_path, monkeypatch, mixed_folder):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "controls", str(mixed_folder), "--type", "drawing", "-o", "out", "--max-side", "800"])
    assert result.exit_code == 0, result.output
    assert "  skipped broken.png: truncated or corrupt image" in result.stdout
    assert "4 controls written to out, skipped 1" in result.stdout
    rows = {row["text"]: row for row in check_pairs(tmp_path / "out")}
    assert rows["a tower"] == {
        "file_name": "images/tower.jpg",
        "control": "controls/tower.png",
        "text": "a tower",
        "kind": "photo",
        "storeys": 9,
    }
    plans = {(rows[text]["file_name"], rows[text]["control"]) for text in ("a plan", "another plan")}
    assert plans == {("images/plan.png", "controls/plan.png"), ("images/plan-2.png", "controls/plan-2.png")}  # one stem each
    with Image.open(tmp_path / "out" / "controls" / "tower.png") as control:
        assert control.size == (800, 500)  # shrunk to --max-side, the aspect ratio kept
        shrunk = resize(open_image(mixed_folder / "tower.jpg", 10**8), (800, 500), "photo")
        assert np.array_equal(np.asarray(control), np.asarray(extract_control(shrunk, "drawing")))
    assert (tmp_path / "out" / "images" / "tower.jpg").read_bytes() == (mixed_folder / "tower.jpg").read_bytes()  # not re-encoded
    with Image.open(tmp_path / "out" / "controls" / "phone.png") as control:
        assert control.size == (80, 120)  # the image as training opens it: EXIF orientation applied
    with Image.open(tmp_path / "out" / "controls" / "plan.png") as control:
        assert control.size == (300, 200)  # never enlarged
        white = np.asarray(control)[..., 0] > 0
        assert white[:, :100].any() and not white[:, 160:].any()  # not mirrored


def test_overwrite_replaces_only_an_earlier_control_set(tmp_path, monkeypatch, mixed_folder):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["data", "controls", str(mixed_folder), "-t", "drawing"]).exit_code == 0
    first = tree_digest(tmp_path / "mixed-drawing")
    again = runner.invoke(app, ["data", "controls", str(mixed_folder), "-t", "drawing"])
    assert "exists and is not empty; pass --overwrite" in str(again.exception)
    assert tree_digest(tmp_path / "mixed-drawing") == first
    replaced = runner.invoke(app, ["data", "controls", str(mixed_folder), "-t", "lines", "-o", "mixed-drawing", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert tree_digest(tmp_path / "mixed-drawing") != first
    check_pairs(tmp_path / "mixed-drawing")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = runner.invoke(app, ["data", "controls", str(mixed_folder), "-t", "lines", "-o", "notes", "--overwrite"])
    assert "is not a folder `data controls` wrote" in str(refused.exception)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize("replacing", [False, True], ids=["new", "overwrite"])
def test_ctrl_c_leaves_no_half_written_set(tmp_path, monkeypatch, mixed_folder, replacing):
    import archdiff.data.controls as controls

    out = tmp_path / "out"
    cfg = DataConfig(sources=[{"path": str(mixed_folder)}])
    if replacing:
        write_control_set(cfg, "canny", out)
    before = tree_digest(out) if replacing else None
    real, calls = controls.extract_control, []

    def interrupted(*args, **kwargs):  # Ctrl-C while the second image is being extracted
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(controls, "extract_control", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_control_set(cfg, "drawing", out)
    assert (tree_digest(out) if out.exists() else None) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mixed", *(["out"] if replacing else [])])


BAD_INPUTS = [
    pytest.param(["facades", "--type", "depthmap"], "choose one of lines, canny, drawing", id="unknown-type"),
    pytest.param(["facades", "--type", "none"], "choose one of lines, canny, drawing", id="type-none"),
    pytest.param(["no-such-set", "--type", "lines"], "is not a local folder", id="missing-src"),
    pytest.param(["facades", "--type", "lines", "-o", NOT_WRITABLE], "not writable", id="out-not-writable"),
    pytest.param(["facades", "-t", "canny", "--canny-low", "200", "--canny-high", "100"], "low <= high", id="canny-reversed"),
    pytest.param(["facades", "-t", "canny", "--canny-high", "300"], "low <= high <= 255", id="canny-over-255"),
    pytest.param(["facades", "-t", "lines", "--max-side", "10"], "--max-side 10 is too small", id="max-side-tiny"),
    pytest.param(["src", "-t", "lines", "-o", "src/lines"], "overlaps the data folder", id="out-inside-src"),
    pytest.param(["src", "-t", "depth"], "--type depth needs --depth-model", id="depth-without-model"),
    pytest.param(["src", "-t", "lines", "--depth-model", "src"], "for --type depth only", id="depth-model-without-depth"),
    pytest.param(
        ["src", "-t", "depth", "--depth-model", "no-model"], "depth model 'no-model' could not be loaded", id="no-depth-model"
    ),
]


@pytest.mark.parametrize(("args", "says"), BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, says):
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    Image.new("RGB", (64, 64), "white").save(work / "src" / "a.png")
    before = tree_digest(work)
    message = user_error(run_archdiff(work, tmp_path / "cache", "data", "controls", *args, timeout=120))
    assert says in message, message
    assert tree_digest(work) == before
    assert sorted(p.name for p in work.iterdir()) == ["src"]


def test_without_opencv_lines_are_refused_and_drawings_still_made(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    refused = run_archdiff(work, tmp_path / "cache", "data", "controls", "facades", "-t", "lines", hidden=("cv2",))
    assert "pip install 'archdiff[controls]'" in user_error(refused)
    assert not (work / "facades-lines").exists()
    made = run_archdiff(work, tmp_path / "cache", "data", "controls", "plans", "-t", "drawing", hidden=("cv2",))
    assert made.returncode == 0, made.stderr
    assert len(check_pairs(work / "plans-drawing")) == 32


def test_embedded_images_without_names_get_names_from_their_format(tmp_path, monkeypatch):
    """A saved (Hub-style) dataset holds image bytes, no paths: each gets a name and a suffix that matches its bytes."""
    import io

    from datasets import Dataset
    from datasets import Image as ImageFeature

    encoded = []
    for image_format in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), "white").save(buffer, format=image_format)
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    table = {"image": encoded, "text": ["a jpeg", "a png"]}
    Dataset.from_dict(table).cast_column("image", ImageFeature()).save_to_disk(str(tmp_path / "saved"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "controls", "saved", "-t", "canny"])
    assert result.exit_code == 0, result.output
    rows = {row["text"]: row for row in check_pairs(tmp_path / "saved-canny")}
    assert rows["a jpeg"]["file_name"] == "images/saved[0].jpg" and rows["a png"]["file_name"] == "images/saved[1].png"
    for row, original in zip(rows.values(), encoded, strict=True):
        assert (tmp_path / "saved-canny" / row["file_name"]).read_bytes() == original["bytes"]


def test_depth_maps_from_a_tiny_model(tmp_path, monkeypatch, mixed_folder):
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 37, "image_size": 64}
    layout = {"neck_hidden_sizes": [8, 16, 32, 32], "fusion_hidden_size": 16, "backbone_out_indices": [0, 1, 2, 3]}
    DPTForDepthEstimation(DPTConfig(**sizes, **layout, patch_size=16)).save_pretrained(tmp_path / "dpt")
    DPTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "dpt")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "controls", "mixed", "-t", "depth", "--depth-model", "dpt", "--max-side", "400"])
    assert result.exit_code == 0, result.output
    assert "4 controls written to mixed-depth, skipped 1" in result.stdout
    rows = {row["text"]: row for row in check_pairs(tmp_path / "mixed-depth", binary=False)}
    with Image.open(tmp_path / "mixed-depth" / rows["a tower"]["control"]) as control:
        grey = np.asarray(control)
        assert control.size == (400, 250) and (grey[..., 0] == grey[..., 2]).all() and grey.min() == 0 and grey.max() == 255
