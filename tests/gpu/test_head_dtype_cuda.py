"""The log-prob head under bf16 autocast on a GPU: its GEMM's inputs reach the kernel in bf16 (tensor
cores), not in the fp32 that the final norm returns; the log-probs come back in fp32 within bf16 error
of fp64 (the CPU's fp32 head: tests/unit/test_packing_models.py). Collected everywhere, run only
where CUDA is (conftest)."""

from __future__ import annotations

import torch

from drift import kernels
from drift.parallel import SequenceLogprobModel, sequence_logps
from drift.tokenize import collate_sequences
from tests.tiny import plain_fp64_logps
from tests.unit.test_packing_models import _sequences, _tiny


def test_head_runs_in_bf16_under_cuda_autocast_and_matches_fp64(monkeypatch):
    sequences = _sequences()
    expected = plain_fp64_logps(_tiny("qwen2", seed=3), sequences)
    seen = []
    real = kernels.token_logprobs

    def recording(hidden, weight, targets, **kwargs):
        seen.append((hidden.dtype, weight.dtype))
        out = real(hidden, weight, targets, **kwargs)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(kernels, "token_logprobs", recording)
    wrapper = SequenceLogprobModel(_tiny("qwen2", seed=3), packed=True, share_prompts=True).to("cuda")
    wrapper.autocast_dtype = torch.bfloat16
    batch = collate_sequences(sequences, pad_id=0, packed=True, share_prompts=True).to(torch.device("cuda"))
    totals, _ = sequence_logps(wrapper, batch)
    assert seen == [(torch.bfloat16, torch.bfloat16), torch.float32]
    lengths = torch.tensor([len(s.response_ids) for s in sequences], dtype=torch.float64)
    error = (totals.detach().double().cpu() - expected).abs()
    assert (error <= 0.02 * lengths).all(), (error, lengths)
