"""The package `drift.kernels` (this folder, registered by drift/__init__.py: no __init__.py here, so
the folder never shadows the hub `kernels` package). Per-token log-probs from hidden states and the
lm_head weight, never building [tokens, vocab].

Public entry point: :func:`token_logprobs`. Layers, each testable alone:

- ``reference``: the plain torch definition (full logits, log_softmax, gather);
- ``chunked``, ``triton_logprobs``, ``flash_attn_logprobs``: implementations, each a
  ``forward``/``backward`` pair that recomputes logits in backward;
- ``function.TokenLogprobs``: the autograd.Function around any of them;
- ``dispatch``: input checks and the choice by device, dtype and what is installed.
"""

from .dispatch import IMPLS, resolve_impl, token_logprobs, unavailable_reason
from .reference import reference_token_logprobs

__all__ = ["IMPLS", "reference_token_logprobs", "resolve_impl", "token_logprobs", "unavailable_reason"]
