"""drift.cpu_attention (bf16 attention on a CPU) against fp64 references written from the definition.

Tolerances are bf16's: the outputs and gradients may differ from fp64 by a few roundings of the
largest value (2^-8 relative each; measured up to 1.5 of them); the test also runs SDPA's own bf16
CPU kernel on the same inputs and requires ours to be within three times its error (ours rounds the
probabilities to bf16 before P @ V, as flash-attention on a GPU does; SDPA's CPU kernel keeps them in
fp32, so its outputs are up to 2.4 times closer and its key/value gradients up to 2 times further).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from drift import cpu_attention, packing
from tests.unit.test_packed_attention import PLAIN, SHARED, _alone_reference, _layout

HEADS, KV_HEADS, DIM = 6, 2, 16


def _reference(query, key, value, allowed, scale):
    """fp64, K/V copied per head, masked softmax: [1, H, Lq, D]."""
    groups = query.shape[1] // key.shape[1]
    key, value = (t.double().repeat_interleave(groups, dim=1) for t in (key, value))
    scores = (query.double() @ key.transpose(-1, -2)) * scale
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ value


def _inputs(q_length, k_length, seed):
    generator = torch.Generator().manual_seed(seed)
    make = lambda heads, length: torch.randn(1, heads, length, DIM, generator=generator).to(torch.bfloat16)  # noqa: E731
    return make(HEADS, q_length), make(KV_HEADS, k_length), make(KV_HEADS, k_length), torch.randn(1, HEADS, q_length, DIM, generator=generator)


def _errors(outputs_and_grads, references):
    return [(got.double() - expected).abs().max().item() for got, expected in zip(outputs_and_grads, references)]


@pytest.mark.parametrize("q_length,k_length,window", [(40, 40, None), (13, 40, None), (40, 40, 7), (13, 40, 9)])
def test_grouped_attention_matches_fp64_within_bf16_and_sdpa(q_length, k_length, window):
    query, key, value, weights = _inputs(q_length, k_length, seed=q_length + (window or 0))
    scale = DIM**-0.5
    allowed = packing.piece_mask(q_length, k_length, window)
    if allowed is None:
        allowed = torch.ones(q_length, k_length, dtype=torch.bool).tril(k_length - q_length)
    leaves64 = [t.double().requires_grad_() for t in (query, key, value)]
    expected = _reference(*leaves64, allowed, scale)
    (expected * weights.double()).sum().backward()
    references = [expected] + [t.grad for t in leaves64]

    def run(attention):
        leaves = [t.clone().requires_grad_() for t in (query, key, value)]
        output = attention(*leaves)
        (output.float() * weights).sum().backward()
        return _errors([output] + [t.grad for t in leaves], references)

    bias = cpu_attention.additive_mask(packing.allowed_keys(q_length, k_length, window), HEADS // KV_HEADS, torch.bfloat16)
    ours = run(lambda q, k, v: cpu_attention.grouped_attention(q, k, v, bias, scale))
    sdpa = run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=True))
    for name, error, theirs, reference in zip(("output", "query", "key", "value"), ours, sdpa, references):
        bf16_tolerance = 3 * 2**-8 * reference.abs().max().item()
        assert error <= bf16_tolerance, (name, error, bf16_tolerance)
        assert error <= 3 * theirs, (name, error, theirs)


def test_additive_mask_by_hand():
    # 2 queries (positions 1, 2 of 3 keys), causal, 2 query heads per K/V head: rows repeat per head
    bias = cpu_attention.additive_mask(packing.allowed_keys(2, 3, None), 2, torch.float32)
    inf = float("-inf")
    assert torch.equal(bias, torch.tensor([[0.0, 0.0, inf], [0.0, 0.0, 0.0]] * 2))


@pytest.mark.parametrize("spec,share,window", [(SHARED, True, None), (SHARED, True, 3), (PLAIN, False, None), (PLAIN, True, 4)])
def test_packed_bf16_on_cpu_takes_this_path_and_matches_each_sequence_alone(spec, share, window, monkeypatch):
    layout, sequences = _layout(spec, share)
    generator = torch.Generator().manual_seed(5)
    query, key, value = (torch.randn(1, heads, layout.length, DIM, generator=generator, dtype=torch.float64)
                         for heads in (HEADS, KV_HEADS, KV_HEADS))
    expected = _alone_reference(query, key, value, sequences, window, DIM**-0.5)
    calls = []
    original = cpu_attention.grouped_attention
    monkeypatch.setattr(cpu_attention, "grouped_attention", lambda *a: calls.append(1) or original(*a))
    got = packing.sdpa_packed_attention(*(t.to(torch.bfloat16) for t in (query, key, value)), layout, window, DIM**-0.5)
    assert len(calls) == len(layout.pieces)  # bf16 on a CPU: every piece through drift.cpu_attention
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    assert (got.double() - expected).abs().max().item() <= 3 * 2**-8 * expected.abs().max().item()


def test_applies_to_bf16_on_cpu_without_dropout_only():
    bf16, fp32 = torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1)
    assert cpu_attention.applies(bf16, 0.0)
    assert not cpu_attention.applies(bf16, 0.1)
    assert not cpu_attention.applies(fp32, 0.0)

