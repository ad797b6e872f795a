"""read_heldout: the shipped split reads; a bad line is an error that names the file and the line."""

import json

import pytest

from drift.eval.heldout import HeldoutError, read_heldout

ROW = {"prompt_id": "p1", "kind": "stated", "messages": [{"role": "user", "content": "hi"}],
       "Preference": [{"rule": "max_words", "limit": 40}]}


def test_rows_are_read_in_order_skipping_blank_lines(tmp_path):
    path = tmp_path / "heldout.jsonl"
    second = dict(ROW, prompt_id="p2", kind="revealed")
    path.write_text(json.dumps(ROW) + "\n\n" + json.dumps(second) + "\n")
    assert read_heldout(path) == [ROW, second]


@pytest.mark.parametrize("bad, problem", [
    ('{"prompt_id": ', "not valid JSON"),
    ("[1, 2]", "a JSON list, not an object"),
])
def test_a_line_that_is_not_a_json_object_names_the_file_and_line(tmp_path, bad, problem):
    path = tmp_path / "heldout.jsonl"
    path.write_text(json.dumps(ROW) + "\n\n" + bad + "\n")
    with pytest.raises(HeldoutError, match=rf"^heldout\.jsonl:3: {problem}"):
        read_heldout(path)


def test_a_row_missing_keys_names_them(tmp_path):
    path = tmp_path / "heldout.jsonl"
    path.write_text(json.dumps({"prompt_id": "p1", "messages": []}) + "\n")
    with pytest.raises(HeldoutError, match=r"^heldout\.jsonl:1: missing kind, Preference;"):
        read_heldout(path)
