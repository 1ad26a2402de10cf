"""Options shared by several commands, declared once."""

from __future__ import annotations

import typer

BASE = typer.Option(None, "--base", help="Base model: Hub id, local diffusers folder, or tiny-sd15 (offline).")
SET = typer.Option([], "--set", help="Override a recipe field: dotted.key=value (repeatable).")
