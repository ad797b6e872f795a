"""Training dynamics of one or more runs: per-step curves and the per-iteration distribution of σ(−s).

  python launch/analyze.py dynamics run=runs/A [tau=0.5] [bins=20] [out=DIR]
  python launch/analyze.py dynamics run=[runs/A,runs/B]        # overlaid

Reads every ``iter_*/train/metrics.jsonl`` (one row per optimizer step) and ``pair_metrics.jsonl``
(one row per pair per step: its DPO logit s) of each run. Writes to ``out`` (default
``<first run>/analysis/dynamics``): one PNG per quantity with the runs overlaid over the global step
(iteration boundaries marked), per-iteration PNGs of Var(s), of the share of pairs with σ(−s) ≥ τ and
of the σ(−s) histogram, ``report.md`` and ``dynamics.json`` (every number and every plotted point).

The paper's theory (§5, App. B) in measurable form: σ(−s) is each pair's gradient weight; Lemma 1
keeps the expected gradient away from zero while a share of pairs keeps σ(−s) ≥ τ, and
Proposition 1 bounds the signal by (β/4)·√Var(s)·√E‖d‖² when the two sides are exchangeable (a SPIN
fixed point), so a Var(s) shrinking towards 0 is the collapse to look for. The gradient side of that
bound needs per-pair gradients: ``python launch/analyze.py gradient_check`` (separate, off by default).

The numbers are pure functions of rows (``pair_statistics``, ``iteration_summary``, ``global_series``);
``run`` only reads files, calls them, plots and writes.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from drift.analysis._figures import pyplot, save_png
from drift.checks import check, string_list
from drift.io import JsonlError, is_done, read_jsonl, write_json_atomic, write_text_atomic

STEP_QUANTITIES = (
    "loss", "chosen_reward", "rejected_reward", "margin", "accuracy", "gradient_weight", "grad_norm", "nll", "lr",
)
TITLES = {
    "loss": "DPO loss (step mean)",
    "chosen_reward": "chosen reward β·(log π − log π_ref)(y⁺)",
    "rejected_reward": "rejected reward β·(log π − log π_ref)(y⁻)",
    "margin": "reward margin s (step mean)",
    "accuracy": "accuracy (share of pairs with s > 0)",
    "gradient_weight": "mean gradient weight σ(−s)",
    "grad_norm": "gradient norm before clipping (DPO + NLL)",
    "nll": "NLL per chosen token",
    "lr": "learning rate",
    "var_s": "Var(s) per iteration",
    "share_at_least_tau": "share of pairs with σ(−s) ≥ τ per iteration",
    "mean_gradient_weight": "mean σ(−s) per iteration (over pairs)",
}
ITERATION_QUANTITIES = ("var_s", "share_at_least_tau", "mean_gradient_weight")
STAGE_FOLDER = re.compile(r"^iter_(\d+)$")


class AnalysisInputError(ValueError):
    """An input folder is wrong; the message says which and what to do."""


@dataclass
class DynamicsConfig:
    # one run folder (run=runs/A) or several, overlaid (run=[runs/A,runs/B]); see string_list
    run: Any = None
    # Lemma 1's threshold on the gradient weight σ(−s)
    tau: float = 0.5
    # of the σ(−s) histograms over [0, 1]
    bins: int = 20
    # default: <first run>/analysis/dynamics
    out: Optional[str] = None

    def validate(self) -> None:
        check(bool(self.runs), "give at least one run=runs/<run_name> (run=[runs/A,runs/B] overlays several)")
        check(0 < self.tau <= 1 and math.isfinite(self.tau),
              f"tau must be in (0, 1] (the paper takes τ in (0, 1/2]), got {self.tau}")
        check(self.bins >= 1, f"bins must be >= 1, got {self.bins}")

    @property
    def runs(self) -> list[Path]:
        return [Path(run) for run in string_list("run", self.run)]

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else self.runs[0] / "analysis" / "dynamics"


CONFIG = DynamicsConfig


# ---- pure numbers -------------------------------------------------------------------------------


def gradient_weights(logits) -> np.ndarray:
    """σ(−s), written with tanh so that a large |s| neither overflows nor loses the small side."""
    s = np.asarray(logits, dtype=np.float64)
    return 0.5 * (1.0 - np.tanh(0.5 * s))


def pair_statistics(logits, tau: float, bins: int = 20) -> dict:
    """The distribution of one iteration's DPO logits s (one value per pair per time it was trained).

    Var(s) is the population variance (divide by n): Proposition 1's bound is a statement about
    the distribution itself, and on the empirical distribution it holds exactly with that variance.
    """
    s = np.asarray(logits, dtype=np.float64)
    if s.size == 0:
        return {"pairs": 0}
    weights = gradient_weights(s)
    counts, edges = np.histogram(weights, bins=bins, range=(0.0, 1.0))
    return {
        "pairs": int(s.size),
        "mean_s": float(s.mean()),
        "var_s": float(s.var()),
        "mean_gradient_weight": float(weights.mean()),
        "var_gradient_weight": float(weights.var()),
        "share_at_least_tau": float((weights >= tau).mean()),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def step_means(step_rows: list[dict]) -> dict:
    """Means over a stage's optimizer steps of the per-step metrics."""
    means = {}
    for key in ("loss", "margin", "accuracy", "gradient_weight", "chosen_reward", "rejected_reward", "grad_norm"):
        values = [row[key] for row in step_rows if isinstance(row.get(key), (int, float))]
        # "_steps": the mean of step means, beside the pair-level mean σ(−s) of pair_statistics
        name = "mean_gradient_weight_steps" if key == "gradient_weight" else f"mean_{key}"
        means[name] = sum(values) / len(values) if values else None
    return means


def iteration_summary(iteration: int, step_rows: list[dict], pair_rows: list[dict], tau: float, bins: int = 20) -> dict:
    """One stage's numbers: step means, the σ(−s) distribution over all its pairs and per epoch."""
    epochs = sorted({row["epoch"] for row in pair_rows})
    distribution = pair_statistics([r["logit"] for r in pair_rows], tau, bins)
    return {
        "iteration": iteration,
        "steps": max((row["step"] for row in step_rows), default=0),
        **step_means(step_rows),
        "pairs_logged": distribution.pop("pairs"),
        **distribution,
        "epochs": [
            {"epoch": epoch, **pair_statistics([r["logit"] for r in pair_rows if r["epoch"] == epoch], tau, bins)}
            for epoch in epochs
        ] if len(epochs) > 1 else [],
    }


def global_series(stages: list[tuple[int, list[dict]]], quantities=STEP_QUANTITIES) -> dict:
    """Per-step values over the whole run: global step = the stage's step + all earlier stages' steps.

    ``stages`` is [(iteration, step rows)] in iteration order. ``boundaries`` holds the global step
    at which each stage starts (0 for the first), so a plot can mark where iterations change.
    """
    series: dict = {"global_step": [], "iteration": [], "step": [], **{key: [] for key in quantities}}
    boundaries = []
    offset = 0
    for iteration, rows in stages:
        boundaries.append({"iteration": iteration, "global_step": offset})
        for row in sorted(rows, key=lambda r: r["step"]):
            series["global_step"].append(offset + row["step"])
            series["iteration"].append(iteration)
            series["step"].append(row["step"])
            for key in quantities:
                value = row.get(key)
                series[key].append(float(value) if isinstance(value, (int, float)) else None)
        offset += max((row["step"] for row in rows), default=0)
    return {"series": series, "boundaries": boundaries}


# ---- reading runs -------------------------------------------------------------------------------


@dataclass
class StageRows:
    iteration: int
    folder: Path
    steps: list[dict]
    pairs: list[dict]
    done: bool


def read_run(run_dir: Path) -> list[StageRows]:
    """Every training stage of a run that has logged at least one step, in iteration order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AnalysisInputError(f"run={run_dir}: no such folder; give a run folder (runs/<run_name>)")
    stages = []
    for folder in run_dir.iterdir():
        match = STAGE_FOLDER.match(folder.name)
        metrics = folder / "train" / "metrics.jsonl"
        if not match or not metrics.exists():
            continue
        pairs_path = folder / "train" / "pair_metrics.jsonl"
        # a run being written (or killed) can end in a torn last line; any other bad line is damage
        steps = read_jsonl(metrics, torn_tail_ok=True)
        if not steps:
            continue
        pairs = read_jsonl(pairs_path, torn_tail_ok=True) if pairs_path.exists() else []
        stages.append(StageRows(int(match.group(1)), folder / "train", steps, pairs, is_done(folder / "train")))
    if not stages:
        raise AnalysisInputError(
            f"run={run_dir}: no iter_*/train/metrics.jsonl with a logged step; is this a run folder "
            f"(runs/<run_name>, or a sweep's job folder) whose training has started?"
        )
    return sorted(stages, key=lambda stage: stage.iteration)


def run_labels(run_dirs: list[Path]) -> list[str]:
    """The folder names, or enough of the path to tell runs with the same folder name apart."""
    parts = [Path(os.path.abspath(run)).parts for run in run_dirs]
    depth = 1
    while depth < max(len(p) for p in parts):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    return ["/".join(p) for p in parts]


def analyze_run(run_dir: Path, label: str, tau: float, bins: int) -> dict:
    stages = read_run(run_dir)
    curves = global_series([(stage.iteration, stage.steps) for stage in stages])
    iterations = []
    for stage, boundary in zip(stages, curves["boundaries"]):
        summary = iteration_summary(stage.iteration, stage.steps, stage.pairs, tau, bins)
        iterations.append({**summary, "stage": stage.steps[0].get("stage", ""), "done": stage.done, "global_step_offset": boundary["global_step"]})
    return {"label": label, "path": str(run_dir), "iterations": iterations, **curves, "gradient_checks": read_gradient_checks(Path(run_dir))}


def read_gradient_checks(run_dir: Path) -> list[dict]:
    """Results of ``analyze.py gradient_check`` already written under the run (default folders)."""
    checks = []
    for path in sorted((run_dir / "analysis" / "gradient_check").glob("iter_*/gradient_check.json")):
        result = json.loads(path.read_text())
        result.pop("pairs", None)  # the per-pair rows stay in the check's own file
        checks.append({**result, "file": str(path)})
    return sorted(checks, key=lambda check: check["iteration"])


# ---- plots and report ---------------------------------------------------------------------------


def _pyplot():
    plt = pyplot()
    if plt is None:
        raise RuntimeError("the dynamics plots need matplotlib: pip install -e '.[analysis]' (or pip install matplotlib)")
    return plt


def _figure(plt, path: Path, size: tuple[float, float], runs: list[dict], points_of, plot_run, decorate) -> bool:
    """One figure over the runs: ``points_of(run)`` is what to draw of a run (empty: nothing),
    ``plot_run(axis, color, run, points)`` draws it, ``decorate(axis)`` titles the figure. Saved with
    a legend when any run had points; False (no file) when none had."""
    drawn = [(f"C{index % 10}", run, points_of(run)) for index, run in enumerate(runs)]
    drawn = [(color, run, points) for color, run, points in drawn if points]
    if not drawn:
        return False
    figure, axis = plt.subplots(figsize=size)
    try:
        for color, run, points in drawn:
            plot_run(axis, color, run, points)
        decorate(axis)
        axis.legend(fontsize=8)
        save_png(figure, path)
    finally:
        plt.close(figure)
    return True


def plot_step_quantity(plt, runs: list[dict], key: str, path: Path) -> bool:
    def points_of(run: dict) -> list:
        return [(x, y) for x, y in zip(run["series"]["global_step"], run["series"][key]) if y is not None]

    def plot_run(axis, color: str, run: dict, points: list) -> None:
        xs, ys = zip(*points)
        axis.plot(xs, ys, color=color, marker="." if len(xs) < 60 else None, label=run["label"])
        for boundary in run["boundaries"][1:]:
            axis.axvline(boundary["global_step"] + 0.5, color=color, linestyle=":", alpha=0.6)

    def decorate(axis) -> None:
        # iteration names once, at the first run's boundaries
        for boundary in runs[0]["boundaries"]:
            axis.annotate(f"iter {boundary['iteration']}", (boundary["global_step"] + 0.5, 1.0),
                          xycoords=("data", "axes fraction"), fontsize=7, va="top", ha="left", color="0.35")
        axis.set_title(TITLES.get(key, key))
        axis.set_xlabel("global step (all stages, dotted lines: iteration boundaries)")
        axis.grid(alpha=0.3)

    return _figure(plt, path, (8, 4), runs, points_of, plot_run, decorate)


def plot_iteration_quantity(plt, runs: list[dict], key: str, tau: float, path: Path) -> bool:
    def points_of(run: dict) -> list:
        return [(it["iteration"], it[key]) for it in run["iterations"] if it.get(key) is not None]

    def plot_run(axis, color: str, run: dict, points: list) -> None:
        xs, ys = zip(*points)
        axis.plot(xs, ys, color=color, marker="o", label=run["label"])

    def decorate(axis) -> None:
        axis.set_title(TITLES[key].replace("τ", f"τ={tau:g}"))
        axis.set_xlabel("iteration (0 = warm start)")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)

    return _figure(plt, path, (6, 4), runs, points_of, plot_run, decorate)


def plot_histogram(plt, runs: list[dict], iteration: int, tau: float, path: Path) -> bool:
    """Share of the iteration's pairs per σ(−s) bin, one outline per run; τ marked."""

    def found_in(run: dict) -> list:
        return [it for it in run["iterations"] if it["iteration"] == iteration and it.get("histogram")]

    def plot_run(axis, color: str, run: dict, found: list) -> None:
        counts = np.asarray(found[0]["histogram"]["counts"], dtype=float)
        axis.stairs(counts / counts.sum(), found[0]["histogram"]["edges"], color=color, linewidth=1.5,
                    label=f"{run['label']} ({int(counts.sum())} pairs)")

    def decorate(axis) -> None:
        axis.axvline(tau, color="0.3", linestyle="--", label=f"τ = {tau:g}")
        axis.set_xlim(0, 1)
        axis.set_title(f"σ(−s) distribution, iteration {iteration}" + (" (warm start)" if iteration == 0 else ""))
        axis.set_xlabel("gradient weight σ(−s)")
        axis.set_ylabel("share of pairs")

    return _figure(plt, path, (6, 4), runs, found_in, plot_run, decorate)


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def render_report(result: dict) -> str:
    tau = result["tau"]
    lines = [
        "# Training dynamics",
        "",
        "Runs: " + ", ".join(f"`{run['label']}` ({run['path']})" for run in result["runs"]),
        "",
        f"σ(−s) is a pair's gradient weight (s = β·[(log π − log π_ref)(y⁺) − (log π − log π_ref)(y⁻)]). "
        f"Per iteration, over every pair each time it was trained (s as logged at its step, before that "
        f"step's update): mean σ(−s), the share of pairs with σ(−s) ≥ τ = {tau:g} (Lemma 1's event E), and "
        f"Var(s) (population variance; Proposition 1 bounds the expected signal by (β/4)·√Var(s)·√E‖d‖² "
        f"when the two sides are exchangeable, so Var(s) → 0 is the collapse to look for).",
        "",
    ]
    for run in result["runs"]:
        lines += [
            f"## {run['label']}",
            "",
            "| iteration | stage | steps | pairs logged | mean loss | mean margin | mean accuracy | mean σ(−s) (steps) "
            f"| mean σ(−s) (pairs) | share σ(−s) ≥ {tau:g} | Var(s) | done |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for it in run["iterations"]:
            lines.append(
                f"| {it['iteration']} | {it['stage']} | {it['steps']} | {it['pairs_logged']} | {_cell(it['mean_loss'])} "
                f"| {_cell(it['mean_margin'])} | {_cell(it['mean_accuracy'])} | {_cell(it['mean_gradient_weight_steps'])} "
                f"| {_cell(it.get('mean_gradient_weight'))} | {_cell(it.get('share_at_least_tau'))} | {_cell(it.get('var_s'))} "
                f"| {_cell(it['done'])} |"
            )
        epochs = [(it["iteration"], epoch) for it in run["iterations"] for epoch in it["epochs"]]
        if epochs:
            lines += ["", "Per epoch (stages trained for more than one epoch):", "",
                      f"| iteration | epoch | pairs | mean σ(−s) | share σ(−s) ≥ {tau:g} | Var(s) |", "|---|---|---|---|---|---|"]
            for iteration, epoch in epochs:
                lines.append(
                    f"| {iteration} | {epoch['epoch']} | {epoch['pairs']} | {_cell(epoch.get('mean_gradient_weight'))} "
                    f"| {_cell(epoch.get('share_at_least_tau'))} | {_cell(epoch.get('var_s'))} |"
                )
        if run["gradient_checks"]:
            lines += ["", "Gradient checks (`analyze.py gradient_check`, pure DPO loss on a sample of pairs):", "",
                      GRADIENT_CHECK_HEADER, GRADIENT_CHECK_RULE]
            lines += [gradient_check_row(check) for check in run["gradient_checks"]]
        if not any(it.get("var_s") is not None for it in run["iterations"]):
            lines += ["", "No pair_metrics.jsonl in this run (written by newer trainers): the σ(−s) distribution is unavailable."]
        lines.append("")
    figures = result["figures"]
    lines += ["## Per step", ""]
    lines += [f"![{key}]({figures['steps'][key]})" for key in STEP_QUANTITIES if key in figures["steps"]]
    lines += ["", "## Per iteration", ""]
    lines += [f"![{key}]({figures['iterations'][key]})" for key in ITERATION_QUANTITIES if key in figures["iterations"]]
    lines += [""]
    lines += [f"![σ(−s) histogram, iteration {k}]({name})" for k, name in sorted(figures["histograms"].items(), key=lambda kv: int(kv[0]))]
    return "\n".join(lines) + "\n"


GRADIENT_CHECK_HEADER = (
    "| iteration | pairs | β | Var(s) | share σ(−s) ≥ τ | measured ‖∇L‖ | (β/4)·√Var(s)·√E‖d‖² | β·E[σ(−s)]·‖E d‖ "
    "| measured ≤ paper bound | E‖∇ℓ‖ | Lemma 1 lower bound |"
)
GRADIENT_CHECK_RULE = "|---|---|---|---|---|---|---|---|---|---|---|"


def gradient_check_row(check: dict) -> str:
    return (
        f"| {check['iteration']} | {check['sample_size']} | {check['beta']:g} | {_cell(check['var_s'])} "
        f"| {_cell(check['share_at_least_tau'])} (τ={check['tau']:g}) | {_cell(check['measured_grad_norm'])} "
        f"| {_cell(check['paper_bound'])} | {_cell(check['mean_direction_term'])} | {_cell(check['paper_bound_holds'])} "
        f"| {_cell(check['mean_pair_grad_norm'])} | {_cell(check['lemma1_lower_bound'])} |"
    )


def write_outputs(runs: list[dict], tau: float, out: Path) -> dict:
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"steps": {}, "iterations": {}, "histograms": {}}
    for key in STEP_QUANTITIES:
        if plot_step_quantity(plt, runs, key, out / f"{key}.png"):
            figures["steps"][key] = f"{key}.png"
    for key in ITERATION_QUANTITIES:
        if plot_iteration_quantity(plt, runs, key, tau, out / f"iteration_{key}.png"):
            figures["iterations"][key] = f"iteration_{key}.png"
    for iteration in sorted({it["iteration"] for run in runs for it in run["iterations"]}):
        name = f"gradient_weight_hist_iter_{iteration}.png"
        if plot_histogram(plt, runs, iteration, tau, out / name):
            figures["histograms"][str(iteration)] = name
    result = {"tau": tau, "runs": runs, "figures": figures}
    write_json_atomic(out / "dynamics.json", result, indent=1)
    write_text_atomic(out / "report.md", render_report(result))
    return result


def run(cfg: DynamicsConfig) -> int:
    try:
        runs = [analyze_run(run_dir, label, cfg.tau, cfg.bins) for run_dir, label in zip(cfg.runs, run_labels(cfg.runs))]
    except (AnalysisInputError, JsonlError) as error:
        print(f"dynamics: {error}", file=sys.stderr)
        return 2
    write_outputs(runs, cfg.tau, cfg.out_dir)
    for run_result in runs:
        for it in run_result["iterations"]:
            print(
                f"{run_result['label']} iter {it['iteration']}: steps {it['steps']}, mean loss {_cell(it['mean_loss'])}, "
                f"mean σ(−s) {_cell(it.get('mean_gradient_weight'))}, share ≥ {cfg.tau:g} "
                f"{_cell(it.get('share_at_least_tau'))}, Var(s) {_cell(it.get('var_s'))}"
            )
    print(f"wrote {cfg.out_dir / 'report.md'}, {cfg.out_dir / 'dynamics.json'} and the figures beside them")
    return 0
