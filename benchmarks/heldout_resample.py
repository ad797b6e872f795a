"""Score a finished run's models again on the held-out split, with more replies per prompt.

    python benchmarks/heldout_resample.py runs/testbed_drift --samples 4
    python benchmarks/heldout_resample.py runs/A runs/B --samples 4 --stages warmstart iter_1

A run's own evaluation samples one reply per held-out prompt, so a paired gain of +0.05 is about
1.5 standard errors, and part of that error is the sampling of the replies, not the model.
This re-scores the checkpoints the run evaluated (base, warm start, every iteration: those named in
its summary.json) with ``eval.samples_per_prompt=K``, the run's own sampler settings, seeds and
held-out file otherwise, through the same code (drift.eval.heldout), sharing the run's
``<output_dir>/eval_cache`` (so the base model is sampled once for all runs). Prints each run's
table with paired gains; writes the results, every prompt's mean gold included, to --out.
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


def run_config(run: Path, samples: int):
    """The run's composed config (what .hydra/config.yaml recorded when it started), K replies per prompt."""
    from omegaconf import OmegaConf

    from drift.compose import structured
    from drift.config import Config

    config_file = run / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise SystemExit(f"{run}: no .hydra/config.yaml; pass the folder of a run launch/train.py wrote")
    config = structured(OmegaConf.load(config_file), Config)
    return dataclasses.replace(config, eval=dataclasses.replace(config.eval, samples_per_prompt=samples))


def resample_run(run: Path, samples: int, stages: list[str] | None) -> dict:
    from drift.eval.heldout import read_heldout
    from drift.pipeline import evaluate_on_heldout

    summary_file = run / "summary.json"
    if not summary_file.is_file():
        raise SystemExit(f"{run}: no summary.json; the run has not finished (launch/train.py writes it last)")
    evaluated = json.loads(summary_file.read_text()).get("heldout")
    if not evaluated:
        raise SystemExit(f"{run}: its summary has no held-out evaluation (eval.heldout was off); nothing to re-score")
    config = run_config(run, samples)
    heldout = read_heldout(config.eval.heldout)
    results = {}
    for name in [name for name in evaluated if stages is None or name in stages]:
        started = time.perf_counter()
        results[name] = evaluate_on_heldout(config, evaluated[name]["checkpoint"], heldout)
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
    return results


def main() -> None:
    from drift.eval.heldout import format_eval
    from drift.io import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (each with summary.json and .hydra/config.yaml)")
    parser.add_argument("--samples", type=int, default=4, help="replies per held-out prompt (eval.samples_per_prompt)")
    parser.add_argument("--stages", nargs="+", default=None, help="only these of the run's evaluated models (base, warmstart, iter_k)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: <first run>/heldout_resample_k<K>.json)")
    args = parser.parse_args()
    if args.samples < 1:
        raise SystemExit(f"--samples must be >= 1, got {args.samples}")
    report = {"samples_per_prompt": args.samples, "runs": {}}
    for run in args.runs:
        results = resample_run(run.resolve(), args.samples, args.stages)
        report["runs"][str(run)] = results
        print(f"{run} ({args.samples} replies per prompt)\n{format_eval(results)}\n", flush=True)
    out = args.out or args.runs[0] / f"heldout_resample_k{args.samples}.json"
    write_json_atomic(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
