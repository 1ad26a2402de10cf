"""What `archdiff serve` is started with: the named LoRAs and ControlNets, the address, and the request limits."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from archdiff.errors import UserError

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
LOOPBACK_NAMES = ("localhost",)
TOKEN_ENV = "ARCHDIFF_API_TOKEN"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond is a 4xx naming the limit, never a slow or huge job."""

    prompt_chars: int = 1000
    images: int = 4
    steps: int = 100
    guidance: float = 30.0
    pixels: int = 1024 * 1024  # per drawn image (SDXL's 1024x1024)
    side: int = 2048
    upload_bytes: int = 16 * 1024 * 1024  # a whole request body (base64 images included)
    upload_pixels: int = 4096 * 4096  # an uploaded image's decoded size (decompression bombs)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    queue: int = 4  # requests that may wait while one runs
    timeout: float = 120.0  # seconds from arrival to answer, waiting included
    folder: Path = Path("serve")  # feedback.sqlite lives here
    limits: Limits = field(default_factory=Limits)


def named(text: str, option: str) -> tuple[str, str]:
    """`WHERE[:NAME]` as (where, name): the name is what clients address it by (default: the run folder's or file's
    name); a request can only name what the server was started with, never a path."""
    head, sep, tail = text.rpartition(":")
    if sep and head and NAME_PATTERN.fullmatch(tail) and not Path(text).exists():
        return head, tail
    where = text.rstrip("/")
    name = Path(where).stem if where.endswith(".safetensors") else Path(where).name
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"{option} '{text}': cannot make a name of '{name}'; add one: {option} {text}:my-name")
    return where, name


def unique_names(names: list[str], option: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise UserError(f"{option}: two of them are named '{name}'; name them apart with WHERE:NAME")
        seen.add(name)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_config(config: ServeConfig) -> None:
    """The address, token and limits, before any model loads: a public address needs a token."""
    if not is_loopback(config.host) and not config.token:
        raise UserError(
            f"--host {config.host} lets other machines in: pass --token TOKEN (or set {TOKEN_ENV}) so every request must "
            "carry it, or keep the default --host 127.0.0.1"
        )
    if config.token is not None and len(config.token) < 8:
        raise UserError("--token must be at least 8 characters (a guessable token protects nothing)")
    if not 0 < config.port < 65536:
        raise UserError(f"--port must be between 1 and 65535 (got {config.port})")
    if config.queue < 1:
        raise UserError(f"--queue must be at least 1 (got {config.queue})")
    if config.folder.exists() and not config.folder.is_dir():
        raise UserError(f"--folder '{config.folder}' is a file; the feedback database needs a folder")
    if not config.timeout > 0:
        raise UserError(f"--timeout must be a positive number of seconds (got {config.timeout})")
