"""`archdiff push`: share a finished run on the Hugging Face Hub as a LoRA or ControlNet repo with a model card.

Only an allowlist leaves the run folder (the LoRA, the ControlNet, the card, the resolved recipe, the final
samples): a run folder may also hold a .env, tokens or notes, and nothing decides by name what to leave out. The card itself
is written by `archdiff.model_card`. Stdlib + yaml here; huggingface_hub is imported inside the functions
that use it, so `archdiff --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from archdiff.errors import UserError
from archdiff.hub_ids import is_repo_id
from archdiff.model_card import CARD_FILE, CONTROLNET_FILES, final_samples, inside_run, public_name, run_weights, write_card
from archdiff.run_files import CONTROLNET_DIR, LORA_WEIGHTS, RECIPE_FILE


@dataclass(frozen=True)
class Pushed:
    files: list[tuple[str, Path]]  # (path in repo, local file), as uploaded or, for a dry run, as it would be
    url: str | None  # the repo's URL; None for a dry run
    card_kept: bool = False  # RUN/README.md was written or edited by hand, and went up as it is


def upload_plan(run_dir: Path) -> list[tuple[str, Path]]:
    """(path in repo, local file) for everything that may leave the run folder: the LoRA, the ControlNet, the card,
    the resolved recipe, the final sample grid and the final per-prompt images. Never anything else, and never a link
    that leads out of the run folder, whatever its name.

    RUN/controlnet/{config.json, diffusion_pytorch_model.safetensors} go to the repo ROOT, not to controlnet/: that is
    how published ControlNets are laid out (lllyasviel/control_v11p_sd15_*, diffusers/controlnet-*-sdxl-1.0), so
    `ControlNetModel.from_pretrained(repo)` needs no subfolder, and `archdiff sample --controlnet REPO` and
    `controlnet.init: REPO` (which load a Hub id's root) take the pushed repo as it is. Nothing else in the repo is
    named config.json, and the LoRA beside it is loaded by its file name."""
    from archdiff.runs import read_recipe

    names = [*run_weights(read_recipe(run_dir / RECIPE_FILE)), CARD_FILE, RECIPE_FILE]
    names = [name for name in names if inside_run(run_dir, name)] + final_samples(run_dir)
    return [(name.removeprefix(f"{CONTROLNET_DIR}/"), run_dir / name) for name in names]


def retry_command(run_dir: Path, repo: str, private: bool) -> str:
    return f"archdiff push {run_dir} --repo {repo}" + (" --private" if private else "")


def push_run(
    run_dir: Path, repo: str, private: bool = False, dry_run: bool = False, token: str | None = None, new_card: bool = False
) -> Pushed:
    """What `archdiff push` does: check, write the card into the run folder (keeping one edited by hand unless
    `new_card`), then (unless a dry run) create the repo and upload the allowlist in one commit, so the repo
    never shows half an upload."""
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist")
    if not is_repo_id(repo):
        raise UserError(f"--repo '{repo}' is not a Hub repo id; write it as USER/NAME (e.g. jane/facade-lora)")
    if not inside_run(run_dir, LORA_WEIGHTS) and not (run_dir / CONTROLNET_DIR).exists():
        raise UserError(
            f"'{run_dir}' holds no LoRA ({LORA_WEIGHTS} is missing) and no ControlNet ({CONTROLNET_DIR}/); "
            "push the folder of a finished run"
        )
    if not (run_dir / RECIPE_FILE).is_file():
        raise UserError(f"'{run_dir}' has no {RECIPE_FILE}, which the model card is written from; push a run folder")
    what = _check_run_files(run_dir)
    retry = retry_command(run_dir, repo, private)
    if not dry_run:
        token = token or hub_token(f"then retry: {retry}")
    kept = not write_card(run_dir, repo, replace=new_card)
    files = upload_plan(run_dir)
    if dry_run:
        return Pushed(files, None, kept)
    return Pushed(files, _upload(files, repo, private, token, retry, what), kept)


def _check_run_files(run_dir: Path) -> str:
    """The recipe the card is written from, and the weights that go up (headers only): a broken or missing one is one
    line naming the file, before anything is written or sent. Returns what goes up, for the commit message."""
    from archdiff.model.base import read_json, safetensors_header
    from archdiff.runs import read_recipe

    recipe_path = run_dir / RECIPE_FILE
    recipe = read_recipe(recipe_path)
    if not recipe.get("base") or not isinstance(recipe["base"], str):
        raise UserError(f"{recipe_path} names no base model, which the model card needs")
    weights = run_weights(recipe)
    for name in weights:
        if not inside_run(run_dir, name):
            raise UserError(
                f"'{run_dir}' has no {name}, which its {RECIPE_FILE} says the run made; push the folder of a finished run"
            )
    if recipe.get("controlnet"):
        config = run_dir / CONTROLNET_DIR / CONTROLNET_FILES[0]
        settings = read_json(config, str(config))
        if not isinstance(settings, dict) or settings.get("_class_name") != "ControlNetModel":
            raise UserError(f"{config} is not a diffusers ControlNet config (its _class_name is not ControlNetModel)")
    for name in weights:
        if name.endswith(".safetensors"):
            safetensors_header(run_dir / name, str(run_dir / name))
    return " and ".join(["ControlNet"] * bool(recipe.get("controlnet")) + ["LoRA"] * (LORA_WEIGHTS in weights))


def hub_token(hint: str) -> str:
    """The write token (HF_TOKEN, else the stored `hf auth login`); `train` asks before training, so a missing
    token fails in seconds, not after the run."""
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise UserError(f"HF_HUB_OFFLINE is set, so nothing can be pushed to the Hub; unset it, {hint}")
    token = get_token()
    if not token:
        raise UserError(f"no Hugging Face token: set HF_TOKEN to a write token or run `hf auth login`, {hint}")
    return token


def _upload(files: list[tuple[str, Path]], repo: str, private: bool, token: str, retry: str, what: str) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=shareable_recipe(path) if name == RECIPE_FILE else path)
        for name, path in files
    ]
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.create_commit(repo, operations, commit_message=f"Upload {what}, model card and samples with archdiff")
    except Exception as error:  # noqa: BLE001 - HTTP, network or a refused card: the user gets one line either way
        raise UserError(f"pushing to {repo} failed: {_reason(error, token)}; retry with: {retry}") from None
    return str(url)


def _reason(error: Exception, token: str) -> str:
    """One line on why the Hub said no, with the token scrubbed: a server or proxy may echo it back."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code
        said = (error.server_message or "").strip().splitlines()
        reason = f"the Hub answered {status}" + (f" ({said[0]})" if said else "")
        if status in (401, 403):
            reason += "; check that HF_TOKEN (or `hf auth login`) holds a token with write access"
    else:
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return reason.replace(token, "***")


def shareable_recipe(path: Path) -> bytes:
    """The run's recipe as uploaded: local folders (output, data, base) by their last part only, so no home or
    client-project paths go public; bundled sets, manifests and Hub ids stay as they are."""
    recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    recipe["output"] = f"runs/{recipe.get('name', 'run')}"
    recipe["base"] = public_name(str(recipe.get("base", "")))
    for source in (recipe.get("data") or {}).get("sources") or []:
        source["path"] = public_name(str(source.get("path", "")))
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).encode()
