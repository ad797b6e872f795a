"""Single-process bf16 (drift.compute_weights): the model computes on a bf16 copy of its fp32 masters.

The reference is the plain one: the same weights cast to bf16 as an ordinary transformers model (no
swapping, no hooks), whose bf16 gradients, upcast and summed in fp64, are what the masters' fp32
gradients must hold; and fp64 for the log-probs themselves.
"""

from __future__ import annotations

import copy

import pytest
import torch

from drift.parallel import Runtime, SequenceLogprobModel, sequence_logps, shard
from drift.tokenize import collate_sequences
from tests.tiny import plain_fp64_logps, synthetic_pairs

VOCAB = 250
CPU_BF16 = Runtime(0, 1, 0, torch.device("cpu"), torch.bfloat16)


def _tiny_tied(seed: int = 0, checkpointing: bool = False):
    """A Llama (SmolLM2's family) whose head is its embedding, as SmolLM2's is."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _batches():
    pairs = synthetic_pairs(4, seed=5, vocab=VOCAB)
    return [collate_sequences([p.chosen, p.rejected], pad_id=0, packed=True, share_prompts=True) for p in pairs[:2]], pairs


def _plain_bf16_grads(causal_lm, batches) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The same weights as a plain bf16 model: per-batch totals, and the gradients upcast and summed in fp64.
    Parameters only are cast, as FSDP's param_dtype casts them: the buffers (rotary inv_freq) stay fp32."""
    plain_lm = copy.deepcopy(causal_lm)
    for parameter in plain_lm.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    plain = SequenceLogprobModel(plain_lm, packed=True, share_prompts=True).train()
    sums, totals_seen = {}, []
    for batch in batches:
        totals, _ = sequence_logps(plain, batch)
        totals_seen.append(totals.detach())
        (totals[0] - 2 * totals[1]).backward()
        for name, parameter in plain.named_parameters():
            sums[name] = sums.get(name, 0) + parameter.grad.double()
            parameter.grad = None
    return sums, totals_seen


@pytest.mark.parametrize("checkpointing", [False, True])
def test_masters_get_the_bf16_models_gradients_accumulated_in_fp32(checkpointing):
    batches, _ = _batches()
    causal_lm = _tiny_tied(seed=1, checkpointing=checkpointing)
    expected_grads, expected_totals = _plain_bf16_grads(_tiny_tied(seed=1), batches)
    model = shard(SequenceLogprobModel(causal_lm, packed=True, share_prompts=True), CPU_BF16).train()
    assert model.compute_weights is not None and model.autocast_dtype is None
    embedding = causal_lm.get_input_embeddings().weight
    assert causal_lm.get_output_embeddings().weight is embedding  # tied: one master, one copy
    for batch, expected in zip(batches, expected_totals):
        with model.computing():  # as the trainer runs a micro-batch: the recompute happens in backward
            totals, _ = sequence_logps(model, batch)
            (totals[0] - 2 * totals[1]).backward()
        assert torch.equal(totals.detach(), expected)
    for name, master in model.named_parameters():
        assert master.dtype == torch.float32 and master.grad.dtype == torch.float32, name
        # a bf16 product upcast is exact; the only rounding is the fp32 sum of two micro-batches
        assert torch.allclose(master.grad.double(), expected_grads[name], rtol=1e-6, atol=1e-7), name
    # outside the span the modules hold their fp32 masters again, and no bf16 gradient is left behind
    assert all(p.dtype == torch.float32 for p in causal_lm.parameters())
    assert all(copy_.grad is None for copy_ in model.compute_weights._copies.values())


def test_a_master_changed_in_place_is_copied_again_before_the_next_forward():
    batches, _ = _batches()
    model = shard(SequenceLogprobModel(_tiny_tied(seed=2), packed=True, share_prompts=True), CPU_BF16)
    with torch.no_grad():
        before, _ = sequence_logps(model, batches[0])
        for master in model.parameters():  # what the optimizer step does: in place, same tensors
            master.mul_(1.5)
        after, _ = sequence_logps(model, batches[0])
    scaled = _tiny_tied(seed=2)
    with torch.no_grad():
        for parameter in scaled.parameters():
            parameter.mul_(1.5)
    _, (expected,) = _plain_bf16_grads(scaled, batches[:1])
    assert not torch.equal(before, after)
    assert torch.equal(after, expected)


def test_bf16_log_probs_stay_within_bf16_error_of_fp64():
    batches, pairs = _batches()
    sequences = [pairs[0].chosen, pairs[0].rejected]
    expected = plain_fp64_logps(_tiny_tied(seed=3), sequences)
    model = shard(SequenceLogprobModel(_tiny_tied(seed=3), packed=True, share_prompts=True), CPU_BF16)
    with torch.no_grad():
        totals, _ = sequence_logps(model, batches[0])
    lengths = torch.tensor([len(s.response_ids) for s in sequences], dtype=torch.float64)
    # bf16 keeps 8 mantissa bits: per token about 2^-8 relative on logits of size ~log(VOCAB)
    error = (totals.double() - expected).abs()
    assert (error <= 0.02 * lengths).all(), (error, lengths)
    assert (error > 0).any()  # it did compute in bf16: fp32 would be far closer


def test_lora_models_stay_under_autocast():
    model = shard(SequenceLogprobModel(_tiny_tied(), packed=True, share_prompts=True), CPU_BF16, autocast=True)
    assert model.compute_weights is None and model.autocast_dtype == torch.bfloat16


def test_the_next_step_starts_its_gradients_afresh():
    """After the optimizer's zero_grad(set_to_none=True) the kept fp32 buffers are overwritten, not added to."""
    batches, _ = _batches()
    model = shard(SequenceLogprobModel(_tiny_tied(seed=4), packed=True, share_prompts=True), CPU_BF16).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights, and so the copies, stay
    for batch in batches:  # step 1: two micro-batches
        with model.computing():
            totals, _ = sequence_logps(model, batch)
            (totals[0] - 2 * totals[1]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with model.computing():  # step 2: the second batch alone
        totals, _ = sequence_logps(model, batches[1])
        (totals[0] - 2 * totals[1]).backward()
    expected_grads, _ = _plain_bf16_grads(_tiny_tied(seed=4), batches[1:])
    for name, master in model.named_parameters():
        assert torch.allclose(master.grad.double(), expected_grads[name], rtol=1e-6, atol=1e-7), name
