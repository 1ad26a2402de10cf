"""File digests are computed once per file version: start-up on a real base does not re-read gigabytes."""

import os

from archdiff.file_digests import FileDigests


def test_an_unchanged_file_is_not_read_again_and_a_changed_one_is(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    store = FileDigests(tmp_path / "digests.json")
    first = store.of(weights)
    store.save()

    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)  # same size; put the old mtime back: the stamp says "unchanged"
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reopened = FileDigests(tmp_path / "digests.json")
    assert reopened.of(weights) == first, "the stored digest was used, the file was not read"

    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert reopened.of(weights) != first, "a new modification time means the file is hashed again"


def test_a_damaged_store_is_rebuilt_and_gone_files_are_dropped(tmp_path):
    (tmp_path / "digests.json").write_text("{not json")
    kept, gone = tmp_path / "kept.bin", tmp_path / "gone.bin"
    kept.write_bytes(b"1")
    gone.write_bytes(b"2")
    store = FileDigests(tmp_path / "digests.json")
    store.of(kept), store.of(gone)
    gone.unlink()
    store.save()
    assert [stamp.split("|")[0] for stamp in FileDigests(tmp_path / "digests.json").known] == [str(kept.resolve())]


def test_a_components_fingerprint_is_stable_and_follows_dtype(tiny_base):
    import torch

    from archdiff.model.base import load_components, resolve_base

    components = load_components(resolve_base("tiny-sd15"))
    components.place("cpu", torch.float32)
    first = components.fingerprint("vae")
    assert components.fingerprint("vae") == first
    components.place("cpu", torch.bfloat16)
    assert components.fingerprint("vae") != first
