"""Packed rows through real (tiny, random-weight) models: sliding-window layers (Qwen2's and Gemma 3's),
the FlexAttention backend end to end, no device sync per layer, and the head GEMM in bf16 under autocast.

The reference is each sequence alone through the plain transformers model (its own SDPA attention
and sliding-window masks) in fp64.
"""

from __future__ import annotations

import pytest
import torch

from drift import kernels, packing
from drift.parallel import SequenceLogprobModel, sequence_logps
from drift.tokenize import TokenSequence, collate_sequences
from tests.tiny import plain_fp64_logps, synthetic_pairs

VOCAB = 250
WINDOW = 4  # shorter than most test sequences, so the window really cuts


def _tiny(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, sliding_window=WINDOW,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if family == "gemma3":
        config = Gemma3TextConfig(head_dim=8, query_pre_attn_scalar=8, **common)
    else:
        config = Qwen2Config(use_sliding_window=True, **common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def _sequences():
    pairs = synthetic_pairs(3, seed=11, vocab=VOCAB)
    a = pairs[0]
    third = TokenSequence(a.chosen.prompt_ids, a.rejected.response_ids[:5] + a.chosen.response_ids[:7])
    return [a.chosen, pairs[1].chosen, pairs[2].chosen, a.rejected, pairs[1].rejected, third]


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_sliding_window_models_pack_and_match_each_sequence_alone(family):
    sequences = _sequences()
    assert max(len(s) for s in sequences) > 2 * WINDOW
    expected = plain_fp64_logps(_tiny(family), sequences)
    # without the window the answer would differ: the check can fail
    assert not torch.allclose(plain_fp64_logps(_no_window(_tiny(family)), sequences), expected, atol=1e-3)
    for share in (True, False):
        wrapper = SequenceLogprobModel(_tiny(family).double(), packed=True, share_prompts=share)
        assert wrapper.packed and wrapper.share_prompts is share
        batch = collate_sequences(sequences, pad_id=0, packed=True, share_prompts=share)
        assert batch.num_padding == 0
        totals, _ = sequence_logps(wrapper, batch)
        assert torch.allclose(totals.detach().double(), expected, atol=1e-5, rtol=1e-6), (family, share, totals, expected)


def _no_window(causal_lm):
    """The same weights with a window longer than any sequence."""
    for layer in causal_lm.model.layers:
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = 10_000
    causal_lm.config.sliding_window = 10_000
    return causal_lm


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_backend_end_to_end_on_cpu(monkeypatch):
    """The CUDA-without-flash-attn path (FlexAttention, one block mask per batch and window), run
    eagerly on CPU through a sliding-window model with shared prompts: forward only (FlexAttention
    has no CPU backward)."""
    sequences = _sequences()
    expected = plain_fp64_logps(_tiny("gemma3", seed=1), sequences)
    built = []
    real_build = packing.flex_block_mask

    def counting_build(layout, window, device):
        built.append(("block_mask", window, device) not in layout._cache)
        return real_build(layout, window, device)

    monkeypatch.setattr(packing, "attention_backend", lambda query, dropout_p: "flex")
    monkeypatch.setattr(packing, "flex_block_mask", counting_build)
    wrapper = SequenceLogprobModel(_tiny("gemma3", seed=1).double(), packed=True, share_prompts=True)
    batch = collate_sequences(sequences, pad_id=0, packed=True, share_prompts=True)
    with torch.no_grad():
        totals, _ = sequence_logps(wrapper, batch)
    assert torch.allclose(totals.double(), expected, atol=1e-5, rtol=1e-6)
    # three layers, two window sizes: two block masks built, the third layer reuses the first's
    assert built == [True, True, False]


def test_packed_forward_reads_boundaries_without_device_sync(monkeypatch):
    """The layout travels as Python ints: inside the forward no tensor is turned into a list, and
    the attention does not need the cu_seq_lens tensors at all."""
    sequences = _sequences()
    wrapper = SequenceLogprobModel(_tiny("qwen2"), packed=True, share_prompts=True)
    batch = collate_sequences(sequences, pad_id=0, packed=True, share_prompts=True)
    inputs = batch.model_inputs()
    assert inputs["drift_layout"].bounds == tuple(batch.boundaries.tolist())
    with torch.no_grad():
        reference = wrapper.causal_lm.get_decoder()(**inputs).last_hidden_state

    def no_tolist(self, *args, **kwargs):
        raise AssertionError("tolist() inside the packed forward: a device sync on GPU")

    monkeypatch.setattr(torch.Tensor, "tolist", no_tolist)
    without_cu = {k: v for k, v in inputs.items() if not k.startswith("cu_seq_lens")}
    with torch.no_grad():
        hidden = wrapper.causal_lm.get_decoder()(**without_cu).last_hidden_state
    assert torch.equal(hidden, reference)


def test_head_under_cpu_autocast_gets_fp32_and_matches_fp64(monkeypatch):
    """Single-process bf16 under autocast on a CPU (LoRA's path): the decoder computes in bf16; the head,
    outside autocast, gets the fp32 states the final norm returns and the fp32 weight, so the chunked
    kernel's GEMMs run in fp32 (on GPU the head runs in bf16, tests/gpu/); the log-probs stay within
    bf16 error of fp64."""
    sequences = _sequences()
    expected = plain_fp64_logps(_tiny("qwen2", seed=3), sequences)
    seen = []
    real = kernels.token_logprobs

    def recording(hidden, weight, targets, **kwargs):
        seen.append((hidden.dtype, weight.dtype, torch.is_autocast_enabled("cpu")))
        out = real(hidden, weight, targets, **kwargs)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(kernels, "token_logprobs", recording)
    wrapper = SequenceLogprobModel(_tiny("qwen2", seed=3), packed=True, share_prompts=True)
    wrapper.autocast_dtype = torch.bfloat16
    batch = collate_sequences(sequences, pad_id=0, packed=True, share_prompts=True)
    totals, token_logps = sequence_logps(wrapper, batch)
    # the head runs outside autocast (inside it, the chunked kernel's fp32 GEMMs would be cast to bf16)
    assert seen == [(torch.float32, torch.float32, False), torch.float32]
    lengths = torch.tensor([len(s.response_ids) for s in sequences], dtype=torch.float64)
    # bf16 keeps 8 mantissa bits: per token about 2^-8 relative on logits of size ~log(VOCAB)
    error = (totals.detach().double() - expected).abs()
    assert (error <= 0.02 * lengths).all(), (error, lengths)
    totals.sum().backward()
    head = wrapper.causal_lm.get_output_embeddings().weight
    assert head.grad is not None and head.grad.dtype == torch.float32  # fp32 master weight
