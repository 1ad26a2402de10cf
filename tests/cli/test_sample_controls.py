"""`archdiff sample --control` through the real CLI: guided images with their control maps and adherence, and every
bad control option refused with one line, exit 2 and no output folder, before torch or diffusers is even imported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile import user_error
from PIL import Image

NO_MODELS = ("torch", "diffusers", "transformers", "peft", "accelerate")


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny ControlNets with random zero convolutions (so the control matters), plain and as training runs."""
    from test_controlnets import make_controlnet, make_controlnet_run

    root = tmp_path_factory.mktemp("cli-controlnets")
    made = {family: make_controlnet(root / family, f"tiny-{family}", seed=1) for family in ("sd15", "sdxl")}
    made["run"] = make_controlnet_run(root / "run", made["sd15"])
    made["sdxl-run"] = make_controlnet_run(root / "sdxl-run", made["sdxl"], base="tiny-sdxl")
    return made


@pytest.fixture
def sketches(tmp_path: Path) -> dict[str, Path]:
    from test_controlnets import sketch

    return {"a": sketch(tmp_path / "a.png"), "b": sketch(tmp_path / "b.png", shift=12)}


def test_guided_sampling_writes_images_control_maps_and_adherence(archdiff, nets, sketches, tmp_path):
    result = archdiff(
        "sample", "a house", "--control", "a.png", "--controlnet", str(nets["run"]), "-n", "2", "--steps", "2", "-o", "out"
    )
    assert result.returncode == 0, result.stderr
    adherence = [line for line in result.stdout.splitlines() if line.startswith("control adherence (F1, lines): ")]
    assert len(adherence) == 1 and len(adherence[0].split(": ")[1].split()) == 2, result.stdout
    assert f"control: {Path('out') / 'control-00.png'}" in result.stdout
    images = sorted((tmp_path / "out").glob("0*-seed*.png"))
    control = Image.open(tmp_path / "out" / "control-00.png")
    assert len(images) == 2 and Image.open(images[0]).size == control.size == (80, 48), "the bucket of a 96x64 sketch at 64 px"
    text = Image.open(images[0]).text
    assert json.loads(text["controlnet"]) == ["run"] and json.loads(text["control_scale"]) == [1.0]
    assert f"{json.loads(text['control_f1'])[0]:.2f}" == adherence[0].split(": ")[1].split()[0]
    assert 'ControlNet 0: "Module: lines, Model: run, Weight: 1.0, Image: a.png"' in text["parameters"]
    assert Image.open(tmp_path / "out" / "grid.png").size == (3 * 80, 48), "control | results"


def test_two_controls_on_sdxl_make_a_multi_controlnet(archdiff, nets, sketches, tmp_path):
    args = ["--control", "a.png", "--controlnet", str(nets["sdxl-run"]), "--control", "b.png", "--controlnet", str(nets["sdxl"])]
    args += ["--control-type", "lines", "--control-type", "drawing", "--control-scale", "1", "--control-scale", "0.5"]
    result = archdiff("sample", "a house", *args, "-n", "1", "--steps", "2", "-o", "out", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "control adherence of a.png (F1, lines): " in result.stdout
    assert "control adherence of b.png (F1, drawing): " in result.stdout
    (image,) = (tmp_path / "out").glob("00-seed*.png")
    text = Image.open(image).text
    assert json.loads(text["control_type"]) == ["lines", "drawing"] and json.loads(text["control_scale"]) == [1.0, 0.5]
    assert "Model: tiny-sdxl" in text["parameters"] and 'ControlNet 1: "Module: drawing, Model: sdxl' in text["parameters"]
    assert {p.name for p in (tmp_path / "out").glob("control-*.png")} == {"control-00.png", "control-01.png"}


BAD = [
    pytest.param(["--control", "nope.png", "--controlnet", "{sd15}"], ["--control 'nope.png'", "not a file"], id="missing"),
    pytest.param(
        ["--control", "notes.png", "--controlnet", "{sd15}"], ["--control 'notes.png'", "not an image"], id="unreadable"
    ),
    pytest.param(["--control", "a.png"], ["--control needs a ControlNet", "--controlnet"], id="no-controlnet"),
    pytest.param(["--controlnet", "{sd15}"], ["--controlnet needs a --control image"], id="no-control"),
    pytest.param(
        ["--control", "a.png", "--controlnet", "."], ["--controlnet '.'", "not a ControlNet run folder"], id="not-a-net"
    ),
    pytest.param(
        ["--control", "a.png", "--controlnet", "{sdxl}"], ["is an SDXL ControlNet on an SD 1.5 base ('tiny-sd15')"], id="family"
    ),
    pytest.param(
        ["--control", "a.png", "--controlnet", "{sd15}", "--control-scale", "nan"], ["--control-scale", "finite"], id="nan"
    ),
    pytest.param(
        ["--control", "a.png", "--controlnet", "{sd15}", "--control-scale", "-1"], ["--control-scale", "0 or more"], id="neg"
    ),
    pytest.param(
        ["--control", "a.png", "--controlnet", "{sd15}", "--control-type", "hed"], ["unknown control type 'hed'"], id="type"
    ),
    pytest.param(
        ["--control", "a.png", "--controlnet", "{sd15}", "--init-image", "a.png"], ["--init-image", "not supported"], id="img2img"
    ),
    pytest.param(
        ["--control", "a.png", "--control", "b.png", "--controlnet", "{sd15}"],
        ["2 --control images but 1 --controlnet"],
        id="count",
    ),
    pytest.param(
        ["--control", "a.png", "--controlnet", "someone/sketch-net"], ["'someone/sketch-net'", "could not be fetched"], id="hub"
    ),
]


@pytest.mark.parametrize(("extra", "says"), BAD)
def test_bad_control_options_are_refused_before_any_model_loads(archdiff, nets, sketches, tmp_path, extra, says):
    (tmp_path / "notes.png").write_text("not a picture")
    extra = [str(nets[item[1:-1]]) if item.startswith("{") else item for item in extra]
    message = user_error(archdiff("sample", "x", "--base", "tiny-sd15", *extra, "-o", "out", hidden=NO_MODELS))
    for text in says:
        assert text in message, message
    assert not (tmp_path / "out").exists()
