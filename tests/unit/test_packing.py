"""Packed (padding-free) batches give the same log-probs and gradients as one padded row per sequence."""

import pytest
import torch

from drift.model import build_byte_tokenizer, load_model
from drift.parallel import SequenceLogprobModel, sequence_logps
from drift.tokenize import TokenSequence, collate_sequences
from tests.tiny import plain_fp64_logps, synthetic_pairs, tiny_config


def test_packed_and_padded_batches_match_each_sequence_alone(tmp_path):
    config = tiny_config(tmp_path)
    config.model.name_or_path = "tiny:qwen2"  # grouped-query attention (4 heads, 2 kv heads), untied head
    sequences = [s for pair in synthetic_pairs(3, seed=4) for s in (pair.chosen, pair.rejected)]
    vocab = len(build_byte_tokenizer())
    expected = plain_fp64_logps(load_model(config.model, dtype=torch.float32, seed=1, vocab_size=vocab), sequences)

    results = {}
    for packed in (True, False):
        wrapper = SequenceLogprobModel(load_model(config.model, dtype=torch.float32, seed=1, vocab_size=vocab), packed=packed)
        batch = collate_sequences(sequences, pad_id=0, packed=packed)
        assert (batch.num_padding == 0) if packed else (batch.num_padding > 0)
        totals, _ = sequence_logps(wrapper, batch)
        totals.sum().backward()
        grads = {name: p.grad.clone() for name, p in wrapper.named_parameters()}
        results[packed] = (totals.detach(), grads)
        assert torch.allclose(totals.detach().double(), expected, atol=1e-4), packed
    packed_grads, padded_grads = results[True][1], results[False][1]
    for name, grad in packed_grads.items():
        assert torch.allclose(grad, padded_grads[name], atol=1e-5, rtol=1e-4), name


def _shared_prompt_sequences():
    """Three prompts: one with three responses, one with two (a DPO pair), one alone."""
    pairs = synthetic_pairs(3, seed=9)
    a, b, c = pairs
    third = TokenSequence(a.chosen.prompt_ids, a.rejected.response_ids[:5] + a.chosen.response_ids[:7])
    # interleaved on purpose: the layout groups by prompt, the results keep the given order
    return [a.chosen, b.chosen, c.chosen, a.rejected, b.rejected, third]


@pytest.mark.parametrize("architecture", ["tiny:llama", "tiny:qwen2"])
def test_shared_prompts_match_each_sequence_alone(tmp_path, architecture):
    config = tiny_config(tmp_path)
    config.model.name_or_path = architecture
    sequences = _shared_prompt_sequences()
    vocab = len(build_byte_tokenizer())
    expected = plain_fp64_logps(load_model(config.model, dtype=torch.float32, seed=2, vocab_size=vocab), sequences)

    shared_batch = collate_sequences(sequences, pad_id=0, packed=True, share_prompts=True)
    prompt_lengths = {len(s.prompt_ids) for s in sequences}
    # each prompt is laid out once: the row is shorter than the sequences by the repeated prompts
    repeated = sum(len(s.prompt_ids) for s in sequences) - sum(len(set(s.prompt_ids for s in sequences if len(s.prompt_ids) == n)) * n for n in prompt_lengths)
    assert shared_batch.num_positions == shared_batch.num_tokens - repeated > 0
    assert [len(segment.branch_ends) for segment in shared_batch.segments] == [3, 2, 1]

    results = {}
    for share in (True, False):
        model = load_model(config.model, dtype=torch.float32, seed=2, vocab_size=vocab).double()
        wrapper = SequenceLogprobModel(model, packed=True, share_prompts=share)
        assert wrapper.share_prompts is share
        batch = collate_sequences(sequences, pad_id=0, packed=True, share_prompts=share)
        totals, _ = sequence_logps(wrapper, batch)
        # a weighted sum, so a mix-up between sequences would change the gradient
        (totals * torch.arange(1.0, len(sequences) + 1, dtype=totals.dtype)).sum().backward()
        results[share] = {name: p.grad.clone() for name, p in wrapper.named_parameters()}
        # log-probs come out in float32 by contract
        assert torch.allclose(totals.detach().double(), expected, atol=1e-5, rtol=1e-6), (share, totals, expected)
    for name, grad in results[True].items():
        # HF's RMSNorm and rotary tables compute in fp32 even in an fp64 model: fp32-level agreement
        error = (grad - results[False][name]).abs().max().item()
        assert error <= 1e-6 * max(1.0, grad.abs().max().item()), (name, error)
