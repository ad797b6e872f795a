"""The CUDA paths of tests/unit/test_device_placement.py on a real GPU: the sampler's draw with CPU
uniforms and CUDA logits (what crashed the static engine at its first draw), both HF sampling
engines, a training stage with its reference pass and checkpoints (compiled FlexAttention and the
Triton log-prob kernel when installed), packed attention's tables and the chunked kernel, each
against the CPU. Collected everywhere, run only where CUDA is (conftest)."""

from __future__ import annotations

import math

import pytest
import torch

from drift.model import build_byte_tokenizer
from drift.sampler.engine import Generation
from tests.unit.test_device_placement import (
    assert_same_training,
    draw_on,
    logprobs_on,
    packed_attention_on,
    sample_on,
    train_on,
)

CUDA = "cuda:0"


def test_draw_tokens_takes_cpu_uniforms_with_logits_on_cuda():
    for got, expected in draw_on(CUDA).values():
        assert torch.equal(got, expected)


def test_both_sampling_engines_on_cuda_draw_what_the_cpu_draws():
    # fp64 on both sides: the draws see the same probabilities up to ~1e-7 (the CPU engine's
    # attention runs in fp32), so no inverse-CDF draw lands between the two
    assert sample_on(CUDA, torch.float64) == sample_on("cpu", torch.float64)


def test_both_sampling_engines_run_in_bf16_on_cuda():
    """The sampler's GPU default dtype: other draws than the CPU's, but every reply well formed."""
    vocab = len(build_byte_tokenizer())
    for generations in sample_on(CUDA, torch.bfloat16).values():
        assert len(generations) == 3 and all(isinstance(g, Generation) for g in generations)
        assert all(0 <= token < vocab for g in generations for token in g.token_ids)
        assert all(g.finish_reason in ("eos", "length") and g.generated_tokens <= 8 for g in generations)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_a_training_stage_on_cuda_matches_the_cpu(tmp_path, packed):
    expected = train_on(tmp_path / "cpu", "cpu", packing=packed)
    got = train_on(tmp_path / "cuda", CUDA, packing=packed)
    # fp32 on both; other kernels (FlexAttention or per-sequence SDPA, Triton or chunked log-probs)
    assert_same_training(got, expected, rel_tol=1e-3, abs_tol=1e-4)


def test_a_training_stage_runs_in_bf16_on_cuda(tmp_path):
    """The GPU default precision (bf16 compute on a copy of the fp32 masters): it runs, and its losses are finite."""
    records, weights = train_on(tmp_path, CUDA, packing=True, dtype=torch.bfloat16)
    assert len(records) == 6 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert all(torch.isfinite(value.float()).all() for value in weights.values())


def test_packed_attention_keeps_its_tables_on_cuda(monkeypatch):
    got = packed_attention_on(CUDA, monkeypatch)
    expected = packed_attention_on("cpu", monkeypatch)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-10)


def test_chunked_logprobs_on_cuda_match_the_cpu():
    for ours, theirs in zip(logprobs_on(CUDA), logprobs_on("cpu")):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
