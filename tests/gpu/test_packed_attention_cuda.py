"""drift.packing's CUDA backends for real: compiled FlexAttention (forward and backward, which CPU
lacks) and flash-attn's varlen kernel, against the per-sequence SDPA loop that tests/unit checks
against each sequence alone. Collected everywhere, run only where CUDA is (conftest)."""

from __future__ import annotations

import pytest
import torch

from drift import packing
from tests.unit.test_packed_attention import HEADS, KV_HEADS, SHARED, _layout

DIM = 64


def _qkv(length, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(1, heads, length, DIM, generator=generator) for heads in (HEADS, KV_HEADS, KV_HEADS)]
    return [t.to("cuda", dtype).requires_grad_() for t in tensors]


def _sdpa_reference(query, key, value, layout, window):
    leaves = [t.detach().float().requires_grad_() for t in (query, key, value)]
    return packing.sdpa_packed_attention(*leaves, layout, window, DIM**-0.5), leaves


@pytest.mark.parametrize("share,window", [(True, None), (True, 3), (False, 4)])
def test_compiled_flex_attention_matches_the_sdpa_loop(share, window):
    layout, _ = _layout(SHARED, share)
    query, key, value = _qkv(layout.length, torch.float32)
    got = packing.flex_packed_attention(query, key, value, layout, window, DIM**-0.5).transpose(1, 2)
    expected, leaves = _sdpa_reference(query, key, value, layout, window)
    assert torch.allclose(got, expected, atol=2e-4)
    weights = torch.randn_like(got)
    ours = torch.autograd.grad((got * weights).sum(), (query, key, value))
    theirs = torch.autograd.grad((expected * weights).sum(), leaves)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=5e-4), (a - b).abs().max()


@pytest.mark.parametrize("share,window", [(True, None), (True, 3), (False, 4)])
def test_flash_varlen_matches_the_sdpa_loop(share, window):
    pytest.importorskip("flash_attn", reason="flash-attn is the gpu extra's: bash launch/setup_env.sh --gpu")
    layout, _ = _layout(SHARED, share)
    query, key, value = _qkv(layout.length, torch.bfloat16)
    assert packing.attention_backend(query, 0.0) == "flash_attn"
    got = packing.flash_varlen_attention(query, key, value, layout, window, DIM**-0.5)
    expected, _ = _sdpa_reference(query, key, value, layout, window)
    assert torch.allclose(got.float(), expected, atol=3e-2), (got.float() - expected).abs().max()
    got.float().sum().backward()  # the varlen kernel's backward runs on the gathered K/V
    assert key.grad is not None and key.grad.shape == key.shape
