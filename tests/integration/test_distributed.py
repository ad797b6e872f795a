"""One optimizer step under torchrun (2 processes, gloo, FSDP2) equals the single-process step."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from drift.model import build_byte_tokenizer, load_model
from tests.tiny import tiny_config

SCRIPT = Path(__file__).resolve().parents[1] / "tiny_stage.py"


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
    # the sharded run also splits its micro-batches by a 40-token budget: ranks run uneven numbers of
    # real forwards, padded with zero-weight ones, and the step must not change
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(SCRIPT), str(sharded), "2", "2", "sgd", "8", "1", "0", "40"])
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


def test_forward_plans_split_by_token_budget_and_match_across_ranks():
    from drift.train import plan_forwards

    tokens = [100, 300, 50, 400, 80, 20]
    # 2 ranks x 1 micro-step: rank 0 is dealt pairs 0, 2, 4 (230 tokens: one forward); rank 1 is
    # dealt 1, 3, 5: 300, then 400 alone (over budget, but a forward holds at least one pair), then 20
    plans = plan_forwards([0, 1, 2, 3, 4, 5], tokens, world_size=2, accum_steps=1, max_tokens_per_forward=350)
    assert plans == [[[0, 2, 4], [], []], [[1], [3], [5]]]
    # no budget: one forward per micro-step; 2 micro-steps
    assert plan_forwards([0, 1, 2, 3, 4], tokens, world_size=2, accum_steps=2, max_tokens_per_forward=0) == [
        [[0, 4], [2]],
        [[1], [3]],
    ]
