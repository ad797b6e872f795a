"""The main job, `python launch/train.py`, on several seeds; and, on some of them, with fp32 training.

    python benchmarks/main_job_seeds.py                                  # seeds 42 (the default), 7 and 1
    python benchmarks/main_job_seeds.py --seeds 42 7 1 --fp32-seeds 42 7  # and fp32 training on two of them

Each run is the main job as a user runs it, with ``trainer.seed`` and ``sampler.seed`` set to the
seed (the default is 42, chosen before any result), in its own folder under ``--out-dir``; a run
folder that already finished is reused as it is (the main job's own resume). Its wall time is the
whole command's (set-up excluded: the model is already installed and dequantized). The held-out
evaluation of every run shares one evaluation cache, so a checkpoint sampled under the same settings
(the base model, under one seed) is drawn once.

``--fp32-seeds``: the same seeds again with ``trainer.precision=fp32`` (the sampler unchanged), and
the paired difference of held-out gold, bf16-trained minus fp32-trained, per stage: the two runs
answer the same prompts, so the difference is taken prompt by prompt, with the standard error of its
mean. Writes benchmarks/results/main_job_seeds_cpu.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_main_job(out_dir: Path, name: str, overrides: list[str]) -> dict:
    """launch/train.py as a user runs it; its console goes to <run>/train.log, not here."""
    command = [sys.executable, "launch/train.py", *overrides, f"output_dir={out_dir}", f"run_name={name}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
    run = out_dir / name
    summary = json.loads((run / "summary.json").read_text())
    lines = done.stdout.splitlines()
    return {"run": str(run), "overrides": overrides, "wall_seconds": round(seconds, 1), "console_lines": len(lines),
            "console": done.stdout, "summary": summary}


def stage_rows(summary: dict) -> dict:
    from drift.eval.heldout import paired_gain

    heldout = summary["heldout"]
    rows = {}
    for name, result in heldout.items():
        rows[name] = {"gold": result["gold"], "se": result["gold_se"], "stated": result["by_kind"]["stated"]["gold"],
                      "revealed": result["by_kind"]["revealed"]["gold"], "cut": result["cut_share"],
                      "words": result["mean_words"],
                      "over_base": paired_gain(result, heldout["base"]) if name != "base" else None,
                      "over_warmstart": paired_gain(result, heldout["warmstart"])
                      if name not in ("base", "warmstart") and "warmstart" in heldout else None}
    return rows


def gain_text(gain: dict | None) -> str:
    return f"{gain['gain']:+.3f} ± {gain['se']:.3f}" if gain else ""


def main() -> None:
    from drift.eval.heldout import paired_gain
    from drift.io import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1])
    parser.add_argument("--fp32-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "main_job_seeds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "main_job_seeds_cpu.json")
    args = parser.parse_args()

    runs = {}
    for seed in args.seeds:
        runs[f"s{seed}"] = run_main_job(args.out_dir, f"main_s{seed}", [f"trainer.seed={seed}", f"sampler.seed={seed}"])
        print(f"seed {seed}: {runs[f's{seed}']['wall_seconds']:.0f} s, {runs[f's{seed}']['console_lines']} console lines", flush=True)
    for seed in args.fp32_seeds:
        runs[f"s{seed}_fp32"] = run_main_job(args.out_dir, f"main_s{seed}_fp32",
                                             [f"trainer.seed={seed}", f"sampler.seed={seed}", "trainer.precision=fp32"])
        print(f"seed {seed}, fp32 training: {runs[f's{seed}_fp32']['wall_seconds']:.0f} s", flush=True)

    print(f"\n{'seed':<10} {'wall':>6} {'stage':<10} {'gold':>6} {'± se':>6} {'stated':>7} {'revealed':>8} {'cut':>5} "
          f"{'words':>6} {'gain over base':>16} {'over warm start':>16}")
    table = {}
    for key, result in runs.items():
        table[key] = stage_rows(result["summary"])
        for index, (stage, row) in enumerate(table[key].items()):
            wall = f"{result['wall_seconds'] / 60:.1f}m" if index == 0 else ""
            print(f"{key if index == 0 else '':<10} {wall:>6} {stage:<10} {row['gold']:>6.3f} {row['se']:>6.3f} "
                  f"{row['stated']:>7.3f} {row['revealed']:>8.3f} {row['cut']:>5.2f} {row['words']:>6.1f} "
                  f"{gain_text(row['over_base']):>16} {gain_text(row['over_warmstart']):>16}")
    precision = {}
    for seed in args.fp32_seeds:
        bf16, fp32 = runs[f"s{seed}"]["summary"]["heldout"], runs[f"s{seed}_fp32"]["summary"]["heldout"]
        precision[str(seed)] = {stage: paired_gain(bf16[stage], fp32[stage]) for stage in bf16 if stage != "base"}
    if precision:
        print("\nheld-out gold, bf16-trained minus fp32-trained (paired by prompt, ± SE):")
        for seed, stages in precision.items():
            print(f"  seed {seed}: " + ", ".join(f"{stage} {gain_text(gain)}" for stage, gain in stages.items()))
    write_json_atomic(args.out, {
        "command": "python benchmarks/main_job_seeds.py " + " ".join(sys.argv[1:]), "load_average_at_end": os.getloadavg(),
        "runs": {key: {k: v for k, v in result.items() if k != "summary"} | {"heldout": table[key],
                 "stages": result["summary"]["stages"]} for key, result in runs.items()},
        "bf16_minus_fp32": precision})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
