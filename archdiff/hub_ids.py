"""One rule for whether a name is a Hugging Face Hub repo id or a local path.

`--base`, `--lora`, data sources and the model card all take either, and each used to decide in its own way.
The rule: a name that exists on disk is a path (a folder called `jane/facades` in the working directory is
that folder, not a repo); any other name is a Hub id only when it is `owner/name` as the Hub itself accepts
it (huggingface_hub's own validator). So `./a/b`, `/a/b`, `~/a`, `a/b/`, `a/b/c`, `..` and the empty name are
paths, even missing ones, and a bare `name` is left to the caller (a bundled set, a manifest, a tiny base).
"""

from __future__ import annotations

from pathlib import Path


def is_repo_id(text: str) -> bool:
    """`owner/name` as the Hub accepts it: letters, digits, `-`, `_` and `.`, no `--` or `..`, 96 characters a part."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if text.count("/") != 1:  # the validator also takes a bare `name`; archdiff never reads one as a repo
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def is_hub_id(name: str) -> bool:
    """The name is a Hub repo id rather than a local path: it is `owner/name` and nothing on disk has that name."""
    return is_repo_id(name) and not Path(name).exists()  # an id never starts with `~`: no expanduser needed
