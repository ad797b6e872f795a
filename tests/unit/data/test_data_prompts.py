"""Prompt building and rendering, checked token for token on a character-level tokenizer.

The tokenizer maps every character to one id and each special token to one id, so the expected ids
are spelled out here by hand from the expected text.
"""

import string

import pytest
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from drift.data import (
    GUIDED_KEEP_LAST,
    IMPROVE_INSTRUCTION,
    DsatCase,
    PromptTooLong,
    Records,
    SatReply,
    fit_prompts,
    guided_keep_last,
    guided_prompt,
    original_prompt,
    render_prompt_ids,
)

SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>", "<s>"]
CHARS = sorted(set(string.printable))
VOCAB = {token: i for i, token in enumerate(SPECIALS + CHARS)}
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    backend = Tokenizer(models.BPE(vocab=VOCAB, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(SPECIALS)
    # <s> only when special tokens are added: tells the raw_text path (adds them) from the template path
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", VOCAB["<s>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                  eos_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok


def hand_ids(*parts):
    """Ids by hand: a part in SPECIALS is one token, any other string is one token per character."""
    ids = []
    for part in parts:
        ids += [VOCAB[part]] if part in SPECIALS else [VOCAB[c] for c in part]
    return ids


def chatml(role, content):
    return ["<|im_start|>", f"{role}\n{content}", "<|im_end|>", "\n"]


GEN = ["<|im_start|>", "assistant\n"]


def m(role, content):
    return {"role": role, "content": content}


CONVERSATION = [m("system", "S"), m("user", "aa"), m("assistant", "bb"), m("user", "cc"), m("assistant", "dd"),
                m("user", "ee")]
# lengths by hand: system turn 1+6+1+1+1+1 = 11, a user turn with 2 characters 1+4+1+2+1+1 = 10,
# an assistant turn 1+9+1+2+1+1 = 15, the generation prompt 1+9+1 = 11
FULL = 11 + 10 + 15 + 10 + 15 + 10 + 11  # 82


def test_chat_template_renders_token_for_token(tokenizer):
    ids, truncated = render_prompt_ids(CONVERSATION, tokenizer, max_prompt_tokens=1000, keep_last=1)
    expected = hand_ids(*chatml("system", "S"), *chatml("user", "aa"), *chatml("assistant", "bb"),
                        *chatml("user", "cc"), *chatml("assistant", "dd"), *chatml("user", "ee"), *GEN)
    assert ids == expected
    assert len(ids) == FULL
    assert truncated is False


def test_exact_budget_is_not_truncated(tokenizer):
    ids, truncated = render_prompt_ids(CONVERSATION, tokenizer, max_prompt_tokens=FULL, keep_last=1)
    assert (len(ids), truncated) == (FULL, False)


def test_truncation_drops_oldest_exchange_first(tokenizer):
    ids, truncated = render_prompt_ids(CONVERSATION, tokenizer, max_prompt_tokens=FULL - 1, keep_last=1)
    expected = hand_ids(*chatml("system", "S"), *chatml("user", "cc"), *chatml("assistant", "dd"),
                        *chatml("user", "ee"), *GEN)
    assert ids == expected  # 82 - 25 = 57 tokens: the first user/assistant exchange is gone
    assert truncated is True


def test_truncation_keeps_system_and_last_turn(tokenizer):
    smallest = 11 + 10 + 11  # system, last user turn, generation prompt
    ids, truncated = render_prompt_ids(CONVERSATION, tokenizer, max_prompt_tokens=smallest, keep_last=1)
    assert ids == hand_ids(*chatml("system", "S"), *chatml("user", "ee"), *GEN)
    assert truncated is True
    with pytest.raises(PromptTooLong) as error:
        render_prompt_ids(CONVERSATION, tokenizer, max_prompt_tokens=smallest - 1, keep_last=1)
    assert error.value.n_tokens == smallest


def test_units_start_at_a_user_turn(tokenizer):
    # without a system message; history starting with an assistant turn forms its own unit
    messages = [m("assistant", "xx"), m("user", "aa"), m("assistant", "bb"), m("user", "ee")]
    full = 15 + 10 + 15 + 10 + 11
    ids, _ = render_prompt_ids(messages, tokenizer, max_prompt_tokens=full - 1, keep_last=1)
    assert ids == hand_ids(*chatml("user", "aa"), *chatml("assistant", "bb"), *chatml("user", "ee"), *GEN)
    ids, _ = render_prompt_ids(messages, tokenizer, max_prompt_tokens=full - 16, keep_last=1)
    # dropping "aa" alone would leave the history starting at an assistant turn: "bb" goes with it
    assert ids == hand_ids(*chatml("user", "ee"), *GEN)


CASE = DsatCase(
    case_id="c1",
    history=(m("system", "S"), m("user", "q1"), m("assistant", "a1"), m("user", "q2")),
    dsat_reply="bad",
    feedback="fb",
)


def test_original_and_guided_prompts():
    assert original_prompt(CASE) == CASE.history
    assert guided_prompt(CASE) == CASE.history + (
        m("assistant", "bad"), m("user", "fb"), m("system", IMPROVE_INSTRUCTION))
    assert IMPROVE_INSTRUCTION == ("Based on the user's latest feedback, please provide an improved response "
                                   "that addresses their concerns.")


def test_guided_truncation_keeps_dsat_feedback_instruction(tokenizer):
    tail = [*chatml("assistant", "bad"), *chatml("user", "fb"), *chatml("system", IMPROVE_INSTRUCTION), *GEN]
    full = hand_ids(*chatml("system", "S"), *chatml("user", "q1"), *chatml("assistant", "a1"),
                    *chatml("user", "q2"), *tail)
    ids, truncated = render_prompt_ids(guided_prompt(CASE), tokenizer, max_prompt_tokens=len(full),
                                       keep_last=GUIDED_KEEP_LAST)
    assert (ids, truncated) == (full, False)
    # one token short: the oldest exchange (q1, a1) goes, the request q2 stays
    ids, truncated = render_prompt_ids(guided_prompt(CASE), tokenizer, max_prompt_tokens=len(full) - 1,
                                       keep_last=GUIDED_KEEP_LAST)
    assert ids == hand_ids(*chatml("system", "S"), *chatml("user", "q2"), *tail)
    assert truncated is True
    # the instruction alone is longer than the budget: an error, never a cut instruction
    minimal = hand_ids(*chatml("system", "S"), *tail)
    ids, _ = render_prompt_ids(guided_prompt(CASE), tokenizer, max_prompt_tokens=len(minimal),
                               keep_last=GUIDED_KEEP_LAST)
    assert ids == minimal
    with pytest.raises(PromptTooLong):
        render_prompt_ids(guided_prompt(CASE), tokenizer, max_prompt_tokens=len(minimal) - 1,
                          keep_last=GUIDED_KEEP_LAST)


def test_raw_text_is_the_paper_code_format(tokenizer):
    text = ("S\n\nUser: q1\nAssistant: a1\nUser: q2\nAssistant: bad\nUser: fb\n"
            f"System: {IMPROVE_INSTRUCTION}\nAssistant: ")
    ids, truncated = render_prompt_ids(guided_prompt(CASE), tokenizer, max_prompt_tokens=10_000,
                                       prompt_format="raw_text", keep_last=GUIDED_KEEP_LAST)
    assert ids == hand_ids("<s>", text)  # raw text is encoded with the tokenizer's special tokens
    assert truncated is False
    # truncated: same format, the oldest exchange dropped
    shorter = text.replace("User: q1\nAssistant: a1\n", "")
    ids, truncated = render_prompt_ids(guided_prompt(CASE), tokenizer, max_prompt_tokens=len(text),
                                       prompt_format="raw_text", keep_last=GUIDED_KEEP_LAST)
    assert ids == hand_ids("<s>", shorter)
    assert truncated is True


def test_template_that_rejects_late_system_turn_names_the_fix(tokenizer):
    strict = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>")
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
        "{{ raise_exception('System role only at the start') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(ValueError, match="prompt_format=raw_text"):
        render_prompt_ids(guided_prompt(CASE), strict, max_prompt_tokens=1000, keep_last=GUIDED_KEEP_LAST)


def test_keep_last_larger_than_prompt_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="keep_last=5"):
        render_prompt_ids([m("system", "S"), m("user", "q")], tokenizer, max_prompt_tokens=100, keep_last=5)


def test_fit_prompts_counts_truncations_and_rejects_what_cannot_fit(tokenizer):
    short = DsatCase("short", (m("user", "q"),), "a", "f")
    long_history = DsatCase("long", (m("user", "x" * 40), m("assistant", "y" * 40), m("user", "q")), "a", "f",
                            sat_revision="r")
    hopeless = DsatCase("hopeless", (m("user", "q"),), "z" * 200, "f", sat_revision="r")
    sat = SatReply("sat", (m("user", "w" * 300),), "fine")
    from drift.data import PreferencePair

    records = Records(
        dsat_cases=[short, long_history, hopeless],
        sat_replies=[sat],
        seed_pairs=[PreferencePair("long", long_history.history, "r", "a"),
                    PreferencePair("hopeless", hopeless.history, "r", "z" * 200)],
        report={"dsat_cases": 3, "sat_replies": 1, "seed_pairs": 2},
    )
    # the budget is exactly the guided prompt of "short": 9 (user q) + 14 (assistant a) + 9 (user f)
    # + 113 (system instruction, 103 characters) + 11 (generation prompt) = 156 tokens
    budget = len(hand_ids(*chatml("user", "q"), *chatml("assistant", "a"), *chatml("user", "f"),
                          *chatml("system", IMPROVE_INSTRUCTION), *GEN))
    assert budget == 156
    fitted = fit_prompts(records, tokenizer, max_prompt_tokens=budget, prompt_format="chat_template")
    assert [c.case_id for c in fitted.dsat_cases] == ["short", "long"]
    assert [p.pair_id for p in fitted.seed_pairs] == ["long"]
    assert fitted.sat_replies == []
    assert sorted((r.record_id, r.reason) for r in fitted.rejects) == [
        ("hopeless", "prompt_too_long"), ("sat", "prompt_too_long")]
    # "long": original 48 + 53 + 9 + 11 = 121 fits; guided 257 drops the first exchange (101) -> 156.
    # "hopeless": its DSAT reply alone is 213 tokens. "sat": its only (kept) user turn is 308 tokens.
    assert fitted.report["prompts_truncated"] == {"original": 0, "guided": 1, "sat": 0, "preference": 0}
    assert (fitted.report["dsat_cases"], fitted.report["seed_pairs"], fitted.report["sat_replies"]) == (2, 1, 0)
    assert fitted.report["rejects_by_reason"] == {"prompt_too_long": 2}


# ---- guidance: where the feedback and the instruction go ------------------------------------------

GEMMA = (  # Gemma 3's shape: user/model turns only, a system turn only first (else an error)
    "{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('System role only at the start') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CASE_GUIDED = DsatCase("g", (m("user", "q?"),), "bad", "fb")


@pytest.mark.parametrize("guidance, last_turns", [
    ("system_turn", [("user", "fb"), ("system", IMPROVE_INSTRUCTION)]),
    ("feedback_instruction", [("user", "fb\n\n" + IMPROVE_INSTRUCTION)]),
    ("feedback_only", [("user", "fb")]),
    ("restate", [("user", "fb\n\nHere is my original request again, please answer it following this feedback:\nq?")]),
])
def test_each_guidance_renders_token_for_token(tokenizer, guidance, last_turns):
    ids, truncated = render_prompt_ids(guided_prompt(CASE_GUIDED, guidance), tokenizer, max_prompt_tokens=10_000,
                                       keep_last=guided_keep_last(guidance))
    expected = [*chatml("user", "q?"), *chatml("assistant", "bad")]
    for role, content in last_turns:
        expected += chatml(role, content)
    assert ids == hand_ids(*expected, *GEN) and truncated is False
    assert guided_keep_last(guidance) == len(last_turns) + 1  # the DSAT reply and what follows it


@pytest.mark.parametrize("guidance", ["feedback_instruction", "feedback_only", "restate"])
def test_guidance_without_a_system_turn_renders_with_a_gemma_style_template(tokenizer, guidance):
    gemma = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>")
    gemma.chat_template = GEMMA
    ids, _ = render_prompt_ids(guided_prompt(CASE_GUIDED, guidance), gemma, max_prompt_tokens=10_000,
                               keep_last=guided_keep_last(guidance))
    feedback = guided_prompt(CASE_GUIDED, guidance)[-1]["content"]
    # the test vocabulary has no <start_of_turn> token: the template's markers are spelled out character by character
    assert ids == hand_ids(f"<start_of_turn>user\nq?<end_of_turn>\n<start_of_turn>model\nbad<end_of_turn>\n"
                           f"<start_of_turn>user\n{feedback}<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(ValueError, match="data.guidance=feedback_instruction"):
        render_prompt_ids(guided_prompt(CASE_GUIDED, "system_turn"), gemma, max_prompt_tokens=10_000,
                          keep_last=guided_keep_last("system_turn"))


def test_unknown_guidance_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="system_turn, feedback_instruction, feedback_only, restate"):
        guided_prompt(CASE_GUIDED, "shout")
