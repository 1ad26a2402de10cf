"""Latent and text caches: filled once, reused, and invalidated entry by entry."""

import shutil

import pytest
import torch
from PIL import Image

from archdiff.config.schema import DataConfig
from archdiff.data.cache import Caches, TensorCache, build_caches
from archdiff.data.catalog import build_catalog
from archdiff.data.samples import SampleSet, expand_samples
from archdiff.paths import cache_dir


@pytest.fixture(scope="module")
def components(tiny_base):
    from archdiff.model.base import load_components, resolve_base

    return load_components(resolve_base(tiny_base))


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_folder(folder, count=4):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (96 if i % 2 else 64, 64), (40 * i, 120, 200 - 30 * i)).save(folder / f"b{i}.png")
        (folder / f"b{i}.txt").write_text(f"brick facade number {i}")
    return folder


def sample_sets(folder, components, resolution=64, **data):
    cfg = DataConfig(sources=[{"path": str(folder)}], resolution=resolution, buckets={"step": 16}, random_flip=True, **data)
    catalog = build_catalog(cfg)
    samples = expand_samples(catalog.records, cfg, train=True)
    return [SampleSet(catalog, samples, cfg, components.tokenizer, seed=0, train=True)]


def fill(folder, components, **data):
    return build_caches(sample_sets(folder, components, **data), True, True, components)


def test_second_fill_reuses_everything(tmp_path, fresh_cache, components):
    folder = make_folder(tmp_path / "d")
    first = fill(folder, components)
    assert first.encoded == {"latents": 8, "texts": 4}, "each photo cached unflipped and flipped; four captions"
    again = fill(folder, components)
    assert again.encoded == {"latents": 0, "texts": 0} and again.reused == {"latents": 8, "texts": 4}
    shards = [*(fresh_cache / "latents").rglob("*"), *(fresh_cache / "text").rglob("*")]
    assert shards and all(p.suffix == ".safetensors" for p in shards if p.is_file()), "no half-written shard is left"


def test_a_changed_image_or_resolution_invalidates_exactly_its_entries(tmp_path, fresh_cache, components):
    folder = make_folder(tmp_path / "d")
    fill(folder, components)
    Image.new("RGB", (64, 64), "black").save(folder / "b2.png")
    changed = fill(folder, components)
    assert changed.encoded == {"latents": 2, "texts": 0} and changed.reused["latents"] == 6
    resized = fill(folder, components, resolution=48)
    assert resized.encoded["latents"] == 8, "another resolution is another bucket: every latent is new"
    assert resized.encoded["texts"] == 0, "captions do not depend on the resolution"


def test_cached_items_equal_what_the_encoders_give(tmp_path, fresh_cache, components):
    folder = make_folder(tmp_path / "d", count=2)
    sets = sample_sets(folder, components)
    uncached = sets[0][(0, 0)]
    build_caches(sets, True, True, components)
    cached = sets[0][(0, 0)]
    assert set(cached) == {"latent_params", "text_embeddings", "original_size", "crop_top_left"}
    with torch.no_grad():
        params = components.vae.encode(uncached["pixel_values"][None]).latent_dist.parameters[0]
        embedding = components.text_encoder(uncached["input_ids"][None], return_dict=False)[0][0]
    torch.testing.assert_close(cached["latent_params"], params, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached["text_embeddings"], embedding, rtol=1e-4, atol=1e-4)
    assert torch.equal(cached["original_size"], uncached["original_size"])


def test_other_vae_weights_use_another_cache_folder(tmp_path, fresh_cache, components, tiny_base):
    """The latent cache is keyed by the VAE's files (so a cached run need not load it): other weights, other entries."""
    from safetensors.torch import load_file, save_file

    from archdiff.model.base import load_components, resolve_base

    folder = make_folder(tmp_path / "d", count=1)
    fill(folder, components)
    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_base, other_base)
    weights = other_base / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["encoder.conv_in.bias"] += 1.0
    save_file(tensors, weights)
    other = load_components(resolve_base(str(other_base)))
    assert other.fingerprint("vae") != components.fingerprint("vae")
    assert fill(folder, other).encoded["latents"] == 2
    assert len(list((cache_dir() / "latents").iterdir())) == 2


def test_a_complete_cache_loads_neither_encoder(tmp_path, fresh_cache, tiny_base):
    from archdiff.model.base import load_components, resolve_base

    folder = make_folder(tmp_path / "d", count=2)
    fill(folder, load_components(resolve_base(tiny_base)))
    fresh = load_components(resolve_base(tiny_base))
    assert fill(folder, fresh).reused == {"latents": 4, "texts": 2}
    assert not fresh.vae_loaded and not fresh.text_encoder_loaded


def test_tensor_cache_reads_across_shards_and_reopens_in_workers(tmp_path):
    import pickle

    cache = TensorCache(tmp_path / "c")
    cache.add({"a": torch.ones(2)})
    cache.add({"b": torch.zeros(3)})
    assert torch.equal(cache.get("a"), torch.ones(2))
    reopened = pickle.loads(pickle.dumps(TensorCache(tmp_path / "c")))
    assert len(reopened) == 2 and torch.equal(reopened.get("b"), torch.zeros(3))
    shutil.rmtree(tmp_path / "c")
    assert len(TensorCache(tmp_path / "c")) == 0


def test_report_line():
    caches = Caches(latents=None, texts=None)
    caches.latents = TensorCache.__new__(TensorCache)
    caches.encoded["latents"], caches.reused["latents"] = 3, 5
    assert caches.report() == "cache: latents 3 encoded, 5 reused"
