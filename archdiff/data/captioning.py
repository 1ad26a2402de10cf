"""`archdiff data caption`: machine captions for the images of a local folder that have none, in its metadata.jsonl.

The folder's metadata.jsonl keeps every row and column it had (it is created from the images and their .txt sidecars
when the folder has none, a sidecar's text becoming the row's `text`, since training then reads only metadata.jsonl).
A machine caption goes into `text`, with `caption_source: machine` and `caption_model: <the model's name>` beside it.
A human caption (a non-empty `text` not marked machine, or a non-empty sidecar) is kept unless `overwrite_human`.

The file is rewritten (temporary file, then rename) after every batch: a run killed at any moment leaves the old
file or a newer complete one, and the next run skips every image already captioned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archdiff.data.sources import METADATA_FILES, Skipped, bundled_names
from archdiff.errors import UserError, first_line

METADATA_FILE = "metadata.jsonl"
TEXT_COLUMN = "text"
SOURCE_COLUMN, MODEL_COLUMN = "caption_source", "caption_model"
MACHINE = "machine"
CAPTION_FIELD = "caption"  # the template's placeholder for the model's text
DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"
CAPTIONER_WHAT = "captioning model"
DEFAULT_PROMPT = "Describe this architectural image in one sentence: the building type, its materials and its setting."
_MODEL_TYPES = {"blip": "BlipForConditionalGeneration"}  # natively supported, prompt-free image captioners


@dataclass
class CaptionPlan:
    """What metadata.jsonl will hold, and which of its rows to caption."""

    folder: Path
    rows: list[dict[str, Any]]
    todo: list[int]  # indices into rows
    human: int  # human captions kept
    earlier: int  # machine captions of an earlier run, kept
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class CaptionResult:
    metadata: Path
    written: int
    human: int
    earlier: int
    skipped: list[Skipped]


def caption_folder_of(src: str) -> Path:
    """SRC as a local image folder this command may write into; bundled sets and Hub datasets are read-only."""
    from archdiff.hub_ids import is_hub_id
    from archdiff.outputs import writable

    path = Path(src).expanduser()
    if not path.is_dir():
        if src in bundled_names():
            raise UserError(f"'{src}' is a bundled set, which is read-only; copy its folder and caption the copy")
        if path.exists():
            raise UserError(f"SRC '{src}' is a file; give the folder that holds the images")
        what = "is no local folder (Hub datasets are read-only here)" if is_hub_id(src) else "does not exist"
        raise UserError(f"SRC '{src}' {what}; `data caption` writes into a local image folder: download or copy it there first")
    if (path / "metadata.csv").is_file() and not (path / METADATA_FILE).is_file():
        raise UserError(f"'{src}' keeps its captions in metadata.csv; convert it to metadata.jsonl first")
    if any(path.glob("*.parquet")) or (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        raise UserError(f"'{src}' is a saved or Hub-style dataset, not an image folder; `data caption` captions image folders")
    nested = next((p.parent for name in METADATA_FILES for p in path.glob(f"*/{name}") if not (path / name).is_file()), None)
    if nested is not None:
        raise UserError(f"'{src}' keeps its metadata in '{nested.name}/'; give that folder as SRC")
    if not writable(path):
        raise UserError(f"SRC '{src}' is not writable (no write permission); copy the folder somewhere writable and caption that")
    return path


def check_template(template: str | None) -> None:
    """A template names plain fields, one of them {caption} (without it the model's text would be thrown away)."""
    if template is None:
        return
    from archdiff.data.captions import template_fields

    try:
        names = template_fields(template)
    except ValueError as error:
        raise UserError(f"--template: {error}") from None
    if CAPTION_FIELD not in names:
        raise UserError(
            f"--template {template!r} has no {{{CAPTION_FIELD}}} for the model's text; e.g. '{{material}} facade, {{caption}}'"
        )


def _sidecar_text(image: Path) -> str | None:
    """A same-stem .txt caption's text, or None; undecodable bytes are a UserError (fix the file rather than lose it)."""
    sidecar = image.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    try:
        return sidecar.read_bytes().decode("utf-8").strip() or None
    except UnicodeDecodeError as error:
        raise UserError(f"caption {sidecar} is not valid UTF-8 ({error.reason} at byte {error.start}); fix it") from None


def _has_text(value: Any) -> bool:
    return value is not None and bool(str(value).strip()) and value != []


def _existing_rows(folder: Path) -> list[dict[str, Any]]:
    """metadata.jsonl's rows as they are, then a new row for every image no row names (in any column: a control or
    mask file is not a training image)."""
    from archdiff.data.sources import image_files, metadata_rows

    metadata = folder / METADATA_FILE
    rows = [row for _, row in metadata_rows(metadata)] if metadata.is_file() else []
    named = {str(value) for row in rows for value in row.values() if isinstance(value, str)}
    images, _ = image_files(folder, "train")
    for image in images:
        name = image.relative_to(folder).as_posix()
        if name not in named:
            rows.append({"file_name": name})
    return rows


def plan_captions(folder: Path, overwrite_human: bool = False, template: str | None = None) -> CaptionPlan:
    """Which rows need a caption; a template's other fields are checked on them now, before any model loads."""
    from archdiff.data.captions import MissingField, render_template

    rows, todo, human, earlier, skipped = _existing_rows(folder), [], 0, 0, []
    root = folder.resolve()
    for index, row in enumerate(rows):
        name = str(row["file_name"])
        path = folder / name
        if not path.resolve().is_relative_to(root) or not path.is_file():
            skipped.append(Skipped(name, "listed in metadata.jsonl but no such file in the folder"))
            continue
        text = row.get(TEXT_COLUMN)
        if _has_text(text) and row.get(SOURCE_COLUMN) == MACHINE:
            earlier += 1
            continue
        if not _has_text(text) and (sidecar := _sidecar_text(path)):
            row[TEXT_COLUMN] = text = sidecar
        if _has_text(text) and not overwrite_human:
            human += 1
            continue
        if template:
            try:
                render_template(template, {**row, CAPTION_FIELD: "x"})
            except MissingField as missing:
                raise UserError(
                    f"--template: '{name}' has no '{missing.args[0]}' in metadata.jsonl; fill it in or drop it from the template"
                ) from None
        todo.append(index)
    return CaptionPlan(folder, rows, todo, human, earlier, skipped)


@dataclass(frozen=True)
class Captioner:
    name: str
    model: Any
    processor: Any
    device: str
    prompt: str | None  # what an instruction model is asked; None for a prompt-free captioner (BLIP)


def load_captioner(name: str, prompt: str | None = None) -> Captioner:
    """A natively supported captioning model (Hub id, folder, tiny-captioner or tiny-vlm-captioner), or a one-line UserError.

    BLIP captions an image as it is; any other model transformers runs as image-text-to-text (LLaVA, Florence-2,
    Qwen-VL, SmolVLM, ...) is asked `prompt` (DEFAULT_PROMPT when None), through its chat template when it has one.
    """
    from archdiff.data.tiny_captioner import tiny_captioner_source
    from archdiff.eval.features import check_model_source

    if prompt is not None and not prompt.strip():
        raise UserError("--prompt is empty: ask the model something, or leave --prompt out for the default question")
    source = tiny_captioner_source(name)
    check_model_source(source, CAPTIONER_WHAT)
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    from transformers.utils import logging as transformers_logging

    device = "cuda" if torch.cuda.is_available() else "cpu"
    transformers_logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(source)
        instructed = config.model_type not in _MODEL_TYPES and config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        if not instructed and config.model_type not in _MODEL_TYPES:
            raise ValueError(
                f"it is a {config.model_type} model; data caption runs BLIP captioners (e.g. {DEFAULT_MODEL}) "
                "and the image-text-to-text models transformers supports natively"
            )
        if prompt is not None and not instructed:
            raise UserError(f"--prompt: '{name}' is a {config.model_type} captioner, which takes no prompt; drop --prompt")
        model_class = (
            transformers.AutoModelForImageTextToText if instructed else getattr(transformers, _MODEL_TYPES[config.model_type])
        )
        model = model_class.from_pretrained(source, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
        processor = transformers.AutoProcessor.from_pretrained(source, backend="pil")
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - bad folder, failed download, wrong kind: the same fix for the user
        raise UserError(f"{CAPTIONER_WHAT} '{name}' could not be loaded ({first_line(error)})") from None
    finally:
        transformers_logging.enable_progress_bar()
    prompt = (prompt or DEFAULT_PROMPT) if instructed else None
    tokenizer = getattr(processor, "tokenizer", None)
    if prompt is not None and tokenizer is not None and not getattr(config.get_text_config(), "is_encoder_decoder", False):
        tokenizer.padding_side = "left"  # a batch of prompts must end where generation starts
    return Captioner(name, model.eval().to(device), processor, device, prompt)


def _instruction(processor, prompt: str) -> str:
    """The model's own chat format around one image and the prompt; the bare prompt for task-prompt models (Florence-2)."""
    if not getattr(processor, "chat_template", None):
        return prompt
    message = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
    return processor.apply_chat_template([message], add_generation_prompt=True)


def _generate(captioner: Captioner, images: list, max_new_tokens: int) -> list[str]:
    import torch

    processor = captioner.processor
    with torch.inference_mode():
        if captioner.prompt is None:
            inputs = processor(images=images, return_tensors="pt")
        else:
            texts = [_instruction(processor, captioner.prompt)] * len(images)
            inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
        inputs = inputs.to(captioner.device)
        tokens = captioner.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    asked = inputs.get("input_ids") if captioner.prompt is not None else None
    if asked is not None and tokens.shape[1] > asked.shape[1] and torch.equal(tokens[:, : asked.shape[1]], asked):
        tokens = tokens[:, asked.shape[1] :]  # decoder-only models return the prompt before the answer
    return [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]


def _write_rows(metadata: Path, rows: list[dict[str, Any]]) -> None:
    from archdiff.run_files import write_text_atomic

    write_text_atomic(metadata, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def _batches(plan: CaptionPlan, batch_size: int, skipped: list[Skipped]):
    """(row indices, RGB images) of at most `batch_size` readable images; unreadable ones go to `skipped`."""
    from archdiff.config.schema import DataConfig
    from archdiff.data.images import UnreadableImage, open_image

    max_pixels = DataConfig.model_fields["max_pixels"].default
    indices, images = [], []
    for index in plan.todo:
        name = str(plan.rows[index]["file_name"])
        try:
            images.append(open_image(plan.folder / name, max_pixels))
        except (UnreadableImage, OSError) as error:
            skipped.append(Skipped(name, str(error)))
            continue
        indices.append(index)
        if len(images) == batch_size:
            yield indices, images
            indices, images = [], []
    if images:
        yield indices, images


def write_captions(
    plan: CaptionPlan, captioner: Captioner, template: str | None = None, batch_size: int = 8, max_new_tokens: int = 40
) -> CaptionResult:
    """Caption the plan's rows batch by batch, rewriting metadata.jsonl after each (see the module docstring)."""
    from tqdm.auto import tqdm

    from archdiff.data.captions import render_template

    metadata, skipped, written = plan.folder / METADATA_FILE, list(plan.skipped), 0
    if not metadata.is_file():
        _write_rows(metadata, plan.rows)  # the sidecar captions are in it from the start, whatever happens next
    with tqdm(total=len(plan.todo), desc="captions", unit="img") as bar:
        for indices, images in _batches(plan, batch_size, skipped):
            for index, text in zip(indices, _generate(captioner, images, max_new_tokens), strict=True):
                row = plan.rows[index]
                if not text:
                    skipped.append(Skipped(str(row["file_name"]), "the model wrote no text"))
                    continue
                row[TEXT_COLUMN] = render_template(template, {**row, CAPTION_FIELD: text}) if template else text
                row[SOURCE_COLUMN], row[MODEL_COLUMN] = MACHINE, captioner.name
                written += 1
            _write_rows(metadata, plan.rows)
            bar.update(len(indices))
    return CaptionResult(metadata, written, plan.human, plan.earlier, skipped)
