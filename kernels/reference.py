"""The plain torch definition every implementation in this package must agree with.

It builds the full [tokens, vocab] logits, which is exactly what the other implementations exist
to avoid; it serves as the spec, as the "naive" row of the benchmark, and (run in fp64) as the
yardstick the benchmark measures errors against.
"""

from __future__ import annotations

import torch


def reference_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log_softmax((hidden @ weight.T + bias) / temperature)[i, targets[i]], 0 where ignored.

    Computes in fp32, or fp64 when the inputs are fp64.
    """
    compute_dtype = torch.promote_types(hidden.dtype, torch.float32)
    logits = hidden.to(compute_dtype) @ weight.to(compute_dtype).t()
    if bias is not None:
        logits = logits + bias.to(compute_dtype)
    logits = logits / temperature
    # ignored positions may hold any id (e.g. -100); gather needs an in-range one
    safe_targets = targets if ignore_mask is None else targets.masked_fill(ignore_mask, 0)
    logps = torch.log_softmax(logits, dim=-1).gather(1, safe_targets.unsqueeze(1)).squeeze(1)
    if ignore_mask is not None:
        logps = logps.masked_fill(ignore_mask, 0.0)
    return logps
