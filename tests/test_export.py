"""Exports: kohya files that plain diffusers reloads to the same images, peft folders, fused pipelines."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from archdiff.errors import UserError
from archdiff.export import export_run, kohya_alpha
from archdiff.model.base import resolve_base
from archdiff.run_files import LORA_WEIGHTS

pytestmark = pytest.mark.slow

BASES = ["tiny-sd15", "tiny-sdxl"]
TEXT_ENCODER_PREFIXES = {"tiny-sd15": ["lora_te_"], "tiny-sdxl": ["lora_te1_", "lora_te2_"]}


def draw(pipe, seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(
        "timber house", num_inference_steps=4, guidance_scale=5.0, width=64, height=64, generator=generator, output_type="np"
    ).images[0]


def plain_pipeline(base: str, lora_folder=None, weight_name=None):
    """Plain diffusers, no archdiff code: what an A1111/ComfyUI user's diffusers script would do."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(resolve_base(base).source)
    if lora_folder is not None:
        pipe.load_lora_weights(str(lora_folder), weight_name=weight_name)
    return pipe


@pytest.mark.parametrize("base", BASES)
def test_kohya_file_has_kohya_keys_alpha_and_header(small_lora_runs, base, tmp_path):
    path = export_run(small_lora_runs[base], "kohya", tmp_path / "x.safetensors")
    with safe_open(str(path), "pt") as handle:
        keys, header = list(handle.keys()), handle.metadata()
        alphas = {key.removesuffix(".alpha"): float(handle.get_tensor(key)) for key in keys if key.endswith(".alpha")}
        ranks = {key.removesuffix(".lora_down.weight"): handle.get_tensor(key).shape[0] for key in keys if "lora_down" in key}
    modules = {key.split(".")[0] for key in keys}
    assert all(key.startswith(("lora_unet_", *TEXT_ENCODER_PREFIXES[base])) for key in modules)
    for prefix in TEXT_ENCODER_PREFIXES[base]:
        assert any(module.startswith(f"{prefix}text_model_encoder_layers_0_self_attn_q_proj") for module in modules)
    assert set(alphas) == set(ranks) == modules, "every module has lora_down, lora_up and alpha"
    for module, alpha in alphas.items():
        # lora_alpha, not the rank (diffusers' own converter writes the rank): UNet rank 16 alpha 4, text rank 4 alpha 2
        assert (alpha, ranks[module]) == ((4.0, 16) if module.startswith("lora_unet_") else (2.0, 4))
    assert header["ss_network_dim"] == "16" and header["ss_network_alpha"] == "4"
    assert header["ss_base_model_version"] == {"tiny-sd15": "sd_v1", "tiny-sdxl": "sdxl_base_v1-0"}[base]
    assert header["ss_sd_model_name"] == base and header["ss_resolution"] == "(64, 64)"


@pytest.mark.parametrize("base", BASES)
def test_kohya_file_reloads_in_plain_diffusers_to_identical_images(small_lora_runs, base, tmp_path):
    run_dir = small_lora_runs[base]
    path = export_run(run_dir, "kohya", tmp_path / "kohya.safetensors")
    own = draw(plain_pipeline(base, run_dir))
    reloaded_pipe = plain_pipeline(base, path.parent, path.name)
    encoders = [reloaded_pipe.text_encoder, getattr(reloaded_pipe, "text_encoder_2", None)]
    for encoder in filter(None, encoders):
        assert any("lora" in name for name, _ in encoder.named_modules()), "the text-encoder LoRA came back too"
    reloaded = draw(reloaded_pipe)
    assert not np.array_equal(own, draw(plain_pipeline(base))), "the LoRA changes the image"
    assert np.array_equal(own, reloaded), f"max difference {np.abs(own - reloaded).max()}"


def test_fused_pipeline_draws_what_the_lora_draws_at_that_scale(small_lora_runs, tmp_path):
    from diffusers import DiffusionPipeline

    from archdiff.sample import LoraSpec, load_pipeline

    run_dir = small_lora_runs["tiny-sd15"]
    folder = export_run(run_dir, "fused", tmp_path / "fused", scale=0.5)
    assert (folder / "model_index.json").is_file() and not list(folder.rglob("*lora*"))
    fused = draw(DiffusionPipeline.from_pretrained(str(folder)))
    with_adapter = draw(load_pipeline(resolve_base("tiny-sd15").source, [LoraSpec(run_dir, 0.5)]))
    full_strength = draw(load_pipeline(resolve_base("tiny-sd15").source, [LoraSpec(run_dir, 1.0)]))
    assert np.abs(fused - with_adapter).max() < 1e-4  # float rounding of the merged weights only
    assert np.abs(fused - full_strength).max() > 1e-3, "the scale was applied"


def test_peft_folders_load_with_peft_to_the_same_outputs(small_lora_runs, tmp_path):
    from diffusers import UNet2DConditionModel
    from peft import PeftModel
    from transformers import CLIPTextModel

    run_dir, source = small_lora_runs["tiny-sd15"], resolve_base("tiny-sd15").source
    folder = export_run(run_dir, "peft", tmp_path / "peft")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*")) == [
        "text_encoder/adapter_config.json",
        "text_encoder/adapter_model.safetensors",
        "unet/adapter_config.json",
        "unet/adapter_model.safetensors",
    ]
    assert json.loads((folder / "unet" / "adapter_config.json").read_text())["lora_alpha"] == 4.0
    reference = plain_pipeline("tiny-sd15", run_dir)
    unet = PeftModel.from_pretrained(UNet2DConditionModel.from_pretrained(source, subfolder="unet"), str(folder / "unet"))
    text_encoder = PeftModel.from_pretrained(
        CLIPTextModel.from_pretrained(source, subfolder="text_encoder"), str(folder / "text_encoder")
    )
    ids, latents = torch.randint(0, 100, (1, 77)), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        embeddings = reference.text_encoder(ids)[0]
        assert torch.equal(embeddings, text_encoder(input_ids=ids)[0])
        assert torch.equal(reference.unet(latents, 10, embeddings).sample, unet(latents, 10, embeddings).sample)


def test_diffusers_export_is_the_run_file_and_outputs_are_never_overwritten_silently(small_lora_runs, tmp_path):
    run_dir = small_lora_runs["tiny-sd15"]
    folder = export_run(run_dir, "diffusers", tmp_path / "d")
    assert (folder / LORA_WEIGHTS).read_bytes() == (run_dir / LORA_WEIGHTS).read_bytes()
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        export_run(run_dir, "diffusers", folder)
    export_run(run_dir, "diffusers", folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "no staging folder left behind"


@pytest.mark.parametrize(
    ("fmt", "output", "scale", "message"),
    [
        ("onnx", None, 1.0, "unknown export format 'onnx'"),
        ("kohya", None, 0.5, "--scale applies only to --format fused"),
        ("kohya", "out/kohya.bin", 1.0, "must end in .safetensors"),
    ],
)
def test_export_refuses_bad_requests(small_lora_runs, tmp_path, fmt, output, scale, message):
    with pytest.raises(UserError, match=message):
        export_run(small_lora_runs["tiny-sd15"], fmt, tmp_path / output if output else None, scale)


def test_export_needs_a_run_with_a_lora(tmp_path):
    with pytest.raises(UserError, match="holds no LoRA"):
        export_run(tmp_path, "kohya")


def test_kohya_alpha_follows_alpha_patterns_and_refuses_rslora():
    config = {"lora_alpha": 8, "alpha_pattern": {"to_q": 2}}
    assert kohya_alpha(config, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") == 2.0
    assert kohya_alpha(config, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k") == 8.0
    with pytest.raises(UserError, match="no kohya equivalent"):
        kohya_alpha({"lora_alpha": 8, "use_rslora": True}, "x")


@pytest.mark.parametrize("base", BASES)
def test_the_run_folder_holds_the_kohya_file_that_export_writes(small_lora_runs, base, tmp_path):
    """What users copy into ComfyUI straight from the run folder loads there completely: the kohya export itself."""
    from archdiff.run_files import RECIPE_FILE, kohya_run_file
    from archdiff.runs import read_recipe

    run_dir = small_lora_runs[base]
    in_run = kohya_run_file(run_dir, read_recipe(run_dir / RECIPE_FILE)["name"])
    assert in_run.name == "demo-tiny.safetensors"
    assert in_run.read_bytes() == export_run(run_dir, "kohya", tmp_path / "exported.safetensors").read_bytes()


def test_files_for_other_programs_are_readable_by_other_users(small_lora_runs, tmp_path):
    """safetensors and mkstemp create 0600 files, which a WebUI running as another user cannot read."""
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    run_dir = small_lora_runs["tiny-sd15"]
    exports = [export_run(run_dir, fmt, tmp_path / name) for fmt, name in [("kohya", "k.safetensors"), ("peft", "peft")]]
    written = [p for p in run_dir.rglob("*") if p.is_file() and not {"checkpoints", "logs"} & set(p.parts)]
    written += [p for export in exports for p in ([export] if export.is_file() else export.rglob("*")) if p.is_file()]
    assert {p.name for p in written} >= {LORA_WEIGHTS, "demo-tiny.safetensors", "recipe.yaml", "k.safetensors"}
    modes = {p.relative_to(p.parents[1]).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert set(modes.values()) == {oct(expected)}, modes


def test_a_fused_export_keeps_the_base_dtype(small_lora_runs, tmp_path):
    """An fp16 base fuses into an fp16 pipeline (not a twice-as-large fp32 one)."""
    import shutil

    import yaml
    from diffusers import DiffusionPipeline

    from archdiff.model.base import stored_dtype

    base16 = tmp_path / "base16"
    DiffusionPipeline.from_pretrained(resolve_base("tiny-sd15").source).to(dtype=torch.float16).save_pretrained(base16)
    run_dir = shutil.copytree(small_lora_runs["tiny-sd15"], tmp_path / "run")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "base": str(base16)}))
    folder = export_run(run_dir, "fused", tmp_path / "fused")
    assert [stored_dtype(str(folder), part) for part in ("unet", "vae", "text_encoder")] == [torch.float16] * 3
    assert stored_dtype(resolve_base("tiny-sd15").source) == torch.float32, "the fp32 base fuses as fp32"
