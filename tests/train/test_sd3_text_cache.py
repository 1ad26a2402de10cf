"""SD 3.5's text cache: the two CLIPs' joined states, their pooled projections and (with T5 kept) T5's states per
caption, keyed by the encoders in use; cached conditioning and loss equal the encoders', and a cached run loads none."""

import pytest
import torch

from archdiff.config import load_recipe
from archdiff.data.cache import build_caches, text_cache_folder
from archdiff.data.catalog import build_catalog
from archdiff.data.samples import SampleSet, collate, expand_samples
from archdiff.model.base import load_components, resolve_base
from archdiff.train.objective import FlowObjective
from archdiff.train.run import run
from archdiff.train.step import Denoiser, denoising_loss

pytestmark = pytest.mark.slow

SD3 = ["base=tiny-sd3", "train.snr_gamma=null", "validation.prompts=[]"]


def _sample_set(recipe, components, caches=False) -> SampleSet:
    catalog = build_catalog(recipe.data)
    samples = expand_samples(catalog.records, recipe.data, train=True)
    tokenizers = {"tokenizer_2": components.tokenizer_2, "tokenizer_3": components.tokenizer_3}
    sample_set = SampleSet(catalog, samples, recipe.data, components.tokenizer, 0, train=True, **tokenizers)
    if caches:
        build_caches([sample_set], want_latents=False, want_texts=True, components=components)
    return sample_set


@pytest.mark.parametrize("t5", ["keep", "drop"])
def test_cached_sd3_conditioning_and_loss_match_the_encoders(tmp_path, monkeypatch, t5):
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("demo-tiny", [*SD3, "data.cache.text=true", f"memory.t5={t5}"])
    components = load_components(resolve_base("tiny-sd3"), t5=t5 == "keep")
    plain, cached = _sample_set(recipe, components), _sample_set(recipe, components, caches=True)
    assert cached.caches.encoded["texts"] > 0
    bucket = plain.samples[0].bucket
    indices = [index for index, sample in enumerate(plain.samples) if sample.bucket == bucket][:3]
    batch = collate([plain[(index, 1)] for index in indices])
    from_cache = collate([cached[(index, 1)] for index in indices])
    assert not any(key.startswith("input_ids") for key in from_cache)
    assert ("t5_text_embeddings" in from_cache) == (t5 == "keep"), "T5's states are kept only when T5 conditions"

    family, model = components.family, components.unet
    with torch.no_grad():
        encoded = family.conditioning(batch, list(components.text_encoders), "cpu", bucket, model)
        read = family.conditioning(from_cache, [], "cpu", bucket, model)
        for key in ("encoder_hidden_states", "pooled_projections"):
            assert read[key].shape == encoded[key].shape
            torch.testing.assert_close(read[key], encoded[key])
        latents = torch.randn(3, 16, bucket[1] // 8, bucket[0] // 8, generator=torch.Generator().manual_seed(0))
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
        timesteps = components.noise_scheduler.timesteps[[10, 500, 990]]
        objective = FlowObjective(components.noise_scheduler)
        losses = [
            denoising_loss(Denoiser(model, encoders, objective, "cpu", family=family), b, bucket, latents, noise, timesteps)
            for encoders, b in ((list(components.text_encoders), batch), ([], from_cache))
        ]
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-5)


def test_the_sd3_text_cache_is_keyed_by_the_encoders_in_use(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    base = resolve_base("tiny-sd3")
    with_t5, without_t5 = load_components(base, t5=True), load_components(base, t5=False)
    assert with_t5.text_encoder_folders == ("text_encoder", "text_encoder_2", "text_encoder_3")
    assert without_t5.text_encoder_folders == ("text_encoder", "text_encoder_2")
    keep, drop = text_cache_folder(with_t5), text_cache_folder(without_t5)
    assert keep != drop and keep.name.startswith(drop.name + "-"), "the same CLIPs, and T5 beside them"
    assert not without_t5.text_encoder_loaded, "naming the folder loads no encoder"


def test_a_cached_sd3_run_loads_no_text_encoder_and_trains_alike(tmp_path, monkeypatch, capsys):
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    import archdiff.model.base as base_module

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    steps = ["train.max_steps=4", "train.checkpoint_every=null"]
    uncached = run(load_recipe("demo-tiny", [f"output={tmp_path / 'plain'}", *SD3, *steps]))
    filled = run(load_recipe("demo-tiny", [f"output={tmp_path / 'fill'}", *SD3, "data.cache.text=true", *steps]))
    assert "texts 32 encoded, 0 reused" in capsys.readouterr().out

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"{cls.__name__} was loaded although every caption was cached")

    for encoder_class in (CLIPTextModelWithProjection, T5EncoderModel):
        monkeypatch.setattr(encoder_class, "from_pretrained", classmethod(refuse))
    loaded = []
    real_load = base_module.load_components
    monkeypatch.setattr(base_module, "load_components", lambda base, **kw: loaded.append(real_load(base, **kw)) or loaded[-1])
    cached = run(load_recipe("demo-tiny", [f"output={tmp_path / 'cached'}", *SD3, "data.cache.text=true", *steps]))
    assert "texts 0 encoded, 32 reused" in capsys.readouterr().out
    (components,) = loaded
    assert not components.text_encoder_loaded
    for result in (filled, cached):
        assert result.first_val_loss == pytest.approx(uncached.first_val_loss, rel=1e-5)
        assert result.final_val_loss == pytest.approx(uncached.final_val_loss, rel=1e-5)
