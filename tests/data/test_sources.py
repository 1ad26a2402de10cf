"""Data sources and transforms: bundled names, local folders, the held-out split, image tensors."""

import json
import random

import pytest
import torch
from PIL import Image

from archdiff.config.schema import DataConfig
from archdiff.data.sources import bundled_names, load_training_data
from archdiff.data.transforms import collate, make_transform, resize_and_crop, to_tensor
from archdiff.errors import UserError


def test_bundled_sets_are_listed():
    assert {"facades", "plans"} <= set(bundled_names())


def test_bundled_facades_split_deterministically():
    cfg = DataConfig(source="facades", holdout=0.1)
    first, again = load_training_data(cfg, seed=1), load_training_data(cfg, seed=1)
    assert len(first.holdout) == round(0.1 * (len(first.train) + len(first.holdout)))
    assert first.holdout["text"] == again.holdout["text"]
    assert len(first.train) + len(first.holdout) == 32
    assert load_training_data(cfg, seed=2).holdout["text"] != first.holdout["text"], "the seed picks the holdout"


def write_folder(folder, count, caption_key="text"):
    folder.mkdir()
    rows = []
    for i in range(count):
        Image.new("RGB", (48 + 16 * i, 32), (i * 40 % 255, 90, 160)).save(folder / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png", caption_key: f"building number {i}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_local_folder_with_captions(tmp_path):
    data = load_training_data(DataConfig(source=str(write_folder(tmp_path / "d", 5)), holdout=0.0), seed=0)
    assert data.holdout is None and len(data.train) == 5
    assert sorted(data.train["text"]) == [f"building number {i}" for i in range(5)]


def test_small_holdout_still_holds_out_one_image(tmp_path):
    data = load_training_data(DataConfig(source=str(write_folder(tmp_path / "d", 4)), holdout=0.01), seed=0)
    assert len(data.holdout) == 1 and len(data.train) == 3


def test_missing_caption_column_names_the_columns(tmp_path):
    folder = write_folder(tmp_path / "d", 2, caption_key="caption")
    with pytest.raises(UserError, match="no caption column 'text'.*caption"):
        load_training_data(DataConfig(source=str(folder)), seed=0)
    data = load_training_data(DataConfig(source=str(folder), caption_column="caption", holdout=0), seed=0)
    assert len(data.train) == 2


def test_unknown_source_is_a_user_error():
    with pytest.raises(UserError, match="neither a local folder nor a bundled set"):
        load_training_data(DataConfig(source="./nowhere"), seed=0)


def test_resize_and_crop_covers_the_square():
    wide = Image.new("RGB", (400, 100), "red")
    assert resize_and_crop(wide, 64, center=True, rng=random.Random(0)).size == (64, 64)
    tall = Image.new("L", (30, 90), 128)
    assert resize_and_crop(tall, 64, center=False, rng=random.Random(0)).mode == "RGB"


def test_to_tensor_maps_to_vae_range():
    image = Image.new("RGB", (2, 1))
    image.putpixel((0, 0), (0, 0, 0))
    image.putpixel((1, 0), (255, 255, 255))
    tensor = to_tensor(image)
    assert tensor.shape == (3, 1, 2)
    assert tensor[:, 0, 0].tolist() == [-1.0] * 3 and tensor[:, 0, 1].tolist() == [1.0] * 3


def test_transform_and_collate_make_a_batch(tiny_base):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")
    cfg = DataConfig(source="facades", resolution=32, random_flip=True)
    data = load_training_data(cfg, seed=0)
    dataset = data.train.with_transform(make_transform(cfg, tokenizer, "text", train=True))
    batch = collate([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == (2, tokenizer.model_max_length)


def test_eval_transform_is_deterministic(tiny_base):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")
    cfg = DataConfig(source="facades", resolution=32, random_flip=True, center_crop=False)
    data = load_training_data(cfg, seed=0)
    dataset = data.holdout.with_transform(make_transform(cfg, tokenizer, "text", train=False))
    assert torch.equal(dataset[0]["pixel_values"], dataset[0]["pixel_values"])
