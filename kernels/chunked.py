"""Chunked torch implementation: the CPU path and the GPU fallback.

The [tokens, vocab] logits are visited one [TOKEN_CHUNK, VOCAB_BLOCK] tile at a time, always in
the same preallocated buffer: the forward keeps an online logsumexp per token, the backward
recomputes each tile and turns it into the logit gradient in place, so no full-size tensor and
no per-tile allocation ever exists. Vocab blocks are the outer loop so each weight block is read
from memory once per pass and its weight-gradient rows are finished before moving on.

Compute is fp32 (fp64 for fp64 inputs). bf16/fp16 inputs run their GEMMs in their own dtype (2.3x
the fp32 rate on this repository's 2-core CPU, where the head is a third of a bf16 step otherwise):
each logits tile is rounded to the input dtype once, then upcast, and the softmax, logsumexp and
gradient accumulators stay in fp32. That rounding is what flash-attn's and TRL's bf16 logits carry
(2^-9 of a logit); the target's logit is read from the same rounded tile, so log p <= 0 holds exactly
and the backward's recomputed tile is the forward's, bit for bit.
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


def _gemm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The tiles' GEMM dtype: bf16/fp16 inputs their own (fp32 accumulation inside, one rounding of the
    result); anything else the compute dtype."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else _compute_dtype(dtype)


def _tile_buffer(n_tokens: int, vocab: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    size = min(n_tokens, TOKEN_CHUNK) * min(vocab, VOCAB_BLOCK)
    return torch.empty(size, dtype=dtype or like.dtype, device=like.device)


def _tile(buffer: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    return buffer[: n_rows * n_cols].view(n_rows, n_cols)


class _Tiles:
    """Computes logits tiles in the compute dtype, through a GEMM in the gemm dtype when that is lower."""

    def __init__(self, n_tokens: int, vocab: int, hidden: torch.Tensor, compute_dtype: torch.dtype):
        self.low = hidden.dtype != compute_dtype  # hidden arrives in the gemm dtype
        self.buffer = _tile_buffer(n_tokens, vocab, hidden, compute_dtype)
        self.low_buffer = _tile_buffer(n_tokens, vocab, hidden) if self.low else None

    def logits(self, hidden_chunk, weight_block, bias_block, scale) -> torch.Tensor:
        tile = _tile(self.buffer, hidden_chunk.shape[0], weight_block.shape[0])
        if not self.low:
            return logits_into(tile, hidden_chunk, weight_block, bias_block, scale)
        low_tile = _tile(self.low_buffer, hidden_chunk.shape[0], weight_block.shape[0])
        return tile.copy_(logits_into(low_tile, hidden_chunk, weight_block, bias_block, scale))

    def rounded(self, tile: torch.Tensor) -> torch.Tensor:
        """``tile`` in the gemm dtype, in the low buffer (it is free once the logits are upcast)."""
        return _tile(self.low_buffer, *tile.shape).copy_(tile) if self.low else tile


def _target_logits(hidden, weight, bias, targets, scale):
    target_logits = torch.linalg.vecdot(hidden, weight.index_select(0, targets).to(hidden.dtype))
    if bias is not None:
        target_logits += bias.index_select(0, targets).to(hidden.dtype)
    return target_logits * scale


def _gather_targets(out: torch.Tensor, tile: torch.Tensor, targets: torch.Tensor, t0: int, v0: int) -> None:
    """out[t0 + i] = tile[i, targets[t0 + i] - v0] for the chunk's tokens whose target is in the tile's block."""
    chunk_targets = targets[t0 : t0 + tile.shape[0]] - v0
    rows = ((chunk_targets >= 0) & (chunk_targets < tile.shape[1])).nonzero().squeeze(1)
    out.index_copy_(0, rows + t0, tile[rows, chunk_targets[rows]])


def forward(hidden, weight, bias, targets, temperature):
    """(log-probs float32 [N], logsumexp of the scaled logits [N]) for N >= 1 tokens."""
    compute_dtype = _compute_dtype(hidden.dtype)
    hidden = hidden.to(_gemm_dtype(hidden.dtype))
    scale = 1.0 / temperature
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    running_max = torch.full((n_tokens,), -math.inf, dtype=compute_dtype, device=hidden.device)
    running_sum = torch.zeros(n_tokens, dtype=compute_dtype, device=hidden.device)
    tiles = _Tiles(n_tokens, vocab, hidden, compute_dtype)
    # low-precision GEMMs: the target's logit is the tile's own (rounded) one, read before exp_
    target_logits = torch.empty(n_tokens, dtype=compute_dtype, device=hidden.device) if tiles.low else None
    for v0 in range(0, vocab, VOCAB_BLOCK):
        weight_block = weight[v0 : v0 + VOCAB_BLOCK].to(hidden.dtype)
        bias_block = None if bias is None else bias[v0 : v0 + VOCAB_BLOCK].to(hidden.dtype)
        for t0 in range(0, n_tokens, TOKEN_CHUNK):
            tile = tiles.logits(hidden[t0 : t0 + TOKEN_CHUNK], weight_block, bias_block, scale)
            if target_logits is not None:
                _gather_targets(target_logits, tile, targets, t0, v0)
            chunk_max = running_max[t0 : t0 + TOKEN_CHUNK]
            new_max = torch.maximum(chunk_max, tile.amax(dim=1))
            tile.sub_(new_max.unsqueeze(1)).exp_()
            chunk_sum = running_sum[t0 : t0 + TOKEN_CHUNK]
            # rescale what was summed under the old max; exp(-inf) = 0 on the first block
            chunk_sum.mul_(torch.exp(chunk_max - new_max)).add_(tile.sum(dim=1))
            chunk_max.copy_(new_max)
    lse = running_sum.log_().add_(running_max)
    if target_logits is None:
        target_logits = _target_logits(hidden, weight, bias, targets, scale)
    logps = target_logits - lse
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
    gemm_dtype = _gemm_dtype(hidden.dtype)
    scale = 1.0 / temperature
    hidden_dtype = hidden.dtype
    hidden_gemm = hidden.to(gemm_dtype)
    hidden = hidden.to(compute_dtype)
    grad = grad_logps.to(compute_dtype)
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    probs_at_weight = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.empty(weight.shape, dtype=compute_dtype, device=weight.device) if need_weight else None
    grad_bias = torch.empty(vocab, dtype=compute_dtype, device=weight.device) if need_bias else None
    grad_scaled_hidden = (hidden * grad.unsqueeze(1)).to(gemm_dtype) if need_weight else None
    tiles = _Tiles(n_tokens, vocab, hidden_gemm, compute_dtype)
    for v0 in range(0, vocab, VOCAB_BLOCK):
        weight_block = weight[v0 : v0 + VOCAB_BLOCK].to(gemm_dtype)
        bias_block = None if bias is None else bias[v0 : v0 + VOCAB_BLOCK].to(gemm_dtype)
        vocab_rows = slice(v0, v0 + VOCAB_BLOCK)
        for t0 in range(0, n_tokens, TOKEN_CHUNK):
            rows = slice(t0, t0 + TOKEN_CHUNK)
            # the same call as the forward's, so the logits come out bit for bit as they went
            # into lse: a target that holds all the mass gets exactly P = 1 even at |z| ~ 1e4
            probs = tiles.logits(hidden_gemm[rows], weight_block, bias_block, scale)
            probs.sub_(lse[rows].unsqueeze(1)).exp_()
            probs_operand = tiles.rounded(probs)  # P in the gemm dtype for the two GEMMs below
            first = t0 == 0
            if need_hidden:
                _addmm_into(probs_at_weight[rows], probs_operand, weight_block, beta=1, alpha=1)
            if need_weight:
                _addmm_into(grad_weight[vocab_rows], probs_operand.t(), grad_scaled_hidden[rows], beta=0 if first else 1, alpha=-scale)
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


def _addmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float, alpha: float) -> None:
    """out = beta * out + alpha * (a @ b), with ``out`` in the compute dtype whatever the GEMM's dtype."""
    if a.dtype == out.dtype:
        out.addmm_(a, b, beta=beta, alpha=alpha)
    elif beta == 0:
        torch.mul(torch.mm(a, b), alpha, out=out)
    else:
        out.add_(torch.mm(a, b), alpha=alpha)
