"""The verifiable testbed: gold reward rules on hand-written replies, the shipped conversations, and
the report on a hand-made run folder (numbers checked against plain formulas here)."""

import json
import math
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from drift.commands import invoke
from drift.data import DataConfig, load_records
from drift.eval import testbed as report
from drift.eval.gold import SpecError, conversation_of, gold_reward, load_specs, validate_spec

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "drift" / "data" / "fixtures"
sys.path.insert(0, str(FIXTURES))
from testbed_conversations import TESTBED_CONVERSATIONS  # noqa: E402


def score(reply: str, **rule) -> float:
    return gold_reward(reply, [rule]).score


# ---------------------------------------------------------------- each rule on replies whose answer we know

@pytest.mark.parametrize("reply, rule, expected", [
    # words: "don't" and "well-known" are one word each
    ("I don't know the well-known answer.", {"rule": "max_words", "limit": 6}, 1.0),
    ("one two three four", {"rule": "max_words", "limit": 3}, 3 / 4),
    ("one two", {"rule": "min_words", "limit": 4}, 2 / 4),
    ("one two three four five", {"rule": "min_words", "limit": 4}, 1.0),
    ("One. Two! Three?", {"rule": "max_sentences", "limit": 1}, 1 / 3),
    ("A single sentence, with a clause.", {"rule": "max_sentences", "limit": 1}, 1.0),
    ("Items:\n- apples\n* pears\n• plums", {"rule": "bullet_list", "min_items": 3}, 1.0),
    ("- only one", {"rule": "bullet_list", "min_items": 4}, 1 / 4),
    ("-not a bullet (no space)\nplain line", {"rule": "bullet_list"}, 0.0),
    ("1. tent\n2. stove", {"rule": "bullet_list", "min_items": 4}, 2 / 4),  # a numbered list is a list too
    ("1. Boil.\n2) Pour.\n3. Steep.", {"rule": "numbered_steps", "min_items": 3}, 1.0),
    ("First boil, then pour, then steep.", {"rule": "numbered_steps", "min_items": 3}, 0.0),
    ("Step 1: Boil.\nStep 2: Pour.", {"rule": "numbered_steps", "min_items": 4}, 2 / 4),
    ("- Boil.\n- Pour.", {"rule": "numbered_steps", "min_items": 2}, 0.0),
    ("Prose only, in 2 sentences. Done in 3 minutes.", {"rule": "no_list"}, 1.0),
    ("Two things:\n1. this", {"rule": "no_list"}, 0.0),
    ("Use a set. For instance, {1, 2} has two items.", {"rule": "include_example"}, 1.0),
    ("Fruit, e.g. apples.", {"rule": "include_example"}, 1.0),
    ("An exemplary answer without one.", {"rule": "include_example"}, 0.0),
    ("Le chat dort sur le canapé avec nous.", {"rule": "language", "code": "fr"}, 1.0),
    ("The cat sleeps on the sofa with us.", {"rule": "language", "code": "fr"}, 0.0),
    # le: French; is, the: English; "on" is a function word in both and counts for neither
    ("Le chat is on the table", {"rule": "language", "code": "fr"}, 1 / 3),
    ("Die Katze schläft auf dem Sofa.", {"rule": "language", "code": "de"}, 1.0),
    ("Explain it in words; no snippets needed.", {"rule": "no_code"}, 1.0),
    ("Like this:\n```\nx = 1\n```", {"rule": "no_code"}, 0.0),
    ("Write:\ndef f(x):\n    return x", {"rule": "no_code"}, 0.0),
    ("Run\nSELECT name FROM users", {"rule": "no_code"}, 0.0),
    ("Shall we go on?", {"rule": "ends_with_question"}, 1.0),
    ('He asked "ready?"\n', {"rule": "ends_with_question"}, 1.0),
    ("Is it? No, it is not.", {"rule": "ends_with_question"}, 0.0),
    ("The price is 300 dollars.", {"rule": "must_include", "terms": ["price", "aperture"]}, 1 / 2),
    ("Prices vary.", {"rule": "must_include", "terms": ["price"]}, 0.0),  # whole words only
    ("We apologize for it.", {"rule": "avoid", "terms": ["sorry", "apologize"]}, 1 / 2),
    ("Your parcel arrives Friday.", {"rule": "avoid", "terms": ["sorry", "apologize"]}, 1.0),
    ('{"name": "Ada", "email": "a@b.c"}', {"rule": "json_object", "keys": ["name", "email", "phone"]}, 2 / 3),
    ('```json\n{"name": "Ada"}\n```', {"rule": "json_object", "keys": ["name", "age"]}, 0.5 * 1 / 2),  # fenced: half
    ('Here it is: {"name": "Ada"}', {"rule": "json_object", "keys": ["name"]}, 0.0),
    ('["name"]', {"rule": "json_object", "keys": ["name"]}, 0.0),
    ("| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |", {"rule": "table", "min_rows": 3}, 2 / 3),
    ("| a | b |\n| 1 | 2 |", {"rule": "table"}, 0.0),  # no separator line
    ("Yes, you can.", {"rule": "starts_with", "options": ["Yes", "No"]}, 1.0),
    ("**No.** Never.", {"rule": "starts_with", "options": ["Yes", "No"]}, 1.0),
    ("Yesterday I said no.", {"rule": "starts_with", "options": ["Yes", "No"]}, 0.0),
])
def test_rule_scores(reply, rule, expected):
    assert score(reply, **rule) == pytest.approx(expected, abs=1e-6)


def test_reply_score_is_the_mean_and_passes_only_when_every_rule_does():
    spec = [{"rule": "bullet_list", "min_items": 2}, {"rule": "max_words", "limit": 2}]
    gold = gold_reward("- one\n- two three", spec)  # 2 bullets (1.0); 3 words over a limit of 2 (2/3)
    assert gold.score == pytest.approx((1.0 + 2 / 3) / 2, abs=1e-6)
    assert not gold.passed
    assert [rule.rule for rule in gold.rules] == ["bullet_list", "max_words"]
    assert gold_reward("- a\n- b", spec).passed


@pytest.mark.parametrize("spec, message", [
    ([{"rule": "shout"}], "unknown rule 'shout'"),
    ([{"rule": "max_words"}], "missing parameter"),
    ([{"rule": "max_words", "limit": 0}], "limit must be a positive integer"),
    ([{"rule": "max_words", "limit": 10, "max": 3}], "unknown parameter"),
    ([{"rule": "language", "code": "xx"}], "code 'xx' is not one of"),
    ([{"rule": "avoid", "terms": []}], "terms must be a list of non-empty strings"),
    ([], "non-empty list of rules"),
])
def test_bad_specs_are_named(spec, message):
    with pytest.raises(SpecError, match=message):
        validate_spec(spec, "conv-x")


# ---------------------------------------------------------------- the shipped conversations

def test_every_dsat_reply_breaks_its_preference_and_every_revision_meets_it():
    assert 40 <= len(TESTBED_CONVERSATIONS) <= 60
    for conv in TESTBED_CONVERSATIONS:
        assert gold_reward(conv["dsat_reply"], conv["spec"]).score < 1.0, conv["id"]
        revision = gold_reward(conv["revision"], conv["spec"])
        assert revision.passed, (conv["id"], revision)


def test_shipped_file_is_what_the_builder_writes(tmp_path):
    from testbed_build import main

    main(tmp_path)
    assert (tmp_path / "testbed.jsonl").read_text() == (FIXTURES / "testbed.jsonl").read_text()


def test_testbed_source_yields_dsat_cases_sat_replies_and_seed_pairs_with_specs():
    records = load_records(DataConfig(name="testbed", path=str(FIXTURES / "testbed.jsonl")))
    seeds = [c for c in TESTBED_CONVERSATIONS if c.get("seed")]
    assert (len(records.dsat_cases), len(records.sat_replies), len(records.seed_pairs), len(records.rejects)) == (
        len(TESTBED_CONVERSATIONS), len(seeds), len(seeds), 0)
    specs = load_specs(FIXTURES / "testbed.jsonl")
    by_id = {c["id"]: c for c in TESTBED_CONVERSATIONS}
    for case in records.dsat_cases:
        conversation = conversation_of(case.case_id)
        assert specs[conversation] == by_id[conversation]["spec"]
        assert case.dsat_reply == by_id[conversation]["dsat_reply"] and case.feedback == by_id[conversation]["feedback"]
    for pair in records.seed_pairs:
        assert pair.chosen == by_id[conversation_of(pair.pair_id)]["revision"]


def test_a_spec_file_line_that_is_not_a_json_object_is_named(tmp_path):
    first, rest = (FIXTURES / "testbed.jsonl").read_text(encoding="utf-8").split("\n", 1)
    for bad, problem in (('{"conversation_id": ', "not valid JSON"), ("[1, 2]", "a JSON list, not an object")):
        path = tmp_path / "testbed.jsonl"
        path.write_text(f"{first}\n{bad}\n{rest}", encoding="utf-8")
        with pytest.raises(SpecError, match=rf"testbed\.jsonl:2: {problem}"):
            load_specs(path)


def test_conversation_of_reads_prompt_and_pair_ids():
    assert conversation_of("tb-words-volcano/t2#guided") == "tb-words-volcano"
    assert conversation_of("tb-words-volcano/t3:spin") == "tb-words-volcano"


def test_yaml_keys_match_the_data_config():
    from dataclasses import fields

    # the file over its schema, as Hydra composes it (the file holds only what differs)
    composed = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(ROOT / "conf" / "data" / "testbed.yaml"))
    cfg = OmegaConf.to_container(composed)
    assert set(cfg) == {f.name for f in fields(DataConfig)} and cfg["name"] == "testbed"
    DataConfig(**cfg).validate()


# ---------------------------------------------------------------- the report on a hand-made run

def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "drift_tiny_testbed"
    (run / ".hydra").mkdir(parents=True)
    # the hand-written testbed (data=testbed now defaults to the composed one)
    (run / ".hydra" / "config.yaml").write_text(
        f"method:\n  name: drift\ndata:\n  name: testbed\n  path: {FIXTURES / 'testbed.jsonl'}\n")
    _write_jsonl(run / "iter_0" / "train" / "metrics.jsonl",
                 [{"step": 1, "margin": 0.0, "accuracy": 0.0, "gradient_weight": 0.5, "loss": 0.69}])
    _write_jsonl(run / "iter_1" / "sample" / "samples.jsonl", [
        # volcano: max_words 40 -> 3 words pass (1.0); seed conversation
        {"prompt_id": "tb-words-volcano/t2#guided", "sample_index": 0, "text": "Magma rises, erupts.", "finish_reason": "stop"},
        # camping: bullet_list 4 -> 2 bullets = 0.5; seed conversation
        {"prompt_id": "tb-bullets-camping/t2#guided", "sample_index": 0, "text": "- tent\n- stove", "finish_reason": "length"},
        # inflation: max_words 50 -> 100 words = 0.5; not a seed conversation
        {"prompt_id": "tb-words-inflation/t2#guided", "sample_index": 0, "text": " ".join(["word"] * 100), "finish_reason": "length"},
    ])
    _write_jsonl(run / "iter_1" / "train" / "metrics.jsonl", [
        {"step": 1, "margin": 1.0, "accuracy": 1.0, "gradient_weight": 0.3, "loss": 0.4},
        {"step": 2, "margin": -2.0, "accuracy": 0.0, "gradient_weight": 0.8, "loss": 2.0},
    ])
    _write_jsonl(run / "iter_1" / "train" / "pair_metrics.jsonl", [
        {"step": 1, "pair_id": "a", "logit": 1.0}, {"step": 1, "pair_id": "b", "logit": 3.0},
        {"step": 2, "pair_id": "c", "logit": -2.0},
    ])
    return run


def test_report_on_a_hand_made_run(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert invoke("testbed", [f"run={run}", "eval=none"]) == 0
    result = json.loads((run / "testbed_report.json").read_text())["runs"][0]
    assert result["method"] == "drift"
    warm, first = result["stages"]
    assert "samples" not in warm and warm["train"]["gradient_weight"] == pytest.approx(0.5)
    samples = first["samples"]
    assert samples["samples"] == 3
    assert samples["gold"] == pytest.approx((1.0 + 0.5 + 0.5) / 3, abs=1e-6)
    assert samples["pass_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert samples["cut_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert samples["gold_seed_conversations"] == pytest.approx(0.75) and samples["gold_other_conversations"] == pytest.approx(0.5)
    assert first["samples_by_kind"]["guided"]["samples"] == 3
    # per pair: plain formulas over the three logits
    logits = [1.0, 3.0, -2.0]
    train = first["train"]
    assert train["margin"] == pytest.approx(sum(logits) / 3, abs=1e-6)
    assert train["gradient_weight"] == pytest.approx(sum(1 / (1 + math.exp(s)) for s in logits) / 3, abs=1e-6)
    assert train["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert train["steps"] == 2 and train["margin_last_step"] == -2.0
    # the real DSAT replies are the floor the table states
    dsat = [gold_reward(c["dsat_reply"], c["spec"]).score for c in TESTBED_CONVERSATIONS]
    assert result["dsat_replies"]["gold"] == pytest.approx(sum(dsat) / len(dsat), abs=1e-5)
    assert "| drift_tiny_testbed | 1 | guided 3 | 3 | 0.667 |" in (run / "testbed_report.md").read_text()


def test_report_refuses_bad_input(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert invoke("testbed", ["eval=none"]) == 2
    assert "give at least one run=" in capsys.readouterr().err
    assert invoke("testbed", [f"run={run}", "eval=maybe"]) == 2
    assert "eval must be one of last, all, none" in capsys.readouterr().err
    assert invoke("testbed", [f"run={run}", "tau=1"]) == 2
    assert "unknown key 'tau'; known keys: data, eval, out, run" in capsys.readouterr().err
    (run / ".hydra" / "config.yaml").write_text("method:\n  name: drift\ndata:\n  name: fixture\n  path: null\n")
    assert invoke("testbed", [f"run={run}", "eval=none"]) == 2
    assert "not data=testbed" in capsys.readouterr().err
    _write_jsonl(run / "iter_1" / "sample" / "samples.jsonl",
                 [{"prompt_id": "conv3/t2#guided", "sample_index": 0, "text": "hi", "finish_reason": "stop"}])
    (run / ".hydra" / "config.yaml").unlink()
    assert invoke("testbed", [f"run={run}", "eval=none"]) == 2
    assert "no preference spec in the testbed file" in capsys.readouterr().err


def test_sweep_job_labels_keep_the_method_and_what_differs():
    labels = ["data=testbed,method=drift,trainer.lr=1e-05", "data=testbed,method=spin,trainer.lr=1e-05",
              "data=testbed,method=spin,trainer.lr=2e-05"]
    assert report.short_labels(labels) == ["method=drift,trainer.lr=1e-05", "method=spin,trainer.lr=1e-05",
                                           "method=spin,trainer.lr=2e-05"]
    assert report.short_labels(["drift_smollm2_testbed", "spin_smollm2_testbed"]) == ["drift_smollm2_testbed", "spin_smollm2_testbed"]
