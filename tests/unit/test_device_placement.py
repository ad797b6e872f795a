"""CPU/accelerator device mixes, caught without a GPU.

The code that runs on CUDA (the sampler's draw and both HF engines, a whole training stage with its
reference pass and checkpoints, packed attention's per-batch tables, the chunked log-prob kernel)
runs here on the stand-in accelerator of tests/stand_in_device.py, which refuses every CPU/CUDA mix
CUDA refuses, and must give what it gives on the CPU. The helpers take the device, so
tests/gpu/test_device_paths_cuda.py runs the same checks on a real GPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from drift import kernels, packing
from drift.model import build_byte_tokenizer
from drift.parallel import Runtime
from drift.sampler.engine import draw_tokens, generate_continuous, sample_next_tokens
from drift.sampler.process import hf_generate_batch
from drift.train import Stage, train_stage
from tests.stand_in_device import STAND_IN, DeviceMixError, StandInTensor, on_stand_in
from tests.tiny import synthetic_pairs, tiny_config
from tests.unit.sampler.test_sampling import context_sensitive_model
from tests.unit.test_packed_attention import DIM, SHARED, _flash_varlen_stand_in, _layout, _qkv

# ---- the stand-in itself: it refuses what CUDA refuses, and only that -----------------------------

REFUSED = {
    "cpu tensor indexed by device indices": lambda: torch.rand(4)[torch.tensor([0, 2], device=STAND_IN)],
    "device + cpu": lambda: torch.ones(3, device=STAND_IN) + torch.ones(3),
    "cpu values put into a device tensor": lambda: torch.zeros(3, device=STAND_IN).index_put_(
        (torch.tensor([0, 1]),), torch.ones(2)),
    "index_select with cpu indices": lambda: torch.ones(3, device=STAND_IN).index_select(0, torch.tensor([1])),
    "cpu generator drawing on the device": lambda: torch.rand(3, device=STAND_IN, generator=torch.Generator()),
    "cat of device and cpu": lambda: torch.cat([torch.ones(2, device=STAND_IN), torch.ones(2)]),
}
TAKEN = {
    "device tensor indexed by cpu indices": (lambda: torch.arange(4.0, device=STAND_IN)[torch.tensor([3, 1])], [3.0, 1.0]),
    "0-dim cpu scalar with a device tensor": (lambda: torch.arange(3.0, device=STAND_IN) * torch.tensor(2.0), [0.0, 2.0, 4.0]),
    "copies both ways": (lambda: torch.tensor([1.5, 2.5]).to(STAND_IN).cpu() + 1, [2.5, 3.5]),
    "a slice assigned from the cpu": (lambda: _assign_slice(), [0.0, 7.0, 7.0]),
}


def _assign_slice():
    target = torch.zeros(3, device=STAND_IN)
    target[1:] = torch.full((2,), 7.0)
    return target


@pytest.mark.parametrize("name", REFUSED)
def test_stand_in_refuses_the_mixes_cuda_refuses(name):
    with on_stand_in(), pytest.raises(DeviceMixError):
        REFUSED[name]()


@pytest.mark.parametrize("name", TAKEN)
def test_stand_in_takes_what_cuda_takes_with_the_cpu_values(name):
    run, expected = TAKEN[name]
    with on_stand_in():
        got = run()
        assert got.tolist() == expected
        assert isinstance(got, StandInTensor) == (name != "copies both ways")


# ---- the sampler ----------------------------------------------------------------------------------


def draw_on(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens drawn from logits on ``device`` with CPU uniforms, as the engine's per-request CPU
    generators make them; the CPU's full-sort reference). Rows from flat to peaked, so the draw
    takes both its shortlist path and its full-sort fallback; at top_p=1 only the fallback."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 3000, generator=generator, dtype=torch.float64) * torch.linspace(0.3, 12.0, 12)[:, None]
    uniforms = torch.rand(12, generator=generator)
    drawn = {}
    for top_p in (0.9, 1.0):
        got = draw_tokens(logits.to(device), uniforms, temperature=0.8, top_p=top_p, shortlists=(8, 256))
        assert got.device.type == torch.device(device).type
        drawn[top_p] = (got.cpu(), sample_next_tokens(logits, uniforms, temperature=0.8, top_p=top_p))
    return drawn


def test_draw_tokens_takes_cpu_uniforms_with_logits_on_the_accelerator():
    with on_stand_in():
        drawn = draw_on(STAND_IN)
    for got, expected in drawn.values():
        assert torch.equal(got, expected)


def sample_on(device, dtype=torch.float32) -> dict[str, list]:
    """Both HF engines' replies from the tiny context-sensitive model on ``device``, with seeded
    nucleus sampling and refills (3 prompts over 2 slots)."""
    model = context_sensitive_model().to(device, dtype)
    prompts = [tuple(range(10 + i, 14 + 3 * i)) for i in range(3)]
    settings = dict(temperature=0.9, top_p=0.95, max_new_tokens=8, stop_ids=[256])
    return {
        "static": generate_continuous(model, prompts, [21, 22, 23], batch_size=2, **settings),
        "loop": hf_generate_batch(model, list(prompts), [21, 22, 23], pad_id=257, **settings),
    }


def test_both_sampling_engines_run_on_the_accelerator_and_draw_what_the_cpu_draws():
    expected = sample_on("cpu")
    with on_stand_in():
        got = sample_on(STAND_IN)
    assert got == expected
    assert sum(len(g.token_ids) for g in expected["static"]) >= 10  # the replies are not all empty


# ---- a training stage: reference pass, forward/backward, optimizer, checkpoints, export ------------

COMPARED = ("loss", "margin", "accuracy", "chosen_reward", "rejected_reward", "nll", "grad_norm")


def train_on(folder: Path, device, *, packing: bool, dtype=torch.float32) -> tuple[list[dict], dict]:
    """A 6-step stage (6 pairs, 2 per step, 2 epochs, a checkpoint every 2 steps, micro-batches
    split by a token budget) on ``device``: its step records and its exported weights (on the CPU)."""
    from safetensors.torch import load_file

    config = tiny_config(folder, per_device_batch_size=2, packing=packing, save_every_steps=2, max_tokens_per_forward=40)
    stage = Stage("ws", folder / "stage", synthetic_pairs(6, seed=1), None, None, 2, folder / "cache")
    train_stage(config, Runtime(0, 1, 0, torch.device(device), dtype), stage, build_byte_tokenizer())
    records = [json.loads(line) for line in (folder / "stage" / "metrics.jsonl").read_text().splitlines()]
    return records, load_file(folder / "stage" / "model" / "model.safetensors")


def assert_same_training(got: tuple[list[dict], dict], expected: tuple[list[dict], dict], *, rel_tol: float,
                         abs_tol: float) -> None:
    (records, weights), (expected_records, expected_weights) = got, expected
    assert len(records) == len(expected_records) == 6
    for record, reference in zip(records, expected_records):
        for key in COMPARED:
            assert math.isclose(record[key], reference[key], rel_tol=rel_tol, abs_tol=abs_tol), (key, record, reference)
    assert records[-1]["loss"] != records[0]["loss"]  # the weights moved
    assert weights.keys() == expected_weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, expected_weights[name], rtol=rel_tol, atol=abs_tol)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_a_training_stage_runs_on_the_accelerator_as_on_the_cpu(tmp_path, packed):
    expected = train_on(tmp_path / "cpu", "cpu", packing=packed)
    with on_stand_in():
        got = train_on(tmp_path / "stand_in", STAND_IN, packing=packed)
    # the same CPU kernels, but SDPA decomposes differently off the CPU: equal up to fp32 rounding
    # (the rewards are beta x differences of log-probs near -100, hence the absolute tolerance)
    assert_same_training(got, expected, rel_tol=1e-4, abs_tol=1e-5)


# ---- packed attention's per-batch tables, and the log-prob kernel ---------------------------------


def _checked_flash_varlen(q, k, v, cu_q, cu_k, *args, **kwargs):
    """flash-attn's varlen kernel takes every tensor on the queries' device (it checks); then the
    plain stand-in of tests/unit/test_packed_attention.py, on the CPU."""
    for tensor in (k, v, cu_q, cu_k):
        assert tensor.device == q.device, f"{tuple(tensor.shape)} on {tensor.device}, queries on {q.device}"
    device = q.device
    return _flash_varlen_stand_in(q.cpu(), k.cpu(), v.cpu(), cu_q.cpu(), cu_k.cpu(), *args, **kwargs).to(device)


def packed_attention_on(device, monkeypatch) -> dict[str, torch.Tensor]:
    """The SDPA loop and the flash-attn varlen path over a shared-prompt row on ``device``, and the
    FlexAttention block mask's tensors: all on ``device``."""
    monkeypatch.setattr(packing, "_load_flash_varlen", lambda: _checked_flash_varlen)
    layout, _ = _layout(SHARED, share=True)
    query, key, value = (t.to(device) for t in _qkv(layout.length, seed=5))
    outputs = {
        "sdpa": packing.sdpa_packed_attention(query, key, value, layout, 3, DIM**-0.5),
        "flash_varlen": packing.flash_varlen_attention(query, key, value, layout, 3, DIM**-0.5),
    }
    block_mask = packing.flex_block_mask(layout, 3, device)
    tables = [t for t in vars(block_mask).values() if isinstance(t, torch.Tensor)]
    assert tables and all(t.device.type == torch.device(device).type for t in tables)
    for output in outputs.values():
        assert output.device.type == torch.device(device).type
    return {name: output.cpu() for name, output in outputs.items()}


def test_packed_attention_keeps_its_tables_on_the_queries_device(monkeypatch):
    expected = packed_attention_on("cpu", monkeypatch)
    with on_stand_in():
        got = packed_attention_on(STAND_IN, monkeypatch)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=1e-12)


def logprobs_on(device, impl: str = "chunked") -> list[torch.Tensor]:
    """token_logprobs with a bias and ignored positions on ``device``: values and the three gradients."""
    generator = torch.Generator().manual_seed(0)
    hidden, weight, bias = (torch.randn(*shape, generator=generator, dtype=torch.float64) for shape in ((9, 16), (37, 16), (37,)))
    targets = torch.randint(0, 37, (9,), generator=generator)
    ignored = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0, 1], dtype=torch.bool)
    leaves = [t.to(device).requires_grad_() for t in (hidden, weight, bias)]
    logps = kernels.token_logprobs(leaves[0], leaves[1], targets.to(device), bias=leaves[2], ignore_mask=ignored.to(device),
                                   impl=impl)
    (logps * torch.arange(9, dtype=logps.dtype, device=logps.device)).sum().backward()
    return [logps.detach().cpu()] + [leaf.grad.cpu() for leaf in leaves]


def test_chunked_logprobs_run_on_the_accelerator_as_on_the_cpu():
    expected = logprobs_on("cpu")
    with on_stand_in():
        got = logprobs_on(STAND_IN)
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
