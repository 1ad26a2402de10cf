"""Config stage: the recipe schema and its loading (`extends`, --set overrides, friendly errors)."""

from archdiff.config.load import apply_overrides, available_recipes, dump_recipe, find_recipe, load_recipe
from archdiff.config.schema import Recipe

__all__ = ["Recipe", "apply_overrides", "available_recipes", "dump_recipe", "find_recipe", "load_recipe"]
