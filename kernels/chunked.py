"""Chunked torch implementation: the CPU path and the GPU fallback.

The [tokens, vocab] logits are visited one [TOKEN_CHUNK, VOCAB_BLOCK] tile at a time, always in
the same preallocated buffer: the forward keeps an online logsumexp per token, the backward
recomputes each tile and turns it into the logit gradient in place, so no full-size tensor and
no per-tile allocation ever exists. Vocab blocks are the outer loop so each weight block is read
from memory once per pass and its weight-gradient rows are finished before moving on.

Compute is fp32 (fp64 for fp64 inputs); bf16/fp16 inputs are upcast one block at a time.
"""

from __future__ import annotations

import math

import torch

from ._common import logits_into

# Tile shape. Each tile feeds three matmuls whose inner dimensions are H, VOCAB_BLOCK and
# TOKEN_CHUNK; on the 2-core CPU those ran at 175-185 GFLOP/s with both sides >= 2048 against
# 160-165 at 1024 (the matmuls are ~96% of the time), and few, large tiles keep the number of
# parallel regions low, which matters when other processes share the cores. 32 MiB in fp32.
TOKEN_CHUNK = 2048
VOCAB_BLOCK = 4096


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _tile_buffer(n_tokens: int, vocab: int, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(min(n_tokens, TOKEN_CHUNK) * min(vocab, VOCAB_BLOCK), dtype=like.dtype, device=like.device)


def _tile(buffer: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    return buffer[: n_rows * n_cols].view(n_rows, n_cols)


def _target_logits(hidden, weight, bias, targets, scale):
    target_logits = torch.linalg.vecdot(hidden, weight.index_select(0, targets).to(hidden.dtype))
    if bias is not None:
        target_logits += bias.index_select(0, targets).to(hidden.dtype)
    return target_logits * scale


def forward(hidden, weight, bias, targets, temperature):
    """(log-probs float32 [N], logsumexp of the scaled logits [N]) for N >= 1 tokens."""
    compute_dtype = _compute_dtype(hidden.dtype)
    hidden = hidden.to(compute_dtype)
    scale = 1.0 / temperature
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    running_max = torch.full((n_tokens,), -math.inf, dtype=compute_dtype, device=hidden.device)
    running_sum = torch.zeros(n_tokens, dtype=compute_dtype, device=hidden.device)
    buffer = _tile_buffer(n_tokens, vocab, hidden)
    for v0 in range(0, vocab, VOCAB_BLOCK):
        weight_block = weight[v0 : v0 + VOCAB_BLOCK].to(compute_dtype)
        bias_block = None if bias is None else bias[v0 : v0 + VOCAB_BLOCK].to(compute_dtype)
        for t0 in range(0, n_tokens, TOKEN_CHUNK):
            hidden_chunk = hidden[t0 : t0 + TOKEN_CHUNK]
            tile = _tile(buffer, hidden_chunk.shape[0], weight_block.shape[0])
            logits_into(tile, hidden_chunk, weight_block, bias_block, scale)
            chunk_max = running_max[t0 : t0 + TOKEN_CHUNK]
            new_max = torch.maximum(chunk_max, tile.amax(dim=1))
            tile.sub_(new_max.unsqueeze(1)).exp_()
            chunk_sum = running_sum[t0 : t0 + TOKEN_CHUNK]
            # rescale what was summed under the old max; exp(-inf) = 0 on the first block
            chunk_sum.mul_(torch.exp(chunk_max - new_max)).add_(tile.sum(dim=1))
            chunk_max.copy_(new_max)
    lse = running_sum.log_().add_(running_max)
    logps = _target_logits(hidden, weight, bias, targets, scale) - lse
    return logps.float(), lse


def backward(grad_logps, hidden, weight, bias, targets, lse, temperature, needs_input_grad):
    """Gradients for (hidden, weight, bias), None where needs_input_grad says not needed.

    With z the scaled logits and P = softmax(z), d logp_i / d z_ij = [j = t_i] - P_ij. Each tile
    is recomputed exactly as the forward computed it and turned into P in place; the upstream
    gradient g is applied on the small side (rows of the [N, H] accumulator, g * hidden for the
    weight gradient), and the one-hot part, one vocab row per token, is added once at the end.
    """
    need_hidden, need_weight, need_bias = needs_input_grad
    compute_dtype = lse.dtype
    scale = 1.0 / temperature
    hidden_dtype = hidden.dtype
    hidden = hidden.to(compute_dtype)
    grad = grad_logps.to(compute_dtype)
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    probs_at_weight = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.empty(weight.shape, dtype=compute_dtype, device=weight.device) if need_weight else None
    grad_bias = torch.empty(vocab, dtype=compute_dtype, device=weight.device) if need_bias else None
    grad_scaled_hidden = hidden * grad.unsqueeze(1) if need_weight else None
    buffer = _tile_buffer(n_tokens, vocab, hidden)
    for v0 in range(0, vocab, VOCAB_BLOCK):
        weight_block = weight[v0 : v0 + VOCAB_BLOCK].to(compute_dtype)
        bias_block = None if bias is None else bias[v0 : v0 + VOCAB_BLOCK].to(compute_dtype)
        vocab_rows = slice(v0, v0 + VOCAB_BLOCK)
        for t0 in range(0, n_tokens, TOKEN_CHUNK):
            rows = slice(t0, t0 + TOKEN_CHUNK)
            hidden_chunk = hidden[rows]
            probs = _tile(buffer, hidden_chunk.shape[0], weight_block.shape[0])
            # the same call as the forward's, so the logits come out bit for bit as they went
            # into lse: a target that holds all the mass gets exactly P = 1 even at |z| ~ 1e4
            logits_into(probs, hidden_chunk, weight_block, bias_block, scale)
            probs.sub_(lse[rows].unsqueeze(1)).exp_()
            first = t0 == 0
            if need_hidden:
                probs_at_weight[rows].addmm_(probs, weight_block)
            if need_weight:
                grad_weight[vocab_rows].addmm_(probs.t(), grad_scaled_hidden[rows], beta=0 if first else 1, alpha=-scale)
            if need_bias:
                grad_bias[vocab_rows].addmv_(probs.t(), grad[rows], beta=0 if first else 1, alpha=-scale)
    target_grad = grad * scale
    grad_hidden = None
    if need_hidden:
        # grad_h = scale * g * (W[t] - P @ W)
        probs_at_weight.sub_(weight.index_select(0, targets).to(compute_dtype)).mul_(-target_grad.unsqueeze(1))
        grad_hidden = probs_at_weight.to(hidden_dtype)
    if need_weight:
        grad_weight.index_add_(0, targets, hidden * target_grad.unsqueeze(1))
        grad_weight = grad_weight.to(weight.dtype)
    if need_bias:
        grad_bias.index_add_(0, targets, target_grad)
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias
