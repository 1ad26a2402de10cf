"""Data at camera scale (issue 20): reduced JPEG decodes, worker threads, decode-once for the cache, scan cache upkeep."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from archdiff.config.schema import DataConfig
from archdiff.data import images
from archdiff.data.cache import Caches, TensorCache, build_caches
from archdiff.data.catalog import ScanCache, build_catalog
from archdiff.data.samples import SampleSet, expand_samples, prepared_image
from archdiff.paths import cache_dir

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
ORIENTATIONS = (1, 3, 6, 8)  # upright, upside down, and both sideways ones (which swap width and height)


def photo_like(width, height, seed):
    """The benchmark's generator (benchmarks/camera_data.py): light, edges and noise, not flat colour."""
    spec = importlib.util.spec_from_file_location("camera_data", REPO / "benchmarks" / "camera_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.photo_like(width, height, seed)


def write_photos(folder, size, orientations=ORIENTATIONS):
    folder.mkdir(parents=True, exist_ok=True)
    for index, orientation in enumerate(orientations):
        exif = Image.Exif()
        exif[0x0112] = orientation
        photo_like(*size, seed=index).save(folder / f"p{index}.jpg", "JPEG", quality=92, exif=exif)
        (folder / f"p{index}.txt").write_text(f"a facade {index}")
    return folder


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def components(tiny_base):
    from archdiff.model.base import load_components, resolve_base

    return load_components(resolve_base(tiny_base))


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_a_draft_decode_covers_the_wanted_size_upright(tmp_path):
    folder = write_photos(tmp_path / "p", (2400, 1600))
    for index, orientation in enumerate(ORIENTATIONS):
        data = (folder / f"p{index}.jpg").read_bytes()
        upright = (1600, 2400) if orientation in (6, 8) else (2400, 1600)
        assert images.jpeg_size(data, 10**8) == upright
        wanted = (upright[0] // 5, upright[1] // 5)  # 1/4 would still cover, 1/8 would not
        reduced = images.open_image(data, 10**8, reduce_to=wanted)
        assert reduced.size == (upright[0] // 4, upright[1] // 4), f"orientation {orientation}: the 1/4 DCT scale, upright"
        assert images.open_image(data, 10**8, reduce_to=(upright[0] // 2, upright[1])).size == upright, "1/2 would not cover"


def test_reduced_bucket_images_are_within_40_db_of_full_decodes(tmp_path, fresh_cache, capsys):
    """Must hold 2: the bucket image a run trains on, reduced decode vs full decode, on camera-like JPEGs (and a PNG)."""
    folder = write_photos(tmp_path / "p", (2400, 1600))
    Image.open(folder / "p0.jpg").save(folder / "png.png")
    (folder / "png.txt").write_text("a facade as png")
    figures = {}
    for resolution in (256, 512):
        found = {}
        for decode in ("reduced", "full"):
            cfg = DataConfig(sources=[{"path": str(folder)}], resolution=resolution, holdout=0, decode=decode)
            catalog = build_catalog(cfg)
            samples = expand_samples(catalog.records, cfg, train=False)
            found[decode] = {s.record.name: prepared_image(catalog, s, cfg.max_pixels) for s in samples}
        for name, image in found["reduced"].items():
            assert image.size == found["full"][name].size
            figures[f"{name} @ {resolution} {image.size}"] = psnr(image, found["full"][name])
    with capsys.disabled():
        print("\nPSNR reduced vs full decode (dB): " + ", ".join(f"{k}: {v:.1f}" for k, v in figures.items()))
    assert all(value >= 40 for value in figures.values()), figures
    assert figures["png.png @ 512 (640, 384)"] == float("inf"), "PNGs decode fully in both modes"
    assert min(figures.values()) < float("inf"), "the JPEGs really decoded at a reduced scale"


def mixed_folder(folder):
    """Small JPEGs (which draft-decode at 64 px buckets), sideways ones, a PNG and a broken file."""
    write_photos(folder, (480, 320), orientations=(1, 6, 3, 8, 1, 1))
    Image.new("RGB", (200, 120), (90, 120, 30)).save(folder / "plain.png")
    (folder / "plain.txt").write_text("a plain wall")
    (folder / "broken.jpg").write_bytes((folder / "p0.jpg").read_bytes()[:3000])
    (folder / "broken.txt").write_text("a broken file")
    return folder


def cached_latents(folder, components, cache, workers, keep_covers=True):
    """The latent entries a cold run with this worker count writes, by key, and its catalog."""
    import os

    os.environ["ARCHDIFF_CACHE"] = str(cache)
    cfg = DataConfig(
        sources=[{"path": str(folder)}], resolution=64, buckets={"step": 16}, random_flip=True, holdout=0, decode_workers=workers
    )
    catalog = build_catalog(cfg, keep_covers=keep_covers)
    samples = expand_samples(catalog.records, cfg, train=True)
    build_caches([SampleSet(catalog, samples, cfg, components.tokenizer, seed=0, train=True)], True, False, components)
    latents = TensorCache(cache_dir() / "latents" / components.fingerprint("vae"))
    return catalog, {key: latents.get(key) for key in latents._shard_of}


def test_workers_change_neither_the_records_nor_any_cache_entry(tmp_path, monkeypatch, components):
    """Must hold 3: the same records in the same order, the same skips, the same latents bit for bit, decoded once or twice."""
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "unused"))
    folder = mixed_folder(tmp_path / "d")
    one, one_entries = cached_latents(folder, components, tmp_path / "c1", workers=1, keep_covers=False)
    many, many_entries = cached_latents(folder, components, tmp_path / "c3", workers=3)
    describe = lambda c: [(r.name, r.width, r.height, r.kind, r.content_hash) for r in c.records]  # noqa: E731
    assert describe(many) == describe(one) and many.skipped == one.skipped
    assert [s.name for s in one.skipped] == ["broken.jpg"]
    assert ("p1.jpg", 320, 480) in [(r.name, r.width, r.height) for r in one.records], "sideways photos are scanned upright"
    assert one_entries.keys() == many_entries.keys() and len(one_entries) == 2 * len(one.records)
    for key, tensor in one_entries.items():
        assert torch.equal(tensor, many_entries[key]), key


def test_the_cache_build_reuses_the_scans_decodes_and_decodes_again_past_the_budget(tmp_path, fresh_cache, monkeypatch):
    import archdiff.data.covers as covers_module

    folder = mixed_folder(tmp_path / "d")
    cfg = DataConfig(sources=[{"path": str(folder)}], resolution=64, buckets={"step": 16}, holdout=0)
    catalog = build_catalog(cfg, keep_covers=True)
    samples = expand_samples(catalog.records, cfg, train=True)
    assert len(catalog.covers.images) == len(catalog.records) == 7
    kept = [np.asarray(prepared_image(catalog, s, cfg.max_pixels, "flip")) for s in samples]

    opened = []
    real_open = images.open_image
    monkeypatch.setattr(images, "open_image", lambda *args, **how: opened.append(1) or real_open(*args, **how))
    catalog.covers.clear()
    fresh = [np.asarray(prepared_image(catalog, s, cfg.max_pixels, "flip")) for s in samples]
    assert len(opened) == len(samples), "without kept images every sample is decoded"
    assert all(np.array_equal(a, b) for a, b in zip(kept, fresh, strict=True)), "kept images are the fresh decode's pixels"

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(covers_module, "COVERS_BUDGET", 2 * 80 * 64 * 3)  # room for two 80x64 (or smaller) images
    small = build_catalog(cfg, keep_covers=True)
    assert len(small.covers.images) == 2 and small.covers.used <= small.covers.budget


def test_cache_keys_add_the_decode_mode_and_the_scan_cache_serves_both(tmp_path, fresh_cache, monkeypatch):
    folder = mixed_folder(tmp_path / "d")
    reduced = DataConfig(sources=[{"path": str(folder)}], resolution=64, holdout=0)
    full = reduced.model_copy(update={"decode": "full"})
    catalog = build_catalog(reduced)
    sample = expand_samples(catalog.records, reduced, train=True)[0]
    assert Caches.latent_key(sample, "", "reduced") != Caches.latent_key(sample, "", "full")
    assert Caches.control_key(sample, "", reduced) != Caches.control_key(sample, "", full)

    def forbidden(*args, **kwargs):
        raise AssertionError("the scan cache holds every file whatever the decode mode")

    monkeypatch.setattr(images, "open_image", forbidden)
    again = build_catalog(full)
    assert [r.content_hash for r in again.records] == [r.content_hash for r in catalog.records] and again.decode == "full"


def test_the_scan_cache_forgets_files_that_are_gone(tmp_path, fresh_cache):
    folder = tmp_path / "d"
    folder.mkdir()
    for name, colour in (("a", "red"), ("b", "blue")):
        Image.new("RGB", (40, 30), colour).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("a facade")
    cfg = DataConfig(sources=[{"path": str(folder)}], holdout=0)
    first = {r.name: r.content_hash for r in build_catalog(cfg).records}
    (folder / "a.png").unlink()
    (folder / "a.txt").unlink()
    Image.new("RGB", (40, 30), "green").save(folder / "c.png")  # a new file: the scan cache is rewritten
    (folder / "c.txt").write_text("a facade")
    build_catalog(cfg)
    stored = json.loads(ScanCache.default().path.read_text())
    assert sorted(stamp.split("|")[0].rsplit("/", 1)[1] for stamp in stored["hashes"]) == ["b.png", "c.png"]
    assert first["a.png"] not in stored["results"] and first["b.png"] in stored["results"]
    assert len(stored["results"]) == 2


def test_a_run_scans_on_rank_0_first_and_keeps_decodes_only_for_a_latent_cache(tmp_path, monkeypatch, tiny_base):
    """Under DDP the other ranks wait at accelerate's main_process_first, then read rank 0's scan cache."""
    import accelerate

    import archdiff.data.catalog as catalog_module
    from archdiff.config import load_recipe
    from archdiff.train.run import run

    events = []

    class FakeState:
        def __init__(self, cpu=False):
            events.append(("state", cpu))

        @__import__("contextlib").contextmanager
        def main_process_first(self):
            events.append("enter")
            try:
                yield
            finally:
                events.append("exit")

    class Scanned(Exception):
        pass

    def scan(cfg, controls=False, keep_covers=False):
        events.append(("scan", keep_covers))
        raise Scanned

    monkeypatch.setattr(accelerate, "PartialState", FakeState)
    monkeypatch.setattr(catalog_module, "build_catalog", scan)
    for latents in (True, False):
        recipe = load_recipe("demo-tiny", [f"output={tmp_path / 'run'}", f"data.cache.latents={str(latents).lower()}"])
        with pytest.raises(Scanned):
            run(recipe)
    assert events == [("state", True), "enter", ("scan", True), "exit", ("state", True), "enter", ("scan", False), "exit"]
