"""Captions: templates and their tidy-up, tag shuffling, trigger, dropout rates, and a fixed evaluation caption."""

import random

import pytest

from archdiff.config.schema import CaptionConfig
from archdiff.data.captions import (
    MissingField,
    base_caption,
    build_caption,
    render_template,
    shuffle_tags,
    template_fields,
    varies_per_step,
)

TEMPLATE = "{view} of a {style} {typology}, {material}"
ROW = {"view": "photo", "style": "modernist", "typology": "house", "material": "brick", "text": "a brick house"}
TAGS = "facade, brick, arches, columns, cornice, balcony, glass"


def test_template_fields_in_order_without_repeats_or_escaped_braces():
    assert template_fields(TEMPLATE) == ["view", "style", "typology", "material"]
    assert template_fields("{style} {{literal}} {style} {view}") == ["style", "view"]
    assert template_fields("a building") == []


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("{view of a house", "unbalanced"),
        ("view} of a house", "unbalanced"),
        ("{} of a house", "positional"),
        ("{0} of a house", "positional"),
        ("{view:>10} of a house", "format spec"),
        ("{view!r} of a house", "format spec"),
        ("{view.name} of a house", "attribute"),
    ],
)
def test_malformed_templates_are_refused_with_the_reason(template, complaint):
    with pytest.raises(ValueError, match=complaint):
        template_fields(template)
    with pytest.raises(ValueError, match=complaint):
        render_template(template, ROW)


def test_render_fills_every_field():
    assert render_template(TEMPLATE, ROW) == "photo of a modernist house, brick"


def test_render_joins_lists_and_writes_numbers():
    row = {"materials": ["brick", "glass", "steel"], "floors": 12, "height": 40.5}
    assert render_template("{floors} storeys, {height} m, {materials}", row) == "12 storeys, 40.5 m, brick, glass, steel"


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ({"style"}, "photo of a house, brick"),
        ({"material"}, "photo of a modernist house"),
        ({"typology"}, "photo of a modernist, brick"),
        ({"style", "typology"}, "photo, brick"),
        ({"view"}, "a modernist house, brick"),
        ({"view", "style", "typology", "material"}, ""),
    ],
)
def test_render_tidies_around_dropped_fields(drop, expected):
    assert render_template(TEMPLATE, ROW, frozenset(drop)) == expected


def test_render_tidies_separators_but_keeps_capital_letters():
    row = {"a": "section", "b": "Building A"}
    assert render_template(" {a} ,  ,of  {b} , ", row) == "section, Building A"


@pytest.mark.parametrize("value", [None, "", "  ", []])
def test_an_empty_template_field_raises_missing_field_naming_it(value):
    with pytest.raises(MissingField) as error:
        render_template(TEMPLATE, {**ROW, "style": value})
    assert error.value.args == ("style",)


def test_an_absent_template_field_raises_missing_field_unless_dropped():
    row = {key: value for key, value in ROW.items() if key != "material"}
    with pytest.raises(MissingField) as error:
        render_template(TEMPLATE, row)
    assert error.value.args == ("material",)
    assert render_template(TEMPLATE, row, frozenset({"material"})) == "photo of a modernist house"


def test_base_caption_reads_the_column_or_names_it_when_empty():
    assert base_caption(CaptionConfig(), {"text": " a brick house\n"}, None) == "a brick house"
    assert base_caption(CaptionConfig(column="caption"), {"caption": "a plan"}, random.Random(0)) == "a plan"
    for row in ({}, {"text": None}, {"text": ""}):
        with pytest.raises(MissingField) as error:
            base_caption(CaptionConfig(), row, None)
        assert error.value.args == ("text",)


def test_shuffle_keeps_the_first_tags_and_permutes_the_rest():
    tags = TAGS.split(", ")
    seen = set()
    for seed in range(50):
        shuffled = shuffle_tags(TAGS, 2, random.Random(seed)).split(", ")
        assert shuffled[:2] == tags[:2]
        assert sorted(shuffled[2:]) == sorted(tags[2:])
        seen.add(tuple(shuffled))
    assert len(seen) > 10


def test_shuffle_is_deterministic_per_seed_and_normalises_separators():
    assert shuffle_tags(TAGS, 1, random.Random(7)) == shuffle_tags(TAGS, 1, random.Random(7))
    assert shuffle_tags(" a ,b,, c", 3, random.Random(0)) == "a, b, c"
    assert shuffle_tags("a, b", 5, random.Random(0)) == "a, b"


def test_trigger_comes_first_and_survives_shuffling_without_counting_as_kept():
    cfg = CaptionConfig(column="tags", trigger="arcdf style", shuffle_tags=True, keep_tags=1)
    for seed in range(20):
        parts = build_caption(cfg, {"tags": TAGS}, random.Random(seed)).split(", ")
        assert parts[:2] == ["arcdf style", "facade"]
        assert sorted(parts[2:]) == sorted(TAGS.split(", ")[1:])


def test_eval_caption_is_the_plain_caption_with_the_trigger():
    cfg = CaptionConfig(template=TEMPLATE, field_dropout=0.5, dropout=0.5, trigger="arcdf", shuffle_tags=True, keep_tags=0)
    captions = {build_caption(cfg, ROW) for _ in range(20)}
    assert captions == {"arcdf, photo of a modernist house, brick"}


def test_training_caption_is_deterministic_for_a_given_rng_state():
    cfg = CaptionConfig(template=TEMPLATE, field_dropout=0.3, dropout=0.2, trigger="arcdf", shuffle_tags=True)
    first = [build_caption(cfg, ROW, random.Random(seed)) for seed in range(30)]
    again = [build_caption(cfg, ROW, random.Random(seed)) for seed in range(30)]
    assert first == again
    assert len(set(first)) > 5


def test_without_variation_training_captions_are_the_eval_caption_or_empty():
    cfg = CaptionConfig(template=TEMPLATE, dropout=0.3, trigger="arcdf")
    rng = random.Random(0)
    assert {build_caption(cfg, ROW, rng) for _ in range(200)} == {"", build_caption(cfg, ROW)}


def test_caption_dropout_rate_and_it_empties_the_trigger_too():
    cfg = CaptionConfig(dropout=0.3, trigger="arcdf")
    rng = random.Random(0)
    captions = [build_caption(cfg, ROW, rng) for _ in range(4000)]
    assert set(captions) == {"", "arcdf, a brick house"}
    assert captions.count("") / len(captions) == pytest.approx(0.3, abs=0.05)


def test_field_dropout_rate_per_field():
    cfg = CaptionConfig(template="{view}, {style}, {typology}, {material}", field_dropout=0.2)
    rng = random.Random(0)
    captions = [build_caption(cfg, ROW, rng).split(", ") for _ in range(4000)]
    for field in ("view", "style", "typology", "material"):
        dropped = sum(ROW[field] not in parts for parts in captions) / len(captions)
        assert dropped == pytest.approx(0.2, abs=0.05), field


def test_detail_prefix_lowercases_the_caption_start_but_not_acronyms():
    plan = CaptionConfig(template="{view} of a {typology}", trigger="arcdf")
    row = {"view": "Floor plan", "typology": "house"}
    assert build_caption(plan, row, detail=True) == "arcdf, detail of floor plan of a house"
    assert build_caption(CaptionConfig(), {"text": "CAD drawing"}, detail=True) == "detail of CAD drawing"


def test_detail_prefix_stays_with_the_first_tag_under_shuffling():
    cfg = CaptionConfig(column="tags", shuffle_tags=True, keep_tags=1)
    assert build_caption(cfg, {"tags": "Section, brick, glass"}, random.Random(3), detail=True).startswith("detail of section, ")


@pytest.mark.parametrize(
    ("settings", "varies"),
    [
        ({}, False),
        ({"dropout": 0.3}, False),
        ({"trigger": "arcdf"}, False),
        ({"field_dropout": 0.2}, False),  # no template: field dropout has nothing to drop
        ({"template": TEMPLATE}, False),
        ({"template": TEMPLATE, "dropout": 0.3}, False),
        ({"template": TEMPLATE, "field_dropout": 0.2}, True),
        ({"shuffle_tags": True}, True),
        ({"shuffle_tags": True, "dropout": 0.3}, True),
    ],
)
def test_varies_per_step(settings, varies):
    assert varies_per_step(CaptionConfig(**settings)) is varies
