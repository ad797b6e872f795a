"""drift.kernels on CUDA: the Triton and flash-attn kernels compiled for real (not interpreted),
checked against the same fp64 reference and tolerances as tests/unit/kernels/test_kernels.py, plus
a bf16 case at a model's vocabulary size. Collected everywhere, run only where CUDA is (conftest)."""

from __future__ import annotations

import pytest
import torch

from tests.unit.kernels.test_kernels import CASES, FLASH_ATTN_BF16_VALUE_TOLERANCE, Case, check_case, via_dispatch

GPU_CASES = CASES + [Case("bf16_model_vocab", 1000, 576, 49152, dtype=torch.bfloat16, bias=False, ignored_fraction=0.2)]


def on_cuda(run):
    """The inputs made on the CPU moved to the GPU inside the autograd graph, so the check's
    gradients w.r.t. its CPU leaves are the kernel's own."""
    def wrapped(hidden, weight, bias, targets, ignore_mask, temperature):
        def cuda(tensor):
            return None if tensor is None else tensor.cuda()

        return run(cuda(hidden), cuda(weight), cuda(bias), cuda(targets), cuda(ignore_mask), temperature).cpu()

    return wrapped


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_kernel_matches_fp64_reference_on_cuda(impl, case):
    check_case(case, on_cuda(via_dispatch(impl)))


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_flash_attn_kernel_matches_fp64_reference_on_cuda(case):
    pytest.importorskip("flash_attn", reason="flash-attn is the gpu extra's: bash launch/setup_env.sh --gpu")
    tolerance = FLASH_ATTN_BF16_VALUE_TOLERANCE if case.dtype == torch.bfloat16 else None
    check_case(case, on_cuda(via_dispatch("flash_attn")), value_tolerance=tolerance)
