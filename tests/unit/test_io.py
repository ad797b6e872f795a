"""drift.io: atomic writes leave the old file or the new one, never a half file or a temp file."""

import json

import pytest

from drift.io import (
    DONE,
    JsonlError,
    append_jsonl,
    atomic_dir,
    atomic_target,
    jsonl_lines,
    mark_done,
    read_done,
    read_jsonl,
    replace_dir,
    write_bytes_atomic,
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


def test_a_torn_last_line_is_dropped_only_when_asked_and_only_without_its_newline(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": 1}])
    append_jsonl(path, [{"step": 2}, {"step": 3}])
    with path.open("a") as stream:
        stream.write('{"step": 4, "lo')  # a writer killed inside its one write
    assert read_jsonl(path, torn_tail_ok=True) == [{"step": 1}, {"step": 2}, {"step": 3}]
    with pytest.raises(JsonlError, match=r"metrics\.jsonl:4: not valid JSON"):
        read_jsonl(path)
    # the same bad line followed by its newline is damage, not a torn write: it raises either way
    path.write_text('{"step": 1}\n{"step": 2, "lo\n')
    with pytest.raises(JsonlError, match=r"metrics\.jsonl:2"):
        read_jsonl(path, torn_tail_ok=True)
    # and so is a bad line before the last one
    path.write_text('{"step": 1, "lo\n{"step": 2}')
    with pytest.raises(JsonlError, match=r"metrics\.jsonl:1"):
        read_jsonl(path, torn_tail_ok=True)


def test_lines_end_at_newlines_only(tmp_path):
    # U+2028 and U+0085 are line breaks to str.splitlines but plain characters inside a JSON string,
    # which ensure_ascii=False writes unescaped
    rows = [{"text": "one\u2028two\x85three\r"}, {"text": "next"}]
    write_jsonl_atomic(tmp_path / "rows.jsonl", rows)
    assert read_jsonl(tmp_path / "rows.jsonl") == rows


def test_jsonl_lines_says_what_each_bad_line_is():
    lines = list(jsonl_lines('{"a": 1}\n\n[1, 2]\n{"a": \n"text"'))  # line 4 ends at column 6: the value is missing at 7
    assert [line.number for line in lines] == [1, 3, 4, 5]
    assert [line.problem() for line in lines] == [
        None, "a JSON list, not an object", "not valid JSON (Expecting value at column 7)", "a JSON str, not an object"]
    assert [line.torn for line in lines] == [False, False, False, True]


def test_atomic_target_renames_on_success_and_removes_the_temp_file_on_error(tmp_path):
    target = tmp_path / "figure.png"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_target(target) as staging:
            staging.write_bytes(b"half")
            raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    with atomic_target(target) as staging:
        assert staging.parent == tmp_path and staging != target
        staging.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing is visible before the block ends
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def _tree(folder):
    """{relative path: text} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_dir_swaps_the_new_folder_in_and_leaves_no_staging_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as staging:
        assert staging.parent == tmp_path and staging.is_dir() and not any(staging.iterdir())
        (staging / "sub").mkdir()
        (staging / "sub" / "new.txt").write_text("new")
    # the old folder's files are gone, not merged: the target is exactly what the block wrote
    assert _tree(target) == {"sub/new.txt": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_error_inside_atomic_dir_leaves_the_old_target_untouched_and_no_staging_folder(tmp_path):
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "weights").write_text("complete old copy")
    with pytest.raises(RuntimeError, match="killed part way"):
        with atomic_dir(target) as staging:
            (staging / "weights").write_text("half")
            raise RuntimeError("killed part way")
    assert _tree(target) == {"weights": "complete old copy"}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_an_error_inside_atomic_dir_for_a_new_target_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "nested" / "model") as staging:
            (staging / "part").write_text("x")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["nested"]
    assert list((tmp_path / "nested").iterdir()) == []


def test_replace_dir_recovers_from_a_swap_killed_between_its_renames(tmp_path):
    # a kill after "target -> target.old" and before "new -> target": target.old is the complete copy
    target, old = tmp_path / "checkpoint", tmp_path / "checkpoint.old"
    old.mkdir()
    (old / "weights").write_text("previous")
    new = tmp_path / "staging"
    new.mkdir()
    (new / "weights").write_text("next")
    replace_dir(new, target)
    assert _tree(target) == {"weights": "next"}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_replace_dir_removes_an_old_copy_left_after_a_completed_swap(tmp_path):
    # a kill after both renames but before the old copy was removed
    target, old, new = tmp_path / "model", tmp_path / "model.old", tmp_path / "staging"
    for folder, text in ((target, "current"), (old, "stale"), (new, "next")):
        folder.mkdir()
        (folder / "f").write_text(text)
    replace_dir(new, target)
    assert _tree(target) == {"f": "next"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
