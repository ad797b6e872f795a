"""The guidance check: does DRIFT's premise hold for *this* model, this iteration?

DRIFT trains toward the reply the policy writes when shown the user's complaint (the guided
prompt) and away from the real DSAT reply. That helps only if the guided reply is better than
what the same policy already writes without the complaint. Per DSAT case this scores three
replies with the same scorer -- the guided sample, the DSAT reply, and the policy's own sample on
the original prompt -- and reports:

- the share of cases where the guided sample beats (a) the DSAT reply and (b) the policy's own
  sample (ties count as not beating), overall and per kind, with the mean score of each reply;
- the paired margin of (b): the mean over cases of guided minus own score, with its standard
  error. The cases are the same, so their own spread cancels;
- what the replies carry: per preference rule (a rule-based scorer: the testbed's gold), the share
  of cases where each reply meets the rule (scores 1 on it) and each reply's mean score on it; per
  score band (a reward model), the share of cases where each reply reaches the band.

The warning fires when the guided samples are not better than the policy's own by more than noise
-- the margin's lower bound, margin - 2*SE, at or below zero -- and names the rules the guided
samples fail to carry: scored no higher than the policy's own sample, and not met by every guided
sample.

Scorers: the testbed's gold reward (rules, drift/eval/gold.py) on data=testbed, or a reward model
(method.guidance_check=reward with reward.model=<folder>) on real data. The same scorer decides
method.chosen_filter's pairs (``pair_scorer_name``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

from drift.data.records import DsatCase
from drift.data.sources import data_file, is_testbed


@dataclass(frozen=True)
class Scored:
    """A reply's score, and for a rule-based scorer each rule's (name -> score in [0, 1]; 1 meets it)."""

    score: float
    rules: dict[str, float] = field(default_factory=dict)


Scorer = Callable[[Sequence[tuple[DsatCase, str]]], list[Scored]]
# the three replies of a case, in the order they are scored
SIDES = ("guided", "original", "dsat")
NOISE_SES = 2  # the margin must clear this many standard errors to count as more than noise
BANDS = (0.25, 0.5, 0.75)  # a reward model's bands: the pooled scores' quartiles


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def paired_margin(differences: list[float]) -> dict:
    """The mean of paired differences, its standard error and the lower bound margin - 2*SE."""
    from drift.eval.heldout import mean_and_se

    if not differences:
        return {"margin": None, "se": None, "lower": None, "cases": 0}
    margin, se = mean_and_se(differences)
    return {"margin": round(margin, 4), "se": round(se, 4), "lower": round(margin - NOISE_SES * se, 4),
            "cases": len(differences)}


def guidance_check(cases: Sequence[DsatCase], guided: dict[str, str], original: dict[str, str], score: Scorer,
                   kind_of: Callable[[DsatCase], str] | None = None) -> dict:
    """Shares of cases where the guided sample beats the DSAT reply and the policy's own original-prompt
    sample, overall and per kind (``kind_of``: e.g. the testbed's stated / revealed), with mean scores,
    the paired margin over the policy's own sample, and the per-rule (or per-band) table."""
    usable = [case for case in cases if case.case_id in guided and case.case_id in original]
    items = [(case, text) for case in usable for text in (guided[case.case_id], original[case.case_id], case.dsat_reply)]
    scored = score(items)
    rows = []
    for index, case in enumerate(usable):
        sides = dict(zip(SIDES, scored[3 * index: 3 * index + 3]))
        row = {"case_id": case.case_id, "kind": kind_of(case) if kind_of else "all",
               **{side: s.score for side, s in sides.items()}}
        if any(s.rules for s in sides.values()):
            row["rules"] = {rule: {side: s.rules.get(rule) for side, s in sides.items()} for rule in sides["guided"].rules}
        rows.append(row)

    def summary(subset: list[dict]) -> dict:
        return {
            "cases": len(subset),
            "guided_beats_dsat": _share([r["guided"] > r["dsat"] for r in subset]),
            "guided_beats_own_original": _share([r["guided"] > r["original"] for r in subset]),
            "ties_with_own_original": _share([r["guided"] == r["original"] for r in subset]),
            "mean_guided": _mean([r["guided"] for r in subset]), "mean_dsat": _mean([r["dsat"] for r in subset]),
            "mean_original": _mean([r["original"] for r in subset]),
            "margin_over_own": paired_margin([r["guided"] - r["original"] for r in subset]),
        }

    by_rule = rule_table(rows, kinds=kind_of is not None) if any("rules" in r for r in rows) else band_table(rows)
    result = {"overall": summary(rows), "by_kind": {kind: summary([r for r in rows if r["kind"] == kind])
                                                    for kind in sorted({r["kind"] for r in rows})},
              "by_rule": by_rule, "not_carried": not_carried(by_rule),
              "skipped_cases": len(cases) - len(usable), "cases": rows}
    result["warning"] = warning(result)
    return result


def rule_table(rows: list[dict], kinds: bool) -> dict[str, dict]:
    """Per rule (``kind/rule`` when the cases have kinds): the cases that carry it, the share of them where
    each reply meets it (scores 1), each reply's mean score on it, and the paired margin guided - own."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        for rule, sides in row.get("rules", {}).items():
            groups.setdefault(f"{row['kind']}/{rule}" if kinds else rule, []).append(sides)
    table = {}
    for name in sorted(groups):
        group = groups[name]
        margin = paired_margin([sides["guided"] - sides["original"] for sides in group])
        table[name] = {"cases": len(group),
                       **{f"meets_{side}": _share([sides[side] >= 1.0 for sides in group]) for side in SIDES},
                       **{f"mean_{side}": _mean([sides[side] for sides in group]) for side in SIDES},
                       "margin": margin["margin"], "se": margin["se"]}
    return table


def band_table(rows: list[dict]) -> dict[str, dict]:
    """A scorer without rules (a reward model): per band -- the pooled scores' quartiles -- the share of
    cases where each reply reaches it."""
    pooled = [row[side] for row in rows for side in SIDES]
    if len(pooled) < 2:
        return {}
    edges = statistics.quantiles(pooled, n=4, method="inclusive")
    return {f"score >= {edge:.4g} (pooled q{round(100 * q)})": {
                "cases": len(rows), **{f"meets_{side}": _share([row[side] >= edge for row in rows]) for side in SIDES}}
            for q, edge in zip(BANDS, edges)}


def not_carried(by_rule: dict[str, dict]) -> list[str]:
    """The rules the guided samples fail to carry: scored no higher than the policy's own sample on them
    (paired mean), and not met by every guided sample (a rule every reply already meets is not a miss)."""
    return [name for name, row in by_rule.items()
            if row.get("margin") is not None and row["margin"] <= 0 and row["meets_guided"] < 1.0]


def warning(result: dict) -> str | None:
    """The sentence a run prints when the guided samples are not better than the policy's own by more
    than noise (margin - 2*SE at or below zero), naming the rules they fail to carry; None otherwise."""
    overall = result["overall"]
    margin = overall["margin_over_own"]
    if not margin["cases"] or margin["lower"] > 0:
        return None
    share = overall["guided_beats_own_original"]
    losing = ", under one half" if share < 0.5 else ""
    rules = result["not_carried"]
    if rules:
        named = "rules they fail to carry (no higher than its own sample): " + ", ".join(rules)
    elif result["by_rule"] and "margin" in next(iter(result["by_rule"].values())):
        named = "no single rule stands out: each scores higher guided, by less than noise overall"
    else:
        named = "a reward model names no rules; see the bands in guidance_check.json"
    return (f"DRIFT will pull this model toward replies no better than its own: its guided samples beat its own "
            f"original-prompt samples by {margin['margin']:+.3f} ± {margin['se']:.3f} (paired, {margin['cases']} cases; "
            f"margin - {NOISE_SES}*SE = {margin['lower']:+.3f}, not above zero) and in {share:.0%} of cases{losing}; {named}")


def check_summary(result: dict) -> dict:
    """What a run's summary.json keeps of a check: everything but the per-case rows."""
    return {key: value for key, value in result.items() if key != "cases"}


def format_check(result: dict) -> list[str]:
    """What a run prints of its check: the line (beats own, the paired margin, the rules not carried), the
    per-rule (or per-band) table and the warning. The per-kind shares and the cases stay in its file."""
    lines = [format_check_line(result), *format_table(result.get("by_rule") or {})]
    if result.get("warning"):
        lines.append(f"WARNING: {result['warning']}")
    return lines


def format_check_line(result: dict) -> str:
    """One line for the run's closing summary: beats own, the paired margin, the rules not carried."""
    overall = result["overall"]
    if not overall["cases"]:
        return "guidance check: no case had both samples"
    m = overall["margin_over_own"]
    missed = f"; not carried: {', '.join(result['not_carried'])}" if result.get("not_carried") else ""
    verdict = "above noise" if m["lower"] > 0 else "not above noise"
    return (f"guidance check: guided beats own in {overall['guided_beats_own_original']:.0%} of {overall['cases']} cases, "
            f"by {m['margin']:+.3f} ± {m['se']:.3f} paired ({verdict}){missed}")


def format_table(by_rule: dict[str, dict]) -> list[str]:
    """One line per rule or band: cases, the share meeting it (guided / own / DSAT), the mean scores."""
    if not by_rule:
        return []
    width = max(28, *(len(name) for name in by_rule))
    has_means = "mean_guided" in next(iter(by_rule.values()))
    header = f"  {'rule' if has_means else 'band':<{width}} {'cases':>5}  meets: guided   own  DSAT"
    lines = [header + ("   mean: guided    own   DSAT" if has_means else "")]
    for name, row in by_rule.items():
        line = (f"  {name:<{width}} {row['cases']:>5}  {row['meets_guided']:>13.2f} {row['meets_original']:>5.2f} "
                f"{row['meets_dsat']:>5.2f}")
        if has_means:
            line += f"  {row['mean_guided']:>13.3f} {row['mean_original']:>6.3f} {row['mean_dsat']:>6.3f}"
        lines.append(line)
    return lines


def gold_scorer(testbed_file: str | None = None) -> Scorer:
    """The testbed's rule-based gold reward against each case's conversation spec, with each rule's score."""
    from drift.eval.gold import conversation_of, gold_reward, load_specs

    specs = load_specs(testbed_file)

    def score(items: Sequence[tuple[DsatCase, str]]) -> list[Scored]:
        scored = []
        for case, text in items:
            gold = gold_reward(text, specs[conversation_of(case.case_id)])
            rules: dict[str, list[float]] = {}
            for rule in gold.rules:  # a rule named twice in one spec counts once, at its mean
                rules.setdefault(rule.rule, []).append(rule.score)
            scored.append(Scored(gold.score, {rule: sum(values) / len(values) for rule, values in rules.items()}))
        return scored

    return score


def reward_model_scorer(reward_cfg, device: str) -> Scorer:
    from drift.reward import prompt_text, score_replies

    return lambda items: [Scored(value) for value in score_replies(
        reward_cfg, [(prompt_text(case.history), text) for case, text in items], device=device)]


def scorer_name(config) -> str | None:
    """The guidance check's scorer for a run (method.guidance_check; auto: gold on the testbed), or None."""
    mode = config.method.guidance_check
    if mode == "gold" or (mode == "auto" and is_testbed(config.data.name)):
        return "gold reward"
    if mode == "reward":
        return f"reward model {config.reward.model}"
    return None


def pair_scorer_name(config) -> str | None:
    """The scorer method.chosen_filter compares the guided and own samples with: the check's where it has
    one, else gold on a testbed, else reward.model (None when that is empty)."""
    named = scorer_name(config)
    if named is not None:
        return named
    if is_testbed(config.data.name):
        return "gold reward"
    return f"reward model {config.reward.model}" if config.reward.model else None


def scorer_for(config, device: str, name: str | None = None) -> tuple[Scorer, Callable[[DsatCase], str] | None]:
    """The scorer ``name`` names (default: the check's, ``scorer_name``), and how cases are grouped into
    kinds (the testbed's stated and revealed preferences; None elsewhere)."""
    if (name or scorer_name(config)) == "gold reward":
        from drift.eval.gold import preference_kind

        kind_of = (lambda case: preference_kind(case.case_id)) if is_testbed(config.data.name) else None
        return gold_scorer(data_file(config.data)), kind_of
    return reward_model_scorer(config.reward, device), None
