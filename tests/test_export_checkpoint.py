"""`archdiff export --checkpoint`: a training checkpoint's LoRA in every format, holding exactly that checkpoint's
tensors under names of its own; `best` follows eval's report.json, and every refusal is one line that writes nothing."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from archdiff.errors import UserError
from archdiff.export import export_run
from archdiff.model.base import resolve_base
from archdiff.run_files import LORA_WEIGHTS

pytestmark = pytest.mark.slow

NAME = "demo-tiny"
OUTPUTS = {"kohya": "lora.safetensors", "diffusers": "diffusers", "peft": "peft"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_base) -> Path:
    """Six steps, a checkpoint every two (steps 2, 4, 6), alpha != rank and a text-encoder LoRA."""
    from archdiff.config import load_recipe
    from archdiff.train.run import run

    overrides = [
        f"output={tmp_path_factory.mktemp('checkpointed') / 'run'}",
        "train.max_steps=6",
        "train.checkpoint_every=2",
        "lora.alpha=4",
        "lora.text_encoder={rank: 4, alpha: 2}",
        "validation.prompts=[]",
    ]
    return run(load_recipe("demo-tiny", overrides)).run_dir


@pytest.fixture
def own_run(run_dir, tmp_path) -> Path:
    """A copy of the run to export into with default names, or to damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def checkpoint_tensors(run_dir: Path, step: int) -> dict:
    """What the training checkpoint itself stores, by (component, module, A|B)."""
    folder = run_dir / "checkpoints" / f"step-{step:06d}"
    tensors = {}
    for component, name in (("unet", "adapter.safetensors"), ("text_encoder", "text_encoder_adapter.safetensors")):
        tensors |= {normalized(f"{component}.{key}"): value for key, value in load_file(folder / name).items()}
    return tensors


def normalized(key: str, component: str = "") -> tuple[str, str, str]:
    """(component, module with `_` for `.`, A or B) of a diffusers key, a peft key of `component`, or a kohya key."""
    if key.startswith("lora_"):  # kohya: lora_unet_down_blocks_0_….lora_down.weight, lora_te_text_model_encoder_….
        name, _, kind = key.partition(".")
        component = "unet" if name.startswith("lora_unet_") else "text_encoder"
        return component, name.removeprefix("lora_unet_").removeprefix("lora_te_text_model_"), "A" if "down" in kind else "B"
    if component:
        key = f"{component}.{key.removeprefix('base_model.model.')}"
    component, _, rest = key.partition(".")
    module, _, kind = rest.rpartition(".lora_")
    return component, module.replace(".", "_"), kind[0]


def exported_tensors(fmt: str, path: Path) -> dict:
    """The LoRA matrices of an export, by (component, module, A|B) whatever the format's key names."""
    if fmt == "kohya":
        return {normalized(key): value for key, value in load_file(path).items() if not key.endswith(".alpha")}
    if fmt == "diffusers":
        return {normalized(key): value for key, value in load_file(path / LORA_WEIGHTS).items()}
    tensors = {}
    for component in ("unet", "text_encoder"):
        loaded = load_file(path / component / "adapter_model.safetensors")
        tensors |= {normalized(key, component): value for key, value in loaded.items()}
    return tensors


def same(left: dict, right: dict) -> bool:
    assert left.keys() == right.keys(), sorted(set(left) ^ set(right))[:4]
    return all(torch.equal(left[key], right[key]) for key in left)


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_each_format_holds_exactly_that_checkpoints_tensors(run_dir, tmp_path, fmt):
    early = exported_tensors(fmt, export_run(run_dir, fmt, tmp_path / "early" / OUTPUTS[fmt], checkpoint="2"))
    last = exported_tensors(fmt, export_run(run_dir, fmt, tmp_path / "last" / OUTPUTS[fmt], checkpoint="step-000006"))
    final = exported_tensors(fmt, export_run(run_dir, fmt, tmp_path / "final" / OUTPUTS[fmt]))
    assert len(early) > 100 and {key[0] for key in early} == {"unet", "text_encoder"}
    assert same(early, checkpoint_tensors(run_dir, 2))
    assert not same(early, final), "step 2 is an earlier LoRA than the final one"
    assert same(last, final), "the last checkpoint is the final LoRA"


def test_a_fused_checkpoint_is_the_base_plus_that_checkpoints_update(run_dir, tmp_path):
    """Every fused linear weight is base + up @ down * alpha / rank of step 2's tensors (UNet 4/16, text encoder 2/4)."""
    folder = export_run(run_dir, "fused", tmp_path / "fused", checkpoint="2")
    source = Path(resolve_base("tiny-sd15").source)
    lora, final = checkpoint_tensors(run_dir, 2), checkpoint_tensors(run_dir, 6)
    checked = 0
    for component, scale in (("unet", 4 / 16), ("text_encoder", 2 / 4)):
        name = "diffusion_pytorch_model.safetensors" if component == "unet" else "model.safetensors"
        fused, base = load_file(folder / component / name), load_file(source / component / name)
        by_module = {key.removeprefix("text_model.").removesuffix(".weight").replace(".", "_"): key for key in base}
        for (part, module, kind), down in lora.items():
            if part != component or kind != "A" or down.dim() != 2:
                continue
            weight = by_module[module]
            update = lora[part, module, "B"] @ down * scale
            torch.testing.assert_close(fused[weight] - base[weight], update, atol=1e-6, rtol=1e-4)
            assert not torch.allclose(update, final[part, module, "B"] @ final[part, module, "A"] * scale)
            checked += 1
    assert checked > 20


def draw(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(0)
    return pipe(
        "timber house", num_inference_steps=4, guidance_scale=5.0, width=64, height=64, generator=generator, output_type="np"
    ).images[0]


def test_a_checkpoints_kohya_file_loads_in_plain_diffusers_to_that_checkpoints_images(run_dir, tmp_path):
    from diffusers import DiffusionPipeline

    def plain(folder=None, weight_name=None):
        pipe = DiffusionPipeline.from_pretrained(resolve_base("tiny-sd15").source)
        if folder is not None:
            pipe.load_lora_weights(str(folder), weight_name=weight_name)
        return pipe

    kohya = export_run(run_dir, "kohya", tmp_path / "k.safetensors", checkpoint="2")
    diffusers = export_run(run_dir, "diffusers", tmp_path / "d", checkpoint="2")
    reloaded, own = draw(plain(kohya.parent, kohya.name)), draw(plain(diffusers))
    assert np.array_equal(reloaded, own), f"max difference {np.abs(reloaded - own).max()}"
    assert not np.array_equal(own, draw(plain(run_dir))), "step 2 draws differently from the final LoRA"


def test_kohya_header_names_the_step_and_exports_are_reproducible(run_dir, tmp_path):
    path = export_run(run_dir, "kohya", tmp_path / "a.safetensors", checkpoint="4")
    with safe_open(str(path), "pt") as handle:
        header = handle.metadata()
        alphas = {float(handle.get_tensor(key)) for key in handle.keys() if key.endswith(".alpha")}
    assert header["ss_output_name"] == header["modelspec.title"] == f"{NAME}-step-000004"
    assert (header["ss_steps"], header["ss_max_train_steps"], header["ss_network_alpha"]) == ("4", "6", "4")
    assert alphas == {4.0, 2.0}, "lora_alpha per module, as for the final LoRA"
    assert export_run(run_dir, "kohya", tmp_path / "b.safetensors", checkpoint="4").read_bytes() == path.read_bytes()
    with safe_open(str(export_run(run_dir, "kohya", tmp_path / "final.safetensors")), "pt") as handle:
        final = handle.metadata()
    assert final["ss_output_name"] == NAME and "ss_steps" not in final, "the final LoRA's header is unchanged"


def test_default_names_never_touch_the_final_export(own_run):
    final = export_run(own_run, "kohya")
    before = final.read_bytes()
    exported = {fmt: export_run(own_run, fmt, checkpoint="2") for fmt in ("kohya", "diffusers", "peft")}
    assert final == own_run / "export" / f"{NAME}-kohya.safetensors" and final.read_bytes() == before
    assert exported == {
        "kohya": own_run / "export" / f"{NAME}-step-000002-kohya.safetensors",
        "diffusers": own_run / "export" / "diffusers-step-000002",
        "peft": own_run / "export" / "peft-step-000002",
    }
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        export_run(own_run, "kohya", checkpoint="step-000002")
    assert export_run(own_run, "kohya", checkpoint="2", overwrite=True).read_bytes() == exported["kohya"].read_bytes()
    assert export_run(own_run, "diffusers", checkpoint="latest") == own_run / "export" / "diffusers-step-000006"


def test_a_controlnet_run_with_a_unet_lora_exports_its_checkpoints(own_run):
    """Only the run's recipe tells a ControlNet run that trained a UNet LoRA beside it from one that did not."""
    recipe = own_run / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "controlnet:\n  unet_lora: true\n")
    path = export_run(own_run, "diffusers", checkpoint="4")
    assert same(exported_tensors("diffusers", path), checkpoint_tensors(own_run, 4))


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The real entry point in a fresh interpreter, offline, with the session's cache (its tiny-sd15)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "archdiff", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def digest(folder: Path) -> dict[str, str]:
    """Every file's sha256 and every folder, by relative name: a refusal changes none and adds none."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in folder.rglob("*")
    }


def write_report(run: Path, best) -> None:
    """A report.json as `archdiff eval` writes it (the parts export reads, and a few it does not)."""
    (run / "eval").mkdir(exist_ok=True)
    rows = [{"name": "base", "step": None, "fd_dino": 3.0}, {"name": "step-000004", "step": 4, "fd_dino": 1.2}]
    report = {"run": str(run), "recipe": NAME, "base": "tiny-sd15", "rows": rows, "best": best}
    (run / "eval" / "report.json").write_text(json.dumps(report))


def test_best_exports_the_step_the_report_names(own_run):
    from archdiff.file_digests import folder_digest

    weights = folder_digest(own_run / "checkpoints" / "step-000004")  # what eval records of the files it scored
    write_report(own_run, {"metric": "fd_dino", "name": "step-000004", "step": 4, "value": 1.2, "weights": weights})
    result = cli(own_run.parent, "export", "run", "--format", "kohya", "--checkpoint", "best")
    assert result.returncode == 0, result.stderr
    path = own_run / "export" / f"{NAME}-step-000004-kohya.safetensors"
    assert str(path.relative_to(own_run.parent)) in result.stdout
    assert same(exported_tensors("kohya", path), checkpoint_tensors(own_run, 4))


def no_report(run: Path) -> None:
    """The run as it is: never evaluated."""


def base_won(run: Path) -> None:
    write_report(run, {"metric": "fd_dino", "name": "base", "step": None, "value": 3.0})


def best_step_deleted(run: Path) -> None:
    write_report(run, {"metric": "fd_dino", "name": "step-000004", "step": 4, "value": 1.2})
    shutil.rmtree(run / "checkpoints" / "step-000004")


def best_step_retrained(run: Path) -> None:
    """Scored by eval, then written again at the same step (a resumed run): the report's digest no longer matches."""
    write_report(run, {"metric": "fd_dino", "name": "step-000004", "step": 4, "value": 1.2, "weights": "0123456789abcdef0123"})


def not_json(run: Path) -> None:
    write_report(run, {})
    (run / "eval" / "report.json").write_text('{"run": "run", "rows": [')


def no_best(run: Path) -> None:
    write_report(run, None)
    report = json.loads((run / "eval" / "report.json").read_text())
    (run / "eval" / "report.json").write_text(json.dumps({key: value for key, value in report.items() if key != "best"}))


def step_not_a_number(run: Path) -> None:
    write_report(run, {"metric": "fd_dino", "name": "step-000004", "step": "4", "value": 1.2})


def controlnet_run(run: Path) -> None:
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "controlnet:\n  unet_lora: false\n")


@pytest.mark.parametrize(
    ("damage", "spec", "message"),
    [
        (no_report, "best", r"not been evaluated \(.*eval/report.json is missing\): run `archdiff eval run` first$"),
        (base_won, "best", r"eval/report.json: the base model without the LoRA scored best \(fd_dino\), so there is no"),
        (best_step_deleted, "best", r"names step 4 best, but 'run' no longer has a checkpoint there \(it has steps 2, 6;"),
        (best_step_retrained, "best", r"step-000004 changed after `archdiff eval` scored it best \(the run was resumed"),
        (not_json, "best", r"eval/report.json is damaged \(.*\): run `archdiff eval run` again$"),
        (no_best, "best", r"eval/report.json is damaged \(no 'best'\)"),
        (step_not_a_number, "best", r"eval/report.json is damaged \(its best entry has step '4'\)"),
        (no_report, "5", r"'run' has no checkpoint at step 5 \(it has steps 2, 4, 6\)$"),
        (no_report, "all", r"--checkpoint takes best, latest or a step like 200 or step-000200 \(got 'all'\)$"),
        (controlnet_run, "2", r"'run' is a ControlNet run without a LoRA: its checkpoints hold a ControlNet, not a LoRA"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(own_run, damage, spec, message):
    import re

    damage(own_run)
    before = digest(own_run)
    result = cli(own_run.parent, "export", "run", "--format", "diffusers", "--checkpoint", spec)
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (2, 1), result.stdout + result.stderr
    assert lines[0].startswith("archdiff: error: ") and re.search(message, lines[0]), lines[0]
    assert digest(own_run) == before, "nothing written: no export, no checkpoint LoRA under eval/"
