"""A LoRA on the text encoder as well: trained, checkpointed, and restored by plain diffusers."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from archdiff.config import load_recipe
from archdiff.errors import UserError
from archdiff.train.run import run

pytestmark = pytest.mark.slow

PROMPT = "timber house in mountains"

PLAIN_DIFFUSERS = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from diffusers import DiffusionPipeline
    base, run_dir, out = sys.argv[1:4]
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(run_dir)
    encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    for encoder in filter(None, encoders):
        assert any("lora" in name for name, _ in encoder.named_modules()), "every text-encoder part loaded"
    generator = torch.Generator("cpu").manual_seed(0)
    image = pipe(PROMPT, num_inference_steps=20, guidance_scale=7.5, generator=generator, width=64, height=64).images[0]
    np.save(out, np.asarray(image))
    assert not any(name.startswith("archdiff") for name in sys.modules)
    """
).replace("PROMPT", repr(PROMPT))


@pytest.mark.parametrize(
    ("base", "encoders"), [("tiny-sd15", ["text_encoder"]), ("tiny-sdxl", ["text_encoder", "text_encoder_2"])]
)
def test_text_encoder_lora_round_trips_through_plain_diffusers(tmp_path, tiny_base, base, encoders):
    from archdiff.model.base import resolve_base

    overrides = [
        f"base={base}",
        f"output={tmp_path / 'te'}",
        "train.max_steps=30",
        "lora.text_encoder={rank: 4, alpha: 4, learning_rate: 1.0e-3}",
        "validation.every=null",
        "validation.seeds=[0]",
        "validation.steps=20",
    ]
    result = run(load_recipe("demo-tiny", overrides))
    checkpoint = result.run_dir / "checkpoints" / "step-000030"
    for encoder in encoders:
        with safe_open(result.lora_file, "pt") as weights:
            keys = [k for k in weights.keys() if k.startswith(f"{encoder}.")]
            trained = [weights.get_tensor(k) for k in keys if ".lora_B." in k]
        # (SDXL reads the first encoder's penultimate layer, so its last layer's adapter gets no gradient)
        assert keys and any(t.abs().sum() > 0 for t in trained), f"the {encoder} adapter trained and was saved"
        assert (checkpoint / f"{encoder}_adapter.safetensors").is_file()

    script, out = tmp_path / "plain.py", tmp_path / "plain.npy"
    script.write_text(PLAIN_DIFFUSERS)
    source = resolve_base(base).source
    subprocess.run([sys.executable, str(script), source, str(result.run_dir), str(out)], check=True, cwd=tmp_path)
    in_memory = np.asarray(Image.open(result.run_dir / "samples" / "prompt00" / "00-seed0.png").convert("RGB"))
    assert np.array_equal(np.load(out), in_memory), "plain diffusers reproduces the trained model's image exactly"


def test_text_cache_and_a_training_text_encoder_exclude_each_other(tmp_path, tiny_base):
    recipe = load_recipe(
        "demo-tiny", [f"output={tmp_path / 'x'}", "lora.text_encoder={rank: 4}", "data.cache.text=true", "train.max_steps=1"]
    )
    with pytest.raises(UserError, match="data.cache.text cannot hold embeddings of a text encoder that trains"):
        run(recipe)


def test_resume_restores_the_text_encoder_adapter_exactly(tmp_path, tiny_base):
    import torch
    from safetensors.torch import load_file

    settings = ["train.max_steps=12", "train.checkpoint_every=6", "validation.prompts=[]", "lora.text_encoder={rank: 4}"]
    whole = run(load_recipe("demo-tiny", [f"output={tmp_path / 'whole'}", *settings]))
    resumed = run(
        load_recipe("demo-tiny", [f"output={tmp_path / 'resumed'}", *settings]),
        resume=str(whole.run_dir / "checkpoints" / "step-000006"),
    )
    assert resumed.steps_trained == 6
    expected, got = load_file(whole.lora_file), load_file(resumed.lora_file)
    assert any(k.startswith("text_encoder.") for k in expected)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
