"""Attention in bf16 on a CPU: batched GEMMs around one fused softmax, recomputed in backward.

What SDPA picks on a CPU, its flash-attention kernel, runs a bf16 backward at about a third of the
rate of the GEMMs around it: on SmolLM2-135M's pieces (9 heads over 3 K/V heads, head dim 64; a
360-token causal piece and a 130-token response over 360 keys) 15-22 ms a layer for one DPO pair's
forward and backward, a quarter of the whole step. Written as three batched GEMMs with the grouped
heads stacked (each K/V head multiplies its query heads' rows at once, never copied per head) and
torch's fused softmax, the same work takes about half as long (``python benchmarks/cpu_attention.py``
prints both, per piece, on this machine). It computes a causal piece's masked half, which SDPA's
kernel skips: on a 500-token causal piece it is only about even with backward, slower forward-only.

Numerics are transformers' eager attention in bf16: scores from a bf16 GEMM (fp32 accumulation,
rounded to bf16 once), softmax computed in fp32 inside the kernel and rounded to bf16, P @ V in
bf16. Against fp64 its errors are within three times the flash kernel's (its outputs up to 2.4 times
further, as P is rounded to bf16 before P @ V; its key and value gradients closer;
tests/unit/test_cpu_attention.py). Backward recomputes the probabilities from q and k, as flash
attention does, so only q, k and v are saved: no [heads, Lq, Lk] tensor lives from forward to backward.
"""

from __future__ import annotations

import torch


def additive_mask(allowed: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """[groups * Lq, Lk] from a boolean [Lq, Lk] ``allowed`` (drift.packing.allowed_keys): 0 where a query
    attends a key, -inf elsewhere, rows repeated per query head of a K/V head (the stacked layout)."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
    return bias.repeat(groups, 1)


def _stacked(query: torch.Tensor, kv_heads: int, scale: float) -> torch.Tensor:
    """[1, H, Lq, D] -> [KV, (H/KV) * Lq, D], pre-scaled: K/V head j serves query heads j*G..j*G+G-1."""
    _, heads, q_length, dim = query.shape
    return (query * scale).reshape(kv_heads, (heads // kv_heads) * q_length, dim)


def _probabilities(query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor, scale: float):
    """(the stacked, pre-scaled queries, softmax(q k^T + bias) [KV, (H/KV) * Lq, Lk]): forward and backward alike."""
    stacked = _stacked(query, key.shape[1], scale)
    return stacked, torch.softmax(torch.baddbmm(bias, stacked, key[0].transpose(1, 2)), dim=-1)


class GroupedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, bias, scale):
        _, heads, q_length, dim = query.shape
        _, probabilities = _probabilities(query, key, bias, scale)
        output = torch.bmm(probabilities, value[0])
        ctx.save_for_backward(query, key, value, bias)
        ctx.scale = scale
        return output.view(1, heads, q_length, dim)

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, bias = ctx.saved_tensors
        _, heads, q_length, dim = query.shape
        kv_heads = key.shape[1]
        stacked, probabilities = _probabilities(query, key, bias, ctx.scale)
        grad_stacked = grad_output.reshape(kv_heads, (heads // kv_heads) * q_length, dim)
        grad_value = torch.bmm(probabilities.transpose(1, 2), grad_stacked)
        grad_probabilities = torch.bmm(grad_stacked, value[0].transpose(1, 2))
        grad_scores = torch._softmax_backward_data(grad_probabilities, probabilities, -1, probabilities.dtype)
        grad_query = torch.bmm(grad_scores, key[0]).mul_(ctx.scale).view(1, heads, q_length, dim)
        grad_key = torch.bmm(grad_scores.transpose(1, 2), stacked)
        return grad_query, grad_key.unsqueeze(0), grad_value.unsqueeze(0), None, None


def grouped_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """query [1, H, Lq, D], key/value [1, KV, Lk, D], bias from ``additive_mask`` -> [1, H, Lq, D]."""
    # the inputs are bf16 already; under autocast (LoRA's CPU path) softmax would otherwise run in fp32
    # in forward and bf16 in the backward's recompute
    with torch.autocast("cpu", enabled=False):
        return GroupedAttention.apply(query, key, value, bias, scale)


def applies(query: torch.Tensor, dropout_p: float) -> bool:
    """bf16 on a CPU without dropout: where this beats SDPA's kernel (in fp32 it does not)."""
    return query.device.type == "cpu" and query.dtype == torch.bfloat16 and dropout_p == 0.0
