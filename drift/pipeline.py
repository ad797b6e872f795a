"""The run, as its list of stages: the initial model, the warm start (DPO on the seed pairs), then K
iterations of sample (a separate process) -> pairs -> tokenize -> train (reference log-probs, one
DPO epoch, checkpoint), then the held-out evaluation.

Every stage follows one contract (drift.stages, declared in drift.plan): its key -- its inputs by
their fingerprints and the settings that shape its output -- is recorded in its folder, and a
finished stage is reused only under the same key. drift.preflight checks the whole folder against
the plan before any stage starts; a stage made with other settings stops the run there, or, with
``resume=retrain``, is trained again with every stage after it.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from drift.config import Config
from drift.console import LOG_NAME, Clock, seconds_text
from drift.data.records import PreferencePair, pair_from_row
from drift.fingerprint import fingerprint
from drift.io import read_done, read_jsonl, write_json_atomic, write_jsonl_atomic
from drift.methods import GUIDED, ORIGINAL, method_named, prompt_id
from drift.metrics import read_metrics
from drift.model import load_model, load_tokenizer, resolve_source, save_hf_checkpoint
from drift.parallel import Runtime, init_runtime, on_main_then_wait, run_on_main
from drift.plan import EVALUATE, INITIAL, evaluated_stages, initial_output, is_tiny, sample_job, seed_pair_rows
from drift.preflight import Checked, check_run
from drift.stages import (
    RETRAIN,
    StageKey,
    StageMismatch,
    differences,
    finish,
    is_finished,
    mismatch_sentence,
    output_of,
    recorded_key,
    remove_stages,
    start,
)
from drift.tokenize import tokenize_pairs
from drift.train import Stage, train_stage


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """What the stages of one run share."""

    config: Config
    run_dir: Path
    runtime: Runtime
    checked: Checked
    run_config: dict | None
    outputs: dict[str, str] = field(default_factory=dict)  # finished stage -> its output's fingerprint
    summary: dict = field(default_factory=dict)
    tokenizer: object = None
    clock: Clock = field(default_factory=Clock)

    def say(self, text: str) -> None:
        """A stage line on the console (rank 0): the run's elapsed time, then what happened."""
        if self.runtime.is_main:
            print(f"{self.clock.stamp()} {text}", flush=True)


def run(config: Config, run_dir: Path, run_config: dict | None = None) -> dict:
    checked = check_run(config, run_dir, consume=True)  # every check, before any work
    run = start_run(config, Path(run_dir), checked, run_config)
    policy = initial_model_stage(run)
    if config.method.warmstart_epochs > 0:
        policy = warm_start(run, policy)
    for iteration in range(1, config.method.iterations + 1):
        samples, unfinished = sample_stage(run, iteration, policy)
        pairs = pairs_stage(run, iteration, samples, unfinished)
        tokenized = tokenize_stage(run, f"iter_{iteration}", pairs)
        policy = iteration_train_stage(run, iteration, tokenized, policy)
    if any(stage.name == EVALUATE for stage in checked.plan):
        evaluate_stage(run)
    run.summary["model"] = policy
    if run.runtime.is_main:
        run.summary["figures"] = write_figures(run.run_dir, run.summary.get("heldout"))
        write_json_atomic(run.run_dir / "summary.json", run.summary)
    return run.summary


def start_run(config: Config, run_dir: Path, checked: Checked, run_config: dict | None) -> Run:
    """The process group, the seeds, and under resume=retrain the stale stages removed (rank 0, last first)."""
    runtime = init_runtime(config.trainer.device, config.trainer.precision)
    seed_everything(config.trainer.seed)
    run = Run(config, run_dir, runtime, checked, run_config, outputs={},
              summary={"run_dir": str(run_dir), "method": config.method.name, "stages": {}})
    if runtime.is_main:
        print(run_header(config, run_dir, checked, runtime), flush=True)
        if checked.retrain_from:
            print(f"resume={RETRAIN}: training again from {checked.retrain_from} on "
                  f"({len(checked.stale)} stages: {', '.join(checked.stale)})", flush=True)
    if checked.retrain_from:
        on_main_then_wait(runtime, lambda: remove_stages(run_dir / name for name in checked.stale))
    return run


def run_header(config: Config, run_dir: Path, checked: Checked, runtime: Runtime) -> str:
    """What runs, on what, and where its files go: the console's first lines."""
    records = checked.records
    data = f"{len(records.dsat_cases)} DSAT cases, {len(records.seed_pairs)} seed pairs"
    if records.preference_pairs:
        data = f"{len(records.preference_pairs)} preference pairs, " + data
    heldout = f"; held-out: {len(checked.heldout)} prompts" if checked.heldout else ""
    compute = "fp32" if runtime.dtype == torch.float32 else f"{str(runtime.dtype).removeprefix('torch.')} compute, fp32 master weights"
    ranks = f" x {runtime.world_size} ranks" if runtime.distributed else ""
    lines = [f"drift: method={config.method.name} model={config.model.name} data={config.data.name} seed={config.trainer.seed} "
             f"({data}{heldout})",
             f"run folder: {run_dir} (this console is also in its {LOG_NAME})",
             f"trainer: {runtime.device.type}{ranks}, {compute}; {checked.sampler_choice}"]
    if config.logging.wandb_mode != "disabled":
        lines.append(f"wandb: {config.logging.wandb_mode}, its files in {run_dir / 'wandb'}"
                     + (f" (upload them with: wandb sync {run_dir / 'wandb'}/offline-run-*)" if config.logging.wandb_mode == "offline" else ""))
    return "\n".join(lines)


# ---- the contract at run time -------------------------------------------------------------------


def open_stage(run: Run, name: str, *, alone: bool = False) -> tuple[Path, StageKey, bool]:
    """(folder, key, finished): True when the stage finished under this key (its output is then known);
    otherwise its key is recorded before any work. A folder holding another key's work is refused,
    or removed under resume=retrain. ``alone``: only this rank runs the stage (no barrier)."""
    folder = run.run_dir / name
    planned = next(stage for stage in run.checked.plan if stage.name == name)
    key = planned.key(run.outputs)
    if is_finished(folder, key):
        run.outputs[name] = output_of(folder)
        return folder, key, True
    recorded = recorded_key(folder)

    def clear_and_start() -> None:
        if recorded is not None and recorded.fingerprint != key.fingerprint:
            remove_stages([folder])
        start(folder, key)

    if recorded is not None and recorded.fingerprint != key.fingerprint and run.config.resume != RETRAIN:
        raise StageMismatch(mismatch_sentence(name, differences(recorded, key)))
    if alone:
        clear_and_start()
    else:
        on_main_then_wait(run.runtime, clear_and_start)
    return folder, key, False


def finish_on_main(run: Run, folder: Path, key: StageKey, output: str, summary: dict) -> None:
    on_main_then_wait(run.runtime, lambda: finish(folder, key, output, summary))
    run.outputs[str(folder.relative_to(run.run_dir))] = output


# ---- the stages ---------------------------------------------------------------------------------


def initial_model_stage(run: Run) -> str:
    """A folder the trainer and the sampler process can both load: a tiny random model is saved once
    into the run; the embedded model is dequantized once (rank 0)."""
    config = run.config
    if not is_tiny(config):
        on_main_then_wait(run.runtime, lambda: resolve_source(config.model))
        run.outputs[INITIAL] = initial_output(config)
        source = resolve_source(config.model)
    else:
        folder, key, finished = open_stage(run, INITIAL)
        if not finished:
            def save() -> None:
                tokenizer = load_tokenizer(config.model)
                model = load_model(config.model, dtype=torch.float32, seed=config.trainer.seed, vocab_size=len(tokenizer))
                save_hf_checkpoint(model, tokenizer, model.state_dict(), folder)

            on_main_then_wait(run.runtime, save)
            finish_on_main(run, folder, key, initial_output(config), {})
        source = str(folder)
    run.tokenizer = load_tokenizer(config.model, source=source)
    return source


def warm_start(run: Run, initial: str) -> str:
    """DPO on the DSAT->SAT seed pairs, or an earlier run's warm start linked (method.warmstart_from)."""
    config = run.config
    if config.method.warmstart_from:
        from drift.warmstart import link_warmstart

        on_main_then_wait(run.runtime, lambda: link_warmstart(config.method.warmstart_from, run.run_dir))
    records = run.checked.records
    folder, key, finished = open_stage(run, "iter_0/data")
    if not finished:
        rows = seed_pair_rows(records)

        def write() -> None:
            write_jsonl_atomic(folder / "rejects.jsonl", [asdict(r) for r in records.rejects])
            # the warm start's pairs as trained, like iter_k/pairs/pairs.jsonl (analyses read them)
            write_jsonl_atomic(folder / "pairs.jsonl", rows)

        on_main_then_wait(run.runtime, write)
        finish_on_main(run, folder, key, fingerprint(rows), {"pairs": len(rows)})
    tokenized = tokenize_stage(run, "iter_0", records.seed_pairs)
    model = train(run, "warmstart", "iter_0", tokenized, initial, initial, config.method.warmstart_epochs)
    if config.method.warmstart_from:
        run.summary["stages"]["warmstart"]["from"] = str(Path(config.method.warmstart_from).resolve())
    return model


def sample_stage(run: Run, iteration: int, policy: str) -> tuple[dict[str, list[str]], frozenset[tuple[str, int]]]:
    """Rank 0 starts the sampler as its own OS process on the saved policy; the others wait on a file
    marker (no collective: nothing runs on their GPUs, the sampler may use every one of them).
    Returns the texts by prompt id and sample index, and which samples were cut but kept; DRIFT with
    a scorer also runs the guidance check (the original prompts of its cases are sampled too)."""
    from drift.sampler.client import read_samples, sample

    name = f"iter_{iteration}/sample"
    folder, key, finished = open_stage(run, name)
    upstream = next(stage for stage in run.checked.plan if stage.name == name).upstream[0]
    if not finished:
        job = sample_job(run.config, run.checked.records, run.checked.sampler, policy, folder)
        run.say(f"iter_{iteration} sample: {describe_requests(job)}")
        started = time.monotonic()
        run_on_main(run.runtime, folder, lambda: sample(job, checkpoint_fingerprint=run.outputs[upstream], quiet=True),
                    what=f"sampling into {folder}")
        run.outputs[name] = output_of(folder)
        if run.runtime.is_main:
            from drift.sampler.process import format_report

            report = json.loads((folder / "sampling_report.json").read_text())
            run.say(f"iter_{iteration} sample: done in {seconds_text(time.monotonic() - started)}, {format_report(report)}")
    else:
        run.say(f"iter_{iteration} sample: finished earlier with the same settings, reused")
    rows = sorted(read_samples(folder), key=lambda r: (r["prompt_id"], r["sample_index"]))
    samples: dict[str, list[str]] = {}
    for row in rows:
        texts = samples.setdefault(row["prompt_id"], [])
        texts.extend([""] * (row["sample_index"] + 1 - len(texts)))
        texts[row["sample_index"]] = row["text"]
    unfinished = frozenset((row["prompt_id"], row["sample_index"]) for row in rows if row["finish_reason"] != "eos")
    from drift.guidance import check_summary

    check = guidance_check_stage(run, folder, samples) if run.runtime.is_main else None
    run.summary["stages"][f"iter_{iteration}"] = {"guidance_check": check_summary(check)} if check else {}
    return samples, unfinished


def guidance_check_stage(run: Run, folder: Path, samples: dict[str, list[str]]) -> dict | None:
    """Does the guided sample beat the policy's own answer? Written beside the samples it scores."""
    from drift.guidance import format_check, guidance_check, scorer_for, scorer_name
    from drift.plan import guidance_check_runs

    config = run.config
    if not guidance_check_runs(config):
        return None
    path = folder / "guidance_check.json"
    check = json.loads(path.read_text()) if path.is_file() else {}
    if "by_rule" not in check:  # not checked yet, or before the per-rule table and the paired margin
        scorer, kind_of = scorer_for(config, "cuda" if torch.cuda.is_available() else "cpu")
        records = run.checked.records
        first = lambda kind: {c.case_id: samples[prompt_id(c.case_id, kind)][0] for c in records.dsat_cases  # noqa: E731
                              if samples.get(prompt_id(c.case_id, kind), [""])[0]}
        check = guidance_check(records.dsat_cases, first(GUIDED), first(ORIGINAL), scorer, kind_of)
        write_json_atomic(path, {"scorer": scorer_name(config), "guidance": config.data.guidance, **check})
    line, *rest = format_check(check)
    run.say(f"{folder.parent.name} {line} (data.guidance={config.data.guidance}, "
            f"{scorer_name(config)}; per kind and case: {path.relative_to(run.run_dir)})")
    if rest:
        print("\n".join(rest), flush=True)
    return check


def describe_requests(job) -> str:
    """'48 guided prompts + 16 original prompts (the guidance check), 1 reply each, up to 256 new tokens'."""
    from collections import Counter

    kinds = Counter(row["prompt_id"].rpartition("#")[2] for row in job.prompts)
    named = {GUIDED: "guided prompts", ORIGINAL: "original prompts"}
    parts = [f"{count} {named.get(kind, 'prompts')}" for kind, count in sorted(kinds.items())]
    sampler = job.sampler
    return (f"{' + '.join(parts)}, {sampler.num_samples} {'reply' if sampler.num_samples == 1 else 'replies'} each, up to "
            f"{sampler.max_new_tokens} new tokens ({sampler.backend})")


def pairs_stage(run: Run, iteration: int, samples: dict[str, list[str]],
                unfinished: frozenset[tuple[str, int]] = frozenset()) -> list[PreferencePair]:
    """The method's pairs from the records and this iteration's samples (rank 0 builds, the others read);
    under method.chosen_filter, scored first, and how many cases kept which chosen side counted."""
    from drift.methods import chosen_counts
    from drift.plan import filters_chosen

    folder, key, finished = open_stage(run, f"iter_{iteration}/pairs")
    config = run.config
    if not finished:
        records = run.checked.records
        method = method_named(config.method.name)

        def build() -> None:
            if filters_chosen(config):
                rewards = _score_for_filter(run, method, samples)
            else:
                rewards = _score_samples(config, records, samples) if method.needs_reward_model(records) else None
            pairs, rejects = method.build_pairs(records, samples, rewards, unfinished, config.method.chosen_filter)
            rows = [asdict(pair) for pair in pairs]
            write_jsonl_atomic(folder / "pairs.jsonl", rows)
            write_jsonl_atomic(folder / "rejects.jsonl", [asdict(reject) for reject in rejects])
            counts = {"chosen_filter": {"filter": config.method.chosen_filter, **chosen_counts(pairs, rejects)}} \
                if filters_chosen(config) else {}
            finish(folder, key, fingerprint(rows), {"pairs": len(pairs), "rejected": len(rejects), **counts})

        on_main_then_wait(run.runtime, build)
        run.outputs[f"iter_{iteration}/pairs"] = output_of(folder)
    pairs = [pair_from_row(row) for row in read_jsonl(folder / "pairs.jsonl")]
    if not pairs:
        raise RuntimeError(f"no pairs were built for {folder}; see {folder / 'rejects.jsonl'}")
    if filters_chosen(config):
        counts = (read_done(folder) or {}).get("chosen_filter", {})
        run.summary["stages"].setdefault(f"iter_{iteration}", {})["chosen_filter"] = counts
        run.say(f"iter_{iteration} pairs: {format_chosen_counts(counts)}")
    if not finished:
        from collections import Counter

        reasons = Counter(row.get("reason", "?") for row in read_jsonl(folder / "rejects.jsonl"))
        why = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
        run.say(f"iter_{iteration} pairs: {len(pairs)} pairs" + (f"; {sum(reasons.values())} records without one ({why})" if reasons else ""))
    return pairs


def tokenize_stage(run: Run, iteration: str, pairs: list[PreferencePair]):
    """Token ids with response boundaries; the pairs that cannot fit go to tokenize_rejects.jsonl."""
    config = run.config
    folder, key, finished = open_stage(run, f"{iteration}/tokenize")
    tokenized, rejects, truncated = tokenize_pairs(
        pairs, run.tokenizer, max_length=config.trainer.max_length,
        max_prompt_length=config.trainer.max_prompt_length, prompt_format=config.data.prompt_format,
    )
    if not tokenized:
        raise RuntimeError(f"every pair was rejected at tokenization; see {folder / 'tokenize_rejects.jsonl'}")
    stats = {"pairs": len(tokenized), "rejected_at_tokenization": len(rejects), "truncated_prompts": truncated}
    if not finished:
        def write() -> None:
            write_jsonl_atomic(folder / "tokenize_rejects.jsonl", [asdict(r) for r in rejects])
            finish(folder, key, fingerprint([(p.chosen.key, p.rejected.key) for p in tokenized]), stats)

        on_main_then_wait(run.runtime, write)
        run.outputs[f"{iteration}/tokenize"] = output_of(folder)
    run.summary["stages"].setdefault("warmstart" if iteration == "iter_0" else iteration, {}).update(stats)
    return tokenized


def iteration_train_stage(run: Run, iteration: int, tokenized, policy: str) -> str:
    config = run.config
    initial = str(run.run_dir / INITIAL) if is_tiny(config) else resolve_source(config.model)
    reference = policy if config.method.reference == "iteration_start" else initial
    model = train(run, f"iter_{iteration}", f"iter_{iteration}", tokenized, policy, reference, config.method.iteration_epochs)
    run.summary["stages"][f"iter_{iteration}"].update(sampling_counts(run.run_dir / f"iter_{iteration}" / "sample"))
    return model


def train(run: Run, stage_name: str, iteration: str, tokenized, start_from: str, reference: str, epochs: int) -> str:
    """Reference log-probs (cached by content), then DPO from ``start_from``; the final model's folder."""
    folder, key, finished = open_stage(run, f"{iteration}/train")
    stage = Stage(stage_name, folder, tokenized, start_from, reference, epochs, run.run_dir / "reference_cache", key=key,
                  run_dir=run.run_dir)
    trainer = run.config.trainer
    global_batch = trainer.per_device_batch_size * run.runtime.world_size * trainer.grad_accum_steps
    steps = epochs * math.ceil(len(tokenized) / global_batch)
    stats = run.summary["stages"].get(stage_name, {})
    rejected = f" ({stats['rejected_at_tokenization']} rejected at tokenization)" if stats.get("rejected_at_tokenization") else ""
    if finished:
        run.say(f"{stage_name} train: finished earlier with the same settings, reused")
    else:
        run.say(f"{stage_name} train: {len(tokenized)} pairs{rejected}, {epochs} epoch{'s' * (epochs > 1)} = {steps} steps "
                f"of {global_batch} pairs")
    started = time.monotonic()
    model = str(train_stage(run.config, run.runtime, stage, run.tokenizer, run.run_config))
    run.outputs[f"{iteration}/train"] = output_of(folder)
    summary = _stage_summary(read_metrics(folder / "metrics.jsonl"), folder)
    run.summary["stages"].setdefault(stage_name, {}).update(summary)
    if not finished and summary:
        run.say(f"{stage_name} train: done in {seconds_text(time.monotonic() - started)} (reference log-probs of "
                f"{summary.get('reference_sequences', 0)} sequences in {seconds_text(summary.get('reference_seconds', 0))}); "
                f"stage means: loss {summary['mean_loss']:.4f}, margin {summary['mean_margin']:.4f}, "
                f"accuracy {summary['mean_accuracy']:.2f}")
    return model


def evaluate_stage(run: Run) -> None:
    """Every named checkpoint on the held-out split, scored by gold (rank 0; samples cached by request)."""
    if not run.runtime.is_main:
        return
    folder, key, finished = open_stage(run, EVALUATE, alone=True)
    results_path = folder / "heldout.json"
    if finished:
        results = json.loads(results_path.read_text())
        run.say("evaluate: finished earlier with the same settings, reused")
    else:
        checkpoints = [(name, str(run.run_dir / stage / "model") if stage != INITIAL else _initial_source(run))
                       for name, stage in evaluated_stages(run.config)]
        config = run.config
        replies = config.eval.samples_per_prompt
        run.say(f"evaluate: {', '.join(name for name, _ in checkpoints)} on {len(run.checked.heldout)} held-out prompts, "
                f"{replies} {'reply' if replies == 1 else 'replies'} each, up to {config.eval.max_new_tokens} new tokens")
        started = time.monotonic()
        results = heldout_stage(config, checkpoints, say=run.say)
        write_json_atomic(results_path, results)
        finish(folder, key, fingerprint(results), {})
        run.say(f"evaluate: done in {seconds_text(time.monotonic() - started)}")
    run.summary["heldout"] = results


def _initial_source(run: Run) -> str:
    return str(run.run_dir / INITIAL) if is_tiny(run.config) else resolve_source(run.config.model)


def _score_for_filter(run: Run, method, samples: dict[str, list[str]]) -> dict[str, list[float]]:
    """method.chosen_filter's scores: every case's guided and own sample and its DSAT reply, by the
    pair scorer (gold on the testbed, reward.model on real data), keyed as the method asks."""
    from drift.guidance import pair_scorer_name, scorer_for

    config = run.config
    wanted = method.scored_for_filter(run.checked.records, samples)
    scorer, _ = scorer_for(config, "cuda" if torch.cuda.is_available() else "cpu", pair_scorer_name(config))
    started = time.monotonic()
    scores = scorer([(case, text) for _, case, text in wanted])
    run.say(f"pairs: {len(wanted)} replies scored by {pair_scorer_name(config)} for method.chosen_filter="
            f"{config.method.chosen_filter} in {seconds_text(time.monotonic() - started)}")
    return {key: [scored.score] for (key, _, _), scored in zip(wanted, scores)}


def format_chosen_counts(counts: dict) -> str:
    """'method.chosen_filter=own_fallback: 27 with the guided sample chosen, 36 with the policy's own, 9 cases
    without a pair (own not better than dsat 4, no sample 5)'."""
    from drift.methods import GUIDED_NOT_BETTER, OWN_NOT_BETTER

    dropped = {reason: counts.get(reason, 0) for reason in (GUIDED_NOT_BETTER, OWN_NOT_BETTER, "no_sample", "identical_sides")}
    why = ", ".join(f"{reason.replace('_', ' ')} {count}" for reason, count in dropped.items() if count)
    return (f"method.chosen_filter={counts.get('filter')}: {counts.get('guided_chosen', 0)} with the guided sample chosen, "
            f"{counts.get('own_chosen', 0)} with the policy's own, {sum(dropped.values())} cases without a pair"
            + (f" ({why})" if why else ""))


def _score_samples(config: Config, records, samples: dict[str, list[str]]) -> dict[str, list[float]]:
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


# ---- evaluation and reporting -------------------------------------------------------------------


def heldout_stage(config: Config, checkpoints: list[tuple[str, str]], say=print) -> dict:
    """Every named checkpoint on the held-out split, scored by gold; a line per checkpoint."""
    from drift.eval.heldout import read_heldout

    heldout = read_heldout(config.eval.heldout)
    results = {}
    for name, checkpoint in checkpoints:
        started = time.monotonic()
        results[name] = result = evaluate_on_heldout(config, checkpoint, heldout)
        say(f"evaluate: {name} gold {result['gold']:.3f} ± {result['gold_se']:.3f} over {result['replies']} replies "
            f"({result['cut_share']:.0%} cut) in {seconds_text(time.monotonic() - started)}")
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


FIGURES = "figures"


def write_figures(run_dir: Path, heldout: dict | None) -> dict:
    """The run's figures in <run>/figures: held-out gold per stage (when evaluated) and the training
    dynamics (launch/analyze.py dynamics' figures and report). {"gold_per_stage": path, "dynamics": folder,
    "dynamics_figures": count}, or {"skipped": why} without matplotlib."""
    from drift.analysis._figures import pyplot

    if pyplot() is None:
        return {"skipped": "matplotlib is not installed (pip install matplotlib)"}
    from drift.analysis import dynamics
    from drift.eval.heldout import plot_gold_per_stage

    folder = Path(run_dir) / FIGURES
    written: dict = {}
    if heldout and plot_gold_per_stage(heldout, folder / "gold_per_stage.png"):
        written["gold_per_stage"] = str(folder / "gold_per_stage.png")
    try:
        runs = [dynamics.analyze_run(Path(run_dir), Path(run_dir).name, tau=0.5, bins=20)]
    except dynamics.AnalysisInputError:
        return written
    result = dynamics.write_outputs(runs, 0.5, folder / "dynamics")
    figures = result["figures"]
    written["dynamics"] = str(folder / "dynamics")
    written["dynamics_figures"] = len(figures["steps"]) + len(figures["iterations"]) + len(figures["histograms"])
    return written


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
    for name, stats in summary["stages"].items():
        if stats.get("guidance_check"):
            from drift.guidance import format_check_line

            lines.append(f"{name:<10} {format_check_line(stats['guidance_check'])}")
        if stats.get("chosen_filter"):
            lines.append(f"{name:<10} pairs under {format_chosen_counts(stats['chosen_filter'])}")
    if "heldout" in summary:
        from drift.eval.heldout import format_eval

        lines.append(format_eval(summary["heldout"]))
    figures = summary.get("figures") or {}
    if "skipped" in figures:
        lines.append(f"figures: none ({figures['skipped']})")
    elif figures:
        named = [figures["gold_per_stage"]] if "gold_per_stage" in figures else []
        if "dynamics" in figures:
            named.append(f"{figures['dynamics']}/ ({figures['dynamics_figures']} training-dynamics figures, report.md)")
        lines.append("figures: " + ", ".join(named))
    lines.append(f"final model (HF folder): {summary['model']}")
    return "\n".join(lines)
