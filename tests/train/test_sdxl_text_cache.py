"""SDXL's text cache: both encoders' penultimate states and the pooled projection per caption, keyed by both
encoders' files; a cached run loads neither encoder for training, loses the same and resumes bit for bit."""

import shutil
import signal
import subprocess
import sys

import pytest
import torch
from killed_runs import signal_at_step
from safetensors.torch import load_file, save_file

from archdiff.config import load_recipe
from archdiff.data.cache import build_caches, text_cache_folder
from archdiff.data.catalog import build_catalog
from archdiff.data.samples import SampleSet, collate, expand_samples
from archdiff.model.base import load_components, resolve_base
from archdiff.run_files import MetricsLog
from archdiff.train.objective import DiffusionObjective
from archdiff.train.run import run
from archdiff.train.step import Denoiser, denoising_loss

pytestmark = pytest.mark.slow

CACHED = ["base=tiny-sdxl", "validation.prompts=[]", "data.cache.text=true"]


def _sample_set(recipe, components, caches=False) -> SampleSet:
    catalog = build_catalog(recipe.data)
    samples = expand_samples(catalog.records, recipe.data, train=True)
    sample_set = SampleSet(catalog, samples, recipe.data, components.tokenizer, 0, train=True, tokenizer_2=components.tokenizer_2)
    if caches:
        build_caches([sample_set], want_latents=False, want_texts=True, components=components)
    return sample_set


def test_cached_sdxl_conditioning_and_loss_match_the_encoders(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("demo-tiny", CACHED)
    components = load_components(resolve_base("tiny-sdxl"))
    plain, cached = _sample_set(recipe, components), _sample_set(recipe, components, caches=True)
    assert cached.caches.encoded["texts"] == 32
    indices = [index for index, sample in enumerate(plain.samples) if sample.bucket == (80, 48)][:3]
    batch = collate([plain[(index, 1)] for index in indices])
    from_cache = collate([cached[(index, 1)] for index in indices])
    assert "input_ids" not in from_cache and "input_ids_2" not in from_cache and len(from_cache["pooled_text_embeds"]) == 3
    assert torch.equal(from_cache["original_size"], batch["original_size"]), "time ids still come from the batch"

    family = components.family
    with torch.no_grad():
        encoded = family.conditioning(batch, list(components.text_encoders), "cpu", (80, 48), components.unet)
        read = family.conditioning(from_cache, [], "cpu", (80, 48), components.unet)
        assert encoded["encoder_hidden_states"].shape == read["encoder_hidden_states"].shape == (3, 77, 32 + 48)
        torch.testing.assert_close(read["encoder_hidden_states"], encoded["encoder_hidden_states"])
        encoded_cond, read_cond = encoded["added_cond_kwargs"], read["added_cond_kwargs"]
        torch.testing.assert_close(read_cond["text_embeds"], encoded_cond["text_embeds"])
        assert torch.equal(read_cond["time_ids"], encoded_cond["time_ids"])

        latents = torch.randn(3, 4, 6, 10, generator=torch.Generator().manual_seed(0))
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
        timesteps = torch.tensor([10, 500, 990])
        scheduler, unet = components.noise_scheduler, components.unet
        losses = [
            denoising_loss(
                Denoiser(unet, encoders, DiffusionObjective(scheduler, "epsilon"), "cpu", family=family),
                b,
                (80, 48),
                latents,
                noise,
                timesteps,
            )
            for encoders, b in ((list(components.text_encoders), batch), ([], from_cache))
        ]
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-5)


def test_the_sdxl_text_cache_is_keyed_by_both_encoders(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    source = resolve_base("tiny-sdxl").source
    changed = tmp_path / "changed-sdxl"
    shutil.copytree(source, changed)
    weights = changed / "text_encoder_2" / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(sorted(tensors)))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights)
    folders = [text_cache_folder(load_components(resolve_base(str(path)))) for path in (source, changed)]
    first = [folder.name.split("-") for folder in folders]
    assert first[0][0] == first[1][0] and first[0][1] != first[1][1], "same first encoder, a changed second one"


def test_a_cached_sdxl_run_never_loads_a_text_encoder_and_loses_as_an_uncached_one(tmp_path, monkeypatch, capsys):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    import archdiff.model.base as base_module

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    steps = ["train.max_steps=3", "train.val_every=3"]
    uncached = run(load_recipe("demo-tiny", [f"output={tmp_path / 'plain'}", *CACHED[:2], *steps]))
    filled = run(load_recipe("demo-tiny", [f"output={tmp_path / 'fill'}", *CACHED, *steps]))
    assert "texts 32 encoded, 0 reused" in capsys.readouterr().out

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"{cls.__name__} was loaded although every caption was cached")

    for encoder_class in (CLIPTextModel, CLIPTextModelWithProjection):
        monkeypatch.setattr(encoder_class, "from_pretrained", classmethod(refuse))
    loaded = []
    real_load = base_module.load_components
    monkeypatch.setattr(base_module, "load_components", lambda base, **kw: loaded.append(real_load(base, **kw)) or loaded[-1])
    cached = run(load_recipe("demo-tiny", [f"output={tmp_path / 'cached'}", *CACHED, *steps]))
    assert "texts 0 encoded, 32 reused" in capsys.readouterr().out
    (components,) = loaded
    assert components.sdxl and components._text_encoder is None and components._text_encoder_2 is None
    for result in (filled, cached):
        assert result.first_val_loss == pytest.approx(uncached.first_val_loss, rel=1e-5)
        assert result.final_val_loss == pytest.approx(uncached.final_val_loss, rel=1e-5)


STEPS = 16


def _train_command(run_dir, *extra):
    command = [sys.executable, "-m", "archdiff", "train", "-r", "demo-tiny", "-o", str(run_dir), "--max-steps", str(STEPS)]
    for setting in (*CACHED, "train.log_every=1", "train.checkpoint_every=4"):  # as `quick` below
        command += ["--set", setting]
    return [*command, *extra]


def test_a_killed_cached_sdxl_run_resumes_bit_for_bit(tmp_path):
    """The session cache's text entries are filled by the uninterrupted run; the killed one reads them. Only the
    killed run and its resumption are processes of their own (one thread each, like this one)."""
    quick = ["train.log_every=1", "train.checkpoint_every=4", f"train.max_steps={STEPS}"]
    whole = run(load_recipe("demo-tiny", [f"output={tmp_path / 'whole'}", *CACHED, *quick])).run_dir  # in-process: no start-up
    killed = tmp_path / "killed"
    returncode, _, _ = signal_at_step(_train_command(killed), killed / "metrics.jsonl", 5, signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    assert not (killed / "pytorch_lora_weights.safetensors").exists(), "killed before the end"
    resumed = subprocess.run(_train_command(killed, "--resume", "latest"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "texts 0 encoded" in resumed.stdout and "resuming 'demo-tiny' from" in resumed.stdout
    expected = load_file(whole / "pytorch_lora_weights.safetensors")
    got = load_file(killed / "pytorch_lora_weights.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert [row["step"] for row in MetricsLog.read(killed / "metrics.jsonl")] == list(range(STEPS + 1))
