"""LoRA DRIFT beside full-weight DRIFT on the testbed: held-out gold, paired gains, seconds per step, memory.

    python launch/train.py experiment=testbed method=drift trainer.seed=42 run_name=full_s42
    python launch/train.py experiment=testbed method=drift trainer.seed=42 model.lora.rank=16 run_name=lora_s42
    ... (the same for each seed)
    python benchmarks/lora_testbed.py --run full:42=runs/full_s42 --run lora:42=runs/lora_s42 ... \\
        [--wall full:42=SECONDS ...] --out benchmarks/results/lora_testbed

For every run: gold on the held-out split for base, warm start and iteration 1 (± SE over prompts), the
paired gain of iteration 1 over the warm start, the mean seconds of a training step (warm start and
iteration 1) and the trainer process's peak resident memory (metrics.jsonl's peak_memory_gb, the
process's maximum RSS on a CPU). For every seed with both runs: the paired difference LoRA − full at
each stage, over the same prompts. Writes <out>/lora_testbed.json and lora_testbed.md, and each run's
summary.json and config under <out>/runs/<variant>_s<seed>/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("base", "warmstart", "iter_1")


def step_stats(run: Path) -> dict[str, dict]:
    """Per training stage: steps, mean seconds per step, peak memory (GB)."""
    from drift.io import read_jsonl

    stats = {}
    for stage, folder in (("warmstart", "iter_0"), ("iter_1", "iter_1")):
        rows = read_jsonl(run / folder / "train" / "metrics.jsonl")
        stats[stage] = {
            "steps": len(rows),
            "seconds_per_step": sum(r["seconds"] for r in rows) / len(rows),
            "peak_memory_gb": max(r["peak_memory_gb"] for r in rows),
        }
    return stats


def heldout_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["heldout"]


def run_record(run: Path, heldout: dict, wall_seconds: float | None) -> dict:
    from drift.eval.heldout import paired_gain

    return {
        "run_dir": str(run),
        "gold": {stage: {"gold": heldout[stage]["gold"], "se": heldout[stage]["gold_se"],
                         "cut_share": heldout[stage]["cut_share"]} for stage in STAGES},
        "iter_1_over_warmstart": paired_gain(heldout["iter_1"], heldout["warmstart"]),
        "warmstart_over_base": paired_gain(heldout["warmstart"], heldout["base"]),
        "training": step_stats(run),
        "wall_seconds": wall_seconds,
    }


def compare(runs: dict[tuple[str, int], Path], walls: dict[tuple[str, int], float]) -> dict:
    from drift.eval.heldout import paired_gain

    heldout = {key: heldout_of(run) for key, run in runs.items()}
    records = {f"{variant}_s{seed}": run_record(run, heldout[variant, seed], walls.get((variant, seed)))
               for (variant, seed), run in sorted(runs.items())}
    paired = {}
    for seed in sorted({seed for _, seed in runs}):
        if ("full", seed) in runs and ("lora", seed) in runs:
            full, lora = heldout["full", seed], heldout["lora", seed]
            paired[f"s{seed}"] = {stage: paired_gain(lora[stage], full[stage]) for stage in ("warmstart", "iter_1")}
    return {"benchmark": "LoRA DRIFT beside full-weight DRIFT on the testbed", "runs": records, "lora_minus_full": paired}


def format_table(report: dict) -> str:
    lines = ["| run | base | warm start | iteration 1 | iter 1 − warm start (paired) | s/step warm start | s/step iter 1 | peak memory GB | wall min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        gold = {stage: f"{r['gold'][stage]['gold']:.3f} ± {r['gold'][stage]['se']:.3f}" for stage in STAGES}
        gain = r["iter_1_over_warmstart"]
        training = r["training"]
        peak = max(training[s]["peak_memory_gb"] for s in training)
        wall = f"{r['wall_seconds'] / 60:.1f}" if r["wall_seconds"] else ""
        lines.append(f"| {name} | {gold['base']} | {gold['warmstart']} | {gold['iter_1']} | {gain['gain']:+.3f} ± {gain['se']:.3f} "
                     f"| {training['warmstart']['seconds_per_step']:.2f} | {training['iter_1']['seconds_per_step']:.2f} | {peak:.2f} | {wall} |")
    lines += ["", "| seed | LoRA − full, warm start (paired) | LoRA − full, iteration 1 (paired) |", "|---|---|---|"]
    for seed, stages in report["lora_minus_full"].items():
        lines.append(f"| {seed} | {stages['warmstart']['gain']:+.3f} ± {stages['warmstart']['se']:.3f} "
                     f"| {stages['iter_1']['gain']:+.3f} ± {stages['iter_1']['se']:.3f} |")
    return "\n".join(lines)


def parse_pairs(values: list[str], what: str) -> dict[tuple[str, int], str]:
    parsed = {}
    for value in values:
        key, sep, target = value.partition("=")
        variant, colon, seed = key.partition(":")
        if not (sep and colon and variant in ("full", "lora") and seed.isdigit()):
            raise SystemExit(f"lora_testbed: {what} {value!r} must read full:SEED=... or lora:SEED=...")
        parsed[variant, int(seed)] = target
    return parsed


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", default=[], help="full:SEED=RUN_DIR or lora:SEED=RUN_DIR")
    parser.add_argument("--wall", action="append", default=[], help="full:SEED=SECONDS, the run's wall time")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lora_testbed")
    args = parser.parse_args(argv)
    runs = {key: Path(value) for key, value in parse_pairs(args.run, "--run").items()}
    walls = {key: float(value) for key, value in parse_pairs(args.wall, "--wall").items()}
    report = compare(runs, walls)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_testbed.json").write_text(json.dumps(report, indent=1) + "\n")
    table = format_table(report)
    (args.out / "lora_testbed.md").write_text(table + "\n")
    for (variant, seed), run in runs.items():
        target = args.out / "runs" / f"{variant}_s{seed}"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run / "summary.json", target / "summary.json")
        shutil.copy2(run / ".hydra" / "config.yaml", target / "config.yaml")
    print(table)


if __name__ == "__main__":
    main()
