"""The scores `archdiff eval` puts in a row, on the tiny DINOv2 (must-hold: a collapsed generator scores the lowest
diversity and Vendi; a set compared with itself has FD ~0), and how the command's options resolve against the recipe.
The end-to-end command is tested in tests/cli/test_eval_cli.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from archdiff.errors import UserError
from archdiff.eval.run import EvalOptions, resolve_settings
from archdiff.eval.scores import MetricModels, group_diversity, score_images

REPO = Path(__file__).resolve().parents[2]  # not `from conftest import`: under xdist another conftest may answer
SEEDS = 3  # images per caption
GROUPS = [0, 0, 0, 1, 1, 1]


@pytest.fixture(scope="module")
def models() -> MetricModels:
    models = MetricModels("tiny-clip", "tiny-dino")  # built offline into the test session's cache on first use
    models.load_for({"fd_dino"})
    return models


def _facade(index: int) -> Image.Image:
    with Image.open(REPO / "datasets" / "facades" / f"facade_{index:03d}.png") as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def varied() -> list[Image.Image]:
    """Two captions x three seeds, six different facades: what a generator that still varies with the seed draws."""
    return [_facade(i) for i in range(6)]


@pytest.fixture(scope="module")
def collapsed() -> list[Image.Image]:
    """The same two captions, each drawn as one image whatever the seed: a collapsed generator."""
    return [_facade(0)] * SEEDS + [_facade(3)] * SEEDS


def _scores(models, images, metrics, reference=None):
    return score_images(lambda: images, ["facade"] * len(images), GROUPS, metrics, models, reference)


def test_a_collapsed_generator_scores_the_lowest_diversity_and_vendi(models, varied, collapsed):
    flat = _scores(models, collapsed, {"diversity", "vendi"})
    lively = _scores(models, varied, {"diversity", "vendi"})
    assert flat["images"] == lively["images"] == 6
    assert flat["diversity"] == pytest.approx(0.0, abs=1e-6)
    assert flat["vendi"] == pytest.approx(1.0, abs=1e-6)
    assert lively["diversity"] > flat["diversity"] + 1e-3
    assert lively["vendi"] > flat["vendi"] + 1e-3
    assert lively["vendi"] <= SEEDS + 1e-6  # at most the group size: each image its own kind
    assert set(flat) == {"images", "diversity", "vendi"}  # only what was asked for


def test_one_image_everywhere_has_no_diversity_at_all(models, varied):
    from archdiff.eval.features import dino_features

    features = dino_features(models.dino(), [varied[2]] * 6)
    assert group_diversity(features, GROUPS) == pytest.approx({"diversity": 0.0, "vendi": 1.0}, abs=1e-6)


def test_diversity_is_measured_within_captions_not_across_them(models, varied):
    """Two captions whose images never change with the seed: different from each other, yet no diversity."""
    from archdiff.eval.features import dino_features

    features = dino_features(models.dino(), [varied[0], varied[0], varied[1], varied[1]])
    assert group_diversity(features, [0, 0, 1, 1]) == pytest.approx({"diversity": 0.0, "vendi": 1.0}, abs=1e-6)
    across = group_diversity(features, [0, 1, 0, 1])  # the same four features grouped across captions
    assert across["diversity"] > 1e-3 and across["vendi"] > 1.0 + 1e-3
    assert group_diversity(features, [0, 1, 2, 3]) == {"diversity": None, "vendi": None}  # one seed: nothing to compare


def test_a_set_is_at_fd_zero_from_itself_and_farther_from_a_collapsed_one(models, varied, collapsed):
    from archdiff.eval.features import dino_features

    reference = dino_features(models.dino(), varied)
    same = _scores(models, varied, {"fd_dino", "kid_dino"}, reference)
    assert same["fd_dino"] == pytest.approx(0.0, abs=1e-3)
    assert _scores(models, collapsed, {"fd_dino"}, reference)["fd_dino"] > same["fd_dino"] + 1e-3
    assert same["kid_dino_std"] is not None and same["kid_dino_std"] >= 0


def test_fd_without_reference_features_is_one_line(models, varied):
    with pytest.raises(UserError, match="FD and KID need real images"):
        _scores(models, varied, {"fd_dino"})


def _recipe(*overrides):
    from archdiff.config import load_recipe

    return load_recipe("demo-tiny", list(overrides))


def test_options_default_to_the_recipes_eval_section():
    settings = resolve_settings(_recipe(), EvalOptions())
    assert settings.num_images == 12 and settings.seeds == [0, 1, 2, 3] and settings.steps == 20
    # control_f1 is in the default list but silently left out of a LoRA run's defaults
    assert settings.metrics == ["clip_score", "fd_dino", "kid_dino", "diversity", "vendi", "geometry"]


def test_options_override_the_recipe_and_repeats_are_dropped():
    settings = resolve_settings(_recipe(), EvalOptions("all", 5, ["geometry", "clip_score", "geometry"], [3, 1, 3]))
    assert (settings.num_images, settings.seeds, settings.metrics) == (5, [3, 1], ["geometry", "clip_score"])


def test_one_seed_is_fine_without_diversity():
    assert resolve_settings(_recipe(), EvalOptions(metrics=["clip_score"], seeds=[7])).seeds == [7]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (EvalOptions(num_images=0), "--num-images must be at least 1"),
        (EvalOptions(seeds=[]), "--seeds needs at least one seed"),
        (EvalOptions(metrics=["vendi"], seeds=[0, 0]), "give 2 or more --seeds"),  # one seed once repeats are dropped
        (EvalOptions(metrics=["fid"]), "unknown metric 'fid'; choose from clip_score"),
        (EvalOptions(metrics=[]), "no metric left to measure"),
    ],
)
def test_options_that_cannot_apply_are_refused_by_name(options, message):
    with pytest.raises(UserError, match=message):
        resolve_settings(_recipe(), options)
