#!/usr/bin/env bash
# The offline path, proven on a CPU machine: a Python holding only what a stock GPU node has (torch,
# transformers, accelerate, safetensors, numpy, pyarrow), the lean bundle installed with no index, then
# launch/train.py on the SmolLM2-135M-shaped model with random weights: a warm-start epoch and one
# DRIFT iteration with the HF sampler, drift run from a fresh clone's source tree (no editable install).
# Random weights never end a reply, so the cut replies are kept as unfinished sides (sampler.truncated=keep).
#
#   NODE_PYTHON=/path/to/python3 bash benchmarks/offline_node_check.sh [WORK_DIR]
#
# NODE_PYTHON must be a Python whose own site-packages hold the node's packages (not a venv: the
# bundle's .venv is made with --system-site-packages over it). The output (what the note quotes) goes
# to stdout; WORK_DIR (default a new temp folder) keeps the bundle, the clone and the run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d -t drift-offline.XXXX)}
: "${NODE_PYTHON:?set NODE_PYTHON to the node-like python3}"
version=$("$NODE_PYTHON" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
echo "== the node's python: $NODE_PYTHON (Python $version)"
(cd / && "$NODE_PYTHON" - <<'PY'  # from / : the checkout's own drift and its egg-info are not the node's
import importlib.util
for name in ("torch", "transformers", "accelerate", "safetensors", "numpy", "pyarrow", "hydra", "omegaconf",
             "datasets", "trl", "liger_kernel", "peft", "wandb", "gguf", "vllm", "flash_attn", "drift"):
    spec = importlib.util.find_spec(name)
    version = "absent"
    if spec is not None:
        from importlib.metadata import version as v, packages_distributions
        dist = (packages_distributions().get(name) or [name])[0]
        version = v(dist)
    print(f"   {name:<13} {version}")
PY
)
echo "== the lean bundle for Python $version (made with network, as on a connected machine)"
(cd "$repo" && .venv/bin/python launch/offline_bundle.py "$work/bundle" --python-version "$version" | tail -n 1)
echo "== a fresh clone, set up from the bundle with no index"
git clone -q "$repo" "$work/main"
cd "$work/main"
PYTHON="$NODE_PYTHON" bash launch/setup_env.sh --offline "$work/bundle"
echo "== launch/train.py from the source tree: warm start (1 epoch) and one DRIFT iteration, sampler=hf"
start=$SECONDS
PYTHONPATH="$PWD" PIP_NO_INDEX=1 HF_HUB_OFFLINE=1 .venv/bin/python launch/train.py \
  model=smollm2_shape "model.name_or_path=random:$work/bundle/models/smollm2-135m-shape" data=fixture \
  method=drift method.iterations=1 method.warmstart_epochs=1 sampler=hf sampler.max_new_tokens=64 sampler.truncated=keep \
  logging.wandb_mode=disabled "output_dir=$work/runs" run_name=offline
echo "== exit 0 after $((SECONDS - start)) s; run folder $work/runs/offline"
