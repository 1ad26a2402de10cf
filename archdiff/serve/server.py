"""Starting `archdiff serve`: every input checked (address, token, port free, LoRAs, base) before the models load,
then uvicorn on the app until Ctrl-C."""

from __future__ import annotations

import socket
from pathlib import Path

from archdiff.errors import UserError
from archdiff.serve.settings import ServeConfig, check_config


def _port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); pass another --port or --host") from None


def start(base: str | None, loras: list[str], controlnets: list[str], *, folder: Path, **address) -> None:
    import uvicorn

    from archdiff.serve.app import create_app
    from archdiff.serve.engine import Engine
    from archdiff.serve.feedback import FeedbackStore

    config = ServeConfig(folder=folder, **address)
    check_config(config)
    _port_free(config.host, config.port)
    engine = Engine(base, loras, controlnets, config.limits)  # every --lora and --controlnet checked, then loaded
    store = FeedbackStore(folder)
    shown = ", ".join(engine.loras) or "none"
    print(f"archdiff serve: {engine.base.name} with LoRAs: {shown}; feedback in {folder}")
    print(f"studio: http://{config.host}:{config.port}/   API docs: http://{config.host}:{config.port}/docs")
    try:
        uvicorn.run(create_app(engine, store, config), host=config.host, port=config.port, log_level="warning")
    finally:
        store.close()
