"""The CLI's happy paths, through typer's runner (in-process) where no model is trained."""

import json

import pytest
from typer.testing import CliRunner

from archdiff.cli import app

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
