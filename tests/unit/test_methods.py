"""Each method's pair builder on hand-made records: which text lands where, on which prompt."""

import pytest

from drift.data.prompts import IMPROVE_INSTRUCTION
from drift.data.records import DsatCase, PreferencePair, Records, SatReply
from drift.methods import build_pairs, sample_requests

SYSTEM = {"role": "system", "content": "Be brief."}
ASK = {"role": "user", "content": "Name a prime."}
CASE = DsatCase("c1", (SYSTEM, ASK), dsat_reply="Nine.", feedback="Nine is not prime.", sat_revision="Seven.")
SAT = SatReply("s1", (ASK,), reply="Two.")
WILD = Records(dsat_cases=[CASE], sat_replies=[SAT], seed_pairs=[PreferencePair("seed", (SYSTEM, ASK), "Seven.", "Nine.")])
ULTRA = Records(preference_pairs=[PreferencePair("u1", (ASK,), "Three.", "Four.")])
SAMPLES = {"c1#guided": ["Sorry, 7."], "c1#original": ["Maybe 9?"], "s1#original": ["Ten."], "u1#original": ["Five.", "Six."]}


def _only(pairs):
    assert len(pairs) == 1
    return pairs[0]


def test_drift_chosen_is_the_guided_sample_rejected_the_real_dsat_reply_on_the_original_prompt():
    requests = sample_requests("drift", WILD)
    assert [r.prompt_id for r in requests] == ["c1#guided"]
    guided = requests[0].messages
    assert guided[:2] == (SYSTEM, ASK)
    assert guided[2] == {"role": "assistant", "content": "Nine."}
    assert guided[3] == {"role": "user", "content": "Nine is not prime."}
    assert guided[-1]["content"] == IMPROVE_INSTRUCTION
    pair = _only(build_pairs("drift", WILD, SAMPLES)[0])
    assert (pair.prompt, pair.chosen, pair.rejected) == ((SYSTEM, ASK), "Sorry, 7.", "Nine.")


def test_drift_unguided_samples_from_the_original_prompt():
    assert [r.messages for r in sample_requests("drift_unguided", WILD)] == [(SYSTEM, ASK)]
    pair = _only(build_pairs("drift_unguided", WILD, SAMPLES)[0])
    assert (pair.prompt, pair.chosen, pair.rejected) == ((SYSTEM, ASK), "Maybe 9?", "Nine.")


def test_spin_keeps_the_real_sat_reply_as_chosen():
    assert [(r.prompt_id, r.messages) for r in sample_requests("spin", WILD)] == [("s1#original", (ASK,))]
    pair = _only(build_pairs("spin", WILD, SAMPLES)[0])
    assert (pair.prompt, pair.chosen, pair.rejected) == ((ASK,), "Two.", "Ten.")


def test_iterdpo_on_feedback_data_pits_the_guided_sample_against_the_original_one():
    assert sorted(r.prompt_id for r in sample_requests("iterdpo", WILD)) == ["c1#guided", "c1#original"]
    pair = _only(build_pairs("iterdpo", WILD, SAMPLES)[0])
    assert (pair.prompt, pair.chosen, pair.rejected) == ((SYSTEM, ASK), "Sorry, 7.", "Maybe 9?")


def test_warmstart_uses_the_seed_pairs():
    pair = _only(build_pairs("warmstart", WILD, {})[0])
    assert (pair.chosen, pair.rejected) == ("Seven.", "Nine.")


def test_ultrafeedback_drift_replaces_chosen_and_spin_replaces_rejected():
    assert [r.messages for r in sample_requests("drift", ULTRA)] == [(ASK,)]
    drift = _only(build_pairs("drift", ULTRA, SAMPLES)[0])
    assert (drift.prompt, drift.chosen, drift.rejected) == ((ASK,), "Five.", "Four.")
    spin = _only(build_pairs("spin", ULTRA, SAMPLES)[0])
    assert (spin.prompt, spin.chosen, spin.rejected) == ((ASK,), "Three.", "Five.")


def test_ultrafeedback_iterdpo_ranks_two_samples_by_reward():
    assert [r.num_samples for r in sample_requests("iterdpo", ULTRA)] == [2]
    low_first = _only(build_pairs("iterdpo", ULTRA, SAMPLES, rewards={"u1#original": [0.1, 0.9]})[0])
    assert (low_first.chosen, low_first.rejected) == ("Six.", "Five.")
    high_first = _only(build_pairs("iterdpo", ULTRA, SAMPLES, rewards={"u1#original": [2.0, -1.0]})[0])
    assert (high_first.chosen, high_first.rejected) == ("Five.", "Six.")
    with pytest.raises(ValueError, match="reward"):
        build_pairs("iterdpo", ULTRA, SAMPLES)


def test_a_missing_sample_rejects_the_record_with_a_reason():
    pairs, rejects = build_pairs("drift", WILD, {"c1#guided": ["   "]})
    assert pairs == []
    assert [(r.record_id, r.reason) for r in rejects] == [("c1", "no_sample")]


def test_a_cut_sample_kept_by_the_sampler_never_gets_an_end_of_turn_token():
    """sampler.truncated=keep: the pair marks the cut side unfinished, and tokenization gives it no
    end-of-turn token, where a finished side (and the real DSAT reply) ends with one."""
    from drift.model import build_byte_tokenizer
    from drift.tokenize import tokenize_pairs

    tokenizer = build_byte_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cut = frozenset({("c1#guided", 0)})
    for method, unfinished, finished_flags in (("drift", cut, (False, True)), ("drift", frozenset(), (True, True)),
                                               ("iterdpo", cut, (False, True))):
        pair = _only(build_pairs(method, WILD, SAMPLES, unfinished=unfinished)[0])
        assert (pair.chosen_finished, pair.rejected_finished) == finished_flags
        (tokenized,), rejects, _ = tokenize_pairs([pair], tokenizer, max_length=512, max_prompt_length=256)
        assert not rejects
        assert (tokenized.chosen.response_ids[-1] == end) == finished_flags[0]
        assert tokenized.rejected.response_ids[-1] == end
    # spin: the sampled side is the rejected one
    pair = _only(build_pairs("spin", WILD, SAMPLES, unfinished=frozenset({("s1#original", 0)}))[0])
    assert (pair.chosen_finished, pair.rejected_finished) == (True, False)


def test_drift_samples_the_original_prompt_too_for_the_guidance_check():
    requests = sample_requests("drift", WILD, "feedback_only", original_too=0)
    assert [r.prompt_id for r in requests] == ["c1#guided", "c1#original"]
    assert requests[0].messages[-1] == {"role": "user", "content": "Nine is not prime."} and requests[0].keep_last == 2
    # the original-prompt sample is only measured: drift's pair is still the guided sample vs the DSAT reply
    pair = _only(build_pairs("drift", WILD, SAMPLES)[0])
    assert pair.chosen == "Sorry, 7."


def test_check_cases_spread_evenly():
    from drift.methods import check_cases

    assert check_cases(list(range(10)), 0) == list(range(10)) and check_cases(list(range(3)), 5) == [0, 1, 2]
    assert check_cases(list(range(10)), 4) == [0, 2, 5, 7]
