"""Process group, device, precision, and the module FSDP2 shards.

Order (torchtitan's): activation checkpointing (set when the model is loaded), then
``fully_shard`` on each decoder layer, then on the root. The root is :class:`SequenceLogprobModel`
so the fused log-prob head runs inside the root's forward, while FSDP has the lm_head unsharded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from drift import kernels
from drift.tokenize import SequenceBatch


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    dtype: torch.dtype  # compute dtype

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Single process, or one rank of torchrun (gloo on CPU, NCCL on GPU)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # long timeout: the other ranks wait while rank 0 runs the sampler process between iterations
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", device_id=target if use_cuda else None, timeout=timedelta(hours=6)
        )
    if precision == "auto":
        precision = "bf16" if use_cuda else "fp32"
    if precision == "bf16" and not use_cuda:
        raise RuntimeError("trainer.precision=bf16 needs a GPU here; use trainer.precision=fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return Runtime(rank, world_size, local_rank, target, dtype)


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def gather_objects(items: list, runtime: Runtime) -> list:
    """Every rank's list, concatenated in rank order (on every rank)."""
    if not runtime.distributed:
        return items
    gathered: list[list] = [None] * runtime.world_size  # type: ignore[list-item]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def all_reduce_sum(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def decoder_of(causal_lm: nn.Module) -> nn.Module:
    decoder = causal_lm.get_decoder()
    if not hasattr(decoder, "layers"):
        raise TypeError(f"{type(causal_lm).__name__}: expected its decoder to hold .layers to shard")
    return decoder


class SequenceLogprobModel(nn.Module):
    """Backbone + fused log-prob head: returns log p(target) for each scored position, never logits."""

    def __init__(self, causal_lm: nn.Module, logprob_impl: str = "auto", packed: bool = True, share_prompts: bool = True):
        super().__init__()
        from drift.packing import PACKED_SDPA, supports_packing, use_packed_attention

        self.causal_lm = causal_lm
        self.logprob_impl = logprob_impl
        # padding-free rows where the model's attention allows it
        self.packed = packed and supports_packing(causal_lm.config)
        # one copy of a prompt its sequences share: our packed SDPA supports it, flash-attn's
        # varlen kernel (contiguous sequences only) does not
        attention = use_packed_attention(causal_lm) if self.packed else None
        self.share_prompts = share_prompts and attention == PACKED_SDPA
        softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        if softcap:
            raise NotImplementedError(
                f"{type(causal_lm).__name__} caps its logits (final_logit_softcapping={softcap}); "
                "drift.kernels computes log-probs of uncapped logits"
            )

    # set by shard() for a single process computing in bf16 (FSDP's mixed precision does it otherwise)
    autocast_dtype: torch.dtype | None = None

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        decoder = self.causal_lm.get_decoder()
        device_type = batch.input_ids.device.type
        with torch.autocast(device_type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            hidden = decoder(**batch.model_inputs(), use_cache=False).last_hidden_state
        head = self.causal_lm.get_output_embeddings()
        scored = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_positions)
        weight = head.weight.to(scored.dtype)
        bias = None if head.bias is None else head.bias.to(scored.dtype)
        return kernels.token_logprobs(scored, weight, batch.target_ids, bias=bias, impl=self.logprob_impl)


def shard(model: SequenceLogprobModel, runtime: Runtime) -> SequenceLogprobModel:
    """FSDP2 over all ranks: each decoder layer its own unit, the root holds embeddings and head."""
    if not runtime.distributed:
        # fp32 master weights here too; compute in the runtime dtype under autocast
        model.autocast_dtype = runtime.dtype if runtime.dtype != torch.float32 else None
        return model.to(runtime.device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
    # master weights stay fp32; compute in the runtime dtype, reduce gradients in fp32
    precision = MixedPrecisionPolicy(param_dtype=runtime.dtype, reduce_dtype=torch.float32)
    model.to(runtime.device)
    for layer in decoder_of(model.causal_lm).layers:
        fully_shard(layer, mesh=mesh, mp_policy=precision)
    fully_shard(model, mesh=mesh, mp_policy=precision)
    return model


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip the reduce-scatter on all but the last micro-batch of an accumulated step."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)


def sequence_logps(model: SequenceLogprobModel, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response log-probs per sequence [rows], per-token log-probs [n])."""
    token_logps = model(batch)
    totals = torch.zeros(batch.num_sequences, dtype=token_logps.dtype, device=token_logps.device)
    return totals.index_add(0, batch.target_sequence, token_logps), token_logps
