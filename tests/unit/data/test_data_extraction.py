"""sat_dsat_annotation rows -> DSAT cases, SAT replies, seed pairs; every reject reason from a crafted row.

All expected counts are worked out by hand in the comments next to them.
"""

import json

import pytest

from drift.data import DataConfig, SchemaError, load_records


def utterances(*turns, start_row=None):
    """Rows for one conversation: turns are (content, sat, dsat, state); roles alternate from User."""
    rows = []
    for i, (content, sat, dsat, state) in enumerate(turns):
        rows.append({
            "UtterranceId": i,
            "TurnId": i // 2 + 1,
            "Role": "User" if i % 2 == 0 else "Agent",
            "Content": content,
            "Preceeding": "NO" if i == 0 else "YES",
            "State": state,
            "Satisfaction": sat,
            "Disatisfaction": dsat,
        })
    return rows


def U(content, sat=False, dsat=False, state=None):
    return (content, sat, dsat, state)


def A(content):
    return (content, False, False, None)


def write(tmp_path, rows, name="annotation.jsonl"):
    path = tmp_path / name
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return str(path)


def load(path, **overrides):
    return load_records(DataConfig(name="fixture", path=path, **overrides))


# Six conversations whose counts are worked out by hand below.
HAND_SET = [
    # A: DSAT on a1, revision r1 marked SAT -> 1 DSAT case (seed), 1 SAT reply (r1), 1 seed pair
    [U("qA"), A("a1"), U("fbA", dsat=True, state="FEEDBACK"), A("r1"), U("thanks", sat=True, state="CONTINUATION")],
    # B: SAT on b1 -> 1 SAT reply
    [U("qB"), A("b1"), U("great", sat=True, state="CONTINUATION")],
    # C: DSAT on c1, DSAT on c2, SAT on c3 -> 2 DSAT cases (only c2's is a seed), 1 SAT reply
    [U("qC"), A("c1"), U("fbC1", dsat=True, state="REFINEMENT"), A("c2"), U("fbC2", dsat=True, state="REVISION"),
     A("c3"), U("ok", sat=True, state="CONTINUATION")],
    # D: no labels -> nothing
    [U("qD"), A("d1")],
    # E: both labels on e1, then SAT on e2 -> policy neither: 1 SAT reply (e2), no DSAT
    [U("qE"), A("e1"), U("thanks but wrong", sat=True, dsat=True, state="FEEDBACK"), A("e2"),
     U("good", sat=True, state="CONTINUATION")],
    # F: DSAT on f1, revision f2 followed by a neutral turn, then SAT on f3 -> 1 DSAT (no seed), 1 SAT reply
    [U("qF"), A("f1"), U("fbF", dsat=True, state="FEEDBACK"), A("f2"), U("and then?", state="CONTINUATION"),
     A("f3"), U("thx", sat=True, state="CONTINUATION")],
]


def hand_rows():
    return [row for conversation in HAND_SET for row in utterances(*conversation)]


def test_hand_built_counts(tmp_path):
    records = load(write(tmp_path, hand_rows()))
    report = records.report
    assert report["conversations"] == 6
    assert report["conversations_with_dsat"] == 3  # A, C, F
    assert report["conversations_with_sat"] == 5  # A, B, C, E, F
    assert report["pct_with_dsat"] == 50.0
    assert report["pct_with_sat"] == 83.33
    assert len(records.dsat_cases) == 4  # A, C x2, F
    assert len(records.sat_replies) == 5  # r1, b1, c3, e2, f3
    assert len(records.seed_pairs) == 2  # A, C's second
    assert report["both_label_turns"] == 1
    assert records.rejects == []
    assert report["dsat_feedback_states"] == {"FEEDBACK": 2, "REFINEMENT": 1, "REVISION": 1}

    seed_a, seed_c = records.seed_pairs
    assert seed_a.prompt == ({"role": "user", "content": "qA"},)
    assert (seed_a.chosen, seed_a.rejected) == ("r1", "a1")
    assert seed_c.prompt == (
        {"role": "user", "content": "qC"}, {"role": "assistant", "content": "c1"},
        {"role": "user", "content": "fbC1"},
    )
    assert (seed_c.chosen, seed_c.rejected) == ("c3", "c2")

    by_reply = {c.dsat_reply: c for c in records.dsat_cases}
    assert set(by_reply) == {"a1", "c1", "c2", "f1"}
    assert by_reply["c1"].sat_revision is None  # its revision c2 was DSAT again
    assert by_reply["f1"].sat_revision is None  # the turn after the revision is neutral
    assert by_reply["a1"].sat_revision == "r1"
    assert by_reply["c1"].feedback == "fbC1" and by_reply["c1"].feedback_state == "REFINEMENT"
    assert by_reply["c1"].history == ({"role": "user", "content": "qC"},)
    assert [r.reply for r in records.sat_replies] == ["r1", "b1", "c3", "e2", "f3"]
    assert records.sat_replies[1].history == ({"role": "user", "content": "qB"},)
    # restart mode numbers conversations in file order; ids name the feedback turn
    assert by_reply["c2"].case_id == "conv3/t3"


@pytest.mark.parametrize("policy, dsat, sat, seeds, rejects", [
    ("neither", 4, 5, 2, 0),
    ("dsat", 5, 5, 3, 0),  # E's both-labelled turn becomes a DSAT case whose revision e2 is SAT -> seed
    ("sat", 4, 6, 2, 0),  # it becomes a SAT reply for e1
    ("reject", 4, 5, 2, 1),  # counted as neither, and its label goes to the rejects
])
def test_both_labels_policy(tmp_path, policy, dsat, sat, seeds, rejects):
    records = load(write(tmp_path, hand_rows()), both_labels=policy)
    assert (len(records.dsat_cases), len(records.sat_replies), len(records.seed_pairs)) == (dsat, sat, seeds)
    assert len(records.rejects) == rejects
    if rejects:
        assert records.rejects[0].reason == "both_labels"
        assert records.rejects[0].record_id == "conv5/u2"


def test_rows_out_of_order_are_sorted_by_turn(tmp_path):
    rows = utterances(*HAND_SET[0])
    shuffled = [rows[3], rows[0], rows[4], rows[2], rows[1]]
    for row in shuffled:  # explicit id column, as the grouping needs one when rows are not in order
        row["ConversationId"] = "abc"
    records = load(write(tmp_path, shuffled))
    assert records.report["conversation_key"] == "ConversationId"
    assert [p.pair_id for p in records.seed_pairs] == ["abc/t2"]
    assert records.seed_pairs[0].chosen == "r1"


def test_conversation_key_column_groups_interleaved_rows(tmp_path):
    a = utterances(*HAND_SET[0])
    b = utterances(*HAND_SET[1])
    for row in a:
        row["conv"] = "A"
    for row in b:
        row["conv"] = 7
    rows = [a[0], b[0], a[1], b[1], a[2], b[2], a[3], a[4]]
    records = load(write(tmp_path, rows), conversation_key="conv")
    assert records.report["conversations"] == 2
    assert [c.case_id for c in records.dsat_cases] == ["A/t2"]
    assert [r.reply_id for r in records.sat_replies] == ["A/t3", "7/t2"]


def test_conversation_key_missing_column_fails_naming_it(tmp_path):
    with pytest.raises(SchemaError, match="data.conversation_key='session'.*utterance_restart"):
        load(write(tmp_path, hand_rows()), conversation_key="session")


def test_wrong_schema_fails_naming_missing_columns(tmp_path):
    path = write(tmp_path, [{"conversations": [], "chosen": {}, "rejected": {}}])
    with pytest.raises(SchemaError) as error:
        load(path)
    message = str(error.value)
    assert "missing column(s) UtterranceId, TurnId, Role, Content, State, Satisfaction, Disatisfaction" in message
    assert "data.hub_config=wildfeedback" in message


GOOD = [U("q"), A("a"), U("fb", dsat=True, state="FEEDBACK"), A("r"), U("thanks", sat=True)]


def bad(**changes):
    """The good conversation with one row changed: {utterance index: {column: value}}."""
    def build():
        rows = utterances(*GOOD)
        for index, fields in changes.items():
            rows[int(index[1:])].update(fields)
        return rows
    return build


def drop_key(index, key):
    def build():
        rows = utterances(*GOOD)
        del rows[index][key]
        return rows
    return build


def without(index):
    def build():
        rows = utterances(*GOOD)
        del rows[index]
        return rows
    return build


@pytest.mark.parametrize("make_rows, reason, record_id", [
    (bad(u2={"Content": "   "}), "empty_content", "conv2/u2"),
    (bad(u1={"Content": 42}), "non_string_content", "conv2/u1"),
    (bad(u1={"Role": "Bot"}), "unknown_role", "conv2/u1"),
    (bad(u2={"State": "ANGRY"}), "unknown_state", "conv2/u2"),
    (bad(u4={"Satisfaction": "maybe"}), "invalid_label", "conv2/u4"),
    (bad(u3={"UtterranceId": "three"}), "bad_utterance_id", "conv2/uthree"),
    (bad(u3={"TurnId": None}), "bad_turn_id", "conv2/u3"),
    (drop_key(2, "Content"), "missing_field", "conv2/u2"),
    (without(3), "missing_turn", "conv2"),
    (bad(u1={"Role": "User"}), "unexpected_role_order", "conv2/u1"),
    (bad(u0={"Disatisfaction": True}), "label_without_agent_reply", "conv2/u0"),
])
def test_each_bad_row_rejects_its_conversation_only(tmp_path, make_rows, reason, record_id):
    rows = utterances(*GOOD) + make_rows()
    records = load(write(tmp_path, rows))
    # the good conversation is untouched: 1 DSAT case, 1 SAT reply, 1 seed pair
    assert (len(records.dsat_cases), len(records.sat_replies), len(records.seed_pairs)) == (1, 1, 1)
    assert [(r.reason, r.record_id) for r in records.rejects] == [(reason, record_id)]
    reject = records.rejects[0]
    assert reject.location.startswith("annotation.jsonl:")
    line = int(reject.location.split(":")[1])
    assert 6 <= line <= 10  # a row of the second conversation
    assert records.report["conversations_rejected"] == 1
    assert records.report["rejects_by_reason"] == {reason: 1}


def test_unreadable_line_is_rejected_not_fatal(tmp_path):
    rows = utterances(*GOOD)
    path = write(tmp_path, rows[:2] + ["{not json"] + rows[2:])
    records = load(path)
    assert len(records.seed_pairs) == 1
    assert [(r.reason, r.location) for r in records.rejects] == [("unreadable_row", "annotation.jsonl:3")]


def test_exact_duplicate_row_is_dropped_alone(tmp_path):
    rows = utterances(*GOOD)
    rows.insert(4, dict(rows[3]))  # the revision repeated
    records = load(write(tmp_path, rows))
    assert len(records.seed_pairs) == 1
    assert [(r.reason, r.record_id, r.location) for r in records.rejects] == [
        ("duplicate_row", "conv1/u3", "annotation.jsonl:5")]


def test_conflicting_duplicate_utterance_rejects_conversation(tmp_path):
    rows = utterances(*GOOD)
    rows.insert(4, dict(rows[3], Content="another revision"))
    records = load(write(tmp_path, rows))
    assert records.dsat_cases == []
    assert [(r.reason, r.record_id) for r in records.rejects] == [("duplicate_utterance_id", "conv1/u3")]


def test_several_bad_rows_in_one_conversation_are_each_reported(tmp_path):
    rows = utterances(*GOOD)
    rows[1]["Content"] = ""
    rows[4]["State"] = "HAPPY"
    records = load(write(tmp_path, rows))
    assert [(r.reason, r.record_id) for r in records.rejects] == [
        ("empty_content", "conv1/u1"), ("unknown_state", "conv1/u4")]
    assert records.report["conversations_rejected"] == 1
    assert records.report["conversations"] == 0


def test_duplicate_conversation_case_and_sat_reply(tmp_path):
    first = utterances(*GOOD)
    same = utterances(*GOOD)
    # same DSAT case and same SAT-judged reply? no: another revision, so only the case repeats
    other_revision = utterances(U("q"), A("a"), U("fb", dsat=True), A("r2"), U("fine", sat=True))
    # a different conversation whose first exchange is SAT-judged exactly like another's
    sat_a = utterances(U("hello"), A("hi there"), U("nice", sat=True))
    sat_b = utterances(U("hello"), A("hi there"), U("thank you", sat=True))
    records = load(write(tmp_path, first + same + other_revision + sat_a + sat_b))
    assert [(r.reason, r.record_id) for r in records.rejects] == [
        ("duplicate_conversation", "conv2"),
        ("duplicate_case", "conv3/t2"),
        ("duplicate_sat_reply", "conv5/t2"),
    ]
    # conv1: case + seed + SAT(r); conv3: SAT(r2) only; conv4: SAT(hi there)
    assert (len(records.dsat_cases), len(records.seed_pairs), len(records.sat_replies)) == (1, 1, 3)
    assert records.report["conversations"] == 4
    assert records.report["conversations_duplicate"] == 1


def test_missing_conversation_key_value_is_rejected(tmp_path):
    rows = utterances(*GOOD)
    for row in rows:
        row["ConversationId"] = "c1"
    stray = dict(rows[0], ConversationId=None)
    records = load(write(tmp_path, rows + [stray]))
    assert len(records.seed_pairs) == 1
    assert [(r.reason, r.location) for r in records.rejects] == [
        ("missing_conversation_key", "annotation.jsonl:6")]


def test_labels_on_agent_rows_are_counted_and_ignored(tmp_path):
    rows = utterances(*GOOD)
    rows[1]["Satisfaction"] = True
    records = load(write(tmp_path, rows))
    assert records.report["labels_on_agent_rows_ignored"] == 1
    assert len(records.sat_replies) == 1  # only the user-judged revision
