"""drift.kernels numerics: every implementation against an fp64 reference computed here.

The reference is the textbook formula (full logits, log_softmax, gather) in fp64 on the same
(already rounded) inputs, so the differences measure only each implementation's arithmetic.
Tiles and chunks are shrunk so the small shapes span many of them, with sizes that divide
nothing. Triton runs in a subprocess under TRITON_INTERPRET=1 (the variable must be set before
its kernels are defined, and it must not leak into the other tests of this process).

Run as a script (python tests/unit/kernels/test_kernels.py triton) it checks one implementation on all cases;
that is what tests/integration/test_kernels_process.py runs in its subprocess.
"""

from __future__ import annotations

import dataclasses
import sys

import drift.kernels._common as common
import drift.kernels.chunked as chunked
import drift.kernels.flash_attn_logprobs as flash_attn_logprobs
import pytest
import torch
from drift.kernels import reference_token_logprobs, token_logprobs
from drift.kernels.function import TokenLogprobs

# Max abs error allowed, as a fraction of the largest magnitude involved: max |logit| (at least 1)
# for log-probs, max |reference gradient| for gradients.
# - fp32 inputs: fp32 arithmetic throughout; the error is a few ulps of the largest logit.
# - bf16 inputs: Triton accumulates the logits in fp32 and never rounds them, so the fp32 bound
#   holds; gradients come back in bf16 (8-bit mantissa, 2^-9 rounding) and the Triton, chunked and
#   flash-attn backwards also round the logit gradient (or P) to bf16 before their matmuls: 2^-6 of
#   the largest.
# - flash-attn and the chunked kernel compute their bf16 logits in the input dtype (one rounding,
#   2^-9 of a logit), so their bf16 log-probs carry it: flash-attn's 2^-7 of the largest logit; the
#   chunked kernel reads the target's logit from the same rounded tile, 2^-8.
VALUE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-5}
FLASH_ATTN_BF16_VALUE_TOLERANCE = 2**-7
CHUNKED_BF16_VALUE_TOLERANCE = 2**-8
GRAD_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2**-6}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    n_tokens: int
    hidden_size: int
    vocab: int
    dtype: torch.dtype = torch.float32
    bias: bool = False
    ignored_fraction: float = 0.0
    temperature: float = 1.0
    logit_scale: float = 1.0  # scales the weight so logits reach about this magnitude
    weight_grad: bool = True
    hidden_grad: bool = True


CASES = [
    Case("odd_shapes_bias_mask_temperature", 37, 40, 300, bias=True, ignored_fraction=0.3, temperature=0.7),
    Case("one_token", 1, 16, 77),
    Case("all_ignored", 5, 16, 77, ignored_fraction=1.0),
    Case("extreme_logits", 9, 24, 130, logit_scale=1e4),
    Case("bf16", 37, 40, 300, dtype=torch.bfloat16, bias=True, ignored_fraction=0.3, temperature=1.3),
    Case("frozen_weight", 11, 16, 90, weight_grad=False),
    Case("frozen_hidden", 11, 16, 90, hidden_grad=False, bias=True),
]


def make_inputs(case: Case, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(case.n_tokens, case.hidden_size, generator=generator)
    weight = torch.randn(case.vocab, case.hidden_size, generator=generator)
    # logits ~ N(0, logit_scale^2) when logit_scale > 1; otherwise ~ N(0, H)
    if case.logit_scale != 1.0:
        weight *= case.logit_scale / case.hidden_size**0.5
    bias = torch.randn(case.vocab, generator=generator) if case.bias else None
    targets = torch.randint(0, case.vocab, (case.n_tokens,), generator=generator)
    if case.logit_scale != 1.0:
        # half the rows target their argmax (log p ~ 0), the rest a random id (log p ~ -1e4)
        argmax = (hidden @ weight.t()).argmax(1)
        targets[::2] = argmax[::2]
    ignore_mask = torch.rand(case.n_tokens, generator=generator) < case.ignored_fraction
    targets[ignore_mask] = -100  # ignored ids must never be read
    grad_logps = torch.randn(case.n_tokens, generator=generator)
    if case.n_tokens > 1:
        grad_logps[-1] = 0.0  # a zero upstream gradient must give exactly zero contributions
    hidden, weight = hidden.to(case.dtype), weight.to(case.dtype)
    bias = None if bias is None else bias.to(case.dtype)
    return hidden, weight, bias, targets, ignore_mask, grad_logps


def fp64_reference(case, hidden, weight, bias, targets, ignore_mask, grad_logps):
    """(log-probs, grads for hidden/weight/bias, max |logit|) by the textbook formula in fp64."""
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    logits = leaves[0] @ leaves[1].t()
    if bias is not None:
        logits = logits + leaves[2]
    logits = logits / case.temperature
    safe_targets = targets.masked_fill(ignore_mask, 0)
    logps = torch.log_softmax(logits, dim=-1).gather(1, safe_targets.unsqueeze(1)).squeeze(1)
    logps = logps.masked_fill(ignore_mask, 0.0)
    grads = torch.autograd.grad(logps, leaves, grad_logps.double())
    return logps.detach(), grads, logits.detach().abs().max().item()


def assert_close(actual, expected, tolerance, scale, what):
    error = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    bound = tolerance * max(1.0, scale)
    assert error <= bound, f"{what}: max abs error {error:.3g} > {bound:.3g} (tolerance {tolerance:.3g} x {scale:.3g})"


def check_case(case: Case, run, value_tolerance: float | None = None) -> None:
    """run(hidden, weight, bias, targets, ignore_mask, temperature) -> log-probs; checks values and grads."""
    hidden, weight, bias, targets, ignore_mask, grad_logps = make_inputs(case)
    expected, expected_grads, max_logit = fp64_reference(case, hidden, weight, bias, targets, ignore_mask, grad_logps)
    hidden.requires_grad_(case.hidden_grad)
    weight.requires_grad_(case.weight_grad)
    if bias is not None:
        bias.requires_grad_(True)
    logps = run(hidden, weight, bias, targets, ignore_mask, case.temperature)
    assert logps.dtype == torch.float32 and logps.shape == (case.n_tokens,)
    tolerance = VALUE_TOLERANCE[case.dtype] if value_tolerance is None else value_tolerance
    assert_close(logps, expected, tolerance, max_logit, f"{case.name}: log-probs")
    assert torch.all(logps[ignore_mask] == 0)
    inputs = [(name, t, g) for name, t, g in zip(("hidden", "weight", "bias"), (hidden, weight, bias), expected_grads)]
    inputs = [(name, t, g) for name, t, g in inputs if t is not None and t.requires_grad]
    grads = torch.autograd.grad(logps, [t for _, t, _ in inputs], grad_logps)
    for (name, tensor, expected_grad), grad in zip(inputs, grads):
        assert grad.dtype == tensor.dtype and grad.shape == tensor.shape
        assert_close(grad, expected_grad, GRAD_TOLERANCE[case.dtype], expected_grad.abs().max().item(), f"{case.name}: d {name}")
    if case.hidden_grad:
        assert torch.all(grads[0][ignore_mask] == 0), f"{case.name}: ignored positions got a hidden gradient"


def via_dispatch(impl: str):
    def run(hidden, weight, bias, targets, ignore_mask, temperature):
        return token_logprobs(hidden, weight, targets, bias=bias, ignore_mask=ignore_mask, temperature=temperature, impl=impl)

    return run


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reference_matches_fp64_formula(case):
    def run(hidden, weight, bias, targets, ignore_mask, temperature):
        return reference_token_logprobs(hidden, weight, targets, bias=bias, ignore_mask=ignore_mask, temperature=temperature)

    check_case(case, run)


@pytest.mark.parametrize("tiles", [(7, 37), None], ids=["many_tiles", "default_tiles"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_chunked_matches_fp64_reference(case, tiles, monkeypatch):
    if tiles is not None:
        monkeypatch.setattr(chunked, "TOKEN_CHUNK", tiles[0])
        monkeypatch.setattr(chunked, "VOCAB_BLOCK", tiles[1])
    check_case(case, via_dispatch("chunked"), CHUNKED_BF16_VALUE_TOLERANCE if case.dtype == torch.bfloat16 else None)


def test_chunked_bf16_rounds_the_logits_once_and_keeps_log_probs_at_most_zero(monkeypatch):
    """bf16 GEMMs round each logit to bf16 (so the result is not fp32-exact: the check can fail), and a
    target holding all the mass gets log p = 0 exactly, never a positive value from mixing roundings."""
    monkeypatch.setattr(chunked, "VOCAB_BLOCK", 37)
    case = Case("bf16_extreme", 9, 24, 130, dtype=torch.bfloat16, logit_scale=60.0)
    hidden, weight, bias, targets, ignore_mask, grad_logps = make_inputs(case)
    expected, _, _ = fp64_reference(case, hidden, weight, bias, targets, ignore_mask, grad_logps)
    logps = token_logprobs(hidden, weight, targets, impl="chunked")
    assert (logps <= 0).all()
    dominant = expected > -1e-6
    assert dominant.any() and (logps[dominant].double() - expected[dominant]).abs().max() <= 1e-6
    assert (logps.double() - expected).abs().max() > 1e-5  # the bf16 rounding is there


def test_chunked_fp64_inputs_compute_in_fp64(monkeypatch):
    monkeypatch.setattr(chunked, "VOCAB_BLOCK", 37)
    case = Case("fp64", 13, 16, 200, bias=True, temperature=0.9)
    hidden, weight, bias, targets, ignore_mask, grad_logps = make_inputs(case)
    expected, (expected_grad_hidden, *_), _ = fp64_reference(
        case, hidden.double(), weight.double(), bias.double(), targets, ignore_mask, grad_logps
    )
    hidden = hidden.double().requires_grad_()
    logps = token_logprobs(hidden, weight.double(), targets, bias=bias.double(), temperature=0.9, impl="chunked")
    (grad_hidden,) = torch.autograd.grad(logps, hidden, grad_logps)
    # the output is float32 by contract; the gradient keeps fp64 precision
    assert_close(logps, expected, 2**-24, expected.abs().max().item(), "fp64 log-probs")
    assert_close(grad_hidden, expected_grad_hidden, 1e-12, expected_grad_hidden.abs().max().item(), "fp64 d hidden")


class _FlashAttnCrossEntropyStandIn(torch.autograd.Function):
    """flash-attn's cross_entropy_loss contract in plain torch: (losses, z_losses) with
    losses = lse - target logit, an optional precomputed lse, and a backward that writes the
    logit gradient over the logits when inplace_backward is set."""

    @staticmethod
    def forward(ctx, logits, labels, precomputed_lse, inplace_backward):
        lse = torch.logsumexp(logits.float(), dim=1) if precomputed_lse is None else precomputed_lse
        losses = lse - logits.gather(1, labels.unsqueeze(1)).squeeze(1).float()
        ctx.save_for_backward(logits, lse, labels)
        ctx.inplace_backward = inplace_backward
        return losses, torch.zeros_like(losses)

    @staticmethod
    def backward(ctx, grad_losses, _grad_z_losses):
        logits, lse, labels = ctx.saved_tensors
        probs = torch.exp(logits.float() - lse.unsqueeze(1))
        probs[torch.arange(len(labels)), labels] -= 1.0
        dlogits = logits if ctx.inplace_backward else torch.empty_like(logits)
        dlogits.copy_(grad_losses.unsqueeze(1) * probs)
        return dlogits, None, None, None


def test_flash_attn_wrapper_against_a_stand_in_for_its_kernel(monkeypatch):
    """Checks our chunking, lse hand-off, in-place gradient and chain rule on CPU; the real
    kernel needs CUDA and flash-attn (that path is exercised by the GPU benchmark)."""
    seen = []

    def cross_entropy_loss(logits, labels, precomputed_lse=None, inplace_backward=False):
        seen.append((precomputed_lse is not None, inplace_backward, logits.requires_grad))
        return _FlashAttnCrossEntropyStandIn.apply(logits, labels, precomputed_lse, inplace_backward)

    monkeypatch.setattr(flash_attn_logprobs, "_cross_entropy_loss", lambda: cross_entropy_loss)
    # about 7 tokens per chunk at V=300 in fp32, 14 in bf16
    monkeypatch.setattr(common, "CHUNK_BUDGET_BYTES", 7 * 300 * 4)

    def run(hidden, weight, bias, targets, ignore_mask, temperature):
        kept = (~ignore_mask).nonzero().squeeze(1)
        logps = TokenLogprobs.apply(hidden[kept], weight, bias, targets[kept], temperature, flash_attn_logprobs)
        return logps.new_zeros(len(targets)).index_copy(0, kept, logps)

    for case in CASES:
        seen.clear()
        tolerance = FLASH_ATTN_BF16_VALUE_TOLERANCE if case.dtype == torch.bfloat16 else None
        check_case(case, run, value_tolerance=tolerance)
        forward_calls = [call for call in seen if not call[2]]
        backward_calls = [call for call in seen if call[2]]
        assert all(not lse and not inplace for lse, inplace, _ in forward_calls)
        # the backward reuses the forward's lse and takes the gradient in place
        assert all(lse and inplace for lse, inplace, _ in backward_calls)
        assert len(backward_calls) == len(forward_calls)


if __name__ == "__main__":
    impl = sys.argv[1]
    # several backward chunks even at these sizes
    common.CHUNK_BUDGET_BYTES = 16 * 300 * 4
    for case in CASES:
        check_case(case, via_dispatch(impl))
        print(case.name, flush=True)
