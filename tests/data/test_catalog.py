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
