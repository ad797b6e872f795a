"""Does sampling in bf16 change what the samples are worth? Gold reward on the testbed's held-out split.

    python benchmarks/sampler_dtype_gold.py                   # embedded SmolLM2-135M-Instruct, seeds 42 and 43

The same checkpoint samples the 104 held-out prompts with sampler.dtype=float32 and =bfloat16, each
with two sampler seeds; the gold reward scores every reply (drift.eval.heldout). The seed-to-seed
spread within one dtype is the noise a dtype difference has to be compared with. Writes
benchmarks/results/sampler_dtype_gold_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from drift.config import SamplerConfig
    from drift.eval.heldout import eval_sampler, evaluate_checkpoint, read_heldout
    from drift.io import write_text_atomic
    from drift.model import ensure_embedded_smollm2

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "dtype_gold")
    args = parser.parse_args()
    checkpoint = args.checkpoint or str(ensure_embedded_smollm2())
    heldout = read_heldout("testbed")
    results = []
    for dtype in ("float32", "bfloat16"):
        for seed in args.seeds:
            sampler = eval_sampler(SamplerConfig(dtype=dtype, seed=seed, batch_size=16), args.max_new_tokens)
            started = time.perf_counter()
            result = evaluate_checkpoint(checkpoint, heldout, cache_root=args.work, sampler=sampler, max_prompt_length=1024,
                                         prompt_format="chat_template", device="cpu", trust_remote_code=False)
            report = json.loads((Path(result["samples_folder"]) / "sampling_report.json").read_text())
            results.append({"dtype": dtype, "seed": seed, "gold": result["gold"], "gold_finished": result["gold_finished"],
                            "stated": result["by_kind"]["stated"]["gold"], "revealed": result["by_kind"]["revealed"]["gold"],
                            "cut_share": result["cut_share"], "mean_words": result["mean_words"],
                            "tokens_per_second": report["tokens_per_second"], "seconds": round(time.perf_counter() - started, 1),
                            "sampler": dataclasses.asdict(sampler)})
            row = results[-1]
            print(f"{dtype:<9} seed {seed}: gold {row['gold']:.3f} (stated {row['stated']:.3f}, revealed {row['revealed']:.3f}), "
                  f"cut {row['cut_share']:.2f}, {row['mean_words']:.0f} words, {row['tokens_per_second']:.0f} tok/s", flush=True)

    def mean(dtype, key):
        values = [r[key] for r in results if r["dtype"] == dtype]
        return sum(values) / len(values)

    spread = {dtype: max(r["gold"] for r in results if r["dtype"] == dtype) - min(r["gold"] for r in results if r["dtype"] == dtype)
              for dtype in ("float32", "bfloat16")}
    summary = {"gold_float32": round(mean("float32", "gold"), 4), "gold_bfloat16": round(mean("bfloat16", "gold"), 4),
               "difference": round(mean("bfloat16", "gold") - mean("float32", "gold"), 4),
               "seed_spread": {k: round(v, 4) for k, v in spread.items()},
               "speedup_bf16": round(mean("bfloat16", "tokens_per_second") / mean("float32", "tokens_per_second"), 2)}
    print(json.dumps(summary, indent=2))
    out = ROOT / "benchmarks" / "results" / "sampler_dtype_gold_cpu.json"
    write_text_atomic(out, json.dumps({"checkpoint": checkpoint, "prompts": len(heldout), "results": results,
                                       "summary": summary}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
