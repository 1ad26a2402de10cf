"""The `archdiff` command. Imports only typer and the command modules: every heavy import lives inside a command."""

from __future__ import annotations

import sys
import traceback

import typer

from archdiff import __version__
from archdiff.cli import bench, data, eval, export, models, push, recipes, runs, sample, serve, train
from archdiff.errors import UserError, first_line

# rich_markup_mode=None: plain help, because rendering it with rich costs ~0.2 s of imports on every `--help`.
app = typer.Typer(
    name="archdiff",
    help="Fine-tune Stable Diffusion on architecture imagery with LoRA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("train")(train.train)
app.command("sample")(sample.sample)
app.command("eval")(eval.eval_command)
app.command("export")(export.export)
app.command("bench")(bench.bench)
app.command("tiny-model")(models.tiny_model)
app.command("push")(push.push)
app.add_typer(recipes.app, name="recipes")
app.add_typer(data.app, name="data")
app.add_typer(runs.app, name="runs")
app.add_typer(serve.app, name="serve")

_debug = False  # set by --debug / ARCHDIFF_DEBUG for main(), which sees the error after typer is done


def _version(value: bool) -> None:
    if value:
        typer.echo(f"archdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(
        False, "--debug", envvar="ARCHDIFF_DEBUG", help="On an error, print its traceback before the one-line message."
    ),
) -> None:
    """archdiff: train, sample and share LoRAs of Stable Diffusion for architecture."""
    global _debug
    _debug = debug


def main() -> None:
    """Entry point: a `UserError` is one line on stderr (after its traceback with --debug) and its exit code.

    Anything else is a failure archdiff did not foresee (a bug, or a library failing in a new way): still
    one line, exit 1, naming what failed and how to see the traceback. (Typer turns a Ctrl-C outside training
    into exit 130 without a traceback itself.)
    """
    try:
        app()
    except UserError as error:
        _fail(error, str(error), error.exit_code)
    except Exception as error:  # noqa: BLE001 - the last line of defence against a traceback on a user's screen
        said = f"{type(error).__name__}: {first_line(error)} (unexpected; `archdiff --debug ...` shows where it happened)"
        _fail(error, said, 1)


def _fail(error: BaseException, message: str, code: int) -> None:
    if _debug:
        traceback.print_exception(error)
    typer.echo(f"archdiff: error: {message}", err=True)
    sys.exit(code)
