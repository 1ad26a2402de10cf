"""One rule for "Hub repo id or local path", and the four places that ask it giving the same answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from archdiff.config.schema import CaptionConfig, SourceConfig
from archdiff.data.sources import load_source
from archdiff.errors import UserError
from archdiff.hub_ids import is_hub_id, is_repo_id
from archdiff.model.base import resolve_base
from archdiff.model_card import public_name
from archdiff.push import push_run
from archdiff.sample import LoraSpec

EXISTING = "jane/facades"  # a folder in the working directory, named like a repo id

CASES = [  # name, whether it is a Hub id
    pytest.param("jane/facade-lora", True, id="owner-name"),
    pytest.param("my.org/sd-1.5_lora", True, id="dots-dashes-underscores"),
    pytest.param(EXISTING, False, id="existing-folder-named-like-an-id"),
    pytest.param("./jane/facade-lora", False, id="dot-slash"),
    pytest.param("/jane/facade-lora", False, id="absolute"),
    pytest.param("/facade-lora", False, id="absolute-one-slash"),
    pytest.param("~/facade-lora", False, id="home"),
    pytest.param("~", False, id="tilde"),
    pytest.param("jane/facade-lora/", False, id="trailing-slash"),
    pytest.param("jane/facade-lora/unet", False, id="three-parts"),
    pytest.param("..", False, id="dot-dot"),
    pytest.param("../facade-lora", False, id="parent"),
    pytest.param("", False, id="empty"),
    pytest.param("facade-lora", False, id="bare-name"),
    pytest.param("jane--x/facade-lora", False, id="double-dash"),
    pytest.param(".jane/facade-lora", False, id="leading-dot"),
    pytest.param("jane/facade-lora.git", False, id="dot-git"),
    pytest.param("jane/facade-lora:0.8", False, id="with-a-scale"),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory holding only EXISTING, and an empty home, so `~` and `` name small folders."""
    (tmp_path / EXISTING).mkdir(parents=True)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("name", "hub"), CASES)
def test_is_hub_id(workdir: Path, name: str, hub: bool) -> None:
    assert is_hub_id(name) is hub


def test_an_existing_path_wins_but_the_repo_id_syntax_does_not_look_at_the_disk(workdir: Path) -> None:
    assert is_repo_id(EXISTING) and not is_hub_id(EXISTING)
    assert not is_repo_id("a/" + "x" * 97), "the Hub's 96-character limit"


def _base_goes_to_the_hub(name: str) -> bool:
    try:
        resolve_base(name)
    except UserError as error:  # offline in the tests: a Hub id stops at "not reachable"
        return "Hub is not reachable" in str(error)
    return False


def _source_goes_to_the_hub(name: str) -> bool:
    """A local folder may even load (`..` can hold other tests' images); only a Hub id fails with the Hub's message."""
    try:
        load_source(SourceConfig(path=name), CaptionConfig())
    except UserError as error:
        return "could not be loaded from the Hub" in str(error)
    return False


@pytest.mark.parametrize(("name", "hub"), [case for case in CASES if case.id != "with-a-scale"])
def test_base_data_lora_and_card_agree(workdir: Path, name: str, hub: bool) -> None:
    assert _base_goes_to_the_hub(name) is hub
    assert _source_goes_to_the_hub(name) is hub
    assert LoraSpec.parse(name).hub_id == (name if hub else None)
    assert public_name(name) == (name if hub else Path(name).name)


def test_a_lora_spec_with_a_scale_is_an_id_and_a_scale(workdir: Path) -> None:
    assert LoraSpec.parse("jane/facade-lora:0.8") == LoraSpec(Path("jane/facade-lora"), 0.8, "jane/facade-lora")
    assert LoraSpec.parse(f"{EXISTING}:0.5") == LoraSpec(Path(EXISTING), 0.5, None)
    assert LoraSpec.parse("./jane/facade-lora:0.5").hub_id is None


@pytest.mark.parametrize("repo", ["jane", "./jane/lora", "jane/lora/", "jane--x/lora", "jane/lora:0.8"])
def test_push_refuses_a_repo_that_is_not_owner_name(workdir: Path, repo: str) -> None:
    with pytest.raises(UserError, match="USER/NAME"):
        push_run(workdir, repo, dry_run=True)
