"""Data sources: bundled sets, image folders (metadata or sidecar captions), saved and Hub-layout datasets."""

import json

import pytest
from PIL import Image

from archdiff.config.schema import CaptionConfig, SourceConfig
from archdiff.data.sources import bundled_names, load_source
from archdiff.errors import UserError

CAPTION = CaptionConfig()


def write_folder(folder, count, caption_key="text", extra=None):
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        Image.new("RGB", (48 + 16 * i, 32), (i * 40 % 255, 90, 160)).save(folder / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png", caption_key: f"building number {i}", **(extra or {})})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def load(path, **options):
    return load_source(SourceConfig(path=str(path), **options), CAPTION)


def test_bundled_sets_are_listed_and_load():
    assert {"facades", "plans"} <= set(bundled_names())
    source = load("plans")
    assert len(source.dataset) == 32 and source.label == "plans" and not source.skipped
    assert set(source.dataset["kind"]) == {"drawing"}


def test_image_column_stays_undecoded(tmp_path):
    """Images are opened one by one later, so one broken file cannot fail the whole load."""
    source = load(write_folder(tmp_path / "d", 3))
    value = source.dataset[0]["image"]
    assert set(value) == {"bytes", "path"} and value["path"].endswith(".png")


def test_images_missing_from_metadata_are_reported(tmp_path):
    folder = write_folder(tmp_path / "d", 3)
    Image.new("RGB", (8, 8)).save(folder / "forgotten.png")
    source = load(folder)
    assert len(source.dataset) == 3
    assert [(s.name, s.reason) for s in source.skipped] == [("forgotten.png", "not listed in metadata.jsonl")]


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "/etc/passwd"])
def test_metadata_pointing_outside_the_folder_is_refused(tmp_path, name):
    folder = write_folder(tmp_path / "d", 2)
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    with (folder / "metadata.jsonl").open("a") as handle:
        handle.write(json.dumps({"file_name": name, "text": "sneaky"}) + "\n")
    with pytest.raises(UserError, match=r"line 3: file_name '.*' points outside the data folder"):
        load(folder)


def test_metadata_that_is_not_utf8_names_the_line(tmp_path):
    folder = write_folder(tmp_path / "d", 2)
    with (folder / "metadata.jsonl").open("ab") as handle:
        handle.write(b'{"file_name": "img0.png", "text": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"metadata.jsonl: line 3 is not valid UTF-8"):
        load(folder)


def test_metadata_csv(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "metadata.csv").write_text("file_name,text,building_id\na.png,a brick house,7\n")
    source = load(folder)
    assert source.dataset[0]["text"] == "a brick house" and str(source.dataset[0]["building_id"]) == "7"


def test_sidecar_captions(tmp_path):
    folder = tmp_path / "kohya"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(folder / f"{name}.jpg")
    (folder / "a.txt").write_text("a timber house\n")
    (folder / "b.txt").write_bytes(b"caf\xe9 with a terrace")
    source = load(folder)
    rows = {row["file_name"]: row["text"] for row in source.dataset}
    assert rows == {"a.jpg": "a timber house", "c.jpg": None}
    assert [s.name for s in source.skipped] == ["b.jpg"]
    assert "b.txt is not valid UTF-8" in source.skipped[0].reason


def test_saved_dataset_and_hub_layout_folder_load_through_datasets(tmp_path):
    """The Hub path (`load_dataset` on parquet files) and `save_to_disk` folders, exercised offline."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    image = tmp_path / "x.png"
    Image.new("RGB", (24, 8), "white").save(image)
    picture = {"bytes": image.read_bytes(), "path": None}  # as on the Hub: the image inside the dataset
    rows = {"picture": [picture] * 2, "caption": ["a wide facade", "another facade"]}
    dataset = Dataset.from_dict(rows, features=Features({"picture": ImageFeature(), "caption": Value("string")}))
    dataset.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "repo" / "data").mkdir(parents=True)
    dataset.to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"))

    for folder in ("saved", "repo"):
        source = load_source(SourceConfig(path=str(tmp_path / folder), image_column="picture"), CaptionConfig(column="caption"))
        assert source.dataset.column_names == ["image", "caption"]
        assert source.dataset[1]["caption"] == "another facade"
        assert source.dataset[0]["image"]["bytes"] == image.read_bytes()


def test_missing_caption_column_names_the_columns(tmp_path):
    folder = write_folder(tmp_path / "d", 2, caption_key="caption")
    with pytest.raises(UserError, match="no caption column 'text'.*columns: image, caption"):
        load(folder)
    assert len(load_source(SourceConfig(path=str(folder)), CaptionConfig(column="caption")).dataset) == 2


def test_template_fields_must_exist(tmp_path):
    folder = write_folder(tmp_path / "d", 2, extra={"material": "brick"})
    template = CaptionConfig(template="{material} facade, {roof} roof")
    with pytest.raises(UserError, match="no caption template fields 'roof'"):
        load_source(SourceConfig(path=str(folder)), template)


def test_unknown_source_is_a_user_error():
    with pytest.raises(UserError, match="not a local folder, a bundled set"):
        load("./nowhere")


def test_offline_hub_id_is_a_user_error():
    with pytest.raises(UserError, match="could not be loaded from the Hub"):
        load("nobody/no-such-dataset")


def _three_images(folder, names=("a.png", "b.png", "c.png")):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(folder / name)
    return folder


def test_excel_csv_with_bom_and_semicolons_reads_every_value(tmp_path):
    folder = _three_images(tmp_path)
    (folder / "metadata.csv").write_bytes(
        b'\xef\xbb\xbffile_name;text;storeys\na.png;brick house;3\nb.png;"timber; glass";2\nc.png;stone, tower;9\n'
    )
    source = load(folder)
    assert source.dataset["text"] == ["brick house", "timber; glass", "stone, tower"]
    assert source.dataset["storeys"] == ["3", "2", "9"] and not source.skipped


def test_mixed_metadata_columns_become_text_as_captions_read_them(tmp_path):
    folder = _three_images(tmp_path)
    rows = [
        {"file_name": "a.png", "text": 12, "tags": ["brick", 3], "meta": {"id": 1}},
        {"file_name": "b.png", "text": "brick", "tags": "gable", "meta": None},
        {"file_name": "c.png", "text": ["stone", "tower"], "tags": None, "storeys": 4},
    ]
    (folder / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    dataset = load(folder).dataset
    assert dataset["text"] == ["12", "brick", "stone, tower"]
    assert dataset["tags"] == ["brick, 3", "gable", None]
    assert dataset["meta"] == ['{"id": 1}', None, None] and dataset["storeys"] == [None, None, 4]
    assert dataset.column_names == ["image", "text", "tags", "meta", "storeys"]


def test_split_folders_under_a_root_metadata_file(tmp_path):
    folder = _three_images(tmp_path, ("train/a.png", "train/b.png", "test/c.png"))
    rows = [{"file_name": name, "text": "house"} for name in ("train/a.png", "train/b.png", "test/c.png")]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = load(folder)
    assert [value["path"][-11:] for value in source.dataset["image"]] == ["train/a.png", "train/b.png"]
    assert [s.name for s in source.skipped] == ["test/c.png"] and "'test' split folder" in source.skipped[0].reason
    assert len(load(folder, split="test").dataset) == 1


def test_dangling_symlink_and_heic_are_skipped_with_reasons(tmp_path, monkeypatch):
    import archdiff.data.images as images

    monkeypatch.setattr(images, "heif_available", lambda: False)
    folder = _three_images(tmp_path)
    (folder / "gone.png").symlink_to("missing.png")
    (folder / "IMG_1.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    reasons = dict((s.name, s.reason) for s in load(folder).skipped)
    assert reasons.keys() == {"gone.png", "IMG_1.HEIC"}
    assert "dangling symlink" in reasons["gone.png"] and "missing.png" in reasons["gone.png"]
    assert "pip install pillow-heif" in reasons["IMG_1.HEIC"]
