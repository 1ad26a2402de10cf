"""`archdiff serve` from the command line: what it refuses before any model loads (one line, exit 2, nothing written),
and, marked slow, the real server under load (benchmarks/serve_load.py's functions)."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from hostile import run_archdiff, user_error

REPO = Path(__file__).resolve().parents[2]
QUICK = 20.0  # seconds: the CLI's imports, no model (loading tiny-sd15 and its LoRAs takes longer on this machine)


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """`serve(*args)` runs `archdiff serve ARGS` in tmp_path/work with an empty cache; returns (result, seconds)."""
    monkeypatch.delenv("ARCHDIFF_API_TOKEN", raising=False)
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str, env: dict | None = None):
        if env:
            for key, value in env.items():
                monkeypatch.setenv(key, value)
        started = time.perf_counter()
        result = run_archdiff(work, tmp_path / "cache", "serve", *args, timeout=120)
        return result, time.perf_counter() - started

    run.work = work
    return run


def refused_quickly(serve, *args: str, env: dict | None = None) -> str:
    result, seconds = serve(*args, env=env)
    line = user_error(result)
    assert seconds < QUICK, f"took {seconds:.1f} s: a model was loaded before the refusal?"
    assert not (serve.work / "serve").exists(), "a refused start wrote the feedback folder"
    return line


def test_public_host_without_token_is_refused(serve):
    line = refused_quickly(serve, "--host", "0.0.0.0", "--base", "tiny-sd15")
    assert "--host 0.0.0.0" in line and "--token" in line


def test_short_token_is_refused_from_the_option_and_the_environment(serve):
    assert "at least 8" in refused_quickly(serve, "--host", "0.0.0.0", "--token", "1234567", "--base", "tiny-sd15")
    line = refused_quickly(serve, "--base", "tiny-sd15", env={"ARCHDIFF_API_TOKEN": "short"})
    assert "at least 8" in line and "short" not in line.replace("at least", "")  # the token itself is never echoed


def test_port_in_use_is_refused(serve):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused_quickly(serve, "--base", "tiny-sd15", "--port", str(port))
    assert f"127.0.0.1:{port}" in line and "--port" in line


@pytest.mark.parametrize("args", [["--port", "0"], ["--port", "70000"], ["--queue", "0"], ["--timeout", "0"]])
def test_bad_limits_are_refused(serve, args):
    assert args[0] in refused_quickly(serve, "--base", "tiny-sd15", *args)


def test_no_base_and_no_run_is_refused(serve):
    assert "--base" in user_error(serve()[0])


def test_missing_lora_path_is_refused_writing_nothing(serve):
    line = refused_quickly(serve, "--lora", "./no-such-run")
    assert "no-such-run" in line


def test_missing_lora_path_is_refused(serve):
    result, seconds = serve("--lora", "./no-such-run", "--base", "tiny-sd15")
    assert "no-such-run" in user_error(result) and seconds < QUICK


def test_two_loras_with_one_name_are_refused(serve, lora_runs):
    result, seconds = serve("--lora", f"{lora_runs['facade']}:same", "--lora", f"{lora_runs['timber']}:same")
    assert "named 'same'" in user_error(result) and seconds < QUICK
    result, _ = serve("--lora", str(lora_runs["facade"]), "--lora", f"{lora_runs['timber']}:facade")
    assert "named 'facade'" in user_error(result)


def test_export_feedback_errors_are_one_line(serve, tmp_path):
    from archdiff.serve.feedback import FeedbackStore

    result, _ = serve("export-feedback", "out", "--folder", "nowhere")
    assert "nowhere" in user_error(result)
    with FeedbackStore(serve.work / "store"):
        pass  # an empty store: nothing rated good
    result, _ = serve("export-feedback", "out", "--folder", "store")
    assert "no result rated good" in user_error(result)
    (serve.work / "busy").mkdir()
    (serve.work / "busy" / "notes.txt").write_text("mine")
    result, _ = serve("export-feedback", "busy", "--folder", "store")
    assert "--overwrite" in user_error(result)
    result, _ = serve("export-feedback", "busy", "--folder", "store", "--overwrite")
    assert "not a folder export-feedback wrote" in user_error(result)
    assert (serve.work / "busy" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- must-hold 3: the real server under load


def load_tools():
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(lora_runs, tmp_path_factory):
    """The real server (a subprocess) with both LoRAs, --queue 4 --timeout 60, for the slow tests below, in order."""
    load = load_tools()
    args = ["--lora", str(lora_runs["facade"]), "--lora", str(lora_runs["timber"]), "--queue", "4", "--timeout", "60"]
    started = load.start_server(args, tmp_path_factory.mktemp("server"), env={"ARCHDIFF_API_TOKEN": None})
    yield started
    started.stop()


@pytest.mark.slow
def test_fifty_requests_from_ten_clients_all_answered_and_memory_flat(server):
    import httpx

    from archdiff.serve.feedback import FeedbackStore

    load, timeout = load_tools(), 60.0
    load.fire(server.url, 6, 1, timeout + load.MARGIN, ["facade", "timber"], 2)  # warm-up: every adapter drawn once
    before = server.rss()
    outcome = load.fire(server.url, 50, 10, timeout + load.MARGIN, ["facade", "timber"], 2)
    after = server.rss()
    health = httpx.get(f"{server.url}/health", timeout=10)
    counts = outcome.counts()
    assert set(counts) <= {200, 503} and sum(counts.values()) == 50, counts
    assert counts.get(200, 0) >= 5, counts  # at least the first request and the four that fitted in the queue
    assert max(latency for _, latency in outcome.statuses) < timeout
    assert health.status_code == 200 and health.json()["queue"] == {"waiting": 0, "running": False, "capacity": 4}
    assert abs(after / before - 1) < 0.10, f"RSS {before / 2**20:.0f} MiB before, {after / 2**20:.0f} MiB after"
    with FeedbackStore(server.log.parent / "serve") as store:
        assert store.counts()["results"] == 6 + counts[200]  # every image answered is stored, no other


@pytest.mark.slow
def test_clients_that_leave_free_their_places(server):
    import httpx

    def leave():
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{server.url}/v1/generate", json={"prompt": "a", "steps": 50, "num_images": 2}, timeout=0.5)

    leavers = [threading.Thread(target=leave) for _ in range(5)]  # one draws, four wait: a full queue
    for thread in leavers:
        thread.start()
    for thread in leavers:
        thread.join()
    deadline, queue = time.monotonic() + 5, None
    while time.monotonic() < deadline:
        queue = httpx.get(f"{server.url}/health", timeout=5).json()["queue"]
        if queue == {"waiting": 0, "running": False, "capacity": 4}:
            break
        time.sleep(0.1)
    assert queue == {"waiting": 0, "running": False, "capacity": 4}
    answer = httpx.post(f"{server.url}/v1/generate", json={"prompt": "a", "steps": 2}, timeout=60)
    assert answer.status_code == 200, answer.text
