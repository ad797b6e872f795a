"""One DPO training stage: a plain loop over named phases, the same single-process and under torchrun.

``train_stage`` is the loop: get the step's pairs -> ``train_step`` (forward chosen+rejected in one
batch, DPO + NLL loss, backward, accumulating over micro-batches; the step's sums reduced across
ranks) -> clip -> check finite -> optimizer step -> ``log`` -> maybe ``checkpoint``; then ``finish``.
``StageTrainer`` holds what the phases share; ``StageTrainer.setup`` builds it (resuming from the
stage's checkpoint when there is one).
"""

from __future__ import annotations

import gc
import math
import resource
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from drift import lora
from drift.checkpoint import (
    CHECKPOINT,
    TrainerState,
    find_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
    save_policy,
)
from drift.config import Config, ModelConfig, TrainerConfig
from drift.console import progress_wanted
from drift.io import DONE, mark_done
from drift.loss import DpoTerms, dpo_loss
from drift.metrics import MetricsLog
from drift.model import build_model_skeleton, load_model
from drift.parallel import (
    Runtime,
    SequenceLogprobModel,
    all_reduce_sum,
    barrier,
    gather_objects,
    load_full_state,
    sequence_logps,
    set_gradient_sync,
    shard,
)
from drift.reference import ReferenceCache, fill_reference_cache, fingerprint_and_remember
from drift.stages import StageKey
from drift.stages import finish as finish_stage
from drift.tokenize import TokenizedPair, collate_sequences


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


# ---- the step's statistics ----------------------------------------------------------------------


@dataclass
class StepStats:
    """Sums over one optimizer step's pairs: this rank's share while the step runs, every rank's
    after ``reduced``. The counts (pairs, chosen tokens) are summed too, so a step's means
    (``step_record``) need nothing but the reduced stats."""

    loss: float = 0.0  # the pairs' DPO losses
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    margin: float = 0.0
    correct_pairs: float = 0.0  # pairs with margin > 0: divided by the pairs, the accuracy
    gradient_weight: float = 0.0  # sigma(-s), how hard each pair still pulls
    chosen_nll: float = 0.0  # minus the chosen responses' summed token log-probs (the NLL term)
    chosen_tokens: float = 0.0  # the chosen responses' tokens: the NLL's normalizer
    tokens: float = 0.0  # non-padding tokens forwarded
    padding_tokens: float = 0.0
    pairs: float = 0.0

    @classmethod
    def of_forward(cls, terms: DpoTerms, chosen_token_logp_sum: torch.Tensor, chosen_tokens: int, num_tokens: int,
                   num_padding: int, num_pairs: int) -> StepStats:
        return cls(
            loss=terms.losses.detach().sum().item(),
            chosen_reward=terms.chosen_rewards.sum().item(),
            rejected_reward=terms.rejected_rewards.sum().item(),
            margin=terms.margins.sum().item(),
            correct_pairs=(terms.margins > 0).sum().item(),
            gradient_weight=terms.gradient_weights.sum().item(),
            chosen_nll=-chosen_token_logp_sum.item(),
            chosen_tokens=chosen_tokens,
            tokens=num_tokens,
            padding_tokens=num_padding,
            pairs=num_pairs,
        )

    def plus(self, other: StepStats, weight: float = 1.0) -> StepStats:
        """self + weight * other, field by field (in float64, as the reduced tensor holds them)."""
        return StepStats(*(mine + weight * theirs for mine, theirs in zip(self._values(), other._values())))

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(self._values(), dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> StepStats:
        return cls(*values.tolist())

    def reduced(self, runtime: Runtime) -> StepStats:
        """Summed over every rank, all fields in one collective."""
        return StepStats.from_tensor(all_reduce_sum(self.to_tensor().to(runtime.device), runtime).cpu())

    def _values(self) -> list[float]:
        return [float(getattr(self, f.name)) for f in fields(self)]


def step_record(stats: StepStats, *, grad_norm: float, lr: float, seconds: float) -> dict:
    """The metrics.jsonl fields of a step after its stage, step and epoch (analyses read these names):
    means over the step's pairs (the NLL over its chosen tokens) of the reduced sums."""
    num_pairs = stats.pairs
    return {
        "loss": stats.loss / num_pairs,
        "nll": stats.chosen_nll / max(1, stats.chosen_tokens),
        "chosen_reward": stats.chosen_reward / num_pairs,
        "rejected_reward": stats.rejected_reward / num_pairs,
        "margin": stats.margin / num_pairs,
        "accuracy": stats.correct_pairs / num_pairs,
        "gradient_weight": stats.gradient_weight / num_pairs,
        "grad_norm": grad_norm,
        "lr": lr,
        "pairs": int(stats.pairs),
        "tokens": int(stats.tokens),
        "padding_share": stats.padding_tokens / max(1.0, stats.tokens + stats.padding_tokens),
        "tokens_per_second": stats.tokens / seconds,
        "seconds": seconds,
    }


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
    # the stage's key (drift.stages): recorded in its done marker with its model's fingerprint
    key: StageKey | None = None
    # the pipeline's run folder: its stages log to one wandb group, with wandb's files in <run_dir>/wandb
    run_dir: Path | None = None


def train_stage(config: Config, runtime: Runtime, stage: Stage, tokenizer, run_config: dict | None = None) -> Path:
    """Train one stage to completion (resuming if it was interrupted); returns the final model folder."""
    if (stage.folder / DONE).exists():
        return stage.folder / "model"
    trainer = StageTrainer.setup(config, runtime, stage, tokenizer, run_config)
    while trainer.state.global_step < trainer.total_steps:
        epoch, step_pairs = trainer.next_step_pairs()
        started = time.perf_counter()
        stats, pair_rows = trainer.train_step(step_pairs)
        grad_norm = trainer.clip_gradients()
        trainer.check_finite(stats, grad_norm, step_pairs)
        lr = trainer.optimizer_step()
        trainer.log(epoch, stats, pair_rows, grad_norm=grad_norm, lr=lr, seconds=time.perf_counter() - started)
        if trainer.checkpoint_due():
            trainer.checkpoint()
    return trainer.finish()


@dataclass
class StageTrainer:
    """What the phases of one stage share: the sharded policy, its optimizer, the reference cache."""

    stage: Stage
    runtime: Runtime
    trainer_cfg: TrainerConfig
    model_cfg: ModelConfig
    beta: float
    rpo_alpha: float
    tokenizer: object
    state: TrainerState
    policy: SequenceLogprobModel
    parameters: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    cache: ReferenceCache
    metrics: MetricsLog
    progress: object | None  # a tqdm bar on rank 0 when logging.progress_bar
    pair_tokens: list[int]  # chosen + rejected tokens of each pair, for the forwards' token budget
    global_batch: int
    steps_per_epoch: int
    total_steps: int

    # -- setup --

    @classmethod
    def setup(cls, config: Config, runtime: Runtime, stage: Stage, tokenizer, run_config: dict | None) -> StageTrainer:
        """Load (or resume) the policy, shard it, build its optimizer and fill the reference cache."""
        t = config.trainer
        stage.folder.mkdir(parents=True, exist_ok=True)
        checkpoint = find_checkpoint(stage.folder)
        if checkpoint is not None and config.resume == "false":
            raise RuntimeError(f"{stage.folder} already holds a checkpoint; pass resume=true to continue it or choose another run_name")
        state = read_state(checkpoint) if checkpoint is not None else TrainerState()
        # resumed: the checkpoint fills the shards, so the starting weights are not read
        policy = _build_policy(config.model, t, runtime, stage.init_source, len(tokenizer), weights=checkpoint is None)
        fresh_start_from_reference = checkpoint is None and _reference_is_start(stage)
        if fresh_start_from_reference:
            # the starting policy is the reference (the fingerprint gathers each sharded tensor in turn)
            state.reference_fingerprint = fingerprint_and_remember(
                policy.causal_lm, stage.reference_cache_dir, stage.init_source, runtime
            )
        # the optimizer must see the sharded parameters: build it before any forward unshards them
        parameters = [p for p in policy.parameters() if p.requires_grad]
        optimizer = build_optimizer(t.optimizer, parameters, t.lr)
        if checkpoint is not None:
            load_checkpoint(policy, optimizer, checkpoint)
        # every sequence's reference log-prob, cached or computed now; its cost goes into the state
        source = stage.reference_source if stage.reference_source is not None else stage.init_source
        fill = fill_reference_cache(
            stage.pairs, stage.reference_cache_dir, source=source, recorded_fingerprint=state.reference_fingerprint,
            start_policy=policy if fresh_start_from_reference else None,
            load_reference=lambda: _build_policy(config.model, t, runtime, source, len(tokenizer), trainable=False),
            runtime=runtime, batch_size=2 * t.per_device_batch_size, pad_id=tokenizer.pad_token_id, stage_name=stage.name,
        )
        cache = fill.cache
        state.reference_fingerprint = cache.fingerprint
        state.reference_sequences += fill.computed
        state.reference_seconds += fill.seconds
        policy.train()

        global_batch = t.per_device_batch_size * runtime.world_size * t.grad_accum_steps
        steps_per_epoch = math.ceil(len(stage.pairs) / global_batch)
        total_steps = steps_per_epoch * stage.epochs
        metrics = MetricsLog(
            stage.folder / "metrics.jsonl", config.logging, enabled=runtime.is_main,
            run_name=f"{config.run_name}-{stage.name}", config=run_config, resume_after_step=state.global_step,
            group=config.run_name if stage.run_dir is not None else None,
            wandb_dir=stage.run_dir,
        )
        progress = None
        if runtime.is_main and progress_wanted(config.logging.progress_bar):
            from tqdm import tqdm

            progress = tqdm(total=total_steps, initial=state.global_step, desc=stage.name, dynamic_ncols=True,
                            disable=False)
        pair_tokens = [len(pair.chosen) + len(pair.rejected) for pair in stage.pairs]
        return cls(stage, runtime, t, config.model, config.method.beta, config.method.rpo_alpha, tokenizer, state, policy,
                   parameters, optimizer, cache, metrics, progress, pair_tokens, global_batch, steps_per_epoch, total_steps)

    # -- the step --

    def next_step_pairs(self) -> tuple[int, list[int]]:
        """The epoch and the pair indices of the next step: a function of the step number and the seed only,
        so a resumed run trains the same pairs in the same order."""
        epoch, step_in_epoch = divmod(self.state.global_step, self.steps_per_epoch)
        order = epoch_order(len(self.stage.pairs), self.trainer_cfg.seed, epoch)
        return epoch, order[step_in_epoch * self.global_batch : (step_in_epoch + 1) * self.global_batch]

    def train_step(self, step_pairs: list[int]) -> tuple[StepStats, list[dict]]:
        """Forward and backward this rank's share of the step's pairs, accumulating gradients.

        Returns the step's sums reduced over every rank, and this rank's per-pair terms (for
        pair_metrics.jsonl). The loss normalizers are the whole global step's, known to every
        rank without communication.
        """
        pairs = self.stage.pairs
        num_pairs = len(step_pairs)
        num_chosen_tokens = sum(len(pairs[i].chosen.response_ids) for i in step_pairs)
        t = self.trainer_cfg
        plans = plan_forwards(step_pairs, self.pair_tokens, self.runtime.world_size, t.grad_accum_steps, t.max_tokens_per_forward)
        forwards = plans[self.runtime.rank]
        stats, pair_rows = StepStats(), []
        try:
            for forward_index, indices in enumerate(forwards):
                # an empty slot still runs forward/backward (FSDP collectives) on a zero-weight pair
                weight = 1.0 if indices else 0.0
                indices = indices or [step_pairs[0]]
                # reduce-scatter into the sharded gradient every backward (or, when
                # trainer.accumulate_sharded_grads=false, only in the step's last one)
                set_gradient_sync(self.policy, t.accumulate_sharded_grads or forward_index == len(forwards) - 1)
                forward_stats, terms = self._forward_backward(indices, weight, num_pairs, num_chosen_tokens)
                terms = _detached(terms)  # keeps no graph (nor FSDP's unsharded parameters) alive
                stats = stats.plus(forward_stats, weight)
                if weight:
                    pair_rows.extend(_pair_rows([pairs[i].pair_id for i in indices], terms))
        except torch.OutOfMemoryError as error:
            raise _oom_advice(error, t, self.model_cfg) from error
        return stats.reduced(self.runtime), pair_rows

    def _forward_backward(self, indices: list[int], weight: float, num_pairs: int,
                          num_chosen_tokens: int) -> tuple[StepStats, DpoTerms]:
        pairs, policy = self.stage.pairs, self.policy
        chosen = [pairs[i].chosen for i in indices]
        rejected = [pairs[i].rejected for i in indices]
        batch = collate_sequences(
            chosen + rejected, self.tokenizer.pad_token_id, packed=policy.packed, share_prompts=policy.share_prompts
        ).to(self.runtime.device)
        with policy.computing():  # forward and backward on the compute weights
            totals, token_logps = sequence_logps(policy, batch)
            k = len(indices)
            reference_chosen = torch.tensor([self.cache.lookup(s) for s in chosen], dtype=totals.dtype, device=totals.device)
            reference_rejected = torch.tensor([self.cache.lookup(s) for s in rejected], dtype=totals.dtype, device=totals.device)
            terms = dpo_loss(totals[:k], totals[k:], reference_chosen, reference_rejected, self.beta)
            chosen_token_logp_sum = token_logps[batch.target_sequence < k].sum()
            # FSDP averages gradients over ranks, hence the world_size factor: the result is the
            # mean over the global step's pairs (and chosen tokens for the NLL term)
            loss = weight * self.runtime.world_size * (
                terms.losses.sum() / num_pairs - self.rpo_alpha * chosen_token_logp_sum / num_chosen_tokens
            )
            loss.backward()
            del loss, totals, token_logps  # their graph is spent; hold nothing of it past the backward
        chosen_tokens = sum(len(sequence.response_ids) for sequence in chosen)
        stats = StepStats.of_forward(terms, chosen_token_logp_sum, chosen_tokens, batch.num_tokens, batch.num_padding, k)
        return stats, terms

    def clip_gradients(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.trainer_cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        return float(grad_norm)

    def check_finite(self, stats: StepStats, grad_norm: float, step_pairs: list[int]) -> None:
        """Stop before the optimizer step (and so before any checkpoint) when the step is not finite."""
        loss = stats.loss / stats.pairs
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        epoch, step_in_epoch = divmod(self.state.global_step, self.steps_per_epoch)
        pair_ids = [self.stage.pairs[i].pair_id for i in step_pairs]
        raise NonFiniteError(
            f"stage {self.stage.name}, step {self.state.global_step} (epoch {epoch}, batch {step_in_epoch}): "
            f"loss={loss}, grad_norm={grad_norm}; pairs {pair_ids}. Nothing was saved for this step; "
            f"lower trainer.lr or check these pairs"
        )

    def optimizer_step(self) -> float:
        """Step at this step's learning rate and advance the state; returns the learning rate."""
        t = self.trainer_cfg
        lr = lr_at(self.state.global_step, self.total_steps, t.lr, t.warmup_ratio, t.lr_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self.state.epoch, self.state.step_in_epoch = divmod(self.state.global_step, self.steps_per_epoch)
        return lr

    def release_memory(self) -> None:
        """Drop every reference to the weights, gradients, optimizer state and FSDP's state (held by
        the model), then hand the freed blocks back to the driver: the sampler process runs next and
        vLLM starts only when the GPU's memory is free."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()
        del self.optimizer, self.parameters, self.policy
        gc.collect()  # FSDP's hooks and states reference the module in cycles
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(self.runtime.device)
            torch.cuda.empty_cache()

    # -- log, checkpoint, finish --

    def log(self, epoch: int, stats: StepStats, pair_rows: list[dict], *, grad_norm: float, lr: float, seconds: float) -> None:
        step = self.state.global_step
        record = {
            "stage": self.stage.name, "step": step, "epoch": epoch,
            **step_record(stats, grad_norm=grad_norm, lr=lr, seconds=seconds),
            "peak_memory_gb": peak_memory_bytes(self.runtime.device) / 1e9,
        }
        self.metrics.log(record)
        self.metrics.log_pairs(step, epoch, gather_objects(pair_rows, self.runtime))
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{record['loss']:.4f}", margin=f"{record['margin']:.4f}", acc=f"{record['accuracy']:.2f}")

    def checkpoint_due(self) -> bool:
        """Every trainer.save_every_steps steps, and at the end of every epoch but the last
        (the last one ends in finish(), which saves the final model instead)."""
        step, every = self.state.global_step, self.trainer_cfg.save_every_steps
        end_of_epoch = step % self.steps_per_epoch == 0
        return bool(every and step % every == 0) or (end_of_epoch and step < self.total_steps)

    def checkpoint(self) -> None:
        save_checkpoint(self.policy, self.optimizer, self.state, self.stage.folder, self.runtime)

    def finish(self) -> Path:
        """Save the final model, free the trainer's memory, then write ``done``; returns the model folder."""
        if self.progress is not None:
            self.progress.close()
        self.metrics.close()
        final_model = self.stage.folder / "model"
        save_policy(self.policy, self.tokenizer, final_model, self.runtime)
        self.release_memory()
        if self.runtime.is_main:
            state = self.state
            summary = {
                "steps": state.global_step,
                "pairs": len(self.stage.pairs),
                "reference_fingerprint": state.reference_fingerprint,
                # sequences the frozen reference actually ran (cache misses), and the time it took
                "reference_sequences": state.reference_sequences,
                "reference_seconds": state.reference_seconds,
            }
            if self.stage.key is None:
                mark_done(self.stage.folder, summary)
            else:
                from drift.sampler.process import checkpoint_fingerprint

                finish_stage(self.stage.folder, self.stage.key, checkpoint_fingerprint(final_model), summary)
            # the stage is finished: its resumable state (weights + optimizer) is no longer needed
            for leftover in (CHECKPOINT, CHECKPOINT + ".old"):
                shutil.rmtree(self.stage.folder / leftover, ignore_errors=True)
        barrier(self.runtime)
        return final_model


# ---- setup helpers ------------------------------------------------------------------------------


def _build_policy(model_cfg: ModelConfig, trainer_cfg: TrainerConfig, runtime: Runtime, source: str | None,
                  vocab_size: int, *, weights: bool = True, trainable: bool = True) -> SequenceLogprobModel:
    """The model, sharded over the ranks (or on the device, single-process), fp32 master weights; under
    model.lora the frozen base in the compute dtype and the adapter in fp32 (drift.lora).

    Under torchrun no rank holds a full copy on the device, and only rank 0 reads the weights (into
    host memory): every rank builds the model on the meta device, shards it, and receives its shards
    from rank 0. ``weights=False`` leaves the shards uninitialized, for a checkpoint to fill.
    """
    adapters = lora.enabled(model_cfg)

    def wrap(causal_lm) -> SequenceLogprobModel:
        model = SequenceLogprobModel(
            causal_lm, trainer_cfg.logprob_impl, packed=trainer_cfg.packing, share_prompts=trainer_cfg.share_prompts
        )
        model.requires_grad_(trainable)
        if adapters:
            lora.set_trainable(causal_lm, trainable)  # the base stays frozen
        return model

    def build(make, real: bool):
        if adapters:
            return lora.adapted_model(make, model_cfg, adapter_weights=real, **load)
        return make(model_cfg, **load)

    load = dict(dtype=runtime.dtype if adapters else torch.float32, seed=trainer_cfg.seed, source=source, vocab_size=vocab_size)
    if not runtime.distributed:
        return shard(wrap(build(load_model, True)), runtime, autocast=adapters)
    policy = shard(wrap(build(build_model_skeleton, False)), runtime)
    if weights:
        full_state = None
        if runtime.is_main:
            full_state = {f"causal_lm.{key}": value for key, value in build(load_model, True).state_dict().items()}
        load_full_state(policy, full_state, runtime)
    return policy


def _reference_is_start(stage: Stage) -> bool:
    return stage.reference_source is None or stage.reference_source == stage.init_source


def _detached(terms: DpoTerms) -> DpoTerms:
    return type(terms)(**{f.name: getattr(terms, f.name).detach() for f in fields(terms)})


def _pair_rows(pair_ids: list[str], terms: DpoTerms) -> list[dict]:
    return [
        {"pair_id": pair_id, "logit": s, "chosen_reward": c, "rejected_reward": r}
        for pair_id, s, c, r in zip(pair_ids, terms.logits.tolist(), terms.chosen_rewards.tolist(), terms.rejected_rewards.tolist())
    ]


def _oom_advice(error: Exception, t: TrainerConfig, model_cfg: ModelConfig) -> RuntimeError:
    unsharded = "" if t.accumulate_sharded_grads else (
        "Set trainer.accumulate_sharded_grads=true (now false: a full fp32 gradient per rank between micro-batches). "
    )
    adapter = "" if model_cfg.lora.rank else ", or train a LoRA adapter instead of every weight (model.lora.rank=16, docs/lora.md)"
    return RuntimeError(
        f"out of memory ({error}). {unsharded}Lower trainer.per_device_batch_size (now {t.per_device_batch_size}) and raise "
        f"trainer.grad_accum_steps to keep the global batch, set trainer.max_tokens_per_forward (now "
        f"{t.max_tokens_per_forward}; it splits each micro-batch), lower trainer.max_length (now {t.max_length}), or "
        f"turn on model.gradient_checkpointing=true (now {model_cfg.gradient_checkpointing}){adapter}"
    )
