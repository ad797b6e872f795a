"""The testbed search's table and plot, from the runs themselves (their summary.json and .hydra/).

    python launch/train.py -m experiment=testbed method=drift trainer.lr=3e-6,3e-5 hydra.sweep.dir=runs/search_a
    python benchmarks/testbed_search.py runs/search_a runs/search_b --out benchmarks/results/testbed_search

Every folder given (a run or a sweep folder holding runs) contributes one row per run: the levers
the search varies (method, lr, beta, global batch, warm-start epochs, iterations, seed, guidance),
the held-out gold of every evaluated checkpoint (base, warm start, each iteration), overall and by
preference kind, the cut share, and the run's wall-clock minutes. Writes search.json, search.md and
gold_per_stage.png (one line per run, or one per method with --by method) under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LEVERS = {  # column -> dotted key in the run's composed config
    "method": "method.name",
    "lr": "trainer.lr",
    "beta": "method.beta",
    "warmstart_epochs": "method.warmstart_epochs",
    "iterations": "method.iterations",
    "seed": "trainer.seed",
    "guidance": "data.guidance",
    "rpo_alpha": "method.rpo_alpha",
}
RPO_ALPHA_DEFAULT = 0.001  # rows merged from before the column existed ran at the default


def find_runs(folders: list[Path]) -> list[Path]:
    """Run folders (those with a summary.json) at or one level under each folder given."""
    runs = []
    for folder in folders:
        candidates = [folder] if (folder / "summary.json").exists() else sorted(folder.glob("*/summary.json"))
        runs.extend(path.parent if path.name == "summary.json" else path for path in candidates)
    return runs


def lookup(config: dict, dotted: str):
    value = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def run_row(run: Path) -> dict:
    import yaml

    summary = json.loads((run / "summary.json").read_text())
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    trainer = config["trainer"]
    row = {"run": str(run), **{column: lookup(config, key) for column, key in LEVERS.items()},
           "global_batch": trainer["per_device_batch_size"] * trainer["grad_accum_steps"]}
    # start: Hydra writes .hydra/ before the run; end: the summary is the run's last write
    minutes = ((run / "summary.json").stat().st_mtime - (run / ".hydra" / "config.yaml").stat().st_mtime) / 60
    # a run copied from elsewhere (its files written together) has no wall clock left to read
    row["minutes"] = round(minutes, 1) if minutes > 0.5 else None
    row["stages"] = {
        name: {"gold": result["gold"], "cut_share": result["cut_share"],
               **{kind: result["by_kind"][kind]["gold"] for kind in result.get("by_kind", {})}}
        for name, result in summary.get("heldout", {}).items()
    }
    row["steps"] = {name: stats.get("steps") for name, stats in summary["stages"].items()}
    row["gains"] = final_gains(summary.get("heldout", {}))
    # a warm start linked from another run (method.warmstart_from): its minutes are not in this run's wall clock
    row["warmstart_from"] = summary["stages"].get("warmstart", {}).get("from")
    return row


def final_gains(heldout: dict) -> dict:
    """The last evaluated stage's paired gain (± SE) over base and over the warm start."""
    from drift.eval.heldout import paired_gain

    results = {name: with_prompt_gold(result) for name, result in heldout.items()}
    trained = [name for name in results if name != "base"]
    if not trained:
        return {}
    last = max(trained, key=stage_order)
    gains = {anchor: paired_gain(results[last], results[anchor]) for anchor in ("base", "warmstart")
             if anchor in results and anchor != last}
    return {anchor: gain for anchor, gain in gains.items() if gain is not None}


def with_prompt_gold(result: dict) -> dict:
    """A summary written before per-prompt gold was saved: rescored from its cached samples, if still there."""
    folder = Path(result.get("samples_folder", "")) / "samples.jsonl"
    if result.get("prompt_gold") or not folder.is_file():
        return result
    from drift.eval.heldout import prompt_means, read_heldout, score_rows
    from drift.io import read_jsonl

    heldout = read_heldout("testbed")
    scored = score_rows(read_jsonl(folder), heldout)
    return {**result, "prompt_gold": prompt_means(scored, [row["prompt_id"] for row in heldout])}


def format_table(rows: list[dict]) -> str:
    stage_names = sorted({name for row in rows for name in row["stages"]}, key=stage_order)
    header = (["method", "lr", "beta", "rpo α", "guidance", "batch", "ws ep", "iters", "seed", "min"] + [f"{name} gold (stated/revealed)" for name in stage_names]
              + ["last - warm start (± SE)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: -final_gold(r)):
        minutes = "–" if row["minutes"] is None else f"{row['minutes']:g}" + (" (ws shared)" if row.get("warmstart_from") else "")
        cells = [row["method"], f"{row['lr']:g}", f"{row['beta']:g}", f"{row.get('rpo_alpha', RPO_ALPHA_DEFAULT):g}",
                 row.get("guidance") or "", str(row["global_batch"]), str(row["warmstart_epochs"]),
                 str(row["iterations"]), str(row["seed"]), minutes]
        for name in stage_names:
            stage = row["stages"].get(name)
            cells.append("" if stage is None else f"{stage['gold']:.3f} ({stage.get('stated', float('nan')):.3f}/{stage.get('revealed', float('nan')):.3f})")
        gain = row.get("gains", {}).get("warmstart")
        cells.append("–" if gain is None else f"{gain['gain']:+.3f} ± {gain['se']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def stage_order(name: str) -> tuple[int, str]:
    return {"base": (0, ""), "warmstart": (1, "")}.get(name, (2, name))


def final_gold(row: dict) -> float:
    trained = [name for name in row["stages"] if name != "base"]
    return row["stages"][max(trained, key=stage_order)]["gold"] if trained else float("-inf")


def plot(rows: list[dict], path: Path, by: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.2))
    stage_names = sorted({name for row in rows for name in row["stages"]}, key=stage_order)
    for row in rows:
        names = [name for name in stage_names if name in row["stages"]]
        label = row["method"] if by == "method" else (
            f"{row['method']} lr={row['lr']:g} β={row['beta']:g} α={row.get('rpo_alpha', RPO_ALPHA_DEFAULT):g} "
            f"b={row['global_batch']} ws={row['warmstart_epochs']} {row.get('guidance') or ''} s={row['seed']}")
        ax.plot([stage_names.index(n) for n in names], [row["stages"][n]["gold"] for n in names], marker="o", label=label)
    ax.set_xticks(range(len(stage_names)), stage_names)
    ax.set_ylabel("held-out gold (104 prompts)")
    ax.set_title("testbed: gold per stage (base and warm start are the first two points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, never over them
    fig.tight_layout()
    from drift.io import atomic_target

    with atomic_target(path) as staging:
        fig.savefig(staging, format="png", dpi=120)


def main() -> None:
    from drift.io import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "testbed_search")
    parser.add_argument("--by", choices=("run", "method"), default="run", help="label plot lines by run levers or by method")
    parser.add_argument("--merge", type=Path, help="an earlier search.json whose rows are kept beside the runs found")
    args = parser.parse_args()

    rows = [run_row(run) for run in find_runs(args.folders)]
    if args.merge:
        # rows of runs whose folders are gone (an earlier machine), kept as they were measured
        on_disk = {row["run"] for row in rows}
        rows = [row for row in json.loads(args.merge.read_text()) if row["run"] not in on_disk] + rows
    if not rows:
        raise SystemExit(f"no run with a summary.json in {', '.join(map(str, args.folders))}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "search.json", json.dumps(rows, indent=2) + "\n")
    table = format_table(rows)
    write_text_atomic(args.out / "search.md", table)
    plot(rows, args.out / "gold_per_stage.png", args.by)
    print(table)


if __name__ == "__main__":
    main()
