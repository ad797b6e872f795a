"""LoRA adapters (``model.lora``): PEFT's LoRA layers trained in place of the model's weights.

The adapter is injected (``peft.inject_adapter_in_model``) into the loaded model before FSDP shards
it (drift.train._build_policy, then drift.parallel.shard), so every decoder layer's unit holds its
frozen base weights, in the compute dtype (bf16 on GPU), beside its adapter's A and B, kept in fp32.
Only A and B require gradients: the optimizer and its state see nothing else, and FSDP gathers the
base and the adapter in the compute dtype but reduce-scatters the adapter's gradients alone.

A training stage writes two folders (drift.checkpoint.save_policy):

    model/     the merged weights W + (alpha / rank) B A in the training precision: a plain HF folder,
               what the sampler, the evaluation, the next stage's fingerprint and a user load
    adapter/   the adapter alone, a PEFT folder (adapter_config.json, adapter_model.safetensors in
               fp32): ``PeftModel.from_pretrained(base, "adapter")``; its base_model_name_or_path
               names the base

The next stage continues the same adapter: a policy source that is a stage's ``model/`` with
``adapter/`` beside it is read as the base named there plus that adapter (``start_of``). Any other
source (the initial model) starts a fresh adapter: A random (seeded by trainer.seed), B zero, so
its output is exactly zero. The warm start therefore starts from the base itself, and the
reference of ``method.reference=initial`` -- the initial model built the same way -- is the base
with an adapter that changes nothing: the base's own log-probs, under the same weights fingerprint
as the warm start's starting policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from drift.checks import ConfigError
from drift.io import atomic_dir

ADAPTER = "adapter"  # a training stage's adapter folder, beside its model/
ADAPTER_NAME = "default"  # PEFT's name of the one adapter
ALL_LINEAR = "all-linear"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT names an adapter's tensors <module>.lora_A.<adapter>.weight in the model, and saves them
# under PeftModel's prefix without the adapter's name
PEFT_PREFIX = "base_model.model."
FACTORS = ("lora_A", "lora_B")


def enabled(model_cfg) -> bool:
    return model_cfg.lora.rank > 0


def is_adapter_key(name: str) -> bool:
    return any(f".{factor}." in name for factor in FACTORS)


# ---- where a stage starts -----------------------------------------------------------------------


def start_of(source: str | None, model_cfg) -> tuple[str | None, Path | None]:
    """(base source, adapter folder or None) of a policy source: a stage's ``model/`` with ``adapter/``
    beside it is the base named in the adapter's config plus that adapter; anything else is a base
    to start a fresh adapter on. A base source of None is the configured model."""
    if source is None:
        return None, None
    folder = Path(source)
    adapter = folder.parent / ADAPTER
    if folder.name != "model" or not (adapter / CONFIG_FILE).is_file():
        return source, None
    base = json.loads((adapter / CONFIG_FILE).read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{adapter / CONFIG_FILE} names no base_model_name_or_path; the stage that wrote it "
                          f"cannot be continued: train it again (resume=retrain) or use a new run_name")
    return (None if base == model_cfg.name_or_path else base), adapter


def base_name(source: str | None, model_cfg) -> str:
    """What the adapter's config records as its base: the folder it was loaded from (the configured
    model's, for None; a tiny random model's own name)."""
    from drift.model import TINY_PREFIX, resolve_source

    if source is not None:
        return str(source)
    return model_cfg.name_or_path if model_cfg.name_or_path.startswith(TINY_PREFIX) else resolve_source(model_cfg)


def adapted_model(make, model_cfg, *, source: str | None, dtype: torch.dtype, seed: int, vocab_size: int | None,
                  adapter_weights: bool = True) -> nn.Module:
    """The policy under model.lora: the base of ``source`` built by ``make`` (drift.model.load_model, or
    build_model_skeleton for the meta device) in ``dtype``, the adapter attached: the one beside
    ``source`` (its weights read when ``adapter_weights``), or a fresh one."""
    base, adapter = start_of(source, model_cfg)
    causal_lm = make(model_cfg, dtype=dtype, seed=seed, source=base, vocab_size=vocab_size)
    return attach(causal_lm, model_cfg.lora, base=base_name(base, model_cfg), seed=seed, model_name=model_cfg.name_or_path,
                  adapter=adapter if adapter_weights else None)


def is_adapted(causal_lm: nn.Module) -> bool:
    return ADAPTER_NAME in getattr(causal_lm, "peft_config", {})


# ---- the adapter in the model -------------------------------------------------------------------


def linear_names(causal_lm: nn.Module) -> list[str]:
    """The names (last part) of the decoder's linear layers, the lm_head left out: what
    model.lora.target_modules can name."""
    head = causal_lm.get_output_embeddings()
    names = {name.rpartition(".")[2] for name, module in causal_lm.named_modules()
             if isinstance(module, nn.Linear) and module is not head}
    return sorted(names)


def check_targets(causal_lm: nn.Module, targets: list[str], model_name: str) -> None:
    """One sentence when model.lora.target_modules names a layer the model lacks."""
    if list(targets) == [ALL_LINEAR]:
        return
    known = linear_names(causal_lm)
    missing = [name for name in targets if name not in known]
    if missing:
        raise ConfigError(
            f"model.lora.target_modules names {', '.join(missing)}, which {model_name} does not have; its linear "
            f"layers are {', '.join(known)} (or give model.lora.target_modules=[{ALL_LINEAR}])"
        )


def peft_config(lora_cfg, base: str, targets: list[str]):
    import peft

    return peft.LoraConfig(
        r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, target_modules=targets,
        task_type="CAUSAL_LM", base_model_name_or_path=base, bias="none", use_rslora=False,
    )


def attach(causal_lm: nn.Module, lora_cfg, *, base: str, seed: int, model_name: str,
           adapter: Path | None = None) -> nn.Module:
    """Inject the adapter into ``causal_lm`` (in place; also on the meta device), its A and B in fp32,
    only they trainable. ``adapter``: a PEFT folder whose weights fill it; None: a fresh adapter
    (A seeded by ``seed`` alone, B zero). ``base`` is recorded in the adapter's config."""
    import peft

    check_targets(causal_lm, lora_cfg.target_modules, model_name)
    targets = list(lora_cfg.target_modules)
    # all-linear by name, so that the adapter's config lists the layers it adapts (as PEFT's own
    # all-linear would, less the lm_head)
    targets = linear_names(causal_lm) if targets == [ALL_LINEAR] else targets
    # the caller's random state is kept, and the fresh A is a function of the seed only: every
    # process and every stage that starts a fresh adapter builds the same one
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(peft_config(lora_cfg, base, targets), causal_lm, adapter_name=ADAPTER_NAME)
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in causal_lm.named_modules():
        if name.rpartition(".")[2] in FACTORS:
            module.float()  # fp32 master weights; the base keeps its (compute) dtype
        if isinstance(module, BaseTunerLayer):
            # one process computing in bf16 runs under autocast, which casts the fp32 adapter (once per
            # forward); PEFT's own cast of the input up to the adapter's fp32 would make every adapted
            # projection keep a copy of its input for backward (FSDP hands the adapter over in bf16 anyway)
            module.cast_input_dtype_enabled = False
    set_trainable(causal_lm, True)
    if adapter is not None:
        load_adapter_weights(causal_lm, adapter)
    return causal_lm


def set_trainable(causal_lm: nn.Module, trainable: bool) -> None:
    """The base frozen; the adapter's A and B trainable when ``trainable``."""
    for name, parameter in causal_lm.named_parameters():
        parameter.requires_grad_(trainable and is_adapter_key(name))


def load_adapter_weights(causal_lm: nn.Module, folder: Path) -> None:
    """Fill the injected adapter from a PEFT folder; every adapter tensor must be there."""
    from safetensors.torch import load_file

    saved = load_file(Path(folder) / WEIGHTS_FILE)
    state = {model_key(key): value for key, value in saved.items()}
    wanted = {name: tuple(p.shape) for name, p in causal_lm.named_parameters() if is_adapter_key(name)}
    misfits = sorted(set(wanted) ^ set(state)) + sorted(
        name for name in set(wanted) & set(state) if tuple(state[name].shape) != wanted[name])
    if misfits:
        raise ConfigError(
            f"{Path(folder) / WEIGHTS_FILE} does not fit model.lora here ({len(misfits)} adapter tensors missing, "
            f"unexpected or of another shape, e.g. {misfits[0]}): the stage it came from used other model.lora "
            f"settings; train again from there (resume=retrain) or use a new run_name"
        )
    causal_lm.load_state_dict(state, strict=False)


def model_key(saved_key: str) -> str:
    """PEFT's saved name of an adapter tensor -> its name in the injected model."""
    key = saved_key.removeprefix(PEFT_PREFIX)
    for factor in FACTORS:
        key = key.replace(f".{factor}.weight", f".{factor}.{ADAPTER_NAME}.weight")
    return key


def saved_key(model_key_: str) -> str:
    """An adapter tensor's name in the injected model -> PEFT's saved name."""
    return PEFT_PREFIX + model_key_.replace(f".{ADAPTER_NAME}.", ".")


# ---- export: the merged model and the adapter folder --------------------------------------------


def scaling(causal_lm: nn.Module) -> float:
    config = causal_lm.peft_config[ADAPTER_NAME]
    return config.lora_alpha / config.r


def merged_state(state: dict[str, torch.Tensor], scale: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The plain model's state dict (HF keys) from an adapted one's: each adapted linear's weight becomes
    W + scale * B @ A, computed in fp32 and cast to ``dtype`` (one tensor at a time); the adapter's
    tensors are dropped and every other floating tensor is cast to ``dtype``."""
    merged = {}
    for key, value in state.items():
        if is_adapter_key(key):
            continue
        module, base_layer, leaf = key.rpartition(".base_layer.")
        if base_layer:
            key = f"{module}.{leaf}"
            if leaf == "weight":
                lora_a = state[f"{module}.lora_A.{ADAPTER_NAME}.weight"].float()
                lora_b = state[f"{module}.lora_B.{ADAPTER_NAME}.weight"].float()
                value = value.float() + (lora_b @ lora_a) * scale
        merged[key] = value.to(dtype) if value.is_floating_point() else value
    return merged


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors of an adapted state dict (HF keys), under PEFT's saved names, in fp32."""
    return {saved_key(key): value.float().contiguous() for key, value in state.items() if is_adapter_key(key)}


def save_adapter(causal_lm: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    """The PEFT folder of the adapter in ``state`` (HF keys), written to a staging folder and swapped in."""
    from safetensors.torch import save_file

    tensors = adapter_state(state)
    with atomic_dir(Path(folder)) as staging:
        causal_lm.peft_config[ADAPTER_NAME].save_pretrained(staging)
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
