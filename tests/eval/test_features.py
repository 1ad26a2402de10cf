"""Metric-model loading and feature extraction, on tiny random CLIP and DINOv2 models built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from archdiff.errors import UserError
from archdiff.eval.features import clip_image_embeds, clip_text_embeds, dino_features, load_clip, load_dino

REPO = Path(__file__).resolve().parents[2]  # not `from conftest import`: under xdist another conftest may answer
PROMPTS = ["a brick facade with arched windows", "a glass office tower", "a timber house", "a concrete stair " * 40]


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from archdiff.eval.tiny_models import build_tiny_clip, build_tiny_dino

    root = tmp_path_factory.mktemp("metric-models")
    return build_tiny_clip(root / "clip"), build_tiny_dino(root / "dino")


@pytest.fixture(scope="module")
def clip(tiny_folders):
    return load_clip(str(tiny_folders[0]))


@pytest.fixture(scope="module")
def dino(tiny_folders):
    return load_dino(str(tiny_folders[1]))


@pytest.fixture(scope="module")
def facades():
    """Four bundled facades, in different sizes and modes (the processors resize, crop and convert)."""
    images = [Image.open(REPO / "datasets" / "facades" / f"facade_00{i}.png").convert("RGB") for i in range(4)]
    images[1] = images[1].resize((300, 180))
    images[2] = images[2].convert("L")
    return images


def test_tiny_models_are_small_safetensors_and_rebuild_identically(tiny_folders, tmp_path):
    from archdiff.eval.tiny_models import build_tiny_clip, build_tiny_dino

    for folder, build in zip(tiny_folders, (build_tiny_clip, build_tiny_dino), strict=True):
        weights = folder / "model.safetensors"
        assert (folder / "config.json").is_file() and (folder / "preprocessor_config.json").is_file()
        assert 50_000 < weights.stat().st_size < 1_000_000
        again = build(tmp_path / folder.name)
        assert (again / "model.safetensors").read_bytes() == weights.read_bytes()
    assert (tiny_folders[0] / "tokenizer.json").is_file()


def test_processors_are_pil_ones(clip, dino):
    """No torchvision on this stack: the PIL backends are asked for, whatever the saved config names."""
    assert type(clip.processor).__name__ == "CLIPImageProcessorPil"
    assert type(dino.processor).__name__ == "BitImageProcessorPil"
    assert not clip.network.training and not dino.network.training


def test_clip_embeddings_shapes_determinism_and_batch_independence(clip, facades):
    images = clip_image_embeds(clip, facades, batch_size=4)
    assert images.shape == (4, 32) and images.dtype.is_floating_point
    assert images.isfinite().all()
    one_by_one = clip_image_embeds(clip, iter(facades), batch_size=1)  # a generator works too: images are pulled lazily
    assert (images - one_by_one).abs().max() < 1e-5
    assert (clip_image_embeds(clip, facades, batch_size=4) == images).all()
    assert not (images[0] == images[3]).all()  # different images, different embeddings

    texts = clip_text_embeds(clip, PROMPTS)
    assert texts.shape == (4, 32)
    assert (texts - clip_text_embeds(clip, PROMPTS, batch_size=1)).abs().max() < 1e-5  # padding does not change a prompt


def test_clip_score_on_embeddings_is_finite_and_bounded(clip, facades):
    from archdiff.eval.metrics import clip_score

    scores = clip_score(clip_image_embeds(clip, facades), clip_text_embeds(clip, PROMPTS))
    assert scores.shape == (4,)
    assert scores.isfinite().all() and (scores >= 0).all() and (scores <= 100).all()


def test_dino_features_shapes_determinism_and_batch_independence(dino, facades):
    features = dino_features(dino, facades, batch_size=4)
    assert features.shape == (4, 32)
    assert (features - dino_features(dino, facades, batch_size=1)).abs().max() < 1e-5
    assert (dino_features(dino, facades, batch_size=3) - features).abs().max() < 1e-5  # a ragged last batch
    assert not (features[0] == features[3]).all()


def test_dino_features_are_the_normalised_cls_token(dino, facades):
    import torch

    pixels = dino.processor(images=facades[:2], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        hidden = dino.network(pixel_values=pixels).last_hidden_state
    assert torch.allclose(dino_features(dino, facades[:2]), hidden[:, 0], atol=1e-6)


def _one_line_error(load, name: str) -> str:
    with pytest.raises(UserError) as caught:
        load(name)
    message = str(caught.value)
    assert "\n" not in message and name in message
    return message


def test_a_folder_that_is_not_a_model_is_one_line(tmp_path, tiny_folders):
    (tmp_path / "notes.txt").write_text("not a model")
    assert "config.json" in _one_line_error(load_clip, str(tmp_path))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert "could not be loaded" in _one_line_error(load_dino, str(broken))
    assert "clip" in _one_line_error(load_dino, str(tiny_folders[0]))  # a CLIP folder is no DINOv2 model
    assert "does not exist" in _one_line_error(load_clip, str(tmp_path / "missing" / "deeper" / "folder"))


def test_a_hub_id_offline_is_one_clear_line(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "not reachable" in _one_line_error(load_clip, "archdiff-nobody/no-such-clip")
    assert "not reachable" in _one_line_error(load_dino, "archdiff-nobody/no-such-dino")


def test_no_images_or_prompts_is_a_user_error(clip, dino):
    with pytest.raises(UserError, match="no images"):
        dino_features(dino, [])
    with pytest.raises(UserError, match="no prompts"):
        clip_text_embeds(clip, [])


def test_many_images_show_a_progress_bar_few_do_not(dino, capsys):
    from archdiff.eval.features import PROGRESS_MIN_IMAGES

    few = [Image.new("RGB", (40, 30), (i, 2 * i, 3 * i)) for i in range(4)]
    dino_features(dino, few)
    assert "DINOv2 features" not in capsys.readouterr().err
    many = few * (PROGRESS_MIN_IMAGES // 4)
    assert dino_features(dino, many, batch_size=32).shape == (PROGRESS_MIN_IMAGES, 32)
    assert f"{PROGRESS_MIN_IMAGES}/{PROGRESS_MIN_IMAGES}" in capsys.readouterr().err
