"""Each source schema: read, converted, written, read back; wrong schemas fail at once; config checks."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from drift.checks import choices
from drift.data import FIXTURE_DIR, DataConfig, SchemaError, load_records, write_records
from drift.data.config import BothLabels
from drift.data.report import case_row

CONF_DIR = FIXTURE_DIR.parents[2] / "conf" / "data"


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


# ------------------------------------------------------------------ the paper code's jsonl

def test_drift_jsonl_seed_pairs_file():
    records = load_records(DataConfig(name="drift_jsonl", path=str(FIXTURE_DIR / "seed_pairs.jsonl")))
    rows = read_jsonl(FIXTURE_DIR / "seed_pairs.jsonl")
    assert len(records.dsat_cases) == len(records.seed_pairs) == len(rows) == 24
    assert records.rejects == []
    first, case = rows[0], records.dsat_cases[0]
    assert case.history == tuple(first["prompt"])
    assert case.dsat_reply == first["rejected"][0]["content"]
    assert case.feedback == first["user_preference"]["content"]
    assert case.sat_revision == records.seed_pairs[0].chosen == first["chosen"][0]["content"]
    assert case.case_id == "seed_pairs.jsonl:1"
    # three of the seed prompts open with a system message, kept as it is
    assert sum(c.history[0]["role"] == "system" for c in records.dsat_cases) == 3


def test_drift_jsonl_without_chosen_gives_cases_only():
    records = load_records(DataConfig(name="drift_jsonl", path=str(FIXTURE_DIR / "dsat_data.jsonl")))
    assert (len(records.dsat_cases), len(records.seed_pairs)) == (10, 0)
    assert all(c.sat_revision is None for c in records.dsat_cases)


def test_drift_jsonl_round_trip_through_prepare_outputs(tmp_path):
    records = load_records(DataConfig(name="drift_jsonl", path=str(FIXTURE_DIR / "seed_pairs.jsonl")))
    write_records(records, tmp_path)
    again = load_records(DataConfig(name="drift_jsonl", path=str(tmp_path / "dsat_cases.jsonl")))
    assert again.dsat_cases == records.dsat_cases  # case_id is carried in the written rows
    assert [(p.prompt, p.chosen, p.rejected) for p in again.seed_pairs] == [
        (p.prompt, p.chosen, p.rejected) for p in records.seed_pairs]


def test_drift_jsonl_bad_rows(tmp_path):
    good = {"prompt": [{"role": "user", "content": "q"}], "rejected": [{"role": "assistant", "content": "a"}],
            "user_preference": {"content": "no"}}
    rows = [
        good,
        dict(good),  # line 2: duplicate of line 1
        dict(good, prompt=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]),  # 3
        dict(good, prompt=[{"role": "narrator", "content": "q"}]),  # 4
        dict(good, rejected=[{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]),  # 5
        dict(good, user_preference={"content": ""}),  # 6
        {"prompt": [{"role": "user", "content": "q2"}], "rejected": [{"role": "assistant", "content": "a"}]},  # 7
        dict(good, prompt=["just text"]),  # 8
        dict(good, rejected=[{"role": "assistant", "content": None}]),  # 9
    ]
    records = load_records(DataConfig(name="drift_jsonl", path=write_jsonl(tmp_path / "d.jsonl", rows)))
    assert len(records.dsat_cases) == 1
    assert [(r.location, r.reason) for r in records.rejects] == [
        ("d.jsonl:2", "duplicate_case"),
        ("d.jsonl:3", "bad_prompt"),
        ("d.jsonl:4", "unknown_role"),
        ("d.jsonl:5", "bad_reply"),
        ("d.jsonl:6", "empty_content"),
        ("d.jsonl:7", "missing_field"),
        ("d.jsonl:8", "bad_message"),
        ("d.jsonl:9", "non_string_content"),
    ]
    assert records.report["rejects"] == 8


def test_drift_jsonl_wrong_file_names_missing_columns():
    with pytest.raises(SchemaError, match="missing column\\(s\\) prompt, rejected, user_preference"):
        load_records(DataConfig(name="drift_jsonl", path=str(FIXTURE_DIR / "sat_dsat_annotation.jsonl")))


# ------------------------------------------------------------------ WildFeedback `wildfeedback` config

def test_wildfeedback_pairs_config():
    path = str(FIXTURE_DIR / "wildfeedback_pairs.jsonl")
    records = load_records(DataConfig(name="wildfeedback", path=path, hub_config="wildfeedback"))
    rows = read_jsonl(path)
    assert len(records.preference_pairs) == 6
    assert records.dsat_cases == [] and records.seed_pairs == []
    pair, row = records.preference_pairs[0], rows[0]
    assert pair.prompt == ({"role": "user", "content": row["conversations"][0]["value"]},)
    assert (pair.chosen, pair.rejected) == (row["chosen"]["value"], row["rejected"]["value"])
    assert pair.source == "wildfeedback"


def test_wildfeedback_pairs_bad_rows(tmp_path):
    good = {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"}}
    rows = [
        good,
        {k: v for k, v in good.items() if k != "conversations"},  # 2
        dict(good, conversations=[]),  # 3
        dict(good, conversations=[{"from": "human"}]),  # 4
        dict(good, conversations=[{"from": "robot", "value": "q"}]),  # 5
        # 6: the first message is read (and is fine) before the second is found not to be a message
        dict(good, conversations=[{"from": "human", "value": "q"}, ["not", "a", "message"]]),
        # 7: an unknown role in the first message is named before the second's shape is looked at
        dict(good, conversations=[{"from": "robot", "value": "q"}, "not a message"]),
        '{"conversations": [',  # 8: not JSON
        dict(good, chosen=[{"from": "human", "value": "a"}]),  # 9
    ]
    records = load_records(DataConfig(name="wildfeedback", path=write_jsonl(tmp_path / "w.jsonl", rows),
                                      hub_config="wildfeedback"))
    assert len(records.preference_pairs) == 1
    assert [(r.location, r.reason) for r in records.rejects] == [
        ("w.jsonl:8", "unreadable_row"),
        ("w.jsonl:2", "missing_field"),
        ("w.jsonl:3", "bad_message"),
        ("w.jsonl:4", "bad_message"),
        ("w.jsonl:5", "unknown_role"),
        ("w.jsonl:6", "bad_message"),
        ("w.jsonl:7", "unknown_role"),
        ("w.jsonl:9", "bad_reply"),
    ]
    details = {r.location: r.detail for r in records.rejects}
    assert details["w.jsonl:8"].startswith("line 8 is not valid JSON (")
    assert details["w.jsonl:3"] == "conversations must be a non-empty list of {from, value} messages"
    assert details["w.jsonl:4"] == "conversations[0] is not a {from, value} message"
    assert details["w.jsonl:5"] == "conversations[0] has from='robot'; expected human or gpt"
    assert details["w.jsonl:6"] == "conversations[1] is not a {from, value} message"
    assert records.report["rows"] == 9


def test_wildfeedback_config_mismatch_points_to_the_other_config():
    with pytest.raises(SchemaError, match="data.hub_config=sat_dsat_annotation"):
        load_records(DataConfig(name="wildfeedback", path=str(FIXTURE_DIR / "sat_dsat_annotation.jsonl"),
                                hub_config="wildfeedback"))


def test_wildfeedback_annotation_config_same_as_fixture():
    path = str(FIXTURE_DIR / "sat_dsat_annotation.jsonl")
    wild = load_records(DataConfig(name="wildfeedback", path=path, hub_config="sat_dsat_annotation"))
    fixture = load_records(DataConfig(name="fixture"))
    assert wild.dsat_cases == fixture.dsat_cases
    assert wild.report["source"] == "wildfeedback"


# ------------------------------------------------------------------ UltraFeedback

def test_ultrafeedback_binarized():
    path = str(FIXTURE_DIR / "ultrafeedback_binarized.jsonl")
    records = load_records(DataConfig(name="ultrafeedback", path=path))
    rows = read_jsonl(path)
    assert len(records.preference_pairs) == len(rows) == 5
    pair, row = records.preference_pairs[0], rows[0]
    assert pair.pair_id == row["prompt_id"]
    assert pair.prompt == ({"role": "user", "content": row["prompt"]},)
    assert (pair.chosen, pair.rejected) == (row["chosen"][1]["content"], row["rejected"][1]["content"])
    assert records.report["schema"] == "ultrafeedback_binarized"


def test_openbmb_ultrafeedback_binarized_like_h4():
    path = str(FIXTURE_DIR / "openbmb_ultrafeedback.jsonl")
    rows = read_jsonl(path)
    records = load_records(DataConfig(name="ultrafeedback", path=path))
    assert records.report["schema"] == "openbmb_ultrafeedback"
    assert len(records.preference_pairs) == 3
    responses = [{c["model"]: c["response"] for c in row["completions"]} for row in rows]
    # best overall_score: model-a (8.5), model-b (9.0), and the first of the two 8.0s in row 3 (model-b)
    assert [p.chosen for p in records.preference_pairs] == [
        responses[0]["model-a"], responses[1]["model-b"], responses[2]["model-b"]]
    # rejected: a completion with a strictly lower score (row 3's other 8.0, model-c, never)
    lower = [{"model-b", "model-c", "model-d"}, {"model-a", "model-c", "model-d"}, {"model-a", "model-d"}]
    drawn = [set() for _ in rows]
    for seed in range(20):
        pairs = load_records(DataConfig(name="ultrafeedback", path=path, binarize_seed=seed)).preference_pairs
        for i, pair in enumerate(pairs):
            model = next(k for k, v in responses[i].items() if v == pair.rejected)
            assert model in lower[i]
            drawn[i].add(model)
    assert all(len(d) > 1 for d in drawn)  # the draw depends on the seed
    again = load_records(DataConfig(name="ultrafeedback", path=path)).preference_pairs
    assert again == records.preference_pairs  # and only on the seed


def test_ultrafeedback_bad_rows(tmp_path):
    user = {"role": "user", "content": "q"}
    good = {"prompt": "q", "prompt_id": "p1", "chosen": [user, {"role": "assistant", "content": "good"}],
            "rejected": [user, {"role": "assistant", "content": "bad"}]}
    rows = [
        good,
        dict(good, prompt_id="p2"),  # same pair again
        dict(good, prompt_id="p3", rejected=[{"role": "user", "content": "other"},
                                             {"role": "assistant", "content": "bad"}]),
        dict(good, prompt_id="p4", rejected=good["chosen"]),
        dict(good, prompt_id="p5", chosen=[{"role": "assistant", "content": "good"}]),
    ]
    records = load_records(DataConfig(name="ultrafeedback", path=write_jsonl(tmp_path / "uf.jsonl", rows)))
    assert len(records.preference_pairs) == 1
    assert [(r.record_id, r.reason) for r in records.rejects] == [
        ("p3", "prompt_mismatch"), ("p5", "bad_reply"), ("p2", "duplicate_pair"), ("p4", "identical_chosen_rejected")]


def test_openbmb_bad_rows(tmp_path):
    def completion(score, response="r"):
        return {"response": response, "overall_score": score}
    rows = [
        {"instruction": "a", "completions": [completion(5, "x"), completion(5, "y")]},
        {"instruction": "b", "completions": [completion(5), completion("N/A")]},
        {"instruction": "c", "completions": [completion(9, "best"), completion(None), completion(2, "worst")]},
    ]
    records = load_records(DataConfig(name="ultrafeedback", path=write_jsonl(tmp_path / "ob.jsonl", rows)))
    assert [r.reason for r in records.rejects] == ["no_preference", "too_few_completions"]
    assert [(p.chosen, p.rejected) for p in records.preference_pairs] == [("best", "worst")]
    assert records.report["completions_skipped"] == 1


def test_ultrafeedback_wrong_files_fail_at_once():
    with pytest.raises(SchemaError, match="instruction, completions"):
        load_records(DataConfig(name="ultrafeedback", path=str(FIXTURE_DIR / "sat_dsat_annotation.jsonl")))
    with pytest.raises(SchemaError, match="data=drift_jsonl"):
        load_records(DataConfig(name="ultrafeedback", path=str(FIXTURE_DIR / "seed_pairs.jsonl")))


# ------------------------------------------------------------------ file formats

def test_annotation_as_parquet_json_array_and_column_table(tmp_path):
    rows = read_jsonl(FIXTURE_DIR / "sat_dsat_annotation.jsonl")
    expected = load_records(DataConfig(name="fixture"))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "array.json").write_text(json.dumps(rows))
    columns = {k: [row[k] for row in rows] for k in rows[0]}
    (tmp_path / "table.json").write_text(json.dumps(columns))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows))
    for name in ("a.parquet", "array.json", "table.json", "lines.json"):
        records = load_records(DataConfig(name="fixture", path=str(tmp_path / name)))
        assert records.dsat_cases == expected.dsat_cases, name
        assert records.seed_pairs == expected.seed_pairs, name
        assert records.sat_replies == expected.sat_replies, name


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(SchemaError, match=".jsonl, .json or .parquet"):
        load_records(DataConfig(name="fixture", path=str(path)))


def test_hub_unreachable_names_the_offline_fix(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="data.path=/path/to/file"):
        load_records(DataConfig(name="wildfeedback", hub_name="microsoft/WildFeedback",
                                hub_config="sat_dsat_annotation"))


def test_hub_dataset_is_read_like_a_file(monkeypatch):
    import datasets

    rows = read_jsonl(FIXTURE_DIR / "wildfeedback_pairs.jsonl")
    calls = []

    def fake(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    records = load_records(DataConfig(name="wildfeedback", hub_name="microsoft/WildFeedback",
                                      hub_config="wildfeedback", split="train"))
    assert calls == [("microsoft/WildFeedback", "wildfeedback", "train")]
    assert len(records.preference_pairs) == 6


# ------------------------------------------------------------------ config

@pytest.mark.parametrize("fields, message", [
    ({"name": "wildchat"}, "data.name must be one of fixture, wildfeedback, ultrafeedback, drift_jsonl, testbed, testbed_compact, got 'wildchat'"),
    ({"prompt_format": "plain"}, "data.prompt_format must be one of chat_template, raw_text"),
    ({"max_prompt_length": 0}, "data.max_prompt_length must be a positive integer or null, got 0"),
    ({"both_labels": "both"}, "data.both_labels must be one of " + ", ".join(choices(BothLabels))),
    ({"conversation_key": ""}, "data.conversation_key must be a column name"),
    ({"name": "wildfeedback", "hub_name": "x", "hub_config": "user_preference"}, "not supported"),
    ({"name": "wildfeedback", "hub_name": "x", "hub_config": None}, "data.hub_config must be one of"),
    ({"name": "drift_jsonl"}, "data.path must point to a jsonl file"),
    ({"name": "ultrafeedback"}, "needs data.path"),
    ({"name": "fixture", "hub_config": "wildfeedback"}, "only used by data.name=wildfeedback"),
    ({"path": "/no/such/file.jsonl"}, "is not a file"),
])
def test_config_errors_are_sentences(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        DataConfig(**fields).validate()


def test_yaml_keys_match_the_dataclass():
    from dataclasses import fields

    names = {f.name for f in fields(DataConfig)}
    for kind in ("fixture", "wildfeedback", "ultrafeedback", "drift_jsonl", "testbed"):
        # the file over its schema, as Hydra composes it (the file holds only what differs)
        composed = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(CONF_DIR / f"{kind}.yaml"))
        cfg = OmegaConf.to_container(composed)
        assert set(cfg) == names, kind
        assert cfg["name"] == kind
        config = DataConfig(**cfg)
        if kind == "drift_jsonl":
            with pytest.raises(ValueError, match="data.path"):
                config.validate()  # it needs a file
            config.path = str(FIXTURE_DIR / "dsat_data.jsonl")
        config.validate()


def test_written_case_row_is_the_paper_schema():
    case = load_records(DataConfig(name="fixture")).dsat_cases[0]
    row = case_row(case)
    assert set(row) == {"case_id", "prompt", "rejected", "user_preference", "chosen", "feedback_state"}
    assert row["rejected"] == [{"role": "assistant", "content": case.dsat_reply}]
    assert row["user_preference"] == {"content": case.feedback}
