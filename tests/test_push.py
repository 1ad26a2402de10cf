"""`archdiff push` and `train` with hub.repo, through the real CLI in a subprocess, against a fake Hub on loopback
(tests/hub_server.py) that the real huggingface_hub client talks to: what it records is what would be uploaded.

The run folder is a copy of the demo run with things planted that must never leave it: a .env and a token file
holding the token, notes, and a link named like a sample image that points outside the run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hub_server import FakeHub
from huggingface_hub import ModelCard

from archdiff.model_card import model_card
from archdiff.run_files import LORA_WEIGHTS

TOKEN = f"hf_{secrets.token_hex(17)}"  # random per session: finding it anywhere means it leaked
REPO = "jane/facade-lora"


def allowlist(run: Path) -> set[str]:
    """What may be uploaded, from the run's recipe alone: the LoRA, card, recipe, final grid and final images."""
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    validation = recipe["validation"]
    images = {
        f"samples/prompt{p:02d}/{i:02d}-seed{seed}.png"
        for p in range(len(validation["prompts"]))
        for i, seed in enumerate(validation["seeds"])
    }
    return {LORA_WEIGHTS, "README.md", "recipe.yaml", f"samples/step-{recipe['train']['max_steps']:06d}.png", *images}


def archdiff(*args: str, cwd: Path, hub: FakeHub | None = None, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter: no Hugging Face setting or stored login from this machine (HOME is empty);
    with `hub`, online against the fake endpoint."""
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE")) and k != "XDG_CACHE_HOME"}
    env |= {"HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if hub:
        env |= {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0"}
    if token:
        env["HF_TOKEN"] = token
    command = [sys.executable, "-m", "archdiff", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def files_holding_token(folder: Path) -> set[str]:
    """Files (links not followed) under `folder` whose bytes contain the token."""
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and TOKEN.encode() in p.read_bytes()
    }


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    shown = f"rc={result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("archdiff: error: "), shown
    assert TOKEN not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def server():
    with FakeHub.running() as hub:
        yield hub


@pytest.fixture
def hub(server: FakeHub) -> FakeHub:
    server.reset()
    return server


@pytest.fixture
def run(demo_run, tmp_path: Path) -> Path:
    """A copy of the demo run, with a .env, a token file, notes and a link to a file outside the run planted in it."""
    run = tmp_path / "run"
    shutil.copytree(demo_run.run_dir, run)
    (run / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    (run / "token").write_text(TOKEN)
    (run / "notes.txt").write_text("try rank 32 next\n")
    outside = tmp_path / "outside.png"
    outside.write_bytes(TOKEN.encode())
    (run / "samples" / "prompt00" / "09-seed9.png").symlink_to(outside)
    return run


def test_dry_run_lists_the_allowlist_and_writes_the_card(run: Path, hub: FakeHub, tmp_path: Path) -> None:
    result = archdiff("push", str(run), "--repo", REPO, "--dry-run", cwd=tmp_path, hub=hub)
    assert result.returncode == 0, result.stderr
    *listing, summary = result.stdout.strip().splitlines()
    assert {line.split()[0] for line in listing} == allowlist(run)
    assert all(line.split()[-1] in ("B", "KB", "MB") for line in listing), listing
    assert "dry run" in summary and str(run / "README.md") in summary
    assert hub.requests == [], "a dry run talks to no Hub"
    assert TOKEN not in result.stdout + result.stderr
    assert files_holding_token(run) == {".env", "token"}

    card = ModelCard.load(run / "README.md")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert card.data.license == "apache-2.0"  # the tiny base's, archdiff's own
    assert card.data.base_model is None  # tiny-sd15 is no Hub model
    assert {"lora", "diffusers", "text-to-image", "architecture", "stable-diffusion"} <= set(card.data.tags)
    prompt = recipe["validation"]["prompts"][0]
    assert card.data.widget and all(entry["text"] == prompt for entry in card.data.widget)
    assert {entry["output"]["url"] for entry in card.data.widget} == {n for n in allowlist(run) if "/prompt" in n}
    assert "from diffusers import StableDiffusionPipeline" in card.text
    assert f'load_lora_weights("{REPO}", weight_name="{LORA_WEIGHTS}")' in card.text
    assert f"![Samples after {recipe['train']['max_steps']} steps](samples/step-" in card.text


@pytest.mark.parametrize("private", [True, False], ids=["private", "public"])
def test_push_uploads_exactly_the_allowlist_in_one_commit(run: Path, hub: FakeHub, tmp_path: Path, private: bool) -> None:
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["caption"]["trigger"] = "arcdf style"
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = archdiff("push", str(run), "--repo", REPO, *(["--private"] if private else []), cwd=tmp_path, hub=hub)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith(f"to {hub.endpoint}/{REPO}")

    (create,) = hub.named("create")
    assert create.json() == {"name": "facade-lora", "organization": "jane", "visibility": "private" if private else "public"}
    assert all(request.status == 200 for request in hub.requests), [(r.method, r.path) for r in hub.requests]
    files = hub.committed_files()
    assert set(files) == allowlist(run)
    assert files[LORA_WEIGHTS] == (run / LORA_WEIGHTS).read_bytes()
    shared, local = yaml.safe_load(files["recipe.yaml"]), yaml.safe_load((run / "recipe.yaml").read_text())
    assert shared["output"] == "runs/demo-tiny" and str(tmp_path) not in files["recipe.yaml"].decode(), "no local paths"
    assert {k: v for k, v in shared.items() if k != "output"} == {k: v for k, v in local.items() if k != "output"}
    assert files["README.md"] == (run / "README.md").read_bytes(), "the run keeps the card it pushed"

    card = ModelCard(files["README.md"].decode())
    assert "architecture" in card.data.tags and card.data.license == "apache-2.0"
    assert card.data.instance_prompt == "arcdf style" and "`tiny-sd15`" in card.text
    assert {entry["output"]["url"] for entry in card.data.widget} <= set(files)

    # the token goes in the Authorization header of the authenticated calls, and nowhere else
    for request in hub.requests:
        others = {k: v for k, v in request.headers.items() if k != "authorization"}
        assert TOKEN not in json.dumps(others) and TOKEN.encode() not in request.body, request.path
    assert {r.headers.get("authorization") for r in hub.requests if r.path != "/api/agent-harnesses"} == {f"Bearer {TOKEN}"}
    assert not any(TOKEN.encode() in content for content in files.values())
    assert TOKEN not in result.stdout + result.stderr
    assert files_holding_token(run) == {".env", "token"}
    assert files_holding_token(tmp_path / "home") == set()


def test_train_with_hub_repo_pushes_at_the_end(hub: FakeHub, tmp_path: Path) -> None:
    output = tmp_path / "trained"
    settings = ["hub.repo=jane/tiny", "validation.seeds=[0]"]
    args = ["train", "--recipe", "demo-tiny", "--max-steps", "4", "--output", str(output)]
    result = archdiff(*args, *(arg for s in settings for arg in ("--set", s)), cwd=tmp_path, hub=hub)
    assert result.returncode == 0, result.stderr
    assert f"pushed:  {hub.endpoint}/jane/tiny" in result.stdout
    assert hub.named("create")[0].json()["visibility"] == "public"
    files = hub.committed_files()
    assert set(files) == allowlist(output)
    assert files[LORA_WEIGHTS] == (output / LORA_WEIGHTS).read_bytes()
    assert TOKEN not in result.stdout + result.stderr


def test_train_with_hub_repo_and_no_token_stops_before_training(hub: FakeHub, tmp_path: Path) -> None:
    output = tmp_path / "never"
    args = ["train", "--recipe", "demo-tiny", "--output", str(output), "--set", "hub.repo=jane/tiny"]
    message = one_error_line(archdiff(*args, cwd=tmp_path, hub=hub, token=None))
    assert "set HF_TOKEN" in message and "drop hub from the recipe" in message
    assert not output.exists() and hub.requests == []


def test_failed_push_after_training_keeps_the_run_and_says_how_to_retry(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_with = 500
    output = tmp_path / "kept"
    args = ["train", "--recipe", "demo-tiny", "--max-steps", "2", "--output", str(output), "--set", "hub.repo=jane/tiny"]
    result = archdiff(*args, "--set", "validation.prompts=[]", cwd=tmp_path, hub=hub)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]  # after training's progress bars
    assert message.startswith("archdiff: error: ") and TOKEN not in result.stdout + result.stderr
    assert f"the run is kept in {output}" in message
    assert message.endswith(f"retry with: archdiff push {output} --repo jane/tiny")
    assert (output / LORA_WEIGHTS).is_file()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param("missing-run", "does not exist", id="missing-run-folder"),
        pytest.param("no-lora", "holds no LoRA", id="folder-without-lora"),
        pytest.param("bad-repo", "USER/NAME", id="repo-without-slash"),
        pytest.param("no-token", "set HF_TOKEN", id="no-token"),
        pytest.param(401, "answered 401", id="server-401"),
        pytest.param(500, "answered 500", id="server-500"),
    ],
)
def test_bad_push_is_one_line_without_the_token(run: Path, hub: FakeHub, tmp_path: Path, case, expected: str) -> None:
    target, repo, token = run, REPO, TOKEN
    if case == "missing-run":
        target = tmp_path / "nowhere"
    elif case == "no-lora":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "bad-repo":
        repo = "noslash"
    elif case == "no-token":
        token = None
    else:
        hub.fail_with = case
    message = one_error_line(archdiff("push", str(target), "--repo", repo, cwd=tmp_path, hub=hub, token=token))
    assert expected in message
    if isinstance(case, int):
        assert message.endswith(f"retry with: archdiff push {run} --repo {REPO}")
        assert hub.requests, "the failure came from the server"
    else:
        assert hub.requests == [], "bad input is refused before any request"


@pytest.mark.parametrize(
    ("base", "pipeline", "license_", "base_model"),
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", "StableDiffusionXLPipeline", "openrail++", True),
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "StableDiffusionPipeline", "creativeml-openrail-m", True),
        ("someone/own-sd-finetune", "StableDiffusionPipeline", "other", True),
        ("local-xl", "StableDiffusionXLPipeline", "mit", False),
    ],
)
def test_card_names_the_base_its_licence_and_pipeline(
    run: Path, tmp_path: Path, base: str, pipeline: str, license_: str, base_model: bool
) -> None:
    """Offline here: a Hub base's licence comes from the table of well-known bases; a local base's from its README."""
    if base == "local-xl":
        folder = tmp_path / "models" / "local-xl"
        folder.mkdir(parents=True)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
        (folder / "README.md").write_text("---\nlicense: mit\n---\n# a local SDXL\n")
        base = str(folder)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["base"] = base
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    card = model_card(run, REPO)
    assert card.data.license == license_
    assert card.data.base_model == (base if base_model else None)
    assert f"from diffusers import {pipeline}\n" in card.text
    assert ("stable-diffusion-xl" in card.data.tags) == (pipeline == "StableDiffusionXLPipeline")
    assert str(tmp_path) not in card.content, "no local path in a public card"
    if license_ == "other":
        assert "check it before you use or share" in card.text


def test_a_card_edited_by_hand_is_pushed_as_it_is(run: Path, hub: FakeHub, tmp_path: Path) -> None:
    """dry run, edit the card, push: the edits go up and stay; --new-card is the only way to replace them."""
    assert archdiff("push", str(run), "--repo", REPO, "--dry-run", cwd=tmp_path).returncode == 0
    card = run / "README.md"
    edited = card.read_text().replace("# facade-lora", "# facade-lora\n\nShot on the client's site in March.")
    assert edited != card.read_text()
    card.write_text(edited)

    result = archdiff("push", str(run), "--repo", REPO, cwd=tmp_path, hub=hub)
    assert result.returncode == 0, result.stderr
    assert f"model card: your edited {card}, kept as it is" in result.stdout
    assert hub.committed_files()["README.md"] == edited.encode() and card.read_text() == edited

    result = archdiff("push", str(run), "--repo", REPO, "--dry-run", "--new-card", cwd=tmp_path)
    assert result.returncode == 0 and "model card written to" in result.stdout, result.stdout + result.stderr
    assert "Shot on the client's site" not in card.read_text()


def test_archdiffs_own_card_follows_the_run_and_a_readme_of_yours_is_never_replaced(run: Path) -> None:
    from archdiff.push import push_run

    assert not push_run(run, REPO, dry_run=True).card_kept
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["caption"]["trigger"] = "arcdf style"
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert not push_run(run, REPO, dry_run=True).card_kept, "an unedited card is archdiff's: rewritten"
    assert "arcdf style" in (run / "README.md").read_text()

    (run / "README.md").write_text("# My notes on this run\n")
    assert push_run(run, REPO, dry_run=True).card_kept
    assert (run / "README.md").read_text() == "# My notes on this run\n"


def test_card_names_the_trigger_words(run: Path) -> None:
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["caption"]["trigger"] = "arcdf style"
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    card = model_card(run, REPO)
    assert card.data.instance_prompt == "arcdf style"
    assert "Start the prompt with `arcdf style`" in card.text
    assert '"arcdf style, timber house in mountains"' in card.text

    recipe["dreambooth"] = {"instance_prompt": "a photo of sks house", "class_prompt": "a photo of a house"}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    card = model_card(run, REPO)
    assert card.data.instance_prompt == "a photo of sks house"
    assert "dreambooth" in card.data.tags
    assert "`a photo of sks house`" in card.text


def test_shared_recipe_names_local_folders_by_their_last_part(tmp_path: Path) -> None:
    from archdiff.push import shareable_recipe

    photos, base = tmp_path / "clients" / "villa-x" / "photos", tmp_path / "models" / "my-sd15"
    photos.mkdir(parents=True)
    base.mkdir(parents=True)
    recipe = {
        "name": "villa",
        "base": str(base),
        "output": str(tmp_path / "runs" / "villa"),
        "data": {"sources": [{"path": str(photos)}, {"path": "facades"}, {"path": "user/hub-set"}]},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    shared = yaml.safe_load(shareable_recipe(tmp_path / "recipe.yaml"))
    assert shared["output"] == "runs/villa" and shared["base"] == "my-sd15"
    assert [source["path"] for source in shared["data"]["sources"]] == ["photos", "facades", "user/hub-set"]


# ControlNet runs (issue 15): the ControlNet goes to the repo root, the card names its control type and shows the grid.

CONTROLNET_REPO = "jane/facade-controlnet"
CONTROLNET_FILES = {"config.json", "diffusion_pytorch_model.safetensors"}  # RUN/controlnet/* at the repo root


def _train_controlnet(folder: Path, *settings: str) -> Path:
    """demo-controlnet for 4 steps, one prompt and one seed (tiny-sd15, CPU, ~30 s)."""
    from archdiff.config import load_recipe
    from archdiff.train.run import run

    overrides = ["train.max_steps=4", "train.val_every=4", "validation.prompts=[a facade]", "validation.seeds=[0]"]
    return run(load_recipe("demo-controlnet", [f"output={folder}", *overrides, "validation.steps=2", *settings])).run_dir


@pytest.fixture(scope="module")
def controlnet_run(tmp_path_factory, tiny_base) -> Path:
    return _train_controlnet(tmp_path_factory.mktemp("controlnet") / "run")


@pytest.fixture(scope="module")
def controlnet_lora_run(tmp_path_factory, tiny_base) -> Path:
    """A ControlNet trained with a UNet style LoRA beside it (controlnet.unet_lora)."""
    return _train_controlnet(tmp_path_factory.mktemp("controlnet-lora") / "run", "controlnet.unet_lora=true")


@pytest.fixture
def cn_run(controlnet_run: Path, tmp_path: Path) -> Path:
    """A copy of the ControlNet run with a .env, a token file and notes planted in it."""
    run = tmp_path / "cn-run"
    shutil.copytree(controlnet_run, run)
    (run / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    (run / "token").write_text(TOKEN)
    (run / "notes.txt").write_text("try canny next\n")
    return run


def controlnet_allowlist(run: Path, lora: bool = False) -> set[str]:
    return allowlist(run) - {LORA_WEIGHTS} | CONTROLNET_FILES | ({LORA_WEIGHTS} if lora else set())


def set_recipe(run: Path, **changes) -> None:
    """Change nested recipe settings, e.g. set_recipe(run, **{"data.control.type": "canny"})."""
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        section = recipe
        for parent in parents:
            section = section[parent]
        section[last] = value
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def test_controlnet_push_puts_the_controlnet_at_the_repo_root_with_its_card(cn_run: Path, hub: FakeHub, tmp_path: Path) -> None:
    expected = controlnet_allowlist(cn_run)
    result = archdiff("push", str(cn_run), "--repo", CONTROLNET_REPO, "--dry-run", cwd=tmp_path, hub=hub)
    assert result.returncode == 0, result.stderr
    assert {line.split()[0] for line in result.stdout.strip().splitlines()[:-1]} == expected
    assert hub.requests == []

    result = archdiff("push", str(cn_run), "--repo", CONTROLNET_REPO, cwd=tmp_path, hub=hub)
    assert result.returncode == 0, result.stderr
    files = hub.committed_files()
    assert set(files) == expected
    for name in CONTROLNET_FILES:
        assert files[name] == (cn_run / "controlnet" / name).read_bytes(), name
    header = json.loads(hub.named("commit")[0].body.splitlines()[0])["value"]
    assert header["summary"] == "Upload ControlNet, model card and samples with archdiff"
    assert TOKEN not in result.stdout + result.stderr and files_holding_token(cn_run) == {".env", "token"}

    card = ModelCard(files["README.md"].decode())
    assert {"controlnet", "diffusers", "text-to-image", "architecture", "stable-diffusion"} <= set(card.data.tags)
    assert "lora" not in card.data.tags and card.data.license == "apache-2.0" and card.data.base_model is None
    assert "Control type `drawing`: white lines on black" in card.text
    assert "`archdiff sample --control-type drawing`" in card.text
    assert "![Control and results after 4 steps](samples/step-000004.png)" in card.text
    assert "control (first column)" in card.text and "samples/step-000004.png" in files
    assert f'ControlNetModel.from_pretrained("{CONTROLNET_REPO}", dtype=torch.float16)' in card.text
    assert "StableDiffusionControlNetPipeline.from_pretrained(" in card.text and "load_lora_weights" not in card.text
    command = (
        f"archdiff sample 'a facade' --base tiny-sd15 --controlnet {CONTROLNET_REPO} --control sketch.png --control-type drawing"
    )
    assert command + "\n" in card.text
    assert str(tmp_path) not in card.content


@pytest.mark.parametrize("which", ["controlnet_run", "controlnet_lora_run"], ids=["controlnet", "controlnet+unet-lora"])
def test_card_diffusers_code_runs_on_the_pushed_files(which: str, request, tiny_base: str, tmp_path: Path) -> None:
    """The card's diffusers code, run as written (CPU and float32 instead of CUDA and float16) in a fresh interpreter
    that never imports archdiff, on a folder laid out as the repo: it loads the ControlNet (and LoRA) and draws."""
    from PIL import Image

    from archdiff.push import push_run

    run = tmp_path / "run"
    shutil.copytree(request.getfixturevalue(which), run)
    repo = tmp_path / "repo"
    for name, path in push_run(run, CONTROLNET_REPO, dry_run=True).files:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, repo / name)
    assert (LORA_WEIGHTS in {p.name for p in repo.iterdir()}) == (which == "controlnet_lora_run")
    card = (repo / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    for written, local in [
        (json.dumps(CONTROLNET_REPO), json.dumps(str(repo))),
        ('"tiny-sd15"', json.dumps(tiny_base)),
        ("torch.float16", "torch.float32"),
        ('.to("cuda")', ""),
    ]:
        assert written in code, written
        code = code.replace(written, local)
    work = tmp_path / "work"
    work.mkdir()
    with Image.open(repo / "samples" / "step-000004.png") as grid:
        grid.crop((0, 0, 64, 64)).save(work / "control.png")  # the grid's first column: a control map
    check = (
        "\nimport sys\nassert not [m for m in sys.modules if m.startswith('archdiff')]\nprint(sorted(pipe.get_list_adapters()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code + check], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == ("['unet']" if which == "controlnet_lora_run" else "[]")
    with Image.open(work / "sample.png") as image:
        assert image.size == (64, 64)


def test_controlnet_with_unet_lora_pushes_both(controlnet_lora_run: Path, tmp_path: Path) -> None:
    from archdiff.push import push_run

    run = tmp_path / "run"
    shutil.copytree(controlnet_lora_run, run)
    pushed = push_run(run, CONTROLNET_REPO, dry_run=True)
    assert {name for name, _ in pushed.files} == controlnet_allowlist(run, lora=True)
    card = ModelCard.load(run / "README.md")
    assert {"controlnet", "lora"} <= set(card.data.tags)
    assert f'pipe.load_lora_weights("{CONTROLNET_REPO}", weight_name="{LORA_WEIGHTS}")' in card.text
    assert f"--control-type drawing --lora {CONTROLNET_REPO}\n" in card.text
    assert "| UNet LoRA | rank 16, alpha 16.0 |" in card.text


def test_an_earlier_runs_weights_left_in_the_folder_do_not_go_up(cn_run: Path, run: Path) -> None:
    """What a run made comes from its recipe: a folder reused with --overwrite may still hold the other kind's weights."""
    from archdiff.push import push_run

    shutil.copyfile(cn_run / "controlnet" / "diffusion_pytorch_model.safetensors", cn_run / LORA_WEIGHTS)
    assert {name for name, _ in push_run(cn_run, CONTROLNET_REPO, dry_run=True).files} == controlnet_allowlist(cn_run)
    assert "lora" not in ModelCard.load(cn_run / "README.md").data.tags

    shutil.copytree(cn_run / "controlnet", run / "controlnet")
    assert {name for name, _ in push_run(run, REPO, dry_run=True).files} == allowlist(run)
    card = ModelCard.load(run / "README.md")
    assert "controlnet" not in card.data.tags and "from diffusers import StableDiffusionPipeline\n" in card.text


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated-weights", "controlnet/diffusion_pytorch_model.safetensors is truncated or damaged"),
        ("no-config", "has no controlnet/config.json, which its recipe.yaml says the run made"),
        ("not-a-controlnet-config", "is not a diffusers ControlNet config"),
        ("unet-lora-missing", f"has no {LORA_WEIGHTS}, which its recipe.yaml says the run made"),
        ("controlnet-not-a-mapping", "'controlnet' is not a mapping of settings"),
    ],
)
def test_a_damaged_controlnet_run_is_one_line_before_anything_uploads(
    cn_run: Path, hub: FakeHub, tmp_path: Path, damage: str, expected: str
) -> None:
    weights, config = cn_run / "controlnet" / "diffusion_pytorch_model.safetensors", cn_run / "controlnet" / "config.json"
    if damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "no-config":
        config.unlink()
    elif damage == "not-a-controlnet-config":
        config.write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    elif damage == "unet-lora-missing":
        set_recipe(cn_run, **{"controlnet.unet_lora": True})
    else:
        set_recipe(cn_run, controlnet=5)
    message = one_error_line(archdiff("push", str(cn_run), "--repo", CONTROLNET_REPO, cwd=tmp_path, hub=hub))
    assert expected in message
    assert hub.requests == [] and not (cn_run / "README.md").exists(), "refused before the card is written or a byte sent"


@pytest.mark.parametrize(
    ("control", "scale", "says"),
    [
        ("canny", 0.8, "runs `cv2.Canny(image, 50, 150)` on it (needs OpenCV"),
        ("lines", 1.0, "white straight line segments on black (MLSD style)"),
        ("none", 1.0, "control images used as given"),
    ],
)
def test_card_names_the_control_type_and_scale(cn_run: Path, control: str, scale: float, says: str) -> None:
    set_recipe(cn_run, **{"data.control.type": control, "data.control.canny_low": 50, "data.control.canny_high": 150})
    set_recipe(cn_run, **{"controlnet.scale": scale})
    text = model_card(cn_run, CONTROLNET_REPO).text
    assert f"Control type `{control}`: " in text and says in text
    assert f"--control-type {control}" + (f" --control-scale {scale}" if scale != 1.0 else "") + "\n" in text
    assert f"controlnet_conditioning_scale={scale}," in text and f"| Conditioning scale | {scale} |" in text


@pytest.mark.parametrize(
    ("base", "sdxl_config", "pipeline", "license_"),
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", True, "StableDiffusionXLControlNetPipeline", "openrail++"),
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", False, "StableDiffusionControlNetPipeline", "creativeml-openrail-m"),
        ("someone/own-finetune", True, "StableDiffusionXLControlNetPipeline", "other"),
    ],
)
def test_controlnet_card_names_the_pipeline_of_its_base(
    cn_run: Path, base: str, sdxl_config: bool, pipeline: str, license_: str
) -> None:
    """Offline, a Hub base's family comes from the ControlNet's own config (SDXL's text_time conditioning)."""
    config = cn_run / "controlnet" / "config.json"
    settings = json.loads(config.read_text())
    config.write_text(json.dumps(settings | {"addition_embed_type": "text_time" if sdxl_config else None}))
    set_recipe(cn_run, base=base)
    card = model_card(cn_run, CONTROLNET_REPO)
    assert f"from diffusers import ControlNetModel, {pipeline}\n" in card.text
    assert f'{pipeline}.from_pretrained("{base}", controlnet=controlnet' in card.text
    assert f"--base {base} --controlnet {CONTROLNET_REPO}" in card.text
    assert ("stable-diffusion-xl" in card.data.tags) == sdxl_config
    assert card.data.base_model == base and card.data.license == license_
