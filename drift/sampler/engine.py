"""The HF backend's sampling engine: continuous batching over a preallocated KV cache.

Why not ``generate()`` or a loop over the HF model's forward: on a 2-core CPU a 135M model's
decode step is a handful of small GEMMs, and the HF forward spends more time building masks,
growing its cache by concatenation and dispatching modules than multiplying
(benchmarks/sampler_throughput.py measures both). Here the decoder runs from the HF module's own
weights (q/k/v and gate/up fused into one GEMM each), the cache is allocated once per call, and
nothing grows per step. A finished row is refilled with the next prompt at once (continuous
batching), so the batch stays full instead of waiting for its longest reply.

Every draw keeps its own seed: each request owns a torch.Generator seeded by its sample seed and
draws one uniform per generated token, and no sample depends on its batch-mates. Rows never see
each other: a row's attention reads only its own cache slot, and its position counts its own tokens.

Architectures: the decoder families whose layers are exactly RMSNorm -> attention (RoPE, GQA,
optional q/k/v bias, optional per-head q/k norm) -> RMSNorm -> SwiGLU MLP (Llama, SmolLM, Qwen2,
Qwen3, Mistral without a sliding window). Any other model (Gemma 3's sliding-window layers and
scaled embeddings, say) samples through ``hf_generate_batch``, the plain loop over the HF forward;
``engine_unsupported_reason`` says why, and the sampling report records which engine ran.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

FAST_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
# the nucleus is looked for among this many most likely tokens first, then among more for the
# rows whose nucleus is wider; a row wider than the last is sorted in full (same tokens, slower)
TOP_P_SHORTLISTS = (64, 1024, 8192)


@dataclass(frozen=True)
class Generation:
    """What one generate call produced for one request."""

    token_ids: tuple[int, ...]  # the reply, without the stop token
    finish_reason: str  # "eos" | "length"
    generated_tokens: int  # tokens the model produced, the stop token included


# ---- drawing a token ------------------------------------------------------------------------------


def sample_next_tokens(logits: torch.Tensor, uniforms: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """Temperature + top-p (nucleus) sampling by inverse CDF, one uniform draw in [0, 1) per row.

    Top-p keeps the most likely tokens up to and including the one whose cumulative probability
    reaches top_p (always at least one), as HF generate and vLLM do; a tiny top_p is greedy.
    This is the reference: it sorts the whole vocabulary. ``draw_tokens`` gives the same tokens
    without the sort for rows whose nucleus is narrow.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    return _draw_from_sorted(sorted_probs, order, uniforms, top_p)


def _draw_from_sorted(sorted_probs: torch.Tensor, order: torch.Tensor, uniforms: torch.Tensor, top_p: float) -> torch.Tensor:
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    kept = mass_before < top_p
    kept[:, 0] = True
    sorted_probs = sorted_probs * kept
    cdf = sorted_probs.cumsum(dim=-1)
    targets = uniforms.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
    # u * total can round up to total: never step past the last kept token
    rank = torch.searchsorted(cdf, targets, right=True)
    rank = torch.minimum(rank, kept.sum(dim=-1, keepdim=True) - 1)
    return order.gather(-1, rank).squeeze(-1)


def draw_tokens(logits: torch.Tensor, uniforms: torch.Tensor, *, temperature: float, top_p: float,
                shortlists: Sequence[int] = TOP_P_SHORTLISTS) -> torch.Tensor:
    """``sample_next_tokens`` without sorting the vocabulary: each row's nucleus is looked for
    among its k most likely tokens (topk), k growing through ``shortlists`` for the rows whose
    nucleus is wider; only a row wider than the last shortlist is sorted in full. The kept set,
    its order and the inverse-CDF draw are those of the full sort.

    ``uniforms`` may be on the CPU (each request's generator is a CPU one): they are indexed
    below with row indices on the logits' device, which CUDA refuses for a CPU tensor."""
    probs = torch.softmax(_wide(logits) / temperature, dim=-1)
    uniforms = uniforms.to(probs.device)
    tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    rows = torch.arange(probs.shape[0], device=probs.device)
    for k in shortlists:
        if top_p >= 1.0 or k >= probs.shape[-1] or not rows.numel():
            break
        top_probs, top_ids = probs[rows].topk(k, dim=-1, sorted=True)
        # the nucleus lies inside the shortlist when the mass before its last entry already
        # reaches top_p: the token where the cumulative mass reaches top_p is then shortlisted
        covered = (top_probs.sum(dim=-1) - top_probs[:, -1]) >= top_p
        inside = covered.nonzero().squeeze(-1)
        tokens[rows[inside]] = _draw_from_sorted(top_probs[inside], top_ids[inside], uniforms[rows[inside]], top_p)
        rows = rows[~covered]
    if rows.numel():
        sorted_probs, order = probs[rows].sort(dim=-1, descending=True, stable=True)
        tokens[rows] = _draw_from_sorted(sorted_probs, order, uniforms[rows], top_p)
    return tokens


# ---- the decoder, from the HF module's weights ----------------------------------------------------


def engine_unsupported_reason(model) -> str | None:
    """None when the fast engine runs this model exactly; otherwise why it does not."""
    config = model.config
    family = getattr(config, "model_type", None)
    if family not in FAST_FAMILIES:
        return f"model_type {family!r} is not one of {', '.join(FAST_FAMILIES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} (the engine's MLP is SwiGLU)"
    if getattr(config, "use_sliding_window", False) or (family == "mistral" and getattr(config, "sliding_window", None)):
        return "sliding-window attention"
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"layer types {sorted(layer_types)}"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "not a decoder with model.layers and model.rotary_emb"
    return None


def _wide(x: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision tensors (as HF computes norms and softmax); fp64 stays fp64."""
    return x if x.dtype == torch.float64 else x.float()


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # as HF's LlamaRMSNorm: normalise in fp32, cast back, then scale
    wide = _wide(x)
    return weight * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Linear:
    """y = x @ weight.T + bias, with the weight packed once for oneDNN on CPU.

    A plain ``F.linear`` on this kind of CPU (MKL sgemm, a few rows against a large weight)
    repacks the weight on every call and streams it at ~9 GB/s; oneDNN with the weight packed
    ahead runs the same product about twice as fast in fp32 and three times in bf16
    (benchmarks/sampler_throughput.py). It also gives every row the same bits whatever the number
    of rows, where MKL's single-row path rounds differently from its multi-row one.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, rows_hint: int):
        self.weight, self.bias = weight, bias
        self.packed = None
        if weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: Linear  # [q_heads*d + 2*kv_heads*d, hidden]
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    out: Linear
    post_norm: torch.Tensor
    gate_up: Linear  # [2*intermediate, hidden]
    down: Linear


class DecoderWeights:
    """The model's weights as the engine runs them: q/k/v and gate/up fused, GEMM weights packed.
    Built once per sampler process (packing a 135M model takes about a second) and shared by every
    generate call, the retries' included."""

    def __init__(self, model, *, rows_hint: int):
        reason = engine_unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the fast sampling engine cannot run this model: {reason}")
        config, inner = model.config, model.model
        first = inner.layers[0].self_attn
        self.dtype = inner.embed_tokens.weight.dtype
        self.device = inner.embed_tokens.weight.device
        # CPU: attention in fp32 whatever the weights (bf16 batched matmuls are several times
        # slower than fp32 ones there); GPU: the weights' dtype
        self.attention_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        self.head_dim = first.head_dim
        self.q_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.group = self.q_heads // self.kv_heads
        self.scaling = first.scaling
        self.eps = config.rms_norm_eps
        self.rotary = inner.rotary_emb
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.lm_head = Linear(model.get_output_embeddings().weight, None, rows_hint=rows_hint)
        self.layers = [self._fuse(layer, rows_hint) for layer in inner.layers]

    @staticmethod
    def _fuse(layer, rows_hint: int) -> _Layer:
        attention, mlp = layer.self_attn, layer.mlp
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        biases = [p.bias for p in projections]
        if any(b is not None for b in biases) and not all(b is not None for b in biases):
            raise ValueError("q/k/v projections with a bias on some but not all of them")
        if getattr(mlp.gate_proj, "bias", None) is not None or getattr(attention.o_proj, "bias", None) is not None:
            raise ValueError("biases on o_proj or the MLP are not supported by the fast engine")
        q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
        return _Layer(
            input_norm=layer.input_layernorm.weight,
            qkv=Linear(torch.cat([p.weight for p in projections]).contiguous(),
                       torch.cat(biases).contiguous() if biases[0] is not None else None, rows_hint=rows_hint),
            q_norm=q_norm.weight if q_norm is not None else None,
            k_norm=k_norm.weight if k_norm is not None else None,
            out=Linear(attention.o_proj.weight, None, rows_hint=rows_hint),
            post_norm=layer.post_attention_layernorm.weight,
            gate_up=Linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous(), None, rows_hint=rows_hint),
            down=Linear(mlp.down_proj.weight, None, rows_hint=rows_hint),
        )


class StaticDecoder:
    """The decoder's forward over a KV cache of ``slots`` rows x ``max_len`` positions, allocated once.

    ``prefill(slot, ids)`` runs a whole prompt into one slot; ``decode(tokens, positions, span)``
    runs one token for each of the slots 0..n-1 (live rows are kept as a prefix; ``move`` compacts).
    Keys are cached transposed, [slot, kv_head, head_dim, position]: the scores are then a plain
    q @ K product, a third faster on CPU than q @ K.T over the same bytes.
    """

    def __init__(self, model_or_weights, *, slots: int, max_len: int):
        w = model_or_weights if isinstance(model_or_weights, DecoderWeights) else DecoderWeights(model_or_weights, rows_hint=slots)
        self.w, self.slots, self.max_len, self.device = w, slots, max_len, w.device
        cache = dict(dtype=w.attention_dtype, device=w.device)
        self.keys = [torch.zeros((slots, w.kv_heads, w.head_dim, max_len), **cache) for _ in w.layers]
        self.values = [torch.zeros((slots, w.kv_heads, max_len, w.head_dim), **cache) for _ in w.layers]
        probe = torch.zeros(1, dtype=w.dtype, device=w.device)
        cos, sin = w.rotary(probe, torch.arange(max_len, device=w.device)[None])  # the model's own RoPE
        self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]

    def _qkv(self, layer: _Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """h [T, hidden] -> q [T, q_heads, d], k and v [T, kv_heads, d], RoPE applied."""
        w = self.w
        heads = layer.qkv(h).view(h.shape[0], w.q_heads + 2 * w.kv_heads, w.head_dim)
        qk, v = heads[:, :w.q_heads + w.kv_heads], heads[:, w.q_heads + w.kv_heads:]
        if layer.q_norm is not None:
            qk = torch.cat([_rms_norm(qk[:, :w.q_heads], layer.q_norm, w.eps),
                            _rms_norm(qk[:, w.q_heads:], layer.k_norm, w.eps)], dim=1)
        qk = _rotate(qk, cos[:, None], sin[:, None])  # q and k rotated in one go
        return qk[:, :w.q_heads], qk[:, w.q_heads:], v

    def _mlp_block(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        gate, up = layer.gate_up(_rms_norm(x, layer.post_norm, self.w.eps)).chunk(2, dim=-1)
        return x + layer.down(F.silu(gate) * up)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return _wide(self.w.lm_head(_rms_norm(x, self.w.final_norm, self.w.eps)))

    @torch.no_grad()
    def prefill(self, slot: int, ids: torch.Tensor) -> torch.Tensor:
        """Run prompt ``ids`` [T] into cache slot ``slot``; returns the next-token logits [vocab]."""
        w, length = self.w, ids.shape[0]
        x = w.embed[ids]
        cos, sin = self.cos[:length], self.sin[:length]
        for index, layer in enumerate(w.layers):
            q, k, v = self._qkv(layer, _rms_norm(x, layer.input_norm, w.eps), cos, sin)
            q, k, v = (t.to(w.attention_dtype).transpose(0, 1) for t in (q, k, v))  # [heads, T, d]
            self.keys[index][slot, :, :, :length] = k.transpose(1, 2)
            self.values[index][slot, :, :length] = v
            attended = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=w.scaling,
                                                      enable_gqa=True)
            x = x + layer.out(attended[0].transpose(0, 1).reshape(length, -1).to(w.dtype))
            x = self._mlp_block(layer, x)
        return self._logits(x[-1:])[0]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, span: int) -> torch.Tensor:
        """One token per slot 0..n-1 (``tokens`` [n]) written at ``positions`` [n]; every slot's
        tokens lie within the first ``span`` positions. Returns next-token logits [n, vocab]."""
        w, n = self.w, tokens.shape[0]
        rows = torch.arange(n, device=self.device)
        x = w.embed[tokens]
        cos, sin = self.cos[positions], self.sin[positions]
        # a row attends to its own positions 0..position; the rest of the span is masked out
        hidden = torch.arange(span, device=self.device)[None] > positions[:, None]
        mask = torch.zeros((n, 1, 1, span), dtype=w.attention_dtype, device=self.device).masked_fill(
            hidden[:, None, None], float("-inf"))
        for index, layer in enumerate(w.layers):
            q, k, v = self._qkv(layer, _rms_norm(x, layer.input_norm, w.eps), cos, sin)
            keys, values = self.keys[index], self.values[index]
            keys[rows, :, :, positions] = k.to(w.attention_dtype)
            values[rows, :, positions] = v.to(w.attention_dtype)
            # grouped-query attention without copying K/V: [n, kv, group, d] against [n, kv, d, span]
            q = (q.to(w.attention_dtype) * w.scaling).reshape(n, w.kv_heads, w.group, w.head_dim)
            scores = torch.matmul(q, keys[:n, :, :, :span]) + mask
            attended = torch.matmul(torch.softmax(_wide(scores), dim=-1).to(scores.dtype), values[:n, :, :span])
            x = x + layer.out(attended.reshape(n, -1).to(w.dtype))
            x = self._mlp_block(layer, x)
        return self._logits(x)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy slot ``source``'s first ``length`` cached positions into slot ``target``."""
        for keys, values in zip(self.keys, self.values):
            keys[target, :, :, :length] = keys[source, :, :, :length]
            values[target, :, :length] = values[source, :, :length]


# ---- continuous batching --------------------------------------------------------------------------


@dataclass
class _Row:
    request: int  # index into the call's prompts
    generator: torch.Generator
    tokens: list[int]


def generate_continuous(model, prompts: Sequence[Sequence[int]], seeds: Sequence[int], *, temperature: float,
                        top_p: float, max_new_tokens: int, stop_ids: Sequence[int], batch_size: int,
                        on_finish: Callable[[Generation], None] | None = None) -> list[Generation]:
    """One reply per prompt, ``batch_size`` rows decoding at a time; a row that finishes is
    replaced by the next prompt (longest first, so an out-of-memory error shows at once).
    ``model`` is the HF model or its ``DecoderWeights`` (built once, reused across calls)."""
    if not prompts:
        return []
    slots = min(batch_size, len(prompts))
    decoder = StaticDecoder(model, slots=slots, max_len=max(len(p) for p in prompts) + max_new_tokens)
    device, stop_set = decoder.device, set(stop_ids)
    pending = deque(sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i)))
    results: list[Generation | None] = [None] * len(prompts)
    rows: list[_Row] = []  # rows[s] decodes in cache slot s
    last = torch.zeros(slots, dtype=torch.long, device=device)  # each slot's latest token
    positions = torch.zeros(slots, dtype=torch.long, device=device)  # where that token goes in the cache

    def draw(logits: torch.Tensor, batch: list[_Row]) -> list[int]:
        uniforms = torch.stack([torch.rand((), generator=row.generator) for row in batch])
        return draw_tokens(logits, uniforms, temperature=temperature, top_p=top_p).tolist()

    def finished(row: _Row, token: int) -> bool:
        row.tokens.append(token)
        if token in stop_set:
            generation = Generation(tuple(row.tokens[:-1]), "eos", len(row.tokens))
        elif len(row.tokens) >= max_new_tokens:
            generation = Generation(tuple(row.tokens), "length", len(row.tokens))
        else:
            return False
        results[row.request] = generation
        if on_finish is not None:
            on_finish(generation)
        return True

    while pending or rows:
        while pending and len(rows) < slots:
            request = pending.popleft()
            slot = len(rows)
            ids = torch.tensor(list(prompts[request]), dtype=torch.long, device=device)
            row = _Row(request, torch.Generator().manual_seed(int(seeds[request])), [])
            logits = decoder.prefill(slot, ids)
            token = draw(logits[None], [row])[0]
            if not finished(row, token):
                rows.append(row)
                last[slot], positions[slot] = token, len(ids)
        if not rows:
            break
        n = len(rows)
        span = int(positions[:n].max()) + 1
        tokens = draw(decoder.decode(last[:n], positions[:n], span), rows)
        done = [finished(row, token) for row, token in zip(rows, tokens)]
        last[:n] = torch.tensor(tokens, dtype=torch.long, device=device)
        positions[:n] += 1
        # compact: the last live row moves into each freed slot, so live rows stay a prefix
        for slot in reversed([s for s, d in enumerate(done) if d]):
            tail = len(rows) - 1
            if slot != tail:
                decoder.move(tail, slot, int(positions[tail]))
                rows[slot] = rows[tail]
                last[slot], positions[slot] = last[tail], positions[tail]
            rows.pop()
    return results  # type: ignore[return-value]
