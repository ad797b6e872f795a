"""Packed (padding-free) batches give the same log-probs and gradients as one padded row per sequence."""

import torch

from drift.model import build_byte_tokenizer, load_model
from drift.parallel import SequenceLogprobModel, sequence_logps
from drift.tokenize import collate_sequences
from tests.tiny import synthetic_pairs, tiny_config


def _plain_fp64_logps(causal_lm, sequences) -> torch.Tensor:
    """Each sequence alone through the plain HF model in fp64: log_softmax over full logits, gather."""
    model = causal_lm.double()
    values = []
    for sequence in sequences:
        ids = torch.tensor([sequence.prompt_ids + sequence.response_ids])
        logits = model(ids).logits[0]
        first = len(sequence.prompt_ids)
        logps = torch.log_softmax(logits[first - 1 : -1], dim=-1)
        values.append(logps.gather(1, torch.tensor(sequence.response_ids).unsqueeze(1)).sum())
    causal_lm.float()
    return torch.stack(values)


def test_packed_and_padded_batches_match_each_sequence_alone(tmp_path):
    config = tiny_config(tmp_path)
    config.model.name_or_path = "tiny:qwen2"  # grouped-query attention (4 heads, 2 kv heads), untied head
    sequences = [s for pair in synthetic_pairs(3, seed=4) for s in (pair.chosen, pair.rejected)]
    vocab = len(build_byte_tokenizer())
    expected = _plain_fp64_logps(load_model(config.model, dtype=torch.float32, seed=1, vocab_size=vocab), sequences)

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
