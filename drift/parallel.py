"""Process group, device, precision, and the module FSDP2 shards.

Order (torchtitan's): activation checkpointing (set when the model is loaded), then
``fully_shard`` on each decoder layer, then on the root. The root is :class:`SequenceLogprobModel`
so the fused log-prob head runs inside the root's forward, while FSDP has the lm_head unsharded.

Memory at scale (per rank, N ranks, P parameters; what benchmarks/memory_plan.py models):
- Loading (drift.train._build_policy): every rank builds the model with its parameters on the meta
  device (no storage; buffers such as rotary inv_freq are real and small). Only rank 0 reads the
  weights, into its host memory (fp32: 4P bytes of host memory for rank 0, none for the others).
  ``fully_shard`` then runs on the meta model (nothing is moved or copied), ``_materialize``
  allocates each rank's fp32 shard on the device (4P/N), and ``load_full_state`` broadcasts rank 0's
  tensors one at a time (transient: one full fp32 tensor on every device, the largest being the
  embedding or the head). A resumed stage skips rank 0's read: the checkpoint fills the shards.
  The reference fingerprint (drift.reference.weights_fingerprint) gathers the tensors the same
  way, one at a time.
- Training: fp32 master shards 4P/N; optimizer state shards (RMSprop 4P/N, AdamW 8P/N); gradients
  sharded fp32 4P/N. Forward and backward all-gather one decoder layer at a time in the compute
  dtype (bf16: 2 bytes x the layer's parameters), freed after it; the root's unit (embedding,
  head, final norm; FSDP does not reshard the root after its forward) stays gathered from the
  forward until its backward ends, and the fused head runs inside it. Backward reduce-scatters each
  unit's gradient in fp32 (reduce_dtype: a transient full fp32 gradient of one unit).
- Gradient accumulation (trainer.accumulate_sharded_grads=true, the default): every micro-batch
  reduce-scatters and FSDP adds the result into the sharded gradient, so no full gradient lives
  between micro-batches. =false skips the reduce-scatter on all but the last micro-batch, and FSDP
  then keeps an unsharded fp32 gradient of every parameter (4P per rank) until the step's last one.
- Reference (method.reference=initial, or a resumed stage whose cache misses): a second model
  built the same way (fp32 shards 4P/N, no gradients, no optimizer), freed before training starts.
- Checkpoints (drift.checkpoint): torch.distributed.checkpoint, every rank writes its own shards of
  weights and optimizer state; nothing is gathered. The stage's final model/ is gathered one
  tensor at a time (``full_tensor``, transient: one full fp32 tensor per device) and rank 0 keeps
  it on the host in the training dtype (bf16 on GPU: 2P bytes of host memory on rank 0).
- Sampler turn (drift.pipeline.sample_stage): the trainer drops the model, optimizer and FSDP
  state and empties the CUDA cache first; ranks > 0 then wait on a file marker (a sleep loop, no
  collective, no GPU kernel) while rank 0's sampler process has the GPUs. Every ``barrier`` runs
  on a gloo (CPU) group, so no barrier spins a kernel on a GPU.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from drift import kernels
from drift.compute_weights import ComputeWeights
from drift.io import write_text_atomic
from drift.tokenize import SequenceBatch

T = TypeVar("T")

# how long a rank waits for the others: rank 0 runs the sampler process between iterations
WAIT_TIMEOUT = timedelta(hours=6)
# barriers on the CPU (gloo): an NCCL barrier would spin a kernel on every GPU while it waits
_cpu_group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    dtype: torch.dtype  # compute dtype
    # the saved model's dtype (None: the compute dtype, as on GPU, where vLLM loads bf16); fp32 on a CPU
    # computing in bf16, where bf16 is for compute only: rounding the weights to bf16 after each stage
    # would move them about as much as an iteration does
    export_dtype: torch.dtype | None = None

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
            backend="nccl" if use_cuda else "gloo", device_id=target if use_cuda else None, timeout=WAIT_TIMEOUT
        )
    global _cpu_group
    if world_size > 1 and use_cuda and _cpu_group is None:
        _cpu_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    precision = resolve_precision(precision, use_cuda)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return Runtime(rank, world_size, local_rank, target, dtype, export_dtype=None if use_cuda else torch.float32)


def resolve_precision(precision: str, use_cuda: bool) -> str:
    """trainer.precision=auto: bf16 compute on GPU and on a CPU with native bf16, else fp32. bf16 is
    mixed precision everywhere: fp32 master weights and optimizer state, the model computing in bf16
    (FSDP's param_dtype under torchrun, drift.compute_weights in one process), the log-prob head's
    softmax in fp32."""
    from drift.backends import cpu_has_bf16

    if precision != "auto":
        return precision
    return "bf16" if use_cuda or cpu_has_bf16() else "fp32"


def barrier(runtime: Runtime) -> None:
    """Every rank here; on the CPU (gloo), so waiting ranks leave their GPUs idle."""
    if runtime.distributed:
        dist.barrier(group=_cpu_group)  # None: the default group, gloo already on CPU


def on_main_then_wait(runtime: Runtime, work: Callable[[], T]) -> T | None:
    """Rank 0 does ``work`` (a file write, say); every rank returns once it is done. The one place
    stages say "rank 0 does it, the others wait" for short work; long work (the sampler process,
    which holds the GPUs) goes through ``run_on_main``, whose waiting ranks run no collective."""
    result = work() if runtime.is_main else None
    barrier(runtime)
    return result


MAIN_READY = ".rank0-ready"
MAIN_FAILED = ".rank0-failed"


def run_on_main(runtime: Runtime, folder: Path, work: Callable[[], T], *, what: str,
                timeout_s: float = WAIT_TIMEOUT.total_seconds(), poll_s: float = 2.0) -> T | None:
    """Rank 0 runs ``work`` (its result is returned there, None elsewhere); the other ranks wait for
    its marker in ``folder`` by polling the file system: no collective runs while rank 0 works, so
    no GPU kernel spins and no collective timeout fires (the sampler process has the GPUs).

    When ``work`` raises, rank 0 writes the error beside the marker and the others raise too.
    """
    if not runtime.distributed:
        return work()
    folder = Path(folder)
    if runtime.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        for name in (MAIN_READY, MAIN_FAILED):
            (folder / name).unlink(missing_ok=True)
    barrier(runtime)  # every rank is here and no marker of an earlier run is left
    if not runtime.is_main:
        wait_for_main(folder, what=what, timeout_s=timeout_s, poll_s=poll_s)
        return None
    try:
        result = work()
    except BaseException as error:
        write_text_atomic(folder / MAIN_FAILED, f"{type(error).__name__}: {error}")
        raise
    write_text_atomic(folder / MAIN_READY, "")
    return result


def wait_for_main(folder: Path, *, what: str, timeout_s: float, poll_s: float = 2.0) -> None:
    """Return once rank 0's ready marker is in ``folder``; raise when it failed or after ``timeout_s``."""
    folder = Path(folder)
    deadline = time.monotonic() + timeout_s
    while True:
        if (folder / MAIN_FAILED).exists():
            reason = (folder / MAIN_FAILED).read_text().strip()
            raise RuntimeError(f"rank 0 failed while {what} ({reason}); its log has the details")
        if (folder / MAIN_READY).exists():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"waited {timeout_s:.0f} s for rank 0 {what}: no {folder / MAIN_READY} appeared; "
                f"check that rank 0 is alive (its log) and that {folder} is on a file system every rank sees"
            )
        time.sleep(poll_s)


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
        # one copy of a prompt its sequences share: our packed attention supports it (on every
        # backend); transformers' own flash-attn path (model.attn_implementation=flash_attention_2)
        # takes contiguous sequences only
        attention = use_packed_attention(causal_lm) if self.packed else None
        self.share_prompts = share_prompts and attention == PACKED_SDPA
        softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        if softcap:
            raise NotImplementedError(
                f"{type(causal_lm).__name__} caps its logits (final_logit_softcapping={softcap}); "
                "drift.kernels computes log-probs of uncapped logits"
            )

    # set by shard() for a single process computing in bf16 (FSDP's mixed precision does it under
    # torchrun): full-weight training computes on a bf16 copy of the fp32 weights (compute_weights);
    # LoRA, whose frozen base is already bf16 beside fp32 adapters, under autocast (autocast_dtype)
    compute_weights: ComputeWeights | None = None
    autocast_dtype: torch.dtype | None = None

    def computing(self):
        """The span in which the model computes in its compute dtype: a forward, and the backward that
        follows it (gradient checkpointing recomputes the forward inside the backward). The forward
        enters it itself; a caller that runs backward wraps both."""
        return self.compute_weights.swapped_in() if self.compute_weights is not None else nullcontext()

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        decoder = self.causal_lm.get_decoder()
        device_type = batch.input_ids.device.type
        with self.computing():
            with torch.autocast(device_type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
                hidden = decoder(**batch.model_inputs(), use_cache=False).last_hidden_state
            # the head runs outside autocast, in the dtype chosen here: on GPU the compute dtype (bf16:
            # tensor cores), not the fp32 the final norm hands back under autocast; on CPU the states'
            # own dtype: bf16 on the compute weights (the chunked kernel's bf16 GEMMs), fp32 under
            # autocast (its fp32 GEMMs). The kernels accumulate the log-softmax in fp32
            head = self.causal_lm.get_output_embeddings()
            compute_dtype = (self.autocast_dtype or hidden.dtype) if device_type == "cuda" else hidden.dtype
            scored = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_positions).to(compute_dtype)
            weight = head.weight.to(compute_dtype)
            bias = None if head.bias is None else head.bias.to(compute_dtype)
            return kernels.token_logprobs(scored, weight, batch.target_ids, bias=bias, impl=self.logprob_impl)


def shard(model: SequenceLogprobModel, runtime: Runtime, *, autocast: bool = False) -> SequenceLogprobModel:
    """FSDP2 over all ranks: each decoder layer its own unit, the root holds embeddings and head.

    The model may be on the meta device (``drift.model.build_model_skeleton``): its shards are then
    allocated on the device, uninitialized; ``load_full_state`` or a checkpoint fills them. A single
    process keeps fp32 master weights too and computes in the runtime dtype on a copy of them
    (drift.compute_weights), or under autocast where ``autocast`` says so (LoRA's mixed-dtype model).
    """
    if not runtime.distributed:
        model = model.to(runtime.device)
        if runtime.dtype != torch.float32:
            if autocast:
                model.autocast_dtype = runtime.dtype
            else:
                model.compute_weights = ComputeWeights(model, runtime.dtype)
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
    # master weights stay fp32; compute in the runtime dtype, reduce gradients in fp32
    precision = MixedPrecisionPolicy(param_dtype=runtime.dtype, reduce_dtype=torch.float32)
    # no model.to(device) first: fully_shard moves each unit's parameters itself, one unit at a time
    for layer in decoder_of(model.causal_lm).layers:
        fully_shard(layer, mesh=mesh, mp_policy=precision)
    fully_shard(model, mesh=mesh, mp_policy=precision)
    if any(parameter.is_meta for parameter in model.parameters()):
        _materialize(model, runtime.device)
    return model


def _materialize(model: nn.Module, device: torch.device) -> None:
    """Allocate the (sharded) meta parameters on ``device``; the real buffers survive ``to_empty``."""
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers() if not buffer.is_meta}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in buffers:
                buffer.copy_(buffers[name])


def load_full_state(model: nn.Module, full_state: dict[str, torch.Tensor] | None, runtime: Runtime) -> None:
    """Fill a sharded model from rank 0's full state dict (keys of ``model``), broadcast one tensor at
    a time; the other ranks pass None. Every key must match (strict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if runtime.is_main and full_state is None:
        raise ValueError("load_full_state: rank 0 must pass the full state dict")
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    set_model_state_dict(model, full_state if runtime.is_main else {}, options=options)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Whether this backward reduce-scatters; without it FSDP2 accumulates an unsharded fp32
    gradient until one that does (trainer.accumulate_sharded_grads=false uses that)."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)


def sequence_logps(model: SequenceLogprobModel, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response log-probs per sequence [rows], per-token log-probs [n])."""
    token_logps = model(batch)
    totals = torch.zeros(batch.num_sequences, dtype=token_logps.dtype, device=token_logps.device)
    return totals.index_add(0, batch.target_sequence, token_logps), token_logps
