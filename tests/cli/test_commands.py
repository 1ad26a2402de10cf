"""The CLI's happy paths, through typer's runner (in-process) where no model is trained."""

import json
import subprocess
import sys

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from archdiff.cli import app, main
from archdiff.errors import Diverged, UserError

runner = CliRunner()


def test_recipes_list_shows_every_recipe_with_its_description():
    result = runner.invoke(app, ["recipes", "list"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert {"demo-tiny", "facade-lora", "plan-lora"} <= set(lines)
    assert "tiny" in lines["demo-tiny"]


def test_recipes_show_prints_the_resolved_recipe_with_overrides():
    result = runner.invoke(app, ["recipes", "show", "demo-tiny", "--set", "train.max_steps=12"])
    assert result.exit_code == 0
    assert "base: tiny-sd15" in result.stdout and "max_steps: 12" in result.stdout
    assert "extends" not in result.stdout


def test_recipes_validate_all_shipped():
    result = runner.invoke(app, ["recipes", "validate"])
    assert result.exit_code == 0 and result.stdout.count("ok ") >= 3


@pytest.mark.parametrize(("family", "pipeline"), [("sd15", "StableDiffusionPipeline"), ("sdxl", "StableDiffusionXLPipeline")])
def test_tiny_model_command_writes_a_pipeline(tmp_path, family, pipeline):
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "tiny"), "--family", family])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "tiny" / "model_index.json").read_text())
    assert index["_class_name"] == pipeline


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("archdiff ")


@pytest.mark.parametrize(
    ("argv", "unwanted"),
    [
        pytest.param(["--help"], ("pydantic", "rich", "yaml", "torch", "diffusers", "archdiff.config"), id="root"),
        # typer 0.29 itself imports pydantic to parse any subcommand's arguments: only archdiff's own heavy imports are checked
        pytest.param(["train", "--help"], ("rich", "torch", "diffusers", "datasets", "archdiff.config"), id="train"),
        pytest.param(["data", "list", "--help"], ("rich", "torch", "archdiff.config", "archdiff.data"), id="data-list"),
    ],
)
def test_help_imports_nothing_heavy(tmp_path, argv, unwanted):
    """A help screen must not pay for the recipe schema, torch or diffusers (timed by benchmarks/cli_startup.py)."""
    probe = (
        "import sys\n"
        f"sys.argv = ['archdiff', *{argv!r}]\n"
        "from archdiff.cli import main\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        f"    print('IMPORTED', [m for m in {unwanted!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "IMPORTED []"


def _all_commands(group: TyperGroup, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, TyperGroup):
            yield from _all_commands(command, (*path, name))


def test_help_shows_every_command_and_option_in_full():
    """Plain help (no rich) must still list everything, and a command's first sentence must fit unshortened."""
    root = typer.main.get_command(app)
    for path, command in [((), root), *_all_commands(root)]:
        result = runner.invoke(app, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0, result.output
        for param in command.params:
            assert all(opt in result.stdout for opt in param.opts if opt.startswith("-")), (path, param.opts)
        if isinstance(command, TyperGroup):
            listed = result.stdout.split("Commands:")[1].splitlines()[1:]
            assert {line.split()[0] for line in listed} == set(command.commands), path
            assert not [line for line in listed if line.endswith("...")], f"shortened command help under {path}"


def _main_with_failing_command(monkeypatch, capsys, tmp_path, error: Exception, *root_options: str) -> tuple[int, str]:
    """Run main() as the console script does, with `runs show` raising `error`; return the exit code and stderr."""

    def summarize(run):
        raise error

    monkeypatch.setattr("archdiff.runs.summarize", summarize)
    monkeypatch.setattr(sys, "argv", ["archdiff", *root_options, "runs", "show", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        main()
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("error", "code"), [(UserError("no such folder"), 2), (Diverged("the loss became nan at step 7"), 3)])
def test_an_error_is_one_line_and_its_own_exit_code(monkeypatch, capsys, tmp_path, error, code):
    monkeypatch.delenv("ARCHDIFF_DEBUG", raising=False)
    exit_code, stderr = _main_with_failing_command(monkeypatch, capsys, tmp_path, error)
    assert exit_code == code
    assert stderr.splitlines() == [f"archdiff: error: {error}"]


@pytest.mark.parametrize(("options", "env"), [pytest.param(["--debug"], "", id="option"), pytest.param([], "1", id="env")])
def test_debug_shows_the_traceback_before_the_one_line_error(monkeypatch, capsys, tmp_path, options, env):
    monkeypatch.setenv("ARCHDIFF_DEBUG", env)
    diverged = Diverged("the loss became nan at step 7")
    exit_code, stderr = _main_with_failing_command(monkeypatch, capsys, tmp_path, diverged, *options)
    assert exit_code == 3
    assert stderr.startswith("Traceback (most recent call last):")
    assert "in summarize" in stderr, "the traceback reaches the code that raised"
    assert stderr.splitlines()[-1] == "archdiff: error: the loss became nan at step 7"


def test_an_unforeseen_failure_is_still_one_line(monkeypatch, capsys, tmp_path):
    """No traceback on a user's screen even for a failure archdiff did not foresee; --debug still shows it."""
    monkeypatch.delenv("ARCHDIFF_DEBUG", raising=False)
    error = RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")
    exit_code, stderr = _main_with_failing_command(monkeypatch, capsys, tmp_path, error)
    assert exit_code == 1
    assert len(stderr.splitlines()) == 1 and stderr.startswith("archdiff: error: RuntimeError: CUDA error: device-side assert")
    assert "--debug" in stderr
    exit_code, stderr = _main_with_failing_command(monkeypatch, capsys, tmp_path, error, "--debug")
    assert exit_code == 1 and stderr.startswith("Traceback (most recent call last):") and "in summarize" in stderr


def test_ctrl_c_outside_training_exits_130_without_a_traceback(monkeypatch, capsys, tmp_path):
    exit_code, stderr = _main_with_failing_command(monkeypatch, capsys, tmp_path, KeyboardInterrupt())
    assert exit_code == 130 and "Traceback" not in stderr
