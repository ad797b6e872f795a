"""benchmarks/guidance_compare.py's report: paired gains per kind and their mean over seeds, by hand."""

import math
from pathlib import Path

import pytest

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def compare_module():
    return load_script("benchmarks/guidance_compare.py")


KINDS = {"stated": ["s1", "s2"], "revealed": ["r1", "r2"]}


def result(**gold: float) -> dict:
    by_kind = {kind: {"gold": sum(gold[p] for p in prompts) / 2} for kind, prompts in KINDS.items()}
    return {"gold": sum(gold.values()) / 4, "gold_se": 0.1, "prompt_gold": gold, "by_kind": by_kind}


def report(warm: dict, last: dict) -> dict:
    return {"run": "r", "last": "iter_1", "heldout": {"base": warm, "warmstart": warm, "iter_1": last},
            "warmstart_from": None, "sampling_seconds": 10.0, "minutes": 1.0, "guidance_check": None,
            "chosen_filter": None, "pairs": 4}


def test_paired_gains_overall_and_per_kind_by_hand():
    compare = compare_module()
    warm = result(s1=0.5, s2=0.5, r1=0.2, r2=0.4)
    drift = result(s1=0.6, s2=0.4, r1=0.4, r2=0.4)      # differences 0.1, -0.1, 0.2, 0.0
    spin = result(s1=0.7, s2=0.5, r1=0.2, r2=0.4)       # over DRIFT: 0.1, 0.1, -0.2, 0.0
    rows = compare.seed_rows({"drift": report(warm, drift), "spin": report(warm, spin)}, KINDS)
    over = rows["drift"]["over_warmstart"]
    # overall: mean 0.05, sample SD sqrt((0.0025 + 0.0225 + 0.0225 + 0.0025) / 3), SE = SD / 2
    assert over["all"]["gain"] == 0.05 and over["all"]["se"] == round(math.sqrt(0.05 / 3) / 2, 4)
    # stated: 0.1 and -0.1 -> 0 ± 0.1; revealed: 0.2 and 0 -> 0.1 ± 0.1
    assert (over["stated"]["gain"], over["stated"]["se"]) == (0.0, 0.1)
    assert (over["revealed"]["gain"], over["revealed"]["se"], over["revealed"]["prompts"]) == (0.1, 0.1, 2)
    assert rows["drift"]["over_drift"] is None
    versus = rows["spin"]["over_drift"]
    assert (versus["stated"]["gain"], versus["stated"]["se"]) == (0.1, 0.0)
    assert (versus["revealed"]["gain"], versus["revealed"]["se"]) == (-0.1, 0.1)


def test_the_mean_over_seeds_carries_the_runs_error_and_the_seeds_spread():
    compare = compare_module()
    across = compare.across_seeds([{"gain": 0.1, "se": 0.03}, {"gain": -0.02, "se": 0.04}, None, {"gain": 0.04, "se": 0.0}])
    mean = (0.1 - 0.02 + 0.04) / 3
    spread = math.sqrt(((0.1 - mean) ** 2 + (-0.02 - mean) ** 2 + (0.04 - mean) ** 2) / 2 / 3)
    assert across == {"gain": round(mean, 4), "se_runs": round(math.sqrt(0.03 ** 2 + 0.04 ** 2) / 3, 4),
                      "se_seeds": round(spread, 4), "seeds": 3, "per_seed": [0.1, -0.02, 0.04]}
    assert compare.across_seeds([{"gain": 0.1, "se": 0.03}])["se_seeds"] is None
    assert compare.across_seeds([None]) is None


def test_the_runs_share_the_reference_runs_warm_start():
    compare = compare_module()
    labels = compare.methods(["own_fallback"])
    assert list(labels) == ["drift", "drift_own_fallback", "drift_unguided", "spin"]
    runs = Path("/runs")
    first = compare.command("drift", labels["drift"], 11, runs, 4, ["model=tiny"])
    other = compare.command("spin", labels["spin"], 11, runs, 4, ["model=tiny"])
    assert not any(arg.startswith("method.warmstart_from=") for arg in first)
    assert "method.warmstart_from=/runs/drift_s11" in other and other[-1] == "model=tiny"
    assert "method.chosen_filter=own_fallback" in compare.command("drift_own_fallback", labels["drift_own_fallback"], 11,
                                                                   runs, 4, [])
    with pytest.raises(ValueError):
        compare.last_stage({"base": {}, "warmstart": {}})
