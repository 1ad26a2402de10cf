"""`archdiff data caption` with the tiny random BLIP (and a tiny LLaVA for instruction models): batching, per-batch
saves, resume after SIGKILL, human captions kept, templates, a folder training accepts, and one-line refusals. The
captions are nonsense; the plumbing is real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from archdiff.data import captioning
from archdiff.data.captioning import MACHINE, caption_folder_of, check_template, load_captioner, plan_captions, write_captions
from archdiff.errors import UserError

MODEL = "tiny-captioner"


@pytest.fixture(scope="module")
def captioner():
    return load_captioner(MODEL)


def _images(folder: Path, count: int, start: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(start, start + count):
        name = f"img{index:02d}.png"
        Image.new("RGB", (64 + 16 * (index % 2), 64), (30 * index % 256, 120, 200)).save(folder / name)
        names.append(name)
    return names


def _rows(folder: Path) -> dict[str, dict]:
    lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["file_name"]: row for row in map(json.loads, lines)}


def _counting(monkeypatch, folder: Path) -> list[tuple[int, int]]:
    """Each generate call as (images in it, machine captions metadata.jsonl held when it began)."""
    calls, real = [], captioning._generate

    def generate(captioner, images, max_new_tokens):
        rows = _rows(folder).values() if (folder / "metadata.jsonl").is_file() else []
        calls.append((len(images), sum(row.get("caption_source") == MACHINE for row in rows)))
        return real(captioner, images, max_new_tokens)

    monkeypatch.setattr(captioning, "_generate", generate)
    return calls


def _caption(folder: Path, captioner, **options):
    template = options.pop("template", None)
    plan = plan_captions(caption_folder_of(str(folder)), options.pop("overwrite_human", False), template)
    return write_captions(plan, captioner, template, **options)


def test_batches_of_n_saved_after_each(tmp_path, captioner, monkeypatch):
    """7 images, batch 3: 3 generate calls of 3, 3, 1 images, and metadata.jsonl already holds each earlier batch."""
    names = _images(tmp_path, 7)
    calls = _counting(monkeypatch, tmp_path)
    result = _caption(tmp_path, captioner, batch_size=3, max_new_tokens=8)
    assert calls == [(3, 0), (3, 3), (1, 6)]
    assert result.written == 7 and not result.skipped
    rows = _rows(tmp_path)
    assert list(rows) == names
    for row in rows.values():
        assert row["text"].strip() and row["caption_source"] == MACHINE and row["caption_model"] == MODEL


def test_human_captions_kept_columns_and_rows_kept(tmp_path, captioner):
    """Non-empty text and .txt sidecars stay, byte for byte; every row and column stays; a control file is no image."""
    _images(tmp_path, 5)
    (tmp_path / "img02.txt").write_text("sidecar caption\n", encoding="utf-8")
    Image.new("L", (64, 64), 255).save(tmp_path / "edge00.png")
    rows = [
        {"file_name": "img00.png", "text": "human caption", "storeys": 3, "control": "edge00.png"},
        {"file_name": "img01.png", "text": "", "material": "brick"},
        {"file_name": "img02.png", "material": "glass"},
        {"file_name": "gone.png", "text": None},
    ]
    original = "".join(json.dumps(row) + "\n" for row in rows)
    (tmp_path / "metadata.jsonl").write_text(original, encoding="utf-8")
    result = _caption(tmp_path, captioner, batch_size=2, max_new_tokens=8)
    after = _rows(tmp_path)
    assert list(after) == ["img00.png", "img01.png", "img02.png", "gone.png", "img03.png", "img04.png"]
    assert after["img00.png"] == rows[0]  # human, untouched (its control file was not captioned as an image)
    assert after["img02.png"] == {**rows[2], "text": "sidecar caption"}  # the sidecar's caption, now where training reads it
    assert (tmp_path / "img02.txt").read_text(encoding="utf-8") == "sidecar caption\n"
    assert after["img01.png"]["material"] == "brick" and after["img01.png"]["caption_source"] == MACHINE
    assert after["gone.png"] == rows[3] and [s.name for s in result.skipped] == ["gone.png"]
    assert {after[n]["caption_source"] for n in ("img01.png", "img03.png", "img04.png")} == {MACHINE}
    assert (result.written, result.human) == (3, 2)

    again = plan_captions(tmp_path)  # nothing left: machine captions count as done, human ones as kept
    assert (again.todo, again.human, again.earlier) == ([], 2, 3)
    _caption(tmp_path, captioner, overwrite_human=True, batch_size=4, max_new_tokens=8)
    replaced = _rows(tmp_path)
    assert replaced["img00.png"]["caption_source"] == MACHINE and replaced["img00.png"]["storeys"] == 3
    assert replaced["img03.png"] == after["img03.png"]  # an earlier machine caption is not redone
    assert (tmp_path / "img02.txt").read_text(encoding="utf-8") == "sidecar caption\n"  # sidecar files are never written


def test_sidecar_folder_becomes_metadata(tmp_path, captioner):
    """A kohya folder (images + .txt) gets a metadata.jsonl with every image, sidecar captions as `text`."""
    _images(tmp_path / "sub", 3)
    (tmp_path / "sub" / "img01.txt").write_text("timber house", encoding="utf-8")
    _caption(tmp_path, captioner, batch_size=8, max_new_tokens=8)
    rows = _rows(tmp_path)
    assert list(rows) == ["sub/img00.png", "sub/img01.png", "sub/img02.png"]
    assert rows["sub/img01.png"] == {"file_name": "sub/img01.png", "text": "timber house"}
    assert rows["sub/img00.png"]["caption_source"] == MACHINE


def test_template_fills_fields_around_the_caption(tmp_path, captioner, monkeypatch):
    _images(tmp_path, 2)
    rows = [{"file_name": "img00.png", "material": "brick"}, {"file_name": "img01.png", "material": "stone"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(UserError, match="'img00.png' has no 'storeys' in metadata.jsonl"):
        plan_captions(tmp_path, template="{storeys} storeys, {caption}")
    monkeypatch.setattr(captioning, "_generate", lambda captioner, images, tokens: ["a house"] * len(images))
    _caption(tmp_path, captioner, template="{material} facade, {caption}")
    assert [row["text"] for row in _rows(tmp_path).values()] == ["brick facade, a house", "stone facade, a house"]
    with pytest.raises(UserError, match=r"has no \{caption\}"):
        check_template("{material} facade")
    with pytest.raises(UserError, match="unbalanced braces"):
        check_template("{caption")


def test_unwritable_folder_refused(tmp_path, monkeypatch):
    _images(tmp_path, 1)
    monkeypatch.setattr("archdiff.outputs.writable", lambda folder: False)
    with pytest.raises(UserError, match="is not writable"):
        caption_folder_of(str(tmp_path))


def _cli(cwd: Path, *args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """`archdiff ARGS` in a fresh interpreter (offline, this session's cache), after `prelude` Python."""
    code = f"import sys\n{prelude}\nfrom archdiff.cli import main\nsys.argv = ['archdiff', *{list(args)!r}]\nmain()\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# Kill the process by SIGKILL as its second batch begins: the first batch's metadata.jsonl is on disk, nothing after.
KILL_AT_SECOND_BATCH = """
import os, signal
import archdiff.data.captioning as captioning
real, calls = captioning._generate, []
def generate(*args):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
captioning._generate = generate
"""


def test_resume_after_kill(tmp_path, captioner, monkeypatch):
    """A run killed after its first batch leaves those captions; the next run captions only the rest."""
    folder = tmp_path / "photos"
    names = _images(folder, 5)
    killed = _cli(tmp_path, "data", "caption", str(folder), "--model", MODEL, "--batch-size", "2", prelude=KILL_AT_SECOND_BATCH)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    first = _rows(folder)
    assert [n for n, row in first.items() if row.get("caption_source") == MACHINE] == names[:2]
    calls = _counting(monkeypatch, folder)
    result = _caption(folder, captioner, batch_size=2, max_new_tokens=8)
    assert calls == [(2, 2), (1, 4)] and result.written == 3 and result.earlier == 2
    second = _rows(folder)
    assert all(second[name] == first[name] for name in names[:2])
    assert all(second[name]["caption_source"] == MACHINE for name in names)


def test_training_reads_the_result(tmp_path, captioner, tiny_base):
    """A captioned folder (machine captions and a sidecar one) trains: every image is used, none skipped."""
    from archdiff.config import load_recipe
    from archdiff.run_files import DATA_FILE
    from archdiff.train.run import run

    folder = tmp_path / "photos"
    _images(folder, 4)
    (folder / "img00.txt").write_text("brick facade", encoding="utf-8")
    _caption(folder, captioner, max_new_tokens=8)
    overrides = [
        f"output={tmp_path / 'run'}",
        f"data.sources={json.dumps([{'path': str(folder)}])}",
        "data.holdout=0",
        "train.max_steps=2",
        "train.checkpoint_every=null",
        "validation.prompts=[]",
    ]
    result = run(load_recipe("demo-tiny", overrides))
    assert result.steps_trained == 2
    report = (result.run_dir / DATA_FILE).read_text(encoding="utf-8")
    assert report.startswith(f"data: 4 images from {folder}: 4 train") and "skipped" not in report, report


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["facades"], "bundled set, which is read-only"),
        (["someone/facades"], "Hub datasets are read-only here"),
        (["missing-folder"], "does not exist"),
        (["{folder}", "--template", "{material} facade"], "has no {caption}"),
        (["{folder}", "--model", "{folder}"], "is a folder without config.json"),
        (["{folder}", "--model", "someone/captioner"], "not downloaded and the Hugging Face Hub is not reachable"),
        (["{folder}", "--model", "{tiny_text_encoder}"], "it is a clip_text_model model"),
        (["{folder}", "--model", "tiny-captioner", "--prompt", "what is it?"], "is a blip captioner, which takes no prompt"),
        (["{folder}", "--model", "tiny-vlm-captioner", "--prompt", " "], "--prompt is empty"),
    ],
    ids=[
        "bundled",
        "hub-dataset",
        "missing",
        "template-no-caption",
        "not-a-model",
        "offline-model",
        "not-captioner",
        "blip-prompt",
        "empty-prompt",
    ],  # fmt: skip
)
def test_refusals_one_line_exit_2(tmp_path, tiny_base, args, says):
    folder = tmp_path / "photos"
    _images(folder, 2)
    args = [a.replace("{folder}", str(folder)).replace("{tiny_text_encoder}", f"{tiny_base}/text_encoder") for a in args]
    result = _cli(tmp_path, "data", "caption", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("archdiff: error:"), result.stderr
    assert says in lines[0]
    assert not (folder / "metadata.jsonl").exists()


@pytest.fixture(scope="module")
def vlm_captioner():
    return load_captioner("tiny-vlm-captioner", "Name the facade material.")


def test_instruction_model_is_asked_in_its_chat_format(vlm_captioner):
    """The prompt reaches an instruction model inside its chat template, the image token before it; a model without a
    chat template (Florence-2's task prompts) gets the bare prompt."""
    from types import SimpleNamespace

    assert vlm_captioner.prompt == "Name the facade material."
    asked = captioning._instruction(vlm_captioner.processor, vlm_captioner.prompt)
    assert asked == "USER: <image>\nName the facade material. ASSISTANT:"
    assert captioning._instruction(SimpleNamespace(chat_template=None), "<MORE_DETAILED_CAPTION>") == "<MORE_DETAILED_CAPTION>"
    assert load_captioner("tiny-vlm-captioner").prompt == captioning.DEFAULT_PROMPT


def test_instruction_model_batches_caption_as_one_by_one(vlm_captioner):
    """Prompts are padded on the left and the echoed prompt is cut off: a batch of mixed sizes gives each image the
    caption it gets alone, and no caption repeats the question."""
    images = [Image.new("RGB", size, colour) for size, colour in (((120, 90), (200, 100, 50)), ((64, 200), (20, 100, 250)))]
    batched = captioning._generate(vlm_captioner, images, 12)
    alone = [captioning._generate(vlm_captioner, [image], 12)[0] for image in images]
    assert batched == alone and all(batched) and batched[0] != batched[1]
    assert not any("facade" in caption or "USER" in caption for caption in batched)


def test_instruction_model_captions_a_folder_through_the_cli(tmp_path):
    """`--model tiny-vlm-captioner --prompt`: every image captioned and marked, a human caption kept, and a second run
    has nothing left to do."""
    folder = tmp_path / "photos"
    names = _images(folder, 3)
    (folder / "img01.txt").write_text("brick facade", encoding="utf-8")
    args = [
        "data",
        "caption",
        str(folder),
        "--model",
        "tiny-vlm-captioner",
        "--prompt",
        "Name the material.",
        "--batch-size",
        "2",
    ]
    first = _cli(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    rows = _rows(folder)
    assert rows["img01.png"]["text"] == "brick facade" and "caption_source" not in rows["img01.png"]
    for name in (names[0], names[2]):
        assert rows[name]["text"].strip() and rows[name]["caption_model"] == "tiny-vlm-captioner"
    again = _cli(tmp_path, *args)
    assert again.returncode == 0 and "nothing to caption" in again.stdout
    assert _rows(folder) == rows
