"""drift.io: atomic writes leave the old file or the new one, never a half file or a temp file."""

import json

import pytest

from drift.io import (
    DONE,
    JsonlError,
    mark_done,
    read_done,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)


def test_writes_leave_only_the_target(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "héllo\n")
    write_json_atomic(tmp_path / "b.json", {"x": [1, 2]})
    write_jsonl_atomic(tmp_path / "nested" / "c.jsonl", ({"i": i} for i in range(3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "nested"]
    assert [p.name for p in (tmp_path / "nested").iterdir()] == ["c.jsonl"]
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'
    assert (tmp_path / "nested" / "c.jsonl").read_text() == '{"i": 0}\n{"i": 1}\n{"i": 2}\n'


def test_a_row_that_fails_to_serialize_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl_atomic(path, [{"kept": 1}])
    with pytest.raises(TypeError):
        write_jsonl_atomic(path, [{"fine": 2}, {"not json": object()}])
    assert path.read_text() == '{"kept": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "report.json", {"bad": {1, 2}})
    assert list(tmp_path.iterdir()) == []


def test_done_marker_round_trip(tmp_path):
    assert read_done(tmp_path) is None
    mark_done(tmp_path, {"steps": 3, "reference_sequences": 8})
    assert (tmp_path / DONE).read_text() == '{"steps": 3, "reference_sequences": 8}\n'
    assert read_done(tmp_path) == {"steps": 3, "reference_sequences": 8}


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_names_the_file_and_line_of_a_bad_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2, "loss": \n')
    with pytest.raises(JsonlError, match=r"metrics\.jsonl:3: not valid JSON") as error:
        read_jsonl(path)
    # callers that caught the old json errors (a ValueError) still catch this one
    assert isinstance(error.value, ValueError)
    assert isinstance(error.value.__cause__, json.JSONDecodeError)
