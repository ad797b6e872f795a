"""Input checks and the choice of implementation; the public entry point lives here.

triton and flash-attn are imported only when their implementation is used, so importing
drift.kernels costs nothing and works where neither is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os

import torch

from .function import TokenLogprobs

IMPLS = ("auto", "chunked", "triton", "flash_attn")
_MODULES = {
    "chunked": "drift.kernels.chunked",
    "triton": "drift.kernels.triton_logprobs",
    "flash_attn": "drift.kernels.flash_attn_logprobs",
}
_LOW_PRECISION_AND_FP32 = (torch.float32, torch.bfloat16, torch.float16)


def _installed(package: str) -> bool:
    # find_spec locates the package without importing it
    return importlib.util.find_spec(package) is not None


def unavailable_reason(impl: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `impl` cannot run on tensors of this device and dtype, or None when it can."""
    if impl == "chunked":
        return None
    if impl == "triton":
        if not _installed("triton"):
            return "impl='triton' needs the triton package: pip install triton (or pip install 'drift[gpu]')"
        if device.type == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                return (
                    "impl='triton' on CPU tensors runs only under the Triton interpreter: set TRITON_INTERPRET=1 "
                    "in the environment before drift.kernels.triton_logprobs is first imported (slow, meant for "
                    "tests on small shapes); on CPU use impl='chunked'"
                )
        elif device.type != "cuda":
            return f"impl='triton' needs CUDA tensors, got {device.type}; use impl='chunked'"
        if dtype not in _LOW_PRECISION_AND_FP32:
            return f"impl='triton' takes float32, bfloat16 or float16 inputs, got {dtype}; use impl='chunked'"
        return None
    if impl == "flash_attn":
        if not _installed("flash_attn"):
            return "impl='flash_attn' needs the flash-attn package (the gpu extra): bash launch/setup_env.sh --gpu"
        if device.type != "cuda":
            return (
                f"impl='flash_attn' needs CUDA tensors (flash-attn's cross-entropy kernel is CUDA-only), got "
                f"{device.type}; use impl='chunked'"
            )
        if dtype not in _LOW_PRECISION_AND_FP32:
            return f"impl='flash_attn' takes float32, bfloat16 or float16 inputs, got {dtype}; use impl='chunked'"
        return None
    raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")


def resolve_impl(impl: str, device: torch.device, dtype: torch.dtype) -> str:
    """The implementation `impl` names, or for "auto" the best one that can run here."""
    if impl == "auto":
        # on CPU the Triton interpreter is a test harness, never a choice
        candidates = ("triton", "flash_attn", "chunked") if device.type == "cuda" else ("chunked",)
        return next(name for name in candidates if unavailable_reason(name, device, dtype) is None)
    reason = unavailable_reason(impl, device, dtype)
    if reason is not None:
        raise RuntimeError(reason)
    return impl


def _load(impl: str, device: torch.device):
    module = importlib.import_module(_MODULES[impl])
    if impl == "triton" and device.type == "cpu" and not module.INTERPRETED:
        raise RuntimeError(
            "impl='triton' on CPU tensors: drift.kernels.triton_logprobs was imported before TRITON_INTERPRET=1 "
            "was set, so its kernels were compiled for a GPU; set it before the first import (e.g. in a fresh "
            "process)"
        )
    return module


def _check_inputs(hidden, weight, targets, bias, ignore_mask, temperature):
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be [tokens, H] and weight [vocab, H] with the same H; got hidden "
            f"{tuple(hidden.shape)} and weight {tuple(weight.shape)}"
        )
    n_tokens = hidden.shape[0]
    if targets.shape != (n_tokens,) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be int64 (or int32) of shape [{n_tokens}]; got {targets.dtype} {tuple(targets.shape)}")
    if ignore_mask is not None and (ignore_mask.shape != (n_tokens,) or ignore_mask.dtype != torch.bool):
        raise ValueError(f"ignore_mask must be bool [{n_tokens}]; got {ignore_mask.dtype} {tuple(ignore_mask.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}] (one per vocab row); got {tuple(bias.shape)}")
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError(
            f"hidden, weight and bias must share a dtype; got hidden {hidden.dtype}, weight {weight.dtype}"
            + ("" if bias is None else f", bias {bias.dtype}")
        )
    tensors = [hidden, weight, targets] + [t for t in (bias, ignore_mask) if t is not None]
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"all inputs must be on one device; got {sorted({str(t.device) for t in tensors})}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature}")


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    impl: str = "auto",
) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for hidden [N, H], weight [V, H], targets [N] -> float32 [N].

    log p = (h_i . W[t_i] + b[t_i]) / T - logsumexp((h_i . W + b) / T), without building the
    [N, V] logits. Positions where ``ignore_mask`` is True return 0 and get no gradient (they
    never reach the kernel, so their target ids may be anything, e.g. -100). Differentiable in
    hidden, weight and bias. ``impl`` is "auto" or one of "chunked", "triton", "flash_attn"; a
    forced one that cannot run here raises an error saying what is missing.
    """
    _check_inputs(hidden, weight, targets, bias, ignore_mask, temperature)
    name = resolve_impl(impl, hidden.device, hidden.dtype)
    implementation = _load(name, hidden.device)
    if ignore_mask is None:
        kept_hidden, kept_targets = hidden, targets
    else:
        kept = (~ignore_mask).nonzero().squeeze(1)
        kept_hidden, kept_targets = hidden.index_select(0, kept), targets.index_select(0, kept)
    kept_targets = kept_targets.long().contiguous()
    vocab = weight.shape[0]
    if kept_targets.numel() and bool(((kept_targets < 0) | (kept_targets >= vocab)).any()):
        bad = kept_targets[(kept_targets < 0) | (kept_targets >= vocab)][:5].tolist()
        raise ValueError(f"targets must lie in [0, {vocab}) where not ignored; got e.g. {bad} (mask them with ignore_mask)")
    logps = TokenLogprobs.apply(
        kept_hidden.contiguous(), weight.contiguous(), bias, kept_targets, float(temperature), implementation
    )
    if ignore_mask is None:
        return logps
    return logps.new_zeros(hidden.shape[0]).index_copy(0, kept, logps)
