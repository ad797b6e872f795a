"""Padding-free batches: all sequences of a micro-batch in one row, attention kept inside each.

Rows are packed back to back with position ids restarting at 0 per sequence. The
``drift_packed_sdpa`` attention below reads the row's layout (:class:`PackedLayout`, built once
per batch by drift.tokenize.SequenceBatch.model_inputs, Python ints: no GPU->CPU sync per layer)
and runs, by device:

- CUDA with flash-attn installed (the ``gpu`` extra): flash-attn's varlen kernel, one call per
  layer over the whole row;
- CUDA without it: FlexAttention with a block mask built once per batch (per window size);
- elsewhere: causal SDPA per sequence (bf16 on a CPU: drift.cpu_attention, the same pieces in
  batched GEMMs, faster there than SDPA's CPU kernel). A block-diagonal mask over the whole row
  would cost O(row²) instead of Σ O(len²) and, on a CPU, roughly double the step.

With shared prompts (``Segment``, see drift.tokenize) a segment is one prompt followed by several
responses: the prompt and first response run as one causal piece, each further response attends
to the prompt's keys and causally to its own, so a DPO pair pays for its prompt once.

Sliding-window layers (Gemma 3's local layers; ``sliding_window`` as transformers passes it)
keep a key when ``0 <= query position - key position < window``, positions counted within the
sequence, so a response that shares its prompt sees exactly what it would see alone.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from drift import cpu_attention

PACKED_SDPA = "drift_packed_sdpa"
FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")
GPU_EXTRA_HINT = 'flash-attn is in the gpu extra: bash launch/setup_env.sh --gpu (see the README), or set model.attn_implementation=sdpa'
_registered = False


@dataclass(frozen=True)
class Piece:
    """One attention call: queries [q_start, q_end) of the row against the row ranges ``keys``.

    The keys, concatenated, hold consecutive positions 0..Lk-1 of one sequence and the queries
    are its last Lq (bottom-right aligned): query j has position Lk - Lq + j.
    """

    q_start: int
    q_end: int
    keys: tuple[tuple[int, int], ...]

    @property
    def q_length(self) -> int:
        return self.q_end - self.q_start

    @property
    def k_length(self) -> int:
        return sum(end - start for start, end in self.keys)


class PackedLayout:
    """Where each sequence of a packed row lies, as Python ints, plus per-batch caches (block
    masks, index tensors) that every layer of the forward (and a checkpointed recompute) reuses."""

    def __init__(self, bounds: Sequence[int], segments=None):
        self.bounds = tuple(int(b) for b in bounds)
        self.segments = None if segments is None else tuple(segments)
        self.pieces = tuple(_pieces(self.bounds, self.segments))
        self._cache: dict = {}

    @property
    def length(self) -> int:
        return self.bounds[-1]

    def cached(self, key, build: Callable):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def _pieces(bounds: tuple[int, ...], segments) -> list[Piece]:
    """The attention calls that cover the row, in row order."""
    if segments is None:
        return [Piece(start, end, ((start, end),)) for start, end in zip(bounds[:-1], bounds[1:])]
    pieces = []
    for segment in segments:
        first_end = segment.branch_ends[0]
        # the prompt and the first response are one ordinary causal sequence
        pieces.append(Piece(segment.start, first_end, ((segment.start, first_end),)))
        for branch_start, branch_end in zip(segment.branch_ends[:-1], segment.branch_ends[1:]):
            pieces.append(Piece(branch_start, branch_end, ((segment.start, segment.trunk_end), (branch_start, branch_end))))
    return pieces


def allowed_keys(q_length: int, k_length: int, window: int | None, device=None) -> torch.Tensor:
    """Boolean [Lq, Lk] mask (True = attend) for a bottom-right aligned piece."""
    query_positions = torch.arange(k_length - q_length, k_length, device=device)
    distance = query_positions[:, None] - torch.arange(k_length, device=device)[None, :]
    mask = distance >= 0
    if window is not None and window < k_length:
        mask &= distance < window
    return mask


def piece_mask(q_length: int, k_length: int, window: int | None, device=None) -> torch.Tensor | None:
    """``allowed_keys``, or None when plain causal (``is_causal=True``, SDPA's fast kernels) already says it."""
    if q_length == k_length and (window is None or window >= k_length):
        return None
    return allowed_keys(q_length, k_length, window, device)


def _window(module, kwargs) -> int | None:
    """The layer's sliding window (transformers passes it to the attention; else the module's)."""
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    return None if window is None or window <= 0 else int(window)


def _layout(kwargs) -> PackedLayout:
    layout = kwargs.get("drift_layout")
    if layout is not None:
        return layout
    # a caller that passed only the flash-attn names: one host copy of the boundaries per call
    return PackedLayout(kwargs["cu_seq_lens_q"].tolist())


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """query [1, heads, row, dim], key/value [1, kv heads, row, dim] -> [1, row, heads, dim]."""
    if kwargs.get("drift_layout") is None and kwargs.get("cu_seq_lens_q") is None:
        # not a packed call (generation, a plain forward): ordinary SDPA with its ordinary mask
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if kwargs.get("softcap") is not None:
        raise NotImplementedError(
            f"{type(module).__name__} caps its attention logits (softcap); drift's packed attention does not: "
            "set trainer.packing=false"
        )
    layout = _layout(kwargs)
    window = _window(module, kwargs)
    dropout_p = dropout if module.training else 0.0
    backend = attention_backend(query, dropout_p)
    if backend == "flash_attn":
        return flash_varlen_attention(query, key, value, layout, window, scaling, dropout_p), None
    if backend == "flex":
        return flex_packed_attention(query, key, value, layout, window, scaling).transpose(1, 2).contiguous(), None
    return sdpa_packed_attention(query, key, value, layout, window, scaling, dropout_p), None


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attention_backend(query: torch.Tensor, dropout_p: float) -> str:
    """flash_attn | flex | sdpa for this call (see the module docstring)."""
    if query.device.type != "cuda":
        return "sdpa"
    if flash_attn_installed() and _flash_dtype(query) is not None:
        return "flash_attn"
    # FlexAttention has no dropout; attention dropout is off in every model we train
    return "flex" if dropout_p == 0.0 else "sdpa"


# ---- per-sequence SDPA (CPU, and the fallback) -----------------------------------------------------


def _gather_keys(tensor: torch.Tensor, ranges: tuple[tuple[int, int], ...]) -> torch.Tensor:
    if len(ranges) == 1:
        start, end = ranges[0]
        return tensor[:, :, start:end]
    return torch.cat([tensor[:, :, start:end] for start, end in ranges], dim=2)


def sdpa_packed_attention(query, key, value, layout: PackedLayout, window, scaling, dropout_p=0.0):
    """One attention call per piece; grouped-query K/V read in place, never copied: SDPA
    (``enable_gqa``), or in bf16 on a CPU drift.cpu_attention (faster than SDPA's CPU kernel there)."""
    bf16_cpu = cpu_attention.applies(query, dropout_p)
    groups = query.shape[1] // key.shape[1]
    outputs = []
    for index, piece in enumerate(layout.pieces):
        q = query[:, :, piece.q_start : piece.q_end]
        k, v = _gather_keys(key, piece.keys), _gather_keys(value, piece.keys)
        # cached() calls the builders at once, so the loop's current piece is the one they read
        if bf16_cpu:
            bias = layout.cached(
                ("bias", index, window, groups, query.dtype, query.device),
                lambda: cpu_attention.additive_mask(  # noqa: B023
                    allowed_keys(piece.q_length, piece.k_length, window, query.device), groups, query.dtype  # noqa: B023
                ),
            )
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            outputs.append(cpu_attention.grouped_attention(q, k, v, bias, scale))
            continue
        mask = layout.cached(
            ("mask", index, window, query.device),
            lambda: piece_mask(piece.q_length, piece.k_length, window, query.device),  # noqa: B023
        )
        outputs.append(F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling, dropout_p=dropout_p, enable_gqa=groups > 1,
        ))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous()


# ---- FlexAttention (CUDA without flash-attn) -----------------------------------------------------


def _segment_spans(layout: PackedLayout) -> list[tuple[int, int, tuple[int, ...]]]:
    """(start, prompt end, response ends) per segment; a sequence that shares nothing is all prompt."""
    if layout.segments is None:
        return [(start, end, (end,)) for start, end in zip(layout.bounds[:-1], layout.bounds[1:])]
    return [(segment.start, segment.trunk_end, segment.branch_ends) for segment in layout.segments]


def _token_tables(layout: PackedLayout, device) -> dict[str, torch.Tensor]:
    """Per row position: its segment, its branch (the prompt and first response are branch 0),
    whether it is a shared prompt token, and its position within its sequence."""
    segment_ids, branch_ids, is_trunk, positions = [], [], [], []
    for index, (start, trunk_end, branch_ends) in enumerate(_segment_spans(layout)):
        trunk = trunk_end - start
        segment_ids += [index] * (branch_ends[-1] - start)
        branch_ids += [0] * trunk
        is_trunk += [True] * trunk
        positions += range(trunk)
        branch_start = trunk_end
        for branch, branch_end in enumerate(branch_ends):
            length = branch_end - branch_start
            branch_ids += [branch] * length
            is_trunk += [False] * length
            positions += range(trunk, trunk + length)  # a response continues its prompt's positions
            branch_start = branch_end

    def make(values, dtype):
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    return {
        "segment": make(segment_ids, torch.int32), "branch": make(branch_ids, torch.int32),
        "trunk": make(is_trunk, torch.bool), "position": make(positions, torch.int32),
    }


def packed_mask_mod(tables: dict[str, torch.Tensor], window: int | None):
    """FlexAttention mask_mod: the same attention as the pieces, over the whole row."""
    segment, branch, trunk, position = tables["segment"], tables["branch"], tables["trunk"], tables["position"]

    def mask_mod(batch, head, q_index, kv_index):
        distance = position[q_index] - position[kv_index]
        keep = (segment[q_index] == segment[kv_index]) & (trunk[kv_index] | (branch[q_index] == branch[kv_index]))
        keep = keep & (distance >= 0)
        if window is not None:
            keep = keep & (distance < window)
        return keep

    return mask_mod


def flex_block_mask(layout: PackedLayout, window: int | None, device):
    """The row's block mask, built once per batch and window size."""
    from torch.nn.attention.flex_attention import create_block_mask

    def build():
        tables = layout.cached(("tables", device), lambda: _token_tables(layout, device))
        return create_block_mask(packed_mask_mod(tables, window), None, None, layout.length, layout.length, device=device)

    return layout.cached(("block_mask", window, device), build)


_compiled_flex = None


def _flex_function(device):
    """Compiled FlexAttention on CUDA (eager would materialize the scores); eager elsewhere (tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if torch.device(device).type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def flex_packed_attention(query, key, value, layout: PackedLayout, window, scaling) -> torch.Tensor:
    """[1, heads, row, dim] out; one FlexAttention call per layer."""
    block_mask = flex_block_mask(layout, window, query.device)
    # FlexAttention is no autocast op: under autocast, rotary embeddings hand back fp32 q/k beside a
    # bf16 v, so all three go to the autocast dtype (what SDPA's autocast rule does)
    device_type = query.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else query.dtype
    return _flex_function(query.device)(
        query.to(dtype), key.to(dtype), value.to(dtype), block_mask=block_mask, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )


# ---- flash-attn varlen (CUDA with the gpu extra) ------------------------------------------------


def _load_flash_varlen():
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def _flash_dtype(query: torch.Tensor) -> torch.dtype | None:
    """fp16/bf16 as flash-attn needs: fp32 activations under autocast run in the autocast dtype."""
    if query.dtype in (torch.float16, torch.bfloat16):
        return query.dtype
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
        return dtype if dtype in (torch.float16, torch.bfloat16) else None
    return None


def flash_varlen_layout(layout: PackedLayout, device) -> dict:
    """cu_seqlens for queries and keys, and the row index of each key (None when the keys are the
    row itself): a shared prompt's K/V are gathered once per branch, the queries never move."""
    def build():
        q_bounds, k_bounds, key_rows = [0], [0], []
        for piece in layout.pieces:
            q_bounds.append(q_bounds[-1] + piece.q_length)
            k_bounds.append(k_bounds[-1] + piece.k_length)
            for start, end in piece.keys:
                key_rows.extend(range(start, end))
        shared = len(key_rows) != layout.length

        def on_device(values, dtype=torch.int32):
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        return {
            "cu_seqlens_q": on_device(q_bounds), "cu_seqlens_k": on_device(k_bounds),
            "max_seqlen_q": max(piece.q_length for piece in layout.pieces),
            "max_seqlen_k": max(piece.k_length for piece in layout.pieces),
            "key_rows": on_device(key_rows, torch.long) if shared else None,
        }

    return layout.cached(("flash", device), build)


def flash_varlen_attention(query, key, value, layout: PackedLayout, window, scaling, dropout_p=0.0) -> torch.Tensor:
    """[1, row, heads, dim] out; flash-attn's causal mask is bottom-right aligned, as a branch needs."""
    plan = flash_varlen_layout(layout, query.device)
    dtype = _flash_dtype(query) or query.dtype  # (fp32/fp64 reach here only in tests, with a stand-in kernel)
    # [1, heads, row, dim] -> [row, heads, dim]
    q, k, v = (tensor[0].transpose(0, 1).to(dtype) for tensor in (query, key, value))
    if plan["key_rows"] is not None:
        k, v = k.index_select(0, plan["key_rows"]), v.index_select(0, plan["key_rows"])
    output = _load_flash_varlen()(
        q, k, v, plan["cu_seqlens_q"], plan["cu_seqlens_k"], plan["max_seqlen_q"], plan["max_seqlen_k"],
        dropout_p=dropout_p, softmax_scale=scaling, causal=True,
        # flash-attn's window is inclusive: (W - 1, 0) keeps distances 0..W-1
        window_size=(-1, -1) if window is None else (window - 1, 0),
    )
    return output.unsqueeze(0)


# ---- choosing the attention ---------------------------------------------------------------------


def register_packed_attention() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    # the ordinary SDPA mask; a packed call ignores it and uses the layout instead
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    _registered = True


_PACKABLE_LAYERS = {"full_attention", "sliding_attention"}


def supports_packing(config) -> bool:
    """Causal attention, full or sliding-window, without attention-logit capping: what the packed
    paths here (and flash-attn's varlen kernel) compute exactly."""
    layer_types = set(getattr(config, "layer_types", None) or [])
    if not layer_types <= _PACKABLE_LAYERS:
        return False
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "use_bidirectional_attention", False):
        return False
    return True


def check_attn_implementation(name: str) -> None:
    """A forced flash-attn implementation needs the package: say which extra holds it."""
    if name in FLASH_ATTENTION and not flash_attn_installed():
        raise ImportError(f"model.attn_implementation={name} but flash-attn is not installed; {GPU_EXTRA_HINT}")


def use_packed_attention(causal_lm) -> str:
    """Switch a loaded model to packed attention; returns the implementation in use.

    A model loaded with flash-attn (``model.attn_implementation=flash_attention_2``) keeps it:
    transformers' varlen path reads the same boundaries. Otherwise ours, which itself runs
    flash-attn's varlen kernel on CUDA when it is installed (and also shares prompts).
    """
    implementation = causal_lm.config._attn_implementation
    if implementation in FLASH_ATTENTION:
        check_attn_implementation(implementation)
        return implementation
    register_packed_attention()
    causal_lm.set_attn_implementation(PACKED_SDPA)
    return PACKED_SDPA
