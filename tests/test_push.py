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
