"""Does sampling in bf16 change what the samples are worth? Gold reward on the testbed's held-out split.

    python benchmarks/sampler_dtype_gold.py                   # embedded SmolLM2-135M-Instruct, seeds 42 and 43
    python benchmarks/sampler_dtype_gold.py --checkpoint runs/<run>/iter_1/train/model --label drift

Each checkpoint samples the held-out prompts with sampler.dtype=float32 and =bfloat16 under the same
sampler seeds (the main job's sampler otherwise: batch 32, temperature 0.7, top-p 0.9), and the gold
reward scores every reply (drift.eval.heldout). The two dtypes answer the same prompts, so their
difference is paired by prompt: per prompt, bf16's gold minus fp32's, averaged over the seeds; the
standard error of its mean over prompts is what the difference has to be compared with. Writes
benchmarks/results/sampler_dtype_gold_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DTYPES = ("float32", "bfloat16")


def main() -> None:
    from drift.config import SamplerConfig
    from drift.eval.heldout import eval_sampler, evaluate_checkpoint, mean_and_se, read_heldout
    from drift.io import write_text_atomic
    from drift.model import ensure_embedded_smollm2

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", default=None, help="HF folders (default: the embedded base model)")
    parser.add_argument("--label", nargs="+", default=None, help="a name per checkpoint")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--heldout", default="testbed", help="testbed (104 prompts), testbed_compact (48) or a file")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "dtype_gold")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sampler_dtype_gold_cpu.json")
    args = parser.parse_args()
    checkpoints = args.checkpoint or [str(ensure_embedded_smollm2())]
    labels = args.label or (["base"] if not args.checkpoint else [Path(c).parent.parent.parent.name for c in checkpoints])
    heldout = read_heldout(args.heldout)
    prompts = [row["prompt_id"] for row in heldout]
    rows, comparisons = [], []
    for checkpoint, label in zip(checkpoints, labels):
        gold: dict[tuple[str, int], dict[str, float]] = {}
        for seed in args.seeds:
            for dtype in DTYPES:
                sampler = eval_sampler(SamplerConfig(backend="hf", dtype=dtype, seed=seed, batch_size=args.batch_size),
                                       args.max_new_tokens)
                started = time.perf_counter()
                result = evaluate_checkpoint(checkpoint, heldout, cache_root=args.work, sampler=sampler,
                                             max_prompt_length=1024, prompt_format="chat_template", device="cpu",
                                             trust_remote_code=False)
                report = json.loads((Path(result["samples_folder"]) / "sampling_report.json").read_text())
                gold[(dtype, seed)] = result["prompt_gold"]
                rows.append({"checkpoint": label, "dtype": dtype, "seed": seed, "gold": result["gold"],
                             "gold_se": result["gold_se"], "stated": result["by_kind"]["stated"]["gold"],
                             "revealed": result["by_kind"]["revealed"]["gold"], "cut_share": result["cut_share"],
                             "mean_words": result["mean_words"], "tokens_per_second": report["tokens_per_second"],
                             "generation_seconds": report["generation_seconds"],
                             "seconds": round(time.perf_counter() - started, 1)})
                row = rows[-1]
                print(f"{label} {dtype:<9} seed {seed}: gold {row['gold']:.3f} (stated {row['stated']:.3f}, revealed "
                      f"{row['revealed']:.3f}), cut {row['cut_share']:.2f}, {row['mean_words']:.0f} words, "
                      f"{row['tokens_per_second']:.0f} tok/s", flush=True)
        per_seed = {}
        for seed in args.seeds:
            per_seed[seed] = mean_and_se([gold[("bfloat16", seed)][p] - gold[("float32", seed)][p] for p in prompts])
        pooled = mean_and_se([sum(gold[("bfloat16", s)][p] - gold[("float32", s)][p] for s in args.seeds) / len(args.seeds)
                              for p in prompts])
        mean = {dtype: sum(r["gold"] for r in rows if r["checkpoint"] == label and r["dtype"] == dtype) / len(args.seeds)
                for dtype in DTYPES}
        rate = {dtype: sum(r["tokens_per_second"] for r in rows if r["checkpoint"] == label and r["dtype"] == dtype)
                / len(args.seeds) for dtype in DTYPES}
        comparisons.append({
            "checkpoint": label, "path": checkpoint, "gold_float32": round(mean["float32"], 4),
            "gold_bfloat16": round(mean["bfloat16"], 4),
            "difference_paired": {"gain": round(pooled[0], 4), "se": round(pooled[1], 4), "prompts": len(prompts),
                                  "seeds": len(args.seeds)},
            "difference_per_seed": {str(seed): {"gain": round(g, 4), "se": round(se, 4)} for seed, (g, se) in per_seed.items()},
            "within_two_se": abs(pooled[0]) <= 2 * pooled[1],
            "speedup_bf16": round(rate["bfloat16"] / rate["float32"], 2),
        })
    print(f"\n{'checkpoint':<12} {'fp32':>6} {'bf16':>6} {'bf16 - fp32 (paired)':>22} {'per seed':>28} {'bf16 speed':>10}")
    for c in comparisons:
        d = c["difference_paired"]
        seeds = ", ".join(f"{v['gain']:+.3f} ± {v['se']:.3f}" for v in c["difference_per_seed"].values())
        print(f"{c['checkpoint']:<12} {c['gold_float32']:>6.3f} {c['gold_bfloat16']:>6.3f} "
              f"{d['gain']:>+13.3f} ± {d['se']:.3f}   {seeds:>28} {c['speedup_bf16']:>9.2f}x")
    write_text_atomic(args.out, json.dumps({
        "heldout": args.heldout, "prompts": len(heldout), "seeds": args.seeds, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "results": rows, "comparisons": comparisons}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
