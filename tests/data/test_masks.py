"""Loss masks: read from a mask column or the alpha channel, checked at scan time, following the image pixel by pixel."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from archdiff.config.schema import DataConfig, SourceConfig
from archdiff.data.catalog import build_catalog
from archdiff.data.images import apply_augmentation
from archdiff.data.masks import area_downsample, latent_mask, tinted
from archdiff.data.samples import SampleSet, crop_geometry, expand_samples, prepared_image, prepared_mask, sample_rng
from archdiff.errors import UserError


class Tokens:
    """A stand-in tokenizer: these tests look at pixels and masks, not captions."""

    model_max_length = 4

    def __call__(self, captions, **_):
        return type("Ids", (), {"input_ids": torch.zeros(len(captions), 4, dtype=torch.long)})


def write_folder(root, images, masks=None, kinds=None):
    """PNG images (arrays) with metadata.jsonl; `masks[i]` an array saved beside them, "" for an empty cell."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"im{i}.png")
        row = {"file_name": f"im{i}.png", "text": "a facade", "kind": (kinds or ["photo"] * len(images))[i]}
        if masks is not None:
            mask = masks[i]
            if isinstance(mask, np.ndarray):
                Image.fromarray(mask).save(root / f"mask{i}.png")
                mask = f"mask{i}.png"
            row["mask"] = mask
        rows.append(row)
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def noise(rng, width, height):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_area_downsample_averages_each_block():
    weights = np.random.default_rng(0).random((16, 24))
    expected = np.array([[weights[8 * r : 8 * r + 8, 8 * c : 8 * c + 8].mean() for c in range(3)] for r in range(2)])
    assert np.allclose(area_downsample(weights), expected)
    half = np.zeros((16, 16))
    half[:, :4] = 1.0  # a quarter of the first column of cells learns
    assert area_downsample(half).tolist() == [[0.5, 0.0], [0.5, 0.0]]
    with pytest.raises(ValueError):
        area_downsample(np.ones((12, 16)))
    assert torch.equal(latent_mask(None, (32, 16)), torch.ones(1, 2, 4)), "no mask: every latent learns"
    grey = Image.fromarray(np.full((16, 32), 51, np.uint8))
    assert torch.allclose(latent_mask(grey, (32, 16)), torch.full((1, 2, 4), 0.2))


def test_the_mask_follows_the_image_through_bucket_crop_flip_rotation_and_tiles(tmp_path, monkeypatch):
    """The mask is the image's red channel: after every transform it must still be exactly the prepared image's red."""
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    shapes = [(100, 70, "photo"), (70, 130, "photo"), (64, 64, "drawing"), (300, 300, "drawing"), (90, 90, "drawing")]
    images = [noise(rng, w, h) for w, h, _ in shapes]
    folder = write_folder(tmp_path / "data", images, [image[..., 0] for image in images], [kind for *_, kind in shapes])
    cfg = DataConfig(
        sources=[{"path": str(folder), "mask_column": "mask"}],
        resolution=64,
        buckets={"step": 16},
        center_crop=False,
        random_flip=True,
        rotate_drawings=True,
        tile_drawings=2.0,
        holdout=0,
    )
    catalog = build_catalog(cfg)
    assert len(catalog.records) == len(shapes), "mask files are not training images"
    samples = expand_samples(catalog.records, cfg, train=True)
    train = SampleSet(catalog, samples, cfg, Tokens(), seed=3, train=True)
    seen = set()
    for epoch in range(4):
        for index, sample in enumerate(samples):
            rng_ = sample_rng(3, epoch, index)
            size, _, crop = crop_geometry(sample, False, rng_)
            op = train.augmentation(sample, rng_)
            image = apply_augmentation(prepared_image(catalog, sample, cfg.max_pixels, "", (size, crop)), op)
            mask = prepared_mask(catalog, sample, cfg.max_pixels, op, (size, crop))
            assert np.array_equal(np.asarray(image)[..., 0], np.asarray(mask)), (sample.record.name, op, sample.tile)
            item = train[(index, epoch)]
            red = ((item["pixel_values"][0] + 1) * 127.5).round().numpy() / 255.0
            assert torch.allclose(item["loss_mask"], torch.from_numpy(area_downsample(red)).float()[None], atol=1e-6)
            seen |= {op or "none", "tile" if sample.tile else "whole", "cropped" if crop != (0, 0) else "uncropped"}
    assert seen >= {"none", "flip", "rot90", "rot180", "rot270", "tile", "whole", "cropped"}


def test_alpha_masks_empty_cells_and_smaller_masks(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    alpha = np.zeros((64, 64), np.uint8)
    alpha[:, 32:] = 255
    rgba = np.dstack([noise(rng, 64, 64), alpha])
    folder = tmp_path / "alpha"
    folder.mkdir()
    Image.fromarray(rgba, "RGBA").save(folder / "cut.png")
    Image.fromarray(noise(rng, 64, 64)).save(folder / "opaque.png")
    (folder / "metadata.jsonl").write_text('{"file_name": "cut.png", "text": "a"}\n{"file_name": "opaque.png", "text": "b"}\n')
    cfg = DataConfig(sources=[{"path": str(folder), "mask_alpha": True}], resolution=64, holdout=0)
    catalog = build_catalog(cfg)
    items = SampleSet(catalog, expand_samples(catalog.records, cfg, True), cfg, Tokens(), 0, True)
    masks = {record.name: item for record, item in zip(catalog.records, items, strict=True)}
    assert masks["cut.png"]["loss_mask"][0].tolist() == [[0.0] * 4 + [1.0] * 4] * 8, "transparent = ignored"
    assert torch.equal(masks["opaque.png"]["loss_mask"], torch.ones(1, 8, 8)), "no alpha channel: learns everywhere"

    small = np.zeros((32, 48), np.uint8)
    small[16:] = 255  # the lower half learns, drawn at half the image's resolution
    folder = write_folder(tmp_path / "column", [noise(rng, 96, 64), noise(rng, 64, 64)], [small, ""])
    cfg = DataConfig(sources=[{"path": str(folder), "mask_column": "mask"}], resolution=64, buckets={"enabled": False}, holdout=0)
    catalog = build_catalog(cfg)
    assert catalog.records[1].mask is None, "an empty cell learns everywhere"
    items = SampleSet(catalog, expand_samples(catalog.records, cfg, False), cfg, Tokens(), 0, False)
    expected = torch.tensor([[0.0] * 8] * 4 + [[1.0] * 8] * 4)[None]
    assert torch.allclose(items[0]["loss_mask"], expected, atol=0.05), "scaled up to the image: only the edge blends"
    assert torch.equal(items[1]["loss_mask"], torch.ones(1, 8, 8))


def test_bad_masks_are_refused_at_scan_time_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)

    def scan(name, masks, **source):
        folder = write_folder(tmp_path / name, [noise(rng, 64, 48)], masks)
        return build_catalog(DataConfig(sources=[{"path": str(folder), "mask_column": "mask", **source}], resolution=64))

    with pytest.raises(UserError, match=r"im0.png is 64x48 but its mask mask0.png is 48x48"):
        scan("square", [np.zeros((48, 48), np.uint8)])
    folder = write_folder(tmp_path / "broken", [noise(rng, 64, 48)], ["bad.png"])
    (folder / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"its mask bad.png cannot be used: not an image"):
        build_catalog(DataConfig(sources=[{"path": str(folder), "mask_column": "mask"}], resolution=64))
    with pytest.raises(UserError, match=r"mask '../outside.png' points outside the data folder"):
        scan("outside", ["../outside.png"])
    with pytest.raises(UserError, match=r"mask 'gone.png' does not exist"):
        scan("gone", ["gone.png"])
    with pytest.raises(UserError, match=r"has no mask column 'masks' \(columns: .*mask"):
        scan("column", [np.zeros((48, 64), np.uint8)], mask_column="masks")
    with pytest.raises(ValidationError, match="mask_column and mask_alpha are both set"):
        SourceConfig(path="x", mask_column="mask", mask_alpha=True)
    with pytest.raises(ValidationError, match="mask_column 'control' is also the image or control column"):
        SourceConfig(path="x", mask_column="control")


def test_tint_marks_what_the_mask_ignores():
    image = Image.new("RGB", (4, 2), (0, 0, 255))
    mask = Image.fromarray(np.array([[255, 255, 0, 0], [255, 255, 0, 0]], np.uint8))
    pixels = np.asarray(tinted(image, mask))
    assert pixels[:, :2].tolist() == [[[0, 0, 255]] * 2] * 2, "learnt pixels unchanged"
    assert pixels[:, 2:].tolist() == [[[110, 15, 142]] * 2] * 2, "ignored pixels half red"
    assert tinted(image, None) is image


def test_cached_masks_are_exactly_the_prepared_ones(tmp_path, monkeypatch):
    import archdiff.data.samples as samples
    from archdiff.data.cache import Caches, TensorCache, fill_masks

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(3)
    images = [noise(rng, 96, 64), noise(rng, 64, 64), noise(rng, 64, 64)]
    folder = write_folder(tmp_path / "data", images, [images[0][..., 1], "", images[2][..., 2]], ["photo", "photo", "drawing"])
    cfg = DataConfig(
        sources=[{"path": str(folder), "mask_column": "mask"}], resolution=64, random_flip=True, rotate_drawings=True, holdout=0
    )
    catalog = build_catalog(cfg)
    train = SampleSet(catalog, expand_samples(catalog.records, cfg, True), cfg, Tokens(), seed=0, train=True)
    keys = [(index, epoch) for epoch in range(6) for index in range(len(train))]
    prepared = [train[key]["loss_mask"] for key in keys]
    caches = Caches(None, None, masks=TensorCache(tmp_path / "masks"))
    fill_masks(caches.masks, [train], caches)
    assert caches.report() == "cache: masks 6 encoded, 0 reused", "photo: plain, flipped; drawing: 4 rotations; no mask: none"
    train.caches = caches
    monkeypatch.setattr(samples, "prepared_mask", lambda *args: pytest.fail("a cached mask was prepared again"))
    assert all(torch.equal(train[key]["loss_mask"], mask) for key, mask in zip(keys, prepared, strict=True))
