"""bf16 attention on this CPU: SDPA's kernel beside drift.cpu_attention, forward and backward, in one run.

    python benchmarks/cpu_attention.py              # SmolLM2-135M's heads, the pieces of a DPO pair
    python benchmarks/cpu_attention.py --repeats 50

The pieces are those a DPO pair of benchmarks/dpo_step.py makes (a ~230-token prompt, ~130-token
responses): the prompt and chosen response as one causal piece, the rejected response's queries over
the prompt's and its own keys; and a longer causal piece. Each is timed as SDPA (what packed
attention ran before: its CPU flash kernel, grouped K/V read in place) and as drift.cpu_attention
(what packed attention runs in bf16 on a CPU now): the median milliseconds of forward + backward
(SDPA timed before and after ours, the speed-up taken against its faster run, so a machine slowing
mid-run does not flatter ours), and of the forward alone without autograd (a reference pass; SDPA's
kernel skips a causal piece's masked half, ours does not). Writes
benchmarks/results/cpu_attention_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from drift import cpu_attention, packing

ROOT = Path(__file__).resolve().parent.parent
HEADS, KV_HEADS, DIM = 9, 3, 64  # SmolLM2-135M
PIECES = {"prompt+chosen, causal": (360, 360), "rejected over prompt+rejected": (130, 360), "long causal": (500, 500)}


def _median_ms(function, repeats: int) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def time_piece(q_length: int, k_length: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    make = lambda heads, length: torch.randn(1, heads, length, DIM, generator=generator).to(torch.bfloat16).requires_grad_()  # noqa: E731
    query, key, value = make(HEADS, q_length), make(KV_HEADS, k_length), make(KV_HEADS, k_length)
    grad = torch.randn(1, HEADS, q_length, DIM, generator=generator).to(torch.bfloat16)
    scale = DIM**-0.5
    mask = packing.piece_mask(q_length, k_length, None)
    bias = cpu_attention.additive_mask(packing.allowed_keys(q_length, k_length, None), HEADS // KV_HEADS, torch.bfloat16)

    def sdpa():
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=mask is None, scale=scale,
                                              enable_gqa=True)

    def ours():
        return cpu_attention.grouped_attention(query, key, value, bias, scale)

    def with_backward(attention):
        return lambda: attention().backward(grad)

    def forward_only(attention):
        def run():
            with torch.no_grad():
                attention()
        return run

    row = {"q_length": q_length, "k_length": k_length}
    for name, function in (("sdpa_ms", with_backward(sdpa)), ("ours_ms", with_backward(ours)), ("sdpa_again_ms", with_backward(sdpa)),
                           ("sdpa_forward_ms", forward_only(sdpa)), ("ours_forward_ms", forward_only(ours)),
                           ("sdpa_forward_again_ms", forward_only(sdpa))):
        row[name] = _median_ms(function, repeats)
    row["speedup"] = min(row["sdpa_ms"], row["sdpa_again_ms"]) / row["ours_ms"]
    row["forward_only_speedup"] = min(row["sdpa_forward_ms"], row["sdpa_forward_again_ms"]) / row["ours_forward_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_attention_cpu.json"))
    args = parser.parse_args()
    rows = {name: time_piece(*shape, args.repeats) for name, shape in PIECES.items()}
    print(f"{'piece':<32} {'Lq x Lk':>11} {'SDPA ms':>8} {'ours ms':>8} {'SDPA again':>10} {'speed-up':>8} {'forward only':>13}")
    for name, row in rows.items():
        print(f"{name:<32} {row['q_length']:>4} x {row['k_length']:<4} {row['sdpa_ms']:>8.2f} {row['ours_ms']:>8.2f} "
              f"{row['sdpa_again_ms']:>10.2f} {row['speedup']:>7.2f}x {row['forward_only_speedup']:>12.2f}x")
    report = {"benchmark": "cpu_attention", "threads": torch.get_num_threads(), "heads": HEADS, "kv_heads": KV_HEADS,
              "head_dim": DIM, "repeats": args.repeats, "pieces": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
