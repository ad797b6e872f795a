#!/usr/bin/env bash
# The GPU check: figures from a machine with one NVIDIA GPU on the first run, in at most 7 minutes,
# also on a node without network that has only a CUDA torch, triton, transformers, accelerate,
# safetensors, numpy and pyarrow, given the offline bundle (python launch/offline_bundle.py):
#
#   GPU_CHECK_BUNDLE=<bundle> bash benchmarks/gpu_check.sh   # a node without network: the bundle first
#   bash benchmarks/gpu_check.sh                             # a machine that has the packages (setup_env.sh --gpu)
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh         # the parts, their timeouts, the output folder
#
# The parts, each under its own timeout (GPU_CHECK_TIMEOUT_<PART> seconds); a failed part does not stop
# the others, and the timeouts sum to 395 s (with 3 s each to stop: under 7 minutes):
#   setup            with a bundle: bash launch/setup_env.sh --offline <bundle> (no index, no network probe)
#   gpu              does the python import a CUDA torch that sees a GPU (else the GPU parts are skipped)
#   logprob_kernels  the log-prob kernels in bf16: ours (Triton, chunked, flash-attn when importable)
#                    beside naive and Liger's fused linear cross-entropy, inputs drawn on the GPU,
#                    TFLOP/s of the FLOPs each executes (benchmarks/logprob_throughput.py)
#   dpo_step         a bf16 DPO step, ours and TRL+Liger (benchmarks/dpo_step.py)
#   drift_iteration  launch/train.py: a warm-start epoch and one DRIFT iteration on CUDA, sampler=auto
#                    (vLLM when importable, else the HF sampler; the run says which)
#   memory_plan      the paper's qwen14b on 8x80 GB (benchmarks/memory_plan.py)
#   report           the table, summary and log archive (benchmarks/gpu_check_report.py)
# Parts 2 and 3 run SmolLM2-135M with seeded random weights built from its config and tokenizer
# (model source random:<shape>: the bundle's models/smollm2-135m-shape, else the embedded model's
# own; GPU_CHECK_MODEL overrides): the same shapes and FLOPs, losses and samples meaningless, and
# every figure from it says so. drift runs from this source tree (PYTHONPATH), never installed.
#
# Everything lands in one folder, GPU_CHECK_OUT (default benchmarks/results/gpu_check): logprob_kernels.json,
# dpo_step.json, drift_iteration.json, memory_plan.json, summary.json, summary.txt, logs.tar.gz.
# Scratch (logs, the DRIFT run): GPU_CHECK_WORK (default /tmp/drift_gpu_check), emptied first.
# The python: GPU_CHECK_PYTHON, else .venv/bin/python (what setup_env.sh makes), else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu_check}
WORK=${GPU_CHECK_WORK:-/tmp/drift_gpu_check}
BUNDLE=${GPU_CHECK_BUNDLE:-}
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

declare -A TIMEOUT=(
  [setup]=${GPU_CHECK_TIMEOUT_SETUP:-30}
  [gpu]=${GPU_CHECK_TIMEOUT_GPU:-15}
  [logprob_kernels]=${GPU_CHECK_TIMEOUT_LOGPROB_KERNELS:-110}
  [dpo_step]=${GPU_CHECK_TIMEOUT_DPO_STEP:-90}
  [drift_iteration]=${GPU_CHECK_TIMEOUT_DRIFT_ITERATION:-130}
  [memory_plan]=${GPU_CHECK_TIMEOUT_MEMORY_PLAN:-10}
  [report]=${GPU_CHECK_TIMEOUT_REPORT:-10}
)
PARTS=(setup gpu logprob_kernels dpo_step drift_iteration memory_plan report)
STOP_SECONDS=3  # after its timeout a part gets SIGTERM, then SIGKILL this much later

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
  PY=$GPU_CHECK_PYTHON
elif [ -x .venv/bin/python ] || [ -n "$BUNDLE" ]; then
  PY=.venv/bin/python  # with a bundle, setup makes it (over the node's own packages)
else
  PY=$(command -v python3)
fi
if [ -n "${GPU_CHECK_MODEL:-}" ]; then
  MODEL=$GPU_CHECK_MODEL
elif [ -n "$BUNDLE" ]; then
  MODEL=random:$BUNDLE/models/smollm2-135m-shape
else
  MODEL=random:embedded:smollm2
fi

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*"; }
quoted() {  # the words as a shell reads them back, quoted only where they need it
  local word words=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then words+=("$word"); else words+=("${word@Q}"); fi
  done
  echo "${words[*]}"
}

# ---- the parts' commands: each sets CMD ------------------------------------------------------

setup_command() {
  CMD=()
  [ -z "$BUNDLE" ] || CMD=(bash launch/setup_env.sh --offline "$BUNDLE")
}
gpu_command() {
  local probe='import sys, torch; ok = torch.cuda.is_available(); print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0) if ok else "no GPU visible"); sys.exit(0 if ok else 1)'
  CMD=("$PY" -c "$probe")
}
logprob_kernels_command() {
  CMD=("$PY" benchmarks/logprob_throughput.py --device cuda --dtype bfloat16 --n 8192 --h 5120 --v 152064
       --variants naive liger triton chunked flash_attn --repeat 2 --out "$OUT/logprob_kernels.json")
}
dpo_step_command() {
  CMD=("$PY" benchmarks/dpo_step.py --variants ours trl_liger --model "$MODEL" --pairs 16 --batch 4 --max-length 512
       --precision bf16 --max-tokens-per-forward 0 --out "$OUT/dpo_step.json")
}
drift_iteration_command() {
  # random weights never end a reply: every one runs to max_new_tokens, and is kept, or no pairs remain
  CMD=("$PY" launch/train.py model=smollm2_shape "model.name_or_path=$MODEL" data=fixture method=drift
       method.iterations=1 method.warmstart_epochs=1 sampler=auto sampler.max_new_tokens=128 sampler.truncated=keep
       sampler.gpu_memory_utilization=0.5 trainer.device=cuda trainer.precision=bf16 logging.wandb_mode=disabled
       logging.progress_bar=false "output_dir=$WORK/runs" run_name=drift_iteration)
}
memory_plan_command() {
  CMD=("$PY" benchmarks/memory_plan.py model=qwen14b nproc=8 trainer.per_device_batch_size=4 trainer.max_length=2048
       trainer.grad_accum_steps=4 model.gradient_checkpointing=true --json "$OUT/memory_plan.json")
}
report_command() {
  CMD=("$PY" benchmarks/gpu_check_report.py --out "$OUT" --work "$WORK" --model "$MODEL")
  for row in "${ROWS[@]}"; do CMD+=(--part "$row"); done
}

# ---- the dry run: what would run -------------------------------------------------------------

ROWS=() FAILED=()
total=0
for name in "${PARTS[@]}"; do total=$((total + TIMEOUT[$name])); done
if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check dry run: nothing runs"
  echo "output folder: $OUT (GPU_CHECK_OUT)"
  echo "python: $PY; model: $MODEL; bundle: ${BUNDLE:-none}"
  echo "timeouts: $total s in all, each part stopped at most $STOP_SECONDS s after its own"
  for name in "${PARTS[@]}"; do
    "${name}_command"
    echo "part $name ${TIMEOUT[$name]}"
    if [ ${#CMD[@]} -gt 0 ]; then echo "+ $(quoted "${CMD[@]}")"; else echo "  (nothing to run: no bundle given)"; fi
  done
  exit 0
fi

# ---- the run -----------------------------------------------------------------------------------

# the versions first: what a first contact on a new node needs to read before anything else
"$( [ -x "$PY" ] && echo "$PY" || command -v python3 )" - <<'PY'
import platform
from importlib.metadata import PackageNotFoundError, version


def found(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


print("versions: " + ", ".join(f"{name} {found(name)}" for name in ("torch", "triton", "transformers", "pyarrow", "fsspec"))
      + f"; python {platform.python_version()}")
PY
rm -rf "$WORK" && mkdir -p "$WORK/logs" "$OUT"
rm -f "$OUT"/{logprob_kernels,dpo_step,drift_iteration,memory_plan,summary}.json "$OUT"/summary.txt "$OUT"/logs.tar.gz
say "output folder $OUT; model $MODEL; timeouts $total s in all"

run_part() {  # run_part NAME: its command under its timeout, its output in WORK/logs/NAME.log
  local name=$1 limit=${TIMEOUT[$1]} started status outcome
  "${name}_command"
  if [ ${#CMD[@]} = 0 ]; then
    say "$name: nothing to do"
    ROWS+=("$name|nothing to do|0|$limit")
    return 0
  fi
  say "$name: starting (timeout $limit s)"
  started=$SECONDS
  timeout --kill-after="$STOP_SECONDS" "$limit" "${CMD[@]}" >"$WORK/logs/$name.log" 2>&1
  status=$?
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then outcome="timed out after $limit s"
  elif [ "$status" != 0 ]; then outcome="failed (exit $status)"
  else outcome=ok; fi
  say "$name: $outcome in $((SECONDS - started)) s (log: $WORK/logs/$name.log)"
  [ "$outcome" = ok ] || tail -n 6 "$WORK/logs/$name.log"
  ROWS+=("$name|$outcome|$((SECONDS - started))|$limit")
  [ "$outcome" = ok ] || { FAILED+=("$name"); return 1; }
}

run_part setup
if run_part gpu; then
  cat "$WORK/logs/gpu.log"
  run_part logprob_kernels
  run_part dpo_step
  run_part drift_iteration
  # which sampler ran and what the weights are, in the run's own words
  grep -h "^sampler: \|^model: random weights" "$WORK/logs/drift_iteration.log" 2>/dev/null | sort -u
else
  say "no CUDA GPU for $PY: the GPU parts are skipped"
  for name in logprob_kernels dpo_step drift_iteration; do ROWS+=("$name|skipped: no GPU|0|${TIMEOUT[$name]}"); done
fi
run_part memory_plan
[ -x "$PY" ] || PY=$(command -v python3)  # the report needs the standard library alone
report_command
timeout --kill-after="$STOP_SECONDS" "${TIMEOUT[report]}" "${CMD[@]}" || FAILED+=(report)
# the exit status says whether every part ran; the table above says what each did
[ ${#FAILED[@]} = 0 ]
