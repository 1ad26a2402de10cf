"""Samples: buckets of each image's own shape, repeats, drawing tiles, and what a training item holds."""

import pytest
import torch

from archdiff.config.schema import DataConfig
from archdiff.data.catalog import build_catalog
from archdiff.data.samples import SampleSet, collate, data_summary, expand_samples


def shape_of(width, height):
    return "wide" if width > 1.5 * height else "tall" if height > 1.5 * width else "square"


@pytest.fixture(scope="module")
def nasty(nasty_folder):
    folder, described = nasty_folder
    cfg = DataConfig(sources=[{"path": str(folder)}], resolution=128, buckets={"step": 16}, random_flip=True)
    return cfg, build_catalog(cfg), described


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")


def test_every_valid_image_lands_in_a_bucket_of_its_own_shape(nasty):
    cfg, catalog, described = nasty
    samples = expand_samples(catalog.records, cfg, train=True)
    assert sorted(s.record.name for s in samples) == sorted(described["valid"])
    for sample in samples:
        assert shape_of(*sample.bucket) == described["valid"][sample.record.name], sample.record.name
        assert sample.bucket[0] % 16 == 0 and sample.bucket[1] % 16 == 0
        assert sample.bucket[0] * sample.bucket[1] <= 128 * 128


def test_repeats_and_tiles(nasty):
    cfg, catalog, _ = nasty
    repeated = cfg.model_copy(update={"sources": [cfg.sources[0].model_copy(update={"repeats": 3})]})
    assert len(expand_samples(catalog.records, repeated, train=True)) == 3 * len(catalog.records)
    assert len(expand_samples(catalog.records, repeated, train=False)) == len(catalog.records), "evaluation sees each once"

    small = cfg.model_copy(update={"resolution": 32, "tile_drawings": 2.0})
    samples = expand_samples(catalog.records, small, train=True)
    tiles = [s for s in samples if s.tile]
    assert tiles and {s.record.kind for s in tiles} == {"drawing"}
    for tile in tiles:
        left, top, right, bottom = tile.tile
        assert (right - left, bottom - top) == tile.bucket, "tiles are cut at native resolution"
        assert right <= tile.record.width and bottom <= tile.record.height
    assert not [s for s in expand_samples(catalog.records, small, train=False) if s.tile]


def test_items_match_their_bucket_and_keep_size_and_crop(nasty, tokenizer):
    cfg, catalog, _ = nasty
    samples = expand_samples(catalog.records, cfg, train=True)
    dataset = SampleSet(catalog, samples, cfg, tokenizer, seed=0, train=True)
    for index, sample in enumerate(samples):
        item = dataset[(index, 0)]
        width, height = sample.bucket
        assert item["pixel_values"].shape == (3, height, width)
        assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
        assert item["original_size"].tolist() == [sample.record.height, sample.record.width]
        assert item["input_ids"].shape == (tokenizer.model_max_length,)
    same_bucket = [i for i, s in enumerate(samples) if s.bucket == samples[0].bucket][:2]
    batch = collate([dataset[(i, 0)] for i in same_bucket])
    assert batch["pixel_values"].shape[0] == len(same_bucket) and batch["crop_top_left"].shape == (len(same_bucket), 2)


def test_drawings_never_flip_photos_may(nasty, tokenizer):
    """Over many epochs a drawing's training pixels always equal its unaugmented pixels; a photo's sometimes mirror."""
    cfg, catalog, described = nasty
    samples = expand_samples(catalog.records, cfg, train=True)
    train = SampleSet(catalog, samples, cfg, tokenizer, seed=0, train=True)
    plain = SampleSet(catalog, samples, cfg, tokenizer, seed=0, train=False)
    index_of = {s.record.name: i for i, s in enumerate(samples)}
    text_drawing = index_of[described["text_drawing"]]
    reference = plain[text_drawing]["pixel_values"]
    assert all(torch.equal(train[(text_drawing, epoch)]["pixel_values"], reference) for epoch in range(40))

    photo = index_of[described["photos"][0]]
    reference = plain[photo]["pixel_values"]
    seen = [train[(photo, epoch)]["pixel_values"] for epoch in range(40)]
    mirrored = [torch.equal(pixels, reference.flip(-1)) for pixels in seen]
    assert 5 < sum(mirrored) < 35 and all(m or torch.equal(p, reference) for m, p in zip(mirrored, seen, strict=True))


def test_augmentation_is_a_function_of_seed_epoch_and_index(nasty, tokenizer):
    cfg, catalog, _ = nasty
    samples = expand_samples(catalog.records, cfg.model_copy(update={"center_crop": False}), train=True)
    first = SampleSet(catalog, samples, cfg.model_copy(update={"center_crop": False}), tokenizer, seed=5, train=True)
    again = SampleSet(catalog, samples, cfg.model_copy(update={"center_crop": False}), tokenizer, seed=5, train=True)
    for key in [(0, 0), (3, 1), (7, 9)]:
        assert torch.equal(first[key]["pixel_values"], again[key]["pixel_values"])
        assert torch.equal(first[key]["crop_top_left"], again[key]["crop_top_left"])


def test_summary_names_buckets_and_skipped_files(nasty):
    cfg, catalog, described = nasty
    samples = expand_samples(catalog.records, cfg, train=True)
    summary = data_summary(catalog, samples, [])
    assert f"{len(catalog.records)} images" in summary and "buckets:" in summary
    for name in described["broken"]:
        assert name in summary
