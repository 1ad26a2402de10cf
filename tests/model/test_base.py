"""Tiny models and base resolution: one from_pretrained path for tiny, local and Hub bases."""

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from archdiff.errors import UserError
from archdiff.model.base import load_components, resolve_base
from archdiff.model.tiny import build_random_pipeline


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
    first = build_random_pipeline(tmp_path / "a")
    second = build_random_pipeline(tmp_path / "b")
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (first / weights).read_bytes() == (second / weights).read_bytes()
    with pytest.raises(UserError, match="not empty"):
        build_random_pipeline(first)


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


# The published models' parameter counts (unet, vae, text encoder(s)): SD 1.5, SD 2.1-v, SDXL 1.0.
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2v": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_random_bases_have_the_real_models_layout_and_size(family, tmp_path):
    """random-* bases stand in for the real ones when measuring speed and memory, so they must be the same size."""
    from accelerate import init_empty_weights

    from archdiff.model.tiny import random_pipeline

    with init_empty_weights():  # parameters on the meta device: the real sizes would take GBs
        pipe = random_pipeline(tmp_path, family, "full")
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in PUBLISHED[family]}
    assert counts == PUBLISHED[family]
    assert pipe.unet.config.cross_attention_dim == (2048 if family == "sdxl" else 1024 if family == "sd2v" else 768)
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if family == "sd2v" else "epsilon")
    if family == "sdxl":
        assert pipe.vae.config.scaling_factor == 0.13025 and pipe.unet.config.projection_class_embeddings_input_dim == 2816


def test_random_base_names_resolve_and_unknown_ones_are_refused(tmp_path, monkeypatch):
    """A random-* base is built once into the cache like a tiny one; the build itself is faked here (GBs)."""
    import archdiff.model.tiny as tiny

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path))
    built, real_builder = [], tiny.random_pipeline

    def small_stand_in(folder, family, size):
        built.append((family, size))
        return real_builder(folder, family, "tiny")

    monkeypatch.setattr(tiny, "random_pipeline", small_stand_in)
    base = resolve_base("random-sdxl")
    assert (base.family, Path(base.source)) == ("sdxl", tmp_path / "full" / "sdxl") and built == [("sdxl", "full")]
    assert resolve_base("random-sdxl").source == base.source and len(built) == 1, "built once"
    with pytest.raises(UserError, match="unknown random base 'random-sd3'; choose one of: random-sd15, random-sd2v, random-sdxl"):
        resolve_base("random-sd3")
    sd35m = resolve_base("random-sd35m")  # SD 3.5 Medium's layout: its own name, in the sd3 family's folder
    assert (sd35m.family, Path(sd35m.source), built[-1]) == ("sd3", tmp_path / "full" / "sd3", ("sd3", "full"))
    with pytest.raises(UserError, match="unknown tiny base 'tiny-sd35m'; choose one of: .*tiny-sdxl, tiny-sd3$"):
        resolve_base("tiny-sd35m")


def test_safetensors_header_names_a_truncated_file_without_loading_it(tmp_path):
    from safetensors.torch import save_file

    from archdiff.model.base import safetensors_header

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(64, 64), "b": torch.ones(3)}, str(path))
    header = safetensors_header(path, "the weights")
    assert header["a"]["shape"] == [64, 64] and header["b"]["dtype"] == "F32"
    whole = path.read_bytes()
    path.write_bytes(whole[:-100])
    with pytest.raises(UserError, match=r"the weights is truncated or damaged: \d+ bytes, its header describes \d+"):
        safetensors_header(path, "the weights")
    path.write_bytes(whole[:5])
    with pytest.raises(UserError, match="the weights is not a readable safetensors file .*it may be truncated"):
        safetensors_header(path, "the weights")


def test_lora_family_from_its_header_alone():
    from archdiff.model.lora_fit import context_width, lora_family

    def down(width):
        return {"shape": [4, width], "dtype": "F32", "data_offsets": [0, 0]}

    sd15 = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": down(768)}
    kohya_xl = {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": down(2048)}
    assert (context_width(sd15), lora_family(sd15)) == (768, "sd15")
    assert (context_width(kohya_xl), lora_family(kohya_xl)) == (2048, "sdxl")
    assert lora_family({"__metadata__": {"ss_base_model_version": "sdxl_base_v1-0"}}) == "sdxl"
    assert lora_family({"lora_te2_text_model_x.lora_down.weight": down(8)}) == "sdxl"
    assert lora_family({"x.lora_A.weight": down(32)}) is None, "a width no real base has says nothing"
    assert lora_family({}, recipe_base="tiny-sdxl") == "sdxl", "the run's recipe names its base first"
