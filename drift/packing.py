"""Padding-free batches: all sequences of a micro-batch in one row, attention kept inside each.

Rows are packed back to back with position ids restarting at 0 per sequence. On GPU,
flash-attn's varlen kernel reads the boundaries (``cu_seq_lens_*`` kwargs, which transformers
forwards to the attention function). Elsewhere the ``drift_packed_sdpa`` attention below runs
causal SDPA per sequence: a block-diagonal mask over the whole row would cost O(row²) instead of
Σ O(len²) and, on a CPU, roughly double the step.

With shared prompts (``drift_segments``, see drift.tokenize.Segment) a segment is one prompt
followed by several responses: the prompt and first response run as one causal piece, each
further response attends to the prompt's keys and causally to its own, so a DPO pair pays for
its prompt once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_SDPA = "drift_packed_sdpa"
_registered = False


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """query/key/value [1, heads, row, dim] -> [1, row, heads, dim], causal within each sequence."""
    boundaries = kwargs.get("cu_seq_lens_q")
    if boundaries is None:
        # not a packed call (generation, a plain forward): ordinary SDPA with its ordinary mask
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    dropout_p = dropout if module.training else 0.0
    segments = kwargs.get("drift_segments")
    if segments is None:
        bounds = boundaries.tolist()
        pieces = [
            F.scaled_dot_product_attention(
                query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                is_causal=True, scale=scaling, dropout_p=dropout_p,
            )
            for start, end in zip(bounds[:-1], bounds[1:])
        ]
    else:
        pieces = [piece for segment in segments for piece in _segment_attention(query, key, value, segment, scaling, dropout_p)]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def _segment_attention(query, key, value, segment, scaling, dropout_p):
    """Attention outputs for one shared-prompt segment, in row order."""
    first_end = segment.branch_ends[0]
    # the prompt and the first response are one ordinary causal sequence
    pieces = [
        F.scaled_dot_product_attention(
            query[:, :, segment.start : first_end], key[:, :, segment.start : first_end],
            value[:, :, segment.start : first_end], is_causal=True, scale=scaling, dropout_p=dropout_p,
        )
    ]
    trunk = slice(segment.start, segment.trunk_end)
    trunk_length = segment.trunk_end - segment.start
    for branch_start, branch_end in zip(segment.branch_ends[:-1], segment.branch_ends[1:]):
        branch = slice(branch_start, branch_end)
        length = branch_end - branch_start
        # branch token j sees the whole prompt and branch tokens 0..j (a lower-right causal mask)
        mask = torch.ones(length, trunk_length + length, dtype=torch.bool, device=query.device).tril(trunk_length)
        pieces.append(
            F.scaled_dot_product_attention(
                query[:, :, branch], torch.cat([key[:, :, trunk], key[:, :, branch]], dim=2),
                torch.cat([value[:, :, trunk], value[:, :, branch]], dim=2),
                attn_mask=mask, scale=scaling, dropout_p=dropout_p,
            )
        )
    return pieces


def register_packed_attention() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    # the ordinary SDPA mask; a packed call ignores it and uses the boundaries instead
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    _registered = True


def supports_packing(config) -> bool:
    """Packed attention here is plain causal: models with sliding-window layers keep padded rows."""
    layer_types = getattr(config, "layer_types", None) or []
    return "sliding_attention" not in layer_types and not getattr(config, "use_sliding_window", False)


def use_packed_attention(causal_lm) -> str:
    """Switch a loaded model to packed attention; returns the implementation in use."""
    if causal_lm.config._attn_implementation.startswith("flash_attention"):
        return causal_lm.config._attn_implementation  # varlen-aware already
    register_packed_attention()
    causal_lm.set_attn_implementation(PACKED_SDPA)
    return PACKED_SDPA
