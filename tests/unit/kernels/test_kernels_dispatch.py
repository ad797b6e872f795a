"""drift.kernels dispatch: what "auto" picks, what a forced implementation says when it cannot
run, input checks (that importing the package pulls in neither triton nor flash-attn, in a fresh
interpreter: tests/integration/test_kernels_dispatch_process.py)."""

from __future__ import annotations

import drift.kernels.dispatch as dispatch
import pytest
import torch
from drift.kernels import resolve_impl, token_logprobs

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def installed(*packages):
    return lambda package: package in packages


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_auto_on_cpu_is_chunked_even_with_everything_installed(monkeypatch, dtype):
    monkeypatch.setattr(dispatch, "_installed", installed("triton", "flash_attn"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is for tests, never auto's choice
    assert resolve_impl("auto", CPU, dtype) == "chunked"


@pytest.mark.parametrize(
    ("packages", "dtype", "expected"),
    [
        (("triton", "flash_attn"), torch.bfloat16, "triton"),
        (("triton",), torch.float32, "triton"),
        (("flash_attn",), torch.bfloat16, "flash_attn"),
        ((), torch.bfloat16, "chunked"),
        (("triton", "flash_attn"), torch.float64, "chunked"),
    ],
)
def test_auto_on_cuda_prefers_triton_then_flash_attn_then_chunked(monkeypatch, packages, dtype, expected):
    monkeypatch.setattr(dispatch, "_installed", installed(*packages))
    assert resolve_impl("auto", CUDA, dtype) == expected


@pytest.mark.parametrize(
    ("impl", "device", "packages", "env", "message"),
    [
        ("flash_attn", CUDA, (), {}, "impl='flash_attn' needs the flash-attn package (the gpu extra): bash launch/setup_env.sh --gpu"),
        ("flash_attn", CPU, ("flash_attn",), {}, "impl='flash_attn' needs CUDA tensors"),
        ("triton", CUDA, (), {}, "impl='triton' needs the triton package: pip install triton"),
        ("triton", CPU, ("triton",), {}, "set TRITON_INTERPRET=1 in the environment before drift.kernels.triton_logprobs"),
    ],
)
def test_forcing_an_unavailable_impl_says_what_is_missing(monkeypatch, impl, device, packages, env, message):
    monkeypatch.setattr(dispatch, "_installed", installed(*packages))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError) as raised:
        resolve_impl(impl, device, torch.float32)
    assert message in str(raised.value)


def test_forcing_triton_with_fp64_names_the_dtypes_it_takes(monkeypatch):
    monkeypatch.setattr(dispatch, "_installed", installed("triton"))
    with pytest.raises(RuntimeError, match="takes float32, bfloat16 or float16 inputs, got torch.float64"):
        resolve_impl("triton", CUDA, torch.float64)


def test_unknown_impl_lists_the_valid_ones():
    with pytest.raises(ValueError, match="impl must be one of auto, chunked, triton, flash_attn; got 'cuda'"):
        resolve_impl("cuda", CPU, torch.float32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(hidden=torch.randn(4, 7)), "same H"),
        (dict(hidden=torch.randn(2, 4, 8)), r"hidden must be \[tokens, H\]"),
        (dict(targets=torch.tensor([0, 1, 2])), r"targets must be int64 \(or int32\) of shape \[4\]"),
        (dict(targets=torch.tensor([0, 1, 2, 11])), r"targets must lie in \[0, 11\) where not ignored; got e.g. \[11\]"),
        (dict(targets=torch.tensor([0, -100, 2, 3])), "mask them with ignore_mask"),
        (dict(ignore_mask=torch.tensor([0, 1, 0, 0])), "ignore_mask must be bool"),
        (dict(bias=torch.randn(10)), r"bias must be \[11\]"),
        (dict(weight=torch.randn(11, 8, dtype=torch.float64)), "must share a dtype"),
        (dict(temperature=0.0), "temperature must be a finite number > 0; got 0.0"),
    ],
)
def test_bad_inputs_are_named(change, message):
    inputs = dict(hidden=torch.randn(4, 8), weight=torch.randn(11, 8), targets=torch.tensor([0, 1, 2, 3]))
    inputs.update(change)
    options = {key: inputs.pop(key) for key in ("bias", "ignore_mask", "temperature") if key in inputs}
    with pytest.raises(ValueError, match=message):
        token_logprobs(inputs["hidden"], inputs["weight"], inputs["targets"], **options)


def test_ignored_positions_may_hold_any_id():
    targets = torch.tensor([0, -100, 2, 12345])
    ignore_mask = torch.tensor([False, True, False, True])
    logps = token_logprobs(torch.randn(4, 8), torch.randn(11, 8), targets, ignore_mask=ignore_mask)
    assert logps[ignore_mask].eq(0).all() and logps[~ignore_mask].lt(0).all()
