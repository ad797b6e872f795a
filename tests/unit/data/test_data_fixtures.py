"""The shipped fixtures: reproducible from their source, counts worked out by hand, prepare_data end to end."""

import pytest
import json
import os
import runpy
import subprocess
import sys
from collections import Counter

from drift.data import FIXTURE_DIR, DataConfig, load_records

REPO = FIXTURE_DIR.parents[2]
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


def run_prepare(tmp_path, *overrides):
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, str(REPO / "launch" / "prepare_data.py"), *overrides],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.integration  # starts a process
def test_prepare_data_fixture_end_to_end(tmp_path):
    out = tmp_path / "out"
    result = run_prepare(tmp_path, f"out_dir={out}")
    assert result.returncode == 0, result.stderr
    assert "| DSAT->SAT seed pairs | 25 (62.50%) | 491 (0.55%) |" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert (report["dsat_cases"], report["sat_replies"], report["seed_pairs"]) == (34, 32, 25)
    assert report["rejects_by_reason"] == {"duplicate_conversation": 1}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"record_id": "conv41", "reason": "duplicate_conversation", "detail": "same turns as conv12",
                        "location": "sat_dsat_annotation.jsonl:200"}]
    assert len((out / "seed_pairs.jsonl").read_text().splitlines()) == 25
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


@pytest.mark.integration  # starts a process
def test_prepare_data_wrong_schema_exits_with_a_sentence(tmp_path):
    result = run_prepare(tmp_path, "data=drift_jsonl", f"data.path={FIXTURE_DIR / 'wildfeedback_pairs.jsonl'}",
                         f"out_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "wildfeedback_pairs.jsonl: missing column(s) prompt, user_preference" in result.stderr
    assert "Traceback" not in result.stderr
