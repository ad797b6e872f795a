"""DRIFT, DRIFT with method.chosen_filter, unguided DRIFT and SPIN on the testbed, from shared warm starts.

    python benchmarks/guidance_compare.py --seeds 11 12 13
    python benchmarks/guidance_compare.py --seeds 11 12 13 --filters own_fallback --replies 4
    python benchmarks/guidance_compare.py --seeds 11 12 13 --report-only      # the report from finished runs

For each seed: the preset's DRIFT run (experiment=testbed method=drift trainer.seed=S), which trains the
warm start; then, from that warm start (method.warmstart_from), DRIFT with each --filters value of
method.chosen_filter, unguided DRIFT and SPIN. Every run evaluates base, warm start and its last
iteration on the held-out split with --replies replies per prompt; the runs share one output folder, so
base and the shared warm start are sampled once (the evaluation cache). A run whose summary.json exists
is not run again; an unfinished one continues where it stopped (the stage contract). --set KEY=VALUE
(repeatable) is added to every run's command, after the preset.

The report (--out): compare.json, compare.md and compare.png. Per seed and method: held-out gold overall
and per kind (stated, revealed), the paired gain of its last iteration over the shared warm start and over
the seed's DRIFT run (the same prompts: the prompts' own spread cancels; ± the SE of the paired difference),
the seconds iteration 1's sampling took (what the filter adds: the original prompt of every case), the
run's minutes, the guidance check at iteration 1 and the filter's pair counts. Across seeds: the mean gain
with two errors, the runs' own (the paired SEs combined) and the seeds' spread (their SD / sqrt(seeds)).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("stated", "revealed")
REFERENCE = "drift"  # the method every other is compared with, paired


def methods(filters: list[str]) -> dict[str, list[str]]:
    """label -> the method's overrides; the first trains the warm start the others link."""
    return {REFERENCE: ["method=drift"],
            **{f"drift_{value}": ["method=drift", f"method.chosen_filter={value}"] for value in filters},
            "drift_unguided": ["method=drift_unguided"], "spin": ["method=spin"]}


def run_name(label: str, seed: int) -> str:
    return f"{label}_s{seed}"


def command(label: str, overrides: list[str], seed: int, runs: Path, replies: int, extra: list[str]) -> list[str]:
    shared = [] if label == REFERENCE else [f"method.warmstart_from={runs / run_name(REFERENCE, seed)}"]
    return [sys.executable, str(ROOT / "launch" / "train.py"), "experiment=testbed", *overrides, f"trainer.seed={seed}",
            f"output_dir={runs}", f"run_name={run_name(label, seed)}", "eval.stages=all",
            f"eval.samples_per_prompt={replies}", *shared, *extra]


def run_all(labels: dict[str, list[str]], seeds: list[int], runs: Path, replies: int, extra: list[str]) -> None:
    for seed in seeds:
        for label, overrides in labels.items():
            folder = runs / run_name(label, seed)
            if (folder / "summary.json").is_file():
                print(f"{folder.name}: finished earlier, kept", flush=True)
                continue
            argv = command(label, overrides, seed, runs, replies, extra)
            print(f"{folder.name}: {' '.join(argv[1:])}", flush=True)
            started = time.monotonic()
            done = subprocess.run(argv, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"{folder.name} failed (exit {done.returncode}); its console is in {folder / 'train.log'}; "
                                 "the same command again continues where it stopped")
            print(f"{folder.name}: done in {(time.monotonic() - started) / 60:.1f} minutes", flush=True)


# ---- the report: pure functions of the runs' summaries ------------------------------------------


def kind_gain(later: dict, earlier: dict, prompts: list[str] | None) -> dict | None:
    """The paired gain of ``later`` over ``earlier`` (held-out results with prompt_gold) over ``prompts``
    (None: every prompt both were scored on)."""
    from drift.eval.heldout import paired_gain

    def only(result: dict) -> dict:
        gold = result.get("prompt_gold") or {}
        return {"prompt_gold": gold if prompts is None else {p: gold[p] for p in prompts if p in gold}}

    return paired_gain(only(later), only(earlier))


def gains(later: dict, earlier: dict, kinds: dict[str, list[str]]) -> dict:
    """{"all": gain, "stated": gain, "revealed": gain}: overall and per kind."""
    return {"all": kind_gain(later, earlier, None), **{kind: kind_gain(later, earlier, kinds[kind]) for kind in KINDS}}


def last_stage(heldout: dict) -> str:
    return max((name for name in heldout if name.startswith("iter_")), key=lambda name: int(name.split("_")[1]))


def run_report(run: Path) -> dict:
    """What the comparison reads of one finished run."""
    summary = json.loads((run / "summary.json").read_text())
    heldout = summary["heldout"]
    last = last_stage(heldout)
    stage = summary["stages"].get("iter_1", {})
    sampling = run / "iter_1" / "sample" / "sampling_report.json"
    hydra = run / ".hydra" / "config.yaml"
    minutes = ((run / "summary.json").stat().st_mtime - hydra.stat().st_mtime) / 60 if hydra.is_file() else None
    return {"run": str(run), "last": last, "heldout": heldout,
            "warmstart_from": summary["stages"].get("warmstart", {}).get("from"),
            "sampling_seconds": round(json.loads(sampling.read_text())["seconds"], 1) if sampling.is_file() else None,
            "minutes": round(minutes, 1) if minutes and minutes > 0 else None,
            "guidance_check": stage.get("guidance_check"), "chosen_filter": stage.get("chosen_filter"),
            "pairs": stage.get("pairs")}


def seed_rows(reports: dict[str, dict], kinds: dict[str, list[str]]) -> dict[str, dict]:
    """One seed's rows: per method, gold of its last iteration (overall, per kind) and its paired gains
    over the warm start and over DRIFT."""
    reference = reports[REFERENCE]["heldout"][reports[REFERENCE]["last"]]
    rows = {}
    for label, report in reports.items():
        heldout = report["heldout"]
        last = heldout[report["last"]]
        rows[label] = {
            "gold": last["gold"], "gold_se": last.get("gold_se"),
            **{kind: last["by_kind"][kind]["gold"] for kind in KINDS},
            "warmstart_gold": heldout["warmstart"]["gold"],
            "over_warmstart": gains(last, heldout["warmstart"], kinds),
            "over_drift": None if label == REFERENCE else gains(last, reference, kinds),
            **{key: report[key] for key in ("sampling_seconds", "minutes", "pairs", "chosen_filter", "warmstart_from")},
            "guidance_check": compact_check(report["guidance_check"]),
        }
    return rows


def compact_check(check: dict | None) -> dict | None:
    if not check:
        return None
    overall = check["overall"]
    return {"cases": overall["cases"], "guided_beats_own": overall["guided_beats_own_original"],
            "guided_beats_dsat": overall["guided_beats_dsat"], "margin_over_own": overall.get("margin_over_own"),
            "not_carried": check.get("not_carried"), "by_rule": check.get("by_rule")}


def across_seeds(values: list[dict | None]) -> dict | None:
    """The mean gain over seeds, with the runs' own error (paired SEs combined: sqrt(sum se^2) / n) and the
    seeds' spread (sample SD / sqrt(n); None for one seed)."""
    values = [value for value in values if value is not None]
    if not values:
        return None
    n = len(values)
    mean = sum(value["gain"] for value in values) / n
    within = math.sqrt(sum(value["se"] ** 2 for value in values)) / n
    spread = math.sqrt(sum((value["gain"] - mean) ** 2 for value in values) / (n - 1) / n) if n > 1 else None
    return {"gain": round(mean, 4), "se_runs": round(within, 4), "se_seeds": None if spread is None else round(spread, 4),
            "seeds": n, "per_seed": [value["gain"] for value in values]}


def summarize(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    labels = list(next(iter(per_seed.values())))
    summary = {}
    for label in labels:
        rows = [seed[label] for seed in per_seed.values() if label in seed]
        summary[label] = {
            "over_warmstart": {part: across_seeds([row["over_warmstart"][part] for row in rows]) for part in ("all", *KINDS)},
            "over_drift": None if label == REFERENCE else {
                part: across_seeds([row["over_drift"][part] for row in rows]) for part in ("all", *KINDS)},
            "sampling_seconds": _mean([row["sampling_seconds"] for row in rows]),
            "minutes": _mean([row["minutes"] for row in rows]),
        }
    return summary


def _mean(values: list) -> float | None:
    values = [value for value in values if value is not None]
    return round(sum(values) / len(values), 1) if values else None


def _gain(value: dict | None) -> str:
    return "–" if value is None else f"{value['gain']:+.3f} ± {value['se']:.3f}"


def _across(value: dict | None) -> str:
    if value is None:
        return "–"
    spread = "" if value["se_seeds"] is None else f", seeds ± {value['se_seeds']:.3f}"
    return f"{value['gain']:+.3f} (runs ± {value['se_runs']:.3f}{spread})"


def markdown(report: dict) -> str:
    lines = [f"# DRIFT, DRIFT with method.chosen_filter, unguided DRIFT and SPIN: {len(report['seeds'])} seeds",
             "", f"Held-out gold ({report['heldout_prompts']} prompts, {report['replies']} replies each), the last "
             "iteration of each run; gains are paired over the same prompts, ± the SE of the paired difference.", "",
             "## Across seeds: mean gain", "",
             "| method | over warm start | stated | revealed | over DRIFT | stated | revealed | sampling s (iter 1) | minutes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, row in report["summary"].items():
        over_drift = row["over_drift"] or {}
        lines.append(f"| {label} | " + " | ".join(_across(row["over_warmstart"][part]) for part in ("all", *KINDS)) + " | "
                     + " | ".join(_across(over_drift.get(part)) for part in ("all", *KINDS))
                     + f" | {row['sampling_seconds'] or '–'} | {row['minutes'] or '–'} |")
    lines += ["", "## Per seed", "",
              "| seed | method | gold ± se | stated | revealed | over warm start | stated | revealed | over DRIFT | stated | revealed "
              "| pairs (guided/own/none) | sampling s | minutes |", "|" + "---|" * 14]
    for seed, rows in report["per_seed"].items():
        for label, row in rows.items():
            counts = row["chosen_filter"]
            pairs = "–" if not counts else (f"{counts['guided_chosen']}/{counts['own_chosen']}/"
                                            f"{sum(v for k, v in counts.items() if k not in ('filter', 'guided_chosen', 'own_chosen'))}")
            over_drift = row["over_drift"] or {}
            se = f" ± {row['gold_se']:.3f}" if row["gold_se"] is not None else ""
            lines.append(f"| {seed} | {label} | {row['gold']:.3f}{se} | {row['stated']:.3f} | {row['revealed']:.3f} | "
                         + " | ".join(_gain(row["over_warmstart"][part]) for part in ("all", *KINDS)) + " | "
                         + " | ".join(_gain(over_drift.get(part)) for part in ("all", *KINDS))
                         + f" | {pairs} | {row['sampling_seconds'] or '–'} | {row['minutes'] or '–'} |")
    lines += ["", "## The guidance check at iteration 1 (the warm start's samples)", "",
              "| seed | run | cases | guided beats own | paired margin over own | beats DSAT | rules not carried |",
              "|---|---|---|---|---|---|---|"]
    for seed, rows in report["per_seed"].items():
        for label, row in rows.items():
            check = row["guidance_check"]
            if check:
                margin = check["margin_over_own"] or {}
                lines.append(f"| {seed} | {label} | {check['cases']} | {check['guided_beats_own']:.2f} | "
                             f"{margin.get('margin', float('nan')):+.3f} ± {margin.get('se', float('nan')):.3f} | "
                             f"{check['guided_beats_dsat']:.2f} | {', '.join(check['not_carried'] or []) or '–'} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    """Mean gain over the warm start per method, overall and per kind (error bars: runs' and seeds' SE
    combined), each seed's gain as a dot."""
    from drift.analysis._figures import pyplot, save_png

    plt = pyplot()
    if plt is None:
        return False
    labels = list(report["summary"])
    parts = ("all", *KINDS)
    width = 0.8 / len(parts)
    figure, axis = plt.subplots(figsize=(1.6 * len(labels) + 2, 4))
    try:
        for offset, part in enumerate(parts):
            xs = [index + (offset - (len(parts) - 1) / 2) * width for index in range(len(labels))]
            values = [report["summary"][label]["over_warmstart"][part] for label in labels]
            heights = [value["gain"] if value else 0.0 for value in values]
            errors = [math.hypot(value["se_runs"], value["se_seeds"] or 0.0) if value else 0.0 for value in values]
            axis.bar(xs, heights, width, yerr=errors, capsize=3, label=part, color=f"C{offset}", alpha=0.8)
            for x, value in zip(xs, values):
                if value:
                    axis.plot([x] * len(value["per_seed"]), value["per_seed"], "k.", markersize=4)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(labels)), labels)
        axis.set_ylabel("held-out gold, last iteration - warm start")
        axis.set_title(f"gain over the shared warm start, {len(report['seeds'])} seeds (dots: each seed)")
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=8)
        save_png(figure, path)
    finally:
        plt.close(figure)
    return True


def build_report(runs: Path, labels: list[str], seeds: list[int], replies: int) -> dict:
    from drift.eval.heldout import read_heldout

    per_seed: dict[int, dict[str, dict]] = {}
    heldout_file = None
    for seed in seeds:
        reports = {label: run_report(runs / run_name(label, seed)) for label in labels
                   if (runs / run_name(label, seed) / "summary.json").is_file()}
        if REFERENCE not in reports:
            print(f"seed {seed}: no finished {run_name(REFERENCE, seed)}; left out of the report", flush=True)
            continue
        if heldout_file is None:
            import yaml

            config = yaml.safe_load((runs / run_name(REFERENCE, seed) / ".hydra" / "config.yaml").read_text())
            heldout_file = config["eval"]["heldout"]
        rows = read_heldout(heldout_file)
        kinds = {kind: [row["prompt_id"] for row in rows if row["kind"] == kind] for kind in KINDS}
        per_seed[seed] = seed_rows(reports, kinds)
    if not per_seed:
        raise SystemExit(f"no seed has a finished {REFERENCE} run under {runs}")
    return {"runs": str(runs), "seeds": list(per_seed), "replies": replies, "heldout": heldout_file,
            "heldout_prompts": len(read_heldout(heldout_file)), "per_seed": per_seed, "summary": summarize(per_seed)}


def main() -> None:
    from drift.io import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--filters", nargs="+", default=["own_fallback", "drop"], choices=["own_fallback", "drop"],
                        help="the method.chosen_filter values to run beside the paper's DRIFT")
    parser.add_argument("--replies", type=int, default=4, help="held-out replies per prompt (eval.samples_per_prompt)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "guidance_compare", help="the runs' output_dir")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "guidance_compare")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="an override added to every run (after the preset)")
    parser.add_argument("--report-only", action="store_true", help="no runs: the report from the finished ones")
    args = parser.parse_args()

    labels = methods(args.filters)
    runs = args.runs.resolve()
    if not args.report_only:
        run_all(labels, args.seeds, runs, args.replies, args.extra)
    report = build_report(runs, list(labels), args.seeds, args.replies)
    report["extra_overrides"] = args.extra
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "compare.json", json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    write_text_atomic(args.out / "compare.md", text)
    plot(report, args.out / "compare.png")
    print(text)
    print(f"wrote {args.out / 'compare.json'}, compare.md, compare.png")


if __name__ == "__main__":
    main()
