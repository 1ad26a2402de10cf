"""The catalog: every image opened once, broken ones reported by name, and the held-out split."""

import pytest

from archdiff.config.schema import DataConfig
from archdiff.data.catalog import ImageRecord, build_catalog, split_holdout
from archdiff.errors import UserError


def records(groups):
    return [
        ImageRecord(0, i, f"img{i}.png", 64, 64, "photo", f"hash{i}", {"building_id": group}) for i, group in enumerate(groups)
    ]


def test_nasty_folder_reports_both_broken_files_and_keeps_every_valid_one(nasty_folder):
    folder, described = nasty_folder
    catalog = build_catalog(DataConfig(sources=[{"path": str(folder)}]))
    assert sorted(s.name for s in catalog.skipped) == sorted(described["broken"])
    assert sorted(r.name for r in catalog.records) == sorted(described["valid"])
    reasons = {s.name: s.reason for s in catalog.skipped}
    assert any("empty" in reason for reason in reasons.values())
    assert any("truncated" in reason for reason in reasons.values())


def test_sizes_are_after_exif_rotation(nasty_folder):
    folder, described = nasty_folder
    catalog = build_catalog(DataConfig(sources=[{"path": str(folder)}]))
    for record in catalog.records:
        shape = "wide" if record.width > 1.5 * record.height else "tall" if record.height > 1.5 * record.width else "square"
        assert shape == described["valid"][record.name], record.name


def test_kinds_come_from_metadata_or_the_source(nasty_folder):
    folder, described = nasty_folder
    catalog = build_catalog(DataConfig(sources=[{"path": str(folder)}]))
    kinds = {r.name: r.kind for r in catalog.records}
    assert {kinds[name] for name in described["drawings"] if name in kinds} == {"drawing"}
    forced = build_catalog(DataConfig(sources=[{"path": str(folder), "kind": "photo"}]))
    assert {r.kind for r in forced.records} == {"photo"}


def test_pixel_limit_refuses_large_images_by_name(nasty_folder):
    folder, _ = nasty_folder
    catalog = build_catalog(DataConfig(sources=[{"path": str(folder)}], max_pixels=15_000))
    over = [s for s in catalog.skipped if "max_pixels" in s.reason]
    assert over and all(r.width * r.height <= 15_000 for r in catalog.records)


def test_several_sources_mix():
    catalog = build_catalog(DataConfig(sources=[{"path": "facades"}, {"path": "plans", "repeats": 2}]))
    assert len(catalog.records) == 64
    assert {r.kind for r in catalog.records if r.source == 1} == {"drawing"}
    assert len({r.content_hash for r in catalog.records}) == 64


def test_no_usable_image_is_a_user_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty.txt").write_text("a caption")
    with pytest.raises(UserError, match=r"no usable images \(1 skipped: empty.png: empty file"):
        build_catalog(DataConfig(sources=[{"path": str(tmp_path)}]))


def test_holdout_is_seeded_and_sized():
    items = records(range(20))
    train, held = split_holdout(items, 0.2, None, seed=3)
    assert len(held) == 4 and len(train) == 16 and set(train).isdisjoint(held)
    assert split_holdout(items, 0.2, None, seed=3) == (train, held)
    assert split_holdout(items, 0.2, None, seed=4)[1] != held
    assert split_holdout(items, 0.0, None, seed=3) == (items, [])


def test_grouped_holdout_keeps_each_building_on_one_side():
    items = records([i // 3 for i in range(30)])  # ten buildings, three views each
    for seed in range(10):
        train, held = split_holdout(items, 0.1, "building_id", seed)
        train_groups = {r.fields["building_id"] for r in train}
        held_groups = {r.fields["building_id"] for r in held}
        assert held and train_groups.isdisjoint(held_groups)
        assert len(train) + len(held) == 30


def test_grouped_holdout_needs_the_column_and_two_groups():
    with pytest.raises(UserError, match="img0.png has no 'site'"):
        split_holdout(records([1, 2]), 0.5, "site", 0)
    with pytest.raises(UserError, match="all images share one 'building_id'"):
        split_holdout(records([1, 1, 1]), 0.5, "building_id", 0)


def test_a_second_scan_decodes_and_reads_nothing_it_has_seen(nasty_folder, tmp_path, monkeypatch):
    """Scanning decodes every image; the next run on unchanged files must only stat them, with the same outcome."""
    import archdiff.data.catalog as catalog_module
    import archdiff.data.images as images

    folder, _ = nasty_folder
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(sources=[{"path": str(folder)}])
    first = build_catalog(cfg)

    def forbidden(*args, **kwargs):
        raise AssertionError("an unchanged image was read or decoded again")

    with monkeypatch.context() as patched:
        patched.setattr(images, "open_image", forbidden)
        patched.setattr(catalog_module, "read_image_value", forbidden)
        second = build_catalog(cfg)
    assert [(r.name, r.width, r.height, r.kind, r.content_hash) for r in second.records] == [
        (r.name, r.width, r.height, r.kind, r.content_hash) for r in first.records
    ]
    assert second.skipped == first.skipped, "broken files are still reported, with the same reasons"


def test_a_changed_image_is_decoded_again_and_the_pixel_limit_applies_to_cached_sizes(tmp_path, monkeypatch):
    import os

    from PIL import Image

    import archdiff.data.images as images

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    for name, size in (("a.png", (40, 20)), ("b.png", (30, 30))):
        Image.new("RGB", size, "white").save(data / name)
        (data / name).with_suffix(".txt").write_text("a facade")
    cfg = DataConfig(sources=[{"path": str(data)}])
    build_catalog(cfg)

    decoded = []
    real_open = images.open_image
    counted = lambda source, max_pixels, **how: decoded.append(1) or real_open(source, max_pixels, **how)  # noqa: E731
    monkeypatch.setattr(images, "open_image", counted)
    Image.new("RGB", (20, 50), "black").save(data / "a.png")
    os.utime(data / "a.png", ns=(1, 1))  # a new modification time even on a coarse-grained file system
    catalog = build_catalog(cfg)
    assert len(decoded) == 1, "only the changed image is decoded"
    assert {r.name: (r.width, r.height) for r in catalog.records} == {"a.png": (20, 50), "b.png": (30, 30)}

    small = build_catalog(DataConfig(sources=[{"path": str(data)}], max_pixels=950))
    assert len(decoded) == 1, "the limit is checked against cached sizes"
    assert [(s.name, s.reason) for s in small.skipped] == [("a.png", "20x50 = 1000 pixels, over data.max_pixels (950)")]


def test_a_damaged_scan_cache_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(sources=[{"path": "facades"}])
    first = build_catalog(cfg)
    (cache_file,) = (tmp_path / "cache" / "scan").iterdir()
    cache_file.write_text('{"results": [')
    assert [r.content_hash for r in build_catalog(cfg).records] == [r.content_hash for r in first.records]
    assert cache_file.read_text().startswith('{"results": {'), "rewritten whole"
