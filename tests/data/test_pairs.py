"""Paired data for ControlNet runs: the control follows its target through every bucket, crop, flip and rotation,
and a bad pair stops the run with one line."""

import json

import numpy as np
import pytest
from PIL import Image

from archdiff.config.schema import DataConfig
from archdiff.data.catalog import build_catalog
from archdiff.data.pairs import mappable
from archdiff.data.samples import SampleSet, expand_samples, sample_rng
from archdiff.errors import UserError

# (target size, control size, kind): the control at the target's size, at half size, and a third of it
PAIRS = [((150, 96), (150, 96), "photo"), ((240, 130), (120, 65), "photo"), ((99, 201), (33, 67), "drawing")]


def _dot_image(size, centre, radius):
    image = np.zeros((size[1], size[0], 3), np.uint8)
    x, y = centre
    image[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = 255
    return Image.fromarray(image)


def paired_folder(root, pairs, dot=(0.3, 0.6)):
    """Targets with one bright square at the relative position `dot`, each control with the same square scaled."""
    (root / "images").mkdir(parents=True)
    (root / "controls").mkdir()
    rows = []
    for index, (size, control_size, kind) in enumerate(pairs):
        centre = (round(dot[0] * size[0]), round(dot[1] * size[1]))
        control_centre = (round(dot[0] * control_size[0]), round(dot[1] * control_size[1]))
        _dot_image(size, centre, 6).save(root / "images" / f"{index}.png")
        _dot_image(control_size, control_centre, max(1, round(6 * control_size[0] / size[0]))).save(
            root / "controls" / f"{index}.png"
        )
        rows.append({"file_name": f"images/{index}.png", "control": f"controls/{index}.png", "text": "a dot", "kind": kind})
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def _peak(tensor) -> np.ndarray:
    """(row, column) of the bright square's centre of mass in a CHW image."""
    values = tensor.float().sum(0).numpy()
    values = np.where(values > values.max() / 2, values, 0)
    rows, columns = np.indices(values.shape)
    return np.array([(rows * values).sum(), (columns * values).sum()]) / values.sum()


@pytest.mark.parametrize("seed", range(6))
def test_a_control_pixel_lands_on_its_target_pixel_through_bucket_crop_flip_and_rotation(tmp_path, seed, tokenizer):
    folder = paired_folder(tmp_path / "pairs", PAIRS)
    cfg = DataConfig(
        sources=[{"path": str(folder)}],
        resolution=64,
        buckets={"step": 16},
        center_crop=False,
        random_flip=True,
        rotate_drawings=True,
        holdout=0.0,
    )
    catalog = build_catalog(cfg, controls=True)
    samples = expand_samples(catalog.records, cfg, train=True)
    dataset = SampleSet(catalog, samples, cfg, tokenizer, seed=seed, train=True, controls=True)
    ops = set()
    for index, sample in enumerate(samples):
        for epoch in range(4):
            item = dataset[(index, epoch)]
            target, control = _peak(item["pixel_values"] + 1), _peak(item["control_values"])
            assert np.abs(target - control).max() <= 1.5, (sample.record.name, epoch, target, control)
            ops.add(dataset.augmentation(sample, sample_rng(seed, epoch, index)))
    assert len(ops) > 1, "some items were flipped or rotated"


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")


def test_control_files_are_not_reported_as_unlisted_images(tmp_path):
    folder = paired_folder(tmp_path / "pairs", PAIRS[:2])
    catalog = build_catalog(DataConfig(sources=[{"path": str(folder)}]))
    assert catalog.skipped == []
    assert len(catalog.records) == 2 and all(record.control is None for record in catalog.records)


def test_a_row_without_a_control_is_skipped_with_the_reason(tmp_path):
    folder = paired_folder(tmp_path / "pairs", PAIRS)
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["control"] = None
    (folder / "metadata.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    catalog = build_catalog(DataConfig(sources=[{"path": str(folder)}]), controls=True)
    assert ("0.png", "no control image (column 'control' is empty)") in [(s.name, s.reason) for s in catalog.skipped]
    assert [record.name for record in catalog.records] == ["1.png", "2.png"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda folder: (folder / "controls" / "1.png").unlink(), r"line 2: control 'controls/1.png' does not exist"),
        (
            lambda folder: (folder / "controls" / "1.png").write_bytes(b"not a png"),
            r"1.png: its control 1.png cannot be used",
        ),
        (
            lambda folder: _set_control(folder, 1, "../outside.png"),
            r"line 2: control '../outside.png' points outside the data folder",
        ),
        (lambda folder: _set_control(folder, 1, "controls/0.png"), r"1.png is 240x130 but its control 0.png is 150x96"),
    ],
    ids=["missing", "unreadable", "outside", "other-shape"],
)
def test_a_bad_pair_is_one_line_naming_the_file(tmp_path, change, message):
    folder = paired_folder(tmp_path / "pairs", PAIRS)
    (tmp_path / "outside.png").write_bytes((folder / "controls" / "0.png").read_bytes())
    change(folder)
    with pytest.raises(UserError, match=message):
        build_catalog(DataConfig(sources=[{"path": str(folder)}]), controls=True)


def _set_control(folder, line, value):
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    rows[line]["control"] = value
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_source_without_controls_needs_an_extractor(tmp_path):
    with pytest.raises(UserError, match=r"has no control column 'control'.*data\.control\.type"):
        build_catalog(DataConfig(sources=[{"path": "facades"}]), controls=True)
    catalog = build_catalog(DataConfig(sources=[{"path": "facades"}], control={"type": "canny"}), controls=True)
    assert catalog.records and all(record.control is None for record in catalog.records)


def test_mappable_accepts_rounding_and_refuses_another_shape():
    assert mappable((4000, 3000), (1024, 768)) and mappable((4001, 3001), (1024, 768))
    assert mappable((99, 201), (33, 67))
    assert not mappable((240, 130), (150, 96)) and not mappable((512, 512), (512, 384))
