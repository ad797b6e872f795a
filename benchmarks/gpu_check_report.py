"""The GPU check's last part: its figures gathered into one folder, and a compact table printed last.

    python benchmarks/gpu_check_report.py --out OUT --work WORK --model SOURCE --part NAME|OUTCOME|SECONDS|TIMEOUT ...

Reads what the parts wrote (OUT/logprob_kernels.json, OUT/dpo_step.json, OUT/memory_plan.json and the
DRIFT run under WORK/runs/drift_iteration), writes OUT/drift_iteration.json, OUT/summary.json and
OUT/summary.txt (the table), packs WORK/logs and the run's small files (no weights, no reference
cache) into OUT/logs.tar.gz, and prints the table. Runs on any machine: a part that did not run is a
row saying so. Standard library only, so it reports even where torch cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tarfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# the versions a first contact needs to read first (printed by gpu_check.sh before anything runs), then the peers
VERSIONS_FIRST = ("torch", "triton", "transformers", "pyarrow", "fsspec")
VERSIONS_MORE = ("liger-kernel", "trl", "datasets", "vllm", "flash-attn", "hydra-core", "omegaconf", "accelerate")
RUN = "runs/drift_iteration"
# the run's files that say what happened; its models, checkpoints and reference cache stay out
RUN_FILES = ("*.log", "*.json", "*.jsonl", ".hydra/*.yaml")
RUN_FOLDERS_LEFT_OUT = ("model", "initial_model", "checkpoint", "reference_cache")
RANDOM_WEIGHTS = "random weights"


def versions(names) -> dict[str, str | None]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drift_iteration(run: Path, model: str) -> dict | None:
    """The DRIFT run's figures: per stage its steps, seconds and the CUDA allocator's peak, and the sampler's report."""
    if not run.exists():
        return None
    stages = {}
    for folder in sorted(run.glob("iter_*")):
        metrics = read_jsonl(folder / "train" / "metrics.jsonl")
        sampling = read_json(folder / "sample" / "sampling_report.json")
        stages[folder.name] = dict(
            train_steps=len(metrics),
            train_seconds=round(sum(m.get("seconds", 0) for m in metrics), 3),
            tokens_per_second_median=_median([m["tokens_per_second"] for m in metrics if "tokens_per_second" in m]),
            peak_memory_gb=max((m["peak_memory_gb"] for m in metrics if m.get("peak_memory_gb") is not None), default=None),
            mean_loss=_mean([m["loss"] for m in metrics if "loss" in m]),
            sampling_report=sampling,
        )
    backend = next((s["sampling_report"]["backend"] for s in stages.values() if s["sampling_report"]), None)
    return dict(run=str(run), model=model, weights=_weights(model), sampler_backend=backend, stages=stages,
                summary=read_json(run / "summary.json"))


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _weights(model: str) -> str:
    return RANDOM_WEIGHTS if model.startswith("random:") else "trained weights"


def _f(value, spec: str = ".1f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(parts: list[dict], kernels: dict | None, dpo: dict | None, drift: dict | None, plan: dict | None,
          environment: dict, model: str) -> str:
    lines = [f"{'part':<16} {'outcome':<30} {'seconds':>7} {'timeout':>7}"]
    lines += [f"{p['part']:<16} {p['outcome']:<30} {p['seconds']:>7} {p['timeout']:>7}" for p in parts]
    if kernels:
        first = kernels["results"][0] if kernels.get("results") else {}
        lines.append(f"\nlog-prob kernels, {kernels.get('dtype')}, N={first.get('n')} H={first.get('h')} V={first.get('v')} "
                     f"on {kernels.get('device')} (TFLOP/s of the FLOPs each executes)")
        lines.append(f"  {'variant':<11} {'ms':>8} {'TFLOP/s':>8} {'transient GB':>12} {'err logp':>9}")
        for row in kernels.get("results", []):
            if row.get("status") != "ok":
                lines.append(f"  {row['variant']:<11} {row.get('status')}: {str(row.get('reason', ''))[:70]}")
                continue
            transient = None if row.get("transient_bytes") is None else row["transient_bytes"] / 1e9
            lines.append(f"  {row['variant']:<11} {row['seconds_median'] * 1e3:>8.1f} {_f(row.get('tflops'), '.0f'):>8} "
                         f"{_f(transient, '.2f'):>12} {_f(row.get('max_abs_err_logps'), '.1e'):>9}")
    if dpo:
        settings = dpo.get("settings", {})
        lines.append(f"\nDPO step, {dpo.get('dtype')}, {settings.get('pairs')} pairs, batch {settings.get('batch')}, "
                     f"max length {settings.get('max_length')}, {dpo.get('weights', _weights(model))}")
        lines.append(f"  {'variant':<11} {'s/step':>8} {'pairs/s':>8} {'tokens/s':>9} {'peak RSS GB':>11}")
        for row in dpo.get("rows", []):
            if "error" in row:
                lines.append(f"  {row['variant']:<11} failed: {row['error'][-70:].strip()}")
                continue
            lines.append(f"  {row['variant']:<11} {row['median_step_seconds']:>8.3f} {row['pairs_per_second']:>8.2f} "
                         f"{row['tokens_per_second']:>9.0f} {row['peak_rss_gb']:>11.2f}")
    if drift:
        lines.append(f"\nDRIFT iteration, sampler {drift.get('sampler_backend') or '-'}, {drift['weights']} (losses meaningless)")
        lines.append(f"  {'stage':<11} {'steps':>6} {'train s':>8} {'tokens/s':>9} {'peak GB':>8} {'sampled tok/s':>13}")
        for name, stage in drift["stages"].items():
            sampling = stage["sampling_report"] or {}
            name = "warm start" if name == "iter_0" else name
            lines.append(f"  {name:<11} {stage['train_steps']:>6} {stage['train_seconds']:>8.1f} "
                         f"{_f(stage['tokens_per_second_median'], '.0f'):>9} {_f(stage['peak_memory_gb'], '.2f'):>8} "
                         f"{_f(sampling.get('tokens_per_second'), '.0f'):>13}")
    if plan:
        sampler_turn = plan.get("sampler_turn_gb") or {}
        lines.append(f"\nmemory plan: {plan.get('model')} on {plan.get('nproc')} GPUs, peak "
                     f"{_f(plan.get('peak_gb_checkpointing'))} GB per GPU with checkpointing "
                     f"({_f(plan.get('peak_gb_no_checkpointing'))} without); sampler turn {_f(sampler_turn.get('peak'))} GB")
    found = {**environment["versions"]}
    lines.append("\n" + ", ".join(f"{name} {found[name] or 'not installed'}" for name in (*VERSIONS_FIRST, *VERSIONS_MORE)))
    lines.append(f"python {environment['python']}; model {model} ({_weights(model)})")
    return "\n".join(lines)


def archive(out: Path, work: Path) -> Path:
    """WORK/logs and the DRIFT run's small files, in one tar.gz."""
    target = out / "logs.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        logs = work / "logs"
        for path in sorted(logs.glob("*")) if logs.exists() else []:
            tar.add(path, arcname=f"logs/{path.name}")
        run = work / RUN
        for pattern in RUN_FILES:
            for path in sorted(run.rglob(pattern)) if run.exists() else []:
                if not set(path.relative_to(run).parts) & set(RUN_FOLDERS_LEFT_OUT):
                    tar.add(path, arcname=f"drift_iteration/{path.relative_to(run)}")
    return target


def parse_part(text: str) -> dict:
    name, outcome, seconds, timeout = text.split("|")
    return dict(part=name, outcome=outcome, seconds=int(seconds), timeout=int(timeout))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the output folder (GPU_CHECK_OUT)")
    parser.add_argument("--work", type=Path, required=True, help="the scratch folder: logs/ and runs/")
    parser.add_argument("--model", required=True, help="the model source the parts ran")
    parser.add_argument("--part", type=parse_part, action="append", default=[], help="NAME|OUTCOME|SECONDS|TIMEOUT")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    drift = drift_iteration(args.work / RUN, args.model)
    if drift is not None:
        (out / "drift_iteration.json").write_text(json.dumps(drift, indent=2) + "\n")
    kernels, dpo, plan = (read_json(out / name) for name in ("logprob_kernels.json", "dpo_step.json", "memory_plan.json"))
    environment = dict(python=platform.python_version(), executable=sys.executable,
                       versions=versions((*VERSIONS_FIRST, *VERSIONS_MORE)),
                       gpu=kernels.get("device") if kernels else None)
    summary = dict(environment=environment, model=args.model, weights=_weights(args.model), parts=args.part,
                   figures=dict(logprob_kernels=kernels is not None, dpo_step=dpo is not None,
                                drift_iteration=drift is not None, memory_plan=plan is not None))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = table(args.part, kernels, dpo, drift, plan, environment, args.model)
    (out / "summary.txt").write_text(text + "\n")
    archived = archive(out, args.work)
    print(f"wrote {out}: {', '.join(sorted(path.name for path in out.iterdir()))} (logs in {archived.name})")
    print(text)


if __name__ == "__main__":
    main()
