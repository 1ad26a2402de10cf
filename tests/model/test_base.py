"""Tiny models and base resolution: one from_pretrained path for tiny, local and Hub bases."""

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from archdiff.errors import UserError
from archdiff.model.base import load_components, resolve_base
from archdiff.model.tiny import build_tiny_pipeline


def test_tiny_base_is_a_real_diffusers_folder(tiny_base):
    folder = Path(tiny_base)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()


def test_tiny_base_is_built_once_then_reused(tiny_base):
    stamp = (Path(tiny_base) / "model_index.json").stat().st_mtime_ns
    assert resolve_base("tiny-sd15").source == tiny_base
    assert (Path(tiny_base) / "model_index.json").stat().st_mtime_ns == stamp


def test_components_load_with_sd_shapes(tiny_base):
    parts = load_components(resolve_base("tiny-sd15"))
    assert parts.vae.config.block_out_channels.__len__() == 4, "factor-8 VAE like real SD"
    latents = parts.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert latents.shape == (1, 4, 8, 8)
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size
    assert parts.noise_scheduler.config.prediction_type == "epsilon"


def test_tiny_sdxl_has_two_text_encoders_and_size_conditioning():
    base = resolve_base("tiny-sdxl")
    folder = Path(base.source)
    assert base.family == "sdxl"
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 10_000_000, "a few MB"
    parts = load_components(base)
    assert parts.sdxl and type(parts.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    unet = parts.unet.config
    assert unet.addition_embed_type == "text_time"
    assert unet.cross_attention_dim == parts.text_encoder.config.hidden_size + parts.text_encoder_2.config.hidden_size
    assert (
        unet.projection_class_embeddings_input_dim
        == 6 * unet.addition_time_embed_dim + parts.text_encoder_2.config.projection_dim
    )
    assert type(parts.noise_scheduler).__name__ == "DDPMScheduler", "training noise from the pipeline's Euler config"
    assert parts.noise_scheduler.config.prediction_type == "epsilon"
    assert parts.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode().shape == (1, 4, 8, 8)


def test_sd15_components_have_no_second_text_encoder(tiny_base):
    parts = load_components(resolve_base("tiny-sd15"))
    assert not parts.sdxl and parts.tokenizer_2 is None


def test_tokenizer_from_written_vocab_handles_any_text(tiny_base):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")
    ids = tokenizer("Ünïcode façade, 3-storey!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]


def test_local_folder_base_is_loaded_as_is(tiny_base):
    base = resolve_base(tiny_base)
    assert base.source == tiny_base and base.family == "sd15"


def test_build_is_deterministic(tmp_path):
    first = build_tiny_pipeline(tmp_path / "a")
    second = build_tiny_pipeline(tmp_path / "b")
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (first / weights).read_bytes() == (second / weights).read_bytes()
    with pytest.raises(UserError, match="not empty"):
        build_tiny_pipeline(first)


@pytest.mark.parametrize("name", ["./missing/folder", "/no/such/dir", "a/b/c"])
def test_missing_local_folder_suggests_tiny(name):
    with pytest.raises(UserError, match="tiny-sd15"):
        resolve_base(name)


def test_hub_id_offline_fails_fast_with_a_hint():
    with pytest.raises(UserError, match="not reachable.*tiny-sd15"):
        resolve_base("someone/not-cached-model")


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(UserError, match="model_index.json"):
        resolve_base(str(tmp_path))


def test_unknown_tiny_family():
    with pytest.raises(UserError, match="tiny-sd15"):
        resolve_base("tiny-sd99")


def test_tiny_v_prediction_base():
    """tiny-sd2v: SD 2.x's layout (linear attention projections) and a v-prediction scheduler."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    base = resolve_base("tiny-sd2v")
    assert base.family == "sd15", "the same StableDiffusionPipeline; only the scheduler's target differs"
    assert DDPMScheduler.from_pretrained(base.source, subfolder="scheduler").config.prediction_type == "v_prediction"
    assert UNet2DConditionModel.load_config(base.source, subfolder="unet")["use_linear_projection"] is True
