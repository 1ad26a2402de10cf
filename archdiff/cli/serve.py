"""`archdiff serve`: the base with the studio's LoRAs and ControlNets as an HTTP API and a web page;
`archdiff serve export-feedback`: the results rated good, as training data."""

from __future__ import annotations

from pathlib import Path

import typer

from archdiff.cli import options

app = typer.Typer(help="Serve LoRAs over HTTP and in a web studio.", no_args_is_help=False)
FOLDER = typer.Option(Path("serve"), "--folder", help="Where the feedback database lives (created if missing).")


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    lora: list[str] = typer.Option([], "--lora", help="A LoRA to serve: run folder, .safetensors or Hub id, as WHERE[:NAME]."),
    controlnet: list[str] = typer.Option([], "--controlnet", help="A ControlNet to serve: run folder, folder or Hub id[:NAME]."),
    base: str = options.BASE,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; any but loopback needs --token."),
    port: int = typer.Option(7860, "--port"),
    token: str = typer.Option(None, "--token", envvar="ARCHDIFF_API_TOKEN", help="Require 'Authorization: Bearer TOKEN'."),
    queue: int = typer.Option(4, "--queue", help="Requests that may wait while one draws; more get 503."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds a request may take, waiting included (then 504)."),
    folder: Path = FOLDER,
) -> None:
    """Keep one pipeline in memory with every --lora (switched per request) and serve it: GET / for the studio,
    /docs for the API."""
    if ctx.invoked_subcommand is not None:
        return
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.serve.server import start

    start(base, lora, controlnet, host=host, port=port, token=token, queue=queue, timeout=timeout, folder=folder)


@app.command("export-feedback")
def export_feedback(
    out: Path = typer.Argument(..., help="Folder to write: the good results' PNGs and metadata.jsonl."),
    folder: Path = FOLDER,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder at OUT."),
) -> None:
    """Write the results rated good as training data.

    An image folder with metadata.jsonl that `archdiff train --data OUT` trains on.
    """
    from archdiff.serve.feedback import export_good

    count = export_good(folder, out, overwrite)
    typer.echo(f"exported {count} good results to {out}; train on them with: archdiff train --recipe RECIPE --data {out}")
