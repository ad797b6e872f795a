"""The records every data source is turned into, and every method consumes.

Messages are plain ``{"role": ..., "content": ...}`` dicts (the chat-template format), kept in
tuples so records are hashable and cannot be mutated by a method that builds pairs from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class PreferencePair:
    """One DPO pair: the prompt is a conversation prefix, chosen/rejected are assistant replies."""

    pair_id: str
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = ""
    # False for a sampled reply cut at max_new_tokens and kept (sampler.truncated=keep): it is
    # trained without the end-of-turn token, since the model never ended it
    chosen_finished: bool = True
    rejected_finished: bool = True


def pair_from_row(row: dict) -> PreferencePair:
    """A pair as pairs.jsonl holds it (dataclasses.asdict, so the prompt is a list) -> the record."""
    return PreferencePair(**{**row, "prompt": tuple(row["prompt"])})


@dataclass(frozen=True)
class DsatCase:
    """A real reply a user was dissatisfied with: history x, DSAT reply y-, and the user's feedback."""

    case_id: str
    history: tuple[Message, ...]
    dsat_reply: str
    feedback: str
    # the revision the next user turn marked SAT, when the conversation has one (a seed pair)
    sat_revision: str | None = None
    # the annotation's State of the feedback turn (FEEDBACK | REFINEMENT | REVISION | CONTINUATION)
    feedback_state: str | None = None


@dataclass(frozen=True)
class SatReply:
    """An assistant reply the following user turn marked satisfied."""

    reply_id: str
    history: tuple[Message, ...]
    reply: str


@dataclass
class Rejected:
    """A record that could not be used, kept with the reason (written to rejects.jsonl)."""

    record_id: str
    reason: str
    detail: str = ""
    # where the record is in the input, "file:line" (or "hub/split:row"), to find it by hand
    location: str = ""


@dataclass
class Records:
    """Everything a data source yields, plus what was rejected and why."""

    dsat_cases: list[DsatCase] = field(default_factory=list)
    sat_replies: list[SatReply] = field(default_factory=list)
    seed_pairs: list[PreferencePair] = field(default_factory=list)
    # pairs a source gives ready-made, with no user feedback turn: UltraFeedback, and the
    # `wildfeedback` config of microsoft/WildFeedback (see drift/data/sources.py)
    preference_pairs: list[PreferencePair] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    report: dict = field(default_factory=dict)
