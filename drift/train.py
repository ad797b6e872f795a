"""One DPO training stage: a plain loop, top to bottom, the same single-process and under torchrun.

get the step's pairs -> forward chosen+rejected in one batch -> DPO + NLL loss -> backward
(accumulating) -> clip -> check finite -> step -> log -> maybe checkpoint.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from drift.checkpoint import CHECKPOINT, TrainerState, find_checkpoint, load_optimizer, read_state, save_checkpoint, save_policy
from drift.config import Config
from drift.loss import dpo_loss
from drift.metrics import MetricsLog
from drift.model import load_model
from drift.parallel import (
    Runtime, SequenceLogprobModel, all_reduce_sum, barrier, gather_objects, sequence_logps, set_gradient_sync, shard,
)
from drift.reference import ReferenceCache, compute_sequence_logps, known_fingerprint, remember_fingerprint, weights_fingerprint
from drift.tokenize import TokenizedPair, collate_sequences

DONE = "done"


class NonFiniteError(RuntimeError):
    """The loss or the gradient is not finite; raised before the optimizer step or any checkpoint."""


# ---- pure pieces: schedule, data order, micro-batch assignment ---------------------------------


def lr_at(step: int, total_steps: int, base_lr: float, warmup_ratio: float, schedule: str) -> float:
    """The schedule of HF's Trainer, which the paper's code ran: linear warmup over ceil(ratio * total)
    steps starting from 0 (so the first step does not move the weights), then linear/cosine decay to 0."""
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return base_lr * step / warmup
    if schedule == "constant":
        return base_lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    return base_lr * max(0.0, 1 - progress)


def epoch_order(num_pairs: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(num_pairs, generator=generator).tolist()


def plan_forwards(
    step_pairs: list[int], pair_tokens: list[int], world_size: int, accum_steps: int, max_tokens_per_forward: int
) -> list[list[list[int]]]:
    """For every rank, the pair indices of each forward/backward it runs this step.

    The step's pairs are dealt round-robin over (micro-step, rank) slots; a slot whose pairs exceed
    the token budget is split into several forwards (at least one pair each). Every rank computes
    every rank's plan from the same inputs, so all run the same number of forwards, as FSDP's
    collectives require: a rank with fewer gets empty forwards, run on a zero-weight pair.
    """
    slots = [[] for _ in range(world_size * accum_steps)]
    for position, pair_index in enumerate(step_pairs):
        slots[position % len(slots)].append(pair_index)
    plans = []
    for rank in range(world_size):
        forwards = []
        for micro in range(accum_steps):
            chunk, tokens = [], 0
            for pair_index in slots[micro * world_size + rank]:
                if chunk and max_tokens_per_forward and tokens + pair_tokens[pair_index] > max_tokens_per_forward:
                    forwards.append(chunk)
                    chunk, tokens = [], 0
                chunk.append(pair_index)
                tokens += pair_tokens[pair_index]
            forwards.append(chunk)
        plans.append(forwards)
    longest = max(len(forwards) for forwards in plans)
    return [forwards + [[] for _ in range(longest - len(forwards))] for forwards in plans]


def build_optimizer(name: str, parameters: list, lr: float) -> torch.optim.Optimizer:
    # torch defaults, as HF's optim="rmsprop" / "adamw_torch" use them; sgd is linear in the
    # gradient, which makes it the sharpest check that two setups compute the same gradient
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    return torch.optim.SGD(parameters, lr=lr)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- the stage ----------------------------------------------------------------------------------


@dataclass
class Stage:
    """What to train: the pairs, where to start, which model is the reference, for how long."""

    name: str
    folder: Path
    pairs: list[TokenizedPair]
    init_source: str | None  # None: the configured model
    reference_source: str | None  # None: the same as init_source (policy at the stage's start)
    epochs: int
    reference_cache_dir: Path


def _build_policy(config: Config, runtime: Runtime, source: str | None, vocab_size: int) -> SequenceLogprobModel:
    causal_lm = load_model(config.model, dtype=torch.float32, seed=config.trainer.seed, source=source, vocab_size=vocab_size)
    return SequenceLogprobModel(
        causal_lm, config.trainer.logprob_impl, packed=config.trainer.packing, share_prompts=config.trainer.share_prompts
    )


def _ensure_reference(config, runtime, stage: Stage, policy, fresh_start: bool, state: TrainerState, tokenizer) -> ReferenceCache:
    """Fill the on-disk cache for every sequence of the stage; a separate reference model is freed after.

    On a fresh start whose reference is the starting policy, the (already sharded) policy itself
    runs the reference forwards: it has not moved yet, so no second model is loaded.
    """
    sequences = [seq for pair in stage.pairs for seq in (pair.chosen, pair.rejected)]
    batch_size = 2 * config.trainer.per_device_batch_size
    pad_id = tokenizer.pad_token_id
    source = stage.reference_source if stage.reference_source is not None else stage.init_source
    if not state.reference_fingerprint and source is not None:
        # e.g. method.reference=initial: the initial model's fingerprint is known from an earlier stage
        state.reference_fingerprint = known_fingerprint(stage.reference_cache_dir, source) or ""
    if state.reference_fingerprint:
        cache = ReferenceCache(stage.reference_cache_dir, state.reference_fingerprint)
        missing = cache.missing(sequences)
        if not missing:
            return cache
        if fresh_start and _reference_is_start(stage):
            cache.update(compute_sequence_logps(policy, missing, runtime, batch_size=batch_size, pad_id=pad_id), runtime)
            state.reference_sequences += len(missing)
            return cache
    reference = _build_policy(config, runtime, source, len(tokenizer))
    fingerprint = weights_fingerprint(reference.causal_lm, runtime)
    if source is not None:
        remember_fingerprint(stage.reference_cache_dir, source, fingerprint, runtime)
    if state.reference_fingerprint and state.reference_fingerprint != fingerprint:
        raise RuntimeError(
            f"stage {stage.name}: the reference model at {source!r} changed since this run started "
            f"(fingerprint {fingerprint} != {state.reference_fingerprint}); start a new run_name"
        )
    reference.requires_grad_(False)
    reference = shard(reference, runtime)
    cache = ReferenceCache(stage.reference_cache_dir, fingerprint)
    missing = cache.missing(sequences)
    if missing:
        cache.update(compute_sequence_logps(reference, missing, runtime, batch_size=batch_size, pad_id=pad_id), runtime)
        state.reference_sequences += len(missing)
    del reference
    state.reference_fingerprint = fingerprint
    return cache


def _reference_is_start(stage: Stage) -> bool:
    return stage.reference_source is None or stage.reference_source == stage.init_source


def _oom_advice(error: Exception, config: Config) -> RuntimeError:
    t = config.trainer
    return RuntimeError(
        f"out of memory ({error}). Lower trainer.per_device_batch_size (now {t.per_device_batch_size}) and raise "
        f"trainer.grad_accum_steps to keep the global batch, set trainer.max_tokens_per_forward (now "
        f"{t.max_tokens_per_forward}; it splits each micro-batch), lower trainer.max_length (now {t.max_length}), or "
        f"turn on model.gradient_checkpointing=true (now {config.model.gradient_checkpointing})"
    )


def train_stage(config: Config, runtime: Runtime, stage: Stage, tokenizer, run_config: dict | None = None) -> Path:
    """Train one stage to completion (resuming if it was interrupted); returns the final model folder."""
    final_model = stage.folder / "model"
    if (stage.folder / DONE).exists():
        return final_model
    stage.folder.mkdir(parents=True, exist_ok=True)
    t, m = config.trainer, config.method
    checkpoint = find_checkpoint(stage.folder)
    if checkpoint is not None and not config.resume:
        raise RuntimeError(f"{stage.folder} already holds a checkpoint; pass resume=true to continue it or choose another run_name")
    state = read_state(checkpoint) if checkpoint is not None else TrainerState()

    policy = _build_policy(config, runtime, str(checkpoint) if checkpoint else stage.init_source, len(tokenizer))
    if checkpoint is None and _reference_is_start(stage):
        # fingerprint the full weights before sharding; the starting policy is the reference
        state.reference_fingerprint = weights_fingerprint(policy.causal_lm, runtime)
        if stage.init_source is not None:
            remember_fingerprint(stage.reference_cache_dir, stage.init_source, state.reference_fingerprint, runtime)
    policy = shard(policy, runtime)
    # the optimizer must see the sharded parameters: build it before any forward unshards them
    parameters = [p for p in policy.parameters() if p.requires_grad]
    optimizer = build_optimizer(t.optimizer, parameters, t.lr)
    if checkpoint is not None:
        load_optimizer(policy, optimizer, checkpoint)
    reference_started = time.perf_counter()
    cache = _ensure_reference(config, runtime, stage, policy, checkpoint is None, state, tokenizer)
    state.reference_seconds += time.perf_counter() - reference_started
    policy.train()

    pairs = stage.pairs
    pair_tokens = [len(pair.chosen) + len(pair.rejected) for pair in pairs]
    global_batch = t.per_device_batch_size * runtime.world_size * t.grad_accum_steps
    steps_per_epoch = math.ceil(len(pairs) / global_batch)
    total_steps = steps_per_epoch * stage.epochs
    metrics = MetricsLog(
        stage.folder / "metrics.jsonl", config.logging, enabled=runtime.is_main,
        run_name=f"{config.run_name}-{stage.name}", config=run_config, resume_after_step=state.global_step,
    )
    progress = None
    if runtime.is_main and config.logging.progress_bar:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=state.global_step, desc=stage.name, dynamic_ncols=True)
    # fault injection for resume tests: DRIFT_KILL_AFTER_STEP=<stage>:<step> SIGKILLs this process
    # right after that step's checkpoint is written
    kill_stage, _, kill_step = os.environ.get("DRIFT_KILL_AFTER_STEP", "").partition(":")
    kill_after = int(kill_step) if kill_stage == stage.name and kill_step else 0

    while state.global_step < total_steps:
        epoch, step_in_epoch = divmod(state.global_step, steps_per_epoch)
        order = epoch_order(len(pairs), t.seed, epoch)
        step_pairs = order[step_in_epoch * global_batch : (step_in_epoch + 1) * global_batch]
        # normalizers for the whole global step, known to every rank without communication
        num_pairs = len(step_pairs)
        num_chosen_tokens = sum(len(pairs[i].chosen.response_ids) for i in step_pairs)
        started = time.perf_counter()
        sums = torch.zeros(10, dtype=torch.float64)
        pair_rows = []  # per-pair terms of this rank's pairs, for pair_metrics.jsonl
        micro_batches = plan_forwards(step_pairs, pair_tokens, runtime.world_size, t.grad_accum_steps, t.max_tokens_per_forward)[runtime.rank]
        try:
            for micro_index, indices in enumerate(micro_batches):
                # an empty slot still runs forward/backward (FSDP collectives) on a zero-weight pair
                weight = 1.0 if indices else 0.0
                indices = indices or [step_pairs[0]]
                chosen = [pairs[i].chosen for i in indices]
                rejected = [pairs[i].rejected for i in indices]
                batch = collate_sequences(
                    chosen + rejected, tokenizer.pad_token_id, packed=policy.packed, share_prompts=policy.share_prompts
                ).to(runtime.device)
                set_gradient_sync(policy, micro_index == len(micro_batches) - 1)
                totals, token_logps = sequence_logps(policy, batch)
                k = len(indices)
                reference_chosen = torch.tensor([cache.lookup(s) for s in chosen], dtype=totals.dtype, device=totals.device)
                reference_rejected = torch.tensor([cache.lookup(s) for s in rejected], dtype=totals.dtype, device=totals.device)
                terms = dpo_loss(totals[:k], totals[k:], reference_chosen, reference_rejected, m.beta)
                chosen_token_logp_sum = token_logps[batch.target_sequence < k].sum()
                # FSDP averages gradients over ranks, hence the world_size factor: the result is the
                # mean over the global step's pairs (and chosen tokens for the NLL term)
                loss = weight * runtime.world_size * (
                    terms.losses.sum() / num_pairs - m.rpo_alpha * chosen_token_logp_sum / num_chosen_tokens
                )
                loss.backward()
                if weight:
                    pair_rows.extend(
                        {"pair_id": pairs[i].pair_id, "logit": s, "chosen_reward": c, "rejected_reward": r}
                        for i, s, c, r in zip(
                            indices, terms.logits.tolist(), terms.chosen_rewards.tolist(), terms.rejected_rewards.tolist()
                        )
                    )
                sums += weight * torch.tensor(
                    [
                        terms.losses.detach().sum().item(),
                        terms.chosen_rewards.sum().item(),
                        terms.rejected_rewards.sum().item(),
                        terms.margins.sum().item(),
                        (terms.margins > 0).sum().item(),
                        terms.gradient_weights.sum().item(),
                        -chosen_token_logp_sum.item(),
                        batch.num_tokens,
                        batch.num_padding,
                        k,
                    ],
                    dtype=torch.float64,
                )
        except torch.OutOfMemoryError as error:
            raise _oom_advice(error, config) from error
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, t.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        sums = all_reduce_sum(sums.to(runtime.device), runtime).cpu()
        loss_value = sums[0].item() / num_pairs
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            pair_ids = [pairs[i].pair_id for i in step_pairs]
            raise NonFiniteError(
                f"stage {stage.name}, step {state.global_step} (epoch {epoch}, batch {step_in_epoch}): "
                f"loss={loss_value}, grad_norm={grad_norm}; pairs {pair_ids}. Nothing was saved for this step; "
                f"lower trainer.lr or check these pairs"
            )
        lr = lr_at(state.global_step, total_steps, t.lr, t.warmup_ratio, t.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        state.epoch, state.step_in_epoch = divmod(state.global_step, steps_per_epoch)
        seconds = time.perf_counter() - started
        record = {
            "stage": stage.name,
            "step": state.global_step,
            "epoch": epoch,
            "loss": loss_value,
            "nll": sums[6].item() / max(1, num_chosen_tokens),
            "chosen_reward": sums[1].item() / num_pairs,
            "rejected_reward": sums[2].item() / num_pairs,
            "margin": sums[3].item() / num_pairs,
            "accuracy": sums[4].item() / num_pairs,
            "gradient_weight": sums[5].item() / num_pairs,
            "grad_norm": grad_norm,
            "lr": lr,
            "pairs": int(sums[9].item()),
            "tokens": int(sums[7].item()),
            "padding_share": sums[8].item() / max(1.0, sums[7].item() + sums[8].item()),
            "tokens_per_second": sums[7].item() / seconds,
            "seconds": seconds,
            "peak_memory_gb": peak_memory_bytes(runtime.device) / 1e9,
        }
        metrics.log(record)
        metrics.log_pairs(state.global_step, epoch, gather_objects(pair_rows, runtime))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", margin=f"{record['margin']:.4f}", acc=f"{record['accuracy']:.2f}")
        end_of_epoch = state.global_step % steps_per_epoch == 0
        if (t.save_every_steps and state.global_step % t.save_every_steps == 0) or (end_of_epoch and state.global_step < total_steps):
            save_checkpoint(policy, optimizer, tokenizer, state, stage.folder, runtime)
            if kill_after and state.global_step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    if progress is not None:
        progress.close()
    metrics.close()
    save_policy(policy, tokenizer, final_model, runtime)
    # the sampler process runs next and needs the memory: drop weights and optimizer state now
    del optimizer, parameters, policy
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
    if runtime.is_main:
        summary = {
            "steps": state.global_step,
            "pairs": len(pairs),
            "reference_fingerprint": state.reference_fingerprint,
            # sequences the frozen reference actually ran (cache misses), and the time it took
            "reference_sequences": state.reference_sequences,
            "reference_seconds": state.reference_seconds,
        }
        (stage.folder / DONE).write_text(json.dumps(summary) + "\n")
        # the stage is finished: its resumable state (weights + optimizer) is no longer needed
        for leftover in (CHECKPOINT, CHECKPOINT + ".old"):
            shutil.rmtree(stage.folder / leftover, ignore_errors=True)
    barrier(runtime)
    return final_model
