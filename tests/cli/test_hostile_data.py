"""Recipes, --set values and data folders as people really have them, through the real `archdiff` entry point.

Each refusal is one `archdiff: error:` line naming the file, key or value, exit code 2, no traceback, and leaves
the input files and any output folder exactly as they were (`tree_digest`). What can be read is read instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hostile import TRAIN_DEMO, tree_digest, user_error
from PIL import Image

HIDE_HEIF = ("pillow_heif",)  # the "not installed" path, whatever this venv holds
HEIC_BYTES = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)  # an ISO-media header, like an iPhone's


# -- recipes ------------------------------------------------------------------------------------


RECIPE_FILES = {
    "latin1": (
        "extends: demo-tiny\ndescription: café\n".encode("latin-1"),
        ["mine.yaml", "not UTF-8", "0xe9", "offset 35", "line 2"],
    ),
    "cp1252": ("extends: demo-tiny\ndescription: “façade”\n".encode("cp1252"), ["mine.yaml", "not UTF-8", "0x93", "offset 32"]),
    "utf16": ("extends: demo-tiny\n".encode("utf-16"), ["mine.yaml", "not UTF-8", "0xff", "offset 0", "line 1"]),
    "duplicate-section": (
        b"extends: demo-tiny\ntrain:\n  max_steps: 5\nlora:\n  rank: 4\ntrain:\n  batch_size: 2\n",
        ["mine.yaml", "line 6", "'train' appears twice", "first on line 2"],
    ),
    "duplicate-nested-key": (
        b"extends: demo-tiny\ntrain:\n  max_steps: 5\n  learning_rate: 0.1\n  max_steps: 7\n",
        ["mine.yaml", "line 5", "'train.max_steps' appears twice", "first on line 3"],
    ),
    "duplicate-flow-key": (b"extends: demo-tiny\nlora: {rank: 4, rank: 8}\n", ["line 2", "'lora.rank' appears twice"]),
    "output-unknown-placeholder": (b"extends: demo-tiny\noutput: runs/{nope}\n", ["'output'", "{nope}", "{name}"]),
    "output-two-unknown": (b"extends: demo-tiny\noutput: runs/{date}/{name}-{seed}\n", ["{date}, {seed}", "{name}"]),
    "output-unbalanced": (b"extends: demo-tiny\noutput: runs/{name\n", ["'output'", "unbalanced braces", "{name}"]),
    "resolution-beyond-memory": (b"extends: demo-tiny\ndata: {resolution: 65536}\n", ["data.resolution", "4096", "65536"]),
    "batch-beyond-memory": (b"extends: demo-tiny\ntrain: {batch_size: 1000000}\n", ["train.batch_size", "1024", "1000000"]),
}


@pytest.mark.parametrize("case", list(RECIPE_FILES), ids=list(RECIPE_FILES))
def test_recipe_file_refused_in_one_line(archdiff, tmp_path: Path, case: str) -> None:
    """A broken recipe file fails before any model work, saying which file, key, line or byte, and creates nothing."""
    data, expected = RECIPE_FILES[case]
    recipe = tmp_path / "mine.yaml"
    recipe.write_bytes(data)
    before = tree_digest(recipe)
    output = [] if case.startswith("output") else ["--output", "out"]  # --output would replace the recipe's
    message = user_error(archdiff("train", "--recipe", "mine.yaml", "--max-steps", "1", *output))
    for text in expected:
        assert text in message, message
    assert tree_digest(recipe) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_duplicate_key_in_a_parent_recipe_names_the_parent(archdiff, tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("extends: demo-tiny\nvalidation: {steps: 2}\nvalidation: {steps: 3}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\n")
    message = user_error(archdiff("recipes", "show", "child.yaml"))
    assert "base.yaml line 3" in message and "'validation' appears twice" in message


def test_validate_names_the_duplicate_key_and_the_bad_byte(archdiff, tmp_path: Path) -> None:
    """`recipes validate` gives each broken file its FAIL line with the reason, and one summary line on stderr."""
    (tmp_path / "twice.yaml").write_text("extends: demo-tiny\nlora: {rank: 4}\nlora: {rank: 8}\n")
    (tmp_path / "latin.yaml").write_bytes("extends: demo-tiny\ndescription: Zürich\n".encode("latin-1"))
    before = tree_digest(tmp_path)
    result = archdiff("recipes", "validate", "twice.yaml", "latin.yaml")
    message = user_error(result)
    assert "2 of 2" in message and "twice.yaml" in message and "latin.yaml" in message
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2, result.stdout
    assert "'lora' appears twice" in fails[0] and "0xfc" in fails[1]
    assert tree_digest(tmp_path) == before


def test_recipe_with_a_byte_order_mark_is_read(archdiff, tmp_path: Path) -> None:
    """Notepad's UTF-8 BOM is not an encoding problem: the recipe loads."""
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbfextends: demo-tiny\ndescription: Zurich\n")
    result = archdiff("recipes", "show", "bom.yaml")
    assert result.returncode == 0, result.stderr
    assert "description: Zurich" in result.stdout and "name: bom" in result.stdout


# -- --set values -------------------------------------------------------------------------------

README_TEMPLATE = "data.caption.template={material} facade, {storeys} storeys"


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        pytest.param(README_TEMPLATE, "template: '{material} facade, {storeys} storeys'", id="readme-template-unquoted"),
        pytest.param("data.caption.template={material}", "template: '{material}'", id="template-one-field"),
        pytest.param("data.caption.template={view}: {style}", "template: '{view}: {style}'", id="template-colon"),
        pytest.param("data.caption.trigger=[arcdf]", "trigger: '[arcdf]'", id="trigger-brackets"),
        pytest.param("name=2024", "name: '2024'", id="name-number"),
        pytest.param("output=runs/{name}-v2", "output: runs/demo-tiny-v2", id="output-name-placeholder"),
        pytest.param("data.caption.template=null", "template: null", id="template-null-still-null"),
    ],
)
def test_set_text_for_a_string_field_is_taken_as_written(archdiff, setting: str, shown: str) -> None:
    """A string field takes the text after '=' as is when YAML would read it as a mapping, a list or a number."""
    result = archdiff("recipes", "show", "demo-tiny", "--set", setting)
    assert result.returncode == 0, result.stderr
    assert shown in result.stdout


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        pytest.param("lora.rank", ["dotted.key=value", "lora.rank"], id="no-equals"),
        pytest.param("=4", ["dotted.key=value", "'=4'"], id="no-key"),
        pytest.param("a..b=1", ["--set a..b", "between every pair of dots"], id="empty-key-part"),
        pytest.param(".train.max_steps=1", ["--set .train.max_steps", "between every pair of dots"], id="leading-dot"),
        pytest.param("train.max_steps.=1", ["--set train.max_steps.", "between every pair of dots"], id="trailing-dot"),
        pytest.param(
            "train.max_steps=[1",
            ["--set train.max_steps", "not valid YAML", "write a number", "--set 'train.max_steps=\"...\"'"],
            id="bad-yaml-number",
        ),
        pytest.param("validation.prompts=[a, {b]", ["validation.prompts", "not valid YAML"], id="bad-yaml-list"),
        pytest.param("output=runs/{nope}", ["'output'", "{nope}", "{name}"], id="output-unknown-placeholder"),
        pytest.param("data.resolution=65536", ["data.resolution", "4096"], id="resolution-65536"),
        pytest.param("train.batch_size=50000", ["train.batch_size", "1024"], id="batch-50000"),
    ],
)
def test_set_mistakes_refused_before_any_work(archdiff, tmp_path: Path, setting: str, expected: list[str]) -> None:
    output = [] if setting.startswith("output") else ["--output", "out"]  # --output would replace the recipe's
    message = user_error(archdiff(*TRAIN_DEMO, "--max-steps", "1", "--set", setting, *output))
    for text in expected:
        assert text in message, message
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


# -- data folders -------------------------------------------------------------------------------


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (40 * i % 255, 90, 160)).save(folder / name)
    return folder


def _jsonl(rows: list[object]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


THREE = ["a.png", "b.png", "c.png"]
UNICODE_BREAKS = "".join(f'{{"file_name": "{n}", "text": "brick\u2028house\x85{n}"}}\r\n' for n in THREE).encode()
ACCEPTED = {
    "csv-semicolon": (b'file_name;text;storeys\na.png;brick house;3\nb.png;"timber; glass";2\nc.png;stone tower;9\n', 3),
    "csv-tab": (b"file_name\ttext\na.png\tbrick house\nb.png\ttimber house\nc.png\tstone tower\n", 3),
    "csv-excel-bom-semicolon": (b"\xef\xbb\xbffile_name;text\na.png;brick house\nb.png;timber house\nc.png;stone tower\n", 3),
    "csv-excel-bom-comma": (b"\xef\xbb\xbffile_name,text\na.png,brick house\nb.png,timber house\nc.png,stone tower\n", 3),
    "jsonl-bom": (b"\xef\xbb\xbf" + _jsonl([{"file_name": n, "text": f"house {n}"} for n in THREE]), 3),
    "jsonl-text-numbers-and-strings": (
        _jsonl(
            [{"file_name": "a.png", "text": 12}, {"file_name": "b.png", "text": "brick"}, {"file_name": "c.png", "text": 3.5}]
        ),
        3,
    ),
    "jsonl-crlf-and-unicode-line-breaks-in-captions": (UNICODE_BREAKS, 3),
    "jsonl-text-all-numbers": (_jsonl([{"file_name": n, "text": i} for i, n in enumerate(THREE, 1)]), 3),
    "jsonl-text-list": (
        _jsonl(
            [
                {"file_name": "a.png", "text": ["brick", "gable roof"]},
                {"file_name": "b.png", "text": "timber"},
                {"file_name": "c.png", "text": ["stone", 3]},
            ]
        ),
        3,
    ),
    "jsonl-other-column-mixed": (
        _jsonl(
            [
                {"file_name": "a.png", "text": "x", "storeys": 3},
                {"file_name": "b.png", "text": "y", "storeys": "three"},
                {"file_name": "c.png", "text": "z", "storeys": None},
            ]
        ),
        3,
    ),
    "jsonl-nested-object-column": (
        _jsonl([{"file_name": n, "text": "house", "meta": {"id": i} if i else "none"} for i, n in enumerate(THREE)]),
        3,
    ),
}


@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
def test_metadata_people_actually_have_is_read(archdiff, tmp_path: Path, case: str) -> None:
    """Excel BOMs, ';'-separated CSV and columns mixing numbers, text and lists all inspect with every image usable."""
    data, usable = ACCEPTED[case]
    folder = _images(tmp_path / "photos", THREE)
    (folder / ("metadata.csv" if case.startswith("csv") else "metadata.jsonl")).write_bytes(data)
    before = tree_digest(folder)
    result = archdiff("data", "inspect", "photos")
    assert result.returncode == 0, result.stderr
    assert f"images: {usable} found, {usable} usable, 0 skipped" in result.stdout
    assert re.search(r"captions: .*; 0 empty", result.stdout), result.stdout
    assert tree_digest(folder) == before


REFUSED = {  # case (csv-... or jsonl-...): (metadata bytes, what the message says besides the file name)
    "jsonl-malformed-line": (
        b'{"file_name": "a.png", "text": "x"}\n{"file_name": "b.png", "text": "y"}\n{"file_name": "c.png", text: "z"}\n',
        ["line 3", "not valid JSON", "column"],
    ),
    "jsonl-trailing-comma": (b'{"file_name": "a.png", "text": "x",}\n', ["line 1", "not valid JSON"]),
    "jsonl-line-is-a-list": (b'{"file_name": "a.png"}\n["b.png", "y"]\n', ["line 2", "no file_name"]),
    "jsonl-no-file-name": (b'{"file_name": "a.png"}\n{"name": "b.png"}\n', ["line 2", "no file_name"]),
    "jsonl-latin1": (b'{"file_name": "a.png"}\n{"file_name": "b.png", "text": "caf\xe9"}\n', ["line 2", "not valid UTF-8"]),
    "jsonl-image-column": (b'{"file_name": "a.png", "image": "x"}\n', ["line 1", "'image'"]),
    "jsonl-missing-file": (b'{"file_name": "a.png"}\n{"file_name": "gone.png"}\n', ["line 2", "'gone.png' does not exist"]),
    "jsonl-number-beyond-int64": (
        b'{"file_name": "a.png", "text": "x", "id": 123456789012345678901234567890}\n',
        ["line 1", "column 'id'", "123456789012345678901234567890"],
    ),
    "csv-extra-field": (b"file_name,text\na.png,brick\nb.png,brick, gable roof\n", ["line 3", "3 fields", "header 2", "quote"]),
    "csv-no-file-name-header": (b"image;caption\na.png;brick\n", ["line 1", "no file_name column"]),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_metadata_that_cannot_be_read_names_file_and_line(archdiff, tmp_path: Path, case: str) -> None:
    data, expected = REFUSED[case]
    name = "metadata.csv" if case.startswith("csv") else "metadata.jsonl"
    folder = _images(tmp_path / "photos", THREE)
    (folder / name).write_bytes(data)
    before = tree_digest(folder)
    message = user_error(archdiff("data", "inspect", "photos"))
    for text in [name, *expected]:
        assert text in message, message
    assert tree_digest(folder) == before
    assert not (tmp_path / "runs").exists()


def test_root_metadata_over_train_and_test_folders(archdiff, tmp_path: Path) -> None:
    """A root metadata.jsonl over train/ and test/ trains on train/, and names each test/ image as the other split."""
    folder = _images(tmp_path / "photos", ["train/a.png", "train/b.png", "test/c.png"])
    rows = [{"file_name": n, "text": f"house {n}"} for n in ("train/a.png", "train/b.png", "test/c.png")]
    (folder / "metadata.jsonl").write_bytes(_jsonl(rows))
    before = tree_digest(folder)
    result = archdiff("data", "inspect", "photos")
    assert result.returncode == 0, result.stderr
    assert "images: 3 found, 2 usable, 1 skipped" in result.stdout
    assert "skipped test/c.png: in the 'test' split folder; this source reads split 'train'" in result.stdout
    assert tree_digest(folder) == before


def test_metadata_inside_each_split_folder(archdiff, tmp_path: Path) -> None:
    """The HF layout (train/metadata.jsonl, test/metadata.jsonl) reads train/ with its captions."""
    folder = _images(tmp_path / "photos", ["train/a.png", "train/b.png", "test/c.png", "stray.png"])
    (folder / "train" / "metadata.jsonl").write_bytes(_jsonl([{"file_name": n, "text": "house"} for n in ("a.png", "b.png")]))
    (folder / "test" / "metadata.jsonl").write_bytes(_jsonl([{"file_name": "c.png", "text": "house"}]))
    result = archdiff("data", "inspect", "photos")
    assert result.returncode == 0, result.stderr
    assert "images: 4 found, 2 usable, 2 skipped" in result.stdout
    assert "skipped test/c.png: in the 'test' split folder" in result.stdout
    assert "skipped stray.png: outside the 'train' folder" in result.stdout


# -- nothing dropped silently -------------------------------------------------------------------


def _with_strays(folder: Path, metadata: bool) -> None:
    """Three photos, a dangling symlink, an iPhone photo and a HEIC saved under a .jpg name."""
    _images(folder, THREE)
    (folder / "gone.png").symlink_to("deleted-long-ago.png")
    (folder / "IMG_0001.heic").write_bytes(HEIC_BYTES)
    (folder / "IMG_0002.jpg").write_bytes(HEIC_BYTES)
    if metadata:
        names = [*THREE, "gone.png", "IMG_0001.heic", "IMG_0002.jpg"]
        (folder / "metadata.jsonl").write_bytes(_jsonl([{"file_name": n, "text": "brick house"} for n in names]))


@pytest.mark.parametrize("metadata", [False, True], ids=["sidecar-folder", "listed-in-metadata"])
def test_dangling_symlink_and_heic_are_named_by_inspect(archdiff, tmp_path: Path, metadata: bool) -> None:
    folder = tmp_path / "photos"
    _with_strays(folder, metadata)
    for name in [*THREE, "gone.png", "IMG_0001.heic", "IMG_0002.jpg"]:
        if not metadata:
            (folder / name).with_suffix(".txt").write_text("brick house")
    before = tree_digest(folder)
    result = archdiff("data", "inspect", "photos", hidden=HIDE_HEIF)
    assert result.returncode == 0, result.stderr
    assert "images: 6 found, 3 usable, 3 skipped" in result.stdout
    assert "skipped gone.png: dangling symlink (it points to deleted-long-ago.png" in result.stdout
    for name in ("IMG_0001.heic", "IMG_0002.jpg"):
        assert f"skipped {name}: HEIC/HEIF photo" in result.stdout and "pip install pillow-heif" in result.stdout
    assert tree_digest(folder) == before


def test_training_names_every_skipped_file_on_screen_and_in_data_txt(archdiff, tmp_path: Path) -> None:
    """A real run on a ';'-separated Excel CSV with the README's template unquoted, next to files it cannot use."""
    folder = tmp_path / "photos"
    _with_strays(folder, metadata=False)
    (folder / "metadata.csv").write_bytes(
        b"\xef\xbb\xbffile_name;material;storeys\na.png;brick;3\nb.png;timber;2\nc.png;stone;12\n"
        b"gone.png;glass;4\nIMG_0001.heic;render;1\nIMG_0002.jpg;render;2\n"
    )
    before = tree_digest(folder)
    result = archdiff(
        *TRAIN_DEMO, "--data", "photos", "--max-steps", "2", "--output", "out",
        "--set", "validation.prompts=[]", "--set", README_TEMPLATE, hidden=HIDE_HEIF,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data_txt = (tmp_path / "out" / "data.txt").read_text()
    for text in ("skipped 3:", "gone.png: dangling symlink", "IMG_0001.heic: HEIC/HEIF photo", "IMG_0002.jpg: HEIC/HEIF photo"):
        assert text in data_txt and text in result.stdout
    assert "data: 3 images from photos" in data_txt
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    assert tree_digest(folder) == before


def test_folder_of_only_unreadable_entries_names_them(archdiff, tmp_path: Path) -> None:
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(HEIC_BYTES)
    (folder / "gone.jpg").symlink_to("/nowhere/at/all.jpg")
    before = tree_digest(folder)
    message = user_error(archdiff("data", "inspect", "phone", hidden=HIDE_HEIF))
    assert "no usable images (2 skipped" in message
    assert "IMG_0001.HEIC: HEIC/HEIF photo" in message and "pillow-heif" in message
    assert "gone.jpg: dangling symlink" in message
    assert tree_digest(folder) == before
    assert not (tmp_path / "runs").exists()
