"""Held-out evaluation: every checkpoint of a run on prompts it never trained on, scored by gold.

The held-out file (drift/data/fixtures/testbed_heldout.jsonl, written by testbed_compose.py) holds
rows {prompt_id, kind, messages, Preference}: topics and phrasings that appear nowhere in the
training conversations, *stated* prompts (the preference is in the request) and *revealed*
prompts (nothing is stated; the gold reward scores the preference the training users revealed in
their feedback). Each checkpoint samples one reply per prompt through the sampler process, with
the run's sampler settings except max_new_tokens (eval.max_new_tokens, long enough that few
replies are cut) and sampler.truncated=keep (a cut reply is scored, and counted as cut).

Samples live in ``<output_dir>/eval_cache/<the request's fingerprint>/`` so that runs sharing a
checkpoint (the base model, a warm start every method starts from) sample it once.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

from drift.config import SamplerConfig
from drift.io import jsonl_lines

KINDS = ("stated", "revealed")


class HeldoutError(ValueError):
    """The held-out file is not in the shape this reads; the message names the line and the fix."""


def read_heldout(path: str | Path) -> list[dict]:
    """The rows of a held-out file; ``testbed`` and ``testbed_compact`` name the shipped splits."""
    from drift.data.sources import TESTBEDS
    from drift.eval.gold import validate_spec

    path = TESTBEDS[str(path)] if str(path) in TESTBEDS else Path(path)
    if not path.is_file():
        raise HeldoutError(f"eval.heldout={path} does not exist; python drift/data/fixtures/testbed_compose.py writes "
                           "the shipped one, or set eval.heldout=null to skip the evaluation")
    rows = []
    for line in jsonl_lines(path.read_text(encoding="utf-8")):
        number, row = line.number, line.value
        if line.problem() is not None:
            raise HeldoutError(f"{path.name}:{number}: {line.problem()}; a held-out file has one JSON object a line: "
                               "fix that line (python drift/data/fixtures/testbed_compose.py rewrites the shipped one)"
                               ) from line.error
        missing = [key for key in ("prompt_id", "kind", "messages", "Preference") if key not in row]
        if missing:
            raise HeldoutError(f"{path.name}:{number}: missing {', '.join(missing)}; a held-out row is "
                               '{"prompt_id", "kind": "stated"|"revealed", "messages", "Preference": [rules]}')
        validate_spec(row["Preference"], f"{path.name}:{number}")
        rows.append(row)
    return rows


def eval_sampler(sampler: SamplerConfig, max_new_tokens: int, samples_per_prompt: int = 1) -> SamplerConfig:
    return dataclasses.replace(sampler, max_new_tokens=max_new_tokens, num_samples=samples_per_prompt, truncated="keep")


def score_rows(samples: list[dict], heldout: list[dict]) -> list[dict]:
    from drift.eval.gold import gold_reward, words

    by_id = {row["prompt_id"]: row for row in heldout}
    scored = []
    for sample in samples:
        row = by_id[sample["prompt_id"]]
        gold = gold_reward(sample["text"], row["Preference"])
        scored.append({"prompt_id": row["prompt_id"], "kind": row["kind"], "score": gold.score,
                       "rules": {rule.rule: rule.score for rule in gold.rules},
                       "cut": sample["finish_reason"] == "length", "words": len(words(sample["text"]))})
    return scored


def prompt_means(scored: list[dict], prompt_ids: list[str], samples_per_prompt: int = 1) -> dict[str, float]:
    """Each prompt's gold, the mean over its ``samples_per_prompt`` replies (a missing reply scores 0)."""
    totals = dict.fromkeys(prompt_ids, 0.0)
    for row in scored:
        totals[row["prompt_id"]] += row["score"]
    return {prompt: total / samples_per_prompt for prompt, total in totals.items()}


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error over prompts (the spread of prompts and of sampling together)."""
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, (variance / n) ** 0.5


def paired_gain(later: dict, earlier: dict) -> dict | None:
    """Gold of ``later`` minus ``earlier`` over the prompts both were scored on, with the standard
    error of the paired difference: the same prompts, so the prompts' own spread cancels out and
    what is left is how much the gain could be sampling and training noise."""
    a, b = later.get("prompt_gold"), earlier.get("prompt_gold")
    if not a or not b:
        return None
    shared = sorted(set(a) & set(b))
    gain, se = mean_and_se([a[prompt] - b[prompt] for prompt in shared])
    return {"gain": round(gain, 4), "se": round(se, 4), "prompts": len(shared)}


def summarize(scored: list[dict], prompts: int, samples_per_prompt: int = 1) -> dict:
    """Gold over the whole split (a missing reply scores 0), on finished replies, the cut share, by rule."""
    def mean(values):
        return round(sum(values) / len(values), 4) if values else None

    by_rule = defaultdict(list)
    for row in scored:
        for rule, score in row["rules"].items():
            by_rule[rule].append(score)
    finished = [row["score"] for row in scored if not row["cut"]]
    return {
        "prompts": prompts, "replies": len(scored),
        "gold": round(sum(row["score"] for row in scored) / (prompts * samples_per_prompt), 4) if prompts else None,
        "gold_finished": mean(finished), "cut_share": mean([float(row["cut"]) for row in scored]),
        "mean_words": mean([float(row["words"]) for row in scored]),
        "by_rule": {rule: mean(scores) for rule, scores in sorted(by_rule.items())},
    }


def evaluate_checkpoint(checkpoint: str, heldout: list[dict], *, cache_root: Path, sampler: SamplerConfig,
                        max_prompt_length: int, prompt_format: str, device: str, trust_remote_code: bool) -> dict:
    from drift.sampler.client import SamplingJob, request_key, sample

    rows = tuple({"prompt_id": r["prompt_id"], "messages": r["messages"], "keep_last": 1} for r in heldout)
    k = sampler.num_samples
    job = SamplingJob(checkpoint, rows, Path(cache_root), sampler, max_prompt_length=max_prompt_length,
                      prompt_format=prompt_format, device=device, trust_remote_code=trust_remote_code)
    # the folder is named by the request's key: runs that evaluate the same checkpoint share it
    folder = Path(cache_root) / request_key(job).fingerprint
    result = sample(dataclasses.replace(job, out_dir=folder), label="heldout eval", quiet=True)
    scored = score_rows(result.samples, heldout)
    counts = {kind: sum(r["kind"] == kind for r in heldout) for kind in KINDS}
    per_prompt = prompt_means(scored, [r["prompt_id"] for r in heldout], k)
    return {"checkpoint": checkpoint, "samples_folder": str(folder), **summarize(scored, len(heldout), k),
            "gold_se": round(mean_and_se(list(per_prompt.values()))[1], 4), "samples_per_prompt": k,
            "prompt_gold": {prompt: round(value, 4) for prompt, value in per_prompt.items()},
            "by_kind": {kind: summarize([r for r in scored if r["kind"] == kind], counts[kind], k) for kind in KINDS}}


def format_eval(results: dict[str, dict]) -> str:
    """The table, then each trained stage's gain over base and over the warm start (paired, ± its SE)."""
    lines = [f"{'held-out':<10} {'gold':>6} {'± se':>6} {'stated':>7} {'revealed':>8} {'finished':>8} {'cut':>5} {'words':>6}"]
    for name, r in results.items():
        se = f"{r['gold_se']:>6.3f}" if r.get("gold_se") is not None else f"{'':>6}"
        lines.append(f"{name:<10} {r['gold']:>6.3f} {se} {r['by_kind']['stated']['gold']:>7.3f} "
                     f"{r['by_kind']['revealed']['gold']:>8.3f} {r['gold_finished'] or 0:>8.3f} {r['cut_share']:>5.2f} "
                     f"{r['mean_words'] or 0:>6.1f}")
    for name, r in results.items():
        gains = [(anchor, paired_gain(r, results[anchor])) for anchor in ("base", "warmstart")
                 if anchor in results and anchor != name and name != "base"]
        gains = [f"{gain['gain']:+.3f} ± {gain['se']:.3f} over {anchor}" for anchor, gain in gains if gain is not None]
        if gains:
            lines.append(f"{name:<10} gain (paired, ± SE): " + ", ".join(gains))
    return "\n".join(lines)


def plot_gold_per_stage(results: dict[str, dict], path: Path, title: str = "") -> bool:
    """Held-out gold per evaluated stage (± its standard error), with its stated and revealed halves;
    False (no file) without matplotlib."""
    from drift.analysis._figures import pyplot, save_png

    plt = pyplot()
    if plt is None or not results:
        return False
    names = list(results)
    xs = list(range(len(names)))
    figure, axis = plt.subplots(figsize=(6, 4))
    try:
        axis.errorbar(xs, [results[n]["gold"] for n in names], yerr=[results[n].get("gold_se") or 0 for n in names],
                      marker="o", capsize=4, color="C0", label="all prompts (± SE)")
        for color, kind in zip(("C1", "C2"), KINDS):
            axis.plot(xs, [results[n]["by_kind"][kind]["gold"] for n in names], marker=".", linestyle="--",
                      color=color, label=kind)
        axis.set_xticks(xs, names)
        axis.set_ylim(0, 1)
        axis.set_ylabel("held-out gold (rule-based, 0 to 1)")
        prompts = results[names[0]]["prompts"]
        axis.set_title(title or f"held-out gold per stage ({prompts} prompts never trained on)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        save_png(figure, Path(path))
    finally:
        plt.close(figure)
    return True
