"""Seeded generator for the three small image sets bundled in ``datasets/``.

The bundled sets let training, evaluation and the tests run offline with nothing
to download. Every image is drawn from a seed, and its caption and metadata
columns are built from the same drawing parameters, so the text always matches
the pixels; ``facade-sketches`` pairs each facade with its line drawing for ControlNet.
Only PIL and the stdlib are used, so this never pulls in torch.
It is a tool for regenerating ``datasets/``, not code a run imports.

Regenerate with ``python -m archdiff.data.synth datasets`` (or ``make datasets``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from archdiff.data.synth.facade_pairs import generate_facade_pairs
from archdiff.data.synth.facades import generate_facades
from archdiff.data.synth.plans import generate_plans


def generate_all(root: Path) -> None:
    """Regenerate the bundled sets under ``root`` (``root/facades``, ``root/facade-sketches``, ``root/plans``)."""
    root = Path(root)
    generate_facades(root / "facades")
    generate_facade_pairs(root / "facade-sketches")
    generate_plans(root / "plans")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the bundled synthetic datasets.")
    parser.add_argument("root", nargs="?", default="datasets", help="output root (default: datasets)")
    generate_all(Path(parser.parse_args(argv).root))
