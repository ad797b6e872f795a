"""The run: warm start (DPO on seed pairs), then K iterations of
sample (a separate process) -> build pairs -> reference cache -> one DPO epoch -> checkpoint.

Every stage writes under ``<run_dir>/iter_<k>/<stage>/`` and then a ``done`` marker, so the same
command again continues at the first unfinished stage.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from drift.config import Config
from drift.data.records import PreferencePair, Records, pair_from_row
from drift.io import DONE, mark_done, read_done, read_jsonl, write_json_atomic, write_jsonl_atomic
from drift.methods import build_pairs, sample_requests, uses_feedback_records
from drift.metrics import read_metrics
from drift.model import TINY_PREFIX, load_model, load_tokenizer, resolve_source, save_hf_checkpoint
from drift.parallel import Runtime, barrier, init_runtime, run_on_main
from drift.tokenize import tokenize_pairs
from drift.train import Stage, train_stage
from drift.warmstart import SETTINGS_FILE, record_settings, reuse_warmstart, warmstart_settings

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def guidance_scorer(config: Config):
    """The guidance check's scorer for this run, or None (with why) when it is off."""
    from drift.guidance import gold_scorer, reward_model_scorer

    mode = config.method.guidance_check
    if config.method.name != "drift" or mode == "off":
        return None, "off"
    if mode == "gold" or (mode == "auto" and config.data.name == "testbed"):
        return gold_scorer(config.data.path), "gold reward"
    if mode == "reward":
        return reward_model_scorer(config.reward, "cuda" if torch.cuda.is_available() else "cpu"), f"reward model {config.reward.model}"
    return None, "no scorer on this data: method.guidance_check=reward with reward.model=<folder> runs it with a reward model"


def sample_stage(config: Config, runtime: Runtime, folder: Path, checkpoint: str,
                 records: Records) -> tuple[dict[str, list[str]], frozenset[tuple[str, int]], dict | None]:
    """Rank 0 starts the sampler as its own OS process on the saved policy; the others wait on a file
    marker (no collective: nothing runs on their GPUs, the sampler may use every one of them).
    Returns the texts by prompt id and sample index, which samples were cut but kept, and the
    guidance check (DRIFT with a scorer: the original prompts are sampled too)."""
    from drift.guidance import format_check, guidance_check
    from drift.methods import GUIDED, ORIGINAL, prompt_id
    from drift.sampler.client import SamplingJob, read_samples, sample

    scorer, scorer_name = guidance_scorer(config)
    check = None

    def run_sampler() -> None:
        requests = sample_requests(config.method.name, records, config.data.guidance,
                                   original_too=config.method.guidance_check_cases if scorer is not None else None)
        sample(SamplingJob(
            checkpoint, tuple(request.as_row() for request in requests), folder, config.sampler,
            max_prompt_length=config.trainer.max_prompt_length, prompt_format=config.data.prompt_format,
            device=config.trainer.device, trust_remote_code=config.model.trust_remote_code,
        ))

    run_on_main(runtime, folder, run_sampler, what=f"sampling into {folder}")
    samples: dict[str, list[str]] = {}
    rows = sorted(read_samples(folder), key=lambda r: (r["prompt_id"], r["sample_index"]))
    for row in rows:
        texts = samples.setdefault(row["prompt_id"], [])
        texts.extend([""] * (row["sample_index"] + 1 - len(texts)))
        texts[row["sample_index"]] = row["text"]
    unfinished = frozenset((row["prompt_id"], row["sample_index"]) for row in rows if row["finish_reason"] != "eos")
    if scorer is not None and runtime.is_main:
        first = lambda kind: {c.case_id: samples[prompt_id(c.case_id, kind)][0] for c in records.dsat_cases  # noqa: E731
                              if samples.get(prompt_id(c.case_id, kind), [""])[0]}
        from drift.eval.gold import preference_kind

        kind_of = (lambda case: preference_kind(case.case_id)) if config.data.name == "testbed" else None
        check = guidance_check(records.dsat_cases, first(GUIDED), first(ORIGINAL), scorer, kind_of)
        write_json_atomic(folder / "guidance_check.json", {"scorer": scorer_name, "guidance": config.data.guidance, **check})
        print(format_check(check, f"{folder.parent.name}, data.guidance={config.data.guidance}, {scorer_name}"), flush=True)
    return samples, unfinished, check


def pairs_stage(config: Config, runtime: Runtime, folder: Path, records: Records, samples: dict[str, list[str]],
                unfinished: frozenset[tuple[str, int]] = frozenset()) -> list[PreferencePair]:
    if runtime.is_main and not (folder / DONE).exists():
        rewards = None
        if config.method.name == "iterdpo" and not uses_feedback_records(records):
            rewards = _score_samples(config, records, samples)
        pairs, rejects = build_pairs(config.method.name, records, samples, rewards, unfinished)
        write_jsonl_atomic(folder / "pairs.jsonl", [asdict(pair) for pair in pairs])
        write_jsonl_atomic(folder / "rejects.jsonl", [asdict(reject) for reject in rejects])
        mark_done(folder, {"pairs": len(pairs), "rejected": len(rejects)})
    barrier(runtime)
    pairs = [pair_from_row(row) for row in read_jsonl(folder / "pairs.jsonl")]
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
        settings = warmstart_settings(config)
        if config.method.warmstart_from:
            run_on_main(runtime, folder, lambda: reuse_warmstart(config.method.warmstart_from, run_dir, settings),
                        what=f"linking the warm start of {config.method.warmstart_from}")
        if runtime.is_main:
            if not (folder / SETTINGS_FILE).exists():
                record_settings(folder, settings)
            write_jsonl_atomic(folder / "data" / "rejects.jsonl", [asdict(r) for r in records.rejects])
            # the warm start's pairs as trained, like iter_k/pairs/pairs.jsonl (analyses read them)
            write_jsonl_atomic(folder / "data" / "pairs.jsonl", [asdict(pair) for pair in records.seed_pairs])
        pairs, data_stats = _tokenize(config, tokenizer, records.seed_pairs, folder / "data", runtime)
        stage = Stage("warmstart", folder / "train", pairs, initial, initial, config.method.warmstart_epochs, cache_dir)
        policy = str(train_stage(config, runtime, stage, tokenizer, run_config))
        summary["stages"]["warmstart"] = {**data_stats, **_stage_summary(read_metrics(stage.folder / "metrics.jsonl"), stage.folder)}
        if config.method.warmstart_from:
            summary["stages"]["warmstart"]["from"] = str(Path(config.method.warmstart_from).resolve())

    for iteration in range(1, config.method.iterations + 1):
        folder = run_dir / f"iter_{iteration}"
        samples, unfinished, check = sample_stage(config, runtime, folder / "sample", policy, records)
        pairs = pairs_stage(config, runtime, folder / "pairs", records, samples, unfinished)
        tokenized, data_stats = _tokenize(config, tokenizer, pairs, folder / "pairs", runtime)
        reference = policy if config.method.reference == "iteration_start" else initial
        stage = Stage(f"iter_{iteration}", folder / "train", tokenized, policy, reference, config.method.iteration_epochs, cache_dir)
        policy = str(train_stage(config, runtime, stage, tokenizer, run_config))
        summary["stages"][f"iter_{iteration}"] = {**data_stats, **sampling_counts(folder / "sample"),
                                                  **_stage_summary(read_metrics(stage.folder / "metrics.jsonl"), stage.folder)}
        if check is not None:
            summary["stages"][f"iter_{iteration}"]["guidance_check"] = check["overall"]

    summary["model"] = policy
    if config.eval.heldout and config.eval.stages != "none" and runtime.is_main:
        checkpoints = [("base", initial)] + [(name, str(run_dir / folder / "train" / "model"))
                                             for name, folder in trained_stages(config)]
        summary["heldout"] = heldout_stage(config, checkpoints if config.eval.stages == "all" else checkpoints[-1:])
    if runtime.is_main:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def trained_stages(config: Config) -> list[tuple[str, str]]:
    """(name, folder) of the stages that end with a model, in training order."""
    stages = [("warmstart", "iter_0")] if config.method.warmstart_epochs > 0 else []
    return stages + [(f"iter_{k}", f"iter_{k}") for k in range(1, config.method.iterations + 1)]


def heldout_stage(config: Config, checkpoints: list[tuple[str, str]]) -> dict:
    """Every named checkpoint on the held-out split, scored by gold; printed as a table."""
    from drift.eval.heldout import format_eval, read_heldout

    heldout = read_heldout(config.eval.heldout)
    results = {name: evaluate_on_heldout(config, checkpoint, heldout) for name, checkpoint in checkpoints}
    print(format_eval(results), flush=True)
    return results


def evaluate_on_heldout(config: Config, checkpoint: str, heldout: list[dict]) -> dict:
    """One checkpoint on the held-out rows with the run's evaluation settings and its eval cache."""
    from drift.eval.heldout import eval_sampler, evaluate_checkpoint

    return evaluate_checkpoint(
        checkpoint, heldout, cache_root=Path(config.output_dir) / "eval_cache",
        sampler=eval_sampler(config.sampler, config.eval.max_new_tokens, config.eval.samples_per_prompt),
        max_prompt_length=config.trainer.max_prompt_length, prompt_format=config.data.prompt_format,
        device=config.trainer.device, trust_remote_code=config.model.trust_remote_code,
    )


def sampling_counts(folder: Path) -> dict:
    """Samples kept and quarantined (by reason: truncated, empty_output, prompt_too_long) this iteration."""
    report = json.loads((folder / "sampling_report.json").read_text())
    return {"samples": report["samples"], "samples_rejected_by_reason": report["rejects_by_reason"]}


def _stage_summary(history: list[dict], stage_folder: Path | None = None) -> dict:
    if not history:
        return {}
    done = (read_done(stage_folder) if stage_folder is not None else None) or {}
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
    if "heldout" in summary:
        from drift.eval.heldout import format_eval

        lines.append(format_eval(summary["heldout"]))
    lines.append(f"final model (HF folder): {summary['model']}")
    return "\n".join(lines)
