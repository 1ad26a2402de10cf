"""Captions from metadata: a column or a template, varied per training step, fixed for evaluation.

Training passes a `random.Random`; its draws always come in the same order (one per distinct template
field under field dropout, then the tag shuffle, then whole-caption dropout), and only for the features
the config turns on, so a caption is a pure function of the config, the row and the generator's state.
Evaluation passes no generator and gets the plain caption.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping
from typing import Any

from archdiff.config.schema import CaptionConfig

# Words a dropped field can leave dangling at the edge of a comma-separated part ("photo of a, brick").
# Lowercase only, so a name such as "Building A" keeps its letter.
_CONNECTORS = frozenset({"of", "in", "on", "at", "with", "and", "or", "for", "from", "by", "to"})
_ARTICLES = frozenset({"a", "an", "the"})


class MissingField(Exception):
    """A caption field (args[0]) is absent, None or empty in a row: the row has no usable caption."""


def template_fields(template: str) -> list[str]:
    """The distinct field names in order of first use; refuses anything but plain `{name}` fields."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError:
        raise ValueError(f"{template!r} has unbalanced braces (write {{{{ or }}}} for a literal brace)") from None
    names: list[str] = []
    for _, name, spec, conversion in pieces:
        if name is None:
            continue
        if not name or name.isdigit():
            raise ValueError(f"{template!r} has a positional field {{{name}}}; name a metadata column, e.g. {{style}}")
        if spec or conversion:
            raise ValueError(f"{template!r}: field {{{name}}} has a format spec or conversion; write plain {{{name}}}")
        if "." in name or "[" in name:
            raise ValueError(f"{template!r}: field {{{name}}} uses attribute or index access; write a plain column name")
        if name not in names:
            names.append(name)
    return names


def _field_text(name: str, value: Any) -> str:
    """A row value as caption text: lists joined with ", ", anything else through str()."""
    if isinstance(value, (list, tuple)):
        text = ", ".join(str(item).strip() for item in value if item is not None and str(item).strip())
    else:
        text = "" if value is None else str(value).strip()
    if not text:
        raise MissingField(name)
    return text


def _tidy_part(part: str) -> str:
    """One comma-separated part with whitespace collapsed and dangling connectors removed at its edges."""
    words = part.split()
    while words and words[0] in _CONNECTORS:
        words.pop(0)
    while words and words[-1] in _CONNECTORS | _ARTICLES:
        words.pop()
    return " ".join(words)


def _tidy(text: str) -> str:
    """Repair the holes left by dropped fields.

    Splits on commas; in each part collapses whitespace, drops leading connectors ("of", "with", ...)
    and trailing connectors or articles ("of a"); drops empty parts; rejoins with ", ". So doubled
    spaces, ", ,", leading or trailing commas and a dangling "of a" all disappear.
    """
    parts = (_tidy_part(part) for part in text.split(","))
    return ", ".join(part for part in parts if part)


def caption_columns(cfg: CaptionConfig) -> list[str]:
    """The metadata columns a caption config reads: its template's fields, or its one column."""
    return template_fields(cfg.template) if cfg.template else [cfg.column]


def render_template(template: str, row: Mapping[str, Any], drop: frozenset[str] = frozenset()) -> str:
    """Fill the template's fields from the row, leaving out those in `drop`, then tidy the result.

    Tidying always applies, so a caption reads the same whether or not a drop happened to be empty.
    """
    template_fields(template)  # refuse a malformed template before reading the row
    pieces = []
    for literal, name, _, _ in string.Formatter().parse(template):
        pieces.append(literal)
        if name is not None and name not in drop:
            pieces.append(_field_text(name, row.get(name)))
    return _tidy("".join(pieces))


def shuffle_tags(caption: str, keep: int, rng: random.Random) -> str:
    """Shuffle the comma-separated tags after the first `keep`, so the model does not learn tag order."""
    tags = [tag.strip() for tag in caption.split(",") if tag.strip()]
    rest = tags[keep:]
    rng.shuffle(rest)
    return ", ".join(tags[:keep] + rest)


def base_caption(cfg: CaptionConfig, row: Mapping[str, Any], rng: random.Random | None) -> str:
    """The caption before tags and trigger: the template (with field dropout under an rng) or the column."""
    if not cfg.template:
        return _field_text(cfg.column, row.get(cfg.column))
    drop: frozenset[str] = frozenset()
    if rng is not None and cfg.field_dropout > 0:
        drop = frozenset(name for name in template_fields(cfg.template) if rng.random() < cfg.field_dropout)
    return render_template(cfg.template, row, drop)


def _detail_of(caption: str) -> str:
    """Mark a tile cut from a large sheet: "Floor plan" -> "detail of floor plan" (acronyms keep their case)."""
    if not caption:
        return "detail"
    first_word = caption.split()[0]
    keeps_case = len(first_word) > 1 and first_word[1].isupper()
    return "detail of " + (caption if keeps_case else caption[0].lower() + caption[1:])


def build_caption(cfg: CaptionConfig, row: Mapping[str, Any], rng: random.Random | None = None, detail: bool = False) -> str:
    """The caption a sample trains on (rng given) or is evaluated with (rng None: no variation at all).

    Whole-caption dropout empties even the trigger: an empty caption is what unconditional training means.
    """
    caption = base_caption(cfg, row, rng)
    if detail:
        caption = _detail_of(caption)
    if rng is not None and cfg.shuffle_tags:
        caption = shuffle_tags(caption, cfg.keep_tags, rng)
    if cfg.trigger:
        caption = f"{cfg.trigger}, {caption}" if caption else cfg.trigger
    if rng is not None and cfg.dropout > 0 and rng.random() < cfg.dropout:
        return ""
    return caption


def varies_per_step(cfg: CaptionConfig) -> bool:
    """Whether training captions change between steps, which a text-embedding cache cannot hold.

    Whole-caption dropout alone does not count: it only adds the empty caption, which the cache encodes once.
    """
    return bool(cfg.template and cfg.field_dropout > 0) or cfg.shuffle_tags
