"""SD 3.5 bases built offline: tiny-sd3 (draws on CPU in well under a second) and random-sd35m (SD 3.5 Medium's layout)."""

import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from archdiff.errors import UserError
from archdiff.model.base import resolve_base


@pytest.fixture(scope="module")
def tiny_sd3() -> str:
    base = resolve_base("tiny-sd3")
    assert base.family == "sd3"
    return base.source


def test_tiny_sd3_is_a_small_pipeline_that_plain_diffusers_loads_and_draws_with(tiny_sd3):
    from diffusers import StableDiffusion3Pipeline

    folder = Path(tiny_sd3)
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 3_000_000, "about 2 MB"
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    transformer, t5 = pipe.transformer.config, pipe.text_encoder_3.config
    clips = (pipe.text_encoder.config, pipe.text_encoder_2.config)
    assert transformer.joint_attention_dim == t5.d_model, "T5's states are the transformer's context"
    assert transformer.pooled_projection_dim == sum(clip.projection_dim for clip in clips)
    assert transformer.caption_projection_dim == transformer.num_attention_heads * transformer.attention_head_dim
    assert sum(clip.hidden_size for clip in clips) <= t5.d_model, "the CLIP states are padded up to T5's width"
    vae = pipe.vae.config
    assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (16, 1.5305, 0.0609)
    assert not vae.use_quant_conv and not vae.use_post_quant_conv
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 3.0

    def draw(seed, size=64):
        generator = torch.Generator().manual_seed(seed)
        kwargs = {"num_inference_steps": 3, "guidance_scale": 5.0, "generator": generator, "output_type": "np"}
        return pipe("a brick facade at dusk", height=size, width=size, **kwargs).images

    start = time.perf_counter()
    image = draw(0)
    assert time.perf_counter() - start < 10
    assert image.shape == (1, 64, 64, 3) and image.std() > 0.01
    assert (draw(0) == image).all() and not (draw(1) == image).all(), "seeded like any pipeline"
    assert draw(0, size=96).shape == (1, 96, 96, 3), "positions cover more than the 64 px it was built at"


def test_t5_tokenizer_written_offline_reloads_and_tokenizes_any_text(tiny_sd3):
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(tiny_sd3, subfolder="tokenizer_3")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2), "T5's own special ids"
    assert tokenizer.model_max_length == 256
    text = "Ünïcode façade, 3-storey! (1:100) #42"
    ids = tokenizer(text).input_ids
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id in tokenizer("東京 tower").input_ids, "unknown characters are <unk>, as in real T5"
    padded = tokenizer("a plan", padding="max_length", max_length=256, truncation=True).input_ids
    assert len(padded) == 256 and padded[-1] == tokenizer.pad_token_id
    assert len(tokenizer("x" * 1000, truncation=True, max_length=256).input_ids) == 256


# random-sd35m's parameter counts (diffusers / transformers layouts of SD 3.5 Medium and T5 v1.1 XXL).
SD35M = {
    "transformer": 2_243_171_520,
    "vae": 83_819_683,
    "text_encoder": 123_650_304,  # CLIP-L with its 768x768 text projection
    "text_encoder_2": 694_659_840,  # OpenCLIP bigG with its 1280x1280 text projection
    "text_encoder_3": 4_762_310_656,  # T5 v1.1 XXL's encoder, its token embedding shared with `shared`
}
SD35M_TRANSFORMER_CONFIG = {  # stabilityai/stable-diffusion-3.5-medium transformer/config.json
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536, "pooled_projection_dim": 2048,
    "out_channels": 16, "pos_embed_max_size": 384, "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm",
}  # fmt: skip
KERASHUB_SD35M = 3_371_793_763  # KerasHub's SD 3.5 Medium preset: CLIP-L + CLIP-G + MMDiT-X + VAE
POS_EMBED_TABLE = 384 * 384 * 1536  # pos_embed_max_size^2 positions x width


def test_random_sd35m_has_sd35_mediums_layout_and_size(tmp_path):
    """Counted on the meta device: accelerate's init_empty_weights would re-register T5's tied embedding as a second
    parameter (4,893,906,944) and compute the 226 M-entry position table on the CPU."""
    from archdiff.model.tiny import random_pipeline

    with torch.device("meta"):
        pipe = random_pipeline(tmp_path, "sd3", "full")
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in SD35M}
    assert counts == SD35M
    config = pipe.transformer.config
    assert {key: config[key] for key in SD35M_TRANSFORMER_CONFIG} == SD35M_TRANSFORMER_CONFIG
    # diffusers keeps SD3's sin-cos position table as a saved buffer, not a parameter; KerasHub counts it as a weight.
    table = pipe.transformer.pos_embed.pos_embed
    assert table.numel() == POS_EMBED_TABLE and "pos_embed.pos_embed" in pipe.transformer.state_dict()
    keras_parts = counts["text_encoder"] + counts["text_encoder_2"] + counts["transformer"] + counts["vae"]
    assert keras_parts + POS_EMBED_TABLE == KERASHUB_SD35M
    assert round((counts["transformer"] + POS_EMBED_TABLE) / 1e9, 2) == 2.47, "Stability's '2.5 billion parameters'"
    t5 = pipe.text_encoder_3.config
    assert (t5.d_model, t5.d_ff, t5.num_layers, t5.num_heads, t5.d_kv, t5.vocab_size) == (4096, 10240, 24, 64, 64, 32128)
    assert t5.is_gated_act and t5.dense_act_fn == "gelu_new"


def test_tiny_model_command_writes_an_sd3_pipeline(tiny_sd3, tmp_path):
    from archdiff.cli import app

    runner = CliRunner()
    assert "sd3 (SD 3.5" in runner.invoke(app, ["tiny-model", "--help"]).stdout
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "tiny"), "--family", "sd3"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tiny" / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    for weights in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder_3/model.safetensors"):
        assert (tmp_path / "tiny" / weights).read_bytes() == (Path(tiny_sd3) / weights).read_bytes(), "built deterministically"
    assert resolve_base(str(tmp_path / "tiny")).family == "sd3", "a local SD3 folder resolves too"
    refused = runner.invoke(app, ["tiny-model", str(tmp_path / "other"), "--family", "sd35"])  # main() prints it, exit 2
    assert isinstance(refused.exception, UserError) and str(refused.exception).endswith("sd15, sd2v, sdxl, sd3")
    assert not (tmp_path / "other").exists()


def test_sd3_bases_sample_and_refuse_what_the_family_cannot_train(tiny_sd3, tmp_path):
    from archdiff.config import load_recipe
    from archdiff.sample import load_pipeline
    from archdiff.train.run import run

    assert type(load_pipeline(tiny_sd3, [], "sd3", device="cpu")).__name__ == "StableDiffusion3Pipeline"
    recipe = load_recipe("demo-tiny", ["base=tiny-sd3", f"output={tmp_path / 'run'}"])
    with pytest.raises(UserError, match=r"train.snr_gamma \(Min-SNR .*\) is not supported on SD 3.5 bases"):
        run(recipe)
    assert not (tmp_path / "run").exists(), "refused before anything is written"
