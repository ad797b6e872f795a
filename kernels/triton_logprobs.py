"""Triton implementation: fused matmul + online logsumexp, no [tokens, vocab] tensor in forward.

Forward: each program takes a block of tokens and a contiguous range of vocab tiles, computes
each [BLOCK_N, BLOCK_V] logits tile with tl.dot (fp32 accumulation over H, bf16/fp16 inputs on
GPU) and folds it into a running max and sum; a split of the vocab across programs keeps the GPU
busy when there are few tokens, and the per-split partials are merged in torch (a [splits, N]
logsumexp). Backward: per token chunk a second kernel recomputes the logits tile and writes the
logit gradient g * (onehot - softmax) straight into a chunk buffer, which two library matmuls
(cuBLAS on GPU) turn into the hidden and weight gradients.

On CPU the kernels run under the Triton interpreter when TRITON_INTERPRET=1 was set before this
module was imported (the decorator reads it); the tests use that on small shapes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import accumulate_logit_grads, token_chunk_size


@triton.jit
def _scaled_logits_tile(
    hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_ok, col_ok, hidden_size, stride_hidden, stride_weight, scale,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_OPERANDS: tl.constexpr,
):
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, hidden_size, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < hidden_size
        h = tl.load(hidden_ptr + rows[:, None] * stride_hidden + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(weight_ptr + cols[:, None] * stride_weight + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST_OPERANDS:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return acc * scale


@triton.jit
def _forward_kernel(
    hidden_ptr, weight_ptr, bias_ptr, targets_ptr, max_ptr, sum_ptr, target_logit_ptr,
    n_tokens, vocab, hidden_size, tiles_per_split, stride_hidden, stride_weight, scale,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_OPERANDS: tl.constexpr,
):
    split = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok = rows < n_tokens
    targets = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
    running_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    target_logit = tl.zeros([BLOCK_N], dtype=tl.float32)
    first_tile = split * tiles_per_split
    # the launcher sizes splits so every tile visited here has at least one column < vocab,
    # which keeps the running max finite after the first tile
    last_tile = tl.minimum(first_tile + tiles_per_split, tl.cdiv(vocab, BLOCK_V))
    for tile in range(first_tile, last_tile):
        cols = (tile * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
        col_ok = cols < vocab
        logits = _scaled_logits_tile(
            hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_ok, col_ok, hidden_size, stride_hidden,
            stride_weight, scale, HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST_OPERANDS,
        )
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
        target_logit += tl.sum(tl.where(cols[None, :] == targets[:, None], logits, 0.0), axis=1)
    out = split * n_tokens + rows
    tl.store(max_ptr + out, running_max, mask=row_ok)
    tl.store(sum_ptr + out, running_sum, mask=row_ok)
    tl.store(target_logit_ptr + out, target_logit, mask=row_ok)


@triton.jit
def _logit_grad_kernel(
    hidden_ptr, weight_ptr, bias_ptr, targets_ptr, lse_ptr, grad_ptr, dlogits_ptr,
    n_tokens, vocab, hidden_size, stride_hidden, stride_weight, stride_dlogits, scale,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_OPERANDS: tl.constexpr,
):
    # int64 offsets: chunk * vocab and vocab * H can pass 2^31
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    row_ok = rows < n_tokens
    col_ok = cols < vocab
    logits = _scaled_logits_tile(
        hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_ok, col_ok, hidden_size, stride_hidden, stride_weight,
        scale, HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST_OPERANDS,
    )
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    grad = tl.load(grad_ptr + rows, mask=row_ok, other=0.0)
    targets = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
    onehot = tl.where(cols[None, :] == targets[:, None], 1.0, 0.0)
    dlogits = grad[:, None] * (onehot - tl.exp(logits - lse[:, None]))
    tl.store(
        dlogits_ptr + rows[:, None] * stride_dlogits + cols[None, :],
        dlogits.to(dlogits_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


def _is_interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_forward_kernel, InterpretedFunction)


INTERPRETED = _is_interpreted()


def _launch_config(device: torch.device) -> dict:
    if device.type == "cpu":
        # interpreter: small tiles so the tests' odd shapes span several tiles and splits
        return dict(BLOCK_N=16, BLOCK_V=32, BLOCK_H=16, target_programs=4, num_warps=1)
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    return dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64, target_programs=4 * sm_count, num_warps=8)


def _dot_options(dtype: torch.dtype) -> dict:
    # The interpreter multiplies bf16 operands as their raw uint16 bits (triton-lang/triton#11584),
    # so there they are upcast first: bf16 products are exact in fp32, so the result is what the
    # GPU's bf16 dot with fp32 accumulation computes, up to summation order.
    upcast = INTERPRETED and dtype != torch.float32
    # fp32 inputs get exact fp32 products (tf32 would cost ~1e-3 relative on the logits);
    # None leaves bf16/fp16 dots at Triton's default
    precision = "ieee" if dtype == torch.float32 or upcast else None
    return dict(DOT_PRECISION=precision, UPCAST_OPERANDS=upcast)


def forward(hidden, weight, bias, targets, temperature):
    n_tokens, hidden_size = hidden.shape
    vocab = weight.shape[0]
    config = _launch_config(hidden.device)
    block_n, block_v = config["BLOCK_N"], config["BLOCK_V"]
    row_blocks = triton.cdiv(n_tokens, block_n)
    vocab_tiles = triton.cdiv(vocab, block_v)
    tiles_per_split = triton.cdiv(vocab_tiles, max(1, config["target_programs"] // row_blocks))
    n_splits = triton.cdiv(vocab_tiles, tiles_per_split)
    partial_max, partial_sum, partial_target = torch.empty(3, n_splits, n_tokens, dtype=torch.float32, device=hidden.device)
    _forward_kernel[(row_blocks, n_splits)](
        hidden, weight, hidden if bias is None else bias, targets, partial_max, partial_sum, partial_target,
        n_tokens, vocab, hidden_size, tiles_per_split, hidden.stride(0), weight.stride(0), 1.0 / temperature,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=config["BLOCK_H"],
        **_dot_options(hidden.dtype), num_warps=config["num_warps"],
    )
    overall_max = partial_max.amax(dim=0)
    lse = overall_max + (partial_sum * torch.exp(partial_max - overall_max)).sum(dim=0).log()
    # each target falls in exactly one split; the others contributed 0
    return partial_target.sum(dim=0) - lse, lse


def backward(grad_logps, hidden, weight, bias, targets, lse, temperature, needs_input_grad):
    need_hidden, need_weight, need_bias = needs_input_grad
    n_tokens, hidden_size = hidden.shape
    vocab = weight.shape[0]
    config = _launch_config(hidden.device)
    scale = 1.0 / temperature
    chunk = token_chunk_size(n_tokens, vocab, hidden.element_size())
    dlogits_buffer = torch.empty(chunk, vocab, dtype=hidden.dtype, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.empty_like(weight) if need_weight else None
    grad_bias = torch.empty(vocab, dtype=torch.float32, device=weight.device) if need_bias else None
    grad = grad_logps.float()
    for t0 in range(0, n_tokens, chunk):
        rows = slice(t0, t0 + chunk)
        hidden_chunk = hidden[rows]
        dlogits = dlogits_buffer[: hidden_chunk.shape[0]]
        grid = (triton.cdiv(hidden_chunk.shape[0], config["BLOCK_N"]), triton.cdiv(vocab, config["BLOCK_V"]))
        _logit_grad_kernel[grid](
            hidden_chunk, weight, hidden if bias is None else bias, targets[rows], lse[rows], grad[rows], dlogits,
            hidden_chunk.shape[0], vocab, hidden_size, hidden.stride(0), weight.stride(0), dlogits.stride(0), scale,
            HAS_BIAS=bias is not None, BLOCK_N=config["BLOCK_N"], BLOCK_V=config["BLOCK_V"],
            BLOCK_H=config["BLOCK_H"], **_dot_options(hidden.dtype), num_warps=config["num_warps"],
        )
        accumulate_logit_grads(
            dlogits, hidden_chunk, weight, scale,
            grad_hidden=None if grad_hidden is None else grad_hidden[rows],
            grad_weight=grad_weight, grad_bias=grad_bias, first_chunk=t0 == 0,
        )
    return grad_hidden, grad_weight, None if grad_bias is None else grad_bias.to(bias.dtype)
