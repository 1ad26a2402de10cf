"""Turn a recipe name or path (+ --set overrides) into a validated `Recipe`.

Recipes are YAML; a recipe may `extends:` another by name or path (deep merge, child wins). A memory
section that names a preset replaces the one it is written over, rather than merging into it.
Every failure becomes a `UserError` with one line that names the offending key.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from archdiff.config.schema import Recipe
from archdiff.errors import UserError
from archdiff.paths import recipe_dirs


def available_recipes() -> dict[str, Path]:
    """Every recipe on the search path (recursively), by name; earlier folders win."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.rglob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def find_recipe(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A path to an existing YAML file, or a recipe name from the search path."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.insert(0, relative_to / name_or_path)
    for candidate in candidates:
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return candidate
    if Path(name_or_path).suffix in (".yaml", ".yml"):
        raise UserError(f"recipe file '{name_or_path}' does not exist")
    known = available_recipes()
    if name_or_path in known:
        return known[name_or_path]
    hint = difflib.get_close_matches(name_or_path, known, n=1)
    suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
    raise UserError(f"unknown recipe '{name_or_path}'.{suggestion} Known recipes: {', '.join(sorted(known)) or 'none'}")


class _DuplicateKey(Exception):
    def __init__(self, key: str, first: int, again: int):
        super().__init__(key, first, again)
        self.key, self.first, self.again = key, first, again


def _find_duplicate(node: yaml.Node, path: tuple[str, ...] = (), seen_nodes: set[int] | None = None) -> None:
    """Raise `_DuplicateKey` (dotted key, first line, second line) for a key written twice in one mapping."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias of an anchor already walked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key != "<<":
                if key in lines:
                    raise _DuplicateKey(".".join((*path, key)), lines[key], line)
                lines[key] = line
            _find_duplicate(value_node, (*path, key), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicate(item, (*path, str(index)), seen_nodes)


def _decode(path: Path, what: str) -> str:
    """The file as text: UTF-8 (a leading BOM is allowed), else one line naming the first bad byte and its line."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        byte = data[error.start : error.start + 1].hex()
        raise UserError(
            f"{what} {path} is not UTF-8: byte 0x{byte} at offset {error.start} (line {line}); "
            "save it as UTF-8 (editors that write Latin-1 or Windows-1252 can re-save it so)"
        ) from None


def parse_yaml(text: str) -> Any:
    """YAML as `yaml.safe_load` reads it, except that a key written twice in one mapping raises `_DuplicateKey`
    (PyYAML keeps the last one silently)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _find_duplicate(node)
    return yaml.safe_load(text)


def read_yaml_mapping(path: Path, what: str = "recipe") -> dict[str, Any]:
    """A YAML file that must hold a mapping (a recipe, a manifest); mistakes are one line naming the file."""
    text = _decode(path, what)
    try:
        data = parse_yaml(text) or {}
    except _DuplicateKey as twice:
        raise UserError(
            f"{what} {path} line {twice.again}: key '{twice.key}' appears twice in one section "
            f"(first on line {twice.first}); keep one, since only the last would count"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{what} {path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not _names_preset(key, value):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _names_preset(key: str, value: dict[str, Any]) -> bool:
    """`memory: {preset: low, ...}` asks for the preset: the knobs a parent recipe spells out must not outvote it
    (keys written beside the preset still do)."""
    return key == "memory" and "preset" in value


def _resolve_extends(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in chain:
        names = " -> ".join(p.stem for p in (*chain, path.resolve()))
        raise UserError(f"recipe extends itself in a loop: {names}")
    raw = read_yaml_mapping(path)
    raw.setdefault("name", path.stem)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent_raw = _resolve_extends(find_recipe(str(parent), relative_to=path.parent), (*chain, path.resolve()))
    return _deep_merge(parent_raw, raw)


def _takes_text(parts: list[str]) -> bool:
    """Whether the recipe field at this dotted path is a plain string (`str` or `str | None`)."""
    model: Any = Recipe
    for i, part in enumerate(parts):
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return False
        union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        choices = [a for a in typing.get_args(field.annotation) if a is not type(None)] if union else [field.annotation]
        if i == len(parts) - 1:
            return choices == [str]
        sections = [a for a in choices if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(sections) != 1:
            return False
        model = sections[0]
    return False


def _override_value(key: str, parts: list[str], text: str) -> Any:
    """The value of `--set key=text`: YAML, or the text itself for a string field when YAML reads it otherwise."""
    if not text.strip():
        return None
    takes_text = _takes_text(parts)
    try:
        value = parse_yaml(text)
    except (yaml.YAMLError, _DuplicateKey) as error:
        if takes_text:
            return text
        problem = getattr(error, "problem", None) or "a key written twice"
        raise UserError(
            f"--set {key}: value {text!r} is not valid YAML ({problem}); write a number, true/false, [a, b] or "
            f"{{k: v}}, and put text in quotes inside the shell's: --set '{key}=\"...\"'"
        ) from None
    if takes_text and value is not None and not isinstance(value, str):
        return text  # `template={material} facade` or `name=2024`: the field wants the words as written
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` strings; values are parsed as YAML (string fields take the text as written
    when YAML reads something else), types are checked by the schema."""
    result = raw
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects dotted.key=value, got '{item}'")
        parts = key.split(".")
        if not all(part.strip() for part in parts) or any(part != part.strip() for part in parts):
            raise UserError(f"--set {key}: a dotted key needs a name between every pair of dots, e.g. train.batch_size=2")
        node = result
        for i, part in enumerate(parts[:-1]):
            node = node.get(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        patch = _override_value(key, parts, text)
        for part in reversed(parts):
            patch = {part: patch}
        result = _deep_merge(result, patch)  # the same rules as `extends:` (a named preset replaces its section)
    return result


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema section a validation-error location points into (for key suggestions)."""
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def describe_error(error: dict[str, Any], root: type[BaseModel] = Recipe) -> str:
    """One pydantic error as a phrase that names the key, with the closest known key for a typo."""
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        section = _model_at(root, loc[:-1])
        choices = list(section.model_fields) if section else []
        hint = difflib.get_close_matches(str(loc[-1]), choices, n=1)
        suggestion = f"; did you mean '{'.'.join([*map(str, loc[:-1]), hint[0]])}'?" if hint else ""
        return f"unknown key '{key}'{suggestion}"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    where = f"'{key}'" if key else "recipe"
    if error["type"] == "value_error":  # our own validators: their message is the whole story
        got = error.get("input")
        return f"{where} {error['ctx']['error']}" + ("" if isinstance(got, dict) else f" (got {got!r})")
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def validate_recipe(raw: dict[str, Any], origin: str) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e) for e in exc.errors())
        raise UserError(f"recipe {origin}: {problems}") from None


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    path = find_recipe(name_or_path)
    raw = _resolve_extends(path)
    raw = apply_overrides(raw, overrides or [])
    return validate_recipe(raw, origin=f"'{name_or_path}'")


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what a run folder keeps, and `recipes show` prints)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
