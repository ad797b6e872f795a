"""Pieces more than one implementation needs."""

from __future__ import annotations

import torch

# Upper bound on the [token_chunk, vocab] buffer the GPU paths (Triton backward, flash-attn)
# materialise per chunk: large enough for efficient matmuls, small next to the full logits.
CHUNK_BUDGET_BYTES = 256 * 2**20


def token_chunk_size(n_tokens: int, vocab: int, element_bytes: int) -> int:
    """Tokens per chunk so that a [chunk, vocab] buffer stays within CHUNK_BUDGET_BYTES."""
    return max(1, min(n_tokens, CHUNK_BUDGET_BYTES // (vocab * element_bytes)))


def logits_into(
    out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """out = (hidden @ weight.T + bias) * scale, written in place (the scale rides on addmm's alpha)."""
    if bias is None:
        return torch.addmm(out, hidden, weight.t(), beta=0, alpha=scale, out=out)
    return torch.addmm(bias, hidden, weight.t(), beta=scale, alpha=scale, out=out)


def accumulate_logit_grads(
    dlogits: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    scale: float,
    *,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
    first_chunk: bool,
) -> None:
    """Chain dlogits (grad w.r.t. the scaled logits of one token chunk) back through the head.

    grad_hidden is this chunk's rows (written); grad_weight and grad_bias span the whole vocab
    and accumulate over chunks (the first chunk overwrites, so they need no zero fill).
    """
    if grad_hidden is not None:
        torch.addmm(grad_hidden, dlogits, weight, beta=0, alpha=scale, out=grad_hidden)
    if grad_weight is not None:
        grad_weight.addmm_(dlogits.t(), hidden, beta=0 if first_chunk else 1, alpha=scale)
    if grad_bias is not None:
        chunk_sum = dlogits.sum(0, dtype=grad_bias.dtype)
        if first_chunk:
            torch.mul(chunk_sum, scale, out=grad_bias)
        else:
            grad_bias.add_(chunk_sum, alpha=scale)
