"""drift.packing's attention backends against one plain reference: each sequence alone.

The reference gathers one sequence's rows (its prompt, then one response) out of the packed row,
runs dense attention over them in fp64 with K/V copied per head (repeat_interleave) and a mask
written from the definition (causal, and ``distance < window`` on sliding layers), and puts the
outputs back. Every backend must reproduce it: the per-sequence SDPA loop (CPU; grouped-query K/V
read in place with ``enable_gqa``), FlexAttention (eager on CPU) with its block mask, and the
flash-attn varlen layout (run through a stand-in written from flash-attn's documented semantics,
since flash-attn needs CUDA).
"""

from __future__ import annotations

import types

import pytest
import torch

from drift import packing
from drift.packing import PackedLayout
from drift.tokenize import Segment

HEADS, KV_HEADS, DIM = 4, 2, 8

# (prompt length, response lengths) per segment: shared prompts, a lone sequence, a long one
SHARED = [(5, [4, 6, 3]), (3, [2]), (7, [5, 4])]
PLAIN = [(6, [5]), (2, [3]), (9, [7])]


def _layout(spec, share: bool) -> tuple[PackedLayout, list[list[int]]]:
    """The packed layout of ``spec`` and, per sequence, the row indices of its tokens in order."""
    bounds, segments, sequences, cursor = [], [], [], 0
    for prompt, responses in spec:
        groups = [[response] for response in responses] if not share else [responses]
        for group in groups:
            start = cursor
            prompt_rows = list(range(cursor, cursor + prompt))
            cursor += prompt
            trunk_end, ends = cursor, []
            for response in group:
                sequences.append(prompt_rows + list(range(cursor, cursor + response)))
                cursor += response
                ends.append(cursor)
            bounds.append(start)
            segments.append(Segment(start, trunk_end, tuple(ends)))
    bounds.append(cursor)
    shared = any(len(segment.branch_ends) > 1 for segment in segments)
    return PackedLayout(bounds, tuple(segments) if shared else None), sequences


def _alone_reference(query, key, value, sequences, window, scaling):
    """[1, row, heads, dim]: each sequence's attention computed on its own rows."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    output = torch.zeros_like(query)
    for rows in sequences:
        index = torch.tensor(rows)
        q, k, v = query[:, :, index], key[:, :, index], value[:, :, index]
        positions = torch.arange(len(rows))
        distance = positions[:, None] - positions[None, :]
        allowed = (distance >= 0) & (distance < (window or len(rows) + 1))
        scores = (q @ k.transpose(-1, -2)) * scaling
        scores = scores.masked_fill(~allowed, float("-inf"))
        output[:, :, index] = torch.softmax(scores, dim=-1) @ v
    return output.transpose(1, 2)


def _reference_row_mask(sequences, length, window):
    """[row, row] True where query row r attends key row c (they share a sequence, in reach)."""
    mask = torch.zeros(length, length, dtype=torch.bool)
    for rows in sequences:
        for i, r in enumerate(rows):
            for j, c in enumerate(rows[: i + 1]):
                if window is None or i - j < window:
                    mask[r, c] = True
    return mask


def _qkv(length, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    make = lambda heads: torch.randn(1, heads, length, DIM, generator=generator, dtype=torch.float64)  # noqa: E731
    tensors = make(HEADS), make(KV_HEADS), make(KV_HEADS)
    return tuple(t.requires_grad_(requires_grad) for t in tensors)


CASES = [(spec, share, window) for spec in (SHARED, PLAIN) for share in (True, False) for window in (None, 3, 6, 100)]
CASE_IDS = [f"{'shared' if spec is SHARED else 'plain'}-{'share' if share else 'noshare'}-w{window}" for spec, share, window in CASES]
FEW_CASES = [case for case in CASES if case[2] in (None, 3)]
FEW_IDS = [name for case, name in zip(CASES, CASE_IDS) if case[2] in (None, 3)]


@pytest.mark.parametrize("spec,share,window", CASES, ids=CASE_IDS)
def test_sdpa_loop_matches_each_sequence_alone(spec, share, window):
    layout, sequences = _layout(spec, share)
    query, key, value = _qkv(layout.length)
    expected = _alone_reference(query, key, value, sequences, window, DIM**-0.5)
    got = packing.sdpa_packed_attention(query, key, value, layout, window, DIM**-0.5)
    assert torch.allclose(got, expected, atol=1e-12), (got - expected).abs().max()


def test_sdpa_loop_reads_grouped_kv_in_place_like_repeat_interleave():
    """enable_gqa against the repeat_interleave formulation it replaced, in fp64, outputs and gradients."""
    layout, _ = _layout(SHARED, share=True)
    query, key, value = _qkv(layout.length, seed=3, requires_grad=True)
    got = packing.sdpa_packed_attention(query, key, value, layout, None, None)
    repeated = tuple(t.detach().repeat_interleave(HEADS // KV_HEADS, dim=1).requires_grad_() for t in (key, value))
    expected = packing.sdpa_packed_attention(query.detach().requires_grad_(), *repeated, layout, None, None)
    assert torch.allclose(got, expected, atol=1e-13)
    weights = torch.randn_like(got)
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    for ours, theirs in ((key.grad, repeated[0].grad), (value.grad, repeated[1].grad)):
        # the repeated copies' gradients, summed back over each group, are the grouped gradient
        folded = theirs.view(1, KV_HEADS, HEADS // KV_HEADS, *theirs.shape[2:]).sum(2)
        assert torch.allclose(ours, folded, atol=1e-12)


@pytest.mark.parametrize("spec,share,window", FEW_CASES, ids=FEW_IDS)
def test_flex_block_mask_equals_the_reference_mask(spec, share, window):
    from torch.nn.attention.flex_attention import create_mask

    layout, sequences = _layout(spec, share)
    tables = packing._token_tables(layout, "cpu")
    dense = create_mask(packing.packed_mask_mod(tables, window), None, None, layout.length, layout.length, device="cpu")
    reference = _reference_row_mask(sequences, layout.length, window)
    assert torch.equal(dense[0, 0], reference)
    # the block mask skips only blocks the reference leaves empty, and is built once per batch
    block_mask = packing.flex_block_mask(layout, window, "cpu")
    assert packing.flex_block_mask(layout, window, "cpu") is block_mask
    size = block_mask.BLOCK_SIZE[0]
    blocks = block_mask.to_dense()[0, 0].bool()
    for qb in range(blocks.shape[0]):
        for kb in range(blocks.shape[1]):
            if reference[qb * size : (qb + 1) * size, kb * size : (kb + 1) * size].any():
                assert blocks[qb, kb], (qb, kb)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("share,window", [(True, None), (True, 3), (False, 4)])
def test_flex_attention_matches_each_sequence_alone(share, window):
    """FlexAttention eager on CPU (its unfused implementation of the same block mask), fp64. It has
    no backward on CPU: tests/gpu/test_packed_attention_cuda.py checks gradients on CUDA."""
    layout, sequences = _layout(SHARED, share)
    query, key, value = _qkv(layout.length, seed=5)
    got = packing.flex_packed_attention(query, key, value, layout, window, DIM**-0.5).transpose(1, 2)
    expected = _alone_reference(query, key, value, sequences, window, DIM**-0.5)
    assert torch.allclose(got, expected, atol=1e-12), (got - expected).abs().max()


def _flash_varlen_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1)):
    """flash_attn_varlen_func's documented semantics: [total, heads, dim] with GQA heads; with
    seqlen_q < seqlen_k the causal mask is aligned to the bottom right; window_size=(left, right)
    keeps keys j with i + Lk - Lq - left <= j <= i + Lk - Lq + right (-1: unbounded)."""
    assert dropout_p == 0.0 and causal
    assert max_q == max(cu_q.diff()) and max_k == max(cu_k.diff())
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out = torch.empty_like(q)
    left, right = window_size
    for s in range(len(cu_q) - 1):
        qs, qe, ks, ke = int(cu_q[s]), int(cu_q[s + 1]), int(cu_k[s]), int(cu_k[s + 1])
        i = torch.arange(qe - qs)[:, None] + (ke - ks) - (qe - qs)
        j = torch.arange(ke - ks)[None, :]
        allowed = j <= i + (0 if right < 0 else right)
        if left >= 0:
            allowed &= j >= i - left
        scores = torch.einsum("qhd,khd->hqk", q[qs:qe], k[ks:ke]) * softmax_scale
        out[qs:qe] = torch.einsum("hqk,khd->qhd", torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1), v[ks:ke])
    return out


@pytest.mark.parametrize("spec,share,window", FEW_CASES, ids=FEW_IDS)
def test_flash_varlen_layout_matches_each_sequence_alone(monkeypatch, spec, share, window):
    monkeypatch.setattr(packing, "_load_flash_varlen", lambda: _flash_varlen_stand_in)
    layout, sequences = _layout(spec, share)
    query, key, value = _qkv(layout.length, seed=7)
    got = packing.flash_varlen_attention(query, key, value, layout, window, DIM**-0.5)
    expected = _alone_reference(query, key, value, sequences, window, DIM**-0.5)
    assert torch.allclose(got, expected, atol=1e-12)
    plan = packing.flash_varlen_layout(layout, "cpu")
    # queries never move; keys are gathered only when a prompt is shared
    assert plan["cu_seqlens_q"][-1] == layout.length
    assert (plan["key_rows"] is None) == (layout.segments is None)


def test_backend_choice(monkeypatch):
    cuda_bf16 = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16)
    monkeypatch.setattr(packing, "flash_attn_installed", lambda: True)
    assert packing.attention_backend(cuda_bf16, 0.0) == "flash_attn"
    monkeypatch.setattr(packing, "flash_attn_installed", lambda: False)
    assert packing.attention_backend(cuda_bf16, 0.0) == "flex"
    assert packing.attention_backend(cuda_bf16, 0.1) == "sdpa"  # FlexAttention has no dropout
    assert packing.attention_backend(torch.zeros(1), 0.0) == "sdpa"


def test_forced_flash_attention_without_flash_attn_names_the_gpu_extra(monkeypatch):
    monkeypatch.setattr(packing, "flash_attn_installed", lambda: False)
    with pytest.raises(ImportError, match=r'model.attn_implementation=flash_attention_2.*bash launch/setup_env.sh --gpu'):
        packing.check_attn_implementation("flash_attention_2")
    packing.check_attn_implementation("sdpa")  # nothing to check
    # and loading a model says so before transformers tries to import flash-attn
    from drift.config import ModelConfig
    from drift.model import load_model

    with pytest.raises(ImportError, match=r"setup_env.sh --gpu"):
        load_model(ModelConfig(name_or_path="tiny:llama", attn_implementation="flash_attention_2"), dtype=torch.float32, seed=0)


def test_supports_packing_takes_sliding_windows_not_capped_or_bidirectional_attention():
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    assert packing.supports_packing(LlamaConfig())
    assert packing.supports_packing(Qwen2Config(use_sliding_window=True, sliding_window=8, num_hidden_layers=2,
                                                layer_types=["sliding_attention", "full_attention"]))
    assert packing.supports_packing(Gemma3TextConfig(num_hidden_layers=2))
    assert not packing.supports_packing(Gemma3TextConfig(num_hidden_layers=2, attn_logit_softcapping=50.0))
    assert not packing.supports_packing(Gemma3TextConfig(num_hidden_layers=2, use_bidirectional_attention=True))
    assert not packing.supports_packing(types.SimpleNamespace(layer_types=["chunked_attention"]))
