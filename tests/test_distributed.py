"""One optimizer step under torchrun (2 processes, gloo, FSDP2) equals the single-process step."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from drift.model import build_byte_tokenizer, load_model
from tests.tiny import tiny_config

SCRIPT = Path(__file__).parent / "tiny_stage.py"


def _run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def test_fsdp2_step_on_two_processes_equals_single_process_step(tmp_path):
    # same global batch of 8 pairs: 1 process x batch 8, vs 2 processes x batch 2 x 2 accumulation steps.
    # SGD makes the update linear in the gradient, so this checks the gradient itself (sharding,
    # reduce-scatter averaging, accumulation and the loss normalizers), not just its sign.
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _run([sys.executable, str(SCRIPT), str(single), "8", "1", "sgd", "8", "1"])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(SCRIPT), str(sharded), "2", "2", "sgd", "8", "1"])
    single_weights = load_file(single / "stage" / "model" / "model.safetensors")
    sharded_weights = load_file(sharded / "stage" / "model" / "model.safetensors")
    assert sorted(single_weights) == sorted(sharded_weights)

    initial = load_model(tiny_config(tmp_path).model, dtype=torch.float32, seed=7, vocab_size=len(build_byte_tokenizer())).state_dict()
    for name, value in single_weights.items():
        update_single = value - initial[name]
        update_sharded = sharded_weights[name] - initial[name]
        # fp32 sums in a different order: the updates agree to 1e-4 of the largest update
        tolerance = 1e-4 * update_single.abs().max().item() + 1e-7
        assert (update_single - update_sharded).abs().max().item() <= tolerance, name
    # and the step really moved every kind of parameter, the root's (embeddings, final norm) included
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.mlp.up_proj.weight"):
        assert (single_weights[name] - initial[name]).abs().max().item() > 1e-4, name
