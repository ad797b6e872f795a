"""method.chosen_filter: DRIFT's pairs against hand-made samples and scores, what it samples, its stage
key, and the refusal when no scorer exists."""

import pytest

from drift.compose import compose
from drift.config import Config, ConfigError
from drift.data.records import DsatCase, Records
from drift.methods import (
    GUIDED_NOT_BETTER,
    OWN_NOT_BETTER,
    build_pairs,
    chosen_counts,
    method_named,
)

ASK = ({"role": "user", "content": "Name a prime."},)
CASES = [DsatCase(name, ASK, dsat_reply=f"{name} dsat", feedback="Wrong.") for name in ("c1", "c2", "c3", "c4", "c5")]
RECORDS = Records(dsat_cases=CASES)
# c4's own sample was quarantined (cut or empty), c5's guided one
SAMPLES = {**{f"{c}#guided": [f"{c} guided"] for c in ("c1", "c2", "c3", "c4")},
           **{f"{c}#original": [f"{c} own"] for c in ("c1", "c2", "c3", "c5")}}
# (guided, own, DSAT); None: no usable sample, so not scored
SCORES = {"c1": (0.9, 0.5, 0.2),   # guided beats own: the guided pair, whatever the filter
          "c2": (0.4, 0.6, 0.2),   # own beats guided and DSAT: dropped, or the own sample chosen
          "c3": (0.3, 0.3, 0.5),   # a tie is not a win; own does not beat DSAT: no pair under either filter
          "c4": (0.1, None, 0.5),  # no own sample to beat: the finished guided reply is kept
          "c5": (None, 0.7, 0.1)}  # no guided sample: no_sample (drop) or the own sample (own_fallback)
REWARDS = {f"{c}#{kind}": [value] for c, values in SCORES.items()
           for kind, value in zip(("guided", "original", "dsat"), values) if value is not None}


def _pairs(chosen_filter: str):
    pairs, rejects = build_pairs("drift", RECORDS, SAMPLES, rewards=None if chosen_filter == "none" else REWARDS,
                                 chosen_filter=chosen_filter)
    return {p.pair_id.split(":")[0]: (p.chosen, p.rejected, p.source) for p in pairs}, {r.record_id: r.reason for r in rejects}


def test_none_is_the_papers_drift_every_guided_sample():
    pairs, rejects = _pairs("none")
    assert pairs == {c: (f"{c} guided", f"{c} dsat", "drift") for c in ("c1", "c2", "c3", "c4")}
    assert rejects == {"c5": "no_sample"}


def test_drop_keeps_a_case_only_where_the_guided_sample_beats_the_policys_own():
    pairs, rejects = _pairs("drop")
    assert pairs == {"c1": ("c1 guided", "c1 dsat", "drift"), "c4": ("c4 guided", "c4 dsat", "drift")}
    assert rejects == {"c2": GUIDED_NOT_BETTER, "c3": GUIDED_NOT_BETTER, "c5": "no_sample"}


def test_own_fallback_trains_the_own_sample_where_it_beats_the_dsat_reply():
    pairs, rejects = _pairs("own_fallback")
    assert pairs == {"c1": ("c1 guided", "c1 dsat", "drift"), "c4": ("c4 guided", "c4 dsat", "drift"),
                     "c2": ("c2 own", "c2 dsat", "drift:own"), "c5": ("c5 own", "c5 dsat", "drift:own")}
    assert rejects == {"c3": OWN_NOT_BETTER}
    built = build_pairs("drift", RECORDS, SAMPLES, rewards=REWARDS, chosen_filter="own_fallback")
    assert chosen_counts(*built) == {"guided_chosen": 2, "own_chosen": 2, GUIDED_NOT_BETTER: 0, OWN_NOT_BETTER: 1,
                                     "no_sample": 0, "identical_sides": 0}


def test_the_filter_scores_every_usable_sample_and_every_dsat_reply():
    wanted = method_named("drift").scored_for_filter(RECORDS, SAMPLES)
    assert sorted(key for key, _, _ in wanted) == sorted(REWARDS)
    assert all(text == (case.dsat_reply if key.endswith("#dsat") else SAMPLES[key][0]) for key, case, text in wanted)
    with pytest.raises(ValueError, match="applies to drift"):
        build_pairs("spin", RECORDS, SAMPLES, rewards=REWARDS, chosen_filter="drop")


def _compose(*overrides: str) -> Config:
    return compose("config", ["model=tiny", *overrides], Config)


def test_the_filter_samples_every_original_prompt_and_is_part_of_the_pairs_key():
    from drift.backends import resolve_sampler
    from drift.data import load_records
    from drift.plan import sample_job, stage_plan

    plain, dropping = _compose("data=testbed_compact"), _compose("data=testbed_compact", "method.chosen_filter=drop")
    records = load_records(plain.data)
    sampler, _ = resolve_sampler(plain.sampler, "cpu")
    originals = [row for row in sample_job(dropping, records, sampler, "", None).prompts if row["prompt_id"].endswith("#original")]
    assert len(originals) == len(records.dsat_cases) > plain.method.guidance_check_cases

    def pairs_key(config):
        stage = next(s for s in stage_plan(config, records, sampler) if s.name == "iter_1/pairs")
        return stage.make_key(["samples"]).settings

    assert "method.chosen_filter" not in pairs_key(plain)  # earlier runs keep their keys
    assert pairs_key(dropping)["method.chosen_filter"] == "drop"
    assert pairs_key(dropping)["method.chosen_filter.scorer"] == "gold reward"
    assert pairs_key(_compose("data=testbed_compact", "method.chosen_filter=own_fallback")) != pairs_key(dropping)


def test_refused_before_any_work_without_a_scorer_or_for_another_method(tmp_path):
    from drift.preflight import check_chosen_filter, check_run

    run_dir = tmp_path / "run"
    no_scorer = _compose("data=fixture", "method.chosen_filter=drop", f"reward.model={tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match=r"^method.chosen_filter=drop needs a scorer and this run has none: data=fixture "
                                          r"has no gold reward and reward.model \(.*missing\) is not on this machine; "):
        check_run(no_scorer, run_dir)
    assert not run_dir.exists()
    with pytest.raises(ConfigError, match="reward.model is not set"):
        check_chosen_filter(_compose("data=fixture", "method.chosen_filter=own_fallback", "reward.model="))
    with pytest.raises(ConfigError, match="method spin does not; set method.chosen_filter=none"):
        check_chosen_filter(_compose("data=testbed_compact", "method=spin", "method.chosen_filter=drop"))
    check_chosen_filter(_compose("data=testbed_compact", "method.chosen_filter=drop"))  # gold on the testbed
    reward_folder = tmp_path / "reward"
    reward_folder.mkdir()
    (reward_folder / "config.json").write_text("{}")
    check_chosen_filter(_compose("data=fixture", "method.chosen_filter=drop", f"reward.model={reward_folder}"))
    with pytest.raises(ConfigError, match="method.chosen_filter must be one of none, drop, own_fallback, got 'maybe'"):
        _compose("method.chosen_filter=maybe")
