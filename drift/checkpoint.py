"""Checkpoints: the resumable state (torch.distributed.checkpoint) and the stage's final HF folder.

Layout of a training stage folder:
  checkpoint/            latest resumable state: trainer_state.json + state/ (torch.distributed.checkpoint:
                         every rank's shards of the fp32 weights and of the optimizer state, written
                         by that rank; nothing is gathered)
  model/                 the final policy, an HF folder (safetensors, loadable by AutoModelForCausalLM
                         and vLLM) in bf16 on GPU (the compute dtype), fp32 on a CPU, written when
                         the stage finishes
Every folder is written under a temp name and swapped in (drift.io.replace_dir), so a kill never
leaves half a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from drift import lora
from drift.io import replace_dir
from drift.model import save_hf_checkpoint
from drift.parallel import Runtime, barrier

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"
SHARDED_STATE = "state"  # torch.distributed.checkpoint folder inside checkpoint/
STAGING_PREFIX = ".checkpoint.tmp-"


@dataclass
class TrainerState:
    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    reference_fingerprint: str = ""
    reference_sequences: int = 0
    reference_seconds: float = 0.0


def _hf_state(model: nn.Module, state: dict) -> dict:
    """Wrapper keys -> HF keys; a tied head is the embedding, so it is not written twice."""
    state = {key.removeprefix("causal_lm."): value for key, value in state.items()}
    if getattr(model.causal_lm.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def gathered_state(model: nn.Module, runtime: Runtime, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The full state dict on rank 0's host, floating tensors cast to ``dtype`` (None: each kept in its
    own) ({} on the other ranks).

    One tensor at a time (a collective for a sharded one): the transient is one full fp32 tensor
    per device, and rank 0's host holds the model once, in ``dtype``.
    """
    from torch.distributed.tensor import DTensor

    gathered: dict[str, torch.Tensor] = {}
    done: dict[int, str] = {}  # a tied tensor is one object under two names (keep_vars): gather it once
    with torch.no_grad():
        for name, value in model.state_dict(keep_vars=True).items():
            if id(value) in done:
                if runtime.is_main:
                    gathered[name] = gathered[done[id(value)]]
                continue
            done[id(value)] = name
            full = value.full_tensor() if isinstance(value, DTensor) else value
            if runtime.is_main:
                gathered[name] = (full.to(dtype) if dtype is not None and full.is_floating_point() else full).detach().cpu()
    return gathered


def save_policy(model: nn.Module, tokenizer, folder: Path, runtime: Runtime, dtype: torch.dtype | None = None) -> None:
    """The policy alone, as an HF folder (what the sampler and the next iteration load), in ``dtype``
    (default: ``runtime.export_dtype``, else the training precision: bf16 on GPU, fp32 on a CPU whatever
    it computes in); a collective call.

    Under model.lora the folder holds the merged weights (a plain HF folder all the same), and the
    adapter alone goes beside it, a PEFT folder (drift.lora.ADAPTER) that the next stage continues.
    """
    dtype = dtype or runtime.export_dtype or runtime.dtype
    adapted = lora.is_adapted(model.causal_lm)
    # an adapter stays fp32 (and the frozen base in its own dtype) until the two are merged
    state = gathered_state(model, runtime, None if adapted else dtype)
    if runtime.is_main:
        state = _hf_state(model, state)
        if adapted:
            lora.save_adapter(model.causal_lm, state, Path(folder).parent / lora.ADAPTER)
            state = lora.merged_state(state, lora.scaling(model.causal_lm), dtype)
        save_hf_checkpoint(model.causal_lm, tokenizer, state, Path(folder), dtype=dtype)
    barrier(runtime)


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainerState, stage_dir: Path,
                    runtime: Runtime) -> Path:
    """Every rank writes its own shards of the weights and optimizer state into a temp folder, which
    rank 0 swaps in (drift.io.replace_dir) once all are written (with trainer_state.json); a
    collective call. The staging name is fixed (not drift.io.atomic_dir's random one) because
    every rank has to know it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    stage_dir = Path(stage_dir)
    staging = stage_dir / f"{STAGING_PREFIX}{state.global_step}"
    if runtime.is_main:
        for leftover in stage_dir.glob(f"{STAGING_PREFIX}*"):  # a save that was killed
            shutil.rmtree(leftover)
        staging.mkdir(parents=True)
    barrier(runtime)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    # returns on every rank once rank 0 has written the metadata, i.e. once every shard is on disk
    with _single_process_quiet(not runtime.distributed):
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=staging / SHARDED_STATE,
                 no_dist=not runtime.distributed)
    target = stage_dir / CHECKPOINT
    if runtime.is_main:
        (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        replace_dir(staging, target)
    barrier(runtime)
    return target


def find_checkpoint(stage_dir: Path) -> Path | None:
    """The latest complete checkpoint; a kill during the swap leaves it under ``checkpoint.old``."""
    for name in (CHECKPOINT, CHECKPOINT + ".old"):
        candidate = Path(stage_dir) / name
        if (candidate / STATE_FILE).exists():
            return candidate
    return None


def read_state(checkpoint: Path) -> TrainerState:
    return TrainerState(**json.loads((Path(checkpoint) / STATE_FILE).read_text()))


def load_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    """Fill the (sharded) model and its optimizer from ``checkpoint``: each rank reads its own shards,
    bit for bit what was saved. The model may hold anything before (uninitialized shards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = Path(checkpoint) / SHARDED_STATE
    if not (folder / ".metadata").exists():
        raise FileNotFoundError(
            f"{checkpoint} has no {SHARDED_STATE}/.metadata: it was written by an older drift (an HF folder with "
            f"optimizer.pt) or is damaged; start the stage again (delete {checkpoint}) or use a new run_name"
        )
    # the optimizer state is created here (a zero-lr step), so that there are tensors to load into
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    single = not (dist.is_available() and dist.is_initialized())
    with _single_process_quiet(single):
        dcp.load(state, checkpoint_id=folder, no_dist=single)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


@contextlib.contextmanager
def _single_process_quiet(single: bool):
    """A single process saves and loads without a process group on purpose: DCP's warning that it
    assumes so would otherwise print on every checkpoint of every CPU run."""
    with warnings.catch_warnings():
        if single:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
