"""`train.trackers: [wandb]` with WANDB_MODE=offline: a finished local wandb run holding the loss, learning-rate
and val_loss history that metrics.jsonl holds, and the progress grids."""

import json
import struct

import pytest

from archdiff.config import load_recipe
from archdiff.run_files import MetricsLog
from archdiff.train.run import run

pytestmark = pytest.mark.slow

BLOCK, HEADER = 32768, 7  # a .wandb file is a LevelDB-style log: 32 KiB blocks of records with 7-byte headers
FULL, LAST = 1, 4


def wandb_records(path):
    """The protobuf records of an offline run's `run-ID.wandb` file, in order (wandb has no public reader)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "a wandb datastore"
    offset, pending = HEADER, b""
    while offset + HEADER <= len(data):
        left = BLOCK - offset % BLOCK
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if left < HEADER or (kind == 0 and length == 0):  # padding at a block's end
            offset += left
            continue
        pending += data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_writes_a_finished_run_with_the_logged_history(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # archdiff puts it into the run folder, not ./wandb
    monkeypatch.chdir(tmp_path)
    overrides = [f"output={tmp_path / 'run'}", "train.trackers=[wandb]", "train.max_steps=6", "train.log_every=1"]
    overrides += ["train.val_every=3", "train.checkpoint_every=null", "validation.every=3", "validation.seeds=[0]"]
    overrides += ["validation.steps=2"]
    result = run(load_recipe("demo-tiny", overrides))

    files = list((result.run_dir / "logs").rglob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    records = list(wandb_records(files[0]))
    kinds = [record.WhichOneof("record_type") for record in records]
    assert kinds[:1] == ["header"] and kinds[-1:] == ["exit"], f"finished and flushed, not abandoned: {kinds[-3:]}"
    assert records[-1].exit.exit_code == 0
    assert next(r.run for r in records if r.HasField("run")).project == "demo-tiny", "one wandb project per recipe"
    config = {item.key: json.loads(item.value_json) for r in records if r.HasField("config") for item in r.config.update}
    assert (config.get("train.max_steps"), config.get("base")) == (6, "tiny-sd15"), "the recipe as the run's hyperparameters"
    history = {}
    for record in records:
        if record.HasField("history"):
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[items["_step"]] = items

    rows = {row["step"]: row for row in MetricsLog.read(result.run_dir / "metrics.jsonl")}
    assert sorted(history) == [0, 1, 2, 3, 4, 5, 6], "every logged step, and the untrained model's val_loss"
    for step, logged in history.items():
        if step:
            assert (logged["loss"], logged["lr"]) == (rows[step]["loss"], rows[step]["lr"]), f"step {step}"
        assert logged.get("val_loss") == rows[step]["val_loss"], f"step {step}"
    assert [step for step in history if "val_loss" in history[step]] == [0, 3, 6]
    grids = {step: logged["samples/filenames"] for step, logged in history.items() if "samples/filenames" in logged}
    assert sorted(grids) == [3, 6], "a progress grid at each validation step"
    for names in grids.values():
        assert all((files[0].parent / "files" / name).is_file() for name in names)
