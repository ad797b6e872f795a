"""The optional backends a run asks for, checked before any work: vLLM, flash-attn, Triton.

Each check finds the package without importing it (``importlib.util.find_spec``) and fails with
one sentence naming the key and the fix. ``sampler.backend=auto`` (the default) is vLLM where the
run is on CUDA and vLLM is installed, else the HF sampler; ``resolve_sampler`` says which and why.
"""

from __future__ import annotations

import dataclasses
import importlib.util

from drift.checks import ConfigError

GPU_SETUP = "bash launch/setup_env.sh --gpu"


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def uses_cuda(device: str) -> bool:
    """Whether a run with trainer.device=``device`` runs on CUDA."""
    if device == "cpu":
        return False
    if device == "cuda":
        return True
    import torch

    return torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and
    slower than fp32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_sampler_dtype(dtype: str, cuda: bool) -> str:
    """sampler.dtype=auto: bfloat16 on GPU and on a CPU with native bf16 (1.3-1.4x the tokens/s here, held-out
    gold the same within its paired standard error: benchmarks/sampler_dtype_gold.py), else float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if cuda or cpu_has_bf16() else "float32"


def resolve_sampler(sampler, device: str):
    """(the sampler config with a concrete backend and dtype, a sentence saying which and why). The request
    key records the resolved values: samples drawn in another dtype are other samples."""
    cuda = uses_cuda(device)
    sampler = dataclasses.replace(sampler, dtype=resolve_sampler_dtype(sampler.dtype, cuda))
    if sampler.backend != "auto":
        return sampler, f"sampler: {sampler.backend} {sampler.dtype} (sampler.backend={sampler.backend})"
    if cuda and installed("vllm"):
        backend, why = "vllm", "CUDA and vLLM are here"
    else:
        backend, why = "hf", "vLLM is not installed" if cuda else "no CUDA device"
    return dataclasses.replace(sampler, backend=backend), f"sampler: {backend} {sampler.dtype} (sampler.backend=auto: {why})"


def check_sampler(sampler, device: str) -> None:
    if sampler.backend != "vllm":
        return
    if device == "cpu":
        raise ConfigError("sampler=vllm runs on GPUs, but trainer.device=cpu; use sampler=hf (or sampler=auto) on a CPU")
    if not installed("vllm"):
        raise ConfigError(f"sampler=vllm needs vLLM, which is not installed here; install the gpu extra with {GPU_SETUP}, "
                          "or use sampler=auto (vLLM when installed, else the HF sampler)")


def check_attention(attn_implementation: str) -> None:
    if attn_implementation.startswith("flash_attention") and not installed("flash_attn"):
        raise ConfigError(f"model.attn_implementation={attn_implementation} needs flash-attn, which is not installed "
                          f"here; install the gpu extra with {GPU_SETUP}, or set model.attn_implementation=sdpa")


def check_logprob_impl(impl: str, device: str) -> None:
    if impl in ("auto", "chunked"):
        return
    package = {"triton": "triton", "flash_attn": "flash_attn"}[impl]
    if not installed(package):
        raise ConfigError(f"trainer.logprob_impl={impl} needs the {package} package, which is not installed here; "
                          f"install the gpu extra with {GPU_SETUP}, or set trainer.logprob_impl=auto")
    if not uses_cuda(device):
        raise ConfigError(f"trainer.logprob_impl={impl} runs on CUDA only, and this run has none (trainer.device="
                          f"{device}); set trainer.logprob_impl=auto (the chunked kernel on a CPU)")


def check_backends(config) -> None:
    """Every backend launch/train.py's config names, before any work."""
    check_sampler(config.sampler, config.trainer.device)
    check_attention(config.model.attn_implementation)
    check_logprob_impl(config.trainer.logprob_impl, config.trainer.device)
