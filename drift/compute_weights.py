"""Mixed precision for a single process: forward and backward run on a bf16 copy of the fp32 master weights.

Under torchrun, FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16)`` does this: each layer is gathered in
bf16, the whole model computes in bf16 (the norms upcast inside themselves), and the bf16 gradients
are reduced into fp32 gradients of the fp32 shards. One process (a CPU, one GPU) gets the same
numerics here without a process group. The model keeps its fp32 parameters, so the optimizer, the
checkpoints, the export and the reference fingerprint see only them; ``ComputeWeights.swapped_in``
puts a bf16 copy into the modules for the span of a forward and its backward (gradient checkpointing
recomputes the forward inside the backward, so the span must hold both). As backward finishes each
copy's gradient, a hook adds it into its master's fp32 ``.grad`` and frees it, so micro-batches
accumulate in fp32 and no second full gradient lives beside the master's. The fp32 gradients live in
buffers kept from step to step (the optimizer's ``zero_grad(set_to_none=True)`` only lets go of
them): a fresh 4-bytes-a-parameter allocation every step costs page faults, 0.15 s a step for
SmolLM2-135M here, and the process's peak is the same either way.

Why not autocast, which this replaced for full-weight training: autocast keeps the residual stream,
the norms and every elementwise op in fp32 and casts each matmul's input to bf16 per call, forward
and backward, and saves both roundings for backward. On SmolLM2-135M on this repository's 2-core
CPU, the same pair's forward and backward took about as long either way (2.2-2.4 s), with 0.75 GB
less memory on bf16 weights (docs/performance.md has the trainer-level figures).

A copy is remade, tensor by tensor, when its master changed since it was made (the optimizer step
and a checkpoint load write the masters in place, which bumps their version counter), so no caller
has to say when.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from torch import nn


class ComputeWeights:
    """Copies of every parameter of ``module`` in ``dtype``, swapped in on demand."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        self.dtype = dtype
        # every (module, name) slot holding a parameter: tied weights (embedding and head) are two slots
        # of one master, which get one copy, so both uses add into one gradient
        self.slots = [
            (owner, name, master) for owner in module.modules() for name, master in owner._parameters.items() if master is not None
        ]
        self._copies: dict[int, nn.Parameter] = {}
        self._grad_buffers: dict[int, torch.Tensor] = {}
        self._versions: dict[int, int] = {}
        self._active = False

    def copy_of(self, master: nn.Parameter) -> nn.Parameter:
        key = id(master)
        copy = self._copies.get(key)
        if copy is None:
            copy = nn.Parameter(master.detach().to(self.dtype), requires_grad=master.requires_grad)
            copy.register_post_accumulate_grad_hook(partial(self._add_into_master, master))
            self._copies[key] = copy
        elif self._versions[key] != master._version:
            with torch.no_grad():
                copy.copy_(master)
        copy.requires_grad_(master.requires_grad)
        self._versions[key] = master._version
        return copy

    def _add_into_master(self, master: nn.Parameter, copy: nn.Parameter) -> None:
        """The copy's finished gradient added into the master's, in the master's dtype (fp32 accumulation)."""
        if master.grad is None:  # the step's first backward: write, upcasting, into the kept buffer
            buffer = self._grad_buffers.get(id(master))
            if buffer is None:
                buffer = self._grad_buffers[id(master)] = torch.empty_like(master)
            master.grad = buffer.copy_(copy.grad)
        else:
            master.grad.add_(copy.grad)  # upcast element by element, no fp32 temporary
        copy.grad = None

    @contextmanager
    def swapped_in(self):
        """The modules hold the copies inside; the masters again after. Nested use is the outer one's."""
        if self._active:
            yield
            return
        self._active = True
        try:
            for owner, name, master in self.slots:
                owner._parameters[name] = self.copy_of(master)
            yield
        finally:
            for owner, name, master in self.slots:
                owner._parameters[name] = master
            self._active = False
