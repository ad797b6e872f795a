"""The two prompts of a DSAT case, and rendering them to token ids within a budget.

original prompt: the history up to the DSAT reply (ends with the user turn it answered). The DPO
    pair always trains on this one.
guided prompt:   the history, the DSAT reply (assistant), then the user's feedback, in one of the
    forms `data.guidance` names (GUIDANCE below). DRIFT and IterDPO sample the chosen side from it.

Rendering: `chat_template` (default) is the tokenizer's own template with add_generation_prompt=True,
encoded without adding special tokens again. `raw_text` is the paper code's plain text (its
gen-drift.py): the system message's content and a blank line, then one ``User: ...`` /
``Assistant: ...`` / ``System: ...`` line per message, then ``Assistant: `` with no newline, encoded
with the tokenizer's default special tokens as that script does.

Too long: whole turns are dropped, oldest first, never part of a message. The system message and
the last `keep_last` messages are never dropped (keep_last=1 for an original prompt: the last user
turn; keep_last=3 for a guided prompt: DSAT reply, feedback, instruction). Turns go in units that
start at a user turn, so what remains of the history still starts with a user turn.

Templates that reject a system turn after the first message (Gemma's) cannot render the
`system_turn` guidance; every other guidance keeps the conversation a plain user/assistant
alternation that any chat template renders.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from drift.data.records import DsatCase, Records, Rejected

IMPROVE_INSTRUCTION = (
    "Based on the user's latest feedback, please provide an improved response that addresses their concerns."
)
RESTATE_TEMPLATE = "{feedback}\n\nHere is my original request again, please answer it following this feedback:\n{request}"
ORIGINAL_KEEP_LAST = 1  # the user turn the reply answers
GUIDED_KEEP_LAST = 3  # system_turn guidance: DSAT reply, feedback, instruction
# how the guided prompt puts the user's feedback (data.guidance)
GUIDANCE = {
    "system_turn": "the feedback as its user turn, then the paper code's instruction as a separate system turn",
    "feedback_instruction": "the feedback's user turn, with the instruction appended to it",
    "feedback_only": "the feedback's user turn alone, no instruction",
    "restate": "the feedback's user turn, then the original request asked again in it",
}
RAW_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


class PromptTooLong(ValueError):
    """Even with every droppable turn dropped, the prompt is over the token budget."""

    def __init__(self, n_tokens: int, max_prompt_tokens: int, n_messages_kept: int):
        super().__init__(
            f"prompt is {n_tokens} tokens with only the system message and the last turns kept "
            f"({n_messages_kept} messages), over the budget of {max_prompt_tokens} tokens"
        )
        self.n_tokens, self.max_prompt_tokens = n_tokens, max_prompt_tokens


def original_prompt(case) -> tuple[dict, ...]:
    """History up to the DSAT (or SAT) reply: a DsatCase's or SatReply's `history`."""
    return tuple(case.history)


def guided_prompt(case: DsatCase, guidance: str = "system_turn") -> tuple[dict, ...]:
    """History, DSAT reply, then the feedback in the form ``guidance`` names (GUIDANCE)."""
    head = tuple(case.history) + ({"role": "assistant", "content": case.dsat_reply},)
    if guidance == "system_turn":
        return head + ({"role": "user", "content": case.feedback}, {"role": "system", "content": IMPROVE_INSTRUCTION})
    if guidance == "feedback_instruction":
        return head + ({"role": "user", "content": f"{case.feedback}\n\n{IMPROVE_INSTRUCTION}"},)
    if guidance == "feedback_only":
        return head + ({"role": "user", "content": case.feedback},)
    if guidance == "restate":
        requests = [m["content"] for m in case.history if m["role"] == "user"]
        request = requests[-1] if requests else ""
        return head + ({"role": "user", "content": RESTATE_TEMPLATE.format(feedback=case.feedback, request=request)},)
    raise ValueError(f"data.guidance must be one of {', '.join(GUIDANCE)}, got {guidance!r}")


def guided_keep_last(guidance: str = "system_turn") -> int:
    """Messages of the guided prompt never dropped to fit: the DSAT reply and what follows it."""
    return GUIDED_KEEP_LAST if guidance == "system_turn" else 2


def render_prompt_text(messages, tokenizer=None, *, prompt_format: str = "chat_template") -> str:
    """The prompt as text, ending where the assistant's reply starts."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if prompt_format == "raw_text":
        text = ""
        if messages and messages[0]["role"] == "system":
            text += messages[0]["content"] + "\n\n"
            messages = messages[1:]
        for message in messages:
            text += f"{RAW_ROLE_NAMES[message['role']]}: {message['content']}\n"
        return text + "Assistant: "
    if prompt_format != "chat_template":
        raise ValueError(f"prompt_format must be chat_template or raw_text, got {prompt_format!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; set data.prompt_format=raw_text")
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as e:
        roles = "/".join(m["role"] for m in messages)
        raise ValueError(
            f"the tokenizer's chat template cannot render these messages ({roles}): {e}. If it rejects a "
            "system turn after the first message, use a guidance without one (data.guidance=feedback_instruction, "
            "feedback_only or restate) or set data.prompt_format=raw_text"
        ) from e


def render_prompt_ids(messages, tokenizer, *, max_prompt_tokens: int, prompt_format: str = "chat_template",
                      keep_last: int = 0) -> tuple[list[int], bool]:
    """Token ids of the prompt within `max_prompt_tokens`, and whether turns had to be dropped.

    Raises PromptTooLong when the system message and the last `keep_last` messages alone are over.
    """
    messages = list(messages)
    start = 1 if messages and messages[0]["role"] == "system" else 0
    end = len(messages) - keep_last
    if keep_last < 0 or end < start:
        raise ValueError(f"keep_last={keep_last} but the prompt has only {len(messages) - start} non-system messages")
    units = _units(messages[start:end])

    def ids_without(n_units: int) -> list[int]:
        dropped = sum(len(u) for u in units[:n_units])
        kept = messages[:start] + messages[start + dropped:]
        return _encode(render_prompt_text(kept, tokenizer, prompt_format=prompt_format), tokenizer, prompt_format)

    ids = ids_without(0)
    if len(ids) <= max_prompt_tokens:
        return ids, False
    shortest = ids_without(len(units))
    if len(shortest) > max_prompt_tokens:
        raise PromptTooLong(len(shortest), max_prompt_tokens, start + keep_last)
    # dropping a unit removes its text from the rendering, so the length only shrinks as more go:
    # bisect for the fewest units to drop
    low, high, best = 1, len(units), shortest
    while low < high:
        middle = (low + high) // 2
        candidate = ids_without(middle)
        if len(candidate) <= max_prompt_tokens:
            high, best = middle, candidate
        else:
            low = middle + 1
    return best, True


def fit_prompts(records: Records, tokenizer, *, max_prompt_tokens: int, prompt_format: str,
                guidance: str = "system_turn") -> Records:
    """Render every prompt the methods use; reject records whose prompt cannot fit, count truncations.

    A DSAT case needs both its original and its guided prompt (its seed pair goes with it); a SAT
    reply and a preference pair need their original prompt.
    """
    truncated, too_long = Counter(), []
    rejected_ids = set()

    def fits(record_id: str, kind: str, messages, keep_last: int) -> bool:
        try:
            _, was_truncated = render_prompt_ids(messages, tokenizer, max_prompt_tokens=max_prompt_tokens,
                                                 prompt_format=prompt_format, keep_last=keep_last)
        except PromptTooLong as e:
            too_long.append(Rejected(record_id, "prompt_too_long", f"{kind} prompt: {e}"))
            return False
        truncated[kind] += int(was_truncated)
        return True

    dsat_cases = []
    for case in records.dsat_cases:
        ok = fits(case.case_id, "original", original_prompt(case), ORIGINAL_KEEP_LAST)
        ok = ok and fits(case.case_id, "guided", guided_prompt(case, guidance), guided_keep_last(guidance))
        if ok:
            dsat_cases.append(case)
        else:
            rejected_ids.add(case.case_id)
    sat_replies = [r for r in records.sat_replies
                   if fits(r.reply_id, "sat", original_prompt(r), ORIGINAL_KEEP_LAST)]
    preference_pairs = [p for p in records.preference_pairs
                        if fits(p.pair_id, "preference", p.prompt, ORIGINAL_KEEP_LAST)]
    seed_pairs = [p for p in records.seed_pairs if p.pair_id not in rejected_ids]

    rejects = records.rejects + too_long
    report = dict(records.report)
    report.update({
        "dsat_cases": len(dsat_cases),
        "sat_replies": len(sat_replies),
        "seed_pairs": len(seed_pairs),
        "prompt_format": prompt_format,
        "max_prompt_tokens": max_prompt_tokens,
        "prompts_truncated": {k: truncated[k] for k in ("original", "guided", "sat", "preference")},
        "rejects": len(rejects),
        "rejects_by_reason": dict(sorted(Counter(r.reason for r in rejects).items())),
    })
    if "preference_pairs" in report:
        report["preference_pairs"] = len(preference_pairs)
    return replace(records, dsat_cases=dsat_cases, sat_replies=sat_replies, seed_pairs=seed_pairs,
                   preference_pairs=preference_pairs, rejects=rejects, report=report)


def _units(history: list[dict]) -> list[list[dict]]:
    """Split droppable turns into units that each start at a user turn (the first may not)."""
    units: list[list[dict]] = []
    for message in history:
        if not units or message["role"] == "user":
            units.append([])
        units[-1].append(message)
    return units


def _encode(text: str, tokenizer, prompt_format: str) -> list[int]:
    # a chat template already writes the special tokens (BOS included) itself
    return list(tokenizer(text, add_special_tokens=prompt_format == "raw_text")["input_ids"])
