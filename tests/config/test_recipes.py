"""Recipes: every shipped file validates; extends, --set and the friendly errors behave."""

from pathlib import Path

import pytest
import yaml

from archdiff.config import apply_overrides, available_recipes, dump_recipe, load_recipe
from archdiff.config.schema import Recipe
from archdiff.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "recipes").rglob("*.yaml"))


def test_recipes_folder_is_found_and_not_empty():
    assert {"facade-lora", "plan-lora", "demo-tiny"} <= set(available_recipes())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(str(path))
    assert isinstance(recipe, Recipe)
    assert recipe.name == path.stem
    assert recipe.description, "every shipped recipe says what it is for"


def test_demo_tiny_extends_facade_lora_and_overrides_only_tiny_needs():
    real, demo = load_recipe("facade-lora"), load_recipe("demo-tiny")
    assert real.base == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert demo.base == "tiny-sd15"
    assert [s.path for s in demo.data.sources] == [s.path for s in real.data.sources] == ["facades"]
    assert demo.data.resolution == 64 and real.data.resolution == 512
    assert demo.train.snr_gamma == real.train.snr_gamma
    assert demo.output == "runs/demo-tiny" and real.output == "runs/facade-lora"


def test_sdxl_recipe_is_facade_lora_at_1024_and_passes_the_sdxl_checks():
    from archdiff.train.checks import check_cache_options, check_family_options

    real, sdxl = load_recipe("facade-lora"), load_recipe("sdxl-facade-lora")
    assert sdxl.base == "stabilityai/stable-diffusion-xl-base-1.0" and sdxl.data.resolution == 1024
    assert sdxl.data.sources == real.data.sources and sdxl.lora == real.lora
    check_family_options(sdxl, "sdxl")  # what a run on the SDXL base refuses, this recipe avoids
    check_cache_options(sdxl)


def test_plans_are_drawings_and_tiled():
    """Drawings are never mirrored whatever random_flip says (tested in tests/data/test_images.py)."""
    plans = load_recipe("plan-lora").data
    assert [(s.path, s.kind) for s in plans.sources] == [("plans", "drawing")]
    assert plans.tile_drawings == 4


def test_set_overrides_with_type_checking():
    recipe = load_recipe("demo-tiny", ["train.learning_rate=5e-5", "lora.rank=8", "validation.prompts=[a, b]"])
    assert recipe.train.learning_rate == 5e-5
    assert recipe.lora.rank == 8
    assert recipe.validation.prompts == ["a", "b"]
    with pytest.raises(UserError, match=r"train\.batch_size"):
        load_recipe("demo-tiny", ["train.batch_size=many"])


def test_set_cannot_descend_into_a_value():
    with pytest.raises(UserError, match="is a value, not a section"):
        apply_overrides({"base": "x"}, ["base.sub=1"])


@pytest.mark.parametrize(
    ("override", "named", "suggested"),
    [
        ("train.learning_rte=0.1", "train.learning_rte", "train.learning_rate"),
        ("lora.rnak=4", "lora.rnak", "lora.rank"),
        ("bsae=x", "bsae", "base"),
    ],
)
def test_typo_names_the_key_and_suggests_the_closest(override, named, suggested):
    with pytest.raises(UserError) as caught:
        load_recipe("demo-tiny", [override])
    message = str(caught.value)
    assert f"'{named}'" in message and f"'{suggested}'" in message
    assert "\n" not in message


def test_extends_merges_deeply_and_child_wins(tmp_path):
    (tmp_path / "child.yaml").write_text("extends: facade-lora\ntrain:\n  max_steps: 7\n")
    recipe = load_recipe(str(tmp_path / "child.yaml"))
    assert recipe.train.max_steps == 7
    assert recipe.train.learning_rate == load_recipe("facade-lora").train.learning_rate
    assert recipe.name == "child"


def test_extends_by_relative_path_and_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(UserError, match="loop"):
        load_recipe(str(tmp_path / "a.yaml"))


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(UserError, match="facade-lora") as caught:
        load_recipe("facde-lora")
    assert "Did you mean 'facade-lora'" in str(caught.value)


def test_invalid_yaml_is_a_user_error(tmp_path):
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(str(tmp_path / "broken.yaml"))


def test_resolution_must_suit_the_vae():
    with pytest.raises(UserError, match="multiple of 8"):
        load_recipe("demo-tiny", ["data.resolution=100"])


def test_dumped_recipe_reloads_to_the_same_recipe(tmp_path):
    recipe = load_recipe("plan-lora", ["train.seed=7"])
    saved = tmp_path / "recipe.yaml"
    saved.write_text(dump_recipe(recipe))
    assert "{name}" not in saved.read_text()
    assert Recipe.model_validate(yaml.safe_load(saved.read_text())) == recipe


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("memory=low", {"gradient_checkpointing": True, "mixed_precision": "bf16", "optimizer": "adamw8bit"}),
        ("memory=balanced", {"gradient_checkpointing": False, "mixed_precision": "bf16", "optimizer": "adamw"}),
        ("memory=fast", {"mixed_precision": "bf16", "channels_last": True, "compile": True}),
        ("memory={preset: low, mixed_precision: 'no'}", {"gradient_checkpointing": True, "mixed_precision": "no"}),
    ],
)
def test_memory_presets_set_their_knobs_under_what_the_recipe_says(tmp_path, override, expected):
    path = tmp_path / "r.yaml"
    path.write_text("base: tiny-sd15\ndata:\n  sources: [{path: facades}]\n")
    recipe = load_recipe(str(path), [override])
    assert recipe.memory.preset == override.split("=")[1].split(",")[0].removeprefix("{preset: ")
    assert {key: getattr(recipe.memory, key) for key in expected} == expected
    assert recipe.data.cache.latents, "every preset takes the VAE out of the step"
    assert not load_recipe(str(path), [override, "data.cache.latents=false"]).data.cache.latents
    assert load_recipe("facade-lora", [override]).data.cache.latents is False, "a recipe's own cache setting wins"


def test_a_preset_replaces_the_memory_knobs_a_parent_recipe_spells_out(tmp_path):
    """facade-lora writes every memory key; a preset set over it (by --set or in a child recipe) must still apply."""
    low = {"gradient_checkpointing": True, "mixed_precision": "bf16", "optimizer": "adamw8bit"}
    for overrides in (["memory.preset=low"], ["memory.preset=low", "memory.attention=xformers"]):
        recipe = load_recipe("facade-lora", overrides)
        assert {key: getattr(recipe.memory, key) for key in low} == low
    assert recipe.memory.attention == "xformers", "a key set after the preset still wins"
    child = tmp_path / "child.yaml"
    child.write_text("extends: facade-lora\nmemory: {preset: low, mixed_precision: 'no'}\n")
    recipe = load_recipe(str(child))
    assert (recipe.memory.preset, recipe.memory.optimizer, recipe.memory.mixed_precision) == ("low", "adamw8bit", "no")
    child.write_text("extends: facade-lora\nmemory: {gradient_checkpointing: true}\n")
    merged = load_recipe(str(child)).memory
    assert (merged.gradient_checkpointing, merged.mixed_precision) == (True, "fp16"), "without a preset, sections merge"


def test_unknown_memory_preset_names_the_choices():
    with pytest.raises(UserError, match="memory.preset.*'low', 'balanced' or 'fast'"):
        load_recipe("facade-lora", ["memory=turbo"])


def test_dumped_preset_recipe_reloads_to_the_same_recipe(tmp_path):
    recipe = load_recipe("facade-lora", ["memory=low"])
    path = tmp_path / "r.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(str(path)) == recipe


@pytest.mark.parametrize("repo", ["jane--x/lora", "jane/lora..x", "jane", "a/b/c", "jane/lo ra"])
def test_hub_repo_is_checked_by_the_rule_push_uses(repo):
    """Refused when the recipe loads, not after hours of training when the push would fail."""
    with pytest.raises(UserError, match="hub.repo"):
        load_recipe("demo-tiny", [f"hub.repo={repo}"])
    assert load_recipe("demo-tiny", ["hub.repo=jane/facade-lora.v2"]).hub.repo == "jane/facade-lora.v2"


def test_set_string_fields_take_unparseable_text_as_written():
    recipe = load_recipe("demo-tiny", ["data.caption.template={material} facade, {storeys} storeys", "name=2024"])
    assert recipe.data.caption.template == "{material} facade, {storeys} storeys"
    assert recipe.name == "2024" and recipe.output == "runs/2024"
    with pytest.raises(UserError, match=r"--set train\.max_steps: value '\[1' is not valid YAML"):
        load_recipe("demo-tiny", ["train.max_steps=[1"])


TWICE = ["extends: demo-tiny\ntrain: {}\ntrain: {}\n", "extends: demo-tiny\nlora:\n  rank: 1\n  rank: 2\n"]


@pytest.mark.parametrize("text", TWICE, ids=["section", "nested-key"])
def test_duplicate_keys_are_refused(tmp_path, text):
    (tmp_path / "twice.yaml").write_text(text)
    with pytest.raises(UserError, match=r"twice\.yaml line \d: key '(train|lora\.rank)' appears twice"):
        load_recipe(str(tmp_path / "twice.yaml"))


def test_output_placeholders_and_size_limits():
    assert load_recipe("demo-tiny", ["output=out/{name}/x"]).output == "out/demo-tiny/x"
    limits = [("output=runs/{run}", r"\{run\}"), ("data.resolution=65536", "4096"), ("train.batch_size=2048", "1024")]
    for override, named in limits:
        with pytest.raises(UserError, match=named):
            load_recipe("demo-tiny", [override])
