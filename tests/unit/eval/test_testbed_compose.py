"""The composed testbed: deterministic, disjoint held-out split, revealed prompts that state nothing,
DSAT replies that break their preference and revisions that meet it."""

import json
import re
import sys
from pathlib import Path

from drift.data import DataConfig, load_records
from drift.eval.gold import gold_reward, load_specs, preference_kind
from drift.eval.heldout import read_heldout, score_rows, summarize

FIXTURES = Path(__file__).resolve().parents[3] / "drift" / "data" / "fixtures"
sys.path.insert(0, str(FIXTURES))

from testbed_compose import (  # noqa: E402
    COMPACT_HELDOUT_FILE,
    COMPACT_TRAIN_FILE,
    HELDOUT_FILE,
    REVEALED_SPEC,
    REVEALED_TELLS,
    STATED_KINDS,
    TRAIN_FILE,
    heldout_prompts,
    main,
    training_conversations,
)
from testbed_topics import HELDOUT_TOPICS, TRAIN_TOPICS  # noqa: E402


def test_shipped_files_are_what_the_composer_writes(tmp_path):
    main(tmp_path)
    for name in (TRAIN_FILE, HELDOUT_FILE, COMPACT_TRAIN_FILE, COMPACT_HELDOUT_FILE):
        assert (tmp_path / name).read_text() == (FIXTURES / name).read_text(), name


def test_the_compact_testbed_is_whole_topics_of_the_full_one_with_every_kind():
    full, compact = ((FIXTURES / name).read_text().splitlines() for name in (TRAIN_FILE, COMPACT_TRAIN_FILE))
    assert set(compact) < set(full) and compact == [line for line in full if line in set(compact)]
    records = load_records(DataConfig(name="testbed_compact"))
    topics = {case.case_id.split("-")[1] for case in records.dsat_cases}
    assert len(records.dsat_cases) == 6 * len(topics) and not records.rejects and records.seed_pairs
    specs = load_specs(FIXTURES / COMPACT_TRAIN_FILE)
    stated = {json.dumps(spec) for spec in specs.values() if spec != REVEALED_SPEC}
    assert len(stated) == len(STATED_KINDS)  # every stated kind is trained on
    heldout, compact_heldout = read_heldout("testbed"), read_heldout("testbed_compact")
    assert [row for row in heldout if row in compact_heldout] == compact_heldout
    assert {json.dumps(row["Preference"]) for row in compact_heldout if row["kind"] == "stated"} == stated
    assert sum(row["kind"] == "revealed" for row in compact_heldout) == len(compact_heldout) // 2


def test_scale_and_kinds():
    conversations = training_conversations()
    assert len(conversations) >= 240 and len(heldout_prompts()) >= 100
    assert sum(c["kind"] == "revealed" for c in conversations) == len(conversations) // 2
    records = load_records(DataConfig(name="testbed"))
    assert len(records.dsat_cases) == len(conversations) and not records.rejects
    assert 0 < len(records.seed_pairs) == len(records.sat_replies) < len(conversations)
    assert {preference_kind(c.case_id) for c in records.dsat_cases} == {"stated", "revealed"}
    heldout = read_heldout("testbed")
    assert {r["kind"] for r in heldout} == {"stated", "revealed"}
    assert any(len(r["messages"]) == 1 for r in heldout) and any(len(r["messages"]) > 1 for r in heldout)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_heldout_shares_no_topic_request_fact_or_statement_with_training():
    assert not set(TRAIN_TOPICS) & set(HELDOUT_TOPICS)
    train_texts = {t for request, facts in TRAIN_TOPICS.values() for t in (request, *facts)}
    heldout_texts = {t for request, facts in HELDOUT_TOPICS.values() for t in (request, *facts)}
    assert not train_texts & heldout_texts
    train_statements = {s for _, train, _, *_ in STATED_KINDS.values() for s in train}
    heldout_statements = {s for _, _, heldout, *_ in STATED_KINDS.values() for s in heldout}
    assert not train_statements & heldout_statements
    # and no held-out message appears anywhere in the training file
    training_text = (FIXTURES / TRAIN_FILE).read_text()
    for row in read_heldout("testbed"):
        for message in row["messages"]:
            assert json.dumps(message["content"])[1:-1] not in training_text, message["content"]


def _tells(text: str) -> list[str]:
    return [tell for tell in REVEALED_TELLS if re.search(rf"\b{tell}\b", text.lower())]


def test_a_revealed_first_message_never_states_its_preference():
    revealed = [c for c in training_conversations() if c["kind"] == "revealed"]
    assert revealed and all(c["spec"] == REVEALED_SPEC for c in revealed)
    for conv in revealed:
        for text in [conv["request"], *(user for user, _ in conv["history"])]:  # what the user wrote
            assert not _tells(text), (conv["id"], text)
    for row in read_heldout("testbed"):
        if row["kind"] == "revealed":
            assert row["Preference"] == REVEALED_SPEC
            assert not any(_tells(m["content"]) for m in row["messages"] if m["role"] == "user"), row["prompt_id"]
    # the feedback is where the preference shows
    assert all(_tells(c["feedback"]) for c in revealed)


def test_dsat_replies_break_their_preference_and_revisions_meet_it():
    specs = load_specs()
    for conv in training_conversations():
        assert specs[conv["id"]] == conv["spec"]
        assert gold_reward(conv["dsat_reply"], conv["spec"]).score < 1.0, conv["id"]
        if conv["revision"] is not None:
            assert gold_reward(conv["revision"], conv["spec"]).passed, conv["id"]


def test_heldout_summary_counts_missing_replies_as_zero_and_cut_ones_apart():
    heldout = [{"prompt_id": "a", "kind": "stated", "messages": [], "Preference": [{"rule": "ends_with_question"}]},
               {"prompt_id": "b", "kind": "revealed", "messages": [], "Preference": [{"rule": "ends_with_question"}]},
               {"prompt_id": "c", "kind": "revealed", "messages": [], "Preference": [{"rule": "ends_with_question"}]}]
    samples = [{"prompt_id": "a", "text": "Ok?", "finish_reason": "eos"},
               {"prompt_id": "b", "text": "Cut off mid", "finish_reason": "length"}]
    summary = summarize(score_rows(samples, heldout), len(heldout))
    assert summary["gold"] == round(1 / 3, 4)  # c has no reply: it scores 0 over the whole split
    assert summary["gold_finished"] == 1.0 and summary["cut_share"] == 0.5 and summary["replies"] == 2
