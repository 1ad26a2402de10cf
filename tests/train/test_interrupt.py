"""Ctrl-C during training keeps the adapter trained so far and exits 130 with a one-line note."""

import signal
import subprocess
import sys
import time

import pytest
from safetensors import safe_open

from archdiff.run_files import MetricsLog

pytestmark = pytest.mark.slow


def test_sigint_saves_the_lora_so_far(tmp_path, tiny_base):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "archdiff", "train", "-r", "demo-tiny", "-o", str(run_dir), "--max-steps", "100000"]
    command += ["--set", "train.log_every=1", "--set", "validation.prompts=[]"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and len(MetricsLog.read(metrics)) >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted at step" in stderr and "Traceback" not in stderr
    with safe_open(run_dir / "pytorch_lora_weights.safetensors", "pt") as weights:
        assert len(list(weights.keys())) > 0
