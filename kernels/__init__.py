"""Per-token log-probs from hidden states and the lm_head weight, without building [tokens, vocab].

Public entry point: :func:`token_logprobs`. (Placeholder implementation: token-chunked and
recomputed in backward; the kernels issue replaces the internals, not the signature.)
"""

from __future__ import annotations

import torch

__all__ = ["token_logprobs"]

_TOKEN_CHUNK = 256


def _chunk_logprobs(hidden, weight, bias, targets, temperature):
    logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    logits = logits / temperature
    target_logits = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    return target_logits - torch.logsumexp(logits, dim=1)


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    impl: str = "auto",
) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for hidden [N, H], weight [V, H], targets [N] -> float32 [N].

    Positions where ``ignore_mask`` is True get 0 and no gradient.
    """
    safe_targets = targets if ignore_mask is None else targets.masked_fill(ignore_mask, 0)
    pieces = []
    for start in range(0, hidden.shape[0], _TOKEN_CHUNK):
        end = start + _TOKEN_CHUNK
        pieces.append(
            torch.utils.checkpoint.checkpoint(
                _chunk_logprobs, hidden[start:end], weight, bias, safe_targets[start:end], temperature,
                use_reentrant=False,
            )
        )
    logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    if ignore_mask is not None:
        logps = logps.masked_fill(ignore_mask, 0.0)
    return logps
