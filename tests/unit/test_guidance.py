"""The guidance check against shares counted by hand."""

from drift.data.records import DsatCase
from drift.guidance import format_check, guidance_check

ASK = ({"role": "user", "content": "q"},)


def case(case_id: str, dsat: str) -> DsatCase:
    return DsatCase(case_id, ASK, dsat_reply=dsat, feedback="no")


def test_shares_by_hand_ties_do_not_count_and_a_missing_sample_skips_the_case():
    # the scorer reads a number off the reply: guided vs DSAT vs own original
    cases = [case("a", "1"), case("b", "5"), case("c", "2"), case("d", "0"), case("e", "0")]
    guided = {"a": "3", "b": "4", "c": "2", "d": "9"}          # e has no guided sample: skipped
    original = {"a": "2", "b": "6", "c": "2", "d": "1", "e": "1"}
    kinds = {"a": "stated", "b": "stated", "c": "revealed", "d": "revealed"}
    result = guidance_check(cases, guided, original, lambda items: [float(text) for _, text in items],
                            kind_of=lambda c: kinds[c.case_id])
    overall = result["overall"]
    # beats DSAT: a (3>1), c (2>2 no), b (4>5 no), d (9>0) -> 2/4; beats own: a (3>2), d (9>1) -> 2/4; tie: c
    assert (overall["cases"], overall["guided_beats_dsat"], overall["guided_beats_own_original"]) == (4, 0.5, 0.5)
    assert overall["ties_with_own_original"] == 0.25 and result["skipped_cases"] == 1
    assert overall["mean_guided"] == 4.5 and overall["mean_dsat"] == 2.0 and overall["mean_original"] == 2.75
    assert result["by_kind"]["stated"]["guided_beats_own_original"] == 0.5  # a yes, b no
    assert result["by_kind"]["revealed"]["guided_beats_dsat"] == 0.5  # c tie, d yes
    assert result["warning"] is None  # one half is not under one half


def test_under_one_half_warns_loudly():
    cases = [case("a", "0"), case("b", "0"), case("c", "0")]
    result = guidance_check(cases, {"a": "1", "b": "1", "c": "3"}, {"a": "2", "b": "2", "c": "2"},
                            lambda items: [float(text) for _, text in items])
    assert result["overall"]["guided_beats_dsat"] == 1.0
    assert abs(result["overall"]["guided_beats_own_original"] - 1 / 3) < 1e-3
    assert "toward replies worse than its own" in result["warning"]
    assert "WARNING: DRIFT will pull this model" in format_check(result, "iter_1")
