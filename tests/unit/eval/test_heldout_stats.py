"""Held-out gold with several replies per prompt, its standard error, and the paired gain between
two checkpoints: checked against values worked out by hand."""

import math

import pytest

from drift.config import EvalConfig, SamplerConfig
from drift.eval.heldout import eval_sampler, format_eval, mean_and_se, paired_gain, prompt_means, summarize


def scored(prompt_id, score, kind="stated"):
    return {"prompt_id": prompt_id, "kind": kind, "score": score, "rules": {"max_words": score}, "cut": False, "words": 10}


def test_prompt_means_average_each_prompts_replies_and_count_a_missing_one_as_zero():
    rows = [scored("a", 1.0), scored("a", 0.5), scored("b", 0.25)]  # b's second reply is missing
    assert prompt_means(rows, ["a", "b", "c"], samples_per_prompt=2) == {"a": 0.75, "b": 0.125, "c": 0.0}


def test_summary_gold_is_over_prompts_times_replies():
    rows = [scored("a", 1.0), scored("a", 0.5), scored("b", 0.25)]
    # (1.0 + 0.5 + 0.25) / (2 prompts * 2 replies)
    assert summarize(rows, prompts=2, samples_per_prompt=2)["gold"] == pytest.approx(0.4375)


def test_mean_and_standard_error_by_hand():
    mean, se = mean_and_se([0.0, 1.0, 0.5, 0.5])
    # sample variance: (0.25 + 0.25 + 0 + 0) / 3 = 1/6; se = sqrt(1/6 / 4)
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(1 / 24))


def test_paired_gain_cancels_the_prompts_own_spread():
    earlier = {"prompt_gold": {"a": 0.1, "b": 0.9, "c": 0.5}}
    later = {"prompt_gold": {"a": 0.2, "b": 1.0, "c": 0.6}}  # +0.1 on every prompt
    gain = paired_gain(later, earlier)
    assert gain["gain"] == pytest.approx(0.1)
    assert gain["se"] == pytest.approx(0.0, abs=1e-9)  # an unpaired SE would be ~0.23
    assert gain["prompts"] == 3
    assert paired_gain({"gold": 0.5}, earlier) is None  # an old summary without per-prompt gold


def test_eval_sampler_draws_the_configured_replies_and_keeps_cut_ones():
    sampler = eval_sampler(SamplerConfig(), max_new_tokens=99, samples_per_prompt=3)
    assert (sampler.num_samples, sampler.max_new_tokens, sampler.truncated) == (3, 99, "keep")


def test_samples_per_prompt_must_be_positive():
    with pytest.raises(ValueError, match="eval.samples_per_prompt must be >= 1, got 0"):
        EvalConfig(samples_per_prompt=0).validate()


def test_format_eval_prints_the_gain_over_the_warm_start_with_its_se():
    def result(gold, prompt_gold):
        kinds = {kind: {"gold": gold} for kind in ("stated", "revealed")}
        return {"gold": gold, "gold_se": 0.01, "gold_finished": gold, "cut_share": 0.0, "mean_words": 10.0,
                "by_kind": kinds, "prompt_gold": prompt_gold}

    table = format_eval({"base": result(0.2, {"a": 0.2, "b": 0.2}), "warmstart": result(0.4, {"a": 0.3, "b": 0.5}),
                         "iter_1": result(0.5, {"a": 0.5, "b": 0.5})})
    # iter_1 - warmstart per prompt: +0.2, 0.0 -> mean 0.1, se = sqrt(0.02 / 2) = 0.1
    assert "iter_1     gain (paired, ± SE): +0.300 ± 0.000 over base, +0.100 ± 0.100 over warmstart" in table
