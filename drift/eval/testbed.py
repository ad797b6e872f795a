"""The verifiable testbed's report: gold reward, margin and σ(−s) per iteration, per run.

  python launch/analyze.py testbed run=runs/A [eval=last|all|none] [out=DIR] [data=FILE]
  python launch/analyze.py testbed run=[runs/A,runs/B]         # one table over several runs

For each run trained with ``data=testbed`` and each iteration k >= 1 it reads

- ``iter_k/sample/samples.jsonl``: the replies the policy of iteration k-1 wrote for that
  iteration's pairs, scored with the gold reward (drift/eval/gold.py) against their conversation's
  preference spec. Which prompts were sampled depends on the method (drift: guided; drift_unguided:
  original; spin: the history before the SAT reply, which already holds the feedback; iterdpo:
  both), so the table splits them by prompt kind;
- ``iter_k/train/metrics.jsonl`` and ``pair_metrics.jsonl``: the stage's mean margin, accuracy and
  σ(−s) (the gradient weight; from the per-pair logits when present).

``eval`` samples a fixed evaluation set, the *original* prompt of every DSAT case (the request
that states the preference, nothing after it), from checkpoints of the run through the sampler
process (launch/sample.py), with the run's own sampler settings and seed: every method and every
checkpoint sees the same prompts and seeds, so these are the numbers to compare across methods.
``last`` (default): the final checkpoint; ``all``: the initial model, the warm start and every
iteration; ``none``: skip. Results are kept under ``<run>/testbed_eval/<stage>/`` and reused while
the checkpoint's fingerprint is unchanged.

Writes ``testbed_report.md`` and ``testbed_report.json`` to ``out`` (default: the runs' common
parent folder) and prints the markdown.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from drift.checks import EvalStages, check, check_choice, string_list
from drift.eval.gold import conversation_of, gold_reward, load_specs, words
from drift.io import is_done, read_jsonl, write_json_atomic, write_text_atomic

COMMAND = "testbed"
STAGE_FOLDER = re.compile(r"^iter_(\d+)$")
EVAL_FOLDER = "testbed_eval"


class ReportInputError(ValueError):
    """A command-line key or an input folder is wrong; the message says which and what to do."""


# ---------------------------------------------------------------- the command's config

@dataclass
class TestbedReportConfig:
    # one run folder (run=runs/A) or several in one table (run=[runs/A,runs/B]); see string_list
    run: Any = None
    # which checkpoints to evaluate on the original prompts: last | all | none (EvalStages, as the
    # trainer's eval.stages)
    eval: str = "last"
    # default: the runs' common parent folder (one run: the run itself)
    out: Optional[str] = None
    # the testbed .jsonl the runs trained on; default: each run's data.path (the shipped file)
    data: Optional[str] = None

    def validate(self) -> None:
        check(bool(self.runs), "give at least one run=runs/<run folder> (a run trained with data=testbed)")
        for run in self.runs:
            check(run.is_dir(), f"run={run} is not a folder; give a run folder such as runs/drift_smollm2_testbed")
        check_choice("eval", self.eval, EvalStages)
        check(self.data is None or Path(self.data).is_file(),
              f"data={self.data} is not a file; give the testbed .jsonl the runs trained on")

    @property
    def runs(self) -> list[Path]:
        return [Path(run) for run in string_list("run", self.run)]

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        runs = self.runs
        return runs[0].resolve() if len(runs) == 1 else Path(os.path.commonpath([str(r.resolve()) for r in runs]))


CONFIG = TestbedReportConfig


# ---------------------------------------------------------------- pure pieces

def prompt_kind(prompt_id: str, sat_reply_ids: set[str]) -> str:
    """guided | original | before_sat (spin: the history before a SAT reply, feedback included)."""
    record_id, _, kind = prompt_id.partition("#")
    return "before_sat" if record_id in sat_reply_ids else (kind or "original")


def score_samples(rows: list[dict], specs: dict[str, list[dict]], where: str) -> list[dict]:
    """One scored row per sample: prompt_id, conversation, gold score, passed, per-rule scores, cut."""
    scored = []
    for row in rows:
        conversation = conversation_of(row["prompt_id"])
        if conversation not in specs:
            raise ReportInputError(
                f"{where}: sample {row['prompt_id']!r} belongs to conversation {conversation!r}, which has no "
                "preference spec in the testbed file; was this run trained with data=testbed? (data=FILE names "
                "another testbed file)")
        gold = gold_reward(row["text"], specs[conversation])
        scored.append({
            "prompt_id": row["prompt_id"], "conversation": conversation, "score": gold.score, "passed": gold.passed,
            "rules": {rule.rule: rule.score for rule in gold.rules},
            "cut": row.get("finish_reason") == "length", "words": len(words(row["text"])),
        })
    return scored


def summarize_scores(scored: list[dict], seed_conversations: set[str]) -> dict:
    """Mean gold reward, pass rate, share cut at max_new_tokens, by rule kind and seed/other conversation."""
    if not scored:
        return {"samples": 0}
    by_rule: dict[str, list[float]] = defaultdict(list)
    for row in scored:
        for rule, score in row["rules"].items():
            by_rule[rule].append(score)
    seed = [row["score"] for row in scored if row["conversation"] in seed_conversations]
    other = [row["score"] for row in scored if row["conversation"] not in seed_conversations]
    return {
        "samples": len(scored),
        "gold": _mean([row["score"] for row in scored]),
        "pass_rate": _mean([float(row["passed"]) for row in scored]),
        "cut_rate": _mean([float(row["cut"]) for row in scored]),
        # several rules (word limits, no code, no list, avoid) are easy to meet by saying little: watch this
        "mean_words": _mean([float(row["words"]) for row in scored]),
        "gold_seed_conversations": _mean(seed),
        "gold_other_conversations": _mean(other),
        "by_rule": {rule: _mean(scores) for rule, scores in sorted(by_rule.items())},
    }


def train_dynamics(step_rows: list[dict], pair_rows: list[dict]) -> dict:
    """Stage means of margin, accuracy and σ(−s); σ(−s) and accuracy from the per-pair logits when logged."""
    if not step_rows:
        return {}
    out = {
        "steps": len(step_rows),
        "margin": _mean([row["margin"] for row in step_rows]),
        "margin_first_step": step_rows[0]["margin"],
        "margin_last_step": step_rows[-1]["margin"],
        "accuracy": _mean([row["accuracy"] for row in step_rows]),
        "gradient_weight": _mean([row["gradient_weight"] for row in step_rows]),
        "gradient_weight_source": "metrics.jsonl step means",
        "loss": _mean([row["loss"] for row in step_rows]),
    }
    if pair_rows:
        # per pair, not per step: a short last step would otherwise weigh as much as a full one
        logits = [row["logit"] for row in pair_rows]
        out.update({
            "pairs_seen": len(logits),
            "margin": _mean(logits),
            "accuracy": _mean([float(s > 0) for s in logits]),
            "gradient_weight": _mean([_sigmoid(-s) for s in logits]),
            "gradient_weight_source": "pair_metrics.jsonl (mean over pairs)",
        })
    return out


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


# ---------------------------------------------------------------- reading a run

def run_config(run_dir: Path) -> dict | None:
    """The run's resolved Hydra config (.hydra/config.yaml), or None when the folder has none."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def iteration_folders(run_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), path) for path in run_dir.iterdir() if (m := STAGE_FOLDER.match(path.name))]
    return sorted(found)


def testbed_file(cfg: TestbedReportConfig, config: dict | None) -> str | None:
    if cfg.data:
        return cfg.data
    if config is not None:
        from drift.data.sources import SHIPPED, is_testbed

        data = config.get("data") or {}
        if not is_testbed(data.get("name")):
            raise ReportInputError(f"run was trained with data={data.get('name')!r}, not data=testbed; the gold reward "
                                    "needs the testbed's preference specs (give data=FILE for a testbed file of your own)")
        return data.get("path") or str(SHIPPED[data["name"]])
    return None  # the shipped file


def analyze_run(run_dir: Path, cfg: TestbedReportConfig) -> dict:
    from drift.data import DataConfig, load_records

    config = run_config(run_dir)
    data_path = testbed_file(cfg, config)
    specs = load_specs(data_path)
    records = load_records(DataConfig(name="testbed", path=data_path))
    seeds = {conversation_of(pair.pair_id) for pair in records.seed_pairs}
    sat_ids = {reply.reply_id for reply in records.sat_replies}
    method = (config or {}).get("method", {}).get("name") or _summary_method(run_dir)
    stages = []
    for iteration, folder in iteration_folders(run_dir):
        stage = {"iteration": iteration, "policy_sampled": f"iter_{iteration - 1}" if iteration else None}
        samples_path = folder / "sample" / "samples.jsonl"
        if iteration > 0 and samples_path.is_file():
            scored = score_samples(read_jsonl(samples_path), specs, str(samples_path))
            stage["samples"] = summarize_scores(scored, seeds)
            kinds = defaultdict(list)
            for row in scored:
                kinds[prompt_kind(row["prompt_id"], sat_ids)].append(row)
            stage["samples_by_kind"] = {kind: summarize_scores(rows, seeds) for kind, rows in sorted(kinds.items())}
        metrics_path = folder / "train" / "metrics.jsonl"
        if metrics_path.is_file():
            pair_path = folder / "train" / "pair_metrics.jsonl"
            # logs of a stage still training (or killed) may end in a torn row
            steps = read_jsonl(metrics_path, torn_tail_ok=True)
            stage["train"] = train_dynamics(steps, read_jsonl(pair_path, torn_tail_ok=True) if pair_path.is_file() else [])
            stage["train"]["finished"] = is_done(folder / "train")
        stages.append(stage)
    baseline = summarize_scores(
        [{"conversation": conversation_of(c.case_id), **_gold_row(c.dsat_reply, specs[conversation_of(c.case_id)])}
         for c in records.dsat_cases], seeds)
    result = {"run": str(run_dir), "label": run_label(run_dir, method), "method": method, "testbed_file": data_path,
              "conversations": len(specs), "seed_conversations": len(seeds), "dsat_replies": baseline,
              "stages": stages, "eval": {}}
    if cfg.eval != "none":
        result["eval"] = evaluate(run_dir, config, records, specs, seeds, cfg.eval)
    return result


def _gold_row(text: str, spec) -> dict:
    gold = gold_reward(text, spec)
    return {"score": gold.score, "passed": gold.passed, "rules": {r.rule: r.score for r in gold.rules}, "cut": False,
            "words": len(words(text))}


def _summary_method(run_dir: Path) -> str | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()).get("method") if path.is_file() else None


def run_label(run_dir: Path, method: str | None) -> str:
    name = run_dir.resolve().name
    return name if method is None or method in name else f"{method} ({name})"


def short_labels(labels: list[str]) -> list[str]:
    """Sweep job folders are named by all their overrides; keep method= and the overrides that differ."""
    items = [dict(part.split("=", 1) for part in label.split(",")) if all("=" in p for p in label.split(",")) else None
             for label in labels]
    if len(labels) < 2 or any(item is None for item in items):
        return labels
    varying = [key for key in items[0] if key == "method" or len({item.get(key) for item in items}) > 1]
    varying += [key for item in items for key in item if key not in varying and len({i.get(key) for i in items}) > 1]
    return [",".join(f"{key}={item[key]}" for key in varying if key in item) or label for item, label in zip(items, labels)]


# ---------------------------------------------------------------- evaluation through the sampler process

def eval_checkpoints(run_dir: Path, config: dict, mode: str) -> list[tuple[str, str]]:
    """(name, HF folder) of the checkpoints to evaluate, in training order."""
    trained = [(f"iter_{k}", folder / "train" / "model") for k, folder in iteration_folders(run_dir)
               if is_done(folder / "train") and (folder / "train" / "model").is_dir()]
    if not trained:
        raise ReportInputError(f"{run_dir}: no finished training stage (iter_k/train/done with model/) to evaluate; "
                                "finish the run, or give eval=none")
    if mode == "last":
        return [(trained[-1][0], str(trained[-1][1]))]
    return [("initial", initial_checkpoint(run_dir, config))] + [(name, str(path)) for name, path in trained]


def initial_checkpoint(run_dir: Path, config: dict) -> str:
    if (run_dir / "initial_model" / "config.json").exists():
        return str(run_dir / "initial_model")  # tiny models are saved in the run
    from drift.config import ModelConfig
    from drift.model import resolve_source

    return resolve_source(ModelConfig(**config["model"]))


def eval_prompt_rows(records) -> list[dict]:
    from drift.data.prompts import ORIGINAL_KEEP_LAST, original_prompt
    from drift.methods import ORIGINAL, SampleRequest, prompt_id

    return [SampleRequest(prompt_id(case.case_id, ORIGINAL), original_prompt(case), ORIGINAL_KEEP_LAST).as_row()
            for case in records.dsat_cases]


def evaluate(run_dir: Path, config: dict | None, records, specs, seeds, mode: str) -> dict:
    if config is None:
        raise ReportInputError(f"{run_dir}: no .hydra/config.yaml, so the run's sampler settings are unknown; "
                                "give eval=none to report the training samples only")
    results = {}
    for name, checkpoint in eval_checkpoints(run_dir, config, mode):
        folder = run_dir / EVAL_FOLDER / name
        samples = sample_checkpoint(checkpoint, folder, eval_prompt_rows(records), config)
        results[name] = {"checkpoint": checkpoint, **summarize_scores(score_samples(samples, specs, str(folder)), seeds)}
    return results


def sample_checkpoint(checkpoint: str, folder: Path, prompt_rows: list[dict], config: dict) -> list[dict]:
    """The sampler process on ``checkpoint`` with the run's sampler settings (drift.sampler.client:
    reused while the weights, the prompts and the settings are the same)."""
    from drift.sampler.client import SamplingJob, sample
    from drift.sampler.process import sampler_config_from_dict

    job = SamplingJob(
        # an evaluation scores cut replies too (and reports the share cut)
        checkpoint, tuple(prompt_rows), folder, sampler_config_from_dict({**config["sampler"], "truncated": "keep"}),
        max_prompt_length=config["trainer"]["max_prompt_length"], prompt_format=config["data"]["prompt_format"],
        device=config["trainer"].get("device", "auto"), trust_remote_code=config["model"].get("trust_remote_code", False),
    )
    return sample(job, label=COMMAND).samples


# ---------------------------------------------------------------- the report

def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_report(runs: list[dict]) -> str:
    lines = ["# Verifiable testbed: gold reward, margin and σ(−s)", ""]
    first = runs[0]
    lines += [
        f"{first['conversations']} conversations ({first['seed_conversations']} seed conversations: their revision is a "
        "warm-start pair and a SPIN SAT reply). Gold reward: mean rule score in [0, 1] (drift/eval/gold.py); pass: every "
        "rule met; cut: share stopped at sampler.max_new_tokens; words: mean reply length (word limits, no code, no list "
        "and avoid-a-word rules are easy to meet by saying little). The real DSAT replies score "
        f"{_cell(first['dsat_replies']['gold'])} (pass {_cell(first['dsat_replies']['pass_rate'])}); the revisions 1.",
        "",
        "## Per iteration: the iteration's own samples (policy of iteration k−1) and its training stage",
        "",
        "Which prompts were sampled depends on the method, so compare gold across methods in the evaluation table below. "
        "margin and σ(−s): stage means over pairs of s = β·[(log π − log π_ref)(y⁺) − (log π − log π_ref)(y⁻)].",
        "",
        "| run | iter | prompts sampled | samples | gold | pass | cut | words | gold seed / other | margin | acc | σ(−s) | steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for stage in run["stages"]:
            samples, train = stage.get("samples", {}), stage.get("train", {})
            kinds = ", ".join(f"{kind} {s['samples']}" for kind, s in stage.get("samples_by_kind", {}).items())
            name = "warm start" if stage["iteration"] == 0 else str(stage["iteration"])
            lines.append(
                f"| {run['label']} | {name} | {kinds or '–'} | {samples.get('samples', '–')} | {_cell(samples.get('gold'))} | "
                f"{_cell(samples.get('pass_rate'), 2)} | {_cell(samples.get('cut_rate'), 2)} | {_cell(samples.get('mean_words'), 0)} | "
                f"{_cell(samples.get('gold_seed_conversations'))} / {_cell(samples.get('gold_other_conversations'))} | "
                f"{_cell(train.get('margin'), 4)} | {_cell(train.get('accuracy'), 2)} | {_cell(train.get('gradient_weight'), 4)} | "
                f"{train.get('steps', '–')} |")
    evaluated = [run for run in runs if run["eval"]]
    if evaluated:
        rules = sorted({rule for run in evaluated for e in run["eval"].values() for rule in e.get("by_rule", {})})
        lines += [
            "", "## Evaluation: the original prompt of every DSAT case, same prompts and seeds for every checkpoint", "",
            "| run | checkpoint | samples | gold | pass | cut | words | gold seed / other | " + " | ".join(rules) + " |",
            "|---|---|---|---|---|---|---|---|" + "---|" * len(rules),
        ]
        for run in evaluated:
            for name, e in run["eval"].items():
                lines.append(
                    f"| {run['label']} | {name} | {e['samples']} | {_cell(e['gold'])} | {_cell(e['pass_rate'], 2)} | "
                    f"{_cell(e['cut_rate'], 2)} | {_cell(e['mean_words'], 0)} | {_cell(e['gold_seed_conversations'])} / {_cell(e['gold_other_conversations'])} | "
                    + " | ".join(_cell(e["by_rule"].get(rule), 2) for rule in rules) + " |")
    return "\n".join(lines) + "\n"


def run(cfg: TestbedReportConfig) -> int:
    try:
        runs = [analyze_run(run_dir, cfg) for run_dir in cfg.runs]
        for run_result, label in zip(runs, short_labels([r["label"] for r in runs])):
            run_result["label"] = label
    except ReportInputError as error:
        print(error, file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        print(f"{COMMAND}: {error}", file=sys.stderr)
        return 2
    report = render_report(runs)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "testbed_report.md", report)
    write_json_atomic(out / "testbed_report.json", {"runs": runs})
    print(report)
    print(f"written: {out / 'testbed_report.md'}, {out / 'testbed_report.json'}", file=sys.stderr)
    return 0
