"""Per-rank memory of a training step and of the sampler turn, from the model's config alone.

    python benchmarks/memory_plan.py model=qwen14b nproc=8 trainer.per_device_batch_size=4 \\
        trainer.max_length=2048 trainer.grad_accum_steps=4 model.gradient_checkpointing=true
    python benchmarks/memory_plan.py --validate        # measured peaks of tiny configs (CPU, gloo) vs the plan

Arguments are the trainer's own Hydra overrides (composed through drift.compose, as
launch/train.py does) plus ``nproc=`` (ranks), ``gpu_memory_gb=`` (default 80), ``device=cuda|cpu``
(what to plan for; default cuda: bf16 compute) and ``model_config=`` (a config.json; default
benchmarks/model_configs/<model.name>.json, or the tiny model's own sizes).

What it models is the trainer's design (drift/parallel.py, drift/train.py, drift/packing.py,
drift.kernels): FSDP2 with fp32 master weights sharded over the ranks, each decoder layer its own
unit gathered in the compute dtype (the one running and the one prefetched), the root (embeddings,
final norm, lm_head) gathered for the whole forward and backward (FSDP2 does not reshard the root
after forward); gradients reduce-scattered in fp32 after every micro-batch, so they stay sharded
under accumulation; the optimizer's state sharded (RMSprop: one fp32 tensor per parameter); the
activations each op saves for backward, per layer, for a packed micro-batch of at most
``per_device_batch_size x 2 x max_length`` tokens (or, with checkpointing, each layer's input and one
recomputed layer); the log-prob head's saved hidden states and gradient buffers (never the
[tokens, vocab] logits). The peak is the largest of the step's phases (head backward, the first
layer's backward, the root's reduce-scatter, the optimizer step). On GPU a fixed allowance is
added for what torch's allocator does not see (CUDA context, NCCL) and for fragmentation.

``--validate`` runs real steps of tiny Llama/Qwen2 models under torchrun (2 ranks, gloo, fp32,
CPU), measures each rank's peak resident memory during the second step above its resident memory
before the trainer was built (glibc told to return every large block to the system, so resident
memory follows live tensors), and compares with this plan for the same config on CPU. Writes
benchmarks/results/memory_plan_cpu.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9
# what torch's allocator does not count on a GPU: the CUDA context and cuBLAS workspaces (~0.6 GB),
# NCCL's buffers and streams (~0.5-1 GB with 8 ranks); and allocator fragmentation on top of the
# live tensors. Allowances, not measured here (no GPU): benchmarks/gpu_check.sh measures them.
CUDA_CONTEXT_AND_NCCL_BYTES = 1.5e9
FRAGMENTATION = 0.05
# the Triton head's logit-gradient chunk (drift.kernels._common.CHUNK_BUDGET_BYTES)
HEAD_CHUNK_BYTES = 256 * 2**20
# the chunked (CPU) head's tile (drift.kernels.chunked.TOKEN_CHUNK x VOCAB_BLOCK)
CHUNKED_TILE = (2048, 4096)
OPTIMIZER_STATES = {"rmsprop": 1, "adamw": 2, "sgd": 0}  # fp32 tensors per parameter (torch defaults)
# vLLM's own activations and CUDA graphs inside its gpu_memory_utilization share (an estimate)
VLLM_RUNTIME_BYTES = 3e9


# ---- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """The sizes that decide memory. family: "llama" (Llama, Qwen2, Mistral: two norms per layer,
    SwiGLU) or "gemma3" (four norms and q/k norms per layer, GeGLU)."""

    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        h = self.hidden
        attention = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.qkv_bias:
            attention += self.q_dim + 2 * self.kv_dim
        norms = 2 * h if self.family == "llama" else 4 * h + 2 * self.head_dim
        return attention + 3 * h * self.intermediate + norms

    def root_params(self) -> int:
        """Embeddings, the final norm and (untied) the lm_head: the FSDP root's own parameters."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def total_params(self) -> int:
        return self.layers * self.layer_params() + self.root_params()

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's linear layers: name -> (in, out) features (what LoRA adapts)."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim), "o_proj": (self.q_dim, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def adapter_layer_params(self, rank: int, targets: tuple[str, ...]) -> int:
        """A LoRA adapter's parameters in one layer: A [rank, in] and B [out, rank] per adapted projection."""
        return sum(rank * (fan_in + fan_out) for name, (fan_in, fan_out) in self.projections().items() if name in targets)


def read_arch(path: Path) -> Arch:
    """An HF config.json (a multimodal one's text_config) -> Arch."""
    config = json.loads(Path(path).read_text())
    config = config.get("text_config", config)
    model_type = config.get("model_type", "")
    family = "gemma3" if model_type.startswith("gemma3") else "llama"
    if model_type not in ("llama", "qwen2", "mistral", "gemma3", "gemma3_text"):
        raise ValueError(f"{path}: model_type {model_type!r} is not one the plan models (llama, qwen2, mistral, gemma3)")
    heads = config["num_attention_heads"]
    return Arch(
        family=family,
        hidden=config["hidden_size"],
        layers=config["num_hidden_layers"],
        heads=heads,
        kv_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        intermediate=config["intermediate_size"],
        vocab=config["vocab_size"],
        tied=bool(config.get("tie_word_embeddings", family == "gemma3")),
        qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
    )


def tiny_arch(model_cfg, vocab: int) -> Arch:
    """drift.model.build_tiny_model's sizes (tiny:llama ties its embeddings, tiny:qwen2 does not)."""
    family = model_cfg.name_or_path.split(":", 1)[1]
    return Arch(
        family="llama", hidden=model_cfg.tiny_hidden_size, layers=model_cfg.tiny_layers, heads=model_cfg.tiny_heads,
        kv_heads=model_cfg.tiny_kv_heads, head_dim=model_cfg.tiny_hidden_size // model_cfg.tiny_heads,
        intermediate=model_cfg.tiny_intermediate_size, vocab=vocab, tied=family == "llama", qkv_bias=family == "qwen2",
    )


# ---- the setting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    nproc: int
    device: str  # cuda: bf16 compute, flash-attn varlen, Triton head, foreach optimizer; cpu: fp32, SDPA loop, chunked head
    optimizer: str
    checkpointing: bool
    tokens: int  # positions one forward runs (the packed micro-batch)
    scored: int  # positions the head scores (response tokens)
    # CPU SDPA loop with shared prompts: key/value positions gathered (copied) for responses after
    # the first; flash-attn on GPU reads them in place
    gathered_kv_tokens: int
    accumulated: bool  # more than one forward per step: gradients exist during backward
    # trainer.accumulate_sharded_grads: every micro-batch reduce-scatters (sharded fp32 gradients
    # between micro-batches); false: FSDP keeps an unsharded fp32 gradient of every parameter instead
    sharded_accumulation: bool = True
    # model.lora: the adapter's rank (0: full-weight training), the projections it adapts, dropout > 0
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()
    lora_dropout: bool = False

    @property
    def compute_bytes(self) -> int:
        return 2 if self.device == "cuda" else 4

    def adapts(self, *names: str) -> bool:
        return any(name in self.lora_targets for name in names)


# ---- activations --------------------------------------------------------------------------------


def layer_activation_bytes(arch: Arch, s: Setting) -> int:
    """What one decoder layer's forward saves for backward, for s.tokens tokens.

    HF's RMSNorm upcasts its input to fp32 (saved), multiplies by rsqrt (fp32 [T]), casts back
    (saved by the weight multiply) and its output is saved by the projections that read it.
    Attention saves the rotated q, k, v, its output and an fp32 logsumexp per head; on CPU the
    output is also copied to a contiguous tensor for o_proj. The gated MLP saves gate, up, the
    activation and their product.
    """
    if s.lora_rank:
        return adapted_layer_activation_bytes(arch, s)
    t, h, b = s.tokens, arch.hidden, s.compute_bytes
    attention = b * t * (2 * arch.q_dim + 2 * arch.kv_dim) + 4 * arch.heads * t
    if s.device == "cpu":
        attention += b * t * arch.q_dim + 2 * b * s.gathered_kv_tokens * arch.kv_dim
    mlp = 4 * b * t * arch.intermediate
    if arch.family == "llama":
        norms = 2 * (4 * t * h + 2 * b * t * h + 4 * t)
    else:
        # Gemma3RMSNorm works in fp32 throughout: x.float() and the normalized x are saved;
        # two of the four feed a projection (their output saved too); q_norm and k_norm per head
        norms = 4 * 8 * t * h + 2 * b * t * h + 8 * t * (arch.q_dim + arch.kv_dim)
    return norms + attention + mlp


def adapted_layer_activation_bytes(arch: Arch, s: Setting) -> int:
    """The same under LoRA (model.lora). A frozen weight needs no input for its own gradient, so autograd
    keeps a projection's input only where an adapter reads it: with dropout 0, one copy per distinct
    input (q/k/v share the normed hidden state, gate/up the other one; o_proj reads the attention
    output, which on GPU is the tensor attention saves anyway; down_proj the gated product); with
    dropout, each adapted projection keeps its own dropped-out input and the dropout's mask instead. The
    frozen norms' weight multiply keeps nothing; each adapter keeps its [tokens, rank] A output for
    B's gradient (dropout's mask: a byte per element from CUDA's fused kernel, a float on a CPU). Attention and the MLP's activation keep what they need for their inputs' gradient."""
    t, h, b, i = s.tokens, arch.hidden, s.compute_bytes, arch.intermediate
    attention = b * t * (2 * arch.q_dim + 2 * arch.kv_dim) + 4 * arch.heads * t
    if s.device == "cpu":
        attention += 2 * b * s.gathered_kv_tokens * arch.kv_dim
    mlp = 3 * b * t * i  # the activation's input, its output and up's output (the product's inputs)
    if arch.family == "llama":
        norms = 2 * (4 * t * h + 4 * t)  # each norm's fp32 input and rsqrt
    else:
        norms = 4 * 4 * t * h + 4 * t * (arch.q_dim + arch.kv_dim)  # Gemma's fp32 inputs, q/k norms' too
    projections = arch.projections()
    adapted = [name for name in projections if s.adapts(name)]
    inputs = b * s.lora_rank * t * len(adapted)  # the A outputs
    if s.lora_dropout:
        # its output, and its mask: one byte from CUDA's fused dropout, a float noise tensor on a CPU
        mask = 1 if s.device == "cuda" else b
        inputs += sum((b + mask) * t * projections[name][0] for name in adapted)
    else:
        o_proj_input = b * t * arch.q_dim if s.device == "cpu" else 0  # the CPU's contiguous copy
        inputs += (b * t * h * s.adapts("q_proj", "k_proj", "v_proj") + o_proj_input * s.adapts("o_proj")
                   + b * t * h * s.adapts("gate_proj", "up_proj") + b * t * i * s.adapts("down_proj"))
    return norms + attention + mlp + inputs


def layer_backward_transient_bytes(arch: Arch, s: Setting) -> int:
    """Gradients alive while a layer back-propagates: the MLP's three [T, I] and the residual's two [T, H]."""
    return s.compute_bytes * s.tokens * (3 * arch.intermediate + 2 * arch.hidden)


def head_saved_bytes(arch: Arch, s: Setting) -> int:
    """The final norm's saved tensors, the scored hidden states the kernel keeps, and its fp32 logsumexp.
    Under LoRA the norm's weight is frozen: its multiply keeps nothing."""
    t, n, h, b = s.tokens, s.scored, arch.hidden, s.compute_bytes
    return 4 * t * h + (0 if s.lora_rank else b * t * h) + b * n * h + 4 * n


def head_backward_bytes(arch: Arch, s: Setting) -> tuple[int, int]:
    """(transient buffers, the lm_head weight gradient) while the head back-propagates.

    Triton (GPU): grad_hidden, a [chunk, vocab] logit-gradient buffer of at most 256 MiB, the
    weight gradient in the weight's dtype. Chunked (CPU): an fp32 [n, H] accumulator and g*hidden,
    one [2048, 4096] fp32 tile, an fp32 weight gradient (cast to the weight's dtype at the end).
    """
    n, h, v, b = s.scored, arch.hidden, arch.vocab, s.compute_bytes
    if s.device == "cuda":
        chunk = max(1, min(n, HEAD_CHUNK_BYTES // (v * b)))
        return b * n * h + chunk * v * b, b * v * h
    tile = 4 * min(n, CHUNKED_TILE[0]) * min(v, CHUNKED_TILE[1])
    upcast = 0 if b == 4 else 4 * n * h + 4 * v * h
    return 4 * n * h + 4 * n * h + tile + upcast, b * v * h


# ---- the phases of a step -----------------------------------------------------------------------

ROWS = (
    ("params_base", "frozen base weights: {dtype}, {sharded}"),
    ("params_master", "{trained}: fp32 master, {sharded}"),
    ("params_gathered", "parameters: {dtype} copies gathered (root + {layers} layer(s))"),
    ("grads_sharded", "gradients: fp32, {sharded}"),
    ("grads_unsharded", "gradients: unsharded in flight (lm_head/root, one layer)"),
    ("optimizer", "optimizer state: {optimizer}, fp32, {sharded}"),
    ("activations_saved", "activations saved for backward ({saved})"),
    ("activations_layer", "activations: the layer in backward (recomputed) + its grads"),
    ("head", "log-prob head: saved hidden, grad buffers (no logits)"),
    ("collectives", "collectives: reduce-scatter buffer (fp32), all-gather input"),
    ("optimizer_temp", "optimizer step temporaries"),
    ("allowance", "CUDA context, NCCL, {frag:.0%} fragmentation (allowance)"),
)


def step_phases(arch: Arch, s: Setting) -> dict[str, dict[str, float]]:
    """Bytes per rank in each phase of the step, by row of ROWS."""
    if s.lora_rank:
        return adapted_step_phases(arch, s)
    n, b = s.nproc, s.compute_bytes
    total, layer, root = arch.total_params(), arch.layer_params(), arch.root_params()
    master = 4 * total / n
    optimizer = OPTIMIZER_STATES[s.optimizer] * 4 * total / n
    accumulated_grads = 4 * total / n if s.accumulated and s.sharded_accumulation else 0.0
    unsharded_accumulated = 4 * total if s.accumulated and not s.sharded_accumulation and n > 1 else 0.0
    gathered_root = b * root if n > 1 else 0.0
    gather_input = b * layer / n  # the shard cast to the compute dtype, the all-gather's input
    saved_layer = layer_activation_bytes(arch, s)
    if s.checkpointing:
        # each layer keeps its input; the layer in backward is run again and holds its activations
        saved_all, in_backward = arch.layers * b * s.tokens * arch.hidden, saved_layer
    else:
        saved_all, in_backward = arch.layers * saved_layer, 0
    head_transient, head_grad = head_backward_bytes(arch, s)
    common = dict(params_master=master, optimizer=optimizer)
    phases = {
        "head backward": dict(
            common, params_gathered=gathered_root + b * layer, grads_sharded=accumulated_grads,
            grads_unsharded=unsharded_accumulated, activations_saved=saved_all,
            head=head_saved_bytes(arch, s) + head_transient + head_grad, collectives=gather_input,
        ),
        "last layer's backward": dict(
            common, params_gathered=gathered_root + 2 * b * layer, grads_sharded=accumulated_grads,
            grads_unsharded=unsharded_accumulated + head_grad + b * layer, activations_saved=saved_all,
            activations_layer=in_backward + layer_backward_transient_bytes(arch, s),
            collectives=4 * layer + gather_input,
        ),
        "root reduce-scatter": dict(
            common, params_gathered=gathered_root, grads_sharded=4 * total / n,
            grads_unsharded=b * (root - arch.hidden), collectives=4 * root,
        ),
        "optimizer step": dict(
            common, grads_sharded=4 * total / n,
            # torch's foreach path (CUDA) builds sqrt(square_avg) for every parameter at once; the
            # per-parameter loop (CPU) one parameter at a time
            optimizer_temp=(4 * total / n) if s.device == "cuda" else 4 * arch.vocab * arch.hidden / n,
        ),
    }
    return with_allowance(phases, s)


def adapted_step_phases(arch: Arch, s: Setting) -> dict[str, dict[str, float]]:
    """The phases under LoRA (drift.lora): the frozen base in the compute dtype, sharded 1/N (one
    process: all of it), gathered a unit at a time as full weights are, without a cast; the adapter's
    fp32 master, gradients and optimizer state sharded; no gradient for the base, the embeddings or the
    head, so the root has nothing to reduce-scatter. One process runs without FSDP: the base stays
    whole on the device and autocast keeps compute-dtype copies of the (small) adapter."""
    n, b = s.nproc, s.compute_bytes
    total, layer, root = arch.total_params(), arch.layer_params(), arch.root_params()
    adapter_layer = arch.adapter_layer_params(s.lora_rank, s.lora_targets)
    adapter = arch.layers * adapter_layer
    common = dict(params_base=b * total / n, params_master=4 * adapter / n,
                  optimizer=OPTIMIZER_STATES[s.optimizer] * 4 * adapter / n)
    accumulated_grads = 4 * adapter / n if s.accumulated else 0.0
    if n > 1:
        gathered_root, gathered_layer = b * root, b * (layer + adapter_layer)
        gather_input = gathered_layer / n
    else:
        gathered_root, gathered_layer, gather_input = 0.0, (b * adapter if b != 4 else 0.0), 0.0
    layers_in_backward = 2 if n > 1 else 1
    saved_layer = layer_activation_bytes(arch, s)
    if s.checkpointing:
        saved_all, in_backward = arch.layers * b * s.tokens * arch.hidden, saved_layer
    else:
        saved_all, in_backward = arch.layers * saved_layer, 0
    head_transient, _ = head_backward_bytes(arch, s)  # the head's weight is frozen: no gradient for it
    phases = {
        "head backward": dict(
            common, params_gathered=gathered_root + gathered_layer, grads_sharded=accumulated_grads,
            activations_saved=saved_all, head=head_saved_bytes(arch, s) + head_transient, collectives=gather_input,
        ),
        "last layer's backward": dict(
            common, params_gathered=gathered_root + layers_in_backward * gathered_layer if n > 1 else gathered_layer,
            grads_sharded=accumulated_grads, grads_unsharded=b * adapter_layer, activations_saved=saved_all,
            activations_layer=in_backward + layer_backward_transient_bytes(arch, s),
            collectives=(4 * adapter_layer + gather_input) if n > 1 else 0.0,
        ),
        "optimizer step": dict(
            common, grads_sharded=4 * adapter / n,
            optimizer_temp=(4 * adapter / n) if s.device == "cuda" else 4 * max(arch.projections()[name][0] * s.lora_rank
                                                                             for name in s.lora_targets),
        ),
    }
    return with_allowance(phases, s)


def with_allowance(phases: dict[str, dict[str, float]], s: Setting) -> dict[str, dict[str, float]]:
    for rows in phases.values():
        tensors = sum(rows.values())
        rows["allowance"] = CUDA_CONTEXT_AND_NCCL_BYTES + FRAGMENTATION * tensors if s.device == "cuda" else 0.0
    return phases


def peak_phase(arch: Arch, s: Setting) -> tuple[str, dict[str, float], float]:
    phases = step_phases(arch, s)
    name = max(phases, key=lambda key: sum(phases[key].values()))
    return name, phases[name], sum(phases[name].values())


def sampler_turn(arch: Arch, gpu_memory_bytes: float, utilization: float, tensor_parallel: int) -> dict:
    """vLLM on each GPU: bf16 weights (split by tensor parallelism) and the KV cache that fits in
    its gpu_memory_utilization share; the trainer holds only its CUDA context meanwhile."""
    reserved = utilization * gpu_memory_bytes
    weights = 2 * arch.total_params() / tensor_parallel
    kv_cache = max(0.0, reserved - weights - VLLM_RUNTIME_BYTES)
    kv_bytes_per_token = 2 * arch.layers * arch.kv_dim * 2 / tensor_parallel
    trainer_left = CUDA_CONTEXT_AND_NCCL_BYTES
    return dict(
        reserved=reserved, weights=weights, kv_cache=kv_cache, kv_tokens=int(kv_cache // kv_bytes_per_token),
        trainer_left=trainer_left, peak=reserved + trainer_left,
    )


# ---- from the trainer's config ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    model: str
    arch: Arch
    setting: Setting
    batch_pairs: int
    max_length: int
    accum: int
    gpu_memory_bytes: float
    sampler_utilization: float
    tensor_parallel: int


def adapter_fields(lora_cfg) -> dict:
    """The Setting's LoRA fields from model.lora (all-linear: every projection of a decoder layer)."""
    if lora_cfg.rank == 0:
        return {}
    known = tuple(Arch("llama", 1, 1, 1, 1, 1, 1, 1, False, False).projections())
    targets = known if list(lora_cfg.target_modules) == ["all-linear"] else tuple(lora_cfg.target_modules)
    unknown = [name for name in targets if name not in known]
    if unknown:
        raise SystemExit(f"memory_plan: model.lora.target_modules names {', '.join(unknown)}; the plan models "
                         f"{', '.join(known)} (or all-linear)")
    return dict(lora_rank=lora_cfg.rank, lora_targets=targets, lora_dropout=lora_cfg.dropout > 0)


def parse_argv(argv: list[str]) -> tuple[dict, list[str]]:
    """Split our own key=value options off the Hydra overrides."""
    ours = {"nproc": "8", "gpu_memory_gb": "80", "device": "cuda", "model_config": None}
    overrides = []
    for token in argv:
        key, sep, value = token.partition("=")
        if sep and key in ours:
            ours[key] = value
        else:
            overrides.append(token)
    return ours, overrides


def plan_from_overrides(argv: list[str]) -> Plan:
    from drift.compose import compose
    from drift.config import Config

    ours, overrides = parse_argv(argv)
    config = compose("config", overrides, Config)
    nproc, device = int(ours["nproc"]), ours["device"]
    if nproc < 1 or device not in ("cuda", "cpu"):
        raise SystemExit(f"memory_plan: nproc must be >= 1 and device cuda or cpu; got nproc={nproc}, device={device}")
    t, m = config.trainer, config.model
    if ours["model_config"]:
        arch = read_arch(Path(ours["model_config"]))
    elif m.name_or_path.startswith("tiny:"):
        from drift.model import build_byte_tokenizer

        arch = tiny_arch(m, len(build_byte_tokenizer()))
    elif (MODEL_CONFIGS / f"{m.name}.json").exists():
        arch = read_arch(MODEL_CONFIGS / f"{m.name}.json")
    elif (Path(m.name_or_path) / "config.json").exists():
        arch = read_arch(Path(m.name_or_path) / "config.json")
    else:
        raise SystemExit(
            f"memory_plan: no config.json for model {m.name!r}: add benchmarks/model_configs/{m.name}.json "
            f"or pass model_config=PATH/config.json"
        )
    # the upper bound of a packed micro-batch: every pair at max_length on both sides, prompts not shared
    tokens = t.per_device_batch_size * 2 * t.max_length
    forwards = t.grad_accum_steps
    if t.max_tokens_per_forward:
        per_forward = max(t.max_tokens_per_forward, 2 * t.max_length)
        forwards *= math.ceil(tokens / per_forward)
        tokens = min(tokens, per_forward)
    setting = Setting(
        nproc=nproc, device=device, optimizer=t.optimizer, checkpointing=m.gradient_checkpointing, tokens=tokens,
        scored=tokens, gathered_kv_tokens=0, accumulated=forwards > 1,
        sharded_accumulation=getattr(t, "accumulate_sharded_grads", True), **adapter_fields(m.lora),
    )
    return Plan(m.name, arch, setting, t.per_device_batch_size, t.max_length, t.grad_accum_steps,
                float(ours["gpu_memory_gb"]) * GB, config.sampler.gpu_memory_utilization, config.sampler.tensor_parallel_size)


def format_plan(plan: Plan) -> str:
    arch, s = plan.arch, plan.setting
    other = replace(s, checkpointing=not s.checkpointing)
    (name, rows, peak), (other_name, other_rows, other_peak) = peak_phase(arch, s), peak_phase(arch, other)
    dtype = "bf16" if s.device == "cuda" else "fp32"
    on, off = ("on", "off") if s.checkpointing else ("off", "on")
    adapter = arch.layers * arch.adapter_layer_params(s.lora_rank, s.lora_targets)
    trained = (f"{dtype} compute over fp32 master weights" if not s.lora_rank else
               f"LoRA rank {s.lora_rank} on {', '.join(s.lora_targets)} ({adapter / 1e6:.1f}M adapter parameters, fp32), "
               f"the base frozen in {dtype}")
    lines = [
        f"memory plan: {plan.model} ({arch.total_params() / 1e9:.2f}B parameters, {arch.layers} layers), {s.nproc} rank(s), "
        f"{trained}, {s.optimizer}",
        f"micro-batch: {plan.batch_pairs} pairs x 2 sequences x {plan.max_length} tokens = {s.tokens} tokens (upper bound), "
        f"accumulation {plan.accum}",
        "",
        f"{'GB per rank, at the peak phase':<66} {'ckpt ' + on:>9} {'ckpt ' + off:>9}",
    ]
    gathered_layers = {"head backward": 1, "last layer's backward": 2}.get(name, 0)
    fields = dict(n=s.nproc, dtype=dtype, optimizer=s.optimizer, frag=FRAGMENTATION,
                  layers=gathered_layers, saved="per layer: its input" if s.checkpointing else "every layer",
                  trained="adapter" if s.lora_rank else "parameters",
                  sharded=f"sharded 1/{s.nproc}" if s.nproc > 1 else "whole (one process)")
    labels = dict(ROWS)
    if s.lora_rank and s.nproc == 1:
        labels["params_gathered"] = "adapter: {dtype} copies under autocast (no FSDP)"
    for key, _ in ROWS:
        label = labels[key]
        if (key == "allowance" and s.device != "cuda") or (key == "params_base" and not s.lora_rank):
            continue
        lines.append(f"{label.format(**fields):<66} {rows.get(key, 0) / GB:>9.2f} {other_rows.get(key, 0) / GB:>9.2f}")
    lines.append(f"{'peak (' + name + ' / ' + other_name + ')':<66} {peak / GB:>9.1f} {other_peak / GB:>9.1f}")
    phases = step_phases(arch, s)
    lines.append("phases (ckpt " + on + "): " + ", ".join(f"{key} {sum(v.values()) / GB:.1f}" for key, v in phases.items()))
    lines.append(f"peak {peak / GB:.1f} GB per rank with gradient checkpointing {on} "
                 f"({'fits' if peak <= plan.gpu_memory_bytes else 'does NOT fit'} in {plan.gpu_memory_bytes / GB:.0f} GB)")
    if s.device == "cuda":
        turn = sampler_turn(arch, plan.gpu_memory_bytes, plan.sampler_utilization, plan.tensor_parallel)
        lines.append(
            f"sampler turn (vLLM, tensor parallel {plan.tensor_parallel}, gpu_memory_utilization {plan.sampler_utilization}): "
            f"{turn['reserved'] / GB:.1f} GB reserved = bf16 weights {turn['weights'] / GB:.1f} + KV cache "
            f"{turn['kv_cache'] / GB:.1f} ({turn['kv_tokens']} tokens) + runtime ~{VLLM_RUNTIME_BYTES / GB:.0f}; "
            f"the waiting trainer keeps {turn['trainer_left'] / GB:.1f}: peak {turn['peak'] / GB:.1f} GB"
        )
    return "\n".join(lines)


def plan_summary(plan: Plan) -> dict:
    on = replace(plan.setting, checkpointing=True)
    off = replace(plan.setting, checkpointing=False)
    summary = dict(model=plan.model, params=plan.arch.total_params(), nproc=plan.setting.nproc,
                   lora_rank=plan.setting.lora_rank, lora_targets=list(plan.setting.lora_targets),
                   adapter_params=plan.arch.layers * plan.arch.adapter_layer_params(plan.setting.lora_rank, plan.setting.lora_targets),
                   peak_gb_checkpointing=peak_phase(plan.arch, on)[2] / GB,
                   peak_gb_no_checkpointing=peak_phase(plan.arch, off)[2] / GB)
    if plan.setting.device == "cuda":
        turn = sampler_turn(plan.arch, plan.gpu_memory_bytes, plan.sampler_utilization, plan.tensor_parallel)
        summary["sampler_turn_gb"] = {k: v / GB for k, v in turn.items() if k != "kv_tokens"}
        summary["sampler_kv_tokens"] = turn["kv_tokens"]
    return summary


# ---- validation: measured peaks of tiny configs on CPU/gloo -------------------------------------

# each a real step of the trainer on 2 ranks; sizes chosen so tensors dominate resident memory
VALIDATION_CASES = (
    dict(name="llama_h512_l8", family="llama", hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1536,
         batch=2, max_length=512, prompt=16, accum=1, checkpointing=False),
    dict(name="llama_h512_l8_ckpt", family="llama", hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1536,
         batch=2, max_length=512, prompt=16, accum=1, checkpointing=True),
    dict(name="qwen2_h768_l4", family="qwen2", hidden=768, layers=4, heads=12, kv_heads=4, intermediate=2048,
         batch=4, max_length=384, prompt=64, accum=1, checkpointing=False),
    dict(name="qwen2_h768_l4_ckpt_accum2", family="qwen2", hidden=768, layers=4, heads=12, kv_heads=4,
         intermediate=2048, batch=2, max_length=768, prompt=64, accum=2, checkpointing=True),
    # model.lora: the frozen base sharded (or whole, on one rank), the adapter and its state in fp32
    dict(name="qwen2_h768_l4_lora16", family="qwen2", hidden=768, layers=4, heads=12, kv_heads=4, intermediate=2048,
         batch=4, max_length=384, prompt=64, accum=1, checkpointing=False, lora_rank=16),
    dict(name="llama_h512_l8_lora16_ckpt", family="llama", hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1536,
         batch=2, max_length=512, prompt=16, accum=1, checkpointing=True, lora_rank=16),
    dict(name="llama_h512_l8_lora8_qv_dropout", family="llama", hidden=512, layers=8, heads=8, kv_heads=4,
         intermediate=1536, batch=2, max_length=512, prompt=16, accum=1, checkpointing=False, lora_rank=8,
         lora_targets=["q_proj", "v_proj"], lora_dropout=0.1),
    dict(name="qwen2_h768_l4_lora16_ckpt_accum2_1rank", family="qwen2", hidden=768, layers=4, heads=12, kv_heads=4,
         intermediate=2048, batch=2, max_length=768, prompt=64, accum=2, checkpointing=True, lora_rank=16, nproc=1),
)


def lora_overrides(case: dict) -> list[str]:
    if not case.get("lora_rank"):
        return []
    targets = ",".join(case.get("lora_targets", ["all-linear"]))
    return [f"model.lora.rank={case['lora_rank']}", f"model.lora.dropout={case.get('lora_dropout', 0.0)}",
            f"model.lora.target_modules=[{targets}]"]


def case_overrides(case: dict, output_dir: str) -> list[str]:
    return [
        "model=tiny", f"model.name_or_path=tiny:{case['family']}", f"model.tiny_hidden_size={case['hidden']}",
        f"model.tiny_layers={case['layers']}", f"model.tiny_heads={case['heads']}", f"model.tiny_kv_heads={case['kv_heads']}",
        f"model.tiny_intermediate_size={case['intermediate']}", f"model.gradient_checkpointing={str(case['checkpointing']).lower()}",
        f"trainer.per_device_batch_size={case['batch']}", f"trainer.max_length={case['max_length']}",
        f"trainer.max_prompt_length={case['prompt']}", f"trainer.grad_accum_steps={case['accum']}",
        "trainer.device=cpu", "trainer.precision=fp32", "logging.wandb_mode=disabled", "logging.progress_bar=false",
        f"output_dir={output_dir}", *lora_overrides(case),
    ]


def synthetic_pairs(case: dict, count: int):
    """Pairs of exactly max_length tokens per side, the prompt shared: the micro-batch's upper bound."""
    import random

    from drift.tokenize import TokenizedPair, TokenSequence

    rng = random.Random(0)
    response = case["max_length"] - case["prompt"]

    def ids(length):
        return tuple(rng.randrange(3, 250) for _ in range(length))

    return [
        TokenizedPair(f"p{i}", TokenSequence(prompt, ids(response)), TokenSequence(prompt, ids(response)))
        for i, prompt in enumerate(ids(case["prompt"]) for _ in range(count))
    ]


def case_setting(case: dict, nproc: int) -> tuple[Arch, Setting]:
    """The plan's setting for a validation case, from the micro-batch the trainer will really collate."""
    from drift.compose import compose
    from drift.config import Config
    from drift.model import build_byte_tokenizer
    from drift.tokenize import collate_sequences

    config = compose("config", case_overrides(case, "unused"), Config)
    tokenizer = build_byte_tokenizer()
    arch = tiny_arch(config.model, len(tokenizer))
    pairs = synthetic_pairs(case, case["batch"])
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = collate_sequences(sequences, tokenizer.pad_token_id, packed=True, share_prompts=config.trainer.share_prompts)
    # responses after the first of a shared prompt gather (copy) the prompt's and their own keys/values
    gathered = sum(case["prompt"] + len(p.rejected.response_ids) for p in pairs) if config.trainer.share_prompts else 0
    setting = Setting(
        nproc=nproc, device="cpu", optimizer=config.trainer.optimizer, checkpointing=case["checkpointing"],
        tokens=batch.num_positions, scored=int(batch.target_ids.numel()), gathered_kv_tokens=gathered,
        accumulated=case["accum"] > 1, sharded_accumulation=getattr(config.trainer, "accumulate_sharded_grads", True),
        **adapter_fields(config.model.lora),
    )
    return arch, setting


def _resident_bytes() -> tuple[int, int]:
    """(resident now, peak resident since the last reset) of this process, from /proc."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def _reset_peak_resident() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # Linux: reset VmHWM to the current resident size


def measure_case(case: dict, out_path: Path) -> None:
    """One rank of a validation run (under torchrun): two steps, the second measured."""
    import torch

    from drift.compose import compose
    from drift.config import Config
    from drift.io import write_json_atomic
    from drift.model import load_tokenizer
    from drift.parallel import barrier, init_runtime
    from drift.train import Stage, StageTrainer

    runtime = init_runtime("cpu", "fp32")
    work = Path(out_path).parent

    def stage_trainer(stage_case: dict, name: str) -> StageTrainer:
        config = compose("config", case_overrides(stage_case, str(work / "runs")), Config)
        per_step = stage_case["batch"] * runtime.world_size * stage_case["accum"]
        pairs = synthetic_pairs(stage_case, 2 * per_step)
        stage = Stage(name, work / name, pairs, None, None, 1, work / f"{name}_reference_cache")
        return StageTrainer.setup(config, runtime, stage, load_tokenizer(config.model), None)

    def step(trainer: StageTrainer) -> None:
        _, step_pairs = trainer.next_step_pairs()
        trainer.train_step(step_pairs)
        trainer.clip_gradients()
        trainer.optimizer_step()

    # the same code once on a minuscule model first: imports, gloo, autograd's and the allocator's
    # first-use costs (~200 MB here, the same for any model size) stay out of the measurement
    warm_up = stage_trainer(dict(case, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, max_length=32, prompt=8), "warm_up")
    step(warm_up)
    del warm_up
    gc.collect()
    barrier(runtime)
    baseline, _ = _resident_bytes()
    trainer = stage_trainer(case, "measure")
    measured = {}
    for index in (1, 2):
        gc.collect()
        barrier(runtime)
        resident, _ = _resident_bytes()
        _reset_peak_resident()
        step(trainer)
        _, peak = _resident_bytes()
        measured[index] = dict(resident_at_start=resident - baseline, peak=peak - baseline)
    barrier(runtime)
    result = dict(rank=runtime.rank, baseline_bytes=baseline, step1=measured[1], step2=measured[2],
                  threads=torch.get_num_threads())
    write_json_atomic(f"{out_path}.rank{runtime.rank}", result, indent=None)
    if runtime.distributed:
        torch.distributed.destroy_process_group()


def run_validation(out: Path, nproc: int = 2) -> dict:
    from drift.io import write_json_atomic

    rows = []
    for case in VALIDATION_CASES:
        case_nproc = case.get("nproc", nproc)
        arch, setting = case_setting(case, case_nproc)
        name, plan_rows, plan_peak = peak_phase(arch, setting)
        with tempfile.TemporaryDirectory(prefix="memory_plan_") as work:
            result_path = Path(work) / "result.json"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(case_nproc),
                       str(Path(__file__).resolve()), "--measure", json.dumps(case), "--measure-out", str(result_path)]
            print(f"measuring {case['name']} ({arch.total_params() / 1e6:.1f}M parameters, {setting.tokens} tokens "
                  f"per forward) ...", file=sys.stderr, flush=True)
            proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"validation case {case['name']} failed:\n{proc.stderr[-3000:]}")
            ranks = [json.loads(p.read_text()) for p in sorted(Path(work).glob("result.json.rank*"))]
        measured_peak = max(r["step2"]["peak"] for r in ranks)
        measured_state = max(r["step2"]["resident_at_start"] for r in ranks)
        plan_state = plan_rows["params_master"] + plan_rows["optimizer"] + plan_rows.get("params_base", 0.0)
        rows.append(dict(
            case=case, nproc=case_nproc, params=arch.total_params(), tokens_per_forward=setting.tokens, scored=setting.scored,
            plan_peak_phase=name, plan_peak_bytes=plan_peak, plan_rows=plan_rows, measured_peak_bytes=measured_peak,
            peak_ratio=measured_peak / plan_peak, plan_state_bytes=plan_state, measured_state_bytes=measured_state,
            state_ratio=measured_state / plan_state, ranks=ranks,
        ))
    report = dict(
        benchmark="memory_plan validation", nproc=nproc, device="cpu", backend="gloo", precision="fp32",
        measured=("per rank: peak resident memory (VmHWM, reset before the step) during the second step, above the "
                  "resident memory before StageTrainer.setup (taken after the same setup and step ran once on a "
                  "minuscule model, so first-use costs are not counted); MALLOC_MMAP_THRESHOLD_=65536 so freed "
                  "tensors leave resident memory; the largest rank"),
        state=("resident at the start of the second step (master shards + optimizer state, and under LoRA the frozen "
               "base's shards; gradients were freed) "
               "against the plan's parameters + optimizer rows"),
        within_20_percent=all(abs(r["peak_ratio"] - 1) <= 0.2 for r in rows),
        rows=rows,
    )
    write_json_atomic(out, report)
    return report


def format_validation(report: dict) -> str:
    lines = [f"{'case':<38} {'ranks':>5} {'params':>7} {'tokens':>6} {'plan MB':>8} {'measured MB':>11} {'ratio':>6} "
             f"{'state plan':>10} {'measured':>8}  plan's peak phase"]
    for r in report["rows"]:
        lines.append(
            f"{r['case']['name']:<38} {r.get('nproc', report['nproc']):>5} {r['params'] / 1e6:>6.1f}M {r['tokens_per_forward']:>6} {r['plan_peak_bytes'] / 1e6:>8.0f} "
            f"{r['measured_peak_bytes'] / 1e6:>11.0f} {r['peak_ratio']:>6.2f} {r['plan_state_bytes'] / 1e6:>10.0f} "
            f"{r['measured_state_bytes'] / 1e6:>8.0f}  {r['plan_peak_phase']}"
        )
    lines.append(f"all peaks within 20% of the plan: {report['within_20_percent']}")
    return "\n".join(lines)


# ---- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other arguments: the trainer's Hydra overrides (model=qwen14b trainer.max_length=2048 ...) and "
               "nproc=N gpu_memory_gb=80 device=cuda|cpu model_config=PATH",
    )
    parser.add_argument("--validate", action="store_true", help="measure tiny configs on CPU/gloo and compare with the plan")
    parser.add_argument("--out", type=Path, default=RESULTS / "memory_plan_cpu.json", help="--validate's JSON")
    parser.add_argument("--json", type=Path, help="also write the plan's figures to this JSON file")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--measure-out", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    args, rest = build_parser().parse_known_args(argv)
    if args.measure:
        measure_case(json.loads(args.measure), Path(args.measure_out))
        return
    if args.validate:
        report = run_validation(args.out)
        print(format_validation(report))
        print(f"wrote {args.out}")
        return
    from drift.checks import ConfigError

    try:
        plan = plan_from_overrides(rest)
    except ConfigError as error:
        raise SystemExit(f"memory_plan: {error}") from None
    print(format_plan(plan))
    if args.json:
        from drift.io import write_json_atomic

        write_json_atomic(args.json, dict(plan_summary(plan), arch=asdict(plan.arch), setting=asdict(plan.setting)))


if __name__ == "__main__":
    main()
