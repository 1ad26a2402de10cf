"""lora.type (DoRA, LoKr, LoHa) and lora.conv: short tiny-sd15 runs that learn, files that load outside archdiff, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from archdiff.errors import UserError
from archdiff.run_files import LORA_WEIGHTS

TYPES = ("dora", "lokr", "loha")
CONV_RANK = 2


@pytest.fixture(scope="module")
def adapter_runs(tmp_path_factory, tiny_base) -> dict[str, object]:
    """40 steps of each type at lr 1e-3, conv1/conv2 at rank 2 (attention and ff at the recipe's 16)."""
    from archdiff.config import load_recipe
    from archdiff.train.run import run

    results = {}
    for kind in TYPES:
        overrides = [
            f"output={tmp_path_factory.mktemp('adapters') / kind}",
            f"lora.type={kind}",
            f"lora.conv={{rank: {CONV_RANK}, alpha: 1}}",
            "train.max_steps=40",
            "train.warmup_steps=0",
            "train.val_every=40",
            "train.checkpoint_every=null",
            "validation.prompts=[]",
        ]
        results[kind] = run(load_recipe("demo-tiny", overrides))
    return results


@pytest.mark.parametrize("kind", TYPES)
def test_each_type_lowers_held_out_loss(adapter_runs, kind):
    result = adapter_runs[kind]
    assert result.final_val_loss < result.first_val_loss


def _tensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, json.loads(handle.metadata()["lora_adapter_metadata"])


def test_conv_modules_get_their_own_rank(adapter_runs):
    """The rank sits in a different dimension per type: lora_A's rows, hada_w1_a's columns, lokr_w2_a's columns."""
    rank_of = {
        "dora": ("lora_A.weight", lambda t: t.shape[0]),
        "loha": ("hada_w1_a", lambda t: t.shape[1]),
        "lokr": ("lokr_w2_a", lambda t: t.shape[1]),
    }
    for kind, (suffix, rank) in rank_of.items():
        tensors, metadata = _tensors(adapter_runs[kind].run_dir / LORA_WEIGHTS)
        conv = [key for key in tensors if key.endswith(f"resnets.0.conv1.{suffix}")]
        attention = [key for key in tensors if key.endswith(f"attn1.to_q.{suffix}")]
        assert conv and {rank(tensors[key]) for key in conv} == {CONV_RANK}, kind
        if kind != "lokr":  # LoKr's attention factors are small enough to be stored whole: no rank there
            assert attention and {rank(tensors[key]) for key in attention} == {16}, kind
        assert metadata["unet.rank_pattern"] == {"conv1": CONV_RANK, "conv2": CONV_RANK}
        assert metadata["unet.alpha_pattern"] == {"conv1": 1.0, "conv2": 1.0}


def _image(pipe, seed: int = 0) -> np.ndarray:
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe("timber house", num_inference_steps=4, generator=generator, output_type="np").images[0]


def test_dora_loads_in_plain_diffusers_and_changes_images(adapter_runs, tiny_base):
    from diffusers import StableDiffusionPipeline

    run_dir = adapter_runs["dora"].run_dir
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    plain = _image(pipe)
    pipe.load_lora_weights(str(run_dir), weight_name=LORA_WEIGHTS)
    assert any("lora_magnitude_vector" in name for name, _ in pipe.unet.named_parameters())
    assert np.abs(_image(pipe) - plain).mean() > 1e-3
    assert not (run_dir / "peft").exists()
    assert [path.name for path in run_dir.glob("*.safetensors")] == [LORA_WEIGHTS], "DoRA has no kohya file"


PEFT_SCRIPT = """
import sys, numpy as np, torch
from diffusers import StableDiffusionPipeline
from peft import PeftModel
base, adapter, out = sys.argv[1:]
pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
def draw():
    generator = torch.Generator("cpu").manual_seed(0)
    return pipe("timber house", num_inference_steps=4, generator=generator, output_type="np").images[0]
plain = draw()
pipe.unet = PeftModel.from_pretrained(pipe.unet, adapter).base_model.model
assert "archdiff" not in sys.modules
np.save(out, np.stack([plain, draw()]))
"""


@pytest.mark.parametrize("kind", ("lokr", "loha"))
def test_lokr_loha_load_in_plain_peft_and_archdiff_alike(adapter_runs, tiny_base, tmp_path, kind):
    """peft alone (a subprocess that never imports archdiff) reads RUN/peft/unet and changes the images; `sample --lora
    RUN` (load_pipeline) draws the same image from the run's file."""
    from archdiff.sample import LoraSpec, load_pipeline

    run_dir = adapter_runs[kind].run_dir
    adapter = run_dir / "peft" / "unet"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == kind.upper()
    out = tmp_path / "images.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", PEFT_SCRIPT, tiny_base, str(adapter), str(out)], check=True, env=env)
    plain, adapted = np.load(out)
    assert np.abs(adapted - plain).mean() > 1e-3
    pipe = load_pipeline(tiny_base, [LoraSpec(run_dir)], device="cpu")
    np.testing.assert_allclose(_image(pipe), adapted, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora.type=lokr", "lora.dropout=0.1"], "lora.dropout applies to lora and dora"),
        (["lora.type=loha", "lora.text_encoder={rank: 4}"], "lora.type loha trains the UNet only"),
        (["lora.conv={rank: 4}", "lora.target_modules=[to_q]"], "lora.target_modules names none"),
        (["lora.type=lycoris"], "lora.type"),
    ],
)
def test_recipe_refusals_are_one_line(overrides, message):
    from archdiff.config import load_recipe

    with pytest.raises(UserError) as caught:
        load_recipe("demo-tiny", overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_kohya_export_of_dora_refused_naming_the_formats_that_work(adapter_runs, tmp_path):
    from archdiff.export import export_run

    output = tmp_path / "out.safetensors"
    with pytest.raises(UserError) as caught:
        export_run(adapter_runs["dora"].run_dir, "kohya", output)
    assert "export them as diffusers or peft" in str(caught.value) and "\n" not in str(caught.value)
    assert not output.exists()


def lycoris_delta(tensors: dict, module: str, shape) -> torch.Tensor:
    """A module's weight delta as ComfyUI's LyCORIS loader rebuilds it (written from its code, not from peft's)."""
    get = tensors.get
    if f"{module}.hada_w1_a" in tensors:
        delta = (get(f"{module}.hada_w1_a") @ get(f"{module}.hada_w1_b")) * (
            get(f"{module}.hada_w2_a") @ get(f"{module}.hada_w2_b")
        )
        dim = get(f"{module}.hada_w1_b").shape[0]
    else:
        dim, w1, w2 = None, get(f"{module}.lokr_w1"), get(f"{module}.lokr_w2")
        if w1 is None:
            w1, dim = get(f"{module}.lokr_w1_a") @ get(f"{module}.lokr_w1_b"), get(f"{module}.lokr_w1_b").shape[0]
        if w2 is None:
            w2, dim = get(f"{module}.lokr_w2_a") @ get(f"{module}.lokr_w2_b"), get(f"{module}.lokr_w2_b").shape[0]
        delta = torch.kron(w1[:, :, None, None] if w2.dim() == 4 else w1, w2)
    alpha = get(f"{module}.alpha")
    scale = alpha.item() / dim if alpha is not None and dim is not None else 1.0
    return delta.reshape(shape) * scale


@pytest.mark.parametrize("kind", ("lokr", "loha"))
def test_lycoris_kohya_file_rebuilds_the_fused_weights(adapter_runs, tiny_base, tmp_path, kind):
    """Base + the delta a LyCORIS loader rebuilds from the kohya file = the weights of `export --format fused`, for every
    adapted module (attention stored whole or factored, conv at its own rank); the run folder holds the same file."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from archdiff.export import export_run

    run_dir = adapter_runs[kind].run_dir
    exported = export_run(run_dir, "kohya", tmp_path / "kohya.safetensors")
    kohya = load_file(exported)
    assert [path.read_bytes() for path in run_dir.glob("*.safetensors") if path.name != LORA_WEIGHTS] == [exported.read_bytes()]
    base = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet").state_dict()
    fused = UNet2DConditionModel.from_pretrained(export_run(run_dir, "fused", tmp_path / "fused"), subfolder="unet").state_dict()
    by_kohya_name = {f"lora_unet_{key.removesuffix('.weight').replace('.', '_')}": key for key in base}
    modules = {key.rsplit(".", 1)[0] for key in kohya}
    adapted = {key.rsplit(".", 1)[0] for key in load_file(run_dir / LORA_WEIGHTS)}
    assert len(modules) == len(adapted) > 50
    for module in modules:
        key = by_kohya_name[module]
        delta = lycoris_delta(kohya, module, base[key].shape)
        torch.testing.assert_close(base[key] + delta, fused[key], atol=2e-6, rtol=1e-5)
    assert sum(float((fused[k] - base[k]).abs().max()) > 1e-4 for k in map(by_kohya_name.get, modules)) > len(modules) // 2


def test_peft_export_of_lokr_matches_the_run_folder(adapter_runs, tmp_path):
    from archdiff.export import export_run

    run_dir = adapter_runs["lokr"].run_dir
    exported = export_run(run_dir, "peft", tmp_path / "peft")
    mine = json.loads((exported / "unet" / "adapter_config.json").read_text())
    assert mine["peft_type"] == "LOKR" and mine["rank_pattern"] == {"conv1": CONV_RANK, "conv2": CONV_RANK}
    assert (exported / "unet" / "adapter_model.safetensors").read_bytes() == (
        run_dir / "peft" / "unet" / "adapter_model.safetensors"
    ).read_bytes()


def test_fused_export_of_loha_draws_what_the_adapter_draws(adapter_runs, tiny_base, tmp_path):
    """`export --format fused` merges a LoHa through the same loader: the plain pipeline it writes draws the adapter's image."""
    from diffusers import StableDiffusionPipeline

    from archdiff.export import export_run
    from archdiff.sample import LoraSpec, load_pipeline

    run_dir = adapter_runs["loha"].run_dir
    fused = StableDiffusionPipeline.from_pretrained(export_run(run_dir, "fused", tmp_path / "fused"))
    fused.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_image(fused), _image(load_pipeline(tiny_base, [LoraSpec(run_dir)], device="cpu")), atol=1e-4)


def test_checkpoints_hold_the_lokr_tensors_once_and_export_like_the_run(adapter_runs, tmp_path):
    """A checkpoint stores peft's LoKr tensors (not a second copy under the parameters' names), and `export --checkpoint`
    of the last one writes the run's own LyCORIS tensors."""
    from safetensors.torch import load_file

    from archdiff.export import export_run
    from archdiff.run_files import complete_checkpoints
    from archdiff.train.checkpoints import ADAPTER_FILE

    run_dir = adapter_runs["lokr"].run_dir
    saved = load_file(complete_checkpoints(run_dir)[-1] / ADAPTER_FILE)
    assert set(saved) == {key.removeprefix("unet.") for key in load_file(run_dir / LORA_WEIGHTS)}
    from_checkpoint = load_file(export_run(run_dir, "kohya", tmp_path / "step.safetensors", checkpoint="latest"))
    from_run = load_file(export_run(run_dir, "kohya", tmp_path / "run.safetensors"))
    assert from_checkpoint.keys() == from_run.keys()
    assert all(torch.equal(from_checkpoint[key], from_run[key]) for key in from_run)
