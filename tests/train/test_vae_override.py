"""`vae:` replaces the base's VAE everywhere a run touches one: encoding, the latent cache's key, validation images,
`archdiff sample` of the run and a fused export; a missing or wrong VAE is one line before anything loads."""

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from archdiff.config import load_recipe
from archdiff.errors import UserError
from archdiff.model.base import load_components, resolve_base
from archdiff.train.run import run

pytestmark = pytest.mark.slow

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def other_vae(tmp_path_factory):
    """The tiny SDXL's VAE with slightly changed weights, saved as a folder of its own (like a downloaded fixed VAE)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(resolve_base("tiny-sdxl").source, subfolder="vae")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("vae") / "other-vae"
    vae.save_pretrained(folder)
    return folder


def _unet_folder(tmp_path):
    folder = tmp_path / "unet"
    shutil.copytree(resolve_base("tiny-sdxl").source + "/unet", folder)
    return folder, "holds a UNet2DConditionModel, not an AutoencoderKL"


def _truncated(tmp_path, other_vae):
    folder = tmp_path / "cut"
    shutil.copytree(other_vae, folder)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    return folder, f"{WEIGHTS} is truncated or damaged"


def _eight_channels(tmp_path, other_vae):
    folder = tmp_path / "eight"
    shutil.copytree(other_vae, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    return folder, "has 8 latent channels, base 'tiny-sdxl' 4: pick a VAE made for this base"


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp_path, _: (tmp_path / "nowhere", "vae '.*nowhere' does not exist and is no Hub model id"),
        lambda *_: ("madebyollin/sdxl-vae-fp16-fix", "is not a local folder and the Hugging Face Hub is not reachable"),
        lambda tmp_path, _: ((tmp_path / "empty").mkdir() or tmp_path / "empty", "holds no model config, not an AutoencoderKL"),
        lambda tmp_path, _: _unet_folder(tmp_path),
        _truncated,
        _eight_channels,
    ],
    ids=["missing", "offline-hub", "empty", "unet", "truncated", "channels"],
)
def test_a_missing_or_wrong_vae_is_one_line_before_anything_loads(tmp_path, other_vae, monkeypatch, make):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"{cls.__name__} loaded before the vae was checked")

    folder, message = make(tmp_path, other_vae)
    for model_class in (AutoencoderKL, UNet2DConditionModel):
        monkeypatch.setattr(model_class, "from_pretrained", classmethod(refuse))
    output = tmp_path / "run"
    with pytest.raises(UserError, match=message):
        run(load_recipe("demo-tiny", ["base=tiny-sdxl", f"vae={folder}", f"output={output}"]))
    assert not output.exists()


def test_the_vae_encodes_and_keys_the_latent_cache(other_vae):
    base, changed = load_components(resolve_base("tiny-sdxl")), load_components(resolve_base("tiny-sdxl", str(other_vae)))
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = [parts.vae.encode(pixels).latent_dist.mode() for parts in (base, changed)]
    assert not torch.allclose(latents[0], latents[1], atol=1e-3), "the other VAE's latents, not the base's"
    assert changed.fingerprint("vae") != base.fingerprint("vae")
    assert changed.fingerprint("unet") == base.fingerprint("unet") and changed.vae_folder == str(other_vae)


def test_a_run_with_a_vae_trains_draws_samples_and_exports_with_it(tmp_path, other_vae, monkeypatch):
    from archdiff.export import export_run
    from archdiff.lora_specs import LoraSpec
    from archdiff.sample import generate, load_pipeline, sample_to_folder

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    prompt = "timber house in mountains"
    overrides = [f"output={tmp_path / 'run'}", "base=tiny-sdxl", f"vae={other_vae}", "train.max_steps=2"]
    overrides += ["data.cache.latents=true", "data.center_crop=true", "validation.seeds=[0]", "validation.steps=2"]
    result = run(load_recipe("demo-tiny", overrides))
    assert f"vae: {other_vae}" in (result.run_dir / "recipe.yaml").read_text()

    components = load_components(resolve_base("tiny-sdxl", str(other_vae)))
    components.place("cpu", torch.float32)  # the dtype the run's cache key was salted with
    assert [p.name for p in (tmp_path / "cache" / "latents").iterdir()] == [components.fingerprint("vae")]

    validation = Image.open(result.run_dir / "samples" / "prompt00" / "00-seed0.png")
    (drawn,) = sample_to_folder(
        prompt, None, [LoraSpec(result.run_dir)], steps=2, guidance=7.5, seed=0, num_images=1, width=None, height=None,
        output=tmp_path / "sampled",
    )  # fmt: skip
    base_vae = load_pipeline(resolve_base("tiny-sdxl").source, [LoraSpec(result.run_dir)], "sdxl", device="cpu")
    (with_base_vae,) = generate(base_vae, prompt, [0], 2, 7.5, 64, 64)
    pixels = [torch.tensor(list(image.getdata()), dtype=torch.float) for image in (validation, Image.open(drawn), with_base_vae)]
    assert (pixels[0] - pixels[1]).abs().max() <= 1, "`archdiff sample` of the run draws what its validation drew"
    assert (pixels[0] - pixels[2]).abs().mean() > 5, "and the base's own VAE would have drawn something else"
    another_base = shutil.copytree(resolve_base("tiny-sdxl").source, tmp_path / "another-base")
    (on_another_base,) = sample_to_folder(
        prompt, str(another_base), [LoraSpec(result.run_dir)], steps=2, guidance=7.5, seed=0, num_images=1, width=None,
        height=None, output=tmp_path / "another",
    )  # fmt: skip
    on_another = torch.tensor(list(Image.open(on_another_base).getdata()), dtype=torch.float)
    assert (on_another - pixels[2]).abs().max() <= 1, "--base naming another model draws with that model's own VAE"

    fused = export_run(result.run_dir, "fused", tmp_path / "fused")
    expected, written = load_file(other_vae / WEIGHTS), load_file(fused / "vae" / WEIGHTS)
    assert expected.keys() == written.keys() and all(torch.equal(expected[k], written[k]) for k in expected)
