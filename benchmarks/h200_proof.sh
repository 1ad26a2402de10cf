#!/usr/bin/env bash
# GPU proof run (issue 21): `archdiff bench` at real sizes on random-weight SD 1.5 and SDXL, and a short
# fast-preset training run killed with SIGKILL and resumed. Written for one lent H200 with no network and a
# tight time budget: every step is bounded by `timeout` and by what is left of $BUDGET seconds, and the most
# important figures come first. Results: $OUT/log.txt (everything) and the bench rows as JSON.
#
#   OUT=/tmp/h200 BUDGET=560 bash benchmarks/h200_proof.sh [PHASE ...]
#
# Phases, in this order by default: setup sd15-fast sdxl options train.
# Needs archdiff's dependencies importable (diffusers, transformers, peft, datasets, pydantic, typer,
# xformers, bitsandbytes) and the repository on PYTHONPATH; builds random-sd15 / random-sdxl if missing.
set -u -o pipefail
OUT=${OUT:-$PWD/h200-out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-560}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
export ARCHDIFF_CACHE=${ARCHDIFF_CACHE:-/tmp/archdiff-cache}
PHASES=${*:-setup sd15-fast sdxl options train}
T0=$(date +%s)
exec > >(tee -a "$OUT/log.txt") 2>&1

say() { printf '[%4ds %s] %s\n' $(( $(date +%s) - T0 )) "$(date -u +%H:%M:%S)" "$*"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# bounded LIMIT CMD...: at most LIMIT seconds and never past the budget (less a 5 s margin)
bounded() {
    local limit=$1 rest
    shift
    rest=$(( $(left) - 5 ))
    (( limit > rest )) && limit=$rest
    if (( limit < 20 )); then say "SKIPPED (budget spent): $*"; return 124; fi
    say "RUN (<= ${limit}s): $*"
    timeout -k 5 "$limit" "$@"
    local rc=$?
    say "rc=$rc"
    return $rc
}
want() { [[ " $PHASES " == *" $1 "* ]]; }

# Real sizes, one square shape (no buckets: one compiled graph) and no held-out set (no validation passes).
# (A CPU smoke of this script: SD15_BASE=tiny-sd15 TRAIN_PRESET=balanced EXTRA="--set data.resolution=64".)
SHAPE=(--set data.holdout=0 --set data.buckets.enabled=false ${EXTRA:-})
SD15=(--recipe facade-lora --base "${SD15_BASE:-random-sd15}")       # 512 px, batch 4
SDXL=(--recipe sdxl-facade-lora --base "${SDXL_BASE:-random-sdxl}" --set train.batch_size=1 --set train.gradient_accumulation=1)  # 1024 px, batch 1

# The random-weight bases, initialised on the GPU (seconds instead of minutes of CPU init); on the CPU if that fails.
cat > /tmp/build_random.py <<'EOF'
import sys, time, torch
from archdiff.model.base import resolve_base
if sys.argv[2] == "cuda":
    torch.set_default_device("cuda")
started = time.time()
print(resolve_base(f"random-{sys.argv[1]}"), f"ready in {time.time() - started:.0f} s on {sys.argv[2]}")
EOF
build() { bounded "$2" "$PY" /tmp/build_random.py "$1" cuda || bounded "$2" "$PY" /tmp/build_random.py "$1" cpu; }

if want setup; then
    say "setup"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
    nproc; free -g | head -2; df -h /tmp | tail -1
    bounded 90 "$PY" - <<'EOF'
import importlib, time, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
for name in ["diffusers", "transformers", "peft", "accelerate", "datasets", "pyarrow", "pydantic", "typer",
             "huggingface_hub", "safetensors", "tokenizers", "triton", "xformers", "bitsandbytes", "archdiff"]:
    try:
        module = importlib.import_module(name)
        print(f"{name:16} {getattr(module, '__version__', '?'):12} {module.__file__}")
    except Exception as error:  # noqa: BLE001
        print(f"{name:16} FAILED {type(error).__name__}: {str(error)[:300]}")
try:
    import xformers, xformers.ops
    q = torch.randn(1, 2, 40, device="cuda")
    print("xformers C++ library:", xformers._has_cpp_library, "| fp32 attention (diffusers' self-test):",
          tuple(xformers.ops.memory_efficient_attention(q, q, q).shape))
except Exception as error:  # noqa: BLE001
    print("xformers FAILED", type(error).__name__, str(error)[:300])
try:
    import bitsandbytes as bnb
    p = torch.nn.Parameter(torch.randn(8192, device="cuda"))
    p.grad = torch.randn_like(p)
    bnb.optim.AdamW8bit([p]).step()
    print("bitsandbytes AdamW8bit step on CUDA: ok")
except Exception as error:  # noqa: BLE001
    print("bitsandbytes FAILED", type(error).__name__, str(error)[:300])
# the bf16 ceiling on this card, for MFU against a measured peak (random data, 8192^3)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
for _ in range(5):
    a @ b
torch.cuda.synchronize()
start, n = time.perf_counter(), 30
for _ in range(n):
    a @ b
torch.cuda.synchronize()
print(f"bf16 8192^3 matmul: {2 * 8192**3 * n / (time.perf_counter() - start) / 1e12:.0f} TFLOP/s")
EOF
    say "build random-sd15"
    build sd15 150
    say "build random-sdxl in the background"
    (build sdxl 240 > /tmp/build-sdxl.txt 2>&1; echo "exit $?" >> /tmp/build-sdxl.txt) &
    SDXL_BUILD=$!
fi

if want sd15-fast; then
    say "SD 1.5, 512 px, batch 4: the fast preset (bf16, channels_last, torch.compile, cached latents)"
    bounded 240 "$PY" -m archdiff bench "${SD15[@]}" --steps 50 "${SHAPE[@]}" --matrix preset=fast --json "$OUT/sd15-fast.json"
fi

if want sdxl; then
    if [[ -n ${SDXL_BUILD:-} ]]; then say "waiting for the random-sdxl build"; wait "$SDXL_BUILD"; cat /tmp/build-sdxl.txt; fi
    say "SDXL, 1024 px, batch 1: balanced (fills the latent cache), low, fast"
    bounded 330 "$PY" -m archdiff bench "${SDXL[@]}" --steps 40 "${SHAPE[@]}" \
        --matrix preset=balanced --matrix preset=low --matrix preset=fast --json "$OUT/sdxl.json"
fi

if want options; then
    say "SD 1.5, 512 px, batch 4: each option alone against the recipe (fp16 + grad scaler, sdpa, adamw), and the presets"
    bounded 300 "$PY" -m archdiff bench "${SD15[@]}" --steps 50 "${SHAPE[@]}" \
        --matrix "" --matrix precision=bf16 --matrix attention=xformers --matrix optimizer=adamw8bit \
        --matrix checkpointing=on --matrix channels_last=on --matrix preset=fast,compile=off \
        --matrix preset=balanced --matrix preset=low --json "$OUT/sd15-options.json"
fi

if want train; then
    say "SD 1.5 fast preset: 50 steps uninterrupted, then the same run killed (SIGKILL) after its step-30 checkpoint and resumed"
    # with the held-out images (3): val_loss with fixed noise at step 0 and 50 says whether the loss went down
    TRAIN=("${SD15[@]}" --set data.buckets.enabled=false ${EXTRA:-} --max-steps 50 --overwrite --set "memory.preset=${TRAIN_PRESET:-fast}"
           --set train.checkpoint_every=10 --set train.log_every=10 --set train.learning_rate=1e-3
           --set train.warmup_steps=5 --set "train.trackers=[]" --set "validation.prompts=[]")
    rm -rf runs/h200-full runs/h200-killed
    bounded "${TRAIN_LIMIT:-150}" "$PY" -m archdiff train "${TRAIN[@]}" -o runs/h200-full 2>&1 | tr '\r' '\n' | grep -v '^train: '
    if (( $(left) > 60 )); then
        say "start the run to kill"
        "$PY" -m archdiff train "${TRAIN[@]}" -o runs/h200-killed > /tmp/killed.txt 2>&1 &
        VICTIM=$!
        for _ in $(seq 1 $(( $(left) - 40 ))); do
            [[ -f runs/h200-killed/checkpoints/step-000030/trainer_state.json ]] && break
            kill -0 "$VICTIM" 2> /dev/null || break
            sleep 1
        done
        kill -9 "$VICTIM" 2> /dev/null && say "SIGKILL sent"
        wait "$VICTIM" 2> /dev/null
        tr '\r' '\n' < /tmp/killed.txt | grep -v '^train: ' | tail -5
        ls runs/h200-killed/checkpoints
        bounded "${TRAIN_LIMIT:-120}" "$PY" -m archdiff train --recipe runs/h200-killed/recipe.yaml --resume latest 2>&1 | tr '\r' '\n' | grep -v '^train: '
    fi
    cp runs/h200-full/metrics.jsonl "$OUT/train-full-metrics.jsonl" 2> /dev/null
    cp runs/h200-killed/metrics.jsonl "$OUT/train-resumed-metrics.jsonl" 2> /dev/null
    "$PY" - <<'EOF'
import json
from pathlib import Path
from safetensors.torch import load_file
for run in ("runs/h200-full", "runs/h200-killed"):
    path = Path(run) / "metrics.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        print(run, "loss by step:", [(r["step"], round(r["loss"], 4)) for r in rows if r.get("loss") is not None],
              "val_loss:", [(r["step"], round(r["val_loss"], 4)) for r in rows if r.get("val_loss") is not None],
              "peak MB:", [r["peak_memory_mb"] for r in rows if r.get("peak_memory_mb")])
a, b = (Path(run) / "pytorch_lora_weights.safetensors" for run in ("runs/h200-full", "runs/h200-killed"))
if a.is_file() and b.is_file():
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys(), "different LoRA keys"
    worst = max((x[k].float() - y[k].float()).abs().max().item() for k in x)
    norm = sum((x[k].float() - y[k].float()).pow(2).sum().item() for k in x) ** 0.5
    ref = sum(x[k].float().pow(2).sum().item() for k in x) ** 0.5
    same = all(x[k].equal(y[k]) for k in x)
    print(f"resumed vs uninterrupted LoRA: bit-identical={same}, max |diff|={worst:.3g}, relative L2 diff={norm / ref:.3g}")
else:
    print("resume comparison: missing", [str(p) for p in (a, b) if not p.is_file()])
EOF
fi

say "done; $(left) s of the budget left"
ls -la "$OUT"
