#!/usr/bin/env bash
# The GPU check, run as is on a machine with one NVIDIA GPU (H100/H200): bash benchmarks/gpu_check.sh
#
#   0. setup: skipped when .venv already holds the GPU stack; else `launch/setup_env.sh --gpu`
#      (needs PyPI and PyTorch's index; not counted in the check's ~8 minutes). Without network
#      it falls back to a python3 that has a CUDA torch, plus any wheels carried in .whl/.
#   1. the log-prob kernels in bf16: ours (Triton, flash-attn, chunked) beside naive and Liger's
#      fused linear cross-entropy, TFLOP/s of the FLOPs each executes      -> gpu_logprob_throughput.json
#   2. a DPO step in bf16 (benchmarks/dpo_step.py: ours, TRL+Liger)         -> gpu_dpo_step.json
#   3. a DRIFT iteration of SmolLM2 on the fixture with sampler=vllm       -> gpu_drift_iteration.json
#   4. the memory plan of the paper's models on 8x80 GB (pure arithmetic)  -> gpu_memory_plan.json
# Each part has its own timeout (GPU_CHECK_TIMEOUT_<PART>, seconds) and its own log under
# benchmarks/results/gpu_check_logs/; a failed part does not stop the others. The summary
# (benchmarks/results/gpu_check_summary.json) says what ran, how long, and why a part did not.
# GPU_CHECK_DRY_RUN=1 prints the commands instead of running them (the unit test reads them).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
LOGS=$RESULTS/gpu_check_logs
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
RUN_DIR=${GPU_CHECK_RUN_DIR:-/tmp/drift_gpu_check}
SUMMARY_ROWS=()
[ "$DRY_RUN" = 1 ] || mkdir -p "$LOGS"

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*"; }

# ---- 0. setup -------------------------------------------------------------------------------

gpu_python_ready() {  # $1: a python that imports a CUDA torch that sees a GPU
  "$1" -c 'import sys, torch; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)' 2>/dev/null
}

PY=.venv/bin/python
if [ "$DRY_RUN" = 1 ]; then
  say "dry run: commands only"
elif [ -x "$PY" ] && gpu_python_ready "$PY" && "$PY" -c 'import vllm, flash_attn' 2>/dev/null; then
  say "setup: .venv already holds the GPU stack; skipped"
else
  # a machine with no network would spend minutes in pip's retries: look once, quickly
  if python3 -c 'import urllib.request; urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=5)' 2>/dev/null; then
    say "setup: bash launch/setup_env.sh --gpu (timeout ${GPU_CHECK_TIMEOUT_SETUP:-2400} s)"
    timeout "${GPU_CHECK_TIMEOUT_SETUP:-2400}" bash launch/setup_env.sh --gpu >"$LOGS/setup.log" 2>&1
    setup_status=$?
  else
    say "setup: PyPI is not reachable; skipping launch/setup_env.sh --gpu" | tee "$LOGS/setup.log"
    setup_status=1
  fi
  if [ "$setup_status" != 0 ]; then
    say "setup failed (last lines of $LOGS/setup.log below); continuing with what is installed"
    tail -n 5 "$LOGS/setup.log"
    if ! { [ -x "$PY" ] && gpu_python_ready "$PY"; }; then
      PY=$(command -v python3)
    fi
    if [ -d .whl ]; then
      # wheels carried to a machine without network (see the device notes): install them offline
      "$PY" -m pip install -q --no-index --no-deps .whl/*.whl >>"$LOGS/setup.log" 2>&1 || say "installing .whl/ failed"
    fi
    if ! "$PY" -c 'import drift.kernels' 2>/dev/null; then
      "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$LOGS/setup.log" 2>&1 \
        || say "pip install -e . failed: drift is not importable"
    fi
  fi
fi
if [ "$DRY_RUN" != 1 ] && ! gpu_python_ready "$PY"; then
  say "no python with a CUDA torch that sees a GPU ($PY); nothing to check"
  exit 1
fi

# ---- the parts ------------------------------------------------------------------------------

part() {  # part NAME TIMEOUT_SECONDS COMMAND...: run with its own timeout and log; record the outcome
  local name=$1 limit=$2
  shift 2
  echo "+ $*"
  if [ "$DRY_RUN" = 1 ]; then
    return 0
  fi
  say "$name: starting (timeout $limit s)"
  local started=$SECONDS status
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  status=$?
  local seconds=$((SECONDS - started)) outcome=ok
  if [ "$status" = 124 ]; then outcome="timed out after $limit s"; elif [ "$status" != 0 ]; then outcome="failed (exit $status)"; fi
  say "$name: $outcome in $seconds s (log: $LOGS/$name.log)"
  [ "$outcome" = ok ] || tail -n 8 "$LOGS/$name.log"
  SUMMARY_ROWS+=("$name|$outcome|$seconds")
}

part logprob_kernels "${GPU_CHECK_TIMEOUT_KERNELS:-150}" \
  "$PY" benchmarks/logprob_throughput.py --device cuda --dtype bfloat16 --n 8192 --h 5120 --v 152064 \
  --variants naive liger triton flash_attn chunked --repeat 2 --out "$RESULTS/gpu_logprob_throughput.json"

part dpo_step "${GPU_CHECK_TIMEOUT_DPO:-110}" \
  "$PY" benchmarks/dpo_step.py --variants ours trl_liger --pairs 16 --batch 4 --max-length 512 --precision bf16 \
  --max-tokens-per-forward 0 --out "$RESULTS/gpu_dpo_step.json"

# one warm start epoch and one DRIFT iteration; vLLM gets half the GPU (the trainer's process is
# alive beside it while it samples); a fresh run folder each time
[ "$DRY_RUN" = 1 ] || rm -rf "$RUN_DIR/drift_iteration"
part drift_iteration "${GPU_CHECK_TIMEOUT_DRIFT:-190}" \
  "$PY" launch/train.py model=smollm2 data=fixture method=drift method.iterations=1 method.warmstart_epochs=1 \
  sampler=vllm sampler.gpu_memory_utilization=0.5 trainer.precision=bf16 logging.wandb_mode=disabled \
  logging.progress_bar=false "output_dir=$RUN_DIR" run_name=drift_iteration

part memory_plan "${GPU_CHECK_TIMEOUT_PLAN:-20}" \
  "$PY" benchmarks/memory_plan.py model=qwen14b nproc=8 trainer.per_device_batch_size=4 trainer.max_length=2048 \
  trainer.grad_accum_steps=4 model.gradient_checkpointing=true --json "$RESULTS/gpu_memory_plan.json"

if [ "$DRY_RUN" = 1 ]; then
  exit 0
fi

# ---- the summary ----------------------------------------------------------------------------

"$PY" - "$RESULTS" "$RUN_DIR/drift_iteration" "${SUMMARY_ROWS[@]}" <<'PY'
"""gpu_drift_iteration.json from the run's files, then gpu_check_summary.json and a short table."""
import json
import platform
import sys
from pathlib import Path

results, run = Path(sys.argv[1]), Path(sys.argv[2])
parts = [dict(zip(("part", "outcome", "seconds"), row.split("|"))) for row in sys.argv[3:]]


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


stages = {}
for folder in sorted(run.glob("iter_*")):
    train_metrics = jsonl(folder / "train" / "metrics.jsonl")
    report = folder / "sample" / "sampling_report.json"
    stages[folder.name] = dict(
        train_steps=len(train_metrics),
        peak_memory_gb=max((m.get("peak_memory_gb", 0) for m in train_metrics), default=None),
        step_seconds=[m.get("seconds") for m in train_metrics],
        sampling_report=json.loads(report.read_text()) if report.exists() else None,
    )
summary_file = run / "summary.json"
drift = dict(run=str(run), stages=stages, summary=json.loads(summary_file.read_text()) if summary_file.exists() else None)
(results / "gpu_drift_iteration.json").write_text(json.dumps(drift, indent=2) + "\n")

import torch

environment = dict(
    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
)
for package in ("vllm", "flash_attn", "triton", "liger_kernel", "transformers", "trl"):
    try:
        environment[package] = __import__(package).__version__
    except Exception as error:  # reported, not fatal: the summary says what was missing
        environment[package] = f"not importable: {type(error).__name__}"
summary = dict(environment=environment, parts=parts)
(results / "gpu_check_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"\n{'part':<18} {'outcome':<28} seconds")
for row in parts:
    print(f"{row['part']:<18} {row['outcome']:<28} {row['seconds']}")
print(json.dumps(environment))
kernels = results / "gpu_logprob_throughput.json"
if kernels.exists():
    for r in json.loads(kernels.read_text())["results"]:
        if r.get("status") == "ok":
            print(f"  logprob N={r['n']} {r['variant']:<11} {r['seconds_median'] * 1e3:8.1f} ms  {r.get('tflops', 0):6.0f} TFLOP/s executed")
for name, stage in stages.items():
    print(f"  {name}: {stage['train_steps']} steps, peak {stage['peak_memory_gb']} GB")
PY
