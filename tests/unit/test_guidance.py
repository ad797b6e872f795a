"""The guidance check against shares, tables and margins counted by hand."""

import math

import pytest

from drift.data.records import DsatCase
from drift.guidance import Scored, check_summary, format_check, format_check_line, guidance_check, paired_margin

ASK = ({"role": "user", "content": "q"},)


def case(case_id: str, dsat: str) -> DsatCase:
    return DsatCase(case_id, ASK, dsat_reply=dsat, feedback="no")


def number_scorer(items):
    """A reward-model-like scorer: the reply is its own score, no rules."""
    return [Scored(float(text)) for _, text in items]


def rule_scorer(items):
    """A gold-like scorer: the reply names its rule scores ("w=1,q=0"); the score is their mean."""
    scored = []
    for _, text in items:
        rules = {name: float(value) for name, value in (part.split("=") for part in text.split(","))}
        scored.append(Scored(sum(rules.values()) / len(rules), rules))
    return scored


def test_shares_by_hand_ties_do_not_count_and_a_missing_sample_skips_the_case():
    cases = [case("a", "1"), case("b", "5"), case("c", "2"), case("d", "0"), case("e", "0")]
    guided = {"a": "3", "b": "4", "c": "2", "d": "9"}          # e has no guided sample: skipped
    original = {"a": "2", "b": "6", "c": "2", "d": "1", "e": "1"}
    kinds = {"a": "stated", "b": "stated", "c": "revealed", "d": "revealed"}
    result = guidance_check(cases, guided, original, number_scorer, kind_of=lambda c: kinds[c.case_id])
    overall = result["overall"]
    # beats DSAT: a (3>1), c (2>2 no), b (4>5 no), d (9>0) -> 2/4; beats own: a (3>2), d (9>1) -> 2/4; tie: c
    assert (overall["cases"], overall["guided_beats_dsat"], overall["guided_beats_own_original"]) == (4, 0.5, 0.5)
    assert overall["ties_with_own_original"] == 0.25 and result["skipped_cases"] == 1
    assert overall["mean_guided"] == 4.5 and overall["mean_dsat"] == 2.0 and overall["mean_original"] == 2.75
    assert result["by_kind"]["stated"]["guided_beats_own_original"] == 0.5  # a yes, b no
    assert result["by_kind"]["revealed"]["guided_beats_dsat"] == 0.5  # c tie, d yes
    # guided - own: 1, -2, 0, 8 -> mean 1.75; sample variance (0.5625 + 14.0625 + 3.0625 + 39.0625) / 3
    margin = overall["margin_over_own"]
    assert margin["margin"] == 1.75 and margin["se"] == round(math.sqrt(56.75 / 3 / 4), 4) and margin["cases"] == 4


def test_the_per_rule_table_by_hand():
    # a, b: revealed, rules w and q; c: stated, rule x. Order of a case's replies: guided, own, DSAT
    cases = [case("a", "w=0,q=0"), case("b", "w=0,q=0"), case("c", "x=0")]
    guided = {"a": "w=1,q=0", "b": "w=1,q=0", "c": "x=1"}
    original = {"a": "w=1,q=1", "b": "w=0.5,q=0", "c": "x=0"}
    kinds = {"a": "revealed", "b": "revealed", "c": "stated"}
    result = guidance_check(cases, guided, original, rule_scorer, kind_of=lambda c: kinds[c.case_id])
    table = result["by_rule"]
    assert list(table) == ["revealed/q", "revealed/w", "stated/x"]
    # q: guided meets it in neither case, own in a, DSAT in neither; own - guided differences 1 and 0
    assert table["revealed/q"] == {"cases": 2, "meets_guided": 0.0, "meets_original": 0.5, "meets_dsat": 0.0,
                                   "mean_guided": 0.0, "mean_original": 0.5, "mean_dsat": 0.0,
                                   "margin": -0.5, "se": 0.5}
    # w: guided 1 and 1, own 1 and 0.5 (0.5 does not meet it): differences 0 and 0.5
    assert table["revealed/w"] == {"cases": 2, "meets_guided": 1.0, "meets_original": 0.5, "meets_dsat": 0.0,
                                   "mean_guided": 1.0, "mean_original": 0.75, "mean_dsat": 0.0,
                                   "margin": 0.25, "se": 0.25}
    assert table["stated/x"] == {"cases": 1, "meets_guided": 1.0, "meets_original": 0.0, "meets_dsat": 0.0,
                                 "mean_guided": 1.0, "mean_original": 0.0, "mean_dsat": 0.0, "margin": 1.0, "se": 0.0}
    # the rule the guided samples fail to carry: q (no higher than own, and not met by every guided sample)
    assert result["not_carried"] == ["revealed/q"]
    lines = format_check(result)
    assert lines[0] == format_check_line(result) and "not carried: revealed/q" in lines[0]
    assert "revealed/q" in lines[2] and "0.00  0.50  0.00" in lines[2]  # under the table's header
    assert "cases" not in check_summary(result) and check_summary(result)["by_rule"] == table


def test_paired_margin_and_se_against_a_plain_computation():
    differences = [0.3, -0.1, 0.25, 0.0, 0.4, -0.2, 0.15]
    n = len(differences)
    mean = sum(differences) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1)) / math.sqrt(n)
    assert paired_margin(differences) == {"margin": round(mean, 4), "se": round(se, 4),
                                          "lower": round(mean - 2 * se, 4), "cases": n}
    assert paired_margin([]) == {"margin": None, "se": None, "lower": None, "cases": 0}


def test_the_warning_fires_when_the_margin_is_within_noise_even_if_guided_wins_more_often_than_not():
    cases = [case("a", "w=0,q=0"), case("b", "w=0,q=0"), case("c", "x=0")]
    guided = {"a": "w=1,q=0", "b": "w=1,q=0", "c": "x=1"}
    original = {"a": "w=1,q=1", "b": "w=0.5,q=0", "c": "x=0"}
    result = guidance_check(cases, guided, original, rule_scorer, kind_of=lambda c: "stated" if c.case_id == "c" else "revealed")
    # guided - own overall: a 0.5 - 1 = -0.5, b 0.5 - 0.25 = 0.25, c 1 - 0 = 1: beats own 2 of 3 times
    assert result["overall"]["guided_beats_own_original"] == pytest.approx(2 / 3, abs=1e-4)
    margin = result["overall"]["margin_over_own"]
    assert margin["margin"] == 0.25 and margin["lower"] == round(0.25 - 2 * math.sqrt(0.5625 / 3), 4) < 0
    assert "no better than its own" in result["warning"] and "revealed/q" in result["warning"]
    assert "under one half" not in result["warning"]
    assert format_check(result)[-1].startswith("WARNING: DRIFT will pull this model")
    assert "not above noise" in format_check_line(check_summary(result))


def test_no_warning_when_the_margin_clears_two_standard_errors():
    cases = [case(name, "0") for name in "abcd"]
    # guided - own: 1.0, 1.1, 0.9, 1.0 -> mean 1.0, SE ~0.04
    result = guidance_check(cases, {"a": "2", "b": "2.1", "c": "1.9", "d": "2"}, dict.fromkeys("abcd", "1"), number_scorer)
    assert result["overall"]["margin_over_own"]["lower"] > 0 and result["warning"] is None


def test_under_one_half_warns_loudly():
    cases = [case("a", "0"), case("b", "0"), case("c", "0")]
    result = guidance_check(cases, {"a": "1", "b": "1", "c": "3"}, {"a": "2", "b": "2", "c": "2"}, number_scorer)
    assert result["overall"]["guided_beats_dsat"] == 1.0
    assert abs(result["overall"]["guided_beats_own_original"] - 1 / 3) < 1e-3
    assert "under one half" in result["warning"]  # margin (-1 -1 +1)/3, SE 0.667: within noise


def test_a_reward_model_is_reported_per_score_band():
    cases = [case(name, dsat) for name, dsat in zip("abcd", ("3", "2", "1", "0"))]
    guided = dict(zip("abcd", ("11", "10", "9", "8")))
    original = dict(zip("abcd", ("7", "6", "5", "4")))
    bands = guidance_check(cases, guided, original, number_scorer)["by_rule"]
    # the twelve scores 0..11 pooled: quartiles at 2.75, 5.5, 8.25 (linear between order statistics)
    assert list(bands) == ["score >= 2.75 (pooled q25)", "score >= 5.5 (pooled q50)", "score >= 8.25 (pooled q75)"]
    assert [(b["meets_guided"], b["meets_original"], b["meets_dsat"]) for b in bands.values()] == [
        (1.0, 1.0, 0.25), (1.0, 0.5, 0.0), (0.75, 0.0, 0.0)]
