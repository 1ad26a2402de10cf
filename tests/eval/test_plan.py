"""What `archdiff eval` draws: the job plan (captions x seeds, sizes, cycling) and the held-out data it measures against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archdiff.eval.plan import SEED_STRIDE, eval_data, plan_jobs

REPO = Path(__file__).resolve().parents[2]  # not `from conftest import`: under xdist another conftest may answer
SIZES = [(64, 64), (48, 80), (80, 48)]
PROMPTS = ["brick facade", "glass tower", "timber house"]


@pytest.mark.parametrize(
    ("num_images", "seeds", "groups"),
    [(6, [0, 1], 3), (7, [0, 1], 4), (4, [0, 1, 2], 2), (1, [5], 1), (1, [0, 1, 2, 3], 1), (20, [0, 1], 10)],
)
def test_counts_are_whole_captions_times_seeds(num_images, seeds, groups):
    """ceil(N / len(seeds)) captions, each with every seed: never fewer images than asked, never a partial caption."""
    jobs = plan_jobs(SIZES, PROMPTS, num_images, seeds)
    assert len(jobs) == groups * len(seeds) >= num_images
    assert sorted({job.group for job in jobs}) == list(range(groups))
    for group in range(groups):
        members = [job for job in jobs if job.group == group]
        assert len(members) == len(seeds)
        assert len({(job.prompt, job.width, job.height, job.reference) for job in members}) == 1


def test_captions_come_in_order_at_their_reference_size():
    jobs = plan_jobs(SIZES, PROMPTS, 6, [0, 1])
    assert [(job.prompt, job.seed, job.width, job.height, job.reference) for job in jobs] == [
        ("brick facade", 0, 64, 64, 0),
        ("brick facade", 1, 64, 64, 0),
        ("glass tower", 0, 48, 80, 1),
        ("glass tower", 1, 48, 80, 1),
        ("timber house", 0, 80, 48, 2),
        ("timber house", 1, 80, 48, 2),
    ]


def test_cycling_moves_the_seeds_by_the_stride_so_no_image_repeats():
    """More images than captions x seeds: the captions come round again with seeds + SEED_STRIDE, + 2 x SEED_STRIDE..."""
    jobs = plan_jobs(SIZES, PROMPTS, 14, [0, 1])  # 7 draws of 3 captions: cycles 0, 0, 0, 1, 1, 1, 2
    assert [job.reference for job in jobs[::2]] == [0, 1, 2, 0, 1, 2, 0]
    assert [job.seed for job in jobs[6:8]] == [SEED_STRIDE, SEED_STRIDE + 1]
    assert [job.seed for job in jobs[12:]] == [2 * SEED_STRIDE, 2 * SEED_STRIDE + 1]
    assert all((job.width, job.height) == SIZES[job.reference] for job in jobs)
    assert len({(job.prompt, job.seed) for job in jobs}) == len(jobs)


def test_seeds_keep_their_given_order():
    jobs = plan_jobs(SIZES, PROMPTS, 3, [7, 3, 11])
    assert [job.seed for job in jobs] == [7, 3, 11]


def _demo(tmp_path, *overrides):
    from archdiff.config import load_recipe

    return load_recipe("demo-tiny", [f"output={tmp_path / 'run'}", *overrides])


def test_eval_data_holds_out_what_training_held_out(tmp_path):
    """The same records training's split_holdout kept back (same seed), at the buckets validation measures them at."""
    from archdiff.data.catalog import build_catalog, split_holdout
    from archdiff.data.samples import expand_samples

    recipe = _demo(tmp_path)
    data = eval_data(recipe)
    catalog = build_catalog(recipe.data)
    _, held = split_holdout(catalog.records, recipe.data.holdout, recipe.data.holdout_group, recipe.train.seed)
    assert data.name == "held-out"
    assert len(held) == 3  # 32 facades x holdout 0.1, as data.txt of a demo run says
    assert [s.record.name for s in data.samples] == [r.name for r in held]
    assert [s.bucket for s in data.samples] == [s.bucket for s in expand_samples(held, recipe.data, train=False)]
    captions = {}
    for line in (REPO / "datasets" / "facades" / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        captions[row["file_name"]] = row["text"]
    assert data.prompts == [captions[Path(r.name).name] for r in held]
    first = data.image(0)
    assert first.mode == "RGB" and first.size == tuple(data.samples[0].bucket)
    assert len(data.images()) == 3 and [im.size for im in data.images()] == [tuple(s.bucket) for s in data.samples]


def test_eval_data_follows_the_training_seed(tmp_path):
    """Another train.seed holds out other images, and eval follows it (it does not pick its own)."""
    from archdiff.data.catalog import build_catalog, split_holdout

    recipe = _demo(tmp_path, "train.seed=1234")
    catalog = build_catalog(recipe.data)
    _, held = split_holdout(catalog.records, recipe.data.holdout, None, 1234)
    _, default_held = split_holdout(catalog.records, recipe.data.holdout, None, _demo(tmp_path).train.seed)
    assert {r.name for r in held} != {r.name for r in default_held}
    assert [s.record.name for s in eval_data(recipe).samples] == [r.name for r in held]


def test_eval_data_falls_back_to_the_training_images_when_nothing_is_held_out(tmp_path):
    data = eval_data(_demo(tmp_path, "data.holdout=0"))
    assert data.name == "training"
    assert len(data.samples) == len(data.prompts) == 32
    assert len({s.record.name for s in data.samples}) == 32
