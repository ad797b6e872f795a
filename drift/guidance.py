"""The guidance check: does DRIFT's premise hold for *this* model, this iteration?

DRIFT trains toward the reply the policy writes when shown the user's complaint (the guided
prompt) and away from the real DSAT reply. That helps only if the guided reply is better than
what the same policy already writes without the complaint. Per DSAT case this scores three
replies with the same scorer -- the guided sample, the DSAT reply, and the policy's own sample on
the original prompt -- and reports the share of cases where the guided sample beats (a) the DSAT
reply and (b) the policy's own original-prompt sample (ties count as not beating). Below one half
on (b), DRIFT pulls the model toward replies worse than its own, and the run says so loudly.

Scorers: the testbed's gold reward (rules, drift/eval/gold.py) on data=testbed, or a reward model
(method.guidance_check=reward with reward.model=<folder>) on real data.
"""

from __future__ import annotations

from typing import Callable, Sequence

from drift.data.records import DsatCase
from drift.data.sources import data_file, is_testbed

Scorer = Callable[[Sequence[tuple[DsatCase, str]]], list[float]]
WARNING = ("DRIFT will pull this model toward replies worse than its own: its guided samples beat its own "
           "original-prompt samples in only {share:.0%} of DSAT cases (under one half)")


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def guidance_check(cases: Sequence[DsatCase], guided: dict[str, str], original: dict[str, str], score: Scorer,
                   kind_of: Callable[[DsatCase], str] | None = None) -> dict:
    """Shares of cases where the guided sample beats the DSAT reply and the policy's own original-prompt
    sample, overall and per kind (``kind_of``: e.g. the testbed's stated / revealed), with mean scores."""
    usable = [case for case in cases if case.case_id in guided and case.case_id in original]
    items = [(case, text) for case in usable for text in (guided[case.case_id], case.dsat_reply, original[case.case_id])]
    scores = score(items)
    rows = []
    for index, case in enumerate(usable):
        g, d, o = scores[3 * index: 3 * index + 3]
        rows.append({"case_id": case.case_id, "kind": kind_of(case) if kind_of else "all",
                     "guided": g, "dsat": d, "original": o})

    def summary(subset: list[dict]) -> dict:
        mean = lambda key: round(sum(r[key] for r in subset) / len(subset), 4) if subset else None  # noqa: E731
        return {
            "cases": len(subset),
            "guided_beats_dsat": _share([r["guided"] > r["dsat"] for r in subset]),
            "guided_beats_own_original": _share([r["guided"] > r["original"] for r in subset]),
            "ties_with_own_original": _share([r["guided"] == r["original"] for r in subset]),
            "mean_guided": mean("guided"), "mean_dsat": mean("dsat"), "mean_original": mean("original"),
        }

    result = {"overall": summary(rows), "by_kind": {kind: summary([r for r in rows if r["kind"] == kind])
                                                    for kind in sorted({r["kind"] for r in rows})},
              "skipped_cases": len(cases) - len(usable), "cases": rows}
    share = result["overall"]["guided_beats_own_original"]
    result["warning"] = WARNING.format(share=share) if share is not None and share < 0.5 else None
    return result


def format_check(result: dict, label: str) -> str:
    overall = result["overall"]
    if not overall["cases"]:
        return f"guidance check ({label}): no case had both a guided and an original-prompt sample"
    lines = [f"guidance check ({label}, {overall['cases']} DSAT cases): guided sample beats the DSAT reply in "
             f"{overall['guided_beats_dsat']:.0%}, the policy's own original-prompt sample in "
             f"{overall['guided_beats_own_original']:.0%} (mean score guided {overall['mean_guided']:.3f}, "
             f"DSAT {overall['mean_dsat']:.3f}, original {overall['mean_original']:.3f})"]
    if len(result["by_kind"]) > 1:
        for kind, part in result["by_kind"].items():
            lines.append(f"  {kind}: {part['cases']} cases, beats DSAT {part['guided_beats_dsat']:.0%}, "
                         f"beats own original {part['guided_beats_own_original']:.0%}")
    if result["warning"]:
        lines.append(f"WARNING: {result['warning']}")
    return "\n".join(lines)


def gold_scorer(testbed_file: str | None = None) -> Scorer:
    """The testbed's rule-based gold reward against each case's conversation spec."""
    from drift.eval.gold import conversation_of, gold_reward, load_specs

    specs = load_specs(testbed_file)
    return lambda items: [gold_reward(text, specs[conversation_of(case.case_id)]).score for case, text in items]


def reward_model_scorer(reward_cfg, device: str) -> Scorer:
    from drift.reward import prompt_text, score_replies

    return lambda items: score_replies(reward_cfg, [(prompt_text(case.history), text) for case, text in items], device=device)


def scorer_name(config) -> str | None:
    """The guidance check's scorer for a run (method.guidance_check; auto: gold on the testbed), or None."""
    mode = config.method.guidance_check
    if mode == "gold" or (mode == "auto" and is_testbed(config.data.name)):
        return "gold reward"
    if mode == "reward":
        return f"reward model {config.reward.model}"
    return None


def scorer_for(config, device: str) -> tuple[Scorer, Callable[[DsatCase], str] | None]:
    """The scorer ``scorer_name`` names, and how cases are grouped into kinds (the testbed's stated and
    revealed preferences; None elsewhere)."""
    if scorer_name(config) == "gold reward":
        from drift.eval.gold import preference_kind

        kind_of = (lambda case: preference_kind(case.case_id)) if is_testbed(config.data.name) else None
        return gold_scorer(data_file(config.data)), kind_of
    return reward_model_scorer(config.reward, device), None
