"""The autograd wrapper shared by every implementation.

An implementation is a module with two functions (see chunked.py for the contract):
``forward(hidden, weight, bias, targets, temperature) -> (logps float32 [N], lse [N])`` and
``backward(grad_logps, hidden, weight, bias, targets, lse, temperature, needs_input_grad)
-> (grad_hidden, grad_weight, grad_bias)``. Only the per-token logsumexp is saved between them;
the backward recomputes the logits.
"""

from __future__ import annotations

import torch


class TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, implementation):
        ctx.temperature = temperature
        ctx.implementation = implementation
        if hidden.shape[0] == 0:
            # every position ignored: the implementations need not handle empty inputs
            ctx.save_for_backward(hidden, weight, bias, None, None)
            return torch.zeros(0, dtype=torch.float32, device=hidden.device)
        logps, lse = implementation.forward(hidden, weight, bias, targets, temperature)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        needs_input_grad = tuple(ctx.needs_input_grad[:3])
        if hidden.shape[0] == 0:
            grads = tuple(torch.zeros_like(t) if need else None for t, need in zip((hidden, weight, bias), needs_input_grad))
        else:
            grads = ctx.implementation.backward(
                grad_logps.contiguous(), hidden, weight, bias, targets, lse, ctx.temperature, needs_input_grad
            )
        return (*grads, None, None, None)
