"""launch/prepare_data.py end to end on the shipped fixture, and its one-sentence schema error."""

import json
import os
import subprocess
import sys

from drift.data import FIXTURE_DIR

REPO = FIXTURE_DIR.parents[2]


def run_prepare(tmp_path, *overrides):
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, str(REPO / "launch" / "prepare_data.py"), *overrides],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)


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


def test_prepare_data_wrong_schema_exits_with_a_sentence(tmp_path):
    result = run_prepare(tmp_path, "data=drift_jsonl", f"data.path={FIXTURE_DIR / 'wildfeedback_pairs.jsonl'}",
                         f"out_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "wildfeedback_pairs.jsonl: missing column(s) prompt, user_preference" in result.stderr
    assert "Traceback" not in result.stderr
