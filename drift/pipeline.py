"""The run: warm start (DPO on seed pairs), then K iterations of
sample (a separate process) -> build pairs -> reference cache -> one DPO epoch -> checkpoint.

Every stage writes under ``<run_dir>/iter_<k>/<stage>/`` and then a ``done`` marker, so the same
command again continues at the first unfinished stage.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from drift.config import Config
from drift.data.files import write_jsonl_atomic
from drift.data.records import PreferencePair, Records
from drift.methods import build_pairs, sample_requests, uses_feedback_records
from drift.metrics import read_metrics
from drift.model import TINY_PREFIX, load_model, load_tokenizer, resolve_source, save_hf_checkpoint
from drift.parallel import Runtime, barrier, init_runtime
from drift.tokenize import tokenize_pairs
from drift.train import DONE, Stage, train_stage

SAMPLER_SCRIPT = Path(__file__).resolve().parent.parent / "launch" / "sample.py"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def hydra_override(key: str, value) -> str:
    """key=value for a Hydra command line; strings and paths are quoted (a sweep folder holds '=' and ',')."""
    if isinstance(value, (str, Path)):
        escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"{key}='{escaped}'"
    return f"{key}={value}"


def sampler_config_overrides(sampler) -> list[str]:
    """Every field of a SamplerConfig as sampler.<field>=... (the backend travels as sampler=<backend>)."""
    return [hydra_override(f"sampler.{f.name}", getattr(sampler, f.name)) for f in fields(sampler) if f.name != "backend"]


def run_sampler_process(
    checkpoint: str, prompts: Path, out_dir: Path, *, max_prompt_length: int, prompt_format: str,
    trust_remote_code: bool, device: str, backend: str, sampler_overrides: list[str],
) -> None:
    """launch/sample.py as its own OS process (it holds the accelerator alone); raises if it fails.

    ``sampler_overrides`` are ready Hydra words (``sampler.<key>=<value>``).
    """
    command = [
        sys.executable, str(SAMPLER_SCRIPT),
        hydra_override("checkpoint", checkpoint), hydra_override("prompts", prompts), hydra_override("out_dir", out_dir),
        hydra_override("max_prompt_length", max_prompt_length), hydra_override("prompt_format", prompt_format),
        hydra_override("trust_remote_code", trust_remote_code), hydra_override("device", device),
        f"sampler={backend}", *sampler_overrides,
    ]
    result = subprocess.run(command)
    if result.returncode != 0:
        raise RuntimeError(
            f"the sampler process failed on {checkpoint} (exit {result.returncode}); its message is above; "
            f"command: {' '.join(command)}"
        )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mark_done(folder: Path, summary: dict) -> None:
    (folder / DONE).write_text(json.dumps(summary) + "\n")


def initial_model_source(config: Config, run_dir: Path, runtime: Runtime) -> str:
    """A folder the trainer and the sampler process can both load: tiny models are saved once."""
    if not config.model.name_or_path.startswith(TINY_PREFIX):
        if runtime.is_main:
            resolve_source(config.model)  # the embedded model is dequantized once, by rank 0
        barrier(runtime)
        return resolve_source(config.model)
    folder = run_dir / "initial_model"
    if runtime.is_main and not (folder / "config.json").exists():
        tokenizer = load_tokenizer(config.model)
        model = load_model(config.model, dtype=torch.float32, seed=config.trainer.seed, vocab_size=len(tokenizer))
        save_hf_checkpoint(model, tokenizer, model.state_dict(), folder)
    barrier(runtime)
    return str(folder)


# ---- stages -------------------------------------------------------------------------------------


def _tokenize(config: Config, tokenizer, pairs: list[PreferencePair], folder: Path, runtime: Runtime):
    tokenized, rejects, truncated = tokenize_pairs(
        pairs,
        tokenizer,
        max_length=config.trainer.max_length,
        max_prompt_length=config.trainer.max_prompt_length,
        prompt_format=config.data.prompt_format,
    )
    if runtime.is_main:
        write_jsonl_atomic(folder / "tokenize_rejects.jsonl", [asdict(r) for r in rejects])
    if not tokenized:
        raise RuntimeError(f"every pair was rejected at tokenization; see {folder / 'tokenize_rejects.jsonl'}")
    return tokenized, {"pairs": len(tokenized), "rejected_at_tokenization": len(rejects), "truncated_prompts": truncated}


def sample_stage(config: Config, runtime: Runtime, folder: Path, checkpoint: str, records: Records) -> dict[str, list[str]]:
    """Rank 0 starts the sampler as its own OS process on the saved policy; the others wait."""
    requests = sample_requests(config.method.name, records)
    if runtime.is_main and not (folder / DONE).exists():
        write_jsonl_atomic(folder / "prompts.jsonl", [request.as_row() for request in requests])
        run_sampler_process(
            checkpoint, folder / "prompts.jsonl", folder, max_prompt_length=config.trainer.max_prompt_length,
            prompt_format=config.data.prompt_format, trust_remote_code=config.model.trust_remote_code,
            device=config.trainer.device, backend=config.sampler.backend,
            sampler_overrides=sampler_config_overrides(config.sampler),
        )
        report_path = folder / "sampling_report.json"
        mark_done(folder, json.loads(report_path.read_text()) if report_path.exists() else {})
    barrier(runtime)
    samples: dict[str, list[str]] = {}
    for row in sorted(read_jsonl(folder / "samples.jsonl"), key=lambda r: (r["prompt_id"], r["sample_index"])):
        texts = samples.setdefault(row["prompt_id"], [])
        texts.extend([""] * (row["sample_index"] + 1 - len(texts)))
        texts[row["sample_index"]] = row["text"]
    return samples


def pairs_stage(config: Config, runtime: Runtime, folder: Path, records: Records, samples: dict[str, list[str]]) -> list[PreferencePair]:
    if runtime.is_main and not (folder / DONE).exists():
        rewards = None
        if config.method.name == "iterdpo" and not uses_feedback_records(records):
            rewards = _score_samples(config, records, samples)
        pairs, rejects = build_pairs(config.method.name, records, samples, rewards)
        write_jsonl_atomic(folder / "pairs.jsonl", [asdict(pair) for pair in pairs])
        write_jsonl_atomic(folder / "rejects.jsonl", [asdict(reject) for reject in rejects])
        mark_done(folder, {"pairs": len(pairs), "rejected": len(rejects)})
    barrier(runtime)
    pairs = [PreferencePair(**{**row, "prompt": tuple(row["prompt"])}) for row in read_jsonl(folder / "pairs.jsonl")]
    if not pairs:
        raise RuntimeError(f"no pairs were built for {folder}; see {folder / 'rejects.jsonl'}")
    return pairs


def _score_samples(config: Config, records: Records, samples: dict[str, list[str]]) -> dict[str, list[float]]:
    from drift.methods import ORIGINAL, prompt_id
    from drift.reward import prompt_text, score_replies

    keys, items = [], []
    for pair in records.preference_pairs:
        key = prompt_id(pair.pair_id, ORIGINAL)
        for text in samples.get(key, []):
            keys.append(key)
            items.append((prompt_text(pair.prompt), text))
    scores = score_replies(config.reward, items, device="cuda" if torch.cuda.is_available() else "cpu")
    rewards: dict[str, list[float]] = {}
    for key, score in zip(keys, scores):
        rewards.setdefault(key, []).append(score)
    return rewards


# ---- the run ------------------------------------------------------------------------------------


def run(config: Config, run_dir: Path, run_config: dict | None = None) -> dict:
    from drift.data import load_records

    runtime = init_runtime(config.trainer.device, config.trainer.precision)
    seed_everything(config.trainer.seed)
    run_dir = Path(run_dir)
    initial = initial_model_source(config, run_dir, runtime)
    tokenizer = load_tokenizer(config.model, source=initial)
    records = load_records(config.data)
    cache_dir = run_dir / "reference_cache"
    summary: dict = {"run_dir": str(run_dir), "method": config.method.name, "stages": {}}

    policy = initial
    if config.method.warmstart_epochs > 0:
        if not records.seed_pairs:
            raise RuntimeError(
                f"data {config.data.name!r} yielded no DSAT->SAT seed pairs for the warm start "
                f"({len(records.rejects)} records rejected); set method.warmstart_epochs=0 to skip it"
            )
        folder = run_dir / "iter_0"
        if runtime.is_main:
            write_jsonl_atomic(folder / "data" / "rejects.jsonl", [asdict(r) for r in records.rejects])
            # the warm start's pairs as trained, like iter_k/pairs/pairs.jsonl (analyses read them)
            write_jsonl_atomic(folder / "data" / "pairs.jsonl", [asdict(pair) for pair in records.seed_pairs])
        pairs, data_stats = _tokenize(config, tokenizer, records.seed_pairs, folder / "data", runtime)
        stage = Stage("warmstart", folder / "train", pairs, initial, initial, config.method.warmstart_epochs, cache_dir)
        policy = str(train_stage(config, runtime, stage, tokenizer, run_config))
        summary["stages"]["warmstart"] = {**data_stats, **_stage_summary(read_metrics(stage.folder / "metrics.jsonl"), stage.folder / DONE)}

    for iteration in range(1, config.method.iterations + 1):
        folder = run_dir / f"iter_{iteration}"
        samples = sample_stage(config, runtime, folder / "sample", policy, records)
        pairs = pairs_stage(config, runtime, folder / "pairs", records, samples)
        tokenized, data_stats = _tokenize(config, tokenizer, pairs, folder / "pairs", runtime)
        reference = policy if config.method.reference == "iteration_start" else initial
        stage = Stage(f"iter_{iteration}", folder / "train", tokenized, policy, reference, config.method.iteration_epochs, cache_dir)
        policy = str(train_stage(config, runtime, stage, tokenizer, run_config))
        summary["stages"][f"iter_{iteration}"] = {**data_stats, **_stage_summary(read_metrics(stage.folder / "metrics.jsonl"), stage.folder / DONE)}

    summary["model"] = policy
    if runtime.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _stage_summary(history: list[dict], done_file: Path | None = None) -> dict:
    if not history:
        return {}
    done = json.loads(done_file.read_text()) if done_file is not None and done_file.exists() else {}
    last = history[-1]
    keys = ("loss", "margin", "accuracy", "gradient_weight", "chosen_reward", "rejected_reward", "grad_norm")
    epoch_means = {f"mean_{key}": sum(r[key] for r in history) / len(history) for key in ("loss", "margin", "accuracy", "gradient_weight")}
    reference = {key: done[key] for key in ("reference_sequences", "reference_seconds") if key in done}
    return {"steps": last["step"], **{key: last[key] for key in keys}, **epoch_means, **reference}


def format_summary(summary: dict) -> str:
    header = f"{'stage':<10} {'pairs':>5} {'steps':>5} {'loss':>8} {'margin':>8} {'acc':>5} {'σ(-s)':>7} {'ref fwd':>7}  (stage means)"
    lines = [header]
    for name, stats in summary["stages"].items():
        if "steps" in stats:
            lines.append(
                f"{name:<10} {stats['pairs']:>5} {stats['steps']:>5} {stats['mean_loss']:>8.4f} {stats['mean_margin']:>8.4f} "
                f"{stats['mean_accuracy']:>5.2f} {stats['mean_gradient_weight']:>7.4f} {stats.get('reference_sequences', 0):>7}"
            )
    lines.append(f"final model (HF folder): {summary['model']}")
    return "\n".join(lines)
