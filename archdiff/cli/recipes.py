"""`archdiff recipes list|show|validate`."""

from __future__ import annotations

from pathlib import Path

import typer

from archdiff.errors import UserError

app = typer.Typer(help="List, show and validate recipes.", no_args_is_help=True)


@app.command("list")
def list_recipes() -> None:
    """List every recipe on the search path with its description."""
    from archdiff.config import available_recipes, load_recipe

    for name, path in sorted(available_recipes().items()):
        description = load_recipe(str(path)).description
        typer.echo(f"{name:<20} {description}")


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Recipe name or path."),
    set_: list[str] = typer.Option([], "--set", help="dotted.key=value override."),
) -> None:
    """Print the fully resolved recipe (after `extends` and --set)."""
    from archdiff.config import dump_recipe, load_recipe

    typer.echo(dump_recipe(load_recipe(name, set_)), nl=False)


@app.command("validate")
def validate(paths: list[Path] = typer.Argument(None, help="Recipe files; default: every known recipe.")) -> None:
    """Validate recipes; exit 2 naming every broken one."""
    from archdiff.config import available_recipes, load_recipe

    targets = [str(p) for p in paths] if paths else [str(p) for p in available_recipes().values()]
    failures = []
    for target in targets:
        try:
            load_recipe(target)
            typer.echo(f"ok    {target}")
        except UserError as error:
            typer.echo(f"FAIL  {error}")
            failures.append(target)
    if failures:
        raise UserError(f"{len(failures)} of {len(targets)} recipes are invalid: {', '.join(failures)}")
