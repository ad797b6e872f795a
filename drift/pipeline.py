"""The run: data -> tokenized pairs -> warm start (DPO on seed pairs) -> [iterations] -> summary.

Each stage writes under ``<run_dir>/iter_<k>/<stage>/`` and marks itself ``done``, so the same
command again continues at the first unfinished stage.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from drift.config import Config
from drift.data.records import Rejected
from drift.metrics import read_metrics
from drift.model import load_tokenizer, resolve_source
from drift.parallel import Runtime, barrier, init_runtime
from drift.tokenize import tokenize_pairs
from drift.train import Stage, train_stage


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(staging, path)


def _prepare_model_source(config: Config, runtime: Runtime) -> None:
    """Materialize the embedded model once (rank 0), so other ranks only read it."""
    if runtime.is_main:
        resolve_source(config.model)
    barrier(runtime)


def run(config: Config, run_dir: Path, run_config: dict | None = None) -> dict:
    from drift.data import load_records

    runtime = init_runtime(config.trainer.device, config.trainer.precision)
    seed_everything(config.trainer.seed)
    run_dir = Path(run_dir)
    _prepare_model_source(config, runtime)
    tokenizer = load_tokenizer(config.model)

    records = load_records(config.data)
    seed_pairs = records.seed_pairs
    if not seed_pairs:
        raise RuntimeError(
            f"data {config.data.name!r} yielded no DSAT->SAT seed pairs for the warm start "
            f"({len(records.rejects)} records rejected); check data.path or use data=fixture"
        )
    pairs, rejects, truncated = tokenize_pairs(
        seed_pairs,
        tokenizer,
        max_length=config.trainer.max_length,
        max_prompt_length=config.trainer.max_prompt_length,
        prompt_format=getattr(config.data, "prompt_format", "chat_template"),
    )
    warm_dir = run_dir / "iter_0"
    if runtime.is_main:
        write_jsonl_atomic(warm_dir / "data" / "rejects.jsonl", [asdict(r) for r in list(records.rejects) + rejects])
        report = {"seed_pairs": len(seed_pairs), "tokenized_pairs": len(pairs), "rejected_at_tokenization": len(rejects), "truncated_prompts": truncated}
        (warm_dir / "data" / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if not pairs:
        raise RuntimeError(f"every seed pair was rejected at tokenization; see {warm_dir / 'data' / 'rejects.jsonl'}")

    stage = Stage(
        name="warmstart",
        folder=warm_dir / "train",
        pairs=pairs,
        init_source=None,
        reference_source=None,
        epochs=config.method.warmstart_epochs,
        reference_cache_dir=run_dir / "reference_cache",
    )
    model_dir = train_stage(config, runtime, stage, tokenizer, run_config)
    history = read_metrics(stage.folder / "metrics.jsonl")
    summary = {"run_dir": str(run_dir), "model": str(model_dir), "stages": {"warmstart": _stage_summary(history)}}
    if runtime.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _stage_summary(history: list[dict]) -> dict:
    if not history:
        return {}
    last = history[-1]
    keys = ("loss", "margin", "accuracy", "gradient_weight", "chosen_reward", "rejected_reward", "grad_norm")
    return {"steps": last["step"], **{key: last[key] for key in keys}}


def format_summary(summary: dict) -> str:
    lines = [f"{'stage':<12} {'steps':>5} {'loss':>8} {'margin':>8} {'acc':>5} {'σ(-s)':>7}"]
    for name, stats in summary["stages"].items():
        if stats:
            lines.append(
                f"{name:<12} {stats['steps']:>5} {stats['loss']:>8.4f} {stats['margin']:>8.4f} "
                f"{stats['accuracy']:>5.2f} {stats['gradient_weight']:>7.4f}"
            )
    lines.append(f"final model (HF folder): {summary['model']}")
    return "\n".join(lines)
