#!/usr/bin/env bash
# Refreshes the two locks on purpose, then installs the CPU one and runs the tests on it:
#
#   bash launch/refresh_locks.sh            # resolve today's versions, rebuild .venv from them, pytest
#   bash launch/refresh_locks.sh --no-test  # only resolve (the lock files change; nothing installed)
#
# Why uv's `pip compile`: it resolves for a Python version and platform other than this machine's
# (the GPU set: Linux x86_64, CUDA torch and vLLM, on a CPU machine), reads pyproject.toml
# as the one list of direct dependencies, and writes plain pinned requirement files that stock pip
# installs as constraints (`pip install -c locks/cpu.txt -e .[dev]`); a user needs no uv to install.
#
# The GPU set is resolved first; the CPU set is resolved under it as constraints, so every package the
# two share has the same version (transformers inside vLLM's range, triton at CUDA torch's pin).
# torch is installed first and alone by setup_env.sh (the CPU build where it lies on disk, else
# PyPI's); the CPU lock writes it as plain torch==X, which that build satisfies.
#
# Environment: UV (a uv binary; default: installed into a temporary venv from PyPI),
# TORCH_CPU_WHEELS (a folder holding the CPU torch wheel; default /opt/wheels when it exists, else
# PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=1
for arg in "$@"; do
  case "$arg" in
    --no-test) TEST=0 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "refresh_locks.sh: unknown argument '$arg' (known: --no-test, --help)" >&2; exit 2 ;;
  esac
done

if [ -z "${UV:-}" ]; then
  tools=$(mktemp -d -t drift-uv.XXXX)
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/python" -m pip install -q --disable-pip-version-check uv
  UV="$tools/venv/bin/uv"
fi
TORCH_CPU_WHEELS=${TORCH_CPU_WHEELS:-/opt/wheels}
if [ -d "$TORCH_CPU_WHEELS" ]; then
  torch_source=(--find-links "$TORCH_CPU_WHEELS")
else
  torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi

header() {  # $1: which set, $2: the command that made it
  printf '# drift lock: the %s set. Made by `bash launch/refresh_locks.sh` on %s; do not edit by hand.\n# %s\n' \
    "$1" "$(date -u +%Y-%m-%d)" "$2"
}

gpu_args=(pyproject.toml --extra dev --extra gpu --python-version 3.11 --python-platform x86_64-manylinux_2_28)
"$UV" pip compile -q --no-header "${gpu_args[@]}" -o locks/gpu.txt.new
{ header "GPU (Python >= 3.11, Linux x86_64, CUDA torch, vLLM, flash-attn)" "uv pip compile ${gpu_args[*]}"
  cat locks/gpu.txt.new; } > locks/gpu.txt
rm locks/gpu.txt.new

cpu_args=(pyproject.toml --extra dev -c locks/gpu.txt --python-version 3.11 --python-platform x86_64-manylinux_2_28)
"$UV" pip compile -q --no-header "${cpu_args[@]}" "${torch_source[@]}" -o locks/cpu.txt.new
{ header "CPU (Python 3.11, Linux x86_64; what setup_env.sh and CI install)" "uv pip compile ${cpu_args[*]} (CPU torch wheel)"
  sed -E 's/^torch==([^+ ]+)\+cpu/torch==\1/' locks/cpu.txt.new; } > locks/cpu.txt
rm locks/cpu.txt.new
echo "refresh_locks.sh: wrote locks/gpu.txt ($(grep -c '^[a-zA-Z]' locks/gpu.txt) packages) and locks/cpu.txt ($(grep -c '^[a-zA-Z]' locks/cpu.txt) packages)"

if [ "$TEST" = 1 ]; then
  bash launch/setup_env.sh && .venv/bin/python -m pytest -q
fi
