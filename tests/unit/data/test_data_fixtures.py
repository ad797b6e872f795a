"""The shipped fixtures: reproducible from their source, counts worked out by hand (prepare_data end to end:
tests/integration/test_data_fixtures_process.py)."""

import json
import runpy
from collections import Counter

from drift.data import FIXTURE_DIR, DataConfig, load_records

SHIPPED = ("sat_dsat_annotation.jsonl", "seed_pairs.jsonl", "dsat_data.jsonl", "wildfeedback_pairs.jsonl",
           "ultrafeedback_binarized.jsonl", "openbmb_ultrafeedback.jsonl")


def test_fixtures_rebuild_byte_for_byte(tmp_path):
    build = runpy.run_path(str(FIXTURE_DIR / "build_fixtures.py"), run_name="not_main")
    build["main"](tmp_path)
    for name in SHIPPED:
        assert (tmp_path / name).read_bytes() == (FIXTURE_DIR / name).read_bytes(), name


def test_fixture_counts():
    # 24 seed conversations (DSAT -> revision -> SAT): 24 DSAT cases, 24 SAT replies, 24 seed pairs.
    # 16 others (conversations_other.py): DSAT cases 1+1+1+2+2+1+1+1 = 10 (hamlet, bakery, australia,
    # cafe, recursion, synonyms, formal, sql), of which cafe's second is a seed; SAT replies
    # 1 (cafe) + 1 (tablespoons) + 2 (books) + 1 (synonyms) + 1 (bike) + 1 (lisbon) + 1 (sql) = 8;
    # both-label turns 2 (bike, spanish), counted as neither; the tablespoons conversation appears twice.
    records = load_records(DataConfig(name="fixture"))
    report = records.report
    assert report["conversations_read"] == 41
    assert report["conversations"] == 40
    assert report["conversations_with_dsat"] == 24 + 8
    assert report["conversations_with_sat"] == 24 + 7
    assert len(records.dsat_cases) == 34
    assert len(records.sat_replies) == 32
    assert len(records.seed_pairs) == 25
    assert report["both_label_turns"] == 2
    assert [(r.reason, r.record_id) for r in records.rejects] == [("duplicate_conversation", "conv41")]


def test_fixture_covers_every_state_and_label():
    with open(FIXTURE_DIR / "sat_dsat_annotation.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    user_rows = [r for r in rows if r["Role"] == "User"]
    assert {r["State"] for r in user_rows} == {None, "FEEDBACK", "REFINEMENT", "REVISION", "CONTINUATION"}
    labels = Counter((r["Satisfaction"], r["Disatisfaction"]) for r in user_rows)
    assert set(labels) == {(False, False), (True, False), (False, True), (True, True)}
    assert {r["Role"] for r in rows} == {"User", "Agent"}
    states_of_dsat = {c.feedback_state for c in load_records(DataConfig(name="fixture")).dsat_cases}
    assert states_of_dsat == {"FEEDBACK", "REFINEMENT", "REVISION", "CONTINUATION"}


def test_seed_pairs_file_shape():
    with open(FIXTURE_DIR / "seed_pairs.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 24
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected", "user_preference"}
        assert row["prompt"][-1]["role"] == "user"
        assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
        for side in ("chosen", "rejected"):
            assert len(row[side][0]["content"].split()) <= 150
    assert sum(len(r["prompt"]) > 2 for r in rows) >= 3  # some multi-turn
    assert sum(r["prompt"][0]["role"] == "system" for r in rows) == 3

