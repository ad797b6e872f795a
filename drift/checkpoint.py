"""Checkpoints: HF folders (safetensors, loadable by AutoModelForCausalLM) plus the trainer state.

Layout of a training stage folder:
  checkpoint/            latest resumable state: HF model files + optimizer.pt + trainer_state.json
  model/                 the final policy (HF folder), written when the stage finishes
Every folder is written under a temp name and renamed in, so a kill never leaves half a checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from drift.model import save_hf_checkpoint
from drift.parallel import Runtime, barrier

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class TrainerState:
    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    reference_fingerprint: str = ""
    reference_sequences: int = 0
    reference_seconds: float = 0.0


def _full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None):
    """Full (unsharded) CPU state dicts, gathered from every rank; a collective call."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return model_state, optimizer_state


def _hf_state(model: nn.Module, state: dict) -> dict:
    """Wrapper keys -> HF keys; a tied head is the embedding, so it is not written twice."""
    state = {key.removeprefix("causal_lm."): value for key, value in state.items()}
    if getattr(model.causal_lm.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def save_policy(model: nn.Module, tokenizer, folder: Path, runtime: Runtime) -> None:
    """The policy alone, as an HF folder (what the sampler and the next iteration load)."""
    model_state, _ = _full_state_dicts(model, None)
    if runtime.is_main:
        save_hf_checkpoint(model.causal_lm, tokenizer, _hf_state(model, model_state), Path(folder))
    barrier(runtime)


def save_checkpoint(model: nn.Module, optimizer, tokenizer, state: TrainerState, stage_dir: Path, runtime: Runtime) -> Path:
    from drift.model import replace_dir
    import tempfile

    model_state, optimizer_state = _full_state_dicts(model, optimizer)
    target = Path(stage_dir) / CHECKPOINT
    if runtime.is_main:
        staging = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=stage_dir))
        model.causal_lm.save_pretrained(staging, state_dict=_hf_state(model, model_state), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        torch.save(optimizer_state, staging / OPTIMIZER_FILE)
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


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(Path(checkpoint) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
