"""flash-attn implementation: its Triton cross-entropy kernel, applied one token chunk at a time.

Per chunk, the logits are computed by a library matmul in the input dtype and handed to
flash-attn's ``cross_entropy_loss`` (loss = lse - target logit). The backward recomputes the
chunk and lets flash-attn write the logit gradient over the logits in place
(``inplace_backward``), reusing the forward's logsumexp, so one [chunk, vocab] buffer is all
it holds. Needs the ``gpu`` extra (bash launch/setup_env.sh --gpu) and CUDA tensors.
"""

from __future__ import annotations

import torch

from ._common import accumulate_logit_grads, logits_into, token_chunk_size


def _cross_entropy_loss():
    # imported on use: importing flash_attn loads its CUDA extension
    from flash_attn.ops.triton.cross_entropy import cross_entropy_loss

    return cross_entropy_loss


def _chunks(n_tokens: int, vocab: int, hidden: torch.Tensor):
    chunk = token_chunk_size(n_tokens, vocab, hidden.element_size())
    buffer = torch.empty(chunk, vocab, dtype=hidden.dtype, device=hidden.device)
    for t0 in range(0, n_tokens, chunk):
        rows = slice(t0, t0 + chunk)
        yield rows, buffer[: hidden[rows].shape[0]]


def forward(hidden, weight, bias, targets, temperature):
    cross_entropy_loss = _cross_entropy_loss()
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    scale = 1.0 / temperature
    logps = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
    lse = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
    for rows, logits in _chunks(n_tokens, vocab, hidden):
        # the temperature is applied to the logits here rather than through flash-attn's
        # logit_scale, because flash-attn only accepts a precomputed lse when logit_scale == 1
        logits_into(logits, hidden[rows], weight, bias, scale)
        losses, _ = cross_entropy_loss(logits, targets[rows])
        logps[rows] = -losses
        # losses = lse - target logit in fp32; adding the target logit back gives the lse the
        # backward hands to flash-attn so it skips its logsumexp pass
        lse[rows] = losses + logits.gather(1, targets[rows].unsqueeze(1)).squeeze(1).float()
    return logps, lse


def backward(grad_logps, hidden, weight, bias, targets, lse, temperature, needs_input_grad):
    cross_entropy_loss = _cross_entropy_loss()
    need_hidden, need_weight, need_bias = needs_input_grad
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    scale = 1.0 / temperature
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.empty_like(weight) if need_weight else None
    grad_bias = torch.empty(vocab, dtype=torch.float32, device=weight.device) if need_bias else None
    for rows, logits in _chunks(n_tokens, vocab, hidden):
        logits_into(logits, hidden[rows], weight, bias, scale)
        logits.requires_grad_(True)
        with torch.enable_grad():
            losses, _ = cross_entropy_loss(logits, targets[rows], precomputed_lse=lse[rows], inplace_backward=True)
            # d logp = -d loss; autograd.grad hands back flash-attn's in-place gradient itself
            # (an alias of the logits buffer), where .backward() might copy it into .grad
            (dlogits,) = torch.autograd.grad(losses, logits, grad_outputs=-grad_logps[rows])
        logits.requires_grad_(False)
        accumulate_logit_grads(
            dlogits, hidden[rows], weight, scale,
            grad_hidden=None if grad_hidden is None else grad_hidden[rows],
            grad_weight=grad_weight, grad_bias=grad_bias, first_chunk=rows.start == 0,
        )
    return grad_hidden, grad_weight, None if grad_bias is None else grad_bias.to(bias.dtype)
