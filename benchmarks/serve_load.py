"""`archdiff serve` under load: many clients at once against a small queue, every request answered, memory flat.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py [--lora RUN] [--requests 50] [--clients 10] [--queue 4]

Starts the real server (a subprocess: uvicorn, the tiny base, optional LoRAs), warms it up, then fires `--requests`
generate requests from `--clients` threads (httpx, client timeout = server timeout + a margin). Prints requests/s,
p50/p95 latency of the 200s, the 503s, and the server's RSS before and after. tests/serve/test_serve_cli.py's load
test runs the same functions.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MARGIN = 30.0  # seconds a client waits beyond the server's own limit before calling it a hang


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(args: list[str], folder: Path, ready_within: float = 180.0, env: dict | None = None) -> Server:
    """`archdiff serve ARGS` on a free loopback port, once /health answers; its output goes to folder/server.log.
    `env` adds to (or, with None values, removes from) the environment."""
    import httpx

    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    environment = {
        key: value
        for key, value in {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}.items()
        if value is not None
    }
    command = [sys.executable, "-m", "archdiff", "serve", *args, "--port", str(port), "--folder", str(folder / "serve")]
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=folder, env=environment, stdout=output, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"the server did not answer /health within {ready_within:g} s:\n{log.read_text()}")


@dataclass
class Outcome:
    seconds: float
    statuses: list[tuple[int | str, float]] = field(default_factory=list)  # (status or the client's error, latency)

    def latencies(self, status: int) -> list[float]:
        return [latency for code, latency in self.statuses if code == status]

    def counts(self) -> dict:
        found: dict = {}
        for code, _ in self.statuses:
            found[code] = found.get(code, 0) + 1
        return found


def body_for(index: int, loras: list[str], steps: int) -> dict:
    """Request `index`: a seed of its own, each LoRA (or none) in turn, so adapters switch between requests."""
    choices = [[], *([{"name": name, "scale": 0.8}] for name in loras)]
    return {"prompt": f"brick facade {index}", "seed": index, "steps": steps, "loras": choices[index % len(choices)]}


def fire(url: str, requests: int, clients: int, timeout: float, loras: list[str], steps: int) -> Outcome:
    """`requests` POST /v1/generate from `clients` threads, each with its own connection, as fast as answers come."""
    import httpx

    outcome, lock, counter = Outcome(0.0), threading.Lock(), iter(range(requests))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=timeout) as session:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                started = time.perf_counter()
                try:
                    response = session.post("/v1/generate", json=body_for(index, loras, steps))
                    code: int | str = response.status_code
                    if code == 503 and not (response.headers.get("retry-after", "").isdigit() and "error" in response.json()):
                        code = "503 without Retry-After or JSON error"
                except httpx.HTTPError as error:
                    code = type(error).__name__
                with lock:
                    outcome.statuses.append((code, time.perf_counter() - started))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcome.seconds = time.perf_counter() - started
    return outcome


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1] if len(values) > 1 else values[0]


def main() -> None:
    import tempfile

    import httpx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", action="append", default=[], help="A run folder to serve (repeatable; name = folder name).")
    parser.add_argument("--base", default="tiny-sd15")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=6)
    args = parser.parse_args()

    names = [Path(lora).name for lora in args.lora]
    serve_args = ["--base", args.base, "--queue", str(args.queue), "--timeout", str(args.timeout)]
    serve_args += [item for lora in args.lora for item in ("--lora", lora)]
    with tempfile.TemporaryDirectory(prefix="archdiff-serve-load-") as folder:
        started = time.perf_counter()
        server = start_server(serve_args, Path(folder))
        print(f"server up in {time.perf_counter() - started:.1f} s ({args.base}, LoRAs: {', '.join(names) or 'none'})")
        try:
            fire(server.url, args.warmup, 1, args.timeout + MARGIN, names, args.steps)
            before = server.rss()
            outcome = fire(server.url, args.requests, args.clients, args.timeout + MARGIN, names, args.steps)
            after = server.rss()
            health = httpx.get(f"{server.url}/health", timeout=10).json()
        finally:
            server.stop()
    done = outcome.latencies(200)
    print(f"{args.requests} requests, {args.clients} clients, --queue {args.queue}, {args.steps} steps at 64 px")
    print(f"wall {outcome.seconds:.2f} s: {len(outcome.statuses) / outcome.seconds:.2f} requests/s answered, "
          f"{len(done) / outcome.seconds:.2f} images/s")  # fmt: skip
    print(f"statuses: {outcome.counts()}")
    if done:
        print(f"200 latency: p50 {percentile(done, 0.5):.2f} s, p95 {percentile(done, 0.95):.2f} s, max {max(done):.2f} s")
    print(f"503s: {len(outcome.latencies(503))} (max latency {max(outcome.latencies(503), default=0):.3f} s)")
    print(f"RSS before {before / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB ({(after / before - 1) * 100:+.1f} %)")
    print(f"/health after: {health}")


if __name__ == "__main__":
    main()
